//! The gateway as a client sees it: keys, routing, forwarded headers,
//! refusals and upstream failures, each with its audit event.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::{closed_port, start_upstream, TestServer};

async fn get_with(ts: &TestServer, path: &str, headers: &[(&str, &str)]) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = ts.client.get(format!("{}{}", ts.gateway, path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, headers, res.text().await.unwrap())
}

fn error_code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    v["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code: {body}")).to_string()
}

#[tokio::test]
async fn a_valid_key_is_proxied_from_either_header_and_stripped() {
    let mut ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (consumer, key_id, key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;

    for header in [("Authorization", format!("Bearer {key}")), ("X-API-Key", key.clone())] {
        let (status, headers, body) = get_with(
            &ts,
            "/docs/page?x=1",
            &[(header.0, &header.1), ("X-Consumer-Id", "spoofed"), ("X-Request-Id", "client-chosen")],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let echo: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(echo["path"], "/docs/page", "path is forwarded unchanged");
        assert_eq!(echo["query"], "x=1");
        let up_headers = echo["headers"].as_object().unwrap();
        assert!(!up_headers.contains_key("authorization"), "key stripped: {body}");
        assert!(!up_headers.contains_key("x-api-key"), "key stripped: {body}");
        assert!(!body.contains(&key));
        assert_eq!(up_headers["x-consumer-id"], consumer.as_str(), "the gateway's consumer header replaces the caller's");
        let request_id = headers["x-request-id"].to_str().unwrap();
        assert_eq!(up_headers["x-request-id"], request_id, "same request id both ways");
        assert_ne!(request_id, "client-chosen");
        assert_eq!(up_headers["host"], up.to_string());
    }

    // Both calls are in the trail with the consumer, key and sizes.
    let logs = admin.wait_for("/v1/audit/acme", "logs", 2).await;
    for log in &logs {
        assert_eq!(log["status_code"], 200);
        assert_eq!(log["consumer_id"], consumer.as_str());
        assert_eq!(log["consumer_name"], "acme-client");
        assert_eq!(log["key_id"], key_id.as_str());
        assert_eq!(log["key_hint"], format!("kt_live****{}", &key[key.len() - 4..]));
        assert_eq!(log["api_id"], "docs");
        assert_eq!(log["method"], "GET");
        assert_eq!(log["path"], "/docs/page", "query string is not recorded");
        assert_eq!(log["client_ip"], "127.0.0.1");
        assert_eq!(log["outcome"], "success");
        assert!(log["response_size_bytes"].as_u64().unwrap() > 100);
        assert!(log["latency_ms"].as_f64().unwrap() > 0.0);
        assert!(log["upstream_latency_ms"].as_f64().unwrap() > 0.0);
        assert!(log["timestamp"].as_str().unwrap().ends_with('Z'));
    }
    ts.stop().await;
}

#[tokio::test]
async fn routing_is_by_longest_prefix_on_segment_boundaries() {
    let mut ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    let a = admin
        .post("/v1/tenants/acme/apis", json!({"id": "v2", "path_prefix": "/docs/v2", "upstream": format!("http://{up}")}))
        .await;
    assert_eq!(a.status, 201);
    let auth = format!("Bearer {key}");

    let (status, _, body) = get_with(&ts, "/docsearch", &[("Authorization", &auth)]).await;
    assert_eq!((status, error_code(&body).as_str()), (404, "no_route"));
    let (status, _, _) = get_with(&ts, "/docs", &[("Authorization", &auth)]).await;
    assert_eq!(status, 200);
    let (status, _, _) = get_with(&ts, "/docs/v2/x", &[("Authorization", &auth)]).await;
    assert_eq!(status, 200);
    let logs = admin.wait_for("/v1/audit/acme", "logs", 3).await;
    let apis: Vec<&str> = logs.iter().map(|l| l["api_id"].as_str().unwrap_or("-")).collect();
    assert_eq!(apis, vec!["v2", "docs", "-"], "newest first; the no_route call is attributed to the key's tenant");
    assert_eq!(logs[2]["status_code"], 404);
    assert_eq!(logs[2]["error_code"], "no_route");
    ts.stop().await;
}

#[tokio::test]
async fn unauthenticated_calls_to_unknown_paths_go_to_the_system_tenant() {
    let mut ts = TestServer::start().await;
    let admin = ts.admin_client();
    let (status, headers, body) = get_with(&ts, "/nothing/here", &[]).await;
    assert_eq!((status, error_code(&body).as_str()), (404, "no_route"));
    assert!(headers.contains_key("x-request-id"));
    let logs = admin.wait_for("/v1/audit/_system", "logs", 1).await;
    assert_eq!(logs[0]["path"], "/nothing/here");
    assert_eq!(logs[0]["tenant_id"], "_system");
    ts.stop().await;
}

#[tokio::test]
async fn every_refusal_has_its_code_and_its_security_event() {
    let mut ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (consumer, key_id, key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    let (_, other_key_id, other_tenant_key) = admin.setup("other", "/other", &format!("http://{up}")).await;

    // A well-formed key that was never issued: valid checksum, unknown hash.
    let unknown = keytrail::keys::generate_key(keytrail::keys::KeyEnvironment::Live).secret;
    let mut typo = key.clone().into_bytes();
    typo[10] = if typo[10] == b'A' { b'B' } else { b'A' };
    let typo = String::from_utf8(typo).unwrap();

    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (vec![], "missing_key"),
        (vec![("Authorization", "Basic dXNlcjpwYXNz".into())], "missing_key"),
        (vec![("Authorization", format!("Bearer {typo}"))], "invalid_key"),
        (vec![("X-API-Key", "not-a-key".into())], "invalid_key"),
        (vec![("X-API-Key", unknown.clone())], "invalid_key"),
        (vec![("X-API-Key", other_tenant_key.clone())], "invalid_key"),
    ];
    for (headers, code) in &cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, res_headers, body) = get_with(&ts, "/docs/a", &h).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(error_code(&body), *code);
        assert!(res_headers.contains_key("x-request-id"));
        assert_eq!(res_headers["content-type"], "application/json");
    }
    let events = admin.wait_for("/v1/audit/acme/security?event_type=auth_failed", "events", cases.len()).await;
    assert_eq!(events.len(), cases.len());
    for e in &events {
        assert_eq!(e["type"], "auth_failed");
        assert_eq!(e["outcome"], "failure");
        assert!(e["request_id"].is_string());
        assert!(e["details"]["reason"].is_string());
    }
    let reasons: Vec<&str> = events.iter().map(|e| e["details"]["reason"].as_str().unwrap()).collect();
    assert!(reasons.contains(&"malformed key: checksum mismatch"), "{reasons:?}");
    assert!(reasons.contains(&"unknown key"), "{reasons:?}");
    assert!(reasons.contains(&"key belongs to another tenant"), "{reasons:?}");
    assert!(!events.iter().any(|e| e["key_id"] == other_key_id.as_str()), "another tenant's key id is not revealed");

    // Revoked: refused within one second of the revoke answer.
    let a = admin.post(&format!("/v1/keys/{key_id}/revoke"), json!({})).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["status"], "revoked");
    let revoked_at = Instant::now();
    let (status, _, body) = get_with(&ts, "/docs/a", &[("X-API-Key", &key)]).await;
    assert!(revoked_at.elapsed() < Duration::from_secs(1));
    assert_eq!((status, error_code(&body).as_str()), (401, "revoked_key"));
    let used = admin.wait_for("/v1/audit/acme/security?event_type=revoked_key_used", "events", 1).await;
    assert_eq!(used[0]["key_id"], key_id.as_str());
    assert_eq!(used[0]["consumer_id"], consumer.as_str());
    let revoked = admin.wait_for("/v1/audit/acme/security?event_type=key_revoked", "events", 1).await;
    assert_eq!(revoked[0]["actor"], "admin:adm_bootstrap");
    assert_eq!(revoked[0]["target"], format!("key:{key_id}"));

    // Expired: a key that expires in a moment.
    let expires = (chrono::Utc::now() + chrono::Duration::milliseconds(600)).to_rfc3339();
    let (exp_key_id, exp_key) = admin.key("acme", &consumer, json!({"expires_at": expires})).await;
    let (status, _, _) = get_with(&ts, "/docs/a", &[("X-API-Key", &exp_key)]).await;
    assert_eq!(status, 200, "valid before its expiry");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (status, _, body) = get_with(&ts, "/docs/a", &[("X-API-Key", &exp_key)]).await;
    assert_eq!((status, error_code(&body).as_str()), (401, "expired_key"));
    let used = admin.wait_for("/v1/audit/acme/security?event_type=expired_key_used", "events", 1).await;
    assert_eq!(used[0]["key_id"], exp_key_id.as_str());
    let listed = admin.get(&format!("/v1/tenants/acme/consumers/{consumer}/keys")).await;
    let statuses: Vec<&str> = listed.body["keys"].as_array().unwrap().iter().map(|k| k["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, vec!["revoked", "expired"]);

    // Every refusal is also a request event with the error code.
    let logs = admin.wait_for("/v1/audit/acme?status_min=401&status_max=401", "logs", cases.len() + 2).await;
    assert!(logs.iter().all(|l| l["outcome"] == "failure" && l["error_code"].is_string()));
    ts.stop().await;
}

#[tokio::test]
async fn upstream_failures_are_502_and_504() {
    let mut ts = TestServer::start().await;
    let up = start_upstream().await;
    let dead = closed_port().await;
    let admin = ts.admin_client();
    let (consumer, _, key) = admin.setup("acme", "/live", &format!("http://{up}")).await;
    let _ = consumer;
    let a = admin.post("/v1/tenants/acme/apis", json!({"id": "dead", "path_prefix": "/dead", "upstream": format!("http://{dead}")})).await;
    assert_eq!(a.status, 201);
    let a = admin
        .post("/v1/tenants/acme/apis", json!({"id": "slow", "path_prefix": "/slow", "upstream": format!("http://{up}"), "timeout_ms": 200}))
        .await;
    assert_eq!(a.status, 201, "{}", a.text);

    let (status, _, body) = get_with(&ts, "/dead/x", &[("X-API-Key", &key)]).await;
    assert_eq!((status, error_code(&body).as_str()), (502, "upstream_unavailable"));
    let started = Instant::now();
    let (status, _, body) = get_with(&ts, "/slow/slow?ms=3000", &[("X-API-Key", &key)]).await;
    assert_eq!((status, error_code(&body).as_str()), (504, "upstream_timeout"));
    assert!(started.elapsed() < Duration::from_secs(2), "the timeout cut the wait short");
    let (status, _, body) = get_with(&ts, "/live/status/503", &[("X-API-Key", &key)]).await;
    assert_eq!((status, body.as_str()), (503, "status 503"), "upstream errors pass through untouched");

    let logs = admin.wait_for("/v1/audit/acme", "logs", 3).await;
    let seen: Vec<(u64, &str, &str)> = logs
        .iter()
        .map(|l| (l["status_code"].as_u64().unwrap(), l["error_code"].as_str().unwrap_or("-"), l["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        seen,
        vec![(503, "-", "failure"), (504, "upstream_timeout", "failure"), (502, "upstream_unavailable", "failure")]
    );
    ts.stop().await;
}

#[tokio::test]
async fn bodies_stream_both_ways_and_are_counted() {
    let mut ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/files", &format!("http://{up}")).await;

    let size: u64 = 5 * 1024 * 1024 + 17;
    let res = ts.client.get(format!("{}/files/download?bytes={size}", ts.gateway)).header("X-API-Key", &key).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().len() as u64, size);

    let (status, received) = crate::util::upload(&ts.client, &format!("{}/files/upload", ts.gateway), &key, 1 << 20, 3).await;
    assert_eq!(status, 200);
    assert_eq!(received, 3 << 20);

    let logs = admin.wait_for("/v1/audit/acme", "logs", 2).await;
    assert_eq!(logs[0]["method"], "POST");
    assert_eq!(logs[0]["request_size_bytes"], 3 << 20);
    assert_eq!(logs[1]["response_size_bytes"], size);
    ts.stop().await;
}

/// An upstream that speaks raw bytes: the n-th request it reads (on any
/// connection; heads only) is answered with `answer(n)`: the pieces, each
/// written on its own, and whether the connection is closed after them.
/// Returns its address and a count of the connections it accepted.
pub(crate) async fn raw_upstream(
    answer: impl Fn(usize) -> (Vec<&'static [u8]>, bool) + Send + Sync + 'static,
) -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let (answer, served, accepted) = (Arc::new(answer), Arc::new(AtomicUsize::new(0)), connections.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            accepted.fetch_add(1, Ordering::SeqCst);
            let (answer, served) = (answer.clone(), served.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    if !crate::util::read_head(&mut stream, &mut buf).await {
                        return;
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buf.drain(..end);
                    let (pieces, close) = answer(served.fetch_add(1, Ordering::SeqCst));
                    for piece in pieces {
                        if stream.write_all(piece).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    if close {
                        return;
                    }
                }
            });
        }
    });
    (addr, connections)
}

