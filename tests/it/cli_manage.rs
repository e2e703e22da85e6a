//! `keytrail keys list|show|create|rotate|revoke|scopes` and `keytrail audit
//! list|security|export`, run as the real binary against a real server:
//! what they change is what the gateway then does, what they print is what
//! the API answered, and no key is printed but the new one, once.

use serde_json::{json, Value};

use crate::util::{run_cli, start_upstream, Admin, TestServer, ADMIN_TOKEN};

const TOKEN: [(&str, &str); 1] = [("KEYTRAIL_TOKEN", ADMIN_TOKEN)];

/// The one line of `keys create`/`rotate` output that is a key.
fn printed_key(out: &str) -> String {
    let keys: Vec<&str> = out.lines().filter(|l| l.starts_with("kt_live_") || l.starts_with("kt_test_")).collect();
    assert_eq!(keys.len(), 1, "one key line in: {out}");
    keys[0].to_string()
}

async fn status_with(ts: &TestServer, key: &str) -> u16 {
    ts.client.get(format!("{}/docs/a", ts.gateway)).header("X-API-Key", key).send().await.unwrap().status().as_u16()
}

/// A server with tenant `acme`, an api at `/docs`, a consumer and its key,
/// and one call of that key committed: (the server, the consumer's id, the key).
async fn one_call_recorded() -> (TestServer, String, String) {
    let ts = TestServer::start().await;
    let up = format!("http://{}", start_upstream().await);
    let (consumer, _, key) = ts.admin_client().setup("acme", "/docs", &up).await;
    assert_eq!(status_with(&ts, &key).await, 200);
    ts.flush().await;
    (ts, consumer, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_managed_from_the_command_line() {
    let ts = TestServer::start().await;
    let admin = ts.admin_client();
    let up = format!("http://{}", start_upstream().await);
    let (consumer, _, first) = admin.setup("acme", "/docs", &up).await;
    let url = ts.admin.as_str();
    let cli = |extra: &[&str]| {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.extend(["--admin-url".to_string(), url.to_string(), "--tenant".to_string(), "acme".to_string()]);
        args
    };
    let run = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cli(&refs, &TOKEN).await
    };
    let mut printed = Vec::new();

    // create, naming the consumer by its name: the key works at the gateway.
    let (ok, out, err) = run(cli(&["keys", "create", "--consumer", "acme-client", "--scope", "docs:read", "--scope", "docs:write"])).await;
    assert!(ok, "{err}");
    let created = printed_key(&out);
    assert!(out.contains("docs:read,docs:write"), "{out}");
    printed.push(out.clone());
    assert_eq!(status_with(&ts, &created).await, 200);
    let keys = admin.get(&format!("/v1/tenants/acme/consumers/{consumer}/keys")).await.body;
    let created_id = keys["keys"].as_array().unwrap().iter().find(|k| k["scopes"] == json!(["docs:read", "docs:write"])).unwrap()["key_id"].as_str().unwrap().to_string();
    assert!(out.contains(&created_id), "{out}");

    // list: every key by hint, never a key itself; --json is the API's answer.
    let (ok, out, err) = run(cli(&["keys", "list", "--consumer", &consumer])).await;
    assert!(ok, "{err}");
    assert!(out.contains(&created_id) && out.contains("active"), "{out}");
    assert!(!out.contains(&created) && !out.contains(&first), "{out}");
    printed.push(out);
    let (ok, out, err) = run(cli(&["keys", "list", "--consumer", "acme-client", "--json"])).await;
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed, admin.get(&format!("/v1/tenants/acme/consumers/{consumer}/keys")).await.body);
    printed.push(out);

    // scopes: replaced, applied at once.
    let (ok, out, err) = run(cli(&["keys", "scopes", &created_id, "--scope", "docs:admin"])).await;
    assert!(ok, "{err}");
    assert!(out.contains("docs:admin"), "{out}");
    let keys = admin.get(&format!("/v1/tenants/acme/consumers/{consumer}/keys")).await.body;
    assert!(keys["keys"].as_array().unwrap().iter().any(|k| k["key_id"] == created_id.as_str() && k["scopes"] == json!(["docs:admin"])), "{keys}");
    printed.push(out);

    // rotate: the new key works, the old one keeps working in its grace.
    let (ok, out, err) = run(cli(&["keys", "rotate", &created_id, "--grace-secs", "120"])).await;
    assert!(ok, "{err}");
    let rotated = printed_key(&out);
    assert_ne!(rotated, created);
    assert_eq!(status_with(&ts, &rotated).await, 200);
    assert_eq!(status_with(&ts, &created).await, 200);
    printed.push(out);
    // a rotating key cannot rotate again: the server's reason, exit 1.
    let (ok, out, err) = run(cli(&["keys", "rotate", &created_id])).await;
    assert!(!ok && err.contains("409") && err.contains("rotate its replacement"), "{err}");
    printed.push(out + &err);

    // revoke: refused by the gateway from then on.
    let (ok, out, err) = run(cli(&["keys", "revoke", &created_id])).await;
    assert!(ok, "{err}");
    assert!(out.contains("Revoked"), "{out}");
    assert_eq!(status_with(&ts, &created).await, 401);
    printed.push(out);

    // Bad input: each refused with a message saying what is wrong.
    let (ok, _, err) = run(cli(&["keys", "create", "--consumer", "nobody"])).await;
    assert!(!ok && err.contains("no consumer named `nobody`"), "{err}");
    // (values no server takes are usage errors, said before anything is asked)
    let (ok, _, err) = run(cli(&["keys", "create", "--consumer", "acme-client", "--expires-at", "tomorrow"])).await;
    assert!(!ok && err.contains("--expires-at `tomorrow` is not an RFC 3339 time"), "{err}");
    let (ok, _, err) = run(cli(&["keys", "create", "--consumer", "acme-client", "--environment", "prod"])).await;
    assert!(!ok && err.contains("--environment") && err.contains("live"), "{err}");
    // (one in the past is the server's to refuse)
    let (ok, _, err) = run(cli(&["keys", "create", "--consumer", "acme-client", "--expires-at", "2020-01-01T00:00:00Z"])).await;
    assert!(!ok && err.contains("400") && err.contains("expires_at"), "{err}");
    let (ok, _, err) = run(cli(&["keys", "revoke", "key_unknown"])).await;
    assert!(!ok && err.contains("404"), "{err}");
    let (ok, _, err) = run(cli(&["keys", "revoke", "../v1/tenants"])).await;
    assert!(!ok && err.contains("is not an id"), "{err}");
    let (ok, _, err) = run_cli(&["keys", "list", "--consumer", "acme-client", "--admin-url", url, "--tenant", "acme"], &[("KEYTRAIL_TOKEN", "wrong-token-0123456789")]).await;
    assert!(!ok && err.contains("401") && err.contains("KEYTRAIL_TOKEN") && !err.contains("wrong-token-0123456789"), "{err}");
    // Two consumers of one name: the name is not enough.
    assert_eq!(admin.post("/v1/tenants/acme/consumers", json!({"name": "twin"})).await.status, 201);
    let second = admin.post("/v1/tenants/acme/consumers", json!({"name": "twin"})).await;
    if second.status == 201 {
        let (ok, _, err) = run(cli(&["keys", "list", "--consumer", "twin"])).await;
        assert!(!ok && err.contains("2 consumers") && err.contains(second.body["id"].as_str().unwrap()), "{err}");
    } else {
        assert_eq!(second.status, 409, "{}", second.text);
    }

    // A consumer whose name looks like an id is found by its name; an id
    // no consumer has is still refused by the server.
    let lookalike = admin.post("/v1/tenants/acme/consumers", json!({"name": "cons_lookalike"})).await;
    assert_eq!(lookalike.status, 201, "{}", lookalike.text);
    let (ok, out, err) = run(cli(&["keys", "list", "--consumer", "cons_lookalike"])).await;
    assert!(ok, "{err}");
    assert!(out.contains(lookalike.body["id"].as_str().unwrap()), "{out}");
    let (ok, _, err) = run(cli(&["keys", "list", "--consumer", "cons_nobodyhasthis"])).await;
    assert!(!ok && err.contains("cons_nobodyhasthis"), "{err}");

    // Only create and rotate printed a key, and only the one they made.
    for (i, out) in printed.iter().enumerate() {
        assert!(!out.contains(&first), "output {i} holds another key: {out}");
        let holds = [&created, &rotated].iter().filter(|k| out.contains(k.as_str())).count();
        assert!(holds <= 1 && (holds == 0 || i == 0 || i == 4), "output {i}: {out}");
    }
}

