//! The logging settings: the switches, the sample rate, per-tenant values
//! over global ones, their events, and bad input.

use std::time::Instant;

use serde_json::{json, Value};

use crate::util::{start_upstream, Admin, TestServer};

/// Sends `n` calls to `path` with `key`, `parallel` at a time, each of
/// which must answer `expect`.
async fn calls(ts: &TestServer, path: &str, key: &str, n: usize, parallel: usize, expect: u16) {
    let url = format!("{}{}", ts.gateway, path);
    let per_task = n / parallel;
    let mut tasks = Vec::new();
    for _ in 0..parallel {
        let (client, url, key) = (ts.client.clone(), url.clone(), key.to_string());
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                let res = client.get(&url).header("x-api-key", &key).send().await.unwrap();
                assert_eq!(res.status().as_u16(), expect);
                res.bytes().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Request events stored for `tenant` (up to 10,000).
async fn stored(ts: &TestServer, admin: &Admin, tenant: &str) -> Vec<Value> {
    ts.flush().await;
    let a = admin.get(&format!("/v1/audit/{tenant}?limit=10000")).await;
    assert_eq!(a.status, 200, "{}", a.text);
    a.body["logs"].as_array().unwrap().clone()
}

async fn put(admin: &Admin, path: &str, body: Value) -> crate::util::Answer {
    admin.call("PUT", path, Some(body)).await
}

#[tokio::test]
async fn the_switches_decide_which_calls_are_stored() {
    let mut ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/acme", &format!("http://{up}")).await;
    let (_, _, other_key) = admin.setup("globex", "/globex", &format!("http://{up}")).await;

    // Defaults: everything on, every successful call kept.
    let a = admin.get("/api/v1/settings/logging").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(
        a.body,
        json!({"scope": "global", "log_dashboard_activities": true, "log_api_calls": true,
               "log_failed_api_calls": true, "log_blocklisted_api_calls": true, "api_call_sample_rate": 1.0})
    );
    calls(&ts, "/acme/fixed", &key, 3, 1, 200).await;
    assert_eq!(stored(&ts, &admin, "acme").await.len(), 3);

    // Global: successful calls off. Takes effect at once, for every tenant.
    let a = put(&admin, "/api/v1/settings/logging", json!({"log_api_calls": false})).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["log_api_calls"], false);
    calls(&ts, "/acme/fixed", &key, 5, 1, 200).await;
    calls(&ts, "/acme/status/503", &key, 2, 1, 503).await;
    calls(&ts, "/globex/fixed", &other_key, 4, 1, 200).await;
    let acme = stored(&ts, &admin, "acme").await;
    assert_eq!(acme.len(), 5, "3 before the change and the 2 failures: {acme:?}");
    assert_eq!(acme.iter().filter(|e| e["status_code"] == 503).count(), 2);
    assert!(stored(&ts, &admin, "globex").await.is_empty());

    // A tenant's own value beats the global one; the others still inherit.
    let a = put(&admin, "/v1/tenants/globex/settings/logging", json!({"log_api_calls": true, "log_failed_api_calls": false})).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["scope"], "tenant");
    assert_eq!(a.body["log_api_calls"], true);
    assert_eq!(a.body["inherited"], json!(["log_dashboard_activities", "log_blocklisted_api_calls", "api_call_sample_rate"]));
    calls(&ts, "/globex/fixed", &other_key, 4, 1, 200).await;
    calls(&ts, "/globex/status/404", &other_key, 3, 1, 404).await;
    // A failed authentication: its request event is a failed call (off for
    // globex), its security event is always kept.
    calls(&ts, "/globex/fixed", "kt_live_not-a-real-key", 1, 1, 401).await;
    let globex = stored(&ts, &admin, "globex").await;
    assert_eq!(globex.len(), 4, "only the successful calls: {globex:?}");
    assert!(globex.iter().all(|e| e["status_code"] == 200));
    let security = admin.wait_for("/v1/audit/globex/security?event_type=auth_failed", "events", 1).await;
    assert_eq!(security.len(), 1);
    calls(&ts, "/acme/fixed", &key, 2, 1, 200).await;
    assert_eq!(stored(&ts, &admin, "acme").await.len(), 5, "acme still follows the global switch");

    // null goes back to the global value.
    let a = put(&admin, "/v1/tenants/globex/settings/logging", json!({"log_failed_api_calls": null})).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["log_failed_api_calls"], true);
    calls(&ts, "/globex/status/404", &other_key, 1, 1, 404).await;
    assert_eq!(stored(&ts, &admin, "globex").await.len(), 5);
    ts.stop().await;
}

