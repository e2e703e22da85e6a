//! The admin API: management of tenants, apis, consumers and keys, and the
//! audit read API. JSON in and out; every error through [`ApiError`].
//!
//! API boundary: handlers parse and authorise, then call the control plane
//! ([`crate::control`]) or the audit reader ([`audit_api`]); they hold no
//! business rules of their own.

mod activity;
mod admins;
mod alerts_api;
mod app_events;
mod audit_api;
mod stats_api;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::access::{self, Permission};
use crate::audit::AuditPipeline;
use crate::event::SYSTEM_TENANT;
use crate::gateway::{KeySource, KeyedCall};
use crate::control::{Actor, BearerRefused, ControlPlane, CreatedKey, LoggingView, NewApi, NewBlock, NewKey, NewTier};
use crate::protection::EntryKind;
use crate::policy::Policies;
use crate::ratelimit::{CostRule, RateSpec};
use crate::error::{ApiError, ErrorCode};
use crate::keys::KeyEnvironment;
use crate::store::control::{KeyRecord, Tier};

/// What every handler can reach.
#[derive(Clone)]
pub struct AdminState {
    pub control: Arc<ControlPlane>,
    pub audit: Arc<AuditPipeline>,
    /// Changes running now (for the activity log's `pending`).
    pub in_flight: Arc<activity::InFlight>,
    /// Application event ids already stored, per tenant (idempotency).
    pub app_ids: Arc<app_events::SeenIds>,
    /// The key checkpoints are verified with.
    pub public_key: Option<ed25519_dalek::VerifyingKey>,
    /// Exports streaming now: each holds a blocking thread for as long as
    /// its client takes to read it (see `audit_api::stream_export`).
    pub exports: Arc<tokio::sync::Semaphore>,
    /// Chain verifications running now (`GET /v1/audit/{tenant}/verify`);
    /// one more is refused while none is free.
    pub verifications: Arc<tokio::sync::Semaphore>,
    /// The gateway's memory of callers: application events sent with an
    /// API key meet its blocklists and brute-force counter.
    pub shield: Arc<crate::gateway::Shield>,
}

impl AdminState {
    pub fn new(
        control: Arc<ControlPlane>,
        audit: Arc<AuditPipeline>,
        public_key: Option<ed25519_dalek::VerifyingKey>,
        shield: Arc<crate::gateway::Shield>,
    ) -> AdminState {
        let exports = Arc::new(tokio::sync::Semaphore::new(audit_api::EXPORTS_AT_ONCE));
        let verifications = Arc::new(tokio::sync::Semaphore::new(audit_api::VERIFICATIONS_AT_ONCE));
        AdminState { control, audit, in_flight: Default::default(), app_ids: Default::default(), public_key, exports, verifications, shield }
    }