/// The binary run with `args` and `envs` (as [`run_cli`], within 60 s):
/// its exit code and standard error.
async fn exit_code(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = tempfile::tempdir().unwrap();
    let mut p = crate::util::Process::spawn(args, envs, out.path(), out.path());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            return (status.code(), p.stderr());
        }
        assert!(std::time::Instant::now() < deadline, "keytrail {args:?} did not finish in 60 s\n{}", p.stderr());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A server with two tenants, `acme` (with a consumer and its key:
/// their ids and the key) and `globex`, and its admin client.
async fn acme_and_globex() -> (TestServer, Admin, String, String, String) {
    let ts = TestServer::start().await;
    let admin = ts.admin_client();
    let up = format!("http://{}", start_upstream().await);
    let (consumer, key_id, key) = admin.setup("acme", "/docs", &up).await;
    admin.setup("globex", "/globex", &up).await;
    (ts, admin, consumer, key_id, key)
}

/// `keys rotate|revoke|scopes --tenant T KEY_ID` acted on the key whatever
/// its tenant: the key routes are global and `--tenant` was not looked at,
/// so a slip in either changed another tenant's key. A key of another
/// tenant is now refused as a usage error (exit code 2) naming both
/// tenants, and nothing is changed; with its own tenant it goes on, and a
/// key no tenant has is still the server's to refuse (404, exit code 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_command_refuses_a_key_of_another_tenant() {
    let (ts, admin, consumer, key_id, key) = acme_and_globex().await;
    let url = ts.admin.as_str();
    let keys = || async { admin.get(&format!("/v1/tenants/acme/consumers/{consumer}/keys")).await.body };
    let before = keys().await;
    for command in [vec!["keys", "revoke", &key_id], vec!["keys", "rotate", &key_id], vec!["keys", "scopes", &key_id, "--scope", "docs:admin"]] {
        let args: Vec<&str> = command.iter().copied().chain(["--admin-url", url, "--tenant", "globex"]).collect();
        let (code, err) = exit_code(&args, &TOKEN).await;
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(&key_id) && err.contains("`acme`") && err.contains("`globex`") && err.contains("nothing was changed"), "{args:?}: {err}");
        assert!(!err.contains(&key), "{err}");
    }
    assert_eq!(keys().await, before, "the key is as it was");
    assert_eq!(status_with(&ts, &key).await, 200);
    // Its own tenant: done.
    let (code, err) = exit_code(&["keys", "scopes", &key_id, "--scope", "docs:admin", "--admin-url", url, "--tenant", "acme"], &TOKEN).await;
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = exit_code(&["keys", "revoke", &key_id, "--admin-url", url, "--tenant", "acme"], &TOKEN).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(status_with(&ts, &key).await, 401);
    // A key no tenant has: the server says so.
    let (code, err) = exit_code(&["keys", "revoke", "key_unknown", "--admin-url", url, "--tenant", "globex"], &TOKEN).await;
    assert!(code == Some(1) && err.contains("404"), "{err}");
}

