//! Store benchmark: audit ingest and investigation queries on keytrail's
//! embedded store, beside the same rows in PostgreSQL (COPY), on one machine
//! in one run.
//!
//!   cargo bench --bench store -- --events 10000000     # the full run (by hand)
//!   cargo bench --bench store -- --smoke               # small, for CI
//!
//! Options: `--events N`, `--days D` (time span of the data), `--no-pg`,
//! `--pg "psql connection args"` (default `-h 127.0.0.1 -U postgres -d postgres`),
//! `--keep DIR` (make the store in DIR and keep it; if DIR holds one, reuse
//! it and run only the queries), `--export-only` (with `--keep`: only the
//! export, twenty times, for profiling).
//!
//! The data is deterministic: tenants with skewed sizes, a skewed consumer
//! population, hundreds of paths, 5 % 4xx, 0.5 % 5xx, log-normal latencies,
//! tens of user agents and thousands of client IPs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use keytrail::audit::AuditPipeline;
use keytrail::config::{AuditConfig, QueueFullPolicy};
use keytrail::event::{Category, Event};
use keytrail::store::audit::rollup::{ConsumerAgg, DAY_MS, HOUR_MS};
use keytrail::store::audit::stats::query::{GroupBy, Metrics, Source, StatsQuery};
use keytrail::store::audit::stats::Activity;
use keytrail::store::audit::{AuditReader, EventFilter};

/// The allocator the keytrail binary uses, so the store is measured as it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// ---------- deterministic data: benches/common/events.rs ----------

#[path = "common/events.rs"]
mod events;
use events::{Generator, START_MS};

// ---------- measurement helpers ----------

/// CPU seconds of the audit writer thread so far.
fn writer_cpu_seconds() -> f64 {
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.starts_with("keytrail-audit") {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
            let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
                + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            return ticks / 100.0;
        }
    }
    0.0
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() { dir_bytes(&entry.path()) } else { meta.len() };
    }
    total
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

