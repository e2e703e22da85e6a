//! Aggregations over request events: per-consumer totals, hourly
//! activity, paths, and a timeline by path — exact for any window.
//!
//! A window `[from, to)` is split per day file: whole days are read from
//! the consumer rows of the day's rollups, whole hours from their hour
//! histograms, and what is left at the edges (part of an hour; part of a day
//! for path counts and latency sketches, which are kept per day) from the
//! events themselves. Blocks past a file's rollup
//! watermark (at most about a second of events) are added from the events
//! too, for the periods read from rollups. So answers equal a count over
//! the raw events, at the cost of reading a few hundred rollup rows.

use std::collections::HashMap;

use rustc_hash::FxHashMap;

use super::block::{col, Columns, TextField};
use super::reader::{AuditReader, DayReader};
use super::rollup::{self, ConsumerAgg, ConsumerDay, PathAgg, Rollups, DAY_MS, HOUR_MS};
use super::writer::rollup_watermark;
use super::day_of;
use crate::store::StoreError;

pub mod query;

/// One path's activity in a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathActivity {
    pub path: Option<String>,
    pub calls: u64,
    pub errors: u64,
    pub distinct_consumers: u64,
}

/// A consumer's profile over a window.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerProfile {
    /// Counts only: no latency sketch.
    pub totals: ConsumerAgg,
    /// Calls per method, most first.
    pub methods: Vec<(String, u64)>,
    /// The most called paths: (path, calls, errors), most first.
    pub top_paths: Vec<(String, u64, u64)>,
    /// Calls per hour of the day (UTC), 0–23.
    pub by_hour_of_day: [u64; 24],
    /// The busiest hour of the day (UTC) and its calls.
    pub busiest_hour: Option<(u8, u64)>,
}

/// Which blobs of a rollup row to read.
#[derive(Debug, Clone, Copy)]
struct Parts {
    latency: bool,
    hours: bool,
    paths: bool,
}

/// How one day of a window is read.
struct DayPlan {
    /// Hours `[from_hour, to_hour)` (hour numbers since the epoch) read from rollups.
    hours: (i64, i64),
    /// Whether the whole day is in the window.
    whole: bool,
    /// Millisecond ranges `[a, b)` read from the events.
    edges: Vec<(i64, i64)>,
}

fn plan(day: i64, from: i64, to: i64) -> DayPlan {
    let (d0, d1) = (day * DAY_MS, (day + 1) * DAY_MS);
    let (a, b) = (from.max(d0), to.min(d1));
    let first_hour = a.div_euclid(HOUR_MS) + i64::from(a.rem_euclid(HOUR_MS) != 0);
    let last_hour = b.div_euclid(HOUR_MS);
    let mut edges = Vec::new();
    if first_hour >= last_hour {
        edges.push((a, b));
        return DayPlan { hours: (0, 0), whole: false, edges };
    }
    if a < first_hour * HOUR_MS {
        edges.push((a, first_hour * HOUR_MS));
    }
    if last_hour * HOUR_MS < b {
        edges.push((last_hour * HOUR_MS, b));
    }
    DayPlan { hours: (first_hour, last_hour), whole: a == d0 && b == d1, edges }
}

fn in_ranges(ranges: &[(i64, i64)], ts: i64) -> bool {
    ranges.iter().any(|(a, b)| (*a..*b).contains(&ts))
}

/// What [`AuditReader::consumer_activity`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// One total per consumer over the window. With `latency`, each carries
    /// its latency sketch: whole days come from the day rows, partial days
    /// from the events. Without, partial days come from the hour histograms
    /// and only partial hours from the events.
    Totals { latency: bool },
    /// Per consumer and hour; counts only (no sketches).
    Hourly,
}

/// A tenant's (and perhaps a consumer's) ids in one day file.
struct FileIds {
    tenant: u32,
    consumer: Option<u32>,
    /// The tenant's archived prefix: blocks through it are hidden.
    floor: u64,
    /// False when the file still holds blocks of the archived prefix (a
    /// late event kept the file after its day was archived): the rollup
    /// rows count those, so everything is read from the events.
    rollups_usable: bool,
}

/// A read transaction on a day file for as long as it lives: the rollup
/// rows, the watermark and the blocks past it are read from one snapshot,
/// so a rollup write between them cannot drop (or double) a batch.
struct OneSnapshot<'c>(&'c rusqlite::Connection);

