//! The audit store end to end: what goes in comes back, in order, chained,
//! and every aggregation equals a count over the raw events.

use std::collections::{BTreeMap, HashMap};

use rusqlite::Connection;

use super::rollup::{ConsumerAgg, DAY_MS, HOUR_MS};
use super::stats::Activity;
use super::*;
use crate::event::{Category, Event, GENESIS_HASH};
use crate::splitmix::SplitMix64;
use crate::store::sketch::LatencySketch;

/// 2026-11-20T00:00:00Z.
const DAY0: i64 = 1_795_132_800_000;

/// `n` events over about `span_ms` from `start`, two tenants, some out of
/// time order (as slow requests are), a few security events.
fn events(n: usize, start: i64, span_ms: i64, seed: u64) -> Vec<Event> {
    let mut rng = SplitMix64(seed);
    (0..n)
        .map(|i| {
            let tenant = ["acme", "globex"][rng.below(2) as usize];
            let security = rng.below(20) == 0;
            let mut e = if security {
                Event::new(tenant, Category::Security, "auth_failed", "failure")
            } else {
                Event::new(tenant, Category::Request, "request", "success")
            };
            // Mostly climbing, sometimes up to 30 s late.
            e.timestamp_ms = start + span_ms * i as i64 / n as i64 - if rng.below(10) == 0 { rng.below(30_000) as i64 } else { 0 };
            let consumer = rng.below(7);
            e.consumer_id = (consumer != 0).then(|| format!("cons_{consumer}").into());
            e.consumer_name = e.consumer_id.as_ref().map(|c| format!("client {c}").into());
            e.api_id = Some(["docs", "orders"][rng.below(2) as usize].into());
            e.method = Some(["GET", "POST", "DELETE", "OPTIONS"][rng.below(4) as usize].into());
            e.path = Some(format!("/{}/{}", e.api_id.as_deref().unwrap(), rng.below(5)));
            e.request_id = Some(crate::event::new_id_at(e.timestamp_ms));
            e.client_ip = Some(format!("10.0.0.{}", rng.below(40)).into());
            e.user_agent = Some(format!("agent/{}", rng.below(3)));
            if !security {
                e.status_code = Some([200, 200, 200, 201, 404, 429, 500][rng.below(7) as usize]);
                e.latency_us = Some(1 + rng.below(100_000));
                e.upstream_latency_us = e.latency_us.map(|l| l.saturating_sub(rng.below(500)));
                e.request_size_bytes = Some(rng.below(1000));
                e.response_size_bytes = Some(rng.below(100_000));
            } else {
                e.details = Some(serde_json::json!({"reason": "unknown key"}));
            }
            if e.status_code.is_some_and(|s| s >= 400) {
                e.outcome = "failure".into();
                e.error_code = Some("http_error".into());
            }
            e
        })
        .collect()
}

fn write(dir: &Path, events: &[Event], batch: usize) -> Vec<Event> {
    let mut store = AuditWriterStore::open(dir).unwrap();
    let mut committed = Vec::new();
    for chunk in events.chunks(batch) {
        let mut batch = chunk.to_vec();
        // The writer numbers events in day order; keep the numbered copies.
        let mut numbered = batch.clone();
        store.insert_batch(&mut batch).unwrap();
        assert!(batch.is_empty());
        numbered.sort_by_key(|e| day_of(e.timestamp_ms));
        committed.extend(numbered);
    }
    store.flush_rollups().unwrap();
    committed
}

/// Every event of a tenant as the chain returns it, newest first by (ts, seq).
fn newest_first(reader: &AuditReader, tenant: &str) -> Vec<Event> {
    let mut all: Vec<Event> = reader.chain(tenant).unwrap().into_iter().map(|s| s.event).collect();
    all.sort_by_key(|e| std::cmp::Reverse((e.timestamp_ms, e.seq)));
    all
}

fn scan_all(reader: &AuditReader, filter: &EventFilter, limit: Option<u64>) -> Vec<Event> {
    let mut out = Vec::new();
    reader
        .scan(filter, limit, false, |s| {
            out.push(s.event.clone());
            true
        })
        .unwrap();
    out
}

#[test]
fn events_come_back_exactly_numbered_and_chained_across_days() {
    let dir = tempfile::tempdir().unwrap();
    // Three days, so batches straddle midnight.
    let input = events(6_000, DAY0 - 2 * HOUR_MS, 3 * DAY_MS, 1);
    write(dir.path(), &input, 700);
    let reader = AuditReader::open(dir.path()).unwrap();
    assert!(reader.days().count() >= 3, "{:?}", reader.days().collect::<Vec<_>>());
    let mut total = 0;
    for tenant in ["acme", "globex"] {
        let chain = reader.chain(tenant).unwrap();
        let mut previous = GENESIS_HASH;
        for (i, stored) in chain.iter().enumerate() {
            assert_eq!(stored.event.seq, i as u64 + 1, "{tenant}: seqs follow on");
            let e = &stored.event;
            let salt = reader.salt(day_of(e.timestamp_ms), tenant, e.salt_owner().unwrap_or("")).unwrap();
            assert_eq!(stored.hash, Some(e.chain_hash(&previous, salt.as_ref()).unwrap()));
            assert_eq!(stored.event.event_id, crate::event::derived_event_id(tenant, stored.event.seq, stored.event.timestamp_ms));
            previous = stored.hash.unwrap();
        }
        let report = reader.verify(tenant).unwrap();
        assert_eq!(report.first_break, None);
        assert_eq!(report.events, chain.len() as u64);
        total += chain.len();
    }
    assert_eq!(total, input.len());
    // Field for field: match the input by request id.
    let by_request: HashMap<String, &Event> = input.iter().map(|e| (e.request_id.clone().unwrap(), e)).collect();
    for stored in reader.chain("acme").unwrap() {
        let mut original = (*by_request[stored.event.request_id.as_deref().unwrap()]).clone();
        original.seq = stored.event.seq;
        original.event_id = stored.event.event_id.clone();
        assert_eq!(stored.event, original);
    }
}

#[test]
fn one_batch_may_span_more_days_than_the_writer_keeps_open() {
    let dir = tempfile::tempdir().unwrap();
    let input = events(2_000, DAY0, 9 * DAY_MS, 12);
    write(dir.path(), &input, 2_000);
    let reader = AuditReader::open(dir.path()).unwrap();
    assert!(reader.days().count() >= 9);
    let stored = reader.chain("acme").unwrap().len() + reader.chain("globex").unwrap().len();
    assert_eq!(stored, input.len());
    assert_eq!(reader.verify("acme").unwrap().first_break, None);
    check_aggregations(&reader, &[(DAY0, DAY0 + 9 * DAY_MS), (DAY0 + 5 * HOUR_MS, DAY0 + 3 * DAY_MS + 7)]);
}

#[test]
fn scans_are_newest_first_filtered_and_paged_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &events(5_000, DAY0, DAY_MS + 6 * HOUR_MS, 2), 333);
    let reader = AuditReader::open(dir.path()).unwrap();
    let all = newest_first(&reader, "acme");
    let base = EventFilter { tenant_id: "acme".into(), ..EventFilter::default() };
    assert_eq!(scan_all(&reader, &base, None), all);

    type Check = Box<dyn Fn(&Event) -> bool>;
    let cases: Vec<(EventFilter, Check)> = vec![
        (EventFilter { category: Some(Category::Security), ..base.clone() }, Box::new(|e| e.category == Some(Category::Security))),
        (EventFilter { event_type: Some("auth_failed".into()), ..base.clone() }, Box::new(|e| e.event_type == "auth_failed")),
        (EventFilter { consumer_id: Some("cons_3".into()), ..base.clone() }, Box::new(|e| e.consumer_id.as_deref() == Some("cons_3"))),
        (EventFilter { api_id: Some("orders".into()), method: Some("POST".into()), ..base.clone() }, Box::new(|e| {
            e.api_id.as_deref() == Some("orders") && e.method.as_deref() == Some("POST")
        })),
        (EventFilter { path_prefix: Some("/docs/".into()), ..base.clone() }, Box::new(|e| e.path.as_deref().unwrap().starts_with("/docs/"))),
        (EventFilter { status_min: Some(400), status_max: Some(499), ..base.clone() }, Box::new(|e| e.status_code.is_some_and(|s| (400..=499).contains(&s)))),
        (
            EventFilter { from_ms: Some(DAY0 + 20 * HOUR_MS), to_ms: Some(DAY0 + 26 * HOUR_MS + 17), ..base.clone() },
            Box::new(|e| (DAY0 + 20 * HOUR_MS..=DAY0 + 26 * HOUR_MS + 17).contains(&e.timestamp_ms)),
        ),
        (EventFilter { consumer_id: Some("nobody".into()), ..base.clone() }, Box::new(|_| false)),
        (EventFilter { tenant_id: "initech".into(), ..base.clone() }, Box::new(|_| false)),
    ];
    for (filter, check) in cases {
        let want: Vec<Event> = if filter.tenant_id == "acme" { all.iter().filter(|e| check(e)).cloned().collect() } else { Vec::new() };
        let got = scan_all(&reader, &filter, None);
        assert_eq!(got.len(), want.len(), "{filter:?}");
        assert!(got == want, "{filter:?}: order or content differs");
        // Pages of 97 with a cursor give the same rows, no gaps or repeats.
        let mut paged = Vec::new();
        let mut page_filter = filter.clone();
        loop {
            let page = scan_all(&reader, &page_filter, Some(97));
            let Some(last) = page.last() else { break };
            page_filter.before = Some((last.timestamp_ms, last.seq));
            paged.extend(page);
        }
        assert!(paged == want, "{filter:?}: paging differs");
    }
}

