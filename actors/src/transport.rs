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
//! # Why every buffer has a bound (DESIGN.md "Messages and trust")
//!
//! A Byzantine peer must not be able to grow a replica's memory, and neither may a slow or
//! dead one:
//!
//! * **Frame size is checked before allocation.** A reader reads the 4-byte header, checks
//!   it with [`wire::frame_length`] against `frame_bytes_max`, and only then allocates and
//!   reads the body. A header claiming 4 GiB costs four bytes of reading and a closed
//!   connection, not 4 GiB of memory.
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
//! # Looking ahead: sites
//!
//! The transport knows nothing of the protocol beyond frames; a site-to-site link is just
//! another peer address, and the per-link wide-area emulation (latency, bandwidth, loss)
//! DESIGN.md asks for belongs between a link's queue and its socket, in the writer.

use bulwark_framework::ids::PeerId;
use bulwark_framework::membership::Scope;
use bulwark_framework::messages::Message;
use bulwark_framework::verify::{Refusal, RefusalCounts};
use bulwark_framework::wire::{self, WireError, FRAME_HEADER_BYTES};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch, Notify};

/// Default for [`TransportConfig::accepted_connections_max`]. Each connection holds at most
/// one frame of `frame_bytes_max`, a read buffer and a bounded send queue, so the number of
/// connections bounds a listener's memory.
pub const ACCEPTED_CONNECTIONS_MAX: usize = 4096;

/// How long one connect attempt may take before it counts as failed. Refused connections
/// fail at once; this bounds attempts to addresses that silently drop packets.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Read buffer per connection: many small frames are read with one system call.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// A writer stops adding queued frames to a batch once it holds this many bytes, so one
/// write never needs a buffer much larger than this (or than one frame).
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// Pause after a failed `accept` (typically out of file descriptors), so the listener
/// does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

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
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// Connections closed by [`TransportHandle::close_connection`], because a message on
    /// them was well formed but refused (bad signature, unknown sender, ...).
    pub connections_closed_refused: u64,
    /// Connect attempts after the first, over all links (failed retries included).
    pub reconnects: u64,
    /// Refused frames by kind (`Oversized`, `Malformed`).
    pub refused: RefusalCounts,
}

