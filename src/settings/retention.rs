//! Retention settings: how long a tenant's events stay in the hot store
//! (`hot_days`) and how long their signed archives are kept after that
//! (`archive_days`), with global values (from the config, then changed over
//! the API) and per-tenant overrides. Pure: the control plane stores them,
//! the retention task ([`crate::store::audit::retention`]) applies them.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// The names of the settings, in the order the API shows them.
pub const FIELDS: [&str; 2] = ["hot_days", "archive_days"];
/// The longest either window may be (100 years).
pub const MAX_DAYS: u32 = 36_500;

/// The effective retention of one scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionSettings {
    /// Days an event stays in the hot store (queried directly), at least 1:
    /// a UTC day is archived once every event of it is this many days old.
    pub hot_days: u32,
    /// Days its archive is kept after that (0: deleted as soon as written;
    /// the signed record of its range stays in `meta.db`).
    pub archive_days: u32,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings { hot_days: 90, archive_days: 365 }
    }
}

impl RetentionSettings {
    /// Checks the bounds (the config and the API share them).
    pub fn check(&self) -> Result<(), String> {
        if !(1..=MAX_DAYS).contains(&self.hot_days) {
            return Err(format!("`hot_days` must be a whole number of days from 1 to {MAX_DAYS}"));
        }
        if self.archive_days > MAX_DAYS {
            return Err(format!("`archive_days` must be a whole number of days from 0 to {MAX_DAYS}"));
        }
        Ok(())
    }

    /// The settings as JSON, one field per setting.
    pub fn to_json(&self) -> Map<String, Value> {
        super::json_fields(self)
    }

    /// `{field: {"before", "after"}}` for every setting that differs.
    pub fn changes(&self, after: &RetentionSettings) -> Map<String, Value> {
        super::field_changes(&self.to_json(), &after.to_json(), &FIELDS)
    }

    /// What going from these settings to `after` shortens, one phrase a
    /// window (`archive_days` to 0 switches the archive off). Empty when
    /// every event is kept at least as long as before (the `owner` role's
    /// to decide otherwise, see [`crate::access::Permission::ReduceAuditTrail`]).
    pub fn reductions(&self, after: &RetentionSettings) -> Vec<String> {
        [("hot_days", self.hot_days, after.hot_days), ("archive_days", self.archive_days, after.archive_days)]
            .iter()
            .filter(|(_, before, after)| after < before)
            .map(|(name, before, after)| format!("shortening `{name}` ({before} → {after} days)"))
            .collect()
    }
}

/// A scope's own values; `None` takes the global one (for tenants) or the
/// config's (for the global scope).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hot_days: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_days: Option<u32>,
}

impl RetentionOverrides {
    pub fn over(&self, base: &RetentionSettings) -> RetentionSettings {
        RetentionSettings { hot_days: self.hot_days.unwrap_or(base.hot_days), archive_days: self.archive_days.unwrap_or(base.archive_days) }
    }

    /// The names of the settings this scope takes from the one above.
    pub fn inherited(&self) -> Vec<&'static str> {
        let own = [self.hot_days.is_some(), self.archive_days.is_some()];
        FIELDS.iter().zip(own).filter(|(_, own)| !own).map(|(name, _)| *name).collect()
    }

    /// Applies a PUT body: each named field is set, or with `null` (tenants
    /// only) goes back to the global value. A refused patch changes nothing.
    pub fn apply_patch(&mut self, body: &Value, allow_null: bool) -> Result<(), ApiError> {
        let Value::Object(fields) = body else {
            return Err(ApiError::invalid_body("the body must be a JSON object of settings"));
        };
        if fields.is_empty() {
            return Err(ApiError::invalid_body(format!("name at least one setting: {}", FIELDS.join(", "))));
        }
        let mut next = *self;
        for (name, value) in fields {
            let slot = match name.as_str() {
                "hot_days" => &mut next.hot_days,
                "archive_days" => &mut next.archive_days,
                other => {
                    return Err(ApiError::invalid_body(format!("unknown setting `{other}`; the settings are {}", FIELDS.join(", "))))
                }
            };
            let (min, what) = if name == "hot_days" { (1, "from 1") } else { (0, "from 0") };
            *slot = match value {
                Value::Null if allow_null => None,
                Value::Null => {
                    return Err(ApiError::invalid_body(format!("`{name}` cannot be null in the global settings; give a value")))
                }
                Value::Number(n) => match n.as_u64() {
                    Some(days) if days >= min && days <= u64::from(MAX_DAYS) => Some(days as u32),
                    _ => return Err(ApiError::invalid_body(format!("`{name}` must be a whole number of days {what} to {MAX_DAYS}"))),
                },
                _ => return Err(ApiError::invalid_body(format!("`{name}` must be a whole number of days {what} to {MAX_DAYS}"))),
            };
        }
        *self = next;
        Ok(())
    }
}

/// Every tenant's retention, as the retention task applies it.
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionPolicy {
    pub global: RetentionSettings,
    /// Tenants with settings of their own (over the global ones).
    pub tenants: HashMap<String, RetentionSettings>,
    /// The zstd level archives are written with (`retention.archive_zstd_level`).
    pub zstd_level: i32,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy::uniform(RetentionSettings::default())
    }
}

impl RetentionPolicy {
    /// The same settings for every tenant.
    pub fn uniform(settings: RetentionSettings) -> RetentionPolicy {
        RetentionPolicy { global: settings, tenants: HashMap::new(), zstd_level: crate::store::audit::archive::DEFAULT_ZSTD_LEVEL }
    }

    pub fn for_tenant(&self, tenant: &str) -> RetentionSettings {
        self.tenants.get(tenant).copied().unwrap_or(self.global)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patches_are_checked_whole() {
        let mut own = RetentionOverrides::default();
        own.apply_patch(&json!({"hot_days": 7}), true).unwrap();
        assert_eq!(own.over(&RetentionSettings::default()), RetentionSettings { hot_days: 7, archive_days: 365 });
        assert_eq!(own.inherited(), vec!["archive_days"]);
        for bad in [
            json!({"hot_days": 0}),
            json!({"hot_days": 1.5}),
            json!({"hot_days": "7"}),
            json!({"archive_days": -1}),
            json!({"archive_days": 36_501}),
            json!({"hot_days": 3, "cold_days": 1}),
            json!({}),
            json!([1]),
        ] {
            let before = own;
            assert!(own.apply_patch(&bad, true).is_err(), "{bad}");
            assert_eq!(own, before, "a refused patch changes nothing: {bad}");
        }
        assert!(own.apply_patch(&json!({"hot_days": null}), false).is_err(), "no null in the global scope");
        own.apply_patch(&json!({"hot_days": null, "archive_days": 0}), true).unwrap();
        assert_eq!(own, RetentionOverrides { hot_days: None, archive_days: Some(0) });
        assert!(RetentionSettings { hot_days: 0, archive_days: 1 }.check().is_err());
    }

    #[test]
    fn reductions_name_the_shortened_windows() {
        let base = RetentionSettings::default();
        assert!(base.reductions(&RetentionSettings { hot_days: 91, archive_days: 365 }).is_empty());
        assert_eq!(
            base.reductions(&RetentionSettings { hot_days: 1, archive_days: 0 }),
            ["shortening `hot_days` (90 → 1 days)", "shortening `archive_days` (365 → 0 days)"]
        );
        assert_eq!(base.reductions(&RetentionSettings { hot_days: 400, archive_days: 1 }), ["shortening `archive_days` (365 → 1 days)"]);
    }
}
