//! Rollups: what aggregations read instead of the events.
//!
//! Each day file keeps, for request events only:
//! - `roll_consumer_hour` — per tenant, hour and consumer: calls, 4xx and 5xx
//!   counts, calls per method, the latency sum and a latency sketch;
//! - `roll_consumer_day` — the same per tenant and consumer for the file's day;
//! - `roll_consumer_path` — per tenant, consumer and path for the day: calls
//!   and errors.
//!
//! Keys are the day file's dictionary ids (consumer 0: no consumer). The
//! writer adds committed events to an in-memory [`Rollups`] and writes it out
//! about once a second with a watermark (the last block it includes), so a
//! rollup row is updated once per interval rather than once per event; after
//! a crash the blocks past the watermark are replayed. Readers add those
//! blocks themselves, so answers are exact at any moment.

use rusqlite::{params, Connection, Transaction};
use rustc_hash::FxHashMap;

use super::block::{col, Columns, DecodedBlock, TextField};
use crate::store::sketch::LatencySketch;
use crate::store::StoreError;

pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// Methods counted on their own; everything else is "other".
pub const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

pub fn method_index(method: &str) -> usize {
    METHODS.iter().position(|m| *m == method).unwrap_or(METHODS.len())
}

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS roll_consumer_hour (
    tenant INTEGER NOT NULL, hour INTEGER NOT NULL, consumer INTEGER NOT NULL,
    calls INTEGER NOT NULL, err4 INTEGER NOT NULL, err5 INTEGER NOT NULL, latency_sum_us INTEGER NOT NULL,
    m_get INTEGER NOT NULL, m_post INTEGER NOT NULL, m_put INTEGER NOT NULL, m_patch INTEGER NOT NULL,
    m_delete INTEGER NOT NULL, m_other INTEGER NOT NULL, latency BLOB NOT NULL,
    PRIMARY KEY (tenant, hour, consumer)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS roll_consumer_day (
    tenant INTEGER NOT NULL, consumer INTEGER NOT NULL,
    calls INTEGER NOT NULL, err4 INTEGER NOT NULL, err5 INTEGER NOT NULL, latency_sum_us INTEGER NOT NULL,
    m_get INTEGER NOT NULL, m_post INTEGER NOT NULL, m_put INTEGER NOT NULL, m_patch INTEGER NOT NULL,
    m_delete INTEGER NOT NULL, m_other INTEGER NOT NULL, latency BLOB NOT NULL,
    PRIMARY KEY (tenant, consumer)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS roll_consumer_path (
    tenant INTEGER NOT NULL, consumer INTEGER NOT NULL, path INTEGER NOT NULL,
    calls INTEGER NOT NULL, errors INTEGER NOT NULL,
    PRIMARY KEY (tenant, consumer, path)
) WITHOUT ROWID;
";

/// The columns of `roll_consumer_hour` / `roll_consumer_day` after the key,
/// in the order [`ConsumerAgg::from_row`] reads them.
pub const AGG_COLUMNS: &str = "calls, err4, err5, latency_sum_us, m_get, m_post, m_put, m_patch, m_delete, m_other, latency";

/// Counts of one consumer's calls over some period.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConsumerAgg {
    pub calls: u64,
    pub err4: u64,
    pub err5: u64,
    pub latency_sum_us: u64,
    /// Calls per method, in [`METHODS`] order, then "other".
    pub methods: [u64; 6],
    pub latency: LatencySketch,
}

impl ConsumerAgg {
    pub fn add(&mut self, status: u16, method: usize, latency_us: u64) {
        self.calls += 1;
        self.err4 += u64::from((400..500).contains(&status));
        self.err5 += u64::from(status >= 500);
        self.latency_sum_us += latency_us;
        self.methods[method.min(5)] += 1;
        self.latency.record(latency_us);
    }

    pub fn merge(&mut self, other: &ConsumerAgg) {
        self.calls += other.calls;
        self.err4 += other.err4;
        self.err5 += other.err5;
        self.latency_sum_us += other.latency_sum_us;
        for (a, b) in self.methods.iter_mut().zip(other.methods) {
            *a += b;
        }
        self.latency.merge(&other.latency);
    }

    pub fn errors(&self) -> u64 {
        self.err4 + self.err5
    }

    /// Reads [`AGG_COLUMNS`] starting at column `at`.
    pub fn from_row(row: &rusqlite::Row<'_>, at: usize) -> Result<ConsumerAgg, StoreError> {
        let n = |i: usize| -> rusqlite::Result<u64> { Ok(row.get::<_, i64>(at + i)? as u64) };
        let sketch = row.get_ref(at + 10)?.as_blob().map_err(rusqlite::Error::from)?;
        Ok(ConsumerAgg {
            calls: n(0)?,
            err4: n(1)?,
            err5: n(2)?,
            latency_sum_us: n(3)?,
            methods: [n(4)?, n(5)?, n(6)?, n(7)?, n(8)?, n(9)?],
            latency: LatencySketch::decode(sketch).ok_or_else(|| StoreError::Corrupt("bad latency sketch in a rollup".into()))?,
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathAgg {
    pub calls: u64,
    pub errors: u64,
}

/// Rollup counts keyed by one day file's dictionary ids.
#[derive(Debug, Default)]
pub struct Rollups {
    /// (tenant, hour, consumer)
    pub consumer_hour: FxHashMap<(u32, i64, u32), ConsumerAgg>,
    /// (tenant, consumer, path)
    pub consumer_path: FxHashMap<(u32, u32, u32), PathAgg>,
}

/// The block columns [`Rollups::add_block`] needs.
pub fn block_columns() -> Columns {
    Columns::of(&[col::TS, col::CATEGORY, col::STATUS, col::LATENCY]).with(Columns::text(&[
        TextField::Consumer,
        TextField::Path,
        TextField::Method,
    ]))
}

impl Rollups {
    pub fn is_empty(&self) -> bool {
        self.consumer_hour.is_empty() && self.consumer_path.is_empty()
    }

    pub fn keys(&self) -> usize {
        self.consumer_hour.len() + self.consumer_path.len()
    }

    /// Counts one request event.
    pub fn add(&mut self, tenant: u32, ts: i64, consumer: u32, path: u32, method: usize, status: u16, latency_us: u64) {
        self.consumer_hour.entry((tenant, ts.div_euclid(HOUR_MS), consumer)).or_default().add(status, method, latency_us);
        let p = self.consumer_path.entry((tenant, consumer, path)).or_default();
        p.calls += 1;
        p.errors += u64::from(status >= 400);
    }

    /// Counts the request events of a decoded block (with [`block_columns`]
    /// loaded) for which `keep(ts)` holds. Consumers and paths stored inline
    /// count as 0; the writer always puts them in the dictionary.
    pub fn add_block(&mut self, tenant: u32, block: &DecodedBlock, method_of: &impl Fn(u32) -> usize, keep: impl Fn(i64) -> bool) {
        let consumer = &block.texts[TextField::Consumer.index()];
        let path = &block.texts[TextField::Path.index()];
        let method = &block.texts[TextField::Method.index()];
        for row in 0..block.rows() {
            if block.category[row] != 0 || !keep(block.ts[row]) {
                continue;
            }
            self.add(
                tenant,
                block.ts[row],
                consumer.dict_id(row).unwrap_or(0),
                path.dict_id(row).unwrap_or(0),
                method.dict_id(row).map_or(METHODS.len(), method_of),
                block.status[row],
                block.latency_us[row].unwrap_or(0),
            );
        }
    }

    pub fn merge(&mut self, other: Rollups) {
        for (k, agg) in other.consumer_hour {
            self.consumer_hour.entry(k).or_default().merge(&agg);
        }
        for (k, p) in other.consumer_path {
            let mine = self.consumer_path.entry(k).or_default();
            mine.calls += p.calls;
            mine.errors += p.errors;
        }
    }

    /// Adds these counts to the stored rollups. The day rows are the hour
    /// rows summed per tenant and consumer.
    pub fn write(&self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        let upsert = |table: &str, key: &str, key_params: usize| {
            let placeholders: Vec<String> = (1..=key_params + 11).map(|i| format!("?{i}")).collect();
            format!(
                "INSERT INTO {table} ({key}, {AGG_COLUMNS}) VALUES ({})
                 ON CONFLICT DO UPDATE SET calls = calls + excluded.calls, err4 = err4 + excluded.err4,
                   err5 = err5 + excluded.err5, latency_sum_us = latency_sum_us + excluded.latency_sum_us,
                   m_get = m_get + excluded.m_get, m_post = m_post + excluded.m_post, m_put = m_put + excluded.m_put,
                   m_patch = m_patch + excluded.m_patch, m_delete = m_delete + excluded.m_delete,
                   m_other = m_other + excluded.m_other, latency = sketch_merge(latency, excluded.latency)",
                placeholders.join(", ")
            )
        };
        let values = |a: &ConsumerAgg| -> [i64; 10] {
            let m = a.methods;
            [a.calls, a.err4, a.err5, a.latency_sum_us, m[0], m[1], m[2], m[3], m[4], m[5]].map(|v| v as i64)
        };
        let mut days: FxHashMap<(u32, u32), ConsumerAgg> = FxHashMap::default();
        {
            let mut stmt = tx.prepare_cached(&upsert("roll_consumer_hour", "tenant, hour, consumer", 3))?;
            for ((tenant, hour, consumer), agg) in &self.consumer_hour {
                let v = values(agg);
                stmt.execute(params![
                    tenant, hour, consumer, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], agg.latency.encode()
                ])?;
                days.entry((*tenant, *consumer)).or_default().merge(agg);
            }
        }
        let mut stmt = tx.prepare_cached(&upsert("roll_consumer_day", "tenant, consumer", 2))?;
        for ((tenant, consumer), agg) in &days {
            let v = values(agg);
            stmt.execute(params![tenant, consumer, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], agg.latency.encode()])?;
        }
        let mut stmt = tx.prepare_cached(
            "INSERT INTO roll_consumer_path (tenant, consumer, path, calls, errors) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT DO UPDATE SET calls = calls + excluded.calls, errors = errors + excluded.errors",
        )?;
        for ((tenant, consumer, path), p) in &self.consumer_path {
            stmt.execute(params![tenant, consumer, path, p.calls as i64, p.errors as i64])?;
        }
        Ok(())
    }
}

/// `sketch_merge(a, b)`: the SQL function the upserts use to add a batch's
/// latency sketch to the stored one.
pub fn register_sketch_merge(conn: &Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    conn.create_scalar_function("sketch_merge", 2, FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC, |ctx| {
        let a = ctx.get_raw(0).as_blob().map_err(|e| rusqlite::Error::UserFunctionError(e.into()))?;
        let b = ctx.get_raw(1).as_blob().map_err(|e| rusqlite::Error::UserFunctionError(e.into()))?;
        let mut merged = LatencySketch::decode(a).ok_or_else(|| rusqlite::Error::UserFunctionError("bad sketch".into()))?;
        merged.merge(&LatencySketch::decode(b).ok_or_else(|| rusqlite::Error::UserFunctionError("bad sketch".into()))?);
        Ok(merged.encode())
    })
}