#[test]
fn exports_carry_each_events_chain_hash() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &events(1_000, DAY0, HOUR_MS, 3), 1_000);
    let reader = AuditReader::open(dir.path()).unwrap();
    let chain: HashMap<u64, [u8; 32]> = reader.chain("acme").unwrap().into_iter().map(|s| (s.event.seq, s.hash.unwrap())).collect();
    let mut seen = 0;
    let filter = EventFilter { tenant_id: "acme".into(), consumer_id: Some("cons_2".into()), ..EventFilter::default() };
    reader
        .scan(&filter, None, true, |s| {
            assert_eq!(s.hash, Some(chain[&s.event.seq]));
            seen += 1;
            true
        })
        .unwrap();
    assert!(seen > 10);
}

/// Brute-force per-consumer counts from the chain.
fn brute_consumers(reader: &AuditReader, tenant: &str, from: i64, to: i64) -> BTreeMap<Option<String>, ConsumerAgg> {
    let mut out: BTreeMap<Option<String>, ConsumerAgg> = BTreeMap::new();
    for s in reader.chain(tenant).unwrap() {
        let e = s.event;
        if e.category == Some(Category::Request) && (from..to).contains(&e.timestamp_ms) {
            let method = super::rollup::method_index(e.method.as_deref().unwrap_or(""));
            out.entry(e.consumer_id.map(String::from)).or_default().add(e.status_code.unwrap_or(0), method, e.latency_us.unwrap_or(0));
        }
    }
    out
}

fn summed(activity: HashMap<(i64, Option<String>), ConsumerAgg>) -> BTreeMap<Option<String>, ConsumerAgg> {
    let mut out: BTreeMap<Option<String>, ConsumerAgg> = BTreeMap::new();
    for ((_, consumer), agg) in activity {
        out.entry(consumer).or_default().merge(&agg);
    }
    out
}

fn check_aggregations(reader: &AuditReader, windows: &[(i64, i64)]) {
    for &(from, to) in windows {
        let want = brute_consumers(reader, "acme", from, to);
        assert!(!want.is_empty());
        let got = summed(reader.consumer_activity("acme", from, to, None, Activity::Totals { latency: true }).unwrap());
        assert_eq!(got, want, "window {from}..{to}, totals with latency");
        let counts: BTreeMap<Option<String>, ConsumerAgg> = want.iter().map(|(k, v)| (k.clone(), v.counts_only())).collect();
        for mode in [Activity::Totals { latency: false }, Activity::Hourly] {
            let got: BTreeMap<_, _> = summed(reader.consumer_activity("acme", from, to, None, mode).unwrap())
                .into_iter()
                .map(|(k, v)| (k, v.counts_only()))
                .collect();
            assert_eq!(got, counts, "window {from}..{to}, {mode:?}");
        }
        let one = summed(reader.consumer_activity("acme", from, to, Some("cons_4"), Activity::Totals { latency: true }).unwrap());
        assert_eq!(one.get(&Some("cons_4".into())), want.get(&Some("cons_4".into())));
        assert_eq!(one.len(), usize::from(want.contains_key(&Some("cons_4".into()))));

        // Paths of one consumer, and the timeline by path.
        let mut paths: BTreeMap<Option<String>, (u64, u64)> = BTreeMap::new();
        let mut timeline: BTreeMap<Option<String>, (u64, u64, std::collections::BTreeSet<String>)> = BTreeMap::new();
        for s in reader.chain("acme").unwrap() {
            let e = s.event;
            if e.category != Some(Category::Request) || !(from..to).contains(&e.timestamp_ms) {
                continue;
            }
            let error = u64::from(e.status_code.unwrap_or(0) >= 400);
            if e.consumer_id.as_deref() == Some("cons_4") {
                let p = paths.entry(e.path.clone()).or_default();
                p.0 += 1;
                p.1 += error;
            }
            let t = timeline.entry(e.path.clone()).or_default();
            t.0 += 1;
            t.1 += error;
            if let Some(consumer) = e.consumer_id.clone() {
                t.2.insert(consumer.to_string());
            }
        }
        let got: BTreeMap<Option<String>, (u64, u64)> =
            reader.consumer_paths("acme", from, to, "cons_4").unwrap().into_iter().map(|(k, v)| (k, (v.calls, v.errors))).collect();
        assert_eq!(got, paths, "paths, window {from}..{to}");
        let got: BTreeMap<Option<String>, (u64, u64, u64)> = reader
            .path_timeline("acme", from, to)
            .unwrap()
            .into_iter()
            .map(|p| (p.path, (p.calls, p.errors, p.distinct_consumers)))
            .collect();
        let want: BTreeMap<Option<String>, (u64, u64, u64)> =
            timeline.into_iter().map(|(k, (c, e, s))| (k, (c, e, s.len() as u64))).collect();
        assert_eq!(got, want, "timeline, window {from}..{to}");
    }
}

const WINDOWS: [(i64, i64); 5] = [
    // Whole days, whole hours, ragged edges, inside one hour, all of it.
    (DAY0, DAY0 + DAY_MS),
    (DAY0 + 3 * HOUR_MS, DAY0 + 30 * HOUR_MS),
    (DAY0 + 3 * HOUR_MS + 1_234, DAY0 + DAY_MS + 5 * HOUR_MS + 99_999),
    (DAY0 + 7 * HOUR_MS + 60_000, DAY0 + 7 * HOUR_MS + 1_800_000),
    (DAY0 - DAY_MS, DAY0 + 3 * DAY_MS),
];

#[test]
fn aggregations_equal_a_count_over_the_events() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &events(8_000, DAY0, 2 * DAY_MS, 4), 450);
    let reader = AuditReader::open(dir.path()).unwrap();
    check_aggregations(&reader, &WINDOWS);

    let profile = reader.consumer_profile("acme", "cons_4", DAY0, DAY0 + 2 * DAY_MS, 3).unwrap();
    let want = brute_consumers(&reader, "acme", DAY0, DAY0 + 2 * DAY_MS).remove(&Some("cons_4".into())).unwrap();
    assert_eq!(profile.totals, want.counts_only());
    assert_eq!(profile.top_paths.len(), 3);
    assert!(profile.top_paths.windows(2).all(|w| w[0].1 >= w[1].1));
    assert_eq!(profile.by_hour_of_day.iter().sum::<u64>(), want.calls);
    let (hour, calls) = profile.busiest_hour.unwrap();
    assert_eq!(calls, *profile.by_hour_of_day.iter().max().unwrap());
    assert_eq!(profile.by_hour_of_day[hour as usize], calls);
    assert_eq!(profile.methods.iter().map(|m| m.1).sum::<u64>(), want.calls);
    assert!(profile.methods.iter().any(|(m, _)| m == "other"), "OPTIONS counts as other");
}

