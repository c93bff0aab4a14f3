//! The forwarder: drains every class of the store to Kafka, at least once, in order.
//!
//! ## Delivery contract
//! A record leaves its class only after Kafka acknowledged it (`acks=all`, idempotent
//! producer) or it was moved to the dead-letter log. Per class, the acknowledged position
//! ([`Store::ack`]) only ever moves over a *contiguous* run of finished records, so after a
//! crash, a producer reset or a failed send, everything after it is sent again: at-least-once,
//! and every copy of a record carries the same `ferry.seq` header for downstream deduplication.
//!
//! ## The loop
//! One task owns all state; nothing is shared with it except the control/status cell of the
//! [`ForwarderHandle`] and the queue that carries delivery reports from librdkafka's poll
//! thread in batches ([`kafka::ReportQueue`]).
//!
//! ```text
//!            ┌──────────── wake: new commit in a class / report / control / timer ───────────┐
//!            ▼                                                                               │
//!   reports ─▶ per-class in-flight table (seq order) ─▶ contiguous Done prefix ─▶ store.ack  │
//!            │   Permanent error → dead-letter (fsync) → Done                                │
//!            │   Retriable error → class stops, waits for its in-flight, rewinds to acked+1,  │
//!            │                     backs off (capped exponential)                            │
//!            │   Fatal error / stall watchdog → new producer, every class rewinds             │
//!            ▼                                                                               │
//!   send: window open (or drain-now) → policy picks a class → its batch (read ahead) →       │
//!         throttle tokens → map → produce, while in-flight bytes < limit ───────────────────────┘
//! ```
//!
//! Order: within a class records are produced in sequence order; the idempotent producer keeps
//! that order per partition, and a rewind re-sends from the first un-acknowledged record, so a
//! key's records never arrive out of order (a re-sent run may repeat records already delivered).
//!
//! Memory: bounded by `max_in_flight_bytes` (librdkafka's copy of each record until its
//! report; `max_in_flight_records`, config `forward.max_in_flight`, caps the count as well)
//! plus at most two read batches per class (`batch_max_records` / `batch_max_bytes` each: the one
//! being sent and the next, read ahead on a blocking thread so store reads overlap with sends;
//! a rewind drops both). The in-flight table keeps only sequence, position,
//! size and state per record, not the record: a record that fails permanently is read again
//! from the store for the dead-letter log (it is not acknowledged, so it is still there).
//!
//! ## Link state
//! `connecting` until the first report; `online` after a successful delivery; `offline` when
//! librdkafka reports all brokers down or a send fails with a transport error or timeout.
//! The watchdog runs while records await delivery (in flight, or a class backing off after a
//! failure): no acknowledgement for `stall_timeout` while not offline is a *stall* (counted in
//! `stalls`, link `stalled`) and recreates the producer; while offline it also recreates the
//! producer, spaced by a backoff that doubles per reset up to `backoff_max`, because a producer
//! can stay wedged after a broker restart (measured with tansu: endless timeouts until a fresh
//! producer id). Failed classes back off exponentially (`backoff_min`..`backoff_max`) before
//! re-sending; warnings are rate-limited (one per 30 s with a count of the suppressed ones).
//!
//! ## Shutdown
//! Stop taking new work, wait up to `shutdown_flush_timeout` for in-flight reports, persist the
//! acknowledged positions, drop the producer. Whatever was still in flight is sent again after
//! the restart.

pub mod clock;
pub mod deadletter;
pub mod eta;
pub mod kafka;
pub mod mapping;
pub mod policy;
pub mod schedule;
pub mod throttle;
pub mod window;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::store::{ClassId, Position, Reader, Store, StoreError, StoredRecord};
use deadletter::DeadLetters;
use kafka::{
    classify, Disposition, HeaderBuilder, KafkaOptions, KafkaProducer, KafkaSetupError, OutRecord,
    ProducerEvent, ReportQueue,
};
use mapping::{ClassMappingConfig, Mapper, MappingError};
use policy::{Candidate, Policy};

/// Forwarder settings. Defaults suit a gateway on a modest link; tests shorten the timers.
#[derive(Debug, Clone)]
pub struct ForwarderOptions {
    /// Gateway id: the `ferry.gateway` header and the first part of `ferry.seq`.
    pub gateway: String,
    pub kafka: KafkaOptions,
    /// Mapping per class name. A class without an entry maps to topic `ferry.{class}`, no key.
    pub mappings: Vec<(String, ClassMappingConfig)>,
    /// One read batch: at most this many records (default 1000)...
    pub batch_max_records: usize,
    /// ...and about this many logical bytes (default 1 MiB).
    pub batch_max_bytes: usize,
    /// Bytes produced but not yet reported, over all classes (default 16 MiB). Bounds memory
    /// and the amount re-sent after a crash.
    pub max_in_flight_bytes: usize,
    /// Records produced but not yet reported, over all classes (default 10,000, config
    /// `forward.max_in_flight`). Bounds the in-flight table and the re-sent range after a
    /// crash when records are small.
    pub max_in_flight_records: usize,
    /// Records in flight and no acknowledgement for this long while the link is not known to
    /// be down: recreate the producer (default 60 s).
    pub stall_timeout: Duration,
    /// Backoff after a failure: starts at `backoff_min` (default 250 ms), doubles per
    /// consecutive failure, capped at `backoff_max` (default 30 s).
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Acknowledged positions are persisted at most this often (default 200 ms): each persist
    /// is an fdatasync, and losing the last one only re-sends.
    pub ack_interval: Duration,
    /// How long shutdown waits for in-flight reports (default 10 s).
    pub shutdown_flush_timeout: Duration,
}

impl ForwarderOptions {
    pub fn new(gateway: impl Into<String>, kafka: KafkaOptions) -> Self {
        ForwarderOptions {
            gateway: gateway.into(),
            kafka,
            mappings: Vec::new(),
            batch_max_records: 1000,
            batch_max_bytes: 1 << 20,
            max_in_flight_bytes: 16 << 20,
            max_in_flight_records: 10_000,
            stall_timeout: Duration::from_secs(60),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            ack_interval: Duration::from_millis(200),
            shutdown_flush_timeout: Duration::from_secs(10),
        }
    }
}

/// Errors that stop the forwarder from starting. Once running, it handles failures itself.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    #[error("forward mapping: {0}")]
    Mapping(#[from] MappingError),
    #[error("mapping configured for class `{0}`, which the store does not have: fix [forward] mappings or [classes]")]
    UnknownMappingClass(String),
    #[error("opening a reader for class `{class}`: {source}")]
    Store {
        class: String,
        #[source]
        source: StoreError,
    },
}

/// Errors from control calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("unknown class `{0}` (see `ferry status` for the class names)")]
    UnknownClass(String),
}

/// Link state as seen from the delivery reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    Connecting,
    Online,
    Offline,
    Stalled,
}

