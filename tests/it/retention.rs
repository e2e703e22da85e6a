//! Retention: hot days in the store, then signed archives, then nothing —
//! driven through the library with a clock of the test's choosing (like
//! the integrity tests, a store written directly at fixed times), and
//! through the server, the settings API and the `keytrail archive` commands.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use rusqlite::{params, Connection};
use serde_json::{json, Value};

use keytrail::event::{Category, Event};
use keytrail::settings::retention::{RetentionPolicy, RetentionSettings};
use keytrail::signing::Signer;
use keytrail::store::audit::archive::{self, day_name};
use keytrail::store::audit::integrity::verify_dir;
use keytrail::store::audit::retention::{self, ActionKind, RetentionReport};
use keytrail::store::audit::{AuditReader, AuditWriterStore, EventFilter, StoredEvent};

use crate::util::{Process, TestServer};

const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;
/// 2026-11-01: day 0 of the test data.
const D0: i64 = 20_758;

/// A time on day `d` of the data.
fn at(d: i64, ms: i64) -> i64 {
    (D0 + d) * DAY + ms
}

fn name(d: i64) -> String {
    day_name(D0 + d)
}

fn settings(hot_days: u32, archive_days: u32) -> RetentionSettings {
    RetentionSettings { hot_days, archive_days }
}

fn event(tenant: &str, ts: i64, n: usize) -> Event {
    let mut e = Event::new(tenant, Category::Request, "api_call", "success");
    e.timestamp_ms = ts;
    e.consumer_id = Some(format!("cons_{}", n % 3).into());
    e.method = Some("GET".into());
    e.path = Some(format!("/orders/{n}"));
    e.status_code = Some(200);
    e.latency_us = Some(1_000 + n as u64);
    e.client_ip = Some(format!("198.51.100.{}", n % 7).into());
    e
}

/// A data directory whose audit trail spans `days` days: `acme` and
/// `globex` each get a call every hour, committed an hour at a time, with
/// signed checkpoints. With `late`, one acme call stamped a moment before
/// midnight of day 1 is committed after the first calls of day 2 (a slow
/// request), so day 1's file holds a `seq` after some of day 2's.
struct Trail {
    dir: tempfile::TempDir,
    audit: PathBuf,
    archive: PathBuf,
    store: AuditWriterStore,
    signer: Signer,
    key: VerifyingKey,
}

fn trail(days: i64, late: bool) -> Trail {
    trail_with(days, late, &|_| {})
}

/// [`trail`], each event passed through `edit` before it is committed.
fn trail_with(days: i64, late: bool, edit: &dyn Fn(&mut Event)) -> Trail {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("signing.key");
    let signer = Signer::load_or_create(&key_path).unwrap();
    let audit = dir.path().join("audit");
    let mut store = AuditWriterStore::open(&audit).unwrap();
    store.enable_checkpoints(Signer::load_or_create(&key_path).unwrap(), 25, 3_600_000).unwrap();
    let mut n = 0;
    for d in 0..days {
        for h in 0..24 {
            let mut batch: Vec<Event> = ["acme", "globex"].iter().map(|t| event(t, at(d, h * HOUR + 30 * 60_000), { n += 1; n })).collect();
            batch.iter_mut().for_each(edit);
            store.insert_batch(&mut batch).unwrap();
            if late && d == 2 && h == 0 {
                let mut slow = vec![event("acme", at(1, DAY - 100), 9_999)];
                store.insert_batch(&mut slow).unwrap();
            }
            store.checkpoint(false).unwrap();
        }
    }
    store.checkpoint(true).unwrap();
    let key = signer.public_key();
    Trail { archive: dir.path().join("archive"), audit, store, signer, key, dir }
}

impl Trail {
    /// Runs retention as of `now` and records what it did in the trail, as
    /// the server does.
    fn run(&mut self, policy: &RetentionPolicy, now: i64) -> RetentionReport {
        let report = retention::run(&self.audit, &self.archive, policy, now, &self.signer).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        let mut events = report.events(now);
        self.store.insert_batch(&mut events).unwrap();
        self.store.checkpoint(true).unwrap();
        report
    }

    /// Erases consumer `cons_1` of `acme` from the hot files and archives,
    /// step by step as the writer thread does.
    fn erase_acme_consumer(&mut self) -> keytrail::store::audit::erasure::ErasureReport {
        let request = keytrail::store::audit::erasure::ErasureRequest {
            tenant: "acme".into(),
            consumer: "cons_1".into(),
            archive_dir: self.archive.clone(),
            archive_level: archive::DEFAULT_ZSTD_LEVEL,
            signer: std::sync::Arc::new(Signer::load_or_create(&self.dir.path().join("signing.key")).unwrap()),
        };
        let held = keytrail::store::audit::erasure::maintenance_lock(&self.audit, "an erasure").unwrap();
        let mut job = self.store.begin_erasure(request, held).unwrap();
        while !self.store.erasure_step(&mut job).unwrap() {}
        job.into_report()
    }

    fn day_file(&self, d: i64) -> PathBuf {
        self.audit.join(format!("{}.db", name(d)))
    }

    fn assert_verifies(&self) {
        for report in verify_dir(&self.audit, None, &self.key).unwrap() {
            assert!(report.ok, "{report:?}");
        }
        for report in archive::verify_archives(&self.archive, Some(&self.audit), None, &self.key).unwrap() {
            assert!(report.ok, "{report:?}");
        }
    }

    /// A tenant's events in a window, as the audit API reads them.
    fn read(&self, tenant: &str, from: i64, to: i64) -> Vec<StoredEvent> {
        read_dir(&self.audit, tenant, from, to)
    }
}

/// A tenant's events in a window of the audit directory `audit`, as the
/// audit API reads them.
fn read_dir(audit: &Path, tenant: &str, from: i64, to: i64) -> Vec<StoredEvent> {
    let reader = AuditReader::open(audit).unwrap();
    let filter = EventFilter { tenant_id: tenant.into(), from_ms: Some(from), to_ms: Some(to), ..EventFilter::default() };
    let mut out = Vec::new();
    reader
        .scan(&filter, None, true, |e| {
            out.push(e.clone());
            true
        })
        .unwrap();
    out
}

/// (kind, tenant, day, first_seq, last_seq) of each action, sorted.
fn actions(report: &RetentionReport) -> Vec<(ActionKind, String, String, u64, u64)> {
    let mut out: Vec<_> = report.actions.iter().map(|a| (a.kind, a.tenant.clone(), a.day.clone(), a.first_seq, a.last_seq)).collect();
    out.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    out
}

fn written(t: &str, d: i64, first: u64, last: u64) -> (ActionKind, String, String, u64, u64) {
    (ActionKind::ArchiveWritten, t.into(), name(d), first, last)
}

fn dropped(t: &str, d: i64, first: u64, last: u64) -> (ActionKind, String, String, u64, u64) {
    (ActionKind::HotDataDropped, t.into(), name(d), first, last)
}

fn deleted(t: &str, d: i64, first: u64, last: u64) -> (ActionKind, String, String, u64, u64) {
    (ActionKind::ArchiveDeleted, t.into(), name(d), first, last)
}

fn sorted(mut v: Vec<(ActionKind, String, String, u64, u64)>) -> Vec<(ActionKind, String, String, u64, u64)> {
    v.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    v
}

#[test]
fn days_go_hot_then_archived_then_deleted_exactly_at_the_boundaries() {
    let mut t = trail(6, true);
    let policy = RetentionPolicy::uniform(settings(2, 3));

    // Day 0 stays hot until every event of it is two days old: the start of day 3.
    assert!(t.run(&policy, at(3, 0) - 1).actions.is_empty());
    let report = t.run(&policy, at(3, 0));
    assert_eq!(
        actions(&report),
        sorted(vec![written("acme", 0, 1, 24), written("globex", 0, 1, 24), dropped("acme", 0, 1, 24), dropped("globex", 0, 1, 24)])
    );
    assert!(!t.day_file(0).exists(), "day 0's file is gone whole");
    let (data, manifest) = archive::paths(&t.archive, "acme", &name(0));
    assert!(data.exists() && manifest.exists());
    let m: archive::Manifest = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert_eq!((m.events, m.first_seq, m.last_seq, m.prev_hash.as_str()), (24, 1, 24, "0".repeat(64).as_str()));
    assert!(m.signature_ok(&t.key) && m.file_sha256.len() == 64 && m.checkpoints.is_empty(), "the first checkpoint is at seq 25: {m:?}");
    assert_eq!(m.file_bytes, std::fs::metadata(&data).unwrap().len());
    // The file: one block of events a line, column by column, with the
    // chain hash after its last event.
    assert_eq!(m.format, archive::FORMAT);
    let blocks = ndjson(&data);
    assert_eq!(blocks.len(), 1);
    assert_eq!((blocks[0]["first_seq"].clone(), blocks[0]["events"].clone(), blocks[0]["hash"].clone()), (json!(1), json!(24), json!(m.last_hash)));
    let paths = blocks[0]["columns"].as_array().unwrap().iter().find(|c| c["keys"].as_array().unwrap().contains(&json!("path"))).unwrap();
    assert!(paths["new"].as_array().unwrap().iter().any(|entry| entry.to_string().contains("/orders/1\"")), "{paths}");
    // `archive cat`: one full event a line, with its hashes.
    let lines = cat(&t, "acme", &name(0));
    assert_eq!(lines.len(), 24);
    assert_eq!(lines[0]["event"]["seq"], 1);
    assert_eq!(lines[0]["event"]["path"], "/orders/1");
    assert_eq!(lines[0]["prev_hash"], json!("0".repeat(64)));
    assert_eq!(lines[1]["prev_hash"], lines[0]["hash"]);
    assert_eq!(lines[23]["hash"], json!(m.last_hash));
    t.assert_verifies();
    let report = verify_dir(&t.audit, Some("acme"), &t.key).unwrap().remove(0);
    assert_eq!((report.archived_through, report.archives), (24, 1), "{report:?}");

    // Day 1: archived up to the slow call's neighbours. The slow call
    // (stamped day 1, committed among day 2's calls) keeps day 1's file
    // until day 2 is archived with it.
    let report = t.run(&policy, at(4, 0));
    assert_eq!(actions(&report), sorted(vec![written("acme", 1, 25, 48), written("globex", 1, 25, 48)]));
    let m: archive::Manifest = serde_json::from_slice(&std::fs::read(archive::paths(&t.archive, "acme", &name(1)).1).unwrap()).unwrap();
    assert_eq!(m.checkpoints.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![25], "the signed checkpoints in its range");
    assert!(t.day_file(1).exists());
    let visible = t.read("acme", at(1, 0), at(2, 0) - 1);
    assert_eq!(visible.iter().map(|e| e.event.seq).collect::<Vec<_>>(), vec![50], "only the slow call is still hot");
    t.assert_verifies();

    let report = t.run(&policy, at(5, 0));
    assert_eq!(
        actions(&report),
        sorted(vec![
            written("acme", 2, 49, 73),
            written("globex", 2, 49, 72),
            dropped("acme", 1, 25, 50),
            dropped("globex", 1, 25, 48),
            dropped("acme", 2, 49, 73),
            dropped("globex", 2, 49, 72),
        ])
    );
    let lines = cat(&t, "acme", &name(2));
    assert_eq!(lines[1]["event"]["seq"], 50);
    assert_eq!(lines[1]["event"]["timestamp_ms"], at(1, DAY - 100), "the slow call went with the run it is in");
    assert!(t.read("acme", at(1, 0), at(3, 0) - 1).is_empty());
    t.assert_verifies();

    // Archives go when their newest event is 2 + 3 days old: day 0's at the start of day 6.
    let report = t.run(&policy, at(6, 0) - 1);
    assert!(report.actions.iter().all(|a| a.kind != ActionKind::ArchiveDeleted), "{report:?}");
    let report = t.run(&policy, at(6, 0));
    let gone: Vec<_> = actions(&report).into_iter().filter(|a| a.0 == ActionKind::ArchiveDeleted).collect();
    assert_eq!(gone, sorted(vec![deleted("acme", 0, 1, 24), deleted("globex", 0, 1, 24)]));
    assert!(!archive::paths(&t.archive, "acme", &name(0)).0.exists() && !archive::paths(&t.archive, "acme", &name(0)).1.exists());
    assert!(archive::paths(&t.archive, "acme", &name(1)).0.exists());
    // Day 3 (and the events of the first runs, recorded on it) archived too.
    assert!(actions(&report).iter().any(|a| a.0 == ActionKind::ArchiveWritten && a.2 == name(3)), "{report:?}");
    // Still provable from the genesis hash: the deleted archive's signed record stays.
    t.assert_verifies();
    let report = verify_dir(&t.audit, Some("acme"), &t.key).unwrap().remove(0);
    assert_eq!(report.archives, 3, "{report:?}");

    // Every step is in the tenant's own trail.
    let mut kinds: HashMap<String, usize> = HashMap::new();
    for e in t.read("acme", 0, i64::MAX) {
        if e.event.actor.as_deref() == Some("system:retention") {
            *kinds.entry(e.event.event_type.to_string()).or_default() += 1;
            assert_eq!(e.event.tenant_id, "acme");
            assert!(e.event.details.as_ref().unwrap()["first_seq"].is_u64(), "{:?}", e.event);
        }
    }
    let deleted_event = t
        .read("acme", 0, i64::MAX)
        .into_iter()
        .find(|e| e.event.event_type == "archive_deleted")
        .expect("archive_deleted is recorded");
    let details = deleted_event.event.details.unwrap();
    assert_eq!((details["first_seq"].as_u64(), details["last_seq"].as_u64(), details["events"].as_u64()), (Some(1), Some(24), Some(24)));
    assert_eq!(kinds.get("archive_deleted"), Some(&1), "{kinds:?}");
    assert!(kinds.contains_key("hot_data_dropped"), "{kinds:?}");

    // The command line agrees.
    let data = t.dir.path().to_str().unwrap();
    let (ok, text) = run(&["verify", "--data-dir", data], t.dir.path());
    assert!(ok && text.contains("signed archives") && text.contains(" ok "), "{text}");
    let (ok, text) = run(&["archive", "verify", "--data-dir", data], t.dir.path());
    assert!(ok && text.contains("hot store follows on"), "{text}");
}

