//! The key lifecycle as the gateway sees it: rotation with a grace period,
//! expiry, revocation, scope changes, consumer suspension, last use — each
//! step recorded as a security event naming the admin who took it.

use std::time::Duration;

use serde_json::{json, Value};

use crate::util::{start_upstream, Admin, TestServer};

/// One call through the gateway: status and the JSON error code, if any.
async fn call(ts: &TestServer, path: &str, key: &str) -> (u16, String) {
    let res = ts.client.get(format!("{}{path}", ts.gateway)).header("X-API-Key", key).send().await.unwrap();
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    (status, body["error"]["code"].as_str().unwrap_or("").to_string())
}

async fn security(admin: &Admin, event_type: &str, n: usize) -> Vec<Value> {
    admin.wait_for(&format!("/v1/audit/acme/security?event_type={event_type}"), "events", n).await
}

fn keys_of(listing: &Value) -> Vec<Value> {
    listing["keys"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_rotated_key_works_until_its_grace_ends_then_is_expired() {
    let mut ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (consumer, old_id, old_key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    assert_eq!(call(&ts, "/docs/fixed", &old_key).await.0, 200);

    let a = admin.post(&format!("/v1/keys/{old_id}/rotate"), json!({"grace_seconds": 1})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.headers.get("cache-control").map(String::as_str), Some("no-store"));
    let new_key = a.body["key"].as_str().unwrap().to_string();
    let new_id = a.body["key_id"].as_str().unwrap().to_string();
    assert_ne!(new_id, old_id);
    assert_eq!(a.body["status"], "active");
    assert_eq!(a.body["replaces"]["key_id"], old_id.as_str());
    assert_eq!(a.body["replaces"]["status"], "rotating");
    assert_eq!(a.body["replaces"]["replaced_by"], new_id.as_str());
    assert!(a.body["replaces"].get("key").is_none(), "the old secret is never shown again");

    // Both work during the grace.
    assert_eq!(call(&ts, "/docs/fixed", &old_key).await.0, 200);
    assert_eq!(call(&ts, "/docs/fixed", &new_key).await.0, 200);
    // A rotating key cannot be rotated again: rotate its replacement.
    let a = admin.post(&format!("/v1/keys/{old_id}/rotate"), json!({})).await;
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (409, Some("conflict")), "{}", a.text);
    assert!(a.text.contains(&new_id), "{}", a.text);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(call(&ts, "/docs/fixed", &old_key).await, (401, "expired_key".to_string()));
    assert_eq!(call(&ts, "/docs/fixed", &new_key).await.0, 200);
    let listing = admin.get(&format!("/v1/tenants/acme/consumers/{consumer}/keys")).await.body;
    let statuses: Vec<(String, String)> = keys_of(&listing)
        .iter()
        .map(|k| (k["key_id"].as_str().unwrap().to_string(), k["status"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(statuses, vec![(old_id.clone(), "expired".into()), (new_id.clone(), "active".into())]);

    let rotated = security(&admin, "key_rotated", 1).await;
    assert_eq!(rotated[0]["actor"], "admin:adm_bootstrap");
    assert_eq!(rotated[0]["target"], format!("key:{old_id}"));
    assert_eq!(rotated[0]["details"]["new_key_id"], new_id.as_str());
    assert_eq!(rotated[0]["details"]["grace_seconds"], 1);
    security(&admin, "expired_key_used", 1).await;

    // Bad input: unknown key, unknown field, a grace too long, not a number.
    assert_eq!(admin.post("/v1/keys/key_nope/rotate", json!({})).await.status, 404);
    for (body, needle) in [
        (json!({"grace": 5}), "grace"),
        (json!({"grace_seconds": 99_999_999}), "at most"),
        (json!({"grace_seconds": -1}), "grace_seconds"),
        (json!({"grace_seconds": "1h"}), "grace_seconds"),
    ] {
        let a = admin.post(&format!("/v1/keys/{new_id}/rotate"), body).await;
        assert_eq!(a.status, 400, "{}", a.text);
        assert!(a.text.contains(needle), "{}", a.text);
    }
    // A revoked key cannot be rotated.
    assert_eq!(admin.post(&format!("/v1/keys/{new_id}/revoke"), json!({})).await.status, 200);
    assert_eq!(call(&ts, "/docs/fixed", &new_key).await, (401, "revoked_key".to_string()));
    assert_eq!(admin.post(&format!("/v1/keys/{new_id}/rotate"), json!({})).await.status, 409);
    ts.stop().await;
}

#[tokio::test]
async fn rotation_never_extends_a_keys_own_expiry() {
    let mut ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (consumer, _, _) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    let expires = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let (key_id, key) = admin.key("acme", &consumer, json!({"expires_at": expires.to_rfc3339()})).await;
    assert_eq!(call(&ts, "/docs/fixed", &key).await.0, 200);
    let a = admin.post(&format!("/v1/keys/{key_id}/rotate"), json!({"grace_seconds": 3600})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let new_key = a.body["key"].as_str().unwrap().to_string();
    assert_eq!(a.body["expires_at"], a.body["replaces"]["expires_at"], "the new key keeps the expiry");
    // The trail tells the grace the old key got, not the hour asked for
    // (it said `grace_seconds: 3600` beside an expiry 1.5 s away).
    let rotated = security(&admin, "key_rotated", 1).await;
    let details = &rotated[0]["details"];
    assert!(details["grace_seconds"].as_u64().is_some_and(|s| (1..=2).contains(&s)), "{details}");
    assert_eq!(details["grace_seconds_asked"], 3600, "{details}");
    let expires_at = chrono::DateTime::parse_from_rfc3339(a.body["replaces"]["expires_at"].as_str().unwrap()).unwrap();
    let recorded = chrono::DateTime::parse_from_rfc3339(details["old_key_expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(recorded, expires_at, "{details}");
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_eq!(call(&ts, "/docs/fixed", &key).await, (401, "expired_key".to_string()));
    assert_eq!(call(&ts, "/docs/fixed", &new_key).await, (401, "expired_key".to_string()));
    ts.stop().await;
}

#[tokio::test]
async fn scope_changes_apply_at_once_and_are_recorded() {
    let mut ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (_, key_id, key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    let a = admin.call("PUT", "/v1/tenants/acme/apis/docs/policies", Some(json!({"required_scopes": ["docs:read"]}))).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(call(&ts, "/docs/fixed", &key).await, (403, "insufficient_scope".to_string()));

    let a = admin.call("PUT", &format!("/v1/keys/{key_id}/scopes"), Some(json!({"scopes": ["docs:read", "docs:write"]}))).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["scopes"], json!(["docs:read", "docs:write"]));
    assert_eq!(call(&ts, "/docs/fixed", &key).await.0, 200);
    // The same scopes again: nothing changes, nothing is recorded.
    assert_eq!(admin.call("PUT", &format!("/v1/keys/{key_id}/scopes"), Some(json!({"scopes": ["docs:read", "docs:write"]}))).await.status, 200);
    let a = admin.call("PUT", &format!("/v1/keys/{key_id}/scopes"), Some(json!({"scopes": []}))).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(call(&ts, "/docs/fixed", &key).await, (403, "insufficient_scope".to_string()));

    let changed = security(&admin, "scope_changed", 2).await;
    assert_eq!(changed.len(), 2, "{changed:?}");
    assert_eq!(changed[1]["details"]["scopes"], json!({"before": [], "after": ["docs:read", "docs:write"]}));
    assert_eq!(changed[0]["details"]["scopes"], json!({"before": ["docs:read", "docs:write"], "after": []}));
    assert_eq!(changed[0]["actor"], "admin:adm_bootstrap");

    for (body, status) in [
        (json!({"scopes": ["has space"]}), 400),
        (json!({"scopes": "docs:read"}), 400),
        (json!({}), 400),
        (json!({"scopes": [], "extra": 1}), 400),
    ] {
        let a = admin.call("PUT", &format!("/v1/keys/{key_id}/scopes"), Some(body)).await;
        assert_eq!(a.status, status, "{}", a.text);
    }
    assert_eq!(admin.call("PUT", "/v1/keys/key_nope/scopes", Some(json!({"scopes": []}))).await.status, 404);
    ts.stop().await;
}

#[tokio::test]
async fn a_suspended_consumer_is_refused_until_reactivated() {
    let mut ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (consumer, _, key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    let a = admin.post(&format!("/v1/tenants/acme/consumers/{consumer}/suspend"), json!({})).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["status"], "suspended");
    assert_eq!(call(&ts, "/docs/fixed", &key).await, (403, "consumer_suspended".to_string()));
    // Suspending again changes nothing and records nothing.
    assert_eq!(admin.post(&format!("/v1/tenants/acme/consumers/{consumer}/suspend"), json!({})).await.status, 200);

    let a = admin.post(&format!("/v1/tenants/acme/consumers/{consumer}/reactivate"), json!({})).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["status"], "active");
    assert_eq!(call(&ts, "/docs/fixed", &key).await.0, 200);

    let suspended = security(&admin, "consumer_suspended", 1).await;
    assert_eq!(suspended.len(), 1);
    assert_eq!(suspended[0]["target"], format!("consumer:{consumer}"));
    assert_eq!(suspended[0]["actor"], "admin:adm_bootstrap");
    assert_eq!(suspended[0]["details"]["status"], json!({"before": "active", "after": "suspended"}));
    let reactivated = security(&admin, "consumer_reactivated", 1).await;
    assert_eq!(reactivated[0]["details"]["status"], json!({"before": "suspended", "after": "active"}));
    // The refused call's own event says why.
    let logs = admin.wait_for("/v1/audit/acme?status_min=403&status_max=403", "logs", 1).await;
    assert_eq!(logs[0]["error_code"], "consumer_suspended");

    assert_eq!(admin.post("/v1/tenants/acme/consumers/nobody/suspend", json!({})).await.status, 404);
    assert_eq!(admin.post(&format!("/v1/tenants/nowhere/consumers/{consumer}/reactivate"), json!({})).await.status, 404);
    ts.stop().await;
}

#[tokio::test]
async fn last_use_is_listed_at_once_and_written_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let mut ts = TestServer::start_with(dir, |_| {}).await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (consumer, key_id, key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    let (unused_id, _) = admin.key("acme", &consumer, json!({})).await;
    let listing = admin.get(&format!("/v1/tenants/acme/consumers/{consumer}/keys")).await.body;
    assert!(keys_of(&listing).iter().all(|k| k["last_used_at"].is_null()), "{listing}");

    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    for _ in 0..5 {
        assert_eq!(call(&ts, "/docs/fixed", &key).await.0, 200);
    }
    let listing = admin.get(&format!("/v1/tenants/acme/consumers/{consumer}/keys")).await.body;
    let keys = keys_of(&listing);
    let used = keys.iter().find(|k| k["key_id"] == key_id.as_str()).unwrap();
    let at = chrono::DateTime::parse_from_rfc3339(used["last_used_at"].as_str().expect("listed before any flush")).unwrap();
    assert!(at >= before && at <= chrono::Utc::now(), "{at}");
    let unused = keys.iter().find(|k| k["key_id"] == unused_id.as_str()).unwrap();
    assert!(unused["last_used_at"].is_null());

    // Kept across a restart: the shutdown writes what the timer had not yet.
    ts.stop().await;
    let mut ts = TestServer::start_with(tempfile::TempDir::new().unwrap(), |c| c.data_dir = path.clone()).await;
    let admin = ts.admin_client();
    let listing = admin.get(&format!("/v1/tenants/acme/consumers/{consumer}/keys")).await.body;
    let used = keys_of(&listing).into_iter().find(|k| k["key_id"] == key_id.as_str()).unwrap();
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(used["last_used_at"].as_str().unwrap()).unwrap(),
        at,
        "the stored time is the one listed before"
    );
    ts.stop().await;
}

/// A key's last use is its last successful authentication for one of its
/// tenant's apis, on the proxy path and in verification alike: a call then
/// refused for what it asked (a policy, a rate limit) used the key; a key
/// on a blocklist was refused as a credential and was not used, nor was a
/// key sent to no api (no route, or an api verification does not know).
#[tokio::test]
async fn last_use_is_the_last_successful_authentication_on_both_paths() {
    let mut ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    let a = admin
        .post(
            "/v1/tenants/acme/apis",
            json!({"id": "docs", "path_prefix": "/docs", "upstream": format!("http://{up}"),
                   "costs": [{"path_prefix": "/docs/export", "cost": 5}],
                   "policies": {"forbidden_paths": ["/docs/admin"]}}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(admin.post("/v1/tenants/acme/tiers", json!({"id": "tiny", "daily_quota": 1})).await.status, 201);
    let a = admin.post("/v1/tenants/acme/consumers", json!({"name": "client", "tier": "tiny"})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let consumer = a.body["id"].as_str().unwrap().to_string();
    let (blocked_id, blocked) = admin.key("acme", &consumer, json!({})).await;
    let (astray_id, astray) = admin.key("acme", &consumer, json!({})).await;
    let (refused_id, refused) = admin.key("acme", &consumer, json!({})).await;
    let (limited_id, limited) = admin.key("acme", &consumer, json!({})).await;
    let (verified_id, verified) = admin.key("acme", &consumer, json!({})).await;
    let a = admin.post("/v1/tenants/acme/blocklist", json!({"kind": "key", "value": blocked_id})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let verify = |key: String, api: &'static str| {
        let ts = &ts;
        async move {
            let res = ts.client.post(format!("{}/v1/keys/verify", ts.gateway)).json(&json!({"key": key, "api_id": api})).send().await.unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap())
        }
    };

    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    assert_eq!(call(&ts, "/docs/fixed", &blocked).await, (403, "forbidden".into()));
    assert_eq!(verify(blocked.clone(), "docs").await.0, 403);
    assert_eq!(call(&ts, "/nowhere", &astray).await, (404, "no_route".into()));
    assert_eq!(verify(astray.clone(), "nope").await.1["code"], "unknown_api");
    assert_eq!(call(&ts, "/docs/admin", &refused).await, (403, "forbidden".into()));
    assert_eq!(call(&ts, "/docs/export", &limited).await, (403, "cost_exceeds_quota".into()));
    assert_eq!(verify(verified.clone(), "docs").await.1["code"], "VALID");

    let listing = admin.get(&format!("/v1/tenants/acme/consumers/{consumer}/keys")).await.body;
    let last_use = |id: &str| keys_of(&listing).into_iter().find(|k| k["key_id"] == id).unwrap()["last_used_at"].clone();
    assert_eq!(last_use(&blocked_id), Value::Null, "a blocked key");
    assert_eq!(last_use(&astray_id), Value::Null, "a key sent to no api");
    for (id, what) in [(&refused_id, "refused by a policy"), (&limited_id, "refused by a rate limit"), (&verified_id, "verified")] {
        let at = last_use(id);
        let at = chrono::DateTime::parse_from_rfc3339(at.as_str().unwrap_or_else(|| panic!("{what}: {listing}"))).unwrap();
        assert!(at >= before && at <= chrono::Utc::now(), "{what}: {at}");
    }
    ts.stop().await;
}
