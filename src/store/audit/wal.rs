//! WAL checkpoints of the day files, off the writer thread.
//!
//! SQLite checkpoints a WAL in the connection whose commit crosses
//! `wal_autocheckpoint`: it copies the pages into the database file and
//! fsyncs it, and that commit waits. On the writer thread that stalled
//! every caller: under `audit.durability = "sync"` (many small commits,
//! ~3.4 KB of WAL per event) a checkpoint came every second or so and its
//! fsync held every answer for ~35 ms (the gateway's p99). So the writer's
//! day connections never checkpoint (`wal_autocheckpoint = 0`), and this
//! thread runs a `PASSIVE` checkpoint — which never blocks the writer —
//! on its own connection when the writer says a file's WAL has grown.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// Commits to one day file between two checkpoints (each commit adds a few
/// pages to the WAL however small it is)...
pub(super) const COMMITS_PER_CHECKPOINT: u32 = 1_000;
/// ...or bytes of blocks and dictionary strings committed, whichever comes
/// first: what bounds the WAL when events are large (application events
/// carry up to 32 KB of JSON each), where a count of events would not.
pub(super) const BYTES_PER_CHECKPOINT: u64 = 32 << 20;

pub(super) struct WalCheckpointer {
    asks: Option<Sender<PathBuf>>,
    thread: Option<JoinHandle<()>>,
}

impl WalCheckpointer {
    pub(super) fn start() -> std::io::Result<WalCheckpointer> {
        let (asks, asked) = channel::<PathBuf>();
        let thread = std::thread::Builder::new().name("keytrail-wal-checkpoint".into()).spawn(move || {
            while let Ok(mut path) = asked.recv() {
                // Asks that piled up for the same file are one checkpoint.
                while let Ok(next) = asked.try_recv() {
                    if next != path {
                        checkpoint(&path);
                        path = next;
                    }
                }
                checkpoint(&path);
            }
        })?;
        Ok(WalCheckpointer { asks: Some(asks), thread: Some(thread) })
    }

    /// Asks for a checkpoint of the day file at `path`.
    pub(super) fn ask(&self, path: PathBuf) {
        if let Some(asks) = &self.asks {
            let _ = asks.send(path);
        }
    }
}

impl Drop for WalCheckpointer {
    fn drop(&mut self) {
        drop(self.asks.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Copies what it can of the WAL into the file; a file that is gone
/// (retention deleted a closed day) or busy is left for next time.
fn checkpoint(path: &Path) {
    // Never created here: a missing file stays missing.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let result = Connection::open_with_flags(path, flags).and_then(|conn| {
        conn.busy_timeout(Duration::from_secs(1))?;
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
    });
    if let Err(error) = result {
        tracing::debug!(%error, path = %path.display(), "WAL checkpoint skipped");
    }
}
