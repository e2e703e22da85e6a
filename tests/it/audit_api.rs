//! The audit trail and its read API: event fields, filters, pagination,
//! exports, bad parameters, the hash chain and commit latency.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{start_upstream, TestServer};
use keytrail::event::GENESIS_HASH;
use keytrail::store::audit::AuditReader;

/// A server with tenant `acme`, api `/docs`, two consumers and some traffic:
/// alice: 3 GET 200, 1 POST 200, 2 GET 404 (from the upstream); bob: 2 GET 500; plus 1 missing-key 401.
async fn with_traffic() -> (TestServer, String, String) {
    let ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (alice, _, alice_key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    let (bob, _, bob_key) = admin.consumer_with_key("acme", "bob", serde_json::json!({})).await;
    let call = |method: &'static str, path: &'static str, key: String| {
        let req = ts.client.request(method.parse().unwrap(), format!("{}{}", ts.gateway, path)).header("X-API-Key", key);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    for _ in 0..3 {
        assert_eq!(call("GET", "/docs/a", alice_key.clone()).await, 200);
    }
    assert_eq!(call("POST", "/docs/b", alice_key.clone()).await, 200);
    for _ in 0..2 {
        assert_eq!(call("GET", "/docs/status/404", alice_key.clone()).await, 404);
        assert_eq!(call("GET", "/docs/status/500", bob_key.clone()).await, 500);
    }
    let res = ts.client.get(format!("{}/docs/a", ts.gateway)).send().await.unwrap();
    assert_eq!(res.status(), 401);
    ts.flush().await;
    (ts, alice, bob)
}

async fn count(admin: &crate::util::Admin, query: &str) -> usize {
    let a = admin.get(&format!("/v1/audit/acme{query}")).await;
    assert_eq!(a.status, 200, "{query}: {}", a.text);
    a.body["logs"].as_array().unwrap().len()
}

#[tokio::test]
async fn list_filters_and_fields() {
    let (mut ts, alice, bob) = with_traffic().await;
    let admin = ts.admin_client();
    assert_eq!(count(&admin, "").await, 9);
    assert_eq!(count(&admin, &format!("?consumer_id={alice}")).await, 6);
    assert_eq!(count(&admin, &format!("?consumer_id={bob}")).await, 2);
    assert_eq!(count(&admin, "?method=POST").await, 1);
    assert_eq!(count(&admin, "?method=post").await, 1);
    assert_eq!(count(&admin, "?status_min=400").await, 5);
    assert_eq!(count(&admin, "?status_min=400&status_max=499").await, 3);
    assert_eq!(count(&admin, "?status_min=500").await, 2);
    assert_eq!(count(&admin, "?path=/docs/status").await, 4);
    assert_eq!(count(&admin, "?path=/docs/a").await, 4);
    assert_eq!(count(&admin, "?api_id=docs").await, 9);
    assert_eq!(count(&admin, "?api_id=other").await, 0);
    assert_eq!(count(&admin, "?hours=1").await, 9);
    assert_eq!(count(&admin, "?days=1").await, 9);
    assert_eq!(count(&admin, "?to=2001-01-01T00:00:00Z").await, 0);
    assert_eq!(count(&admin, "?from=2001-01-01T00:00:00Z").await, 9);
    assert_eq!(count(&admin, "?limit=2").await, 2);

    let a = admin.get("/v1/audit/acme").await;
    let logs = a.body["logs"].as_array().unwrap();
    let required = [
        "timestamp", "request_id", "consumer_id", "consumer_name", "tenant_id", "api_id", "method", "path",
        "status_code", "latency_ms", "request_size_bytes", "response_size_bytes", "client_ip", "user_agent", "key_hint",
    ];
    for log in logs {
        for field in required {
            assert!(log.get(field).is_some(), "{field} missing in {log}");
        }
        let ts = log["timestamp"].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok() && ts.ends_with('Z') && ts.len() == 24, "{ts}");
        assert_eq!(log["tenant_id"], "acme");
    }
    // Newest first.
    let times: Vec<&str> = logs.iter().map(|l| l["timestamp"].as_str().unwrap()).collect();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted);
    ts.stop().await;
}

