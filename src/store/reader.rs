//! Readers: sequential, bounded-memory reads of one class from a sequence number on.
//!
//! A reader holds at most one decoded frame (bounded by the commit batch size) plus the file
//! handle of the segment it is in. It never reads past the durable length published by the
//! writer, so it only ever sees committed records. Frames are CRC-checked on every read; a
//! frame that fails is skipped (counted, logged) and the reader resynchronises on the next
//! frame that checks — it never returns a record from a frame whose CRC failed.

use super::commit::ClassShared;
use super::format::*;
use super::record::{Record, StoredRecord};
use super::segment::resync;
use super::{Result, StoreError};
use bytes::Bytes;
use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub struct Reader {
    class: Arc<ClassShared>,
    next_seq: u64,
    seg: Option<OpenSegment>,
    buf: VecDeque<StoredRecord>,
    dctx: Option<zstd::bulk::Decompressor<'static>>,
}

struct OpenSegment {
    first_seq: u64,
    file: File,
    path: std::path::PathBuf,
    /// Offset of the next frame to read.
    offset: u64,
}

impl Reader {
    pub(crate) fn new(class: Arc<ClassShared>, from_seq: u64) -> Reader {
        Reader {
            class,
            next_seq: from_seq.max(1),
            seg: None,
            buf: VecDeque::new(),
            dctx: None,
        }
    }

    /// The sequence the next read starts at.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Moves the reader (e.g. back to the acknowledged position after a producer reset).
    pub fn seek(&mut self, seq: u64) {
        self.next_seq = seq.max(1);
        self.buf.clear();
        self.seg = None;
    }

