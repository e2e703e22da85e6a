//! The real binary: `keytrail demo`, `keytrail serve` with its config,
//! environment and flags, the first admin, memory while streaming, and the
//! search for keys in every output.

use std::path::Path;

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::util::{assert_no_secret, everything_written, http, keys_of_every_kind, spawn_serve, start_upstream, Admin, Process, ADMIN_TOKEN};

#[tokio::test]
async fn demo_runs_prints_a_working_key_and_stops_cleanly() {
    let out = tempfile::tempdir().unwrap();
    let mut demo = Process::spawn(
        &["demo", "--gateway-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
        &[],
        out.path(),
        out.path(),
    );
    let text = demo.wait_for_stdout("Press Ctrl-C to stop.");
    let gateway = text.split("gateway    ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    let admin_url = text.split("admin API  ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    let key = text.split_whitespace().find(|w| w.starts_with("kt_test_")).unwrap().trim_matches('\'').to_string();
    let token_path = text.split("$(cat ").nth(1).unwrap().split(')').next().unwrap().to_string();
    let data_dir = Path::new(&token_path).parent().unwrap().to_path_buf();
    assert!(text.contains(&format!("curl -i {gateway}/echo/hello -H 'Authorization: Bearer {key}'")));

    let client = http();
    let res = client.get(format!("{gateway}/echo/hello")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let echo: Value = res.json().await.unwrap();
    assert_eq!(echo["echo"]["path"], "/echo/hello");
    assert!(echo["echo"]["headers"].get("authorization").is_none());
    let res = client.get(format!("{gateway}/echo/hello")).send().await.unwrap();
    assert_eq!(res.status(), 401);

    let token = std::fs::read_to_string(&token_path).unwrap().trim().to_string();
    assert!(!text.contains(&token), "the admin token itself is not printed");
    let admin = Admin { base: admin_url, token, client };
    let logs = admin.wait_for("/v1/audit/demo", "logs", 2).await;
    assert_eq!(logs[0]["status_code"], 401);
    assert_eq!(logs[1]["status_code"], 200);

    // Refused calls fire the demo's alert rule, as it says.
    assert!(text.contains("fire the alert rule `refused-calls`"), "{text}");
    for _ in 0..4 {
        let res = admin.client.get(format!("{gateway}/echo/hello")).header("X-API-Key", "kt_test_wrong").send().await.unwrap();
        assert_eq!(res.status(), 401);
    }
    let fired = admin.wait_for("/v1/audit/demo/security?event_type=alert_fired", "events", 1).await;
    assert_eq!(fired[0]["target"], "alert:refused-calls", "{fired:?}");

    // The command lines it prints work as printed, with the token exported.
    let commands: Vec<&str> = text.lines().skip_while(|l| !l.starts_with("Or from the command line")).skip(1).take_while(|l| !l.trim().is_empty()).collect();
    assert_eq!(commands.len(), 3, "{text}");
    for (line, expect) in commands.iter().zip(["/echo/hello", "kt_test****", "refused-calls"]) {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[0], crate::util::binary(), "the demo names this binary: {line}");
        let (ok, out, err) = crate::util::run_cli(&words[1..], &[("KEYTRAIL_TOKEN", admin.token.as_str())]).await;
        assert!(ok && out.contains(expect), "{line}: {out}{err}");
        assert!(!out.contains(&key), "{line} printed the key: {out}");
    }

    let status = demo.interrupt_and_wait();
    assert!(status.success(), "demo exit: {status}\n{}", demo.stderr());
    assert!(demo.stdout().contains("stopped"));
    assert!(!data_dir.exists(), "the temporary demo folder is removed on exit");
}

/// `keytrail demo --data-dir` on a folder an earlier demo used is refused
/// naming the folder and what to do (it said "is the data directory a fresh
/// folder?" with no path), and the folder is left as it was.
#[test]
fn a_second_demo_on_the_same_data_dir_names_it() {
    let out = tempfile::tempdir().unwrap();
    let data = out.path().join("demo-data");
    let args = ["demo", "--data-dir", data.to_str().unwrap(), "--gateway-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
    let mut first = Process::spawn(&args, &[], out.path(), out.path());
    first.wait_for_stdout("Press Ctrl-C to stop.");
    assert!(first.interrupt_and_wait().success(), "{}", first.stderr());
    assert!(data.join("control.db").exists(), "--data-dir is kept");
    let (code, stderr) = run_to_exit(&args, &[], out.path());
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(data.to_str().unwrap()) && stderr.contains("already"), "{stderr}");
    assert!(data.join("control.db").exists());
}

#[tokio::test]
async fn serve_uses_defaults_and_writes_a_private_bootstrap_token() {
    let cwd = tempfile::tempdir().unwrap();
    let mut p = Process::spawn(
        &["serve", "--gateway-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
        &[],
        cwd.path(),
        cwd.path(),
    );
    let admin_url = p.address_after("admin API listening on ");
    let out = p.wait_for_stdout("first admin created");
    let token_file = cwd.path().join("keytrail-data/bootstrap-admin-token");
    assert!(out.contains("keytrail-data/bootstrap-admin-token"), "{out}");
    assert!(cwd.path().join("keytrail-data/control.db").exists());
    let token = std::fs::read_to_string(&token_file).unwrap().trim().to_string();
    assert!(token.len() >= 40);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let admin = Admin { base: admin_url.clone(), token: token.clone(), client: http() };
    assert_eq!(admin.get("/v1/tenants").await.status, 200);
    let wrong = Admin { token: format!("{token}x"), ..admin.clone() };
    assert_eq!(wrong.get("/v1/tenants").await.status, 401);
    assert!(p.interrupt_and_wait().success());
    assert!(!p.stdout().contains(&token) && !p.stderr().contains(&token), "the token is never printed");

    // A restart finds the admin and does not create another.
    let mut p = Process::spawn(
        &["serve", "--gateway-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
        &[("KEYTRAIL_BOOTSTRAP_TOKEN", "another-token-that-is-long-enough")],
        cwd.path(),
        cwd.path(),
    );
    let admin_url = p.address_after("admin API listening on ");
    let admin = Admin { base: admin_url, token, client: http() };
    assert_eq!(admin.get("/v1/tenants").await.status, 200);
    let ignored = Admin { token: "another-token-that-is-long-enough".into(), ..admin.clone() };
    assert_eq!(ignored.get("/v1/tenants").await.status, 401, "the bootstrap token only applies to an empty store");
    assert!(p.interrupt_and_wait().success());
    let err = p.stderr();
    assert!(err.contains("KEYTRAIL_BOOTSTRAP_TOKEN is set but the store already has admins: it is ignored"), "said, not silent: {err}");
    assert!(!err.contains("another-token-that-is-long-enough") && !p.stdout().contains("another-token-that-is-long-enough"));
}

/// The generated first token is written before its admin is made: a start
/// that cannot write it (here a directory stands where the file goes)
/// fails without an admin, so the next start makes one and writes its
/// token. (The admin used to be made first: the failed start left an
/// owner whose token was lost, and every later start found it — locked out.)
#[tokio::test]
async fn a_first_token_that_cannot_be_written_leaves_no_admin_behind() {
    let cwd = tempfile::tempdir().unwrap();
    let data = cwd.path().join("data");
    std::fs::create_dir_all(data.join("bootstrap-admin-token")).unwrap();
    let args = ["serve", "--data-dir", data.to_str().unwrap(), "--gateway-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
    let (code, stderr) = run_refused(&args, &[], cwd.path());
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("bootstrap-admin-token"), "{stderr}");
    std::fs::remove_dir(data.join("bootstrap-admin-token")).unwrap();
    let mut p = Process::spawn(&args, &[], cwd.path(), cwd.path());
    let admin_url = p.address_after("admin API listening on ");
    p.wait_for_stdout("first admin created");
    let token = std::fs::read_to_string(data.join("bootstrap-admin-token")).unwrap().trim().to_string();
    let admin = Admin { base: admin_url, token, client: http() };
    assert_eq!(admin.get("/v1/tenants").await.status, 200);
    assert!(p.interrupt_and_wait().success());
}

#[tokio::test]
async fn config_file_environment_and_flags_in_that_order() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keytrail.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[gateway]\nlisten = \"127.0.0.1:0\"\nupstream_timeout_ms = 5000\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            dir.path().join("from-file").display()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let token = ("KEYTRAIL_BOOTSTRAP_TOKEN", ADMIN_TOKEN);

    let mut p = Process::spawn(&["serve", "--config", cfg], &[token], dir.path(), dir.path());
    p.wait_for_stdout("admin API listening");
    assert!(dir.path().join("from-file/control.db").exists(), "the file's data_dir");
    p.interrupt_and_wait();

    let env_dir = dir.path().join("from-env");
    let mut p = Process::spawn(&["serve", "--config", cfg], &[token, ("KEYTRAIL_DATA_DIR", env_dir.to_str().unwrap())], dir.path(), dir.path());
    p.wait_for_stdout("admin API listening");
    assert!(env_dir.join("control.db").exists(), "the environment beats the file");
    p.interrupt_and_wait();

    let flag_dir = dir.path().join("from-flag");
    let mut p = Process::spawn(
        &["serve", "--config", cfg, "--data-dir", flag_dir.to_str().unwrap()],
        &[token, ("KEYTRAIL_DATA_DIR", env_dir.to_str().unwrap())],
        dir.path(),
        dir.path(),
    );
    p.wait_for_stdout("admin API listening");
    assert!(flag_dir.join("control.db").exists(), "the flag beats the environment");
    p.interrupt_and_wait();
}

fn run_to_exit(args: &[&str], envs: &[(&str, &str)], dir: &Path) -> (i32, String) {
    let mut p = Process::spawn(args, envs, dir, dir);
    let status = p.child.wait().unwrap();
    (status.code().unwrap_or(-1), p.stderr())
}

/// [`run_to_exit`] for a start that should be refused: one that is not
/// (and serves on) fails the test after a while instead of hanging it.
fn run_refused(args: &[&str], envs: &[(&str, &str)], dir: &Path) -> (i32, String) {
    let mut p = Process::spawn(args, envs, dir, dir);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            return (status.code().unwrap_or(-1), p.stderr());
        }
        assert!(std::time::Instant::now() < deadline, "{args:?} {envs:?} was not refused: {}", p.stderr());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn bad_configuration_is_refused_at_start_with_file_line_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("data_dir = \"x\"\n\n[gateway]\nlisten = \"localhost\"\n", "line 4", "socket address"),
        ("[gateway]\nlisen = \"127.0.0.1:1\"\n", "line 2", "lisen"),
        ("[audit]\nflush_interval_ms = 0\n", "line 2", "between 1 and 1000"),
        ("data_dir = [\n", "line 1", ""),
        ("[nope]\n", "line 1", "nope"),
    ];
    for (i, (text, line, what)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let (code, stderr) = run_to_exit(&["serve", "--config", path.to_str().unwrap()], &[], dir.path());
        assert_eq!(code, 2, "{text:?}: {stderr}");
        assert!(stderr.contains(path.to_str().unwrap()), "names the file: {stderr}");
        assert!(stderr.contains(line), "names the {line}: {stderr}");
        assert!(stderr.contains(what), "says what is wrong ({what}): {stderr}");
    }
    let (code, stderr) = run_to_exit(&["serve", "--config", "/nonexistent/keytrail.toml"], &[], dir.path());
    assert_eq!(code, 2);
    assert!(stderr.contains("cannot read config file /nonexistent/keytrail.toml"), "{stderr}");
    assert!(!stderr.contains("KEYTRAIL_CONFIG"), "the flag gave it: {stderr}");
    // A file named by a KEYTRAIL_CONFIG left set (in a profile, a unit
    // file) says so: the operator typed no --config.
    let (code, stderr) = run_refused(&["serve"], &[("KEYTRAIL_CONFIG", "/nonexistent/old.toml")], dir.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("KEYTRAIL_CONFIG") && stderr.contains("cannot read config file /nonexistent/old.toml"), "{stderr}");
    let (code, stderr) = run_refused(&["serve", "-c", "/nonexistent/keytrail.toml"], &[("KEYTRAIL_CONFIG", "/nonexistent/old.toml")], dir.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("/nonexistent/keytrail.toml") && !stderr.contains("KEYTRAIL_CONFIG"), "the flag wins: {stderr}");
    let (code, stderr) = run_to_exit(&["serve", "--gateway-listen", "nonsense"], &[], dir.path());
    assert_eq!(code, 2, "clap refuses a bad flag value");
    assert!(stderr.contains("--gateway-listen"), "{stderr}");
    let (code, stderr) = run_to_exit(&["serve"], &[("KEYTRAIL_BOOTSTRAP_TOKEN", "short")], dir.path());
    assert_eq!(code, 2);
    assert!(stderr.contains("at least 16"), "{stderr}");
    // A token no `Authorization` header can carry would make an owner no
    // call can sign in as, for good (later starts ignore the variable).
    let (code, stderr) = run_refused(&["serve", "--gateway-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"], &[("KEYTRAIL_BOOTSTRAP_TOKEN", "t\u{f6}k\u{e9}n-abcdefghijklmnop")], dir.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("printable ASCII") && !stderr.contains("abcdefghijklmnop"), "{stderr}");
    // Country data the file names but that cannot be read is a bad setting too.
    let path = dir.path().join("geo.toml");
    std::fs::write(&path, "[gateway]\ngeo_table = \"/nonexistent/countries.csv\"\n").unwrap();
    let (code, stderr) = run_to_exit(&["serve", "--config", path.to_str().unwrap(), "--gateway-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"], &[], dir.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("gateway.geo_table") && stderr.contains("/nonexistent/countries.csv"), "{stderr}");
    assert!(!dir.path().join("keytrail-data").exists(), "nothing was created by a refused start");
}

/// A bad value in a `KEYTRAIL_*` variable is refused (exit code 2) naming
/// the variable, not only the flag the operator never typed; an empty one
/// too. A flag's own bad value still names the flag.
#[test]
fn a_bad_environment_value_names_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str, &str); 4] = [
        (&["serve"], "KEYTRAIL_ADMIN_LISTEN", "127.0.0.1:99999"),
        (&["serve"], "KEYTRAIL_GATEWAY_LISTEN", "localhost"),
        (&["verify"], "KEYTRAIL_DATA_DIR", ""),
        (&["serve"], "KEYTRAIL_CONFIG", ""),
    ];
    for (args, var, value) in cases {
        let (code, stderr) = run_to_exit(args, &[(var, value)], dir.path());
        assert_eq!(code, 2, "{var}={value:?}: {stderr}");
        assert!(stderr.contains(var), "{var}={value:?} names the variable: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let (code, stderr) = run_to_exit(&["serve", "--admin-listen", "127.0.0.1:99999"], &[("KEYTRAIL_ADMIN_LISTEN", "127.0.0.1:0")], dir.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--admin-listen") && !stderr.contains("KEYTRAIL_ADMIN_LISTEN"), "the flag, not the variable: {stderr}");
    assert!(!dir.path().join("keytrail-data").exists(), "nothing was created");
}

