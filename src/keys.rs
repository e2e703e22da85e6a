//! API keys and admin tokens: their format, checksum, hash and display hint.
//!
//! A key is `kt_live_` or `kt_test_`, 32 random base62 characters, then a
//! 6-character base62 CRC-32 of everything before it. The checksum lets the
//! gateway reject a typo or a guessed key without a lookup, and lets secret
//! scanners recognise a leaked key. Keys are stored only as SHA-256 hashes
//! (HMAC-SHA-256 with the operator's pepper, when one is set: [`KeyHasher`])
//! and shown as a hint: the prefix and the last four characters.
//!
//! This module does no IO.

use rand::Rng;
use sha2::{Digest, Sha256};

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const RANDOM_LEN: usize = 32;
const CHECKSUM_LEN: usize = 6;
/// Length of every prefix: `kt_live_` and `kt_test_`.
const PREFIX_LEN: usize = 8;
/// Total length of a well-formed key.
pub const KEY_LEN: usize = PREFIX_LEN + RANDOM_LEN + CHECKSUM_LEN;
/// Prefix of admin tokens keytrail generates.
pub const ADMIN_TOKEN_PREFIX: &str = "kta_";
/// Prefix of the session tokens people get when they sign in.
pub const SESSION_TOKEN_PREFIX: &str = "kts_";
/// Prefix of the secrets alert webhooks are signed with (`crate::alerts`).
pub const WEBHOOK_SECRET_PREFIX: &str = "ktwh_";

/// Which environment a key is for; part of its visible prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyEnvironment {
    Live,
    Test,
}

impl KeyEnvironment {
    pub fn prefix(self) -> &'static str {
        match self {
            KeyEnvironment::Live => "kt_live_",
            KeyEnvironment::Test => "kt_test_",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeyEnvironment::Live => "live",
            KeyEnvironment::Test => "test",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "live" => Some(KeyEnvironment::Live),
            "test" => Some(KeyEnvironment::Test),
            _ => None,
        }
    }
}

/// SHA-256 of a secret: the only form in which keys and tokens are stored.
pub type SecretHash = [u8; 32];

/// A freshly generated key. Its `secret` leaves the process exactly once, in
/// the answer to the call that created it.
pub struct GeneratedKey {
    pub secret: String,
    pub hint: String,
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey").field("hint", &self.hint).finish_non_exhaustive()
    }
}

/// Why a presented key was rejected before any lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MalformedKey {
    Prefix,
    Length,
    Characters,
    Checksum,
}

fn random_base62(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len).map(|_| BASE62[rng.random_range(0..62)] as char).collect()
}

/// The key's last characters: CRC-32 of the rest in base62. Bytes, not a
/// `String`: every proxied call checks one.
fn checksum(body: &str) -> [u8; CHECKSUM_LEN] {
    base62_checksum(crc32fast::hash(body.as_bytes()))
}

/// A CRC-32 as the key's six base62 characters.
fn base62_checksum(crc: u32) -> [u8; CHECKSUM_LEN] {
    let mut n = crc as u64;
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// Length of a key after its prefix: the random part and the checksum.
pub const BODY_LEN: usize = RANDOM_LEN + CHECKSUM_LEN;

/// Whether `body` is what follows the prefix of a key, live or test: 32
/// random characters and their checksum. How masking recognises a key
/// whose prefix is spelled otherwise (`KT_LIVE_`), still escaped, or not
/// beside it at all.
pub fn is_key_body(body: &[u8]) -> bool {
    body.len() == BODY_LEN
        && body.iter().all(u8::is_ascii_alphanumeric)
        && [KeyEnvironment::Live, KeyEnvironment::Test].iter().any(|env| {
            let mut crc = crc32fast::Hasher::new();
            crc.update(env.prefix().as_bytes());
            crc.update(&body[..RANDOM_LEN]);
            base62_checksum(crc.finalize()) == body[RANDOM_LEN..]
        })
}

/// Generates a new API key for the given environment.
pub fn generate_key(env: KeyEnvironment) -> GeneratedKey {
    let body = format!("{}{}", env.prefix(), random_base62(RANDOM_LEN));
    let sum = checksum(&body);
    let secret = format!("{body}{}", std::str::from_utf8(&sum).expect("base62 is ascii"));
    let hint = hint(&secret);
    GeneratedKey { secret, hint }
}

/// Checks the shape and checksum of a presented key without looking it up.
pub fn check_format(key: &str) -> Result<KeyEnvironment, MalformedKey> {
    let env = if key.starts_with("kt_live_") {
        KeyEnvironment::Live
    } else if key.starts_with("kt_test_") {
        KeyEnvironment::Test
    } else {
        return Err(MalformedKey::Prefix);
    };
    if key.len() != KEY_LEN {
        return Err(MalformedKey::Length);
    }
    if !key.as_bytes()[PREFIX_LEN..].iter().all(u8::is_ascii_alphanumeric) {
        return Err(MalformedKey::Characters);
    }
    let (body, sum) = key.split_at(KEY_LEN - CHECKSUM_LEN);
    if checksum(body) != sum.as_bytes() {
        return Err(MalformedKey::Checksum);
    }
    Ok(env)
}

/// The stored form of a key or token.
pub fn hash_secret(secret: &str) -> SecretHash {
    Sha256::digest(secret.as_bytes()).into()
}

/// The shortest pepper accepted, in bytes.
pub const MIN_PEPPER_LEN: usize = 32;

/// How API keys are hashed for the store: plain SHA-256, or, with the
/// operator's pepper (`keys.pepper_file`), HMAC-SHA-256 keyed with it, so
/// that a copy of the store alone cannot confirm a guessed key. Keys
/// stored before a pepper was set keep their plain hash and are still
/// found ([`lookups`](Self::lookups)); a key made or rotated with the
/// pepper is found only with it.
#[derive(Clone, Default)]
pub struct KeyHasher {
    /// The HMAC with the pepper's key schedule done once; cloned per key.
    pepper: Option<hmac::Hmac<Sha256>>,
}

impl std::fmt::Debug for KeyHasher {
    // Never the pepper.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyHasher").field("peppered", &self.is_peppered()).finish()
    }
}

