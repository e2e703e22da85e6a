//! The block: how consecutive events of one tenant are laid out on disk.
//!
//! A block holds up to [`MAX_BLOCK_ROWS`] events of one tenant with
//! consecutive sequence numbers, stored column by column: each field of
//! every event in the block sits next to the same field of its neighbours,
//! as varints or dictionary ids, and each column is compressed with zstd on
//! its own when that makes it smaller. Columns compress far better than rows
//! (status codes, methods and tenants repeat; timestamps climb slowly), and a
//! reader decodes only the columns a query needs.
//!
//! Layout of a block's bytes (version 2):
//!
//! ```text
//! u8 version | varint rows | varint columns
//! per column: u8 codec | varint raw length | varint stored length
//! the columns' stored bytes, in column order
//! the shared frame, if any column is in it
//! ```
//!
//! Codecs: 0 raw, 1 a zstd frame of its own, 2 part of the block's shared
//! zstd frame (stored length 0), which holds the raw bytes of every codec-2
//! column one after the other. The writer puts all columns in the shared
//! frame; readers decompress it once per block.
//!
//! Column encodings (`varint` is LEB128; `v+1` leaves 0 for "absent"):
//! - `TS`: zigzag varint of the difference to the previous row (the first
//!   row's to 0);
//! - `CATEGORY`: one byte per row (0 request, 1 security, 2 admin, 3 app);
//! - `EVENT_ID`: a kind byte per row: 0 = derived from tenant, seq and time
//!   (nothing stored), 1 = a UUID (16 bytes follow), 2 = other text (varint
//!   length and bytes follow);
//! - `REQUEST_ID`: a kind byte: 0 absent, 1 = a UUIDv7 carrying the row's own
//!   timestamp (its last 10 bytes follow), 2 = another UUID (16 bytes),
//!   3 = other text (varint length and bytes);
//! - `STATUS`, `LATENCY`, sizes: varint `v+1`; `UPSTREAM_LATENCY`: varint
//!   `zigzag(latency - upstream) + 1`, so it costs a byte when the two are close;
//! - `DETAILS`: varint `length+1` and the JSON text;
//! - text columns ([`TextField`]): a varint code per row — 0 absent,
//!   1 inline (the text is stored in this block), `id + 1` for dictionary id
//!   `id >= 1` — followed by the inline texts of the column, each as varint
//!   length and bytes, in row order;
//! - `PERSONAL`: a byte per row, 0 when the personal values are in the text
//!   columns (or there are none), 1 when they were erased, followed by the
//!   32-byte commitment that stands for them in the chain hash.
//!
//! Version 1 (before personal values were hashed through commitments) had
//! no `PERSONAL` column and hashed differently; it is not read.
//!
//! This module does no IO and knows nothing of SQLite; the dictionary ids it
//! stores are resolved by the caller.

use crate::store::varint::push_varint;
use crate::event::{derived_event_id_bytes, derived_event_id_in, Category, Event, Text};

/// Most events in one block.
pub const MAX_BLOCK_ROWS: usize = 2048;
/// Widest time span of one block. Blocks are found by time, so a bounded
/// span bounds how far back a time-range query must look.
pub const MAX_BLOCK_SPAN_MS: i64 = 10 * 60 * 1000;

const FORMAT_VERSION: u8 = 2;
/// Columns shorter than this are stored raw; zstd's frame would not pay off.
const MIN_COMPRESS: usize = 64;
const ZSTD_LEVEL: i32 = 1;

/// The text fields of an event, each stored as a dictionary column. The
/// order is part of the on-disk format: append only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TextField {
    EventType,
    Outcome,
    Actor,
    Target,
    Consumer,
    ConsumerName,
    Api,
    KeyId,
    KeyHint,
    Method,
    Path,
    ClientIp,
    UserAgent,
    Country,
    ErrorCode,
    ErrorMessage,
}

pub const TEXT_FIELDS: [TextField; 16] = [
    TextField::EventType,
    TextField::Outcome,
    TextField::Actor,
    TextField::Target,
    TextField::Consumer,
    TextField::ConsumerName,
    TextField::Api,
    TextField::KeyId,
    TextField::KeyHint,
    TextField::Method,
    TextField::Path,
    TextField::ClientIp,
    TextField::UserAgent,
    TextField::Country,
    TextField::ErrorCode,
    TextField::ErrorMessage,
];

impl TextField {
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether every value is put in the dictionary. Fields that identify
    /// things (tenants' consumers, apis, keys, paths, codes) are few and are
    /// what queries filter and group by; the rest (client IPs, user agents,
    /// free text) may be unique per call and enter the dictionary only when
    /// they are seen a second time, so one-off values do not bloat it.
    pub fn always_interned(self) -> bool {
        !matches!(
            self,
            TextField::Actor | TextField::Target | TextField::ClientIp | TextField::UserAgent | TextField::ErrorMessage
        )
    }

    pub fn get(self, e: &Event) -> Option<&str> {
        match self {
            TextField::EventType => Some(&e.event_type),
            TextField::Outcome => Some(&e.outcome),
            TextField::Actor => e.actor.as_deref(),
            TextField::Target => e.target.as_deref(),
            TextField::Consumer => e.consumer_id.as_deref(),
            TextField::ConsumerName => e.consumer_name.as_deref(),
            TextField::Api => e.api_id.as_deref(),
            TextField::KeyId => e.key_id.as_deref(),
            TextField::KeyHint => e.key_hint.as_deref(),
            TextField::Method => e.method.as_deref(),
            TextField::Path => e.path.as_deref(),
            TextField::ClientIp => e.client_ip.as_deref(),
            TextField::UserAgent => e.user_agent.as_deref(),
            TextField::Country => e.country.as_deref(),
            TextField::ErrorCode => e.error_code.as_deref(),
            TextField::ErrorMessage => e.error_message.as_deref(),
        }
    }

    fn set(self, e: &mut Event, value: Option<&str>) {
        let text = match self {
            TextField::EventType => return e.event_type.set_text(value.unwrap_or("")),
            TextField::Outcome => return e.outcome.set_text(value.unwrap_or("")),
            TextField::Target => return set_opt_text(&mut e.target, value),
            TextField::Path => return set_opt_text(&mut e.path, value),
            TextField::UserAgent => return set_opt_text(&mut e.user_agent, value),
            TextField::ErrorMessage => return set_opt_text(&mut e.error_message, value),
            TextField::Actor => &mut e.actor,
            TextField::Consumer => &mut e.consumer_id,
            TextField::ConsumerName => &mut e.consumer_name,
            TextField::Api => &mut e.api_id,
            TextField::KeyId => &mut e.key_id,
            TextField::KeyHint => &mut e.key_hint,
            TextField::Method => &mut e.method,
            TextField::ClientIp => &mut e.client_ip,
            TextField::Country => &mut e.country,
            TextField::ErrorCode => &mut e.error_code,
        };
        set_opt_text(text, value);
    }
}

