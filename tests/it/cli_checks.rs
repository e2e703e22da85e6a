//! The real binary at its edges: signals while an admin client holds a
//! half-sent request, and `verify` with a tenant it holds nothing of.

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::{run_cli, spawn_serve, Process, ADMIN_TOKEN};

/// Waits (at most `limit`) for the process to exit.
fn exit_within(p: &mut Process, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the binary with `args` and `envs` in `dir` (its working directory,
/// where its output is kept too): its exit code (`None` if it did not exit
/// within 20 s, or ended by a signal) and its standard error.
fn exit_code_and_stderr(args: &[&str], envs: &[(&str, &str)], dir: &std::path::Path) -> (Option<i32>, String) {
    let mut p = Process::spawn(args, envs, dir, dir);
    let status = exit_within(&mut p, Duration::from_secs(20));
    (status.and_then(|s| s.code()), p.stderr())
}

/// SIGTERM stops `keytrail serve` cleanly, with what it accepted committed,
/// even while a client holds a half-sent request head on the admin port
/// (which needs no token): the admin API's drain is bounded as the
/// gateway's is.
#[tokio::test]
async fn sigterm_stops_serve_while_an_admin_client_holds_a_half_sent_head() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut p, admin, _) = spawn_serve(&data, dir.path(), &[]);
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    let addr = admin.base.trim_start_matches("http://").to_string();
    let mut held = std::net::TcpStream::connect(&addr).unwrap();
    held.write_all(b"GET /v1/tenants HTTP/1.1\r\nHost: x\r\n").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    p.signal("-TERM");
    let status = exit_within(&mut p, Duration::from_secs(30));
    drop(held);
    let status = status.unwrap_or_else(|| panic!("keytrail serve did not stop within 30 s of SIGTERM\n{}", p.stderr()));
    assert!(status.success(), "{status}: {}", p.stderr());
    assert!(p.stderr().contains("stopped"), "{}", p.stderr());
    // The tenant's creation (intent and outcome) is in the trail.
    let (ok, out, err) = run_cli(&["verify", "--data-dir", data.to_str().unwrap(), "--json"], &[]).await;
    assert!(ok, "{out}{err}");
    let reports: Value = serde_json::from_str(&out).unwrap();
    let system = reports.as_array().unwrap().iter().find(|r| r["tenant"] == "_system").unwrap();
    assert!(system["events"].as_u64().unwrap() >= 2, "{out}");
}

/// `keytrail verify --tenant` with a tenant the audit trail knows nothing of
/// (a typo) is an error naming it, not `ok` with exit code 0; `--file`
/// with a `--tenant` the export is not of is refused too (it was ignored,
/// and another tenant's export reported `ok`).
#[tokio::test]
async fn verify_refuses_a_tenant_it_has_nothing_of() {
    let ts = crate::util::TestServer::start().await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    assert_eq!(admin.post("/v1/tenants", json!({"id": "globex", "name": "Globex"})).await.status, 201);
    assert_eq!(admin.post("/v1/tenants/acme/consumers", json!({"name": "c"})).await.status, 201);
    ts.flush().await;
    let data = ts.data_dir.to_str().unwrap();

    let (ok, out, err) = run_cli(&["verify", "--data-dir", data, "--tenant", "acme"], &[]).await;
    assert!(ok && out.contains("acme") && out.contains(" ok "), "{out}{err}");
    // Not on a terminal: no progress line. Asked for: how far the walk has
    // come, on standard error, cleared at the end; the report unchanged.
    assert!(!err.contains("verifying"), "{err}");
    let (ok, shown, err) = run_cli(&["verify", "--data-dir", data, "--tenant", "acme"], &[("KEYTRAIL_PROGRESS", "always")]).await;
    let events = out.split_whitespace().skip_while(|w| *w != "ok").nth(1).unwrap().to_string();
    assert!(ok && shown == out, "{shown}{err}");
    assert!(err.starts_with("\rverifying tenant acme: ") && err.contains(&format!(" of {events} events (")) && err.ends_with("\r\x1b[K"), "{err:?}");
    let (ok, _, err) = run_cli(&["verify", "--data-dir", data], &[("KEYTRAIL_PROGRESS", "yes")]).await;
    assert!(!ok && err.contains("KEYTRAIL_PROGRESS `yes`"), "{err}");
    for wrong in ["acmee", "../acme", ""] {
        let (ok, out, err) = run_cli(&["verify", "--data-dir", data, "--tenant", wrong], &[]).await;
        assert!(!ok, "--tenant {wrong:?}: {out}{err}");
        assert!(err.contains(&format!("`{wrong}`")) && !out.contains(" ok "), "--tenant {wrong:?}: {out}{err}");
    }

    let export = ts.client.get(format!("{}/v1/audit/acme/export/json?category=all", ts.admin)).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(export.status(), 200);
    let file = ts.data_dir.join("acme-export.json");
    std::fs::write(&file, export.text().await.unwrap()).unwrap();
    let public = keytrail::signing::public_key_text(&keytrail::signing::Signer::load_or_create(&ts.data_dir.join("signing.key")).unwrap().public_key());
    let path = file.to_str().unwrap();
    let (ok, out, err) = run_cli(&["verify", "--file", path, "--public-key", &public, "--tenant", "acme"], &[]).await;
    assert!(ok, "{out}{err}");
    let (ok, out, err) = run_cli(&["verify", "--file", path, "--public-key", &public, "--tenant", "globex"], &[]).await;
    assert!(!ok && err.contains("globex") && err.contains("acme"), "{out}{err}");
}

/// A mistyped `--archive-dir` is an error, not "no archives to verify"
/// with the exit code of a pass.
#[tokio::test]
async fn archive_verify_refuses_an_archive_dir_that_is_not_there() {
    let ts = crate::util::TestServer::start().await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    ts.flush().await;
    let data = ts.data_dir.to_str().unwrap();
    let typo = ts.data_dir.join("archvie");
    let (ok, out, err) = run_cli(&["archive", "verify", "--data-dir", data, "--archive-dir", typo.to_str().unwrap()], &[]).await;
    assert!(!ok, "{out}{err}");
    assert!(err.contains("--archive-dir") && err.contains("archvie") && !out.contains("no archives"), "{out}{err}");
    // Without it, a store that has archived nothing yet is still fine.
    let (ok, out, err) = run_cli(&["archive", "verify", "--data-dir", data], &[]).await;
    assert!(ok, "{out}{err}");
}