    /// Waits until no change is running (each runs on a task of its own,
    /// to its end, whatever became of its caller's connection).
    pub async fn changes_finished(&self) {
        while !self.in_flight.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

/// Builds the admin router. Everything but `/healthz`, `/openapi.json` and
/// the login needs an admin token.
pub fn router(state: AdminState) -> Router {
    let protected = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/tenants", get(list_tenants).post(create_tenant))
        .route("/v1/tenants/{tenant}/apis", get(list_apis).post(create_api))
        .route("/v1/tenants/{tenant}/consumers", get(list_consumers).post(create_consumer))
        .route("/v1/tenants/{tenant}/consumers/{consumer}/keys", get(list_keys).post(create_key))
        .route("/v1/tenants/{tenant}/apis/{api}/policies", put(set_api_policies))
        .route("/v1/tenants/{tenant}/consumers/{consumer}/tier", put(set_consumer_tier))
        .route("/v1/tenants/{tenant}/tiers", get(list_tiers).post(create_tier))
        .route("/v1/tenants/{tenant}/tiers/{tier}", put(update_tier).delete(delete_tier))
        .route("/v1/blocklist", get(list_global_blocks).post(add_global_block))
        .route("/v1/blocklist/{id}", delete(remove_global_block))
        .route("/v1/tenants/{tenant}/blocklist", get(list_tenant_blocks).post(add_tenant_block))
        .route("/v1/tenants/{tenant}/blocklist/{id}", delete(remove_tenant_block))
        .route("/v1/keys/{key_id}", get(get_key))
        .route("/v1/keys/{key_id}/revoke", post(revoke_key))
        .route("/v1/keys/{key_id}/rotate", post(rotate_key))
        .route("/v1/keys/{key_id}/scopes", put(set_key_scopes))
        .route("/v1/tenants/{tenant}/consumers/{consumer}/suspend", post(suspend_consumer))
        .route("/v1/tenants/{tenant}/consumers/{consumer}/erase", post(erase_consumer))
        .route("/v1/tenants/{tenant}/consumers/{consumer}/reactivate", post(reactivate_consumer))
        .route("/api/v1/settings/logging", get(get_global_logging).put(put_global_logging))
        .route("/v1/tenants/{tenant}/settings/logging", get(get_tenant_logging).put(put_tenant_logging))
        .route("/api/v1/settings/retention", get(get_global_retention).put(put_global_retention))
        .route("/v1/tenants/{tenant}/settings/retention", get(get_tenant_retention).put(put_tenant_retention))
        .merge(audit_api::routes())
        .merge(stats_api::routes())
        .merge(admins::routes())
        .merge(alerts_api::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), guard))
        // A change's body is read whole, and refused past its limit with
        // the API's JSON 413, by `activity::around`; the handlers must not
        // cut it off sooner with axum's default 2 MB (answered in plain text).
        .layer(DefaultBodyLimit::max(activity::MAX_BODY));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/openapi.json", get(openapi))
        .route("/v1/auth/login", post(admins::login).layer(DefaultBodyLimit::max(admins::MAX_LOGIN_BODY)))
        .merge(protected)
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such endpoint") })
        .method_not_allowed_fallback(|| async { ApiError::from_code(ErrorCode::MethodNotAllowed) })
        .with_state(state)
}

/// The OpenAPI 3.1 document of this API, written by hand and kept true to
/// the router and [`access::ROUTES`] by `tests/it/openapi.rs`.
const OPENAPI: &str = include_str!("openapi.json");

/// `GET /openapi.json`: the document above, for anyone (like `/healthz`).
async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], OPENAPI)
}

/// The bearer token of a request, if it carries one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

fn unauthorized() -> Response {
    let mut response = ApiError::from_code(ErrorCode::Unauthorized).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"keytrail-admin\""));
    response
}

