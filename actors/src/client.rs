//! The client library: [`Client::connect`], then [`Client::invoke`] and [`Client::query`]
//! with the service's own operation and reply types.
//!
//! A [`ClientActor`] shells the framework's client role: it signs requests (unless the
//! cluster trusts client connections), sends them (to the primary of the latest view it
//! knows, or to everyone on retransmission), collects verified replies until `f + 1` match,
//! and resolves the caller's future.
//!
//! Replies are checked on the client's own thread, not on the verifier pool: a replica
//! sends a client all its replies from one batch in one frame under one signed Merkle root,
//! and the client checks each root's signature once and remembers it (a bounded
//! [`ReplyRootCache`]), so the work per reply is a few hashes. In a cluster with
//! `client_auth = "connection"` a reply counts for the replica whose connection (the
//! client's dialed link) it came on. Many requests may
//! be in flight at once, up to the client window; invocations beyond it wait in the client,
//! in arrival order and up to [`ClientOptions::held_invocations_max`], and are sent as
//! earlier ones complete. After a view change the client follows
//! the replies: once `f + 1` replicas answer from a later view, it sends to that view's
//! primary.

use crate::clock::{now, wall_clock_micros};
use crate::transport::{self, Inbound, TransportConfig, TransportHandle};
use crate::verifier::VerifierPool;
use actix::prelude::*;
use bulwark_crypto::KeyPair;
use bulwark_framework::messages::{Report, VerifiedMessage, VerifiedReply};
use bulwark_framework::roles::client::{Client as ClientRole, ClientAction, ClientError as RoleError, ClientInput};
use bulwark_framework::roles::Role;
use bulwark_framework::verify::{check_scope, verify_reply, verify_reply_bundle, Refusal, ReplyRootCache};
use bulwark_framework::wire::encode_frame;
use bulwark_framework::{Membership, MembershipHandle, Message, Outcome, PeerId, ReplicaId, Service, Timestamp, View};
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Why an invocation failed. Every variant is final for that request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    #[error("no f + 1 matching replies within {0:?}")]
    Timeout(Duration),
    #[error("too many requests outstanding: {0}")]
    WindowFull(String),
    #[error("operation too large: {0}")]
    TooLarge(String),
    #[error("the replicas refused the operation: it did not decode as the service's operation type")]
    MalformedOperation,
    #[error("the operation is not read-only; use invoke")]
    NotReadOnly,
    #[error("the service failed on this operation (it panicked at every replica); the operation had no effect")]
    ServiceFailed,
    #[error(
        "the operation took effect, but its reply of {bytes} bytes is over the cluster's reply_bytes_max of {limit}"
    )]
    ReplyTooLarge { bytes: u64, limit: u64 },
    #[error("the reply did not decode as the service's reply type: {0}")]
    BadReply(String),
    #[error("the operation could not be encoded: {0}")]
    Encode(String),
    #[error("the client actor stopped")]
    Stopped,
}

/// Why a client could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("transport: {0}")]
    Io(#[from] std::io::Error),
}

/// Client options.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// How long [`Client::invoke`] waits for `f + 1` matching replies.
    pub timeout: Duration,
    /// Frames queued per replica link before they are dropped (and counted).
    pub send_queue_frames_max: usize,
    /// Invocations held while the client window is full; one more fails at once with
    /// [`InvokeError::WindowFull`]. A held invocation's [`ClientOptions::timeout`] runs
    /// from the call, so waiting counts against it.
    pub held_invocations_max: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions { timeout: Duration::from_secs(10), send_queue_frames_max: 4096, held_invocations_max: 4096 }
    }
}

type Waiter = oneshot::Sender<Result<Vec<u8>, InvokeError>>;

/// Issue a request; resolves to a receiver for its result.
struct Invoke {
    operation: Vec<u8>,
    read_only: bool,
}

impl actix::Message for Invoke {
    type Result = Result<oneshot::Receiver<Result<Vec<u8>, InvokeError>>, InvokeError>;
}

/// Ask every replica for a REPORT; resolves with those that answer within `wait`.
struct Inquire {
    wait: Duration,
}

impl actix::Message for Inquire {
    type Result = Result<oneshot::Receiver<Vec<Report>>, InvokeError>;
}

