//! The proxy path against callers who try to get past it: a body smuggled
//! as a request of its own, a key in a second header, an address list a
//! trusted proxy appended to, and a forbidden path spelled another way.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::{exchange, start_upstream, TestServer};

/// The JSON the test upstream echoes (the request it saw).
fn echoed(answer: &str) -> Value {
    let body = &answer[answer.find("\r\n\r\n").expect("a head") + 4..];
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {answer}"))
}

/// An upstream that keeps every request head it reads (a body by its
/// `Content-Length` only, as a server does) and answers each with `ok`;
/// a head for `/smuggled` is answered late, with `poisoned`.
async fn recording_upstream() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = heads.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let end = loop {
                        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    let length = head
                        .lines()
                        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap()))
                        .unwrap_or(0);
                    while buf.len() < length {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..length);
                    let answer: &[u8] = if head.contains("/smuggled") {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\npoisoned"
                    } else {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                    };
                    seen.lock().unwrap().push(head);
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, heads)
}

/// A caller's `Connection` may name headers to drop before the next hop,
/// but never the message's own `Content-Length`: dropped, the body would
/// reach the upstream as a request of its own — past routing, keys,
/// policies and the trail, and answered to whoever used that upstream
/// connection next.
#[tokio::test]
async fn a_body_cannot_be_smuggled_to_the_upstream_as_a_request() {
    let ts = TestServer::start().await;
    let (up, heads) = recording_upstream().await;
    let admin = ts.admin_client();
    let (_, _, attacker) = admin.setup("acme", "/api", &format!("http://{up}")).await;
    let (_, _, victim) = admin.consumer_with_key("acme", "victim", json!({})).await;
    let smuggled = "GET /api/smuggled HTTP/1.1\r\nHost: internal\r\n\r\n";
    for connection in ["Content-Length, close", "close, Content-Length", "close, Host, content-length"] {
        heads.lock().unwrap().clear();
        let call = format!(
            "POST /api/upload HTTP/1.1\r\nHost: gw\r\nX-API-Key: {attacker}\r\nConnection: {connection}\r\nContent-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        );
        let answer = exchange(&ts, call.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"), "{connection}: {answer}");
        // Another client's call within the smuggled answer's 300 ms.
        let other = exchange(&ts, format!("GET /api/mine HTTP/1.1\r\nHost: gw\r\nX-API-Key: {victim}\r\nConnection: close\r\n\r\n").as_bytes()).await;
        assert!(other.ends_with("ok"), "{connection}: another caller got the smuggled answer: {other}");
        let heads = heads.lock().unwrap().clone();
        assert_eq!(heads.len(), 2, "{connection}: the upstream read a request the gateway never saw: {heads:?}");
        let upload = heads.iter().find(|h| h.starts_with("POST /api/upload")).expect("the upload");
        assert!(upload.to_ascii_lowercase().contains(&format!("content-length: {}", smuggled.len())), "{upload}");
        assert!(upload.to_ascii_lowercase().contains("host: "), "{upload}");
    }
}

/// The key never reaches the upstream, whichever header carries it and
/// however many do; an `Authorization` that holds no keytrail key is the
/// upstream's own and goes through.
#[tokio::test]
async fn a_key_in_a_second_header_is_not_forwarded() {
    let ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/api", &format!("http://{up}")).await;
    let (_, _, other) = admin.consumer_with_key("acme", "other", json!({})).await;
    for (authorization, forwarded) in [
        (format!("Bearer {key}"), None),
        (format!("bearer   {other}"), None),
        ("Bearer upstream-session-token".to_string(), Some("Bearer upstream-session-token")),
        ("Basic dXNlcjpwdw==".to_string(), Some("Basic dXNlcjpwdw==")),
    ] {
        let call = format!("GET /api/echo HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\nAuthorization: {authorization}\r\nConnection: close\r\n\r\n");
        let answer = exchange(&ts, call.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let seen = echoed(&answer);
        assert!(!seen.to_string().contains(&key) && !seen.to_string().contains(&other), "a key reached the upstream: {seen}");
        assert_eq!(seen["headers"]["authorization"].as_str(), forwarded, "{seen}");
    }
    // A key in a later `Authorization` line, after one that holds none.
    for first in ["Basic dXNlcjpwdw==", "Bearer upstream-session-token"] {
        let call = format!(
            "GET /api/echo HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\nAuthorization: {first}\r\nAuthorization: Bearer {other}\r\nConnection: close\r\n\r\n"
        );
        let answer = exchange(&ts, call.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let seen = echoed(&answer);
        assert!(!seen.to_string().contains(&other), "a key in a second Authorization line reached the upstream: {seen}");
    }
}

/// Every `X-Forwarded-For` line reaches the upstream, in order, as one
/// list ending with the peer: a trusted proxy that appends a line of its
/// own (rather than extending the caller's) is not cut off, and the
/// upstream reads the same client the trail records.
#[tokio::test]
async fn every_forwarded_for_line_reaches_the_upstream() {
    let ts = TestServer::start_with(tempfile::tempdir().unwrap(), |c| {
        c.gateway.trusted_proxies = keytrail::protection::TrustedProxies::parse(&["127.0.0.1/32".to_string()]).unwrap();
    })
    .await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/api", &format!("http://{up}")).await;
    let call = format!(
        "GET /api/echo HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For:  \r\nX-Forwarded-For: 203.0.113.7\r\nConnection: close\r\n\r\n"
    );
    let seen = echoed(&exchange(&ts, call.as_bytes()).await);
    assert_eq!(seen["headers"]["x-forwarded-for"], "6.6.6.6, 203.0.113.7, 127.0.0.1", "{seen}");
    let logs = admin.wait_for("/v1/audit/acme", "logs", 1).await;
    assert_eq!(logs[0]["client_ip"], "203.0.113.7");
}

/// A forbidden path stays forbidden however it is spelled: with doubled
/// slashes, `.` segments or percent-escapes that an upstream resolves.
#[tokio::test]
async fn a_forbidden_path_is_refused_in_every_spelling() {
    let ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/api", &format!("http://{up}")).await;
    let api = admin
        .post("/v1/tenants/acme/apis", json!({"id": "docs", "path_prefix": "/docs", "upstream": format!("http://{up}"), "policies": {"forbidden_paths": ["/docs/admin"]}}))
        .await;
    assert_eq!(api.status, 201, "{}", api.text);
    let spellings = ["/docs/admin", "/docs//admin", "/docs/./admin", "/docs/%61dmin", "/docs/%2561dmin/x", "/docs/.//%2e/admin"];
    for path in spellings {
        let answer = exchange(&ts, format!("GET {path} HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n").as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{path}: {answer}");
    }
    let allowed = exchange(&ts, format!("GET /docs/administrator HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n").as_bytes()).await;
    assert!(allowed.starts_with("HTTP/1.1 200"), "{allowed}");
    // Each refusal names the path as it was sent.
    let events = admin.wait_for("/v1/audit/acme/security?event_type=policy_applied", "events", spellings.len()).await;
    assert_eq!(events.len(), spellings.len());
}

/// A 204 carries no `Content-Length` (RFC 9110 §8.6) even when the
/// upstream sent one, on the connection loop's answers and on hyper's
/// (a connection hyper serves after a call with a body), to GET and HEAD.
#[tokio::test]
async fn a_204_never_carries_a_length() {
    let ts = TestServer::start().await;
    let (up, _) = crate::gateway::raw_upstream(|_| (vec![b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n".as_slice()], false)).await;
    let (_, _, key) = ts.admin_client().setup("acme", "/api", &format!("http://{up}")).await;
    for method in ["GET", "HEAD"] {
        let call = format!("{method} /api/x HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n");
        let by_hyper = format!("POST /api/first HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\nContent-Length: 0\r\n\r\n{call}");
        for (path, bytes) in [("loop", call.clone()), ("hyper", by_hyper)] {
            let answer = exchange(&ts, bytes.as_bytes()).await.to_ascii_lowercase();
            let last = &answer[answer.rfind("http/1.1 ").unwrap()..];
            assert!(last.starts_with("http/1.1 204"), "{method} {path}: {answer}");
            assert!(!last.contains("content-length"), "{method} {path}: {last}");
        }
    }
}

/// An api whose upstream is an IPv6 literal (`http://[::1]:port`) is
/// reached, not refused with 502.
#[tokio::test]
async fn an_ipv6_literal_upstream_is_reached() {
    let ts = TestServer::start().await;
    let listener = tokio::net::TcpListener::bind("[::1]:0").await.expect("this machine has IPv6 loopback");
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if !crate::util::read_head(&mut stream, &mut buf).await {
                    return;
                }
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nv6").await;
            });
        }
    });
    let (_, _, key) = ts.admin_client().setup("acme", "/v6", &format!("http://[::1]:{port}")).await;
    let answer = exchange(&ts, format!("GET /v6/x HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n").as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("v6"), "{answer}");
}

/// Empty lines a client sends after a call (RFC 9112 §2.2 allows them
/// before a request line) are no slow head: a client that then idles is
/// not recorded as holding a head open, on the loop's connections or hyper's.
#[tokio::test]
async fn empty_lines_then_idle_are_not_a_slow_head() {
    let ts = TestServer::start_with(tempfile::tempdir().unwrap(), |c| c.gateway.head_timeout = Duration::from_millis(300)).await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/api", &format!("http://{up}")).await;
    let call = format!("GET /api/fixed HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\n\r\n");
    let by_hyper = format!("POST /api/upload HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\nContent-Length: 2\r\n\r\nhi");
    for first in [call.clone(), by_hyper] {
        let answer = exchange(&ts, format!("{first}\r\n\r\n").as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    // A head begun and left is still one.
    let answer = exchange(&ts, format!("{call}\r\nGET /api/fixed HTTP/1.1\r\nHost:").as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let slow = admin.wait_for("/v1/audit/_system/security?event_type=request_blocked", "events", 1).await;
    ts.flush().await;
    let slow_now = admin.get("/v1/audit/_system/security?event_type=request_blocked").await;
    assert_eq!(slow_now.body["events"].as_array().unwrap().len(), 1, "{}", slow_now.text);
    assert_eq!(slow[0]["details"]["rule_id"], "builtin:slow-head");
}

/// A request body is the caller's: one whose chunks are broken is a 400
/// `invalid_body`, one that keeps coming past the api's timeout is waited
/// for (the upstream's time starts when the body last moved), and one that
/// stops short of its declared length is a 408 `request_timeout` — none of
/// them the upstream's failure (502 / 504).
#[tokio::test]
async fn a_callers_body_is_not_blamed_on_the_upstream() {
    let ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/api", &format!("http://{up}")).await;
    let api = admin.post("/v1/tenants/acme/apis", json!({"id": "slow", "path_prefix": "/slow", "upstream": format!("http://{up}"), "timeout_ms": 300})).await;
    assert_eq!(api.status, 201, "{}", api.text);

    let broken = format!("POST /api/upload HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n");
    let answer = exchange(&ts, broken.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("invalid_body"), "{answer}");

    let upload = |wait_ms: u64, rest: &'static [u8]| {
        let head = format!("POST /slow/upload HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\nContent-Length: 10\r\nConnection: close\r\n\r\nhello");
        let addr = ts.gateway.trim_start_matches("http://").to_string();
        async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(head.as_bytes()).await.unwrap();
            // Half the body now, and the rest after each wait (one under the
            // api's 300 ms timeout at a time, longer than it in all).
            for i in 0..3 {
                tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                if let Some(byte) = rest.get(i..i + 1) {
                    let _ = stream.write_all(byte).await;
                }
            }
            if let Some(last) = rest.get(3..) {
                let _ = stream.write_all(last).await;
            }
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).into_owned()
        }
    };
    let slow = upload(200, b"world").await;
    assert!(slow.starts_with("HTTP/1.1 200"), "an upload still coming was cut off: {slow}");
    assert_eq!(echoed(&slow)["received_bytes"], 10, "{slow}");
    let stalled = upload(200, b"").await;
    assert!(stalled.starts_with("HTTP/1.1 408"), "{stalled}");

    let logs = admin.wait_for("/v1/audit/acme?status_min=400", "logs", 2).await;
    let codes: Vec<&str> = logs.iter().map(|e| e["error_code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["request_timeout", "invalid_body"], "{logs:?}");
}

/// A user-agent blocklist entry matches the whole header, not the 512
/// characters the trail keeps of it: padding before the blocked name does
/// not get the call through (the upstream would see all of it).
#[tokio::test]
async fn a_padded_user_agent_is_still_blocked() {
    let ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/api", &format!("http://{up}")).await;
    assert_eq!(admin.post("/v1/blocklist", json!({"kind": "user_agent", "value": "sqlmap"})).await.status, 201);
    for agent in ["sqlmap/1.7".to_string(), format!("{} sqlmap/1.7", "a".repeat(512)), format!("{}sqlmap", "é".repeat(600))] {
        let answer = exchange(&ts, format!("GET /api/x HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\nUser-Agent: {agent}\r\nConnection: close\r\n\r\n").as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{}: {answer}", agent.len());
    }
    let fine = exchange(&ts, format!("GET /api/x HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\nUser-Agent: {}\r\nConnection: close\r\n\r\n", "a".repeat(600)).as_bytes()).await;
    assert!(fine.starts_with("HTTP/1.1 200"), "{fine}");
}

/// A user-agent blocklist entry matches every `User-Agent` line: a blocked
/// name in a second line (which the upstream sees too) was not looked at,
/// only the first line was — on the connection loop, on hyper's path and
/// at key verification.
#[tokio::test]
async fn a_blocked_user_agent_in_a_second_header_line_is_still_blocked() {
    let ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/api", &format!("http://{up}")).await;
    assert_eq!(admin.post("/v1/tenants/acme/blocklist", json!({"kind": "user_agent", "value": "sqlmap"})).await.status, 201);
    let verify = format!("{{\"key\": \"{key}\", \"api_id\": \"api\"}}");
    for (request, what) in [
        (format!("GET /api/x HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\nUser-Agent: curl/8.0\r\nUser-Agent: sqlmap/1.7\r\nConnection: close\r\n\r\n"), "no body"),
        (format!("POST /api/x HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\nUser-Agent: curl/8.0\r\nuser-agent: sqlmap/1.7\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"), "a body"),
        (format!("POST /v1/keys/verify HTTP/1.1\r\nHost: gw\r\nUser-Agent: curl/8.0\r\nUser-Agent: sqlmap/1.7\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{verify}", verify.len()), "verification"),
    ] {
        let answer = exchange(&ts, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{what}: {answer}");
    }
    let fine = exchange(&ts, format!("GET /api/x HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\nUser-Agent: curl/8.0\r\nUser-Agent: httpie/3\r\nConnection: close\r\n\r\n").as_bytes()).await;
    assert!(fine.starts_with("HTTP/1.1 200"), "{fine}");
    // The same for the global list, in a tenant whose own list has no
    // user-agent entries (the lines are gathered when either list has some).
    let (_, _, other) = admin.setup("beta", "/beta", &format!("http://{up}")).await;
    assert_eq!(admin.post("/v1/blocklist", json!({"kind": "user_agent", "value": "httpie"})).await.status, 201);
    let blocked = exchange(&ts, format!("GET /beta/x HTTP/1.1\r\nHost: gw\r\nX-API-Key: {other}\r\nUser-Agent: curl/8.0\r\nUser-Agent: httpie/3\r\nConnection: close\r\n\r\n").as_bytes()).await;
    assert!(blocked.starts_with("HTTP/1.1 403"), "{blocked}");
}

/// An admin of one tenant sets its apis' upstreams, and the gateway calls
/// them from inside the network: an upstream at the cloud metadata
/// address, or at keytrail's own admin port, let callers reach what only
/// the machine should (server-side request forgery). Such an upstream is
/// refused when the api is made if it is an address, and at the connection
/// if it is a name that resolves there; `gateway.upstream_deny` sets the
/// networks (the link-local range by default).
#[tokio::test]
async fn upstreams_in_refused_networks_or_at_keytrail_itself_are_never_called() {
    let mut ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    let admin_port = ts.admin.rsplit(':').next().unwrap().trim_end_matches('/').to_string();
    let gateway_port = ts.gateway.rsplit(':').next().unwrap().trim_end_matches('/').to_string();
    let api = |id: &str, upstream: String| json!({"id": id, "path_prefix": format!("/{id}"), "upstream": upstream});
    for (upstream, why) in [
        ("http://169.254.169.254".to_string(), "gateway.upstream_deny"),
        ("http://[fe80::1]:8080".to_string(), "gateway.upstream_deny"),
        ("http://[::ffff:169.254.169.254]".to_string(), "gateway.upstream_deny"),
        (format!("http://127.0.0.1:{admin_port}"), "keytrail's own listener"),
        (format!("http://127.0.0.1:{gateway_port}"), "keytrail's own listener"),
    ] {
        let a = admin.post("/v1/tenants/acme/apis", api("meta", upstream.clone())).await;
        assert_eq!((a.status, a.body["error"]["code"].as_str()), (400, Some("invalid_body")), "{upstream}: {}", a.text);
        assert!(a.text.contains(why), "{upstream}: {}", a.text);
    }
    // A name is resolved at each connection: `localhost` is keytrail's admin port here.
    let a = admin.post("/v1/tenants/acme/apis", api("loop", format!("http://localhost:{admin_port}"))).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let res = ts.client.get(format!("{}/loop/v1/tenants", ts.gateway)).header("X-API-Key", &key).send().await.unwrap();
    assert_eq!(res.status(), 502);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_unavailable", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("does not call"), "{body}");
    ts.stop().await;

    // The operator's own list: here every loopback address.
    let mut ts = TestServer::start_with(tempfile::tempdir().unwrap(), |c| {
        c.gateway.upstream_deny = keytrail::protection::Networks::parse(&["127.0.0.0/8".into(), "::1".into()]).unwrap();
    })
    .await;
    let admin = ts.admin_client();
    let a = admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let a = admin.post("/v1/tenants/acme/apis", api("docs", format!("http://{up}"))).await;
    assert!(a.status == 400 && a.text.contains("gateway.upstream_deny"), "{}", a.text);
    let a = admin.post("/v1/tenants/acme/apis", api("docs", format!("http://localhost:{}", up.port()))).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let consumer = admin.post("/v1/tenants/acme/consumers", json!({"name": "c"})).await.body["id"].as_str().unwrap().to_string();
    let key = admin.key("acme", &consumer, json!({})).await.1;
    let res = ts.client.get(format!("{}/docs/x", ts.gateway)).header("X-API-Key", &key).send().await.unwrap();
    assert_eq!(res.status(), 502);
    // The refusal is in the trail, with the gateway's message.
    ts.flush().await;
    let logs = admin.get("/v1/audit/acme?limit=5").await;
    let call = logs.body["logs"].as_array().unwrap().iter().find(|e| e["path"] == "/docs/x").cloned().unwrap_or_default();
    assert_eq!((call["status_code"].as_u64(), call["error_code"].as_str()), (Some(502), Some("upstream_unavailable")), "{}", logs.text);
    ts.stop().await;
}
