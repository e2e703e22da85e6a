//! Alerts: per-tenant rules over the committed audit trail.
//!
//! A rule counts the events that match it (by type, category, outcome,
//! status, api, consumer, path), per group (the caller's address, the
//! consumer, the api, or all together), and fires when `threshold` of them
//! fall within `window_secs` — at most once per group per `cooldown_secs`.
//! A firing is recorded as an `alert_fired` security event in the tenant's
//! own trail and, when the rule names a webhook, posted to it, signed with a
//! secret derived from the data directory's signing key (never stored;
//! `ktwh_…`, masked in every output like keys and tokens).
//!
//! The engine ([`engine`]) reads committed events by sequence number, so a
//! slow or dead webhook never holds up or loses an event, and a restart
//! goes on where it stopped. Time is the events' own: a rule's state is a
//! function of the rule and the events, replayed exactly after a restart.
//!
//! This module holds the rules, their checks and the evaluation; it does
//! no IO.

pub mod engine;
pub mod webhook;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::event::{security_type, Category, Event};
use crate::store::audit::block::TextField;

/// The most rules one tenant may have.
pub const MAX_RULES_PER_TENANT: u64 = 100;
/// The most groups one rule keeps counts for; past it, the group whose
/// last event is oldest is forgotten.
pub const MAX_GROUPS_PER_RULE: usize = 10_000;
pub const MAX_THRESHOLD: u32 = 10_000;
pub const MAX_WINDOW_SECS: u32 = 86_400;
/// The actor of the events the engine records.
pub const ACTOR: &str = "keytrail:alerts";
/// The domain webhook secrets are derived under (see [`crate::signing::Signer::derive_secret`]).
pub const SECRET_DOMAIN: &str = "keytrail-webhook-secret-v1";

/// Which events a rule counts. Every field given must match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<Category>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_min: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_max: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_id: Option<String>,
    /// Matches paths that start with this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
}

/// What a rule counts apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    ClientIp,
    Consumer,
    Api,
}

impl GroupBy {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::ClientIp => "client_ip",
            GroupBy::Consumer => "consumer",
            GroupBy::Api => "api",
        }
    }

    /// The event's value of this group; `None` when it has none (such an
    /// event is not counted).
    fn of(self, event: &Event) -> Option<&str> {
        match self {
            GroupBy::ClientIp => event.client_ip.as_deref(),
            GroupBy::Consumer => event.consumer_id.as_deref(),
            GroupBy::Api => event.api_id.as_deref(),
        }
    }
}

/// A rule as an admin writes it (the id comes from the path or the body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(rename = "match")]
    pub matcher: Match,
    pub threshold: u32,
    pub window_secs: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<GroupBy>,
    /// The shortest time between two firings for one group; the window by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_secs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

