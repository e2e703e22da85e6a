//! What the gateway's protection remembers between calls, and the key
//! check it shares with the admin API.
//!
//! The threat history, the failed key checks per address with the
//! automatic brute-force block they lead to, and the country lookup live
//! here, in one [`Shield`] the gateway and the admin API hold together:
//! an application event sent to the admin API with an API key
//! (`admin::app_events`) meets the same blocklists and is counted toward the
//! same block as a call at the gateway, so keys cannot be guessed there
//! while the gateway would have blocked the address.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;

use super::{authenticate, blocked_event, consumer_security_event, describe_consumer, security_event, user_agent_text, AuthFailure, KeySource};
use crate::audit::AuditPipeline;
use crate::config::GatewayConfig;
use crate::control::ControlPlane;
use crate::error::ErrorCode;
use crate::event::{self, security_type, Category, Event, Text};
use crate::protection::{self, Block, Countries, FailureCounter, History};
use crate::ratelimit::{self, Exceeded, Standing};
use crate::settings::BLOCKED_ERROR_CODE;
use crate::snapshot::KeyEntry;

/// The gateway's memory of callers, shared with the admin API.
pub struct Shield {
    control: Arc<ControlPlane>,
    audit: Arc<AuditPipeline>,
    history: History,
    failures: FailureCounter,
    bruteforce_block: Duration,
    /// Where callers' countries come from (table, MaxMind database, or neither).
    geo: Countries,
}

/// A key presented to the admin API (an application event's submitter):
/// the caller and the request as [`Shield::check_key`] records them.
pub struct KeyedCall<'a> {
    /// The tenant the call names (in its path).
    pub tenant: &'a str,
    /// Whether that tenant exists: refusals are recorded in its trail when
    /// it does, under the system tenant otherwise.
    pub tenant_exists: bool,
    pub key: &'a str,
    pub source: KeySource,
    /// The caller's address (behind a trusted proxy, the forwarded one).
    pub client: IpAddr,
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub request_id: &'a str,
}

/// Why [`Shield::check_key`] refused a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    /// The caller or the key is on a blocklist: the gateway's generic 403.
    Blocked,
    /// The key failed its check (invalid, revoked, expired), counted
    /// toward the brute-force block.
    Failed(ErrorCode),
    /// A live key of another tenant (counted too).
    OtherTenant,
}

impl Shield {
    pub fn new(config: &GatewayConfig, control: Arc<ControlPlane>, audit: Arc<AuditPipeline>, geo: Countries) -> Shield {
        Shield {
            control,
            audit,
            history: History::default(),
            failures: FailureCounter::new(config.bruteforce_failures, config.bruteforce_window),
            bruteforce_block: config.bruteforce_block,
            geo,
        }
    }

    /// The caller's country, when a table or database is configured.
    pub fn country(&self, ip: IpAddr) -> Option<&str> {
        self.geo.country(ip)
    }

    /// Records a block of `ip` and returns its threat score.
    pub(super) fn threat_score(&self, ip: IpAddr, base: u8, now_ms: i64) -> u8 {
        self.history.score(ip, base, now_ms)
    }

    /// Records the `request_blocked` security event of a blocked call (the
    /// reason, the rule, the request's fingerprint, a threat score) and
    /// marks `event` refused with it.
    pub(super) fn record_block(&self, event: &mut Event, block: &Block, client: IpAddr, fingerprint: String) {
        let threat_score = self.threat_score(client, block.base_score, event.timestamp_ms);
        let details = serde_json::json!({
            "block_reason": block.reason,
            "rule_id": block.rule_id,
            "fingerprint": fingerprint,
            "threat_score": threat_score,
        });
        let mut security = blocked_event(event, Some(Text::from_static(BLOCKED_ERROR_CODE)), details.clone());
        security.target = event.api_id.as_ref().map(|api| format!("api:{api}"));
        security.consumer_id = event.consumer_id.clone();
        security.consumer_name = event.consumer_name.clone();
        security.key_id = event.key_id.clone();
        security.key_hint = event.key_hint.clone();
        self.audit.record(security);
        event.error_code = Some(Text::from_static(BLOCKED_ERROR_CODE));
        event.error_message = Some(format!("blocked: {}", block.reason));
        event.details = Some(details);
    }