/// The admin token in `KEYTRAIL_TOKEN` is never printed, even when what
/// answers at `--admin-url` (a proxy's or another service's error page)
/// echoes the request back: the first line of a non-JSON text refusal is
/// shown, and an operator-chosen token has no `kta_` shape to be masked by.
#[tokio::test]
async fn the_token_is_not_printed_when_a_refusal_echoes_the_request() {
    let url = crate::util::canned_server(|head| {
        // Only the Authorization line, so it falls within the bytes shown.
        let echoed = head.lines().find(|l| l.to_ascii_lowercase().starts_with("authorization")).unwrap_or("").to_string();
        format!("HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{echoed}", echoed.len())
    })
    .await;
    let token = "operator-chosen-token-0123456789";
    for args in [&["investigate", "--tenant", "acme"][..], &["report", "weekly", "--tenant", "acme"], &["erase", "--tenant", "acme", "--consumer", "cons_x"], &["investigate"]] {
        let mut args = args.to_vec();
        args.extend(["--admin-url", &url]);
        let (ok, out, err) = run_cli(&args, &[("KEYTRAIL_TOKEN", token)]).await;
        assert!(!ok && err.contains("400"), "{args:?}: {out}{err}");
        assert!(!out.contains(token) && !err.contains(token), "{args:?} printed the token: {out}{err}");
    }
}

/// Output piped into a reader that has gone (`keytrail verify | head -1`)
/// ends the command quietly, as a closed pipe ends `cat`: no panic
/// ("failed printing to stdout: Broken pipe") and no backtrace.
#[test]
fn a_closed_stdout_is_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    keytrail::signing::Signer::load_or_create(&dir.path().join("signing.key")).unwrap();
    std::fs::create_dir(dir.path().join("audit")).unwrap();
    let data = dir.path().to_str().unwrap();
    for args in [&["keys", "public", "--data-dir", data][..], &["verify", "--data-dir", data], &["verify", "--data-dir", data, "--json"], &["archive", "verify", "--data-dir", data]] {
        let out = crate::util::run_into_closed_pipe(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked") && out.status.code() != Some(101), "{args:?}: {}: {stderr}", out.status);
        assert!(stderr.is_empty(), "{args:?}: quietly: {stderr}");
    }
}

/// `investigate --hours` out of range is a usage error like any bad flag
/// value (exit code 2, naming `--hours` and the range), whether 0, past a
/// year, or past what the flag's type holds: 0 and 9000 ended with exit
/// code 1, 99999999999 with clap's 2.
#[tokio::test]
async fn investigate_hours_out_of_range_is_a_usage_error() {
    for hours in ["0", "8785", "99999999999", "-1"] {
        let out = tempfile::tempdir().unwrap();
        let mut p = crate::util::Process::spawn(&["investigate", "--hours", hours, "--admin-url", "http://127.0.0.1:1"], &[("KEYTRAIL_TOKEN", "some-token-0123456789")], out.path(), out.path());
        let status = p.child.wait().unwrap();
        let err = p.stderr();
        assert_eq!(status.code(), Some(2), "--hours {hours}: {err}");
        assert!(err.contains("--hours") && err.contains("8784"), "--hours {hours}: {err}");
    }
    let (ok, _, err) = run_cli(&["investigate", "--hours", "8784", "--admin-url", "http://127.0.0.1:1"], &[("KEYTRAIL_TOKEN", "some-token-0123456789")]).await;
    assert!(!ok && err.contains("cannot reach the admin API"), "the largest value is taken: {err}");
}

/// `keytrail serve` whose output nobody reads any more (`keytrail serve |
/// head -1`, a closed stdout) goes on serving and stops cleanly on SIGTERM:
/// its start-up lines panicked the process ("failed printing to stdout").
#[tokio::test]
async fn serve_goes_on_when_its_stdout_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let admin = format!("127.0.0.1:{port}");
    let mut child = std::process::Command::new(crate::util::binary())
        .args(["serve", "--data-dir", dir.path().join("data").to_str().unwrap(), "--gateway-listen", "127.0.0.1:0", "--admin-listen", &admin])
        .env("KEYTRAIL_BOOTSTRAP_TOKEN", ADMIN_TOKEN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let client = crate::util::http();
    let deadline = Instant::now() + Duration::from_secs(15);
    let answered = loop {
        if let Ok(res) = client.get(format!("http://{admin}/v1/tenants")).bearer_auth(ADMIN_TOKEN).send().await {
            break res.status().as_u16();
        }
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            break 0;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(answered, 200, "{stderr}");
    assert!(out.status.success() && !stderr.contains("panicked"), "{}: {stderr}", out.status);
}

/// `keytrail demo` whose output nobody reads (`keytrail demo | head -1`, a
/// closed stdout) sets up and goes on serving, and stops cleanly on
/// SIGTERM, as `serve` does: its own lines were printed with `println!`,
/// which panicked the process ("failed printing to stdout").
#[tokio::test]
async fn demo_goes_on_when_its_stdout_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let admin = format!("127.0.0.1:{port}");
    let mut child = std::process::Command::new(crate::util::binary())
        .args(["demo", "--data-dir", dir.path().join("data").to_str().unwrap(), "--gateway-listen", "127.0.0.1:0", "--admin-listen", &admin])
        .env("KEYTRAIL_BOOTSTRAP_TOKEN", ADMIN_TOKEN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let client = crate::util::http();
    // The demo's consumer is there once its setup is all but done, just
    // before it prints the key and the lines to try.
    let deadline = Instant::now() + Duration::from_secs(15);
    let set_up = loop {
        if let Ok(res) = client.get(format!("http://{admin}/v1/tenants/demo/consumers")).bearer_auth(ADMIN_TOKEN).send().await {
            if res.status().is_success() && res.text().await.unwrap_or_default().contains("demo-client") {
                break true;
            }
        }
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Still serving after it printed (or failed to print) its lines.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let still_running = child.try_wait().unwrap().is_none();
    let answered = match client.get(format!("http://{admin}/v1/tenants/demo/consumers")).bearer_auth(ADMIN_TOKEN).send().await {
        Ok(res) => res.status().as_u16(),
        Err(_) => 0,
    };
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(set_up && still_running && answered == 200, "set up {set_up}, running {still_running}, answered {answered}: {}: {stderr}", out.status);
    assert!(out.status.success() && !stderr.contains("panicked"), "{}: {stderr}", out.status);
    assert!(!stderr.contains("kt_test_"), "the key is not written anywhere else: {stderr}");
}

/// Every command that checks signatures finds its key the same way
/// (`--public-key`, or the data directory's own) and says the same when
/// there is none: `keytrail verify` named the missing key file but not
/// what to give instead, unlike `keytrail archive verify`/`cat`/`restore`.
#[test]
fn every_checking_command_says_what_to_give_when_the_data_dir_has_no_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("audit")).unwrap();
    let data = dir.path().to_str().unwrap();
    let key_file = dir.path().join("signing.key");
    let commands: [&[&str]; 4] = [
        &["verify", "--data-dir", data],
        &["archive", "verify", "--data-dir", data],
        &["archive", "cat", "--data-dir", data, "--tenant", "acme", "--day", "2026-11-01"],
        &["archive", "restore", "--data-dir", data, "--tenant", "acme", "--day", "2026-11-01"],
    ];
    for args in commands {
        let mut p = Process::spawn(args, &[], dir.path(), dir.path());
        let status = p.child.wait().unwrap();
        let err = p.stderr();
        assert_eq!(status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(&format!("{} does not exist", key_file.display())), "{args:?}: {err}");
        assert!(err.contains("give --public-key, or a --data-dir with its signing key"), "{args:?}: {err}");
        let mut args = args.to_vec();
        args.extend(["--public-key", "00ff"]);
        let mut p = Process::spawn(&args, &[], dir.path(), dir.path());
        let status = p.child.wait().unwrap();
        let err = p.stderr();
        // A malformed key is a usage error (exit code 2).
        assert!(status.code() == Some(2) && err.contains("--public-key: "), "{args:?}: {err}");
    }
}

