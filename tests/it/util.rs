//! Test helpers: a real keytrail on 127.0.0.1:0 (in-process or as the real
//! binary), a real upstream server, and an admin client.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use keytrail::config::{Config, FileConfig, Overrides};
use keytrail::server::{self, Server};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(60)).build().unwrap()
}

// --- the upstream ---

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(text: impl Into<Bytes>) -> UpBody {
    Full::new(text.into()).boxed()
}

/// A real HTTP upstream. Behaviour by the last path segment:
/// - `…/download?bytes=N`: streams N bytes in 64 KiB chunks;
/// - `…/chunked?n=N`: streams N pieces of `piece\n` with no length (chunked);
/// - `…/upload`: reads the body as a stream and answers its length;
/// - `…/slow?ms=N`: waits N ms, then answers;
/// - `…/status/NNN`: answers with that status;
/// - `…/fixed`: answers `ok` without echoing anything;
/// - anything else: echoes method, path, query and headers as JSON.
pub async fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), hyper::service::service_fn(upstream))
                    .await;
            });
        }
    });
    addr
}

fn query_number(req: &Request<Incoming>, name: &str) -> u64 {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

async fn upstream(req: Request<Incoming>) -> Result<Response<UpBody>, Infallible> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.last().copied().unwrap_or("");
    if last == "download" {
        let total = query_number(&req, "bytes");
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures_util::stream::unfold(total, move |left| {
            let chunk = chunk.clone();
            async move {
                if left == 0 {
                    return None;
                }
                let n = left.min(chunk.len() as u64);
                Some((Ok::<_, Infallible>(Frame::data(chunk.slice(..n as usize))), left - n))
            }
        });
        let mut res = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        res.headers_mut().insert("content-length", total.into());
        return Ok(res);
    }
    if last == "chunked" {
        let pieces = (0..query_number(&req, "n")).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"piece\n"))));
        return Ok(Response::new(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(pieces)))));
    }
    if last == "upload" {
        let mut body = req.into_body();
        let mut n = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            n += frame.data_ref().map_or(0, |d| d.len() as u64);
        }
        return Ok(Response::new(full(json!({"received_bytes": n}).to_string())));
    }
    if last == "slow" {
        tokio::time::sleep(Duration::from_millis(query_number(&req, "ms"))).await;
        return Ok(Response::new(full("slow")));
    }
    if segments.len() >= 2 && segments[segments.len() - 2] == "status" {
        let status = last.parse().unwrap_or(500);
        let mut res = Response::new(full(format!("status {status}")));
        *res.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
        return Ok(res);
    }
    if last == "fixed" {
        return Ok(Response::new(full("ok")));
    }
    let headers: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), json!(String::from_utf8_lossy(v.as_bytes()))))
        .collect();
    let answer = json!({
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "headers": headers,
    });
    Ok(Response::new(full(answer.to_string())))
}

/// Streams `chunks` chunks of `chunk_size` bytes to `url` with `key`; returns
/// the status and the upstream's count of bytes received.
pub async fn upload(client: &reqwest::Client, url: &str, key: &str, chunk_size: usize, chunks: u64) -> (u16, Value) {
    let chunk = Bytes::from(vec![b'u'; chunk_size]);
    let stream = futures_util::stream::iter((0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let res = client.post(url).header("X-API-Key", key).body(reqwest::Body::wrap_stream(stream)).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json::<Value>().await.unwrap_or(Value::Null)["received_bytes"].clone())
}

/// An address where nothing listens (bound, then released).
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Sends `bytes` to the gateway on a new connection and reads until it
/// closes the connection (or 5 s pass).
pub async fn exchange(ts: &TestServer, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(ts.gateway.trim_start_matches("http://")).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// For scripted upstreams: reads into `buf` until it holds a whole request
/// head; `false` when the connection ended (or failed) first.
pub async fn read_head(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> bool {
    use tokio::io::AsyncReadExt;
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

/// A stand-in for what may answer at an admin URL (a proxy's error page, a
/// service that echoes the request): every request head gets
/// `answer(head)`, a whole HTTP response, and the connection is closed.
/// Its base URL.
pub async fn canned_server(answer: fn(&str) -> String) -> String {
    use tokio::io::AsyncWriteExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut head = Vec::new();
                if read_head(&mut stream, &mut head).await {
                    let _ = stream.write_all(answer(&String::from_utf8_lossy(&head)).as_bytes()).await;
                }
            });
        }
    });
    url
}

