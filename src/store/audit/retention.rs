//! Retention: hot days in the store, then a signed archive, then nothing.
//!
//! [`run`] takes the time as a parameter (the server passes the clock,
//! tests any time they like) and, in order:
//! 1. **archives** each tenant's chain, oldest first, one run per hot day
//!    file: the run starts at the first `seq` not yet archived and takes
//!    the tenant's blocks, in `seq` order, while they are in that day's file
//!    or an older one. A run is archived once its day is past the tenant's
//!    hot window (every event of the day is `hot_days` old: the run of day
//!    D goes at the start of day D + 1 + `hot_days`, UTC). Every block is
//!    rehashed on the way and must link to the one before; the signed
//!    checkpoints in the run must match; a tenant whose chain does not
//!    verify is not archived (the problem is reported and nothing is lost);
//! 2. **deletes expired archives**: an archive whose newest event is
//!    `hot_days + archive_days` old (by UTC day, as above) loses its file
//!    and manifest; its signed record stays in `meta.db`. Any of its blocks
//!    still in a hot day file (shared with a tenant whose hot window is
//!    longer) are deleted from that file then, so no event outlives its
//!    retention;
//! 3. **drops hot day files**: a day file goes, whole, once every tenant in
//!    it has all its events there archived. A tenant whose hot window is
//!    longer keeps the file until its own events there are archived; the
//!    others' archived blocks in it are hidden from every reader meanwhile.
//!    The events of a day are never deleted row by row.
//!
//! Each step is recorded in the tenant's own trail by the caller, from
//! [`RetentionReport::events`]: `archive_written`, `archive_deleted` and
//! `hot_data_dropped` security events with counts and `seq` ranges. Each
//! event is also put in a journal in `meta.db` (`retention_events`) in the
//! same transaction as the step's record (an archive's, a deletion's), or
//! before the day file goes: a process stopped before the events reach the
//! trail (killed during a long run, or right after it) leaves them there,
//! and the server records them from [`unrecorded`] before its next run,
//! then [`forget_recorded`]s them once they are committed.
//!
//! Safety with the writer: only days before yesterday (by the clock
//! given) are ever archived or deleted (`hot_days` ≥ 1), the writer names
//! the day files it holds open ([`super::writer::open_days`]) and retention
//! skips those. A reader that has a day file open while it is deleted
//! keeps reading it (on Linux the file lives on until its last descriptor
//! closes); one that listed the day but opens it afterwards reads it as
//! empty.

use std::collections::BTreeSet;
use std::path::Path;

use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use serde_json::json;

use super::archive::{self, ArchiveWriter};
use super::reader::{AuditReader, DictCache, HotBlock};
use super::{day_file_name, day_of, META_FILE};
use crate::event::{Category, Event};
use crate::settings::retention::RetentionPolicy;
use crate::signing::Signer;
use crate::store::{open, StoreError};

/// What retention did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    ArchiveWritten,
    ArchiveDeleted,
    HotDataDropped,
}

impl ActionKind {
    /// The security event type it is recorded as.
    pub fn event_type(self) -> &'static str {
        match self {
            ActionKind::ArchiveWritten => crate::event::security_type::ARCHIVE_WRITTEN,
            ActionKind::ArchiveDeleted => crate::event::security_type::ARCHIVE_DELETED,
            ActionKind::HotDataDropped => crate::event::security_type::HOT_DATA_DROPPED,
        }
    }
}

/// The journal of retention's events not yet in the trail (see the module
/// documentation), one per step: the kind, the tenant and the archive's
/// name or the day, and the event as JSON.
const JOURNAL_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS retention_events (
    kind TEXT NOT NULL,
    tenant TEXT NOT NULL,
    day TEXT NOT NULL,
    event TEXT NOT NULL,
    PRIMARY KEY (kind, tenant, day)
);";

/// A step's place in the journal: its kind, tenant and day.
pub type JournalKey = (String, String, String);

/// Puts the event of `action` in the journal (a step done again after a
/// crash, a day file dropped, keeps one).
fn journal(meta: &rusqlite::Connection, action: &Action, now_ms: i64) -> Result<(), StoreError> {
    let event = serde_json::to_string(&action.event(now_ms)).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    meta.execute(
        "INSERT OR IGNORE INTO retention_events (kind, tenant, day, event) VALUES (?1, ?2, ?3, ?4)",
        params![action.kind.event_type(), action.tenant, action.day, event],
    )?;
    Ok(())
}

