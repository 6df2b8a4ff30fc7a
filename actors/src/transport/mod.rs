//! The TCP transport: length-prefixed frames between replicas, and between clients and
//! replicas, with a bound on every buffer.
//!
//! # Shape
//!
//! * **Outbound links.** For every peer in [`TransportConfig::peers`] one dialer task keeps
//!   a TCP connection open: it connects, and when the connect fails or the connection
//!   drops it retries with exponential backoff (`reconnect_min_ms` doubling up to
//!   `reconnect_max_ms`, back to the minimum once a connection that worked is lost; a
//!   connection closed by [`TransportHandle::close_connection`] counts as a failed attempt).
//!   Each link owns a
//!   bounded queue of `send_queue_frames_max` frames that outlives its connections: frames
//!   sent while the peer is down wait there, up to the bound.
//! * **Inbound connections.** The listener (if [`TransportConfig::listen`] is set) accepts
//!   connections from anyone: other replicas' dialers and clients. Each gets a reader and a
//!   writer with its own bounded queue, so [`TransportHandle::send_to_connection`] can
//!   answer on it (replies to clients travel back on the connection the client dialed).
//! * **Every connection is read.** Frames arriving on dialed connections are delivered
//!   like those on accepted ones, which is how a client (`listen: None`) receives replies.
//!
//! Every message read is delivered as an [`Inbound`]: decoded, **not verified**. Turning a
//! [`Message`] into a `VerifiedMessage` is the job of
//! [`bulwark_framework::verify::verify_message`], run by whoever consumes the channel.
//!
//! # Why every buffer has a bound
//!
//! A Byzantine peer must not be able to grow a replica's memory, and neither may a slow or
//! dead one:
//!
//! * **Frame size is checked before allocation.** A reader reads the 4-byte header, checks
//!   it with [`wire::frame_length`](bulwark_framework::wire::frame_length) against
//!   `frame_bytes_max`, and only then allocates and reads the body. A header claiming 4 GiB
//!   costs four bytes of reading and a closed connection, not 4 GiB of memory.
//! * **Send queues are bounded and never block.** `send_to_*` never awaits: when a link's
//!   queue is full the frame is dropped and counted (`dropped_queue_full`). A dead peer costs
//!   at most `send_queue_frames_max × frame size` (and usually much less: a broadcast shares
//!   one [`Bytes`] buffer among all links) plus a counter, never unbounded memory, and the
//!   protocol's own retransmission (status messages, client retries) recovers what was
//!   lost. PBFT assumes an unreliable network; dropping is safe, blocking the replica
//!   behind one slow peer is not.
//! * **Delivery applies backpressure.** A reader awaits space in the (bounded) inbound
//!   channel before reading the next frame; when the consumer is slow, TCP flow control
//!   pushes back on the sender instead of frames piling up here. The consumer may split
//!   the channel into lanes ([`InboundLanes`]; a replica has one for clients and one per
//!   peer replica), so that backpressure on one lane leaves connections feeding another
//!   running.
//!
//! Memory per connection is therefore bounded by one frame being read (at most
//! `frame_bytes_max`), a 64 KiB read buffer, the send queue and one write batch.
//!
//! # Bad input
//!
//! Any frame that is oversized, empty, truncated by end-of-stream, or not a valid envelope
//! closes that connection (and only that one): the refusal is counted by kind in
//! [`TransportStats::refused`], `connections_closed_bad_input` is incremented and a warning
//! is logged with the peer address. Nothing read from the network can panic the transport.
//!
//! A frame can also be well formed and still prove its sender is misbehaving (a signature
//! that does not verify, a sender outside the cluster): that verdict is the consumer's, who
//! then calls [`TransportHandle::close_connection`]. It closes the connection the same way
//! and counts it in `connections_closed_refused`; a dialed link then reconnects, backing off
//! further each time its connections are closed this way in a row.
//!
//! # Writes are coalesced
//!
//! A writer takes every frame already queued (up to the queue bound and 256 KiB) and writes
//! them with one `write_all`, so a burst of small protocol messages (prepares and commits
//! to the same peer) costs one system call rather than one per frame. `TCP_NODELAY` is set
//! on every socket: batching is done here, where we know when a burst ends, not by Nagle's
//! algorithm, which would add latency to the last frame of every burst.
//!
//! # Sites and wide-area links
//!
//! The transport knows nothing of the protocol beyond frames; a site-to-site link is just
//! another peer address. [`TransportConfig::wan`] emulates wide-area links (latency,
//! jitter, loss, bandwidth) per destination cluster, between a link's queue and its
//! connection (see [`wan`]); [`TransportHandle::link_stats`] counts what each shaped link
//! carried and how long frames queued for it.

