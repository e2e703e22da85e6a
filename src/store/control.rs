//! The control store: tenants, apis, consumers, keys (as hashes) and admins.
//!
//! Control data changes rarely and is read on the hot path only through the
//! in-memory snapshot built from [`ControlStore::load_routing`], so a single
//! connection behind a mutex is enough. No method holds the lock across an
//! await; none is async.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

mod alerts;

pub use alerts::StoredRule;

use super::{open, ser_opt_ts, ser_ts, StoreError};
use crate::keys::SecretHash;
use crate::policy::Policies;
use crate::protection::{Entry, EntryKind};
use crate::ratelimit::{CostRule, RateSpec};
use crate::settings::retention::RetentionOverrides;
use crate::settings::LoggingOverrides;

#[derive(Debug, Clone, Serialize)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    #[serde(serialize_with = "ser_ts")]
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Api {
    pub tenant_id: String,
    pub id: String,
    pub path_prefix: String,
    pub upstream: String,
    pub timeout_ms: Option<u64>,
    /// The api's own per-minute limit, per consumer, beside the tier's.
    pub rate_limit: Option<RateSpec>,
    /// Paths whose calls count as more than one.
    pub costs: Vec<CostRule>,
    pub policies: Policies,
    #[serde(serialize_with = "ser_ts")]
    pub created_at: i64,
}

/// A rate-limit tier of a tenant.
#[derive(Debug, Clone, Serialize)]
pub struct Tier {
    pub tenant_id: String,
    pub id: String,
    pub requests_per_minute: Option<u32>,
    pub burst: Option<u32>,
    pub daily_quota: Option<u64>,
    #[serde(serialize_with = "ser_ts")]
    pub created_at: i64,
}