#[tokio::test]
async fn pages_follow_the_cursor_without_gaps_or_repeats() {
    let (mut ts, _, _) = with_traffic().await;
    let admin = ts.admin_client();
    let seen: Vec<String> = admin.all_logs("/v1/audit/acme?limit=4").await.iter().map(|l| l["event_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(seen.len(), 9);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 9);
    ts.stop().await;
}

#[tokio::test]
async fn bad_parameters_are_400_naming_the_parameter_and_unknown_tenants_404() {
    let (mut ts, _, _) = with_traffic().await;
    let admin = ts.admin_client();
    let cases = [
        ("status_min=abc", "status_min"),
        ("from=yesterday", "from"),
        ("to=2026-13-01", "to"),
        ("limit=-1", "limit"),
        ("limit=10001", "limit"),
        ("hours=0", "hours"),
        ("cursor=garbage", "cursor"),
        ("status_max=99", "status_max"),
    ];
    for endpoint in ["", "/security", "/export/csv", "/export/json"] {
        for (query, param) in cases {
            let a = admin.get(&format!("/v1/audit/acme{endpoint}?{query}")).await;
            assert_eq!(a.status, 400, "{endpoint}?{query}: {}", a.text);
            assert_eq!(a.body["error"]["code"], "invalid_parameter");
            assert!(a.body["error"]["message"].as_str().unwrap().contains(&format!("`{param}`")), "{}", a.text);
        }
        let a = admin.get(&format!("/v1/audit/nope{endpoint}")).await;
        assert_eq!(a.status, 404, "{}", a.text);
        assert_eq!(a.body["error"]["code"], "not_found");
    }
    ts.stop().await;
}

#[tokio::test]
async fn security_events_have_the_stoa_shape() {
    let (mut ts, _, _) = with_traffic().await;
    let admin = ts.admin_client();
    let a = admin.get("/v1/audit/acme/security").await;
    let events = a.body["events"].as_array().unwrap();
    let types: Vec<&str> = events.iter().map(|e| e["event_type"].as_str().unwrap()).collect();
    assert_eq!(types, vec!["auth_failed", "key_created", "key_created"]);
    for e in events {
        for field in ["event_type", "type", "timestamp", "actor", "target", "outcome"] {
            assert!(e.get(field).is_some(), "{field} missing in {e}");
        }
        assert_eq!(e["type"], e["event_type"]);
    }
    // A failed call says where it was made: the method and path the event
    // keeps (and the CSV export shows), not only who made it.
    let failed = &events[0];
    assert_eq!((failed["method"].as_str(), failed["path"].as_str()), (Some("GET"), Some("/docs/a")), "{failed}");
    assert!(failed.get("country").is_some(), "{failed}");
    assert_eq!(admin.get("/v1/audit/acme/security?event_type=auth_failed&limit=1").await.body["events"].as_array().unwrap().len(), 1);
    // Each read is itself recorded (`log_accessed`), so count the others.
    let recent = admin.get("/v1/audit/acme/security?hours=1").await;
    let recent = recent.body["events"].as_array().unwrap();
    assert_eq!(recent.iter().filter(|e| e["event_type"] != "log_accessed").count(), 3);
    ts.stop().await;
}

#[tokio::test]
async fn exports_match_the_list_and_stream() {
    let (mut ts, alice, _) = with_traffic().await;
    let admin = ts.admin_client();

    let res = ts.client.get(format!("{}/v1/audit/acme/export/csv", ts.admin)).bearer_auth(&admin.token).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    assert!(res.headers().get("content-length").is_none(), "streamed, not buffered");
    let csv = res.text().await.unwrap();
    let lines: Vec<&str> = csv.trim_end().split("\r\n").collect();
    assert!(lines[0].starts_with("timestamp,event_id,seq,request_id,tenant_id,consumer_id"));
    assert_eq!(lines.len(), 10, "header + 9 rows:\n{csv}");

    let res = ts
        .client
        .get(format!("{}/v1/audit/acme/export/json?consumer_id={alice}&status_min=400", ts.admin))
        .bearer_auth(&admin.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["tenant_id"], "acme");
    let logs = doc["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 2);
    let listed = admin.get(&format!("/v1/audit/acme?consumer_id={alice}&status_min=400")).await;
    // Export rows are the list rows plus each event's chain hash.
    let mut exported = doc["logs"].clone();
    for row in exported.as_array_mut().unwrap() {
        let row = row.as_object_mut().unwrap();
        let hash = row.remove("hash").expect("exports carry the hash");
        assert!(row.remove("prev_hash").is_some_and(|h| h.is_string()));
        assert!(row.remove("event").is_some_and(|e| e["seq"] == row["seq"]), "exports carry the whole event");
        assert!(hash.as_str().is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())), "{hash}");
    }
    assert_eq!(&listed.body["logs"], &exported, "export rows are the list rows");
    ts.stop().await;
}

#[tokio::test]
async fn every_event_is_numbered_and_chained_per_tenant() {
    let (mut ts, _, _) = with_traffic().await;
    let reader = AuditReader::open(&ts.audit_dir()).unwrap();
    let chain = reader.chain("acme").unwrap();
    let of = |category: &str| chain.iter().filter(|e| e.event.category.map(|c| c.as_str()) == Some(category)).count();
    assert_eq!((of("request"), of("security")), (9, 1 + 2), "9 requests, 1 auth_failed, 2 key_created");
    // Each change made through the admin API (one api, two consumers, two
    // keys) is an intent and an outcome in the tenant's admin log.
    assert_eq!(of("admin"), 2 * 5);
    let total = chain.len() as u64;
    let salt = |e: &keytrail::event::Event| {
        reader.salt(keytrail::store::audit::day_of(e.timestamp_ms), "acme", e.salt_owner().unwrap_or("")).unwrap()
    };
    let mut previous = GENESIS_HASH;
    for (i, stored) in chain.iter().enumerate() {
        assert_eq!(stored.event.seq, i as u64 + 1);
        let hash = stored.event.chain_hash(&previous, salt(&stored.event).as_ref()).unwrap();
        assert_eq!(stored.hash, Some(hash), "event {} does not chain", stored.event.seq);
        previous = hash;
    }
    // The hashes the store keeps (one per block) agree with the events.
    let report = reader.verify("acme").unwrap();
    assert_eq!(report.first_break, None);
    assert_eq!((report.events, report.last_seq), (total, total));
    // Changing any field changes the event's hash, so the chain breaks there.
    let mut tampered = chain[3].event.clone();
    tampered.status_code = Some(201);
    assert_ne!(tampered.chain_hash(&chain[2].hash.unwrap(), salt(&tampered).as_ref()).unwrap(), chain[3].hash.unwrap());
    ts.stop().await;
}

#[tokio::test]
async fn events_are_committed_within_100_ms() {
    let mut ts = TestServer::start_with(tempfile::tempdir().unwrap(), |c| {
        c.audit.flush_interval = Duration::from_millis(50);
    })
    .await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    ts.flush().await;
    let reader = AuditReader::open(&ts.audit_dir()).unwrap();
    // Measure from the moment the response is complete to the moment the row is readable.
    let mut delays = Vec::new();
    for _ in 0..7 {
        let res = ts.client.get(format!("{}/docs/x", ts.gateway)).header("X-API-Key", &key).send().await.unwrap();
        res.bytes().await.unwrap();
        let done = Instant::now();
        let expected = reader.chain("acme").unwrap().len() + 1;
        loop {
            if reader.chain("acme").unwrap().len() >= expected {
                break;
            }
            assert!(done.elapsed() < Duration::from_secs(2), "event not committed after 2 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        delays.push(done.elapsed());
    }
    // The median, so that one scheduling hiccup on a loaded CI machine does
    // not fail the run; a writer that waits too long fails every sample.
    delays.sort();
    assert!(delays[3] <= Duration::from_millis(100), "commit delays {delays:?}");
    ts.stop().await;
}

/// An id in the path that is no UTF-8 text once decoded names nothing: the
/// same JSON 404 as an unknown id, for global and tenant-bound admins
/// alike. (Global admins got axum's plain-text 400 "Invalid URL".)
#[tokio::test]
async fn ids_that_decode_to_no_text_are_json_404s() {
    let (mut ts, _, _) = with_traffic().await;
    let admin = ts.admin_client();
    for path in [
        "/v1/audit/%FF",
        "/v1/audit/acme%C3/export/csv",
        "/v1/audit/%FF/export/json",
        "/v1/audit/%E9/security",
        "/v1/audit/acme/stats/consumers/%FF",
        "/v1/tenants/%FF/consumers",
    ] {
        let a = admin.get(path).await;
        assert_eq!(a.status, 404, "{path}: {}", a.text);
        assert_eq!(a.body["error"]["code"], "not_found", "{path}: {}", a.text);
    }
    ts.stop().await;
}

/// Clients that ask for an export and stop reading hold a few of the
/// runtime's blocking threads, never all of them: the other reads still
/// answer. (Each export held a blocking thread until its client read it
/// whole; a few hundred such clients of an auditor took all 512, and every
/// read, sign-in and automatic block queued behind them for ever. Here the
/// pool is made small so that twelve are enough.)
#[test]
fn clients_that_stop_reading_exports_do_not_stall_other_reads() {
    use tokio::io::AsyncWriteExt;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).max_blocking_threads(10).enable_all().build().unwrap();
    runtime.block_on(async {
        let mut ts = TestServer::start().await;
        let admin = ts.admin_client();
        assert_eq!(admin.post("/v1/tenants", serde_json::json!({"id": "acme", "name": "Acme"})).await.status, 201);
        // Some megabytes of export, more than the sockets buffer.
        for batch in 0..10 {
            let events: Vec<Value> = (0..1000)
                .map(|i| serde_json::json!({"action": "order.updated", "resource_type": "order", "resource_id": format!("{batch}-{i}")}))
                .collect();
            assert_eq!(admin.post("/v1/audit/acme/events", serde_json::json!({"events": events})).await.status, 201);
        }
        ts.flush().await;
        let address = ts.admin.trim_start_matches("http://").to_string();
        let request = format!("GET /v1/audit/acme/export/json?category=app HTTP/1.1\r\nHost: keytrail\r\nAuthorization: Bearer {}\r\n\r\n", admin.token);
        let mut stalled = Vec::new();
        for _ in 0..12 {
            let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            stalled.push(stream);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let page = tokio::time::timeout(Duration::from_secs(10), admin.get("/v1/audit/acme/events?limit=1")).await;
        assert_eq!(page.map(|a| a.status).ok(), Some(200), "a read waited behind the stalled exports");
        drop(stalled);
        ts.stop().await;
    });
}

/// Midnight 2026-11-19 UTC.
const MIDNIGHT: i64 = 1_795_046_400_000;

/// A server whose tenant `acme` has 20 calls written straight into its
/// trail around a midnight, many at the same millisecond, one of them slow
/// (committed after calls that came later), in four batches (blocks), with
/// signed checkpoints: (timestamp offset from midnight in ms, events)
/// -2: 6, -1: 1, 0: 4, +1: 9.
async fn trail_around_midnight() -> TestServer {
    use keytrail::event::{Category, Event};
    let dir = tempfile::tempdir().unwrap();
    {
        let signer = keytrail::signing::Signer::load_or_create(&dir.path().join("signing.key")).unwrap();
        let mut store = keytrail::store::audit::AuditWriterStore::open(&dir.path().join("audit")).unwrap();
        store.enable_checkpoints(signer, 4, 3_600_000).unwrap();
        let mut i = 0;
        for b in 0..4 {
            let mut batch = Vec::new();
            for k in 0..5 {
                let ts = match (b, k) {
                    (0, _) | (2, 0) => MIDNIGHT - 2,
                    (1, 0) => MIDNIGHT - 1,
                    (1, _) => MIDNIGHT,
                    _ => MIDNIGHT + 1,
                };
                let mut e = Event::new("acme", Category::Request, "api_call", "success");
                e.timestamp_ms = ts;
                e.consumer_id = Some(format!("cons_{}", i % 3).into());
                e.client_ip = Some("10.0.0.1".into());
                e.method = Some("GET".into());
                e.path = Some(format!("/docs/{i}"));
                e.status_code = Some(200 + (i % 3) as u16 * 100);
                batch.push(e);
                i += 1;
            }
            store.insert_batch(&mut batch).unwrap();
            store.checkpoint(false).unwrap();
        }
        store.checkpoint(true).unwrap();
    }
    let ts = TestServer::start_with(dir, |_| {}).await;
    let a = ts.admin_client().post("/v1/tenants", serde_json::json!({"id": "acme", "name": "Acme"})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    ts
}

/// Pages of every size follow (timestamp, seq) newest first across a
/// midnight, through events of the same millisecond and a slow one.
#[tokio::test]
async fn pages_cross_midnight_and_equal_timestamps_in_order() {
    let mut ts = trail_around_midnight().await;
    let admin = ts.admin_client();
    let key = |l: &Value| (l["timestamp"].as_str().unwrap().to_string(), l["seq"].as_u64().unwrap());
    let full: Vec<_> = admin.get("/v1/audit/acme?limit=1000").await.body["logs"].as_array().unwrap().iter().map(key).collect();
    assert_eq!(full.len(), 20);
    let mut sorted = full.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(full, sorted);
    for limit in [1, 2, 3, 4, 5, 6, 7, 19, 20] {
        let pages: Vec<_> = admin.all_logs(&format!("/v1/audit/acme?limit={limit}")).await.iter().map(key).collect();
        assert_eq!(pages, full, "limit {limit}");
        let filtered: Vec<_> = admin.all_logs(&format!("/v1/audit/acme?limit={limit}&status_min=300")).await.iter().map(key).collect();
        assert_eq!(filtered.len(), 13, "limit {limit}: {filtered:?}");
    }
    ts.stop().await;
}

/// `from` and `to` with a fraction of a millisecond: `from` takes the events
/// at or after it, so not those of the millisecond it starts inside; `to`
/// those at or before it. (`from` was cut down to its millisecond, so
/// `from=…59.9985Z` answered the events of …59.998 too.)
#[tokio::test]
async fn a_from_inside_a_millisecond_leaves_that_millisecond_out() {
    let mut ts = trail_around_midnight().await;
    let admin = ts.admin_client();
    let count = |query: &'static str| {
        let admin = admin.clone();
        async move {
            let mut n = 0;
            for endpoint in ["", "/export/json"] {
                let a = admin.get(&format!("/v1/audit/acme{endpoint}?limit=1000&{query}")).await;
                assert_eq!(a.status, 200, "{query}: {}", a.text);
                let found = a.body["logs"].as_array().unwrap().len();
                assert!(endpoint.is_empty() || found == n, "{endpoint}?{query}: {found} rows, the list has {n}");
                n = found;
            }
            n
        }
    };
    // Events at -2 ms: 6, -1 ms: 1, midnight: 4, +1 ms: 9.
    assert_eq!(count("from=2026-11-18T23:59:59.998Z").await, 20);
    assert_eq!(count("from=2026-11-18T23:59:59.9985Z").await, 14);
    assert_eq!(count("from=2026-11-18T23:59:59.998000001Z").await, 14);
    assert_eq!(count("to=2026-11-18T23:59:59.9985Z").await, 6);
    assert_eq!(count("from=2026-11-18T23:59:59.9985Z&to=2026-11-18T23:59:59.9989Z").await, 0);
    assert_eq!(count("from=2026-11-18T23:59:59.9985Z&to=2026-11-19T00:00:00.0001Z").await, 5);
    ts.stop().await;
}

/// A verification through the API is recorded like every read of the
/// trail, with the filter it was given (`from`; it was recorded as none)
/// and the events it read.
#[tokio::test]
async fn a_verification_is_recorded_with_its_from() {
    let mut ts = trail_around_midnight().await;
    let admin = ts.admin_client();
    let a = admin.get("/v1/audit/acme/verify?from=2026-11-19").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(a.body["ok"] == true && a.body["from_seq"] == 7, "{}", a.text);
    ts.flush().await;
    let security = admin.get("/v1/audit/acme/security?event_type=log_accessed&limit=100").await;
    let verified = security.body["events"].as_array().unwrap().iter().find(|e| e["target"] == "verify").cloned().expect("the verification is recorded");
    assert_eq!(verified["details"]["filters"], serde_json::json!({"from": "2026-11-19"}), "{verified}");
    assert_eq!(verified["details"]["rows"], a.body["events"], "{verified}");
    ts.stop().await;
}

/// A read's `log_accessed` event keeps the filters it was given, but not
/// whatever else a query string holds: a value is kept to 256 characters
/// and 32 parameters at most (the rest counted). A 60 KB parameter nobody
/// reads was written into the trail whole by every read that sent it.
#[tokio::test]
async fn a_reads_record_keeps_its_filters_not_a_query_strings_bulk() {
    let mut ts = trail_around_midnight().await;
    let admin = ts.admin_client();
    let junk = "j".repeat(60_000);
    let many: String = (0..40).map(|i| format!("&p{i}=v")).collect();
    let a = admin.get(&format!("/v1/audit/acme?limit=3&junk={junk}&consumer_id=cons_1{many}")).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["logs"].as_array().unwrap().len(), 3);
    ts.flush().await;
    let security = admin.get("/v1/audit/acme/security?event_type=log_accessed&limit=100").await;
    let read = security.body["events"].as_array().unwrap().iter().find(|e| e["target"] == "logs").cloned().expect("the read is recorded");
    let filters = &read["details"]["filters"];
    assert_eq!(filters["limit"], "3", "{filters}");
    assert_eq!(filters["consumer_id"], "cons_1", "{filters}");
    let kept = filters["junk"].as_str().unwrap();
    assert!(kept.starts_with("jjjj") && kept.chars().count() <= 257, "{} characters kept", kept.len());
    assert_eq!(filters.as_object().unwrap().len(), 32 + 1, "{filters}");
    assert_eq!(filters["_omitted"], 11, "{filters}");
    assert_eq!(read["details"]["rows"], 3);
    assert!(read.to_string().len() < 4096, "a record of {} bytes", read.to_string().len());
    // The filters a read uses are kept however many parameters come first.
    let a = admin.get(&format!("/v1/audit/acme/security?limit=2{many}&event_type=key_created")).await;
    assert_eq!(a.status, 200);
    ts.flush().await;
    let security = admin.get("/v1/audit/acme/security?event_type=log_accessed&limit=100").await;
    let read = security.body["events"].as_array().unwrap().iter().find(|e| e["target"] == "security").cloned().expect("the read is recorded");
    let filters = &read["details"]["filters"];
    assert!(filters["limit"] == "2" && filters["event_type"] == "key_created" && filters["_omitted"] == 10, "{filters}");
    ts.stop().await;
}

/// `GET /v1/audit/{tenant}/verify` walks the whole chain: a few run at once,
/// and a call beyond them is refused at once with 503 and `Retry-After`
/// (not queued behind them), so many concurrent calls cannot pin the CPU
/// and the store. Once they end, a verification runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_verifications_beyond_the_cap_are_refused_with_retry_after() {
    let mut ts = TestServer::start().await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", serde_json::json!({"id": "acme", "name": "Acme"})).await.status, 201);
    // A chain long enough that a verification takes a while.
    for batch in 0..20 {
        let events: Vec<Value> = (0..1000)
            .map(|i| serde_json::json!({"action": "order.updated", "resource_type": "order", "resource_id": format!("{batch}-{i}"), "metadata": {"note": "x".repeat(200)}}))
            .collect();
        assert_eq!(admin.post("/v1/audit/acme/events", serde_json::json!({"events": events})).await.status, 201);
    }
    ts.flush().await;
    // Each call on a connection of its own, all at once.
    let calls: Vec<_> = (0..24)
        .map(|_| {
            let admin = crate::util::Admin { client: crate::util::http(), ..admin.clone() };
            tokio::spawn(async move { admin.get("/v1/audit/acme/verify").await })
        })
        .collect();
    let (mut verified, mut refused) = (0, 0);
    for call in calls {
        let a = call.await.unwrap();
        match a.status {
            200 => {
                assert_eq!(a.body["ok"], true, "{}", a.text);
                verified += 1;
            }
            503 => {
                assert_eq!(a.body["error"]["code"], "service_unavailable", "{}", a.text);
                assert!(a.body["error"]["message"].as_str().unwrap().contains("Retry-After"), "{}", a.text);
                let wait: u64 = a.headers.get("retry-after").expect("a Retry-After header").parse().expect("seconds");
                assert!((1..=60).contains(&wait), "Retry-After: {wait}");
                refused += 1;
            }
            other => panic!("verify answered {other}: {}", a.text),
        }
    }
    assert!(verified >= 1 && refused >= 1, "{verified} verified, {refused} refused");
    // The cap is released when they end.
    let a = admin.get("/v1/audit/acme/verify").await;
    assert_eq!((a.status, a.body["ok"].clone()), (200, serde_json::json!(true)), "{}", a.text);
    ts.stop().await;
}

/// `GET /v1/audit/{tenant}/verify` reads the day files and archives that
/// retention, an erasure or a restore rewrite: like `keytrail verify` it
/// holds the audit directory's maintenance lock shared, waiting a while
/// for its holder, so a verification never reads a file halfway through
/// being changed. Past the wait it is refused with 503 and `Retry-After`,
/// naming the holder; a holder that lets go within the wait is waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_waits_for_maintenance_of_the_audit_directory() {
    use keytrail::store::audit::erasure;
    let mut ts = TestServer::start().await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", serde_json::json!({"id": "acme", "name": "Acme"})).await.status, 201);
    ts.flush().await;
    let audit = ts.audit_dir();

    // Held throughout: refused after the wait, nothing checked.
    let held = erasure::maintenance_lock(&audit, "an erasure in tenant `acme` (a test)").unwrap();
    let started = Instant::now();
    let a = admin.get("/v1/audit/acme/verify").await;
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (503, Some("service_unavailable")), "{}", a.text);
    let message = a.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("an erasure in tenant `acme` (a test)") && message.contains("Retry-After"), "{message}");
    assert!(!message.contains(audit.to_str().unwrap()), "the server's paths stay out of answers: {message}");
    let wait: u64 = a.headers.get("retry-after").expect("a Retry-After header").parse().expect("seconds");
    assert!((1..=60).contains(&wait), "Retry-After: {wait}");
    assert!(started.elapsed() >= Duration::from_secs(1), "answered without waiting: {:?}", started.elapsed());

    // Let go during the wait: the verification waits for it, then runs.
    let call = {
        let admin = admin.clone();
        tokio::spawn(async move { admin.get("/v1/audit/acme/verify").await })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!call.is_finished(), "the verification ran while the directory was held");
    drop(held);
    let a = call.await.unwrap();
    assert_eq!((a.status, a.body["ok"].clone()), (200, serde_json::json!(true)), "{}", a.text);
    ts.stop().await;
}

