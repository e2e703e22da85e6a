//! The alert engine: reads each tenant's committed events after where it
//! last stopped, feeds them to the tenant's rules, records each firing as
//! an `alert_fired` event, and posts it to the rule's webhook.
//!
//! One task, woken every `alerts.poll_interval_ms`; the reading runs on a
//! blocking thread (an [`AuditReader`] per turn, so new day files are
//! seen). Its position per tenant (`alert_cursors` in `control.db`) moves
//! only once the turn's `alert_fired` events are committed: a crash
//! between the two fires those alerts again, never loses one. After a
//! restart, the events before that position that can still matter (the
//! longest window or cooldown back) are replayed without firing, so every
//! rule's counts are as they were. Webhooks are posted by tasks of their
//! own, tried again with growing waits; a delivery that fails every try
//! is recorded as `alert_delivery_failed`. When the process stops, the
//! engine waits for the tries being made (each bounded by
//! `alerts.webhook_timeout_ms`) and makes no more: a delivery still owed
//! one is recorded as `alert_delivery_failed` too, so none is lost unseen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::watch;

use super::{fired_event, webhook, AlertRule, Firing, RuleState};
use crate::audit::AuditPipeline;
use crate::config::AlertsConfig;
use crate::control::ControlPlane;
use crate::event::{format_timestamp, new_id, now_ms, security_type, Category, Event};
use crate::store::audit::reader::AuditReader;
use crate::store::StoreError;

/// The most events one tenant's turn reads; the rest wait for the next turn.
const EVENTS_PER_TURN: u64 = 200_000;

/// What the engine did for one rule since the start (`GET …/alerts`).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RuleStatus {
    pub fired: u64,
    #[serde(serialize_with = "crate::store::ser_opt_ts")]
    pub last_fired_at: Option<i64>,
    pub deliveries_succeeded: u64,
    pub deliveries_failed: u64,
    /// Why the last failed try failed (the answer's status, or the
    /// connection's error); never the webhook's path or query.
    pub last_delivery_error: Option<String>,
}

/// What the engine as a whole did since the start (`GET /v1/status`).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct EngineStatus {
    /// Rules in `control.db` at the last turn, enabled or not.
    pub rules: u64,
    pub turns: u64,
    #[serde(serialize_with = "crate::store::ser_opt_ts")]
    pub last_turn_at: Option<i64>,
    /// Events read and checked against the rules since the start.
    pub events_read: u64,
    /// Events committed but not read yet at the end of the last turn, over
    /// every tenant with rules: how far the engine is behind.
    pub behind: u64,
    /// Why the last turn, or a tenant's part of it, failed; `None` once
    /// one goes through.
    pub last_error: Option<String>,
}

/// Every rule's [`RuleStatus`], by tenant and rule id, and the engine's.
#[derive(Debug, Default)]
pub struct StatusBoard {
    rules: Mutex<HashMap<(String, String), RuleStatus>>,
    engine: Mutex<EngineStatus>,
}