/// The client actor.
pub struct ClientActor {
    role: ClientRole,
    transport: TransportHandle,
    replicas: Vec<ReplicaId>,
    waiters: BTreeMap<Timestamp, Waiter>,
    /// Invocations waiting for room in the client window, oldest first.
    held: VecDeque<(Invoke, Waiter)>,
    held_max: usize,
    membership: MembershipHandle,
    /// Reply roots whose signatures were checked.
    roots: ReplyRootCache,
    /// Checks the (rare, signed) REPORTs off this thread.
    verifier: VerifierPool,
    timer: Option<SpawnHandle>,
    inquiries: BTreeMap<u64, (Vec<Report>, oneshot::Sender<Vec<Report>>)>,
    next_nonce: u64,
}

impl std::fmt::Debug for ClientActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientActor({})", self.role.id())
    }
}

impl Actor for ClientActor {
    type Context = Context<Self>;
}

impl ClientActor {
    fn send_frame(&self, to: ReplicaId, frame: Bytes) {
        self.transport.send_to_peer(PeerId::new(self.membership.current().cluster(), to), frame);
    }

    fn encode(&self, message: &VerifiedMessage) -> Result<Bytes, InvokeError> {
        let frame = encode_frame(self.membership.scope(), &message.to_wire());
        frame.map(Bytes::from).map_err(|e| InvokeError::Encode(e.to_string()))
    }

    fn carry_out(&mut self, actions: Vec<ClientAction>, ctx: &mut Context<Self>) {
        for action in actions {
            match action {
                ClientAction::Send { to, request } => {
                    if let Ok(frame) = self.encode(&VerifiedMessage::Request(request)) {
                        self.send_frame(to, frame);
                    }
                }
                ClientAction::Broadcast { request } => {
                    if let Ok(frame) = self.encode(&VerifiedMessage::Request(request)) {
                        for replica in self.replicas.clone() {
                            self.send_frame(replica, frame.clone());
                        }
                    }
                }
                ClientAction::SetTimer { at } => {
                    if let Some(handle) = self.timer.take() {
                        ctx.cancel_future(handle);
                    }
                    self.timer = Some(ctx.run_later(at.saturating_since(now()), |actor, ctx| {
                        actor.timer = None;
                        let actions = actor.role.handle(ClientInput::Timer, now());
                        actor.carry_out(actions, ctx);
                    }));
                }
                // Taken by `issue` before the rest is carried out.
                ClientAction::Issued { .. } | ClientAction::Rejected(_) => {}
                ClientAction::Completed { timestamp, result } => {
                    if let Some(waiter) = self.waiters.remove(&timestamp) {
                        let _ = waiter.send(Ok(result));
                    }
                    if !self.held.is_empty() {
                        self.issue_held(ctx);
                    }
                }
            }
        }
    }
}

impl Handler<Invoke> for ClientActor {
    type Result = Result<oneshot::Receiver<Result<Vec<u8>, InvokeError>>, InvokeError>;

    fn handle(&mut self, invoke: Invoke, ctx: &mut Context<Self>) -> Self::Result {
        let (waiter, receiver) = oneshot::channel();
        // Behind invocations already waiting it waits too: arrival order is kept.
        let wait = if self.held.is_empty() { self.issue(invoke, waiter, ctx).err() } else { Some((invoke, waiter)) };
        if let Some((invoke, waiter)) = wait {
            self.hold(invoke, waiter)?;
        }
        Ok(receiver)
    }
}

impl ClientActor {
    /// Hands `invoke` to the client role. Gives it back when the client window is full.
    fn issue(&mut self, invoke: Invoke, waiter: Waiter, ctx: &mut Context<Self>) -> Result<(), (Invoke, Waiter)> {
        if self.role.window_full() {
            return Err((invoke, waiter));
        }
        let input = ClientInput::Invoke { operation: invoke.operation, read_only: invoke.read_only };
        let actions = self.role.handle(input, now());
        match actions.first() {
            Some(ClientAction::Issued { timestamp }) => {
                self.waiters.insert(*timestamp, waiter);
                self.carry_out(actions, ctx);
            }
            Some(ClientAction::Rejected(e @ RoleError::OperationTooLarge { .. })) => {
                let _ = waiter.send(Err(InvokeError::TooLarge(e.to_string())));
            }
            Some(ClientAction::Rejected(e @ RoleError::WindowFull { .. })) => {
                let _ = waiter.send(Err(InvokeError::WindowFull(e.to_string())));
            }
            other => tracing::error!(?other, "the client role answered an invocation with neither issued nor rejected"),
        }
        Ok(())
    }

