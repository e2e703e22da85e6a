//! The management API: authentication, status codes and bad input.

use serde_json::{json, Value};

use crate::util::{start_upstream, Admin, TestServer};

#[tokio::test]
async fn every_admin_call_needs_a_valid_bearer_token() {
    let mut ts = TestServer::start().await;
    let good = ts.admin_client();
    assert_eq!(good.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    let paths = [
        ("GET", "/v1/tenants"),
        ("POST", "/v1/tenants"),
        ("GET", "/v1/tenants/acme/apis"),
        ("GET", "/v1/tenants/acme/consumers"),
        ("POST", "/v1/keys/key_x/revoke"),
        ("GET", "/v1/audit/acme"),
        ("GET", "/v1/audit/acme/security"),
        ("GET", "/v1/audit/acme/export/csv"),
        ("GET", "/v1/audit/acme/export/json"),
    ];
    for token in ["", "wrong-token", "kta_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"] {
        let admin = Admin { token: token.into(), ..good.clone() };
        for (method, path) in paths {
            let a = admin.call(method, path, Some(json!({"id": "x", "name": "x"}))).await;
            assert_eq!(a.status, 401, "{method} {path} with {token:?}: {}", a.text);
            assert_eq!(a.body["error"]["code"], "unauthorized");
        }
    }
    // No header at all, and a non-bearer scheme.
    let res = ts.client.get(format!("{}/v1/tenants", ts.admin)).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let res = ts.client.get(format!("{}/v1/tenants", ts.admin)).basic_auth("admin", Some("x")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    // The health check is open.
    let res = ts.client.get(format!("{}/healthz", ts.admin)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    ts.stop().await;
}

#[tokio::test]
async fn tenants_apis_consumers_and_keys() {
    let mut ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let upstream = format!("http://{up}");

    let a = admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await;
    assert_eq!(a.status, 201);
    assert_eq!(a.body["id"], "acme");
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Again"})).await.status, 409);
    let list = admin.get("/v1/tenants").await;
    assert_eq!(list.body["tenants"].as_array().unwrap().len(), 1);

    let a = admin.post("/v1/tenants/acme/apis", json!({"id": "docs", "path_prefix": "/docs", "upstream": upstream})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.body["path_prefix"], "/docs");
    let a = admin.post("/v1/tenants/acme/apis", json!({"id": "docs", "path_prefix": "/docs2", "upstream": upstream})).await;
    assert_eq!(a.status, 409, "duplicate id: {}", a.text);
    let a = admin.post("/v1/tenants/acme/apis", json!({"id": "docs3", "path_prefix": "/docs/", "upstream": upstream})).await;
    assert_eq!(a.status, 409, "the same prefix spelled with a slash: {}", a.text);
    let a = admin.post("/v1/tenants/nope/apis", json!({"id": "docs", "path_prefix": "/x", "upstream": upstream})).await;
    assert_eq!(a.status, 404);
    assert_eq!(admin.get("/v1/tenants/acme/apis").await.body["apis"].as_array().unwrap().len(), 1);
    assert_eq!(admin.get("/v1/tenants/nope/apis").await.status, 404);

    let a = admin.post("/v1/tenants/acme/consumers", json!({"name": "my-saas-client"})).await;
    assert_eq!(a.status, 201);
    let consumer = a.body["id"].as_str().unwrap().to_string();
    assert!(consumer.starts_with("cons_"));
    assert_eq!(a.body["status"], "active");
    assert_eq!(admin.post("/v1/tenants/acme/consumers", json!({"name": "my-saas-client"})).await.status, 409);
    assert_eq!(admin.post("/v1/tenants/nope/consumers", json!({"name": "x"})).await.status, 404);
    assert_eq!(admin.get("/v1/tenants/acme/consumers").await.body["consumers"].as_array().unwrap().len(), 1);

    let a = admin.post(&format!("/v1/tenants/acme/consumers/{consumer}/keys"), json!({"scopes": [], "expires_at": null})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let key = a.body["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("kt_live_"));
    assert!(a.body["key_id"].as_str().unwrap().starts_with("key_"));
    assert_eq!(a.body["hint"], format!("kt_live****{}", &key[key.len() - 4..]));
    assert_eq!(a.body["status"], "active");
    let a = admin.post(&format!("/v1/tenants/acme/consumers/{consumer}/keys"), json!({"environment": "test", "scopes": ["docs:read"]})).await;
    assert!(a.body["key"].as_str().unwrap().starts_with("kt_test_"));
    let listed = admin.get(&format!("/v1/tenants/acme/consumers/{consumer}/keys")).await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body["keys"].as_array().unwrap().len(), 2);
    assert!(!listed.text.contains(&key), "a listing never holds the key");
    assert!(listed.body["keys"][0].get("key").is_none());
    assert_eq!(admin.post("/v1/tenants/acme/consumers/cons_nope/keys", json!({})).await.status, 404);
    assert_eq!(admin.get("/v1/tenants/acme/consumers/cons_nope/keys").await.status, 404);
    assert_eq!(admin.post("/v1/keys/key_nope/revoke", json!({})).await.status, 404);

    // key_created is in the trail with the admin who did it.
    let events = admin.wait_for("/v1/audit/acme/security?event_type=key_created", "events", 2).await;
    assert_eq!(events[0]["actor"], "admin:adm_bootstrap");
    assert_eq!(events[0]["consumer_id"], consumer.as_str());
    ts.stop().await;
}

fn assert_bad(a: &crate::util::Answer, mentions: &str) {
    assert_eq!(a.status, 400, "{}", a.text);
    assert_eq!(a.body["error"]["code"], "invalid_body", "{}", a.text);
    let message = a.body["error"]["message"].as_str().unwrap();
    assert!(message.contains(mentions), "{message:?} should mention {mentions:?}");
}

#[tokio::test]
async fn bad_bodies_are_400_with_what_to_fix() {
    let mut ts = TestServer::start().await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);

    // Not JSON at all.
    let res = ts
        .client
        .post(format!("{}/v1/tenants", ts.admin))
        .bearer_auth(&admin.token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("not valid JSON"));

    assert_bad(&admin.post("/v1/tenants", json!({"name": "No id"})).await, "missing field `id`");
    assert_bad(&admin.post("/v1/tenants", json!({"id": "Bad Id", "name": "x"})).await, "`id`");
    assert_bad(&admin.post("/v1/tenants", json!({"id": "ok", "name": ""})).await, "`name`");
    assert_bad(&admin.post("/v1/tenants", json!({"id": "ok", "name": "x", "extra": 1})).await, "unknown field `extra`");
    assert_bad(&admin.post("/v1/tenants", json!({"id": 5, "name": "x"})).await, "invalid type");
    assert_bad(&admin.post("/v1/tenants", json!([1, 2])).await, "invalid type");

    let api = |prefix: &str, upstream: &str| json!({"id": "a", "path_prefix": prefix, "upstream": upstream});
    assert_bad(&admin.post("/v1/tenants/acme/apis", api("docs", "http://127.0.0.1:1")).await, "`path_prefix`");
    assert_bad(&admin.post("/v1/tenants/acme/apis", api("/a/../b", "http://127.0.0.1:1")).await, "`path_prefix`");
    // Clients percent-escape such a path (`/caf%C3%A9`): an api at `/café` would answer no call.
    assert_bad(&admin.post("/v1/tenants/acme/apis", api("/café", "http://127.0.0.1:1")).await, "ASCII");
    assert_bad(&admin.post("/v1/tenants/acme/apis", api("/a", "ftp://x")).await, "`upstream`");
    assert_bad(&admin.post("/v1/tenants/acme/apis", api("/a", "https://x")).await, "https");
    assert_bad(&admin.post("/v1/tenants/acme/apis", api("/a", "http://x/base")).await, "`upstream`");
    // A port out of range reads as no port at all: the gateway would send
    // the api's calls to port 80 of that host.
    for upstream in ["http://127.0.0.1:99999", "http://127.0.0.1:", "http://127.0.0.1:0"] {
        assert_bad(&admin.post("/v1/tenants/acme/apis", api("/a", upstream)).await, "port");
    }
    assert_bad(&admin.post("/v1/tenants/acme/apis", json!({"id": "a", "path_prefix": "/a", "upstream": "http://x", "timeout_ms": 0})).await, "`timeout_ms`");

    assert_bad(&admin.post("/v1/tenants/acme/consumers", json!({})).await, "missing field `name`");
    assert_bad(&admin.post("/v1/tenants/acme/consumers", json!({"name": "x", "metadata": [1]})).await, "`metadata`");
    let consumer = admin.post("/v1/tenants/acme/consumers", json!({"name": "c"})).await.body["id"].as_str().unwrap().to_string();
    let keys = format!("/v1/tenants/acme/consumers/{consumer}/keys");
    assert_bad(&admin.post(&keys, json!({"expires_at": "tomorrow"})).await, "`expires_at`");
    assert_bad(&admin.post(&keys, json!({"expires_at": "2001-01-01T00:00:00Z"})).await, "future");
    assert_bad(&admin.post(&keys, json!({"scopes": ["has space"]})).await, "scope");
    assert_bad(&admin.post(&keys, json!({"scopes": "docs"})).await, "invalid type");
    assert_bad(&admin.post(&keys, json!({"environment": "prod"})).await, "`environment`");

    // Nothing was created by any of the bad calls.
    assert_eq!(admin.get("/v1/tenants").await.body["tenants"].as_array().unwrap().len(), 1);
    assert_eq!(admin.get("/v1/tenants/acme/apis").await.body["apis"].as_array().unwrap().len(), 0);
    assert_eq!(admin.get(&keys).await.body["keys"].as_array().unwrap().len(), 0);

    // Unknown endpoints and wrong methods answer JSON too.
    let a = admin.get("/v1/nothing").await;
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (404, Some("not_found")));
    let a = admin.call("DELETE", "/v1/tenants", None).await;
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (405, Some("method_not_allowed")));
    ts.stop().await;
}

#[tokio::test]
async fn control_data_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().to_path_buf();
    let up = start_upstream().await;
    let mut ts = TestServer::start_with(dir, |_| {}).await;
    let admin = ts.admin_client();
    let (_, key_id, key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    let res = ts.client.get(format!("{}/docs/x", ts.gateway)).header("X-API-Key", &key).send().await.unwrap();
    assert_eq!(res.status(), 200);
    ts.stop().await;

    // Same data dir, new process state: keys, routes and the chain continue.
    let config = crate::util::test_config(&keep);
    let server = keytrail::server::start(config).await.unwrap();
    let gateway = format!("http://{}", server.gateway_addr);
    let admin = Admin { base: format!("http://{}", server.admin_addr), ..admin };
    let res = ts.client.get(format!("{gateway}/docs/x")).header("X-API-Key", &key).send().await.unwrap();
    assert_eq!(res.status(), 200);
    admin.post(&format!("/v1/keys/{key_id}/revoke"), json!({})).await;
    let res = ts.client.get(format!("{gateway}/docs/x")).header("X-API-Key", &key).send().await.unwrap();
    assert_eq!(res.status(), 401);
    server.audit.flush().await;
    let chain = keytrail::store::audit::AuditReader::open(&keep.join("audit")).unwrap().chain("acme").unwrap();
    let seqs: Vec<u64> = chain.iter().map(|e| e.event.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "numbering continues across the restart");
    server.shutdown().await;
}

/// With `keys.pepper_file`, keys are stored as an HMAC keyed with the
/// pepper, so `control.db` alone cannot confirm a guessed key: neither the
/// key nor its plain SHA-256 nor the pepper is in it. Keys stored before the
/// pepper was set keep working; a peppered key is found only with the same
/// pepper (without it, or with another, it is an unknown key).
#[tokio::test]
async fn a_pepper_keys_the_stored_key_hashes() {
    use keytrail::keys::{hash_secret, KeyHasher};
    let dir = tempfile::tempdir().unwrap();
    let up = start_upstream().await;
    let pepper = b"a pepper of thirty-two bytes or more, kept apart".to_vec();
    let start = |hasher: KeyHasher| {
        let mut config = crate::util::test_config(dir.path());
        config.key_hasher = hasher;
        async move {
            let server = keytrail::server::start(config).await.unwrap();
            let admin = Admin { base: format!("http://{}", server.admin_addr), token: crate::util::ADMIN_TOKEN.to_string(), client: reqwest::Client::new() };
            (format!("http://{}", server.gateway_addr), admin, server)
        }
    };
    let status = |gateway: String, key: String| async move {
        reqwest::Client::new().get(format!("{gateway}/docs/x")).header("X-API-Key", key).send().await.unwrap().status().as_u16()
    };
    // A key made before any pepper.
    let (gateway, admin, server) = start(KeyHasher::default()).await;
    let (consumer, _, before) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    assert_eq!(status(gateway, before.clone()).await, 200);
    server.shutdown().await;

    let (gateway, admin, server) = start(KeyHasher::with_pepper(&pepper).unwrap()).await;
    assert_eq!(status(gateway.clone(), before.clone()).await, 200, "a key stored before the pepper still works");
    let (_, peppered) = admin.key("acme", &consumer, json!({})).await;
    assert_eq!(status(gateway, peppered.clone()).await, 200);
    server.shutdown().await;
    let mut stored = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with("control.db") {
            stored.extend(std::fs::read(path).unwrap());
        }
    }
    let holds = |needle: &[u8]| stored.windows(needle.len()).any(|w| w == needle);
    assert!(holds(&KeyHasher::with_pepper(&pepper).unwrap().stored(&peppered)), "the peppered hash is what is stored");
    assert!(!holds(&hash_secret(&peppered)), "the key's plain SHA-256 is not stored");
    assert!(!holds(peppered.as_bytes()) && !holds(&pepper), "neither the key nor the pepper");
    assert!(holds(&hash_secret(&before)), "the older key keeps its plain hash");

    for hasher in [KeyHasher::default(), KeyHasher::with_pepper(b"another pepper, also thirty-two bytes long").unwrap()] {
        let (gateway, _, server) = start(hasher).await;
        assert_eq!(status(gateway.clone(), peppered.clone()).await, 401, "a peppered key is found only with its pepper");
        assert_eq!(status(gateway, before.clone()).await, 200);
        server.shutdown().await;
    }
}

