//! The dead-letter log: records Kafka will never accept, kept on the gateway for an operator.
//!
//! A record whose error is permanent (too large, invalid, not authorized, unknown topic with
//! auto-create off, or a topic template that does not fit its MQTT topic) would block its class
//! forever if ferry kept retrying it. Instead the forwarder appends it here, `fdatasync`s, and
//! only then counts it as done in its class so the class's acknowledged position can move on.
//! Nothing is lost: the record and the reason sit here until the operator replays it (after
//! fixing the topic ACL, say) or drops it.
//!
//! ## Layout
//! ```text
//! <data_dir>/deadletter/deadletter.log    append-only frames
//! <data_dir>/deadletter/cut-<unix_ms>.bin bytes cut off a damaged tail at open (kept, not lost)
//! ```
//!
//! ## Frame format (integers little-endian)
//! ```text
//! len    u32     length of kind + body
//! crc    u32     CRC32C of kind + body
//! kind   u8      1 = entry, 2 = removed, 3 = next id
//! body:
//!   entry:   id u64, seq u64, dead_at_ms u64, class (u16 len + UTF-8),
//!            reason (u32 len + UTF-8), record (the store's record encoding, rest of the frame)
//!   removed: id u64, why u8 (1 = replayed, 2 = dropped)
//!   next id: id u64 (written first after compaction so ids never repeat)
//! ```
//! Do not reorder or remove fields; add new kinds instead.
//!
//! ## Crash cases
//! - Torn last frame (crash during append): the CRC or length does not match; open copies the
//!   tail to `cut-*.bin` and truncates. The record it held was not yet acknowledged in its
//!   class (ack happens after our fsync), so the forwarder sends it again and it is
//!   dead-lettered again.
//! - Crash between re-appending a replayed record to its class and writing `removed`: the
//!   entry is still listed and a second replay duplicates it (never loses it).
//! - When every entry has been removed the file is truncated to a single `next id` frame.
//!
//! Memory: the index keeps a small summary per entry (no payloads); `get` reads the record
//! from the file.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::store::{Record, Store, StoreError};

const KIND_ENTRY: u8 = 1;
const KIND_REMOVED: u8 = 2;
const KIND_NEXT_ID: u8 = 3;
const WHY_REPLAYED: u8 = 1;
const WHY_DROPPED: u8 = 2;
/// No sane record is near this; a larger length means a damaged header.
const MAX_FRAME: u32 = 256 << 20;
const FILE_NAME: &str = "deadletter.log";

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("dead-letter log: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("dead letter {0} does not exist (see `ferry deadletter list`)")]
    NotFound(u64),
    #[error("dead letter {id} at offset {offset} in {path} is corrupt: {what}")]
    Corrupt {
        id: u64,
        offset: u64,
        path: PathBuf,
        what: String,
    },
    #[error("replaying dead letter {id}: class `{class}` no longer exists in the configuration; add it back or drop the entry")]
    UnknownClass { id: u64, class: String },
    #[error("replaying dead letter {id} into class `{class}`: {source}")]
    Store {
        id: u64,
        class: String,
        #[source]
        source: StoreError,
    },
}

/// Which entries an operation applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selector {
    One(u64),
    All,
}

/// A listed entry (no payload).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetterInfo {
    pub id: u64,
    pub class: String,
    pub seq: u64,
    pub dead_at_ms: u64,
    pub reason: String,
    pub mqtt_topic: String,
    pub payload_bytes: u64,
    pub received_at_ms: u64,
}

/// A full entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub info: DeadLetterInfo,
    pub record: Record,
}

/// Counters: current content, and what happened since the log was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetterCounters {
    pub entries: u64,
    pub file_bytes: u64,
    pub added: u64,
    pub replayed: u64,
    pub dropped: u64,
}

#[derive(Debug, Clone)]
struct Slot {
    info: DeadLetterInfo,
    /// Offset of the frame header, and the frame's total length.
    offset: u64,
    len: u64,
}