/// The live counters behind [`TransportStats`], shared by every task of an endpoint.
#[derive(Debug, Default)]
struct Counters {
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_unroutable: AtomicU64,
    dropped_oversized: AtomicU64,
    write_batches: AtomicU64,
    connections_accepted: AtomicU64,
    connections_refused_limit: AtomicU64,
    connections_closed_bad_input: AtomicU64,
    connections_closed_refused: AtomicU64,
    reconnects: AtomicU64,
    refused: Mutex<RefusalCounts>,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// Locks a mutex, ignoring poisoning: the data guarded here (counters, a routing table)
/// stays consistent even if a holder panicked, and the transport must not panic in turn.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Counters {
    fn snapshot(&self) -> TransportStats {
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
    let mut links = BTreeMap::new();
    for (&peer, &address) in &config.peers {
        let (sender, queue) = mpsc::channel(config.send_queue_frames_max);
        links.insert(peer, sender.clone());
        tokio::spawn(run_link(peer, address, sender, queue, backoff, context.clone()));
    }
    if let Some(listener) = listener {
        tokio::spawn(run_listener(listener, context.clone()));
    }
    Ok(TransportHandle { shared: Arc::new(Shared { local_addr, links, context, shutdown }) })
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

    /// Queues `frame` (from [`wire::encode_frame`]) on the link to `peer`. Never blocks:
    /// if the link's queue is full, or `peer` is not a configured peer, the frame is
    /// dropped and counted.
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

/// Reconnect delays: doubling from `min`, capped at `max`.
#[derive(Clone, Copy, Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
}

/// How a connection ended, as seen by the task that owns its writer.
#[derive(Debug)]
enum ConnectionEnd {
    /// The endpoint is shutting down.
    Shutdown,
    /// Every sender of the write queue is gone (the endpoint is shutting down).
    QueueClosed,
    /// The reader stopped: end of stream, a read error, bad input (already counted and
    /// logged by the reader) or nobody consuming `inbound` any more.
    ReaderStopped,
    /// A write failed.
    WriteFailed(io::Error),
    /// [`TransportHandle::close_connection`] asked for it (already counted).
    Closed,
}

/// The dialer of one outbound link: keeps a connection to `address` open for as long as
/// the endpoint runs, writing the link's queue to it and delivering what it reads.
async fn run_link(
    replica: PeerId,
    address: SocketAddr,
    sender: mpsc::Sender<Bytes>,
    mut queue: mpsc::Receiver<Bytes>,
    backoff: Backoff,
    context: Context,
) {
    let mut shutdown = context.shutdown.clone();
    // The pause after the next failed attempt. It is reset once a connection that worked
    // is lost, not on connecting: a peer whose connections keep being closed for refused
    // messages is backed off like one that cannot be reached.
    let mut delay = backoff.min;
    let mut first_attempt = true;
    loop {
        if !first_attempt {
            bump(&context.counters.reconnects, 1);
        }
        first_attempt = false;
        let attempt = tokio::select! {
            biased;
            _ = shut_down(&mut shutdown) => return,
            attempt = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)) => attempt,
        };
        let pause = match attempt {
            Ok(Ok(stream)) => {
                tracing::debug!(%replica, %address, "link connected");
                let end = run_connection(stream, address, Some(replica), &mut queue, sender.clone(), &context).await;
                match end {
                    ConnectionEnd::Shutdown | ConnectionEnd::QueueClosed => return,
                    ConnectionEnd::ReaderStopped => {
                        tracing::info!(%replica, %address, "link closed by peer; reconnecting");
                        delay = backoff.min;
                        backoff.min
                    }
                    ConnectionEnd::WriteFailed(error) => {
                        tracing::info!(%replica, %address, %error, "link lost; reconnecting");
                        delay = backoff.min;
                        backoff.min
                    }
                    ConnectionEnd::Closed => {
                        tracing::info!(%replica, %address, retry_in = ?delay, "link closed after a refused message; reconnecting");
                        let pause = delay;
                        delay = (delay * 2).min(backoff.max);
                        pause
                    }
                }
            }
            Ok(Err(error)) => {
                tracing::debug!(%replica, %address, %error, retry_in = ?delay, "connect failed");
                let pause = delay;
                delay = (delay * 2).min(backoff.max);
                pause
            }
            Err(_elapsed) => {
                tracing::debug!(%replica, %address, retry_in = ?delay, "connect timed out");
                let pause = delay;
                delay = (delay * 2).min(backoff.max);
                pause
            }
        };
        tokio::select! {
            biased;
            _ = shut_down(&mut shutdown) => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Accepts connections until shutdown; each gets its own task, so one bad or slow
/// connection never holds up the others.
async fn run_listener(listener: TcpListener, context: Context) {
    let mut shutdown = context.shutdown.clone();
    let open = Arc::new(tokio::sync::Semaphore::new(context.accepted_connections_max));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shut_down(&mut shutdown) => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Ok(permit) = open.clone().try_acquire_owned() else {
                    // Every connection holds bounded buffers, but their number must be
                    // bounded too: beyond the limit a new connection is closed at once.
                    bump(&context.counters.connections_refused_limit, 1);
                    tracing::warn!(%peer, limit = context.accepted_connections_max, "too many connections; closing");
                    drop(stream);
                    continue;
                };
                bump(&context.counters.connections_accepted, 1);
                tracing::debug!(%peer, "connection accepted");
                let context = context.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let (sender, mut queue) = mpsc::channel(context.send_queue_frames_max);
                    let end = run_connection(stream, peer, None, &mut queue, sender, &context).await;
                    if let ConnectionEnd::WriteFailed(error) = end {
                        tracing::debug!(%peer, %error, "write failed; connection closed");
                    }
                });
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::select! {
                    biased;
                    _ = shut_down(&mut shutdown) => return,
                    _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
        }
    }
}

