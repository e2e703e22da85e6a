//! Archives: a tenant's events past its hot window, as signed,
//! checksummed, compressed files outside the store.
//!
//! Layout of the archive directory (`retention.archive_dir`,
//! `<data-dir>/archive` by default):
//! - `<tenant>/<YYYY-MM-DD>.ndjson.zst` — one run of the tenant's chain,
//!   oldest first, zstd-compressed NDJSON: each line a block of up to 16,384
//!   events, column by column, with the chain hash after its last event
//!   ([`super::archive_columns`], format `keytrail-archive-v3`; ~23 bytes an
//!   event on a realistic day). Archives written before it (format
//!   `keytrail-archive-v2`) hold one event a line as `{"prev_hash", "hash",
//!   "event"}` and are still read. `keytrail archive cat` prints either as
//!   one event a line;
//! - `<tenant>/<YYYY-MM-DD>.manifest.json` — what the file holds (events,
//!   first and last `seq`, the chain hash before the first event and after
//!   the last, the oldest and newest event time), the file's size and
//!   SHA-256, the signed checkpoints that fall in its range, the personal
//!   salts its events are hashed with ([`super::salts`]), when it was
//!   written, and an Ed25519 signature with the data directory's key over
//!   the manifest's canonical bytes ([`Manifest::canonical_bytes`]).
//!
//! An archive is named after the UTC day of the hot file its first event
//! was in; it holds the run of the chain that the hot files up to that day
//! hold (an event committed after midnight with the day before's time goes
//! into the next archive), so consecutive archives link exactly: the last
//! hash of one is the previous hash of the next. (Should an event arrive
//! for a day whose archive already exists, its archive is named
//! `<YYYY-MM-DD>-<first seq>`.)
//!
//! `meta.db` keeps a copy of every manifest (`archives`), also after
//! retention deletes the archive: it is what the hot chain links to
//! ([`floors`]), and it proves that a deleted range was archived and
//! deleted by retention rather than cut off.
//!
//! Restoring ([`restore`]) verifies an archive and writes its events, at
//! their own `seq` and with their own hashes, into day files under
//! `<audit>/restored/`, which readers and `keytrail verify` read beside the
//! hot ones; retention never touches them.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ed25519_dalek::VerifyingKey;
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::archive_columns::{BlockDecoder, BlockEncoder};
pub use super::archive_columns::BLOCK_EVENTS;
use super::salts::DaySalts;
use super::{day_of, ChainHead, StoredEvent, META_FILE};
use crate::event::{format_timestamp, Event, GENESIS_HASH};
use crate::signing::{from_hex, hex, Checkpoint, Signer};
use crate::store::StoreError;

/// The manifest's `format` of archives written now: blocks of events a line.
pub const FORMAT: &str = "keytrail-archive-v3";
/// The format of archives written before: one event a line with its hashes.
pub const FORMAT_EVENT_LINES: &str = "keytrail-archive-v2";
/// The signing domain of manifests (see [`crate::signing::verify_bytes`]).
pub const MANIFEST_DOMAIN: &str = "keytrail-archive-manifest-v1";
/// The directory under the audit directory that restored days go to.
pub const RESTORED_DIR: &str = "restored";
/// The default zstd level of archive files (`retention.archive_zstd_level`).
/// On a realistic day (BENCHMARKS.md) level 1 made the column blocks
/// smaller than levels 3 to 15 (22.4 bytes an event against 23.4–23.6) and
/// 19 only 1 % smaller again at ~180 times the time.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;
/// Most problems listed for one archive (a damaged file could list one per line).
const MAX_PROBLEMS: usize = 20;

pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS archives (
    tenant TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    last_hash BLOB NOT NULL,
    manifest TEXT NOT NULL,
    deleted_at INTEGER,
    deletion_signature BLOB,
    PRIMARY KEY (tenant, first_seq)
);";

/// The signing domain of retention's marks that it deleted an archive
/// (see [`ArchiveRecord::deletion_signed`]).
pub const DELETION_DOMAIN: &str = "keytrail-archive-deletion-v1";

/// What a deletion mark's signature covers: the archive's range and last
/// hash (not its manifest's salts or signature, which an erasure changes)
/// and when retention deleted it.
#[derive(Serialize)]
struct DeletionMark<'a> {
    tenant: &'a str,
    name: &'a str,
    first_seq: u64,
    last_seq: u64,
    last_hash: &'a str,
    deleted_at_ms: i64,
}

fn deletion_bytes(m: &Manifest, at_ms: i64) -> Vec<u8> {
    let mark = DeletionMark { tenant: &m.tenant, name: &m.name, first_seq: m.first_seq, last_seq: m.last_seq, last_hash: &m.last_hash, deleted_at_ms: at_ms };
    serde_json::to_vec(&mark).expect("a deletion mark serialises")
}

/// Whether `meta.db`'s `archives` has the column of signed deletion marks
/// (stores written before them do not, until retention runs once).
fn has_deletion_signatures(conn: &rusqlite::Connection) -> Result<bool, StoreError> {
    let n: i64 = conn.query_row("SELECT count(*) FROM pragma_table_info('archives') WHERE name = 'deletion_signature'", [], |r| r.get(0))?;
    Ok(n > 0)
}

/// Creates `archives` in `meta`, or adds the column of signed deletion
/// marks to a table made before them.
pub(super) fn upgrade_schema(meta: &rusqlite::Connection) -> Result<(), StoreError> {
    meta.execute_batch(SCHEMA)?;
    if !has_deletion_signatures(meta)? {
        meta.execute_batch("ALTER TABLE archives ADD COLUMN deletion_signature BLOB")?;
    }
    Ok(())
}

/// A signed checkpoint inside a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestCheckpoint {
    pub seq: u64,
    pub hash: String,
    pub signed_at_ms: i64,
    pub signature: String,
}

impl ManifestCheckpoint {
    fn of(cp: &Checkpoint) -> ManifestCheckpoint {
        ManifestCheckpoint { seq: cp.seq, hash: hex(&cp.hash), signed_at_ms: cp.signed_at_ms, signature: hex(&cp.signature) }
    }

    fn checkpoint(&self, tenant: &str) -> Option<Checkpoint> {
        Some(Checkpoint {
            tenant: tenant.to_string(),
            seq: self.seq,
            hash: from_hex(&self.hash)?,
            signed_at_ms: self.signed_at_ms,
            signature: from_hex(&self.signature)?,
        })
    }
}

/// What an archive holds, signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub tenant: String,
    /// The archive's name: the UTC day (`YYYY-MM-DD`), or `YYYY-MM-DD-<seq>`.
    pub name: String,
    /// The archive file, beside the manifest.
    pub file: String,
    pub events: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The chain hash before the first event and after the last (hex).
    pub prev_hash: String,
    pub last_hash: String,
    /// The oldest and newest event time (ms since the epoch, UTC).
    pub from_ms: i64,
    pub to_ms: i64,
    pub file_bytes: u64,
    pub file_sha256: String,
    /// The signed checkpoints whose `seq` is in this archive.
    pub checkpoints: Vec<ManifestCheckpoint>,
    /// The personal salts the events here are hashed with, by UTC day and
    /// consumer id (`""` for events without one), as 64 hex digits.
    pub personal_salts: DaySalts,
    pub archived_at: String,
    pub public_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl Manifest {
    /// The bytes the signature covers: the manifest as compact JSON, in
    /// field order, without `signature`.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let unsigned = Manifest { signature: None, ..self.clone() };
        serde_json::to_vec(&unsigned).expect("a manifest serialises")
    }

    fn sign(&mut self, signer: &Signer) {
        self.signature = Some(hex(&signer.sign_bytes(MANIFEST_DOMAIN, &self.canonical_bytes())));
    }

    /// Whether the manifest is signed by the holder of `key`, as it is.
    pub fn signature_ok(&self, key: &VerifyingKey) -> bool {
        let Some(signature) = self.signature.as_deref().and_then(from_hex::<64>) else { return false };
        crate::signing::verify_bytes(key, MANIFEST_DOMAIN, &self.canonical_bytes(), &signature)
    }

    pub fn prev_hash(&self) -> [u8; 32] {
        from_hex(&self.prev_hash).unwrap_or([0xff; 32])
    }

    pub fn last_hash(&self) -> [u8; 32] {
        from_hex(&self.last_hash).unwrap_or([0xff; 32])
    }

    fn manifest_file(&self) -> String {
        format!("{}.manifest.json", self.name)
    }
}

/// An archive's record in `meta.db`.
#[derive(Debug, Clone)]
pub struct ArchiveRecord {
    pub manifest: Manifest,
    /// When retention deleted the archive, if it did.
    pub deleted_at_ms: Option<i64>,
    /// Retention's signature of that mark ([`DELETION_DOMAIN`]).
    pub deletion_signature: Option<Vec<u8>>,
}

impl ArchiveRecord {
    /// Whether the mark that retention deleted the archive (when there is
    /// one) is signed by the holder of `key`: `deleted_at` is a column
    /// anyone who can write `meta.db` can set, and an archive deleted
    /// before its time with it set would pass as deleted by retention.
    pub fn deletion_signed(&self, key: &VerifyingKey) -> bool {
        let Some(at_ms) = self.deleted_at_ms else { return true };
        let Some(signature) = self.deletion_signature.as_deref().and_then(|s| <[u8; 64]>::try_from(s).ok()) else { return false };
        crate::signing::verify_bytes(key, DELETION_DOMAIN, &deletion_bytes(&self.manifest, at_ms), &signature)
    }
}

/// `YYYY-MM-DD` of a day number.
pub fn day_name(day: i64) -> String {
    super::day_file_name(day).trim_end_matches(".db").to_string()
}

/// The day number of `YYYY-MM-DD`.
pub fn parse_day(text: &str) -> Option<i64> {
    let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp().div_euclid(86_400))
}

