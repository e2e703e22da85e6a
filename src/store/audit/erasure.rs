//! Erasure of a data subject's personal values (GDPR article 17) without
//! breaking the chain.
//!
//! An event's chain hash covers its personal values — the client's address
//! and user agent, the consumer's name, the actor of application events and
//! of blocks by address — only through a salted commitment
//! ([`crate::event::personal_commitment`]). Erasing a consumer's personal
//! data therefore:
//! 1. rewrites every block of the tenant that holds the consumer's events,
//!    in every hot and restored day file: the values are removed and each
//!    event keeps its commitment instead ([`crate::event::Event::erase_personal`]);
//!    the rewritten block must hash exactly as the old one did, or nothing
//!    is written;
//! 2. overwrites the dictionary strings that no event of the file uses any
//!    more (an address or user agent others share stays);
//! 3. deletes the consumer's salts, without which the commitments cannot be
//!    matched against guessed values;
//! 4. rewrites the tenant's archives that hold the consumer's events, with
//!    new checksums and signatures (see [`super::archive::erase_consumer`]).
//!
//! Each day file is changed in one transaction with SQLite's `secure_delete`
//! on, so the old blocks' pages are zeroed, then rebuilt (VACUUM: pages
//! keep stale copies of cells from before, in their unused space) and its
//! write-ahead log truncated: the values are gone from the files, not just
//! unreferenced. `meta.db` (the archives' salts) and `control.db` (the
//! consumer's name) get the same.
//!
//! The audit writer runs an erasure one day file at a time between its
//! batches ([`ErasureJob`]), so no event is being written to a file while
//! it is erased and events keep being committed while a big store is
//! erased; the job holds the directory's maintenance lock
//! ([`maintenance_lock`]) throughout, so retention is not archiving the
//! same days meanwhile. The erasure covers every event committed before it
//! began (and those committed meanwhile to a day file it has not reached
//! yet); events of the consumer committed to a file after its turn are
//! kept as usual, under a new salt.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use rusqlite::{params, Connection, OptionalExtension};
use rustc_hash::{FxHashMap, FxHashSet};
use serde::Serialize;

use super::block::{BlockEncoder, Columns, DecodedBlock, TextField, TextRef, INLINE, TEXT_FIELDS};
use crate::event::{is_personal_actor, Event};
use crate::store::StoreError;

/// What to erase, and what rewriting archives needs.
pub struct ErasureRequest {
    pub tenant: String,
    pub consumer: String,
    pub archive_dir: PathBuf,
    /// zstd level of rewritten archive files.
    pub archive_level: i32,
    /// Signs rewritten archive manifests.
    pub signer: Arc<crate::signing::Signer>,
}

/// What an erasure changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ErasureReport {
    pub tenant: String,
    pub consumer: String,
    /// Event copies whose personal values were removed: in hot day files,
    /// restored day files and archives (a restored event counts twice: in
    /// the restored day file and in its archive).
    pub events: u64,
    /// Blocks rewritten in day files.
    pub blocks: u64,
    /// Day files changed (`YYYY-MM-DD`, restored ones as `restored/YYYY-MM-DD`).
    pub day_files: Vec<String>,
    /// Archives rewritten and re-signed.
    pub archives: Vec<String>,
    /// Dictionary strings no event used any more, overwritten.
    pub strings: u64,
    /// Personal salts deleted (one per day file, archive day and record).
    pub salts: u64,
}

impl ErasureReport {
    pub fn summary(&self) -> String {
        format!(
            "{} events of consumer `{}` erased: {} blocks in {} day files, {} archives, {} dictionary strings, {} salts",
            self.events,
            self.consumer,
            self.blocks,
            self.day_files.len(),
            self.archives.len(),
            self.strings,
            self.salts
        )
    }
}

/// The file in an audit directory whose advisory lock (`flock`) keytrail
/// processes hold while they change its day files and archives: a server's
/// retention and erasures, `keytrail archive restore`. It holds what the
/// holder is doing, for the others' messages.
pub const MAINTENANCE_LOCK_FILE: &str = "maintenance.lock";

/// The file a writer that waits for the audit directory (retention, a
/// restore: [`maintenance_lock_within`]) locks exclusively while it waits,
/// holding what waits. Readers ([`read_lock`]) that find it locked wait
/// behind the writer instead of joining the readers it waits for: shared
/// locks give an exclusive waiter no priority, so a steady stream of
/// overlapping readers would otherwise keep it out for good.
pub const INTENT_LOCK_FILE: &str = "maintenance.intent";

