//! The audit pipeline on its own: a full queue, the operator's choice of
//! drop or block, the successful-call switch, and shutdown.

use std::sync::atomic::Ordering;
use std::time::Duration;

use keytrail::audit::AuditPipeline;
use keytrail::config::{AuditConfig, QueueFullPolicy};
use keytrail::event::{Category, Event};
use keytrail::store::audit::AuditReader;

fn config(queue_full: QueueFullPolicy, log_api_calls: bool) -> AuditConfig {
    AuditConfig {
        // Long enough that nothing is committed while the test fills the queue.
        flush_interval: Duration::from_millis(1000),
        batch_max_events: 1_000_000,
        queue_capacity: 16,
        queue_full,
        log_api_calls,
        sample_seed: None,
        checkpoint_every_events: 10_000,
        checkpoint_interval: Duration::from_secs(60),
    }
}

fn request(status: u16) -> Event {
    let mut e = Event::new("acme", Category::Request, "request", if status < 400 { "success" } else { "failure" });
    e.status_code = Some(status);
    e
}

fn committed(dir: &std::path::Path) -> Vec<u16> {
    let chain = AuditReader::open(&dir.join("audit")).unwrap().chain("acme").unwrap();
    chain.iter().map(|s| s.event.status_code.unwrap_or(0)).collect()
}

#[tokio::test]
async fn a_full_queue_drops_only_successful_calls_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = AuditPipeline::start(dir.path().join("audit"), &config(QueueFullPolicy::Drop, true)).unwrap();
    for _ in 0..40 {
        pipeline.record(request(200));
    }
    for _ in 0..30 {
        pipeline.record(request(401));
    }
    pipeline.record(Event::new("acme", Category::Security, "auth_failed", "failure"));
    assert_eq!(pipeline.stats().dropped.load(Ordering::Relaxed), 24, "40 successes into a queue of 16");
    pipeline.shutdown().await;
    let statuses = committed(dir.path());
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 16);
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 30, "failed calls are never dropped");
    assert_eq!(statuses.iter().filter(|s| **s == 0).count(), 1, "security events are never dropped");
}

#[tokio::test]
async fn the_block_policy_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(QueueFullPolicy::Block, true);
    cfg.flush_interval = Duration::from_millis(5);
    let pipeline = std::sync::Arc::new(AuditPipeline::start(dir.path().join("audit"), &cfg).unwrap());
    let p = pipeline.clone();
    tokio::task::spawn_blocking(move || {
        for _ in 0..500 {
            p.record(request(200));
        }
    })
    .await
    .unwrap();
    assert_eq!(pipeline.stats().dropped.load(Ordering::Relaxed), 0);
    pipeline.shutdown().await;
    assert_eq!(committed(dir.path()).len(), 500);
}

#[tokio::test]
async fn switching_off_successful_calls_keeps_failures() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = AuditPipeline::start(dir.path().join("audit"), &config(QueueFullPolicy::Drop, false)).unwrap();
    pipeline.record(request(200));
    pipeline.record(request(302));
    pipeline.record(request(404));
    pipeline.record(request(502));
    pipeline.flush().await;
    assert_eq!(committed(dir.path()), vec![404, 502]);
    assert_eq!(pipeline.stats().dropped.load(Ordering::Relaxed), 0, "switched off is not dropped");
    pipeline.shutdown().await;
    pipeline.record(request(500));
    assert_eq!(pipeline.stats().dropped.load(Ordering::Relaxed), 1, "after shutdown an event is counted as dropped");
}