/// `keys show KEY_ID`: one key's facts by its id alone, as a table or
/// `--json`, never the key; with `--tenant` of another tenant it is a usage
/// error naming both (exit code 2), a key nobody has is the server's 404
/// (exit code 1), and what is no id or is a pasted key is refused before
/// any call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_shown_by_its_id() {
    let (ts, _, consumer, key_id, key) = acme_and_globex().await;
    let url = ts.admin.as_str();
    let (ok, out, err) = run_cli(&["keys", "show", &key_id, "--admin-url", url], &TOKEN).await;
    assert!(ok, "{err}");
    for expected in [key_id.as_str(), "acme", consumer.as_str(), "active", "kt_live****"] {
        assert!(out.contains(expected), "{expected} in: {out}");
    }
    assert!(!out.contains(&key) && !err.contains(&key), "{out}{err}");
    let (ok, out, err) = run_cli(&["keys", "show", &key_id, "--json", "--admin-url", url, "--tenant", "acme"], &TOKEN).await;
    assert!(ok, "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((shown["tenant_id"].as_str(), shown["consumer_id"].as_str()), (Some("acme"), Some(consumer.as_str())), "{out}");
    assert!(shown.get("key").is_none(), "{out}");

    let (code, err) = exit_code(&["keys", "show", &key_id, "--admin-url", url, "--tenant", "globex"], &TOKEN).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("`acme`") && err.contains("`globex`") && err.contains("it is not shown"), "{err}");
    let (code, err) = exit_code(&["keys", "show", "key_unknown", "--admin-url", url], &TOKEN).await;
    assert!(code == Some(1) && err.contains("404"), "{err}");
    let (code, err) = exit_code(&["keys", "show", &key_id, "--admin-url", url, "--tenant", "no such/tenant"], &TOKEN).await;
    assert!(code == Some(2) && err.contains("--tenant"), "{err}");
    for bad in ["a/b", key.as_str()] {
        let (code, err) = exit_code(&["keys", "show", bad, "--admin-url", url], &TOKEN).await;
        assert_eq!(code, Some(2), "{bad}: {err}");
        assert!(!err.contains(&key), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_is_read_and_exported_from_the_command_line() {
    let ts = TestServer::start().await;
    let admin = ts.admin_client();
    let up = format!("http://{}", start_upstream().await);
    let (consumer, key_id, key) = admin.setup("acme", "/docs", &up).await;
    for _ in 0..5 {
        assert_eq!(status_with(&ts, &key).await, 200);
    }
    let missing = ts.client.get(format!("{}/docs/a", ts.gateway)).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(admin.post(&format!("/v1/keys/{key_id}/revoke"), json!({})).await.status, 200);
    ts.flush().await;
    let url = ts.admin.as_str();
    let base = ["--admin-url", url, "--tenant", "acme"];
    let with = |args: &[&'static str]| -> Vec<&str> { args.iter().copied().chain(base).collect() };

    // list: the calls, newest first, one page with the cursor of the next.
    let (ok, out, err) = run_cli(&with(&["audit", "list", "--limit", "3"]), &TOKEN).await;
    assert!(ok, "{err}");
    let rows: Vec<&str> = out.lines().skip(1).filter(|l| !l.starts_with("more:")).collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert!(rows[0].contains("401") && rows[0].contains("missing_key"), "{out}");
    let cursor = out.lines().find_map(|l| l.strip_prefix("more: add --cursor ")).expect("a next page").to_string();
    let mut next = with(&["audit", "list", "--limit", "10", "--json"]);
    next.extend(["--cursor", &cursor]);
    let (ok, out, err) = run_cli(&next, &TOKEN).await;
    assert!(ok, "{err}");
    let page: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(page["logs"].as_array().unwrap().len(), 3, "6 calls, 3 on the first page: {out}");
    // filters: by consumer name and status, as the API answers them.
    let (ok, out, err) = run_cli(&with(&["audit", "list", "--consumer", "acme-client", "--status-min", "200", "--status-max", "299", "--json"]), &TOKEN).await;
    assert!(ok, "{err}");
    let page: Value = serde_json::from_str(&out).unwrap();
    let logs = page["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 5, "{out}");
    assert!(logs.iter().all(|l| l["consumer_id"] == consumer.as_str() && l["status_code"] == 200), "{out}");
    // security: the revocation, by type.
    let (ok, out, err) = run_cli(&with(&["audit", "security", "--event-type", "key_revoked"]), &TOKEN).await;
    assert!(ok, "{err}");
    assert!(out.contains("key_revoked") && out.contains(&format!("key:{key_id}")), "{out}");
    // admin: the admin activity log, by action.
    let (ok, out, err) = run_cli(&with(&["audit", "admin", "--action", "KEY_REVOKED"]), &TOKEN).await;
    assert!(ok, "{err}");
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{out}");
    assert!(rows[0].contains("KEY_REVOKED") && rows[0].contains(&format!("key:{key_id}")) && rows[0].contains("success"), "{out}");
    // app: application events, by resource.
    let app = json!({"events": [
        {"action": "invoice.paid", "resource_type": "invoice", "resource_id": "inv_1", "actor_id": "user:42"},
        {"action": "invoice.sent", "resource_type": "invoice", "resource_id": "inv_2", "actor_id": "user:42"}
    ]});
    assert_eq!(admin.post("/v1/audit/acme/events", app).await.status, 201);
    let (ok, out, err) = run_cli(&with(&["audit", "app", "--resource-type", "invoice", "--resource-id", "inv_1"]), &TOKEN).await;
    assert!(ok, "{err}");
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{out}");
    assert!(rows[0].contains("invoice.paid") && rows[0].contains("invoice/inv_1") && rows[0].contains("user:42"), "{out}");
    let (ok, out, err) = run_cli(&with(&["audit", "app", "--action", "invoice.sent", "--json"]), &TOKEN).await;
    assert!(ok, "{err}");
    let page: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 1, "{out}");
    assert_eq!(page["events"][0]["resource_id"], "inv_2");

    // a filter the server refuses: its message, exit 1 (one only the server
    // can tell: a window counted back from now that starts after `--to`).
    let (ok, _, err) = run_cli(&with(&["audit", "list", "--hours", "1", "--to", "2020-01-01T00:00:00Z"]), &TOKEN).await;
    assert!(!ok && err.contains("400") && err.contains("hours"), "{err}");
    // (one no server takes is a usage error naming the flag and the server's
    // limit, said before asking: see `audit_filters_no_server_takes_are_usage_errors`)
    let (ok, _, err) = run_cli(&with(&["audit", "list", "--hours", "0"]), &TOKEN).await;
    assert!(!ok && err.contains("--hours") && err.contains("87840"), "{err}");
    let (ok, _, err) = run_cli(&with(&["audit", "list", "--from", "yesterday"]), &TOKEN).await;
    assert!(!ok && err.contains("from") && err.contains("RFC 3339"), "{err}");

    // export: to standard output, the API's CSV byte for byte…
    let (ok, out, err) = run_cli(&with(&["audit", "export"]), &TOKEN).await;
    assert!(ok, "{err}");
    let api_csv = ts.client.get(format!("{url}/v1/audit/acme/export/csv")).bearer_auth(ADMIN_TOKEN).send().await.unwrap().text().await.unwrap();
    assert_eq!(out, api_csv);
    assert_eq!(out.lines().count(), 1 + 6, "{out}");
    // …and to a file, which `keytrail verify --file` checks.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("acme.json");
    let mut args = with(&["audit", "export", "--format", "json", "--category", "all"]);
    args.extend(["--output", file.to_str().unwrap()]);
    let (ok, _, err) = run_cli(&args, &TOKEN).await;
    assert!(ok && err.contains("wrote"), "{err}");
    let public = keytrail::signing::public_key_text(&keytrail::signing::Signer::load_or_create(&ts.data_dir.join("signing.key")).unwrap().public_key());
    let (ok, out, err) = run_cli(&["verify", "--file", file.to_str().unwrap(), "--public-key", &public], &[]).await;
    assert!(ok, "{out}{err}");
    // Not on a terminal (as here), no progress line unless asked for; asked
    // for, a line that counts the lines (cleared at the end), the same file.
    assert!(!err.contains("exporting:"), "{err}");
    let forced = dir.path().join("forced.json");
    let mut args = with(&["audit", "export", "--format", "json", "--category", "all"]);
    args.extend(["--output", forced.to_str().unwrap()]);
    let envs = [TOKEN[0], ("KEYTRAIL_PROGRESS", "always")];
    let (ok, _, err) = run_cli(&args, &envs).await;
    assert!(ok && err.contains("exporting: ") && err.contains(" lines, ") && err.contains("\r\x1b[K"), "{err:?}");
    assert!(err.trim_start_matches(|c| c != 'w').starts_with("wrote"), "the summary comes after the cleared line: {err:?}");
    let written: Value = serde_json::from_slice(&std::fs::read(&forced).unwrap()).expect("the export is whole JSON");
    assert!(written["logs"].as_array().is_some_and(|logs| logs.len() >= 6), "an export of the calls and more");
    std::fs::remove_file(&forced).unwrap();
    let envs = [TOKEN[0], ("KEYTRAIL_PROGRESS", "sometimes")];
    let (ok, _, err) = run_cli(&with(&["audit", "export"]), &envs).await;
    assert!(!ok && err.contains("KEYTRAIL_PROGRESS `sometimes`: give auto, always or never"), "{err}");
    // On a terminal (a pseudo-terminal from `script`), shown by default
    // while the export goes to a file.
    let tty_file = dir.path().join("tty.csv");
    let command = format!(
        "KEYTRAIL_TOKEN={ADMIN_TOKEN} {} audit export --admin-url {url} --tenant acme --output {}",
        crate::util::binary(),
        tty_file.display()
    );
    let tty = std::process::Command::new("script").args(["-qec", &command, "/dev/null"]).output().expect("script (util-linux) runs");
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success() && shown.contains("exporting: ") && shown.contains("wrote"), "{shown}");
    assert_eq!(std::fs::read_to_string(&tty_file).unwrap(), api_csv);
    std::fs::remove_file(&tty_file).unwrap();
    // A refused export leaves no file behind, whole or partial. (Refused
    // by the server: a window counted back from now that starts after `--to`.)
    let refused = dir.path().join("refused.csv");
    let mut args = with(&["audit", "export", "--days", "1", "--to", "2020-01-01T00:00:00Z"]);
    args.extend(["--output", refused.to_str().unwrap()]);
    let (ok, _, err) = run_cli(&args, &TOKEN).await;
    assert!(!ok && err.contains("400"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "only acme.json");
    // --json (the other commands' table switch) is no export format: said so, nothing written.
    let (ok, out, err) = run_cli(&with(&["audit", "export", "--json"]), &TOKEN).await;
    assert!(!ok && out.is_empty() && err.contains("--format json"), "{out}{err}");
    // A format the command does not know is a usage error (exit 2).
    let out_dir = tempfile::tempdir().unwrap();
    let mut p = crate::util::Process::spawn(&with(&["audit", "export", "--format", "xml"]), &TOKEN, out_dir.path(), out_dir.path());
    assert_eq!(p.child.wait().unwrap().code(), Some(2), "{}", p.stderr());

    // No output held the key.
    assert!(!api_csv.contains(&key) && !std::fs::read_to_string(&file).unwrap().contains(&key));
}

/// `audit export -o` naming a directory (an existing one, or written with
/// a trailing `/`) is a usage error said before anything is asked: the
/// export was downloaded whole into `<dir>.partial` beside it, the rename
/// onto the directory failed ("Is a directory"), and the `.partial` was
/// left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_into_a_directory_is_refused_and_leaves_nothing() {
    let (ts, _, _) = one_call_recorded().await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("exports");
    std::fs::create_dir(&target).unwrap();
    let with_slash = format!("{}/", target.display());
    let missing_with_slash = format!("{}/", dir.path().join("not-yet").display());
    for output in [target.to_str().unwrap(), with_slash.as_str(), missing_with_slash.as_str()] {
        let mut p = crate::util::Process::spawn(
            &["audit", "export", "--admin-url", ts.admin.as_str(), "--tenant", "acme", "-o", output],
            &TOKEN,
            dir.path(),
            dir.path(),
        );
        let status = p.child.wait().unwrap();
        let err = p.stderr();
        assert_eq!(status.code(), Some(2), "{output}: {err}");
        assert!(err.contains("--output") && err.contains("directory") && err.contains("file name"), "{output}: {err}");
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("keytrail-"))
            .collect();
        assert_eq!(left, ["exports"], "{output}: nothing is written beside it");
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0, "{output}: nor in it");
    }
}

