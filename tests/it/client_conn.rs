//! The gateway's client connections byte by byte, as a raw TCP client sees
//! them: pipelined calls, a connection handed from the gateway's own loop to
//! hyper mid-way, `Connection: close`, `HEAD`, malformed requests, and
//! an idle connection at shutdown.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::{start_upstream, TestServer};

/// One response read off the stream: status, lower-cased headers, body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Reads one response (content-length or chunked; none after `HEAD`).
async fn read_answer(stream: &mut TcpStream, buf: &mut Vec<u8>, head_request: bool) -> Answer {
    let read = async {
        let end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            fill(stream, buf).await;
        };
        let head = String::from_utf8(buf[..end].to_vec()).expect("a text head");
        buf.drain(..end);
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        let mut answer = Answer { status, headers, body: Vec::new() };
        if head_request || status == 204 || status == 304 {
            return answer;
        }
        if let Some(n) = answer.header("content-length").map(|n| n.parse::<usize>().unwrap()) {
            while buf.len() < n {
                fill(stream, buf).await;
            }
            answer.body = buf.drain(..n).collect();
        } else {
            assert_eq!(answer.header("transfer-encoding"), Some("chunked"), "framed somehow");
            loop {
                let line_end = loop {
                    if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
                        break at;
                    }
                    fill(stream, buf).await;
                };
                let size = usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).unwrap(), 16).unwrap();
                buf.drain(..line_end + 2);
                while buf.len() < size + 2 {
                    fill(stream, buf).await;
                }
                answer.body.extend(buf.drain(..size));
                buf.drain(..2);
                if size == 0 {
                    break;
                }
            }
        }
        answer
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("an answer, not a hang")
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await.unwrap();
    assert!(n > 0, "the gateway closed the connection early; read so far: {}", String::from_utf8_lossy(buf));
    buf.extend_from_slice(&chunk[..n]);
}

/// Whether the gateway closes the connection (after what `buf` already holds).
async fn closes(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await, Ok(Ok(0)) | Ok(Err(_)))
}

/// A call with the key and no body; `extra` holds more header lines.
fn call(method: &str, path: &str, key: &str, extra: &str) -> String {
    format!("{method} {path} HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\n{extra}\r\n")
}

async fn setup() -> (TestServer, String, String) {
    setup_with(TestServer::start().await).await
}

/// The slow-head tests' gateway timeout.
const HEAD_TIMEOUT: Duration = Duration::from_millis(400);

async fn setup_with_head_timeout(timeout: Duration) -> (TestServer, String, String) {
    setup_with(TestServer::start_with(tempfile::tempdir().unwrap(), |c| c.gateway.head_timeout = timeout).await).await
}

async fn setup_with(ts: TestServer) -> (TestServer, String, String) {
    let up = start_upstream().await;
    let (_, _, key) = ts.admin_client().setup("acme", "/api", &format!("http://{up}")).await;
    let addr = ts.gateway.trim_start_matches("http://").trim_end_matches('/').to_string();
    (ts, addr, key)
}

#[tokio::test]
async fn pipelined_calls_are_answered_in_order_on_one_connection() {
    let (ts, addr, key) = setup().await;
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let mut calls = String::new();
    for (i, path) in ["/api/one", "/api/two", "/nowhere", "/api/three"].iter().enumerate() {
        let auth = if i == 2 { String::new() } else { format!("X-API-Key: {key}\r\n") };
        calls.push_str(&format!("GET {path}?n={i} HTTP/1.1\r\nHost: gw\r\n{auth}\r\n"));
    }
    // All four in one write.
    stream.write_all(calls.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    for (i, path) in ["/api/one", "/api/two"].iter().enumerate() {
        let answer = read_answer(&mut stream, &mut buf, false).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.json()["path"], *path);
        assert_eq!(answer.json()["query"], format!("n={i}"));
        assert!(answer.header("date").is_some() && answer.header("x-request-id").is_some());
    }
    let refused = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!(refused.status, 404);
    assert_eq!(refused.json()["error"]["code"], "no_route");
    assert_eq!(refused.header("content-type"), Some("application/json"));
    assert!(refused.header("date").is_some(), "the gateway's own answers are dated");
    let last = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!((last.status, last.json()["path"].as_str()), (200, Some("/api/three")), "a refusal keeps the connection");
    assert!(buf.is_empty());
    // Every call is in the trail.
    ts.flush().await;
    let logs = ts.admin_client().wait_for("/v1/audit/acme?limit=10", "logs", 3).await;
    assert_eq!(logs.len(), 3);
    drop(ts);
}

