//! Multi-tenant authorization on the admin API: what an admin bound to one
//! tenant can do to another tenant's objects and traffic.

use serde_json::json;

use crate::util::{start_upstream, Admin, TestServer};

/// Path prefixes are one namespace shared by every tenant, and the longest
/// prefix wins: an api of another tenant nested inside a tenant's prefix
/// would take over that part of its traffic (its callers refused as
/// `invalid_key`, their calls recorded in the other tenant's trail).
#[tokio::test]
async fn a_tenant_cannot_route_a_path_inside_another_tenants_api() {
    let ts = TestServer::start().await;
    let up = format!("http://{}", start_upstream().await);
    let owner = ts.admin_client();
    let (_, _, beta_key) = owner.setup("beta", "/beta", &up).await;
    assert_eq!(owner.post("/v1/tenants", json!({"id": "alpha", "name": "Alpha"})).await.status, 201);
    let a = owner.post("/v1/admins", json!({"name": "alpha-admin", "role": "admin", "tenant_id": "alpha"})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let intruder = Admin { token: a.body["token"].as_str().unwrap().to_string(), ..owner.clone() };

    let call = || async { ts.client.get(format!("{}/beta/admin/x", ts.gateway)).header("X-API-Key", &beta_key).send().await.unwrap().status().as_u16() };
    assert_eq!(call().await, 200);
    let a = intruder.post("/v1/tenants/alpha/apis", json!({"id": "grab", "path_prefix": "/beta/admin", "upstream": up})).await;
    assert_eq!(a.status, 409, "{}", a.text);
    assert_eq!(a.body["error"]["code"], "conflict");
    assert_eq!(call().await, 200, "beta's callers still reach beta's api");
    // Within one tenant, a more specific api is still allowed.
    let a = owner.post("/v1/tenants/beta/apis", json!({"id": "beta-admin", "path_prefix": "/beta/admin", "upstream": up})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    // A prefix of its own beside (not inside) another tenant's is fine too,
    // and another tenant's root api (the catch-all) claims no path.
    let a = intruder.post("/v1/tenants/alpha/apis", json!({"id": "alpha", "path_prefix": "/betamax", "upstream": up})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let a = owner.post("/v1/tenants/beta/apis", json!({"id": "root", "path_prefix": "/", "upstream": up})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let a = intruder.post("/v1/tenants/alpha/apis", json!({"id": "alpha2", "path_prefix": "/alpha", "upstream": up})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    // Nor can a tenant claim a prefix in advance: an api around another
    // tenant's would leave part of its own paths to that tenant.
    let a = intruder.post("/v1/tenants/alpha/apis", json!({"id": "gamma-admin", "path_prefix": "/gamma/admin", "upstream": up})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(owner.post("/v1/tenants", json!({"id": "gamma", "name": "Gamma"})).await.status, 201);
    let a = owner.post("/v1/tenants/gamma/apis", json!({"id": "gamma", "path_prefix": "/gamma", "upstream": up})).await;
    assert_eq!(a.status, 409, "{}", a.text);
}

/// A removed admin's token stops working the moment the removal answers,
/// even while other changes reload the control plane's snapshots at the
/// same time (a reload that read the admins before the removal must not
/// store them after the removal's own reload did).
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn a_removed_admins_token_stops_working_under_concurrent_changes() {
    use std::sync::atomic::{AtomicBool, Ordering};
    // Each removed token is refused once more, all from 127.0.0.1: as
    // guesses they would lock the address out of bearer tokens (the
    // owner's too), so that count is off here.
    let ts = TestServer::start_with(tempfile::tempdir().unwrap(), |c| c.login.address_failures = 0).await;
    let owner = ts.admin_client();
    assert_eq!(owner.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    assert_eq!(owner.post("/v1/tenants/acme/tiers", json!({"id": "gold", "daily_quota": 5})).await.status, 201);
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let mut noise = Vec::new();
    for _ in 0..8 {
        let (o, stop) = (owner.clone(), stop.clone());
        noise.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let a = o.call("PUT", "/v1/tenants/acme/tiers/gold", Some(json!({"daily_quota": 5 + n % 7}))).await;
                assert_eq!(a.status, 200, "{}", a.text);
                n += 1;
            }
        }));
    }
    let started = std::time::Instant::now();
    let mut stale = None;
    let mut i = 0;
    while stale.is_none() && started.elapsed() < std::time::Duration::from_secs(8) {
        let a = owner.post("/v1/admins", json!({"name": format!("tmp-{i}"), "role": "viewer"})).await;
        assert_eq!(a.status, 201, "{}", a.text);
        let removed = Admin { token: a.body["token"].as_str().unwrap().to_string(), ..owner.clone() };
        let id = a.body["id"].as_str().unwrap().to_string();
        assert_eq!(owner.call("DELETE", &format!("/v1/admins/{id}"), None).await.status, 200);
        let me = removed.get("/v1/me").await;
        if me.status != 401 {
            stale = Some((i, me.status, me.text));
        }
        i += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for task in noise {
        task.await.unwrap();
    }
    assert_eq!(stale, None, "a removed admin's token still worked (removal {i})");
}

/// Ids are slugs and generated ids, so a path segment that needs
/// percent-decoding names none. The handlers decoded it while the guard
/// and the activity log did not: a global admin's change to `acme` made
/// as `/v1/tenants/%61cme/...` ran, and was logged in the system tenant's
/// admin log instead of acme's, where acme's own auditors never saw it.
#[tokio::test]
async fn an_encoded_id_in_a_path_names_nothing() {
    let ts = TestServer::start().await;
    let up = format!("http://{}", start_upstream().await);
    let owner = ts.admin_client();
    let (consumer, key_id, _) = owner.setup("acme", "/acme", &up).await;
    let a = owner.post(&format!("/v1/tenants/%61cme/consumers/{consumer}/suspend"), json!({})).await;
    assert_eq!((a.status, &a.body["error"]["code"]), (404, &json!("not_found")), "{}", a.text);
    let a = owner.post(&format!("/v1/keys/{}/revoke", key_id.replacen("key_", "key%5F", 1)), json!({})).await;
    assert_eq!((a.status, &a.body["error"]["code"]), (404, &json!("not_found")), "{}", a.text);
    let a = owner.get(&format!("/v1/tenants/acme/consumers/{consumer}/keys")).await;
    assert_eq!(a.body["keys"][0]["status"], "active", "{}", a.text);
    let a = owner.get("/v1/tenants/acme/consumers").await;
    assert_eq!(a.body["consumers"][0]["status"], "active", "{}", a.text);
    // The same calls, spelled plainly, work and are in acme's own log.
    assert_eq!(owner.post(&format!("/v1/tenants/acme/consumers/{consumer}/suspend"), json!({})).await.status, 200);
    ts.flush().await;
    let log = owner.get("/v1/audit/acme/admin?action=CONSUMER_SUSPENDED").await;
    assert_eq!(log.body["entries"].as_array().unwrap().len(), 1, "{}", log.text);
}

/// A root api (`/`) is the catch-all for every path no other api serves:
/// other tenants' callers' mistyped paths would reach it, their keys and
/// calls in its tenant's trail. Only an admin bound to no tenant may
/// create one.
#[tokio::test]
async fn only_a_global_admin_may_route_the_root_prefix() {
    let ts = TestServer::start().await;
    let up = format!("http://{}", start_upstream().await);
    let owner = ts.admin_client();
    let (_, _, beta_key) = owner.setup("beta", "/beta", &up).await;
    assert_eq!(owner.post("/v1/tenants", json!({"id": "alpha", "name": "Alpha"})).await.status, 201);
    let mut bound = Vec::new();
    for role in ["admin", "owner"] {
        let a = owner.post("/v1/admins", json!({"name": format!("alpha-{role}"), "role": role, "tenant_id": "alpha"})).await;
        assert_eq!(a.status, 201, "{}", a.text);
        bound.push(Admin { token: a.body["token"].as_str().unwrap().to_string(), ..owner.clone() });
    }
    let mistyped = || async { ts.client.get(format!("{}/bta/x", ts.gateway)).header("X-API-Key", &beta_key).send().await.unwrap().status().as_u16() };
    assert_eq!(mistyped().await, 404);
    for who in &bound {
        let a = who.post("/v1/tenants/alpha/apis", json!({"id": "catchall", "path_prefix": "/", "upstream": up})).await;
        assert_eq!(a.status, 403, "{}", a.text);
        assert_eq!(a.body["error"]["code"], "forbidden");
        assert!(a.body["error"]["message"].as_str().unwrap().contains("`/`"), "{}", a.text);
    }
    let apis = owner.get("/v1/tenants/alpha/apis").await;
    assert_eq!(apis.body["apis"], json!([]), "{}", apis.text);
    assert_eq!(mistyped().await, 404, "beta's mistyped paths still reach no api");
    // Their own prefixes stay theirs to route.
    let a = bound[0].post("/v1/tenants/alpha/apis", json!({"id": "alpha", "path_prefix": "/alpha", "upstream": up})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    // A global admin, not only an owner, may.
    let a = owner.post("/v1/admins", json!({"name": "ops", "role": "admin"})).await;
    let ops = Admin { token: a.body["token"].as_str().unwrap().to_string(), ..owner.clone() };
    let a = ops.post("/v1/tenants/alpha/apis", json!({"id": "catchall", "path_prefix": "/", "upstream": up})).await;
    assert_eq!(a.status, 201, "{}", a.text);
}