#[tokio::test]
async fn broken_upstream_answers_are_502_and_never_leak_into_the_next_call() {
    let mut ts = TestServer::start().await;
    let (up, _) = raw_upstream(|n| {
        let answer: &'static [u8] = match n {
            // Both framings at once: a smuggling attempt, refused.
            0 => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            // A second answer nobody asked for behind the first.
            1 => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled",
            2 => b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal",
            _ => b"NOT HTTP AT ALL\r\n\r\n",
        };
        (vec![answer], false)
    })
    .await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/raw", &format!("http://{up}")).await;

    let mut seen = Vec::new();
    for _ in 0..4 {
        let (status, _, body) = get_with(&ts, "/raw/x", &[("X-API-Key", &key)]).await;
        seen.push((status, if status == 502 { error_code(&body) } else { body }));
    }
    let expected = [(502, "upstream_unavailable"), (200, "ok"), (200, "real"), (502, "upstream_unavailable")];
    assert_eq!(seen, expected.map(|(s, b)| (s, b.to_string())));
    let logs = admin.wait_for("/v1/audit/acme", "logs", 4).await;
    let statuses: Vec<u64> = logs.iter().map(|l| l["status_code"].as_u64().unwrap()).collect();
    assert_eq!(statuses, vec![502, 200, 200, 502], "newest first");
    ts.stop().await;
}

