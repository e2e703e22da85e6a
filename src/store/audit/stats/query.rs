//! Request statistics for any filter the audit list accepts: totals, status
//! classes, `429`s, the error rate, latency quantiles, distinct consumers
//! and client addresses, overall and grouped by one dimension.
//!
//! Two ways to the same answer:
//! - **rollups**, when the filter is only a tenant, a time window and
//!   perhaps a consumer, and everything asked is something the rollups keep
//!   (calls, 4xx, 5xx, the latency sum and sketches, consumers; by
//!   consumer, hour or day): the per-day consumer rows, hour histograms and
//!   the raw edges, as in [`super`];
//! - **events** otherwise: one filtered scan ([`AuditReader::scan`], the
//!   list API's own path), counted as it goes.
//!
//! Counts are exact either way. Latency quantiles come from the mergeable
//! sketch ([`crate::store::sketch`]) on both paths, so they are within its
//! [`LATENCY_ERROR_BOUND`] of the value at that rank; the mean is exact. A call
//! without a latency counts as 0 µs, as in the rollups.

use std::collections::HashSet;

use rustc_hash::FxHashMap;

use super::super::day_of;
use super::super::rollup::{ConsumerAgg, DAY_MS, HOUR_MS};
use super::Activity;
use crate::event::Category;
use crate::store::audit::{AuditReader, EventFilter};
use crate::store::sketch::LatencySketch;
use crate::store::StoreError;

pub use crate::store::sketch::RELATIVE_ERROR as LATENCY_ERROR_BOUND;

/// What the groups of an answer are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Consumer,
    Api,
    Path,
    Method,
    /// `1xx` … `5xx` (statuses from 600 on are `5xx`, as they count as
    /// server errors); calls without a status have no class (`null`).
    StatusClass,
    /// UTC hours, keyed by their start.
    Hour,
    /// UTC days.
    Day,
}

impl GroupBy {
    pub const ALL: [GroupBy; 7] =
        [GroupBy::Consumer, GroupBy::Api, GroupBy::Path, GroupBy::Method, GroupBy::StatusClass, GroupBy::Hour, GroupBy::Day];

    pub fn parse(text: &str) -> Option<GroupBy> {
        GroupBy::ALL.into_iter().find(|g| g.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Consumer => "consumer",
            GroupBy::Api => "api",
            GroupBy::Path => "path",
            GroupBy::Method => "method",
            GroupBy::StatusClass => "status_class",
            GroupBy::Hour => "hour",
            GroupBy::Day => "day",
        }
    }

    /// Periods rather than things: listed oldest first.
    pub fn is_time(self) -> bool {
        matches!(self, GroupBy::Hour | GroupBy::Day)
    }
}

/// The measures beyond the counts (calls, 4xx, 5xx, errors), which every
/// answer has. The rollups keep neither status codes beyond their class
/// nor client addresses, so asking for `rate_limited` or `distinct_ips`
/// means reading the events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metrics {
    pub latency: bool,
    pub rate_limited: bool,
    pub distinct_consumers: bool,
    pub distinct_ips: bool,
}

impl Metrics {
    pub const ALL: Metrics = Metrics { latency: true, rate_limited: true, distinct_consumers: true, distinct_ips: true };
    pub const NAMES: [&'static str; 4] = ["latency", "rate_limited", "distinct_consumers", "distinct_ips"];

    /// Parses a comma-separated list of [`Metrics::NAMES`] (empty: counts only).
    pub fn parse(text: &str) -> Result<Metrics, String> {
        let mut m = Metrics { latency: false, rate_limited: false, distinct_consumers: false, distinct_ips: false };
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "latency" => m.latency = true,
                "rate_limited" => m.rate_limited = true,
                "distinct_consumers" => m.distinct_consumers = true,
                "distinct_ips" => m.distinct_ips = true,
                other => return Err(format!("`{other}` is not one of {}", Metrics::NAMES.join(", "))),
            }
        }
        Ok(m)
    }
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Rollups,
    Events,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Rollups => "rollups",
            Source::Events => "events",
        }
    }
}

