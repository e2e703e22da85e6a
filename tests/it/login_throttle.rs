//! Sign-in throttling of `POST /v1/auth/login`: after too many failed
//! sign-ins for one name, or from one address, within the window, attempts
//! are refused with `429 too_many_attempts` and `Retry-After` for the
//! lockout — the right password too — the same way for names no admin has;
//! each lockout is one `admin_login_locked` security event.

use std::time::Duration;

use serde_json::{json, Value};

use crate::util::{everything_written, spawn_serve, Admin, Answer, TestServer, ADMIN_TOKEN};

const PASSWORD: &str = "correct horse battery staple";

/// A server with `adjust`ed sign-in limits, tenant `acme` and, in it, the
/// people `ada` and `bob` (both with [`PASSWORD`]); the owner, an anonymous
/// client and ada's admin id.
async fn setup(adjust: impl FnOnce(&mut keytrail::config::LoginConfig)) -> (TestServer, Admin, Admin, String) {
    setup_config(|c| adjust(&mut c.login)).await
}

/// [`setup`] with the whole configuration to adjust.
async fn setup_config(adjust: impl FnOnce(&mut keytrail::config::Config)) -> (TestServer, Admin, Admin, String) {
    let ts = TestServer::start_with(tempfile::tempdir().unwrap(), adjust).await;
    let owner = ts.admin_client();
    assert_eq!(owner.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    let mut ada = String::new();
    for name in ["ada", "bob"] {
        let a = owner.post("/v1/admins", json!({"name": name, "role": "auditor", "tenant_id": "acme", "password": PASSWORD})).await;
        assert_eq!(a.status, 201, "{}", a.text);
        if name == "ada" {
            ada = a.body["id"].as_str().unwrap().to_string();
        }
    }
    let anonymous = Admin { token: String::new(), ..owner.clone() };
    (ts, owner, anonymous, ada)
}

async fn login(client: &Admin, name: &str, password: &str) -> Answer {
    client.post("/v1/auth/login", json!({"name": name, "password": password})).await
}

/// The 429 of a lockout: its body, and a `Retry-After` of 1..=`lockout_secs`.
fn assert_locked(a: &Answer, lockout_secs: u64) {
    assert_eq!(a.status, 429, "{}", a.text);
    assert_eq!(a.body["error"]["code"], "too_many_attempts", "{}", a.text);
    assert!(a.body["error"]["message"].as_str().unwrap().contains("Retry-After"), "{}", a.text);
    assert!(a.headers["content-type"].starts_with("application/json"));
    let wait: u64 = a.headers.get("retry-after").unwrap_or_else(|| panic!("no Retry-After: {:?}", a.headers)).parse().unwrap();
    assert!((1..=lockout_secs).contains(&wait), "Retry-After {wait}");
    assert!(a.headers.contains_key("x-request-id"));
    assert!(!a.text.contains(PASSWORD));
}

async fn security(owner: &Admin, tenant: &str, event_type: &str) -> Vec<Value> {
    let a = owner.get(&format!("/v1/audit/{tenant}/security?event_type={event_type}&limit=1000")).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(!a.text.contains(PASSWORD), "{}", a.text);
    a.body["events"].as_array().unwrap().clone()
}

#[tokio::test]
async fn five_failures_lock_a_name_out_even_for_the_right_password_and_only_that_name() {
    let (ts, owner, anonymous, ada_id) = setup(|_| {}).await;
    for i in 0..5 {
        let a = login(&anonymous, "ada", &format!("wrong guess {i}")).await;
        assert_eq!((a.status, a.body["error"]["code"].as_str()), (401, Some("unauthorized")), "failure {i}: {}", a.text);
    }
    let refused = login(&anonymous, "ada", "wrong guess 5").await;
    assert_locked(&refused, 900);
    // The right password is refused too: the lockout tells a guesser nothing.
    let right = login(&anonymous, "ada", PASSWORD).await;
    assert_locked(&right, 900);
    assert_eq!(right.text, refused.text, "the same answer whatever the password");
    // Other names are not locked out.
    assert_eq!(login(&anonymous, "bob", PASSWORD).await.status, 200);

    ts.flush().await;
    let locked = security(&owner, "acme", "admin_login_locked").await;
    assert_eq!(locked.len(), 1, "one event per lockout, not per refused attempt: {locked:?}");
    let event = &locked[0];
    assert_eq!(event["target"], format!("admin:{ada_id}"));
    assert_eq!(event["actor"], "keytrail:login-throttle");
    assert_eq!(event["client_ip"], "127.0.0.1");
    assert_eq!(event["details"]["scope"], "name");
    assert_eq!(event["details"]["failures"], 5);
    assert_eq!(event["details"]["window_secs"], 900);
    assert_eq!(event["details"]["lockout_secs"], 900);
    assert!(event["details"]["expires_at"].is_string(), "{event}");
    // Refused attempts are counted, not recorded: five failures in the trail.
    assert_eq!(security(&owner, "acme", "admin_login_failed").await.len(), 5);
    let status = owner.get("/v1/status").await;
    assert_eq!(status.body["login_throttle"], json!({"lockouts": 1, "refused": 2, "locked_names": 1, "locked_addresses": 0, "locked_bearer_addresses": 0}), "{}", status.text);
}

#[tokio::test]
async fn an_unknown_name_is_counted_and_locked_out_the_same_way() {
    let (ts, owner, anonymous, _) = setup(|_| {}).await;
    for i in 0..5 {
        let known = login(&anonymous, "ada", &format!("wrong guess {i}")).await;
        let unknown = login(&anonymous, "nobody", &format!("wrong guess {i}")).await;
        assert_eq!((unknown.status, &unknown.text), (known.status, &known.text), "failure {i}");
    }
    let known = login(&anonymous, "ada", PASSWORD).await;
    let unknown = login(&anonymous, "nobody", PASSWORD).await;
    assert_locked(&known, 900);
    assert_locked(&unknown, 900);
    assert_eq!(unknown.text, known.text);
    assert_eq!(unknown.headers["retry-after"], known.headers["retry-after"]);

    ts.flush().await;
    let locked = security(&owner, "_system", "admin_login_locked").await;
    assert_eq!(locked.len(), 1, "{locked:?}");
    assert_eq!(locked[0]["target"], "admin_name:unknown");
    assert_eq!(locked[0]["details"]["scope"], "name");
    let text = serde_json::to_string(&locked).unwrap();
    assert!(!text.contains("nobody"), "the unknown name is not kept: {text}");
}

#[tokio::test]
async fn a_successful_sign_in_resets_the_names_failures() {
    let (_ts, _owner, anonymous, _) = setup(|_| {}).await;
    for round in 0..3 {
        for i in 0..4 {
            assert_eq!(login(&anonymous, "ada", &format!("wrong {round} {i}")).await.status, 401, "round {round}, failure {i}");
        }
        let a = login(&anonymous, "ada", PASSWORD).await;
        assert_eq!(a.status, 200, "round {round}: {}", a.text);
    }
}

#[tokio::test]
async fn one_address_spraying_many_names_is_locked_out_past_its_own_limit() {
    let (ts, owner, anonymous, _) = setup(|_| {}).await;
    // Twenty names, one guess each: no name reaches its limit.
    for i in 0..20 {
        let a = login(&anonymous, &format!("user-{i}"), "a guess at it").await;
        assert_eq!(a.status, 401, "name {i}: {}", a.text);
    }
    // The address is now locked out: a fresh name, and a right password.
    assert_locked(&login(&anonymous, "user-20", "a guess at it").await, 900);
    assert_locked(&login(&anonymous, "bob", PASSWORD).await, 900);

    ts.flush().await;
    let locked = security(&owner, "_system", "admin_login_locked").await;
    assert_eq!(locked.len(), 1, "{locked:?}");
    assert_eq!(locked[0]["target"], "ip:127.0.0.1");
    assert_eq!(locked[0]["details"]["scope"], "address");
    assert_eq!(locked[0]["details"]["failures"], 20);
    let status = owner.get("/v1/status").await;
    assert_eq!(status.body["login_throttle"]["locked_addresses"], 1, "{}", status.text);
    assert_eq!(status.body["login_throttle"]["locked_names"], 0, "{}", status.text);
}

#[tokio::test]
async fn attempts_sent_at_once_get_no_more_guesses_than_the_limit() {
    let (_ts, _owner, anonymous, _) = setup(|_| {}).await;
    let attempts = (0..12).map(|i| {
        let anonymous = anonymous.clone();
        tokio::spawn(async move { login(&anonymous, "ada", &format!("parallel guess {i}")).await.status })
    });
    let mut statuses = Vec::new();
    for attempt in attempts {
        statuses.push(attempt.await.unwrap());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429, 429, 429, 429, 429, 429], "five passwords checked, no more");
}

