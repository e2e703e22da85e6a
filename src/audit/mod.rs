//! The audit pipeline: capture → bounded queue → one batching writer → store.
//!
//! Architecture invariants:
//! - [`AuditPipeline::record`] never blocks and never touches the store: the
//!   request path hands its event over and moves on.
//! - Every event is masked by [`Event::sanitize`] here, before it is queued;
//!   nothing reaches the store unmasked.
//! - One thread owns the writer connection and the chain heads; it gives each
//!   event its tenant's next `seq` and chains its hash to the previous one, so
//!   numbering and hashing follow commit order exactly.
//! - When the queue is full, successful-call events are dropped and counted;
//!   failed, refused and security events go to an overflow list the writer
//!   drains, so they are never dropped.

pub mod views;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{AuditConfig, QueueFullPolicy};
use crate::event::{Category, Event, GENESIS_HASH};
use crate::store::audit::{AuditWriterStore, ChainHead, StoredEvent};
use crate::store::StoreError;

enum Message {
    Event(Box<Event>),
    /// Commit what is queued now and answer when it is committed.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Counters visible to operators.
#[derive(Debug, Default)]
pub struct PipelineStats {
    pub accepted: AtomicU64,
    pub committed: AtomicU64,
    pub dropped: AtomicU64,
    pub commit_failures: AtomicU64,
}

struct Shared {
    overflow: Mutex<VecDeque<Event>>,
    stats: PipelineStats,
}

/// The handle every producer of events holds.
pub struct AuditPipeline {
    tx: Mutex<Option<SyncSender<Message>>>,
    block_when_full: bool,
    log_api_calls: bool,
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    db_path: PathBuf,
}

impl AuditPipeline {
    /// Opens the store and starts the writer thread.
    pub fn start(db_path: PathBuf, config: &AuditConfig) -> Result<AuditPipeline, StoreError> {
        let store = AuditWriterStore::open(&db_path)?;
        let heads = store.load_heads()?;
        let (tx, rx) = sync_channel(config.queue_capacity);
        let shared = Arc::new(Shared { overflow: Mutex::new(VecDeque::new()), stats: PipelineStats::default() });
        let writer = Writer {
            store,
            heads,
            rx,
            shared: shared.clone(),
            flush_interval: config.flush_interval,
            batch_max: config.batch_max_events,
        };
        let handle = std::thread::Builder::new()
            .name("keytrail-audit-writer".into())
            .spawn(move || writer.run())
            .map_err(StoreError::Io)?;
        Ok(AuditPipeline {
            tx: Mutex::new(Some(tx)),
            block_when_full: config.queue_full == QueueFullPolicy::Block,
            log_api_calls: config.log_api_calls,
            shared,
            writer: Mutex::new(Some(handle)),
            db_path,
        })
    }

    /// The audit database file, for readers.
    pub fn db_path(&self) -> &std::path::Path {
        &self.db_path
    }

    pub fn stats(&self) -> &PipelineStats {
        &self.shared.stats
    }

    fn sender(&self) -> Option<SyncSender<Message>> {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Hands an event to the writer. Never waits, unless the operator chose
    /// `queue_full = "block"` and the queue is full.
    pub fn record(&self, mut event: Event) {
        let successful_call = event.category() == Category::Request && event.status_code.is_some_and(|s| s < 400);
        if successful_call && !self.log_api_calls {
            return;
        }
        event.sanitize();
        let Some(tx) = self.sender() else {
            self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(event_type = %event.event_type, "audit pipeline is stopped; event dropped");
            return;
        };
        match tx.try_send(Message::Event(Box::new(event))) {
            Ok(()) => {
                self.shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(Message::Event(event))) if successful_call && self.block_when_full => {
                match tx.send(Message::Event(event)) {
                    Ok(()) => self.shared.stats.accepted.fetch_add(1, Ordering::Relaxed),
                    Err(_) => self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed),
                };
            }
            Err(TrySendError::Full(Message::Event(event))) => {
                if successful_call {
                    let dropped = self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    if dropped.is_power_of_two() {
                        tracing::warn!(dropped, "audit queue full: successful-call events are being dropped");
                    }
                } else {
                    self.shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
                    self.shared.overflow.lock().unwrap_or_else(|e| e.into_inner()).push_back(*event);
                }
            }
            Err(TrySendError::Full(_)) => unreachable!("only events are sent here"),
            Err(TrySendError::Disconnected(_)) => {
                self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!("audit writer has stopped; event dropped");
            }
        }
    }

