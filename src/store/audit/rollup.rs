//! Rollups: what aggregations read instead of the events.
//!
//! Each day file keeps one row per tenant and consumer in `roll_consumer`
//! (request events only): the day's calls, 4xx and 5xx counts, calls per
//! method, the latency sum and a latency sketch, plus two small histograms
//! as blobs — per hour of the day (calls, errors, latency sum, methods) and
//! per path (calls, errors). One row per consumer and day means a rollup
//! write touches at most as many rows as there are active consumers, however
//! many events and paths they sent.
//!
//! Keys are the day file's dictionary ids (consumer 0: no consumer). The
//! writer adds committed events to an in-memory [`Rollups`] and writes it out
//! about once a second with a watermark (the last block it includes); upserts
//! merge counts, sketches and histograms in SQL functions. After a crash the
//! blocks past the watermark are replayed; readers add those blocks
//! themselves, so answers are exact at any moment.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use rustc_hash::FxHashMap;

use super::block::{col, Columns, DecodedBlock, TextField};
use crate::store::varint::{push_varint, read_varint};
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
CREATE TABLE IF NOT EXISTS roll_consumer (
    tenant INTEGER NOT NULL, consumer INTEGER NOT NULL,
    calls INTEGER NOT NULL, err4 INTEGER NOT NULL, err5 INTEGER NOT NULL, latency_sum_us INTEGER NOT NULL,
    m_get INTEGER NOT NULL, m_post INTEGER NOT NULL, m_put INTEGER NOT NULL, m_patch INTEGER NOT NULL,
    m_delete INTEGER NOT NULL, m_other INTEGER NOT NULL,
    latency BLOB NOT NULL, hours BLOB NOT NULL, paths BLOB NOT NULL,
    PRIMARY KEY (tenant, consumer)
) WITHOUT ROWID;
";

/// The columns of `roll_consumer` after the key, in the order
/// [`ConsumerDay::from_row`] reads them.
pub const COLUMNS: &str = "calls, err4, err5, latency_sum_us, m_get, m_post, m_put, m_patch, m_delete, m_other, latency, hours, paths";

/// Counts of one consumer's calls over some period. `latency` is empty
/// when the period's counts came from hourly histograms (which keep no
/// sketch).
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
        self.add_counts(status, method, latency_us);
        self.latency.record(latency_us);
    }

    fn add_counts(&mut self, status: u16, method: usize, latency_us: u64) {
        self.calls += 1;
        self.err4 += u64::from((400..500).contains(&status));
        self.err5 += u64::from(status >= 500);
        self.latency_sum_us += latency_us;
        self.methods[method.min(5)] += 1;
    }

    /// Adds every count but the sketch.
    pub fn merge_counts(&mut self, other: &ConsumerAgg) {
        self.calls += other.calls;
        self.err4 += other.err4;
        self.err5 += other.err5;
        self.latency_sum_us += other.latency_sum_us;
        for (a, b) in self.methods.iter_mut().zip(other.methods) {
            *a += b;
        }
    }

    pub fn merge(&mut self, other: &ConsumerAgg) {
        self.merge_counts(other);
        self.latency.merge(&other.latency);
    }

    pub fn errors(&self) -> u64 {
        self.err4 + self.err5
    }

    /// This aggregate without its sketch: what hourly histograms hold.
    pub fn counts_only(&self) -> ConsumerAgg {
        ConsumerAgg { latency: LatencySketch::default(), ..self.clone() }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathAgg {
    pub calls: u64,
    pub errors: u64,
}

/// One consumer's request events of one day.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConsumerDay {
    pub totals: ConsumerAgg,
    /// By hour of the day (0–23); no sketches.
    pub hours: [ConsumerAgg; 24],
    /// By path dictionary id (0: no path).
    pub paths: FxHashMap<u32, PathAgg>,
}

impl ConsumerDay {
    pub fn add(&mut self, ts: i64, path: u32, method: usize, status: u16, latency_us: u64) {
        self.totals.add(status, method, latency_us);
        self.hours[(ts.rem_euclid(DAY_MS) / HOUR_MS) as usize].add_counts(status, method, latency_us);
        let p = self.paths.entry(path).or_default();
        p.calls += 1;
        p.errors += u64::from(status >= 400);
    }