fn meta_read_only(dir: &Path) -> Result<Option<rusqlite::Connection>, StoreError> {
    let path = dir.join(META_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let conn = rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let exists: Option<i64> =
        conn.query_row("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'archives'", [], |r| r.get(0)).optional()?;
    Ok(exists.map(|_| conn))
}

/// Each tenant's archived prefix: the last archived `seq` and the hash
/// after it (from the records; deleted archives count).
///
/// Every reader asks (once per query), so the read-only connection to
/// `meta.db` is kept open per file (opening it costs ~200 µs, the query
/// ~10 µs); a new `meta.db` (another inode) gets a new connection.
pub fn floors(dir: &Path) -> Result<HashMap<String, (u64, [u8; 32])>, StoreError> {
    type Connections = Mutex<HashMap<(PathBuf, u64), Arc<Mutex<rusqlite::Connection>>>>;
    static CONNECTIONS: OnceLock<Connections> = OnceLock::new();
    use std::os::unix::fs::MetadataExt;
    let mut out = HashMap::new();
    let path = dir.join(META_FILE);
    let Ok(metadata) = std::fs::metadata(&path) else { return Ok(out) };
    let key = (path, metadata.ino());
    let conn = {
        let mut all = CONNECTIONS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        match all.get(&key) {
            Some(conn) => conn.clone(),
            None => {
                let conn = rusqlite::Connection::open_with_flags(&key.0, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
                conn.busy_timeout(std::time::Duration::from_secs(5))?;
                let conn = Arc::new(Mutex::new(conn));
                // One connection per file: forget replaced and deleted files,
                // and keep a few at most (tests make many directories).
                all.retain(|(p, _), _| *p != key.0 && p.exists());
                if all.len() >= 16 {
                    all.clear();
                }
                all.insert(key, conn.clone());
                conn
            }
        }
    };
    let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
    // No `archives` table yet: nothing archived.
    let Ok(mut stmt) = conn.prepare_cached("SELECT tenant, max(last_seq), last_hash FROM archives GROUP BY tenant") else { return Ok(out) };
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64, r.get::<_, Vec<u8>>(2)?)))?;
    for row in rows {
        let (tenant, seq, hash) = row?;
        out.insert(tenant, (seq, hash.try_into().unwrap_or([0xff; 32])));
    }
    Ok(out)
}

/// The archive records of one tenant (or all), by tenant and `seq`.
pub fn records(dir: &Path, tenant: Option<&str>) -> Result<Vec<ArchiveRecord>, StoreError> {
    let Some(conn) = meta_read_only(dir)? else { return Ok(Vec::new()) };
    // A table made before signed deletion marks: none is signed.
    let signature = if has_deletion_signatures(&conn)? { "deletion_signature" } else { "NULL" };
    let mut stmt = conn.prepare(&format!(
        "SELECT manifest, deleted_at, {signature} FROM archives WHERE ?1 IS NULL OR tenant = ?1 ORDER BY tenant, first_seq"
    ))?;
    let rows = stmt.query_map(params![tenant], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?, r.get::<_, Option<Vec<u8>>>(2)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (text, deleted_at_ms, deletion_signature) = row?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("an archive record in meta.db cannot be read: {e}")))?;
        out.push(ArchiveRecord { manifest, deleted_at_ms, deletion_signature });
    }
    Ok(out)
}

pub(super) fn insert_record(meta: &rusqlite::Connection, m: &Manifest) -> Result<(), StoreError> {
    let text = serde_json::to_string(m).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    meta.execute(
        "INSERT INTO archives (tenant, first_seq, last_seq, name, last_hash, manifest) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (tenant, first_seq) DO UPDATE SET last_seq = excluded.last_seq, name = excluded.name,
             last_hash = excluded.last_hash, manifest = excluded.manifest, deleted_at = NULL, deletion_signature = NULL",
        params![m.tenant, m.first_seq as i64, m.last_seq as i64, m.name, m.last_hash().as_slice(), text],
    )?;
    Ok(())
}

/// Marks the archive `m` deleted by retention at `at_ms`, the mark signed
/// with `signer` ([`ArchiveRecord::deletion_signed`]).
pub(super) fn mark_deleted(meta: &rusqlite::Connection, m: &Manifest, at_ms: i64, signer: &Signer) -> Result<(), StoreError> {
    let signature = signer.sign_bytes(DELETION_DOMAIN, &deletion_bytes(m, at_ms));
    meta.execute(
        "UPDATE archives SET deleted_at = ?3, deletion_signature = ?4 WHERE tenant = ?1 AND first_seq = ?2",
        params![m.tenant, m.first_seq as i64, at_ms, signature.as_slice()],
    )?;
    Ok(())
}

/// The tenant's folder in the archive directory.
pub fn tenant_dir(archive_dir: &Path, tenant: &str) -> PathBuf {
    archive_dir.join(tenant)
}