mod connection;
mod link;
mod listener;
mod reader;
mod stats;
#[cfg(test)]
mod tests;
pub mod wan;

pub use stats::TransportStats;
pub use wan::LinkStats;

use bulwark_framework::ids::{ClusterId, PeerId};
use bulwark_framework::membership::Scope;
use bulwark_framework::messages::Message;
use bulwark_framework::sim::wan::LinkModel;
use bulwark_framework::verify::Refusal;
use bulwark_framework::wire::{WireError, FRAME_HEADER_BYTES};
use bytes::Bytes;
use link::{run_link, Backoff};
use listener::run_listener;
use stats::{bump, Counters};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch, Notify};

/// Default for [`TransportConfig::accepted_connections_max`]. Each connection holds at most
/// one frame of `frame_bytes_max`, a read buffer and a bounded send queue, so the number of
/// connections bounds a listener's memory.
pub const ACCEPTED_CONNECTIONS_MAX: usize = 4096;

/// Names one TCP connection of an endpoint, accepted or dialed, for its lifetime. Ids are
/// never reused by an endpoint, so a reply addressed to a connection that has since closed
/// is dropped rather than delivered to a stranger.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ConnectionId(pub u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn{}", self.0)
    }
}

/// What an endpoint listens on, whom it dials, and its bounds.
#[derive(Clone, Debug, PartialEq)]
pub struct TransportConfig {
    /// Address to accept connections on; `None` for a client, which only dials. Port 0
    /// picks a free port (see [`TransportHandle::local_addr`]).
    pub listen: Option<SocketAddr>,
    /// The replicas this endpoint dials, one outbound link each, each named by its cluster
    /// and its id. Nothing assumes these are all the replicas there are, or that they are
    /// of one cluster (a Steward site's replicas dial other sites' too).
    pub peers: BTreeMap<PeerId, SocketAddr>,
    /// Largest frame body accepted, checked on every frame header before the body is read
    /// or allocated; also the largest frame sent (larger ones are dropped and counted, as
    /// the peer would close the connection on them).
    pub frame_bytes_max: usize,
    /// Frames waiting per outbound link or accepted connection; beyond it, frames are
    /// dropped and counted in [`TransportStats::dropped_queue_full`]. At least 1.
    pub send_queue_frames_max: usize,
    /// First reconnect delay, and the delay after a connection that worked is lost. At
    /// least 1.
    pub reconnect_min_ms: u64,
    /// Cap of the exponential reconnect backoff. At least `reconnect_min_ms`.
    pub reconnect_max_ms: u64,
    /// Accepted connections open at once (see [`ACCEPTED_CONNECTIONS_MAX`]); beyond it a
    /// new connection is closed at once and counted. At least 1.
    pub accepted_connections_max: usize,
    /// Emulated wide-area links by destination cluster: frames sent to a peer of a cluster
    /// named here cross a link of that model (see [`wan`]; duplication, which TCP does not
    /// do, is ignored). Empty: no emulation.
    pub wan: BTreeMap<ClusterId, LinkModel>,
}

impl TransportConfig {
    fn validate(&self) -> io::Result<()> {
        let invalid = |what: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, what));
        if self.frame_bytes_max == 0 || self.frame_bytes_max > u32::MAX as usize {
            return invalid("frame_bytes_max must be between 1 and 2^32 - 1");
        }
        if self.send_queue_frames_max == 0 {
            return invalid("send_queue_frames_max must be at least 1");
        }
        if self.accepted_connections_max == 0 {
            return invalid("accepted_connections_max must be at least 1");
        }
        if self.reconnect_min_ms == 0 || self.reconnect_min_ms > self.reconnect_max_ms {
            return invalid("reconnect delays must satisfy 1 <= reconnect_min_ms <= reconnect_max_ms");
        }
        if self.wan.values().any(|link| !(0.0..1.0).contains(&link.loss)) {
            return invalid("an emulated link's loss must be at least 0 and below 1");
        }
        Ok(())
    }
}

