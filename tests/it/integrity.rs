//! Proof that nothing changed: the chain and the signed checkpoints against
//! direct tampering with the SQLite files, through the library, the
//! `keytrail verify` command and the API.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection};
use serde_json::json;

use keytrail::event::{Category, Event};
use keytrail::signing::Signer;
use keytrail::store::audit::integrity::{verify_dir, IntegrityReport};
use keytrail::store::audit::AuditWriterStore;

use crate::util::{spawn_serve, Process, TestServer, ADMIN_TOKEN};

const BATCHES: usize = 8;
const PER_BATCH: usize = 10;
/// 2026-11-18, all in one day file.
const T0: i64 = 1_795_000_000_000;

fn batch(n: usize, changed: Option<(usize, usize, u16)>) -> Vec<Event> {
    (0..PER_BATCH)
        .map(|i| {
            let mut e = Event::new("acme", Category::Request, "api_call", "success");
            e.timestamp_ms = T0 + (n * PER_BATCH + i) as i64 * 1000;
            e.consumer_id = Some(format!("cons_{}", i % 3).into());
            e.method = Some("GET".into());
            e.path = Some(format!("/orders/{i}"));
            e.status_code = Some(match changed {
                Some((b, row, status)) if b == n && row == i => status,
                _ => 200,
            });
            e
        })
        .collect()
}

/// Writes the trail into `dir/audit`; signs checkpoints (every 25 events and
/// at the end) when `signer` is given.
fn build(dir: &Path, signer: Option<Signer>, changed: Option<(usize, usize, u16)>) -> PathBuf {
    let audit = dir.join("audit");
    let mut store = AuditWriterStore::open(&audit).unwrap();
    if let Some(signer) = signer {
        store.enable_checkpoints(signer, 25, 3_600_000).unwrap();
    }
    for n in 0..BATCHES {
        let mut events = batch(n, changed);
        store.insert_batch(&mut events).unwrap();
        store.checkpoint(false).unwrap();
    }
    store.checkpoint(true).unwrap();
    audit
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

fn day_file(audit: &Path) -> PathBuf {
    std::fs::read_dir(audit)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "db") && !p.ends_with("meta.db"))
        .unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    original: PathBuf,
    key: ed25519_dalek::VerifyingKey,
    /// The same trail with event 3 of block 4 (seq 44) answered 500, hashed
    /// consistently but not signed.
    twin: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::load_or_create(&dir.path().join("signing.key")).unwrap();
    let key = signer.public_key();
    let original = build(&dir.path().join("a"), Some(signer), None);
    let twin = build(&dir.path().join("b"), None, Some((4, 3, 500)));
    Fixture { _dir: dir, original, key, twin }
}

impl Fixture {
    /// A copy of the intact trail to tamper with.
    fn copy(&self, name: &str) -> PathBuf {
        let to = self.original.parent().unwrap().join(format!("tampered-{name}"));
        copy_dir(&self.original, &to);
        to
    }

    fn verify(&self, audit: &Path) -> IntegrityReport {
        verify_dir(audit, Some("acme"), &self.key).unwrap().remove(0)
    }

    fn assert_caught(&self, audit: &Path, needles: &[&str]) {
        let report = self.verify(audit);
        assert!(!report.ok, "tampering went unnoticed: {report:?}");
        let text = report.problems.join("\n");
        for needle in needles {
            assert!(text.contains(needle), "`{needle}` not in:\n{text}");
        }
    }
}

/// Blocks as (id, first_seq), in chain order.
fn blocks(conn: &Connection) -> Vec<(i64, i64)> {
    let mut stmt = conn.prepare("SELECT id, first_seq FROM blocks ORDER BY first_seq").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
}

/// `keytrail verify` without `--tenant` checks every tenant `meta.db` knows
/// of, not only those with blocks left: a tenant whose blocks were all
/// deleted is reported, not skipped.
#[test]
fn verifying_every_tenant_reports_one_whose_blocks_were_all_deleted() {
    let f = fixture();
    let all = verify_dir(&f.original, None, &f.key).unwrap();
    assert_eq!(all.iter().map(|r| (r.tenant.as_str(), r.ok)).collect::<Vec<_>>(), [("acme", true)]);
    let audit = f.copy("all-blocks");
    Connection::open(day_file(&audit)).unwrap().execute("DELETE FROM blocks", []).unwrap();
    let all = verify_dir(&audit, None, &f.key).unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(!all[0].ok && all[0].tenant == "acme", "{all:?}");
    assert!(all[0].problems.join("\n").contains("missing"), "{all:?}");
}

#[test]
fn an_intact_trail_verifies_with_its_checkpoints() {
    let f = fixture();
    let report = f.verify(&f.original);
    assert!(report.ok, "{report:?}");
    assert_eq!((report.events, report.last_seq), (80, 80));
    assert_eq!(report.checkpoints, 3, "at 30 and 60 (every 25 events, at batch ends) and the last at 80: {report:?}");
    assert_eq!(report.last_checkpoint_seq, Some(80));
    // The twin alone is a consistent chain: only the checkpoints can tell.
    let twin = verify_dir(&f.twin, Some("acme"), &f.key).unwrap().remove(0);
    assert!(twin.ok && twin.checkpoints == 0, "{twin:?}");
}

#[test]
fn a_changed_status_code_is_caught_at_its_block() {
    let f = fixture();
    let audit = f.copy("status");
    // The block re-encoded with status 500 for seq 44, its stored hash kept.
    let twin = Connection::open(day_file(&f.twin)).unwrap();
    let data: Vec<u8> = twin.query_row("SELECT data FROM blocks WHERE first_seq = 41", [], |r| r.get(0)).unwrap();
    let conn = Connection::open(day_file(&audit)).unwrap();
    assert_eq!(conn.execute("UPDATE blocks SET data = ?1 WHERE first_seq = 41", params![data]).unwrap(), 1);
    f.assert_caught(&audit, &["events 41..=50", "do not hash"]);
}