/// The paths of an archive's file and manifest.
pub fn paths(archive_dir: &Path, tenant: &str, name: &str) -> (PathBuf, PathBuf) {
    let dir = tenant_dir(archive_dir, tenant);
    (dir.join(format!("{name}.ndjson.zst")), dir.join(format!("{name}.manifest.json")))
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Counts and hashes the bytes written through it.
struct Hashing<W> {
    inner: W,
    sha: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// One line of an archive file of format `keytrail-archive-v2`, and what
/// `keytrail archive cat` prints.
#[derive(Serialize)]
struct LineOut<'a> {
    prev_hash: &'a str,
    hash: &'a str,
    event: &'a Event,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineIn {
    prev_hash: String,
    hash: String,
    event: Event,
}

/// An event read from an archive file, with the hashes its line claims:
/// both on every line of format v2; in v3 only the hash after the last
/// event of each block (which covers the events from `claim_from`).
struct Claimed {
    event: Event,
    prev_hash: Option<[u8; 32]>,
    hash: Option<[u8; 32]>,
    claim_from: u64,
}

/// What reading the next event found. (Returned once an event and moved
/// straight out: boxing the event would cost an allocation each.)
#[allow(clippy::large_enum_variant)]
enum Next {
    Event(Claimed),
    /// A line that cannot be read; `events` is how many events it held,
    /// when that is known (a v2 line holds one).
    Unreadable { line: u64, error: String, events: u64 },
    End,
}

/// An archive file's events in chain order, from its decompressed lines.
struct EventLines<R> {
    lines: R,
    /// `None` for format v2 (an event a line).
    blocks: Option<BlockDecoder>,
    pending: std::collections::VecDeque<Claimed>,
    text: String,
    line: u64,
    /// The longest line read, for a file not known to be the one its
    /// manifest signed (a tiny zstd file can hold a line of gigabytes).
    max_line: Option<usize>,
}

/// The longest line read from an archive file whose SHA-256 is not its
/// manifest's (a damaged file; past it the file is reported unreadable):
/// far above a block line of ordinary events (~1–2 MB).
const MAX_UNVERIFIED_LINE: usize = 16 << 20;

impl<R: BufRead> EventLines<R> {
    /// `None` when this version does not read `format`.
    fn new(lines: R, format: &str) -> Option<EventLines<R>> {
        let blocks = match format {
            FORMAT => Some(BlockDecoder::default()),
            FORMAT_EVENT_LINES => None,
            _ => return None,
        };
        Some(EventLines { lines, blocks, pending: Default::default(), text: String::new(), line: 0, max_line: None })
    }

    /// Reads no line longer than `max` bytes (an error past it).
    fn with_max_line(mut self, max: Option<usize>) -> Self {
        self.max_line = max;
        self
    }

    /// The next event; an error when the file cannot be decompressed.
    fn next(&mut self) -> Result<Next, String> {
        loop {
            if let Some(claimed) = self.pending.pop_front() {
                return Ok(Next::Event(claimed));
            }
            self.text.clear();
            let read = match self.max_line {
                None => self.lines.read_line(&mut self.text),
                Some(max) => (&mut self.lines).take(max as u64 + 1).read_line(&mut self.text),
            };
            if read.map_err(|e| format!("the file cannot be decompressed ({e})"))? == 0 {
                return Ok(Next::End);
            }
            self.line += 1;
            if self.max_line.is_some_and(|max| self.text.len() > max) {
                return Err(format!("line {} is longer than {} bytes", self.line, self.max_line.unwrap_or_default()));
            }
            let text = self.text.trim_end();
            let Some(blocks) = self.blocks.as_mut() else {
                let parsed = serde_json::from_str::<LineIn>(text).map_err(|e| e.to_string()).and_then(|line| {
                    match (from_hex::<32>(&line.prev_hash), from_hex::<32>(&line.hash)) {
                        (Some(prev), Some(hash)) => {
                            let claim_from = line.event.seq;
                            Ok(Claimed { event: line.event, prev_hash: Some(prev), hash: Some(hash), claim_from })
                        }
                        _ => Err(format!("seq {}: `prev_hash` and `hash` must be 64 hexadecimal digits", line.event.seq)),
                    }
                });
                return Ok(match parsed {
                    Ok(claimed) => Next::Event(claimed),
                    Err(error) => Next::Unreadable { line: self.line, error, events: 1 },
                });
            };
            match blocks.decode(text) {
                Ok(block) => {
                    let count = block.events.len();
                    for (i, event) in block.events.into_iter().enumerate() {
                        let hash = (i + 1 == count).then_some(block.hash);
                        self.pending.push_back(Claimed { event, prev_hash: None, hash, claim_from: block.first_seq });
                    }
                }
                Err(error) => return Ok(Next::Unreadable { line: self.line, error, events: 0 }),
            }
        }
    }
}

/// Writes one archive: events are pushed in chain order, then
/// [`finish`](Self::finish) signs the manifest and moves both files into
/// place (written under temporary names, synced, then renamed).
pub(super) struct ArchiveWriter {
    tenant: String,
    name: String,
    data_path: PathBuf,
    temporary: PathBuf,
    encoder: zstd::stream::write::Encoder<'static, Hashing<std::io::BufWriter<std::fs::File>>>,
    blocks: BlockEncoder,
    first: Option<(u64, [u8; 32])>,
    last: Option<(u64, [u8; 32])>,
    events: u64,
    from_ms: i64,
    to_ms: i64,
    /// The personal salts the events written so far need, by (day, consumer).
    salts: DaySalts,
}

impl ArchiveWriter {
    pub(super) fn create(archive_dir: &Path, tenant: &str, name: &str, level: i32) -> Result<ArchiveWriter, StoreError> {
        let dir = tenant_dir(archive_dir, tenant);
        create_private_dir(&dir)?;
        let (data_path, _) = paths(archive_dir, tenant, name);
        let temporary = dir.join(format!("{name}.ndjson.zst.tmp"));
        let file = create_private_file(&temporary)?;
        let sink = Hashing { inner: std::io::BufWriter::with_capacity(1 << 20, file), sha: Sha256::new(), bytes: 0 };
        let mut encoder = zstd::stream::write::Encoder::new(sink, level)?;
        encoder.include_checksum(true)?;
        encoder.window_log(24)?;
        Ok(ArchiveWriter {
            tenant: tenant.to_string(),
            name: name.to_string(),
            data_path,
            temporary,
            encoder,
            blocks: BlockEncoder::default(),
            first: None,
            last: None,
            events: 0,
            from_ms: i64::MAX,
            to_ms: i64::MIN,
            salts: DaySalts::new(),
        })
    }

    /// Appends an event (with its hashes) to the archive; `salt` is the
    /// personal salt it is hashed with (if it holds personal values).
    pub(super) fn push(&mut self, stored: &StoredEvent, salt: Option<&[u8; 32]>) -> Result<(), StoreError> {
        let (Some(prev), Some(hash)) = (stored.prev_hash, stored.hash) else {
            return Err(StoreError::Corrupt("an archived event needs its hashes".into()));
        };
        let e = &stored.event;
        if self.first.is_none() {
            self.first = Some((e.seq, prev));
        }
        self.last = Some((e.seq, hash));
        self.events += 1;
        self.from_ms = self.from_ms.min(e.timestamp_ms);
        self.to_ms = self.to_ms.max(e.timestamp_ms);
        if e.personal_commitment.is_none() && e.has_personal() {
            let salt = salt.ok_or_else(|| StoreError::Corrupt(format!("no personal salt for the event at seq {}", e.seq)))?;
            super::salts::add_hex(&mut self.salts, day_of(e.timestamp_ms), super::salts::consumer_key(e.salt_owner()), salt);
        }
        if let Some(line) = self.blocks.push(e, hash).map_err(StoreError::Corrupt)? {
            self.encoder.write_all(&line)?;
            self.encoder.write_all(b"\n")?;
        }
        Ok(())
    }

    /// Closes the file, signs the manifest and puts both in place.
    pub(super) fn finish(self, checkpoints: &[Checkpoint], signer: &Signer, now_ms: i64) -> Result<Manifest, StoreError> {
        self.seal(signer, |w| Manifest {
            format: FORMAT.into(),
            file: format!("{}.ndjson.zst", w.name),
            tenant: w.tenant,
            name: w.name,
            events: w.events,
            first_seq: w.first.0,
            last_seq: w.last.0,
            prev_hash: hex(&w.first.1),
            last_hash: hex(&w.last.1),
            from_ms: w.from_ms,
            to_ms: w.to_ms,
            file_bytes: w.file_bytes,
            file_sha256: w.file_sha256,
            checkpoints: checkpoints.iter().filter(|c| (w.first.0..=w.last.0).contains(&c.seq)).map(ManifestCheckpoint::of).collect(),
            personal_salts: w.salts,
            archived_at: format_timestamp(now_ms),
            public_key: crate::signing::public_key_text(&signer.public_key()),
            signature: None,
        })
    }

    /// Closes the file of an archive rewritten in place (erasure): the
    /// manifest is `old`'s with the new file's size, checksum and salts,
    /// signed again. The file must hold the same run of the chain.
    fn finish_as(self, old: &Manifest, signer: &Signer) -> Result<Manifest, StoreError> {
        let same_run = self.first.map(|(seq, hash)| (seq, hex(&hash))) == Some((old.first_seq, old.prev_hash.clone()))
            && self.last.map(|(seq, hash)| (seq, hex(&hash))) == Some((old.last_seq, old.last_hash.clone()))
            && self.events == old.events;
        if !same_run {
            self.abandon();
            return Err(StoreError::Corrupt(format!("archive {}: the rewritten file would not hold the same events", old.name)));
        }
        self.seal(signer, |w| Manifest {
            format: FORMAT.into(),
            file_bytes: w.file_bytes,
            file_sha256: w.file_sha256,
            personal_salts: w.salts,
            public_key: crate::signing::public_key_text(&signer.public_key()),
            signature: None,
            ..old.clone()
        })
    }

    /// Finishes the file, builds the manifest with `make`, signs it and
    /// puts both files in place (written under temporary names, synced,
    /// then renamed).
    fn seal(self, signer: &Signer, make: impl FnOnce(Written) -> Manifest) -> Result<Manifest, StoreError> {
        let (Some(first), Some(last)) = (self.first, self.last) else {
            self.abandon();
            return Err(StoreError::Corrupt("an archive needs at least one event".into()));
        };
        let ArchiveWriter { tenant, name, data_path, temporary, mut encoder, mut blocks, events, from_ms, to_ms, salts, .. } = self;
        if let Some(line) = blocks.finish_block().map_err(StoreError::Corrupt)? {
            encoder.write_all(&line)?;
            encoder.write_all(b"\n")?;
        }
        let sink = encoder.finish()?;
        let file = sink.inner.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        let written = Written { tenant, name, events, first, last, from_ms, to_ms, salts, file_bytes: sink.bytes, file_sha256: hex(&sink.sha.finalize()) };
        let mut manifest = make(written);
        manifest.sign(signer);
        let dir = data_path.parent().expect("in the tenant's folder").to_path_buf();
        let manifest_path = dir.join(manifest.manifest_file());
        let manifest_temporary = dir.join(format!("{}.tmp", manifest.manifest_file()));
        let mut out = create_private_file(&manifest_temporary)?;
        out.write_all(&serde_json::to_vec_pretty(&manifest).map_err(|e| StoreError::Corrupt(e.to_string()))?)?;
        out.write_all(b"\n")?;
        out.sync_all()?;
        std::fs::rename(&temporary, &data_path)?;
        std::fs::rename(&manifest_temporary, &manifest_path)?;
        sync_dir(&dir);
        Ok(manifest)
    }

    /// Gives up: removes the temporary file.
    pub(super) fn abandon(self) {
        let _ = std::fs::remove_file(&self.temporary);
    }
}

/// What an [`ArchiveWriter`] wrote, for its manifest.
struct Written {
    tenant: String,
    name: String,
    events: u64,
    /// The first and the last event's `seq`, with the hash before the
    /// first and after the last.
    first: (u64, [u8; 32]),
    last: (u64, [u8; 32]),
    from_ms: i64,
    to_ms: i64,
    salts: DaySalts,
    file_bytes: u64,
    file_sha256: String,
}

/// What checking one archive found.
struct Checked {
    manifest: Option<Manifest>,
    problems: Vec<String>,
    /// Events read from the file.
    events: u64,
}

/// Reads the manifest at `path` and checks it and its file: the signature,
/// the file's size and SHA-256, then every event — its `seq` follows on,
/// it rehashes from the hash before it, and the hashes the file claims
/// (each line's in v2, each block's in v3) are the ones computed — and the
/// count, range, last hash and checkpoints against the manifest. `each`
/// gets every event read once a claimed hash confirms it (while nothing is
/// wrong).
fn check_archive(
    tenant: &str,
    path: &Path,
    key: &VerifyingKey,
    mut each: Option<&mut dyn FnMut(StoredEvent) -> Result<(), String>>,
) -> Checked {
    let label = path.file_name().and_then(|n| n.to_str()).unwrap_or("?").trim_end_matches(".manifest.json").to_string();
    let mut problems = Vec::new();
    let manifest: Manifest = match std::fs::read(path).map_err(|e| e.to_string()).and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string())) {
        Ok(m) => m,
        Err(e) => {
            problems.push(format!("{label}: the manifest cannot be read ({e})"));
            return Checked { manifest: None, problems, events: 0 };
        }
    };
    let day = format!("archive {}", manifest.name);
    if !manifest.signature_ok(key) {
        problems.push(format!("{day}: the manifest's signature does not verify (the manifest was changed, or signed with another key)"));
    }
    let readable = [FORMAT, FORMAT_EVENT_LINES].contains(&manifest.format.as_str());
    if manifest.tenant != tenant || manifest.name != label || manifest.file != format!("{label}.ndjson.zst") || !readable {
        problems.push(format!("{day}: the manifest names another tenant, archive or format (`{}`, `{}`)", manifest.tenant, manifest.file));
        return Checked { manifest: Some(manifest), problems, events: 0 };
    }
    let data_path = path.with_file_name(&manifest.file);
    let file = match std::fs::File::open(&data_path) {
        Ok(f) => f,
        Err(e) => {
            problems.push(format!("{day}: the archive file {} cannot be read ({e}): events {}..={} are missing", manifest.file, manifest.first_seq, manifest.last_seq));
            return Checked { manifest: Some(manifest), problems, events: 0 };
        }
    };
    // Events handed on come from a private copy whose size and SHA-256
    // were checked against the signed manifest first: a file replaced
    // while it is read (block hashes are no secret) hands on nothing.
    // A file that is not the one its manifest signed is read with a bound
    // on its lines.
    let signed_file = each.is_some() || std::fs::File::open(&data_path).is_ok_and(|f| signed_bytes(f, &manifest, None).is_ok());
    let file = if each.is_some() {
        match private_checked_copy(file, &manifest) {
            Ok(copy) => copy,
            Err(problem) => {
                problems.push(format!("{day}: {problem}"));
                return Checked { manifest: Some(manifest), problems, events: 0 };
            }
        }
    } else {
        file
    };
    // The file's bytes hashed as they are decompressed.
    let mut tee = Tee::new(BufReader::with_capacity(1 << 20, file));
    let checkpoints: HashMap<u64, [u8; 32]> =
        manifest.checkpoints.iter().filter_map(|c| Some((c.seq, from_hex::<32>(&c.hash)?))).collect();
    let salts = match super::salts::from_hex(&manifest.personal_salts) {
        Ok(salts) => salts,
        Err(e) => {
            problems.push(format!("{day}: {e}"));
            Default::default()
        }
    };
    let mut running = manifest.prev_hash();
    let mut expected = manifest.first_seq;
    let mut events = 0u64;
    let mut unconfirmed = Vec::new();
    let mut content_problems = 0usize;
    let mut note = |problems: &mut Vec<String>, text: String| {
        content_problems += 1;
        if content_problems <= MAX_PROBLEMS {
            problems.push(text);
        }
    };
    let read_result: Result<(), String> = (|| {
        let decoder = zstd::stream::read::Decoder::new(&mut tee).map_err(|e| e.to_string())?;
        let mut lines = EventLines::new(BufReader::with_capacity(1 << 20, decoder), &manifest.format)
            .ok_or("an unknown format")?
            .with_max_line((!signed_file).then_some(MAX_UNVERIFIED_LINE));
        loop {
            let claimed = match lines.next()? {
                Next::End => return Ok(()),
                Next::Unreadable { line, error, events: held } => {
                    note(&mut problems, format!("{day}: line {line} cannot be read ({error})"));
                    events += held;
                    continue;
                }
                Next::Event(claimed) => claimed,
            };
            events += 1;
            let e = &claimed.event;
            if e.tenant_id != tenant {
                note(&mut problems, format!("{day}: seq {}: the event belongs to tenant `{}`", e.seq, e.tenant_id));
            }
            if e.seq != expected {
                note(&mut problems, format!("{day}: expected seq {expected}, found {} (an event is missing or was inserted)", e.seq));
            }
            if claimed.prev_hash.is_some_and(|prev| prev != running) {
                note(&mut problems, format!("{day}: seq {}: does not follow the event before it (its previous hash differs)", e.seq));
            }
            let prev = claimed.prev_hash.unwrap_or(running);
            let computed = match e.chain_hash(&prev, super::salts::salt_for(&salts, e)) {
                Ok(computed) => computed,
                Err(_) => {
                    let consumer = e.consumer_id.as_deref().unwrap_or("(none)");
                    note(&mut problems, format!("{day}: seq {}: the manifest holds no personal salt for consumer `{consumer}`", e.seq));
                    claimed.hash.unwrap_or(running)
                }
            };
            match claimed.hash {
                Some(hash) if hash != computed && claimed.claim_from == e.seq => {
                    note(&mut problems, format!("{day}: seq {}: the event does not match its hash (changed)", e.seq))
                }
                Some(hash) if hash != computed => note(
                    &mut problems,
                    format!("{day}: seq {}..={}: the events do not hash to their block's hash (one of them was changed)", claimed.claim_from, e.seq),
                ),
                _ => {}
            }
            if checkpoints.get(&e.seq).is_some_and(|signed| *signed != computed) {
                note(&mut problems, format!("{day}: checkpoint at seq {}: the archive's hash there is not the one signed", e.seq));
            }
            running = claimed.hash.unwrap_or(computed);
            expected = e.seq.saturating_add(1);
            // Events go to `each` once a hash the file claims confirms them
            // (a block's last event confirms the block).
            if let (Some(each), true) = (each.as_mut(), problems.is_empty()) {
                let confirmed = claimed.hash.is_some();
                unconfirmed.push(StoredEvent { event: claimed.event, hash: Some(computed), prev_hash: Some(prev) });
                if confirmed {
                    unconfirmed.drain(..).try_for_each(&mut **each)?;
                }
            }
        }
    })();
    if let Err(e) = read_result {
        problems.push(format!("{day}: {e}"));
    }
    // Whatever was left unread still counts towards the file's hash.
    let _ = std::io::copy(&mut tee, &mut std::io::sink());
    if !tee.is_signed(&manifest) {
        problems.insert(0, format!("{day}: {CHANGED_FILE}"));
    }
    if content_problems > MAX_PROBLEMS {
        problems.push(format!("{day}: and {} more problems", content_problems - MAX_PROBLEMS));
    }
    if events != manifest.events {
        problems.push(format!("{day}: holds {events} events, the manifest says {}", manifest.events));
    }
    if manifest.last_seq.checked_add(1) != Some(expected) {
        problems.push(format!("{day}: ends at seq {}, the manifest says {}", expected.saturating_sub(1), manifest.last_seq));
    } else if running != manifest.last_hash() {
        problems.push(format!("{day}: the last event's hash is not the manifest's last hash"));
    }
    for c in &manifest.checkpoints {
        match c.checkpoint(tenant) {
            Some(cp) if crate::signing::verify(key, &cp) && (manifest.first_seq..=manifest.last_seq).contains(&cp.seq) => {}
            _ => problems.push(format!("{day}: checkpoint at seq {}: the signature does not verify", c.seq)),
        }
    }
    Checked { manifest: Some(manifest), problems, events }
}