/// A data directory or archive directory that is a file is a bad setting:
/// refused at start naming the setting and the path (exit code 2), not
/// "File exists (os error 17)", nor (the archive directory) accepted until
/// the first archive cannot be written.
#[test]
fn a_directory_setting_that_is_a_file_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let listen = ["--gateway-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
    let path = file.to_str().unwrap();
    let mut args = vec!["serve", "--data-dir", path];
    args.extend(listen);
    let (code, stderr) = run_to_exit(&args, &[], dir.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("data_dir") && stderr.contains(path) && stderr.contains("not a directory"), "{stderr}");
    let (code, stderr) = run_to_exit(&["serve", "--gateway-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"], &[("KEYTRAIL_DATA_DIR", path)], dir.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("data_dir") && stderr.contains(path), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");

    let config = dir.path().join("keytrail.toml");
    std::fs::write(&config, format!("[retention]\narchive_dir = \"{path}\"\n")).unwrap();
    let data = dir.path().join("data");
    let mut args = vec!["serve", "--config", config.to_str().unwrap(), "--data-dir", data.to_str().unwrap()];
    args.extend(listen);
    let (code, stderr) = run_to_exit(&args, &[], dir.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("retention.archive_dir") && stderr.contains(path) && stderr.contains("not a directory"), "{stderr}");
    assert!(!data.exists(), "nothing was created");
}

/// An error is said once: a store error carries its cause both in its
/// message and as its source, and the whole chain was printed
/// ("…: unable to open database file: …: unable to open database file: …").
#[test]
fn a_store_error_at_start_is_said_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("control.db")).unwrap();
    let (code, stderr) = run_to_exit(&["serve", "--data-dir", data.to_str().unwrap(), "--gateway-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"], &[], dir.path());
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot open the control store"), "{stderr}");
    let reason = "unable to open database file: ";
    assert_eq!(stderr.matches(reason).count(), 1, "{stderr}");
}