/// Splits an RFC 4180 CSV document into rows of fields.
fn csv_rows(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut field) = (Vec::new(), Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => row.push(std::mem::take(&mut field)),
            '\r' if !quoted && chars.peek() == Some(&'\n') => {
                chars.next();
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            c => field.push(c),
        }
    }
    rows
}

/// A CSV export of security, admin or application events says who did what
/// to what: its rows carry the category, the event type (the action), the
/// actor, the target and the details, in columns appended after the
/// request columns (whose order scripts rely on). They had none of these:
/// a security export in CSV was rows of timestamps and outcomes.
#[tokio::test]
async fn csv_exports_of_every_category_say_who_did_what() {
    let mut ts = TestServer::start().await;
    let admin = ts.admin_client();
    let (consumer, key_id, _) = admin.setup("acme", "/docs", "http://127.0.0.1:9").await;
    let app = serde_json::json!({"events": [{"action": "order.refunded", "resource_type": "order", "resource_id": "o-17", "actor_id": "user-9", "metadata": {"amount": 12}}]});
    assert_eq!(admin.post("/v1/audit/acme/events", app).await.status, 201);
    ts.flush().await;
    let export = |category: &'static str| {
        let admin = admin.clone();
        async move {
            let res = admin.client.get(format!("{}/v1/audit/acme/export/csv?category={category}", admin.base)).bearer_auth(&admin.token).send().await.unwrap();
            assert_eq!(res.status(), 200);
            let rows = csv_rows(&res.text().await.unwrap());
            let header = rows[0].clone();
            assert!(rows.iter().all(|r| r.len() == header.len()), "every row has every column: {rows:?}");
            let rows: Vec<std::collections::HashMap<String, String>> =
                rows[1..].iter().map(|r| header.iter().cloned().zip(r.iter().cloned()).collect()).collect();
            (header, rows)
        }
    };
    let (header, security) = export("security").await;
    // The request columns first, in their old order; the new ones after them.
    let request_columns = "timestamp,event_id,seq,request_id,tenant_id,consumer_id,consumer_name,api_id,key_id,key_hint,method,path,status_code,latency_ms,upstream_latency_ms,request_size_bytes,response_size_bytes,client_ip,user_agent,outcome,error_code,block_reason,rule_id,fingerprint,threat_score";
    assert_eq!(header[..25].join(","), request_columns);
    assert_eq!(header[25..].join(","), "category,event_type,actor,target,details");
    let created = security.iter().find(|r| r["event_type"] == "key_created").unwrap_or_else(|| panic!("{security:?}"));
    assert_eq!(created["category"], "security");
    assert_eq!(created["actor"], "admin:adm_bootstrap", "{created:?}");
    assert_eq!(created["target"], format!("key:{key_id}"), "{created:?}");
    let (_, changes) = export("admin").await;
    let consumer_created = changes
        .iter()
        .find(|r| r["target"].contains(&consumer) && r["details"].contains("credential"))
        .unwrap_or_else(|| panic!("the consumer's creation: {changes:?}"));
    assert_eq!(consumer_created["category"], "admin");
    assert!(!consumer_created["event_type"].is_empty() && consumer_created["actor"] == "admin:adm_bootstrap", "{consumer_created:?}");
    let (_, app) = export("app").await;
    assert_eq!(app.len(), 1, "{app:?}");
    assert_eq!((app[0]["event_type"].as_str(), app[0]["actor"].as_str(), app[0]["target"].as_str()), ("order.refunded", "user-9", "order/o-17"));
    let details: Value = serde_json::from_str(&app[0]["details"]).expect("the details as JSON");
    assert_eq!(details["metadata"]["amount"], 12, "{details}");
    // Request rows carry their type too.
    let (_, all) = export("all").await;
    assert!(all.iter().any(|r| r["category"] == "app") && all.iter().any(|r| r["category"] == "security"), "{all:?}");
    ts.stop().await;
}

