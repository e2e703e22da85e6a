//! The audit writer's side of the store: numbering, chaining, encoding and
//! committing batches of events into day files.
//!
//! Owned by the audit writer thread; nothing else inserts. For each batch:
//! 1. events are put in UTC-day order (a stable sort, a no-op but around
//!    midnight), then numbered per tenant and chained;
//! 2. each tenant's consecutive events of one day become blocks
//!    ([`super::block`]); their text fields are resolved through the day
//!    file's dictionary;
//! 3. each day file touched gets one transaction (in day order): new
//!    dictionary strings, the blocks, the file's chain heads and, about once
//!    a second, the rollups with their watermark;
//! 4. `meta.db` records every tenant's chain head, so a tenant's chain goes
//!    on even after retention has removed the day files that held its head.
//!
//! A failed commit leaves the in-memory state as it was before that day's
//! transaction, so the caller can retry the events not yet committed.
//!
//! Retention deletes old day files from another thread: the writer names
//! the days it has open in [`open_days`] (before opening one), retention
//! never deletes a day named there, and after each batch the writer closes
//! the days older than the day before the batch's newest.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};
use rustc_hash::{FxHashMap, FxHashSet, FxHasher};

use super::block::{BlockEncoder, DecodedBlock, TextRef, TEXT_FIELDS};
use super::erasure::{ErasureReport, ErasureRequest};
use super::rollup::{self, Rollups};
use super::{day_file_name, day_of, list_days, open_day_file, ChainHead, META_FILE, STORE_FORMAT};
use crate::event::{derived_event_id_in, Event, GENESIS_HASH};
use crate::store::{open, StoreError};

/// How often pending rollup counts are written, at most.
const ROLLUP_INTERVAL: Duration = Duration::from_secs(1);
/// Pending rollup keys that force a write before the interval.
const ROLLUP_MAX_PENDING: usize = 500_000;
/// Day files kept open by the writer (yesterday's stays open past midnight).
const OPEN_DAYS: usize = 3;
/// The writer steps aside this often while it encodes a batch, so that on a
/// machine with one core the gateway waits for at most this many events'
/// worth of writer work (a few hundred microseconds) rather than a whole batch.
const YIELD_EVERY: usize = 256;
/// Forget the "seen once" set when it grows past this; values seen again
/// afterwards are stored inline once more before being interned.
const SEEN_ONCE_MAX: usize = 1 << 20;

/// One day file's string dictionary, as the writer keeps it.
#[derive(Default)]
struct Dictionary {
    ids: FxHashMap<Box<str>, u32>,
    /// Hashes of values stored inline once (fields interned on repeat).
    seen_once: FxHashSet<u64>,
    next_id: u32,
    /// Strings added since the last commit, to insert (or forget on failure).
    added: Vec<(u32, Box<str>)>,
}

/// The value each text field (and the tenant) last resolved to a
/// dictionary id within one day's batch. Consecutive events mostly repeat
/// them (one key's calls carry the same tenant, consumer, key, api, actor
/// and often path), and comparing with the last value costs less than
/// hashing it into the dictionary. Local to one batch, so it never sees
/// ids a failed commit or an erasure took back.
#[derive(Default)]
struct LastTexts {
    values: [String; TEXT_FIELDS.len()],
    /// 0: none yet (dictionary ids start at 1).
    ids: [u32; TEXT_FIELDS.len()],
    tenant: (String, u32),
}

impl LastTexts {
    /// Inlined for the common cases (absent, or as the last event had it);
    /// the dictionary is asked out of line.
    #[inline(always)]
    fn resolve<'a>(&mut self, dict: &mut Dictionary, field: super::block::TextField, value: Option<&'a str>) -> TextRef<'a> {
        let i = field.index();
        let Some(v) = value else { return TextRef::Absent };
        if self.ids[i] != 0 && self.values[i] == v {
            return TextRef::Dict(self.ids[i]);
        }
        self.resolve_new(dict, field, v)
    }

    #[inline(never)]
    fn resolve_new<'a>(&mut self, dict: &mut Dictionary, field: super::block::TextField, v: &'a str) -> TextRef<'a> {
        let i = field.index();
        let resolved = dict.resolve(field.always_interned(), Some(v));
        if let TextRef::Dict(id) = resolved {
            self.values[i].clear();
            self.values[i].push_str(v);
            self.ids[i] = id;
        }
        resolved
    }

    fn tenant(&mut self, dict: &mut Dictionary, tenant: &str) -> u32 {
        if self.tenant.1 == 0 || self.tenant.0 != tenant {
            self.tenant = (tenant.to_string(), dict.intern(tenant));
        }
        self.tenant.1
    }
}

impl Dictionary {
    fn load(conn: &Connection) -> Result<Dictionary, StoreError> {
        let mut stmt = conn.prepare("SELECT id, value FROM strings")?;
        let mut rows = stmt.query([])?;
        let mut dict = Dictionary { next_id: 1, ..Dictionary::default() };
        while let Some(row) = rows.next()? {
            let id: u32 = row.get(0)?;
            dict.ids.insert(row.get::<_, String>(1)?.into_boxed_str(), id);
            dict.next_id = dict.next_id.max(id + 1);
        }
        Ok(dict)
    }

