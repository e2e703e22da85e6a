//! Rate limits over real sockets: bursts, the per-minute rate, the daily
//! cap, endpoint costs, an api's own limit, their headers and their events.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::{start_upstream, Admin, TestServer};

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<u64> {
        self.headers.get(name).map(|v| v.to_str().unwrap().parse().unwrap_or_else(|_| panic!("{name}: {v:?}")))
    }
}

async fn call(ts: &TestServer, path: &str, key: &str) -> Answer {
    let res = ts.client.get(format!("{}{}", ts.gateway, path)).header("x-api-key", key).send().await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    Answer { status, headers, body: res.text().await.unwrap() }
}

/// A tenant `acme` with an api at `/docs` (`api` merged into its body) and
/// a tier `t` (`tier` merged into its body); returns a key of a consumer in
/// that tier.
async fn setup(ts: &TestServer, api: Value, tier: Value) -> (Admin, String, String) {
    let up = start_upstream().await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    let mut api_body = json!({"id": "docs", "path_prefix": "/docs", "upstream": format!("http://{up}")});
    api_body.as_object_mut().unwrap().extend(api.as_object().unwrap().clone());
    let a = admin.post("/v1/tenants/acme/apis", api_body).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let mut tier_body = json!({"id": "t"});
    tier_body.as_object_mut().unwrap().extend(tier.as_object().unwrap().clone());
    let a = admin.post("/v1/tenants/acme/tiers", tier_body).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let a = admin.post("/v1/tenants/acme/consumers", json!({"name": "batch-job", "tier": "t"})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.body["tier"], "t");
    let consumer = a.body["id"].as_str().unwrap().to_string();
    let (_, key) = admin.key("acme", &consumer, json!({})).await;
    (admin, consumer, key)
}

#[tokio::test]
async fn a_burst_the_tier_allows_passes_and_the_next_call_waits() {
    let mut ts = TestServer::start().await;
    // Six a minute (one every 10 s) after a burst of up to 200.
    let (admin, consumer, key) = setup(&ts, json!({}), json!({"rate_limit": {"requests_per_minute": 6, "burst": 200}})).await;

    // A batch job: 200 calls as fast as it can (inside 10 s, so nothing
    // refills meanwhile), all pass.
    let started = Instant::now();
    for i in 0..200u64 {
        let a = call(&ts, "/docs/fixed", &key).await;
        assert_eq!(a.status, 200, "call {i}: {}", a.body);
        assert_eq!(a.header("ratelimit-limit"), Some(200));
        assert_eq!(a.header("ratelimit-remaining"), Some(199 - i), "call {i}");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    let a = call(&ts, "/docs/fixed", &key).await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert!(a.body.contains("\"rate_limited\""), "{}", a.body);
    let retry = a.header("retry-after").expect("Retry-After");
    assert!((1..=10).contains(&retry), "one call every 10 s: {retry}");
    assert_eq!(a.header("ratelimit-remaining"), Some(0));
    assert_eq!(a.header("ratelimit-limit"), Some(200));

    // The refusal is a failed request event and a security event naming
    // consumer, key, limit and window.
    let events = admin.wait_for("/v1/audit/acme/security?event_type=rate_limit_exceeded", "events", 1).await;
    let e = &events[0];
    assert_eq!(e["consumer_id"], consumer.as_str());
    assert!(e["key_id"].as_str().unwrap().starts_with("key_"));
    assert_eq!(e["target"], "tier:t");
    assert_eq!(e["details"]["limit"], 6);
    assert_eq!(e["details"]["window"], "minute");
    let refused = admin.wait_for("/v1/audit/acme?status_min=429&status_max=429", "logs", 1).await;
    assert_eq!(refused[0]["error_code"], "rate_limited");
    ts.stop().await;
}

#[tokio::test]
async fn the_rate_refills_over_the_minute() {
    let mut ts = TestServer::start().await;
    // 120 a minute: one every 500 ms, no burst beyond one.
    let (_, _, key) = setup(&ts, json!({}), json!({"rate_limit": {"requests_per_minute": 120, "burst": 1}})).await;
    assert_eq!(call(&ts, "/docs/fixed", &key).await.status, 200);
    let a = call(&ts, "/docs/fixed", &key).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.header("retry-after"), Some(1));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(call(&ts, "/docs/fixed", &key).await.status, 200, "a cell came back after 500 ms");
    assert_eq!(call(&ts, "/docs/fixed", &key).await.status, 429);
    ts.stop().await;
}

