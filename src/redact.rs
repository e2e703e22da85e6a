//! The redaction point: every text that leaves keytrail passes through here.
//!
//! Anything that looks like a keytrail key (`kt_live_…`, `kt_test_…`), admin
//! token (`kta_…`, sessions `kts_…`), or webhook secret (`ktwh_…`; prefixes in any case, escaped or not) is replaced by its hint, and any secret registered at run
//! time (an operator-chosen bootstrap token, which has no recognisable shape)
//! is replaced by `****`. The process log, error bodies and every audit event
//! go through [`redact`]; call sites do not mask on their own.

use std::borrow::Cow;
use std::io;
use std::sync::{OnceLock, RwLock};

use crate::keys::BODY_LEN;
use crate::text::Text;

const PATTERNS: [&str; 5] =
    ["kt_live_", "kt_test_", crate::keys::ADMIN_TOKEN_PREFIX, crate::keys::SESSION_TOKEN_PREFIX, crate::keys::WEBHOOK_SECRET_PREFIX];
/// How many alphanumeric characters after a prefix make a string worth hiding.
const MIN_SECRET_TAIL: usize = 8;

/// A registered secret with its searcher, built once: every audit event's
/// fields are searched for it, so the search must not be set up per text.
pub struct Secret {
    text: String,
    finder: memchr::memmem::Finder<'static>,
    /// Whether it is spelled with hex digits and hyphens only, so that a
    /// UUID's text could hold it (see [`is_uuid`]).
    uuid_alphabet: bool,
}

/// The registered secrets and how many times the list changed.
#[derive(Default)]
pub struct Secrets {
    generation: u64,
    list: Vec<Secret>,
}

impl std::ops::Deref for Secrets {
    type Target = [Secret];
    fn deref(&self) -> &[Secret] {
        &self.list
    }
}

fn registered() -> &'static RwLock<Secrets> {
    static SECRETS: OnceLock<RwLock<Secrets>> = OnceLock::new();
    SECRETS.get_or_init(|| RwLock::new(Secrets::default()))
}

/// Every pattern starts with `kt`, in any case: texts without it need no
/// closer look. (Most texts are a few dozen bytes: a byte search beats a
/// substring searcher's setup there.)
fn has_kt(text: &[u8]) -> bool {
    memchr::memchr2_iter(b'k', b'K', text).any(|i| matches!(text.get(i + 1), Some(b't' | b'T')))
}

/// The pattern `bytes` starts with, its prefix in any case: admin and
/// session tokens have no checksum, so `KTA_…` or `Kts_…` is found only
/// by its prefix. (A key's body is found whatever its prefix became.)
fn pattern_at(bytes: &[u8]) -> Option<&'static str> {
    PATTERNS.iter().copied().find(|p| bytes.get(..p.len()).is_some_and(|head| head.eq_ignore_ascii_case(p.as_bytes())))
}

/// Adds a literal secret that must never be printed (for example a bootstrap
/// token chosen by the operator). Secrets shorter than 8 bytes are refused
/// elsewhere and ignored here, so short words are never masked by accident.
pub fn register_secret(secret: &str) {
    if secret.len() < 8 {
        return;
    }
    let mut list = registered().write().unwrap_or_else(|e| e.into_inner());
    if !list.list.iter().any(|s| s.text == secret) {
        let finder = memchr::memmem::Finder::new(secret.as_bytes()).into_owned();
        let uuid_alphabet = secret.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
        list.list.push(Secret { text: secret.to_string(), finder, uuid_alphabet });
        list.generation += 1;
    }
}

/// Whether `text` holds something [`redact`] would mask: a key, a token
/// or a registered secret. Inputs that are stored as given refuse it.
pub fn holds_secret(text: &str) -> bool {
    matches!(redact(text), Cow::Owned(_))
}

/// What the name of a request body's field holds when its value is never
/// repeated (in the admin log, in an error message): in any case, anywhere
/// in the name (a misspelt `Password`, a `new_password`).
const SECRET_FIELD_WORDS: [&str; 4] = ["pass", "pwd", "secret", "token"];

