//! Application audit events: what a team's own code reports
//! (`POST /v1/audit/{tenant}/events`), stored through the same pipeline,
//! chain and masking as every other event, and read back with filters.
//!
//! Idempotency: a client-supplied `event_id` is stored as the event's id,
//! and a second event with the same id in the same tenant within
//! [`IDEMPOTENCY_DAYS`] is answered as a duplicate and not stored. Checking
//! and queuing happen under one lock, so concurrent retries cannot both
//! pass; the answer is sent only once the events are committed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::AdminState;
use crate::control::Actor;
use crate::error::{ApiError, ErrorCode};
use crate::event::{now_ms, Category, Event, Text};
use crate::gateway::{KeyRefusal, KeySource, KeyedCall};
use crate::snapshot::KeyEntry;
use crate::ratelimit::{Exceeded, Standing};
use crate::store::audit::{AuditReader, EventFilter};

/// Most events in one call.
pub const MAX_BATCH: usize = 1000;
/// Largest request body.
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// Largest `changes` plus `metadata` of one event, as JSON.
pub const MAX_EVENT_JSON: usize = 32 * 1024;
/// How long an `event_id` stays taken.
pub const IDEMPOTENCY_DAYS: i64 = 7;

/// Who submits: an API key holding `audit:write`, checked by the door
/// ([`key_writer`]); its call of the consumer's limits is spent by
/// [`submit`] once the body is taken ([`KeyWriter::spend`]).
#[derive(Clone)]
pub struct KeyWriter {
    pub key_id: Text,
    pub consumer_id: Text,
    /// The caller's address (behind a trusted proxy, the forwarded one).
    pub client_ip: Text,
    /// What spending the call's limits needs (and its refusal records).
    entry: Arc<KeyEntry>,
    source: KeySource,
    client: IpAddr,
    request_id: String,
}

impl KeyWriter {
    /// Spends one call of the consumer's tier limits (the minute rate and
    /// the daily cap), as the gateway does for a call that passed its
    /// policies: where the consumer stands after it (for the `RateLimit-*`
    /// headers) when its tier has a limit; past one, a `rate_limit_exceeded`
    /// event and the refusal.
    fn spend(&self, state: &AdminState, tenant: &str, method: &Method, path: &str, headers: &HeaderMap) -> Result<Option<Standing>, Exceeded> {
        let call = KeyedCall {
            tenant,
            tenant_exists: true,
            // Not read when spending: the key was checked at the door.
            key: "",
            source: self.source,
            client: self.client,
            method: method.as_str(),
            path,
            headers,
            request_id: &self.request_id,
        };
        state.shield.spend_limits(&call, &self.entry)
    }
}

/// The scope an API key needs to submit application events.
pub const WRITE_SCOPE: &str = "audit:write";

/// Checks an API key for submitting to the tenant `call` names, as the
/// gateway checks a key ([`crate::gateway::Shield::check_key`]): the caller
/// on no global or tenant blocklist (by address, country, user agent), the
/// key live and of that tenant (a key of another tenant gets the same 404
/// as a tenant that does not exist), each failure recorded and counted
/// toward the gateway's brute-force block of the caller's address, the key
/// on no blocklist (blocks get the gateway's generic 403); then its
/// consumer active and the key holding `audit:write`. A key that passes is
/// used as at the gateway: its last use moves. Its call of the consumer's
/// tier limits is spent once the body has been taken ([`submit`]), as the
/// gateway spends after its policies: a submission refused for its body
/// spends nothing.
pub fn key_writer(state: &AdminState, call: &KeyedCall<'_>) -> Result<KeyWriter, WriterRefused> {
    let entry = state.shield.check_key(call).map_err(|refusal| match refusal {
        KeyRefusal::Blocked => ApiError::from_code(ErrorCode::Forbidden),
        KeyRefusal::Failed(code) => ApiError::from_code(code),
        KeyRefusal::OtherTenant => ApiError::not_found(format_args!("tenant `{}`", call.tenant)),
    })?;
    entry.usage.touch(now_ms());
    if !entry.consumer_active {
        return Err(ApiError::from_code(ErrorCode::ConsumerSuspended).into());
    }
    if !entry.scopes.iter().any(|s| s == WRITE_SCOPE) {
        state.shield.record_missing_scope(call, &entry, WRITE_SCOPE);
        let message = format!("submitting audit events needs a key with the `{WRITE_SCOPE}` scope");
        return Err(ApiError::new(ErrorCode::InsufficientScope, message).into());
    }
    Ok(KeyWriter {
        key_id: entry.key_id.clone(),
        consumer_id: entry.consumer_id.clone(),
        client_ip: call.client.to_string().into(),
        source: call.source,
        client: call.client,
        request_id: call.request_id.to_string(),
        entry,
    })
}

