//! The one table of error codes and the one place that renders them.
//!
//! Every refusal keytrail sends — from the gateway or the admin API — is a
//! JSON body `{"error": {"code": "…", "message": "…"}}` with the status the
//! code maps to. Messages pass through [`crate::redact`] on their way out, so
//! no call site can leak a key by formatting it into a message.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

/// Every error code keytrail answers with, and its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    // Gateway refusals.
    MissingKey,
    InvalidKey,
    ExpiredKey,
    RevokedKey,
    ConsumerSuspended,
    RateLimited,
    /// The call costs more than the consumer's whole daily quota: no wait
    /// lets it pass.
    CostExceedsQuota,
    Forbidden,
    InsufficientScope,
    /// Key verification named an api the key's tenant does not have.
    UnknownApi,
    PayloadTooLarge,
    LengthRequired,
    NoRoute,
    UpstreamUnavailable,
    UpstreamTimeout,
    /// The client did not send its request head in time (recorded; the
    /// connection is closed unanswered).
    RequestTimeout,
    // Admin and audit API.
    Unauthorized,
    InvalidBody,
    InvalidParameter,
    NotFound,
    /// A consumer the tenant does not have and whose id no event of the
    /// asked window carries (a consumer profile).
    ConsumerNotFound,
    Conflict,
    MethodNotAllowed,
    /// Sign-in refused for a while after too many failed ones.
    TooManyAttempts,
    Internal,
    Unavailable,
}

impl ErrorCode {
    /// The stable string clients match on.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MissingKey => "missing_key",
            ErrorCode::InvalidKey => "invalid_key",
            ErrorCode::ExpiredKey => "expired_key",
            ErrorCode::RevokedKey => "revoked_key",
            ErrorCode::ConsumerSuspended => "consumer_suspended",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::CostExceedsQuota => "cost_exceeds_quota",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::InsufficientScope => "insufficient_scope",
            ErrorCode::UnknownApi => "unknown_api",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::LengthRequired => "length_required",
            ErrorCode::NoRoute => "no_route",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::InvalidBody => "invalid_body",
            ErrorCode::InvalidParameter => "invalid_parameter",
            ErrorCode::NotFound => "not_found",
            ErrorCode::ConsumerNotFound => "consumer_not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::TooManyAttempts => "too_many_attempts",
            ErrorCode::Internal => "internal_error",
            ErrorCode::Unavailable => "service_unavailable",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::MissingKey
            | ErrorCode::InvalidKey
            | ErrorCode::ExpiredKey
            | ErrorCode::RevokedKey
            | ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::ConsumerSuspended => StatusCode::FORBIDDEN,
            ErrorCode::RateLimited | ErrorCode::TooManyAttempts => StatusCode::TOO_MANY_REQUESTS,
            // Not 429: waiting does not help, and clients retry a 429.
            ErrorCode::Forbidden | ErrorCode::InsufficientScope | ErrorCode::CostExceedsQuota => StatusCode::FORBIDDEN,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::LengthRequired => StatusCode::LENGTH_REQUIRED,
            ErrorCode::NoRoute | ErrorCode::UnknownApi | ErrorCode::NotFound | ErrorCode::ConsumerNotFound => StatusCode::NOT_FOUND,
            ErrorCode::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            ErrorCode::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::InvalidBody | ErrorCode::InvalidParameter => StatusCode::BAD_REQUEST,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The message the gateway sends for this code when nothing more specific is said.
    pub fn default_message(self) -> &'static str {
        match self {
            ErrorCode::MissingKey => "an API key is required: send it as `Authorization: Bearer <key>` or `X-API-Key: <key>`",
            ErrorCode::InvalidKey => "the API key is not valid",
            ErrorCode::ExpiredKey => "the API key has expired",
            ErrorCode::RevokedKey => "the API key has been revoked",
            ErrorCode::ConsumerSuspended => "the consumer this key belongs to is suspended",
            ErrorCode::RateLimited => "too many requests: wait for the time in `Retry-After`",
            ErrorCode::CostExceedsQuota => "this call costs more than the consumer's whole daily quota: it can never pass",
            ErrorCode::Forbidden => "this request is not allowed",
            ErrorCode::InsufficientScope => "the API key does not hold the scopes this API requires",
            ErrorCode::UnknownApi => "the key's tenant has no API with this id",
            ErrorCode::PayloadTooLarge => "the request body is larger than this API accepts",
            ErrorCode::LengthRequired => "this API limits body sizes: send a Content-Length header",
            ErrorCode::NoRoute => "no API is configured for this path",
            ErrorCode::UpstreamUnavailable => "the upstream service could not be reached",
            ErrorCode::UpstreamTimeout => "the upstream service did not answer in time",
            ErrorCode::RequestTimeout => "the request head did not arrive in time",
            ErrorCode::Unauthorized => "a valid admin token is required: send `Authorization: Bearer <token>`",
            ErrorCode::InvalidBody => "the request body is not valid",
            ErrorCode::InvalidParameter => "a query parameter is not valid",
            ErrorCode::NotFound => "not found",
            ErrorCode::ConsumerNotFound => "the tenant has no such consumer, and no event of the window names it",
            ErrorCode::Conflict => "the request conflicts with the current state of the resource",
            ErrorCode::MethodNotAllowed => "this method is not allowed here",
            ErrorCode::TooManyAttempts => "too many failed sign-ins: try again after the time in `Retry-After`",
            ErrorCode::Internal => "internal error",
            ErrorCode::Unavailable => "the service is not available right now",
        }
    }
}