    fn intern(&mut self, value: &str) -> u32 {
        if let Some(id) = self.ids.get(value) {
            return *id;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.ids.insert(value.into(), id);
        self.added.push((id, value.into()));
        id
    }

    fn resolve<'a>(&mut self, always: bool, value: Option<&'a str>) -> TextRef<'a> {
        let Some(value) = value else { return TextRef::Absent };
        if always {
            return TextRef::Dict(self.intern(value));
        }
        if let Some(id) = self.ids.get(value) {
            return TextRef::Dict(*id);
        }
        let hash = {
            use std::hash::Hasher;
            let mut h = FxHasher::default();
            h.write(value.as_bytes());
            h.finish()
        };
        if self.seen_once.contains(&hash) {
            return TextRef::Dict(self.intern(value));
        }
        if self.seen_once.len() >= SEEN_ONCE_MAX {
            self.seen_once.clear();
        }
        self.seen_once.insert(hash);
        TextRef::Inline(value)
    }

    fn get(&self, value: &str) -> Option<u32> {
        self.ids.get(value).copied()
    }

    /// Forgets the strings added since the last commit (it failed).
    fn roll_back(&mut self) {
        for (id, value) in self.added.drain(..) {
            self.ids.remove(&value);
            self.next_id = self.next_id.min(id);
        }
    }
}

/// Days whose files are open for writing.
pub(super) type OpenDays = Arc<Mutex<BTreeSet<i64>>>;

/// The days whose files a writer of the audit directory `dir` has open
/// (shared by the writer and retention in this process).
pub(super) fn open_days(dir: &Path) -> OpenDays {
    static REGISTRY: OnceLock<Mutex<HashMap<PathBuf, OpenDays>>> = OnceLock::new();
    let key = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    REGISTRY.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default().clone()
}

/// A day named in [`open_days`] while its writer lives.
struct OpenDay {
    registry: OpenDays,
    day: i64,
}

impl OpenDay {
    fn claim(dir: &Path, day: i64) -> OpenDay {
        let registry = open_days(dir);
        registry.lock().unwrap_or_else(|e| e.into_inner()).insert(day);
        OpenDay { registry, day }
    }
}

impl Drop for OpenDay {
    fn drop(&mut self) {
        self.registry.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.day);
    }
}

/// One open day file.
struct DayWriter {
    conn: Connection,
    dict: Dictionary,
    /// Rollup counts of committed blocks not yet written.
    pending: Rollups,
    /// Method index of each method's dictionary id (see [`rollup::METHODS`]).
    methods: FxHashMap<u32, usize>,
    /// Personal salts by (tenant id, consumer id or 0), and those made since
    /// the last commit (stored with it, or forgotten if it fails).
    salts: FxHashMap<(u32, u32), [u8; 32]>,
    new_salts: Vec<(u32, u32, String, [u8; 32])>,
    /// The salts the day's archives hash its events with, by tenant and
    /// consumer id ([`super::salts::archived_salts`]): a salt the file
    /// lacks is taken from here before a new one is made.
    archived_salts: super::salts::ArchivedSalts,
    last_used: u64,
    /// Commits and bytes of blocks and strings since the last WAL
    /// checkpoint was asked for (see [`super::wal`]).
    wal_commits: u32,
    wal_bytes: u64,
    /// Dropped after `conn` (fields drop in order): the day is named open
    /// until its connection is closed.
    _open: Option<OpenDay>,
}

impl DayWriter {
    fn open(path: &Path, last_used: u64) -> Result<DayWriter, StoreError> {
        let conn = open_day_file(path)?;
        // Checkpoints run on their own thread (`super::wal`), never in a commit.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        rollup::register_merge_functions(&conn)?;
        // Retention deletes a tenant's expired blocks from files other
        // tenants keep; when they were the newest, SQLite gives their ids
        // out again, and a block written now must not pass for rolled up.
        conn.execute(
            "UPDATE kv SET value = (SELECT coalesce(max(id), 0) FROM blocks)
             WHERE key = 'rollup_watermark' AND value > (SELECT coalesce(max(id), 0) FROM blocks)",
            [],
        )?;
        let dict = Dictionary::load(&conn)?;
        let methods = dict.ids.iter().map(|(v, id)| (*id, rollup::method_index(v))).collect();
        let mut salts = FxHashMap::default();
        for (tenant, consumer, salt) in super::salts::all_salts(&conn)? {
            let consumer_id = if consumer.is_empty() { Some(0) } else { dict.get(&consumer) };
            if let Some(consumer_id) = consumer_id {
                salts.insert((tenant, consumer_id), salt);
            }
        }
        let mut day = DayWriter {
            conn,
            dict,
            pending: Rollups::default(),
            methods,
            salts,
            new_salts: Vec::new(),
            archived_salts: Default::default(),
            last_used,
            wal_commits: 0,
            wal_bytes: 0,
            _open: None,
        };
        day.replay_rollups()?;
        Ok(day)
    }

