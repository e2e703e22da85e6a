//! `keytrail keys list|show|create|rotate|revoke|scopes` and `keytrail audit
//! list|security|export`: the admin API's key management and audit reads
//! from the command line. Every rule (who may do what, what a valid filter
//! is) stays the server's (values it refuses whatever the data are said
//! first, as usage errors, with its limits); these commands build the calls, name consumers
//! by id or by name, and lay out the answers (`--json` prints them as the
//! API gave them).
//!
//! `keys create` and `keys rotate` print the new key, the one time it is
//! ever shown; nothing else here prints more than its hint.

use std::io::{IsTerminal as _, Write as _};
use std::path::Path;

use anyhow::{bail, Context};
use hyper::Method;
use serde_json::{json, Map, Value};

use super::client::{encode, with_query, AdminClient, Refusal};
use super::progress::{Counted, Progress};
use super::{aligned_table, resolve_tenant, Target};

/// Rows a list shows unless `--limit` says otherwise.
pub const DEFAULT_LIMIT: u32 = 50;
/// The most `--limit` may ask for: the rows the audit API puts in a page.
pub const MAX_LIMIT: u32 = 10_000;

/// Refuses a `value` for `flag` that holds an API key or a token (the
/// key at hand given for its id, an easy slip): it is never sent, in a
/// URL's path where a proxy's log would keep it; `give` says what to give.
/// Shown masked. Only secrets the process knows: the key formats, and the
/// token once [`AdminClient`] has registered it.
fn refuse_secret(flag: &str, value: &str, give: &str) -> anyhow::Result<()> {
    if crate::redact::holds_secret(value) {
        return Err(super::usage(format!(
            "{flag} `{}` holds a key or a token and is not an id: it is never sent anywhere (give {give})",
            crate::redact::redact(value)
        )));
    }
    Ok(())
}

/// An id as one segment of a URL path: no `/`, `?` or `#`, not empty, no key or token.
pub(super) fn segment<'a>(flag: &str, value: &'a str) -> anyhow::Result<&'a str> {
    refuse_secret(flag, value, "the key's id, key_…, which `keytrail keys list` shows")?;
    if value.is_empty() || value.contains(['/', '?', '#']) || value.chars().any(char::is_control) {
        return Err(super::usage(format!("{flag} `{value}` is not an id")));
    }
    Ok(value)
}

/// A consumer given by id (`cons_…`) or by name, as its id: a consumer's
/// id first, then a name, which must belong to exactly one consumer of the
/// tenant (a name may look like an id).
pub(super) async fn consumer_id(client: &AdminClient, tenant: &str, given: &str) -> anyhow::Result<String> {
    match known_consumer(client, tenant, given).await? {
        Some(id) => Ok(id),
        // An id no consumer has: the server's answer names it.
        None if given.starts_with("cons_") => Ok(given.to_string()),
        None => bail!("tenant `{tenant}` has no consumer named `{given}` (give its name or its id, cons_…)"),
    }
}

/// The id of the consumer `given` names (its id, or a name exactly one
/// consumer of the tenant has), or `None` when no consumer of the tenant
/// has that id or name (a consumer the control store no longer holds may
/// still be in the events: the server decides about those).
pub(super) async fn known_consumer(client: &AdminClient, tenant: &str, given: &str) -> anyhow::Result<Option<String>> {
    refuse_secret("--consumer", given, "the consumer's id, cons_…, or its name")?;
    // A name may hold `/`, `?` or `#`; the id found is what a path holds.
    if !super::can_name_consumer(given) {
        return Err(super::usage(format!("--consumer `{given}` is not an id (such as cons_…) or a consumer's name")));
    }
    let list = client.get(&format!("/v1/tenants/{}/consumers", encode(tenant))).await?;
    let consumers = client.list(&list, "consumers")?;
    if consumers.iter().any(|c| c["id"].as_str() == Some(given)) {
        return Ok(Some(given.to_string()));
    }
    let named: Vec<&str> = consumers.iter().filter(|c| c["name"].as_str() == Some(given)).filter_map(|c| c["id"].as_str()).collect();
    match named.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.to_string())),
        many => bail!("{} consumers of tenant `{tenant}` are named `{given}`: give one's id ({})", many.len(), many.join(", ")),
    }
}

