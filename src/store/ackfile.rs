//! The per-class `state` file: acknowledged position and drop counters.
//!
//! ```text
//! // Format: two 64-byte slots (A at 0, B at 64), little-endian; the valid slot with the
//! // higher generation wins, so a torn write of one slot keeps the other.
//! 0   generation        u64
//! 8   acked_seq         u64
//! 16  acked_logical_end u64
//! 24  dropped max_bytes u64
//! 32  dropped max_age   u64
//! 40  dropped purge     u64
//! 48  dropped corrupt   u64
//! 56  crc               u32  CRC32C of bytes 0..56
//! 60  reserved          u32
//! ```
//! Written with pwrite + fdatasync. Losing an update only means re-sending records that
//! Kafka already has (at-least-once), never losing one.

use super::{DropCounts, Position, Result, StoreError};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const SLOT: usize = 64;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ClassState {
    pub acked: Position,
    pub dropped: DropCounts,
}

pub(crate) struct StateFile {
    file: Option<File>,
    path: PathBuf,
    generation: u64,
}

impl StateFile {
    /// Opens (or, unless `read_only`, creates) the state file and loads the newest valid slot.
    pub fn open(path: &Path, read_only: bool) -> Result<(StateFile, ClassState)> {
        let file = if read_only {
            match File::open(path) {
                Ok(f) => Some(f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(StoreError::io("open state file", path, e)),
            }
        } else {
            Some(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(path)
                    .map_err(|e| StoreError::io("open state file", path, e))?,
            )
        };
        let mut best: Option<(u64, ClassState)> = None;
        if let Some(f) = &file {
            let mut buf = [0u8; 2 * SLOT];
            let n =
                read_up_to(f, &mut buf).map_err(|e| StoreError::io("read state file", path, e))?;
            for slot in 0..2 {
                let s = &buf[slot * SLOT..(slot + 1) * SLOT];
                if (slot + 1) * SLOT > n {
                    continue;
                }
                if let Some((gen, st)) = decode(s) {
                    if best.as_ref().is_none_or(|(g, _)| gen > *g) {
                        best = Some((gen, st));
                    }
                }
            }
        }
        let (generation, state) = best.unwrap_or_default();
        Ok((
            StateFile {
                file,
                path: path.to_path_buf(),
                generation,
            },
            state,
        ))
    }

    pub fn write(&mut self, st: &ClassState) -> Result<()> {
        let Some(file) = &self.file else {
            return Err(StoreError::ReadOnly);
        };
        let gen = self.generation + 1;
        let mut b = [0u8; SLOT];
        let fields = [
            gen,
            st.acked.seq,
            st.acked.logical_end,
            st.dropped.max_bytes,
            st.dropped.max_age,
            st.dropped.purge,
            st.dropped.corrupt,
        ];
        for (i, v) in fields.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b[..56]);
        b[56..60].copy_from_slice(&crc.to_le_bytes());
        let off = (gen % 2) * SLOT as u64;
        file.write_all_at(&b, off)
            .and_then(|_| file.sync_data())
            .map_err(|e| StoreError::io("write state file", &self.path, e))?;
        self.generation = gen;
        Ok(())
    }
}

fn read_up_to(f: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let r = f.read_at(&mut buf[n..], n as u64)?;
        if r == 0 {
            break;
        }
        n += r;
    }
    Ok(n)
}

fn decode(s: &[u8]) -> Option<(u64, ClassState)> {
    use super::format::{u32_at, u64_at};
    if u32_at(s, 56) != crc32c::crc32c(&s[..56]) {
        return None;
    }
    let gen = u64_at(s, 0);
    if gen == 0 {
        return None;
    }
    Some((
        gen,
        ClassState {
            acked: Position {
                seq: u64_at(s, 8),
                logical_end: u64_at(s, 16),
            },
            dropped: DropCounts {
                max_bytes: u64_at(s, 24),
                max_age: u64_at(s, 32),
                purge: u64_at(s, 40),
                corrupt: u64_at(s, 48),
            },
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_valid_slot_wins() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state");
        let (mut f, st) = StateFile::open(&p, false).unwrap();
        assert_eq!(st, ClassState::default());
        let mut st = ClassState::default();
        for i in 1..=5 {
            st.acked.seq = i;
            f.write(&st).unwrap();
        }
        let (_, got) = StateFile::open(&p, true).unwrap();
        assert_eq!(got.acked.seq, 5);
        // Tear the newest slot (gen 5 -> slot 1): the older one (seq 4) survives.
        let raw = std::fs::read(&p).unwrap();
        let mut torn = raw.clone();
        torn[SLOT + 3] ^= 0xff;
        std::fs::write(&p, &torn).unwrap();
        let (_, got) = StateFile::open(&p, true).unwrap();
        assert_eq!(got.acked.seq, 4);
    }
}
