//! `POST /v1/keys/verify`: key verification for teams that do not proxy.
//!
//! The caller sends `{"key": "…", "api_id": "…"}` and gets a verdict from
//! the same checks a proxied call to that api goes through, in the same
//! order: the global and the key's tenant's blocklists (attack rules look at
//! paths and queries: this path is fixed and the body is JSON), the key
//! (format, hash, revocation, expiry — the brute-force counter counts each
//! refusal), a key blocklist, the consumer's status, the api (looked up in
//! the key's tenant: api ids are per tenant), its required scopes, and the
//! rate limits, which take one unit of the same budget proxied calls use.
//!
//! Every decided verification answers 200 with `valid` and `code` (`VALID`
//! or the error code a proxied call would get); a blocked caller gets the
//! generic 403, a bad body 400 or 413 (one that stops coming 408), another
//! method 405. Each is one
//! `request` event plus the security events the proxy path records for the
//! same situation. The key is never echoed, logged or stored: events carry
//! its `key_id` and hint.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::{Deserialize, Serialize};

use super::body::{Finisher, GatewayBody};
use super::{
    authenticate, declared_length, describe_consumer, header_value, number_header, policy_details, rate_headers, refuse_with, blocklist_agent, Call,
    Gateway, KeySource, X_REQUEST_ID,
};
use crate::error::{parse_json_body, ApiError, ErrorCode};
use crate::event::{Event, Text};
use crate::protection::Block;
use crate::ratelimit::{self, Standing};
use crate::snapshot::KeyEntry;

/// The one path verification answers on (before any route).
pub const PATH: &str = "/v1/keys/verify";
/// Largest body accepted: a key and an api id need a fraction of it.
pub const MAX_BODY_BYTES: usize = 4096;
/// How long the body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// What one verification costs against the rate limits (there is no path
/// to look an api's `costs` up by).
const COST: u32 = 1;

/// The request body. No `Debug`: it holds the key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyRequest {
    key: String,
    api_id: String,
}

/// The answer to a decided verification. What the key identified is only
/// present when it was identified; `ratelimit` only when a limit applies.
#[derive(Serialize)]
struct Verdict<'a> {
    #[serde(skip)]
    refused: Option<ErrorCode>,
    valid: bool,
    /// `VALID`, or the error code a proxied call would get.
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    consumer: Option<Consumer<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scopes: Option<&'a [String]>,
    /// `Some(None)` is an identified key that never expires (`null`).
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratelimit: Option<RateInfo>,
}

#[derive(Serialize)]
struct Consumer<'a> {
    id: &'a str,
    name: &'a str,
}

/// The limit closest to refusing, as in the `RateLimit-*` headers.
#[derive(Serialize)]
struct RateInfo {
    limit: u64,
    remaining: u64,
    /// Seconds until the limit is whole again.
    reset: u64,
}

impl<'a> Verdict<'a> {
    /// `refused`: the error code, or `None` for a valid key.
    fn new(refused: Option<ErrorCode>, key: Option<&'a KeyEntry>, api_id: Option<&'a str>, standing: Option<&Standing>) -> Self {
        Verdict {
            refused,
            valid: refused.is_none(),
            code: refused.map_or("VALID", ErrorCode::as_str),
            key_id: key.map(|k| k.key_id.as_str()),
            tenant_id: key.map(|k| k.tenant_id.as_str()),
            api_id,
            consumer: key.map(|k| Consumer { id: &k.consumer_id, name: &k.consumer_name }),
            scopes: key.map(|k| k.scopes.as_slice()),
            expires_at: key.map(|k| k.expires_at_ms.map(crate::event::format_timestamp)),
            ratelimit: standing.map(|s| RateInfo { limit: s.limit, remaining: s.remaining, reset: s.reset_secs }),
        }
    }
}