    pub fn merge(&mut self, other: &ConsumerDay) {
        self.totals.merge(&other.totals);
        for (a, b) in self.hours.iter_mut().zip(&other.hours) {
            a.merge_counts(b);
        }
        for (path, p) in &other.paths {
            let mine = self.paths.entry(*path).or_default();
            mine.calls += p.calls;
            mine.errors += p.errors;
        }
    }

    /// Reads [`COLUMNS`] starting at column `at`.
    pub fn from_row(row: &rusqlite::Row<'_>, at: usize) -> Result<ConsumerDay, StoreError> {
        let n = |i: usize| -> rusqlite::Result<u64> { Ok(row.get::<_, i64>(at + i)? as u64) };
        let blob = |i: usize| -> Result<&[u8], StoreError> { Ok(row.get_ref(at + i)?.as_blob().map_err(rusqlite::Error::from)?) };
        let bad = |what: &str| StoreError::Corrupt(format!("bad {what} in a rollup"));
        let totals = ConsumerAgg {
            calls: n(0)?,
            err4: n(1)?,
            err5: n(2)?,
            latency_sum_us: n(3)?,
            methods: [n(4)?, n(5)?, n(6)?, n(7)?, n(8)?, n(9)?],
            latency: LatencySketch::decode(blob(10)?).ok_or_else(|| bad("latency sketch"))?,
        };
        Ok(ConsumerDay {
            totals,
            hours: decode_hours(blob(11)?).ok_or_else(|| bad("hour histogram"))?,
            paths: decode_paths(blob(12)?).ok_or_else(|| bad("path histogram"))?,
        })
    }
}

// ---------- histogram encodings ----------
//
// hours: for each hour with calls, ascending: varint hour, calls, err4,
// err5, latency sum, then the six method counts.
// paths: for each path, ascending by id: varint id delta, calls, errors.

pub fn encode_hours(hours: &[ConsumerAgg; 24]) -> Vec<u8> {
    let mut out = Vec::new();
    for (hour, h) in hours.iter().enumerate().filter(|(_, h)| h.calls > 0) {
        push_varint(&mut out, hour as u64);
        for v in [h.calls, h.err4, h.err5, h.latency_sum_us].into_iter().chain(h.methods) {
            push_varint(&mut out, v);
        }
    }
    out
}

pub fn decode_hours(bytes: &[u8]) -> Option<[ConsumerAgg; 24]> {
    let mut hours: [ConsumerAgg; 24] = Default::default();
    let mut at = 0;
    while at < bytes.len() {
        let hour = read_varint(bytes, &mut at)? as usize;
        let h = hours.get_mut(hour)?;
        let mut v = [0u64; 10];
        for slot in &mut v {
            *slot = read_varint(bytes, &mut at)?;
        }
        h.calls += v[0];
        h.err4 += v[1];
        h.err5 += v[2];
        h.latency_sum_us += v[3];
        for (m, n) in h.methods.iter_mut().zip(&v[4..]) {
            *m += n;
        }
    }
    Some(hours)
}

pub fn encode_paths(paths: &FxHashMap<u32, PathAgg>) -> Vec<u8> {
    let mut sorted: Vec<(&u32, &PathAgg)> = paths.iter().collect();
    sorted.sort_unstable_by_key(|(id, _)| **id);
    let mut out = Vec::with_capacity(sorted.len() * 4);
    let mut previous = 0u32;
    for (id, p) in sorted {
        push_varint(&mut out, u64::from(id - previous));
        push_varint(&mut out, p.calls);
        push_varint(&mut out, p.errors);
        previous = *id;
    }
    out
}

pub fn decode_paths(bytes: &[u8]) -> Option<FxHashMap<u32, PathAgg>> {
    let mut out = FxHashMap::default();
    let (mut at, mut id) = (0, 0u64);
    while at < bytes.len() {
        id += read_varint(bytes, &mut at)?;
        let calls = read_varint(bytes, &mut at)?;
        let errors = read_varint(bytes, &mut at)?;
        let p: &mut PathAgg = out.entry(u32::try_from(id).ok()?).or_default();
        p.calls += calls;
        p.errors += errors;
    }
    Some(out)
}

