//! The audit event: one immutable record, its masking and its chain hash.
//!
//! An event is built by the gateway or the control plane, masked once by
//! [`Event::sanitize`] when it enters the pipeline, given a per-tenant `seq`
//! and a hash by the writer, and never changed afterwards. The hash covers
//! the previous event's hash and the canonical bytes of every field, so a
//! changed, removed, inserted or reordered event breaks the chain.
//!
//! Personal fields (the client's address and user agent, the consumer's
//! name, and the actor of application events and of blocks by address) are
//! not hashed as they are: the chain covers a salted commitment to them
//! ([`personal_commitment`]), with a random salt per tenant and consumer.
//! Erasure ([`crate::store::audit::erasure`]) can then remove the values,
//! keep the commitment in their place, and forget the salt: the chain
//! still verifies, and without the salt nobody can guess the values back
//! from the commitment.
//!
//! This module does no IO.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::text::Text;

/// Tenant that owns events no tenant can be named for (a call to a path no
/// api serves, made without a valid key). Tenant ids cannot start with `_`.
pub const SYSTEM_TENANT: &str = "_system";

/// Hash that precedes a tenant's first event.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Request,
    Security,
    Admin,
    App,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Request => "request",
            Category::Security => "security",
            Category::Admin => "admin",
            Category::App => "app",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "request" => Some(Category::Request),
            "security" => Some(Category::Security),
            "admin" => Some(Category::Admin),
            "app" => Some(Category::App),
            _ => None,
        }
    }
}

/// Security event types keytrail emits today.
pub mod security_type {
    pub const AUTH_FAILED: &str = "auth_failed";
    pub const REVOKED_KEY_USED: &str = "revoked_key_used";
    pub const EXPIRED_KEY_USED: &str = "expired_key_used";
    pub const KEY_CREATED: &str = "key_created";
    pub const KEY_REVOKED: &str = "key_revoked";
    pub const KEY_ROTATED: &str = "key_rotated";
    pub const SCOPE_CHANGED: &str = "scope_changed";
    pub const CONSUMER_SUSPENDED: &str = "consumer_suspended";
    pub const CONSUMER_REACTIVATED: &str = "consumer_reactivated";
    pub const SETTINGS_CHANGED: &str = "settings_changed";
    pub const RATE_LIMIT_EXCEEDED: &str = "rate_limit_exceeded";
    pub const POLICY_APPLIED: &str = "policy_applied";
    pub const REQUEST_BLOCKED: &str = "request_blocked";
    pub const ADMIN_LOGIN: &str = "admin_login";
    pub const ADMIN_LOGIN_FAILED: &str = "admin_login_failed";
    /// Sign-ins for an admin name, or from an address, are refused for a
    /// while after too many failed ones.
    pub const ADMIN_LOGIN_LOCKED: &str = "admin_login_locked";
    /// An owner lifted an admin name's sign-in lockout before it ended.
    pub const ADMIN_LOGIN_UNLOCKED: &str = "admin_login_unlocked";
    pub const LOG_ACCESSED: &str = "log_accessed";
    /// Retention wrote a signed archive of a run of the tenant's chain.
    pub const ARCHIVE_WRITTEN: &str = "archive_written";
    /// Retention deleted an archive past the archive retention.
    pub const ARCHIVE_DELETED: &str = "archive_deleted";
    /// Retention deleted a day file whose events were all archived.
    pub const HOT_DATA_DROPPED: &str = "hot_data_dropped";
    /// A consumer's personal values were erased from the trail (GDPR).
    pub const PERSONAL_DATA_ERASED: &str = "personal_data_erased";
    /// An alert rule's threshold was reached (see [`crate::alerts`]).
    pub const ALERT_FIRED: &str = "alert_fired";
    /// An alert's webhook could not be delivered, after every try.
    pub const ALERT_DELIVERY_FAILED: &str = "alert_delivery_failed";
}

/// One audit record. [`Event::write_canonical`] fixes what the hash covers:
/// a new field must be added there too (at the end).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Event {
    pub event_id: String,
    pub seq: u64,
    pub timestamp_ms: i64,
    pub tenant_id: Text,
    pub category: Option<Category>,
    pub event_type: Text,
    pub request_id: Option<String>,
    pub actor: Option<Text>,
    pub target: Option<String>,
    pub outcome: Text,
    pub consumer_id: Option<Text>,
    pub consumer_name: Option<Text>,
    pub api_id: Option<Text>,
    pub key_id: Option<Text>,
    pub key_hint: Option<Text>,
    pub method: Option<Text>,
    pub path: Option<String>,
    pub status_code: Option<u16>,
    pub latency_us: Option<u64>,
    pub upstream_latency_us: Option<u64>,
    pub request_size_bytes: Option<u64>,
    pub response_size_bytes: Option<u64>,
    pub client_ip: Option<Text>,
    pub user_agent: Option<String>,
    pub country: Option<Text>,
    pub error_code: Option<Text>,
    pub error_message: Option<String>,
    pub details: Option<serde_json::Value>,
    /// Set once the personal fields have been erased: the commitment that
    /// stands for them in the chain hash (64 hex digits in JSON).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex32_opt")]
    pub personal_commitment: Option<[u8; 32]>,
}

