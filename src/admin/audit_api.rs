//! The audit read API: list, security events, and streamed CSV/JSON exports.
//!
//! Query parameters are parsed here into a [`EventFilter`]; a bad one is a
//! 400 `invalid_parameter` naming it. Reads run on blocking threads with their
//! own read-only connection, so a long export never stalls the runtime or the
//! writer.

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{activity, app_events, AdminState};
use crate::audit::views;
use crate::control::Actor;
use crate::error::ApiError;
use crate::event::{now_ms, security_type, Category, SYSTEM_TENANT};
use axum::Extension;
use crate::store::audit::{salts, AuditReader, EventFilter, StoredEvent};

pub fn routes() -> Router<AdminState> {
    Router::new()
        .route("/v1/audit/{tenant}", get(list_logs))
        .route("/v1/audit/{tenant}/security", get(list_security))
        .route("/v1/audit/{tenant}/export/csv", get(export_csv))
        .route("/v1/audit/{tenant}/export/json", get(export_json))
        .route("/v1/audit/{tenant}/admin", get(list_admin_log))
        .route("/v1/audit/{tenant}/verify", get(verify_tenant))
        .route(
            "/v1/audit/{tenant}/events",
            get(list_app_events).post(app_events::submit).layer(DefaultBodyLimit::max(app_events::MAX_BODY)),
        )
}

/// The parameters the audit reads take: always recorded in a read's
/// `log_accessed`, whatever else its query string holds.
pub(super) const READ_PARAMETERS: [&str; 24] = [
    "limit", "cursor", "request_id", "consumer_id", "api_id", "event_type", "method", "path", "status_min", "status_max", "hours", "days",
    "from", "to", "category", "admin_id", "action", "actor_id", "resource_type", "resource_id", "group_by", "top", "metrics", "source",
];
/// Refuses a parameter some audit read takes ([`READ_PARAMETERS`]) given
/// more than once: each takes one value, and which of two a read should
/// use is a guess (the lists took the last, other filters the first).
/// Parameters no read takes are ignored however often they come.
pub(super) fn refuse_repeated(params: &[(String, String)]) -> Result<(), ApiError> {
    let mut seen = [false; READ_PARAMETERS.len()];
    for (name, _) in params {
        if let Some(at) = READ_PARAMETERS.iter().position(|p| p == name) {
            if std::mem::replace(&mut seen[at], true) {
                return Err(ApiError::invalid_parameter(name, "given more than once; give each filter once"));
            }
        }
    }
    Ok(())
}

/// [`record_access`] for a read answered with its body: a `HEAD`, whose
/// body nobody receives, is answered as the `GET` (status and headers) and
/// not recorded, as no row went out.
pub(super) fn record_read(
    audit: &crate::audit::AuditPipeline,
    method: &Method,
    actor: &Actor,
    tenant: &str,
    endpoint: &str,
    params: &[(String, String)],
    rows: usize,
) {
    if method != Method::HEAD {
        record_access(audit, actor, tenant, endpoint, params, rows);
    }
}

/// At most this many parameters go into a read's record (the filters it
/// reads first), each name and value cut to [`RECORDED_CHARS`]; the number
/// left out is recorded as `_omitted`. A query string can hold hundreds of
/// kilobytes, which every read would otherwise write into the trail.
const RECORDED_PARAMETERS: usize = 32;
const RECORDED_CHARS: usize = 256;