/// A filter given twice (`?consumer_id=a&consumer_id=b`) is refused with
/// 400 `invalid_parameter` naming it, on every audit read. The lists took
/// the last value, the exports' `category` and the application events'
/// filters the first, so one query meant different things on different
/// endpoints; a repeated parameter no endpoint reads is still ignored.
#[tokio::test]
async fn a_filter_given_twice_is_refused_on_every_audit_read() {
    let (mut ts, alice, bob) = with_traffic().await;
    let admin = ts.admin_client();
    let twice = format!("consumer_id={alice}&consumer_id={bob}");
    let cases = [
        ("", twice.as_str(), "consumer_id"),
        ("/security", "event_type=key_created&event_type=auth_failed", "event_type"),
        ("/events", "action=a&action=b", "action"),
        ("/events", "resource_type=order&resource_type=user", "resource_type"),
        ("/admin", "admin_id=adm_bootstrap&admin_id=adm_x", "admin_id"),
        ("/admin", "limit=5&limit=6", "limit"),
        ("/export/csv", "category=security&category=admin", "category"),
        ("/export/json", twice.as_str(), "consumer_id"),
        ("/stats", twice.as_str(), "consumer_id"),
        ("/stats", "group_by=path&group_by=consumer", "group_by"),
        ("/stats", "top=1&top=2", "top"),
        (&format!("/stats/consumers/{alice}"), "days=1&days=2", "days"),
        ("/stats/timeline", "hours=1&hours=2", "hours"),
        ("/verify", "from=2026-01-01&from=2026-01-02", "from"),
    ];
    for (endpoint, query, param) in cases {
        let a = admin.get(&format!("/v1/audit/acme{endpoint}?{query}")).await;
        assert_eq!(a.status, 400, "{endpoint}?{query}: {}", a.text);
        assert_eq!(a.body["error"]["code"], "invalid_parameter", "{endpoint}?{query}: {}", a.text);
        let message = a.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("`{param}`")) && message.contains("more than once"), "{endpoint}?{query}: {}", a.text);
    }
    // Given once each, and a repeated parameter nobody reads, is fine (the
    // stats endpoints take no `limit`: it is refused there).
    for endpoint in ["", "/security", "/events", "/admin", "/export/csv", "/export/json", "/stats", "/stats/timeline"] {
        let limit = if endpoint.starts_with("/stats") { "" } else { "&limit=5" };
        let a = admin.get(&format!("/v1/audit/acme{endpoint}?hours=2{limit}&junk=1&junk=2")).await;
        assert_eq!(a.status, 200, "{endpoint}: {}", a.text);
    }
    ts.stop().await;
}