/// `Option<[u8; 32]>` as 64 lowercase hex digits in JSON.
mod hex32_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(bytes) => s.serialize_str(&super::to_hex(bytes)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 32]>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => crate::signing::from_hex::<32>(&text)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom("`personal_commitment` must be 64 hexadecimal digits")),
        }
    }
}

/// The text fields [`Event::sanitize`] masks one by one (besides `details`
/// and a set `event_id`): those made per request, and those shared with the
/// snapshot or the code (the last of them the event's type).
const MASKED_STRINGS: usize = 5;
const MASKED_TEXTS: usize = 11;

/// Each masked field's last clean value on this thread.
#[derive(Default)]
struct Clean {
    strings: crate::redact::CleanValues<MASKED_STRINGS>,
    texts: crate::redact::CleanTexts<MASKED_TEXTS>,
}

impl Event {
    /// A new event of the given kind, stamped now. Its `event_id` is left
    /// empty: the writer derives one from the tenant, `seq` and timestamp
    /// ([`derived_event_id`]) when it commits the event, so that the store
    /// need not keep 16 random bytes per event.
    pub fn new(tenant_id: impl Into<Text>, category: Category, event_type: impl Into<Text>, outcome: impl Into<Text>) -> Self {
        Event {
            timestamp_ms: now_ms(),
            tenant_id: tenant_id.into(),
            category: Some(category),
            event_type: event_type.into(),
            outcome: outcome.into(),
            ..Event::default()
        }
    }

    pub fn category(&self) -> Category {
        self.category.unwrap_or(Category::Request)
    }

    /// Masks every free-text field. The pipeline calls this once for every
    /// event it accepts, so the store never receives a secret.
    pub fn sanitize(&mut self) {
        crate::redact::with_secrets(|secrets| self.sanitize_with(secrets));
    }

    fn sanitize_with(&mut self, secrets: &crate::redact::Secrets) {
        // Most fields repeat from one event to the next on a thread (the
        // same consumer, key, api, address, agent): compared, not searched.
        thread_local! {
            static CLEAN: std::cell::RefCell<Clean> = Default::default();
        }
        CLEAN.with_borrow_mut(|clean| self.mask_fields(clean, secrets));
        if let Some(details) = &mut self.details {
            crate::redact::redact_json(details, secrets);
        }
    }

    fn mask_fields(&mut self, clean: &mut Clean, secrets: &crate::redact::Secrets) {
        // Typed by their lengths: a field added here without a slot does not compile.
        let strings: [&mut Option<String>; MASKED_STRINGS] =
            [&mut self.request_id, &mut self.target, &mut self.path, &mut self.user_agent, &mut self.error_message];
        for (slot, field) in strings.into_iter().enumerate() {
            if let Some(value) = field {
                if let std::borrow::Cow::Owned(masked) = clean.strings.redact(slot, value, secrets) {
                    *value = masked;
                }
            }
        }
        let texts: [&mut Option<Text>; MASKED_TEXTS - 1] = [
            &mut self.actor,
            &mut self.consumer_name,
            &mut self.method,
            &mut self.client_ip,
            &mut self.country,
            &mut self.error_code,
            &mut self.consumer_id,
            &mut self.api_id,
            &mut self.key_id,
            &mut self.key_hint,
        ];
        for (slot, field) in texts.into_iter().enumerate() {
            if let Some(value) = field {
                if let Some(masked) = clean.texts.redact(slot, value, secrets) {
                    *value = masked.into();
                }
            }
        }
        // The last slot: the type, an application event's action as its caller wrote it.
        if let Some(masked) = clean.texts.redact(MASKED_TEXTS - 1, &self.event_type, secrets) {
            self.event_type = masked.into();
        }
        // Empty until the writer derives it, except where the event's maker
        // set one (an application event's, which may be the caller's text).
        if !self.event_id.is_empty() {
            if let std::borrow::Cow::Owned(masked) = crate::redact::redact_with(&self.event_id, secrets) {
                self.event_id = masked;
            }
        }
    }

    /// Writes the bytes the chain hash covers (see [`write_canonical`]).
    pub fn write_canonical(&self, salt: Option<&[u8; 32]>, out: &mut Vec<u8>) -> Result<(), MissingSalt> {
        let details = self.details.as_ref().map(|d| d.to_string());
        write_canonical(&self.fields(details.as_deref()), salt, out)
    }

    /// Whether the event holds personal values (not erased).
    /// The consumer id this event's personal salt is kept under ([`salt_owner`]).
    pub fn salt_owner(&self) -> Option<&str> {
        salt_owner(self.actor.as_deref(), self.consumer_id.as_deref())
    }