    fn hold(&mut self, invoke: Invoke, waiter: Waiter) -> Result<(), InvokeError> {
        if self.held.len() >= self.held_max {
            return Err(InvokeError::WindowFull(format!(
                "the client window is full and {} invocations already wait (held_invocations_max)",
                self.held.len()
            )));
        }
        self.held.push_back((invoke, waiter));
        Ok(())
    }

    /// Issues held invocations while the window has room; drops those whose caller gave up.
    fn issue_held(&mut self, ctx: &mut Context<Self>) {
        while let Some((invoke, waiter)) = self.held.pop_front() {
            if waiter.is_closed() {
                continue;
            }
            if let Err(back) = self.issue(invoke, waiter, ctx) {
                self.held.push_front(back);
                break;
            }
        }
    }
}

impl Handler<Inquire> for ClientActor {
    type Result = Result<oneshot::Receiver<Vec<Report>>, InvokeError>;

    fn handle(&mut self, inquire: Inquire, ctx: &mut Context<Self>) -> Self::Result {
        let nonce = self.next_nonce;
        self.next_nonce += 1;
        let inquiry = VerifiedMessage::Inquiry(self.role.inquiry(nonce));
        let frame = self.encode(&inquiry)?;
        for replica in self.replicas.clone() {
            self.send_frame(replica, frame.clone());
        }
        let (sender, receiver) = oneshot::channel();
        self.inquiries.insert(nonce, (Vec::new(), sender));
        ctx.run_later(inquire.wait, move |actor, _| {
            if let Some((reports, sender)) = actor.inquiries.remove(&nonce) {
                let _ = sender.send(reports);
            }
        });
        Ok(receiver)
    }
}

/// Messages read from the replicas' connections, not yet verified, in arrival order.
struct FromReplicas(Vec<Inbound>);

impl actix::Message for FromReplicas {
    type Result = ();
}

impl ClientActor {
    /// Whether a reply to `timestamp` may still matter. Replies to completed requests (the
    /// ones after the f + 1-th) are dropped before anything is checked.
    fn wanted(&self, timestamp: Timestamp) -> bool {
        self.waiters.contains_key(&timestamp)
    }

    /// Verifies the replies in `message` (dropping unwanted ones first); a refusal closes
    /// the connection it came on, as on a replica.
    fn take_replies(&mut self, inbound: Inbound) -> Result<Vec<VerifiedReply>, Refusal> {
        let Inbound { link, scope, message, .. } = inbound;
        let membership = self.membership.current();
        check_scope(scope, message.kind(), &membership)?;
        // A link counts only as a replica of this cluster.
        let link = link.filter(|peer| peer.cluster == membership.cluster()).map(|peer| peer.replica);
        match message {
            Message::Reply(signed) => {
                if !self.wanted(signed.payload.timestamp) {
                    return Ok(Vec::new());
                }
                Ok(vec![verify_reply(signed, link, &membership)?])
            }
            Message::Replies(mut bundle) => {
                bundle.replies.retain(|bundled| self.waiters.contains_key(&bundled.reply.timestamp));
                if bundle.replies.is_empty() {
                    return Ok(Vec::new());
                }
                verify_reply_bundle(bundle, link, &membership, &mut self.roots)
            }
            _ => Ok(Vec::new()),
        }
    }

    fn on_report(&mut self, report: bulwark_crypto::Verified<Report>) {
        let n = self.replicas.len();
        let done = match self.inquiries.get_mut(&report.nonce) {
            Some((reports, _)) if report.client == self.role.id() => {
                if !reports.iter().any(|r| r.replica == report.replica) {
                    reports.push(*report.payload());
                }
                reports.len() == n
            }
            _ => false,
        };
        if done {
            if let Some((reports, sender)) = self.inquiries.remove(&report.nonce) {
                let _ = sender.send(reports);
            }
        }
    }
}

impl Handler<FromReplicas> for ClientActor {
    type Result = ();

