//! The embedded audit store: one SQLite table of events, keyed by
//! `(tenant_id, seq)`, each row with its chain hash.
//!
//! [`AuditWriterStore`] is owned by the audit writer thread and is the only
//! code that inserts; [`AuditReader`] is opened per query. WAL mode lets the
//! readers run while the writer commits.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::types::Value;
use rusqlite::{params, Connection};

use super::{open, StoreError};
use crate::event::{Category, Event};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    tenant_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    category TEXT NOT NULL,
    event_type TEXT NOT NULL,
    request_id TEXT,
    actor TEXT,
    target TEXT,
    outcome TEXT NOT NULL,
    consumer_id TEXT,
    consumer_name TEXT,
    api_id TEXT,
    key_id TEXT,
    key_hint TEXT,
    method TEXT,
    path TEXT,
    status_code INTEGER,
    latency_us INTEGER,
    upstream_latency_us INTEGER,
    request_size_bytes INTEGER,
    response_size_bytes INTEGER,
    client_ip TEXT,
    user_agent TEXT,
    country TEXT,
    error_code TEXT,
    error_message TEXT,
    details TEXT,
    hash BLOB NOT NULL,
    PRIMARY KEY (tenant_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_category_time ON events(tenant_id, category, ts_ms, seq);
CREATE INDEX IF NOT EXISTS events_consumer_time ON events(tenant_id, consumer_id, ts_ms) WHERE consumer_id IS NOT NULL;
";

const COLUMNS: &str = "tenant_id, seq, event_id, ts_ms, category, event_type, request_id, actor, target, outcome, \
    consumer_id, consumer_name, api_id, key_id, key_hint, method, path, status_code, latency_us, \
    upstream_latency_us, request_size_bytes, response_size_bytes, client_ip, user_agent, country, \
    error_code, error_message, details, hash";

/// An event as committed: with its sequence number and chain hash.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub event: Event,
    pub hash: [u8; 32],
}

/// The last committed position of one tenant's chain.
#[derive(Debug, Clone, Copy)]
pub struct ChainHead {
    pub seq: u64,
    pub hash: [u8; 32],
}

pub struct AuditWriterStore {
    conn: Connection,
}

