//! The embedded audit store: one SQLite table of events, keyed by
//! `(tenant, seq)`, each row with its chain hash.
//!
//! Physical design (measured with `benches/store.rs`, see ARCHITECTURE.md):
//! - Repeated strings (tenant, consumer, api, key, path, method, client IP,
//!   user agent, outcome, codes…) are interned into the `strings` table and
//!   stored as small integers. The writer keeps the dictionary in memory.
//! - Event and request ids that are UUIDs are stored as 16-byte blobs (other
//!   request ids as text; SQLite columns accept both).
//! - One table clustered on `(tenant, ts_ms, seq)` (`WITHOUT ROWID`), so the
//!   list and export paths read rows in key order instead of jumping from an
//!   index into the table; a unique index on `(tenant, seq)` for the chain; an
//!   index on `(tenant, consumer, ts_ms)`; and a partial index on
//!   `(tenant, category, ts_ms)` holding only non-request events (security,
//!   admin, app: a few percent of rows) so that their listings stay fast.
//! - `category` is a fixed small code (0 request, 1 security, 2 admin, 3 app),
//!   not an interned string, so the partial index can name it.
//!
//! [`AuditWriterStore`] is owned by the audit writer thread and is the only
//! code that inserts; [`AuditReader`] is opened per query. WAL mode lets the
//! readers run while the writer commits.

use std::cell::RefCell;
use std::collections::HashMap;

use rustc_hash::FxHashMap;
use std::path::Path;

use rusqlite::types::{Value, ValueRef};
use rusqlite::{params, Connection, OptionalExtension};