impl KeyHasher {
    /// A hasher with `pepper` (at least [`MIN_PEPPER_LEN`] bytes).
    pub fn with_pepper(pepper: &[u8]) -> Result<KeyHasher, String> {
        use hmac::Mac;
        if pepper.len() < MIN_PEPPER_LEN {
            return Err(format!("a key pepper must be at least {MIN_PEPPER_LEN} bytes (it has {}); make one with `head -c 32 /dev/urandom | base64`", pepper.len()));
        }
        let mac = hmac::Hmac::<Sha256>::new_from_slice(pepper).map_err(|e| e.to_string())?;
        Ok(KeyHasher { pepper: Some(mac) })
    }

    pub fn is_peppered(&self) -> bool {
        self.pepper.is_some()
    }

    /// The hash a new key is stored under.
    pub fn stored(&self, key: &str) -> SecretHash {
        use hmac::Mac;
        match &self.pepper {
            Some(mac) => {
                let mut mac = mac.clone();
                mac.update(key.as_bytes());
                mac.finalize().into_bytes().into()
            }
            None => hash_secret(key),
        }
    }

    /// The hashes a presented key may be stored under, in the order to try
    /// them: the peppered one, then (with a pepper) the plain one of a key
    /// stored before the pepper was set.
    pub fn lookups<'a>(&'a self, key: &'a str) -> impl Iterator<Item = SecretHash> + 'a {
        // The plain hash only when asked for: most lookups end at the first.
        let plain = self.is_peppered().then_some(key).into_iter().map(hash_secret);
        std::iter::once(self.stored(key)).chain(plain)
    }
}