impl AuditWriterStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = open(path)?;
        conn.execute_batch(SCHEMA)?;
        Ok(AuditWriterStore { conn })
    }

    /// The head of every tenant's chain, to continue numbering after a restart.
    pub fn load_heads(&self) -> Result<HashMap<String, ChainHead>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT tenant_id, max(seq), hash FROM events GROUP BY tenant_id")?;
        let rows = stmt.query_map([], |r| {
            let hash: Vec<u8> = r.get(2)?;
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64, hash))
        })?;
        let mut heads = HashMap::new();
        for row in rows {
            let (tenant, seq, hash) = row?;
            let hash: [u8; 32] = hash.try_into().map_err(|_| {
                rusqlite::Error::InvalidColumnType(2, "hash".into(), rusqlite::types::Type::Blob)
            })?;
            heads.insert(tenant, ChainHead { seq, hash });
        }
        Ok(heads)
    }

    /// Inserts a batch of sequenced, hashed events in one transaction.
    pub fn insert_batch(&mut self, batch: &[StoredEvent]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(&format!(
                "INSERT INTO events ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, \
                 ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29)"
            ))?;
            for stored in batch {
                let e = &stored.event;
                stmt.execute(params![
                    e.tenant_id,
                    e.seq as i64,
                    e.event_id,
                    e.timestamp_ms,
                    e.category().as_str(),
                    e.event_type,
                    e.request_id,
                    e.actor,
                    e.target,
                    e.outcome,
                    e.consumer_id,
                    e.consumer_name,
                    e.api_id,
                    e.key_id,
                    e.key_hint,
                    e.method,
                    e.path,
                    e.status_code,
                    e.latency_us.map(|v| v as i64),
                    e.upstream_latency_us.map(|v| v as i64),
                    e.request_size_bytes.map(|v| v as i64),
                    e.response_size_bytes.map(|v| v as i64),
                    e.client_ip,
                    e.user_agent,
                    e.country,
                    e.error_code,
                    e.error_message,
                    e.details.as_ref().map(|d| d.to_string()),
                    stored.hash.as_slice(),
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
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
    pub status_min: Option<u16>,
    pub status_max: Option<u16>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Resume after this position (exclusive), newest-first order.
    pub before: Option<(i64, u64)>,
}

impl EventFilter {
    fn to_sql(&self) -> (String, Vec<Value>) {
        let mut clauses = vec!["tenant_id = ?".to_string()];
        let mut values = vec![Value::Text(self.tenant_id.clone())];
        let mut text = |clause: &str, v: &Option<String>| {
            if let Some(v) = v {
                clauses.push(clause.to_string());
                values.push(Value::Text(v.clone()));
            }
        };
        text("category = ?", &self.category.map(|c| c.as_str().to_string()));
        text("event_type = ?", &self.event_type);
        text("consumer_id = ?", &self.consumer_id);
        text("api_id = ?", &self.api_id);
        text("method = ?", &self.method);
        if let Some(prefix) = &self.path_prefix {
            clauses.push("substr(path, 1, ?) = ?".into());
            values.push(Value::Integer(prefix.chars().count() as i64));
            values.push(Value::Text(prefix.clone()));
        }
        let mut int = |clause: &str, v: Option<i64>| {
            if let Some(v) = v {
                clauses.push(clause.to_string());
                values.push(Value::Integer(v));
            }
        };
        int("status_code >= ?", self.status_min.map(i64::from));
        int("status_code <= ?", self.status_max.map(i64::from));
        int("ts_ms >= ?", self.from_ms);
        int("ts_ms <= ?", self.to_ms);
        if let Some((ts, seq)) = self.before {
            clauses.push("(ts_ms < ? OR (ts_ms = ? AND seq < ?))".into());
            values.extend([Value::Integer(ts), Value::Integer(ts), Value::Integer(seq as i64)]);
        }
        (clauses.join(" AND "), values)
    }
}

fn row_to_stored(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    let category: String = r.get(4)?;
    let details: Option<String> = r.get(27)?;
    let hash: Vec<u8> = r.get(28)?;
    let u = |i: usize| -> rusqlite::Result<Option<u64>> { Ok(r.get::<_, Option<i64>>(i)?.map(|v| v as u64)) };
    Ok(StoredEvent {
        event: Event {
            tenant_id: r.get(0)?,
            seq: r.get::<_, i64>(1)? as u64,
            event_id: r.get(2)?,
            timestamp_ms: r.get(3)?,
            category: Category::parse(&category),
            event_type: r.get(5)?,
            request_id: r.get(6)?,
            actor: r.get(7)?,
            target: r.get(8)?,
            outcome: r.get(9)?,
            consumer_id: r.get(10)?,
            consumer_name: r.get(11)?,
            api_id: r.get(12)?,
            key_id: r.get(13)?,
            key_hint: r.get(14)?,
            method: r.get(15)?,
            path: r.get(16)?,
            status_code: r.get(17)?,
            latency_us: u(18)?,
            upstream_latency_us: u(19)?,
            request_size_bytes: u(20)?,
            response_size_bytes: u(21)?,
            client_ip: r.get(22)?,
            user_agent: r.get(23)?,
            country: r.get(24)?,
            error_code: r.get(25)?,
            error_message: r.get(26)?,
            details: details.and_then(|d| serde_json::from_str(&d).ok()),
        },
        hash: hash.try_into().unwrap_or([0; 32]),
    })
}

/// A read-only view of the audit store, opened per query.
pub struct AuditReader {
    conn: Connection,
}

impl AuditReader {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(AuditReader { conn })
    }

    /// Calls `each` for every matching event, newest first, stopping after
    /// `limit` events or when `each` returns false. Rows are read one at a
    /// time, so an export of any size runs in constant memory.
    pub fn scan(
        &self,
        filter: &EventFilter,
        limit: Option<u64>,
        mut each: impl FnMut(StoredEvent) -> bool,
    ) -> Result<(), StoreError> {
        let (clause, mut values) = filter.to_sql();
        let mut sql = format!("SELECT {COLUMNS} FROM events WHERE {clause} ORDER BY ts_ms DESC, seq DESC");
        if let Some(limit) = limit {
            sql.push_str(" LIMIT ?");
            values.push(Value::Integer(limit as i64));
        }
        let mut stmt = self.conn.prepare(&sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(values))?;
        while let Some(row) = rows.next()? {
            if !each(row_to_stored(row)?) {
                break;
            }
        }
        Ok(())
    }

    /// Every event of a tenant in chain order (for verification and tests).
    pub fn chain(&self, tenant_id: &str) -> Result<Vec<StoredEvent>, StoreError> {
        let mut stmt = self.conn.prepare(&format!("SELECT {COLUMNS} FROM events WHERE tenant_id = ?1 ORDER BY seq"))?;
        let rows = stmt.query_map([tenant_id], row_to_stored)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
