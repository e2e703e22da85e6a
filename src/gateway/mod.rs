//! The gateway: the listener, the request phases and the upstream client.
//!
//! Architecture invariants:
//! - No store access and no lock across an await on the request path: routes
//!   and keys come from the control plane's snapshot.
//! - Every request, served, refused or failed, produces exactly one `request`
//!   event, recorded by the response body when the response is finished
//!   ([`body::GatewayBody`]), so sizes and latency are the real ones.
//! - Bodies stream both ways; nothing is buffered whole.
//! - The key the caller presented is removed from the forwarded request.

pub mod body;
mod conn;
mod h1;
mod shield;
mod timer;
pub mod upstream;
mod verify;

pub use shield::{KeyRefusal, KeyedCall, Shield};

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use tokio::net::TcpListener;
use tokio::sync::watch;

use self::body::{ClientBody, CountingBody, Finisher, GatewayBody, ProxiedHead};
use self::h1::CallHeaders;
use self::upstream::{ConnectionUpstreams, Outgoing, UpstreamError, Upstreams};
use crate::audit::AuditPipeline;
use crate::config::GatewayConfig;
use crate::control::ControlPlane;
use crate::error::{ApiError, ErrorCode};
use crate::event::{self, security_type, Category, Event, Text, SYSTEM_TENANT};
use crate::keys::{self, MalformedKey};
use crate::policy::Violation;
use crate::protection::{self, AttackRules, Block, Blocklist, Countries, TrustedProxies};
use crate::ratelimit::{self, Standing};
use crate::snapshot::{KeyEntry, Snapshot};

static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_CONSUMER_ID: HeaderName = HeaderName::from_static("x-consumer-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// Longest user agent kept in an event.
const MAX_USER_AGENT: usize = 512;

pub struct Gateway {
    control: Arc<ControlPlane>,
    audit: Arc<AuditPipeline>,
    upstreams: Arc<Upstreams>,
    upstream_timeout: Duration,
    /// How long a client connection may take to send a request head.
    head_timeout: Duration,
    attack_rules: AttackRules,
    /// Threat history, failed key checks and countries, shared with the
    /// admin API's keyed application events.
    shield: Arc<Shield>,
    trusted_proxies: TrustedProxies,
}

/// One call as the handler takes it: the caller's request line, headers
/// and body, from the gateway's connection loop or from hyper.
pub struct Call {
    pub method: http::Method,
    pub uri: Uri,
    pub headers: CallHeaders,
    pub body: ClientBody,
}

impl Call {
    /// A request hyper read.
    pub fn from_request(req: Request<ClientBody>) -> Call {
        let (parts, body) = req.into_parts();
        Call { method: parts.method, uri: parts.uri, headers: CallHeaders::Map(parts.headers), body }
    }
}

/// Where the caller put its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    ApiKeyHeader,
    Authorization,
    /// The JSON body of `POST /v1/keys/verify`.
    VerifyBody,
}

impl KeySource {
    fn as_str(self) -> &'static str {
        match self {
            KeySource::ApiKeyHeader => "x-api-key",
            KeySource::Authorization => "authorization",
            KeySource::VerifyBody => "verify_body",
        }
    }
}

/// A refused authentication: what the client is told and what the trail keeps.
struct AuthFailure {
    code: ErrorCode,
    event_type: &'static str,
    reason: &'static str,
    key: Option<Arc<KeyEntry>>,
}

impl AuthFailure {
    /// The hint of the refused `key` for its event; none for an empty key,
    /// which presents no key (as a call with none).
    fn hint(&self, key: &str) -> Option<String> {
        (self.code != ErrorCode::MissingKey).then(|| keys::hint(key))
    }
}

impl Gateway {
    pub fn new(config: &GatewayConfig, control: Arc<ControlPlane>, audit: Arc<AuditPipeline>, geo: Countries) -> Gateway {
        let shield = Arc::new(Shield::new(config, control.clone(), audit.clone(), geo));
        let upstreams = Upstreams::new(config.connect_timeout, control.upstream_guard().clone());
        Gateway {
            control,
            audit,
            upstreams,
            upstream_timeout: config.upstream_timeout,
            head_timeout: config.head_timeout,
            attack_rules: AttackRules::default(),
            shield,
            trusted_proxies: config.trusted_proxies.clone(),
        }
    }

    /// The gateway's memory of callers (threat history, failed key checks,
    /// countries), for the admin API to share.
    pub fn shield(&self) -> Arc<Shield> {
        self.shield.clone()
    }