/// Per-class part of [`ForwarderStatus`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClassStatus {
    pub name: String,
    pub paused: bool,
    pub acked_seq: u64,
    pub in_flight_records: u64,
    pub in_flight_bytes: u64,
    pub sent_records: u64,
    pub acked_records: u64,
    pub dead_lettered: u64,
    /// Records produced again after a failure or reset (duplicates downstream are possible).
    pub resent_records: u64,
    /// Milliseconds until the class retries after a failure (0 = not backing off).
    pub backoff_ms: u64,
    /// Sequence numbers the reader found missing from the log (dropped by the store).
    pub skipped_records: u64,
}

/// A snapshot of the forwarder for `ferry status` and the control API.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ForwarderStatus {
    pub link: LinkState,
    /// Unix ms when `link` last changed.
    pub link_since_ms: u64,
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<u64>,
    pub window_open: bool,
    /// Unix ms of the next window change, when known.
    pub window_next_change_ms: Option<u64>,
    /// Unix ms until which "drain now" overrides the window.
    pub drain_now_until_ms: Option<u64>,
    /// Throttle rate in bytes/s (None: unlimited).
    pub throttle_bytes_per_sec: Option<u64>,
    /// Bytes left in today's byte budget (None: no budget).
    pub budget_left_bytes: Option<u64>,
    pub all_paused: bool,
    pub producer_generation: u64,
    pub producer_resets: u64,
    pub stalls: u64,
    pub sent_records: u64,
    pub sent_bytes: u64,
    pub acked_records: u64,
    pub acked_bytes: u64,
    pub dead_lettered: u64,
    /// Entries waiting in the dead-letter log (all time, not just this run).
    pub dead_letter_entries: u64,
    pub resent_records: u64,
    pub in_flight_bytes: u64,
    /// Acknowledged records and bytes per second over the last few seconds.
    pub drain_records_per_sec: f64,
    pub drain_bytes_per_sec: f64,
    pub classes: Vec<ClassStatus>,
}

#[derive(Debug, Default)]
struct Control {
    all_paused: bool,
    paused: Vec<bool>,
    drain_until: Option<(Instant, u64)>,
}

struct Shared {
    class_names: Vec<String>,
    drain: Arc<DrainContext>,
    control: Mutex<Control>,
    status: Mutex<ForwarderStatus>,
    wake: Notify,
}

/// Control and status of a running forwarder. Cheap to clone.
#[derive(Clone)]
pub struct ForwarderHandle {
    shared: Arc<Shared>,
}

/// What the drain forecast needs from the forwarder besides its status: the policy's model
/// and the Kafka mapping (to measure backlogs in the bytes the throttle counts).
#[derive(Debug, Clone)]
pub struct DrainContext {
    pub model: eta::DrainModel,
    pub mapper: Mapper,
}

impl ForwarderHandle {
    pub fn status(&self) -> ForwarderStatus {
        self.shared.status.lock().clone()
    }

    /// The policy model and mapping for [`eta`] forecasts.
    pub fn drain_context(&self) -> Arc<DrainContext> {
        self.shared.drain.clone()
    }

    fn class_index(&self, class: &str) -> Result<usize, ControlError> {
        self.shared
            .class_names
            .iter()
            .position(|n| n == class)
            .ok_or_else(|| ControlError::UnknownClass(class.to_string()))
    }

    /// Pauses one class (`Some(name)`) or everything (`None`). In-flight records still finish.
    pub fn pause(&self, class: Option<&str>) -> Result<(), ControlError> {
        self.set_paused(class, true)
    }

    /// Resumes one class or everything. Resuming all also clears every per-class pause.
    pub fn resume(&self, class: Option<&str>) -> Result<(), ControlError> {
        self.set_paused(class, false)
    }

    fn set_paused(&self, class: Option<&str>, paused: bool) -> Result<(), ControlError> {
        let idx = class.map(|c| self.class_index(c)).transpose()?;
        {
            let mut c = self.shared.control.lock();
            match idx {
                Some(i) => c.paused[i] = paused,
                None => {
                    c.all_paused = paused;
                    if !paused {
                        c.paused.iter_mut().for_each(|p| *p = false);
                    }
                }
            }
        }
        tracing::info!(
            class = class.unwrap_or("*"),
            paused,
            "forwarder pause state changed by operator"
        );
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Sends regardless of the connectivity window for `duration` (the throttle still applies).
    pub fn drain_now_for(&self, duration: Duration) {
        let until = Instant::now() + duration;
        let until_ms = unix_ms() + duration.as_millis() as u64;
        self.shared.control.lock().drain_until = Some((until, until_ms));
        tracing::info!(
            seconds = duration.as_secs(),
            "drain-now override set by operator"
        );
        self.shared.wake.notify_one();
    }

    /// Ends a drain-now override early.
    pub fn cancel_drain_now(&self) {
        self.shared.control.lock().drain_until = None;
        self.shared.wake.notify_one();
    }
}

/// What [`Forwarder::run`] reports when it returns.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ForwarderReport {
    /// Records still in flight when the flush timeout ran out (they are re-sent on restart).
    pub unflushed_records: u64,
    pub status: ForwarderStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Pending,
    Done,
    Failed,
}

/// One record between `send` and its delivery report. The record itself is not kept (see
/// "Memory" above).
struct Slot {
    seq: u64,
    logical_end: u64,
    bytes: usize,
    state: SlotState,
}

impl Slot {
    fn new(stored: &StoredRecord, bytes: usize, state: SlotState) -> Slot {
        Slot {
            seq: stored.seq,
            logical_end: stored.logical_end,
            bytes,
            state,
        }
    }
}

/// The index of `seq` in a class's in-flight table. Slots are in sequence order and, between
/// rewinds, usually contiguous, so the offset from the front finds it directly; when the
/// reader skipped records the store dropped, the offset misses and a binary search finds it.
fn slot_index(inflight: &VecDeque<Slot>, seq: u64) -> Option<usize> {
    let front = inflight.front()?.seq;
    if let Some(i) = seq.checked_sub(front).and_then(|d| usize::try_from(d).ok()) {
        if inflight.get(i).is_some_and(|s| s.seq == seq) {
            return Some(i);
        }
    }
    inflight.binary_search_by_key(&seq, |s| s.seq).ok()
}

/// A store read running on a blocking thread: it holds the class's reader until joined.
type ReadTask = JoinHandle<(Reader, Result<Vec<StoredRecord>, StoreError>)>;

struct ClassState {
    id: ClassId,
    name: String,
    /// `None` only while a blocking read (`ahead`) has it.
    reader: Option<Reader>,
    /// Read but not yet produced (the current batch, or one cut short by the throttle or the
    /// in-flight limit).
    staged: VecDeque<StoredRecord>,
    /// The next batch, read (zstd decompression, decoding) on a blocking thread while the
    /// staged one is produced, so store reads and Kafka sends overlap. At most one per class.
    ahead: Option<ReadTask>,
    /// `reader.next_seq()` when `ahead` started (to spot records the store dropped).
    ahead_from: u64,
    /// The class rewound while `ahead` held the reader: when joined, its batch is dropped and
    /// the reader moved back to the acknowledged position.
    ahead_stale: bool,
    inflight: VecDeque<Slot>,
    inflight_bytes: usize,
    acked: Position,
    /// Last position handed to `store.ack`.
    persisted: Position,
    /// A retriable failure: no new sends until in-flight drains, then rewind.
    failed: bool,
    retry_at: Option<Instant>,
    failures: u32,
    /// Highest sequence ever produced, to count re-sends.
    high_sent: u64,
    status: ClassStatus,
}

