//! Blocklists and attack rules over real sockets: IPv4, IPv6 and CIDR
//! entries, user agents, keys, SQL injection, traversal, malformed
//! requests, the automatic brute-force block and its expiry — each a generic
//! 403 for the caller and a detailed trail for the operator.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::{start_upstream, Admin, TestServer};

async fn get(ts: &TestServer, path: &str, key: &str, user_agent: &str) -> (u16, String) {
    let res = ts
        .client
        .get(format!("{}{}", ts.gateway, path))
        .header("x-api-key", key)
        .header("user-agent", user_agent)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

/// The generic refusal: no hint of the rule.
fn assert_generic_403(status: u16, body: &str) {
    assert_eq!(status, 403, "{body}");
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v, json!({"error": {"code": "forbidden", "message": "this request is not allowed"}}));
}

async fn add(admin: &Admin, path: &str, body: Value) -> Value {
    let a = admin.post(path, body).await;
    assert_eq!(a.status, 201, "{}", a.text);
    a.body
}

/// Blocked request events of `tenant`, newest first.
async fn blocked(admin: &Admin, tenant: &str, n: usize) -> Vec<Value> {
    let logs = admin.wait_for(&format!("/v1/audit/{tenant}?status_min=403&status_max=403"), "logs", n).await;
    logs.into_iter().filter(|e| e["error_code"] == "request_blocked").collect()
}

#[tokio::test]
async fn ip_entries_block_by_address_range_scope_and_until_they_expire() {
    let mut ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    let (_, _, other_key) = admin.setup("globex", "/globex", &format!("http://{up}")).await;

    // A global entry for this very address.
    let entry = add(&admin, "/v1/blocklist", json!({"kind": "ip", "value": "127.0.0.1", "rule_id": "block-local"})).await;
    assert_eq!(entry["reason"], "IP_BLOCKLISTED");
    assert_eq!(entry["added_by"], "admin:adm_bootstrap");
    let (status, body) = get(&ts, "/docs/fixed", &key, "test").await;
    assert_generic_403(status, &body);
    let (status, body) = get(&ts, "/globex/fixed", &other_key, "test").await;
    assert_generic_403(status, &body);
    let (status, _) = get(&ts, "/docs/fixed", &key, "test").await;
    assert_eq!(status, 403);

    let events = blocked(&admin, "acme", 2).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["block_reason"], "IP_BLOCKLISTED");
    assert_eq!(events[1]["rule_id"], "block-local");
    assert_eq!(events[1]["fingerprint"].as_str().unwrap().len(), 16);
    assert_eq!(events[0]["fingerprint"], events[1]["fingerprint"], "the same probe, the same fingerprint");
    // The score climbs with the address's recent blocks (one at globex between).
    assert_eq!(events[1]["threat_score"], 70);
    assert_eq!(events[0]["threat_score"], 80);
    let security = admin.wait_for("/v1/audit/acme/security?event_type=request_blocked", "events", 2).await;
    assert_eq!(security[0]["details"]["rule_id"], "block-local");
    assert_eq!(security[0]["actor"], "ip:127.0.0.1");
    // The CSV export names what stopped each blocked call.
    let csv = ts.client.get(format!("{}/v1/audit/acme/export/csv", ts.admin)).bearer_auth(&admin.token).send().await.unwrap();
    let csv = csv.text().await.unwrap();
    assert!(csv.lines().next().unwrap().contains(",error_code,block_reason,rule_id,fingerprint,threat_score,"), "{csv}");
    let fingerprint = events[1]["fingerprint"].as_str().unwrap();
    assert!(csv.contains(&format!(",IP_BLOCKLISTED,block-local,{fingerprint},70,request,")), "{csv}");

    // Removed: calls pass again.
    let id = entry["id"].as_str().unwrap();
    assert_eq!(admin.call("DELETE", &format!("/v1/blocklist/{id}"), None).await.status, 204);
    assert_eq!(get(&ts, "/docs/fixed", &key, "test").await.0, 200);

    // A tenant's CIDR entry blocks its own apis only.
    let entry = add(&admin, "/v1/tenants/acme/blocklist", json!({"kind": "ip", "value": "127.0.0.0/8"})).await;
    assert_eq!(get(&ts, "/docs/fixed", &key, "test").await.0, 403);
    assert_eq!(get(&ts, "/globex/fixed", &other_key, "test").await.0, 200);
    let a = admin.get("/v1/tenants/acme/blocklist").await;
    assert_eq!(a.body["entries"].as_array().unwrap().len(), 1);
    let id = entry["id"].as_str().unwrap();
    assert_eq!(admin.call("DELETE", &format!("/v1/blocklist/{id}"), None).await.status, 404, "not in the global list");
    assert_eq!(admin.call("DELETE", &format!("/v1/tenants/acme/blocklist/{id}"), None).await.status, 204);

    // An entry that expires: blocked until then, not after.
    let expires = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    add(&admin, "/v1/blocklist", json!({"kind": "ip", "value": "127.0.0.0/24", "expires_at": expires.to_rfc3339()})).await;
    assert_eq!(get(&ts, "/docs/fixed", &key, "test").await.0, 403);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_eq!(get(&ts, "/docs/fixed", &key, "test").await.0, 200, "expired");
    ts.stop().await;
}