#[tokio::test]
async fn the_daily_cap_catches_a_steady_caller_and_counts_endpoint_costs() {
    let mut ts = TestServer::start().await;
    let (admin, _, key) = setup(
        &ts,
        json!({"costs": [{"path_prefix": "/docs/export", "cost": 50}]}),
        json!({"daily_quota": 120}),
    )
    .await;
    // Two exports count 100 of the 120.
    for expected_remaining in [70, 20] {
        let a = call(&ts, "/docs/export/fixed", &key).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.header("ratelimit-limit"), Some(120));
        assert_eq!(a.header("ratelimit-remaining"), Some(expected_remaining));
        let reset = a.header("ratelimit-reset").unwrap();
        assert!((1..=86_400).contains(&reset), "until midnight UTC: {reset}");
    }
    // A third export would pass the cap...
    let a = call(&ts, "/docs/export/fixed", &key).await;
    assert_eq!(a.status, 429, "{}", a.body);
    let retry = a.header("retry-after").unwrap();
    assert!((1..=86_400).contains(&retry), "{retry}");
    // ...but the 20 single calls left still pass, and then nothing does.
    for _ in 0..20 {
        assert_eq!(call(&ts, "/docs/fixed", &key).await.status, 200);
    }
    assert_eq!(call(&ts, "/docs/fixed", &key).await.status, 429);
    let events = admin.wait_for("/v1/audit/acme/security?event_type=rate_limit_exceeded", "events", 2).await;
    assert!(events.iter().all(|e| e["details"]["window"] == "day" && e["details"]["limit"] == 120), "{events:?}");
    assert!(events.iter().any(|e| e["details"]["cost"] == 50), "{events:?}");
    ts.stop().await;
}