/// Column numbers. Part of the on-disk format: append only.
pub mod col {
    pub const TS: usize = 0;
    pub const CATEGORY: usize = 1;
    pub const EVENT_ID: usize = 2;
    pub const REQUEST_ID: usize = 3;
    pub const STATUS: usize = 4;
    pub const LATENCY: usize = 5;
    pub const UPSTREAM_LATENCY: usize = 6;
    pub const REQUEST_SIZE: usize = 7;
    pub const RESPONSE_SIZE: usize = 8;
    pub const DETAILS: usize = 9;
    /// The first text column; text field `f` is column `TEXT + f.index()`.
    pub const TEXT: usize = 10;
    /// Erased rows' commitments (see the module's layout).
    pub const PERSONAL: usize = TEXT + 16;
    pub const COUNT: usize = PERSONAL + 1;
}

/// A set of columns, one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Columns(u32);

impl Columns {
    pub const ALL: Columns = Columns((1 << col::COUNT) - 1);

    pub fn of(columns: &[usize]) -> Columns {
        Columns(columns.iter().fold(0, |acc, c| acc | (1 << c)))
    }

    pub fn text(fields: &[TextField]) -> Columns {
        Columns(fields.iter().fold(0, |acc, f| acc | (1 << (col::TEXT + f.index()))))
    }

    pub fn with(self, other: Columns) -> Columns {
        Columns(self.0 | other.0)
    }

    pub fn has(self, column: usize) -> bool {
        self.0 & (1 << column) != 0
    }
}

/// Category codes as stored; fixed, never renumber.
pub fn category_code(category: Category) -> u8 {
    match category {
        Category::Request => 0,
        Category::Security => 1,
        Category::Admin => 2,
        Category::App => 3,
    }
}

pub fn category_from_code(code: u8) -> Option<Category> {
    match code {
        0 => Some(Category::Request),
        1 => Some(Category::Security),
        2 => Some(Category::Admin),
        3 => Some(Category::App),
        _ => None,
    }
}

/// How the caller resolved one text value for the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextRef<'a> {
    Absent,
    /// A dictionary id, `>= 1`.
    Dict(u32),
    /// Stored in the block itself.
    Inline(&'a str),
}

#[derive(Debug, thiserror::Error)]
#[error("corrupt audit block: {0}")]
pub struct BlockError(pub &'static str);

// ---------- varints ----------

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// A cursor over encoded bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    fn varint(&mut self) -> Result<u64, BlockError> {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let byte = *self.bytes.get(self.at).ok_or(BlockError("truncated varint"))?;
            self.at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
            shift += 7;
            if shift > 63 {
                return Err(BlockError("varint too long"));
            }
        }
    }

    fn byte(&mut self) -> Result<u8, BlockError> {
        let b = *self.bytes.get(self.at).ok_or(BlockError("truncated column"))?;
        self.at += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], BlockError> {
        let end = self.at.checked_add(n).filter(|end| *end <= self.bytes.len()).ok_or(BlockError("truncated bytes"))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn text(&mut self) -> Result<&'a str, BlockError> {
        let n = self.varint()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| BlockError("text is not UTF-8"))
    }
}

fn push_opt(out: &mut Vec<u8>, v: Option<u64>) {
    push_varint(out, v.map_or(0, |v| v.saturating_add(1)));
}

fn push_text(out: &mut Vec<u8>, s: &str) {
    push_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// The parts of a UUID's text when it is the canonical lowercase hyphenated
/// form (any other spelling is `None`: stored as text, it reads back as
/// written).
fn uuid_bytes(text: &str) -> Option<[u8; 16]> {
    /// Each byte's value as a lowercase hex digit, or 16.
    const DIGIT: [u8; 256] = {
        let mut table = [16u8; 256];
        let mut c = 0;
        while c < 10 {
            table[b'0' as usize + c] = c as u8;
            c += 1;
        }
        let mut c = 0;
        while c < 6 {
            table[b'a' as usize + c] = 10 + c as u8;
            c += 1;
        }
        table
    };
    /// Where each byte's two digits start in the hyphenated text.
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    let t: &[u8; 36] = text.as_bytes().try_into().ok()?;
    if t[8] != b'-' || t[13] != b'-' || t[18] != b'-' || t[23] != b'-' {
        return None;
    }
    let mut out = [0u8; 16];
    let mut bad = 0u8;
    for (byte, &at) in out.iter_mut().zip(&AT) {
        let (hi, lo) = (DIGIT[t[at] as usize], DIGIT[t[at + 1] as usize]);
        bad |= hi | lo;
        *byte = (hi << 4) | (lo & 15);
    }
    // A 16 in any digit sets bit 4.
    (bad & 16 == 0).then_some(out)
}

/// The last 10 bytes of `text` when it is a UUIDv7 in the canonical form
/// carrying `timestamp_ms` (as the gateway makes request ids): all that
/// must be stored of it.
pub(super) fn own_time_uuid_tail(text: &str, timestamp_ms: i64) -> Option<[u8; 10]> {
    let bytes = uuid_bytes(text)?;
    own_time_tail(&bytes, timestamp_ms)
}

fn own_time_tail(bytes: &[u8; 16], timestamp_ms: i64) -> Option<[u8; 10]> {
    let own = bytes[6] >> 4 == 7 && bytes[..6] == (timestamp_ms.max(0) as u64).to_be_bytes()[2..];
    own.then(|| bytes[6..].try_into().expect("ten bytes"))
}

/// The UUID [`own_time_uuid_tail`] took `tail` from, as text in `buf`.
pub(super) fn own_time_uuid<'b>(timestamp_ms: i64, tail: &[u8; 10], buf: &'b mut [u8; 36]) -> &'b str {
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&(timestamp_ms.max(0) as u64).to_be_bytes()[2..]);
    bytes[6..].copy_from_slice(tail);
    uuid::Uuid::from_bytes(bytes).hyphenated().encode_lower(buf)
}

// ---------- encoding ----------

/// Builds one block from events pushed in sequence order.
pub struct BlockEncoder {
    columns: Vec<Vec<u8>>,
    inline: Vec<Vec<u8>>,
    rows: usize,
    previous_ts: i64,
    pub min_ts: i64,
    pub max_ts: i64,
    /// One bit per category present (`1 << category_code`).
    pub categories: u8,
}

impl Default for BlockEncoder {
    fn default() -> Self {
        BlockEncoder {
            columns: vec![Vec::new(); col::COUNT],
            inline: vec![Vec::new(); TEXT_FIELDS.len()],
            rows: 0,
            previous_ts: 0,
            min_ts: i64::MAX,
            max_ts: i64::MIN,
            categories: 0,
        }
    }
}