/// The one door of the admin API: authenticates the caller, applies the
/// route's rule from [`access::ROUTES`] (tenant binding first, so another
/// tenant's ids get the same 404 as missing ones; then the role), and runs
/// changes between their activity-log intent and outcome.
async fn guard(State(state): State<AdminState>, ConnectInfo(peer): ConnectInfo<SocketAddr>, mut req: Request, next: Next) -> Response {
    let request_id = crate::event::new_id();
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_default();
    let path = req.uri().path().to_string();
    let rule = access::rule_for(req.method().as_str(), &route);
    let mut response = match authorise(&state, peer, &mut req, rule, &route, &path, &request_id).await {
        Err(response) => response,
        Ok(None) => next.run(req).await,
        // A change runs to its end on a task of its own: were its caller to
        // go away (hyper then drops the call), a change under way (an
        // erasure) would still be made, without its events or its outcome.
        Ok(Some((actor, change))) => {
            let state = state.clone();
            let change = tokio::spawn(async move { activity::around(&state, &actor, &change, req, next).await });
            change.await.unwrap_or_else(|error| ApiError::internal(error).into_response())
        }
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}


async fn authorise(
    state: &AdminState,
    peer: SocketAddr,
    req: &mut Request,
    rule: Option<&'static access::Rule>,
    route: &str,
    path: &str,
    request_id: &str,
) -> Result<Option<(Actor, activity::Change)>, Response> {
    if rule.is_some_and(|r| r.permission == Permission::WriteEvents) {
        // Application events may also come with an API key that holds
        // `audit:write`: as a bearer (told from an admin token by its
        // format), or as `X-API-Key`, where anything is a key (a malformed
        // one fails the key check, and counts, as at the gateway).
        let presented = match bearer(req.headers()) {
            Some(token) => crate::keys::check_format(token).is_ok().then(|| (token.to_string(), KeySource::Authorization)),
            None => req.headers().get("x-api-key").map(|v| (String::from_utf8_lossy(v.as_bytes()).trim().to_string(), KeySource::ApiKeyHeader)),
        };
        if let Some((key, source)) = presented {
            let tenant = access::path_param(route, path, "tenant").unwrap_or_default();
            let call = KeyedCall {
                tenant,
                tenant_exists: state.control.require_tenant(tenant).is_ok(),
                key: &key,
                source,
                client: peer.ip(),
                method: req.method().as_str(),
                path,
                headers: req.headers(),
                request_id,
            };
            let writer = app_events::key_writer(state, &call).map_err(IntoResponse::into_response)?;
            req.extensions_mut().insert(writer);
            return Ok(None);
        }
    }
    let Some(token) = bearer(req.headers()) else { return Err(unauthorized()) };
    let caller = Actor {
        client_ip: Some(peer.ip().to_string()),
        user_agent: req
            .headers()
            .get(header::USER_AGENT)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).chars().take(512).collect()),
        request_id: Some(request_id.to_string()),
        ..Actor::default()
    };
    // A failed token is recorded and counted against the caller's address;
    // past the limit every token from it is refused unchecked for a while.
    // A session token is looked up in the control store: on a blocking
    // thread, so a busy store holds up this call, not a runtime thread.
    let looked_up = tokio::task::spawn_blocking({
        let (control, token, caller) = (state.control.clone(), token.to_string(), caller.clone());
        let (method, path) = (req.method().as_str().to_string(), path.to_string());
        move || control.authenticate_bearer(&token, &caller, &method, &path)
    })
    .await;
    let signed = match looked_up.map_err(ApiError::internal) {
        Err(e) => return Err(e.into_response()),
        Ok(Ok(signed)) => signed,
        Ok(Err(BearerRefused::Error(e))) => return Err(e.into_response()),
        Ok(Err(refused)) => {
            // The failure's events before the answer, under `sync`.
            state.audit.flush_if_sync().await;
            return Err(match refused {
                BearerRefused::TooManyAttempts { retry_after_secs } => {
                    let message = "too many failed bearer tokens from this address: try again after the time in `Retry-After`";
                    ApiError::new(ErrorCode::TooManyAttempts, message).with_retry_after(retry_after_secs).into_response()
                }
                _ => unauthorized(),
            });
        }
    };
    let actor = Actor {
        admin_id: signed.admin.id.clone(),
        tenant_scope: signed.admin.tenant_id.clone(),
        credential: signed.credential.describe(),
        role: Some(signed.role),
        ..caller
    };
    // Deny by default: a route without a rule is open to nobody.
    let Some(rule) = rule else {
        return Err(ApiError::new(ErrorCode::Forbidden, "this endpoint has no access rule").into_response());
    };
    let tenant = access::path_param(route, path, "tenant");
    if let Some(refusal) = refusal(&actor, rule, signed.role, route, path, tenant) {
        // A change refused here was still attempted: the activity log keeps
        // it, as one entry with its outcome (no intent: nothing ran).
        if let Some(action) = rule.action {
            let log = log_tenant(state, &actor, tenant, route, path);
            let mut event = actor.admin_event(&log, action, "failure", resource(route, path), json!({"status": refusal.code.status().as_u16()}));
            event.error_code = Some(refusal.code.as_str().into());
            event.error_message = Some(refusal.message.clone());
            state.audit.record(event);
            state.audit.flush_if_sync().await;
        }
        return Err(refusal.into_response());
    }
    let change = rule.action.map(|action| {
        let change = activity::Change {
            tenant: log_tenant(state, &actor, tenant, route, path),
            action,
            resource: resource(route, path),
            route: route.to_string(),
        };
        (actor.clone(), change)
    });
    req.extensions_mut().insert(actor);
    req.extensions_mut().insert(signed);
    Ok(change)
}