/// Every free-text field the control store keeps as given refuses a key or
/// token pasted into it (as names and metadata do): scopes, an api's
/// required scopes, forbidden paths and cost prefixes, a blocklist's
/// user-agent value and rule id. None of them reaches `control.db`.
#[tokio::test]
async fn a_pasted_key_is_refused_by_every_stored_field() {
    let ts = TestServer::start().await;
    let up = format!("http://{}", start_upstream().await);
    let owner = ts.admin_client();
    let (_, key_id, key) = owner.setup("acme", "/docs", &up).await;
    let token = owner.token.clone();
    for secret in [key.clone(), format!("x{key}"), token.clone()] {
        let refused = [
            owner.call("PUT", &format!("/v1/keys/{key_id}/scopes"), Some(json!({"scopes": [secret]}))).await,
            owner.call("PUT", "/v1/tenants/acme/apis/docs/policies", Some(json!({"required_scopes": [secret]}))).await,
            owner.call("PUT", "/v1/tenants/acme/apis/docs/policies", Some(json!({"forbidden_paths": [format!("/docs/{secret}")]}))).await,
            owner.post("/v1/tenants/acme/apis", json!({"id": "other", "path_prefix": "/other", "upstream": up, "costs": [{"path_prefix": format!("/other/{secret}"), "cost": 2}]})).await,
            owner.post("/v1/tenants/acme/blocklist", json!({"kind": "user_agent", "value": secret})).await,
            owner.post("/v1/tenants/acme/blocklist", json!({"kind": "user_agent", "value": "sqlmap", "rule_id": secret})).await,
        ];
        for (i, answer) in refused.iter().enumerate() {
            assert_eq!(answer.status, 400, "{i}: {}", answer.text);
            assert!(!answer.text.contains(&secret), "{i}: the error repeats it: {}", answer.text);
        }
    }
    for file in ["control.db", "control.db-wal"] {
        let bytes = std::fs::read(ts.data_dir.join(file)).unwrap_or_default();
        for secret in [&key, &token] {
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "{file} holds a secret");
        }
    }
}