impl BlockEncoder {
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Whether an event at `timestamp_ms` still fits in this block.
    pub fn fits(&self, timestamp_ms: i64) -> bool {
        self.rows < MAX_BLOCK_ROWS
            && (self.rows == 0
                || (timestamp_ms.max(self.max_ts) - timestamp_ms.min(self.min_ts)) <= MAX_BLOCK_SPAN_MS)
    }

    /// Adds an event. `texts` are its text fields in [`TEXT_FIELDS`] order,
    /// resolved by the caller; `tenant_id` is the block's tenant. `derived_id`
    /// says the event's id is the one [`derived_event_id_bytes`] gives it
    /// (the writer knows, having made it); otherwise its `event_id` is read.
    pub fn push(&mut self, e: &Event, derived_id: bool, tenant_id: &str, texts: &[TextRef<'_>; 16]) {
        let c = &mut self.columns;
        push_varint(&mut c[col::TS], zigzag(e.timestamp_ms.wrapping_sub(self.previous_ts)));
        self.previous_ts = e.timestamp_ms;
        self.min_ts = self.min_ts.min(e.timestamp_ms);
        self.max_ts = self.max_ts.max(e.timestamp_ms);
        let category = category_code(e.category());
        self.categories |= 1 << category;
        c[col::CATEGORY].push(category);

        let ids = &mut c[col::EVENT_ID];
        if derived_id {
            ids.push(0);
        } else {
            match uuid_bytes(&e.event_id) {
                Some(bytes) if bytes == derived_event_id_bytes(tenant_id, e.seq, e.timestamp_ms) => ids.push(0),
                Some(bytes) => {
                    ids.push(1);
                    ids.extend_from_slice(&bytes);
                }
                None => {
                    ids.push(2);
                    push_text(ids, &e.event_id);
                }
            }
        }

        let requests = &mut c[col::REQUEST_ID];
        match e.request_id.as_deref() {
            None => requests.push(0),
            Some(text) => match uuid_bytes(text) {
                Some(bytes) if let Some(tail) = own_time_tail(&bytes, e.timestamp_ms) => {
                    requests.push(1);
                    requests.extend_from_slice(&tail);
                }
                Some(bytes) => {
                    requests.push(2);
                    requests.extend_from_slice(&bytes);
                }
                None => {
                    requests.push(3);
                    push_text(requests, text);
                }
            },
        }

        push_opt(&mut c[col::STATUS], e.status_code.map(u64::from));
        push_opt(&mut c[col::LATENCY], e.latency_us);
        match e.upstream_latency_us {
            None => c[col::UPSTREAM_LATENCY].push(0),
            Some(up) => {
                let base = e.latency_us.unwrap_or(0) as i64;
                push_varint(&mut c[col::UPSTREAM_LATENCY], zigzag(base.wrapping_sub(up as i64)).saturating_add(1));
            }
        }
        push_opt(&mut c[col::REQUEST_SIZE], e.request_size_bytes);
        push_opt(&mut c[col::RESPONSE_SIZE], e.response_size_bytes);
        match &e.details {
            None => c[col::DETAILS].push(0),
            Some(details) => {
                let text = details.to_string();
                push_varint(&mut c[col::DETAILS], text.len() as u64 + 1);
                c[col::DETAILS].extend_from_slice(text.as_bytes());
            }
        }
        match &e.personal_commitment {
            None => c[col::PERSONAL].push(0),
            Some(commitment) => {
                c[col::PERSONAL].push(1);
                c[col::PERSONAL].extend_from_slice(commitment);
            }
        }
        for (i, text) in texts.iter().enumerate() {
            let column = &mut c[col::TEXT + i];
            match text {
                TextRef::Absent => column.push(0),
                TextRef::Inline(s) => {
                    column.push(1);
                    push_text(&mut self.inline[i], s);
                }
                TextRef::Dict(id) => push_varint(column, u64::from(*id) + 1),
            }
        }
        self.rows += 1;
    }

    /// Writes the finished block into `out` (cleared first) and resets the
    /// encoder for the next block.
    pub fn finish(&mut self, compressor: &mut zstd::bulk::Compressor<'static>, out: &mut Vec<u8>) -> std::io::Result<()> {
        for (i, inline) in self.inline.iter_mut().enumerate() {
            self.columns[col::TEXT + i].append(inline);
        }
        out.clear();
        out.push(FORMAT_VERSION);
        push_varint(out, self.rows as u64);
        push_varint(out, col::COUNT as u64);
        // All columns in one zstd frame: one entropy table set per block
        // instead of one per column, which costs most of zstd's time on
        // columns this small. Stored raw when that is not smaller.
        let raw: usize = self.columns.iter().map(Vec::len).sum();
        let mut joined = Vec::with_capacity(raw);
        for column in &self.columns {
            joined.extend_from_slice(column);
        }
        let mut compressed = Vec::with_capacity(zstd::zstd_safe::compress_bound(raw));
        compressor.compress_to_buffer(&joined, &mut compressed)?;
        let shared = raw >= MIN_COMPRESS && compressed.len() < raw;
        for column in &self.columns {
            out.push(if shared { 2 } else { 0 });
            push_varint(out, column.len() as u64);
            push_varint(out, if shared { 0 } else { column.len() } as u64);
        }
        out.extend_from_slice(if shared { &compressed } else { &joined });
        *self = BlockEncoder { columns: std::mem::take(&mut self.columns), inline: std::mem::take(&mut self.inline), ..Default::default() };
        for column in &mut self.columns {
            column.clear();
        }
        Ok(())
    }
}

pub fn new_compressor() -> std::io::Result<zstd::bulk::Compressor<'static>> {
    zstd::bulk::Compressor::new(ZSTD_LEVEL)
}

// ---------- decoding ----------

/// A text column after decoding: per row 0 (absent), a dictionary id
/// (`< INLINE`), or `INLINE | n` for the n-th inline text of the column.
#[derive(Debug, Default, Clone)]
pub struct TextColumn {
    pub codes: Vec<u32>,
    pub inline: Vec<Box<str>>,
}

pub const INLINE: u32 = 1 << 31;

impl TextColumn {
    /// The dictionary id of row `row`, if it has one.
    pub fn dict_id(&self, row: usize) -> Option<u32> {
        let code = self.codes[row];
        (code != 0 && code & INLINE == 0).then_some(code)
    }

    pub fn inline_text(&self, row: usize) -> Option<&str> {
        let code = self.codes[row];
        (code & INLINE != 0).then(|| &*self.inline[(code & !INLINE) as usize])
    }

    /// The largest dictionary id the column refers to (0 if none).
    pub fn max_dict_id(&self) -> u32 {
        self.codes.iter().filter(|c| **c & INLINE == 0).max().copied().unwrap_or(0)
    }
}

/// Kind of a stored id (event or request id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdKind {
    Derived,
    Absent,
    Uuid([u8; 16]),
    /// A UUID whose first six bytes are the row's timestamp; the other ten.
    OwnTimeUuid([u8; 10]),
    /// Index into `DecodedBlock::id_texts`.
    Text(u32),
}

