//! `keytrail alerts list|create|enable|disable|delete`: a tenant's alert
//! rules over the admin API. The rules' checks are the server's; a rule id
//! no rule can have is a usage error, said before anything is sent. A new
//! rule's webhook secret is printed once, by `create`.

use anyhow::Context as _;
use hyper::Method;
use serde_json::{json, Map, Value};

use super::client::{encode, AdminClient};
use super::manage::{consumer_id, print, print_json, text};
use super::{aligned_table, resolve_tenant, usage, Target};

/// What `keytrail alerts create` asks for.
#[derive(Debug, Default)]
pub struct NewRule {
    pub id: String,
    pub description: Option<String>,
    pub event_type: Option<String>,
    pub category: Option<String>,
    pub outcome: Option<String>,
    pub status_min: Option<u16>,
    pub status_max: Option<u16>,
    pub api: Option<String>,
    /// By id or name.
    pub consumer: Option<String>,
    pub path_prefix: Option<String>,
    pub threshold: u32,
    pub window_secs: u32,
    pub group_by: Option<String>,
    pub cooldown_secs: Option<u32>,
    pub webhook_url: Option<String>,
    pub disabled: bool,
}

fn check_rule_id(id: &str) -> anyhow::Result<()> {
    if crate::control::is_id_text(id) {
        Ok(())
    } else {
        Err(usage(format!("`{}` is no alert rule's id (1-63 characters of a-z, 0-9, `-` and `_`)", crate::redact::redact(id))))
    }
}

fn rule_path(tenant: &str, id: &str) -> String {
    format!("/v1/tenants/{}/alerts/{}", encode(tenant), encode(id))
}

/// What a rule counts, in one line: `event_type=auth_failed status>=500`.
fn matched(rule: &Value) -> String {
    let Some(fields) = rule["match"].as_object() else { return "-".into() };
    let parts: Vec<String> = fields
        .iter()
        .map(|(name, value)| match name.as_str() {
            "status_min" => format!("status>={}", text(value)),
            "status_max" => format!("status<={}", text(value)),
            _ => format!("{name}={}", text(value)),
        })
        .collect();
    parts.join(" ")
}

/// The webhook as `host:port`, never its path or query.
fn webhook(rule: &Value) -> String {
    rule["webhook_url"].as_str().map_or_else(|| "-".to_string(), crate::alerts::webhook::describe)
}

/// `keytrail alerts list`.
pub async fn alerts_list(target: &Target) -> anyhow::Result<()> {
    let client = AdminClient::from_env(&target.admin_url)?;
    let tenant = resolve_tenant(&client, target.tenant.as_deref()).await?;
    let answer = client.get(&format!("/v1/tenants/{}/alerts", encode(&tenant))).await?;
    let rules = client.list(&answer, "alerts")?;
    if target.json {
        return print_json(&answer);
    }
    let rows: Vec<Vec<String>> = rules
        .iter()
        .map(|r| {
            let status = &r["status"];
            vec![
                text(&r["id"]),
                if r["enabled"] == json!(false) { "no".into() } else { "yes".into() },
                matched(r),
                format!("{} in {} s", text(&r["threshold"]), text(&r["window_secs"])),
                text(&r["group_by"]),
                webhook(r),
                text(&status["fired"]),
                text(&status["last_fired_at"]),
                format!("{} ok, {} failed", text(&status["deliveries_succeeded"]), text(&status["deliveries_failed"])),
            ]
        })
        .collect();
    print(&format!("Alert rules of tenant {tenant}\n"))?;
    print(&aligned_table(&["id", "enabled", "counts", "fires at", "per", "webhook", "fired", "last fired", "deliveries"], &rows, |_| false))
}