/// Why the door refuses an authenticated caller's call, if it does: a path
/// that names no object, a tenant the caller is not bound to (the same 404
/// as a missing one), a permission its role lacks, a global endpoint for a
/// tenant-bound caller.
fn refusal(actor: &Actor, rule: &access::Rule, role: access::Role, route: &str, path: &str, tenant: Option<&str>) -> Option<ApiError> {
    // Ids are slugs and generated ids: in a change's path, a segment that
    // needs percent-decoding names none. (The handler would decode it; the
    // activity log's tenant, resource and before/after read the path as sent.)
    if let Some(segment) = path.split('/').find(|segment| rule.action.is_some() && segment.contains('%')) {
        return Some(ApiError::not_found(format_args!("`{segment}`")));
    }
    if let Some((name, segment)) = access::undecodable_param(route, path) {
        return Some(ApiError::not_found(format_args!("{name} `{segment}`")));
    }
    if let Some(tenant) = tenant {
        if !actor.sees(tenant) {
            return Some(ApiError::not_found(format_args!("tenant `{tenant}`")));
        }
    }
    if !role.allows(rule.permission) {
        let message = format!("the `{}` role may not call {} {}", role.as_str(), rule.method, rule.route);
        return Some(ApiError::new(ErrorCode::Forbidden, message));
    }
    if rule.global_only && actor.tenant_scope.is_some() {
        return Some(ApiError::new(ErrorCode::Forbidden, "only admins bound to no tenant may call this endpoint"));
    }
    None
}

/// The tenant whose log holds a change: the admin's own for a tenant-bound
/// admin; otherwise the tenant the change touches, or the system tenant for
/// global changes (and for tenants that do not exist).
fn log_tenant(state: &AdminState, actor: &Actor, tenant: Option<&str>, route: &str, path: &str) -> String {
    if let Some(own) = &actor.tenant_scope {
        return own.clone();
    }
    let touched = match tenant {
        Some(tenant) => state.control.require_tenant(tenant).ok().map(|_| tenant.to_string()),
        None => match access::path_param(route, path, "key_id") {
            Some(key_id) => state.control.key_tenant(key_id).ok().flatten(),
            None => access::path_param(route, path, "admin_id").and_then(|id| state.control.admin_binding(id)).flatten(),
        },
    };
    touched.unwrap_or_else(|| SYSTEM_TENANT.to_string())
}

/// The resource a change touches, from the route's most specific id
/// (`consumer:c_1`), or the collection it adds to (`tenant:acme/apis`).
fn resource(route: &str, path: &str) -> String {
    const KINDS: [(&str, &str); 8] = [
        ("admin_id", "admin"),
        ("key_id", "key"),
        ("id", "blocklist_entry"),
        ("tier", "tier"),
        ("rule", "alert_rule"),
        ("consumer", "consumer"),
        ("api", "api"),
        ("tenant", "tenant"),
    ];
    let tail = route.rsplit('/').next().unwrap_or_default();
    for (param, kind) in KINDS {
        if let Some(value) = access::path_param(route, path, param) {
            // A verb (`/revoke`) is in the action's name; a collection (`/apis`) is not.
            let collection = match tail {
                "apis" | "consumers" | "keys" | "tiers" | "blocklist" | "alerts" => format!("/{tail}"),
                _ => String::new(),
            };
            return format!("{kind}:{value}{collection}");
        }
    }
    path.trim_start_matches('/').to_string()
}

/// Parses a JSON body (an empty one counts as `{}`); see [`crate::error::parse_json_body`].
pub(super) fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    crate::error::parse_json_body(body)
}

/// The body of a `PUT` that replaces a whole setting (an api's policies, a
/// consumer's tier; a tier's limits cannot be empty). Elsewhere an empty body reads as
/// `{}`; here that would clear the setting by accident (a `curl -X PUT`
/// that lost its `-d`), so it is refused, saying how to clear it on purpose.
pub(super) fn parse_replacement<T: DeserializeOwned>(body: &Bytes, to_clear: &str) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid_body(format!("the body is empty; this request replaces the whole setting: {to_clear}")));
    }
    parse_body(body)
}

pub(super) fn created(value: Value) -> Response {
    (StatusCode::CREATED, Json(value)).into_response()
}