/// Whether the audit directory's day files and archives are being changed
/// by this process (and by what), and the wait for them to be let go.
#[derive(Default)]
struct Maintenance {
    holder: Mutex<Option<String>>,
    released: Condvar,
    /// [`ReadGuard`]s held in this process (a server's verifications),
    /// for the message of a holder that finds the directory read.
    readers: std::sync::atomic::AtomicUsize,
}

/// Held while retention, an erasure or a restore changes an audit
/// directory's day files and archives: one holder per directory in this
/// process, and the lock on its [`MAINTENANCE_LOCK_FILE`] against other
/// processes; owned, so an erasure can hold it across the writer's batches.
pub struct MaintenanceGuard {
    state: Arc<Maintenance>,
    file: Option<std::fs::File>,
}

impl Drop for MaintenanceGuard {
    fn drop(&mut self) {
        // Other processes first: closing the file lets its lock go.
        if let Some(file) = self.file.take() {
            let _ = file.set_len(0);
            drop(file);
        }
        *self.state.holder.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.state.released.notify_all();
    }
}

fn maintenance_of(dir: &Path) -> Arc<Maintenance> {
    static REGISTRY: OnceLock<Mutex<HashMap<PathBuf, Arc<Maintenance>>>> = OnceLock::new();
    let key = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    REGISTRY.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default().clone()
}

/// `what`, with this process and the time, as the lock file tells others.
fn holder_text(what: &str) -> String {
    format!("{what} (process {}, since {})", std::process::id(), crate::event::format_timestamp(crate::event::now_ms()))
}

/// `dir`'s [`MAINTENANCE_LOCK_FILE`], created (readable by its owner only)
/// when it is not there yet.
fn open_lock_file(dir: &Path) -> Result<std::fs::File, StoreError> {
    open_private(dir, MAINTENANCE_LOCK_FILE)
}

/// The file `name` in `dir`, created (readable by its owner only) when it
/// is not there yet.
fn open_private(dir: &Path, name: &str) -> Result<std::fs::File, StoreError> {
    let path = dir.join(name);
    let mut options = std::fs::OpenOptions::new();
    options.create(true).truncate(false).read(true).write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(&path).map_err(|e| StoreError::Io(std::io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))))
}

/// Takes the lock of `dir`'s [`MAINTENANCE_LOCK_FILE`] for the holder of
/// the directory in this process; `None` while another process holds it
/// (or commands read the directory: [`read_lock`]).
fn lock_file(dir: &Path, holder: &str) -> Result<Option<std::fs::File>, StoreError> {
    use std::io::Write;
    let path = dir.join(MAINTENANCE_LOCK_FILE);
    let file = open_lock_file(dir)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(StoreError::Io(std::io::Error::new(e.kind(), format!("cannot lock {}: {e}", path.display()))))
        }
    }
    file.set_len(0)?;
    (&file).write_all(holder.as_bytes())?;
    Ok(Some(file))
}

/// Marks the directory held in this process (after waiting, with `wait`,
/// for another holder here to let go), then takes the lock file; `None`
/// when either is held.
fn acquire(dir: &Path, what: &str, wait: bool) -> Result<Option<MaintenanceGuard>, StoreError> {
    let state = maintenance_of(dir);
    let holder = holder_text(what);
    {
        let mut current = state.holder.lock().unwrap_or_else(|e| e.into_inner());
        while current.is_some() {
            if !wait {
                return Ok(None);
            }
            current = state.released.wait(current).unwrap_or_else(|e| e.into_inner());
        }
        *current = Some(holder.clone());
    }
    // From here the guard lets the directory go again in this process
    // whatever happens to the lock file.
    let mut guard = MaintenanceGuard { state, file: None };
    match lock_file(dir, &holder)? {
        Some(file) => {
            guard.file = Some(file);
            Ok(Some(guard))
        }
        None => Ok(None),
    }
}

/// Waits until no one else in this process maintains the audit directory
/// `dir`, then holds it, for `what` (e.g. `retention`, said to others who
/// find it held). Another process holding it (a `keytrail archive restore`,
/// another server's erasure) is not waited for: that is a `Conflict` saying
/// what holds it.
pub fn maintenance_lock(dir: &Path, what: &str) -> Result<MaintenanceGuard, StoreError> {
    match acquire(dir, what, true)? {
        Some(guard) => Ok(guard),
        None => Err(StoreError::Conflict(busy_message(dir))),
    }
}

