//! The admin activity log: every change made through the admin API is
//! written as an `admin` event, and committed, **before** the change runs;
//! a second event with the same `request_id` then records the outcome.
//!
//! The audit store is append-only and chained, so the intent is never
//! rewritten: readers join the two. An intent whose outcome never came
//! (the process died in between) reads as outcome `unknown`; one whose
//! change is still running in this process reads as `pending`. An outcome
//! is looked for up to [`OUTCOME_WITHIN_MS`] after its intent, so a page
//! holding an intent without one does not read the log up to now.
//!
//! Logins, failed logins and logouts are single events with their outcome.

use std::collections::HashSet;
use std::sync::Mutex;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use serde_json::{json, Value};

use super::AdminState;
use crate::control::Actor;
use crate::event::{Event, Text};
use crate::store::audit::StoredEvent;

/// Outcome of an intent before its change has finished.
pub const PENDING: &str = "pending";
/// How long after its intent a change's outcome is looked for: an intent
/// without an outcome by then (and not running in this process) reads as
/// `unknown`. Changes take seconds; a day is far beyond any of them, and
/// bounds what a page of the log reads looking for the outcome of an
/// intent whose process died.
pub const OUTCOME_WITHIN_MS: i64 = 24 * 3_600_000;
/// The largest body a change may send (larger ones get the API's JSON 413).
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// The key in an outcome event's details that names the intent's action.
const COMPLETES: &str = "completes";

/// Request ids of changes running now, so readers can tell a change in
/// flight from one whose process died.
#[derive(Default)]
pub struct InFlight(Mutex<HashSet<String>>);

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn contains(&self, request_id: &str) -> bool {
        self.lock().contains(request_id)
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// Removes its request id from the in-flight set when the change ends in
/// any way, including the task being dropped.
struct Running<'a>(&'a InFlight, String);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.lock().remove(&self.1);
    }
}

/// A test-only fault: with `KEYTRAIL_FAILPOINT=after_admin_intent:<ACTION>`
/// in the environment, the process aborts right after the intent of such a
/// change is committed, as a crash between the write and the change would.
fn crash_after_intent(action: &str) -> bool {
    static SET: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    SET.get_or_init(|| std::env::var("KEYTRAIL_FAILPOINT").ok()?.strip_prefix("after_admin_intent:").map(str::to_string))
        .as_deref()
        == Some(action)
}

/// Replaces by `****` the value of every field named like a secret
/// ([`crate::redact::is_secret_field`]), and the credentials of every URL
/// in a text (`http://user:pw@host`), in nested objects and arrays too, at
/// any depth (a refused body with a misspelt `Password`, a `new_password`
/// or a wrapped `{"admin": {"password": …}}` holds the password all the
/// same).
fn mask_secret_fields(fields: &mut serde_json::Map<String, Value>) {
    for (name, field) in fields.iter_mut() {
        if crate::redact::is_secret_field(name) {
            *field = json!("****");
        } else {
            mask_nested_secret_fields(field);
        }
    }
}

fn mask_nested_secret_fields(value: &mut Value) {
    match value {
        Value::Object(fields) => mask_secret_fields(fields),
        Value::Array(items) => items.iter_mut().for_each(mask_nested_secret_fields),
        Value::String(text) => {
            if let Some(masked) = mask_url_credentials(text) {
                *text = masked;
            }
        }
        _ => {}
    }
}

/// `text` with the user information of each URL in it (what comes between
/// `://` and the last `@` of the authority: a user and often a password)
/// replaced by `****`; `None` when there is none. A body is recorded as
/// asked, refused ones too: an upstream written `http://user:pw@host`,
/// which the api check refuses, must not leave its password in the log.
fn mask_url_credentials(text: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = text;
    let mut masked = false;
    while let Some(at) = rest.find("://") {
        let start = at + 3;
        let authority_len = rest[start..].find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace()).unwrap_or(rest.len() - start);
        let authority = &rest[start..start + authority_len];
        out.push_str(&rest[..start]);
        match authority.rfind('@') {
            Some(user_end) => {
                out.push_str("****");
                out.push_str(&authority[user_end..]);
                masked = true;
            }
            None => out.push_str(authority),
        }
        rest = &rest[start + authority_len..];
    }
    out.push_str(rest);
    masked.then_some(out)
}