    pub fn has_personal(&self) -> bool {
        self.client_ip.is_some()
            || self.user_agent.is_some()
            || self.consumer_name.is_some()
            || is_personal_actor(self.category, self.actor.as_deref())
    }

    /// Removes the personal values, keeping in their place the commitment
    /// to them that the chain hash covers, made with `salt` (the one of the
    /// event's tenant and consumer). A no-op for an event without personal
    /// values, so the event hashes the same before and after.
    pub fn erase_personal(&mut self, salt: &[u8; 32]) {
        if !self.has_personal() {
            return;
        }
        let details = self.details.as_ref().map(|d| d.to_string());
        let commitment = personal_commitment(&self.fields(details.as_deref()), salt);
        self.client_ip = None;
        self.user_agent = None;
        self.consumer_name = None;
        if is_personal_actor(self.category, self.actor.as_deref()) {
            self.actor = None;
        }
        self.personal_commitment = Some(commitment);
    }

    /// The event's fields, borrowed, in canonical order; `details` is the
    /// compact JSON text of `self.details`.
    pub fn fields<'a>(&'a self, details: Option<&'a str>) -> CanonicalFields<'a> {
        CanonicalFields {
            event_id: &self.event_id,
            seq: self.seq,
            timestamp_ms: self.timestamp_ms,
            tenant_id: &self.tenant_id,
            category: self.category,
            event_type: &self.event_type,
            request_id: self.request_id.as_deref(),
            actor: self.actor.as_deref(),
            target: self.target.as_deref(),
            outcome: &self.outcome,
            consumer_id: self.consumer_id.as_deref(),
            consumer_name: self.consumer_name.as_deref(),
            api_id: self.api_id.as_deref(),
            key_id: self.key_id.as_deref(),
            key_hint: self.key_hint.as_deref(),
            method: self.method.as_deref(),
            path: self.path.as_deref(),
            status_code: self.status_code,
            latency_us: self.latency_us,
            upstream_latency_us: self.upstream_latency_us,
            request_size_bytes: self.request_size_bytes,
            response_size_bytes: self.response_size_bytes,
            client_ip: self.client_ip.as_deref(),
            user_agent: self.user_agent.as_deref(),
            country: self.country.as_deref(),
            error_code: self.error_code.as_deref(),
            error_message: self.error_message.as_deref(),
            details,
            personal_commitment: self.personal_commitment,
        }
    }

    /// The canonical bytes as a new vector (see [`Event::write_canonical`]).
    pub fn canonical_bytes(&self, salt: Option<&[u8; 32]>) -> Result<Vec<u8>, MissingSalt> {
        let mut out = Vec::with_capacity(256);
        self.write_canonical(salt, &mut out)?;
        Ok(out)
    }

    /// The chain hash of this event given its predecessor's hash:
    /// SHA-256(previous ‖ canonical bytes). `salt` is the personal salt of
    /// the event's tenant and consumer; it is needed unless the event holds
    /// no personal values (or they were erased).
    pub fn chain_hash(&self, previous: &[u8; 32], salt: Option<&[u8; 32]>) -> Result<[u8; 32], MissingSalt> {
        self.chain_hash_as(&self.event_id, previous, salt)
    }

    /// [`Event::chain_hash`] with `event_id` in place of the event's own
    /// (the writer hashes an id it derived without storing it in the event).
    pub fn chain_hash_as(&self, event_id: &str, previous: &[u8; 32], salt: Option<&[u8; 32]>) -> Result<[u8; 32], MissingSalt> {
        let details = self.details.as_ref().map(|d| d.to_string());
        chain_hash(&CanonicalFields { event_id, ..self.fields(details.as_deref()) }, salt, previous)
    }
}

/// An event's fields, borrowed: what the chain hash covers. The store
/// builds one straight from its columns to hash events without making them.
#[derive(Debug, Clone, Copy)]
pub struct CanonicalFields<'a> {
    pub event_id: &'a str,
    pub seq: u64,
    pub timestamp_ms: i64,
    pub tenant_id: &'a str,
    pub category: Option<Category>,
    pub event_type: &'a str,
    pub request_id: Option<&'a str>,
    pub actor: Option<&'a str>,
    pub target: Option<&'a str>,
    pub outcome: &'a str,
    pub consumer_id: Option<&'a str>,
    pub consumer_name: Option<&'a str>,
    pub api_id: Option<&'a str>,
    pub key_id: Option<&'a str>,
    pub key_hint: Option<&'a str>,
    pub method: Option<&'a str>,
    pub path: Option<&'a str>,
    pub status_code: Option<u16>,
    pub latency_us: Option<u64>,
    pub upstream_latency_us: Option<u64>,
    pub request_size_bytes: Option<u64>,
    pub response_size_bytes: Option<u64>,
    pub client_ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub country: Option<&'a str>,
    pub error_code: Option<&'a str>,
    pub error_message: Option<&'a str>,
    /// Compact JSON with sorted keys.
    pub details: Option<&'a str>,
    /// The commitment kept in place of erased personal values.
    pub personal_commitment: Option<[u8; 32]>,
}