use super::sketch::LatencySketch;
use super::{open, StoreError};
use crate::event::{Category, Event};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS strings (
    id INTEGER PRIMARY KEY,
    value TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS events (
    tenant INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    event_id BLOB NOT NULL,
    ts_ms INTEGER NOT NULL,
    category INTEGER NOT NULL,
    event_type INTEGER NOT NULL,
    request_id BLOB,
    actor INTEGER,
    target INTEGER,
    outcome INTEGER NOT NULL,
    consumer INTEGER,
    consumer_name INTEGER,
    api INTEGER,
    key_id INTEGER,
    key_hint INTEGER,
    method INTEGER,
    path INTEGER,
    status_code INTEGER,
    latency_us INTEGER,
    upstream_latency_us INTEGER,
    request_size_bytes INTEGER,
    response_size_bytes INTEGER,
    client_ip INTEGER,
    user_agent INTEGER,
    country INTEGER,
    error_code INTEGER,
    error_message INTEGER,
    details TEXT,
    hash BLOB NOT NULL,
    PRIMARY KEY (tenant, ts_ms, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS events_chain ON events(tenant, seq);
CREATE INDEX IF NOT EXISTS events_other_categories ON events(tenant, category, ts_ms) WHERE category <> 0;
CREATE INDEX IF NOT EXISTS events_consumer_time ON events(tenant, consumer, ts_ms) WHERE consumer IS NOT NULL;
CREATE TABLE IF NOT EXISTS chain_heads (
    tenant INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    hash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS rollup_watermark (
    tenant INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rollup_hourly (
    tenant INTEGER NOT NULL,
    hour INTEGER NOT NULL,
    consumer INTEGER NOT NULL,
    path INTEGER NOT NULL,
    method INTEGER NOT NULL,
    status_class INTEGER NOT NULL,
    api INTEGER NOT NULL,
    calls INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    latency_sum_us INTEGER NOT NULL,
    latency BLOB NOT NULL,
    PRIMARY KEY (tenant, hour, consumer, path, method, status_class, api)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rollup_consumer ON rollup_hourly(tenant, consumer, hour);
CREATE TABLE IF NOT EXISTS rollup_consumer_hourly (
    tenant INTEGER NOT NULL,
    hour INTEGER NOT NULL,
    consumer INTEGER NOT NULL,
    calls INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    latency_sum_us INTEGER NOT NULL,
    latency BLOB NOT NULL,
    PRIMARY KEY (tenant, hour, consumer)
) WITHOUT ROWID;
";

/// The coarse rollup's key: tenant, hour, consumer.
type ConsumerKey = (i64, i64, i64);

/// One row of `rollup_hourly`: request events of one hour with the same
/// tenant, consumer, path, method, status class and api (interned ids, 0 for none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RollupKey {
    tenant: i64,
    hour: i64,
    consumer: i64,
    path: i64,
    method: i64,
    status_class: i64,
    api: i64,
}

#[derive(Default)]
struct RollupAgg {
    calls: i64,
    errors: i64,
    latency_sum_us: i64,
    latency: LatencySketch,
}

impl RollupAgg {
    fn add(&mut self, status: u16, latency_us: u64) {
        self.calls += 1;
        self.errors += i64::from(status >= 400);
        self.latency_sum_us += latency_us as i64;
        self.latency.record(latency_us);
    }
}

/// Rollup counts not yet written, and the last `seq` per tenant they include.
#[derive(Default)]
struct PendingRollups {
    fine: FxHashMap<RollupKey, RollupAgg>,
    by_consumer: FxHashMap<ConsumerKey, RollupAgg>,
    upto: FxHashMap<i64, u64>,
}

impl PendingRollups {
    fn add(&mut self, key: RollupKey, status: u16, latency_us: u64) {
        self.fine.entry(key).or_default().add(status, latency_us);
        self.by_consumer.entry((key.tenant, key.hour, key.consumer)).or_default().add(status, latency_us);
    }

    fn note_seq(&mut self, tenant: i64, seq: u64) {
        let upto = self.upto.entry(tenant).or_default();
        *upto = (*upto).max(seq);
    }

    fn merge(&mut self, other: PendingRollups) {
        for (k, agg) in other.fine {
            let mine = self.fine.entry(k).or_default();
            mine.calls += agg.calls;
            mine.errors += agg.errors;
            mine.latency_sum_us += agg.latency_sum_us;
            mine.latency.merge(&agg.latency);
        }
        for (k, agg) in other.by_consumer {
            let mine = self.by_consumer.entry(k).or_default();
            mine.calls += agg.calls;
            mine.errors += agg.errors;
            mine.latency_sum_us += agg.latency_sum_us;
            mine.latency.merge(&agg.latency);
        }
        for (tenant, seq) in other.upto {
            self.note_seq(tenant, seq);
        }
    }

    fn keys(&self) -> usize {
        self.fine.len() + self.by_consumer.len()
    }

    /// Adds these counts to the stored rollups (an upsert that merges
    /// sketches in SQL). Does not move the watermark.
    fn write(&self, tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO rollup_hourly (tenant, hour, consumer, path, method, status_class, api, calls, errors, latency_sum_us, latency)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT DO UPDATE SET calls = calls + excluded.calls, errors = errors + excluded.errors,
               latency_sum_us = latency_sum_us + excluded.latency_sum_us,
               latency = sketch_merge(latency, excluded.latency)",
        )?;
        for (k, agg) in &self.fine {
            upsert.execute(params![
                k.tenant, k.hour, k.consumer, k.path, k.method, k.status_class, k.api,
                agg.calls, agg.errors, agg.latency_sum_us, agg.latency.encode()
            ])?;
        }
        let mut upsert_consumer = tx.prepare_cached(
            "INSERT INTO rollup_consumer_hourly (tenant, hour, consumer, calls, errors, latency_sum_us, latency)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT DO UPDATE SET calls = calls + excluded.calls, errors = errors + excluded.errors,
               latency_sum_us = latency_sum_us + excluded.latency_sum_us,
               latency = sketch_merge(latency, excluded.latency)",
        )?;
        for ((tenant, hour, consumer), agg) in &self.by_consumer {
            upsert_consumer.execute(params![tenant, hour, consumer, agg.calls, agg.errors, agg.latency_sum_us, agg.latency.encode()])?;
        }
        Ok(())
    }
}

/// Writes the watermarks: rollups now include every event up to these seqs.
fn write_watermarks<'a>(tx: &rusqlite::Transaction<'_>, upto: impl Iterator<Item = (&'a i64, &'a u64)>) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO rollup_watermark (tenant, seq) VALUES (?1, ?2) ON CONFLICT DO UPDATE SET seq = max(seq, excluded.seq)",
    )?;
    for (tenant, seq) in upto {
        stmt.execute(params![tenant, *seq as i64])?;
    }
    Ok(())
}

/// How often pending rollup counts are written, at most.
const ROLLUP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// Pending rollup rows that force a write before the interval.
const ROLLUP_MAX_PENDING: usize = 200_000;

/// `sketch_merge(a, b)`: the SQL function the upsert uses to add a batch's
/// latency sketch to the stored one.
fn register_sketch_merge(conn: &Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    conn.create_scalar_function("sketch_merge", 2, FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC, |ctx| {
        let a: Vec<u8> = ctx.get(0)?;
        let b: Vec<u8> = ctx.get(1)?;
        let mut merged = LatencySketch::decode(&a).unwrap_or_default();
        merged.merge(&LatencySketch::decode(&b).unwrap_or_default());
        Ok(merged.encode())
    })
}

const COLUMNS: &str = "tenant, seq, event_id, ts_ms, category, event_type, request_id, actor, target, outcome, \
    consumer, consumer_name, api, key_id, key_hint, method, path, status_code, latency_us, \
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

/// The stored code of a category; fixed, never renumber.
fn category_code(category: Category) -> i64 {
    match category {
        Category::Request => 0,
        Category::Security => 1,
        Category::Admin => 2,
        Category::App => 3,
    }
}

fn category_from_code(code: i64) -> Option<Category> {
    match code {
        0 => Some(Category::Request),
        1 => Some(Category::Security),
        2 => Some(Category::Admin),
        3 => Some(Category::App),
        _ => None,
    }
}

/// A UUID string as 16 bytes when it is one, otherwise the text itself.
fn id_value(id: &str) -> Value {
    match uuid::Uuid::try_parse(id) {
        Ok(u) if u.hyphenated().to_string() == id => Value::Blob(u.as_bytes().to_vec()),
        _ => Value::Text(id.to_string()),
    }
}

fn id_text(value: ValueRef<'_>) -> Option<String> {
    match value {
        ValueRef::Blob(b) => uuid::Uuid::from_slice(b).ok().map(|u| u.hyphenated().to_string()),
        ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
        _ => None,
    }
}

pub struct AuditWriterStore {
    conn: Connection,
    /// The writer's copy of the `strings` dictionary.
    interned: FxHashMap<String, i64>,
    /// Rollup counts of committed events not yet written to the rollup tables.
    pending: PendingRollups,
    last_rollup_write: std::time::Instant,
}

/// Looks a string up in the dictionary, adding it when new.
fn intern(
    interned: &mut FxHashMap<String, i64>,
    tx: &rusqlite::Transaction<'_>,
    value: &str,
) -> Result<i64, StoreError> {
    if let Some(id) = interned.get(value) {
        return Ok(*id);
    }
    tx.prepare_cached("INSERT INTO strings (value) VALUES (?1)")?.execute([value])?;
    let id = tx.last_insert_rowid();
    interned.insert(value.to_string(), id);
    Ok(id)
}

fn intern_opt(
    interned: &mut FxHashMap<String, i64>,
    tx: &rusqlite::Transaction<'_>,
    value: &Option<String>,
) -> Result<Option<i64>, StoreError> {
    value.as_deref().map(|v| intern(interned, tx, v)).transpose()
}

impl AuditWriterStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = open(path)?;
        conn.execute_batch(SCHEMA)?;
        // The writer's own tuning: a larger page cache for the index B-trees,
        // and fewer, larger WAL checkpoints.
        conn.pragma_update(None, "cache_size", -65_536)?;
        conn.pragma_update(None, "wal_autocheckpoint", 10_000)?;
        register_sketch_merge(&conn)?;
        let interned = {
            let mut stmt = conn.prepare("SELECT value, id FROM strings")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            rows.collect::<Result<FxHashMap<_, _>, _>>()?
        };
        let mut store = AuditWriterStore {
            conn,
            interned,
            pending: PendingRollups::default(),
            last_rollup_write: std::time::Instant::now(),
        };
        store.replay_rollups()?;
        Ok(store)
    }

    /// Rebuilds the pending rollup counts from the events past each tenant's
    /// watermark: what a crash (or a failed write) left uncounted.
    fn replay_rollups(&mut self) -> Result<(), StoreError> {
        let mut pending = PendingRollups::default();
        let mut stmt = self.conn.prepare(
            "SELECT h.tenant, coalesce(w.seq, 0), h.seq FROM chain_heads h LEFT JOIN rollup_watermark w ON w.tenant = h.tenant",
        )?;
        let tenants: Vec<(i64, i64, i64)> =
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<_, _>>()?;
        let mut events = self.conn.prepare(
            "SELECT ts_ms, consumer, path, method, status_code, api, latency_us FROM events
             WHERE tenant = ?1 AND seq > ?2 AND category = 0",
        )?;
        for (tenant, watermark, head) in tenants {
            let mut rows = events.query(params![tenant, watermark])?;
            while let Some(r) = rows.next()? {
                let status: u16 = r.get::<_, Option<u16>>(4)?.unwrap_or(0);
                let key = RollupKey {
                    tenant,
                    hour: r.get::<_, i64>(0)?.div_euclid(3_600_000),
                    consumer: r.get::<_, Option<i64>>(1)?.unwrap_or(0),
                    path: r.get::<_, Option<i64>>(2)?.unwrap_or(0),
                    method: r.get::<_, Option<i64>>(3)?.unwrap_or(0),
                    status_class: i64::from(status / 100),
                    api: r.get::<_, Option<i64>>(5)?.unwrap_or(0),
                };
                pending.add(key, status, r.get::<_, Option<i64>>(6)?.unwrap_or(0) as u64);
            }
            if head > watermark {
                pending.note_seq(tenant, head as u64);
            }
        }
        drop(events);
        drop(stmt);
        self.pending = pending;
        Ok(())
    }

    /// Writes every pending rollup count and moves the watermarks.
    pub fn flush_rollups(&mut self) -> Result<(), StoreError> {
        if self.pending.upto.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        self.pending.write(&tx)?;
        write_watermarks(&tx, self.pending.upto.iter())?;
        tx.commit()?;
        self.pending = PendingRollups::default();
        self.last_rollup_write = std::time::Instant::now();
        Ok(())
    }

    /// The head of every tenant's chain, to continue numbering after a restart
    /// (kept in `chain_heads`, updated in every batch's transaction).
    pub fn load_heads(&self) -> Result<HashMap<String, ChainHead>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT s.value, h.seq, h.hash FROM chain_heads h JOIN strings s ON s.id = h.tenant",
        )?;
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
        let interned = &mut self.interned;
        // A failed transaction must not leave ids in the cache that the store never kept.
        let before = interned.len();
        // This batch's rollup counts; they join the pending ones only once committed.
        let mut batch_rollups = PendingRollups::default();
        let write_rollups =
            self.last_rollup_write.elapsed() >= ROLLUP_INTERVAL || self.pending.keys() >= ROLLUP_MAX_PENDING;
        let pending = &self.pending;
        let result = (|| -> Result<(), StoreError> {
            let mut stmt = tx.prepare_cached(&format!(
                "INSERT INTO events ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, \
                 ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29)"
            ))?;
            let mut heads: rustc_hash::FxHashMap<i64, (u64, &[u8; 32])> = rustc_hash::FxHashMap::default();
            for stored in batch {
                let e = &stored.event;
                let tenant = intern(interned, &tx, &e.tenant_id)?;
                let category = category_code(e.category());
                let event_type = intern(interned, &tx, &e.event_type)?;
                let outcome = intern(interned, &tx, &e.outcome)?;
                let actor = intern_opt(interned, &tx, &e.actor)?;
                let target = intern_opt(interned, &tx, &e.target)?;
                let consumer = intern_opt(interned, &tx, &e.consumer_id)?;
                let consumer_name = intern_opt(interned, &tx, &e.consumer_name)?;
                let api = intern_opt(interned, &tx, &e.api_id)?;
                let key_id = intern_opt(interned, &tx, &e.key_id)?;
                let key_hint = intern_opt(interned, &tx, &e.key_hint)?;
                let method = intern_opt(interned, &tx, &e.method)?;
                let path = intern_opt(interned, &tx, &e.path)?;
                let client_ip = intern_opt(interned, &tx, &e.client_ip)?;
                let user_agent = intern_opt(interned, &tx, &e.user_agent)?;
                let country = intern_opt(interned, &tx, &e.country)?;
                let error_code = intern_opt(interned, &tx, &e.error_code)?;
                let error_message = intern_opt(interned, &tx, &e.error_message)?;
                stmt.execute(params![
                    tenant,
                    e.seq as i64,
                    id_value(&e.event_id),
                    e.timestamp_ms,
                    category,
                    event_type,
                    e.request_id.as_deref().map(id_value),
                    actor,
                    target,
                    outcome,
                    consumer,
                    consumer_name,
                    api,
                    key_id,
                    key_hint,
                    method,
                    path,
                    e.status_code,
                    e.latency_us.map(|v| v as i64),
                    e.upstream_latency_us.map(|v| v as i64),
                    e.request_size_bytes.map(|v| v as i64),
                    e.response_size_bytes.map(|v| v as i64),
                    client_ip,
                    user_agent,
                    country,
                    error_code,
                    error_message,
                    e.details.as_ref().map(|d| d.to_string()),
                    stored.hash.as_slice(),
                ])?;
                heads.insert(tenant, (e.seq, &stored.hash));
                batch_rollups.note_seq(tenant, e.seq);
                if e.category() == Category::Request {
                    let status = e.status_code.unwrap_or(0);
                    let key = RollupKey {
                        tenant,
                        hour: e.timestamp_ms.div_euclid(3_600_000),
                        consumer: consumer.unwrap_or(0),
                        path: path.unwrap_or(0),
                        method: method.unwrap_or(0),
                        status_class: i64::from(status / 100),
                        api: api.unwrap_or(0),
                    };
                    batch_rollups.add(key, status, e.latency_us.unwrap_or(0));
                }
            }
            let mut head = tx.prepare_cached("INSERT OR REPLACE INTO chain_heads (tenant, seq, hash) VALUES (?1, ?2, ?3)")?;
            for (tenant, (seq, hash)) in heads {
                head.execute(params![tenant, seq as i64, hash.as_slice()])?;
            }
            // Rollups are written about once a second, with the watermark that
            // says which events they include, in the same transaction.
            if write_rollups {
                pending.write(&tx)?;
                batch_rollups.write(&tx)?;
                write_watermarks(&tx, pending.upto.iter().chain(batch_rollups.upto.iter()))?;
            }
            Ok(())
        })();
        match result.and_then(|()| tx.commit().map_err(StoreError::from)) {
            Ok(()) => {
                if write_rollups {
                    self.pending = PendingRollups::default();
                    self.last_rollup_write = std::time::Instant::now();
                } else {
                    self.pending.merge(batch_rollups);
                }
                Ok(())
            }
            Err(error) => {
                if self.interned.len() != before {
                    self.interned.clear();
                    let mut stmt = self.conn.prepare("SELECT value, id FROM strings")?;
                    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
                    self.interned = rows.collect::<Result<FxHashMap<_, _>, _>>()?;
                }
                Err(error)
            }
        }
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
        // Interned columns compare against the string's id, found once by a scalar subquery.
        let mut clauses = vec!["tenant = (SELECT id FROM strings WHERE value = ?)".to_string()];
        let mut values = vec![Value::Text(self.tenant_id.clone())];
        if let Some(category) = self.category {
            // Written as a literal so that SQLite can use the partial index.
            clauses.push(format!("category = {}", category_code(category)));
        }
        let mut text = |column: &str, v: Option<String>| {
            if let Some(v) = v {
                clauses.push(format!("{column} = (SELECT id FROM strings WHERE value = ?)"));
                values.push(Value::Text(v));
            }
        };
        text("event_type", self.event_type.clone());
        text("consumer", self.consumer_id.clone());
        text("api", self.api_id.clone());
        text("method", self.method.clone());
        if let Some(prefix) = &self.path_prefix {
            clauses.push("path IN (SELECT id FROM strings WHERE substr(value, 1, ?) = ?)".into());
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

/// A read-only view of the audit store, opened per query.
pub struct AuditReader {
    conn: Connection,
    /// Strings resolved so far; a scan meets few distinct ones.
    names: RefCell<HashMap<i64, String>>,
}

impl AuditReader {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(AuditReader { conn, names: RefCell::new(HashMap::new()) })
    }

    fn name(&self, id: Option<i64>) -> rusqlite::Result<Option<String>> {
        let Some(id) = id else { return Ok(None) };
        if let Some(name) = self.names.borrow().get(&id) {
            return Ok(Some(name.clone()));
        }
        let name: Option<String> = self
            .conn
            .prepare_cached("SELECT value FROM strings WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?;
        if let Some(name) = &name {
            self.names.borrow_mut().insert(id, name.clone());
        }
        Ok(name)
    }

    fn row_to_stored(&self, r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
        let name = |i: usize| -> rusqlite::Result<Option<String>> { self.name(r.get::<_, Option<i64>>(i)?) };
        let u = |i: usize| -> rusqlite::Result<Option<u64>> { Ok(r.get::<_, Option<i64>>(i)?.map(|v| v as u64)) };
        let details: Option<String> = r.get(27)?;
        let hash: Vec<u8> = r.get(28)?;
        Ok(StoredEvent {
            event: Event {
                tenant_id: name(0)?.unwrap_or_default(),
                seq: r.get::<_, i64>(1)? as u64,
                event_id: id_text(r.get_ref(2)?).unwrap_or_default(),
                timestamp_ms: r.get(3)?,
                category: category_from_code(r.get(4)?),
                event_type: name(5)?.unwrap_or_default(),
                request_id: id_text(r.get_ref(6)?),
                actor: name(7)?,
                target: name(8)?,
                outcome: name(9)?.unwrap_or_default(),
                consumer_id: name(10)?,
                consumer_name: name(11)?,
                api_id: name(12)?,
                key_id: name(13)?,
                key_hint: name(14)?,
                method: name(15)?,
                path: name(16)?,
                status_code: r.get(17)?,
                latency_us: u(18)?,
                upstream_latency_us: u(19)?,
                request_size_bytes: u(20)?,
                response_size_bytes: u(21)?,
                client_ip: name(22)?,
                user_agent: name(23)?,
                country: name(24)?,
                error_code: name(25)?,
                error_message: name(26)?,
                details: details.and_then(|d| serde_json::from_str(&d).ok()),
            },
            hash: hash.try_into().unwrap_or([0; 32]),
        })
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
            if !each(self.row_to_stored(row)?) {
                break;
            }
        }
        Ok(())
    }

    /// Every event of a tenant in chain order (for verification and tests).
    pub fn chain(&self, tenant_id: &str) -> Result<Vec<StoredEvent>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM events WHERE tenant = (SELECT id FROM strings WHERE value = ?1) ORDER BY seq"
        ))?;
        let mut rows = stmt.query([tenant_id])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(self.row_to_stored(row)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_as_blobs_or_text() {
        let id = crate::event::new_id();
        let v = id_value(&id);
        assert!(matches!(v, Value::Blob(ref b) if b.len() == 16));
        let Value::Blob(b) = v else { unreachable!() };
        assert_eq!(id_text(ValueRef::Blob(&b)).unwrap(), id);
        // Not a canonical UUID: kept as text, exactly.
        for other in ["req-123", "01A203ED-0EA9-7473-A9C1-9F312C18E909"] {
            let Value::Text(t) = id_value(other) else { panic!("{other} should stay text") };
            assert_eq!(t, other);
        }
    }

    #[test]
    fn events_round_trip_exactly_so_the_chain_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = AuditWriterStore::open(&dir.path().join("a.db")).unwrap();
        let mut e = Event::new("acme", Category::Request, "request", "success");
        e.seq = 1;
        e.request_id = Some("custom-request-id".into());
        e.path = Some("/docs/ü".into());
        e.user_agent = Some("ua".into());
        e.status_code = Some(200);
        e.latency_us = Some(1234);
        e.details = Some(serde_json::json!({"a": [1, "x"]}));
        let hash = e.chain_hash(&crate::event::GENESIS_HASH);
        store.insert_batch(&[StoredEvent { event: e.clone(), hash }]).unwrap();
        let back = AuditReader::open(&dir.path().join("a.db")).unwrap().chain("acme").unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].event, e);
        assert_eq!(back[0].event.chain_hash(&crate::event::GENESIS_HASH), hash);
    }

    #[test]
    fn rollups_equal_a_brute_force_count_across_batches() {
        use std::collections::BTreeMap;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        let mut store = AuditWriterStore::open(&db).unwrap();
        type Key = (String, i64, String, String, i64);
        type Sums = (i64, i64, i64, LatencySketch);
        let mut expected: BTreeMap<Key, Sums> = BTreeMap::new();
        let mut seq = 0;
        for batch in 0..4 {
            let mut rows = Vec::new();
            for i in 0..500u64 {
                seq += 1;
                let mut e = Event::new("acme", Category::Request, "request", "success");
                e.seq = seq;
                // Batches overlap in time, so later batches update earlier rows.
                e.timestamp_ms = 1_800_000_000_000 + ((i * 7_919 + batch * 13) % 3 * 3_600_000) as i64;
                let consumer = format!("c{}", i % 4);
                let path = format!("/p{}", i % 3);
                let status = [200u16, 404, 500][(i % 5 % 3) as usize];
                e.consumer_id = Some(consumer.clone());
                e.path = Some(path.clone());
                e.method = Some("GET".into());
                e.status_code = Some(status);
                e.latency_us = Some(100 + i * 37 % 5000);
                let key = ("acme".to_string(), e.timestamp_ms / 3_600_000, consumer, path, i64::from(status / 100));
                let entry = expected.entry(key).or_default();
                entry.0 += 1;
                entry.1 += i64::from(status >= 400);
                entry.2 += e.latency_us.unwrap() as i64;
                entry.3.record(e.latency_us.unwrap());
                rows.push(StoredEvent { event: e, hash: [0; 32] });
            }
            // A security event is not a call and is not counted.
            seq += 1;
            let mut sec = Event::new("acme", Category::Security, "auth_failed", "failure");
            sec.seq = seq;
            rows.push(StoredEvent { event: sec, hash: [0; 32] });
            store.insert_batch(&rows).unwrap();
            match batch {
                // Written out, watermark moved.
                0 => store.flush_rollups().unwrap(),
                // A crash: batches 1 and 2 are committed, their rollups are not.
                2 => {
                    drop(store);
                    store = AuditWriterStore::open(&db).unwrap();
                }
                _ => {}
            }
        }
        store.flush_rollups().unwrap();
        let conn = Connection::open(&db).unwrap();
        let mut stmt = conn
            .prepare(
                "SELECT t.value, r.hour, c.value, p.value, r.status_class, r.calls, r.errors, r.latency_sum_us, r.latency
                 FROM rollup_hourly r JOIN strings t ON t.id = r.tenant JOIN strings c ON c.id = r.consumer
                 JOIN strings p ON p.id = r.path",
            )
            .unwrap();
        let got: BTreeMap<_, _> = stmt
            .query_map([], |r| {
                let sketch: Vec<u8> = r.get(8)?;
                Ok((
                    (r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?, r.get::<_, i64>(4)?),
                    (r.get::<_, i64>(5)?, r.get::<_, i64>(6)?, r.get::<_, i64>(7)?, LatencySketch::decode(&sketch).unwrap()),
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got.len(), expected.len());
        assert_eq!(got, expected);

        // The per-consumer rollup is the fine one summed over path, method, status class and api.
        let sums = |sql: &str| -> Vec<(i64, i64, i64, i64, i64, i64)> {
            let mut stmt = conn.prepare(sql).unwrap();
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))).unwrap();
            rows.collect::<Result<_, _>>().unwrap()
        };
        let coarse = sums("SELECT tenant, hour, consumer, calls, errors, latency_sum_us FROM rollup_consumer_hourly ORDER BY 1, 2, 3");
        assert!(!coarse.is_empty());
        assert_eq!(
            coarse,
            sums("SELECT tenant, hour, consumer, sum(calls), sum(errors), sum(latency_sum_us) FROM rollup_hourly GROUP BY 1, 2, 3 ORDER BY 1, 2, 3")
        );
    }
}
