//! `keytrail demo`'s line that sets `KEYTRAIL_TOKEN` for the lines after
//! it, when the demo wrote no token file: it works as pasted into a shell.

use std::path::Path;

use crate::util::{spawn_serve, Process, ADMIN_TOKEN};

/// A demo on `data` (with `envs`), once it has printed its lines: the
/// process, the `export KEYTRAIL_TOKEN=…` line and the `keys list` line.
fn demo(data: &Path, envs: &[(&str, &str)], out: &Path) -> (Process, String, String) {
    let args = ["demo", "--data-dir", data.to_str().unwrap(), "--gateway-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
    let mut p = Process::spawn(&args, envs, out, out);
    let text = p.wait_for_stdout("Press Ctrl-C to stop.");
    assert!(!text.contains(ADMIN_TOKEN), "the token is never printed: {text}");
    let export = text.lines().map(str::trim).find(|l| l.starts_with("export KEYTRAIL_TOKEN=")).unwrap_or_else(|| panic!("{text}")).to_string();
    let keys = text.lines().map(str::trim).find(|l| l.contains(" keys list ")).unwrap_or_else(|| panic!("{text}")).to_string();
    (p, export, keys)
}

/// `sh -c "<export> && <command>"` with `envs` (and no `KEYTRAIL_*`
/// variable besides): whether it succeeded, its stdout and its stderr.
fn in_shell(export: &str, command: &str, envs: &[(&str, &str)]) -> (bool, String, String) {
    let mut sh = std::process::Command::new("sh");
    sh.args(["-c", &format!("{export} && {command}")]).env_remove("KEYTRAIL_TOKEN").env_remove("KEYTRAIL_BOOTSTRAP_TOKEN");
    for (k, v) in envs {
        sh.env(k, v);
    }
    let ran = sh.output().unwrap();
    (ran.status.success(), String::from_utf8_lossy(&ran.stdout).into_owned(), String::from_utf8_lossy(&ran.stderr).into_owned())
}

/// A demo started with `KEYTRAIL_BOOTSTRAP_TOKEN` printed `export
/// KEYTRAIL_TOKEN=<your KEYTRAIL_BOOTSTRAP_TOKEN>`, which a shell reads as
/// redirections (a syntax error), so the lines after it failed as pasted.
/// It now takes the token from that variable in the shell that started the
/// demo, and where the variable is not set says so instead of going on
/// with an empty token.
#[test]
fn the_demo_token_line_works_as_pasted_with_a_bootstrap_token() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, export, keys) = demo(&dir.path().join("data"), &[("KEYTRAIL_BOOTSTRAP_TOKEN", ADMIN_TOKEN)], dir.path());
    let (ok, stdout, stderr) = in_shell(&export, &keys, &[("KEYTRAIL_BOOTSTRAP_TOKEN", ADMIN_TOKEN)]);
    assert!(ok && stdout.contains("kt_test****"), "{export}: {stdout}{stderr}");
    let (ok, stdout, stderr) = in_shell(&export, &keys, &[]);
    assert!(!ok && stdout.is_empty() && stderr.contains("KEYTRAIL_BOOTSTRAP_TOKEN"), "{export}: {stdout}{stderr}");
    assert!(p.interrupt_and_wait().success(), "{}", p.stderr());
}

/// A demo on a data directory that has admins already (its first admin
/// made by an earlier `serve`) printed the same placeholder, naming a
/// variable the demo did not take its token from. It now keeps the admin's
/// own `KEYTRAIL_TOKEN`, and says to set it when it is not.
#[test]
fn the_demo_token_line_works_as_pasted_on_a_data_dir_with_admins() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut serve, _, _) = spawn_serve(&data, dir.path(), &[]);
    assert!(serve.interrupt_and_wait().success(), "{}", serve.stderr());
    let (mut p, export, keys) = demo(&data, &[], dir.path());
    let (ok, stdout, stderr) = in_shell(&export, &keys, &[("KEYTRAIL_TOKEN", ADMIN_TOKEN)]);
    assert!(ok && stdout.contains("kt_test****"), "{export}: {stdout}{stderr}");
    let (ok, stdout, stderr) = in_shell(&export, &keys, &[]);
    assert!(!ok && stdout.is_empty() && stderr.contains("KEYTRAIL_TOKEN"), "{export}: {stdout}{stderr}");
    assert!(p.interrupt_and_wait().success(), "{}", p.stderr());
}
