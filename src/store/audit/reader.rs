//! Reading the audit store: filtered scans newest first, the chain of a
//! tenant, and its verification.
//!
//! A scan walks the day files from the newest in its window. In each file it
//! resolves the filter's texts to the file's dictionary ids (a file without
//! the tenant or the consumer is skipped whole; not so for an actor or a
//! target, which a block may hold inline), picks the tenant's blocks
//! whose time range meets the window, and decodes only the columns the
//! filter needs until a block has a match. Blocks may overlap in time (a
//! slow request is committed after quicker later ones), so matching rows are
//! merged across the open blocks by `(timestamp, seq)`; a block is opened
//! only once its newest event could come next. Memory stays bounded by the
//! blocks open at once, whatever the size of the result.
//!
//! Retention ([`super::retention`]): a tenant's archived prefix of the chain
//! (up to the last `seq` its signed archive records in `meta.db` cover) is
//! hidden in the hot day files — a day file shared with a tenant whose hot
//! window is longer keeps those blocks until it is deleted, and nothing
//! reads them. Day files restored from archives (`restored/`) are read
//! beside the hot ones, with nothing hidden; the chain walk ([`AuditReader::verify`])
//! starts after the archived prefix and leaves restored days to
//! [`AuditReader::restored_runs`]. A day file deleted after this reader
//! listed it reads as empty.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use rusqlite::{Connection, OptionalExtension};
use rustc_hash::FxHashSet;

use super::block::{category_code, col, Columns, DecodedBlock, RequestIdKey, TextColumn, TextField, MAX_BLOCK_SPAN_MS};
use super::salts::TenantSalts;
use super::{day_of, list_days, EventFilter, StoredEvent};
use crate::event::{Event, GENESIS_HASH};
use crate::store::StoreError;

/// The strings of one day file, by id; shared by every reader in the
/// process. Ids are never reused within a file, so entries go stale only
/// when erasure overwrites a value, and erasure drops the file's cache.
#[derive(Default)]
pub(super) struct DictCache {
    /// Id `i` at index `i - 1`.
    values: RwLock<Vec<Box<str>>>,
}

impl DictCache {
    /// The cache of the file at `path` (keyed by inode and creation time
    /// too, so a file that is deleted and made again gets a fresh cache: a
    /// restored day deleted when done and restored again usually gets the
    /// freed inode back).
    fn of(path: &Path) -> Arc<DictCache> {
        use std::os::unix::fs::MetadataExt;
        let (inode, born) = std::fs::metadata(path).map(|m| (m.ino(), m.created().ok())).unwrap_or((0, None));
        let mut caches = static_caches().lock().unwrap_or_else(|e| e.into_inner());
        caches.entry((path.to_path_buf(), inode, born)).or_default().clone()
    }

    /// Makes sure ids up to `max_id` are loaded.
    pub(super) fn ensure(&self, conn: &Connection, max_id: u32) -> Result<(), StoreError> {
        let loaded = self.values.read().unwrap_or_else(|e| e.into_inner()).len();
        if loaded as u64 >= u64::from(max_id) {
            return Ok(());
        }
        let mut values = self.values.write().unwrap_or_else(|e| e.into_inner());
        let mut stmt = conn.prepare_cached("SELECT id, value FROM strings WHERE id > ?1 ORDER BY id")?;
        let mut rows = stmt.query([values.len() as i64])?;
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            while (values.len() as i64) < id - 1 {
                values.push("".into());
            }
            values.push(row.get::<_, String>(1)?.into_boxed_str());
        }
        Ok(())
    }

    /// Drops the cache of a deleted file.
    pub(super) fn forget(path: &Path) {
        static_caches().lock().unwrap_or_else(|e| e.into_inner()).retain(|(p, ..), _| p != path);
    }

    /// Runs `f` with a lookup from id to string.
    pub(super) fn with<R>(&self, f: impl for<'a> FnOnce(&'a dyn Fn(u32) -> Option<&'a str>) -> R) -> R {
        let values = self.values.read().unwrap_or_else(|e| e.into_inner());
        f(&|id: u32| values.get((id as usize).wrapping_sub(1)).map(|s| &**s))
    }

    /// Ids of every loaded string that starts with `prefix`. The dictionary
    /// is shared by every text field, so the set may hold ids of other
    /// fields' texts; compared against one column, those never match.
    fn ids_with_prefix(&self, prefix: &str) -> FxHashSet<u32> {
        let values = self.values.read().unwrap_or_else(|e| e.into_inner());
        values.iter().enumerate().filter(|(_, v)| v.starts_with(prefix)).map(|(i, _)| i as u32 + 1).collect()
    }
}

type Caches = Mutex<HashMap<(PathBuf, u64, Option<std::time::SystemTime>), Arc<DictCache>>>;

fn static_caches() -> &'static Caches {
    static CACHES: OnceLock<Caches> = OnceLock::new();
    CACHES.get_or_init(Default::default)
}

/// One day file opened for reading.
pub(super) struct DayReader {
    pub(super) conn: Connection,
    pub(super) dict: Arc<DictCache>,
    /// Tenants' personal salts in this file, read when first needed.
    salts: RefCell<HashMap<String, Rc<TenantSalts>>>,
}