/// A `--day` that is no day, a `--tenant` that is no tenant id (archive
/// commands) and an erasure's `--consumer` that is no id are usage errors,
/// exit code 2 naming the flag, as clap's own refusals are: they ended with
/// exit code 1, a script's sign that a restore failed or an archive did not
/// verify.
#[test]
fn archive_and_erase_flags_that_name_nothing_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let commands: [(&[&str], &str, &str); 7] = [
        (&["archive", "cat", "--data-dir", data, "--tenant", "acme", "--day", "2026-02-30"], "--day", "`2026-02-30` is not a day"),
        (&["archive", "restore", "--data-dir", data, "--tenant", "acme", "--day", "18/11/2026"], "--day", "`18/11/2026` is not a day"),
        (&["archive", "cat", "--data-dir", data, "--tenant", "Globex!", "--day", "2026-11-01"], "--tenant", "`Globex!` is not a tenant id"),
        (&["archive", "restore", "--data-dir", data, "--tenant", "", "--day", "2026-11-01"], "--tenant", "`` is not a tenant id"),
        (&["archive", "verify", "--data-dir", data, "--tenant", "ACME"], "--tenant", "`ACME` is not a tenant id"),
        (&["erase", "--consumer", "cons_1/../x", "--admin-url", "http://127.0.0.1:1"], "--consumer", "is not a consumer id"),
        (&["erase", "--consumer", "..", "--admin-url", "http://127.0.0.1:1"], "--consumer", "is not a consumer id"),
    ];
    for (args, flag, why) in commands {
        let (code, err) = exit_code_and_stderr(args, &[("KEYTRAIL_TOKEN", "some-token-0123456789")], dir.path());
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(flag) && err.contains(why), "{args:?}: {err}");
    }
}

/// An `--archive-dir` that is a file is named in the error of `archive
/// cat` and `archive restore`, as it is in `archive verify`'s: it was
/// "store error: Not a directory (os error 20)", without the path.
#[test]
fn an_archive_dir_that_is_a_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    keytrail::signing::Signer::load_or_create(&dir.path().join("signing.key")).unwrap();
    std::fs::create_dir(dir.path().join("audit")).unwrap();
    let file = dir.path().join("archives.tar");
    std::fs::write(&file, "x").unwrap();
    let (data, file) = (dir.path().to_str().unwrap(), file.to_str().unwrap());
    for command in ["verify", "cat", "restore"] {
        let mut args = vec!["archive", command, "--data-dir", data, "--archive-dir", file];
        if command != "verify" {
            args.extend(["--tenant", "acme", "--day", "2026-11-01"]);
        }
        let mut p = Process::spawn(&args, &[], dir.path(), dir.path());
        let status = p.child.wait().unwrap();
        let err = p.stderr();
        assert_eq!(status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("--archive-dir") && err.contains(file) && err.contains("is not a directory"), "{args:?}: {err}");
    }
    // The data directory's own archive folder a file: the folder read is named.
    std::fs::write(dir.path().join("archive"), "x").unwrap();
    let mut p = Process::spawn(&["archive", "cat", "--data-dir", data, "--tenant", "acme", "--day", "2026-11-01"], &[], dir.path(), dir.path());
    let status = p.child.wait().unwrap();
    let err = p.stderr();
    assert!(status.code() == Some(1) && err.contains(&format!("cannot read {}", dir.path().join("archive").join("acme").display())), "{err}");
}