/// Drains a response body without keeping it; returns its length.
async fn drain(res: reqwest::Response) -> u64 {
    let mut stream = res.bytes_stream();
    let mut n = 0;
    while let Some(chunk) = stream.next().await {
        n += chunk.unwrap().len() as u64;
    }
    n
}

#[tokio::test]
async fn hundred_megabyte_bodies_stream_through_in_little_memory() {
    let dir = tempfile::tempdir().unwrap();
    let up = start_upstream().await;
    let (p, admin, gateway) = spawn_serve(&dir.path().join("data"), dir.path(), &[]);
    let (_, _, key) = admin.setup("acme", "/files", &format!("http://{up}")).await;
    let client = http();
    let size: u64 = 100 * 1024 * 1024;
    let baseline = p.peak_rss_kib();

    let res = client.get(format!("{gateway}/files/download?bytes={size}")).header("X-API-Key", &key).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(drain(res).await, size);

    let (status, received) = crate::util::upload(&client, &format!("{gateway}/files/upload"), &key, 256 * 1024, size / (256 * 1024)).await;
    assert_eq!(status, 200);
    assert_eq!(received, size);

    let grown_mib = (p.peak_rss_kib().saturating_sub(baseline)) / 1024;
    eprintln!("peak RSS grew by {grown_mib} MiB (baseline {} MiB)", baseline / 1024);
    assert!(grown_mib < 40, "peak memory grew by {grown_mib} MiB while moving 2 x 100 MiB");
    let logs = admin.wait_for("/v1/audit/acme", "logs", 2).await;
    assert_eq!(logs[0]["request_size_bytes"], size);
    assert_eq!(logs[1]["response_size_bytes"], size);
}