/// A copy of the archive file `file`, private to this process (in the
/// temporary directory, unlinked at once), once its size and SHA-256 are
/// the manifest's.
fn private_checked_copy(file: std::fs::File, manifest: &Manifest) -> Result<std::fs::File, String> {
    use std::io::Seek;
    let unique = format!("keytrail-archive-{}-{}", std::process::id(), COPIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let path = std::env::temp_dir().join(unique);
    let mut copy = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).map_err(|e| format!("no private copy ({e})"))?;
    let _ = std::fs::remove_file(&path);
    signed_bytes(file, manifest, Some(&mut copy))?;
    copy.rewind().map_err(|e| format!("no private copy ({e})"))?;
    Ok(copy)
}

/// Reads `file` through (into `copy`, when given) and checks that its size
/// and SHA-256 are the manifest's.
fn signed_bytes(file: std::fs::File, manifest: &Manifest, copy: Option<&mut std::fs::File>) -> Result<(), String> {
    let mut tee = Tee::new(BufReader::with_capacity(1 << 20, file));
    match copy {
        Some(copy) => std::io::copy(&mut tee, copy),
        None => std::io::copy(&mut tee, &mut std::io::sink()),
    }
    .map_err(|e| format!("the archive file cannot be read or copied ({e})"))?;
    if !tee.is_signed(manifest) {
        return Err(CHANGED_FILE.into());
    }
    Ok(())
}

const CHANGED_FILE: &str = "the archive file's SHA-256 is not the manifest's (the file was changed)";

/// Hashes and counts the bytes read through it.
struct Tee<R> {
    inner: R,
    sha: Sha256,
    bytes: u64,
}

impl<R> Tee<R> {
    fn new(inner: R) -> Tee<R> {
        Tee { inner, sha: Sha256::new(), bytes: 0 }
    }

    /// Whether what was read is the file the manifest signed (its size and SHA-256).
    fn is_signed(&self, manifest: &Manifest) -> bool {
        self.bytes == manifest.file_bytes && hex(&self.sha.clone().finalize()) == manifest.file_sha256
    }
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

static COPIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What `keytrail archive verify` reports for one tenant.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveReport {
    pub tenant: String,
    pub ok: bool,
    pub archives: usize,
    pub events: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Whether the tenant's first hot event follows the last archive
    /// (checked when the data directory is at hand).
    pub hot_links: Option<bool>,
    pub problems: Vec<String>,
}

/// The manifests in a tenant's archive folder, by name.
fn manifest_paths(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        // Which folder: "Not a directory (os error 20)" alone does not say.
        Err(e) => return Err(StoreError::Io(std::io::Error::new(e.kind(), format!("cannot read {}: {e}", dir.display())))),
    };
    for entry in entries {
        let path = entry.map_err(|e| StoreError::Io(std::io::Error::new(e.kind(), format!("cannot read {}: {e}", dir.display()))))?.path();
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".manifest.json")) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Checks the archives of one tenant (or of every tenant with a folder in
/// `archive_dir` or records in the data directory): each archive on its own
/// ([`check_archive`]), then that they follow on from each other (no
/// missing or overlapping range, each linking to the one before). With the
/// audit directory (`audit_dir`), also that every archive retention wrote
/// and has not deleted is there, that a range missing at the start was
/// deleted by retention, and that the first hot event links to the last
/// archive.
pub fn verify_archives(archive_dir: &Path, audit_dir: Option<&Path>, tenant: Option<&str>, key: &VerifyingKey) -> Result<Vec<ArchiveReport>, StoreError> {
    verify_archives_with(archive_dir, audit_dir, tenant, key, &mut |_, _, _, _| {})
}

/// [`verify_archives`], telling `progress` after each archive whose
/// archives are being checked, how many of them are checked, how many the
/// tenant has, and the events checked so far.
pub fn verify_archives_with(
    archive_dir: &Path,
    audit_dir: Option<&Path>,
    tenant: Option<&str>,
    key: &VerifyingKey,
    progress: &mut dyn FnMut(&str, usize, usize, u64),
) -> Result<Vec<ArchiveReport>, StoreError> {
    let all_records = match audit_dir {
        Some(dir) => records(dir, tenant)?,
        None => Vec::new(),
    };
    let mut tenants: std::collections::BTreeSet<String> = all_records.iter().map(|r| r.manifest.tenant.clone()).collect();
    let reader = audit_dir.map(super::AuditReader::open).transpose()?;
    match tenant {
        Some(t) => {
            // A tenant nothing knows of (a typo) has nothing that could pass.
            let known = !tenants.is_empty()
                || tenant_dir(archive_dir, t).is_dir()
                || reader.as_ref().map(|r| r.tenants()).transpose()?.is_some_and(|all| all.iter().any(|x| x == t));
            if !known {
                return Err(StoreError::NotFound(format!("tenant `{t}` (no archives of it in {}, nor events in the data directory)", archive_dir.display())));
            }
            tenants.insert(t.to_string());
        }
        None => {
            if let Ok(entries) = std::fs::read_dir(archive_dir) {
                for entry in entries.flatten() {
                    if entry.path().is_dir() {
                        if let Some(name) = entry.file_name().to_str() {
                            tenants.insert(name.to_string());
                        }
                    }
                }
            }
        }
    }
    let mut reports = Vec::new();
    for t in tenants {
        let mut problems = Vec::new();
        let mut manifests = Vec::new();
        let mut events = 0;
        let paths = manifest_paths(&tenant_dir(archive_dir, &t))?;
        for (i, path) in paths.iter().enumerate() {
            let checked = check_archive(&t, path, key, None);
            problems.extend(checked.problems);
            events += checked.events;
            if let Some(m) = checked.manifest {
                manifests.push(m);
            }
            progress(&t, i + 1, paths.len(), events);
        }
        manifests.sort_by_key(|m| m.first_seq);
        let records: Vec<&ArchiveRecord> = all_records.iter().filter(|r| r.manifest.tenant == t).collect();
        if reader.is_some() {
            for r in &records {
                let m = &r.manifest;
                let on_disk = manifests.iter().find(|x| x.first_seq == m.first_seq);
                match (r.deleted_at_ms, on_disk) {
                    (Some(_), None) if !r.deletion_signed(key) => problems.push(format!(
                        "archive {}: missing from {} (events {}..={}): meta.db marks it deleted, but the mark is not retention's (not signed: set by hand?)",
                        m.name,
                        archive_dir.display(),
                        m.first_seq,
                        m.last_seq
                    )),
                    (None, None) => problems.push(format!(
                        "archive {}: missing from {} (events {}..={}, written by retention and not deleted)",
                        m.name,
                        archive_dir.display(),
                        m.first_seq,
                        m.last_seq
                    )),
                    (_, Some(x)) if x.signature != m.signature => {
                        problems.push(format!("archive {}: its manifest is not the one retention recorded", m.name))
                    }
                    _ => {}
                }
            }
            for m in &manifests {
                if !records.iter().any(|r| r.manifest.first_seq == m.first_seq) {
                    problems.push(format!("archive {}: the data directory has no record of it", m.name));
                }
            }
        }
        // The archives must follow on from each other (or from a range that
        // retention recorded as deleted).
        let deleted = |from: u64, to: u64| {
            // Deleted records, in `seq` order, must cover the range without a gap.
            let mut next = from;
            for r in records.iter().filter(|r| r.deleted_at_ms.is_some() && r.deletion_signed(key)) {
                if r.manifest.first_seq <= next && r.manifest.last_seq >= next {
                    next = r.manifest.last_seq.saturating_add(1);
                }
            }
            next > to
        };
        let mut previous: Option<&Manifest> = None;
        for m in &manifests {
            match previous {
                None if m.first_seq == 1 => {
                    if m.prev_hash() != GENESIS_HASH {
                        problems.push(format!("archive {}: starts at seq 1 but not from the genesis hash", m.name));
                    }
                }
                None => {
                    if reader.is_some() && !deleted(1, m.first_seq.saturating_sub(1)) {
                        problems.push(format!(
                            "events 1..={} are missing before archive {}: no archive holds them and retention has no record of deleting them",
                            m.first_seq.saturating_sub(1),
                            m.name
                        ));
                    }
                }
                Some(p) if m.first_seq > p.last_seq.saturating_add(1) => {
                    if !deleted(p.last_seq + 1, m.first_seq - 1) {
                        problems.push(format!(
                            "events {}..={} are missing between archive {} and archive {} (a missing day?)",
                            p.last_seq + 1,
                            m.first_seq - 1,
                            p.name,
                            m.name
                        ));
                    }
                }
                Some(p) if m.first_seq <= p.last_seq => {
                    problems.push(format!("archives {} and {} overlap (seq {}..={})", p.name, m.name, m.first_seq, p.last_seq))
                }
                Some(p) => {
                    if m.prev_hash() != p.last_hash() {
                        problems.push(format!("archive {} does not link to archive {} (its previous hash is not the last hash before it)", m.name, p.name));
                    }
                }
            }
            previous = Some(m);
        }
        // Where the data directory takes the archived prefix to end (its
        // readers hide the events up to it) must be where the records do.
        if let Some(reader) = &reader {
            let signed = records.last().map_or((0, GENESIS_HASH), |r| (r.manifest.last_seq, r.manifest.last_hash()));
            problems.extend(super::integrity::floor_problem(reader.archived_through(&t), signed));
        }
        // The hot chain goes on from the last archive.
        let mut hot_links = None;
        if let (Some(reader), Some(last)) = (&reader, manifests.last()) {
            let (floor, _) = reader.archived_through(&t);
            if floor == last.last_seq {
                let blocks = reader.tenant_blocks_in(false, &t, floor)?;
                if let Some((_, first, _)) = blocks.first() {
                    let links = Some(first.first_seq) == last.last_seq.checked_add(1) && first.prev_hash == last.last_hash();
                    if !links {
                        problems.push(format!(
                            "the first hot events (seq {}) do not follow archive {} (which ends at seq {})",
                            first.first_seq, last.name, last.last_seq
                        ));
                    }
                    hot_links = Some(links);
                }
            }
        }
        reports.push(ArchiveReport {
            tenant: t,
            ok: problems.is_empty(),
            archives: manifests.len(),
            events,
            first_seq: manifests.first().map(|m| m.first_seq),
            last_seq: manifests.last().map(|m| m.last_seq),
            hot_links,
            problems,
        });
    }
    Ok(reports)
}

/// What [`restore`] did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub tenant: String,
    pub day: String,
    pub archives: Vec<String>,
    pub events: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Where the events now are.
    pub dir: PathBuf,
    /// The day files in `dir` they were written to (`YYYY-MM-DD.db`, by
    /// each event's own day: an archive can reach into the day before).
    pub files: Vec<String>,
}

