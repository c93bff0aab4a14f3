//! Recovery: what `Store::open` does with each class directory before accepting appends.
//!
//! Crash cases and what recovery does about them (see also `docs/storage.md`):
//! 1. Torn tail (power loss or kill during a frame write) in the **last** segment: the frame
//!    failed its CRC or was cut short and nothing valid follows it. Its records were never
//!    acknowledged to anyone (tickets complete only after fdatasync), so the file is cut back
//!    to the end of the last valid frame. Reported as `TruncatedTail`.
//! 2. A new segment whose header write was cut short (crash during a roll): the header is
//!    rewritten from the file name and the previous segment's end. Reported as `TruncatedTail`.
//! 3. Damage followed by valid frames (bit rot, a bad sector, a stray write), or a damaged tail
//!    in a segment that is not the last: the file is copied to `quarantine/`, rewritten with
//!    only the frames that check, and the records in the damaged spans are counted as dropped
//!    with reason `corrupt`. Everything before and after the damage is served. Reported as
//!    `Quarantined`.
//! 4. A crash while deleting segments (retention or ack): missing leading segments simply move
//!    the first available sequence forward.
//! 5. A leftover `*.seg.tmp` from an interrupted quarantine rewrite: deleted (the original is
//!    still in place, so the rewrite is redone).
//!
//! Read-only opens (operator inspection) change nothing on disk: actions are reported with
//! `applied: false` and readers skip damaged spans as they meet them.

use super::ackfile::{ClassState, StateFile};
use super::format::*;
use super::segment::{self, SegmentMeta};
use super::{DropReason, Result, StoreError};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RecoveryReport {
    pub actions: Vec<RecoveryAction>,
    /// Segments scanned and bytes checked (for the open-time figures in the bench).
    pub segments_scanned: u64,
    pub bytes_scanned: u64,
}

impl RecoveryReport {
    pub fn is_clean(&self) -> bool {
        self.actions.is_empty()
    }
    pub fn quarantined(&self) -> impl Iterator<Item = &RecoveryAction> {
        self.actions
            .iter()
            .filter(|a| matches!(a, RecoveryAction::Quarantined { .. }))
    }
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum RecoveryAction {
    /// A torn tail was cut off the last segment of a class (`bytes` removed).
    TruncatedTail {
        class: String,
        segment: String,
        from_offset: u64,
        bytes: u64,
        applied: bool,
    },
    /// A segment with corrupt frames was copied to quarantine/ and rewritten with the frames
    /// that still check; `records_lost` records in the damaged spans were counted as dropped.
    Quarantined {
        class: String,
        segment: String,
        quarantine_path: String,
        records_lost: u64,
        first_damage_offset: u64,
        what: String,
        applied: bool,
    },
    /// The class's log ended at or before its acknowledged position (records that were
    /// delivered are missing from disk); a new segment starts after the position so new
    /// records never reuse a delivered sequence number.
    PositionPastLogEnd {
        class: String,
        log_end_seq: u64,
        acked_seq: u64,
        applied: bool,
    },
}

impl std::fmt::Display for RecoveryAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecoveryAction::TruncatedTail {
                class,
                segment,
                from_offset,
                bytes,
                ..
            } => write!(
                f,
                "class {class}: cut a torn tail of {bytes} bytes off {segment} at offset {from_offset}"
            ),
            RecoveryAction::Quarantined {
                class,
                segment,
                quarantine_path,
                records_lost,
                first_damage_offset,
                what,
                ..
            } => write!(
                f,
                "class {class}: segment {segment} had corrupt data at offset {first_damage_offset} ({what}); \
                 copied to {quarantine_path}, {records_lost} records lost, the rest is served"
            ),
            RecoveryAction::PositionPastLogEnd {
                class,
                log_end_seq,
                acked_seq,
                ..
            } => write!(
                f,
                "class {class}: the log ends at seq {log_end_seq} but the acknowledged position is {acked_seq}: \
                 delivered records are missing from disk (check the storage device); new records start at seq {}",
                acked_seq + 1
            ),
        }
    }
}

/// A class as recovery left it.
pub(crate) struct RecoveredClass {
    pub segments: Vec<SegmentMeta>,
    pub state_file: StateFile,
    pub state: ClassState,
}