/// A request id to look for, parsed once the way the writer stores it: the
/// canonical text of a UUID (lowercase, hyphenated) as its 16 bytes, any
/// other text as it is. A row matches when its stored id is the same, so
/// matching formats no row's id as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestIdKey {
    Uuid {
        bytes: [u8; 16],
        /// The first 48 bits: a UUIDv7's millisecond timestamp. A row that
        /// stores only the last ten bytes (an id stamped with the row's own
        /// time) can match only if its timestamp has these bits.
        time_bits: u64,
    },
    Text(Box<str>),
}

impl RequestIdKey {
    pub fn new(text: &str) -> RequestIdKey {
        match uuid_bytes(text) {
            Some(bytes) => {
                let mut time = [0u8; 8];
                time[2..].copy_from_slice(&bytes[..6]);
                RequestIdKey::Uuid { bytes, time_bits: u64::from_be_bytes(time) }
            }
            None => RequestIdKey::Text(text.into()),
        }
    }
}

/// A block decoded column by column, on demand.
pub struct DecodedBlock {
    rows: usize,
    loaded: Columns,
    pub ts: Vec<i64>,
    pub category: Vec<u8>,
    event_ids: Vec<IdKind>,
    request_ids: Vec<IdKind>,
    id_texts: Vec<Box<str>>,
    /// 0 when absent.
    pub status: Vec<u16>,
    pub latency_us: Vec<Option<u64>>,
    upstream_latency_us: Vec<Option<u64>>,
    request_size: Vec<Option<u64>>,
    response_size: Vec<Option<u64>>,
    details: Vec<Option<Box<str>>>,
    pub texts: Vec<TextColumn>,
    /// Per row, the commitment of erased personal values.
    pub personal: Vec<Option<[u8; 32]>>,
    /// Offsets of each column's stored bytes within the block, and codecs.
    layout: Vec<(u8, usize, usize, usize)>,
    /// Where the shared frame starts and its decompressed length.
    shared: Option<(usize, usize)>,
    /// The shared frame, once decompressed.
    shared_bytes: Vec<u8>,
}

/// The most bytes a column of a block decodes to: above what the writer
/// makes (at most [`MAX_BLOCK_ROWS`] events; an admin change's intent holds
/// the request body as asked, up to 4 MiB, written again as JSON — a number
/// such as `1e15` comes out at up to 4.5 times its length — and its outcome
/// an object's fields before and after), far below what would exhaust
/// memory.
const MAX_COLUMN_BYTES: usize = 512 << 20;
const MAX_COLUMN_BYTES_PER_ROW: usize = 32 << 20;

/// `raw`, the length a compressed column's header claims, once the zstd
/// frame agrees (when it states its content size, as the writer's do).
fn framed_length(frame: &[u8], raw: usize) -> Result<usize, BlockError> {
    match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(n)) if n != raw as u64 => Err(BlockError("column length mismatch")),
        Ok(_) => Ok(raw),
        Err(_) => Err(BlockError("bad zstd frame")),
    }
}

