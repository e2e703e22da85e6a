//! The admin activity log: each change written before it runs and
//! finalised with its outcome; `unknown` when the process died in between;
//! the dashboard-activities switch; reads of the log recorded as
//! `log_accessed`.

use serde_json::{json, Value};

use keytrail::store::audit::AuditReader;

use crate::util::{spawn_serve, start_upstream, TestServer};

fn entries(answer: &crate::util::Answer) -> Vec<Value> {
    answer.body["entries"].as_array().cloned().unwrap_or_else(|| panic!("no entries: {}", answer.text))
}

fn find<'a>(entries: &'a [Value], action: &str) -> &'a Value {
    entries.iter().find(|e| e["action"] == action).unwrap_or_else(|| panic!("no {action} in {entries:?}"))
}

#[tokio::test]
async fn every_change_is_written_before_it_runs_and_finalised_after() {
    let ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (consumer, key_id, _) = admin.setup("acme", "/docs", &format!("http://{up}")).await;

    let revoke = admin.post(&format!("/v1/keys/{key_id}/revoke"), json!({})).await;
    assert_eq!(revoke.status, 200);
    let revoke_request = revoke.headers["x-request-id"].clone();
    let suspend = admin.post(&format!("/v1/tenants/acme/consumers/{consumer}/suspend"), json!({})).await;
    assert_eq!(suspend.status, 200);
    let sample = admin.call("PUT", "/v1/tenants/acme/settings/logging", Some(json!({"api_call_sample_rate": 0.5}))).await;
    assert_eq!(sample.status, 200, "{}", sample.text);
    // A change that fails is logged with its error.
    let duplicate = admin.post("/v1/tenants/acme/consumers", json!({"name": "acme-client", "metadata": {"team": "x"}})).await;
    assert_eq!(duplicate.status, 409);
    let bad = admin.post("/v1/tenants/acme/consumers", json!({"name": 5})).await;
    assert_eq!(bad.status, 400);
    ts.flush().await;

    let log = admin.get("/v1/audit/acme/admin?limit=100").await;
    assert_eq!(log.status, 200, "{}", log.text);
    let all = entries(&log);
    let revoked = find(&all, "KEY_REVOKED");
    assert_eq!(revoked["outcome"], "success");
    assert_eq!(revoked["resource"], format!("key:{key_id}"));
    assert_eq!(revoked["admin"], "admin:adm_bootstrap");
    // The test token has no `kta_` shape: its hint shows only the last four characters.
    assert_eq!(revoked["credential"], "token:****cdef");
    assert_eq!(revoked["client_ip"], "127.0.0.1");
    assert_eq!(revoked["request_id"], revoke_request.as_str());
    let suspended = find(&all, "CONSUMER_SUSPENDED");
    assert_eq!(suspended["resource"], format!("consumer:{consumer}"));
    // Changes carry the fields before and after.
    assert_eq!(suspended["details"]["changes"]["status"], json!({"before": "active", "after": "suspended"}), "{suspended}");
    assert_eq!(revoked["details"]["changes"]["status"], json!({"before": "active", "after": "revoked"}), "{revoked}");
    let settings = find(&all, "SETTINGS_CHANGED");
    assert_eq!(settings["details"]["changes"]["api_call_sample_rate"], json!({"before": 1.0, "after": 0.5}), "{settings}");
    assert_eq!(settings["details"]["changes"].as_object().unwrap().len(), 1, "only what changed: {settings}");
    let failures: Vec<&Value> = all.iter().filter(|e| e["action"] == "CONSUMER_CREATED" && e["outcome"] == "failure").collect();
    assert_eq!(failures.len(), 2, "{all:?}");
    assert_eq!(failures[1]["error"]["code"], "conflict");
    // What was asked, but for the consumer's personal fields (erasable only elsewhere).
    assert_eq!(failures[1]["details"]["request"], json!({"name": "[personal]", "metadata": "[personal]"}), "the intent holds what was asked");
    assert_eq!(failures[0]["error"]["code"], "invalid_body");
    assert!(all.iter().all(|e| e["outcome"] != "pending" && e["outcome"] != "unknown"), "{all:?}");

    // In the chain, the intent comes before the change's own security
    // event, and the outcome after it.
    let chain = AuditReader::open(&ts.audit_dir()).unwrap().chain("acme").unwrap();
    let seq_of = |pred: &dyn Fn(&keytrail::event::Event) -> bool| chain.iter().find(|s| pred(&s.event)).map(|s| s.event.seq).unwrap();
    let same_call = |e: &keytrail::event::Event| e.request_id.as_deref() == Some(revoke_request.as_str());
    let intent = seq_of(&|e| same_call(e) && e.event_type == "KEY_REVOKED" && e.outcome == "pending");
    let security = seq_of(&|e| same_call(e) && e.event_type == "key_revoked");
    let outcome = seq_of(&|e| same_call(e) && e.event_type == "KEY_REVOKED" && e.outcome == "success");
    assert!(intent < security && security < outcome, "{intent} < {security} < {outcome}");

    // Filters and paging.
    let only = entries(&admin.get("/v1/audit/acme/admin?action=KEY_REVOKED").await);
    assert_eq!(only.len(), 1);
    let by_admin = entries(&admin.get("/v1/audit/acme/admin?admin_id=adm_bootstrap&limit=100").await);
    assert_eq!(by_admin.len(), all.len());
    let first = admin.get("/v1/audit/acme/admin?limit=2").await;
    let cursor = first.body["next_cursor"].as_str().unwrap().to_string();
    let second = admin.get(&format!("/v1/audit/acme/admin?limit=100&cursor={cursor}")).await;
    let paged: Vec<Value> = entries(&first).into_iter().chain(entries(&second)).collect();
    assert_eq!(paged, all, "pages join into the whole log, outcomes resolved on every page");
    assert_eq!(admin.get("/v1/audit/acme/admin?limit=0").await.status, 400);

    // Global changes are in the system tenant's log.
    let system = entries(&admin.get("/v1/audit/_system/admin").await);
    assert_eq!(find(&system, "TENANT_CREATED")["outcome"], "success");

    // Reading the log is itself recorded, with the filters and the row count.
    ts.flush().await;
    let security = admin.get("/v1/audit/acme/security?event_type=log_accessed&limit=100").await;
    let accessed = security.body["events"].as_array().unwrap();
    let with_filter = accessed.iter().find(|e| e["details"]["filters"]["action"] == "KEY_REVOKED").expect("the filtered read");
    assert_eq!(with_filter["details"]["rows"], 1);
    assert_eq!(with_filter["target"], "admin");
    assert_eq!(with_filter["actor"], "admin:adm_bootstrap");
}