/// A change whose answer is large (here ~500 KB of policies) answers it
/// whole, not an empty 200.
#[tokio::test]
async fn a_large_change_answer_arrives_whole() {
    let ts = TestServer::start().await;
    let up = format!("http://{}", start_upstream().await);
    let owner = ts.admin_client();
    owner.setup("acme", "/docs", &up).await;
    let paths: Vec<String> = (0..1000).map(|i| format!("/docs/{i}{}", "\"".repeat(245))).collect();
    let answer = owner.call("PUT", "/v1/tenants/acme/apis/docs/policies", Some(json!({"forbidden_paths": paths}))).await;
    assert_eq!(answer.status, 200);
    assert!(answer.text.len() > 256 * 1024, "{} bytes", answer.text.len());
    assert_eq!(answer.body["policies"]["forbidden_paths"].as_array().map(Vec::len), Some(1000), "{}", &answer.text[..200]);
}

/// Reads one answer with a `Content-Length` from a raw admin connection;
/// returns its status.
async fn raw_answer_status(stream: &mut tokio::net::TcpStream) -> u16 {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let read = async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4) {
                let head = String::from_utf8(buf[..end].to_vec()).unwrap().to_ascii_lowercase();
                let length: usize = head.split("\r\n").find_map(|l| l.strip_prefix("content-length:")).unwrap().trim().parse().unwrap();
                if buf.len() >= end + length {
                    assert_eq!(buf.len(), end + length, "nothing after the answer");
                    return head.split(' ').nth(1).unwrap().parse().unwrap();
                }
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before a whole answer: {}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), read).await.expect("an answer")
}

