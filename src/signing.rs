//! Signed checkpoints: the writer signs (Ed25519) a tenant's latest `seq`
//! and chain hash now and then, so that a rewritten or truncated chain no
//! longer matches what was signed while the key was honest.
//!
//! The private key is a 32-byte seed in `<data-dir>/signing.key` (created
//! with mode 0600 at the first start); its public half is printed by
//! `keytrail keys public` and is all a verifier needs.
//!
//! The signed message is versioned and length-prefixed:
//! `keytrail-checkpoint-v1 ‖ 0 ‖ len(tenant) u32 BE ‖ tenant ‖ seq u64 BE ‖
//! hash (32) ‖ signed_at_ms i64 BE`.
//!
//! Other documents (archive manifests) are signed with the same key over
//! `domain ‖ 0 ‖ bytes` ([`Signer::sign_bytes`], [`verify_bytes`]): the
//! domain names the kind of document, so no signature can be replayed as
//! another kind (no domain is a prefix of `keytrail-checkpoint-v1`).

use std::io::Write;
use std::path::Path;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::Serialize;

/// The signing key's file in the data directory.
pub const KEY_FILE: &str = "signing.key";

/// One signed checkpoint of a tenant's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Checkpoint {
    pub tenant: String,
    pub seq: u64,
    #[serde(serialize_with = "hex_bytes")]
    pub hash: [u8; 32],
    pub signed_at_ms: i64,
    #[serde(serialize_with = "hex_bytes")]
    pub signature: [u8; 64],
}

fn hex_bytes<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex(bytes))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads `2 × N` hexadecimal digits.
pub fn from_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.trim();
    if text.len() != 2 * N || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn message(tenant: &str, seq: u64, hash: &[u8; 32], signed_at_ms: i64) -> Vec<u8> {
    let mut m = Vec::with_capacity(80 + tenant.len());
    m.extend_from_slice(b"keytrail-checkpoint-v1\0");
    m.extend_from_slice(&(tenant.len() as u32).to_be_bytes());
    m.extend_from_slice(tenant.as_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m.extend_from_slice(&signed_at_ms.to_be_bytes());
    m
}

/// The writer's signing key.
pub struct Signer {
    key: SigningKey,
}

impl Signer {
    /// Reads the key at `path`, or creates one (readable by the owner only).
    pub fn load_or_create(path: &Path) -> std::io::Result<Signer> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    std::io::Error::other(format!("{} is not a keytrail signing key (32 bytes expected)", path.display()))
                })?;
                Ok(Signer { key: SigningKey::from_bytes(&seed) })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let seed: [u8; 32] = rand::random();
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                options.open(path)?.write_all(&seed)?;
                Ok(Signer { key: SigningKey::from_bytes(&seed) })
            }
            Err(e) => Err(e),
        }
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    pub fn sign(&self, tenant: &str, seq: u64, hash: [u8; 32], signed_at_ms: i64) -> Checkpoint {
        let signature = self.key.sign(&message(tenant, seq, &hash, signed_at_ms)).to_bytes();
        Checkpoint { tenant: tenant.to_string(), seq, hash, signed_at_ms, signature }
    }

    /// A secret derived from this key for `domain` and `bytes`:
    /// HMAC-SHA-256 keyed with the key's seed over `domain ‖ 0 ‖ bytes`.
    /// Secrets handed out once (webhook signing secrets) are derived
    /// again when needed, so the store never holds them.
    pub fn derive_secret(&self, domain: &str, bytes: &[u8]) -> [u8; 32] {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.key.as_bytes()).expect("HMAC takes keys of any length");
        mac.update(&domain_message(domain, bytes));
        mac.finalize().into_bytes().into()
    }

    /// Signs `bytes` as a document of kind `domain` (see [`verify_bytes`]).
    pub fn sign_bytes(&self, domain: &str, bytes: &[u8]) -> [u8; 64] {
        self.key.sign(&domain_message(domain, bytes)).to_bytes()
    }
}

fn domain_message(domain: &str, bytes: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(domain.len() + 1 + bytes.len());
    m.extend_from_slice(domain.as_bytes());
    m.push(0);
    m.extend_from_slice(bytes);
    m
}

/// Whether `signature` was made by the holder of `key` over `bytes` as a
/// document of kind `domain`.
pub fn verify_bytes(key: &VerifyingKey, domain: &str, bytes: &[u8], signature: &[u8; 64]) -> bool {
    key.verify_strict(&domain_message(domain, bytes), &Signature::from_bytes(signature)).is_ok()
}