#[test]
fn a_history_rewritten_with_fresh_hashes_is_caught_by_the_checkpoints() {
    let f = fixture();
    let audit = f.copy("rewrite");
    // Every block from seq 41 on, with hashes recomputed; heads moved to match.
    let twin = Connection::open(day_file(&f.twin)).unwrap();
    let conn = Connection::open(day_file(&audit)).unwrap();
    let mut stmt = twin.prepare("SELECT first_seq, prev_hash, hash, data FROM blocks WHERE first_seq >= 41").unwrap();
    /// A block row: first seq, prev hash, hash, data.
    type BlockRow = (i64, Vec<u8>, Vec<u8>, Vec<u8>);
    let rows: Vec<BlockRow> =
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).unwrap().map(Result::unwrap).collect();
    for (first_seq, prev, hash, data) in &rows {
        conn.execute("UPDATE blocks SET prev_hash = ?2, hash = ?3, data = ?4 WHERE first_seq = ?1", params![first_seq, prev, hash, data]).unwrap();
    }
    let head: Vec<u8> = rows.last().unwrap().2.clone();
    conn.execute("UPDATE chain_heads SET hash = ?1", params![head]).unwrap();
    Connection::open(audit.join("meta.db")).unwrap().execute("UPDATE heads SET hash = ?1", params![head]).unwrap();
    let report = f.verify(&audit);
    assert_eq!(report.events, 80, "the chain itself links: {report:?}");
    f.assert_caught(&audit, &["checkpoint at seq 60", "rewritten", "checkpoint at seq 80"]);
}

#[test]
fn a_deleted_block_is_caught() {
    let f = fixture();
    let audit = f.copy("delete");
    let conn = Connection::open(day_file(&audit)).unwrap();
    conn.execute("DELETE FROM blocks WHERE first_seq = 31", []).unwrap();
    f.assert_caught(&audit, &["expected seq 31 next, found 41", "events 41..=50"]);
}

#[test]
fn two_swapped_blocks_are_caught() {
    let f = fixture();
    let audit = f.copy("swap");
    let conn = Connection::open(day_file(&audit)).unwrap();
    let all = blocks(&conn);
    let (a, b) = (all[2].0, all[5].0);
    // Swap the contents (data and hashes) of the 3rd and 6th blocks.
    conn.execute_batch(&format!(
        "CREATE TEMP TABLE t AS SELECT id, prev_hash, hash, data FROM blocks WHERE id IN ({a}, {b});
         UPDATE blocks SET prev_hash = (SELECT prev_hash FROM t WHERE t.id <> blocks.id),
                           hash = (SELECT hash FROM t WHERE t.id <> blocks.id),
                           data = (SELECT data FROM t WHERE t.id <> blocks.id)
         WHERE id IN ({a}, {b});"
    ))
    .unwrap();
    f.assert_caught(&audit, &["events 21..=30", "previous block's hash"]);
}

#[test]
fn a_forged_block_inserted_in_the_middle_is_caught() {
    let f = fixture();
    let audit = f.copy("insert");
    let conn = Connection::open(day_file(&audit)).unwrap();
    // Make room after seq 50 and put a copy of another block there.
    conn.execute_batch(
        "UPDATE blocks SET first_seq = first_seq + 1000 WHERE first_seq > 50;
         UPDATE blocks SET first_seq = first_seq - 1000 + 10 WHERE first_seq > 1000;
         INSERT INTO blocks (tenant, first_seq, rows, min_ts, max_ts, categories, prev_hash, hash, data)
           SELECT tenant, 51, rows, min_ts, max_ts, categories, (SELECT hash FROM blocks WHERE first_seq = 41), hash, data
           FROM blocks WHERE first_seq = 11;",
    )
    .unwrap();
    f.assert_caught(&audit, &["events 51..=60", "do not hash"]);
}

#[test]
fn a_truncated_tail_is_caught_by_the_last_checkpoint() {
    let f = fixture();
    let audit = f.copy("truncate");
    let conn = Connection::open(day_file(&audit)).unwrap();
    // The last two blocks go, and every head is moved back to hide it.
    let head: Vec<u8> = conn.query_row("SELECT hash FROM blocks WHERE first_seq = 51", [], |r| r.get(0)).unwrap();
    conn.execute("DELETE FROM blocks WHERE first_seq > 60", []).unwrap();
    conn.execute("UPDATE chain_heads SET seq = 60, hash = ?1", params![head]).unwrap();
    Connection::open(audit.join("meta.db")).unwrap().execute("UPDATE heads SET seq = 60, hash = ?1", params![head]).unwrap();
    let report = f.verify(&audit);
    assert_eq!(report.last_seq, 60);
    f.assert_caught(&audit, &["checkpoint at seq 80", "chain ends at seq 60", "events 61..=80 are missing"]);
}

#[test]
fn a_forged_checkpoint_is_caught() {
    let f = fixture();
    let audit = f.copy("forged-checkpoint");
    let meta = Connection::open(audit.join("meta.db")).unwrap();
    meta.execute("UPDATE checkpoints SET signed_at = signed_at + 1 WHERE seq = 60", []).unwrap();
    f.assert_caught(&audit, &["checkpoint at seq 60: the signature does not verify"]);
    // And checked with someone else's key, nothing verifies.
    let other = Signer::load_or_create(&audit.join("other.key")).unwrap().public_key();
    let report = verify_dir(&f.original, Some("acme"), &other).unwrap().remove(0);
    assert_eq!(report.problems.len(), 3, "{report:?}");
}

