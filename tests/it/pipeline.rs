//! The audit pipeline on its own: a full queue, the operator's choice of
//! drop or block, the successful-call switch, and shutdown.

use std::sync::atomic::Ordering;
use std::time::Duration;

use keytrail::audit::AuditPipeline;
use keytrail::config::{AuditConfig, QueueFullPolicy};
use keytrail::event::{Category, Event};
use keytrail::store::audit::AuditReader;
use serde_json::json;

fn config(queue_full: QueueFullPolicy, log_api_calls: bool) -> AuditConfig {
    AuditConfig {
        // Long enough that nothing is committed while the test fills the queue.
        flush_interval: Duration::from_millis(1000),
        batch_max_events: 1_000_000,
        queue_capacity: 16,
        queue_full,
        durability: Default::default(),
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

/// `queue_full = "sample"`: up to half the capacity every event is
/// queued; from there each successful call is kept with a chance that
/// falls to 0 at full, the rest counted as dropped. The queue never passes
/// its capacity with successful calls, failed calls and security events
/// are never held back, and the status names the policy.
#[tokio::test]
async fn the_sample_policy_keeps_a_falling_share_from_half_full() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(QueueFullPolicy::Sample, true);
    cfg.queue_capacity = 1_000;
    cfg.sample_seed = Some(7);
    let pipeline = AuditPipeline::start(dir.path().join("audit"), &cfg).unwrap();
    assert_eq!(pipeline.status().queue_full, "sample");
    for _ in 0..500 {
        pipeline.record(request(200));
    }
    assert_eq!((pipeline.status().queued, pipeline.stats().dropped.load(Ordering::Relaxed)), (500, 0), "all kept below half full");
    for _ in 0..5_000 {
        pipeline.record(request(200));
    }
    let (queued, dropped) = (pipeline.status().queued, pipeline.stats().dropped.load(Ordering::Relaxed));
    assert_eq!(queued as u64 + dropped, 5_500, "every call kept or counted");
    assert!(queued <= 1_000, "successful calls never pass the capacity: {queued}");
    // Kept with a chance falling from 1 to 0 over the second half: nearly
    // all of that half fills (the last places ever more slowly).
    assert!(queued > 900, "a share kept past half full: {queued}");
    for _ in 0..30 {
        pipeline.record(request(500));
    }
    pipeline.record(Event::new("acme", Category::Security, "auth_failed", "failure"));
    assert_eq!(pipeline.status().queued, queued + 31, "failed calls and security events are always queued");
    pipeline.shutdown().await;
    let statuses = committed(dir.path());
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), queued);
    assert_eq!(statuses.iter().filter(|s| **s == 500).count(), 30);
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

/// `GET /v1/status` shows operators what the pipeline counts: calls through
/// the gateway accepted and committed, none dropped; with a queue too small
/// for a burst, the drops; and no key in any of it.
#[tokio::test]
async fn the_status_endpoint_shows_commits_and_drops() {
    use crate::util::{start_upstream, Admin, TestServer};
    let up = format!("http://{}", start_upstream().await);
    let ts = TestServer::start().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/v1", &up).await;
    for _ in 0..20 {
        let res = ts.client.get(format!("{}/v1/items", ts.gateway)).header("x-api-key", &key).send().await.unwrap();
        assert_eq!(res.status(), 200);
    }
    ts.flush().await;
    let a = admin.get("/v1/status").await;
    assert_eq!(a.status, 200, "{}", a.text);
    let p = &a.body["audit_pipeline"];
    let (accepted, committed) = (p["accepted"].as_u64().unwrap(), p["committed"].as_u64().unwrap());
    // The 20 calls and the setup's admin activity; the status read itself records nothing.
    assert!(accepted >= 20, "{}", a.text);
    assert_eq!(committed, accepted, "flushed: {}", a.text);
    assert_eq!((p["uncommitted"].as_u64(), p["queued"].as_u64(), p["dropped"].as_u64()), (Some(0), Some(0), Some(0)), "{}", a.text);
    assert_eq!((p["queue_capacity"].as_u64(), p["queue_full"].as_str()), (Some(100_000), Some("drop")));
    assert_eq!(p["commit_failures"], 0);
    assert_eq!(a.body["version"], env!("CARGO_PKG_VERSION"));
    assert!(!a.text.contains(&key) && !a.text.contains(&key[key.len() - 12..]), "{}", a.text);

    // Without a token, or with a wrong one: refused, nothing counted shown.
    let anonymous = Admin { token: String::new(), ..admin.clone() };
    let wrong = Admin { token: "not-a-token".into(), ..admin.clone() };
    for caller in [anonymous, wrong] {
        let a = caller.get("/v1/status").await;
        assert_eq!((a.status, a.body["error"]["code"].as_str()), (401, Some("unauthorized")), "{}", a.text);
        assert!(!a.text.contains("audit_pipeline"));
    }
    // Only GET.
    let a = admin.post("/v1/status", json!({})).await;
    assert_eq!(a.status, 405, "{}", a.text);

    // A queue of 4 and a writer that waits five seconds: a burst of 30 calls
    // fills it; the drops are counted and shown, the failed call is kept.
    let slow = TestServer::start_with(tempfile::tempdir().unwrap(), |c| {
        c.audit.queue_capacity = 4;
        c.audit.flush_interval = Duration::from_millis(5000);
    })
    .await;
    let admin = slow.admin_client();
    let (_, _, key) = admin.setup("acme", "/v1", &up).await;
    slow.flush().await;
    let before = admin.get("/v1/status").await.body["audit_pipeline"]["accepted"].as_u64().unwrap();
    for _ in 0..30 {
        let res = slow.client.get(format!("{}/v1/items", slow.gateway)).header("x-api-key", &key).send().await.unwrap();
        assert_eq!(res.status(), 200);
    }
    let res = slow.client.get(format!("{}/v1/items", slow.gateway)).header("x-api-key", "kt_wrong").send().await.unwrap();
    assert_eq!(res.status(), 401);
    let a = admin.get("/v1/status").await;
    let p = &a.body["audit_pipeline"];
    let (accepted, dropped) = (p["accepted"].as_u64().unwrap() - before, p["dropped"].as_u64().unwrap());
    assert_eq!(accepted + dropped, 31 + 1, "every call (and the refused one's security event) is accepted or dropped: {}", a.text);
    assert!(dropped >= 26, "a queue of 4 holds at most 4 of the 30: {}", a.text);
    assert!(p["queued"].as_u64().unwrap() <= accepted, "{}", a.text);
    assert!(p["oldest_queued_ms"].as_u64().is_some(), "{}", a.text);
    slow.flush().await;
    let a = admin.get("/v1/status").await;
    let p = &a.body["audit_pipeline"];
    assert_eq!((p["uncommitted"].as_u64(), p["queued"].as_u64()), (Some(0), Some(0)), "{}", a.text);
    assert_eq!(p["dropped"].as_u64(), Some(dropped), "{}", a.text);
}
