//! Personal salts: random 32-byte salts with which the chain commits to
//! events' personal values ([`crate::event::personal_commitment`]).
//!
//! Each day file holds the salts of its own events (`personal_salts`): one
//! per tenant and consumer that has events with personal values in the file,
//! made by the writer the first time it needs one and committed in the same
//! transaction as the events. A day file therefore verifies on its own, and
//! losing `meta.db` loses no salt. Erasing a consumer's personal data
//! ([`super::erasure`]) deletes its salts last, once every event that needed
//! one holds its commitment instead: the commitments are then 32 random-looking
//! bytes, which no guessing of addresses or names can match.
//!
//! Events without a consumer (an unknown key, an admin's own call) share a
//! salt under the empty consumer id, [`NO_CONSUMER`].
//!
//! Salts travel with the data that needs them to be verified elsewhere:
//! JSON exports end with the salts of their rows, archive manifests hold
//! those of their events, each by UTC day and consumer ([`DaySalts`]).

use std::collections::BTreeMap;

use rusqlite::{params, Connection};
use rustc_hash::FxHashMap;

use crate::store::StoreError;

/// In every day file; `tenant` is the file's dictionary id of the tenant.
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS personal_salts (
    tenant INTEGER NOT NULL,
    consumer TEXT NOT NULL,
    salt BLOB NOT NULL,
    PRIMARY KEY (tenant, consumer)
);";

/// The consumer id under which events without a consumer are salted.
pub const NO_CONSUMER: &str = "";

/// One tenant's salts in one day file, by consumer id.
pub type TenantSalts = FxHashMap<String, [u8; 32]>;

/// Salts as exports and manifests carry them: by UTC day (`YYYY-MM-DD`,
/// the day of the event's timestamp, which is its day file's) and consumer
/// id, as 64 hex digits.
pub type DaySalts = BTreeMap<String, BTreeMap<String, String>>;

/// The consumer key of an event.
pub fn consumer_key(consumer_id: Option<&str>) -> &str {
    consumer_id.unwrap_or(NO_CONSUMER)
}

/// `tenant`'s salts in the day file open on `conn` (`tenant` is the file's
/// dictionary id of the tenant).
pub fn tenant_salts(conn: &Connection, tenant: u32) -> Result<TenantSalts, StoreError> {
    let mut out = TenantSalts::default();
    let mut stmt = conn.prepare_cached("SELECT consumer, salt FROM personal_salts WHERE tenant = ?1")?;
    let mut rows = stmt.query(params![tenant])?;
    while let Some(r) = rows.next()? {
        out.insert(r.get(0)?, to_salt(r.get(1)?)?);
    }
    Ok(out)
}

/// Every salt in the day file open on `conn`, by tenant id and consumer.
pub fn all_salts(conn: &Connection) -> Result<Vec<(u32, String, [u8; 32])>, StoreError> {
    let mut stmt = conn.prepare("SELECT tenant, consumer, salt FROM personal_salts")?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push((r.get(0)?, r.get(1)?, to_salt(r.get(2)?)?));
    }
    Ok(out)
}

fn to_salt(bytes: Vec<u8>) -> Result<[u8; 32], StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt("a personal salt is not 32 bytes".into()))
}

/// Adds `salt` for `day` and `consumer` to a [`DaySalts`].
pub fn add_hex(out: &mut DaySalts, day: i64, consumer: &str, salt: &[u8; 32]) {
    out.entry(super::archive::day_name(day)).or_default().insert(consumer.to_string(), crate::event::to_hex(salt));
}

/// Salts by day number and consumer id, as [`from_hex`] reads them.
pub type SaltMap = FxHashMap<(i64, String), [u8; 32]>;

/// A [`DaySalts`] read back: by day number and consumer. The error names
/// the first entry that is not a day and 64 hex digits.
pub fn from_hex(salts: &DaySalts) -> Result<SaltMap, String> {
    let mut out = FxHashMap::default();
    for (day, consumers) in salts {
        let number = super::archive::parse_day(day).ok_or_else(|| format!("personal salts: `{day}` is not a day (YYYY-MM-DD)"))?;
        for (consumer, text) in consumers {
            let salt = crate::signing::from_hex::<32>(text)
                .ok_or_else(|| format!("personal salts: the salt of consumer `{consumer}` on {day} is not 64 hexadecimal digits"))?;
            out.insert((number, consumer.clone()), salt);
        }
    }
    Ok(out)
}

/// The salt an event needs from a map read by [`from_hex`].
pub fn salt_for<'m>(map: &'m FxHashMap<(i64, String), [u8; 32]>, event: &crate::event::Event) -> Option<&'m [u8; 32]> {
    map.get(&(super::day_of(event.timestamp_ms), consumer_key(event.salt_owner()).to_string()))
}
