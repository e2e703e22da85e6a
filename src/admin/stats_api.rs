//! Aggregates of the audit trail, computed on the server: what scripts did
//! by pulling thousands of log entries into jq.
//!
//! - `GET /v1/audit/{tenant}/stats` — totals, status classes, `429`s, the
//!   error rate, latency quantiles, distinct consumers and client addresses
//!   for any filter the list accepts, optionally grouped by one dimension;
//! - `GET /v1/audit/{tenant}/stats/consumers/{consumer}` — one consumer's
//!   profile over a window (14 days by default); 404 `consumer_not_found`
//!   for one the tenant does not have and no event of the window names (a
//!   consumer the control store no longer has keeps its profile while its
//!   events are in the window);
//! - `GET /v1/audit/{tenant}/stats/timeline` — a window (1 hour by
//!   default) by path.
//!
//! Filters are parsed by the list API's own parser (`audit_api::parse_query`),
//! so they mean the same here; a bad one is a 400 `invalid_parameter` naming
//! it. The numbers come from [`crate::store::audit::stats`]; reads run on
//! blocking threads and record a `log_accessed` event like every audit read.
//! Aggregates only: the `ReadConfig` permission (viewers too), but for
//! `request_id`, which selects one call: that needs `ReadEvents`.

use axum::extract::{Path, Query, State};
use axum::http::Method;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Map, Value};

use super::audit_api::{parse_query, record_read, require_audit_tenant, READ_PARAMETERS};
use super::AdminState;
use crate::access::{Permission, Role};
use crate::control::Actor;
use crate::error::{ApiError, ErrorCode};
use crate::event::{format_timestamp, now_ms, Category};
use crate::store::audit::stats::query::{GroupBy, Measures, Metrics, Stats, StatsQuery, LATENCY_ERROR_BOUND};
use crate::store::audit::stats::ConsumerProfile;
use crate::store::audit::{AuditReader, EventFilter};

pub fn routes() -> Router<AdminState> {
    Router::new()
        .route("/v1/audit/{tenant}/stats", get(stats))
        .route("/v1/audit/{tenant}/stats/timeline", get(timeline))
        .route("/v1/audit/{tenant}/stats/consumers/{consumer}", get(consumer_profile))
}

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
const DEFAULT_TOP: usize = 10;
const MAX_TOP: usize = 1000;

/// The latency error bound as answered: the sketch's bound, rounded up to
/// the percent it is documented as.
const ERROR_BOUND_ANSWERED: f64 = 0.01;
const _: () = assert!(LATENCY_ERROR_BOUND <= ERROR_BOUND_ANSWERED);

/// A parameter's value (one at most: `parse_query` refuses one given twice).
fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn parse_top(params: &[(String, String)], default: usize) -> Result<usize, ApiError> {
    match param(params, "top") {
        None => Ok(default),
        Some(text) => match text.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_TOP).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid_parameter("top", format!("must be a whole number between 1 and {MAX_TOP}"))),
        },
    }
}

/// The list filters for a tenant's request events, with the window made
/// explicit: `to` defaults to now, `from` to `default_window` before `to`.
fn windowed_filter(tenant: &str, params: &[(String, String)], default_window: i64) -> Result<EventFilter, ApiError> {
    if param(params, "cursor").is_some() {
        return Err(ApiError::invalid_parameter("cursor", "aggregates are not paged; give a window with `from`/`to`, `hours` or `days`"));
    }
    let mut filter = parse_query(tenant, Category::Request, params, false)?.filter;
    let to = filter.to_ms.unwrap_or_else(now_ms);
    let from = filter.from_ms.unwrap_or(to - default_window);
    if from > to {
        // Without a `to` the window ends now: say so, not name a `to` the
        // caller never gave.
        let why = if filter.to_ms.is_some() { "must not be after `to`" } else { "must not be in the future (without `to`, the window ends now)" };
        return Err(ApiError::invalid_parameter("from", why));
    }
    filter.from_ms = Some(from);
    filter.to_ms = Some(to);
    Ok(filter)
}

/// What the consumer profile and the timeline take.
const WINDOW_AND_TOP: [&str; 5] = ["from", "to", "hours", "days", "top"];