pub(super) fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn scopes(v: &Value) -> String {
    let list: Vec<&str> = v.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    if list.is_empty() { "(none)".to_string() } else { list.join(",") }
}

/// Writes to standard output, a closed pipe returned as an error.
pub(super) fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

pub(super) fn print_json(value: &Value) -> anyhow::Result<()> {
    print(&format!("{}\n", serde_json::to_string_pretty(value)?))
}

// ---------- keys ----------

/// `keytrail keys list --consumer C`.
pub async fn keys_list(target: &Target, consumer: &str) -> anyhow::Result<()> {
    let client = AdminClient::from_env(&target.admin_url)?;
    let tenant = resolve_tenant(&client, target.tenant.as_deref()).await?;
    let consumer = consumer_id(&client, &tenant, consumer).await?;
    let answer = client.get(&format!("/v1/tenants/{}/consumers/{}/keys", encode(&tenant), encode(&consumer))).await?;
    let keys = client.list(&answer, "keys")?;
    if target.json {
        return print_json(&answer);
    }
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                text(&k["key_id"]),
                text(&k["hint"]),
                text(&k["status"]),
                scopes(&k["scopes"]),
                text(&k["created_at"]),
                text(&k["expires_at"]),
                text(&k["last_used_at"]),
                text(&k["replaced_by"]),
            ]
        })
        .collect();
    print(&format!("Keys of consumer {consumer} in tenant {tenant}\n"))?;
    print(&aligned_table(&["key_id", "hint", "status", "scopes", "created", "expires", "last used", "replaced by"], &rows, |_| false))
}

/// What `keytrail keys create` asks for.
#[derive(Debug, Default)]
pub struct NewKey {
    pub scopes: Vec<String>,
    /// RFC 3339 (a usage error otherwise); whether it is in the future is
    /// the server's to say.
    pub expires_at: Option<String>,
    /// `live` or `test` (clap refuses others), checked by the server too.
    pub environment: Option<String>,
}

/// The longest `--grace-secs` a rotation may give: the admin API's
/// `grace_seconds` limit, 30 days.
pub const MAX_GRACE_SECS: u64 = 30 * 86_400;

/// `--grace-secs` of a rotation (a key's, a webhook secret's), refused past
/// [`MAX_GRACE_SECS`] before any call.
pub(super) fn check_grace_secs(grace_secs: Option<u64>) -> anyhow::Result<()> {
    match grace_secs.filter(|secs| *secs > MAX_GRACE_SECS) {
        Some(secs) => Err(super::usage(format!("--grace-secs must be at most {MAX_GRACE_SECS} (30 days), not {secs}"))),
        None => Ok(()),
    }
}

/// `--scope` values as the admin API takes them (a usage error naming the
/// first it would refuse; it says only that one of the list is wrong).
fn check_scopes(scopes: &[String]) -> anyhow::Result<()> {
    if scopes.len() > 100 {
        return Err(super::usage(format!("--scope given {} times: a key holds at most 100 scopes", scopes.len())));
    }
    match scopes.iter().find(|s| !crate::keys::is_valid_scope(s)) {
        Some(bad) => Err(super::usage(format!(
            "--scope `{}` is not a scope: give 1-100 characters of letters, digits and `-_:.*/` (and no key or token)",
            crate::redact::redact(bad)
        ))),
        None => Ok(()),
    }
}

