//! Secrets in every output, in spellings a plain search misses (JSON
//! escapes, percent-escapes, other field names), and statistics against a
//! count of the raw events.

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

/// Keys percent-encoded (wholly or in part) in a gateway path or query, in
/// an admin path, and a key as a header name: the key's random part is
/// never stored or printed.
#[tokio::test]
async fn percent_encoded_keys_never_appear() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let up = start_upstream().await;
    let (mut p, admin, gateway) = spawn_serve(&data, dir.path(), &[("KEYTRAIL_LOG", "trace")]);
    let (_consumer, _, key) = admin.setup("acme", "/leak", &format!("http://{up}")).await;
    let escaped_prefix = key.replace('_', "%5F");
    let escaped_first = format!("{}%{:02X}{}", &key[..8], key.as_bytes()[8], &key[9..]);
    let client = http();
    let mut answers: Vec<String> = Vec::new();
    for form in [&escaped_prefix, &escaped_first] {
        for url in [
            format!("{gateway}/leak/{form}/fixed"),
            format!("{gateway}/leak/fixed?api_key={form}"),
            format!("{gateway}/nowhere/{form}"),
        ] {
            let res = client.get(url).header("X-API-Key", &key).send().await.unwrap();
            answers.push(res.text().await.unwrap());
        }
        answers.push(admin.post(&format!("/v1/keys/{form}/revoke"), json!({})).await.text);
        answers.push(admin.get(&format!("/v1/audit/acme?consumer_id={form}")).await.text);
    }
    let res = client.get(format!("{gateway}/leak/fixed")).header("X-API-Key", &key).header(key.as_str(), "x").send().await.unwrap();
    answers.push(res.text().await.unwrap());
    for path in ["/v1/audit/acme?limit=1000", "/v1/audit/_system?limit=1000", "/v1/audit/acme/admin?limit=1000", "/v1/audit/_system/admin?limit=1000", "/v1/audit/acme/security?limit=1000", "/v1/audit/acme/export/json?category=all", "/v1/audit/_system/export/json?category=all", "/v1/audit/acme/export/csv?category=all"] {
        let a = admin.get(path).await;
        answers.push(a.text);
    }
    assert!(p.interrupt_and_wait().success());
    let outputs = everything_written(&p, &data, answers);
    let random_part = &key[9..];
    let places = found_in(random_part, &outputs);
    assert!(places.is_empty(), "the key's random part was found in {places:?}");
}

/// A key a caller put in the target in other ways: in the query under any
/// name, escaped, repeated or split across fields (the query is never
/// kept), and in the path with its prefix in capitals, escaped more often
/// than an upstream decodes, or split across segments and parameters (kept
/// masked): no large piece of its random part is stored or printed.
#[tokio::test]
async fn keys_split_or_respelled_in_the_target_never_appear() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let up = start_upstream().await;
    let (mut p, admin, gateway) = spawn_serve(&data, dir.path(), &[("KEYTRAIL_LOG", "trace")]);
    let (_consumer, _, key) = admin.setup("acme", "/leak", &format!("http://{up}")).await;
    let (prefix, body) = key.split_at(8);
    let (a, b) = key.split_at(14);
    let escaped: String = key.bytes().map(|c| format!("%{c:02X}")).collect();
    let targets = [
        format!("/leak/fixed?api_key={a}&api_key={b}"),
        format!("/leak/fixed?apikey={key}&API_KEY={key}&token={escaped}&k={prefix}&k={body}"),
        format!("/leak/KT_LIVE_{body}"),
        format!("/leak/kt%25255Flive%25255F{body}"),
        format!("/leak/{a}/{b}"),
        format!("/leak/fixed;api_key={a};api_key={b}"),
        format!("/leak/{}/{}/{}", &key[..20], &key[20..30], &key[30..]),
        format!("/nowhere/{a};x={b}"),
        format!("/leak/a%3Cb%3E/{body}?k={key}"),
    ];
    let client = http();
    for target in &targets {
        // With the key in its header and without (refused, recorded all the same).
        client.get(format!("{gateway}{target}")).header("X-API-Key", &key).send().await.unwrap();
        client.get(format!("{gateway}{target}")).send().await.unwrap();
    }
    // Gateway answers are the upstream's echo: only keytrail's own outputs count.
    let mut answers = Vec::new();
    for path in ["/v1/audit/acme?limit=1000", "/v1/audit/_system?limit=1000", "/v1/audit/acme/security?limit=1000", "/v1/audit/acme/export/json?category=all", "/v1/audit/_system/export/json?category=all", "/v1/audit/acme/export/csv?category=all"] {
        answers.push(admin.get(path).await.text);
    }
    assert!(answers[0].contains("/leak/"), "the calls are recorded: {}", answers[0]);
    assert!(p.interrupt_and_wait().success());
    let outputs = everything_written(&p, &data, answers);
    for piece in [&body[..12], &body[13..25], &body[26..]] {
        let places = found_in(piece, &outputs);
        assert!(places.is_empty(), "a piece of the key ({piece}) was found in {places:?}");
    }
}