fn to_value(v: impl serde::Serialize) -> Value {
    serde_json::to_value(v).expect("models serialise")
}

// --- tenants ---

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    id: String,
    name: String,
}

async fn create_tenant(State(s): State<AdminState>, body: Bytes) -> Result<Response, ApiError> {
    let req: CreateTenant = parse_body(&body)?;
    Ok(created(to_value(s.control.create_tenant(&req.id, &req.name)?)))
}

/// The process's version and the audit pipeline's counters: whether events
/// are being dropped, how far the writer is behind, whether commits fail;
/// the sign-in throttle's and the alert engine's.
async fn status(State(s): State<AdminState>) -> Json<Value> {
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "audit_pipeline": s.audit.status(),
        "login_throttle": s.control.login_throttle_status(),
        "alerts": s.control.alert_status().engine(),
    }))
}

async fn list_tenants(State(s): State<AdminState>, Extension(actor): Extension<Actor>) -> Result<Json<Value>, ApiError> {
    let tenants: Vec<_> = s.control.list_tenants()?.into_iter().filter(|t| actor.sees(&t.id)).collect();
    Ok(Json(json!({"tenants": tenants})))
}

// --- apis ---

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateApi {
    id: String,
    path_prefix: String,
    upstream: String,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    rate_limit: Option<RateSpec>,
    #[serde(default)]
    costs: Vec<CostRule>,
    #[serde(default)]
    policies: Policies,
}

async fn create_api(
    State(s): State<AdminState>,
    Path(tenant): Path<String>,
    Extension(actor): Extension<Actor>,
    body: Bytes,
) -> Result<Response, ApiError> {
    s.control.require_tenant(&tenant)?;
    let req: CreateApi = parse_body(&body)?;
    let api = s.control.create_api(
        &tenant,
        NewApi {
            id: req.id,
            path_prefix: req.path_prefix,
            upstream: req.upstream,
            timeout_ms: req.timeout_ms,
            rate_limit: req.rate_limit,
            costs: req.costs,
            policies: req.policies,
        },
        &actor,
    )?;
    Ok(created(to_value(api)))
}

async fn list_apis(State(s): State<AdminState>, Path(tenant): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"apis": s.control.list_apis(&tenant)?})))
}