/// A change the door refuses — the caller's role lacks the permission, a
/// tenant-bound admin calls a global endpoint or names another tenant's
/// object — is still an attempted change: one entry, outcome `failure`
/// with the answer's error, in the log a reader of the caller's changes
/// looks at (a tenant-bound admin's own tenant's), and nothing in the
/// other tenant's.
#[tokio::test]
async fn a_change_refused_for_the_callers_role_or_tenant_is_logged_as_a_failure() {
    let ts = TestServer::start().await;
    let up = start_upstream().await;
    let owner = ts.admin_client();
    let (consumer, key_id, _) = owner.setup("acme", "/docs", &format!("http://{up}")).await;
    let (other_consumer, _, _) = owner.setup("other", "/other", &format!("http://{up}")).await;
    let admin_as = |role: &'static str, tenant: Option<&'static str>| {
        let owner = owner.clone();
        async move {
            let a = owner.post("/v1/admins", json!({"name": format!("{role}-{}", tenant.unwrap_or("g")), "role": role, "tenant_id": tenant})).await;
            assert_eq!(a.status, 201, "{}", a.text);
            let id = a.body["id"].as_str().unwrap().to_string();
            (crate::util::Admin { token: a.body["token"].as_str().unwrap().to_string(), ..owner }, id)
        }
    };
    let (viewer, viewer_id) = admin_as("viewer", None).await;
    let (bound, bound_id) = admin_as("admin", Some("acme")).await;

    let refused = viewer.post(&format!("/v1/keys/{key_id}/revoke"), json!({})).await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    let global = bound.post("/v1/tenants", json!({"id": "mine", "name": "Mine"})).await;
    assert_eq!(global.status, 403, "{}", global.text);
    let elsewhere = bound.post(&format!("/v1/tenants/other/consumers/{other_consumer}/suspend"), json!({})).await;
    assert_eq!(elsewhere.status, 404, "{}", elsewhere.text);
    ts.flush().await;

    let acme = entries(&owner.get("/v1/audit/acme/admin?limit=100").await);
    let revoke = find(&acme, "KEY_REVOKED");
    assert_eq!(revoke["admin"], format!("admin:{viewer_id}"), "{revoke}");
    assert_eq!(revoke["outcome"], "failure", "{revoke}");
    assert_eq!(revoke["error"]["code"], "forbidden", "{revoke}");
    assert_eq!(revoke["resource"], format!("key:{key_id}"));
    assert_eq!(revoke["request_id"], refused.headers["x-request-id"].as_str());
    let created = find(&acme, "TENANT_CREATED");
    assert_eq!((&created["admin"], &created["outcome"]), (&json!(format!("admin:{bound_id}")), &json!("failure")), "{created}");
    assert_eq!(created["error"]["code"], "forbidden", "{created}");
    let suspended = find(&acme, "CONSUMER_SUSPENDED");
    assert_eq!((&suspended["admin"], &suspended["outcome"]), (&json!(format!("admin:{bound_id}")), &json!("failure")), "{suspended}");
    assert_eq!(suspended["error"]["code"], "not_found", "{suspended}");
    // The other tenant's log holds nothing of the attempt.
    let other = entries(&owner.get("/v1/audit/other/admin?limit=100").await);
    assert!(other.iter().all(|e| e["admin"] == "admin:adm_bootstrap"), "{other:?}");
    // And the key still works: the refusal changed nothing.
    let keys = owner.get(&format!("/v1/tenants/acme/consumers/{consumer}/keys")).await;
    assert!(keys.body["keys"].as_array().unwrap().iter().all(|k| k["status"] == "active"), "{}", keys.text);
}

