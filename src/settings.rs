//! Logging settings: which events the audit trail keeps.
//!
//! Four switches and a sample rate, with global values and per-tenant
//! overrides. They decide which `request` events are stored: successful
//! calls (status below 400) by `log_api_calls` and `api_call_sample_rate`,
//! failed calls by `log_failed_api_calls`, blocked calls by
//! `log_blocklisted_api_calls`; admin (dashboard) activity by
//! `log_dashboard_activities`. Security and application events are always
//! stored.
//!
//! The control plane stores the settings and hands the audit pipeline a new
//! [`LoggingPolicy`] after every change; the pipeline applies it to each
//! event it is given, so a change takes effect with the next event.

pub mod retention;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::event::{Category, Event};
use crate::splitmix;

/// The names of the settings, in the order the API shows them.
pub const FIELDS: [&str; 5] =
    ["log_dashboard_activities", "log_api_calls", "log_failed_api_calls", "log_blocklisted_api_calls", "api_call_sample_rate"];

/// The effective settings of one scope.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoggingSettings {
    pub log_dashboard_activities: bool,
    pub log_api_calls: bool,
    pub log_failed_api_calls: bool,
    pub log_blocklisted_api_calls: bool,
    /// The share of successful calls kept, 0.0–1.0.
    pub api_call_sample_rate: f64,
}

impl Default for LoggingSettings {
    fn default() -> Self {
        LoggingSettings {
            log_dashboard_activities: true,
            log_api_calls: true,
            log_failed_api_calls: true,
            log_blocklisted_api_calls: true,
            api_call_sample_rate: 1.0,
        }
    }
}

/// A tenant's own values; `None` takes the global one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LoggingOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_dashboard_activities: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_api_calls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_failed_api_calls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_blocklisted_api_calls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_call_sample_rate: Option<f64>,
}

impl LoggingOverrides {
    /// The settings a tenant gets: its own values over the global ones.
    pub fn over(&self, global: &LoggingSettings) -> LoggingSettings {
        LoggingSettings {
            log_dashboard_activities: self.log_dashboard_activities.unwrap_or(global.log_dashboard_activities),
            log_api_calls: self.log_api_calls.unwrap_or(global.log_api_calls),
            log_failed_api_calls: self.log_failed_api_calls.unwrap_or(global.log_failed_api_calls),
            log_blocklisted_api_calls: self.log_blocklisted_api_calls.unwrap_or(global.log_blocklisted_api_calls),
            api_call_sample_rate: self.api_call_sample_rate.unwrap_or(global.api_call_sample_rate),
        }
    }

    /// The names of the settings this tenant takes from the global ones.
    pub fn inherited(&self) -> Vec<&'static str> {
        let own = [
            self.log_dashboard_activities.is_some(),
            self.log_api_calls.is_some(),
            self.log_failed_api_calls.is_some(),
            self.log_blocklisted_api_calls.is_some(),
            self.api_call_sample_rate.is_some(),
        ];
        FIELDS.iter().zip(own).filter(|(_, own)| !own).map(|(name, _)| *name).collect()
    }

    /// Applies a PUT body: each named field is set, or with `null` (tenants
    /// only) goes back to the global value. Unnamed fields stay as they are.
    /// A refused patch changes nothing.
    pub fn apply_patch(&mut self, body: &Value, allow_null: bool) -> Result<(), ApiError> {
        let mut next = *self;
        next.patch_fields(body, allow_null)?;
        *self = next;
        Ok(())
    }

    fn patch_fields(&mut self, body: &Value, allow_null: bool) -> Result<(), ApiError> {
        let Value::Object(fields) = body else {
            return Err(ApiError::invalid_body("the body must be a JSON object of settings"));
        };
        if fields.is_empty() {
            return Err(ApiError::invalid_body(format!("name at least one setting: {}", FIELDS.join(", "))));
        }
        for (name, value) in fields {
            if value.is_null() && !allow_null {
                return Err(ApiError::invalid_body(format!("`{name}` cannot be null in the global settings; give a value")));
            }
            let switch = |value: &Value| -> Result<Option<bool>, ApiError> {
                match value {
                    Value::Null => Ok(None),
                    Value::Bool(b) => Ok(Some(*b)),
                    _ => Err(ApiError::invalid_body(format!("`{name}` must be true or false"))),
                }
            };
            match name.as_str() {
                "log_dashboard_activities" => self.log_dashboard_activities = switch(value)?,
                "log_api_calls" => self.log_api_calls = switch(value)?,
                "log_failed_api_calls" => self.log_failed_api_calls = switch(value)?,
                "log_blocklisted_api_calls" => self.log_blocklisted_api_calls = switch(value)?,
                "api_call_sample_rate" => {
                    self.api_call_sample_rate = match value {
                        Value::Null => None,
                        Value::Number(n) => match n.as_f64() {
                            Some(rate) if (0.0..=1.0).contains(&rate) => Some(rate),
                            _ => return Err(rate_error()),
                        },
                        _ => return Err(rate_error()),
                    }
                }
                other => {
                    return Err(ApiError::invalid_body(format!(
                        "unknown setting `{other}`; the settings are {}",
                        FIELDS.join(", ")
                    )))
                }
            }
        }
        Ok(())
    }
}