/// Why a key may not submit: an error, or its consumer's limits spent.
#[derive(Debug)]
pub enum WriterRefused {
    Error(ApiError),
    Limited(Exceeded),
}

impl From<ApiError> for WriterRefused {
    fn from(error: ApiError) -> Self {
        WriterRefused::Error(error)
    }
}

impl IntoResponse for WriterRefused {
    /// A spent limit as the gateway answers it: 429 `rate_limited` with
    /// `Retry-After` and the `RateLimit-*` headers.
    fn into_response(self) -> Response {
        let exceeded = match self {
            WriterRefused::Error(error) => return error.into_response(),
            WriterRefused::Limited(exceeded) => exceeded,
        };
        let mut response = if exceeded.cost_above_limit {
            let message = format!("the consumer's daily quota is {}: no event can be submitted with its keys", exceeded.limit);
            ApiError::new(ErrorCode::CostExceedsQuota, message).into_response()
        } else {
            ApiError::from_code(ErrorCode::RateLimited).with_retry_after(exceeded.retry_after_secs).into_response()
        };
        crate::gateway::rate_headers(response.headers_mut(), &exceeded.standing);
        response
    }
}

/// Event ids already stored, per tenant, loaded from the store on a
/// tenant's first submission.
#[derive(Default)]
pub struct SeenIds(tokio::sync::Mutex<HashMap<String, HashMap<String, i64>>>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppEvent {
    action: String,
    resource_type: String,
    resource_id: String,
    #[serde(default)]
    actor_id: Option<String>,
    #[serde(default)]
    changes: Option<Map<String, Value>>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    #[serde(default)]
    event_id: Option<String>,
    #[serde(default)]
    request_id: Option<String>,
}

fn is_token(text: &str, max: usize, extra: &[u8]) -> bool {
    !text.is_empty() && text.len() <= max && text.bytes().all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

fn is_text(text: &str, max: usize) -> bool {
    !text.trim().is_empty() && text.len() <= max && !text.chars().any(char::is_control)
}

/// The prefixes keytrail writes its own actors with: admins, consumers
/// (a key's calls), keytrail itself (`keytrail:auto-bruteforce`,
/// `keytrail:login-throttle`, `system:retention`), and the address its
/// security events attribute a call to (`ip:203.0.113.9`).
const RESERVED_ACTORS: [&str; 5] = ["admin:", "consumer:", "ip:", "keytrail:", "system:"];

/// An actor as a reader takes it: blanks around it and before a colon
/// gone, invisible characters gone, full-width forms and colon look-alikes
/// as their ASCII, case folded (`\u{017F}` as `s`, the Kelvin sign as `k`).
fn actor_as_read(actor: &str) -> String {
    let mut read = String::with_capacity(actor.len());
    for c in actor.chars() {
        let c = match c {
            '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
            '\u{FE13}' | '\u{FE55}' | '\u{2236}' | '\u{A789}' | '\u{02D0}' | '\u{0589}' | '\u{05C3}' | '\u{1363}' | '\u{1804}' => ':',
            '\u{00AD}' | '\u{034F}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}' => continue,
            c => c,
        };
        if c == ':' {
            read.truncate(read.trim_end().len());
        }
        read.extend(c.to_uppercase().flat_map(char::to_lowercase));
    }
    read.trim().to_string()
}

/// Whom an event may name as its actor: no one keytrail names itself
/// ([`RESERVED_ACTORS`], in any spelling a reader takes for one), but
/// for the submitter itself, exactly as the trail names it. An API key's
/// events are its application's: they may name its own consumer
/// (`consumer:<its id>`), never another consumer, an admin or keytrail,
/// or the trail would show an action they did not take (and an admin's
/// would be salted, so erased, as an admin's rather than the consumer's).
/// An admin may name itself (`admin:<its id>`), never another admin, a
/// consumer or keytrail: an entry that reads as someone's action comes
/// from their credentials.
fn check_actor(actor: &str, by: &Submitter) -> Result<(), &'static str> {
    let read = actor_as_read(actor);
    let Some(reserved) = RESERVED_ACTORS.iter().find(|prefix| read.starts_with(**prefix)) else { return Ok(()) };
    match (*reserved, by) {
        ("consumer:", Submitter::Key(writer)) if actor.strip_prefix("consumer:") == Some(&*writer.consumer_id) => Ok(()),
        ("admin:", Submitter::Admin(me)) if actor.strip_prefix("admin:") == Some(me.admin_id.as_str()) => Ok(()),
        ("admin:", Submitter::Key(_)) => Err("must not name an admin (`admin:…`): an event sent with an API key is its application's, never an admin's"),
        ("admin:", Submitter::Admin(_)) => Err("may name no admin but yourself (`admin:<your id>`, as the trail names you)"),
        ("consumer:", Submitter::Key(_)) => {
            Err("may name no consumer but the key's own (`consumer:<its consumer id>`, exactly as the trail names it)")
        }
        ("consumer:", Submitter::Admin(_)) => Err("must not name a consumer (`consumer:…`): the trail names a consumer for its own key's actions"),
        ("ip:", _) => Err("must not name an address as keytrail does (`ip:…`, in any spelling): keytrail attributes its own security events to `ip:<address>`"),
        _ => Err("must not name keytrail itself (`system:…`, `keytrail:…`, in any spelling): those actors are keytrail's own actions"),
    }
}

/// Checks one event; `at` names it in messages (`events[3]`).
fn check(event: &AppEvent, at: &str, by: &Submitter) -> Result<(), ApiError> {
    let bad = |field: &str, rule: &str| ApiError::invalid_body(format!("`{at}.{field}` {rule}"));
    if !is_token(&event.action, 128, b"._:-") {
        return Err(bad("action", "must be 1-128 characters of letters, digits and `._:-`"));
    }
    if !is_token(&event.resource_type, 64, b"._-") {
        return Err(bad("resource_type", "must be 1-64 characters of letters, digits and `._-`"));
    }
    if !is_text(&event.resource_id, 256) {
        return Err(bad("resource_id", "must be 1-256 characters with no control characters"));
    }
    if event.actor_id.as_deref().is_some_and(|a| !is_text(a, 256)) {
        return Err(bad("actor_id", "must be 1-256 characters with no control characters"));
    }
    if let Some(Err(rule)) = event.actor_id.as_deref().map(|a| check_actor(a, by)) {
        return Err(bad("actor_id", rule));
    }
    if event.event_id.as_deref().is_some_and(|id| !is_token(id, 128, b"._:-")) {
        return Err(bad("event_id", "must be 1-128 characters of letters, digits and `._:-`"));
    }
    // The fields that identify an event are refused, not masked, when they
    // hold a key or token: masked, distinct ids (or actions) would become
    // one, and the answer echoes the id as sent. The rest are masked.
    for (field, value) in [("action", Some(event.action.as_str())), ("event_id", event.event_id.as_deref())] {
        if value.is_some_and(crate::redact::holds_secret) {
            return Err(bad(field, "must not hold an API key, admin token or other secret: it names the event and would be kept as sent"));
        }
    }
    if event.request_id.as_deref().is_some_and(|id| !is_token(id, 64, b"-")) {
        return Err(bad("request_id", "must be a request id as keytrail returns it in `X-Request-Id`"));
    }
    for (field, change) in event.changes.iter().flatten() {
        let ok = change.as_object().is_some_and(|c| !c.is_empty() && c.keys().all(|k| k == "before" || k == "after"));
        if !ok {
            return Err(bad(&format!("changes.{field}"), "must be an object with `before` and/or `after`"));
        }
    }
    // Both sit one level down in the event's details.
    let most = crate::event::MAX_DETAILS_NESTING - 1;
    for (field, map) in [("changes", &event.changes), ("metadata", &event.metadata)] {
        if map.as_ref().is_some_and(|m| 1 + m.values().map(crate::event::nesting).max().unwrap_or(0) > most) {
            return Err(bad(field, &format!("must nest at most {most} levels")));
        }
    }
    let size = event.changes.as_ref().map_or(0, |c| Value::Object(c.clone()).to_string().len())
        + event.metadata.as_ref().map_or(0, |m| Value::Object(m.clone()).to_string().len());
    if size > MAX_EVENT_JSON {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("`{at}`: `changes` and `metadata` together must be at most {MAX_EVENT_JSON} bytes of JSON"),
        ));
    }
    Ok(())
}

