//! Alert rules: checked, stored, listed; a webhook's secret derived, shown once.

use std::sync::Arc;

use super::ControlPlane;
use crate::alerts::{webhook, AlertRule, RuleSpec, MAX_RULES_PER_TENANT};
use crate::error::ApiError;
use crate::event::now_ms;
use crate::store::control::StoredRule;
use crate::store::StoreError;

fn stored(rule: &AlertRule) -> StoredRule {
    StoredRule {
        tenant_id: rule.tenant_id.clone(),
        id: rule.id.clone(),
        definition: serde_json::to_string(&rule.spec).expect("rules serialise"),
        created_at: rule.created_at,
        updated_at: rule.updated_at,
    }
}

fn from_stored(row: StoredRule) -> Result<AlertRule, StoreError> {
    let spec = serde_json::from_str(&row.definition)
        .map_err(|e| StoreError::Corrupt(format!("alert rule `{}` of tenant `{}` cannot be read: {e}", row.id, row.tenant_id)))?;
    Ok(AlertRule { tenant_id: row.tenant_id, id: row.id, spec, created_at: row.created_at, updated_at: row.updated_at })
}

impl ControlPlane {
    /// Derives webhook secrets from `signer` (the data directory's key).
    pub fn with_alert_signer(mut self, signer: Arc<crate::signing::Signer>) -> ControlPlane {
        self.alert_signer = Some(signer);
        self
    }

    /// What the alert engine did per rule since the start.
    pub fn alert_status(&self) -> &crate::alerts::engine::StatusBoard {
        &self.alert_status
    }

    /// A rule's webhook secret, as shown when the rule is made; `None`
    /// without a webhook.
    pub fn webhook_secret(&self, rule: &AlertRule) -> Option<String> {
        rule.spec.webhook_url.as_ref()?;
        let derived = self.alert_signer.as_ref()?.derive_secret(crate::alerts::SECRET_DOMAIN, &rule.secret_input());
        Some(webhook::secret_text(&derived))
    }

    fn checked_alert_rule(&self, tenant_id: &str, spec: &RuleSpec) -> Result<(), ApiError> {
        self.require_tenant(tenant_id)?;
        spec.check()?;
        if let Some(url) = &spec.webhook_url {
            if self.alert_signer.is_none() {
                return Err(ApiError::invalid_body("`webhook_url` needs the data directory's signing key, which this server was started without"));
            }
            webhook::check_url(url, &self.upstream_guard)?;
        }
        Ok(())
    }

    /// Makes a rule; with a webhook, its secret too (shown this once).
    pub fn create_alert_rule(&self, tenant_id: &str, id: String, spec: RuleSpec) -> Result<(AlertRule, Option<String>), ApiError> {
        super::check_slug("id", &id)?;
        self.checked_alert_rule(tenant_id, &spec)?;
        let now = now_ms();
        let rule = AlertRule { tenant_id: tenant_id.to_string(), id, spec, created_at: now, updated_at: now };
        self.store.create_alert_rule(&stored(&rule), MAX_RULES_PER_TENANT)?;
        let secret = self.webhook_secret(&rule);
        Ok((rule, secret))
    }

    /// Replaces a rule's definition: it counts afresh from now; its
    /// webhook secret stays.
    pub fn update_alert_rule(&self, tenant_id: &str, id: &str, spec: RuleSpec) -> Result<AlertRule, ApiError> {
        let mut rule = self.get_alert_rule(tenant_id, id)?;
        self.checked_alert_rule(tenant_id, &spec)?;
        // Never the same time twice: the engine starts a changed rule
        // afresh when it sees another `updated_at`.
        (rule.spec, rule.updated_at) = (spec, now_ms().max(rule.updated_at + 1));
        let row = stored(&rule);
        if !self.store.update_alert_rule(tenant_id, id, &row.definition, row.updated_at)? {
            return Err(ApiError::not_found(format_args!("alert rule `{id}`")));
        }
        Ok(rule)
    }

    pub fn delete_alert_rule(&self, tenant_id: &str, id: &str) -> Result<(), ApiError> {
        self.require_tenant(tenant_id)?;
        if !self.store.delete_alert_rule(tenant_id, id)? {
            return Err(ApiError::not_found(format_args!("alert rule `{id}`")));
        }
        self.alert_status.forget(tenant_id, id);
        Ok(())
    }

    pub fn get_alert_rule(&self, tenant_id: &str, id: &str) -> Result<AlertRule, ApiError> {
        self.require_tenant(tenant_id)?;
        match self.store.get_alert_rule(tenant_id, id)? {
            Some(row) => Ok(from_stored(row)?),
            None => Err(ApiError::not_found(format_args!("alert rule `{id}`"))),
        }
    }

    pub fn list_alert_rules(&self, tenant_id: &str) -> Result<Vec<AlertRule>, ApiError> {
        self.require_tenant(tenant_id)?;
        Ok(self.store.list_alert_rules(Some(tenant_id))?.into_iter().map(from_stored).collect::<Result<_, _>>()?)
    }

    /// Every tenant's rules, for the engine; one this binary cannot read
    /// (written by a later version) is left out with a warning, so the
    /// others still fire.
    pub fn all_alert_rules(&self) -> Result<Vec<AlertRule>, StoreError> {
        let readable = self.store.list_alert_rules(None)?.into_iter().filter_map(|row| {
            from_stored(row).map_err(|error| tracing::warn!(%error, "an alert rule is left out")).ok()
        });
        Ok(readable.collect())
    }

    /// Where the engine has read `tenant_id`'s trail to (see [`crate::store::control::ControlStore::alert_cursor`]).
    pub fn alert_cursor(&self, tenant_id: &str) -> Result<Option<(u64, i64)>, StoreError> {
        self.store.alert_cursor(tenant_id)
    }

    pub fn set_alert_cursor(&self, tenant_id: &str, seq: u64, timestamp_ms: i64) -> Result<(), StoreError> {
        self.store.set_alert_cursor(tenant_id, seq, timestamp_ms)
    }
}