#[test]
fn rollups_survive_a_crash_and_readers_count_what_is_not_rolled_up_yet() {
    let dir = tempfile::tempdir().unwrap();
    let input = events(6_000, DAY0, 2 * DAY_MS, 5);
    {
        let mut store = AuditWriterStore::open(dir.path()).unwrap();
        for chunk in input.chunks(500) {
            store.insert_batch(&mut chunk.to_vec()).unwrap();
        }
        // No flush: the rollups trail the events (the writer writes them
        // about once a second), as after a crash.
    }
    {
        let reader = AuditReader::open(dir.path()).unwrap();
        check_aggregations(&reader, &WINDOWS);
    }
    // A restart replays what the rollups missed, once.
    {
        let mut store = AuditWriterStore::open(dir.path()).unwrap();
        store.insert_batch(&mut events(10, DAY0 + HOUR_MS, 1_000, 6)).unwrap();
        store.flush_rollups().unwrap();
    }
    let reader = AuditReader::open(dir.path()).unwrap();
    check_aggregations(&reader, &WINDOWS);
    for (day, path) in list_days(dir.path()).unwrap() {
        let conn = Connection::open(path).unwrap();
        let watermark = super::writer::rollup_watermark(&conn).unwrap();
        let last: i64 = conn.query_row("SELECT max(id) FROM blocks", [], |r| r.get(0)).unwrap();
        assert_eq!(watermark, last, "day {day}: everything rolled up after a flush");
    }
}

#[test]
fn latency_sketches_in_rollups_answer_within_their_error() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &events(4_000, DAY0, DAY_MS, 7), 512);
    let reader = AuditReader::open(dir.path()).unwrap();
    let got = summed(reader.consumer_activity("acme", DAY0, DAY0 + DAY_MS, None, Activity::Totals { latency: true }).unwrap());
    for (consumer, agg) in got {
        let mut values: Vec<u64> = reader
            .chain("acme")
            .unwrap()
            .into_iter()
            .map(|s| s.event)
            .filter(|e| e.category == Some(Category::Request) && e.consumer_id.as_deref() == consumer.as_deref())
            .map(|e| e.latency_us.unwrap())
            .collect();
        values.sort_unstable();
        let mut exact = LatencySketch::default();
        values.iter().for_each(|v| exact.record(*v));
        assert_eq!(agg.latency, exact);
        for q in [0.5, 0.95, 0.99] {
            let want = values[((q * values.len() as f64).ceil() as usize).max(1) - 1] as f64;
            let got = agg.latency.quantile(q).unwrap();
            assert!((got - want).abs() / want <= crate::store::sketch::RELATIVE_ERROR + 1e-9, "{consumer:?} p{q}: {got} vs {want}");
        }
    }
}

#[test]
fn chain_heads_survive_restarts_and_lost_files() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &events(300, DAY0, DAY_MS, 8), 100);
    let head = |dir: &Path| *AuditWriterStore::open(dir).unwrap().heads().get("acme").unwrap();
    let before = head(dir.path());
    assert!(before.seq > 100);
    // Without meta.db, the day files hold the heads (and the next start
    // writes them back to meta.db).
    std::fs::remove_file(dir.path().join(META_FILE)).unwrap();
    assert_eq!(head(dir.path()), before);
    // Without the day files (retention), meta.db does.
    for (_, path) in list_days(dir.path()).unwrap() {
        std::fs::remove_file(path).unwrap();
    }
    assert_eq!(head(dir.path()), before);
    // And numbering goes on from it.
    write(dir.path(), &events(5, DAY0 + 2 * DAY_MS, 1_000, 9), 5);
    let reader = AuditReader::open(dir.path()).unwrap();
    let chain = reader.chain("acme").unwrap();
    assert!(chain.iter().all(|s| s.event.seq > before.seq));
}

#[test]
fn meta_db_gets_the_heads_once_a_second_and_when_the_store_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let meta_head = |dir: &Path| -> Option<i64> {
        let meta = Connection::open(dir.join(META_FILE)).unwrap();
        meta.query_row("SELECT seq FROM heads WHERE tenant = 'acme'", [], |r| r.get(0)).ok()
    };
    let opened = std::time::Instant::now();
    let mut store = AuditWriterStore::open(dir.path()).unwrap();
    let mut batch = events(50, DAY0, 1_000, 3);
    store.insert_batch(&mut batch).unwrap();
    let head = *store.heads().get("acme").unwrap();
    // The day file has the head at once; meta.db's copy waits for the
    // rollups' second rather than costing a transaction per batch (unless
    // this machine stalled for that second, when the batch was due to save it).
    if opened.elapsed() < std::time::Duration::from_millis(900) {
        assert_eq!(meta_head(dir.path()), None);
    }
    drop(store);
    assert_eq!(meta_head(dir.path()), Some(head.seq as i64));
    // So a day file that retention deletes after a short run leaves its head behind.
    for (_, path) in list_days(dir.path()).unwrap() {
        std::fs::remove_file(path).unwrap();
    }
    assert_eq!(*AuditWriterStore::open(dir.path()).unwrap().heads().get("acme").unwrap(), head);
}

fn tamper(dir: &Path, sql: &str) {
    let (_, path) = list_days(dir).unwrap().into_iter().find(|(d, _)| *d == day_of(DAY0)).unwrap();
    let conn = Connection::open(path).unwrap();
    let tenant: i64 = conn.query_row("SELECT id FROM strings WHERE value = 'acme'", [], |r| r.get(0)).unwrap();
    conn.execute(sql, [tenant]).unwrap();
}

#[test]
fn verification_finds_changed_missing_and_forged_blocks() {
    let fresh = || {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &events(3_000, DAY0, HOUR_MS, 10), 400);
        dir
    };
    let check = |sql: &str, what: &str| {
        let dir = fresh();
        tamper(dir.path(), sql);
        let report = AuditReader::open(dir.path()).unwrap().verify("acme").unwrap();
        let broken = report.first_break.unwrap_or_else(|| panic!("{what} went unnoticed"));
        assert!(broken.first_seq > 1 && broken.last_seq >= broken.first_seq, "{what}: {broken:?}");
        broken
    };
    // Flip a byte inside a block's compressed data, keeping it a blob.
    check(
        "UPDATE blocks SET data = CAST(substr(data, 1, length(data) - 10) || x'ff' || substr(data, length(data) - 8) AS BLOB)
         WHERE tenant = ?1 AND first_seq = (SELECT min(first_seq) FROM blocks WHERE tenant = ?1 AND first_seq > 1)",
        "a changed byte",
    );
    // The same, turning the column into text.
    check(
        "UPDATE blocks SET data = substr(data, 1, length(data) - 10) || x'ff' || substr(data, length(data) - 8)
         WHERE tenant = ?1 AND first_seq = (SELECT min(first_seq) FROM blocks WHERE tenant = ?1 AND first_seq > 1)",
        "a column turned to text",
    );
    let missing = check(
        "DELETE FROM blocks WHERE tenant = ?1 AND first_seq = (SELECT min(first_seq) FROM blocks WHERE tenant = ?1 AND first_seq > 1)",
        "a deleted block",
    );
    assert!(missing.reason.contains("expected seq"), "{missing:?}");
    check(
        "UPDATE blocks SET hash = zeroblob(32) WHERE tenant = ?1 AND first_seq = (SELECT min(first_seq) FROM blocks WHERE tenant = ?1 AND first_seq > 1)",
        "a rewritten hash",
    );
    // Swap two blocks' data: each holds events that hash to the other's chain.
    check(
        "UPDATE blocks SET data = CASE id WHEN (SELECT min(id) FROM blocks WHERE tenant = ?1 AND first_seq > 1)
              THEN (SELECT data FROM blocks WHERE id = (SELECT min(id) FROM blocks WHERE tenant = ?1 AND first_seq > 1) + 2)
              ELSE (SELECT data FROM blocks WHERE id = (SELECT min(id) FROM blocks WHERE tenant = ?1 AND first_seq > 1)) END
         WHERE id IN ((SELECT min(id) FROM blocks WHERE tenant = ?1 AND first_seq > 1), (SELECT min(id) FROM blocks WHERE tenant = ?1 AND first_seq > 1) + 2)",
        "swapped blocks",
    );
    // An untouched store verifies.
    let dir = fresh();
    assert_eq!(AuditReader::open(dir.path()).unwrap().verify("acme").unwrap().first_break, None);
}

#[test]
fn bytes_per_event_stay_small() {
    let dir = tempfile::tempdir().unwrap();
    let n = 20_000;
    write(dir.path(), &events(n, DAY0, DAY_MS, 11), 5_000);
    let mut bytes = 0;
    for (_, path) in list_days(dir.path()).unwrap() {
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "wal_checkpoint", "TRUNCATE").unwrap();
        drop(conn);
        bytes += std::fs::metadata(path).unwrap().len();
    }
    let per_event = bytes as f64 / n as f64;
    // Random request ids alone are 10 bytes; the rest compresses well.
    assert!(per_event < 100.0, "{per_event:.1} bytes/event");
}