async fn set_api_policies(
    State(s): State<AdminState>,
    Path((tenant, api)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    s.control.require_tenant(&tenant)?;
    let policies: Policies = parse_replacement(&body, "send `{}` to remove every policy")?;
    Ok(Json(to_value(s.control.set_api_policies(&tenant, &api, policies)?)))
}

// --- consumers ---

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateConsumer {
    name: String,
    #[serde(default)]
    metadata: Value,
    #[serde(default)]
    tier: Option<String>,
}

async fn create_consumer(
    State(s): State<AdminState>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    s.control.require_tenant(&tenant)?;
    let req: CreateConsumer = parse_body(&body)?;
    Ok(created(to_value(s.control.create_consumer(&tenant, &req.name, req.metadata, req.tier)?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetTier {
    /// Required: `null` takes the consumer out of its tier (with
    /// `deserialize_with`, serde no longer reads a missing field as `None`).
    #[serde(deserialize_with = "Option::deserialize")]
    tier: Option<String>,
}

async fn set_consumer_tier(
    State(s): State<AdminState>,
    Path((tenant, consumer)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    s.control.require_tenant(&tenant)?;
    let req: SetTier = parse_replacement(&body, "send `{\"tier\": null}` to take the consumer out of its tier")?;
    Ok(Json(to_value(s.control.set_consumer_tier(&tenant, &consumer, req.tier)?)))
}

async fn suspend_consumer(
    State(s): State<AdminState>,
    Path((tenant, consumer)): Path<(String, String)>,
    Extension(actor): Extension<Actor>,
) -> Result<Json<Value>, ApiError> {
    set_consumer_active(&s, &tenant, &consumer, false, actor)
}

async fn reactivate_consumer(
    State(s): State<AdminState>,
    Path((tenant, consumer)): Path<(String, String)>,
    Extension(actor): Extension<Actor>,
) -> Result<Json<Value>, ApiError> {
    set_consumer_active(&s, &tenant, &consumer, true, actor)
}

/// Erases the consumer's personal values from this server's stores and the
/// audit trail's archives; answers what was changed.
async fn erase_consumer(
    State(s): State<AdminState>,
    Path((tenant, consumer)): Path<(String, String)>,
    Extension(actor): Extension<Actor>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(to_value(s.control.erase_consumer(&tenant, &consumer, &actor).await?)))
}

fn set_consumer_active(s: &AdminState, tenant: &str, consumer: &str, active: bool, actor: Actor) -> Result<Json<Value>, ApiError> {
    s.control.require_tenant(tenant)?;
    Ok(Json(to_value(s.control.set_consumer_active(tenant, consumer, active, &actor)?)))
}

// --- tiers ---

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTier {
    id: String,
    #[serde(default)]
    rate_limit: Option<RateSpec>,
    #[serde(default)]
    daily_quota: Option<u64>,
}

fn tier_view(tier: &Tier) -> Value {
    json!({
        "tenant_id": tier.tenant_id,
        "id": tier.id,
        "rate_limit": tier.rate(),
        "daily_quota": tier.daily_quota,
        "created_at": crate::event::format_timestamp(tier.created_at),
    })
}

async fn create_tier(State(s): State<AdminState>, Path(tenant): Path<String>, body: Bytes) -> Result<Response, ApiError> {
    s.control.require_tenant(&tenant)?;
    let req: CreateTier = parse_body(&body)?;
    let tier = s.control.create_tier(&tenant, NewTier { id: req.id, rate_limit: req.rate_limit, daily_quota: req.daily_quota })?;
    Ok(created(tier_view(&tier)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateTier {
    #[serde(default)]
    rate_limit: Option<RateSpec>,
    #[serde(default)]
    daily_quota: Option<u64>,
}

async fn update_tier(
    State(s): State<AdminState>,
    Path((tenant, tier)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    s.control.require_tenant(&tenant)?;
    let req: UpdateTier = parse_body(&body)?;
    let tier = s.control.update_tier(&tenant, NewTier { id: tier, rate_limit: req.rate_limit, daily_quota: req.daily_quota })?;
    Ok(Json(tier_view(&tier)))
}

async fn delete_tier(State(s): State<AdminState>, Path((tenant, tier)): Path<(String, String)>) -> Result<StatusCode, ApiError> {
    s.control.delete_tier(&tenant, &tier)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_tiers(State(s): State<AdminState>, Path(tenant): Path<String>) -> Result<Json<Value>, ApiError> {
    let tiers: Vec<Value> = s.control.list_tiers(&tenant)?.iter().map(tier_view).collect();
    Ok(Json(json!({"tiers": tiers})))
}

async fn list_consumers(State(s): State<AdminState>, Path(tenant): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"consumers": s.control.list_consumers(&tenant)?})))
}

// --- keys ---

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    environment: Option<String>,
}

/// A key as listed: never the secret; status as of now (a past expiry shows `expired`).
fn key_view(record: &KeyRecord) -> Value {
    let mut value = to_value(record);
    value["status"] = json!(record.status_at(crate::event::now_ms()));
    value
}

async fn create_key(
    State(s): State<AdminState>,
    Path((tenant, consumer)): Path<(String, String)>,
    Extension(actor): Extension<Actor>,
    body: Bytes,
) -> Result<Response, ApiError> {
    s.control.require_tenant(&tenant)?;
    let req: CreateKey = parse_body(&body)?;
    let expires_at_ms = match req.expires_at.as_deref() {
        None => None,
        Some(text) => Some(
            chrono::DateTime::parse_from_rfc3339(text)
                .map_err(|_| ApiError::invalid_body("`expires_at` must be an RFC 3339 time such as 2027-01-31T00:00:00Z"))?
                .timestamp_millis(),
        ),
    };
    let environment = match req.environment.as_deref() {
        None => KeyEnvironment::Live,
        Some(name) => KeyEnvironment::parse(name)
            .ok_or_else(|| ApiError::invalid_body("`environment` must be `live` or `test`"))?,
    };
    let created_key = s.control.create_key(
        &tenant,
        &consumer,
        NewKey { scopes: req.scopes, expires_at_ms, environment },
        &actor,
    )?;
    Ok(key_created(&created_key, None))
}

/// The answer that holds a new key (the only one that ever does): 201, never cached.
fn key_created(created_key: &CreatedKey, replaces: Option<&KeyRecord>) -> Response {
    let mut value = key_view(&created_key.record);
    value["key"] = json!(created_key.secret);
    if let Some(old) = replaces {
        value["replaces"] = key_view(old);
    }
    let mut response = created(value);
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Longest grace a rotation (a key's, an alert webhook secret's) may give
/// the old one: 30 days.
const MAX_GRACE_SECONDS: u64 = 30 * 86_400;

/// A rotation's `grace_seconds` as milliseconds; past
/// [`MAX_GRACE_SECONDS`], a 400 saying the limit.
pub(super) fn grace_ms(grace_seconds: u64) -> Result<i64, ApiError> {
    if grace_seconds > MAX_GRACE_SECONDS {
        return Err(ApiError::invalid_body(format_args!("`grace_seconds` must be at most {MAX_GRACE_SECONDS} (30 days)")));
    }
    Ok(grace_seconds as i64 * 1000)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateKey {
    #[serde(default = "default_grace")]
    grace_seconds: u64,
}

fn default_grace() -> u64 {
    3600
}

async fn rotate_key(
    State(s): State<AdminState>,
    Path(key_id): Path<String>,
    Extension(actor): Extension<Actor>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: RotateKey = if body.is_empty() { RotateKey { grace_seconds: default_grace() } } else { parse_body(&body)? };
    let (created_key, old) = s.control.rotate_key(&key_id, grace_ms(req.grace_seconds)?, &actor)?;
    Ok(key_created(&created_key, Some(&old)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetScopes {
    scopes: Vec<String>,
}

async fn set_key_scopes(
    State(s): State<AdminState>,
    Path(key_id): Path<String>,
    Extension(actor): Extension<Actor>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: SetScopes = parse_body(&body)?;
    let record = s.control.set_key_scopes(&key_id, req.scopes, &actor)?;
    Ok(Json(key_view(&record)))
}

async fn list_keys(
    State(s): State<AdminState>,
    Path((tenant, consumer)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let keys: Vec<Value> = s.control.list_keys(&tenant, &consumer)?.iter().map(key_view).collect();
    Ok(Json(json!({"keys": keys})))
}

/// `GET /v1/keys/{key_id}`: one key, found by its id alone (its tenant and
/// consumer are in the answer), never its secret.
async fn get_key(
    State(s): State<AdminState>,
    Path(key_id): Path<String>,
    Extension(actor): Extension<Actor>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(key_view(&s.control.get_key(&key_id, &actor)?)))
}

async fn revoke_key(
    State(s): State<AdminState>,
    Path(key_id): Path<String>,
    Extension(actor): Extension<Actor>,
) -> Result<Json<Value>, ApiError> {
    let record = s.control.revoke_key(&key_id, &actor)?;
    Ok(Json(key_view(&record)))
}

// --- logging settings ---

/// A scope's settings as the API shows them: the values, then `scope` and,
/// for a tenant, which values it takes from the global ones.
fn scoped_view(mut body: serde_json::Map<String, Value>, inherited: &[&str], tenant: Option<&str>) -> Json<Value> {
    match tenant {
        None => {
            body.insert("scope".into(), json!("global"));
        }
        Some(tenant) => {
            body.insert("scope".into(), json!("tenant"));
            body.insert("tenant_id".into(), json!(tenant));
            body.insert("inherited".into(), json!(inherited));
        }
    }
    Json(Value::Object(body))
}

fn logging_view(view: LoggingView, tenant: Option<&str>) -> Json<Value> {
    scoped_view(view.settings.to_json(), &view.inherited, tenant)
}

async fn get_global_logging(State(s): State<AdminState>) -> Result<Json<Value>, ApiError> {
    Ok(logging_view(s.control.logging_settings(None)?, None))
}

async fn put_global_logging(
    State(s): State<AdminState>,
    Extension(actor): Extension<Actor>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let patch: Value = parse_body(&body)?;
    Ok(logging_view(s.control.update_logging(None, &patch, &actor)?, None))
}

async fn get_tenant_logging(State(s): State<AdminState>, Path(tenant): Path<String>) -> Result<Json<Value>, ApiError> {
    let view = s.control.logging_settings(Some(&tenant))?;
    Ok(logging_view(view, Some(&tenant)))
}

async fn put_tenant_logging(
    State(s): State<AdminState>,
    Path(tenant): Path<String>,
    Extension(actor): Extension<Actor>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    s.control.require_tenant(&tenant)?;
    let patch: Value = parse_body(&body)?;
    let view = s.control.update_logging(Some(&tenant), &patch, &actor)?;
    Ok(logging_view(view, Some(&tenant)))
}

// --- retention settings ---

fn retention_view(view: crate::control::RetentionView, tenant: Option<&str>) -> Json<Value> {
    scoped_view(view.settings.to_json(), &view.inherited, tenant)
}

async fn get_global_retention(State(s): State<AdminState>) -> Result<Json<Value>, ApiError> {
    Ok(retention_view(s.control.retention_settings(None)?, None))
}

async fn put_global_retention(State(s): State<AdminState>, Extension(actor): Extension<Actor>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let patch: Value = parse_body(&body)?;
    Ok(retention_view(s.control.update_retention(None, &patch, &actor)?, None))
}

async fn get_tenant_retention(State(s): State<AdminState>, Path(tenant): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(retention_view(s.control.retention_settings(Some(&tenant))?, Some(&tenant)))
}

async fn put_tenant_retention(
    State(s): State<AdminState>,
    Path(tenant): Path<String>,
    Extension(actor): Extension<Actor>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    s.control.require_tenant(&tenant)?;
    let patch: Value = parse_body(&body)?;
    Ok(retention_view(s.control.update_retention(Some(&tenant), &patch, &actor)?, Some(&tenant)))
}

// --- blocklists ---

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBlock {
    kind: EntryKind,
    value: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    rule_id: Option<String>,
    #[serde(default)]
    expires_at: Option<String>,
}

fn rfc3339_ms(field: &str, text: &str) -> Result<i64, ApiError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|_| ApiError::invalid_body(format!("`{field}` must be an RFC 3339 time such as 2027-01-31T00:00:00Z")))
}

fn add_block(s: &AdminState, tenant: Option<&str>, actor: &Actor, body: &Bytes) -> Result<Response, ApiError> {
    if let Some(tenant) = tenant {
        s.control.require_tenant(tenant)?;
    }
    let req: AddBlock = parse_body(body)?;
    let expires_at_ms = req.expires_at.as_deref().map(|t| rfc3339_ms("expires_at", t)).transpose()?;
    let new = NewBlock { kind: req.kind, value: req.value, reason: req.reason, rule_id: req.rule_id, expires_at_ms };
    Ok(created(to_value(s.control.add_block(tenant, new, &format!("admin:{}", actor.admin_id))?)))
}

async fn add_global_block(State(s): State<AdminState>, Extension(actor): Extension<Actor>, body: Bytes) -> Result<Response, ApiError> {
    add_block(&s, None, &actor, &body)
}

async fn add_tenant_block(
    State(s): State<AdminState>,
    Path(tenant): Path<String>,
    Extension(actor): Extension<Actor>,
    body: Bytes,
) -> Result<Response, ApiError> {
    add_block(&s, Some(&tenant), &actor, &body)
}

async fn list_global_blocks(State(s): State<AdminState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"entries": s.control.list_blocks(None)?})))
}

async fn list_tenant_blocks(State(s): State<AdminState>, Path(tenant): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"entries": s.control.list_blocks(Some(&tenant))?})))
}

async fn remove_global_block(State(s): State<AdminState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    s.control.remove_block(None, &id)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn remove_tenant_block(State(s): State<AdminState>, Path((tenant, id)): Path<(String, String)>) -> Result<StatusCode, ApiError> {
    s.control.remove_block(Some(&tenant), &id)?;
    Ok(StatusCode::NO_CONTENT)
}
