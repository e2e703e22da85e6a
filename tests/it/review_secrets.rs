//! Review (secrets): secrets in every output, in forms the plain search
//! misses, and statistics against a count of the raw events.

use serde_json::json;

use crate::util::{everything_written, http, spawn_serve, start_upstream, Admin};

/// Whether `needle` appears, byte for byte, in any output; names them.
fn found_in(needle: &str, outputs: &[(String, Vec<u8>)]) -> Vec<String> {
    outputs
        .iter()
        .filter(|(_, bytes)| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
        .map(|(name, _)| name.clone())
        .collect()
}

/// An operator's bootstrap token that holds characters JSON escapes (`"`
/// and `\`), pasted into admin bodies and application events: it is never
/// stored or printed, raw or in its JSON spelling.
#[tokio::test]
async fn a_bootstrap_token_with_json_escapes_never_appears() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let up = start_upstream().await;
    let token = r#"boot"strap\token-0123456789"#;
    let (mut p, admin, gateway) = spawn_serve(&data, dir.path(), &[("KEYTRAIL_LOG", "trace"), ("KEYTRAIL_BOOTSTRAP_TOKEN", token)]);
    let admin = Admin { token: token.to_string(), ..admin };
    let (_consumer, _, key) = admin.setup("acme", "/leak", &format!("http://{up}")).await;
    let mut answers = Vec::new();
    for (path, body) in [
        ("/v1/tenants/acme/apis", json!({"id": "b", "path_prefix": "/b", "upstream": format!("http://{up}"), "policies": {"forbidden_paths": [token]}})),
        ("/v1/blocklist", json!({"kind": "user_agent", "value": token})),
        ("/v1/tenants", json!({"id": "beta", "name": token})),
        ("/v1/tenants/acme/tiers", json!({"id": token})),
        ("/api/v1/settings/logging", json!({"log_api_calls": token})),
    ] {
        answers.push(admin.post(path, body).await.text);
    }
    let event = json!({"action": "x", "resource_type": "y", "resource_id": "1", "metadata": {"deep": [{"t": token}]}});
    answers.push(admin.post("/v1/audit/acme/events", event).await.text);
    let res = http().get(format!("{gateway}/leak/fixed")).header("X-API-Key", &key).header("User-Agent", token).send().await.unwrap();
    answers.push(res.text().await.unwrap());
    for path in ["/v1/audit/acme/admin?limit=1000", "/v1/audit/_system/admin?limit=1000", "/v1/audit/acme/events", "/v1/audit/acme/export/json?category=all", "/v1/audit/_system/export/json?category=all", "/v1/audit/acme/export/csv?category=all"] {
        answers.push(admin.get(path).await.text);
    }
    assert!(p.interrupt_and_wait().success());
    let outputs = everything_written(&p, &data, answers);
    let escaped = serde_json::to_string(token).unwrap();
    let escaped = &escaped[1..escaped.len() - 1];
    let debug = format!("{token:?}");
    let debug = &debug[1..debug.len() - 1];
    for form in [token, escaped, debug] {
        let places = found_in(form, &outputs);
        assert!(places.is_empty(), "the bootstrap token ({form}) was found in {places:?}");
    }
}
