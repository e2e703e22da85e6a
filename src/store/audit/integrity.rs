//! Verification of a tenant's trail against its signed checkpoints.
//!
//! The chain alone proves that no event was changed, removed, inserted or
//! reordered *between* events that are still there; someone who rewrites
//! every hash from the changed event on, or cuts off the newest events,
//! leaves a chain that still links. Signed checkpoints close that gap: each
//! must match the chain exactly where it was signed, and the chain must
//! reach every checkpoint.
//!
//! Retention moves a tenant's oldest events into signed archives
//! ([`super::archive`]); `meta.db` keeps each archive's signed manifest,
//! also after the archive itself is deleted. Verification then starts from
//! them: the records must be signed and follow on from the genesis hash,
//! the first hot block must link to the last of them, a checkpoint in an
//! archived range must be the manifest's (which was checked against the
//! events when they were archived), and days restored from archives must
//! rehash to their manifests. The archive files themselves are checked by
//! `keytrail archive verify` ([`super::archive::verify_archives`]).

use std::path::Path;

use ed25519_dalek::VerifyingKey;
use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::reader::{AuditReader, ChainBreak};
use super::META_FILE;
use crate::signing::Checkpoint;
use crate::store::StoreError;

pub const CHECKPOINT_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS checkpoints (
    tenant TEXT NOT NULL,
    seq INTEGER NOT NULL,
    hash BLOB NOT NULL,
    signed_at INTEGER NOT NULL,
    signature BLOB NOT NULL,
    PRIMARY KEY (tenant, seq)
);";

/// Whether `meta.db` (opened read-only, so nothing was created) has `table`.
fn has_table(conn: &rusqlite::Connection, table: &str) -> Result<bool, StoreError> {
    let found: Option<i64> = conn.query_row("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1", [table], |r| r.get(0)).optional()?;
    Ok(found.is_some())
}

/// The tenants `meta.db` holds a signed checkpoint or a chain head of.
fn recorded_tenants(dir: &Path) -> Result<Vec<String>, StoreError> {
    let path = dir.join(META_FILE);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let conn = rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut out = Vec::new();
    for table in ["checkpoints", "heads"] {
        if has_table(&conn, table)? {
            let mut stmt = conn.prepare(&format!("SELECT DISTINCT tenant FROM {table}"))?;
            out.extend(stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?);
        }
    }
    Ok(out)
}