/// How many segments recovery reads at once. Reading is what a cold open waits for (every
/// frame's CRC is checked), and on the project's virtual disk several streams read faster than
/// one: `dd` read a 1 GB store in 0.54 s as two streams where one took 0.97 s, and a cold open
/// (with sequential readahead) took 0.71-0.81 s with two readers, 0.64-0.72 s with three
/// (BENCHMARKS.md, store). Each reader holds a 1 MiB buffer, and a damaged segment while it is
/// searched (≤ the segment size).
const RECOVERY_READERS: usize = 3;

/// Segments checked by recoveries in this process so far (for start-up progress reports).
static SEGMENTS_CHECKED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many segments store recoveries in this process have checked so far. The daemon watches
/// it while the store opens, to tell systemd that a long recovery is still moving.
pub fn segments_checked() -> u64 {
    SEGMENTS_CHECKED.load(std::sync::atomic::Ordering::Relaxed)
}

fn scan_counted(path: &Path, seq: u64) -> Result<segment::Scan> {
    let r = segment::scan(path, seq);
    SEGMENTS_CHECKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    r
}

/// Scans every segment of `names` (sorted), `RECOVERY_READERS` at a time; the results are in
/// the order of `names`.
fn scan_all(names: &[(u64, PathBuf)]) -> Vec<Result<segment::Scan>> {
    if names.len() < 2 {
        return names.iter().map(|(seq, p)| scan_counted(p, *seq)).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut out: Vec<Option<Result<segment::Scan>>> = (0..names.len()).map(|_| None).collect();
    let results = std::sync::Mutex::new(&mut out);
    std::thread::scope(|scope| {
        for _ in 0..RECOVERY_READERS.min(names.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((seq, path)) = names.get(i) else {
                    break;
                };
                let scan = scan_counted(path, *seq);
                if let Ok(mut r) = results.lock() {
                    r[i] = Some(scan);
                }
            });
        }
    });
    // Every slot is filled (a reader that panicked would have resumed its panic out of the
    // scope); an empty one would just be scanned again here.
    out.into_iter()
        .zip(names)
        .map(|(r, (seq, p))| r.unwrap_or_else(|| segment::scan(p, *seq)))
        .collect()
}