/// A message read from a connection: decoded, **not verified**. `connection` is where to
/// send an answer with [`TransportHandle::send_to_connection`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbound {
    pub connection: ConnectionId,
    /// The peer this endpoint dialed, when the message came on one of its outbound links
    /// (`None` on an accepted connection). A client in a cluster that trusts client
    /// connections attributes a reply by this, never by what the reply claims.
    pub link: Option<PeerId>,
    /// The cluster and epoch the envelope says the message is signed in (checked, with
    /// the signatures, by [`bulwark_framework::verify::verify_envelope`]).
    pub scope: Scope,
    pub message: Message,
}

/// Locks a mutex, ignoring poisoning: the data guarded here (counters, a routing table)
/// stays consistent even if a holder panicked, and the transport must not panic in turn.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A live connection as seen from outside its tasks: where to queue frames for it (its own
/// queue if accepted, its link's queue if dialed) and how to ask it to close.
#[derive(Clone, Debug)]
struct Route {
    queue: mpsc::Sender<Bytes>,
    /// Notified (once) by [`TransportHandle::close_connection`]; the task running the
    /// connection then closes it. A `Notify` keeps the request even if that task is not
    /// waiting yet.
    close: Arc<Notify>,
}

/// The live connections, by id. A connection is in here from when it is set up until it
/// ends or is asked to close.
type Routes = Arc<Mutex<HashMap<ConnectionId, Route>>>;

/// What every task of an endpoint needs. Tasks hold this, never the handle's [`Shared`],
/// so dropping the last handle drops [`Shared`] and shuts the endpoint down.
#[derive(Clone, Debug)]
struct Context {
    counters: Arc<Counters>,
    routes: Routes,
    next_connection: Arc<AtomicU64>,
    inbound: InboundLanes,
    shutdown: watch::Receiver<bool>,
    frame_bytes_max: usize,
    send_queue_frames_max: usize,
    accepted_connections_max: usize,
}

impl Context {
    fn refuse(&self, error: WireError) -> Refusal {
        let refusal = Refusal::from(error);
        lock(&self.counters.refused).record(&refusal);
        bump(&self.counters.connections_closed_bad_input, 1);
        refusal
    }
}

/// Resolves once the endpoint is shut down (explicitly, or because every handle is gone).
async fn shut_down(shutdown: &mut watch::Receiver<bool>) {
    // `wait_for` fails only if the sender is gone, which also means shut down.
    let _ = shutdown.wait_for(|stopped| *stopped).await;
}

#[derive(Debug)]
struct Shared {
    local_addr: Option<SocketAddr>,
    links: BTreeMap<PeerId, mpsc::Sender<Bytes>>,
    /// The counters of the links [`TransportConfig::wan`] shapes.
    shaped: BTreeMap<PeerId, Arc<wan::LinkCounters>>,
    context: Context,
    shutdown: watch::Sender<bool>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

/// A running endpoint. Cheap to clone; every clone drives the same endpoint. The endpoint
/// stops on [`TransportHandle::shutdown`] or when the last clone is dropped.
#[derive(Clone)]
pub struct TransportHandle {
    shared: Arc<Shared>,
}

/// A reference to an endpoint that does not keep it running: for tasks that serve the
/// endpoint (and so must not outlive it), such as the consumer of its inbound channel.
#[derive(Clone)]
pub struct WeakTransportHandle {
    shared: Weak<Shared>,
}

impl WeakTransportHandle {
    /// The endpoint, if some [`TransportHandle`] still keeps it running.
    pub fn upgrade(&self) -> Option<TransportHandle> {
        self.shared.upgrade().map(|shared| TransportHandle { shared })
    }
}

impl fmt::Debug for WeakTransportHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakTransportHandle").field("alive", &(self.shared.strong_count() > 0)).finish()
    }
}