    /// Next records from the reader's position: at most `max_records`, stopping after the
    /// record that reaches `max_bytes` (logical). Empty when caught up with the durable end.
    /// Records dropped by retention are skipped (the position jumps forward).
    pub fn read_batch(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while out.len() < max_records.max(1) && bytes < max_bytes.max(1) {
            match self.buf.pop_front() {
                Some(r) if r.seq < self.next_seq => continue,
                Some(r) => {
                    bytes += r.record.logical_size();
                    self.next_seq = r.seq + 1;
                    out.push(r);
                }
                None => {
                    if !self.fill()? {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Loads the frame holding `next_seq` (or the first one after it) into `buf`.
    /// Returns false when there is nothing durable at or after `next_seq`.
    fn fill(&mut self) -> Result<bool> {
        loop {
            // Where is next_seq? (short lock; the writer updates lengths after each commit)
            let target = {
                let inner = self.class.inner.lock();
                let segs = &inner.segments;
                let Some(front) = segs.front() else {
                    return Ok(false);
                };
                if self.next_seq < front.first_seq {
                    self.next_seq = front.first_seq; // dropped by retention or acked and freed
                    self.seg = None;
                }
                if self.next_seq >= inner.end_seq() {
                    return Ok(false);
                }
                let idx = segs
                    .partition_point(|s| s.first_seq <= self.next_seq)
                    .saturating_sub(1);
                let s = &segs[idx];
                if self.next_seq >= s.end_seq {
                    // In a gap after this segment's last record: continue in the next one.
                    match segs.get(idx + 1) {
                        Some(n) => {
                            self.next_seq = n.first_seq;
                            continue;
                        }
                        None => return Ok(false),
                    }
                }
                (
                    s.first_seq,
                    s.end_seq,
                    s.len,
                    s.path.clone(),
                    idx + 1 == segs.len(),
                )
            };
            let (first_seq, end_seq, durable_len, path, is_last) = target;
            if self.seg.as_ref().is_none_or(|s| s.first_seq != first_seq) {
                match File::open(&path) {
                    Ok(file) => {
                        self.seg = Some(OpenSegment {
                            first_seq,
                            file,
                            path,
                            offset: SEGMENT_HEADER_LEN as u64,
                        })
                    }
                    // Deleted under us (acked or retention): look again.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(StoreError::io("open segment", &path, e)),
                }
            }
            let Some(seg) = self.seg.as_mut() else {
                continue;
            };
            if seg.offset >= durable_len {
                if is_last {
                    return Ok(false);
                }
                // Sealed and fully read: whatever follows is in the next segment.
                self.next_seq = self.next_seq.max(end_seq);
                continue;
            }
            let mut hb = [0u8; FRAME_HEADER_LEN];
            let h = read_exact_at(&seg.file, &mut hb, seg.offset)
                .map_err(|e| StoreError::io("read segment", &seg.path, e))
                .map(|_| FrameHeader::decode(&hb));
            let h = match h? {
                Ok(h) if seg.offset + h.frame_len() <= durable_len => h,
                _ => {
                    self.skip_damage(durable_len)?;
                    continue;
                }
            };
            if h.end_seq() <= self.next_seq {
                // Skipping frames before the start position: header only, no body read.
                seg.offset += h.frame_len();
                continue;
            }
            let mut body = vec![0u8; h.body_len as usize];
            read_exact_at(&seg.file, &mut body, seg.offset + FRAME_HEADER_LEN as u64)
                .map_err(|e| StoreError::io("read segment", &seg.path, e))?;
            if !h.verify(&hb, &body) {
                self.skip_damage(durable_len)?;
                continue;
            }
            let raw = match h.codec {
                CODEC_ZSTD => {
                    if self.dctx.is_none() {
                        self.dctx = zstd::bulk::Decompressor::new().ok();
                    }
                    let Some(d) = self.dctx.as_mut() else {
                        return Err(StoreError::io(
                            "create zstd decompressor",
                            &seg.path,
                            std::io::Error::other("zstd"),
                        ));
                    };
                    match d.decompress(&body, h.raw_len as usize) {
                        Ok(v) if v.len() == h.raw_len as usize => v,
                        _ => {
                            // The CRC matched, so this is a bug or an incompatible writer.
                            return Err(StoreError::Corrupt {
                                path: seg.path.clone(),
                                offset: seg.offset,
                                what: "zstd frame does not decompress to its recorded length"
                                    .into(),
                            });
                        }
                    }
                }
                _ => body,
            };
            let raw = Bytes::from(raw);
            let mut pos = 0usize;
            for i in 0..h.count as u64 {
                let rec = Record::decode(&raw, &mut pos).map_err(|what| StoreError::Corrupt {
                    path: seg.path.clone(),
                    offset: seg.offset,
                    what: format!("record {i} of the frame: {what}"),
                })?;
                let seq = h.first_seq + i;
                if seq >= self.next_seq {
                    self.buf.push_back(StoredRecord {
                        seq,
                        logical_end: h.logical_start + pos as u64,
                        record: rec,
                    });
                }
            }
            if h.first_seq > self.next_seq {
                self.next_seq = h.first_seq; // a quarantine gap
            }
            seg.offset += h.frame_len();
            return Ok(true);
        }
    }

    /// The frame at the current offset failed its checks: find the next one that passes.
    fn skip_damage(&mut self, durable_len: u64) -> Result<()> {
        let Some(seg) = self.seg.as_mut() else {
            return Ok(());
        };
        let mut rest = vec![0u8; (durable_len - seg.offset) as usize];
        read_exact_at(&seg.file, &mut rest, seg.offset)
            .map_err(|e| StoreError::io("read segment", &seg.path, e))?;
        self.class.corrupt_skipped.fetch_add(1, Ordering::Relaxed);
        match resync(&rest, 1, self.next_seq) {
            Some((off, h)) => {
                tracing::error!(class = %self.class.name, segment = %seg.path.display(), offset = seg.offset,
                    skipped_to_seq = h.first_seq, "corrupt frame skipped; restart ferry to quarantine the segment");
                seg.offset += off as u64;
            }
            None => {
                tracing::error!(class = %self.class.name, segment = %seg.path.display(), offset = seg.offset,
                    "corrupt data up to the end of the segment skipped");
                seg.offset = durable_len;
            }
        }
        Ok(())
    }
}

fn read_exact_at(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    f.read_exact_at(buf, offset)
}