#[test]
fn verify_from_a_time_walks_the_chain_from_there_and_says_so() {
    let f = fixture();
    // Block 4 (seqs 41..=50) altered, as in the test above.
    let audit = f.copy("from");
    let twin = Connection::open(day_file(&f.twin)).unwrap();
    let data: Vec<u8> = twin.query_row("SELECT data FROM blocks WHERE first_seq = 41", [], |r| r.get(0)).unwrap();
    Connection::open(day_file(&audit)).unwrap().execute("UPDATE blocks SET data = ?1 WHERE first_seq = 41", params![data]).unwrap();
    let from = |audit: &Path, ms: i64| keytrail::store::audit::integrity::verify_dir_from(audit, Some("acme"), &f.key, Some(ms)).unwrap().remove(0);
    // From the time of seq 51 on: block 6 onwards only, and intact.
    let report = from(&audit, T0 + 50_000);
    assert!(report.ok, "{report:?}");
    assert_eq!((report.from_seq, report.events, report.last_seq), (Some(51), 30, 80), "{report:?}");
    // From seq 45's time: its block is walked, and the change is caught.
    let report = from(&audit, T0 + 44_000);
    assert!(!report.ok && report.problems[0].contains("events 41..=50"), "{report:?}");
    assert_eq!(report.from_seq, Some(41));
    // From before the first event: the whole chain, as without --from.
    let whole = from(&f.original, T0 - 1);
    assert_eq!((whole.ok, whole.from_seq, whole.events), (true, None, 80), "{whole:?}");
    // From after the last: nothing walked; the last checkpoint (at 80) is
    // before the start, so only its signature is checked.
    let none = from(&f.original, T0 + 3_600_000);
    assert_eq!((none.ok, none.from_seq, none.events, none.last_seq), (true, Some(81), 0, 80), "{none:?}");

    // The command line, with a day or a time, and bad input.
    let out = tempfile::tempdir().unwrap();
    let data_dir = audit.parent().unwrap().join("from-data");
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::rename(&audit, data_dir.join("audit")).unwrap();
    std::fs::copy(f.original.parent().unwrap().parent().unwrap().join("signing.key"), data_dir.join("signing.key")).unwrap();
    let dir = data_dir.to_str().unwrap();
    let (ok, text) = run(&["verify", "--data-dir", dir, "--from", "2026-11-18"], out.path());
    assert!(!ok && text.contains("events 41..=50"), "{text}");
    let at = keytrail::event::format_timestamp(T0 + 50_000);
    let (ok, text) = run(&["verify", "--data-dir", dir, "--from", &at], out.path());
    assert!(ok && text.contains("from seq 51 (the link to the events before it trusted as stored)"), "{text}");
    // After the last event: none, said as none (not `seq 81..=80`).
    let (ok, text) = run(&["verify", "--data-dir", dir, "--from", &keytrail::event::format_timestamp(T0 + 3_600_000)], out.path());
    assert!(ok && text.contains("0 events from --from on (none stored after seq 80)") && !text.contains("81..=80"), "{text}");
    // A time that is none is a usage error (exit 2, as for every flag
    // clap refuses), not a failed verification (exit 1).
    let mut p = Process::spawn(&["verify", "--data-dir", dir, "--from", "18/11/2026"], &[], out.path(), out.path());
    let status = p.child.wait().unwrap();
    let text = p.stderr();
    assert_eq!(status.code(), Some(2), "{text}");
    assert!(text.contains("--from") && text.contains("`18/11/2026` is neither an RFC 3339 time"), "{text}");
    let (ok, text) = run(&["verify", "--file", "x.json", "--from", "2026-11-18"], out.path());
    assert!(!ok && text.contains("--from"), "{text}");
}

// --- chain heads in meta.db ---

const DAY_MS: i64 = 86_400_000;

fn one(tenant: &str, ts: i64) -> Event {
    let mut e = Event::new(tenant, Category::Request, "api_call", "success");
    e.timestamp_ms = ts;
    e
}

/// The heads `meta.db` holds, by tenant.
fn meta_heads(audit: &Path) -> std::collections::HashMap<String, i64> {
    let conn = Connection::open(audit.join("meta.db")).unwrap();
    let mut stmt = conn.prepare("SELECT tenant, seq FROM heads").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
}

/// Makes every later commit of blocks to the day file of `ts` fail, as a
/// full disk would (a trigger added from another connection); `false` lets
/// them succeed again.
fn break_day_file(audit: &Path, ts: i64, broken: bool) {
    let path = audit.join(format!("{}.db", keytrail::store::audit::archive::day_name(ts.div_euclid(DAY_MS))));
    let conn = Connection::open(path).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    if broken {
        conn.execute_batch("CREATE TRIGGER broken BEFORE INSERT ON blocks BEGIN SELECT RAISE(ABORT, 'disk full'); END;").unwrap();
    } else {
        conn.execute_batch("DROP TRIGGER broken;").unwrap();
    }
}