    /// Records a request that the HTTP layer refused (400, 431) or gave up
    /// on (408: a head not sent in time) before [`Gateway::handle`] could
    /// take it: a request event and a security
    /// event (`request_blocked`, reason `MALFORMED_REQUEST`, as the attack
    /// rules give a badly encoded path), under the system tenant, since no
    /// route was looked up. Returns the events' request id, for the answer's
    /// `X-Request-Id` when the gateway answers.
    pub fn record_malformed(&self, peer: SocketAddr, malformed: Malformed) -> String {
        let mut event = Event::new(Text::from_static(SYSTEM_TENANT), Category::Request, Text::from_static("request"), Text::from_static("failure"));
        let request_id = event::new_id_at(event.timestamp_ms);
        event.request_id = Some(request_id.clone());
        let mut client = peer.ip();
        let Refusal { rule, status, code, message } = malformed.refusal();
        match &malformed {
            Malformed::Target { method, target, headers } => {
                event.method = Some(method_text(method));
                // As text, without the query, and no longer than the attack rules read.
                let target = String::from_utf8_lossy(target);
                let path: String = event::path_without_query(&target).chars().take(protection::MAX_TARGET).collect();
                event.path = Some(path);
                client = self.client_of(peer.ip(), headers);
                event.user_agent = headers.get("user-agent").map(user_agent_text);
            }
            Malformed::Slow { received } => event.request_size_bytes = Some(*received as u64),
            Malformed::Http | Malformed::TooLarge => {}
        }
        event.client_ip = Some(client.to_string().into());
        event.country = self.shield.country(client).map(Text::from);
        event.status_code = Some(status.as_u16());
        event.error_code = Some(Text::from_static(code.as_str()));
        event.error_message = Some(message.to_string());
        let threat_score = self.shield.threat_score(client, MALFORMED_SCORE, event.timestamp_ms);
        let details = serde_json::json!({ "block_reason": "MALFORMED_REQUEST", "rule_id": rule, "threat_score": threat_score });
        self.audit.record(blocked_event(&event, event.error_code.clone(), details));
        self.audit.record(event);
        request_id
    }

    /// The caller: the peer, or the client a trusted proxy forwarded for.
    fn client_of(&self, peer: std::net::IpAddr, headers: &CallHeaders) -> std::net::IpAddr {
        self.trusted_proxies.client_ip(peer, || headers.values(self.trusted_proxies.header_name()).filter_map(h1::value_text).collect::<Vec<_>>().into_iter())
    }