fn cut(text: &str) -> String {
    match text.char_indices().nth(RECORDED_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// Records that `actor` read `tenant`'s log: the endpoint, the filters
/// given (the value of one named like a secret as `****`) and how many
/// rows went out (`log_accessed`).
pub(super) fn record_access(audit: &crate::audit::AuditPipeline, actor: &Actor, tenant: &str, endpoint: &str, params: &[(String, String)], rows: usize) {
    let (read, other): (Vec<_>, Vec<_>) = params.iter().partition(|(k, _)| READ_PARAMETERS.contains(&k.as_str()));
    let mut filters = serde_json::Map::new();
    let mut omitted = 0;
    for (name, value) in read.into_iter().chain(other) {
        if filters.len() < RECORDED_PARAMETERS || filters.contains_key(name.as_str()) {
            // A parameter named like a secret (`access_token`, `password`)
            // is kept by name only, as the admin log keeps such body fields.
            let value = if crate::redact::is_secret_field(name) { "****".to_string() } else { cut(value) };
            filters.insert(cut(name), json!(value));
        } else {
            omitted += 1;
        }
    }
    if omitted > 0 {
        filters.insert("_omitted".into(), json!(omitted));
    }
    let mut event = actor.event(tenant, security_type::LOG_ACCESSED, endpoint.to_string());
    event.details = Some(json!({"filters": filters, "rows": rows}));
    audit.record(event);
}

const DEFAULT_LIMIT: u64 = 100;
const MAX_LIMIT: u64 = 10_000;
const HOUR_MS: i64 = 3_600_000;

/// A parsed query: the filter plus the page size.
pub(super) struct AuditQuery {
    pub(super) filter: EventFilter,
    limit: Option<u64>,
}

fn parse_int<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, ApiError> {
    value.trim().parse().map_err(|_| ApiError::invalid_parameter(name, format!("`{value}` is not a whole number")))
}

fn parse_time(name: &str, value: &str) -> Result<chrono::DateTime<chrono::FixedOffset>, ApiError> {
    chrono::DateTime::parse_from_rfc3339(value.trim())
        .map_err(|_| ApiError::invalid_parameter(name, format!("`{value}` is not an RFC 3339 time such as 2026-11-22T15:00:00Z")))
}

/// The millisecond of the first event at or after `time`: events are kept
/// to the millisecond, so a `from` inside one leaves that one out (a `to`
/// inside one keeps it: `timestamp_millis` rounds down).
fn first_millisecond_from(time: &chrono::DateTime<chrono::FixedOffset>) -> i64 {
    time.timestamp_millis() + i64::from(!time.timestamp_subsec_nanos().is_multiple_of(1_000_000))
}

fn check_token(name: &str, value: &str) -> Result<String, ApiError> {
    if value.is_empty() || value.len() > 256 || value.chars().any(char::is_control) {
        return Err(ApiError::invalid_parameter(name, "must be 1-256 printable characters"));
    }
    Ok(value.to_string())
}

/// Cursors are `<timestamp_ms>.<seq>` of the last event of the previous page.
fn parse_cursor(value: &str) -> Result<(i64, u64), ApiError> {
    let bad = || ApiError::invalid_parameter("cursor", "not a cursor this server issued");
    let (ts, seq) = value.split_once('.').ok_or_else(bad)?;
    Ok((ts.parse().map_err(|_| bad())?, seq.parse().map_err(|_| bad())?))
}

fn cursor_of(stored: &StoredEvent) -> String {
    format!("{}.{}", stored.event.timestamp_ms, stored.event.seq)
}

/// Parses the shared filter parameters. `paged` endpoints get a default
/// limit; exports return everything unless a limit is given. Every audit
/// read but verification parses its query here first, so a parameter given
/// twice is refused here for all of them, their own parameters included.
pub(super) fn parse_query(tenant: &str, category: Category, params: &[(String, String)], paged: bool) -> Result<AuditQuery, ApiError> {
    refuse_repeated(params)?;
    let mut filter = EventFilter { tenant_id: tenant.to_string(), category: Some(category), ..EventFilter::default() };
    let mut limit = paged.then_some(DEFAULT_LIMIT);
    let (mut hours, mut days) = (None::<i64>, None::<i64>);
    // `from` and `to` as given, to the nanosecond.
    let mut given = (None, None);
    for (name, value) in params {
        match name.as_str() {
            "limit" => {
                let n: i64 = parse_int(name, value)?;
                if !(1..=MAX_LIMIT as i64).contains(&n) {
                    return Err(ApiError::invalid_parameter(name, format!("must be between 1 and {MAX_LIMIT}")));
                }
                limit = Some(n as u64);
            }
            "cursor" => filter.before = Some(parse_cursor(value)?),
            "request_id" => filter.request_id = Some(check_token(name, value)?.to_ascii_lowercase()),
            "consumer_id" => filter.consumer_id = Some(check_token(name, value)?),
            "api_id" => filter.api_id = Some(check_token(name, value)?),
            "event_type" => filter.event_type = Some(check_token(name, value)?),
            "method" => {
                // Any method a call can have (an HTTP token: M-SEARCH,
                // VERSION-CONTROL), in capitals as the standard ones are kept.
                let method = value.trim().to_ascii_uppercase();
                let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
                if method.is_empty() || method.len() > 256 || !method.bytes().all(token) {
                    return Err(ApiError::invalid_parameter(name, "must be an HTTP method such as GET"));
                }
                filter.method = Some(method);
            }
            "path" => {
                if !value.starts_with('/') {
                    return Err(ApiError::invalid_parameter(name, "must start with `/` (it matches paths by prefix)"));
                }
                filter.path_prefix = Some(check_token(name, value)?);
            }
            "status_min" | "status_max" => {
                let status: i64 = parse_int(name, value)?;
                // The statuses an upstream may answer and the gateway passes on.
                if !(100..=999).contains(&status) {
                    return Err(ApiError::invalid_parameter(name, "must be an HTTP status between 100 and 999"));
                }
                if name == "status_min" {
                    filter.status_min = Some(status as u16);
                } else {
                    filter.status_max = Some(status as u16);
                }
            }
            "hours" | "days" => {
                let n: i64 = parse_int(name, value)?;
                let max = if name == "hours" { 24 * 3660 } else { 3660 };
                if !(1..=max).contains(&n) {
                    return Err(ApiError::invalid_parameter(name, format!("must be between 1 and {max}")));
                }
                if name == "hours" {
                    hours = Some(n);
                } else {
                    days = Some(n);
                }
            }
            "from" => {
                let time = parse_time(name, value)?;
                filter.from_ms = Some(first_millisecond_from(&time));
                given.0 = Some(time);
            }
            "to" => {
                let time = parse_time(name, value)?;
                filter.to_ms = Some(time.timestamp_millis());
                given.1 = Some(time);
            }
            // Unknown parameters are ignored so that scripts written for
            // other audit APIs keep working.
            _ => {}
        }
    }
    if let (Some(min), Some(max)) = (filter.status_min, filter.status_max) {
        if min > max {
            return Err(ApiError::invalid_parameter("status_min", "must not be greater than status_max"));
        }
    }
    let window = match (hours, days) {
        (Some(_), Some(_)) => return Err(ApiError::invalid_parameter("days", "give either `hours` or `days`, not both")),
        (Some(h), None) => Some(h * HOUR_MS),
        (None, Some(d)) => Some(d * 24 * HOUR_MS),
        (None, None) => None,
    };
    if let Some(window) = window {
        if filter.from_ms.is_some() {
            return Err(ApiError::invalid_parameter("from", "give either `from` or `hours`/`days`, not both"));
        }
        let from = now_ms() - window;
        if filter.to_ms.is_some_and(|to| from > to) {
            let name = if hours.is_some() { "hours" } else { "days" };
            return Err(ApiError::invalid_parameter(name, "counts back from now, so its window starts after `to`; give `from` and `to` for a window in the past"));
        }
        filter.from_ms = Some(from);
    }
    if let (Some(from), Some(to)) = (given.0, given.1) {
        if from > to {
            return Err(ApiError::invalid_parameter("from", "must not be after `to`"));
        }
    }
    Ok(AuditQuery { filter, limit })
}

/// 404 unless the tenant exists (or is the system tenant).
pub(super) fn require_audit_tenant(state: &AdminState, tenant: &str) -> Result<(), ApiError> {
    if tenant == SYSTEM_TENANT {
        return Ok(());
    }
    state.control.require_tenant(tenant)
}

/// The most a page's rows may hold, roughly as JSON: a page ends early, with
/// a `next_cursor`, once it holds this much. (Application events carry up
/// to 32 KiB each, admin log intents their change's body: 10,000 of them
/// were gigabytes in memory for one answer.)
pub(super) const PAGE_BYTES: usize = 8 << 20;

/// Roughly what an event takes in a page, as JSON: its free texts and
/// details, and a fixed share for the rest.
fn page_bytes(stored: &StoredEvent) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let e = &stored.event;
    let mut count = Count(512);
    if let Some(details) = &e.details {
        let _ = serde_json::to_writer(&mut count, details);
    }
    let texts = [&e.path, &e.user_agent, &e.error_message, &e.target];
    count.0 + texts.iter().map(|t| t.as_deref().map_or(0, str::len)).sum::<usize>() + e.actor.as_deref().map_or(0, str::len)
}

/// Reads one page (newest first) on a blocking thread: `limit` events, or
/// fewer once they hold [`PAGE_BYTES`]; the cursor when more match.
async fn read_page(state: &AdminState, query: AuditQuery) -> Result<(Vec<StoredEvent>, Option<String>), ApiError> {
    let path = state.audit.dir().to_path_buf();
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    tokio::task::spawn_blocking(move || {
        let reader = AuditReader::open(&path).map_err(ApiError::internal)?;
        let mut rows = Vec::with_capacity(limit.min(1024) as usize);
        let (mut bytes, mut more) = (0usize, false);
        // Pages leave out the per-event hashes: recomputing them means
        // rehashing whole blocks. Exports and verification carry them.
        reader
            .scan(&query.filter, Some(limit + 1), false, |e| {
                if rows.len() as u64 == limit || bytes >= PAGE_BYTES {
                    more = true;
                    return false;
                }
                bytes += page_bytes(e);
                rows.push(e.clone());
                true
            })
            .map_err(ApiError::internal)?;
        let next = if more { rows.last().map(cursor_of) } else { None };
        Ok((rows, next))
    })
    .await
    .map_err(ApiError::internal)?
}

/// One page of one category as `{"<field>": [...], "next_cursor": …}`.
/// What a page reads: the tenant, its parameters and who asks.
struct PageRequest<'a> {
    state: &'a AdminState,
    method: &'a Method,
    tenant: &'a str,
    params: &'a [(String, String)],
    actor: &'a Actor,
    endpoint: &'a str,
}