/// An archive deleted before its time, with meta.db's `deleted_at` set by
/// hand, passed `keytrail archive verify` and `keytrail verify` as deleted
/// by retention (the column is unsigned). Retention now signs the mark,
/// and both verifications report a mark that is not signed; retention
/// reports it too, and signs a mark made before signed marks (a table
/// without the column) only once the archive is past its retention.
#[test]
fn an_archive_deleted_early_with_a_deletion_mark_set_by_hand_is_caught() {
    let mut t = trail(4, false);
    let policy = RetentionPolicy::uniform(settings(1, 30));
    t.run(&policy, at(3, 0));
    t.assert_verifies();
    // Day 0's acme archive removed, and marked deleted as retention would.
    let (data, manifest) = archive::paths(&t.archive, "acme", &name(0));
    std::fs::remove_file(data).unwrap();
    std::fs::remove_file(manifest).unwrap();
    let meta = Connection::open(t.audit.join("meta.db")).unwrap();
    meta.execute("UPDATE archives SET deleted_at = ?1 WHERE tenant = 'acme' AND first_seq = 1", [at(3, 5)]).unwrap();
    let report = archive::verify_archives(&t.archive, Some(&t.audit), Some("acme"), &t.key).unwrap().remove(0);
    assert!(!report.ok, "{report:?}");
    let text = report.problems.join("\n");
    assert!(text.contains(&format!("archive {}: missing from", name(0))) && text.contains("the mark is not retention's"), "{text}");
    let report = verify_dir(&t.audit, Some("acme"), &t.key).unwrap().remove(0);
    assert!(!report.ok && report.problems.join("\n").contains("meta.db marks it deleted, but the mark is not retention's"), "{report:?}");
    let data_dir = t.dir.path().to_str().unwrap();
    let (ok, text) = run(&["archive", "verify", "--data-dir", data_dir, "--tenant", "acme"], t.dir.path());
    assert!(!ok && text.contains("the mark is not retention's"), "{text}");
    // Globex's archives, untouched, still verify.
    assert!(archive::verify_archives(&t.archive, Some(&t.audit), Some("globex"), &t.key).unwrap()[0].ok);

    // Retention does not take the mark for its own before the archive expires.
    let report = retention::run(&t.audit, &t.archive, &policy, at(4, 0), &t.signer).unwrap();
    assert!(report.problems.iter().any(|p| p.contains("meta.db marks it deleted, but retention did not delete it")), "{report:?}");
    assert!(!verify_dir(&t.audit, Some("acme"), &t.key).unwrap()[0].ok);

    // A store from before signed marks (no column): its marks are signed by
    // the first run once their archives are past their retention.
    meta.execute_batch("ALTER TABLE archives DROP COLUMN deletion_signature").unwrap();
    assert!(!verify_dir(&t.audit, Some("acme"), &t.key).unwrap()[0].ok, "unsigned until retention signs it");
    let report = retention::run(&t.audit, &t.archive, &policy, at(32, 0), &t.signer).unwrap();
    assert!(!report.problems.iter().any(|p| p.contains("marks it deleted")), "{report:?}");
    assert!(verify_dir(&t.audit, Some("acme"), &t.key).unwrap()[0].ok);
    assert!(archive::verify_archives(&t.archive, Some(&t.audit), Some("acme"), &t.key).unwrap()[0].ok);
}

