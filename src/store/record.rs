//! One record and its encoding inside a frame's (possibly compressed) body.
//!
//! ```text
//! // Format (all integers LEB128 varints unless noted), one after another in a frame body:
//! timestamp_ms  varint
//! flags         u8      bit0-1 qos, bit2 retain, bit3 has content_type
//! topic         varint len + UTF-8 bytes
//! client_id     varint len + UTF-8 bytes
//! content_type  varint len + UTF-8 bytes      (only when flags bit3)
//! n_props       varint, then n_props x (varint len + key, varint len + value)
//! payload       varint len + bytes
//! ```
//! The sequence number is not stored per record: a frame stores its first sequence and the
//! records follow in order. Do not reorder or remove fields; add new ones behind a new flag bit.

use bytes::Bytes;

/// A message as ingest hands it to the store.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// Receive time at the gateway, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub client_id: String,
    /// MQTT v5 user properties, in the order received.
    pub user_properties: Vec<(String, String)>,
    /// MQTT v5 content type.
    pub content_type: Option<String>,
    pub payload: Bytes,
}

/// A record read back from the store, with its place in the class's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub seq: u64,
    /// Cumulative logical bytes of the class through this record; pass
    /// [`StoredRecord::position`] to `Store::ack`.
    pub logical_end: u64,
    pub record: Record,
}

impl StoredRecord {
    pub fn position(&self) -> super::Position {
        super::Position {
            seq: self.seq,
            logical_end: self.logical_end,
        }
    }
}

const FLAG_RETAIN: u8 = 1 << 2;
const FLAG_CONTENT_TYPE: u8 = 1 << 3;

/// A record borrowed from its parts, for appending without owning copies of them (ingest
/// appends straight from the socket's read buffer). Encodes exactly like [`Record`].
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    pub timestamp_ms: u64,
    pub topic: &'a str,
    pub qos: u8,
    pub retain: bool,
    pub client_id: &'a str,
    pub user_properties: &'a [(String, String)],
    pub content_type: Option<&'a str>,
    pub payload: &'a [u8],
}

impl RecordRef<'_> {
    /// The record's logical size: its uncompressed encoded length.
    pub fn logical_size(&self) -> usize {
        let mut n = varint_len(self.timestamp_ms) + 1;
        n += str_len(self.topic) + str_len(self.client_id);
        if let Some(ct) = self.content_type {
            n += str_len(ct);
        }
        n += varint_len(self.user_properties.len() as u64);
        for (k, v) in self.user_properties {
            n += str_len(k) + str_len(v);
        }
        n + varint_len(self.payload.len() as u64) + self.payload.len()
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        put_varint(out, self.timestamp_ms);
        let mut flags = self.qos & 0b11;
        if self.retain {
            flags |= FLAG_RETAIN;
        }
        if self.content_type.is_some() {
            flags |= FLAG_CONTENT_TYPE;
        }
        out.push(flags);
        put_bytes(out, self.topic.as_bytes());
        put_bytes(out, self.client_id.as_bytes());
        if let Some(ct) = self.content_type {
            put_bytes(out, ct.as_bytes());
        }
        put_varint(out, self.user_properties.len() as u64);
        for (k, v) in self.user_properties {
            put_bytes(out, k.as_bytes());
            put_bytes(out, v.as_bytes());
        }
        put_bytes(out, self.payload);
    }
}

impl Record {
    /// The record's parts, borrowed.
    pub fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            timestamp_ms: self.timestamp_ms,
            topic: &self.topic,
            qos: self.qos,
            retain: self.retain,
            client_id: &self.client_id,
            user_properties: &self.user_properties,
            content_type: self.content_type.as_deref(),
            payload: &self.payload,
        }
    }

    /// The record's logical size: its uncompressed encoded length.
    pub fn logical_size(&self) -> usize {
        self.as_ref().logical_size()
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        self.as_ref().encode(out)
    }

    /// Decodes one record from `buf` starting at `*pos`, advancing `*pos`.
    /// `body` is the shared buffer so payloads are zero-copy slices of it.
    pub(crate) fn decode(body: &Bytes, pos: &mut usize) -> Result<Record, String> {
        let buf = &body[..];
        let timestamp_ms = get_varint(buf, pos)?;
        let flags = *buf.get(*pos).ok_or("truncated flags")?;
        *pos += 1;
        let topic = get_string(buf, pos, "topic")?;
        let client_id = get_string(buf, pos, "client id")?;
        let content_type = if flags & FLAG_CONTENT_TYPE != 0 {
            Some(get_string(buf, pos, "content type")?)
        } else {
            None
        };
        let n = get_varint(buf, pos)?;
        if n > (buf.len() - *pos) as u64 {
            return Err(format!("property count {n} exceeds the frame"));
        }
        let mut user_properties = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let k = get_string(buf, pos, "property key")?;
            let v = get_string(buf, pos, "property value")?;
            user_properties.push((k, v));
        }
        let (start, end) = get_slice(buf, pos, "payload")?;
        Ok(Record {
            timestamp_ms,
            topic,
            qos: flags & 0b11,
            retain: flags & FLAG_RETAIN != 0,
            client_id,
            user_properties,
            content_type,
            payload: body.slice(start..end),
        })
    }
}

fn str_len(s: &str) -> usize {
    varint_len(s.len() as u64) + s.len()
}

pub(crate) fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn get_varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        v |= ((b & 0x7f) as u64) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes".into())
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn get_slice(buf: &[u8], pos: &mut usize, what: &str) -> Result<(usize, usize), String> {
    let len = get_varint(buf, pos)?;
    let start = *pos;
    if len > (buf.len() - start) as u64 {
        return Err(format!("{what} length {len} exceeds the frame"));
    }
    *pos = start + len as usize;
    Ok((start, *pos))
}

fn get_string(buf: &[u8], pos: &mut usize, what: &str) -> Result<String, String> {
    let (s, e) = get_slice(buf, pos, what)?;
    String::from_utf8(buf[s..e].to_vec()).map_err(|_| format!("{what} is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let r = Record {
            timestamp_ms: 1_700_000_000_123,
            topic: "site/line1/temp".into(),
            qos: 1,
            retain: true,
            client_id: "plc-7".into(),
            user_properties: vec![("unit".into(), "C".into()), ("".into(), "x".into())],
            content_type: Some("application/json".into()),
            payload: Bytes::from_static(b"{\"t\":21.5}"),
        };
        let mut buf = Vec::new();
        r.encode(&mut buf);
        assert_eq!(buf.len(), r.logical_size());
        let body = Bytes::from(buf);
        let mut pos = 0;
        assert_eq!(Record::decode(&body, &mut pos).unwrap(), r);
        assert_eq!(pos, body.len());
    }
}