fn rate_error() -> ApiError {
    ApiError::invalid_body("`api_call_sample_rate` must be a number from 0 to 1 (1 keeps every successful call)")
}

/// A settings struct as JSON, one field per setting.
pub fn json_fields<T: Serialize>(settings: &T) -> Map<String, Value> {
    match serde_json::to_value(settings) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

/// `{field: {"before", "after"}}` for every one of `fields` that differs.
pub fn field_changes(before: &Map<String, Value>, after: &Map<String, Value>, fields: &[&str]) -> Map<String, Value> {
    let mut out = Map::new();
    for name in fields {
        if before.get(*name) != after.get(*name) {
            out.insert(name.to_string(), json!({"before": before.get(*name), "after": after.get(*name)}));
        }
    }
    out
}

impl LoggingSettings {
    /// The settings as JSON, one field per setting.
    pub fn to_json(&self) -> Map<String, Value> {
        json_fields(self)
    }

    /// `{field: {"before", "after"}}` for every setting that differs.
    pub fn changes(&self, after: &LoggingSettings) -> Map<String, Value> {
        field_changes(&self.to_json(), &after.to_json(), &FIELDS)
    }

    /// What going from these settings to `after` gives up, one phrase a
    /// change: each switch turned off, and a lower sample rate. Empty when
    /// every event kept before is kept after (the `owner` role's to decide
    /// otherwise, see [`crate::access::Permission::ReduceAuditTrail`]).
    pub fn reductions(&self, after: &LoggingSettings) -> Vec<String> {
        let switches = [
            ("log_dashboard_activities", self.log_dashboard_activities, after.log_dashboard_activities),
            ("log_api_calls", self.log_api_calls, after.log_api_calls),
            ("log_failed_api_calls", self.log_failed_api_calls, after.log_failed_api_calls),
            ("log_blocklisted_api_calls", self.log_blocklisted_api_calls, after.log_blocklisted_api_calls),
        ];
        let mut out: Vec<String> =
            switches.iter().filter(|(_, before, after)| *before && !*after).map(|(name, _, _)| format!("switching `{name}` off")).collect();
        if after.api_call_sample_rate < self.api_call_sample_rate {
            out.push(format!("lowering `api_call_sample_rate` ({} → {})", self.api_call_sample_rate, after.api_call_sample_rate));
        }
        out
    }
}

/// What a request event is, for the switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallClass {
    Successful,
    Failed,
    Blocked,
}

/// Error code of request events refused by a blocklist or attack rule.
pub const BLOCKED_ERROR_CODE: &str = "request_blocked";

impl CallClass {
    /// A call is failed by its status, or by its outcome when the status
    /// cannot say: a refused key verification answers 200.
    pub fn of(event: &Event) -> CallClass {
        if event.error_code.as_deref() == Some(BLOCKED_ERROR_CODE) {
            CallClass::Blocked
        } else if event.status_code.is_some_and(|s| s < 400) && event.outcome != "failure" {
            CallClass::Successful
        } else {
            CallClass::Failed
        }
    }
}

/// The settings of every scope, as the audit pipeline applies them.
#[derive(Debug, Clone, Default)]
pub struct LoggingPolicy {
    pub global: LoggingSettings,
    pub tenants: HashMap<String, LoggingSettings>,
}

impl LoggingPolicy {
    pub fn for_tenant(&self, tenant: &str) -> &LoggingSettings {
        self.tenants.get(tenant).unwrap_or(&self.global)
    }

    /// Whether `event` is to be stored; `sampler` decides for successful
    /// calls kept at a rate below 1.
    pub fn keeps(&self, event: &Event, sampler: &Sampler) -> bool {
        match event.category() {
            Category::Request => {
                let settings = self.for_tenant(&event.tenant_id);
                match CallClass::of(event) {
                    CallClass::Successful => settings.log_api_calls && sampler.keep(settings.api_call_sample_rate),
                    CallClass::Failed => settings.log_failed_api_calls,
                    CallClass::Blocked => settings.log_blocklisted_api_calls,
                }
            }
            Category::Admin => self.for_tenant(&event.tenant_id).log_dashboard_activities,
            Category::Security | Category::App => true,
        }
    }
}

/// Decides which successful calls a sample rate keeps: the n-th decision
/// hashes (seed, n), so a given seed always keeps the same share of the same
/// number of calls, and the choice cannot be predicted without the seed.
#[derive(Debug)]
pub struct Sampler {
    seed: u64,
    counter: AtomicU64,
}