#[tokio::test]
async fn a_call_with_a_body_hands_the_connection_to_hyper_and_both_sides_answer() {
    let (_ts, addr, key) = setup().await;
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let mut buf = Vec::new();
    // A plain call, then an upload and a plain call behind it in the same write.
    stream.write_all(call("GET", "/api/a", &key, "").as_bytes()).await.unwrap();
    assert_eq!(read_answer(&mut stream, &mut buf, false).await.status, 200);
    let body = "x".repeat(3000);
    let upload = call("POST", "/api/upload", &key, &format!("Content-Length: {}\r\n", body.len())) + &body;
    let chunked = call("POST", "/api/upload", &key, "Transfer-Encoding: chunked\r\n") + "5\r\nhello\r\n0\r\n\r\n";
    let after = call("GET", "/api/b", &key, "");
    stream.write_all(format!("{upload}{chunked}{after}").as_bytes()).await.unwrap();
    let answer = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!((answer.status, answer.json()["received_bytes"].as_u64()), (200, Some(3000)), "the whole body reached the upstream");
    // hyper's side writes the proxied answer's headers from a map: the same ones.
    assert_eq!((answer.all("x-request-id").len(), answer.all("date").len()), (1, 1));
    let answer = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!((answer.status, answer.json()["received_bytes"].as_u64()), (200, Some(5)), "a chunked body too");
    let answer = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!((answer.status, answer.json()["path"].as_str()), (200, Some("/api/b")), "and hyper serves the rest");
}

#[tokio::test]
async fn connection_close_and_head_are_honoured() {
    let (_ts, addr, key) = setup().await;
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let mut buf = Vec::new();
    stream.write_all(call("HEAD", "/api/fixed", &key, "").as_bytes()).await.unwrap();
    let head = read_answer(&mut stream, &mut buf, true).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("2"), "the length of the body a GET would get");
    stream.write_all(call("GET", "/api/fixed", &key, "Connection: close\r\n").as_bytes()).await.unwrap();
    let last = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!((last.status, last.body.as_slice()), (200, b"ok".as_slice()), "no body was left behind by HEAD");
    assert_eq!(last.header("connection"), Some("close"));
    assert!(buf.is_empty());
    assert!(closes(&mut stream).await, "closed after the answer");
}

#[tokio::test]
async fn upstream_headers_arrive_once_and_the_gateways_win() {
    let (_ts, addr, key) = setup().await;
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let mut buf = Vec::new();
    stream.write_all(call("GET", "/api/status/418", &key, "").as_bytes()).await.unwrap();
    let answer = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!((answer.status, answer.body.as_slice()), (418, b"status 418".as_slice()));
    assert_eq!(answer.all("x-request-id").len(), 1);
    assert_eq!(answer.all("date").len(), 1, "the upstream's date, not a second one");
    assert_eq!(answer.all("content-length"), vec!["10"]);
    assert!(answer.header("ratelimit-limit").is_none(), "no tier, no rate headers");
}