/// A bad admin API address in `KEYTRAIL_ADMIN_URL` names the variable
/// (the operator may never have typed `--admin-url`, which the message
/// named), as a bad `KEYTRAIL_*` value of `serve` does; a bad flag names the
/// flag. Both are usage errors (exit code 2), nothing is sent anywhere.
#[test]
fn a_bad_admin_url_names_where_it_came_from() {
    let out = tempfile::tempdir().unwrap();
    let token = ("KEYTRAIL_TOKEN", "some-token-0123456789");
    let run = |args: &[&str], envs: &[(&str, &str)]| {
        let mut p = Process::spawn(args, envs, out.path(), out.path());
        let code = exit_within(&mut p, Duration::from_secs(20)).and_then(|s| s.code());
        (code, p.stderr())
    };
    for (url, why) in [
        ("127.0.0.1:9080", "http://"),
        ("https://127.0.0.1:9080", "https"),
        ("http://", "not a URL"),
        ("http:///keytrail", "not a URL"),
        ("http://host:80:80", "not a URL"),
        // A colon with no port: it was connected to as `host::80`, "failed to lookup address", exit 1.
        ("http://127.0.0.1:/", "port"),
        ("http://localhost:", "port"),
        // A query or fragment was dropped without a word.
        ("http://127.0.0.1:9080/?tenant=acme", "query"),
        ("http://127.0.0.1:9080/#x", "query"),
    ] {
        let (code, err) = run(&["audit", "list"], &[token, ("KEYTRAIL_ADMIN_URL", url)]);
        assert_eq!(code, Some(2), "{url}: {err}");
        assert!(err.contains("KEYTRAIL_ADMIN_URL") && err.contains(why), "{url}: {err}");
        let (code, err) = run(&["investigate", "--admin-url", url], &[token, ("KEYTRAIL_ADMIN_URL", "http://127.0.0.1:1")]);
        assert_eq!(code, Some(2), "{url}: {err}");
        assert!(err.contains("--admin-url") && !err.contains("KEYTRAIL_ADMIN_URL") && err.contains(why), "{url}: {err}");
    }
    let (code, err) = run(&["keys", "list", "--consumer", "c"], &[token, ("KEYTRAIL_ADMIN_URL", "")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("KEYTRAIL_ADMIN_URL is set but empty"), "{err}");
    // A URL with a password in it is refused without being shown.
    let (code, err) = run(&["audit", "list"], &[token, ("KEYTRAIL_ADMIN_URL", "http://admin:s3cret-pw@127.0.0.1:9080")]);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("KEYTRAIL_ADMIN_URL") && err.contains("credentials") && !err.contains("s3cret-pw"), "{err}");
    assert!(!err.contains("some-token"), "{err}");
}

/// A `KEYTRAIL_TOKEN` with a line break inside (two files cat'ed into it,
/// a pasted token with its newline) says what to fix, naming the variable
/// and not the token; it said only "cannot build the request: failed to
/// parse header value".
#[test]
fn a_token_no_header_can_carry_is_named() {
    let out = tempfile::tempdir().unwrap();
    // Something listening (the connection is made; nothing answers).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    for token in ["kta_first-token-0123\nkta_second-token-4567", "kta_some\u{1}token-0123456789"] {
        let (code, err) = exit_code_and_stderr(&["audit", "list", "--admin-url", &url, "--tenant", "acme"], &[("KEYTRAIL_TOKEN", token)], out.path());
        assert_eq!(code, Some(1), "{token:?}: {err}");
        assert!(err.contains("KEYTRAIL_TOKEN") && err.contains("control character"), "{token:?}: {err}");
        assert!(!err.contains("token-0123"), "{err}");
    }
}

/// `--help` of a command that reads `KEYTRAIL_ADMIN_URL` does not show the
/// variable's value: one holding credentials (refused without being shown
/// when a command runs) was printed whole, password included.
#[test]
fn help_does_not_show_the_admin_url_variable() {
    let out = tempfile::tempdir().unwrap();
    for args in [&["audit", "list", "--help"][..], &["keys", "create", "--help"], &["investigate", "--help"], &["report", "weekly", "--help"], &["erase", "--help"]] {
        let mut p = Process::spawn(args, &[("KEYTRAIL_ADMIN_URL", "http://admin:s3cret-pw@127.0.0.1:9080")], out.path(), out.path());
        let status = exit_within(&mut p, Duration::from_secs(20));
        let help = p.stdout();
        assert_eq!(status.and_then(|s| s.code()), Some(0), "{args:?}: {}", p.stderr());
        assert!(help.contains("--admin-url") && help.contains("KEYTRAIL_ADMIN_URL"), "{args:?}: {help}");
        assert!(!help.contains("s3cret-pw") && !p.stderr().contains("s3cret-pw"), "{args:?}: {help}");
    }
}

/// A flag's value no server could take, or flags that do not go together,
/// found by the commands themselves after clap's checks, are usage errors
/// like clap's own (exit code 2), each saying what to fix; they were exit
/// code 1, as a server's refusal is. Nothing is sent anywhere (the admin
/// API's address here has nothing listening).
#[test]
fn usage_errors_found_by_the_commands_exit_2() {
    let out = tempfile::tempdir().unwrap();
    let data = out.path().to_str().unwrap();
    let url = "http://127.0.0.1:1";
    let token = ("KEYTRAIL_TOKEN", "some-token-0123456789");
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 14] = [
        (&["audit", "list", "--admin-url", url, "--tenant", ""], &[token], "--tenant `` is not a tenant id"),
        (&["audit", "list", "--admin-url", url, "--tenant", "a/b"], &[token], "--tenant `a/b` is not a tenant id"),
        (&["keys", "list", "--admin-url", url, "--tenant", "acme", "--consumer", ""], &[token], "--consumer `` is not an id"),
        (&["keys", "revoke", "--admin-url", url, "key_a/b"], &[token], "is not an id"),
        (&["erase", "--admin-url", url, "--tenant", "acme", "--consumer", "cons_a/b"], &[token], "is not a consumer id"),
        (&["audit", "export", "--admin-url", url, "--json"], &[token], "--format json"),
        (&["audit", "export", "--admin-url", url, "--tenant", "acme", "-o", "x.csv"], &[token, ("KEYTRAIL_PROGRESS", "sometimes")], "give auto, always or never"),
        (&["verify", "--data-dir", data, "--file", "x.json"], &[], "--file needs --public-key"),
        (&["verify", "--data-dir", data, "--public-key", "abc"], &[], "--public-key: a public key is 64 hexadecimal digits"),
        (&["archive", "verify", "--data-dir", data, "--public-key", "00"], &[], "--public-key"),
        (&["archive", "verify", "--data-dir", data, "--tenant", "ACME"], &[], "is not a tenant id"),
        (&["archive", "cat", "--data-dir", data, "--tenant", "acme", "--day", "yesterday"], &[], "`yesterday` is not a day"),
        (&["archive", "restore", "--data-dir", data, "--tenant", "acme", "--day", "2026-02-30"], &[], "`2026-02-30` is not a day"),
        (&["archive", "cat", "--data-dir", data, "--tenant", "../x", "--day", "2026-11-01"], &[], "is not a tenant id"),
    ];
    for (args, envs, says) in cases {
        let (code, err) = exit_code_and_stderr(args, envs, out.path());
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(says) && !err.contains("cannot reach"), "{args:?}: {err}");
        assert!(!err.contains("some-token"), "{err}");
    }
    assert!(!out.path().join("x.csv").exists() && !out.path().join("x.csv.partial").exists());
}