    /// Runs one request through its phases, in order (ARCHITECTURE.md, "A request's life").
    pub async fn handle(&self, peer: SocketAddr, upstreams: &ConnectionUpstreams, req: Call) -> Response<GatewayBody> {
        // 1. Accept: request id and clock.
        let started = Instant::now();
        let mut event = Event::new(Text::from_static(SYSTEM_TENANT), Category::Request, Text::from_static("request"), Text::from_static("success"));
        let (request_id_value, client) = self.accept(&mut event, peer, upstreams, &req);
        // Key verification for callers that do not proxy: before routing, so
        // no api's prefix can shadow it. Boxed, so the proxy path's future
        // does not grow by the verification's state.
        if req.uri.path() == verify::PATH {
            return Box::pin(self.verify(req, event, client, started)).await;
        }
        let finisher = |event: Event, request_bytes: Option<Arc<AtomicU64>>| Finisher {
            event,
            started,
            request_bytes,
            audit: self.audit.clone(),
        };

        // 2. Pre-auth protection: the attack rules, then the global and the
        // api's tenant's blocklists, before any key is looked at. (The route
        // is looked up first only to attribute a block to its tenant.)
        let snapshot = self.control.snapshot();
        let found = snapshot.route(req.uri.path()).cloned();
        if let Some(route) = &found {
            event.tenant_id = route.tenant_id.clone();
            event.api_id = Some(route.api_id.clone());
        }
        let now = event.timestamp_ms;
        let country = self.shield.country(client);
        event.country = country.map(Text::from);
        let tenant_blocks = found.as_ref().and_then(|route| snapshot.tenant_blocks(&route.tenant_id));
        let full_agent = blocklist_agent(&req.headers, &snapshot.global_blocks, tenant_blocks);
        let user_agent = full_agent.as_deref().or(event.user_agent.as_deref());
        let block = self.attack_rules.check(req.uri.path(), req.uri.query()).or_else(|| {
            snapshot
                .global_blocks
                .match_caller(client, country, user_agent, now)
                .or_else(|| tenant_blocks?.match_caller(client, country, user_agent, now))
                .map(|entry| Block::from_entry(&entry))
        });
        if let Some(block) = block {
            return self.block(&mut event, &block, &req, client, &request_id_value, finisher);
        }

        // 3. Route. A call to a path no api serves is still attributed to the
        // caller's tenant when it presented a valid key.
        let presented = presented_key(&req.headers);
        let Some(route) = found else {
            if let Some(Ok((key, _))) = &presented {
                if let Ok(entry) = authenticate(&snapshot, key, None) {
                    describe_consumer(&mut event, &entry);
                }
            }
            return refuse(&mut event, ErrorCode::NoRoute, &request_id_value, finisher);
        };

        // 4. Authenticate the key against the api's tenant.
        let (key, source) = match presented {
            None => {
                let failure =
                    AuthFailure { code: ErrorCode::MissingKey, event_type: security_type::AUTH_FAILED, reason: "no key presented", key: None };
                self.shield.record_auth_failure(&event, &failure, None, None);
                return refuse(&mut event, failure.code, &request_id_value, finisher);
            }
            Some(Err(source)) => {
                let failure = AuthFailure {
                    code: ErrorCode::InvalidKey,
                    event_type: security_type::AUTH_FAILED,
                    reason: "key header is not valid text",
                    key: None,
                };
                self.shield.record_auth_failure(&event, &failure, Some(source), None);
                return refuse(&mut event, failure.code, &request_id_value, finisher);
            }
            Some(Ok(found)) => found,
        };
        let entry = match authenticate(&snapshot, key, Some(&route.tenant_id)) {
            Ok(entry) => entry,
            Err(failure) => {
                let hint = keys::hint(key);
                if let Some(entry) = &failure.key {
                    describe_consumer(&mut event, entry);
                } else {
                    event.key_hint = Some(hint.as_str().into());
                }
                self.shield.record_auth_failure(&event, &failure, Some(source), Some(hint));
                return refuse(&mut event, failure.code, &request_id_value, finisher);
            }
        };
        describe_consumer(&mut event, &entry);
        // A key on a blocklist is refused like any other block.
        let key_block = snapshot.key_block(&route.tenant_id, &entry.key_id, now);
        drop(snapshot);
        if let Some(entry) = key_block {
            return self.block(&mut event, &Block::from_entry(&entry), &req, client, &request_id_value, finisher);
        }
        // The key authenticated for this api: that is a use, whatever the
        // later phases decide (a blocked key was refused as a credential).
        entry.usage.touch(now);

        // 5. Authorise: the consumer must be active. (Scopes per api come with policies.)
        if !entry.consumer_active {
            return refuse(&mut event, ErrorCode::ConsumerSuspended, &request_id_value, finisher);
        }

        // 6. Policies: methods, forbidden paths, scopes, body size (the
        // body's headers looked up only when there is a size to hold it to).
        let (length, body) = match route.policies.max_body_bytes {
            Some(_) => (declared_length(&req.headers), has_body(&req.headers)),
            None => (None, false),
        };
        if let Err(violation) = route.policies.check(req.method.as_str(), req.uri.path(), length, body, &entry.scopes) {
            self.record_policy_applied(&event, &entry, &violation);
            // The failed call's event says which part of the request was wrong.
            event.details = Some(policy_details(&violation));
            let mut response = refuse(&mut event, violation.code, &request_id_value, finisher);
            if violation.code == ErrorCode::MethodNotAllowed {
                let allow = route.policies.allowed_methods.join(", ");
                response.headers_mut().insert(header::ALLOW, header_value(&allow));
            }
            return response;
        }
        // A tunnel is never opened: proxied, an upstream's 2xx to `CONNECT`
        // would make hyper take the client connection for one and send
        // nothing of the answer.
        if req.method == http::Method::CONNECT {
            let error = ApiError::new(ErrorCode::MethodNotAllowed, "CONNECT is not proxied: the gateway opens no tunnels");
            let mut response = refuse_with(&mut event, error, &request_id_value, finisher);
            // The methods the api takes (its policy's, or any), less this one.
            let allowed = &route.policies.allowed_methods;
            let allow = if allowed.is_empty() {
                "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE".to_string()
            } else {
                allowed.iter().filter(|m| *m != "CONNECT").map(String::as_str).collect::<Vec<_>>().join(", ")
            };
            response.headers_mut().insert(header::ALLOW, header_value(&allow));
            return response;
        }

        // 7. Rate limits: the consumer's tier and the api's own limit, at
        // the path's cost. After the policies, so a call they refuse spends
        // none of either budget.
        let cost = ratelimit::cost_of(&route.costs, req.uri.path());
        let api_limit = route.rate_limit.as_deref().map(|l| (route.api_id.as_str(), l));
        let standing = match ratelimit::check(entry.tier.as_deref(), api_limit, &entry.consumer_id, cost, now) {
            Ok(standing) => standing,
            Err(exceeded) if exceeded.cost_above_limit => {
                // No wait lets it pass: no `Retry-After`, and a code of its own.
                self.shield.record_rate_limited(&event, &entry, &exceeded, cost);
                let message = format!(
                    "this call costs {cost} and the consumer's daily quota is {}: it can never pass (its path costs more than the tier allows in a day)",
                    exceeded.limit
                );
                let mut response = refuse_with(&mut event, ApiError::new(ErrorCode::CostExceedsQuota, message), &request_id_value, finisher);
                rate_headers(response.headers_mut(), &exceeded.standing);
                return response;
            }
            Err(exceeded) => {
                self.shield.record_rate_limited(&event, &entry, &exceeded, cost);
                let mut response = refuse(&mut event, ErrorCode::RateLimited, &request_id_value, finisher);
                let headers = response.headers_mut();
                rate_headers(headers, &exceeded.standing);
                headers.insert(header::RETRY_AFTER, number_header(exceeded.retry_after_secs));
                return response;
            }
        };

        // 8. Proxy, streaming both ways.
        let Call { method, uri, headers, body } = req;
        // Origin-form: the path as the caller sent it, query included.
        let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let xff = forwarded_for(&headers, upstreams);
        // The key never travels further than the gateway, and the identity
        // headers are the gateway's to set: a caller's own are left out.
        let key_header = match source {
            KeySource::ApiKeyHeader => &X_API_KEY,
            KeySource::Authorization => &header::AUTHORIZATION,
            // Never proxied: verification answers itself.
            KeySource::VerifyBody => &header::HOST,
        };
        // A keytrail key in `Authorization` beside the one in `X-API-Key`
        // (the same key, or another; in any of its lines) is left out too;
        // any other `Authorization` is the upstream's own and goes through.
        let bearer_key = source == KeySource::ApiKeyHeader && bearer_tokens(&headers).any(|t| keys::check_format(t).is_ok());
        let add = [
            (&header::HOST, &route.host_header),
            (&X_REQUEST_ID, &request_id_value),
            (&X_CONSUMER_ID, &entry.consumer_header),
            (&X_FORWARDED_FOR, &xff),
        ];
        let skip = [key_header, if bearer_key { &header::AUTHORIZATION } else { key_header }, &header::HOST, &X_REQUEST_ID, &X_CONSUMER_ID, &X_FORWARDED_FOR];
        let forwarded = h1::Forwarded { add: &add, skip: &skip };
        // Whether a timeout found the gateway waiting on the caller's body
        // (only a call hyper read has one).
        let watch = match &body {
            ClientBody::Hyper(_, watch) => Some(watch.clone()),
            ClientBody::Empty => None,
        };
        let request_bytes = Arc::new(AtomicU64::new(0));
        let upstream_req = Outgoing { method: &method, target, headers: &headers, body: CountingBody::new(body, request_bytes.clone()) };
        let timeout = route.timeout.unwrap_or(self.upstream_timeout);
        let sent = Instant::now();
        let waiting = Abandoned { event: &mut event, started, request_bytes: &request_bytes, audit: &self.audit, armed: true };
        let outcome = upstreams.send_within(&route.upstream_authority, upstream_req, forwarded, (sent, timeout), &request_bytes).await;
        waiting.disarm();
        event.upstream_latency_us = Some(sent.elapsed().as_micros() as u64);
        // The gateway's own refusals from here on carry the budget the
        // call spent, as every answer to a call the limits checked does.
        let refused = |mut response: Response<GatewayBody>| {
            if let Some(standing) = &standing {
                rate_headers(response.headers_mut(), standing);
            }
            response
        };
        let answer = match outcome {
            Some(Ok(answer)) => answer,
            // The caller's body failed (broken chunks, or the caller went
            // away midway): the caller's error, not the upstream's.
            Some(Err(UpstreamError::RequestBody(error))) => {
                tracing::debug!(api = %route.api_id, error = %error_chain(&*error), "the request body could not be read");
                let error = ApiError::new(ErrorCode::InvalidBody, "the request body could not be read (its chunked framing is broken, or it ended early)");
                return refused(refuse_with(&mut event, error, &request_id_value, |e, _| finisher(e, Some(request_bytes))));
            }
            // The caller stopped sending its body (short of its length, or
            // before its last chunk): its timeout. (A body the gateway no
            // longer reads because the upstream stopped reading it is the
            // upstream's.)
            None if watch.is_some_and(|w| w.waiting_for_body()) => {
                let error = ApiError::new(ErrorCode::RequestTimeout, "the request body stopped coming before its end");
                return refused(refuse_with(&mut event, error, &request_id_value, |e, _| finisher(e, Some(request_bytes))));
            }
            Some(Err(error)) => {
                tracing::warn!(api = %route.api_id, upstream = %route.upstream_authority, error = %error_chain(&error), "upstream request failed");
                // What went wrong, as far as the caller may know: not reached,
                // or reached and no answer to be had.
                let error = match error {
                    UpstreamError::Invalid(_) => {
                        ApiError::new(ErrorCode::UpstreamUnavailable, "the upstream service answered with a response this gateway cannot read")
                    }
                    UpstreamError::Closed => ApiError::new(ErrorCode::UpstreamUnavailable, "the upstream service closed the connection without answering"),
                    UpstreamError::Io(_) => {
                        ApiError::new(ErrorCode::UpstreamUnavailable, "the connection to the upstream service failed before it answered")
                    }
                    // Its every address is one the gateway may not call
                    // (`gateway.upstream_deny`, or keytrail's own listeners).
                    UpstreamError::Refused { .. } => {
                        ApiError::new(ErrorCode::UpstreamUnavailable, "the api's upstream is at an address this gateway does not call")
                    }
                    _ => ApiError::from_code(ErrorCode::UpstreamUnavailable),
                };
                return refused(refuse_with(&mut event, error, &request_id_value, |e, _| finisher(e, Some(request_bytes))));
            }
            None => {
                tracing::warn!(api = %route.api_id, upstream = %route.upstream_authority, timeout_ms = timeout.as_millis() as u64, "upstream timed out");
                return refused(refuse(&mut event, ErrorCode::UpstreamTimeout, &request_id_value, |e, _| finisher(e, Some(request_bytes))));
            }
        };

        // 9. Audit: the body records the event when the response is finished.
        // The headers ride with the body: the upstream's as they came (the
        // upstream client already left out the hop-by-hop ones) and the
        // gateway's, which win over the upstream's.
        event.status_code = Some(answer.status.as_u16());
        if answer.status.as_u16() >= 400 {
            event.outcome = Text::from_static("failure");
        }
        let head = ProxiedHead { upstream: answer.headers, request_id: request_id_value, rate: standing };
        let mut response = Response::new(GatewayBody::upstream(answer.body, finisher(event, Some(request_bytes)), head));
        *response.status_mut() = answer.status;
        response
    }