/// An error on its way to a client: a code and a message written for that client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds for a `Retry-After` header: [`ApiError::to_response`] sends
    /// it (the gateway's own answers set theirs where they render).
    pub retry_after: Option<u64>,
}

/// The `Retry-After` of an answer about an audit directory busy with
/// retention, an erasure or a restore ([`crate::store::StoreError::Busy`]).
pub const BUSY_RETRY_AFTER_SECS: u64 = 10;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), retry_after: None }
    }

    /// 503 `service_unavailable` with `Retry-After`: something that is
    /// worth trying again soon (the audit directory busy with maintenance).
    pub fn unavailable_for_now(message: impl Into<String>, retry_after_secs: u64) -> Self {
        ApiError::new(ErrorCode::Unavailable, message).with_retry_after(retry_after_secs)
    }

    /// The same error answered with `Retry-After: secs`.
    pub fn with_retry_after(self, secs: u64) -> Self {
        ApiError { retry_after: Some(secs), ..self }
    }

    pub fn from_code(code: ErrorCode) -> Self {
        ApiError::new(code, code.default_message())
    }

    pub fn not_found(what: impl std::fmt::Display) -> Self {
        ApiError::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    pub fn invalid_parameter(name: &str, problem: impl std::fmt::Display) -> Self {
        ApiError::new(ErrorCode::InvalidParameter, format!("invalid parameter `{name}`: {problem}"))
    }

    pub fn invalid_body(problem: impl std::fmt::Display) -> Self {
        ApiError::new(ErrorCode::InvalidBody, format!("invalid request body: {problem}"))
    }

    /// An internal failure: the client gets a generic message, the log gets the cause.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        ApiError::from_code(ErrorCode::Internal)
    }

    /// The JSON body, with the message passed through the redaction point.
    pub fn body_bytes(&self) -> Bytes {
        let body = serde_json::json!({
            "error": {
                "code": self.code.as_str(),
                "message": crate::redact::redact(&self.message),
            }
        });
        Bytes::from(serde_json::to_vec(&body).expect("a json value always serialises"))
    }

    /// Renders the error as a complete HTTP response with any body type built from bytes.
    pub fn to_response<B: From<Bytes>>(&self) -> Response<B> {
        let mut response = Response::new(B::from(self.body_bytes()));
        *response.status_mut() = self.code.status();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Parses a JSON request body, turning every problem into a 400 that says
/// what to fix and names the field (`rate_limit.burst`). An empty body
/// counts as `{}`. serde's messages may quote what was sent (an unknown
/// field's name, a mistyped value); like every message they are masked on
/// their way out ([`ApiError::body_bytes`], `Event::sanitize`).
pub fn parse_json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let text: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { body };
    let mut json = serde_json::Deserializer::from_slice(text);
    let parsed: T = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let path = e.path().to_string();
        // serde quotes a mistyped value (`invalid type: integer `…``): not
        // when the field holds a secret (a password sent as a number).
        let secret = matches!(e.path().iter().next_back(), Some(serde_path_to_error::Segment::Map { key }) if crate::redact::is_secret_field(key));
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                ApiError::invalid_body(format!("not valid JSON ({inner})"))
            }
            // An unknown field's message quotes its name only.
            serde_json::error::Category::Data if secret && !inner.to_string().starts_with("unknown field") => {
                ApiError::invalid_body(format!("`{path}`: invalid type: must be a string (the value sent is not repeated: it may be a secret)"))
            }
            // `.` is the body itself.
            _ if path != "." => ApiError::invalid_body(format!("`{path}`: {inner}")),
            _ => ApiError::invalid_body(inner.to_string()),
        }
    })?;
    json.end().map_err(|e| ApiError::invalid_body(format!("not valid JSON ({e})")))?;
    Ok(parsed)
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), crate::redact::redact(&self.message))
    }
}

impl std::error::Error for ApiError {}

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        self.to_response::<axum::body::Body>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_never_carries_a_key() {
        let key = "kt_live_AbCdEfGhIjKlMnOpQrStUvWxYz01234567abcdef";
        let err = ApiError::new(ErrorCode::InvalidKey, format!("bad key {key}"));
        let body = String::from_utf8(err.body_bytes().to_vec()).unwrap();
        assert!(!body.contains(key), "{body}");
        assert!(body.contains("\"code\":\"invalid_key\""), "{body}");
    }

    /// A store busy with retention, an erasure or a restore is worth trying
    /// again soon: 503 `service_unavailable` with `Retry-After` and the
    /// store's message, not 409 `conflict` (whose generic description,
    /// "the resource already exists", said something else altogether).
    #[test]
    fn a_busy_audit_directory_is_unavailable_with_retry_after_not_a_conflict() {
        let why = "the audit trail in /srv/audit is being changed by retention (process 7, since 2026-12-07T06:00:00.000Z) (waited 5.0 s); try again when that has finished";
        let response: Response<Bytes> = ApiError::from(crate::store::StoreError::Busy(why.into())).to_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let wait: u64 = response.headers().get(header::RETRY_AFTER).expect("a Retry-After header").to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&wait), "Retry-After: {wait}");
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(body["error"]["code"], "service_unavailable", "{body}");
        assert_eq!(body["error"]["message"], why, "{body}");
        // A conflict's generic description fits every conflict.
        let conflict = ErrorCode::Conflict.default_message();
        assert!(!conflict.contains("already exists"), "{conflict}");
    }
}