impl PageRequest<'_> {
    fn query(&self, category: Category) -> Result<AuditQuery, ApiError> {
        require_audit_tenant(self.state, self.tenant)?;
        parse_query(self.tenant, category, self.params, true)
    }

    /// Reads one page, records the access, and shapes the answer.
    async fn answer(&self, query: AuditQuery, field: &str, view: impl Fn(&StoredEvent) -> Value) -> Result<Json<Value>, ApiError> {
        let (rows, next) = read_page(self.state, query).await?;
        record_read(&self.state.audit, self.method, self.actor, self.tenant, self.endpoint, self.params, rows.len());
        let entries: Vec<Value> = rows.iter().map(view).collect();
        Ok(Json(json!({ field: entries, "next_cursor": next })))
    }
}

async fn list_logs(
    State(state): State<AdminState>,
    method: Method,
    Path(tenant): Path<String>,
    Extension(actor): Extension<Actor>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let page = PageRequest { state: &state, method: &method, tenant: &tenant, params: &params, actor: &actor, endpoint: "logs" };
    page.answer(page.query(Category::Request)?, "logs", views::log_entry).await
}

async fn list_security(
    State(state): State<AdminState>,
    method: Method,
    Path(tenant): Path<String>,
    Extension(actor): Extension<Actor>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let page = PageRequest { state: &state, method: &method, tenant: &tenant, params: &params, actor: &actor, endpoint: "security" };
    page.answer(page.query(Category::Security)?, "events", views::security_entry).await
}

