//! A small HTTP/1.1 client for the admin API, on hyper's client
//! connection and the runtime the binary already runs: one connection per
//! call (the commands make a handful), `http://` only (the admin API serves
//! plain HTTP; put TLS in front with a tunnel or a proxy), JSON answers.
//!
//! The token comes from `KEYTRAIL_TOKEN` and is sent in the
//! `Authorization` header only: it is never taken from a flag (which `ps`
//! shows) and never part of an error message.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// The variable the admin token is read from.
pub const TOKEN_VAR: &str = "KEYTRAIL_TOKEN";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Aggregates over long windows read many events: allow them time.
const CALL_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest answer read.
const MAX_BODY: usize = 256 * 1024 * 1024;

/// A refusal by the admin API: its status and error code, for commands
/// that tell one apart (`keytrail investigate` and `consumer_not_found`).
/// Shown as the method, target, status, code, the API's message and a hint.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    /// The API's `error.code` (empty when the answer had none).
    pub code: String,
    text: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for Refusal {}

/// Where the admin API is and who calls it.
pub struct AdminClient {
    /// `host:port`, as connected to and sent in `Host`.
    authority: String,
    /// A path the API is mounted under (behind a proxy), without the trailing `/`.
    base_path: String,
    /// The URL as given, for messages.
    url: String,
    token: String,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient").field("url", &self.url).field("token", &"****").finish()
    }
}