#[tokio::test]
async fn the_dashboard_activities_switch_turns_the_admin_log_off() {
    let ts = TestServer::start().await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "quiet", "name": "Quiet"})).await.status, 201);
    let off = admin.call("PUT", "/v1/tenants/quiet/settings/logging", Some(json!({"log_dashboard_activities": false}))).await;
    assert_eq!(off.status, 200, "{}", off.text);
    let a = admin.post("/v1/tenants/quiet/consumers", json!({"name": "c"})).await;
    assert_eq!(a.status, 201);
    let consumer = a.body["id"].as_str().unwrap();
    assert_eq!(admin.post(&format!("/v1/tenants/quiet/consumers/{consumer}/suspend"), json!({})).await.status, 200);
    ts.flush().await;
    let log = entries(&admin.get("/v1/audit/quiet/admin?limit=100").await);
    let actions: Vec<&str> = log.iter().map(|e| e["action"].as_str().unwrap()).collect();
    // The switch change itself is the last thing logged.
    assert_eq!(actions, ["SETTINGS_CHANGED"], "{log:?}");
    // Security events are not affected by the switch.
    let security = admin.get("/v1/audit/quiet/security?event_type=consumer_suspended").await;
    assert_eq!(security.body["events"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_crash_between_the_intent_and_the_change_leaves_an_unknown_outcome() {
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let (mut process, admin, _) = spawn_serve(data.path(), out.path(), &[("KEYTRAIL_FAILPOINT", "after_admin_intent:KEY_REVOKED")]);
    let (_, key_id, _) = admin.setup("acme", "/docs", "http://127.0.0.1:9").await;
    // The process dies after committing the intent, before revoking.
    let sent = admin.client.post(format!("{}/v1/keys/{key_id}/revoke", admin.base)).bearer_auth(&admin.token).send().await;
    assert!(sent.is_err(), "the process should have died: {sent:?}");
    let status = process.child.wait().unwrap();
    assert!(!status.success());
    assert!(process.stderr().contains("failpoint after_admin_intent reached"), "{}", process.stderr());

    let (_restarted, admin, _) = spawn_serve(data.path(), out.path(), &[]);
    let log = entries(&admin.get("/v1/audit/acme/admin?action=KEY_REVOKED").await);
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0]["outcome"], "unknown");
    assert_eq!(log[0]["resource"], format!("key:{key_id}"));
    // The change did not happen.
    let consumers = admin.get("/v1/tenants/acme/consumers").await;
    let consumer = consumers.body["consumers"][0]["id"].as_str().unwrap().to_string();
    let keys = admin.get(&format!("/v1/tenants/acme/consumers/{consumer}/keys")).await;
    assert_eq!(keys.body["keys"][0]["status"], "active", "{}", keys.text);
    // The chain still verifies after the crash.
    let report = AuditReader::open(&data.path().join("audit")).unwrap().verify("acme").unwrap();
    assert_eq!(report.first_break, None);
}

