//! Framing on top of rumqttd's packet codec.
//!
//! rumqttd's `Protocol::read_mut` does the parsing, but two things it does not give us are
//! needed before or besides it: the protocol level of a CONNECT (to pick the v4 or v5 codec),
//! and a PUBLISH's QoS and packet id (its `Publish` keeps those fields crate-private). Both
//! are read here from the raw frame, which `v4::check` has already bounded.

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{v4, v5, DisconnectReasonCode, Error as CodecError, Packet, Protocol};

/// Which MQTT version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    V4,
    V5,
}

/// What the next frame in the buffer is.
pub(crate) enum Frame {
    /// More bytes are needed.
    Incomplete,
    /// A complete frame of this type (first byte) and total length is at the buffer's start.
    Ready {
        byte1: u8,
        header_len: usize,
        len: usize,
    },
}

#[derive(Debug)]
pub(crate) enum FrameError {
    TooLarge(usize),
    Malformed(CodecError),
}

/// Looks at the buffer's first frame without consuming it. Refuses frames over
/// `max_packet_size` (total bytes) as soon as the length prefix is known, before buffering them.
pub(crate) fn peek_frame(buf: &BytesMut, max_packet_size: usize) -> Result<Frame, FrameError> {
    match v4::check(buf.iter(), max_packet_size) {
        Ok(fh) if fh.frame_length() > max_packet_size => {
            Err(FrameError::TooLarge(fh.frame_length()))
        }
        Ok(fh) => Ok(Frame::Ready {
            byte1: fh.byte1,
            header_len: fh.fixed_header_len,
            len: fh.frame_length(),
        }),
        Err(CodecError::InsufficientBytes(_)) => Ok(Frame::Incomplete),
        Err(CodecError::PayloadSizeLimitExceeded(n)) => Err(FrameError::TooLarge(n)),
        Err(e) => Err(FrameError::Malformed(e)),
    }
}

/// The protocol level of a complete CONNECT frame: `Some(4)` for 3.1.1, `Some(5)` for 5.0,
/// other numbers for versions ferry does not speak, `None` if it is not an MQTT CONNECT.
pub(crate) fn connect_level(frame: &[u8], header_len: usize) -> Option<u8> {
    let vh = frame.get(header_len..)?;
    let name_len = u16::from_be_bytes([*vh.first()?, *vh.get(1)?]) as usize;
    let name = vh.get(2..2 + name_len)?;
    let level = *vh.get(2 + name_len)?;
    match name {
        b"MQTT" | b"MQIsdp" => Some(level),
        _ => None,
    }
}

/// QoS and packet id of a complete PUBLISH frame (packet id 0 for QoS 0).
pub(crate) fn publish_meta(frame: &[u8], byte1: u8, header_len: usize) -> (u8, u16) {
    let qos = (byte1 >> 1) & 0b11;
    if qos == 0 {
        return (0, 0);
    }
    let vh = &frame[header_len.min(frame.len())..];
    let topic_len = match vh.get(..2) {
        Some(b) => u16::from_be_bytes([b[0], b[1]]) as usize,
        None => return (qos, 0),
    };
    let pkid = match vh.get(2 + topic_len..4 + topic_len) {
        Some(b) => u16::from_be_bytes([b[0], b[1]]),
        None => 0,
    };
    (qos, pkid)
}

/// A PUBLISH as the session needs it (QoS and packet id from the fixed and variable header,
/// topic and payload as slices of the read buffer).
pub(crate) struct InPublish {
    pub(crate) qos: u8,
    pub(crate) pkid: u16,
    pub(crate) retain: bool,
    pub(crate) topic: Bytes,
    pub(crate) payload: Bytes,
}

/// Parses one whole MQTT 3.1.1 PUBLISH `frame` (fixed header included) with the same checks
/// as rumqttd's v4 codec: QoS 3, a topic running past the frame, a missing or zero packet id
/// are malformed.
pub(crate) fn read_v4_publish(
    frame: Bytes,
    byte1: u8,
    header_len: usize,
) -> Result<InPublish, &'static str> {
    let qos = (byte1 >> 1) & 0b11;
    if qos == 3 {
        return Err("PUBLISH with QoS 3");
    }
    let vh = frame.get(header_len..).ok_or("truncated PUBLISH")?;
    let topic_len = match vh {
        [a, b, ..] => u16::from_be_bytes([*a, *b]) as usize,
        _ => return Err("PUBLISH without a topic length"),
    };
    let topic_start = header_len + 2;
    let mut pos = topic_start + topic_len;
    if pos > frame.len() {
        return Err("PUBLISH topic runs past the packet");
    }
    let pkid = if qos > 0 {
        let id = match frame.get(pos..pos + 2) {
            Some([a, b]) => u16::from_be_bytes([*a, *b]),
            _ => return Err("PUBLISH without a packet id"),
        };
        if id == 0 {
            return Err("PUBLISH with packet id 0");
        }
        pos += 2;
        id
    } else {
        0
    };
    Ok(InPublish {
        qos,
        pkid,
        retain: byte1 & 1 != 0,
        topic: frame.slice(topic_start..topic_start + topic_len),
        payload: frame.slice(pos..),
    })
}

pub(crate) struct Codec {
    pub(crate) version: Version,
    v4: v4::V4,
    v5: v5::V5,
}

impl Codec {
    pub(crate) fn new(version: Version) -> Self {
        Codec {
            version,
            v4: v4::V4,
            v5: v5::V5,
        }
    }

