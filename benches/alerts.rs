//! Alert engine benchmark: what reading the committed trail and counting it
//! against rules costs per event — the engine's work for every call of a
//! tenant with rules, beside the gateway's own CPU per request.
//!
//!   cargo bench --bench alerts                    # 1,000,000 events in one day
//!   cargo bench --bench alerts -- --events 200000
//!   cargo bench --bench alerts -- --smoke         # small, for CI
//!
//! The events come from the store benchmark's generator (benches/common),
//! written as the gateway's writer does (batches of 500, the size a 10 ms
//! flush gives at ~50k calls/s). The largest tenant's events are read after
//! position 0 by `AuditReader::events_after` (only the columns the rules use)
//! and fed to three rules; beside it, the same events read with every
//! field by the list API's scan.

use std::sync::Arc;
use std::time::Instant;

use keytrail::alerts::{AlertRule, GroupBy, Match, RuleSpec, RuleState};
use keytrail::event::Category;
use keytrail::store::audit::{AuditReader, AuditWriterStore, EventFilter};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "common/events.rs"]
mod events;
use events::Generator;

const TENANT: &str = "tenant-00";

fn rule(id: &str, matcher: Match, threshold: u32, window_secs: u32, group_by: Option<GroupBy>) -> RuleState {
    let spec = RuleSpec { description: None, matcher, threshold, window_secs, group_by, cooldown_secs: Some(0), webhook_url: None, enabled: true };
    RuleState::new(Arc::new(AlertRule { tenant_id: TENANT.into(), id: id.into(), spec, created_at: 0, updated_at: 0, secret: Default::default() }))
}

/// Three rules a tenant might have: server errors per consumer, client
/// errors per address, every call per api.
fn rules() -> [RuleState; 3] {
    [
        rule("server-errors", Match { category: Some(Category::Request), status_min: Some(500), ..Match::default() }, 50, 300, Some(GroupBy::Consumer)),
        rule("client-errors", Match { status_min: Some(400), status_max: Some(499), ..Match::default() }, 20, 60, Some(GroupBy::ClientIp)),
        rule("every-call", Match { category: Some(Category::Request), ..Match::default() }, 10_000, 86_400, Some(GroupBy::Api)),
    ]
}

/// The median of `runs` timings of `work`, in ns per event, and what the last run returned.
fn median_ns<T>(runs: usize, events: u64, mut work: impl FnMut() -> T) -> (f64, T) {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        let started = Instant::now();
        last = Some(work());
        times.push(started.elapsed().as_secs_f64() * 1e9 / events as f64);
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], last.expect("one run at least"))
}

fn main() {
    let mut events: u64 = 1_000_000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--smoke" => events = 50_000,
            "--events" => events = args.next().and_then(|v| v.parse().ok()).expect("--events N"),
            "--bench" => {}
            other => panic!("unknown option {other}"),
        }
    }
    let work = tempfile::tempdir().unwrap();
    let audit = work.path().join("audit");
    {
        let mut store = AuditWriterStore::open(&audit).unwrap();
        let mut generator = Generator::new(events, 1);
        let mut batch = Vec::with_capacity(500);
        for _ in 0..events {
            batch.push(generator.event());
            if batch.len() == 500 {
                store.insert_batch(&mut batch).unwrap();
            }
        }
        store.insert_batch(&mut batch).unwrap();
        store.flush_rollups().unwrap();
    }
    let reader = AuditReader::open(&audit).unwrap();
    let tenant_events = reader.chain_head(TENANT).unwrap();
    assert!(tenant_events > 0);
    println!("{events} events in one day; tenant {TENANT} holds {tenant_events}");

    let mut rules = rules();
    let mut texts: Vec<_> = rules.iter().flat_map(|r| r.rule.spec.texts()).collect();
    texts.sort_unstable_by_key(|t| t.index());
    texts.dedup();
    let runs = 5;
    let (read_ns, read) = median_ns(runs, tenant_events, || {
        let mut n = 0u64;
        reader.events_after(TENANT, 0, None, &texts, |_| {
            n += 1;
            true
        })
        .unwrap();
        n
    });
    assert_eq!(read, tenant_events, "every event read");

    let (rules_ns, fired) = median_ns(runs, tenant_events, || {
        rules = self::rules();
        let mut fired = 0u64;
        reader.events_after(TENANT, 0, None, &texts, |event| {
            fired += rules.iter_mut().filter_map(|r| r.observe(event)).count() as u64;
            true
        })
        .unwrap();
        fired
    });

    let filter = EventFilter { tenant_id: TENANT.into(), ..EventFilter::default() };
    let (scan_ns, scanned) = median_ns(runs, tenant_events, || {
        let mut n = 0u64;
        reader.scan(&filter, None, false, |_| {
            n += 1;
            true
        })
        .unwrap();
        n
    });
    assert_eq!(scanned, tenant_events);

    println!("\n| read (median of {runs}) | ns/event | events/s |");
    println!("| --- | --- | --- |");
    for (what, ns) in [
        ("events_after: the engine's read (rule columns only)", read_ns),
        ("events_after + three rules (the engine's turn)", rules_ns),
        ("scan: every field, as the list API reads (reference)", scan_ns),
    ] {
        println!("| {what} | {ns:.0} | {:.0} |", 1e9 / ns);
    }
    println!("\nthe three rules fired {fired} times; the engine's turn costs {:.2} µs per committed event", rules_ns / 1e3);
    println!(
        "machine: {} CPUs, {}; commit {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())).unwrap_or_default(),
        std::process::Command::new("git").args(["rev-parse", "--short", "HEAD"]).output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default(),
    );
}