    /// The `policy_applied` security event: which policy, its limit, and
    /// what the call brought.
    fn record_policy_applied(&self, request: &Event, key: &KeyEntry, violation: &Violation) {
        let mut event = consumer_security_event(request, key, security_type::POLICY_APPLIED, violation.code);
        event.target = request.api_id.as_ref().map(|api| format!("api:{api}"));
        event.details = Some(serde_json::json!({
            "policy": violation.policy,
            "field": violation.field,
            "limit": violation.limit,
            "actual": violation.actual,
        }));
        self.audit.record(event);
    }

    /// Fills a call's new request event as it is accepted: its request id,
    /// method, path without the query, client address and user agent.
    /// Returns the request id as the header value every answer carries, and
    /// the client address. (The event is filled in place: returned, it was
    /// one more copy of it on every call.)
    #[inline(always)]
    fn accept(&self, event: &mut Event, peer: SocketAddr, upstreams: &ConnectionUpstreams, req: &Call) -> (HeaderValue, std::net::IpAddr) {
        // Stamped with the event's own time, so the store keeps only its random part.
        let request_id = event::new_id_at(event.timestamp_ms);
        // One header value for every answer and both directions (clones share its bytes).
        let request_id_value = header_value(&request_id);
        event.request_id = Some(request_id);
        event.method = Some(method_text(&req.method));
        event.path = Some(event::path_without_query(req.uri.path()).to_string());
        let client = self.client_of(peer.ip(), &req.headers);
        event.client_ip = Some(if client == peer.ip() { upstreams.peer_text().clone() } else { client.to_string().into() });
        event.user_agent = req.headers.get("user-agent").map(user_agent_text);
        (request_id_value, client)
    }