#[tokio::test]
async fn malformed_requests_get_400_and_the_connection_ends() {
    let (ts, addr, key) = setup().await;
    for bad in [
        "GET /api/x HTTP/1.1\r\nBad Header: 1\r\n\r\n".to_string(),
        format!("GET /api/x HTTP/1.1\r\nX-API-Key: {key}\r\nContent-Length: abc\r\n\r\n"),
        "\x16\x03\x01\x02\x00\x01\x00\x01\x7c\x03\x03\r\n\r\n".to_string(),
        "GET /api/<x> HTTP/1.1\r\nHost: gw\r\n\r\n".to_string(),
    ] {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream.write_all(bad.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let answer = read_answer(&mut stream, &mut buf, false).await;
        assert_eq!(answer.status, 400, "{bad:?}");
        // The connection loop refuses what is no request head, and a
        // broken length, with the gateway's JSON error.
        assert_eq!(answer.json()["error"]["code"], "invalid_parameter", "{bad:?}");
        assert!(closes(&mut stream).await, "{bad:?}: no second answer on a connection that lost its framing");
        assert!(!String::from_utf8_lossy(&answer.body).contains(&key));
    }
    // None of them reached a route, yet each is in the trail: a refused
    // request and a security event, under the system tenant, without the key.
    let admin = ts.admin_client();
    let security = admin.wait_for("/v1/audit/_system/security?event_type=request_blocked", "events", 4).await;
    let mut rules: Vec<&str> = security.iter().map(|e| e["details"]["rule_id"].as_str().unwrap()).collect();
    rules.sort();
    assert_eq!(rules, ["builtin:malformed-http", "builtin:malformed-http", "builtin:malformed-http", "builtin:malformed-target"]);
    assert!(security.iter().all(|e| e["details"]["block_reason"] == "MALFORMED_REQUEST" && e["actor"] == "ip:127.0.0.1"), "{security:?}");
    let logs = admin.wait_for("/v1/audit/_system?status_min=400&status_max=400", "logs", 4).await;
    assert_eq!(logs.len(), 4, "{logs:?}");
    assert!(logs.iter().all(|e| e["error_code"] == "invalid_parameter" && e["client_ip"] == "127.0.0.1"), "{logs:?}");
    // The one whose head was read says what it asked for; its security
    // event carries its request id.
    let target = security.iter().find(|e| e["details"]["rule_id"] == "builtin:malformed-target").unwrap();
    let call = logs.iter().find(|e| e["request_id"] == target["request_id"]).unwrap();
    assert_eq!((call["method"].as_str(), call["path"].as_str()), (Some("GET"), Some("/api/<x>")), "{call}");
    // More headers than are read (hyper's limit, 100): 431, and in the trail too.
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let many: String = (0..150).map(|i| format!("X-Many-{i}: {i}\r\n")).collect();
    let big = format!("GET /api/x HTTP/1.1\r\nX-API-Key: {key}\r\n{many}\r\n");
    let (mut reader, mut writer) = stream.split();
    let (_, answer) = tokio::join!(writer.write_all(big.as_bytes()), async {
        let mut head = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut head)).await;
        head
    });
    assert!(answer.starts_with(b"HTTP/1.1 431"), "{}", String::from_utf8_lossy(&answer));
    let security = admin.wait_for("/v1/audit/_system/security?event_type=request_blocked", "events", 5).await;
    assert_eq!(security[0]["details"]["rule_id"], "builtin:malformed-length", "{security:?}");
    // So does a head over 64 KiB (one over the loop's 16 KiB but under
    // 64 KiB is hyper's to answer, and is proxied).
    for (size, status) in [(40 * 1024, "200"), (100 * 1024, "431")] {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        let head = format!("GET /api/x HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\nConnection: close\r\nX-Big: {}\r\n\r\n", "a".repeat(size));
        let (mut reader, mut writer) = stream.split();
        let (_, answer) = tokio::join!(writer.write_all(head.as_bytes()), async {
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut answer)).await;
            answer
        });
        assert!(answer.starts_with(format!("HTTP/1.1 {status}").as_bytes()), "{size}: {}", String::from_utf8_lossy(&answer));
    }
    let security = admin.wait_for("/v1/audit/_system/security?event_type=request_blocked", "events", 6).await;
    assert_eq!(security[0]["details"]["rule_id"], "builtin:malformed-length", "{security:?}");
    let everything = admin.get("/v1/audit/_system/export/json?category=all").await.text;
    assert!(!everything.contains(&key), "a malformed request's key reached the trail");
    // A body framed two ways (how requests are smuggled past proxies) is
    // read by its chunks, as RFC 9112 §6.3 says, and the connection ends
    // after it: the bytes the length would have left are never a request.
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let smuggle = format!(
        "POST /api/upload HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /api/smuggled HTTP/1.1\r\nHost: gw\r\n\r\n"
    );
    stream.write_all(smuggle.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let answer = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!((answer.status, answer.json()["received_bytes"].as_u64()), (200, Some(3)));
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(buf.is_empty() && closes(&mut stream).await, "no second answer");
}

