//! Archive benchmark: a realistic day of events archived by retention —
//! archived bytes per event (DESIGN.md's target: ≤ 25), the time to write,
//! verify and restore them, and what the same events cost at other zstd
//! levels and in the format before (one JSON event a line with its hashes).
//!
//!   cargo bench --bench archive                       # 1,000,000 events in one day
//!   cargo bench --bench archive -- --events 200000
//!   cargo bench --bench archive -- --smoke            # small, for CI
//!   cargo bench --bench archive -- --level 19         # archive at another zstd level
//!
//! The day is made by the store benchmark's generator (benches/common, the same
//! distributions: 20 tenants of skewed size, 500 consumers per tenant, 300
//! paths, 5 % 4xx, 0.5 % 5xx, log-normal latencies, 40 user agents, 5,000
//! client IPs), written straight into a store with `AuditWriterStore`.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use keytrail::settings::retention::{RetentionPolicy, RetentionSettings};
use keytrail::signing::Signer;
use keytrail::store::audit::{archive, retention, AuditReader, AuditWriterStore};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DAY_MS: i64 = 86_400_000;

/// The store benchmark's generator, here one day long.
#[path = "common/events.rs"]
mod events;
use events::{Generator, START_MS};

fn files_bytes(dir: &Path, suffix: &str) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            total += files_bytes(&path, suffix);
        } else if path.to_string_lossy().ends_with(suffix) {
            total += entry.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    total
}

/// The time to open an `AuditReader`, in µs (mean of 1,000).
fn reader_open_us(audit: &Path) -> f64 {
    let started = Instant::now();
    for _ in 0..1_000 {
        std::hint::black_box(AuditReader::open(audit).unwrap());
    }
    started.elapsed().as_secs_f64() * 1e3
}

fn compressed(bytes: &[u8], level: i32) -> (usize, f64) {
    let started = Instant::now();
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), level).unwrap();
    encoder.window_log(24).unwrap();
    encoder.write_all(bytes).unwrap();
    let out = encoder.finish().unwrap();
    (out.len(), started.elapsed().as_secs_f64())
}

