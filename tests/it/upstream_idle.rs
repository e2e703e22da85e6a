//! The api's timeout once an answer's head has come: it bounds each wait
//! for more of the body (an idle timeout, nginx's `proxy_read_timeout`),
//! never the whole of a body that keeps coming. On both of the gateway's
//! paths: its own connection loop (a GET) and hyper (a POST with a body).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::TestServer;

/// The api's timeout in these tests.
const TIMEOUT_MS: u64 = 300;

/// Creates the tenant, an api `/{id}` to `upstream` with the test's
/// timeout, and returns a key.
async fn api_with_timeout(ts: &TestServer, upstream: std::net::SocketAddr) -> String {
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/base", &format!("http://{upstream}")).await;
    let api = admin
        .post("/v1/tenants/acme/apis", serde_json::json!({"id": "up", "path_prefix": "/up", "upstream": format!("http://{upstream}"), "timeout_ms": TIMEOUT_MS}))
        .await;
    assert_eq!(api.status, 201, "{}", api.text);
    key
}

/// A GET (the gateway's own loop) or a POST with a body (hyper's).
fn call(method: &str, path: &str, key: &str, close: bool) -> String {
    let close = if close { "Connection: close\r\n" } else { "" };
    match method {
        "GET" => format!("GET {path} HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\n{close}\r\n"),
        _ => format!("POST {path} HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\nContent-Length: 2\r\n{close}\r\nhi"),
    }
}

/// Sends `request` on a new connection and reads until the gateway closes
/// it (at most 5 s): what came, and when the connection ended.
async fn exchange(ts: &TestServer, request: &str) -> (String, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(ts.gateway.trim_start_matches("http://")).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the connection was left open: {}", String::from_utf8_lossy(&out));
    (String::from_utf8_lossy(&out).into_owned(), started.elapsed())
}

/// The head and the body of an answer.
fn split(answer: &str) -> (String, &str) {
    let end = answer.find("\r\n\r\n").unwrap_or_else(|| panic!("no head: {answer}")) + 4;
    (answer[..end].to_ascii_lowercase(), &answer[end..])
}

#[tokio::test]
async fn a_body_that_stalls_midway_ends_the_callers_connection_at_the_timeout_on_both_paths() {
    let ts = TestServer::start().await;
    // Half an answer, then nothing (the connection stays open): by its
    // length on even calls, in chunks on odd ones.
    let (up, connections) = crate::gateway::raw_upstream(|n| {
        let pieces: Vec<&'static [u8]> = if n % 2 == 0 {
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", b"hello"]
        } else {
            vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"5\r\nhello\r\n"]
        };
        (pieces, false)
    })
    .await;
    let key = api_with_timeout(&ts, up).await;
    for method in ["GET", "POST"] {
        for framing in ["length", "chunked"] {
            let (answer, took) = exchange(&ts, &call(method, &format!("/up/{framing}"), &key, false)).await;
            let what = format!("{method} {framing}");
            let (head, body) = split(&answer);
            assert!(head.starts_with("http/1.1 200"), "{what}: {answer}");
            if framing == "length" {
                assert!(head.contains("content-length: 10\r\n"), "{what}: {answer}");
                assert_eq!(body, "hello", "{what}: fewer bytes than its length");
            } else {
                assert!(head.contains("transfer-encoding: chunked\r\n"), "{what}: {answer}");
                assert_eq!(body, "5\r\nhello\r\n", "{what}: no last chunk");
            }
            let timeout = Duration::from_millis(TIMEOUT_MS);
            assert!(took >= timeout && took < timeout * 10, "{what}: closed at the timeout, in {took:?}");
        }
    }
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 4, "no stalled upstream connection was used again");
    let logs = ts.admin_client().wait_for("/v1/audit/acme", "logs", 4).await;
    let seen: Vec<(&str, &str, u64, &str, &str, u64)> = logs
        .iter()
        .map(|l| {
            let text = |f: &str| l[f].as_str().unwrap_or("");
            (text("method"), text("path"), l["status_code"].as_u64().unwrap(), text("outcome"), text("error_code"), l["response_size_bytes"].as_u64().unwrap())
        })
        .collect();
    let recorded = |method, path| (method, path, 200, "failure", "upstream_timeout", 5);
    assert_eq!(
        seen,
        vec![recorded("POST", "/up/chunked"), recorded("POST", "/up/length"), recorded("GET", "/up/chunked"), recorded("GET", "/up/length")],
        "newest first: the status sent, the bytes sent, the upstream's timeout"
    );
}

/// An upstream that answers `/…/chunked` in chunks and anything else by
/// its length: the head, then eight pieces 80 ms apart (640 ms in all,
/// more than twice the timeout; never idle for a third of it).
async fn steady_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if !crate::util::read_head(&mut stream, &mut buf).await {
                    return;
                }
                let chunked = String::from_utf8_lossy(&buf).lines().next().unwrap_or("").contains("/chunked");
                let head: &[u8] = if chunked { b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" } else { b"HTTP/1.1 200 OK\r\nContent-Length: 80\r\n\r\n" };
                let _ = stream.write_all(head).await;
                for i in 0..8u8 {
                    tokio::time::sleep(Duration::from_millis(80)).await;
                    let piece = vec![b'a' + i; 10];
                    let piece = if chunked { [b"a\r\n".as_slice(), &piece, b"\r\n"].concat() } else { piece };
                    if stream.write_all(&piece).await.is_err() {
                        return;
                    }
                }
                if chunked {
                    let _ = stream.write_all(b"0\r\n\r\n").await;
                }
                let _ = stream.read(&mut [0u8; 64]).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_answer_that_keeps_coming_is_delivered_whole_however_long_it_takes() {
    let ts = TestServer::start().await;
    let key = api_with_timeout(&ts, steady_upstream().await).await;
    let expected: String = (0..8u8).map(|i| String::from_utf8(vec![b'a' + i; 10]).unwrap()).collect();
    let calls = ["GET", "POST"].into_iter().flat_map(|m| ["length", "chunked"].map(move |f| (m, f)));
    let answers = futures_util::future::join_all(calls.map(|(method, framing)| {
        let (ts, key) = (&ts, &key);
        async move { ((method, framing), exchange(ts, &call(method, &format!("/up/{framing}"), key, true)).await) }
    }))
    .await;
    for ((method, framing), (answer, took)) in answers {
        let (head, body) = split(&answer);
        assert!(head.starts_with("http/1.1 200"), "{method} {framing}: {answer}");
        assert!(took > Duration::from_millis(TIMEOUT_MS), "{method} {framing}: took {took:?}, no longer than the timeout");
        if framing == "length" {
            assert_eq!(body, expected, "{method} {framing}");
        } else {
            let pieces: String = (0..8u8).map(|i| format!("a\r\n{}\r\n", String::from_utf8(vec![b'a' + i; 10]).unwrap())).collect();
            // (hyper writes a chunk's size in capitals.)
            assert_eq!(body.to_ascii_lowercase(), format!("{pieces}0\r\n\r\n"), "{method} {framing}");
        }
    }
    let logs = ts.admin_client().wait_for("/v1/audit/acme", "logs", 4).await;
    for log in &logs {
        assert_eq!((log["outcome"].as_str(), log["response_size_bytes"].as_u64()), (Some("success"), Some(80)), "{log}");
    }
}