/// `keytrail keys create --consumer C`: prints the key once.
pub async fn keys_create(target: &Target, consumer: &str, new: NewKey) -> anyhow::Result<()> {
    check_scopes(&new.scopes)?;
    // As the admin API reads it: a value it refuses is a usage error, said before anything is asked.
    if let Some(at) = new.expires_at.as_deref() {
        if chrono::DateTime::parse_from_rfc3339(at).is_err() {
            return Err(super::usage(format!("--expires-at `{at}` is not an RFC 3339 time: give one such as 2027-01-31T00:00:00Z")));
        }
    }
    let client = AdminClient::from_env(&target.admin_url)?;
    let tenant = resolve_tenant(&client, target.tenant.as_deref()).await?;
    let consumer = consumer_id(&client, &tenant, consumer).await?;
    let mut body = Map::new();
    body.insert("scopes".into(), json!(new.scopes));
    if let Some(at) = new.expires_at {
        body.insert("expires_at".into(), json!(at));
    }
    if let Some(env) = new.environment {
        body.insert("environment".into(), json!(env));
    }
    let path = format!("/v1/tenants/{}/consumers/{}/keys", encode(&tenant), encode(&consumer));
    let key = client.send_json(Method::POST, &path, &Value::Object(body)).await?;
    if target.json {
        return print_json(&key);
    }
    new_key(&key, &format!("Created key {} for consumer {consumer} in tenant {tenant}", text(&key["key_id"])))
}

/// Prints a new key's facts and then the key itself, on its own line.
fn new_key(key: &Value, headline: &str) -> anyhow::Result<()> {
    let secret = key["key"].as_str().context("the answer holds no key (is this keytrail's admin API?)")?;
    let expires = key["expires_at"].as_str().unwrap_or("never");
    print(&format!(
        "{headline}\n  hint     {}\n  scopes   {}\n  expires  {expires}\nThe key, shown this once (keytrail keeps only its hash):\n{secret}\n",
        text(&key["hint"]),
        scopes(&key["scopes"]),
    ))
}

/// With `--tenant`, that the key `key_id` is that tenant's before it is
/// changed: the key routes are global, so the server acts on a key of any
/// tenant the token sees, and a slip in the tenant or the key id would
/// change another tenant's key. The key is read first (`GET
/// /v1/keys/{key_id}`, which names its tenant); one of another tenant is a
/// usage error naming both, and one no tenant the token sees has (404) goes
/// on to the server, whose refusal of the change says so.
async fn check_key_tenant(client: &AdminClient, target: &Target, key_id: &str) -> anyhow::Result<()> {
    let Some(tenant) = tenant_flag(target)? else { return Ok(()) };
    match client.get(&format!("/v1/keys/{}", encode(key_id))).await {
        Ok(key) => key_of_tenant(Some(tenant), &key, "nothing was changed"),
        Err(error) if error.downcast_ref::<Refusal>().is_some_and(|r| r.status == hyper::StatusCode::NOT_FOUND) => Ok(()),
        Err(error) => Err(error),
    }
}

/// `--tenant`, if given, checked before any call (a usage error).
fn tenant_flag(target: &Target) -> anyhow::Result<Option<&str>> {
    let Some(tenant) = target.tenant.as_deref() else { return Ok(None) };
    super::check_tenant_id(tenant).map_err(|problem| super::usage(format!("--tenant {problem}")))?;
    Ok(Some(tenant))
}

/// With a `tenant`, that `key` (as the admin API shows one) is that
/// tenant's; otherwise a usage error naming both tenants, ending with `done`
/// (what became of the command).
fn key_of_tenant(tenant: Option<&str>, key: &Value, done: &str) -> anyhow::Result<()> {
    let Some(tenant) = tenant else { return Ok(()) };
    let (key_id, owner) = (text(&key["key_id"]), key["tenant_id"].as_str().context("the key holds no tenant_id (is this keytrail's admin API?)")?);
    if owner == tenant {
        return Ok(());
    }
    Err(super::usage(format!(
        "--tenant {tenant}: {key_id} is a key of tenant `{owner}`, not of `{tenant}`: {done} (give --tenant {owner} if that key is meant, or check the key id: `keytrail keys list` shows a consumer's keys)"
    )))
}