impl DayReader {
    fn open(path: &Path) -> Result<DayReader, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(DayReader { conn, dict: DictCache::of(path), salts: RefCell::new(HashMap::new()) })
    }

    /// The personal salt of `tenant`'s events of `consumer` (a
    /// [`super::salts::consumer_key`]) in this file. Salts are added as
    /// events are committed: a consumer missing from what was read before
    /// reads the file's salts again.
    pub(super) fn salt(&self, tenant: &str, consumer: &str) -> Result<Option<[u8; 32]>, StoreError> {
        if let Some(salt) = self.salts.borrow().get(tenant).and_then(|s| s.get(consumer)) {
            return Ok(Some(*salt));
        }
        let fresh = Rc::new(match self.id_of(tenant)? {
            Some(id) => super::salts::tenant_salts(&self.conn, id)?,
            None => TenantSalts::default(),
        });
        let found = fresh.get(consumer).copied();
        self.salts.borrow_mut().insert(tenant.to_string(), fresh);
        Ok(found)
    }

    /// The file's id for a string, if it has one.
    pub(super) fn id_of(&self, value: &str) -> Result<Option<u32>, StoreError> {
        Ok(self.conn.prepare_cached("SELECT id FROM strings WHERE value = ?1")?.query_row([value], |r| r.get(0)).optional()?)
    }

    pub(super) fn block_data(&self, id: i64) -> Result<Vec<u8>, StoreError> {
        Ok(self.conn.prepare_cached("SELECT data FROM blocks WHERE id = ?1")?.query_row([id], |r| r.get(0))?)
    }
}

/// A block's row in `blocks`, without its data.
#[derive(Debug, Clone)]
pub(super) struct BlockMeta {
    pub(super) id: i64,
    pub(super) first_seq: u64,
    pub(super) max_ts: i64,
    pub(super) prev_hash: [u8; 32],
    pub(super) hash: [u8; 32],
}

fn hash_of(bytes: Vec<u8>) -> [u8; 32] {
    bytes.try_into().unwrap_or([0; 32])
}

/// An exact text wanted in a field that is interned only from its second
/// sighting in a file (actors, targets): rows hold either its dictionary id,
/// if the file has one, or the text inline.
struct ExactText {
    id: Option<u32>,
    text: Box<str>,
}

impl ExactText {
    fn resolve(value: &str, day: &DayReader) -> Result<ExactText, StoreError> {
        Ok(ExactText { id: day.id_of(value)?, text: value.into() })
    }

    fn matches(&self, column: &TextColumn, row: usize) -> bool {
        match column.dict_id(row) {
            Some(id) => self.id == Some(id),
            None => column.inline_text(row) == Some(&*self.text),
        }
    }
}

/// A prefix wanted in such a field: the ids of the file's strings that
/// start with it, and the prefix for inline texts.
struct PrefixText {
    ids: FxHashSet<u32>,
    prefix: Box<str>,
}

impl PrefixText {
    fn matches(&self, column: &TextColumn, row: usize) -> bool {
        match column.dict_id(row) {
            Some(id) => self.ids.contains(&id),
            None => column.inline_text(row).is_some_and(|t| t.starts_with(&*self.prefix)),
        }
    }
}

/// An [`EventFilter`] resolved against one day file's dictionary.
struct DayFilter {
    tenant: u32,
    category: Option<u8>,
    event_type: Option<u32>,
    consumer: Option<u32>,
    api: Option<u32>,
    method: Option<u32>,
    outcome: Option<u32>,
    paths: Option<FxHashSet<u32>>,
    actor: Option<ExactText>,
    target: Option<ExactText>,
    target_prefix: Option<PrefixText>,
    request_id: Option<RequestIdKey>,
    status_min: u16,
    status_max: u16,
    from: i64,
    to: i64,
    before: Option<(i64, u64)>,
}

impl DayFilter {
    /// `None` when nothing in the file can match.
    fn resolve(filter: &EventFilter, day: &DayReader) -> Result<Option<DayFilter>, StoreError> {
        let Some(tenant) = day.id_of(&filter.tenant_id)? else { return Ok(None) };
        let mut ids = [None; 5];
        let always_interned = [&filter.event_type, &filter.consumer_id, &filter.api_id, &filter.method, &filter.outcome];
        for (slot, value) in ids.iter_mut().zip(always_interned) {
            if let Some(value) = value {
                // These fields are always in the dictionary: a value it lacks matches nothing.
                match day.id_of(value)? {
                    Some(id) => *slot = Some(id),
                    None => return Ok(None),
                }
            }
        }
        let paths = match &filter.path_prefix {
            None => None,
            Some(prefix) => {
                day.dict.ensure(&day.conn, u32::MAX)?;
                let ids = day.dict.ids_with_prefix(prefix);
                if ids.is_empty() {
                    return Ok(None);
                }
                Some(ids)
            }
        };
        if let (Some(target), Some(prefix)) = (&filter.target, &filter.target_prefix) {
            if !target.starts_with(prefix.as_str()) {
                return Ok(None);
            }
        }
        // Actors and targets seen once in a file stay inline in their block,
        // so a value the dictionary lacks may still match: no skipping here.
        let actor = filter.actor.as_deref().map(|a| ExactText::resolve(a, day)).transpose()?;
        let target = filter.target.as_deref().map(|t| ExactText::resolve(t, day)).transpose()?;
        let target_prefix = match &filter.target_prefix {
            None => None,
            Some(prefix) => {
                day.dict.ensure(&day.conn, u32::MAX)?;
                Some(PrefixText { ids: day.dict.ids_with_prefix(prefix), prefix: prefix.as_str().into() })
            }
        };
        let mut to = filter.to_ms.unwrap_or(i64::MAX);
        if let Some((ts, _)) = filter.before {
            to = to.min(ts);
        }
        Ok(Some(DayFilter {
            tenant,
            category: filter.category.map(category_code),
            event_type: ids[0],
            consumer: ids[1],
            api: ids[2],
            method: ids[3],
            outcome: ids[4],
            paths,
            actor,
            target,
            target_prefix,
            request_id: filter.request_id.as_deref().map(RequestIdKey::new),
            status_min: filter.status_min.unwrap_or(0),
            status_max: filter.status_max.unwrap_or(u16::MAX),
            from: filter.from_ms.unwrap_or(i64::MIN),
            to,
            before: filter.before,
        }))
    }

