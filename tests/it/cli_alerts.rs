//! `keytrail alerts list|create|enable|disable|rotate-secret|delete`, run as the real
//! binary against a real server: the rule made is the one that fires, the
//! webhook secret is printed once, bad input is refused saying what to fix.

use serde_json::Value;

use crate::util::{run_cli, start_upstream, TestServer, ADMIN_TOKEN};

const TOKEN: [(&str, &str); 1] = [("KEYTRAIL_TOKEN", ADMIN_TOKEN)];

async fn alerts(ts: &TestServer, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["alerts"];
    all.extend_from_slice(args);
    all.extend(["--admin-url", ts.admin.as_str(), "--tenant", "acme"]);
    run_cli(&all, &TOKEN).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_are_managed_from_the_command_line() {
    let mut ts = TestServer::start_with(tempfile::tempdir().unwrap(), |c| c.alerts.poll_interval = std::time::Duration::from_millis(30)).await;
    let admin = ts.admin_client();
    let up = format!("http://{}", start_upstream().await);
    admin.setup("acme", "/docs", &up).await;

    let (ok, out, err) = alerts(
        &ts,
        &[
            "create", "brute-force", "--event-type", "auth_failed", "--threshold", "2", "--window-secs", "60", "--group-by", "client_ip",
            "--webhook-url", "http://127.0.0.1:9/hooks/private-path", "--description", "refused keys",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("Created alert rule brute-force in tenant acme: fires at 2 events in 60 s per client_ip (event_type=auth_failed)"), "{out}");
    let secrets: Vec<&str> = out.lines().filter(|l| l.starts_with("ktwh_")).collect();
    assert_eq!(secrets.len(), 1, "the secret on a line of its own: {out}");
    let secret = secrets[0].to_string();
    // The consumer by its name, a server error rule, made disabled.
    let (ok, out, err) = alerts(&ts, &["create", "errors", "--consumer", "acme-client", "--status-min", "500", "--threshold", "5", "--window-secs", "300", "--disabled"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("status>=500") && !out.contains("ktwh_"), "{out}");

    for _ in 0..2 {
        let res = ts.client.get(format!("{}/docs/x", ts.gateway)).header("X-API-Key", "kt_live_nope").send().await.unwrap();
        assert_eq!(res.status(), 401);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let listed = loop {
        let (ok, out, err) = alerts(&ts, &["list"]).await;
        assert!(ok, "{err}");
        let row = out.lines().find(|l| l.trim_start().starts_with("brute-force")).unwrap_or_else(|| panic!("{out}")).to_string();
        if row.split_whitespace().any(|w| w == "1") {
            break out;
        }
        assert!(std::time::Instant::now() < deadline, "the rule did not fire: {out}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(listed.contains("127.0.0.1:9") && !listed.contains("private-path"), "the webhook's host, not its path: {listed}");
    assert!(listed.lines().any(|l| l.trim_start().starts_with("errors") && l.contains(" no ")), "{listed}");
    assert!(!listed.contains(&secret), "{listed}");
    let (ok, out, _) = alerts(&ts, &["list", "--json"]).await;
    assert!(ok);
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["alerts"].as_array().unwrap().len(), 2, "{out}");
    assert!(!out.contains(&secret));

    // A new secret, printed once; the old one signs beside it for the grace.
    let (ok, out, err) = alerts(&ts, &["rotate-secret", "brute-force", "--grace-secs", "60"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("Rotated the webhook secret of alert rule brute-force in tenant acme (the old one signs beside it until "), "{out}");
    let rotated: Vec<&str> = out.lines().filter(|l| l.starts_with("ktwh_")).collect();
    assert!(rotated.len() == 1 && rotated[0] != secret, "a new secret on a line of its own: {out}");
    assert!(!out.contains("private-path"), "{out}");
    let (ok, out, err) = alerts(&ts, &["rotate-secret", "brute-force", "--grace-secs", "0", "--json"]).await;
    assert!(ok, "{err}");
    let json: Value = serde_json::from_str(&out).unwrap();
    assert!(json["previous_secret_expires_at"].is_null() && json["webhook_secret"].as_str().is_some_and(|s| s != rotated[0]), "{out}");

    let (ok, out, err) = alerts(&ts, &["enable", "errors"]).await;
    assert!(ok && out.contains("enabled"), "{out}{err}");
    assert_eq!(admin.get("/v1/tenants/acme/alerts/errors").await.body["enabled"], true);
    assert_eq!(admin.get("/v1/tenants/acme/alerts/errors").await.body["match"]["status_min"], 500, "the rest of the rule kept");
    let (ok, out, err) = alerts(&ts, &["disable", "brute-force"]).await;
    assert!(ok && out.contains("disabled"), "{out}{err}");
    let kept = admin.get("/v1/tenants/acme/alerts/brute-force").await.body;
    assert_eq!((kept["enabled"].as_bool(), kept["group_by"].as_str(), kept["threshold"].as_u64()), (Some(false), Some("client_ip"), Some(2)));
    let (ok, out, err) = alerts(&ts, &["delete", "errors"]).await;
    assert!(ok && out.contains("Deleted alert rule errors"), "{out}{err}");
    assert_eq!(admin.get("/v1/tenants/acme/alerts/errors").await.status, 404);

    // Bad input: usage errors (exit 2) before anything is sent, or the
    // server's refusal (exit 1), each saying what to fix.
    let cases: [(&[&str], i32, &str); 10] = [
        (&["create", "x", "--threshold", "2", "--window-secs", "60"], 2, "give what the rule counts"),
        (&["create", "Bad Id", "--event-type", "a", "--threshold", "2", "--window-secs", "60"], 2, "no alert rule's id"),
        (&["create", "x", "--event-type", "a", "--threshold", "2", "--window-secs", "60", "--group-by", "country"], 2, "--group-by"),
        (&["create", "x", "--event-type", "a", "--threshold", "0", "--window-secs", "60"], 1, "`threshold` must be from 1 to 10000"),
        (&["create", "x", "--event-type", "a", "--threshold", "2", "--window-secs", "60", "--webhook-url", "https://h.example/x"], 1, "no TLS client"),
        (&["delete", "missing"], 1, "not_found"),
        (&["rotate-secret", "missing"], 1, "not_found"),
        (&["rotate-secret", "brute-force", "--grace-secs", "2592001"], 2, "--grace-secs must be at most 2592000"),
        (&["rotate-secret", "Bad Id"], 2, "no alert rule's id"),
        (&["enable", "kt_live_abcdefghijklmnopqrstuvwxyz0123456789AB"], 2, "no alert rule's id"),
    ];
    for (args, code, wanted) in cases {
        let mut all = vec!["alerts"];
        all.extend_from_slice(args);
        all.extend(["--admin-url", ts.admin.as_str(), "--tenant", "acme"]);
        let output = std::process::Command::new(crate::util::binary()).args(&all).env("KEYTRAIL_TOKEN", ADMIN_TOKEN).output().unwrap();
        let err = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(wanted), "{args:?}: {err}");
        assert!(!err.contains("abcdefghijklmnop"), "a key given as an id is not repeated: {err}");
    }
    ts.stop().await;
}
