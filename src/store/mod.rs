//! The durable message log: one append-only, segmented log per priority class.
//!
//! See `docs/storage.md` for the on-disk format and the recovery rules. In short:
//!
//! ```text
//! <data_dir>/
//!   classes/<class>/00000000000000000001.seg   segment files, named by their first sequence
//!   classes/<class>/ack                         acknowledged position (pwrite + fdatasync)
//!   classes/<class>/dropped                     drop counters by reason
//!   quarantine/<class>-<segment>-<unix_ms>.seg  copies of segments that had corrupt frames
//! ```
//!
//! ## Durability contract
//! [`Store::append`] queues a record for the group-commit writer and returns a
//! [`CommitTicket`]. The ticket completes only after the frame holding the record was written
//! and `fdatasync`'d (and, for a new segment, the directory fsync'd). Whoever holds a
//! completed ticket may tell the sender the record is safe. [`Store::append_to`] +
//! [`Store::submit`] do the same for a batch with one [`BatchTicket`]: it completes when the
//! last record of the batch did, with each record's own result (`Ok(seq)` only for a record
//! whose frame was written and `fdatasync`'d).
//!
//! Records leave the log only when (a) [`Store::ack`] moved the class's acknowledged position
//! past every record of a sealed segment, or (b) a retention rule (`max_bytes`, `max_age`,
//! operator purge, corruption) removed them; (b) is counted in [`ClassStats::dropped`] and logged.
//!
//! ## Invariants
//! - Sequence numbers per class start at 1 and increase by one per record, with no gaps in what
//!   was written; gaps in what can be read come only from counted drops.
//! - The acknowledged position never moves backwards.
//! - Memory use is bounded by the commit batch size plus one read batch per reader; the
//!   in-memory index holds one small summary per segment, never per record.

mod ackfile;
mod commit;
mod format;
mod reader;
mod record;
mod recovery;
mod segment;
mod space;

pub(crate) use commit::now_ms;
pub use commit::{AppendBatch, BatchTicket, CommitTicket, DATA_DIR_MODE};
pub use reader::Reader;
pub use record::{Record, RecordRef, StoredRecord};
pub use recovery::{segments_checked, RecoveryAction, RecoveryReport};
pub use space::{FixedFreeSpace, FreeSpace, StatvfsFreeSpace};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Index of a class in [`StoreOptions::classes`].
pub type ClassId = usize;

/// What to do when a class reaches its `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Delete the oldest whole segments (counted as dropped, reason `max_bytes`).
    DropOldest,
    /// Refuse new appends with [`StoreError::ClassFull`] until the forwarder frees space.
    Reject,
}

/// Per-class limits.
#[derive(Debug, Clone)]
pub struct ClassOptions {
    pub name: String,
    /// Cap on the class's bytes on disk (all its segment files).
    pub max_bytes: u64,
    /// Records older than this (by receive time) are dropped, a whole segment at a time.
    pub max_age: Option<Duration>,
    pub overflow: Overflow,
}

/// Everything the store needs; built from the config by `config::Config::store_options`.
#[derive(Clone)]
pub struct StoreOptions {
    pub data_dir: PathBuf,
    pub classes: Vec<ClassOptions>,
    /// A segment is sealed and a new one started once it reaches this size.
    pub segment_bytes: u64,
    /// Group commit: appends that queue up while a commit is being written and synced form
    /// the next commit at once. Only after the writer was idle does it wait for more, at most
    /// this long and only while appends keep arriving (0 = never wait: the default).
    pub commit_max_delay: Duration,
    /// Group commit: a commit starts as soon as this many payload bytes are pending.
    pub commit_max_bytes: usize,
    /// zstd level for frames (0 = never compress). Frames smaller than
    /// `compress_min_bytes` stay raw.
    pub compression_level: i32,
    pub compress_min_bytes: usize,
    /// How far the writer keeps the active segment zeroed ahead of its data (0 = off; see
    /// `segment::ZERO_AHEAD` and docs/storage.md, "Zeroed ahead").
    pub zero_ahead_bytes: u64,
    /// Appends in every class are refused while the filesystem has less free space than this.
    pub min_free_bytes: u64,
    /// Where free space is read from (statvfs on `data_dir` in production; tests set it).
    pub free_space: Arc<dyn FreeSpace>,
    /// Open for inspection only: no recovery writes, no appends, no acks.
    pub read_only: bool,
}