/// A call a policy refuses (a forbidden path, a method the api does not
/// take, a body too large, a missing scope) is refused before the rate
/// limits are asked: it spends none of the consumer's or the api's budget.
#[tokio::test]
async fn calls_a_policy_refuses_spend_no_rate_limit() {
    let mut ts = TestServer::start().await;
    let policies = json!({"allowed_methods": ["GET", "POST"], "forbidden_paths": ["/docs/admin"], "max_body_bytes": 10});
    let (admin, consumer, key) = setup(
        &ts,
        json!({"policies": policies, "rate_limit": {"requests_per_minute": 1, "burst": 3}}),
        json!({"rate_limit": {"requests_per_minute": 1, "burst": 2}}),
    )
    .await;
    let url = |path: &str| format!("{}{}", ts.gateway, path);
    for _ in 0..3 {
        assert_eq!(call(&ts, "/docs/admin/users", &key).await.status, 403);
        let res = ts.client.delete(url("/docs/fixed")).header("x-api-key", &key).send().await.unwrap();
        assert_eq!(res.status(), 405);
        let res = ts.client.post(url("/docs/upload")).header("x-api-key", &key).body(vec![b'x'; 11]).send().await.unwrap();
        assert_eq!(res.status(), 413);
    }
    // The tier's burst of two is still whole.
    for remaining in [1, 0] {
        let a = call(&ts, "/docs/fixed", &key).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.header("ratelimit-remaining"), Some(remaining));
    }
    assert_eq!(call(&ts, "/docs/fixed", &key).await.status, 429);
    // A missing scope is a policy too: another key of a consumer with its
    // own tier budget, on an api that asks for a scope.
    let up = start_upstream().await;
    let a = admin
        .post(
            "/v1/tenants/acme/apis",
            json!({"id": "scoped", "path_prefix": "/scoped", "upstream": format!("http://{up}"),
                   "policies": {"required_scopes": ["s:read"]}, "rate_limit": {"requests_per_minute": 1, "burst": 1}}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    let (_, unscoped) = admin.key("acme", &consumer, json!({})).await;
    let (_, scoped) = admin.key("acme", &consumer, json!({"scopes": ["s:read"]})).await;
    for _ in 0..3 {
        assert_eq!(call(&ts, "/scoped/fixed", &unscoped).await.status, 403);
    }
    // The api's own limit of one is still whole (the spent tier taken off,
    // so that it is the limit that answers).
    let a = admin.call("PUT", &format!("/v1/tenants/acme/consumers/{consumer}/tier"), Some(json!({"tier": null}))).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let a = call(&ts, "/scoped/fixed", &scoped).await;
    assert_eq!((a.status, a.header("ratelimit-remaining")), (200, Some(0)), "{}", a.body);
    assert_eq!(call(&ts, "/scoped/fixed", &scoped).await.status, 429);
    ts.stop().await;
}

#[tokio::test]
async fn an_api_limit_applies_beside_the_tier_and_tier_changes_apply_at_once() {
    let mut ts = TestServer::start().await;
    let (admin, consumer, key) = setup(
        &ts,
        json!({"rate_limit": {"requests_per_minute": 60, "burst": 3}}),
        json!({"rate_limit": {"requests_per_minute": 6000, "burst": 1000}}),
    )
    .await;
    for remaining in [2, 1, 0] {
        let a = call(&ts, "/docs/fixed", &key).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("ratelimit-remaining"), Some(remaining), "the api's limit is the closer one");
    }
    assert_eq!(call(&ts, "/docs/fixed", &key).await.status, 429);
    let events = admin.wait_for("/v1/audit/acme/security?event_type=rate_limit_exceeded", "events", 1).await;
    assert_eq!(events[0]["target"], "api:docs");

    // A consumer with no tier on an api with no limit gets no headers; a
    // tier given later applies from the next call.
    let a = admin.post("/v1/tenants/acme/apis", json!({"id": "free", "path_prefix": "/free", "upstream": "http://127.0.0.1:9"})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let up = start_upstream().await;
    let a = admin.post("/v1/tenants/acme/apis", json!({"id": "open", "path_prefix": "/open", "upstream": format!("http://{up}")})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let a = admin.call("PUT", &format!("/v1/tenants/acme/consumers/{consumer}/tier"), Some(json!({"tier": null}))).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["tier"], Value::Null);
    let a = call(&ts, "/open/fixed", &key).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("ratelimit-limit"), None);
    let a = admin.post("/v1/tenants/acme/tiers", json!({"id": "tiny", "daily_quota": 1})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let a = admin.call("PUT", &format!("/v1/tenants/acme/consumers/{consumer}/tier"), Some(json!({"tier": "tiny"}))).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(call(&ts, "/open/fixed", &key).await.header("ratelimit-remaining"), Some(0));
    assert_eq!(call(&ts, "/open/fixed", &key).await.status, 429);
    ts.stop().await;
}

#[tokio::test]
async fn bad_limits_are_refused_with_what_to_fix() {
    let mut ts = TestServer::start().await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    for (body, needle) in [
        (json!({"id": "t"}), "needs a `rate_limit`, a `daily_quota`"),
        (json!({"id": "t", "rate_limit": {"requests_per_minute": 0, "burst": 1}}), "between 1 and"),
        (json!({"id": "t", "rate_limit": {"requests_per_minute": 10, "burst": 0}}), "between 1 and"),
        (json!({"id": "t", "rate_limit": {"requests_per_minute": 10}}), "burst"),
        (json!({"id": "t", "rate_limit": {"requests_per_minute": 10, "burst": 1, "window": 5}}), "window"),
        (json!({"id": "t", "daily_quota": 0}), "between 1 and"),
        (json!({"id": "t", "daily_quota": -5}), "daily_quota"),
        (json!({"id": "Bad Id", "daily_quota": 5}), "`id`"),
        (json!({"id": "t", "daily_quota": 5, "color": "red"}), "color"),
    ] {
        let a = admin.post("/v1/tenants/acme/tiers", body.clone()).await;
        assert_eq!(a.status, 400, "{body}: {}", a.text);
        assert!(a.text.contains(needle), "{body}: {}", a.text);
    }
    assert_eq!(admin.post("/v1/tenants/acme/tiers", json!({"id": "t", "daily_quota": 5})).await.status, 201);
    assert_eq!(admin.post("/v1/tenants/acme/tiers", json!({"id": "t", "daily_quota": 9})).await.status, 409);
    assert_eq!(admin.post("/v1/tenants/nope/tiers", json!({"id": "t", "daily_quota": 9})).await.status, 404);
    let tiers = admin.get("/v1/tenants/acme/tiers").await;
    assert_eq!(tiers.body["tiers"], json!([{"tenant_id": "acme", "id": "t", "rate_limit": null, "daily_quota": 5,
        "created_at": tiers.body["tiers"][0]["created_at"]}]));

    // Updating and deleting tiers.
    let a = admin.call("PUT", "/v1/tenants/acme/tiers/t", Some(json!({"rate_limit": {"requests_per_minute": 30, "burst": 3}}))).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["rate_limit"], json!({"requests_per_minute": 30, "burst": 3}));
    assert_eq!(a.body["daily_quota"], Value::Null, "a PUT replaces the limits");
    assert_eq!(admin.call("PUT", "/v1/tenants/acme/tiers/t", Some(json!({}))).await.status, 400);
    assert_eq!(admin.call("PUT", "/v1/tenants/acme/tiers/nope", Some(json!({"daily_quota": 1}))).await.status, 404);
    // A tier named in the path that no tier id could be is missing too (as
    // for DELETE), not a body naming a bad `id`: the body names none.
    let a = admin.call("PUT", "/v1/tenants/acme/tiers/T", Some(json!({"daily_quota": 1}))).await;
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (404, Some("not_found")), "{}", a.text);
    let a = admin.post("/v1/tenants/acme/consumers", json!({"name": "in-tier", "tier": "t"})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let a = admin.call("DELETE", "/v1/tenants/acme/tiers/t", None).await;
    assert_eq!(a.status, 409, "a tier with consumers stays: {}", a.text);
    assert!(a.text.contains("move them first"), "{}", a.text);
    assert_eq!(admin.post("/v1/tenants/acme/tiers", json!({"id": "spare", "daily_quota": 5})).await.status, 201);
    assert_eq!(admin.call("DELETE", "/v1/tenants/acme/tiers/spare", None).await.status, 204);
    assert_eq!(admin.call("DELETE", "/v1/tenants/acme/tiers/spare", None).await.status, 404);

    let a = admin.post("/v1/tenants/acme/consumers", json!({"name": "c", "tier": "gold"})).await;
    assert_eq!(a.status, 400, "{}", a.text);
    assert!(a.text.contains("tier `gold` does not exist"), "{}", a.text);
    let a = admin.post("/v1/tenants/acme/consumers", json!({"name": "c"})).await;
    let consumer = a.body["id"].as_str().unwrap().to_string();
    let a = admin.call("PUT", &format!("/v1/tenants/acme/consumers/{consumer}/tier"), Some(json!({"tier": "gold"}))).await;
    assert_eq!(a.status, 400, "{}", a.text);
    let a = admin.call("PUT", "/v1/tenants/acme/consumers/cons_nope/tier", Some(json!({"tier": "t"}))).await;
    assert_eq!(a.status, 404, "{}", a.text);

    for (api, needle) in [
        (json!({"costs": [{"path_prefix": "/elsewhere", "cost": 5}]}), "not under the api's prefix"),
        (json!({"costs": [{"path_prefix": "/docs/x", "cost": 0}]}), "cost must be between"),
        (json!({"costs": [{"path_prefix": "docs", "cost": 2}]}), "must start with `/`"),
        (json!({"costs": [{"path_prefix": "/docs/x"}]}), "cost"),
        (json!({"rate_limit": {"requests_per_minute": 10, "burst": 2000000000}}), "between 1 and"),
    ] {
        let mut body = json!({"id": "docs", "path_prefix": "/docs", "upstream": "http://127.0.0.1:9"});
        body.as_object_mut().unwrap().extend(api.as_object().unwrap().clone());
        let a = admin.post("/v1/tenants/acme/apis", body.clone()).await;
        assert_eq!(a.status, 400, "{body}: {}", a.text);
        assert!(a.text.contains(needle), "{body}: {}", a.text);
    }
    ts.stop().await;
}

