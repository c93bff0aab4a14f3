//! Segment files: scanning (recovery and inspection), the in-memory summary, and the active
//! segment the writer appends to.

use super::format::*;
use super::{Result, StoreError};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// What the store keeps in memory per segment (never per record).
#[derive(Debug, Clone)]
pub(crate) struct SegmentMeta {
    pub path: PathBuf,
    pub first_seq: u64,
    /// Sequence after the last durable record in the segment (`first_seq` when empty).
    pub end_seq: u64,
    pub logical_start: u64,
    pub logical_end: u64,
    /// Durable length in bytes: readers never read past it.
    pub len: u64,
    /// Newest receive timestamp in the segment (0 when empty).
    pub max_ts: u64,
    /// Records actually present (fewer than `end_seq - first_seq` only when a quarantine
    /// rewrite left a gap).
    pub records: u64,
    /// Uncompressed encoded bytes of the records present.
    pub logical_bytes: u64,
}

impl SegmentMeta {
    /// Records and logical bytes in this segment after the acknowledged position `acked`.
    /// Exact unless a corruption gap lies inside the acknowledged part of the segment.
    pub fn unacked(&self, acked: &super::Position) -> (u64, u64) {
        if acked.seq < self.first_seq {
            return (self.records, self.logical_bytes);
        }
        if acked.seq + 1 >= self.end_seq {
            return (0, 0);
        }
        let r = self.records.saturating_sub(acked.seq + 1 - self.first_seq);
        let l = self
            .logical_bytes
            .saturating_sub(acked.logical_end.saturating_sub(self.logical_start));
        (r, l)
    }

    fn add_frame(&mut self, h: &FrameHeader) {
        self.end_seq = h.end_seq();
        self.logical_end = h.logical_start + h.raw_len as u64;
        self.max_ts = self.max_ts.max(h.max_ts);
        self.records += h.count as u64;
        self.logical_bytes += h.raw_len as u64;
    }
}

/// A span of a segment that failed its checks.
#[derive(Debug, Clone)]
pub(crate) struct Damage {
    pub offset: u64,
    pub what: String,
}

/// The outcome of reading a segment file from start to end.
#[derive(Debug)]
pub(crate) struct Scan {
    pub meta: SegmentMeta,
    /// The header itself was unreadable; `first_seq` came from the file name.
    pub bad_header: bool,
    /// Damaged spans followed by valid frames (the segment needs quarantine).
    pub damage: Vec<Damage>,
    /// Records lost inside damaged spans (known from the next valid frame).
    pub lost_records: u64,
    /// Offset where valid data ends with nothing valid after it (a torn or damaged tail).
    pub tail_at: Option<u64>,
    /// Offset where valid data ends and only zero bytes follow: the space the writer zeroes
    /// ahead of the active segment's end ([`ActiveSegment::zero_ahead`]). A clean end, not
    /// damage.
    pub zero_tail: Option<u64>,
    pub file_len: u64,
}

/// Tells the kernel `file` is read front to back (a larger readahead window). A cold open of a
/// 1 GB store on the project's virtual disk went from 0.97-1.35 s to 0.71-0.81 s with it
/// (BENCHMARKS.md, store). Advice only: an error changes nothing but speed.
fn advise_sequential(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise only reads the descriptor number, which `file` keeps open.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
    if rc != 0 {
        tracing::debug!(
            errno = rc,
            "posix_fadvise(SEQUENTIAL) failed; reading without it"
        );
    }
}

