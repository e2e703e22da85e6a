//! Review of the audit writer and durability: defects found, each with the
//! test that showed it.

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
/// answer is still in the trail (as aborted), on both connection paths.
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
        if name == "hyper" {
            assert_eq!((&event["outcome"], &event["error_code"]), (&json!("aborted"), &json!("client_disconnected")), "{event}");
        }
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
    assert!(
        events.iter().any(|s| s.event.path.as_deref() == Some("/docs/slow")),
        "the call the upstream had is not in the trail: {:?}",
        events.iter().map(|s| (&s.event.event_type, &s.event.path)).collect::<Vec<_>>()
    );
    call.abort();
}
