//! `POST /v1/keys/verify` on the gateway port: verdicts for valid, unknown,
//! revoked, expired, rotated and refused keys; the budget it shares with
//! proxied calls; blocklists and the brute-force block; bad bodies; the
//! trail it leaves; and that the key it was sent appears nowhere.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::{assert_no_secret, everything_written, http, keys_of_every_kind, spawn_serve, start_upstream, Admin, TestServer};

const USER_AGENT: &str = "verify-test/1";

struct Verified {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
    text: String,
}

impl Verified {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn number(&self, name: &str) -> Option<u64> {
        self.header(name).map(|v| v.parse().unwrap())
    }
}

async fn send(req: reqwest::RequestBuilder) -> Verified {
    let res = req.header("user-agent", USER_AGENT).send().await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Verified { status, headers, body, text }
}

/// One verification with a JSON body.
async fn verify(gateway: &str, body: Value) -> Verified {
    send(http().post(format!("{gateway}/v1/keys/verify")).json(&body)).await
}

async fn verify_key(ts: &TestServer, key: &str, api_id: &str) -> Verified {
    verify(&ts.gateway, json!({"key": key, "api_id": api_id})).await
}

/// A proxied call: status and `RateLimit-Remaining`.
async fn proxied(ts: &TestServer, key: &str) -> (u16, Option<u64>) {
    let res = ts.client.get(format!("{}/docs/fixed", ts.gateway)).header("x-api-key", key).send().await.unwrap();
    let remaining = res.headers().get("ratelimit-remaining").map(|v| v.to_str().unwrap().parse().unwrap());
    (res.status().as_u16(), remaining)
}

/// The verdict of a refused key that was never identified.
fn unidentified(code: &str) -> Value {
    json!({"valid": false, "code": code})
}

/// The generic refusal of a blocked caller.
fn assert_generic_403(v: &Verified) {
    assert_eq!(v.status, 403, "{}", v.text);
    assert_eq!(v.body, json!({"error": {"code": "forbidden", "message": "this request is not allowed"}}));
}