/// The checkpoints kept for `tenant`, oldest first.
pub fn checkpoints(dir: &Path, tenant: &str) -> Result<Vec<Checkpoint>, StoreError> {
    let path = dir.join(META_FILE);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let conn = rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    if !has_table(&conn, "checkpoints")? {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare("SELECT seq, hash, signed_at, signature FROM checkpoints WHERE tenant = ?1 ORDER BY seq")?;
    let rows = stmt.query_map(params![tenant], |r| {
        let hash: Vec<u8> = r.get(1)?;
        let signature: Vec<u8> = r.get(3)?;
        Ok((r.get::<_, i64>(0)?, hash, r.get::<_, i64>(2)?, signature))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, hash, signed_at_ms, signature) = row?;
        out.push(Checkpoint {
            tenant: tenant.to_string(),
            seq: seq as u64,
            // A mangled row keeps its place and fails its signature check.
            hash: hash.try_into().unwrap_or([0; 32]),
            signed_at_ms,
            signature: signature.try_into().unwrap_or([0; 64]),
        });
    }
    Ok(out)
}

/// The problem, if any, of an archived prefix that meta.db's columns
/// (what every reader hides as archived, and where the walk starts) say
/// ends at `floor` (its last `seq` and the hash after it), where the
/// signed archive records end at `signed`.
pub(super) fn floor_problem(floor: (u64, [u8; 32]), signed: (u64, [u8; 32])) -> Option<String> {
    if floor.0 != signed.0 {
        Some(format!(
            "meta.db takes the events up to seq {} as archived (hidden from every read, the hot chain walked from seq {}), but the signed archive records end at seq {}: its archive records were altered",
            floor.0,
            floor.0.saturating_add(1),
            signed.0
        ))
    } else if floor.1 != signed.1 {
        Some(format!(
            "meta.db links the hot chain to a hash after seq {} that is not the one the signed archive records end with: its archive records were altered",
            floor.0
        ))
    } else {
        None
    }
}

/// What `keytrail verify` reports for one tenant.
#[derive(Debug, Clone, Serialize)]
pub struct IntegrityReport {
    pub tenant: String,
    pub ok: bool,
    /// With `--from`: the first `seq` checked; the events before it were
    /// not read, and its link to them was trusted as stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_seq: Option<u64>,
    /// Events whose chain verified, and the last of them.
    pub events: u64,
    pub last_seq: u64,
    pub checkpoints: usize,
    pub last_checkpoint_seq: Option<u64>,
    /// Archives retention wrote (and has not deleted), and the last `seq`
    /// they (or deleted ones) cover: the hot chain starts after it.
    pub archives: usize,
    pub archived_through: u64,
    /// Every problem found, most telling first; each names the sequence
    /// numbers it concerns.
    pub problems: Vec<String>,
}

/// Walks `tenant`'s chain and checks every checkpoint against it: its
/// signature, that the chain reaches it, and that the chain's hash at its
/// `seq` is the one signed.
///
/// With `from_ms`, the hot chain is walked from its first block holding an
/// event at or after that time ([`AuditReader::verify_from`]); checkpoints
/// before it are checked for their signature only. Archive records, being
/// small, are always all checked.
pub fn verify_tenant(dir: &Path, tenant: &str, key: &VerifyingKey, from_ms: Option<i64>) -> Result<IntegrityReport, StoreError> {
    verify_tenant_with(dir, tenant, key, from_ms, &mut |_, _| {})
}

/// [`verify_tenant`], telling `progress` how far the walk of the hot
/// chain has come (events checked, events in all) after each block.
pub fn verify_tenant_with(dir: &Path, tenant: &str, key: &VerifyingKey, from_ms: Option<i64>, progress: &mut dyn FnMut(u64, u64)) -> Result<IntegrityReport, StoreError> {
    let records = super::archive::records(dir, Some(tenant))?;
    // Before the walk, and before the reader lists the day files: a
    // checkpoint signed meanwhile (a busy server signs every few seconds)
    // may be past the last event the walk sees, or in a day file made since
    // (at midnight), and would read as a truncated tail. Those read now
    // are all within reach.
    let checkpoints = checkpoints(dir, tenant)?;
    let reader = AuditReader::open(dir)?;
    let chain = reader.verify_from_with(tenant, from_ms, progress)?;
    let mut problems = Vec::new();
    // The archived prefix: signed records that follow on from the genesis hash.
    // (`signed_end`: the last `seq` they cover; a record altered to the
    // edge of `seq` is reported, not overflowed.)
    let (mut next_seq, mut next_hash, mut signed_end) = (1u64, crate::event::GENESIS_HASH, 0u64);
    for r in &records {
        let m = &r.manifest;
        if !m.signature_ok(key) {
            problems.push(format!("archive {} (events {}..={}): its signed record does not verify (forged or altered)", m.name, m.first_seq, m.last_seq));
        }
        if !r.deletion_signed(key) {
            problems.push(format!(
                "archive {} (events {}..={}): meta.db marks it deleted, but the mark is not retention's (not signed: set by hand?)",
                m.name, m.first_seq, m.last_seq
            ));
        }
        if m.first_seq > next_seq {
            problems.push(format!("events {}..={} are missing: no archive record covers them (before archive {})", next_seq, m.first_seq - 1, m.name));
        } else if m.first_seq < next_seq {
            problems.push(format!("archive {} (events {}..={}) overlaps the archives before it", m.name, m.first_seq, m.last_seq));
        } else if m.prev_hash() != next_hash {
            problems.push(format!("archive {} (events {}..={}) does not link to the events before it", m.name, m.first_seq, m.last_seq));
        }
        (next_seq, next_hash, signed_end) = (m.last_seq.saturating_add(1), m.last_hash(), m.last_seq);
    }
    // Where reads and the walk take the hot chain to start comes from
    // meta.db's unsigned columns: it must be where the signed records end,
    // or events after them would be hidden as archived and never walked.
    let (archived_through, floor_hash) = reader.archived_through(tenant);
    if let Some(problem) = floor_problem((archived_through, floor_hash), (signed_end, next_hash)) {
        problems.push(problem);
    }
    if let Some(ChainBreak { first_seq, last_seq, reason }) = &chain.first_break {
        problems.push(format!("events {first_seq}..={last_seq}: {reason}"));
    }
    let ends: std::collections::HashMap<u64, [u8; 32]> = chain.block_ends.iter().copied().collect();
    for cp in &checkpoints {
        if !crate::signing::verify(key, cp) {
            problems.push(format!("checkpoint at seq {}: the signature does not verify (forged or altered checkpoint)", cp.seq));
        } else if cp.seq <= archived_through {
            let archive = records.iter().map(|r| &r.manifest).find(|m| (m.first_seq..=m.last_seq).contains(&cp.seq));
            let vouched = archive.is_some_and(|m| {
                (cp.seq == m.last_seq && m.last_hash() == cp.hash)
                    || m.checkpoints.iter().any(|c| c.seq == cp.seq && crate::signing::from_hex::<32>(&c.hash) == Some(cp.hash))
            });
            if !vouched {
                problems.push(match archive {
                    Some(m) => format!("checkpoint at seq {}: archive {} does not hold the hash signed there", cp.seq, m.name),
                    None => format!("checkpoint at seq {}: no archive record covers it", cp.seq),
                });
            }
        } else if chain.started_at.is_some_and(|start| cp.seq < start) {
            // Before the walk's start: its signature is all that is checked.
        } else if cp.seq > chain.last_seq {
            if chain.first_break.is_none() {
                problems.push(format!(
                    "checkpoint at seq {} (signed {}) but the chain ends at seq {}: events {}..={} are missing",
                    cp.seq,
                    crate::event::format_timestamp(cp.signed_at_ms),
                    chain.last_seq,
                    chain.last_seq + 1,
                    cp.seq
                ));
            }
        } else if ends.get(&cp.seq) != Some(&cp.hash) {
            problems.push(format!(
                "checkpoint at seq {}: the chain's hash there is not the one signed (events up to seq {} were rewritten)",
                cp.seq, cp.seq
            ));
        }
    }
    // Restored days: each run must rehash, and begin and end as archives do.
    for run in reader.restored_runs(tenant)? {
        if let Some(problem) = run.problem {
            problems.push(problem);
        }
        let starts = records.iter().any(|r| r.manifest.first_seq == run.first_seq && r.manifest.prev_hash() == run.prev_hash);
        let ends = records.iter().any(|r| r.manifest.last_seq == run.last_seq && r.manifest.last_hash() == run.hash);
        if !(starts && ends) {
            problems.push(format!("restored events {}..={} are not what the signed archive records say", run.first_seq, run.last_seq));
        }
    }
    Ok(IntegrityReport {
        tenant: tenant.to_string(),
        ok: problems.is_empty(),
        from_seq: chain.started_at,
        events: chain.events,
        last_seq: chain.last_seq,
        checkpoints: checkpoints.len(),
        last_checkpoint_seq: checkpoints.last().map(|c| c.seq),
        archives: records.iter().filter(|r| r.deleted_at_ms.is_none()).count(),
        archived_through,
        problems,
    })
}

/// Verifies one tenant, or every tenant in the audit directory `dir`.
pub fn verify_dir(dir: &Path, tenant: Option<&str>, key: &VerifyingKey) -> Result<Vec<IntegrityReport>, StoreError> {
    verify_dir_from(dir, tenant, key, None)
}

/// [`verify_dir`] from a time on (see [`verify_tenant`]).
pub fn verify_dir_from(dir: &Path, tenant: Option<&str>, key: &VerifyingKey, from_ms: Option<i64>) -> Result<Vec<IntegrityReport>, StoreError> {
    verify_dir_with(dir, tenant, key, from_ms, &mut |_, _, _| {})
}

/// [`verify_dir_from`], telling `progress` which tenant's chain is being
/// walked and how far (see [`verify_tenant_with`]).
pub fn verify_dir_with(
    dir: &Path,
    tenant: Option<&str>,
    key: &VerifyingKey,
    from_ms: Option<i64>,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<Vec<IntegrityReport>, StoreError> {
    let reader = AuditReader::open(dir)?;
    // Also those `meta.db` knows of (signed checkpoints, chain heads): a
    // tenant whose every block was deleted still has a chain to check.
    let mut all: std::collections::BTreeSet<String> = reader.tenants()?.into_iter().collect();
    all.extend(recorded_tenants(dir)?);
    let tenants = match tenant {
        Some(t) if all.contains(t) => vec![t.to_string()],
        // A tenant the trail holds nothing of (a typo) has nothing that
        // could pass: "ok" would vouch for events never checked.
        Some(t) => return Err(StoreError::NotFound(format!("tenant `{t}` (no events, checkpoints or chain of it in {})", dir.display()))),
        None => all.into_iter().collect(),
    };
    drop(reader);
    // Each with a reader of its own, opened when its turn comes.
    tenants.iter().map(|t| verify_tenant_with(dir, t, key, from_ms, &mut |done, total| progress(t, done, total))).collect()
}

/// What `keytrail verify --file` reports for a JSON export.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub tenant: String,
    pub ok: bool,
    pub events: usize,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Whether the export holds every event from `first_seq` to `last_seq`
    /// (an export filtered by category, consumer, path… does not).
    pub complete: bool,
    /// Missing sequence numbers, as ranges.
    pub gaps: Vec<(u64, u64)>,
    pub checkpoints_verified: usize,
    /// The last event a verified checkpoint vouches for, when the export is
    /// complete up to it: the range `first_seq..=proven_through` is proven
    /// complete and unaltered.
    pub proven_through: Option<u64>,
    pub problems: Vec<String>,
}

fn hex32(value: &serde_json::Value) -> Option<[u8; 32]> {
    crate::signing::from_hex(value.as_str()?)
}

/// Verifies a JSON export (`/export/json`) offline: every event against its
/// hashes, every visible field against the event, the links between
/// consecutive events, and the export's checkpoints with `key`.
pub fn verify_export(doc: &serde_json::Value, key: &VerifyingKey) -> Result<ExportReport, String> {
    let tenant = doc["tenant_id"].as_str().ok_or("not a keytrail JSON export: no `tenant_id`")?.to_string();
    let logs = doc["logs"].as_array().ok_or("not a keytrail JSON export: no `logs` array")?;
    let mut check = ExportCheck::new(tenant, &doc["verification"], logs.len());
    for (i, entry) in logs.iter().enumerate() {
        check.row(i, entry);
    }
    Ok(check.finish(&doc["verification"], key))
}

/// Why an export file could not be checked at all.
#[derive(Debug)]
pub enum ExportFileError {
    /// The file cannot be read.
    Io(std::io::Error),
    /// It is not JSON (or is cut short).
    NotJson(serde_json::Error),
    /// It is JSON, but not the shape of a keytrail export.
    NotExport(String),
}

impl std::fmt::Display for ExportFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExportFileError::Io(e) => write!(f, "cannot be read: {e}"),
            ExportFileError::NotJson(e) => write!(f, "is not JSON: {e}"),
            ExportFileError::NotExport(e) => write!(f, "is not a keytrail JSON export: {e}"),
        }
    }
}