/// Brings back the archives of `tenant` named for `day` (`YYYY-MM-DD`):
/// each is checked whole first ([`check_archive`]; a damaged archive is
/// refused), then its events are written at their own `seq`, with their own
/// hashes, into the day files of `<audit_dir>/restored/` (by each event's
/// own day), where the audit API and `keytrail verify` read them.
///
/// The audit directory is held throughout ([`super::erasure::maintenance_lock`],
/// across processes): an erasure (in a server) must not rewrite the archive
/// and the restored files while the old values are being brought back, nor
/// retention delete the archive, nor two restores write the same files.
/// Waits up to [`RESTORE_WAIT`] for whatever holds it; then nothing is done
/// and the error says what holds it. A restore that fails while it writes
/// (a full disk) deletes again what it wrote.
pub fn restore(audit_dir: &Path, archive_dir: &Path, tenant: &str, day: &str, key: &VerifyingKey) -> Result<RestoreReport, String> {
    restore_waiting(audit_dir, archive_dir, tenant, day, key, RESTORE_WAIT)
}

/// How long [`restore`] waits for a retention run, an erasure or another
/// restore to let the audit directory go.
pub const RESTORE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// [`restore`], waiting at most `wait` for the audit directory.
pub fn restore_waiting(
    audit_dir: &Path,
    archive_dir: &Path,
    tenant: &str,
    day: &str,
    key: &VerifyingKey,
    wait: std::time::Duration,
) -> Result<RestoreReport, String> {
    let day = &canonical_day(day)?;
    let wanted = day_manifests(archive_dir, tenant, day)?;
    let what = format!("`keytrail archive restore` of tenant `{tenant}`'s {day}");
    // The same wait as retention's (a wait too long to add to the clock,
    // as `--wait-secs` allows, is a wait without end); the message says
    // what to run again.
    let _held = match super::erasure::maintenance_lock_within(audit_dir, &what, wait) {
        Ok((held, _)) => held,
        Err(StoreError::Busy(_)) => {
            return Err(format!(
                "nothing was restored: the audit trail in {} is being changed by {} (waited {} s); run `keytrail archive restore` again when that has finished",
                audit_dir.display(),
                super::erasure::maintenance_holder(audit_dir),
                wait.as_secs_f64()
            ))
        }
        Err(error) => return Err(format!("nothing was restored: {error}")),
    };
    if let Some(hold) = restore_hold() {
        std::thread::sleep(hold);
    }
    let restored_dir = audit_dir.join(RESTORED_DIR);
    let reader = super::AuditReader::open(audit_dir).map_err(|e| e.to_string())?;
    let runs = reader.restored_runs(tenant).map_err(|e| e.to_string())?;
    drop(reader);
    let recorded = records(audit_dir, Some(tenant)).map_err(|e| e.to_string())?;
    let mut report = RestoreReport {
        tenant: tenant.to_string(),
        day: day.to_string(),
        archives: Vec::new(),
        events: 0,
        first_seq: u64::MAX,
        last_seq: 0,
        dir: restored_dir.clone(),
        files: Vec::new(),
    };
    let mut manifest_salts = Vec::new();
    // The `seq` ranges of the archives to restore, none restored yet.
    let mut ranges = Vec::new();
    for path in &wanted {
        let checked = check_archive(tenant, path, key, None);
        if !checked.problems.is_empty() {
            return Err(format!("the archive does not verify, nothing was restored:\n    {}", checked.problems.join("\n    ")));
        }
        let m = checked.manifest.expect("checked");
        // Only the archive this store recorded, as it recorded it: an older
        // copy (from before an erasure) would bring erased values back, and
        // another store's archive events this store never recorded.
        if !recorded.iter().any(|r| r.manifest.first_seq == m.first_seq && r.manifest.signature == m.signature) {
            return Err(format!(
                "archive {} of `{tenant}` is not the archive this store recorded (its manifest is not the one in {}: an older copy, or another store's), nothing was restored",
                m.name,
                audit_dir.join(META_FILE).display()
            ));
        }
        // Named as `--day` takes one archive alone: its day and first `seq`.
        let alone = format!("{}-{}", m.name.get(..10).unwrap_or(&m.name), m.first_seq);
        manifest_salts.push((alone, super::salts::from_hex(&m.personal_salts)?));
        ranges.push((m.first_seq, m.last_seq));
        // The parts of it already in `restored/`: all of it, or what a
        // restore that was stopped (a crash) could not take back.
        let parts: Vec<(u64, u64)> = runs
            .iter()
            .filter(|r| r.first_seq <= m.last_seq && r.last_seq >= m.first_seq)
            .map(|r| (r.first_seq.max(m.first_seq), r.last_seq.min(m.last_seq)))
            .collect();
        if parts == [(m.first_seq, m.last_seq)] {
            return Err(format!(
                "archive {} of `{tenant}` is already restored (events {}..={} in {})",
                m.name,
                m.first_seq,
                m.last_seq,
                restored_dir.display()
            ));
        }
        if !parts.is_empty() {
            let held: Vec<String> = parts.iter().map(|(a, b)| format!("{a}..={b}")).collect();
            return Err(format!(
                "archive {} of `{tenant}` is restored in part only: {} holds only events {} of its {}..={} (left by a restore that was stopped, such as by a crash), which `keytrail verify` reports; delete the day files in it that hold them (those of the days of events {}..={}), then restore again",
                m.name,
                restored_dir.display(),
                held.join(", "),
                m.first_seq,
                m.last_seq,
                m.first_seq,
                m.last_seq
            ));
        }
    }
    if let Some(problem) = salt_conflict(&restored_dir, tenant, &manifest_salts).map_err(|e| e.to_string())? {
        return Err(format!("nothing was restored: {problem}"));
    }
    create_private_dir(&restored_dir).map_err(|e| format!("cannot create {}: {e}", restored_dir.display()))?;
    let mut store = super::AuditWriterStore::open(&restored_dir).map_err(|e| e.to_string())?;
    // The restored events are hashed with their manifests' salts.
    for (_, salts) in &manifest_salts {
        store.import_salts(tenant, salts);
    }
    let written = write_restored(&mut store, tenant, &wanted, key, &mut report);
    drop(store);
    if let Err(error) = written {
        // None of it: a restored run short of its archive's end fails
        // `keytrail verify` and makes the day look restored already.
        return Err(match unrestore(&restored_dir, tenant, &ranges) {
            Ok(()) => format!("nothing was restored: {error}"),
            Err(e) => format!(
                "the restore failed: {error}; what it had written could not be taken back ({e}): delete the day files in {} before restoring again",
                restored_dir.display()
            ),
        });
    }
    Ok(report)
}