/// `keytrail alerts create ID …`: prints the rule, and its webhook secret once.
pub async fn alerts_create(target: &Target, new: NewRule) -> anyhow::Result<()> {
    check_rule_id(&new.id)?;
    let client = AdminClient::from_env(&target.admin_url)?;
    let tenant = resolve_tenant(&client, target.tenant.as_deref()).await?;
    let mut matcher = Map::new();
    for (field, value) in [("event_type", &new.event_type), ("category", &new.category), ("outcome", &new.outcome), ("api_id", &new.api), ("path_prefix", &new.path_prefix)] {
        if let Some(value) = value {
            matcher.insert(field.into(), json!(value));
        }
    }
    for (field, value) in [("status_min", new.status_min), ("status_max", new.status_max)] {
        if let Some(value) = value {
            matcher.insert(field.into(), json!(value));
        }
    }
    if let Some(consumer) = &new.consumer {
        matcher.insert("consumer_id".into(), json!(consumer_id(&client, &tenant, consumer).await?));
    }
    if matcher.is_empty() {
        return Err(usage(
            "give what the rule counts: at least one of --event-type, --category, --outcome, --status-min, --status-max, --api, --consumer, --path-prefix",
        ));
    }
    let mut body = json!({"id": new.id, "match": matcher, "threshold": new.threshold, "window_secs": new.window_secs, "enabled": !new.disabled});
    for (field, value) in [("description", new.description.map(Value::from)), ("group_by", new.group_by.map(Value::from)), ("cooldown_secs", new.cooldown_secs.map(Value::from)), ("webhook_url", new.webhook_url.map(Value::from))] {
        if let Some(value) = value {
            body[field] = value;
        }
    }
    let rule = client.send_json(Method::POST, &format!("/v1/tenants/{}/alerts", encode(&tenant)), &body).await?;
    if target.json {
        return print_json(&rule);
    }
    let mut out = format!(
        "Created alert rule {} in tenant {tenant}: fires at {} events in {} s{} ({})\n",
        text(&rule["id"]),
        text(&rule["threshold"]),
        text(&rule["window_secs"]),
        rule["group_by"].as_str().map_or(String::new(), |by| format!(" per {by}")),
        matched(&rule),
    );
    if let Some(secret) = rule["webhook_secret"].as_str() {
        out.push_str(&format!(
            "Posts to {}, signed with this secret, shown this once (keytrail keeps none):\n{secret}\n",
            webhook(&rule)
        ));
    }
    print(&out)
}

/// `keytrail alerts enable|disable ID`: the rule as it is, `enabled` changed
/// (it counts afresh from now).
pub async fn alerts_set_enabled(target: &Target, id: &str, enabled: bool) -> anyhow::Result<()> {
    check_rule_id(id)?;
    let client = AdminClient::from_env(&target.admin_url)?;
    let tenant = resolve_tenant(&client, target.tenant.as_deref()).await?;
    let path = rule_path(&tenant, id);
    let rule = client.get(&path).await?;
    let mut spec = Map::new();
    for field in ["description", "match", "threshold", "window_secs", "group_by", "cooldown_secs", "webhook_url"] {
        if let Some(value) = rule.get(field).filter(|v| !v.is_null()) {
            spec.insert(field.into(), value.clone());
        }
    }
    spec.insert("enabled".into(), json!(enabled));
    let rule = client.send_json(Method::PUT, &path, &Value::Object(spec)).await?;
    if target.json {
        return print_json(&rule);
    }
    print(&format!("Alert rule {id} of tenant {tenant} is {}\n", if enabled { "enabled: it counts afresh from now" } else { "disabled" }))
}

/// `keytrail alerts delete ID`.
/// `keytrail alerts rotate-secret ID [--grace-secs N]`: prints the new
/// secret once, and until when the old one signs too.
pub async fn alerts_rotate_secret(target: &Target, id: &str, grace_secs: Option<u64>) -> anyhow::Result<()> {
    check_rule_id(id)?;
    super::manage::check_grace_secs(grace_secs)?;
    let client = AdminClient::from_env(&target.admin_url)?;
    let tenant = resolve_tenant(&client, target.tenant.as_deref()).await?;
    let body = grace_secs.map_or_else(|| json!({}), |secs| json!({"grace_seconds": secs}));
    let rule = client.send_json(Method::POST, &format!("{}/rotate-secret", rule_path(&tenant, id)), &body).await?;
    if target.json {
        return print_json(&rule);
    }
    let secret = rule["webhook_secret"].as_str().context("the answer holds no webhook_secret (is this keytrail's admin API?)")?;
    let old = match rule["previous_secret_expires_at"].as_str() {
        Some(until) => format!("the old one signs beside it until {until}"),
        None => "the old one no longer signs".to_string(),
    };
    print(&format!(
        "Rotated the webhook secret of alert rule {id} in tenant {tenant} ({old}); posts to {}, signed with this secret, shown this once (keytrail keeps none):\n{secret}\n",
        webhook(&rule)
    ))
}

pub async fn alerts_delete(target: &Target, id: &str) -> anyhow::Result<()> {
    check_rule_id(id)?;
    let client = AdminClient::from_env(&target.admin_url)?;
    let tenant = resolve_tenant(&client, target.tenant.as_deref()).await?;
    client.delete(&rule_path(&tenant, id)).await?;
    if target.json {
        return print_json(&json!({"deleted": id, "tenant_id": tenant}));
    }
    print(&format!("Deleted alert rule {id} of tenant {tenant}\n"))
}