/// Retention's events that steps done put in the journal and the trail
/// has not been said to hold ([`forget_recorded`]): those of a run whose
/// process stopped before they were committed, and of the last run.
pub fn unrecorded(audit_dir: &Path) -> Result<Vec<(JournalKey, Event)>, StoreError> {
    let path = audit_dir.join(META_FILE);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let meta = open(&path)?;
    meta.execute_batch(JOURNAL_SCHEMA)?;
    let mut stmt = meta.prepare("SELECT kind, tenant, day, event FROM retention_events ORDER BY rowid")?;
    let rows = stmt.query_map([], |r| Ok(((r.get(0)?, r.get(1)?, r.get(2)?), r.get::<_, String>(3)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (key, text): (JournalKey, String) = row?;
        let event = serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("a retention event in meta.db cannot be read: {e}")))?;
        out.push((key, event));
    }
    Ok(out)
}

/// Takes the events `keys` out of the journal: the trail holds them.
pub fn forget_recorded(audit_dir: &Path, keys: &[JournalKey]) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
    let meta = open(&audit_dir.join(META_FILE))?;
    unjournal(&meta, keys.iter().map(|(kind, tenant, day)| (kind.as_str(), tenant.as_str(), day.as_str())))
}

/// Takes the steps `keys` (kind, tenant, day) out of the journal, in one transaction.
fn unjournal<'a>(meta: &rusqlite::Connection, keys: impl Iterator<Item = (&'a str, &'a str, &'a str)>) -> Result<(), StoreError> {
    let tx = meta.unchecked_transaction()?;
    for (kind, tenant, day) in keys {
        tx.execute("DELETE FROM retention_events WHERE kind = ?1 AND tenant = ?2 AND day = ?3", params![kind, tenant, day])?;
    }
    tx.commit()?;
    Ok(())
}

/// One thing retention did to one tenant's events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Action {
    pub kind: ActionKind,
    pub tenant: String,
    /// The archive's name (`YYYY-MM-DD`) or the dropped day file's day.
    pub day: String,
    pub events: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The archive file (archives), or the day file (dropped days).
    pub file: String,
    /// Archive written: the file's size and SHA-256. Archive deleted: the
    /// blocks removed from hot day files that still held them.
    pub details: serde_json::Value,
}

/// What one run did, and what stopped it where it stopped.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RetentionReport {
    pub actions: Vec<Action>,
    /// Tenants that could not be archived, archives and day files that
    /// could not go, and the error a step stopped at (what was done before
    /// it is in `actions` all the same).
    pub problems: Vec<String>,
    /// How long it waited for an erasure or a restore (in this process or
    /// another) to let the audit directory go, and for what; `None` when
    /// the directory was free.
    pub waited: Option<super::erasure::Waited>,
}

impl Action {
    /// The security event that records the action in its tenant's trail.
    fn event(&self, now_ms: i64) -> Event {
        let a = self;
        let mut e = Event::new(&a.tenant, Category::Security, a.kind.event_type(), "success");
        e.timestamp_ms = now_ms;
        e.actor = Some("system:retention".into());
        e.target = Some(match a.kind {
            ActionKind::HotDataDropped => format!("day:{}", a.day),
            _ => format!("archive:{}", a.day),
        });
        let mut details = json!({
            "day": a.day,
            "events": a.events,
            "first_seq": a.first_seq,
            "last_seq": a.last_seq,
            "file": a.file,
        });
        if let (Some(out), Some(more)) = (details.as_object_mut(), a.details.as_object()) {
            out.extend(more.clone());
        }
        e.details = Some(details);
        e
    }
}

impl RetentionReport {
    /// The security events that record the actions in each tenant's trail
    /// (the server records them from the journal instead: [`unrecorded`]).
    pub fn events(&self, now_ms: i64) -> Vec<Event> {
        self.actions.iter().map(|a| a.event(now_ms)).collect()
    }

    fn count(&self, kind: ActionKind) -> usize {
        self.actions.iter().filter(|a| a.kind == kind).count()
    }

