//! The shared store state and the group-commit writer.
//!
//! ```text
//!  append() ──Cmd::Batch───▶ ┌──────────── writer thread ─────────────┐
//!  submit() ──Cmd::Batch───▶ │ 1. take what is queued (up to max_bytes;│
//!  purge()  ──Cmd::Purge───▶ │    linger ≤ max_delay only after idle)  │
//!                            │ 2. headroom check (statvfs)             │
//!                            │ 3. per class: one frame (the records    │
//!                            │    arrive encoded; concat + zstd), apply│
//!                            │    max_bytes (reject / drop_oldest),    │
//!                            │    roll the segment if full, write()    │
//!                            │ 4. per class touched: fdatasync         │
//!                            │ 5. publish the new end, complete tickets│
//!                            └─────────────────────────────────────────┘
//! ```
//! The writer owns every active segment file; other threads only read the in-memory summaries
//! (under a short per-class lock), delete fully acknowledged sealed segments, and write the
//! small state file. One thread doing all writes keeps frames in order without file locks and
//! turns many concurrent appends into one write + one fdatasync per class.

use super::ackfile::{ClassState, StateFile};
use super::format::*;
use super::reader::Reader;
use super::recovery::{recover_class, RecoveryReport};
use super::segment::{self, ActiveSegment, SegmentMeta, ZERO_STEP};
use super::*;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::{oneshot, watch};

/// Completes when the record is durable (`Ok(seq)`) or was refused / failed (`Err`).
/// `.await` it in async code, or call [`CommitTicket::wait`] from a plain thread.
pub struct CommitTicket(oneshot::Receiver<Result<u64>>);

impl CommitTicket {
    /// Blocks the current thread until the commit finished. Do not call inside a tokio runtime.
    pub fn wait(self) -> Result<u64> {
        self.0.blocking_recv().unwrap_or(Err(StoreError::Closed))
    }
}

impl Future for CommitTicket {
    type Output = Result<u64>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(StoreError::Closed)))
    }
}

/// Completes once for a whole submitted [`AppendBatch`], when every one of its appends is
/// durable or was refused / failed: one result per append, in the order of
/// [`Store::append_to`](super::Store::append_to) (the index it returned). One wake-up per
/// batch instead of one per record. `.await` it, or [`BatchTicket::wait`] from a plain thread.
pub struct BatchTicket {
    rx: oneshot::Receiver<Vec<Result<u64>>>,
    len: usize,
}

impl BatchTicket {
    /// Number of appends (and results) in the batch.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Blocks the current thread until the batch finished. Do not call inside a tokio runtime.
    pub fn wait(self) -> Vec<Result<u64>> {
        let len = self.len;
        self.rx.blocking_recv().unwrap_or_else(|_| closed(len))
    }
}

impl Future for BatchTicket {
    type Output = Vec<Result<u64>>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let len = self.len;
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| closed(len)))
    }
}

fn closed(len: usize) -> Vec<Result<u64>> {
    (0..len).map(|_| Err(StoreError::Closed)).collect()
}

/// The results of one submitted batch, filled in by the writer as its records complete.
struct BatchState {
    results: Vec<Result<u64>>,
    remaining: usize,
    tx: Option<oneshot::Sender<Vec<Result<u64>>>>,
}

/// How the writer reports one append's outcome: its own ticket ([`Store::append`]) or its
/// slot in a submitted batch (sent to the batch's ticket when the last slot completed). A
/// `Done` dropped without a result reports `StoreError::Closed`, like a dropped oneshot.
enum Done {
    One(Option<oneshot::Sender<Result<u64>>>),
    Slot {
        batch: Arc<Mutex<BatchState>>,
        index: usize,
        sent: bool,
    },
}

impl Done {
    fn send(mut self, r: Result<u64>) {
        self.complete(r);
    }

    fn complete(&mut self, r: Result<u64>) {
        match self {
            Done::One(tx) => {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(r);
                }
            }
            Done::Slot { batch, index, sent } => {
                if *sent {
                    return;
                }
                *sent = true;
                let mut b = batch.lock();
                if let Some(slot) = b.results.get_mut(*index) {
                    *slot = r;
                }
                b.remaining = b.remaining.saturating_sub(1);
                if b.remaining == 0 {
                    if let Some(tx) = b.tx.take() {
                        let results = std::mem::take(&mut b.results);
                        drop(b);
                        let _ = tx.send(results);
                    }
                }
            }
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        if let Done::Slot { sent: false, .. } = self {
            self.complete(Err(StoreError::Closed));
        }
    }
}

/// See `Writer::run`: while lingering (only after the writer was idle, and only when
/// `commit_max_delay` > 0), how long an empty queue may stay empty before the batch is
/// committed.
const QUIET: std::time::Duration = std::time::Duration::from_micros(200);

/// One append on its way to the writer: its record already encoded (by the caller, off the
/// writer thread) at `start..start + len` of its batch's buffer.
struct Queued {
    class: ClassId,
    start: usize,
    len: usize,
    timestamp_ms: u64,
    /// `None` in an [`AppendBatch`] until it is submitted (then a slot of its ticket).
    done: Option<Done>,
}

/// Appends gathered by one caller and handed to the writer in one message by
/// [`Store::submit`](super::Store::submit), e.g. every PUBLISH of one socket read: the writer
/// sees a client's burst whole, so it can commit at once instead of waiting to see whether
/// more is coming, and the caller waits for the whole burst with one [`BatchTicket`]. A batch
/// dropped unsubmitted stores nothing.
#[derive(Default)]
pub struct AppendBatch {
    items: Vec<Queued>,
    /// The batch's records, encoded back to back (the frame body format).
    buf: Vec<u8>,
}

