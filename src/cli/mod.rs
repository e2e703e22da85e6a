//! Commands that talk to a running keytrail's admin API with a token, like
//! kubectl: `keytrail investigate` (incident triage), `keytrail report
//! weekly`, and key management and audit reads (`keytrail keys …`,
//! `keytrail audit …`, in [`manage`]). Human tables by default, `--json` for scripts. The numbers are
//! the server's (`/v1/audit/{tenant}/stats…`, `/security`, `/admin`); these
//! commands only choose the questions and lay out the answers.

pub mod alerts;
pub mod client;
pub mod manage;
pub mod progress;

/// `println!` that returns the error (a closed pipe: `keytrail … | head`)
/// instead of panicking; for functions returning `anyhow::Result`.
macro_rules! outln {
    ($($arg:tt)*) => {
        std::io::Write::write_fmt(&mut std::io::stdout().lock(), format_args!("{}\n", format_args!($($arg)*)))?
    };
}

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::bail;
use serde_json::{json, Value};

use crate::event::format_timestamp;
use client::{encode, with_query, AdminClient, Refusal};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// Pages of 10,000 events read at most when counting security events or
/// admin actions (the answer says when the count stopped there).
const MAX_PAGES: usize = 100;
const PAGE: &str = "10000";

/// The longest window `investigate --hours` looks at: a leap year.
pub const MAX_HOURS: u32 = 24 * 366;

/// A command line that cannot run as given — a flag's value no server
/// could take, flags that do not go together — found after clap's own
/// checks: the binary exits with code 2, as for clap's usage errors (a
/// refusal by the server, or a state of the world, is code 1).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A [`UsageError`] saying `message`.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

/// Where and for whom a command runs.
#[derive(Debug, Clone)]
pub struct Target {
    pub admin_url: String,
    /// The tenant; by default the admin's own, or the only one there is.
    pub tenant: Option<String>,
    pub json: bool,
}

/// That `tenant` is written as a tenant id (`_system` included); the
/// problem otherwise, for a usage error.
pub fn check_tenant_id(tenant: &str) -> Result<(), String> {
    if crate::control::is_id_text(tenant) {
        Ok(())
    } else {
        Err(format!("`{tenant}` is not a tenant id (1-63 lowercase letters, digits, `-` and `_`)"))
    }
}

/// The tenant to look at: the one given, the token's own tenant, or the
/// only tenant the token sees.
async fn resolve_tenant(client: &AdminClient, given: Option<&str>) -> anyhow::Result<String> {
    if let Some(tenant) = given {
        // A tenant id as the admin API makes them (`_system`, keytrail's
        // own, included): anything else no tenant has, said before asking.
        if let Err(problem) = check_tenant_id(tenant) {
            return Err(usage(format!("--tenant {problem}")));
        }
        return Ok(tenant.to_string());
    }
    let me = client.get("/v1/me").await?;
    if let Some(own) = client.field(&me, "id").and(client.field(&me, "tenant_id"))?.as_str() {
        return Ok(own.to_string());
    }
    let tenants = client.get("/v1/tenants").await?;
    let ids: Vec<&str> = client.list(&tenants, "tenants")?.iter().filter_map(|t| t["id"].as_str()).collect();
    match ids.as_slice() {
        [one] => Ok(one.to_string()),
        [] => bail!("there are no tenants yet"),
        // The command line lacks a flag: a usage error, as clap's own.
        many => Err(usage(format!("give --tenant: one of {}", many.join(", ")))),
    }
}

/// A window as query parameters.
fn window_params(from: i64, to: i64) -> Vec<(&'static str, String)> {
    vec![("from", format_timestamp(from)), ("to", format_timestamp(to))]
}

async fn stats(client: &AdminClient, tenant: &str, base: &[(&'static str, String)], extra: &[(&'static str, &str)]) -> anyhow::Result<Value> {
    let mut params = base.to_vec();
    params.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let answer = client.get(&with_query(&format!("/v1/audit/{}/stats", encode(tenant)), &params)).await?;
    client.field(&answer, "totals")?;
    Ok(answer)
}

/// Counts of events by a field, over every page of a list.
struct Tally {
    counts: BTreeMap<String, u64>,
    total: u64,
    /// Stopped after [`MAX_PAGES`] pages.
    truncated: bool,
}