/// Events of every category with actors, targets, request ids and outcomes
/// as the gateway, the admin API and applications set them, over `span_ms`
/// from `start`: actors and targets repeated (interned) and one-off (inline
/// in their block), some only after the first day; request ids stamped with
/// their event's time, shared by a refused call's security event, carried
/// later by application events (so stored whole), as other text, upper-case.
fn varied_events(n: usize, start: i64, span_ms: i64, seed: u64) -> Vec<Event> {
    let mut rng = SplitMix64(seed);
    let first_day = day_of(start);
    let mut last_request: Option<(i64, String)> = None;
    let mut past_ids: Vec<String> = Vec::new();
    (0..n)
        .map(|i| {
            let mut ts = start + span_ms * i as i64 / n as i64 - if rng.below(10) == 0 { rng.below(30_000) as i64 } else { 0 };
            // `admin:rare` twice on the first day (inline, then interned) and once on the second.
            let rare = [n / 10, n / 5, 9 * n / 10].contains(&i);
            let tenant = if rare { "acme" } else { ["acme", "acme", "globex"][rng.below(3) as usize] };
            let kind = if rare { 6 } else { rng.below(10) };
            let later_day = day_of(ts) > first_day;
            let mut e = match kind {
                0..=4 => {
                    let mut e = Event::new(tenant, Category::Request, "request", "success");
                    e.timestamp_ms = ts;
                    e.status_code = Some([200, 200, 201, 404, 500][rng.below(5) as usize]);
                    if e.status_code.is_some_and(|s| s >= 400) {
                        e.outcome = "failure".into();
                    }
                    e.request_id = Some(if rng.below(20) == 0 { format!("req-{}", rng.below(4)) } else { crate::event::new_id_at(ts) });
                    e.consumer_id = Some(format!("cons_{}", rng.below(5)).into());
                    e.method = Some("GET".into());
                    e.path = Some(format!("/docs/{}", rng.below(5)));
                    let id = e.request_id.clone().unwrap();
                    past_ids.push(id.clone());
                    last_request = Some((ts, id));
                    e
                }
                5 => {
                    // A refused call: same time and request id as the last request.
                    let mut e = Event::new(tenant, Category::Security, "rate_limit_exceeded", "failure");
                    if let Some((at, id)) = &last_request {
                        ts = *at;
                        e.request_id = Some(id.clone());
                    }
                    e.timestamp_ms = ts;
                    e.actor = Some(format!("consumer:cons_{}", rng.below(5)).into());
                    e
                }
                6 | 7 => {
                    let outcome = if later_day && rng.below(3) == 0 { "denied" } else { "success" };
                    let mut e = Event::new(tenant, Category::Admin, "key_created", outcome);
                    e.timestamp_ms = ts;
                    e.actor = Some(match rng.below(20) {
                        _ if rare => "admin:rare".into(),
                        0 => format!("admin:once_{i}").into(),
                        1..=4 if later_day => "admin:day_two".into(),
                        k => format!("admin:adm_{}", k % 3).into(),
                    });
                    e.target = match rng.below(8) {
                        0 => None,
                        1 => Some(format!("consumer:new_{i}")),
                        2 | 3 => Some(format!("key:key_{}", rng.below(4))),
                        4 => Some("api:docs".into()),
                        _ => Some(format!("consumer:cons_{}", rng.below(5))),
                    };
                    e.request_id = Some(crate::event::new_id_at(ts));
                    e
                }
                _ => {
                    let outcome = ["success", "error"][rng.below(2) as usize];
                    let mut e = Event::new(tenant, Category::App, "invoice_paid", outcome);
                    e.timestamp_ms = ts;
                    e.actor = Some(["app:billing", "app:crm"][rng.below(2) as usize].into());
                    e.target = (rng.below(4) != 0).then(|| format!("invoice:{}", rng.below(30)));
                    e.request_id = match rng.below(6) {
                        0 => None,
                        1 => Some(crate::event::new_id_at(ts).to_uppercase()),
                        2 => Some(format!("req-{}", rng.below(4))),
                        // The id of an earlier gateway call.
                        _ => past_ids.get(rng.below(past_ids.len().max(1) as u64) as usize).cloned(),
                    };
                    e
                }
            };
            e.client_ip = Some(format!("10.0.0.{}", rng.below(40)).into());
            e
        })
        .collect()
}

/// What [`EventFilter`] means, one event at a time.
fn brute_matches(f: &EventFilter, e: &Event) -> bool {
    let eq = |want: &Option<String>, got: Option<&str>| want.as_deref().is_none_or(|w| got == Some(w));
    let prefix = |want: &Option<String>, got: Option<&str>| want.as_deref().is_none_or(|w| got.is_some_and(|g| g.starts_with(w)));
    let status = match (f.status_min, f.status_max) {
        (None, None) => true,
        (min, max) => e.status_code.is_some_and(|s| s >= min.unwrap_or(0) && s <= max.unwrap_or(u16::MAX)),
    };
    e.tenant_id == f.tenant_id
        && f.category.is_none_or(|c| e.category() == c)
        && eq(&f.event_type, Some(&e.event_type))
        && eq(&f.consumer_id, e.consumer_id.as_deref())
        && eq(&f.api_id, e.api_id.as_deref())
        && eq(&f.method, e.method.as_deref())
        && prefix(&f.path_prefix, e.path.as_deref())
        && status
        && f.from_ms.is_none_or(|from| e.timestamp_ms >= from)
        && f.to_ms.is_none_or(|to| e.timestamp_ms <= to)
        && f.before.is_none_or(|before| (e.timestamp_ms, e.seq) < before)
        && eq(&f.actor, e.actor.as_deref())
        && eq(&f.target, e.target.as_deref())
        && prefix(&f.target_prefix, e.target.as_deref())
        && eq(&f.request_id, e.request_id.as_deref())
        && eq(&f.outcome, Some(&e.outcome))
}

/// Whether the day file of `day` has `value` in its dictionary.
fn interned(dir: &Path, day: i64, value: &str) -> bool {
    let (_, path) = list_days(dir).unwrap().into_iter().find(|(d, _)| *d == day).unwrap();
    let conn = Connection::open(path).unwrap();
    conn.query_row("SELECT count(*) FROM strings WHERE value = ?1", [value], |r| r.get::<_, i64>(0)).unwrap() > 0
}

