//! Export and import: carrying a backlog on removable media from a site that never gets a link.
//!
//! `ferry export --class C --out FILE` writes the waiting records of one class; `ferry import
//! FILE` on a gateway that has a link appends them to the class of the same name there, and
//! its forwarder sends them on.
//!
//! ## Ids survive the trip
//! Every record keeps the id it had on the gateway that received it: the import adds the MQTT
//! user property `ferry.origin.seq` = `gateway/class/seq` (the same form as the `ferry.seq`
//! Kafka header; a record that already carries one keeps it, so a record exported twice keeps
//! its first id). The importing gateway forwards user properties as Kafka headers, so
//! downstream deduplication keys on `ferry.origin.seq` when present, else on `ferry.seq`.
//! Importing a file twice, or importing it and later also forwarding the originals, therefore
//! produces duplicates that downstream recognises, never records it cannot tell apart.
//!
//! ## File format (version 1, integers little-endian)
//! ```text
//! header:
//!   magic        8 bytes  "FERRYEXP"
//!   version      u16      1
//!   created_ms   u64      when the export was written (Unix ms)
//!   gateway      u16 len + UTF-8
//!   class        u16 len + UTF-8
//!   header_crc   u32      CRC32C of every header byte before it
//! record frame, repeated:
//!   len          u32      length of body (> 0)
//!   crc          u32      CRC32C of body
//!   body:
//!     seq          u64    sequence in the exporting gateway's class
//!     timestamp_ms u64    receive time at the exporting gateway
//!     qos          u8
//!     flags        u8     bit0 retain, bit1 has content_type
//!     topic        u16 len + UTF-8
//!     client_id    u16 len + UTF-8
//!     content_type u16 len + UTF-8            (only with flags bit1)
//!     n_props      u32, then n_props x (u32 len + key, u32 len + value)
//!     payload      u32 len + bytes
//! trailer:
//!   zero         u32      0 (a frame length of 0 ends the records)
//!   records      u64      number of record frames
//!   trailer_crc  u32      CRC32C of `records`
//! ```
//! Do not reorder or remove fields; a new layout gets a new version.
//!
//! The export is written to `FILE.partial`, fsync'd, then renamed, so a FILE that exists is
//! complete. The import checks the whole file (every CRC, the trailer's count) before it
//! appends anything: a damaged stick imports nothing rather than half.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::store::{Record, Store, StoreError};

use super::inspect::{self, InspectError};
use super::ImportReport;

pub const MAGIC: &[u8; 8] = b"FERRYEXP";
pub const VERSION: u16 = 1;
/// The user property carrying a record's original id.
pub const ORIGIN_PROPERTY: &str = "ferry.origin.seq";
/// A record body larger than this is not something ferry wrote.
const MAX_BODY: u32 = 512 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a usable ferry export file: {what}")]
    Format { path: PathBuf, what: String },
    #[error(transparent)]
    Inspect(#[from] InspectError),
    #[error("class `{class}` (from the export file) does not exist on this gateway; it has: {known}. Add the class to the config, or re-export into a class that exists")]
    UnknownClass { class: String, known: String },
    #[error("importing {path}: appending record {index} of {total} failed: {source}; records before it were imported, re-running the import is safe (duplicates keep their ferry.origin.seq ids)")]
    Append {
        path: PathBuf,
        index: u64,
        total: u64,
        #[source]
        source: StoreError,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TransferError {
    let path = path.to_path_buf();
    move |source| TransferError::Io { op, path, source }
}

/// What [`export`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExportReport {
    pub path: String,
    pub gateway: String,
    pub class: String,
    pub records: u64,
    pub file_bytes: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
}

fn put_str16(out: &mut Vec<u8>, s: &str) -> Result<(), String> {
    let n =
        u16::try_from(s.len()).map_err(|_| format!("`{s:.40}...` is longer than 65535 bytes"))?;
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn put_bytes32(out: &mut Vec<u8>, b: &[u8]) -> Result<(), String> {
    let n = u32::try_from(b.len()).map_err(|_| "a field is longer than 4 GiB".to_string())?;
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(b);
    Ok(())
}

fn header_bytes(gateway: &str, class: &str, created_ms: u64) -> Result<Vec<u8>, String> {
    let mut h = Vec::new();
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&created_ms.to_le_bytes());
    put_str16(&mut h, gateway)?;
    put_str16(&mut h, class)?;
    let crc = crc32c::crc32c(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    Ok(h)
}

fn encode_body(seq: u64, r: &Record) -> Result<Vec<u8>, String> {
    let mut b = Vec::with_capacity(64 + r.topic.len() + r.payload.len());
    b.extend_from_slice(&seq.to_le_bytes());
    b.extend_from_slice(&r.timestamp_ms.to_le_bytes());
    b.push(r.qos);
    b.push(u8::from(r.retain) | (u8::from(r.content_type.is_some()) << 1));
    put_str16(&mut b, &r.topic)?;
    put_str16(&mut b, &r.client_id)?;
    if let Some(ct) = &r.content_type {
        put_str16(&mut b, ct)?;
    }
    let n = u32::try_from(r.user_properties.len()).map_err(|_| "too many properties")?;
    b.extend_from_slice(&n.to_le_bytes());
    for (k, v) in &r.user_properties {
        put_bytes32(&mut b, k.as_bytes())?;
        put_bytes32(&mut b, v.as_bytes())?;
    }
    put_bytes32(&mut b, &r.payload)?;
    Ok(b)
}

/// A cursor over a byte slice that fails with a message instead of panicking.
struct Cur<'a>(&'a [u8]);

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!("field needs {n} bytes, {} left", self.0.len()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn str16(&mut self) -> Result<String, String> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "a string is not UTF-8".into())
    }
    fn str32(&mut self) -> Result<String, String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "a string is not UTF-8".into())
    }
}