/// Percent-encodes a query value (everything but unreserved characters).
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `path?k=v&…` with the values encoded.
pub fn with_query(path: &str, params: &[(&str, String)]) -> String {
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

/// The admin API's URL (`--admin-url` or `KEYTRAIL_ADMIN_URL`) as the
/// `host:port` to connect to and the path the API is mounted under; the
/// error says what is wrong with it, without repeating the URL (the
/// caller names it, and where it came from).
pub fn parse_admin_url(url: &str) -> Result<(String, String), String> {
    if url.contains('@') {
        return Err(format!("must not hold credentials; the token goes in {TOKEN_VAR}"));
    }
    // Each command builds its own query: one here would be dropped unseen.
    if url.contains(['?', '#']) {
        return Err("must not hold a query or fragment: give the address alone, e.g. http://127.0.0.1:9080 (tenants and filters have flags of their own)".into());
    }
    let uri: Uri = url.trim().parse().map_err(|e| format!("is not a URL such as http://127.0.0.1:9080 ({e})"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err("https is not supported by this client; the admin API serves plain HTTP (reach it through a tunnel or a local proxy)".into()),
        _ => return Err("must start with http://, e.g. http://127.0.0.1:9080".into()),
    }
    let authority = uri.authority().ok_or("has no host (give it as http://HOST:PORT)")?;
    // `host:` parses, with no port: it was connected to as `host::80`.
    if authority.port_u16().is_none() && authority.as_str().ends_with(':') {
        return Err("has a `:` but no port after it (give it as http://HOST:PORT, or http://HOST for port 80)".into());
    }
    // `host:99999` parses, its port no u16: it was looked up as the host
    // name `host:99999`. Port 0 is no port a server listens on.
    if let Some(port) = authority.as_str().strip_prefix(authority.host()).and_then(|rest| rest.strip_prefix(':')) {
        if !port.is_empty() && !matches!(port.parse::<u16>(), Ok(1..)) {
            return Err(format!("has the port `{port}`, which is no port: give one from 1 to 65535 (http://HOST:PORT)"));
        }
    }
    let authority = match authority.port_u16() {
        Some(_) => authority.as_str().to_string(),
        None => format!("{}:80", authority.as_str()),
    };
    Ok((authority, uri.path().trim_end_matches('/').to_string()))
}

impl AdminClient {
    /// A client for `url` with the token from [`TOKEN_VAR`].
    pub fn from_env(url: &str) -> anyhow::Result<AdminClient> {
        // Bytes that are no UTF-8 are no token either, but the variable is set.
        if let Err(std::env::VarError::NotUnicode(_)) = std::env::var(TOKEN_VAR) {
            bail!("{TOKEN_VAR} is not text (it holds bytes that are no UTF-8): export the token alone, e.g. {TOKEN_VAR}=$(cat keytrail-data/bootstrap-admin-token)");
        }
        let token = std::env::var(TOKEN_VAR).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
        let Some(token) = token else {
            bail!("{TOKEN_VAR} is not set: export an admin token (or a session token from POST /v1/auth/login) in {TOKEN_VAR}; it is read from the environment only, never from a flag");
        };
        // No header carries one (hyper said only "failed to parse header value").
        if token.chars().any(char::is_control) {
            bail!("{TOKEN_VAR} holds a line break or another control character, which no header can carry: export the token alone, e.g. {TOKEN_VAR}=$(cat keytrail-data/bootstrap-admin-token)");
        }
        AdminClient::new(url, token)
    }

    pub fn new(url: &str, token: String) -> anyhow::Result<AdminClient> {
        let (authority, base_path) = match parse_admin_url(url) {
            Ok(parts) => parts,
            // Not shown: it holds a password.
            Err(why) if url.contains('@') => bail!("the admin API's URL (--admin-url or KEYTRAIL_ADMIN_URL) {why}"),
            Err(why) => bail!("--admin-url `{url}`: {why}"),
        };
        // An operator-chosen token has no `kta_` shape the redaction knows:
        // every message this process prints is masked for it too.
        crate::redact::register_secret(&token);
        Ok(AdminClient { authority, base_path, url: url.trim().trim_end_matches('/').to_string(), token })
    }

    /// `GET path_and_query` → the JSON answer; any status but 2xx is an
    /// error carrying the API's own message (a [`Refusal`]).
    pub async fn get(&self, path_and_query: &str) -> anyhow::Result<Value> {
        self.send(Method::GET, path_and_query, None, CALL_TIMEOUT).await
    }

    /// `answer[field]`, which an answer of the admin API holds: another
    /// service's JSON (a wrong `--admin-url`) is an error, not an empty list.
    pub fn field<'a>(&self, answer: &'a Value, field: &str) -> anyhow::Result<&'a Value> {
        answer.get(field).with_context(|| format!("the answer holds no `{field}` (is {} keytrail's admin API?)", self.url))
    }

    /// `answer[field]` as the list it is in an answer of the admin API (see [`Self::field`]).
    pub fn list<'a>(&self, answer: &'a Value, field: &str) -> anyhow::Result<&'a [Value]> {
        self.field(answer, field)?.as_array().map(Vec::as_slice).with_context(|| format!("the answer's `{field}` is no list (is {} keytrail's admin API?)", self.url))
    }

    /// `POST path` with no body, waiting up to `timeout`; answers as [`Self::get`].
    pub async fn post(&self, path: &str, timeout: Duration) -> anyhow::Result<Value> {
        self.send(Method::POST, path, None, timeout).await
    }

    /// `method path` with `body` as JSON; answers as [`Self::get`].
    pub async fn send_json(&self, method: Method, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(method, path, Some(serde_json::to_vec(body)?), CALL_TIMEOUT).await
    }

    /// `GET path_and_query`, its answer's body written to `out` as it
    /// comes (an export can be larger than memory); the bytes written.
    /// A refusal is an error as with [`Self::get`], and nothing is written;
    /// an answer cut short (the server stopped midway) is an error too.
    pub async fn download(&self, path_and_query: &str, out: &mut dyn std::io::Write) -> anyhow::Result<u64> {
        let target = format!("{}{}", self.base_path, path_and_query);
        let response = match tokio::time::timeout(CALL_TIMEOUT, self.open(Method::GET, &target, None)).await {
            Ok(result) => result?,
            Err(_) => bail!("the admin API at {} did not answer GET {target} within {} s", self.url, CALL_TIMEOUT.as_secs()),
        };
        let status = response.status();
        if !status.is_success() {
            let (retry_after, content_type) = (retry_after(&response), content_type(&response));
            let body = http_body_util::Limited::new(response.into_body(), 64 * 1024).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            return Err(self.refusal(&Method::GET, &target, status, retry_after, content_type.as_deref(), &body));
        }
        let mut body = response.into_body();
        let mut written = 0u64;
        loop {
            // An idle limit, not a total one: a big export may take long, but keeps coming.
            let Ok(next) = tokio::time::timeout(CALL_TIMEOUT, body.frame()).await else {
                bail!("GET {target}: nothing more came for {} s after {written} bytes", CALL_TIMEOUT.as_secs());
            };
            let Some(frame) = next else { break };
            let frame = frame.map_err(|e| anyhow!("GET {target}: the answer was cut short after {written} bytes: {e}"))?;
            if let Some(data) = frame.data_ref() {
                out.write_all(data)?;
                written += data.len() as u64;
            }
        }
        out.flush()?;
        Ok(written)
    }

    /// `DELETE path`: `Ok` on a success (a 204 has no body); a refusal as with [`Self::get`].
    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.succeed(Method::DELETE, path, None, CALL_TIMEOUT).await.map(drop)
    }

    async fn send(&self, method: Method, path_and_query: &str, body: Option<Vec<u8>>, timeout: Duration) -> anyhow::Result<Value> {
        let (target, body) = self.succeed(method.clone(), path_and_query, body, timeout).await?;
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        json.with_context(|| format!("{method} {target}: the answer is not JSON (is {} keytrail's admin API?)", self.url))
    }

    /// The call's target and the body of its successful answer; a refusal
    /// as an error.
    async fn succeed(&self, method: Method, path_and_query: &str, body: Option<Vec<u8>>, timeout: Duration) -> anyhow::Result<(String, Bytes)> {
        let target = format!("{}{}", self.base_path, path_and_query);
        let call = self.call(method.clone(), &target, body);
        let (status, retry_after, content_type, body) = match tokio::time::timeout(timeout, call).await {
            Ok(result) => result?,
            Err(_) => bail!("the admin API at {} did not answer {method} {target} within {} s", self.url, timeout.as_secs()),
        };
        if status.is_success() {
            return Ok((target, body));
        }
        Err(self.refusal(&method, &target, status, retry_after, content_type.as_deref(), &body))
    }

    /// The error for a refused call: the API's code and message (never the
    /// token, should the answer echo it) and a hint.
    /// `retry_after`: the answer's `Retry-After` (seconds), which the API's
    /// message may point to ("try again after the time in `Retry-After`").
    /// `content_type`: the answer's, to describe one that is no JSON (a
    /// proxy's error page in front of the API).
    fn refusal(&self, method: &Method, target: &str, status: StatusCode, retry_after: Option<u64>, content_type: Option<&str>, body: &[u8]) -> anyhow::Error {
        let json: Option<Value> = serde_json::from_slice(body).ok();
        let (code, message) = match &json {
            Some(v) => (
                v["error"]["code"].as_str().unwrap_or("").to_string(),
                v["error"]["message"].as_str().unwrap_or("").to_string(),
            ),
            None => (String::new(), describe_foreign(content_type, body)),
        };
        // What answered may echo the request (a proxy's or another
        // service's error page): never show the token it was sent.
        let message = message.replace(self.token.as_str(), "****");
        let detail = match (code.is_empty(), message.is_empty()) {
            (true, true) => String::new(),
            (true, false) => format!(": {message}"),
            (false, true) => format!(": {code}"),
            (false, false) => format!(": {code}: {message}"),
        };
        // Codes only the gateway answers with (the admin API's unknown
        // route is `not_found`, and these commands send no API key): the
        // URL is the gateway's port, a mistake easily made (8080 for 9080).
        let gateway = matches!(code.as_str(), "no_route" | "missing_key" | "invalid_key");
        let hint = match (status, retry_after) {
            _ if gateway => format!(
                " ({} is keytrail's gateway, not its admin API: give --admin-url or KEYTRAIL_ADMIN_URL the admin API's address, http://127.0.0.1:9080 by default)",
                self.url
            ),
            // The API taken as mounted under `…/v1` (each target starts with
            // `/v1` itself), and what answered knows no such route (the
            // admin API's answer for one, or a page that is none of its).
            _ if status == StatusCode::NOT_FOUND && self.base_path.ends_with("/v1") && (json.is_none() || message == "no such endpoint") => format!(
                " ({} ends with /v1, which each command adds itself: give {} alone, where the admin API answers)",
                self.url,
                self.url.strip_suffix("/v1").unwrap_or(&self.url)
            ),
            (StatusCode::UNAUTHORIZED, _) => format!(" (check {TOKEN_VAR})"),
            (StatusCode::FORBIDDEN, _) => " (the token's role or tenant does not allow this)".to_string(),
            (_, Some(secs)) => format!(" (Retry-After: {secs} s)"),
            _ if json.is_none() => format!(" (is {} keytrail's admin API, or did a proxy in front of it answer?)", self.url),
            _ => String::new(),
        };
        anyhow::Error::new(Refusal { status, code, text: format!("{method} {target}: {status}{detail}{hint}") })
    }

    /// The answer's status, `Retry-After`, `Content-Type` and body.
    async fn call(&self, method: Method, target: &str, body: Option<Vec<u8>>) -> anyhow::Result<(StatusCode, Option<u64>, Option<String>, Bytes)> {
        let response = self.open(method.clone(), target, body).await?;
        let status = response.status();
        let (retry_after, content_type) = (retry_after(&response), content_type(&response));
        let limited = http_body_util::Limited::new(response.into_body(), MAX_BODY);
        let body = limited.collect().await.map_err(|e| anyhow!("reading the answer to {method} {target}: {e}"))?.to_bytes();
        Ok((status, retry_after, content_type, body))
    }

    /// Sends one request on a new connection; the answer's head.
    async fn open(&self, method: Method, target: &str, body: Option<Vec<u8>>) -> anyhow::Result<Response<Incoming>> {
        let unreachable = |e: &dyn std::fmt::Display| anyhow!("cannot reach the admin API at {}: {e} (is keytrail serve running there? set --admin-url or KEYTRAIL_ADMIN_URL)", self.url);
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&self.authority)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(unreachable(&e)),
            Err(_) => return Err(unreachable(&format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()))),
        };
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| unreachable(&e))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut request = Request::builder()
            .method(method)
            .uri(target)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::USER_AGENT, concat!("keytrail-cli/", env!("CARGO_PKG_VERSION")));
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = request.body(Full::new(Bytes::from(body.unwrap_or_default()))).context("cannot build the request")?;
        sender.send_request(request).await.map_err(|e| unreachable(&e))
    }
}