impl Sampler {
    pub fn new(seed: u64) -> Sampler {
        Sampler { seed, counter: AtomicU64::new(0) }
    }

    pub fn keep(&self, rate: f64) -> bool {
        if rate >= 1.0 {
            return true;
        }
        if rate <= 0.0 {
            return false;
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // The n-th output of SplitMix64 seeded with `seed`.
        let state = self.seed.wrapping_add(n.wrapping_add(1).wrapping_mul(splitmix::GAMMA));
        splitmix::unit(splitmix::mix(state)) < rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seeded_sampler_keeps_the_rate_and_repeats_itself() {
        let count = |seed| {
            let s = Sampler::new(seed);
            (0..10_000).filter(|_| s.keep(0.1)).count()
        };
        let kept = count(7);
        assert!((900..=1100).contains(&kept), "{kept}");
        assert_eq!(kept, count(7), "same seed, same decisions");
        let s = Sampler::new(1);
        assert!((0..1000).all(|_| s.keep(1.0)));
        assert!((0..1000).all(|_| !s.keep(0.0)));
    }

    #[test]
    fn tenant_values_override_global_ones() {
        let global = LoggingSettings { log_api_calls: false, ..LoggingSettings::default() };
        let mut own = LoggingOverrides::default();
        own.apply_patch(&json!({"log_failed_api_calls": false, "api_call_sample_rate": 0.5}), true).unwrap();
        let eff = own.over(&global);
        assert!(!eff.log_api_calls, "inherited");
        assert!(!eff.log_failed_api_calls);
        assert_eq!(eff.api_call_sample_rate, 0.5);
        assert_eq!(own.inherited(), vec!["log_dashboard_activities", "log_api_calls", "log_blocklisted_api_calls"]);
        own.apply_patch(&json!({"log_failed_api_calls": null}), true).unwrap();
        assert!(own.over(&global).log_failed_api_calls, "null goes back to the global value");
    }

    #[test]
    fn bad_patches_say_what_to_fix() {
        let mut own = LoggingOverrides::default();
        for (body, needle) in [
            (json!([]), "JSON object"),
            (json!({}), "at least one"),
            (json!({"log_api_calls": "yes"}), "true or false"),
            (json!({"api_call_sample_rate": 1.5}), "from 0 to 1"),
            (json!({"api_call_sample_rate": -0.1}), "from 0 to 1"),
            (json!({"api_call_sample_rate": "0.5"}), "from 0 to 1"),
            (json!({"log_everything": true}), "unknown setting `log_everything`"),
        ] {
            let err = own.apply_patch(&body, true).unwrap_err();
            assert!(err.message.contains(needle), "{body}: {}", err.message);
        }
        let err = own.apply_patch(&json!({"log_api_calls": null}), false).unwrap_err();
        assert!(err.message.contains("cannot be null"), "{}", err.message);
        assert_eq!(own, LoggingOverrides::default(), "a refused patch changes nothing");
    }

    #[test]
    fn the_policy_sorts_events_by_class() {
        let mut policy = LoggingPolicy::default();
        policy.tenants.insert(
            "quiet".into(),
            LoggingSettings { log_api_calls: false, log_failed_api_calls: false, log_dashboard_activities: false, ..LoggingSettings::default() },
        );
        let sampler = Sampler::new(0);
        let request = |tenant: &str, status: u16| {
            let mut e = Event::new(tenant, Category::Request, "request", "success");
            e.status_code = Some(status);
            e
        };
        assert!(policy.keeps(&request("loud", 200), &sampler));
        assert!(!policy.keeps(&request("quiet", 200), &sampler));
        assert!(!policy.keeps(&request("quiet", 502), &sampler));
        let mut refused = request("loud", 200);
        refused.outcome = "failure".into();
        assert_eq!(CallClass::of(&refused), CallClass::Failed, "a refused verification answers 200 but failed");
        let mut blocked = request("quiet", 403);
        blocked.error_code = Some(BLOCKED_ERROR_CODE.into());
        assert!(policy.keeps(&blocked, &sampler), "blocked calls have their own switch");
        assert!(policy.keeps(&Event::new("quiet", Category::Security, "auth_failed", "failure"), &sampler));
        assert!(!policy.keeps(&Event::new("quiet", Category::Admin, "tenant_created", "success"), &sampler));
    }

    #[test]
    fn reductions_name_what_is_given_up() {
        let on = LoggingSettings::default();
        assert!(on.reductions(&on).is_empty());
        let off = LoggingSettings { log_dashboard_activities: false, api_call_sample_rate: 0.5, ..on };
        assert_eq!(off.reductions(&on), Vec::<String>::new(), "switching on and raising the rate give up nothing");
        assert_eq!(on.reductions(&off), ["switching `log_dashboard_activities` off", "lowering `api_call_sample_rate` (1 → 0.5)"]);
    }
}