/// The request body as the intent records it: JSON objects without secret
/// fields, and without a consumer's personal fields on consumer routes;
/// anything else, and objects nested deeper than an event's details may
/// be (under `{"request": …}`), by size only.
fn requested(route: &str, body: &Bytes) -> Value {
    if body.is_empty() {
        return Value::Null;
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(mut fields)) if fields.values().all(|v| crate::event::nesting(v) + 2 <= crate::event::MAX_DETAILS_NESTING) => {
            mask_secret_fields(&mut fields);
            if route.contains("/alerts") {
                if let Some(Value::String(url)) = fields.get("webhook_url") {
                    let shown = crate::alerts::webhook::shown(url);
                    fields.insert("webhook_url".into(), json!(shown));
                }
            }
            if route.contains("/consumers") {
                for name in crate::control::PERSONAL_CONSUMER_FIELDS {
                    if fields.contains_key(name) {
                        fields.insert(name.into(), json!(crate::control::PERSONAL_MARK));
                    }
                }
            }
            Value::Object(fields)
        }
        _ => json!({"unparsed_bytes": body.len()}),
    }
}

/// The object a change route acts on, as (tenant, kind, id), for its
/// before and after; `None` for routes that add to a collection.
fn object_of<'p>(route: &str, path: &'p str) -> Option<(Option<&'p str>, &'static str, Option<&'p str>)> {
    let param = |name| crate::access::path_param(route, path, name);
    let tenant = param("tenant");
    if route.ends_with("/settings/logging") {
        return Some((tenant, "settings", None));
    }
    if route.ends_with("/settings/retention") {
        return Some((tenant, "retention", None));
    }
    let tail = route.rsplit('/').next().unwrap_or_default();
    if matches!(tail, "apis" | "consumers" | "keys" | "tiers" | "blocklist" | "tenants" | "admins") {
        return None;
    }
    for (name, kind) in [("key_id", "key"), ("tier", "tier"), ("consumer", "consumer"), ("api", "api")] {
        if let Some(id) = param(name) {
            return Some((tenant, kind, Some(id)));
        }
    }
    None
}

/// `{field: {before, after}}` for every top-level field that differs.
fn changes(before: &Value, after: &Value) -> Value {
    let empty = serde_json::Map::new();
    let (b, a) = (before.as_object().unwrap_or(&empty), after.as_object().unwrap_or(&empty));
    let mut out = serde_json::Map::new();
    for field in b.keys().chain(a.keys().filter(|k| !b.contains_key(*k))) {
        let (was, now) = (b.get(field).unwrap_or(&Value::Null), a.get(field).unwrap_or(&Value::Null));
        if was != now {
            out.insert(field.clone(), json!({"before": was, "after": now}));
        }
    }
    Value::Object(out)
}

/// A change about to run: the tenant whose log holds it, its action, the
/// resource it touches and the route it came through.
pub struct Change {
    pub tenant: String,
    pub action: &'static str,
    pub resource: String,
    pub route: String,
}

/// The existing tenant a change's body binds what it makes to, for the
/// routes whose path names none: a tenant-bound admin's creation goes to
/// its tenant's log, as its removal, its sign-ins and its changes do (the
/// guard resolves those from the path); one bound to no tenant stays in
/// the system tenant's.
fn tenant_named_by_body(state: &AdminState, route: &str, body: &Bytes) -> Option<String> {
    if route != "/v1/admins" {
        return None;
    }
    let named = serde_json::from_slice::<Value>(body).ok()?.get("tenant_id")?.as_str()?.to_string();
    state.control.require_tenant(&named).ok().map(|_| named)
}