impl fmt::Debug for TransportHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportHandle")
            .field("local_addr", &self.shared.local_addr)
            .field("peers", &self.shared.links.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Where an endpoint's readers deliver what they read: one bounded channel per lane,
/// chosen for each message by `lane_of`. A reader waiting for room waits on its own
/// message's lane only, so a full lane (client requests piling up at a busy replica) does
/// not stop the connections whose messages go to another (the other replicas' protocol
/// traffic). What a lane means is the owner's business; the transport only routes.
#[derive(Clone)]
pub struct InboundLanes {
    lanes: Arc<[mpsc::Sender<Inbound>]>,
    lane_of: Arc<dyn Fn(&Message) -> usize + Send + Sync>,
}

impl InboundLanes {
    /// `lane_of` picks an index into `lanes` for each message; an index past the end
    /// means the last lane. `lanes` must not be empty.
    pub fn new(lanes: Vec<mpsc::Sender<Inbound>>, lane_of: impl Fn(&Message) -> usize + Send + Sync + 'static) -> Self {
        assert!(!lanes.is_empty(), "an endpoint needs at least one inbound lane");
        InboundLanes { lanes: lanes.into(), lane_of: Arc::new(lane_of) }
    }

    /// Waits for room in `inbound`'s lane and puts it there; fails once that lane's
    /// receiver is gone.
    pub(crate) async fn deliver(&self, inbound: Inbound) -> Result<(), mpsc::error::SendError<Inbound>> {
        let lane = (self.lane_of)(&inbound.message).min(self.lanes.len() - 1);
        self.lanes[lane].send(inbound).await
    }
}

/// One lane: everything in arrival order.
impl From<mpsc::Sender<Inbound>> for InboundLanes {
    fn from(inbound: mpsc::Sender<Inbound>) -> Self {
        InboundLanes::new(vec![inbound], |_| 0)
    }
}

impl fmt::Debug for InboundLanes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundLanes").field("lanes", &self.lanes.len()).finish_non_exhaustive()
    }
}

/// Starts an endpoint: binds the listener (if any), spawns one dialer per peer, and
/// delivers every message read on any connection to its lane of `inbound` (a plain
/// channel is one lane).
///
/// Must be called within a tokio runtime (multi-thread, or current-thread as in an actix
/// `Arbiter`); all tasks are spawned with `tokio::spawn`. Fails if the configuration is
/// invalid or the listen address cannot be bound.
pub async fn start(config: TransportConfig, inbound: impl Into<InboundLanes>) -> io::Result<TransportHandle> {
    let inbound = inbound.into();
    config.validate()?;
    let listener = match config.listen {
        Some(address) => Some(TcpListener::bind(address).await?),
        None => None,
    };
    let local_addr = match &listener {
        Some(listener) => Some(listener.local_addr()?),
        None => None,
    };
    let (shutdown, shutdown_rx) = watch::channel(false);
    let context = Context {
        counters: Arc::new(Counters::default()),
        routes: Arc::new(Mutex::new(HashMap::new())),
        next_connection: Arc::new(AtomicU64::new(0)),
        inbound,
        shutdown: shutdown_rx,
        frame_bytes_max: config.frame_bytes_max,
        send_queue_frames_max: config.send_queue_frames_max,
        accepted_connections_max: config.accepted_connections_max,
    };
    let backoff = Backoff {
        min: Duration::from_millis(config.reconnect_min_ms),
        max: Duration::from_millis(config.reconnect_max_ms),
    };
    let (mut links, mut shaped) = (BTreeMap::new(), BTreeMap::new());
    for (&peer, &address) in &config.peers {
        let (sender, queue) = mpsc::channel(config.send_queue_frames_max);
        match config.wan.get(&peer.cluster) {
            Some(model) => {
                let (shaper, input) = mpsc::channel(config.send_queue_frames_max);
                let counters = Arc::new(wan::LinkCounters::default());
                let seed = (u64::from(peer.cluster.0) << 32) | u64::from(peer.replica.0);
                let context = context.clone();
                tokio::spawn(wan::run_shaper(*model, seed, input, sender.clone(), counters.clone(), context));
                links.insert(peer, shaper);
                shaped.insert(peer, counters);
            }
            None => {
                links.insert(peer, sender.clone());
            }
        }
        tokio::spawn(run_link(peer, address, sender, queue, backoff, context.clone()));
    }
    if let Some(listener) = listener {
        tokio::spawn(run_listener(listener, context.clone()));
    }
    Ok(TransportHandle { shared: Arc::new(Shared { local_addr, links, shaped, context, shutdown }) })
}

