//! Erasure of a data subject (`keytrail erase`): a consumer's personal
//! values leave the hot day files, a restored day, the archives and the
//! control store, and the chain, the archives and an export still verify.
//! Proven by searching every byte the data directory holds, with every
//! zstd frame in it (blocks, archives) decompressed.

use std::io::Read;
use std::path::Path;

use serde_json::{json, Value};

use keytrail::event::{now_ms, Category, Event};
use keytrail::signing::Signer;
use keytrail::store::audit::archive::day_name;
use keytrail::store::audit::AuditWriterStore;
use keytrail::store::control::{Consumer, ControlStore, Tenant};

use crate::util::{run_cli, start_upstream, TestServer, ADMIN_TOKEN};

const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;

/// Jane's personal values: each must be gone after her erasure.
const JANE_NAME: &str = "jane.doe@example.org";
const JANE_META: &str = "jane-meta-phone-5550147";
const JANE_UA_LIVE: &str = "JaneBrowser/1.0 (unique-ua-7731)";
const JANE_UA_OLD: &str = "JaneOldClient/9.9";
const JANE_IP: &str = "203.0.113.77";
const JANE_ACTOR: &str = "user:jane-actor-4412";
/// Bob's: each must still be there (the search can find what is present).
const BOB_NAME: &str = "bob-builder-unique";
const BOB_UA: &str = "BobAgent/2.0 (unique-ua-1187)";
const BOB_IP: &str = "198.51.100.55";
const BOB_ACTOR: &str = "user:bob-actor-9921";
/// A consumer created through the admin API.
const CAROL_NAME: &str = "carol-created-through-the-api";

/// Old events of one consumer, as a server writing them days ago would
/// have: calls with an address and a user agent, and an application event
/// whose actor is the person.
fn old_events(consumer: &str, name: &str, ip: &str, ua: &str, actor: &str, ts: i64) -> Vec<Event> {
    let mut out = Vec::new();
    for i in 0..3 {
        let mut e = Event::new("acme", Category::Request, "api_call", "success");
        e.timestamp_ms = ts + i * 60_000;
        e.consumer_id = Some(consumer.into());
        e.consumer_name = Some(name.into());
        e.api_id = Some("docs".into());
        e.method = Some("GET".into());
        e.path = Some(format!("/docs/{i}"));
        e.status_code = Some(200);
        e.latency_us = Some(900);
        e.client_ip = Some(ip.into());
        e.user_agent = Some(ua.into());
        out.push(e);
    }
    let mut app = Event::new("acme", Category::App, "order.updated", "success");
    app.timestamp_ms = ts + 5 * 60_000;
    app.consumer_id = Some(consumer.into());
    app.actor = Some(actor.into());
    app.target = Some("order:1".into());
    out.push(app);
    out
}

/// Every byte under `dir`, and every zstd frame found in it decompressed:
/// day files' blocks and archives are compressed, so the raw bytes alone
/// would hide what they hold.
fn everything_in(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            let name = path.display().to_string();
            out.extend(frames(&bytes).into_iter().map(|f| (format!("{name} (a zstd frame)"), f)));
            if name.ends_with(".db") {
                // Blocks over a page long are split across SQLite pages; read them whole.
                let conn = rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
                let has_blocks: bool = conn.query_row("SELECT count(*) FROM sqlite_master WHERE name = 'blocks'", [], |r| r.get::<_, i64>(0)).unwrap() > 0;
                if has_blocks {
                    let mut stmt = conn.prepare("SELECT data FROM blocks").unwrap();
                    let blobs: Vec<Vec<u8>> = stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
                    for blob in blobs {
                        out.extend(frames(&blob).into_iter().map(|f| (format!("{name} (a block)"), f)));
                        out.push((format!("{name} (a block)"), blob));
                    }
                }
            }
            out.push((name, bytes));
        }
    }
    out
}