/// A batch over midnight is committed a day file at a time. When the
/// second day's commit fails, the first day's commit stands: its heads must
/// still reach meta.db, or once retention has deleted that day's file a
/// restart would begin the tenant's chain again at an older head.
#[test]
fn a_batch_over_midnight_whose_second_day_fails_still_saves_the_first_days_heads() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    let day0 = T0.div_euclid(DAY_MS) * DAY_MS;
    let (late, early) = (day0 + DAY_MS - 1_000, day0 + DAY_MS + 1_000);
    let mut store = AuditWriterStore::open(&audit).unwrap();
    store.insert_batch(&mut vec![one("globex", early)]).unwrap();
    break_day_file(&audit, early, true);
    // acme's slow call of the evening and globex's next call of the morning.
    let mut batch = vec![one("acme", late), one("globex", early + 1)];
    assert!(store.insert_batch(&mut batch).is_err());
    assert_eq!(batch.len(), 1, "acme's day committed, globex's left for the retry");
    assert_eq!(store.heads()["acme"].seq, 1);
    // The disk comes back and the writer retries what is left.
    break_day_file(&audit, early, false);
    store.insert_batch(&mut batch).unwrap();
    drop(store);
    assert_eq!(meta_heads(&audit).get("acme"), Some(&1), "acme's head is not in meta.db");
    // Retention drops the first day's file: acme's chain still goes on from seq 1.
    std::fs::remove_file(audit.join(format!("{}.db", keytrail::store::audit::archive::day_name(day0 / DAY_MS)))).unwrap();
    let store = AuditWriterStore::open(&audit).unwrap();
    assert_eq!(store.heads().get("acme").map(|h| h.seq), Some(1));
}

/// A batch over more days than the writer keeps open closes the least
/// recently used file on the way. Once closed, retention may delete it, so
/// its heads are in meta.db before it closes (not only at the batch's end,
/// which a failing later day never reaches).
#[test]
fn a_day_file_closed_to_make_room_has_its_heads_in_meta_db() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    let day0 = T0.div_euclid(DAY_MS) * DAY_MS;
    let mut store = AuditWriterStore::open(&audit).unwrap();
    let last = day0 + 3 * DAY_MS + 1_000;
    store.insert_batch(&mut vec![one("globex", last)]).unwrap();
    break_day_file(&audit, last, true);
    // A backlog of four days (three are kept open): acme's day 0 is closed
    // to open day 3's file, whose commit then fails.
    let mut batch = vec![one("acme", day0 + 1_000), one("globex", day0 + DAY_MS + 1_000), one("globex", day0 + 2 * DAY_MS + 1_000), one("globex", last + 1)];
    assert!(store.insert_batch(&mut batch).is_err());
    assert_eq!(batch.len(), 1, "days 0 to 2 committed");
    assert_eq!(meta_heads(&audit).get("acme"), Some(&1), "day 0's file was closed without its heads in meta.db");
    // Nothing is lost: the retry commits the rest and the trail verifies.
    break_day_file(&audit, last, false);
    store.insert_batch(&mut batch).unwrap();
    drop(store);
    assert_eq!(meta_heads(&audit).get("globex"), Some(&4));
    let key = Signer::load_or_create(&dir.path().join("signing.key")).unwrap().public_key();
    for report in verify_dir(&audit, None, &key).unwrap() {
        assert!(report.ok, "{report:?}");
    }
}

fn run(args: &[&str], dir: &Path) -> (bool, String) {
    let mut p = Process::spawn(args, &[], dir, dir);
    let status = p.child.wait().unwrap();
    (status.success(), format!("{}{}", p.stdout(), p.stderr()))
}

#[tokio::test]
async fn keytrail_verify_and_the_api_check_a_running_servers_trail() {
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let (mut p, admin, _) = spawn_serve(data.path(), out.path(), &[]);
    admin.setup("acme", "/docs", "http://127.0.0.1:9").await;
    let answer = admin.get("/v1/audit/acme/verify").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.body["ok"], true, "{}", answer.text);
    assert_eq!(answer.body["tenant"], "acme");
    let dir = data.path().to_str().unwrap();
    let (ok, public) = run(&["keys", "public", "--data-dir", dir], out.path());
    assert!(ok, "{public}");
    let public = public.trim().to_string();
    assert_eq!(public.len(), 64);
    assert_eq!(answer.body["public_key"], json!(public));
    // From a day on; a bad time is a 400 that says what to send.
    let answer = admin.get("/v1/audit/acme/verify?from=2000-01-01").await;
    assert_eq!((answer.status, answer.body["ok"].clone(), answer.body["from_seq"].clone()), (200, json!(true), json!(null)), "{}", answer.text);
    let answer = admin.get("/v1/audit/acme/verify?from=yesterday").await;
    assert_eq!((answer.status, answer.body["error"]["code"].as_str()), (400, Some("invalid_parameter")), "{}", answer.text);
    assert!(answer.text.contains("RFC 3339"), "{}", answer.text);
    let answer = admin.get("/v1/audit/acme/verify?since=2000-01-01").await;
    assert_eq!(answer.status, 400, "{}", answer.text);
    assert!(p.interrupt_and_wait().success());

    // Stopped, every chain is signed to its end.
    let (ok, text) = run(&["verify", "--data-dir", dir, "--public-key", &public], out.path());
    assert!(ok, "{text}");
    assert!(text.contains("acme") && text.contains(" ok "), "{text}");
    let (ok, json_text) = run(&["verify", "--data-dir", dir, "--tenant", "acme", "--json"], out.path());
    assert!(ok, "{json_text}");
    let reports: serde_json::Value = serde_json::from_str(&json_text).unwrap();
    assert_eq!(reports[0]["last_checkpoint_seq"], reports[0]["last_seq"]);

    // Tampered: exit code 1 and the events named.
    let audit = data.path().join("audit");
    let conn = Connection::open(day_file(&audit)).unwrap();
    let last: i64 = conn.query_row("SELECT max(first_seq) FROM blocks b JOIN strings s ON s.id = b.tenant WHERE s.value = 'acme'", [], |r| r.get(0)).unwrap();
    conn.execute("DELETE FROM blocks WHERE first_seq = ?1 AND tenant = (SELECT id FROM strings WHERE value = 'acme')", params![last]).unwrap();
    let (ok, text) = run(&["verify", "--data-dir", dir, "--tenant", "acme"], out.path());
    assert!(!ok, "{text}");
    assert!(text.contains("FAILED") && text.contains("are missing"), "{text}");

    // Bad input says what to fix.
    let (ok, text) = run(&["verify", "--data-dir", dir, "--public-key", "xyz"], out.path());
    assert!(!ok && text.contains("--public-key: a public key is 64 hexadecimal digits"), "{text}");
    let (ok, text) = run(&["keys", "public", "--data-dir", out.path().join("nothing").to_str().unwrap()], out.path());
    assert!(!ok && text.contains("is it a keytrail data directory") || text.contains("a keytrail data directory"), "{text}");
}