/// `investigate --consumer` takes a consumer's name, as every other
/// command's `--consumer` does: given `acme-client` it said the consumer
/// was "not one of the tenant's consumers" (consumer_not_found) and
/// exited 1. A name no consumer has is still that error, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn investigate_takes_a_consumer_by_name() {
    let ts = TestServer::start().await;
    let admin = ts.admin_client();
    let up = format!("http://{}", start_upstream().await);
    let (consumer, _, key) = admin.setup("acme", "/docs", &up).await;
    for _ in 0..3 {
        assert_eq!(status_with(&ts, &key).await, 200);
    }
    ts.flush().await;
    let url = ts.admin.as_str();
    let (ok, by_id, err) = run_cli(&["investigate", "--admin-url", url, "--tenant", "acme", "--consumer", &consumer, "--json"], &TOKEN).await;
    assert!(ok, "{err}");
    let (ok, by_name, err) = run_cli(&["investigate", "--admin-url", url, "--tenant", "acme", "--consumer", "acme-client", "--json"], &TOKEN).await;
    assert!(ok, "{err}");
    let (by_id, by_name): (Value, Value) = (serde_json::from_str(&by_id).unwrap(), serde_json::from_str(&by_name).unwrap());
    assert_eq!(by_name["consumer_id"], consumer.as_str(), "{by_name}");
    assert_eq!(by_name["profile"]["calls"], 3, "{by_name}");
    assert_eq!((&by_name["profile"]["calls"], &by_name["totals"]["calls"]), (&by_id["profile"]["calls"], &by_id["totals"]["calls"]));
    let (ok, out, err) = run_cli(&["investigate", "--admin-url", url, "--tenant", "acme", "--consumer", "acme-client"], &TOKEN).await;
    assert!(ok && out.contains(&format!("Consumer {consumer}")) && out.contains("acme-client"), "{out}{err}");
    let (ok, out, err) = run_cli(&["investigate", "--admin-url", url, "--tenant", "acme", "--consumer", "acme-clinet"], &TOKEN).await;
    assert!(!ok && out.is_empty(), "{out}");
    assert!(err.contains("consumer `acme-clinet` not found in tenant `acme`") && err.contains("consumer_not_found"), "{err}");
}