struct Inner {
    path: PathBuf,
    file: File,
    end: u64,
    next_id: u64,
    index: BTreeMap<u64, Slot>,
    counters: DeadLetterCounters,
}

/// The dead-letter log. Cheap to clone. Methods do blocking file I/O (one `fdatasync` per
/// change): call them from a blocking context (`spawn_blocking`) in async code.
#[derive(Clone)]
pub struct DeadLetters {
    inner: Arc<Mutex<Inner>>,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DeadLetterError {
    let path = path.to_path_buf();
    move |source| DeadLetterError::Io { op, path, source }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(1 + body.len());
    payload.push(kind);
    payload.extend_from_slice(body);
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).ok_or("length overflow")?;
        let s = self.buf.get(self.pos..end).ok_or("truncated body")?;
        self.pos = end;
        Ok(s)
    }
    fn u64(&mut self) -> Result<u64, String> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
    fn string(&mut self, len_bytes: usize) -> Result<String, String> {
        let mut b = [0u8; 4];
        b[..len_bytes].copy_from_slice(self.take(len_bytes)?);
        let n = u32::from_le_bytes(b) as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "string is not UTF-8".to_string())
    }
}

fn encode_entry(
    id: u64,
    class: &str,
    seq: u64,
    dead_at_ms: u64,
    reason: &str,
    rec: &Record,
) -> Vec<u8> {
    let class = &class.as_bytes()[..class.len().min(u16::MAX as usize)];
    let mut body = Vec::with_capacity(64 + reason.len() + rec.logical_size());
    body.extend_from_slice(&id.to_le_bytes());
    body.extend_from_slice(&seq.to_le_bytes());
    body.extend_from_slice(&dead_at_ms.to_le_bytes());
    body.extend_from_slice(&(class.len() as u16).to_le_bytes());
    body.extend_from_slice(class);
    body.extend_from_slice(&(reason.len() as u32).to_le_bytes());
    body.extend_from_slice(reason.as_bytes());
    rec.encode(&mut body);
    body
}

/// Decodes an entry body (after the kind byte).
fn decode_entry(body: &Bytes) -> Result<(DeadLetterInfo, Record), String> {
    let mut c = Cursor { buf: body, pos: 0 };
    let id = c.u64()?;
    let seq = c.u64()?;
    let dead_at_ms = c.u64()?;
    let class = c.string(2)?;
    let reason = c.string(4)?;
    let mut pos = c.pos;
    let record = Record::decode(body, &mut pos)?;
    let info = DeadLetterInfo {
        id,
        class,
        seq,
        dead_at_ms,
        reason,
        mqtt_topic: record.topic.clone(),
        payload_bytes: record.payload.len() as u64,
        received_at_ms: record.timestamp_ms,
    };
    Ok((info, record))
}