impl StoreOptions {
    /// Defaults suitable for tests and the bench: one class per name, 64 MiB segments.
    pub fn new(data_dir: impl Into<PathBuf>, classes: Vec<ClassOptions>) -> Self {
        let data_dir = data_dir.into();
        StoreOptions {
            free_space: Arc::new(StatvfsFreeSpace::new(data_dir.clone())),
            data_dir,
            classes,
            segment_bytes: 64 << 20,
            commit_max_delay: Duration::ZERO,
            commit_max_bytes: 1 << 20,
            compression_level: 1,
            compress_min_bytes: 512,
            zero_ahead_bytes: segment::ZERO_AHEAD,
            min_free_bytes: 0,
            read_only: false,
        }
    }
}

/// Why a record was removed without being acknowledged by Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    MaxBytes,
    MaxAge,
    Purge,
    Corrupt,
}

impl DropReason {
    pub const ALL: [DropReason; 4] = [
        DropReason::MaxBytes,
        DropReason::MaxAge,
        DropReason::Purge,
        DropReason::Corrupt,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::MaxBytes => "max_bytes",
            DropReason::MaxAge => "max_age",
            DropReason::Purge => "purge",
            DropReason::Corrupt => "corrupt",
        }
    }
}

/// Drop counters of one class, persisted across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DropCounts {
    pub max_bytes: u64,
    pub max_age: u64,
    pub purge: u64,
    pub corrupt: u64,
}

impl DropCounts {
    pub fn get(&self, r: DropReason) -> u64 {
        match r {
            DropReason::MaxBytes => self.max_bytes,
            DropReason::MaxAge => self.max_age,
            DropReason::Purge => self.purge,
            DropReason::Corrupt => self.corrupt,
        }
    }
    pub(crate) fn add(&mut self, r: DropReason, n: u64) {
        // Saturating: a damaged directory (e.g. a segment named near u64::MAX after a gap)
        // must not overflow a counter.
        let c = match r {
            DropReason::MaxBytes => &mut self.max_bytes,
            DropReason::MaxAge => &mut self.max_age,
            DropReason::Purge => &mut self.purge,
            DropReason::Corrupt => &mut self.corrupt,
        };
        *c = c.saturating_add(n);
    }
    pub fn total(&self) -> u64 {
        self.max_bytes
            .saturating_add(self.max_age)
            .saturating_add(self.purge)
            .saturating_add(self.corrupt)
    }
}

/// The acknowledged position of a class: everything up to and including `seq` was delivered.
/// `logical_end` is the class's cumulative logical byte count through that record, which lets
/// the store report backlog bytes exactly without a per-record index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Position {
    pub seq: u64,
    pub logical_end: u64,
}

/// A snapshot of one class, all figures measured from the store's state.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClassStats {
    pub name: String,
    /// Records waiting for delivery (after the acknowledged position).
    pub records: u64,
    /// Uncompressed encoded size of those records.
    pub logical_bytes: u64,
    /// Size of the class's segment files (including acknowledged records not yet freed, and
    /// up to `storage.zero_ahead` of zeros written ahead of the active segment's data:
    /// docs/storage.md).
    pub disk_bytes: u64,
    pub segments: u64,
    /// Sequence of the oldest waiting record (None when empty).
    pub oldest_seq: Option<u64>,
    /// Receive time (ms since the Unix epoch) of the oldest waiting record.
    pub oldest_ts_ms: Option<u64>,
    pub newest_seq: u64,
    pub newest_ts_ms: Option<u64>,
    pub acked: Position,
    pub dropped: DropCounts,
    /// Records and logical bytes committed since the store was opened.
    pub appended_records: u64,
    pub appended_bytes: u64,
    /// Appends refused since the store was opened (class full, disk headroom).
    pub refused_full: u64,
    pub refused_headroom: u64,
}