/// Refuses every parameter an audit read takes ([`READ_PARAMETERS`]) but
/// a window and `top` — the list's filters and `limit`, `category`, the
/// `/stats` options — rather than silently answering for more than was
/// asked. Names no audit read takes are ignored, as on the list.
fn only_window(params: &[(String, String)], endpoint: &str) -> Result<(), ApiError> {
    let other = params.iter().map(|(name, _)| name.as_str()).find(|name| READ_PARAMETERS.contains(name) && !WINDOW_AND_TOP.contains(name));
    match other {
        Some(name) => Err(ApiError::invalid_parameter(
            name,
            format!("{endpoint} takes only a window (`from`, `to`, `hours`, `days`) and `top`; use /stats for other filters"),
        )),
        None => Ok(()),
    }
}

/// The parameters an audit read takes that `/stats` does not honour: it
/// answers one aggregate, not a page (`limit`, `cursor`), of request
/// events only (`category`), and the admin log's and application events'
/// filters mean nothing there.
const NOT_FOR_STATS: [&str; 8] = ["limit", "cursor", "category", "admin_id", "action", "actor_id", "resource_type", "resource_id"];
/// Refuses the audit-read parameters `/stats` does not honour
/// ([`NOT_FOR_STATS`]) rather than silently answering for more than was
/// asked. Names no audit read takes are ignored, as on the list.
fn only_stats_parameters(params: &[(String, String)]) -> Result<(), ApiError> {
    match params.iter().map(|(name, _)| name.as_str()).find(|name| NOT_FOR_STATS.contains(name)) {
        Some(name) => Err(ApiError::invalid_parameter(
            name,
            "/stats takes the list's filters (`consumer_id`, `api_id`, `method`, `path`, `status_min`, `status_max`, `request_id`, `event_type`), a window (`from`, `to`, `hours`, `days`), `group_by`, `top`, `metrics` and `source`; it answers one aggregate of request events, not a page",
        )),
        None => Ok(()),
    }
}

/// Refuses `request_id` to a role that may not read raw events (a
/// viewer): it selects one call, and the aggregate of one call, grouped by
/// path, consumer, method, status class or hour, is that call's fields.
fn one_call_needs_read_events(actor: &Actor, params: &[(String, String)]) -> Result<(), ApiError> {
    let reads_events = actor.role.is_some_and(|role| role.allows(Permission::ReadEvents));
    if reads_events || param(params, "request_id").is_none() {
        return Ok(());
    }
    let role = actor.role.map_or("viewer", Role::as_str);
    let message = format!(
        "the `{role}` role reads aggregates, never one call: `request_id` selects a single call; leave it out, or ask a role that reads events"
    );
    Err(ApiError::new(ErrorCode::Forbidden, message))
}

fn window(filter: &EventFilter) -> (Value, Value) {
    (json!(filter.from_ms.map(format_timestamp)), json!(filter.to_ms.map(format_timestamp)))
}

/// Milliseconds from microseconds (not rounded: quantiles are checked
/// against their relative bound).
fn ms(us: Option<f64>) -> Value {
    json!(us.map(|v| v / 1000.0))
}

fn measures_view(m: &Measures, metrics: &Metrics) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("calls".into(), json!(m.calls));
    out.insert("errors".into(), json!(m.errors()));
    out.insert("client_errors".into(), json!(m.client_errors));
    out.insert("server_errors".into(), json!(m.server_errors));
    if metrics.rate_limited {
        out.insert("rate_limited".into(), json!(m.rate_limited.unwrap_or(0)));
    }
    out.insert("error_rate".into(), json!(m.error_rate()));
    if metrics.distinct_consumers {
        out.insert("distinct_consumers".into(), json!(m.consumers.len()));
    }
    if metrics.distinct_ips {
        out.insert("distinct_ips".into(), json!(m.ips.len()));
    }
    if metrics.latency {
        out.insert(
            "latency_ms".into(),
            json!({
                "avg": ms(m.mean_latency_us()),
                "p50": ms(m.latency_quantile_us(0.50)),
                "p95": ms(m.latency_quantile_us(0.95)),
                "p99": ms(m.latency_quantile_us(0.99)),
            }),
        );
    }
    out
}