pub(crate) fn recover_class(
    class: &str,
    dir: &Path,
    quarantine_dir: &Path,
    read_only: bool,
    report: &mut RecoveryReport,
) -> Result<RecoveredClass> {
    if !read_only {
        super::commit::create_private_dir(dir)
            .map_err(|e| StoreError::io("create class directory", dir, e))?;
    }
    let (state_file, mut state) = StateFile::open(&dir.join("state"), read_only)?;
    let mut names: Vec<(u64, PathBuf)> = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            for entry in rd {
                let entry = entry.map_err(|e| StoreError::io("list class directory", dir, e))?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if let Some(seq) = parse_segment_file_name(&name) {
                    names.push((seq, entry.path()));
                } else if name.ends_with(".seg.tmp") && !read_only {
                    let p = entry.path();
                    std::fs::remove_file(&p).map_err(|e| StoreError::io("remove", &p, e))?;
                }
            }
        }
        Err(e) if read_only && e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::io("list class directory", dir, e)),
    }
    names.sort();
    let mut scans = scan_all(&names).into_iter();
    let mut segments: Vec<SegmentMeta> = Vec::with_capacity(names.len());
    let mut state_dirty = false;
    let n = names.len();
    for (i, (seq, path)) in names.iter().enumerate() {
        let is_last = i + 1 == n;
        let next_first = names.get(i + 1).map(|(s, _)| *s);
        let scan = scans.next().unwrap_or_else(|| segment::scan(path, *seq))?;
        report.segments_scanned += 1;
        report.bytes_scanned += scan.file_len;
        let seg_name = path
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let prev_logical_end = segments.last().map(|s| s.logical_end);
        let mut meta = scan.meta.clone();
        // Zeros after a sealed segment's data are the space zeroed ahead of it, left by an
        // interrupted roll, only when its data reaches the next segment. Zeros where records
        // should be are damage.
        let zeroed_records = match (scan.zero_tail, next_first) {
            (Some(at), Some(nf)) if nf > meta.end_seq => Some(at),
            _ => None,
        };
        let needs_quarantine = !scan.damage.is_empty()
            || (scan.tail_at.is_some() && !is_last)
            || zeroed_records.is_some()
            || (scan.bad_header && meta.records > 0);
        if needs_quarantine {
            let mut lost = scan.lost_records;
            let (first_off, what) = match scan.damage.first() {
                Some(d) => (d.offset, d.what.clone()),
                None => match (scan.tail_at, zeroed_records) {
                    (Some(t), _) => (t, "damaged tail".to_string()),
                    (None, Some(z)) => (
                        z,
                        format!(
                            "zeros from here to the end, but the next segment starts at seq {}",
                            next_first.unwrap_or_default()
                        ),
                    ),
                    (None, None) => (0, "damaged segment header".to_string()),
                },
            };
            let qpath = quarantine_dir.join(format!("{class}-{seg_name}-{}", super::now_ms()));
            if !read_only {
                super::commit::create_private_dir(quarantine_dir).map_err(|e| {
                    StoreError::io("create quarantine directory", quarantine_dir, e)
                })?;
                std::fs::copy(path, &qpath)
                    .map_err(|e| StoreError::io("copy to quarantine", &qpath, e))?;
                segment::sync_dir(quarantine_dir)?;
                let mut fixed = scan;
                if fixed.bad_header {
                    fixed.meta.logical_start = prev_logical_end.unwrap_or(fixed.meta.logical_start);
                }
                meta = segment::rewrite_valid_frames(&fixed)?;
            }
            if !is_last {
                if let Some(nf) = next_first {
                    lost += nf.saturating_sub(meta.end_seq);
                    // The segment's sequence range reaches the next segment: the lost records
                    // are accounted for and readers skip the gap.
                    meta.end_seq = meta.end_seq.max(nf);
                }
            }
            state.dropped.add(DropReason::Corrupt, lost);
            state_dirty = true;
            tracing::error!(class, segment = %seg_name, records_lost = lost, quarantine = %qpath.display(), %what,
                "corrupt segment quarantined; serving the records that still check");
            report.actions.push(RecoveryAction::Quarantined {
                class: class.to_string(),
                segment: seg_name.clone(),
                quarantine_path: qpath.display().to_string(),
                records_lost: lost,
                first_damage_offset: first_off,
                what,
                applied: !read_only,
            });
        } else if let Some(tail) = scan.tail_at {
            // Torn tail of the last segment (or a segment whose header never made it to disk).
            let keep = if tail < SEGMENT_HEADER_LEN as u64 || scan.bad_header {
                0
            } else {
                tail
            };
            if !read_only {
                if keep == 0 {
                    let h = SegmentHeader {
                        first_seq: *seq,
                        logical_start: prev_logical_end.unwrap_or(state.acked.logical_end),
                    };
                    segment::write_file_durably(path, &h.encode())?;
                    meta.logical_start = h.logical_start;
                    meta.logical_end = h.logical_start;
                } else {
                    segment::truncate_durably(path, keep, "truncate torn tail")?;
                }
            }
            meta.len = keep.max(SEGMENT_HEADER_LEN as u64);
            tracing::warn!(class, segment = %seg_name, offset = tail, bytes = scan.file_len - tail,
                "cut a torn tail off the last segment (records never acknowledged)");
            report.actions.push(RecoveryAction::TruncatedTail {
                class: class.to_string(),
                segment: seg_name.clone(),
                from_offset: tail,
                bytes: scan.file_len - tail,
                applied: !read_only,
            });
        } else if let (Some(end), false) = (scan.zero_tail, is_last) {
            // A sealed segment still has the zeros written ahead of its end (the roll that
            // cuts them was interrupted). Cut them; no data is involved. The last segment
            // keeps them: the writer goes on overwriting them.
            if !read_only {
                segment::truncate_durably(path, end, "cut zeroed space off a sealed segment")?;
            }
            tracing::debug!(class, segment = %seg_name, offset = end, "cut zeroed space off a sealed segment");
        }
        if let Some(prev) = segments.last() {
            if meta.first_seq < prev.end_seq {
                return Err(StoreError::Corrupt {
                    path: path.clone(),
                    offset: 0,
                    what: format!(
                        "segment starts at seq {} but the previous one ends at {}; move one of them out of the directory",
                        meta.first_seq, prev.end_seq
                    ),
                });
            }
        }
        segments.push(meta);
    }
    let mut state_file = state_file;
    if state_dirty && !read_only {
        state_file.write(&state)?;
    }
    Ok(RecoveredClass {
        segments,
        state_file,
        state,
    })
}
