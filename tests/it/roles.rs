//! Admins and roles: every route of the access table called by every role,
//! global and tenant-bound; the tenant-isolation sweep; sign-in with
//! passwords and sessions.

use serde_json::{json, Value};

use keytrail::access::{Role, ROUTES};

use crate::util::{start_upstream, Admin, TestServer};

/// Ids of one tenant's objects, fresh for each caller so that every
/// allowed change has something to act on.
struct Fixture {
    tenant: String,
    api: String,
    consumer: String,
    keys: [String; 3],
    tier: String,
    block: String,
    global_block: String,
    doomed_admin: String,
}

async fn fixture(owner: &Admin, tenant: &str, upstream: &str, bound: bool) -> Fixture {
    let (consumer, key0, _) = owner.setup(tenant, &format!("/{tenant}"), upstream).await;
    let (key1, _) = owner.key(tenant, &consumer, json!({})).await;
    let (key2, _) = owner.key(tenant, &consumer, json!({})).await;
    let a = owner.post(&format!("/v1/tenants/{tenant}/tiers"), json!({"id": "gold", "daily_quota": 1000})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let a = owner.post(&format!("/v1/tenants/{tenant}/tiers"), json!({"id": "spare", "daily_quota": 1000})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let a = owner.post(&format!("/v1/tenants/{tenant}/blocklist"), json!({"kind": "ip", "value": "203.0.113.7"})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let block = a.body["id"].as_str().unwrap().to_string();
    let a = owner.post("/v1/blocklist", json!({"kind": "user_agent", "value": format!("bot-{tenant}")})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let global_block = a.body["id"].as_str().unwrap().to_string();
    let a = owner.post(&format!("/v1/tenants/{tenant}/alerts"), alert_rule("watch")).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let bind = if bound { json!(tenant) } else { Value::Null };
    let a = owner.post("/v1/admins", json!({"name": format!("doomed-{tenant}"), "role": "viewer", "tenant_id": bind})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    Fixture {
        tenant: tenant.into(),
        api: tenant.into(),
        consumer,
        keys: [key0, key1, key2],
        tier: "gold".into(),
        block,
        global_block,
        doomed_admin: a.body["id"].as_str().unwrap().to_string(),
    }
}

fn alert_rule(id: &str) -> Value {
    json!({"id": id, "match": {"event_type": "auth_failed"}, "threshold": 5, "window_secs": 60, "webhook_url": "http://127.0.0.1:9/hook"})
}

/// A concrete call for a route: its path and a body that an allowed caller
/// gets a success for.
fn call_for(method: &str, route: &str, f: &Fixture, bound: bool, n: usize) -> (String, Option<Value>) {
    let key = match route {
        r if r.ends_with("/revoke") => &f.keys[0],
        r if r.ends_with("/rotate") => &f.keys[1],
        _ => &f.keys[2],
    };
    let path = route
        .replace("{tenant}", &f.tenant)
        .replace("{api}", &f.api)
        .replace("{consumer}", &f.consumer)
        .replace("{key_id}", key)
        .replace("{tier}", if method == "DELETE" { "spare" } else { &f.tier })
        .replace("{admin_id}", &f.doomed_admin)
        .replace("{rule}", "watch")
        .replace("{address}", "198.51.100.250")
        .replace("{id}", if route.starts_with("/v1/blocklist") { &f.global_block } else { &f.block });
    let body = match (method, route) {
        ("POST", "/v1/admins") => {
            Some(json!({"name": format!("new-{}-{n}", f.tenant), "role": "viewer", "tenant_id": if bound { json!(f.tenant) } else { Value::Null }}))
        }
        ("POST", "/v1/tenants") => Some(json!({"id": format!("{}-new-{n}", f.tenant), "name": "new"})),
        ("POST", "/v1/tenants/{tenant}/apis") => {
            Some(json!({"id": format!("extra{n}"), "path_prefix": format!("/{}-extra{n}", f.tenant), "upstream": "http://127.0.0.1:9"}))
        }
        ("PUT", "/v1/tenants/{tenant}/apis/{api}/policies") => Some(json!({"max_body_bytes": 1000})),
        ("POST", "/v1/tenants/{tenant}/consumers") => Some(json!({"name": format!("extra-{n}")})),
        ("PUT", "/v1/tenants/{tenant}/consumers/{consumer}/tier") => Some(json!({"tier": "gold"})),
        ("POST", "/v1/tenants/{tenant}/consumers/{consumer}/keys") => Some(json!({})),
        ("POST", "/v1/keys/{key_id}/rotate") => Some(json!({"grace_seconds": 60})),
        ("PUT", "/v1/keys/{key_id}/scopes") => Some(json!({"scopes": [format!("s{n}")]})),
        ("POST", "/v1/tenants/{tenant}/tiers") => Some(json!({"id": format!("t{n}"), "daily_quota": 10})),
        ("PUT", "/v1/tenants/{tenant}/tiers/{tier}") => Some(json!({"daily_quota": 5})),
        ("POST", "/v1/blocklist") | ("POST", "/v1/tenants/{tenant}/blocklist") => {
            Some(json!({"kind": "ip", "value": format!("198.51.100.{n}")}))
        }
        ("POST", "/v1/tenants/{tenant}/alerts") => Some(alert_rule(&format!("a{n}"))),
        ("PUT", "/v1/tenants/{tenant}/alerts/{rule}") => {
            Some(json!({"match": {"category": "security"}, "threshold": 10, "window_secs": 60, "webhook_url": "http://127.0.0.1:9/hook"}))
        }
        // Longer than the default: shortening needs an owner (below).
        ("PUT", r) if r.ends_with("/settings/retention") => Some(json!({"hot_days": 120})),
        ("PUT", _) => Some(json!({"log_api_calls": true})),
        ("POST", "/v1/audit/{tenant}/events") => Some(json!({"action": "order.updated", "resource_type": "order", "resource_id": "1"})),
        _ => None,
    };
    (path, body)
}

/// What an allowed call answers: success, except logging out with a token
/// (there is no session to end).
fn allowed_status(method: &str, route: &str, status: u16) -> bool {
    match (method, route) {
        ("POST", "/v1/auth/logout") => status == 400,
        _ => (200..300).contains(&status),
    }
}

#[tokio::test]
async fn every_role_against_every_route() {
    let ts = TestServer::start().await;
    let up = format!("http://{}", start_upstream().await);
    let owner = ts.admin_client();
    let mut checked = 0;
    for bound in [false, true] {
        for role in Role::ALL {
            let tenant = format!("{}-{}", role.as_str(), if bound { "b" } else { "g" });
            let f = fixture(&owner, &tenant, &up, bound).await;
            let a = owner
                .post("/v1/admins", json!({"name": format!("{tenant}-admin"), "role": role.as_str(), "tenant_id": if bound { json!(tenant) } else { Value::Null }}))
                .await;
            assert_eq!(a.status, 201, "{}", a.text);
            let caller = Admin { token: a.body["token"].as_str().unwrap().to_string(), ..owner.clone() };
            for (n, rule) in ROUTES.iter().enumerate() {
                let (path, body) = call_for(rule.method, rule.route, &f, bound, n);
                let answer = caller.call(rule.method, &path, body).await;
                let allowed = role.allows(rule.permission) && !(rule.global_only && bound);
                let what = format!("{} {} as {} ({})", rule.method, path, role.as_str(), if bound { "tenant-bound" } else { "global" });
                if allowed {
                    assert!(allowed_status(rule.method, rule.route, answer.status), "{what} should be allowed: {} {}", answer.status, answer.text);
                } else {
                    assert_eq!(answer.status, 403, "{what} should be refused: {}", answer.text);
                    assert_eq!(answer.body["error"]["code"], "forbidden", "{what}");
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 8 * ROUTES.len());
}

/// Everything a tenant's objects look like through the API, to prove a
/// refused caller changed nothing.
async fn state_of(owner: &Admin, f: &Fixture) -> Vec<Value> {
    let t = &f.tenant;
    let mut out = Vec::new();
    for path in [
        format!("/v1/tenants/{t}/apis"),
        format!("/v1/tenants/{t}/consumers"),
        format!("/v1/tenants/{t}/consumers/{}/keys", f.consumer),
        format!("/v1/tenants/{t}/tiers"),
        format!("/v1/tenants/{t}/blocklist"),
        format!("/v1/tenants/{t}/settings/logging"),
        "/v1/admins".to_string(),
    ] {
        let a = owner.get(&path).await;
        assert_eq!(a.status, 200, "{path}: {}", a.text);
        out.push(a.body);
    }
    // The tenant's audit trail, without the reads this check itself causes.
    let a = owner.get(&format!("/v1/audit/{t}?limit=1000")).await;
    out.push(a.body["logs"].clone());
    out
}

#[tokio::test]
async fn a_tenant_bound_admin_never_reaches_another_tenant() {
    let ts = TestServer::start().await;
    let up = format!("http://{}", start_upstream().await);
    let owner = ts.admin_client();
    let _mine = fixture(&owner, "alpha", &up, true).await;
    let theirs = fixture(&owner, "beta", &up, true).await;
    let a = owner.post("/v1/admins", json!({"name": "alpha-owner", "role": "owner", "tenant_id": "alpha"})).await;
    let intruder = Admin { token: a.body["token"].as_str().unwrap().to_string(), ..owner.clone() };
    ts.flush().await;
    let before = state_of(&owner, &theirs).await;

    let mut swept = 0;
    for (n, rule) in ROUTES.iter().enumerate() {
        let touches_tenant = rule.route.contains("{tenant}") || rule.route.contains("{key_id}") || rule.route.contains("{admin_id}");
        if !touches_tenant {
            continue;
        }
        let (path, body) = call_for(rule.method, rule.route, &theirs, true, n);
        let answer = intruder.call(rule.method, &path, body).await;
        assert_eq!(answer.status, 404, "{} {path}: {}", rule.method, answer.text);
        assert_eq!(answer.body["error"]["code"], "not_found");
        // Nothing of the other tenant comes back, not even its ids in messages.
        for id in [&theirs.consumer, &theirs.keys[0], &theirs.block, &theirs.doomed_admin] {
            assert!(!answer.text.contains(id.as_str()) || path.contains(id.as_str()), "{path} leaked {id}: {}", answer.text);
        }
        swept += 1;
    }
    assert!(swept >= 30, "swept {swept} routes");
    // The same 404 as for a tenant that does not exist.
    let missing = intruder.get("/v1/tenants/nope/apis").await;
    let other = intruder.get("/v1/tenants/beta/apis").await;
    assert_eq!((missing.status, other.status), (404, 404));
    assert_eq!(missing.body["error"]["message"].as_str().unwrap().replace("nope", "X"), other.body["error"]["message"].as_str().unwrap().replace("beta", "X"));
    // Lists that span tenants show only the caller's own.
    let tenants = intruder.get("/v1/tenants").await;
    let ids: Vec<&str> = tenants.body["tenants"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["alpha"]);
    let admins = intruder.get("/v1/admins").await;
    assert!(admins.body["admins"].as_array().unwrap().iter().all(|a| a["tenant_id"] == "alpha"), "{}", admins.text);
    // The system tenant's log (global changes) is not theirs either.
    assert_eq!(intruder.get("/v1/audit/_system/admin").await.status, 404);

    ts.flush().await;
    assert_eq!(state_of(&owner, &theirs).await, before, "the other tenant changed");
}

#[tokio::test]
async fn people_sign_in_with_a_password_and_get_a_session() {
    let ts = TestServer::start().await;
    let owner = ts.admin_client();
    assert_eq!(owner.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    let password = "correct horse battery staple";
    let a = owner.post("/v1/admins", json!({"name": "ada", "role": "auditor", "tenant_id": "acme", "password": password})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert!(a.body.get("token").is_none(), "people get no token: {}", a.text);
    assert!(!a.text.contains(password) && !a.text.contains("argon2"), "{}", a.text);
    let ada_id = a.body["id"].as_str().unwrap().to_string();

    // Bad input.
    for (body, status) in [
        (json!({"name": "bob", "role": "root"}), 400),
        (json!({"name": "bob", "role": "viewer", "password": "short"}), 400),
        // Twelve characters, but blank: no password at all to look at.
        (json!({"name": "bob", "role": "viewer", "password": " ".repeat(12)}), 400),
        (json!({"name": "bob", "role": "viewer", "password": " \t\n\u{a0}".repeat(4)}), 400),
        (json!({"name": "bad name!", "role": "viewer"}), 400),
        (json!({"name": "ada", "role": "viewer"}), 409),
        (json!({"name": "bob", "role": "viewer", "tenant_id": "nope"}), 404),
        (json!({"name": "bob", "role": "viewer", "extra": 1}), 400),
    ] {
        let a = owner.post("/v1/admins", body.clone()).await;
        assert_eq!(a.status, status, "{body}: {}", a.text);
        assert!(a.body["error"]["message"].is_string());
    }

    let anonymous = Admin { token: String::new(), ..owner.clone() };
    let wrong = anonymous.post("/v1/auth/login", json!({"name": "ada", "password": "not the password"})).await;
    assert_eq!(wrong.status, 401, "{}", wrong.text);
    let unknown = anonymous.post("/v1/auth/login", json!({"name": "nobody", "password": "whatever it is"})).await;
    assert_eq!((unknown.status, &unknown.body["error"]["message"]), (401, &wrong.body["error"]["message"]), "same answer for unknown names");
    assert_eq!(anonymous.post("/v1/auth/login", json!({"name": "ada"})).await.status, 400);

    let login = anonymous.post("/v1/auth/login", json!({"name": "ada", "password": password})).await;
    assert_eq!(login.status, 200, "{}", login.text);
    assert_eq!(login.headers.get("cache-control").map(String::as_str), Some("no-store"));
    let session = login.body["session_token"].as_str().unwrap().to_string();
    assert!(session.starts_with("kts_"));
    let ada = Admin { token: session.clone(), ..owner.clone() };
    let me = ada.get("/v1/me").await;
    assert_eq!((me.body["id"].as_str(), me.body["role"].as_str()), (Some(ada_id.as_str()), Some("auditor")));
    assert!(me.body["credential"].as_str().unwrap().starts_with("session:ses_"));
    // An auditor reads logs and changes nothing.
    assert_eq!(ada.get("/v1/audit/acme").await.status, 200);
    assert_eq!(ada.post("/v1/tenants/acme/consumers", json!({"name": "x"})).await.status, 403);

    let out = ada.post("/v1/auth/logout", json!({})).await;
    assert_eq!(out.status, 200, "{}", out.text);
    assert_eq!(ada.get("/v1/me").await.status, 401, "the session ended");

    // Every attempt is in the tenant's security and admin logs, no secret anywhere.
    ts.flush().await;
    let security = owner.get("/v1/audit/acme/security?limit=100").await;
    let types: Vec<&str> = security.body["events"].as_array().unwrap().iter().map(|e| e["event_type"].as_str().unwrap()).collect();
    assert!(types.contains(&"admin_login") && types.contains(&"admin_login_failed"), "{types:?}");
    let log = owner.get("/v1/audit/acme/admin?limit=100").await;
    let actions: Vec<&str> = log.body["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for action in ["ADMIN_LOGIN", "ADMIN_LOGIN_FAILED", "ADMIN_LOGOUT"] {
        assert!(actions.contains(&action), "{action} missing from {actions:?}");
    }
    let system = owner.get("/v1/audit/_system/security?limit=100").await;
    assert!(system.text.contains("admin_name:unknown"), "a failed login for an unknown name goes to the system log: {}", system.text);
    assert!(!system.text.contains("nobody"), "the unknown name itself is not kept (people type passwords there)");
    for text in [&security.text, &log.text, &system.text] {
        assert!(!text.contains(password) && !text.contains(&session), "{text}");
    }
    // Removing an admin ends its sessions; the last global owner stays.
    let again = anonymous.post("/v1/auth/login", json!({"name": "ada", "password": password})).await;
    let ada = Admin { token: again.body["session_token"].as_str().unwrap().to_string(), ..owner.clone() };
    assert_eq!(owner.call("DELETE", &format!("/v1/admins/{ada_id}"), None).await.status, 200);
    assert_eq!(ada.get("/v1/me").await.status, 401);
    let last = owner.call("DELETE", "/v1/admins/adm_bootstrap", None).await;
    assert_eq!(last.status, 409, "{}", last.text);
}

#[tokio::test]
async fn an_expired_session_is_refused() {
    let ts = TestServer::start().await;
    let owner = ts.admin_client();
    let password = "a long enough password";
    assert_eq!(owner.post("/v1/admins", json!({"name": "eve", "role": "viewer", "password": password})).await.status, 201);
    let anonymous = Admin { token: String::new(), ..owner.clone() };
    let login = anonymous.post("/v1/auth/login", json!({"name": "eve", "password": password})).await;
    let eve = Admin { token: login.body["session_token"].as_str().unwrap().to_string(), ..owner.clone() };
    assert_eq!(eve.get("/v1/me").await.status, 200);
    // Twelve hours later (moved in the store rather than waited for).
    let db = rusqlite::Connection::open(ts.data_dir.join("control.db")).unwrap();
    assert_eq!(db.execute("UPDATE sessions SET expires_at = 1", []).unwrap(), 1);
    let answer = eve.get("/v1/me").await;
    assert_eq!(answer.status, 401, "{}", answer.text);
    assert!(answer.headers.contains_key("www-authenticate"));
    // A session token is never accepted as an admin token, nor the reverse.
    assert_eq!(Admin { token: format!("{}x", eve.token), ..owner.clone() }.get("/v1/me").await.status, 401);
}

/// Global owners removing themselves all at once cannot leave none: the
/// last-owner rule is checked in the removal's own transaction, not on a
/// snapshot each request read before the others' removals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_removed_at_once_leave_one() {
    for _ in 0..8 {
        let ts = TestServer::start().await;
        let boot = ts.admin_client();
        let mut owners = vec![(boot.clone(), "adm_bootstrap".to_string())];
        for i in 0..3 {
            let a = boot.post("/v1/admins", json!({"name": format!("owner-{i}"), "role": "owner"})).await;
            assert_eq!(a.status, 201, "{}", a.text);
            let me = Admin { token: a.body["token"].as_str().unwrap().to_string(), ..boot.clone() };
            owners.push((me, a.body["id"].as_str().unwrap().to_string()));
        }
        let removals: Vec<_> = owners
            .iter()
            .map(|(who, id)| {
                let (who, path) = (who.clone(), format!("/v1/admins/{id}"));
                tokio::spawn(async move { who.call("DELETE", &path, None).await.status })
            })
            .collect();
        let mut statuses = Vec::new();
        for removal in removals {
            statuses.push(removal.await.unwrap());
        }
        statuses.sort();
        assert_eq!(statuses, [200, 200, 200, 409], "exactly one is refused");
        let db = rusqlite::Connection::open(ts.data_dir.join("control.db")).unwrap();
        let left: i64 = db.query_row("SELECT count(*) FROM admins WHERE role = 'owner' AND tenant_id IS NULL", [], |r| r.get(0)).unwrap();
        assert_eq!(left, 1);
    }
}

/// Shortening a tenant's retention or switching its audit logging off lets
/// an admin make its own actions vanish from the trail (`hot_days: 1,
/// archive_days: 0` and `log_dashboard_activities: false` and they are gone
/// within two days): those changes need the `owner` role, tenant-bound or
/// global, on every route that changes the values a tenant gets.
/// Lengthening retention and switching logging on stay open to `admin`.
#[tokio::test]
async fn shortening_retention_or_silencing_the_trail_needs_an_owner() {
    let ts = TestServer::start().await;
    let boot = ts.admin_client();
    assert_eq!(boot.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    let token_of = |a: crate::util::Answer| a.body["token"].as_str().unwrap().to_string();
    let as_admin = |token: String| Admin { token, ..boot.clone() };
    let bound_admin = as_admin(token_of(boot.post("/v1/admins", json!({"name": "acme-admin", "role": "admin", "tenant_id": "acme"})).await));
    let bound_owner = as_admin(token_of(boot.post("/v1/admins", json!({"name": "acme-owner", "role": "owner", "tenant_id": "acme"})).await));
    let global_admin = as_admin(token_of(boot.post("/v1/admins", json!({"name": "ops", "role": "admin"})).await));
    let put = |who: &Admin, path: &str, body: Value| {
        let (who, path) = (who.clone(), path.to_string());
        async move { who.call("PUT", &path, Some(body)).await }
    };
    let refused = |a: &crate::util::Answer, what: &str| {
        assert_eq!(a.status, 403, "{what}: {}", a.text);
        assert_eq!(a.body["error"]["code"], "forbidden", "{what}: {}", a.text);
        assert!(a.body["error"]["message"].as_str().unwrap().contains("`owner`"), "{what}: {}", a.text);
    };
    let retention = "/v1/tenants/acme/settings/retention";
    let logging = "/v1/tenants/acme/settings/logging";
    let settings = |path: &'static str| {
        let boot = boot.clone();
        async move {
            let a = boot.get(path).await;
            assert_eq!(a.status, 200, "{}", a.text);
            a.body
        }
    };
    let retention_before = settings(retention).await;
    let logging_before = settings(logging).await;

    for who in [&bound_admin, &global_admin] {
        // The attack: the shortest retention and no admin log.
        refused(&put(who, retention, json!({"hot_days": 1, "archive_days": 0})).await, "hot 1, archive 0");
        refused(&put(who, retention, json!({"archive_days": 0})).await, "archive off");
        refused(&put(who, retention, json!({"hot_days": 89})).await, "a day shorter");
        // One field shortened refuses the whole change.
        refused(&put(who, retention, json!({"hot_days": 400, "archive_days": 1})).await, "longer hot, shorter archive");
        for switch in ["log_dashboard_activities", "log_api_calls", "log_failed_api_calls", "log_blocklisted_api_calls"] {
            refused(&put(who, logging, json!({switch: false})).await, switch);
        }
        refused(&put(who, logging, json!({"api_call_sample_rate": 0})).await, "sample rate 0");
        refused(&put(who, logging, json!({"api_call_sample_rate": 0.5})).await, "sample rate lowered");
        assert_eq!(settings(retention).await, retention_before, "a refused change is not applied");
        assert_eq!(settings(logging).await, logging_before, "a refused change is not applied");
    }
    // Nor through the global settings, which every tenant inherits.
    refused(&put(&global_admin, "/api/v1/settings/retention", json!({"hot_days": 1, "archive_days": 0})).await, "global retention");
    refused(&put(&global_admin, "/api/v1/settings/logging", json!({"log_dashboard_activities": false})).await, "global logging");
    assert_eq!(settings(retention).await, retention_before);
    assert_eq!(settings(logging).await, logging_before);

    // Lengthening and switching on (or setting what is already set) stay
    // open to `admin`.
    let a = put(&bound_admin, retention, json!({"hot_days": 120, "archive_days": 400})).await;
    assert_eq!((a.status, &a.body["hot_days"]), (200, &json!(120)), "{}", a.text);
    let a = put(&bound_admin, logging, json!({"log_api_calls": true, "api_call_sample_rate": 1.0})).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let a = put(&global_admin, "/api/v1/settings/retention", json!({"archive_days": 500})).await;
    assert_eq!(a.status, 200, "{}", a.text);
    // `null` back to a shorter global value shortens it too.
    refused(&put(&bound_admin, retention, json!({"hot_days": null})).await, "back to the global 90 days");
    assert_eq!(settings(retention).await["hot_days"], 120);

    // An owner may, bound to the tenant or global.
    let a = put(&bound_owner, retention, json!({"hot_days": 1, "archive_days": 0})).await;
    assert_eq!((a.status, &a.body["hot_days"], &a.body["archive_days"]), (200, &json!(1), &json!(0)), "{}", a.text);
    let a = put(&bound_owner, logging, json!({"log_dashboard_activities": false})).await;
    assert_eq!((a.status, &a.body["log_dashboard_activities"]), (200, &json!(false)), "{}", a.text);
    let a = put(&boot, "/api/v1/settings/logging", json!({"api_call_sample_rate": 0.5})).await;
    assert_eq!(a.status, 200, "{}", a.text);
    // Switching back on is an admin's again.
    let a = put(&bound_admin, logging, json!({"log_dashboard_activities": true})).await;
    assert_eq!(a.status, 200, "{}", a.text);
}

/// Admin names are sign-in names, unique on the whole server (people sign
/// in with a name and a password, no tenant). A tenant-bound owner who
/// picks a name an admin it cannot see holds (another tenant's, a global
/// one) gets the same refusal as for a name its own tenant holds — a 409
/// that says names are unique server-wide and to choose another, and does
/// not claim that an admin of that name exists, where, or anything of it.
#[tokio::test]
async fn a_taken_admin_name_is_refused_alike_wherever_it_is_taken() {
    let ts = TestServer::start().await;
    let owner = ts.admin_client();
    for tenant in ["alpha", "beta"] {
        assert_eq!(owner.post("/v1/tenants", json!({"id": tenant, "name": tenant})).await.status, 201);
    }
    let a = owner.post("/v1/admins", json!({"name": "alpha-owner", "role": "owner", "tenant_id": "alpha"})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let bound = Admin { token: a.body["token"].as_str().unwrap().to_string(), ..owner.clone() };
    for (name, tenant) in [("ann", json!("alpha")), ("bea", json!("beta")), ("cy", Value::Null)] {
        let a = owner.post("/v1/admins", json!({"name": name, "role": "viewer", "tenant_id": tenant})).await;
        assert_eq!(a.status, 201, "{}", a.text);
    }
    let mut answers = Vec::new();
    for name in ["ann", "bea", "cy"] {
        let a = bound.post("/v1/admins", json!({"name": name, "role": "viewer", "tenant_id": "alpha"})).await;
        assert_eq!((a.status, a.body["error"]["code"].as_str()), (409, Some("conflict")), "{name}: {}", a.text);
        let message = a.body["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains("unique") && message.contains("choose another"), "says what to fix: {message}");
        assert!(!message.contains("exists") && !message.contains("beta") && !message.contains("adm_"), "says no more than needed: {message}");
        answers.push(message.replace(&format!("`{name}`"), "`NAME`"));
    }
    assert!(answers.iter().all(|m| *m == answers[0]), "the same answer wherever the name is taken: {answers:?}");
    // A free name is fine.
    assert_eq!(bound.post("/v1/admins", json!({"name": "free", "role": "viewer", "tenant_id": "alpha"})).await.status, 201);
    // A name that differs from a taken one only in case is taken too: `Ann`
    // beside `ann` would be two admins the admin log and every list show
    // alike to a reader, one of them perhaps another tenant's.
    for name in ["Ann", "BEA", "Free"] {
        let a = bound.post("/v1/admins", json!({"name": name, "role": "viewer", "tenant_id": "alpha"})).await;
        assert_eq!((a.status, a.body["error"]["code"].as_str()), (409, Some("conflict")), "{name}: {}", a.text);
        let message = a.body["error"]["message"].as_str().unwrap().to_string();
        assert_eq!(message.replace(&format!("`{name}`"), "`NAME`"), answers[0], "the same answer: {message}");
    }
    let names: Vec<String> = owner.get("/v1/admins").await.body["admins"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap().to_string()).collect();
    assert!(!names.iter().any(|n| ["Ann", "BEA", "Free"].contains(&n.as_str())), "{names:?}");
}

/// `HEAD` asks what `GET` would answer, without the body (the router
/// answers it with the `GET` handler): it needs what `GET` needs. An
/// owner's `HEAD /v1/tenants` got `403 forbidden` "no access rule".
#[tokio::test]
async fn head_is_allowed_exactly_where_get_is() {
    let ts = TestServer::start().await;
    let owner = ts.admin_client();
    assert_eq!(owner.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    let a = owner.post("/v1/admins", json!({"name": "look", "role": "viewer"})).await;
    let viewer = Admin { token: a.body["token"].as_str().unwrap().to_string(), ..owner.clone() };
    let head = |who: &Admin, path: &str| {
        let request = ts.client.head(format!("{}{path}", ts.admin)).bearer_auth(&who.token);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    for path in ["/v1/tenants", "/v1/me", "/v1/status", "/v1/tenants/acme/apis", "/v1/audit/acme"] {
        assert_eq!(head(&owner, path).await, 200, "HEAD {path} as owner");
    }
    assert_eq!(head(&viewer, "/v1/tenants/acme/apis").await, 200);
    // Raw events are not a viewer's, by HEAD either.
    assert_eq!(head(&viewer, "/v1/audit/acme").await, 403);
    assert_eq!(head(&viewer, "/v1/admins").await, 403);
}
