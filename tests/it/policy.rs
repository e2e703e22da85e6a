//! Per-api policies over real sockets: methods (405), forbidden paths (403),
//! required scopes (403), body size (413/411), each a `policy_applied` event.

use serde_json::{json, Value};

use crate::util::{start_upstream, upload, TestServer};

async fn send(ts: &TestServer, method: &str, path: &str, key: &str, body: Option<Vec<u8>>) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = ts.client.request(method.parse().unwrap(), format!("{}{}", ts.gateway, path)).header("x-api-key", key);
    if let Some(body) = body {
        req = req.body(body);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, headers, res.text().await.unwrap())
}

fn code(body: &str) -> String {
    serde_json::from_str::<Value>(body).unwrap()["error"]["code"].as_str().unwrap_or("").to_string()
}

#[tokio::test]
async fn each_policy_refuses_with_its_status_and_records_why() {
    let mut ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    let a = admin
        .post(
            "/v1/tenants/acme/apis",
            json!({"id": "docs", "path_prefix": "/docs", "upstream": format!("http://{up}"),
                   "policies": {"max_body_bytes": 100, "allowed_methods": ["get", "POST"],
                                "forbidden_paths": ["/docs/admin", "/docs/*/internal"],
                                "required_scopes": ["docs:read"]}}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.body["policies"]["allowed_methods"], json!(["GET", "POST"]), "normalised");
    let a = admin.post("/v1/tenants/acme/consumers", json!({"name": "reader"})).await;
    let consumer = a.body["id"].as_str().unwrap().to_string();
    let (_, key) = admin.key("acme", &consumer, json!({"scopes": ["docs:read", "docs:write"]})).await;
    let (_, unscoped) = admin.key("acme", &consumer, json!({})).await;

    assert_eq!(send(&ts, "GET", "/docs/fixed", &key, None).await.0, 200);
    let (status, headers, body) = send(&ts, "DELETE", "/docs/fixed", &key, None).await;
    assert_eq!((status, code(&body).as_str()), (405, "method_not_allowed"));
    assert_eq!(headers["allow"], "GET, POST");
    let (status, _, body) = send(&ts, "GET", "/docs/admin/users", &key, None).await;
    assert_eq!((status, code(&body).as_str()), (403, "forbidden"));
    let (status, _, body) = send(&ts, "GET", "/docs/v2/internal", &key, None).await;
    assert_eq!((status, code(&body).as_str()), (403, "forbidden"));
    assert_eq!(send(&ts, "GET", "/docs/administrator", &key, None).await.0, 200, "segment boundaries");
    let (status, _, body) = send(&ts, "GET", "/docs/fixed", &unscoped, None).await;
    assert_eq!((status, code(&body).as_str()), (403, "insufficient_scope"));
    let (status, _, body) = send(&ts, "POST", "/docs/upload", &key, Some(vec![b'x'; 101])).await;
    assert_eq!((status, code(&body).as_str()), (413, "payload_too_large"));
    let (status, _, body) = send(&ts, "POST", "/docs/upload", &key, Some(vec![b'x'; 100])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["received_bytes"], 100);
    let (status, _) = upload(&ts.client, &format!("{}/docs/upload", ts.gateway), &key, 10, 3).await;
    assert_eq!(status, 411, "a body of unknown length under a size limit");

    let events = admin.wait_for("/v1/audit/acme/security?event_type=policy_applied", "events", 6).await;
    let mut seen: Vec<(String, Value)> =
        events.iter().map(|e| (e["details"]["policy"].as_str().unwrap().to_string(), e["details"]["limit"].clone())).collect();
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        seen,
        vec![
            ("allowed_methods".to_string(), json!(["GET", "POST"])),
            ("forbidden_paths".to_string(), json!("/docs/*/internal")),
            ("forbidden_paths".to_string(), json!("/docs/admin")),
            ("max_body_bytes".to_string(), json!(100)),
            ("max_body_bytes".to_string(), json!(100)),
            ("required_scopes".to_string(), json!(["docs:read"])),
        ]
    );
    assert!(events.iter().all(|e| e["consumer_id"] == consumer.as_str() && e["target"] == "api:docs"));
    let body_event = events.iter().find(|e| e["details"]["actual"] == 101).expect("the 413's event carries the size");
    assert_eq!(body_event["error_code"], "payload_too_large");
    let refused = admin.wait_for("/v1/audit/acme?status_min=400", "logs", 6).await;
    let scope = refused.iter().find(|e| e["error_code"] == "insufficient_scope").expect("the refused call is logged");
    assert_eq!(scope["field"], "scopes", "a failed call names the part of the request that was wrong");
    assert_eq!(scope["error_message"], "the API key does not hold the scopes this API requires");
    assert!(refused.iter().any(|e| e["error_code"] == "payload_too_large" && e["field"] == "body"), "{refused:?}");
    ts.stop().await;
}

