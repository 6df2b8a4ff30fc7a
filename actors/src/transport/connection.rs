//! One connection, accepted or dialed, from registration to close: its id lets answers reach
//! it, a reader task delivers what it reads, and its queue is written in coalesced batches so
//! that a burst of small frames costs one system call.

use super::reader::read_connection;
use super::stats::bump;
use super::{lock, shut_down, ConnectionId, Context, Route};
use bulwark_framework::ids::PeerId;
use bytes::Bytes;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};

/// A writer stops adding queued frames to a batch once it holds this many bytes, so one
/// write never needs a buffer much larger than this (or than one frame).
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// How a connection ended, as seen by the task that owns its writer.
#[derive(Debug)]
pub(super) enum ConnectionEnd {
    /// The endpoint is shutting down.
    Shutdown,
    /// Every sender of the write queue is gone (the endpoint is shutting down).
    QueueClosed,
    /// The reader stopped: end of stream, a read error, bad input (already counted and
    /// logged by the reader) or nobody consuming `inbound` any more.
    ReaderStopped,
    /// A write failed.
    WriteFailed(io::Error),
    /// [`TransportHandle::close_connection`](super::TransportHandle::close_connection) asked
    /// for it (already counted).
    Closed,
}

/// Runs one connection, accepted or dialed, until it ends: registers it under a fresh
/// [`ConnectionId`] (so answers can be addressed to it), spawns its reader, and writes
/// `queue` to it. Whichever side stops first ends the connection, and the socket is closed
/// once both halves are dropped.
pub(super) async fn run_connection(
    stream: TcpStream,
    peer: SocketAddr,
    link: Option<PeerId>,
    queue: &mut mpsc::Receiver<Bytes>,
    sender: mpsc::Sender<Bytes>,
    context: &Context,
) -> ConnectionEnd {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::warn!(%peer, %error, "could not set TCP_NODELAY");
    }
    let id = ConnectionId(context.next_connection.fetch_add(1, Ordering::Relaxed));
    let close = Arc::new(Notify::new());
    lock(&context.routes).insert(id, Route { queue: sender, close: close.clone() });
    let (read_half, mut write_half) = stream.into_split();
    let (stopped, reader_stopped) = oneshot::channel::<()>();
    let reader = tokio::spawn({
        let context = context.clone();
        async move {
            read_connection(read_half, id, link, peer, &context).await;
            drop(stopped);
        }
    });
    let mut shutdown = context.shutdown.clone();
    let end = tokio::select! {
        biased;
        _ = shut_down(&mut shutdown) => ConnectionEnd::Shutdown,
        _ = close.notified() => ConnectionEnd::Closed,
        _ = reader_stopped => ConnectionEnd::ReaderStopped,
        end = write_frames(queue, &mut write_half, context) => end,
    };
    lock(&context.routes).remove(&id);
    // Wait for the aborted reader to drop its half, so the socket is closed (not just
    // shut down for writing) once this returns.
    reader.abort();
    let _ = reader.await;
    drop(write_half);
    end
}

/// Writes queued frames until the queue closes or a write fails. Each round takes every
/// frame already queued (up to the queue bound and [`WRITE_BATCH_BYTES`]) and writes them
/// with one `write_all`, so bursts cost one system call, not one per frame.
async fn write_frames(
    queue: &mut mpsc::Receiver<Bytes>,
    writer: &mut OwnedWriteHalf,
    context: &Context,
) -> ConnectionEnd {
    let mut batch: Vec<u8> = Vec::new();
    loop {
        let Some(first) = queue.recv().await else {
            return ConnectionEnd::QueueClosed;
        };
        let mut frames: u64 = 1;
        let written = match queue.try_recv() {
            // One frame: write it from its own buffer, no copy.
            Err(_) => {
                let bytes = first.len();
                writer.write_all(&first).await.map(|()| bytes)
            }
            Ok(second) => {
                batch.clear();
                batch.extend_from_slice(&first);
                batch.extend_from_slice(&second);
                frames += 1;
                while (frames as usize) < context.send_queue_frames_max && batch.len() < WRITE_BATCH_BYTES {
                    match queue.try_recv() {
                        Ok(frame) => {
                            batch.extend_from_slice(&frame);
                            frames += 1;
                        }
                        Err(_) => break,
                    }
                }
                let bytes = batch.len();
                let written = writer.write_all(&batch).await.map(|()| bytes);
                // A batch that grew around one huge frame should not pin that memory.
                if batch.capacity() > 2 * WRITE_BATCH_BYTES {
                    batch = Vec::new();
                }
                written
            }
        };
        match written {
            Ok(bytes) => {
                bump(&context.counters.frames_out, frames);
                bump(&context.counters.bytes_out, bytes as u64);
                bump(&context.counters.write_batches, 1);
            }
            Err(error) => return ConnectionEnd::WriteFailed(error),
        }
    }
}