#[test]
fn keytrail_verify_catches_tampering_across_the_archive_boundary() {
    let mut t = trail(4, false);
    t.run(&RetentionPolicy::uniform(settings(1, 30)), at(3, 0));
    t.assert_verifies();
    let copy = |label: &str| {
        let to = t.dir.path().join(format!("tampered-{label}"));
        copy_dir(&t.audit, &to);
        to
    };
    let check = |audit: &Path, needle: &str| {
        let report = verify_dir(audit, Some("acme"), &t.key).unwrap().remove(0);
        assert!(!report.ok && report.problems.join("\n").contains(needle), "`{needle}` not in {report:?}");
    };

    // An archive's record in meta.db altered.
    let audit = copy("record");
    Connection::open(audit.join("meta.db"))
        .unwrap()
        .execute("UPDATE archives SET manifest = replace(manifest, '\"events\":24', '\"events\":23') WHERE tenant = 'acme' AND first_seq = 1", [])
        .unwrap();
    check(&audit, "its signed record does not verify");

    // An archive's record removed: the hot chain no longer starts where it says.
    let audit = copy("record-gone");
    Connection::open(audit.join("meta.db")).unwrap().execute("DELETE FROM archives WHERE tenant = 'acme' AND first_seq > 1", []).unwrap();
    check(&audit, "expected seq 25 next");

    // The first hot block rewritten so as not to follow the last archive.
    let audit = copy("hot-link");
    let day = Connection::open(audit.join(format!("{}.db", name(2)))).unwrap();
    day.execute(
        "UPDATE blocks SET prev_hash = zeroblob(32) WHERE first_seq = (SELECT min(first_seq) FROM blocks WHERE tenant = (SELECT id FROM strings WHERE value = 'acme')) AND tenant = (SELECT id FROM strings WHERE value = 'acme')",
        [],
    )
    .unwrap();
    check(&audit, "does not link to the hash the archive of events up to seq 48 ends with");

    // A signed checkpoint in the archived range that the archive does not vouch for.
    let audit = copy("checkpoint");
    let cp = keytrail::store::audit::integrity::checkpoints(&audit, "acme").unwrap().into_iter().find(|c| c.seq < 48).unwrap();
    let forged = t.signer.sign("acme", cp.seq, [9; 32], cp.signed_at_ms);
    Connection::open(audit.join("meta.db"))
        .unwrap()
        .execute("UPDATE checkpoints SET hash = ?1, signature = ?2 WHERE tenant = 'acme' AND seq = ?3", params![forged.hash.as_slice(), forged.signature.as_slice(), cp.seq as i64])
        .unwrap();
    check(&audit, &format!("checkpoint at seq {}: archive", cp.seq));

    // The archived range's end in meta.db's unsigned columns moved on past
    // the signed records, over a hot event no checkpoint is at (seq 49: the
    // first after the archives, before the checkpoint at 50): the event is
    // hidden from every read as if archived, and the walk started after it.
    let audit = copy("floor");
    let acme = |conn: &Connection| conn.query_row("SELECT id FROM strings WHERE value = 'acme'", [], |r| r.get::<_, i64>(0)).unwrap();
    let day = Connection::open(audit.join(format!("{}.db", name(2)))).unwrap();
    let (rows, hash): (i64, Vec<u8>) =
        day.query_row("SELECT rows, hash FROM blocks WHERE tenant = ?1 AND first_seq = 49", [acme(&day)], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    assert_eq!(rows, 1);
    assert!(keytrail::store::audit::integrity::checkpoints(&audit, "acme").unwrap().iter().all(|c| c.seq != 49));
    Connection::open(audit.join("meta.db"))
        .unwrap()
        .execute("UPDATE archives SET last_seq = 49, last_hash = ?1 WHERE tenant = 'acme' AND first_seq = 25", params![hash])
        .unwrap();
    let (before, after) = (read_dir(&t.audit, "acme", at(0, 0), at(4, 0)), read_dir(&audit, "acme", at(0, 0), at(4, 0)));
    assert!(before.iter().any(|e| e.event.seq == 49) && after.iter().all(|e| e.event.seq != 49), "the event is hidden");
    check(&audit, "the signed archive records end at seq 48");
    let report = archive::verify_archives(&t.archive, Some(&audit), Some("acme"), &t.key).unwrap().remove(0);
    assert!(!report.ok && report.problems.join("\n").contains("the signed archive records end at seq 48"), "{report:?}");

    // Sequence numbers at the edge in an altered record, in its manifest
    // text or its columns, are reported, not overflowed (a panic).
    let audit = copy("edge");
    let meta = Connection::open(audit.join("meta.db")).unwrap();
    meta.execute("UPDATE archives SET manifest = replace(manifest, '\"last_seq\":48', '\"last_seq\":18446744073709551615') WHERE tenant = 'acme' AND first_seq = 25", [])
        .unwrap();
    check(&audit, "its signed record does not verify");
    meta.execute("UPDATE archives SET last_seq = -1 WHERE tenant = 'acme' AND first_seq = 25", []).unwrap();
    check(&audit, "its signed record does not verify");
    let report = archive::verify_archives(&t.archive, Some(&audit), Some("acme"), &t.key).unwrap().remove(0);
    assert!(!report.ok && report.problems.join("\n").contains("archive records were altered"), "{report:?}");
}

/// A crash while a day file is dropped, after its `.db` went and before
/// its write-ahead log did, left the log (the day's events, personal
/// values included) with no file to belong to, which no later run looked
/// at: it is removed with the next run's dropped days. The log of a day
/// still hot, or of a file still there, is left alone.
#[test]
fn a_write_ahead_log_left_without_its_day_file_goes_with_the_next_run() {
    let mut t = trail(4, false);
    let policy = RetentionPolicy::uniform(settings(1, 30));
    t.run(&policy, at(2, 0));
    assert!(!t.day_file(0).exists(), "day 0 was dropped");
    // What a crash between the two deletes leaves: the day's log alone.
    let day0 = t.day_file(0);
    let orphan = |suffix: &str| {
        let mut path = day0.clone().into_os_string();
        path.push(suffix);
        PathBuf::from(path)
    };
    std::fs::write(orphan("-wal"), b"the day's events, personal values and all").unwrap();
    std::fs::write(orphan("-shm"), b"shared memory").unwrap();
    // A day still hot keeps its file and its log.
    let mut hot_wal = t.day_file(3).into_os_string();
    hot_wal.push("-wal");
    let hot_wal = PathBuf::from(hot_wal);
    let hot_had_wal = hot_wal.exists();
    t.run(&policy, at(2, HOUR));
    assert!(!orphan("-wal").exists() && !orphan("-shm").exists(), "the orphan log stayed");
    assert!(t.day_file(3).exists() && hot_wal.exists() == hot_had_wal);
    t.assert_verifies();
}

#[test]
fn tenants_keep_their_own_windows_and_a_shared_day_goes_when_all_are_archived() {
    let mut t = trail(6, false);
    let mut policy = RetentionPolicy::uniform(settings(2, 30));
    policy.tenants.insert("acme".into(), settings(1, 1));
    policy.tenants.insert("globex".into(), settings(4, 30));

    let report = t.run(&policy, at(2, 0));
    assert_eq!(actions(&report), vec![written("acme", 0, 1, 24)]);
    assert!(t.day_file(0).exists(), "globex's events keep day 0's file");
    assert!(t.read("acme", at(0, 0), at(1, 0) - 1).is_empty(), "acme's archived events are not read from the shared file");
    assert_eq!(t.read("globex", at(0, 0), at(1, 0) - 1).len(), 24);
    t.assert_verifies();

    // acme's archive of day 0 expires (1 + 1 days): its blocks still in the
    // shared file go with it.
    let report = t.run(&policy, at(3, 0));
    assert_eq!(
        actions(&report),
        sorted(vec![written("acme", 1, 25, 48), deleted("acme", 0, 1, 24)])
    );
    let removed = report.actions.iter().find(|a| a.kind == ActionKind::ArchiveDeleted).unwrap().details["hot_blocks_removed"].as_u64();
    assert!(removed.is_some_and(|n| n > 0), "{report:?}");
    let conn = Connection::open(t.day_file(0)).unwrap();
    let acme_blocks: i64 = conn
        .query_row("SELECT count(*) FROM blocks WHERE tenant = (SELECT id FROM strings WHERE value = 'acme')", [], |r| r.get(0))
        .unwrap();
    assert_eq!(acme_blocks, 0);
    drop(conn);
    t.assert_verifies();

    t.run(&policy, at(4, 0));
    let report = t.run(&policy, at(5, 0));
    assert!(actions(&report).contains(&written("globex", 0, 1, 24)), "{report:?}");
    assert!(actions(&report).contains(&dropped("globex", 0, 1, 24)), "{report:?}");
    assert!(!t.day_file(0).exists());
    assert!(t.day_file(1).exists(), "globex's day 1 is still hot");
    t.assert_verifies();
}

#[test]
fn a_day_file_goes_only_when_the_writer_has_let_go_and_readers_finish_reading_it() {
    // Four days: the writer still holds days 2 and 3 open.
    let mut t = trail(4, false);
    let policy = RetentionPolicy::uniform(settings(1, 30));
    // A reader that has day 1 open, and one that has only listed it.
    let reading = AuditReader::open(&t.audit).unwrap();
    let filter = EventFilter { tenant_id: "acme".into(), from_ms: Some(at(1, 0)), to_ms: Some(at(2, 0) - 1), ..EventFilter::default() };
    let mut first = 0;
    reading.scan(&filter, Some(1), false, |_| { first += 1; true }).unwrap();
    let listed = AuditReader::open(&t.audit).unwrap();

    let report = retention::run(&t.audit, &t.archive, &policy, at(4, 0), &t.signer).unwrap();
    assert!(!t.day_file(0).exists() && !t.day_file(1).exists());
    assert!(t.day_file(2).exists(), "the writer has day 2 open");
    assert_eq!(report.problems, vec![format!("{}.db: not dropped: the writer has it open (next run)", name(2))]);
    let mut n = 0;
    reading.scan(&filter, None, false, |_| { n += 1; true }).unwrap();
    assert_eq!((first, n), (1, 24), "a reader with the file open reads it to the end");
    let mut n = 0;
    listed.scan(&filter, None, false, |_| { n += 1; true }).unwrap();
    assert_eq!(n, 0, "a day dropped since the reader listed it reads as empty");

    // The writer moves on; the next run drops the day.
    let mut next = vec![event("acme", at(5, 0), 1)];
    t.store.insert_batch(&mut next).unwrap();
    let report = retention::run(&t.audit, &t.archive, &policy, at(4, HOUR), &t.signer).unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    assert!(!t.day_file(2).exists());
    t.assert_verifies();
}

#[test]
fn archive_verify_catches_changed_and_missing_lines_manifests_signatures_and_days() {
    let mut t = trail(5, false);
    t.run(&RetentionPolicy::uniform(settings(1, 30)), at(4, 0));
    for d in 0..3 {
        assert!(archive::paths(&t.archive, "acme", &name(d)).0.exists());
    }
    t.assert_verifies();
    let reports = archive::verify_archives(&t.archive, Some(&t.audit), None, &t.key).unwrap();
    assert_eq!(reports.len(), 2);
    assert!(reports.iter().all(|r| r.ok && r.archives == 3 && r.hot_links == Some(true)), "{reports:?}");

    let copy = |label: &str| {
        let to = t.dir.path().join(format!("archive-{label}"));
        copy_dir(&t.archive, &to);
        to
    };
    let problems = |dir: &Path, audit: Option<&Path>, key: &VerifyingKey| {
        let report = archive::verify_archives(dir, audit, Some("acme"), key).unwrap().remove(0);
        assert!(!report.ok, "{report:?}");
        report.problems.join("\n")
    };
    let day1 = name(1);

    // A changed event: the latency of seq 27, the block's third row.
    let dir = copy("changed-event");
    edit_block(&archive::paths(&dir, "acme", &day1).0, |block| {
        let latency = column(block, "latency_us");
        latency["values"][2] = json!(latency["values"][2].as_u64().unwrap() + 1);
    });
    let text = problems(&dir, Some(&t.audit), &t.key);
    assert!(text.contains(&format!("archive {day1}: the archive file's SHA-256 is not the manifest's")), "{text}");
    assert!(text.contains("seq 25..=48: the events do not hash to their block's hash (one of them was changed)"), "{text}");

    // A missing event: the block's last row taken out of every column.
    let dir = copy("missing-event");
    edit_block(&archive::paths(&dir, "acme", &day1).0, |block| {
        block["events"] = json!(23);
        for c in block["columns"].as_array_mut().unwrap() {
            for encoding in ["delta", "values", "ids"] {
                if let Some(values) = c.get_mut(encoding).and_then(Value::as_array_mut) {
                    values.pop();
                }
            }
        }
    });
    let text = problems(&dir, Some(&t.audit), &t.key);
    assert!(text.contains("seq 25..=47: the events do not hash to their block's hash"), "{text}");
    assert!(text.contains("holds 23 events, the manifest says 24") && text.contains("ends at seq 47, the manifest says 48"), "{text}");

    // Events shifted (a block claiming to start later), and a line that is not a block.
    let dir = copy("shifted-block");
    edit_block(&archive::paths(&dir, "acme", &day1).0, |block| block["first_seq"] = json!(26));
    let text = problems(&dir, Some(&t.audit), &t.key);
    assert!(text.contains("expected seq 25, found 26 (an event is missing or was inserted)"), "{text}");
    let dir = copy("unreadable-block");
    rewrite(&archive::paths(&dir, "acme", &day1).0, |lines| lines[0] = lines[0].replace("\"first_seq\"", "\"first\""));
    let text = problems(&dir, Some(&t.audit), &t.key);
    assert!(text.contains(&format!("archive {day1}: line 1 cannot be read (no `first_seq`)")) && text.contains("holds 0 events"), "{text}");

    // A changed manifest.
    let dir = copy("changed-manifest");
    let path = archive::paths(&dir, "acme", &day1).1;
    let edited = std::fs::read_to_string(&path).unwrap().replace("\"events\": 24", "\"events\": 23");
    std::fs::write(&path, edited).unwrap();
    let text = problems(&dir, Some(&t.audit), &t.key);
    assert!(text.contains(&format!("archive {day1}: the manifest's signature does not verify")), "{text}");

    // A bad signature: another key, or a signature edited.
    let stranger = Signer::load_or_create(&t.dir.path().join("stranger.key")).unwrap().public_key();
    let text = problems(&t.archive, None, &stranger);
    assert_eq!(text.matches("signature does not verify").count(), 3 + 2, "every manifest and checkpoint: {text}");
    let dir = copy("bad-signature");
    let path = archive::paths(&dir, "acme", &name(0)).1;
    let mut m: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let signature = m["signature"].as_str().unwrap().to_string();
    m["signature"] = json!(format!("{}{}", if signature.starts_with('0') { "1" } else { "0" }, &signature[1..]));
    std::fs::write(&path, m.to_string()).unwrap();
    let text = problems(&dir, Some(&t.audit), &t.key);
    assert!(text.contains(&format!("archive {}: the manifest's signature does not verify", name(0))), "{text}");

    // A missing day, with and without the data directory.
    let dir = copy("missing-day");
    let (data, manifest) = archive::paths(&dir, "acme", &day1);
    std::fs::remove_file(data).unwrap();
    std::fs::remove_file(manifest).unwrap();
    let text = problems(&dir, None, &t.key);
    assert!(text.contains(&format!("events 25..=48 are missing between archive {} and archive {}", name(0), name(2))), "{text}");
    let text = problems(&dir, Some(&t.audit), &t.key);
    assert!(text.contains(&format!("archive {day1}: missing from")), "{text}");
    // The newest day missing: only the data directory can tell.
    let dir = copy("missing-last-day");
    let (data, manifest) = archive::paths(&dir, "acme", &name(2));
    std::fs::remove_file(data).unwrap();
    std::fs::remove_file(manifest).unwrap();
    let text = problems(&dir, Some(&t.audit), &t.key);
    assert!(text.contains(&format!("archive {}: missing from", name(2))), "{text}");

    // The command line: exit codes, the problem named, bad input.
    let data = t.dir.path().to_str().unwrap();
    let public = keytrail::signing::public_key_text(&t.key);
    let (ok, text) = run(&["archive", "verify", "--data-dir", data, "--tenant", "acme"], t.dir.path());
    assert!(ok && text.contains("3 archives, 72 events (seq 1..=72)"), "{text}");
    let changed = t.dir.path().join("archive-changed-event");
    let (ok, text) = run(&["archive", "verify", "--data-dir", data, "--archive-dir", changed.to_str().unwrap()], t.dir.path());
    assert!(!ok && text.contains("FAILED") && text.contains("seq 25..=48: the events do not hash to their block's hash"), "{text}");
    assert!(text.contains("the archives did not verify"), "{text}");
    // Only the archives and the public key, as an auditor would have them.
    let elsewhere = t.dir.path().join("no-data-dir");
    let (ok, text) = run(
        &["archive", "verify", "--data-dir", elsewhere.to_str().unwrap(), "--archive-dir", t.archive.to_str().unwrap(), "--public-key", &public],
        t.dir.path(),
    );
    assert!(ok && text.contains("acme") && text.contains(" ok "), "{text}");
    let (ok, text) = run(&["archive", "verify", "--data-dir", elsewhere.to_str().unwrap(), "--archive-dir", t.archive.to_str().unwrap()], t.dir.path());
    assert!(!ok && text.contains("give --public-key"), "{text}");
    let (ok, text) = run(&["archive", "verify", "--data-dir", data, "--public-key", "abc"], t.dir.path());
    assert!(!ok && text.contains("--public-key: a public key is 64 hexadecimal digits"), "{text}");
}

#[test]
fn a_restored_day_reads_and_verifies_again() {
    // Five days: the writer still holds the last two open.
    let mut t = trail(5, true);
    let before = t.read("acme", at(0, 0), at(2, 0) - 1);
    assert_eq!(before.len(), 49);
    t.run(&RetentionPolicy::uniform(settings(1, 30)), at(4, 0));
    assert!(!t.day_file(0).exists() && !t.day_file(1).exists() && !t.day_file(2).exists());
    assert!(t.read("acme", at(0, 0), at(2, 0) - 1).is_empty());

    // Day 1's archive holds seq 25..=48; the slow call (seq 50) is in day 2's.
    let r = archive::restore(&t.audit, &t.archive, "acme", &name(1), &t.key).unwrap();
    assert_eq!((r.events, r.first_seq, r.last_seq), (24, 25, 48));
    let r = archive::restore(&t.audit, &t.archive, "acme", &name(0), &t.key).unwrap();
    assert_eq!((r.events, r.first_seq, r.last_seq), (24, 1, 24));
    let after = t.read("acme", at(0, 0), at(2, 0) - 1);
    let key = |e: &StoredEvent| (e.event.clone(), e.hash, e.prev_hash);
    let wanted: Vec<_> = before.iter().filter(|e| e.event.seq <= 48).map(key).collect();
    assert_eq!(after.iter().map(key).collect::<Vec<_>>(), wanted, "the same events, with the same hashes, newest first");
    assert!(t.read("globex", at(0, 0), at(2, 0) - 1).is_empty(), "only what was asked for");
    t.assert_verifies();
    let report = verify_dir(&t.audit, Some("acme"), &t.key).unwrap().remove(0);
    assert!(report.ok && report.archived_through > 48, "{report:?}");

    // Day 2's archive holds the slow call of day 1: it is read in day 1 again.
    archive::restore(&t.audit, &t.archive, "acme", &name(2), &t.key).unwrap();
    assert_eq!(t.read("acme", at(1, DAY - 1_000), at(2, 0) - 1).iter().map(|e| e.event.seq).collect::<Vec<_>>(), vec![50]);
    t.assert_verifies();

    // A restored block altered is caught.
    let restored = t.audit.join("restored").join(format!("{}.db", name(0)));
    let conn = Connection::open(&restored).unwrap();
    conn.execute("UPDATE blocks SET hash = zeroblob(32) WHERE first_seq = 1", []).unwrap();
    let report = verify_dir(&t.audit, Some("acme"), &t.key).unwrap().remove(0);
    assert!(!report.ok && report.problems.join("\n").contains("restored events 1..="), "{report:?}");
    conn.execute("DELETE FROM blocks", []).unwrap();
    drop(conn);
    std::fs::remove_file(&restored).unwrap();

    // Refusals name the problem.
    let err = archive::restore(&t.audit, &t.archive, "acme", &name(1), &t.key).unwrap_err();
    assert!(err.contains("already restored (events"), "{err}");
    let err = archive::restore(&t.audit, &t.archive, "acme", &name(9), &t.key).unwrap_err();
    assert!(err.contains(&format!("no archive of tenant `acme` for {}", name(9))), "{err}");
    let err = archive::restore(&t.audit, &t.archive, "acme", "2026-13-01", &t.key).unwrap_err();
    assert!(err.contains("is not a day: give it as YYYY-MM-DD"), "{err}");
    rewrite(&archive::paths(&t.archive, "globex", &name(0)).0, |lines| lines[0] = lines[0].replace("/orders/", "/orderz/"));
    let err = archive::restore(&t.audit, &t.archive, "globex", &name(0), &t.key).unwrap_err();
    assert!(err.contains("does not verify, nothing was restored") && err.contains("SHA-256"), "{err}");
    assert!(t.read("globex", at(0, 0), at(1, 0) - 1).is_empty());

    // The command line.
    let data = t.dir.path().to_str().unwrap();
    let (ok, text) = run(&["archive", "restore", "--data-dir", data, "--tenant", "globex", "--day", &name(1)], t.dir.path());
    assert!(ok && text.contains("restored 24 events of `globex` (seq 25..=48"), "{text}");
    assert_eq!(t.read("globex", at(1, 0), at(2, 0) - 1).len(), 24);
    let (ok, text) = run(&["archive", "restore", "--data-dir", data, "--tenant", "globex", "--day", "yesterday"], t.dir.path());
    assert!(!ok && text.contains("`yesterday` is not a day"), "{text}");
    let (ok, text) = run(&["archive", "restore", "--data-dir", data, "--day", &name(1)], t.dir.path());
    assert!(!ok && text.contains("--tenant"), "{text}");
    let (ok, text) = run(&["archive", "restore", "--data-dir", data, "--tenant", "../globex", "--day", &name(1)], t.dir.path());
    assert!(!ok && text.contains("`../globex` is not a tenant id"), "{text}");
}

/// `keytrail archive restore --wait-secs` with the largest value it takes
/// (a wait "for ever") restores the day; it panicked computing the deadline
/// (`Instant + Duration` overflowed).
#[test]
fn archive_restore_takes_any_wait_secs_without_a_panic() {
    let mut t = trail(5, true);
    t.run(&RetentionPolicy::uniform(settings(1, 30)), at(4, 0));
    let data = t.dir.path().to_str().unwrap();
    let (ok, text) = run(&["archive", "restore", "--data-dir", data, "--tenant", "acme", "--day", &name(1), "--wait-secs", &u64::MAX.to_string()], t.dir.path());
    assert!(ok && text.contains("restored 24 events of `acme`"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
}

#[tokio::test]
async fn the_server_runs_retention_at_start_and_the_settings_api_sets_it() {
    // A data directory with a week of old events (as a server left it).
    let dir = tempfile::tempdir().unwrap();
    let today = keytrail::event::now_ms().div_euclid(DAY);
    {
        let mut store = AuditWriterStore::open(&dir.path().join("audit")).unwrap();
        for d in (3..10).rev() {
            let mut batch: Vec<Event> = (0..5).map(|i| event("acme", (today - d) * DAY + i * HOUR, i as usize)).collect();
            store.insert_batch(&mut batch).unwrap();
        }
    }
    let mut ts = TestServer::start_with(dir, |c| {
        c.retention.defaults = settings(5, 400);
        c.retention.interval = std::time::Duration::from_millis(300);
    })
    .await;
    let admin = ts.admin_client();
    let a = admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let archive_dir = ts.data_dir.join("archive");
    wait_until(|| archive::paths(&archive_dir, "acme", &day_name(today - 6)).1.exists()).await;
    assert!(!archive::paths(&archive_dir, "acme", &day_name(today - 5)).1.exists(), "day today-5 is within 5 hot days");

    // The settings: global defaults from the config, tenant overrides.
    let a = admin.get("/api/v1/settings/retention").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body, json!({"scope": "global", "hot_days": 5, "archive_days": 400}));
    let a = admin.call("PUT", "/v1/tenants/acme/settings/retention", Some(json!({"hot_days": 3}))).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body, json!({"scope": "tenant", "tenant_id": "acme", "hot_days": 3, "archive_days": 400, "inherited": ["archive_days"]}));
    // The next run applies it.
    wait_until(|| archive::paths(&archive_dir, "acme", &day_name(today - 4)).1.exists()).await;
    assert!(!archive::paths(&archive_dir, "acme", &day_name(today - 3)).1.exists());
    let a = admin.call("PUT", "/v1/tenants/acme/settings/retention", Some(json!({"hot_days": null, "archive_days": 10}))).await;
    assert_eq!(a.body, json!({"scope": "tenant", "tenant_id": "acme", "hot_days": 5, "archive_days": 10, "inherited": ["hot_days"]}));
    let a = admin.call("PUT", "/api/v1/settings/retention", Some(json!({"archive_days": 30}))).await;
    assert_eq!(a.body, json!({"scope": "global", "hot_days": 5, "archive_days": 30}));
    assert_eq!(admin.get("/v1/tenants/acme/settings/retention").await.body["archive_days"], 10);

    // Bad input says what to fix, and changes nothing.
    for (path, body, needle) in [
        ("/api/v1/settings/retention", json!({"hot_days": 0}), "`hot_days` must be a whole number of days from 1 to 36500"),
        ("/api/v1/settings/retention", json!({"hot_days": null}), "cannot be null in the global settings"),
        ("/api/v1/settings/retention", json!({"archive_days": -3}), "`archive_days` must be a whole number of days from 0"),
        ("/v1/tenants/acme/settings/retention", json!({"hot_days": "7"}), "`hot_days` must be a whole number"),
        ("/v1/tenants/acme/settings/retention", json!({"hot_days": 2.5}), "`hot_days` must be a whole number"),
        ("/v1/tenants/acme/settings/retention", json!({"keep_days": 7}), "unknown setting `keep_days`"),
        ("/v1/tenants/acme/settings/retention", json!({}), "name at least one setting"),
        ("/v1/tenants/acme/settings/retention", json!([7]), "must be a JSON object"),
    ] {
        let a = admin.call("PUT", path, Some(body.clone())).await;
        assert_eq!(a.status, 400, "{body}: {}", a.text);
        assert!(a.body["error"]["message"].as_str().unwrap().contains(needle), "{body}: {}", a.text);
    }
    let a = admin.call("PUT", "/v1/tenants/nobody/settings/retention", Some(json!({"hot_days": 3}))).await;
    assert_eq!(a.status, 404, "{}", a.text);
    assert_eq!(admin.get("/v1/tenants/acme/settings/retention").await.body["archive_days"], 10);

    // Archives and settings changes are in the tenant's trail.
    ts.flush().await;
    let a = admin.get("/v1/audit/acme/security?event_type=archive_written&days=3660").await;
    assert_eq!(a.status, 200, "{}", a.text);
    let archived = a.body["events"].as_array().unwrap();
    assert_eq!(archived.len(), 6, "days today-9..=today-4: {}", a.text);
    let a = admin.get("/v1/audit/acme/security?event_type=settings_changed").await;
    let changes = a.body["events"].as_array().unwrap();
    assert!(changes.iter().any(|e| e["target"] == "settings:retention"), "{}", a.text);
    let a = admin.get("/v1/audit/acme/admin?action=SETTINGS_CHANGED").await;
    assert!(a.text.contains("hot_days"), "{}", a.text);

    // A day restored while keytrail runs is read by the audit API.
    let out = tempfile::tempdir().unwrap();
    let data = ts.data_dir.to_str().unwrap().to_string();
    let old = day_name(today - 8);
    let (ok, text) = run(&["archive", "restore", "--data-dir", &data, "--tenant", "acme", "--day", &old], out.path());
    assert!(ok, "{text}");
    let from = keytrail::event::format_timestamp((today - 8) * DAY);
    let to = keytrail::event::format_timestamp((today - 7) * DAY - 1);
    let a = admin.get(&format!("/v1/audit/acme?from={from}&to={to}")).await;
    assert_eq!(a.body["logs"].as_array().map(Vec::len), Some(5), "{}", a.text);
    ts.stop().await;
    let (ok, text) = run(&["verify", "--data-dir", &data], out.path());
    assert!(ok, "{text}");
    let (ok, text) = run(&["archive", "verify", "--data-dir", &data], out.path());
    assert!(ok, "{text}");
}

/// A server stopped after its retention run archived days and dropped
/// their files, before the run's events were committed (killed during a
/// long run, or right after it), left no `archive_written` or
/// `hot_data_dropped` event of them in the tenant's trail, ever: the next
/// start found nothing more to do. The run's events now wait in a journal
/// in meta.db, and the next start records them.
#[tokio::test]
async fn a_retention_run_whose_events_were_never_recorded_has_them_recorded_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let now = keytrail::event::now_ms();
    let today = now.div_euclid(DAY);
    let audit = dir.path().join("audit");
    {
        let mut store = AuditWriterStore::open(&audit).unwrap();
        for d in (3..10).rev() {
            let mut batch: Vec<Event> = (0..5).map(|i| event("acme", (today - d) * DAY + i * HOUR, i as usize)).collect();
            store.insert_batch(&mut batch).unwrap();
        }
    }
    // The run of a server that was then killed: its report, and the events
    // it would have recorded, lost with the process.
    let signer = Signer::load_or_create(&dir.path().join(keytrail::signing::KEY_FILE)).unwrap();
    let policy = RetentionPolicy::uniform(settings(5, 400));
    let report = retention::run(&audit, &dir.path().join("archive"), &policy, now, &signer).unwrap();
    assert_eq!(report.actions.iter().filter(|a| a.kind == ActionKind::ArchiveWritten).count(), 4, "{report:?}");
    drop(signer);

    let mut ts = TestServer::start_with(dir, |c| c.retention.defaults = settings(5, 400)).await;
    let admin = ts.admin_client();
    let a = admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let count = |body: &Value| body["events"].as_array().map_or(0, Vec::len);
    let mut found = (0, 0);
    for _ in 0..100 {
        ts.flush().await;
        let written = admin.get("/v1/audit/acme/security?event_type=archive_written&days=3660").await;
        let dropped = admin.get("/v1/audit/acme/security?event_type=hot_data_dropped&days=3660").await;
        found = (count(&written.body), count(&dropped.body));
        if found == (4, 4) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(found, (4, 4), "days today-9..=today-6, archived and dropped");
    let written = admin.get("/v1/audit/acme/security?event_type=archive_written&days=3660").await;
    assert!(written.text.contains(&format!("archive:{}", day_name(today - 9))), "{}", written.text);
    // Recorded once: a restart does not record them again.
    ts.stop().await;
    let mut config = crate::util::test_config(&ts.data_dir);
    config.retention.defaults = settings(5, 400);
    let server = keytrail::server::start(config).await.unwrap();
    let admin = crate::util::Admin { base: format!("http://{}", server.admin_addr), ..admin };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    server.audit.flush().await;
    let written = admin.get("/v1/audit/acme/security?event_type=archive_written&days=3660").await;
    assert_eq!(count(&written.body), 4, "{}", written.text);
    server.shutdown().await;
}

/// `keytrail archive restore` runs as a process of its own, beside a
/// server whose retention and erasures change the same audit directory:
/// the directory's maintenance lock keeps them apart across processes.
/// The test process plays the server (it holds the lock as an erasure
/// would), the real binary restores.
#[test]
fn a_restore_and_a_servers_maintenance_exclude_each_other_across_processes() {
    use keytrail::store::audit::erasure;
    let mut t = trail(5, false);
    t.run(&RetentionPolicy::uniform(settings(1, 30)), at(4, 0));
    assert!(!t.day_file(0).exists() && !t.day_file(1).exists());
    let data = t.dir.path().to_str().unwrap().to_string();
    let out = tempfile::tempdir().unwrap();
    let restored = |d: i64| t.audit.join("restored").join(format!("{}.db", name(d)));
    let wait_exit = |p: &mut Process, secs: u64| -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while std::time::Instant::now() < deadline {
            if let Some(status) = p.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    };

    // An erasure holds the directory: a restore waits for it, writing nothing...
    let held = erasure::maintenance_lock(&t.audit, "an erasure in tenant `acme` (keytrail serve)").unwrap();
    let mut waiting = Process::spawn(&["archive", "restore", "--data-dir", &data, "--tenant", "acme", "--day", &name(0)], &[], out.path(), out.path());
    let early = wait_exit(&mut waiting, 2);
    assert!(early.is_none() && !restored(0).exists(), "the restore ran during the erasure ({early:?}): {}{}", waiting.stdout(), waiting.stderr());
    // ...and goes on once it is over.
    drop(held);
    let status = wait_exit(&mut waiting, 20).expect("the restore ends");
    assert!(status.success(), "{}{}", waiting.stdout(), waiting.stderr());
    assert!(restored(0).exists());
    // Past its wait it gives up, saying what holds the directory and what to do.
    let held = erasure::maintenance_lock(&t.audit, "an erasure in tenant `acme` (keytrail serve)").unwrap();
    let (ok, text) = run(&["archive", "restore", "--data-dir", &data, "--tenant", "acme", "--day", &name(1), "--wait-secs", "0"], out.path());
    assert!(!ok && text.contains("nothing was restored") && text.contains("is being changed by an erasure in tenant `acme` (keytrail serve) (process "), "{text}");
    assert!(text.contains("run `keytrail archive restore` again when that has finished"), "{text}");
    assert!(!restored(1).exists());
    drop(held);

    // A restore holds the directory while it runs: an erasure (or retention)
    // does not start meanwhile, and another restore is kept out too.
    let mut holding = Process::spawn(
        &["archive", "restore", "--data-dir", &data, "--tenant", "acme", "--day", &name(1)],
        &[("KEYTRAIL_FAILPOINT", "restore_hold:3000")],
        out.path(),
        out.path(),
    );
    let lock_file = t.audit.join(erasure::MAINTENANCE_LOCK_FILE);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(&lock_file).unwrap_or_default().contains("archive restore") {
        assert!(std::time::Instant::now() < deadline, "the restore did not take the lock: {}{}", holding.stdout(), holding.stderr());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(erasure::try_maintenance_lock(&t.audit, "an erasure").unwrap().is_none(), "an erasure started during a restore");
    let refused = erasure::maintenance_lock(&t.audit, "retention").err().expect("retention started during a restore").to_string();
    assert!(refused.contains(&format!("is being changed by `keytrail archive restore` of tenant `acme`'s {}", name(1))), "{refused}");
    let (ok, text) = run(&["archive", "restore", "--data-dir", &data, "--tenant", "acme", "--day", &name(1), "--wait-secs", "0"], out.path());
    assert!(!ok && text.contains(&format!("is being changed by `keytrail archive restore` of tenant `acme`'s {}", name(1))), "{text}");
    let status = wait_exit(&mut holding, 20).expect("the restore ends");
    assert!(status.success(), "{}{}", holding.stdout(), holding.stderr());
    // Let go at the end: the erasure now reaches the restored days too.
    let report = t.erase_acme_consumer();
    assert!(report.day_files.iter().any(|d| d.starts_with("restored/")), "{report:?}");
    t.assert_verifies();
}

/// `keytrail verify`, `archive verify` and `archive cat` only read the
/// audit directory, but a server's erasure or retention (or a restore)
/// rewrites it: they wait for the maintenance lock, so they never read a
/// half-rewritten archive or a day file being dropped, and say what holds
/// it when their wait runs out. Readers hold it together: one reading does
/// not hold up another, but keeps an erasure out.
#[test]
fn read_only_commands_wait_for_maintenance_and_share_the_lock_with_each_other() {
    use keytrail::store::audit::erasure;
    let mut t = trail(5, false);
    t.run(&RetentionPolicy::uniform(settings(1, 30)), at(4, 0));
    let data = t.dir.path().to_str().unwrap().to_string();
    let out = tempfile::tempdir().unwrap();
    let commands: Vec<Vec<String>> = vec![
        vec!["verify".into(), "--data-dir".into(), data.clone()],
        vec!["archive".into(), "verify".into(), "--data-dir".into(), data.clone()],
        vec!["archive".into(), "cat".into(), "--data-dir".into(), data.clone(), "--tenant".into(), "acme".into(), "--day".into(), name(0)],
    ];
    let wait_exit = |p: &mut Process, secs: f64| -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs_f64(secs);
        while std::time::Instant::now() < deadline {
            if let Some(status) = p.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    };

    // An erasure holds the directory: each command waits for it...
    let held = erasure::maintenance_lock(&t.audit, "an erasure in tenant `acme` (keytrail serve)").unwrap();
    let mut waiting: Vec<Process> = commands
        .iter()
        .map(|args| Process::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[], out.path(), out.path()))
        .collect();
    for (p, args) in waiting.iter_mut().zip(&commands) {
        let early = wait_exit(p, 1.5);
        assert!(early.is_none(), "`{}` read the audit trail during an erasure ({early:?}): {}{}", args.join(" "), p.stdout(), p.stderr());
    }
    // ...and reads once it is over.
    drop(held);
    for (p, args) in waiting.iter_mut().zip(&commands) {
        let status = wait_exit(p, 30.0).expect("the command ends");
        assert!(status.success(), "`{}`: {}{}", args.join(" "), p.stdout(), p.stderr());
        assert!(!p.stdout().is_empty(), "`{}` printed nothing", args.join(" "));
    }
    // Past its wait a command gives up, saying what holds the directory.
    let held = erasure::maintenance_lock(&t.audit, "an erasure in tenant `acme` (keytrail serve)").unwrap();
    for args in &commands {
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend(["--wait-secs", "0"]);
        let (ok, text) = run(&args, out.path());
        assert!(!ok, "`{}` passed while the audit trail was being changed: {text}", args.join(" "));
        assert!(text.contains("is being changed by an erasure in tenant `acme` (keytrail serve) (process "), "{text}");
        assert!(text.contains("--wait-secs"), "{text}");
    }
    drop(held);

    // A reader holds the directory against an erasure or retention, but not
    // against another reader.
    let reading = erasure::read_lock(&t.audit, std::time::Duration::ZERO).unwrap().expect("nothing else holds it");
    assert!(erasure::try_maintenance_lock(&t.audit, "an erasure").unwrap().is_none(), "an erasure started while a verify read");
    for args in &commands {
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend(["--wait-secs", "0"]);
        let (ok, text) = run(&args, out.path());
        assert!(ok, "`{}` was held up by another reader: {text}", args.join(" "));
    }
    drop(reading);
    assert!(erasure::try_maintenance_lock(&t.audit, "an erasure").unwrap().is_some(), "let go by the reader");
}

/// Retention finding the audit directory held by another process (here a
/// `keytrail archive restore` of its own) waits for it, within a bound,
/// instead of skipping its run, and its report says how long it waited and
/// for what.
#[test]
fn retention_waits_for_a_restore_in_another_process_and_says_so() {
    use keytrail::store::audit::erasure;
    let mut t = trail(6, false);
    t.run(&RetentionPolicy::uniform(settings(1, 30)), at(4, 0));
    let data = t.dir.path().to_str().unwrap().to_string();
    let out = tempfile::tempdir().unwrap();
    let mut holding = Process::spawn(
        &["archive", "restore", "--data-dir", &data, "--tenant", "acme", "--day", &name(0)],
        &[("KEYTRAIL_FAILPOINT", "restore_hold:1500")],
        out.path(),
        out.path(),
    );
    let lock_file = t.audit.join(erasure::MAINTENANCE_LOCK_FILE);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(&lock_file).unwrap_or_default().contains("archive restore") {
        assert!(std::time::Instant::now() < deadline, "the restore did not take the lock: {}{}", holding.stdout(), holding.stderr());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let started = std::time::Instant::now();
    let report = retention::run_waiting(&t.audit, &t.archive, &RetentionPolicy::uniform(settings(1, 30)), at(5, 0), &t.signer, std::time::Duration::from_secs(60))
        .expect("retention waited for the restore instead of giving up");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(sorted(actions(&report)), sorted(vec![written("acme", 3, 73, 96), written("globex", 3, 73, 96), dropped("acme", 3, 73, 96), dropped("globex", 3, 73, 96)]));
    let waited = report.waited.as_ref().expect("the report says it waited");
    assert!(waited.holder.contains("`keytrail archive restore` of tenant `acme`'s"), "{waited:?}");
    assert!(waited.ms >= 200 && u128::from(waited.ms) <= started.elapsed().as_millis(), "{waited:?} in {:?}", started.elapsed());
    assert!(holding.child.wait().unwrap().success(), "{}{}", holding.stdout(), holding.stderr());
    // Nothing in the way: no wait to report.
    let report = retention::run_waiting(&t.audit, &t.archive, &RetentionPolicy::uniform(settings(1, 30)), at(5, 0), &t.signer, std::time::Duration::ZERO).unwrap();
    assert!(report.waited.is_none(), "{:?}", report.waited);
    // Past the bound, it gives up saying what holds the directory.
    let held_elsewhere = std::fs::OpenOptions::new().read(true).write(true).open(&lock_file).unwrap();
    held_elsewhere.try_lock().unwrap();
    std::fs::write(&lock_file, "an erasure in tenant `acme` (keytrail serve) (process 1)").unwrap();
    let refused = retention::run_waiting(&t.audit, &t.archive, &RetentionPolicy::uniform(settings(1, 30)), at(5, 0), &t.signer, std::time::Duration::from_millis(300))
        .expect_err("retention ran while another process held the directory")
        .to_string();
    assert!(refused.contains("is being changed by an erasure in tenant `acme` (keytrail serve) (process 1)") && refused.contains("waited"), "{refused}");
    drop(held_elsewhere);
}

// --- helpers ---

async fn wait_until(mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("gave up waiting");
}

fn run(args: &[&str], dir: &Path) -> (bool, String) {
    let mut p = Process::spawn(args, &[], dir, dir);
    let status = p.child.wait().unwrap();
    (status.success(), format!("{}{}", p.stdout(), p.stderr()))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, target).unwrap();
        }
    }
}