#[tokio::test]
async fn a_large_export_streams_in_little_memory() {
    use keytrail::event::{Category, Event};
    use keytrail::store::audit::AuditWriterStore;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // Fill the store directly: 200,000 request events (~75 MB of CSV).
    let rows = 200_000u64;
    {
        let mut store = AuditWriterStore::open(&data.join("audit")).unwrap();
        let mut batch = Vec::with_capacity(10_000);
        for seq in 1..=rows {
            let mut e = Event::new("acme", Category::Request, "request", "success");
            e.timestamp_ms -= (rows - seq) as i64;
            e.path = Some(format!("/docs/page/{}", seq % 300));
            e.method = Some("GET".into());
            e.status_code = Some(200);
            e.consumer_id = Some(format!("cons_{}", seq % 50).into());
            e.user_agent = Some("Mozilla/5.0 (X11; Linux x86_64) keytrail-test".into());
            e.client_ip = Some(format!("10.0.{}.{}", seq % 200, seq % 250).into());
            e.request_id = Some(keytrail::event::new_id_at(e.timestamp_ms));
            batch.push(e);
            if batch.len() == 10_000 {
                store.insert_batch(&mut batch).unwrap();
            }
        }
        store.flush_rollups().unwrap();
    }
    let (p, admin, _) = spawn_serve(&data, dir.path(), &[]);
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    let baseline = p.peak_rss_kib();
    let res = admin.client.get(format!("{}/v1/audit/acme/export/csv", admin.base)).bearer_auth(&admin.token).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut stream = res.bytes_stream();
    let (mut bytes, mut lines) = (0u64, 0u64);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        bytes += chunk.len() as u64;
        lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
    }
    assert_eq!(lines, rows + 1, "header and every row");
    let grown_mib = (p.peak_rss_kib().saturating_sub(baseline)) / 1024;
    eprintln!("peak RSS grew by {grown_mib} MiB (baseline {} MiB)", baseline / 1024);
    assert!(grown_mib < 40, "peak memory grew by {grown_mib} MiB for a {} MiB export", bytes >> 20);
    assert!(bytes > 30 << 20, "the export is large enough to matter: {bytes} bytes");
}