/// `HEAD` on an export (or a verification) answers the headers a `GET`
/// would (after the same checks of the tenant and the parameters) without
/// running it: it read the trail, held one of the eight export turns (a
/// verification one of two, for a whole walk of the chain), and recorded a
/// `log_accessed` claiming rows went out, only for the body to be thrown
/// away.
#[tokio::test]
async fn head_on_an_export_answers_its_headers_without_running_it() {
    let (mut ts, _, _) = with_traffic().await;
    let admin = ts.admin_client();
    let accesses = || async {
        let a = admin.get("/v1/audit/acme/security?event_type=log_accessed&limit=1000").await;
        a.body["events"].as_array().unwrap().iter().filter(|e| e["target"].as_str().is_some_and(|t| t.starts_with("export/") || t == "verify")).count()
    };
    for (format, content_type) in [("csv", "text/csv"), ("json", "application/json")] {
        let res = ts.client.head(format!("{}/v1/audit/acme/export/{format}", ts.admin)).bearer_auth(&admin.token).send().await.unwrap();
        assert_eq!(res.status(), 200, "{format}");
        assert!(res.headers()["content-type"].to_str().unwrap().starts_with(content_type), "{format}: {:?}", res.headers());
        let disposition = res.headers()["content-disposition"].to_str().unwrap();
        assert!(disposition.contains(&format!("keytrail-acme-audit.{format}")), "{disposition}");
        // The checks a GET gets still apply.
        let res = ts.client.head(format!("{}/v1/audit/acme/export/{format}?category=nope", ts.admin)).bearer_auth(&admin.token).send().await.unwrap();
        assert_eq!(res.status(), 400, "{format}");
        let res = ts.client.head(format!("{}/v1/audit/nope/export/{format}", ts.admin)).bearer_auth(&admin.token).send().await.unwrap();
        assert_eq!(res.status(), 404, "{format}");
    }
    // Nor does a verification's: its verdict is the body.
    let res = ts.client.head(format!("{}/v1/audit/acme/verify", ts.admin)).bearer_auth(&admin.token).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let res = ts.client.head(format!("{}/v1/audit/acme/verify?from=soon", ts.admin)).bearer_auth(&admin.token).send().await.unwrap();
    assert_eq!(res.status(), 400);
    ts.flush().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    ts.flush().await;
    assert_eq!(accesses().await, 0, "no export or verification ran, so none is recorded as read");
    // A GET still runs and is recorded.
    let res = ts.client.get(format!("{}/v1/audit/acme/export/csv", ts.admin)).bearer_auth(&admin.token).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().lines().count() > 1);
    ts.flush().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    ts.flush().await;
    assert_eq!(accesses().await, 1);
    ts.stop().await;
}

