//! Aggregates computed on the server: every stat and every grouping of
//! `GET /v1/audit/{tenant}/stats` (from the rollups and from the events)
//! against a count over the same events read back from the store, the
//! consumer profile and the timeline, bad parameters, who may read them,
//! and the `investigate` / `report weekly` commands against a running server.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use keytrail::event::{format_timestamp, now_ms, Category, Event, Text};
use keytrail::splitmix::SplitMix64;
use keytrail::store::audit::stats::query::{GroupBy, Measures, Metrics, Source, StatsQuery, LATENCY_ERROR_BOUND};
use keytrail::store::audit::{AuditReader, AuditWriterStore, EventFilter};

use crate::util::{closed_port, run_cli, start_upstream, Admin, TestServer, ADMIN_TOKEN};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

// ---------- the events ----------

const CONSUMERS: [&str; 6] = ["cons_alpha", "cons_beta", "cons_gamma", "cons_delta", "cons_eps", "cons_zeta"];
const APIS: [(&str, &[&str]); 3] = [
    ("orders", &["/orders", "/orders/1", "/orders/2", "/orders/3/items", "/orders/export"]),
    ("billing", &["/billing/invoices", "/billing/invoices/7", "/billing/refunds"]),
    ("search", &["/search", "/search/suggest"]),
];
const STATUSES: [(u16, u64); 14] = [
    (200, 560),
    (201, 60),
    (204, 30),
    (304, 30),
    (400, 30),
    (401, 40),
    (403, 20),
    (404, 50),
    (429, 70),
    (500, 25),
    (502, 15),
    (503, 25),
    (504, 15),
    (101, 5),
];
const METHODS: [(&str, u64); 6] = [("GET", 60), ("POST", 20), ("PUT", 7), ("DELETE", 5), ("PATCH", 5), ("OPTIONS", 3)];

fn pick<'a, T>(rng: &mut SplitMix64, weighted: &'a [(T, u64)]) -> &'a T {
    let total: u64 = weighted.iter().map(|(_, w)| w).sum();
    let mut at = rng.below(total);
    for (value, w) in weighted {
        if at < *w {
            return value;
        }
        at -= w;
    }
    &weighted[0].0
}

/// `n` varied request events of `tenant` between `start` and `end`, in
/// roughly ascending time (some a little out of order, as slow calls are),
/// with a security event every so often.
fn generate(tenant: &str, start: i64, end: i64, n: usize, seed: u64) -> Vec<Event> {
    let mut rng = SplitMix64(seed);
    let consumers: Vec<(Option<&str>, u64)> =
        CONSUMERS.iter().zip([40, 25, 15, 10, 6, 4]).map(|(c, w)| (Some(*c), w)).chain([(None, 5)]).collect();
    let mut out = Vec::with_capacity(n + n / 20);
    for i in 0..n {
        let ts = start + (end - start) * i as i64 / n as i64 - rng.below(3_000) as i64;
        let consumer = *pick(&mut rng, &consumers);
        let (api, paths) = APIS[rng.below(3) as usize];
        let mut e = Event::new(tenant, Category::Request, "api_call", "success");
        e.timestamp_ms = ts.max(start);
        e.consumer_id = consumer.map(Text::from);
        e.api_id = Some(api.to_string().into());
        e.path = Some(paths[rng.below(paths.len() as u64) as usize].to_string());
        e.method = Some(pick(&mut rng, &METHODS).to_string().into());
        let status = if consumer.is_none() { 401 } else { *pick(&mut rng, &STATUSES) };
        e.status_code = Some(status);
        if status >= 400 {
            e.outcome = "failure".into();
        }
        // Log-uniform from 50 µs to ~3 s; a few calls have no latency.
        e.latency_us = (rng.below(100) != 0).then(|| (50.0 * (rng.unit() * 11.0).exp()) as u64);
        e.client_ip = match rng.below(50) {
            0 => None,
            k if k < 10 => Some(format!("2001:db8::{k:x}").into()),
            k => Some(format!("203.0.113.{}", k % 37).into()),
        };
        out.push(e);
        if i % 23 == 0 {
            let mut s = Event::new(tenant, Category::Security, if i % 2 == 0 { "auth_failed" } else { "rate_limit_exceeded" }, "failure");
            s.timestamp_ms = ts.max(start);
            s.client_ip = Some("198.51.100.9".into());
            s.status_code = Some(if i % 2 == 0 { 401 } else { 429 });
            out.push(s);
        }
    }
    out
}

/// Writes `events` in batches; the rollups are written after the first
/// `flushed` batches and left pending for the rest.
fn write(store: &mut AuditWriterStore, events: &[Event], batch: usize, flushed: usize) {
    for (i, chunk) in events.chunks(batch).enumerate() {
        store.insert_batch(&mut chunk.to_vec()).unwrap();
        if i < flushed {
            store.flush_rollups().unwrap();
        }
    }
}

/// Every request event of `tenant`, as the store gives them back.
fn read_back(audit: &std::path::Path, tenant: &str) -> Vec<Event> {
    let reader = AuditReader::open(audit).unwrap();
    let filter = EventFilter { tenant_id: tenant.into(), category: Some(Category::Request), ..EventFilter::default() };
    let mut out = Vec::new();
    reader
        .scan(&filter, None, false, |s| {
            out.push(s.event.clone());
            true
        })
        .unwrap();
    out
}

// ---------- the brute force ----------

/// What a set of calls should measure, counted one by one.
#[derive(Debug, Default)]
struct Expect {
    calls: u64,
    client_errors: u64,
    server_errors: u64,
    rate_limited: u64,
    consumers: BTreeSet<String>,
    ips: BTreeSet<String>,
    latencies: Vec<u64>,
}

impl Expect {
    fn of<'a>(events: impl IntoIterator<Item = &'a Event>) -> Expect {
        let mut x = Expect::default();
        for e in events {
            let status = e.status_code.unwrap_or(0);
            x.calls += 1;
            x.client_errors += u64::from((400..500).contains(&status));
            x.server_errors += u64::from(status >= 500);
            x.rate_limited += u64::from(status == 429);
            x.consumers.extend(e.consumer_id.as_deref().map(String::from));
            x.ips.extend(e.client_ip.as_deref().map(String::from));
            x.latencies.push(e.latency_us.unwrap_or(0));
        }
        x.latencies.sort_unstable();
        x
    }

    fn nearest_rank(&self, q: f64) -> f64 {
        self.latencies[((q * self.latencies.len() as f64).ceil() as usize).max(1) - 1] as f64
    }
}

/// The measures an answer gave, from the library or the JSON.
#[derive(Debug)]
struct Got {
    calls: u64,
    errors: u64,
    client_errors: u64,
    server_errors: u64,
    error_rate: f64,
    rate_limited: Option<u64>,
    consumers: Option<u64>,
    ips: Option<u64>,
    /// avg, p50, p95, p99 in µs.
    latency: Option<[Option<f64>; 4]>,
}

impl Got {
    fn of_measures(m: &Measures, metrics: &Metrics) -> Got {
        Got {
            calls: m.calls,
            errors: m.errors(),
            client_errors: m.client_errors,
            server_errors: m.server_errors,
            error_rate: m.error_rate(),
            rate_limited: if metrics.rate_limited { Some(m.rate_limited.unwrap_or(0)) } else { None },
            consumers: metrics.distinct_consumers.then_some(m.consumers.len() as u64),
            ips: metrics.distinct_ips.then_some(m.ips.len() as u64),
            latency: metrics.latency.then(|| {
                [m.mean_latency_us(), m.latency_quantile_us(0.5), m.latency_quantile_us(0.95), m.latency_quantile_us(0.99)]
            }),
        }
    }

    fn of_json(v: &Value) -> Got {
        let us = |x: &Value| x.as_f64().map(|ms| ms * 1000.0);
        Got {
            calls: v["calls"].as_u64().unwrap(),
            errors: v["errors"].as_u64().unwrap(),
            client_errors: v["client_errors"].as_u64().unwrap(),
            server_errors: v["server_errors"].as_u64().unwrap(),
            error_rate: v["error_rate"].as_f64().unwrap(),
            rate_limited: v.get("rate_limited").map(|x| x.as_u64().unwrap()),
            consumers: v.get("distinct_consumers").map(|x| x.as_u64().unwrap()),
            ips: v.get("distinct_ips").map(|x| x.as_u64().unwrap()),
            latency: v.get("latency_ms").map(|l| [us(&l["avg"]), us(&l["p50"]), us(&l["p95"]), us(&l["p99"])]),
        }
    }

