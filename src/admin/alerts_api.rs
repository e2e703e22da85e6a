//! Alert rules over the admin API (`/v1/tenants/{tenant}/alerts`): made,
//! listed, read, replaced and deleted, each with what the engine did for
//! it since the start. A rule with a webhook answers its signing secret
//! once, as it is made or its secret rotated; it is never stored or shown
//! again.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{json, Value};

use super::{created, parse_body, parse_replacement, AdminState};
use crate::access::Permission;
use crate::alerts::{AlertRule, RuleSpec};
use crate::control::Actor;
use crate::error::ApiError;
use crate::event::format_timestamp;

pub fn routes() -> Router<AdminState> {
    Router::new()
        .route("/v1/tenants/{tenant}/alerts", get(list_rules).post(create_rule))
        .route("/v1/tenants/{tenant}/alerts/{rule}", get(get_rule).put(replace_rule).delete(delete_rule))
        .route("/v1/tenants/{tenant}/alerts/{rule}/rotate-secret", post(rotate_secret))
}

fn rule_view(s: &AdminState, rule: &AlertRule) -> Value {
    rule_view_for(s, rule, None)
}

/// A rule as `actor` reads it: one who may not change rules (a viewer)
/// sees the webhook's host and port, not its path and query.
fn rule_view_for(s: &AdminState, rule: &AlertRule, actor: Option<&Actor>) -> Value {
    let mut view = serde_json::to_value(&rule.spec).expect("rules serialise");
    if actor.is_some_and(|a| !a.role.is_some_and(|role| role.allows(Permission::Change))) {
        if let Some(url) = &rule.spec.webhook_url {
            view["webhook_url"] = json!(crate::alerts::webhook::shown(url));
        }
    }
    let status = s.control.alert_status().get(&rule.tenant_id, &rule.id);
    let fields = view.as_object_mut().expect("a rule is an object");
    for (field, value) in [
        ("tenant_id", json!(rule.tenant_id)),
        ("id", json!(rule.id)),
        ("created_at", json!(format_timestamp(rule.created_at))),
        ("updated_at", json!(format_timestamp(rule.updated_at))),
        ("status", serde_json::to_value(status).expect("statuses serialise")),
    ] {
        fields.insert(field.to_string(), value);
    }
    view
}

async fn create_rule(State(s): State<AdminState>, Path(tenant): Path<String>, body: Bytes) -> Result<Response, ApiError> {
    s.control.require_tenant(&tenant)?;
    let mut fields: Value = parse_body(&body)?;
    let Some(object) = fields.as_object_mut() else { return Err(ApiError::invalid_body("the body must be a JSON object")) };
    let id = match object.remove("id") {
        Some(Value::String(id)) => id,
        Some(_) => return Err(ApiError::invalid_body("`id`: must be a string")),
        None => return Err(ApiError::invalid_body("`id` is missing: name the rule (1-63 characters of a-z, 0-9, `-` and `_`)")),
    };
    let spec: RuleSpec = parse_body(&Bytes::from(serde_json::to_vec(&fields).expect("JSON serialises")))?;
    let (rule, secret) = s.control.create_alert_rule(&tenant, id, spec)?;
    let mut view = rule_view(&s, &rule);
    if let Some(secret) = secret {
        view["webhook_secret"] = json!(secret);
    }
    // It may hold the secret: never cached (every 201 alike, as documented).
    Ok(not_cached(created(view)))
}

fn not_cached(mut response: Response) -> Response {
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateSecret {
    #[serde(default = "default_secret_grace")]
    grace_seconds: u64,
}

fn default_secret_grace() -> u64 {
    86_400
}

/// `POST …/alerts/{rule}/rotate-secret`: a new webhook secret, shown this
/// once; the old one signs beside it for `grace_seconds` (default a day).
async fn rotate_secret(State(s): State<AdminState>, Path((tenant, id)): Path<(String, String)>, body: Bytes) -> Result<Response, ApiError> {
    s.control.require_tenant(&tenant)?;
    let req: RotateSecret = if body.is_empty() { RotateSecret { grace_seconds: default_secret_grace() } } else { parse_body(&body)? };
    let (rule, secret) = s.control.rotate_alert_secret(&tenant, &id, super::grace_ms(req.grace_seconds)?)?;
    let mut view = rule_view(&s, &rule);
    view["webhook_secret"] = json!(secret);
    view["previous_secret_expires_at"] = json!(rule.secret.previous_until.map(format_timestamp));
    Ok(not_cached(Json(view).into_response()))
}

async fn list_rules(State(s): State<AdminState>, Extension(actor): Extension<Actor>, Path(tenant): Path<String>) -> Result<Json<Value>, ApiError> {
    let rules: Vec<Value> = s.control.list_alert_rules(&tenant)?.iter().map(|rule| rule_view_for(&s, rule, Some(&actor))).collect();
    Ok(Json(json!({"alerts": rules})))
}

async fn get_rule(State(s): State<AdminState>, Extension(actor): Extension<Actor>, Path((tenant, id)): Path<(String, String)>) -> Result<Json<Value>, ApiError> {
    Ok(Json(rule_view_for(&s, &s.control.get_alert_rule(&tenant, &id)?, Some(&actor))))
}

async fn replace_rule(State(s): State<AdminState>, Path((tenant, id)): Path<(String, String)>, body: Bytes) -> Result<Json<Value>, ApiError> {
    s.control.require_tenant(&tenant)?;
    let spec: RuleSpec = parse_replacement(&body, "send the whole rule (`match`, `threshold`, `window_secs`, …); to stop it, `\"enabled\": false` or DELETE")?;
    Ok(Json(rule_view(&s, &s.control.update_alert_rule(&tenant, &id, spec)?)))
}

async fn delete_rule(State(s): State<AdminState>, Path((tenant, id)): Path<(String, String)>) -> Result<StatusCode, ApiError> {
    s.control.delete_alert_rule(&tenant, &id)?;
    Ok(StatusCode::NO_CONTENT)
}