impl DeadLetters {
    /// Opens (creating if needed) `<data_dir>/deadletter/deadletter.log` and rebuilds the index.
    pub fn open(data_dir: &Path) -> Result<DeadLetters, DeadLetterError> {
        let dir = data_dir.join("deadletter");
        {
            // Owner and group only, like the store's directories (it may create the data dir).
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(crate::store::DATA_DIR_MODE)
                .create(&dir)
                .map_err(io_err("create directory", &dir))?;
        }
        let path = dir.join(FILE_NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(io_err("read", &path))?;

        let mut index = BTreeMap::new();
        let mut next_id = 1u64;
        let mut pos = 0usize;
        let mut bad: Option<String> = None;
        while pos < data.len() {
            if data.len() - pos < 8 {
                bad = Some("truncated frame header".into());
                break;
            }
            let len = u32::from_le_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]);
            let crc =
                u32::from_le_bytes([data[pos + 4], data[pos + 5], data[pos + 6], data[pos + 7]]);
            if len == 0 || len > MAX_FRAME || (data.len() - pos - 8) < len as usize {
                bad = Some(format!("frame length {len} does not fit the file"));
                break;
            }
            let payload = &data[pos + 8..pos + 8 + len as usize];
            if crc32c::crc32c(payload) != crc {
                bad = Some("CRC mismatch".into());
                break;
            }
            let body = Bytes::copy_from_slice(&payload[1..]);
            let frame_len = 8 + len as u64;
            match payload[0] {
                KIND_ENTRY => match decode_entry(&body) {
                    Ok((info, _)) => {
                        next_id = next_id.max(info.id + 1);
                        index.insert(
                            info.id,
                            Slot {
                                info,
                                offset: pos as u64,
                                len: frame_len,
                            },
                        );
                    }
                    Err(what) => {
                        bad = Some(format!("undecodable entry: {what}"));
                        break;
                    }
                },
                KIND_REMOVED | KIND_NEXT_ID => {
                    let mut c = Cursor { buf: &body, pos: 0 };
                    match c.u64() {
                        Ok(id) if payload[0] == KIND_REMOVED => {
                            index.remove(&id);
                        }
                        Ok(id) => next_id = next_id.max(id),
                        Err(what) => {
                            bad = Some(what);
                            break;
                        }
                    }
                }
                k => {
                    bad = Some(format!("unknown frame kind {k}"));
                    break;
                }
            }
            pos += frame_len as usize;
        }
        if let Some(what) = bad {
            // Keep the bytes we cannot read next to the log instead of destroying them.
            let cut = dir.join(format!("cut-{}.bin", now_ms()));
            std::fs::write(&cut, &data[pos..]).map_err(io_err("write", &cut))?;
            file.set_len(pos as u64)
                .map_err(io_err("truncate", &path))?;
            file.sync_data().map_err(io_err("fdatasync", &path))?;
            tracing::warn!(
                path = %path.display(),
                offset = pos,
                cut_bytes = data.len() - pos,
                saved_to = %cut.display(),
                what,
                "dead-letter log had a damaged tail; truncated it (a crash during an append does this)"
            );
        }
        let counters = DeadLetterCounters {
            entries: index.len() as u64,
            file_bytes: pos as u64,
            ..Default::default()
        };
        Ok(DeadLetters {
            inner: Arc::new(Mutex::new(Inner {
                path,
                file,
                end: pos as u64,
                next_id,
                index,
                counters,
            })),
        })
    }

    /// Appends a dead letter and makes it durable; returns its id.
    pub fn add(
        &self,
        class: &str,
        seq: u64,
        record: &Record,
        reason: &str,
    ) -> Result<u64, DeadLetterError> {
        let mut g = self.inner.lock();
        let id = g.next_id;
        let dead_at_ms = now_ms();
        let bytes = frame(
            KIND_ENTRY,
            &encode_entry(id, class, seq, dead_at_ms, reason, record),
        );
        g.append(&bytes)?;
        g.next_id += 1;
        let offset = g.end - bytes.len() as u64;
        g.index.insert(
            id,
            Slot {
                info: DeadLetterInfo {
                    id,
                    class: class.to_string(),
                    seq,
                    dead_at_ms,
                    reason: reason.to_string(),
                    mqtt_topic: record.topic.clone(),
                    payload_bytes: record.payload.len() as u64,
                    received_at_ms: record.timestamp_ms,
                },
                offset,
                len: bytes.len() as u64,
            },
        );
        g.counters.added += 1;
        g.counters.entries = g.index.len() as u64;
        Ok(id)
    }

    pub fn list(&self) -> Vec<DeadLetterInfo> {
        self.inner
            .lock()
            .index
            .values()
            .map(|s| s.info.clone())
            .collect()
    }

    pub fn get(&self, id: u64) -> Result<DeadLetter, DeadLetterError> {
        let g = self.inner.lock();
        let slot = g.index.get(&id).ok_or(DeadLetterError::NotFound(id))?;
        g.read(slot)
    }

    pub fn counters(&self) -> DeadLetterCounters {
        self.inner.lock().counters.clone()
    }

    /// Removes entries without replaying them; returns how many were removed.
    pub fn drop_entries(&self, which: Selector) -> Result<u64, DeadLetterError> {
        let mut g = self.inner.lock();
        let ids: Vec<u64> = match which {
            Selector::One(id) if g.index.contains_key(&id) => vec![id],
            Selector::One(id) => return Err(DeadLetterError::NotFound(id)),
            Selector::All => g.index.keys().copied().collect(),
        };
        g.remove(&ids, WHY_DROPPED)?;
        g.counters.dropped += ids.len() as u64;
        Ok(ids.len() as u64)
    }

    /// Re-appends entries into their classes (they get new sequence numbers and go through the
    /// forwarder again), waits until the store made them durable, then removes them here.
    /// Returns how many were replayed. Stops at the first error; entries replayed before it
    /// are removed.
    pub async fn replay(&self, store: &Store, which: Selector) -> Result<u64, DeadLetterError> {
        let ids: Vec<u64> = {
            let g = self.inner.lock();
            match which {
                Selector::One(id) if g.index.contains_key(&id) => vec![id],
                Selector::One(id) => return Err(DeadLetterError::NotFound(id)),
                Selector::All => g.index.keys().copied().collect(),
            }
        };
        let mut done = Vec::with_capacity(ids.len());
        let mut result = Ok(());
        for id in ids {
            let dl = {
                let this = self.clone();
                match tokio::task::spawn_blocking(move || this.get(id)).await {
                    Ok(r) => r,
                    Err(join) => Err(DeadLetterError::Io {
                        op: "read (task failed)",
                        path: PathBuf::from(FILE_NAME),
                        source: std::io::Error::other(join.to_string()),
                    }),
                }
            };
            let dl = match dl {
                Ok(dl) => dl,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            let Some(class) = store.class_id(&dl.info.class) else {
                result = Err(DeadLetterError::UnknownClass {
                    id,
                    class: dl.info.class,
                });
                break;
            };
            let appended = match store.append(class, dl.record) {
                Ok(ticket) => ticket.await,
                Err(e) => Err(e),
            };
            match appended {
                Ok(seq) => {
                    tracing::info!(id, class = %dl.info.class, old_seq = dl.info.seq, new_seq = seq, "dead letter replayed into its class");
                    done.push(id);
                }
                Err(source) => {
                    result = Err(DeadLetterError::Store {
                        id,
                        class: dl.info.class,
                        source,
                    });
                    break;
                }
            }
        }
        if !done.is_empty() {
            let this = self.clone();
            let ids = done.clone();
            let removed = tokio::task::spawn_blocking(move || {
                let mut g = this.inner.lock();
                g.remove(&ids, WHY_REPLAYED)?;
                g.counters.replayed += ids.len() as u64;
                Ok::<_, DeadLetterError>(())
            })
            .await;
            match removed {
                Ok(r) => r?,
                Err(join) => {
                    return Err(DeadLetterError::Io {
                        op: "remove (task failed)",
                        path: PathBuf::from(FILE_NAME),
                        source: std::io::Error::other(join.to_string()),
                    })
                }
            }
        }
        result.map(|()| done.len() as u64)
    }
}