    /// `archived 3, deleted 1, dropped 2 day files`, for the log.
    pub fn summary(&self) -> String {
        format!(
            "{} archives written, {} archives deleted, {} tenant-days dropped from the hot store, {} problems",
            self.count(ActionKind::ArchiveWritten),
            self.count(ActionKind::ArchiveDeleted),
            self.count(ActionKind::HotDataDropped),
            self.problems.len()
        )
    }
}

/// How long [`run`] waits for an erasure, a restore or a reading command
/// in another process to let the audit directory go.
pub const RETENTION_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Applies `policy` to the audit directory `audit_dir` as of `now_ms`:
/// archives into `archive_dir`, signing with `signer`, deletes expired
/// archives and drops day files (see the module documentation). Waits up
/// to [`RETENTION_WAIT`] for the directory ([`run_waiting`]).
pub fn run(audit_dir: &Path, archive_dir: &Path, policy: &RetentionPolicy, now_ms: i64, signer: &Signer) -> Result<RetentionReport, StoreError> {
    run_waiting(audit_dir, archive_dir, policy, now_ms, signer, RETENTION_WAIT)
}

/// [`run`], waiting up to `wait` for an erasure, a restore or a reading
/// command in another process to let the audit directory go (one in this
/// process is waited for to the end); the report says how long it waited.
/// Past `wait`, [`StoreError::Busy`] saying what holds the directory, and
/// nothing is done. A step that fails ends the run with the error among
/// the report's problems, beside the actions done before it.
pub fn run_waiting(
    audit_dir: &Path,
    archive_dir: &Path,
    policy: &RetentionPolicy,
    now_ms: i64,
    signer: &Signer,
    wait: std::time::Duration,
) -> Result<RetentionReport, StoreError> {
    std::fs::create_dir_all(audit_dir)?;
    // Not while an erasure rewrites the same days and archives.
    let (_held, waited) = super::erasure::maintenance_lock_within(audit_dir, "retention", wait)?;
    let meta = open(&audit_dir.join(META_FILE))?;
    archive::upgrade_schema(&meta)?;
    meta.execute_batch(JOURNAL_SCHEMA)?;
    meta.execute_batch(super::integrity::CHECKPOINT_SCHEMA)?;
    let today = day_of(now_ms);
    let mut report = RetentionReport { waited, ..RetentionReport::default() };
    // What was done before a step failed is reported all the same: each
    // action is an event the tenant's trail must get, and none is done again.
    let done = archive_runs(audit_dir, archive_dir, policy, today, now_ms, signer, &meta, &mut report)
        .and_then(|()| delete_expired(audit_dir, archive_dir, policy, today, now_ms, signer, &meta, &mut report))
        .and_then(|()| drop_days(audit_dir, today, now_ms, &meta, &mut report));
    if let Err(error) = done {
        report.problems.push(format!("retention stopped (it runs again at the next interval): {error}"));
    }
    Ok(report)
}