    fn handle(&mut self, FromReplicas(messages): FromReplicas, ctx: &mut Context<Self>) {
        for inbound in messages {
            let connection = inbound.connection;
            match &inbound.message {
                Message::Reply(_) | Message::Replies(_) => {}
                Message::Report(_) => {
                    // Signed by a replica: checked on the verifier pool, then handed back.
                    let pool = self.verifier.clone();
                    let check = async move { pool.verify(inbound.scope, inbound.message).await };
                    ctx.spawn(check.into_actor(self).map(|checked, actor, _| {
                        if let Ok(Ok(VerifiedMessage::Report(report))) = checked {
                            actor.on_report(report);
                        }
                    }));
                    continue;
                }
                // A client uses nothing else; replica traffic such as a NEW-VIEW carries
                // hundreds of signatures, and a faulty replica must not make a client check
                // them.
                other => {
                    tracing::debug!(kind = other.kind().as_str(), "client ignores a non-reply message");
                    continue;
                }
            }
            match self.take_replies(inbound) {
                Ok(replies) => {
                    for reply in replies {
                        let actions = self.role.handle(ClientInput::Reply(reply), now());
                        self.carry_out(actions, ctx);
                    }
                }
                Err(refusal) => {
                    tracing::warn!(%connection, %refusal, "closing connection after a refused reply");
                    if let Ok(mut counts) = self.verifier.refused.lock() {
                        counts.record(&refusal);
                    }
                    self.transport.close_connection(connection);
                }
            }
        }
    }
}

/// Most inbound messages handed to the client actor in one actor message.
const INBOUND_CHUNK_MAX: usize = 256;

/// Moves what the transport reads to the client actor, in chunks of what is already
/// waiting (one actor message per burst, not per reply). Awaiting each chunk's handling is
/// the backpressure: nothing more is read meanwhile.
fn forward_to_client(mut inbound: mpsc::Receiver<Inbound>, target: Addr<ClientActor>) {
    actix::spawn(async move {
        while let Some(first) = inbound.recv().await {
            let mut chunk = vec![first];
            while chunk.len() < INBOUND_CHUNK_MAX {
                match inbound.try_recv() {
                    Ok(next) => chunk.push(next),
                    Err(_) => break,
                }
            }
            if target.send(FromReplicas(chunk)).await.is_err() {
                break;
            }
        }
    });
}

/// A client of a service `S`.
#[derive(Debug)]
pub struct Client<S: Service> {
    addr: Addr<ClientActor>,
    transport: TransportHandle,
    options: ClientOptions,
    _service: PhantomData<fn() -> S>,
}

impl<S: Service> Clone for Client<S> {
    fn clone(&self) -> Self {
        Client {
            addr: self.addr.clone(),
            transport: self.transport.clone(),
            options: self.options.clone(),
            _service: PhantomData,
        }
    }
}

impl<S: Service> Client<S> {
    /// Connects to the cluster: dials every replica and starts the client actor on the
    /// current arbiter. Must be called inside a running actix System. Replies are verified
    /// on the client's own thread (see the module documentation), REPORTs on `verifier`'s.
    pub async fn connect(
        membership: Membership,
        addresses: BTreeMap<ReplicaId, SocketAddr>,
        key: KeyPair,
        verifier: VerifierPool,
        options: ClientOptions,
    ) -> Result<Self, ConnectError> {
        let (inbound_tx, inbound_rx) = mpsc::channel(1024);
        let cluster = membership.cluster();
        let transport = transport::start(
            TransportConfig {
                listen: None,
                peers: addresses
                    .into_iter()
                    .map(|(replica, address)| (PeerId::new(cluster, replica), address))
                    .collect(),
                frame_bytes_max: membership.params.frame_bytes_max,
                send_queue_frames_max: options.send_queue_frames_max,
                reconnect_min_ms: 20,
                reconnect_max_ms: 1_000,
                accepted_connections_max: transport::ACCEPTED_CONNECTIONS_MAX,
                wan: BTreeMap::new(),
            },
            inbound_tx,
        )
        .await?;
        let replicas = membership.replicas().collect();
        let membership = MembershipHandle::new(membership);
        let role = ClientRole::new(key, membership.clone(), Timestamp(wall_clock_micros()));
        let actor = ClientActor {
            role,
            transport: transport.clone(),
            replicas,
            waiters: BTreeMap::new(),
            held: VecDeque::new(),
            held_max: options.held_invocations_max,
            membership,
            roots: ReplyRootCache::default(),
            verifier,
            timer: None,
            inquiries: BTreeMap::new(),
            next_nonce: 1,
        };
        let addr = actor.start();
        forward_to_client(inbound_rx, addr.clone());
        Ok(Client { addr, transport, options, _service: PhantomData })
    }