async fn list_app_events(
    State(state): State<AdminState>,
    method: Method,
    Path(tenant): Path<String>,
    Extension(actor): Extension<Actor>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let page = PageRequest { state: &state, method: &method, tenant: &tenant, params: &params, actor: &actor, endpoint: "events" };
    let mut query = page.query(Category::App)?;
    app_events::app_filters(&mut query.filter, &params)?;
    page.answer(query, "events", app_events::app_entry).await
}

/// Verifications of a chain running at once. Each walks and rehashes the
/// whole chain (from `from`) on a blocking thread; a call beyond these is
/// refused at once (503 with `Retry-After`) rather than queued, so many concurrent
/// calls cannot pin the CPU and the store.
pub(super) const VERIFICATIONS_AT_ONCE: usize = 2;
/// The `Retry-After` of a verification refused because others are running.
const VERIFY_RETRY_AFTER_SECS: u64 = 2;

/// How long a verification waits for retention, an erasure or a restore
/// to let the audit directory go (it holds the directory's maintenance
/// lock shared, as `keytrail verify` does, so it never reads a day file or
/// an archive halfway through being changed).
const VERIFY_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// `GET /v1/audit/{tenant}/verify`: the tenant's chain and signed
/// checkpoints, checked now (200 either way; `ok` says the verdict); 503
/// `service_unavailable` with `Retry-After` while [`VERIFICATIONS_AT_ONCE`]
/// others run, or while retention, an erasure or a restore still holds the
/// audit directory after [`VERIFY_LOCK_WAIT`].
async fn verify_tenant(
    State(state): State<AdminState>,
    method: Method,
    Path(tenant): Path<String>,
    Extension(actor): Extension<Actor>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    require_audit_tenant(&state, &tenant)?;
    refuse_repeated(&params)?;
    let mut from_ms = None;
    for (name, value) in &params {
        match name.as_str() {
            "from" => from_ms = Some(crate::event::parse_time_or_day(value).map_err(|e| ApiError::invalid_parameter("from", e))?),
            other => return Err(ApiError::invalid_parameter(other, "unknown parameter; `from` is the only one")),
        }
    }
    let key = state.public_key.ok_or_else(|| ApiError::internal("no signing key"))?;
    if method == Method::HEAD {
        // The walk's verdict is the body: `HEAD` walks nothing (see `headers_only`).
        return Ok(headers_only("application/json", None));
    }
    let Ok(turn) = state.verifications.clone().try_acquire_owned() else {
        let message = format!(
            "{VERIFICATIONS_AT_ONCE} verifications of the audit trail are running, the most at once: try again after the time in `Retry-After`"
        );
        return Err(ApiError::unavailable_for_now(message, VERIFY_RETRY_AFTER_SECS));
    };
    let dir = state.audit.dir().to_path_buf();
    let name = tenant.clone();
    let report = tokio::task::spawn_blocking(move || {
        // Held until the walk ends, even when the caller has gone away.
        let _turn = turn;
        use crate::store::audit::erasure;
        let Some(_reading) = erasure::read_lock(&dir, VERIFY_LOCK_WAIT)? else {
            return Err(crate::store::StoreError::Busy(format!(
                "nothing was checked: the audit trail is being changed by {} (waited {} s); try again after the time in `Retry-After`",
                erasure::maintenance_holder(&dir),
                VERIFY_LOCK_WAIT.as_secs()
            )));
        };
        crate::store::audit::integrity::verify_tenant(&dir, &name, &key, from_ms)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|error| match error {
        // 503 with `Retry-After`.
        busy @ crate::store::StoreError::Busy(_) => ApiError::from(busy),
        other => ApiError::internal(other),
    })?;
    record_access(&state.audit, &actor, &tenant, "verify", &params, report.events as usize);
    let mut body = json!(report);
    body["public_key"] = json!(crate::signing::public_key_text(&key));
    Ok(Json(body).into_response())
}

/// `GET /v1/audit/{tenant}/admin` (and `/v1/audit/_system/admin` for global
/// changes): each change's intent joined with its outcome, newest first;
/// filters `admin_id`, `action` and the shared ones.
async fn list_admin_log(
    State(state): State<AdminState>,
    method: Method,
    Path(tenant): Path<String>,
    Extension(actor): Extension<Actor>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let page = PageRequest { state: &state, method: &method, tenant: &tenant, params: &params, actor: &actor, endpoint: "admin" };
    let mut query = page.query(Category::Admin)?;
    for (name, value) in &params {
        match name.as_str() {
            "admin_id" => query.filter.actor = Some(format!("admin:{}", check_token(name, value)?)),
            "action" => query.filter.event_type = Some(check_token(name, value)?.to_ascii_uppercase()),
            _ => {}
        }
    }
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT) as usize;
    let dir = state.audit.dir().to_path_buf();
    let in_flight = state.in_flight.clone();
    let (entries, next) = tokio::task::spawn_blocking(move || -> Result<(Vec<Value>, Option<String>), ApiError> {
        let reader = AuditReader::open(&dir).map_err(ApiError::internal)?;
        let page = admin_page(&reader, &query.filter, limit, &in_flight).map_err(ApiError::internal)?;
        Ok((page.entries, page.next))
    })
    .await
    .map_err(ApiError::internal)??;
    record_read(&state.audit, &method, &actor, &tenant, "admin", &params, entries.len());
    Ok(Json(json!({"entries": entries, "next_cursor": next})))
}