    /// Counts the blocks past the rollup watermark: what a crash (or a
    /// failed write) left out of the stored rollups.
    fn replay_rollups(&mut self) -> Result<(), StoreError> {
        let watermark = rollup_watermark(&self.conn)?;
        let mut stmt = self.conn.prepare("SELECT tenant, data FROM blocks WHERE id > ?1 ORDER BY id")?;
        let mut rows = stmt.query([watermark])?;
        let mut decompressor = zstd::bulk::Decompressor::new()?;
        while let Some(row) = rows.next()? {
            let tenant: u32 = row.get(0)?;
            let data = row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
            let mut block = DecodedBlock::parse(data)?;
            block.load(data, rollup::block_columns(), &mut decompressor)?;
            let methods = &self.methods;
            self.pending.add_block(tenant, &block, &|id| methods.get(&id).copied().unwrap_or(rollup::METHODS.len()), |_, _| true);
        }
        Ok(())
    }

    fn method_of(&mut self, id: u32, method: &str) -> usize {
        *self.methods.entry(id).or_insert_with(|| rollup::method_index(method))
    }

    /// The personal salt of event `e` (of tenant id `tenant`, consumer id
    /// `consumer`, 0 for none) in this file: the file's, an imported one,
    /// the day's archived one, or a new random one.
    fn salt(&mut self, tenant: u32, consumer: u32, e: &Event, imported: &FxHashMap<(i64, String, String), [u8; 32]>, day: i64) -> [u8; 32] {
        if let Some(salt) = self.salts.get(&(tenant, consumer)) {
            return *salt;
        }
        let consumer_text = super::salts::consumer_key(e.salt_owner()).to_string();
        let salt = imported
            .get(&(day, e.tenant_id.to_string(), consumer_text.clone()))
            .or_else(|| self.archived_salts.get(&(e.tenant_id.to_string(), consumer_text.clone())))
            .copied()
            .unwrap_or_else(rand::random);
        self.salts.insert((tenant, consumer), salt);
        self.new_salts.push((tenant, consumer, consumer_text, salt));
        salt
    }

    /// Forgets what the last, failed, commit would have added. The
    /// dictionary ids it took back are given out again on the retry, maybe
    /// to other strings, so no method stays known by one of them.
    fn roll_back(&mut self) {
        for (id, _) in &self.dict.added {
            self.methods.remove(id);
        }
        self.dict.roll_back();
        for (tenant, consumer, _, _) in self.new_salts.drain(..) {
            self.salts.remove(&(tenant, consumer));
        }
    }
}

/// Refuses an audit directory written in another store format, and marks
/// a new one with this format.
fn check_format(meta: &Connection, dir: &Path) -> Result<(), StoreError> {
    let format: i64 = meta.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if format == STORE_FORMAT {
        return Ok(());
    }
    let has_heads: Option<i64> = meta
        .query_row("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'heads'", [], |r| r.get(0))
        .optional()?;
    if format > STORE_FORMAT || has_heads.is_some() {
        return Err(StoreError::Incompatible(format!(
            "the audit store in {} is in format {format}, and this keytrail reads format {STORE_FORMAT} (personal values \
             hashed through salted commitments); keep the old trail with the keytrail that wrote it (export it, \
             archive it) and start this one on a new data directory",
            dir.display()
        )));
    }
    meta.pragma_update(None, "user_version", STORE_FORMAT)?;
    Ok(())
}

pub(super) fn rollup_watermark(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("SELECT value FROM kv WHERE key = 'rollup_watermark'", [], |r| r.get(0)).optional()?.unwrap_or(0))
}

/// A block ready to insert.
struct PendingBlock {
    tenant: u32,
    first_seq: u64,
    rows: usize,
    min_ts: i64,
    max_ts: i64,
    categories: u8,
    prev_hash: [u8; 32],
    hash: [u8; 32],
    data: Vec<u8>,
}

/// A block being filled for one (day, tenant).
struct OpenBlock {
    encoder: BlockEncoder,
    tenant: u32,
    first_seq: u64,
    prev_hash: [u8; 32],
    hash: [u8; 32],
}

impl OpenBlock {
    fn seal(mut self, compressor: &mut zstd::bulk::Compressor<'static>) -> Result<PendingBlock, StoreError> {
        let e = &self.encoder;
        let (rows, min_ts, max_ts, categories) = (e.rows(), e.min_ts, e.max_ts, e.categories);
        let mut data = Vec::new();
        self.encoder.finish(compressor, &mut data)?;
        Ok(PendingBlock {
            tenant: self.tenant,
            first_seq: self.first_seq,
            rows,
            min_ts,
            max_ts,
            categories,
            prev_hash: self.prev_hash,
            hash: self.hash,
            data,
        })
    }
}

/// What one day contributes to a batch.
#[derive(Default)]
struct DayBatch {
    blocks: Vec<PendingBlock>,
    rollups: Rollups,
    /// Chain heads of the tenants in this day, after its blocks.
    heads: FxHashMap<String, ChainHead>,
}