fn main() {
    let mut events: u64 = 1_000_000;
    let mut level = archive::DEFAULT_ZSTD_LEVEL;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--smoke" => events = 20_000,
            "--events" => events = args.next().and_then(|v| v.parse().ok()).expect("--events N"),
            "--level" => level = args.next().and_then(|v| v.parse().ok()).expect("--level N"),
            "--bench" => {}
            other => panic!("unknown option {other}"),
        }
    }
    let work = tempfile::tempdir().unwrap();
    let audit = work.path().join("audit");
    let archive_dir = work.path().join("archive");
    let signer = Signer::load_or_create(&work.path().join("signing.key")).unwrap();

    // One day in the hot store.
    let started = Instant::now();
    {
        let mut store = AuditWriterStore::open(&audit).unwrap();
        let mut generator = Generator::new(events, 1);
        let mut batch = Vec::with_capacity(10_000);
        for _ in 0..events {
            batch.push(generator.event());
            if batch.len() == 10_000 {
                store.insert_batch(&mut batch).unwrap();
            }
        }
        store.insert_batch(&mut batch).unwrap();
        store.flush_rollups().unwrap();
    }
    let hot_bytes = files_bytes(&audit, ".db");
    println!("hot store: {events} events in {:.1} s, {:.1} bytes/event (day file and meta.db)", started.elapsed().as_secs_f64(), hot_bytes as f64 / events as f64);

    let open_before = reader_open_us(&audit);

    // Retention archives it (two days later, one hot day).
    let policy = RetentionPolicy { zstd_level: level, ..RetentionPolicy::uniform(RetentionSettings { hot_days: 1, archive_days: 365 }) };
    let started = Instant::now();
    let report = retention::run(&audit, &archive_dir, &policy, START_MS + 2 * DAY_MS, &signer).unwrap();
    let took = started.elapsed().as_secs_f64();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let archived = files_bytes(&archive_dir, ".ndjson.zst");
    let manifests = files_bytes(&archive_dir, ".manifest.json");
    println!(
        "archived: {} tenants in {took:.1} s ({:.0} events/s): {:.1} bytes/event in .ndjson.zst (zstd {}), {:.1} with the manifests",
        report.actions.iter().filter(|a| a.kind == retention::ActionKind::ArchiveWritten).count(),
        events as f64 / took,
        archived as f64 / events as f64,
        level,
        (archived + manifests) as f64 / events as f64
    );

    // Verify and restore the largest tenant's day.
    let key = signer.public_key();
    let started = Instant::now();
    let reports = archive::verify_archives(&archive_dir, Some(&audit), None, &key).unwrap();
    assert!(reports.iter().all(|r| r.ok), "{reports:?}");
    let took = started.elapsed().as_secs_f64();
    println!("archive verify: {:.1} s ({:.0} events/s)", took, events as f64 / took);
    let biggest = report.actions.iter().filter(|a| a.kind == retention::ActionKind::ArchiveWritten).max_by_key(|a| a.events).unwrap();
    let started = Instant::now();
    let restored = archive::restore(&audit, &archive_dir, &biggest.tenant, &biggest.day, &key).unwrap();
    let took = started.elapsed().as_secs_f64();
    println!("restore of {} ({} events): {:.1} s ({:.0} events/s)", biggest.tenant, restored.events, took, restored.events as f64 / took);
    assert_eq!(AuditReader::open(&audit).unwrap().restored_runs(&biggest.tenant).unwrap().len(), 1);
    // Every query opens a reader, which reads the archived prefixes from meta.db.
    println!(
        "AuditReader::open: {:.0} µs before retention, {:.0} µs with {} archive records",
        open_before,
        reader_open_us(&audit),
        report.actions.iter().filter(|a| a.kind == retention::ActionKind::ArchiveWritten).count()
    );

    // What the largest tenant's file would cost at other levels, and in the
    // format before (one JSON event a line with its two hashes, as `archive
    // cat` prints it), on its first 100,000 events (level 19 is slow).
    let (path, _) = archive::paths(&archive_dir, &biggest.tenant, &biggest.day);
    let mut blocks = Vec::new();
    zstd::stream::read::Decoder::new(std::fs::File::open(&path).unwrap()).unwrap().read_to_end(&mut blocks).unwrap();
    let file = std::fs::metadata(&path).unwrap().len();
    let mut lines = Vec::new();
    archive::cat(&archive_dir, &biggest.tenant, &biggest.day, &key, &mut lines).unwrap();
    println!(
        "{}: {} events; blocks {:.0} bytes/event before zstd, {:.1} archived; one event a line {:.0} bytes/event before zstd",
        biggest.tenant,
        biggest.events,
        blocks.len() as f64 / biggest.events as f64,
        file as f64 / biggest.events as f64,
        lines.len() as f64 / biggest.events as f64,
    );
    // Whole blocks (the last may be shorter).
    let whole = 100_000 / archive::BLOCK_EVENTS;
    let blocks: String = String::from_utf8(blocks).unwrap().lines().take(whole).flat_map(|l| [l, "\n"]).collect();
    let n = biggest.events.min((whole * archive::BLOCK_EVENTS) as u64) as f64;
    let lines: String = String::from_utf8(lines).unwrap().lines().take(n as usize).flat_map(|l| [l, "\n"]).collect();
    println!("| zstd level | blocks (as archived) | one event a line, with hashes | compress blocks | compress lines |");
    for level in [1, 3, 6, 9, 12, 15, 19] {
        let (a, block_seconds) = compressed(blocks.as_bytes(), level);
        let (b, line_seconds) = compressed(lines.as_bytes(), level);
        println!(
            "| {level} | {:.1} | {:.1} | {:.2} µs/event | {:.2} µs/event |",
            a as f64 / n,
            b as f64 / n,
            block_seconds / n * 1e6,
            line_seconds / n * 1e6
        );
    }
}