#[tokio::test]
async fn a_lockout_ends_after_its_time() {
    let (_ts, _owner, anonymous, _) = setup(|l| {
        l.name_failures = 2;
        l.lockout = Duration::from_secs(1);
    })
    .await;
    for _ in 0..2 {
        assert_eq!(login(&anonymous, "ada", "a wrong password").await.status, 401);
    }
    let a = login(&anonymous, "ada", PASSWORD).await;
    assert_locked(&a, 1);
    assert_eq!(a.headers["retry-after"], "1");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let a = login(&anonymous, "ada", PASSWORD).await;
    assert_eq!(a.status, 200, "{}", a.text);
}

#[tokio::test]
async fn malformed_bodies_are_400_and_not_counted_as_failed_sign_ins() {
    let (ts, owner, anonymous, _) = setup(|l| l.name_failures = 2).await;
    let bodies = [
        Some(json!({"name": "ada"})),
        Some(json!({"password": "a guess at it"})),
        Some(json!({"name": "ada", "password": 12345678901234_u64})),
        Some(json!({"name": ["ada"], "password": "a guess at it"})),
        Some(json!({"name": "ada", "password": "a guess at it", "otp": "123456"})),
        Some(json!("ada")),
        None,
    ];
    for _ in 0..3 {
        for body in &bodies {
            let a = anonymous.call("POST", "/v1/auth/login", body.clone()).await;
            assert_eq!((a.status, a.body["error"]["code"].as_str()), (400, Some("invalid_body")), "{body:?}: {}", a.text);
            assert!(a.body["error"]["message"].is_string());
        }
        let res = ts.client.post(format!("{}/v1/auth/login", ts.admin)).header("content-type", "application/json").body("{\"name\": \"ada\", ").send().await.unwrap();
        assert_eq!(res.status(), 400);
        // A body past the limit gets the API's JSON 413 (axum's plain-text
        // one before), with or without a declared length, and no count.
        let huge = json!({"name": "ada", "password": "x".repeat(3 << 20)});
        let a = anonymous.call("POST", "/v1/auth/login", Some(huge)).await;
        assert_eq!((a.status, a.body["error"]["code"].as_str()), (413, Some("payload_too_large")), "{}", &a.text[..a.text.len().min(200)]);
        assert!(a.body["error"]["message"].as_str().unwrap().contains("64 KiB"), "{}", a.text);
        let chunks = futures_util::stream::iter((0..80).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024])));
        let res = ts.client.post(format!("{}/v1/auth/login", ts.admin)).body(reqwest::Body::wrap_stream(chunks)).send().await.unwrap();
        assert_eq!(res.status(), 413);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "payload_too_large");
    }
    // None of them counted: the right password still signs in.
    assert_eq!(login(&anonymous, "ada", PASSWORD).await.status, 200);
    ts.flush().await;
    assert!(security(&owner, "acme", "admin_login_failed").await.is_empty());
    // During a lockout bad input is still told it is bad input.
    for _ in 0..2 {
        assert_eq!(login(&anonymous, "ada", "a wrong password").await.status, 401);
    }
    assert_locked(&login(&anonymous, "ada", PASSWORD).await, 900);
    assert_eq!(anonymous.call("POST", "/v1/auth/login", Some(json!({"name": "ada"}))).await.status, 400);
}