/// Runs one connection, accepted or dialed, until it ends: registers it under a fresh
/// [`ConnectionId`] (so answers can be addressed to it), spawns its reader, and writes
/// `queue` to it. Whichever side stops first ends the connection, and the socket is closed
/// once both halves are dropped.
async fn run_connection(
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
async fn read_connection(
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

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_crypto::{Digest, KeyPair};
    use bulwark_framework::ids::{ClientId, ClusterId, ReplicaId, SeqNum, Timestamp, View};
    use bulwark_framework::messages::{Prepare, Reply};
    use bulwark_framework::verify::RefusalKind;
    use std::sync::OnceLock;
    use std::time::Instant as WallClock;
    use tokio::time::{sleep, timeout};

    /// Every test is bounded: a hang is a failure, not a stuck CI job.
    const TEST_TIMEOUT: Duration = Duration::from_secs(20);
    const B: PeerId = PeerId { cluster: ClusterId(1), replica: ReplicaId(1) };

    fn key() -> &'static KeyPair {
        static KEY: OnceLock<KeyPair> = OnceLock::new();
        KEY.get_or_init(|| KeyPair::from_seed([1; 32]))
    }

    fn prepare(seq: u64) -> Message {
        let payload =
            Prepare { view: View(0), seq: SeqNum(seq), digest: Digest::of(&seq.to_le_bytes()), replica: ReplicaId(0) };
        Message::Prepare(crate::test_fixtures::sign(payload, key()))
    }

    fn reply(result_bytes: usize) -> Message {
        let payload = Reply {
            view: View(0),
            timestamp: Timestamp(7),
            client: ClientId(9),
            replica: B.replica,
            read_only: false,
            result: vec![0x5a; result_bytes],
        };
        Message::Reply(crate::test_fixtures::sign(payload, key()))
    }

    fn seq_of(message: &Message) -> u64 {
        match message {
            Message::Prepare(signed) => signed.payload.seq.0,
            other => panic!("expected a prepare, got {other:?}"),
        }
    }

    fn frame(message: &Message) -> Bytes {
        Bytes::from(wire::encode_frame(crate::test_fixtures::SCOPE, message).expect("encoding a frame"))
    }

    fn config(listen: bool, peers: &[(PeerId, SocketAddr)], queue: usize) -> TransportConfig {
        TransportConfig {
            listen: listen.then(|| "127.0.0.1:0".parse().expect("an address")),
            peers: peers.iter().copied().collect(),
            frame_bytes_max: 1 << 20,
            send_queue_frames_max: queue,
            reconnect_min_ms: 10,
            reconnect_max_ms: 200,
            accepted_connections_max: ACCEPTED_CONNECTIONS_MAX,
        }
    }

    async fn endpoint(config: TransportConfig) -> (TransportHandle, mpsc::Receiver<Inbound>) {
        let (sender, receiver) = mpsc::channel(64);
        let handle = start(config, sender).await.expect("starting an endpoint");
        (handle, receiver)
    }

    async fn recv(inbound: &mut mpsc::Receiver<Inbound>) -> Inbound {
        timeout(Duration::from_secs(10), inbound.recv())
            .await
            .expect("a message within 10 s")
            .expect("inbound channel open")
    }

    /// An address nobody listens on: bind port 0, note it, close it.
    fn unused_address() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding port 0");
        listener.local_addr().expect("local address")
    }

    /// Polls `condition` until it holds (or the test times out).
    async fn eventually(mut condition: impl FnMut() -> bool) {
        while !condition() {
            sleep(Duration::from_millis(5)).await;
        }
    }

    async fn with_timeout<F: std::future::Future<Output = ()>>(test: F) {
        timeout(TEST_TIMEOUT, test).await.expect("test timed out");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn thousand_frames_arrive_in_order_and_intact() {
        with_timeout(async {
            let (b, mut b_in) = endpoint(config(true, &[], 16)).await;
            let b_addr = b.local_addr().expect("b listens");
            let (a, _a_in) = endpoint(config(false, &[(B, b_addr)], 2048)).await;
            assert_eq!(a.local_addr(), None);
            let sent: Vec<Message> = (0..1000).map(prepare).collect();
            for message in &sent {
                a.send_to_peer(B, frame(message));
            }
            let mut connection = None;
            for expected in &sent {
                let got = recv(&mut b_in).await;
                assert_eq!(&got.message, expected);
                // All on the one connection A dialed.
                assert_eq!(*connection.get_or_insert(got.connection), got.connection);
            }
            // Counted once `write_all` returns, which may be after B has read the frames.
            eventually(|| a.stats().frames_out == 1000).await;
            let a_stats = a.stats();
            assert_eq!(a_stats.dropped_queue_full, 0);
            assert_eq!(a_stats.bytes_out, sent.iter().map(|m| frame(m).len() as u64).sum());
            let b_stats = b.stats();
            assert_eq!(b_stats.frames_in, 1000);
            assert_eq!(b_stats.bytes_in, a_stats.bytes_out);
            assert_eq!(b_stats.connections_accepted, 1);
            assert_eq!(b_stats.refused.total(), 0);
            a.shutdown();
            b.shutdown();
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replies_travel_back_on_the_dialed_connection() {
        with_timeout(async {
            let (b, mut b_in) = endpoint(config(true, &[], 16)).await;
            let b_addr = b.local_addr().expect("b listens");
            let (a, mut a_in) = endpoint(config(false, &[(B, b_addr)], 16)).await;
            a.send_to_peer(B, frame(&prepare(1)));
            let request = recv(&mut b_in).await;
            assert_eq!(request.message, prepare(1));

            let answer = reply(100);
            b.send_to_connection(request.connection, frame(&answer));
            let got = recv(&mut a_in).await;
            assert_eq!(got.message, answer);

            // A can answer back on the connection it received on (its dialed link).
            a.send_to_connection(got.connection, frame(&prepare(2)));
            assert_eq!(recv(&mut b_in).await.message, prepare(2));

            // Unknown connections and unknown replicas: dropped and counted.
            b.send_to_connection(ConnectionId(999), frame(&answer));
            a.send_to_peer(PeerId::new(ClusterId(1), ReplicaId(42)), frame(&answer));
            assert_eq!(b.stats().dropped_unroutable, 1);
            assert_eq!(a.stats().dropped_unroutable, 1);

            // Once B closes the connection, its id is no longer routable.
            b.shutdown();
            b.send_to_connection(request.connection, frame(&answer));
            assert_eq!(b.stats().dropped_unroutable, 2);
            a.shutdown();
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_link_reconnects_after_its_peer_restarts() {
        with_timeout(async {
            let bound = 8;
            let (b1, mut b1_in) = endpoint(config(true, &[], 16)).await;
            let b_addr = b1.local_addr().expect("b listens");
            let (a, _a_in) = endpoint(config(false, &[(B, b_addr)], bound)).await;
            a.send_to_peer(B, frame(&prepare(0)));
            assert_eq!(seq_of(&recv(&mut b1_in).await.message), 0);

            b1.shutdown();
            // Wait until B's port refuses connections and A has noticed the loss.
            loop {
                if TcpStream::connect(b_addr).await.is_err() {
                    break;
                }
                sleep(Duration::from_millis(5)).await;
            }
            eventually(|| a.stats().reconnects >= 1).await;

            // While B is down, sends neither block nor grow memory: the queue keeps `bound`
            // frames and drops the rest.
            let started = WallClock::now();
            for seq in 1..=100 {
                a.send_to_peer(B, frame(&prepare(seq)));
            }
            assert!(started.elapsed() < Duration::from_secs(1));
            let dropped = a.stats().dropped_queue_full;
            assert!(dropped >= 100 - 2 * bound as u64, "dropped {dropped}");
            assert!(dropped <= 100 - bound as u64, "dropped {dropped}");

            // A new B on the same port: B1's sockets close as its tasks wind down, so retry.
            let (b2, mut b2_in) = loop {
                let mut again = config(true, &[], 16);
                again.listen = Some(b_addr);
                let (sender, receiver) = mpsc::channel(64);
                match start(again, sender).await {
                    Ok(handle) => break (handle, receiver),
                    Err(error) if error.kind() == io::ErrorKind::AddrInUse => sleep(Duration::from_millis(10)).await,
                    Err(error) => panic!("restarting b: {error}"),
                }
            };
            // The frames kept in the queue come first, then fresh ones flow. The marker is
            // resent until it arrives: until A reconnects, its queue is full and drops it.
            let marker = 1_000_000;
            let mut kept = Vec::new();
            'flowing: loop {
                a.send_to_peer(B, frame(&prepare(marker)));
                while let Ok(got) = timeout(Duration::from_millis(50), b2_in.recv()).await {
                    let seq = seq_of(&got.expect("inbound channel open").message);
                    if seq == marker {
                        break 'flowing;
                    }
                    kept.push(seq);
                }
            }
            assert!(kept.len() <= bound, "kept {kept:?}");
            assert!(kept.windows(2).all(|pair| pair[0] < pair[1]), "kept {kept:?}");
            assert!(a.stats().reconnects >= 1);
            a.shutdown();
            b2.shutdown();
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_peer_costs_counted_drops_not_memory() {
        with_timeout(async {
            let bound = 16;
            let (a, _a_in) = endpoint(config(false, &[(B, unused_address())], bound)).await;
            let message = frame(&prepare(3));
            for _ in 0..10 * bound {
                a.send_to_peer(B, message.clone());
            }
            let stats = a.stats();
            assert!(stats.dropped_queue_full >= 9 * bound as u64, "{stats:?}");
            assert_eq!(stats.frames_out, 0);
            // The queue is full at its bound, and that is all it holds.
            let queue = &a.shared.links[&B];
            assert_eq!(queue.max_capacity(), bound);
            assert_eq!(queue.capacity(), 0);
            // The dialer keeps retrying with backoff, and never connects.
            eventually(|| a.stats().reconnects >= 2).await;
            a.shutdown();
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_that_never_reads_costs_counted_drops_not_memory() {
        with_timeout(async {
            let bound = 16;
            // Accepts at the TCP level (kernel backlog) but never reads a byte.
            let silent = TcpListener::bind("127.0.0.1:0").await.expect("binding");
            let silent_addr = silent.local_addr().expect("local address");
            let (a, _a_in) = endpoint(config(false, &[(B, silent_addr)], bound)).await;
            let big = frame(&reply(60 * 1024));
            let sent = 2000u64; // ~120 MiB offered, far beyond any socket buffer
            for _ in 0..sent {
                a.send_to_peer(B, big.clone());
                tokio::task::yield_now().await;
            }
            // Let the writer fill the socket buffers until it blocks.
            sleep(Duration::from_millis(200)).await;
            let stats = a.stats();
            assert!(stats.dropped_queue_full >= 9 * bound as u64, "{stats:?}");
            // Whatever is neither written nor dropped sits in the queue or in the one
            // batch being written: at most two bounds' worth.
            let unaccounted = sent - stats.frames_out - stats.dropped_queue_full;
            assert!(unaccounted <= 2 * bound as u64, "{stats:?}");
            a.shutdown();
            drop(silent);
        })
        .await;
    }

    /// Reads from a raw stream until the transport closes it: EOF, or a reset when the
    /// transport closed with unread bytes in its receive buffer.
    async fn assert_closed_by_peer(stream: &mut TcpStream) {
        let mut buffer = [0u8; 64];
        let read = timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .expect("the transport closes a connection that sent bad input");
        match read {
            Ok(0) => {}
            Err(error) => {
                assert!(matches!(error.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe), "{error}")
            }
            Ok(read) => panic!("unexpected {read} bytes from the transport"),
        }
    }

    /// Deterministic noise (xorshift64), so a failure can be replayed.
    fn noise(mut state: u64, length: usize) -> Vec<u8> {
        (0..length)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_input_closes_only_that_connection() {
        with_timeout(async {
            let (b, mut b_in) = endpoint(config(true, &[], 16)).await;
            let b_addr = b.local_addr().expect("b listens");
            let (a, _a_in) = endpoint(config(false, &[(B, b_addr)], 16)).await;
            a.send_to_peer(B, frame(&prepare(1)));
            assert_eq!(seq_of(&recv(&mut b_in).await.message), 1);

            // An oversized length prefix: refused on the header alone.
            let mut oversized = TcpStream::connect(b_addr).await.expect("connecting");
            oversized.write_all(&[0xFF; 4]).await.expect("writing");
            assert_closed_by_peer(&mut oversized).await;
            assert_eq!(b.stats().refused.get(RefusalKind::Oversized), 1);
            assert_eq!(b.stats().connections_closed_bad_input, 1);

            // A frame whose body is not an envelope (0xc1 is never valid msgpack).
            let mut garbage = TcpStream::connect(b_addr).await.expect("connecting");
            garbage.write_all(&[0, 0, 0, 8]).await.expect("writing");
            garbage.write_all(&[0xC1; 8]).await.expect("writing");
            assert_closed_by_peer(&mut garbage).await;
            assert_eq!(b.stats().refused.get(RefusalKind::Malformed), 1);

            // Half a frame, then end of stream.
            let whole = frame(&prepare(2));
            let mut half = TcpStream::connect(b_addr).await.expect("connecting");
            half.write_all(&whole[..whole.len() / 2]).await.expect("writing");
            half.shutdown().await.expect("half-closing");
            assert_closed_by_peer(&mut half).await;
            assert_eq!(b.stats().refused.get(RefusalKind::Malformed), 2);

            // Half a header, then end of stream.
            let mut stub = TcpStream::connect(b_addr).await.expect("connecting");
            stub.write_all(&[0, 0]).await.expect("writing");
            stub.shutdown().await.expect("half-closing");
            assert_closed_by_peer(&mut stub).await;
            assert_eq!(b.stats().refused.get(RefusalKind::Malformed), 3);

            // A valid frame (delivered), then garbage (closes the connection).
            let mut mixed = TcpStream::connect(b_addr).await.expect("connecting");
            mixed.write_all(&frame(&prepare(3))).await.expect("writing");
            mixed.write_all(&[0, 0, 0, 3, 1, 2, 3]).await.expect("writing");
            let delivered = recv(&mut b_in).await;
            assert_eq!(delivered.message, prepare(3));
            assert_closed_by_peer(&mut mixed).await;
            assert_eq!(b.stats().refused.get(RefusalKind::Malformed), 4);
            // Its id died with it.
            b.send_to_connection(delivered.connection, frame(&prepare(0)));
            assert_eq!(b.stats().dropped_unroutable, 1);

            // Random bytes: oversized, malformed or truncated, but refused either way.
            for seed in 1..=8u64 {
                let mut random = TcpStream::connect(b_addr).await.expect("connecting");
                random.write_all(&noise(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15), 512)).await.expect("writing");
                // The transport may already have closed; a failed half-close is fine.
                let _ = random.shutdown().await;
                assert_closed_by_peer(&mut random).await;
            }
            let stats = b.stats();
            assert_eq!(stats.connections_closed_bad_input, 13, "{stats:?}");
            assert_eq!(stats.refused.total(), 13, "{stats:?}");
            assert_eq!(stats.connections_accepted, 14, "{stats:?}");

            // The well-behaved connection, and new ones, still work.
            a.send_to_peer(B, frame(&prepare(4)));
            assert_eq!(seq_of(&recv(&mut b_in).await.message), 4);
            let (c, _c_in) = endpoint(config(false, &[(B, b_addr)], 16)).await;
            c.send_to_peer(B, frame(&prepare(5)));
            assert_eq!(seq_of(&recv(&mut b_in).await.message), 5);
            a.shutdown();
            b.shutdown();
            c.shutdown();
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_connection_closes_accepted_ones_and_redials_dialed_ones() {
        with_timeout(async {
            let (b, mut b_in) = endpoint(config(true, &[], 16)).await;
            let b_addr = b.local_addr().expect("b listens");
            let (a, mut a_in) = endpoint(config(false, &[(B, b_addr)], 16)).await;

            // An accepted connection: closed for good, its socket closed, counted once.
            let mut raw = TcpStream::connect(b_addr).await.expect("connecting");
            raw.write_all(&frame(&prepare(1))).await.expect("writing");
            let from_raw = recv(&mut b_in).await;
            assert_eq!(from_raw.message, prepare(1));
            b.close_connection(from_raw.connection);
            assert_closed_by_peer(&mut raw).await;
            assert_eq!(b.stats().connections_closed_refused, 1);
            // Closed ids and unknown ids: no-ops, not counted.
            b.close_connection(from_raw.connection);
            b.close_connection(ConnectionId(999));
            assert_eq!(b.stats().connections_closed_refused, 1);
            b.send_to_connection(from_raw.connection, frame(&prepare(0)));
            assert_eq!(b.stats().dropped_unroutable, 1);

            // B closes the connection A dialed: A's link notices and dials again.
            a.send_to_peer(B, frame(&prepare(2)));
            let first = recv(&mut b_in).await;
            assert_eq!(first.message, prepare(2));
            b.close_connection(first.connection);
            assert_eq!(b.stats().connections_closed_refused, 2);
            eventually(|| a.stats().reconnects >= 1).await;
            // Resent until it arrives: one sent while A has not noticed yet may be lost.
            let second = loop {
                a.send_to_peer(B, frame(&prepare(3)));
                if let Ok(got) = timeout(Duration::from_millis(50), b_in.recv()).await {
                    break got.expect("inbound channel open");
                }
            };
            assert_eq!(second.message, prepare(3));
            assert_ne!(second.connection, first.connection);

            // A closes its own dialed connection (as for a refused reply): the link drops
            // that TCP connection and reconnects, keeping its queue.
            b.send_to_connection(second.connection, frame(&reply(10)));
            let answer = recv(&mut a_in).await;
            assert_eq!(answer.message, reply(10));
            let accepted = b.stats().connections_accepted;
            a.close_connection(answer.connection);
            assert_eq!(a.stats().connections_closed_refused, 1);
            eventually(|| b.stats().connections_accepted > accepted).await;
            let third = loop {
                a.send_to_peer(B, frame(&prepare(4)));
                if let Ok(got) = timeout(Duration::from_millis(50), b_in.recv()).await {
                    let got = got.expect("inbound channel open");
                    if got.message == prepare(4) {
                        break got;
                    }
                }
            };
            assert_ne!(third.connection, second.connection);
            a.send_to_connection(answer.connection, frame(&prepare(5)));
            assert_eq!(a.stats().dropped_unroutable, 1);
            assert_eq!(a.stats().connections_closed_refused, 1);
            // Neither side counted any of this as bad input.
            assert_eq!(a.stats().connections_closed_bad_input + b.stats().connections_closed_bad_input, 0);
            a.shutdown();
            b.shutdown();
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_frames_are_coalesced_into_few_writes() {
        with_timeout(async {
            // Queue 50 frames while the peer is down; when it comes up, the writer finds
            // them all queued and writes them together.
            let b_addr = unused_address();
            let (a, _a_in) = endpoint(config(false, &[(B, b_addr)], 64)).await;
            for seq in 0..50 {
                a.send_to_peer(B, frame(&prepare(seq)));
            }
            let mut b_config = config(true, &[], 16);
            b_config.listen = Some(b_addr);
            let (b, mut b_in) = endpoint(b_config).await;
            for seq in 0..50 {
                assert_eq!(seq_of(&recv(&mut b_in).await.message), seq);
            }
            eventually(|| a.stats().frames_out == 50).await;
            let stats = a.stats();
            assert!(stats.write_batches < stats.frames_out, "{stats:?}");
            a.shutdown();
            b.shutdown();
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn oversized_sends_are_dropped_before_the_link() {
        with_timeout(async {
            let (b, mut b_in) = endpoint(config(true, &[], 16)).await;
            let b_addr = b.local_addr().expect("b listens");
            let mut small = config(false, &[(B, b_addr)], 16);
            small.frame_bytes_max = 1024;
            let (a, _a_in) = endpoint(small).await;
            a.send_to_peer(B, frame(&reply(4096)));
            a.send_to_peer(B, Bytes::new());
            a.send_to_peer(B, frame(&prepare(1)));
            assert_eq!(seq_of(&recv(&mut b_in).await.message), 1);
            assert_eq!(a.stats().dropped_oversized, 2);
            assert_eq!(b.stats().refused.total(), 0);
            a.shutdown();
            b.shutdown();
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_closes_the_listener_and_connections() {
        with_timeout(async {
            let (b, _b_in) = endpoint(config(true, &[], 16)).await;
            let b_addr = b.local_addr().expect("b listens");
            let mut raw = TcpStream::connect(b_addr).await.expect("connecting");
            eventually(|| b.stats().connections_accepted == 1).await;
            b.shutdown();
            assert_closed_by_peer(&mut raw).await;
            loop {
                if TcpStream::connect(b_addr).await.is_err() {
                    break;
                }
                sleep(Duration::from_millis(5)).await;
            }
            b.send_to_peer(B, frame(&prepare(1)));
            assert_eq!(b.stats().dropped_unroutable, 1);
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_every_handle_shuts_the_endpoint_down() {
        with_timeout(async {
            let (b, _b_in) = endpoint(config(true, &[], 16)).await;
            let b_addr = b.local_addr().expect("b listens");
            let mut raw = TcpStream::connect(b_addr).await.expect("connecting");
            eventually(|| b.stats().connections_accepted == 1).await;
            drop(b);
            assert_closed_by_peer(&mut raw).await;
        })
        .await;
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed_and_counted() {
        with_timeout(async {
            let mut limited = config(true, &[], 16);
            limited.accepted_connections_max = 2;
            let (b, _b_in) = endpoint(limited).await;
            let address = b.local_addr().expect("b listens");
            let _first = TcpStream::connect(address).await.expect("first connects");
            let _second = TcpStream::connect(address).await.expect("second connects");
            eventually(|| b.stats().connections_accepted == 2).await;
            let mut third = TcpStream::connect(address).await.expect("the TCP handshake completes");
            let mut byte = [0u8; 1];
            let closed = matches!(third.read(&mut byte).await, Ok(0) | Err(_));
            assert!(closed, "the connection beyond the limit is closed");
            assert_eq!(b.stats().connections_refused_limit, 1);
            // Once a connection ends its place is free again (the server notices the close
            // asynchronously, so retry until it has).
            drop(_first);
            let mut later = Vec::new();
            while b.stats().connections_accepted < 3 {
                later.push(TcpStream::connect(address).await.expect("connects"));
                sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(b.stats().connections_accepted, 3);
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn invalid_configurations_are_refused() {
        let (sender, _receiver) = mpsc::channel(1);
        let mut zero_queue = config(true, &[], 0);
        assert_eq!(
            start(zero_queue.clone(), sender.clone()).await.map(|_| ()).map_err(|e| e.kind()),
            Err(io::ErrorKind::InvalidInput)
        );
        zero_queue.send_queue_frames_max = 1;
        zero_queue.reconnect_min_ms = 500;
        zero_queue.reconnect_max_ms = 100;
        assert_eq!(start(zero_queue, sender).await.map(|_| ()).map_err(|e| e.kind()), Err(io::ErrorKind::InvalidInput));
    }

    /// The actix runtime: a current-thread tokio runtime driving a `LocalSet`.
    #[test]
    fn works_on_a_current_thread_runtime_with_a_local_set() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("building a runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async {
            with_timeout(async {
                let (b, mut b_in) = endpoint(config(true, &[], 16)).await;
                let b_addr = b.local_addr().expect("b listens");
                let (a, mut a_in) = endpoint(config(false, &[(B, b_addr)], 256)).await;
                for seq in 0..100 {
                    a.send_to_peer(B, frame(&prepare(seq)));
                }
                let mut last = None;
                for seq in 0..100 {
                    let got = recv(&mut b_in).await;
                    assert_eq!(seq_of(&got.message), seq);
                    last = Some(got.connection);
                }
                let connection = last.expect("a connection");
                b.send_to_connection(connection, frame(&reply(10)));
                assert_eq!(recv(&mut a_in).await.message, reply(10));
                a.shutdown();
                b.shutdown();
            })
            .await;
        });
    }
}
