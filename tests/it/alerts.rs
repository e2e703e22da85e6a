//! Alert rules: made over the admin API, fired by the committed trail,
//! recorded as `alert_fired`, posted to a webhook that checks the signature,
//! carried across a restart; bad rules refused; the webhook secret never kept.

use std::time::{Duration, Instant};

use hmac::Mac;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::util::{closed_port, read_head, start_upstream, test_config, Admin, TestServer};

/// A webhook receiver: each request's head (lower-cased header names) and
/// body; every request is answered `status`.
async fn receiver(status: u16) -> (String, mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/keytrail?team=ops", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if !read_head(&mut stream, &mut buf).await {
                    return;
                }
                let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                let mut body = buf[end..].to_vec();
                while body.len() < length {
                    let mut chunk = [0u8; 4096];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => body.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = stream.write_all(format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes()).await;
                let _ = tx.send((head, body));
            });
        }
    });
    (url, rx)
}

fn header<'h>(head: &'h str, name: &str) -> &'h str {
    head.lines().find_map(|l| l.strip_prefix(&format!("{name}:"))).map(str::trim).unwrap_or_else(|| panic!("no {name} in {head}"))
}

async fn start_fast(adjust: impl FnOnce(&mut keytrail::config::Config)) -> TestServer {
    start_fast_in(tempfile::tempdir().unwrap(), adjust).await
}

/// A server on `dir` whose alert engine turns every 30 ms and whose
/// webhooks are tried again after 20 ms.
async fn start_fast_in(dir: tempfile::TempDir, adjust: impl FnOnce(&mut keytrail::config::Config)) -> TestServer {
    TestServer::start_with(dir, |c| {
        c.alerts.poll_interval = Duration::from_millis(30);
        c.alerts.webhook_backoff = Duration::from_millis(20);
        adjust(c);
    })
    .await
}

/// keytrail started again on the data in `dir` (its first server stopped),
/// its engine turning every 30 ms, and `admin` pointed at it.
async fn restart(dir: &std::path::Path, admin: &Admin) -> (keytrail::server::Server, Admin) {
    let mut config = test_config(dir);
    config.alerts.poll_interval = Duration::from_millis(30);
    let server = keytrail::server::start(config).await.unwrap();
    let admin = Admin { base: format!("http://{}", server.admin_addr), ..admin.clone() };
    (server, admin)
}

async fn failed_calls(ts: &TestServer, n: usize) {
    for _ in 0..n {
        let res = ts.client.get(format!("{}/docs/x", ts.gateway)).header("X-API-Key", "kt_live_nope").send().await.unwrap();
        assert_eq!(res.status(), 401);
    }
}