fn stats_view(tenant: &str, filter: &EventFilter, query: &StatsQuery, stats: &Stats) -> Value {
    let (from, to) = window(filter);
    let mut body = json!({
        "tenant_id": tenant,
        "from": from,
        "to": to,
        "source": stats.source.as_str(),
        "totals": measures_view(&stats.totals, &query.metrics),
        "group_by": query.group_by.map(GroupBy::as_str),
    });
    if query.metrics.latency {
        body["latency_error_bound"] = json!(ERROR_BOUND_ANSWERED);
    }
    if query.group_by.is_some() {
        let groups: Vec<Value> = stats
            .groups
            .iter()
            .map(|g| {
                let mut entry = Map::new();
                entry.insert("key".into(), json!(g.key));
                entry.extend(measures_view(&g.measures, &query.metrics));
                Value::Object(entry)
            })
            .collect();
        body["groups"] = json!(groups);
        body["group_count"] = json!(stats.group_count);
    }
    body
}

/// Runs `f` on a blocking thread with a fresh reader.
async fn with_reader<T: Send + 'static>(
    state: &AdminState,
    f: impl FnOnce(&AuditReader) -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let dir = state.audit.dir().to_path_buf();
    tokio::task::spawn_blocking(move || AuditReader::open(&dir).and_then(|reader| f(&reader)))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

/// `GET /v1/audit/{tenant}/stats`: the list's filters (window: 24 hours
/// up to now unless given), plus `group_by`, `top`, `metrics` and `source`;
/// the other audit-read parameters (`limit`, `cursor`, `category`, the
/// admin log's and application events' filters) are a 400.
async fn stats(
    State(state): State<AdminState>,
    method: Method,
    Path(tenant): Path<String>,
    Extension(actor): Extension<Actor>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    require_audit_tenant(&state, &tenant)?;
    only_stats_parameters(&params)?;
    one_call_needs_read_events(&actor, &params)?;
    let filter = windowed_filter(&tenant, &params, DAY_MS)?;
    let group_by = match param(&params, "group_by").map(str::trim) {
        None | Some("") => None,
        Some(text) => Some(GroupBy::parse(text).ok_or_else(|| {
            let names: Vec<&str> = GroupBy::ALL.iter().map(|g| g.as_str()).collect();
            ApiError::invalid_parameter("group_by", format!("`{text}` is not one of {}", names.join(", ")))
        })?),
    };
    // Periods are a series: by default every one of them (up to the most `top` allows).
    let top = parse_top(&params, if group_by.is_some_and(GroupBy::is_time) { MAX_TOP } else { DEFAULT_TOP })?;
    let metrics = match param(&params, "metrics") {
        None => Metrics::ALL,
        Some(text) => Metrics::parse(text).map_err(|problem| ApiError::invalid_parameter("metrics", problem))?,
    };
    let force_events = match param(&params, "source").map(str::trim) {
        None | Some("auto") => false,
        Some("events") => true,
        Some(other) => return Err(ApiError::invalid_parameter("source", format!("`{other}` is not `auto` or `events`"))),
    };
    let query = StatsQuery { filter: filter.clone(), group_by, top, metrics, force_events };
    let asked = query.clone();
    let stats = with_reader(&state, move |reader| reader.request_stats(&asked)).await?;
    let rows = if group_by.is_some() { stats.groups.len() } else { 1 };
    record_read(&state.audit, &method, &actor, &tenant, "stats", &params, rows);
    Ok(Json(stats_view(&tenant, &filter, &query, &stats)))
}

fn profile_view(tenant: &str, consumer: &str, filter: &EventFilter, p: &ConsumerProfile) -> Value {
    let (from, to) = window(filter);
    let t = &p.totals;
    let rate = |errors: u64, calls: u64| if calls == 0 { 0.0 } else { errors as f64 / calls as f64 };
    let methods: Vec<Value> = p.methods.iter().map(|(m, n)| json!({"method": m, "calls": n})).collect();
    let paths: Vec<Value> = p
        .top_paths
        .iter()
        .map(|(path, calls, errors)| json!({"path": path, "calls": calls, "errors": errors, "error_rate": rate(*errors, *calls)}))
        .collect();
    json!({
        "tenant_id": tenant,
        "consumer_id": consumer,
        "from": from,
        "to": to,
        "source": "rollups",
        "calls": t.calls,
        "errors": t.errors(),
        "client_errors": t.err4,
        "server_errors": t.err5,
        "error_rate": rate(t.errors(), t.calls),
        "latency_ms": {"avg": ms((t.calls > 0).then(|| t.latency_sum_us as f64 / t.calls as f64))},
        "methods": methods,
        "top_paths": paths,
        "calls_by_hour_of_day": p.by_hour_of_day,
        "busiest_hour": p.busiest_hour.map(|(hour, calls)| json!({"hour": hour, "calls": calls})),
    })
}