impl AppendBatch {
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

enum Cmd {
    Batch {
        items: Vec<Queued>,
        buf: Bytes,
    },
    Purge {
        class: ClassId,
        older_than_ms: Option<u64>,
        done: mpsc::Sender<Result<(u64, u64)>>,
    },
    Retention {
        now_ms: u64,
        done: mpsc::Sender<Result<()>>,
    },
    Close {
        done: mpsc::Sender<Result<()>>,
    },
    /// Fault injection: the writer blocks for this long (a stand-in for a hung disk).
    Stall(std::time::Duration),
}

/// Per-class state shared by the writer, readers and ackers.
pub(crate) struct ClassShared {
    pub name: String,
    pub opts: ClassOptions,
    pub dir: PathBuf,
    pub inner: Mutex<ClassInner>,
    /// Serialises state-file writes; always taken before `inner`.
    pub state_file: Mutex<StateFile>,
    pub committed_tx: watch::Sender<u64>,
    /// Durable bytes of the class's segments (what `max_bytes` caps).
    pub disk_bytes: AtomicU64,
    /// Zeros after the active segment's data (`segment::ZERO_AHEAD`), which its file holds
    /// on top of `disk_bytes`.
    pub zeroed_ahead: AtomicU64,
    pub refused_full: AtomicU64,
    pub refused_headroom: AtomicU64,
    pub appended_records: AtomicU64,
    pub appended_bytes: AtomicU64,
    /// Frames a reader found damaged at run time (persisted counts come from recovery).
    pub corrupt_skipped: AtomicU64,
    pub read_only: bool,
}

pub(crate) struct ClassInner {
    /// Oldest first; the last one is the active segment. Never empty in a writable store.
    pub segments: VecDeque<SegmentMeta>,
    pub state: ClassState,
}

impl ClassInner {
    pub fn end_seq(&self) -> u64 {
        self.segments.back().map_or(1, |s| s.end_seq)
    }
    pub fn logical_end(&self) -> u64 {
        self.segments.back().map_or(0, |s| s.logical_end)
    }
}

impl ClassShared {
    /// Persists the class state after `f` changed it (state lock, then inner lock).
    fn update_state(&self, f: impl FnOnce(&mut ClassState) -> bool) -> Result<()> {
        let mut sf = self.state_file.lock();
        let snapshot = {
            let mut inner = self.inner.lock();
            if !f(&mut inner.state) {
                return Ok(());
            }
            inner.state.clone()
        };
        sf.write(&snapshot)
    }

    /// Removes the oldest segment (never the last one), counting its unacknowledged records
    /// as dropped for `reason` (None = it was fully acknowledged). Returns (records, bytes).
    fn drop_front(&self, reason: Option<DropReason>) -> Result<Option<(u64, u64)>> {
        let seg = {
            let mut inner = self.inner.lock();
            if inner.segments.len() < 2 {
                return Ok(None);
            }
            inner.segments.pop_front()
        };
        let Some(seg) = seg else { return Ok(None) };
        let acked = self.inner.lock().state.acked;
        let (records, _) = seg.unacked(&acked);
        if let (Some(reason), true) = (reason, records > 0) {
            self.update_state(|st| {
                st.dropped.add(reason, records);
                true
            })?;
            tracing::warn!(class = %self.name, reason = reason.as_str(), records, segment = %seg.path.display(),
                "retention dropped records that were not yet delivered");
        }
        std::fs::remove_file(&seg.path)
            .map_err(|e| StoreError::io("delete segment", &seg.path, e))?;
        segment::sync_dir(&self.dir)?;
        self.disk_bytes.fetch_sub(seg.len, Ordering::Relaxed);
        Ok(Some((records, seg.len)))
    }
}

/// Lock-free writer counters; see [`IoStats`].
#[derive(Default)]
pub(crate) struct IoCounters {
    commits: AtomicU64,
    fsyncs: AtomicU64,
    fsync_nanos: AtomicU64,
    fsync_buckets: [AtomicU64; FSYNC_BUCKETS.len() + 1],
    batch_buckets: [AtomicU64; BATCH_BUCKETS.len() + 1],
    batch_records: AtomicU64,
    records: AtomicU64,
    logical: AtomicU64,
    frame_bytes: AtomicU64,
    zeroed: AtomicU64,
    zero_nanos: AtomicU64,
    loops: AtomicU64,
}

impl IoCounters {
    fn fsync(&self, d: std::time::Duration) {
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.fsync_nanos
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        let s = d.as_secs_f64();
        let i = FSYNC_BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(FSYNC_BUCKETS.len());
        self.fsync_buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    fn commit(&self, records: u64) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.batch_records.fetch_add(records, Ordering::Relaxed);
        let i = BATCH_BUCKETS
            .iter()
            .position(|b| records as f64 <= *b)
            .unwrap_or(BATCH_BUCKETS.len());
        self.batch_buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> IoStats {
        let cumulative = |b: &[AtomicU64]| {
            let mut acc = 0;
            b.iter()
                .map(|x| {
                    acc += x.load(Ordering::Relaxed);
                    acc
                })
                .collect()
        };
        IoStats {
            commits: self.commits.load(Ordering::Relaxed),
            fsyncs: self.fsyncs.load(Ordering::Relaxed),
            fsync_seconds_sum: self.fsync_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            fsync_buckets: cumulative(&self.fsync_buckets),
            batch_buckets: cumulative(&self.batch_buckets),
            batch_records_sum: self.batch_records.load(Ordering::Relaxed),
            records_written: self.records.load(Ordering::Relaxed),
            logical_bytes_written: self.logical.load(Ordering::Relaxed),
            frame_bytes_written: self.frame_bytes.load(Ordering::Relaxed),
            zeroed_bytes_written: self.zeroed.load(Ordering::Relaxed),
            zero_seconds_sum: self.zero_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            writer_loops: self.loops.load(Ordering::Relaxed),
        }
    }
}

pub(crate) struct Shared {
    opts: StoreOptions,
    pub(crate) io: Arc<IoCounters>,
    pub(crate) classes: Vec<Arc<ClassShared>>,
    tx: Mutex<Option<mpsc::Sender<Cmd>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    headroom_ok: Arc<AtomicBool>,
    lock: Mutex<Option<std::fs::File>>,
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Creates `dir` and any missing parents with mode 0750 (owner and group; the umask may
/// narrow it further), so stored messages are never readable by other users, whatever the
/// umask of whoever started ferry.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DATA_DIR_MODE)
        .create(dir)
}

/// Mode of directories the store creates.
pub const DATA_DIR_MODE: u32 = 0o750;

/// An existing data directory is the operator's: ferry does not change its mode, but says
/// so when other users can enter it.
fn warn_if_open_to_others(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(root) {
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o007 != 0 {
            tracing::warn!(path = %root.display(), mode = format!("{mode:04o}"),
                "the data directory is open to other users (they may read stored messages); run `chmod o-rwx` on it");
        }
    }
}

fn lock_data_dir(dir: &Path) -> Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::io::AsRawFd;
    let path = dir.join("LOCK");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StoreError::io("open lock file", &path, e))?;
    // SAFETY: flock on a valid, owned file descriptor.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let mut holder = String::new();
        let _ = f.read_to_string(&mut holder);
        return Err(StoreError::Locked {
            path: dir.to_path_buf(),
            holder: holder.trim().to_string(),
        });
    }
    let _ = f.set_len(0);
    let _ = f.rewind();
    let _ = writeln!(f, "{}", std::process::id());
    Ok(f)
}

use std::path::Path;