/// Reads `path` frame by frame, checking every CRC. `name_seq` is the first sequence from the
/// file name, used when the header itself is damaged. Reads sequentially through a buffer; only
/// after damage is the rest of the file read into memory (bounded by the segment size) to look
/// for the next valid frame.
pub(crate) fn scan(path: &Path, name_seq: u64) -> Result<Scan> {
    let file = File::open(path).map_err(|e| StoreError::io("open segment", path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| StoreError::io("stat segment", path, e))?
        .len();
    advise_sequential(&file);
    let mut rd = BufReader::with_capacity(1 << 20, file);
    let mut hb = [0u8; SEGMENT_HEADER_LEN];
    let mut bad_header = false;
    let header = if file_len >= SEGMENT_HEADER_LEN as u64 {
        rd.read_exact(&mut hb)
            .map_err(|e| StoreError::io("read segment header", path, e))?;
        match SegmentHeader::decode(&hb) {
            Ok(h) if h.first_seq == name_seq => Some(h),
            _ => {
                bad_header = true;
                None
            }
        }
    } else {
        None
    };
    let mut meta = SegmentMeta {
        path: path.to_path_buf(),
        first_seq: header.map_or(name_seq, |h| h.first_seq),
        end_seq: header.map_or(name_seq, |h| h.first_seq),
        logical_start: header.map_or(0, |h| h.logical_start),
        logical_end: header.map_or(0, |h| h.logical_start),
        len: SEGMENT_HEADER_LEN as u64,
        max_ts: 0,
        records: 0,
        logical_bytes: 0,
    };
    let mut out = Scan {
        meta: meta.clone(),
        bad_header,
        damage: Vec::new(),
        lost_records: 0,
        tail_at: None,
        zero_tail: None,
        file_len,
    };
    if file_len < SEGMENT_HEADER_LEN as u64 {
        out.meta.len = 0;
        out.tail_at = Some(0);
        return Ok(out);
    }
    let mut pos = SEGMENT_HEADER_LEN as u64;
    let mut fh = [0u8; FRAME_HEADER_LEN];
    let mut body = Vec::new();
    // A damaged header loses the logical offset; take it from the first valid frame.
    let mut logical_known = header.is_some();
    loop {
        if pos == file_len {
            break;
        }
        let res = read_frame(&mut rd, pos, file_len, &mut fh, &mut body)
            .map_err(|e| StoreError::io("read segment", path, e))?;
        let ok = match res {
            // A forward gap in a frame that checks is a hole left by an earlier quarantine.
            Ok(h)
                if h.first_seq >= meta.end_seq
                    && (!logical_known || h.logical_start >= meta.logical_end) =>
            {
                Some(h)
            }
            Ok(h) => {
                out.damage.push(Damage {
                    offset: pos,
                    what: format!(
                        "frame holds seq {} (logical {}), expected {} ({})",
                        h.first_seq, h.logical_start, meta.end_seq, meta.logical_end
                    ),
                });
                None
            }
            Err(what) => {
                out.damage.push(Damage { offset: pos, what });
                None
            }
        };
        match ok {
            Some(h) => {
                if !logical_known {
                    meta.logical_start = h.logical_start;
                    logical_known = true;
                }
                meta.add_frame(&h);
                pos += h.frame_len();
                meta.len = pos;
            }
            None => {
                // Look for the next valid frame after the damage.
                let mut rest = Vec::new();
                let file = rd.get_mut();
                file.seek(SeekFrom::Start(pos))
                    .and_then(|_| file.read_to_end(&mut rest))
                    .map_err(|e| StoreError::io("read segment", path, e))?;
                if rest.iter().all(|&b| b == 0) {
                    // Zeroed ahead and not yet written: the clean end of the data.
                    out.damage.pop();
                    out.zero_tail = Some(pos);
                    break;
                }
                match resync(&rest, 1, meta.end_seq) {
                    Some((off, h)) => {
                        out.lost_records += h.first_seq - meta.end_seq;
                        if !logical_known {
                            meta.logical_start = h.logical_start;
                            logical_known = true;
                        }
                        pos += off as u64;
                        meta.end_seq = h.first_seq;
                        meta.logical_end = h.logical_start;
                        rd.get_mut()
                            .seek(SeekFrom::Start(pos))
                            .map_err(|e| StoreError::io("seek segment", path, e))?;
                        rd = BufReader::with_capacity(1 << 20, rd.into_inner());
                    }
                    None => {
                        // Nothing valid follows: the damage is the tail.
                        out.damage.pop();
                        out.tail_at = Some(pos);
                        break;
                    }
                }
            }
        }
    }
    if out.bad_header && meta.records == 0 && out.damage.is_empty() {
        // No readable header and no record (header only, or zeros after it): recovery
        // rewrites the header, as for one that never made it to disk. Left in place, its
        // logical start would read as 0 and the frames appended after it would not continue
        // the class's logical offsets.
        out.zero_tail = None;
        out.tail_at = Some(out.tail_at.unwrap_or(SEGMENT_HEADER_LEN as u64));
    }
    out.meta = meta;
    Ok(out)
}

/// Reads one frame at the reader's position. `Ok(Err(_))` is damage (not an I/O error);
/// a frame cut short by end of file is damage too.
fn read_frame(
    rd: &mut BufReader<File>,
    pos: u64,
    file_len: u64,
    fh: &mut [u8; FRAME_HEADER_LEN],
    body: &mut Vec<u8>,
) -> std::io::Result<Result<FrameHeader, String>> {
    if file_len - pos < FRAME_HEADER_LEN as u64 {
        return Ok(Err("truncated frame header".into()));
    }
    rd.read_exact(fh)?;
    let h = match FrameHeader::decode(fh) {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    if file_len - pos < h.frame_len() {
        return Ok(Err("truncated frame body".into()));
    }
    body.resize(h.body_len as usize, 0);
    rd.read_exact(body)?;
    if !h.verify(fh, body) {
        return Ok(Err("frame checksum mismatch".into()));
    }
    Ok(Ok(h))
}

/// Finds the first valid frame in `buf` at or after `from` whose first sequence is at least
/// `min_seq`. Returns its offset in `buf`.
pub(crate) fn resync(buf: &[u8], from: usize, min_seq: u64) -> Option<(usize, FrameHeader)> {
    let magic = FRAME_MAGIC.to_le_bytes();
    let mut i = from;
    while i + FRAME_HEADER_LEN <= buf.len() {
        if buf[i..i + 4] == magic {
            if let Ok(h) = FrameHeader::decode(&buf[i..]) {
                let end = i + h.frame_len() as usize;
                if end <= buf.len()
                    && h.first_seq >= min_seq
                    && h.verify(
                        &buf[i..i + FRAME_HEADER_LEN],
                        &buf[i + FRAME_HEADER_LEN..end],
                    )
                {
                    return Some((i, h));
                }
            }
        }
        i += 1;
    }
    None
}

/// Writes a fresh copy of a damaged segment holding only the frames that check, via a
/// temporary file renamed over the original. Returns the new summary.
pub(crate) fn rewrite_valid_frames(scan: &Scan) -> Result<SegmentMeta> {
    let path = &scan.meta.path;
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(|e| StoreError::io("read segment", path, e))?;
    let header = SegmentHeader {
        first_seq: scan.meta.first_seq,
        logical_start: scan.meta.logical_start,
    };
    let mut out = header.encode().to_vec();
    let mut meta = scan.meta.clone();
    meta.end_seq = meta.first_seq;
    meta.logical_end = meta.logical_start;
    meta.max_ts = 0;
    meta.records = 0;
    meta.logical_bytes = 0;
    let mut i = SEGMENT_HEADER_LEN.min(data.len());
    let limit = scan
        .tail_at
        .map_or(data.len(), |t| t as usize)
        .min(data.len());
    while let Some((off, h)) = resync(&data[..limit], i, meta.end_seq) {
        let end = off + h.frame_len() as usize;
        out.extend_from_slice(&data[off..end]);
        meta.add_frame(&h);
        i = end;
    }
    meta.len = out.len() as u64;
    let tmp = path.with_extension("seg.tmp");
    write_file_durably(&tmp, &out)?;
    std::fs::rename(&tmp, path).map_err(|e| StoreError::io("rename segment", path, e))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(meta)
}

/// Cuts a segment file to `len` bytes and syncs it (`what` names the step in the error).
pub(crate) fn truncate_durably(path: &Path, len: u64, what: &'static str) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| StoreError::io("open segment", path, e))?;
    f.set_len(len)
        .and_then(|_| f.sync_all())
        .map_err(|e| StoreError::io(what, path, e))
}

pub(crate) fn write_file_durably(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| StoreError::io("create", path, e))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| StoreError::io("write", path, e))
}