    /// Counts exactly; quantiles within the stated bound.
    fn check(&self, want: &Expect, metrics: &Metrics, what: &str) {
        assert_eq!(self.calls, want.calls, "{what}: calls");
        assert_eq!(self.client_errors, want.client_errors, "{what}: 4xx");
        assert_eq!(self.server_errors, want.server_errors, "{what}: 5xx");
        assert_eq!(self.errors, want.client_errors + want.server_errors, "{what}: errors");
        let rate = if want.calls == 0 { 0.0 } else { (want.client_errors + want.server_errors) as f64 / want.calls as f64 };
        assert!((self.error_rate - rate).abs() < 1e-12, "{what}: error rate {} vs {rate}", self.error_rate);
        assert_eq!(self.rate_limited, metrics.rate_limited.then_some(want.rate_limited), "{what}: 429");
        assert_eq!(self.consumers, metrics.distinct_consumers.then_some(want.consumers.len() as u64), "{what}: consumers");
        assert_eq!(self.ips, metrics.distinct_ips.then_some(want.ips.len() as u64), "{what}: ips");
        assert_eq!(self.latency.is_some(), metrics.latency, "{what}: latency asked");
        if let Some([avg, p50, p95, p99]) = self.latency {
            if want.calls == 0 {
                assert_eq!([avg, p50, p95, p99], [None; 4], "{what}");
                return;
            }
            let mean = want.latencies.iter().sum::<u64>() as f64 / want.calls as f64;
            assert!((avg.unwrap() - mean).abs() <= mean * 1e-9 + 1e-6, "{what}: mean {avg:?} vs {mean}");
            for (q, got) in [(0.5, p50), (0.95, p95), (0.99, p99)] {
                let exact = want.nearest_rank(q);
                let got = got.unwrap();
                assert!((got - exact).abs() <= exact * LATENCY_ERROR_BOUND + 1e-6, "{what}: p{q} {got} vs {exact}");
            }
        }
    }
}

/// A query's filter applied by hand.
fn selected<'a>(events: &'a [Event], f: &EventFilter) -> Vec<&'a Event> {
    events
        .iter()
        .filter(|e| {
            let status = e.status_code.unwrap_or(0);
            e.category == Some(Category::Request)
                && f.from_ms.is_none_or(|t| e.timestamp_ms >= t)
                && f.to_ms.is_none_or(|t| e.timestamp_ms <= t)
                && f.consumer_id.as_ref().is_none_or(|c| e.consumer_id.as_deref() == Some(c.as_str()))
                && f.api_id.as_ref().is_none_or(|a| e.api_id.as_deref() == Some(a.as_str()))
                && f.method.as_ref().is_none_or(|m| e.method.as_deref() == Some(m.as_str()))
                && f.path_prefix.as_ref().is_none_or(|p| e.path.as_ref().is_some_and(|path| path.starts_with(p.as_str())))
                && f.status_min.is_none_or(|s| status != 0 && status >= s)
                && f.status_max.is_none_or(|s| status != 0 && status <= s)
        })
        .collect()
}

fn group_key(e: &Event, by: GroupBy) -> Option<String> {
    let status = e.status_code.unwrap_or(0);
    match by {
        GroupBy::Consumer => e.consumer_id.as_deref().map(String::from),
        GroupBy::Api => e.api_id.as_deref().map(String::from),
        GroupBy::Path => e.path.clone(),
        GroupBy::Method => e.method.as_deref().map(String::from),
        GroupBy::StatusClass => (100..1000).contains(&status).then(|| format!("{}xx", (status / 100).min(5))),
        GroupBy::Hour => Some(format_timestamp(e.timestamp_ms.div_euclid(HOUR) * HOUR)),
        GroupBy::Day => Some(format_timestamp(e.timestamp_ms.div_euclid(DAY) * DAY)[..10].to_string()),
    }
}

/// The groups an answer should have: (key, expected), in the answer's
/// order, cut to `top`; and how many there were.
fn expected_groups(events: &[&Event], by: GroupBy, top: usize) -> (Vec<(Option<String>, Expect)>, usize) {
    let mut groups: BTreeMap<Option<String>, Vec<&Event>> = BTreeMap::new();
    for e in events {
        groups.entry(group_key(e, by)).or_default().push(e);
    }
    let count = groups.len();
    let mut out: Vec<(Option<String>, Expect)> = groups.into_iter().map(|(k, es)| (k, Expect::of(es))).collect();
    // Most calls first, ties by key with calls without one last.
    out.sort_by(|(ka, a), (kb, b)| b.calls.cmp(&a.calls).then_with(|| (ka.is_none(), ka).cmp(&(kb.is_none(), kb))));
    out.truncate(top);
    if matches!(by, GroupBy::Hour | GroupBy::Day) {
        out.sort_by(|(ka, _), (kb, _)| ka.cmp(kb));
    }
    (out, count)
}

fn check_library_answer(reader: &AuditReader, events: &[Event], q: &StatsQuery, what: &str) -> Source {
    let stats = reader.request_stats(q).unwrap();
    let want = selected(events, &q.filter);
    Got::of_measures(&stats.totals, &q.metrics).check(&Expect::of(want.iter().copied()), &q.metrics, &format!("{what}: totals"));
    match q.group_by {
        None => assert!(stats.groups.is_empty()),
        Some(by) => {
            let (groups, count) = expected_groups(&want, by, q.top);
            assert_eq!(stats.group_count, count, "{what}: group count");
            let keys: Vec<&Option<String>> = stats.groups.iter().map(|g| &g.key).collect();
            let want_keys: Vec<&Option<String>> = groups.iter().map(|(k, _)| k).collect();
            assert_eq!(keys, want_keys, "{what}: groups");
            for (g, (key, expect)) in stats.groups.iter().zip(&groups) {
                Got::of_measures(&g.measures, &q.metrics).check(expect, &q.metrics, &format!("{what}: group {key:?}"));
            }
        }
    }
    stats.source
}

// ---------- the store: both paths equal the brute force ----------

#[test]
fn stats_equal_a_count_over_the_events_from_rollups_and_from_events() {
    let dir = tempfile::tempdir().unwrap();
    let day0 = 20_400 * DAY; // 2025-11-08
    let mut store = AuditWriterStore::open(dir.path()).unwrap();
    // Two and a half days; the rollups of the last batches are not written
    // yet, so those blocks are read past the watermark.
    let events = generate("acme", day0 + 13 * HOUR, day0 + 2 * DAY + 11 * HOUR, 3_000, 7);
    write(&mut store, &events, 400, 6);
    write(&mut store, &generate("other", day0, day0 + 2 * DAY, 300, 8), 300, 1);
    let events = read_back(dir.path(), "acme");
    let reader = AuditReader::open(dir.path()).unwrap();

    let windows = [
        ("whole day", day0 + DAY, day0 + 2 * DAY - 1),
        ("ragged, a whole day inside", day0 + 13 * HOUR + 90_001, day0 + 2 * DAY + 9 * HOUR + 1_234),
        ("inside one hour", day0 + DAY + 7 * HOUR + 60_000, day0 + DAY + 7 * HOUR + 1_800_000),
        ("whole hours", day0 + 20 * HOUR, day0 + DAY + 4 * HOUR - 1),
        ("everything", day0 - DAY, day0 + 4 * DAY),
        ("nothing", day0 + 5 * DAY, day0 + 6 * DAY),
    ];
    let rollup_metrics = Metrics { latency: true, rate_limited: false, distinct_consumers: true, distinct_ips: false };
    let counts = Metrics { latency: false, rate_limited: false, distinct_consumers: false, distinct_ips: false };
    let mut sources = BTreeMap::<&str, usize>::new();
    for (name, from, to) in windows {
        for consumer in [None, Some("cons_beta")] {
            let filter = EventFilter {
                tenant_id: "acme".into(),
                consumer_id: consumer.map(str::to_string),
                from_ms: Some(from),
                to_ms: Some(to),
                ..EventFilter::default()
            };
            for group_by in std::iter::once(None).chain(GroupBy::ALL.map(Some)) {
                for metrics in [Metrics::ALL, rollup_metrics, counts] {
                    for force_events in [false, true] {
                        let q = StatsQuery { filter: filter.clone(), group_by, top: if group_by.is_some_and(GroupBy::is_time) { 1000 } else { 4 }, metrics, force_events };
                        let what = format!("{name}, {consumer:?}, {group_by:?}, {metrics:?}, events {force_events}");
                        let source = check_library_answer(&reader, &events, &q, &what);
                        assert_eq!(source == Source::Rollups, q.rollups_answer(), "{what}");
                        *sources.entry(source.as_str()).or_default() += 1;
                    }
                }
            }
        }
    }
    assert!(sources["rollups"] > 50 && sources["events"] > 50, "{sources:?}");

    // Filters beyond the rollups', alone and combined.
    let window = (day0 + 13 * HOUR + 5, day0 + 2 * DAY + 10 * HOUR);
    let filters = [
        EventFilter { api_id: Some("orders".into()), ..EventFilter::default() },
        EventFilter { method: Some("GET".into()), status_min: Some(400), ..EventFilter::default() },
        EventFilter { path_prefix: Some("/orders/".into()), status_max: Some(499), ..EventFilter::default() },
        EventFilter { consumer_id: Some("cons_alpha".into()), api_id: Some("billing".into()), status_min: Some(429), status_max: Some(429), ..EventFilter::default() },
        EventFilter { consumer_id: Some("nobody".into()), ..EventFilter::default() },
    ];
    for f in filters {
        let filter = EventFilter { tenant_id: "acme".into(), from_ms: Some(window.0), to_ms: Some(window.1), ..f };
        for group_by in std::iter::once(None).chain(GroupBy::ALL.map(Some)) {
            let q = StatsQuery { filter: filter.clone(), group_by, top: 1000, metrics: Metrics::ALL, force_events: false };
            let source = check_library_answer(&reader, &events, &q, &format!("{filter:?} by {group_by:?}"));
            assert_eq!(source, Source::Events, "these filters need the events");
        }
    }
    drop(store);
}