/// `keytrail keys show KEY_ID`: one key's facts (never its secret).
pub async fn keys_show(target: &Target, key_id: &str) -> anyhow::Result<()> {
    let client = AdminClient::from_env(&target.admin_url)?;
    let key_id = segment("the key id", key_id)?;
    let tenant = tenant_flag(target)?;
    let key = client.get(&format!("/v1/keys/{}", encode(key_id))).await?;
    key_of_tenant(tenant, &key, "it is not shown")?;
    if target.json {
        return print_json(&key);
    }
    let rows: Vec<Vec<String>> = [
        ("key_id", text(&key["key_id"])),
        ("tenant", text(&key["tenant_id"])),
        ("consumer", text(&key["consumer_id"])),
        ("hint", text(&key["hint"])),
        ("environment", text(&key["environment"])),
        ("status", text(&key["status"])),
        ("scopes", scopes(&key["scopes"])),
        ("created", text(&key["created_at"])),
        ("expires", text(&key["expires_at"])),
        ("revoked", text(&key["revoked_at"])),
        ("last used", text(&key["last_used_at"])),
        ("replaced by", text(&key["replaced_by"])),
    ]
    .into_iter()
    .map(|(name, value)| vec![name.to_string(), value])
    .collect();
    print(&aligned_table(&["field", "value"], &rows, |_| false))
}

/// `keytrail keys rotate KEY_ID`: prints the new key once.
pub async fn keys_rotate(target: &Target, key_id: &str, grace_secs: Option<u64>) -> anyhow::Result<()> {
    check_grace_secs(grace_secs)?;
    let client = AdminClient::from_env(&target.admin_url)?;
    let key_id = segment("the key id", key_id)?;
    let body = match grace_secs {
        Some(secs) => json!({"grace_seconds": secs}),
        None => json!({}),
    };
    check_key_tenant(&client, target, key_id).await?;
    let key = client.send_json(Method::POST, &format!("/v1/keys/{}/rotate", encode(key_id)), &body).await?;
    if target.json {
        return print_json(&key);
    }
    let old = &key["replaces"];
    let headline = format!(
        "Rotated {key_id}: it stays valid until {} (then `expired_key`); its successor is {}",
        old["expires_at"].as_str().unwrap_or("the end of its grace"),
        text(&key["key_id"])
    );
    new_key(&key, &headline)
}

/// `keytrail keys revoke KEY_ID`.
pub async fn keys_revoke(target: &Target, key_id: &str) -> anyhow::Result<()> {
    let client = AdminClient::from_env(&target.admin_url)?;
    let key_id = segment("the key id", key_id)?;
    check_key_tenant(&client, target, key_id).await?;
    let key = client.send_json(Method::POST, &format!("/v1/keys/{}/revoke", encode(key_id)), &json!({})).await?;
    if target.json {
        return print_json(&key);
    }
    print(&format!("Revoked {key_id} ({}): the gateway refuses it from now on\n", text(&key["hint"])))
}

/// `keytrail keys scopes KEY_ID --scope …`: replaces the key's scopes.
pub async fn keys_scopes(target: &Target, key_id: &str, scopes_given: Vec<String>) -> anyhow::Result<()> {
    check_scopes(&scopes_given)?;
    let client = AdminClient::from_env(&target.admin_url)?;
    let key_id = segment("the key id", key_id)?;
    check_key_tenant(&client, target, key_id).await?;
    let key = client.send_json(Method::PUT, &format!("/v1/keys/{}/scopes", encode(key_id)), &json!({"scopes": scopes_given})).await?;
    if target.json {
        return print_json(&key);
    }
    print(&format!("Scopes of {key_id} ({}) are now: {}\n", text(&key["hint"]), scopes(&key["scopes"])))
}

// ---------- audit ----------