/// Every place a caller can put a key, with every kind of key, and then a
/// search of everything keytrail wrote or answered.
#[tokio::test]
async fn no_key_ever_appears_in_any_output() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let up = start_upstream().await;
    let (mut p, admin, gateway) = spawn_serve(&data, dir.path(), &[("KEYTRAIL_LOG", "debug")]);
    let (consumer, _, valid) = admin.setup("acme", "/leak", &format!("http://{up}")).await;
    let keys = keys_of_every_kind(&admin, &consumer, &valid).await;

    let client = http();
    let mut answers: Vec<String> = Vec::new();
    let mut calls = 0usize;
    for key in &keys {
        let attempts: Vec<reqwest::RequestBuilder> = vec![
            client.get(format!("{gateway}/leak/fixed")).bearer_auth(key),
            client.get(format!("{gateway}/leak/fixed")).header("X-API-Key", key),
            client.get(format!("{gateway}/leak/fixed?api_key={key}&token={key}")),
            client.get(format!("{gateway}/leak/fixed")).header("X-Auth-Token", key).header("Cookie", format!("k={key}")),
            client.get(format!("{gateway}/leak/{key}/fixed")).bearer_auth(key),
            client.get(format!("{gateway}/nowhere/{key}")).header("X-API-Key", key),
            client.get(format!("{gateway}/leak/fixed")).header("User-Agent", format!("agent/{key}")).bearer_auth(key),
            client.post(format!("{gateway}/leak/fixed")).header("X-API-Key", key).body(format!("{{\"key\":\"{key}\"}}")),
            client.get(format!("{gateway}/leak/fixed")).header("Authorization", format!("Token {key}")),
        ];
        for req in attempts {
            let res = req.send().await.unwrap();
            answers.push(format!("{:?}", res.headers()));
            answers.push(res.text().await.unwrap());
            calls += 1;
        }
        // Keys sent to the admin API as a token, a tenant id and a name.
        let as_token = Admin { token: key.clone(), ..admin.clone() };
        answers.push(as_token.get("/v1/tenants").await.text);
        answers.push(admin.get(&format!("/v1/audit/{key}")).await.text);
        answers.push(admin.get(&format!("/v1/audit/acme?consumer_id={key}")).await.text);
        answers.push(admin.post("/v1/tenants/acme/consumers", json!({"name": format!("named {key}")})).await.text);
        answers.push(admin.post("/v1/tenants", json!({"id": key, "name": key})).await.text);
    }

    // Admin secrets: a robot's token, a person's password and session.
    let robot = admin.post("/v1/admins", json!({"name": "robot", "role": "admin"})).await;
    let robot_token = robot.body["token"].as_str().unwrap().to_string();
    let password = "leak-test-password-0123";
    assert_eq!(admin.post("/v1/admins", json!({"name": "ada", "role": "auditor", "password": password})).await.status, 201);
    let anonymous = Admin { token: String::new(), ..admin.clone() };
    answers.push(anonymous.post("/v1/auth/login", json!({"name": "ada", "password": "wrong-password-here"})).await.text);
    answers.push(anonymous.post("/v1/auth/login", json!({"name": password, "password": password})).await.text);
    let login = anonymous.post("/v1/auth/login", json!({"name": "ada", "password": password})).await;
    let session = login.body["session_token"].as_str().unwrap().to_string();
    let ada = Admin { token: session.clone(), ..admin.clone() };
    answers.push(ada.get("/v1/me").await.text);
    answers.push(ada.get("/v1/audit/acme/admin?limit=1000").await.text);
    assert_eq!(ada.post("/v1/auth/logout", json!({})).await.status, 200);
    let robot = Admin { token: robot_token.clone(), ..admin.clone() };
    let app_event = json!({"action": "x", "resource_type": "y", "resource_id": valid, "metadata": {"t": robot_token, "s": session}});
    answers.push(robot.post("/v1/audit/acme/events", app_event).await.text);
    answers.push(admin.get("/v1/audit/acme/events").await.text);
    answers.push(admin.get("/v1/audit/_system/admin?limit=1000").await.text);
    answers.push(admin.get("/v1/audit/_system/security?limit=1000").await.text);

    // Wait for the trail to hold every gateway call, then read every answer the admin API gives.
    let acme_calls = admin.wait_for("/v1/audit/acme?limit=1000", "logs", calls - keys.len()).await;
    assert!(!acme_calls.is_empty());
    for path in [
        "/v1/tenants".to_string(),
        "/v1/tenants/acme/apis".into(),
        "/v1/tenants/acme/consumers".into(),
        format!("/v1/tenants/acme/consumers/{consumer}/keys"),
        "/v1/audit/acme?limit=1000".into(),
        "/v1/audit/acme/security?limit=1000".into(),
        "/v1/audit/_system?limit=1000".into(),
        "/v1/audit/acme/export/csv".into(),
        "/v1/audit/acme/export/json".into(),
    ] {
        let a = admin.get(&path).await;
        assert_eq!(a.status, 200, "{path}: {}", a.text);
        answers.push(a.text);
    }
    let trail = admin.get("/v1/audit/acme?limit=1000").await.text;
    assert!(trail.contains("kt_live****"), "hints are recorded in place of keys");

    assert!(p.interrupt_and_wait().success());
    let outputs = everything_written(&p, &data, answers);
    let tenants: Vec<&String> = outputs.iter().map(|(name, _)| name).filter(|n| n.starts_with("decoded events of")).collect();
    assert!(tenants.iter().any(|n| n.ends_with(" acme")) && tenants.iter().any(|n| n.ends_with(" _system")), "{tenants:?}");
    assert!(p.stderr().contains("DEBUG") || p.stderr().contains("WARN") || !p.stderr().is_empty(), "the log was captured");
    let password = password.to_string();
    let secrets: Vec<&String> = keys.iter().chain([&robot_token, &session, &password]).collect();
    assert_no_secret(&secrets, &outputs);
}