/// Admin and session tokens have no checksum: masking found them only
/// behind their exact lowercase prefix, so a real admin token in a path as
/// `KTA_<rest>` (or `Kta%5F<rest>`) was stored whole. The prefixes are now
/// recognised in any case, escaped or not: the token's rest is never kept.
#[tokio::test]
async fn admin_tokens_with_a_respelled_prefix_never_appear() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let up = start_upstream().await;
    let (mut p, admin, gateway) = spawn_serve(&data, dir.path(), &[]);
    let (_consumer, _, key) = admin.setup("acme", "/leak", &format!("http://{up}")).await;
    let a = admin.post("/v1/admins", serde_json::json!({"name": "ops", "role": "viewer"})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let token = a.body["token"].as_str().unwrap().to_string();
    let rest = token.strip_prefix("kta_").expect("an admin token").to_string();
    let client = http();
    for target in [format!("/leak/KTA_{rest}"), format!("/leak/x?t=Kta%5F{rest}"), format!("/leak/kTs_{rest}")] {
        client.get(format!("{gateway}{target}")).header("X-API-Key", &key).send().await.unwrap();
    }
    // The calls reach the store within the writer's flush interval.
    for _ in 0..50 {
        if admin.get("/v1/audit/acme?limit=1000").await.text.matches("/leak/").count() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut answers = Vec::new();
    for path in ["/v1/audit/acme?limit=1000", "/v1/audit/acme/export/json?category=all"] {
        answers.push(admin.get(path).await.text);
    }
    assert!(answers[0].contains("/leak/"), "the calls are recorded: {}", answers[0]);
    assert!(p.interrupt_and_wait().success());
    let outputs = everything_written(&p, &data, answers);
    let places = found_in(&rest, &outputs);
    assert!(places.is_empty(), "the admin token's rest was found in {places:?}");
}

/// A person's password sent under a misspelt or nested field (a refused
/// change, retried with the right field) is not kept in the admin log:
/// the intent records the body before the change is checked.
#[tokio::test]
async fn a_password_under_another_field_name_is_not_logged() {
    let ts = crate::util::TestServer::start().await;
    let admin = ts.admin_client();
    let password = "correct-horse-battery-4471";
    for body in [
        json!({"name": "ada", "role": "auditor", "Password": password}),
        json!({"name": "ada", "role": "auditor", "passwd": password}),
        json!({"name": "ada", "role": "auditor", "new_password": password}),
        json!({"name": "ada", "role": "auditor", "pwd": password}),
        json!({"name": "ada", "role": "auditor", "PW": password}),
        json!({"admin": {"name": "ada", "role": "auditor", "password": password}}),
        json!({"name": "ada", "role": "auditor", "credentials": [{"api_key": password, "secret_token": password}]}),
    ] {
        assert_eq!(admin.post("/v1/admins", body.clone()).await.status, 400, "{body}");
    }
    assert_eq!(admin.post("/v1/admins", json!({"name": "ada", "role": "auditor", "password": password})).await.status, 201);
    let login = Admin { token: String::new(), ..admin.clone() }.post("/v1/auth/login", json!({"name": "ada", "password": password})).await;
    assert_eq!(login.status, 200, "{}", login.text);
    ts.flush().await;
    let log = admin.get("/v1/audit/_system/admin?limit=1000").await;
    assert_eq!(log.status, 200);
    assert!(log.text.contains("\"role\":\"auditor\""), "the bodies are logged: {}", log.text);
    let export = admin.get("/v1/audit/_system/export/json?category=all").await.text;
    for (name, text) in [("admin log", &log.text), ("export", &export)] {
        assert!(!text.contains(password), "the password is in the {name}: {text}");
    }
}

/// A password sent as a JSON number (a script's unquoted `$PW`) is refused,
/// and neither the answer nor the admin log quotes it back: serde's message
/// (`invalid type: integer `…``) held it, and the change's outcome keeps
/// the answer's message.
#[tokio::test]
async fn a_password_of_the_wrong_type_is_not_quoted_back_or_logged() {
    let ts = crate::util::TestServer::start().await;
    let admin = ts.admin_client();
    for password in [json!(4471928364510273_u64), json!(4471.92836451), json!(true)] {
        let a = admin.post("/v1/admins", json!({"name": "ada", "role": "auditor", "password": password})).await;
        assert_eq!(a.status, 400, "{}", a.text);
        assert!(a.text.contains("`password`"), "the field is named: {}", a.text);
        assert!(!a.text.contains("4471"), "the password is quoted: {}", a.text);
        let login = Admin { token: String::new(), ..admin.clone() }.post("/v1/auth/login", json!({"name": "ada", "password": password})).await;
        assert_eq!(login.status, 400, "{}", login.text);
        assert!(!login.text.contains("4471"), "the password is quoted: {}", login.text);
    }
    ts.flush().await;
    let log = admin.get("/v1/audit/_system/admin?limit=1000").await;
    assert!(log.text.contains("ADMIN_CREATED"), "{}", log.text);
    assert!(!log.text.contains("4471"), "the password is in the admin log: {}", log.text);
}