/// The events of a body: one event object, or `{"events": [...]}`.
fn parse_events(body: &Bytes, by: &Submitter) -> Result<Vec<AppEvent>, ApiError> {
    if body.len() > MAX_BODY {
        return Err(ApiError::new(ErrorCode::PayloadTooLarge, format!("the body must be at most {MAX_BODY} bytes")));
    }
    let value: Value = super::parse_body(body)?;
    let (items, batch) = match value {
        Value::Object(mut fields) if fields.contains_key("events") => {
            if fields.len() > 1 {
                return Err(ApiError::invalid_body("a batch is `{\"events\": [...]}` with no other fields"));
            }
            match fields.remove("events") {
                Some(Value::Array(items)) => (items, true),
                _ => return Err(ApiError::invalid_body("`events` must be an array")),
            }
        }
        single @ Value::Object(_) => (vec![single], false),
        _ => return Err(ApiError::invalid_body("send one event object or `{\"events\": [...]}`")),
    };
    if items.is_empty() {
        return Err(ApiError::invalid_body("`events` must hold at least one event"));
    }
    if items.len() > MAX_BATCH {
        return Err(ApiError::new(ErrorCode::PayloadTooLarge, format!("at most {MAX_BATCH} events per call; this one has {}", items.len())));
    }
    let mut events = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let at = if batch { format!("events[{i}]") } else { "event".to_string() };
        let event: AppEvent = serde_path_to_error::deserialize(item).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                ApiError::invalid_body(format!("`{at}`: {inner}"))
            } else {
                ApiError::invalid_body(format!("`{at}.{path}`: {inner}"))
            }
        })?;
        check(&event, &at, by)?;
        events.push(event);
    }
    Ok(events)
}