/// A call one limit refuses spends nothing of the others: the api's minute
/// cells are still there after the tier's minute limit refused calls, and
/// the tier's after the api's refused them.
#[tokio::test]
async fn a_call_one_limit_refuses_spends_nothing_of_the_others() {
    let mut ts = TestServer::start().await;
    // One cell a minute each, so nothing refills during the test.
    let (admin, consumer, key) = setup(
        &ts,
        json!({"rate_limit": {"requests_per_minute": 1, "burst": 5}}),
        json!({"rate_limit": {"requests_per_minute": 1, "burst": 2}}),
    )
    .await;
    for remaining in [1, 0] {
        let a = call(&ts, "/docs/fixed", &key).await;
        assert_eq!((a.status, a.header("ratelimit-remaining")), (200, Some(remaining)), "{}", a.body);
    }
    for _ in 0..3 {
        let a = call(&ts, "/docs/fixed", &key).await;
        assert_eq!(a.status, 429, "{}", a.body);
    }
    let events = admin.wait_for("/v1/audit/acme/security?event_type=rate_limit_exceeded", "events", 3).await;
    assert!(events.iter().all(|e| e["target"] == "tier:t"), "{events:?}");
    // Out of the tier, the api's own limit is all that is left: 5 less the
    // 2 calls that passed (the api's limiter is carried over the change).
    let a = admin.call("PUT", &format!("/v1/tenants/acme/consumers/{consumer}/tier"), Some(json!({"tier": null}))).await;
    assert_eq!(a.status, 200, "{}", a.text);
    for remaining in [2, 1, 0] {
        let a = call(&ts, "/docs/fixed", &key).await;
        assert_eq!((a.status, a.header("ratelimit-limit"), a.header("ratelimit-remaining")), (200, Some(5), Some(remaining)), "the tier's refusals spent api cells: {}", a.body);
    }
    assert_eq!(call(&ts, "/docs/fixed", &key).await.status, 429);

    // The other way round: the api's limit refuses, the tier's cells stay.
    let up = start_upstream().await;
    let a = admin.post("/v1/tenants/acme/apis", json!({"id": "open", "path_prefix": "/open", "upstream": format!("http://{up}")})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let a = admin.post("/v1/tenants/acme/tiers", json!({"id": "wide", "rate_limit": {"requests_per_minute": 1, "burst": 4}})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let a = admin.call("PUT", &format!("/v1/tenants/acme/consumers/{consumer}/tier"), Some(json!({"tier": "wide"}))).await;
    assert_eq!(a.status, 200, "{}", a.text);
    for _ in 0..3 {
        assert_eq!(call(&ts, "/docs/fixed", &key).await.status, 429, "the api's limit is spent");
    }
    for remaining in [3, 2, 1, 0] {
        let a = call(&ts, "/open/fixed", &key).await;
        assert_eq!((a.status, a.header("ratelimit-limit"), a.header("ratelimit-remaining")), (200, Some(4), Some(remaining)), "{}", a.body);
    }
    ts.stop().await;
}

/// A call whose cost is above the whole daily quota can never pass: it is
/// refused as such (403 `cost_exceeds_quota`, no `Retry-After` pointing at
/// a midnight after which it would be refused again), spends nothing, and
/// its request event and security event carry that code.
#[tokio::test]
async fn a_cost_above_the_whole_daily_quota_is_refused_as_one_that_never_passes() {
    let mut ts = TestServer::start().await;
    let (admin, consumer, key) = setup(
        &ts,
        json!({"costs": [{"path_prefix": "/docs/export", "cost": 500}, {"path_prefix": "/docs/batch", "cost": 100}]}),
        json!({"daily_quota": 100}),
    )
    .await;
    let a = call(&ts, "/docs/export/fixed", &key).await;
    assert_eq!(a.status, 403, "{}", a.body);
    let body: Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(body["error"]["code"], "cost_exceeds_quota", "{}", a.body);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("500") && message.contains("100"), "{message}");
    assert_eq!(a.header("retry-after"), None, "no wait lets it pass");
    assert_eq!((a.header("ratelimit-limit"), a.header("ratelimit-remaining")), (Some(100), Some(100)));
    // It spent nothing: a call of exactly the whole quota still passes.
    let a = call(&ts, "/docs/batch/fixed", &key).await;
    assert_eq!((a.status, a.header("ratelimit-remaining")), (200, Some(0)), "{}", a.body);
    // Once the day is spent, a cheap call is `rate_limited` as before, and
    // the costly one is still the call that never passes.
    let a = call(&ts, "/docs/fixed", &key).await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert!(a.body.contains("\"rate_limited\"") && a.header("retry-after").is_some(), "{}", a.body);
    let a = call(&ts, "/docs/export/fixed", &key).await;
    assert_eq!((a.status, a.header("retry-after")), (403, None), "{}", a.body);
    assert!(a.body.contains("\"cost_exceeds_quota\""), "{}", a.body);

    let refused = admin.wait_for("/v1/audit/acme?status_min=403&status_max=403", "logs", 2).await;
    assert!(refused.iter().all(|e| e["error_code"] == "cost_exceeds_quota" && e["path"] == "/docs/export/fixed"), "{refused:?}");
    let events = admin.wait_for("/v1/audit/acme/security?event_type=rate_limit_exceeded", "events", 3).await;
    let costly: Vec<&Value> = events.iter().filter(|e| e["details"]["cost"] == 500).collect();
    assert_eq!(costly.len(), 2, "{events:?}");
    for e in costly {
        assert_eq!((e["error_code"].as_str(), e["consumer_id"].as_str()), (Some("cost_exceeds_quota"), Some(consumer.as_str())), "{e}");
        assert_eq!((e["details"]["window"].as_str(), e["details"]["limit"].as_u64()), (Some("day"), Some(100)), "{e}");
        assert!(e["details"].get("retry_after_secs").is_none(), "{e}");
    }
    ts.stop().await;
}

/// Every answer to a call the limits checked carries its `RateLimit-*`
/// headers, the gateway's own refusals after the check too: a call whose
/// upstream cannot be reached (502) has spent its share of the budget. They
/// were left off, so a caller pacing itself by them lost count at every
/// upstream failure.
#[tokio::test]
async fn an_upstream_failure_after_the_limits_still_tells_the_budget() {
    let mut ts = TestServer::start().await;
    let (admin, _, key) = setup(&ts, json!({}), json!({"rate_limit": {"requests_per_minute": 60, "burst": 5}})).await;
    let down = crate::util::closed_port().await;
    let a = admin.post("/v1/tenants/acme/apis", json!({"id": "down", "path_prefix": "/down", "upstream": format!("http://{down}")})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let a = call(&ts, "/docs/x", &key).await;
    assert_eq!((a.status, a.header("ratelimit-limit"), a.header("ratelimit-remaining")), (200, Some(5), Some(4)), "{}", a.body);
    let a = call(&ts, "/down/x", &key).await;
    assert_eq!(a.status, 502, "{}", a.body);
    assert_eq!((a.header("ratelimit-limit"), a.header("ratelimit-remaining")), (Some(5), Some(3)), "{:?}", a.headers);
    assert!(a.header("ratelimit-reset").is_some(), "{:?}", a.headers);
    ts.stop().await;
}

/// A costly call the minute limit refuses is told how many cells are left,
/// not 0: a consumer with 2 of 5 left asking for an export that costs 3 is
/// refused, and 2 single calls still pass. The refusal said
/// `RateLimit-Remaining: 0` (as the daily cap's refusal never did), so a
/// client pacing itself by the header waited when it had budget left; and
/// its `RateLimit-Reset` was the wait for this call (`Retry-After`), not the
/// time until the limit is whole again, as on every other answer.
#[tokio::test]
async fn a_costly_call_the_minute_limit_refuses_tells_what_is_left() {
    let mut ts = TestServer::start().await;
    // One cell a minute, so nothing refills during the test.
    let (_, _, key) = setup(
        &ts,
        json!({"costs": [{"path_prefix": "/docs/export", "cost": 3}]}),
        json!({"rate_limit": {"requests_per_minute": 1, "burst": 5}}),
    )
    .await;
    let a = call(&ts, "/docs/export/fixed", &key).await;
    assert_eq!((a.status, a.header("ratelimit-remaining")), (200, Some(2)), "{}", a.body);
    let a = call(&ts, "/docs/export/fixed", &key).await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!((a.header("ratelimit-limit"), a.header("ratelimit-remaining")), (Some(5), Some(2)), "{:?}", a.headers);
    // It waits for one more cell; the burst is whole again after three.
    assert_eq!((a.header("retry-after"), a.header("ratelimit-reset")), (Some(60), Some(180)), "{:?}", a.headers);
    // The two cells the header names are there.
    for remaining in [1, 0] {
        let a = call(&ts, "/docs/fixed", &key).await;
        assert_eq!((a.status, a.header("ratelimit-remaining")), (200, Some(remaining)), "{}", a.body);
    }
    let a = call(&ts, "/docs/fixed", &key).await;
    assert_eq!((a.status, a.header("ratelimit-remaining")), (429, Some(0)), "{}", a.body);
    ts.stop().await;
}

/// A tier's limits replaced (`PUT`) start its consumers' counters afresh,
/// as the API promises, even when the new limits equal the old ones: that
/// is how an operator gives a consumer back a day it spent by mistake.
/// The counters were carried over whenever the values did not change, so
/// the same PUT answered 200 and the consumer stayed refused.
#[tokio::test]
async fn a_tier_put_again_with_the_same_limits_starts_its_counters_afresh() {
    let mut ts = TestServer::start().await;
    let (admin, _, key) = setup(&ts, json!({}), json!({"daily_quota": 2, "rate_limit": {"requests_per_minute": 1, "burst": 5}})).await;
    for remaining in [1, 0] {
        let a = call(&ts, "/docs/fixed", &key).await;
        assert_eq!((a.status, a.header("ratelimit-remaining")), (200, Some(remaining)), "{}", a.body);
    }
    assert_eq!(call(&ts, "/docs/fixed", &key).await.status, 429);
    let same = json!({"daily_quota": 2, "rate_limit": {"requests_per_minute": 1, "burst": 5}});
    let a = admin.call("PUT", "/v1/tenants/acme/tiers/t", Some(same)).await;
    assert_eq!(a.status, 200, "{}", a.text);
    for remaining in [1, 0] {
        let a = call(&ts, "/docs/fixed", &key).await;
        assert_eq!((a.status, a.header("ratelimit-remaining")), (200, Some(remaining)), "afresh: {}", a.body);
    }
    assert_eq!(call(&ts, "/docs/fixed", &key).await.status, 429);
    // Other changes leave the counters as they are.
    let a = admin.post("/v1/tenants/acme/consumers", json!({"name": "another", "tier": "t"})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(call(&ts, "/docs/fixed", &key).await.status, 429);
    ts.stop().await;
}

/// `RateLimit-Reset` is the time until the burst is whole again, to the
/// second, also while earlier calls are partly paid off: at six a minute
/// (a cell every 10 s), two calls 3 s apart leave the limit whole again
/// after 17 s. It said 20: the cells spent, rounded up to whole cells, so
/// at slow rates a client was told to wait up to a cell's time too long.
#[tokio::test]
async fn the_reset_is_the_time_until_the_burst_is_whole_again() {
    let mut ts = TestServer::start().await;
    let (_, _, key) = setup(&ts, json!({}), json!({"rate_limit": {"requests_per_minute": 6, "burst": 3}})).await;
    let a = call(&ts, "/docs/fixed", &key).await;
    assert_eq!((a.status, a.header("ratelimit-remaining"), a.header("ratelimit-reset")), (200, Some(2), Some(10)), "{}", a.body);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let a = call(&ts, "/docs/fixed", &key).await;
    assert_eq!((a.status, a.header("ratelimit-remaining")), (200, Some(1)), "{}", a.body);
    assert_eq!(a.header("ratelimit-reset"), Some(17), "7 s left of the first cell, 10 s of the second");
    // A refusal tells the same time: the third cell spent, a fourth refused.
    assert_eq!(call(&ts, "/docs/fixed", &key).await.status, 200);
    let a = call(&ts, "/docs/fixed", &key).await;
    assert_eq!((a.status, a.header("ratelimit-remaining"), a.header("ratelimit-reset")), (429, Some(0), Some(27)), "{:?}", a.headers);
    assert_eq!(a.header("retry-after"), Some(7), "{:?}", a.headers);
    ts.stop().await;
}