/// A cell a spreadsheet reads as a formula gets a leading `'`, whatever
/// follows the `-` or `+`: only a plain decimal number is kept as it is.
/// Rust's float parser also takes `-inf`, `+NaN`, `-infinity` and such
/// for numbers, so a caller's user agent `-inf` reached the sheet as a
/// formula (`#NAME?` in the cell, not the text).
#[tokio::test]
async fn csv_cells_that_look_like_numbers_only_to_rust_are_defused() {
    let mut ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    let agents = ["-inf", "+NaN", "-Infinity", "-nan", "+inf", "-12.5", "+7", "-1e5", "=1+2"];
    for agent in agents {
        let res = ts.client.get(format!("{}/docs/a", ts.gateway)).header("x-api-key", &key).header("user-agent", agent).send().await.unwrap();
        assert_eq!(res.status(), 200);
    }
    ts.flush().await;
    let res = ts.client.get(format!("{}/v1/audit/acme/export/csv", ts.admin)).bearer_auth(&admin.token).send().await.unwrap();
    let rows = csv_rows(&res.text().await.unwrap());
    let at = rows[0].iter().position(|c| c == "user_agent").unwrap();
    let mut cells: Vec<String> = rows[1..].iter().map(|r| r[at].clone()).collect();
    cells.reverse();
    assert_eq!(cells, ["'-inf", "'+NaN", "'-Infinity", "'-nan", "'+inf", "-12.5", "+7", "-1e5", "'=1+2"]);
    ts.stop().await;
}