impl Shared {
    pub fn open(opts: StoreOptions) -> Result<(Arc<Shared>, RecoveryReport)> {
        let root = &opts.data_dir;
        let lock = if opts.read_only {
            if !root.is_dir() {
                return Err(StoreError::io(
                    "open data directory",
                    root,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
                ));
            }
            None
        } else {
            create_private_dir(&root.join("classes"))
                .map_err(|e| StoreError::io("create data directory", root, e))?;
            warn_if_open_to_others(root);
            Some(lock_data_dir(root)?)
        };
        let mut report = RecoveryReport::default();
        let quarantine = root.join("quarantine");
        let mut classes = Vec::new();
        let mut actives = Vec::new();
        for c in &opts.classes {
            let dir = root.join("classes").join(&c.name);
            let rec = recover_class(&c.name, &dir, &quarantine, opts.read_only, &mut report)?;
            let mut segments: VecDeque<SegmentMeta> = rec.segments.into();
            let acked = rec.state.acked;
            if let Some(back) = segments.back().filter(|b| b.end_seq <= acked.seq) {
                // The log ends at or before the acknowledged position: records that were
                // delivered are gone from disk (a device that lost synced writes, files
                // removed by hand). New records must not reuse sequence numbers the forwarder
                // already counts as delivered, so the log goes on after the position.
                tracing::error!(class = %c.name, log_end_seq = back.end_seq - 1, acked_seq = acked.seq,
                    "the acknowledged position is past the end of the log: delivered records are missing from disk; new records start after the position");
                report.actions.push(RecoveryAction::PositionPastLogEnd {
                    class: c.name.clone(),
                    log_end_seq: back.end_seq - 1,
                    acked_seq: acked.seq,
                    applied: !opts.read_only,
                });
                if !opts.read_only {
                    // The old last segment is sealed now: cut any zeros written ahead of it.
                    segment::truncate_durably(&back.path, back.len, "seal segment")?;
                    let first = acked.seq + 1;
                    let logical = acked.logical_end.max(back.logical_end);
                    let a = ActiveSegment::create(&dir, first, logical)?;
                    segments.push_back(empty_meta(&a.path, first, logical));
                }
            }
            if segments.is_empty() && !opts.read_only {
                let first = rec.state.acked.seq + 1;
                let logical = rec.state.acked.logical_end;
                let a = ActiveSegment::create(&dir, first, logical)?;
                segments.push_back(empty_meta(&a.path, first, logical));
            }
            // The active segment's file may hold zeros after its data (written ahead).
            let zeroed_ahead = if opts.read_only {
                segments.back().map_or(0, |s| {
                    std::fs::metadata(&s.path).map_or(0, |m| m.len().saturating_sub(s.len))
                })
            } else {
                let back = segments.back().ok_or(StoreError::Closed)?;
                let mut a = ActiveSegment::reopen(&back.path, back.len)?;
                // More zeros than this configuration allows (written under a larger
                // `storage.zero_ahead`, or none wanted now): cut them, the writer zeroes
                // again within the current setting and caps.
                if a.zeroed_to - a.len > opts.zero_ahead_bytes {
                    a.trim();
                }
                let zeroed = a.zeroed_to - a.len;
                actives.push(Some(a));
                zeroed
            };
            let disk: u64 = segments.iter().map(|s| s.len).sum();
            let end = segments.back().map_or(1, |s| s.end_seq);
            let (committed_tx, _) = watch::channel(end - 1);
            classes.push(Arc::new(ClassShared {
                name: c.name.clone(),
                opts: c.clone(),
                dir,
                inner: Mutex::new(ClassInner {
                    segments,
                    state: rec.state,
                }),
                state_file: Mutex::new(rec.state_file),
                committed_tx,
                disk_bytes: AtomicU64::new(disk),
                refused_full: AtomicU64::new(0),
                zeroed_ahead: AtomicU64::new(zeroed_ahead),
                refused_headroom: AtomicU64::new(0),
                appended_records: AtomicU64::new(0),
                appended_bytes: AtomicU64::new(0),
                corrupt_skipped: AtomicU64::new(0),
                read_only: opts.read_only,
            }));
        }
        let headroom_ok = Arc::new(AtomicBool::new(true));
        let io = Arc::new(IoCounters::default());
        let (tx, writer) = if opts.read_only {
            (None, None)
        } else {
            let (tx, rx) = mpsc::channel();
            let mut w = Writer {
                opts: opts.clone(),
                classes: classes.clone(),
                actives,
                headroom_ok: headroom_ok.clone(),
                io: io.clone(),
                rx,
                cctx: None,
                body: Vec::new(),
                zbody: Vec::new(),
                frame: Vec::new(),
                last_retention: Instant::now(),
                zero_retry_at: None,
            };
            let h = std::thread::Builder::new()
                .name("ferry-store-writer".into())
                .spawn(move || w.run())
                .map_err(|e| StoreError::io("spawn writer thread", &opts.data_dir, e))?;
            (Some(tx), Some(h))
        };
        let shared = Arc::new(Shared {
            opts,
            io,
            classes,
            tx: Mutex::new(tx),
            writer: Mutex::new(writer),
            headroom_ok,
            lock: Mutex::new(lock),
        });
        Ok((shared, report))
    }

    fn class(&self, class: ClassId) -> Result<&Arc<ClassShared>> {
        self.classes
            .get(class)
            .ok_or_else(|| StoreError::UnknownClass(format!("#{class}")))
    }

    pub fn class_names(&self) -> Vec<String> {
        self.classes.iter().map(|c| c.name.clone()).collect()
    }

    pub fn class_id(&self, name: &str) -> Option<ClassId> {
        self.classes.iter().position(|c| c.name == name)
    }

    fn send(&self, cmd: Cmd) -> Result<()> {
        let guard = self.tx.lock();
        let tx = match &*guard {
            Some(tx) => tx,
            None if self.opts.read_only => return Err(StoreError::ReadOnly),
            None => return Err(StoreError::Closed),
        };
        tx.send(cmd).map_err(|_| StoreError::Closed)
    }

    pub fn append(&self, class: ClassId, rec: Record) -> Result<CommitTicket> {
        let mut batch = AppendBatch::default();
        self.append_to(&mut batch, class, rec.as_ref())?;
        let (tx, rx) = oneshot::channel();
        if let Some(q) = batch.items.first_mut() {
            q.done = Some(Done::One(Some(tx)));
        }
        self.send_batch(&mut batch)?;
        Ok(CommitTicket(rx))
    }