fn decode_body(body: &[u8]) -> Result<(u64, Record), String> {
    let mut c = Cur(body);
    let seq = c.u64()?;
    let timestamp_ms = c.u64()?;
    let qos = c.u8()?;
    let flags = c.u8()?;
    let topic = c.str16()?;
    let client_id = c.str16()?;
    let content_type = if flags & 2 != 0 {
        Some(c.str16()?)
    } else {
        None
    };
    let n = c.u32()?;
    let mut user_properties = Vec::new();
    for _ in 0..n {
        user_properties.push((c.str32()?, c.str32()?));
    }
    let plen = c.u32()? as usize;
    let payload = Bytes::copy_from_slice(c.take(plen)?);
    if !c.0.is_empty() {
        return Err(format!("{} unexpected bytes after the payload", c.0.len()));
    }
    Ok((
        seq,
        Record {
            timestamp_ms,
            topic,
            qos,
            retain: flags & 1 != 0,
            client_id,
            user_properties,
            content_type,
            payload,
        },
    ))
}

/// Writes the waiting records of `class` (after its acknowledged position, up to the committed
/// end at the start) to `out`. Blocking. The records stay in the store.
pub fn export(
    store: &Store,
    gateway: &str,
    class: &str,
    out: &Path,
) -> Result<ExportReport, TransferError> {
    let id = inspect::class_id(store, class)?;
    let fmt_err = |what: String| TransferError::Format {
        path: out.to_path_buf(),
        what,
    };
    let partial = {
        let mut p = out.as_os_str().to_owned();
        p.push(".partial");
        PathBuf::from(p)
    };
    let file = File::create(&partial).map_err(io_err("create", &partial))?;
    let mut w = BufWriter::new(file);
    let header = header_bytes(gateway, class, inspect::now_ms()).map_err(fmt_err)?;
    w.write_all(&header).map_err(io_err("write", &partial))?;
    let (mut records, mut first, mut last) = (0u64, None, None);
    let end = store.committed(id);
    let mut reader = store
        .reader(id, store.acked(id).seq + 1)
        .map_err(|source| InspectError::Store {
            class: class.to_string(),
            source,
        })?;
    'outer: loop {
        let batch = reader
            .read_batch(1024, 1 << 20)
            .map_err(|source| InspectError::Store {
                class: class.to_string(),
                source,
            })?;
        if batch.is_empty() {
            break;
        }
        for r in batch {
            if r.seq > end {
                break 'outer;
            }
            let body = encode_body(r.seq, &r.record)
                .map_err(|w| fmt_err(format!("record {}: {w}", r.seq)))?;
            let len = u32::try_from(body.len())
                .map_err(|_| fmt_err(format!("record {} is larger than 4 GiB", r.seq)))?;
            w.write_all(&len.to_le_bytes())
                .and_then(|_| w.write_all(&crc32c::crc32c(&body).to_le_bytes()))
                .and_then(|_| w.write_all(&body))
                .map_err(io_err("write", &partial))?;
            records += 1;
            first.get_or_insert(r.seq);
            last = Some(r.seq);
        }
    }
    let rec_bytes = records.to_le_bytes();
    w.write_all(&0u32.to_le_bytes())
        .and_then(|_| w.write_all(&rec_bytes))
        .and_then(|_| w.write_all(&crc32c::crc32c(&rec_bytes).to_le_bytes()))
        .map_err(io_err("write", &partial))?;
    let file = w.into_inner().map_err(|e| TransferError::Io {
        op: "write",
        path: partial.clone(),
        source: e.into_error(),
    })?;
    // The file is often on a USB stick pulled right after: make it durable before it is named.
    file.sync_all().map_err(io_err("fsync", &partial))?;
    let file_bytes = file.metadata().map_err(io_err("stat", &partial))?.len();
    drop(file);
    std::fs::rename(&partial, out).map_err(io_err("rename into place", out))?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(ExportReport {
        path: out.display().to_string(),
        gateway: gateway.to_string(),
        class: class.to_string(),
        records,
        file_bytes,
        first_seq: first,
        last_seq: last,
    })
}