/// The decompressed contents of every zstd frame that starts in `bytes`.
fn frames(bytes: &[u8]) -> Vec<Vec<u8>> {
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

/// A call through the gateway with a user agent; its status.
async fn call(ts: &TestServer, key: &str, ua: &str, path: &str) -> u16 {
    let res = ts.client.get(format!("{}{path}", ts.gateway)).header("X-API-Key", key).header("User-Agent", ua).send().await.unwrap();
    res.status().as_u16()
}

fn found(needle: &str, outputs: &[(String, Vec<u8>)]) -> Vec<String> {
    outputs.iter().filter(|(_, b)| b.windows(needle.len()).any(|w| w == needle.as_bytes())).map(|(n, _)| n.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erase_removes_a_consumers_personal_values_everywhere_and_the_trail_still_verifies() {
    let today = now_ms().div_euclid(DAY);
    let up = format!("http://{}", start_upstream().await);
    // Days today-9 ..= today-4 are archived at start (3 hot days).
    let retention = |c: &mut keytrail::config::Config| {
        c.retention.defaults = keytrail::settings::retention::RetentionSettings { hot_days: 3, archive_days: 400 };
        c.retention.interval = std::time::Duration::from_millis(300);
    };
    // A store a server wrote over the past days: the tenant and two
    // consumers (Jane's name and metadata are personal), and their calls
    // and application events on days today-9 ..= today-4.
    let dir = tempfile::tempdir().unwrap();
    let (jane, bob) = ("cons_jane0000000000000001".to_string(), "cons_bob00000000000000001".to_string());
    {
        let control = ControlStore::open(&dir.path().join("control.db")).unwrap();
        control.create_tenant(&Tenant { id: "acme".into(), name: "Acme".into(), created_at: (today - 10) * DAY }).unwrap();
        for (id, name, metadata) in [(&jane, JANE_NAME, json!({"phone": JANE_META})), (&bob, BOB_NAME, json!({}))] {
            let consumer = Consumer { id: id.clone(), tenant_id: "acme".into(), name: name.into(), status: "active".into(), metadata, tier: None, created_at: (today - 10) * DAY };
            control.create_consumer(&consumer).unwrap();
        }
        let mut store = AuditWriterStore::open(&dir.path().join("audit")).unwrap();
        for d in (4..10).rev() {
            let ts0 = (today - d) * DAY + 9 * HOUR;
            let mut batch = old_events(&jane, JANE_NAME, JANE_IP, JANE_UA_OLD, JANE_ACTOR, ts0);
            batch.extend(old_events(&bob, BOB_NAME, BOB_IP, BOB_UA, BOB_ACTOR, ts0 + HOUR));
            store.insert_batch(&mut batch).unwrap();
        }
    }
    let mut ts = TestServer::start_with(dir, retention).await;
    let data_dir = ts.data_dir.clone();
    let data = data_dir.to_str().unwrap().to_string();
    let admin = ts.admin_client();
    let a = admin.post("/v1/tenants/acme/apis", json!({"id": "docs", "path_prefix": "/docs", "upstream": up})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let (jane_key_id, jane_key) = admin.key("acme", &jane, json!({})).await;
    let (_, bob_key) = admin.key("acme", &bob, json!({})).await;
    for _ in 0..3 {
        assert_eq!(call(&ts, &jane_key, JANE_UA_LIVE, "/docs/live").await, 200);
        assert_eq!(call(&ts, &bob_key, BOB_UA, "/docs/live").await, 200);
    }
    // Admin actions on her: events with the admin's address and user agent.
    assert_eq!(admin.post(&format!("/v1/tenants/acme/consumers/{jane}/suspend"), json!({})).await.status, 200);
    assert_eq!(admin.post(&format!("/v1/tenants/acme/consumers/{jane}/reactivate"), json!({})).await.status, 200);
    // A consumer created through the API: the admin log keeps no copy of
    // its name (it could not be erased from there).
    let a = admin.post("/v1/tenants/acme/consumers", json!({"name": CAROL_NAME, "metadata": {"x": 1}})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    ts.flush().await;
    let a = admin.get("/v1/audit/acme/admin?action=CONSUMER_CREATED").await;
    let entry = &a.body["entries"][0];
    assert_eq!((entry["details"]["request"]["name"].as_str(), entry["details"]["request"]["metadata"].as_str()), (Some("[personal]"), Some("[personal]")), "{}", a.text);
    let admin = ts.admin_client();
    let archive_dir = ts.data_dir.join("archive");
    let archived = |d: i64| keytrail::store::audit::archive::paths(&archive_dir, "acme", &day_name(today - d)).1.exists();
    for _ in 0..200 {
        if (4..10).all(archived) && !ts.audit_dir().join(format!("{}.db", day_name(today - 9))).exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!((4..10).all(archived), "retention archived the old days");
    // One archived day is brought back for querying: a restored day file.
    let (ok, out, err) = run_cli(&["archive", "restore", "--data-dir", &data, "--tenant", "acme", "--day", &day_name(today - 7)], &[]).await;
    assert!(ok, "{out}{err}");

    // Before: every value is in the data directory.
    let before = everything_in(&data_dir);
    for value in [JANE_NAME, JANE_META, JANE_UA_LIVE, JANE_UA_OLD, JANE_IP, JANE_ACTOR, BOB_NAME, BOB_UA, BOB_IP, BOB_ACTOR] {
        assert!(!found(value, &before).is_empty(), "{value} should be stored before the erasure");
    }

    // Bad input, and callers who may not erase.
    let url = ts.admin.clone();
    let token = [("KEYTRAIL_TOKEN", ADMIN_TOKEN), ("KEYTRAIL_ADMIN_URL", url.as_str())];
    let a = admin.post("/v1/tenants/acme/consumers/cons_nobody/erase", json!({})).await;
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (404, Some("not_found")), "{}", a.text);
    let a = admin.post(&format!("/v1/tenants/nobody/consumers/{jane}/erase"), json!({})).await;
    assert_eq!(a.status, 404, "{}", a.text);
    let a = admin.post(&format!("/v1/tenants/acme/consumers/{jane}/erase"), json!({})).await;
    assert_eq!(a.status, 200, "an empty JSON body is accepted too: {}", a.text);
    let first = a.body.clone();
    let a = admin.post("/v1/admins", json!({"name": "ops", "role": "admin"})).await;
    let ops = a.body["token"].as_str().unwrap().to_string();
    let (ok, _, err) = run_cli(&["erase", "--tenant", "acme", "--consumer", &jane], &[("KEYTRAIL_TOKEN", &ops), ("KEYTRAIL_ADMIN_URL", &url)]).await;
    assert!(!ok && err.contains("403") && err.contains("role"), "{err}");
    let (ok, _, err) = run_cli(&["erase", "--tenant", "acme", "--consumer", "cons_a/b"], &token).await;
    assert!(!ok && err.contains("--consumer") && err.contains("`cons_a/b` is not a consumer id"), "{err}");
    let (ok, _, err) = run_cli(&["erase", "--tenant", "acme"], &token).await;
    assert!(!ok && err.contains("--consumer"), "{err}");

    // The erasure through the API above: what it changed. Her events are
    // the three calls today and four a day on six archived days, one of
    // them restored. Events an admin caused about her (her key's creation,
    // the suspension) hold the admin's address, not hers: they stay.
    let erased_events = first["events"].as_u64().unwrap();
    // The restored day's four are counted in the restored copy and the archive.
    assert_eq!(erased_events, 3 + 6 * 4 + 4, "{first}");
    assert_eq!(first["archives"].as_array().unwrap().len(), 6, "{first}");
    assert!(first["day_files"].as_array().unwrap().iter().any(|d| d.as_str().unwrap().starts_with("restored/")), "{first}");
    assert!(first["salts"].as_u64().unwrap() >= 8, "{first}");
    assert!(first["strings"].as_u64().unwrap() >= 4, "{first}");

    // Every one of her values is gone from the data directory already.
    let after = everything_in(&data_dir);
    for value in [JANE_NAME, JANE_META, JANE_UA_LIVE, JANE_UA_OLD, JANE_IP, JANE_ACTOR] {
        assert_eq!(found(value, &after), Vec::<String>::new(), "{value} is still stored");
    }
    for value in [BOB_NAME, BOB_UA, BOB_IP, BOB_ACTOR] {
        assert!(!found(value, &after).is_empty(), "{value} should still be stored");
    }
    // Again from the command line: nothing is left to erase.
    let (ok, out, err) = run_cli(&["erase", "--tenant", "acme", "--consumer", &jane], &token).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains(&format!("consumer {jane} in tenant acme")) && out.contains("events        0"), "{out}");
    let (ok, out, err) = run_cli(&["erase", "--tenant", "acme", "--consumer", &jane, "--json"], &token).await;
    assert!(ok, "{err}");
    let again: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((again["events"].as_u64(), again["consumer"].as_str()), (Some(0), Some(jane.as_str())), "{out}");

    // Her events read without personal values; Bob's are untouched; she is renamed.
    ts.flush().await;
    let a = admin.get(&format!("/v1/audit/acme?consumer_id={jane}&days=30")).await;
    let logs = a.body["logs"].as_array().unwrap();
    assert!(logs.len() >= 3, "{}", a.text);
    for log in logs {
        assert!(log["client_ip"].is_null() && log["user_agent"].is_null() && log["consumer_name"].is_null(), "{log}");
    }
    let a = admin.get(&format!("/v1/audit/acme?consumer_id={bob}&days=30")).await;
    assert!(a.body["logs"].as_array().unwrap().iter().all(|l| l["user_agent"] == BOB_UA), "{}", a.text);
    let a = admin.get("/v1/tenants/acme/consumers").await;
    let listed = a.body["consumers"].as_array().unwrap().iter().find(|c| c["id"] == jane.as_str()).unwrap().clone();
    assert_eq!((listed["name"].clone(), listed["metadata"].clone()), (json!(format!("erased-{jane}")), json!({})), "{listed}");
    // The erasure is an event that names no personal value.
    let erased = admin.wait_for("/v1/audit/acme/security?event_type=personal_data_erased", "events", 3).await;
    assert!(erased.iter().any(|e| e["details"]["events"] == json!(erased_events)), "{erased:?}");
    assert!(erased.iter().all(|e| e["consumer_id"] == json!(jane) && e["consumer_name"].is_null()), "{erased:?}");
    // Her key still works, and new calls are logged as usual, under a new salt.
    assert_eq!(call(&ts, &jane_key, JANE_UA_LIVE, "/docs/after").await, 200);
    ts.flush().await;
    let a = admin.get(&format!("/v1/audit/acme?consumer_id={jane}&path=/docs/after")).await;
    assert_eq!(a.body["logs"][0]["user_agent"], JANE_UA_LIVE, "{}", a.text);
    assert_eq!(a.body["logs"][0]["key_id"], json!(jane_key_id), "{}", a.text);

    // A tenant's export still verifies on its own.
    let export = ts.client.get(format!("{}/v1/audit/acme/export/json?category=all&days=30", ts.admin)).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    let export: Value = export.json().await.unwrap();
    let public = Signer::load_or_create(&data_dir.join("signing.key")).unwrap().public_key();
    let report = keytrail::store::audit::integrity::verify_export(&export, &public).unwrap();
    assert!(report.ok, "{report:?}");
    ts.stop().await;

    // The chain and the rewritten archives verify.
    let (ok, out, err) = run_cli(&["verify", "--data-dir", &data], &[]).await;
    assert!(ok, "{out}{err}");
    let (ok, out, err) = run_cli(&["archive", "verify", "--data-dir", &data], &[]).await;
    assert!(ok, "{out}{err}");
    // Asked for, a progress line on standard error: archives checked of the
    // tenant's, cleared at the end; the report the same.
    let (ok, shown, err) = run_cli(&["archive", "verify", "--data-dir", &data], &[("KEYTRAIL_PROGRESS", "always")]).await;
    assert!(ok && shown == out, "{shown}{err}");
    assert!(err.starts_with("\rverifying the archives of tenant ") && err.contains(" events), ") && err.ends_with("\r\x1b[K"), "{err:?}");

    // Still none after the stop, but for the user agent of her call made
    // after the erasure; all of Bob's are there.
    let after = everything_in(&data_dir);
    for value in [JANE_NAME, JANE_META, JANE_UA_OLD, JANE_IP, JANE_ACTOR] {
        assert_eq!(found(value, &after), Vec::<String>::new(), "{value} is still stored");
    }
    for value in [BOB_NAME, BOB_UA, BOB_IP, BOB_ACTOR] {
        assert!(!found(value, &after).is_empty(), "{value} should still be stored");
    }
    let audit_only: Vec<_> = after.iter().filter(|(name, _)| !name.contains("control.db")).cloned().collect();
    assert_eq!(found(CAROL_NAME, &audit_only), Vec::<String>::new(), "the admin log copied a consumer's name");
    assert!(!found(CAROL_NAME, &after).is_empty());
}

/// A server's erasure waits for the readers of the audit directory
/// (verifications, `keytrail verify`, `archive cat`), but readers coming one
/// after another cannot keep it out: it announces itself while it waits
/// (`maintenance.intent`), so readers after that wait behind it and it
/// runs once the ones already reading finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_is_not_starved_by_readers_one_after_another() {
    use keytrail::store::audit::erasure;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    let mut ts = TestServer::start().await;
    let up = format!("http://{}", start_upstream().await);
    let admin = ts.admin_client();
    let (consumer, _, key) = admin.setup("acme", "/docs", &up).await;
    assert_eq!(call(&ts, &key, "SomeAgent/1.0", "/docs/a").await, 200);
    ts.flush().await;
    let audit = ts.audit_dir();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    // Readers each reading 120 ms, a new one every 40 ms (for 20 s at most):
    // at any moment at least two are reading.
    let readers = {
        let (audit, stop) = (audit.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut reading, mut refused) = (std::collections::VecDeque::new(), Vec::new());
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(20) {
                match erasure::read_lock(&audit, Duration::ZERO).unwrap() {
                    Some(guard) => reading.push_back((Instant::now(), guard)),
                    None => refused.push(erasure::busy_message(&audit)),
                }
                while reading.front().is_some_and(|(at, _)| at.elapsed() >= Duration::from_millis(120)) {
                    reading.pop_front();
                }
                std::thread::sleep(Duration::from_millis(40));
            }
            refused
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let path = format!("/v1/tenants/acme/consumers/{consumer}/erase");
    let a = tokio::time::timeout(Duration::from_secs(8), admin.post(&path, json!({}))).await;
    stop.store(true, Ordering::Relaxed);
    let refused = tokio::task::spawn_blocking(move || readers.join().unwrap()).await.unwrap();
    let a = a.expect("the erasure got its turn among the readers");
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(!refused.is_empty(), "the readers after it waited behind the erasure");
    assert!(refused.iter().all(|m| m.contains("an erasure in tenant `acme`")), "{refused:?}");
    ts.stop().await;
}

/// An erased consumer is renamed `erased-<its id>`. A consumer already
/// holding that name (any admin may create one: ids are listed) made the
/// rename break the tenant's unique names: the erasure answered 500 and the
/// data subject could never be erased. Such names are keytrail's.
#[tokio::test]
async fn no_consumer_can_take_the_name_an_erasure_gives() {
    let mut ts = TestServer::start().await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    let a = admin.post("/v1/tenants/acme/consumers", json!({"name": "jane"})).await;
    let jane = a.body["id"].as_str().unwrap().to_string();
    let a = admin.post("/v1/tenants/acme/consumers", json!({"name": format!("erased-{jane}")})).await;
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (400, Some("invalid_body")), "{}", a.text);
    assert!(a.text.contains("erased-cons_"), "{}", a.text);
    let a = admin.post(&format!("/v1/tenants/acme/consumers/{jane}/erase"), json!({})).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let listed = admin.get("/v1/tenants/acme/consumers").await;
    assert_eq!(listed.body["consumers"][0]["name"], format!("erased-{jane}"), "{}", listed.text);
    // Other names that merely start alike stay free.
    assert_eq!(admin.post("/v1/tenants/acme/consumers", json!({"name": "erased-by-mistake"})).await.status, 201);
    ts.stop().await;
}

/// An erasure that cannot finish (here an archive of the consumer's days no
/// longer reads) answered a bare 500 and left nothing in the trail, though
/// the consumer was already renamed and its hot events could be erased: an
/// auditor saw neither that it was asked for nor that it is unfinished. The
/// answer now says what state it left and what to do, and a
/// `personal_data_erased` event with outcome `failure` records it.
#[tokio::test]
async fn an_erasure_that_cannot_finish_says_so_and_is_recorded() {
    let today = now_ms().div_euclid(DAY);
    let retention = |c: &mut keytrail::config::Config| {
        c.retention.defaults = keytrail::settings::retention::RetentionSettings { hot_days: 3, archive_days: 400 };
        c.retention.interval = std::time::Duration::from_millis(300);
    };
    let dir = tempfile::tempdir().unwrap();
    let jane = "cons_jane0000000000000001".to_string();
    {
        let control = ControlStore::open(&dir.path().join("control.db")).unwrap();
        control.create_tenant(&Tenant { id: "acme".into(), name: "Acme".into(), created_at: (today - 10) * DAY }).unwrap();
        let consumer = Consumer { id: jane.clone(), tenant_id: "acme".into(), name: JANE_NAME.into(), status: "active".into(), metadata: json!({}), tier: None, created_at: (today - 10) * DAY };
        control.create_consumer(&consumer).unwrap();
        let mut store = AuditWriterStore::open(&dir.path().join("audit")).unwrap();
        store.insert_batch(&mut old_events(&jane, JANE_NAME, JANE_IP, JANE_UA_OLD, JANE_ACTOR, (today - 5) * DAY + 9 * HOUR)).unwrap();
    }
    let mut ts = TestServer::start_with(dir, retention).await;
    let admin = ts.admin_client();
    let (archive, _) = keytrail::store::audit::archive::paths(&ts.data_dir.join("archive"), "acme", &day_name(today - 5));
    for _ in 0..200 {
        if archive.exists() && !ts.audit_dir().join(format!("{}.db", day_name(today - 5))).exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(archive.exists(), "retention archived the day");
    std::fs::write(&archive, b"no longer an archive").unwrap();

    let a = admin.post(&format!("/v1/tenants/acme/consumers/{jane}/erase"), json!({})).await;
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (500, Some("internal_error")), "{}", a.text);
    let message = a.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("stopped before it finished") && message.contains("erase it again"), "{message}");
    assert!(!a.text.contains(JANE_NAME), "{}", a.text);
    let a = admin.get("/v1/audit/acme/security?event_type=personal_data_erased").await;
    let events = a.body["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{}", a.text);
    assert_eq!((events[0]["outcome"].as_str(), events[0]["target"].as_str()), (Some("failure"), Some(format!("consumer:{jane}").as_str())), "{}", a.text);
    ts.stop().await;
}