    /// Refuses a call whose `Host` lines are wrong (see [`host_problem`])
    /// with 400, recorded as a failed call under `_system`: before
    /// anything else is checked, as a head that cannot be read is.
    /// (Hyper's path; the connection loop hands such a call to it.)
    #[cold]
    pub fn refuse_host(&self, peer: SocketAddr, upstreams: &ConnectionUpstreams, req: &Call, message: &'static str) -> Response<GatewayBody> {
        let started = Instant::now();
        let mut event = Event::new(Text::from_static(SYSTEM_TENANT), Category::Request, Text::from_static("request"), Text::from_static("success"));
        let (request_id_value, _) = self.accept(&mut event, peer, upstreams, req);
        let finisher = |event, request_bytes| Finisher { event, started, request_bytes, audit: self.audit.clone() };
        refuse_with(&mut event, ApiError::new(ErrorCode::InvalidParameter, message), &request_id_value, finisher)
    }

    /// Refuses a blocked request with a generic 403; the request event and a
    /// `request_blocked` security event keep the reason, the rule, a
    /// fingerprint of the request and a threat score.
    fn block(
        &self,
        event: &mut Event,
        block: &Block,
        req: &Call,
        client: std::net::IpAddr,
        request_id: &HeaderValue,
        finisher: impl FnOnce(Event, Option<Arc<AtomicU64>>) -> Finisher,
    ) -> Response<GatewayBody> {
        let names = req.headers.names();
        let mut names: Vec<&str> = names.iter().map(String::as_str).collect();
        let fingerprint =
            protection::fingerprint(req.method.as_str(), req.uri.path(), req.uri.query(), event.user_agent.as_deref(), &mut names);
        self.shield.record_block(event, block, client, fingerprint);
        refuse(event, ErrorCode::Forbidden, request_id, finisher)
    }
}

/// A call's event while its upstream is asked. hyper drops a call whose
/// client went away then, before any answer (and so any [`GatewayBody`])
/// exists; the upstream may have had the request all the same, so the
/// event is recorded as the client going away.
struct Abandoned<'a> {
    event: &'a mut Event,
    started: Instant,
    request_bytes: &'a Arc<AtomicU64>,
    audit: &'a Arc<AuditPipeline>,
    armed: bool,
}

impl Abandoned<'_> {
    /// The upstream's answer (or error) came: the call goes on.
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if self.armed {
            let finisher = Finisher {
                event: std::mem::take(self.event),
                started: self.started,
                request_bytes: Some(self.request_bytes.clone()),
                audit: self.audit.clone(),
            };
            finisher.finish(0, false, None);
        }
    }
}

/// The body length the caller declared, if any.
fn declared_length(headers: &CallHeaders) -> Option<u64> {
    h1::value_text(headers.get("content-length")?)?.trim().parse().ok()
}

/// Whether the call sends a body: a non-zero length or a chunked one.
fn has_body(headers: &CallHeaders) -> bool {
    headers.contains("transfer-encoding") || declared_length(headers).is_some_and(|n| n > 0)
}

/// What a refused call's own event says about the policy that refused it:
/// which part of the request was wrong.
fn policy_details(violation: &Violation) -> serde_json::Value {
    serde_json::json!({"policy": violation.policy, "field": violation.field, "limit": violation.limit})
}