    /// Like [`Client::connect`], but runs the client actor and its connections on
    /// `arbiter`'s thread (so many clients in one process use several cores).
    pub async fn connect_on(
        arbiter: &ArbiterHandle,
        membership: Membership,
        addresses: BTreeMap<ReplicaId, SocketAddr>,
        key: KeyPair,
        verifier: VerifierPool,
        options: ClientOptions,
    ) -> Result<Self, ConnectError> {
        crate::on_arbiter(arbiter, "client", Self::connect(membership, addresses, key, verifier, options)).await?
    }

    /// Executes `op` through the ordering protocol and returns the service's reply once
    /// `f + 1` replicas agree on it.
    pub async fn invoke(&self, op: &S::Op) -> Result<S::Reply, InvokeError> {
        self.call(op, false).await
    }

    /// Answers a read-only `op` from the replicas' current state (`2f + 1` matching
    /// replies), falling back to ordering when they disagree.
    pub async fn query(&self, op: &S::Op) -> Result<S::Reply, InvokeError> {
        self.call(op, true).await
    }

    async fn call(&self, op: &S::Op, read_only: bool) -> Result<S::Reply, InvokeError> {
        let operation = rmp_serde::to_vec(op).map_err(|e| InvokeError::Encode(e.to_string()))?;
        let receiver = self.addr.send(Invoke { operation, read_only }).await.map_err(|_| InvokeError::Stopped)??;
        let result = match tokio::time::timeout(self.options.timeout, receiver).await {
            Err(_) => return Err(InvokeError::Timeout(self.options.timeout)),
            Ok(Err(_)) => return Err(InvokeError::Stopped),
            Ok(Ok(result)) => result?,
        };
        match rmp_serde::from_slice::<Outcome<S::Reply>>(&result) {
            Ok(Outcome::Ok(reply)) => Ok(reply),
            Ok(Outcome::MalformedOperation) => Err(InvokeError::MalformedOperation),
            Ok(Outcome::NotReadOnly) => Err(InvokeError::NotReadOnly),
            Ok(Outcome::ServiceFailed) => Err(InvokeError::ServiceFailed),
            Ok(Outcome::ReplyTooLarge { bytes, limit }) => Err(InvokeError::ReplyTooLarge { bytes, limit }),
            Err(e) => Err(InvokeError::BadReply(e.to_string())),
        }
    }

    /// Asks every replica where it is; returns the reports that arrive within `wait`.
    pub async fn inquire(&self, wait: Duration) -> Result<Vec<Report>, InvokeError> {
        let receiver = self.addr.send(Inquire { wait }).await.map_err(|_| InvokeError::Stopped)??;
        let mut reports = receiver.await.map_err(|_| InvokeError::Stopped)?;
        reports.sort_by_key(|r| r.replica);
        Ok(reports)
    }

    /// The view this client believes current: it sends new requests to that view's
    /// primary, and follows replies to a later view once `f + 1` replicas vouch for it.
    pub async fn view(&self) -> Result<View, InvokeError> {
        self.addr.send(GetView).await.map_err(|_| InvokeError::Stopped)
    }

    /// Closes the client's connections.
    pub fn close(&self) {
        self.transport.shutdown();
        self.addr.do_send(StopClient);
    }
}

/// Ask the client which view it believes current.
struct GetView;

impl actix::Message for GetView {
    type Result = View;
}

impl Handler<GetView> for ClientActor {
    type Result = MessageResult<GetView>;

    fn handle(&mut self, _: GetView, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.role.view())
    }
}

struct StopClient;

impl actix::Message for StopClient {
    type Result = ();
}

impl Handler<StopClient> for ClientActor {
    type Result = ();

    fn handle(&mut self, _: StopClient, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
