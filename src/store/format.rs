//! Byte layout of segment files: the segment header and frames.
//!
//! ```text
//! segment file  = header frame*
//!
//! // Format: segment header, 40 bytes, little-endian
//! 0   magic          8  b"FERRYSEG"
//! 8   version        u32  (1)
//! 12  reserved       u32  (0)
//! 16  first_seq      u64  sequence of the first record this segment holds (or will hold)
//! 24  logical_start  u64  class's cumulative logical bytes before this segment
//! 32  crc            u32  CRC32C of bytes 0..32
//! 36  reserved       u32  (0)
//!
//! // Format: frame = 48-byte header + body, little-endian
//! 0   magic          u32  0xC0DE_F3A1 (lets recovery resynchronise after damage)
//! 4   body_len       u32  bytes of body that follow the header
//! 8   crc            u32  CRC32C of header bytes 12..48, then the body
//! 12  kind           u8   1 = records
//! 13  codec          u8   0 = raw, 1 = zstd
//! 14  reserved       u16  (0)
//! 16  first_seq      u64  sequence of the first record in the frame
//! 24  count          u32  records in the frame (>= 1)
//! 28  raw_len        u32  body length after decompression
//! 32  logical_start  u64  class's cumulative logical bytes before this frame
//! 40  max_ts         u64  newest receive timestamp (ms) in the frame
//! 48  body           records, encoded as in `record.rs`, possibly zstd-compressed
//! ```
//! Do not reorder or resize fields: bump `VERSION` and keep a reader for the old one instead.