/// Where the archives to restore (by name, with their salts) hold a
/// personal salt for a day and consumer other than another of them, or
/// than the day file of `restored_dir` holds for `tenant`: a day file has
/// one salt per tenant and consumer, so their events cannot go into it
/// together. (Events committed to a day after its first archive went into
/// a day file made anew, with salts of its own, and then into a later
/// archive of the day, `<day>-<first seq>`.)
fn salt_conflict(restored_dir: &Path, tenant: &str, manifests: &[(String, super::salts::SaltMap)]) -> Result<Option<String>, StoreError> {
    let mut seen: HashMap<(i64, String), ([u8; 32], String)> = HashMap::new();
    let days: std::collections::BTreeSet<i64> = manifests.iter().flat_map(|(_, salts)| salts.keys().map(|(day, _)| *day)).collect();
    for (day, path) in super::list_days(restored_dir)? {
        if !days.contains(&day) {
            continue;
        }
        let conn = crate::store::open(&path)?;
        let Some(id) = conn.query_row("SELECT id FROM strings WHERE value = ?1", [tenant], |r| r.get::<_, i64>(0)).optional()? else { continue };
        let has_salts: Option<i64> =
            conn.query_row("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'personal_salts'", [], |r| r.get(0)).optional()?;
        if has_salts.is_none() {
            continue;
        }
        for (consumer, salt) in super::salts::tenant_salts(&conn, id as u32)? {
            let file = format!("the restored day file {}", path.display());
            seen.insert((day, consumer), (salt, file));
        }
    }
    for (name, salts) in manifests {
        for ((day, consumer), salt) in salts {
            match seen.get(&(*day, consumer.clone())) {
                Some((other, source)) if other != salt => {
                    let who = if consumer.is_empty() { "events without a consumer".to_string() } else { format!("consumer `{consumer}`") };
                    return Ok(Some(format!(
                        "the archive `--day {name}` names (of `{tenant}`) and {source} hash {who}'s events of {} with different personal salts (events committed to that day after its first archive was written went into a day file made anew, and into a later archive of the day), and a restored day file holds one salt each: restore the archives of that day one at a time, each alone by its day and first seq (`--day {name}`), deleting the restored day files of the one before first",
                        day_name(*day)
                    )));
                }
                Some(_) => {}
                None => {
                    seen.insert((*day, consumer.clone()), (*salt, format!("the archive `--day {name}` names")));
                }
            }
        }
    }
    Ok(None)
}

/// Writes the events of the archives `wanted` (checked whole before) into
/// the restored day files of `store`, adding them to `report`.
fn write_restored(store: &mut super::AuditWriterStore, tenant: &str, wanted: &[PathBuf], key: &VerifyingKey, report: &mut RestoreReport) -> Result<(), String> {
    let mut days = std::collections::BTreeSet::new();
    for path in wanted {
        // Runs of events of one UTC day, written one batch each: the
        // writer numbers and chains a batch from the head it is given.
        let mut chunk: Vec<Event> = Vec::new();
        let mut chunk_prev = GENESIS_HASH;
        let flush = |chunk: &mut Vec<Event>, prev: [u8; 32], expected: [u8; 32], store: &mut super::AuditWriterStore| -> Result<(), String> {
            let Some(first) = chunk.first() else { return Ok(()) };
            store.set_head(tenant, ChainHead { seq: first.seq - 1, hash: prev });
            store.insert_batch(chunk).map_err(|e| e.to_string())?;
            if store.heads().get(tenant).map(|h| h.hash) != Some(expected) {
                return Err("the restored events do not hash as archived".into());
            }
            Ok(())
        };
        let mut last_hash = GENESIS_HASH;
        // A failure to write, told apart from a problem with the archive.
        let mut failed = None;
        let mut each = |stored: StoredEvent| -> Result<(), String> {
            let day_changes = chunk.last().is_some_and(|e| day_of(e.timestamp_ms) != day_of(stored.event.timestamp_ms));
            if day_changes || chunk.len() >= 10_000 {
                flush(&mut chunk, chunk_prev, last_hash, store).inspect_err(|e| failed = Some(e.clone()))?;
            }
            if chunk.is_empty() {
                chunk_prev = stored.prev_hash.unwrap_or(GENESIS_HASH);
            }
            last_hash = stored.hash.unwrap_or(GENESIS_HASH);
            days.insert(day_of(stored.event.timestamp_ms));
            report.first_seq = report.first_seq.min(stored.event.seq);
            report.last_seq = report.last_seq.max(stored.event.seq);
            report.events += 1;
            chunk.push(stored.event);
            Ok(())
        };
        let checked = check_archive(tenant, path, key, Some(&mut each));
        if let Some(error) = failed {
            return Err(error);
        }
        if !checked.problems.is_empty() {
            return Err(format!("the archive changed while it was restored:\n    {}", checked.problems.join("\n    ")));
        }
        flush(&mut chunk, chunk_prev, last_hash, store)?;
        report.archives.push(checked.manifest.map(|m| m.name).unwrap_or_default());
    }
    report.files = days.into_iter().map(super::day_file_name).collect();
    store.flush_rollups().map_err(|e| e.to_string())
}

/// Deletes `tenant`'s blocks in `ranges` from the restored day files in
/// `restored_dir`: what a restore that failed had written of them. Nothing
/// of them stays on the disk: a file left without blocks (one the restore
/// made) is removed, and in one that keeps others' the dictionary entries
/// of their personal values no other event uses are overwritten, with
/// `secure_delete`, and the file rebuilt, as retention does with the
/// blocks of an expired archive.
fn unrestore(restored_dir: &Path, tenant: &str, ranges: &[(u64, u64)]) -> Result<(), StoreError> {
    use super::erasure;
    for (_, path) in super::list_days(restored_dir)? {
        let mut conn = crate::store::open(&path)?;
        let Some(id) = conn.query_row("SELECT id FROM strings WHERE value = ?1", [tenant], |r| r.get::<_, i64>(0)).optional()? else { continue };
        let removed = erasure::with_secure_delete(&mut conn, |conn| {
            let tx = conn.transaction()?;
            let (mut personal, mut removed) = (rustc_hash::FxHashSet::default(), 0);
            for (first, last) in ranges {
                personal.extend(erasure::personal_ids(&tx, id, tenant, *first, *last)?);
                removed += tx.execute("DELETE FROM blocks WHERE tenant = ?1 AND first_seq BETWEEN ?2 AND ?3", params![id, *first as i64, *last as i64])?;
            }
            erasure::overwrite_unused(&tx, personal)?;
            tx.commit()?;
            Ok(removed)
        })?;
        super::reader::DictCache::forget(&path);
        if removed == 0 {
            continue;
        }
        let left: i64 = conn.query_row("SELECT count(*) FROM blocks", [], |r| r.get(0))?;
        if left > 0 {
            erasure::compact(&conn)?;
            continue;
        }
        drop(conn);
        super::remove_day_file(&path)?;
    }
    Ok(())
}

/// For tests: `KEYTRAIL_FAILPOINT=restore_hold:<ms>` makes a restore hold
/// the audit directory that long before it begins.
fn restore_hold() -> Option<std::time::Duration> {
    let ms = std::env::var("KEYTRAIL_FAILPOINT").ok()?.strip_prefix("restore_hold:")?.parse().ok()?;
    Some(std::time::Duration::from_millis(ms))
}

/// `day` as archives are named: a day (`YYYY-MM-DD`; one written
/// otherwise, `2026-11-1`, which parses, names the same archives), or one
/// archive of a day by its first `seq` (`YYYY-MM-DD-<first seq>`: the name
/// of a day's later archive, as `keytrail archive verify` and `restore`
/// show it, or the day's own archive).
pub fn canonical_day(day: &str) -> Result<String, String> {
    let one_archive = || {
        let (date, seq) = day.rsplit_once('-')?;
        let seq: u64 = seq.bytes().all(|b| b.is_ascii_digit()).then(|| seq.parse().ok()).flatten()?;
        Some(format!("{}-{seq}", day_name(parse_day(date)?)))
    };
    parse_day(day).map(day_name).or_else(one_archive).ok_or_else(|| {
        format!("`{day}` is not a day: give it as YYYY-MM-DD, e.g. 2026-11-18 (or one archive of a day by its name, YYYY-MM-DD-<first seq>)")
    })
}

/// The manifests of `tenant`'s archives named for `day` (as [`canonical_day`]
/// gives it): the day's archives, or the one archive it names.
fn day_manifests(archive_dir: &Path, tenant: &str, day: &str) -> Result<Vec<PathBuf>, String> {
    let folder = tenant_dir(archive_dir, tenant);
    if parse_day(day).is_none() {
        // One archive: a later one of the day by its name, or the day's own
        // by its first `seq`.
        let (_, manifest) = paths(archive_dir, tenant, day);
        if manifest.is_file() {
            return Ok(vec![manifest]);
        }
        let (date, seq) = day.rsplit_once('-').unwrap_or((day, ""));
        let (_, own) = paths(archive_dir, tenant, date);
        let first_seq = std::fs::read(&own).ok().and_then(|bytes| serde_json::from_slice::<Manifest>(&bytes).ok()).map(|m| m.first_seq.to_string());
        if first_seq.as_deref() == Some(seq) {
            return Ok(vec![own]);
        }
        return Err(format!("no archive of tenant `{tenant}` named {day} (nor one of {date} from seq {seq}) in {}", folder.display()));
    }
    // The day's own archive, then those named `<day>-<first seq>` by their
    // `seq` (by file name, `-` would come before `.`, and `-100` before `-25`).
    let order = |p: &PathBuf| -> Option<u64> {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("").trim_end_matches(".manifest.json");
        match name.strip_prefix(day)? {
            "" => Some(0),
            rest => Some(rest.strip_prefix('-')?.parse().unwrap_or(u64::MAX)),
        }
    };
    let mut wanted: Vec<PathBuf> = manifest_paths(&folder).map_err(|e| e.to_string())?.into_iter().filter(|p| order(p).is_some()).collect();
    wanted.sort_by_key(|p| order(p));
    if wanted.is_empty() {
        return Err(format!("no archive of tenant `{tenant}` for {day} in {}", folder.display()));
    }
    Ok(wanted)
}