fn ndjson_text(path: &Path) -> Vec<String> {
    let mut text = String::new();
    zstd::stream::read::Decoder::new(std::fs::File::open(path).unwrap()).unwrap().read_to_string(&mut text).unwrap();
    text.lines().map(str::to_string).collect()
}

fn ndjson(path: &Path) -> Vec<Value> {
    ndjson_text(path).iter().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// `archive::cat` of a tenant's archived day, parsed.
fn cat(t: &Trail, tenant: &str, day: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let n = archive::cat(&t.archive, tenant, day, &t.key, &mut out).unwrap();
    let lines: Vec<Value> = String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len() as u64, n);
    lines
}

/// The column of a block line that holds `key`.
fn column<'b>(block: &'b mut Value, key: &str) -> &'b mut Value {
    block["columns"].as_array_mut().unwrap().iter_mut().find(|c| c["keys"].as_array().unwrap().contains(&json!(key))).unwrap()
}

/// Edits the first block line of an archive file.
fn edit_block(path: &Path, edit: impl FnOnce(&mut Value)) {
    rewrite(path, |lines| {
        let mut block: Value = serde_json::from_str(&lines[0]).unwrap();
        edit(&mut block);
        lines[0] = block.to_string();
    });
}

/// Rewrites an archive file's lines (recompressed, so the file is valid zstd).
fn rewrite(path: &Path, edit: impl FnOnce(&mut Vec<String>)) {
    let mut lines = ndjson_text(path);
    edit(&mut lines);
    let mut encoder = zstd::stream::write::Encoder::new(std::fs::File::create(path).unwrap(), 3).unwrap();
    for line in lines {
        writeln!(encoder, "{line}").unwrap();
    }
    encoder.finish().unwrap();
}