    /// Counts a failed authentication against the caller's address and, past
    /// the limit, blocks the address for a while (rule `auto-bruteforce`).
    fn count_auth_failure(&self, request: &Event) {
        let Some(ip) = request.client_ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok()) else { return };
        let Some(failures) = self.failures.failed(ip, request.timestamp_ms) else { return };
        let expires_at_ms = request.timestamp_ms + self.bruteforce_block.as_millis() as i64;
        let (control, audit) = (self.control.clone(), self.audit.clone());
        let mut event = security_event(request, security_type::REQUEST_BLOCKED);
        event.outcome = Text::from_static("success");
        event.actor = Some("keytrail:auto-bruteforce".into());
        event.target = Some(format!("ip:{ip}"));
        event.details = Some(serde_json::json!({
            "rule_id": protection::BRUTEFORCE_RULE,
            "block_reason": "ABUSE_PATTERN_DETECTED",
            "failures": failures,
            "window_secs": self.failures.window_secs(),
            "expires_at": event::format_timestamp(expires_at_ms),
        }));
        // The control store is SQLite: off the async threads.
        tokio::task::spawn_blocking(move || {
            let new = crate::control::NewBlock {
                kind: protection::EntryKind::Ip,
                value: ip.to_string(),
                reason: Some("ABUSE_PATTERN_DETECTED".into()),
                rule_id: Some(protection::BRUTEFORCE_RULE.into()),
                expires_at_ms: Some(expires_at_ms),
            };
            match control.add_block(None, new, "keytrail:auto-bruteforce") {
                Ok(entry) => {
                    if let Some(details) = event.details.as_mut() {
                        details["entry_id"] = serde_json::json!(entry.id);
                    }
                    audit.record(event);
                }
                Err(error) => tracing::error!(%ip, error = %error.message, "could not block a brute-forcing address"),
            }
        });
    }

    /// Records a refused authentication (`auth_failed`, `revoked_key_used`,
    /// `expired_key_used`) and counts it toward the brute-force block.
    pub(super) fn record_auth_failure(&self, request: &Event, failure: &AuthFailure, source: Option<KeySource>, hint: Option<String>) {
        let mut event = match &failure.key {
            Some(key) => {
                let mut event = consumer_security_event(request, key, failure.event_type, failure.code);
                event.target = Some(format!("key:{}", key.key_id));
                event
            }
            None => {
                let mut event = security_event(request, failure.event_type);
                event.error_code = Some(Text::from_static(failure.code.as_str()));
                event.actor = request.client_ip.as_ref().map(|ip| format!("ip:{ip}").into());
                event.target = request.api_id.as_ref().map(|api| format!("api:{api}"));
                event
            }
        };
        // The hint of the key as presented (the stored one, when it matched).
        event.key_hint = hint.map(Text::from);
        event.details = Some(serde_json::json!({
            "reason": failure.reason,
            "key_source": source.map(KeySource::as_str),
        }));
        self.audit.record(event);
        // Only a key presented and refused is a guess at one. A call with
        // none (a browser's CORS preflight, a health checker) is refused
        // and recorded, but no address is blocked for it.
        if failure.code != ErrorCode::MissingKey {
            self.count_auth_failure(request);
        }
    }

    /// The `rate_limit_exceeded` security event: who, with which key, which
    /// limit and window.
    pub(super) fn record_rate_limited(&self, request: &Event, key: &KeyEntry, exceeded: &Exceeded, cost: u32) {
        let code = if exceeded.cost_above_limit { ErrorCode::CostExceedsQuota } else { ErrorCode::RateLimited };
        let mut event = consumer_security_event(request, key, security_type::RATE_LIMIT_EXCEEDED, code);
        event.target = Some(exceeded.scope.clone());
        let mut details = serde_json::json!({
            "limit": exceeded.limit,
            "window": exceeded.window,
            "scope": exceeded.scope,
            "cost": cost,
        });
        // A cost above the whole limit: no wait lets it pass.
        if !exceeded.cost_above_limit {
            details["retry_after_secs"] = exceeded.retry_after_secs.into();
        }
        event.details = Some(details);
        self.audit.record(event);
    }

    /// Spends one call of the consumer's tier limits (its minute rate and
    /// daily cap, as a gateway call does) for a key presented to the admin
    /// API that passed its checks; a refusal spends nothing and is recorded
    /// as the gateway records it (`rate_limit_exceeded`).
    pub fn spend_limits(&self, call: &KeyedCall<'_>, entry: &KeyEntry) -> Result<Option<Standing>, Exceeded> {
        const COST: u32 = 1;
        let mut request = self.request_event(call);
        describe_consumer(&mut request, entry);
        ratelimit::check(entry.tier.as_deref(), None, &entry.consumer_id, COST, request.timestamp_ms).inspect_err(|exceeded| {
            self.record_rate_limited(&request, entry, exceeded, COST);
        })
    }

    /// Records a key the admin API refuses for lacking `scope` (application
    /// events' `audit:write`) as the gateway records a call its api's
    /// required scopes refuse: a `policy_applied` security event naming
    /// the scope wanted and those the key holds.
    pub fn record_missing_scope(&self, call: &KeyedCall<'_>, entry: &KeyEntry, scope: &str) {
        let request = self.request_event(call);
        let mut event = consumer_security_event(&request, entry, security_type::POLICY_APPLIED, ErrorCode::InsufficientScope);
        event.details = Some(serde_json::json!({
            "policy": "required_scopes",
            "field": "scopes",
            "limit": [scope],
            "actual": entry.scopes,
        }));
        self.audit.record(event);
    }

    /// The request event a key presented to the admin API is recorded
    /// with: its tenant (or the system tenant), the call and the caller.
    fn request_event(&self, call: &KeyedCall<'_>) -> Event {
        let tenant = if call.tenant_exists { Text::from(call.tenant) } else { Text::from_static(event::SYSTEM_TENANT) };
        let mut request = Event::new(tenant, Category::Request, Text::from_static("request"), Text::from_static("failure"));
        request.request_id = Some(call.request_id.to_string());
        request.method = Some(Text::from(call.method));
        request.path = Some(call.path.to_string());
        request.client_ip = Some(call.client.to_string().into());
        request.user_agent = call.headers.get(http::header::USER_AGENT).map(|v| user_agent_text(v.as_bytes()));
        request
    }

    /// The gateway's checks of a caller and its key, for a key presented
    /// to the admin API, in the gateway's order: the global and the
    /// tenant's blocklists by address, country and user agent; the key
    /// (format, hash, tenant, revocation, expiry — each refusal recorded and
    /// counted toward the brute-force block, as at the gateway); the key
    /// blocklists. The consumer's status and scopes are the caller's to check.
    pub fn check_key(&self, call: &KeyedCall<'_>) -> Result<Arc<KeyEntry>, KeyRefusal> {
        let mut request = self.request_event(call);
        let country = self.country(call.client);
        request.country = country.map(Text::from);
        let now = request.timestamp_ms;

        let snapshot = self.control.snapshot();
        let tenant_blocks = snapshot.tenant_blocks(call.tenant);
        // Every `User-Agent` line, whole, as the gateway matches them.
        let agents: Vec<String> =
            call.headers.get_all(http::header::USER_AGENT).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect();
        let full_agent = (!agents.is_empty()).then(|| agents.join("\n"));
        let caller_block = snapshot
            .global_blocks
            .match_caller(call.client, country, full_agent.as_deref(), now)
            .or_else(|| tenant_blocks?.match_caller(call.client, country, full_agent.as_deref(), now));
        if let Some(entry) = caller_block {
            let fingerprint = self.fingerprint(call, request.user_agent.as_deref());
            self.record_block(&mut request, &Block::from_entry(&entry), call.client, fingerprint);
            return Err(KeyRefusal::Blocked);
        }

        let entry = match authenticate(&snapshot, call.key, Some(call.tenant)) {
            Ok(entry) => entry,
            Err(failure) => {
                let hint = failure.hint(call.key);
                if let (None, Some(hint)) = (&failure.key, &hint) {
                    request.key_hint = Some(hint.as_str().into());
                }
                self.record_auth_failure(&request, &failure, Some(call.source), hint);
                // A live key of another tenant: answered as a tenant that does not exist.
                let other_tenant = failure.code == ErrorCode::InvalidKey && snapshot.key_for_secret(call.key).is_some();
                return Err(if other_tenant { KeyRefusal::OtherTenant } else { KeyRefusal::Failed(failure.code) });
            }
        };
        describe_consumer(&mut request, &entry);
        if let Some(block) = snapshot.key_block(call.tenant, &entry.key_id, now) {
            let fingerprint = self.fingerprint(call, request.user_agent.as_deref());
            self.record_block(&mut request, &Block::from_entry(&block), call.client, fingerprint);
            return Err(KeyRefusal::Blocked);
        }
        Ok(entry)
    }

    fn fingerprint(&self, call: &KeyedCall<'_>, user_agent: Option<&str>) -> String {
        let mut names: Vec<&str> = call.headers.keys().map(http::HeaderName::as_str).collect();
        protection::fingerprint(call.method, call.path, None, user_agent, &mut names)
    }
}
