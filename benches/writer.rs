//! Audit writer benchmark: the store's work for each event the gateway
//! benchmark records (one consumer calling one api from one address, each
//! call with its own request id and latencies), committed in batches as the
//! writer thread commits them: numbering, the chain hash and the personal
//! commitment, interning, the column block and zstd, rollups and latency
//! sketches, the SQLite transaction, and freeing the events. It is the
//! writer thread's share of the trail's cost on every proxied call
//! (bench/gateway.sh reports the same share from the running gateway).
//!
//!   cargo bench --bench writer                  # 2,000,000 events
//!   cargo bench --bench writer -- --smoke       # small, for CI

use std::time::{Duration, Instant};

use keytrail::event::{new_id_at, Category, Event};
use keytrail::store::audit::AuditWriterStore;
use keytrail::text::Text;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Events a batch: at the gateway benchmark's rate the writer takes up to
/// 256 events a turn.
const BATCH: usize = 256;

/// A successful proxied call as the gateway records it.
fn call(shared: &[Text; 8], timestamp_ms: i64, n: u64) -> Event {
    let [tenant, consumer, name, api, key, hint, actor, ip] = shared.clone();
    let mut e = Event::new(tenant, Category::Request, Text::from_static("request"), Text::from_static("success"));
    e.timestamp_ms = timestamp_ms;
    e.request_id = Some(new_id_at(timestamp_ms));
    e.consumer_id = Some(consumer);
    e.consumer_name = Some(name);
    e.api_id = Some(api);
    e.key_id = Some(key);
    e.key_hint = Some(hint);
    e.actor = Some(actor);
    e.method = Some(Text::from_static("GET"));
    e.path = Some("/bench/x".to_string());
    e.status_code = Some(200);
    e.latency_us = Some(300 + n % 200);
    e.upstream_latency_us = Some(200 + n % 150);
    e.request_size_bytes = Some(0);
    e.response_size_bytes = Some(101);
    e.client_ip = Some(ip);
    e.user_agent = Some("wrk".to_string());
    e
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let total: u64 = if smoke { 20_000 } else { 2_000_000 };
    let runs_wanted = 5;
    let dir = std::env::temp_dir().join(format!("keytrail-writer-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory for the store");
    let mut store = AuditWriterStore::open(&dir).expect("open the store");
    let shared: [Text; 8] = [
        "bench",
        "0193a3c0-0000-7000-8000-000000000001",
        "wrk",
        "api",
        "key_0193a3c0aaaa",
        "kt_test****abcd",
        "consumer:0193a3c0-0000-7000-8000-000000000001",
        "127.0.0.1",
    ]
    .map(|s| Text::from(s.to_string()));
    let start_ms = keytrail::event::now_ms();
    let per_run = total / runs_wanted;
    let mut written = 0u64;
    let mut runs = Vec::new();
    for _ in 0..runs_wanted {
        // Only the time inside the store counts: each batch is made first,
        // as the gateway's calls make their events before the writer takes them.
        let mut inside = Duration::ZERO;
        let mut batch = Vec::with_capacity(BATCH);
        let mut left = per_run;
        while left > 0 {
            for _ in 0..BATCH.min(left as usize) {
                // ~80 calls a millisecond, as the gateway benchmark's load.
                batch.push(call(&shared, start_ms + (written / 80) as i64, written));
                written += 1;
                left -= 1;
            }
            let started = Instant::now();
            store.insert_batch(&mut batch).expect("commit");
            inside += started.elapsed();
        }
        runs.push(inside.as_secs_f64() * 1e6 / per_run as f64);
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    runs.sort_by(f64::total_cmp);
    let median = runs[runs.len() / 2];
    println!(
        "audit writer on the gateway's events, batches of {BATCH}: {median:.3} µs/event ({:.0} events/s) inside `insert_batch`, median of {runs_wanted} runs of {per_run} (runs: {})",
        1e6 / median,
        runs.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>().join(", ")
    );
}
