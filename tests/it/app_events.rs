//! Application audit events: submission by admins and by API keys with
//! `audit:write`, batches and limits, idempotent retries, filters, and the
//! join to the gateway call that caused an event.

use serde_json::{json, Value};

use crate::util::{start_upstream, Admin, TestServer};

async fn submit(client: &Admin, tenant: &str, body: Value) -> crate::util::Answer {
    client.post(&format!("/v1/audit/{tenant}/events"), body).await
}

fn events(answer: &crate::util::Answer) -> Vec<Value> {
    answer.body["events"].as_array().cloned().unwrap_or_else(|| panic!("no events: {}", answer.text))
}

#[tokio::test]
async fn events_are_stored_chained_and_found_by_their_fields() {
    let ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (consumer, _, key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;

    // The gateway call the application event is about.
    let res = ts.client.get(format!("{}/docs/orders/7", ts.gateway)).header("X-API-Key", &key).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_string();

    let one = json!({
        "action": "order.updated",
        "resource_type": "order",
        "resource_id": "7",
        "actor_id": "user-42",
        "changes": {"status": {"before": "open", "after": "shipped"}},
        "metadata": {"reason": "customer asked", "token": key},
        "request_id": request_id,
    });
    let a = submit(&admin, "acme", one).await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!((a.body["accepted"].as_u64(), a.body["duplicates"].as_u64()), (Some(1), Some(0)));
    let batch = json!({"events": [
        {"action": "order.deleted", "resource_type": "order", "resource_id": "8", "actor_id": "user-42"},
        {"action": "invoice.sent", "resource_type": "invoice", "resource_id": "inv 1", "actor_id": "robot"},
    ]});
    let a = submit(&admin, "acme", batch).await;
    assert_eq!((a.status, a.body["accepted"].as_u64()), (201, Some(2)), "{}", a.text);

    // Answered only once committed: readable at once.
    let all = events(&admin.get("/v1/audit/acme/events").await);
    assert_eq!(all.len(), 3);
    let updated = &all[2];
    assert_eq!(updated["action"], "order.updated");
    assert_eq!(updated["changes"]["status"]["after"], "shipped");
    assert_eq!(updated["submitted_by"], "admin:adm_bootstrap");
    // Where it was submitted from, as the event keeps it (the export shows it too).
    assert_eq!(updated["client_ip"], "127.0.0.1", "{updated}");
    assert!(!updated.to_string().contains(&key), "the key in metadata is masked: {updated}");

    for (query, want) in [
        ("action=order.deleted", vec!["8"]),
        ("actor_id=user-42", vec!["8", "7"]),
        ("resource_type=order", vec!["8", "7"]),
        ("resource_type=invoice&resource_id=inv%201", vec!["inv 1"]),
        ("resource_type=order&resource_id=9", vec![]),
        (&format!("request_id={request_id}") as &str, vec!["7"]),
    ] {
        let found = events(&admin.get(&format!("/v1/audit/acme/events?{query}")).await);
        let ids: Vec<&str> = found.iter().map(|e| e["resource_id"].as_str().unwrap()).collect();
        assert_eq!(ids, want, "{query}");
    }
    // The join: the gateway call by the same request id.
    let calls = admin.get(&format!("/v1/audit/acme?request_id={request_id}")).await;
    let calls = calls.body["logs"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!((calls[0]["path"].as_str(), calls[0]["consumer_id"].as_str()), (Some("/docs/orders/7"), Some(consumer.as_str())));

    // Bad filters.
    for query in ["resource_id=7", "action=a%20b", "resource_type=x/y"] {
        let a = admin.get(&format!("/v1/audit/acme/events?{query}")).await;
        assert_eq!((a.status, a.body["error"]["code"].as_str()), (400, Some("invalid_parameter")), "{query}: {}", a.text);
    }
}

#[tokio::test]
async fn api_keys_with_audit_write_may_submit_to_their_own_tenant() {
    let ts = TestServer::start().await;
    let admin = ts.admin_client();
    admin.setup("acme", "/docs", "http://127.0.0.1:9").await;
    admin.setup("other", "/other", "http://127.0.0.1:9").await;
    let (consumer, writer_key_id, writer) = admin.consumer_with_key("acme", "backend", json!({"scopes": ["audit:write"]})).await;
    let (_, plain) = admin.key("acme", &consumer, json!({"scopes": ["read"]})).await;
    let (_, _, stranger) = admin.consumer_with_key("other", "theirs", json!({"scopes": ["audit:write"]})).await;
    let event = json!({"action": "login", "resource_type": "session", "resource_id": "s1"});
    let as_key = |key: &str| Admin { token: key.to_string(), ..admin.clone() };

    let a = submit(&as_key(&writer), "acme", event.clone()).await;
    assert_eq!(a.status, 201, "{}", a.text);
    // The key may also come as `X-API-Key`, as at the gateway.
    let by_header = admin
        .client
        .post(format!("{}/v1/audit/acme/events", admin.base))
        .header("X-API-Key", &writer)
        .json(&json!({"action": "logout", "resource_type": "session", "resource_id": "s1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(by_header.status(), 201);
    let a = submit(&as_key(&plain), "acme", event.clone()).await;
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (403, Some("insufficient_scope")));
    // The refusal is in the tenant's trail as the gateway records a call
    // its api's required scopes refuse: a `policy_applied` security event
    // naming the scope wanted and those the key holds (it left none).
    let applied = admin.wait_for("/v1/audit/acme/security?event_type=policy_applied", "events", 1).await;
    assert_eq!(applied[0]["error_code"], "insufficient_scope", "{applied:?}");
    assert_eq!(applied[0]["details"]["policy"], "required_scopes", "{applied:?}");
    assert_eq!(applied[0]["details"]["limit"], json!(["audit:write"]), "{applied:?}");
    assert!(applied[0]["consumer_id"].is_string() && applied[0]["key_id"].is_string(), "{applied:?}");
    assert!(!serde_json::to_string(&applied).unwrap().contains(&plain), "no key in the trail");
    let a = submit(&as_key(&stranger), "acme", event.clone()).await;
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (404, Some("not_found")), "another tenant's key");
    let a = submit(&as_key("kt_live_notarealkeynotarealkeynotarealk00000"), "acme", event.clone()).await;
    assert_eq!(a.status, 401);
    // A key reads nothing.
    assert_eq!(as_key(&writer).get("/v1/audit/acme/events").await.status, 401);
    assert_eq!(admin.post(&format!("/v1/keys/{writer_key_id}/revoke"), json!({})).await.status, 200);
    let a = submit(&as_key(&writer), "acme", event).await;
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (401, Some("revoked_key")));

    let stored = events(&admin.get("/v1/audit/acme/events").await);
    assert_eq!(stored.len(), 2);
    assert!(stored.iter().all(|e| e["submitted_by"] == format!("key:{writer_key_id}")));
}

#[tokio::test]
async fn retries_with_the_same_event_id_never_make_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let mut ts = TestServer::start_with(dir, |_| {}).await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    let batch: Vec<Value> = (0..50)
        .map(|i| json!({"event_id": format!("evt-{i}"), "action": "item.changed", "resource_type": "item", "resource_id": i.to_string()}))
        .collect();
    let body = json!({"events": batch});

    // Twenty clients retry the same batch at once.
    let answers = futures_util::future::join_all((0..20).map(|_| submit(&admin, "acme", body.clone()))).await;
    let accepted: u64 = answers.iter().map(|a| a.body["accepted"].as_u64().unwrap()).sum();
    let duplicates: u64 = answers.iter().map(|a| a.body["duplicates"].as_u64().unwrap()).sum();
    assert_eq!((accepted, duplicates), (50, 19 * 50));
    assert!(answers.iter().all(|a| a.status == 201 || a.status == 200));
    let stored = events(&admin.get("/v1/audit/acme/events?limit=1000").await);
    assert_eq!(stored.len(), 50);
    let mut ids: Vec<&str> = stored.iter().map(|e| e["event_id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 50);

    // Still a duplicate after a restart: the ids come back from the store.
    ts.stop().await;
    let again = TestServer::start_with(tempfile::TempDir::new().unwrap(), |c| c.data_dir = path.clone()).await;
    let admin = again.admin_client();
    let a = submit(&admin, "acme", json!({"event_id": "evt-3", "action": "item.changed", "resource_type": "item", "resource_id": "3"})).await;
    assert_eq!((a.status, a.body["duplicates"].as_u64()), (200, Some(1)), "{}", a.text);
    assert_eq!(a.body["events"][0]["status"], "duplicate");
    assert_eq!(events(&admin.get("/v1/audit/acme/events?limit=1000").await).len(), 50);
}

#[tokio::test]
async fn an_event_the_stopping_pipeline_cannot_take_is_refused_and_its_id_stays_free() {
    let ts = TestServer::start().await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    let one = json!({"event_id": "evt-late", "action": "item.changed", "resource_type": "item", "resource_id": "1"});
    assert_eq!(submit(&admin, "acme", json!({"event_id": "evt-warm", "action": "item.changed", "resource_type": "item", "resource_id": "0"})).await.status, 201);

    // The pipeline stops (as it does last in a shutdown) while the admin API still answers.
    ts.server.as_ref().unwrap().audit.shutdown().await;
    let a = submit(&admin, "acme", one.clone()).await;
    assert_eq!(a.status, 503, "an event that was not kept must not be called created: {}", a.text);
    assert_eq!(a.body["error"]["code"], "service_unavailable", "{}", a.text);
    // Its id was not taken: a retry is not answered as a duplicate of an event that does not exist.
    let again = submit(&admin, "acme", one).await;
    assert_eq!(again.status, 503, "{}", again.text);
}

#[tokio::test]
async fn bad_submissions_get_clear_errors_and_store_nothing() {
    let ts = TestServer::start().await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    let good = json!({"action": "a", "resource_type": "r", "resource_id": "1"});
    let many: Vec<Value> = (0..1001).map(|_| good.clone()).collect();
    let big = json!({"action": "a", "resource_type": "r", "resource_id": "1", "metadata": {"blob": "x".repeat(40_000)}});
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"resource_type": "r", "resource_id": "1"}), 400, "action"),
        (json!({"events": [good.clone(), {"action": "a", "resource_type": "r"}]}), 400, "events[1]"),
        (json!({"action": "a b", "resource_type": "r", "resource_id": "1"}), 400, "event.action"),
        (json!({"action": "a", "resource_type": "r", "resource_id": "1", "event_id": "has space"}), 400, "event_id"),
        (json!({"action": "a", "resource_type": "r", "resource_id": "1", "changes": {"x": 5}}), 400, "changes.x"),
        (json!({"action": "a", "resource_type": "r", "resource_id": "1", "unknown": 1}), 400, "unknown"),
        (json!({"events": []}), 400, "at least one"),
        (json!({"events": many}), 413, "1000"),
        (big, 413, "32768"),
        (json!([1, 2]), 400, "one event object"),
    ];
    for (body, status, mention) in cases {
        let a = submit(&admin, "acme", body).await;
        assert_eq!(a.status, status, "{}", a.text);
        let message = a.body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(mention), "{mention} not in {message}");
    }
    let not_json = admin.client.post(format!("{}/v1/audit/acme/events", admin.base)).bearer_auth(&admin.token).body("{nope").send().await.unwrap();
    assert_eq!(not_json.status(), 400);
    let huge = admin
        .client
        .post(format!("{}/v1/audit/acme/events", admin.base))
        .bearer_auth(&admin.token)
        .body(vec![b' '; 5 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 413);
    assert_eq!(submit(&admin, "nope", good).await.status, 404);
    assert!(events(&admin.get("/v1/audit/acme/events").await).is_empty());
}