/// Fixed histogram bucket upper bounds (seconds) for fsync latency.
pub const FSYNC_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// Fixed histogram bucket upper bounds (records) for commit batch sizes.
pub const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// Counters of the writer's I/O since the store was opened (for metrics and the bench).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct IoStats {
    /// Group commits that wrote at least one frame.
    pub commits: u64,
    /// fdatasync calls on segment files.
    pub fsyncs: u64,
    pub fsync_seconds_sum: f64,
    /// Cumulative counts per `FSYNC_BUCKETS` bound (Prometheus style), plus +Inf last.
    pub fsync_buckets: Vec<u64>,
    /// Records per group commit, cumulative per `BATCH_BUCKETS` bound, plus +Inf last.
    pub batch_buckets: Vec<u64>,
    pub batch_records_sum: u64,
    pub records_written: u64,
    pub logical_bytes_written: u64,
    pub frame_bytes_written: u64,
    /// Zeros written ahead of the active segment's end (docs/storage.md, "Zeroed ahead"), and
    /// the time spent writing and syncing them.
    pub zeroed_bytes_written: u64,
    pub zero_seconds_sum: f64,
    /// Turns of the writer's loop: at least one a second even when idle, so a counter that
    /// stops moving means a wedged writer (the systemd watchdog watches it).
    pub writer_loops: u64,
}