#[tokio::test]
async fn every_change_is_a_settings_changed_event_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let mut ts = TestServer::start_with(dir, |_| {}).await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);

    let a = put(&admin, "/api/v1/settings/logging", json!({"api_call_sample_rate": 0.25, "log_dashboard_activities": false})).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let a = put(&admin, "/v1/tenants/acme/settings/logging", json!({"log_failed_api_calls": false})).await;
    assert_eq!(a.status, 200, "{}", a.text);
    // The same values again change nothing and record nothing.
    assert_eq!(put(&admin, "/v1/tenants/acme/settings/logging", json!({"log_failed_api_calls": false})).await.status, 200);

    let global = admin.wait_for("/v1/audit/_system/security?event_type=settings_changed", "events", 1).await;
    assert_eq!(global.len(), 1);
    let e = &global[0];
    assert_eq!(e["actor"], "admin:adm_bootstrap");
    assert_eq!(e["target"], "settings:logging");
    assert_eq!(e["details"]["scope"], "global");
    assert_eq!(
        e["details"]["changes"],
        json!({"api_call_sample_rate": {"before": 1.0, "after": 0.25},
               "log_dashboard_activities": {"before": true, "after": false}})
    );
    let tenant = admin.wait_for("/v1/audit/acme/security?event_type=settings_changed", "events", 1).await;
    assert_eq!(tenant.len(), 1, "{tenant:?}");
    assert_eq!(tenant[0]["details"]["changes"], json!({"log_failed_api_calls": {"before": true, "after": false}}));

    // The settings are kept in the store.
    ts.stop().await;
    let mut ts = TestServer::start_with(tempfile::TempDir::new().unwrap(), |c| c.data_dir = path.clone()).await;
    let admin = ts.admin_client();
    let a = admin.get("/v1/tenants/acme/settings/logging").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["api_call_sample_rate"], 0.25, "inherited from the stored global value");
    assert_eq!(a.body["log_dashboard_activities"], false);
    assert_eq!(a.body["log_failed_api_calls"], false);
    assert_eq!(a.body["log_api_calls"], true);
    ts.stop().await;
}

#[tokio::test]
async fn a_sample_rate_keeps_its_share_of_successful_calls() {
    let mut ts = TestServer::start_with(tempfile::tempdir().unwrap(), |c| c.audit.sample_seed = Some(20261123)).await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/acme", &format!("http://{up}")).await;
    let a = put(&admin, "/v1/tenants/acme/settings/logging", json!({"api_call_sample_rate": 0.1})).await;
    assert_eq!(a.status, 200, "{}", a.text);

    let started = Instant::now();
    calls(&ts, "/acme/fixed", &key, 10_000, 8, 200).await;
    // Failures are not sampled.
    calls(&ts, "/acme/status/500", &key, 20, 2, 500).await;
    let events = stored(&ts, &admin, "acme").await;
    let successes = events.iter().filter(|e| e["status_code"] == 200).count();
    let failures = events.iter().filter(|e| e["status_code"] == 500).count();
    assert!((900..=1100).contains(&successes), "0.1 of 10,000 calls kept {successes} (in {:?})", started.elapsed());
    assert_eq!(failures, 20);
    ts.stop().await;
}

#[tokio::test]
async fn bad_settings_are_refused_and_change_nothing() {
    let mut ts = TestServer::start().await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    for path in ["/api/v1/settings/logging", "/v1/tenants/acme/settings/logging"] {
        for (body, needle) in [
            (json!({"api_call_sample_rate": 2}), "from 0 to 1"),
            (json!({"api_call_sample_rate": -0.5}), "from 0 to 1"),
            (json!({"api_call_sample_rate": "all"}), "from 0 to 1"),
            (json!({"log_api_calls": "no"}), "true or false"),
            (json!({"log_api_calls": 0}), "true or false"),
            (json!({"log_api_calls": false, "log_everything": false}), "unknown setting `log_everything`"),
            (json!({}), "at least one"),
            (json!([true]), "JSON object"),
        ] {
            let a = put(&admin, path, body.clone()).await;
            assert_eq!(a.status, 400, "{path} {body}: {}", a.text);
            assert_eq!(a.body["error"]["code"], "invalid_body", "{}", a.text);
            assert!(a.body["error"]["message"].as_str().unwrap().contains(needle), "{path} {body}: {}", a.text);
        }
        let res = ts.client.put(format!("{}{}", ts.admin, path)).bearer_auth(crate::util::ADMIN_TOKEN).body("{not json").send().await.unwrap();
        assert_eq!(res.status(), 400);
    }
    let a = put(&admin, "/api/v1/settings/logging", json!({"log_api_calls": null})).await;
    assert_eq!(a.status, 400, "{}", a.text);
    assert!(a.text.contains("cannot be null"), "{}", a.text);
    // Nothing changed, and no event was recorded.
    let a = admin.get("/v1/tenants/acme/settings/logging").await;
    assert_eq!(a.body["log_api_calls"], true);
    assert_eq!(a.body["api_call_sample_rate"], 1.0);
    assert_eq!(a.body["inherited"].as_array().unwrap().len(), 5);
    ts.flush().await;
    assert!(admin.get("/v1/audit/_system/security?event_type=settings_changed").await.body["events"].as_array().unwrap().is_empty());

    // Unknown tenant, missing token, wrong method.
    assert_eq!(admin.get("/v1/tenants/nope/settings/logging").await.status, 404);
    assert_eq!(put(&admin, "/v1/tenants/nope/settings/logging", json!({"log_api_calls": false})).await.status, 404);
    let anonymous = Admin { token: String::new(), ..admin.clone() };
    assert_eq!(anonymous.get("/api/v1/settings/logging").await.status, 401);
    assert_eq!(put(&anonymous, "/api/v1/settings/logging", json!({"log_api_calls": false})).await.status, 401);
    assert_eq!(admin.post("/api/v1/settings/logging", json!({"log_api_calls": false})).await.status, 405);
    ts.stop().await;
}