#[tokio::test]
async fn checkpoints_are_written_as_the_trail_grows() {
    let mut ts = TestServer::start_with(tempfile::tempdir().unwrap(), |c| {
        c.audit.checkpoint_every_events = 3;
    })
    .await;
    let admin = ts.admin_client();
    admin.setup("acme", "/docs", "http://127.0.0.1:9").await;
    for i in 0..4 {
        admin.post("/v1/tenants/acme/consumers", json!({"name": format!("c{i}")})).await;
        ts.flush().await;
    }
    let audit = ts.audit_dir();
    let signed = keytrail::store::audit::integrity::checkpoints(&audit, "acme").unwrap();
    assert!(signed.len() >= 3, "{signed:?}");
    assert!(signed.windows(2).all(|w| w[0].seq < w[1].seq));
    ts.stop().await;
    let key = Signer::load_or_create(&ts.data_dir.join("signing.key")).unwrap().public_key();
    let report = verify_dir(&audit, Some("acme"), &key).unwrap().remove(0);
    assert!(report.ok, "{report:?}");
    assert_eq!(report.last_checkpoint_seq, Some(report.last_seq), "the shutdown signs the end");
}

#[tokio::test]
async fn a_json_export_verifies_offline_and_shows_any_edit() {
    let ts = TestServer::start_with(tempfile::tempdir().unwrap(), |c| c.audit.checkpoint_every_events = 4).await;
    let up = crate::util::start_upstream().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    for i in 0..12 {
        let res = ts.client.get(format!("{}/docs/{i}", ts.gateway)).header("X-API-Key", &key).send().await.unwrap();
        assert_eq!(res.status(), 200);
        if i == 5 {
            // A refused call: its `auth_failed` security event lands between calls.
            let res = ts.client.get(format!("{}/docs/x", ts.gateway)).header("X-API-Key", "kt_live_wrong").send().await.unwrap();
            assert_eq!(res.status(), 401);
        }
        if i % 3 == 0 {
            ts.flush().await;
        }
    }
    ts.flush().await;
    let export = |query: &'static str| {
        let (client, url, token) = (ts.client.clone(), format!("{}/v1/audit/acme/export/json{query}", ts.admin), admin.token.clone());
        async move { client.get(url).bearer_auth(token).send().await.unwrap().json::<serde_json::Value>().await.unwrap() }
    };
    let public = Signer::load_or_create(&ts.data_dir.join("signing.key")).unwrap().public_key();
    let public_text = keytrail::signing::public_key_text(&public);

    // The whole chain: complete, and proven up to its last checkpoint.
    let all = export("?category=all").await;
    assert_eq!(all["verification"]["public_key"], json!(public_text));
    let report = keytrail::store::audit::integrity::verify_export(&all, &public).unwrap();
    assert!(report.ok && report.complete, "{report:?}");
    assert!(report.checkpoints_verified >= 2, "{report:?}");
    let proven = report.proven_through.unwrap();
    assert!(proven >= 12 && proven <= report.last_seq.unwrap(), "{report:?}");

    // The default export (calls only) has gaps where other events were: each
    // event still checks out on its own.
    let calls = export("").await;
    let report = keytrail::store::audit::integrity::verify_export(&calls, &public).unwrap();
    assert!(report.ok && !report.complete && !report.gaps.is_empty(), "{report:?}");

    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut doc = all.clone();
        f(&mut doc);
        keytrail::store::audit::integrity::verify_export(&doc, &public).unwrap()
    };
    // A call in the middle of the signed range.
    let index = all["logs"].as_array().unwrap().iter().position(|e| e["status_code"] == 200 && e["seq"].as_u64() < Some(proven)).unwrap();
    let seq = all["logs"][index]["seq"].as_u64().unwrap();
    // A visible field changed.
    let r = edit(&|d| d["logs"][index]["status_code"] = json!(500));
    assert!(!r.ok && r.problems[0].contains(&format!("seq {seq}: the entry's fields differ")), "{r:?}");
    // The event changed too.
    let r = edit(&|d| {
        d["logs"][index]["status_code"] = json!(500);
        d["logs"][index]["event"]["status_code"] = json!(500);
    });
    assert!(!r.ok && r.problems.iter().any(|p| p.contains(&format!("seq {seq}: the event does not match its hash"))), "{r:?}");
    // An event removed: no longer complete, and nothing is proven past the gap.
    let r = edit(&|d| {
        d["logs"].as_array_mut().unwrap().remove(index);
    });
    assert!(!r.complete && r.gaps == vec![(seq, seq)], "{r:?}");
    assert!(r.proven_through.is_none_or(|p| p < seq), "{r:?}");
    // The newest events cut off, their signed checkpoint kept (an export
    // holds the checkpoints of its own range only): it said ok and
    // complete, proven up to an earlier checkpoint.
    let r = edit(&|d| d["logs"].as_array_mut().unwrap().retain(|e| e["seq"].as_u64() < Some(proven)));
    assert!(r.last_seq < Some(proven), "{r:?}");
    assert!(!r.ok && r.problems.iter().any(|p| p.contains(&format!("checkpoint at seq {proven}")) && p.contains("cut off")), "{r:?}");
    // The oldest, likewise.
    let first_checkpoint = all["verification"]["checkpoints"][0]["seq"].as_u64().unwrap();
    let r = edit(&|d| d["logs"].as_array_mut().unwrap().retain(|e| e["seq"].as_u64() > Some(first_checkpoint)));
    assert!(!r.ok && r.problems.iter().any(|p| p.contains(&format!("checkpoint at seq {first_checkpoint}")) && p.contains("cut off")), "{r:?}");
    // A forged checkpoint, or another key.
    let r = edit(&|d| d["verification"]["checkpoints"][0]["seq"] = json!(1));
    assert!(!r.ok && r.problems.iter().any(|p| p.contains("signature does not verify")), "{r:?}");
    let stranger = Signer::load_or_create(&ts.data_dir.join("stranger.key")).unwrap().public_key();
    assert!(!keytrail::store::audit::integrity::verify_export(&all, &stranger).unwrap().ok);

    // The command line, as a client would run it.
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("export.json");
    std::fs::write(&file, all.to_string()).unwrap();
    let path = file.to_str().unwrap();
    let (ok, text) = run(&["verify", "--file", path, "--public-key", &public_text], out.path());
    assert!(ok && text.contains("complete and unaltered"), "{text}");
    let mut tampered = all.clone();
    tampered["logs"][index]["event"]["path"] = json!("/docs/elsewhere");
    std::fs::write(&file, tampered.to_string()).unwrap();
    let (ok, text) = run(&["verify", "--file", path, "--public-key", &public_text], out.path());
    assert!(!ok && text.contains("FAILED"), "{text}");
    let (ok, text) = run(&["verify", "--file", path], out.path());
    assert!(!ok && text.contains("--file needs --public-key"), "{text}");
    std::fs::write(&file, "{not json").unwrap();
    let (ok, text) = run(&["verify", "--file", path, "--public-key", &public_text], out.path());
    assert!(!ok && text.contains("is not JSON"), "{text}");
}