impl<'c> OneSnapshot<'c> {
    fn begin(conn: &'c rusqlite::Connection) -> Result<Self, StoreError> {
        conn.execute_batch("BEGIN")?;
        Ok(OneSnapshot(conn))
    }
}

impl Drop for OneSnapshot<'_> {
    fn drop(&mut self) {
        // Read only: ending it cannot lose anything.
        let _ = self.0.execute_batch("COMMIT");
    }
}

impl AuditReader {
    fn days_of_window(&self, from: i64, to: i64) -> Vec<i64> {
        if to <= from {
            return Vec::new();
        }
        let (first, last) = (day_of(from), day_of(to - 1));
        self.days().filter(|d| (first..=last).contains(d)).collect()
    }

    /// Counts the tenant's request events of `day` — those in `edges` from
    /// every block, and those in `covered` from the blocks past the rollup
    /// watermark — keeping only `consumer` when given. Blocks of the
    /// archived prefix (through `ids.floor`) are left out.
    fn add_raw(
        &self,
        day: &DayReader,
        ids: &FileIds,
        edges: &[(i64, i64)],
        covered: &[(i64, i64)],
        into: &mut Rollups,
    ) -> Result<(), StoreError> {
        let (tenant, consumer, floor) = (ids.tenant, ids.consumer, ids.floor as i64);
        let watermark = rollup_watermark(&day.conn)?;
        // Block ids first (from the time index), data only for the blocks
        // needed: every block meeting an edge, and those past the watermark
        // meeting a covered range.
        let mut ids = std::collections::BTreeMap::<i64, bool>::new();
        let mut find = |(lo, hi): (i64, i64), past_watermark: bool| -> Result<(), StoreError> {
            let mut stmt = day.conn.prepare_cached(
                "SELECT id FROM blocks WHERE tenant = ?1 AND max_ts >= ?2 AND min_ts < ?3 AND id > ?4 AND first_seq > ?5",
            )?;
            let mut rows = stmt.query(rusqlite::params![tenant, lo, hi, if past_watermark { watermark } else { 0 }, floor])?;
            while let Some(r) = rows.next()? {
                let id: i64 = r.get(0)?;
                *ids.entry(id).or_default() |= id > watermark;
            }
            Ok(())
        };
        for range in edges.iter().filter(|(a, b)| a < b) {
            find(*range, false)?;
        }
        for range in covered.iter().filter(|(a, b)| a < b) {
            find(*range, true)?;
        }
        if ids.is_empty() {
            return Ok(());
        }
        let methods = rollup::method_ids(&day.conn)?;
        for (id, past_watermark) in ids {
            let data = day.block_data(id)?;
            let block = self.decode(&data, rollup::block_columns())?;
            let keep = |ts: i64, c: u32| {
                consumer.is_none_or(|want| want == c) && (in_ranges(edges, ts) || (past_watermark && in_ranges(covered, ts)))
            };
            into.add_block(tenant, &block, &|id| methods.get(&id).copied().unwrap_or(rollup::METHODS.len()), keep);
        }
        Ok(())
    }

