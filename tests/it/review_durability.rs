//! Review of the audit writer and durability: defects found, each with the
//! test that showed it.

use serde_json::json;

use crate::util::{TestServer, ADMIN_TOKEN};

/// An admin change's intent records the request body as asked (up to the
/// 4 MiB the admin API reads, written again as JSON: `1e15` comes out as
/// `1000000000000000.0`): the block holding it must be one readers accept,
/// or the admin log and the chain's verification fail for good.
#[tokio::test]
async fn an_admin_change_with_a_large_body_leaves_a_readable_verified_trail() {
    let ts = TestServer::start().await;
    let admin = ts.admin_client();
    for body in [
        json!({"id": "acme", "name": "Acme", "note": "p".repeat(700_000)}).to_string(),
        format!(r#"{{"id": "acme", "name": "Acme", "note": [{}1]}}"#, "1e15,".repeat((4 << 20) / 5 - 20)),
    ] {
        assert!(body.len() <= 4 << 20);
        let res = admin.client.post(format!("{}/v1/tenants", ts.admin)).bearer_auth(ADMIN_TOKEN).header("content-type", "application/json").body(body).send().await.unwrap();
        assert!(res.status().as_u16() < 500, "{}", res.status());
        ts.flush().await;
        let log = admin.get("/v1/audit/_system/admin?limit=1").await;
        assert_eq!(log.status, 200, "{}", &log.text[..log.text.len().min(500)]);
        let verify = admin.get("/v1/audit/_system/verify").await;
        assert_eq!(verify.status, 200, "{}", &verify.text[..verify.text.len().min(500)]);
        assert_eq!(verify.body["ok"], json!(true), "{}", &verify.text[..verify.text.len().min(1000)]);
    }
}
