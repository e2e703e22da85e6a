//! The embedded audit store: one SQLite file per UTC day, events in
//! compressed column blocks, rollups beside them.
//!
//! Layout of the audit directory (`<data-dir>/audit/`):
//! - `YYYY-MM-DD.db` — the events whose timestamp falls on that UTC day:
//!   - `blocks`: each row one tenant's consecutive events (up to 2,048, at
//!     most 10 minutes apart), column-encoded and compressed
//!     ([`block`]), with the chain hash before its first event (`prev_hash`)
//!     and after its last (`hash`). Indexed by `(tenant, first_seq)` for the
//!     chain and `(tenant, max_ts, min_ts)` for time ranges;
//!   - `strings`: the file's dictionary of repeated texts;
//!   - `chain_heads`: each tenant's last `seq` and hash in this file;
//!   - the rollups ([`rollup`]) and their watermark (in `kv`).
//! - `meta.db` — every tenant's chain head, kept after old day files go;
//!   the signed checkpoints ([`integrity`]); a copy of every archive's
//!   signed manifest ([`archive`]);
//! - `restored/` — day files of the same shape, brought back from archives
//!   ([`archive::restore`]).
//!
//! Why this shape (measured with `benches/store.rs`; see ARCHITECTURE.md):
//! a file per day keeps every B-tree small, so ingest does not slow as the
//! store grows, and retention ([`retention`]) becomes deleting a file; blocks of columns cost
//! a few dozen bytes an event and one B-tree insert per block rather than
//! three per event; the chain hash is stored once per block and recomputed
//! for the events inside it when an export or a verification needs it.
//!
//! [`writer::AuditWriterStore`] is owned by the audit writer thread and is
//! the only code that inserts; [`reader::AuditReader`] is opened per query.
//! WAL mode lets readers run while the writer commits.

pub mod archive;
mod archive_columns;
pub mod block;
pub mod erasure;
pub mod integrity;
pub mod reader;
pub mod retention;
pub mod rollup;
pub mod salts;
pub mod stats;
mod wal;
pub mod writer;

use std::path::{Path, PathBuf};

use rusqlite::Connection;

pub use reader::{AuditReader, ChainBreak, ChainReport};
pub use writer::AuditWriterStore;

use super::{open, StoreError};
use crate::event::{Category, Event};

/// The file in the audit directory that outlives the day files.
pub const META_FILE: &str = "meta.db";
/// The audit store's format (`PRAGMA user_version` of `meta.db`; the day
/// files' blocks carry theirs). Format 2 hashes personal values through
/// salted commitments (see [`crate::event::write_canonical`]); format 1
/// stores are not read.
pub const STORE_FORMAT: i64 = 2;

const DAY_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS strings (
    id INTEGER PRIMARY KEY,
    value TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS blocks (
    id INTEGER PRIMARY KEY,
    tenant INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    min_ts INTEGER NOT NULL,
    max_ts INTEGER NOT NULL,
    categories INTEGER NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL,
    data BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS blocks_chain ON blocks(tenant, first_seq);
CREATE INDEX IF NOT EXISTS blocks_time ON blocks(tenant, max_ts, min_ts);
CREATE TABLE IF NOT EXISTS chain_heads (
    tenant INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    hash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
";

/// The UTC day (days since 1970-01-01) of a millisecond timestamp.
pub fn day_of(timestamp_ms: i64) -> i64 {
    timestamp_ms.div_euclid(rollup::DAY_MS)
}

/// `YYYY-MM-DD.db` for a day number.
pub fn day_file_name(day: i64) -> String {
    let date = chrono::DateTime::from_timestamp(day.max(0) * 86_400, 0).unwrap_or_default().date_naive();
    format!("{}.db", date.format("%Y-%m-%d"))
}

fn parse_day_file_name(name: &str) -> Option<i64> {
    let date = chrono::NaiveDate::parse_from_str(name.strip_suffix(".db")?, "%Y-%m-%d").ok()?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp().div_euclid(86_400))
}

/// Removes a day file with its write-ahead log, the log first: a crash
/// between the deletes then leaves the day file, not a log of its events
/// that belongs to no file. A file already gone is no error.
pub(super) fn remove_day_file(path: &Path) -> std::io::Result<()> {
    for suffix in ["-wal", "-shm", ""] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The day files in `dir`, oldest first.
pub fn list_days(dir: &Path) -> Result<Vec<(i64, PathBuf)>, StoreError> {
    let mut days = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(days),
        Err(error) => return Err(error.into()),
    };
    for entry in entries {
        let entry = entry?;
        if let Some(day) = entry.file_name().to_str().and_then(parse_day_file_name) {
            days.push((day, entry.path()));
        }
    }
    days.sort();
    Ok(days)
}

/// Opens a day file for writing. A new file is made under a temporary
/// name with its tables and then renamed into place, so a reader never
/// finds a day file without them.
fn open_day_file(path: &Path) -> Result<Connection, StoreError> {
    if !path.exists() {
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".new");
        let temporary = PathBuf::from(temporary);
        let _ = std::fs::remove_file(&temporary);
        let conn = open(&temporary)?;
        conn.execute_batch(DAY_SCHEMA)?;
        conn.execute_batch(rollup::SCHEMA)?;
        conn.execute_batch(salts::SCHEMA)?;
        // Closing the last connection folds the WAL back into the file.
        conn.close().map_err(|(_, e)| e)?;
        std::fs::rename(&temporary, path)?;
    }
    let conn = open(path)?;
    conn.execute_batch(DAY_SCHEMA)?;
    conn.execute_batch(rollup::SCHEMA)?;
    conn.execute_batch(salts::SCHEMA)?;
    Ok(conn)
}

/// An event as read back: with its sequence number and, when the reader
/// was asked for them, its chain hash.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredEvent {
    pub event: Event,
    /// The chain hash after this event, when asked for.
    pub hash: Option<[u8; 32]>,
    /// The chain hash before it (the previous event's), with `hash`.
    pub prev_hash: Option<[u8; 32]>,
}

/// The last committed position of one tenant's chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    pub seq: u64,
    pub hash: [u8; 32],
}

/// Which events a query or export selects. Times are inclusive milliseconds.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub tenant_id: String,
    pub category: Option<Category>,
    pub event_type: Option<String>,
    pub consumer_id: Option<String>,
    pub api_id: Option<String>,
    pub method: Option<String>,
    /// Matches paths that start with this text.
    pub path_prefix: Option<String>,
    /// The event's `actor`, exactly (case-sensitive).
    pub actor: Option<String>,
    /// The event's `target`, exactly (case-sensitive).
    pub target: Option<String>,
    /// Matches targets that start with this text (events without a target
    /// never match; the empty prefix matches every event with one).
    pub target_prefix: Option<String>,
    /// The event's `request_id`, as exact text. Compared in the stored form
    /// (a UUID in canonical lowercase hyphenated text as its 16 bytes, any
    /// other text as it is), which is the same as comparing the texts: an
    /// upper-case UUID matches only an event that carried it in upper case.
    /// Never narrows the time window: an event may carry the id of an
    /// earlier call.
    pub request_id: Option<String>,
    /// The event's `outcome`, exactly (e.g. `success`, `failure`).
    pub outcome: Option<String>,
    pub status_min: Option<u16>,
    pub status_max: Option<u16>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Resume after this position (exclusive), newest-first order.
    pub before: Option<(i64, u64)>,
    /// Hot day files only, not restored days (statistics, whose rollups
    /// cover the hot files only).
    pub hot_only: bool,
}

#[cfg(test)]
mod tests;