/// `KEYTRAIL_BOOTSTRAP_TOKEN` set but empty (`=$(cat a-missing-file)`)
/// stops `serve` and `demo` (exit code 2, naming the variable), as a bad
/// value does: it was taken for unset, and the first owner was made with
/// a random token the operator did not expect.
#[test]
fn an_empty_bootstrap_token_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let listen = ["--gateway-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
    let serve: Vec<&str> = ["serve", "--data-dir", data.to_str().unwrap()].into_iter().chain(listen).collect();
    let demo: Vec<&str> = ["demo", "--data-dir", data.to_str().unwrap()].into_iter().chain(listen).collect();
    for args in [serve, demo] {
        let mut p = Process::spawn(&args, &[("KEYTRAIL_BOOTSTRAP_TOKEN", "")], dir.path(), dir.path());
        let status = exit_within(&mut p, Duration::from_secs(20));
        let (out, err) = (p.stdout(), p.stderr());
        assert_eq!(status.and_then(|s| s.code()), Some(2), "{args:?}: {out}{err}");
        assert!(err.contains("KEYTRAIL_BOOTSTRAP_TOKEN is set but empty"), "{args:?}: {err}");
        assert!(!out.contains("listening") && !data.join("bootstrap-admin-token").exists(), "{args:?}: {out}");
    }
}

/// A `KEYTRAIL_TOKEN` that is not text (bytes that are no UTF-8) says so;
/// it said the variable was not set, which it was.
#[test]
fn a_token_that_is_not_text_is_not_called_unset() {
    use std::os::unix::ffi::OsStrExt;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let out = std::process::Command::new(crate::util::binary())
        .args(["audit", "list", "--admin-url", &url, "--tenant", "acme"])
        .env("KEYTRAIL_TOKEN", std::ffi::OsStr::from_bytes(b"kta_\xff\xfe-token-0123456789"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("KEYTRAIL_TOKEN") && !err.contains("is not set") && err.contains("not text"), "{err}");
    assert!(!err.contains("token-0123"), "{err}");
}

/// A refusal answered with `Retry-After` (a bearer lockout's 429, a 503
/// while the audit directory is busy) says the wait: the API's message
/// says "try again after the time in `Retry-After`", a header the command
/// did not show, so its user could not know when.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_with_retry_after_says_the_wait() {
    let ts = crate::util::TestServer::start_with(tempfile::tempdir().unwrap(), |c| {
        c.login.name_failures = 0;
        c.login.address_failures = 3;
    })
    .await;
    let wrong = crate::util::Admin { token: "kta_wrongwrongwrongwrongwrongwrong".into(), ..ts.admin_client() };
    for _ in 0..3 {
        assert_eq!(wrong.get("/v1/tenants").await.status, 401);
    }
    let locked = ts.admin_client().get("/v1/tenants").await;
    assert_eq!(locked.status, 429, "{}", locked.text);
    let (ok, out, err) = run_cli(&["audit", "list", "--admin-url", ts.admin.as_str(), "--tenant", "acme"], &[("KEYTRAIL_TOKEN", ADMIN_TOKEN)]).await;
    assert!(!ok && out.is_empty(), "{out}");
    assert!(err.contains("429") && err.contains("too_many_attempts"), "{err}");
    let wait = err.split("Retry-After: ").nth(1).and_then(|rest| rest.split(' ').next()).and_then(|secs| secs.parse::<u64>().ok());
    assert!(wait.is_some_and(|secs| (1..=900).contains(&secs)), "the wait is said: {err}");
    assert!(!err.contains(ADMIN_TOKEN), "{err}");
}

/// `--admin-url` pointing at the gateway's port (8080 for 9080) says so: it
/// said only "404 Not Found: no_route: no API is configured for this path"
/// (or `missing_key`, for a path an api routes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_url_that_is_the_gateway_says_so() {
    let ts = crate::util::TestServer::start().await;
    let gateway = ts.gateway.clone();
    let token = [("KEYTRAIL_TOKEN", ADMIN_TOKEN)];
    for args in [&["audit", "list", "--admin-url", gateway.as_str()][..], &["keys", "revoke", "key_x", "--admin-url", gateway.as_str()], &["audit", "export", "--tenant", "acme", "--admin-url", gateway.as_str()]] {
        let (ok, out, err) = run_cli(args, &token).await;
        assert!(!ok && out.is_empty(), "{args:?}: {out}");
        assert!(err.contains("keytrail's gateway, not its admin API") && err.contains("--admin-url"), "{args:?}: {err}");
    }
}

/// An `--admin-url` where another service answers every call with `200`
/// and JSON of its own is not taken for an empty trail: `audit list`,
/// `keys list`, `investigate` and `report weekly` printed empty tables and
/// zeros, with exit code 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_that_is_no_admin_api_answer_is_an_error() {
    let other = format!("http://{}", crate::util::start_upstream().await);
    let token = [("KEYTRAIL_TOKEN", ADMIN_TOKEN)];
    let url = other.as_str();
    for args in [
        &["audit", "list", "--admin-url", url, "--tenant", "acme"][..],
        &["audit", "list", "--admin-url", url],
        &["audit", "security", "--admin-url", url, "--tenant", "acme", "--json"],
        &["keys", "list", "--admin-url", url, "--tenant", "acme", "--consumer", "cons_x"],
        &["investigate", "--admin-url", url, "--tenant", "acme"],
        &["report", "weekly", "--admin-url", url, "--tenant", "acme"],
    ] {
        let (ok, out, err) = run_cli(args, &token).await;
        assert!(!ok, "{args:?}: exit 0:\n{out}{err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert!(err.contains(&format!("is {other} keytrail's admin API?")), "{args:?}: {err}");
    }
}