impl From<serde_json::Error> for ExportFileError {
    fn from(e: serde_json::Error) -> Self {
        match e.classify() {
            serde_json::error::Category::Io => ExportFileError::Io(e.into()),
            serde_json::error::Category::Data => ExportFileError::NotExport(e.to_string()),
            _ => ExportFileError::NotJson(e),
        }
    }
}

/// [`verify_export`] of an export file, read twice as a stream — first for
/// its tenant and its `verification` (which comes after the rows), then
/// row by row — so memory holds one row at a time and 72 bytes per event,
/// whatever the size of the export.
pub fn verify_export_file(path: &Path, key: &VerifyingKey) -> Result<ExportReport, ExportFileError> {
    use serde::de::DeserializeSeed;
    let open = || -> Result<_, ExportFileError> {
        let file = std::fs::File::open(path).map_err(ExportFileError::Io)?;
        Ok(serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(1 << 16, file)))
    };
    let mut de = open()?;
    let frame = ExportPass { rows: None }.deserialize(&mut de)?;
    de.end()?;
    let tenant = frame.tenant.ok_or_else(|| ExportFileError::NotExport("no `tenant_id`".into()))?;
    if !frame.logs {
        return Err(ExportFileError::NotExport("no `logs` array".into()));
    }
    // The first pass counted the rows: their records take exactly that
    // room, not up to twice it (and both while a growing list is copied).
    let mut check = ExportCheck::new(tenant, &frame.verification, frame.rows);
    ExportPass { rows: Some(&mut check) }.deserialize(&mut open()?)?;
    Ok(check.finish(&frame.verification, key))
}