/// Tenant `acme` with api `docs` at `/docs` (requiring `docs:read`) and a
/// tier `t` (a burst of 5, then one call every 10 s); a consumer
/// `acme-client` in it with a key holding `docs:read`. Tenant `globex` with
/// api `billing`. Returns (admin, consumer id, key id, key).
async fn setup(ts: &TestServer) -> (Admin, String, String, String) {
    let up = start_upstream().await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    let a = admin.post("/v1/tenants/acme/apis", json!({"id": "docs", "path_prefix": "/docs", "upstream": format!("http://{up}")})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let a = admin.call("PUT", "/v1/tenants/acme/apis/docs/policies", Some(json!({"required_scopes": ["docs:read"]}))).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let a = admin.post("/v1/tenants/acme/tiers", json!({"id": "t", "rate_limit": {"requests_per_minute": 6, "burst": 5}})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let a = admin.post("/v1/tenants/acme/consumers", json!({"name": "acme-client", "tier": "t"})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let consumer = a.body["id"].as_str().unwrap().to_string();
    let (key_id, key) = admin.key("acme", &consumer, json!({"scopes": ["docs:read"]})).await;
    assert_eq!(admin.post("/v1/tenants", json!({"id": "globex", "name": "Globex"})).await.status, 201);
    let a = admin.post("/v1/tenants/globex/apis", json!({"id": "billing", "path_prefix": "/billing", "upstream": format!("http://{up}")})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    (admin, consumer, key_id, key)
}

#[tokio::test]
async fn a_valid_key_is_described_and_shares_its_budget_with_proxied_calls() {
    let mut ts = TestServer::start().await;
    let (admin, consumer, key_id, key) = setup(&ts).await;

    let v = verify_key(&ts, &key, "docs").await;
    assert_eq!(v.status, 200, "{}", v.text);
    let reset = v.body["ratelimit"]["reset"].as_u64().expect("a reset in seconds");
    assert!((1..=60).contains(&reset), "{}", v.text);
    assert_eq!(
        v.body,
        json!({
            "valid": true,
            "code": "VALID",
            "key_id": key_id,
            "tenant_id": "acme",
            "api_id": "docs",
            "consumer": {"id": consumer, "name": "acme-client"},
            "scopes": ["docs:read"],
            "expires_at": null,
            "ratelimit": {"limit": 5, "remaining": 4, "reset": reset},
        })
    );
    assert_eq!(v.header("content-type"), Some("application/json"));
    assert_eq!(v.header("cache-control"), Some("no-store"));
    assert_eq!((v.number("ratelimit-limit"), v.number("ratelimit-remaining")), (Some(5), Some(4)));
    let request_id = v.header("x-request-id").expect("a request id").to_string();

    // One budget: verifications and proxied calls take from the same limit.
    assert_eq!(verify_key(&ts, &key, "docs").await.body["ratelimit"]["remaining"], 3);
    assert_eq!(proxied(&ts, &key).await, (200, Some(2)));
    assert_eq!(verify_key(&ts, &key, "docs").await.body["ratelimit"]["remaining"], 1);
    assert_eq!(proxied(&ts, &key).await, (200, Some(0)));
    let v = verify_key(&ts, &key, "docs").await;
    assert_eq!(v.status, 200, "a decided verification is a 200: {}", v.text);
    assert_eq!((v.body["valid"].as_bool(), v.body["code"].as_str()), (Some(false), Some("rate_limited")), "{}", v.text);
    assert_eq!(v.body["key_id"], key_id.as_str());
    assert_eq!(v.body["ratelimit"]["remaining"], 0);
    let retry = v.number("retry-after").expect("Retry-After");
    assert!((1..=10).contains(&retry), "one call every 10 s: {retry}");
    assert_eq!(v.number("ratelimit-remaining"), Some(0));
    assert_eq!(proxied(&ts, &key).await.0, 429);

    // Each verification is one request event, like a proxied call.
    let logs = admin.wait_for("/v1/audit/acme?path=/v1/keys/verify", "logs", 4).await;
    assert_eq!(logs.len(), 4, "{logs:?}");
    let hint = format!("kt_live****{}", &key[key.len() - 4..]);
    for log in &logs {
        assert_eq!(log["method"], "POST");
        assert_eq!(log["path"], "/v1/keys/verify");
        assert_eq!(log["status_code"], 200);
        assert_eq!(log["api_id"], "docs");
        assert_eq!(log["consumer_id"], consumer.as_str());
        assert_eq!(log["consumer_name"], "acme-client");
        assert_eq!(log["key_id"], key_id.as_str());
        assert_eq!(log["key_hint"], hint.as_str());
        assert_eq!(log["client_ip"], "127.0.0.1");
        assert_eq!(log["user_agent"], USER_AGENT);
        assert!(log["latency_ms"].as_f64().is_some(), "{log}");
        assert!(log["request_size_bytes"].as_u64().unwrap() > key.len() as u64, "{log}");
        assert!(log["response_size_bytes"].as_u64().unwrap() > 0, "{log}");
    }
    assert_eq!((logs[0]["outcome"].as_str(), logs[0]["error_code"].as_str()), (Some("failure"), Some("rate_limited")));
    assert!(logs[1..].iter().all(|l| l["outcome"] == "success" && l["error_code"].is_null()), "{logs:?}");
    assert_eq!(logs[3]["request_id"], request_id.as_str());
    let limited = admin.wait_for("/v1/audit/acme/security?event_type=rate_limit_exceeded", "events", 2).await;
    let from_verify = limited.iter().find(|e| e["request_id"] == logs[0]["request_id"]);
    let e = from_verify.expect("the refused verification's security event");
    assert_eq!(e["target"], "tier:t");
    assert_eq!(e["key_id"], key_id.as_str());
    assert_eq!(e["consumer_id"], consumer.as_str());
    assert_eq!(e["details"]["cost"], 1);
    assert!(!v.text.contains(&key));
    ts.stop().await;
}

#[tokio::test]
async fn refused_keys_get_the_proxy_paths_codes_and_events() {
    let mut ts = TestServer::start().await;
    let (admin, consumer, _, key) = setup(&ts).await;
    let expires = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let (expiring_id, expiring) = admin.key("acme", &consumer, json!({"scopes": ["docs:read"], "expires_at": expires.to_rfc3339()})).await;
    let v = verify_key(&ts, &expiring, "docs").await;
    assert_eq!(v.body["code"], "VALID", "{}", v.text);
    let at = chrono::DateTime::parse_from_rfc3339(v.body["expires_at"].as_str().unwrap()).unwrap();
    assert!((at.timestamp_millis() - expires.timestamp_millis()).abs() < 1000, "{at} vs {expires}");

    // Unknown and malformed keys: nothing identified, nothing revealed.
    let unknown = keytrail::keys::generate_key(keytrail::keys::KeyEnvironment::Live).secret;
    let mut typo = key.clone().into_bytes();
    typo[20] = if typo[20] == b'Z' { b'Y' } else { b'Z' };
    let typo = String::from_utf8(typo).unwrap();
    for bad in [unknown.as_str(), typo.as_str(), "kt_live_guess"] {
        let v = verify_key(&ts, bad, "docs").await;
        assert_eq!(v.status, 200, "{}", v.text);
        assert_eq!(v.body, unidentified("invalid_key"), "{bad}");
    }
    // An empty key is no key, as at the proxy.
    let v = verify_key(&ts, "", "docs").await;
    assert_eq!((v.status, &v.body), (200, &unidentified("missing_key")), "{}", v.text);

    // Revoked: identified, refused.
    let (revoked_id, revoked) = admin.key("acme", &consumer, json!({"scopes": ["docs:read"]})).await;
    assert_eq!(admin.post(&format!("/v1/keys/{revoked_id}/revoke"), json!({})).await.status, 200);
    let v = verify_key(&ts, &revoked, "docs").await;
    assert_eq!((v.body["valid"].as_bool(), v.body["code"].as_str()), (Some(false), Some("revoked_key")), "{}", v.text);
    assert_eq!(v.body["key_id"], revoked_id.as_str());
    assert_eq!(v.body["consumer"], json!({"id": consumer, "name": "acme-client"}));
    assert!(v.body.get("ratelimit").is_none(), "no unit was taken: {}", v.text);

    // A key without the api's scope.
    let (_, unscoped) = admin.key("acme", &consumer, json!({})).await;
    let v = verify_key(&ts, &unscoped, "docs").await;
    assert_eq!(v.body["code"], "insufficient_scope", "{}", v.text);
    assert_eq!((v.body["api_id"].as_str(), v.body["scopes"].clone()), (Some("docs"), json!([])));

    // An api the key's tenant does not have, and another tenant's: the same answer.
    let nope = verify_key(&ts, &key, "nope").await;
    let billing = verify_key(&ts, &key, "billing").await;
    assert_eq!(nope.body["code"], "unknown_api", "{}", nope.text);
    assert_eq!(nope.body["valid"], false);
    assert!(nope.body.get("api_id").is_none(), "{}", nope.text);
    assert_eq!(nope.body, billing.body, "another tenant's api reads as unknown");

    // A suspended consumer.
    let a = admin.post("/v1/tenants/acme/consumers", json!({"name": "paused"})).await;
    let paused = a.body["id"].as_str().unwrap().to_string();
    let (_, paused_key) = admin.key("acme", &paused, json!({"scopes": ["docs:read"]})).await;
    assert_eq!(admin.post(&format!("/v1/tenants/acme/consumers/{paused}/suspend"), json!({})).await.status, 200);
    let v = verify_key(&ts, &paused_key, "docs").await;
    assert_eq!((v.body["valid"].as_bool(), v.body["code"].as_str()), (Some(false), Some("consumer_suspended")), "{}", v.text);
    assert_eq!(v.body["consumer"]["id"], paused.as_str());

    // Expired, once its time has passed.
    while chrono::Utc::now() <= expires + chrono::Duration::milliseconds(50) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v = verify_key(&ts, &expiring, "docs").await;
    assert_eq!((v.body["valid"].as_bool(), v.body["code"].as_str()), (Some(false), Some("expired_key")), "{}", v.text);
    assert_eq!(v.body["key_id"], expiring_id.as_str());

    // The trail: each verification is a request event with its code, and
    // the same security events as a proxied call.
    let logs = admin.wait_for("/v1/audit/acme?path=/v1/keys/verify&limit=100", "logs", 7).await;
    let codes: Vec<&str> = logs.iter().map(|l| l["error_code"].as_str().unwrap_or("-")).collect();
    assert_eq!(codes, ["expired_key", "consumer_suspended", "unknown_api", "unknown_api", "insufficient_scope", "revoked_key", "-"], "{logs:?}");
    assert!(logs.iter().all(|l| l["status_code"] == 200), "{logs:?}");
    assert!(logs[..6].iter().all(|l| l["outcome"] == "failure"), "{logs:?}");
    let unknown_api = &logs[2];
    assert!(unknown_api["api_id"].is_null(), "{unknown_api}");
    assert_eq!(unknown_api["error_message"], "the key's tenant has no API with this id");
    // Keys nobody can place are the system tenant's, like any unattributed call.
    let failed = admin.wait_for("/v1/audit/_system/security?event_type=auth_failed", "events", 4).await;
    assert!(failed.iter().all(|e| e["details"]["key_source"] == "verify_body" && e["actor"] == "ip:127.0.0.1"), "{failed:?}");
    assert!(failed.iter().any(|e| e["details"]["reason"] == "malformed key: checksum mismatch"), "{failed:?}");
    assert!(failed.iter().any(|e| e["details"]["reason"] == "unknown key"), "{failed:?}");
    let unplaced = admin.wait_for("/v1/audit/_system?path=/v1/keys/verify", "logs", 4).await;
    assert!(unplaced.iter().all(|l| l["status_code"] == 200), "{unplaced:?}");
    let codes: Vec<&str> = unplaced.iter().filter_map(|l| l["error_code"].as_str()).collect();
    assert_eq!(codes.iter().filter(|c| **c == "invalid_key").count(), 3, "{unplaced:?}");
    assert_eq!(codes.iter().filter(|c| **c == "missing_key").count(), 1, "{unplaced:?}");
    let e = &admin.wait_for("/v1/audit/acme/security?event_type=revoked_key_used", "events", 1).await[0];
    assert_eq!((e["key_id"].as_str(), e["target"].clone()), (Some(revoked_id.as_str()), json!(format!("key:{revoked_id}"))));
    let e = &admin.wait_for("/v1/audit/acme/security?event_type=expired_key_used", "events", 1).await[0];
    assert_eq!(e["key_id"], expiring_id.as_str());
    let e = &admin.wait_for("/v1/audit/acme/security?event_type=policy_applied", "events", 1).await[0];
    assert_eq!((e["details"]["policy"].as_str(), e["error_code"].as_str()), (Some("required_scopes"), Some("insufficient_scope")));
    ts.stop().await;
}

#[tokio::test]
async fn a_rotated_key_verifies_until_its_grace_ends() {
    let mut ts = TestServer::start().await;
    let (admin, _, old_id, old_key) = setup(&ts).await;
    let a = admin.post(&format!("/v1/keys/{old_id}/rotate"), json!({"grace_seconds": 1})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let new_key = a.body["key"].as_str().unwrap().to_string();
    let new_id = a.body["key_id"].as_str().unwrap().to_string();

    let v = verify_key(&ts, &old_key, "docs").await;
    assert_eq!((v.body["code"].as_str(), v.body["key_id"].as_str()), (Some("VALID"), Some(old_id.as_str())), "{}", v.text);
    assert!(v.body["expires_at"].is_string(), "a rotating key says when its grace ends: {}", v.text);
    let v = verify_key(&ts, &new_key, "docs").await;
    assert_eq!((v.body["code"].as_str(), v.body["key_id"].as_str()), (Some("VALID"), Some(new_id.as_str())), "{}", v.text);
    assert_eq!(v.body["scopes"], json!(["docs:read"]), "the replacement keeps the scopes");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let v = verify_key(&ts, &old_key, "docs").await;
    assert_eq!((v.body["valid"].as_bool(), v.body["code"].as_str()), (Some(false), Some("expired_key")), "{}", v.text);
    assert_eq!(verify_key(&ts, &new_key, "docs").await.body["code"], "VALID");
    ts.stop().await;
}

#[tokio::test]
async fn blocklisted_callers_and_keys_get_the_generic_403() {
    let mut ts = TestServer::start().await;
    let (admin, _, key_id, key) = setup(&ts).await;
    let a = admin.post("/v1/tenants/globex/consumers", json!({"name": "globex-client"})).await;
    let (_, globex_key) = admin.key("globex", a.body["id"].as_str().unwrap(), json!({})).await;

    // A global entry for this address: every verification, any body, any method.
    let a = admin.post("/v1/blocklist", json!({"kind": "ip", "value": "127.0.0.1", "rule_id": "block-local"})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let entry = a.body["id"].as_str().unwrap().to_string();
    assert_generic_403(&verify_key(&ts, &key, "docs").await);
    assert_generic_403(&verify(&ts.gateway, json!({"key": key})).await);
    assert_generic_403(&send(http().get(format!("{}/v1/keys/verify", ts.gateway))).await);
    // The block is in the key's tenant's trail, with the reason.
    let logs = admin.wait_for("/v1/audit/acme?status_min=403&status_max=403", "logs", 1).await;
    assert_eq!(logs.len(), 1, "the other two named no key: {logs:?}");
    assert_eq!((logs[0]["error_code"].as_str(), logs[0]["block_reason"].as_str()), (Some("request_blocked"), Some("IP_BLOCKLISTED")));
    assert_eq!((logs[0]["rule_id"].as_str(), logs[0]["api_id"].as_str()), (Some("block-local"), Some("docs")));
    assert_eq!(logs[0]["path"], "/v1/keys/verify");
    let security = admin.wait_for("/v1/audit/acme/security?event_type=request_blocked", "events", 1).await;
    assert_eq!((security[0]["actor"].as_str(), security[0]["details"]["rule_id"].as_str()), (Some("ip:127.0.0.1"), Some("block-local")));
    admin.wait_for("/v1/audit/_system?status_min=403&status_max=403", "logs", 2).await;
    assert_eq!(admin.call("DELETE", &format!("/v1/blocklist/{entry}"), None).await.status, 204);
    assert_eq!(verify_key(&ts, &key, "docs").await.body["code"], "VALID");

    // A tenant's range blocks verifications of its keys only.
    let a = admin.post("/v1/tenants/acme/blocklist", json!({"kind": "ip", "value": "127.0.0.0/8"})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let entry = a.body["id"].as_str().unwrap().to_string();
    assert_generic_403(&verify_key(&ts, &key, "docs").await);
    assert_eq!(verify_key(&ts, &globex_key, "billing").await.body["code"], "VALID");
    assert_eq!(admin.call("DELETE", &format!("/v1/tenants/acme/blocklist/{entry}"), None).await.status, 204);

    // User agents and keys.
    let a = admin.post("/v1/blocklist", json!({"kind": "user_agent", "value": "verify-test"})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_generic_403(&verify_key(&ts, &key, "docs").await);
    let entry = a.body["id"].as_str().unwrap().to_string();
    assert_eq!(admin.call("DELETE", &format!("/v1/blocklist/{entry}"), None).await.status, 204);
    let a = admin.post("/v1/tenants/acme/blocklist", json!({"kind": "key", "value": key_id})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_generic_403(&verify_key(&ts, &key, "docs").await);
    let logs = admin.wait_for("/v1/audit/acme?status_min=403&status_max=403", "logs", 4).await;
    assert_eq!(logs[0]["block_reason"], "API_KEY_REVOKED", "{:?}", logs[0]);
    assert_eq!(logs[0]["key_id"], key_id.as_str());
    ts.stop().await;
}

#[tokio::test]
async fn repeated_failed_verifications_block_the_address_like_failed_proxy_auth() {
    let mut ts = TestServer::start_with(tempfile::tempdir().unwrap(), |c| {
        c.gateway.bruteforce_failures = 3;
        c.gateway.bruteforce_block = Duration::from_secs(2);
    })
    .await;
    let (admin, consumer, _, key) = setup(&ts).await;
    let (revoked_id, revoked) = admin.key("acme", &consumer, json!({})).await;
    assert_eq!(admin.post(&format!("/v1/keys/{revoked_id}/revoke"), json!({})).await.status, 200);
    // Refusals that are not about the key do not count.
    for api in ["nope", "billing", "docs"] {
        assert!(verify_key(&ts, &key, api).await.status == 200);
    }
    for bad in ["kt_live_guessing", "kt_live_guessing_again"] {
        assert_eq!(verify_key(&ts, bad, "docs").await.body["code"], "invalid_key");
    }
    for _ in 0..2 {
        assert_eq!(verify_key(&ts, &revoked, "docs").await.body["code"], "revoked_key");
    }
    // The block is written off the request path: wait for it.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = verify_key(&ts, &key, "docs").await;
        if v.status == 403 {
            assert_generic_403(&v);
            break;
        }
        assert!(Instant::now() < deadline, "the address was not blocked: {}", v.text);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(proxied(&ts, &key).await.0, 403, "the same block as for failed proxy auth");
    let entries = admin.get("/v1/blocklist").await.body["entries"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!((entries[0]["rule_id"].as_str(), entries[0]["value"].as_str()), (Some("auto-bruteforce"), Some("127.0.0.1")));
    let events = admin.wait_for("/v1/audit/acme/security?event_type=request_blocked", "events", 1).await;
    assert!(events.iter().any(|e| e["actor"] == "keytrail:auto-bruteforce" && e["details"]["failures"] == 4), "{events:?}");
    // And it ends by itself (the verdict may be rate_limited by now: the
    // polling above took units).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let v = verify_key(&ts, &key, "docs").await;
    assert_eq!((v.status, v.body["key_id"].is_string()), (200, true), "{}", v.text);
    ts.stop().await;
}

#[tokio::test]
async fn bad_bodies_and_other_methods_are_refused_naming_what_to_fix() {
    let mut ts = TestServer::start().await;
    let (admin, _, _, key) = setup(&ts).await;
    // An api whose prefix covers the path does not shadow verification.
    let a = admin.post("/v1/tenants/acme/apis", json!({"id": "v1", "path_prefix": "/v1", "upstream": "http://127.0.0.1:9"})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(verify_key(&ts, &key, "docs").await.body["code"], "VALID");
    let url = format!("{}/v1/keys/verify", ts.gateway);

    let raw = |body: String| send(http().post(&url).header("content-type", "application/json").body(body));
    for (body, needle) in [
        ("not json".to_string(), "must be a JSON object"),
        (json!([key, "docs"]).to_string(), "must be a JSON object"),
        ("\"docs\"".to_string(), "must be a JSON object"),
        ("{\"key\": ".to_string(), "not valid JSON"),
        ("".to_string(), "missing field `key`"),
        ("{}".to_string(), "missing field `key`"),
        (json!({"key": key}).to_string(), "missing field `api_id`"),
        (json!({"api_id": "docs"}).to_string(), "missing field `key`"),
        (json!({"key": key, "api_id": "docs", "extra": 1}).to_string(), "unknown field `extra`"),
        (json!({"key": 42, "api_id": "docs"}).to_string(), "`key`: invalid type"),
        (json!({"key": key, "api_id": ["docs"]}).to_string(), "`api_id`: invalid type"),
        (format!("{} {{}}", json!({"key": key, "api_id": "docs"})), "not valid JSON"),
    ] {
        let v = raw(body.clone()).await;
        assert_eq!(v.status, 400, "{body}: {}", v.text);
        assert_eq!(v.body["error"]["code"], "invalid_body", "{}", v.text);
        let message = v.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
        assert!(!v.text.contains(&key), "the key is never echoed: {}", v.text);
    }

    // Too big, declared or streamed.
    let big = json!({"key": key, "api_id": "docs", "pad": "x".repeat(5000)}).to_string();
    let v = raw(big.clone()).await;
    assert_eq!((v.status, v.body["error"]["code"].as_str()), (413, Some("payload_too_large")), "{}", v.text);
    assert!(v.text.contains("4096"), "{}", v.text);
    let chunks = futures_util::stream::iter(big.into_bytes().chunks(1000).map(|c| Ok::<_, std::io::Error>(c.to_vec())).collect::<Vec<_>>());
    let v = send(http().post(&url).body(reqwest::Body::wrap_stream(chunks))).await;
    assert_eq!((v.status, v.body["error"]["code"].as_str()), (413, Some("payload_too_large")), "{}", v.text);

    // Other methods.
    for method in ["GET", "PUT", "DELETE", "PATCH"] {
        let v = send(http().request(method.parse().unwrap(), &url).json(&json!({"key": key, "api_id": "docs"}))).await;
        assert_eq!(v.status, 405, "{method}: {}", v.text);
        assert_eq!(v.body["error"]["code"], "method_not_allowed");
        assert_eq!(v.header("allow"), Some("POST"));
    }
    // Only the exact path: anything else is routed as usual.
    let v = send(http().post(format!("{url}/")).json(&json!({"key": key, "api_id": "docs"}))).await;
    assert_eq!(v.body["error"]["code"], "missing_key", "the /v1 api's call: {}", v.text);

    // Each refusal is a failed request event (nobody to attribute it to).
    let logs = admin.wait_for("/v1/audit/_system?path=/v1/keys/verify&limit=100", "logs", 18).await;
    let statuses: Vec<u64> = logs.iter().map(|l| l["status_code"].as_u64().unwrap()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 400).count(), 12, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 413).count(), 2, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 405).count(), 4, "{statuses:?}");
    assert!(logs.iter().all(|l| l["outcome"] == "failure"), "{logs:?}");
    ts.stop().await;
}

/// The key sent for verification, in every form, against the process's
/// output, every answer, the audit API and every file in the data directory.
#[tokio::test]
async fn the_verified_key_appears_in_no_answer_event_file_or_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let up = start_upstream().await;
    let (mut p, admin, gateway) = spawn_serve(&data, dir.path(), &[("KEYTRAIL_LOG", "debug")]);
    let (consumer, _, valid) = admin.setup("acme", "/leak", &format!("http://{up}")).await;
    let keys = keys_of_every_kind(&admin, &consumer, &valid).await;

    let mut answers: Vec<String> = Vec::new();
    for key in &keys {
        for body in [
            json!({"key": key, "api_id": "leak"}),
            json!({"key": key, "api_id": "nope"}),
            json!({"key": key, "api_id": key}),
            json!({"key": key, "api_id": "leak", key.as_str(): 1}),
            json!({"key": [key], "api_id": "leak"}),
            json!({"key": key}),
            json!({"key": key, "api_id": "leak", "pad": "x".repeat(5000)}),
        ] {
            let v = verify(&gateway, body).await;
            answers.push(format!("{:?}", v.headers));
            answers.push(v.text);
        }
        let v = send(http().post(format!("{gateway}/v1/keys/verify")).body(format!("{{\"key\": \"{key}\", oops"))).await;
        answers.push(v.text);
        let v = send(http().get(format!("{gateway}/v1/keys/verify?key={key}"))).await;
        answers.push(v.text);
    }
    let verdict: Value = serde_json::from_str(&answers[1]).unwrap();
    assert_eq!(verdict["code"], "VALID", "the valid key verified: {verdict}");

    // The trail holds the calls (read through the API), then everything else.
    admin.wait_for("/v1/audit/acme?path=/v1/keys/verify&limit=1000", "logs", 3 * 4).await;
    for path in [
        "/v1/audit/acme?limit=1000",
        "/v1/audit/acme/security?limit=1000",
        "/v1/audit/_system?limit=1000",
        "/v1/audit/_system/security?limit=1000",
        "/v1/audit/acme/export/json",
        "/v1/audit/_system/export/json",
        "/v1/audit/acme/export/csv",
    ] {
        let a = admin.get(path).await;
        assert_eq!(a.status, 200, "{path}: {}", a.text);
        answers.push(a.text);
    }
    assert!(answers.iter().any(|a| a.contains("kt_live****")), "hints are recorded in place of keys");
    assert!(p.interrupt_and_wait().success());

    let outputs = everything_written(&p, &data, answers);
    assert!(outputs.iter().any(|(name, bytes)| name.starts_with("decoded") && bytes.windows(15).any(|w| w == b"/v1/keys/verify")));
    assert_no_secret(&keys.iter().collect::<Vec<_>>(), &outputs);
}

/// A body that stops coming is the caller's timeout (408
/// `request_timeout`, as on the proxy path), not a body that is no JSON
/// object: it was answered 400 `invalid_body`, which says "fix the body,
/// do not retry".
#[tokio::test]
async fn a_body_that_stops_coming_is_a_request_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut ts = TestServer::start().await;
    let (admin, _, _, _) = setup(&ts).await;
    let mut stream = tokio::net::TcpStream::connect(ts.gateway.trim_start_matches("http://")).await.unwrap();
    let head = "POST /v1/keys/verify HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n{\"key\": ";
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(started.elapsed() >= Duration::from_secs(9), "{answer}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
    let logs = admin.wait_for("/v1/audit/_system?path=/v1/keys/verify", "logs", 1).await;
    assert_eq!((logs[0]["status_code"].as_u64(), logs[0]["error_code"].as_str()), (Some(408), Some("request_timeout")), "{logs:?}");
    ts.stop().await;
}