/// A request the HTTP layer could not take (see [`Gateway::record_malformed`]).
pub enum Malformed {
    /// A request line whose target is not a valid URI path; the rest of
    /// the head was read.
    Target { method: http::Method, target: bytes::Bytes, headers: h1::CallHeaders },
    /// Bytes that are no HTTP/1 request head (answered 400, by the
    /// connection loop or by hyper).
    Http,
    /// A head larger than hyper reads, or with more headers (answered 431).
    TooLarge,
    /// Part of a head, the rest of which did not come within the head
    /// timeout (how slowloris holds connections open): closed unanswered.
    Slow { received: usize },
}

/// How a malformed request is refused: the rule its security event names,
/// and the status, error code and message of the answer and of its event.
pub struct Refusal {
    pub rule: &'static str,
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: &'static str,
}

impl Malformed {
    pub fn refusal(&self) -> Refusal {
        let (rule, status, code, message) = match self {
            Malformed::Target { .. } => {
                ("builtin:malformed-target", StatusCode::BAD_REQUEST, ErrorCode::InvalidParameter, "the request target is not a valid URI path")
            }
            Malformed::Http => {
                ("builtin:malformed-http", StatusCode::BAD_REQUEST, ErrorCode::InvalidParameter, "not an HTTP/1 request this gateway can read")
            }
            Malformed::TooLarge => (
                "builtin:malformed-length",
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                ErrorCode::InvalidParameter,
                "the request head is too large for this gateway (at most 64 KiB and 100 headers)",
            ),
            Malformed::Slow { .. } => {
                ("builtin:slow-head", StatusCode::REQUEST_TIMEOUT, ErrorCode::RequestTimeout, "the request head did not arrive within the head timeout")
            }
        };
        Refusal { rule, status, code, message }
    }
}

/// The threat score a malformed request adds to its address's history
/// (the attack rules' badly encoded path counts the same).
const MALFORMED_SCORE: u8 = 60;

/// What blocklists match user agents against when the event's value is
/// not all of it: the whole `User-Agent` when it is longer than the event
/// keeps, and every line of it, one a line, when the caller sent several
/// (a blocked name after 512 padding characters, or in a second line, is
/// still there for the upstream to see). `None` for the common single
/// short line: the event's value is all of it, and nothing is copied.
fn untruncated_user_agent(headers: &CallHeaders) -> Option<std::borrow::Cow<'_, str>> {
    let mut lines = headers.values("user-agent");
    let first = lines.next()?;
    let Some(second) = lines.next() else {
        return (first.len() > MAX_USER_AGENT).then(|| String::from_utf8_lossy(first));
    };
    // A line break never occurs in a header value or a blocklist entry, so
    // no entry matches across two lines.
    let mut all = String::from_utf8_lossy(first).into_owned();
    for line in [second].into_iter().chain(lines) {
        all.push('\n');
        all.push_str(&String::from_utf8_lossy(line));
    }
    Some(std::borrow::Cow::Owned(all))
}

/// [`untruncated_user_agent`] for the caller blocklists `global` and
/// `tenant`, looked for only when one of them has user-agent entries: the
/// headers are not walked again for lists that would not read it.
fn blocklist_agent<'h>(headers: &'h CallHeaders, global: &Blocklist, tenant: Option<&Blocklist>) -> Option<std::borrow::Cow<'h, str>> {
    if global.blocks_agents() || tenant.is_some_and(Blocklist::blocks_agents) {
        untruncated_user_agent(headers)
    } else {
        None
    }
}

/// A `User-Agent` value as text, cut at [`MAX_USER_AGENT`] characters.
fn user_agent_text(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    // No more bytes than the limit in characters: whole, in one copy.
    if text.len() <= MAX_USER_AGENT {
        text.into_owned()
    } else {
        text.chars().take(MAX_USER_AGENT).collect()
    }
}

/// A failed security event about `request`: the same tenant, time, request
/// id, api, method, path and caller.
fn security_event(request: &Event, event_type: &str) -> Event {
    let mut event = Event::new(&request.tenant_id, Category::Security, event_type, "failure");
    event.timestamp_ms = request.timestamp_ms;
    event.request_id = request.request_id.clone();
    event.api_id = request.api_id.clone();
    event.method = request.method.clone();
    event.path = request.path.clone();
    event.client_ip = request.client_ip.clone();
    event.user_agent = request.user_agent.clone();
    event
}

/// The `request_blocked` security event about `request`: the rule's
/// `details`, the error code, and the caller's address as the actor.
fn blocked_event(request: &Event, error_code: Option<Text>, details: serde_json::Value) -> Event {
    let mut event = security_event(request, security_type::REQUEST_BLOCKED);
    event.error_code = error_code;
    event.actor = request.client_ip.as_ref().map(|ip| format!("ip:{ip}").into());
    event.details = Some(details);
    event
}

/// A security event about a refused call of an authenticated consumer.
fn consumer_security_event(request: &Event, key: &KeyEntry, event_type: &str, code: ErrorCode) -> Event {
    let mut event = security_event(request, event_type);
    event.error_code = Some(Text::from_static(code.as_str()));
    describe_consumer(&mut event, key);
    event
}