/// Polls `path` until its `field` list has `n` entries (at most 10 s).
async fn wait_list(admin: &Admin, path: &str, field: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = admin.get(path).await;
        assert_eq!(a.status, 200, "{}", a.text);
        let items = a.body[field].as_array().cloned().unwrap_or_default();
        if items.len() >= n {
            return items;
        }
        assert!(Instant::now() < deadline, "waited 10 s for {n} {field} at {path}: {}", a.text);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn brute_force_rule(id: &str, webhook: Option<&str>) -> Value {
    let mut rule = json!({
        "id": id,
        "description": "many failed keys from one address",
        "match": {"event_type": "auth_failed"},
        "threshold": 3,
        "window_secs": 3600,
        "group_by": "client_ip",
    });
    if let Some(url) = webhook {
        rule["webhook_url"] = json!(url);
    }
    rule
}

#[tokio::test]
async fn a_brute_force_rule_fires_once_is_recorded_and_posts_a_signed_webhook() {
    let mut ts = start_fast(|_| {}).await;
    let admin = ts.admin_client();
    let up = start_upstream().await;
    admin.setup("acme", "/docs", &format!("http://{up}")).await;
    let (url, mut posts) = receiver(200).await;
    let made = admin.post("/v1/tenants/acme/alerts", brute_force_rule("brute-force", Some(&url))).await;
    assert_eq!(made.status, 201, "{}", made.text);
    let secret = made.body["webhook_secret"].as_str().unwrap().to_string();
    assert_eq!(made.headers.get("cache-control").map(String::as_str), Some("no-store"), "an answer with a secret is never cached");
    assert!(secret.starts_with("ktwh_") && secret.len() == 5 + 64, "{secret}");
    assert_eq!((made.body["threshold"].as_u64(), made.body["group_by"].as_str()), (Some(3), Some("client_ip")));
    assert_eq!(made.body["status"]["fired"], 0);

    // Three failed keys fire it; six more within the hour (the cooldown) do not.
    failed_calls(&ts, 3).await;
    let (head, body) = tokio::time::timeout(Duration::from_secs(10), posts.recv()).await.expect("a webhook post").unwrap();
    assert!(head.starts_with("post /hooks/keytrail?team=ops http/1.1"), "{head}");
    assert_eq!(header(&head, "content-type"), "application/json");
    let timestamp = header(&head, "keytrail-timestamp");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(&body);
    let wanted: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(header(&head, "keytrail-signature"), format!("v1={wanted}"), "the signature is the HMAC of timestamp and body");
    let posted: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(posted["type"], "alert_fired");
    assert_eq!((posted["tenant_id"].as_str(), posted["rule_id"].as_str()), (Some("acme"), Some("brute-force")));
    assert_eq!((posted["count"].as_u64(), posted["group"].as_str()), (Some(3), Some("127.0.0.1")));
    assert_eq!(header(&head, "keytrail-alert-id"), posted["alert_id"].as_str().unwrap());
    assert!(posted["first_seq"].as_u64().unwrap() < posted["last_seq"].as_u64().unwrap());

    failed_calls(&ts, 6).await;
    ts.flush().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fired = wait_list(&admin, "/v1/audit/acme/security?event_type=alert_fired", "events", 1).await;
    assert_eq!(fired.len(), 1, "one alert per cooldown: {fired:?}");
    assert!(posts.try_recv().is_err(), "no second post");
    let event = &fired[0];
    assert_eq!((event["actor"].as_str(), event["target"].as_str()), (Some("keytrail:alerts"), Some("alert:brute-force")));
    let status = admin.get("/v1/status").await.body["alerts"].clone();
    assert_eq!((status["rules"].as_u64(), status["last_error"].clone()), (Some(1), Value::Null), "{status}");
    assert!(status["events_read"].as_u64().unwrap() >= 9 && status["turns"].as_u64().unwrap() > 0, "{status}");
    let rule = admin.get("/v1/tenants/acme/alerts/brute-force").await;
    assert_eq!((rule.body["status"]["fired"].as_u64(), rule.body["status"]["deliveries_succeeded"].as_u64()), (Some(1), Some(1)), "{}", rule.text);
    assert!(rule.body.get("webhook_secret").is_none(), "the secret is shown once: {}", rule.text);
    let verified = admin.get("/v1/audit/acme/verify").await;
    assert_eq!((verified.status, verified.body["ok"].as_bool()), (200, Some(true)), "{}", verified.text);

    // A viewer reads the rule with the webhook's host and port only (its
    // path may be a receiver's credential); so does the admin log.
    let viewer = admin.new_admin("watcher", "viewer", None).await;
    let seen = viewer.get("/v1/tenants/acme/alerts/brute-force").await;
    assert_eq!(seen.status, 200, "{}", seen.text);
    let host = url.trim_start_matches("http://").split('/').next().unwrap();
    assert_eq!(seen.body["webhook_url"], format!("http://{host}/…"), "{}", seen.text);
    assert_eq!(viewer.get("/v1/tenants/acme/alerts").await.body["alerts"][0]["webhook_url"], seen.body["webhook_url"]);
    assert_eq!(admin.get("/v1/tenants/acme/alerts/brute-force").await.body["webhook_url"], url.as_str(), "those who may change it see it whole");
    let log = admin.get("/v1/audit/acme/admin").await;
    assert!(log.text.contains("ALERT_RULE_CREATED") && !log.text.contains("team=ops") && !log.text.contains("/hooks/keytrail"), "{}", log.text);

    // The secret is nowhere: not in a file of the data directory, not in
    // an event, not in a later answer; a call that carries it is masked.
    let res = ts.client.get(format!("{}/docs/{secret}", ts.gateway)).header("X-API-Key", "kt_live_nope").send().await.unwrap();
    assert_eq!(res.status(), 401);
    let listed = admin.get("/v1/tenants/acme/alerts").await;
    ts.flush().await;
    let answers = [listed.text, admin.get("/v1/audit/acme?limit=500").await.text, admin.get("/v1/audit/acme/admin").await.text];
    ts.stop().await;
    let reader = keytrail::store::audit::AuditReader::open(&ts.audit_dir()).unwrap();
    let events: String = reader.chain("acme").unwrap().iter().map(|e| format!("{:?}\n", e.event)).collect();
    assert!(events.contains("alert_fired") && events.contains("ktwh****"), "the call with the secret was recorded masked");
    let mut outputs = vec![events.into_bytes()];
    outputs.extend(answers.map(String::into_bytes));
    let mut stack = vec![ts.data_dir.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() { stack.push(path) } else { outputs.push(std::fs::read(path).unwrap()) }
        }
    }
    let hex = &secret["ktwh_".len()..];
    for output in &outputs {
        assert!(!output.windows(hex.len()).any(|w| w == hex.as_bytes()), "the webhook secret was found in an output");
    }
}

