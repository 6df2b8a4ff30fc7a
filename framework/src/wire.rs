//! The one wire format: a versioned envelope encoded with rmp-serde (compact, fields by
//! position), carried in length-prefixed frames. The envelope names the [`Scope`] (cluster
//! and epoch) its message is signed in, so that a receiver can refuse a message of another
//! cluster or epoch for what it is before checking any signature; the signatures bind the
//! scope too, so an envelope that names a false one gets its message refused as forged.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of envelope. The
//! length is checked against the configured maximum before the body is read, so a peer
//! cannot make a replica allocate more than `frame_bytes_max`.

use crate::membership::Scope;
use crate::messages::Message;
use serde::{Deserialize, Serialize};

/// Version of the envelope; a replica refuses frames of another version.
pub const WIRE_VERSION: u16 = 2;

/// Bytes of the length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;

#[derive(Serialize)]
struct EnvelopeRef<'a> {
    version: u16,
    scope: Scope,
    message: &'a Message,
}

#[derive(Deserialize)]
struct RawEnvelope {
    version: u16,
    scope: Scope,
    message: Message,
}

/// A message as decoded from the wire, with the scope its sender says it is signed in.
/// Neither is trusted yet: [`crate::verify::verify_envelope`] checks both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub scope: Scope,
    pub message: Message,
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

/// Encodes a message signed in `scope` into an envelope (no length prefix).
pub fn encode(scope: Scope, message: &Message) -> Result<Vec<u8>, WireError> {
    rmp_serde::to_vec(&EnvelopeRef { version: WIRE_VERSION, scope, message })
        .map_err(|e| WireError::Encode(e.to_string()))
}

/// Decodes an envelope (no length prefix) of at most `limit` bytes.
pub fn decode(bytes: &[u8], limit: usize) -> Result<Envelope, WireError> {
    if bytes.len() > limit {
        return Err(WireError::Oversized { length: bytes.len(), limit });
    }
    if bytes.is_empty() {
        return Err(WireError::Empty);
    }
    // The version first, whatever follows it: an envelope of another version may have
    // another shape, and deserves its own refusal rather than "malformed".
    let version = peek_version(bytes)?;
    if version != WIRE_VERSION {
        return Err(WireError::UnsupportedVersion { found: version });
    }
    let mut cursor = std::io::Cursor::new(bytes);
    let envelope: RawEnvelope = serde::Deserialize::deserialize(&mut rmp_serde::Deserializer::new(&mut cursor))
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    let trailing = bytes.len() - cursor.position() as usize;
    if trailing > 0 {
        return Err(WireError::Malformed(format!("{trailing} bytes after the envelope")));
    }
    debug_assert_eq!(envelope.version, WIRE_VERSION);
    Ok(Envelope { scope: envelope.scope, message: envelope.message })
}

/// The version an envelope starts with: the first element of its array, read from the
/// first few bytes without decoding the rest.
fn peek_version(bytes: &[u8]) -> Result<u16, WireError> {
    let mut reader = bytes;
    let malformed = |what: String| WireError::Malformed(format!("not an envelope: {what}"));
    let fields = rmp::decode::read_array_len(&mut reader).map_err(|e| malformed(e.to_string()))?;
    if fields == 0 {
        return Err(malformed("an empty array".into()));
    }
    rmp::decode::read_int::<u16, _>(&mut reader).map_err(|e| malformed(format!("version: {e}")))
}

/// Encodes a message signed in `scope` as a frame: length prefix then envelope.
pub fn encode_frame(scope: Scope, message: &Message) -> Result<Vec<u8>, WireError> {
    let body = encode(scope, message)?;
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
/// `Ok(Some((envelope, consumed)))` when it is.
pub fn decode_frame(buffer: &[u8], limit: usize) -> Result<Option<(Envelope, usize)>, WireError> {
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