#[tokio::test]
async fn limits_of_zero_turn_throttling_off() {
    let (_ts, _owner, anonymous, _) = setup(|l| {
        l.name_failures = 0;
        l.address_failures = 0;
    })
    .await;
    for i in 0..25 {
        assert_eq!(login(&anonymous, "ada", &format!("wrong {i}")).await.status, 401);
    }
    assert_eq!(login(&anonymous, "ada", PASSWORD).await.status, 200);
}

/// `anonymous` as a proxy passing on a call from `client` (`X-Forwarded-For`).
fn forwarding(anonymous: &Admin, client: &str) -> Admin {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-forwarded-for", client.parse().unwrap());
    Admin { client: reqwest::Client::builder().default_headers(headers).build().unwrap(), ..anonymous.clone() }
}

/// Sign-in by address, with an address limit of 3 and no name limit.
fn three_per_address(c: &mut keytrail::config::Config) {
    c.login.name_failures = 0;
    c.login.address_failures = 3;
}

/// [`three_per_address`] behind a trusted proxy at 127.0.0.1, so each
/// test client can name its address (`X-Forwarded-For`, [`forwarding`]).
fn three_per_address_behind_a_proxy(c: &mut keytrail::config::Config) {
    three_per_address(c);
    c.admin_trusted_proxies = keytrail::protection::TrustedProxies::parse(&["127.0.0.1".to_string()]).unwrap();
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_is_counted_not_the_proxy() {
    let (ts, owner, anonymous, _) = setup_config(three_per_address_behind_a_proxy).await;
    let guesser = forwarding(&anonymous, "203.0.113.7");
    for i in 0..3 {
        assert_eq!(login(&guesser, &format!("user-{i}"), "a guess").await.status, 401);
    }
    assert_locked(&login(&guesser, "bob", PASSWORD).await, 900);
    // Everyone else behind the same proxy still signs in.
    let colleague = forwarding(&anonymous, "10.1.2.3, 198.51.100.9");
    assert_eq!(login(&colleague, "bob", PASSWORD).await.status, 200);

    ts.flush().await;
    let locked = security(&owner, "_system", "admin_login_locked").await;
    assert_eq!(locked.len(), 1, "{locked:?}");
    assert_eq!(locked[0]["target"], "ip:203.0.113.7");
    assert_eq!(locked[0]["client_ip"], "203.0.113.7");
    // The forwarded address is the one the trail records for the sign-in.
    let logins = security(&owner, "acme", "admin_login").await;
    assert_eq!(logins.len(), 1, "{logins:?}");
    assert_eq!(logins[0]["client_ip"], "198.51.100.9");
}

#[tokio::test]
async fn a_forwarded_address_from_a_peer_that_is_not_a_trusted_proxy_is_ignored() {
    // No trusted proxies: a caller cannot escape its lockout by naming
    // another address in `X-Forwarded-For`.
    let (ts, owner, anonymous, _) = setup_config(three_per_address).await;
    for i in 0..3 {
        let spoofing = forwarding(&anonymous, &format!("203.0.113.{i}"));
        assert_eq!(login(&spoofing, &format!("user-{i}"), "a guess").await.status, 401);
    }
    assert_locked(&login(&forwarding(&anonymous, "198.51.100.9"), "bob", PASSWORD).await, 900);
    ts.flush().await;
    let locked = security(&owner, "_system", "admin_login_locked").await;
    assert_eq!(locked.len(), 1, "{locked:?}");
    assert_eq!(locked[0]["target"], "ip:127.0.0.1");
}

/// Bearer tokens that fail on the admin API: an unknown admin token (as
/// short as an operator may choose one), an unknown session token, a
/// malformed API key sent as a bearer (to the application-events route,
/// where a well-formed key would be checked as a key).
fn bad_bearers() -> Vec<String> {
    let mut malformed = keytrail::keys::generate_key(keytrail::keys::KeyEnvironment::Live).secret;
    malformed.pop();
    malformed.push('!');
    vec!["guess-0123456789".to_string(), format!("{}{}", keytrail::keys::SESSION_TOKEN_PREFIX, "x".repeat(40)), malformed]
}

/// A call with `token` as the bearer: a read for the first two, an
/// application event for the third.
async fn with_bearer(client: &Admin, token: &str, i: usize) -> Answer {
    let client = Admin { token: token.to_string(), ..client.clone() };
    if i % 3 == 2 {
        client.post("/v1/audit/acme/events", json!({"action": "x", "resource_type": "t", "resource_id": "1"})).await
    } else {
        client.get("/v1/tenants").await
    }
}

#[tokio::test]
async fn failed_bearer_tokens_are_recorded_and_lock_their_address_out_even_for_a_valid_token() {
    let (ts, owner, anonymous, _) = setup_config(three_per_address_behind_a_proxy).await;
    let guesser = forwarding(&anonymous, "203.0.113.7");
    let bad = bad_bearers();
    for (i, token) in bad.iter().enumerate() {
        let a = with_bearer(&guesser, token, i).await;
        assert_eq!((a.status, a.body["error"]["code"].as_str()), (401, Some("unauthorized")), "{token}: {}", a.text);
        assert!(!a.text.contains(token.as_str()));
    }
    // Locked out: a fourth guess, and the right token too (or the lockout
    // would tell the guesser which guess was right).
    assert_locked(&with_bearer(&guesser, "another-guess-0123", 0).await, 900);
    let right = with_bearer(&guesser, ADMIN_TOKEN, 0).await;
    assert_locked(&right, 900);
    // Others, and sign-ins from that address, go on.
    assert_eq!(with_bearer(&forwarding(&owner, "198.51.100.9"), ADMIN_TOKEN, 0).await.status, 200);
    assert_eq!(owner.get("/v1/tenants").await.status, 200);
    assert_eq!(login(&guesser, "bob", PASSWORD).await.status, 200);

    ts.flush().await;
    let failed = security(&owner, "_system", "admin_login_failed").await;
    assert_eq!(failed.len(), 3, "one event per failed token, none per refused one: {failed:?}");
    for event in &failed {
        assert_eq!(event["client_ip"], "203.0.113.7", "{event}");
        assert_eq!(event["outcome"], "failure", "{event}");
        assert_eq!(event["target"], "admin_token:unknown", "{event}");
        assert!(event["actor"].is_null(), "{event}");
        assert!(event.get("key_hint").is_none_or(Value::is_null), "not even a hint of a guess: {event}");
        let text = event.to_string();
        for token in bad.iter().chain([&ADMIN_TOKEN.to_string()]) {
            assert!(!text.contains(token.as_str()), "{text}");
        }
    }
    let presented: Vec<&str> = failed.iter().map(|e| e["details"]["presented"].as_str().unwrap()).collect();
    assert!(presented.contains(&"session_token") && presented.contains(&"api_key") && presented.contains(&"other"), "{presented:?}");
    let locked = security(&owner, "_system", "admin_login_locked").await;
    assert_eq!(locked.len(), 1, "{locked:?}");
    assert_eq!(locked[0]["target"], "ip:203.0.113.7");
    assert_eq!(locked[0]["details"]["scope"], "address");
    assert_eq!(locked[0]["details"]["credential"], "bearer");
    let status = owner.get("/v1/status").await;
    assert_eq!(status.body["login_throttle"]["locked_bearer_addresses"], 1, "{}", status.text);
    assert_eq!(status.body["login_throttle"]["locked_addresses"], 0, "{}", status.text);
}

#[tokio::test]
async fn a_failed_bearer_token_leaves_nothing_of_itself_in_any_output() {
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let (mut p, admin, _) = spawn_serve(data.path(), out.path(), &[]);
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    let bad = bad_bearers();
    let mut answers = Vec::new();
    for (i, token) in bad.iter().enumerate() {
        let a = with_bearer(&admin, token, i).await;
        assert_eq!(a.status, 401, "{}", a.text);
        answers.push(a.text);
    }
    let mut failed = Vec::new();
    for _ in 0..100 {
        let a = admin.get("/v1/audit/_system/security?event_type=admin_login_failed").await;
        assert_eq!(a.status, 200, "{}", a.text);
        failed = a.body["events"].as_array().unwrap().clone();
        answers.push(a.text);
        if failed.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(failed.len(), 3, "{failed:?}");
    assert!(p.interrupt_and_wait().success());
    let outputs = everything_written(&p, data.path(), answers);
    crate::util::assert_no_secret(&bad.iter().collect::<Vec<_>>(), &outputs);
}

/// An owner can lift an admin's sign-in lockout before it ends
/// (`POST /v1/admins/{id}/unlock`), as Kong's and Unkey's operators unlock
/// an account: the name's failures are forgotten and the admin signs in at
/// once. Only owners may (`ManageAdmins`); a tenant-bound owner reaches its
/// own tenant's admins only (another's get the same 404 as a missing id).
/// The lift is an `admin_login_unlocked` security event where the lockout
/// was recorded, and an `ADMIN_UNLOCKED` entry of the admin log; a locked
/// address stays locked (it is the guesser's).
#[tokio::test]
async fn an_owner_lifts_a_names_lockout_and_nobody_else_may() {
    let (ts, owner, anonymous, ada_id) = setup(|_| {}).await;
    assert_eq!(owner.post("/v1/tenants", json!({"id": "other", "name": "Other"})).await.status, 201);
    let acme_owner = &owner.new_admin("acme-owner", "owner", Some("acme")).await;
    let acme_admin = &owner.new_admin("acme-admin", "admin", Some("acme")).await;
    let other_owner = &owner.new_admin("other-owner", "owner", Some("other")).await;
    for i in 0..5 {
        assert_eq!(login(&anonymous, "ada", &format!("wrong guess {i}")).await.status, 401);
    }
    assert_locked(&login(&anonymous, "ada", PASSWORD).await, 900);
    let unlock = format!("/v1/admins/{ada_id}/unlock");

    // Not an admin's, nor another tenant's owner's.
    let a = acme_admin.post(&unlock, Value::Null).await;
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (403, Some("forbidden")), "{}", a.text);
    let a = other_owner.post(&unlock, Value::Null).await;
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (404, Some("not_found")), "{}", a.text);
    assert_eq!(acme_owner.post("/v1/admins/adm_nope/unlock", Value::Null).await.status, 404);
    assert_locked(&login(&anonymous, "ada", PASSWORD).await, 900);

    let a = acme_owner.post(&unlock, Value::Null).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!((a.body["admin"]["id"].as_str(), a.body["was_locked"].as_bool()), (Some(ada_id.as_str()), Some(true)), "{}", a.text);
    assert!(a.body["lockout_expires_at"].is_string(), "{}", a.text);
    assert!(a.body["admin"].get("password_hash").is_none() && !a.text.contains("argon2"), "{}", a.text);
    assert_eq!(login(&anonymous, "ada", PASSWORD).await.status, 200, "signs in at once");
    let status = owner.get("/v1/status").await;
    assert_eq!(status.body["login_throttle"]["locked_names"], 0, "{}", status.text);
    // Failures short of a lockout are forgotten too; nothing was locked.
    for i in 0..4 {
        assert_eq!(login(&anonymous, "ada", &format!("wrong again {i}")).await.status, 401);
    }
    let a = owner.post(&unlock, Value::Null).await;
    assert_eq!((a.status, a.body["was_locked"].as_bool(), a.body["failures"].as_u64()), (200, Some(false), Some(4)), "{}", a.text);
    assert!(a.body["lockout_expires_at"].is_null(), "{}", a.text);
    assert_eq!(login(&anonymous, "ada", "wrong once more").await.status, 401, "a fresh count: the fifth failure locks nothing");

    ts.flush().await;
    let lifted = security(&owner, "acme", "admin_login_unlocked").await;
    assert_eq!(lifted.len(), 2, "{lifted:?}");
    let first = lifted.last().unwrap();
    assert_eq!(first["target"], format!("admin:{ada_id}"));
    assert!(first["actor"].as_str().is_some_and(|a| a.starts_with("admin:adm_")), "{first}");
    assert_eq!(first["details"]["was_locked"], true, "{first}");
    assert!(first["details"]["lockout_expires_at"].is_string(), "{first}");
    assert_eq!((lifted[0]["details"]["was_locked"].as_bool(), lifted[0]["details"]["failures"].as_u64()), (Some(false), Some(4)), "{}", lifted[0]);
    let log = owner.get("/v1/audit/acme/admin?action=ADMIN_UNLOCKED").await;
    let outcomes: Vec<&str> = log.body["entries"].as_array().unwrap().iter().map(|e| e["outcome"].as_str().unwrap()).collect();
    // Newest first: the global owner's and the tenant owner's succeeded;
    // the unknown id's failed, the admin's was refused (the other tenant's
    // owner's refusal is in its own tenant's log).
    assert_eq!(outcomes, ["success", "success", "failure", "failure"], "{}", log.text);
}