#[tokio::test]
async fn a_dead_webhook_is_tried_again_then_recorded_as_failed_without_its_path() {
    let mut ts = start_fast(|c| c.alerts.webhook_attempts = 3).await;
    let admin = ts.admin_client();
    let up = start_upstream().await;
    admin.setup("acme", "/docs", &format!("http://{up}")).await;
    let dead = format!("http://{}/hooks/private-path?token=receiver-own-secret", closed_port().await);
    assert_eq!(admin.post("/v1/tenants/acme/alerts", brute_force_rule("bf", Some(&dead))).await.status, 201);
    // A receiver that answers 500 is not a delivery either.
    let (failing, mut posts) = receiver(500).await;
    let mut rule = brute_force_rule("bf-500", Some(&failing));
    rule["threshold"] = json!(2);
    assert_eq!(admin.post("/v1/tenants/acme/alerts", rule).await.status, 201);

    failed_calls(&ts, 3).await;
    let failed = wait_list(&admin, "/v1/audit/acme/security?event_type=alert_delivery_failed", "events", 2).await;
    for tries in 0..3 {
        tokio::time::timeout(Duration::from_secs(5), posts.recv()).await.unwrap_or_else(|_| panic!("try {tries} of 3"));
    }
    let text = serde_json::to_string(&failed).unwrap();
    assert!(!text.contains("private-path") && !text.contains("receiver-own-secret"), "{text}");
    let dead_status = admin.get("/v1/tenants/acme/alerts/bf").await.body["status"].clone();
    assert_eq!((dead_status["fired"].as_u64(), dead_status["deliveries_failed"].as_u64()), (Some(1), Some(1)), "{dead_status}");
    assert!(dead_status["last_delivery_error"].as_str().unwrap().contains("cannot connect"), "{dead_status}");
    let status = admin.get("/v1/tenants/acme/alerts/bf-500").await.body["status"].clone();
    assert_eq!(status["last_delivery_error"], "the webhook answered 500", "{status}");
    // The trail went on being written meanwhile, and verifies.
    let verified = admin.get("/v1/audit/acme/verify").await;
    assert_eq!(verified.body["ok"].as_bool(), Some(true), "{}", verified.text);
    ts.stop().await;
}

