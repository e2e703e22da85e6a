//! Webhooks: where an alert is posted, and one signed POST of it.
//!
//! Each POST carries `Keytrail-Timestamp` (Unix seconds) and
//! `Keytrail-Signature: v1=<hex>`, the HMAC-SHA-256 of `<timestamp>.<body>`
//! keyed with the rule's secret as shown (`ktwh_…`), so a receiver can
//! tell keytrail's posts from anyone else's and refuse old ones replayed.
//! After the secret is rotated, and for the grace the rotation gave, the
//! old secret's signature follows the new one's (`v1=<new>, v1=<old>`).

use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::Uri;
use http_body_util::Full;
use hmac::Mac;
use hyper_util::rt::TokioIo;

use crate::error::ApiError;
use crate::protection::UpstreamGuard;

/// The longest webhook URL a rule may hold.
pub const MAX_URL_LEN: usize = 2_000;

/// Refuses a webhook URL keytrail cannot or will not post to, naming the
/// reason: only `http://` (keytrail has no TLS client; a relay on the
/// same host can forward to an `https://` receiver), no credentials in it,
/// a port from 1 to 65535, and no address the upstream guard refuses
/// (keytrail's own listeners, `gateway.upstream_deny`). A name is checked
/// again at each delivery, against every address it resolves to.
pub fn check_url(url: &str, guard: &UpstreamGuard) -> Result<(), ApiError> {
    let bad = |why: &str| ApiError::invalid_body(format!("`webhook_url` {why}"));
    if url.len() > MAX_URL_LEN || url.chars().any(|c| c.is_control() || c == ' ') {
        return Err(bad(&format!("must be at most {MAX_URL_LEN} characters, without spaces or control characters")));
    }
    let uri: Uri = url.parse().map_err(|_| bad("is not a URL (`http://host:port/path`)"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(bad(
                "must be `http://`: keytrail has no TLS client; post to a relay on a trusted network that forwards to the `https://` receiver",
            ))
        }
        _ => return Err(bad("must start with `http://`")),
    }
    let authority = uri.authority().ok_or_else(|| bad("must name a host"))?;
    if authority.host().is_empty() || authority.as_str().contains('@') {
        return Err(bad("must name a host, without credentials (the posts are signed instead)"));
    }
    if authority.as_str().len() > authority.host().len() && authority.port_u16().is_none_or(|port| port == 0) {
        return Err(bad("must have a port from 1 to 65535, or none for 80"));
    }
    if crate::redact::holds_secret(url) {
        return Err(bad("must not hold an API key or token"));
    }
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        if let Some(why) = guard.refuses(std::net::SocketAddr::new(ip, authority.port_u16().unwrap_or(80))) {
            return Err(bad(&format!("may not be used: {why}")));
        }
    }
    Ok(())
}

/// Where a URL points, for messages: its host and port, never its path or
/// query (which may hold a receiver's own token).
pub fn describe(url: &str) -> String {
    url.parse::<Uri>().ok().and_then(|u| u.authority().map(|a| a.to_string())).unwrap_or_else(|| "(not a URL)".into())
}

/// A webhook URL as shown where its path and query need not be (the admin
/// log, a viewer's read): `http://host:port/…`; they may hold a receiver's
/// own token (a chat service's webhook URL is its credential).
pub fn shown(url: &str) -> String {
    match url.parse::<Uri>() {
        Ok(uri) if uri.path_and_query().is_some_and(|p| p.as_str() != "/") => format!("http://{}/…", describe(url)),
        Ok(_) => url.to_string(),
        Err(_) => "(not a URL)".to_string(),
    }
}

/// The rule's secret as shown once: `ktwh_` and 64 hex digits.
pub fn secret_text(derived: &[u8; 32]) -> String {
    format!("{}{}", crate::keys::WEBHOOK_SECRET_PREFIX, crate::signing::hex(derived))
}

/// `v1=` and the hex HMAC-SHA-256 of `<timestamp>.<body>` keyed with the secret's text.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", crate::signing::hex(&mac.finalize().into_bytes()))
}

/// The `Keytrail-Signature` value: one [`signature`] per secret, the one
/// in use first, separated by `, ` — two only during a rotation's grace,
/// when a receiver still holding the old secret finds its signature too.
pub fn signatures(secrets: &[String], timestamp: i64, body: &[u8]) -> String {
    secrets.iter().map(|secret| signature(secret, timestamp, body)).collect::<Vec<_>>().join(", ")
}

/// One POST of `body` to `url`: the answer's status, or why there was none.
/// The whole try (resolving, connecting, sending, the answer's head) is
/// bounded by `timeout`. A 2xx is a delivery; anything else is tried again
/// by the caller.
pub async fn post(url: &str, body: Bytes, secrets: &[String], alert_id: &str, guard: &UpstreamGuard, timeout: Duration) -> Result<u16, String> {
    tokio::time::timeout(timeout, post_untimed(url, body, secrets, alert_id, guard))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} ms", timeout.as_millis())))
}

async fn post_untimed(url: &str, body: Bytes, secrets: &[String], alert_id: &str, guard: &UpstreamGuard) -> Result<u16, String> {
    let uri: Uri = url.parse().map_err(|_| "the URL no longer parses".to_string())?;
    let authority: Authority = uri.authority().cloned().ok_or("the URL names no host")?;
    let stream = crate::gateway::upstream::connect_allowed(guard, &authority).await.map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let timestamp = chrono::Utc::now().timestamp();
    let request = http::Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, concat!("keytrail-alerts/", env!("CARGO_PKG_VERSION")))
        .header("keytrail-alert-id", alert_id)
        .header("keytrail-timestamp", timestamp)
        .header("keytrail-signature", signatures(secrets, timestamp, &body))
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    Ok(response.status().as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keytrail_cannot_or_will_not_post_to_are_refused() {
        let own: std::net::SocketAddr = "127.0.0.1:9080".parse().unwrap();
        let guard = UpstreamGuard::new(crate::protection::Networks::parse(&["169.254.0.0/16".to_string()]).unwrap(), vec![own]);
        for (url, wanted) in [
            ("https://hooks.example.com/x", "no TLS client"),
            ("ftp://hooks.example.com/x", "must start with `http://`"),
            ("http://user:pw@hooks.example.com/x", "without credentials"),
            ("http://hooks.example.com:0/x", "port from 1 to 65535"),
            ("http://169.254.169.254/latest", "may not be used"),
            ("http://127.0.0.1:9080/", "may not be used"),
            ("not a url", "without spaces"),
            ("http://", "is not a URL"),
        ] {
            let err = check_url(url, &guard).unwrap_err().to_string();
            assert!(err.contains(wanted), "{url}: {err}");
        }
        check_url("http://127.0.0.1:9999/hooks/keytrail?team=ops", &guard).unwrap();
        assert_eq!(describe("http://hooks.example.com:8080/secret-path?token=x"), "hooks.example.com:8080");
        assert_eq!(shown("http://hooks.example.com:8080/secret-path?token=x"), "http://hooks.example.com:8080/…");
        assert_eq!(shown("http://hooks.example.com/"), "http://hooks.example.com/");
    }

    #[test]
    fn the_signature_is_the_hmac_of_the_timestamp_and_body() {
        // HMAC-SHA-256 computed independently (Python's hmac module) for
        // key "whsec_test", message "1700000000.{}".
        assert_eq!(signature("whsec_test", 1_700_000_000, b"{}"), "v1=35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91");
    }
}