/// How long [`maintenance_lock_within`] waited, and for what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Waited {
    pub ms: u64,
    /// What held the directory when it first found it held.
    pub holder: String,
}

/// [`maintenance_lock`], waiting for another process too: tries again
/// every 50 ms for up to `wait` (a holder in this process is waited for
/// as by [`maintenance_lock`]). With the guard, how long it waited and
/// for what (`None`: it was free); past `wait`, [`StoreError::Busy`]
/// saying what holds the directory.
pub fn maintenance_lock_within(dir: &Path, what: &str, wait: std::time::Duration) -> Result<(MaintenanceGuard, Option<Waited>), StoreError> {
    let started = std::time::Instant::now();
    // A wait too long to add to the clock is a wait without end.
    let deadline = started.checked_add(wait);
    let mut held_by = maintenance_of(dir).holder.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let busy = |holder: &str| {
        StoreError::Busy(format!(
            "the audit trail in {} is being changed by {holder} (waited {:.1} s); try again when that has finished",
            dir.display(),
            started.elapsed().as_secs_f64()
        ))
    };
    // First the announcement ([`INTENT_LOCK_FILE`]), held until the wait
    // ends: readers that come meanwhile wait behind it.
    let _intent = loop {
        if let Some(intent) = announce(dir, what)? {
            break intent;
        }
        let holder = held_by.get_or_insert_with(|| maintenance_holder(dir));
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return Err(busy(holder));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    loop {
        if let Some(guard) = acquire(dir, what, true)? {
            let waited = held_by.map(|holder| Waited { ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX), holder });
            return Ok((guard, waited));
        }
        let holder = held_by.get_or_insert_with(|| maintenance_holder(dir));
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return Err(busy(holder));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A writer's announcement that it waits for the audit directory: the
/// exclusive lock on its [`INTENT_LOCK_FILE`], which holds what waits; let
/// go, and the text cleared, when dropped.
struct Intent {
    file: std::fs::File,
}

impl Drop for Intent {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
    }
}

/// Takes the lock of `dir`'s [`INTENT_LOCK_FILE`] for `what`; `None` while
/// another writer waits (or a reader is looking at it, for a moment).
fn announce(dir: &Path, what: &str) -> Result<Option<Intent>, StoreError> {
    use std::io::Write;
    let file = open_private(dir, INTENT_LOCK_FILE)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
        Err(std::fs::TryLockError::Error(e)) => {
            let path = dir.join(INTENT_LOCK_FILE);
            return Err(StoreError::Io(std::io::Error::new(e.kind(), format!("cannot lock {}: {e}", path.display()))));
        }
    }
    let intent = Intent { file };
    intent.file.set_len(0)?;
    (&intent.file).write_all(holder_text(what).as_bytes())?;
    Ok(Some(intent))
}

/// Whether a writer waits for the directory ([`announce`]), by the lock of
/// its [`INTENT_LOCK_FILE`] open on `intent` (`None`: a directory where it
/// cannot be created, which no one changes). A lock that cannot be tested
/// counts as no writer.
fn writer_waits(intent: Option<&std::fs::File>) -> bool {
    let Some(file) = intent else { return false };
    match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            false
        }
        Err(std::fs::TryLockError::WouldBlock) => true,
        Err(std::fs::TryLockError::Error(_)) => false,
    }
}