fn is_word(text: &str, max: usize) -> bool {
    (1..=max).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl RuleSpec {
    /// Refuses what no rule can be, naming the field. The webhook's
    /// address is checked by [`webhook::check_url`].
    pub fn check(&self) -> Result<(), ApiError> {
        if let Some(text) = &self.description {
            if text.chars().count() > 200 || text.chars().any(char::is_control) {
                return Err(ApiError::invalid_body("`description` must be at most 200 characters, without control characters"));
            }
            if crate::redact::holds_secret(text) {
                return Err(ApiError::invalid_body("`description` must not hold an API key or token"));
            }
        }
        let m = &self.matcher;
        if *m == Match::default() {
            return Err(ApiError::invalid_body(
                "`match` needs at least one of `event_type`, `category`, `outcome`, `status_min`, `status_max`, `api_id`, `consumer_id`, `path_prefix`",
            ));
        }
        if let Some(kind) = &m.event_type {
            if !is_word(kind, 64) {
                return Err(ApiError::invalid_body("`match.event_type` must be 1-64 characters of a-z, 0-9 and `_`"));
            }
            if kind == security_type::ALERT_FIRED || kind == security_type::ALERT_DELIVERY_FAILED {
                return Err(ApiError::invalid_body(format!("`match.event_type` cannot be `{kind}`: alerts do not count their own events")));
            }
        }
        if m.outcome.as_deref().is_some_and(|o| !is_word(o, 32)) {
            return Err(ApiError::invalid_body("`match.outcome` must be 1-32 characters of a-z, 0-9 and `_` (e.g. `success`, `failure`)"));
        }
        for (field, status) in [("status_min", m.status_min), ("status_max", m.status_max)] {
            if status.is_some_and(|s| !(100..=599).contains(&s)) {
                return Err(ApiError::invalid_body(format!("`match.{field}` must be an HTTP status from 100 to 599")));
            }
        }
        if let (Some(low), Some(high)) = (m.status_min, m.status_max) {
            if low > high {
                return Err(ApiError::invalid_body("`match.status_min` must not be above `match.status_max`"));
            }
        }
        if m.api_id.as_deref().is_some_and(|id| !crate::control::is_id_text(id)) {
            return Err(ApiError::invalid_body("`match.api_id` must be 1-63 characters of a-z, 0-9, `-` and `_`"));
        }
        // Consumer ids are keytrail's (`cons_` and base62), any case.
        let consumer_id = |id: &str| (1..=63).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if m.consumer_id.as_deref().is_some_and(|id| !consumer_id(id)) {
            return Err(ApiError::invalid_body("`match.consumer_id` must be a consumer's id: 1-63 letters, digits, `-` and `_` (cons_…)"));
        }
        if let Some(prefix) = &m.path_prefix {
            if !prefix.starts_with('/') || prefix.len() > 1_000 || prefix.chars().any(char::is_control) {
                return Err(ApiError::invalid_body("`match.path_prefix` must start with `/` and be at most 1000 bytes, without control characters"));
            }
        }
        if !(1..=MAX_THRESHOLD).contains(&self.threshold) {
            return Err(ApiError::invalid_body(format!("`threshold` must be from 1 to {MAX_THRESHOLD} events")));
        }
        if !(1..=MAX_WINDOW_SECS).contains(&self.window_secs) {
            return Err(ApiError::invalid_body(format!("`window_secs` must be from 1 to {MAX_WINDOW_SECS} (a day)")));
        }
        if self.cooldown_secs.is_some_and(|c| c > MAX_WINDOW_SECS) {
            return Err(ApiError::invalid_body(format!("`cooldown_secs` must be from 0 to {MAX_WINDOW_SECS} (a day)")));
        }
        Ok(())
    }

    fn cooldown_ms(&self) -> i64 {
        i64::from(self.cooldown_secs.unwrap_or(self.window_secs)) * 1_000
    }

    /// How far back events can still change what this rule does next.
    pub fn history_ms(&self) -> i64 {
        (i64::from(self.window_secs) * 1_000).max(self.cooldown_ms())
    }

    /// The event texts the rule reads: the type (always: the engine's own
    /// events are never counted), and those it matches or groups on.
    pub fn texts(&self) -> Vec<TextField> {
        let m = &self.matcher;
        let mut texts = vec![TextField::EventType];
        for (wanted, field) in [
            (m.outcome.is_some(), TextField::Outcome),
            (m.api_id.is_some() || self.group_by == Some(GroupBy::Api), TextField::Api),
            (m.consumer_id.is_some() || self.group_by == Some(GroupBy::Consumer), TextField::Consumer),
            (m.path_prefix.is_some(), TextField::Path),
            (self.group_by == Some(GroupBy::ClientIp), TextField::ClientIp),
        ] {
            if wanted {
                texts.push(field);
            }
        }
        texts
    }

    /// Whether the rule counts `event`.
    pub fn matches(&self, event: &Event) -> bool {
        let m = &self.matcher;
        let kind = &*event.event_type;
        if kind == security_type::ALERT_FIRED || kind == security_type::ALERT_DELIVERY_FAILED {
            return false;
        }
        m.event_type.as_deref().is_none_or(|t| t == kind)
            && m.category.is_none_or(|c| c == event.category())
            && m.outcome.as_deref().is_none_or(|o| o == &*event.outcome)
            && m.status_min.is_none_or(|low| event.status_code.is_some_and(|s| s >= low))
            && m.status_max.is_none_or(|high| event.status_code.is_some_and(|s| s <= high))
            && m.api_id.as_deref().is_none_or(|id| event.api_id.as_deref() == Some(id))
            && m.consumer_id.as_deref().is_none_or(|id| event.consumer_id.as_deref() == Some(id))
            && m.path_prefix.as_deref().is_none_or(|p| event.path.as_deref().is_some_and(|path| path.starts_with(p)))
    }
}

/// A tenant's rule with its identity and times.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRule {
    pub tenant_id: String,
    pub id: String,
    pub spec: RuleSpec,
    pub created_at: i64,
    /// Events before this time are not counted (a changed rule starts afresh).
    pub updated_at: i64,
    /// Where the webhook secret's rotations stand.
    pub secret: SecretState,
}