/// A statistics question.
#[derive(Debug, Clone)]
pub struct StatsQuery {
    /// Request events only: the category is set to [`Category::Request`].
    /// `from_ms` and `to_ms` (inclusive, as everywhere in filters) bound the
    /// window; leave them unset for all time.
    pub filter: EventFilter,
    pub group_by: Option<GroupBy>,
    /// Keep the `top` groups with the most calls.
    pub top: usize,
    pub metrics: Metrics,
    /// Read the events even where the rollups could answer (to check them).
    pub force_events: bool,
}

/// The measures of a set of calls.
#[derive(Debug, Clone, Default)]
pub struct Measures {
    pub calls: u64,
    /// 400–499.
    pub client_errors: u64,
    /// 500 and above (an upstream's statuses up to 999).
    pub server_errors: u64,
    /// Status 429; `None` when not asked for.
    pub rate_limited: Option<u64>,
    pub latency_sum_us: u64,
    /// Empty when latency was not asked for.
    pub latency: LatencySketch,
    /// Distinct consumer ids (calls without one are not counted);
    /// empty when not asked for.
    pub consumers: HashSet<Box<str>>,
    /// Distinct client addresses; empty when not asked for.
    pub ips: HashSet<Box<str>>,
}

impl Measures {
    pub fn errors(&self) -> u64 {
        self.client_errors + self.server_errors
    }

    /// Errors per call, 0 when there were no calls.
    pub fn error_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.errors() as f64 / self.calls as f64
        }
    }

    /// The mean latency in µs (exact); `None` without calls.
    pub fn mean_latency_us(&self) -> Option<f64> {
        (self.calls > 0).then(|| self.latency_sum_us as f64 / self.calls as f64)
    }

    /// The latency at quantile `q` in µs, within [`LATENCY_ERROR_BOUND`].
    pub fn latency_quantile_us(&self, q: f64) -> Option<f64> {
        self.latency.quantile(q)
    }

    fn add_agg(&mut self, agg: &ConsumerAgg) {
        self.calls += agg.calls;
        self.client_errors += agg.err4;
        self.server_errors += agg.err5;
        self.latency_sum_us += agg.latency_sum_us;
        self.latency.merge(&agg.latency);
    }

    fn add_consumer(&mut self, consumer: Option<&str>) {
        if let Some(c) = consumer {
            if !self.consumers.contains(c) {
                self.consumers.insert(c.into());
            }
        }
    }

    /// Counts one call.
    fn add_call(&mut self, m: &Metrics, status: u16, latency_us: u64, consumer: Option<&str>, ip: Option<&str>) {
        self.calls += 1;
        self.client_errors += u64::from((400..500).contains(&status));
        self.server_errors += u64::from(status >= 500);
        self.latency_sum_us += latency_us;
        if m.latency {
            self.latency.record(latency_us);
        }
        if m.rate_limited {
            *self.rate_limited.get_or_insert(0) += u64::from(status == 429);
        }
        if m.distinct_consumers {
            self.add_consumer(consumer);
        }
        if let (true, Some(ip)) = (m.distinct_ips, ip) {
            if !self.ips.contains(ip) {
                self.ips.insert(ip.into());
            }
        }
    }
}

/// One group of an answer.
#[derive(Debug, Clone)]
pub struct Group {
    /// The consumer, api, path, method or status class (`None`: calls
    /// without one), or the hour's start (`2026-11-22T15:00:00.000Z`) or day
    /// (`2026-11-22`).
    pub key: Option<String>,
    pub measures: Measures,
}

/// The answer to a [`StatsQuery`].
#[derive(Debug, Clone)]
pub struct Stats {
    pub source: Source,
    pub totals: Measures,
    /// The `top` groups: most calls first (ties by key), or oldest first
    /// for hours and days.
    pub groups: Vec<Group>,
    /// How many groups there were before the cut to `top`.
    pub group_count: usize,
}