/// Reads an export file frame by frame. Memory: one record.
pub struct ExportReader {
    path: PathBuf,
    r: BufReader<File>,
    pub gateway: String,
    pub class: String,
    pub created_ms: u64,
    count: u64,
    done: bool,
}

impl ExportReader {
    pub fn open(path: &Path) -> Result<Self, TransferError> {
        let file = File::open(path).map_err(io_err("open", path))?;
        let mut r = BufReader::new(file);
        let fmt = |what: &str| TransferError::Format {
            path: path.to_path_buf(),
            what: what.to_string(),
        };
        let mut fixed = [0u8; 18];
        r.read_exact(&mut fixed)
            .map_err(|_| fmt("too short for a header"))?;
        if &fixed[..8] != MAGIC {
            return Err(fmt("it does not start with FERRYEXP"));
        }
        let version = u16::from_le_bytes([fixed[8], fixed[9]]);
        if version != VERSION {
            return Err(fmt(&format!(
                "format version {version}; this ferry reads version {VERSION}"
            )));
        }
        let mut header = fixed.to_vec();
        let mut read_str = |header: &mut Vec<u8>| -> Result<String, TransferError> {
            let mut n = [0u8; 2];
            r.read_exact(&mut n).map_err(|_| fmt("truncated header"))?;
            let mut s = vec![0u8; u16::from_le_bytes(n) as usize];
            r.read_exact(&mut s).map_err(|_| fmt("truncated header"))?;
            header.extend_from_slice(&n);
            header.extend_from_slice(&s);
            String::from_utf8(s).map_err(|_| fmt("header string is not UTF-8"))
        };
        let gateway = read_str(&mut header)?;
        let class = read_str(&mut header)?;
        let mut crc = [0u8; 4];
        r.read_exact(&mut crc)
            .map_err(|_| fmt("truncated header"))?;
        if u32::from_le_bytes(crc) != crc32c::crc32c(&header) {
            return Err(fmt("header checksum mismatch"));
        }
        let mut created = [0u8; 8];
        created.copy_from_slice(&fixed[10..18]);
        Ok(ExportReader {
            path: path.to_path_buf(),
            r,
            gateway,
            class,
            created_ms: u64::from_le_bytes(created),
            count: 0,
            done: false,
        })
    }

    fn fmt(&self, what: String) -> TransferError {
        TransferError::Format {
            path: self.path.clone(),
            what,
        }
    }