/// An admin API that sends the head and the first 5 bytes of an export and
/// then nothing more (a slow export), until the command goes: its URL.
fn slow_export_peer() -> (String, std::thread::JoinHandle<()>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut head = [0u8; 4096];
        let _ = stream.read(&mut head).unwrap();
        stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/csv\r\ntransfer-encoding: chunked\r\n\r\n5\r\na,b,c\r\n").unwrap();
        // Holds the connection open, sending nothing more, until the command goes.
        let _ = stream.read(&mut head);
    });
    (url, server)
}

/// `audit export -o file` from `url`, once its first bytes are in `file.partial`.
fn export_under_way(url: &str, file: &std::path::Path, dir: &std::path::Path) -> crate::util::Process {
    let mut partial = file.as_os_str().to_owned();
    partial.push(".partial");
    let mut p = crate::util::Process::spawn(&["audit", "export", "--admin-url", url, "--tenant", "acme", "-o", file.to_str().unwrap()], &TOKEN, dir, dir);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0) < 5 {
        assert!(p.child.try_wait().unwrap().is_none(), "{}", p.stderr());
        assert!(std::time::Instant::now() < deadline, "no bytes written");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    p
}

/// `audit export -o FILE` stopped by Ctrl-C (or SIGTERM) midway leaves no
/// file, as one the server cuts short does: the `FILE.partial` it was
/// writing stayed behind. The admin API here is a peer that sends the
/// head and the first bytes of an export and then nothing more (a slow
/// export), so the command is still writing when it is stopped. It exits
/// as shells expect of a command a signal stopped, 128 and the signal's
/// number (130 for Ctrl-C, 143 for SIGTERM); it exited with 1, as for a
/// failure.
#[test]
fn an_export_stopped_midway_leaves_no_file() {
    for (signal, code) in [("-INT", 130), ("-TERM", 143)] {
        let (url, server) = slow_export_peer();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("slow.csv");
        let partial = dir.path().join("slow.csv.partial");
        let mut p = export_under_way(&url, &file, dir.path());
        p.signal(signal);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let status = loop {
            if let Some(status) = p.child.try_wait().unwrap() {
                break status;
            }
            assert!(std::time::Instant::now() < deadline, "{signal}: still running");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(!status.success(), "{signal}: {status}");
        assert_eq!(status.code(), Some(code), "{signal}: {}", p.stderr());
        assert!(p.stderr().contains("no file was written"), "{signal}: {}", p.stderr());
        assert!(!file.exists() && !partial.exists(), "{signal}: a file is left: {}", p.stderr());
        server.join().unwrap();
    }
}

/// Two exports into the same `-o FILE` at once: the second is refused,
/// naming the file, and the first's `FILE.partial` is left alone. The
/// second truncated the first's `.partial` and wrote into it (or, failing,
/// deleted it, so the first could not rename it into place).
#[test]
fn a_second_export_into_the_same_file_is_refused() {
    let (url, server) = slow_export_peer();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shared.csv");
    let partial = dir.path().join("shared.csv.partial");
    let mut first = export_under_way(&url, &file, dir.path());
    // The second's admin API is not even there: it is refused before it asks.
    let mut second = crate::util::Process::spawn(
        &["audit", "export", "--admin-url", "http://127.0.0.1:1", "--tenant", "acme", "-o", file.to_str().unwrap()],
        &TOKEN,
        dir.path(),
        dir.path(),
    );
    let status = second.child.wait().unwrap();
    let err = second.stderr();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("another export is writing") && err.contains("shared.csv"), "{err}");
    assert_eq!(std::fs::read(&partial).unwrap(), b"a,b,c", "the first export's bytes are untouched");
    assert!(first.child.try_wait().unwrap().is_none(), "{}", first.stderr());
    first.signal("-INT");
    assert!(!first.child.wait().unwrap().success());
    assert!(!partial.exists() && !file.exists());
    server.join().unwrap();
}