/// `HEAD` on the JSON reads of the trail (lists, the admin log,
/// application events, statistics) is answered as `GET` is, status and
/// headers, but records no `log_accessed`: no row went out. Each recorded
/// one, with the rows of a body nobody received, so a monitor checking the
/// endpoints with `HEAD` filled the trail with reads that never happened.
#[tokio::test]
async fn head_on_a_json_read_is_not_recorded_as_a_read() {
    let (mut ts, alice, _) = with_traffic().await;
    let admin = ts.admin_client();
    let reads = ["", "/security", "/events", "/admin", "/stats", "/stats/timeline", &format!("/stats/consumers/{alice}")];
    for read in reads {
        let res = ts.client.head(format!("{}/v1/audit/acme{read}", ts.admin)).bearer_auth(&admin.token).send().await.unwrap();
        assert_eq!(res.status(), 200, "{read}");
        assert!(res.headers()["content-type"].to_str().unwrap().starts_with("application/json"), "{read}");
        // Checked as a GET is.
        let res = ts.client.head(format!("{}/v1/audit/acme{read}?hours=0", ts.admin)).bearer_auth(&admin.token).send().await.unwrap();
        assert_eq!(res.status(), 400, "{read}");
    }
    let res = ts.client.head(format!("{}/v1/audit/acme/stats/consumers/cons_nobody", ts.admin)).bearer_auth(&admin.token).send().await.unwrap();
    assert_eq!(res.status(), 404);
    ts.flush().await;
    let accesses = || async {
        ts.flush().await;
        let a = admin.get("/v1/audit/acme/security?event_type=log_accessed&limit=1000").await;
        let mut targets: Vec<String> = a.body["events"].as_array().unwrap().iter().map(|e| e["target"].as_str().unwrap().to_string()).collect();
        targets.sort();
        targets
    };
    assert_eq!(accesses().await, Vec::<String>::new(), "no HEAD is recorded as a read");
    assert_eq!(admin.get("/v1/audit/acme/stats").await.status, 200);
    assert_eq!(accesses().await, ["security", "stats"], "a GET is");
    ts.stop().await;
}