/// An admin API behind a proxy that answers a 5xx with its own HTML page
/// (nginx's `502 Bad Gateway`) says what happened — the status, that the
/// answer is no JSON of keytrail's, what it was — without the page's
/// markup: up to 200 raw bytes of HTML were printed as the "message", for
/// a list and for an export alike.
#[tokio::test]
async fn an_html_error_page_is_described_not_dumped() {
    let url = crate::util::canned_server(|_| {
        let page = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.24.0</center>\r\n</body>\r\n</html>\r\n";
        format!("HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}", page.len())
    })
    .await;
    let token = [("KEYTRAIL_TOKEN", "some-token-0123456789")];
    for args in [&["audit", "list", "--tenant", "acme"][..], &["audit", "export", "--tenant", "acme"], &["keys", "revoke", "key_x"]] {
        let mut args = args.to_vec();
        args.extend(["--admin-url", &url]);
        let (ok, out, err) = run_cli(&args, &token).await;
        assert!(!ok && out.is_empty(), "{args:?}: {out}{err}");
        assert!(err.contains("502 Bad Gateway") && err.contains("not keytrail's JSON") && err.contains("text/html"), "{args:?}: {err}");
        assert!(!err.contains('<') && !err.contains("nginx/1.24.0"), "{args:?}: the page's markup is not shown: {err}");
    }
}

/// Values of `keys create` and `keys rotate` that no admin API takes — a
/// `--grace-secs` over its 30 days, an `--expires-at` that is no RFC 3339
/// time, an `--environment` other than live or test — are usage errors
/// (exit code 2) saying what to give, before anything is sent: the server
/// refused them, exit code 1, as it refuses a key that does not exist.
#[test]
fn key_flags_no_server_takes_are_usage_errors() {
    let out = tempfile::tempdir().unwrap();
    let url = "http://127.0.0.1:1";
    let token = ("KEYTRAIL_TOKEN", "some-token-0123456789");
    let cases: [(&[&str], &str); 5] = [
        (&["keys", "rotate", "key_x", "--grace-secs", "2592001", "--admin-url", url], "--grace-secs must be at most 2592000 (30 days)"),
        (&["keys", "rotate", "key_x", "--grace-secs", "99999999999999", "--admin-url", url], "--grace-secs must be at most 2592000 (30 days)"),
        (&["keys", "create", "--consumer", "c", "--tenant", "acme", "--expires-at", "tomorrow", "--admin-url", url], "--expires-at `tomorrow` is not an RFC 3339 time"),
        (&["keys", "create", "--consumer", "c", "--tenant", "acme", "--expires-at", "2027-01-31", "--admin-url", url], "such as 2027-01-31T00:00:00Z"),
        (&["keys", "create", "--consumer", "c", "--tenant", "acme", "--environment", "prod", "--admin-url", url], "--environment"),
    ];
    for (args, says) in cases {
        let (code, err) = exit_code_and_stderr(args, &[token], out.path());
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(says) && !err.contains("cannot reach"), "{args:?}: {err}");
    }
    // The largest grace is asked for (and the server, not there, not reached).
    let mut p = Process::spawn(&["keys", "rotate", "key_x", "--grace-secs", "2592000", "--admin-url", url], &[token], out.path(), out.path());
    let status = exit_within(&mut p, Duration::from_secs(20));
    assert!(status.and_then(|s| s.code()) == Some(1) && p.stderr().contains("cannot reach"), "{}", p.stderr());
}

/// A command without `--tenant` whose token sees several tenants cannot
/// run as given: a usage error (exit code 2) listing them, as a missing
/// flag is; it ended with exit code 1, a refusal's or a failure's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_tenants_and_no_tenant_flag_is_a_usage_error() {
    let ts = crate::util::TestServer::start().await;
    let admin = ts.admin_client();
    let url = ts.admin.clone();
    let token = [("KEYTRAIL_TOKEN", ADMIN_TOKEN)];
    let code = |args: Vec<&'static str>| {
        let url = url.clone();
        async move {
            let out = tempfile::tempdir().unwrap();
            let mut args: Vec<&str> = args;
            args.extend(["--admin-url", url.as_str()]);
            let mut p = Process::spawn(&args, &token, out.path(), out.path());
            let status = loop {
                if let Some(status) = p.child.try_wait().unwrap() {
                    break status;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            (status.code(), p.stdout(), p.stderr())
        }
    };
    // None yet: a state of the server, exit code 1.
    let (status, _, err) = code(vec!["audit", "list"]).await;
    assert!(status == Some(1) && err.contains("there are no tenants yet"), "{err}");
    for id in ["acme", "globex"] {
        assert_eq!(admin.post("/v1/tenants", json!({"id": id, "name": id})).await.status, 201);
    }
    for args in [vec!["audit", "list"], vec!["report", "weekly"], vec!["keys", "list", "--consumer", "c"]] {
        let (status, out, err) = code(args.clone()).await;
        assert_eq!(status, Some(2), "{args:?}: {err}");
        assert!(out.is_empty() && err.contains("give --tenant: one of acme, globex"), "{args:?}: {out}{err}");
    }
}