fn to_event(tenant: &str, submitted: AppEvent, by: &Submitter) -> Event {
    let mut event = Event::new(tenant, Category::App, &submitted.action, "success");
    event.event_id = submitted.event_id.unwrap_or_else(crate::event::new_id);
    event.actor = submitted.actor_id.map(Text::from);
    event.target = Some(format!("{}/{}", submitted.resource_type, submitted.resource_id));
    event.request_id = submitted.request_id.map(|id| id.to_ascii_lowercase());
    let submitted_by = match by {
        Submitter::Admin(actor) => {
            event.client_ip = actor.client_ip.as_ref().map(Text::from);
            format!("admin:{}", actor.admin_id)
        }
        Submitter::Key(writer) => {
            event.consumer_id = Some(writer.consumer_id.clone());
            event.key_id = Some(writer.key_id.clone());
            event.client_ip = Some(writer.client_ip.clone());
            format!("key:{}", writer.key_id)
        }
    };
    event.details = Some(json!({
        "resource_type": submitted.resource_type,
        "resource_id": submitted.resource_id,
        "changes": submitted.changes,
        "metadata": submitted.metadata,
        "submitted_by": submitted_by,
    }));
    event
}

enum Submitter {
    Admin(Actor),
    Key(KeyWriter),
}

/// How long loading the used ids waits for retention, an erasure or a
/// restore to let the archives go (as a verification waits).
const ARCHIVE_READ_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Loads the ids a tenant's application events took in the idempotency
/// window: from the hot store, and from the archives of the window's days
/// (with `retention.hot_days` under the window, part of it is archived).
async fn load_ids(state: &AdminState, tenant: &str) -> Result<HashMap<String, i64>, ApiError> {
    let dir = state.audit.dir().to_path_buf();
    let horizon = now_ms() - IDEMPOTENCY_DAYS * 86_400_000;
    let filter = EventFilter { tenant_id: tenant.to_string(), category: Some(Category::App), from_ms: Some(horizon), ..EventFilter::default() };
    let archives = state.control.archive_dir().map(std::path::Path::to_path_buf).zip(state.public_key);
    tokio::task::spawn_blocking(move || {
        let reader = AuditReader::open(&dir).map_err(ApiError::internal)?;
        let mut ids = HashMap::new();
        reader
            .scan(&filter, None, false, |row| {
                ids.insert(row.event.event_id.clone(), row.event.timestamp_ms);
                true
            })
            .map_err(ApiError::internal)?;
        if let Some((archive_dir, key)) = archives {
            // Held shared, as every reader of archives holds it: an erasure
            // rewriting one of the window's archives, retention or a restore
            // changing them, is waited for, not read halfway (its ids would
            // be missed, and their retries stored again).
            use crate::store::audit::erasure;
            let Some(_reading) = erasure::read_lock(&dir, ARCHIVE_READ_WAIT).map_err(ApiError::internal)? else {
                let message = format!(
                    "nothing was taken: the used ids of the last {IDEMPOTENCY_DAYS} days could not be read from the archives, which are being changed by {} (waited {} s); try again after the time in `Retry-After`",
                    erasure::maintenance_holder(&dir),
                    ARCHIVE_READ_WAIT.as_secs()
                );
                return Err(ApiError::unavailable_for_now(message, 10));
            };
            let from_day = crate::store::audit::day_of(horizon);
            let mut each = |stored: &crate::store::audit::StoredEvent| {
                let e = &stored.event;
                if e.category() == Category::App && e.timestamp_ms >= horizon {
                    ids.insert(e.event_id.clone(), e.timestamp_ms);
                }
            };
            let problems = crate::store::audit::archive::scan_since(&archive_dir, &filter.tenant_id, from_day, &key, &mut each).map_err(ApiError::internal)?;
            if !problems.is_empty() {
                // Their ids read so far count; a retry of one not read is stored again.
                tracing::warn!(tenant = %filter.tenant_id, problems = %problems.join("; "), "archives of the idempotency window do not verify");
            }
        }
        Ok(ids)
    })
    .await
    .map_err(ApiError::internal)?
}