/// A global owner can lift a client address's lockouts before they end
/// (`POST /v1/addresses/{address}/unlock`) — an owner whose own office
/// address a misconfigured script locked out: sign-ins and bearer tokens
/// from it are taken again at once, its failures forgotten. Global owners
/// only (an address's lockout holds for every tenant); an address that is
/// none is 400. The lift is an `admin_login_unlocked` security event in
/// `_system` aimed at `ip:<address>`, and an `ADDRESS_UNLOCKED` admin-log
/// entry.
#[tokio::test]
async fn a_global_owner_lifts_an_addresses_lockouts_and_nobody_else_may() {
    let (ts, owner, anonymous, _) = setup_config(three_per_address_behind_a_proxy).await;
    let acme_owner = &owner.new_admin("acme-owner", "owner", Some("acme")).await;
    let global_admin = &owner.new_admin("global-admin", "admin", None).await;
    let office = forwarding(&anonymous, "203.0.113.7");
    for i in 0..2 {
        assert_eq!(login(&office, &format!("user-{i}"), "a guess").await.status, 401);
    }
    for (i, token) in bad_bearers().iter().enumerate() {
        assert_eq!(with_bearer(&office, token, i).await.status, 401);
    }
    assert_locked(&with_bearer(&office, ADMIN_TOKEN, 0).await, 900);
    let unlock = "/v1/addresses/203.0.113.7/unlock";

    let a = global_admin.post(unlock, Value::Null).await;
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (403, Some("forbidden")), "{}", a.text);
    let a = acme_owner.post(unlock, Value::Null).await;
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (403, Some("forbidden")), "{}", a.text);
    for bad in ["not-an-address", "203.0.113", "203.0.113.7:80", "2001:db8::zz"] {
        let a = owner.post(&format!("/v1/addresses/{bad}/unlock"), Value::Null).await;
        assert_eq!((a.status, a.body["error"]["code"].as_str()), (400, Some("invalid_parameter")), "{bad}: {}", a.text);
        assert!(a.body["error"]["message"].as_str().unwrap().contains("203.0.113.7 or 2001:db8::1"), "{}", a.text);
    }
    assert_locked(&with_bearer(&office, ADMIN_TOKEN, 0).await, 900);

    let a = owner.post(unlock, Value::Null).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!((a.body["address"].as_str(), a.body["was_locked"].as_bool()), (Some("203.0.113.7"), Some(true)), "{}", a.text);
    let bearer = &a.body["bearer_tokens"];
    assert_eq!((bearer["was_locked"].as_bool(), bearer["failures"].as_u64()), (Some(true), Some(0)), "{}", a.text);
    assert!(bearer["lockout_expires_at"].is_string(), "{}", a.text);
    let sign_in = &a.body["sign_in"];
    assert_eq!((sign_in["was_locked"].as_bool(), sign_in["failures"].as_u64()), (Some(false), Some(2)), "{}", a.text);
    assert!(sign_in["lockout_expires_at"].is_null(), "{}", a.text);
    assert!(!a.text.contains(ADMIN_TOKEN), "{}", a.text);
    // Taken again at once, with a fresh count.
    assert_eq!(with_bearer(&office, ADMIN_TOKEN, 0).await.status, 200);
    for i in 0..2 {
        assert_eq!(login(&office, &format!("user-{i}"), "a guess").await.status, 401, "a fresh count: two more lock nothing");
    }
    assert_eq!(login(&office, "bob", PASSWORD).await.status, 200);
    let status = owner.get("/v1/status").await;
    assert_eq!(status.body["login_throttle"]["locked_bearer_addresses"], 0, "{}", status.text);
    assert_eq!(status.body["login_throttle"]["locked_addresses"], 0, "{}", status.text);
    // An IPv6 address lifts its /64; nothing locked is answered too.
    let a = owner.post("/v1/addresses/2001:db8::7/unlock", Value::Null).await;
    assert_eq!((a.status, a.body["address"].as_str(), a.body["was_locked"].as_bool()), (200, Some("2001:db8::/64"), Some(false)), "{}", a.text);

    ts.flush().await;
    let lifted = security(&owner, "_system", "admin_login_unlocked").await;
    assert_eq!(lifted.len(), 2, "{lifted:?}");
    let first = lifted.last().unwrap();
    assert_eq!(first["target"], "ip:203.0.113.7", "{first}");
    assert!(first["actor"].as_str().is_some_and(|a| a.starts_with("admin:")), "{first}");
    assert_eq!(first["details"]["bearer_tokens"]["was_locked"], true, "{first}");
    assert_eq!(first["details"]["sign_in"]["failures"], 2, "{first}");
    assert_eq!(lifted[0]["target"], "ip:2001:db8::/64", "{}", lifted[0]);
    let log = owner.get("/v1/audit/_system/admin?action=ADDRESS_UNLOCKED").await;
    let outcomes: Vec<&str> = log.body["entries"].as_array().unwrap().iter().map(|e| e["outcome"].as_str().unwrap()).collect();
    // Newest first: the IPv6 lift, the lift, the four bad addresses, the
    // global admin's refusal (the tenant owner's is in its tenant's log).
    assert_eq!(outcomes, ["success", "success", "failure", "failure", "failure", "failure", "failure"], "{}", log.text);
}