#[tokio::test]
async fn an_idle_connection_closes_at_shutdown_and_a_busy_one_gets_its_answer() {
    let (mut ts, addr, key) = setup().await;
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    let mut busy = TcpStream::connect(&addr).await.unwrap();
    let mut buf = Vec::new();
    idle.write_all(call("GET", "/api/a", &key, "").as_bytes()).await.unwrap();
    assert_eq!(read_answer(&mut idle, &mut buf, false).await.status, 200);
    busy.write_all(call("GET", "/api/slow?ms=400", &key, "").as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = tokio::spawn(async move {
        ts.stop().await;
        ts
    });
    let mut busy_buf = Vec::new();
    let answer = read_answer(&mut busy, &mut busy_buf, false).await;
    assert_eq!((answer.status, answer.body.as_slice()), (200, b"slow".as_slice()), "the call under way is answered");
    assert!(closes(&mut idle).await, "the idle connection is closed");
    let _ts = tokio::time::timeout(Duration::from_secs(10), stopping).await.expect("shutdown finishes").unwrap();
}

/// Starts a head that never ends on a new connection: its first part, then
/// a byte every 50 ms for up to 5 s, never the blank line that ends it.
/// Returns the head's first part and how long the connection took to close.
async fn slow_head(stream: TcpStream, key: &str) -> (String, Duration) {
    let started = std::time::Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    let head = format!("GET /api/x HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\nX-Slow: ");
    writer.write_all(head.as_bytes()).await.unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if writer.write_all(b"a").await.is_err() {
                break;
            }
        }
    });
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut rest)).await;
    let closed_after = started.elapsed();
    trickle.abort();
    assert!(read.is_ok(), "the slow head's connection was not closed");
    assert!(closed_after < Duration::from_secs(3), "the trickle kept the connection open for {closed_after:?}");
    (head, closed_after)
}