impl StatusBoard {
    pub fn engine(&self) -> EngineStatus {
        self.engine.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn engine_turned(&self, change: impl FnOnce(&mut EngineStatus)) {
        let mut engine = self.engine.lock().unwrap_or_else(|e| e.into_inner());
        (engine.turns, engine.last_turn_at) = (engine.turns + 1, Some(now_ms()));
        change(&mut engine);
    }

    pub fn get(&self, tenant_id: &str, rule_id: &str) -> RuleStatus {
        self.lock().get(&(tenant_id.to_string(), rule_id.to_string())).cloned().unwrap_or_default()
    }

    pub(crate) fn forget(&self, tenant_id: &str, rule_id: &str) {
        self.lock().remove(&(tenant_id.to_string(), rule_id.to_string()));
    }

    fn update(&self, rule: &AlertRule, change: impl FnOnce(&mut RuleStatus)) {
        change(self.lock().entry((rule.tenant_id.clone(), rule.id.clone())).or_default());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), RuleStatus>> {
        self.rules.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One tenant's rules and where its trail was read to.
struct TenantRun {
    cursor: u64,
    cursor_ms: i64,
    /// Read from `control.db` at this run's start: the events up to it are
    /// replayed (without firing) before the rules see new ones.
    replay_through: Option<u64>,
    /// With no stored position: the first read starts at the blocks that
    /// reach the earliest rule's time (events before it count for no rule).
    first_from_ms: Option<i64>,
    rules: HashMap<String, RuleState>,
}

pub struct AlertEngine {
    control: Arc<ControlPlane>,
    audit: Arc<AuditPipeline>,
    config: AlertsConfig,
    tenants: HashMap<String, TenantRun>,
    /// The webhook deliveries under way.
    deliveries: tokio::task::JoinSet<()>,
    /// Set when the engine stops: deliveries make no more tries.
    stopping: watch::Sender<bool>,
}

impl AlertEngine {
    pub fn new(control: Arc<ControlPlane>, audit: Arc<AuditPipeline>, config: AlertsConfig) -> AlertEngine {
        AlertEngine { control, audit, config, tenants: HashMap::new(), deliveries: tokio::task::JoinSet::new(), stopping: watch::Sender::new(false) }
    }

    /// Turns every poll interval until `shutdown` says stop.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.config.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(error) = self.turn().await {
                        tracing::warn!(%error, "the alert engine's turn failed; it tries again at the next");
                        self.control.alert_status().engine_turned(|e| e.last_error = Some(error.to_string()));
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        // The tries being made end (each within the webhook timeout); the
        // deliveries owed another record that they were not made.
        self.stopping.send_replace(true);
        while self.deliveries.join_next().await.is_some() {}
    }

    /// Reads what was committed since the last turn, records the firings,
    /// moves the positions, posts the webhooks.
    pub async fn turn(&mut self) -> Result<(), StoreError> {
        let control = self.control.clone();
        let rules = blocking(move || control.all_alert_rules()).await?;
        if rules.is_empty() {
            self.tenants.clear();
            self.control.alert_status().engine_turned(|e| (e.rules, e.behind, e.last_error) = (0, 0, None));
            return Ok(());
        }
        let mut wanted: HashMap<String, Vec<Arc<AlertRule>>> = HashMap::new();
        for rule in rules {
            wanted.entry(rule.tenant_id.clone()).or_default().push(Arc::new(rule));
        }
        let (control, dir) = (self.control.clone(), self.audit.dir().to_path_buf());
        let mut tenants = std::mem::take(&mut self.tenants);
        tenants.retain(|tenant, _| wanted.contains_key(tenant));
        let rule_count = wanted.values().map(Vec::len).sum::<usize>() as u64;
        let (tenants, firings, moved, read) = blocking(move || {
            let reader = AuditReader::open(&dir)?;
            let (mut firings, mut moved, mut read) = (Vec::new(), Vec::new(), Turn::default());
            for (tenant, rules) in wanted {
                // One tenant's failure (a day file it cannot read) holds up
                // none of the others: it is tried again at the next turn.
                let mut run = match tenants.remove(&tenant).map_or_else(|| start_run(&control, &tenant, &rules), Ok) {
                    Ok(run) => run,
                    Err(error) => {
                        read.failed(&tenant, error);
                        continue;
                    }
                };
                let (before, fired_before) = (run.cursor, firings.len());
                if let Err(error) = read_tenant(&reader, &tenant, &rules, &mut run, &mut firings) {
                    // Its rules may have counted part of what was read:
                    // the next turn starts the tenant again from its
                    // stored position, replaying, and fires what this one
                    // would have.
                    firings.truncate(fired_before);
                    read.failed(&tenant, error);
                    continue;
                }
                match reader.chain_head(&tenant) {
                    Ok(head) => read.behind += head.saturating_sub(run.cursor),
                    Err(error) => read.failed(&tenant, error),
                }
                read.events += run.cursor - before;
                if run.cursor != before {
                    moved.push((tenant.clone(), run.cursor, run.cursor_ms));
                }
                tenants.insert(tenant, run);
            }
            Ok((tenants, firings, moved, read))
        })
        .await?;
        self.tenants = tenants;
        self.control.alert_status().engine_turned(|e| {
            (e.rules, e.events_read, e.behind, e.last_error) = (rule_count, e.events_read + read.events, read.behind, read.error);
        });

        let mut recorded = Vec::new();
        let mut commits = Vec::new();
        for firing in firings {
            let alert_id = new_id();
            let event = fired_event(&firing, &alert_id);
            let at = event.timestamp_ms;
            commits.extend(self.audit.record_committed(event));
            self.control.alert_status().update(&firing.rule, |s| (s.fired, s.last_fired_at) = (s.fired + 1, Some(at)));
            recorded.push((firing, alert_id, at));
        }
        for commit in commits {
            // A pipeline that stops drops the sender: the position then
            // stays, and the next start fires these again.
            if commit.await.is_err() {
                return Ok(());
            }
        }
        let control = self.control.clone();
        blocking(move || moved.iter().try_for_each(|(tenant, seq, ms)| control.set_alert_cursor(tenant, *seq, *ms))).await?;
        while self.deliveries.try_join_next().is_some() {}
        for (firing, alert_id, at) in recorded {
            if let Some(url) = firing.rule.spec.webhook_url.clone() {
                let delivery = Delivery { control: self.control.clone(), audit: self.audit.clone(), config: self.config.clone(), stopping: self.stopping.subscribe() };
                self.deliveries.spawn(delivery.run(firing, alert_id, at, url));
            }
        }
        Ok(())
    }
}

/// What one turn read, over its tenants.
#[derive(Default)]
struct Turn {
    events: u64,
    behind: u64,
    error: Option<String>,
}

impl Turn {
    fn failed(&mut self, tenant: &str, error: StoreError) {
        tracing::warn!(tenant, %error, "the alert engine could not read a tenant's trail; it tries again at the next turn");
        self.error = Some(format!("tenant `{tenant}`: {error}"));
    }
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T, StoreError> + Send + 'static) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| StoreError::Corrupt(format!("the alert engine's reader stopped: {e}")))?
}

/// A tenant's first turn since the start: from its stored position (with
/// the replay of what can still matter), or, with none (its first rule is
/// new), from the time of its earliest rule — the events committed since
/// then and before this turn count too.
fn start_run(control: &ControlPlane, tenant: &str, rules: &[Arc<AlertRule>]) -> Result<TenantRun, StoreError> {
    Ok(match control.alert_cursor(tenant)? {
        Some((seq, ms)) => TenantRun { cursor: seq, cursor_ms: ms, replay_through: Some(seq), first_from_ms: None, rules: HashMap::new() },
        None => {
            let since = rules.iter().map(|r| r.updated_at).min().unwrap_or_else(now_ms);
            TenantRun { cursor: 0, cursor_ms: since, replay_through: None, first_from_ms: Some(since), rules: HashMap::new() }
        }
    })
}

/// Feeds the tenant's new events to its rules (a new or changed rule
/// starts with no counts), after replaying, on a run's first turn, the
/// events before its position that are within the rules' longest history.
fn read_tenant(reader: &AuditReader, tenant: &str, rules: &[Arc<AlertRule>], run: &mut TenantRun, firings: &mut Vec<Firing>) -> Result<(), StoreError> {
    run.rules.retain(|id, state| rules.iter().any(|r| &r.id == id && r.updated_at == state.rule.updated_at));
    for rule in rules {
        match run.rules.get_mut(&rule.id) {
            // The same rule, its counts kept; its webhook secret may have
            // been rotated since, which the next post must sign with.
            Some(state) => state.rule = rule.clone(),
            None => drop(run.rules.insert(rule.id.clone(), RuleState::new(rule.clone()))),
        }
    }
    let states = &mut run.rules;
    let mut texts: Vec<_> = rules.iter().flat_map(|r| r.spec.texts()).collect();
    texts.sort_unstable_by_key(|t| t.index());
    texts.dedup();
    if let Some(through) = run.replay_through.take() {
        let history = rules.iter().map(|r| r.spec.history_ms()).max().unwrap_or(0);
        reader.events_after(tenant, 0, Some(run.cursor_ms.saturating_sub(history)), &texts, |event| {
            if event.seq > through {
                return false;
            }
            states.values_mut().for_each(|state| drop(state.observe(event)));
            true
        })?;
    }
    let (mut cursor, mut cursor_ms, mut read) = (run.cursor, run.cursor_ms, 0);
    reader.events_after(tenant, run.cursor, run.first_from_ms.take(), &texts, |event| {
        firings.extend(states.values_mut().filter_map(|state| state.observe(event)));
        (cursor, cursor_ms, read) = (event.seq, event.timestamp_ms, read + 1);
        read < EVENTS_PER_TURN
    })?;
    (run.cursor, run.cursor_ms) = (cursor, cursor_ms);
    Ok(())
}

/// The JSON a webhook receives.
pub fn payload(firing: &Firing, alert_id: &str, fired_at_ms: i64) -> serde_json::Value {
    let rule = &firing.rule;
    serde_json::json!({
        "type": security_type::ALERT_FIRED,
        "alert_id": alert_id,
        "tenant_id": rule.tenant_id,
        "rule_id": rule.id,
        "description": rule.spec.description,
        "count": firing.count,
        "threshold": rule.spec.threshold,
        "window_secs": rule.spec.window_secs,
        "group_by": rule.spec.group_by.map(super::GroupBy::as_str),
        "group": firing.group,
        "first_seq": firing.first_seq,
        "last_seq": firing.last_seq,
        "first_at": format_timestamp(firing.first_ms),
        "last_at": format_timestamp(firing.last_ms),
        "fired_at": format_timestamp(fired_at_ms),
    })
}

/// What a webhook delivery needs of the engine.
struct Delivery {
    control: Arc<ControlPlane>,
    audit: Arc<AuditPipeline>,
    config: AlertsConfig,
    /// Becomes true when the engine stops.
    stopping: watch::Receiver<bool>,
}

impl Delivery {
    /// Posts a firing to its webhook, trying again after `webhook_backoff`,
    /// then four times longer each time; records `alert_delivery_failed`
    /// when every try failed, or when the engine stopped before the next.
    async fn run(mut self, firing: Firing, alert_id: String, at: i64, url: String) {
        let (control, config) = (self.control.clone(), self.config.clone());
        // During a secret's rotation, the old secret signs too (see `webhook::signatures`).
        let secrets = control.webhook_signing_secrets(&firing.rule, now_ms());
        if secrets.is_empty() {
            return;
        }
        let body = Bytes::from(serde_json::to_vec(&payload(&firing, &alert_id, at)).expect("JSON serialises"));
        let mut wait = config.webhook_backoff;
        let mut last_error = String::new();
        let mut tries = 0;
        while tries < config.webhook_attempts {
            tries += 1;
            match webhook::post(&url, body.clone(), &secrets, &alert_id, control.upstream_guard(), config.webhook_timeout).await {
                Ok(status) if (200..300).contains(&status) => {
                    control.alert_status().update(&firing.rule, |s| s.deliveries_succeeded += 1);
                    return;
                }
                Ok(status) => last_error = format!("the webhook answered {status}"),
                Err(error) => last_error = crate::redact::redact(&error).into_owned(),
            }
            control.alert_status().update(&firing.rule, |s| s.last_delivery_error = Some(last_error.clone()));
            if tries < config.webhook_attempts {
                let stopped = tokio::select! {
                    _ = tokio::time::sleep(wait) => false,
                    _ = self.stopping.wait_for(|stopping| *stopping) => true,
                };
                if stopped || *self.stopping.borrow() {
                    last_error = format!("{last_error}; keytrail stopped before the next try");
                    break;
                }
                wait = wait.saturating_mul(4);
            }
        }
        self.failed(&firing, alert_id, &url, last_error, tries);
    }

    fn failed(&self, firing: &Firing, alert_id: String, url: &str, last_error: String, tries: u32) {
        self.control.alert_status().update(&firing.rule, |s| s.deliveries_failed += 1);
        let rule = &firing.rule;
        tracing::warn!(tenant = %rule.tenant_id, rule = %rule.id, webhook = %webhook::describe(url), error = %last_error, "an alert's webhook could not be delivered");
        let mut event = Event::new(rule.tenant_id.as_str(), Category::Security, security_type::ALERT_DELIVERY_FAILED, "failure");
        event.actor = Some(super::ACTOR.into());
        event.target = Some(format!("alert:{}", rule.id));
        event.request_id = Some(alert_id);
        event.error_message = Some(last_error);
        event.details = Some(serde_json::json!({
            "rule_id": rule.id,
            "attempts": tries,
            "webhook": webhook::describe(url),
        }));
        self.audit.record(event);
    }
}