/// A rule's webhook secret rotations: the secret in use is generation
/// `generation`; the one before it signs deliveries too until
/// `previous_until`, so receivers can move to the new one meanwhile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SecretState {
    pub generation: u32,
    pub previous_until: Option<i64>,
}

impl AlertRule {
    /// The bytes a rule's webhook secret of `generation` is derived from:
    /// a rule deleted and made again under its id gets another secret, and
    /// each rotation another again (generation 0's input is the one secrets
    /// were derived from before rotations existed).
    pub fn secret_input(&self, generation: u32) -> Vec<u8> {
        match generation {
            0 => format!("{}\0{}\0{}", self.tenant_id, self.id, self.created_at).into_bytes(),
            n => format!("{}\0{}\0{}\0{n}", self.tenant_id, self.id, self.created_at).into_bytes(),
        }
    }

    /// The generations whose secrets sign a delivery at `now_ms`: the one
    /// in use, then the one before it while it is in its grace.
    pub fn signing_generations(&self, now_ms: i64) -> Vec<u32> {
        let mut generations = vec![self.secret.generation];
        if self.secret.generation > 0 && self.secret.previous_until.is_some_and(|until| now_ms < until) {
            generations.push(self.secret.generation - 1);
        }
        generations
    }
}

/// One firing: a rule's group reached its threshold within the window.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    pub rule: Arc<AlertRule>,
    /// The group's value (`None` for a rule without `group_by`).
    pub group: Option<String>,
    pub count: u32,
    pub first_seq: u64,
    pub last_seq: u64,
    pub first_ms: i64,
    pub last_ms: i64,
}

#[derive(Debug, Default)]
struct Group {
    /// The last `threshold` counted events: (time, seq), oldest first.
    recent: VecDeque<(i64, u64)>,
    last_fired_ms: Option<i64>,
}

/// One rule's counts, fed the tenant's events in chain order.
#[derive(Debug)]
pub struct RuleState {
    pub rule: Arc<AlertRule>,
    groups: HashMap<String, Group>,
}

impl RuleState {
    pub fn new(rule: Arc<AlertRule>) -> RuleState {
        RuleState { rule, groups: HashMap::new() }
    }

    /// Counts `event` if the rule matches it; the firing when its group
    /// reaches the threshold within the window, outside the cooldown.
    /// Times never go back within a group: an event stamped before the
    /// group's last one (events are numbered as they are committed, not as
    /// they were stamped) counts at that last time.
    pub fn observe(&mut self, event: &Event) -> Option<Firing> {
        if !self.rule.spec.enabled || event.timestamp_ms < self.rule.updated_at || !self.rule.spec.matches(event) {
            return None;
        }
        let rule = self.rule.clone();
        let spec = &rule.spec;
        let key = match spec.group_by {
            Some(by) => by.of(event)?,
            None => "",
        };
        // A group's key is copied once, when the group is new.
        if !self.groups.contains_key(key) {
            if self.groups.len() >= MAX_GROUPS_PER_RULE {
                Self::forget_oldest_group(&mut self.groups);
            }
            self.groups.insert(key.to_string(), Group::default());
        }
        let group = self.groups.get_mut(key).expect("the group was just made if it was not there");
        let at = group.recent.back().map_or(event.timestamp_ms, |(last, _)| event.timestamp_ms.max(*last));
        let window_ms = i64::from(spec.window_secs) * 1_000;
        group.recent.push_back((at, event.seq));
        while group.recent.len() > spec.threshold as usize || group.recent.front().is_some_and(|(t, _)| *t <= at - window_ms) {
            group.recent.pop_front();
        }
        if group.recent.len() < spec.threshold as usize || group.last_fired_ms.is_some_and(|fired| at - fired < spec.cooldown_ms()) {
            return None;
        }
        let (first_ms, first_seq) = group.recent.front().copied().unwrap_or((at, event.seq));
        group.recent.clear();
        group.last_fired_ms = Some(at);
        Some(Firing {
            rule: rule.clone(),
            group: spec.group_by.map(|_| key.to_string()),
            count: spec.threshold,
            first_seq,
            last_seq: event.seq,
            first_ms,
            last_ms: at,
        })
    }

