//! Review of rate limits and protection: defects found over real sockets.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::util::{start_upstream, TestServer};

async fn get(ts: &TestServer, path: &str, key: &str) -> u16 {
    ts.client.get(format!("{}{}", ts.gateway, path)).header("x-api-key", key).send().await.unwrap().status().as_u16()
}

/// A double-encoded path or query is read as an upstream that decodes twice
/// reads it, even when it also holds an escape that is invalid once decoded
/// (`%25zz`): such an escape is left as is, not a reason to read nothing.
#[tokio::test]
async fn double_encoded_targets_are_read_beside_an_invalid_inner_escape() {
    let mut ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    let a = admin
        .call("PUT", "/v1/tenants/acme/apis/docs/policies", Some(json!({"forbidden_paths": ["/docs/admin"]})))
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    // Without the stray escape, each is refused.
    assert_eq!(get(&ts, "/docs/%2561dmin/x", &key).await, 403);
    assert_eq!(get(&ts, "/docs/%252e%252e/%252e%252e/secret", &key).await, 403);
    assert_eq!(get(&ts, "/docs/items?q=%2527%2520or%25201=1--", &key).await, 403);
    // With it, each was let through to the upstream.
    assert_eq!(get(&ts, "/docs/%2561dmin/x%25zz", &key).await, 403, "forbidden path");
    assert_eq!(get(&ts, "/docs/%252e%252e/%252e%252e/secret%25zz", &key).await, 403, "path traversal");
    assert_eq!(get(&ts, "/docs/items?q=%2527%2520or%25201=1--%25zz", &key).await, 403, "sql injection");
    // An ordinary call still passes.
    assert_eq!(get(&ts, "/docs/items?q=100%2525", &key).await, 200);
    ts.stop().await;
}
/// An address that goes on guessing after its automatic block ended is
/// blocked again once it passes the limit, however long the window.
#[tokio::test]
async fn guessing_after_an_automatic_block_ends_is_blocked_again() {
    let mut ts = TestServer::start_with(tempfile::tempdir().unwrap(), |c| {
        c.gateway.bruteforce_failures = 3;
        c.gateway.bruteforce_window = Duration::from_secs(3600);
        c.gateway.bruteforce_block = Duration::from_secs(1);
    })
    .await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    let blocked_within = |limit: Duration| {
        let (ts, key) = (&ts, &key);
        async move {
            let deadline = Instant::now() + limit;
            while get(ts, "/docs/fixed", key).await != 403 {
                if Instant::now() > deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            true
        }
    };
    for _ in 0..4 {
        assert_eq!(get(&ts, "/docs/fixed", "kt_live_guessing").await, 401);
    }
    assert!(blocked_within(Duration::from_secs(5)).await, "the first block");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(get(&ts, "/docs/fixed", &key).await, 200, "the block ended");
    // Four more guesses, within the same window: blocked again.
    for _ in 0..4 {
        assert_eq!(get(&ts, "/docs/fixed", "kt_live_guessing").await, 401);
    }
    assert!(blocked_within(Duration::from_secs(3)).await, "guessing went on unblocked after the first block");
    ts.stop().await;
}