// --- keytrail, in-process ---

pub struct TestServer {
    pub server: Option<Server>,
    pub gateway: String,
    pub admin: String,
    pub client: reqwest::Client,
    pub data_dir: PathBuf,
    _dir: tempfile::TempDir,
}

pub fn test_config(dir: &Path) -> Config {
    let mut file = FileConfig::default();
    file.audit.flush_interval_ms = Some(20);
    keytrail::config::resolve(
        file,
        Overrides {
            data_dir: Some(dir.to_path_buf()),
            gateway_listen: Some("127.0.0.1:0".parse().unwrap()),
            admin_listen: Some("127.0.0.1:0".parse().unwrap()),
            log_level: None,
            bootstrap_token: Some(ADMIN_TOKEN.into()),
        },
    )
    .unwrap()
}

impl TestServer {
    pub async fn start() -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        Self::start_with(dir, |_| {}).await
    }

    pub async fn start_with(dir: tempfile::TempDir, adjust: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = test_config(dir.path());
        adjust(&mut config);
        let server = server::start(config).await.unwrap();
        TestServer {
            gateway: format!("http://{}", server.gateway_addr),
            admin: format!("http://{}", server.admin_addr),
            data_dir: dir.path().to_path_buf(),
            server: Some(server),
            client: http(),
            _dir: dir,
        }
    }

    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    /// Waits until every event recorded so far is committed.
    pub async fn flush(&self) {
        self.server.as_ref().unwrap().audit.flush().await;
    }

    pub fn admin_client(&self) -> Admin {
        Admin { base: self.admin.clone(), token: ADMIN_TOKEN.to_string(), client: self.client.clone() }
    }

    pub fn audit_dir(&self) -> PathBuf {
        self.data_dir.join("audit")
    }
}

// --- the admin API ---

#[derive(Clone)]
pub struct Admin {
    pub base: String,
    pub token: String,
    pub client: reqwest::Client,
}

pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub text: String,
    /// Response headers, names in lower case.
    pub headers: std::collections::HashMap<String, String>,
}