/// A second keytrail on a data directory one is already serving is refused
/// at start, saying so, and the first one goes on; once the first has
/// stopped, the directory can be served again.
#[tokio::test]
async fn a_data_directory_serves_one_keytrail_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut first, admin, _) = spawn_serve(&data, dir.path(), &[]);
    let mut second = Process::spawn(
        &["serve", "--data-dir", data.to_str().unwrap(), "--gateway-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
        &[("KEYTRAIL_BOOTSTRAP_TOKEN", ADMIN_TOKEN)],
        dir.path(),
        dir.path(),
    );
    // Refused at once, not left running (bounded, so a regression fails
    // rather than hangs).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let status = loop {
        if let Some(status) = second.child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = second.child.kill();
            panic!("a second keytrail on the same data directory kept running");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let (code, stderr) = (status.code().unwrap_or(-1), second.stderr());
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("is in use by another keytrail"), "{stderr}");
    assert_eq!(admin.post("/v1/tenants", serde_json::json!({"id": "acme", "name": "Acme"})).await.status, 201, "the first goes on");
    first.interrupt_and_wait();
    let (mut again, admin, _) = spawn_serve(&data, dir.path(), &[]);
    let tenants = admin.get("/v1/tenants").await;
    assert!(tenants.text.contains("\"acme\""), "{}", tenants.text);
    again.interrupt_and_wait();
}

