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
//! - When the queue is full, successful-call events are dropped and counted
//!   (or, with `queue_full = "block"`, the caller waits for room; with
//!   `"sample"`, from half full on a falling share of them is kept); failed,
//!   refused and security events are always queued, never dropped.
//! - The writer is woken once per batch, not once per event: producers push
//!   into a shared vector under a short lock, and the writer swaps the whole
//!   vector out when the flush interval has passed or a batch is full. On a
//!   busy single core this is what keeps the audit trail cheap.

pub mod views;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::config::{AuditConfig, Durability, QueueFullPolicy};
use crate::event::{Category, Event};
use crate::settings::{CallClass, LoggingPolicy, LoggingSettings, Sampler};
use crate::store::audit::erasure::{ErasureJob, ErasureReport, ErasureRequest};
use crate::store::audit::AuditWriterStore;
use crate::store::StoreError;

/// Counters visible to operators (`GET /v1/status`, see [`AuditPipeline::status`]).
#[derive(Debug, Default)]
pub struct PipelineStats {
    pub accepted: AtomicU64,
    pub committed: AtomicU64,
    pub dropped: AtomicU64,
    pub commit_failures: AtomicU64,
}

/// A snapshot of the pipeline for operators, counted since the process started.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PipelineStatus {
    /// Events handed to the writer.
    pub accepted: u64,
    /// Events committed to the store.
    pub committed: u64,
    /// Accepted and not yet committed: in the queue or in the writer's batch.
    pub uncommitted: u64,
    /// Successful-call events dropped because the queue was full (or, under
    /// `queue_full = "sample"`, over half full and not drawn; or the
    /// pipeline was stopping). Failed, refused and security events are never dropped.
    pub dropped: u64,
    /// Batches the store refused; the writer retries them.
    pub commit_failures: u64,
    /// Events waiting in the queue for the writer's next batch.
    pub queued: usize,
    pub queue_capacity: usize,
    /// What a full queue does to successful-call events: `drop`, `block` or `sample`.
    pub queue_full: &'static str,
    /// How long the oldest queued event has waited, in milliseconds (0 when none).
    pub oldest_queued_ms: u64,
}

/// What producers and the writer share.
struct Queue {
    pending: Vec<Event>,
    /// When the oldest pending event arrived; the batch is due one flush interval later.
    oldest: Option<Instant>,
    flush_waiters: Vec<tokio::sync::oneshot::Sender<()>>,
    /// Erasures to run after the events queued before them are committed.
    erasures: Vec<(ErasureRequest, ErasureAnswer)>,
    stopping: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    stats: PipelineStats,
    /// Set by the writer while it sleeps with nothing pending.
    writer_idle: AtomicBool,
    /// Commit waiters wait for the runtime to run out of ready work (see
    /// [`runtime_parking`]) rather than making their batch due at once.
    commit_when_idle: AtomicBool,
    /// Some caller waits for a commit.
    waiting_commit: AtomicBool,
    /// The runtime ran out of ready work while a caller waited for a commit.
    runtime_idle: AtomicBool,
}

/// Pipelines whose commit waiters wait for the runtime to run out of ready
/// work, with their writer threads.
static IDLE_COMMITS: Mutex<Vec<(std::sync::Weak<Shared>, Thread)>> = Mutex::new(Vec::new());
/// Set when the runtime calls [`runtime_parking`] before it parks.
static PARK_HOOK: AtomicBool = AtomicBool::new(false);

/// Says that this process's runtime (one thread) calls [`runtime_parking`]
/// from its `on_thread_park` hook.
pub fn runtime_calls_parking_hook() {
    PARK_HOOK.store(true, Ordering::Relaxed);
}

/// For a one-thread runtime's `on_thread_park` hook: the runtime has no
/// ready task left, so every caller waiting for a commit is waiting for
/// nothing else — their batch is due now, as large as it will get.
pub fn runtime_parking() {
    let Ok(list) = IDLE_COMMITS.try_lock() else { return };
    for (shared, writer) in list.iter() {
        if let Some(shared) = shared.upgrade() {
            if shared.waiting_commit.load(Ordering::Acquire) {
                shared.runtime_idle.store(true, Ordering::Release);
                writer.unpark();
            }
        }
    }
}

