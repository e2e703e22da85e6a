//! Verification of a tenant's trail against its signed checkpoints.
//!
//! The chain alone proves that no event was changed, removed, inserted or
//! reordered *between* events that are still there; someone who rewrites
//! every hash from the changed event on, or cuts off the newest events,
//! leaves a chain that still links. Signed checkpoints close that gap: each
//! must match the chain exactly where it was signed, and the chain must
//! reach every checkpoint.

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

/// The checkpoints kept for `tenant`, oldest first.
pub fn checkpoints(dir: &Path, tenant: &str) -> Result<Vec<Checkpoint>, StoreError> {
    let path = dir.join(META_FILE);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let conn = rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let exists: Option<i64> =
        conn.query_row("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'checkpoints'", [], |r| r.get(0)).optional()?;
    if exists.is_none() {
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

/// What `keytrail verify` reports for one tenant.
#[derive(Debug, Clone, Serialize)]
pub struct IntegrityReport {
    pub tenant: String,
    pub ok: bool,
    /// Events whose chain verified, and the last of them.
    pub events: u64,
    pub last_seq: u64,
    pub checkpoints: usize,
    pub last_checkpoint_seq: Option<u64>,
    /// Every problem found, most telling first; each names the sequence
    /// numbers it concerns.
    pub problems: Vec<String>,
}

/// Walks `tenant`'s chain and checks every checkpoint against it: its
/// signature, that the chain reaches it, and that the chain's hash at its
/// `seq` is the one signed.
pub fn verify_tenant(dir: &Path, reader: &AuditReader, tenant: &str, key: &VerifyingKey) -> Result<IntegrityReport, StoreError> {
    let chain = reader.verify(tenant)?;
    let checkpoints = checkpoints(dir, tenant)?;
    let mut problems = Vec::new();
    if let Some(ChainBreak { first_seq, last_seq, reason }) = &chain.first_break {
        problems.push(format!("events {first_seq}..={last_seq}: {reason}"));
    }
    let ends: std::collections::HashMap<u64, [u8; 32]> = chain.block_ends.iter().copied().collect();
    for cp in &checkpoints {
        if !crate::signing::verify(key, cp) {
            problems.push(format!("checkpoint at seq {}: the signature does not verify (forged or altered checkpoint)", cp.seq));
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
    Ok(IntegrityReport {
        tenant: tenant.to_string(),
        ok: problems.is_empty(),
        events: chain.events,
        last_seq: chain.last_seq,
        checkpoints: checkpoints.len(),
        last_checkpoint_seq: checkpoints.last().map(|c| c.seq),
        problems,
    })
}

/// Verifies one tenant, or every tenant in the audit directory `dir`.
pub fn verify_dir(dir: &Path, tenant: Option<&str>, key: &VerifyingKey) -> Result<Vec<IntegrityReport>, StoreError> {
    let reader = AuditReader::open(dir)?;
    let tenants = match tenant {
        Some(t) => vec![t.to_string()],
        None => reader.tenants()?,
    };
    tenants.iter().map(|t| verify_tenant(dir, &reader, t, key)).collect()
}