/// A start that cannot bind its listeners creates nothing in the data
/// directory: the first admin (and its token file) comes with a start that
/// can serve, and is announced then.
#[test]
fn a_start_that_cannot_listen_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let (code, stderr) = run_to_exit(&["serve", "--gateway-listen", "127.0.0.1:0", "--admin-listen", &busy], &[], dir.path());
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot listen on"), "{stderr}");
    assert!(!dir.path().join("keytrail-data").exists(), "nothing was created");
}

/// A port in use says which setting picks another address, for the
/// gateway's and the admin API's, in `serve` and in `demo` (it said only
/// "Address already in use").
#[test]
fn a_port_in_use_says_which_setting_picks_another() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    for command in ["serve", "demo"] {
        let (code, stderr) = run_to_exit(&[command, "--gateway-listen", &busy, "--admin-listen", "127.0.0.1:0"], &[], dir.path());
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains(&format!("cannot listen on {busy} for the gateway")) && stderr.contains("--gateway-listen"), "{command}: {stderr}");
        let (code, stderr) = run_to_exit(&[command, "--gateway-listen", "127.0.0.1:0", "--admin-listen", &busy], &[], dir.path());
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains(&format!("cannot listen on {busy} for the admin API")) && stderr.contains("--admin-listen"), "{command}: {stderr}");
    }
}