impl Gateway {
    /// Answers one verification. `event` holds what the accept phase found
    /// (request id, method, path, caller); `client` is the caller's address.
    pub(super) async fn verify(&self, mut req: Call, mut event: Event, client: IpAddr, started: Instant) -> Response<GatewayBody> {
        let request_id = header_value(event.request_id.as_deref().unwrap_or_default());
        let received = Arc::new(AtomicU64::new(0));
        let finisher = {
            let (audit, received) = (self.audit.clone(), received.clone());
            move |event: Event, _: Option<Arc<AtomicU64>>| Finisher { event, started, request_bytes: Some(received), audit }
        };
        let now = event.timestamp_ms;
        let country = self.shield.country(client);
        event.country = country.map(Text::from);

        // The body (bounded) comes first: the key in it names the tenant
        // whose blocklist applies and whose trail records the call, as the
        // proxy path looks its route up first. Nothing is decided yet.
        let parsed = if req.method == Method::POST {
            let body = read_body(&mut req).await;
            if let Ok(bytes) = &body {
                received.store(bytes.len() as u64, Ordering::Relaxed);
            }
            Some(body.and_then(|bytes| parse_request(&bytes)))
        } else {
            None
        };
        let snapshot = self.control.snapshot();
        let auth = match &parsed {
            Some(Ok(request)) => Some(authenticate(&snapshot, &request.key, None)),
            _ => None,
        };
        let identified = match &auth {
            Some(Ok(entry)) => Some(entry.clone()),
            Some(Err(failure)) => failure.key.clone(),
            None => None,
        };
        let api = match (&identified, &parsed) {
            (Some(key), Some(Ok(request))) => snapshot.api(&key.tenant_id, &request.api_id).cloned(),
            _ => None,
        };
        if let Some(key) = &identified {
            event.tenant_id = key.tenant_id.clone();
        }
        if let Some(api) = &api {
            event.api_id = Some(api.api_id.clone());
        }

        // Pre-auth protection: the global and the key's tenant's blocklists
        // by address, country and user agent.
        let tenant_blocks = identified.as_ref().and_then(|key| snapshot.tenant_blocks(&key.tenant_id));
        let full_agent = blocklist_agent(&req.headers, &snapshot.global_blocks, tenant_blocks);
        let user_agent = full_agent.as_deref().or(event.user_agent.as_deref());
        let caller_block = snapshot
            .global_blocks
            .match_caller(client, country, user_agent, now)
            .or_else(|| tenant_blocks?.match_caller(client, country, user_agent, now));
        if let Some(entry) = caller_block {
            return self.block(&mut event, &Block::from_entry(&entry), &req, client, &request_id, finisher);
        }

        // The method and the body.
        let (request, auth) = match (parsed, auth) {
            (Some(Ok(request)), Some(auth)) => (request, auth),
            (Some(Err(error)), _) => return refuse_with(&mut event, error, &request_id, finisher),
            _ => {
                let error = ApiError::new(ErrorCode::MethodNotAllowed, "key verification takes POST with a JSON body {\"key\", \"api_id\"}");
                let mut response = refuse_with(&mut event, error, &request_id, finisher);
                response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
                return response;
            }
        };

        // The key, exactly as a proxied call's (and counted the same way
        // against the caller's address when refused).
        let entry = match auth {
            Ok(entry) => entry,
            Err(failure) => {
                let hint = failure.hint(&request.key);
                match (&failure.key, &hint) {
                    (Some(entry), _) => describe_consumer(&mut event, entry),
                    (None, Some(hint)) => event.key_hint = Some(hint.as_str().into()),
                    (None, None) => {}
                }
                self.shield.record_auth_failure(&event, &failure, Some(KeySource::VerifyBody), hint);
                let api_id = api.as_ref().map(|a| a.api_id.as_str());
                let verdict = Verdict::new(Some(failure.code), failure.key.as_deref(), api_id, None);
                return answer(&mut event, &verdict, &request_id, finisher);
            }
        };
        describe_consumer(&mut event, &entry);
        let key_block = snapshot.key_block(&entry.tenant_id, &entry.key_id, now);
        drop(snapshot);
        if let Some(block) = key_block {
            return self.block(&mut event, &Block::from_entry(&block), &req, client, &request_id, finisher);
        }
        // A use, as on the proxy path: the key authenticated for one of its
        // tenant's apis (an api it does not know is no route: no use).
        if api.is_some() {
            entry.usage.touch(now);
        }

        // The consumer, the api in the key's tenant, its scopes.
        if !entry.consumer_active {
            let verdict = Verdict::new(Some(ErrorCode::ConsumerSuspended), Some(&entry), api.as_ref().map(|a| a.api_id.as_str()), None);
            return answer(&mut event, &verdict, &request_id, finisher);
        }
        let Some(api) = api else {
            // Another tenant's api reads exactly like one that does not exist.
            if looks_like_api_id(&request.api_id) {
                event.details = Some(serde_json::json!({"requested_api_id": request.api_id}));
            }
            return answer(&mut event, &Verdict::new(Some(ErrorCode::UnknownApi), Some(&entry), None, None), &request_id, finisher);
        };
        if let Err(violation) = api.policies.check_scopes(&entry.scopes) {
            self.record_policy_applied(&event, &entry, &violation);
            event.details = Some(policy_details(&violation));
            return answer(&mut event, &Verdict::new(Some(violation.code), Some(&entry), Some(&api.api_id), None), &request_id, finisher);
        }

        // The rate limits: one unit of the budget proxied calls share.
        let api_limit = api.rate_limit.as_deref().map(|l| (api.api_id.as_str(), l));
        match ratelimit::check(entry.tier.as_deref(), api_limit, &entry.consumer_id, COST, now) {
            Ok(standing) => {
                let verdict = Verdict::new(None, Some(&entry), Some(&api.api_id), standing.as_ref());
                let mut response = answer(&mut event, &verdict, &request_id, finisher);
                if let Some(standing) = &standing {
                    rate_headers(response.headers_mut(), standing);
                }
                response
            }
            Err(exceeded) => {
                self.shield.record_rate_limited(&event, &entry, &exceeded, COST);
                // A cost above the whole daily quota never passes (not at a
                // cost of 1, as quotas are at least 1, but as on the proxy path).
                let code = if exceeded.cost_above_limit { ErrorCode::CostExceedsQuota } else { ErrorCode::RateLimited };
                let verdict = Verdict::new(Some(code), Some(&entry), Some(&api.api_id), Some(&exceeded.standing));
                let mut response = answer(&mut event, &verdict, &request_id, finisher);
                let headers = response.headers_mut();
                rate_headers(headers, &exceeded.standing);
                if !exceeded.cost_above_limit {
                    headers.insert(header::RETRY_AFTER, number_header(exceeded.retry_after_secs));
                }
                response
            }
        }
    }
}