#[test]
fn actor_target_request_id_and_outcome_filters_equal_a_brute_force_filter() {
    let dir = tempfile::tempdir().unwrap();
    let start = DAY0 + 2 * HOUR_MS;
    let input = varied_events(6_000, start, 36 * HOUR_MS, 13);
    // Small batches: many blocks per tenant and day.
    write(dir.path(), &input, 150);
    let reader = AuditReader::open(dir.path()).unwrap();
    let (day0, day1) = (day_of(start), day_of(start) + 1);
    assert_eq!(reader.days().collect::<Vec<_>>(), vec![day0, day1]);
    let all = newest_first(&reader, "acme");
    assert_eq!(all.len() + newest_first(&reader, "globex").len(), input.len());

    // What the cases below rely on.
    let acme = |f: &dyn Fn(&Event) -> bool| all.iter().filter(|e| f(e)).count();
    let once: Vec<&Event> = all.iter().filter(|e| e.actor.as_deref().is_some_and(|a| a.starts_with("admin:once_"))).collect();
    assert!(once.len() > 3 && once.iter().all(|e| !interned(dir.path(), day_of(e.timestamp_ms), e.actor.as_deref().unwrap())));
    let once_actor = once[once.len() / 2].actor.clone().unwrap();
    assert!(interned(dir.path(), day0, "admin:rare") && !interned(dir.path(), day1, "admin:rare"));
    assert_eq!(acme(&|e| e.actor.as_deref() == Some("admin:rare")), 3);
    assert!(!interned(dir.path(), day0, "admin:day_two") && interned(dir.path(), day1, "admin:day_two"));
    assert!(!interned(dir.path(), day0, "denied") && interned(dir.path(), day1, "denied"));
    let new_targets: Vec<&Event> = all.iter().filter(|e| e.target.as_deref().is_some_and(|t| t.starts_with("consumer:new_"))).collect();
    assert!(new_targets.iter().all(|e| !interned(dir.path(), day_of(e.timestamp_ms), e.target.as_deref().unwrap())));
    let new_target = new_targets[new_targets.len() / 3].target.clone().unwrap();
    assert!(interned(dir.path(), day0, "consumer:cons_1"));
    // A request id shared by a request, its security event and later app events.
    let mut carried: HashMap<&str, (usize, usize)> = HashMap::new();
    for e in &all {
        if let Some(id) = e.request_id.as_deref() {
            let slot = carried.entry(id).or_default();
            match e.category() {
                Category::App => slot.1 += 1,
                _ => slot.0 += 1,
            }
        }
    }
    let shared = carried.iter().filter(|(id, (gateway, app))| *gateway >= 2 && *app >= 1 && id.len() == 36).map(|(id, _)| id.to_string()).min().unwrap();
    // An app event on the second day carrying an id stamped on the first.
    let crossing = all
        .iter()
        .find(|e| {
            e.category() == Category::App
                && day_of(e.timestamp_ms) == day1
                && e.request_id.as_deref().and_then(|id| uuid::Uuid::try_parse(id).ok()).and_then(|u| u.get_timestamp()).is_some_and(|t| {
                    day_of(t.to_unix().0 as i64 * 1000) == day0
                })
        })
        .and_then(|e| e.request_id.clone())
        .unwrap();
    let upper = all.iter().find_map(|e| e.request_id.clone().filter(|id| id.len() == 36 && *id != id.to_lowercase())).unwrap();
    let base = EventFilter { tenant_id: "acme".into(), ..EventFilter::default() };
    let cases = vec![
        EventFilter { category: Some(Category::App), ..base.clone() },
        EventFilter { category: Some(Category::Admin), ..base.clone() },
        EventFilter { actor: Some("admin:adm_1".into()), ..base.clone() },
        EventFilter { actor: Some(once_actor.to_string()), ..base.clone() },
        EventFilter { actor: Some("admin:rare".into()), ..base.clone() },
        EventFilter { actor: Some("admin:day_two".into()), ..base.clone() },
        EventFilter { actor: Some("app:billing".into()), category: Some(Category::App), outcome: Some("error".into()), ..base.clone() },
        EventFilter { actor: Some("nobody".into()), ..base.clone() },
        // Another field's dictionary text.
        EventFilter { actor: Some("GET".into()), ..base.clone() },
        EventFilter { target: Some("consumer:cons_1".into()), ..base.clone() },
        EventFilter { target: Some(new_target), ..base.clone() },
        EventFilter { target: Some("consumer:cons_2".into()), actor: Some("admin:adm_0".into()), ..base.clone() },
        EventFilter { target_prefix: Some("consumer:".into()), ..base.clone() },
        EventFilter { target_prefix: Some("consumer:new_".into()), ..base.clone() },
        EventFilter { target_prefix: Some("key:".into()), category: Some(Category::Admin), outcome: Some("denied".into()), ..base.clone() },
        EventFilter { target_prefix: Some("invoice:1".into()), from_ms: Some(DAY0 + 20 * HOUR_MS), to_ms: Some(DAY0 + 30 * HOUR_MS), ..base.clone() },
        EventFilter { target_prefix: Some(String::new()), ..base.clone() },
        EventFilter { target_prefix: Some("zzz".into()), ..base.clone() },
        // Paths are in the dictionary; no target starts like them.
        EventFilter { target_prefix: Some("/docs".into()), ..base.clone() },
        EventFilter { target: Some("key:key_1".into()), target_prefix: Some("key:".into()), ..base.clone() },
        EventFilter { target: Some("key:key_1".into()), target_prefix: Some("consumer:".into()), ..base.clone() },
        EventFilter { request_id: Some(shared.clone()), ..base.clone() },
        EventFilter { request_id: Some(shared.clone()), category: Some(Category::Security), ..base.clone() },
        EventFilter { request_id: Some(crossing.clone()), ..base.clone() },
        EventFilter { request_id: Some(crossing.clone()), from_ms: Some(DAY0 + DAY_MS), ..base.clone() },
        EventFilter { request_id: Some("req-2".into()), ..base.clone() },
        EventFilter { request_id: Some("req-2".into()), category: Some(Category::Request), status_min: Some(400), ..base.clone() },
        // Upper-case ids are text: only the same text matches.
        EventFilter { request_id: Some(upper.clone()), ..base.clone() },
        EventFilter { request_id: Some(upper.to_lowercase()), ..base.clone() },
        EventFilter { request_id: Some(shared.to_uppercase()), ..base.clone() },
        EventFilter { request_id: Some(crate::event::new_id_at(DAY0 + HOUR_MS)), ..base.clone() },
        EventFilter { request_id: Some("not-an-id".into()), ..base.clone() },
        EventFilter { outcome: Some("failure".into()), ..base.clone() },
        EventFilter { outcome: Some("denied".into()), ..base.clone() },
        EventFilter { outcome: Some("failure".into()), category: Some(Category::Request), status_min: Some(500), ..base.clone() },
        EventFilter { outcome: Some("success".into()), consumer_id: Some("cons_3".into()), path_prefix: Some("/docs/1".into()), ..base.clone() },
        EventFilter { outcome: Some("nothing".into()), ..base.clone() },
    ];
    let mut nonempty = 0;
    for filter in cases {
        let want: Vec<Event> = all.iter().filter(|e| brute_matches(&filter, e)).cloned().collect();
        nonempty += usize::from(!want.is_empty());
        let got = scan_all(&reader, &filter, None);
        assert_eq!(got.len(), want.len(), "{filter:?}");
        assert!(got == want, "{filter:?}: order or content differs");
        assert!(scan_all(&reader, &filter, Some(5)) == want[..want.len().min(5)], "{filter:?}: limit");
        // Pages with a cursor give the same rows, no gaps or repeats.
        for page_size in [7, 97] {
            let mut paged = Vec::new();
            let mut page_filter = filter.clone();
            loop {
                let page = scan_all(&reader, &page_filter, Some(page_size));
                let Some(last) = page.last() else { break };
                page_filter.before = Some((last.timestamp_ms, last.seq));
                paged.extend(page);
            }
            assert!(paged == want, "{filter:?}: paging by {page_size} differs");
        }
        // Cursors at any event, matching or not, each day.
        for at in [all.len() / 5, all.len() / 2, 4 * all.len() / 5] {
            let cursor = Some((all[at].timestamp_ms, all[at].seq));
            let after = EventFilter { before: cursor, ..filter.clone() };
            let want: Vec<Event> = all.iter().filter(|e| brute_matches(&after, e)).cloned().collect();
            assert!(scan_all(&reader, &after, Some(11)) == want[..want.len().min(11)], "{after:?}");
        }
    }
    assert!(nonempty >= 25, "{nonempty} cases found something");
}

#[test]
fn a_store_of_an_older_format_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    {
        let meta = Connection::open(dir.path().join(META_FILE)).unwrap();
        meta.execute_batch("CREATE TABLE heads (tenant TEXT PRIMARY KEY, seq INTEGER NOT NULL, hash BLOB NOT NULL);").unwrap();
    }
    let error = AuditWriterStore::open(dir.path()).err().expect("a format-1 store is refused").to_string();
    assert!(error.contains("format 0") && error.contains("reads format 2") && error.contains("new data directory"), "{error}");
    // A new directory is marked with the current format, and opens again.
    let fresh = tempfile::tempdir().unwrap();
    drop(AuditWriterStore::open(fresh.path()).unwrap());
    drop(AuditWriterStore::open(fresh.path()).unwrap());
    let meta = Connection::open(fresh.path().join(META_FILE)).unwrap();
    let format: i64 = meta.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(format, crate::store::audit::STORE_FORMAT);
}