impl DecodedBlock {
    /// Reads the block's header; no column is decoded yet.
    pub fn parse(data: &[u8]) -> Result<DecodedBlock, BlockError> {
        let mut r = Reader::new(data);
        if r.byte()? != FORMAT_VERSION {
            return Err(BlockError("unknown block version"));
        }
        let rows = r.varint()? as usize;
        let columns = r.varint()? as usize;
        if !(col::COUNT..=col::COUNT + 64).contains(&columns) || rows > 1 << 24 {
            return Err(BlockError("bad block header"));
        }
        // What a column may decode to is bounded before anything is
        // allocated for it: a damaged header must not make a reader ask
        // for terabytes (an allocation failure aborts the process).
        let most = MAX_COLUMN_BYTES.min((rows + 1).saturating_mul(MAX_COLUMN_BYTES_PER_ROW));
        let mut heads = Vec::with_capacity(columns);
        for _ in 0..columns {
            let codec = r.byte()?;
            let raw = r.varint()? as usize;
            let stored = r.varint()? as usize;
            if raw > most {
                return Err(BlockError("bad column length"));
            }
            heads.push((codec, raw, stored));
        }
        let mut at = r.at;
        let mut shared_raw = 0usize;
        let mut layout = Vec::with_capacity(columns);
        for (codec, raw, stored) in heads {
            if codec == 2 {
                layout.push((codec, raw, shared_raw, 0));
                shared_raw = shared_raw.checked_add(raw).ok_or(BlockError("bad column length"))?;
                continue;
            }
            layout.push((codec, raw, at, stored));
            at = at.checked_add(stored).ok_or(BlockError("bad column length"))?;
        }
        if at > data.len() || (shared_raw == 0 && at != data.len()) || shared_raw > most {
            return Err(BlockError("column lengths do not add up"));
        }
        let shared = (shared_raw > 0).then_some((at, shared_raw));
        Ok(DecodedBlock {
            rows,
            loaded: Columns::default(),
            ts: Vec::new(),
            category: Vec::new(),
            event_ids: Vec::new(),
            request_ids: Vec::new(),
            id_texts: Vec::new(),
            status: Vec::new(),
            latency_us: Vec::new(),
            upstream_latency_us: Vec::new(),
            request_size: Vec::new(),
            response_size: Vec::new(),
            details: Vec::new(),
            texts: vec![TextColumn::default(); TEXT_FIELDS.len()],
            personal: Vec::new(),
            layout,
            shared,
            shared_bytes: Vec::new(),
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Decodes the given columns (those not decoded yet).
    pub fn load(&mut self, data: &[u8], columns: Columns, decompressor: &mut zstd::bulk::Decompressor<'static>) -> Result<(), BlockError> {
        // Upstream latency is stored relative to latency.
        let columns = if columns.has(col::UPSTREAM_LATENCY) { columns.with(Columns::of(&[col::LATENCY])) } else { columns };
        let mut scratch = Vec::new();
        for c in 0..col::COUNT {
            if !columns.has(c) || self.loaded.has(c) {
                continue;
            }
            let (codec, raw, start, stored) = self.layout[c];
            if codec == 2 && self.shared_bytes.is_empty() {
                let (frame_start, shared_raw) = self.shared.ok_or(BlockError("no shared frame"))?;
                let frame = data.get(frame_start..).ok_or(BlockError("no shared frame"))?;
                let mut bytes = Vec::with_capacity(framed_length(frame, shared_raw)?);
                let n = decompressor.decompress_to_buffer(frame, &mut bytes).map_err(|_| BlockError("bad zstd frame"))?;
                if n != shared_raw {
                    return Err(BlockError("shared frame length mismatch"));
                }
                self.shared_bytes = bytes;
            }
            let shared = std::mem::take(&mut self.shared_bytes);
            let bytes: &[u8] = match codec {
                0 => data.get(start..start + stored).ok_or(BlockError("column out of bounds"))?,
                1 => {
                    let stored_bytes = data.get(start..start + stored).ok_or(BlockError("column out of bounds"))?;
                    scratch.clear();
                    scratch.reserve(framed_length(stored_bytes, raw)?);
                    let n = decompressor.decompress_to_buffer(stored_bytes, &mut scratch).map_err(|_| BlockError("bad zstd column"))?;
                    if n != raw {
                        return Err(BlockError("column length mismatch"));
                    }
                    &scratch
                }
                2 => shared.get(start..start + raw).ok_or(BlockError("column out of bounds"))?,
                _ => return Err(BlockError("unknown column codec")),
            };
            let result = self.decode_column(c, bytes);
            self.shared_bytes = shared;
            result?;
            self.loaded = self.loaded.with(Columns::of(&[c]));
        }
        Ok(())
    }

    fn decode_column(&mut self, c: usize, bytes: &[u8]) -> Result<(), BlockError> {
        let n = self.rows;
        let mut r = Reader::new(bytes);
        let opt = |r: &mut Reader<'_>| -> Result<Option<u64>, BlockError> { Ok(r.varint()?.checked_sub(1)) };
        match c {
            col::TS => {
                self.ts.clear();
                let mut ts = 0i64;
                for _ in 0..n {
                    ts = ts.wrapping_add(unzigzag(r.varint()?));
                    self.ts.push(ts);
                }
            }
            col::CATEGORY => self.category = r.take(n)?.to_vec(),
            col::EVENT_ID | col::REQUEST_ID => {
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    let kind = r.byte()?;
                    out.push(match (c, kind) {
                        (col::EVENT_ID, 0) => IdKind::Derived,
                        (col::EVENT_ID, 1) | (col::REQUEST_ID, 2) => IdKind::Uuid(r.take(16)?.try_into().unwrap_or([0; 16])),
                        (col::EVENT_ID, 2) | (col::REQUEST_ID, 3) => {
                            self.id_texts.push(r.text()?.into());
                            IdKind::Text(self.id_texts.len() as u32 - 1)
                        }
                        (col::REQUEST_ID, 0) => IdKind::Absent,
                        (col::REQUEST_ID, 1) => IdKind::OwnTimeUuid(r.take(10)?.try_into().unwrap_or([0; 10])),
                        _ => return Err(BlockError("unknown id kind")),
                    });
                }
                if c == col::EVENT_ID {
                    self.event_ids = out;
                } else {
                    self.request_ids = out;
                }
            }
            col::STATUS => {
                self.status.clear();
                for _ in 0..n {
                    self.status.push(opt(&mut r)?.map_or(0, |s| s as u16));
                }
            }
            col::LATENCY | col::REQUEST_SIZE | col::RESPONSE_SIZE => {
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    out.push(opt(&mut r)?);
                }
                match c {
                    col::LATENCY => self.latency_us = out,
                    col::REQUEST_SIZE => self.request_size = out,
                    _ => self.response_size = out,
                }
            }
            col::UPSTREAM_LATENCY => {
                let mut out = Vec::with_capacity(n);
                for i in 0..n {
                    out.push(match opt(&mut r)? {
                        None => None,
                        Some(z) => {
                            let base = self.latency_us.get(i).copied().flatten().unwrap_or(0) as i64;
                            Some(base.wrapping_sub(unzigzag(z)) as u64)
                        }
                    });
                }
                self.upstream_latency_us = out;
            }
            col::DETAILS => {
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    out.push(match opt(&mut r)? {
                        None => None,
                        Some(len) => Some(
                            std::str::from_utf8(r.take(len as usize)?).map_err(|_| BlockError("details are not UTF-8"))?.into(),
                        ),
                    });
                }
                self.details = out;
            }
            col::PERSONAL => {
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    out.push(match r.byte()? {
                        0 => None,
                        1 => Some(r.take(32)?.try_into().unwrap_or([0; 32])),
                        _ => return Err(BlockError("unknown personal kind")),
                    });
                }
                self.personal = out;
            }
            _ if (col::TEXT..col::PERSONAL).contains(&c) => {
                let column = &mut self.texts[c - col::TEXT];
                column.codes.clear();
                column.inline.clear();
                let mut inline_count = 0u32;
                for _ in 0..n {
                    let code = r.varint()?;
                    column.codes.push(match code {
                        0 => 0,
                        1 => {
                            inline_count += 1;
                            INLINE | (inline_count - 1)
                        }
                        id => u32::try_from(id - 1).ok().filter(|id| *id < INLINE).ok_or(BlockError("dictionary id too large"))?,
                    });
                }
                for _ in 0..inline_count {
                    column.inline.push(r.text()?.into());
                }
            }
            _ => {}
        }
        if r.at != bytes.len() {
            return Err(BlockError("column has trailing bytes"));
        }
        Ok(())
    }

    /// The largest dictionary id any decoded text column refers to.
    pub fn max_dict_id(&self) -> u32 {
        self.texts.iter().map(TextColumn::max_dict_id).max().unwrap_or(0)
    }

    /// Row `row`'s event id as text (derived ones rebuilt), written into
    /// `buf` when it has to be formatted.
    fn event_id_at<'s>(&'s self, row: usize, tenant_id: &str, seq: u64, buf: &'s mut [u8; 36]) -> &'s str {
        match self.event_ids[row] {
            IdKind::Derived => derived_event_id_in(tenant_id, seq, self.ts[row], buf),
            IdKind::Uuid(bytes) => uuid::Uuid::from_bytes(bytes).hyphenated().encode_lower(buf),
            IdKind::Text(i) => &self.id_texts[i as usize],
            IdKind::Absent | IdKind::OwnTimeUuid(_) => "",
        }
    }

    /// Row `row`'s request id as text (one stamped with the row's own time
    /// rebuilt from its random tail), written into `buf` when formatted.
    fn request_id_at<'s>(&'s self, row: usize, buf: &'s mut [u8; 36]) -> Option<&'s str> {
        match self.request_ids[row] {
            IdKind::Absent | IdKind::Derived => None,
            IdKind::Uuid(bytes) => Some(uuid::Uuid::from_bytes(bytes).hyphenated().encode_lower(buf)),
            IdKind::OwnTimeUuid(tail) => Some(own_time_uuid(self.ts[row], &tail, buf)),
            IdKind::Text(i) => Some(&self.id_texts[i as usize]),
        }
    }

    /// Whether row `row`'s request id is `key`, compared as stored. Needs the
    /// `TS` and `REQUEST_ID` columns loaded.
    pub fn request_id_is(&self, row: usize, key: &RequestIdKey) -> bool {
        match (&self.request_ids[row], key) {
            (IdKind::OwnTimeUuid(tail), RequestIdKey::Uuid { bytes, time_bits }) => {
                // The timestamp first: it rules out nearly every row.
                (self.ts[row].max(0) as u64) & 0xffff_ffff_ffff == *time_bits && tail[..] == bytes[6..]
            }
            (IdKind::Uuid(stored), RequestIdKey::Uuid { bytes, .. }) => stored == bytes,
            (IdKind::Text(i), RequestIdKey::Text(text)) => self.id_texts[*i as usize] == *text,
            _ => false,
        }
    }

    /// Writes row `row` into `event`, reusing its buffers. Needs every column
    /// loaded; `lookup` resolves dictionary ids.
    pub fn fill_event<'d>(
        &self,
        row: usize,
        tenant_id: &str,
        seq: u64,
        lookup: &dyn Fn(u32) -> Option<&'d str>,
        event: &mut Event,
    ) -> Result<(), BlockError> {
        debug_assert_eq!(self.loaded, Columns::ALL);
        self.fill_loaded(row, tenant_id, seq, lookup, event)
    }

    /// [`Self::fill_event`] from the columns loaded: the fields of the
    /// others are left empty (`None`, the empty text). `TS` and
    /// `CATEGORY` must be loaded.
    pub fn fill_loaded<'d>(
        &self,
        row: usize,
        tenant_id: &str,
        seq: u64,
        lookup: &dyn Fn(u32) -> Option<&'d str>,
        event: &mut Event,
    ) -> Result<(), BlockError> {
        let has = |c: usize| self.loaded.has(c);
        event.seq = seq;
        event.timestamp_ms = self.ts[row];
        event.tenant_id.set_text(tenant_id);
        event.category = category_from_code(self.category[row]);
        let mut buf = [0u8; 36];
        event.event_id.set_text(if has(col::EVENT_ID) { self.event_id_at(row, tenant_id, seq, &mut buf) } else { "" });
        set_opt_text(&mut event.request_id, if has(col::REQUEST_ID) { self.request_id_at(row, &mut buf) } else { None });
        event.status_code = (has(col::STATUS) && self.status[row] != 0).then(|| self.status[row]);
        event.latency_us = if has(col::LATENCY) { self.latency_us[row] } else { None };
        event.upstream_latency_us = if has(col::UPSTREAM_LATENCY) { self.upstream_latency_us[row] } else { None };
        event.request_size_bytes = if has(col::REQUEST_SIZE) { self.request_size[row] } else { None };
        event.response_size_bytes = if has(col::RESPONSE_SIZE) { self.response_size[row] } else { None };
        event.details = match self.details.get(row).filter(|_| has(col::DETAILS)) {
            None | Some(None) => None,
            Some(Some(text)) => Some(serde_json::from_str(text).map_err(|_| BlockError("details are not JSON"))?),
        };
        for field in TEXT_FIELDS {
            let value = if has(col::TEXT + field.index()) {
                let column = &self.texts[field.index()];
                match column.codes[row] {
                    0 => None,
                    code if code & INLINE != 0 => column.inline_text(row),
                    id => Some(lookup(id).ok_or(BlockError("dictionary id not found"))?),
                }
            } else {
                None
            };
            field.set(event, value);
        }
        event.personal_commitment = if has(col::PERSONAL) { self.personal[row] } else { None };
        Ok(())
    }
}

