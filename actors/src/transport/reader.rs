//! The read side of a connection. A frame's length is checked before anything is allocated
//! for it, so a peer cannot make the endpoint reserve more than `frame_bytes_max`; frames are
//! then decoded and delivered to their inbound lane, and bad input ends the connection.

use super::stats::bump;
use super::{ConnectionId, Context, Inbound};
use bulwark_framework::ids::PeerId;
use bulwark_framework::wire::{self, WireError, FRAME_HEADER_BYTES};
use std::io;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};
use tokio::net::tcp::OwnedReadHalf;

/// Read buffer per connection: many small frames are read with one system call.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// How a reader stopped.
#[derive(Debug)]
enum ReadEnd {
    /// The peer closed the connection between frames.
    Closed,
    /// A read failed (connection reset, ...): a network failure, not bad input.
    Failed(io::Error),
    /// The bytes were not a frame of at most `frame_bytes_max` holding a valid envelope.
    BadInput(WireError),
    /// Nobody consumes `inbound` any more.
    InboundClosed,
}

/// Reads frames from one connection and delivers them to their inbound lanes until the connection
/// ends; on bad input, counts and logs the refusal (the caller then closes the connection).
pub(super) async fn read_connection(
    read_half: OwnedReadHalf,
    id: ConnectionId,
    link: Option<PeerId>,
    peer: SocketAddr,
    context: &Context,
) {
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, read_half);
    match read_frames(&mut reader, id, link, context).await {
        ReadEnd::Closed => tracing::debug!(%peer, connection = %id, "connection closed by peer"),
        ReadEnd::Failed(error) => {
            tracing::debug!(%peer, connection = %id, %error, "connection read failed")
        }
        ReadEnd::InboundClosed => {
            tracing::debug!(%peer, connection = %id, "inbound channel closed; dropping connection")
        }
        ReadEnd::BadInput(error) => {
            let refusal = context.refuse(error);
            tracing::warn!(%peer, connection = %id, reason = %refusal, "closing connection after bad input");
        }
    }
}

/// The read loop proper: header, length check, body, decode, deliver.
async fn read_frames<R: AsyncRead + Unpin>(
    reader: &mut R,
    id: ConnectionId,
    link: Option<PeerId>,
    context: &Context,
) -> ReadEnd {
    let mut body: Vec<u8> = Vec::new();
    loop {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        match read_full(reader, &mut header).await {
            Ok(read) if read == FRAME_HEADER_BYTES => {}
            Ok(0) => return ReadEnd::Closed,
            Ok(read) => return ReadEnd::BadInput(truncated(read, FRAME_HEADER_BYTES)),
            Err(error) => return ReadEnd::Failed(error),
        }
        // The length is checked before anything is allocated for the body: a peer cannot
        // make us reserve more than `frame_bytes_max`.
        let length = match wire::frame_length(header, context.frame_bytes_max) {
            Ok(length) => length,
            Err(error) => return ReadEnd::BadInput(error),
        };
        body.clear();
        body.resize(length, 0);
        match read_full(reader, &mut body).await {
            Ok(read) if read == length => {}
            Ok(read) => return ReadEnd::BadInput(truncated(FRAME_HEADER_BYTES + read, FRAME_HEADER_BYTES + length)),
            Err(error) => return ReadEnd::Failed(error),
        }
        let (scope, message) = match wire::decode(&body, context.frame_bytes_max) {
            Ok(envelope) => (envelope.scope, envelope.message),
            Err(error) => return ReadEnd::BadInput(error),
        };
        bump(&context.counters.frames_in, 1);
        bump(&context.counters.bytes_in, (FRAME_HEADER_BYTES + length) as u64);
        // Awaiting here is the backpressure: no more is read from this connection until
        // the consumer has room.
        let delivered = context.inbound.deliver(Inbound { connection: id, link, scope, message }).await;
        if delivered.is_err() {
            return ReadEnd::InboundClosed;
        }
        // Do not keep a large frame's buffer for the life of the connection.
        if body.capacity() > READ_BUFFER_BYTES {
            body = Vec::new();
        }
    }
}

/// A frame cut short by the end of the stream. A crashed peer can do this too, but the
/// bytes still are not a frame, so it is counted with the malformed ones.
fn truncated(read: usize, expected: usize) -> WireError {
    WireError::Malformed(format!("stream ended after {read} of {expected} bytes of a frame"))
}

/// Reads until `buffer` is full or the stream ends; returns the number of bytes read
/// (less than `buffer.len()` only at end of stream), so a clean close between frames
/// (0 bytes) can be told from a truncated frame.
async fn read_full<R: AsyncRead + Unpin>(reader: &mut R, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]).await {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}