impl TransportHandle {
    /// The address the listener is bound to (with the actual port when the configuration
    /// asked for port 0), or `None` for a dial-only endpoint.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.shared.local_addr
    }

    /// A reference to this endpoint that does not keep it running.
    pub fn downgrade(&self) -> WeakTransportHandle {
        WeakTransportHandle { shared: Arc::downgrade(&self.shared) }
    }

    /// Queues `frame` (from [`wire::encode_frame`](bulwark_framework::wire::encode_frame)) on
    /// the link to `peer`. Never blocks: if the link's queue is full, or `peer` is not a
    /// configured peer, the frame is dropped and counted.
    pub fn send_to_peer(&self, peer: PeerId, frame: Bytes) {
        if !self.frame_fits(&frame) {
            return;
        }
        match self.shared.links.get(&peer) {
            Some(queue) => self.enqueue(queue, frame),
            None => {
                bump(&self.shared.context.counters.dropped_unroutable, 1);
                tracing::debug!(%peer, "dropping frame for a replica that is not a peer");
            }
        }
    }

    /// Queues `frame` on a connection a message came from (an [`Inbound::connection`]),
    /// e.g. a reply to a client. Never blocks: a full queue, or a connection that is
    /// unknown or already closed, drops the frame and counts it.
    pub fn send_to_connection(&self, connection: ConnectionId, frame: Bytes) {
        if !self.frame_fits(&frame) {
            return;
        }
        let queue = lock(&self.shared.context.routes).get(&connection).map(|route| route.queue.clone());
        match queue {
            Some(queue) => self.enqueue(&queue, frame),
            None => {
                bump(&self.shared.context.counters.dropped_unroutable, 1);
                tracing::debug!(%connection, "dropping frame for a closed connection");
            }
        }
    }

    /// Closes `connection` because a message on it was refused (it was well formed but
    /// proves its sender misbehaves: a bad signature, a sender outside the cluster, ...),
    /// and counts it in [`TransportStats::connections_closed_refused`].
    ///
    /// An accepted connection is closed for good: its reader and writer stop, its queued
    /// frames are dropped and its socket is closed. For the current connection of an
    /// outbound link only that TCP connection is dropped: the link keeps its queue and
    /// reconnects with its backoff, which grows while its connections keep being closed
    /// this way. Never blocks; the connection winds down shortly after this returns, and
    /// from now on frames addressed to it are dropped as unroutable. An unknown or already
    /// closed `connection` is left alone and not counted.
    pub fn close_connection(&self, connection: ConnectionId) {
        let context = &self.shared.context;
        let Some(route) = lock(&context.routes).remove(&connection) else {
            tracing::debug!(%connection, "not closing a connection that is unknown or already closed");
            return;
        };
        bump(&context.counters.connections_closed_refused, 1);
        route.close.notify_one();
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TransportStats {
        self.shared.context.counters.snapshot()
    }

    /// A snapshot of each emulated wide-area link's counters, by peer.
    pub fn link_stats(&self) -> BTreeMap<PeerId, LinkStats> {
        self.shared.shaped.iter().map(|(peer, counters)| (*peer, counters.snapshot())).collect()
    }

    /// Stops the listener, the dialers and every connection (their sockets are closed as
    /// their tasks wind down, shortly after this returns). Later sends are dropped and
    /// counted as unroutable.
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
        lock(&self.shared.context.routes).clear();
    }

    /// A frame longer than the peer's limit would only make the peer close the connection
    /// (losing everything queued behind it), so it is dropped here instead.
    fn frame_fits(&self, frame: &Bytes) -> bool {
        let limit = self.shared.context.frame_bytes_max;
        if frame.len() <= FRAME_HEADER_BYTES || frame.len() - FRAME_HEADER_BYTES > limit {
            bump(&self.shared.context.counters.dropped_oversized, 1);
            tracing::warn!(bytes = frame.len(), limit, "dropping a frame that is empty or exceeds frame_bytes_max");
            return false;
        }
        true
    }

    fn enqueue(&self, queue: &mpsc::Sender<Bytes>, frame: Bytes) {
        let counters = &self.shared.context.counters;
        match queue.try_send(frame) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => bump(&counters.dropped_queue_full, 1),
            Err(TrySendError::Closed(_)) => bump(&counters.dropped_unroutable, 1),
        }
    }
}
