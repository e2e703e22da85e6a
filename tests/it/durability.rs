//! `audit.durability = "sync"`: an answer the client got in full is in the
//! trail — checked right after each answer, and after `kill -9` under load,
//! against `async` where the same checks must find events missing.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keytrail::config::Durability;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::{http, spawn_serve, start_upstream, Admin, Process, TestServer, ADMIN_TOKEN};

/// The request ids of every request event of `acme` in the trail.
async fn committed_request_ids(admin: &Admin) -> HashSet<String> {
    admin.all_logs("/v1/audit/acme?limit=500").await.iter().map(|e| e["request_id"].as_str().unwrap().to_string()).collect()
}

/// Sends one call and reads its answer to the end: (status, request id).
async fn call(client: &reqwest::Client, method: &str, url: &str, key: Option<&str>, body: Option<&'static str>) -> (u16, String) {
    let mut req = client.request(method.parse().unwrap(), url);
    if let Some(key) = key {
        req = req.header("x-api-key", key);
    }
    if let Some(body) = body {
        req = req.body(body);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let id = res.headers()["x-request-id"].to_str().unwrap().to_string();
    res.bytes().await.unwrap();
    (status, id)
}

#[tokio::test]
async fn under_sync_durability_every_answer_ends_after_its_event_is_committed() {
    let upstream = start_upstream().await;
    // A flush interval of a second: without `sync`, no event of these calls
    // would be committed by the time its answer is read.
    let ts = TestServer::start_with(tempfile::tempdir().unwrap(), |c| {
        c.audit.durability = Durability::Sync;
        c.audit.flush_interval = Duration::from_millis(1000);
    })
    .await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/docs", &format!("http://{upstream}")).await;
    let gw = &ts.gateway;
    let calls: [(&str, String, Option<&str>, u16); 8] = [
        ("GET", format!("{gw}/docs/fixed"), Some(&key), 200),
        ("GET", format!("{gw}/docs/chunked?n=5"), Some(&key), 200),
        ("GET", format!("{gw}/docs/download?bytes=300000"), Some(&key), 200),
        ("HEAD", format!("{gw}/docs/fixed"), Some(&key), 200),
        ("GET", format!("{gw}/docs/status/204"), Some(&key), 204),
        ("GET", format!("{gw}/docs/fixed"), Some("kt_live_notarealkey"), 401),
        ("HEAD", format!("{gw}/docs/fixed"), None, 401),
        ("GET", format!("{gw}/nowhere"), Some(&key), 404),
    ];
    // One connection: the gateway's own loop serves it until the first call
    // with a body, hyper after it; each round covers one of them.
    let client = http();
    let started = Instant::now();
    for round in ["the gateway's loop", "hyper"] {
        if round == "hyper" {
            let (status, id) = call(&client, "POST", &format!("{gw}/docs/upload"), Some(&key), Some("a body")).await;
            assert_eq!(status, 200);
            assert!(committed_request_ids(&admin).await.contains(&id), "{round}: the upload's event");
        }
        // Three times: whether an upstream's end comes with its last piece
        // or in a read of its own varies from call to call.
        for (method, url, key, expected) in calls.iter().chain(&calls).chain(&calls) {
            let (status, id) = call(&client, method, url, *key, None).await;
            assert_eq!(status, *expected, "{round}: {method} {url}");
            let committed = committed_request_ids(&admin).await;
            assert!(committed.contains(&id), "{round}: {method} {url} answered {status} before its event {id} was committed");
        }
    }
    // Each answer waited for a commit made at once, not for the flush interval.
    assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
    // The events say what went out: the download whole, the HEAD without a body.
    let page = admin.get("/v1/audit/acme?limit=500").await;
    let logs = page.body["logs"].as_array().unwrap();
    let download = logs.iter().find(|e| e["path"].as_str().unwrap().contains("download")).unwrap();
    assert_eq!((download["response_size_bytes"].as_u64(), download["outcome"].as_str()), (Some(300_000), Some("success")), "{download}");
    let head = logs.iter().find(|e| e["method"] == "HEAD" && e["status_code"] == 200).unwrap();
    assert_eq!((head["response_size_bytes"].as_u64(), head["outcome"].as_str()), (Some(0), Some("success")), "{head}");
}

#[tokio::test]
async fn under_async_durability_an_answer_does_not_wait_for_its_commit() {
    let upstream = start_upstream().await;
    let ts = TestServer::start_with(tempfile::tempdir().unwrap(), |c| c.audit.flush_interval = Duration::from_millis(1000)).await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/docs", &format!("http://{upstream}")).await;
    let (status, id) = call(&http(), "GET", &format!("{}/docs/fixed", ts.gateway), Some(&key), None).await;
    assert_eq!(status, 200);
    // The same check as under `sync` finds it missing: it can fail.
    assert!(!committed_request_ids(&admin).await.contains(&id));
    ts.flush().await;
    assert!(committed_request_ids(&admin).await.contains(&id));
}

/// An admin change under `sync` answers once its outcome (and the change's
/// own security event, queued before it) is committed, and so do a sign-in
/// and the gateway loop's 400 and 431 to malformed heads; under `async` the
/// same reads right after the answers find them not yet there.
#[tokio::test]
async fn under_sync_admin_changes_sign_ins_and_refused_heads_answer_after_their_events_are_committed() {
    for durability in [Durability::Sync, Durability::Async] {
        let ts = TestServer::start_with(tempfile::tempdir().unwrap(), |c| {
            c.audit.durability = durability;
            c.audit.flush_interval = Duration::from_millis(1000);
        })
        .await;
        let admin = ts.admin_client();
        let (_, key_id, _) = admin.setup("acme", "/docs", "http://127.0.0.1:9").await;
        let revoke = admin.post(&format!("/v1/keys/{key_id}/revoke"), json!({})).await;
        assert_eq!(revoke.status, 200, "{}", revoke.text);
        let log = admin.get("/v1/audit/acme/admin?action=KEY_REVOKED").await;
        let outcome = log.body["entries"][0]["outcome"].clone();
        let security = admin.get("/v1/audit/acme/security?event_type=key_revoked").await;
        let revoked_events = security.body["events"].as_array().unwrap().len();
        // A sign-in that fails is recorded too.
        let a = admin.post("/v1/admins", json!({"name": "ada", "role": "auditor", "tenant_id": "acme", "password": "correct horse battery"})).await;
        assert_eq!(a.status, 201, "{}", a.text);
        let anonymous = Admin { token: String::new(), ..admin.clone() };
        assert_eq!(anonymous.post("/v1/auth/login", json!({"name": "ada", "password": "not the password"})).await.status, 401);
        let failed = admin.get("/v1/audit/acme/security?event_type=admin_login_failed").await;
        let failed_events = failed.body["events"].as_array().unwrap().len();
        // Heads refused by the gateway's own loop: a target that is no URI
        // path, a header name with a space, more headers than are read.
        let many: String = (0..150).map(|i| format!("X-Many-{i}: {i}\r\n")).collect();
        for (head, status) in [
            ("GET /docs/<x> HTTP/1.1\r\nHost: gw\r\n\r\n".to_string(), "400"),
            ("GET /docs/x HTTP/1.1\r\nBad Name: 1\r\n\r\n".to_string(), "400"),
            (format!("GET /docs/x HTTP/1.1\r\n{many}\r\n"), "431"),
        ] {
            let mut stream = tokio::net::TcpStream::connect(ts.gateway.trim_start_matches("http://")).await.unwrap();
            stream.write_all(head.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await.unwrap();
            assert!(answer.starts_with(format!("HTTP/1.1 {status}").as_bytes()), "{}", String::from_utf8_lossy(&answer));
        }
        let blocked = admin.get("/v1/audit/_system/security?event_type=request_blocked").await;
        let blocked_events = blocked.body["events"].as_array().unwrap().len();
        match durability {
            Durability::Sync => {
                assert_eq!(blocked_events, 3, "{}", blocked.text);
                assert_eq!(outcome, "success", "{}", log.text);
                assert_eq!(revoked_events, 1, "{}", security.text);
                assert_eq!(failed_events, 1, "{}", failed.text);
            }
            Durability::Async => {
                assert_eq!(blocked_events, 0, "the check cannot tell the modes apart: {}", blocked.text);
                assert_ne!(outcome, "success", "the check cannot tell the modes apart: {}", log.text);
                assert_eq!(failed_events, 0, "the check cannot tell the modes apart: {}", failed.text);
            }
        }
    }
}

/// An answer without body bytes (to a HEAD, a 204 or 304) is complete once
/// its head is sent: under `async` its event says what the same call got
/// with a body, not that the client went away.
#[tokio::test]
async fn under_async_a_bodiless_answer_is_recorded_with_its_own_outcome() {
    let upstream = start_upstream().await;
    let ts = TestServer::start().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/docs", &format!("http://{upstream}")).await;
    let gw = &ts.gateway;
    // (url, key): each is called with GET and with HEAD.
    let calls: [(String, Option<&str>); 6] = [
        (format!("{gw}/docs/fixed"), Some(&key)),
        (format!("{gw}/docs/status/204"), Some(&key)),
        (format!("{gw}/docs/status/304"), Some(&key)),
        (format!("{gw}/docs/fixed"), None),
        (format!("{gw}/docs/fixed"), Some("kt_live_notarealkey")),
        (format!("{gw}/nowhere"), Some(&key)),
    ];
    // One connection: the gateway's own loop serves it until the first call
    // with a body, hyper after it.
    let client = http();
    let mut pairs = Vec::new();
    for round in ["the gateway's loop", "hyper"] {
        if round == "hyper" {
            assert_eq!(call(&client, "POST", &format!("{gw}/docs/upload"), Some(&key), Some("a body")).await.0, 200);
        }
        for (url, key) in &calls {
            let (get_status, get_id) = call(&client, "GET", url, *key, None).await;
            let (head_status, head_id) = call(&client, "HEAD", url, *key, None).await;
            assert_eq!(head_status, get_status, "{round}: HEAD {url}");
            pairs.push((round, url.clone(), get_id, head_id));
        }
    }
    ts.flush().await;
    let logs = admin.all_logs("/v1/audit/acme?limit=500").await;
    let by_id = |id: &str| logs.iter().find(|e| e["request_id"] == id).unwrap_or_else(|| panic!("no event for {id}")).clone();
    for (round, url, get_id, head_id) in pairs {
        let (get, head) = (by_id(&get_id), by_id(&head_id));
        assert_eq!(head["method"], "HEAD");
        for field in ["outcome", "status_code", "error_code", "category", "event_type"] {
            assert_eq!(head[field], get[field], "{round}: HEAD {url}: {field}\nHEAD {head}\nGET {get}");
        }
        assert_ne!(head["outcome"], "aborted", "{round}: HEAD {url}: {head}");
        assert_eq!(head["response_size_bytes"], 0, "{round}: HEAD {url}: {head}");
    }
}

/// Starts the binary with `durability`, a one-second flush interval and
/// commits slowed to 50 ms each (a slow disk), loads it from 8 clients,
/// kills it with SIGKILL mid-load, starts it again on the same data:
/// (acknowledged request ids, committed ones, the chain verifies).
async fn kill_9_under_load(durability: &str, data: &Path, out: &Path) -> (Vec<String>, HashSet<String>, bool) {
    let upstream = start_upstream().await;
    let config = out.join(format!("{durability}.toml"));
    std::fs::write(&config, format!("[audit]\ndurability = \"{durability}\"\nflush_interval_ms = 1000\n")).unwrap();
    let mut p = Process::spawn(
        &["serve", "--config", config.to_str().unwrap(), "--data-dir", data.to_str().unwrap(), "--gateway-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
        &[("KEYTRAIL_BOOTSTRAP_TOKEN", ADMIN_TOKEN), ("KEYTRAIL_FAILPOINT", "slow_commit:50")],
        out,
        out,
    );
    let gateway = p.address_after("gateway listening on ");
    let admin = Admin { base: p.address_after("admin API listening on "), token: ADMIN_TOKEN.into(), client: http() };
    let (_, _, key) = admin.setup("acme", "/docs", &format!("http://{upstream}")).await;

    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..8 {
        let (acknowledged, stop, key, url) = (acknowledged.clone(), stop.clone(), key.clone(), format!("{gateway}/docs/fixed"));
        load.push(tokio::spawn(async move {
            let client = http();
            while !stop.load(Ordering::Relaxed) {
                // An answer counts only when it came whole.
                let Ok(res) = client.get(&url).header("x-api-key", &key).send().await else { break };
                let id = res.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_string());
                let ok = res.status() == 200;
                if res.bytes().await.is_ok() && ok {
                    acknowledged.lock().unwrap().push(id.unwrap());
                }
            }
        }));
    }
    // Under a second of load, so that under `async` nothing is due yet.
    tokio::time::sleep(Duration::from_millis(700)).await;
    p.signal("-KILL");
    let status = p.child.wait().unwrap();
    assert!(!status.success(), "killed: {status}");
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 20, "only {} answers in 700 ms", acknowledged.len());

    let (_restarted, admin, _) = spawn_serve(data, out, &[]);
    let committed = committed_request_ids(&admin).await;
    let verify = admin.get("/v1/audit/acme/verify").await;
    assert_eq!(verify.status, 200, "{}", verify.text);
    (acknowledged, committed, verify.body["ok"] == json!(true))
}

#[tokio::test]
async fn after_kill_9_under_load_every_answer_sync_gave_is_in_the_verified_trail() {
    let dir = tempfile::tempdir().unwrap();
    let (acknowledged, committed, verified) = kill_9_under_load("sync", &dir.path().join("sync"), dir.path()).await;
    let lost: Vec<&String> = acknowledged.iter().filter(|id| !committed.contains(*id)).collect();
    assert!(lost.is_empty(), "{} of {} answered calls are not in the trail, e.g. {:?}", lost.len(), acknowledged.len(), &lost[..lost.len().min(5)]);
    assert!(verified, "the chain does not verify after kill -9");

    // The same run under `async` loses the calls of its last flush interval:
    // the check above can fail.
    let (acknowledged, committed, verified) = kill_9_under_load("async", &dir.path().join("async"), dir.path()).await;
    let lost = acknowledged.iter().filter(|id| !committed.contains(*id)).count();
    assert!(lost > 0, "async: all {} answered calls committed within 700 ms of a 1 s flush interval", acknowledged.len());
    assert!(verified, "async: what was committed still verifies");
}

#[tokio::test]
async fn on_one_core_sync_answers_share_commits_when_the_runtime_runs_out_of_work() {
    // Pinned to one core, the binary runs a one-thread runtime whose park
    // hook makes waiting callers' batch due; with a one-second flush
    // interval, an answer that waited for anything else would take a second.
    let dir = tempfile::tempdir().unwrap();
    let upstream = start_upstream().await;
    let config = dir.path().join("sync.toml");
    std::fs::write(&config, "[audit]\ndurability = \"sync\"\nflush_interval_ms = 1000\n").unwrap();
    let (stdout_path, stderr_path) = (dir.path().join("out"), dir.path().join("err"));
    let data = dir.path().join("data");
    let child = std::process::Command::new("taskset")
        .args(["-c", "0", crate::util::binary(), "serve", "--config", config.to_str().unwrap(), "--data-dir", data.to_str().unwrap()])
        .args(["--gateway-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env("KEYTRAIL_BOOTSTRAP_TOKEN", ADMIN_TOKEN)
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("taskset (util-linux) runs the binary on one core");
    let mut p = Process { child, stdout_path, stderr_path };
    let gateway = p.address_after("gateway listening on ");
    let admin = Admin { base: p.address_after("admin API listening on "), token: ADMIN_TOKEN.into(), client: http() };
    // Each change commits its intent before it is made (a flush): four of
    // them would take four seconds if a flush waited for the interval.
    let started = Instant::now();
    let (_, _, key) = admin.setup("acme", "/docs", &format!("http://{upstream}")).await;
    assert!(started.elapsed() < Duration::from_secs(3), "four admin changes took {:?}", started.elapsed());

    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (key, url) = (key.clone(), format!("{gateway}/docs/fixed"));
        clients.push(tokio::spawn(async move {
            let client = http();
            let mut ids = Vec::new();
            for _ in 0..10 {
                let (status, id) = call(&client, "GET", &url, Some(&key), None).await;
                assert_eq!(status, 200);
                ids.push(id);
            }
            ids
        }));
    }
    let mut answered = Vec::new();
    for client in clients {
        answered.extend(client.await.unwrap());
    }
    // 10 calls in a row per client: ~10 s if each waited for the flush interval.
    assert!(started.elapsed() < Duration::from_secs(5), "80 sync calls took {:?}", started.elapsed());
    let committed = committed_request_ids(&admin).await;
    assert!(answered.iter().all(|id| committed.contains(id)), "an answered call is not in the trail");
    assert!(p.interrupt_and_wait().success());
}