// ---------- the API ----------

fn bad(a: &crate::util::Answer, param: &str) {
    assert_eq!(a.status, 400, "{param}: {}", a.text);
    assert_eq!(a.body["error"]["code"], "invalid_parameter", "{}", a.text);
    assert!(a.body["error"]["message"].as_str().unwrap().contains(&format!("`{param}`")), "{param}: {}", a.text);
}

fn ms_of(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap().timestamp_millis()
}

/// Checks one `/stats` answer against the events.
fn check_stats_answer(a: &crate::util::Answer, events: &[Event], filter: &EventFilter, what: &str) {
    assert_eq!(a.status, 200, "{what}: {}", a.text);
    let body = &a.body;
    let filter = EventFilter { from_ms: Some(ms_of(&body["from"])), to_ms: Some(ms_of(&body["to"])), ..filter.clone() };
    let metrics = {
        let t = &body["totals"];
        Metrics {
            latency: t.get("latency_ms").is_some(),
            rate_limited: t.get("rate_limited").is_some(),
            distinct_consumers: t.get("distinct_consumers").is_some(),
            distinct_ips: t.get("distinct_ips").is_some(),
        }
    };
    if metrics.latency {
        assert_eq!(body["latency_error_bound"], json!(0.01), "{what}");
    }
    let want = selected(events, &filter);
    assert!(!want.is_empty() || what.contains("empty"), "{what}: a check of nothing");
    Got::of_json(&body["totals"]).check(&Expect::of(want.iter().copied()), &metrics, &format!("{what}: totals"));
    if let Some(by) = body["group_by"].as_str() {
        let by = GroupBy::parse(by).unwrap();
        let groups = body["groups"].as_array().unwrap();
        let (want_groups, count) = expected_groups(&want, by, groups.len().max(1));
        assert_eq!(body["group_count"].as_u64().unwrap() as usize, count, "{what}: group count");
        assert_eq!(groups.len(), want_groups.len(), "{what}");
        for (g, (key, expect)) in groups.iter().zip(&want_groups) {
            assert_eq!(g["key"].as_str(), key.as_deref(), "{what}: group order");
            Got::of_json(g).check(expect, &metrics, &format!("{what}: group {key:?}"));
        }
    }
}

/// A server whose tenant `acme` holds ~2,000 calls written straight into
/// the store over the last two days and a bit, plus live calls through the
/// gateway (successes, upstream errors, unknown keys, rate-limited calls).
struct Scene {
    ts: TestServer,
    owner: Admin,
    now: i64,
    consumer: String,
}