/// Signing of checkpoints: every `every_events` events or `interval_ms`
/// per tenant, whichever comes first, and whenever asked (shutdown).
struct Checkpointing {
    signer: crate::signing::Signer,
    every_events: u64,
    interval_ms: i64,
    /// Per tenant: the last signed `seq` and when it was signed (or when
    /// the tenant was first seen unsigned, to start its clock).
    last: FxHashMap<String, (u64, i64)>,
}

pub struct AuditWriterStore {
    dir: PathBuf,
    meta: Connection,
    checkpointing: Option<Checkpointing>,
    heads: FxHashMap<String, ChainHead>,
    /// Tenants whose head moved since it was last saved in `meta.db`. The
    /// day files hold every head in the same transaction as its events;
    /// `meta.db`'s copy is there for when a day file is gone (retention,
    /// archives), so it is saved with the rollups (about once a second),
    /// when a day closes, at shutdown and when the store is dropped,
    /// not in a second transaction per batch.
    unsaved_heads: FxHashSet<String>,
    /// Salts to use rather than new ones, by (day, tenant, consumer): those
    /// archived events were hashed with, when they are restored.
    imported_salts: FxHashMap<(i64, String, String), [u8; 32]>,
    days: BTreeMap<i64, DayWriter>,
    compressor: zstd::bulk::Compressor<'static>,
    last_rollup_write: Instant,
    uses: u64,
    wal: super::wal::WalCheckpointer,
    /// [`super::wal::BYTES_PER_CHECKPOINT`], smaller in tests.
    wal_bytes_per_checkpoint: u64,
}