/// Reads the body, at most [`MAX_BODY_BYTES`] within [`BODY_TIMEOUT`].
/// Through `&mut`, so the request stays whole for a block's fingerprint.
async fn read_body(req: &mut Call) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::new(ErrorCode::PayloadTooLarge, format!("the body of a key verification is at most {MAX_BODY_BYTES} bytes"));
    if declared_length(&req.headers).is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(&mut req.body, MAX_BODY_BYTES).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(_)) => Err(ApiError::invalid_body("the body could not be read")),
        // The caller's timeout, as on the proxy path: nothing wrong with what came.
        Err(_) => Err(ApiError::new(ErrorCode::RequestTimeout, format!("the body did not arrive within {} s", BODY_TIMEOUT.as_secs()))),
    }
}

/// Parses the body: a JSON object (serde would also take a struct as an
/// array) with exactly `key` and `api_id`, both strings.
fn parse_request(body: &[u8]) -> Result<VerifyRequest, ApiError> {
    match body.trim_ascii_start().first() {
        None | Some(b'{') => parse_json_body(body),
        Some(_) => Err(ApiError::invalid_body("the body must be a JSON object: {\"key\": \"…\", \"api_id\": \"…\"}")),
    }
}

/// Answers a decided verification with 200 and records the request event
/// with the verdict (a refused one as a failed call with its error code).
fn answer(
    event: &mut Event,
    verdict: &Verdict<'_>,
    request_id: &HeaderValue,
    finisher: impl FnOnce(Event, Option<Arc<AtomicU64>>) -> Finisher,
) -> Response<GatewayBody> {
    event.status_code = Some(StatusCode::OK.as_u16());
    if let Some(code) = verdict.refused {
        event.outcome = Text::from_static("failure");
        event.error_code = Some(Text::from_static(code.as_str()));
        event.error_message = Some(code.default_message().to_string());
    }
    let body = Bytes::from(serde_json::to_vec(verdict).expect("a verdict always serialises"));
    let mut response = Response::new(GatewayBody::full(body, finisher(std::mem::take(event), None)));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    response
}

/// Whether `text` could be an api id (1-63 of `a-z0-9-_`), so that it may be
/// kept in the trail; anything else is not.
fn looks_like_api_id(text: &str) -> bool {
    crate::control::is_id_text(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_object_with_the_two_strings_parses() {
        let ok = parse_request(br#" {"key": "kt_live_x", "api_id": "docs"}"#).unwrap();
        assert_eq!((ok.key.as_str(), ok.api_id.as_str()), ("kt_live_x", "docs"));
        for (body, needle) in [
            (&br#"["kt_live_x", "docs"]"#[..], "JSON object"),
            (b"", "missing field `key`"),
            (br#"{"key": "k"}"#, "missing field `api_id`"),
            (br#"{"key": 1, "api_id": "docs"}"#, "`key`: invalid type"),
            (br#"{"key": "k", "api_id": "docs", "more": 1}"#, "unknown field `more`"),
        ] {
            let error = parse_request(body).err().expect("refused");
            assert_eq!(error.code, ErrorCode::InvalidBody);
            assert!(error.message.contains(needle), "{}: {}", String::from_utf8_lossy(body), error.message);
        }
    }

    #[test]
    fn an_unidentified_key_answers_only_valid_and_code() {
        let verdict = Verdict::new(Some(ErrorCode::InvalidKey), None, None, None);
        assert_eq!(serde_json::to_value(&verdict).unwrap(), serde_json::json!({"valid": false, "code": "invalid_key"}));
        let verdict = Verdict::new(None, None, Some("docs"), Some(&Standing { limit: 5, remaining: 4, reset_secs: 12 }));
        assert_eq!(
            serde_json::to_value(&verdict).unwrap(),
            serde_json::json!({"valid": true, "code": "VALID", "api_id": "docs", "ratelimit": {"limit": 5, "remaining": 4, "reset": 12}})
        );
    }

    #[test]
    fn only_api_id_shaped_text_is_kept() {
        assert!(looks_like_api_id("docs") && looks_like_api_id("billing-v2_eu"));
        assert!(!looks_like_api_id("") && !looks_like_api_id("Docs") && !looks_like_api_id("kt_live_AbC") && !looks_like_api_id(&"a".repeat(64)));
    }
}