#[tokio::test]
async fn ipv6_callers_are_matched_by_address_and_range() {
    let mut ts = TestServer::start_with(tempfile::tempdir().unwrap(), |c| c.gateway.listen = "[::1]:0".parse().unwrap()).await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    add(&admin, "/v1/blocklist", json!({"kind": "ip", "value": "2001:db8::/32"})).await;
    assert_eq!(get(&ts, "/docs/fixed", &key, "test").await.0, 200, "::1 is not in 2001:db8::/32");
    let entry = add(&admin, "/v1/blocklist", json!({"kind": "ip", "value": "::1"})).await;
    assert_eq!(entry["value"], "::1");
    assert_eq!(get(&ts, "/docs/fixed", &key, "test").await.0, 403);
    let events = blocked(&admin, "acme", 1).await;
    assert_eq!(events[0]["client_ip"], "::1");
    ts.stop().await;
}

#[tokio::test]
async fn user_agents_keys_and_attack_signatures_are_blocked() {
    let mut ts = TestServer::start().await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (consumer, key_id, key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    let (_, other_key) = admin.key("acme", &consumer, json!({})).await;

    add(&admin, "/v1/blocklist", json!({"kind": "user_agent", "value": "sqlmap"})).await;
    let (status, body) = get(&ts, "/docs/fixed", &key, "Mozilla/5.0 (sqlmap/1.7)").await;
    assert_generic_403(status, &body);
    assert_eq!(get(&ts, "/docs/fixed", &key, "curl/8.0").await.0, 200);

    add(&admin, "/v1/tenants/acme/blocklist", json!({"kind": "key", "value": key_id})).await;
    assert_eq!(get(&ts, "/docs/fixed", &key, "curl/8.0").await.0, 403);
    assert_eq!(get(&ts, "/docs/fixed", &other_key, "curl/8.0").await.0, 200, "the consumer's other key");

    for (i, (path, reason)) in [
        ("/docs/items?id=1%27%20OR%20%271%27%3D%271", "SQL_INJECTION_ATTEMPT"),
        ("/docs/items?q=1+UNION+SELECT+password+FROM+users", "SQL_INJECTION_ATTEMPT"),
        ("/docs/files?name=../../etc/passwd", "ABUSE_PATTERN_DETECTED"),
        ("/docs/%252e%252e/%252e%252e/etc/shadow", "ABUSE_PATTERN_DETECTED"),
        ("/docs/a%zzb", "MALFORMED_REQUEST"),
        // Attack rules run before the key is looked at.
        ("/docs/items?id=1;%20DROP%20TABLE%20users", "SQL_INJECTION_ATTEMPT"),
    ]
    .into_iter()
    .enumerate()
    {
        let (status, body) = get(&ts, path, &other_key, "curl/8.0").await;
        assert_generic_403(status, &body);
        // Two blocks came before (the user agent, the key).
        let events = admin.wait_for("/v1/audit/acme/security?event_type=request_blocked", "events", 3 + i).await;
        assert_eq!(events[0]["details"]["block_reason"], reason, "{path}");
    }
    assert_eq!(get(&ts, "/docs/items?id=42&sort=name", &other_key, "curl/8.0").await.0, 200);
    let all = blocked(&admin, "acme", 8).await;
    let scores: Vec<u64> = all.iter().map(|e| e["threat_score"].as_u64().unwrap()).collect();
    assert!(scores.iter().all(|s| *s <= 100) && scores[0] == 100, "history raises the score to its cap: {scores:?}");

    // Blocked calls leave the request trail when switched off; the security
    // events stay.
    let a = admin.call("PUT", "/v1/tenants/acme/settings/logging", Some(json!({"log_blocklisted_api_calls": false}))).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let before = blocked(&admin, "acme", 8).await.len();
    assert_eq!(get(&ts, "/docs/x?q=union%20select%201", &other_key, "curl/8.0").await.0, 403);
    ts.flush().await;
    assert_eq!(blocked(&admin, "acme", 0).await.len(), before);
    let security = admin.get("/v1/audit/acme/security?event_type=request_blocked&limit=100").await;
    assert_eq!(security.body["events"].as_array().unwrap().len(), before + 1);
    ts.stop().await;
}

#[tokio::test]
async fn repeated_failed_authentication_blocks_the_address_for_a_while() {
    let mut ts = TestServer::start_with(tempfile::tempdir().unwrap(), |c| {
        c.gateway.bruteforce_failures = 3;
        c.gateway.bruteforce_block = Duration::from_secs(2);
    })
    .await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    for _ in 0..4 {
        assert_eq!(get(&ts, "/docs/fixed", "kt_live_guessing", "bot").await.0, 401);
    }
    // The block is written off the request path: wait for it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&ts, "/docs/fixed", &key, "bot").await.0 != 403 {
        assert!(Instant::now() < deadline, "the address was not blocked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let entries = admin.get("/v1/blocklist").await.body["entries"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["rule_id"], "auto-bruteforce");
    assert_eq!(entries[0]["value"], "127.0.0.1");
    assert!(entries[0]["expires_at"].is_string());
    let events = admin.wait_for("/v1/audit/acme/security?event_type=request_blocked", "events", 1).await;
    let auto = events.iter().find(|e| e["actor"] == "keytrail:auto-bruteforce").expect("the block is recorded");
    assert_eq!(auto["details"]["failures"], 4);
    assert_eq!(auto["target"], "ip:127.0.0.1");
    // The block ends by itself.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(get(&ts, "/docs/fixed", &key, "bot").await.0, 200);
    ts.stop().await;
}

/// An empty key header (`X-API-Key:` with nothing, `Authorization: Bearer`
/// with no token) presents no key: at the gateway it is `401 missing_key`,
/// a verification of an empty `key` gets the `missing_key` verdict, and an
/// application event sent with an empty `X-API-Key` is `401 missing_key`;
/// none of them counts toward the brute-force block. An empty `X-API-Key`
/// beside a key in `Authorization` leaves that key to be used.
#[tokio::test]
async fn empty_key_headers_present_no_key_and_do_not_count_toward_the_brute_force_block() {
    let mut ts = TestServer::start_with(tempfile::tempdir().unwrap(), |c| {
        c.gateway.bruteforce_failures = 3;
        c.gateway.bruteforce_block = Duration::from_secs(60);
    })
    .await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    let (_, _, writer) = admin.consumer_with_key("acme", "backend", json!({"scopes": ["audit:write"]})).await;
    let url = format!("{}/docs/fixed", ts.gateway);
    let event = json!({"action": "order.updated", "resource_type": "order", "resource_id": "1"});
    for _ in 0..4 {
        for (name, value) in [("x-api-key", ""), ("x-api-key", "  "), ("authorization", "Bearer"), ("authorization", "Bearer  ")] {
            let res = ts.client.get(&url).header(name, value).send().await.unwrap();
            assert_eq!(res.status(), 401, "{name}: {value:?}");
            assert_eq!(res.json::<Value>().await.unwrap()["error"]["code"], "missing_key", "{name}: {value:?}");
        }
        let v = ts.client.post(format!("{}/v1/keys/verify", ts.gateway)).json(&json!({"key": "", "api_id": "docs"})).send().await.unwrap();
        assert_eq!(v.status(), 200);
        let verdict = v.json::<Value>().await.unwrap();
        assert_eq!((verdict["valid"].as_bool(), verdict["code"].as_str()), (Some(false), Some("missing_key")), "{verdict}");
        let res = ts.client.post(format!("{}/v1/audit/acme/events", ts.admin)).header("x-api-key", "").json(&event).send().await.unwrap();
        assert_eq!(res.status(), 401);
        assert_eq!(res.json::<Value>().await.unwrap()["error"]["code"], "missing_key");
    }
    // The key in `Authorization` is the one presented.
    let res = ts.client.get(&url).header("x-api-key", "").header("authorization", format!("Bearer {key}")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let res = ts.client.post(format!("{}/v1/audit/acme/events", ts.admin)).header("authorization", format!("Bearer {writer}")).header("x-api-key", "").json(&event).send().await.unwrap();
    assert_eq!(res.status(), 201);
    // Recorded, each as a failed authentication with no key.
    let failed = admin.wait_for("/v1/audit/acme/security?event_type=auth_failed", "events", 20).await;
    assert!(failed.iter().all(|e| e["details"]["reason"] == "no key presented"), "{failed:?}");
    // Three wrong keys stay within the limit of 3: none of the calls above counted.
    for _ in 0..3 {
        assert_eq!(get(&ts, "/docs/fixed", "kt_live_guessing", "bot").await.0, 401);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&ts, "/docs/fixed", &key, "bot").await.0, 200, "the address was blocked");
    assert_eq!(admin.get("/v1/blocklist").await.body["entries"], json!([]));
    ts.stop().await;
}

/// Calls that carry no key (a browser's CORS preflight, a health checker
/// on a keyed api) are refused and recorded, but they are no guess at a
/// key: only a presented, wrong key counts toward the brute-force block.
#[tokio::test]
async fn calls_without_a_key_do_not_count_toward_the_brute_force_block() {
    let mut ts = TestServer::start_with(tempfile::tempdir().unwrap(), |c| {
        c.gateway.bruteforce_failures = 3;
        c.gateway.bruteforce_block = Duration::from_secs(60);
    })
    .await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    let url = format!("{}/docs/fixed", ts.gateway);
    for _ in 0..5 {
        let preflight = ts
            .client
            .request(reqwest::Method::OPTIONS, &url)
            .header("origin", "https://app.example")
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "x-api-key")
            .send()
            .await
            .unwrap();
        assert_eq!(preflight.status(), 401);
        let health = ts.client.get(&url).header("user-agent", "health-checker").send().await.unwrap();
        assert_eq!(health.status(), 401);
        assert_eq!(health.json::<Value>().await.unwrap()["error"]["code"], "missing_key");
    }
    // Still recorded, each as a failed authentication.
    let failed = admin.wait_for("/v1/audit/acme/security?event_type=auth_failed", "events", 10).await;
    assert!(failed.iter().all(|e| e["details"]["reason"] == "no key presented"), "{failed:?}");
    // Nor does a verification that sends no key (a bad body, not a guess).
    for _ in 0..5 {
        let v = ts.client.post(format!("{}/v1/keys/verify", ts.gateway)).json(&json!({"api_id": "docs"})).send().await.unwrap();
        assert_eq!(v.status(), 400);
    }
    // Three wrong keys stay within the limit of 3: none of the calls above counted.
    for _ in 0..3 {
        assert_eq!(get(&ts, "/docs/fixed", "kt_live_guessing", "bot").await.0, 401);
    }
    // A block would be written off the request path: give it time to land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&ts, "/docs/fixed", &key, "bot").await.0, 200, "the address was blocked");
    assert_eq!(admin.get("/v1/blocklist").await.body["entries"], json!([]));
    // The fourth wrong key passes the limit.
    assert_eq!(get(&ts, "/docs/fixed", "kt_live_guessing", "bot").await.0, 401);
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&ts, "/docs/fixed", &key, "bot").await.0 != 403 {
        assert!(Instant::now() < deadline, "the address was not blocked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ts.stop().await;
}

#[tokio::test]
async fn countries_come_from_the_operators_table() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("countries.csv");
    std::fs::write(&table, "# cidr,country\n127.0.0.0/8,de\n2001:db8::/32,US\n").unwrap();
    let path = table.clone();
    let mut ts = TestServer::start_with(tempfile::tempdir().unwrap(), move |c| c.gateway.geo_table = Some(path)).await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    assert_eq!(get(&ts, "/docs/fixed", &key, "test").await.0, 200);
    let logs = admin.wait_for("/v1/audit/acme", "logs", 1).await;
    assert_eq!(logs[0]["country"], "DE", "events carry the caller's country");

    let entry = add(&admin, "/v1/tenants/acme/blocklist", json!({"kind": "country", "value": "de"})).await;
    assert_eq!((entry["value"].as_str(), entry["reason"].as_str()), (Some("DE"), Some("GEO_BLOCKED")));
    let (status, body) = get(&ts, "/docs/fixed", &key, "test").await;
    assert_generic_403(status, &body);
    let events = blocked(&admin, "acme", 1).await;
    assert_eq!(events[0]["block_reason"], "GEO_BLOCKED");
    assert_eq!(events[0]["threat_score"], 40);
    ts.stop().await;

    // A bad table stops the start, naming the file and the line.
    std::fs::write(&table, "127.0.0.0/8,DE\n10.0.0.0/8,Germany\n").unwrap();
    let mut config = crate::util::test_config(tempfile::tempdir().unwrap().path());
    config.gateway.geo_table = Some(table.clone());
    let err = keytrail::server::start(config).await.err().expect("a bad table is refused").to_string();
    assert!(err.contains("countries.csv") && err.contains("line 2") && err.contains("two-letter"), "{err}");
}

#[tokio::test]
async fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
    // Behind a trusted proxy (this test, at 127.0.0.1), X-Forwarded-For names the client.
    let mut ts = TestServer::start_with(tempfile::tempdir().unwrap(), |c| {
        c.gateway.trusted_proxies = keytrail::protection::TrustedProxies::parse(&["127.0.0.1".into()]).unwrap();
    })
    .await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    add(&admin, "/v1/blocklist", json!({"kind": "ip", "value": "198.51.100.0/24"})).await;
    let call = |xff: &'static str| {
        let (client, url, key) = (ts.client.clone(), format!("{}/docs/fixed", ts.gateway), key.clone());
        async move { client.get(url).header("x-api-key", key).header("x-forwarded-for", xff).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(call("198.51.100.23").await, 403);
    assert_eq!(call("203.0.113.9").await, 200);
    let logs = admin.wait_for("/v1/audit/acme", "logs", 2).await;
    assert_eq!(logs[0]["client_ip"], "203.0.113.9");
    assert_eq!(logs[1]["client_ip"], "198.51.100.23");
    ts.stop().await;

    // Without one, the header is the caller's own word and is ignored: it
    // neither blocks nor unblocks anyone.
    let mut ts = TestServer::start().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    add(&admin, "/v1/blocklist", json!({"kind": "ip", "value": "198.51.100.0/24"})).await;
    let res = ts.client.get(format!("{}/docs/fixed", ts.gateway)).header("x-api-key", &key).header("x-forwarded-for", "198.51.100.23").send().await.unwrap();
    assert_eq!(res.status(), 200);
    add(&admin, "/v1/blocklist", json!({"kind": "ip", "value": "127.0.0.1"})).await;
    let res = ts.client.get(format!("{}/docs/fixed", ts.gateway)).header("x-api-key", &key).header("x-forwarded-for", "203.0.113.9").send().await.unwrap();
    assert_eq!(res.status(), 403, "a spoofed header does not get a blocked address out");
    ts.stop().await;
}

/// Behind proxies that name the client in RFC 7239's `Forwarded` (or in
/// `X-Real-IP`), `real_ip_header` says so: that header's address is the
/// client, for the blocklists and the trail, and `X-Forwarded-For`, which
/// such a proxy passes on as the caller wrote it, is ignored. Before, only
/// `X-Forwarded-For` was read, so every caller behind such a proxy was the
/// proxy: one brute-force block would have shut all of them out.
#[tokio::test]
async fn the_configured_real_ip_header_names_the_client_behind_a_trusted_proxy() {
    use keytrail::protection::{RealIpHeader, TrustedProxies};
    let local = || TrustedProxies::parse(&["127.0.0.1".into()]).unwrap();
    let mut ts = TestServer::start_with(tempfile::tempdir().unwrap(), |c| {
        c.gateway.trusted_proxies = local().with_header(RealIpHeader::Forwarded);
        c.admin_trusted_proxies = local().with_header(RealIpHeader::XRealIp);
    })
    .await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    add(&admin, "/v1/blocklist", json!({"kind": "ip", "value": "198.51.100.0/24"})).await;
    let call = |name: &'static str, value: &'static str| {
        let (client, url, key) = (ts.client.clone(), format!("{}/docs/fixed", ts.gateway), key.clone());
        async move { client.get(url).header("x-api-key", key).header(name, value).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(call("forwarded", "for=198.51.100.23;proto=https").await, 403, "the blocked client, named by Forwarded");
    assert_eq!(call("forwarded", "for=\"[2001:db8::9]:443\";proto=https").await, 200);
    assert_eq!(call("x-forwarded-for", "198.51.100.23").await, 200, "X-Forwarded-For is not the configured header");
    let logs = admin.wait_for("/v1/audit/acme", "logs", 3).await;
    let clients: Vec<&str> = logs.iter().map(|e| e["client_ip"].as_str().unwrap()).collect();
    assert_eq!(clients, ["127.0.0.1", "2001:db8::9", "198.51.100.23"], "newest first");

    // The admin API reads its own proxies' header: a failed sign-in is
    // recorded with the address X-Real-IP names.
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-real-ip", "203.0.113.77".parse().unwrap());
    let forwarded = Admin { client: reqwest::Client::builder().default_headers(headers).build().unwrap(), token: String::new(), ..admin.clone() };
    assert_eq!(forwarded.post("/v1/auth/login", json!({"name": "nobody", "password": "not the password"})).await.status, 401);
    let failed = admin.wait_for("/v1/audit/_system/security?event_type=admin_login_failed", "events", 1).await;
    assert_eq!(failed[0]["client_ip"], "203.0.113.77", "{failed:?}");
    ts.stop().await;
}

#[tokio::test]
async fn bad_blocklist_entries_are_refused() {
    let mut ts = TestServer::start().await;
    let admin = ts.admin_client();
    assert_eq!(admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.status, 201);
    for (body, needle) in [
        (json!({"kind": "ip", "value": "300.1.2.3"}), "not an IP address"),
        (json!({"kind": "ip", "value": "10.0.0.0/40"}), "not an IP address"),
        (json!({"kind": "ip", "value": "example.com"}), "not an IP address"),
        (json!({"kind": "planet", "value": "XX"}), "`kind`"),
        (json!({"kind": "country", "value": "Germany"}), "two-letter"),
        (json!({"kind": "key", "value": "kt_live_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA000000"}), "key id"),
        (json!({"kind": "user_agent", "value": "x"}), "3-200"),
        (json!({"kind": "ip", "value": "10.0.0.1", "reason": "BECAUSE"}), "`reason` must be one of"),
        (json!({"kind": "ip", "value": "10.0.0.1", "expires_at": "2001-01-01T00:00:00Z"}), "in the future"),
        (json!({"kind": "ip", "value": "10.0.0.1", "expires_at": "tomorrow"}), "RFC 3339"),
        (json!({"kind": "ip", "value": "10.0.0.1", "rule_id": "has space"}), "rule_id"),
        (json!({"kind": "ip"}), "value"),
    ] {
        let a = admin.post("/v1/blocklist", body.clone()).await;
        assert_eq!(a.status, 400, "{body}: {}", a.text);
        assert!(a.text.contains(needle), "{body}: {}", a.text);
        assert!(!a.text.contains("kt_live_AAAA"), "a key never comes back: {}", a.text);
    }
    assert!(admin.get("/v1/blocklist").await.body["entries"].as_array().unwrap().is_empty());
    assert_eq!(admin.post("/v1/tenants/nope/blocklist", json!({"kind": "ip", "value": "10.0.0.1"})).await.status, 404);
    assert_eq!(admin.get("/v1/tenants/nope/blocklist").await.status, 404);
    assert_eq!(admin.call("DELETE", "/v1/blocklist/blk_nope", None).await.status, 404);
    let anonymous = Admin { token: "nope".into(), ..admin.clone() };
    assert_eq!(anonymous.post("/v1/blocklist", json!({"kind": "ip", "value": "10.0.0.1"})).await.status, 401);
    ts.stop().await;
}

#[tokio::test]
async fn countries_come_from_a_maxmind_database() {
    use keytrail::protection::Countries;
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("GeoLite2-Country.mmdb");
    crate::mmdb::write(
        &database,
        "GeoLite2-Country",
        &[("127.0.0.0/8", "SE"), ("198.51.100.0/24", "FR"), ("198.51.100.128/25", "IT"), ("2001:db8::/32", "US")],
    );
    // The lookup itself: IPv4 under ::/96, IPv6, the most specific range, misses.
    let countries = Countries::load(None, Some(&database)).unwrap();
    let at = |ip: &str| countries.country(ip.parse().unwrap()).map(str::to_string);
    assert_eq!(at("127.0.0.1").as_deref(), Some("SE"));
    assert_eq!(at("198.51.100.7").as_deref(), Some("FR"));
    assert_eq!(at("198.51.100.200").as_deref(), Some("IT"), "the most specific range");
    assert_eq!(at("2001:db8::5").as_deref(), Some("US"));
    assert_eq!(at("203.0.113.1"), None);
    assert_eq!(at("2001:db9::1"), None);
    // The operator's table is asked first, so it can correct the database.
    let table = dir.path().join("countries.csv");
    std::fs::write(&table, "198.51.100.0/24,DE\n").unwrap();
    let both = Countries::load(Some(&table), Some(&database)).unwrap();
    assert_eq!(both.country("198.51.100.200".parse().unwrap()), Some("DE"));
    assert_eq!(both.country("127.0.0.1".parse().unwrap()), Some("SE"));

    // Through the gateway: events carry the database's country and a country entry blocks it.
    let path = database.clone();
    let mut ts = TestServer::start_with(tempfile::tempdir().unwrap(), move |c| c.gateway.geo_database = Some(path)).await;
    let up = start_upstream().await;
    let admin = ts.admin_client();
    let (_, _, key) = admin.setup("acme", "/docs", &format!("http://{up}")).await;
    assert_eq!(get(&ts, "/docs/fixed", &key, "test").await.0, 200);
    let logs = admin.wait_for("/v1/audit/acme", "logs", 1).await;
    assert_eq!(logs[0]["country"], "SE");
    add(&admin, "/v1/blocklist", json!({"kind": "country", "value": "se"})).await;
    let (status, body) = get(&ts, "/docs/fixed", &key, "test").await;
    assert_generic_403(status, &body);
    let events = blocked(&admin, "acme", 1).await;
    assert_eq!(events[0]["block_reason"], "GEO_BLOCKED");
    ts.stop().await;

    // A file that is not a MaxMind database, or one without countries, stops the start.
    let refused = |path: std::path::PathBuf| async move {
        let mut config = crate::util::test_config(tempfile::tempdir().unwrap().path());
        config.gateway.geo_database = Some(path);
        keytrail::server::start(config).await.err().expect("a bad database is refused").to_string()
    };
    let junk = dir.path().join("junk.mmdb");
    std::fs::write(&junk, b"not a database at all").unwrap();
    let err = refused(junk).await;
    assert!(err.contains("gateway.geo_database") && err.contains("junk.mmdb") && err.contains("not a MaxMind database"), "{err}");
    let asn = dir.path().join("GeoLite2-ASN.mmdb");
    crate::mmdb::write(&asn, "GeoLite2-ASN", &[("127.0.0.0/8", "SE")]);
    let err = refused(asn).await;
    assert!(err.contains("GeoLite2-ASN") && err.contains("has no countries"), "{err}");
    let err = refused(dir.path().join("missing.mmdb")).await;
    assert!(err.contains("missing.mmdb"), "{err}");
}
