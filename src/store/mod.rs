//! Persistence: the embedded SQLite stores.
//!
//! Two files under the data directory, each with its own owner:
//! - `control.db` ([`control`]): tenants, apis, consumers, key hashes and
//!   admins. Written by the control plane; read into in-memory snapshots.
//! - `audit/` ([`audit`]): the events, one SQLite file per UTC day. Written by
//!   exactly one thread (the audit writer); read by the audit API through
//!   short-lived read connections.
//!
//! Nothing outside this module writes SQL.

pub mod audit;
pub mod control;
pub mod sketch;
pub mod varint;

use rusqlite::Connection;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Conflict(String),
    /// The audit directory is held by another process's maintenance past
    /// the wait ([`audit::erasure::maintenance_lock_within`]): worth
    /// trying again soon.
    #[error("{0}")]
    Busy(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("store error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store error: {0}")]
    Io(#[from] std::io::Error),
    #[error("store is damaged: {0}")]
    Corrupt(String),
    /// Written by a keytrail whose store format this one does not read.
    #[error("{0}")]
    Incompatible(String),
}

impl From<audit::block::BlockError> for StoreError {
    fn from(error: audit::block::BlockError) -> Self {
        StoreError::Corrupt(error.to_string())
    }
}

/// Opens a SQLite file with the settings every keytrail connection uses.
pub(crate) fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

/// Serialises a millisecond timestamp as RFC 3339 in API answers.
pub(crate) fn ser_ts<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::event::format_timestamp(*ms))
}

pub(crate) fn ser_opt_ts<S: serde::Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => s.serialize_str(&crate::event::format_timestamp(*ms)),
        None => s.serialize_none(),
    }
}