/// An API key given where a key id (or a consumer) goes — `keys revoke
/// kt_live_…`, an easy slip, the key is what a user has at hand — is
/// refused before anything is sent (exit code 2), saying to give the id:
/// it went to the admin API inside the URL's path, where a proxy in front
/// of it logs request lines, and came back as a bare 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_given_for_a_key_id_is_not_sent() {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    let key = keytrail::keys::generate_key(keytrail::keys::KeyEnvironment::Live).secret;
    let token = ("KEYTRAIL_TOKEN", "operator-chosen-token-0123456789");
    let cases: [&[&str]; 6] = [
        &["keys", "revoke", &key],
        &["keys", "rotate", &key],
        &["keys", "scopes", &key, "--scope", "a"],
        &["keys", "list", "--tenant", "acme", "--consumer", &key],
        &["investigate", "--tenant", "acme", "--consumer", &key],
        &["keys", "revoke", "operator-chosen-token-0123456789"],
    ];
    for args in cases {
        let mut args = args.to_vec();
        args.extend(["--admin-url", &url]);
        let out = tempfile::tempdir().unwrap();
        let (code, err) = exit_code_and_stderr(&args, &[token], out.path());
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains("not an id") && err.contains("never sent"), "{args:?}: {err}");
        assert!(!err.contains(&key) && !err.contains("operator-chosen-token-0123456789"), "{args:?}: {err}");
        // Nothing came to the admin API's address.
        let mut sent = Vec::new();
        if let Ok((mut stream, _)) = listener.accept() {
            stream.set_nonblocking(false).unwrap();
            stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
            let _ = stream.read_to_end(&mut sent);
        }
        assert!(!String::from_utf8_lossy(&sent).contains(&key), "{args:?}: the key was sent");
        assert!(sent.is_empty(), "{args:?}: a call was made: {}", String::from_utf8_lossy(&sent));
    }
}

/// A `--scope` no key can hold (`docs read`, an empty one) is a usage
/// error naming it, before anything is sent: the server refused the whole
/// list (exit code 1) without saying which of the scopes was wrong.
#[test]
fn a_scope_no_key_can_hold_is_a_usage_error_naming_it() {
    let out = tempfile::tempdir().unwrap();
    let url = "http://127.0.0.1:1";
    let token = ("KEYTRAIL_TOKEN", "some-token-0123456789");
    let cases: [(&[&str], &str); 3] = [
        (&["keys", "create", "--consumer", "c", "--tenant", "acme", "--scope", "docs:read", "--scope", "docs write", "--admin-url", url], "--scope `docs write` is not a scope"),
        (&["keys", "scopes", "key_x", "--scope", "", "--admin-url", url], "--scope `` is not a scope"),
        (&["keys", "scopes", "key_x", "--scope", "docs:read;drop", "--admin-url", url], "letters, digits and `-_:.*/`"),
    ];
    for (args, says) in cases {
        let (code, err) = exit_code_and_stderr(args, &[token], out.path());
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(says) && !err.contains("cannot reach"), "{args:?}: {err}");
    }
}

/// An `--admin-url` whose port is out of range (`:99999`) or 0 is a usage
/// error naming the port, as a URL with no port after its `:` is: the
/// first was looked up as the host name `127.0.0.1:99999` ("failed to
/// lookup address information", exit code 1), the second connected to.
#[test]
fn an_admin_url_port_out_of_range_is_a_usage_error() {
    let out = tempfile::tempdir().unwrap();
    let token = ("KEYTRAIL_TOKEN", "some-token-0123456789");
    for url in ["http://127.0.0.1:99999", "http://localhost:65536/keytrail", "http://127.0.0.1:0"] {
        for (args, envs) in [(vec!["audit", "list", "--admin-url", url], vec![token]), (vec!["keys", "revoke", "key_x"], vec![token, ("KEYTRAIL_ADMIN_URL", url)])] {
            let (code, err) = exit_code_and_stderr(&args, &envs, out.path());
            assert_eq!(code, Some(2), "{url} {args:?}: {err}");
            assert!(err.contains("port") && err.contains("1 to 65535") && !err.contains("lookup") && !err.contains("cannot reach"), "{url} {args:?}: {err}");
        }
    }
}

/// `--limit` of the audit lists outside the 1 to 10,000 rows a page can
/// hold is a usage error (exit code 2) naming the flag and the range,
/// before anything is asked: it was sent, and the server's 400 about
/// `limit` ended the command with exit code 1.
#[test]
fn an_audit_limit_out_of_range_is_a_usage_error() {
    let out = tempfile::tempdir().unwrap();
    let token = ("KEYTRAIL_TOKEN", "some-token-0123456789");
    for (list, limit) in [("list", "0"), ("security", "10001"), ("admin", "0"), ("app", "4294967295")] {
        let args = ["audit", list, "--limit", limit, "--tenant", "acme", "--admin-url", "http://127.0.0.1:1"];
        let (code, err) = exit_code_and_stderr(&args, &[token], out.path());
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains("--limit") && err.contains("10000") && !err.contains("cannot reach"), "{args:?}: {err}");
    }
}

/// Audit filters the audit API refuses whatever the data — a status out of
/// 100-999 or a `--status-min` over `--status-max`, `--hours`/`--days`
/// out of range or together, a `--from`/`--to` that is no RFC 3339 time,
/// `--from` after `--to` or with `--hours`/`--days`, a `--path` not
/// starting with `/` — are usage errors (exit code 2) naming the flag and
/// the server's limit, before anything is asked: they were sent, and the
/// server's 400 ended the command with exit code 1.
#[test]
fn audit_filters_no_server_takes_are_usage_errors() {
    let out = tempfile::tempdir().unwrap();
    let token = ("KEYTRAIL_TOKEN", "some-token-0123456789");
    let cases: [(&[&str], &[&str]); 12] = [
        (&["list", "--status-min", "99"], &["--status-min", "100", "999"]),
        (&["security", "--status-max", "1000"], &["--status-max", "100", "999"]),
        (&["list", "--status-min", "500", "--status-max", "400"], &["--status-min", "--status-max"]),
        (&["admin", "--hours", "0"], &["--hours", "87840"]),
        (&["app", "--days", "3661"], &["--days", "3660"]),
        (&["list", "--hours", "1", "--days", "1"], &["--hours", "--days"]),
        (&["export", "--from", "yesterday"], &["--from", "RFC 3339"]),
        (&["list", "--to", "2026-13-01T00:00:00Z"], &["--to", "RFC 3339"]),
        (&["security", "--from", "2026-01-02T00:00:00Z", "--to", "2026-01-01T00:00:00Z"], &["--from", "--to"]),
        (&["export", "--from", "2026-01-01T00:00:00Z", "--hours", "2"], &["--from", "--hours"]),
        (&["list", "--path", "docs"], &["--path", "/"]),
        (&["export", "--status-min", "0"], &["--status-min", "100"]),
    ];
    for (given, said) in cases {
        let mut args = vec!["audit"];
        args.extend_from_slice(given);
        args.extend(["--tenant", "acme", "--admin-url", "http://127.0.0.1:1"]);
        let (code, err) = exit_code_and_stderr(&args, &[token], out.path());
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(said.iter().all(|s| err.contains(s)) && !err.contains("cannot reach"), "{args:?}: {err}");
    }
}