/// An application event nested deeper than an export can hold is refused,
/// naming the field; one within the bound goes into a JSON export that
/// `keytrail verify --file` reads. (A key with `audit:write` could store
/// `metadata` nested 126 levels, which sits 131 levels down in an export:
/// every later export of the tenant was "not JSON" to the verifier.)
#[tokio::test]
async fn an_application_event_too_deep_for_an_export_is_refused() {
    let ts = TestServer::start().await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    let nested = |levels: usize| format!("{{\"action\":\"a\",\"resource_type\":\"o\",\"resource_id\":\"1\",\"metadata\":{{\"m\":{}{}}}}}", "[".repeat(levels), "]".repeat(levels));
    let submit = |body: String| {
        let req = ts.client.post(format!("{}/v1/audit/acme/events", ts.admin)).bearer_auth(ADMIN_TOKEN).header("content-type", "application/json");
        async move {
            let res = req.body(body).send().await.unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        }
    };
    let (status, text) = submit(nested(125)).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("event.metadata") && text.contains("63 levels"), "{text}");
    let (status, text) = submit(nested(60)).await;
    assert_eq!(status, 201, "{text}");
    ts.flush().await;

    let export = ts.client.get(format!("{}/v1/audit/acme/export/json?category=all", ts.admin)).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("export.json");
    std::fs::write(&file, export.text().await.unwrap()).unwrap();
    let public = keytrail::signing::public_key_text(&Signer::load_or_create(&ts.data_dir.join("signing.key")).unwrap().public_key());
    let (ok, text) = run(&["verify", "--file", file.to_str().unwrap(), "--public-key", &public], out.path());
    assert!(ok && text.contains("complete"), "{text}");
}