    /// Hands every append in `batch` to the writer in one message; the ticket completes once,
    /// with one result per append (an empty batch: at once, with no results).
    pub fn submit(&self, batch: &mut AppendBatch) -> Result<BatchTicket> {
        let len = batch.items.len();
        let (tx, rx) = oneshot::channel();
        let ticket = BatchTicket { rx, len };
        if len == 0 {
            let _ = tx.send(Vec::new());
            return Ok(ticket);
        }
        let state = Arc::new(Mutex::new(BatchState {
            // Placeholders: every slot overwrites its own (a dropped one with `Closed`).
            results: (0..len).map(|_| Ok(0)).collect(),
            remaining: len,
            tx: Some(tx),
        }));
        for (index, q) in batch.items.iter_mut().enumerate() {
            q.done = Some(Done::Slot {
                batch: state.clone(),
                index,
                sent: false,
            });
        }
        drop(state);
        // On a send error the items (and their slots) are dropped: the ticket resolves to
        // `Closed` for every append.
        let len = self.send_batch(batch)?;
        // The next batch of this caller is likely as large: no regrowing from empty.
        batch.buf = Vec::with_capacity(len);
        Ok(ticket)
    }

    /// Hands the appends of `batch` (their `done` set) to the writer and empties `batch`;
    /// returns the encoded bytes sent.
    fn send_batch(&self, batch: &mut AppendBatch) -> Result<usize> {
        let items = std::mem::take(&mut batch.items);
        let buf = Bytes::from(std::mem::take(&mut batch.buf));
        let len = buf.len();
        self.send(Cmd::Batch { items, buf })?;
        Ok(len)
    }

    pub fn append_to(
        &self,
        batch: &mut AppendBatch,
        class: ClassId,
        rec: RecordRef<'_>,
    ) -> Result<usize> {
        let c = self.class(class)?;
        if self.opts.read_only {
            return Err(StoreError::ReadOnly);
        }
        let size = rec.logical_size();
        if size > self.opts.commit_max_bytes.max(1 << 16) {
            return Err(StoreError::TooLarge {
                size,
                max: self.opts.commit_max_bytes.max(1 << 16),
            });
        }
        // Fast refusals from the writer's last measurements; the writer re-checks exactly.
        if !self.headroom_ok.load(Ordering::Relaxed) {
            // Only while refusing: look again, so ingest resumes as soon as space returns.
            let free = self.opts.free_space.available().unwrap_or(u64::MAX);
            if free < self.opts.min_free_bytes {
                c.refused_headroom.fetch_add(1, Ordering::Relaxed);
                return Err(StoreError::Headroom {
                    free,
                    min: self.opts.min_free_bytes,
                });
            }
            self.headroom_ok.store(true, Ordering::Relaxed);
        }
        let disk = c.disk_bytes.load(Ordering::Relaxed);
        if c.opts.overflow == Overflow::Reject && disk + (size as u64) > c.opts.max_bytes {
            c.refused_full.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::ClassFull {
                class: c.name.clone(),
                disk_bytes: disk,
                max_bytes: c.opts.max_bytes,
            });
        }
        // Encoding here, on the caller's thread, keeps it off the single writer thread.
        let start = batch.buf.len();
        rec.encode(&mut batch.buf);
        let len = batch.buf.len() - start;
        debug_assert_eq!(len, size, "RecordRef::logical_size must match its encoding");
        batch.items.push(Queued {
            class,
            start,
            len,
            timestamp_ms: rec.timestamp_ms,
            done: None,
        });
        Ok(batch.items.len() - 1)
    }

    pub fn reader(&self, class: ClassId, from_seq: u64) -> Result<Reader> {
        Ok(Reader::new(self.class(class)?.clone(), from_seq))
    }

    pub fn committed(&self, class: ClassId) -> u64 {
        self.classes
            .get(class)
            .map_or(0, |c| *c.committed_tx.borrow())
    }

    pub fn subscribe(&self, class: ClassId) -> watch::Receiver<u64> {
        match self.classes.get(class) {
            Some(c) => c.committed_tx.subscribe(),
            None => watch::channel(0).1,
        }
    }

    pub fn ack(&self, class: ClassId, pos: Position) -> Result<()> {
        let c = self.class(class)?;
        if c.read_only {
            return Err(StoreError::ReadOnly);
        }
        let committed = *c.committed_tx.borrow();
        if pos.seq > committed {
            return Err(StoreError::Corrupt {
                path: c.dir.clone(),
                offset: 0,
                what: format!(
                    "ack of seq {} beyond the committed end {committed}",
                    pos.seq
                ),
            });
        }
        c.update_state(|st| {
            if pos.seq <= st.acked.seq {
                return false;
            }
            st.acked = pos;
            true
        })?;
        // Free sealed segments that are fully acknowledged.
        loop {
            let front_done = {
                let inner = c.inner.lock();
                inner.segments.len() > 1
                    && inner
                        .segments
                        .front()
                        .is_some_and(|s| s.end_seq <= inner.state.acked.seq + 1)
            };
            if !front_done || c.drop_front(None)?.is_none() {
                break;
            }
        }
        Ok(())
    }

    pub fn acked(&self, class: ClassId) -> Position {
        self.classes
            .get(class)
            .map_or_else(Position::default, |c| c.inner.lock().state.acked)
    }

    pub fn stats(&self) -> Vec<ClassStats> {
        self.classes
            .iter()
            .map(|c| {
                let (mut st, start) = {
                    let inner = c.inner.lock();
                    let acked = inner.state.acked;
                    let (mut records, mut logical) = (0, 0);
                    for s in &inner.segments {
                        let (r, l) = s.unacked(&acked);
                        records += r;
                        logical += l;
                    }
                    let first = inner.segments.front().map_or(1, |s| s.first_seq);
                    let start = (acked.seq + 1).max(first);
                    let end = inner.end_seq();
                    let newest_ts = inner
                        .segments
                        .iter()
                        .rev()
                        .find(|s| s.records > 0)
                        .map(|s| s.max_ts);
                    let mut dropped = inner.state.dropped.clone();
                    dropped.corrupt += c.corrupt_skipped.load(Ordering::Relaxed);
                    (
                        ClassStats {
                            name: c.name.clone(),
                            records,
                            logical_bytes: logical,
                            disk_bytes: inner.segments.iter().map(|s| s.len).sum::<u64>()
                                + c.zeroed_ahead.load(Ordering::Relaxed),
                            segments: inner.segments.len() as u64,
                            oldest_seq: (records > 0).then_some(start),
                            oldest_ts_ms: None,
                            newest_seq: end - 1,
                            newest_ts_ms: newest_ts,
                            acked,
                            dropped,
                            appended_records: c.appended_records.load(Ordering::Relaxed),
                            appended_bytes: c.appended_bytes.load(Ordering::Relaxed),
                            refused_full: c.refused_full.load(Ordering::Relaxed),
                            refused_headroom: c.refused_headroom.load(Ordering::Relaxed),
                        },
                        start,
                    )
                };
                if st.records > 0 {
                    let mut r = Reader::new(c.clone(), start);
                    if let Ok(batch) = r.read_batch(1, 1) {
                        if let Some(first) = batch.first() {
                            st.oldest_seq = Some(first.seq);
                            st.oldest_ts_ms = Some(first.record.timestamp_ms);
                        }
                    }
                }
                st
            })
            .collect()
    }

    fn request<T>(&self, make: impl FnOnce(mpsc::Sender<Result<T>>) -> Cmd) -> Result<T> {
        let (tx, rx) = mpsc::channel();
        self.send(make(tx))?;
        rx.recv().unwrap_or(Err(StoreError::Closed))
    }

    pub fn enforce_retention(&self, now_ms: u64) -> Result<()> {
        self.request(|done| Cmd::Retention { now_ms, done })
    }

    pub fn purge(&self, class: ClassId, older_than_ms: Option<u64>) -> Result<(u64, u64)> {
        self.class(class)?;
        self.request(|done| Cmd::Purge {
            class,
            older_than_ms,
            done,
        })
    }

    pub fn stall_writer(&self, d: std::time::Duration) -> Result<()> {
        self.send(Cmd::Stall(d))
    }

    pub fn close(&self) -> Result<()> {
        let res = if self.tx.lock().is_some() {
            self.request(|done| Cmd::Close { done })
        } else {
            Ok(())
        };
        self.tx.lock().take();
        if let Some(h) = self.writer.lock().take() {
            let _ = h.join();
        }
        // Release the data directory (flock is dropped with the file).
        self.lock.lock().take();
        res
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Dropping the sender ends the writer after it commits what is queued.
        self.tx.lock().take();
        if let Some(h) = self.writer.lock().take() {
            let _ = h.join();
        }
    }
}