#[test]
fn archives_written_one_event_a_line_before_blocks_still_verify_print_restore_and_erase() {
    let mut t = trail(5, false);
    t.run(&RetentionPolicy::uniform(settings(1, 30)), at(4, 0));
    // Day 1 of acme as the format before wrote it: one event a line with
    // its hashes (what `archive cat` prints), and a manifest that says so,
    // signed and recorded as retention did.
    let day1 = name(1);
    let lines = cat(&t, "acme", &day1);
    let (data, manifest_path) = archive::paths(&t.archive, "acme", &day1);
    rewrite(&data, |file| *file = lines.iter().map(Value::to_string).collect());
    let bytes = std::fs::read(&data).unwrap();
    let mut m: archive::Manifest = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    m.format = archive::FORMAT_EVENT_LINES.into();
    m.file_bytes = bytes.len() as u64;
    m.file_sha256 = keytrail::signing::hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    m.signature = None;
    m.signature = Some(keytrail::signing::hex(&t.signer.sign_bytes(archive::MANIFEST_DOMAIN, &m.canonical_bytes())));
    std::fs::write(&manifest_path, serde_json::to_vec(&m).unwrap()).unwrap();
    let meta = Connection::open(t.audit.join("meta.db")).unwrap();
    let updated = meta
        .execute("UPDATE archives SET manifest = ?1 WHERE tenant = 'acme' AND first_seq = 25", params![serde_json::to_string(&m).unwrap()])
        .unwrap();
    assert_eq!(updated, 1);
    drop(meta);

    t.assert_verifies();
    assert_eq!(cat(&t, "acme", &day1), lines, "printed as it was");
    let r = archive::restore(&t.audit, &t.archive, "acme", &day1, &t.key).unwrap();
    assert_eq!((r.events, r.first_seq, r.last_seq), (24, 25, 48));
    assert_eq!(t.read("acme", at(1, 0), at(2, 0) - 1).len(), 24);
    t.assert_verifies();

    // A changed line is still named by its seq.
    let copy = t.dir.path().join("archive-changed");
    copy_dir(&t.archive, &copy);
    rewrite(&archive::paths(&copy, "acme", &day1).0, |file| file[2] = file[2].replace("\"status_code\":200", "\"status_code\":500"));
    let report = archive::verify_archives(&copy, None, Some("acme"), &t.key).unwrap().remove(0);
    assert!(report.problems.iter().any(|p| p.contains("seq 27: the event does not match its hash (changed)")), "{report:?}");

    // Erasing a consumer rewrites the archive in the format of now, and
    // every event still hashes as it did.
    let report = t.erase_acme_consumer();
    assert!(report.archives.contains(&day1), "{report:?}");
    let m: archive::Manifest = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    assert_eq!(m.format, archive::FORMAT);
    t.assert_verifies();
    let erased = cat(&t, "acme", &day1);
    assert_eq!(erased.len(), 24);
    for (before, after) in lines.iter().zip(&erased) {
        assert_eq!(before["hash"], after["hash"]);
        let subject = before["event"]["consumer_id"] == "cons_1";
        assert_eq!(after["event"]["client_ip"].is_null(), subject, "{after}");
        assert_eq!(after["event"]["personal_commitment"].is_string(), subject, "{after}");
    }
}