impl ClassState {
    /// Back to the first unacknowledged record (after a failure or a producer reset, with
    /// nothing of the class in flight): staged and read-ahead records are dropped, the reader
    /// is repositioned (now, or when the read it is lent to comes back).
    fn rewind(&mut self) {
        self.staged.clear();
        let from = self.acked.seq + 1;
        match self.reader.as_mut() {
            Some(r) => r.seek(from),
            None => self.ahead_stale = true,
        }
    }
}

struct RateSample {
    at: Instant,
    records: u64,
    bytes: u64,
}

/// Rate-limits a repeated warning: logs the first, then at most one per `every`, with the
/// number suppressed in between.
struct LogLimiter {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    fn new(every: Duration) -> Self {
        LogLimiter {
            every,
            last: None,
            suppressed: 0,
        }
    }
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// The forwarder. Build with [`Forwarder::new`], drive with [`Forwarder::run`].
pub struct Forwarder {
    /// Bumped once per loop iteration for the systemd watchdog, with the longest the loop may
    /// sleep between beats ([`Forwarder::with_heartbeat`]).
    heartbeat: Option<(crate::telemetry::notify::Heartbeat, Duration)>,
    store: Store,
    deadletters: DeadLetters,
    opts: ForwarderOptions,
    mapper: Mapper,
    policy: Box<dyn Policy>,
    shared: Arc<Shared>,
    classes: Vec<ClassState>,
    producer: Option<KafkaProducer>,
    generation: u64,
    reports: Arc<ReportQueue>,
    /// Reused buffer for one batch of reports.
    report_buf: Vec<ProducerEvent>,
    /// Reused buffer for the wire sizes of one run of records.
    size_buf: Vec<usize>,
    /// Reused per-wake-up buffers of [`Forwarder::step`]: pause flags, classes found dry,
    /// send candidates.
    paused_buf: Vec<bool>,
    dry_buf: Vec<bool>,
    candidates_buf: Vec<Candidate>,
    watchers: Vec<JoinHandle<()>>,
    inflight_bytes: usize,
    link: LinkState,
    link_since_ms: u64,
    last_error: Option<(String, u64)>,
    /// Last time an acknowledgement arrived or nothing was in flight.
    last_progress: Instant,
    reset_wanted: Option<String>,
    reset_failures: u32,
    reset_not_before: Option<Instant>,
    stalls: u64,
    resets: u64,
    totals: ClassStatus,
    sent_bytes: u64,
    acked_bytes: u64,
    last_ack_persist: Instant,
    throttle_wait: Option<Instant>,
    rate: (RateSample, f64, f64),
    warn_limiter: LogLimiter,
    shutting_down: bool,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Transport-level trouble: the link is down rather than the record being wrong.
fn is_link_error(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::MessageTimedOut
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::NetworkException
                | RDKafkaErrorCode::Resolve
        )
    )
}

impl Forwarder {
    /// Builds the producer, the mapping and one reader per class (from its acknowledged
    /// position). Fails on configuration errors; a broker that is down is not an error.
    pub fn new(
        store: Store,
        deadletters: DeadLetters,
        opts: ForwarderOptions,
        policy: Box<dyn Policy>,
    ) -> Result<(Forwarder, ForwarderHandle), ForwardError> {
        let names = store.class_names();
        for (name, _) in &opts.mappings {
            if !names.contains(name) {
                return Err(ForwardError::UnknownMappingClass(name.clone()));
            }
        }
        let mappings: Vec<(String, ClassMappingConfig)> = names
            .iter()
            .map(|n| {
                let cfg = opts
                    .mappings
                    .iter()
                    .find(|(m, _)| m == n)
                    .map(|(_, c)| c.clone())
                    .unwrap_or_else(|| ClassMappingConfig {
                        topic: "ferry.{class}".into(),
                        key: None,
                        rules: Vec::new(),
                    });
                (n.clone(), cfg)
            })
            .collect();
        let mapper = Mapper::new(opts.gateway.clone(), &mappings)?;

        let reports = ReportQueue::new();
        let producer = KafkaProducer::new(&opts.kafka, 1, reports.clone())?;

        let mut classes = Vec::with_capacity(names.len());
        for (id, name) in names.iter().enumerate() {
            let acked = store.acked(id);
            let reader = store
                .reader(id, acked.seq + 1)
                .map_err(|source| ForwardError::Store {
                    class: name.clone(),
                    source,
                })?;
            classes.push(ClassState {
                id,
                name: name.clone(),
                reader: Some(reader),
                staged: VecDeque::new(),
                ahead: None,
                ahead_from: acked.seq + 1,
                ahead_stale: false,
                inflight: VecDeque::new(),
                inflight_bytes: 0,
                acked,
                persisted: acked,
                failed: false,
                retry_at: None,
                failures: 0,
                high_sent: acked.seq,
                status: ClassStatus {
                    name: name.clone(),
                    acked_seq: acked.seq,
                    ..Default::default()
                },
            });
        }
        let drain = Arc::new(DrainContext {
            model: policy
                .drain_model()
                .unwrap_or_else(|| eta::DrainModel::unlimited(&names)),
            mapper: mapper.clone(),
        });
        let shared = Arc::new(Shared {
            class_names: names.clone(),
            drain,
            control: Mutex::new(Control {
                paused: vec![false; names.len()],
                ..Default::default()
            }),
            status: Mutex::new(ForwarderStatus {
                link: LinkState::Connecting,
                link_since_ms: unix_ms(),
                last_error: None,
                last_error_at_ms: None,
                window_open: false,
                window_next_change_ms: None,
                drain_now_until_ms: None,
                throttle_bytes_per_sec: None,
                budget_left_bytes: None,
                all_paused: false,
                producer_generation: 1,
                producer_resets: 0,
                stalls: 0,
                sent_records: 0,
                sent_bytes: 0,
                acked_records: 0,
                acked_bytes: 0,
                dead_lettered: 0,
                dead_letter_entries: deadletters.counters().entries,
                resent_records: 0,
                in_flight_bytes: 0,
                drain_records_per_sec: 0.0,
                drain_bytes_per_sec: 0.0,
                classes: classes.iter().map(|c| c.status.clone()).collect(),
            }),
            wake: Notify::new(),
        });
        let handle = ForwarderHandle {
            shared: shared.clone(),
        };
        let now = Instant::now();
        let fwd = Forwarder {
            heartbeat: None,
            store,
            deadletters,
            mapper,
            policy,
            shared,
            classes,
            producer: Some(producer),
            generation: 1,
            reports,
            report_buf: Vec::new(),
            size_buf: Vec::new(),
            paused_buf: Vec::new(),
            dry_buf: Vec::new(),
            candidates_buf: Vec::new(),
            watchers: Vec::new(),
            inflight_bytes: 0,
            link: LinkState::Connecting,
            link_since_ms: unix_ms(),
            last_error: None,
            last_progress: now,
            reset_wanted: None,
            reset_failures: 0,
            reset_not_before: None,
            stalls: 0,
            resets: 0,
            totals: ClassStatus::default(),
            sent_bytes: 0,
            acked_bytes: 0,
            last_ack_persist: now,
            throttle_wait: None,
            rate: (
                RateSample {
                    at: now,
                    records: 0,
                    bytes: 0,
                },
                0.0,
                0.0,
            ),
            warn_limiter: LogLimiter::new(Duration::from_secs(30)),
            shutting_down: false,
            opts,
        };
        Ok((fwd, handle))
    }

