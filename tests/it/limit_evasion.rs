//! Rate limits, attack rules and blocks against spellings and timings that
//! evaded them: double encodings, letter case, path parameters, repeat
//! guessing after a block, tiers deleted under a move, ordinary words.

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

/// A tier deleted while a consumer is put into it (moved, or created in
/// it): either the deletion is refused (the consumer is in it) or the move
/// is; never does a consumer end up in a tier that no longer exists, where
/// no limit applies at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tier_deleted_while_a_consumer_moves_into_it_leaves_no_consumer_unlimited() {
    let mut ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (consumer, _, key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    let move_path = format!("/v1/tenants/acme/consumers/{consumer}/tier");
    let mut stranded = Vec::new();
    for round in 0..600 {
        let tier = format!("t{round}");
        let a = admin.post("/v1/tenants/acme/tiers", json!({"id": tier, "rate_limit": {"requests_per_minute": 1, "burst": 1}})).await;
        assert_eq!(a.status, 201, "{}", a.text);
        let tier_path = format!("/v1/tenants/acme/tiers/{tier}");
        let (moved, created, deleted) = tokio::join!(
            admin.call("PUT", &move_path, Some(json!({"tier": tier}))),
            admin.post("/v1/tenants/acme/consumers", json!({"name": format!("c{round}"), "tier": tier})),
            admin.call("DELETE", &tier_path, None),
        );
        if deleted.status < 300 {
            if moved.status == 200 {
                stranded.push((consumer.clone(), key.clone(), tier.clone()));
            }
            if created.status == 201 {
                let id = created.body["id"].as_str().unwrap().to_string();
                let (_, key) = admin.key("acme", &id, json!({})).await;
                stranded.push((id, key, tier.clone()));
            }
            if !stranded.is_empty() {
                break;
            }
        }
        let a = admin.call("PUT", &move_path, Some(json!({"tier": null}))).await;
        assert_eq!(a.status, 200, "{}", a.text);
    }
    if let Some((consumer, key, tier)) = stranded.first() {
        let statuses = [get(&ts, "/docs/fixed", key).await, get(&ts, "/docs/fixed", key).await, get(&ts, "/docs/fixed", key).await];
        panic!("consumer {consumer} is in tier {tier}, deleted, and its calls (one a minute allowed) answer {statuses:?}");
    }
    ts.stop().await;
}

/// Spellings that common upstreams resolve to a forbidden or costly path:
/// another letter case (Express and ASP.NET Core route without regard to
/// case by default) and path parameters (`;jsessionid=…`, which Tomcat,
/// Jetty and Spring drop from a segment). Each is refused or costs as the
/// path it resolves to.
#[tokio::test]
async fn letter_case_and_path_parameters_do_not_get_around_forbidden_paths_or_costs() {
    let mut ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    let api = json!({
        "id": "docs", "path_prefix": "/docs", "upstream": format!("http://{up}"),
        "costs": [{"path_prefix": "/docs/export", "cost": 50}],
        "policies": {"forbidden_paths": ["/docs/admin"]},
    });
    let a = admin.post("/v1/tenants/acme/apis", api).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let a = admin.post("/v1/tenants/acme/tiers", json!({"id": "t", "daily_quota": 1000})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let a = admin.post("/v1/tenants/acme/consumers", json!({"name": "batch-job", "tier": "t"})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let (_, key) = admin.key("acme", a.body["id"].as_str().unwrap(), json!({})).await;

    for path in ["/docs/admin", "/docs/ADMIN", "/docs/Admin/users", "/docs/admin;jsessionid=1", "/docs/admin;x/users"] {
        assert_eq!(get(&ts, path, &key).await, 403, "{path}");
    }
    assert_eq!(get(&ts, "/docs/administrator", &key).await, 200);
    let remaining = |res: &reqwest::Response| res.headers()["ratelimit-remaining"].to_str().unwrap().parse::<u64>().unwrap();
    let res = ts.client.get(format!("{}/docs/fixed", ts.gateway)).header("x-api-key", &key).send().await.unwrap();
    let mut left = remaining(&res);
    for path in ["/docs/export/fixed", "/docs/EXPORT/fixed", "/docs/Export/fixed", "/docs/export;jsessionid=1/fixed"] {
        let res = ts.client.get(format!("{}{}", ts.gateway, path)).header("x-api-key", &key).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(remaining(&res), left - 50, "{path} costs 50");
        left -= 50;
    }
    ts.stop().await;
}

/// SQL keywords inside ordinary words are no injection: a search for a
/// union's selection, or a reunion, is let through; the keywords on their
/// own are still refused.
#[tokio::test]
async fn sql_keywords_inside_ordinary_words_are_not_an_injection() {
    let mut ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    for query in ["q=credit+union+selection", "q=labor+union+selects+new+leader", "q=family+reunion+selected+photos", "q=union%20all%20selectors"] {
        assert_eq!(get(&ts, &format!("/docs/search?{query}"), &key).await, 200, "{query}");
    }
    for query in ["q=1+union+select+password", "q=1+UNION+SELECT(1)", "q=0e1union+select+1", "q=1+union+all+select+*"] {
        assert_eq!(get(&ts, &format!("/docs/search?{query}"), &key).await, 403, "{query}");
    }
    ts.stop().await;
}