#[test]
fn archive_cat_prints_a_day_after_checking_it_and_refuses_bad_input() {
    let mut t = trail(4, false);
    t.run(&RetentionPolicy::uniform(settings(1, 30)), at(3, 0));
    let data = t.dir.path().to_str().unwrap();
    let (ok, text) = run(&["archive", "cat", "--data-dir", data, "--tenant", "globex", "--day", &name(1)], t.dir.path());
    assert!(ok, "{text}");
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines, cat(&t, "globex", &name(1)));
    assert_eq!(lines.iter().map(|l| l["event"]["seq"].as_u64().unwrap()).collect::<Vec<_>>(), (25..=48).collect::<Vec<_>>());
    assert!(lines.iter().all(|l| l["event"]["tenant_id"] == "globex" && l["hash"].as_str().unwrap().len() == 64));
    // An auditor's way: only the archives and the public key.
    let elsewhere = t.dir.path().join("no-data-dir");
    let public = keytrail::signing::public_key_text(&t.key);
    let args = ["archive", "cat", "--data-dir", elsewhere.to_str().unwrap(), "--archive-dir", t.archive.to_str().unwrap(), "--public-key", &public];
    let (ok, text) = run(&[&args[..], &["--tenant", "globex", "--day", &name(1)]].concat(), t.dir.path());
    assert!(ok && text.lines().count() == 24, "{text}");
    let stranger = keytrail::signing::public_key_text(&Signer::load_or_create(&t.dir.path().join("stranger.key")).unwrap().public_key());
    let (ok, text) = run(&[&args[..6], &["--public-key", &stranger, "--tenant", "globex", "--day", &name(1)]].concat(), t.dir.path());
    assert!(!ok && text.contains("signature does not verify") && !text.contains("\"event\""), "{text}");

    let (ok, text) = run(&["archive", "cat", "--data-dir", data, "--tenant", "globex", "--day", "2026-02-30"], t.dir.path());
    assert!(!ok && text.contains("`2026-02-30` is not a day"), "{text}");
    let (ok, text) = run(&["archive", "cat", "--data-dir", data, "--tenant", "initech", "--day", &name(1)], t.dir.path());
    assert!(!ok && text.contains("no archive of tenant `initech`"), "{text}");
    let (ok, text) = run(&["archive", "cat", "--data-dir", data, "--tenant", "Globex!", "--day", &name(1)], t.dir.path());
    assert!(!ok && text.contains("is not a tenant id"), "{text}");
    // A damaged archive prints nothing of itself.
    rewrite(&archive::paths(&t.archive, "globex", &name(1)).0, |lines| lines[0] = lines[0].replace("/orders/", "/orderz/"));
    let (ok, text) = run(&["archive", "cat", "--data-dir", data, "--tenant", "globex", "--day", &name(1)], t.dir.path());
    assert!(!ok && text.contains("the archive does not verify") && !text.contains("\"event\""), "{text}");
}

/// `keytrail archive cat … | head -1`: a reader that goes ends the command
/// quietly, as a closed pipe ends `cat` and the other commands (exit code
/// 141, nothing on stderr); it said "the archive changed while it was
/// read: cannot write: Broken pipe", blaming a sound archive, and exited 1.
#[test]
fn archive_cat_into_a_closed_pipe_ends_quietly() {
    let mut t = trail(4, false);
    t.run(&RetentionPolicy::uniform(settings(1, 30)), at(3, 0));
    let data = t.dir.path().to_str().unwrap();
    // Much more than a pipe's buffer: the writes fail inside the archive's walk.
    let (ok, text) = run(&["archive", "cat", "--data-dir", data, "--tenant", "globex", "--day", &name(1)], t.dir.path());
    assert!(ok && text.len() > 8 * 1024, "{}", text.len());
    let out = crate::util::run_into_closed_pipe(&["archive", "cat", "--data-dir", data, "--tenant", "globex", "--day", &name(1)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(stderr.is_empty(), "quietly: {stderr}");
}

#[test]
fn an_archive_of_several_blocks_links_them_and_names_the_block_a_change_is_in() {
    // One tenant, 33,000 calls on day 0: three blocks (16,384 + 16,384 + 232).
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("signing.key");
    let signer = Signer::load_or_create(&key_path).unwrap();
    let audit = dir.path().join("audit");
    let mut store = AuditWriterStore::open(&audit).unwrap();
    let total = 33_000usize;
    for chunk in 0..3 {
        let mut batch: Vec<Event> = (0..total / 3)
            .map(|i| {
                let n = chunk * total / 3 + i;
                let mut e = event("acme", at(0, n as i64 * 2_000), n);
                e.request_id = Some(keytrail::event::new_id_at(e.timestamp_ms));
                e.upstream_latency_us = e.latency_us.map(|l| l - 250);
                e
            })
            .collect();
        store.insert_batch(&mut batch).unwrap();
    }
    // The writer moves on to day 2, letting day 0's file go.
    store.insert_batch(&mut vec![event("acme", at(2, 0), 0)]).unwrap();
    let key = signer.public_key();
    let mut t = Trail { archive: dir.path().join("archive"), audit, store, signer, key, dir };
    t.run(&RetentionPolicy::uniform(settings(1, 30)), at(3, 0));
    t.assert_verifies();
    let day = name(0);
    let (data, _) = archive::paths(&t.archive, "acme", &day);
    let blocks = ndjson(&data);
    let sizes: Vec<(u64, u64)> = blocks.iter().map(|b| (b["first_seq"].as_u64().unwrap(), b["events"].as_u64().unwrap())).collect();
    assert_eq!(sizes, vec![(1, 16_384), (16_385, 16_384), (32_769, 232)]);
    // The dictionary grows through the file: later blocks use the
    // consumers the first one added. The paths, all different, are stored
    // as values rather than in a dictionary.
    let added = |b: &Value, key: &str| column(&mut b.clone(), key).get("new").and_then(Value::as_array).map_or(0, Vec::len);
    assert_eq!((added(&blocks[0], "consumer_id"), added(&blocks[1], "consumer_id"), added(&blocks[2], "consumer_id")), (3, 0, 0));
    assert!(blocks.iter().all(|b| column(&mut b.clone(), "path")["values"].as_array().is_some_and(|v| v.len() as u64 == b["events"].as_u64().unwrap())));

    // Printed one event a line, linked across the blocks, as they were in the store.
    let lines = cat(&t, "acme", &day);
    assert_eq!(lines.len(), total);
    for pair in lines.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"]);
        assert_eq!(pair[1]["event"]["seq"].as_u64(), pair[0]["event"]["seq"].as_u64().map(|s| s + 1));
    }
    assert_eq!(lines[16_383]["hash"], blocks[0]["hash"]);
    assert_eq!(lines[16_384]["event"]["upstream_latency_us"], json!(lines[16_384]["event"]["latency_us"].as_u64().unwrap() - 250));
    let id = lines[20_000]["event"]["request_id"].as_str().unwrap();
    assert!(id.len() == 36 && id.as_bytes()[14] == b'7', "{id}");

    // Restored whole.
    let r = archive::restore(&t.audit, &t.archive, "acme", &day, &t.key).unwrap();
    assert_eq!((r.events, r.first_seq, r.last_seq), (total as u64, 1, total as u64));
    t.assert_verifies();

    // A change in the second block is named by that block's range only.
    rewrite(&data, |lines| {
        let mut block: Value = serde_json::from_str(&lines[1]).unwrap();
        let latency = column(&mut block, "latency_us");
        latency["values"][5] = json!(latency["values"][5].as_u64().unwrap() + 1);
        lines[1] = block.to_string();
    });
    let report = archive::verify_archives(&t.archive, None, Some("acme"), &t.key).unwrap().remove(0);
    let text = report.problems.join("\n");
    assert!(text.contains("seq 16385..=32768: the events do not hash to their block's hash"), "{text}");
    assert!(!text.contains("seq 1..=16384") && !text.contains("seq 32769..=33000"), "{text}");
}

/// Statistics read the hot day files only — from the events as from the
/// rollups — so a restored day is in neither answer.
/// Statistics' source and call count for `tenant` in `from..=to`, from
/// the rollups or (`force_events`) from the events.
fn stats_calls(reader: &AuditReader, tenant: &str, from: i64, to: i64, force_events: bool) -> (String, u64) {
    use keytrail::store::audit::stats::query::{Metrics, StatsQuery};
    let q = StatsQuery {
        filter: EventFilter { tenant_id: tenant.into(), from_ms: Some(from), to_ms: Some(to), ..EventFilter::default() },
        group_by: None,
        top: 10,
        metrics: Metrics { latency: true, rate_limited: false, distinct_consumers: true, distinct_ips: false },
        force_events,
    };
    let stats = reader.request_stats(&q).unwrap();
    (stats.source.as_str().to_string(), stats.totals.calls)
}

#[test]
fn statistics_leave_restored_days_out_either_way() {
    let mut t = trail(5, false);
    t.run(&RetentionPolicy::uniform(settings(1, 30)), at(4, 0));
    assert!(!t.day_file(0).exists());
    archive::restore(&t.audit, &t.archive, "acme", &name(0), &t.key).unwrap();
    let (from, to) = (at(0, 0), at(1, 0) - 1);
    assert_eq!(t.read("acme", from, to).len(), 24, "the audit API reads the restored day");
    let reader = AuditReader::open(&t.audit).unwrap();
    let calls = |force_events: bool| stats_calls(&reader, "acme", from, to, force_events);
    assert_eq!(calls(false), ("rollups".to_string(), 0));
    assert_eq!(calls(true), ("events".to_string(), 0));
}

/// A tenant's archive that expires while a day file still holds a later
/// call of it (a slow call, stamped that day and archived with the next)
/// takes its blocks out of the file, and statistics of that day count only
/// the events left, from the rollups as from the events. (The file's
/// rollup rows kept counting the deleted events: 25 calls from the
/// rollups, 1 from the events and the list.)
#[test]
fn statistics_count_only_what_an_expired_archive_left_in_a_day_file() {
    let mut t = trail(5, true);
    // Archived and expired in the same run: no archive days.
    t.run(&RetentionPolicy::uniform(settings(1, 0)), at(3, 0));
    assert!(t.day_file(1).exists(), "kept for the slow call, not archived yet");
    let (from, to) = (at(1, 0), at(2, 0) - 1);
    let left: Vec<_> = t.read("acme", from, to).into_iter().filter(|s| s.event.category == Some(Category::Request)).collect();
    assert_eq!(left.len(), 1, "only the slow call is left");
    let reader = AuditReader::open(&t.audit).unwrap();
    let calls = |force_events: bool| stats_calls(&reader, "acme", from, to, force_events);
    assert_eq!(calls(false), ("rollups".to_string(), 1));
    assert_eq!(calls(true), ("events".to_string(), 1));
    let consumer = left[0].event.consumer_id.as_deref().unwrap().to_string();
    let profile = reader.consumer_profile("acme", &consumer, from, to + 1, 10).unwrap();
    assert_eq!(profile.totals.calls, 1);
    assert_eq!(profile.top_paths.iter().map(|p| p.1).sum::<u64>(), 1, "{:?}", profile.top_paths);
}

/// A tenant's archived day that stays in a day file another tenant still
/// keeps is hidden from statistics (rollups, consumer profile, path
/// timeline) as it is from every other read.
#[test]
fn statistics_hide_archived_events_in_a_shared_day_file() {
    let mut t = trail(6, false);
    let mut policy = RetentionPolicy::uniform(settings(2, 30));
    policy.tenants.insert("acme".into(), settings(1, 1));
    policy.tenants.insert("globex".into(), settings(4, 30));
    t.run(&policy, at(2, 0));
    assert!(t.day_file(0).exists(), "kept for globex");
    let (from, to) = (at(0, 0), at(1, 0) - 1);
    assert_eq!(t.read("acme", from, to).len(), 0, "hidden from reads");
    let reader = AuditReader::open(&t.audit).unwrap();
    let calls = |tenant: &str, force_events: bool| stats_calls(&reader, tenant, from, to, force_events).1;
    assert_eq!((calls("acme", false), calls("acme", true)), (0, 0));
    let profile = reader.consumer_profile("acme", "cons_0", from, to + 1, 10).unwrap();
    let timeline: u64 = reader.path_timeline("acme", from, to + 1).unwrap().iter().map(|p| p.calls).sum();
    assert_eq!((profile.totals.calls, timeline), (0, 0));
    // globex's events of that day are all still counted.
    let globex = t.read("globex", from, to).iter().filter(|s| s.event.category == Some(Category::Request)).count() as u64;
    assert!(globex > 0);
    assert_eq!(calls("globex", false), globex);
}

/// `keytrail archive restore` brings back only the archive this store
/// recorded (its manifest as in `meta.db`): an older copy (a backup taken
/// before an erasure, signed with the store's own key) put the erased
/// consumer's addresses back into the store, where the audit API served
/// them and `keytrail verify` passed; another store's archive (checked with
/// that store's key) put events this store never recorded into its trail.
#[test]
fn a_restore_takes_only_the_archive_the_store_recorded() {
    let mut t = trail(5, false);
    t.run(&RetentionPolicy::uniform(settings(1, 30)), at(4, 0));
    let day1 = name(1);
    let backup = t.dir.path().join("backup-archive");
    copy_dir(&t.archive, &backup);
    assert!(t.erase_acme_consumer().archives.contains(&day1));

    // The copy from before the erasure verifies on its own, but is not the
    // archive this store keeps.
    let err = archive::restore(&t.audit, &backup, "acme", &day1, &t.key).unwrap_err();
    assert!(err.contains("not the archive") && err.contains("nothing was restored"), "{err}");
    assert!(t.read("acme", at(1, 0), at(2, 0) - 1).is_empty(), "nothing of it was restored");
    let data = t.dir.path().to_str().unwrap();
    let (ok, text) = run(&["archive", "restore", "--data-dir", data, "--archive-dir", backup.to_str().unwrap(), "--tenant", "acme", "--day", &day1], t.dir.path());
    assert!(!ok && text.contains("not the archive"), "{text}");

    // The store's own (erased) archive restores, without the erased values.
    let r = archive::restore(&t.audit, &t.archive, "acme", &day1, &t.key).unwrap();
    assert_eq!(r.events, 24);
    let restored = t.read("acme", at(1, 0), at(2, 0) - 1);
    assert_eq!(restored.len(), 24);
    assert!(restored.iter().filter(|e| e.event.consumer_id.as_deref() == Some("cons_1")).all(|e| e.event.client_ip.is_none()));
    t.assert_verifies();

    // Another store's archive, checked with that store's key.
    let mut other = trail(5, false);
    other.run(&RetentionPolicy::uniform(settings(1, 30)), at(4, 0));
    let err = archive::restore(&t.audit, &other.archive, "acme", &name(0), &other.key).unwrap_err();
    assert!(err.contains("not the archive") && err.contains("nothing was restored"), "{err}");
    assert!(t.read("acme", at(0, 0), at(1, 0) - 1).is_empty());
    t.assert_verifies();
}

/// A restored day deleted when done (as the README says) and restored again
/// reads as restored the second time: readers' dictionaries of a day file
/// were kept by path and inode, and a file made again at the same path
/// usually gets the freed inode back, so the second restore's events read
/// with the first one's strings (the other tenant's paths) and no
/// longer verified in that process (a running keytrail's audit API).
#[test]
fn a_restored_day_deleted_and_restored_again_reads_as_restored() {
    let mut t = trail(5, false);
    t.run(&RetentionPolicy::uniform(settings(1, 30)), at(4, 0));
    let day1 = name(1);
    let restored = t.audit.join("restored").join(format!("{day1}.db"));
    let paths = |events: &[StoredEvent]| events.iter().map(|e| (e.event.tenant_id.to_string(), e.event.path.clone())).collect::<Vec<_>>();

    archive::restore(&t.audit, &t.archive, "acme", &day1, &t.key).unwrap();
    let acme = t.read("acme", at(1, 0), at(2, 0) - 1);
    assert_eq!(acme.len(), 24);
    use std::os::unix::fs::MetadataExt;
    let first_inode = std::fs::metadata(&restored).unwrap().ino();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", restored.display()));
    }

    archive::restore(&t.audit, &t.archive, "globex", &day1, &t.key).unwrap();
    let second_inode = std::fs::metadata(&restored).unwrap().ino();
    let globex = t.read("globex", at(1, 0), at(2, 0) - 1);
    let wanted: Vec<Value> = cat(&t, "globex", &day1);
    let mut wanted_paths: Vec<(String, Option<String>)> =
        wanted.iter().map(|l| (l["event"]["tenant_id"].as_str().unwrap().to_string(), l["event"]["path"].as_str().map(str::to_string))).collect();
    wanted_paths.reverse();
    assert_eq!(paths(&globex), wanted_paths, "inode {first_inode} then {second_inode}");
    let report = verify_dir(&t.audit, Some("globex"), &t.key).unwrap().remove(0);
    assert!(report.ok, "inode {first_inode} then {second_inode}: {report:?}");
}