/// `keytrail erase --consumer` takes a consumer's name, as `keys`, `audit`
/// and `investigate` do: given one it asked the server to erase a
/// consumer with that id (404). A name two consumers share is refused
/// listing their ids, and neither is erased; one no consumer has is
/// refused naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erase_takes_a_consumer_by_name() {
    let (ts, consumer, _) = one_call_recorded().await;
    let admin = ts.admin_client();
    let url = ts.admin.as_str();
    let names = || async {
        let list = admin.get("/v1/tenants/acme/consumers").await.body;
        list["consumers"].as_array().unwrap().iter().map(|c| (c["id"].as_str().unwrap().to_string(), c["name"].as_str().unwrap().to_string())).collect::<Vec<_>>()
    };

    let (ok, out, err) = run_cli(&["erase", "--admin-url", url, "--tenant", "acme", "--consumer", "nobody"], &TOKEN).await;
    assert!(!ok && out.is_empty() && err.contains("no consumer named `nobody`"), "{out}{err}");

    assert_eq!(admin.post("/v1/tenants/acme/consumers", json!({"name": "twin"})).await.status, 201);
    let second = admin.post("/v1/tenants/acme/consumers", json!({"name": "twin"})).await;
    if second.status == 201 {
        let (ok, out, err) = run_cli(&["erase", "--admin-url", url, "--tenant", "acme", "--consumer", "twin"], &TOKEN).await;
        assert!(!ok && out.is_empty() && err.contains("2 consumers") && err.contains(second.body["id"].as_str().unwrap()), "{out}{err}");
        assert_eq!(names().await.iter().filter(|(_, n)| n == "twin").count(), 2, "neither twin is erased");
    } else {
        assert_eq!(second.status, 409, "{}", second.text);
    }

    let (ok, out, err) = run_cli(&["erase", "--admin-url", url, "--tenant", "acme", "--consumer", "acme-client"], &TOKEN).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains(&format!("consumer {consumer}")) && out.contains(&format!("erased-{consumer}")), "{out}");
    assert!(names().await.contains(&(consumer.clone(), format!("erased-{consumer}"))), "{:?}", names().await);
    // By id, as before (a second run completes an erasure stopped partway).
    let (ok, out, err) = run_cli(&["erase", "--admin-url", url, "--tenant", "acme", "--consumer", &consumer, "--json"], &TOKEN).await;
    assert!(ok, "{out}{err}");
    let _: Value = serde_json::from_str(&out).unwrap();
}