impl DecodedBlock {
    /// The chain hash of row `row` given its predecessor's, computed from
    /// the columns without making an [`Event`]. Needs every column loaded.
    /// `salt` gives the personal salt of a consumer of the block's tenant
    /// (`None` for events without one).
    pub fn chain_hash<'d>(
        &self,
        row: usize,
        tenant_id: &str,
        seq: u64,
        lookup: &dyn Fn(u32) -> Option<&'d str>,
        salt: &dyn Fn(Option<&str>) -> Option<[u8; 32]>,
        previous: &[u8; 32],
    ) -> Result<[u8; 32], BlockError> {
        let ts = self.ts[row];
        let (mut event_id_buf, mut request_id_buf) = ([0u8; 36], [0u8; 36]);
        let event_id = self.event_id_at(row, tenant_id, seq, &mut event_id_buf);
        let request_id = self.request_id_at(row, &mut request_id_buf);
        let mut texts: [Option<&str>; 16] = [None; 16];
        for field in TEXT_FIELDS {
            let column = &self.texts[field.index()];
            texts[field.index()] = match column.codes[row] {
                0 => None,
                code if code & INLINE != 0 => column.inline_text(row),
                id => Some(lookup(id).ok_or(BlockError("dictionary id not found"))?),
            };
        }
        // Details are hashed as serde_json writes them, as `Event` does.
        let details = match &self.details[row] {
            None => None,
            Some(text) => Some(serde_json::from_str::<serde_json::Value>(text).map_err(|_| BlockError("details are not JSON"))?.to_string()),
        };
        let t = |f: TextField| texts[f.index()];
        let fields = crate::event::CanonicalFields {
            event_id,
            seq,
            timestamp_ms: ts,
            tenant_id,
            category: category_from_code(self.category[row]),
            event_type: t(TextField::EventType).unwrap_or(""),
            request_id,
            actor: t(TextField::Actor),
            target: t(TextField::Target),
            outcome: t(TextField::Outcome).unwrap_or(""),
            consumer_id: t(TextField::Consumer),
            consumer_name: t(TextField::ConsumerName),
            api_id: t(TextField::Api),
            key_id: t(TextField::KeyId),
            key_hint: t(TextField::KeyHint),
            method: t(TextField::Method),
            path: t(TextField::Path),
            status_code: (self.status[row] != 0).then_some(self.status[row]),
            latency_us: self.latency_us[row],
            upstream_latency_us: self.upstream_latency_us[row],
            request_size_bytes: self.request_size[row],
            response_size_bytes: self.response_size[row],
            client_ip: t(TextField::ClientIp),
            user_agent: t(TextField::UserAgent),
            country: t(TextField::Country),
            error_code: t(TextField::ErrorCode),
            error_message: t(TextField::ErrorMessage),
            details: details.as_deref(),
            personal_commitment: self.personal[row],
        };
        let salt = if fields.personal_commitment.is_none() { salt(crate::event::salt_owner(fields.actor, fields.consumer_id)) } else { None };
        crate::event::chain_hash(&fields, salt.as_ref(), previous).map_err(|_| BlockError("no personal salt for the consumer of an event"))
    }
}

/// A field set from a decoded value, reusing what it holds where it can:
/// a `String`'s buffer, or a `Text` that already says the same (rows in a
/// block repeat their tenant, type, outcome, api and consumer).
trait SetText {
    fn set_text(&mut self, value: &str);
    fn new_text(value: &str) -> Self;
}

impl SetText for String {
    fn set_text(&mut self, value: &str) {
        self.clear();
        self.push_str(value);
    }
    fn new_text(value: &str) -> Self {
        value.to_string()
    }
}