/// `keytrail archive verify --tenant` with a tenant neither the archives
/// nor the data directory know (a typo) is an error naming it; it reported
/// `ok` (0 archives) with exit code 0. A tenant that is only hot so far is
/// still `ok` with nothing archived.
#[test]
fn archive_verify_refuses_a_tenant_it_knows_nothing_of() {
    let mut t = trail(4, false);
    t.run(&RetentionPolicy::uniform(settings(1, 30)), at(3, 0));
    let data = t.dir.path().to_str().unwrap();
    let (ok, text) = run(&["archive", "verify", "--data-dir", data, "--tenant", "acme"], t.dir.path());
    assert!(ok && text.contains(" ok "), "{text}");
    let (ok, text) = run(&["archive", "verify", "--data-dir", data, "--tenant", "acmee"], t.dir.path());
    assert!(!ok && text.contains("`acmee`") && !text.contains(" ok "), "{text}");
    // Only the archives and the public key.
    let public = keytrail::signing::public_key_text(&t.key);
    let elsewhere = t.dir.path().join("no-data-dir");
    let base = ["archive", "verify", "--data-dir", elsewhere.to_str().unwrap(), "--archive-dir", t.archive.to_str().unwrap(), "--public-key", &public];
    let (ok, text) = run(&[&base[..], &["--tenant", "globex"]].concat(), t.dir.path());
    assert!(ok && text.contains(" ok "), "{text}");
    let (ok, text) = run(&[&base[..], &["--tenant", "globexx"]].concat(), t.dir.path());
    assert!(!ok && text.contains("`globexx`") && !text.contains(" ok "), "{text}");
    // A tenant with hot events only.
    let mut late = vec![event("initech", at(3, HOUR), 1)];
    t.store.insert_batch(&mut late).unwrap();
    let (ok, text) = run(&["archive", "verify", "--data-dir", data, "--tenant", "initech"], t.dir.path());
    assert!(ok && text.contains("nothing archived"), "{text}");
}


/// An archive that expires while its events are still in a day file kept
/// for a tenant with a longer hot window takes its events' personal values
/// with it: the blocks were deleted, but the client addresses and user
/// agents that only they used stayed in the file's dictionary, in plain
/// text (and the blocks' bytes in its free pages), as long as the other
/// tenant kept the file — and an erasure of the consumer, finding no block
/// of it there any more, left them too.
#[test]
fn an_expired_archive_leaves_none_of_its_personal_values_in_a_shared_day_file() {
    // Day 0's acme calls come from an address and a user agent no one else
    // uses (interned: seen more than once), one with a user agent of its own
    // (kept inline in its block).
    let mut t = trail_with(6, false, &|e| {
        if e.tenant_id.as_ref() == "acme" && e.timestamp_ms < at(1, 0) {
            e.client_ip = Some("203.0.113.77".into());
            e.user_agent = Some(if e.timestamp_ms < at(0, HOUR) { "AcmeOnceAgent/1.0" } else { "AcmeOnlyAgent/9.9" }.into());
        }
    });
    let mut policy = RetentionPolicy::uniform(settings(2, 30));
    policy.tenants.insert("acme".into(), settings(1, 1));
    policy.tenants.insert("globex".into(), settings(4, 30));
    t.run(&policy, at(2, 0));
    let report = t.run(&policy, at(3, 0));
    assert!(actions(&report).contains(&deleted("acme", 0, 1, 24)), "{report:?}");
    assert!(t.day_file(0).exists(), "kept for globex");

    let conn = Connection::open(t.day_file(0)).unwrap();
    let strings: Vec<String> =
        conn.prepare("SELECT value FROM strings").unwrap().query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    drop(conn);
    assert!(strings.iter().any(|s| s == "198.51.100.1"), "globex's addresses stay: {strings:?}");
    let mut files = vec![std::fs::read(t.day_file(0)).unwrap()];
    files.extend(std::fs::read(t.audit.join(format!("{}.db-wal", name(0)))).ok());
    let decompressed: Vec<Vec<u8>> = files.iter().flat_map(|bytes| zstd_frames(bytes)).collect();
    for value in ["203.0.113.77", "AcmeOnlyAgent/9.9", "AcmeOnceAgent/1.0"] {
        assert!(!strings.iter().any(|s| s == value), "{value} is still in day 0's dictionary");
        let found = files.iter().chain(&decompressed).any(|b| b.windows(value.len()).any(|w| w == value.as_bytes()));
        assert!(!found, "{value} is still in day 0's file");
    }
    assert_eq!(t.read("globex", at(0, 0), at(1, 0) - 1).len(), 24);
    t.assert_verifies();
}

/// The decompressed contents of every zstd frame that starts in `bytes`.
fn zstd_frames(bytes: &[u8]) -> Vec<Vec<u8>> {
    const MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
    let mut out = Vec::new();
    for start in (0..bytes.len().saturating_sub(3)).filter(|&i| bytes[i..i + 4] == MAGIC) {
        let Ok(decoder) = zstd::stream::read::Decoder::with_buffer(&bytes[start..]) else { continue };
        let mut text = Vec::new();
        // A frame cut short still yields what it decoded.
        let _ = decoder.single_frame().read_to_end(&mut text);
        if !text.is_empty() {
            out.push(text);
        }
    }
    out
}

/// An archive whose file cannot be deleted is reported and left for the
/// next run; it no longer stops the run. Before, the error ended the run
/// and its report with it: the archives already written in that run never
/// got their `archive_written` events (and were never written again, so
/// the trail never recorded them), and the other tenants' expired archives
/// and every archived day file stayed until that one file could go.
#[test]
fn an_archive_that_cannot_be_deleted_stops_neither_the_run_nor_its_report() {
    let mut t = trail(5, false);
    let policy = RetentionPolicy::uniform(settings(1, 1));
    t.run(&policy, at(2, 0));
    // acme's archive of day 0 expires at the start of day 3; its file is
    // in the way (a directory where the file was).
    let (data, _) = archive::paths(&t.archive, "acme", &name(0));
    std::fs::remove_file(&data).unwrap();
    std::fs::create_dir_all(data.join("in-the-way")).unwrap();
    let report = retention::run(&t.audit, &t.archive, &policy, at(3, 0), &t.signer).unwrap();
    assert_eq!(
        actions(&report),
        sorted(vec![
            written("acme", 1, 25, 48),
            written("globex", 1, 25, 48),
            deleted("globex", 0, 1, 24),
            dropped("acme", 1, 25, 48),
            dropped("globex", 1, 25, 48),
        ])
    );
    assert!(report.problems.len() == 1 && report.problems[0].contains(&format!("archive {} of `acme`", name(0))), "{:?}", report.problems);
    let mut events = report.events(at(3, 0));
    t.store.insert_batch(&mut events).unwrap();

    // Out of the way, the next run deletes it, and writes nothing again.
    std::fs::remove_dir_all(&data).unwrap();
    let report = t.run(&policy, at(3, HOUR));
    assert_eq!(actions(&report), vec![deleted("acme", 0, 1, 24)]);
    t.assert_verifies();
}


/// A restore that fails partway (a day file it writes to refuses the
/// events, as a full disk would) takes back what it wrote. Before, the
/// events written before the failure stayed in `restored/`: `keytrail
/// verify` failed from then on (a restored run that no archive record
/// ends), a new restore of the day was refused as "already restored", and
/// the error said the archive had changed while it was restored.
#[test]
fn a_restore_that_fails_partway_leaves_nothing_behind() {
    let mut t = trail(5, true);
    t.run(&RetentionPolicy::uniform(settings(1, 30)), at(4, 0));
    // Day 2's archive (seq 49..=73) holds the slow call stamped on day 1:
    // seq 49 goes to day 2's restored file, seq 50 to day 1's, which fails.
    archive::restore(&t.audit, &t.archive, "acme", &name(1), &t.key).unwrap();
    let day1 = t.audit.join("restored").join(format!("{}.db", name(1)));
    let refuse = |on: bool| {
        let conn = Connection::open(&day1).unwrap();
        let sql = if on {
            "CREATE TRIGGER refuse BEFORE INSERT ON blocks BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        } else {
            "DROP TRIGGER refuse"
        };
        conn.execute_batch(sql).unwrap();
    };
    refuse(true);
    let err = archive::restore(&t.audit, &t.archive, "acme", &name(2), &t.key).unwrap_err();
    assert!(err.contains("database or disk is full") && !err.contains("changed"), "{err}");
    let restored: Vec<u64> = {
        let reader = AuditReader::open(&t.audit).unwrap();
        reader.restored_runs("acme").unwrap().iter().flat_map(|r| r.first_seq..=r.last_seq).collect()
    };
    assert_eq!(restored, (25..=48).collect::<Vec<_>>(), "only day 1's archive is restored");
    // Nor is anything of the events it took back left on the disk: the day
    // file it made for seq 49 held that call's address, user agent and
    // consumer name in its dictionary (and the deleted block in free
    // pages), in a file no error named and no retention ever removes, and
    // an erasure of the consumer left its strings there.
    let day2 = t.audit.join("restored").join(format!("{}.db", name(2)));
    assert!(!day2.exists(), "a day file the failed restore made is gone");
    t.assert_verifies();

    refuse(false);
    let r = archive::restore(&t.audit, &t.archive, "acme", &name(2), &t.key).unwrap();
    assert_eq!((r.first_seq, r.last_seq), (49, 73));
    t.assert_verifies();

    // A restore a crash stopped (`kill -9`: nothing could be taken back)
    // left part of the archive: restoring it again said it was "already
    // restored", as if all of it were. It says which part is there, and
    // what to do.
    for file in [&day1, &day2] {
        let conn = Connection::open(file).unwrap();
        conn.execute("DELETE FROM blocks WHERE first_seq > 49 AND tenant = (SELECT id FROM strings WHERE value = 'acme')", []).unwrap();
    }
    let err = archive::restore(&t.audit, &t.archive, "acme", &name(2), &t.key).unwrap_err();
    assert!(err.contains("only events 49..=49 of its 49..=73") && err.contains("delete the day files"), "{err}");
}