    /// Waits until every event recorded before this call is committed.
    pub async fn flush(&self) {
        let Some(tx) = self.sender() else { return };
        let (ack, done) = tokio::sync::oneshot::channel();
        let sent = tokio::task::spawn_blocking(move || tx.send(Message::Flush(ack)).is_ok()).await.unwrap_or(false);
        if sent {
            let _ = done.await;
        }
    }

    /// Commits everything queued and stops the writer thread.
    pub async fn shutdown(&self) {
        self.flush().await;
        // Dropping the only sender ends the writer's loop after its last batch.
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

struct Writer {
    store: AuditWriterStore,
    heads: HashMap<String, ChainHead>,
    rx: Receiver<Message>,
    shared: Arc<Shared>,
    flush_interval: Duration,
    batch_max: usize,
}

impl Writer {
    fn run(mut self) {
        let mut batch: Vec<Event> = Vec::with_capacity(self.batch_max.min(16_384));
        let mut acks = Vec::new();
        let mut open = true;
        while open {
            // Wait for the first message of a batch; wake up now and then to
            // drain the overflow list even when the queue is quiet.
            match self.rx.recv_timeout(self.flush_interval) {
                Ok(message) => self.take(message, &mut batch, &mut acks),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => open = false,
            }
            // Group commit: gather until the batch is full, the interval since
            // the first event has passed, or someone asked for a flush.
            let deadline = Instant::now() + self.flush_interval;
            while open && acks.is_empty() && batch.len() < self.batch_max && !batch.is_empty() {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                match self.rx.recv_timeout(deadline - now) {
                    Ok(message) => self.take(message, &mut batch, &mut acks),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => open = false,
                }
            }
            if !open {
                // Take whatever is still queued before exiting.
                while let Ok(message) = self.rx.try_recv() {
                    self.take(message, &mut batch, &mut acks);
                }
            }
            batch.extend(self.shared.overflow.lock().unwrap_or_else(|e| e.into_inner()).drain(..));
            if !batch.is_empty() {
                self.commit(&mut batch);
            }
            for ack in acks.drain(..) {
                let _ = ack.send(());
            }
        }
    }

    fn take(&self, message: Message, batch: &mut Vec<Event>, acks: &mut Vec<tokio::sync::oneshot::Sender<()>>) {
        match message {
            Message::Event(event) => batch.push(*event),
            Message::Flush(ack) => acks.push(ack),
        }
    }

    /// Sequences, hashes and commits the batch, retrying until the store
    /// accepts it: a failing disk stalls the writer rather than losing events.
    fn commit(&mut self, batch: &mut Vec<Event>) {
        let mut attempt = 0u32;
        loop {
            let mut new_heads: HashMap<String, ChainHead> = HashMap::new();
            let mut stored = Vec::with_capacity(batch.len());
            for event in batch.iter() {
                let head = new_heads
                    .get(event.tenant_id.as_str())
                    .or_else(|| self.heads.get(&event.tenant_id))
                    .copied()
                    .unwrap_or(ChainHead { seq: 0, hash: GENESIS_HASH });
                let mut event = event.clone();
                event.seq = head.seq + 1;
                let hash = event.chain_hash(&head.hash);
                let next = ChainHead { seq: event.seq, hash };
                match new_heads.get_mut(event.tenant_id.as_str()) {
                    Some(slot) => *slot = next,
                    None => {
                        new_heads.insert(event.tenant_id.clone(), next);
                    }
                }
                stored.push(StoredEvent { event, hash });
            }
            match self.store.insert_batch(&stored) {
                Ok(()) => {
                    for (tenant, head) in new_heads {
                        self.heads.insert(tenant, head);
                    }
                    self.shared.stats.committed.fetch_add(stored.len() as u64, Ordering::Relaxed);
                    batch.clear();
                    return;
                }
                Err(error) => {
                    attempt += 1;
                    self.shared.stats.commit_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%error, attempt, events = batch.len(), "audit commit failed; retrying");
                    std::thread::sleep(Duration::from_millis(100 * u64::from(attempt.min(20))));
                }
            }
        }
    }
}