/// `keytrail verify --file` checks an export in memory that does not grow
/// with the export: exports stream in constant memory, so an auditor's
/// export can be far larger than a machine's memory. (It read the whole file
/// and parsed it into one JSON tree, several times the file's size.)
#[tokio::test]
async fn verifying_an_export_offline_does_not_hold_the_export_in_memory() {
    const EVENTS: usize = 40_000;
    let dir = tempfile::tempdir().unwrap();
    {
        let signer = Signer::load_or_create(&dir.path().join("signing.key")).unwrap();
        let mut store = AuditWriterStore::open(&dir.path().join("audit")).unwrap();
        store.enable_checkpoints(signer, 5_000, 3_600_000).unwrap();
        for n in 0..EVENTS / 1000 {
            let mut events: Vec<Event> = (0..1000)
                .map(|i| {
                    let mut e = Event::new("acme", Category::Request, "api_call", "success");
                    e.timestamp_ms = T0 + (n * 1000 + i) as i64 * 10;
                    e.consumer_id = Some(format!("cons_{}", i % 7).into());
                    e.client_ip = Some(format!("10.0.{}.{}", i % 200, n).into());
                    e.user_agent = Some("curl/8.5.0".into());
                    e.method = Some("GET".into());
                    e.path = Some(format!("/orders/{}", n * 1000 + i));
                    e.status_code = Some(200);
                    e.latency_us = Some(1_234 + i as u64);
                    e
                })
                .collect();
            store.insert_batch(&mut events).unwrap();
            store.checkpoint(false).unwrap();
        }
        store.checkpoint(true).unwrap();
    }
    let ts = TestServer::start_with(dir, |_| {}).await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    let out = tempfile::tempdir().unwrap();
    let public = keytrail::signing::public_key_text(&Signer::load_or_create(&ts.data_dir.join("signing.key")).unwrap().public_key());
    // Saves the export to a file; verifies it with the command line: (its
    // size in KiB, the command's peak resident memory in KiB, its output).
    let check = |query: &'static str| {
        let (client, url, out, public) = (ts.client.clone(), format!("{}/v1/audit/acme/export/json{query}", ts.admin), out.path().to_path_buf(), public.clone());
        async move {
            let file = out.join(format!("export-{}.json", query.len()));
            let mut res = client.get(url).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
            assert_eq!(res.status(), 200);
            {
                use std::io::Write;
                let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
                while let Some(chunk) = res.chunk().await.unwrap() {
                    f.write_all(&chunk).unwrap();
                }
                f.flush().unwrap();
            }
            let size_kib = std::fs::metadata(&file).unwrap().len() / 1024;
            let mut p = Process::spawn(&["verify", "--file", file.to_str().unwrap(), "--public-key", &public], &[], &out, &out);
            // VmHWM only grows: the last reading before the process ends is its peak.
            let mut peak_kib = 0u64;
            let status = loop {
                if let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", p.child.id())) {
                    let hwm = status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1));
                    if let Some(kib) = hwm.and_then(|v| v.parse().ok()) {
                        peak_kib = peak_kib.max(kib);
                    }
                }
                if let Some(status) = p.child.try_wait().unwrap() {
                    break status;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            };
            let text = p.stdout();
            assert!(status.success() && text.contains("complete and unaltered"), "{text}{}", p.stderr());
            (size_kib, peak_kib, text)
        }
    };
    let (small_kib, small_peak, text) = check("?limit=1000").await;
    assert!(text.contains("1000 events"), "{text}");
    let (size_kib, peak_kib, text) = check("").await;
    assert!(text.contains(&format!("{EVENTS} events")), "{text}");
    // 39,000 more events (~47 MiB of export) cost a few MiB at most: the
    // 72 bytes each the check keeps (~2.7 MiB), and the allocator's slack
    // (3.2-4.2 MiB measured alone, 6 MiB once with the whole suite
    // running beside it). Holding the export would take four times the bound.
    let grown = peak_kib.saturating_sub(small_peak);
    assert!(grown < (size_kib - small_kib) / 4, "a {small_kib} KiB export took {small_peak} KiB to verify, a {size_kib} KiB one {peak_kib} KiB");
}

/// Files that are no export, or not JSON, are refused by name, read as a
/// stream as they are.
#[test]
fn files_that_are_no_export_are_refused_saying_why() {
    let out = tempfile::tempdir().unwrap();
    let public = keytrail::signing::public_key_text(&Signer::load_or_create(&out.path().join("k.key")).unwrap().public_key());
    let file = out.path().join("export.json");
    let path = file.to_str().unwrap();
    for (text, says) in [
        ("{not json", "is not JSON"),
        ("{\"tenant_id\":\"acme\",\"logs\":[{}", "is not JSON"),
        ("{\"tenant_id\":\"acme\",\"logs\":[]} trailing", "is not JSON"),
        ("[]", "is not a keytrail JSON export"),
        ("{\"logs\":[]}", "is not a keytrail JSON export: no `tenant_id`"),
        ("{\"tenant_id\":\"acme\"}", "is not a keytrail JSON export: no `logs` array"),
        ("{\"tenant_id\":\"acme\",\"logs\":{}}", "is not a keytrail JSON export"),
        ("{\"tenant_id\":7,\"logs\":[]}", "`tenant_id` is not a text"),
        ("{\"tenant_id\":\"acme\",\"logs\":[],\"logs\":[]}", "`logs` appears twice"),
    ] {
        std::fs::write(&file, text).unwrap();
        let (ok, output) = run(&["verify", "--file", path, "--public-key", &public], out.path());
        assert!(!ok && output.contains(says), "{text}: {output}");
    }
    let (ok, output) = run(&["verify", "--file", "missing.json", "--public-key", &public], out.path());
    assert!(!ok && output.contains("missing.json cannot be read"), "{output}");
    std::fs::write(&file, "{\"tenant_id\":\"acme\",\"exported_at\":\"x\",\"logs\":[],\"verification\":{\"checkpoints\":[]}}").unwrap();
    let (ok, output) = run(&["verify", "--file", path, "--public-key", &public], out.path());
    assert!(ok && output.contains("acme: 0 events"), "{output}");
}

/// `keytrail verify --file` checks an export on its own: a `--data-dir` or
/// `--wait-secs` typed with it is a usage error (exit code 2) naming them,
/// rather than silently ignored (the operator who typed them believed the
/// data directory was checked too); `KEYTRAIL_DATA_DIR` left set for other
/// commands is no such flag.
#[test]
fn verify_file_refuses_the_flags_of_a_data_directory() {
    let out = tempfile::tempdir().unwrap();
    let public = keytrail::signing::public_key_text(&Signer::load_or_create(&out.path().join("k.key")).unwrap().public_key());
    let file = out.path().join("export.json");
    std::fs::write(&file, "{\"tenant_id\":\"acme\",\"exported_at\":\"x\",\"logs\":[],\"verification\":{\"checkpoints\":[]}}").unwrap();
    let (path, data) = (file.to_str().unwrap(), out.path().to_str().unwrap());
    for extra in [&["--data-dir", data][..], &["--wait-secs", "3"], &["--data-dir=./elsewhere"]] {
        let mut args = vec!["verify", "--file", path, "--public-key", &public];
        args.extend(extra);
        let mut p = Process::spawn(&args, &[], out.path(), out.path());
        let status = p.child.wait().unwrap();
        let err = p.stderr();
        assert_eq!(status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("--data-dir and --wait-secs apply to a data directory, not to --file"), "{args:?}: {err}");
        assert!(p.stdout().is_empty(), "{args:?}: nothing checked");
    }
    let mut p = Process::spawn(&["verify", "--file", path, "--public-key", &public], &[("KEYTRAIL_DATA_DIR", data)], out.path(), out.path());
    let status = p.child.wait().unwrap();
    assert!(status.success() && p.stdout().contains("acme: 0 events"), "{}{}", p.stdout(), p.stderr());
    // A malformed key is a usage error too.
    let mut p = Process::spawn(&["verify", "--file", path, "--public-key", "00ff"], &[], out.path(), out.path());
    let status = p.child.wait().unwrap();
    assert!(status.code() == Some(2) && p.stderr().contains("--public-key: "), "{}", p.stderr());
}