/// Step 1: every tenant's runs past its hot window.
#[allow(clippy::too_many_arguments)]
fn archive_runs(
    audit_dir: &Path,
    archive_dir: &Path,
    policy: &RetentionPolicy,
    today: i64,
    now_ms: i64,
    signer: &Signer,
    meta: &rusqlite::Connection,
    report: &mut RetentionReport,
) -> Result<(), StoreError> {
    let reader = AuditReader::open(audit_dir)?;
    let mut tenants = BTreeSet::new();
    for day in reader.days().collect::<Vec<_>>() {
        for (tenant, ..) in reader.file_tenants(day)? {
            tenants.insert(tenant);
        }
    }
    let names: BTreeSet<(String, String)> =
        archive::records(audit_dir, None)?.into_iter().map(|r| (r.manifest.tenant, r.manifest.name)).collect();
    for tenant in tenants {
        let cutoff = today - 1 - i64::from(policy.for_tenant(&tenant).hot_days);
        let blocks = reader.hot_blocks(&tenant)?;
        let (mut floor, mut floor_hash) = reader.archived_through(&tenant);
        let mut i = blocks.partition_point(|b| b.meta.first_seq <= floor);
        while i < blocks.len() {
            let first = &blocks[i];
            if first.meta.first_seq != floor + 1 {
                report.problems.push(format!(
                    "tenant `{tenant}`: not archived: the chain goes from seq {floor} to {} (run `keytrail verify`)",
                    first.meta.first_seq
                ));
                break;
            }
            let day = first.day;
            if day > cutoff {
                break;
            }
            let mut end = i;
            let mut next = floor + 1;
            while end < blocks.len() && blocks[end].day <= day && blocks[end].meta.first_seq == next {
                next = blocks[end].last_seq() + 1;
                end += 1;
            }
            let mut name = archive::day_name(day);
            if names.contains(&(tenant.clone(), name.clone())) {
                name = format!("{name}-{}", floor + 1);
            }
            let checkpoints: Vec<_> =
                super::integrity::checkpoints(audit_dir, &tenant)?.into_iter().filter(|c| c.seq > floor && c.seq < next).collect();
            let target = Target { archive_dir, tenant: &tenant, name: &name, level: policy.zstd_level };
            match write_archive(&reader, &target, &blocks[i..end], floor_hash, &checkpoints, signer, now_ms) {
                Ok(manifest) => {
                    let action = Action {
                        kind: ActionKind::ArchiveWritten,
                        tenant: tenant.clone(),
                        day: name,
                        events: manifest.events,
                        first_seq: manifest.first_seq,
                        last_seq: manifest.last_seq,
                        file: manifest.file.clone(),
                        details: json!({"bytes": manifest.file_bytes, "sha256": manifest.file_sha256, "checkpoints": manifest.checkpoints.len()}),
                    };
                    // The record and its event together.
                    let tx = meta.unchecked_transaction()?;
                    archive::insert_record(&tx, &manifest)?;
                    journal(&tx, &action, now_ms)?;
                    tx.commit()?;
                    report.actions.push(action);
                    floor = manifest.last_seq;
                    floor_hash = manifest.last_hash();
                }
                Err(error) => {
                    report.problems.push(format!("tenant `{tenant}`: events {}..={} not archived: {error}", floor + 1, next - 1));
                    break;
                }
            }
            i = end;
        }
    }
    Ok(())
}

/// Where an archive goes.
struct Target<'a> {
    archive_dir: &'a Path,
    tenant: &'a str,
    name: &'a str,
    level: i32,
}

/// Writes one archive from `blocks`, checking the chain on the way.
fn write_archive(
    reader: &AuditReader,
    target: &Target<'_>,
    blocks: &[HotBlock],
    prev_hash: [u8; 32],
    checkpoints: &[crate::signing::Checkpoint],
    signer: &Signer,
    now_ms: i64,
) -> Result<archive::Manifest, StoreError> {
    let tenant = target.tenant;
    let mut writer = ArchiveWriter::create(target.archive_dir, tenant, target.name, target.level)?;
    let signed: std::collections::HashMap<u64, [u8; 32]> = checkpoints.iter().map(|c| (c.seq, c.hash)).collect();
    let mut running = prev_hash;
    let result = blocks.iter().try_for_each(|block| {
        if block.meta.prev_hash != running {
            return Err(StoreError::Corrupt(format!(
                "events {}..={} do not link to the events before them",
                block.meta.first_seq,
                block.last_seq()
            )));
        }
        reader.block_events(block, tenant, |stored, salt| {
            if signed.get(&stored.event.seq).is_some_and(|h| Some(*h) != stored.hash) {
                return Err(StoreError::Corrupt(format!("the chain's hash at seq {} is not the one signed there", stored.event.seq)));
            }
            writer.push(stored, salt)
        })?;
        running = block.meta.hash;
        Ok(())
    });
    match result {
        Ok(()) => writer.finish(checkpoints, signer, now_ms),
        Err(error) => {
            writer.abandon();
            Err(error)
        }
    }
}