/// What the first pass over an export file keeps.
struct ExportFrame {
    tenant: Option<String>,
    logs: bool,
    /// The rows of `logs`.
    rows: usize,
    verification: serde_json::Value,
}

/// One pass over an export file's top-level object: without `rows`, its
/// tenant and `verification` (the rows skipped); with them, each row
/// handed to the check as it is read.
struct ExportPass<'c> {
    rows: Option<&'c mut ExportCheck>,
}

impl<'de> serde::de::DeserializeSeed<'de> for ExportPass<'_> {
    type Value = ExportFrame;
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<ExportFrame, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ExportPass<'_> {
    type Value = ExportFrame;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object with `tenant_id`, `logs` and `verification`")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<ExportFrame, A::Error> {
        use serde::de::Error;
        let mut frame = ExportFrame { tenant: None, logs: false, rows: 0, verification: serde_json::Value::Null };
        let mut seen = std::collections::HashSet::new();
        while let Some(name) = map.next_key::<String>()? {
            if !seen.insert(name.clone()) {
                return Err(A::Error::custom(format!("`{name}` appears twice")));
            }
            match name.as_str() {
                "tenant_id" => match map.next_value::<serde_json::Value>()? {
                    serde_json::Value::String(tenant) => frame.tenant = Some(tenant),
                    _ => return Err(A::Error::custom("`tenant_id` is not a text")),
                },
                "logs" => {
                    frame.rows = map.next_value_seed(Rows { check: self.rows.as_deref_mut() })?;
                    frame.logs = true;
                }
                "verification" => frame.verification = map.next_value()?,
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(frame)
    }
}