impl Tally {
    fn get(&self, key: &str) -> u64 {
        self.counts.get(key).copied().unwrap_or(0)
    }

    fn to_json(&self) -> Value {
        json!({"total": self.total, "by_type": self.counts, "truncated": self.truncated})
    }
}

/// Reads every page of `path` (a list answering `{field: […], "next_cursor"}`)
/// and counts its entries by each of `keys`, one tally per key.
async fn tally(client: &AdminClient, path: &str, params: &[(&'static str, String)], field: &str, keys: &[&str]) -> anyhow::Result<Vec<Tally>> {
    let mut tallies: Vec<Tally> = keys.iter().map(|_| Tally { counts: BTreeMap::new(), total: 0, truncated: false }).collect();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let mut p = params.to_vec();
        p.push(("limit", PAGE.to_string()));
        if let Some(c) = &cursor {
            p.push(("cursor", c.clone()));
        }
        let page = client.get(&with_query(path, &p)).await?;
        for entry in client.list(&page, field)? {
            for (tally, key) in tallies.iter_mut().zip(keys) {
                let name = entry[*key].as_str().unwrap_or("(none)").to_string();
                *tally.counts.entry(name).or_default() += 1;
                tally.total += 1;
            }
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return Ok(tallies),
        }
    }
    for tally in &mut tallies {
        tally.truncated = true;
    }
    Ok(tallies)
}

// ---------- formatting ----------

/// A plain text table: the first column left-aligned, the others right.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    aligned_table(headers, rows, |column| column > 0)
}

/// A plain text table, the columns `right` says right-aligned (numbers),
/// the others left-aligned.
fn aligned_table(headers: &[&str], rows: &[Vec<String>], right: impl Fn(usize) -> bool) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::from("  ");
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            let gap = if i == 0 { "" } else { "  " };
            if right(i) {
                let _ = write!(text, "{gap}{cell:>w$}");
            } else {
                let _ = write!(text, "{gap}{cell:<w$}");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    if rows.is_empty() {
        out.push_str("  (none)\n");
    }
    out
}

fn n(v: &Value) -> String {
    v.as_u64().map_or_else(|| "-".to_string(), |n| n.to_string())
}

fn percent(v: &Value) -> String {
    v.as_f64().map_or_else(|| "-".to_string(), |r| format!("{:.2} %", r * 100.0))
}

fn millis(v: &Value) -> String {
    v.as_f64().map_or_else(|| "-".to_string(), |ms| format!("{ms:.1}"))
}

fn key(v: &Value) -> String {
    v.as_str().map_or_else(|| "(none)".to_string(), str::to_string)
}

fn groups(answer: &Value) -> &[Value] {
    answer["groups"].as_array().map(Vec::as_slice).unwrap_or_default()
}

fn traffic(out: &mut String, t: &Value) {
    let _ = writeln!(out, "Traffic");
    let rows = [
        ("calls", n(&t["calls"])),
        ("errors", format!("{} ({})", n(&t["errors"]), percent(&t["error_rate"]))),
        ("4xx / 5xx", format!("{} / {}", n(&t["client_errors"]), n(&t["server_errors"]))),
        ("rate-limited (429)", n(&t["rate_limited"])),
        ("distinct consumers", n(&t["distinct_consumers"])),
        ("distinct client IPs", n(&t["distinct_ips"])),
        (
            "latency ms",
            format!(
                "p50 {}  p95 {}  p99 {}  avg {}  (quantiles ±1 %)",
                millis(&t["latency_ms"]["p50"]),
                millis(&t["latency_ms"]["p95"]),
                millis(&t["latency_ms"]["p99"]),
                millis(&t["latency_ms"]["avg"])
            ),
        ),
    ];
    for (label, value) in rows {
        let _ = writeln!(out, "  {label:<20} {value}");
    }
    out.push('\n');
}

/// Rows of a grouped answer; `none` names the group of calls without a key.
fn group_rows(answer: &Value, latency: bool, none: &str) -> Vec<Vec<String>> {
    groups(answer)
        .iter()
        .map(|g| {
            let label = g["key"].as_str().map_or_else(|| none.to_string(), str::to_string);
            let mut row = vec![label, n(&g["calls"]), n(&g["errors"]), percent(&g["error_rate"]), n(&g["server_errors"])];
            if latency {
                row.push(n(&g["rate_limited"]));
                row.push(millis(&g["latency_ms"]["p95"]));
            }
            row
        })
        .collect()
}