/// Whether a body field's name says it holds a secret (those words, a
/// password's short name `pw`, or a name ending in `key`: `key`,
/// `api_key`, `apiKey`).
pub fn is_secret_field(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_FIELD_WORDS.iter().any(|word| name.contains(word)) || name == "pw" || name.ends_with("key")
}

/// Returns `text` with every key, token and registered secret masked.
pub fn redact(text: &str) -> Cow<'_, str> {
    with_secrets(|secrets| redact_with(text, secrets))
}

/// Runs `f` with the registered secrets, for masking many texts under one
/// read of the list (an event's fields).
pub fn with_secrets<R>(f: impl FnOnce(&Secrets) -> R) -> R {
    let list = registered().read().unwrap_or_else(|e| e.into_inner());
    f(&list)
}

/// The last clean value of each of `N` fields, so that a value that comes
/// again (the same consumer, key, api or address in the next event) is
/// compared rather than searched. A value is remembered only when nothing
/// in it was masked, and only for the list of secrets it was searched
/// against: a newly registered secret forgets them all.
pub type CleanValues<const N: usize> = Remembered<String, N>;

/// [`CleanValues`] for shared texts: the last clean value is kept as a
/// clone of the text itself, so the same text again (the same snapshot's
/// consumer, the same static event type) is known clean by its address,
/// without comparing its bytes.
pub type CleanTexts<const N: usize> = Remembered<Option<Text>, N>;

/// One remembered value per field, valid for one generation of the
/// registered secrets.
pub struct Remembered<T, const N: usize> {
    generation: u64,
    values: [T; N],
}

impl<T: Default, const N: usize> Default for Remembered<T, N> {
    fn default() -> Self {
        Remembered { generation: 0, values: std::array::from_fn(|_| T::default()) }
    }
}

impl<T: Default, const N: usize> Remembered<T, N> {
    /// Field `slot`'s remembered value; all are forgotten first when a
    /// secret was registered since they were remembered.
    fn slot(&mut self, slot: usize, secrets: &Secrets) -> &mut T {
        if self.generation != secrets.generation {
            self.values.iter_mut().for_each(|v| *v = T::default());
            self.generation = secrets.generation;
        }
        &mut self.values[slot]
    }
}

impl<const N: usize> CleanValues<N> {
    /// [`redact_with`] for the value of field `slot`.
    pub fn redact<'t>(&mut self, slot: usize, text: &'t str, secrets: &Secrets) -> Cow<'t, str> {
        let last = self.slot(slot, secrets);
        if !text.is_empty() && last.as_str() == text {
            return Cow::Borrowed(text);
        }
        let out = redact_with(text, secrets);
        if matches!(out, Cow::Borrowed(_)) {
            last.clear();
            last.push_str(text);
        }
        out
    }
}

impl<const N: usize> CleanTexts<N> {
    /// The masked value of field `slot`, or `None` when `text` is clean.
    pub fn redact(&mut self, slot: usize, text: &Text, secrets: &Secrets) -> Option<String> {
        let last = self.slot(slot, secrets);
        if let Some(last) = last {
            if last.same(text) {
                return None;
            }
            if last.as_str() == text.as_str() {
                // Equal bytes at another address: remember this one, the
                // next event most likely shares it.
                *last = text.clone();
                return None;
            }
        }
        match redact_with(text, secrets) {
            Cow::Borrowed(_) => {
                *last = Some(text.clone());
                None
            }
            Cow::Owned(masked) => Some(masked),
        }
    }
}