async fn scene() -> Scene {
    let dir = tempfile::tempdir().unwrap();
    let now = now_ms();
    let today = now.div_euclid(DAY) * DAY;
    {
        let mut store = AuditWriterStore::open(&dir.path().join("audit")).unwrap();
        write(&mut store, &generate("acme", today - 2 * DAY + 14 * HOUR, now - 120_000, 2_000, 11), 250, 5);
        write(&mut store, &generate("other", today - DAY, now - 120_000, 200, 12), 200, 1);
    }
    let ts = TestServer::start_with(dir, |_| {}).await;
    let owner = ts.admin_client();
    let up = format!("http://{}", start_upstream().await);
    let (consumer, _, key) = owner.setup("acme", "/live", &up).await;
    assert_eq!(owner.post("/v1/tenants", json!({"id": "other", "name": "Other"})).await.status, 201);
    let a = owner.post("/v1/tenants/acme/tiers", json!({"id": "tight", "rate_limit": {"requests_per_minute": 60, "burst": 8}})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let a = owner.call("PUT", &format!("/v1/tenants/acme/consumers/{consumer}/tier"), Some(json!({"tier": "tight"}))).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let client = &ts.client;
    let mut statuses = BTreeMap::<u16, u64>::new();
    for path in ["/live/a", "/live/status/404", "/live/status/503", "/live/b", "/live/a", "/live/status/500", "/live/c", "/live/a", "/live/a", "/live/a", "/live/a", "/live/a"] {
        let res = client.get(format!("{}{path}", ts.gateway)).bearer_auth(&key).send().await.unwrap();
        *statuses.entry(res.status().as_u16()).or_default() += 1;
    }
    let res = client.post(format!("{}/live/a", ts.gateway)).bearer_auth("kt_live_nope").send().await.unwrap();
    *statuses.entry(res.status().as_u16()).or_default() += 1;
    assert!(statuses.get(&429).is_some_and(|n| *n >= 2) && statuses.contains_key(&401) && statuses.contains_key(&503), "{statuses:?}");
    ts.flush().await;
    Scene { ts, owner, now, consumer }
}

#[tokio::test]
async fn stats_api_answers_equal_a_count_over_the_same_events() {
    let Scene { ts, owner, now, consumer: live_consumer } = scene().await;
    let events = read_back(&ts.audit_dir(), "acme");
    assert!(events.len() > 2_000 && events.iter().any(|e| e.consumer_id.as_deref() == Some(live_consumer.as_str())));
    let today = now.div_euclid(DAY) * DAY;
    let t = |ms: i64| format_timestamp(ms);
    let ragged = format!("from={}&to={}", t(today - 2 * DAY + 15 * HOUR + 1_234), t(now - 5 * 60_000));
    let base = EventFilter { tenant_id: "acme".into(), ..EventFilter::default() };

    // Every grouping, every measure, over a window holding a whole day.
    for by in ["", "consumer", "api", "path", "method", "status_class", "hour", "day"] {
        let a = owner.get(&format!("/v1/audit/acme/stats?{ragged}&group_by={by}&top=1000")).await;
        check_stats_answer(&a, &events, &base, &format!("by {by:?}"));
        assert_eq!(a.body["source"], "events", "rate_limited and distinct_ips need the events");
        assert_eq!(a.body["group_by"].as_str().unwrap_or(""), by);
    }
    // The default window is the last 24 hours; `hours` and `days` are relative to now.
    for (query, span) in [("", DAY), ("hours=6&group_by=hour", 6 * HOUR), ("days=2&group_by=day", 2 * DAY)] {
        let a = owner.get(&format!("/v1/audit/acme/stats?{query}")).await;
        check_stats_answer(&a, &events, &base, query);
        let (from, to) = (ms_of(&a.body["from"]), ms_of(&a.body["to"]));
        assert!((to - from - span).abs() <= 5 && to >= now, "{query}: {}", a.text);
    }
    // What the rollups hold comes from them: the same numbers as the events give.
    for (query, consumer) in [
        ("metrics=latency,distinct_consumers&group_by=consumer", None),
        ("metrics=latency&group_by=day", None),
        ("metrics=&group_by=hour", None),
        ("metrics=distinct_consumers", Some("cons_beta")),
        ("metrics=latency&group_by=day", Some("cons_alpha")),
    ] {
        let filter = EventFilter { consumer_id: consumer.map(str::to_string), ..base.clone() };
        let c = consumer.map(|c| format!("&consumer_id={c}")).unwrap_or_default();
        let a = owner.get(&format!("/v1/audit/acme/stats?{ragged}&{query}{c}&top=1000")).await;
        check_stats_answer(&a, &events, &filter, query);
        assert_eq!(a.body["source"], "rollups", "{query}");
        let b = owner.get(&format!("/v1/audit/acme/stats?{ragged}&{query}{c}&top=1000&source=events")).await;
        assert_eq!(b.body["source"], "events");
        let strip = |mut v: Value| {
            v.as_object_mut().unwrap().remove("source");
            v
        };
        assert_eq!(strip(a.body.clone()), strip(b.body.clone()), "{query}: rollups and events differ");
    }
    // Filters combined.
    let combos: [(&str, EventFilter); 5] = [
        ("consumer_id=cons_alpha&method=get&status_min=400", EventFilter { consumer_id: Some("cons_alpha".into()), method: Some("GET".into()), status_min: Some(400), ..base.clone() }),
        ("api_id=orders&path=/orders/&status_max=499", EventFilter { api_id: Some("orders".into()), path_prefix: Some("/orders/".into()), status_max: Some(499), ..base.clone() }),
        ("path=/billing&status_min=429&status_max=429", EventFilter { path_prefix: Some("/billing".into()), status_min: Some(429), status_max: Some(429), ..base.clone() }),
        ("api_id=search&consumer_id=cons_beta", EventFilter { api_id: Some("search".into()), consumer_id: Some("cons_beta".into()), ..base.clone() }),
        ("method=DELETE&status_min=500", EventFilter { method: Some("DELETE".into()), status_min: Some(500), ..base.clone() }),
    ];
    for (query, filter) in &combos {
        for by in ["consumer", "path", "status_class", "hour"] {
            let a = owner.get(&format!("/v1/audit/acme/stats?{ragged}&{query}&group_by={by}")).await;
            check_stats_answer(&a, &events, filter, &format!("{query} by {by}"));
        }
    }
    // The live calls through the gateway are in the default window.
    let live = owner.get(&format!("/v1/audit/acme/stats?consumer_id={live_consumer}&group_by=status_class")).await;
    check_stats_answer(&live, &events, &EventFilter { consumer_id: Some(live_consumer.clone()), ..base.clone() }, "live calls");
    assert!(live.body["totals"]["rate_limited"].as_u64().unwrap() >= 2, "{}", live.text);
    // `top` cuts, `group_count` says how many there were.
    let a = owner.get(&format!("/v1/audit/acme/stats?{ragged}&group_by=path&top=3")).await;
    assert_eq!(a.body["groups"].as_array().unwrap().len(), 3);
    assert!(a.body["group_count"].as_u64().unwrap() > 3);
    check_stats_answer(&a, &events, &base, "top 3 paths");
    // The last 24 hours hold the ten paths written and the live ones.
    let a = owner.get("/v1/audit/acme/stats?group_by=path").await;
    assert_eq!(a.body["groups"].as_array().unwrap().len(), 10, "the default top is 10: {}", a.text);
    assert!(a.body["group_count"].as_u64().unwrap() > 10, "{}", a.text);
    let a = owner.get(&format!("/v1/audit/acme/stats?{ragged}&group_by=consumer")).await;
    assert_eq!(a.body["group_count"], 7, "six consumers and calls without one: {}", a.text);
    // An empty window answers zeros, not an error.
    let a = owner.get("/v1/audit/acme/stats?from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z&group_by=path").await;
    check_stats_answer(&a, &events, &base, "empty window");
    assert_eq!((a.body["totals"]["calls"].as_u64(), a.body["totals"]["latency_ms"]["p99"].clone()), (Some(0), Value::Null));

    // The consumer profile, by default over 14 days.
    for (query, span) in [(ragged.clone(), None), (String::new(), Some(14 * DAY)), ("hours=30&top=2".to_string(), Some(30 * HOUR))] {
        let a = owner.get(&format!("/v1/audit/acme/stats/consumers/cons_beta?{query}")).await;
        assert_eq!(a.status, 200, "{}", a.text);
        let p = &a.body;
        let (from, to) = (ms_of(&p["from"]), ms_of(&p["to"]));
        if let Some(span) = span {
            assert_eq!(to - from, span, "{query}");
        }
        let mine: Vec<&Event> = selected(&events, &EventFilter { consumer_id: Some("cons_beta".into()), from_ms: Some(from), to_ms: Some(to), ..base.clone() });
        let x = Expect::of(mine.iter().copied());
        assert_eq!((p["calls"].as_u64(), p["errors"].as_u64(), p["server_errors"].as_u64()), (Some(x.calls), Some(x.client_errors + x.server_errors), Some(x.server_errors)), "{query}");
        let mut methods = BTreeMap::<String, u64>::new();
        let mut paths = BTreeMap::<String, (u64, u64)>::new();
        let mut hours = [0u64; 24];
        for e in &mine {
            let m = e.method.as_deref().map(String::from).filter(|m| ["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&m.as_str())).unwrap_or_else(|| "other".into());
            *methods.entry(m).or_default() += 1;
            let p = paths.entry(e.path.clone().unwrap_or_default()).or_default();
            p.0 += 1;
            p.1 += u64::from(e.status_code.unwrap_or(0) >= 400);
            hours[(e.timestamp_ms.rem_euclid(DAY) / HOUR) as usize] += 1;
        }
        let got: BTreeMap<String, u64> = p["methods"].as_array().unwrap().iter().map(|m| (m["method"].as_str().unwrap().to_string(), m["calls"].as_u64().unwrap())).collect();
        assert_eq!(got, methods, "{query}: methods");
        let top = if query.contains("top=2") { 2 } else { 10 };
        let mut want_paths: Vec<(String, (u64, u64))> = paths.into_iter().collect();
        want_paths.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(&b.0)));
        want_paths.truncate(top);
        let got: Vec<(String, (u64, u64))> = p["top_paths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| (x["path"].as_str().unwrap().to_string(), (x["calls"].as_u64().unwrap(), x["errors"].as_u64().unwrap())))
            .collect();
        assert_eq!(got, want_paths, "{query}: top paths");
        assert_eq!(p["calls_by_hour_of_day"], json!(hours), "{query}");
        let busiest = (0..24).max_by_key(|h| (hours[*h], 24 - h)).unwrap();
        assert_eq!(p["busiest_hour"], json!({"hour": busiest, "calls": hours[busiest]}), "{query}");
        let mean = x.latencies.iter().sum::<u64>() as f64 / x.calls as f64 / 1000.0;
        assert!((p["latency_ms"]["avg"].as_f64().unwrap() - mean).abs() < 1e-9, "{query}");
    }
    // The tenant's consumer without calls in the window answers zeros; one never seen is not found.
    let quiet = owner.get(&format!("/v1/audit/acme/stats/consumers/{live_consumer}?from={}&to={}", t(today - 10 * DAY), t(today - 9 * DAY))).await;
    assert_eq!((quiet.status, quiet.body["calls"].as_u64(), &quiet.body["busiest_hour"]), (200, Some(0), &Value::Null), "{}", quiet.text);
    let nobody = owner.get("/v1/audit/acme/stats/consumers/cons_nobody").await;
    assert_eq!((nobody.status, nobody.body["error"]["code"].as_str()), (404, Some("consumer_not_found")), "{}", nobody.text);

    // The timeline: calls, errors and distinct consumers by path; by default the last hour.
    for (query, span) in [(ragged.clone(), None), (String::new(), Some(HOUR)), ("hours=20".to_string(), Some(20 * HOUR))] {
        let a = owner.get(&format!("/v1/audit/acme/stats/timeline?{query}&top=1000")).await;
        assert_eq!(a.status, 200, "{}", a.text);
        let (from, to) = (ms_of(&a.body["from"]), ms_of(&a.body["to"]));
        if let Some(span) = span {
            assert_eq!(to - from, span, "{query}");
        }
        let mut want = BTreeMap::<Option<String>, (u64, u64, BTreeSet<String>)>::new();
        for e in selected(&events, &EventFilter { from_ms: Some(from), to_ms: Some(to), ..base.clone() }) {
            let w = want.entry(e.path.clone()).or_default();
            w.0 += 1;
            w.1 += u64::from(e.status_code.unwrap_or(0) >= 400);
            w.2.extend(e.consumer_id.as_deref().map(String::from));
        }
        let got: BTreeMap<Option<String>, (u64, u64, usize)> = a.body["paths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["path"].as_str().map(str::to_string), (p["calls"].as_u64().unwrap(), p["errors"].as_u64().unwrap(), p["distinct_consumers"].as_u64().unwrap() as usize)))
            .collect();
        let want: BTreeMap<Option<String>, (u64, u64, usize)> = want.into_iter().map(|(k, (c, e, s))| (k, (c, e, s.len()))).collect();
        assert_eq!(got, want, "timeline {query}");
        assert_eq!(a.body["path_count"].as_u64().unwrap() as usize, want.len());
        assert_eq!(a.body["calls"].as_u64().unwrap(), want.values().map(|w| w.0).sum::<u64>());
    }
    let a = owner.get(&format!("/v1/audit/acme/stats/timeline?{ragged}")).await;
    let calls: Vec<u64> = a.body["paths"].as_array().unwrap().iter().map(|p| p["calls"].as_u64().unwrap()).collect();
    assert!(calls.len() == 10 && calls.windows(2).all(|w| w[0] >= w[1]), "the top 10 paths, busiest first: {calls:?}");

    // Every read is itself recorded.
    ts.flush().await;
    let log = owner.get("/v1/audit/acme/security?event_type=log_accessed&limit=1000").await;
    let targets: BTreeSet<&str> = log.body["events"].as_array().unwrap().iter().filter_map(|e| e["target"].as_str()).collect();
    for endpoint in ["stats", "stats/consumers", "stats/timeline"] {
        assert!(targets.contains(endpoint), "{endpoint} not in {targets:?}");
    }
    let one = log.body["events"].as_array().unwrap().iter().find(|e| e["target"] == "stats/consumers").unwrap();
    assert!(one["details"]["filters"].is_object() && one["details"]["rows"] == 1, "{one}");
}

#[tokio::test]
async fn bad_parameters_roles_and_tenants() {
    let ts = TestServer::start().await;
    let owner = ts.admin_client();
    let up = format!("http://{}", start_upstream().await);
    let (consumer, _, _) = owner.setup("acme", "/acme", &up).await;
    owner.setup("other", "/other", &up).await;
    for (query, param) in [
        ("group_by=country", "group_by"),
        ("top=0", "top"),
        ("top=1001", "top"),
        ("top=ten", "top"),
        ("metrics=latency,p99", "metrics"),
        ("source=cache", "source"),
        ("status_min=abc", "status_min"),
        ("status_min=500&status_max=400", "status_min"),
        ("from=yesterday", "from"),
        ("to=2026-13-01T00:00:00Z", "to"),
        ("hours=1&days=1", "days"),
        ("hours=0", "hours"),
        ("path=orders", "path"),
        ("method=G%20T", "method"),
        ("cursor=1.2", "cursor"),
        ("from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", "from"),
    ] {
        bad(&owner.get(&format!("/v1/audit/acme/stats?{query}")).await, param);
    }
    for (path, param) in [
        ("/v1/audit/acme/stats/timeline?path=/x", "path"),
        ("/v1/audit/acme/stats/timeline?top=0", "top"),
        ("/v1/audit/acme/stats/timeline?hours=x", "hours"),
        ("/v1/audit/acme/stats/consumers/c1?consumer_id=c2", "consumer_id"),
        ("/v1/audit/acme/stats/consumers/c1?status_min=500", "status_min"),
        ("/v1/audit/acme/stats/consumers/c1?days=0", "days"),
        ("/v1/audit/acme/stats/consumers/%01?days=1", "consumer"),
    ] {
        bad(&owner.get(path).await, param);
    }
    // A `from` in the future with no `to`: the window ends now, and the
    // message says so rather than blame a `to` that was never given.
    let a = owner.get("/v1/audit/acme/stats?from=2999-01-01T00:00:00Z").await;
    bad(&a, "from");
    let message = a.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("future") && !message.contains("after `to`"), "{message}");
    // Unknown parameters are ignored, as on the list (`limit` is not
    // unknown: /stats refuses it, see stats_refuses_parameters_it_does_not_honour).
    assert_eq!(owner.get("/v1/audit/acme/stats?whatever=1").await.status, 200);
    assert_eq!(owner.get("/v1/audit/nope/stats").await.status, 404);

    // A viewer reads aggregates, never raw events; a tenant-bound one only its tenant's.
    let a = owner.post("/v1/admins", json!({"name": "watcher", "role": "viewer", "tenant_id": "acme"})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let viewer = Admin { token: a.body["token"].as_str().unwrap().to_string(), ..owner.clone() };
    for path in ["/v1/audit/acme/stats?group_by=consumer".to_string(), "/v1/audit/acme/stats/timeline".into(), format!("/v1/audit/acme/stats/consumers/{consumer}")] {
        let a = viewer.get(&path).await;
        assert_eq!(a.status, 200, "{path}: {}", a.text);
    }
    for path in ["/v1/audit/acme", "/v1/audit/acme/security", "/v1/audit/acme/export/csv"] {
        let a = viewer.get(path).await;
        assert_eq!((a.status, a.body["error"]["code"].as_str()), (403, Some("forbidden")), "{path}: {}", a.text);
    }
    for path in ["/v1/audit/other/stats", "/v1/audit/other/stats/timeline", "/v1/audit/other/stats/consumers/c1", "/v1/audit/_system/stats"] {
        let a = viewer.get(path).await;
        assert_eq!((a.status, a.body["error"]["code"].as_str()), (404, Some("not_found")), "{path}: {}", a.text);
    }
    let anonymous = Admin { token: "nope".into(), ..owner.clone() };
    assert_eq!(anonymous.get("/v1/audit/acme/stats").await.status, 401);
}

/// A consumer that is neither in the control store nor in any event of the
/// window (a typo, an id from another tenant) is `404 consumer_not_found`,
/// not an all-zero profile; one the store knows without calls, and one it
/// no longer has whose events are in the window, are answered as before.
/// `investigate --consumer` says which consumer was not found and fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_never_seen_is_not_found_and_investigate_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_ms();
    {
        // History of consumers the control store does not hold (gone from
        // it, or from before it): one with a call, one with only a
        // security event.
        let mut store = AuditWriterStore::open(&dir.path().join("audit")).unwrap();
        let mut call = Event::new("acme", Category::Request, "api_call", "success");
        call.timestamp_ms = now - 2 * HOUR;
        call.consumer_id = Some(Text::from("cons_gone"));
        call.method = Some("GET".into());
        call.path = Some("/live/a".into());
        call.status_code = Some(200);
        let mut security = Event::new("acme", Category::Security, "rate_limit_exceeded", "failure");
        security.timestamp_ms = now - HOUR;
        security.consumer_id = Some(Text::from("cons_ghost"));
        security.status_code = Some(429);
        store.insert_batch(&mut vec![call, security]).unwrap();
        store.flush_rollups().unwrap();
    }
    let ts = TestServer::start_with(dir, |_| {}).await;
    let owner = ts.admin_client();
    let up = format!("http://{}", start_upstream().await);
    let (known, _, key) = owner.setup("acme", "/live", &up).await;
    let quiet = owner.post("/v1/tenants/acme/consumers", json!({"name": "quiet"})).await.body["id"].as_str().unwrap().to_string();
    assert_eq!(owner.post("/v1/tenants", json!({"id": "other", "name": "Other"})).await.status, 201);
    let (elsewhere, _, _) = owner.consumer_with_key("other", "elsewhere", json!({})).await;
    for _ in 0..3 {
        assert_eq!(ts.client.get(format!("{}/live/a", ts.gateway)).bearer_auth(&key).send().await.unwrap().status(), 200);
    }
    ts.flush().await;

    let old = "from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z";
    for (consumer, query, calls) in [(known.as_str(), "", 3), (quiet.as_str(), "", 0), (quiet.as_str(), old, 0), ("cons_gone", "", 1), ("cons_ghost", "", 0)] {
        let a = owner.get(&format!("/v1/audit/acme/stats/consumers/{consumer}?{query}")).await;
        assert_eq!((a.status, a.body["calls"].as_u64()), (200, Some(calls)), "{consumer} {query}: {}", a.text);
    }
    for (consumer, query) in [("cons_never", ""), ("cons_gone", old), (elsewhere.as_str(), "")] {
        let a = owner.get(&format!("/v1/audit/acme/stats/consumers/{consumer}?{query}")).await;
        assert_eq!((a.status, a.body["error"]["code"].as_str()), (404, Some("consumer_not_found")), "{consumer} {query}: {}", a.text);
        assert!(a.body["error"]["message"].as_str().unwrap().contains(consumer), "{}", a.text);
    }

    let url = ts.admin.as_str();
    let token = [("KEYTRAIL_TOKEN", ADMIN_TOKEN)];
    for json in [false, true] {
        let mut args = vec!["investigate", "--admin-url", url, "--tenant", "acme", "--consumer", "cons_never"];
        if json {
            args.push("--json");
        }
        let (ok, out, err) = run_cli(&args, &token).await;
        assert!(!ok, "json {json}: exit 0 for a consumer that never existed:\n{out}{err}");
        assert!(out.is_empty(), "json {json}: no profile is printed:\n{out}");
        assert!(err.contains("consumer `cons_never` not found in tenant `acme`") && err.contains("consumer_not_found"), "json {json}: {err}");
    }
    let (ok, out, err) = run_cli(&["investigate", "--admin-url", url, "--tenant", "acme", "--consumer", "cons_gone", "--json"], &token).await;
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["profile"]["calls"], 1, "{out}");
}

// ---------- the commands ----------

/// Runs the real binary to its end: (success, stdout, stderr).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn investigate_and_the_weekly_report_from_the_command_line() {
    let Scene { ts, owner, consumer, .. } = scene().await;
    // Some admin work this week: a key rotated, a consumer suspended.
    let (_, key_id, _) = owner.consumer_with_key("acme", "rotating-client", json!({})).await;
    assert_eq!(owner.post(&format!("/v1/keys/{key_id}/rotate"), json!({"grace_seconds": 60})).await.status, 201);
    let suspended = owner.post("/v1/tenants/acme/consumers", json!({"name": "to-suspend"})).await.body["id"].as_str().unwrap().to_string();
    assert_eq!(owner.post(&format!("/v1/tenants/acme/consumers/{suspended}/suspend"), json!({})).await.status, 200);
    ts.flush().await;
    let url = ts.admin.as_str();
    let token = [("KEYTRAIL_TOKEN", ADMIN_TOKEN)];

    // investigate --json: the same numbers the API gives for its window.
    let (ok, out, err) = run_cli(&["investigate", "--admin-url", url, "--tenant", "acme", "--json"], &token).await;
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let window = format!("from={}&to={}", report["from"].as_str().unwrap(), report["to"].as_str().unwrap()).replace('+', "%2B");
    let api = owner.get(&format!("/v1/audit/acme/stats?{window}")).await;
    assert_eq!(report["totals"], api.body["totals"], "{out}");
    assert_eq!(report["hours"], 24);
    let hourly: u64 = report["by_period"]["groups"].as_array().unwrap().iter().map(|g| g["calls"].as_u64().unwrap()).sum();
    assert_eq!(hourly, api.body["totals"]["calls"].as_u64().unwrap());
    assert!(report["top_consumers"].as_array().unwrap().len() >= 5, "{out}");
    assert!(report["top_paths"].as_array().unwrap().len() == 10, "{out}");
    let security = owner.get(&format!("/v1/audit/acme/security?{window}&limit=10000")).await;
    let mut by_type = BTreeMap::<String, u64>::new();
    for e in security.body["events"].as_array().unwrap() {
        *by_type.entry(e["event_type"].as_str().unwrap().to_string()).or_default() += 1;
    }
    for t in ["auth_failed", "rate_limit_exceeded", "key_rotated", "consumer_suspended"] {
        assert!(by_type.contains_key(t), "{t} in {by_type:?}");
        assert_eq!(report["security_events"]["by_type"][t].as_u64(), by_type.get(t).copied(), "{t}");
    }

    // investigate --consumer, human: the triage and that consumer's profile.
    let (ok, out, err) = run_cli(&["investigate", "--admin-url", url, "--tenant", "acme", "--consumer", "cons_alpha", "--hours", "72"], &token).await;
    assert!(ok, "{err}");
    for needle in ["Incident triage: tenant acme, consumer cons_alpha, last 72 h", "Traffic", "rate-limited (429)", "Errors by day", "Top paths", "Security events", "Consumer cons_alpha", "busiest hour", "method"] {
        assert!(out.contains(needle), "{needle:?} missing:\n{out}");
    }
    assert!(!out.contains("Top consumers"), "one consumer's triage has no top consumers:\n{out}");
    let (ok, out, _) = run_cli(&["investigate", "--tenant", "acme", "--consumer", &consumer, "--json"], &[("KEYTRAIL_TOKEN", ADMIN_TOKEN), ("KEYTRAIL_ADMIN_URL", url)]).await;
    assert!(ok, "KEYTRAIL_ADMIN_URL is used");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert!(report["profile"]["calls"].as_u64().unwrap() >= 10 && report["top_consumers"].is_null(), "{out}");
    assert!(report["security_events"]["by_type"]["rate_limit_exceeded"].as_u64().unwrap() >= 2, "{out}");

    // report weekly --json: counts from the security and admin logs, the daily trend.
    let (ok, out, err) = run_cli(&["report", "weekly", "--admin-url", url, "--tenant", "acme", "--json"], &token).await;
    assert!(ok, "{err}");
    let weekly: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(weekly["key_rotations"], 1, "{out}");
    assert!(weekly["auth_failures"]["total"].as_u64().unwrap() >= 40, "{out}");
    assert!(weekly["rate_limit_hits"].as_u64().unwrap() >= 40, "{out}");
    for action in ["KEY_ROTATED", "CONSUMER_SUSPENDED", "KEY_CREATED", "CONSUMER_CREATED", "API_CREATED"] {
        assert!(weekly["admin_actions"]["by_action"][action].as_u64().unwrap() >= 1, "{action}: {out}");
    }
    let days = weekly["daily"].as_array().unwrap();
    assert_eq!(days.len(), 7);
    assert_eq!(days.iter().map(|d| d["calls"].as_u64().unwrap()).sum::<u64>(), weekly["calls"].as_u64().unwrap());
    assert!(days[..4].iter().all(|d| d["calls"] == 0) && days[6]["calls"].as_u64().unwrap() > 0, "{out}");
    let window = format!("from={}&to={}", weekly["from"].as_str().unwrap(), weekly["to"].as_str().unwrap());
    assert_eq!(weekly["calls"], owner.get(&format!("/v1/audit/acme/stats?{window}")).await.body["totals"]["calls"]);
    let (ok, out, err) = run_cli(&["report", "weekly", "--admin-url", url, "--tenant", "acme"], &token).await;
    assert!(ok, "{err}");
    for needle in ["Weekly report: tenant acme", "auth failures", "rate-limit hits", "key rotations", "KEY_ROTATED", "Daily error trend"] {
        assert!(out.contains(needle), "{needle:?} missing:\n{out}");
    }

    // Failures: a clear message, a non-zero exit, never the token.
    let (ok, _, err) = run_cli(&["investigate", "--admin-url", url, "--tenant", "acme"], &[("KEYTRAIL_TOKEN", "")]).await;
    assert!(!ok && err.contains("KEYTRAIL_TOKEN is not set"), "{err}");
    let dead = format!("http://{}", closed_port().await);
    let (ok, _, err) = run_cli(&["report", "weekly", "--admin-url", &dead, "--tenant", "acme"], &token).await;
    assert!(!ok && err.contains("cannot reach the admin API") && err.contains(&dead), "{err}");
    let wrong = "kta_wrongwrongwrongwrongwrongwrongwrong";
    let (ok, out, err) = run_cli(&["investigate", "--admin-url", url, "--tenant", "acme"], &[("KEYTRAIL_TOKEN", wrong)]).await;
    assert!(!ok && err.contains("401") && err.contains("check KEYTRAIL_TOKEN"), "{err}");
    assert!(!err.contains(wrong) && !out.contains(wrong) && !err.contains(ADMIN_TOKEN), "{err}");
    let (ok, _, err) = run_cli(&["investigate", "--admin-url", url, "--tenant", "nope"], &token).await;
    assert!(!ok && err.contains("404") && err.contains("nope"), "{err}");
    let a = owner.post("/v1/admins", json!({"name": "peek", "role": "viewer", "tenant_id": "acme"})).await;
    let viewer = a.body["token"].as_str().unwrap().to_string();
    let (ok, _, err) = run_cli(&["investigate", "--admin-url", url], &[("KEYTRAIL_TOKEN", &viewer)]).await;
    assert!(!ok && err.contains("403") && err.contains("forbidden") && !err.contains(&viewer), "a viewer may not read security events: {err}");
    let (ok, _, err) = run_cli(&["report", "weekly", "--admin-url", url], &token).await;
    assert!(!ok && err.contains("give --tenant") && err.contains("acme") && err.contains("other"), "{err}");
    let (ok, _, err) = run_cli(&["investigate", "--admin-url", "https://127.0.0.1:1"], &token).await;
    assert!(!ok && err.contains("https"), "{err}");
}