/// A page ends early, with a `next_cursor`, once its rows hold 8 MiB: a
/// page of 10,000 events of 32 KiB each was built whole in memory, over a
/// gigabyte for one request. Following the cursors still yields every event.
#[tokio::test]
async fn a_page_of_large_events_stops_at_its_byte_budget_and_goes_on_from_its_cursor() {
    let ts = TestServer::start().await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    let filler = "x".repeat(30_000);
    for batch in 0..4 {
        let events: Vec<Value> = (0..100)
            .map(|i| json!({"action": "doc.saved", "resource_type": "doc", "resource_id": format!("{batch}-{i}"), "metadata": {"text": filler}}))
            .collect();
        let a = submit(&admin, "acme", json!({"events": events})).await;
        assert_eq!(a.status, 201, "{}", a.text);
    }
    let first = admin.get("/v1/audit/acme/events?limit=1000").await;
    assert_eq!(first.status, 200);
    let rows = events(&first).len();
    assert!(first.text.len() < 9 << 20, "a page of {} bytes ({rows} events)", first.text.len());
    assert!((200..400).contains(&rows), "{rows} events in the first page");
    assert!(first.body["next_cursor"].is_string(), "the page ended early without a cursor");
    let mut ids: Vec<String> = events(&first).iter().map(|e| e["resource_id"].as_str().unwrap().to_string()).collect();
    let mut cursor = first.body["next_cursor"].as_str().map(str::to_string);
    while let Some(c) = cursor {
        let page = admin.get(&format!("/v1/audit/acme/events?limit=1000&cursor={c}")).await;
        assert_eq!(page.status, 200);
        ids.extend(events(&page).iter().map(|e| e["resource_id"].as_str().unwrap().to_string()));
        cursor = page.body["next_cursor"].as_str().map(str::to_string);
    }
    assert_eq!(ids.len(), 400);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 400, "every event once");
    // A limit the budget does not reach is kept exactly, and says there is more.
    let page = admin.get("/v1/audit/acme/events?limit=10").await;
    assert_eq!(events(&page).len(), 10);
    assert!(page.body["next_cursor"].is_string());
}

