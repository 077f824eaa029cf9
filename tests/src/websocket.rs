//! The few pieces of RFC 6455 the lab needs, for both ends: the handshake's accept key, and
//! frames encoded and decoded from byte buffers (no I/O here: the target server reads with
//! tokio, the tests' client with blocking sockets). Enough for an echo: no fragmentation, no
//! extensions.

use base64::Engine as _;

/// The GUID RFC 6455 appends to the client's key.
const HANDSHAKE_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Frame opcodes the lab uses.
pub mod opcode {
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// The largest payload `decode` accepts: the lab's frames are small, and a bound keeps a
/// garbled length from making a peer wait for gigabytes.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(client_key: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{client_key}{HANDSHAKE_GUID}").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// A whole (unfragmented) frame, payload unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// What is wrong with the bytes a peer sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The peer sent a fragment (FIN clear or a continuation), which this codec does not join.
    #[error("fragmented frames are not supported")]
    Fragmented,
    /// The peer announced more than `MAX_PAYLOAD` bytes.
    #[error("a frame of {0} bytes is over the {MAX_PAYLOAD}-byte bound")]
    TooLarge(u64),
}

/// One frame with FIN set; masked with `mask` (clients must mask, servers must not).
pub fn encode(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(mask_bit | n as u8),
        n @ 126..=0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// The first frame in `buf` and how many bytes it took, or `None` if `buf` holds only part of
/// one (read more and call again).
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    let [first, second, ..] = *buf else {
        return Ok(None);
    };
    let opcode = first & 0x0f;
    if first & 0x80 == 0 || opcode == 0 {
        return Err(FrameError::Fragmented);
    }
    let masked = second & 0x80 != 0;
    let (len, mut at) = match second & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => (u64::from_be_bytes(b.try_into().unwrap_or_default()), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if len > MAX_PAYLOAD as u64 {
        return Err(FrameError::TooLarge(len));
    }
    let key = if masked {
        let Some(k) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        at += 4;
        Some([k[0], k[1], k[2], k[3]])
    } else {
        None
    };
    let end = at + len as usize;
    let Some(payload) = buf.get(at..end) else {
        return Ok(None);
    };
    let payload = match key {
        Some(k) => payload
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ k[i % 4])
            .collect(),
        None => payload.to_vec(),
    };
    Ok(Some((Frame { opcode, payload }, end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_the_rfc_example() {
        // RFC 6455, section 1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn masked_frames_of_every_length_form_round_trip() {
        for len in [0, 5, 125, 126, 65_535, 65_536] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let bytes = encode(opcode::BINARY, &payload, Some([1, 2, 3, 4]));
            let (frame, used) = decode(&bytes).unwrap().unwrap();
            assert_eq!(used, bytes.len(), "{len}");
            assert_eq!(frame.payload, payload, "{len}");
            // A frame cut short is not a frame yet.
            assert_eq!(decode(&bytes[..bytes.len() - 1]).unwrap(), None, "{len}");
        }
    }

    #[test]
    fn fragments_and_oversized_frames_are_refused() {
        assert_eq!(decode(&[0x01, 0x00]), Err(FrameError::Fragmented));
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&(u64::MAX).to_be_bytes());
        assert_eq!(decode(&huge), Err(FrameError::TooLarge(u64::MAX)));
    }
}