/// [`redact`] with the registered secrets already in hand.
pub fn redact_with<'t>(text: &'t str, secrets: &[Secret]) -> Cow<'t, str> {
    // Shorter than any secret (8+) and any key or token (a prefix and 8+).
    if text.len() < 8 {
        return Cow::Borrowed(text);
    }
    // A request id as the gateway makes them (and most callers send them):
    // no key, token or escape fits in hex digits and hyphens, nor a key's
    // body in runs of at most 12. Every proxied call masks a new one.
    if is_uuid(text.as_bytes()) && !secrets.iter().any(|s| s.uuid_alphabet) {
        return Cow::Borrowed(text);
    }
    let mut out = Cow::Borrowed(text);
    // Escapes first: a key with an escape amid its characters is masked
    // whole, not up to the escape.
    if memchr::memchr(b'%', text.as_bytes()).is_some() {
        if let Some(masked) = mask_escaped(text, secrets) {
            out = Cow::Owned(masked);
        }
    }
    if has_kt(out.as_bytes()) {
        if let Some(masked) = mask_patterns(&out) {
            out = Cow::Owned(masked);
        }
    }
    // A key's body whatever became of its prefix (`KT_LIVE_…`, escapes
    // decoded more often than above, or none): only texts that can hold one.
    if out.len() >= BODY_LEN {
        if let Some(masked) = mask_key_bodies(&out) {
            out = Cow::Owned(masked);
        }
    }
    for secret in secrets {
        if out.len() >= secret.text.len() && secret.finder.find(out.as_bytes()).is_some() {
            out = Cow::Owned(out.replace(secret.text.as_str(), "****"));
        }
    }
    out
}

/// Whether `text` is a UUID's text: 8-4-4-4-12 hex digits, any case.
fn is_uuid(text: &[u8]) -> bool {
    text.len() == 36
        && text.iter().enumerate().all(|(i, &b)| if matches!(i, 8 | 13 | 18 | 23) { b == b'-' } else { b.is_ascii_hexdigit() })
}

/// How many times escapes are decoded in turn: a double-encoded key
/// (`kt%255Flive…`) is one an upstream that decodes twice reads.
const ESCAPE_ROUNDS: usize = 2;

/// Masks keys, tokens and registered secrets spelled with percent-escapes
/// (`kt%5Flive%5F…`, `kt_live_%41…`), as a path or a query may carry them
/// and an upstream reads them; `None` when there was nothing to mask.
fn mask_escaped(text: &str, secrets: &[Secret]) -> Option<String> {
    // The decoded bytes, each with the range of `text` it stands for.
    let mut decoded = text.as_bytes().to_vec();
    let mut spans: Vec<(usize, usize)> = (0..decoded.len()).map(|i| (i, i + 1)).collect();
    // Ranges of `text` to replace, with what replaces them.
    let mut found: Vec<(usize, usize, String)> = Vec::new();
    for _ in 0..ESCAPE_ROUNDS {
        if memchr::memchr(b'%', &decoded).is_none() {
            break;
        }
        (decoded, spans) = percent_decode_spans(&decoded, &spans);
        let mut i = 0;
        while let Some(offset) = memchr::memchr2(b'k', b'K', &decoded[i..]) {
            i += offset;
            let Some(prefix) = pattern_at(&decoded[i..]) else {
                i += 1;
                continue;
            };
            let tail_start = i + prefix.len();
            let tail_len = decoded[tail_start..].iter().take_while(|b| b.is_ascii_alphanumeric()).count();
            if let Some((end, hint)) = split_key(&decoded, prefix, tail_start, tail_len) {
                found.push((spans[i].0, spans[end - 1].1, hint));
                i = end;
                continue;
            }
            if tail_len >= MIN_SECRET_TAIL {
                let end = tail_start + tail_len;
                let secret = std::str::from_utf8(&decoded[i..end]).expect("a prefix and alphanumerics are ASCII");
                found.push((spans[i].0, spans[end - 1].1, crate::keys::hint(secret)));
            }
            i = tail_start + tail_len;
        }
        if decoded.len() >= BODY_LEN {
            key_bodies(&decoded, |start, end| found.push((spans[start].0, spans[end - 1].1, body_hint(&decoded[start..end]))));
        }
        for secret in secrets {
            for at in secret.finder.find_iter(&decoded) {
                found.push((spans[at].0, spans[at + secret.text.len() - 1].1, "****".to_string()));
            }
        }
    }
    if found.is_empty() {
        return None;
    }
    found.sort_by_key(|(start, _, _)| *start);
    let mut out = String::with_capacity(text.len());
    let mut copied_up_to = 0;
    for (start, end, replacement) in found {
        if start >= copied_up_to {
            out.push_str(&text[copied_up_to..start]);
            out.push_str(&replacement);
        }
        copied_up_to = copied_up_to.max(end);
    }
    out.push_str(&text[copied_up_to..]);
    Some(out)
}