/// An export's `logs` array, each row checked (or skipped) as it comes.
struct Rows<'c> {
    check: Option<&'c mut ExportCheck>,
}

impl<'de> serde::de::DeserializeSeed<'de> for Rows<'_> {
    type Value = usize;
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Rows<'_> {
    type Value = usize;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("`logs`: an array of events")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut i = 0;
        match self.check {
            None => {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    i += 1;
                }
            }
            Some(check) => {
                while let Some(entry) = seq.next_element::<serde_json::Value>()? {
                    check.row(i, &entry);
                    i += 1;
                }
            }
        }
        Ok(i)
    }
}

/// The check of an export, fed its rows one at a time: what it keeps of
/// each is its `seq` and hashes, for the links, the gaps and the
/// checkpoints.
struct ExportCheck {
    tenant: String,
    salts: rustc_hash::FxHashMap<(i64, String), [u8; 32]>,
    problems: Vec<String>,
    rows: Vec<(u64, [u8; 32], [u8; 32])>,
}

impl ExportCheck {
    fn new(tenant: String, verification: &serde_json::Value, rows: usize) -> ExportCheck {
        let mut problems = Vec::new();
        // The personal salts of the export's consumers (see `super::salts`).
        let salts = match serde_json::from_value::<super::salts::DaySalts>(
            verification.get("personal_salts").cloned().unwrap_or(serde_json::json!({})),
        ) {
            Ok(map) => super::salts::from_hex(&map).unwrap_or_else(|e| {
                problems.push(format!("verification: {e}"));
                Default::default()
            }),
            Err(_) => {
                problems.push("verification: `personal_salts` must map days to consumer ids to 64 hexadecimal digits".to_string());
                Default::default()
            }
        };
        ExportCheck { tenant, salts, problems, rows: Vec::with_capacity(rows) }
    }

    /// Checks row `i` on its own: its event against its hash, its fields
    /// against its event.
    fn row(&mut self, i: usize, entry: &serde_json::Value) {
        use crate::event::Event;
        let problems = &mut self.problems;
        let at = entry["seq"].as_u64().map_or(format!("entry {i}"), |s| format!("seq {s}"));
        let event: Event = match serde_json::from_value(entry["event"].clone()) {
            Ok(event) => event,
            Err(e) => {
                problems.push(format!("{at}: the event cannot be read ({e}); was the export made by keytrail 0.1 or later?"));
                return;
            }
        };
        let (Some(prev), Some(hash)) = (hex32(&entry["prev_hash"]), hex32(&entry["hash"])) else {
            problems.push(format!("{at}: `hash` and `prev_hash` must be 64 hexadecimal digits"));
            return;
        };
        if event.tenant_id != self.tenant {
            problems.push(format!("{at}: the event belongs to tenant `{}`", event.tenant_id));
        }
        match event.chain_hash(&prev, super::salts::salt_for(&self.salts, &event)) {
            Ok(computed) if computed == hash => {}
            Ok(_) => problems.push(format!("seq {}: the event does not match its hash (changed)", event.seq)),
            Err(_) => problems.push(format!(
                "seq {}: the export holds no personal salt for consumer `{}`",
                event.seq,
                event.consumer_id.as_deref().unwrap_or("")
            )),
        }
        // The fields a reader sees must be the event's own.
        let seq = event.seq;
        let stored = super::StoredEvent { event, hash: Some(hash), prev_hash: Some(prev) };
        let mut shown = crate::audit::views::log_entry(&stored);
        shown["prev_hash"] = entry["prev_hash"].clone();
        shown["event"] = entry["event"].clone();
        if &shown != entry {
            problems.push(format!("seq {seq}: the entry's fields differ from its event (changed)"));
        }
        self.rows.push((seq, prev, hash));
    }