/// A change with a large body (here 1 MB, refused by the handler) is an
/// intent of that size in the trail; it reads back like any other event.
/// (The readers took a one-event block over 512 KiB for a damaged one: the
/// admin log answered 500, verification reported the chain broken there and
/// exports were cut short.)
#[tokio::test]
async fn a_change_with_a_large_body_stays_readable_and_verifiable() {
    let ts = TestServer::start().await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    let big = admin.post("/v1/tenants/acme/tiers", json!({"id": "gold", "daily_quota": 5, "note": "x".repeat(1_000_000)})).await;
    assert_eq!(big.status, 400, "{}", big.text);
    assert_eq!(admin.post("/v1/tenants/acme/tiers", json!({"id": "silver", "daily_quota": 5})).await.status, 201);
    ts.flush().await;

    let log = admin.get("/v1/audit/acme/admin?limit=100").await;
    assert_eq!(log.status, 200, "{}", &log.text[..log.text.len().min(300)]);
    let all = entries(&log);
    let refused = all.iter().find(|e| e["outcome"] == "failure").expect("the refused change");
    assert_eq!(refused["details"]["request"]["note"].as_str().map(str::len), Some(1_000_000));
    let verified = admin.get("/v1/audit/acme/verify").await;
    assert_eq!(verified.body["ok"], true, "{}", verified.text);
    let export = ts.client.get(format!("{}/v1/audit/acme/export/json?category=all", ts.admin)).bearer_auth(&admin.token).send().await.unwrap();
    let doc: Value = export.json().await.expect("a whole export");
    let key = keytrail::signing::Signer::load_or_create(&ts.data_dir.join("signing.key")).unwrap().public_key();
    let report = keytrail::store::audit::integrity::verify_export(&doc, &key).unwrap();
    assert!(report.ok && report.complete && report.events >= all.len() * 2, "{report:?}");
}

/// A change whose body nests deeper than the trail can read back (or a JSON
/// export can hold) is logged by its size. (Its intent held the body one
/// level deeper than sent: a 300-byte body nested 127 levels made the
/// intent's block unreadable, so the admin log answered 500 and
/// verification reported the chain broken there.)
#[tokio::test]
async fn a_change_with_a_deeply_nested_body_is_logged_by_its_size() {
    let ts = TestServer::start().await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    let body = format!("{{\"id\":\"gold\",\"daily_quota\":5,\"deep\":{}{}}}", "[".repeat(126), "]".repeat(126));
    let url = format!("{}/v1/tenants/acme/tiers", ts.admin);
    let res = ts.client.post(url).bearer_auth(&admin.token).header("content-type", "application/json").body(body.clone()).send().await.unwrap();
    assert_eq!(res.status(), 400);
    ts.flush().await;

    let log = admin.get("/v1/audit/acme/admin").await;
    assert_eq!(log.status, 200, "{}", log.text);
    let entry = find(&entries(&log), "TIER_CREATED").clone();
    assert_eq!(entry["details"]["request"], json!({"unparsed_bytes": body.len()}), "{entry}");
    let verified = admin.get("/v1/audit/acme/verify").await;
    assert_eq!(verified.body["ok"], true, "{}", verified.text);
}