/// `bytes` with each `%XX` escape decoded, and the range of the original
/// text each decoded byte stands for (from `spans`, those of `bytes`).
fn percent_decode_spans(bytes: &[u8], spans: &[(usize, usize)]) -> (Vec<u8>, Vec<(usize, usize)>) {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut decoded_spans = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = (bytes[i] == b'%').then(|| Some(hex(*bytes.get(i + 1)?)? << 4 | hex(*bytes.get(i + 2)?)?)).flatten();
        match escape {
            Some(byte) => {
                decoded.push(byte);
                decoded_spans.push((spans[i].0, spans[i + 2].1));
                i += 3;
            }
            None => {
                decoded.push(bytes[i]);
                decoded_spans.push(spans[i]);
                i += 1;
            }
        }
    }
    (decoded, decoded_spans)
}

/// Masks every string in `value`, object keys included, with
/// [`redact_with`]; whether anything was masked. Strings are searched as
/// they are, not as JSON text, where a registered secret holding a `"` or
/// a `\` is spelled with escapes and would not be found.
pub fn redact_json(value: &mut serde_json::Value, secrets: &[Secret]) -> bool {
    use serde_json::Value;
    match value {
        Value::String(text) => match redact_with(text, secrets) {
            Cow::Owned(masked) => {
                *text = masked;
                true
            }
            Cow::Borrowed(_) => false,
        },
        Value::Array(items) => items.iter_mut().fold(false, |masked, item| redact_json(item, secrets) | masked),
        Value::Object(fields) => {
            let mut masked = fields.values_mut().fold(false, |masked, item| redact_json(item, secrets) | masked);
            if fields.keys().any(|name| matches!(redact_with(name, secrets), Cow::Owned(_))) {
                *fields = std::mem::take(fields)
                    .into_iter()
                    .map(|(name, item)| (redact_with(&name, secrets).into_owned(), item))
                    .collect();
                masked = true;
            }
            masked
        }
        _ => false,
    }
}

/// Most runs of letters and digits after a key's prefix that a key split
/// across fields is looked for in (each field's name may take two or
/// three: `api_key=`), and the most bytes they may span. Few, as every
/// subset of them in order may be tried.
const SPLIT_RUNS: usize = 8;
const SPLIT_SPAN: usize = 256;

/// A key split across fields, segments or parameters
/// (`?api_key=kt_live_Ab&api_key=cD…`, `/kt_live_Ab/cD…`, `;k=kt_live_;k=Ab…`):
/// `prefix` (a key's) ends at `tail_start` and `tail_len` letters and digits
/// follow it, fewer than a key has; some of the next runs of letters and
/// digits, whole and in order (those left out are the fields' names), make
/// a key's body. The end of the last run taken, and the key's hint.
fn split_key(bytes: &[u8], prefix: &str, tail_start: usize, tail_len: usize) -> Option<(usize, String)> {
    if tail_len >= BODY_LEN || !matches!(prefix, "kt_live_" | "kt_test_") {
        return None;
    }
    let mut runs = [(0, 0); SPLIT_RUNS];
    let mut n = 0;
    let (mut i, limit) = (tail_start, bytes.len().min(tail_start + SPLIT_SPAN));
    while n < SPLIT_RUNS && i < limit {
        let start = i;
        while i < limit && bytes[i].is_ascii_alphanumeric() {
            i += 1;
        }
        if i > start {
            runs[n] = (start, i);
            n += 1;
        }
        while i < limit && !bytes[i].is_ascii_alphanumeric() {
            i += 1;
        }
    }
    let mut body = [0; BODY_LEN];
    let end = take_runs(bytes, &runs[..n], &mut body, 0)?;
    let key = format!("{prefix}{}", std::str::from_utf8(&body).expect("letters and digits are ASCII"));
    Some((end, crate::keys::hint(&key)))
}