impl Inner {
    fn append(&mut self, bytes: &[u8]) -> Result<(), DeadLetterError> {
        if let Err(e) = self.file.write_all(bytes) {
            // A partial write would leave a torn frame before the next one; cut it now.
            let _ = self.file.set_len(self.end);
            return Err(DeadLetterError::Io {
                op: "append",
                path: self.path.clone(),
                source: e,
            });
        }
        self.file
            .sync_data()
            .map_err(io_err("fdatasync", &self.path))?;
        self.end += bytes.len() as u64;
        self.counters.file_bytes = self.end;
        Ok(())
    }

    fn read(&self, slot: &Slot) -> Result<DeadLetter, DeadLetterError> {
        let corrupt = |what: String| DeadLetterError::Corrupt {
            id: slot.info.id,
            offset: slot.offset,
            path: self.path.clone(),
            what,
        };
        let mut buf = vec![0u8; slot.len as usize];
        self.file
            .read_exact_at(&mut buf, slot.offset)
            .map_err(io_err("read", &self.path))?;
        let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
        if crc32c::crc32c(&buf[8..]) != crc || buf.get(8) != Some(&KIND_ENTRY) {
            return Err(corrupt("CRC mismatch on read".into()));
        }
        let body = Bytes::from(buf).slice(9..);
        let (info, record) = decode_entry(&body).map_err(corrupt)?;
        Ok(DeadLetter { info, record })
    }