/// Runs a change between its intent and its outcome.
pub async fn around(state: &AdminState, actor: &Actor, change: &Change, req: Request, next: Next) -> Response {
    let Change { tenant, action, resource, route } = change;
    let (tenant, action) = (tenant.as_str(), *action);
    let (parts, body) = req.into_parts();
    // Admin bodies are small; the handlers read them whole anyway.
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return axum::response::IntoResponse::into_response(crate::error::ApiError::new(
                crate::error::ErrorCode::PayloadTooLarge,
                "admin request bodies are limited to 4 MiB",
            ))
        }
    };
    let named = (tenant == crate::event::SYSTEM_TENANT).then(|| tenant_named_by_body(state, route, &body)).flatten();
    let tenant = named.as_deref().unwrap_or(tenant);
    let request_id = actor.request_id.clone().unwrap_or_default();
    state.in_flight.lock().insert(request_id.clone());
    let _running = Running(&state.in_flight, request_id);

    let intent = actor.admin_event(tenant, action, PENDING, resource.clone(), json!({"request": requested(route, &body)}));
    state.audit.record(intent);
    state.audit.flush().await;
    if crash_after_intent(action) {
        eprintln!("keytrail: failpoint after_admin_intent reached; aborting");
        std::process::abort();
    }

    let object = object_of(route, parts.uri.path()).map(|(t, kind, id)| (t.map(str::to_string), kind, id.map(str::to_string)));
    let state_now = |object: &Option<(Option<String>, &str, Option<String>)>| {
        object.as_ref().and_then(|(t, kind, id)| state.control.object_state(t.as_deref(), kind, id.as_deref()))
    };
    let before = state_now(&object);
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    let after = state_now(&object);

    let status = response.status();
    let (parts, body) = response.into_parts();
    // A change's answer is JSON built in memory: read whole (to find the
    // outcome's error or created id) and handed on as it came.
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let mut details = json!({COMPLETES: action, "status": status.as_u16()});
    let outcome = if status.is_success() {
        if let Some(id) = answer.get("key_id").or_else(|| answer.get("id")).filter(|v| v.is_string()) {
            details["created_or_changed"] = id.clone();
        }
        if let (Some(before), Some(after)) = (&before, &after) {
            details["changes"] = changes(before, after);
        }
        "success"
    } else {
        "failure"
    };
    let mut done = actor.admin_event(tenant, action, outcome, resource.clone(), details);
    if !status.is_success() {
        done.error_code = answer.pointer("/error/code").and_then(Value::as_str).map(Text::from);
        done.error_message = answer.pointer("/error/message").and_then(Value::as_str).map(str::to_string);
    }
    state.audit.record(done);
    // Under `durability = "sync"` the answer waits for the outcome's commit
    // (and for the change's own events, queued before it).
    state.audit.flush_if_sync().await;
    Response::from_parts(parts, Body::from(bytes))
}

/// One admin log entry: an intent joined with its outcome, or a single
/// event (a login).
pub fn entry_view(event: &StoredEvent, outcome: Option<&Event>, in_flight: &InFlight) -> Value {
    let e = &event.event;
    let mut details = e.details.clone().unwrap_or(Value::Null);
    let credential = details.as_object_mut().and_then(|d| d.remove("credential"));
    let (resolved, error) = if e.outcome != PENDING {
        (e.outcome.clone(), e.error_code.as_ref().map(|code| json!({"code": code, "message": e.error_message})))
    } else if let Some(done) = outcome {
        for field in ["created_or_changed", "changes"] {
            if let Some(value) = done.details.as_ref().and_then(|d| d.get(field)) {
                details[field] = value.clone();
            }
        }
        (done.outcome.clone(), done.error_code.as_ref().map(|code| json!({"code": code, "message": done.error_message})))
    } else if e.request_id.as_deref().is_some_and(|id| in_flight.contains(id)) {
        (Text::from_static(PENDING), None)
    } else {
        (Text::from_static("unknown"), None)
    };
    json!({
        "event_id": e.event_id,
        "seq": e.seq,
        "timestamp": crate::event::format_timestamp(e.timestamp_ms),
        "tenant_id": e.tenant_id,
        "admin": e.actor,
        "action": e.event_type,
        "resource": e.target,
        "outcome": resolved,
        "error": error,
        "details": details,
        "credential": credential,
        "client_ip": e.client_ip,
        "user_agent": e.user_agent,
        "request_id": e.request_id,
    })
}

/// Whether an admin event is the outcome half of a change.
pub fn is_outcome(event: &Event) -> bool {
    event.details.as_ref().is_some_and(|d| d.get(COMPLETES).is_some())
}

#[cfg(test)]
mod tests {
    use super::mask_url_credentials;

    #[test]
    fn url_credentials_are_masked_and_the_rest_kept() {
        assert_eq!(mask_url_credentials("http://u:p@h:1/x?y@z").as_deref(), Some("http://****@h:1/x?y@z"));
        assert_eq!(mask_url_credentials("a http://u@h b ftp://x:y@z@w/").as_deref(), Some("a http://****@h b ftp://****@w/"));
        assert_eq!(mask_url_credentials("http://h:1/a@b"), None);
        assert_eq!(mask_url_credentials("no url: user@host"), None);
        assert_eq!(mask_url_credentials("http://é:ü@h").as_deref(), Some("http://****@h"));
    }
}