/// A personal value spelled like a tenant id (a consumer named after its
/// own tenant, or after another tenant of the same day file) is erased
/// from the consumer's events, but the dictionary entry stays: the tenant's
/// blocks, head and salts name it.
#[test]
fn an_erased_value_spelled_like_a_tenant_leaves_the_tenant_whole() {
    let dir = tempfile::tempdir().unwrap();
    let signer = std::sync::Arc::new(crate::signing::Signer::load_or_create(&dir.path().join("signing.key")).unwrap());
    let audit = dir.path().join("audit");
    let call = |tenant: &str, ts: i64, consumer: &str, name: &str| {
        let mut e = Event::new(tenant, Category::Request, "request", "success");
        e.timestamp_ms = ts;
        e.consumer_id = Some(consumer.into());
        e.consumer_name = Some(name.into());
        e.client_ip = Some("192.0.2.1".into());
        e.status_code = Some(200);
        e
    };
    let mut input = Vec::new();
    for i in 0..10 {
        input.push(call("globex", DAY0 + i * 1000, "cons_g", "Gina"));
        input.push(call("acme", DAY0 + i * 1000 + 1, "cons_a", "globex"));
        input.push(call("acme", DAY0 + i * 1000 + 2, "cons_b", "acme"));
    }
    write(&audit, &input, 100);
    for consumer in ["cons_a", "cons_b"] {
        let request = erasure::ErasureRequest {
            tenant: "acme".into(),
            consumer: consumer.into(),
            archive_dir: dir.path().join("archive"),
            archive_level: 3,
            signer: signer.clone(),
        };
        let report = AuditWriterStore::open(&audit).unwrap().erase(request).unwrap();
        assert_eq!(report.events, 10, "{report:?}");
    }
    let reader = AuditReader::open(&audit).unwrap();
    let mut tenants = reader.tenants().unwrap();
    tenants.sort();
    assert_eq!(tenants, ["acme", "globex"]);
    for (tenant, n) in [("globex", 10), ("acme", 20)] {
        let report = reader.verify(tenant).unwrap();
        assert_eq!((report.events, report.first_break), (n, None), "{tenant}");
    }
    let chain = reader.chain("acme").unwrap();
    assert!(chain.iter().all(|s| s.event.consumer_name.is_none() && s.event.client_ip.is_none()), "erased");
    assert!(reader.chain("globex").unwrap().iter().all(|s| s.event.consumer_name.as_deref() == Some("Gina")));
    // New events of both tenants go on from their heads.
    let mut store = AuditWriterStore::open(&audit).unwrap();
    store.insert_batch(&mut vec![call("acme", DAY0 + 50_000, "cons_c", "Carl"), call("globex", DAY0 + 50_001, "cons_g", "Gina")]).unwrap();
    drop(store);
    let reader = AuditReader::open(&audit).unwrap();
    assert_eq!(reader.verify("acme").unwrap().events, 21);
    assert_eq!(reader.verify("globex").unwrap().events, 11);
}

#[test]
fn an_erasure_runs_a_day_file_at_a_time_while_events_keep_coming() {
    let dir = tempfile::tempdir().unwrap();
    let signer = std::sync::Arc::new(crate::signing::Signer::load_or_create(&dir.path().join("signing.key")).unwrap());
    let audit = dir.path().join("audit");
    // Three days of events; cons_3 is the data subject.
    let input = events(3_000, DAY0, 3 * DAY_MS - 1, 11);
    write(&audit, &input, 500);
    let mut store = AuditWriterStore::open(&audit).unwrap();
    let request = erasure::ErasureRequest {
        tenant: "acme".into(),
        consumer: "cons_3".into(),
        archive_dir: dir.path().join("archive"),
        archive_level: 3,
        signer,
    };
    let held = erasure::maintenance_lock(&audit, "an erasure").unwrap();
    let mut job = store.begin_erasure(request, held).unwrap();
    // Retention cannot start while the job holds the directory.
    assert!(erasure::try_maintenance_lock(&audit, "retention").unwrap().is_none());
    assert!(!store.erasure_step(&mut job).unwrap(), "the first day file");
    // Between steps, new events of the subject on the day already done (kept
    // as they are: they came after) and on a day still to do (erased with it).
    let mut late: Vec<Event> = [DAY0 + 5_000, DAY0 + 2 * DAY_MS + 5_000]
        .into_iter()
        .map(|ts| {
            let mut e = Event::new("acme", Category::Request, "request", "success");
            e.timestamp_ms = ts;
            e.consumer_id = Some("cons_3".into());
            e.client_ip = Some("192.0.2.99".into());
            e
        })
        .collect();
    store.insert_batch(&mut late).unwrap();
    while !store.erasure_step(&mut job).unwrap() {}
    let report = job.into_report();
    assert!(erasure::try_maintenance_lock(&audit, "retention").unwrap().is_some(), "let go at the end");
    let subject = |e: &Event| e.tenant_id == "acme" && e.consumer_id.as_deref() == Some("cons_3");
    let expected = input.iter().filter(|e| subject(e)).count() as u64;
    assert_eq!(report.events, expected + 1, "{report:?}");
    assert_eq!(report.day_files.len(), 3, "{report:?}");

    let reader = AuditReader::open(&audit).unwrap();
    assert_eq!(reader.verify("acme").unwrap().first_break, None);
    let chain = reader.chain("acme").unwrap();
    let kept: Vec<&Event> = chain.iter().map(|s| &s.event).filter(|e| subject(e) && e.client_ip.is_some()).collect();
    assert_eq!(kept.len(), 1, "only the one on a day already erased keeps its address");
    assert!(kept.iter().all(|e| e.client_ip.as_deref() == Some("192.0.2.99")));
    assert!(chain.iter().any(|s| s.event.consumer_id.as_deref() == Some("cons_4") && s.event.client_ip.is_some()), "others keep theirs");
}

/// Application events carry the client's JSON; a float written with more
/// digits than the shortest form (as C and Java encoders write them) must
/// verify in the hot store (archives: `archive_columns`' tests).
#[test]
fn float_details_from_client_json_verify() {
    let dir = tempfile::tempdir().unwrap();
    let texts = [r#"{"metadata": {"ratio": 9.00013289605635609e-8}}"#, r#"{"changes": {"price": {"before": 0.92038135161653933, "after": 0.009259259259259259}}}"#];
    let input: Vec<Event> = texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let mut e = Event::new("acme", Category::App, "order.updated", "success");
            e.timestamp_ms = DAY0 + 1000 + i as i64;
            e.details = Some(serde_json::from_str(text).unwrap());
            e
        })
        .collect();
    write(dir.path(), &input, 10);
    let reader = AuditReader::open(dir.path()).unwrap();
    let report = reader.verify("acme").unwrap();
    assert_eq!((report.events, report.first_break), (2, None));
    let back = newest_first(&reader, "acme");
    assert_eq!(back.iter().rev().map(|e| e.details.clone()).collect::<Vec<_>>(), input.iter().map(|e| e.details.clone()).collect::<Vec<_>>());
}