// ---------- erase ----------

/// The signal that stopped a command: Ctrl-C (SIGINT) or SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    Interrupt,
    Terminate,
}

impl StopSignal {
    /// The exit code of a command the signal cut short: 128 and the
    /// signal's number, as shells report a command the signal ended (130
    /// for SIGINT, 143 for SIGTERM), so a script tells a stopped command
    /// from one that failed.
    pub fn exit_code(self) -> u8 {
        match self {
            StopSignal::Interrupt => 130,
            StopSignal::Terminate => 143,
        }
    }

    /// How a message names it.
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Interrupt => "Ctrl-C (SIGINT)",
            StopSignal::Terminate => "SIGTERM",
        }
    }
}

/// Work a [`StopSignal`] cut short (an export to a file): the binary says
/// `message` and exits with [`StopSignal::exit_code`].
#[derive(Debug)]
pub struct Interrupted {
    pub signal: StopSignal,
    pub message: String,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted by {}: {}", self.signal.name(), self.message)
    }
}

impl std::error::Error for Interrupted {}

/// Ctrl-C or SIGTERM, from the moment this is called (not first polled):
/// how `serve`, `demo` and an export to a file are stopped. Called before
/// the work starts, a signal that comes while it starts is kept for when
/// it is awaited, instead of killing the process outright (a `serve`
/// whose listeners were bound, its start not done: nothing committed).
/// A signal that cannot be listened for never comes (rather than stopping
/// at once).
pub fn stop_signal() -> impl std::future::Future<Output = ()> {
    let which = stop_signal_which();
    async move {
        which.await;
    }
}