/// `RateLimit-Limit`, `-Remaining` and `-Reset` (seconds) for the limit
/// closest to refusing the caller.
pub(crate) fn rate_headers(headers: &mut HeaderMap, standing: &Standing) {
    headers.insert(RATELIMIT_LIMIT.clone(), number_header(standing.limit));
    headers.insert(RATELIMIT_REMAINING.clone(), number_header(standing.remaining));
    headers.insert(RATELIMIT_RESET.clone(), number_header(standing.reset_secs));
}

/// A number as a header value. Those below 1,024 (resets in seconds, most
/// limits) come ready-made from one static text, so cloning them costs
/// nothing; larger ones are formatted, and the last few made on the thread
/// are kept (a tier's limit, a daily reset repeat from call to call).
fn number_header(n: u64) -> HeaderValue {
    const SMALL: usize = 1024;
    static TABLE: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    if n as usize >= SMALL {
        const KEPT: usize = 4;
        /// The next slot to fill, and the values kept.
        type Recent = (usize, [Option<(u64, HeaderValue)>; KEPT]);
        thread_local! {
            static RECENT: std::cell::RefCell<Recent> = Default::default();
        }
        return RECENT.with_borrow_mut(|(next, recent)| {
            if let Some((_, value)) = recent.iter().flatten().find(|(m, _)| *m == n) {
                return value.clone();
            }
            let value = HeaderValue::from(n);
            recent[*next] = Some((n, value.clone()));
            *next = (*next + 1) % KEPT;
            value
        });
    }
    let table = TABLE.get_or_init(|| {
        let mut text = String::new();
        let ends: Vec<usize> = (0..SMALL)
            .map(|i| {
                text.push_str(itoa::Buffer::new().format(i));
                text.len()
            })
            .collect();
        // One allocation for the process's lifetime, so the values can be static.
        let text: &'static str = Box::leak(text.into_boxed_str());
        let mut start = 0;
        ends.iter()
            .map(|&end| {
                let value = HeaderValue::from_static(&text[start..end]);
                start = end;
                value
            })
            .collect()
    });
    table[n as usize].clone()
}

/// The key the caller presented, if any: `X-API-Key` first, then
/// `Authorization: Bearer`. `Err` when the header holds bytes that are not text.
/// An empty value (`X-API-Key:` or `Authorization: Bearer` with nothing
/// after it) presents no key: it is passed over, as if it were not sent.
fn presented_key(headers: &CallHeaders) -> Option<Result<(&str, KeySource), KeySource>> {
    if let Some(value) = headers.get(X_API_KEY.as_str()) {
        match h1::value_text(value).map(str::trim) {
            None => return Some(Err(KeySource::ApiKeyHeader)),
            Some("") => {}
            Some(key) => return Some(Ok((key, KeySource::ApiKeyHeader))),
        }
    }
    let value = headers.get("authorization")?;
    let Some(text) = h1::value_text(value) else { return Some(Err(KeySource::Authorization)) };
    bearer(text).map(|token| Ok((token, KeySource::Authorization)))
}

/// The token of an `Authorization: Bearer …` value (`Bearer` alone has none).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The tokens of the caller's `Authorization: Bearer …` lines, every one.
fn bearer_tokens(headers: &CallHeaders) -> impl Iterator<Item = &str> {
    headers.values("authorization").filter_map(h1::value_text).filter_map(bearer)
}

/// Checks a presented key: format and checksum first (no lookup for a typo),
/// then the snapshot, the tenant, revocation and expiry.
/// An empty key (a verification's empty `key`, an application event's
/// empty `X-API-Key`) is no key: `missing_key`, which is not counted
/// toward the brute-force block.
fn authenticate(snapshot: &Snapshot, key: &str, tenant: Option<&str>) -> Result<Arc<KeyEntry>, AuthFailure> {
    if key.trim().is_empty() {
        return Err(AuthFailure { code: ErrorCode::MissingKey, event_type: security_type::AUTH_FAILED, reason: "no key presented", key: None });
    }
    let invalid = |reason| AuthFailure { code: ErrorCode::InvalidKey, event_type: security_type::AUTH_FAILED, reason, key: None };
    if let Err(malformed) = keys::check_format(key) {
        return Err(invalid(match malformed {
            MalformedKey::Prefix => "malformed key: unknown prefix",
            MalformedKey::Length => "malformed key: wrong length",
            MalformedKey::Characters => "malformed key: characters outside base62",
            MalformedKey::Checksum => "malformed key: checksum mismatch",
        }));
    }
    let entry = snapshot.key_for_secret(key).cloned().ok_or_else(|| invalid("unknown key"))?;
    if tenant.is_some_and(|t| t != entry.tenant_id) {
        // Answer exactly as for an unknown key: the caller learns nothing about other tenants.
        return Err(invalid("key belongs to another tenant"));
    }
    if entry.revoked {
        return Err(AuthFailure {
            code: ErrorCode::RevokedKey,
            event_type: security_type::REVOKED_KEY_USED,
            reason: "key is revoked",
            key: Some(entry),
        });
    }
    if entry.expires_at_ms.is_some_and(|t| t <= event::now_ms()) {
        return Err(AuthFailure {
            code: ErrorCode::ExpiredKey,
            event_type: security_type::EXPIRED_KEY_USED,
            reason: "key has expired",
            key: Some(entry),
        });
    }
    Ok(entry)
}