fn empty_meta(path: &Path, first_seq: u64, logical_start: u64) -> SegmentMeta {
    SegmentMeta {
        path: path.to_path_buf(),
        first_seq,
        end_seq: first_seq,
        logical_start,
        logical_end: logical_start,
        len: SEGMENT_HEADER_LEN as u64,
        max_ts: 0,
        records: 0,
        logical_bytes: 0,
    }
}

struct Pending {
    /// The encoded record (a slice of its batch's buffer).
    data: Bytes,
    timestamp_ms: u64,
    done: Done,
}

impl Pending {
    fn new(buf: &Bytes, q: Queued) -> Pending {
        Pending {
            data: buf.slice(q.start..q.start + q.len),
            timestamp_ms: q.timestamp_ms,
            // Every queued append has its `Done` by now (set by `append` / `submit`).
            done: q.done.unwrap_or(Done::One(None)),
        }
    }
}

struct Writer {
    opts: StoreOptions,
    classes: Vec<Arc<ClassShared>>,
    actives: Vec<Option<ActiveSegment>>,
    headroom_ok: Arc<AtomicBool>,
    io: Arc<IoCounters>,
    rx: mpsc::Receiver<Cmd>,
    cctx: Option<zstd::bulk::Compressor<'static>>,
    body: Vec<u8>,
    /// The compressed body, reused from commit to commit.
    zbody: Vec<u8>,
    frame: Vec<u8>,
    last_retention: Instant,
    /// After a failed zero write, none is tried before this (no log line per commit).
    zero_retry_at: Option<Instant>,
}

/// One frame of a group commit, between write and fdatasync.
struct FrameWritten {
    header: FrameHeader,
    /// Offset just past the frame in its segment.
    end_offset: u64,
    /// Already fdatasync'd (its segment was sealed by a roll within this commit).
    synced: bool,
    /// Already visible to readers: `roll` publishes the frames it synced before the next
    /// segment appears (see there).
    published: bool,
    tickets: Vec<Done>,
}

impl Writer {
    /// Group commit with natural batching: whatever queued up while the previous commit was
    /// writing and syncing is committed at once, as the next batch. Only a writer that was
    /// idle (blocked on an empty queue) may linger for more, and only when
    /// `commit_max_delay` > 0: then it waits while appends keep arriving (gaps < `QUIET`), up
    /// to `commit_max_delay` after the first. Callers that submit a burst as one
    /// [`AppendBatch`] need no linger at all.
    fn run(&mut self) {
        let tick = std::time::Duration::from_secs(1);
        loop {
            self.io.loops.fetch_add(1, Ordering::Relaxed);
            let (first, was_idle) = match self.rx.try_recv() {
                Ok(c) => (c, false),
                Err(mpsc::TryRecvError::Disconnected) => return,
                // Idle: zero a little of an active segment ahead, then look again.
                Err(mpsc::TryRecvError::Empty) if self.zero_step() => continue,
                Err(mpsc::TryRecvError::Empty) => match self.rx.recv_timeout(tick) {
                    Ok(c) => (c, true),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.periodic();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                },
            };
            let mut batch: Vec<Vec<Pending>> =
                (0..self.classes.len()).map(|_| Vec::new()).collect();
            let mut bytes = 0usize;
            let mut control = None;
            let max_delay = self.opts.commit_max_delay;
            let linger_until =
                (was_idle && !max_delay.is_zero()).then(|| Instant::now() + max_delay);
            let mut next = Some(first);
            let mut disconnected = false;
            while let Some(cmd) = next.take() {
                match cmd {
                    Cmd::Batch { items, buf } => {
                        for q in items {
                            bytes += q.len;
                            batch[q.class].push(Pending::new(&buf, q));
                        }
                    }
                    other => {
                        control = Some(other);
                        break;
                    }
                }
                if bytes >= self.opts.commit_max_bytes {
                    break;
                }
                next = match self.rx.try_recv() {
                    Ok(c) => Some(c),
                    Err(mpsc::TryRecvError::Disconnected) => {
                        disconnected = true;
                        None
                    }
                    Err(mpsc::TryRecvError::Empty) => match linger_until {
                        Some(deadline) if Instant::now() < deadline => {
                            let left = deadline.saturating_duration_since(Instant::now());
                            match self.rx.recv_timeout(left.min(QUIET)) {
                                Ok(c) => Some(c),
                                Err(mpsc::RecvTimeoutError::Timeout) => None,
                                Err(mpsc::RecvTimeoutError::Disconnected) => {
                                    disconnected = true;
                                    None
                                }
                            }
                        }
                        _ => None,
                    },
                };
            }
            self.commit(batch);
            if let Some(c) = control {
                if self.control(c) {
                    return;
                }
            }
            if disconnected {
                return;
            }
            if self.last_retention.elapsed() >= tick {
                self.periodic();
            }
        }
    }

