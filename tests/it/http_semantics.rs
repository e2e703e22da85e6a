//! HTTP semantics of the proxy path: transfer codings a caller's body
//! keeps, an upstream closing a kept connection as a call goes out, stalled
//! bodies, half-closed callers and requests the gateway cannot proxy.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::{exchange, TestServer};

/// An upstream that keeps the bytes of each request it reads (the head,
/// and a chunked body to its last chunk) and answers each with `ok`.
async fn chunk_recording_upstream() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let whole = |buf: &[u8]| {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
                    !String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase().contains("transfer-encoding") || buf.ends_with(b"0\r\n\r\n")
                };
                while !whole(&buf) {
                    let mut chunk = [0u8; 4096];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                seen.lock().unwrap().push(String::from_utf8_lossy(&buf).into_owned());
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
            });
        }
    });
    (addr, requests)
}

/// A body sent `Transfer-Encoding: gzip, chunked` is still gzip once its
/// chunks are read: the upstream is told so, rather than handed the
/// compressed bytes as the content itself.
#[tokio::test]
async fn a_bodys_transfer_codings_reach_the_upstream() {
    let ts = TestServer::start().await;
    let (up, requests) = chunk_recording_upstream().await;
    let (_, _, key) = ts.admin_client().setup("acme", "/api", &format!("http://{up}")).await;
    for (sent, forwarded) in [("gzip, chunked", "gzip, chunked"), ("gzip\r\nTransfer-Encoding: chunked", "gzip, chunked"), ("chunked", "chunked")] {
        requests.lock().unwrap().clear();
        let call = format!(
            "POST /api/upload HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\nTransfer-Encoding: {sent}\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        );
        let answer = exchange(&ts, call.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"), "{sent}: {answer}");
        let request = requests.lock().unwrap().first().cloned().expect("the upstream got the call");
        let codings: Vec<&str> = request.lines().filter_map(|l| l.strip_prefix("transfer-encoding: ")).collect();
        assert_eq!(codings, [forwarded], "{sent}: {request}");
    }
}

/// An upstream that closes a kept connection just as the next call goes
/// out on it (its keep-alive timeout crossing the call) answered nothing:
/// a call without a body that is idempotent is sent once more on a new
/// connection rather than failed; any other call is never sent twice.
#[tokio::test]
async fn a_kept_connection_closed_under_a_call_is_retried_only_when_safe() {
    let ts = TestServer::start().await;
    let calls: Arc<Mutex<Vec<usize>>> = Arc::default();
    let seen = calls.clone();
    // The second and fourth requests read are met with a close, no answer.
    let (up, connections) = crate::gateway::raw_upstream(move |n| {
        seen.lock().unwrap().push(n);
        match n {
            1 | 3 => (vec![], true),
            _ => (vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".as_slice()], false),
        }
    })
    .await;
    let (_, _, key) = ts.admin_client().setup("acme", "/api", &format!("http://{up}")).await;
    let mut stream = TcpStream::connect(ts.gateway.trim_start_matches("http://")).await.unwrap();
    let mut answer = async |request: String| {
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut out = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut out)).await.expect("an answer").unwrap();
        String::from_utf8_lossy(&out[..n]).into_owned()
    };
    let get = format!("GET /api/x HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\n\r\n");
    for _ in 0..2 {
        let got = answer(get.clone()).await;
        assert!(got.starts_with("HTTP/1.1 200") && got.ends_with("ok"), "{got}");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 2, "the GET went once more on a new connection");
    // A POST on the kept connection, closed the same way: 502, sent once.
    let post = format!("POST /api/x HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\nContent-Length: 2\r\n\r\nhi");
    let got = answer(post).await;
    assert!(got.starts_with("HTTP/1.1 502"), "{got}");
    assert_eq!(*calls.lock().unwrap(), [0, 1, 2, 3], "the POST was sent twice");
}

/// `CONNECT` asks for a tunnel, which the gateway does not open: it is
/// refused (405) and never reaches the upstream. Proxied, an upstream's 2xx
/// made hyper take the connection for a tunnel: the caller got no answer
/// at all, the calls behind it were lost, and the trail said the caller had
/// gone away.
#[tokio::test]
async fn connect_is_refused_not_proxied() {
    let ts = TestServer::start().await;
    let requests: Arc<Mutex<Vec<usize>>> = Arc::default();
    let seen = requests.clone();
    let (up, _) = crate::gateway::raw_upstream(move |n| {
        seen.lock().unwrap().push(n);
        (vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".as_slice()], false)
    })
    .await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/api", &format!("http://{up}")).await;
    let next = format!("GET /api/next HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n");
    let answer = exchange(&ts, format!("CONNECT /api/tunnel HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\n\r\n{next}").as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("\r\nallow: "), "{answer}");
    assert!(answer.contains("method_not_allowed"), "{answer}");
    assert!(answer.ends_with("ok") && answer.matches("HTTP/1.1 ").count() == 2, "the call behind it is answered: {answer}");
    assert_eq!(requests.lock().unwrap().len(), 1, "only the GET reached the upstream");
    let logs = admin.wait_for("/v1/audit/acme", "logs", 2).await;
    assert_eq!((logs[1]["method"].as_str(), logs[1]["status_code"].as_u64(), logs[1]["error_code"].as_str()), (Some("CONNECT"), Some(405), Some("method_not_allowed")));
}

/// When an api's timeout passes with a request body still unfinished, the
/// side that stalled is blamed: a caller whose chunked body stopped coming
/// gets 408 `request_timeout` (as one that stops short of its
/// `Content-Length` does), and an upstream that stopped reading the body,
/// without answering, is the upstream's 504 `upstream_timeout`.
#[tokio::test]
async fn a_stalled_body_is_blamed_on_the_side_that_stalled() {
    let ts = TestServer::start().await;
    let admin = ts.admin_client();
    let up = crate::util::start_upstream().await;
    // An upstream that reads a head and then nothing more, and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let deaf = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut chunk = [0u8; 1024];
                let _ = stream.read(&mut chunk).await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    let (_, _, key) = admin.setup("acme", "/api", &format!("http://{up}")).await;
    for (id, upstream) in [("slow", up), ("deaf", deaf)] {
        let api = admin
            .post("/v1/tenants/acme/apis", serde_json::json!({"id": id, "path_prefix": format!("/{id}"), "upstream": format!("http://{upstream}"), "timeout_ms": 300}))
            .await;
        assert_eq!(api.status, 201, "{}", api.text);
    }
    let addr = ts.gateway.trim_start_matches("http://").to_string();

    // Half a chunked body, then nothing.
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let head = format!("POST /slow/upload HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    let stalled = String::from_utf8_lossy(&out).into_owned();
    assert!(stalled.starts_with("HTTP/1.1 408") && stalled.contains("request_timeout"), "{stalled}");

    // A body larger than the sockets between hold, to an upstream that reads none of it.
    let stream = TcpStream::connect(&addr).await.unwrap();
    let size = 256usize << 20;
    let head = format!("POST /deaf/upload HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\nContent-Length: {size}\r\n\r\n");
    let (mut reader, mut writer) = stream.into_split();
    let sending = tokio::spawn(async move {
        let _ = writer.write_all(head.as_bytes()).await;
        let piece = vec![b'x'; 1 << 20];
        for _ in 0..size >> 20 {
            if writer.write_all(&piece).await.is_err() {
                return;
            }
        }
    });
    let mut out = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), reader.read(&mut out)).await.expect("an answer").unwrap();
    sending.abort();
    let deafened = String::from_utf8_lossy(&out[..n]).into_owned();
    assert!(deafened.starts_with("HTTP/1.1 504") && deafened.contains("upstream_timeout"), "{deafened}");
}

/// A caller may send its request and close its side of the connection
/// (a TCP half-close) while it waits for the answer: it is answered, on a
/// connection hyper serves (a call with a body, HTTP/1.0) as on the
/// gateway's own loop, and the trail records the answer it got. hyper
/// took the half-close for the caller going away: the upstream was called,
/// the caller got nothing.
#[tokio::test]
async fn a_half_closed_caller_is_answered_on_both_paths() {
    let ts = TestServer::start().await;
    let up = crate::util::start_upstream().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/api", &format!("http://{up}")).await;
    let calls = [
        format!("GET /api/slow?ms=200 HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\n\r\n"),
        format!("POST /api/slow?ms=200 HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\nContent-Length: 2\r\n\r\nhi"),
        format!("GET /api/slow?ms=200 HTTP/1.0\r\nHost: gw\r\nX-API-Key: {key}\r\n\r\n"),
    ];
    for call in &calls {
        let mut stream = TcpStream::connect(ts.gateway.trim_start_matches("http://")).await.unwrap();
        stream.write_all(call.as_bytes()).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
        let answer = String::from_utf8_lossy(&out).into_owned();
        assert!(answer.contains(" 200 OK\r\n") && answer.ends_with("slow"), "{call:?}: {answer}");
    }
    let logs = admin.wait_for("/v1/audit/acme", "logs", calls.len()).await;
    assert!(logs.iter().all(|l| l["outcome"] == "success"), "{logs:?}");
}
