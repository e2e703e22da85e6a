//! Alert rules: checked, stored, listed; a webhook's secret derived, shown once.

use std::sync::Arc;

use super::ControlPlane;
use crate::alerts::{webhook, AlertRule, RuleSpec, SecretState, MAX_RULES_PER_TENANT};
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
        secret_generation: rule.secret.generation,
        previous_secret_until: rule.secret.previous_until,
    }
}

fn from_stored(row: StoredRule) -> Result<AlertRule, StoreError> {
    let spec = serde_json::from_str(&row.definition)
        .map_err(|e| StoreError::Corrupt(format!("alert rule `{}` of tenant `{}` cannot be read: {e}", row.id, row.tenant_id)))?;
    let secret = SecretState { generation: row.secret_generation, previous_until: row.previous_secret_until };
    Ok(AlertRule { tenant_id: row.tenant_id, id: row.id, spec, created_at: row.created_at, updated_at: row.updated_at, secret })
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

    /// A rule's webhook secret of `generation`, as shown when the rule is
    /// made or its secret rotated; `None` without a webhook.
    fn webhook_secret_of(&self, rule: &AlertRule, generation: u32) -> Option<String> {
        rule.spec.webhook_url.as_ref()?;
        let derived = self.alert_signer.as_ref()?.derive_secret(crate::alerts::SECRET_DOMAIN, &rule.secret_input(generation));
        Some(webhook::secret_text(&derived))
    }

    /// A rule's webhook secret in use; `None` without a webhook.
    pub fn webhook_secret(&self, rule: &AlertRule) -> Option<String> {
        self.webhook_secret_of(rule, rule.secret.generation)
    }

    /// The secrets that sign a delivery of `rule` at `now_ms`: the one in
    /// use, then, during a rotation's grace, the one before it. Empty
    /// without a webhook.
    pub fn webhook_signing_secrets(&self, rule: &AlertRule, now_ms: i64) -> Vec<String> {
        rule.signing_generations(now_ms).into_iter().filter_map(|generation| self.webhook_secret_of(rule, generation)).collect()
    }

    /// Gives a rule's webhook a new secret (shown this once); the old one
    /// signs deliveries too for `grace_ms` more (none with 0), each with
    /// its own signature, so receivers can change over without losing one.
    /// A rule without a webhook has no secret to rotate (409).
    pub fn rotate_alert_secret(&self, tenant_id: &str, id: &str, grace_ms: i64) -> Result<(AlertRule, String), ApiError> {
        let mut rule = self.get_alert_rule(tenant_id, id)?;
        if rule.spec.webhook_url.is_none() {
            return Err(ApiError::new(
                crate::error::ErrorCode::Conflict,
                format!("alert rule `{id}` has no webhook, so no secret to rotate: give it a `webhook_url` first"),
            ));
        }
        if self.alert_signer.is_none() {
            return Err(ApiError::invalid_body("a webhook secret needs the data directory's signing key, which this server was started without"));
        }
        let previous_until = (grace_ms > 0).then(|| now_ms() + grace_ms);
        if !self.store.rotate_alert_secret(tenant_id, id, rule.secret.generation, previous_until)? {
            // Deleted, or rotated by another call in between: the rule as it is now decides.
            return Err(ApiError::new(crate::error::ErrorCode::Conflict, format!("alert rule `{id}` changed while its secret was rotated; try again")));
        }
        rule.secret = SecretState { generation: rule.secret.generation + 1, previous_until };
        let secret = self.webhook_secret(&rule).expect("a rule with a webhook and a signer has a secret");
        Ok((rule, secret))
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
        let rule = AlertRule { tenant_id: tenant_id.to_string(), id, spec, created_at: now, updated_at: now, secret: SecretState::default() };
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