/// A rollup write that lands between a query's read of the rollup rows and
/// its read of the blocks past the watermark loses nothing: each day file
/// is read from one snapshot. (Without it, a batch committed before the
/// query went missing from its answer within a second or so.)
#[test]
fn statistics_read_each_day_file_from_one_snapshot() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let day0 = 20_400 * DAY;
    let path = dir.path().to_path_buf();
    let committed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (counted, stopping, at) = (committed.clone(), stop.clone(), path.clone());
    let writer = std::thread::spawn(move || {
        let mut store = AuditWriterStore::open(&at).unwrap();
        let mut n = 0u64;
        while !stopping.load(Ordering::Relaxed) {
            let mut batch: Vec<Event> = (0..20)
                .map(|i| {
                    let mut e = Event::new("acme", Category::Request, "api_call", "success");
                    e.timestamp_ms = day0 + HOUR + ((n * 20 + i) % 3_000_000) as i64;
                    e.consumer_id = Some("cons_alpha".into());
                    e.status_code = Some(200);
                    e.latency_us = Some(100);
                    e
                })
                .collect();
            store.insert_batch(&mut batch).unwrap();
            n += 1;
            counted.store(n * 20, Ordering::SeqCst);
            store.flush_rollups().unwrap();
        }
    });
    while committed.load(Ordering::SeqCst) == 0 {
        std::thread::yield_now();
    }
    let metrics = Metrics { latency: false, rate_limited: false, distinct_consumers: false, distinct_ips: false };
    let started = std::time::Instant::now();
    let mut lost = Vec::new();
    while started.elapsed() < std::time::Duration::from_secs(3) && lost.is_empty() {
        let before = committed.load(Ordering::SeqCst);
        let reader = AuditReader::open(&path).unwrap();
        let q = StatsQuery {
            filter: EventFilter { tenant_id: "acme".into(), from_ms: Some(day0), to_ms: Some(day0 + 4 * HOUR - 1), ..EventFilter::default() },
            group_by: None,
            top: 10,
            metrics,
            force_events: false,
        };
        let got = reader.request_stats(&q).unwrap().totals.calls;
        if got < before {
            lost.push((before, got));
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(lost.is_empty(), "calls committed before the query were not counted: {lost:?}");
}

// ---------- review: live calls with unusual values, against the list ----------

/// Calls with unusual methods and paths through the gateway, a consumer
/// without calls, then every grouping of `/stats` against a count of the
/// events the list gives, and each group's key used back as a filter.
#[tokio::test]
async fn stats_of_unusual_methods_and_paths_equal_the_listed_events() {
    let ts = TestServer::start().await;
    let owner = ts.admin_client();
    let up = format!("http://{}", start_upstream().await);
    let (_, _, key) = owner.setup("acme", "/odd", &up).await;
    let (idle, _, _) = owner.consumer_with_key("acme", "idle-client", json!({})).await;
    let client = &ts.client;
    let calls: [(&str, &str); 9] = [
        ("GET", "/odd/a"),
        ("get", "/odd/a"),
        ("M-SEARCH", "/odd/b"),
        ("PROPFIND", "/odd/%22q%22"),
        ("GET", "/odd/%C3%BC/x"),
        ("GET", "/odd/a%20b?x=1&y=%26"),
        ("POST", "/odd/status/500"),
        ("DELETE", "/odd/status/404"),
        ("M-SEARCH", "/odd/b"),
    ];
    for (method, path) in calls {
        let res = client.request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), format!("{}{path}", ts.gateway)).bearer_auth(&key).send().await.unwrap();
        let _ = res.text().await;
    }
    ts.flush().await;
    let listed = owner.all_logs("/v1/audit/acme?limit=1000").await;
    assert_eq!(listed.len(), calls.len(), "{listed:?}");
    let count = |field: &str, value: &Value| listed.iter().filter(|e| &e[field] == value).count() as u64;
    for (by, field) in [("consumer", "consumer_id"), ("api", "api_id"), ("path", "path"), ("method", "method")] {
        let a = owner.get(&format!("/v1/audit/acme/stats?group_by={by}&top=1000")).await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(a.body["totals"]["calls"].as_u64(), Some(calls.len() as u64), "{by}: {}", a.text);
        let groups = a.body["groups"].as_array().unwrap();
        let keys: BTreeSet<String> = listed.iter().map(|e| e[field].to_string()).collect();
        assert_eq!(groups.len(), keys.len(), "{by}: {}", a.text);
        for g in groups {
            assert_eq!(g["calls"].as_u64().unwrap(), count(field, &g["key"]), "{by} {}: {}", g["key"], a.text);
        }
    }
    // A method the trail holds, asked for as it is recorded (the filter is
    // taken in capitals, so `get` asks for GET).
    let methods = owner.get("/v1/audit/acme/stats?group_by=method&top=1000").await;
    for g in methods.body["groups"].as_array().unwrap() {
        let m = g["key"].as_str().unwrap();
        if m != m.to_ascii_uppercase() {
            continue;
        }
        let a = owner.get(&format!("/v1/audit/acme/stats?method={m}")).await;
        assert_eq!(a.status, 200, "method={m}: {}", a.text);
        assert_eq!(a.body["totals"]["calls"], g["calls"], "method={m}: {}", a.text);
        let l = owner.get(&format!("/v1/audit/acme?method={m}")).await;
        assert_eq!(l.body["logs"].as_array().unwrap().len() as u64, g["calls"].as_u64().unwrap(), "list method={m}: {}", l.text);
    }
    // A consumer without calls: zeros from the rollups and from the events, and in its profile.
    for query in ["metrics=latency,distinct_consumers", "metrics=latency,distinct_consumers&group_by=hour", "group_by=consumer", "metrics=distinct_consumers&group_by=day", ""] {
        let a = owner.get(&format!("/v1/audit/acme/stats?consumer_id={idle}&{query}")).await;
        assert_eq!(a.status, 200, "{query}: {}", a.text);
        let t = &a.body["totals"];
        assert_eq!((t["calls"].as_u64(), t["errors"].as_u64(), t["error_rate"].as_f64()), (Some(0), Some(0), Some(0.0)), "{query}: {}", a.text);
        if let Some(groups) = a.body["groups"].as_array() {
            assert!(groups.is_empty() && a.body["group_count"] == 0, "{query}: {}", a.text);
        }
    }
    let p = owner.get(&format!("/v1/audit/acme/stats/consumers/{idle}")).await;
    assert_eq!((p.status, p.body["calls"].as_u64(), &p.body["busiest_hour"]), (200, Some(0), &Value::Null), "{}", p.text);
    assert_eq!(p.body["calls_by_hour_of_day"], json!([0u64; 24].to_vec()));
}