/// A read's `log_accessed` keeps the parameters it was given, those no
/// read takes too, but the value of one named like a secret (`password`,
/// `access_token`, `client_secret`, `api_key`, as the admin log masks
/// such fields in a change's body) is kept as `****`: a script that
/// authenticates with `?access_token=…` had its token written in full
/// into the trail, for every auditor to read.
#[tokio::test]
async fn a_reads_record_masks_parameters_named_like_secrets() {
    let (mut ts, alice, _) = with_traffic().await;
    let admin = ts.admin_client();
    let secrets = ["s3cr3t-0f-the-sso-jwt", "hunter2hunter2", "cl1ent-s3cret-v4lue", "p4rtner-k3y-v4lue"];
    let query = format!(
        "consumer_id={alice}&access_token={}&password={}&client_secret={}&apiKey={}&note=kept",
        secrets[0], secrets[1], secrets[2], secrets[3]
    );
    for read in ["", "/stats"] {
        let a = admin.get(&format!("/v1/audit/acme{read}?{query}")).await;
        assert_eq!(a.status, 200, "{read}: {}", a.text);
    }
    ts.flush().await;
    let security = admin.get("/v1/audit/acme/security?event_type=log_accessed&limit=100").await;
    for secret in secrets {
        assert!(!security.text.contains(secret), "{secret} is in the trail: {}", security.text);
    }
    for target in ["logs", "stats"] {
        let read = security.body["events"].as_array().unwrap().iter().find(|e| e["target"] == target).cloned().expect("the read is recorded");
        let filters = &read["details"]["filters"];
        for name in ["access_token", "password", "client_secret", "apiKey"] {
            assert_eq!(filters[name], "****", "{target}: {filters}");
        }
        assert_eq!((filters["consumer_id"].as_str(), filters["note"].as_str()), (Some(alice.as_str()), Some("kept")), "{target}: {filters}");
    }
    ts.stop().await;
}