impl AuditWriterStore {
    /// Opens (creating if needed) the audit directory and recovers every
    /// tenant's chain head: the largest of `meta.db`'s and the day files'.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        let meta = open(&dir.join(META_FILE))?;
        check_format(&meta, dir)?;
        meta.execute_batch("CREATE TABLE IF NOT EXISTS heads (tenant TEXT PRIMARY KEY, seq INTEGER NOT NULL, hash BLOB NOT NULL);")?;
        let mut heads: FxHashMap<String, ChainHead> = FxHashMap::default();
        let mut consider = |tenant: String, seq: i64, hash: Vec<u8>| {
            let head = ChainHead { seq: seq as u64, hash: hash.try_into().unwrap_or(GENESIS_HASH) };
            let slot = heads.entry(tenant).or_insert(head);
            if head.seq > slot.seq {
                *slot = head;
            }
        };
        {
            let mut stmt = meta.prepare("SELECT tenant, seq, hash FROM heads")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                consider(r.get(0)?, r.get(1)?, r.get(2)?);
            }
        }
        for (_, path) in list_days(dir)? {
            let conn = open_day_file(&path)?;
            let mut stmt = conn.prepare("SELECT s.value, h.seq, h.hash FROM chain_heads h JOIN strings s ON s.id = h.tenant")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                consider(r.get(0)?, r.get(1)?, r.get(2)?);
            }
        }
        let mut store = AuditWriterStore {
            dir: dir.to_path_buf(),
            meta,
            checkpointing: None,
            heads,
            unsaved_heads: FxHashSet::default(),
            imported_salts: FxHashMap::default(),
            days: BTreeMap::new(),
            compressor: super::block::new_compressor()?,
            wal: super::wal::WalCheckpointer::start()?,
            wal_bytes_per_checkpoint: super::wal::BYTES_PER_CHECKPOINT,
            last_rollup_write: Instant::now(),
            uses: 0,
        };
        // Heads found only in day files (meta.db lost or behind) are saved now.
        let all: Vec<String> = store.heads.keys().cloned().collect();
        store.save_heads(&all)?;
        store.catch_up_rollups()?;
        Ok(store)
    }

    /// Brings every day file's rollups up to its last block: after a crash,
    /// the blocks committed in the last second before it are counted now.
    fn catch_up_rollups(&mut self) -> Result<(), StoreError> {
        for (_, path) in list_days(&self.dir)? {
            let behind = {
                let conn = open_day_file(&path)?;
                let last: i64 = conn.query_row("SELECT coalesce(max(id), 0) FROM blocks", [], |r| r.get(0))?;
                last > rollup_watermark(&conn)?
            };
            if behind {
                let mut day = DayWriter::open(&path, 0)?;
                write_pending_rollups(&mut day)?;
            }
        }
        Ok(())
    }

    /// Salts that events of `tenant` written from now on are hashed with,
    /// by (day, consumer), rather than new ones: restoring archived events,
    /// which must hash as they were archived.
    pub(super) fn import_salts(&mut self, tenant: &str, salts: &FxHashMap<(i64, String), [u8; 32]>) {
        for ((day, consumer), salt) in salts {
            self.imported_salts.insert((*day, tenant.to_string(), consumer.clone()), *salt);
        }
    }

    /// Lowers the WAL's byte budget between checkpoints, for tests.
    #[cfg(test)]
    pub(super) fn set_wal_bytes_per_checkpoint(&mut self, bytes: u64) {
        self.wal_bytes_per_checkpoint = bytes;
    }

    /// The chain heads as committed.
    pub fn heads(&self) -> &FxHashMap<String, ChainHead> {
        &self.heads
    }

    /// Sets a tenant's chain head, so that its next events are numbered and
    /// chained on from it: restoring archived events into a directory of
    /// their own at their original `seq` ([`super::archive::restore`]).
    pub(super) fn set_head(&mut self, tenant: &str, head: ChainHead) {
        self.heads.insert(tenant.to_string(), head);
    }

    /// Numbers, chains and commits `batch`. Committed events are removed
    /// from `batch`; on error the rest stay, numbered, for the caller to retry.
    pub fn insert_batch(&mut self, batch: &mut Vec<Event>) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let first_day = day_of(batch[0].timestamp_ms);
        if batch.iter().any(|e| day_of(e.timestamp_ms) != first_day) {
            batch.sort_by_key(|e| day_of(e.timestamp_ms));
        }
        // Number, chain, encode and commit one day at a time, oldest first;
        // each day's commit is final.
        let rollups_due = self.last_rollup_write.elapsed() >= ROLLUP_INTERVAL
            || self.days.values().map(|d| d.pending.keys()).sum::<usize>() >= ROLLUP_MAX_PENDING;
        let mut heads = self.heads.clone();
        let mut committed = 0;
        while committed < batch.len() {
            let day = day_of(batch[committed].timestamp_ms);
            let end = committed + batch[committed..].iter().take_while(|e| day_of(e.timestamp_ms) == day).count();
            let result = self.build_day(day, &mut batch[committed..end], &mut heads).and_then(|day_batch| {
                let writer = day_writer(&mut self.days, &self.dir, &self.meta, &mut self.uses, day)?;
                let bytes = day_batch.blocks.iter().map(|b| b.data.len()).sum::<usize>()
                    + writer.dict.added.iter().map(|(_, value)| value.len()).sum::<usize>();
                commit_day(writer, &day_batch, rollups_due)?;
                writer.wal_commits += 1;
                writer.wal_bytes += bytes as u64;
                if writer.wal_commits >= super::wal::COMMITS_PER_CHECKPOINT || writer.wal_bytes >= self.wal_bytes_per_checkpoint {
                    (writer.wal_commits, writer.wal_bytes) = (0, 0);
                    self.wal.ask(self.dir.join(day_file_name(day)));
                }
                writer.dict.added.clear();
                writer.new_salts.clear();
                if rollups_due {
                    // Written in the transaction, with what was pending.
                    writer.pending = Rollups::default();
                } else {
                    writer.pending.merge(day_batch.rollups);
                }
                // Marked for meta.db as the day commits: a later day of the
                // batch that fails must not leave them out.
                self.unsaved_heads.extend(day_batch.heads.keys().cloned());
                self.heads.extend(day_batch.heads);
                Ok(())
            });
            if let Err(error) = result {
                // The dictionary forgets this day's new strings; the events
                // not committed keep their numbers, which a retry rebuilds
                // from the committed heads.
                if let Some(writer) = self.days.get_mut(&day) {
                    writer.roll_back();
                }
                batch.drain(..committed);
                return Err(error);
            }
            committed = end;
        }
        // Freeing thousands of events is work too: a chunk at a time.
        while batch.len() > 4 * YIELD_EVERY {
            batch.truncate(batch.len() - 4 * YIELD_EVERY);
            std::thread::yield_now();
        }
        batch.clear();
        // Days before yesterday (of the newest event) are closed: retention
        // may delete their files, so their heads go to meta.db first.
        if let Some(newest) = self.days.keys().next_back().copied() {
            let old: Vec<i64> = self.days.range(..newest - 1).map(|(d, _)| *d).collect();
            if !old.is_empty() {
                self.save_unsaved_heads()?;
            }
            for day in old {
                let mut closing = self.days.remove(&day).expect("present");
                write_pending_rollups(&mut closing)?;
            }
        }
        if rollups_due {
            // Days that got no events in this batch but still hold counts.
            for writer in self.days.values_mut() {
                write_pending_rollups(writer)?;
            }
            self.last_rollup_write = Instant::now();
        }
        if rollups_due {
            self.save_unsaved_heads()?;
        }
        Ok(())
    }

    /// Closes the least recently used day file when `day`'s is to be opened
    /// and [`OPEN_DAYS`] are open. The heads not yet in `meta.db` are saved
    /// first: once the file is closed retention may delete it, and then
    /// `meta.db` holds the only copy of the heads it had.
    fn make_room_for(&mut self, day: i64) -> Result<(), StoreError> {
        if self.days.contains_key(&day) || self.days.len() < OPEN_DAYS {
            return Ok(());
        }
        self.save_unsaved_heads()?;
        if let Some(oldest) = self.days.iter().min_by_key(|(_, d)| d.last_used).map(|(k, _)| *k) {
            let mut closing = self.days.remove(&oldest).expect("present");
            write_pending_rollups(&mut closing)?;
        }
        Ok(())
    }

    /// Saves in `meta.db` the heads that moved since the last save.
    fn save_unsaved_heads(&mut self) -> Result<(), StoreError> {
        if self.unsaved_heads.is_empty() {
            return Ok(());
        }
        let tenants: Vec<String> = self.unsaved_heads.iter().cloned().collect();
        self.save_heads(&tenants)?;
        self.unsaved_heads.clear();
        Ok(())
    }

    /// Numbers and chains one day's events and encodes them into blocks.
    fn build_day(&mut self, day: i64, events: &mut [Event], heads: &mut FxHashMap<String, ChainHead>) -> Result<DayBatch, StoreError> {
        self.make_room_for(day)?;
        let writer = day_writer(&mut self.days, &self.dir, &self.meta, &mut self.uses, day)?;
        let compressor = &mut self.compressor;
        let mut out = DayBatch::default();
        let mut open: FxHashMap<u32, OpenBlock> = FxHashMap::default();
        // Tenants of this day by dictionary id, to name their heads at the end.
        let mut tenants: FxHashMap<u32, String> = FxHashMap::default();
        let mut last = LastTexts::default();
        for (i, e) in events.iter_mut().enumerate() {
            if i % YIELD_EVERY == YIELD_EVERY - 1 {
                std::thread::yield_now();
            }
            if !heads.contains_key(e.tenant_id.as_str()) {
                heads.insert(e.tenant_id.to_string(), ChainHead { seq: 0, hash: GENESIS_HASH });
            }
            let head = heads.get_mut(e.tenant_id.as_str()).expect("inserted");
            e.seq = head.seq + 1;
            let e = &*e;
            // An event without an id gets the one its tenant, seq and time
            // give it; the block stores only that it is derived, so its text
            // is made here for the hash alone, on the stack.
            let derived_id = e.event_id.is_empty();
            let mut id_text = [0u8; 36];
            let event_id = if derived_id { derived_event_id_in(&e.tenant_id, e.seq, e.timestamp_ms, &mut id_text) } else { &e.event_id };
            let tenant = last.tenant(&mut writer.dict, &e.tenant_id);
            tenants.entry(tenant).or_insert_with(|| e.tenant_id.to_string());
            // A loop rather than `TEXT_FIELDS.map`, whose per-field
            // temporaries cost a stalled store-to-load forward each.
            let mut texts = [TextRef::Absent; TEXT_FIELDS.len()];
            for (slot, f) in texts.iter_mut().zip(TEXT_FIELDS) {
                *slot = last.resolve(&mut writer.dict, f, f.get(e));
            }

            let previous = head.hash;
            let salt = (e.personal_commitment.is_none() && e.has_personal()).then(|| {
                let consumer = match texts[super::block::TextField::Consumer.index()] {
                    TextRef::Dict(id) if e.salt_owner().is_some() => id,
                    _ => 0,
                };
                writer.salt(tenant, consumer, e, &self.imported_salts, day)
            });
            let hash = e.chain_hash_as(event_id, &previous, salt.as_ref()).expect("salted when it has personal values");
            *head = ChainHead { seq: e.seq, hash };
            if let Some(block) = open.get_mut(&tenant) {
                if !block.encoder.fits(e.timestamp_ms) {
                    let full = open.remove(&tenant).expect("present");
                    out.blocks.push(full.seal(compressor)?);
                }
            }
            let block = open.entry(tenant).or_insert_with(|| OpenBlock {
                encoder: BlockEncoder::default(),
                tenant,
                first_seq: e.seq,
                prev_hash: previous,
                hash: previous,
            });
            block.encoder.push(e, derived_id, &e.tenant_id, &texts);
            block.hash = hash;

            if e.category() == crate::event::Category::Request {
                let consumer = match texts[super::block::TextField::Consumer.index()] {
                    TextRef::Dict(id) => id,
                    _ => 0,
                };
                let path = match texts[super::block::TextField::Path.index()] {
                    TextRef::Dict(id) => id,
                    _ => 0,
                };
                let method = match (texts[super::block::TextField::Method.index()], e.method.as_deref()) {
                    (TextRef::Dict(id), Some(m)) => writer.method_of(id, m),
                    _ => rollup::METHODS.len(),
                };
                out.rollups.add(tenant, e.timestamp_ms, consumer, path, method, e.status_code.unwrap_or(0), e.latency_us.unwrap_or(0));
            }
        }
        // Sealing (zstd) and the commit that follows run without a break:
        // step aside before them too, unless the last step aside was just now.
        if events.len() % YIELD_EVERY >= YIELD_EVERY / 4 {
            std::thread::yield_now();
        }
        let mut rest: Vec<OpenBlock> = open.into_values().collect();
        rest.sort_by_key(|b| b.first_seq);
        for block in rest {
            out.blocks.push(block.seal(compressor)?);
        }
        out.heads = tenants.into_values().map(|name| { let head = heads[&name]; (name, head) }).collect();
        Ok(out)
    }

    /// Erases a consumer's personal values in one go (see
    /// [`super::erasure`]); the audit writer uses the steps instead.
    pub fn erase(&mut self, request: ErasureRequest) -> Result<ErasureReport, StoreError> {
        let held = super::erasure::maintenance_lock(&self.dir, &format!("an erasure in tenant `{}`", request.tenant))?;
        let mut job = self.begin_erasure(request, held)?;
        while !self.erasure_step(&mut job)? {}
        Ok(job.into_report())
    }

    /// Starts an erasure, with the directory's maintenance lock `held`
    /// (see [`super::erasure::maintenance_lock`]): lists the hot and
    /// restored day files to visit.
    pub fn begin_erasure(&mut self, request: ErasureRequest, held: super::erasure::MaintenanceGuard) -> Result<super::erasure::ErasureJob, StoreError> {
        let restored_dir = self.dir.join(super::archive::RESTORED_DIR);
        let hot = list_days(&self.dir)?.into_iter().map(|(d, p)| (false, d, p));
        let files = hot.chain(list_days(&restored_dir)?.into_iter().map(|(d, p)| (true, d, p))).collect();
        let report = ErasureReport { tenant: request.tenant.clone(), consumer: request.consumer.clone(), ..ErasureReport::default() };
        Ok(super::erasure::ErasureJob { request, files, report, _held: held })
    }

    /// One step of an erasure: the next day file, or, when none is left,
    /// the archives and `meta.db`. `true` when the erasure is complete.
    pub fn erasure_step(&mut self, job: &mut super::erasure::ErasureJob) -> Result<bool, StoreError> {
        let (tenant, consumer) = (job.request.tenant.clone(), job.request.consumer.clone());
        let report = &mut job.report;
        if let Some((restored, day, path)) = job.files.pop_front() {
            let done = match self.days.get_mut(&day).filter(|_| !restored) {
                Some(writer) => {
                    let done = super::erasure::erase_in_day_file(&mut writer.conn, &tenant, &consumer, &mut self.compressor)?;
                    // New events of the consumer get a new salt, and its
                    // erased values are no longer known to the dictionary.
                    for (_, value) in &done.removed {
                        writer.dict.ids.remove(value.as_str());
                    }
                    if let Some((tenant_id, consumer_id)) = done.ids {
                        writer.salts.remove(&(tenant_id, consumer_id));
                    }
                    done
                }
                // A file retention dropped since the job began has nothing left to erase.
                None if !path.exists() => return Ok(false),
                None => super::erasure::erase_in_day_file(&mut open_day_file(&path)?, &tenant, &consumer, &mut self.compressor)?,
            };
            if done.blocks > 0 || done.salt_deleted || !done.removed.is_empty() {
                super::reader::DictCache::forget(&path);
                let name = day_file_name(day).trim_end_matches(".db").to_string();
                report.day_files.push(if restored { format!("{}/{name}", super::archive::RESTORED_DIR) } else { name });
                report.events += done.events;
                report.blocks += done.blocks;
                report.strings += done.removed.len() as u64;
                report.salts += u64::from(done.salt_deleted);
            }
            return Ok(false);
        }
        let request = &job.request;
        let secure_delete: i64 = self.meta.pragma_query_value(None, "secure_delete", |r| r.get(0))?;
        self.meta.pragma_update(None, "secure_delete", 1)?;
        self.meta.execute_batch(super::archive::SCHEMA)?;
        let archives = super::archive::erase_consumer(&request.archive_dir, &self.meta, &tenant, &consumer, request.archive_level, &request.signer);
        self.meta.pragma_update(None, "secure_delete", secure_delete)?;
        let archives = archives?;
        super::erasure::compact(&self.meta)?;
        report.events += archives.events;
        report.salts += archives.salts;
        report.archives = archives.archives;
        Ok(true)
    }

    /// The audit directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts signing checkpoints with `signer`, and signs at once every
    /// chain head that is ahead of its last checkpoint.
    pub fn enable_checkpoints(&mut self, signer: crate::signing::Signer, every_events: u64, interval_ms: i64) -> Result<(), StoreError> {
        self.meta.execute_batch(super::integrity::CHECKPOINT_SCHEMA)?;
        let mut last = FxHashMap::default();
        {
            let mut stmt = self.meta.prepare("SELECT tenant, max(seq), max(signed_at) FROM checkpoints GROUP BY tenant")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                last.insert(r.get::<_, String>(0)?, (r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)?));
            }
        }
        self.checkpointing = Some(Checkpointing { signer, every_events: every_events.max(1), interval_ms, last });
        self.checkpoint(true)?;
        Ok(())
    }

    /// Signs the heads that are due (all that moved, with `force`).
    /// Returns how many checkpoints were written.
    pub fn checkpoint(&mut self, force: bool) -> Result<usize, StoreError> {
        let Some(cp) = self.checkpointing.as_mut() else { return Ok(0) };
        let now = crate::event::now_ms();
        let mut due = Vec::new();
        for (tenant, head) in &self.heads {
            let (seq, at) = *cp.last.entry(tenant.clone()).or_insert((0, now));
            if head.seq > seq && (force || head.seq - seq >= cp.every_events || now - at >= cp.interval_ms) {
                due.push(cp.signer.sign(tenant, head.seq, head.hash, now));
            }
        }
        if due.is_empty() {
            return Ok(0);
        }
        let tx = self.meta.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO checkpoints (tenant, seq, hash, signed_at, signature) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for c in &due {
                stmt.execute(params![c.tenant, c.seq as i64, c.hash.as_slice(), c.signed_at_ms, c.signature.as_slice()])?;
            }
        }
        tx.commit()?;
        for c in &due {
            cp.last.insert(c.tenant.clone(), (c.seq, c.signed_at_ms));
        }
        Ok(due.len())
    }

    /// Records the heads of `tenants` in meta.db.
    fn save_heads(&mut self, tenants: &[String]) -> Result<(), StoreError> {
        let tx = self.meta.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO heads (tenant, seq, hash) VALUES (?1, ?2, ?3)
                 ON CONFLICT DO UPDATE SET seq = excluded.seq, hash = excluded.hash WHERE excluded.seq > heads.seq",
            )?;
            for tenant in tenants {
                if let Some(head) = self.heads.get(tenant) {
                    stmt.execute(params![tenant, head.seq as i64, head.hash.as_slice()])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Writes every pending rollup count and the heads not yet saved in
    /// `meta.db` (at shutdown).
    pub fn flush_rollups(&mut self) -> Result<(), StoreError> {
        for writer in self.days.values_mut() {
            write_pending_rollups(writer)?;
        }
        self.last_rollup_write = Instant::now();
        self.save_unsaved_heads()
    }
}

impl Drop for AuditWriterStore {
    fn drop(&mut self) {
        // The day files have these heads already; this keeps meta.db's
        // copy current for a day file that retention deletes later.
        if let Err(error) = self.save_unsaved_heads() {
            tracing::warn!(%error, "could not save the chain heads in meta.db; the day files still hold them");
        }
    }
}

/// The writer of `day`'s file, opening it when needed (after
/// [`AuditWriterStore::make_room_for`]).
/// The open day file of `day`, opened (or made) if it is not; `meta` is
/// `meta.db`, whose archive records hold the day's archived salts.
fn day_writer<'a>(days: &'a mut BTreeMap<i64, DayWriter>, dir: &Path, meta: &Connection, uses: &mut u64, day: i64) -> Result<&'a mut DayWriter, StoreError> {
    *uses += 1;
    let writer = match days.entry(day) {
        std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
        std::collections::btree_map::Entry::Vacant(entry) => {
            let claim = OpenDay::claim(dir, day);
            let mut writer = DayWriter::open(&dir.join(day_file_name(day)), *uses)?;
            writer.archived_salts = super::salts::archived_salts(meta, day)?;
            writer._open = Some(claim);
            entry.insert(writer)
        }
    };
    writer.last_used = *uses;
    Ok(writer)
}