/// [`stop_signal`], saying which of the two came: for work it cuts short,
/// whose exit code says which ([`Interrupted`]).
pub fn stop_signal_which() -> impl std::future::Future<Output = StopSignal> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, Signal, SignalKind};
        // Installed here, as the handles are made.
        let interrupt = signal(SignalKind::interrupt()).ok();
        let terminate = signal(SignalKind::terminate()).ok();
        async fn next(signal: Option<Signal>) {
            match signal {
                Some(mut signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        async move {
            tokio::select! {
                () = next(interrupt) => StopSignal::Interrupt,
                () = next(terminate) => StopSignal::Terminate,
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        StopSignal::Interrupt
    }
}

/// Whether `consumer` can name a consumer, by its id or by its name: not
/// empty, no control characters, not `.` or `..` (which a URL takes as a
/// step up the path, to another route), and, shaped as an id (`cons_…`),
/// without `/`, `?` or `#`, which no id holds. A name may hold them
/// (`team/app`): it is looked up, and the id it names is what a path holds.
pub fn can_name_consumer(consumer: &str) -> bool {
    let id_like = consumer.starts_with("cons_");
    !(consumer.is_empty() || consumer.chars().any(char::is_control) || consumer == "." || consumer == ".." || (id_like && consumer.contains(['/', '?', '#'])))
}

/// [`can_name_consumer`], saying why not.
pub fn check_consumer_id(consumer: &str) -> Result<(), String> {
    if !can_name_consumer(consumer) {
        return Err(format!("`{consumer}` is not a consumer id (such as cons_…) or name (see GET /v1/tenants/{{tenant}}/consumers)"));
    }
    Ok(())
}

/// `keytrail erase`: erases a consumer's personal values through the admin
/// API (owners only) and prints what was changed.
pub async fn erase(target: &Target, consumer: &str) -> anyhow::Result<()> {
    if let Err(why) = check_consumer_id(consumer) {
        return Err(usage(format!("--consumer {why}")));
    }
    let client = AdminClient::from_env(&target.admin_url)?;
    let tenant = resolve_tenant(&client, target.tenant.as_deref()).await?;
    // By id or by name, as the other commands take a consumer: a name must
    // be exactly one consumer's (an erasure is not undone).
    let consumer = &manage::consumer_id(&client, &tenant, consumer).await?;
    let path = format!("/v1/tenants/{}/consumers/{}/erase", encode(&tenant), encode(consumer));
    // Rewriting every day file and archive of a big store takes a while.
    let report = client.post(&path, std::time::Duration::from_secs(3600)).await?;
    if target.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let list = |field: &str| {
        let items: Vec<&str> = report[field].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        if items.is_empty() { "none".to_string() } else { items.join(", ") }
    };
    outln!("Erased the personal values of consumer {consumer} in tenant {tenant}:");
    outln!("  events        {}", n(&report["events"]));
    outln!("  blocks        {}", n(&report["blocks"]));
    outln!("  day files     {}", list("day_files"));
    outln!("  archives      {}", list("archives"));
    outln!("  strings       {} dictionary values overwritten", n(&report["strings"]));
    outln!("  salts         {} deleted", n(&report["salts"]));
    outln!("The consumer is now named erased-{consumer}; its keys still work. The chain still verifies: run `keytrail verify`.");
    Ok(())
}

// ---------- investigate ----------

/// `keytrail investigate`: the incident triage of the last `hours` hours.
pub async fn investigate(target: &Target, consumer: Option<&str>, hours: u32) -> anyhow::Result<()> {
    if hours == 0 || hours > MAX_HOURS {
        return Err(usage(format!("--hours must be between 1 and {MAX_HOURS}")));
    }
    let client = AdminClient::from_env(&target.admin_url)?;
    let tenant = resolve_tenant(&client, target.tenant.as_deref()).await?;
    // A consumer by its id or its name, as the other commands take it; one
    // the tenant has neither of goes to the server as given, which says
    // whether any event of the window names it.
    let named = match consumer {
        Some(given) => Some((manage::known_consumer(&client, &tenant, given).await?.unwrap_or_else(|| given.to_string()), given)),
        None => None,
    };
    let consumer = named.as_ref().map(|(id, _)| id.as_str());
    let to = crate::event::now_ms();
    let from = to - i64::from(hours) * HOUR_MS;
    // The consumer's profile first: a consumer the server has never seen
    // (a typo) is an error, not a triage of zeros.
    let profile = match consumer {
        Some(c) => {
            let path = with_query(&format!("/v1/audit/{}/stats/consumers/{}", encode(&tenant), encode(c)), &window_params(from, to));
            match client.get(&path).await {
                Ok(profile) => Some(profile),
                Err(error) if error.downcast_ref::<Refusal>().is_some_and(|r| r.code == "consumer_not_found") => bail!(
                    "consumer `{c}` not found in tenant `{tenant}`: no consumer of the tenant has that id or name and no event of the last {hours} h names it (consumer_not_found; list them with GET /v1/tenants/{tenant}/consumers)"
                ),
                Err(error) => return Err(error.context("the consumer's profile")),
            }
        }
        None => None,
    };
    let mut base = window_params(from, to);
    if let Some(c) = consumer {
        base.push(("consumer_id", c.to_string()));
    }
    let period = if hours <= 48 { "hour" } else { "day" };
    let totals = stats(&client, &tenant, &base, &[]).await?;
    let series = stats(&client, &tenant, &base, &[("group_by", period), ("metrics", "")]).await?;
    let classes = stats(&client, &tenant, &base, &[("group_by", "status_class"), ("metrics", "")]).await?;
    let top_consumers = match consumer {
        None => Some(stats(&client, &tenant, &base, &[("group_by", "consumer"), ("metrics", "latency,rate_limited")]).await?),
        Some(_) => None,
    };
    let top_paths = stats(&client, &tenant, &base, &[("group_by", "path"), ("metrics", "latency,rate_limited")]).await?;
    let security = tally(&client, &format!("/v1/audit/{}/security", encode(&tenant)), &base, "events", &["event_type"]).await?.remove(0);

    if target.json {
        let answer = json!({
            "tenant_id": tenant,
            "consumer_id": consumer,
            "hours": hours,
            "from": format_timestamp(from),
            "to": format_timestamp(to),
            "totals": totals["totals"],
            "latency_error_bound": totals["latency_error_bound"],
            "by_period": {"group_by": period, "groups": groups(&series)},
            "status_classes": groups(&classes),
            "top_consumers": top_consumers.as_ref().map(|a| groups(a).to_vec()),
            "top_paths": groups(&top_paths),
            "security_events": security.to_json(),
            "profile": profile,
        });
        outln!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }

    let mut out = String::new();
    let who = match &named {
        Some((id, given)) if id != given => format!(", consumer {id} ({given})"),
        Some((id, _)) => format!(", consumer {id}"),
        None => String::new(),
    };
    let _ = writeln!(out, "Incident triage: tenant {tenant}{who}, last {hours} h ({} to {})\n", format_timestamp(from), format_timestamp(to));
    traffic(&mut out, &totals["totals"]);
    let _ = writeln!(out, "Errors by {period} (UTC)");
    out.push_str(&table(&[period, "calls", "errors", "error rate", "5xx"], &group_rows(&series, false, "-")));
    out.push('\n');
    let _ = writeln!(out, "Status classes");
    let rows: Vec<Vec<String>> = groups(&classes).iter().map(|g| vec![g["key"].as_str().unwrap_or("(no status)").to_string(), n(&g["calls"])]).collect();
    out.push_str(&table(&["class", "calls"], &rows));
    out.push('\n');
    if let Some(top) = &top_consumers {
        let _ = writeln!(out, "Top consumers (of {})", n(&top["group_count"]));
        out.push_str(&table(&["consumer", "calls", "errors", "error rate", "5xx", "429", "p95 ms"], &group_rows(top, true, "(no consumer)")));
        out.push('\n');
    }
    let _ = writeln!(out, "Top paths (of {})", n(&top_paths["group_count"]));
    out.push_str(&table(&["path", "calls", "errors", "error rate", "5xx", "429", "p95 ms"], &group_rows(&top_paths, true, "(no path)")));
    out.push('\n');
    let more = if security.truncated { " (counted from the newest 1,000,000 only)" } else { "" };
    let _ = writeln!(out, "Security events: {}{more}", security.total);
    let rows: Vec<Vec<String>> = security.counts.iter().map(|(t, c)| vec![t.clone(), c.to_string()]).collect();
    out.push_str(&table(&["type", "count"], &rows));
    if let (Some(p), Some(c)) = (&profile, consumer) {
        out.push('\n');
        let _ = writeln!(out, "Consumer {c}");
        let busiest = match p["busiest_hour"]["hour"].as_u64() {
            Some(h) => format!("{h:02}:00 UTC ({} calls)", n(&p["busiest_hour"]["calls"])),
            None => "-".into(),
        };
        for (label, value) in [
            ("calls", n(&p["calls"])),
            ("errors", format!("{} ({})", n(&p["errors"]), percent(&p["error_rate"]))),
            ("avg latency ms", millis(&p["latency_ms"]["avg"])),
            ("busiest hour", busiest),
        ] {
            let _ = writeln!(out, "  {label:<20} {value}");
        }
        let rows: Vec<Vec<String>> = p["methods"].as_array().map(Vec::as_slice).unwrap_or_default().iter().map(|m| vec![key(&m["method"]), n(&m["calls"])]).collect();
        out.push('\n');
        out.push_str(&table(&["method", "calls"], &rows));
        out.push('\n');
        let rows: Vec<Vec<String>> = p["top_paths"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|x| vec![key(&x["path"]), n(&x["calls"]), n(&x["errors"]), percent(&x["error_rate"])])
            .collect();
        out.push_str(&table(&["path", "calls", "errors", "error rate"], &rows));
    }
    std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes())?;
    Ok(())
}

// ---------- report weekly ----------

/// Security event types that are failed authentications.
const AUTH_FAILURES: [&str; 3] = ["auth_failed", "revoked_key_used", "expired_key_used"];

/// `keytrail report weekly`: the last seven UTC days, today included so far.
pub async fn report_weekly(target: &Target) -> anyhow::Result<()> {
    let client = AdminClient::from_env(&target.admin_url)?;
    let tenant = resolve_tenant(&client, target.tenant.as_deref()).await?;
    let to = crate::event::now_ms();
    let first_day = to.div_euclid(DAY_MS) - 6;
    let from = first_day * DAY_MS;
    let base = window_params(from, to);
    let totals = stats(&client, &tenant, &base, &[("metrics", "rate_limited")]).await?;
    let daily = stats(&client, &tenant, &base, &[("group_by", "day"), ("metrics", "")]).await?;
    let security = tally(&client, &format!("/v1/audit/{}/security", encode(&tenant)), &base, "events", &["event_type"]).await?.remove(0);
    let mut admin = tally(&client, &format!("/v1/audit/{}/admin", encode(&tenant)), &base, "entries", &["action", "outcome"]).await?;
    let (admin, admin_outcomes) = (admin.remove(0), admin.remove(0));

    // Every day of the week, days without calls included.
    let by_day: BTreeMap<String, &Value> = groups(&daily).iter().map(|g| (key(&g["key"]), g)).collect();
    let zero = json!({"calls": 0, "errors": 0, "client_errors": 0, "server_errors": 0, "error_rate": 0.0});
    let days: Vec<Value> = (first_day..=first_day + 6)
        .map(|d| {
            let day = chrono::DateTime::from_timestamp(d * 86_400, 0).unwrap_or_default().date_naive().format("%Y-%m-%d").to_string();
            let g = by_day.get(&day).copied().unwrap_or(&zero);
            json!({
                "day": day,
                "calls": g["calls"],
                "errors": g["errors"],
                "client_errors": g["client_errors"],
                "server_errors": g["server_errors"],
                "error_rate": g["error_rate"],
            })
        })
        .collect();
    let auth: BTreeMap<&str, u64> = AUTH_FAILURES.iter().map(|t| (*t, security.get(t))).collect();
    let auth_total: u64 = auth.values().sum();
    let t = &totals["totals"];

    if target.json {
        let answer = json!({
            "tenant_id": tenant,
            "from": format_timestamp(from),
            "to": format_timestamp(to),
            "calls": t["calls"],
            "errors": t["errors"],
            "error_rate": t["error_rate"],
            "rate_limited_calls": t["rate_limited"],
            "auth_failures": {"total": auth_total, "by_type": auth},
            "rate_limit_hits": security.get("rate_limit_exceeded"),
            "key_rotations": security.get("key_rotated"),
            "keys_created": security.get("key_created"),
            "keys_revoked": security.get("key_revoked"),
            "admin_actions": {"total": admin.total, "by_action": admin.counts, "by_outcome": admin_outcomes.counts, "truncated": admin.truncated},
            "security_events": security.to_json(),
            "daily": days,
        });
        outln!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }

    let mut out = String::new();
    let _ = writeln!(out, "Weekly report: tenant {tenant}, {} to {} (UTC; today so far)\n", format_timestamp(from), format_timestamp(to));
    let _ = writeln!(out, "Summary");
    let auth_detail: Vec<String> = auth.iter().filter(|(_, c)| **c > 0).map(|(t, c)| format!("{t} {c}")).collect();
    let failed = admin_outcomes.get("failure");
    for (label, value) in [
        ("calls", n(&t["calls"])),
        ("errors", format!("{} ({})", n(&t["errors"]), percent(&t["error_rate"]))),
        ("rate-limited calls", format!("{} (429 answers)", n(&t["rate_limited"]))),
        ("auth failures", if auth_detail.is_empty() { auth_total.to_string() } else { format!("{auth_total} ({})", auth_detail.join(", ")) }),
        ("rate-limit hits", format!("{} (rate_limit_exceeded events)", security.get("rate_limit_exceeded"))),
        ("key rotations", security.get("key_rotated").to_string()),
        ("keys created / revoked", format!("{} / {}", security.get("key_created"), security.get("key_revoked"))),
        ("admin actions", if failed > 0 { format!("{} ({failed} failed)", admin.total) } else { admin.total.to_string() }),
    ] {
        let _ = writeln!(out, "  {label:<24} {value}");
    }
    out.push('\n');
    let _ = writeln!(out, "Admin actions");
    let mut rows: Vec<(String, u64)> = admin.counts.iter().map(|(a, c)| (a.clone(), *c)).collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let rows: Vec<Vec<String>> = rows.into_iter().map(|(a, c)| vec![a, c.to_string()]).collect();
    out.push_str(&table(&["action", "count"], &rows));
    out.push('\n');
    let _ = writeln!(out, "Daily error trend");
    let rows: Vec<Vec<String>> = days
        .iter()
        .map(|d| vec![key(&d["day"]), n(&d["calls"]), n(&d["errors"]), percent(&d["error_rate"]), n(&d["client_errors"]), n(&d["server_errors"])])
        .collect();
    out.push_str(&table(&["day", "calls", "errors", "error rate", "4xx", "5xx"], &rows));
    std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let text = table(&["path", "calls"], &[vec!["/a".into(), "1".into()], vec!["/longer".into(), "1234".into()]]);
        assert_eq!(text, "  path     calls\n  /a           1\n  /longer   1234\n");
        assert!(table(&["x"], &[]).contains("(none)"));
        assert_eq!(percent(&json!(0.12345)), "12.35 %");
        assert_eq!(n(&Value::Null), "-");
    }
}