/// An event with personal values was to be hashed without its salt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the event holds personal values but there is no personal salt for its consumer")]
pub struct MissingSalt;

/// Whether an event's `actor` is personal data: the end user an
/// application event names, or the address a block was made for (`ip:…`).
/// Actors that name keytrail's own objects (`consumer:…`, `admin:…`) are not.
pub fn is_personal_actor(category: Option<Category>, actor: Option<&str>) -> bool {
    actor.is_some_and(|a| category == Some(Category::App) || a.starts_with("ip:"))
}

/// The deepest an event's `details` may nest. JSON readers stop at some
/// depth (serde_json, which the store and `keytrail verify --file` read
/// with, at 128 levels), and a JSON export holds `details` four levels down
/// (`{"logs": [{"event": {"details": …}}]}`): details nested deeper could
/// be stored but not read back.
pub const MAX_DETAILS_NESTING: usize = 64;

/// How deep a JSON value nests: 0 for a scalar, 1 for a flat array or object.
pub fn nesting(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Array(items) => 1 + items.iter().map(nesting).max().unwrap_or(0),
        serde_json::Value::Object(fields) => 1 + fields.values().map(nesting).max().unwrap_or(0),
        _ => 0,
    }
}

/// A time as RFC 3339 (`2026-11-22T03:00:00Z`) or a UTC day
/// (`2026-11-22`, its midnight), in milliseconds since the epoch.
pub fn parse_time_or_day(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp_millis());
    }
    match chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        Ok(day) if text.len() == 10 => Ok(day.and_time(chrono::NaiveTime::MIN).and_utc().timestamp_millis()),
        _ => Err(format!("`{text}` is neither an RFC 3339 time such as 2026-11-22T03:00:00Z nor a day such as 2026-11-22")),
    }
}

/// Whose personal values an event holds, as the consumer id its salt is
/// kept under: the consumer's, except for events an admin caused (their
/// address and user agent are the admin's), which are salted as events
/// without a consumer. Erasing a consumer erases exactly the events salted
/// under its id.
pub fn salt_owner<'a>(actor: Option<&str>, consumer_id: Option<&'a str>) -> Option<&'a str> {
    if actor.is_some_and(|a| a.starts_with("admin:")) {
        None
    } else {
        consumer_id
    }
}

/// Domain of [`personal_commitment`]'s hash.
const PERSONAL_DOMAIN: &[u8] = b"keytrail-personal-v1\0";