fn time_ms(mut f: impl FnMut() -> u64) -> (f64, u64) {
    let mut times = Vec::new();
    let mut rows = 0;
    f(); // warm
    for _ in 0..5 {
        let t = Instant::now();
        rows = f();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    (median(times), rows)
}

// ---------- keytrail ----------

struct IngestResult {
    events_per_s: f64,
    cpu_us_per_event: f64,
    writer_cpu_us_per_event: f64,
    bytes_per_event: f64,
    per_million: Vec<f64>,
}

fn ingest_keytrail(dir: &Path, total: u64, days: u64) -> IngestResult {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let config = AuditConfig {
        flush_interval: Duration::from_millis(50),
        batch_max_events: 10_000,
        queue_capacity: 100_000,
        queue_full: QueueFullPolicy::Block,
        durability: Default::default(),
        log_api_calls: true,
        sample_seed: None,
        checkpoint_every_events: 10_000,
        checkpoint_interval: Duration::from_secs(60),
    };
    // Signed checkpoints on, as `keytrail serve` runs.
    let signer = keytrail::signing::Signer::load_or_create(&dir.join("signing.key")).unwrap();
    let pipeline = std::sync::Arc::new(AuditPipeline::start_signed(dir.join("audit"), &config, Some(signer)).unwrap());
    // Committed-count samples, to see whether the rate decays as the store grows.
    let monitor = {
        let pipeline = pipeline.clone();
        std::thread::spawn(move || {
            let mut marks = vec![Instant::now()];
            let step = 1_000_000.min(total.max(1));
            loop {
                let done = pipeline.stats().committed.load(std::sync::atomic::Ordering::Relaxed);
                while done >= step * marks.len() as u64 && marks.len() as u64 <= total / step {
                    marks.push(Instant::now());
                }
                if done >= total {
                    return marks;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let mut generator = Generator::new(total, days);
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    for _ in 0..total {
        pipeline.record(generator.event());
    }
    runtime.block_on(pipeline.flush());
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let writer_cpu = writer_cpu_seconds();
    runtime.block_on(pipeline.shutdown());
    let marks = monitor.join().unwrap();
    let per_million = marks.windows(2).map(|w| 1_000_000f64.min(total as f64) / (w[1] - w[0]).as_secs_f64()).collect();
    // Fold each file's WAL into it before measuring sizes.
    for entry in std::fs::read_dir(dir.join("audit")).unwrap().flatten() {
        if entry.path().extension().is_some_and(|x| x == "db") {
            let conn = rusqlite::Connection::open(entry.path()).unwrap();
            conn.pragma_update(None, "wal_checkpoint", "TRUNCATE").ok();
        }
    }
    IngestResult {
        events_per_s: total as f64 / elapsed,
        cpu_us_per_event: cpu * 1e6 / total as f64,
        writer_cpu_us_per_event: writer_cpu * 1e6 / total as f64,
        bytes_per_event: dir_bytes(dir) as f64 / total as f64,
        per_million,
    }
}

/// Generation alone, to separate the generator's cost from the pipeline's.
fn generator_cpu_us(total: u64, days: u64) -> f64 {
    let n = total.min(1_000_000);
    let mut generator = Generator::new(total, days);
    let cpu0 = cpu_seconds();
    let t = Instant::now();
    let mut sink = 0u64;
    for _ in 0..n {
        sink = sink.wrapping_add(generator.event().latency_us.unwrap_or(0));
    }
    std::hint::black_box(sink);
    let _ = t;
    (cpu_seconds() - cpu0) * 1e6 / n as f64
}

/// Q6: the CSV export's own path — rows newest first (CSV carries no chain
/// hashes; the JSON export does), written as CSV lines into a buffer (flushed every MiB, as the HTTP export
/// sends chunks). Returns the rows written.
fn export_csv(reader: &AuditReader, tenant: &str, from: i64, to: i64) -> u64 {
    let filter = EventFilter { tenant_id: tenant.into(), category: Some(Category::Request), from_ms: Some(from), to_ms: Some(to), ..EventFilter::default() };
    let mut buf = String::new();
    let mut n = 0;
    reader
        .scan(&filter, None, false, |e| {
            keytrail::audit::views::csv_line(e, &mut buf);
            if buf.len() > 1 << 20 {
                buf.clear();
            }
            n += 1;
            true
        })
        .unwrap();
    n
}

/// The raw request events of a tenant in `[from, to)`, for checking the
/// aggregations against (not timed).
fn raw_events(reader: &AuditReader, tenant: &str, from: i64, to: i64) -> Vec<Event> {
    let filter = EventFilter { tenant_id: tenant.into(), category: Some(Category::Request), from_ms: Some(from), to_ms: Some(to - 1), ..EventFilter::default() };
    let mut out = Vec::new();
    reader.scan(&filter, None, false, |s| { out.push(s.event.clone()); true }).unwrap();
    out
}

fn nearest_rank(sorted: &[u64], q: f64) -> f64 {
    sorted[((q * sorted.len() as f64).ceil() as usize).max(1) - 1] as f64
}

/// The investigation queries on keytrail's store, each checked once against
/// a count over the raw events before it is timed.
fn queries_keytrail(dir: &Path, end_ms: i64) -> Vec<(String, f64, u64)> {
    let (tenant, consumer) = ("tenant-00", "cons_00_0000");
    let reader = AuditReader::open(dir).unwrap();
    let mut out = Vec::new();

    let q1 = EventFilter {
        tenant_id: tenant.into(),
        category: Some(Category::Request),
        consumer_id: Some(consumer.into()),
        from_ms: Some(end_ms - HOUR_MS),
        to_ms: Some(end_ms),
        ..EventFilter::default()
    };
    out.push(("Q1 consumer, 1 h, newest 500 (the list API's path)".to_string(), time_ms(|| {
        let mut n = 0;
        reader.scan(&q1, Some(500), false, |_| { n += 1; true }).unwrap();
        n
    })));

    // Q2: the raw events' answer first.
    {
        let mut want: std::collections::BTreeMap<Option<String>, (u64, u64, std::collections::BTreeSet<String>)> = Default::default();
        for e in raw_events(&reader, tenant, end_ms - HOUR_MS, end_ms) {
            let entry = want.entry(e.path).or_default();
            entry.0 += 1;
            entry.1 += u64::from(e.status_code.unwrap_or(0) >= 400);
            if let Some(consumer) = e.consumer_id {
                entry.2.insert(consumer.to_string());
            }
        }
        let want: std::collections::BTreeMap<_, _> = want.into_iter().map(|(p, (c, e, s))| (p, (c, e, s.len() as u64))).collect();
        let got: std::collections::BTreeMap<_, _> = reader
            .path_timeline(tenant, end_ms - HOUR_MS, end_ms)
            .unwrap()
            .into_iter()
            .map(|p| (p.path, (p.calls, p.errors, p.distinct_consumers)))
            .collect();
        assert_eq!(got, want, "Q2 differs from the raw events");
    }
    out.push(("Q2 tenant, 1 h, by path: calls, errors, distinct consumers".into(), time_ms(|| {
        reader.path_timeline(tenant, end_ms - HOUR_MS, end_ms).unwrap().len() as u64
    })));

    // Q3, checked against the raw events.
    {
        let profile = reader.consumer_profile(tenant, consumer, end_ms - 14 * DAY_MS, end_ms, 10).unwrap();
        let events: Vec<Event> = raw_events(&reader, tenant, end_ms - 14 * DAY_MS, end_ms)
            .into_iter()
            .filter(|e| e.consumer_id.as_deref() == Some(consumer))
            .collect();
        assert_eq!(profile.totals.calls, events.len() as u64, "Q3 calls");
        assert_eq!(profile.totals.errors(), events.iter().filter(|e| e.status_code.unwrap_or(0) >= 400).count() as u64, "Q3 errors");
        let mut paths: std::collections::HashMap<&str, u64> = Default::default();
        let mut hours = [0u64; 24];
        for e in &events {
            *paths.entry(e.path.as_deref().unwrap()).or_default() += 1;
            hours[(e.timestamp_ms.rem_euclid(DAY_MS) / HOUR_MS) as usize] += 1;
        }
        assert_eq!(profile.by_hour_of_day, hours, "Q3 hours");
        for (path, calls, _) in &profile.top_paths {
            assert_eq!(paths[path.as_str()], *calls, "Q3 path {path}");
        }
    }
    out.push(("Q3 consumer profile, 14 days: methods, top 10 paths, error rate, busiest hour".into(), time_ms(|| {
        let p = reader.consumer_profile(tenant, consumer, end_ms - 14 * DAY_MS, end_ms, 10).unwrap();
        (p.methods.len() + p.top_paths.len() + 2) as u64
    })));

    let error_rates = |reader: &AuditReader| -> Vec<(Option<String>, f64)> {
        let mut by: std::collections::HashMap<Option<String>, ConsumerAgg> = Default::default();
        for ((_, c), agg) in reader.consumer_activity(tenant, end_ms - DAY_MS, end_ms, None, Activity::Totals { latency: false }).unwrap() {
            by.entry(c).or_default().merge(&agg);
        }
        let mut out: Vec<(Option<String>, f64)> =
            by.into_iter().map(|(c, a)| (c, a.errors() as f64 / a.calls as f64)).filter(|(_, r)| *r > 0.10).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    };
    {
        let mut by: std::collections::HashMap<Option<String>, (u64, u64)> = Default::default();
        for e in raw_events(&reader, tenant, end_ms - DAY_MS, end_ms) {
            let entry = by.entry(e.consumer_id.map(String::from)).or_default();
            entry.0 += 1;
            entry.1 += u64::from(e.status_code.unwrap_or(0) >= 400);
        }
        let mut want: Vec<(Option<String>, f64)> =
            by.into_iter().map(|(c, (n, err))| (c, err as f64 / n as f64)).filter(|(_, r)| *r > 0.10).collect();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(error_rates(&reader), want, "Q4 differs from the raw events");
    }
    out.push(("Q4 consumers above 10 % errors, 24 h".into(), time_ms(|| error_rates(&reader).len() as u64)));

    let percentiles = |reader: &AuditReader| -> std::collections::HashMap<Option<String>, (f64, f64)> {
        let mut by: std::collections::HashMap<Option<String>, ConsumerAgg> = Default::default();
        for ((_, c), agg) in reader.consumer_activity(tenant, end_ms - 7 * DAY_MS, end_ms, None, Activity::Totals { latency: true }).unwrap() {
            by.entry(c).or_default().merge(&agg);
        }
        by.into_iter().map(|(c, a)| (c, (a.latency.quantile(0.95).unwrap(), a.latency.quantile(0.99).unwrap()))).collect()
    };
    {
        let mut by: std::collections::HashMap<Option<String>, Vec<u64>> = Default::default();
        for e in raw_events(&reader, tenant, end_ms - 7 * DAY_MS, end_ms) {
            by.entry(e.consumer_id.map(String::from)).or_default().push(e.latency_us.unwrap());
        }
        let got = percentiles(&reader);
        assert_eq!(got.len(), by.len(), "Q5 consumers");
        for (c, mut values) in by {
            values.sort_unstable();
            let (p95, p99) = got[&c];
            for (q, approx) in [(0.95, p95), (0.99, p99)] {
                let exact = nearest_rank(&values, q);
                assert!((approx - exact).abs() / exact <= keytrail::store::sketch::RELATIVE_ERROR + 1e-9, "Q5 p{q} {c:?}: {approx} vs {exact}");
            }
        }
    }
    out.push(("Q5 p95/p99 per consumer, 7 days (sketches, ≤ 1 % error)".into(), time_ms(|| percentiles(&reader).len() as u64)));

    let (ms, rows) = time_ms(|| export_csv(&reader, tenant, end_ms - DAY_MS, end_ms));
    out.push(("Q6 one tenant-day as CSV (the export's path)".into(), (ms, rows)));

    // Q7 and Q8: GET /v1/audit/{tenant}/stats's two paths, checked first.
    let stats_query = |days: i64, group_by: Option<GroupBy>, metrics: Metrics| StatsQuery {
        filter: EventFilter { tenant_id: tenant.into(), from_ms: Some(end_ms - days * DAY_MS), to_ms: Some(end_ms - 1), ..EventFilter::default() },
        group_by,
        top: 10,
        metrics,
        force_events: false,
    };
    let q7 = stats_query(1, None, Metrics::ALL);
    {
        let stats = reader.request_stats(&q7).unwrap();
        assert_eq!(stats.source, Source::Events);
        let events = raw_events(&reader, tenant, end_ms - DAY_MS, end_ms);
        assert_eq!(stats.totals.calls, events.len() as u64, "Q7 calls");
        assert_eq!(stats.totals.rate_limited, Some(events.iter().filter(|e| e.status_code == Some(429)).count() as u64), "Q7 429s");
        let ips: std::collections::HashSet<&str> = events.iter().filter_map(|e| e.client_ip.as_deref()).collect();
        assert_eq!(stats.totals.ips.len(), ips.len(), "Q7 client IPs");
    }
    out.push(("Q7 /stats, 24 h, every measure (429s and client IPs: from the events)".into(), time_ms(|| reader.request_stats(&q7).unwrap().totals.calls)));
    let q8 = stats_query(7, Some(GroupBy::Consumer), Metrics { latency: true, rate_limited: false, distinct_consumers: true, distinct_ips: false });
    {
        let stats = reader.request_stats(&q8).unwrap();
        assert_eq!(stats.source, Source::Rollups);
        let events = raw_events(&reader, tenant, end_ms - 7 * DAY_MS, end_ms);
        assert_eq!(stats.totals.calls, events.len() as u64, "Q8 calls");
        assert_eq!(stats.totals.errors(), events.iter().filter(|e| e.status_code.unwrap_or(0) >= 400).count() as u64, "Q8 errors");
    }
    out.push(("Q8 /stats, 7 days by consumer, top 10, latency quantiles (from the rollups)".into(), time_ms(|| reader.request_stats(&q8).unwrap().groups.len() as u64)));
    out.into_iter().map(|(name, (ms, rows))| (name, ms, rows)).collect()
}

// ---------- PostgreSQL ----------

fn psql(args: &[String], input: &str) -> String {
    let mut child = Command::new("psql")
        .args(args)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("psql must be installed (apt-get install postgresql-client)");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const PG_TABLE: &str = "keytrail_bench_events";

fn pg_ingest(pg: &[String], work: &Path, total: u64, days: u64) -> (f64, f64) {
    // The same rows as CSV, written before the clock starts.
    let csv = work.join("events.csv");
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&csv).unwrap());
        let mut generator = Generator::new(total, days);
        for seq in 1..=total {
            let e = generator.event();
            let q = |v: Option<&str>| v.unwrap_or_default().replace('"', "\"\"");
            writeln!(
                out,
                "{},{},{},{},request,request,{},{},\"{}\",{},\"{}\",{},\"{}\",{},\"{}\",{},{},\"{}\",{},{},{},\"{}\",\"{}\",\"{}\",\\x{}",
                e.tenant_id, seq, keytrail::event::derived_event_id(&e.tenant_id, seq, e.timestamp_ms), e.timestamp_ms, q(e.request_id.as_deref()), q(e.consumer_id.as_deref()), q(e.consumer_name.as_deref()), q(e.api_id.as_deref()),
                q(e.key_hint.as_deref()), q(e.key_id.as_deref()), q(e.actor.as_deref()), q(e.method.as_deref()), q(e.path.as_deref()), e.status_code.unwrap_or(0), e.latency_us.unwrap_or(0),
                q(e.user_agent.as_deref()), e.request_size_bytes.unwrap_or(0), e.response_size_bytes.unwrap_or(0), e.upstream_latency_us.unwrap_or(0),
                q(e.client_ip.as_deref()), q(e.error_code.as_deref()), e.outcome,
                keytrail::event::to_hex(&e.chain_hash(&[0; 32], Some(&[1; 32])).unwrap())
            )
            .unwrap();
        }
    }
    psql(pg, &format!(
        "DROP TABLE IF EXISTS {PG_TABLE};
         CREATE TABLE {PG_TABLE} (tenant_id text, seq bigint, event_id text, ts_ms bigint, category text, event_type text,
           request_id text, consumer_id text, consumer_name text, api_id text, key_hint text, key_id text, actor text, method text, path text,
           status_code int, latency_us bigint, user_agent text, request_size_bytes bigint, response_size_bytes bigint,
           upstream_latency_us bigint, client_ip text, error_code text, outcome text, hash bytea,
           PRIMARY KEY (tenant_id, seq));
         CREATE INDEX ON {PG_TABLE} (tenant_id, category, ts_ms);
         CREATE INDEX ON {PG_TABLE} (tenant_id, consumer_id, ts_ms);"));
    let t = Instant::now();
    psql(pg, &format!("\\copy {PG_TABLE} FROM '{}' WITH (FORMAT csv)\n", csv.display()));
    let elapsed = t.elapsed().as_secs_f64();
    psql(pg, &format!("VACUUM ANALYZE {PG_TABLE};"));
    let size: f64 = psql(pg, &format!("\\t\nSELECT pg_total_relation_size('{PG_TABLE}');")).trim().parse().unwrap_or(0.0);
    let _ = std::fs::remove_file(&csv);
    (total as f64 / elapsed, size / total as f64)
}

fn pg_queries(pg: &[String], end_ms: i64) -> Vec<(f64, u64)> {
    let hour = 3_600_000i64;
    let day = 24 * hour;
    let t = PG_TABLE;
    let (tenant, consumer) = ("'tenant-00'", "'cons_00_0000'");
    let queries = [
        format!("SELECT * FROM {t} WHERE tenant_id = {tenant} AND category = 'request' AND consumer_id = {consumer} AND ts_ms BETWEEN {} AND {end_ms} ORDER BY ts_ms DESC, seq DESC LIMIT 500", end_ms - hour),
        format!("SELECT path, count(*), sum((status_code >= 400)::int), count(DISTINCT consumer_id) FROM {t} WHERE tenant_id = {tenant} AND category = 'request' AND ts_ms BETWEEN {} AND {end_ms} GROUP BY path", end_ms - hour),
        format!("SELECT method, count(*) FROM {t} WHERE tenant_id = {tenant} AND consumer_id = {consumer} AND ts_ms >= {f} GROUP BY method;
                 SELECT path, count(*) c FROM {t} WHERE tenant_id = {tenant} AND consumer_id = {consumer} AND ts_ms >= {f} GROUP BY path ORDER BY c DESC LIMIT 10;
                 SELECT avg((status_code >= 400)::int) FROM {t} WHERE tenant_id = {tenant} AND consumer_id = {consumer} AND ts_ms >= {f};
                 SELECT (ts_ms / 3600000) % 24 h, count(*) c FROM {t} WHERE tenant_id = {tenant} AND consumer_id = {consumer} AND ts_ms >= {f} GROUP BY h ORDER BY c DESC LIMIT 1", f = end_ms - 14 * day),
        format!("SELECT consumer_id, avg((status_code >= 400)::int) r FROM {t} WHERE tenant_id = {tenant} AND category = 'request' AND ts_ms >= {} GROUP BY consumer_id HAVING avg((status_code >= 400)::int) > 0.10", end_ms - day),
        format!("SELECT consumer_id, percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_us), percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_us) FROM {t} WHERE tenant_id = {tenant} AND category = 'request' AND ts_ms >= {} GROUP BY consumer_id", end_ms - 7 * day),
        format!("COPY (SELECT * FROM {t} WHERE tenant_id = {tenant} AND category = 'request' AND ts_ms BETWEEN {} AND {end_ms} ORDER BY ts_ms DESC, seq DESC) TO STDOUT WITH (FORMAT csv)", end_ms - day),
    ];
    queries
        .iter()
        .map(|q| {
            // One session per query: a warm-up run, then five timed runs.
            let script = format!("\\o /dev/null\n{q};\n\\timing on\n{q};\n{q};\n{q};\n{q};\n{q};\n");
            let out = psql(pg, &script);
            let statements = q.matches(';').count() + 1;
            let times: Vec<f64> = out
                .lines()
                .filter_map(|l| l.strip_prefix("Time: "))
                .filter_map(|l| l.split_whitespace().next()?.parse().ok())
                .collect();
            // Sum the statements of each run (Q3 is four statements).
            let runs: Vec<f64> = times.chunks(statements).map(|c| c.iter().sum()).collect();
            let rows: u64 = psql(pg, &format!("\\t\nSELECT count(*) FROM ({}) x;", q.split(';').next().unwrap().replace("COPY (", "").replace(") TO STDOUT WITH (FORMAT csv)", "")))
                .trim()
                .parse()
                .unwrap_or(0);
            (median(runs), rows)
        })
        .collect()
}

fn main() {
    // The writer reports failed commits through the log.
    keytrail::init_logging("warn");
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let mut total = 1_000_000u64;
    let mut days = 14u64;
    let mut use_pg = true;
    let mut keep: Option<PathBuf> = None;
    // With --keep, runs only Q6 twenty times: for profiling the export.
    let mut export_only = false;
    let mut pg: Vec<String> = "-h 127.0.0.1 -U postgres -d postgres".split(' ').map(String::from).collect();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--events" => total = args.next().and_then(|v| v.replace('_', "").parse().ok()).expect("--events N"),
            "--days" => days = args.next().and_then(|v| v.parse().ok()).expect("--days D"),
            "--smoke" => total = 20_000,
            "--no-pg" => use_pg = false,
            "--export-only" => export_only = true,
            "--keep" => keep = Some(PathBuf::from(args.next().expect("--keep DIR"))),
            "--pg" => pg = args.next().expect("--pg ARGS").split_whitespace().map(String::from).collect(),
            other => panic!("unknown option {other}; see the top of benches/store.rs"),
        }
    }
    let work: PathBuf = keep.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("keytrail-store-bench-{}", std::process::id())));
    std::fs::create_dir_all(&work).unwrap();
    let end_ms = START_MS + (days * 86_400_000) as i64;

    println!("store benchmark: {total} events over {days} days");
    let gen_cpu = generator_cpu_us(total, days);
    // With --keep DIR, a store already in DIR is reused (queries only), else
    // it is made there and kept: for working on queries without re-ingesting.
    let reuse = keep.is_some() && work.join("audit").exists();
    let kt = if reuse {
        println!("reusing the store in {} (no ingest figures)", work.display());
        IngestResult { events_per_s: f64::NAN, cpu_us_per_event: f64::NAN, writer_cpu_us_per_event: f64::NAN, bytes_per_event: f64::NAN, per_million: Vec::new() }
    } else {
        ingest_keytrail(&work, total, days)
    };
    if export_only {
        let reader = AuditReader::open(&work.join("audit")).unwrap();
        let t = Instant::now();
        let rows: u64 = (0..20).map(|_| export_csv(&reader, "tenant-00", end_ms - DAY_MS, end_ms)).sum();
        println!("export: {:.0} rows/s", rows as f64 / t.elapsed().as_secs_f64());
        return;
    }
    let kt_queries = queries_keytrail(&work.join("audit"), end_ms);
    let pg_result = use_pg.then(|| {
        let (rate, bytes) = pg_ingest(&pg, &work, total, days);
        (rate, bytes, pg_queries(&pg, end_ms))
    });

    println!("\n### ingest ({total} events)\n");
    println!("| store | events/s | bytes/event | CPU µs/event (all threads) | writer thread CPU µs/event |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| keytrail (SQLite, chain, indexes, rollups) | {:.0} | {:.0} | {:.1} (of which generating {:.1}) | {:.1} |",
        kt.events_per_s, kt.bytes_per_event, kt.cpu_us_per_event, gen_cpu, kt.writer_cpu_us_per_event
    );
    if let Some((rate, bytes, _)) = &pg_result {
        println!("| PostgreSQL COPY (same rows, same indexes) | {rate:.0} | {bytes:.0} | - | - |");
        println!("\nkeytrail / PostgreSQL ingest: {:.2}x", kt.events_per_s / rate);
    }
    let per_million: Vec<String> = kt.per_million.iter().map(|r| format!("{:.0}k", r / 1000.0)).collect();
    println!("keytrail committed events/s per million, first to last: {}", per_million.join(", "));

    println!("\n### queries (median of 5 warm runs, ms)\n");
    println!("| query | keytrail | PostgreSQL | rows |");
    println!("| --- | --- | --- | --- |");
    for (i, (name, ms, rows)) in kt_queries.iter().enumerate() {
        let pg_ms = pg_result.as_ref().and_then(|(_, _, q)| q.get(i)).map(|q| format!("{:.1}", q.0)).unwrap_or("-".into());
        println!("| {name} | {ms:.1} | {pg_ms} | {rows} |");
    }
    let (q6_ms, q6_rows) = (kt_queries[5].1, kt_queries[5].2);
    print!("\nQ6 export rate: keytrail {:.0} rows/s", q6_rows as f64 / (q6_ms / 1000.0));
    if let Some((_, _, q)) = &pg_result {
        print!(", PostgreSQL {:.0} rows/s", q[5].1 as f64 / (q[5].0 / 1000.0));
    }
    println!(
        "\n\nmachine: {} CPUs; {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        chrono::Utc::now().format("%Y-%m-%d")
    );
    if use_pg {
        psql(&pg, &format!("DROP TABLE IF EXISTS {PG_TABLE};"));
    }
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
}