/// When keytrail stops, a delivery waiting for its next try makes no more
/// and is recorded as `alert_delivery_failed` — its tries so far, and that
/// keytrail stopped — instead of vanishing; the stop does not wait out the
/// backoff.
#[tokio::test]
async fn a_delivery_still_owed_a_try_when_keytrail_stops_is_recorded_not_lost() {
    let mut ts = start_fast(|c| c.alerts.webhook_backoff = Duration::from_secs(600)).await;
    let admin = ts.admin_client();
    let up = start_upstream().await;
    admin.setup("acme", "/docs", &format!("http://{up}")).await;
    let (failing, mut posts) = receiver(503).await;
    assert_eq!(admin.post("/v1/tenants/acme/alerts", brute_force_rule("bf", Some(&failing))).await.status, 201);
    failed_calls(&ts, 3).await;
    tokio::time::timeout(Duration::from_secs(10), posts.recv()).await.expect("the first try").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin.get("/v1/tenants/acme/alerts/bf").await.body["status"]["last_delivery_error"].is_null() {
        assert!(Instant::now() < deadline, "the first try's answer was not seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let stopping = Instant::now();
    ts.stop().await;
    assert!(stopping.elapsed() < Duration::from_secs(5), "the stop waited {:?}: the backoff is 600 s", stopping.elapsed());
    assert!(posts.try_recv().is_err(), "no second try");
    let reader = keytrail::store::audit::AuditReader::open(&ts.audit_dir()).unwrap();
    let failed: Vec<_> = reader.chain("acme").unwrap().into_iter().map(|e| e.event).filter(|e| &*e.event_type == "alert_delivery_failed").collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    let event = &failed[0];
    assert_eq!(event.target.as_deref(), Some("alert:bf"));
    let message = event.error_message.as_deref().unwrap();
    assert!(message.contains("the webhook answered 503") && message.contains("keytrail stopped before the next try"), "{message}");
    assert_eq!(event.details.as_ref().unwrap()["attempts"], 1, "{event:?}");
}

#[tokio::test]
async fn counts_carry_over_a_restart_and_a_firing_is_not_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().to_path_buf();
    let mut ts = start_fast_in(dir, |_| {}).await;
    let admin = ts.admin_client();
    let up = start_upstream().await;
    admin.setup("acme", "/docs", &format!("http://{up}")).await;
    let mut rule = brute_force_rule("bf", None);
    rule["threshold"] = json!(4);
    assert_eq!(admin.post("/v1/tenants/acme/alerts", rule).await.status, 201);
    let mut other = brute_force_rule("bf-two", None);
    other["threshold"] = json!(2);
    assert_eq!(admin.post("/v1/tenants/acme/alerts", other).await.status, 201);
    failed_calls(&ts, 2).await;
    // `bf-two` fires on the second; `bf` has counted two of four.
    wait_list(&admin, "/v1/audit/acme/security?event_type=alert_fired", "events", 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    ts.stop().await;

    let (server, admin) = restart(&keep, &admin).await;
    let gateway = format!("http://{}", server.gateway_addr);
    for _ in 0..2 {
        let res = ts.client.get(format!("{gateway}/docs/x")).header("X-API-Key", "kt_live_nope").send().await.unwrap();
        assert_eq!(res.status(), 401);
    }
    // Two before the restart and two after reach `bf`'s four; `bf-two`,
    // in its cooldown, does not fire again, nor is its first firing repeated.
    let fired = wait_list(&admin, "/v1/audit/acme/security?event_type=alert_fired", "events", 2).await;
    server.audit.flush().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fired_again = admin.get("/v1/audit/acme/security?event_type=alert_fired").await.body["events"].as_array().unwrap().clone();
    assert_eq!(fired_again.len(), 2, "{fired_again:?}");
    let targets: Vec<&str> = fired.iter().map(|e| e["target"].as_str().unwrap()).collect();
    assert_eq!(targets, ["alert:bf", "alert:bf-two"], "newest first");
    server.shutdown().await;
}

#[tokio::test]
async fn a_changed_or_disabled_rule_counts_afresh_and_a_deleted_one_stops() {
    let mut ts = start_fast(|_| {}).await;
    let admin = ts.admin_client();
    let up = start_upstream().await;
    admin.setup("acme", "/docs", &format!("http://{up}")).await;
    assert_eq!(admin.post("/v1/tenants/acme/alerts", brute_force_rule("bf", None)).await.status, 201);
    failed_calls(&ts, 2).await;
    ts.flush().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Replaced (the same threshold): the two before do not count.
    let mut spec = brute_force_rule("bf", None);
    spec.as_object_mut().unwrap().remove("id");
    let replaced = admin.call("PUT", "/v1/tenants/acme/alerts/bf", Some(spec.clone())).await;
    assert_eq!(replaced.status, 200, "{}", replaced.text);
    assert_ne!(replaced.body["updated_at"], replaced.body["created_at"]);
    failed_calls(&ts, 2).await;
    ts.flush().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(admin.get("/v1/audit/acme/security?event_type=alert_fired").await.body["events"].as_array().unwrap().len(), 0);
    failed_calls(&ts, 1).await;
    wait_list(&admin, "/v1/audit/acme/security?event_type=alert_fired", "events", 1).await;

    spec["enabled"] = json!(false);
    spec["cooldown_secs"] = json!(0);
    assert_eq!(admin.call("PUT", "/v1/tenants/acme/alerts/bf", Some(spec)).await.status, 200);
    failed_calls(&ts, 4).await;
    ts.flush().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(admin.get("/v1/audit/acme/security?event_type=alert_fired").await.body["events"].as_array().unwrap().len(), 1, "disabled");
    assert_eq!(admin.call("DELETE", "/v1/tenants/acme/alerts/bf", None).await.status, 204);
    assert_eq!(admin.get("/v1/tenants/acme/alerts/bf").await.status, 404);
    assert_eq!(admin.get("/v1/tenants/acme/alerts").await.body["alerts"], json!([]));
    // Every change is in the admin log.
    let log = admin.get("/v1/audit/acme/admin").await;
    for action in ["ALERT_RULE_CREATED", "ALERT_RULE_CHANGED", "ALERT_RULE_DELETED"] {
        assert!(log.text.contains(action), "{action}: {}", log.text);
    }
    ts.stop().await;
}

#[tokio::test]
async fn bad_rules_are_refused_naming_what_to_fix() {
    let mut ts = start_fast(|_| {}).await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    let own_admin = ts.admin.trim_start_matches("http://").to_string();
    let base = brute_force_rule("r", None);
    let with = |change: &dyn Fn(&mut Value)| {
        let mut body = base.clone();
        change(&mut body);
        body
    };
    let cases: Vec<(Value, &str)> = vec![
        (json!([1, 2]), "JSON object"),
        (with(&|b| drop(b.as_object_mut().unwrap().remove("id"))), "`id` is missing"),
        (with(&|b| b["id"] = json!("Bad Id")), "`id` must be"),
        (with(&|b| b["id"] = json!(7)), "`id`: must be a string"),
        (with(&|b| b["match"] = json!({})), "`match` needs"),
        (with(&|b| b["match"] = json!({"event_type": "alert_fired"})), "cannot be `alert_fired`"),
        (with(&|b| b["match"] = json!({"category": "nonsense"})), "match.category"),
        (with(&|b| b["match"] = json!({"status_min": 99})), "`match.status_min`"),
        (with(&|b| b["match"] = json!({"colour": "red"})), "unknown field `colour`"),
        (with(&|b| b["threshold"] = json!(0)), "`threshold`"),
        (with(&|b| b["threshold"] = json!(-1)), "threshold"),
        (with(&|b| b["window_secs"] = json!(86_401)), "`window_secs`"),
        (with(&|b| b["cooldown_secs"] = json!(100_000)), "`cooldown_secs`"),
        (with(&|b| b["group_by"] = json!("country")), "group_by"),
        (with(&|b| b["description"] = json!("key kt_live_abcdefghijklmnopqrstuvwxyz0123456789AB")), "must not hold an API key"),
        (with(&|b| b["webhook_url"] = json!("https://hooks.example.com/x")), "no TLS client"),
        (with(&|b| b["webhook_url"] = json!("http://u:p@hooks.example.com/x")), "without credentials"),
        (with(&|b| b["webhook_url"] = json!(format!("http://{own_admin}/v1/status"))), "may not be used"),
        (with(&|b| b["webhook_url"] = json!("http://hooks.example.com/?k=kt_live_abcdefghijklmnopqrstuvwxyz0123456789AB")), "must not hold an API key"),
        (with(&|b| b["surprise"] = json!(true)), "unknown field `surprise`"),
    ];
    for (body, wanted) in cases {
        let a = admin.post("/v1/tenants/acme/alerts", body.clone()).await;
        assert_eq!(a.status, 400, "{body}: {}", a.text);
        assert_eq!(a.body["error"]["code"], "invalid_body", "{}", a.text);
        assert!(a.body["error"]["message"].as_str().unwrap().contains(wanted), "{wanted}: {}", a.text);
        assert!(!a.text.contains("kt_live_abcdefghijklmnop"), "a key in the body is not repeated: {}", a.text);
    }
    let a = admin.call("POST", "/v1/tenants/acme/alerts", None).await;
    assert_eq!(a.status, 400, "{}", a.text);
    assert_eq!(admin.post("/v1/tenants/nope/alerts", base.clone()).await.status, 404);
    assert_eq!(admin.get("/v1/tenants/acme/alerts/missing").await.status, 404);
    assert_eq!(admin.call("DELETE", "/v1/tenants/acme/alerts/missing", None).await.status, 404);
    let mut spec = base.clone();
    spec.as_object_mut().unwrap().remove("id");
    assert_eq!(admin.call("PUT", "/v1/tenants/acme/alerts/missing", Some(spec)).await.status, 404);
    assert_eq!(admin.post("/v1/tenants/acme/alerts", base.clone()).await.status, 201);
    let again = admin.post("/v1/tenants/acme/alerts", base.clone()).await;
    assert_eq!((again.status, again.body["error"]["code"].as_str()), (409, Some("conflict")), "{}", again.text);
    let empty = admin.call("PUT", "/v1/tenants/acme/alerts/r", None).await;
    assert_eq!(empty.status, 400, "{}", empty.text);
    assert!(empty.text.contains("replaces the whole setting"), "{}", empty.text);
    // At most 100 rules a tenant.
    for i in 1..100 {
        assert_eq!(admin.post("/v1/tenants/acme/alerts", with(&|b| b["id"] = json!(format!("r{i}")))).await.status, 201);
    }
    let over = admin.post("/v1/tenants/acme/alerts", with(&|b| b["id"] = json!("r100"))).await;
    assert_eq!(over.status, 409, "{}", over.text);
    assert!(over.text.contains("100 alert rules"), "{}", over.text);
    ts.stop().await;
}

#[tokio::test]
async fn a_tenant_whose_trail_cannot_be_read_holds_up_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().to_path_buf();
    let mut ts = start_fast_in(dir, |_| {}).await;
    let admin = ts.admin_client();
    let up = start_upstream().await;
    admin.setup("acme", "/docs", &format!("http://{up}")).await;
    admin.setup("globex", "/shop", &format!("http://{up}")).await;
    for tenant in ["acme", "globex"] {
        assert_eq!(admin.post(&format!("/v1/tenants/{tenant}/alerts"), brute_force_rule("bf", None)).await.status, 201);
    }
    failed_calls(&ts, 1).await;
    ts.flush().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin.get("/v1/status").await.body["alerts"]["events_read"].as_u64().unwrap() == 0 {
        assert!(Instant::now() < deadline, "the engine read nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ts.stop().await;
    // acme's blocks no longer decode: its replay after the restart fails.
    for entry in std::fs::read_dir(keep.join("audit")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "db") && path.file_name().unwrap() != "meta.db" {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute("UPDATE blocks SET data = x'00' WHERE tenant = (SELECT id FROM strings WHERE value = 'acme')", []).unwrap();
        }
    }
    let (server, admin) = restart(&keep, &admin).await;
    for _ in 0..3 {
        let res = ts.client.get(format!("http://{}/shop/x", server.gateway_addr)).header("X-API-Key", "kt_live_nope").send().await.unwrap();
        assert_eq!(res.status(), 401);
    }
    let fired = wait_list(&admin, "/v1/audit/globex/security?event_type=alert_fired", "events", 1).await;
    assert_eq!(fired[0]["target"], "alert:bf");
    let status = admin.get("/v1/status").await.body["alerts"].clone();
    assert!(status["last_error"].as_str().is_some_and(|e| e.contains("tenant `acme`")), "{status}");
    server.shutdown().await;
}

/// The `keytrail-signature` a post carries for `secret`: `v1=` and the
/// HMAC-SHA-256 of `<timestamp>.<body>`.
fn signed(secret: &str, head: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{}.", header(head, "keytrail-timestamp")).as_bytes());
    mac.update(body);
    format!("v1={}", mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// A rule's webhook secret is rotated (`POST …/alerts/{rule}/rotate-secret`):
/// the new one is shown this once (never cached); for the grace the posts
/// carry both signatures, the new secret's first, so a receiver still on
/// the old one misses nothing; after a rotation without grace, the new
/// one's alone. A rule without a webhook has no secret to rotate (409);
/// a grace over 30 days, an unknown field, an unknown rule and a viewer
/// are refused. No secret is in a later read or the admin log.
#[tokio::test]
async fn a_webhook_secret_is_rotated_and_both_sign_during_the_grace() {
    let ts = start_fast(|_| {}).await;
    let admin = ts.admin_client();
    let up = start_upstream().await;
    admin.setup("acme", "/docs", &format!("http://{up}")).await;
    let (url, mut posts) = receiver(200).await;
    let mut rule = brute_force_rule("brute-force", Some(&url));
    rule["cooldown_secs"] = json!(0);
    let made = admin.post("/v1/tenants/acme/alerts", rule).await;
    assert_eq!(made.status, 201, "{}", made.text);
    let first = made.body["webhook_secret"].as_str().unwrap().to_string();
    let rotate = "/v1/tenants/acme/alerts/brute-force/rotate-secret";

    let a = admin.call("POST", rotate, None).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.headers.get("cache-control").map(String::as_str), Some("no-store"), "an answer with a secret is never cached");
    let second = a.body["webhook_secret"].as_str().unwrap().to_string();
    assert!(second.starts_with("ktwh_") && second.len() == first.len() && second != first, "{second}");
    assert_eq!((a.body["id"].as_str(), a.body["threshold"].as_u64()), (Some("brute-force"), Some(3)), "{}", a.text);
    let until = chrono::DateTime::parse_from_rfc3339(a.body["previous_secret_expires_at"].as_str().unwrap()).unwrap();
    let in_a_day = chrono::Utc::now() + chrono::Duration::hours(24);
    assert!((until.timestamp() - in_a_day.timestamp()).abs() < 60, "a day's grace by default: {until}");

    failed_calls(&ts, 3).await;
    let (head, body) = tokio::time::timeout(Duration::from_secs(10), posts.recv()).await.expect("a webhook post").unwrap();
    assert_eq!(header(&head, "keytrail-signature"), format!("{}, {}", signed(&second, &head, &body), signed(&first, &head, &body)));

    let a = admin.post(rotate, json!({"grace_seconds": 0})).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let third = a.body["webhook_secret"].as_str().unwrap().to_string();
    assert!(third != second && third != first);
    assert!(a.body["previous_secret_expires_at"].is_null(), "{}", a.text);
    failed_calls(&ts, 3).await;
    let (head, body) = tokio::time::timeout(Duration::from_secs(10), posts.recv()).await.expect("a webhook post").unwrap();
    assert_eq!(header(&head, "keytrail-signature"), signed(&third, &head, &body), "no grace: the new secret alone");

    // Refusals.
    assert_eq!(admin.post("/v1/tenants/acme/alerts", brute_force_rule("quiet", None)).await.status, 201);
    let a = admin.call("POST", "/v1/tenants/acme/alerts/quiet/rotate-secret", None).await;
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (409, Some("conflict")), "{}", a.text);
    assert!(a.body["error"]["message"].as_str().unwrap().contains("webhook_url"), "{}", a.text);
    for (body, wanted) in [(json!({"grace_seconds": 30 * 86_400 + 1}), "at most"), (json!({"grace": 5}), "unknown field"), (json!({"grace_seconds": -1}), "grace_seconds"), (Value::Null, "invalid type")] {
        let a = admin.post(rotate, body.clone()).await;
        assert_eq!((a.status, a.body["error"]["code"].as_str()), (400, Some("invalid_body")), "{body}: {}", a.text);
        assert!(a.text.contains(wanted), "{body}: {}", a.text);
    }
    assert_eq!(admin.call("POST", "/v1/tenants/acme/alerts/nope/rotate-secret", None).await.status, 404);
    assert_eq!(admin.call("POST", "/v1/tenants/nope/alerts/brute-force/rotate-secret", None).await.status, 404);
    let viewer = admin.new_admin("watcher", "viewer", None).await;
    let a = viewer.call("POST", rotate, None).await;
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (403, Some("forbidden")), "{}", a.text);

    // The refusals changed nothing: the last secret still signs alone.
    failed_calls(&ts, 3).await;
    let (head, body) = tokio::time::timeout(Duration::from_secs(10), posts.recv()).await.expect("a webhook post").unwrap();
    assert_eq!(header(&head, "keytrail-signature"), signed(&third, &head, &body));
    let reads = [admin.get("/v1/tenants/acme/alerts/brute-force").await.text, admin.get("/v1/audit/acme/admin").await.text];
    assert!(reads[1].contains("ALERT_SECRET_ROTATED"), "{}", reads[1]);
    for secret in [&first, &second, &third] {
        for read in &reads {
            assert!(!read.contains(&secret["ktwh_".len()..]), "a secret in a later answer: {read}");
        }
    }
}