/// A `--tenant` of `keytrail verify` that is no tenant id is a usage error
/// (exit code 2) naming the flag, as it is for the archive commands and as
/// the README says of every command that reads files: it ended with exit
/// code 1, a script's sign that the trail did not verify.
#[test]
fn verify_refuses_a_tenant_that_is_no_tenant_id() {
    let out = tempfile::tempdir().unwrap();
    let signer = Signer::load_or_create(&out.path().join("signing.key")).unwrap();
    std::fs::create_dir(out.path().join("audit")).unwrap();
    let public = keytrail::signing::public_key_text(&signer.public_key());
    let data = out.path().to_str().unwrap();
    for args in [
        &["verify", "--data-dir", data, "--tenant", "ACME"][..],
        &["verify", "--data-dir", data, "--tenant", "acme/../globex"],
        &["verify", "--data-dir", data, "--tenant", ""],
        &["verify", "--file", "export.json", "--public-key", &public, "--tenant", "Acme Corp"],
    ] {
        let mut p = Process::spawn(args, &[], out.path(), out.path());
        let status = p.child.wait().unwrap();
        let err = p.stderr();
        assert_eq!(status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("--tenant") && err.contains("is not a tenant id"), "{args:?}: {err}");
    }
    // A well-formed tenant the trail does not hold is still a failure to verify (exit 1).
    let mut p = Process::spawn(&["verify", "--data-dir", data, "--tenant", "acme"], &[], out.path(), out.path());
    let status = p.child.wait().unwrap();
    assert!(status.code() == Some(1) && p.stderr().contains("tenant `acme`"), "{}", p.stderr());
}

/// A verification of a trail that grows meanwhile (a busy server, where a
/// chain is signed every 10,000 events) passes. Before, the checkpoints
/// were read after the chain was walked: one signed during the walk, past
/// the last event the walk had seen, was reported as a truncated tail
/// ("checkpoint at seq N … but the chain ends at seq M: events … are
/// missing") on an intact trail.
#[test]
fn a_trail_signed_while_it_is_verified_passes() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("signing.key");
    let key = Signer::load_or_create(&key_path).unwrap().public_key();
    let audit = build(dir.path(), Some(Signer::load_or_create(&key_path).unwrap()), None);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (audit, stop) = (audit.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut store = AuditWriterStore::open(&audit).unwrap();
            store.enable_checkpoints(Signer::load_or_create(&key_path).unwrap(), 1, 3_600_000).unwrap();
            let mut n = BATCHES;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut events = batch(n % 1000, None);
                store.insert_batch(&mut events).unwrap();
                store.checkpoint(false).unwrap();
                n += 1;
            }
        })
    };
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    let mut runs = 0;
    while started.elapsed() < std::time::Duration::from_secs(4) {
        let report = verify_dir(&audit, Some("acme"), &key).unwrap().remove(0);
        runs += 1;
        if !report.ok {
            failures.push(report.problems);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(failures.is_empty(), "{} of {runs} verifications failed, e.g. {:?}", failures.len(), failures[0]);
}

/// Verifying every tenant of a trail whose later tenants move to a new day
/// file meanwhile (a nightly `keytrail verify` run at midnight UTC) passes.
/// Before, one reader, which lists the day files when it opens, served
/// every tenant: a later tenant's checkpoint signed over events in a day
/// file created since was reported as a truncated tail.
#[test]
fn tenants_verified_one_after_another_see_the_day_files_made_meanwhile() {
    const DAY: i64 = 86_400_000;
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("signing.key");
    let key = Signer::load_or_create(&key_path).unwrap().public_key();
    // acme: a long chain, slow to walk, first in the order.
    let audit = build(dir.path(), Some(Signer::load_or_create(&key_path).unwrap()), None);
    {
        let mut store = AuditWriterStore::open(&audit).unwrap();
        for n in 0..300 {
            let mut events = batch(n % 1000, None);
            store.insert_batch(&mut events).unwrap();
        }
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (audit, stop) = (audit.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut store = AuditWriterStore::open(&audit).unwrap();
            store.enable_checkpoints(Signer::load_or_create(&key_path).unwrap(), 1, 3_600_000).unwrap();
            let mut day = 1;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // zeta's calls, each batch on a day after the last.
                let mut events: Vec<Event> = batch(0, None)
                    .into_iter()
                    .map(|mut e| {
                        e.tenant_id = "zeta".into();
                        e.timestamp_ms += day * DAY;
                        e
                    })
                    .collect();
                store.insert_batch(&mut events).unwrap();
                store.checkpoint(false).unwrap();
                day += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
    };
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    let mut runs = 0;
    while started.elapsed() < std::time::Duration::from_secs(4) {
        for report in verify_dir(&audit, None, &key).unwrap() {
            if !report.ok {
                failures.push((report.tenant, report.problems));
            }
        }
        runs += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(failures.is_empty(), "{} failures in {runs} runs, e.g. {:?}", failures.len(), failures[0]);
}