/// An answer's `Retry-After` in seconds (the admin API sends seconds).
fn retry_after(response: &Response<Incoming>) -> Option<u64> {
    response.headers().get(hyper::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()
}

/// An answer's media type (`text/html`, without parameters).
fn content_type(response: &Response<Incoming>) -> Option<String> {
    let value = response.headers().get(hyper::header::CONTENT_TYPE)?.to_str().ok()?;
    let media = value.split(';').next().unwrap_or_default().trim();
    (!media.is_empty()).then(|| media.to_ascii_lowercase())
}

/// Text of at most `max` characters, on one line, from `text`.
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &flat[..end]),
        None => flat,
    }
}

/// A refusal's body that is no JSON, in a few words: what it is and what
/// it says — an HTML page's title (a proxy's `502 Bad Gateway`), never its
/// markup; a text's first line.
fn describe_foreign(content_type: Option<&str>, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(64 * 1024)]);
    let html = content_type.is_some_and(|t| t.contains("html")) || text.trim_start().starts_with('<');
    if body.is_empty() {
        return "the answer is not keytrail's JSON but empty".to_string();
    }
    let kind = content_type.unwrap_or(if html { "HTML" } else { "no content type" });
    let what = format!("the answer is not keytrail's JSON but {kind} ({} bytes)", body.len());
    if html {
        let lower = text.to_ascii_lowercase();
        let title = lower.find("<title").and_then(|at| lower[at..].find('>').map(|end| at + end + 1)).and_then(|start| {
            lower[start..].find("</title").map(|len| one_line(&text[start..start + len], 100))
        });
        return match title {
            Some(title) if !title.is_empty() && !title.contains(['<', '>']) => format!("{what} titled \"{title}\""),
            _ => what,
        };
    }
    match text.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(line) => format!("{what}: {}", one_line(&line.replace(char::is_control, " "), 200)),
        None => what,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_queries() {
        let c = AdminClient::new("http://127.0.0.1:9080/", "t".into()).unwrap();
        assert_eq!((c.authority.as_str(), c.base_path.as_str()), ("127.0.0.1:9080", ""));
        let c = AdminClient::new("http://admin.internal/keytrail", "t".into()).unwrap();
        assert_eq!((c.authority.as_str(), c.base_path.as_str()), ("admin.internal:80", "/keytrail"));
        assert!(AdminClient::new("https://x", "t".into()).unwrap_err().to_string().contains("https"));
        assert!(AdminClient::new("127.0.0.1:9080", "t".into()).is_err());
        assert!(AdminClient::new("http://user:pw@host:1", "t".into()).is_err());
        for bad in ["http://127.0.0.1:99999", "http://[::1]:70000/x", "http://h:0"] {
            assert!(parse_admin_url(bad).unwrap_err().contains("1 to 65535"), "{bad}");
        }
        assert_eq!(parse_admin_url("http://[::1]:9080").unwrap().0, "[::1]:9080");
        assert_eq!(parse_admin_url("http://h:65535").unwrap().0, "h:65535");
        assert!(!format!("{c:?}").contains("\"t\""));
        assert_eq!(with_query("/v1/x", &[("from", "2026-11-22T10:00:00+01:00".into()), ("a", "b c/d".into())]), "/v1/x?from=2026-11-22T10%3A00%3A00%2B01%3A00&a=b%20c%2Fd");
        assert_eq!(with_query("/v1/x", &[]), "/v1/x");
    }

    #[test]
    fn foreign_answers_are_described_not_dumped() {
        let page = b"<HTML><HEAD><TITLE>503 Service\n Unavailable</TITLE></HEAD><BODY><H1>down</H1></BODY></HTML>";
        assert_eq!(describe_foreign(Some("text/html"), page), format!("the answer is not keytrail's JSON but text/html ({} bytes) titled \"503 Service Unavailable\"", page.len()));
        assert_eq!(describe_foreign(None, b"<p>no title</p>"), "the answer is not keytrail's JSON but HTML (15 bytes)");
        assert_eq!(describe_foreign(Some("text/plain"), b"\n upstream connect error\nmore"), "the answer is not keytrail's JSON but text/plain (29 bytes): upstream connect error");
        assert_eq!(describe_foreign(Some("text/plain"), b""), "the answer is not keytrail's JSON but empty");
        assert!(describe_foreign(None, "é".repeat(300).as_bytes()).ends_with('…'));
    }
}