/// A log level keytrail cannot use is refused at start (exit code 2)
/// saying where it came from: the config file (named, with the line), the
/// `KEYTRAIL_LOG` variable, or the `--log-level` flag. It said only "log
/// level `x` is not a valid filter", whichever of the three it was.
#[test]
fn a_bad_log_level_says_where_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let listen = ["--gateway-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
    let path = dir.path().join("log.toml");
    std::fs::write(&path, "[log]\nlevel = \"keytrail=loud\"\n").unwrap();
    let mut args = vec!["serve", "--config", path.to_str().unwrap()];
    args.extend(listen);
    let (code, stderr) = run_to_exit(&args, &[], dir.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(path.to_str().unwrap()) && stderr.contains("line 2") && stderr.contains("keytrail=loud"), "the file: {stderr}");
    let mut args = vec!["serve"];
    args.extend(listen);
    let (code, stderr) = run_to_exit(&args, &[("KEYTRAIL_LOG", "keytrail=loud")], dir.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("KEYTRAIL_LOG") && stderr.contains("keytrail=loud"), "the variable: {stderr}");
    args.extend(["--log-level", "keytrail=loud"]);
    let (code, stderr) = run_to_exit(&args, &[("KEYTRAIL_LOG", "info")], dir.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--log-level") && stderr.contains("keytrail=loud") && !stderr.contains("KEYTRAIL_LOG"), "the flag: {stderr}");
    // An empty filter keeps nothing, not even warnings: refused as well
    // (`KEYTRAIL_LOG=` in an env file, `level = ""`), not a silent process.
    let (code, stderr) = run_refused(&args[..5], &[("KEYTRAIL_LOG", "")], dir.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("KEYTRAIL_LOG") && stderr.contains("empty"), "the variable: {stderr}");
    let (code, stderr) = run_refused(&[&args[..5], &["--log-level", " , "]].concat(), &[], dir.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--log-level") && stderr.contains("keeps no log"), "the flag: {stderr}");
    // `warning` is no level: to tracing a module of that name, so it kept
    // none of keytrail's logs.
    let (code, stderr) = run_refused(&args[..5], &[("KEYTRAIL_LOG", "warning")], dir.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("KEYTRAIL_LOG") && stderr.contains("`warning` is not a level"), "the variable: {stderr}");
    std::fs::write(&path, "[log]\nlevel = \"\"\n").unwrap();
    let (code, stderr) = run_refused(&[&["serve", "--config", path.to_str().unwrap()][..], &listen[..]].concat(), &[], dir.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(path.to_str().unwrap()) && stderr.contains("line 2") && stderr.contains("keeps no log"), "the file: {stderr}");
    assert!(!dir.path().join("keytrail-data").exists(), "nothing was created");
}

/// The lines `keytrail demo` prints to try work as printed in a shell when
/// the binary's path and the data directory hold a space: both were
/// printed unquoted (`/home/me/my tools/keytrail audit list …`, `$(cat
/// /tmp/demo data/bootstrap-admin-token)`), so the shell split them.
#[tokio::test]
async fn demo_lines_work_in_a_shell_with_spaces_in_the_paths() {
    let out = tempfile::tempdir().unwrap();
    let bin_dir = out.path().join("my tools");
    std::fs::create_dir(&bin_dir).unwrap();
    let bin = bin_dir.join("keytrail");
    if std::fs::hard_link(crate::util::binary(), &bin).is_err() {
        std::fs::copy(crate::util::binary(), &bin).unwrap();
    }
    let data = out.path().join("demo data");
    let stdout_path = out.path().join("demo.stdout");
    let mut child = std::process::Command::new(&bin)
        .args(["demo", "--data-dir", data.to_str().unwrap(), "--gateway-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env_remove("KEYTRAIL_BOOTSTRAP_TOKEN")
        .env_remove("KEYTRAIL_TOKEN")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(&stdout_path).unwrap_or_default();
        if text.contains("Press Ctrl-C to stop.") {
            break text;
        }
        assert!(child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline, "{text}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let export = text.lines().map(str::trim).find(|l| l.starts_with("export KEYTRAIL_TOKEN=")).unwrap().to_string();
    let commands: Vec<&str> = text.lines().skip_while(|l| !l.starts_with("Or from the command line")).skip(1).take_while(|l| !l.trim().is_empty()).collect();
    assert_eq!(commands.len(), 3, "{text}");
    for (line, expect) in commands.iter().zip(["/echo/hello", "demo-client", "refused-calls"]) {
        let script = format!("{export} && {}", line.trim());
        let shell = script.clone();
        let ran = tokio::task::spawn_blocking(move || std::process::Command::new("sh").args(["-c", &shell]).env_remove("KEYTRAIL_TOKEN").output().unwrap()).await.unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&ran.stdout), String::from_utf8_lossy(&ran.stderr));
        assert!(ran.status.success(), "{script}: {stdout}{stderr}");
        if expect == "demo-client" {
            assert!(stdout.contains("kt_test****"), "{script}: {stdout}");
        }
        if expect == "refused-calls" {
            assert!(stdout.contains("refused-calls") && stdout.contains("event_type=auth_failed"), "{script}: {stdout}");
        }
    }
    let _ = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    assert!(child.wait().unwrap().success());
}

/// `keytrail demo --data-dir` naming a file is refused naming `--data-dir`,
/// the only way the demo is given a data directory (it reads no
/// `KEYTRAIL_DATA_DIR`, which the message named), as a usage error.
#[test]
fn a_demo_data_dir_that_is_a_file_names_the_flag() {
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let (code, stderr) = run_refused(&["demo", "--data-dir", file.to_str().unwrap(), "--gateway-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"], &[], out.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--data-dir") && stderr.contains(file.to_str().unwrap()) && stderr.contains("is not a directory"), "{stderr}");
    assert!(!stderr.contains("KEYTRAIL_DATA_DIR") && !stderr.contains("data_dir ("), "{stderr}");
}

/// `keytrail demo` on a port in use says to pick another with the demo's
/// own flag: it named `KEYTRAIL_GATEWAY_LISTEN` and `gateway.listen`, a
/// variable and a file the demo does not read (setting them changed
/// nothing).
#[test]
fn a_demo_port_in_use_names_the_demo_flag() {
    let out = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for (flag, other) in [("--gateway-listen", "--admin-listen"), ("--admin-listen", "--gateway-listen")] {
        let (code, stderr) = run_refused(&["demo", flag, &addr, other, "127.0.0.1:0"], &[], out.path());
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains(&format!("cannot listen on {addr}")) && stderr.contains(&format!("pick another address with {flag}")), "{stderr}");
        assert!(!stderr.contains("KEYTRAIL_") && !stderr.contains(".listen"), "{stderr}");
    }
}