    /// Runs until `shutdown` completes, then flushes (bounded), persists positions and returns.
    /// Beats `hb` once per loop iteration and wakes at least every `every` to do so, so a
    /// watchdog can tell an idle forwarder (window closed, nothing to send) from a wedged one.
    pub fn with_heartbeat(
        mut self,
        hb: &crate::telemetry::notify::Heartbeat,
        every: Duration,
    ) -> Self {
        self.heartbeat = Some((hb.clone(), every.max(Duration::from_millis(1))));
        self
    }

    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> ForwarderReport {
        // One tiny task per class turns "a commit happened" into a wake-up of this loop.
        for c in &self.classes {
            let mut rx = self.store.subscribe(c.id);
            let shared = self.shared.clone();
            self.watchers.push(tokio::spawn(async move {
                while rx.changed().await.is_ok() {
                    shared.wake.notify_one();
                }
            }));
        }
        tracing::info!(
            gateway = %self.opts.gateway,
            bootstrap = %self.opts.kafka.bootstrap_servers,
            classes = self.classes.len(),
            "forwarder started"
        );
        tokio::pin!(shutdown);
        loop {
            let mut wake_at = self.step().await;
            self.publish_status();
            if let Some((hb, every)) = &self.heartbeat {
                hb.beat();
                wake_at = wake_at.min(Instant::now() + *every);
            }
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = self.reports.wait() => {}
                _ = self.shared.wake.notified() => {}
                _ = tokio::time::sleep_until(wake_at.into()) => {}
            }
            // Whatever woke us, take every report queued so far in one go.
            self.handle_reports().await;
        }
        self.shutdown().await
    }

    async fn shutdown(mut self) -> ForwarderReport {
        self.shutting_down = true;
        tracing::info!(
            in_flight_bytes = self.inflight_bytes,
            "forwarder stopping: flushing in-flight records"
        );
        let deadline = Instant::now() + self.opts.shutdown_flush_timeout;
        loop {
            self.handle_reports().await;
            self.advance_acks();
            if self.pending_records() == 0 || self.reset_wanted.is_some() {
                break;
            }
            let woke = tokio::time::timeout_at(deadline.into(), self.reports.wait()).await;
            if woke.is_err() {
                break;
            }
        }
        self.persist_acks(true).await;
        // Let reads ahead finish (they are bounded and short) so no store read outlives the
        // forwarder.
        for c in &mut self.classes {
            if let Some(h) = c.ahead.take() {
                let _ = h.await;
            }
        }
        let unflushed = self.pending_records();
        for w in self.watchers.drain(..) {
            w.abort();
        }
        if let Some(p) = self.producer.take() {
            // Dropping purges and joins librdkafka's threads: blocking work.
            let _ = tokio::task::spawn_blocking(move || drop(p)).await;
        }
        self.publish_status();
        tracing::info!(unflushed_records = unflushed, "forwarder stopped");
        ForwarderReport {
            unflushed_records: unflushed,
            status: self.shared.status.lock().clone(),
        }
    }

    /// Records handed to the producer and not yet reported, over all classes.
    fn inflight_records(&self) -> usize {
        self.classes.iter().map(|c| c.inflight.len()).sum()
    }

    fn pending_records(&self) -> u64 {
        self.classes
            .iter()
            .flat_map(|c| c.inflight.iter())
            .filter(|s| s.state == SlotState::Pending)
            .count() as u64
    }

    fn set_link(&mut self, state: LinkState) {
        if self.link != state {
            tracing::info!(from = ?self.link, to = ?state, "Kafka link state changed");
            self.link = state;
            self.link_since_ms = unix_ms();
        }
    }

    fn note_error(&mut self, msg: String) {
        if let Some(suppressed) = self.warn_limiter.allow() {
            tracing::warn!(error = %msg, suppressed, link = ?self.link, "Kafka delivery problem; ferry keeps the records and retries");
        }
        self.last_error = Some((msg, unix_ms()));
    }

    fn backoff(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(20);
        self.opts
            .backoff_min
            .saturating_mul(1u32 << exp)
            .min(self.opts.backoff_max)
    }

    /// Handles every report queued so far. Successful deliveries (the common case) are marked
    /// here directly; the time and link state are updated once per batch, not per record.
    async fn handle_reports(&mut self) {
        let mut batch = std::mem::take(&mut self.report_buf);
        self.reports.take(&mut batch);
        let mut delivered = false;
        for ev in batch.drain(..) {
            match ev {
                ProducerEvent::Delivery {
                    generation,
                    class,
                    seq,
                    result: Ok(_),
                } => {
                    if generation != self.generation {
                        continue;
                    }
                    let Some(c) = self.classes.get_mut(class) else {
                        continue;
                    };
                    if let Some(i) = slot_index(&c.inflight, seq) {
                        c.inflight[i].state = SlotState::Done;
                        c.failures = 0;
                        delivered = true;
                    }
                }
                ev => {
                    if delivered {
                        // Keep the order of state changes: this batch's successes before a
                        // failure that follows them.
                        self.note_delivered();
                        delivered = false;
                    }
                    self.on_event(ev).await;
                }
            }
        }
        if delivered {
            self.note_delivered();
        }
        self.report_buf = batch;
    }

    fn note_delivered(&mut self) {
        self.last_progress = Instant::now();
        self.reset_failures = 0;
        self.set_link(LinkState::Online);
    }

    /// One delivery report or client error.
    async fn on_event(&mut self, ev: ProducerEvent) {
        match ev {
            ProducerEvent::ClientError {
                generation,
                error,
                reason,
            } => {
                if generation != self.generation {
                    return;
                }
                let code = error.rdkafka_error_code();
                if code == Some(RDKafkaErrorCode::AllBrokersDown) || is_link_error(&error) {
                    self.set_link(LinkState::Offline);
                }
                let fatal = code == Some(RDKafkaErrorCode::Fatal)
                    || self
                        .producer
                        .as_ref()
                        .and_then(|p| p.fatal_error())
                        .is_some();
                if fatal && self.reset_wanted.is_none() {
                    self.reset_wanted = Some(format!("fatal producer error: {reason}"));
                }
                self.note_error(format!("{error}: {reason}"));
            }
            ProducerEvent::Delivery {
                generation,
                class,
                seq,
                result,
            } => {
                if generation != self.generation {
                    return;
                }
                let Some(c) = self.classes.get_mut(class) else {
                    return;
                };
                let Some(i) = slot_index(&c.inflight, seq) else {
                    return;
                };
                match result {
                    Ok(_) => {
                        c.inflight[i].state = SlotState::Done;
                        c.failures = 0;
                        self.note_delivered();
                    }
                    Err(e) => {
                        let disposition = classify(&e, self.opts.kafka.topic_auto_create);
                        let fatal_now = self
                            .producer
                            .as_ref()
                            .and_then(|p| p.fatal_error())
                            .is_some();
                        match (disposition, fatal_now) {
                            (Disposition::Permanent, false) => {
                                self.dead_letter(class, i, e.to_string()).await;
                            }
                            (Disposition::Fatal, _) | (_, true) => {
                                let c = &mut self.classes[class];
                                c.inflight[i].state = SlotState::Failed;
                                if self.reset_wanted.is_none() {
                                    self.reset_wanted = Some(format!("fatal producer error: {e}"));
                                }
                                let msg = format!("class {}: seq {seq}: {e}", c.name);
                                self.note_error(msg);
                            }
                            (Disposition::Retriable, false) => {
                                if is_link_error(&e) {
                                    self.set_link(LinkState::Offline);
                                }
                                let c = &mut self.classes[class];
                                c.inflight[i].state = SlotState::Failed;
                                c.failed = true;
                                let msg = format!("class {}: seq {seq}: {e}", c.name);
                                self.note_error(msg);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Moves in-flight slot `i` of `class` to the dead-letter log; on success it counts as
    /// done, otherwise the class fails (and retries) so the record is never lost. The record
    /// is read again from the store: it is not acknowledged yet, so it is still there unless a
    /// counted retention rule or a purge removed it meanwhile (then there is nothing left to
    /// keep, and the slot counts as done).
    async fn dead_letter(&mut self, class: ClassId, i: usize, reason: String) {
        let seq = self.classes[class].inflight[i].seq;
        let name = self.classes[class].name.clone();
        let store = self.store.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut r = store.reader(class, seq)?;
            let batch = r.read_batch(1, 1)?;
            Ok::<_, StoreError>(batch.into_iter().next().filter(|s| s.seq == seq))
        })
        .await;
        let state = match read {
            Ok(Ok(Some(stored))) => {
                if self.dead_letter_record(&name, &stored, &reason).await {
                    let c = &mut self.classes[class];
                    c.status.dead_lettered += 1;
                    self.totals.dead_lettered += 1;
                    SlotState::Done
                } else {
                    SlotState::Failed
                }
            }
            Ok(Ok(None)) => {
                tracing::warn!(class = %name, seq, reason, "record failed permanently but is no longer in the store (dropped by retention or purge, see the class's drop counters); nothing to dead-letter");
                SlotState::Done
            }
            Ok(Err(e)) => {
                self.note_error(format!(
                    "reading {name}/{seq} back from the store to dead-letter it: {e} (retrying)"
                ));
                SlotState::Failed
            }
            Err(e) => {
                self.note_error(format!(
                    "reading {name}/{seq} back from the store to dead-letter it: task failed: {e}"
                ));
                SlotState::Failed
            }
        };
        let c = &mut self.classes[class];
        c.inflight[i].state = state;
        if state == SlotState::Failed {
            c.failed = true;
        }
    }

    async fn dead_letter_record(
        &mut self,
        class: &str,
        stored: &StoredRecord,
        reason: &str,
    ) -> bool {
        let dl = self.deadletters.clone();
        let (cls, seq, rec, why) = (
            class.to_string(),
            stored.seq,
            stored.record.clone(),
            reason.to_string(),
        );
        let res = tokio::task::spawn_blocking(move || dl.add(&cls, seq, &rec, &why)).await;
        match res {
            Ok(Ok(id)) => {
                tracing::warn!(class, seq, id, reason, mqtt_topic = %stored.record.topic, "record moved to the dead-letter log; Kafka will never accept it as is (see `ferry deadletter list`)");
                true
            }
            Ok(Err(e)) => {
                self.note_error(format!("dead-lettering {class}/{seq}: {e}"));
                false
            }
            Err(e) => {
                self.note_error(format!("dead-lettering {class}/{seq}: task failed: {e}"));
                false
            }
        }
    }

    /// Moves each class's acknowledged position over its finished prefix; rewinds classes
    /// whose failure has fully reported.
    fn advance_acks(&mut self) {
        let now = Instant::now();
        let mut newly_acked_bytes = 0u64;
        for c in &mut self.classes {
            while c
                .inflight
                .front()
                .is_some_and(|s| s.state == SlotState::Done)
            {
                let Some(s) = c.inflight.pop_front() else {
                    break;
                };
                c.inflight_bytes -= s.bytes;
                self.inflight_bytes -= s.bytes;
                c.acked = Position {
                    seq: s.seq,
                    logical_end: s.logical_end,
                };
                c.status.acked_records += 1;
                self.totals.acked_records += 1;
                newly_acked_bytes += s.bytes as u64;
            }
            if c.failed
                && !c.inflight.iter().any(|s| s.state == SlotState::Pending)
                && !self.shutting_down
            {
                c.failures = c.failures.saturating_add(1);
                let exp = c.failures.saturating_sub(1).min(20);
                let wait = self
                    .opts
                    .backoff_min
                    .saturating_mul(1u32 << exp)
                    .min(self.opts.backoff_max);
                let dropped: usize = c.inflight.iter().map(|s| s.bytes).sum();
                self.inflight_bytes -= dropped;
                c.inflight.clear();
                c.inflight_bytes = 0;
                c.rewind();
                c.failed = false;
                c.retry_at = Some(now + wait);
                tracing::debug!(class = %c.name, from_seq = c.acked.seq + 1, backoff_ms = wait.as_millis() as u64, "class rewinds to its acknowledged position after a failure");
            }
        }
        self.acked_bytes += newly_acked_bytes;
        if !self.awaiting_delivery() {
            self.last_progress = now;
        }
    }

    /// True while some record is expected to be delivered and is not yet: records in flight,
    /// or a class backing off after a failure (its in-flight table is empty then, but it has
    /// not made progress). The stall watchdog measures only while this holds.
    fn awaiting_delivery(&self) -> bool {
        self.inflight_bytes > 0 || self.classes.iter().any(|c| c.failures > 0)
    }

    /// Persists positions that moved (at most every `ack_interval`, or now when `force`).
    async fn persist_acks(&mut self, force: bool) {
        if !force && self.last_ack_persist.elapsed() < self.opts.ack_interval {
            return;
        }
        self.last_ack_persist = Instant::now();
        for i in 0..self.classes.len() {
            let (id, pos) = {
                let c = &self.classes[i];
                if c.acked == c.persisted {
                    continue;
                }
                (c.id, c.acked)
            };
            let store = self.store.clone();
            let res = tokio::task::spawn_blocking(move || store.ack(id, pos)).await;
            match res {
                Ok(Ok(())) => self.classes[i].persisted = pos,
                Ok(Err(e)) => self.note_error(format!(
                    "persisting the acknowledged position of class {}: {e} (retrying; a crash now only re-sends)",
                    self.classes[i].name
                )),
                Err(e) => self.note_error(format!("persisting ack: task failed: {e}")),
            }
        }
    }

    /// Replaces the producer: every class rewinds to its acknowledged position.
    async fn reset_producer(&mut self, why: String) {
        let now = Instant::now();
        if let Some(t) = self.reset_not_before {
            if now < t {
                return;
            }
        }
        self.resets += 1;
        self.reset_failures = self.reset_failures.saturating_add(1);
        self.generation += 1;
        tracing::warn!(reason = %why, generation = self.generation, "recreating the Kafka producer; every class re-sends from its acknowledged position");
        if let Some(p) = self.producer.take() {
            // Dropping purges the old queue and joins librdkafka's threads, which can take a
            // while against a hung broker; it must not hold up the new producer, so it is not
            // awaited.
            drop(tokio::task::spawn_blocking(move || drop(p)));
        }
        // Stale reports of the old producer carry the old generation and are ignored.
        self.advance_acks();
        for c in &mut self.classes {
            c.inflight.clear();
            c.inflight_bytes = 0;
            c.rewind();
            c.failed = false;
        }
        self.inflight_bytes = 0;
        match KafkaProducer::new(&self.opts.kafka, self.generation, self.reports.clone()) {
            Ok(p) => {
                self.producer = Some(p);
                self.reset_wanted = None;
            }
            Err(e) => {
                self.note_error(format!("recreating the producer: {e}"));
                self.reset_wanted = Some(why);
            }
        }
        self.reset_not_before = Some(now + self.backoff(self.reset_failures));
        self.last_progress = Instant::now();
    }

    /// Housekeeping and sending; returns when the loop should wake at the latest.
    async fn step(&mut self) -> Instant {
        let now = Instant::now();
        let mut wake = now + Duration::from_secs(1);

        self.advance_acks();
        self.persist_acks(false).await;
        if self.classes.iter().any(|c| c.acked != c.persisted) {
            wake = wake.min(self.last_ack_persist + self.opts.ack_interval);
        }

        if self.reset_wanted.is_none() {
            if let Some((code, msg)) = self.producer.as_ref().and_then(|p| p.fatal_error()) {
                self.reset_wanted = Some(format!("producer fatal error {code:?}: {msg}"));
            }
        }
        // Stall watchdog: records awaiting delivery and no acknowledgement for stall_timeout.
        // Connected (not offline), that is a stall: counted, link `stalled`. Offline, a new
        // producer is still worth it (spaced by the growing reset backoff): a producer can get
        // wedged across a broker restart, e.g. endlessly timing out after an epoch bump the
        // new broker does not know, and only a fresh producer id gets it going again.
        let stuck = self.awaiting_delivery()
            && now.duration_since(self.last_progress) >= self.opts.stall_timeout;
        if stuck && self.reset_wanted.is_none() {
            let msg = format!(
                "no acknowledgement for {:?} with {} bytes in flight",
                now.duration_since(self.last_progress),
                self.inflight_bytes
            );
            if self.link == LinkState::Offline {
                tracing::info!("watchdog while offline: {msg}; trying a fresh producer");
            } else {
                self.stalls += 1;
                self.set_link(LinkState::Stalled);
                tracing::warn!(stalls = self.stalls, "stall watchdog: {msg}");
                self.last_error = Some((format!("stall: {msg}"), unix_ms()));
            }
            self.reset_wanted = Some(format!("watchdog: {msg}"));
        }
        if let Some(why) = self.reset_wanted.clone() {
            self.reset_producer(why).await;
            if self.reset_wanted.is_some() {
                return self.reset_not_before.unwrap_or(now + self.opts.backoff_min);
            }
        }
        if self.awaiting_delivery() {
            wake = wake.min(self.last_progress + self.opts.stall_timeout);
        }

        // Window and manual overrides.
        let window = self.policy.window();
        let mut paused = std::mem::take(&mut self.paused_buf);
        let (all_paused, drain) = {
            let mut ctl = self.shared.control.lock();
            if ctl.drain_until.is_some_and(|(t, _)| t <= now) {
                ctl.drain_until = None;
            }
            paused.clear();
            paused.extend_from_slice(&ctl.paused);
            (ctl.all_paused, ctl.drain_until)
        };
        {
            let mut st = self.shared.status.lock();
            st.window_open = window.open;
            st.window_next_change_ms = window.next_change.map(|d| unix_ms() + d.as_millis() as u64);
            st.drain_now_until_ms = drain.map(|(_, ms)| ms);
            st.all_paused = all_paused;
            st.throttle_bytes_per_sec = self.policy.rate_limit();
            st.budget_left_bytes = self.policy.budget_left();
            for (cs, p) in st.classes.iter_mut().zip(&paused) {
                cs.paused = *p;
            }
        }
        if let Some(d) = window.next_change {
            wake = wake.min(now + d);
        }
        if let Some((t, _)) = drain {
            wake = wake.min(t);
        }
        if (!window.open && drain.is_none()) || all_paused || self.producer.is_none() {
            self.paused_buf = paused;
            return wake;
        }
        if let Some(t) = self.throttle_wait {
            if now < t {
                self.paused_buf = paused;
                return wake.min(t);
            }
            self.throttle_wait = None;
        }

        // Send until the in-flight limit, the throttle, or no class has anything ready.
        let mut dry = std::mem::take(&mut self.dry_buf);
        dry.clear();
        dry.resize(self.classes.len(), false);
        let mut candidates = std::mem::take(&mut self.candidates_buf);
        loop {
            if self.inflight_bytes >= self.opts.max_in_flight_bytes
                || self.inflight_records() >= self.opts.max_in_flight_records
            {
                break;
            }
            let now = Instant::now();
            candidates.clear();
            for c in &self.classes {
                if paused[c.id] || c.failed || dry[c.id] {
                    continue;
                }
                if let Some(t) = c.retry_at {
                    if now < t {
                        wake = wake.min(t);
                        continue;
                    }
                }
                let next = c.reader.as_ref().map_or(u64::MAX, |r| r.next_seq());
                let has_data =
                    !c.staged.is_empty() || c.ahead.is_some() || self.store.committed(c.id) >= next;
                if has_data {
                    candidates.push(Candidate {
                        class: c.id,
                        backlog_bytes: self.store.committed(c.id).saturating_sub(c.acked.seq),
                    });
                }
            }
            let Some(class) = self.policy.pick(&candidates) else {
                break;
            };
            match self.send_batch(class).await {
                Ok(true) => {}
                // Nothing readable after all: leave the class alone until the next wake-up,
                // so a commit notification that runs ahead of readability cannot spin us.
                Ok(false) => dry[class] = true,
                Err(Some(wait)) => {
                    let t = Instant::now() + wait;
                    self.throttle_wait = Some(t);
                    wake = wake.min(t);
                    break;
                }
                Err(None) => break,
            }
        }
        self.paused_buf = paused;
        self.dry_buf = dry;
        self.candidates_buf = candidates;
        wake
    }

    /// Starts reading the next batch of `class` on a blocking thread; the read holds the
    /// class's reader until it is joined. False when the reader is not there (lost with a
    /// failed read task).
    fn start_read(&mut self, class: ClassId) -> bool {
        let (max_r, max_b) = (self.opts.batch_max_records, self.opts.batch_max_bytes);
        let c = &mut self.classes[class];
        if c.ahead.is_some() {
            return true;
        }
        let Some(mut reader) = c.reader.take() else {
            return false;
        };
        c.ahead_from = reader.next_seq();
        c.ahead = Some(tokio::task::spawn_blocking(move || {
            let r = reader.read_batch(max_r, max_b);
            (reader, r)
        }));
        true
    }

    /// Fills the empty `staged` of `class` with its next batch: the one read ahead when there
    /// is one, otherwise read now. False when there is nothing to send now.
    async fn fill_staged(&mut self, class: ClassId) -> bool {
        loop {
            if self.classes[class].ahead.is_none() && !self.start_read(class) {
                // The reader was lost with a failed read task and reopening it failed then.
                // The class rewound since (nothing in flight), so reopen at its position.
                let c = &mut self.classes[class];
                if !c.inflight.is_empty() {
                    return false;
                }
                match self.store.reader(class, c.acked.seq + 1) {
                    Ok(r) => {
                        c.reader = Some(r);
                        c.ahead_stale = false;
                        continue;
                    }
                    Err(e) => {
                        c.retry_at = Some(Instant::now() + Duration::from_secs(5));
                        let msg = format!("reopening reader of class {}: {e}", c.name);
                        self.note_error(msg);
                        return false;
                    }
                }
            }
            let Some(task) = self.classes[class].ahead.take() else {
                return false;
            };
            let res = task.await;
            let c = &mut self.classes[class];
            let expected = c.ahead_from;
            match res {
                Ok((mut reader, _)) if c.ahead_stale => {
                    // The class rewound while this read ran: the batch continues where the
                    // dropped records left off, not at the acknowledged position. Drop it and
                    // read again from there.
                    reader.seek(c.acked.seq + 1);
                    c.reader = Some(reader);
                    c.ahead_stale = false;
                    continue;
                }
                Ok((reader, Ok(batch))) => {
                    c.reader = Some(reader);
                    c.retry_at = None;
                    // The store's log has no gaps except counted drops (retention, purge,
                    // corruption); say so when the forwarder runs into one.
                    let mut next = expected;
                    for r in &batch {
                        if r.seq != next {
                            let skipped = r.seq.saturating_sub(next);
                            c.status.skipped_records += skipped;
                            tracing::warn!(class = %c.name, from_seq = next, to_seq = r.seq - 1, skipped, "records missing from the store between reads (dropped by retention, purge or corruption; see the class's drop counters)");
                        }
                        next = r.seq + 1;
                    }
                    c.staged.extend(batch);
                    // Empty: caught up after all (the commit we saw is not readable yet, or
                    // was dropped).
                    return !c.staged.is_empty();
                }
                Ok((reader, Err(e))) => {
                    c.reader = Some(reader);
                    let wait = self.opts.backoff_max.min(Duration::from_secs(5));
                    c.retry_at = Some(Instant::now() + wait);
                    let msg = format!("reading class {} from the store: {e}", c.name);
                    self.note_error(msg);
                    return false;
                }
                Err(e) => {
                    // The reader was lost with the task; reopen it at the acked position and
                    // let the class rewind once its in-flight records have reported.
                    c.failed = true;
                    c.ahead_stale = false;
                    match self.store.reader(class, c.acked.seq + 1) {
                        Ok(r) => c.reader = Some(r),
                        Err(e2) => {
                            let msg = format!("reopening reader of class {}: {e2}", c.name);
                            c.retry_at = Some(Instant::now() + Duration::from_secs(5));
                            self.note_error(msg);
                        }
                    }
                    self.note_error(format!("store read task failed: {e}"));
                    return false;
                }
            }
        }
    }

    /// Reads (if needed) and produces one batch of `class`. `Err(Some(wait))`: the throttle
    /// asks to wait; `Err(None)`: stop sending for now (queue full, producer reset).
    async fn send_batch(&mut self, class: ClassId) -> Result<bool, Option<Duration>> {
        if self.classes[class].staged.is_empty() && !self.fill_staged(class).await {
            return Ok(false);
        }
        // Read the next batch while this one is sent (one batch ahead at most).
        let more = self.classes[class]
            .reader
            .as_ref()
            .is_some_and(|r| self.store.committed(class) >= r.next_seq());
        if more {
            self.start_read(class);
        }

        // Size the run of staged records (bounded by the in-flight limits) and take throttle
        // tokens for the whole run at once.
        let mut room = self
            .opts
            .max_in_flight_bytes
            .saturating_sub(self.inflight_bytes);
        if let Some(cap) = self.policy.max_run_bytes(class) {
            room = room.min(usize::try_from(cap).unwrap_or(usize::MAX).max(1));
        }
        let record_room = self
            .opts
            .max_in_flight_records
            .saturating_sub(self.inflight_records())
            .max(1);
        let mut sizes = std::mem::take(&mut self.size_buf);
        sizes.clear();
        let mut run_bytes = 0usize;
        for s in &self.classes[class].staged {
            // An unmappable record is charged its payload (it goes to the dead-letter log).
            let size = self
                .mapper
                .route(class, s)
                .and_then(|r| self.mapper.wire_size(class, s, &r))
                .unwrap_or(s.record.payload.len());
            if !sizes.is_empty() && run_bytes + size > room {
                break;
            }
            run_bytes += size;
            sizes.push(size);
            if run_bytes >= room || sizes.len() >= record_room {
                break;
            }
        }
        if let Err(wait) = self.policy.take(class, run_bytes as u64) {
            self.size_buf = sizes;
            return Err(Some(wait));
        }
        let res = self.send_run(class, &sizes).await;
        self.size_buf = sizes;
        res
    }

    /// Produces the first `sizes.len()` staged records of `class` (`sizes`: their wire sizes).
    /// Records not sent stay staged, in order.
    async fn send_run(
        &mut self,
        class: ClassId,
        sizes: &[usize],
    ) -> Result<bool, Option<Duration>> {
        let mut sent_bytes = 0u64;
        for &bytes in sizes {
            let Some(stored) = self.classes[class].staged.pop_front() else {
                break;
            };
            let seq = stored.seq;
            let Some(producer) = self.producer.as_ref() else {
                self.classes[class].staged.push_front(stored);
                return Err(None);
            };
            // Route and headers straight into librdkafka's copy: no owned record per send.
            let sent = self.mapper.route(class, &stored).and_then(|route| {
                let mut headers = HeaderBuilder::with_capacity(Mapper::header_count(&stored));
                self.mapper
                    .for_each_header(class, &stored, |k, v| headers.add(k, v))?;
                let out = OutRecord {
                    topic: &route.topic,
                    key: route.key.as_deref(),
                    payload: &stored.record.payload,
                    timestamp_ms: Mapper::timestamp_ms(&stored),
                };
                Ok(producer.send_parts(class, seq, &out, headers.finish()))
            });
            let e = match sent {
                Ok(Ok(())) => {
                    let c = &mut self.classes[class];
                    c.inflight
                        .push_back(Slot::new(&stored, bytes, SlotState::Pending));
                    c.inflight_bytes += bytes;
                    self.inflight_bytes += bytes;
                    c.status.sent_records += 1;
                    self.totals.sent_records += 1;
                    if seq <= c.high_sent {
                        c.status.resent_records += 1;
                        self.totals.resent_records += 1;
                    } else {
                        c.high_sent = seq;
                    }
                    sent_bytes += bytes as u64;
                    continue;
                }
                Ok(Err(e)) => e,
                Err(e) => {
                    // The record's topic does not fit the templates: retrying never helps.
                    let name = self.classes[class].name.clone();
                    let ok = self
                        .dead_letter_record(&name, &stored, &e.to_string())
                        .await;
                    let c = &mut self.classes[class];
                    let state = if ok {
                        c.status.dead_lettered += 1;
                        self.totals.dead_lettered += 1;
                        SlotState::Done
                    } else {
                        c.failed = true;
                        SlotState::Failed
                    };
                    c.inflight.push_back(Slot::new(&stored, 0, state));
                    if ok {
                        continue;
                    }
                    break;
                }
            };
            let disposition = classify(&e, self.opts.kafka.topic_auto_create);
            let queue_full = e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull);
            if disposition == Disposition::Permanent {
                let name = self.classes[class].name.clone();
                let ok = self
                    .dead_letter_record(&name, &stored, &e.to_string())
                    .await;
                let c = &mut self.classes[class];
                if ok {
                    c.status.dead_lettered += 1;
                    self.totals.dead_lettered += 1;
                    c.inflight.push_back(Slot::new(&stored, 0, SlotState::Done));
                    continue;
                }
                c.failed = true;
                c.inflight
                    .push_back(Slot::new(&stored, 0, SlotState::Failed));
                break;
            }
            // Not sent: put it back (before the unsent rest) and stop this round.
            self.classes[class].staged.push_front(stored);
            if disposition == Disposition::Fatal && self.reset_wanted.is_none() {
                self.reset_wanted = Some(format!("fatal error on send: {e}"));
            }
            if !queue_full {
                let failures = self.classes[class].failures.saturating_add(1);
                let wait = self.backoff(failures);
                let c = &mut self.classes[class];
                c.failures = failures;
                c.retry_at = Some(Instant::now() + wait);
                let msg = format!("class {}: send seq {seq}: {e}", c.name);
                self.note_error(msg);
            }
            self.policy.sent(class, sent_bytes);
            self.sent_bytes += sent_bytes;
            return Err(if queue_full {
                Some(Duration::from_millis(20))
            } else {
                None
            });
        }
        self.policy.sent(class, sent_bytes);
        self.sent_bytes += sent_bytes;
        Ok(true)
    }

    fn publish_status(&mut self) {
        let now = Instant::now();
        let (sample, rr, br) = &mut self.rate;
        let dt = now.duration_since(sample.at).as_secs_f64();
        if dt >= 1.0 {
            *rr = (self.totals.acked_records - sample.records) as f64 / dt;
            *br = (self.acked_bytes - sample.bytes) as f64 / dt;
            *sample = RateSample {
                at: now,
                records: self.totals.acked_records,
                bytes: self.acked_bytes,
            };
        }
        let (rr, br) = (*rr, *br);
        let dead_letter_entries = self.deadletters.counters().entries;
        let mut st = self.shared.status.lock();
        st.dead_letter_entries = dead_letter_entries;
        st.link = self.link;
        st.link_since_ms = self.link_since_ms;
        st.last_error = self.last_error.as_ref().map(|(m, _)| m.clone());
        st.last_error_at_ms = self.last_error.as_ref().map(|(_, t)| *t);
        st.producer_generation = self.generation;
        st.producer_resets = self.resets;
        st.stalls = self.stalls;
        st.sent_records = self.totals.sent_records;
        st.sent_bytes = self.sent_bytes;
        st.acked_records = self.totals.acked_records;
        st.acked_bytes = self.acked_bytes;
        st.dead_lettered = self.totals.dead_lettered;
        st.resent_records = self.totals.resent_records;
        st.in_flight_bytes = self.inflight_bytes as u64;
        st.drain_records_per_sec = rr;
        st.drain_bytes_per_sec = br;
        for (cs, c) in st.classes.iter_mut().zip(&self.classes) {
            // Field by field: the name is already there, no allocation per status update.
            let s = &c.status;
            cs.sent_records = s.sent_records;
            cs.acked_records = s.acked_records;
            cs.dead_lettered = s.dead_lettered;
            cs.resent_records = s.resent_records;
            cs.skipped_records = s.skipped_records;
            cs.acked_seq = c.acked.seq;
            cs.in_flight_records = c.inflight.len() as u64;
            cs.in_flight_bytes = c.inflight_bytes as u64;
            cs.backoff_ms = c
                .retry_at
                .map_or(0, |t| t.saturating_duration_since(now).as_millis() as u64);
        }
    }
}

// The forwarder runs on a tokio task: it must stay `Send`.
#[allow(dead_code)]
fn assert_send() {
    fn is_send<T: Send>() {}
    is_send::<Forwarder>();
    is_send::<ForwarderHandle>();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(seqs: &[u64]) -> VecDeque<Slot> {
        seqs.iter()
            .map(|&seq| Slot {
                seq,
                logical_end: seq * 10,
                bytes: 1,
                state: SlotState::Pending,
            })
            .collect()
    }

    #[test]
    fn slot_index_by_offset_and_across_gaps() {
        let t = slots(&[5, 6, 7, 8]);
        assert_eq!(slot_index(&t, 5), Some(0));
        assert_eq!(slot_index(&t, 8), Some(3));
        assert_eq!(slot_index(&t, 4), None);
        assert_eq!(slot_index(&t, 9), None);
        // The reader skipped 8..=10 (dropped by the store): the offset misses, search finds.
        let t = slots(&[5, 6, 7, 11, 12]);
        assert_eq!(slot_index(&t, 11), Some(3));
        assert_eq!(slot_index(&t, 12), Some(4));
        assert_eq!(slot_index(&t, 9), None);
        assert_eq!(slot_index(&slots(&[]), 1), None);
    }
}
