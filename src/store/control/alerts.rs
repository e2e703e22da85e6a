//! Alert rules and the alert engine's reading position, per tenant.

use rusqlite::{params, OptionalExtension};

use super::{conflict_if_duplicate, ControlStore};
use crate::store::StoreError;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS alert_rules (
    tenant_id TEXT NOT NULL,
    id TEXT NOT NULL,
    definition TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    secret_generation INTEGER NOT NULL DEFAULT 0,
    previous_secret_until INTEGER,
    PRIMARY KEY (tenant_id, id)
);
CREATE TABLE IF NOT EXISTS alert_cursors (
    tenant_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    timestamp_ms INTEGER NOT NULL
);
";

/// One stored rule: its definition as the JSON the alerts module wrote,
/// and where its webhook secret's rotations stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRule {
    pub tenant_id: String,
    pub id: String,
    pub definition: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// How many times the webhook secret was rotated.
    pub secret_generation: u32,
    /// Until when the secret before the last rotation still signs too.
    pub previous_secret_until: Option<i64>,
}

fn row_to_rule(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRule> {
    Ok(StoredRule {
        tenant_id: r.get(0)?,
        id: r.get(1)?,
        definition: r.get(2)?,
        created_at: r.get(3)?,
        updated_at: r.get(4)?,
        secret_generation: r.get(5)?,
        previous_secret_until: r.get(6)?,
    })
}

const RULE_COLUMNS: &str = "tenant_id, id, definition, created_at, updated_at, secret_generation, previous_secret_until";

impl ControlStore {
    /// Adds a rule unless the tenant has `max` already (a conflict) or one
    /// with its id.
    pub fn create_alert_rule(&self, rule: &StoredRule, max: u64) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let count: i64 = tx.query_row("SELECT count(*) FROM alert_rules WHERE tenant_id = ?1", [&rule.tenant_id], |r| r.get(0))?;
        if count as u64 >= max {
            return Err(StoreError::Conflict(format!("tenant `{}` has {max} alert rules, the most it may have; delete one first", rule.tenant_id)));
        }
        tx.execute(
            &format!("INSERT INTO alert_rules ({RULE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
            params![rule.tenant_id, rule.id, rule.definition, rule.created_at, rule.updated_at, rule.secret_generation, rule.previous_secret_until],
        )
        .map_err(|e| conflict_if_duplicate(e, || format!("alert rule `{}` already exists in tenant `{}`", rule.id, rule.tenant_id)))?;
        tx.commit()?;
        Ok(())
    }

    /// Replaces a rule's definition; false if there is no such rule.
    pub fn update_alert_rule(&self, tenant_id: &str, id: &str, definition: &str, updated_at: i64) -> Result<bool, StoreError> {
        let changed = self.conn().execute(
            "UPDATE alert_rules SET definition = ?3, updated_at = ?4 WHERE tenant_id = ?1 AND id = ?2",
            params![tenant_id, id, definition, updated_at],
        )?;
        Ok(changed == 1)
    }

    /// Moves a rule's webhook secret from generation `from` to `from + 1`,
    /// the old one signing too until `previous_until`; false if there is no
    /// such rule or its secret is no longer at `from` (rotated at the same
    /// moment by someone else).
    pub fn rotate_alert_secret(&self, tenant_id: &str, id: &str, from: u32, previous_until: Option<i64>) -> Result<bool, StoreError> {
        let changed = self.conn().execute(
            "UPDATE alert_rules SET secret_generation = ?3 + 1, previous_secret_until = ?4
             WHERE tenant_id = ?1 AND id = ?2 AND secret_generation = ?3",
            params![tenant_id, id, from, previous_until],
        )?;
        Ok(changed == 1)
    }

    /// Deletes a rule; with the tenant's last rule, its reading position
    /// too (rules made later start at the trail's end). False if there is
    /// no such rule.
    pub fn delete_alert_rule(&self, tenant_id: &str, id: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let changed = tx.execute("DELETE FROM alert_rules WHERE tenant_id = ?1 AND id = ?2", [tenant_id, id])?;
        tx.execute(
            "DELETE FROM alert_cursors WHERE tenant_id = ?1 AND NOT EXISTS (SELECT 1 FROM alert_rules WHERE tenant_id = ?1)",
            [tenant_id],
        )?;
        tx.commit()?;
        Ok(changed == 1)
    }

    pub fn get_alert_rule(&self, tenant_id: &str, id: &str) -> Result<Option<StoredRule>, StoreError> {
        Ok(self
            .conn()
            .query_row(&format!("SELECT {RULE_COLUMNS} FROM alert_rules WHERE tenant_id = ?1 AND id = ?2"), [tenant_id, id], row_to_rule)
            .optional()?)
    }

    /// A tenant's rules (every tenant's with `None`), by tenant and id.
    pub fn list_alert_rules(&self, tenant_id: Option<&str>) -> Result<Vec<StoredRule>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare(&format!("SELECT {RULE_COLUMNS} FROM alert_rules WHERE ?1 IS NULL OR tenant_id = ?1 ORDER BY tenant_id, id"))?;
        let rows = stmt.query_map([tenant_id], row_to_rule)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Where the alert engine has read a tenant's trail to: the last `seq`
    /// it checked and that event's time.
    pub fn alert_cursor(&self, tenant_id: &str) -> Result<Option<(u64, i64)>, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT seq, timestamp_ms FROM alert_cursors WHERE tenant_id = ?1", [tenant_id], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
            })
            .optional()?)
    }

    /// Moves a tenant's reading position, while it has a rule.
    pub fn set_alert_cursor(&self, tenant_id: &str, seq: u64, timestamp_ms: i64) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO alert_cursors (tenant_id, seq, timestamp_ms) SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM alert_rules WHERE tenant_id = ?1)
             ON CONFLICT (tenant_id) DO UPDATE SET seq = excluded.seq, timestamp_ms = excluded.timestamp_ms",
            params![tenant_id, seq as i64, timestamp_ms],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `control.db` from before secrets were rotated (its `alert_rules`
    /// without their columns) opens with them added: its rules read at
    /// generation 0 — the secret they always had — and rotate from there.
    #[test]
    fn rules_from_before_rotations_read_at_generation_zero_and_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.db");
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE alert_rules (tenant_id TEXT NOT NULL, id TEXT NOT NULL, definition TEXT NOT NULL,
                    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, PRIMARY KEY (tenant_id, id));
                 INSERT INTO alert_rules VALUES ('acme', 'r', '{}', 5, 6);",
            )
            .unwrap();
        }
        let store = ControlStore::open(&path).unwrap();
        let rule = store.get_alert_rule("acme", "r").unwrap().unwrap();
        assert_eq!((rule.definition.as_str(), rule.created_at, rule.updated_at), ("{}", 5, 6));
        assert_eq!((rule.secret_generation, rule.previous_secret_until), (0, None));
        assert!(store.rotate_alert_secret("acme", "r", 0, Some(100)).unwrap());
        assert!(!store.rotate_alert_secret("acme", "r", 0, None).unwrap(), "rotated already: generation 0 is gone");
        assert!(!store.rotate_alert_secret("acme", "nope", 0, None).unwrap());
        let rule = store.get_alert_rule("acme", "r").unwrap().unwrap();
        assert_eq!((rule.secret_generation, rule.previous_secret_until), (1, Some(100)));
        // Changing the definition leaves the secret where it is.
        assert!(store.update_alert_rule("acme", "r", "{\"x\":1}", 7).unwrap());
        assert_eq!(store.list_alert_rules(Some("acme")).unwrap()[0].secret_generation, 1);
    }
}