/// The trail holds the slow head and nothing else of the connections: a
/// refused request (408) and a security event, under the system tenant,
/// with the bytes received and without the key the head carried.
async fn only_the_slow_head_is_in_the_trail(ts: &TestServer, key: &str, head: &str) {
    let admin = ts.admin_client();
    let security = admin.wait_for("/v1/audit/_system/security?event_type=request_blocked", "events", 1).await;
    let logs = admin.wait_for("/v1/audit/_system?status_min=408&status_max=408", "logs", 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ts.flush().await;
    let security_now = admin.get("/v1/audit/_system/security?event_type=request_blocked").await.body["events"].as_array().unwrap().len();
    let logs_now = admin.get("/v1/audit/_system?status_min=400").await.body["logs"].as_array().unwrap().len();
    assert_eq!((security_now, logs_now), (1, 1), "the idle connections were recorded too");
    assert_eq!((security[0]["details"]["rule_id"].as_str(), security[0]["details"]["block_reason"].as_str()), (Some("builtin:slow-head"), Some("MALFORMED_REQUEST")), "{security:?}");
    assert_eq!(security[0]["actor"], "ip:127.0.0.1");
    let e = &logs[0];
    assert_eq!((e["status_code"].as_u64(), e["error_code"].as_str(), e["client_ip"].as_str()), (Some(408), Some("request_timeout"), Some("127.0.0.1")), "{e}");
    let received = e["request_size_bytes"].as_u64().unwrap() as usize;
    assert!(received > head.len() && received < head.len() + 100, "bytes received {received}, head {}", head.len());
    assert_eq!(security[0]["request_id"], e["request_id"]);
    let everything = admin.get("/v1/audit/_system/export/json?category=all").await.text;
    assert!(!everything.contains(key), "the slow head's key reached the trail");
}

/// Slowloris: a head that never ends, however steadily its bytes keep
/// coming, is cut off at the head timeout (which starts at the connection,
/// not at each byte) and recorded; a connection that sends nothing, and a
/// kept one idle after its call, are closed at the same time unrecorded.
#[tokio::test]
async fn a_slow_head_is_cut_off_at_the_head_timeout_and_recorded() {
    let (ts, addr, key) = setup_with_head_timeout(HEAD_TIMEOUT).await;

    let mut kept = TcpStream::connect(&addr).await.unwrap();
    kept.write_all(call("GET", "/api/x", &key, "").as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_answer(&mut kept, &mut buf, false).await.status, 200, "a prompt call is answered");
    let mut silent = TcpStream::connect(&addr).await.unwrap();

    let (head, closed_after) = slow_head(TcpStream::connect(&addr).await.unwrap(), &key).await;
    assert!(closed_after >= HEAD_TIMEOUT - Duration::from_millis(50), "closed before the timeout: {closed_after:?}");
    assert!(closes(&mut silent).await, "a connection that sends nothing is closed too");
    assert!(closes(&mut kept).await, "and so is a kept one that idles past the timeout");
    only_the_slow_head_is_in_the_trail(&ts, &key, &head).await;
}

/// The same after a call with a body, when hyper serves the connection and
/// its header-read timeout cuts the slow head off: recorded like the loop's,
/// while connections idle after their call — one whose body the gateway
/// refused among them — are closed unrecorded.
#[tokio::test]
async fn a_slow_head_after_a_body_is_recorded_when_hypers_timeout_closes_it() {
    let (ts, addr, key) = setup_with_head_timeout(HEAD_TIMEOUT).await;
    let body = "x".repeat(3000);
    let upload = |key: &str| call("POST", "/api/upload", key, &format!("Content-Length: {}\r\n", body.len())) + &body;
    let mut buf = Vec::new();
    let mut connect_and_upload = async |key: &str, expected: u16| {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream.write_all(upload(key).as_bytes()).await.unwrap();
        assert_eq!(read_answer(&mut stream, &mut buf, false).await.status, expected);
        buf.clear();
        stream
    };
    let mut idle = connect_and_upload(&key, 200).await;
    let slow = connect_and_upload(&key, 200).await;
    // Then a call refused with a large body, which the connection reads
    // past (no part of a next head) and keeps.
    let mut refused = connect_and_upload(&key, 200).await;
    let large = "y".repeat(12_000);
    let refused_upload = call("POST", "/api/upload", "kt_live_notarealkey", &format!("Content-Length: {}\r\n", large.len())) + &large;
    refused.write_all(refused_upload.as_bytes()).await.unwrap();
    assert_eq!(read_answer(&mut refused, &mut buf, false).await.status, 401);

    let (head, _) = slow_head(slow, &key).await;
    assert!(closes(&mut idle).await, "a connection idle after its call is closed");
    assert!(closes(&mut refused).await, "and one whose body was refused");
    only_the_slow_head_is_in_the_trail(&ts, &key, &head).await;
}

/// README: a bad `Content-Length` gets `400 invalid_parameter` and a head
/// over 64 KiB `431`, as JSON errors like every other refusal. A new
/// connection's first such request went to hyper, which answered with an
/// empty body: no error code for the caller to read, only the trail knew.
#[tokio::test]
async fn a_broken_length_and_an_oversized_head_get_the_gateways_json_error() {
    let (ts, addr, key) = setup().await;
    let big = format!("GET /api/x HTTP/1.1\r\nX-API-Key: {key}\r\nX-Big: {}\r\n\r\n", "a".repeat(100 * 1024));
    let cases = [
        (call("GET", "/api/x", &key, "Content-Length: abc\r\n"), 400),
        (call("POST", "/api/upload", &key, "Content-Length: 5\r\nContent-Length: 6\r\n"), 400),
        (call("POST", "/api/upload", &key, "Content-Length: 5, 5\r\n"), 400),
        (call("POST", "/api/upload", &key, "Content-Length: 99999999999999999999\r\n"), 400),
        (format!("POST /api/upload HTTP/1.0\r\nX-API-Key: {key}\r\nContent-Length: -1\r\n\r\n"), 400),
        (big, 431),
    ];
    for (bad, status) in &cases {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        let (mut reader, mut writer) = stream.split();
        let (_, answer) = tokio::join!(writer.write_all(bad.as_bytes()), async {
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut buf)).await;
            buf
        });
        let text = String::from_utf8_lossy(&answer).into_owned();
        let shown = &bad[..bad.len().min(120)];
        assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{shown:?}: {text}");
        let body = &text[text.find("\r\n\r\n").map_or(text.len(), |at| at + 4)..];
        let json: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{shown:?}: not JSON: {text}"));
        assert_eq!(json["error"]["code"], "invalid_parameter", "{shown:?}: {text}");
        assert!(!text.contains(&key));
    }
    // Each is in the trail, as before.
    let admin = ts.admin_client();
    let security = admin.wait_for("/v1/audit/_system/security?event_type=request_blocked", "events", cases.len()).await;
    let mut rules: Vec<&str> = security.iter().map(|e| e["details"]["rule_id"].as_str().unwrap()).collect();
    rules.sort();
    assert_eq!(rules, ["builtin:malformed-http"; 5].into_iter().chain(["builtin:malformed-length"]).collect::<Vec<_>>());
    // A body framed by its chunks and a length is not refused (hyper reads it by its chunks).
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let both = call("POST", "/api/upload", &key, "Transfer-Encoding: chunked\r\nContent-Length: abc\r\nConnection: close\r\n");
    stream.write_all(format!("{both}3\r\nabc\r\n0\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let answer = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
}

/// A refusal of a head the gateway cannot read is in the trail under a
/// request id, like every call; its answer now says which (`X-Request-Id`,
/// as every other gateway answer does), so the caller's 400 or 431 can be
/// found with the audit API's `request_id` filter. It carried none: the
/// refusal's event could not be told from another caller's.
#[tokio::test]
async fn a_refused_head_answers_with_the_request_id_of_its_event() {
    let (ts, addr, key) = setup().await;
    let many: String = (0..150).map(|i| format!("X-Many-{i}: {i}\r\n")).collect();
    let heads = [
        (call("GET", "/api/<x>", &key, ""), 400),
        ("GET /api/x HTTP/1.1\r\nBad Header: 1\r\n\r\n".to_string(), 400),
        (format!("GET /api/x HTTP/1.1\r\n{many}\r\n"), 431),
    ];
    let admin = ts.admin_client();
    for (head, status) in &heads {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let answer = read_answer(&mut stream, &mut buf, false).await;
        assert_eq!(answer.status, *status, "{head:?}");
        let id = answer.header("x-request-id").unwrap_or_else(|| panic!("{head:?}: no X-Request-Id in {:?}", answer.headers)).to_string();
        let logs = admin.wait_for(&format!("/v1/audit/_system?request_id={id}"), "logs", 1).await;
        assert_eq!((logs.len(), logs[0]["status_code"].as_u64()), (1, Some(*status as u64)), "{logs:?}");
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request without a `Host`, or any request
/// with two, is refused with 400 — what nginx does. The gateway proxied
/// both, forwarding the caller's `Host` lines as they were: an upstream
/// that reads the first of two and a cache or log beside it that reads the
/// last see different hosts for one request. On both paths (the loop's
/// own and hyper's, taken by a call with a body); HTTP/1.0 needs none.
#[tokio::test]
async fn a_missing_or_repeated_host_is_refused() {
    let (ts, addr, key) = setup().await;
    let bad = [
        format!("GET /api/x HTTP/1.1\r\nX-API-Key: {key}\r\n\r\n"),
        format!("GET /api/x HTTP/1.1\r\nHost: a\r\nX-API-Key: {key}\r\nHost: b\r\n\r\n"),
        format!("POST /api/upload HTTP/1.1\r\nX-API-Key: {key}\r\nContent-Length: 3\r\n\r\nabc"),
        format!("POST /api/upload HTTP/1.1\r\nHost: a\r\nHost: a\r\nX-API-Key: {key}\r\nContent-Length: 3\r\n\r\nabc"),
        format!("GET /api/x HTTP/1.0\r\nHost: a\r\nHost: b\r\nX-API-Key: {key}\r\n\r\n"),
    ];
    for request in &bad {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let answer = read_answer(&mut stream, &mut buf, false).await;
        assert_eq!(answer.status, 400, "{request:?}: {}", String::from_utf8_lossy(&answer.body));
        let json: Value = serde_json::from_slice(&answer.body).unwrap_or_else(|_| panic!("{request:?}: not JSON"));
        assert_eq!(json["error"]["code"], "invalid_parameter", "{request:?}");
        assert!(json["error"]["message"].as_str().unwrap().contains("Host"), "{json}");
        assert!(answer.header("x-request-id").is_some());
        assert!(!String::from_utf8_lossy(&answer.body).contains(&key));
        // The refusal says it closes the connection, and does, as the
        // loop's refusals of an unreadable head do.
        assert_eq!(answer.header("connection"), Some("close"), "{request:?}: {:?}", answer.headers);
        let mut rest = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut rest)).await;
        assert!(matches!(read, Ok(Ok(0))), "{request:?}: the connection stayed open after the refusal: {read:?}");
    }
    // HTTP/1.0 without a Host, and HTTP/1.1 with one, go through.
    for request in [format!("GET /api/x HTTP/1.0\r\nX-API-Key: {key}\r\n\r\n"), call("GET", "/api/x", &key, "")] {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        assert_eq!(read_answer(&mut stream, &mut buf, false).await.status, 200, "{request:?}");
    }
    // Each refusal is a failed call in the trail, before routing (as a
    // malformed head is): under `_system`.
    let admin = ts.admin_client();
    let refused = admin.wait_for("/v1/audit/_system?status_min=400&status_max=400", "logs", bad.len()).await;
    assert!(refused.iter().all(|e| e["error_code"] == "invalid_parameter" && e["outcome"] == "failure"), "{refused:?}");
}