impl Shared {
    /// Queues a caller waiting for the commit of everything queued so far;
    /// `true` with it when it is its batch's first.
    fn wait_for_commit(&self, queue: &mut Queue) -> (tokio::sync::oneshot::Receiver<()>, bool) {
        let (ack, committed) = tokio::sync::oneshot::channel();
        queue.flush_waiters.push(ack);
        let first = queue.flush_waiters.len() == 1;
        if first {
            self.waiting_commit.store(true, Ordering::Release);
        }
        (committed, first)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // Pushing to a Vec cannot leave it half-changed, so a poisoned lock is safe to reuse.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The handle every producer of events holds.
pub struct AuditPipeline {
    shared: Arc<Shared>,
    writer_thread: Thread,
    writer: Mutex<Option<JoinHandle<()>>>,
    capacity: usize,
    batch_max: usize,
    queue_full: QueueFullPolicy,
    /// The queue length from which successful-call events are held back:
    /// the capacity, or half of it under `queue_full = "sample"`.
    pressure_at: usize,
    /// `audit.durability = "sync"`: see [`record_committed`](Self::record_committed).
    sync: bool,
    /// Which events are kept; replaced by the control plane on every change.
    policy: ArcSwap<LoggingPolicy>,
    /// The global settings before any admin changed them (from the config).
    defaults: LoggingSettings,
    sampler: Sampler,
    dir: PathBuf,
}

impl AuditPipeline {
    /// Opens the store in `dir` (the audit directory) and starts the writer thread.
    pub fn start(dir: PathBuf, config: &AuditConfig) -> Result<AuditPipeline, StoreError> {
        Self::start_signed(dir, config, None)
    }

    /// [`start`](Self::start), signing checkpoints of every tenant's chain
    /// with `signer` (see [`crate::signing`]).
    pub fn start_signed(dir: PathBuf, config: &AuditConfig, signer: Option<crate::signing::Signer>) -> Result<AuditPipeline, StoreError> {
        let defaults = LoggingSettings { log_api_calls: config.log_api_calls, ..LoggingSettings::default() };
        let mut store = AuditWriterStore::open(&dir)?;
        if let Some(signer) = signer {
            store.enable_checkpoints(signer, config.checkpoint_every_events, config.checkpoint_interval.as_millis() as i64)?;
        }
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue { pending: Vec::new(), oldest: None, flush_waiters: Vec::new(), erasures: Vec::new(), stopping: false }),
            stats: PipelineStats::default(),
            writer_idle: AtomicBool::new(false),
            commit_when_idle: AtomicBool::new(false),
            waiting_commit: AtomicBool::new(false),
            runtime_idle: AtomicBool::new(false),
        });
        let writer = Writer {
            store,
            shared: shared.clone(),
            flush_interval: config.flush_interval,
            batch_max: config.batch_max_events,
            waiting_erasures: Default::default(),
            erasure: None,
            announced: None,
        };
        let handle = std::thread::Builder::new()
            .name("keytrail-audit-writer".into())
            .spawn(move || writer.run())
            .map_err(StoreError::Io)?;
        Ok(AuditPipeline {
            shared,
            writer_thread: handle.thread().clone(),
            writer: Mutex::new(Some(handle)),
            capacity: config.queue_capacity,
            batch_max: config.batch_max_events,
            queue_full: config.queue_full,
            pressure_at: if config.queue_full == QueueFullPolicy::Sample { config.queue_capacity / 2 } else { config.queue_capacity },
            sync: config.durability == Durability::Sync,
            policy: ArcSwap::from_pointee(LoggingPolicy { global: defaults, tenants: Default::default() }),
            defaults,
            sampler: Sampler::new(config.sample_seed.unwrap_or_else(rand::random)),
            dir,
        })
    }

    /// The global logging settings the config file gives, before any change
    /// made over the API.
    pub fn default_settings(&self) -> LoggingSettings {
        self.defaults
    }

    /// Applies new logging settings from the next event on.
    pub fn set_policy(&self, policy: LoggingPolicy) {
        self.policy.store(Arc::new(policy));
    }

    /// The audit directory, for readers.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub fn stats(&self) -> &PipelineStats {
        &self.shared.stats
    }

    /// The counters and the queue as they are now.
    pub fn status(&self) -> PipelineStatus {
        let (queued, oldest) = {
            let queue = self.shared.lock();
            (queue.pending.len(), queue.oldest)
        };
        let stats = &self.shared.stats;
        let committed = stats.committed.load(Ordering::Relaxed);
        let accepted = stats.accepted.load(Ordering::Relaxed);
        PipelineStatus {
            accepted,
            committed,
            // The writer may commit an event before its producer counts it.
            uncommitted: accepted.saturating_sub(committed),
            dropped: stats.dropped.load(Ordering::Relaxed),
            commit_failures: stats.commit_failures.load(Ordering::Relaxed),
            queued,
            queue_capacity: self.capacity,
            queue_full: self.queue_full.as_str(),
            oldest_queued_ms: oldest.map_or(0, |t| t.elapsed().as_millis() as u64),
        }
    }

    /// Hands an event to the writer, unless the logging settings leave it
    /// out. Never waits, unless the operator chose `queue_full = "block"` and
    /// the queue is full.
    pub fn record(&self, event: Event) {
        self.enqueue(event, false);
    }

    /// Whether the gateway's responses wait for their events' commits
    /// (`audit.durability = "sync"`).
    pub fn sync(&self) -> bool {
        self.sync
    }

    /// [`record`](Self::record), and a receiver that hears when the batch
    /// holding the event is committed — and with it every event recorded
    /// before it; `None` when the logging settings leave the event out.
    /// Such an event is never dropped for a full queue: its caller waits
    /// for the commit, which bounds the queue by the callers waiting.
    pub fn record_committed(&self, event: Event) -> Option<tokio::sync::oneshot::Receiver<()>> {
        self.enqueue(event, true)
    }

    fn enqueue(&self, mut event: Event, wait_commit: bool) -> Option<tokio::sync::oneshot::Receiver<()>> {
        if !self.policy.load().keeps(&event, &self.sampler) {
            return None;
        }
        let successful_call = event.category() == Category::Request && CallClass::of(&event) == CallClass::Successful;
        event.sanitize();
        let mut queue = self.shared.lock();
        if queue.stopping {
            drop(queue);
            self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(event_type = %event.event_type, "audit pipeline is stopped; event dropped");
            return None;
        }
        if successful_call && !wait_commit && queue.pending.len() >= self.pressure_at {
            let left_out = match self.queue_full {
                QueueFullPolicy::Drop => Some("audit queue full: successful-call events are being dropped"),
                // Kept with a chance of 1 at half full, falling to 0 at full.
                QueueFullPolicy::Sample => {
                    let room = self.capacity.saturating_sub(queue.pending.len());
                    let kept = room > 0 && self.sampler.keep(room as f64 / (self.capacity - self.pressure_at).max(1) as f64);
                    (!kept).then_some("audit queue over half full: successful-call events are being sampled")
                }
                QueueFullPolicy::Block => None,
            };
            if let Some(warning) = left_out {
                drop(queue);
                let dropped = self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(dropped, "{warning}");
                }
                return None;
            }
            // Under `block`, the operator chose to wait for room rather
            // than lose the event (one `sample` kept has room).
            while queue.pending.len() >= self.capacity && !queue.stopping {
                drop(queue);
                self.writer_thread.unpark();
                std::thread::sleep(Duration::from_micros(200));
                queue = self.shared.lock();
            }
        }
        let first = queue.pending.is_empty();
        if first {
            queue.oldest = Some(Instant::now());
        }
        queue.pending.push(event);
        let full = queue.pending.len() >= self.batch_max;
        // The writer takes the waiters with the events queued before them,
        // and answers them once those are committed.
        let (committed, first_waiter) = match wait_commit.then(|| self.shared.wait_for_commit(&mut queue)) {
            Some((committed, first)) => (Some(committed), first),
            None => (None, false),
        };
        // Under the runtime's park hook the waiter's batch is due when the
        // runtime has nothing else to do (or at the flush interval).
        let first_waiter = first_waiter && !self.shared.commit_when_idle.load(Ordering::Relaxed);
        drop(queue);
        self.shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
        // Wake the writer only when it needs to change what it is waiting for:
        // a first event while it idles (to start the flush clock), a full
        // batch, or a first caller waiting for a commit (a batch is due now;
        // callers that come while it is committed join the next one).
        if (first && self.shared.writer_idle.load(Ordering::Acquire)) || full || first_waiter {
            self.writer_thread.unpark();
        }
        committed
    }

    /// Makes commit waiters wait for the runtime to run out of ready work,
    /// when the runtime calls [`runtime_parking`] before it parks (a
    /// one-thread runtime built with that hook); otherwise does nothing.
    pub fn commit_when_runtime_idle(&self) {
        if !PARK_HOOK.load(Ordering::Relaxed) {
            return;
        }
        let mut list = IDLE_COMMITS.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|(shared, _)| shared.strong_count() > 0);
        list.push((Arc::downgrade(&self.shared), self.writer_thread.clone()));
        self.shared.commit_when_idle.store(true, Ordering::Relaxed);
    }

    /// Under `audit.durability = "sync"`, [`flush`](Self::flush): for an
    /// answer that must not go out before the events it recorded are
    /// committed (admin changes, sign-ins). Under `async`, returns at once.
    pub async fn flush_if_sync(&self) {
        if self.sync {
            self.flush().await;
        }
    }

    /// Waits until every event recorded before this call is committed.
    pub async fn flush(&self) {
        let done = {
            let mut queue = self.shared.lock();
            if queue.stopping {
                return;
            }
            self.shared.wait_for_commit(&mut queue).0
        };
        self.writer_thread.unpark();
        let _ = done.await;
    }

    /// Erases a consumer's personal values from the store and archives
    /// (see [`crate::store::audit::erasure`]), after committing every event
    /// recorded before this call. The writer thread does it between batches.
    pub async fn erase(&self, request: ErasureRequest) -> Result<ErasureReport, StoreError> {
        let (done, answer) = tokio::sync::oneshot::channel();
        {
            let mut queue = self.shared.lock();
            if queue.stopping {
                return Err(StoreError::Corrupt("the audit pipeline is stopping".into()));
            }
            queue.erasures.push((request, done));
        }
        self.writer_thread.unpark();
        answer.await.unwrap_or_else(|_| Err(StoreError::Corrupt("the audit writer stopped before the erasure ran".into())))
    }

    /// Commits everything queued and stops the writer thread.
    pub async fn shutdown(&self) {
        self.shared.lock().stopping = true;
        self.writer_thread.unpark();
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

/// A test-only fault: with `KEYTRAIL_FAILPOINT=slow_commit:<ms>` in the
/// environment, every batch waits that long before it is committed, as on
/// a slow disk (the window in which a crash loses what `async` acknowledged).
fn slow_commit() -> Option<Duration> {
    static SET: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *SET.get_or_init(|| {
        let ms = std::env::var("KEYTRAIL_FAILPOINT").ok()?.strip_prefix("slow_commit:")?.parse().ok()?;
        Some(Duration::from_millis(ms))
    })
}

type ErasureAnswer = tokio::sync::oneshot::Sender<Result<ErasureReport, StoreError>>;

struct Writer {
    store: AuditWriterStore,
    shared: Arc<Shared>,
    flush_interval: Duration,
    batch_max: usize,
    /// Erasures asked for, in order, and the one under way.
    waiting_erasures: std::collections::VecDeque<(ErasureRequest, ErasureAnswer)>,
    erasure: Option<(ErasureJob, ErasureAnswer)>,
    /// Held while the next erasure waits for the audit directory, so that
    /// readers coming one after another cannot keep it out.
    announced: Option<crate::store::audit::erasure::Announcement>,
}

impl Writer {
    fn run(mut self) {
        let mut spare: Vec<Event> = Vec::new();
        loop {
            let (mut batch, waiters, stopping) = {
                let mut queue = self.shared.lock();
                self.waiting_erasures.extend(queue.erasures.drain(..));
                let due = queue.oldest.map(|t| t + self.flush_interval);
                let ready = queue.stopping
                    // Waiters for a commit: at once, unless they wait for
                    // the runtime to run out of work (nothing queued: no wait).
                    || (!queue.flush_waiters.is_empty()
                        && (queue.pending.is_empty()
                            || !self.shared.commit_when_idle.load(Ordering::Relaxed)
                            || self.shared.runtime_idle.swap(false, Ordering::AcqRel)))
                    || self.erasure.is_some()
                    || !self.waiting_erasures.is_empty()
                    || queue.pending.len() >= self.batch_max
                    || due.is_some_and(|d| d <= Instant::now());
                if !ready {
                    self.shared.writer_idle.store(due.is_none(), Ordering::Release);
                    drop(queue);
                    match due {
                        Some(due) => std::thread::park_timeout(due.saturating_duration_since(Instant::now())),
                        None => {
                            // Idle: sign the chains whose interval has passed.
                            self.checkpoint(false);
                            std::thread::park_timeout(Duration::from_secs(1))
                        }
                    }
                    self.shared.writer_idle.store(false, Ordering::Release);
                    continue;
                }
                queue.oldest = None;
                let batch = std::mem::replace(&mut queue.pending, std::mem::take(&mut spare));
                self.shared.waiting_commit.store(false, Ordering::Release);
                // A park seen during the last commit is no signal for the next.
                self.shared.runtime_idle.store(false, Ordering::Release);
                (batch, std::mem::take(&mut queue.flush_waiters), queue.stopping)
            };
            if !batch.is_empty() {
                self.commit(&mut batch);
            }
            // Callers waiting for the commit (flushes, and responses under
            // `durability = "sync"`) hear of it before any erasure step runs.
            for waiter in waiters {
                let _ = waiter.send(());
            }
            self.erasure_step();
            batch.clear();
            spare = batch;
            if stopping && self.shared.lock().pending.is_empty() {
                // An erasure under way is finished before the writer stops.
                while self.erasure.is_some() || !self.waiting_erasures.is_empty() {
                    self.erasure_step();
                }
                self.checkpoint(true);
                // Rollups trail the events by up to a second; write the rest now.
                // (Were this to fail, the next start replays them from the events.)
                if let Err(error) = self.store.flush_rollups() {
                    tracing::error!(%error, "could not write the last rollups; they will be rebuilt at the next start");
                }
                return;
            }
        }
    }

    /// Runs one step of the erasure under way (one day file, or the
    /// archives), starting the next one asked for when none is; answers
    /// the caller when its erasure ends. Between steps the writer commits
    /// the events that came in meanwhile.
    fn erasure_step(&mut self) {
        if self.erasure.is_none() {
            if self.waiting_erasures.is_empty() {
                return;
            }
            let what = format!("an erasure in tenant `{}` (keytrail serve)", self.waiting_erasures[0].0.tenant);
            let held = match crate::store::audit::erasure::try_maintenance_lock(self.store.dir(), &what) {
                Ok(Some(held)) => {
                    self.announced = None;
                    held
                }
                // Retention or a restore (perhaps in another process) holds
                // the directory, or readers do: try again after the next
                // batch, announced, so that readers coming after wait.
                Ok(None) => {
                    if self.announced.is_none() {
                        self.announced = crate::store::audit::erasure::announce_maintenance(self.store.dir(), &what).unwrap_or_else(|error| {
                            tracing::warn!(%error, "an erasure could not announce that it waits for the audit directory");
                            None
                        });
                    }
                    std::thread::sleep(Duration::from_millis(5));
                    return;
                }
                Err(error) => {
                    self.announced = None;
                    let (_, done) = self.waiting_erasures.pop_front().expect("front checked");
                    tracing::error!(%error, "erasure could not start");
                    let _ = done.send(Err(error));
                    return;
                }
            };
            let (request, done) = self.waiting_erasures.pop_front().expect("front checked");
            match self.store.begin_erasure(request, held) {
                Ok(job) => self.erasure = Some((job, done)),
                Err(error) => {
                    tracing::error!(%error, "erasure could not start");
                    let _ = done.send(Err(error));
                    return;
                }
            }
        }
        let (job, _) = self.erasure.as_mut().expect("set above");
        match self.store.erasure_step(job) {
            Ok(false) => {}
            Ok(true) => {
                let (job, done) = self.erasure.take().expect("under way");
                let _ = done.send(Ok(job.into_report()));
            }
            Err(error) => {
                let (job, done) = self.erasure.take().expect("under way");
                tracing::error!(%error, tenant = %job.request().tenant, "erasure failed; what was erased stays erased, run it again");
                let _ = done.send(Err(error));
            }
        }
    }

    /// Signs the chains that are due; a failure is logged and retried at
    /// the next chance (the events themselves are committed).
    fn checkpoint(&mut self, force: bool) {
        if let Err(error) = self.store.checkpoint(force) {
            tracing::error!(%error, "could not write a signed checkpoint; will retry");
        }
    }

    /// Sequences, hashes and commits the batch, retrying until the store
    /// accepts it: a failing disk stalls the writer rather than losing events.
    fn commit(&mut self, batch: &mut Vec<Event>) {
        if let Some(delay) = slow_commit() {
            std::thread::sleep(delay);
        }
        let total = batch.len() as u64;
        let mut attempt = 0u32;
        loop {
            let before = batch.len();
            match self.store.insert_batch(batch) {
                Ok(()) => {
                    self.shared.stats.committed.fetch_add(total, Ordering::Relaxed);
                    self.checkpoint(false);
                    return;
                }
                Err(error) => {
                    attempt += 1;
                    self.shared.stats.commit_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%error, attempt, events = before, "audit commit failed; retrying");
                    std::thread::sleep(Duration::from_millis(100 * u64::from(attempt.min(20))));
                }
            }
        }
    }
}