    /// Returns true when the writer must stop.
    fn control(&mut self, cmd: Cmd) -> bool {
        match cmd {
            Cmd::Batch { .. } => false,
            Cmd::Purge {
                class,
                older_than_ms,
                done,
            } => {
                let _ = done.send(self.purge(class, older_than_ms, DropReason::Purge));
                false
            }
            Cmd::Retention { now_ms, done } => {
                let _ = done.send(self.retention(now_ms));
                false
            }
            Cmd::Stall(d) => {
                tracing::warn!(?d, "store writer stalled on purpose (fault injection)");
                std::thread::sleep(d);
                false
            }
            Cmd::Close { done } => {
                // Anything still queued behind Close is committed before stopping.
                let mut batch: Vec<Vec<Pending>> =
                    (0..self.classes.len()).map(|_| Vec::new()).collect();
                while let Ok(cmd) = self.rx.try_recv() {
                    if let Cmd::Batch { items, buf } = cmd {
                        for q in items {
                            batch[q.class].push(Pending::new(&buf, q));
                        }
                    }
                }
                self.commit(batch);
                let _ = done.send(Ok(()));
                true
            }
        }
    }

    fn periodic(&mut self) {
        self.last_retention = Instant::now();
        self.refresh_headroom();
        if let Err(e) = self.retention(now_ms()) {
            tracing::error!(error = %e, "retention pass failed; will retry");
        }
    }