/// The admin port answers anyone who connects (no token needed to send a
/// head): a connection that has not sent a whole request head within the
/// admin head timeout — one trickling its head a byte at a time, one that
/// sends nothing, one kept idle after its call — is closed unanswered
/// (hyper writes no 408) instead of being held for ever, while calls on a
/// kept connection, each within the timeout, are answered however long the
/// connection has lived.
#[tokio::test]
async fn admin_connections_without_a_whole_head_in_time_are_closed() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    const HEAD_TIMEOUT: Duration = Duration::from_millis(500);
    let ts = TestServer::start_with(tempfile::tempdir().unwrap(), |c| c.admin_head_timeout = HEAD_TIMEOUT).await;
    let addr = ts.admin.trim_start_matches("http://").to_string();

    let mut kept = TcpStream::connect(&addr).await.unwrap();
    let lived = Instant::now();
    for _ in 0..3 {
        kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n").await.unwrap();
        assert_eq!(raw_answer_status(&mut kept).await, 200);
        tokio::time::sleep(HEAD_TIMEOUT * 6 / 10).await;
    }
    assert!(lived.elapsed() > HEAD_TIMEOUT, "the kept connection outlived one timeout");
    let mut silent = TcpStream::connect(&addr).await.unwrap();

    // Slowloris: a head that never ends, a byte every 50 ms.
    let started = Instant::now();
    let (mut reader, mut writer) = TcpStream::connect(&addr).await.unwrap().into_split();
    writer.write_all(b"GET /v1/tenants HTTP/1.1\r\nHost: admin\r\nX-Slow: ").await.unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if writer.write_all(b"a").await.is_err() {
                break;
            }
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut answer)).await;
    let closed_after = started.elapsed();
    trickle.abort();
    assert!(read.is_ok(), "the slow head's connection was still open after 5 s");
    assert!(closed_after >= HEAD_TIMEOUT - Duration::from_millis(50), "closed before the timeout: {closed_after:?}");
    assert!(closed_after < Duration::from_secs(3), "the trickle kept the connection open for {closed_after:?}");
    assert!(answer.is_empty(), "closed unanswered: {}", String::from_utf8_lossy(&answer));

    let closes = async |stream: &mut TcpStream| {
        let mut byte = [0u8; 1];
        matches!(tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await, Ok(Ok(0)) | Ok(Err(_)))
    };
    assert!(closes(&mut silent).await, "a connection that sends nothing is closed too");
    assert!(closes(&mut kept).await, "and so is a kept one that idles past the timeout");

    // A whole head, then a body that stops coming (the sign-in needs no
    // token): the same limit bounds each wait for more of it.
    for path in ["/v1/auth/login", "/v1/tenants"] {
        let mut slow = TcpStream::connect(&addr).await.unwrap();
        let head = format!("POST {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\"", crate::util::ADMIN_TOKEN);
        slow.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "{path}: a stalled body's connection was still open after 5 s");
        assert!(started.elapsed() >= HEAD_TIMEOUT - Duration::from_millis(50), "{path}: closed before the timeout");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
    }
    // The API itself goes on answering.
    assert_eq!(ts.admin_client().get("/v1/tenants").await.status, 200);
}