    /// The file's ids of `tenant` and `consumer`; `None` when the file
    /// cannot hold matching events, also when every event of the tenant in
    /// the file is archived (the rest of the audit API hides those, and so
    /// do statistics).
    fn ids(&self, day: &DayReader, tenant: &str, consumer: Option<&str>) -> Result<Option<FileIds>, StoreError> {
        let Some(t) = day.id_of(tenant)? else { return Ok(None) };
        let floor = self.archived_through(tenant).0;
        let mut has_archived = false;
        if floor > 0 {
            let mut stmt = day.conn.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM blocks WHERE tenant = ?1 AND first_seq > ?2),
                        EXISTS (SELECT 1 FROM blocks WHERE tenant = ?1 AND first_seq <= ?2)",
            )?;
            let (hot, archived) = stmt.query_row(rusqlite::params![t, floor as i64], |r| Ok((r.get::<_, bool>(0)?, r.get::<_, bool>(1)?)))?;
            if !hot {
                return Ok(None);
            }
            has_archived = archived;
        }
        let consumer = match consumer {
            None => None,
            Some(c) => match day.id_of(c)? {
                Some(c) => Some(c),
                None => return Ok(None),
            },
        };
        Ok(Some(FileIds { tenant: t, consumer, floor, rollups_usable: !has_archived }))
    }

    fn name(day: &DayReader, id: u32) -> Result<Option<String>, StoreError> {
        if id == 0 {
            return Ok(None);
        }
        day.dict.ensure(&day.conn, id)?;
        Ok(day.dict.with(|lookup| lookup(id).map(str::to_string)))
    }

    /// The stored rollup rows of a tenant (and consumer) in a day file,
    /// with only the parts asked for (the others are left empty and never
    /// read from disk).
    fn rollup_rows(&self, day: &DayReader, tenant: u32, consumer: Option<u32>, parts: Parts) -> Result<Vec<(u32, ConsumerDay)>, StoreError> {
        let mut stmt = day.conn.prepare_cached(
            "SELECT consumer, calls, err4, err5, latency_sum_us, m_get, m_post, m_put, m_patch, m_delete, m_other,
                    CASE WHEN ?3 THEN latency ELSE x'' END, CASE WHEN ?4 THEN hours ELSE x'' END, CASE WHEN ?5 THEN paths ELSE x'' END
             FROM roll_consumer WHERE tenant = ?1 AND (?2 IS NULL OR consumer = ?2)",
        )?;
        let mut rows = stmt.query(rusqlite::params![tenant, consumer, parts.latency, parts.hours, parts.paths])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push((r.get(0)?, ConsumerDay::from_row(r, 1)?));
        }
        Ok(out)
    }

    /// Request events of `tenant` in `[from, to)` counted per consumer (or
    /// only `consumer`): one total each, or one per hour (keyed by the
    /// hour's start in ms; 0 for totals).
    pub fn consumer_activity(
        &self,
        tenant: &str,
        from: i64,
        to: i64,
        consumer: Option<&str>,
        mode: Activity,
    ) -> Result<HashMap<(i64, Option<String>), ConsumerAgg>, StoreError> {
        let mut out: HashMap<(i64, Option<String>), ConsumerAgg> = HashMap::new();
        for day_number in self.days_of_window(from, to) {
            let Some(day) = self.day(day_number)? else { continue };
            let _snapshot = OneSnapshot::begin(&day.conn)?;
            let Some(ids) = self.ids(&day, tenant, consumer)? else { continue };
            let (t, c) = (ids.tenant, ids.consumer);
            let p = plan(day_number, from, to);
            let d0 = day_number * DAY_MS;
            let hourly = mode == Activity::Hourly;
            let mut by_id: FxHashMap<(i64, u32), ConsumerAgg> = FxHashMap::default();
            // What the stored rows answer (`covered`) and what the events must (`edges`).
            let (covered, edges) = match mode {
                _ if !ids.rollups_usable => (Vec::new(), vec![(from.max(d0), to.min(d0 + DAY_MS))]),
                Activity::Totals { .. } if p.whole => (vec![(d0, d0 + DAY_MS)], Vec::new()),
                Activity::Totals { latency: true } => (Vec::new(), vec![(from.max(d0), to.min(d0 + DAY_MS))]),
                _ if p.hours.0 < p.hours.1 => (vec![(p.hours.0 * HOUR_MS, p.hours.1 * HOUR_MS)], p.edges.clone()),
                _ => (Vec::new(), p.edges.clone()),
            };
            if !covered.is_empty() {
                let whole_totals = matches!(mode, Activity::Totals { .. }) && p.whole;
                let parts = Parts { latency: whole_totals && mode == (Activity::Totals { latency: true }), hours: !whole_totals, paths: false };
                for (consumer_id, row) in self.rollup_rows(&day, t, c, parts)? {
                    if matches!(mode, Activity::Totals { .. }) && p.whole {
                        by_id.entry((0, consumer_id)).or_default().merge(&row.totals);
                        continue;
                    }
                    for hour in p.hours.0..p.hours.1 {
                        let counts = &row.hours[(hour - day_number * 24) as usize];
                        if counts.calls > 0 {
                            let at = if hourly { hour * HOUR_MS } else { 0 };
                            by_id.entry((at, consumer_id)).or_default().merge_counts(counts);
                        }
                    }
                }
            }
            let mut raw = Rollups::default();
            self.add_raw(&day, &ids, &edges, &covered, &mut raw)?;
            for ((_, consumer_id), row) in raw.consumers {
                if hourly {
                    for (h, counts) in row.hours.iter().enumerate().filter(|(_, h)| h.calls > 0) {
                        by_id.entry((d0 + h as i64 * HOUR_MS, consumer_id)).or_default().merge_counts(counts);
                    }
                } else if mode == (Activity::Totals { latency: true }) {
                    by_id.entry((0, consumer_id)).or_default().merge(&row.totals);
                } else {
                    by_id.entry((0, consumer_id)).or_default().merge_counts(&row.totals);
                }
            }
            for ((at, consumer_id), agg) in by_id {
                out.entry((at, Self::name(&day, consumer_id)?)).or_default().merge(&agg);
            }
        }
        Ok(out)
    }

    /// Calls and errors per path of one consumer's request events in `[from, to)`.
    pub fn consumer_paths(&self, tenant: &str, from: i64, to: i64, consumer: &str) -> Result<HashMap<Option<String>, PathAgg>, StoreError> {
        let mut out: HashMap<Option<String>, PathAgg> = HashMap::new();
        for day_number in self.days_of_window(from, to) {
            let Some(day) = self.day(day_number)? else { continue };
            let _snapshot = OneSnapshot::begin(&day.conn)?;
            let Some(ids) = self.ids(&day, tenant, Some(consumer))? else { continue };
            let (t, c) = (ids.tenant, ids.consumer);
            let p = plan(day_number, from, to);
            let d0 = day_number * DAY_MS;
            let mut by_id: FxHashMap<u32, PathAgg> = FxHashMap::default();
            // Path counts are kept per day: a partial day is read from the events.
            let (covered, edges) = if p.whole && ids.rollups_usable {
                for (_, row) in self.rollup_rows(&day, t, c, Parts { latency: false, hours: false, paths: true })? {
                    by_id = row.paths;
                }
                (vec![(d0, d0 + DAY_MS)], Vec::new())
            } else {
                (Vec::new(), vec![(from.max(d0), to.min(d0 + DAY_MS))])
            };
            let mut raw = Rollups::default();
            self.add_raw(&day, &ids, &edges, &covered, &mut raw)?;
            for (_, row) in raw.consumers {
                for (path, agg) in row.paths {
                    let mine = by_id.entry(path).or_default();
                    mine.calls += agg.calls;
                    mine.errors += agg.errors;
                }
            }
            for (path, agg) in by_id {
                let mine = out.entry(Self::name(&day, path)?).or_default();
                mine.calls += agg.calls;
                mine.errors += agg.errors;
            }
        }
        Ok(out)
    }

    /// A consumer's profile over `[from, to)`: totals, methods, the `top`
    /// paths, and calls by hour of the day.
    pub fn consumer_profile(&self, tenant: &str, consumer: &str, from: i64, to: i64, top: usize) -> Result<ConsumerProfile, StoreError> {
        let hours = self.consumer_activity(tenant, from, to, Some(consumer), Activity::Hourly)?;
        let mut totals = ConsumerAgg::default();
        let mut by_hour_of_day = [0u64; 24];
        for ((hour_ms, _), agg) in &hours {
            totals.merge_counts(agg);
            by_hour_of_day[(hour_ms.rem_euclid(DAY_MS) / HOUR_MS) as usize] += agg.calls;
        }
        let names = rollup::METHODS.iter().map(|m| m.to_string()).chain(["other".to_string()]);
        let mut methods: Vec<(String, u64)> = names.zip(totals.methods).filter(|(_, n)| *n > 0).collect();
        methods.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut top_paths: Vec<(String, u64, u64)> = self
            .consumer_paths(tenant, from, to, consumer)?
            .into_iter()
            .map(|(path, agg)| (path.unwrap_or_default(), agg.calls, agg.errors))
            .collect();
        top_paths.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        top_paths.truncate(top);
        let busiest_hour = (0..24u8)
            .filter(|h| by_hour_of_day[*h as usize] > 0)
            .max_by_key(|h| (by_hour_of_day[*h as usize], 24 - h))
            .map(|h| (h, by_hour_of_day[h as usize]));
        Ok(ConsumerProfile { totals, methods, top_paths, by_hour_of_day, busiest_hour })
    }

    /// Request events in `[from, to)` grouped by path: calls, errors and
    /// distinct consumers (calls without a consumer — refused before the key
    /// was known — are not one). Read from the events (a window of hours is
    /// a few blocks per tenant, of which five columns are decoded).
    pub fn path_timeline(&self, tenant: &str, from: i64, to: i64) -> Result<Vec<PathActivity>, StoreError> {
        // Calls, errors and consumers per path.
        type PathCounts = (u64, u64, rustc_hash::FxHashSet<Option<String>>);
        let mut by_path: HashMap<Option<String>, PathCounts> = HashMap::new();
        let columns = Columns::of(&[col::TS, col::CATEGORY, col::STATUS]).with(Columns::text(&[TextField::Path, TextField::Consumer]));
        for day_number in self.days_of_window(from, to) {
            let Some(day) = self.day(day_number)? else { continue };
            let Some(t) = day.id_of(tenant)? else { continue };
            // Archived events are hidden, as everywhere in the audit API.
            let floor = self.archived_through(tenant).0 as i64;
            let mut stmt = day.conn.prepare_cached("SELECT data FROM blocks WHERE tenant = ?1 AND max_ts >= ?2 AND min_ts < ?3 AND first_seq > ?4")?;
            let mut rows = stmt.query(rusqlite::params![t, from, to, floor])?;
            // Counted by ids first; ids are per file, so names are resolved per file.
            let mut counts: FxHashMap<u32, (u64, u64, rustc_hash::FxHashSet<u32>)> = FxHashMap::default();
            while let Some(r) = rows.next()? {
                let data = r.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?;
                let block = self.decode(data, columns)?;
                let (paths, consumers) = (&block.texts[TextField::Path.index()], &block.texts[TextField::Consumer.index()]);
                for row in 0..block.rows() {
                    let ts = block.ts[row];
                    if block.category[row] != 0 || ts < from || ts >= to {
                        continue;
                    }
                    let entry = counts.entry(paths.dict_id(row).unwrap_or(0)).or_default();
                    entry.0 += 1;
                    entry.1 += u64::from(block.status[row] >= 400);
                    if let Some(consumer) = consumers.dict_id(row) {
                        entry.2.insert(consumer);
                    }
                }
            }
            for (path, (calls, errors, consumers)) in counts {
                let entry = by_path.entry(Self::name(&day, path)?).or_default();
                entry.0 += calls;
                entry.1 += errors;
                for c in consumers {
                    entry.2.insert(Self::name(&day, c)?);
                }
            }
        }
        let mut out: Vec<PathActivity> = by_path
            .into_iter()
            .map(|(path, (calls, errors, consumers))| PathActivity { path, calls, errors, distinct_consumers: consumers.len() as u64 })
            .collect();
        out.sort_by(|a, b| b.calls.cmp(&a.calls).then(a.path.cmp(&b.path)));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_splits_into_days_hours_and_edges() {
        let day = 20_000i64;
        let d0 = day * DAY_MS;
        let whole = plan(day, d0, d0 + DAY_MS);
        assert!(whole.whole);
        assert_eq!(whole.hours, (d0 / HOUR_MS, d0 / HOUR_MS + 24));
        assert!(whole.edges.is_empty());
        // 01:30 to 05:15: hours 2-4 from rollups, two edges from events.
        let p = plan(day, d0 + 90 * 60_000, d0 + 5 * HOUR_MS + 15 * 60_000);
        assert!(!p.whole);
        assert_eq!(p.hours, (d0 / HOUR_MS + 2, d0 / HOUR_MS + 5));
        assert_eq!(p.edges, vec![(d0 + 90 * 60_000, d0 + 2 * HOUR_MS), (d0 + 5 * HOUR_MS, d0 + 5 * HOUR_MS + 15 * 60_000)]);
        // Within one hour: all from events.
        let p = plan(day, d0 + 60_000, d0 + 120_000);
        assert_eq!(p.hours, (0, 0));
        assert_eq!(p.edges, vec![(d0 + 60_000, d0 + 120_000)]);
        // A window wider than the day is clipped to it.
        let p = plan(day, d0 - DAY_MS, d0 + 2 * DAY_MS);
        assert!(p.whole);
    }
}