pub const SEGMENT_MAGIC: &[u8; 8] = b"FERRYSEG";
pub const VERSION: u32 = 1;
pub const SEGMENT_HEADER_LEN: usize = 40;
pub const FRAME_MAGIC: u32 = 0xC0DE_F3A1;
pub const FRAME_HEADER_LEN: usize = 48;
/// Frames larger than this are never written, so a bigger length is damage.
pub const MAX_FRAME_BODY: usize = 64 << 20;
pub const KIND_RECORDS: u8 = 1;
pub const CODEC_RAW: u8 = 0;
pub const CODEC_ZSTD: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub first_seq: u64,
    pub logical_start: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.logical_start.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..32]);
        b[32..36].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<SegmentHeader, String> {
        if b.len() < SEGMENT_HEADER_LEN {
            return Err(format!(
                "segment header is {} bytes, expected {SEGMENT_HEADER_LEN}",
                b.len()
            ));
        }
        if &b[0..8] != SEGMENT_MAGIC {
            return Err("segment header magic mismatch".into());
        }
        let crc = u32_at(b, 32);
        if crc != crc32c::crc32c(&b[0..32]) {
            return Err("segment header checksum mismatch".into());
        }
        let version = u32_at(b, 8);
        if version != VERSION {
            return Err(format!(
                "segment version {version} is not supported (this ferry reads {VERSION})"
            ));
        }
        Ok(SegmentHeader {
            first_seq: u64_at(b, 16),
            logical_start: u64_at(b, 24),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub body_len: u32,
    pub crc: u32,
    pub kind: u8,
    pub codec: u8,
    pub first_seq: u64,
    pub count: u32,
    pub raw_len: u32,
    pub logical_start: u64,
    pub max_ts: u64,
}

impl FrameHeader {
    pub fn frame_len(&self) -> u64 {
        FRAME_HEADER_LEN as u64 + self.body_len as u64
    }

    /// Sequence after the frame's last record.
    pub fn end_seq(&self) -> u64 {
        self.first_seq + self.count as u64
    }

    /// Parses and sanity-checks a header (the CRC is checked with the body, see `verify`).
    pub fn decode(b: &[u8]) -> Result<FrameHeader, String> {
        if b.len() < FRAME_HEADER_LEN {
            return Err("truncated frame header".into());
        }
        if u32_at(b, 0) != FRAME_MAGIC {
            return Err("frame magic mismatch".into());
        }
        let h = FrameHeader {
            body_len: u32_at(b, 4),
            crc: u32_at(b, 8),
            kind: b[12],
            codec: b[13],
            first_seq: u64_at(b, 16),
            count: u32_at(b, 24),
            raw_len: u32_at(b, 28),
            logical_start: u64_at(b, 32),
            max_ts: u64_at(b, 40),
        };
        if h.body_len as usize > MAX_FRAME_BODY || h.raw_len as usize > MAX_FRAME_BODY {
            return Err(format!("frame length {} out of bounds", h.body_len));
        }
        if h.kind != KIND_RECORDS || h.codec > CODEC_ZSTD || h.count == 0 {
            return Err("frame kind/codec/count invalid".into());
        }
        // A CRC-valid frame from a crafted or foreign file must not overflow sequence math.
        if h.first_seq.checked_add(h.count as u64).is_none()
            || h.logical_start.checked_add(h.raw_len as u64).is_none()
        {
            return Err("frame sequence or logical offset out of range".into());
        }
        Ok(h)
    }

    /// Checks the CRC over the header tail and `body`.
    pub fn verify(&self, header_bytes: &[u8], body: &[u8]) -> bool {
        let mut crc = crc32c::crc32c(&header_bytes[12..FRAME_HEADER_LEN]);
        crc = crc32c::crc32c_append(crc, body);
        crc == self.crc
    }
}

/// Builds a complete frame (header + body) into `out`.
#[allow(clippy::too_many_arguments)]
pub fn encode_frame(
    out: &mut Vec<u8>,
    codec: u8,
    first_seq: u64,
    count: u32,
    raw_len: u32,
    logical_start: u64,
    max_ts: u64,
    body: &[u8],
) {
    let start = out.len();
    out.resize(start + FRAME_HEADER_LEN, 0);
    out.extend_from_slice(body);
    let h = &mut out[start..start + FRAME_HEADER_LEN];
    h[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&(body.len() as u32).to_le_bytes());
    h[12] = KIND_RECORDS;
    h[13] = codec;
    h[16..24].copy_from_slice(&first_seq.to_le_bytes());
    h[24..28].copy_from_slice(&count.to_le_bytes());
    h[28..32].copy_from_slice(&raw_len.to_le_bytes());
    h[32..40].copy_from_slice(&logical_start.to_le_bytes());
    h[40..48].copy_from_slice(&max_ts.to_le_bytes());
    let mut crc = crc32c::crc32c(&out[start + 12..start + FRAME_HEADER_LEN]);
    crc = crc32c::crc32c_append(crc, body);
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

pub fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

pub fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The file name of the segment whose first sequence is `first_seq`.
pub fn segment_file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

/// Parses a segment file name back to its first sequence.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".seg")?;
    if stem.len() != 20 || !stem.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_roundtrip_and_crc() {
        let mut out = Vec::new();
        encode_frame(&mut out, CODEC_RAW, 7, 2, 5, 100, 99, b"hello");
        let h = FrameHeader::decode(&out).unwrap();
        assert_eq!(h.first_seq, 7);
        assert_eq!(h.end_seq(), 9);
        assert!(h.verify(&out[..FRAME_HEADER_LEN], &out[FRAME_HEADER_LEN..]));
        out[FRAME_HEADER_LEN + 1] ^= 1;
        assert!(!h.verify(&out[..FRAME_HEADER_LEN], &out[FRAME_HEADER_LEN..]));
    }

    #[test]
    fn frame_near_u64_max_is_damage_not_overflow() {
        // Found by fuzzing (fuzz/regressions/store_segments/frame-end-seq-overflow).
        let mut out = Vec::new();
        encode_frame(&mut out, CODEC_RAW, u64::MAX - 1, 5, 5, 0, 0, b"hello");
        assert!(FrameHeader::decode(&out).is_err());
    }

    #[test]
    fn header_roundtrip() {
        let h = SegmentHeader {
            first_seq: 42,
            logical_start: 7,
        };
        let mut b = h.encode();
        assert_eq!(SegmentHeader::decode(&b).unwrap(), h);
        b[17] ^= 1;
        assert!(SegmentHeader::decode(&b).is_err());
        assert_eq!(parse_segment_file_name(&segment_file_name(42)), Some(42));
        assert_eq!(parse_segment_file_name("42.seg"), None);
    }
}