impl SetText for Text {
    fn set_text(&mut self, value: &str) {
        if self.as_str() != value {
            *self = Text::from(value);
        }
    }
    fn new_text(value: &str) -> Self {
        Text::from(value)
    }
}

fn set_opt_text<T: SetText>(slot: &mut Option<T>, value: Option<&str>) {
    match (slot.as_mut(), value) {
        (Some(s), Some(v)) => s.set_text(v),
        (None, Some(v)) => *slot = Some(T::new_text(v)),
        (_, None) => *slot = None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{derived_event_id, new_id_at};

    /// A damaged header is an error, never an allocation of what it claims
    /// (which would abort the process): a column of 2^50 bytes, more
    /// columns than any block has, a frame whose content size disagrees.
    #[test]
    fn a_damaged_header_cannot_make_the_reader_allocate_what_it_claims() {
        let header = |rows: u64, columns: u64, raw: u64, codec: u8| {
            let mut bad = vec![FORMAT_VERSION];
            push_varint(&mut bad, rows);
            push_varint(&mut bad, columns);
            for c in 0..columns.min(200) {
                bad.push(codec);
                push_varint(&mut bad, if c == 0 { raw } else { 0 });
                push_varint(&mut bad, 0);
            }
            bad
        };
        let count = col::COUNT as u64;
        for (bad, why) in [
            (header(1, count, 1 << 50, 1), "a huge compressed column"),
            (header(1, count, 1 << 50, 2), "a huge shared column"),
            (header(1, 1 << 50, 0, 1), "a huge column count"),
            (header(1, count + 65, 0, 1), "more columns than any block has"),
            (header(3, count, 4 * MAX_COLUMN_BYTES_PER_ROW as u64 + 1, 1), "more bytes than its rows can hold"),
        ] {
            assert!(DecodedBlock::parse(&bad).is_err(), "{why}");
        }
        // A frame that says it holds 5 bytes, in a column that claims 4 KB.
        let frame = zstd::bulk::compress(b"hello", 1).unwrap();
        let mut bad = vec![FORMAT_VERSION];
        push_varint(&mut bad, 1);
        push_varint(&mut bad, count);
        for c in 0..count {
            bad.push(if c == 0 { 1 } else { 0 });
            push_varint(&mut bad, if c == 0 { 4096 } else { 0 });
            push_varint(&mut bad, if c == 0 { frame.len() as u64 } else { 0 });
        }
        bad.extend_from_slice(&frame);
        let mut block = DecodedBlock::parse(&bad).unwrap();
        let mut decompressor = zstd::bulk::Decompressor::new().unwrap();
        let error = block.load(&bad, Columns::of(&[0]), &mut decompressor).unwrap_err();
        assert_eq!(error.0, "column length mismatch");
    }

    /// A tiny dictionary for the tests: every text is interned except the
    /// fields that are interned on repeat, which stay inline.
    struct Dict(Vec<String>);

    impl Dict {
        fn resolve<'a>(&mut self, field: TextField, value: Option<&'a str>) -> TextRef<'a> {
            match value {
                None => TextRef::Absent,
                Some(v) if !field.always_interned() => TextRef::Inline(v),
                Some(v) => match self.0.iter().position(|s| s == v) {
                    Some(i) => TextRef::Dict(i as u32 + 1),
                    None => {
                        self.0.push(v.to_string());
                        TextRef::Dict(self.0.len() as u32)
                    }
                },
            }
        }
    }

    fn events() -> Vec<Event> {
        let mut out = Vec::new();
        for i in 0..300u64 {
            let category = [Category::Request, Category::Security, Category::Admin][(i % 3) as usize];
            let mut e = Event::new("acme", category, if i % 3 == 1 { "auth_failed" } else { "request" }, "success");
            e.seq = 41 + i;
            e.timestamp_ms = 1_795_000_000_000 + (i as i64 * 37) % 1_000 - 500;
            e.event_id = match i % 4 {
                0 | 1 => derived_event_id("acme", e.seq, e.timestamp_ms),
                2 => crate::event::new_id(),
                _ => format!("client-supplied-{i}"),
            };
            e.request_id = match i % 5 {
                0 => None,
                1 => Some(crate::event::new_id()),
                2 => Some(format!("req-{i}")),
                _ => Some(new_id_at(e.timestamp_ms)),
            };
            e.consumer_id = (i % 7 != 0).then(|| format!("cons_{}", i % 11).into());
            e.path = Some(format!("/docs/{}", i % 13));
            e.method = Some(["GET", "POST"][(i % 2) as usize].into());
            e.client_ip = Some(format!("10.0.0.{}", i % 250).into());
            e.user_agent = (i % 2 == 0).then(|| "curl/8 ünïcode".into());
            e.status_code = (i % 9 != 0).then_some(200 + (i % 4) as u16 * 100);
            e.latency_us = Some(i * i * 13);
            e.upstream_latency_us = match i % 3 {
                0 => None,
                1 => Some(i * i * 13 / 2),
                _ => Some(i * i * 13 + 5),
            };
            e.request_size_bytes = (i % 2 == 0).then_some(i * 1000);
            // The largest value a varint `v+1` column holds.
            e.response_size_bytes = Some(u64::MAX - 1 - i);
            e.details = (i % 6 == 0).then(|| serde_json::json!({"reason": "x", "n": i}));
            e.error_message = (i % 8 == 0).then(|| "boom".into());
            if i % 10 == 3 {
                e.erase_personal(&salt_of(e.consumer_id.as_deref()).unwrap());
            }
            out.push(e);
        }
        out
    }

    /// A personal salt per consumer, for the tests.
    fn salt_of(consumer: Option<&str>) -> Option<[u8; 32]> {
        Some([consumer.map_or(0, |c| c.len() as u8 + c.as_bytes()[c.len() - 1]); 32])
    }

    fn encode(events: &[Event], dict: &mut Dict) -> Vec<u8> {
        let mut encoder = BlockEncoder::default();
        for e in events {
            let texts = TEXT_FIELDS.map(|f| dict.resolve(f, f.get(e)));
            encoder.push(e, false, "acme", &texts);
        }
        let mut out = Vec::new();
        encoder.finish(&mut new_compressor().unwrap(), &mut out).unwrap();
        out
    }

    #[test]
    fn every_field_round_trips() {
        let events = events();
        let mut dict = Dict(Vec::new());
        let data = encode(&events, &mut dict);
        let mut block = DecodedBlock::parse(&data).unwrap();
        assert_eq!(block.rows(), events.len());
        block.load(&data, Columns::ALL, &mut zstd::bulk::Decompressor::new().unwrap()).unwrap();
        let lookup = |id: u32| dict.0.get(id as usize - 1).map(String::as_str);
        let mut back = Event::default();
        for (i, e) in events.iter().enumerate() {
            block.fill_event(i, "acme", e.seq, &lookup, &mut back).unwrap();
            assert_eq!(&back, e, "row {i}");
            let salt = salt_of(e.consumer_id.as_deref());
            assert_eq!(back.canonical_bytes(salt.as_ref()).unwrap(), e.canonical_bytes(salt.as_ref()).unwrap());
            // Hashing from the columns gives the event's own hash.
            let from_columns = block.chain_hash(i, "acme", e.seq, &lookup, &salt_of, &[7; 32]).unwrap();
            assert_eq!(from_columns, e.chain_hash(&[7; 32], salt.as_ref()).unwrap(), "row {i}");
        }
        assert!(events.iter().any(|e| e.personal_commitment.is_some()), "some rows are erased");
        // Without salts, only rows without personal values (or erased) hash.
        for (i, e) in events.iter().enumerate() {
            let hashed = block.chain_hash(i, "acme", e.seq, &lookup, &|_| None, &[7; 32]);
            assert_eq!(hashed.is_ok(), !e.has_personal(), "row {i}");
        }
    }

    #[test]
    fn derived_ids_and_own_time_request_ids_cost_little() {
        let mut dict = Dict(Vec::new());
        let mut events = events();
        // Ids the store must keep whole: random event ids, and request ids
        // stamped at another moment than their event.
        for e in &mut events {
            e.event_id = crate::event::new_id();
            e.request_id = Some(crate::event::new_id());
        }
        let whole = encode(&events, &mut dict).len();
        for e in &mut events {
            e.event_id = derived_event_id("acme", e.seq, e.timestamp_ms);
            e.request_id = Some(new_id_at(e.timestamp_ms));
        }
        let compact = encode(&events, &mut dict).len();
        // zstd already squeezes the ids' shared timestamp bits; the random
        // 16 bytes of event ids and 6 of request ids still cost > 8 per event.
        assert!(compact + events.len() * 8 < whole, "{compact} vs {whole} for {} events", events.len());
    }

    #[test]
    fn only_requested_columns_are_decoded() {
        let events = events();
        let data = encode(&events, &mut Dict(Vec::new()));
        let mut block = DecodedBlock::parse(&data).unwrap();
        block.load(&data, Columns::of(&[col::TS, col::STATUS]), &mut zstd::bulk::Decompressor::new().unwrap()).unwrap();
        assert_eq!(block.ts, events.iter().map(|e| e.timestamp_ms).collect::<Vec<_>>());
        assert_eq!(block.status[1], 300);
        assert!(block.category.is_empty() && block.texts[0].codes.is_empty());
    }

    #[test]
    fn only_the_canonical_uuid_spelling_is_stored_as_bytes() {
        let id = crate::event::new_id();
        assert_eq!(uuid_bytes(&id), Some(*uuid::Uuid::try_parse(&id).unwrap().as_bytes()));
        let nil = "00000000-0000-0000-0000-000000000000";
        assert_eq!(uuid_bytes(nil), Some([0; 16]));
        assert_eq!(uuid_bytes("ffffffff-ffff-ffff-ffff-ffffffffffff"), Some([0xff; 16]));
        let hyphens_moved = format!("{}-{}", &id[..7], id[7..].replacen('-', "", 1));
        for other in [
            id.to_uppercase(),
            id.replace('-', ""),
            format!("{{{id}}}"),
            format!("urn:uuid:{id}"),
            hyphens_moved,
            format!("{}g", &id[..35]),
            format!("{} ", &id[..35]),
            id[..35].to_string(),
            format!("{id}0"),
            String::new(),
        ] {
            assert_eq!(uuid_bytes(&other), None, "{other:?}");
        }
    }

    #[test]
    fn request_ids_match_as_stored_without_formatting() {
        let events = events();
        let data = encode(&events, &mut Dict(Vec::new()));
        let mut block = DecodedBlock::parse(&data).unwrap();
        block.load(&data, Columns::of(&[col::TS, col::REQUEST_ID]), &mut zstd::bulk::Decompressor::new().unwrap()).unwrap();
        // Row 3's request id is stamped with its own time (stored as its tail).
        let own_time = events[3].request_id.clone().unwrap();
        assert_eq!(uuid_bytes(&own_time).unwrap()[..6], events[3].timestamp_ms.to_be_bytes()[2..]);
        // The same random tail stamped a millisecond later, and in upper case.
        let mut later = *uuid::Uuid::try_parse(&own_time).unwrap().as_bytes();
        later[5] = later[5].wrapping_add(1);
        let later = uuid::Uuid::from_bytes(later).to_string();
        let mut wanted: Vec<String> = events.iter().step_by(7).filter_map(|e| e.request_id.clone()).collect();
        wanted.extend([own_time.clone(), own_time.to_uppercase(), later, "REQ-2".into(), String::new(), crate::event::new_id()]);
        for want in &wanted {
            let key = RequestIdKey::new(want);
            let rows: Vec<usize> = (0..events.len()).filter(|row| block.request_id_is(*row, &key)).collect();
            let brute: Vec<usize> = (0..events.len()).filter(|row| events[*row].request_id.as_deref() == Some(want.as_str())).collect();
            assert_eq!(rows, brute, "{want:?}");
        }
    }

    #[test]
    fn corrupt_blocks_are_errors_not_panics() {
        let data = encode(&events(), &mut Dict(Vec::new()));
        let mut decompressor = zstd::bulk::Decompressor::new().unwrap();
        for cut in [0, 1, 5, data.len() / 2, data.len() - 1] {
            let truncated = &data[..cut];
            if let Ok(mut block) = DecodedBlock::parse(truncated) {
                assert!(block.load(truncated, Columns::ALL, &mut decompressor).is_err(), "cut at {cut}");
            }
        }
        let mut flipped = data.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0xff;
        if let Ok(mut block) = DecodedBlock::parse(&flipped) {
            let _ = block.load(&flipped, Columns::ALL, &mut decompressor);
        }
        let mut wrong_version = data;
        wrong_version[0] = 9;
        assert!(DecodedBlock::parse(&wrong_version).is_err());
    }

    #[test]
    fn blocks_are_cut_by_rows_and_by_time_span() {
        let mut encoder = BlockEncoder::default();
        let e = Event::new("acme", Category::Request, "request", "success");
        assert!(encoder.fits(0));
        encoder.push(&e, false, "acme", &[TextRef::Absent; 16]);
        assert!(encoder.fits(e.timestamp_ms + MAX_BLOCK_SPAN_MS));
        assert!(!encoder.fits(e.timestamp_ms + MAX_BLOCK_SPAN_MS + 1));
        assert!(!encoder.fits(e.timestamp_ms - MAX_BLOCK_SPAN_MS - 1));
        for _ in 1..MAX_BLOCK_ROWS {
            encoder.push(&e, false, "acme", &[TextRef::Absent; 16]);
        }
        assert!(!encoder.fits(e.timestamp_ms));
    }

    #[test]
    fn zigzag_round_trips() {
        for v in [0i64, 1, -1, 63, -64, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
    }
}