/// A request method as event text: the standard ones without allocating.
fn method_text(method: &http::Method) -> Text {
    use http::Method;
    let name = match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => return Text::from(method.as_str()),
    };
    Text::from_static(name)
}

fn describe_consumer(event: &mut Event, key: &KeyEntry) {
    event.tenant_id = key.tenant_id.clone();
    event.consumer_id = Some(key.consumer_id.clone());
    event.consumer_name = Some(key.consumer_name.clone());
    event.key_id = Some(key.key_id.clone());
    event.key_hint = Some(key.hint.clone());
    event.actor = Some(key.actor.clone());
}

/// What is wrong with a request's `Host` lines, if anything: none in an
/// HTTP/1.1 request, or more than one in any (RFC 9112 §3.2, which has the
/// server answer 400, as nginx does; forwarded, two could name one host to
/// the upstream and another to whatever reads the last).
pub fn host_problem(version: http::Version, headers: &HeaderMap) -> Option<&'static str> {
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if version >= http::Version::HTTP_11 => Some("an HTTP/1.1 request needs a Host header"),
        (Some(_), Some(_)) => Some("a request may carry only one Host header"),
        _ => None,
    }
}

/// Answers with a gateway error and records the request event with it.
fn refuse(
    event: &mut Event,
    code: ErrorCode,
    request_id: &HeaderValue,
    finisher: impl FnOnce(Event, Option<Arc<AtomicU64>>) -> Finisher,
) -> Response<GatewayBody> {
    refuse_with(event, ApiError::from_code(code), request_id, finisher)
}

/// [`refuse`] with a message of its own (e.g. which field of a body is wrong).
fn refuse_with(
    event: &mut Event,
    error: ApiError,
    request_id: &HeaderValue,
    finisher: impl FnOnce(Event, Option<Arc<AtomicU64>>) -> Finisher,
) -> Response<GatewayBody> {
    let code = error.code;
    let body = error.body_bytes();
    event.status_code = Some(code.status().as_u16());
    event.outcome = Text::from_static("failure");
    // A block sets its own code and message for the trail; the caller sees
    // only the generic one.
    event.error_code.get_or_insert_with(|| Text::from_static(code.as_str()));
    if event.error_message.is_none() {
        event.error_message = Some(error.message);
    }
    let mut response = Response::new(GatewayBody::full(body, finisher(std::mem::take(event), None)));
    *response.status_mut() = code.status();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    if code.status() == StatusCode::UNAUTHORIZED {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"keytrail\""));
    }
    response
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// The `X-Forwarded-For` value sent upstream: the caller's values (every
/// line, in order, as one list) with the peer appended, or the peer alone.
fn forwarded_for(headers: &CallHeaders, connection: &ConnectionUpstreams) -> HeaderValue {
    let mut list = String::new();
    for previous in headers.values(X_FORWARDED_FOR.as_str()).filter_map(h1::value_text).map(str::trim).filter(|v| !v.is_empty()) {
        list.push_str(previous);
        list.push_str(", ");
    }
    if list.is_empty() {
        return connection.peer_header().clone();
    }
    list.push_str(connection.peer_text());
    header_value(&list)
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Accepts connections until `shutdown` fires, then lets in-flight requests
/// finish (for at most `drain`). Idle connections close at once.
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>, mut shutdown: watch::Receiver<bool>, drain: Duration) {
    // Connections handed to hyper are watched by `graceful`; every
    // connection's task is in `connections`, reaped as it ends. Those still
    // busy when the drain ends are cut off (aborted): their calls are
    // dropped, and so recorded, before the audit writer stops. (A set
    // rather than a signal each connection's task would watch: that would
    // be polled at every wake-up of every connection.)
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    // Pooled upstream connections no call takes are closed after a while.
    let sweeper = gateway.upstreams.close_idle_every(upstream::MAX_POOLED_IDLE, upstream::POOL_SWEEP_EVERY);
    loop {
        tokio::select! {
            (stream, peer) = crate::listen::accept(&listener, "gateway") => {
                let _ = stream.set_nodelay(true);
                let (gateway, stop, watcher) = (gateway.clone(), shutdown.clone(), graceful.watcher());
                connections.spawn(conn::serve(stream, peer, gateway, stop, watcher));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    crate::listen::drain(graceful, &mut connections, drain, "gateway").await;
    sweeper.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_headers_read_as_their_number() {
        for n in [0u64, 7, 59, 999, 1023, 1024, 86_400, u64::MAX] {
            assert_eq!(number_header(n).to_str().unwrap(), n.to_string());
        }
        // Kept ones come back right, and more than are kept push the oldest out.
        for round in 0..3 {
            for n in (0..6u64).map(|i| 1_000_000 + i * 7 + round % 2) {
                assert_eq!(number_header(n).to_str().unwrap(), n.to_string());
                assert_eq!(number_header(n).to_str().unwrap(), n.to_string(), "kept");
            }
        }
    }
}