/// One page of the admin log, and how many events the look-up of its
/// intents' outcomes read.
struct AdminPage {
    entries: Vec<Value>,
    next: Option<String>,
    /// Read by the tests, which bound it.
    #[cfg_attr(not(test), allow(dead_code))]
    outcome_rows: usize,
}

fn admin_page(reader: &AuditReader, filter: &EventFilter, limit: usize, in_flight: &activity::InFlight) -> Result<AdminPage, crate::store::StoreError> {
    // Newest first, an outcome comes before its intent; keep them until then.
    let mut outcomes = std::collections::HashMap::new();
    let mut rows: Vec<StoredEvent> = Vec::new();
    let (mut bytes, mut more) = (0usize, false);
    reader.scan(filter, None, false, |row| {
        if activity::is_outcome(&row.event) {
            if let Some(id) = row.event.request_id.clone() {
                outcomes.insert(id, row.event.clone());
            }
        } else if rows.len() == limit || bytes >= PAGE_BYTES {
            // Changes are logged with their bodies: a page ends
            // early, as the other pages do, once it is this big.
            more = true;
            return false;
        } else {
            bytes += page_bytes(row);
            rows.push(row.clone());
        }
        true
    })?;
    // Intents whose outcome is newer than this page's start (a later page,
    // or a `to` filter): look for it from the oldest such intent on, up to
    // `OUTCOME_WITHIN_MS` after the newest (not to now: an intent whose
    // process died has no outcome, and every page holding it would read
    // the whole log since).
    let waiting: Vec<i64> = rows
        .iter()
        .filter(|r| r.event.outcome == activity::PENDING && !r.event.request_id.as_ref().is_some_and(|id| outcomes.contains_key(id)))
        .map(|r| r.event.timestamp_ms)
        .collect();
    let mut outcome_rows = 0;
    if let (Some(oldest), Some(newest)) = (waiting.iter().min(), waiting.iter().max()) {
        let later = EventFilter {
            tenant_id: filter.tenant_id.clone(),
            category: Some(Category::Admin),
            from_ms: Some(*oldest),
            to_ms: Some(newest.saturating_add(activity::OUTCOME_WITHIN_MS)),
            ..EventFilter::default()
        };
        reader.scan(&later, None, false, |row| {
            outcome_rows += 1;
            if activity::is_outcome(&row.event) {
                if let Some(id) = row.event.request_id.clone() {
                    outcomes.entry(id).or_insert_with(|| row.event.clone());
                }
            }
            true
        })?;
    }
    let next = if more { rows.last().map(cursor_of) } else { None };
    let entries = rows
        .iter()
        .map(|row| {
            // The same answer on every page: an outcome later than the
            // bound is never looked for, so one is never joined.
            let outcome = row.event.request_id.as_ref().and_then(|id| outcomes.get(id));
            let outcome = outcome.filter(|done| done.timestamp_ms <= row.event.timestamp_ms.saturating_add(activity::OUTCOME_WITHIN_MS));
            activity::entry_view(row, outcome, in_flight)
        })
        .collect();
    Ok(AdminPage { entries, next, outcome_rows })
}