    fn columns(&self) -> Columns {
        let mut columns = Columns::of(&[col::TS, col::CATEGORY]);
        if self.status_min > 0 || self.status_max < u16::MAX {
            columns = columns.with(Columns::of(&[col::STATUS]));
        }
        if self.request_id.is_some() {
            columns = columns.with(Columns::of(&[col::REQUEST_ID]));
        }
        for (set, field) in [
            (self.event_type.is_some(), TextField::EventType),
            (self.consumer.is_some(), TextField::Consumer),
            (self.api.is_some(), TextField::Api),
            (self.method.is_some(), TextField::Method),
            (self.outcome.is_some(), TextField::Outcome),
            (self.paths.is_some(), TextField::Path),
            (self.actor.is_some(), TextField::Actor),
            (self.target.is_some() || self.target_prefix.is_some(), TextField::Target),
        ] {
            if set {
                columns = columns.with(Columns::text(&[field]));
            }
        }
        columns
    }

    fn matches(&self, b: &DecodedBlock, row: usize, seq: u64) -> bool {
        let ts = b.ts[row];
        if ts < self.from || ts > self.to {
            return false;
        }
        if let Some((before_ts, before_seq)) = self.before {
            if ts == before_ts && seq >= before_seq {
                return false;
            }
        }
        if self.category.is_some_and(|c| b.category[row] != c) {
            return false;
        }
        if self.status_min > 0 || self.status_max < u16::MAX {
            let status = b.status[row];
            if status == 0 || status < self.status_min || status > self.status_max {
                return false;
            }
        }
        let text = |field: TextField| b.texts[field.index()].dict_id(row);
        for (want, field) in [
            (self.event_type, TextField::EventType),
            (self.consumer, TextField::Consumer),
            (self.api, TextField::Api),
            (self.method, TextField::Method),
            (self.outcome, TextField::Outcome),
        ] {
            if want.is_some_and(|id| text(field) != Some(id)) {
                return false;
            }
        }
        if let Some(paths) = &self.paths {
            if !text(TextField::Path).is_some_and(|id| paths.contains(&id)) {
                return false;
            }
        }
        let column = |field: TextField| &b.texts[field.index()];
        if self.actor.as_ref().is_some_and(|a| !a.matches(column(TextField::Actor), row)) {
            return false;
        }
        if self.target.as_ref().is_some_and(|t| !t.matches(column(TextField::Target), row)) {
            return false;
        }
        if self.target_prefix.as_ref().is_some_and(|p| !p.matches(column(TextField::Target), row)) {
            return false;
        }
        if self.request_id.as_ref().is_some_and(|key| !b.request_id_is(row, key)) {
            return false;
        }
        true
    }
}

/// An open block in a newest-first merge: its matching rows, sorted.
struct Cursor {
    block: DecodedBlock,
    first_seq: u64,
    rows: Vec<u32>,
    at: usize,
    hashes: Option<Vec<[u8; 32]>>,
    /// The block's `prev_hash`: the hash before its first event.
    prev_hash: [u8; 32],
    /// The file the block is in (its dictionary).
    day: Rc<DayReader>,
}

impl Cursor {
    fn head(&self) -> (i64, u64) {
        let row = self.rows[self.at] as usize;
        (self.block.ts[row], self.first_seq + row as u64)
    }
}

/// Where a tenant's chain first breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// The sequence numbers of the block where the break was found.
    pub first_seq: u64,
    pub last_seq: u64,
    pub reason: String,
}

/// The result of walking a tenant's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// With a start time: the first `seq` walked, whose link to the events
    /// before it (its block's `prev_hash`) was taken as stored.
    pub started_at: Option<u64>,
    pub events: u64,
    pub last_seq: u64,
    pub first_break: Option<ChainBreak>,
    /// Each verified block's last `seq` and hash, in order (where signed
    /// checkpoints can be matched).
    pub block_ends: Vec<(u64, [u8; 32])>,
}

/// A run of a tenant's restored blocks that follow on from each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredRun {
    pub first_seq: u64,
    pub last_seq: u64,
    /// The hash before its first event, and after its last.
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
    /// The first block in it that failed to rehash to its stored hash.
    pub problem: Option<String>,
}

/// A block of a tenant in a hot day file, as retention reads it.
/// A block's record and its row count, from `SELECT id, first_seq,
/// max_ts, prev_hash, hash, rows FROM blocks`.
fn block_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(BlockMeta, u64)> {
    let meta = BlockMeta { id: r.get(0)?, first_seq: r.get::<_, i64>(1)? as u64, max_ts: r.get(2)?, prev_hash: hash_of(r.get(3)?), hash: hash_of(r.get(4)?) };
    Ok((meta, r.get::<_, i64>(5)? as u64))
}