/// The filters `keytrail audit …` passes on to the audit API (which checks
/// them and says what is wrong with one; those it refuses whatever the
/// data are refused first, [`AuditFilters::check`]).
#[derive(Debug, Default, Clone)]
pub struct AuditFilters {
    /// By id or name.
    pub consumer: Option<String>,
    pub api: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub status_min: Option<u16>,
    pub status_max: Option<u16>,
    pub event_type: Option<String>,
    pub category: Option<String>,
    /// The admin log's filters.
    pub admin_id: Option<String>,
    /// The admin log's and application events' `action`.
    pub action: Option<String>,
    /// Application events' filters.
    pub actor_id: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub hours: Option<u32>,
    pub days: Option<u32>,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// The audit API's limits on a window counted back from now: `hours` and
/// `days` from 1 to these (ten years and a bit).
pub const MAX_WINDOW_HOURS: u32 = 24 * 3660;
pub const MAX_WINDOW_DAYS: u32 = 3660;

impl AuditFilters {
    /// Refuses, as a usage error naming the flag, a filter the audit API
    /// refuses whatever the data, with the API's own limits: a status out
    /// of 100-999, `--status-min` over `--status-max`, `--hours`/`--days`
    /// out of range or together, a time that is no RFC 3339 time, `--from`
    /// after `--to` or with `--hours`/`--days`, a `--path` that does not
    /// start with `/`. The rest (and what depends on the clock, a window
    /// counted back from now that starts after `--to`) is the server's.
    pub fn check(&self) -> anyhow::Result<()> {
        let usage = |message: String| Err(super::usage(message));
        for (flag, status) in [("--status-min", self.status_min), ("--status-max", self.status_max)] {
            if let Some(status) = status.filter(|s| !(100..=999).contains(s)) {
                return usage(format!("{flag} {status}: give an HTTP status between 100 and 999"));
            }
        }
        if let (Some(min), Some(max)) = (self.status_min, self.status_max) {
            if min > max {
                return usage(format!("--status-min {min} is greater than --status-max {max}"));
            }
        }
        for (flag, n, max) in [("--hours", self.hours, MAX_WINDOW_HOURS), ("--days", self.days, MAX_WINDOW_DAYS)] {
            if let Some(n) = n.filter(|n| !(1..=max).contains(n)) {
                return usage(format!("{flag} {n}: give a number between 1 and {max}"));
            }
        }
        if self.hours.is_some() && self.days.is_some() {
            return usage("give either --hours or --days, not both".into());
        }
        let time = |flag: &str, value: &Option<String>| -> anyhow::Result<Option<chrono::DateTime<chrono::FixedOffset>>> {
            match value {
                None => Ok(None),
                Some(text) => match chrono::DateTime::parse_from_rfc3339(text.trim()) {
                    Ok(time) => Ok(Some(time)),
                    Err(_) => Err(super::usage(format!("{flag} `{text}` is not an RFC 3339 time: give one such as 2026-11-22T15:00:00Z"))),
                },
            }
        };
        let (from, to) = (time("--from", &self.from)?, time("--to", &self.to)?);
        if let (Some(from), Some(to)) = (from, to) {
            if from > to {
                return usage("--from is after --to: give the window's start first".into());
            }
        }
        if from.is_some() && (self.hours.is_some() || self.days.is_some()) {
            let window = if self.hours.is_some() { "--hours" } else { "--days" };
            return usage(format!("give either --from or {window} (which counts back from now), not both"));
        }
        if let Some(path) = self.path.as_deref().filter(|p| !p.starts_with('/')) {
            return usage(format!("--path `{path}` does not start with `/`: it matches paths by prefix, such as /orders"));
        }
        Ok(())
    }

    async fn params(&self, client: &AdminClient, tenant: &str) -> anyhow::Result<Vec<(&'static str, String)>> {
        let mut p = Vec::new();
        if let Some(c) = &self.consumer {
            p.push(("consumer_id", consumer_id(client, tenant, c).await?));
        }
        let texts = [
            ("api_id", &self.api),
            ("method", &self.method),
            ("path", &self.path),
            ("event_type", &self.event_type),
            ("category", &self.category),
            ("admin_id", &self.admin_id),
            ("action", &self.action),
            ("actor_id", &self.actor_id),
            ("resource_type", &self.resource_type),
            ("resource_id", &self.resource_id),
            ("from", &self.from),
            ("to", &self.to),
        ];
        p.extend(texts.into_iter().filter_map(|(name, v)| v.clone().map(|v| (name, v))));
        let numbers = [
            ("status_min", self.status_min.map(u32::from)),
            ("status_max", self.status_max.map(u32::from)),
            ("hours", self.hours),
            ("days", self.days),
        ];
        p.extend(numbers.into_iter().filter_map(|(name, v)| v.map(|v| (name, v.to_string()))));
        Ok(p)
    }
}

/// Which list `keytrail audit` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditList {
    /// `GET /v1/audit/{tenant}`: calls through the gateway.
    Calls,
    /// `GET /v1/audit/{tenant}/security`.
    Security,
    /// `GET /v1/audit/{tenant}/admin`: the admin activity log.
    Admin,
    /// `GET /v1/audit/{tenant}/events`: application events.
    App,
}