/// Errors from the store. Messages say what failed and where.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("class `{class}` is full ({disk_bytes} of {max_bytes} bytes on disk, overflow = reject): wait for the forwarder to drain it or raise max_bytes")]
    ClassFull {
        class: String,
        disk_bytes: u64,
        max_bytes: u64,
    },
    #[error("disk headroom reached: {free} bytes free on the data directory's filesystem, {min} required: free disk space or lower storage.min_free_bytes")]
    Headroom { free: u64, min: u64 },
    #[error("record of {size} bytes is larger than the commit batch limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("unknown class `{0}`")]
    UnknownClass(String),
    #[error("the store is read-only (opened for inspection)")]
    ReadOnly,
    #[error("the store is closed")]
    Closed,
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt data in {path} at offset {offset}: {what}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        what: String,
    },
    #[error("data directory {path} is locked by another ferry process (pid in the lock file: {holder}); stop it or use read-only inspection")]
    Locked { path: PathBuf, holder: String },
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            op,
            path: path.into(),
            source,
        }
    }
    /// True for refusals that are backpressure (retry later), not failures.
    pub fn is_backpressure(&self) -> bool {
        matches!(
            self,
            StoreError::ClassFull { .. } | StoreError::Headroom { .. }
        )
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The store handle. Cheap to clone; all clones share one writer.
#[derive(Clone)]
pub struct Store {
    inner: Arc<commit::Shared>,
}

impl Store {
    /// Opens (creating if needed) the store in `opts.data_dir`, runs recovery on every class,
    /// and starts the group-commit writer (unless read-only).
    pub fn open(opts: StoreOptions) -> Result<(Store, RecoveryReport)> {
        let (inner, report) = commit::Shared::open(opts)?;
        Ok((Store { inner }, report))
    }

    pub fn class_names(&self) -> Vec<String> {
        self.inner.class_names()
    }

    pub fn class_id(&self, name: &str) -> Option<ClassId> {
        self.inner.class_id(name)
    }

    /// Queues `rec` for the next group commit of `class`. Returns at once: `Err` when the
    /// append is refused now (class full with `reject`, disk headroom, closed); otherwise a
    /// ticket that resolves to the record's sequence number once it is durable (or to an
    /// error, e.g. a refusal found by the writer or an I/O error).
    pub fn append(&self, class: ClassId, rec: Record) -> Result<CommitTicket> {
        self.inner.append(class, rec)
    }

    /// Like [`Store::append`], but the append waits in `batch` until [`Store::submit`], and
    /// the record is borrowed (encoded into the batch at once). A caller with several records
    /// at hand (one socket read's PUBLISHes) hands them to the writer in one go, so they share
    /// a commit without the writer lingering for them, and waits for all of them with one
    /// [`BatchTicket`]. The same checks refuse an append at once (`Err`, nothing queued);
    /// otherwise returns the append's index in the batch, which is its place in the ticket's
    /// results. A batch dropped unsubmitted stores nothing.
    pub fn append_to(
        &self,
        batch: &mut AppendBatch,
        class: ClassId,
        rec: RecordRef<'_>,
    ) -> Result<usize> {
        self.inner.append_to(batch, class, rec)
    }

    /// Queues every append of `batch` for the next group commit and empties it. The ticket
    /// completes once, when every append of the batch is durable or failed, with one result
    /// per append in batch order (an empty batch: at once, with no results). On `Err` (store
    /// closed) nothing was queued; a ticket of a batch the writer could not take resolves every
    /// result to `StoreError::Closed`.
    pub fn submit(&self, batch: &mut AppendBatch) -> Result<BatchTicket> {
        self.inner.submit(batch)
    }

    /// A reader over `class` starting at `from_seq` (records before the first available one
    /// are skipped). Reads are blocking `pread`s of at most one batch.
    pub fn reader(&self, class: ClassId, from_seq: u64) -> Result<Reader> {
        self.inner.reader(class, from_seq)
    }

    /// The last sequence number of `class` that is durable.
    pub fn committed(&self, class: ClassId) -> u64 {
        self.inner.committed(class)
    }

    /// A channel whose value is the last durable sequence of `class`; it changes on every
    /// commit of that class (for readers waiting for new data).
    pub fn subscribe(&self, class: ClassId) -> tokio::sync::watch::Receiver<u64> {
        self.inner.subscribe(class)
    }

    /// Records that everything up to `pos.seq` was delivered: persists the position and frees
    /// sealed segments that are fully acknowledged. A position at or before the current one
    /// is ignored.
    pub fn ack(&self, class: ClassId, pos: Position) -> Result<()> {
        self.inner.ack(class, pos)
    }

    pub fn acked(&self, class: ClassId) -> Position {
        self.inner.acked(class)
    }

    pub fn stats(&self) -> Vec<ClassStats> {
        self.inner.stats()
    }

    /// Writer I/O counters (commits, fsync latency, batch sizes, bytes written).
    pub fn io_stats(&self) -> IoStats {
        self.inner.io.snapshot()
    }

    /// Applies `max_age` now (the writer also does this about once a second).
    pub fn enforce_retention(&self, now_ms: u64) -> Result<()> {
        self.inner.enforce_retention(now_ms)
    }

    /// Operator purge: drops waiting records of `class` (all, or those received before
    /// `older_than_ms`), a whole segment at a time; returns (records, bytes on disk) removed.
    pub fn purge(&self, class: ClassId, older_than_ms: Option<u64>) -> Result<(u64, u64)> {
        self.inner.purge(class, older_than_ms)
    }

    /// Fault injection for tests: the writer thread blocks for `d`, like a hung disk (appends
    /// queue up, tickets wait, the watchdog sees no progress). Not used by ferry itself.
    #[doc(hidden)]
    pub fn stall_writer(&self, d: std::time::Duration) -> Result<()> {
        self.inner.stall_writer(d)
    }

    /// Commits what is pending, stops the writer, and releases the data directory.
    pub fn close(&self) -> Result<()> {
        self.inner.close()
    }
}