/// Constant-time comparison of two hashes: the differences of the four
/// 64-bit words are folded without a branch, and only the fold is tested
/// (as `subtle` tests a word). `subtle`'s comparison of byte slices does
/// the same a byte at a time, behind a barrier each: ~650 instructions
/// per proxied call, against ~20.
pub fn hashes_equal(a: &SecretHash, b: &SecretHash) -> bool {
    use subtle::ConstantTimeEq;
    let word = |h: &SecretHash, i: usize| u64::from_ne_bytes(h[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    let diff = (0..4).fold(0u64, |acc, i| acc | (word(a, i) ^ word(b, i)));
    diff.ct_eq(&0).into()
}

/// The display form of a key: `kt_live****abcd`. Anything shorter than a
/// real key still gets a hint that reveals at most its last four characters.
pub fn hint(secret: &str) -> String {
    let visible_prefix = if secret.starts_with("kt_live_") {
        "kt_live"
    } else if secret.starts_with("kt_test_") {
        "kt_test"
    } else if secret.starts_with(ADMIN_TOKEN_PREFIX) {
        "kta"
    } else if secret.starts_with(SESSION_TOKEN_PREFIX) {
        "kts"
    } else if secret.starts_with(WEBHOOK_SECRET_PREFIX) {
        "ktwh"
    } else {
        ""
    };
    let tail: String = if secret.len() >= 12 && secret.is_ascii() {
        secret[secret.len() - 4..].to_string()
    } else {
        String::new()
    };
    format!("{visible_prefix}****{tail}")
}

/// Generates an admin token (`kta_` and 40 base62 characters).
pub fn generate_admin_token() -> String {
    format!("{ADMIN_TOKEN_PREFIX}{}", random_base62(40))
}

/// Generates a session token (`kts_` and 40 base62 characters).
pub fn generate_session_token() -> String {
    format!("{SESSION_TOKEN_PREFIX}{}", random_base62(40))
}

/// A public identifier such as `key_…` or `cons_…`.
pub fn generate_id(prefix: &str) -> String {
    format!("{prefix}_{}", random_base62(20))
}

/// Whether `scope` is a well-formed key scope: 1-100 characters of letters,
/// digits and `-_:.*/`.
/// A scope: 1-100 characters of letters, digits and `-_:.*/`, and no key
/// or token (scopes are stored and shown as given).
pub fn is_valid_scope(scope: &str) -> bool {
    !scope.is_empty()
        && scope.len() <= 100
        && scope.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_:.*/".contains(&b))
        && !crate::redact::holds_secret(scope)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With a pepper, the stored hash is an HMAC of the key, not its
    /// SHA-256 (which a copy of the store could check guesses against);
    /// lookups try it first, then the plain hash of a key stored before.
    #[test]
    fn a_pepper_keys_the_stored_hash_and_lookups_try_both() {
        let key = generate_key(KeyEnvironment::Live).secret;
        let plain = KeyHasher::default();
        assert_eq!(plain.stored(&key), hash_secret(&key));
        assert_eq!(plain.lookups(&key).collect::<Vec<_>>(), [hash_secret(&key)]);
        let pepper = [7u8; MIN_PEPPER_LEN];
        let peppered = KeyHasher::with_pepper(&pepper).unwrap();
        let stored = peppered.stored(&key);
        assert_ne!(stored, hash_secret(&key));
        // HMAC-SHA-256 (RFC 2104) by hand: H((K ^ opad) || H((K ^ ipad) || m)).
        let mut block = [0u8; 64];
        block[..pepper.len()].copy_from_slice(&pepper);
        let inner: Vec<u8> = block.iter().map(|b| b ^ 0x36).chain(key.bytes()).collect();
        let outer: Vec<u8> = block.iter().map(|b| b ^ 0x5c).chain(Sha256::digest(&inner)).collect();
        assert_eq!(stored, <[u8; 32]>::from(Sha256::digest(&outer)));
        assert_eq!(peppered.lookups(&key).collect::<Vec<_>>(), [stored, hash_secret(&key)]);
        assert_ne!(KeyHasher::with_pepper(&[8u8; MIN_PEPPER_LEN]).unwrap().stored(&key), stored, "another pepper, another hash");
        let err = KeyHasher::with_pepper(b"too short").unwrap_err();
        assert!(err.contains("at least 32 bytes") && err.contains("it has 9"), "{err}");
        assert_eq!(format!("{peppered:?}"), "KeyHasher { peppered: true }", "the pepper is never shown");
    }

    #[test]
    fn generated_keys_pass_their_own_check() {
        for env in [KeyEnvironment::Live, KeyEnvironment::Test] {
            let key = generate_key(env);
            assert_eq!(key.secret.len(), KEY_LEN);
            assert!(key.secret.starts_with(env.prefix()));
            assert_eq!(check_format(&key.secret), Ok(env));
        }
    }

    #[test]
    fn a_single_typo_fails_the_checksum() {
        let key = generate_key(KeyEnvironment::Live).secret;
        let mut bytes = key.clone().into_bytes();
        // Change one character of the random part to another base62 character.
        bytes[12] = if bytes[12] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(bytes).unwrap();
        assert_eq!(check_format(&typo), Err(MalformedKey::Checksum));
    }

    #[test]
    fn malformed_keys_are_named() {
        let key = generate_key(KeyEnvironment::Live).secret;
        assert_eq!(check_format("sk_live_abc"), Err(MalformedKey::Prefix));
        assert_eq!(check_format(&key[..KEY_LEN - 1]), Err(MalformedKey::Length));
        let mut bad = key.clone();
        bad.replace_range(10..11, "-");
        assert_eq!(check_format(&bad), Err(MalformedKey::Characters));
        assert_eq!(check_format(""), Err(MalformedKey::Prefix));
    }

    #[test]
    fn hint_shows_prefix_and_last_four_only() {
        let key = generate_key(KeyEnvironment::Live).secret;
        let h = hint(&key);
        assert_eq!(h, format!("kt_live****{}", &key[key.len() - 4..]));
        assert_eq!(hint("short"), "****");
        assert_eq!(hint(&format!("{ADMIN_TOKEN_PREFIX}abcdefghijklmnop")), "kta****mnop");
    }

    #[test]
    fn hash_comparison() {
        let a = hash_secret("a");
        assert!(hashes_equal(&a, &hash_secret("a")));
        assert!(!hashes_equal(&a, &hash_secret("b")));
        // A difference in any one bit of any byte, first word to last.
        for byte in 0..32 {
            for bit in 0..8 {
                let mut b = a;
                b[byte] ^= 1 << bit;
                assert!(!hashes_equal(&a, &b), "byte {byte}, bit {bit}");
                assert!(!hashes_equal(&b, &a), "byte {byte}, bit {bit}");
            }
        }
        assert!(hashes_equal(&[0; 32], &[0; 32]) && hashes_equal(&[0xff; 32], &[0xff; 32]));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = generate_key(KeyEnvironment::Test);
        assert!(!format!("{key:?}").contains(&key.secret));
    }
}