/// An event sent with an API key cannot name an admin as its actor: the
/// trail would show an admin's action the admin never took, salted (and so
/// erased) as an admin's event rather than the consumer's. An admin may
/// name itself, never another admin. Any spelling a reader takes for an
/// admin (`Admin:`, leading blanks) is refused, and nothing is stored.
#[tokio::test]
async fn submitted_events_cannot_claim_another_admin_as_their_actor() {
    let ts = TestServer::start().await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    let (_, _, writer) = admin.consumer_with_key("acme", "backend", json!({"scopes": ["audit:write"]})).await;
    let as_key = Admin { token: writer.clone(), ..admin.clone() };
    let event = |actor: &str| json!({"action": "order.deleted", "resource_type": "order", "resource_id": "1", "actor_id": actor});

    for actor in ["admin:adm_bootstrap", "admin:adm_someone", "ADMIN:adm_bootstrap", "  admin:adm_bootstrap", "Admin:x"] {
        let a = submit(&as_key, "acme", event(actor)).await;
        assert_eq!((a.status, a.body["error"]["code"].as_str()), (400, Some("invalid_body")), "key as {actor:?}: {}", a.text);
        assert!(a.body["error"]["message"].as_str().unwrap().contains("actor_id"), "{}", a.text);
    }
    // In a batch, one such event refuses the whole batch.
    let batch = json!({"events": [event("user-1"), event("admin:adm_bootstrap")]});
    let a = submit(&as_key, "acme", batch).await;
    assert_eq!(a.status, 400, "{}", a.text);
    assert!(a.body["error"]["message"].as_str().unwrap().contains("events[1].actor_id"), "{}", a.text);
    for actor in ["admin:adm_someone", "ADMIN:adm_someone"] {
        let a = submit(&admin, "acme", event(actor)).await;
        assert_eq!((a.status, a.body["error"]["code"].as_str()), (400, Some("invalid_body")), "admin as {actor:?}: {}", a.text);
    }
    assert!(events(&admin.get("/v1/audit/acme/events").await).is_empty());

    // The application's own users, and an admin naming itself, are kept.
    assert_eq!(submit(&as_key, "acme", event("user-42")).await.status, 201);
    assert_eq!(submit(&as_key, "acme", event("administrator-7")).await.status, 201);
    let a = submit(&admin, "acme", event("admin:adm_bootstrap")).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let stored = events(&admin.get("/v1/audit/acme/events").await);
    let actors: Vec<&str> = stored.iter().map(|e| e["actor_id"].as_str().unwrap()).collect();
    assert_eq!(actors, ["admin:adm_bootstrap", "administrator-7", "user-42"]);
}

