//! The transport's counters: the live atomics every task of an endpoint bumps, and the
//! snapshot of them ([`TransportStats`]) that logs, benchmarks and the metrics endpoint read.

use super::lock;
use bulwark_framework::verify::RefusalCounts;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A snapshot of the transport's counters, for logs and benchmarks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Frames read, decoded and delivered.
    pub frames_in: u64,
    /// Frames written to a socket.
    pub frames_out: u64,
    /// Bytes (headers included) of the frames counted in `frames_in`.
    pub bytes_in: u64,
    /// Bytes (headers included) of the frames counted in `frames_out`.
    pub bytes_out: u64,
    /// Frames dropped because their link's or connection's send queue was full.
    pub dropped_queue_full: u64,
    /// Frames dropped because there was nowhere to send them: a replica not in `peers`, a
    /// connection that is unknown or closed, or a transport that was shut down.
    pub dropped_unroutable: u64,
    /// Frames dropped on sending because they exceed `frame_bytes_max`.
    pub dropped_oversized: u64,
    /// Write system calls issued (each carries one or more frames; `frames_out /
    /// write_batches` is the coalescing factor).
    pub write_batches: u64,
    /// Connections accepted by the listener.
    pub connections_accepted: u64,
    /// Connections closed at once because `accepted_connections_max` were open.
    pub connections_refused_limit: u64,
    /// Connections closed because a frame on them was oversized, malformed or truncated.
    pub connections_closed_bad_input: u64,
    /// Connections closed by
    /// [`TransportHandle::close_connection`](super::TransportHandle::close_connection),
    /// because a message on them was well formed but refused (bad signature, unknown
    /// sender, ...).
    pub connections_closed_refused: u64,
    /// Connect attempts after the first, over all links (failed retries included).
    pub reconnects: u64,
    /// Refused frames by kind (`Oversized`, `Malformed`).
    pub refused: RefusalCounts,
}

/// The live counters behind [`TransportStats`], shared by every task of an endpoint.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) frames_in: AtomicU64,
    pub(super) frames_out: AtomicU64,
    pub(super) bytes_in: AtomicU64,
    pub(super) bytes_out: AtomicU64,
    pub(super) dropped_queue_full: AtomicU64,
    pub(super) dropped_unroutable: AtomicU64,
    pub(super) dropped_oversized: AtomicU64,
    pub(super) write_batches: AtomicU64,
    pub(super) connections_accepted: AtomicU64,
    pub(super) connections_refused_limit: AtomicU64,
    pub(super) connections_closed_bad_input: AtomicU64,
    pub(super) connections_closed_refused: AtomicU64,
    pub(super) reconnects: AtomicU64,
    pub(super) refused: Mutex<RefusalCounts>,
}

pub(super) fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl Counters {
    pub(super) fn snapshot(&self) -> TransportStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        TransportStats {
            frames_in: get(&self.frames_in),
            frames_out: get(&self.frames_out),
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
            dropped_queue_full: get(&self.dropped_queue_full),
            dropped_unroutable: get(&self.dropped_unroutable),
            dropped_oversized: get(&self.dropped_oversized),
            write_batches: get(&self.write_batches),
            connections_accepted: get(&self.connections_accepted),
            connections_refused_limit: get(&self.connections_refused_limit),
            connections_closed_bad_input: get(&self.connections_closed_bad_input),
            connections_closed_refused: get(&self.connections_closed_refused),
            reconnects: get(&self.reconnects),
            refused: lock(&self.refused).clone(),
        }
    }
}