    fn forget_oldest_group(groups: &mut HashMap<String, Group>) {
        let newest = |g: &Group| g.recent.back().map(|(t, _)| *t).max(g.last_fired_ms).unwrap_or(i64::MIN);
        if let Some(oldest) = groups.iter().min_by_key(|(_, g)| newest(g)).map(|(k, _)| k.clone()) {
            groups.remove(&oldest);
        }
    }
}

/// The `alert_fired` event of a firing.
pub fn fired_event(firing: &Firing, alert_id: &str) -> Event {
    let rule = &firing.rule;
    let mut event = Event::new(rule.tenant_id.as_str(), Category::Security, security_type::ALERT_FIRED, "success");
    event.actor = Some(ACTOR.into());
    event.target = Some(format!("alert:{}", rule.id));
    event.request_id = Some(alert_id.to_string());
    match (rule.spec.group_by, &firing.group) {
        (Some(GroupBy::ClientIp), Some(ip)) => event.client_ip = Some(ip.as_str().into()),
        (Some(GroupBy::Consumer), Some(id)) => event.consumer_id = Some(id.as_str().into()),
        (Some(GroupBy::Api), Some(id)) => event.api_id = Some(id.as_str().into()),
        _ => {}
    }
    event.details = Some(serde_json::json!({
        "rule_id": rule.id,
        "count": firing.count,
        "threshold": rule.spec.threshold,
        "window_secs": rule.spec.window_secs,
        "group_by": rule.spec.group_by.map(GroupBy::as_str),
        "first_seq": firing.first_seq,
        "last_seq": firing.last_seq,
        "first_at": crate::event::format_timestamp(firing.first_ms),
        "last_at": crate::event::format_timestamp(firing.last_ms),
        "webhook": rule.spec.webhook_url.is_some(),
    }));
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(spec: RuleSpec) -> Arc<AlertRule> {
        Arc::new(AlertRule { tenant_id: "acme".into(), id: "r".into(), spec, created_at: 0, updated_at: 0, secret: SecretState::default() })
    }

    fn spec(threshold: u32, window_secs: u32) -> RuleSpec {
        RuleSpec {
            description: None,
            matcher: Match { event_type: Some("auth_failed".into()), ..Match::default() },
            threshold,
            window_secs,
            group_by: Some(GroupBy::ClientIp),
            cooldown_secs: None,
            webhook_url: None,
            enabled: true,
        }
    }

    fn failed(seq: u64, at_ms: i64, ip: &str) -> Event {
        let mut e = Event::new("acme", Category::Security, "auth_failed", "failure");
        e.seq = seq;
        e.timestamp_ms = at_ms;
        e.client_ip = Some(ip.into());
        e
    }

    #[test]
    fn a_rotated_secret_has_its_own_input_and_the_old_one_signs_only_in_its_grace() {
        let mut r = (*rule(spec(3, 10))).clone();
        // Generation 0's input is the one secrets had before rotations
        // existed: rules made then keep their secret.
        assert_eq!(r.secret_input(0), b"acme\x00r\x000".to_vec());
        assert_eq!(r.secret_input(2), b"acme\x00r\x000\x002".to_vec());
        assert_ne!(r.secret_input(1), r.secret_input(0));
        assert_eq!(r.signing_generations(0), [0]);
        r.secret = SecretState { generation: 3, previous_until: Some(1_000) };
        assert_eq!(r.signing_generations(999), [3, 2]);
        assert_eq!(r.signing_generations(1_000), [3], "the grace has ended");
        r.secret.previous_until = None;
        assert_eq!(r.signing_generations(0), [3], "rotated without a grace");
    }

    #[test]
    fn fires_at_the_threshold_within_the_window_once_per_cooldown() {
        let mut state = RuleState::new(rule(spec(3, 10)));
        assert_eq!(state.observe(&failed(1, 1_000, "a")), None);
        assert_eq!(state.observe(&failed(2, 2_000, "b")), None, "another group");
        assert_eq!(state.observe(&failed(3, 3_000, "a")), None);
        let fired = state.observe(&failed(4, 9_000, "a")).expect("3 in 8 s");
        assert_eq!((fired.group.as_deref(), fired.count, fired.first_seq, fired.last_seq), (Some("a"), 3, 1, 4));
        assert_eq!((fired.first_ms, fired.last_ms), (1_000, 9_000));
        // Within the cooldown (the window, 10 s): three more do not fire.
        for (seq, at) in [(5, 10_000), (6, 11_000), (7, 12_000)] {
            assert_eq!(state.observe(&failed(seq, at, "a")), None);
        }
        // After it, the next event with two others in the window fires.
        let fired = state.observe(&failed(8, 19_500, "a")).expect("cooldown over");
        assert_eq!((fired.first_seq, fired.last_seq), (6, 8));
    }

    #[test]
    fn events_outside_the_window_do_not_count() {
        let mut state = RuleState::new(rule(spec(2, 5)));
        assert_eq!(state.observe(&failed(1, 0, "a")), None);
        assert_eq!(state.observe(&failed(2, 5_000, "a")), None, "exactly one window apart is outside it");
        assert!(state.observe(&failed(3, 9_999, "a")).is_some());
    }

    #[test]
    fn only_matching_grouped_events_after_the_rules_change_count() {
        let mut s = spec(1, 5);
        s.matcher = Match { category: Some(Category::Request), status_min: Some(500), path_prefix: Some("/pay".into()), ..Match::default() };
        s.group_by = Some(GroupBy::Consumer);
        let mut r = (*rule(s)).clone();
        r.updated_at = 1_000;
        let mut state = RuleState::new(Arc::new(r));
        let call = |seq, at, status, path: &str, consumer: Option<&str>| {
            let mut e = Event::new("acme", Category::Request, "api_call", "failure");
            (e.seq, e.timestamp_ms, e.status_code, e.path) = (seq, at, Some(status), Some(path.to_string()));
            e.consumer_id = consumer.map(Into::into);
            e
        };
        assert_eq!(state.observe(&call(1, 500, 503, "/pay", Some("c"))), None, "before the rule's change");
        assert_eq!(state.observe(&call(2, 2_000, 404, "/pay", Some("c"))), None, "status");
        assert_eq!(state.observe(&call(3, 2_000, 503, "/shop", Some("c"))), None, "path");
        assert_eq!(state.observe(&call(4, 2_000, 503, "/pay/x", None)), None, "no consumer to group by");
        let fired = state.observe(&call(5, 2_000, 503, "/pay/x", Some("c"))).unwrap();
        assert_eq!(fired.group.as_deref(), Some("c"));
        let mut own = Event::new("acme", Category::Request, security_type::ALERT_FIRED, "failure");
        own.status_code = Some(503);
        assert!(!state.rule.spec.matches(&own), "alerts never count their own events");
    }

    #[test]
    fn checks_name_the_field() {
        type Change = fn(&mut RuleSpec);
        let cases: [(Change, &str); 8] = [
            (|s| s.matcher = Match::default(), "`match` needs"),
            (|s| s.matcher.event_type = Some("alert_fired".into()), "cannot be `alert_fired`"),
            (|s| s.matcher.status_min = Some(700), "`match.status_min`"),
            (|s| (s.matcher.status_min, s.matcher.status_max) = (Some(500), Some(400)), "not be above"),
            (|s| s.threshold = 0, "`threshold`"),
            (|s| s.window_secs = 86_401, "`window_secs`"),
            (|s| s.matcher.path_prefix = Some("pay".into()), "`match.path_prefix`"),
            (|s| s.description = Some("x".repeat(201)), "`description`"),
        ];
        for (change, wanted) in cases {
            let mut s = spec(1, 1);
            change(&mut s);
            let err = s.check().unwrap_err().to_string();
            assert!(err.contains(wanted), "{wanted}: {err}");
        }
        assert!(spec(1, 1).check().is_ok());
        let mut s = spec(1, 1);
        s.matcher.consumer_id = Some("cons_4fZq9XbT0aLm2RkPw7Yc".into());
        assert!(s.check().is_ok(), "a consumer id as keytrail makes them, mixed case");
        s.matcher.consumer_id = Some("cons/1".into());
        assert!(s.check().unwrap_err().to_string().contains("`match.consumer_id`"));
    }

    #[test]
    fn the_oldest_group_is_forgotten_past_the_bound() {
        let mut state = RuleState::new(rule(spec(2, 1_000)));
        for i in 0..MAX_GROUPS_PER_RULE as u64 {
            state.observe(&failed(i + 1, i as i64, &format!("g{i}")));
        }
        state.observe(&failed(1_000_000, 20_000, "new"));
        assert_eq!(state.groups.len(), MAX_GROUPS_PER_RULE);
        assert!(!state.groups.contains_key("g0") && state.groups.contains_key("g1"));
    }
}
