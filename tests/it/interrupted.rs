//! Work that is interrupted still leaves its trail: callers that go away,
//! calls cut off by a clean stop, changes whose caller left, and an admin
//! change too large for the old block limits.

use serde_json::json;

use crate::util::{TestServer, ADMIN_TOKEN};

/// An admin change's intent records the request body as asked (up to the
/// 4 MiB the admin API reads, written again as JSON: `1e15` comes out as
/// `1000000000000000.0`): the block holding it must be one readers accept,
/// or the admin log and the chain's verification fail for good.
#[tokio::test]
async fn an_admin_change_with_a_large_body_leaves_a_readable_verified_trail() {
    let ts = TestServer::start().await;
    let admin = ts.admin_client();
    for body in [
        json!({"id": "acme", "name": "Acme", "note": "p".repeat(700_000)}).to_string(),
        format!(r#"{{"id": "acme", "name": "Acme", "note": [{}1]}}"#, "1e15,".repeat((4 << 20) / 5 - 20)),
    ] {
        assert!(body.len() <= 4 << 20);
        let res = admin.client.post(format!("{}/v1/tenants", ts.admin)).bearer_auth(ADMIN_TOKEN).header("content-type", "application/json").body(body).send().await.unwrap();
        assert!(res.status().as_u16() < 500, "{}", res.status());
        ts.flush().await;
        let log = admin.get("/v1/audit/_system/admin?limit=1").await;
        assert_eq!(log.status, 200, "{}", &log.text[..log.text.len().min(500)]);
        let verify = admin.get("/v1/audit/_system/verify").await;
        assert_eq!(verify.status, 200, "{}", &verify.text[..verify.text.len().min(500)]);
        assert_eq!(verify.body["ok"], json!(true), "{}", &verify.text[..verify.text.len().min(1000)]);
    }
}

/// A call forwarded to the upstream whose client goes away before the
/// answer is still in the trail, on both connection paths. (A call dropped
/// while its upstream is asked, as a clean stop's cut-off drops it, is
/// recorded as aborted: see `a_call_cut_off_by_a_clean_stop_is_in_the_trail`.)
#[tokio::test]
async fn a_call_whose_client_leaves_while_the_upstream_answers_is_recorded() {
    use tokio::io::AsyncWriteExt;
    let upstream = crate::util::start_upstream().await;
    let ts = TestServer::start().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/docs", &format!("http://{upstream}")).await;
    let gw = ts.gateway.trim_start_matches("http://").to_string();
    for (name, head) in [
        ("loop", format!("GET /docs/slow?ms=1500 HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\n\r\n")),
        ("hyper", format!("POST /docs/slow?ms=1500 HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\nContent-Length: 2\r\n\r\nab")),
    ] {
        let mut stream = tokio::net::TcpStream::connect(&gw).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        drop(stream);
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        ts.flush().await;
        let logs = admin.all_logs("/v1/audit/acme?limit=500").await;
        let method = if name == "loop" { "GET" } else { "POST" };
        let event = logs.iter().find(|e| e["method"] == method && e["path"] == "/docs/slow");
        let event = event.unwrap_or_else(|| panic!("{name}: a call the upstream had left no event: {logs:?}"));
        // A closed connection reads as a half-closed one (both paths answer
        // those), so the answer is written and the call recorded as it went.
        assert_eq!((&event["outcome"], &event["status_code"]), (&json!("success"), &json!(200)), "{name}: {event}");
    }
}

/// A clean stop waits 10 s for calls under way; one still waiting for its
/// upstream then is cut off, and its event (the upstream had the request)
/// is committed with everything else before the writer stops.
#[tokio::test]
async fn a_call_cut_off_by_a_clean_stop_is_in_the_trail() {
    let upstream = crate::util::start_upstream().await;
    let mut ts = TestServer::start().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/docs", &format!("http://{upstream}")).await;
    let url = format!("{}/docs/slow?ms=14000", ts.gateway);
    let client = ts.client.clone();
    let call = tokio::spawn(async move { client.get(&url).header("x-api-key", key).send().await.map(|r| r.status().as_u16()) });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    ts.stop().await;
    let reader = keytrail::store::audit::AuditReader::open(&ts.audit_dir()).unwrap();
    let events = reader.chain("acme").unwrap();
    let cut = events.iter().find(|s| s.event.path.as_deref() == Some("/docs/slow"));
    let cut = cut.unwrap_or_else(|| {
        panic!(
            "the call the upstream had is not in the trail: {:?}",
            events.iter().map(|s| (&s.event.event_type, &s.event.path)).collect::<Vec<_>>()
        )
    });
    assert_eq!((cut.event.outcome.as_ref(), cut.event.error_code.as_deref()), ("aborted", Some("client_disconnected")));
    call.abort();
}

/// An admin change runs to its end, its events and outcome recorded, even
/// when the caller goes away meanwhile (an erasure can take long enough
/// for a client's timeout).
#[tokio::test]
async fn an_erasure_whose_caller_goes_away_is_still_recorded_with_its_outcome() {
    use tokio::io::AsyncWriteExt;
    let upstream = crate::util::start_upstream().await;
    let ts = TestServer::start().await;
    let admin = ts.admin_client();
    let (consumer, _, key) = admin.setup("acme", "/docs", &format!("http://{upstream}")).await;
    let res = ts.client.get(format!("{}/docs/fixed", ts.gateway)).header("x-api-key", &key).send().await.unwrap();
    assert_eq!(res.status(), 200);
    ts.flush().await;
    // Retention holds the audit directory: the erasure waits for it.
    let held = keytrail::store::audit::erasure::maintenance_lock(&ts.audit_dir(), "retention").unwrap();
    let mut stream = tokio::net::TcpStream::connect(ts.admin.trim_start_matches("http://")).await.unwrap();
    let head = format!(
        "POST /v1/tenants/acme/consumers/{consumer}/erase HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // The change is under way (the consumer's name is already replaced)...
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let listed = admin.get("/v1/tenants/acme/consumers").await;
        if listed.text.contains(&format!("erased-{consumer}")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the erasure did not start: {}", listed.text);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // ...when its caller goes away.
    drop(stream);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    drop(held);
    admin.wait_for("/v1/audit/acme/security?event_type=personal_data_erased", "events", 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    ts.flush().await;
    let log = admin.get("/v1/audit/acme/admin").await;
    let entry = log.body["entries"].as_array().unwrap().iter().find(|e| e["resource"] == format!("consumer:{consumer}") && e["action"] != "CONSUMER_CREATED").cloned();
    assert_eq!(entry.as_ref().map(|e| e["outcome"].clone()), Some(json!("success")), "{}", log.text);
}