/// Writes the events of `tenant`'s archives named for `day` to `out`, one
/// a line as `{"prev_hash", "hash", "event"}` (`event` as in the JSON
/// export), oldest first, after checking each archive whole (a damaged one
/// is refused before anything of it is written). Returns the events written.
/// An error writing to `out` is returned as it came (a closed pipe is the
/// reader going away, not a problem of the archive); the others carry
/// their message.
pub fn cat(archive_dir: &Path, tenant: &str, day: &str, key: &VerifyingKey, out: &mut dyn Write) -> std::io::Result<u64> {
    let day = &canonical_day(day).map_err(std::io::Error::other)?;
    let wanted = day_manifests(archive_dir, tenant, day).map_err(std::io::Error::other)?;
    let mut written = 0u64;
    for path in &wanted {
        let checked = check_archive(tenant, path, key, None);
        if !checked.problems.is_empty() {
            return Err(std::io::Error::other(format!("the archive does not verify:\n    {}", checked.problems.join("\n    "))));
        }
        let mut line = Vec::with_capacity(2048);
        let mut write_error: Option<std::io::Error> = None;
        let mut each = |stored: StoredEvent| -> Result<(), String> {
            let (prev, hash) = (hex(&stored.prev_hash.unwrap_or_default()), hex(&stored.hash.unwrap_or_default()));
            line.clear();
            serde_json::to_writer(&mut line, &LineOut { prev_hash: &prev, hash: &hash, event: &stored.event }).map_err(|e| e.to_string())?;
            line.push(b'\n');
            if let Err(e) = out.write_all(&line) {
                let text = format!("cannot write: {e}");
                write_error = Some(e);
                return Err(text);
            }
            written += 1;
            Ok(())
        };
        let checked = check_archive(tenant, path, key, Some(&mut each));
        if let Some(e) = write_error {
            return Err(e);
        }
        if !checked.problems.is_empty() {
            return Err(std::io::Error::other(format!("the archive changed while it was read:\n    {}", checked.problems.join("\n    "))));
        }
    }
    Ok(written)
}

/// Calls `each` with every event of `tenant`'s archives named for
/// `from_day` or a later day, archive by archive. An archive that does not
/// verify is read as far as it can be and named in the answer's problems
/// (the caller decides whether what it read is good enough).
pub fn scan_since(archive_dir: &Path, tenant: &str, from_day: i64, key: &VerifyingKey, each: &mut dyn FnMut(&StoredEvent)) -> Result<Vec<String>, StoreError> {
    let mut problems = Vec::new();
    for path in manifest_paths(&tenant_dir(archive_dir, tenant))? {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.get(..10).and_then(parse_day).is_none_or(|day| day < from_day) {
            continue;
        }
        let mut one = |stored: StoredEvent| -> Result<(), String> {
            each(&stored);
            Ok(())
        };
        problems.extend(check_archive(tenant, &path, key, Some(&mut one)).problems);
    }
    Ok(problems)
}

/// What erasing a consumer's personal values did to a tenant's archives.
#[derive(Debug, Default)]
pub(super) struct ArchiveErasure {
    /// Archives rewritten and signed again.
    pub(super) archives: Vec<String>,
    pub(super) events: u64,
    /// Salts removed from manifests (files and records).
    pub(super) salts: u64,
}

/// Removes `consumer`'s personal values from `tenant`'s archive files,
/// keeping each event's commitment (so every line still hashes as it did),
/// and its salts from their manifests, which are signed again; the
/// records in `meta` (also those of deleted archives) lose the salts too.
pub(super) fn erase_consumer(
    archive_dir: &Path,
    meta: &rusqlite::Connection,
    tenant: &str,
    consumer: &str,
    level: i32,
    signer: &Signer,
) -> Result<ArchiveErasure, StoreError> {
    let mut out = ArchiveErasure::default();
    let names_consumer = |m: &Manifest| m.personal_salts.values().filter(|c| c.contains_key(consumer)).count() as u64;
    for path in manifest_paths(&tenant_dir(archive_dir, tenant))? {
        let read = std::fs::read(&path).map_err(StoreError::from).and_then(|bytes| {
            serde_json::from_slice::<Manifest>(&bytes).map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))
        });
        let manifest = read?;
        let salts_here = names_consumer(&manifest);
        if salts_here == 0 {
            finish_recording(meta, tenant, &path, &manifest, consumer, &signer.public_key())?;
            continue;
        }
        // Only an archive this store wrote, as it recorded it, is re-signed:
        // the whole of it checked against the store's key first, and its
        // manifest the one `meta.db` holds (not an older copy put back).
        let refused = |why: String| StoreError::Corrupt(format!("archive {}: {why}; it was not erased: run `keytrail archive verify`", manifest.name));
        if let Some(problem) = check_archive(tenant, &path, &signer.public_key(), None).problems.into_iter().next() {
            return Err(refused(problem));
        }
        let recorded: Option<String> = meta
            .query_row("SELECT manifest FROM archives WHERE tenant = ?1 AND first_seq = ?2", params![tenant, manifest.first_seq as i64], |r| r.get(0))
            .optional()?;
        let recorded_signature = recorded.and_then(|text| serde_json::from_str::<Manifest>(&text).ok()).map(|m| m.signature);
        if recorded_signature.is_some_and(|signature| signature != manifest.signature) {
            return Err(refused("its manifest is not the one this store recorded".into()));
        }
        let salts = super::salts::from_hex(&manifest.personal_salts).map_err(StoreError::Corrupt)?;
        let file = std::fs::File::open(path.with_file_name(&manifest.file))?;
        let decoded = BufReader::with_capacity(1 << 20, zstd::stream::read::Decoder::new(file)?);
        let mut lines = EventLines::new(decoded, &manifest.format)
            .ok_or_else(|| StoreError::Corrupt(format!("archive {}: format `{}` is not one this version reads", manifest.name, manifest.format)))?;
        let mut writer = ArchiveWriter::create(archive_dir, tenant, &manifest.name, level)?;
        let mut erased = 0u64;
        let mut running = manifest.prev_hash();
        let rewritten = (|| -> Result<(), StoreError> {
            let damaged = |what: String| StoreError::Corrupt(format!("archive {}: {what}; run `keytrail archive verify`", manifest.name));
            loop {
                let claimed = match lines.next().map_err(&damaged)? {
                    Next::End => return Ok(()),
                    Next::Unreadable { line, error, .. } => return Err(damaged(format!("line {line} cannot be read ({error})"))),
                    Next::Event(claimed) => claimed,
                };
                let mut event = claimed.event;
                let prev = claimed.prev_hash.unwrap_or(running);
                let salt = super::salts::salt_for(&salts, &event).copied();
                let hash = event.chain_hash(&prev, salt.as_ref()).map_err(|_| damaged(format!("seq {}: no personal salt", event.seq)))?;
                if claimed.hash.is_some_and(|claimed| claimed != hash) {
                    return Err(damaged(format!("seq {} does not hash as archived", event.seq)));
                }
                if event.salt_owner() == Some(consumer) && event.has_personal() {
                    let salt = salt.ok_or_else(|| damaged(format!("seq {}: no personal salt", event.seq)))?;
                    event.erase_personal(&salt);
                    if event.chain_hash(&prev, None).ok() != Some(hash) {
                        return Err(damaged(format!("seq {} does not hash the same once erased", event.seq)));
                    }
                    erased += 1;
                }
                running = hash;
                let salt = super::salts::salt_for(&salts, &event).copied();
                writer.push(&StoredEvent { event, hash: Some(hash), prev_hash: Some(prev) }, salt.as_ref())?;
            }
        })();
        if let Err(error) = rewritten {
            writer.abandon();
            return Err(error);
        }
        let new = writer.finish_as(&manifest, signer)?;
        meta.execute(
            "UPDATE archives SET manifest = ?3 WHERE tenant = ?1 AND first_seq = ?2",
            params![tenant, new.first_seq as i64, serde_json::to_string(&new).map_err(|e| StoreError::Corrupt(e.to_string()))?],
        )?;
        out.archives.push(new.name.clone());
        out.events += erased;
        out.salts += salts_here;
    }
    // Records still naming the consumer's salts: deleted archives.
    let records: Vec<(i64, String)> = {
        let mut stmt = meta.prepare("SELECT first_seq, manifest FROM archives WHERE tenant = ?1")?;
        let rows = stmt.query_map(params![tenant], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (first_seq, text) in records {
        let mut manifest: Manifest = serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("an archive record: {e}")))?;
        let salts_here = names_consumer(&manifest);
        if salts_here == 0 {
            continue;
        }
        for consumers in manifest.personal_salts.values_mut() {
            consumers.remove(consumer);
        }
        manifest.personal_salts.retain(|_, consumers| !consumers.is_empty());
        manifest.sign(signer);
        let text = serde_json::to_string(&manifest).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        meta.execute("UPDATE archives SET manifest = ?3 WHERE tenant = ?1 AND first_seq = ?2", params![tenant, first_seq, text])?;
        out.salts += salts_here;
    }
    Ok(out)
}