/// fsync a directory so that file creations, renames and deletions in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("fsync directory", dir, e))
}

/// How far the writer keeps the active segment zeroed ahead of its end by default
/// (`storage.zero_ahead`; at most to the segment size), in steps of [`ZERO_STEP`] while it is
/// idle.
///
/// Why: an fdatasync that extends a file must also commit the new size and block allocation
/// through the filesystem journal; one that only overwrites allocated blocks flushes the data
/// alone. On the project's ext4 virtual disk a 6.8 KB write + fdatasync took 181-228 µs
/// appending and 122-150 µs overwriting zeros (three runs each), and the store bench's
/// fdatasync per commit fell from 0.17-0.32 ms to 0.12-0.21 ms (BENCHMARKS.md, store). The
/// price is writing each segment byte twice (zeros, then data): counted in
/// `ferry_store_written_bytes_total{kind="zeroed"}`; `storage.zero_ahead = "0"` turns it off.
pub(crate) const ZERO_AHEAD: u64 = 2 << 20;

/// The most the writer zeroes at a time, only while no commit is queued: a commit that
/// arrives meanwhile waits for at most this much (~0.4 ms on the project's disk).
pub(crate) const ZERO_STEP: u64 = 256 << 10;

/// The segment the writer appends to. Owned by the writer thread only.
pub(crate) struct ActiveSegment {
    pub file: File,
    pub path: PathBuf,
    /// Bytes written and synced.
    pub len: u64,
    /// Bytes written since the last sync.
    pub pending: u64,
    /// The file's length: frames up to `len + pending`, zeros written by
    /// [`ActiveSegment::zero_ahead`] after that.
    pub zeroed_to: u64,
}