/// Nor may an event name keytrail's own actors (`system:…`, `keytrail:…`)
/// or, sent with a key, a consumer other than the key's own, in any
/// spelling a reader would take for one: other case, blanks around or
/// before the colon, a full-width colon or letters, invisible characters.
/// An admin names neither keytrail nor a consumer.
#[tokio::test]
async fn submitted_events_cannot_claim_keytrail_or_another_consumer_as_their_actor() {
    let ts = TestServer::start().await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    let (own, _, writer) = admin.consumer_with_key("acme", "backend", json!({"scopes": ["audit:write"]})).await;
    let (other, _, _) = admin.consumer_with_key("acme", "frontend", json!({"scopes": []})).await;
    let as_key = Admin { token: writer.clone(), ..admin.clone() };
    let event = |actor: &str| json!({"action": "order.deleted", "resource_type": "order", "resource_id": "1", "actor_id": actor});

    let reserved = [
        "system:retention".to_string(),
        "keytrail:auto-bruteforce".into(),
        "keytrail:login-throttle".into(),
        format!("consumer:{other}"),
        "consumer:cons_nobody".into(),
        "SYSTEM:retention".into(),
        " system:retention".into(),
        "system:retention ".into(),
        "system :retention".into(),
        "system\u{3000}:retention".into(),
        "system\u{FF1A}retention".into(),
        "KeyTrail\u{FF1A}auto-bruteforce".into(),
        "\u{FF53}\u{FF59}\u{FF53}\u{FF54}\u{FF45}\u{FF4D}:retention".into(),
        "\u{200B}system:retention".into(),
        "sys\u{200D}tem:retention".into(),
        "\u{017F}ystem:retention".into(),
        "\u{212A}eytrail:x".into(),
        "admin :x".into(),
        "admin\u{FF1A}x".into(),
        format!("Consumer:{own}"),
        format!(" consumer:{own}"),
        format!("consumer :{own}"),
    ];
    for actor in &reserved {
        let a = submit(&as_key, "acme", event(actor)).await;
        assert_eq!((a.status, a.body["error"]["code"].as_str()), (400, Some("invalid_body")), "key as {actor:?}: {}", a.text);
        assert!(a.body["error"]["message"].as_str().unwrap().contains("event.actor_id"), "{}", a.text);
    }
    for actor in ["system:retention", "keytrail:auto-bruteforce", "System\u{FF1A}x", &format!("consumer:{own}"), "admin :adm_bootstrap"] {
        let a = submit(&admin, "acme", event(actor)).await;
        assert_eq!((a.status, a.body["error"]["code"].as_str()), (400, Some("invalid_body")), "admin as {actor:?}: {}", a.text);
    }
    assert!(events(&admin.get("/v1/audit/acme/events").await).is_empty());

    // The key's own consumer, as the trail names it, and look-alikes that
    // are no prefix, are kept.
    for actor in [format!("consumer:{own}"), "systems-team".into(), "user:system".into(), "keytrailer".into()] {
        let a = submit(&as_key, "acme", event(&actor)).await;
        assert_eq!(a.status, 201, "key as {actor:?}: {}", a.text);
    }
    let stored = events(&admin.get("/v1/audit/acme/events").await);
    assert_eq!(stored.len(), 4);
}