impl Tier {
    pub fn rate(&self) -> Option<RateSpec> {
        Some(RateSpec { requests_per_minute: self.requests_per_minute?, burst: self.burst? })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Consumer {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub status: String,
    pub metadata: serde_json::Value,
    /// The rate-limit tier; none means no tier limit.
    pub tier: Option<String>,
    #[serde(serialize_with = "ser_ts")]
    pub created_at: i64,
}

/// A key as the store knows it: never the secret, only its hash and hint.
#[derive(Debug, Clone, Serialize)]
pub struct KeyRecord {
    pub key_id: String,
    pub tenant_id: String,
    pub consumer_id: String,
    pub hint: String,
    pub environment: String,
    pub scopes: Vec<String>,
    /// `active` or `revoked` as stored; `expired` is derived by [`KeyRecord::status_at`].
    pub status: String,
    #[serde(serialize_with = "ser_opt_ts")]
    pub expires_at: Option<i64>,
    #[serde(serialize_with = "ser_ts")]
    pub created_at: i64,
    #[serde(serialize_with = "ser_opt_ts")]
    pub revoked_at: Option<i64>,
    /// The key that replaced this one when it was rotated.
    pub replaced_by: Option<String>,
    /// When the gateway last let a call through with it (written in batches).
    #[serde(serialize_with = "ser_opt_ts")]
    pub last_used_at: Option<i64>,
    #[serde(skip)]
    pub hash: SecretHash,
}

impl KeyRecord {
    /// The status a caller sees at `now_ms`: a past expiry turns `active`
    /// (or `rotating`, once its grace is over) into `expired`.
    pub fn status_at(&self, now_ms: i64) -> &str {
        match self.expires_at {
            Some(t) if (self.status == "active" || self.status == "rotating") && t <= now_ms => "expired",
            _ => &self.status,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Admin {
    pub id: String,
    pub name: String,
    pub role: String,
    pub tenant_id: Option<String>,
    #[serde(serialize_with = "ser_ts")]
    pub created_at: i64,
    /// The hash of the admin's bearer token. People who sign in with a
    /// password get the hash of a random secret nobody ever sees, so their
    /// only way in is a session.
    #[serde(skip)]
    pub token_hash: SecretHash,
    /// Argon2 hash (PHC string) of the password, for people.
    #[serde(skip)]
    pub password_hash: Option<String>,
}

/// A signed-in person's session.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub admin_id: String,
    pub created_at: i64,
    pub expires_at: i64,
}

/// Everything the gateway's snapshot is built from, read in one transaction.
pub struct RoutingData {
    pub apis: Vec<Api>,
    pub keys: Vec<KeyRecord>,
    pub consumers: Vec<Consumer>,
    pub tiers: Vec<Tier>,
    /// Blocklist entries that have not expired.
    pub blocks: Vec<Entry>,
}

pub struct ControlStore {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS apis (
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    id TEXT NOT NULL,
    path_prefix TEXT NOT NULL UNIQUE,
    upstream TEXT NOT NULL,
    timeout_ms INTEGER,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE TABLE IF NOT EXISTS consumers (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (tenant_id, name)
);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    consumer_id TEXT NOT NULL REFERENCES consumers(id),
    key_hash BLOB NOT NULL UNIQUE,
    hint TEXT NOT NULL,
    environment TEXT NOT NULL,
    scopes TEXT NOT NULL,
    status TEXT NOT NULL,
    expires_at INTEGER,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX IF NOT EXISTS api_keys_consumer ON api_keys(consumer_id);
CREATE TABLE IF NOT EXISTS admins (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    tenant_id TEXT,
    token_hash BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS admins_name ON admins(name);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    admin_id TEXT NOT NULL,
    token_hash BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    ended_at INTEGER
);
CREATE TABLE IF NOT EXISTS blocklist (
    id TEXT PRIMARY KEY,
    tenant_id TEXT,
    rule_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    reason TEXT NOT NULL,
    expires_at INTEGER,
    added_by TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tiers (
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    id TEXT NOT NULL,
    requests_per_minute INTEGER,
    burst INTEGER,
    daily_quota INTEGER,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
-- Logging settings: scope `*` is the global one, any other a tenant id.
-- `overrides` is a JSON object holding only the values set for the scope.
CREATE TABLE IF NOT EXISTS logging_settings (
    scope TEXT PRIMARY KEY,
    overrides TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
-- Retention settings, stored as the logging settings are.
CREATE TABLE IF NOT EXISTS retention_settings (
    scope TEXT PRIMARY KEY,
    overrides TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
";

/// Columns added after the first release, with their definitions: added to
/// an older `control.db` when it is opened.
const ADDED_COLUMNS: [(&str, &str, &str); 10] = [
    ("apis", "policies", "TEXT NOT NULL DEFAULT '{}'"),
    ("consumers", "tier", "TEXT"),
    ("apis", "rate_per_minute", "INTEGER"),
    ("apis", "rate_burst", "INTEGER"),
    ("apis", "costs", "TEXT NOT NULL DEFAULT '[]'"),
    ("api_keys", "replaced_by", "TEXT"),
    ("api_keys", "last_used_at", "INTEGER"),
    ("admins", "password_hash", "TEXT"),
    ("alert_rules", "secret_generation", "INTEGER NOT NULL DEFAULT 0"),
    ("alert_rules", "previous_secret_until", "INTEGER"),
];

/// The scope of the global logging settings.
pub const GLOBAL_SCOPE: &str = "*";

/// A unique-constraint failure as a conflict described by `what`; any other error as it is.
fn conflict_if_duplicate(e: rusqlite::Error, what: impl FnOnce() -> String) -> StoreError {
    if is_unique_violation(&e) {
        StoreError::Conflict(what())
    } else {
        e.into()
    }
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
        || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

fn hash_from_blob(blob: Vec<u8>) -> rusqlite::Result<SecretHash> {
    blob.try_into().map_err(|_| rusqlite::Error::InvalidColumnType(0, "hash".into(), rusqlite::types::Type::Blob))
}

fn row_to_api(row: &rusqlite::Row<'_>) -> rusqlite::Result<Api> {
    Ok(Api {
        tenant_id: row.get(0)?,
        id: row.get(1)?,
        path_prefix: row.get(2)?,
        upstream: row.get(3)?,
        timeout_ms: row.get::<_, Option<i64>>(4)?.map(|v| v as u64),
        created_at: row.get(5)?,
        rate_limit: match (row.get::<_, Option<u32>>(6)?, row.get::<_, Option<u32>>(7)?) {
            (Some(requests_per_minute), Some(burst)) => Some(RateSpec { requests_per_minute, burst }),
            _ => None,
        },
        costs: serde_json::from_str(&row.get::<_, String>(8)?).unwrap_or_default(),
        policies: serde_json::from_str(&row.get::<_, String>(9)?).unwrap_or_default(),
    })
}

fn row_to_consumer(row: &rusqlite::Row<'_>) -> rusqlite::Result<Consumer> {
    let metadata: String = row.get(4)?;
    Ok(Consumer {
        id: row.get(0)?,
        tenant_id: row.get(1)?,
        name: row.get(2)?,
        status: row.get(3)?,
        metadata: serde_json::from_str(&metadata).unwrap_or(serde_json::Value::Null),
        created_at: row.get(5)?,
        tier: row.get(6)?,
    })
}

fn row_to_tier(row: &rusqlite::Row<'_>) -> rusqlite::Result<Tier> {
    Ok(Tier {
        tenant_id: row.get(0)?,
        id: row.get(1)?,
        requests_per_minute: row.get(2)?,
        burst: row.get(3)?,
        daily_quota: row.get::<_, Option<i64>>(4)?.map(|v| v as u64),
        created_at: row.get(5)?,
    })
}

fn insert_key(conn: &Connection, key: &KeyRecord) -> Result<(), StoreError> {
    conn.execute(
        &format!("INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"),
        params![
            key.key_id,
            key.tenant_id,
            key.consumer_id,
            key.hint,
            key.environment,
            serde_json::to_string(&key.scopes).expect("strings serialise"),
            key.status,
            key.expires_at,
            key.created_at,
            key.revoked_at,
            key.hash.as_slice(),
            key.replaced_by,
            key.last_used_at,
        ],
    )?;
    Ok(())
}

fn row_to_key(row: &rusqlite::Row<'_>) -> rusqlite::Result<KeyRecord> {
    let scopes: String = row.get(5)?;
    Ok(KeyRecord {
        key_id: row.get(0)?,
        tenant_id: row.get(1)?,
        consumer_id: row.get(2)?,
        hint: row.get(3)?,
        environment: row.get(4)?,
        scopes: serde_json::from_str(&scopes).unwrap_or_default(),
        status: row.get(6)?,
        expires_at: row.get(7)?,
        created_at: row.get(8)?,
        revoked_at: row.get(9)?,
        hash: hash_from_blob(row.get(10)?)?,
        replaced_by: row.get(11)?,
        last_used_at: row.get(12)?,
    })
}

const API_COLUMNS: &str = "tenant_id, id, path_prefix, upstream, timeout_ms, created_at, rate_per_minute, rate_burst, costs, policies";
const CONSUMER_COLUMNS: &str = "id, tenant_id, name, status, metadata, created_at, tier";
const BLOCK_COLUMNS: &str = "id, tenant_id, rule_id, kind, value, reason, expires_at, added_by, created_at";

fn row_to_block(row: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    let kind: String = row.get(3)?;
    Ok(Entry {
        id: row.get(0)?,
        tenant_id: row.get(1)?,
        rule_id: row.get(2)?,
        kind: serde_json::from_value(serde_json::Value::String(kind))
            .map_err(|_| rusqlite::Error::InvalidColumnType(3, "kind".into(), rusqlite::types::Type::Text))?,
        value: row.get(4)?,
        reason: row.get(5)?,
        expires_at: row.get(6)?,
        added_by: row.get(7)?,
        created_at: row.get(8)?,
    })
}

fn kind_text(kind: EntryKind) -> String {
    match serde_json::to_value(kind) {
        Ok(serde_json::Value::String(s)) => s,
        _ => unreachable!("kinds serialise as strings"),
    }
}

const TIER_COLUMNS: &str = "tenant_id, id, requests_per_minute, burst, daily_quota, created_at";
const KEY_COLUMNS: &str = "id, tenant_id, consumer_id, hint, environment, scopes, status, expires_at, created_at, revoked_at, key_hash, \
     replaced_by, last_used_at";

impl ControlStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = open(path)?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(alerts::SCHEMA)?;
        for (table, column, definition) in ADDED_COLUMNS {
            let present: bool = conn.query_row(
                &format!("SELECT count(*) FROM pragma_table_info('{table}') WHERE name = ?1"),
                [column],
                |r| r.get::<_, i64>(0),
            )? > 0;
            if !present {
                conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {definition}"))?;
            }
        }
        Ok(ControlStore { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written
        // (statements are atomic), so a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    // --- tenants ---

    pub fn create_tenant(&self, tenant: &Tenant) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "INSERT INTO tenants (id, name, created_at) VALUES (?1, ?2, ?3)",
                params![tenant.id, tenant.name, tenant.created_at],
            )
            .map_err(|e| conflict_if_duplicate(e, || format!("tenant `{}` already exists", tenant.id)))?;
        Ok(())
    }

    pub fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id, name, created_at FROM tenants ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok(Tenant { id: r.get(0)?, name: r.get(1)?, created_at: r.get(2)? }))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn tenant_exists(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.conn().query_row("SELECT 1 FROM tenants WHERE id = ?1", [id], |_| Ok(())).optional()?.is_some())
    }

    // --- apis ---

    pub fn create_api(&self, api: &Api) -> Result<(), StoreError> {
        let conn = self.conn();
        let clash: Option<(String, String)> = conn
            .query_row("SELECT tenant_id, id FROM apis WHERE path_prefix = ?1", [&api.path_prefix], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        if clash.is_some() {
            return Err(StoreError::Conflict(format!("path prefix `{}` is already routed", api.path_prefix)));
        }
        // The longest prefix wins, so prefixes of different tenants never
        // nest: one inside another tenant's api would take that part of its
        // traffic (and one around it would be served in part by the other
        // tenant). A root api is the catch-all for paths no other api
        // serves, and claims none of them; only admins bound to no tenant
        // may create one (`ControlPlane::create_api`).
        if api.path_prefix != "/" {
            let mut stmt = conn.prepare("SELECT path_prefix FROM apis WHERE tenant_id <> ?1 AND path_prefix <> '/'")?;
            let others = stmt.query_map([&api.tenant_id], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
            drop(stmt);
            let nested = |other: &String| {
                crate::snapshot::prefix_matches(other, &api.path_prefix) || crate::snapshot::prefix_matches(&api.path_prefix, other)
            };
            if others.iter().any(nested) {
                return Err(StoreError::Conflict(format!("path prefix `{}` overlaps one already routed", api.path_prefix)));
            }
        }
        conn.execute(
            &format!("INSERT INTO apis ({API_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
            params![
                api.tenant_id,
                api.id,
                api.path_prefix,
                api.upstream,
                api.timeout_ms.map(|v| v as i64),
                api.created_at,
                api.rate_limit.map(|r| r.requests_per_minute),
                api.rate_limit.map(|r| r.burst),
                serde_json::to_string(&api.costs).expect("cost rules serialise"),
                serde_json::to_string(&api.policies).expect("policies serialise"),
            ],
        )
        .map_err(|e| conflict_if_duplicate(e, || format!("api `{}` already exists in tenant `{}`", api.id, api.tenant_id)))?;
        Ok(())
    }

    pub fn list_apis(&self, tenant_id: &str) -> Result<Vec<Api>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {API_COLUMNS} FROM apis WHERE tenant_id = ?1 ORDER BY id"))?;
        let rows = stmt.query_map([tenant_id], row_to_api)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn get_api(&self, tenant_id: &str, api_id: &str) -> Result<Option<Api>, StoreError> {
        Ok(self
            .conn()
            .query_row(&format!("SELECT {API_COLUMNS} FROM apis WHERE tenant_id = ?1 AND id = ?2"), [tenant_id, api_id], row_to_api)
            .optional()?)
    }

    /// Replaces an api's policies. False if there is no such api.
    pub fn set_api_policies(&self, tenant_id: &str, api_id: &str, policies: &Policies) -> Result<bool, StoreError> {
        let text = serde_json::to_string(policies).expect("policies serialise");
        let changed = self.conn().execute(
            "UPDATE apis SET policies = ?3 WHERE tenant_id = ?1 AND id = ?2",
            params![tenant_id, api_id, text],
        )?;
        Ok(changed == 1)
    }

    // --- consumers ---

    /// Stores a new consumer. False (and nothing stored) when its tier does
    /// not exist, checked in the same statement: a tier deleted meanwhile
    /// never gets the consumer.
    pub fn create_consumer(&self, consumer: &Consumer) -> Result<bool, StoreError> {
        let changed = self
            .conn()
            .execute(
                &format!(
                    "INSERT INTO consumers ({CONSUMER_COLUMNS}) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 \
                     WHERE ?7 IS NULL OR EXISTS (SELECT 1 FROM tiers WHERE tenant_id = ?2 AND id = ?7)"
                ),
                params![
                    consumer.id,
                    consumer.tenant_id,
                    consumer.name,
                    consumer.status,
                    consumer.metadata.to_string(),
                    consumer.created_at,
                    consumer.tier,
                ],
            )
            // The name is personal data: the refusal goes into the admin
            // log, which erasure never rewrites, so it does not repeat it.
            .map_err(|e| {
                conflict_if_duplicate(e, || format!("a consumer of that name already exists in tenant `{}`; names are unique in a tenant", consumer.tenant_id))
            })?;
        Ok(changed == 1)
    }

    pub fn list_consumers(&self, tenant_id: &str) -> Result<Vec<Consumer>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {CONSUMER_COLUMNS} FROM consumers WHERE tenant_id = ?1 ORDER BY created_at, id"
        ))?;
        let rows = stmt.query_map([tenant_id], row_to_consumer)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn get_consumer(&self, tenant_id: &str, consumer_id: &str) -> Result<Option<Consumer>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {CONSUMER_COLUMNS} FROM consumers WHERE tenant_id = ?1 AND id = ?2"),
                [tenant_id, consumer_id],
                row_to_consumer,
            )
            .optional()?)
    }

    /// Sets a consumer's tier (`None`: no tier). False if there is no such
    /// consumer or no such tier, checked in the same statement: a tier
    /// deleted meanwhile never gets the consumer.
    pub fn set_consumer_tier(&self, tenant_id: &str, consumer_id: &str, tier: Option<&str>) -> Result<bool, StoreError> {
        let changed = self.conn().execute(
            "UPDATE consumers SET tier = ?3 WHERE tenant_id = ?1 AND id = ?2 \
             AND (?3 IS NULL OR EXISTS (SELECT 1 FROM tiers WHERE tenant_id = ?1 AND id = ?3))",
            params![tenant_id, consumer_id, tier],
        )?;
        Ok(changed == 1)
    }

    /// Sets a consumer's status (`active` or `suspended`). False when it
    /// already had it (or there is no such consumer).
    pub fn set_consumer_status(&self, tenant_id: &str, consumer_id: &str, status: &str) -> Result<bool, StoreError> {
        let changed = self.conn().execute(
            "UPDATE consumers SET status = ?3 WHERE tenant_id = ?1 AND id = ?2 AND status <> ?3",
            params![tenant_id, consumer_id, status],
        )?;
        Ok(changed == 1)
    }

    /// Replaces a consumer's name and metadata (its personal values) with
    /// `name` and `{}`, overwriting the old values on disk: `secure_delete`
    /// zeroes the freed cells, then the file is rebuilt (VACUUM) and its
    /// write-ahead log truncated.
    pub fn anonymize_consumer(&self, tenant_id: &str, consumer_id: &str, name: &str) -> Result<bool, StoreError> {
        let conn = self.conn();
        conn.pragma_update(None, "secure_delete", 1)?;
        let changed = conn.execute(
            "UPDATE consumers SET name = ?3, metadata = '{}' WHERE tenant_id = ?1 AND id = ?2",
            params![tenant_id, consumer_id, name],
        );
        conn.pragma_update(None, "secure_delete", 0)?;
        let changed = changed?;
        // Pages keep stale copies of cells moved earlier: rebuild the file.
        crate::store::audit::erasure::compact(&conn)?;
        Ok(changed == 1)
    }

    // --- blocklist ---

    pub fn add_block(&self, entry: &Entry) -> Result<(), StoreError> {
        self.conn().execute(
            &format!("INSERT INTO blocklist ({BLOCK_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
            params![
                entry.id,
                entry.tenant_id,
                entry.rule_id,
                kind_text(entry.kind),
                entry.value,
                entry.reason,
                entry.expires_at,
                entry.added_by,
                entry.created_at
            ],
        )?;
        Ok(())
    }

    /// A scope's entries (`None`: the global list), newest first.
    pub fn list_blocks(&self, tenant_id: Option<&str>) -> Result<Vec<Entry>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {BLOCK_COLUMNS} FROM blocklist WHERE tenant_id IS ?1 ORDER BY created_at DESC, id"
        ))?;
        let rows = stmt.query_map([tenant_id], row_to_block)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Removes an entry of a scope. False if the scope has no such entry.
    pub fn remove_block(&self, tenant_id: Option<&str>, id: &str) -> Result<bool, StoreError> {
        let changed = self.conn().execute("DELETE FROM blocklist WHERE tenant_id IS ?1 AND id = ?2", params![tenant_id, id])?;
        Ok(changed == 1)
    }

    // --- tiers ---

    pub fn create_tier(&self, tier: &Tier) -> Result<(), StoreError> {
        self.conn()
            .execute(
                &format!("INSERT INTO tiers ({TIER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
                params![
                    tier.tenant_id,
                    tier.id,
                    tier.requests_per_minute,
                    tier.burst,
                    tier.daily_quota.map(|v| v as i64),
                    tier.created_at
                ],
            )
            .map_err(|e| conflict_if_duplicate(e, || format!("tier `{}` already exists in tenant `{}`", tier.id, tier.tenant_id)))?;
        Ok(())
    }

    pub fn list_tiers(&self, tenant_id: &str) -> Result<Vec<Tier>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {TIER_COLUMNS} FROM tiers WHERE tenant_id = ?1 ORDER BY id"))?;
        let rows = stmt.query_map([tenant_id], row_to_tier)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Replaces a tier's limits. False if there is no such tier.
    pub fn update_tier(&self, tier: &Tier) -> Result<bool, StoreError> {
        let changed = self.conn().execute(
            "UPDATE tiers SET requests_per_minute = ?3, burst = ?4, daily_quota = ?5 WHERE tenant_id = ?1 AND id = ?2",
            params![tier.tenant_id, tier.id, tier.requests_per_minute, tier.burst, tier.daily_quota.map(|v| v as i64)],
        )?;
        Ok(changed == 1)
    }

    /// Deletes a tier no consumer is in: `Ok(false)` if there is no such
    /// tier, a conflict naming a consumer if one is still in it.
    pub fn delete_tier(&self, tenant_id: &str, id: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let user: Option<String> = tx
            .query_row("SELECT id FROM consumers WHERE tenant_id = ?1 AND tier = ?2 LIMIT 1", [tenant_id, id], |r| r.get(0))
            .optional()?;
        if let Some(consumer) = user {
            return Err(StoreError::Conflict(format!("tier `{id}` still has consumers (`{consumer}`); move them first")));
        }
        let changed = tx.execute("DELETE FROM tiers WHERE tenant_id = ?1 AND id = ?2", [tenant_id, id])?;
        tx.commit()?;
        Ok(changed == 1)
    }

    pub fn tier_exists(&self, tenant_id: &str, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT 1 FROM tiers WHERE tenant_id = ?1 AND id = ?2", [tenant_id, id], |_| Ok(()))
            .optional()?
            .is_some())
    }

    // --- keys ---

    pub fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        insert_key(&self.conn(), key)
    }

    /// Rotation in one transaction: the new key is stored and the old one
    /// becomes `rotating` until `old_expires_at`. False (and nothing
    /// changed) when the old key was no longer active, or no longer has the
    /// scopes and expiry the new key was given (copied from the old key when
    /// the caller read it: a change made since would be lost on the new key).
    pub fn rotate_key(&self, old_key_id: &str, new: &KeyRecord, old_expires_at: i64) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let scopes = serde_json::to_string(&new.scopes).expect("strings serialise");
        let changed = tx.execute(
            "UPDATE api_keys SET status = 'rotating', expires_at = ?2, replaced_by = ?3 \
             WHERE id = ?1 AND status = 'active' AND scopes = ?4 AND expires_at IS ?5",
            params![old_key_id, old_expires_at, new.key_id, scopes, new.expires_at],
        )?;
        if changed != 1 {
            return Ok(false);
        }
        insert_key(&tx, new)?;
        tx.commit()?;
        Ok(true)
    }

    /// Replaces a key's scopes. False when there is no such key.
    pub fn set_key_scopes(&self, key_id: &str, scopes: &[String]) -> Result<bool, StoreError> {
        let scopes = serde_json::to_string(scopes).expect("strings serialise");
        Ok(self.conn().execute("UPDATE api_keys SET scopes = ?2 WHERE id = ?1", params![key_id, scopes])? == 1)
    }

    /// Records when keys were last used, all in one transaction; a time
    /// never moves backwards.
    pub fn record_key_use(&self, uses: &[(String, i64)]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE api_keys SET last_used_at = max(coalesce(last_used_at, 0), ?2) WHERE id = ?1",
            )?;
            for (key_id, at) in uses {
                stmt.execute(params![key_id, at])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn list_keys(&self, consumer_id: &str) -> Result<Vec<KeyRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE consumer_id = ?1 ORDER BY created_at, id"))?;
        let rows = stmt.query_map([consumer_id], row_to_key)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn get_key(&self, key_id: &str) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self
            .conn()
            .query_row(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?1"), [key_id], row_to_key)
            .optional()?)
    }

    /// Marks a key revoked. Returns false when it already was.
    pub fn revoke_key(&self, key_id: &str, at_ms: i64) -> Result<bool, StoreError> {
        let changed = self.conn().execute(
            "UPDATE api_keys SET status = 'revoked', revoked_at = ?2 WHERE id = ?1 AND status <> 'revoked'",
            params![key_id, at_ms],
        )?;
        Ok(changed == 1)
    }

    /// Everything the gateway snapshot needs, read consistently.
    pub fn load_routing(&self) -> Result<RoutingData, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let apis = {
            let mut stmt = tx.prepare(&format!("SELECT {API_COLUMNS} FROM apis"))?;
            let rows = stmt.query_map([], row_to_api)?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        let keys = {
            let mut stmt = tx.prepare(&format!("SELECT {KEY_COLUMNS} FROM api_keys"))?;
            let rows = stmt.query_map([], row_to_key)?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        let consumers = {
            let mut stmt = tx.prepare(&format!("SELECT {CONSUMER_COLUMNS} FROM consumers"))?;
            let rows = stmt.query_map([], row_to_consumer)?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        let tiers = {
            let mut stmt = tx.prepare(&format!("SELECT {TIER_COLUMNS} FROM tiers"))?;
            let rows = stmt.query_map([], row_to_tier)?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        let blocks = {
            let mut stmt = tx.prepare(&format!(
                "SELECT {BLOCK_COLUMNS} FROM blocklist WHERE expires_at IS NULL OR expires_at > ?1"
            ))?;
            let rows = stmt.query_map([crate::event::now_ms()], row_to_block)?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        tx.commit()?;
        Ok(RoutingData { apis, keys, consumers, tiers, blocks })
    }

    // --- admins ---

    pub fn count_admins(&self) -> Result<u64, StoreError> {
        Ok(self.conn().query_row("SELECT count(*) FROM admins", [], |r| r.get::<_, i64>(0))? as u64)
    }

    pub fn create_admin(&self, admin: &Admin) -> Result<(), StoreError> {
        // Names are sign-in names (a person signs in with a name and a
        // password, no tenant), so they are unique across tenants, and
        // whatever their letters' case (ASCII, the only letters a name
        // has): `Ann` beside `ann` would read as one admin in the admin log
        // and every list. The refusal says only that this one cannot be
        // used, the same whether the creator's own tenant holds it or one
        // it cannot see: not that an admin of that name exists, nor where.
        let taken = || {
            format!(
                "the name `{}` cannot be used: admin names are unique on the whole server, across tenants and whatever the case of their letters (people sign in by name alone); choose another",
                admin.name
            )
        };
        let conn = self.conn();
        // Checked and inserted under the one connection's lock: no other
        // insert comes between.
        if conn.query_row("SELECT 1 FROM admins WHERE name = ?1 COLLATE NOCASE", [&admin.name], |_| Ok(())).optional()?.is_some() {
            return Err(StoreError::Conflict(taken()));
        }
        conn
            .execute(
                "INSERT INTO admins (id, name, role, tenant_id, token_hash, password_hash, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    admin.id,
                    admin.name,
                    admin.role,
                    admin.tenant_id,
                    admin.token_hash.as_slice(),
                    admin.password_hash,
                    admin.created_at
                ],
            )
            .map_err(|e| conflict_if_duplicate(e, taken))?;
        Ok(())
    }

    pub fn list_admins(&self) -> Result<Vec<Admin>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, name, role, tenant_id, token_hash, created_at, password_hash FROM admins ORDER BY created_at, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(Admin {
                id: r.get(0)?,
                name: r.get(1)?,
                role: r.get(2)?,
                tenant_id: r.get(3)?,
                token_hash: hash_from_blob(r.get(4)?)?,
                created_at: r.get(5)?,
                password_hash: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Removes an admin and ends its sessions, in one transaction, unless it is the last
    /// global owner — checked in the same transaction, so removals that
    /// run at once cannot leave none.
    pub fn delete_admin(&self, admin_id: &str, at_ms: i64) -> Result<AdminRemoval, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let found: Option<bool> = tx
            .query_row("SELECT role = 'owner' AND tenant_id IS NULL FROM admins WHERE id = ?1", [admin_id], |r| r.get(0))
            .optional()?;
        let Some(global_owner) = found else { return Ok(AdminRemoval::Missing) };
        if global_owner {
            let owners: i64 = tx.query_row("SELECT count(*) FROM admins WHERE role = 'owner' AND tenant_id IS NULL", [], |r| r.get(0))?;
            if owners <= 1 {
                return Ok(AdminRemoval::LastGlobalOwner);
            }
        }
        tx.execute("UPDATE sessions SET ended_at = ?2 WHERE admin_id = ?1 AND ended_at IS NULL", params![admin_id, at_ms])?;
        tx.execute("DELETE FROM admins WHERE id = ?1", [admin_id])?;
        tx.commit()?;
        Ok(AdminRemoval::Removed)
    }

    // --- sessions ---

    pub fn create_session(&self, session: &Session, token_hash: &SecretHash) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO sessions (id, admin_id, token_hash, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![session.id, session.admin_id, token_hash.as_slice(), session.created_at, session.expires_at],
        )?;
        Ok(())
    }

    /// The live session (not ended, not expired at `now_ms`) a token hash belongs to.
    pub fn live_session(&self, token_hash: &SecretHash, now_ms: i64) -> Result<Option<Session>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT id, admin_id, created_at, expires_at FROM sessions
                 WHERE token_hash = ?1 AND ended_at IS NULL AND expires_at > ?2",
                params![token_hash.as_slice(), now_ms],
                |r| Ok(Session { id: r.get(0)?, admin_id: r.get(1)?, created_at: r.get(2)?, expires_at: r.get(3)? }),
            )
            .optional()?)
    }

    /// Ends a session. Returns false when it had already ended.
    pub fn end_session(&self, session_id: &str, at_ms: i64) -> Result<bool, StoreError> {
        let changed = self.conn().execute(
            "UPDATE sessions SET ended_at = ?2 WHERE id = ?1 AND ended_at IS NULL",
            params![session_id, at_ms],
        )?;
        Ok(changed == 1)
    }

    // --- logging settings ---

    /// Every scope's stored settings.
    pub fn load_logging(&self) -> Result<Vec<(String, LoggingOverrides)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT scope, overrides FROM logging_settings")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (scope, text) = row?;
            let overrides = serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("logging settings of `{scope}`: {e}")))?;
            out.push((scope, overrides));
        }
        Ok(out)
    }

    // --- retention settings ---

    /// Every scope's stored retention settings.
    pub fn load_retention(&self) -> Result<Vec<(String, RetentionOverrides)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT scope, overrides FROM retention_settings")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (scope, text) = row?;
            let overrides = serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("retention settings of `{scope}`: {e}")))?;
            out.push((scope, overrides));
        }
        Ok(out)
    }

    pub fn save_retention(&self, scope: &str, overrides: &RetentionOverrides, at_ms: i64) -> Result<(), StoreError> {
        let text = serde_json::to_string(overrides).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.conn().execute(
            "INSERT INTO retention_settings (scope, overrides, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (scope) DO UPDATE SET overrides = excluded.overrides, updated_at = excluded.updated_at",
            params![scope, text, at_ms],
        )?;
        Ok(())
    }

    pub fn save_logging(&self, scope: &str, overrides: &LoggingOverrides, at_ms: i64) -> Result<(), StoreError> {
        let text = serde_json::to_string(overrides).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.conn().execute(
            "INSERT INTO logging_settings (scope, overrides, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (scope) DO UPDATE SET overrides = excluded.overrides, updated_at = excluded.updated_at",
            params![scope, text, at_ms],
        )?;
        Ok(())
    }
}

/// What [`ControlStore::delete_admin`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRemoval {
    Removed,
    Missing,
    /// Refused: the admin is the last global owner.
    LastGlobalOwner,
}