/// Bad parameters of every statistics endpoint are 400 `invalid_parameter`
/// naming the one to fix.
#[tokio::test]
async fn review_bad_statistics_parameters_are_named() {
    let ts = TestServer::start().await;
    let owner = ts.admin_client();
    let up = format!("http://{}", start_upstream().await);
    owner.setup("acme", "/acme", &up).await;
    for (query, param) in [
        ("top=-1", "top"),
        ("top=1.5", "top"),
        ("top=", "top"),
        ("top=99999999999999999999999", "top"),
        ("group_by=CONSUMER", "group_by"),
        ("metrics=latency;p99", "metrics"),
        ("source=", "source"),
        ("from=2026-01-01", "from"),
        ("days=-1", "days"),
        ("hours=99999999999999999999", "hours"),
        ("limit=0", "limit"),
        ("consumer_id=", "consumer_id"),
        ("request_id=%00", "request_id"),
        ("to=1970-01-01T00:00:00Z&hours=1", "hours"),
        ("to=2000-01-01T00:00:00Z&days=2", "days"),
    ] {
        for path in ["/v1/audit/acme/stats", "/v1/audit/acme/stats/timeline", "/v1/audit/acme/stats/consumers/c1"] {
            if !path.ends_with("/stats") && ["group_by", "metrics", "source", "limit", "consumer_id", "request_id"].contains(&param) {
                continue;
            }
            let a = owner.get(&format!("{path}?{query}")).await;
            assert_eq!(a.status, 400, "{path}?{query}: {}", a.text);
            assert_eq!(a.body["error"]["code"], "invalid_parameter", "{path}?{query}: {}", a.text);
            assert!(a.body["error"]["message"].as_str().unwrap().contains(&format!("`{param}`")), "{path}?{query}: {}", a.text);
        }
    }
}