/// Records the manifest at `path` in `meta` when an erasure of `consumer`
/// rewrote its archive and stopped before recording it (a crash, a failed
/// write): the record still names the consumer's salts, the manifest does
/// not. Only the same run of the chain, checked whole against the store's
/// `key`, whose salts are the record's less some (salts only ever go: an
/// older copy put back holds more than its record, never fewer).
fn finish_recording(meta: &rusqlite::Connection, tenant: &str, path: &Path, manifest: &Manifest, consumer: &str, key: &VerifyingKey) -> Result<(), StoreError> {
    let recorded: Option<String> = meta
        .query_row("SELECT manifest FROM archives WHERE tenant = ?1 AND first_seq = ?2", params![tenant, manifest.first_seq as i64], |r| r.get(0))
        .optional()?;
    let Some(record) = recorded.and_then(|text| serde_json::from_str::<Manifest>(&text).ok()) else { return Ok(()) };
    let names_consumer = record.personal_salts.values().any(|c| c.contains_key(consumer));
    let same_run = (record.first_seq, record.last_seq, record.events, &record.prev_hash, &record.last_hash)
        == (manifest.first_seq, manifest.last_seq, manifest.events, &manifest.prev_hash, &manifest.last_hash);
    let fewer_salts = manifest
        .personal_salts
        .iter()
        .all(|(day, salts)| salts.iter().all(|(c, salt)| record.personal_salts.get(day).and_then(|r| r.get(c)) == Some(salt)));
    if record.signature == manifest.signature || !names_consumer || !same_run || !fewer_salts {
        return Ok(());
    }
    if !check_archive(tenant, path, key, None).problems.is_empty() {
        return Ok(());
    }
    let text = serde_json::to_string(manifest).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    meta.execute("UPDATE archives SET manifest = ?3 WHERE tenant = ?1 AND first_seq = ?2", params![tenant, manifest.first_seq as i64, text])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Category;

    /// An archive of `acme` (day 2026-11-01) signed by `signer`: 5 events,
    /// the 3rd of consumer `c1` with an address; `outcome` tells copies apart.
    fn personal_archive(archive_dir: &Path, signer: &Signer, outcome: &str) -> Manifest {
        let salt = [9u8; 32];
        let mut writer = ArchiveWriter::create(archive_dir, "acme", "2026-11-01", DEFAULT_ZSTD_LEVEL).unwrap();
        let mut prev = GENESIS_HASH;
        for seq in 1..=5u64 {
            let mut e = Event::new("acme", Category::Request, "request", outcome);
            e.seq = seq;
            e.timestamp_ms = 1_793_491_200_000 + seq as i64;
            e.event_id = crate::event::derived_event_id("acme", seq, e.timestamp_ms);
            if seq == 3 {
                e.consumer_id = Some("c1".into());
                e.client_ip = Some("203.0.113.9".into());
            }
            let salt = e.has_personal().then_some(&salt);
            let hash = e.chain_hash(&prev, salt).unwrap();
            writer.push(&StoredEvent { event: e, hash: Some(hash), prev_hash: Some(prev) }, salt).unwrap();
            prev = hash;
        }
        writer.finish(&[], signer, 0).unwrap()
    }

    /// Restore and `cat` read an archive twice (check, then hand on): a file
    /// replaced between the two (with events chained from the manifest's
    /// previous hash — block hashes are no secret) hands on nothing.
    #[test]
    fn a_replaced_file_hands_on_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::load_or_create(&dir.path().join("signing.key")).unwrap();
        let archive_dir = dir.path().join("archive");
        personal_archive(&archive_dir, &signer, "success");
        let (data, manifest) = paths(&archive_dir, "acme", "2026-11-01");
        let hand_on = || {
            let mut outcomes = Vec::new();
            let checked = check_archive("acme", &manifest, &signer.public_key(), Some(&mut |s: StoredEvent| {
                outcomes.push(s.event.outcome.to_string());
                Ok(())
            }));
            (outcomes, checked.problems)
        };
        let (outcomes, problems) = hand_on();
        assert_eq!((outcomes.len(), problems.len()), (5, 0), "{problems:?}");
        let genuine = std::fs::read(&data).unwrap();
        let other = tempfile::tempdir().unwrap();
        personal_archive(&other.path().join("archive"), &signer, "FORGED");
        std::fs::copy(paths(&other.path().join("archive"), "acme", "2026-11-01").0, &data).unwrap();
        let (outcomes, problems) = hand_on();
        assert!(outcomes.is_empty(), "{outcomes:?}");
        assert!(problems[0].contains("SHA-256 is not the manifest's"), "{problems:?}");
        std::fs::write(&data, genuine).unwrap();
        assert_eq!(hand_on().0.len(), 5);
    }

    /// A damaged file (not the one its manifest signed) is read a bounded
    /// line at a time: a few kilobytes of zstd holding a line of tens of
    /// megabytes are reported, not read whole.
    #[test]
    fn a_damaged_file_is_read_a_bounded_line_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::load_or_create(&dir.path().join("signing.key")).unwrap();
        let archive_dir = dir.path().join("archive");
        personal_archive(&archive_dir, &signer, "success");
        let (data, manifest) = paths(&archive_dir, "acme", "2026-11-01");
        let hostile = zstd::encode_all(vec![b' '; MAX_UNVERIFIED_LINE + 1024].as_slice(), 3).unwrap();
        assert!(hostile.len() < 64 * 1024);
        std::fs::write(&data, hostile).unwrap();
        let problems = check_archive("acme", &manifest, &signer.public_key(), None).problems;
        assert!(problems.iter().any(|p| p.contains(&format!("line 1 is longer than {MAX_UNVERIFIED_LINE} bytes"))), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("SHA-256 is not the manifest's")), "{problems:?}");
    }

    /// Sequence numbers near `u64::MAX` in a damaged manifest or line are
    /// reported, never an overflow (a panic, or a silent wrap).
    #[test]
    fn sequence_numbers_at_the_edge_are_reported_not_overflowed() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::load_or_create(&dir.path().join("signing.key")).unwrap();
        let archive_dir = dir.path().join("archive");
        personal_archive(&archive_dir, &signer, "success");
        let (data, manifest) = paths(&archive_dir, "acme", "2026-11-01");
        let original: Manifest = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
        for (first, last) in [(1, u64::MAX), (0, 5), (u64::MAX, u64::MAX)] {
            let m = Manifest { first_seq: first, last_seq: last, ..original.clone() };
            std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
            let reports = verify_archives(&archive_dir, None, Some("acme"), &signer.public_key()).unwrap();
            assert!(!reports[0].ok, "{first}..={last}");
        }
        // A one-event-a-line (v2) archive whose event says seq u64::MAX.
        let m = Manifest { format: FORMAT_EVENT_LINES.into(), ..original.clone() };
        std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
        let mut e = Event::new("acme", Category::Request, "request", "success");
        e.seq = u64::MAX;
        let line = serde_json::to_string(&LineOut { prev_hash: &hex(&[0; 32]), hash: &hex(&[0; 32]), event: &e }).unwrap();
        std::fs::write(&data, zstd::encode_all(format!("{line}\n{line}\n").as_bytes(), 1).unwrap()).unwrap();
        assert!(!check_archive("acme", &manifest, &signer.public_key(), None).problems.is_empty());
    }

    /// Erasure re-signs an archive only once it has checked it whole
    /// against the store's key and found its manifest the recorded one: a
    /// forged archive (signed with another key) or an older copy put back
    /// is refused and left as it was, never laundered by the re-signing.
    #[test]
    fn erasure_re_signs_only_archives_it_checked() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::load_or_create(&dir.path().join("signing.key")).unwrap();
        let archive_dir = dir.path().join("archive");
        let meta = rusqlite::Connection::open_in_memory().unwrap();
        meta.execute_batch(SCHEMA).unwrap();
        let (data, manifest) = paths(&archive_dir, "acme", "2026-11-01");
        let genuine = personal_archive(&archive_dir, &signer, "success");
        insert_record(&meta, &genuine).unwrap();
        let genuine_bytes = (std::fs::read(&data).unwrap(), std::fs::read(&manifest).unwrap());

        // Forged with another key.
        let mallory = Signer::load_or_create(&dir.path().join("mallory.key")).unwrap();
        personal_archive(&archive_dir, &mallory, "FORGED");
        let forged = (std::fs::read(&data).unwrap(), std::fs::read(&manifest).unwrap());
        let error = erase_consumer(&archive_dir, &meta, "acme", "c1", DEFAULT_ZSTD_LEVEL, &signer).unwrap_err().to_string();
        assert!(error.contains("signature does not verify") && error.contains("was not erased"), "{error}");
        assert_eq!((std::fs::read(&data).unwrap(), std::fs::read(&manifest).unwrap()), forged, "left as it was");
        assert!(!check_archive("acme", &manifest, &signer.public_key(), None).problems.is_empty());

        // The genuine archive erases; the copy from before the erasure,
        // put back, is refused by the next one (it would bring the address back).
        std::fs::write(&data, &genuine_bytes.0).unwrap();
        std::fs::write(&manifest, &genuine_bytes.1).unwrap();
        let erased = erase_consumer(&archive_dir, &meta, "acme", "c1", DEFAULT_ZSTD_LEVEL, &signer).unwrap();
        assert_eq!(erased.events, 1);
        assert!(check_archive("acme", &manifest, &signer.public_key(), None).problems.is_empty());
        std::fs::write(&data, &genuine_bytes.0).unwrap();
        std::fs::write(&manifest, &genuine_bytes.1).unwrap();
        let error = erase_consumer(&archive_dir, &meta, "acme", "c1", DEFAULT_ZSTD_LEVEL, &signer).unwrap_err().to_string();
        assert!(error.contains("not the one this store recorded"), "{error}");
    }

    #[test]
    fn events_of_a_block_that_does_not_hash_are_not_handed_on() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::load_or_create(&dir.path().join("signing.key")).unwrap();
        let archive_dir = dir.path().join("archive");
        let mut writer = ArchiveWriter::create(&archive_dir, "acme", "2026-11-01", DEFAULT_ZSTD_LEVEL).unwrap();
        let mut prev = GENESIS_HASH;
        for seq in 1..=BLOCK_EVENTS as u64 + 10 {
            let mut e = Event::new("acme", Category::Request, "request", "success");
            e.seq = seq;
            e.timestamp_ms = 1_793_491_200_000 + seq as i64;
            e.event_id = crate::event::derived_event_id("acme", seq, e.timestamp_ms);
            e.latency_us = Some(seq * 3);
            let hash = e.chain_hash(&prev, None).unwrap();
            writer.push(&StoredEvent { event: e, hash: Some(hash), prev_hash: Some(prev) }, None).unwrap();
            prev = hash;
        }
        writer.finish(&[], &signer, 0).unwrap();
        let (data, manifest) = paths(&archive_dir, "acme", "2026-11-01");
        let handed_on = |path: &Path| {
            let mut seqs = Vec::new();
            let checked = check_archive("acme", path, &signer.public_key(), Some(&mut |s: StoredEvent| {
                seqs.push(s.event.seq);
                Ok(())
            }));
            (seqs, checked.problems)
        };
        let (seqs, problems) = handed_on(&manifest);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(seqs, (1..=BLOCK_EVENTS as u64 + 10).collect::<Vec<_>>());

        // The second block's first latency changed: only the first block is handed on.
        let mut text = String::new();
        zstd::stream::read::Decoder::new(std::fs::File::open(&data).unwrap()).unwrap().read_to_string(&mut text).unwrap();
        let mut lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let latency = lines[1]["columns"].as_array_mut().unwrap().iter_mut().find(|c| c["keys"] == serde_json::json!(["latency_us"])).unwrap();
        latency["values"][0] = serde_json::json!(1);
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&data, zstd::encode_all(text.as_bytes(), 1).unwrap()).unwrap();
        // Handing on reads a private copy checked against the manifest's
        // SHA-256 first: nothing of a changed file goes on.
        let (seqs, problems) = handed_on(&manifest);
        assert!(seqs.is_empty(), "{} events handed on", seqs.len());
        assert!(problems[0].contains("SHA-256 is not the manifest's"), "{problems:?}");
        // Checked without handing on, the change is named by its block.
        let problems = check_archive("acme", &manifest, &signer.public_key(), None).problems;
        let expected = format!("seq {}..={}: the events do not hash to their block's hash", BLOCK_EVENTS + 1, BLOCK_EVENTS + 10);
        assert!(problems.iter().any(|p| p.contains(&expected)), "{problems:?}");
    }
}