/// A session token is looked up in the control store off the async
/// threads: while the store is busy (here a change waits on a write lock
/// another connection holds, keeping the store's connection), an admin
/// call with a session token waits for it without stalling the runtime,
/// which goes on answering other calls (the test runs the server on a
/// single-threaded runtime, where a lookup on the runtime thread would stop
/// everything until the store's busy timeout).
#[tokio::test]
async fn a_session_lookup_waiting_for_the_control_store_does_not_stall_the_runtime() {
    let mut ts = TestServer::start().await;
    let owner = ts.admin_client();
    let password = "a long enough password";
    assert_eq!(owner.post("/v1/admins", json!({"name": "ada", "role": "viewer", "password": password})).await.status, 201);
    let anonymous = Admin { token: String::new(), ..owner.clone() };
    let login = anonymous.post("/v1/auth/login", json!({"name": "ada", "password": password})).await;
    assert_eq!(login.status, 200, "{}", login.text);
    let ada = Admin { token: login.body["session_token"].as_str().unwrap().to_string(), ..owner.clone() };
    assert_eq!(ada.get("/v1/me").await.status, 200);

    let db = rusqlite::Connection::open(ts.data_dir.join("control.db")).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    // Creating an admin writes from a blocking thread: it waits for the
    // lock above, holding the store.
    let change = tokio::spawn({
        let owner = owner.clone();
        async move { owner.post("/v1/admins", json!({"name": "bob", "role": "viewer", "password": "another long password"})).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let waiting = tokio::spawn({
        let ada = ada.clone();
        async move { ada.get("/v1/me").await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let health = ts.client.get(format!("{}/healthz", ts.admin)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_millis(1000), "the runtime stalled for {took:?} behind the session lookup");
    assert!(!waiting.is_finished(), "the lookup did not wait for the store");
    db.execute_batch("COMMIT").unwrap();
    drop(db);
    let me = waiting.await.unwrap();
    assert_eq!(me.status, 200, "{}", me.text);
    let change = change.await.unwrap();
    assert_eq!(change.status, 201, "{}", change.text);
    ts.stop().await;
}

/// Names are limited to 200 characters, as the error and openapi.json
/// say: a name in a script whose letters take two or three bytes in UTF-8
/// is held to the same length as one in ASCII.
#[tokio::test]
async fn names_are_limited_in_characters_not_bytes() {
    let mut ts = TestServer::start().await;
    let admin = ts.admin_client();
    let accented = "é".repeat(150);
    let cjk = "名".repeat(200);
    let a = admin.post("/v1/tenants", json!({"id": "acme", "name": accented})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.body["name"], accented.as_str());
    for name in [&accented, &cjk] {
        let a = admin.post("/v1/tenants/acme/consumers", json!({"name": name})).await;
        assert_eq!(a.status, 201, "{} characters: {}", name.chars().count(), a.text);
        assert_eq!(a.body["name"], name.as_str());
    }
    assert_bad(&admin.post("/v1/tenants/acme/consumers", json!({"name": "名".repeat(201)})).await, "1-200 characters");
    assert_bad(&admin.post("/v1/tenants", json!({"id": "beta", "name": "é".repeat(201)})).await, "1-200 characters");
    ts.stop().await;
}

/// Management bodies are limited to 4 MiB, refused as the API's JSON
/// error (`413 payload_too_large`, as openapi.json says): one of 3 MiB is
/// read and judged like any other, not cut off by a lower limit answering
/// in plain text.
#[tokio::test]
async fn bodies_up_to_4_mib_are_read_and_larger_ones_get_a_json_413() {
    let mut ts = TestServer::start().await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    let a = admin.post("/v1/tenants/acme/consumers", json!({"name": "big", "metadata": {"notes": "x".repeat(3 << 20)}})).await;
    assert_bad(&a, "`metadata` must be at most 16 KiB");
    let a = admin.post("/v1/tenants/acme/consumers", json!({"name": "huge", "metadata": {"notes": "x".repeat(5 << 20)}})).await;
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (413, Some("payload_too_large")), "{}", &a.text[..a.text.len().min(300)]);
    let a = admin.call("PUT", "/v1/tenants/acme/apis/docs/policies", Some(json!({"forbidden_paths": ["/docs/x".repeat(400_000)]}))).await;
    assert_bad(&a, "forbidden_paths");
    ts.stop().await;
}

/// Clients send a path beyond ASCII percent-escaped (`/caf%C3%A9`), and
/// calls are routed by the path as sent: an api at `/café` could never be
/// called, so it is refused. Inside an api of the same tenant such a path
/// is also read decoded, so a nested `/docs/café` works and stays allowed.
#[tokio::test]
async fn a_prefix_beyond_ascii_is_refused_unless_an_api_around_it_reads_it_decoded() {
    let mut ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let upstream = format!("http://{up}");
    let (_, _, key) = admin.setup("acme", "/docs", &upstream).await;
    let a = admin.post("/v1/tenants/acme/apis", json!({"id": "cafe", "path_prefix": "/café", "upstream": upstream})).await;
    assert_bad(&a, "ASCII");
    let nested = json!({"id": "docs-cafe", "path_prefix": "/docs/café", "upstream": upstream, "policies": {"required_scopes": ["cafe"]}});
    let a = admin.post("/v1/tenants/acme/apis", nested).await;
    assert_eq!(a.status, 201, "{}", a.text);
    // The escaped path reaches the nested api: its required scope applies.
    let res = ts.client.get(format!("{}/docs/caf%C3%A9/menu", ts.gateway)).header("X-API-Key", &key).send().await.unwrap();
    assert_eq!(res.status(), 403);
    let res = ts.client.get(format!("{}/docs/other", ts.gateway)).header("X-API-Key", &key).send().await.unwrap();
    assert_eq!(res.status(), 200);
    ts.stop().await;
}

/// A `PUT` that replaces a whole setting read an empty body as `{}`: a
/// `curl -X PUT` that lost its `-d` removed every policy of an api, or took
/// a consumer out of its tier (no limits at all). An empty body is now
/// refused and nothing changes; `{}` (and `null` for the tier) still clear
/// them on purpose. (A tier's limits were safe: a tier needs one.)
#[tokio::test]
async fn a_replacing_put_refuses_an_empty_body_and_changes_nothing() {
    let mut ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (_, _, _) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    let a = admin.call("PUT", "/v1/tenants/acme/apis/docs/policies", Some(json!({"allowed_methods": ["GET"]}))).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let a = admin.post("/v1/tenants/acme/tiers", json!({"id": "t", "daily_quota": 5})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let consumer = admin.post("/v1/tenants/acme/consumers", json!({"name": "c", "tier": "t"})).await.body["id"].as_str().unwrap().to_string();
    let tier_path = format!("/v1/tenants/acme/consumers/{consumer}/tier");

    for (path, to_clear) in [
        ("/v1/tenants/acme/apis/docs/policies", "`{}`"),
        (tier_path.as_str(), "`{\"tier\": null}`"),
    ] {
        let a = admin.call("PUT", path, None).await;
        assert_bad(&a, "the body is empty");
        assert!(a.text.contains(&to_clear.replace('"', "\\\"")), "{path}: {}", a.text);
    }
    assert_bad(&admin.call("PUT", "/v1/tenants/acme/tiers/t", None).await, "a tier needs a `rate_limit`");
    // `tier` is required: `{}` is no way to say "no tier" either.
    assert_bad(&admin.call("PUT", &tier_path, Some(json!({}))).await, "missing field `tier`");

    let api = admin.get("/v1/tenants/acme/apis").await;
    assert_eq!(api.body["apis"][0]["policies"]["allowed_methods"], json!(["GET"]), "{}", api.text);
    let tiers = admin.get("/v1/tenants/acme/tiers").await;
    assert_eq!(tiers.body["tiers"][0]["daily_quota"], json!(5), "{}", tiers.text);
    let consumers = admin.get("/v1/tenants/acme/consumers").await;
    let c = consumers.body["consumers"].as_array().unwrap().iter().find(|c| c["id"] == json!(consumer)).unwrap();
    assert_eq!(c["tier"], json!("t"));

    // Clearing on purpose still works.
    let a = admin.call("PUT", "/v1/tenants/acme/apis/docs/policies", Some(json!({}))).await;
    assert_eq!((a.status, a.body["policies"].clone()), (200, json!({})), "{}", a.text);
    let a = admin.call("PUT", &tier_path, Some(json!({"tier": null}))).await;
    assert_eq!((a.status, a.body["tier"].clone()), (200, Value::Null), "{}", a.text);
    ts.stop().await;
}

/// `GET /v1/keys/{key_id}`: one key by its id alone — its tenant and
/// consumer in the answer, its status as of now — never its secret nor its
/// hash. Any role reads it; an admin bound to another tenant gets the same
/// 404 as for a key that does not exist.
#[tokio::test]
async fn a_key_is_read_by_its_id_alone_and_never_its_secret() {
    let ts = TestServer::start().await;
    let owner = ts.admin_client();
    for tenant in ["acme", "other"] {
        assert_eq!(owner.post("/v1/tenants", json!({"id": tenant, "name": tenant})).await.status, 201);
    }
    let consumer = owner.post("/v1/tenants/acme/consumers", json!({"name": "shop"})).await.body["id"].as_str().unwrap().to_string();
    let created = owner.post(&format!("/v1/tenants/acme/consumers/{consumer}/keys"), json!({"scopes": ["docs:read"]})).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let (key_id, secret) = (created.body["key_id"].as_str().unwrap().to_string(), created.body["key"].as_str().unwrap().to_string());
    let path = format!("/v1/keys/{key_id}");
    let bound = [owner.new_admin("acme-viewer", "viewer", Some("acme")).await, owner.new_admin("other-owner", "owner", Some("other")).await];

    for reader in [&owner, &bound[0]] {
        let a = reader.get(&path).await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(a.body["key_id"], key_id.as_str());
        assert_eq!((a.body["tenant_id"].as_str(), a.body["consumer_id"].as_str()), (Some("acme"), Some(consumer.as_str())), "{}", a.text);
        assert_eq!((a.body["status"].as_str(), a.body["scopes"].clone()), (Some("active"), json!(["docs:read"])), "{}", a.text);
        assert_eq!(a.body["hint"], created.body["hint"], "{}", a.text);
        assert!(a.body.get("key").is_none() && a.body.get("hash").is_none(), "{}", a.text);
        assert!(!a.text.contains(&secret) && !a.text.contains(&secret[secret.len() - 12..]), "{}", a.text);
    }
    let a = bound[1].get(&path).await;
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (404, Some("not_found")), "{}", a.text);
    let a = owner.get("/v1/keys/key_nope").await;
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (404, Some("not_found")), "{}", a.text);
    // A pasted secret in place of the id is not echoed back.
    let a = owner.get(&format!("/v1/keys/{secret}")).await;
    assert_eq!(a.status, 404, "{}", a.text);
    assert!(!a.text.contains(&secret), "{}", a.text);

    // Its state follows its life: rotated, then revoked.
    let rotated = owner.post(&format!("/v1/keys/{key_id}/rotate"), json!({"grace_seconds": 60})).await;
    assert_eq!(rotated.status, 201, "{}", rotated.text);
    assert_eq!(owner.get(&path).await.body["replaced_by"], rotated.body["key_id"]);
    assert_eq!(owner.post(&format!("/v1/keys/{key_id}/revoke"), json!({})).await.status, 200);
    assert_eq!(owner.get(&path).await.body["status"], "revoked");
}