    /// Parses the first (complete, size-checked) frame of `buf`, consuming it.
    pub(crate) fn read(&mut self, buf: &mut BytesMut, max: usize) -> Result<Packet, CodecError> {
        // Packets only a server sends (CONNACK, SUBACK, UNSUBACK, PINGRESP) are refused
        // before decoding: rumqttd 0.20's v5 decoder reaches `unreachable!()` on some of them
        // (found by fuzzing, fuzz/regressions/mqtt_conn/).
        if let Some(&first) = buf.first() {
            let kind = first >> 4;
            if matches!(kind, 2 | 9 | 11 | 13) {
                return Err(CodecError::InvalidPacketType(kind));
            }
        }
        // Belt and braces: a panic inside the third-party decoder closes this connection
        // as malformed instead of unwinding through the connection task.
        let (v4, v5, version) = (&mut self.v4, &mut self.v5, self.version);
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match version {
            Version::V4 => v4.read_mut(buf, max),
            Version::V5 => v5.read_mut(buf, max),
        }))
        .unwrap_or(Err(CodecError::InvalidPacketType(0)))
    }

    /// Appends `packet` to `out`. v3.1.1 packets must not carry properties (rumqttd's v4
    /// writer panics on them), so they are stripped here once for all callers.
    pub(crate) fn write(&self, packet: Packet, out: &mut BytesMut) -> Result<usize, CodecError> {
        match self.version {
            Version::V5 => match packet {
                // rumqttd 0.20's v5 DISCONNECT writer miscounts the remaining length (without
                // properties it writes 2 bytes after announcing 1; with empty properties it
                // drops the reason code), so ferry encodes this one packet itself.
                Packet::Disconnect(d, _) => {
                    out.extend_from_slice(&[0xE0, 2, disconnect_code(d.reason_code), 0]);
                    Ok(4)
                }
                p => self.v5.write(p, out),
            },
            Version::V4 => {
                let packet = match packet {
                    Packet::PubAck(p, _) => Packet::PubAck(p, None),
                    Packet::PubRec(p, _) => Packet::PubRec(p, None),
                    Packet::PubComp(p, _) => Packet::PubComp(p, None),
                    Packet::SubAck(p, _) => Packet::SubAck(p, None),
                    Packet::UnsubAck(p, _) => Packet::UnsubAck(p, None),
                    Packet::Publish(p, _) => Packet::Publish(p, None),
                    Packet::ConnAck(p, _) => Packet::ConnAck(p, None),
                    // v3.1.1 servers never send DISCONNECT; they close the socket.
                    Packet::Disconnect(..) => return Ok(0),
                    p => p,
                };
                self.v4.write(packet, out)
            }
        }
    }
}

/// MQTT 5 reason codes for the DISCONNECTs ferry sends (spec 3.14.2.1).
fn disconnect_code(r: DisconnectReasonCode) -> u8 {
    use DisconnectReasonCode::*;
    match r {
        NormalDisconnection => 0x00,
        DisconnectWithWillMessage => 0x04,
        UnspecifiedError => 0x80,
        MalformedPacket => 0x81,
        ProtocolError => 0x82,
        ImplementationSpecificError => 0x83,
        NotAuthorized => 0x87,
        ServerBusy => 0x89,
        ServerShuttingDown => 0x8B,
        KeepAliveTimeout => 0x8D,
        SessionTakenOver => 0x8E,
        TopicFilterInvalid => 0x8F,
        TopicNameInvalid => 0x90,
        ReceiveMaximumExceeded => 0x93,
        TopicAliasInvalid => 0x94,
        PacketTooLarge => 0x95,
        MessageRateTooHigh => 0x96,
        QuotaExceeded => 0x97,
        AdministrativeAction => 0x98,
        PayloadFormatInvalid => 0x99,
        RetainNotSupported => 0x9A,
        QoSNotSupported => 0x9B,
        UseAnotherServer => 0x9C,
        ServerMoved => 0x9D,
        SharedSubscriptionNotSupported => 0x9E,
        ConnectionRateExceeded => 0x9F,
        MaximumConnectTime => 0xA0,
        SubscriptionIdentifiersNotSupported => 0xA1,
        WildcardSubscriptionsNotSupported => 0xA2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v5_disconnect_is_well_formed() {
        use rumqttd::protocol::Disconnect;
        let mut out = BytesMut::new();
        Codec::new(Version::V5)
            .write(
                Packet::Disconnect(
                    Disconnect {
                        reason_code: DisconnectReasonCode::SessionTakenOver,
                    },
                    None,
                ),
                &mut out,
            )
            .unwrap();
        assert_eq!(&out[..], &[0xE0, 2, 0x8E, 0]);
    }

    #[test]
    fn publish_meta_reads_qos_and_pkid() {
        // PUBLISH QoS1, topic "a/b", pkid 0x0102, payload "x"
        let frame = [0x32, 8, 0, 3, b'a', b'/', b'b', 1, 2, b'x'];
        let buf = BytesMut::from(&frame[..]);
        let Frame::Ready {
            byte1,
            header_len,
            len,
        } = peek_frame(&buf, 100).unwrap()
        else {
            panic!("incomplete")
        };
        assert_eq!(len, frame.len());
        assert_eq!(publish_meta(&frame, byte1, header_len), (1, 0x0102));
        assert!(matches!(peek_frame(&buf, 5), Err(FrameError::TooLarge(_))));
        assert!(matches!(
            peek_frame(&BytesMut::from(&frame[..4]), 100),
            Ok(Frame::Incomplete)
        ));
    }
}