/// `GET /v1/audit/{tenant}/stats/consumers/{consumer}`: methods, top paths,
/// error rate and busiest hour (UTC) over a window (14 days up to now unless given).
/// A consumer the tenant does not have and no event of the window names
/// (a typo, another tenant's) is 404 `consumer_not_found`, not a profile
/// of zeros; one that is gone from the control store but has events in
/// the window is answered.
async fn consumer_profile(
    State(state): State<AdminState>,
    method: Method,
    Path((tenant, consumer)): Path<(String, String)>,
    Extension(actor): Extension<Actor>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    require_audit_tenant(&state, &tenant)?;
    if consumer.is_empty() || consumer.len() > 256 || consumer.chars().any(char::is_control) {
        return Err(ApiError::invalid_parameter("consumer", "must be 1-256 printable characters"));
    }
    only_window(&params, "a consumer profile")?;
    let filter = windowed_filter(&tenant, &params, 14 * DAY_MS)?;
    let top = parse_top(&params, DEFAULT_TOP)?;
    let (from, to) = (filter.from_ms.unwrap_or_default(), filter.to_ms.unwrap_or_default().saturating_add(1));
    let known = state.control.consumer_exists(&tenant, &consumer)?;
    let (t, c) = (tenant.clone(), consumer.clone());
    let (profile, seen) = with_reader(&state, move |reader| {
        let profile = reader.consumer_profile(&t, &c, from, to, top)?;
        // Without calls, any event of the window that names it (a security
        // or key event): one is enough.
        let mut seen = known || profile.totals.calls > 0;
        if !seen {
            let any = EventFilter { tenant_id: t, consumer_id: Some(c), from_ms: Some(from), to_ms: Some(to.saturating_sub(1)), ..EventFilter::default() };
            reader.scan(&any, Some(1), false, |_| {
                seen = true;
                false
            })?;
        }
        Ok((profile, seen))
    })
    .await?;
    if !seen {
        let (from, to) = (format_timestamp(from), format_timestamp(to.saturating_sub(1)));
        return Err(ApiError::new(
            ErrorCode::ConsumerNotFound,
            format!("consumer `{consumer}` not found in tenant `{tenant}`: not one of its consumers, and no event from {from} to {to} names it"),
        ));
    }
    record_read(&state.audit, &method, &actor, &tenant, "stats/consumers", &params, 1);
    Ok(Json(profile_view(&tenant, &consumer, &filter, &profile)))
}

/// `GET /v1/audit/{tenant}/stats/timeline`: a window (the last hour unless
/// given) by path: calls, errors, distinct consumers; the `top` paths by calls.
async fn timeline(
    State(state): State<AdminState>,
    method: Method,
    Path(tenant): Path<String>,
    Extension(actor): Extension<Actor>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    require_audit_tenant(&state, &tenant)?;
    only_window(&params, "the timeline")?;
    let filter = windowed_filter(&tenant, &params, HOUR_MS)?;
    let top = parse_top(&params, DEFAULT_TOP)?;
    let (from, to) = (filter.from_ms.unwrap_or_default(), filter.to_ms.unwrap_or_default().saturating_add(1));
    let t = tenant.clone();
    let paths = with_reader(&state, move |reader| reader.path_timeline(&t, from, to)).await?;
    let (calls, errors) = paths.iter().fold((0, 0), |(c, e), p| (c + p.calls, e + p.errors));
    let path_count = paths.len();
    let entries: Vec<Value> = paths
        .iter()
        .take(top)
        .map(|p| {
            json!({
                "path": p.path,
                "calls": p.calls,
                "errors": p.errors,
                "error_rate": if p.calls == 0 { 0.0 } else { p.errors as f64 / p.calls as f64 },
                "distinct_consumers": p.distinct_consumers,
            })
        })
        .collect();
    record_read(&state.audit, &method, &actor, &tenant, "stats/timeline", &params, entries.len());
    let (from, to) = window(&filter);
    Ok(Json(json!({
        "tenant_id": tenant,
        "from": from,
        "to": to,
        "source": "events",
        "calls": calls,
        "errors": errors,
        "error_rate": if calls == 0 { 0.0 } else { errors as f64 / calls as f64 },
        "paths": entries,
        "path_count": path_count,
    })))
}
