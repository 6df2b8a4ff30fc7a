//! The one wire format: a versioned envelope encoded with rmp-serde (compact, fields by
//! position), carried in length-prefixed frames.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of envelope. The
//! length is checked against the configured maximum before the body is read, so a peer
//! cannot make a replica allocate more than `frame_bytes_max`.

use crate::messages::Message;
use serde::{Deserialize, Serialize};

/// Version of the envelope; a replica refuses frames of another version.
pub const WIRE_VERSION: u16 = 1;

/// Bytes of the length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;

#[derive(Serialize)]
struct EnvelopeRef<'a> {
    version: u16,
    message: &'a Message,
}

#[derive(Deserialize)]
struct Envelope {
    version: u16,
    message: Message,
}

/// Why bytes from the network were not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame of {length} bytes exceeds the limit of {limit} bytes")]
    Oversized { length: usize, limit: usize },
    #[error("empty frame")]
    Empty,
    #[error("frame is not a valid envelope: {0}")]
    Malformed(String),
    #[error("wire version {found} is not supported (this build speaks {WIRE_VERSION})")]
    UnsupportedVersion { found: u16 },
    #[error("message could not be encoded: {0}")]
    Encode(String),
}

/// Encodes a message into an envelope (no length prefix).
pub fn encode(message: &Message) -> Result<Vec<u8>, WireError> {
    rmp_serde::to_vec(&EnvelopeRef { version: WIRE_VERSION, message }).map_err(|e| WireError::Encode(e.to_string()))
}

/// Decodes an envelope (no length prefix) of at most `limit` bytes.
pub fn decode(bytes: &[u8], limit: usize) -> Result<Message, WireError> {
    if bytes.len() > limit {
        return Err(WireError::Oversized { length: bytes.len(), limit });
    }
    if bytes.is_empty() {
        return Err(WireError::Empty);
    }
    let mut cursor = std::io::Cursor::new(bytes);
    let envelope: Envelope = serde::Deserialize::deserialize(&mut rmp_serde::Deserializer::new(&mut cursor))
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    let trailing = bytes.len() - cursor.position() as usize;
    if trailing > 0 {
        return Err(WireError::Malformed(format!("{trailing} bytes after the envelope")));
    }
    if envelope.version != WIRE_VERSION {
        return Err(WireError::UnsupportedVersion { found: envelope.version });
    }
    Ok(envelope.message)
}

/// Encodes a message as a frame: length prefix then envelope.
pub fn encode_frame(message: &Message) -> Result<Vec<u8>, WireError> {
    let body = encode(message)?;
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Reads the body length from a frame header and checks it against `limit` before any
/// body byte is read or allocated.
pub fn frame_length(header: [u8; FRAME_HEADER_BYTES], limit: usize) -> Result<usize, WireError> {
    let length = u32::from_be_bytes(header) as usize;
    if length > limit {
        return Err(WireError::Oversized { length, limit });
    }
    if length == 0 {
        return Err(WireError::Empty);
    }
    Ok(length)
}

/// Splits one frame off the front of `buffer`: `Ok(None)` if it is not complete yet,
/// `Ok(Some((message, consumed)))` when it is.
pub fn decode_frame(buffer: &[u8], limit: usize) -> Result<Option<(Message, usize)>, WireError> {
    if buffer.len() < FRAME_HEADER_BYTES {
        return Ok(None);
    }
    let mut header = [0u8; FRAME_HEADER_BYTES];
    header.copy_from_slice(&buffer[..FRAME_HEADER_BYTES]);
    let length = frame_length(header, limit)?;
    let end = FRAME_HEADER_BYTES + length;
    if buffer.len() < end {
        return Ok(None);
    }
    let message = decode(&buffer[FRAME_HEADER_BYTES..end], limit)?;
    Ok(Some((message, end)))
}