/// Bytes gathered before a chunk is handed to the connection.
const CHUNK_BYTES: usize = 64 * 1024;
/// Exports streamed at once; more wait their turn. An export holds one of
/// the runtime's blocking threads until its client has read it, so a few
/// hundred clients that stop reading would otherwise take every one of them
/// from the reads, sign-ins and automatic blocks that need one too.
pub(super) const EXPORTS_AT_ONCE: usize = 8;

/// Streams an export: a blocking thread scans the store row by row and sends
/// chunks through a small channel, so memory stays flat for any size and a
/// client that goes away stops the scan.
/// The frame of an export: its content type, what comes before the first
/// row and after the last.
struct Frame {
    content_type: &'static str,
    head: String,
    /// Written after the last row (it may depend on the rows).
    tail: Box<dyn FnOnce() -> String + Send>,
}

async fn stream_export(
    state: &AdminState,
    query: AuditQuery,
    hashes: bool,
    Frame { content_type, head, tail }: Frame,
    mut write_row: impl FnMut(&StoredEvent, bool, &mut String) + Send + 'static,
    done: impl FnOnce(usize) + Send + 'static,
) -> Response {
    let path = state.audit.dir().to_path_buf();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    // Never closed: acquiring cannot fail.
    let turn = state.exports.clone().acquire_owned().await.ok();
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        let mut buf = head;
        let mut first = true;
        let mut rows = 0usize;
        let mut client_gone = false;
        let result = AuditReader::open(&path).and_then(|reader| {
            reader.scan(&query.filter, query.limit, hashes, |row| {
                write_row(row, first, &mut buf);
                first = false;
                rows += 1;
                if buf.len() >= CHUNK_BYTES {
                    let chunk = Bytes::from(std::mem::take(&mut buf));
                    if tx.blocking_send(Ok(chunk)).is_err() {
                        client_gone = true;
                        return false;
                    }
                }
                true
            })
        });
        match result {
            Ok(()) if !client_gone => {
                buf.push_str(&tail());
                let _ = tx.blocking_send(Ok(Bytes::from(buf)));
            }
            Ok(()) => {}
            Err(error) => {
                tracing::error!(%error, "export failed part way; the response is cut short");
                let _ = tx.blocking_send(Err(std::io::Error::other("export failed")));
            }
        }
        done(rows);
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let mut response = Body::from_stream(stream).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn export_filename(tenant: &str, ext: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("attachment; filename=\"keytrail-{tenant}-audit.{ext}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// The answer to `HEAD` on an export: the headers its `GET` gets, once
/// the tenant and the parameters are checked, without running the export
/// (axum answers `HEAD` with the `GET` handler and drops the body, so the
/// export would read the trail, hold one of [`EXPORTS_AT_ONCE`] turns and
/// record a `log_accessed` for rows nobody received). Nothing is read, so
/// nothing is recorded.
fn headers_only(content_type: &'static str, disposition: Option<HeaderValue>) -> Response {
    // A body of unknown length, as the streamed `GET`'s: no `Content-Length: 0`.
    let mut response = Body::from_stream(futures_util::stream::empty::<Result<Bytes, std::io::Error>>()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(disposition) = disposition {
        response.headers_mut().insert(header::CONTENT_DISPOSITION, disposition);
    }
    response
}

/// Records the export's `log_accessed` once its rows are counted.
fn export_access(state: &AdminState, actor: Actor, tenant: &str, endpoint: &'static str, params: Vec<(String, String)>) -> impl FnOnce(usize) + Send + 'static {
    let (audit, tenant) = (state.audit.clone(), tenant.to_string());
    move |rows| record_access(&audit, &actor, &tenant, endpoint, &params, rows)
}

async fn export_csv(
    State(state): State<AdminState>,
    method: Method,
    Path(tenant): Path<String>,
    Extension(actor): Extension<Actor>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    require_audit_tenant(&state, &tenant)?;
    let mut query = parse_query(&tenant, Category::Request, &params, false)?;
    export_category(&mut query, &params)?;
    if method == Method::HEAD {
        return Ok(headers_only("text/csv; charset=utf-8", Some(export_filename(&tenant, "csv"))));
    }
    let head = format!("{}\r\n", views::CSV_COLUMNS.join(","));
    let done = export_access(&state, actor, &tenant, "export/csv", params);
    let mut response =
        stream_export(&state, query, false, Frame { content_type: "text/csv; charset=utf-8", head, tail: Box::new(String::new) }, |row, _, buf| views::csv_line(row, buf), done).await;
    response.headers_mut().insert(header::CONTENT_DISPOSITION, export_filename(&tenant, "csv"));
    Ok(response)
}

/// An export's `category` parameter: `request` (the default, the shape
/// STOA-era scripts read), `security`, `admin`, `app`, or `all` — the whole
/// chain, which is what makes a range verifiable as complete.
fn export_category(query: &mut AuditQuery, params: &[(String, String)]) -> Result<(), ApiError> {
    if let Some((_, value)) = params.iter().find(|(name, _)| name == "category") {
        query.filter.category = match value.as_str() {
            "all" => None,
            other => Some(Category::parse(other).ok_or_else(|| {
                ApiError::invalid_parameter("category", "must be `request`, `security`, `admin`, `app` or `all`")
            })?),
        };
    }
    Ok(())
}

async fn export_json(
    State(state): State<AdminState>,
    method: Method,
    Path(tenant): Path<String>,
    Extension(actor): Extension<Actor>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    require_audit_tenant(&state, &tenant)?;
    let mut query = parse_query(&tenant, Category::Request, &params, false)?;
    export_category(&mut query, &params)?;
    if method == Method::HEAD {
        return Ok(headers_only("application/json", Some(export_filename(&tenant, "json"))));
    }
    let head = format!(
        "{{\"tenant_id\":{},\"exported_at\":{},\"logs\":[",
        json!(tenant),
        json!(crate::event::format_timestamp(now_ms()))
    );
    let done = export_access(&state, actor, &tenant, "export/json", params);
    // Each row carries the whole event with its chain hashes before and
    // after, and the export ends with the signed checkpoints in its range:
    // what `keytrail verify --file` needs, offline, with the public key.
    // The range of `seq`, and the (day, consumer) whose personal salts the rows need.
    type Seen = (u64, u64, std::collections::BTreeSet<(i64, String)>);
    let range = std::sync::Arc::new(std::sync::Mutex::new((u64::MAX, 0u64, Default::default()) as Seen));
    let seen = range.clone();
    let write = move |row: &StoredEvent, first: bool, buf: &mut String| {
        if !first {
            buf.push(',');
        }
        let mut entry = views::log_entry(row);
        entry["prev_hash"] = json!(row.prev_hash.map(|h| crate::event::to_hex(&h)));
        entry["event"] = json!(row.event);
        buf.push_str(&entry.to_string());
        let mut r = seen.lock().unwrap_or_else(|e| e.into_inner());
        r.0 = r.0.min(row.event.seq);
        r.1 = r.1.max(row.event.seq);
        if row.event.personal_commitment.is_none() && row.event.has_personal() {
            let consumer = salts::consumer_key(row.event.salt_owner());
            r.2.insert((crate::store::audit::day_of(row.event.timestamp_ms), consumer.to_string()));
        }
    };
    let (dir, key, name) = (state.audit.dir().to_path_buf(), state.public_key, tenant.clone());
    let tail = Box::new(move || {
        let (first, last, consumers) = std::mem::take(&mut *range.lock().unwrap_or_else(|e| e.into_inner()));
        let checkpoints: Vec<_> = crate::store::audit::integrity::checkpoints(&dir, &name)
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.seq >= first && c.seq <= last)
            .collect();
        let salts = AuditReader::open(&dir).and_then(|reader| {
            let mut out = salts::DaySalts::new();
            for (day, consumer) in &consumers {
                if let Some(salt) = reader.salt(*day, &name, consumer)? {
                    salts::add_hex(&mut out, *day, consumer, &salt);
                }
            }
            Ok(out)
        });
        let salts = salts.unwrap_or_else(|error| {
            tracing::error!(%error, "could not read the personal salts for an export; it will not verify offline");
            Default::default()
        });
        let verification = json!({
            "public_key": key.map(|k| crate::signing::public_key_text(&k)),
            "checkpoints": checkpoints,
            "personal_salts": salts,
        });
        format!("],\"verification\":{verification}}}")
    });
    let mut response = stream_export(&state, query, true, Frame { content_type: "application/json", head, tail }, write, done).await;
    response.headers_mut().insert(header::CONTENT_DISPOSITION, export_filename(&tenant, "json"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An admin event as `activity::around` writes it: an intent (outcome
    /// `pending`, the request body) or an outcome (`completes`).
    fn admin_event(request_id: &str, at: i64, outcome: Option<&str>) -> crate::event::Event {
        let actor = Actor { admin_id: "root".into(), credential: "token".into(), request_id: Some(request_id.into()), ..Actor::default() };
        let mut event = match outcome {
            None => actor.admin_event("acme", "TIER_CREATED", activity::PENDING, "tier:t".into(), json!({"request": {"id": "t"}})),
            Some(outcome) => actor.admin_event("acme", "TIER_CREATED", outcome, "tier:t".into(), json!({"completes": "TIER_CREATED", "status": 201})),
        };
        event.timestamp_ms = at;
        event
    }

    /// An intent whose outcome never came (the process died in between)
    /// made every page holding it read the tenant's admin events from it
    /// up to now, looking for the outcome: a page of an old crash read the
    /// whole log since. The look-up now stops at `OUTCOME_WITHIN` after the
    /// page's newest waiting intent, and the entry reads `unknown`.
    #[test]
    fn an_intent_without_outcome_does_not_make_its_page_read_to_now() {
        let dir = tempfile::tempdir().unwrap();
        let now = now_ms();
        let crashed = now - 20 * 24 * HOUR_MS;
        let mut events = vec![admin_event("crashed", crashed, None)];
        // 2,000 completed changes over the 20 days since.
        let n = 2000;
        for i in 0..n {
            let at = crashed + 1000 + i * (20 * 24 * HOUR_MS - 2000) / n;
            let id = format!("change-{i}");
            events.push(admin_event(&id, at, None));
            events.push(admin_event(&id, at + 5, Some("success")));
        }
        let mut store = crate::store::audit::AuditWriterStore::open(dir.path()).unwrap();
        store.insert_batch(&mut events).unwrap();
        drop(store);
        let reader = AuditReader::open(dir.path()).unwrap();
        let in_flight = activity::InFlight::default();
        // The page that holds the crashed change (a `to` at its time).
        let filter = EventFilter { tenant_id: "acme".into(), category: Some(Category::Admin), to_ms: Some(crashed), ..EventFilter::default() };
        let page = admin_page(&reader, &filter, 10, &in_flight).unwrap();
        assert_eq!(page.entries.len(), 1);
        assert_eq!(page.entries[0]["outcome"], "unknown");
        assert_eq!(page.entries[0]["request_id"], "crashed");
        // A day's worth of the later changes at most, not all 4,000 events.
        assert!(page.outcome_rows <= 2 * 2 * (n as usize) / 20 + 4, "read {} events looking for the outcome", page.outcome_rows);
        // A change completed after the page's end is still joined.
        let filter = EventFilter { to_ms: Some(crashed + 1000 + 3 * (20 * 24 * HOUR_MS - 2000) / n), ..filter };
        let page = admin_page(&reader, &filter, 10, &in_flight).unwrap();
        let outcomes: Vec<&str> = page.entries.iter().map(|e| e["outcome"].as_str().unwrap()).collect();
        assert_eq!(outcomes, ["success", "success", "success", "success", "unknown"], "{:?}", page.entries);
    }

    fn q(pairs: &[(&str, &str)]) -> Result<AuditQuery, ApiError> {
        let params: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        parse_query("acme", Category::Request, &params, true)
    }

    fn bad(pairs: &[(&str, &str)], param: &str) {
        let err = q(pairs).err().expect("should be refused");
        assert_eq!(err.code.as_str(), "invalid_parameter");
        assert!(err.message.contains(&format!("`{param}`")), "{}", err.message);
    }

    #[test]
    fn bad_parameters_are_named() {
        bad(&[("status_min", "abc")], "status_min");
        bad(&[("from", "yesterday")], "from");
        bad(&[("limit", "-1")], "limit");
        bad(&[("limit", "0")], "limit");
        bad(&[("limit", "10001")], "limit");
        bad(&[("status_max", "1000")], "status_max");
        bad(&[("status_min", "99")], "status_min");
        bad(&[("status_min", "500"), ("status_max", "400")], "status_min");
        bad(&[("hours", "1"), ("days", "1")], "days");
        bad(&[("hours", "x")], "hours");
        bad(&[("cursor", "nope")], "cursor");
        bad(&[("path", "docs")], "path");
        bad(&[("method", "G E T")], "method");
        bad(&[("from", "2026-01-02T00:00:00Z"), ("to", "2026-01-01T00:00:00Z")], "from");
        bad(&[("consumer_id", "a"), ("limit", "5"), ("consumer_id", "b")], "consumer_id");
        bad(&[("group_by", "path"), ("group_by", "path")], "group_by");
        assert!(q(&[("junk", "1"), ("junk", "2")]).is_ok(), "a parameter no read takes is ignored");
    }

    #[test]
    fn good_parameters_fill_the_filter() {
        let query = q(&[
            ("limit", "5"),
            ("consumer_id", "cons_1"),
            ("method", "get"),
            ("status_min", "400"),
            ("from", "2026-11-22T10:00:00Z"),
            ("to", "2026-11-22T11:00:00+01:00"),
            ("unknown", "ignored"),
        ])
        .unwrap();
        assert_eq!(query.limit, Some(5));
        assert_eq!(query.filter.method.as_deref(), Some("GET"));
        assert_eq!(query.filter.status_min, Some(400));
        assert_eq!(query.filter.from_ms, Some(1_795_341_600_000));
        assert_eq!(query.filter.to_ms, Some(1_795_341_600_000));
        assert_eq!(q(&[]).unwrap().limit, Some(DEFAULT_LIMIT));
    }
}