    fn remove(&mut self, ids: &[u64], why: u8) -> Result<(), DeadLetterError> {
        if ids.is_empty() {
            return Ok(());
        }
        for id in ids {
            self.index.remove(id);
        }
        if self.index.is_empty() {
            // Nothing left: compact to one frame that keeps ids from being reused.
            let bytes = frame(KIND_NEXT_ID, &self.next_id.to_le_bytes());
            self.file
                .set_len(0)
                .map_err(io_err("truncate", &self.path))?;
            self.end = 0;
            self.append(&bytes)?;
        } else {
            let mut all = Vec::with_capacity(ids.len() * 17);
            for id in ids {
                let mut body = id.to_le_bytes().to_vec();
                body.push(why);
                all.extend_from_slice(&frame(KIND_REMOVED, &body));
            }
            self.append(&all)?;
        }
        self.counters.entries = self.index.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: u8) -> Record {
        Record {
            timestamp_ms: 1000 + n as u64,
            topic: format!("t/{n}"),
            qos: 1,
            retain: false,
            client_id: "c".into(),
            user_properties: vec![("k".into(), "v".into())],
            content_type: None,
            payload: Bytes::from(vec![n; 100]),
        }
    }

    #[test]
    fn add_list_get_drop_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let dl = DeadLetters::open(dir.path()).unwrap();
        let a = dl
            .add("telemetry", 7, &rec(1), "MessageSizeTooLarge")
            .unwrap();
        let b = dl
            .add("alarms", 9, &rec(2), "TopicAuthorizationFailed")
            .unwrap();
        assert_eq!((a, b), (1, 2));
        assert_eq!(dl.get(b).unwrap().record, rec(2));
        assert_eq!(dl.drop_entries(Selector::One(a)).unwrap(), 1);
        drop(dl);

        let dl = DeadLetters::open(dir.path()).unwrap();
        let l = dl.list();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].id, 2);
        assert_eq!(l[0].class, "alarms");
        assert_eq!(l[0].seq, 9);
        assert_eq!(dl.get(2).unwrap().record, rec(2));
        assert!(matches!(dl.get(1), Err(DeadLetterError::NotFound(1))));
        assert_eq!(dl.drop_entries(Selector::All).unwrap(), 1);
        // Compacted, but ids keep counting.
        assert_eq!(dl.add("alarms", 10, &rec(3), "x").unwrap(), 3);
        drop(dl);
        let dl = DeadLetters::open(dir.path()).unwrap();
        assert_eq!(dl.list().len(), 1);
        assert_eq!(dl.add("alarms", 11, &rec(4), "x").unwrap(), 4);
    }

    #[test]
    fn torn_tail_is_cut_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let dl = DeadLetters::open(dir.path()).unwrap();
        dl.add("c", 1, &rec(1), "r").unwrap();
        dl.add("c", 2, &rec(2), "r").unwrap();
        drop(dl);
        let path = dir.path().join("deadletter").join(FILE_NAME);
        let len = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 5).unwrap();
        drop(f);
        let dl = DeadLetters::open(dir.path()).unwrap();
        assert_eq!(dl.list().len(), 1);
        let cuts = std::fs::read_dir(dir.path().join("deadletter"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("cut-")
            })
            .count();
        assert_eq!(cuts, 1);
        // Appends continue cleanly after the cut.
        dl.add("c", 3, &rec(3), "r").unwrap();
        drop(dl);
        assert_eq!(DeadLetters::open(dir.path()).unwrap().list().len(), 2);
    }
}