fn write_pending_rollups(writer: &mut DayWriter) -> Result<(), StoreError> {
    if writer.pending.is_empty() {
        return Ok(());
    }
    let tx = writer.conn.transaction()?;
    writer.pending.write(&tx)?;
    set_rollup_watermark(&tx)?;
    tx.commit()?;
    writer.pending = Rollups::default();
    Ok(())
}

/// Records that the rollups now include every block of the file.
fn set_rollup_watermark(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    let last_block: i64 = tx.query_row("SELECT coalesce(max(id), 0) FROM blocks", [], |r| r.get(0))?;
    tx.execute(
        "INSERT INTO kv (key, value) VALUES ('rollup_watermark', ?1) ON CONFLICT DO UPDATE SET value = excluded.value",
        [last_block],
    )?;
    Ok(())
}

/// One day's transaction: new strings, blocks, chain heads, and (when due)
/// the rollups including this batch's.
fn commit_day(writer: &mut DayWriter, day: &DayBatch, write_rollups: bool) -> Result<(), StoreError> {
    let tx = writer.conn.transaction()?;
    {
        let mut strings = tx.prepare_cached("INSERT INTO strings (id, value) VALUES (?1, ?2)")?;
        for (id, value) in &writer.dict.added {
            strings.execute(params![id, &**value])?;
        }
        let mut salts = tx.prepare_cached("INSERT INTO personal_salts (tenant, consumer, salt) VALUES (?1, ?2, ?3)")?;
        for (tenant, _, consumer, salt) in &writer.new_salts {
            salts.execute(params![tenant, consumer, &salt[..]])?;
        }
        let mut insert = tx.prepare_cached(
            "INSERT INTO blocks (tenant, first_seq, rows, min_ts, max_ts, categories, prev_hash, hash, data)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for b in &day.blocks {
            insert.execute(params![
                b.tenant,
                b.first_seq as i64,
                b.rows as i64,
                b.min_ts,
                b.max_ts,
                b.categories,
                b.prev_hash.as_slice(),
                b.hash.as_slice(),
                b.data
            ])?;
        }
        let mut head = tx.prepare_cached(
            "INSERT INTO chain_heads (tenant, seq, hash) VALUES (?1, ?2, ?3)
             ON CONFLICT DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
        )?;
        for (tenant, h) in &day.heads {
            let id = writer.dict.get(tenant).ok_or_else(|| StoreError::Corrupt(format!("tenant {tenant} not interned")))?;
            head.execute(params![id, h.seq as i64, h.hash.as_slice()])?;
        }
    }
    if write_rollups {
        // Upserts add, so what was pending and this batch's counts can be
        // written one after the other. On failure nothing in memory changed.
        writer.pending.write(&tx)?;
        day.rollups.write(&tx)?;
        set_rollup_watermark(&tx)?;
    }
    tx.commit()?;
    Ok(())
}