/// A page of the admin log ends early, with its `next_cursor`, once its
/// entries hold 8 MiB, as the other audit pages do: changes are logged with
/// their bodies (up to megabytes, refused ones too), so `limit=10000` built
/// whole pages of gigabytes in memory. Following the cursors still gives
/// every entry once, outcomes resolved.
#[tokio::test]
async fn a_page_of_large_changes_stops_at_its_byte_budget_and_goes_on_from_its_cursor() {
    let ts = TestServer::start().await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    for i in 0..12 {
        let big = admin.post("/v1/tenants/acme/tiers", json!({"id": format!("t{i}"), "daily_quota": 5, "note": "x".repeat(1_000_000)})).await;
        assert_eq!(big.status, 400, "{}", big.text);
    }
    ts.flush().await;
    let first = admin.get("/v1/audit/acme/admin?limit=1000").await;
    assert_eq!(first.status, 200);
    let mut all = entries(&first);
    assert!(first.text.len() < 10 << 20, "a page of {} bytes ({} entries)", first.text.len(), all.len());
    assert!(first.body["next_cursor"].is_string(), "the page ended early without a cursor");
    let mut cursor = first.body["next_cursor"].as_str().map(str::to_string);
    while let Some(c) = cursor {
        let page = admin.get(&format!("/v1/audit/acme/admin?limit=1000&cursor={c}")).await;
        assert_eq!(page.status, 200);
        all.extend(entries(&page));
        cursor = page.body["next_cursor"].as_str().map(str::to_string);
    }
    let refused: Vec<&Value> = all.iter().filter(|e| e["action"] == "TIER_CREATED" && e["outcome"] == "failure").collect();
    assert_eq!(refused.len(), 12, "{}", all.len());
    let mut ids: Vec<&str> = all.iter().map(|e| e["event_id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), all.len(), "every entry once");
}

/// A consumer's name is personal data: the admin log holds `[personal]`
/// for it, and erasure cannot reach the log. A creation refused because
/// the name is taken must not carry the name into the log through its
/// error message either.
#[tokio::test]
async fn a_taken_consumer_name_stays_out_of_the_admin_log() {
    let mut ts = TestServer::start().await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    const NAME: &str = "Jane Q. Doe 4417";
    assert_eq!(admin.post("/v1/tenants/acme/consumers", json!({"name": NAME})).await.status, 201);
    let taken = admin.post("/v1/tenants/acme/consumers", json!({"name": NAME})).await;
    assert_eq!((taken.status, taken.body["error"]["code"].as_str()), (409, Some("conflict")), "{}", taken.text);
    ts.flush().await;
    let log = admin.get("/v1/audit/acme/admin?action=CONSUMER_CREATED&limit=100").await;
    let all = entries(&log);
    let failure = all.iter().find(|e| e["outcome"] == "failure").unwrap_or_else(|| panic!("{all:?}"));
    assert_eq!(failure["error"]["code"], "conflict");
    assert!(!log.text.contains(NAME), "the admin log holds the consumer's name: {}", log.text);
    ts.stop().await;
}

/// An upstream written with credentials (`http://user:password@host`, as
/// nginx users do for a basic-auth upstream) is refused, and its password
/// stays out of the log: the intent records the body as asked, and held
/// the password in clear in the admin log and every export of it.
#[tokio::test]
async fn credentials_in_a_url_of_a_change_stay_out_of_the_admin_log() {
    let ts = TestServer::start().await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    let upstream = "http://svc-user:Sup3r-s3cret-pw@127.0.0.1:9000";
    let a = admin.post("/v1/tenants/acme/apis", json!({"id": "docs", "path_prefix": "/docs", "upstream": upstream})).await;
    assert_eq!(a.status, 400, "{}", a.text);
    assert!(!a.text.contains("Sup3r-s3cret-pw"), "{}", a.text);
    ts.flush().await;

    let log = admin.get("/v1/audit/acme/admin").await;
    let entry = find(&entries(&log), "API_CREATED").clone();
    assert_eq!(entry["outcome"], "failure", "{entry}");
    // What the admin asked stays readable, the password does not.
    assert_eq!(entry["details"]["request"]["upstream"], "http://****@127.0.0.1:9000", "{entry}");
    for path in ["/v1/audit/acme/admin", "/v1/audit/acme/export/json?category=admin", "/v1/audit/acme/export/csv?category=admin"] {
        let answer = admin.get(path).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.text);
        assert!(!answer.text.contains("Sup3r-s3cret-pw"), "{path}: {}", answer.text);
    }
}

/// A tenant-bound admin's creation is in its tenant's log, as its removal,
/// its sign-ins and its changes are: a global owner adding an owner to a
/// tenant was in `_system` only, which the tenant's own auditors cannot
/// read, so they saw an admin they never saw made act, then be removed.
#[tokio::test]
async fn a_tenant_bound_admins_creation_is_in_its_tenants_log_like_its_removal() {
    let ts = TestServer::start().await;
    let owner = ts.admin_client();
    assert_eq!(owner.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    let bound = owner.post("/v1/admins", json!({"name": "acme-owner", "role": "owner", "tenant_id": "acme"})).await;
    assert_eq!(bound.status, 201, "{}", bound.text);
    let bound_id = bound.body["id"].as_str().unwrap();
    let global = owner.post("/v1/admins", json!({"name": "global-viewer", "role": "viewer"})).await;
    assert_eq!(global.status, 201, "{}", global.text);
    let global_id = global.body["id"].as_str().unwrap();
    assert_eq!(owner.call("DELETE", &format!("/v1/admins/{bound_id}"), None).await.status, 200);
    ts.flush().await;

    let acme = entries(&owner.get("/v1/audit/acme/admin?limit=100").await);
    let created = find(&acme, "ADMIN_CREATED");
    assert_eq!(created["resource"], "v1/admins", "{created}");
    assert_eq!(created["outcome"], "success", "{created}");
    assert_eq!(created["details"]["created_or_changed"], bound_id, "{created}");
    assert_eq!(find(&acme, "ADMIN_DELETED")["resource"], format!("admin:{bound_id}"));
    // Admins bound to no tenant stay in the system tenant's log.
    let system = entries(&owner.get("/v1/audit/_system/admin?limit=100").await);
    let made: Vec<&Value> = system.iter().filter(|e| e["action"] == "ADMIN_CREATED").collect();
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(made[0]["details"]["created_or_changed"], global_id);
}