/// Rollup counts keyed by one day file's dictionary ids.
#[derive(Debug, Default)]
pub struct Rollups {
    /// (tenant, consumer)
    pub consumers: FxHashMap<(u32, u32), ConsumerDay>,
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
        self.consumers.is_empty()
    }

    pub fn keys(&self) -> usize {
        self.consumers.len()
    }

    /// Counts one request event.
    #[allow(clippy::too_many_arguments)]
    pub fn add(&mut self, tenant: u32, ts: i64, consumer: u32, path: u32, method: usize, status: u16, latency_us: u64) {
        self.consumers.entry((tenant, consumer)).or_default().add(ts, path, method, status, latency_us);
    }

    /// Counts the request events of a decoded block (with [`block_columns`]
    /// loaded) for which `keep(ts, consumer)` holds. Consumers and paths
    /// stored inline count as 0; the writer always puts them in the dictionary.
    pub fn add_block(&mut self, tenant: u32, block: &DecodedBlock, method_of: &impl Fn(u32) -> usize, keep: impl Fn(i64, u32) -> bool) {
        let consumer = &block.texts[TextField::Consumer.index()];
        let path = &block.texts[TextField::Path.index()];
        let method = &block.texts[TextField::Method.index()];
        for row in 0..block.rows() {
            let c = consumer.dict_id(row).unwrap_or(0);
            if block.category[row] != 0 || !keep(block.ts[row], c) {
                continue;
            }
            self.add(
                tenant,
                block.ts[row],
                c,
                path.dict_id(row).unwrap_or(0),
                method.dict_id(row).map_or(METHODS.len(), method_of),
                block.status[row],
                block.latency_us[row].unwrap_or(0),
            );
        }
    }

    pub fn merge(&mut self, other: Rollups) {
        for (k, day) in other.consumers {
            self.consumers.entry(k).or_default().merge(&day);
        }
    }

    /// Adds these counts to the stored rollups.
    pub fn write(&self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        let mut stmt = tx.prepare_cached(&format!(
            "INSERT INTO roll_consumer (tenant, consumer, {COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
             ON CONFLICT DO UPDATE SET calls = calls + excluded.calls, err4 = err4 + excluded.err4,
               err5 = err5 + excluded.err5, latency_sum_us = latency_sum_us + excluded.latency_sum_us,
               m_get = m_get + excluded.m_get, m_post = m_post + excluded.m_post, m_put = m_put + excluded.m_put,
               m_patch = m_patch + excluded.m_patch, m_delete = m_delete + excluded.m_delete,
               m_other = m_other + excluded.m_other, latency = sketch_merge(latency, excluded.latency),
               hours = hours_merge(hours, excluded.hours), paths = paths_merge(paths, excluded.paths)"
        ))?;
        for ((tenant, consumer), day) in &self.consumers {
            let a = &day.totals;
            let m = a.methods.map(|v| v as i64);
            stmt.execute(params![
                tenant,
                consumer,
                a.calls as i64,
                a.err4 as i64,
                a.err5 as i64,
                a.latency_sum_us as i64,
                m[0],
                m[1],
                m[2],
                m[3],
                m[4],
                m[5],
                a.latency.encode(),
                encode_hours(&day.hours),
                encode_paths(&day.paths)
            ])?;
        }
        Ok(())
    }
}

/// Counts `tenant`'s request events again from its blocks in the day file
/// (those up to the rollup watermark: readers add the ones past it
/// themselves) and replaces its rollup rows with that count. Retention
/// calls it after deleting some of a tenant's blocks from a file that
/// keeps others of it; the rows still counted the deleted events. Needs
/// [`register_merge_functions`] on the connection.
pub fn recount_tenant(tx: &Transaction<'_>, tenant: u32, watermark: i64) -> Result<(), StoreError> {
    let methods = method_ids(tx)?;
    let mut counted = Rollups::default();
    let mut decompressor = zstd::bulk::Decompressor::new()?;
    let mut stmt = tx.prepare("SELECT data FROM blocks WHERE tenant = ?1 AND id <= ?2")?;
    let mut rows = stmt.query(params![tenant, watermark])?;
    while let Some(row) = rows.next()? {
        let data = row.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?;
        let mut block = DecodedBlock::parse(data)?;
        block.load(data, block_columns(), &mut decompressor)?;
        counted.add_block(tenant, &block, &|id| methods.get(&id).copied().unwrap_or(METHODS.len()), |_, _| true);
    }
    tx.execute("DELETE FROM roll_consumer WHERE tenant = ?1", [tenant])?;
    counted.write(tx)
}