    /// The links, gaps and checkpoints over every row.
    fn finish(self, verification: &serde_json::Value, key: &VerifyingKey) -> ExportReport {
        let ExportCheck { tenant, mut problems, mut rows, .. } = self;
        rows.sort_by_key(|r| r.0);
        let mut gaps = Vec::new();
        for pair in rows.windows(2) {
            let ((a, _, a_hash), (b, b_prev, _)) = (pair[0], pair[1]);
            if b == a {
                problems.push(format!("seq {b}: appears twice"));
            } else if b == a + 1 {
                if b_prev != a_hash {
                    problems.push(format!("seq {b}: does not follow seq {a} (its previous hash differs)"));
                }
            } else {
                gaps.push((a + 1, b - 1));
            }
        }
        let checkpoints = verification["checkpoints"].as_array().map(Vec::as_slice).unwrap_or_default();
        let hash_at = |seq: u64| rows.binary_search_by_key(&seq, |r| r.0).ok().map(|i| rows[i].2);
        let mut verified = 0;
        let mut proven_through = None;
        for value in checkpoints {
            let cp = (|| {
                Some(Checkpoint {
                    tenant: value["tenant"].as_str()?.to_string(),
                    seq: value["seq"].as_u64()?,
                    hash: hex32(&value["hash"])?,
                    signed_at_ms: value["signed_at_ms"].as_i64()?,
                    signature: crate::signing::from_hex(value["signature"].as_str()?)?,
                })
            })();
            let Some(cp) = cp else {
                problems.push(format!("a checkpoint cannot be read: {value}"));
                continue;
            };
            if cp.tenant != tenant || !crate::signing::verify(key, &cp) {
                problems.push(format!("checkpoint at seq {}: the signature does not verify with this public key", cp.seq));
                continue;
            }
            match hash_at(cp.seq) {
                Some(hash) if hash == cp.hash => {
                    verified += 1;
                    let gap_free = gaps.iter().all(|(from, _)| *from > cp.seq);
                    if gap_free && proven_through.is_none_or(|p| p < cp.seq) {
                        proven_through = Some(cp.seq);
                    }
                }
                Some(_) => problems.push(format!("checkpoint at seq {}: the export's hash there is not the one signed (changed)", cp.seq)),
                // An export holds the checkpoints of its own range of `seq`
                // only: one outside the rows' range had its events cut off.
                None => match (rows.first(), rows.last()) {
                    (Some(_), Some(last)) if cp.seq > last.0 => problems.push(format!(
                        "checkpoint at seq {} (signed {}) is past the export's last event (seq {}): events {}..={} were cut off the export",
                        cp.seq,
                        crate::event::format_timestamp(cp.signed_at_ms),
                        last.0,
                        last.0 + 1,
                        cp.seq
                    )),
                    (Some(first), _) if cp.seq < first.0 => problems.push(format!(
                        "checkpoint at seq {} is before the export's first event (seq {}): events {}..={} were cut off the export",
                        cp.seq,
                        first.0,
                        cp.seq,
                        first.0 - 1
                    )),
                    (None, _) => problems.push(format!("checkpoint at seq {}: the export holds no event; its events were cut off", cp.seq)),
                    // In a filtered export's gaps: nothing to compare.
                    _ => {}
                },
            }
        }
        ExportReport {
            tenant,
            ok: problems.is_empty(),
            events: rows.len(),
            first_seq: rows.first().map(|r| r.0),
            last_seq: rows.last().map(|r| r.0),
            complete: gaps.is_empty(),
            gaps,
            checkpoints_verified: verified,
            proven_through: if problems.is_empty() { proven_through } else { None },
            problems,
        }
    }
}