/// What waits for the directory `dir` ([`announce`]), as it described
/// itself; `None` when nothing does.
fn waiting_writer(dir: &Path) -> Option<String> {
    let file = std::fs::File::open(dir.join(INTENT_LOCK_FILE)).ok()?;
    if !writer_waits(Some(&file)) {
        return None;
    }
    let text = std::fs::read_to_string(dir.join(INTENT_LOCK_FILE)).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// A writer's announcement that it waits for the audit directory
/// ([`INTENT_LOCK_FILE`]), for one that tries again and again without
/// waiting ([`try_maintenance_lock`]: the audit writer's erasures) to keep
/// meanwhile, so that readers coming one after another cannot keep it out.
pub struct Announcement {
    _intent: Intent,
}

/// Announces that `what` waits for the audit directory `dir`, without
/// waiting: `None` while another writer already does.
pub fn announce_maintenance(dir: &Path, what: &str) -> Result<Option<Announcement>, StoreError> {
    Ok(announce(dir, what)?.map(|intent| Announcement { _intent: intent }))
}

/// [`maintenance_lock`] without waiting: `None` while retention, another
/// erasure or a restore (in this process or another) holds the directory.
/// The audit writer must not wait for it.
pub fn try_maintenance_lock(dir: &Path, what: &str) -> Result<Option<MaintenanceGuard>, StoreError> {
    acquire(dir, what, false)
}

/// Held by a command that only reads an audit directory's day files and
/// archives (`keytrail verify`, `keytrail archive verify`, `keytrail
/// archive cat`, the admin API's verification), so that it never reads an
/// archive an erasure is halfway through rewriting or a day file retention
/// is dropping: a shared lock on its [`MAINTENANCE_LOCK_FILE`]. Any number
/// of readers hold it at once; retention, an erasure or a restore (which
/// take it exclusively) wait for them, and they for those — and for a
/// writer that announced it waits ([`INTENT_LOCK_FILE`]), so readers
/// coming one after another cannot keep it out.
pub struct ReadGuard {
    _file: Option<std::fs::File>,
    state: Arc<Maintenance>,
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        self.state.readers.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl ReadGuard {
    fn new(dir: &Path, file: Option<std::fs::File>) -> ReadGuard {
        let state = maintenance_of(dir);
        state.readers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ReadGuard { _file: file, state }
    }
}

/// Takes a [`ReadGuard`] on the audit directory `dir`, trying again every
/// 50 ms for up to `wait` while retention, an erasure or a restore holds
/// it or waits for it; `None` when one still does then ([`busy_message`]
/// says which). A
/// directory whose lock file is not there and cannot be created (a
/// read-only copy) is read without one: nothing can be changing it.
pub fn read_lock(dir: &Path, wait: std::time::Duration) -> Result<Option<ReadGuard>, StoreError> {
    let file = match open_lock_file(dir) {
        Ok(file) => file,
        Err(StoreError::Io(e)) if matches!(e.kind(), std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem) => {
            match std::fs::File::open(dir.join(MAINTENANCE_LOCK_FILE)) {
                Ok(file) => file,
                Err(missing) if missing.kind() == std::io::ErrorKind::NotFound => return Ok(Some(ReadGuard::new(dir, None))),
                Err(_) => return Err(StoreError::Io(e)),
            }
        }
        Err(error) => return Err(error),
    };
    // Where the lock file could be opened for writing so can this one; a
    // read-only directory has none (and no writer).
    let intent = open_private(dir, INTENT_LOCK_FILE).ok().or_else(|| std::fs::File::open(dir.join(INTENT_LOCK_FILE)).ok());
    // A wait too long to add to the clock is a wait without end.
    let deadline = std::time::Instant::now().checked_add(wait);
    loop {
        // Behind a writer that waits, not beside the readers it waits for.
        if !writer_waits(intent.as_ref()) {
            match file.try_lock_shared() {
                Ok(()) => return Ok(Some(ReadGuard::new(dir, Some(file)))),
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(e)) => {
                    let path = dir.join(MAINTENANCE_LOCK_FILE);
                    return Err(StoreError::Io(std::io::Error::new(e.kind(), format!("cannot lock {}: {e}", path.display()))));
                }
            }
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return Ok(None);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// What holds the audit directory `dir` (as its holder described itself),
/// for a message to someone who found it held.
pub fn maintenance_holder(dir: &Path) -> String {
    let state = maintenance_of(dir);
    if let Some(holder) = state.holder.lock().unwrap_or_else(|e| e.into_inner()).clone() {
        return holder;
    }
    let text = std::fs::read_to_string(dir.join(MAINTENANCE_LOCK_FILE)).unwrap_or_default();
    if !text.trim().is_empty() {
        return text.trim().to_string();
    }
    // Readers hold it; a writer may wait for them, and others behind it.
    if let Some(writer) = waiting_writer(dir) {
        return format!("{writer}, waiting for the readers before it to finish");
    }
    // Readers ([`read_lock`]) leave the file empty.
    if state.readers.load(std::sync::atomic::Ordering::Relaxed) > 0 {
        return format!("a verification reading it in this process ({})", std::process::id());
    }
    "another keytrail process (perhaps a `keytrail verify` or `keytrail archive` command reading it)".to_string()
}

/// "<dir> is being changed by <holder>", and what to do.
pub fn busy_message(dir: &Path) -> String {
    format!(
        "the audit trail in {} is being changed by {}; try again when that has finished",
        dir.display(),
        maintenance_holder(dir)
    )
}

/// An erasure in progress: the files still to go, what was done so far,
/// and the directory held against retention meanwhile. The writer runs one
/// step (a day file, then the archives) between its batches
/// ([`super::AuditWriterStore::erasure_step`]), so events keep being
/// committed while a big store is being erased.
pub struct ErasureJob {
    pub(super) request: ErasureRequest,
    /// (restored, day, path) of the day files still to visit.
    pub(super) files: std::collections::VecDeque<(bool, i64, PathBuf)>,
    pub(super) report: ErasureReport,
    pub(super) _held: MaintenanceGuard,
}

impl ErasureJob {
    pub fn request(&self) -> &ErasureRequest {
        &self.request
    }

    /// What was erased; complete once the last step returned `true`.
    pub fn into_report(self) -> ErasureReport {
        self.report
    }
}

/// What erasing in one day file did.
#[derive(Debug, Default)]
pub(super) struct DayErasure {
    pub(super) events: u64,
    pub(super) blocks: u64,
    /// Dictionary entries overwritten: their ids and former values (for
    /// the writer to forget them too).
    pub(super) removed: Vec<(u32, String)>,
    pub(super) salt_deleted: bool,
    /// The file's ids of the tenant and consumer, when it has them.
    pub(super) ids: Option<(u32, u32)>,
}

/// The text a dictionary entry gets when its value is erased: unique per
/// id (the column is UNIQUE), and no text an event could hold.
fn tombstone(id: u32) -> String {
    format!("\u{0}erased:{id}")
}

/// The personal text fields of an event, as stored: erased rows lose them.
fn personal_fields(e: &Event) -> impl Iterator<Item = TextField> {
    let actor = is_personal_actor(e.category, e.actor.as_deref());
    [TextField::ClientIp, TextField::UserAgent, TextField::ConsumerName]
        .into_iter()
        .chain(actor.then_some(TextField::Actor))
}

/// Erases `consumer`'s personal values from `tenant`'s blocks in the day
/// file open on `conn` (see the module's steps 1–3).
pub(super) fn erase_in_day_file(
    conn: &mut Connection,
    tenant: &str,
    consumer: &str,
    compressor: &mut zstd::bulk::Compressor<'static>,
) -> Result<DayErasure, StoreError> {
    let mut result = DayErasure::default();
    let id_of = |conn: &Connection, value: &str| -> Result<Option<u32>, StoreError> {
        Ok(conn.query_row("SELECT id FROM strings WHERE value = ?1", [value], |r| r.get(0)).optional()?)
    };
    let (Some(tenant_id), Some(consumer_id)) = (id_of(conn, tenant)?, id_of(conn, consumer)?) else { return Ok(result) };
    result.ids = Some((tenant_id, consumer_id));
    let salts = super::salts::tenant_salts(conn, tenant_id)?;
    let salt = salts.get(consumer).copied();
    let dict = dictionary(conn)?;
    let lookup = |id: u32| dict.get(&id).map(String::as_str);
    let salt_of = |c: Option<&str>| salts.get(super::salts::consumer_key(c)).copied();
    let mut decompressor = zstd::bulk::Decompressor::new()?;

    with_secure_delete(conn, |conn| {
        let tx = conn.transaction()?;
        let blocks: Vec<(i64, u64, [u8; 32])> = {
            let mut stmt = tx.prepare("SELECT id, first_seq, prev_hash FROM blocks WHERE tenant = ?1 ORDER BY first_seq")?;
            let rows = stmt.query_map(params![tenant_id], |r| {
                let prev: Vec<u8> = r.get(2)?;
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? as u64, prev.try_into().unwrap_or([0; 32])))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        // Dictionary ids the erased values used: overwritten below unless
        // another event of the file still uses them.
        let mut candidates: FxHashSet<u32> = FxHashSet::default();
        for (block_id, first_seq, prev_hash) in blocks {
            let data: Vec<u8> = tx.query_row("SELECT data FROM blocks WHERE id = ?1", [block_id], |r| r.get(0))?;
            let mut block = DecodedBlock::parse(&data)?;
            block.load(&data, Columns::text(&[TextField::Consumer]), &mut decompressor)?;
            if !block.texts[TextField::Consumer.index()].codes.contains(&consumer_id) {
                continue;
            }
            block.load(&data, Columns::ALL, &mut decompressor)?;
            let before = row_hashes(&block, tenant, first_seq, &lookup, &salt_of, prev_hash)?;
            let mut events = Vec::with_capacity(block.rows());
            let mut erased = 0;
            for row in 0..block.rows() {
                let mut e = Event::default();
                block.fill_event(row, tenant, first_seq + row as u64, &lookup, &mut e)?;
                if block.texts[TextField::Consumer.index()].codes[row] == consumer_id && e.salt_owner().is_some() && e.has_personal() {
                    let salt = salt.ok_or_else(|| {
                        StoreError::Corrupt(format!("seq {}: no personal salt for consumer `{consumer}` in its day file", e.seq))
                    })?;
                    for field in personal_fields(&e) {
                        candidates.extend(block.texts[field.index()].dict_id(row));
                    }
                    e.erase_personal(&salt);
                    erased += 1;
                }
                events.push(e);
            }
            if erased == 0 {
                continue;
            }
            // The same texts as before (dictionary ids kept, inline texts
            // inline), less the erased ones.
            let mut encoder = BlockEncoder::default();
            for (row, e) in events.iter().enumerate() {
                let texts = TEXT_FIELDS.map(|f| match f.get(e) {
                    None => TextRef::Absent,
                    Some(value) => match block.texts[f.index()].codes[row] {
                        code if code & INLINE != 0 => TextRef::Inline(value),
                        code => TextRef::Dict(code),
                    },
                });
                encoder.push(e, false, tenant, &texts);
            }
            let mut rewritten = Vec::new();
            encoder.finish(compressor, &mut rewritten)?;
            let mut check = DecodedBlock::parse(&rewritten)?;
            check.load(&rewritten, Columns::ALL, &mut decompressor)?;
            // Erased rows hash through their commitments; the others of
            // the block still need their consumers' salts.
            let after = row_hashes(&check, tenant, first_seq, &lookup, &salt_of, prev_hash)?;
            if after != before {
                return Err(StoreError::Corrupt(format!(
                    "events {first_seq}..: the erased block would not hash as before; nothing was changed"
                )));
            }
            tx.execute("UPDATE blocks SET data = ?1 WHERE id = ?2", params![rewritten, block_id])?;
            result.events += erased;
            result.blocks += 1;
        }
        for id in overwrite_unused(&tx, candidates)? {
            result.removed.push((id, dict.get(&id).cloned().unwrap_or_default()));
        }
        result.salt_deleted =
            tx.execute("DELETE FROM personal_salts WHERE tenant = ?1 AND consumer = ?2", params![tenant_id, consumer])? > 0;
        tx.commit()?;
        Ok(())
    })?;
    if result.blocks > 0 || result.salt_deleted {
        compact(conn)?;
    }
    Ok(result)
}

/// The dictionary ids that the personal values (see [`personal_fields`])
/// of `tenant`'s blocks in `first..=last` use, in the day file open on
/// `conn` (`tenant_id`: the tenant's id in it). Retention deleting the
/// blocks of an expired archive from a file it keeps for another tenant
/// overwrites those of them no other event uses ([`overwrite_unused`]).
pub(super) fn personal_ids(conn: &Connection, tenant_id: i64, tenant: &str, first: u64, last: u64) -> Result<FxHashSet<u32>, StoreError> {
    let dict = dictionary(conn)?;
    let lookup = |id: u32| dict.get(&id).map(String::as_str);
    let mut decompressor = zstd::bulk::Decompressor::new()?;
    let mut out = FxHashSet::default();
    let mut stmt = conn.prepare("SELECT first_seq, data FROM blocks WHERE tenant = ?1 AND first_seq BETWEEN ?2 AND ?3")?;
    let mut rows = stmt.query(params![tenant_id, first as i64, last as i64])?;
    let mut e = Event::default();
    while let Some(r) = rows.next()? {
        let first_seq = r.get::<_, i64>(0)? as u64;
        let data = r.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
        let mut block = DecodedBlock::parse(data)?;
        block.load(data, Columns::ALL, &mut decompressor)?;
        for row in 0..block.rows() {
            block.fill_event(row, tenant, first_seq + row as u64, &lookup, &mut e)?;
            for field in personal_fields(&e) {
                out.extend(block.texts[field.index()].dict_id(row));
            }
        }
    }
    Ok(out)
}

/// Overwrites the dictionary entries among `candidates` that nothing in the
/// day file open on `conn` uses any more ([`still_used`]); returns their
/// ids, in order.
pub(super) fn overwrite_unused(conn: &Connection, mut candidates: FxHashSet<u32>) -> Result<Vec<u32>, StoreError> {
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    still_used(conn, &mut candidates, &mut zstd::bulk::Decompressor::new()?)?;
    let mut update = conn.prepare("UPDATE strings SET value = ?1 WHERE id = ?2")?;
    let mut removed: Vec<u32> = candidates.into_iter().collect();
    removed.sort_unstable();
    for id in &removed {
        update.execute(params![tombstone(*id), id])?;
    }
    Ok(removed)
}

/// The day file's dictionary, id to value.
fn dictionary(conn: &Connection) -> Result<FxHashMap<u32, String>, StoreError> {
    let mut stmt = conn.prepare("SELECT id, value FROM strings")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Runs `change` with SQLite's `secure_delete` on, so that what it deletes
/// or overwrites is zeroed on its pages, and puts the setting back after
/// (whatever `change` returned).
pub(super) fn with_secure_delete<T>(conn: &mut Connection, change: impl FnOnce(&mut Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
    let before: i64 = conn.pragma_query_value(None, "secure_delete", |r| r.get(0))?;
    conn.pragma_update(None, "secure_delete", 1)?;
    let outcome = change(conn);
    conn.pragma_update(None, "secure_delete", before)?;
    outcome
}

/// Every row's chain hash in a decoded block, from the hash before it.
fn row_hashes<'d>(
    block: &DecodedBlock,
    tenant: &str,
    first_seq: u64,
    lookup: &dyn Fn(u32) -> Option<&'d str>,
    salt: &dyn Fn(Option<&str>) -> Option<[u8; 32]>,
    mut previous: [u8; 32],
) -> Result<Vec<[u8; 32]>, StoreError> {
    let mut out = Vec::with_capacity(block.rows());
    for row in 0..block.rows() {
        previous = block.chain_hash(row, tenant, first_seq + row as u64, lookup, salt, &previous)?;
        out.push(previous);
    }
    Ok(out)
}

/// Removes from `candidates` the dictionary ids the file still uses: as a
/// tenant (blocks, chain heads, salts, rollups — an erased value may be
/// spelled like a tenant id, e.g. a consumer named after its tenant), as a
/// rolled-up consumer, or in some block's text columns (any tenant's).
fn still_used(conn: &Connection, candidates: &mut FxHashSet<u32>, decompressor: &mut zstd::bulk::Decompressor<'static>) -> Result<(), StoreError> {
    let mut ids = conn.prepare(
        "SELECT tenant FROM blocks UNION SELECT tenant FROM chain_heads UNION SELECT tenant FROM personal_salts
         UNION SELECT tenant FROM roll_consumer UNION SELECT consumer FROM roll_consumer",
    )?;
    let mut rows = ids.query([])?;
    while let Some(r) = rows.next()? {
        candidates.remove(&r.get::<_, u32>(0)?);
    }
    if candidates.is_empty() {
        return Ok(());
    }
    let mut stmt = conn.prepare("SELECT data FROM blocks")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let data = r.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?;
        let mut block = DecodedBlock::parse(data)?;
        block.load(data, Columns::text(&TEXT_FIELDS), decompressor)?;
        for column in &block.texts {
            for code in &column.codes {
                candidates.remove(code);
            }
        }
        if candidates.is_empty() {
            break;
        }
    }
    Ok(())
}

/// Rebuilds the file open on `conn` (VACUUM) and truncates its write-ahead
/// log. `secure_delete` zeroes what an erasure frees, but pages also hold
/// stale copies of cells SQLite moved about earlier (when a page split,
/// the unused part of a page keeps what was there), written before any
/// erasure: only a rebuild leaves none.
pub(crate) fn compact(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch("VACUUM")?;
    truncate_wal(conn)
}

/// Folds the write-ahead log into the file and truncates it, so that no
/// copy of a page from before the erasure is left in it. Readers in the
/// middle of a query can hold it up for a moment; it is retried.
pub(crate) fn truncate_wal(conn: &Connection) -> Result<(), StoreError> {
    for attempt in 0..50 {
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        if busy == 0 {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(20 * (attempt + 1).min(10)));
    }
    Err(StoreError::Corrupt("the write-ahead log could not be truncated after an erasure: readers kept it busy; run the erasure again".into()))
}