impl Admin {
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        let url = format!("{}{}", self.base, path);
        let mut req = self.client.request(method.parse().unwrap(), url).bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let headers =
            res.headers().iter().map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())).collect();
        let text = res.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer { status, body, text, headers }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.call("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.call("POST", path, Some(body)).await
    }

    /// Makes an admin with a token (`role`, bound to `tenant` or global)
    /// and returns a client that calls as it.
    pub async fn new_admin(&self, name: &str, role: &str, tenant: Option<&str>) -> Admin {
        let a = self.post("/v1/admins", json!({"name": name, "role": role, "tenant_id": tenant})).await;
        assert_eq!(a.status, 201, "{}", a.text);
        Admin { token: a.body["token"].as_str().unwrap().to_string(), ..self.clone() }
    }

    /// Creates a tenant, an api at `prefix` to `upstream`, a consumer and a
    /// key; returns (consumer id, key id, key).
    pub async fn setup(&self, tenant: &str, prefix: &str, upstream: &str) -> (String, String, String) {
        let a = self.post("/v1/tenants", json!({"id": tenant, "name": tenant})).await;
        assert_eq!(a.status, 201, "{}", a.text);
        let api_id = prefix.trim_matches('/').replace('/', "-");
        let a = self
            .post(&format!("/v1/tenants/{tenant}/apis"), json!({"id": api_id, "path_prefix": prefix, "upstream": upstream}))
            .await;
        assert_eq!(a.status, 201, "{}", a.text);
        let (consumer, key_id, key) = self.consumer_with_key(tenant, &format!("{tenant}-client"), json!({})).await;
        (consumer, key_id, key)
    }

    pub async fn consumer_with_key(&self, tenant: &str, name: &str, key_body: Value) -> (String, String, String) {
        let a = self.post(&format!("/v1/tenants/{tenant}/consumers"), json!({"name": name})).await;
        assert_eq!(a.status, 201, "{}", a.text);
        let consumer = a.body["id"].as_str().unwrap().to_string();
        let (key_id, key) = self.key(tenant, &consumer, key_body).await;
        (consumer, key_id, key)
    }

    pub async fn key(&self, tenant: &str, consumer: &str, body: Value) -> (String, String) {
        let a = self.post(&format!("/v1/tenants/{tenant}/consumers/{consumer}/keys"), body).await;
        assert_eq!(a.status, 201, "{}", a.text);
        (a.body["key_id"].as_str().unwrap().to_string(), a.body["key"].as_str().unwrap().to_string())
    }

    /// Every entry of an audit list (`path` with its query, e.g.
    /// `/v1/audit/acme?limit=4`), following `next_cursor` page by page.
    pub async fn all_logs(&self, path: &str) -> Vec<Value> {
        let mut logs = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = match &cursor {
                Some(c) => self.get(&format!("{path}&cursor={c}")).await,
                None => self.get(path).await,
            };
            assert_eq!(page.status, 200, "{}", page.text);
            logs.extend(page.body["logs"].as_array().unwrap().iter().cloned());
            match page.body["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => return logs,
            }
        }
    }

    /// Polls the audit API until `path` answers a list (under `field`) with at
    /// least `n` entries, or fails after five seconds.
    pub async fn wait_for(&self, path: &str, field: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let a = self.get(path).await;
            assert_eq!(a.status, 200, "{}", a.text);
            let items = a.body[field].as_array().cloned().unwrap_or_default();
            if items.len() >= n {
                return items;
            }
            assert!(Instant::now() < deadline, "waited 5 s for {n} {field} at {path}; have {}: {}", items.len(), a.text);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// --- keytrail, as the real binary ---

/// The real `keytrail` binary, its output captured to files.
pub struct Process {
    pub child: std::process::Child,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_keytrail")
}

/// Runs the binary with `args`, its stdout a pipe closed before it writes
/// (as `| head` closes it), and returns what it did.
pub fn run_into_closed_pipe(args: &[&str]) -> std::process::Output {
    let mut child = std::process::Command::new(binary())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

impl Process {
    pub fn spawn(args: &[&str], envs: &[(&str, &str)], cwd: &Path, out_dir: &Path) -> Process {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stdout_path = out_dir.join(format!("keytrail-{n}.stdout"));
        let stderr_path = out_dir.join(format!("keytrail-{n}.stderr"));
        let mut cmd = std::process::Command::new(binary());
        cmd.args(args)
            .current_dir(cwd)
            .env_remove("KEYTRAIL_BOOTSTRAP_TOKEN")
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).unwrap())
            .stderr(std::fs::File::create(&stderr_path).unwrap());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Process { child: cmd.spawn().unwrap(), stdout_path, stderr_path }
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits until stdout holds `needle`; fails with the output if the
    /// process exits or ten seconds pass.
    pub fn wait_for_stdout(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.stdout();
            if out.contains(needle) {
                return out;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("keytrail exited ({status}) before printing {needle:?}\nstdout:\n{out}\nstderr:\n{}", self.stderr());
            }
            assert!(Instant::now() < deadline, "no {needle:?} after 10 s\nstdout:\n{out}\nstderr:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address printed after `label` (e.g. "gateway listening on http://").
    pub fn address_after(&mut self, label: &str) -> String {
        let out = self.wait_for_stdout(label);
        let rest = &out[out.find(label).unwrap() + label.len()..];
        rest.split_whitespace().next().unwrap().to_string()
    }

    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Sends SIGINT and waits (at most ten seconds) for a clean exit.
    pub fn interrupt_and_wait(&mut self) -> std::process::ExitStatus {
        self.signal("-INT");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "keytrail did not stop within 10 s of SIGINT");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Peak resident memory of the process in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `keytrail serve` on free ports with the test admin token.
/// Runs the binary to its end without blocking the runtime (an in-process
/// server may be answering it); (success, stdout, stderr).
pub async fn run_cli(args: &[&str], envs: &[(&str, &str)]) -> (bool, String, String) {
    let out = tempfile::tempdir().unwrap();
    let mut p = Process::spawn(args, envs, out.path(), out.path());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            return (status.success(), p.stdout(), p.stderr());
        }
        assert!(Instant::now() < deadline, "keytrail {args:?} did not finish in 60 s\n{}\n{}", p.stdout(), p.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn spawn_serve(data_dir: &Path, out_dir: &Path, extra_env: &[(&str, &str)]) -> (Process, Admin, String) {
    let data = data_dir.to_str().unwrap();
    let mut envs = vec![("KEYTRAIL_BOOTSTRAP_TOKEN", ADMIN_TOKEN)];
    envs.extend_from_slice(extra_env);
    let mut process = Process::spawn(
        &["serve", "--data-dir", data, "--gateway-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
        &envs,
        out_dir,
        out_dir,
    );
    let gateway = process.address_after("gateway listening on ");
    let admin = process.address_after("admin API listening on ");
    (process, Admin { base: admin, token: ADMIN_TOKEN.into(), client: http() }, gateway)
}

// --- searching every output for secrets ---

/// A key of every kind a leak test sends: valid (first), revoked, rotating
/// (in its grace), its replacement, unknown, and one with a broken checksum.
pub async fn keys_of_every_kind(admin: &Admin, consumer: &str, valid: &str) -> Vec<String> {
    let (revoked_id, revoked) = admin.key("acme", consumer, json!({})).await;
    assert_eq!(admin.post(&format!("/v1/keys/{revoked_id}/revoke"), json!({})).await.status, 200);
    let (rotating_id, rotating) = admin.key("acme", consumer, json!({})).await;
    let rotated = admin.post(&format!("/v1/keys/{rotating_id}/rotate"), json!({"grace_seconds": 3600})).await;
    assert_eq!(rotated.status, 201, "{}", rotated.text);
    let replacement = rotated.body["key"].as_str().unwrap().to_string();
    let unknown = keytrail::keys::generate_key(keytrail::keys::KeyEnvironment::Live).secret;
    let mut malformed = valid.as_bytes().to_vec();
    malformed[20] = if malformed[20] == b'Z' { b'Y' } else { b'Z' };
    let malformed = String::from_utf8(malformed).unwrap();
    vec![valid.to_string(), revoked, rotating, replacement, unknown, malformed]
}

/// Everything a stopped keytrail process wrote or answered: its output, the
/// answers collected, every file of its data directory, and every stored
/// event decoded (blocks are compressed, so the files alone hide them).
pub fn everything_written(p: &Process, data: &Path, answers: Vec<String>) -> Vec<(String, Vec<u8>)> {
    let mut outputs: Vec<(String, Vec<u8>)> = vec![("stdout".into(), p.stdout().into_bytes()), ("stderr".into(), p.stderr().into_bytes())];
    outputs.extend(answers.into_iter().enumerate().map(|(i, a)| (format!("answer {i}"), a.into_bytes())));
    let mut stack = vec![data.to_path_buf()];
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
    assert!(outputs.iter().any(|(name, _)| name.ends_with(".db") && name.contains("/audit/")));
    let reader = keytrail::store::audit::AuditReader::open(&data.join("audit")).unwrap();
    for tenant in reader.tenants().unwrap() {
        let events: Vec<String> = reader.chain(&tenant).unwrap().iter().map(|s| format!("{:?}", s.event)).collect();
        assert!(!events.is_empty());
        outputs.push((format!("decoded events of {tenant}"), events.join("\n").into_bytes()));
    }
    outputs
}

/// Fails if any secret appears, byte for byte, in any output.
pub fn assert_no_secret(secrets: &[&String], outputs: &[(String, Vec<u8>)]) {
    for secret in secrets {
        for (name, bytes) in outputs {
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "a raw secret was found in {name}");
        }
    }
}
