//! The segment/frame/record decoders, through the public door: the input becomes one or more
//! segment files of a class in a fresh data dir, then `Store::open` recovers them and a reader
//! reads everything back.
//!
//! Raw random bytes would almost never get past a frame CRC, so the input is a small program
//! that builds the files (see `Op`): frames with a correct CRC around fuzzed bodies reach the
//! record decoder and the zstd path, frames with a wrong CRC and verbatim bytes exercise
//! resynchronisation, truncation and quarantine.
//!
//! Properties checked (a failure aborts, like a panic):
//! - nothing panics, whatever the files hold (`Store::open` may refuse with an error);
//! - every record served lies in a frame whose CRC checks: the harness scans the files it
//!   wrote with its own frame parser before the store touches them;
//! - sequences come out strictly increasing;
//! - a store that opened read-write reopens, and serves the same sequences again
//!   (recovery is idempotent);
//! - memory: libFuzzer's `-rss_limit_mb` / `-malloc_limit_mb` (set by scripts/fuzz.sh).
#![no_main]

use std::path::Path;

use ferry::store::{ClassOptions, Overflow, Store, StoreOptions};
use libfuzzer_sys::fuzz_target;

// The on-disk layout, restated from docs/storage.md (the store's `format` module is private):
// the harness must build and check frames independently of the code under test anyway.
const SEGMENT_MAGIC: &[u8; 8] = b"FERRYSEG";
const FRAME_MAGIC: u32 = 0xC0DE_F3A1;
const FRAME_HEADER_LEN: usize = 48;
const MAX_FRAME_BODY: usize = 64 << 20;

fn segment_header(first_seq: u64, logical_start: u64) -> [u8; 40] {
    let mut b = [0u8; 40];
    b[0..8].copy_from_slice(SEGMENT_MAGIC);
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    b[16..24].copy_from_slice(&first_seq.to_le_bytes());
    b[24..32].copy_from_slice(&logical_start.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..32]);
    b[32..36].copy_from_slice(&crc.to_le_bytes());
    b
}