/// A consumer whose name holds `/`, `?` or `#` (`team/app`, a name the
/// admin API takes) is named by that name as any other: `keys`, `audit`,
/// `investigate` and `erase` refused it as "not an id", exit code 2,
/// though they take names. An id-shaped value that could not be an id,
/// and `..`, are still usage errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_names_with_url_characters_are_names() {
    let ts = TestServer::start().await;
    let admin = ts.admin_client();
    let up = format!("http://{}", start_upstream().await);
    admin.setup("acme", "/docs", &up).await;
    let (slash, _, key) = admin.consumer_with_key("acme", "team/app", json!({})).await;
    let (question, _, _) = admin.consumer_with_key("acme", "who?#1", json!({})).await;
    assert_eq!(status_with(&ts, &key).await, 200);
    ts.flush().await;
    let url = ts.admin.as_str();
    let base = ["--admin-url", url, "--tenant", "acme"];
    let run = |args: &[&str]| {
        let args: Vec<String> = args.iter().chain(base.iter()).map(|s| s.to_string()).collect();
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            run_cli(&refs, &TOKEN).await
        }
    };
    let (ok, out, err) = run(&["keys", "list", "--consumer", "team/app"]).await;
    assert!(ok && out.contains(&slash), "{out}{err}");
    let (ok, out, err) = run(&["keys", "create", "--consumer", "who?#1", "--json"]).await;
    assert!(ok, "{out}{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created["consumer_id"], question.as_str(), "{out}");
    let (ok, out, err) = run(&["audit", "list", "--consumer", "team/app", "--json"]).await;
    assert!(ok, "{out}{err}");
    let page: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(page["logs"].as_array().unwrap().len(), 1, "{out}");
    let (ok, out, err) = run(&["investigate", "--consumer", "team/app", "--json"]).await;
    assert!(ok, "{out}{err}");
    let triage: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((&triage["consumer_id"], &triage["profile"]["calls"]), (&json!(slash), &json!(1)), "{out}");
    let (ok, out, err) = run(&["erase", "--consumer", "team/app"]).await;
    assert!(ok && out.contains(&format!("erased-{slash}")), "{out}{err}");
    // Not found by name, a name with `/` is said to be no consumer's.
    let (ok, out, err) = run(&["keys", "list", "--consumer", "team/app"]).await;
    assert!(!ok && out.is_empty() && err.contains("no consumer named `team/app`"), "{out}{err}");
    for (args, says) in [
        (&["keys", "list", "--consumer", "cons_a/b"][..], "--consumer `cons_a/b` is not an id"),
        (&["keys", "list", "--consumer", ".."], "--consumer `..` is not an id"),
        (&["erase", "--consumer", "cons_a?b"], "is not a consumer id"),
    ] {
        let out_dir = tempfile::tempdir().unwrap();
        let args: Vec<&str> = args.iter().chain(base.iter()).copied().collect();
        let mut p = crate::util::Process::spawn(&args, &TOKEN, out_dir.path(), out_dir.path());
        assert_eq!(p.child.wait().unwrap().code(), Some(2), "{args:?}: {}", p.stderr());
        assert!(p.stderr().contains(says), "{args:?}: {}", p.stderr());
    }
}

/// `audit export -o -` writes to standard output, as `-` means for curl,
/// tar or jq: it wrote a file named `-` in the working directory (through
/// a `-.partial`), and nothing to standard output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_to_dash_goes_to_standard_output() {
    let (ts, _, _) = one_call_recorded().await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = crate::util::Process::spawn(&["audit", "export", "--admin-url", ts.admin.as_str(), "--tenant", "acme", "-o", "-"], &TOKEN, dir.path(), dir.path());
    let status = p.child.wait().unwrap();
    assert!(status.success(), "{}", p.stderr());
    let api_csv = ts.client.get(format!("{}/v1/audit/acme/export/csv", ts.admin)).bearer_auth(ADMIN_TOKEN).send().await.unwrap().text().await.unwrap();
    assert_eq!(p.stdout(), api_csv);
    assert!(!dir.path().join("-").exists() && !dir.path().join("-.partial").exists());
}