/// A group's key while counting: a text, or a period's start.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Key {
    Text(Option<Box<str>>),
    Time(i64),
}

impl Key {
    fn label(&self, group_by: GroupBy) -> Option<String> {
        match self {
            Key::Text(text) => text.as_deref().map(str::to_string),
            Key::Time(ms) if group_by == GroupBy::Day => {
                let date = chrono::DateTime::from_timestamp_millis(*ms).unwrap_or_default().date_naive();
                Some(date.format("%Y-%m-%d").to_string())
            }
            Key::Time(ms) => Some(crate::event::format_timestamp(*ms)),
        }
    }
}

/// A status's class. An upstream may answer any three-digit status (up to
/// 999) and the gateway passes it on; one past 599 has no class of its own
/// and is a server error wherever calls are counted (`server_errors`, the
/// rollups' `err5`), so its class is `5xx` too.
fn status_class(status: u16) -> Option<&'static str> {
    match status {
        100..=199 => Some("1xx"),
        200..=299 => Some("2xx"),
        300..=399 => Some("3xx"),
        400..=499 => Some("4xx"),
        500..=999 => Some("5xx"),
        _ => None,
    }
}

/// Groups counted under text keys without allocating a key per call.
#[derive(Default)]
struct TextGroups {
    named: FxHashMap<Box<str>, Measures>,
    none: Option<Measures>,
}

impl TextGroups {
    fn slot(&mut self, key: Option<&str>) -> &mut Measures {
        match key {
            None => self.none.get_or_insert_with(Measures::default),
            Some(k) => {
                if !self.named.contains_key(k) {
                    self.named.insert(k.into(), Measures::default());
                }
                self.named.get_mut(k).expect("inserted above")
            }
        }
    }

    fn into_keys(self) -> impl Iterator<Item = (Key, Measures)> {
        self.named.into_iter().map(|(k, m)| (Key::Text(Some(k)), m)).chain(self.none.map(|m| (Key::Text(None), m)))
    }
}

impl StatsQuery {
    /// Whether the rollups hold everything this question needs.
    pub fn rollups_answer(&self) -> bool {
        let f = &self.filter;
        let only_window_and_consumer = f.event_type.is_none()
            && f.api_id.is_none()
            && f.method.is_none()
            && f.path_prefix.is_none()
            && f.actor.is_none()
            && f.target.is_none()
            && f.target_prefix.is_none()
            && f.request_id.is_none()
            && f.outcome.is_none()
            && f.status_min.is_none()
            && f.status_max.is_none()
            && f.before.is_none();
        let measures = !self.metrics.rate_limited && !self.metrics.distinct_ips;
        let groups = match self.group_by {
            None | Some(GroupBy::Consumer) | Some(GroupBy::Day) => true,
            // Hour histograms keep no latency sketch.
            Some(GroupBy::Hour) => !self.metrics.latency,
            Some(_) => false,
        };
        !self.force_events && only_window_and_consumer && measures && groups
    }
}

impl AuditReader {
    /// Answers a statistics question, from the rollups when they hold the
    /// answer, from the events otherwise; exact counts either way.
    pub fn request_stats(&self, query: &StatsQuery) -> Result<Stats, StoreError> {
        let mut query = query.clone();
        query.filter.category = Some(Category::Request);
        let (source, (totals, groups)) = if query.rollups_answer() {
            (Source::Rollups, self.stats_from_rollups(&query)?)
        } else {
            (Source::Events, self.stats_from_events(&query)?)
        };
        Ok(finish(source, totals, groups, &query))
    }