/// The consumer profile and the timeline take only a window and `top`:
/// every other parameter an audit read takes — `limit`, `category`, the
/// `/stats` options, the admin log's and application events' filters, the
/// list filters — is refused with 400 `invalid_parameter` naming it, not
/// silently ignored (an answer for more than was asked). Names no audit
/// read takes are ignored, as on the list and `/stats`.
#[tokio::test]
async fn profile_and_timeline_refuse_parameters_they_do_not_honour() {
    let ts = TestServer::start().await;
    let owner = ts.admin_client();
    let up = format!("http://{}", start_upstream().await);
    let (consumer, _, _) = owner.setup("acme", "/acme", &up).await;
    let timeline = "/v1/audit/acme/stats/timeline".to_string();
    let profile = format!("/v1/audit/acme/stats/consumers/{consumer}");
    for path in [&timeline, &profile] {
        for (query, param) in [
            ("limit=5", "limit"),
            ("category=security", "category"),
            ("group_by=path", "group_by"),
            ("metrics=latency", "metrics"),
            ("source=events", "source"),
            ("admin_id=root", "admin_id"),
            ("action=CREATE", "action"),
            ("actor_id=root", "actor_id"),
            ("resource_type=order", "resource_type"),
            ("resource_id=1", "resource_id"),
            ("api_id=docs", "api_id"),
            ("method=GET", "method"),
            ("status_max=500", "status_max"),
            ("request_id=abc", "request_id"),
            ("event_type=key_created", "event_type"),
            ("cursor=1.2", "cursor"),
            ("days=1&limit=5", "limit"),
        ] {
            let a = owner.get(&format!("{path}?{query}")).await;
            bad(&a, param);
            assert!(a.body["error"]["message"].as_str().unwrap().contains("`top`"), "{path}?{query}: says what it takes: {}", a.text);
        }
        for query in ["days=1&top=3", "from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z", "hours=2&whatever=1"] {
            let a = owner.get(&format!("{path}?{query}")).await;
            assert_eq!(a.status, 200, "{path}?{query}: {}", a.text);
        }
    }
}