/// Step 2: archives past the archive retention.
///
/// A deletion mark that is not signed (made by a keytrail before signed
/// marks, or set by hand) is signed, as it stands, only when the archive
/// is past its retention now; otherwise it is reported (retention did not
/// delete that archive) and left unsigned, for verification to report too.
#[allow(clippy::too_many_arguments)]
fn delete_expired(
    audit_dir: &Path,
    archive_dir: &Path,
    policy: &RetentionPolicy,
    today: i64,
    now_ms: i64,
    signer: &Signer,
    meta: &rusqlite::Connection,
    report: &mut RetentionReport,
) -> Result<(), StoreError> {
    let key = signer.public_key();
    for record in archive::records(audit_dir, None)? {
        let m = &record.manifest;
        let settings = policy.for_tenant(&m.tenant);
        let expires = day_of(m.to_ms) + 1 + i64::from(settings.hot_days) + i64::from(settings.archive_days);
        if let Some(at_ms) = record.deleted_at_ms {
            if record.deletion_signed(&key) {
                continue;
            }
            if today >= expires {
                archive::mark_deleted(meta, m, at_ms, signer)?;
            } else {
                report.problems.push(format!(
                    "archive {} of `{}` (events {}..={}): meta.db marks it deleted, but retention did not delete it (the mark is not signed, and it expires on {}): run `keytrail archive verify`",
                    m.name,
                    m.tenant,
                    m.first_seq,
                    m.last_seq,
                    archive::day_name(expires)
                ));
            }
            continue;
        }
        if today < expires {
            continue;
        }
        let removed = match remove_hot_blocks(audit_dir, &m.tenant, m.first_seq, m.last_seq) {
            Ok(removed) => removed,
            Err(error) => {
                report.problems.push(format!("archive {} of `{}`: not deleted: its events still in the hot store could not be removed: {error}", m.name, m.tenant));
                continue;
            }
        };
        let (data, manifest) = archive::paths(archive_dir, &m.tenant, &m.name);
        let removed_files = [&data, &manifest].into_iter().try_for_each(|path| match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("{} cannot be removed: {e}", path.display())),
        });
        if let Err(error) = removed_files {
            // Left for the next run, which tries again.
            report.problems.push(format!("archive {} of `{}`: not deleted: {error}", m.name, m.tenant));
            continue;
        }
        let action = Action {
            kind: ActionKind::ArchiveDeleted,
            tenant: m.tenant.clone(),
            day: m.name.clone(),
            events: m.events,
            first_seq: m.first_seq,
            last_seq: m.last_seq,
            file: m.file.clone(),
            details: json!({"hot_blocks_removed": removed}),
        };
        let tx = meta.unchecked_transaction()?;
        archive::mark_deleted(&tx, m, now_ms, signer)?;
        journal(&tx, &action, now_ms)?;
        tx.commit()?;
        report.actions.push(action);
    }
    Ok(())
}

/// Deletes a tenant's blocks in `first..=last` from the hot day files that
/// still hold them (files shared with a tenant whose hot window is longer),
/// with the tenant's rollup rows of a file it no longer has events in (of
/// a file that keeps some, the rows are counted again from those), and
/// the dictionary entries of their personal values that no other event of
/// the file uses; the file is then rebuilt and its write-ahead log
/// truncated, as after an erasure ([`super::erasure::compact`]), so that
/// none of it stays on the disk while the file is kept. Returns how many
/// blocks went.
fn remove_hot_blocks(audit_dir: &Path, tenant: &str, first: u64, last: u64) -> Result<usize, StoreError> {
    let registry = super::writer::open_days(audit_dir);
    let mut removed = 0;
    for (day, path) in super::list_days(audit_dir)? {
        let open_days = registry.lock().unwrap_or_else(|e| e.into_inner());
        let mut conn = open(&path)?;
        let Some(id) = conn.query_row("SELECT id FROM strings WHERE value = ?1", [tenant], |r| r.get::<_, i64>(0)).optional()? else { continue };
        let held: i64 = conn.query_row(
            "SELECT count(*) FROM blocks WHERE tenant = ?1 AND first_seq BETWEEN ?2 AND ?3",
            params![id, first as i64, last as i64],
            |r| r.get(0),
        )?;
        if held == 0 {
            continue;
        }
        if open_days.contains(&day) {
            return Err(StoreError::Conflict(format!("{} is open for writing", day_file_name(day))));
        }
        removed += super::erasure::with_secure_delete(&mut conn, |conn| {
            super::rollup::register_merge_functions(conn)?;
            let watermark = super::writer::rollup_watermark(conn)?;
            let tx = conn.transaction()?;
            let personal = super::erasure::personal_ids(&tx, id, tenant, first, last)?;
            let n = tx.execute("DELETE FROM blocks WHERE tenant = ?1 AND first_seq BETWEEN ?2 AND ?3", params![id, first as i64, last as i64])?;
            let left: i64 = tx.query_row("SELECT count(*) FROM blocks WHERE tenant = ?1", [id], |r| r.get(0))?;
            if left == 0 {
                tx.execute("DELETE FROM roll_consumer WHERE tenant = ?1", [id])?;
            } else {
                // Its rollup rows counted the deleted events too (statistics
                // read them once no archived block of it is left here).
                super::rollup::recount_tenant(&tx, id as u32, watermark)?;
            }
            super::erasure::overwrite_unused(&tx, personal)?;
            tx.commit()?;
            Ok(n)
        })?;
        DictCache::forget(&path);
        // The rebuild can take a while: the writer may open other days meanwhile.
        drop(open_days);
        super::erasure::compact(&conn)?;
    }
    Ok(removed)
}