impl ActiveSegment {
    /// Creates a new segment file with its header, syncs it and its directory.
    pub fn create(dir: &Path, first_seq: u64, logical_start: u64) -> Result<ActiveSegment> {
        let path = dir.join(segment_file_name(first_seq));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io("create segment", &path, e))?;
        let h = SegmentHeader {
            first_seq,
            logical_start,
        };
        file.write_all(&h.encode())
            .and_then(|_| file.sync_data())
            .map_err(|e| StoreError::io("write segment header", &path, e))?;
        sync_dir(dir)?;
        sync_log(&path, SEGMENT_HEADER_LEN as u64, SEGMENT_HEADER_LEN as u64);
        Ok(ActiveSegment {
            file,
            path,
            len: SEGMENT_HEADER_LEN as u64,
            pending: 0,
            zeroed_to: SEGMENT_HEADER_LEN as u64,
        })
    }

    /// Reopens an existing segment for appending at `len` (recovery already cut the file
    /// there, or found only zeros after it).
    pub fn reopen(path: &Path, len: u64) -> Result<ActiveSegment> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| StoreError::io("open segment", path, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| StoreError::io("stat segment", path, e))?
            .len();
        file.seek(SeekFrom::Start(len))
            .map_err(|e| StoreError::io("seek segment", path, e))?;
        Ok(ActiveSegment {
            file,
            path: path.to_path_buf(),
            len,
            pending: 0,
            zeroed_to: file_len.max(len),
        })
    }

    /// Writes zeros from the end of the data (or of the zeros already there) up to `target`
    /// and fdatasyncs them, so the commits that follow overwrite allocated blocks
    /// ([`ZERO_AHEAD`]). Only between commits (nothing pending). Returns the bytes written;
    /// on failure the file is cut back to its data.
    pub fn zero_ahead(&mut self, target: u64) -> Result<u64> {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let from = self.zeroed_to.max(self.len);
        if self.pending > 0 || target <= from {
            return Ok(0);
        }
        let mut off = from;
        let res = loop {
            if off >= target {
                break self.file.sync_data();
            }
            let n = ((target - off) as usize).min(ZEROS.len());
            if let Err(e) = self.file.write_all_at(&ZEROS[..n], off) {
                break Err(e);
            }
            off += n as u64;
        };
        match res {
            Ok(()) => {
                self.zeroed_to = target;
                sync_log(&self.path, self.len, self.zeroed_to);
                Ok(target - from)
            }
            Err(e) => {
                let _ = self.file.set_len(self.len);
                self.zeroed_to = self.len;
                Err(StoreError::io("zero the segment ahead", &self.path, e))
            }
        }
    }

    /// Cuts the zeros after the data off a segment being sealed, so only the active segment
    /// ever has them (and off the active segment at open when they exceed the configured
    /// `zero_ahead`). A failure leaves them for the next open to cut.
    pub fn trim(&mut self) {
        if self.zeroed_to > self.len && self.pending == 0 {
            match self.file.set_len(self.len) {
                Ok(()) => self.zeroed_to = self.len,
                Err(e) => tracing::warn!(segment = %self.path.display(), error = %e,
                    "could not cut the zeroed space off a segment; the next open will"),
            }
        }
    }

    /// Appends `bytes` (whole frames). On failure the file is cut back to its last durable
    /// length so a partial frame never sits before later good ones.
    pub fn append(&mut self, bytes: &[u8]) -> Result<()> {
        if let Err(e) = self.file.write_all(bytes) {
            self.rewind();
            return Err(StoreError::io("write segment", &self.path, e));
        }
        self.pending += bytes.len() as u64;
        self.zeroed_to = self.zeroed_to.max(self.len + self.pending);
        Ok(())
    }

    /// fdatasync; on success the appended bytes become the durable length.
    pub fn sync(&mut self) -> Result<()> {
        if self.pending == 0 {
            return Ok(());
        }
        if let Err(e) = self.file.sync_data() {
            self.rewind();
            return Err(StoreError::io("fdatasync segment", &self.path, e));
        }
        self.len += self.pending;
        self.pending = 0;
        sync_log(&self.path, self.len, self.zeroed_to);
        Ok(())
    }

    /// Cuts the file back to its durable length after a failed write or sync.
    fn rewind(&mut self) {
        let _ = self.file.set_len(self.len);
        let _ = self.file.seek(SeekFrom::Start(self.len));
        self.pending = 0;
        self.zeroed_to = self.len;
    }
}

/// Test hook for power-loss simulation: when `FERRY_TEST_SYNC_LOG` names a file, every
/// completed fdatasync of a segment appends `<path> <durable data length> <durable file
/// length>` to it (the second counts the zeros written ahead of the data). A test kills the
/// process, leaves of every segment what a power cut could (the synced data and zeros, any
/// prefix of the writes over those zeros, nothing past them), and checks that recovery still
/// has every acknowledged record.
fn sync_log(path: &Path, len: u64, file_len: u64) {
    use std::sync::{Mutex, OnceLock};
    static LOG: OnceLock<Option<Mutex<File>>> = OnceLock::new();
    let log = LOG.get_or_init(|| {
        let p = std::env::var_os("FERRY_TEST_SYNC_LOG")?;
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
            .map(Mutex::new)
    });
    if let Some(m) = log {
        if let Ok(mut f) = m.lock() {
            let _ = writeln!(f, "{} {len} {}", path.display(), file_len.max(len));
        }
    }
}