/// `POST /v1/audit/{tenant}/events`. A key's call of its consumer's
/// limits is spent once the body is taken (parsed and checked) and the
/// tenant's used ids are at hand, right before the events are queued: a
/// submission refused before that (400, 413, 503) spends nothing.
pub async fn submit(
    State(state): State<AdminState>,
    // The request's method, path and headers, for the limits' events.
    request: axum::http::request::Parts,
    Path(tenant): Path<String>,
    actor: Option<Extension<Actor>>,
    writer: Option<Extension<KeyWriter>>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|_| ApiError::new(ErrorCode::PayloadTooLarge, format!("the body must be at most {MAX_BODY} bytes")))?;
    let mut standing = None;
    let by = match (actor, writer) {
        (_, Some(Extension(writer))) => Submitter::Key(writer),
        (Some(Extension(actor)), None) => {
            state.control.require_tenant(&tenant)?;
            Submitter::Admin(actor)
        }
        (None, None) => return Err(ApiError::from_code(ErrorCode::Unauthorized)),
    };
    let submitted = parse_events(&body, &by)?;
    let mut results = Vec::with_capacity(submitted.len());
    let mut accepted = 0usize;
    {
        let mut seen = state.app_ids.0.lock().await;
        if !seen.contains_key(&tenant) {
            let ids = load_ids(&state, &tenant).await?;
            seen.insert(tenant.clone(), ids);
        }
        if let Submitter::Key(writer) = &by {
            match writer.spend(&state, &tenant, &request.method, request.uri.path(), &request.headers) {
                Ok(spent) => standing = spent,
                Err(exceeded) => return Ok(WriterRefused::Limited(exceeded).into_response()),
            }
        }
        let ids = seen.get_mut(&tenant).expect("loaded above");
        let horizon = now_ms() - IDEMPOTENCY_DAYS * 86_400_000;
        ids.retain(|_, at| *at >= horizon);
        for one in submitted {
            let event = to_event(&tenant, one, &by);
            if ids.contains_key(&event.event_id) {
                results.push(json!({"event_id": event.event_id, "status": "duplicate"}));
                continue;
            }
            let (id, at) = (event.event_id.clone(), event.timestamp_ms);
            // Application events are always kept, so no receiver means the
            // pipeline is stopping and the event was not taken: its id stays
            // free for the caller's retry (the events before it in the batch
            // are committed by the shutdown, and are duplicates on retry).
            if state.audit.record_committed(event).is_none() {
                return Err(ApiError::new(ErrorCode::Unavailable, "keytrail is stopping and could not take the event; retry against a running node"));
            }
            ids.insert(id.clone(), at);
            results.push(json!({"event_id": id, "status": "created"}));
            accepted += 1;
        }
    }
    // Answer only once the events are committed.
    state.audit.flush().await;
    let status = if accepted > 0 { StatusCode::CREATED } else { StatusCode::OK };
    let body = json!({"accepted": accepted, "duplicates": results.len() - accepted, "events": results});
    let mut response = (status, Json(body)).into_response();
    if let Some(standing) = &standing {
        crate::gateway::rate_headers(response.headers_mut(), standing);
    }
    Ok(response)
}