#[tokio::test]
async fn chunked_and_close_delimited_answers_stream_through_and_are_counted() {
    let mut ts = TestServer::start().await;
    let (up, connections) = raw_upstream(|n| match n {
        0 => (
            vec![
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: 1\r\n\r\n".as_slice(),
                b"5\r\nhel",
                b"lo\r\n6;ext=1\r\n world\r\n",
                b"0\r\n\r\n",
            ],
            false,
        ),
        1 => (vec![b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n".as_slice(), b"until ", b"close"], true),
        _ => (vec![b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext".as_slice()], false),
    })
    .await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/raw", &format!("http://{up}")).await;

    let (status, headers, body) = get_with(&ts, "/raw/chunked", &[("X-API-Key", &key)]).await;
    assert_eq!((status, body.as_str()), (200, "hello world"));
    assert_eq!(headers["x-up"], "1");
    let (status, _, body) = get_with(&ts, "/raw/close", &[("X-API-Key", &key)]).await;
    assert_eq!((status, body.as_str()), (200, "until close"));
    let (status, _, body) = get_with(&ts, "/raw/next", &[("X-API-Key", &key)]).await;
    assert_eq!((status, body.as_str()), (200, "next"));
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the chunked answer kept its connection; the close-delimited one ended it"
    );

    let logs = admin.wait_for("/v1/audit/acme", "logs", 3).await;
    let sizes: Vec<u64> = logs.iter().map(|l| l["response_size_bytes"].as_u64().unwrap()).collect();
    assert_eq!(sizes, vec![4, 11, 11], "decoded bytes, newest first");
    assert!(logs.iter().all(|l| l["outcome"] == "success"));
    ts.stop().await;
}

#[tokio::test]
async fn an_upstream_connection_closed_while_idle_is_replaced_not_failed() {
    let mut ts = TestServer::start().await;
    // Closes every connection after its answer without saying so, as an
    // upstream's keep-alive timeout does.
    let (up, connections) = raw_upstream(|_| (vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".as_slice()], true)).await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/raw", &format!("http://{up}")).await;
    for _ in 0..3 {
        let (status, _, body) = get_with(&ts, "/raw/x", &[("X-API-Key", &key)]).await;
        assert_eq!((status, body.as_str()), (200, "ok"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 3);
    ts.stop().await;
}

/// A 502 says what went wrong with the upstream, to the caller and in the
/// trail: an upstream that answered bytes that are no HTTP response, or
/// that closed the connection without an answer, was reported as one that
/// "could not be reached", sending whoever read the trail to look at the
/// network instead of at the upstream.
#[tokio::test]
async fn a_502_tells_an_unreachable_upstream_from_a_broken_answer() {
    let mut ts = TestServer::start().await;
    let (garbled, _) = raw_upstream(|_| (vec![b"NOT HTTP AT ALL\r\n\r\n".as_slice()], true)).await;
    let (silent, _) = raw_upstream(|_| (vec![], true)).await;
    let down = crate::util::closed_port().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/garbled", &format!("http://{garbled}")).await;
    for (id, up) in [("silent", silent), ("down", down)] {
        let a = admin.post("/v1/tenants/acme/apis", json!({"id": id, "path_prefix": format!("/{id}"), "upstream": format!("http://{up}")})).await;
        assert_eq!(a.status, 201, "{}", a.text);
    }
    let cases = [("/garbled/x", "cannot read"), ("/silent/x", "closed the connection"), ("/down/x", "could not be reached")];
    for (path, says) in cases {
        let (status, _, body) = get_with(&ts, path, &[("X-API-Key", &key)]).await;
        assert_eq!((status, error_code(&body).as_str()), (502, "upstream_unavailable"), "{path}: {body}");
        let message = serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains(says), "{path}: {message}");
    }
    let logs = admin.wait_for("/v1/audit/acme?status_min=502", "logs", 3).await;
    for (path, says) in cases {
        let log = logs.iter().find(|l| l["path"] == path).unwrap_or_else(|| panic!("{path}: {logs:?}"));
        assert!(log["error_message"].as_str().unwrap().contains(says), "{path}: {log}");
    }
    ts.stop().await;
}