/// The public key as printed by `keytrail keys public`: 64 hex digits.
pub fn public_key_text(key: &VerifyingKey) -> String {
    hex(key.as_bytes())
}

/// Reads a public key printed by `keytrail keys public`. A weak key (one
/// of small order, such as 64 zeros) is refused: signatures that verify
/// under it can be made without any secret. Checks are strict for the
/// same reason (`verify_strict`); keytrail's own signatures always are.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = from_hex(text).ok_or("a public key is 64 hexadecimal digits")?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| "not a valid Ed25519 public key".to_string())?;
    if key.is_weak() {
        return Err("a weak Ed25519 public key (of small order): anyone could sign for it; give the key `keytrail keys public` prints".to_string());
    }
    Ok(key)
}

/// Whether the checkpoint was signed by the holder of `key`.
pub fn verify(key: &VerifyingKey, cp: &Checkpoint) -> bool {
    let message = message(&cp.tenant, cp.seq, &cp.hash, cp.signed_at_ms);
    key.verify_strict(&message, &Signature::from_bytes(&cp.signature)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Verifier;

    #[test]
    fn a_weak_public_key_is_refused_and_signatures_are_checked_strictly() {
        // The identity point: with it, [s]B = R holds for a forged R whatever the message.
        let identity = format!("01{}", "0".repeat(62));
        let err = parse_public_key(&identity).unwrap_err();
        assert!(err.contains("weak"), "{err}");
        assert!(parse_public_key(&"0".repeat(64)).is_err());
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::load_or_create(&dir.path().join("k")).unwrap();
        let key = parse_public_key(&public_key_text(&signer.public_key())).unwrap();
        let cp = signer.sign("acme", 3, [7; 32], 1_700_000_000_000);
        assert!(verify(&key, &cp));
        let sig = signer.sign_bytes("doc", b"bytes");
        assert!(verify_bytes(&key, "doc", b"bytes", &sig));
        // A forgery under the identity key: R = [s]B with s = 1 (the base
        // point), which the lenient check accepts for any message.
        let weak = VerifyingKey::from_bytes(&from_hex::<32>(&identity).unwrap()).unwrap();
        let mut forged = [0u8; 64];
        forged[..32].copy_from_slice(&from_hex::<32>(&format!("58{}", "66".repeat(31))).unwrap());
        forged[32] = 1;
        assert!(weak.verify(&domain_message("doc", b"anything"), &Signature::from_bytes(&forged)).is_ok(), "the lenient check takes the forgery");
        assert!(!verify_bytes(&weak, "doc", b"anything", &forged), "the strict one does not");
    }

    #[test]
    fn a_checkpoint_verifies_until_any_part_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        let signer = Signer::load_or_create(&path).unwrap();
        let again = Signer::load_or_create(&path).unwrap();
        assert_eq!(signer.public_key(), again.public_key(), "the key is kept");
        let cp = signer.sign("acme", 42, [7; 32], 1_700_000_000_000);
        let public = parse_public_key(&public_key_text(&signer.public_key())).unwrap();
        assert!(verify(&public, &cp));
        for changed in [
            Checkpoint { seq: 43, ..cp.clone() },
            Checkpoint { tenant: "acmf".into(), ..cp.clone() },
            Checkpoint { hash: [8; 32], ..cp.clone() },
            Checkpoint { signed_at_ms: cp.signed_at_ms + 1, ..cp.clone() },
        ] {
            assert!(!verify(&public, &changed), "{changed:?}");
        }
        let other = Signer::load_or_create(&dir.path().join("other.key")).unwrap();
        assert!(!verify(&other.public_key(), &cp));

        // Documents: bound to their bytes, their kind and the key.
        let signature = signer.sign_bytes("keytrail-archive-manifest-v1", b"{\"events\":3}");
        assert!(verify_bytes(&public, "keytrail-archive-manifest-v1", b"{\"events\":3}", &signature));
        assert!(!verify_bytes(&public, "keytrail-archive-manifest-v1", b"{\"events\":4}", &signature));
        assert!(!verify_bytes(&public, "keytrail-other-v1", b"{\"events\":3}", &signature));
        assert!(!verify_bytes(&other.public_key(), "keytrail-archive-manifest-v1", b"{\"events\":3}", &signature));
        assert!(parse_public_key("abc").is_err());
        std::fs::write(dir.path().join("bad.key"), b"short").unwrap();
        assert!(Signer::load_or_create(&dir.path().join("bad.key")).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
}