/// The salted commitment to an event's personal values:
/// `SHA-256(domain ‖ salt ‖ tenant ‖ seq ‖ client_ip ‖ user_agent ‖
/// consumer_name ‖ personal actor)`, each value encoded as in the canonical
/// bytes. The `seq` makes equal values in two events commit differently, so
/// erased events cannot be linked to each other by their commitments.
pub fn personal_commitment(f: &CanonicalFields<'_>, salt: &[u8; 32]) -> [u8; 32] {
    // A buffer kept per thread (the writer makes one commitment per event),
    // not the one `chain_hash` is writing the canonical bytes into.
    thread_local! {
        static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUFFER.with_borrow_mut(|buf| {
        buf.clear();
        buf.extend_from_slice(PERSONAL_DOMAIN);
        buf.extend_from_slice(salt);
        push_text(buf, Some(f.tenant_id));
        push_int(buf, Some(f.seq as i64));
        push_text(buf, f.client_ip);
        push_text(buf, f.user_agent);
        push_text(buf, f.consumer_name);
        push_text(buf, f.actor.filter(|_| is_personal_actor(f.category, f.actor)));
        Sha256::digest(&buf[..]).into()
    })
}

fn push_text(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
}

fn push_int(out: &mut Vec<u8>, v: Option<i64>) {
    match v {
        None => out.push(0),
        Some(n) => {
            out.push(2);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

/// Writes the bytes the chain hash covers: a versioned, length-prefixed
/// binary encoding of every field in declaration order. Each field is a tag
/// (`0` absent, `1` text as u32-LE length and UTF-8 bytes, `2` integer as
/// i64-LE); `category` is its name as text and `details` its compact JSON
/// (keys sorted) as text. Unlike JSON it has one spelling per value, so any
/// verifier can rebuild it from an export. A new field goes at the end.
///
/// The personal values (`client_ip`, `user_agent`, `consumer_name` and a
/// personal `actor`, see [`is_personal_actor`]) are left out of their
/// places and covered at the end by their commitment (tag `3` and 32
/// bytes): the stored one once they are erased, else one made with `salt`.
/// An event without personal values ends with tag `0`. (Personal values
/// beside a stored commitment, which only an edit can make, follow it
/// after tag `4`.)
pub fn write_canonical(f: &CanonicalFields<'_>, salt: Option<&[u8; 32]>, out: &mut Vec<u8>) -> Result<(), MissingSalt> {
    let personal_actor = is_personal_actor(f.category, f.actor);
    let has_personal = f.client_ip.is_some() || f.user_agent.is_some() || f.consumer_name.is_some() || personal_actor;
    let commitment = match (f.personal_commitment, has_personal, salt) {
        (Some(stored), _, _) => Some(stored),
        (None, false, _) => None,
        (None, true, Some(salt)) => Some(personal_commitment(f, salt)),
        (None, true, None) => return Err(MissingSalt),
    };
    let (text, int) = (push_text, push_int);
    let u = |v: Option<u64>| v.map(|n| n as i64);
    out.extend_from_slice(b"KT2");
    text(out, Some(f.event_id));
    int(out, Some(f.seq as i64));
    int(out, Some(f.timestamp_ms));
    text(out, Some(f.tenant_id));
    text(out, f.category.map(Category::as_str));
    text(out, Some(f.event_type));
    text(out, f.request_id);
    text(out, if personal_actor { None } else { f.actor });
    text(out, f.target);
    text(out, Some(f.outcome));
    text(out, f.consumer_id);
    text(out, f.api_id);
    text(out, f.key_id);
    text(out, f.key_hint);
    text(out, f.method);
    text(out, f.path);
    int(out, f.status_code.map(i64::from));
    int(out, u(f.latency_us));
    int(out, u(f.upstream_latency_us));
    int(out, u(f.request_size_bytes));
    int(out, u(f.response_size_bytes));
    text(out, f.country);
    text(out, f.error_code);
    text(out, f.error_message);
    text(out, f.details);
    match commitment {
        None => out.push(0),
        Some(c) => {
            out.push(3);
            out.extend_from_slice(&c);
        }
    }
    // An erased event holds no personal values. Values beside a stored
    // commitment (put back into an erased event by someone editing the
    // store or an archive) are hashed too, after tag `4`, so such an event
    // no longer hashes as it was chained; what the writer makes never has both.
    if f.personal_commitment.is_some() && has_personal {
        out.push(4);
        push_text(out, f.client_ip);
        push_text(out, f.user_agent);
        push_text(out, f.consumer_name);
        push_text(out, f.actor.filter(|_| personal_actor));
    }
    Ok(())
}

/// SHA-256(previous ‖ canonical bytes), built in a reused per-thread buffer.
pub fn chain_hash(fields: &CanonicalFields<'_>, salt: Option<&[u8; 32]>, previous: &[u8; 32]) -> Result<[u8; 32], MissingSalt> {
    thread_local! {
        static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUFFER.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        buffer.clear();
        write_canonical(fields, salt, &mut buffer)?;
        let mut hasher = Sha256::new();
        hasher.update(previous);
        hasher.update(&buffer[..]);
        Ok(hasher.finalize().into())
    })
}

/// A time-ordered UUIDv7 string. The random part comes from the thread's
/// seeded generator, not a system call per id.
pub fn new_id() -> String {
    new_id_at(now_ms())
}

/// A UUIDv7 string carrying the given millisecond timestamp. The gateway
/// stamps a request's id with the request event's own timestamp, which lets
/// the store keep only the id's random part.
pub fn new_id_at(timestamp_ms: i64) -> String {
    use rand::RngCore;
    let mut random = [0u8; 10];
    rand::rng().fill_bytes(&mut random);
    uuid_text(uuid::Builder::from_unix_timestamp_millis(timestamp_ms.max(0) as u64, &random).into_uuid())
}

/// A UUID as lowercase hyphenated text in one allocation of its exact
/// size (`to_string` goes through the formatter and grows its buffer).
fn uuid_text(id: uuid::Uuid) -> String {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    String::from(&*id.hyphenated().encode_lower(&mut buf))
}

/// The bytes of the event id the writer gives an event: a UUIDv7 whose
/// timestamp is the event's and whose 74 "random" bits are a bijective mix
/// of `seq` (plus ten bits of the tenant's hash), so ids are unique within a
/// tenant, time-ordered, and can be recomputed from `(tenant, seq, timestamp)`
/// instead of being stored.
pub fn derived_event_id_bytes(tenant_id: &str, seq: u64, timestamp_ms: i64) -> [u8; 16] {
    // FNV-1a over the tenant id.
    let mut tenant_hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tenant_id.as_bytes() {
        tenant_hash = (tenant_hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Multiplying by an odd constant, xoring a constant and the SplitMix64
    // finaliser are each bijections on u64, so distinct seqs give distinct mixes.
    let mut z = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ tenant_hash;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let ts = (timestamp_ms.max(0) as u64) & 0xFFFF_FFFF_FFFF;
    let rand_a: u16 = (((tenant_hash & 0x3ff) as u16) << 2) | (z >> 62) as u16;
    let rand_b = z & 0x3FFF_FFFF_FFFF_FFFF;
    let mut out = [0u8; 16];
    out[..6].copy_from_slice(&ts.to_be_bytes()[2..]);
    out[6] = 0x70 | (rand_a >> 8) as u8;
    out[7] = rand_a as u8;
    out[8..].copy_from_slice(&(rand_b | 0x8000_0000_0000_0000).to_be_bytes());
    out
}

/// [`derived_event_id_bytes`] as the usual hyphenated text.
pub fn derived_event_id(tenant_id: &str, seq: u64, timestamp_ms: i64) -> String {
    derived_event_id_in(tenant_id, seq, timestamp_ms, &mut [0; 36]).to_string()
}

/// [`derived_event_id`] written into `buf`, without an allocation.
pub fn derived_event_id_in<'b>(tenant_id: &str, seq: u64, timestamp_ms: i64, buf: &'b mut [u8; 36]) -> &'b str {
    uuid::Uuid::from_bytes(derived_event_id_bytes(tenant_id, seq, timestamp_ms)).hyphenated().encode_lower(buf)
}

/// Milliseconds since the Unix epoch, UTC.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// RFC 3339, UTC, millisecond precision: `2026-11-22T15:30:00.123Z`.
pub fn format_timestamp(ms: i64) -> String {
    let mut out = String::with_capacity(24);
    push_timestamp(ms, &mut out);
    out
}

/// Appends [`format_timestamp`]'s text to `out`. Exports write one per
/// row, so the date is formatted once per day of data (kept per thread) and
/// the time of day by arithmetic.
pub fn push_timestamp(ms: i64, out: &mut String) {
    use std::cell::Cell;
    thread_local! {
        static LAST: Cell<(i64, [u8; 10])> = const { Cell::new((i64::MIN, [0; 10])) };
    }
    // Years 0000-9999; anything else takes chrono's general path.
    if !(0..=253_402_300_799_999).contains(&ms) {
        let text = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        out.push_str(&text);
        return;
    }
    let (day, ms_of_day) = (ms / 86_400_000, (ms % 86_400_000) as u32);
    let (cached_day, mut date) = LAST.with(Cell::get);
    if cached_day != day {
        let text = chrono::DateTime::<chrono::Utc>::from_timestamp(day * 86_400, 0).unwrap_or_default().format("%Y-%m-%d").to_string();
        date.copy_from_slice(&text.as_bytes()[..10]);
        LAST.with(|last| last.set((day, date)));
    }
    out.push_str(std::str::from_utf8(&date).unwrap_or_default());
    let (secs, millis) = (ms_of_day / 1000, ms_of_day % 1000);
    let two = |out: &mut String, n: u32| {
        out.push((b'0' + (n / 10) as u8) as char);
        out.push((b'0' + (n % 10) as u8) as char);
    };
    out.push('T');
    two(out, secs / 3600);
    out.push(':');
    two(out, secs / 60 % 60);
    out.push(':');
    two(out, secs % 60);
    out.push('.');
    out.push((b'0' + (millis / 100) as u8) as char);
    out.push((b'0' + (millis / 10 % 10) as u8) as char);
    out.push((b'0' + (millis % 10) as u8) as char);
    out.push('Z');
}

/// Drops the query string from a request target; only the path is recorded.
pub fn path_without_query(target: &str) -> &str {
    target.split(['?', '#']).next().unwrap_or("")
}

pub fn to_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(bytes, &mut out);
    out
}

/// Appends lowercase hex of `bytes` to `out`.
pub fn push_hex(bytes: &[u8], out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Personal values put back beside an erased event's commitment make it
    /// hash differently, so verification reports the edit; an erased event
    /// without them hashes as it did before the erasure.
    #[test]
    fn values_put_back_into_an_erased_event_break_its_hash() {
        let salt = [7u8; 32];
        let mut e = Event::new("acme", Category::Request, "request", "success");
        e.seq = 4;
        e.event_id = derived_event_id("acme", 4, e.timestamp_ms);
        e.consumer_id = Some("cons_a".into());
        e.consumer_name = Some("Ada".into());
        e.client_ip = Some("192.0.2.1".into());
        let before = e.chain_hash(&GENESIS_HASH, Some(&salt)).unwrap();
        e.erase_personal(&salt);
        assert_eq!(e.chain_hash(&GENESIS_HASH, None).unwrap(), before, "erasure keeps the hash");
        for put_back in [
            |e: &mut Event| e.client_ip = Some("192.0.2.1".into()),
            |e: &mut Event| e.client_ip = Some("203.0.113.66".into()),
            |e: &mut Event| e.consumer_name = Some("Mallory".into()),
            |e: &mut Event| e.user_agent = Some("curl/8".to_string()),
        ] {
            let mut edited = e.clone();
            put_back(&mut edited);
            assert_ne!(edited.chain_hash(&GENESIS_HASH, None).unwrap(), before);
        }
    }

    /// An event's `details` are hashed as serialized and, when read back,
    /// parsed and serialized again: the text must come back the same, or
    /// the chain breaks. Floats as clients write them (17–18 significant
    /// digits) were the case that did not, before `float_roundtrip`.
    #[test]
    fn details_text_survives_a_second_parse() {
        let mut rng = crate::splitmix::SplitMix64(12345);
        for i in 0..50_000u64 {
            let x = rng.next_u64();
            let text = match i % 3 {
                0 => format!("{{\"f\": {}.{:017}e{}}}", x % 10, x % 100_000_000_000_000_000, (x >> 40) as i64 % 40 - 20),
                1 => format!("[{}]", f64::from_bits(x & !(0x7ff << 52) | (((x >> 52) % 2000 + 24) << 52))),
                _ => format!("{{\"ratio\": {}}}", (x % 1_000_000) as f64 / ((x >> 32) % 1000 + 1) as f64),
            };
            let once = serde_json::from_str::<serde_json::Value>(&text).unwrap().to_string();
            let twice = serde_json::from_str::<serde_json::Value>(&once).unwrap().to_string();
            assert_eq!(once, twice, "{text}");
        }
    }

    fn sample() -> Event {
        let mut e = Event::new("acme", Category::Request, "request", "success");
        e.seq = 1;
        e.path = Some("/docs/a".into());
        e.status_code = Some(200);
        e.details = Some(serde_json::json!({"b": 1, "a": [1, 2]}));
        e
    }

    #[test]
    fn chain_hash_depends_on_every_field_and_the_predecessor() {
        let e = sample();
        let h = e.chain_hash(&GENESIS_HASH, None).unwrap();
        assert_eq!(h, e.clone().chain_hash(&GENESIS_HASH, None).unwrap(), "hash is deterministic");
        assert_ne!(h, e.chain_hash(&[1; 32], None).unwrap(), "predecessor matters");
        let mut changed = e.clone();
        changed.status_code = Some(500);
        assert_ne!(h, changed.chain_hash(&GENESIS_HASH, None).unwrap());
        let mut reordered = e.clone();
        reordered.seq = 2;
        assert_ne!(h, reordered.chain_hash(&GENESIS_HASH, None).unwrap());
    }

    fn personal() -> Event {
        let mut e = sample();
        e.client_ip = Some("203.0.113.7".into());
        e.user_agent = Some("curl/8.5".into());
        e.consumer_name = Some("Jane Roe".into());
        e
    }

    #[test]
    fn personal_values_are_hashed_through_a_salted_commitment() {
        let (salt, other) = ([1u8; 32], [2u8; 32]);
        let e = personal();
        assert_eq!(e.chain_hash(&GENESIS_HASH, None), Err(MissingSalt), "personal values need their salt");
        let h = e.chain_hash(&GENESIS_HASH, Some(&salt)).unwrap();
        assert_ne!(h, e.chain_hash(&GENESIS_HASH, Some(&other)).unwrap(), "the salt matters");
        for change in [
            |e: &mut Event| e.client_ip = Some("203.0.113.8".into()),
            |e: &mut Event| e.user_agent = None,
            |e: &mut Event| e.consumer_name = Some("Jane Doe".into()),
        ] {
            let mut changed = e.clone();
            change(&mut changed);
            assert_ne!(h, changed.chain_hash(&GENESIS_HASH, Some(&salt)).unwrap());
        }
        // The values themselves are not in the canonical bytes.
        let bytes = e.canonical_bytes(Some(&salt)).unwrap();
        for value in ["203.0.113.7", "curl/8.5", "Jane Roe"] {
            assert!(!bytes.windows(value.len()).any(|w| w == value.as_bytes()), "{value}");
        }
    }

    #[test]
    fn erasing_personal_values_keeps_the_hash() {
        let salt = [1u8; 32];
        let mut e = personal();
        e.category = Some(Category::App);
        e.actor = Some("user-42".into());
        let before = e.chain_hash(&[5; 32], Some(&salt)).unwrap();
        let mut erased = e.clone();
        erased.erase_personal(&salt);
        assert_eq!((erased.client_ip.as_deref(), erased.user_agent.as_deref(), erased.consumer_name.as_deref()), (None, None, None));
        assert_eq!(erased.actor, None, "an application event's actor is personal");
        assert!(!erased.has_personal());
        assert_eq!(erased.chain_hash(&[5; 32], None).unwrap(), before, "no salt needed once erased");
        // An erased event travels as JSON (exports, archives) and still verifies.
        let back: Event = serde_json::from_str(&serde_json::to_string(&erased).unwrap()).unwrap();
        assert_eq!(back.chain_hash(&[5; 32], None).unwrap(), before);
        // A forged commitment does not.
        let mut forged = back.clone();
        forged.personal_commitment = Some([0; 32]);
        assert_ne!(forged.chain_hash(&[5; 32], None).unwrap(), before);
        // Actors that name keytrail objects are kept.
        let mut request = personal();
        request.actor = Some("consumer:c1".into());
        request.erase_personal(&salt);
        assert_eq!(request.actor.as_deref(), Some("consumer:c1"));
        // Equal values in two events commit differently.
        let mut next = e.clone();
        next.seq += 1;
        next.erase_personal(&salt);
        assert_ne!(next.personal_commitment, erased.personal_commitment);
    }

    #[test]
    fn canonical_bytes_survive_a_json_round_trip() {
        let e = sample();
        let back: Event = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back.canonical_bytes(None).unwrap(), e.canonical_bytes(None).unwrap());
    }

    #[test]
    fn absent_and_empty_fields_encode_differently() {
        let mut a = sample();
        let mut b = sample();
        a.country = None;
        b.country = Some(String::new().into());
        assert_ne!(a.canonical_bytes(None).unwrap(), b.canonical_bytes(None).unwrap());
        // Moving text from one field to the next changes the bytes too.
        a.country = Some("xy".into());
        a.error_code = None;
        b.country = None;
        b.error_code = Some("xy".into());
        assert_ne!(a.canonical_bytes(None).unwrap(), b.canonical_bytes(None).unwrap());
    }

    #[test]
    fn sanitize_masks_keys_in_every_text_field() {
        let key = crate::keys::generate_key(crate::keys::KeyEnvironment::Live).secret;
        let mut e = sample();
        e.path = Some(format!("/docs/{key}"));
        e.user_agent = Some(format!("agent {key}"));
        e.error_message = Some(key.clone());
        e.details = Some(serde_json::json!({"nested": {"k": key.clone()}}));
        // An application event's action and id are its caller's text.
        e.event_type = format!("order.{key}").into();
        e.event_id = format!("evt-{key}");
        e.sanitize();
        let text = String::from_utf8_lossy(&e.canonical_bytes(Some(&[9; 32])).unwrap()).into_owned();
        assert!(!text.contains(&key), "{text}");
        assert!(!serde_json::to_string(&e).unwrap().contains(&key));
        assert!(e.details.unwrap()["nested"]["k"].as_str().unwrap().starts_with("kt_live****"));
    }

    #[test]
    fn hash_equals_sha256_of_previous_and_canonical_bytes() {
        let e = sample();
        let mut h = Sha256::new();
        h.update([7u8; 32]);
        h.update(e.canonical_bytes(None).unwrap());
        let expected: [u8; 32] = h.finalize().into();
        assert_eq!(e.chain_hash(&[7; 32], None).unwrap(), expected);
    }

    #[test]
    fn ids_are_uuid_v7_and_time_ordered() {
        let a = new_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_id();
        let parsed = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(parsed.get_version_num(), 7);
        assert!(a < b);
    }

    #[test]
    fn derived_event_ids_are_uuid_v7_unique_per_tenant_and_carry_the_time() {
        let mut seen = std::collections::HashSet::new();
        for seq in 1..=20_000u64 {
            for tenant in ["acme", "globex"] {
                let id = derived_event_id(tenant, seq, 1_795_000_000_000);
                let parsed = uuid::Uuid::parse_str(&id).unwrap();
                assert_eq!(parsed.get_version_num(), 7);
                assert_eq!(parsed.get_timestamp().unwrap().to_unix().0, 1_795_000_000);
                assert!(seen.insert(id), "duplicate id at seq {seq}");
            }
        }
        assert_eq!(derived_event_id("acme", 5, 1), derived_event_id("acme", 5, 1), "deterministic");
    }

    #[test]
    fn query_strings_are_dropped() {
        assert_eq!(path_without_query("/a/b?key=secret"), "/a/b");
        assert_eq!(path_without_query("/a#frag"), "/a");
        assert_eq!(path_without_query("/a"), "/a");
    }

    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        assert_eq!(to_hex(&[0, 1, 0xab, 0xff]), "0001abff");
        assert_eq!(to_hex(&[]), "");
    }

    #[test]
    fn timestamps_are_rfc3339_utc_millis() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_timestamp(1_732_289_400_123), "2024-11-22T15:30:00.123Z");
        assert_eq!(format_timestamp(1_732_289_400_007), "2024-11-22T15:30:00.007Z", "same second, from the cache");
        assert_eq!(format_timestamp(1_732_289_401_999), "2024-11-22T15:30:01.999Z");
        // Outside years 0000-9999 chrono's general path is used.
        for ms in [-1, -86_400_001, 253_402_300_800_000, 1_795_000_000_000] {
            let chrono = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            assert_eq!(format_timestamp(ms), chrono, "{ms}");
        }
    }
}