#[tokio::test]
async fn policies_change_at_once_and_bad_ones_are_refused() {
    let mut ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    let put = |body: Value| {
        let admin = admin.clone();
        async move { admin.call("PUT", "/v1/tenants/acme/apis/docs/policies", Some(body)).await }
    };
    for fine in [json!(["/docs"]), json!(["/*/secret"]), json!(["/DOCS/secret"]), json!(["/d%6Fcs/x"])] {
        let a = put(json!({"forbidden_paths": fine})).await;
        assert_eq!(a.status, 200, "{fine}: {}", a.text);
    }
    let a = admin
        .post("/v1/tenants/acme/apis", json!({"id": "other", "path_prefix": "/other", "upstream": format!("http://{up}"), "policies": {"forbidden_paths": ["/admin"]}}))
        .await;
    assert_eq!(a.status, 400, "{}", a.text);
    let a = put(json!({"forbidden_paths": ["/docs/secret"]})).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(send(&ts, "GET", "/docs/secret", &key, None).await.0, 403);
    assert_eq!(put(json!({})).await.status, 200, "no policies");
    assert_eq!(send(&ts, "GET", "/docs/secret", &key, None).await.0, 200);

    for (body, needle) in [
        (json!({"max_body_bytes": 0}), "at least 1"),
        (json!({"max_body_bytes": -1}), "max_body_bytes"),
        (json!({"allowed_methods": ["FETCH"]}), "`FETCH`"),
        (json!({"forbidden_paths": ["secret"]}), "must be a path"),
        // The api never serves a path outside its prefix: such an entry
        // would be accepted and never apply (`/admin` meant as relative).
        (json!({"forbidden_paths": ["/admin"]}), "not under the api's prefix `/docs`"),
        (json!({"forbidden_paths": ["/docs/a", "/docsearch/x"]}), "`/docsearch/x`"),
        // No path an upstream resolves holds a `.` or `..` segment: such
        // an entry would be accepted and never refuse `/docs/admin`.
        (json!({"forbidden_paths": ["/docs/./admin"]}), "`/docs/./admin`"),
        (json!({"forbidden_paths": ["/docs/v1/../admin"]}), "`.` or `..` segments"),
        (json!({"forbidden_paths": ["/docs/%2E%2e/admin"]}), "`.` or `..` segments"),
        (json!({"required_scopes": ["has space"]}), "required_scopes"),
        (json!({"max_size": 5}), "max_size"),
    ] {
        let a = put(body.clone()).await;
        assert_eq!(a.status, 400, "{body}: {}", a.text);
        assert!(a.text.contains(needle), "{body}: {}", a.text);
    }
    let a = admin.call("PUT", "/v1/tenants/acme/apis/nope/policies", Some(json!({}))).await;
    assert_eq!(a.status, 404, "{}", a.text);
    let a = admin.call("PUT", "/v1/tenants/nope/apis/docs/policies", Some(json!({}))).await;
    assert_eq!(a.status, 404, "{}", a.text);
    ts.stop().await;
}

/// An api nested inside another of its tenant (`/docs/admin` inside
/// `/docs`) has policies of its own. A spelling an upstream resolves to the
/// nested api's path (`/docs//admin`, `/docs/%61dmin`, `/docs/admin;x`,
/// `/docs/ADMIN`) was routed as sent, to the outer api, and so reached the
/// same upstream without the nested api's required scopes.
#[tokio::test]
async fn a_spelling_of_a_nested_apis_path_gets_that_apis_policies() {
    let mut ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (consumer, _, key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    let a = admin
        .post(
            "/v1/tenants/acme/apis",
            json!({"id": "docs-admin", "path_prefix": "/docs/admin", "upstream": format!("http://{up}"),
                   "policies": {"required_scopes": ["docs:admin"]}}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    let (_, admin_key) = admin.key("acme", &consumer, json!({"scopes": ["docs:admin"]})).await;

    let spellings = ["/docs/admin/users", "/docs//admin/users", "/docs/%61dmin/users", "/docs/admin;v=1/users", "/docs/ADMIN/users", "/docs/Admin"];
    for path in spellings {
        let (status, _, body) = send(&ts, "GET", path, &key, None).await;
        assert_eq!((status, code(&body).as_str()), (403, "insufficient_scope"), "{path}: {body}");
        let (status, _, body) = send(&ts, "GET", path, &admin_key, None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    // Paths beside the nested api stay the outer api's.
    for path in ["/docs/administrator", "/docs/x/admin", "/docs/fixed"] {
        assert_eq!(send(&ts, "GET", path, &key, None).await.0, 200, "{path}");
    }
    let logs = admin.wait_for("/v1/audit/acme?status_min=403&status_max=403", "logs", spellings.len()).await;
    assert_eq!(logs.len(), spellings.len(), "{logs:?}");
    assert!(logs.iter().all(|l| l["api_id"] == "docs-admin" && l["error_code"] == "insufficient_scope"), "{logs:?}");
    ts.stop().await;
}