    fn stats_from_events(&self, q: &StatsQuery) -> Result<(Measures, Vec<(Key, Measures)>), StoreError> {
        let m = q.metrics;
        let mut totals = Measures::default();
        if m.rate_limited {
            totals.rate_limited = Some(0);
        }
        let mut text = TextGroups::default();
        let mut time: FxHashMap<i64, Measures> = FxHashMap::default();
        // As the rollups: hot day files only, not restored days.
        let filter = EventFilter { hot_only: true, ..q.filter.clone() };
        self.scan(&filter, None, false, |stored| {
            let e = &stored.event;
            let status = e.status_code.unwrap_or(0);
            let latency = e.latency_us.unwrap_or(0);
            let (consumer, ip) = (e.consumer_id.as_deref(), e.client_ip.as_deref());
            totals.add_call(&m, status, latency, consumer, ip);
            let slot = match q.group_by {
                None => return true,
                Some(GroupBy::Consumer) => text.slot(consumer),
                Some(GroupBy::Api) => text.slot(e.api_id.as_deref()),
                Some(GroupBy::Path) => text.slot(e.path.as_deref()),
                Some(GroupBy::Method) => text.slot(e.method.as_deref()),
                Some(GroupBy::StatusClass) => text.slot(status_class(status)),
                Some(GroupBy::Hour) => time.entry(e.timestamp_ms.div_euclid(HOUR_MS) * HOUR_MS).or_default(),
                Some(GroupBy::Day) => time.entry(day_of(e.timestamp_ms) * DAY_MS).or_default(),
            };
            slot.add_call(&m, status, latency, consumer, ip);
            true
        })?;
        let groups = text.into_keys().chain(time.into_iter().map(|(t, m)| (Key::Time(t), m))).collect();
        Ok((totals, groups))
    }

    fn stats_from_rollups(&self, q: &StatsQuery) -> Result<(Measures, Vec<(Key, Measures)>), StoreError> {
        let f = &q.filter;
        let tenant = f.tenant_id.as_str();
        let consumer = f.consumer_id.as_deref();
        // Filters are inclusive; the rollup readers take `[from, to)`.
        let from = f.from_ms.unwrap_or(i64::MIN / 2);
        let to = f.to_ms.map_or(i64::MAX / 2, |t| t.saturating_add(1));
        let totals_mode = Activity::Totals { latency: q.metrics.latency };
        let want_consumers = q.metrics.distinct_consumers;
        let mut totals = Measures::default();
        let mut groups: FxHashMap<Key, Measures> = FxHashMap::default();
        let mut add = |key: Option<Key>, name: Option<String>, agg: &ConsumerAgg| {
            totals.add_agg(agg);
            if want_consumers {
                totals.add_consumer(name.as_deref());
            }
            if let Some(key) = key {
                let group = groups.entry(key).or_default();
                group.add_agg(agg);
                if want_consumers {
                    group.add_consumer(name.as_deref());
                }
            }
        };
        match q.group_by {
            None | Some(GroupBy::Consumer) => {
                for ((_, name), agg) in self.consumer_activity(tenant, from, to, consumer, totals_mode)? {
                    let key = q.group_by.map(|_| Key::Text(name.as_deref().map(Into::into)));
                    add(key, name, &agg);
                }
            }
            Some(GroupBy::Day) => {
                let days: Vec<i64> = self.days_of_window(from, to);
                for day in days {
                    let (a, b) = (from.max(day * DAY_MS), to.min((day + 1) * DAY_MS));
                    for ((_, name), agg) in self.consumer_activity(tenant, a, b, consumer, totals_mode)? {
                        add(Some(Key::Time(day * DAY_MS)), name, &agg);
                    }
                }
            }
            Some(GroupBy::Hour) => {
                for ((hour, name), agg) in self.consumer_activity(tenant, from, to, consumer, Activity::Hourly)? {
                    add(Some(Key::Time(hour)), name, &agg);
                }
            }
            Some(other) => unreachable!("the rollups do not group by {}", other.as_str()),
        }
        Ok((totals, groups.into_iter().collect()))
    }
}