/// `keytrail audit list|security`: one page, newest first, and the
/// `--cursor` of the next.
pub async fn audit_list(target: &Target, which: AuditList, filters: &AuditFilters, limit: u32, cursor: Option<&str>) -> anyhow::Result<()> {
    filters.check()?;
    let client = AdminClient::from_env(&target.admin_url)?;
    let tenant = resolve_tenant(&client, target.tenant.as_deref()).await?;
    let mut params = filters.params(&client, &tenant).await?;
    params.push(("limit", limit.to_string()));
    if let Some(c) = cursor {
        params.push(("cursor", c.to_string()));
    }
    let (path, field) = match which {
        AuditList::Calls => (format!("/v1/audit/{}", encode(&tenant)), "logs"),
        AuditList::Security => (format!("/v1/audit/{}/security", encode(&tenant)), "events"),
        AuditList::Admin => (format!("/v1/audit/{}/admin", encode(&tenant)), "entries"),
        AuditList::App => (format!("/v1/audit/{}/events", encode(&tenant)), "events"),
    };
    let page = client.get(&with_query(&path, &params)).await?;
    let events = client.list(&page, field)?;
    if target.json {
        return print_json(&page);
    }
    let out = match which {
        AuditList::Calls => {
            let rows: Vec<Vec<String>> = events
                .iter()
                .map(|e| {
                    vec![
                        text(&e["timestamp"]),
                        text(&e["status_code"]),
                        text(&e["method"]),
                        text(&e["path"]),
                        text(&e["consumer_id"]),
                        text(&e["key_hint"]),
                        text(&e["client_ip"]),
                        e["latency_ms"].as_f64().map_or_else(|| "-".to_string(), |ms| format!("{ms:.1}")),
                        text(&e["error_code"]),
                    ]
                })
                .collect();
            // The status and the milliseconds right-aligned, as numbers.
            aligned_table(&["time", "status", "method", "path", "consumer", "key", "client ip", "ms", "error"], &rows, |c| c == 1 || c == 7)
        }
        AuditList::Security => {
            let rows: Vec<Vec<String>> = events
                .iter()
                .map(|e| vec![text(&e["timestamp"]), text(&e["event_type"]), text(&e["outcome"]), text(&e["actor"]), text(&e["target"]), text(&e["client_ip"])])
                .collect();
            aligned_table(&["time", "event", "outcome", "actor", "target", "client ip"], &rows, |_| false)
        }
        AuditList::Admin => {
            let rows: Vec<Vec<String>> = events
                .iter()
                .map(|e| vec![text(&e["timestamp"]), text(&e["admin"]), text(&e["action"]), text(&e["resource"]), text(&e["outcome"]), text(&e["client_ip"])])
                .collect();
            aligned_table(&["time", "admin", "action", "resource", "outcome", "client ip"], &rows, |_| false)
        }
        AuditList::App => {
            let rows: Vec<Vec<String>> = events
                .iter()
                .map(|e| {
                    let resource = match (e["resource_type"].as_str(), e["resource_id"].as_str()) {
                        (Some(t), Some(id)) => format!("{t}/{id}"),
                        (Some(t), None) => t.to_string(),
                        _ => "-".to_string(),
                    };
                    vec![text(&e["timestamp"]), text(&e["action"]), text(&e["actor_id"]), resource, text(&e["submitted_by"])]
                })
                .collect();
            aligned_table(&["time", "action", "actor", "resource", "submitted by"], &rows, |_| false)
        }
    };
    print(&out)?;
    if let Some(next) = page["next_cursor"].as_str() {
        print(&format!("more: add --cursor {next}\n"))?;
    }
    Ok(())
}

