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