/// Fills `body` from `filled` on with some of `runs`, whole and in order;
/// the end of the last run taken once they make a key's body. (Runs that
/// cannot fill it, all taken, are not tried: text full of short words
/// costs no more than a glance.)
fn take_runs(bytes: &[u8], runs: &[(usize, usize)], body: &mut [u8; BODY_LEN], filled: usize) -> Option<usize> {
    if filled + runs.iter().map(|(start, end)| end - start).sum::<usize>() < BODY_LEN {
        return None;
    }
    let (&(start, end), rest) = runs.split_first()?;
    let full = filled + (end - start);
    if full <= BODY_LEN {
        body[filled..full].copy_from_slice(&bytes[start..end]);
        let found = if full == BODY_LEN { crate::keys::is_key_body(body).then_some(end) } else { take_runs(bytes, rest, body, full) };
        if found.is_some() {
            return found;
        }
    }
    take_runs(bytes, rest, body, filled)
}

/// Calls `found` with the range of each key body (see
/// [`crate::keys::is_key_body`]) in `bytes`: a run of letters and digits,
/// or the end or the start of a longer one (after an escape's hex digits,
/// `%5F…`). Two checks a run at most, so a long text costs one pass.
fn key_bodies(bytes: &[u8], mut found: impl FnMut(usize, usize)) {
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphanumeric() {
            i += 1;
        }
        if i - start < BODY_LEN {
            continue;
        }
        let at_end = crate::keys::is_key_body(&bytes[i - BODY_LEN..i]);
        // The start's window, when it is another (and not one overlapping a body found at the end).
        if i - start > BODY_LEN && (!at_end || i - start >= 2 * BODY_LEN) && crate::keys::is_key_body(&bytes[start..start + BODY_LEN]) {
            found(start, start + BODY_LEN);
        }
        if at_end {
            found(i - BODY_LEN, i);
        }
    }
}

/// What replaces a key body found without its prefix: its last four characters.
fn body_hint(body: &[u8]) -> String {
    format!("****{}", String::from_utf8_lossy(&body[body.len() - 4..]))
}

/// Masks key bodies (see [`key_bodies`]); `None` when there was none.
fn mask_key_bodies(text: &str) -> Option<String> {
    let mut out: Option<String> = None;
    let mut copied_up_to = 0;
    key_bodies(text.as_bytes(), |start, end| {
        let buf = out.get_or_insert_with(|| String::with_capacity(text.len()));
        buf.push_str(&text[copied_up_to..start]);
        buf.push_str(&body_hint(&text.as_bytes()[start..end]));
        copied_up_to = end;
    });
    out.map(|mut buf| {
        buf.push_str(&text[copied_up_to..]);
        buf
    })
}

/// Masks pattern matches; `None` when there was nothing to mask.
fn mask_patterns(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied_up_to = 0;
    let mut i = 0;
    // Every pattern starts with `k` or `K`: jump from one to the next.
    while let Some(offset) = memchr::memchr2(b'k', b'K', &bytes[i..]) {
        i += offset;
        let Some(prefix) = pattern_at(&bytes[i..]) else {
            i += 1;
            continue;
        };
        let tail_start = i + prefix.len();
        let tail_len = bytes[tail_start..].iter().take_while(|b| b.is_ascii_alphanumeric()).count();
        let (end, hint) = match split_key(bytes, prefix, tail_start, tail_len) {
            Some(split) => split,
            None if tail_len < MIN_SECRET_TAIL => {
                i = tail_start;
                continue;
            }
            None => (tail_start + tail_len, crate::keys::hint(&text[i..tail_start + tail_len])),
        };
        let buf = out.get_or_insert_with(|| String::with_capacity(text.len()));
        buf.push_str(&text[copied_up_to..i]);
        buf.push_str(&hint);
        copied_up_to = end;
        i = end;
    }
    out.map(|mut buf| {
        buf.push_str(&text[copied_up_to..]);
        buf
    })
}