    /// The next record, or None after a valid trailer.
    pub fn next_record(&mut self) -> Result<Option<(u64, Record)>, TransferError> {
        if self.done {
            return Ok(None);
        }
        let mut h = [0u8; 4];
        self.r.read_exact(&mut h).map_err(|_| {
            self.fmt(format!(
                "it ends after {} records without a trailer (copy interrupted?)",
                self.count
            ))
        })?;
        let len = u32::from_le_bytes(h);
        if len == 0 {
            let mut t = [0u8; 12];
            self.r
                .read_exact(&mut t)
                .map_err(|_| self.fmt("truncated trailer".into()))?;
            let n = &t[..8];
            let mut crc = [0u8; 4];
            crc.copy_from_slice(&t[8..]);
            let mut nb = [0u8; 8];
            nb.copy_from_slice(n);
            if u32::from_le_bytes(crc) != crc32c::crc32c(n) {
                return Err(self.fmt("trailer checksum mismatch".into()));
            }
            if u64::from_le_bytes(nb) != self.count {
                return Err(self.fmt(format!(
                    "the trailer says {} records, the file holds {}",
                    u64::from_le_bytes(nb),
                    self.count
                )));
            }
            self.done = true;
            return Ok(None);
        }
        if len > MAX_BODY {
            return Err(self.fmt(format!(
                "record {} claims {len} bytes (damaged length)",
                self.count + 1
            )));
        }
        let mut crc = [0u8; 4];
        let mut body = vec![0u8; len as usize];
        self.r
            .read_exact(&mut crc)
            .and_then(|_| self.r.read_exact(&mut body))
            .map_err(|_| self.fmt(format!("record {} is truncated", self.count + 1)))?;
        if u32::from_le_bytes(crc) != crc32c::crc32c(&body) {
            return Err(self.fmt(format!("record {} fails its checksum", self.count + 1)));
        }
        let rec =
            decode_body(&body).map_err(|w| self.fmt(format!("record {}: {w}", self.count + 1)))?;
        self.count += 1;
        Ok(Some(rec))
    }
}

/// Checks `path` completely, then appends its records to the class of the same name, each
/// with its origin id ([`ORIGIN_PROPERTY`]), and waits until they are durable.
pub async fn import(store: &Store, path: &Path) -> Result<ImportReport, TransferError> {
    let p = path.to_path_buf();
    // Pass 1 (blocking): the whole file must check before anything is appended.
    let (gateway, class, total, bytes, first, last) =
        tokio::task::spawn_blocking(move || -> Result<_, TransferError> {
            let mut r = ExportReader::open(&p)?;
            let (mut n, mut bytes, mut first, mut last) = (0u64, 0u64, None, None);
            while let Some((seq, rec)) = r.next_record()? {
                n += 1;
                bytes += rec.payload.len() as u64;
                first.get_or_insert(seq);
                last = Some(seq);
            }
            Ok((r.gateway.clone(), r.class.clone(), n, bytes, first, last))
        })
        .await
        .map_err(|e| TransferError::Io {
            op: "read (task failed)",
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })??;
    let Some(class_id) = store.class_id(&class) else {
        return Err(TransferError::UnknownClass {
            class,
            known: store.class_names().join(", "),
        });
    };

    // Pass 2: a reader thread feeds a bounded channel; appends are awaited in windows so at
    // most a window of records is in memory.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<(u64, Record), TransferError>>(256);
    let p = path.to_path_buf();
    let reader = tokio::task::spawn_blocking(move || {
        let mut r = match ExportReader::open(&p) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        loop {
            match r.next_record() {
                Ok(Some(rec)) => {
                    if tx.blocking_send(Ok(rec)).is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    let mut pending = std::collections::VecDeque::new();
    let mut index = 0u64;
    let append_err = |index: u64, source| TransferError::Append {
        path: path.to_path_buf(),
        index,
        total,
        source,
    };
    while let Some(item) = rx.recv().await {
        let (seq, mut rec) = item?;
        index += 1;
        if !rec
            .user_properties
            .iter()
            .any(|(k, _)| k == ORIGIN_PROPERTY)
        {
            rec.user_properties.push((
                ORIGIN_PROPERTY.to_string(),
                format!("{gateway}/{class}/{seq}"),
            ));
        }
        let ticket = store
            .append(class_id, rec)
            .map_err(|e| append_err(index, e))?;
        pending.push_back((index, ticket));
        if pending.len() >= 1024 {
            if let Some((i, t)) = pending.pop_front() {
                t.await.map_err(|e| append_err(i, e))?;
            }
        }
    }
    for (i, t) in pending {
        t.await.map_err(|e| append_err(i, e))?;
    }
    let _ = reader.await;
    Ok(ImportReport {
        gateway,
        class,
        records: total,
        bytes,
        first_seq: first,
        last_seq: last,
    })
}