/// A key that submits events is used like one that calls the gateway: its
/// `last_used_at` moves, and each submission spends one call of its
/// consumer's tier (its minute rate and daily cap), so a key cannot flood
/// the trail; past the limit, 429 `rate_limited` with `Retry-After`, a
/// `rate_limit_exceeded` event, and nothing stored.
#[tokio::test]
async fn keyed_submissions_move_last_used_and_spend_the_consumers_rate_limit() {
    let ts = TestServer::start().await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    let tier = json!({"id": "slow", "rate_limit": {"requests_per_minute": 1, "burst": 2}});
    assert_eq!(admin.post("/v1/tenants/acme/tiers", tier).await.status, 201);
    let (consumer, key_id, writer) = admin.consumer_with_key("acme", "backend", json!({"scopes": ["audit:write"]})).await;
    let a = admin.call("PUT", &format!("/v1/tenants/acme/consumers/{consumer}/tier"), Some(json!({"tier": "slow"}))).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let last_used = || async {
        let keys = admin.get(&format!("/v1/tenants/acme/consumers/{consumer}/keys")).await;
        let keys = keys.body["keys"].as_array().unwrap().clone();
        keys.iter().find(|k| k["key_id"] == key_id.as_str()).unwrap()["last_used_at"].clone()
    };
    assert!(last_used().await.is_null());
    let as_key = Admin { token: writer.clone(), ..admin.clone() };
    let event = |id: &str| json!({"action": "order.updated", "resource_type": "order", "resource_id": id});

    for id in ["1", "2"] {
        let a = submit(&as_key, "acme", event(id)).await;
        assert_eq!(a.status, 201, "{}", a.text);
        assert_eq!(a.headers.get("ratelimit-limit").map(String::as_str), Some("2"), "{:?}", a.headers);
    }
    assert!(last_used().await.is_string(), "the key's use is seen");
    let a = submit(&as_key, "acme", event("3")).await;
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (429, Some("rate_limited")), "{}", a.text);
    let wait: u64 = a.headers.get("retry-after").unwrap_or_else(|| panic!("no Retry-After: {:?}", a.headers)).parse().unwrap();
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    // The same limit as the gateway's: an admin's submissions spend none of it.
    assert_eq!(submit(&admin, "acme", event("4")).await.status, 201);

    ts.flush().await;
    let stored = events(&admin.get("/v1/audit/acme/events").await);
    let ids: Vec<&str> = stored.iter().map(|e| e["resource_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["4", "2", "1"]);
    let limited = admin.get("/v1/audit/acme/security?event_type=rate_limit_exceeded").await;
    let limited = limited.body["events"].as_array().unwrap().clone();
    assert_eq!(limited.len(), 1, "{limited:?}");
    assert_eq!(limited[0]["target"], "tier:slow");
    assert_eq!(limited[0]["key_id"], key_id.as_str());
}

/// A key-submitted event's caller as the admin API sees it (behind a
/// trusted proxy, its forwarded address).
fn keyed(ts: &TestServer, key: &str, address: &str, agent: &str, body: Value) -> reqwest::RequestBuilder {
    ts.client
        .post(format!("{}/v1/audit/acme/events", ts.admin))
        .header("x-api-key", key)
        .header("x-forwarded-for", address)
        .header("user-agent", agent)
        .json(&body)
}

/// Keyed submissions meet the gateway's key check: the caller's address is
/// recorded (through `admin.trusted_proxies`), the global and the tenant's
/// blocklists by address and user agent refuse with the gateway's generic
/// 403, and failed keys count toward the same brute-force block as failed
/// keys at the gateway, so keys cannot be guessed here unhindered.
#[tokio::test]
async fn keyed_submissions_meet_the_gateways_address_checks_and_brute_force_block() {
    let proxy = || keytrail::protection::TrustedProxies::parse(&["127.0.0.1".to_string()]).unwrap();
    let mut ts = TestServer::start_with(tempfile::tempdir().unwrap(), |c| {
        c.admin_trusted_proxies = proxy();
        c.gateway.trusted_proxies = proxy();
        c.gateway.bruteforce_failures = 3;
        c.gateway.bruteforce_block = std::time::Duration::from_secs(600);
    })
    .await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    admin.setup("acme", "/docs", &format!("http://{up}")).await;
    let (_, _, writer) = admin.consumer_with_key("acme", "backend", json!({"scopes": ["audit:write"]})).await;
    let one = |id: &str| json!({"action": "order.updated", "resource_type": "order", "resource_id": id});

    // The caller's address is kept with the event.
    let res = keyed(&ts, &writer, "203.0.113.9", "backend/1.0", one("1")).send().await.unwrap();
    assert_eq!(res.status(), 201);
    let reader = keytrail::store::audit::AuditReader::open(&ts.audit_dir()).unwrap();
    let chain = reader.chain("acme").unwrap();
    let app: Vec<_> = chain.iter().filter(|s| s.event.category == Some(keytrail::event::Category::App)).collect();
    assert_eq!(app.len(), 1);
    assert_eq!(app[0].event.client_ip.as_deref(), Some("203.0.113.9"));

    // Blocklists: the global one by address, the tenant's by user agent.
    let generic = json!({"error": {"code": "forbidden", "message": "this request is not allowed"}});
    assert_eq!(admin.post("/v1/blocklist", json!({"kind": "ip", "value": "198.51.100.0/24"})).await.status, 201);
    assert_eq!(admin.post("/v1/tenants/acme/blocklist", json!({"kind": "user_agent", "value": "evilbot"})).await.status, 201);
    for (address, agent) in [("198.51.100.23", "backend/1.0"), ("203.0.113.9", "evilbot/2")] {
        let res = keyed(&ts, &writer, address, agent, one("2")).send().await.unwrap();
        assert_eq!(res.status(), 403, "{address} {agent}");
        assert_eq!(res.json::<Value>().await.unwrap(), generic);
    }
    let blocks = admin.wait_for("/v1/audit/acme/security?event_type=request_blocked", "events", 2).await;
    assert!(blocks.iter().any(|e| e["client_ip"] == "198.51.100.23"), "{blocks:?}");

    // Failed keys: two here and two at the gateway make four from one
    // address, past the limit of three: the address is blocked everywhere.
    let guess = || keytrail::keys::generate_key(keytrail::keys::KeyEnvironment::Live).secret;
    for _ in 0..2 {
        let res = keyed(&ts, &guess(), "192.0.2.50", "guesser", one("3")).send().await.unwrap();
        assert_eq!(res.status(), 401);
    }
    let failed = admin.wait_for("/v1/audit/acme/security?event_type=auth_failed", "events", 2).await;
    assert!(failed.iter().all(|e| e["client_ip"] == "192.0.2.50"), "{failed:?}");
    for _ in 0..2 {
        let res = ts.client.get(format!("{}/docs/x", ts.gateway)).header("x-api-key", guess()).header("x-forwarded-for", "192.0.2.50").send().await.unwrap();
        assert_eq!(res.status(), 401);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let res = keyed(&ts, &writer, "192.0.2.50", "guesser", one("4")).send().await.unwrap();
        if res.status() == 403 {
            break;
        }
        assert_eq!(res.status(), 201);
        assert!(std::time::Instant::now() < deadline, "the guessing address was not blocked");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let entries = admin.get("/v1/blocklist").await.body["entries"].as_array().unwrap().clone();
    assert!(entries.iter().any(|e| e["rule_id"] == "auto-bruteforce" && e["value"] == "192.0.2.50"), "{entries:?}");
    // Another address is not. Anything in `X-API-Key` is a key: a
    // malformed one fails the key check as at the gateway.
    assert_eq!(keyed(&ts, &writer, "203.0.113.9", "backend/1.0", one("5")).send().await.unwrap().status(), 201);
    let res = keyed(&ts, "kt_live_short", "203.0.113.9", "backend/1.0", one("6")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.json::<Value>().await.unwrap()["error"]["code"], "invalid_key");
    ts.stop().await;
}

/// Every file under `dir`, byte for byte, and every stored event decoded
/// (blocks are compressed, so the files alone would hide a secret).
fn stored_outputs(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut outputs = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                outputs.push((path.display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
    }
    let reader = keytrail::store::audit::AuditReader::open(&dir.join("audit")).unwrap();
    for tenant in reader.tenants().unwrap() {
        let events: Vec<String> = reader.chain(&tenant).unwrap().iter().map(|s| format!("{:?}", s.event)).collect();
        outputs.push((format!("decoded events of {tenant}"), events.join("\n").into_bytes()));
    }
    outputs
}

/// A key or token pasted into any field of an application event never
/// reaches the store, an answer or an export: fields that identify the
/// event (`action`, `event_id`) refuse it with a 400 that does not echo
/// it (masking them would merge distinct ids and actions), the rest are
/// stored masked. Both a real issued key and the operator's bootstrap
/// token (a registered secret of no recognisable shape, which fits the
/// characters `action` and `event_id` allow) are tried, by an admin and by
/// an API key.
#[tokio::test]
async fn keys_and_tokens_in_any_field_of_an_event_are_never_stored_or_answered() {
    let mut ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    let (_, _, writer) = admin.consumer_with_key("acme", "backend", json!({"scopes": ["audit:write"]})).await;
    let token = crate::util::ADMIN_TOKEN.to_string();
    let by_key = Admin { token: writer.clone(), ..admin.clone() };
    let mut answers = Vec::new();

    for client in [&admin, &by_key] {
        for secret in [&key, &token] {
            for field in ["action", "event_id"] {
                let mut event = json!({"action": "order.updated", "resource_type": "order", "resource_id": "7"});
                event[field] = json!(secret);
                let a = submit(client, "acme", event).await;
                assert_eq!((a.status, a.body["error"]["code"].as_str()), (400, Some("invalid_body")), "{field}: {}", a.text);
                assert!(a.body["error"]["message"].as_str().unwrap().contains(&format!("event.{field}")), "{}", a.text);
                answers.push(a.text);
            }
        }
        let event = json!({
            "action": "order.updated",
            "resource_type": token,
            "resource_id": format!("order {key}"),
            "actor_id": format!("user {key}"),
            "changes": {"note": {"before": key, "after": format!("now {token}")}, key.clone(): {"after": 1}},
            "metadata": {"pasted": [key, token], "nested": {"deeper": format!("x{key}y")}},
            "event_id": "evt-1",
        });
        let a = submit(client, "acme", event).await;
        assert!(a.status == 201 || a.status == 200, "{}", a.text);
        answers.push(a.text);
    }
    let listed = admin.get("/v1/audit/acme/events").await;
    assert_eq!(events(&listed).len(), 1, "{}", listed.text);
    let stored = &events(&listed)[0];
    assert!(stored["resource_id"].as_str().unwrap().starts_with("order kt_live"), "masked to its hint: {stored}");
    answers.push(listed.text);
    for path in ["/v1/audit/acme?limit=1000", "/v1/audit/acme/export/csv", "/v1/audit/acme/export/json"] {
        let a = admin.get(path).await;
        assert_eq!(a.status, 200, "{path}: {}", a.text);
        answers.push(a.text);
    }
    ts.stop().await;

    let mut outputs = stored_outputs(&ts.data_dir);
    outputs.extend(answers.into_iter().enumerate().map(|(i, a)| (format!("answer {i}"), a.into_bytes())));
    for secret in [&key, &token] {
        for (name, bytes) in &outputs {
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "a raw secret was found in {name}");
        }
    }
}

/// `ip:<address>` is how keytrail names the address it blocked or
/// throttled (`ip:203.0.113.9`): an event sent with a key or by an admin
/// may not name one, in any spelling a reader takes for it; look-alikes
/// that are no prefix are kept.
#[tokio::test]
async fn submitted_events_cannot_claim_an_address_as_keytrail_names_it() {
    let ts = TestServer::start().await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    let (_, _, writer) = admin.consumer_with_key("acme", "backend", json!({"scopes": ["audit:write"]})).await;
    let as_key = Admin { token: writer.clone(), ..admin.clone() };
    let event = |actor: &str| json!({"action": "order.deleted", "resource_type": "order", "resource_id": "1", "actor_id": actor});

    let reserved = [
        "ip:203.0.113.9",
        "IP:203.0.113.9",
        " ip:2001:db8::1",
        "ip :203.0.113.9",
        "ip\u{FF1A}203.0.113.9",
        "\u{FF49}\u{FF50}:203.0.113.9",
        "i\u{200B}p:203.0.113.9",
    ];
    for actor in reserved {
        for (who, client) in [("key", &as_key), ("admin", &admin)] {
            let a = submit(client, "acme", event(actor)).await;
            assert_eq!((a.status, a.body["error"]["code"].as_str()), (400, Some("invalid_body")), "{who} as {actor:?}: {}", a.text);
            let message = a.body["error"]["message"].as_str().unwrap();
            assert!(message.contains("event.actor_id") && message.contains("ip:"), "{}", a.text);
        }
    }
    assert!(events(&admin.get("/v1/audit/acme/events").await).is_empty());

    for actor in ["ipad-user", "vip:gold", "ip-team"] {
        let a = submit(&as_key, "acme", event(actor)).await;
        assert_eq!(a.status, 201, "key as {actor:?}: {}", a.text);
    }
    assert_eq!(events(&admin.get("/v1/audit/acme/events").await).len(), 3);
}

/// After a restart the used ids were read back from the hot store only:
/// with `retention.hot_days` under the 7-day window, an id whose event was
/// already archived was not found, and its retry was stored a second time.
/// The archives of the window's days are read too; an id older than the
/// window is free again, as before.
#[tokio::test]
async fn an_id_archived_before_a_restart_is_still_a_duplicate_within_the_window() {
    use keytrail::event::{now_ms, Category, Event};
    use keytrail::store::audit::archive::{day_name, paths};
    use keytrail::store::audit::AuditWriterStore;
    use keytrail::store::control::{ControlStore, Tenant};
    const DAY: i64 = 86_400_000;
    let today = now_ms().div_euclid(DAY);
    let dir = tempfile::tempdir().unwrap();
    {
        let control = ControlStore::open(&dir.path().join("control.db")).unwrap();
        control.create_tenant(&Tenant { id: "acme".into(), name: "Acme".into(), created_at: (today - 20) * DAY }).unwrap();
        let mut store = AuditWriterStore::open(&dir.path().join("audit")).unwrap();
        for (id, days_ago) in [("evt-ancient", 9), ("evt-old", 3)] {
            let mut e = Event::new("acme", Category::App, "item.changed", "success");
            e.event_id = id.into();
            e.timestamp_ms = (today - days_ago) * DAY + 3_600_000;
            e.target = Some("item:1".into());
            store.insert_batch(&mut vec![e]).unwrap();
        }
    }
    let mut ts = TestServer::start_with(dir, |c| {
        c.retention.defaults = keytrail::settings::retention::RetentionSettings { hot_days: 1, archive_days: 400 };
        c.retention.interval = std::time::Duration::from_millis(300);
    })
    .await;
    let archive = paths(&ts.data_dir.join("archive"), "acme", &day_name(today - 3)).0;
    for _ in 0..200 {
        if archive.exists() && !ts.audit_dir().join(format!("{}.db", day_name(today - 3))).exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(archive.exists(), "retention archived the day");
    let admin = ts.admin_client();
    let one = |id: &str| json!({"event_id": id, "action": "item.changed", "resource_type": "item", "resource_id": "1"});
    // The archives are read as the other readers read them, holding the
    // audit directory shared: not while an erasure (here: the test, holding
    // the directory as one does) has an archive of the window halfway
    // rewritten. Its ids were not read then, and the retry was stored again.
    let held = keytrail::store::audit::erasure::maintenance_lock(&ts.audit_dir(), "a test rewriting an archive").unwrap();
    // Held past the wait (5 s): nothing is taken, and the caller is told when to retry.
    let a = submit(&admin, "acme", one("evt-old")).await;
    assert_eq!((a.status, a.body["error"]["code"].as_str(), a.headers.get("retry-after").map(String::as_str)), (503, Some("service_unavailable"), Some("10")), "{}", a.text);
    assert!(a.body["error"]["message"].as_str().unwrap().contains("a test rewriting an archive"), "{}", a.text);
    // Let go meanwhile: the ids are read once the archive is whole again.
    let whole = std::fs::read(&archive).unwrap();
    std::fs::write(&archive, &whole[..whole.len() / 2]).unwrap();
    let retry = tokio::spawn({
        let admin = ts.admin_client();
        let body = one("evt-old");
        async move { submit(&admin, "acme", body).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    std::fs::write(&archive, &whole).unwrap();
    drop(held);
    let a = retry.await.unwrap();
    assert_eq!((a.status, a.body["events"][0]["status"].as_str()), (200, Some("duplicate")), "{}", a.text);
    let a = submit(&admin, "acme", one("evt-old")).await;
    assert_eq!((a.status, a.body["events"][0]["status"].as_str()), (200, Some("duplicate")), "{}", a.text);
    let a = submit(&admin, "acme", one("evt-ancient")).await;
    assert_eq!((a.status, a.body["events"][0]["status"].as_str()), (201, Some("created")), "{}", a.text);
    ts.stop().await;
}

/// A keyed submission keytrail refuses for its body (400, 413) stores
/// nothing, and spends nothing of the consumer's limits, as a call a
/// policy refuses at the gateway spends none: the limits were spent in
/// the door, before the body was read, so a client whose batch failed
/// validation was rate limited on the retry of the corrected one.
#[tokio::test]
async fn a_keyed_submission_refused_for_its_body_spends_none_of_the_limit() {
    let ts = TestServer::start().await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    let tier = json!({"id": "slow", "rate_limit": {"requests_per_minute": 1, "burst": 2}});
    assert_eq!(admin.post("/v1/tenants/acme/tiers", tier).await.status, 201);
    let (consumer, _, writer) = admin.consumer_with_key("acme", "backend", json!({"scopes": ["audit:write"]})).await;
    let a = admin.call("PUT", &format!("/v1/tenants/acme/consumers/{consumer}/tier"), Some(json!({"tier": "slow"}))).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let as_key = Admin { token: writer.clone(), ..admin.clone() };
    let refused = [
        (json!({"action": "order.updated", "resource_type": "order"}), 400),
        (json!({"events": []}), 400),
        (json!({"action": "order.updated", "resource_type": "order", "resource_id": "1", "actor_id": "admin:adm_bootstrap"}), 400),
        (json!({"events": vec![json!({"action": "a", "resource_type": "r", "resource_id": "1"}); 1001]}), 413),
    ];
    for (body, status) in refused {
        let a = submit(&as_key, "acme", body).await;
        assert_eq!(a.status, status, "{}", a.text);
        assert!(!a.headers.contains_key("ratelimit-limit"), "a refused submission spent nothing: {:?}", a.headers);
    }
    // The whole burst is still there.
    let event = |id: &str| json!({"action": "order.updated", "resource_type": "order", "resource_id": id});
    for id in ["1", "2"] {
        let a = submit(&as_key, "acme", event(id)).await;
        assert_eq!(a.status, 201, "{}", a.text);
        assert_eq!(a.headers.get("ratelimit-remaining").map(String::as_str), Some(if id == "1" { "1" } else { "0" }), "{:?}", a.headers);
    }
    let a = submit(&as_key, "acme", event("3")).await;
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (429, Some("rate_limited")), "{}", a.text);
    ts.flush().await;
    assert_eq!(events(&admin.get("/v1/audit/acme/events").await).len(), 2);
}