    fn refresh_headroom(&self) -> (bool, u64) {
        let free = match self.opts.free_space.available() {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read free disk space; assuming enough");
                u64::MAX
            }
        };
        let ok = free >= self.opts.min_free_bytes;
        self.headroom_ok.store(ok, Ordering::Relaxed);
        (ok, free)
    }

    fn commit(&mut self, batch: Vec<Vec<Pending>>) {
        if batch.iter().all(|b| b.is_empty()) {
            return;
        }
        let (ok, free) = self.refresh_headroom();
        let total: usize = batch.iter().flatten().map(|p| p.data.len()).sum();
        if !ok || free < self.opts.min_free_bytes.saturating_add(total as u64) {
            for (class, pend) in batch.into_iter().enumerate() {
                self.classes[class]
                    .refused_headroom
                    .fetch_add(pend.len() as u64, Ordering::Relaxed);
                for p in pend {
                    p.done.send(Err(StoreError::Headroom {
                        free,
                        min: self.opts.min_free_bytes,
                    }));
                }
            }
            return;
        }
        let records: usize = batch.iter().map(|b| b.len()).sum();
        self.io.commit(records as u64);
        for (class, pend) in batch.into_iter().enumerate() {
            if !pend.is_empty() {
                self.commit_class(class, pend);
            }
        }
    }

    /// Writes `pend` as one or more frames (each at most `frame_limit` raw bytes), fdatasyncs,
    /// publishes the new end and completes the tickets.
    fn commit_class(&mut self, class: ClassId, pend: Vec<Pending>) {
        let c = self.classes[class].clone();
        let frame_limit = self
            .opts
            .commit_max_bytes
            .min((self.opts.segment_bytes / 2) as usize)
            .max(1);
        let mut frames: Vec<FrameWritten> = Vec::new();
        let mut chunk = Vec::new();
        let mut chunk_bytes = 0;
        let mut failed: Option<StoreError> = None;
        let mut iter = pend.into_iter().peekable();
        while let Some(p) = iter.next() {
            chunk_bytes += p.data.len();
            chunk.push(p);
            let full = iter
                .peek()
                .is_none_or(|n| chunk_bytes + n.data.len() > frame_limit);
            if !full {
                continue;
            }
            let this = std::mem::take(&mut chunk);
            chunk_bytes = 0;
            if let Some(e) = &failed {
                fail_all(this.into_iter().map(|p| p.done).collect(), e);
                continue;
            }
            match self.write_frame(class, this, &mut frames) {
                Ok(f) => frames.push(f),
                Err((e, tickets)) => {
                    fail_all(tickets, &e);
                    // Later records must not be written after a gap in this batch.
                    failed = Some(e);
                }
            }
        }
        if frames.is_empty() {
            // A failed write cut the file back, zeros included.
            self.note_zeroed(class);
            return;
        }
        let t0 = Instant::now();
        let sync_res = match self.actives[class].as_mut() {
            Some(a) => a.sync(),
            None => Err(StoreError::Closed),
        };
        self.io.fsync(t0.elapsed());
        if let Err(e) = &sync_res {
            tracing::error!(class = %c.name, error = %e, "commit failed; appends refused with an I/O error");
        }
        let active_len = self.actives[class].as_ref().map_or(0, |a| a.len);
        let mut completed = Vec::new();
        {
            let mut inner = c.inner.lock();
            for f in frames {
                if f.published {
                    // Published by `roll` already (synced there); only its tickets are left.
                    completed.push(f);
                    continue;
                }
                if !f.synced && sync_res.is_err() {
                    if let Err(e) = &sync_res {
                        fail_all(f.tickets, e);
                    }
                    continue;
                }
                if !publish_frame(&self.io, &c, &mut inner, &f, active_len) {
                    fail_all(f.tickets, &StoreError::Closed);
                    continue;
                }
                completed.push(f);
            }
            // The zeros the frames went over stop counting in the same step, so `stats()`
            // (under this lock) never counts those bytes twice.
            self.note_zeroed(class);
            let end = inner.end_seq();
            c.committed_tx.send_replace(end - 1);
        }
        for f in completed {
            for (i, t) in f.tickets.into_iter().enumerate() {
                t.send(Ok(f.header.first_seq + i as u64));
            }
        }
    }

    /// Publishes how many zeros the class's active segment holds after its data (its file
    /// size on top of `disk_bytes`).
    fn note_zeroed(&self, class: ClassId) {
        if let Some(a) = self.actives[class].as_ref() {
            self.classes[class]
                .zeroed_ahead
                .store(a.zeroed_to.saturating_sub(a.len), Ordering::Relaxed);
        }
    }

    /// Called when the queue is empty, before the writer blocks: zeroes at most `ZERO_STEP`
    /// more of one class's active segment, towards `zero_ahead_bytes` past its data (why:
    /// [`segment::ZERO_AHEAD`]). True when it wrote something (the caller then looks at the
    /// queue again before the next step), so a commit never waits for more than one step, and a
    /// writer that is never idle writes no zeros (its commits extend the file, as without
    /// zeroing). The zeros count against the class's `max_bytes` and the disk headroom as data
    /// would; when either has no room, none are written.
    fn zero_step(&mut self) -> bool {
        let ahead = self.opts.zero_ahead_bytes;
        if ahead == 0 || self.zero_retry_at.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        for class in 0..self.actives.len() {
            let Some(a) = self.actives[class].as_mut() else {
                continue;
            };
            let from = a.zeroed_to.max(a.len);
            let target = (a.len + ahead).min(self.opts.segment_bytes);
            // Whole steps only (each costs an fdatasync that commits the new file size), but
            // the last bit before the segment's end too.
            let step = ZERO_STEP.min(ahead);
            if a.pending > 0
                || target <= from
                || (target - from < step && target < self.opts.segment_bytes)
            {
                continue;
            }
            let to = target.min(from + ZERO_STEP);
            let c = &self.classes[class];
            if c.disk_bytes.load(Ordering::Relaxed) + (to - a.len) > c.opts.max_bytes {
                continue;
            }
            match self.opts.free_space.available() {
                Ok(free) if free >= self.opts.min_free_bytes.saturating_add(to - from) => {}
                _ => continue,
            }
            let t0 = Instant::now();
            let res = a.zero_ahead(to);
            c.zeroed_ahead
                .store(a.zeroed_to.saturating_sub(a.len), Ordering::Relaxed);
            match res {
                Ok(n) => {
                    self.io.zeroed.fetch_add(n, Ordering::Relaxed);
                    self.io
                        .zero_nanos
                        .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(class = %c.name, error = %e,
                        "could not zero the active segment ahead; commits go on without it, next try in a minute");
                    self.zero_retry_at = Some(Instant::now() + std::time::Duration::from_secs(60));
                }
            }
            return true;
        }
        false
    }

    /// Encodes `pend` as one frame and writes it to the active segment (rolling first when
    /// it would not fit). Errors hand the tickets back for failing.
    #[allow(clippy::type_complexity)]
    fn write_frame(
        &mut self,
        class: ClassId,
        pend: Vec<Pending>,
        earlier: &mut [FrameWritten],
    ) -> std::result::Result<FrameWritten, (StoreError, Vec<Done>)> {
        let c = self.classes[class].clone();
        let (first_seq, logical_start) = next_position(&c, earlier);
        self.body.clear();
        let mut max_ts = 0;
        let mut tickets = Vec::with_capacity(pend.len());
        for p in pend {
            self.body.extend_from_slice(&p.data);
            max_ts = max_ts.max(p.timestamp_ms);
            tickets.push(p.done);
        }
        let raw_len = self.body.len();
        let count = tickets.len() as u32;
        self.frame.clear();
        let level = self.opts.compression_level;
        let mut compressed = false;
        if level > 0 && raw_len >= self.opts.compress_min_bytes {
            if self.cctx.is_none() {
                self.cctx = zstd::bulk::Compressor::new(level).ok();
            }
            if let Some(cctx) = self.cctx.as_mut() {
                self.zbody.clear();
                self.zbody.reserve(zstd::zstd_safe::compress_bound(raw_len));
                if cctx.compress_to_buffer(&self.body, &mut self.zbody).is_ok() {
                    let z = &self.zbody;
                    if z.len() < raw_len {
                        encode_frame(
                            &mut self.frame,
                            CODEC_ZSTD,
                            first_seq,
                            count,
                            raw_len as u32,
                            logical_start,
                            max_ts,
                            z,
                        );
                        compressed = true;
                    }
                }
            }
        }
        if !compressed {
            encode_frame(
                &mut self.frame,
                CODEC_RAW,
                first_seq,
                count,
                raw_len as u32,
                logical_start,
                max_ts,
                &self.body,
            );
        }
        let frame_len = self.frame.len() as u64;
        let header = match FrameHeader::decode(&self.frame) {
            Ok(h) => h,
            Err(e) => {
                let e = StoreError::Corrupt {
                    path: c.dir.clone(),
                    offset: 0,
                    what: e,
                };
                return Err((e, tickets));
            }
        };
        let active_used = |w: &Writer| {
            let a = w.actives[class].as_ref();
            let has = a.is_some_and(|a| a.len + a.pending > SEGMENT_HEADER_LEN as u64)
                || c.inner
                    .lock()
                    .segments
                    .back()
                    .is_some_and(|s| s.records > 0);
            (has, a.map_or(0, |a| a.len + a.pending))
        };
        let (has, used) = active_used(self);
        let needs_roll = has && used + frame_len > self.opts.segment_bytes;
        let needed = frame_len
            + if needs_roll {
                SEGMENT_HEADER_LEN as u64
            } else {
                0
            };

        // max_bytes: the class's files (including what this commit already wrote) stay
        // within the cap after this write.
        let pending_bytes: u64 = earlier
            .iter()
            .filter(|f| !f.synced)
            .map(|f| f.header.frame_len())
            .sum();
        let disk = c.disk_bytes.load(Ordering::Relaxed) + pending_bytes;
        if disk + needed > c.opts.max_bytes {
            match c.opts.overflow {
                Overflow::Reject => {
                    c.refused_full
                        .fetch_add(tickets.len() as u64, Ordering::Relaxed);
                    let e = StoreError::ClassFull {
                        class: c.name.clone(),
                        disk_bytes: disk,
                        max_bytes: c.opts.max_bytes,
                    };
                    return Err((e, tickets));
                }
                Overflow::DropOldest => {
                    if let Err(e) = self.make_room(class, needed + pending_bytes, earlier) {
                        return Err((e, tickets));
                    }
                }
            }
        }
        let (has, used) = active_used(self);
        if has && used + frame_len > self.opts.segment_bytes {
            if let Err(e) = self.roll(class, earlier) {
                return Err((e, tickets));
            }
        }
        let Some(active) = self.actives[class].as_mut() else {
            return Err((StoreError::Closed, tickets));
        };
        if let Err(e) = active.append(&self.frame) {
            tracing::error!(class = %c.name, error = %e, "segment write failed");
            return Err((e, tickets));
        }
        Ok(FrameWritten {
            header,
            end_offset: active.len + active.pending,
            synced: false,
            published: false,
            tickets,
        })
    }

    /// Seals the active segment and starts a new one at the class's end.
    /// Frames of this commit already written to the old segment are synced first, so a
    /// segment is complete on disk before the next one exists, and published in the same
    /// step that lists the new segment. Listing the new segment first let a reader at the
    /// old one's published end take it as finished and jump to the new segment's first
    /// record, past those frames, for good (`tests/store.rs`,
    /// `tailing_reader_sees_every_record_across_mid_commit_rolls`). Their tickets still
    /// complete with the rest of the commit.
    fn roll(&mut self, class: ClassId, earlier: &mut [FrameWritten]) -> Result<()> {
        let c = self.classes[class].clone();
        if let Some(a) = self.actives[class].as_mut() {
            if a.pending > 0 {
                let t0 = Instant::now();
                a.sync()?;
                self.io.fsync(t0.elapsed());
            }
            a.trim();
        }
        c.zeroed_ahead.store(0, Ordering::Relaxed);
        for f in earlier.iter_mut() {
            f.synced = true;
        }
        let (first, logical) = next_position(&c, earlier);
        let a = ActiveSegment::create(&c.dir, first, logical)?;
        let meta = empty_meta(&a.path, first, logical);
        c.disk_bytes.fetch_add(a.len, Ordering::Relaxed);
        {
            let mut inner = c.inner.lock();
            for f in earlier.iter_mut().filter(|f| !f.published) {
                // Synced above, so `end_offset` is durable (`active_len` is not used).
                f.published = publish_frame(&self.io, &c, &mut inner, f, f.end_offset);
            }
            inner.segments.push_back(meta);
        }
        self.actives[class] = Some(a);
        Ok(())
    }

    /// drop_oldest: deletes oldest segments until `needed` more bytes fit under max_bytes.
    fn make_room(
        &mut self,
        class: ClassId,
        needed: u64,
        earlier: &mut [FrameWritten],
    ) -> Result<()> {
        let c = self.classes[class].clone();
        while c.disk_bytes.load(Ordering::Relaxed) + needed > c.opts.max_bytes {
            let n = c.inner.lock().segments.len();
            if n < 2 {
                let has = c
                    .inner
                    .lock()
                    .segments
                    .back()
                    .is_some_and(|s| s.records > 0);
                if !has {
                    // An empty active segment and still no room: the cap is below one frame.
                    return Err(StoreError::ClassFull {
                        class: c.name.clone(),
                        disk_bytes: c.disk_bytes.load(Ordering::Relaxed),
                        max_bytes: c.opts.max_bytes,
                    });
                }
                self.roll(class, earlier)?;
            }
            c.drop_front(Some(DropReason::MaxBytes))?;
        }
        Ok(())
    }

    /// Drops whole segments whose newest record is older than the cutoff (or all, for
    /// `older_than_ms = None`). Returns (records dropped, bytes freed).
    fn purge(
        &mut self,
        class: ClassId,
        older_than_ms: Option<u64>,
        reason: DropReason,
    ) -> Result<(u64, u64)> {
        let c = self.classes[class].clone();
        let (mut records, mut bytes) = (0, 0);
        loop {
            let (n, front_old, back_old) = {
                let inner = c.inner.lock();
                let old =
                    |s: &SegmentMeta| s.records > 0 && older_than_ms.is_none_or(|t| s.max_ts < t);
                let n = inner.segments.len();
                (
                    n,
                    inner
                        .segments
                        .front()
                        .is_some_and(|s| old(s) || (n > 1 && s.records == 0)),
                    inner.segments.back().is_some_and(old),
                )
            };
            if !front_old {
                break;
            }
            if n < 2 {
                if !back_old {
                    break;
                }
                self.roll(class, &mut [])?;
            }
            match c.drop_front(Some(reason))? {
                Some((r, b)) => {
                    records += r;
                    bytes += b;
                }
                None => break,
            }
        }
        if records > 0 {
            tracing::warn!(class = %c.name, reason = reason.as_str(), records, bytes, "dropped records");
        }
        Ok((records, bytes))
    }

    fn retention(&mut self, now_ms: u64) -> Result<()> {
        for class in 0..self.classes.len() {
            if let Some(age) = self.classes[class].opts.max_age {
                let cutoff = now_ms.saturating_sub(age.as_millis() as u64);
                self.purge(class, Some(cutoff), DropReason::MaxAge)?;
            }
        }
        Ok(())
    }
}