/// Opens `partial` for an export into `output`, emptied, locked for as long
/// as the file is held: another export into the same file at the same time
/// is refused rather than let write into it (or delete it when it fails).
fn claim_partial(partial: &Path, output: &Path) -> anyhow::Result<std::fs::File> {
    let busy = || anyhow::anyhow!("--output: another export is writing {} now ({} is held): wait for it to end, or give another file", output.display(), partial.display());
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(partial)
        .with_context(|| format!("--output: cannot create {}", partial.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Err(busy()),
        Err(std::fs::TryLockError::Error(e)) => return Err(e).with_context(|| format!("--output: cannot lock {}", partial.display())),
    }
    // The export that held it may have renamed it into place between the
    // open and the lock: the name must still be this file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        let held = file.metadata().with_context(|| format!("--output: cannot read {}", partial.display()))?;
        match std::fs::metadata(partial) {
            Ok(named) if named.dev() == held.dev() && named.ino() == held.ino() => {}
            _ => return Err(busy()),
        }
    }
    file.set_len(0).with_context(|| format!("--output: cannot empty {}", partial.display()))?;
    Ok(file)
}

/// `keytrail audit export --format csv|json`: streamed to `output` (written
/// beside it first and renamed once whole, so a cut export never stands as
/// a whole one) or to standard output.
pub async fn audit_export(target: &Target, format: &str, filters: &AuditFilters, output: Option<&Path>) -> anyhow::Result<()> {
    if !matches!(format, "csv" | "json") {
        return Err(super::usage(format!("--format `{format}`: give csv or json")));
    }
    if target.json {
        return Err(super::usage("--json does not apply to an export, which is written as it comes: give --format json for a JSON export"));
    }
    filters.check()?;
    // `-o -`: standard output, as `-` means for curl, tar or jq.
    let output = output.filter(|o| o.as_os_str() != "-");
    // A directory is no file to write: said before anything is asked (it
    // was downloaded whole into `<dir>.partial`, left there when the
    // rename onto the directory failed).
    if let Some(output) = output {
        let slash = output.as_os_str().to_string_lossy().ends_with(['/', std::path::MAIN_SEPARATOR]);
        if slash || output.is_dir() || output.file_name().is_none() {
            return Err(super::usage(format!(
                "--output {} is a directory: give a file name, such as {}",
                output.display(),
                output.join(format!("export.{format}")).display()
            )));
        }
    }
    let client = AdminClient::from_env(&target.admin_url)?;
    let tenant = resolve_tenant(&client, target.tenant.as_deref()).await?;
    let params = filters.params(&client, &tenant).await?;
    let path = with_query(&format!("/v1/audit/{}/export/{format}", encode(&tenant)), &params);
    // On standard error; not while the export itself scrolls by on the terminal.
    let shown = super::progress::wanted()? && (output.is_some() || !std::io::stdout().is_terminal());
    let mut progress = Progress::new("exporting", shown);
    let Some(output) = output else {
        let mut out = Counted { inner: std::io::stdout().lock(), progress: &mut progress };
        client.download(&path, &mut out).await?;
        return Ok(());
    };
    let name = output.file_name().with_context(|| format!("--output {}: not a file name", output.display()))?;
    let mut partial_name = name.to_os_string();
    partial_name.push(".partial");
    let partial = output.with_file_name(partial_name);
    let mut file = claim_partial(&partial, output)?;
    // Stopped midway (Ctrl-C, SIGTERM), as cut short by the server: no
    // file is left, the `.partial` included; the exit code says which
    // signal (130, 143), as a shell's for a command the signal ended.
    let mut counted = Counted { inner: &mut file, progress: &mut progress };
    let downloaded = tokio::select! {
        result = client.download(&path, &mut counted) => result,
        signal = super::stop_signal_which() => Err(anyhow::Error::new(super::Interrupted {
            signal,
            message: "the export was stopped before its end, and no file was written".into(),
        })),
    };
    let written = match downloaded {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    progress.finish();
    // Not whole in place: no file is left, partial or not.
    let placed = file
        .sync_all()
        .with_context(|| format!("writing {}", partial.display()))
        .and_then(|()| std::fs::rename(&partial, output).with_context(|| format!("cannot rename {} to {}", partial.display(), output.display())));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    // The summary goes to stderr: stdout may be the export's neighbour in a pipe.
    // Not `eprintln!`: a closed stderr must not make a whole export fail.
    let _ = writeln!(std::io::stderr().lock(), "wrote {written} bytes of tenant {tenant}'s {format} export to {}", output.display());
    Ok(())
}