/// `/stats` takes the list's filters, a window, `group_by`, `top`,
/// `metrics` and `source`; the other parameters an audit read takes
/// (`limit`, `cursor`, `category`, the admin log's and application
/// events' filters) were silently ignored, answering for more than was
/// asked. They are refused with 400 `invalid_parameter` naming them, and
/// names no audit read takes are still ignored.
#[tokio::test]
async fn stats_refuses_parameters_it_does_not_honour() {
    let ts = TestServer::start().await;
    let owner = ts.admin_client();
    let up = format!("http://{}", start_upstream().await);
    owner.setup("acme", "/acme", &up).await;
    for (query, param) in [
        ("limit=5", "limit"),
        ("category=security", "category"),
        ("admin_id=root", "admin_id"),
        ("action=CREATE", "action"),
        ("actor_id=root", "actor_id"),
        ("resource_type=order", "resource_type"),
        ("resource_id=1", "resource_id"),
        ("cursor=1.2", "cursor"),
        ("days=1&group_by=path&limit=5", "limit"),
    ] {
        let a = owner.get(&format!("/v1/audit/acme/stats?{query}")).await;
        bad(&a, param);
        assert!(a.body["error"]["message"].as_str().unwrap().contains("`group_by`"), "{query}: says what it takes: {}", a.text);
    }
    for query in ["days=1&top=3&group_by=path", "consumer_id=c1&method=GET&path=/acme&status_min=200&status_max=599", "metrics=latency&source=events", "hours=2&whatever=1"] {
        let a = owner.get(&format!("/v1/audit/acme/stats?{query}")).await;
        assert_eq!(a.status, 200, "{query}: {}", a.text);
    }
}

/// An upstream may answer any three-digit status up to 999, and the gateway
/// passes it on. Such a call counted as a server error but had no status
/// class (`null`), and no list filter could find it (`status_min` stopped
/// at 599). Statuses from 600 on are now server errors everywhere: class
/// `5xx` in every grouping, and found by `status_min=600`.
#[tokio::test]
async fn statuses_past_599_are_server_errors_everywhere() {
    let mut ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (consumer, _, key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    for (path, status) in [("/docs/status/700", 700), ("/docs/status/999", 999), ("/docs/status/503", 503), ("/docs/status/404", 404), ("/docs/a", 200)] {
        let res = ts.client.get(format!("{}{path}", ts.gateway)).header("X-API-Key", &key).send().await.unwrap();
        assert_eq!(res.status().as_u16(), status, "{path}");
    }
    ts.flush().await;
    // From the events (a filter beyond window and consumer) and from the
    // rollups (window and consumer only): the same classes.
    for query in ["group_by=status_class&metrics=rate_limited", &format!("group_by=status_class&consumer_id={consumer}&metrics=")] {
        let a = admin.get(&format!("/v1/audit/acme/stats?{query}")).await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(a.body["totals"]["calls"], 5, "{}", a.text);
        assert_eq!(a.body["totals"]["server_errors"], 3, "{}", a.text);
        let groups = a.body["groups"].as_array().unwrap();
        let classes: BTreeMap<Option<String>, (u64, u64)> = groups
            .iter()
            .map(|g| (g["key"].as_str().map(String::from), (g["calls"].as_u64().unwrap(), g["server_errors"].as_u64().unwrap())))
            .collect();
        let want: BTreeMap<Option<String>, (u64, u64)> =
            [(Some("5xx".to_string()), (3, 3)), (Some("4xx".to_string()), (1, 0)), (Some("2xx".to_string()), (1, 0))].into_iter().collect();
        assert_eq!(classes, want, "{query}: {}", a.text);
    }
    // The timeline and the consumer profile count them as server errors too.
    let a = admin.get(&format!("/v1/audit/acme/stats/consumers/{consumer}")).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(a.text.contains("\"server_errors\":3"), "{}", a.text);
    // And the list finds them.
    let a = admin.get("/v1/audit/acme?status_min=600").await;
    assert_eq!(a.status, 200, "{}", a.text);
    let statuses: Vec<u64> = a.body["logs"].as_array().unwrap().iter().map(|l| l["status_code"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [999, 700], "{}", a.text);
    let a = admin.get("/v1/audit/acme?status_min=500&status_max=599").await;
    assert_eq!(a.body["logs"].as_array().unwrap().len(), 1, "{}", a.text);
    let a = admin.get("/v1/audit/acme?status_max=1000").await;
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (400, Some("invalid_parameter")), "{}", a.text);
    assert!(a.text.contains("999"), "{}", a.text);
    ts.stop().await;
}

/// A viewer reads aggregates, never raw events. `request_id` selects one
/// call, so `/stats?request_id=…&group_by=path` (or `consumer`, `method`,
/// `status_class`, `hour`, with its latency to 1 %) read that call's
/// fields back one by one: a raw event, for a role that may not list them.
/// A viewer gets `403 forbidden` for it; roles that read events keep it.
#[tokio::test]
async fn a_viewer_cannot_single_out_one_call_by_its_request_id() {
    let ts = TestServer::start().await;
    let owner = ts.admin_client();
    let up = format!("http://{}", start_upstream().await);
    let (_, _, key) = owner.setup("acme", "/acme", &up).await;
    let res = ts.client.get(format!("{}/acme/secret-report", ts.gateway)).header("x-api-key", &key).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_string();
    ts.flush().await;
    let mut tokens = Vec::new();
    for role in ["viewer", "auditor"] {
        let a = owner.post("/v1/admins", json!({"name": format!("a-{role}"), "role": role, "tenant_id": "acme"})).await;
        assert_eq!(a.status, 201, "{}", a.text);
        tokens.push(Admin { token: a.body["token"].as_str().unwrap().to_string(), ..owner.clone() });
    }
    let (viewer, auditor) = (&tokens[0], &tokens[1]);
    let query = format!("/v1/audit/acme/stats?request_id={request_id}&group_by=path");
    let a = viewer.get(&query).await;
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (403, Some("forbidden")), "{}", a.text);
    assert!(a.body["error"]["message"].as_str().unwrap().contains("`request_id`"), "{}", a.text);
    assert!(!a.text.contains("secret-report"), "{}", a.text);
    let a = auditor.get(&query).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["groups"][0]["key"], "/acme/secret-report", "{}", a.text);
    // Aggregates without it stay open to viewers.
    assert_eq!(viewer.get("/v1/audit/acme/stats?group_by=path").await.status, 200);
}