#[allow(clippy::too_many_arguments)]
fn frame(
    out: &mut Vec<u8>,
    codec: u8,
    first_seq: u64,
    count: u32,
    raw_len: u32,
    logical_start: u64,
    body: &[u8],
    good_crc: bool,
) {
    let start = out.len();
    out.resize(start + FRAME_HEADER_LEN, 0);
    out.extend_from_slice(body);
    let h = &mut out[start..start + FRAME_HEADER_LEN];
    h[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&(body.len() as u32).to_le_bytes());
    h[12] = 1;
    h[13] = codec;
    h[16..24].copy_from_slice(&first_seq.to_le_bytes());
    h[24..28].copy_from_slice(&count.to_le_bytes());
    h[28..32].copy_from_slice(&raw_len.to_le_bytes());
    h[32..40].copy_from_slice(&logical_start.to_le_bytes());
    h[40..48].copy_from_slice(&1_700_000_000_000u64.to_le_bytes());
    let mut crc = crc32c::crc32c(&out[start + 12..start + FRAME_HEADER_LEN]);
    crc = crc32c::crc32c_append(crc, body);
    if !good_crc {
        crc ^= 0x5a5a_0001;
    }
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Every `[first_seq, end_seq)` range claimed by a CRC-valid frame anywhere in `file`
/// (at any offset: the store may resynchronise on a frame the writer of the file never meant).
fn crc_valid_ranges(file: &[u8], out: &mut Vec<(u64, u64)>) {
    let magic = FRAME_MAGIC.to_le_bytes();
    let mut at = 0;
    while at + FRAME_HEADER_LEN <= file.len() {
        if file[at..at + 4] == magic {
            let h = &file[at..at + FRAME_HEADER_LEN];
            let body_len = u32_at(h, 4) as usize;
            if body_len <= MAX_FRAME_BODY && at + FRAME_HEADER_LEN + body_len <= file.len() {
                let body = &file[at + FRAME_HEADER_LEN..at + FRAME_HEADER_LEN + body_len];
                let crc = crc32c::crc32c_append(crc32c::crc32c(&h[12..]), body);
                if crc == u32_at(h, 8) {
                    let first = u64_at(h, 16);
                    let count = u64::from(u32_at(h, 24));
                    out.push((first, first.saturating_add(count)));
                }
            }
        }
        at += 1;
    }
}

/// Reads the byte stream as ops. Each op: tag byte, u16 length, that many bytes.
/// tag % 5: 0 new segment (header from the running sequence), 1 good frame, 2 frame with a
/// bad CRC, 3 verbatim bytes (one byte `n`: 16 x n zeros, like the space the writer zeroes
/// ahead of its data), 4 new segment with a verbatim (possibly broken) header.
/// In a frame op, data[0] is the record count (0 allowed: invalid), data[1] bit 0 asks for
/// zstd and bit 1 for a sequence that does not continue (data[2..10]); the rest is the body.
fn build(data: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut files: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut next_seq = 1u64;
    let mut logical = 0u64;
    let mut i = 0;
    while i + 3 <= data.len() && files.len() < 8 {
        let tag = data[i];
        let len = usize::from(u16::from_le_bytes([data[i + 1], data[i + 2]]));
        i += 3;
        let d = &data[i..(i + len).min(data.len())];
        i += d.len();
        match tag % 5 {
            0 => {
                files.push((next_seq, segment_header(next_seq, logical).to_vec()));
            }
            4 => {
                let name_seq = if d.len() >= 8 {
                    u64_at(d, 0).max(1)
                } else {
                    next_seq
                };
                files.push((name_seq, d.to_vec()));
            }
            t => {
                if files.is_empty() {
                    files.push((next_seq, segment_header(next_seq, logical).to_vec()));
                }
                let Some((_, file)) = files.last_mut() else {
                    continue;
                };
                if t == 3 {
                    match d {
                        [n] => file.resize(file.len() + 16 * usize::from(*n), 0),
                        _ => file.extend_from_slice(d),
                    }
                    continue;
                }
                let count = u32::from(d.first().copied().unwrap_or(1));
                let flags = d.get(1).copied().unwrap_or(0);
                let mut body = d.get(2..).unwrap_or(&[]);
                let mut first = next_seq;
                if flags & 2 != 0 && body.len() >= 8 {
                    first = u64_at(body, 0);
                    body = &body[8..];
                }
                let raw_len = body.len() as u32;
                let (codec, stored) = if flags & 1 != 0 {
                    match zstd::bulk::compress(body, 1) {
                        Ok(c) => (1, c),
                        Err(_) => (0, body.to_vec()),
                    }
                } else {
                    (0, body.to_vec())
                };
                frame(file, codec, first, count, raw_len, logical, &stored, t == 1);
                if t == 1 {
                    next_seq = first.saturating_add(u64::from(count));
                    logical = logical.saturating_add(u64::from(raw_len));
                }
            }
        }
    }
    files
}

fn options(dir: &Path, read_only: bool) -> StoreOptions {
    let mut o = StoreOptions::new(
        dir,
        vec![ClassOptions {
            name: "c".into(),
            max_bytes: 1 << 30,
            max_age: None,
            overflow: Overflow::DropOldest,
        }],
    );
    o.read_only = read_only;
    o
}

/// Opens the store and reads every record; None when open refused. Checks the properties
/// that hold for one open.
fn open_and_read(dir: &Path, read_only: bool, valid: &[(u64, u64)]) -> Option<Vec<u64>> {
    let (store, _report) = Store::open(options(dir, read_only)).ok()?;
    let _ = store.stats();
    let mut seqs = Vec::new();
    if let Ok(mut r) = store.reader(0, 1) {
        // Bounded: at most 255 records per frame and a few hundred frames per input.
        for _ in 0..100_000 {
            match r.read_batch(1000, 4 << 20) {
                Ok(batch) if batch.is_empty() => break,
                Ok(batch) => {
                    for rec in batch {
                        assert!(
                            valid.iter().any(|&(a, b)| rec.seq >= a && rec.seq < b),
                            "served seq {} which no CRC-valid frame holds (valid: {valid:?})",
                            rec.seq
                        );
                        assert!(
                            seqs.last().is_none_or(|&l| rec.seq > l),
                            "seq {} after {:?}",
                            rec.seq,
                            seqs.last()
                        );
                        seqs.push(rec.seq);
                    }
                }
                Err(_) => break,
            }
        }
    }
    let _ = store.close();
    Some(seqs)
}

fn scratch_root() -> &'static Path {
    // fdatasync on tmpfs is free: the target measures decoding, not the disk.
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        Path::new("/tmp")
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let files = build(rest);
    let mut valid = Vec::new();
    for (_, f) in &files {
        crc_valid_ranges(f, &mut valid);
    }
    let Ok(dir) = tempfile::tempdir_in(scratch_root()) else {
        return;
    };
    let class_dir = dir.path().join("classes").join("c");
    if std::fs::create_dir_all(&class_dir).is_err() {
        return;
    }
    for (seq, bytes) in &files {
        // Two ops may name the same segment: the later one wins, as on a real disk.
        let _ = std::fs::write(class_dir.join(format!("{seq:020}.seg")), bytes);
    }
    let read_only = mode & 1 != 0;
    let Some(first) = open_and_read(dir.path(), read_only, &valid) else {
        return;
    };
    if !read_only {
        // Recovery rewrote what it had to; a second open must find a clean log with the same
        // records (anything CRC-valid now was CRC-valid in what the first open left behind).
        let second = open_and_read(dir.path(), false, &valid);
        assert_eq!(
            second.as_ref(),
            Some(&first),
            "reopening after recovery served different sequences"
        );
    }
});
