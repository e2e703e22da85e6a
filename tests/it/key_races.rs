//! Keys under concurrent changes: a revocation is never undone by a
//! snapshot rebuild that read the store before it, and a blocklisted key
//! writes no application events.

use serde_json::{json, Value};

use crate::util::{start_upstream, TestServer};

/// One call through the gateway: status and the JSON error code, if any.
async fn call(ts: &TestServer, path: &str, key: &str) -> (u16, String) {
    let res = ts.client.get(format!("{}{path}", ts.gateway)).header("X-API-Key", key).send().await.unwrap();
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    (status, body["error"]["code"].as_str().unwrap_or("").to_string())
}

/// Changes made at once each rebuild the gateway's snapshot; a rebuild that
/// read the store before a revocation and was swapped in after it brought
/// the revoked key back (until the next change).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_revoked_while_other_changes_run_stay_revoked() {
    // Every refused call below is a failed authentication: no automatic block.
    let mut ts = TestServer::start_with(tempfile::tempdir().unwrap(), |c| c.gateway.bruteforce_failures = 0).await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (consumer, _, _) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    // Enough keys that a rebuild takes a while.
    let mut keys = Vec::new();
    for _ in 0..300 {
        keys.push(admin.key("acme", &consumer, json!({})).await);
    }
    let mut next = 0;
    for round in 0..30 {
        let batch: Vec<(String, String)> = keys[next..next + 8].to_vec();
        next += 8;
        let mut tasks = Vec::new();
        for (i, (key_id, _)) in batch.iter().enumerate() {
            let (revoker, key_id) = (admin.clone(), key_id.clone());
            tasks.push(tokio::spawn(async move {
                let a = revoker.post(&format!("/v1/keys/{key_id}/revoke"), json!({})).await;
                assert_eq!(a.status, 200, "{}", a.text);
            }));
            let creator = admin.clone();
            tasks.push(tokio::spawn(async move {
                let name = format!("other-{round}-{i}");
                let a = creator.post("/v1/tenants/acme/consumers", json!({"name": name})).await;
                assert_eq!(a.status, 201, "{}", a.text);
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        for (key_id, key) in &batch {
            assert_eq!(call(&ts, "/docs/fixed", key).await, (401, "revoked_key".to_string()), "round {round}: {key_id} works after its revocation answered");
        }
    }
    ts.stop().await;
}

/// A key on a blocklist (global or its tenant's) is refused at the gateway
/// and by key verification; it went on submitting application events to
/// the audit trail through the admin API.
#[tokio::test]
async fn a_blocklisted_key_submits_no_application_events() {
    let mut ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    admin.setup("acme", "/docs", &format!("http://{up}")).await;
    let (_, key_id, key) = admin.consumer_with_key("acme", "writer", json!({"scopes": ["audit:write"]})).await;
    let (_, other_id, other) = admin.consumer_with_key("acme", "writer-2", json!({"scopes": ["audit:write"]})).await;
    let submit = |key: String| {
        let admin = admin.clone();
        async move {
            let res = admin
                .client
                .post(format!("{}/v1/audit/acme/events", admin.base))
                .header("X-API-Key", key)
                .json(&json!({"action": "order.updated", "resource_type": "order", "resource_id": "7"}))
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            (status, body["error"]["code"].as_str().unwrap_or("").to_string())
        }
    };
    assert_eq!(submit(key.clone()).await.0, 201);
    let a = admin.post("/v1/tenants/acme/blocklist", json!({"kind": "key", "value": key_id})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let a = admin.post("/v1/blocklist", json!({"kind": "key", "value": other_id})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(call(&ts, "/docs/fixed", &key).await, (403, "forbidden".to_string()));
    assert_eq!(submit(key).await, (403, "forbidden".to_string()), "a key on its tenant's blocklist");
    assert_eq!(submit(other).await, (403, "forbidden".to_string()), "a key on the global blocklist");
    let stored = admin.get("/v1/audit/acme/events").await;
    assert_eq!(stored.body["events"].as_array().map(Vec::len), Some(1), "{}", stored.text);
    ts.stop().await;
}

/// A rotation reads the old key (its scopes and expiry, which the new key
/// copies) before its transaction. A scope change committed in between was
/// lost: the new key carried the scopes from before it, and the change
/// stayed only on the old key, which expires with the grace. The store now
/// refuses such a rotation, and the API answers 409 "try again".
#[tokio::test]
async fn a_rotation_refuses_scopes_changed_since_it_read_the_key() {
    use keytrail::keys::{generate_id, generate_key, KeyEnvironment};
    use keytrail::store::control::ControlStore;
    let mut ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (consumer, _, _) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    let (key_id, _) = admin.key("acme", &consumer, json!({"scopes": ["read"]})).await;
    let store = ControlStore::open(&ts.data_dir.join("control.db")).unwrap();
    // What a rotation reads first ...
    let old = store.get_key(&key_id).unwrap().unwrap();
    let generated = generate_key(KeyEnvironment::Live);
    let new = keytrail::store::control::KeyRecord { key_id: generate_id("key"), hint: generated.hint.clone(), hash: keytrail::keys::hash_secret(&generated.secret), ..old.clone() };
    // ... then a scope change lands before its transaction.
    let a = admin.call("PUT", &format!("/v1/keys/{key_id}/scopes"), Some(json!({"scopes": ["read", "write"]}))).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(!store.rotate_key(&key_id, &new, old.created_at + 60_000).unwrap(), "the rotation went ahead with the scopes from before the change");
    let now = store.get_key(&key_id).unwrap().unwrap();
    assert_eq!((now.status.as_str(), now.scopes.clone(), now.replaced_by.clone()), ("active", vec!["read".to_string(), "write".to_string()], None));
    assert!(store.get_key(&new.key_id).unwrap().is_none(), "the new key was stored");
    // With the scopes as they are now, the rotation goes ahead.
    let new = keytrail::store::control::KeyRecord { scopes: now.scopes.clone(), ..new };
    assert!(store.rotate_key(&key_id, &new, old.created_at + 60_000).unwrap());
    assert_eq!(store.get_key(&new.key_id).unwrap().unwrap().scopes, vec!["read", "write"]);
    ts.stop().await;
}