/// An `--admin-url` ending with `/v1` (copied from a call such as
/// `http://host:9080/v1/tenants`) says that the commands add `/v1`
/// themselves: it said only "GET /v1/v1/audit/acme: 404 Not Found:
/// not_found: no such endpoint".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_url_ending_with_v1_says_to_leave_it_out() {
    let ts = crate::util::TestServer::start().await;
    let token = [("KEYTRAIL_TOKEN", ADMIN_TOKEN)];
    for url in [format!("{}/v1", ts.admin), format!("{}/v1/", ts.admin)] {
        for args in [&["audit", "list", "--tenant", "acme"][..], &["audit", "export", "--tenant", "acme"], &["keys", "revoke", "key_x"]] {
            let mut args = args.to_vec();
            args.extend(["--admin-url", &url]);
            let (ok, out, err) = run_cli(&args, &token).await;
            assert!(!ok && out.is_empty(), "{args:?}: {out}");
            assert!(err.contains("404") && err.contains("ends with /v1") && err.contains(&format!("give {} alone", ts.admin)), "{args:?}: {err}");
        }
    }
}

/// Standard error a pipe whose reader has gone (`… 2>&1 | head -0`, a
/// supervisor that closed it) changes no exit code: a failure is still 1,
/// a usage error 2, a whole export 0 with its file in place. Each message
/// on it was printed with `eprintln!`, which panicked (exit code 101) —
/// after the export had been written, too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stderr_changes_no_exit_code() {
    let ts = crate::util::TestServer::start().await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    ts.flush().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("acme.csv");
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let mut child = std::process::Command::new(crate::util::binary())
                .args(&args)
                .env("KEYTRAIL_TOKEN", ADMIN_TOKEN)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            drop(child.stderr.take());
            child.wait().unwrap().code()
        })
    };
    let s = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let url = ts.admin.as_str();
    let cases = [
        (s(&["keys", "revoke", "key_x", "--admin-url", "http://127.0.0.1:1"]), Some(1)),
        (s(&["keys", "rotate", "key_x", "--grace-secs", "9999999", "--admin-url", "http://127.0.0.1:1"]), Some(2)),
        (s(&["audit", "list", "--admin-url", "http://127.0.0.1:99999"]), Some(2)),
        (s(&["audit", "export", "--admin-url", url, "--tenant", "acme", "--category", "all", "-o", file.to_str().unwrap()]), Some(0)),
    ];
    for (args, code) in cases {
        assert_eq!(run(args.clone()).await.unwrap(), code, "{args:?}");
    }
    assert!(std::fs::read_to_string(&file).unwrap().starts_with("timestamp"), "the export is in place");
}

/// A `--tenant` that is no tenant id (`ACME`, `..`, `acme corp`) is a usage
/// error for the commands that ask the admin API too, as the README says
/// of a malformed one and as the archive commands have it: only an empty
/// one or one with `/`, `?` or `#` was; the others were sent and came back
/// as a 404 (exit code 1). `_system`, keytrail's own tenant, is asked for.
#[test]
fn a_tenant_that_is_no_tenant_id_is_a_usage_error() {
    let out = tempfile::tempdir().unwrap();
    let token = ("KEYTRAIL_TOKEN", "some-token-0123456789");
    let url = "http://127.0.0.1:1";
    for tenant in ["ACME", "..", "acme corp", "acme%2F"] {
        for command in [&["audit", "list"][..], &["report", "weekly"], &["keys", "list", "--consumer", "c"], &["investigate"], &["erase", "--consumer", "cons_x"]] {
            let mut args = command.to_vec();
            args.extend(["--tenant", tenant, "--admin-url", url]);
            let (code, err) = exit_code_and_stderr(&args, &[token], out.path());
            assert_eq!(code, Some(2), "{args:?}: {err}");
            assert!(err.contains(&format!("--tenant `{tenant}` is not a tenant id")) && !err.contains("cannot reach"), "{args:?}: {err}");
        }
    }
    let mut p = Process::spawn(&["audit", "list", "--tenant", "_system", "--admin-url", url], &[token], out.path(), out.path());
    let status = exit_within(&mut p, Duration::from_secs(20));
    assert!(status.and_then(|s| s.code()) == Some(1) && p.stderr().contains("cannot reach"), "{}", p.stderr());
}

/// SIGTERM (or Ctrl-C) that comes while `keytrail serve` starts — its
/// listeners bound, the stores still opening — stops it cleanly once it
/// has started (exit code 0, `stopped`), what it accepted committed: the
/// handlers were installed only after the start, so until then the
/// signal killed the process outright, mid-start or already serving
/// (the whole suite saw `serve_goes_on_when_its_stdout_is_closed` end so).
#[test]
fn a_signal_during_the_start_stops_serve_cleanly() {
    for signal in ["-TERM", "-INT"] {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let admin = format!("127.0.0.1:{port}");
        let data = dir.path().join("data");
        let mut p = Process::spawn(
            &["serve", "--data-dir", data.to_str().unwrap(), "--gateway-listen", "127.0.0.1:0", "--admin-listen", &admin],
            &[("KEYTRAIL_BOOTSTRAP_TOKEN", ADMIN_TOKEN)],
            dir.path(),
            dir.path(),
        );
        // The admin port is bound first in the start: the signal comes at once.
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(&admin).is_err() {
            assert!(Instant::now() < deadline && p.child.try_wait().unwrap().is_none(), "{}", p.stderr());
        }
        p.signal(signal);
        let status = exit_within(&mut p, Duration::from_secs(30)).unwrap_or_else(|| panic!("{signal}: still running\n{}", p.stderr()));
        assert!(status.success(), "{signal}: {status}: {}", p.stderr());
        assert!(p.stderr().contains("stopped"), "{signal}: {}", p.stderr());
    }
}