/// An `io::Write` that redacts each write before passing it on; the process
/// log is written through it.
pub struct RedactingWriter<W: io::Write> {
    inner: W,
}

impl<W: io::Write> RedactingWriter<W> {
    pub fn new(inner: W) -> Self {
        RedactingWriter { inner }
    }
}

impl<W: io::Write> io::Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.inner.write_all(redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A `tracing_subscriber` writer factory that redacts everything it writes to stderr.
#[derive(Clone, Copy, Default)]
pub struct RedactingStderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactingStderr {
    type Writer = RedactingWriter<io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter::new(io::stderr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{generate_key, KeyEnvironment};

    #[test]
    fn uuids_pass_unless_a_secret_could_hide_in_one() {
        for id in ["0190c2a4-7b1e-7c3d-8e4f-a1b2c3d4e5f6", "0190C2A4-7B1E-7C3D-8E4F-A1B2C3D4E5F6"] {
            assert!(is_uuid(id.as_bytes()));
            assert!(matches!(redact(id), Cow::Borrowed(_)), "{id}");
        }
        for not in ["0190c2a4-7b1e-7c3d-8e4f-a1b2c3d4e5f", "0190c2a47b1e-7c3d-8e4f-a1b2c3d4e5f6a", "0190c2a4-7b1e-7c3d-8e4f-a1b2c3d4e5fg"] {
            assert!(!is_uuid(not.as_bytes()), "{not}");
        }
        // A registered secret spelled in hex digits is found in a UUID's text
        // (the shortcut is off while one is registered)...
        register_secret("c0ffee9d1e57");
        assert_eq!(redact("0190c2a4-7b1e-7c3d-8e4f-c0ffee9d1e57"), "0190c2a4-7b1e-7c3d-8e4f-****");
        register_secret("4d0c1e55-0bad-4b1d-9e11-57a7e5ec2e75");
        assert_eq!(redact("4d0c1e55-0bad-4b1d-9e11-57a7e5ec2e75"), "****");
        // ...and a key next to one still is.
        let key = generate_key(KeyEnvironment::Live).secret;
        assert!(!redact(&format!("0190c2a4-7b1e-7c3d-8e4f-a1b2c3d4e5f6{key}")).contains(&key));
    }

    #[test]
    fn keys_anywhere_in_text_are_masked() {
        let key = generate_key(KeyEnvironment::Live).secret;
        let text = format!("GET /docs?api_key={key}&x=1 user-agent=curl/{key}");
        let out = redact(&text);
        assert!(!out.contains(&key), "{out}");
        assert_eq!(out.matches(&crate::keys::hint(&key)).count(), 2, "{out}");
        assert!(out.ends_with(&crate::keys::hint(&key)));
        assert!(out.starts_with("GET /docs?api_key=kt_live****"));
    }

    #[test]
    fn truncated_and_wrong_checksum_keys_are_masked_too() {
        let key = generate_key(KeyEnvironment::Test).secret;
        let partial = &key[..20];
        assert!(!redact(partial).contains(partial));
    }

    #[test]
    fn ordinary_text_is_untouched_and_not_copied() {
        for text in ["kt_live_ is the prefix", "nothing here", "kt_", "ümlaut kt_test_ä"] {
            assert!(matches!(redact(text), Cow::Borrowed(_)), "{text}");
        }
    }

    #[test]
    fn registered_secrets_are_masked() {
        register_secret("operator-chosen-bootstrap-secret");
        let out = redact("token=operator-chosen-bootstrap-secret;");
        assert_eq!(out, "token=****;");
    }

    #[test]
    fn registered_secrets_are_masked_wherever_they_stand() {
        let secret = "another-operator-secret-42";
        register_secret(secret);
        for (text, want) in [
            (secret.to_string(), "****".to_string()),
            (format!("{secret}{secret}"), "********".to_string()),
            (format!("k{secret}t"), "k****t".to_string()),
            // Shorter than the secret, or only a part of it: left alone.
            ("another-operator".to_string(), "another-operator".to_string()),
            ("kkkk tt k t".to_string(), "kkkk tt k t".to_string()),
        ] {
            assert_eq!(redact(&text), want, "{text}");
        }
        // A key's prefix found after a lone `k`.
        let key = crate::keys::generate_key(crate::keys::KeyEnvironment::Live).secret;
        assert!(!redact(&format!("k{key}")).contains(&key));
    }

    #[test]
    fn remembered_clean_values_are_searched_again_once_a_secret_is_registered() {
        let mut clean = CleanValues::<2>::default();
        let value = "consumer named remembered-then-secret-7731";
        let search = |clean: &mut CleanValues<2>, slot, text| with_secrets(|s| clean.redact(slot, text, s).into_owned());
        assert_eq!(search(&mut clean, 0, value), value);
        assert_eq!(search(&mut clean, 0, value), value, "remembered as clean");
        register_secret("remembered-then-secret-7731");
        assert_eq!(search(&mut clean, 0, value), "consumer named ****", "a new secret makes it searched again");
        assert_eq!(search(&mut clean, 0, value), "consumer named ****", "a masked value is never remembered as clean");
        // Keys are masked in any slot, whatever came before.
        let key = generate_key(KeyEnvironment::Live).secret;
        assert_eq!(search(&mut clean, 1, "an earlier clean value"), "an earlier clean value");
        assert!(!search(&mut clean, 1, &key).contains(&key));
        assert!(!search(&mut clean, 1, &key).contains(&key));
    }

    #[test]
    fn remembered_clean_texts_are_searched_again_once_a_secret_is_registered() {
        let mut clean = CleanTexts::<2>::default();
        let search = |clean: &mut CleanTexts<2>, slot, text: &Text| with_secrets(|s| clean.redact(slot, text, s));
        // The same text (by address), then an equal copy at another address.
        let shared = Text::from("consumer named shared-then-secret-5521");
        assert_eq!(search(&mut clean, 0, &shared), None);
        assert_eq!(search(&mut clean, 0, &shared.clone()), None, "remembered as clean");
        let copy = Text::from(shared.as_str());
        assert_eq!(search(&mut clean, 0, &copy), None, "equal bytes are clean too");
        register_secret("shared-then-secret-5521");
        let masked = Some("consumer named ****".to_string());
        assert_eq!(search(&mut clean, 0, &shared), masked, "a new secret makes even the same text searched again");
        assert_eq!(search(&mut clean, 0, &copy), masked, "a masked text is never remembered as clean");
        assert_eq!(search(&mut clean, 0, &copy), masked);
        // Keys are masked in any slot, whatever came before.
        let key = Text::from(generate_key(KeyEnvironment::Live).secret);
        assert_eq!(search(&mut clean, 1, &Text::from_static("an earlier clean value")), None);
        for _ in 0..2 {
            let out = search(&mut clean, 1, &key).expect("a key is masked");
            assert!(!out.contains(key.as_str()), "{out}");
        }
    }

    #[test]
    fn registered_secrets_with_json_escapes_are_masked_in_json_values() {
        let secret = r#"json"escaped\secret-9931"#;
        register_secret(secret);
        let key = generate_key(KeyEnvironment::Live).secret;
        let mut value = serde_json::json!({"a": [{"b": format!("x {secret} y")}], secret: 1, "k": key});
        assert!(with_secrets(|s| redact_json(&mut value, s)));
        let text = value.to_string();
        assert!(!text.contains("escaped"), "{text}");
        assert!(!text.contains(&key), "{text}");
        assert_eq!(value["a"][0]["b"], "x **** y");
        assert_eq!(value["****"], 1);
        let mut clean = serde_json::json!({"a": ["plain text here"], "b": 2});
        assert!(!with_secrets(|s| redact_json(&mut clean, s)));
    }

    #[test]
    fn percent_escaped_keys_tokens_and_secrets_are_masked() {
        let key = generate_key(KeyEnvironment::Live).secret;
        let hint = crate::keys::hint(&key);
        let first = format!("{}%{:02X}{}", &key[..8], key.as_bytes()[8], &key[9..]);
        let mut every = String::new();
        for b in key.bytes() {
            every.push_str(&format!("%{b:02x}"));
        }
        for (spelled, around) in [
            (key.replace('_', "%5F"), ("/docs/", "/x")),
            (first.clone(), ("?api_key=", "&x=%41")),
            (every, ("", "")),
            (key.replace('_', "%255F"), ("a%", "%")),
            (format!("{}%{:02X}{}", &key[..20], key.as_bytes()[20], &key[21..]), ("k", "")),
        ] {
            let text = format!("{}{spelled}{}", around.0, around.1);
            let out = redact(&text);
            assert_eq!(out, format!("{}{hint}{}", around.0, around.1), "{text}");
        }
        let token = crate::keys::generate_admin_token();
        assert!(!redact(&token.replace('_', "%5f")).contains(&token[4..]));
        register_secret("escaped-secret-4471");
        assert_eq!(redact("x=escaped%2Dsecret-4471;"), "x=****;");
        // Escapes that hide nothing are left as they came.
        for text in ["/docs/%41%42%43%44%45%46%47%48%49", "100% kt_live_ %ZZ%", "kt%5Flive%5Fshort"] {
            assert!(matches!(redact(text), Cow::Borrowed(_)), "{text}");
        }
    }

    /// A key no longer behind its own prefix (another letter case, escapes
    /// decoded more often than masking decodes) or split across fields,
    /// segments or parameters is still recognised by its checksum: its
    /// random part is never kept, neither whole nor the larger piece.
    #[test]
    fn keys_in_other_spellings_and_split_across_fields_are_masked() {
        for _ in 0..20 {
            let key = generate_key(KeyEnvironment::Live).secret;
            let (prefix, body) = key.split_at(8);
            let (a, b) = key.split_at(14);
            for text in [
                format!("/docs/KT_LIVE_{body}"),
                format!("/docs/Kt_Live_{body}/x"),
                format!("/docs/{body}"),
                format!("/docs/kt%25255Flive%25255F{body}"),
                format!("/docs/kt%2525255Flive%2525255F{body}?x=1"),
                format!("/docs?api_key={a}&api_key={b}"),
                format!("/docs;api_key={a};api_key={b}"),
                format!("/docs/{a}/{b}"),
                format!("/docs/{a};x={b}"),
                format!("/docs?k={prefix}&k={body}"),
                format!("/docs?api_key={}&api_key={}&api_key={}", &key[..20], &key[20..30], &key[30..]),
            ] {
                let out = redact(&text);
                for piece in [&body[..12], &body[13..25], &body[26..]] {
                    assert!(!out.contains(piece), "{text} -> {out}");
                }
            }
        }
        // Long runs of letters and digits that are no key stay as they are.
        for text in [
            "/files/da39a3ee5e6b4b0d3255bfef95601890afd80709",
            "/files/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "kt_live_ is the prefix of every live key in the documentation",
            "/docs?api_key=kt_live_short&api_key=ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghij",
        ] {
            assert!(matches!(redact(text), Cow::Borrowed(_)), "{text}");
        }
    }

    #[test]
    fn admin_and_session_tokens_with_a_respelled_prefix_are_masked() {
        let token = crate::keys::generate_admin_token();
        let rest = token.strip_prefix("kta_").unwrap();
        for text in [format!("/x/KTA_{rest}"), format!("Kts_{rest} y"), format!("t=kTa%5F{rest}"), format!("t=KTA%255F{rest}")] {
            let out = redact(&text);
            assert!(!out.contains(rest), "{text} -> {out}");
        }
    }

    #[test]
    fn admin_tokens_are_masked() {
        let token = crate::keys::generate_admin_token();
        let text = format!("Bearer {token}");
        let out = redact(&text);
        assert!(!out.contains(&token));
    }

    #[test]
    fn writer_redacts() {
        use std::io::Write;
        let key = generate_key(KeyEnvironment::Live).secret;
        let mut w = RedactingWriter::new(Vec::new());
        write!(w, "leak {key}").unwrap();
        let s = String::from_utf8(w.inner).unwrap();
        assert!(!s.contains(&key));
    }
}