/// What [`BEFORE_DAY_LOCK`] calls.
#[cfg(test)]
pub(super) type DayHook = Box<dyn FnMut(i64)>;

#[cfg(test)]
thread_local! {
    /// Called by [`drop_days`] with a day just before it takes the writer's
    /// open days for it: tests let a writer race retention there.
    pub(super) static BEFORE_DAY_LOCK: std::cell::RefCell<Option<DayHook>> = const { std::cell::RefCell::new(None) };
}

#[cfg(test)]
fn before_day_lock(day: i64) {
    BEFORE_DAY_LOCK.with(|hook| {
        if let Some(hook) = hook.borrow_mut().as_mut() {
            hook(day)
        }
    });
}

/// Step 3: day files whose every tenant is archived.
/// Removes the write-ahead logs (`-wal`, `-shm`) of days before yesterday
/// whose day file is gone — what a crash while dropping a day file left
/// before the log went first (they hold the day's events, and no reader or
/// erasure opens a log without its file). Not of a day the writer has open.
fn remove_orphan_logs(audit_dir: &Path, today: i64, registry: &super::writer::OpenDays) -> Result<(), StoreError> {
    let open_days = registry.lock().unwrap_or_else(|e| e.into_inner());
    for entry in std::fs::read_dir(audit_dir)?.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(db) = name.strip_suffix("-wal").or_else(|| name.strip_suffix("-shm")) else { continue };
        let Some(day) = super::parse_day_file_name(db) else { continue };
        if day >= today - 1 || open_days.contains(&day) || audit_dir.join(db).exists() {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => tracing::info!(file = name, "removed a write-ahead log left without its day file"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn drop_days(audit_dir: &Path, today: i64, now_ms: i64, meta: &rusqlite::Connection, report: &mut RetentionReport) -> Result<(), StoreError> {
    let reader = AuditReader::open(audit_dir)?;
    let registry = super::writer::open_days(audit_dir);
    remove_orphan_logs(audit_dir, today, &registry)?;
    for (day, path) in super::list_days(audit_dir)? {
        if day >= today - 1 {
            break;
        }
        #[cfg(test)]
        before_day_lock(day);
        let tenants = {
            // The writer's open days first, then what the file holds: a
            // late event (a call longer than a day, stamped with its start)
            // committed to the file after its tenants were read would be
            // deleted with it, never archived. Under the lock the writer
            // cannot open the file until it is gone.
            let open_days = registry.lock().unwrap_or_else(|e| e.into_inner());
            let tenants = reader.file_tenants(day)?;
            if !tenants.iter().all(|(tenant, _, _, last)| *last <= reader.archived_through(tenant).0) {
                continue;
            }
            if open_days.contains(&day) {
                report.problems.push(format!("{}: not dropped: the writer has it open (next run)", day_file_name(day)));
                continue;
            }
            let actions: Vec<Action> = tenants
                .into_iter()
                .map(|(tenant, events, first_seq, last_seq)| Action {
                    kind: ActionKind::HotDataDropped,
                    tenant,
                    day: archive::day_name(day),
                    events,
                    first_seq,
                    last_seq,
                    file: day_file_name(day),
                    details: json!({}),
                })
                .collect();
            // The events first: a crash before the file goes leaves them
            // for the next run, which drops the file and keeps one of each.
            let tx = meta.unchecked_transaction()?;
            for action in &actions {
                journal(&tx, action, now_ms)?;
            }
            tx.commit()?;
            // The log first: a crash between the deletes then leaves the
            // day file, which the next run drops.
            if let Err(error) = super::remove_day_file(&path) {
                unjournal(meta, actions.iter().map(|a| (a.kind.event_type(), a.tenant.as_str(), a.day.as_str())))?;
                return Err(error.into());
            }
            actions
        };
        DictCache::forget(&path);
        report.actions.extend(tenants);
    }
    Ok(())
}