/// The rollups' index of each method a day file's dictionary holds, by
/// the method's string id there.
pub fn method_ids(conn: &Connection) -> Result<FxHashMap<u32, usize>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT id FROM strings WHERE value = ?1")?;
    let mut out = FxHashMap::default();
    for method in METHODS {
        if let Some(id) = stmt.query_row([method], |r| r.get::<_, u32>(0)).optional()? {
            out.insert(id, method_index(method));
        }
    }
    Ok(out)
}

/// Registers the SQL functions the upserts merge with: `sketch_merge`,
/// `hours_merge` and `paths_merge`, each `(stored, new) -> merged`.
pub fn register_merge_functions(conn: &Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::{Context, FunctionFlags};
    fn blobs<'a>(ctx: &'a Context<'_>) -> rusqlite::Result<(&'a [u8], &'a [u8])> {
        let get = |i| ctx.get_raw(i).as_blob().map_err(|e| rusqlite::Error::UserFunctionError(e.into()));
        Ok((get(0)?, get(1)?))
    }
    let bad = |what: &str| rusqlite::Error::UserFunctionError(format!("bad {what}").into());
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("sketch_merge", 2, flags, move |ctx| {
        let (a, b) = blobs(ctx)?;
        let mut merged = LatencySketch::decode(a).ok_or_else(|| bad("sketch"))?;
        merged.merge(&LatencySketch::decode(b).ok_or_else(|| bad("sketch"))?);
        Ok(merged.encode())
    })?;
    conn.create_scalar_function("hours_merge", 2, flags, move |ctx| {
        let (a, b) = blobs(ctx)?;
        let mut merged = decode_hours(a).ok_or_else(|| bad("hour histogram"))?;
        for (m, h) in merged.iter_mut().zip(decode_hours(b).ok_or_else(|| bad("hour histogram"))?) {
            m.merge_counts(&h);
        }
        Ok(encode_hours(&merged))
    })?;
    conn.create_scalar_function("paths_merge", 2, flags, move |ctx| {
        let (a, b) = blobs(ctx)?;
        let mut merged = decode_paths(a).ok_or_else(|| bad("path histogram"))?;
        for (id, p) in decode_paths(b).ok_or_else(|| bad("path histogram"))? {
            let mine = merged.entry(id).or_default();
            mine.calls += p.calls;
            mine.errors += p.errors;
        }
        Ok(encode_paths(&merged))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_round_trip_and_reject_garbage() {
        let mut day = ConsumerDay::default();
        for i in 0..500u64 {
            day.add((i as i64 * 7_919_000) % DAY_MS, (i % 37) as u32 * 1_000, (i % 7) as usize, [200, 404, 503][(i % 3) as usize], i * 13);
        }
        assert_eq!(decode_hours(&encode_hours(&day.hours)).unwrap(), day.hours);
        assert_eq!(decode_paths(&encode_paths(&day.paths)).unwrap(), day.paths);
        assert!(decode_hours(&[30, 1]).is_none(), "hour out of range");
        assert!(decode_hours(&[3, 0x80]).is_none(), "truncated");
        assert!(decode_paths(&[1, 1]).is_none(), "truncated");
        assert_eq!(day.hours.iter().map(|h| h.calls).sum::<u64>(), 500);
        assert_eq!(day.totals.methods.iter().sum::<u64>(), 500);
    }

    #[test]
    fn stored_rows_merge_like_memory() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        register_merge_functions(&conn).unwrap();
        let mut all = ConsumerDay::default();
        for batch in 0..3u64 {
            let mut r = Rollups::default();
            for i in 0..200u64 {
                let (ts, path) = (((i * 31 + batch) as i64 * 600_000) % DAY_MS, (i % 11) as u32);
                r.add(1, ts, 9, path, (i % 6) as usize, 200 + (i % 4) as u16 * 100, i + batch);
                all.add(ts, path, (i % 6) as usize, 200 + (i % 4) as u16 * 100, i + batch);
            }
            let tx = conn.transaction().unwrap();
            r.write(&tx).unwrap();
            tx.commit().unwrap();
        }
        let stored = conn
            .query_row(&format!("SELECT {COLUMNS} FROM roll_consumer WHERE tenant = 1 AND consumer = 9"), [], |r| {
                Ok(ConsumerDay::from_row(r, 0).unwrap())
            })
            .unwrap();
        assert_eq!(stored, all);
    }
}