/// The filters of `GET /v1/audit/{tenant}/events` beyond the shared ones:
/// `action`, `actor_id`, `resource_type` (+ `resource_id`), `request_id`.
pub fn app_filters(filter: &mut EventFilter, params: &[(String, String)]) -> Result<(), ApiError> {
    let get = |name: &str| params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    if let Some(action) = get("action") {
        if !is_token(action, 128, b"._:-") {
            return Err(ApiError::invalid_parameter("action", "must be 1-128 characters of letters, digits and `._:-`"));
        }
        filter.event_type = Some(action.to_string());
    }
    if let Some(actor) = get("actor_id") {
        if !is_text(actor, 256) {
            return Err(ApiError::invalid_parameter("actor_id", "must be 1-256 characters with no control characters"));
        }
        filter.actor = Some(actor.to_string());
    }
    match (get("resource_type"), get("resource_id")) {
        (None, Some(_)) => return Err(ApiError::invalid_parameter("resource_id", "give `resource_type` with it")),
        (Some(kind), id) => {
            if !is_token(kind, 64, b"._-") {
                return Err(ApiError::invalid_parameter("resource_type", "must be 1-64 characters of letters, digits and `._-`"));
            }
            match id {
                Some(id) if !is_text(id, 256) => {
                    return Err(ApiError::invalid_parameter("resource_id", "must be 1-256 characters with no control characters"))
                }
                Some(id) => filter.target = Some(format!("{kind}/{id}")),
                None => filter.target_prefix = Some(format!("{kind}/")),
            }
        }
        (None, None) => {}
    }
    Ok(())
}

/// One application event as the API shows it.
pub fn app_entry(stored: &crate::store::audit::StoredEvent) -> Value {
    let e = &stored.event;
    let details = e.details.clone().unwrap_or(Value::Null);
    json!({
        "event_id": e.event_id,
        "seq": e.seq,
        "timestamp": crate::event::format_timestamp(e.timestamp_ms),
        "tenant_id": e.tenant_id,
        "action": e.event_type,
        "resource_type": details.get("resource_type"),
        "resource_id": details.get("resource_id"),
        "actor_id": e.actor,
        "changes": details.get("changes"),
        "metadata": details.get("metadata"),
        "request_id": e.request_id,
        "submitted_by": details.get("submitted_by"),
        // Where it was submitted from (an API key's caller behind a trusted
        // proxy: the forwarded address); null once erased.
        "client_ip": e.client_ip,
    })
}