/// Where the next frame of a class starts (sequence, cumulative logical bytes): after the
/// frames already written in this commit, else after the class's durable end.
fn next_position(c: &ClassShared, earlier: &[FrameWritten]) -> (u64, u64) {
    match earlier.last() {
        Some(f) => (
            f.header.end_seq(),
            f.header.logical_start + f.header.raw_len as u64,
        ),
        None => {
            let inner = c.inner.lock();
            (inner.end_seq(), inner.logical_end())
        }
    }
}

/// Makes a written, synced frame visible to readers: extends its segment's summary (end,
/// durable length, counts) and the class and I/O counters. `active_len` is the active
/// segment's synced length, used for a frame still in it. False when the frame's segment is
/// no longer listed.
fn publish_frame(
    io: &IoCounters,
    c: &ClassShared,
    inner: &mut ClassInner,
    f: &FrameWritten,
    active_len: u64,
) -> bool {
    let Some(seg) = inner
        .segments
        .iter_mut()
        .rev()
        .find(|s| s.first_seq <= f.header.first_seq)
    else {
        return false;
    };
    seg.end_seq = f.header.end_seq();
    seg.logical_end = f.header.logical_start + f.header.raw_len as u64;
    seg.max_ts = seg.max_ts.max(f.header.max_ts);
    seg.records += f.header.count as u64;
    seg.logical_bytes += f.header.raw_len as u64;
    seg.len = if f.synced { f.end_offset } else { active_len };
    c.disk_bytes
        .fetch_add(f.header.frame_len(), Ordering::Relaxed);
    io.records
        .fetch_add(f.header.count as u64, Ordering::Relaxed);
    c.appended_records
        .fetch_add(f.header.count as u64, Ordering::Relaxed);
    c.appended_bytes
        .fetch_add(f.header.raw_len as u64, Ordering::Relaxed);
    io.logical
        .fetch_add(f.header.raw_len as u64, Ordering::Relaxed);
    io.frame_bytes
        .fetch_add(f.header.frame_len(), Ordering::Relaxed);
    true
}

fn fail_all(tickets: Vec<Done>, e: &StoreError) {
    for t in tickets {
        t.send(Err(clone_err(e)));
    }
}

/// StoreError holds an io::Error, which is not Clone; rebuild an equivalent value.
fn clone_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::ClassFull {
            class,
            disk_bytes,
            max_bytes,
        } => StoreError::ClassFull {
            class: class.clone(),
            disk_bytes: *disk_bytes,
            max_bytes: *max_bytes,
        },
        StoreError::Headroom { free, min } => StoreError::Headroom {
            free: *free,
            min: *min,
        },
        StoreError::TooLarge { size, max } => StoreError::TooLarge {
            size: *size,
            max: *max,
        },
        StoreError::UnknownClass(s) => StoreError::UnknownClass(s.clone()),
        StoreError::ReadOnly => StoreError::ReadOnly,
        StoreError::Closed => StoreError::Closed,
        StoreError::Io { op, path, source } => StoreError::Io {
            op,
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        StoreError::Corrupt { path, offset, what } => StoreError::Corrupt {
            path: path.clone(),
            offset: *offset,
            what: what.clone(),
        },
        StoreError::Locked { path, holder } => StoreError::Locked {
            path: path.clone(),
            holder: holder.clone(),
        },
    }
}
