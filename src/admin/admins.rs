//! Admins and their sign-in: who am I, admin management, login and logout.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{created, parse_body, to_value, AdminState};
use crate::control::{Actor, Credential, LoginRefused, NewAdmin, Signed};
use crate::error::{ApiError, ErrorCode};

pub fn routes() -> Router<AdminState> {
    Router::new()
        .route("/v1/me", get(me))
        .route("/v1/auth/logout", post(logout))
        .route("/v1/admins", get(list_admins).post(create_admin))
        .route("/v1/admins/{admin_id}", delete(delete_admin))
        .route("/v1/admins/{admin_id}/unlock", post(unlock_admin))
        .route("/v1/addresses/{address}/unlock", post(unlock_address))
}

async fn me(Extension(signed): Extension<Signed>) -> Json<Value> {
    let mut view = to_value(&*signed.admin);
    view["credential"] = json!(signed.credential.describe());
    Json(view)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateAdmin {
    name: String,
    role: String,
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

async fn create_admin(State(s): State<AdminState>, Extension(actor): Extension<Actor>, body: Bytes) -> Result<Response, ApiError> {
    let req: CreateAdmin = parse_body(&body)?;
    let new = NewAdmin { name: req.name, role: req.role, tenant_id: req.tenant_id, password: req.password };
    let control = s.control.clone();
    // Hashing a password takes tens of milliseconds: off the async threads.
    let (admin, token) = tokio::task::spawn_blocking(move || control.create_admin(new, &actor)).await.map_err(ApiError::internal)??;
    let mut view = to_value(&admin);
    if let Some(token) = token {
        view["token"] = json!(token);
    }
    let mut response = created(view);
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

async fn list_admins(State(s): State<AdminState>, Extension(actor): Extension<Actor>) -> Json<Value> {
    Json(json!({"admins": s.control.list_admins(&actor)}))
}

async fn delete_admin(
    State(s): State<AdminState>,
    Path(admin_id): Path<String>,
    Extension(actor): Extension<Actor>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(to_value(s.control.delete_admin(&admin_id, &actor)?)))
}

/// `POST /v1/admins/{admin_id}/unlock`: lifts the admin name's sign-in
/// lockout now, and forgets its failed sign-ins; says whether it was
/// locked out (and until when) and how many failures were forgotten.
async fn unlock_admin(
    State(s): State<AdminState>,
    Path(admin_id): Path<String>,
    Extension(actor): Extension<Actor>,
) -> Result<Json<Value>, ApiError> {
    let (admin, lifted) = s.control.unlock_admin(&admin_id, &actor)?;
    let mut answer = lifted.to_json();
    answer["admin"] = to_value(&admin);
    Ok(Json(answer))
}

/// `POST /v1/addresses/{address}/unlock`: lifts a client address's
/// lockouts (sign-ins and bearer tokens) now and forgets its failures
/// (global owners).
async fn unlock_address(
    State(s): State<AdminState>,
    Path(address): Path<String>,
    Extension(actor): Extension<Actor>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(s.control.unlock_address(&address, &actor)?.details()))
}

/// The largest sign-in body read: a name and a password need far less;
/// axum's default (2 MB) answered in plain text past it.
pub const MAX_LOGIN_BODY: usize = 64 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    name: String,
    password: String,
}

/// `POST /v1/auth/login`: a session token for a person's name and password;
/// `429 too_many_attempts` with `Retry-After` while the name or the address
/// is locked out. A body that is no `{"name", "password"}` gets 400 and is
/// not counted as a failed sign-in (no password was checked), nor is one
/// over [`MAX_LOGIN_BODY`] (413, in the API's JSON like every error).
pub async fn login(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let request_id = crate::event::new_id();
    let body = body.map_err(|rejection| match rejection.status() {
        axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(ErrorCode::PayloadTooLarge, format!("a sign-in body is at most {} KiB", MAX_LOGIN_BODY / 1024))
        }
        _ => ApiError::invalid_body("the body could not be read whole"),
    });
    let answer = match body {
        Ok(body) => login_inner(&s, peer, &headers, &body, &request_id).await,
        Err(error) => Err(error),
    };
    let mut response = match answer {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    // The sign-in's events (a failed one's too) before the answer, under `sync`.
    s.audit.flush_if_sync().await;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

async fn login_inner(s: &AdminState, peer: SocketAddr, headers: &HeaderMap, body: &Bytes, request_id: &str) -> Result<Response, ApiError> {
    let req: Login = parse_body(body)?;
    let actor = Actor {
        client_ip: Some(peer.ip().to_string()),
        user_agent: headers.get(header::USER_AGENT).map(|v| String::from_utf8_lossy(v.as_bytes()).chars().take(512).collect()),
        credential: "password".into(),
        request_id: Some(request_id.to_string()),
        ..Actor::default()
    };
    let control = s.control.clone();
    let signed = tokio::task::spawn_blocking(move || control.login(&req.name, &req.password, &actor)).await.map_err(ApiError::internal)?;
    let (signed, session, token) = match signed {
        Ok(signed) => signed,
        Err(LoginRefused::Error(error)) => return Err(error),
        // The same answer whichever the name, known or not, and whether the
        // name or the address is locked out.
        Err(LoginRefused::TooManyAttempts { retry_after_secs }) => {
            return Err(ApiError::from_code(ErrorCode::TooManyAttempts).with_retry_after(retry_after_secs));
        }
    };
    let mut response = Json(json!({
        "session_token": token,
        "session_id": session.id,
        "expires_at": crate::event::format_timestamp(session.expires_at),
        "admin": to_value(&*signed.admin),
    }))
    .into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

async fn logout(
    State(s): State<AdminState>,
    Extension(signed): Extension<Signed>,
    Extension(actor): Extension<Actor>,
) -> Result<Json<Value>, ApiError> {
    let Credential::Session(session_id) = &signed.credential else {
        return Err(ApiError::new(ErrorCode::InvalidBody, "logout ends a session; this call was made with an admin token"));
    };
    s.control.logout(session_id, &actor)?;
    s.audit.flush_if_sync().await;
    Ok(Json(json!({"session_id": session_id, "ended": true})))
}