/// An erasure stopped between putting an archive it rewrote in place and
/// recording its new manifest in `meta.db` (a crash, a write that failed)
/// is completed by running it again. Before, the rerun skipped the
/// rewritten archive (its manifest no longer names the consumer) and
/// re-signed the stale record without the consumer's salts, still with the
/// old file's checksum: `keytrail archive verify` failed for good ("its
/// manifest is not the one retention recorded") and the day could never be
/// restored again.
#[test]
fn an_erasure_stopped_before_recording_a_rewritten_archive_completes_when_run_again() {
    let mut t = trail(5, false);
    t.run(&RetentionPolicy::uniform(settings(1, 30)), at(3, 0));
    let record = |first: i64| -> String {
        let meta = Connection::open(t.audit.join("meta.db")).unwrap();
        meta.query_row("SELECT manifest FROM archives WHERE tenant = 'acme' AND first_seq = ?1", [first], |r| r.get(0)).unwrap()
    };
    let (day0_record, day1_record) = (record(1), record(25));
    let day1 = archive::paths(&t.archive, "acme", &name(1));
    let day1_files = (std::fs::read(&day1.0).unwrap(), std::fs::read(&day1.1).unwrap());
    let erased = t.erase_acme_consumer();
    assert_eq!(erased.archives, vec![name(0), name(1)]);
    // As if it had stopped right after putting day 0's archive in place.
    {
        let meta = Connection::open(t.audit.join("meta.db")).unwrap();
        for (first, text) in [(1, &day0_record), (25, &day1_record)] {
            meta.execute("UPDATE archives SET manifest = ?2 WHERE tenant = 'acme' AND first_seq = ?1", params![first, text]).unwrap();
        }
    }
    std::fs::write(&day1.0, &day1_files.0).unwrap();
    std::fs::write(&day1.1, &day1_files.1).unwrap();
    let reports = archive::verify_archives(&t.archive, Some(&t.audit), Some("acme"), &t.key).unwrap();
    assert!(!reports[0].ok, "{reports:?}");

    let again = t.erase_acme_consumer();
    assert!(again.archives.contains(&name(1)), "{again:?}");
    t.assert_verifies();
    for d in [0, 1] {
        let lines = cat(&t, "acme", &name(d));
        assert!(lines.iter().all(|l| l["event"]["consumer_id"] != "cons_1" || l["event"]["client_ip"].is_null()), "day {d}");
        archive::restore(&t.audit, &t.archive, "acme", &name(d), &t.key).unwrap();
    }
    t.assert_verifies();
}

/// A day with a second archive (`YYYY-MM-DD-<first seq>`: an event that
/// reached the day's file after its archive was written) is printed by
/// `keytrail archive cat` oldest first, as it says. Before, the archives
/// were taken in file-name order, where `-` sorts before `.`: the later
/// archive's events came out before the day's own.
#[test]
fn archive_cat_prints_a_days_archives_oldest_first() {
    let mut t = trail(3, false);
    let policy = RetentionPolicy::uniform(settings(1, 30));
    // (The writer still has the last days open: they are archived, not dropped.)
    retention::run(&t.audit, &t.archive, &policy, at(5, 0), &t.signer).unwrap();
    // A call stamped on day 0 committed now: its day is archived already.
    let mut late = vec![event("acme", at(0, HOUR), 7)];
    t.store.insert_batch(&mut late).unwrap();
    let seq = 3 * 24 + 1;
    let report = retention::run(&t.audit, &t.archive, &policy, at(5, HOUR), &t.signer).unwrap();
    let second = format!("{}-{seq}", name(0));
    assert!(report.actions.iter().any(|a| a.kind == ActionKind::ArchiveWritten && a.day == second), "{report:?}");
    let seqs: Vec<u64> = cat(&t, "acme", &name(0)).iter().map(|l| l["event"]["seq"].as_u64().unwrap()).collect();
    let mut expected: Vec<u64> = (1..=24).collect();
    expected.push(seq);
    assert_eq!(seqs, expected);
}

/// A day's second archive (`YYYY-MM-DD-<first seq>`, the name `archive
/// restore` and `archive verify` show) can be restored and printed by
/// that name. Before, `--day` took a day only, and a day whose first
/// archive was restored already was refused whole ("already restored"):
/// the later archive could not be brought back without deleting the
/// restored files first. A name of no archive, or one that is neither, is
/// said plainly.
#[test]
fn a_days_later_archive_is_restored_and_printed_by_its_name() {
    let mut t = trail(3, false);
    let policy = RetentionPolicy::uniform(settings(1, 30));
    retention::run(&t.audit, &t.archive, &policy, at(5, 0), &t.signer).unwrap();
    let restored = archive::restore(&t.audit, &t.archive, "acme", &name(0), &t.key).unwrap();
    assert_eq!((restored.first_seq, restored.last_seq), (1, 24));
    // A call stamped on day 0 committed now: a second archive of day 0.
    // (One without personal values: see `a_days_archives_salted_apart_are_refused_saying_why`.)
    let mut late = vec![event("acme", at(0, HOUR), 7)];
    late[0].client_ip = None;
    t.store.insert_batch(&mut late).unwrap();
    let seq = 3 * 24 + 1;
    retention::run(&t.audit, &t.archive, &policy, at(5, HOUR), &t.signer).unwrap();
    let second = format!("{}-{seq}", name(0));
    assert!(archive::paths(&t.archive, "acme", &second).1.exists());
    let error = archive::restore(&t.audit, &t.archive, "acme", &name(0), &t.key).unwrap_err();
    assert!(error.contains("already restored"), "{error}");
    let restored = archive::restore(&t.audit, &t.archive, "acme", &second, &t.key).unwrap();
    assert_eq!((restored.events, restored.first_seq, restored.last_seq, restored.archives.clone()), (1, seq, seq, vec![second.clone()]), "{restored:?}");
    assert_eq!(t.read("acme", at(0, 0), at(1, 0) - 1).len(), 25, "day 0's events and the late call, restored");
    t.assert_verifies();

    // The command line: `cat` by the name prints that archive only.
    let data = t.dir.path().to_str().unwrap();
    let (ok, text) = run(&["archive", "cat", "--data-dir", data, "--tenant", "acme", "--day", &second], t.dir.path());
    assert!(ok && text.lines().count() == 1 && text.contains(&format!("\"seq\":{seq}")), "{text}");
    let (ok, text) = run(&["archive", "cat", "--data-dir", data, "--tenant", "acme", "--day", &format!("{}-5", name(0))], t.dir.path());
    assert!(!ok && text.contains(&format!("no archive of tenant `acme` named {}-5", name(0))), "{text}");
    let mut p = Process::spawn(&["archive", "cat", "--data-dir", data, "--tenant", "acme", "--day", &format!("{}-x", name(0))], &[], t.dir.path(), t.dir.path());
    let status = p.child.wait().unwrap();
    assert!(status.code() == Some(2) && p.stderr().contains("is not a day"), "{}", p.stderr());
}

/// A day's later archive whose events are salted apart from the day's own
/// (a late call of a consumer the day's first archive has personal values
/// of: it went into a day file made anew, with a salt of its own) cannot
/// share a restored day file with it, which holds one salt a consumer.
/// The restore of the day failed halfway, taken back, as "the restored
/// events do not hash as archived", which reads as a damaged archive. It
/// is now refused before anything is written, saying why and what to do:
/// each archive alone, by its day and first seq, which also names the
/// day's own archive.
///
/// (A day file made anew now takes the salts of the day's archive, see
/// `a_late_call_to_a_dropped_day_is_salted_as_its_archive`: archives
/// salted apart are those a keytrail before that wrote. Here the late call
/// is committed while `meta.db`'s record of the day's archive shows no
/// salts, so that its file gets a salt of its own, as it did then.)
#[test]
fn a_days_archives_salted_apart_are_refused_saying_why() {
    let mut t = trail(3, false);
    let policy = RetentionPolicy::uniform(settings(1, 30));
    retention::run(&t.audit, &t.archive, &policy, at(5, 0), &t.signer).unwrap();
    let mut late = vec![event("acme", at(0, HOUR), 7)];
    assert!(late[0].client_ip.is_some() && late[0].consumer_id.as_deref() == Some("cons_1"));
    let meta = Connection::open(t.audit.join("meta.db")).unwrap();
    let record: String = meta.query_row("SELECT manifest FROM archives WHERE tenant = 'acme' AND name = ?1", [name(0)], |r| r.get(0)).unwrap();
    meta.execute("UPDATE archives SET manifest = json_set(manifest, '$.personal_salts', json('{}')) WHERE tenant = 'acme' AND name = ?1", [name(0)]).unwrap();
    t.store.insert_batch(&mut late).unwrap();
    meta.execute("UPDATE archives SET manifest = ?2 WHERE tenant = 'acme' AND name = ?1", params![name(0), record]).unwrap();
    let seq = 3 * 24 + 1;
    retention::run(&t.audit, &t.archive, &policy, at(5, HOUR), &t.signer).unwrap();
    let (own, later) = (format!("{}-1", name(0)), format!("{}-{seq}", name(0)));
    assert!(archive::paths(&t.archive, "acme", &later).1.exists());
    let error = archive::restore(&t.audit, &t.archive, "acme", &name(0), &t.key).unwrap_err();
    assert!(error.contains("with different personal salts") && error.contains(&format!("`--day {own}`")) && error.contains("consumer `cons_1`"), "{error}");
    assert!(!error.contains("do not hash as archived"), "{error}");
    assert!(!t.audit.join("restored").join(format!("{}.db", name(0))).exists(), "nothing written");
    // Each alone: the day's own archive by its first seq, then the later one after deleting it.
    let restored = archive::restore(&t.audit, &t.archive, "acme", &own, &t.key).unwrap();
    assert_eq!((restored.first_seq, restored.last_seq, restored.archives.clone()), (1, 24, vec![name(0)]), "{restored:?}");
    t.assert_verifies();
    let error = archive::restore(&t.audit, &t.archive, "acme", &later, &t.key).unwrap_err();
    assert!(error.contains("with different personal salts") && error.contains("the restored day file"), "{error}");
    for file in &restored.files {
        std::fs::remove_file(t.audit.join("restored").join(file)).unwrap();
    }
    let restored = archive::restore(&t.audit, &t.archive, "acme", &later, &t.key).unwrap();
    assert_eq!((restored.first_seq, restored.last_seq), (seq, seq), "{restored:?}");
    t.assert_verifies();
}

/// A call stamped on a day whose hot file retention archived and dropped
/// (a slow call, an application event with its own time) goes into a day
/// file made anew, and is hashed with the personal salt the day's archive
/// holds for its tenant and consumer: the day's archives (its own and the
/// later one that takes the call) then share one salt a consumer, restore
/// together and verify. Before, the new file made a salt of its own, and
/// the restore of the day was refused ("different personal salts").
#[test]
fn a_late_call_to_a_dropped_day_is_salted_as_its_archive() {
    let mut t = trail(3, false);
    let policy = RetentionPolicy::uniform(settings(1, 30));
    retention::run(&t.audit, &t.archive, &policy, at(5, 0), &t.signer).unwrap();
    assert!(!t.day_file(0).exists(), "day 0's file was archived and dropped");
    let mut late = vec![event("acme", at(0, HOUR), 7)];
    assert!(late[0].client_ip.is_some() && late[0].consumer_id.as_deref() == Some("cons_1"));
    t.store.insert_batch(&mut late).unwrap();
    assert!(t.day_file(0).exists(), "the late call made day 0's file anew");
    let seq = 3 * 24 + 1;
    retention::run(&t.audit, &t.archive, &policy, at(5, HOUR), &t.signer).unwrap();
    let later = format!("{}-{seq}", name(0));
    assert!(archive::paths(&t.archive, "acme", &later).1.exists());
    let restored = archive::restore(&t.audit, &t.archive, "acme", &name(0), &t.key).unwrap();
    assert_eq!((restored.events, restored.archives.clone()), (25, vec![name(0), later]), "{restored:?}");
    assert_eq!(t.read("acme", at(0, 0), at(1, 0) - 1).len(), 25, "day 0's events and the late call, restored");
    t.assert_verifies();
}

/// A restore names the day files it wrote: an archive's events go to the
/// file of their own day, so day 2's archive (which holds a call stamped
/// on day 1) writes day 1's file too. Before, only the folder was named:
/// deleting the restored day's own file "when done" left that call
/// behind, `keytrail verify` failed from then on and the day could not be
/// restored again ("already restored").
#[test]
fn a_restore_names_every_day_file_it_wrote() {
    let mut t = trail(5, true);
    t.run(&RetentionPolicy::uniform(settings(1, 30)), at(4, 0));
    let data = t.dir.path().to_str().unwrap();
    let (ok, text) = run(&["archive", "restore", "--data-dir", data, "--tenant", "acme", "--day", &name(2)], t.dir.path());
    assert!(ok, "{text}");
    let files = format!("{}.db, {}.db", name(1), name(2));
    assert!(text.contains(&files), "{text}");
    for file in [name(1), name(2)] {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(t.audit.join("restored").join(format!("{file}.db{suffix}")));
        }
    }
    t.assert_verifies();
    let r = archive::restore(&t.audit, &t.archive, "acme", &name(2), &t.key).unwrap();
    assert_eq!(r.files, vec![format!("{}.db", name(1)), format!("{}.db", name(2))]);
}

/// A day written without its leading zeros (`2026-11-1`), which the check
/// of `--day` lets through as a day, names that day's archive. Before, it
/// was compared with the archives' names as typed: `archive cat` and
/// `archive restore` said there was no archive of that day although there
/// was one.
#[test]
fn a_day_without_leading_zeros_names_its_archive() {
    let mut t = trail(5, true);
    t.run(&RetentionPolicy::uniform(settings(1, 30)), at(4, 0));
    let short = format!("{}-{}-{}", &name(0)[..4], name(0)[5..7].trim_start_matches('0'), name(0)[8..10].trim_start_matches('0'));
    assert_ne!(short, name(0));
    assert_eq!(cat(&t, "acme", &short).len(), 24);
    let r = archive::restore(&t.audit, &t.archive, "acme", &short, &t.key).unwrap();
    assert_eq!((r.events, r.day.as_str()), (24, name(0).as_str()));
}