#[test]
fn wal_checkpoints_run_on_their_own_thread_not_in_a_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = AuditWriterStore::open(dir.path()).unwrap();
    let all = events(wal::COMMITS_PER_CHECKPOINT as usize + 10, DAY0 + 3_600_000, 60_000, 11);
    store.insert_batch(&mut all[..1].to_vec()).unwrap();
    let day = dir.path().join(day_file_name(day_of(all[0].timestamp_ms)));
    // The new file holds its schema; its events are in the WAL.
    let created = std::fs::metadata(&day).unwrap().len();
    // One small commit each, as under `durability = "sync"`: the writer's
    // connection never checkpoints, so the file grows only if the
    // checkpointer ran.
    for e in &all[1..wal::COMMITS_PER_CHECKPOINT as usize] {
        store.insert_batch(&mut vec![e.clone()]).unwrap();
    }
    assert_eq!(std::fs::metadata(&day).unwrap().len(), created, "checkpointed before it was asked");
    for e in &all[wal::COMMITS_PER_CHECKPOINT as usize..] {
        store.insert_batch(&mut vec![e.clone()]).unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::metadata(&day).unwrap().len() == created {
        assert!(std::time::Instant::now() < deadline, "no checkpoint 10 s after {} commits", wal::COMMITS_PER_CHECKPOINT);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Everything is still there, in order, chained.
    drop(store);
    let reader = AuditReader::open(dir.path()).unwrap();
    let back = newest_first(&reader, "acme").len() + newest_first(&reader, "globex").len();
    assert_eq!(back, all.len());
}

#[test]
fn large_events_ask_for_a_wal_checkpoint_by_bytes_not_by_count() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = AuditWriterStore::open(dir.path()).unwrap();
    // A budget of 512 KiB between checkpoints (32 MiB in service).
    store.set_wal_bytes_per_checkpoint(512 << 10);
    let mut rng = SplitMix64(5);
    // Application events with 24 KB of JSON each that zstd cannot shrink
    // much (~18 KB compressed): 30 of them fill the budget in a few
    // commits, far from the 1,000 commits that would otherwise ask for a
    // checkpoint.
    let mut big = |n: usize, at: i64| -> Vec<Event> {
        (0..n)
            .map(|i| {
                let mut e = Event::new("acme", Category::App, "order.updated", "success");
                e.timestamp_ms = at + i as i64;
                let noise: String = (0..24 * 1024).map(|_| char::from(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"[rng.below(62) as usize])).collect();
                e.details = Some(serde_json::json!({ "changes": { "note": { "before": null, "after": noise } } }));
                e
            })
            .collect()
    };
    let at = DAY0 + 3_600_000;
    store.insert_batch(&mut big(1, at)).unwrap();
    let day = dir.path().join(day_file_name(day_of(at)));
    let created = std::fs::metadata(&day).unwrap().len();
    // ~0.2 MB compressed: under the budget, no checkpoint yet.
    store.insert_batch(&mut big(10, at + 100)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(std::fs::metadata(&day).unwrap().len(), created, "checkpointed under the budget");
    // Over it: the checkpointer copies the WAL into the file.
    store.insert_batch(&mut big(30, at + 200)).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::metadata(&day).unwrap().len() == created {
        assert!(std::time::Instant::now() < deadline, "no checkpoint 10 s after more than 512 KiB was committed in 3 commits");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(store);
    let reader = AuditReader::open(dir.path()).unwrap();
    assert_eq!(newest_first(&reader, "acme").len(), 41);
    assert_eq!(reader.verify("acme").unwrap().first_break, None);
}

#[test]
fn a_commit_retried_after_a_failure_counts_each_call_under_its_own_method() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = AuditWriterStore::open(dir.path()).unwrap();
    let call = |method: &str, agent: Option<&str>, at: i64| {
        let mut e = Event::new("acme", Category::Request, "request", "success");
        e.timestamp_ms = DAY0 + HOUR_MS + at;
        e.consumer_id = Some("cons_1".into());
        e.api_id = Some("docs".into());
        e.method = Some(method.into());
        e.path = Some("/docs".into());
        e.user_agent = agent.map(str::to_string);
        e.status_code = Some(200);
        e.latency_us = Some(1_000);
        e
    };
    store.insert_batch(&mut vec![call("GET", None, 0)]).unwrap();
    // Another connection holds the day file's write lock (a backup, an
    // operator's sqlite3) past the writer's busy timeout: the commit fails.
    let day = dir.path().join(day_file_name(day_of(DAY0)));
    let other = Connection::open(&day).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    // An agent seen for the first time, then two methods new to the file.
    let mut attempt = vec![call("GET", Some("first sighting"), 1), call("POST", None, 2), call("PUT", None, 3)];
    assert!(store.insert_batch(&mut attempt).is_err());
    other.execute_batch("COMMIT").unwrap();
    drop(other);
    // The writer's retry of the same events.
    store.insert_batch(&mut attempt).unwrap();
    store.flush_rollups().unwrap();
    drop(store);
    let reader = AuditReader::open(dir.path()).unwrap();
    let profile = reader.consumer_profile("acme", "cons_1", DAY0, DAY0 + DAY_MS, 10).unwrap();
    let methods: BTreeMap<String, u64> = profile.methods.into_iter().collect();
    let want: BTreeMap<String, u64> = [("GET".to_string(), 2), ("POST".to_string(), 1), ("PUT".to_string(), 1)].into();
    assert_eq!(methods, want);
}

/// A data directory for the retention tests: its signing key and the
/// audit directory, empty yet.
struct RetentionDir {
    dir: tempfile::TempDir,
    audit: std::path::PathBuf,
    signer: crate::signing::Signer,
}

fn retention_dir() -> RetentionDir {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    let signer = crate::signing::Signer::load_or_create(&dir.path().join("signing.key")).unwrap();
    RetentionDir { dir, audit, signer }
}

impl RetentionDir {
    /// Retention with `policy` as of `now`, archiving into `<dir>/archive`;
    /// it must find nothing wrong.
    fn run(&self, policy: &crate::settings::retention::RetentionPolicy, now: i64) -> retention::RetentionReport {
        let report = retention::run(&self.audit, &self.dir.path().join("archive"), policy, now, &self.signer).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        report
    }
}

/// Hot days for a day, archives for 30: the retention tests' policy.
fn one_hot_day() -> crate::settings::retention::RetentionPolicy {
    use crate::settings::retention::{RetentionPolicy, RetentionSettings};
    RetentionPolicy::uniform(RetentionSettings { hot_days: 1, archive_days: 30 })
}

/// A call of `tenant`'s consumer `cons_1` at `ts`: `GET /orders`, 200 in 1 ms.
fn call_at(tenant: &str, ts: i64) -> Event {
    let mut e = Event::new(tenant, Category::Request, "request", "success");
    e.timestamp_ms = ts;
    e.consumer_id = Some("cons_1".into());
    e.method = Some("GET".into());
    e.path = Some("/orders".into());
    e.status_code = Some(200);
    e.latency_us = Some(1_000);
    e
}

/// `days` days of `tenant`'s calls from DAY0, one an hour, a batch a day.
fn hourly_calls(store: &mut AuditWriterStore, tenant: &str, days: i64) {
    for d in 0..days {
        let mut batch: Vec<Event> = (0..24).map(|h| call_at(tenant, DAY0 + d * DAY_MS + h * HOUR_MS)).collect();
        store.insert_batch(&mut batch).unwrap();
    }
}

/// Retention drops a day file once every tenant in it is archived. A call
/// longer than a day has its event stamped with its start, so it can land
/// in a file retention is looking at: the writer opens the file, commits
/// the event and closes it again. Retention must judge the file by what it
/// holds under the writer's open days, or it deletes an event it never
/// archived.
#[test]
fn retention_keeps_a_day_file_that_a_late_event_reached_while_it_looked() {
    let t = retention_dir();
    let audit = &t.audit;
    // Six days of acme, an event an hour; day 5 is today.
    let mut store = AuditWriterStore::open(audit).unwrap();
    hourly_calls(&mut store, "acme", 6);
    let now = DAY0 + 5 * DAY_MS + 12 * HOUR_MS;
    let late_day = day_of(DAY0) + 3;
    // Day 3 (the day before yesterday) is archived and its file dropped in
    // this run; as retention comes to the file, a call that began late on
    // day 3 ends and its event is committed there.
    let mut writer = Some(store);
    retention::BEFORE_DAY_LOCK.with(|hook| {
        *hook.borrow_mut() = Some(Box::new(move |day| {
            if day == late_day {
                let mut store = writer.take().expect("once");
                store.insert_batch(&mut vec![call_at("acme", DAY0 + 4 * DAY_MS - 60_000), call_at("acme", now)]).unwrap();
            }
        }))
    });
    let report = t.run(&one_hot_day(), now);
    retention::BEFORE_DAY_LOCK.with(|hook| hook.borrow_mut().take());
    assert!(audit.join(day_file_name(late_day)).exists(), "day 3's file, with the late event, was dropped: {:?}", report.actions);
    for report in integrity::verify_dir(audit, None, &t.signer.public_key()).unwrap() {
        assert!(report.ok, "{report:?}");
    }
    let reader = AuditReader::open(audit).unwrap();
    assert_eq!(reader.chain("acme").unwrap().last().map(|e| e.event.seq), Some(6 * 24 + 2));
}

/// A late event (a long call stamped with its start) lands in an older day
/// file after later days' events, so archiving that day stops short of it:
/// the file stays, with the archived events and the late one. Statistics
/// hide the archived events, as every reader does — the rollups of the
/// file hold them too, so they cannot answer for that file.
#[test]
fn statistics_leave_out_archived_events_of_a_day_file_a_late_event_keeps() {
    use super::stats::query::{Metrics, StatsQuery};
    let t = retention_dir();
    let audit = &t.audit;
    {
        let mut store = AuditWriterStore::open(audit).unwrap();
        hourly_calls(&mut store, "acme", 4);
        // Committed after day 2's events, stamped on day 1.
        store.insert_batch(&mut vec![call_at("acme", DAY0 + DAY_MS + 23 * HOUR_MS + 30 * 60_000)]).unwrap();
        store.flush_rollups().unwrap();
    }
    // Day 1 is archived at the start of day 3, up to day 2's first event.
    t.run(&one_hot_day(), DAY0 + 3 * DAY_MS + 12 * HOUR_MS);
    assert!(audit.join(day_file_name(day_of(DAY0) + 1)).exists(), "the late event keeps day 1's file");
    let reader = AuditReader::open(audit).unwrap();
    assert_eq!(reader.archived_through("acme").0, 48);
    let (from, to) = (DAY0 + DAY_MS, DAY0 + 2 * DAY_MS);
    let hot: Vec<Event> = scan_all(&reader, &EventFilter { tenant_id: "acme".into(), from_ms: Some(from), to_ms: Some(to - 1), ..Default::default() }, None);
    assert_eq!(hot.len(), 1, "only the late event is hot");

    for mode in [Activity::Totals { latency: true }, Activity::Totals { latency: false }, Activity::Hourly] {
        for (a, b) in [(from, to), (from + 30 * 60_000, to), (from + HOUR_MS, to)] {
            let got = summed(reader.consumer_activity("acme", a, b, None, mode).unwrap());
            assert_eq!(got.values().map(|v| v.calls).sum::<u64>(), 1, "{mode:?}, {a}..{b}");
        }
    }
    let paths = reader.consumer_paths("acme", from, to, "cons_1").unwrap();
    assert_eq!(paths.values().map(|p| p.calls).sum::<u64>(), 1);
    let profile = reader.consumer_profile("acme", "cons_1", from, to, 10).unwrap();
    assert_eq!((profile.totals.calls, profile.by_hour_of_day[23]), (1, 1));
    for force_events in [false, true] {
        let q = StatsQuery {
            filter: EventFilter { tenant_id: "acme".into(), from_ms: Some(from), to_ms: Some(to - 1), ..Default::default() },
            group_by: None,
            top: 10,
            metrics: Metrics { latency: true, rate_limited: false, distinct_consumers: true, distinct_ips: false },
            force_events,
        };
        assert_eq!(reader.request_stats(&q).unwrap().totals.calls, 1, "force_events {force_events}");
    }
    // The timeline agrees.
    assert_eq!(reader.path_timeline("acme", from, to).unwrap().iter().map(|p| p.calls).sum::<u64>(), 1);
}

/// Retention deletes a tenant's expired blocks from a day file another
/// tenant keeps; when they were the file's newest, SQLite hands their ids
/// out again. A late event committed there afterwards must still count as
/// past the rollup watermark — for readers until the rollups are written,
/// and for the replay when the writer stops before writing them.
#[test]
fn a_block_written_after_retention_deleted_the_newest_ones_is_not_taken_as_rolled_up() {
    use crate::settings::retention::{RetentionPolicy, RetentionSettings};
    let t = retention_dir();
    let audit = &t.audit;
    {
        let mut store = AuditWriterStore::open(audit).unwrap();
        // globex first, so acme's block is the newest of the file.
        hourly_calls(&mut store, "globex", 1);
        hourly_calls(&mut store, "acme", 1);
        store.flush_rollups().unwrap();
    }
    // acme's day 0 is archived and its archive expires at the start of
    // day 3; globex keeps the file.
    let mut policy = RetentionPolicy::uniform(RetentionSettings { hot_days: 30, archive_days: 30 });
    policy.tenants.insert("acme".into(), RetentionSettings { hot_days: 1, archive_days: 1 });
    let report = t.run(&policy, DAY0 + 3 * DAY_MS + 12 * HOUR_MS);
    assert!(report.actions.iter().any(|a| a.kind == retention::ActionKind::ArchiveDeleted), "{:?}", report.actions);
    let counted = |audit: &Path| {
        let reader = AuditReader::open(audit).unwrap();
        summed(reader.consumer_activity("globex", DAY0, DAY0 + DAY_MS, None, Activity::Totals { latency: true }).unwrap())
            .values()
            .map(|a| a.calls)
            .sum::<u64>()
    };
    assert_eq!(counted(audit), 24);
    {
        // A late call of globex, then a stop before the rollups are written.
        let mut store = AuditWriterStore::open(audit).unwrap();
        store.insert_batch(&mut vec![call_at("globex", DAY0 + 23 * HOUR_MS)]).unwrap();
        assert_eq!(counted(audit), 25, "read past the watermark");
    }
    drop(AuditWriterStore::open(audit).unwrap());
    assert_eq!(counted(audit), 25, "replayed after the restart");
}

/// Readers share the maintenance lock, and a shared `flock` gives an
/// exclusive waiter no priority: a steady stream of overlapping readers
/// (API verifications, `keytrail verify`, `archive cat`) kept retention
/// out for good. A waiting writer now announces itself first (an exclusive
/// lock on `maintenance.intent`): readers that come after wait behind it,
/// the ones already reading finish, and the writer gets its turn within
/// its wait. A reader that gives up says what it waited behind.
#[test]
fn a_waiting_writer_is_not_starved_by_overlapping_readers() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().to_path_buf();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    // Readers one after another, each reading 120 ms, a new one every
    // 40 ms: at any moment at least two are reading.
    let readers = {
        let (audit, stop) = (audit.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut reading, mut refused) = (std::collections::VecDeque::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match erasure::read_lock(&audit, Duration::ZERO).unwrap() {
                    Some(guard) => reading.push_back((Instant::now(), guard)),
                    None => refused.push(erasure::busy_message(&audit)),
                }
                while reading.front().is_some_and(|(at, _)| at.elapsed() >= Duration::from_millis(120)) {
                    reading.pop_front();
                }
                std::thread::sleep(Duration::from_millis(40));
            }
            refused
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let (held, waited) = erasure::maintenance_lock_within(&audit, "retention", Duration::from_secs(3))
        .expect("retention got its turn among the readers");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert!(waited.is_some(), "the readers held the directory: it waited");
    // Held: no reader gets in.
    assert!(erasure::read_lock(&audit, Duration::from_millis(100)).unwrap().is_none());
    drop(held);
    stop.store(true, Ordering::Relaxed);
    let refused = readers.join().unwrap();
    assert!(!refused.is_empty(), "the readers behind the writer waited");
    assert!(refused.iter().all(|m| m.contains("retention")), "{refused:?}");
    // Let go: readers read again, and the writer's announcement is gone.
    assert!(erasure::read_lock(&audit, Duration::ZERO).unwrap().is_some());
    assert!(!erasure::maintenance_holder(&audit).contains("retention"), "{}", erasure::maintenance_holder(&audit));
}

/// The alert engine's read: every event after a position, in chain order,
/// across day files, with the fields rules match on and nothing else
/// decoded; from a time, only the blocks that reach it.
#[test]
fn events_after_a_position_come_in_chain_order_with_the_matching_fields() {
    let dir = tempfile::tempdir().unwrap();
    let input = events(3_000, DAY0 - 2 * HOUR_MS, 2 * DAY_MS, 7);
    write(dir.path(), &input, 300);
    let reader = AuditReader::open(dir.path()).unwrap();
    let chain: Vec<Event> = reader.chain("acme").unwrap().into_iter().map(|s| s.event).collect();
    assert_eq!(reader.chain_head("acme").unwrap(), chain.len() as u64);
    assert_eq!(reader.chain_head("nobody").unwrap(), 0);
    use super::block::TextField::*;
    let texts = [EventType, Outcome, Consumer, Api, Method, Path, ClientIp];
    for after in [0, 1, 299, 300, 301, chain.len() as u64 / 2, chain.len() as u64 - 1, chain.len() as u64] {
        let mut seen = Vec::new();
        reader.events_after("acme", after, None, &texts, |e| {
            seen.push(e.clone());
            true
        })
        .unwrap();
        let wanted = &chain[after as usize..];
        assert_eq!(seen.len(), wanted.len(), "after {after}");
        for (got, full) in seen.iter().zip(wanted) {
            let matched = |e: &Event| {
                (e.seq, e.timestamp_ms, e.category, e.status_code, e.event_type.clone(), e.outcome.clone(), e.consumer_id.clone())
            };
            assert_eq!(matched(got), matched(full));
            assert_eq!((&got.api_id, &got.path, &got.client_ip, &got.method), (&full.api_id, &full.path, &full.client_ip, &full.method));
            assert!(got.user_agent.is_none() && got.details.is_none() && got.request_id.is_none() && got.latency_us.is_none(), "{got:?}");
            assert!(got.consumer_name.is_none() && got.actor.is_none(), "texts not asked for are not decoded: {got:?}");
        }
    }
    // Stopping early, and reading from a time: no event at or after it is
    // left out, and the blocks wholly before it are not read.
    let mut count = 0;
    reader.events_after("acme", 0, None, &texts, |_| {
        count += 1;
        count < 10
    })
    .unwrap();
    assert_eq!(count, 10);
    let from = DAY0 + 12 * HOUR_MS;
    let mut first = None;
    let mut passed = 0;
    reader.events_after("acme", 0, Some(from), &[EventType], |e| {
        first.get_or_insert(e.seq);
        passed += 1;
        true
    })
    .unwrap();
    let first = first.unwrap();
    assert!(first > 1 && passed == chain.len() as u64 - first + 1, "{first} {passed}");
    assert_eq!(chain[..first as usize - 1].iter().filter(|e| e.timestamp_ms >= from).count(), 0, "none at or after it skipped");
    assert!(chain[first as usize - 1..].iter().take(300).any(|e| e.timestamp_ms >= from), "the first block read reaches it");
}