#[derive(Debug, Clone)]
pub(super) struct HotBlock {
    pub(super) day: i64,
    pub(super) meta: BlockMeta,
    pub(super) rows: u64,
}

impl HotBlock {
    pub(super) fn last_seq(&self) -> u64 {
        self.meta.first_seq + self.rows.saturating_sub(1)
    }
}

/// A read-only view of the audit store, opened per query.
pub struct AuditReader {
    /// The hot day files.
    days: Vec<(i64, PathBuf)>,
    /// Day files restored from archives (`restored/`).
    restored: Vec<(i64, PathBuf)>,
    /// Each tenant's archived prefix: its last `seq` and the hash after it.
    floors: HashMap<String, (u64, [u8; 32])>,
    open: RefCell<HashMap<(bool, i64), Rc<DayReader>>>,
    decompressor: RefCell<zstd::bulk::Decompressor<'static>>,
}

impl AuditReader {
    /// Opens the audit directory. Day files that appear afterwards are not
    /// seen by this reader; open a new one per query.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Ok(AuditReader {
            days: list_days(dir)?,
            restored: list_days(&dir.join(super::archive::RESTORED_DIR))?,
            floors: super::archive::floors(dir)?,
            open: RefCell::new(HashMap::new()),
            decompressor: RefCell::new(zstd::bulk::Decompressor::new()?),
        })
    }

    /// The day numbers of the hot day files, oldest first.
    pub fn days(&self) -> impl Iterator<Item = i64> + '_ {
        self.days.iter().map(|(d, _)| *d)
    }

    /// The hot day file of `day`.
    pub(super) fn day(&self, day: i64) -> Result<Option<Rc<DayReader>>, StoreError> {
        self.file(false, day)
    }

    /// The hot (`restored == false`) or restored day file of `day`; `None`
    /// when there is none (or it was deleted since this reader listed it).
    fn file(&self, restored: bool, day: i64) -> Result<Option<Rc<DayReader>>, StoreError> {
        if let Some(reader) = self.open.borrow().get(&(restored, day)) {
            return Ok(Some(reader.clone()));
        }
        let list = if restored { &self.restored } else { &self.days };
        let Some((_, path)) = list.iter().find(|(d, _)| *d == day) else { return Ok(None) };
        // The first read opens the file's WAL: once it has, the file can be
        // deleted under this reader (retention) and still be read to the end.
        let opened = DayReader::open(path).and_then(|reader| {
            reader.conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0))?;
            Ok(reader)
        });
        let reader = match opened {
            Ok(reader) => Rc::new(reader),
            Err(_) if !path.exists() => return Ok(None),
            Err(error) => return Err(error),
        };
        self.open.borrow_mut().insert((restored, day), reader.clone());
        Ok(Some(reader))
    }

    /// The personal salt `tenant`'s events of `consumer` (see
    /// [`super::salts::consumer_key`]) on `day` are hashed with: the hot day
    /// file's, else the restored one's.
    pub fn salt(&self, day: i64, tenant: &str, consumer: &str) -> Result<Option<[u8; 32]>, StoreError> {
        for restored in [false, true] {
            if let Some(file) = self.file(restored, day)? {
                if let Some(salt) = file.salt(tenant, consumer)? {
                    return Ok(Some(salt));
                }
            }
        }
        Ok(None)
    }

    /// The tenant's archived prefix: the last archived `seq` (0 if none) and
    /// the chain hash after it.
    pub fn archived_through(&self, tenant: &str) -> (u64, [u8; 32]) {
        self.floors.get(tenant).copied().unwrap_or((0, GENESIS_HASH))
    }

    /// Parses a block and decodes `columns` of it.
    pub(super) fn decode(&self, data: &[u8], columns: Columns) -> Result<DecodedBlock, StoreError> {
        let mut block = DecodedBlock::parse(data)?;
        block.load(data, columns, &mut self.decompressor.borrow_mut())?;
        Ok(block)
    }

    /// Calls `each` for every matching event, newest first (by timestamp,
    /// then seq), stopping after `limit` events or when `each` returns
    /// false. With `hashes`, every event carries its chain hash (recomputed
    /// from its block's stored `prev_hash`, which costs a hash per event of
    /// the blocks read). The event passed to `each` is reused between calls.
    pub fn scan(
        &self,
        filter: &EventFilter,
        limit: Option<u64>,
        hashes: bool,
        mut each: impl FnMut(&StoredEvent) -> bool,
    ) -> Result<(), StoreError> {
        let from_day = filter.from_ms.map_or(i64::MIN, day_of);
        let mut to = filter.to_ms.unwrap_or(i64::MAX);
        if let Some((ts, _)) = filter.before {
            to = to.min(ts);
        }
        let to_day = if to == i64::MAX { i64::MAX } else { day_of(to) };
        let mut remaining = limit.unwrap_or(u64::MAX);
        let mut out = StoredEvent::default();
        let restored: &[(i64, _)] = if filter.hot_only { &[] } else { &self.restored };
        let mut days: Vec<i64> = self.days.iter().chain(restored).map(|(d, _)| *d).filter(|d| (from_day..=to_day).contains(d)).collect();
        days.sort_unstable();
        days.dedup();
        let hidden_through = self.archived_through(&filter.tenant_id).0;
        for day_number in days.into_iter().rev() {
            if remaining == 0 {
                break;
            }
            // The day's hot file (without the archived prefix) and its
            // restored file, merged.
            let mut metas: Vec<(Rc<DayReader>, Rc<DayFilter>, BlockMeta)> = Vec::new();
            for (restored, floor) in [(false, hidden_through), (true, 0)] {
                if restored && filter.hot_only {
                    continue;
                }
                let Some(day) = self.file(restored, day_number)? else { continue };
                let Some(day_filter) = DayFilter::resolve(filter, &day)? else { continue };
                let day_filter = Rc::new(day_filter);
                for meta in self.blocks_in_window(&day, &day_filter, floor)? {
                    metas.push((day.clone(), day_filter.clone(), meta));
                }
            }
            metas.sort_by_key(|m| std::cmp::Reverse((m.2.max_ts, m.2.first_seq)));
            let mut next = 0;
            let mut open: Vec<Cursor> = Vec::new();
            loop {
                let best = open.iter().enumerate().max_by_key(|(_, c)| c.head()).map(|(i, c)| (i, c.head()));
                if next < metas.len() && best.is_none_or(|(_, (ts, _))| metas[next].2.max_ts >= ts) {
                    let (day, day_filter, meta) = &metas[next];
                    if let Some(cursor) = self.open_cursor(day, meta, day_filter, hashes, &filter.tenant_id)? {
                        open.push(cursor);
                    }
                    next += 1;
                    continue;
                }
                let Some((i, (_, seq))) = best else { break };
                let cursor = &mut open[i];
                let row = cursor.rows[cursor.at] as usize;
                let day = cursor.day.clone();
                day.dict.with(|lookup| cursor.block.fill_event(row, &filter.tenant_id, seq, lookup, &mut out.event))?;
                out.hash = cursor.hashes.as_ref().map(|h| h[row]);
                out.prev_hash = cursor.hashes.as_ref().map(|h| if row == 0 { cursor.prev_hash } else { h[row - 1] });
                if !each(&out) {
                    return Ok(());
                }
                remaining -= 1;
                if remaining == 0 {
                    return Ok(());
                }
                cursor.at += 1;
                if cursor.at == cursor.rows.len() {
                    open.swap_remove(i);
                }
            }
        }
        Ok(())
    }

    /// The tenant's blocks after `floor` that may hold events in the
    /// filter's window, newest `max_ts` first.
    fn blocks_in_window(&self, day: &DayReader, f: &DayFilter, floor: u64) -> Result<Vec<BlockMeta>, StoreError> {
        let mut stmt = day.conn.prepare_cached(
            "SELECT id, first_seq, max_ts, categories, prev_hash, hash FROM blocks
             WHERE tenant = ?1 AND max_ts >= ?2 AND max_ts <= ?3 AND min_ts <= ?4 AND first_seq > ?5
             ORDER BY max_ts DESC, first_seq DESC",
        )?;
        let mut rows = stmt.query(rusqlite::params![f.tenant, f.from, f.to.saturating_add(MAX_BLOCK_SPAN_MS), f.to, floor as i64])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let categories: u8 = r.get(3)?;
            if f.category.is_some_and(|c| categories & (1 << c) == 0) {
                continue;
            }
            out.push(BlockMeta {
                id: r.get(0)?,
                first_seq: r.get::<_, i64>(1)? as u64,
                max_ts: r.get(2)?,
                prev_hash: hash_of(r.get(4)?),
                hash: hash_of(r.get(5)?),
            });
        }
        Ok(out)
    }

    /// Decodes a block far enough to know its matching rows; `None` if none match.
    fn open_cursor(&self, day: &Rc<DayReader>, meta: &BlockMeta, f: &DayFilter, hashes: bool, tenant: &str) -> Result<Option<Cursor>, StoreError> {
        let data = day.block_data(meta.id)?;
        let mut block = self.decode(&data, f.columns())?;
        let mut rows: Vec<u32> =
            (0..block.rows()).filter(|r| f.matches(&block, *r, meta.first_seq + *r as u64)).map(|r| r as u32).collect();
        if rows.is_empty() {
            return Ok(None);
        }
        block.load(&data, Columns::ALL, &mut self.decompressor.borrow_mut())?;
        day.dict.ensure(&day.conn, block.max_dict_id())?;
        // Newest first: timestamp, then seq (rows are in seq order).
        rows.sort_unstable_by(|a, b| (block.ts[*b as usize], *b).cmp(&(block.ts[*a as usize], *a)));
        let hashes = if hashes { Some(self.block_hashes(day, &block, meta, tenant)?) } else { None };
        Ok(Some(Cursor { block, first_seq: meta.first_seq, rows, at: 0, hashes, prev_hash: meta.prev_hash, day: day.clone() }))
    }

    /// Every event's chain hash in a fully decoded block, from its `prev_hash`.
    fn block_hashes(&self, day: &DayReader, block: &DecodedBlock, meta: &BlockMeta, tenant: &str) -> Result<Vec<[u8; 32]>, StoreError> {
        let mut previous = meta.prev_hash;
        let mut out = Vec::with_capacity(block.rows());
        // A salt that cannot be read is reported by the hash as missing.
        let salt = |consumer: Option<&str>| day.salt(tenant, super::salts::consumer_key(consumer)).ok().flatten();
        day.dict.with(|lookup| -> Result<(), StoreError> {
            for row in 0..block.rows() {
                previous = block.chain_hash(row, tenant, meta.first_seq + row as u64, lookup, &salt, &previous)?;
                out.push(previous);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Every block of a tenant after `floor` in the hot (or the restored)
    /// day files, in chain order.
    pub(super) fn tenant_blocks_in(&self, restored: bool, tenant: &str, floor: u64) -> Result<Vec<(i64, BlockMeta, u64)>, StoreError> {
        let mut all = Vec::new();
        let list = if restored { &self.restored } else { &self.days };
        for day_number in list.iter().map(|(d, _)| *d).collect::<Vec<_>>() {
            let Some(day) = self.file(restored, day_number)? else { continue };
            let Some(tenant_id) = day.id_of(tenant)? else { continue };
            let mut stmt = day.conn.prepare_cached(
                "SELECT id, first_seq, max_ts, prev_hash, hash, rows FROM blocks WHERE tenant = ?1 AND first_seq > ?2 ORDER BY first_seq",
            )?;
            let mut rows = stmt.query(rusqlite::params![tenant_id, floor as i64])?;
            while let Some(r) = rows.next()? {
                let (meta, rows) = block_row(r)?;
                all.push((day_number, meta, rows));
            }
        }
        all.sort_by_key(|(_, meta, _)| meta.first_seq);
        Ok(all)
    }

    /// The tenant's visible hot blocks (after its archived prefix), in chain order.
    fn tenant_blocks(&self, tenant: &str) -> Result<Vec<(i64, BlockMeta, u64)>, StoreError> {
        self.tenant_blocks_in(false, tenant, self.archived_through(tenant).0)
    }

    /// Every block of a tenant in the hot day files, the archived prefix
    /// included, in chain order (for retention).
    pub(super) fn hot_blocks(&self, tenant: &str) -> Result<Vec<HotBlock>, StoreError> {
        Ok(self.tenant_blocks_in(false, tenant, 0)?.into_iter().map(|(day, meta, rows)| HotBlock { day, meta, rows }).collect())
    }

    /// Every tenant in one hot day file with its events there: (tenant,
    /// events, lowest first `seq`, highest last `seq`).
    pub(super) fn file_tenants(&self, day: i64) -> Result<Vec<(String, u64, u64, u64)>, StoreError> {
        let Some(file) = self.day(day)? else { return Ok(Vec::new()) };
        let mut stmt = file.conn.prepare_cached(
            "SELECT s.value, sum(b.rows), min(b.first_seq), max(b.first_seq + b.rows - 1)
             FROM blocks b JOIN strings s ON s.id = b.tenant GROUP BY b.tenant ORDER BY s.value",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64, r.get::<_, i64>(3)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Calls `each` for every event of a hot block, in order, with its hash
    /// and the one before it; fails if the block does not rehash to its
    /// stored hash or holds another number of events than its row says.
    /// Every event of a hot block with its hashes (checked against the
    /// block's), and the personal salt it is hashed with.
    pub(super) fn block_events(
        &self,
        block: &HotBlock,
        tenant: &str,
        mut each: impl FnMut(&StoredEvent, Option<&[u8; 32]>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let day = self.day(block.day)?.ok_or_else(|| StoreError::Corrupt("day file vanished".into()))?;
        let decoded = self.decode(&day.block_data(block.meta.id)?, Columns::ALL)?;
        day.dict.ensure(&day.conn, decoded.max_dict_id())?;
        if decoded.rows() as u64 != block.rows {
            return Err(StoreError::Corrupt(format!("events {}..={}: row count differs from the block's record", block.meta.first_seq, block.last_seq())));
        }
        let hashes = self.block_hashes(&day, &decoded, &block.meta, tenant)?;
        if hashes.last() != Some(&block.meta.hash) {
            return Err(StoreError::Corrupt(format!("events {}..={}: do not hash to the block's stored hash", block.meta.first_seq, block.last_seq())));
        }
        let mut stored = StoredEvent::default();
        let mut previous = block.meta.prev_hash;
        for (row, hash) in hashes.into_iter().enumerate() {
            day.dict.with(|lookup| decoded.fill_event(row, tenant, block.meta.first_seq + row as u64, lookup, &mut stored.event))?;
            stored.prev_hash = Some(previous);
            stored.hash = Some(hash);
            previous = hash;
            let salt = match stored.event.personal_commitment.is_none() && stored.event.has_personal() {
                true => day.salt(tenant, super::salts::consumer_key(stored.event.salt_owner()))?,
                false => None,
            };
            each(&stored, salt.as_ref())?;
        }
        Ok(())
    }

    /// Every tenant with events in the store — hot, restored or archived —, sorted.
    pub fn tenants(&self) -> Result<Vec<String>, StoreError> {
        let mut out: std::collections::BTreeSet<String> = self.floors.keys().cloned().collect();
        for (restored, list) in [(false, &self.days), (true, &self.restored)] {
            for day_number in list.iter().map(|(d, _)| *d).collect::<Vec<_>>() {
                let Some(day) = self.file(restored, day_number)? else { continue };
                let mut stmt = day.conn.prepare_cached("SELECT value FROM strings WHERE id IN (SELECT DISTINCT tenant FROM blocks)")?;
                let names = stmt.query_map([], |r| r.get::<_, String>(0))?;
                for name in names {
                    out.insert(name?);
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    /// The tenant's restored blocks as runs of blocks that follow on from
    /// each other (same `seq` order, each linking to the one before), each
    /// block rehashed; integrity checks each run against its archive's
    /// signed record.
    pub fn restored_runs(&self, tenant: &str) -> Result<Vec<RestoredRun>, StoreError> {
        let mut runs: Vec<RestoredRun> = Vec::new();
        for (day_number, meta, rows) in self.tenant_blocks_in(true, tenant, 0)? {
            let last_seq = meta.first_seq + rows.saturating_sub(1);
            let day = self.file(true, day_number)?.ok_or_else(|| StoreError::Corrupt("day file vanished".into()))?;
            let problem = match day.block_data(meta.id).and_then(|data| self.decode(&data, Columns::ALL)).and_then(|block| {
                day.dict.ensure(&day.conn, block.max_dict_id())?;
                if block.rows() as u64 != rows {
                    return Err(StoreError::Corrupt("row count differs from the block's record".into()));
                }
                self.block_hashes(&day, &block, &meta, tenant)
            }) {
                Ok(hashes) if hashes.last() == Some(&meta.hash) => None,
                Ok(_) => Some(format!("restored events {}..={} do not hash to their block's stored hash", meta.first_seq, last_seq)),
                Err(error) => Some(format!("restored events {}..={}: block cannot be read: {error}", meta.first_seq, last_seq)),
            };
            match runs.last_mut() {
                Some(run) if run.last_seq + 1 == meta.first_seq && run.hash == meta.prev_hash => {
                    run.last_seq = last_seq;
                    run.hash = meta.hash;
                    if run.problem.is_none() {
                        run.problem = problem;
                    }
                }
                _ => runs.push(RestoredRun { first_seq: meta.first_seq, last_seq, prev_hash: meta.prev_hash, hash: meta.hash, problem }),
            }
        }
        Ok(runs)
    }

    /// The last `seq` of `tenant`'s chain in the hot day files (0 when it
    /// has none): where a reader of what comes next starts.
    pub fn chain_head(&self, tenant: &str) -> Result<u64, StoreError> {
        let mut head = 0;
        for day_number in self.days().collect::<Vec<_>>() {
            let Some(day) = self.day(day_number)? else { continue };
            let Some(tenant_id) = day.id_of(tenant)? else { continue };
            let seq: Option<i64> =
                day.conn.prepare_cached("SELECT seq FROM chain_heads WHERE tenant = ?1")?.query_row([tenant_id], |r| r.get(0)).optional()?;
            head = head.max(seq.unwrap_or(0) as u64);
        }
        Ok(head.max(self.archived_through(tenant).0))
    }

    /// `tenant`'s events after `after_seq`, in chain order, from the hot day
    /// files (not those of its archived prefix), passed to `each` until it
    /// returns false; with `from_ms`, only the blocks holding events at or
    /// after it are read (every event of such a block after `after_seq` is
    /// passed, earlier ones too). Finds the blocks by the chain's and the
    /// time's indexes, so a reader that keeps up reads only what is new.
    /// Each event carries its `seq`, time, category and status, and of its
    /// texts those of `texts` (what alert rules match and group on); its
    /// ids, sizes, latencies, details and other texts are not decoded.
    /// The event passed to `each` is reused between calls.
    pub fn events_after(
        &self,
        tenant: &str,
        after_seq: u64,
        from_ms: Option<i64>,
        texts: &[TextField],
        mut each: impl FnMut(&Event) -> bool,
    ) -> Result<(), StoreError> {
        let after = after_seq.max(self.archived_through(tenant).0);
        let from_day = from_ms.map_or(i64::MIN, day_of);
        let mut blocks: Vec<(i64, BlockMeta, u64)> = Vec::new();
        for day_number in self.days().filter(|d| *d >= from_day).collect::<Vec<_>>() {
            let Some(day) = self.day(day_number)? else { continue };
            let Some(tenant_id) = day.id_of(tenant)? else { continue };
            // The block holding `after + 1` starts at or before it; the
            // rest start after it.
            let mut stmt = day.conn.prepare_cached(
                "SELECT * FROM (SELECT id, first_seq, max_ts, prev_hash, hash, rows FROM blocks
                     WHERE tenant = ?1 AND first_seq <= ?2 ORDER BY first_seq DESC LIMIT 1)
                 UNION ALL
                 SELECT id, first_seq, max_ts, prev_hash, hash, rows FROM blocks WHERE tenant = ?1 AND first_seq > ?2",
            )?;
            let mut rows = stmt.query(rusqlite::params![tenant_id, after.saturating_add(1).min(i64::MAX as u64) as i64])?;
            while let Some(r) = rows.next()? {
                let (meta, rows) = block_row(r)?;
                if meta.first_seq + rows.saturating_sub(1) > after && from_ms.is_none_or(|from| meta.max_ts >= from) {
                    blocks.push((day_number, meta, rows));
                }
            }
        }
        blocks.sort_by_key(|(_, meta, _)| meta.first_seq);
        let columns = Columns::of(&[col::TS, col::CATEGORY, col::STATUS]).with(Columns::text(texts));
        let mut event = Event::default();
        for (day_number, meta, _) in blocks {
            let day = self.day(day_number)?.ok_or_else(|| StoreError::Corrupt("day file vanished".into()))?;
            let block = self.decode(&day.block_data(meta.id)?, columns)?;
            day.dict.ensure(&day.conn, block.max_dict_id())?;
            // The dictionary's lock once a block, not once an event.
            let go_on = day.dict.with(|lookup| -> Result<bool, StoreError> {
                for row in 0..block.rows() {
                    let seq = meta.first_seq + row as u64;
                    if seq <= after {
                        continue;
                    }
                    block.fill_loaded(row, tenant, seq, lookup, &mut event)?;
                    if !each(&event) {
                        return Ok(false);
                    }
                }
                Ok(true)
            })?;
            if !go_on {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Every event of a tenant in chain order, each with its hash recomputed
    /// from its block's stored `prev_hash`.
    pub fn chain(&self, tenant: &str) -> Result<Vec<StoredEvent>, StoreError> {
        let mut out = Vec::new();
        for (day_number, meta, _) in self.tenant_blocks(tenant)? {
            let day = self.day(day_number)?.ok_or_else(|| StoreError::Corrupt("day file vanished".into()))?;
            let block = self.decode(&day.block_data(meta.id)?, Columns::ALL)?;
            day.dict.ensure(&day.conn, block.max_dict_id())?;
            let hashes = self.block_hashes(&day, &block, &meta, tenant)?;
            let mut previous = meta.prev_hash;
            for (row, hash) in hashes.into_iter().enumerate() {
                let mut stored = StoredEvent { hash: Some(hash), prev_hash: Some(previous), ..StoredEvent::default() };
                previous = hash;
                day.dict.with(|lookup| block.fill_event(row, tenant, meta.first_seq + row as u64, lookup, &mut stored.event))?;
                out.push(stored);
            }
        }
        Ok(out)
    }

    /// Walks a tenant's chain: sequence numbers must follow on without gaps,
    /// each block's `prev_hash` must be the previous block's `hash`, and
    /// rehashing a block's events from its `prev_hash` must give its `hash`.
    /// Reports the first block where that fails.
    ///
    /// The walk starts after the tenant's archived prefix (at `seq` 1 from
    /// the genesis hash when nothing is archived): the first hot block must
    /// link to the hash its last archive ends with.
    pub fn verify(&self, tenant: &str) -> Result<ChainReport, StoreError> {
        self.verify_from(tenant, None)
    }

    /// [`Self::verify`] from the first block (in chain order) with an event
    /// at or after `from_ms`: the blocks before it are not read, and its
    /// link to them is taken as stored (`started_at` says where).
    pub fn verify_from(&self, tenant: &str, from_ms: Option<i64>) -> Result<ChainReport, StoreError> {
        self.verify_from_with(tenant, from_ms, &mut |_, _| {})
    }

    /// [`Self::verify_from`], telling `progress` after each block how many
    /// events have been checked and how many the walk holds in all.
    pub fn verify_from_with(&self, tenant: &str, from_ms: Option<i64>, progress: &mut dyn FnMut(u64, u64)) -> Result<ChainReport, StoreError> {
        let (floor, mut previous) = self.archived_through(tenant);
        let mut report = ChainReport { started_at: None, events: 0, last_seq: floor, first_break: None, block_ends: Vec::new() };
        let mut blocks = self.tenant_blocks(tenant)?;
        if let Some(from) = from_ms {
            let start = blocks.iter().position(|(_, meta, _)| meta.max_ts >= from).unwrap_or(blocks.len());
            if start > 0 {
                // Trusted as stored: where the skipped blocks end.
                let (_, last, rows) = &blocks[start - 1];
                (report.last_seq, previous) = (last.first_seq + rows.saturating_sub(1), last.hash);
                report.started_at = Some(report.last_seq + 1);
                blocks.drain(..start);
            }
        }
        let total: u64 = blocks.iter().map(|(_, _, rows)| rows).sum();
        for (day_number, meta, rows) in blocks {
            let last_seq = meta.first_seq + rows.saturating_sub(1);
            let broken = |reason: String| ChainBreak { first_seq: meta.first_seq, last_seq, reason };
            if meta.first_seq != report.last_seq.saturating_add(1) {
                report.first_break = Some(broken(format!("expected seq {} next, found {}", report.last_seq.saturating_add(1), meta.first_seq)));
                return Ok(report);
            }
            if meta.prev_hash != previous {
                let reason = if report.events == 0 && floor > 0 {
                    format!("block does not link to the hash the archive of events up to seq {floor} ends with")
                } else {
                    "block does not link to the previous block's hash".to_string()
                };
                report.first_break = Some(broken(reason));
                return Ok(report);
            }
            let day = self.day(day_number)?.ok_or_else(|| StoreError::Corrupt("day file vanished".into()))?;
            let decoded = day.block_data(meta.id).and_then(|data| self.decode(&data, Columns::ALL)).and_then(|block| {
                day.dict.ensure(&day.conn, block.max_dict_id())?;
                if block.rows() as u64 != rows {
                    return Err(StoreError::Corrupt("row count differs from the block's record".into()));
                }
                self.block_hashes(&day, &block, &meta, tenant)
            });
            match decoded {
                Ok(hashes) if hashes.last() == Some(&meta.hash) => {}
                Ok(_) => {
                    report.first_break = Some(broken("events do not hash to the block's stored hash".into()));
                    return Ok(report);
                }
                Err(error) => {
                    report.first_break = Some(broken(format!("block cannot be read: {error}")));
                    return Ok(report);
                }
            }
            previous = meta.hash;
            report.events += rows;
            report.last_seq = last_seq;
            report.block_ends.push((last_seq, meta.hash));
            progress(report.events, total);
        }
        Ok(report)
    }
}
