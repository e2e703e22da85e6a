//! Personal salts: random 32-byte salts with which the chain commits to
//! events' personal values ([`crate::event::personal_commitment`]).
//!
//! Each day file holds the salts of its own events (`personal_salts`): one
//! per tenant and consumer that has events with personal values in the file,
//! made by the writer the first time it needs one and committed in the same
//! transaction as the events (for a day already archived, whose file
//! retention dropped and a late event made anew, the one the day's archive
//! holds: [`archived_salts`]). A day file therefore verifies on its own, and
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

use rusqlite::{params, Connection, OptionalExtension};
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

/// Salts archived for one day, by tenant and consumer id, as
/// [`archived_salts`] reads them.
pub type ArchivedSalts = FxHashMap<(String, String), [u8; 32]>;

/// The personal salts the archives recorded in `meta` (`meta.db`) hash
/// events of `day` with, by tenant and consumer id: where a consumer's
/// events of the day are in more than one archive, the first archive's.
///
/// The writer salts a day file made anew for a day already archived (its
/// file dropped by retention, then a call stamped on that day committed)
/// with these rather than new ones: the day's archives and the later one
/// that takes the new file's events then hash each consumer's events with
/// one salt, as a restored day file, which holds one, needs. An archive
/// named for day N holds events of day N and before only (the run of day
/// N's file, with older files' blocks), so only those named for `day` or
/// later are read. An erased consumer's salts are gone from the records
/// too: its events from now on get a new one.
pub fn archived_salts(meta: &Connection, day: i64) -> Result<ArchivedSalts, StoreError> {
    let mut out = ArchivedSalts::default();
    let has_archives: Option<i64> =
        meta.query_row("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'archives'", [], |r| r.get(0)).optional()?;
    if has_archives.is_none() {
        return Ok(out);
    }
    let name = super::archive::day_name(day);
    let path = format!("$.personal_salts.\"{name}\"");
    let mut stmt = meta.prepare_cached(
        "SELECT tenant, json_extract(manifest, ?2) FROM archives
         WHERE name >= ?1 AND json_extract(manifest, ?2) IS NOT NULL ORDER BY tenant, first_seq",
    )?;
    let mut rows = stmt.query(params![name, path])?;
    while let Some(r) = rows.next()? {
        let tenant: String = r.get(0)?;
        let text: String = r.get(1)?;
        let consumers: BTreeMap<String, String> = serde_json::from_str(&text)
            .map_err(|e| StoreError::Corrupt(format!("the personal salts of an archive of `{tenant}` in meta.db cannot be read: {e}")))?;
        for (consumer, hex) in consumers {
            let salt = crate::signing::from_hex::<32>(&hex).ok_or_else(|| {
                StoreError::Corrupt(format!("an archive of `{tenant}` in meta.db holds a personal salt for {name} that is not 64 hexadecimal digits"))
            })?;
            out.entry((tenant.clone(), consumer)).or_insert(salt);
        }
    }
    Ok(out)
}

/// The salt an event needs from a map read by [`from_hex`].
pub fn salt_for<'m>(map: &'m FxHashMap<(i64, String), [u8; 32]>, event: &crate::event::Event) -> Option<&'m [u8; 32]> {
    map.get(&(super::day_of(event.timestamp_ms), consumer_key(event.salt_owner()).to_string()))
}