/// Cuts the groups to the `top` with the most calls and orders them.
fn finish(source: Source, totals: Measures, mut groups: Vec<(Key, Measures)>, q: &StatsQuery) -> Stats {
    let Some(group_by) = q.group_by else {
        return Stats { source, totals, groups: Vec::new(), group_count: 0 };
    };
    let group_count = groups.len();
    // Most calls first; ties by key, calls without a key last.
    groups.sort_by(|(ka, a), (kb, b)| {
        b.calls.cmp(&a.calls).then_with(|| match (ka, kb) {
            (Key::Text(None), Key::Text(Some(_))) => std::cmp::Ordering::Greater,
            (Key::Text(Some(_)), Key::Text(None)) => std::cmp::Ordering::Less,
            _ => ka.cmp(kb),
        })
    });
    groups.truncate(q.top);
    if group_by.is_time() {
        groups.sort_by(|(ka, _), (kb, _)| ka.cmp(kb));
    }
    let groups = groups
        .into_iter()
        .map(|(key, mut measures)| {
            if q.metrics.rate_limited && measures.rate_limited.is_none() {
                measures.rate_limited = Some(0);
            }
            Group { key: key.label(group_by), measures }
        })
        .collect();
    let mut totals = totals;
    if q.metrics.rate_limited && totals.rate_limited.is_none() {
        totals.rate_limited = Some(0);
    }
    Stats { source, totals, groups, group_count }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_bad_ones_are_named() {
        for g in GroupBy::ALL {
            assert_eq!(GroupBy::parse(g.as_str()), Some(g));
        }
        assert_eq!(GroupBy::parse("country"), None);
        assert_eq!(Metrics::parse("latency, distinct_ips").unwrap(), Metrics { latency: true, rate_limited: false, distinct_consumers: false, distinct_ips: true });
        assert_eq!(Metrics::parse("").unwrap(), Metrics { latency: false, rate_limited: false, distinct_consumers: false, distinct_ips: false });
        assert!(Metrics::parse("latency,p99").unwrap_err().contains("`p99`"));
        const { assert!(LATENCY_ERROR_BOUND <= 0.01) };
    }

    #[test]
    fn the_rollups_answer_only_what_they_hold() {
        let base = StatsQuery {
            filter: EventFilter { tenant_id: "acme".into(), consumer_id: Some("c".into()), from_ms: Some(0), to_ms: Some(1), ..EventFilter::default() },
            group_by: None,
            top: 10,
            metrics: Metrics { latency: true, rate_limited: false, distinct_consumers: true, distinct_ips: false },
            force_events: false,
        };
        assert!(base.rollups_answer());
        let with = |change: &dyn Fn(&mut StatsQuery)| {
            let mut q = base.clone();
            change(&mut q);
            q.rollups_answer()
        };
        assert!(with(&|q| q.group_by = Some(GroupBy::Day)));
        assert!(with(&|q| q.group_by = Some(GroupBy::Consumer)));
        assert!(!with(&|q| q.group_by = Some(GroupBy::Hour)), "no hourly sketches");
        assert!(with(&|q| {
            q.group_by = Some(GroupBy::Hour);
            q.metrics.latency = false;
        }));
        assert!(!with(&|q| q.group_by = Some(GroupBy::Path)));
        assert!(!with(&|q| q.metrics.rate_limited = true));
        assert!(!with(&|q| q.metrics.distinct_ips = true));
        assert!(!with(&|q| q.filter.path_prefix = Some("/x".into())));
        assert!(!with(&|q| q.filter.status_min = Some(500)));
        assert!(!with(&|q| q.force_events = true));
    }

    #[test]
    fn keys_label_hours_and_days() {
        let t = 1_795_341_600_000; // 2026-11-22T10:00:00Z
        assert_eq!(Key::Time(t).label(GroupBy::Hour).as_deref(), Some("2026-11-22T10:00:00.000Z"));
        assert_eq!(Key::Time(t).label(GroupBy::Day).as_deref(), Some("2026-11-22"));
        assert_eq!(status_class(429), Some("4xx"));
        assert_eq!(status_class(0), None);
        assert_eq!(status_class(599), Some("5xx"));
        assert_eq!(status_class(700), Some("5xx"));
        assert_eq!(status_class(999), Some("5xx"));
        assert_eq!(status_class(1000), None);
    }
}
