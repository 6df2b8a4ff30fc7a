//! The replica actor: a thin shell around [`bulwark_framework::Replica`].
//!
//! It hands every verified message and timer firing to the framework replica and carries
//! out the actions that come back: encode and send over the transport, arm its status
//! timer with `ctx.run_later`, route replies to the connection their client used, pass
//! what the replica hands its primary role, its checkpoint collector and its view-changer
//! to their actors ([`crate::primary`], [`crate::checkpoints`], [`crate::view_changer`])
//! and their answers back. It makes no protocol decision of its own; those live in
//! `framework`, where the simulator tests them.
//!
//! Inbound path: transport (decode, frame limits) → bounded forwarder → verifier pool
//! (signatures, on other threads) → this actor. Each replica actor runs on its own
//! [`Arbiter`], together with its transport tasks. Bad input closes the connection it came
//! on: undecodable frames in the transport, refused ones (bad signature, unknown sender,
//! ...) in the forwarder.
//!
//! Byzantine mode ([`ReplicaSetup::byzantine`]): the actor drives the simulator's
//! [`ByzantineReplica`] instead, over the same transport and verifier, so the strategies the
//! simulator checks can be run against a real cluster (`bulwark demo --byzantine`,
//! `bulwark bench --attack`). Its sends go out as frames and its timers come from the actor
//! context, exactly as for a correct replica; it has no store and no status.
//!
//! Durability: with a store ([`ReplicaSetup::data_dir`]) the records of each `handle` call
//! (`Action::Persist`) go to the store's writer thread as one group, and every later action
//! waits until they are durable; calls handled while a commit is under way share the next
//! one (group commit, see [`crate::store`]). Without a store the records are dropped.

use crate::checkpoints::{CheckpointActor, Collect, Collected};
use crate::clock::now;
use crate::primary::{FromPrimary, PrimaryActor, ToPrimary};
use crate::recent_requests::{RequestKey, SharedRecentRequests};
use crate::store::{store_path, Opened, Store, StoreEvent, StoreMetrics, StoreWriter};
use crate::transport::{
    self, ConnectionId, Inbound, InboundLanes, TransportConfig, TransportHandle, TransportStats, WeakTransportHandle,
};
use crate::verifier::{Origin, PoolStopped, VerifierPool};
use crate::view_changer::{FromViewChanger, ToViewChanger, ViewChangerActor};
use actix::prelude::*;
use bulwark_crypto::Digest;
use bulwark_crypto::KeyPair;
use bulwark_framework::config::ClientAuth;
use bulwark_framework::messages::{reply_messages, MessageKind, VerifiedMessage, VerifiedReply};
use bulwark_framework::roles::node::{Roles, RolesFootprint};
use bulwark_framework::roles::replica::{Footprint, ReplicaMetrics};
use bulwark_framework::roles::ReplicaEvent;
use bulwark_framework::sim::byzantine::{ByzantineAction, ByzantineReplica, Strategy};
use bulwark_framework::verify::RefusalCounts;
use bulwark_framework::verify::{check_scope, verify_requests, ClientKeyCache, Refusal};
use bulwark_framework::wire::encode_frame;
use bulwark_framework::{
    Action, ClientId, Input, Instant, Membership, MembershipHandle, PeerId, Replica, ReplicaId, Scope, SeqNum, Service,
    TimerKind, View,
};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Client messages (requests, inquiries) a replica may be verifying or handling at once.
/// Beyond this the client lane stops reading, and TCP pushes back on the clients.
const CLIENT_IN_FLIGHT_MAX: usize = 512;

/// Protocol messages from all peer replicas together that a replica may be verifying or
/// handling at once, shared equally among the members (see [`replica_in_flight_per_sender_max`]).
const REPLICA_IN_FLIGHT_MAX: usize = 512;

/// A peer's share of [`REPLICA_IN_FLIGHT_MAX`] never falls below this, however large the
/// cluster: a PRE-PREPARE, its PREPAREs and COMMITs and a CHECKPOINT in flight at once.
const REPLICA_IN_FLIGHT_PER_SENDER_MIN: usize = 16;

/// Protocol messages one peer may have in verification or handling at once. Each peer has
/// its own lane and its own budget, so one that floods (valid or not) fills only its own
/// lane and TCP pushes back on it alone; the others' messages still get through.
fn replica_in_flight_per_sender_max(n: usize) -> usize {
    (REPLICA_IN_FLIGHT_MAX / n.max(1)).max(REPLICA_IN_FLIGHT_PER_SENDER_MIN)
}

/// Inbound messages a replica may be verifying or handling at once, every lane together:
/// the bound on its actor's mailbox.
fn inbound_in_flight_max(n: usize) -> usize {
    CLIENT_IN_FLIGHT_MAX + n * replica_in_flight_per_sender_max(n)
}

/// Client connections remembered for routing replies.
const CLIENT_ROUTES_MAX: usize = 65_536;

/// A verified message and the connection it came on.
#[derive(Debug)]
pub struct Deliver {
    pub message: VerifiedMessage,
    pub connection: ConnectionId,
}

impl actix::Message for Deliver {
    type Result = ();
}

/// Ask a replica where it is.
#[derive(Debug)]
pub struct GetStatus;

impl actix::Message for GetStatus {
    /// `None` for a Byzantine replica, whose state means nothing.
    type Result = Option<ReplicaStatus>;
}

/// Stop the replica and its transport.
#[derive(Debug)]
pub struct Stop;

impl actix::Message for Stop {
    type Result = ();
}

/// A replica's state, for status output, metrics and tests.
#[derive(Debug, Clone)]
pub struct ReplicaStatus {
    pub id: ReplicaId,
    /// The last view this replica entered.
    pub view: View,
    /// The view this replica is changing to, while a view change is under way.
    pub view_change_target: Option<View>,
    pub stable: SeqNum,
    pub last_executed: SeqNum,
    pub state_digest: Digest,
    pub metrics: ReplicaMetrics,
    pub footprint: Footprint,
    pub transport: TransportStats,
    /// The durable store's counters (`None` without a data dir).
    pub store: Option<StoreStatus>,
}

/// A durable replica's store counters and what it holds back for them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStatus {
    pub metrics: StoreMetrics,
    /// Groups of records submitted (one per `handle` call that persisted anything); each
    /// write transaction commits one or more of them.
    pub groups: u64,
    /// Actions waiting for their records to become durable.
    pub held_actions: usize,
    /// Times inbound delivery was paused because `held_actions` passed
    /// [`HELD_ACTIONS_MAX`] (a disk slower than the load).
    pub inbound_pauses: u64,
}

/// Actions a durable replica may hold for the disk before it stops taking inbound
/// messages. While paused, the forwarder reads nothing more, the transport's bounded
/// inbound channel fills, and TCP flow control pushes back on the senders: a disk that
/// stalls for seconds costs latency, not memory. Delivery resumes below half of this.
pub const HELD_ACTIONS_MAX: usize = 65_536;

/// Opened and closed by the replica actor; the forwarder waits at it before reading the
/// next inbound message.
#[derive(Debug, Clone, Default)]
pub(crate) struct InboundGate {
    closed: Arc<std::sync::atomic::AtomicBool>,
    reopened: Arc<tokio::sync::Notify>,
}

impl InboundGate {
    fn close(&self) -> bool {
        !self.closed.swap(true, std::sync::atomic::Ordering::SeqCst)
    }

    fn open(&self) {
        if self.closed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.reopened.notify_waiters();
        }
    }

    async fn wait_open(&self) {
        loop {
            // Created before the check, so an `open` between the check and the await is
            // not missed.
            let reopened = self.reopened.notified();
            if !self.closed.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            reopened.await;
        }
    }
}

/// Holds a durable replica's actions back until the records before them are durable.
///
/// Each `handle` call's records are submitted as one group with the next ticket; every
/// action after them waits for that ticket, and so does every action of a later call while
/// anything is still waiting (an action never overtakes a record that came before it).
#[derive(Debug)]
struct GroupCommit {
    writer: StoreWriter,
    submitted: u64,
    durable: u64,
    held: VecDeque<(u64, Action)>,
    gate: InboundGate,
    inbound_pauses: u64,
}

impl GroupCommit {
    /// Pauses inbound delivery above [`HELD_ACTIONS_MAX`] held actions, resumes it below
    /// half of that.
    fn regulate(&mut self) {
        if self.held.len() > HELD_ACTIONS_MAX {
            if self.gate.close() {
                self.inbound_pauses += 1;
                tracing::warn!(held = self.held.len(), "the disk is behind: pausing inbound messages");
            }
        } else if self.held.len() <= HELD_ACTIONS_MAX / 2 {
            self.gate.open();
        }
    }

    /// Takes one call's actions: submits its records and returns what may be carried out
    /// now (nothing, while an earlier or this call's records are not yet durable).
    fn admit(&mut self, actions: Vec<Action>) -> Vec<Action> {
        let mut records = Vec::new();
        let mut rest = Vec::with_capacity(actions.len());
        for action in actions {
            match action {
                Action::Persist(record) => records.push(record),
                other => rest.push(other),
            }
        }
        if !records.is_empty() {
            self.submitted += 1;
            // A writer that stopped has reported its failure; the replica is stopping.
            let _ = self.writer.submit(self.submitted, records);
        }
        if self.durable == self.submitted && self.held.is_empty() {
            return rest;
        }
        let ticket = self.submitted;
        self.held.extend(rest.into_iter().map(|action| (ticket, action)));
        Vec::new()
    }

    /// Everything up to `ticket` is durable: the actions that waited only for it, in order.
    fn durable(&mut self, ticket: u64) -> Vec<Action> {
        self.durable = self.durable.max(ticket);
        let ready = self.held.iter().take_while(|(t, _)| *t <= self.durable).count();
        self.held.drain(..ready).map(|(_, action)| action).collect()
    }

    fn status(&self) -> StoreStatus {
        StoreStatus {
            metrics: self.writer.metrics(),
            groups: self.submitted,
            held_actions: self.held.len(),
            inbound_pauses: self.inbound_pauses,
        }
    }
}

/// What the actor drives: a correct framework replica or a Byzantine one.
// One per actor, held in place: boxing the correct replica would only add an indirection
// to the hot path to save memory that is never saved.
#[allow(clippy::large_enum_variant)]
enum Node<S: Service> {
    Correct(Replica<S>),
    Byzantine(Box<ByzantineReplica>),
}

/// The replica actor.
pub struct ReplicaActor<S: Service> {
    id: ReplicaId,
    membership: MembershipHandle,
    replica: Node<S>,
    transport: TransportHandle,
    timers: BTreeMap<TimerKind, SpawnHandle>,
    client_routes: BTreeMap<ClientId, ConnectionId>,
    peer_connections: BTreeSet<ConnectionId>,
    /// The first actions (of `Replica::start` or `Replica::recover`), carried out once the
    /// actor runs.
    initial: Vec<Action>,
    /// The store and the actions waiting for it (`None` without a data dir).
    durability: Option<GroupCommit>,
    /// The replica's roles run apart, each an actor of its own (none for a Byzantine node).
    roles: Option<RoleActors>,
    /// What the roles run apart hold, as they last said.
    gauges: Arc<RoleGauges>,
}

/// The actors of a replica's roles run apart.
#[derive(Debug)]
struct RoleActors {
    checkpoints: Addr<CheckpointActor>,
    primary: Addr<PrimaryActor>,
    view_changer: Addr<ViewChangerActor>,
}

impl RoleActors {
    /// Starts `roles` as actors on this arbiter, answering `replica`; each keeps its part
    /// of `gauges` and the primary role and the view-changer their set of saturated clients.
    fn start<S: Service + Send + Unpin>(
        roles: Roles,
        replica: &Addr<ReplicaActor<S>>,
        gauges: &Arc<RoleGauges>,
        saturated: &Saturation,
    ) -> Self {
        let Roles { primary, collector, view_changer } = roles;
        RoleActors {
            checkpoints: CheckpointActor::new(collector, replica.clone().recipient(), gauges.clone()).start(),
            primary: PrimaryActor::new(primary, replica.clone().recipient(), saturated.primary.clone(), gauges.clone())
                .start(),
            view_changer: ViewChangerActor::new(
                view_changer,
                replica.clone().recipient(),
                saturated.view_changer.clone(),
                gauges.clone(),
            )
            .start(),
        }
    }
}

/// What a replica's roles run as actors of their own hold, for its status: each role's
/// actor sets its part after every step.
#[derive(Debug, Default)]
pub(crate) struct RoleGauges {
    pub(crate) checkpoint_votes: AtomicUsize,
    pub(crate) queued_requests: AtomicUsize,
    pub(crate) in_flight_batches: AtomicUsize,
    pub(crate) waiting_requests: AtomicUsize,
    pub(crate) view_changes_held: AtomicUsize,
}

impl RoleGauges {
    /// `footprint` of the replica's own actor, with what its roles run apart hold.
    fn add_to(&self, footprint: Footprint) -> Footprint {
        let read = |gauge: &AtomicUsize| gauge.load(std::sync::atomic::Ordering::Relaxed);
        footprint.with_roles_apart(RolesFootprint {
            checkpoint_votes: read(&self.checkpoint_votes),
            queued_requests: read(&self.queued_requests),
            in_flight_batches: read(&self.in_flight_batches),
            waiting_requests: read(&self.waiting_requests),
            view_changes_held: read(&self.view_changes_held),
        })
    }
}

/// The clients saturated at a replica, by the role that holds their requests: the
/// primary role (queued) and the view-changer (waiting to execute).
#[derive(Debug, Clone, Default)]
pub(crate) struct Saturation {
    pub(crate) primary: SaturatedClients,
    pub(crate) view_changer: SaturatedClients,
}

impl Saturation {
    fn contains(&self, client: ClientId) -> bool {
        self.primary.contains(client) || self.view_changer.contains(client)
    }
}

/// Clients that hold their whole `client_window` at one of a replica's roles (see
/// [`bulwark_framework::roles::node::Node::client_saturated`]): the role's actor keeps the
/// set, the replica's inbound lanes drop those clients' requests before verification.
/// Only a client sending more than a correct one may is ever in it.
#[derive(Debug, Clone, Default)]
pub(crate) struct SaturatedClients(Arc<std::sync::Mutex<Saturated>>);

#[derive(Debug, Default)]
pub(crate) struct Saturated {
    clients: BTreeSet<ClientId>,
    /// Where the next step's re-reading starts (the set is re-read in turns).
    cursor: Option<ClientId>,
}

/// Clients of the set re-read per step: a bound on a step's extra work however many
/// clients an attacker keeps saturated (each is left in the set at most a few steps long).
const SATURATED_REREAD_PER_STEP: usize = 16;

impl SaturatedClients {
    pub(crate) fn contains(&self, client: ClientId) -> bool {
        self.0.lock().is_ok_and(|saturated| saturated.clients.contains(&client))
    }

    /// Empties the set: its role no longer holds any client's requests.
    pub(crate) fn clear(&self) {
        if let Ok(mut saturated) = self.0.lock() {
            saturated.clients.clear();
            saturated.cursor = None;
        }
    }

    /// Re-reads, after a step of a role, the saturation of `touched` (the client whose
    /// request it handled) and of up to [`SATURATED_REREAD_PER_STEP`] clients of the set,
    /// taken in turn; `is_saturated` is the role's own answer.
    pub(crate) fn refresh(&self, is_saturated: impl Fn(ClientId, Instant) -> bool, touched: Option<ClientId>) {
        let Ok(mut saturated) = self.0.lock() else {
            return;
        };
        if saturated.clients.is_empty() && touched.is_none() {
            return;
        }
        let now = now();
        let start = saturated.cursor.map_or(ClientId(0), |c| ClientId(c.0.wrapping_add(1)));
        let turn: Vec<ClientId> = saturated
            .clients
            .range(start..)
            .chain(saturated.clients.range(..start))
            .take(SATURATED_REREAD_PER_STEP)
            .copied()
            .collect();
        saturated.cursor = turn.last().copied();
        for client in turn {
            if !is_saturated(client, now) {
                saturated.clients.remove(&client);
            }
        }
        if let Some(client) = touched {
            if is_saturated(client, now) {
                saturated.clients.insert(client);
            } else {
                saturated.clients.remove(&client);
            }
        }
    }
}

impl<S: Service> std::fmt::Debug for ReplicaActor<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReplicaActor({})", self.id)
    }
}

impl<S: Service + Send + Unpin> Actor for ReplicaActor<S> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // The mailbox only ever holds what the bounded forwarder lets through.
        ctx.set_mailbox_capacity(inbound_in_flight_max(self.membership.current().n()) + 16);
        let actions = std::mem::take(&mut self.initial);
        self.carry_out(actions, ctx);
    }
}

impl<S: Service + Send + Unpin> ReplicaActor<S> {
    fn encode(&self, message: &VerifiedMessage) -> Option<Bytes> {
        self.encode_wire(&message.to_wire())
    }

    fn encode_wire(&self, message: &bulwark_framework::Message) -> Option<Bytes> {
        match encode_frame(self.membership.scope(), message) {
            Ok(frame) => Some(Bytes::from(frame)),
            Err(error) => {
                tracing::error!(%error, "could not encode an outgoing message");
                None
            }
        }
    }

    /// Carries out one `handle` call's actions; with a store, only once the records among
    /// them (and every earlier call's) are durable.
    fn carry_out(&mut self, actions: Vec<Action>, ctx: &mut Context<Self>) {
        let actions = match &mut self.durability {
            Some(group) => {
                let ready = group.admit(actions);
                group.regulate();
                ready
            }
            None => actions,
        };
        self.perform(actions, ctx);
    }

    fn perform(&mut self, actions: Vec<Action>, ctx: &mut Context<Self>) {
        // Replies are gathered per client and sent after the loop: one frame carries every
        // reply a client gets from one batch, under one signed root (or unsigned).
        let mut replies: BTreeMap<ClientId, Vec<VerifiedReply>> = BTreeMap::new();
        // What goes to each role's actor goes in one message, in order.
        let mut to_primary = Vec::new();
        let mut to_view_changer = Vec::new();
        for action in actions {
            match action {
                Action::Send { to, message } => {
                    if let Some(frame) = self.encode(&message) {
                        self.send_to_member(to, frame);
                    }
                }
                Action::Broadcast { message } => {
                    if let Some(frame) = self.encode(&message) {
                        self.broadcast(frame);
                    }
                }
                Action::Reply { client, reply } => replies.entry(client).or_default().push(reply),
                Action::Report { client, report } => {
                    self.answer_client(client, &VerifiedMessage::Report(report));
                }
                Action::SetTimer { timer, at } => self.set_timer(timer, at, ctx),
                Action::Event(event) => self.observe(event),
                Action::ToCheckpoints(input) => {
                    if let Some(roles) = &self.roles {
                        roles.checkpoints.do_send(Collect(input));
                    }
                }
                Action::ToPrimary(input) => to_primary.push(input),
                Action::ToViewChanger(input) => to_view_changer.push(input),
                // Taken out by `GroupCommit::admit`; without a data dir nothing is persisted.
                Action::Persist(_) => {}
            }
        }
        for (client, replies) in replies {
            for message in reply_messages(&replies) {
                self.answer_client_wire(client, &message);
            }
        }
        if let Some(roles) = &self.roles {
            if !to_primary.is_empty() {
                roles.primary.do_send(ToPrimary(to_primary));
            }
            if !to_view_changer.is_empty() {
                roles.view_changer.do_send(ToViewChanger(to_view_changer));
            }
        }
    }

    fn send_to_member(&self, member: ReplicaId, frame: Bytes) {
        self.transport.send_to_peer(PeerId::new(self.membership.current().cluster(), member), frame);
    }

    /// Sends `frame` to every other member.
    fn broadcast(&self, frame: Bytes) {
        let membership = self.membership.current();
        for member in membership.replicas().filter(|member| *member != self.id) {
            self.transport.send_to_peer(PeerId::new(membership.cluster(), member), frame.clone());
        }
    }

    /// Arms `timer` to fire at `at`, replacing the pending one of that kind: a correct
    /// replica's status timer (its roles' actors run theirs), every timer of a Byzantine
    /// one. The node keeps its own deadlines, the actor only delivers the firing. A firing is never delivered
    /// before `at` by the runtime's clock: some roles ignore an early one without re-arming
    /// (the view-change timer would then be lost), so the actor waits out the remainder.
    fn set_timer(&mut self, timer: TimerKind, at: Instant, ctx: &mut Context<Self>) {
        if let Some(handle) = self.timers.remove(&timer) {
            ctx.cancel_future(handle);
        }
        let delay = at.saturating_since(now());
        let handle = ctx.run_later(delay, move |actor, ctx| {
            actor.timers.remove(&timer);
            if now() < at {
                actor.set_timer(timer, at, ctx);
                return;
            }
            let actions = actor.step(Input::Timer(timer), ctx);
            actor.carry_out(actions, ctx);
        });
        self.timers.insert(timer, handle);
    }

    /// Hands `input` to the node. A correct replica's actions come back to be carried out
    /// in order with the store; a Byzantine replica's are carried out here and now (it has
    /// no store): its messages encoded and sent as they are, its timers armed.
    fn step(&mut self, input: Input, ctx: &mut Context<Self>) -> Vec<Action> {
        let byzantine = match &mut self.replica {
            Node::Correct(replica) => return replica.handle(input, now()),
            Node::Byzantine(byzantine) => byzantine.handle(input, now()),
        };
        for action in byzantine {
            match action {
                ByzantineAction::Send { to, message } => {
                    if let Some(frame) = self.encode_wire(&message) {
                        self.send_to_member(to, frame);
                    }
                }
                ByzantineAction::SetTimer { timer, at } => self.set_timer(timer, at, ctx),
            }
        }
        Vec::new()
    }

    /// Events carry no decisions; view changes are worth a log line at `info`.
    fn observe(&self, event: ReplicaEvent) {
        let replica = self.id;
        match event {
            ReplicaEvent::ViewChangeStarted { view } => {
                tracing::info!(%replica, view = view.0, "view change started: VIEW-CHANGE sent");
            }
            ReplicaEvent::EnteredView { view, .. } => {
                let primary = self.membership.current().primary(view);
                tracing::info!(%replica, view = view.0, primary = primary.0, "entered view");
            }
            // A NEW-VIEW is large; the others are small enough to print whole.
            event => tracing::trace!(%replica, ?event),
        }
    }

    fn answer_client(&mut self, client: ClientId, message: &VerifiedMessage) {
        self.answer_client_wire(client, &message.to_wire());
    }

    fn answer_client_wire(&mut self, client: ClientId, message: &bulwark_framework::Message) {
        match self.client_routes.get(&client) {
            Some(connection) => {
                if let Some(frame) = self.encode_wire(message) {
                    self.transport.send_to_connection(*connection, frame);
                }
            }
            None => tracing::debug!(%client, "no connection to answer this client on"),
        }
    }

    /// Remembers which connection a client's requests come on, never a peer replica's
    /// connection (a relayed request must not divert the client's replies).
    fn route(&mut self, client: ClientId, connection: ConnectionId) {
        if self.peer_connections.contains(&connection) {
            return;
        }
        if self.client_routes.len() >= CLIENT_ROUTES_MAX && !self.client_routes.contains_key(&client) {
            self.client_routes.pop_first();
        }
        self.client_routes.insert(client, connection);
    }
}

impl<S: Service + Send + Unpin> Handler<DeliverAll> for ReplicaActor<S> {
    type Result = ();

    fn handle(&mut self, DeliverAll(messages): DeliverAll, ctx: &mut Context<Self>) {
        let mut actions = Vec::new();
        for Deliver { message, connection } in messages {
            self.note_origin(&message, connection);
            actions.extend(self.step(Input::Message(message), ctx));
        }
        self.carry_out(actions, ctx);
    }
}

impl<S: Service + Send + Unpin> ReplicaActor<S> {
    /// Client requests (and inquiries) say which connection answers go to; anything else
    /// marks its connection as a peer's.
    fn note_origin(&mut self, message: &VerifiedMessage, connection: ConnectionId) {
        match message {
            VerifiedMessage::Request(request) => self.route(request.client(), connection),
            VerifiedMessage::Inquiry(inquiry) => {
                self.route(bulwark_framework::messages::client_id(&inquiry.client_key), connection)
            }
            _ => {
                self.peer_connections.insert(connection);
            }
        }
    }
}

impl<S: Service + Send + Unpin> Handler<Deliver> for ReplicaActor<S> {
    type Result = ();

    fn handle(&mut self, Deliver { message, connection }: Deliver, ctx: &mut Context<Self>) {
        self.note_origin(&message, connection);
        let actions = self.step(Input::Message(message), ctx);
        self.carry_out(actions, ctx);
    }
}

impl<S: Service + Send + Unpin> Handler<Collected> for ReplicaActor<S> {
    type Result = ();

    fn handle(&mut self, Collected(output): Collected, ctx: &mut Context<Self>) {
        let actions = self.step(Input::Checkpoints(output), ctx);
        self.carry_out(actions, ctx);
    }
}

impl<S: Service + Send + Unpin> Handler<FromPrimary> for ReplicaActor<S> {
    type Result = ();

    fn handle(&mut self, FromPrimary(outputs): FromPrimary, ctx: &mut Context<Self>) {
        let mut actions = Vec::new();
        for output in outputs {
            actions.extend(self.step(Input::Primary(output), ctx));
        }
        self.carry_out(actions, ctx);
    }
}

impl<S: Service + Send + Unpin> Handler<FromViewChanger> for ReplicaActor<S> {
    type Result = ();

    fn handle(&mut self, FromViewChanger(outputs): FromViewChanger, ctx: &mut Context<Self>) {
        let mut actions = Vec::new();
        for output in outputs {
            actions.extend(self.step(Input::ViewChanger(output), ctx));
        }
        self.carry_out(actions, ctx);
    }
}

impl<S: Service + Send + Unpin> Handler<StoreEvent> for ReplicaActor<S> {
    type Result = ();

    fn handle(&mut self, event: StoreEvent, ctx: &mut Context<Self>) {
        match event {
            StoreEvent::Durable(ticket) => {
                let ready = match self.durability.as_mut() {
                    Some(group) => {
                        let ready = group.durable(ticket);
                        group.regulate();
                        ready
                    }
                    None => Vec::new(),
                };
                self.perform(ready, ctx);
            }
            StoreEvent::Failed(reason) => {
                // Without its store the replica cannot keep its promises: it stops, and what
                // it held back is never sent.
                tracing::error!(replica = %self.id, %reason, "durable store failed: stopping the replica");
                self.durability = None;
                self.transport.shutdown();
                ctx.stop();
            }
        }
    }
}

impl<S: Service + Send + Unpin> Handler<GetStatus> for ReplicaActor<S> {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        let Node::Correct(replica) = &self.replica else {
            return MessageResult(None);
        };
        MessageResult(Some(ReplicaStatus {
            id: replica.id(),
            view: replica.view(),
            view_change_target: replica.view_change_target(),
            stable: replica.stable(),
            last_executed: replica.last_executed(),
            state_digest: replica.state_digest(),
            metrics: replica.metrics().clone(),
            footprint: self.gauges.add_to(replica.footprint()),
            transport: self.transport.stats(),
            store: self.durability.as_ref().map(GroupCommit::status),
        }))
    }
}

impl<S: Service + Send + Unpin> Handler<Stop> for ReplicaActor<S> {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        self.transport.shutdown();
        ctx.stop();
    }
}

/// A running replica: its actor, transport and the verifier pool it uses.
#[derive(Debug)]
pub struct ReplicaHandle<S: Service + Send + Unpin> {
    pub id: ReplicaId,
    pub addr: Addr<ReplicaActor<S>>,
    pub transport: TransportHandle,
    pub verifier: VerifierPool,
}

impl<S: Service + Send + Unpin> Clone for ReplicaHandle<S> {
    fn clone(&self) -> Self {
        ReplicaHandle {
            id: self.id,
            addr: self.addr.clone(),
            transport: self.transport.clone(),
            verifier: self.verifier.clone(),
        }
    }
}

impl<S: Service + Send + Unpin> ReplicaHandle<S> {
    /// `None` for a stopped or Byzantine replica.
    pub async fn status(&self) -> Option<ReplicaStatus> {
        self.addr.send(GetStatus).await.ok().flatten()
    }

    /// Messages refused at the edge (decode and signature checks), by reason.
    pub fn refused(&self) -> RefusalCounts {
        let mut counts = self.verifier.refused();
        counts.merge(&self.transport.stats().refused);
        counts
    }

    pub fn stop(&self) {
        self.addr.do_send(Stop);
    }
}

/// Everything needed to start one replica.
#[derive(Debug)]
pub struct ReplicaSetup<S> {
    pub id: ReplicaId,
    pub key: KeyPair,
    /// The cluster's membership; the replica and its roles share one handle on it.
    pub membership: Membership,
    /// Where each member listens (this replica's own entry is its listen address).
    pub addresses: BTreeMap<ReplicaId, SocketAddr>,
    pub service: S,
    pub verifier: VerifierPool,
    /// Frames queued per outbound link before they are dropped (and counted).
    pub send_queue_frames_max: usize,
    /// Where the durable store goes (`replica-<id>.redb` in it). With one the replica
    /// comes back from it with `Replica::recover` and persists every record before acting
    /// on it; without one nothing is persisted.
    pub data_dir: Option<PathBuf>,
    /// Run the simulator's Byzantine replica with this strategy instead of a correct one
    /// (`service` and `data_dir` are then unused: it executes nothing and keeps no store).
    pub byzantine: Option<Strategy>,
}

/// Starts a replica on `arbiter`: binds its listener, dials its peers, starts the
/// verification forwarder and the actor. Must be called inside a running actix System.
pub async fn spawn_replica<S: Service + Send + Unpin>(
    setup: ReplicaSetup<S>,
    arbiter: &ArbiterHandle,
) -> std::io::Result<ReplicaHandle<S>> {
    crate::on_arbiter(arbiter, "replica", start_on_this_arbiter(setup)).await?
}

async fn start_on_this_arbiter<S: Service + Send + Unpin>(setup: ReplicaSetup<S>) -> std::io::Result<ReplicaHandle<S>> {
    let ReplicaSetup { id, key, membership, addresses, service, verifier, send_queue_frames_max, data_dir, byzantine } =
        setup;
    let cluster = membership.cluster();
    let frame_bytes_max = membership.params.frame_bytes_max;
    let members = Arc::new(membership.clone());
    let membership = MembershipHandle::new(membership);
    // The store first: a replica that cannot open it must not start at all.
    let store = match (&data_dir, byzantine) {
        (Some(dir), None) => Some(open_store(dir, id, &membership)?),
        _ => None,
    };
    let listen = *addresses.get(&id).ok_or_else(|| std::io::Error::other(format!("no address for replica {id}")))?;
    let peers = addresses.iter().filter(|(r, _)| **r != id).map(|(r, a)| (PeerId::new(cluster, *r), *a)).collect();
    let (inbound_lanes, inbound_receivers) = inbound_lanes(&members);
    let transport = transport::start(
        TransportConfig {
            listen: Some(listen),
            peers,
            frame_bytes_max,
            send_queue_frames_max,
            reconnect_min_ms: 20,
            reconnect_max_ms: 1_000,
            accepted_connections_max: transport::ACCEPTED_CONNECTIONS_MAX,
        },
        inbound_lanes,
    )
    .await?;
    let (replica, initial, store) = match (store, byzantine) {
        (_, Some(strategy)) => {
            tracing::warn!(replica = %id, strategy = strategy.name(), "starting as a Byzantine replica");
            (Node::Byzantine(Box::new(ByzantineReplica::new(id, key, members.clone(), strategy))), Vec::new(), None)
        }
        (Some((store, opened)), None) => {
            let (replica, initial) = Replica::recover(id, key, membership.clone(), service, opened.recovered, now());
            (Node::Correct(replica), initial, Some(store))
        }
        (None, None) => {
            let mut replica = Replica::new(id, key, membership.clone(), service);
            let initial = replica.start(now());
            (Node::Correct(replica), initial, None)
        }
    };
    // The writer reports to the actor, so the actor's address comes first; the actor runs
    // only once its store is ready, so it never acts without persisting.
    let ctx = Context::new();
    let gate = InboundGate::default();
    let saturated = Saturation::default();
    let durability = match store {
        Some(store) => match StoreWriter::start(store, ctx.address().recipient()) {
            Ok(writer) => Some(GroupCommit {
                writer,
                submitted: 0,
                durable: 0,
                held: VecDeque::new(),
                gate: gate.clone(),
                inbound_pauses: 0,
            }),
            Err(error) => {
                transport.shutdown();
                return Err(error);
            }
        },
        None => None,
    };
    // The checkpoint collector, the primary role and the view-changer run as actors of
    // their own, on this arbiter too; they hear the initial actions once the replica's
    // actor runs.
    let gauges = Arc::new(RoleGauges::default());
    let roles = match &replica {
        Node::Correct(replica) => {
            let roles = Roles::new(id, replica.key(), replica.membership());
            Some(RoleActors::start(roles, &ctx.address(), &gauges, &saturated))
        }
        Node::Byzantine(_) => None,
    };
    let addr = ctx.run(ReplicaActor {
        roles,
        gauges,
        id,
        membership,
        replica,
        transport: transport.clone(),
        timers: BTreeMap::new(),
        client_routes: BTreeMap::new(),
        peer_connections: BTreeSet::new(),
        initial,
        durability,
    });
    let lanes = Lanes { byzantine, gate, recent: Default::default(), saturated };
    forward(inbound_receivers, verifier.clone(), addr.clone().recipient(), addr.clone().recipient(), &transport, lanes);
    Ok(ReplicaHandle { id, addr, transport, verifier })
}

/// Opens replica `id`'s store under `dir` and logs what it holds.
fn open_store(dir: &std::path::Path, id: ReplicaId, membership: &MembershipHandle) -> std::io::Result<(Store, Opened)> {
    let path = store_path(dir, id);
    let (store, opened) = Store::open(&path, membership.clone()).map_err(std::io::Error::other)?;
    let recovered = &opened.recovered;
    tracing::info!(
        replica = %id,
        file = %path.display(),
        records = opened.records,
        stable = recovered.low().0,
        committed_above = recovered.committed.len(),
        view = recovered.view().0,
        discarded = opened.discarded.is_some(),
        "durable store opened"
    );
    Ok((store, opened))
}

/// The receiving ends of a replica's inbound lanes: one for clients, one per member.
#[derive(Debug)]
pub(crate) struct InboundReceivers {
    client: mpsc::Receiver<Inbound>,
    replicas: Vec<mpsc::Receiver<Inbound>>,
}

/// A replica's inbound lanes: clients' messages in one, each member's protocol messages
/// in its own (by the sender they claim, [`Origin::of`]). The transport's readers wait for
/// room in their message's lane only, so clients filling theirs do not hold up the
/// replicas' traffic, nor does one flooding replica hold up the others'.
pub(crate) fn inbound_lanes(membership: &Arc<Membership>) -> (InboundLanes, InboundReceivers) {
    let n = membership.n();
    let (client_tx, client) = mpsc::channel(CLIENT_IN_FLIGHT_MAX);
    let (replica_txs, replicas): (Vec<_>, Vec<_>) =
        (0..n).map(|_| mpsc::channel(replica_in_flight_per_sender_max(n))).unzip();
    let mut senders = vec![client_tx];
    senders.extend(replica_txs);
    let membership = membership.clone();
    // Lane 0 is the clients'; member `i` of the sorted member list has lane `1 + i`.
    let lanes = InboundLanes::new(senders, move |message| match Origin::of(message, &membership) {
        Origin::Client => 0,
        Origin::Replica(replica) => 1 + membership.replicas().position(|member| member == replica).unwrap_or(0),
    });
    (lanes, InboundReceivers { client, replicas })
}

/// Moves inbound messages through the verifier pool to `target`, lane by lane, and none
/// while `gate` is closed (a durable replica whose disk is behind; see
/// [`HELD_ACTIONS_MAX`]). Each lane has its own budget of messages in flight (taken before
/// verification, returned once the actor has handled the message): [`CLIENT_IN_FLIGHT_MAX`]
/// for clients, [`replica_in_flight_per_sender_max`] for each member. A lane out of budget
/// stops reading; the others go on. The verifier pool then serves the replicas' lanes
/// first (see [`crate::verifier`]).
///
/// Client requests that are already waiting together (up to [`REQUEST_CHUNK_MAX`]) are
/// verified as one ed25519 batch and handed to `batch_target` in one actor message, so the
/// primary pays about half a signature check per request and one actor hop per burst
/// rather than per request. With `client_auth = "connection"` they are only size-checked,
/// here, without a trip to the pool.
///
/// A message the verifier refuses (counted there) proves its sender misbehaves: every
/// [`Refusal`](bulwark_framework::verify::Refusal) it returns is a bad signature, a sender
/// outside the cluster, a malformed batch or an invalid certificate inside a VIEW-CHANGE or
/// NEW-VIEW, never a matter of protocol state. The connection it came on is closed through
/// `transport` (and counted there); messages already read from it are still verified and
/// delivered on their own merit. `transport` is held weakly, so the forwarder never keeps
/// an endpoint running that its owner has dropped.
pub(crate) fn forward(
    receivers: InboundReceivers,
    verifier: VerifierPool,
    target: Recipient<Deliver>,
    batch_target: Recipient<DeliverAll>,
    transport: &TransportHandle,
    lanes: Lanes,
) {
    let transport = transport.downgrade();
    let per_sender = replica_in_flight_per_sender_max(receivers.replicas.len());
    for replica_lane in receivers.replicas {
        actix::spawn(forward_replica_lane(
            replica_lane,
            per_sender,
            verifier.clone(),
            target.clone(),
            transport.clone(),
            lanes.clone(),
        ));
    }
    actix::spawn(forward_client_lane(receivers.client, verifier, target, batch_target, transport, lanes));
}

/// What the inbound lanes of one replica share besides the verifier.
#[derive(Debug, Clone, Default)]
pub(crate) struct Lanes {
    /// The strategy of a Byzantine replica: messages it does not read are dropped
    /// unverified ([`Strategy::listens_to`]).
    pub(crate) byzantine: Option<Strategy>,
    /// Closed while the replica's store catches up (group commit).
    pub(crate) gate: InboundGate,
    /// Client requests this replica verified lately: a copy (a relay, a broadcast, a
    /// request sent again) is not verified again.
    pub(crate) recent: SharedRecentRequests,
    /// Clients holding their whole window at this replica's primary role or view-changer:
    /// their requests are dropped unverified.
    pub(crate) saturated: Saturation,
}

impl Lanes {
    /// Whether `message` is verified and delivered at all.
    fn wanted(&self, message: &bulwark_framework::Message) -> bool {
        self.byzantine.is_none_or(|strategy| strategy.listens_to(message.kind()))
    }

    /// Whether `request` comes from a client that holds its whole window here already.
    fn over_window(&self, request: &SignedRequest) -> bool {
        self.saturated.contains(request.payload.client())
    }

    /// `request` as verified before by this replica, if it was lately.
    fn recall(
        &self,
        scope: Scope,
        request: &SignedRequest,
    ) -> Option<bulwark_crypto::Verified<bulwark_framework::messages::Request>> {
        let key = RequestKey::of(scope, request)?;
        self.recent.lock().ok()?.get(key)
    }

    fn remember(&self, request: &bulwark_crypto::Verified<bulwark_framework::messages::Request>) {
        if let Ok(mut recent) = self.recent.lock() {
            recent.insert(request.clone());
        }
    }
}

/// One member's lane: each message verified on its own, at most `in_flight_max` at once.
async fn forward_replica_lane(
    mut inbound: mpsc::Receiver<Inbound>,
    in_flight_max: usize,
    verifier: VerifierPool,
    target: Recipient<Deliver>,
    transport: WeakTransportHandle,
    lanes: Lanes,
) {
    let permits = Arc::new(Semaphore::new(in_flight_max));
    loop {
        lanes.gate.wait_open().await;
        let Some(Inbound { connection, scope, message, .. }) = inbound.recv().await else {
            break;
        };
        if !lanes.wanted(&message) {
            continue;
        }
        // A request relayed by a backup (R3): dropped if its client holds its window here,
        // delivered without a second check if this replica verified it already (in the
        // scope its envelope names, which must be this replica's).
        if let bulwark_framework::Message::Request(request) = &message {
            if lanes.over_window(request) {
                continue;
            }
            if let Some(known) = lanes.recall(scope, request).filter(|_| scope == verifier.membership.scope()) {
                let _ = target.send(Deliver { message: VerifiedMessage::Request(known), connection }).await;
                continue;
            }
        }
        if !spawn_verify_and_deliver(&permits, scope, message, connection, &verifier, &target, &transport, &lanes).await
        {
            return;
        }
    }
}

/// Takes one of `permits` (waiting while all are in use: that is the lane's backpressure)
/// and verifies and delivers `message` on a task of its own. False once the permits are
/// closed.
#[allow(clippy::too_many_arguments)]
async fn spawn_verify_and_deliver(
    permits: &Arc<Semaphore>,
    scope: Scope,
    message: bulwark_framework::Message,
    connection: ConnectionId,
    verifier: &VerifierPool,
    target: &Recipient<Deliver>,
    transport: &WeakTransportHandle,
    lanes: &Lanes,
) -> bool {
    let Ok(permit) = permits.clone().acquire_owned().await else {
        return false;
    };
    let (verifier, target, transport, lanes) = (verifier.clone(), target.clone(), transport.clone(), lanes.clone());
    actix::spawn(verify_and_deliver(scope, message, connection, verifier, target, transport, lanes, permit));
    true
}

/// Verifies `message` and hands it to `target`; `permit` is held until the actor handled
/// it.
#[allow(clippy::too_many_arguments)]
async fn verify_and_deliver(
    scope: Scope,
    message: bulwark_framework::Message,
    connection: ConnectionId,
    verifier: VerifierPool,
    target: Recipient<Deliver>,
    transport: WeakTransportHandle,
    lanes: Lanes,
    permit: OwnedSemaphorePermit,
) {
    match verifier.verify(scope, message).await {
        Ok(Ok(message)) => {
            if let VerifiedMessage::Request(request) = &message {
                lanes.remember(request);
            }
            let _ = target.send(Deliver { message, connection }).await;
        }
        Ok(Err(refusal)) => close_refused(&transport, connection, &refusal),
        // The verifier pool is gone: the system is stopping.
        Err(PoolStopped) => {}
    }
    drop(permit);
}

/// Client requests read but not yet handed to verification, at most
/// [`CLIENT_REQUESTS_WAITING_MAX`], queued per connection and taken in turn (Aardvark's
/// fairness for clients): a connection flooding valid requests gets one place per round
/// in each verification job, like every other connection with requests waiting, instead of
/// the whole job. When the bound is reached the longest queue loses its newest request,
/// unverified, so a flood costs its sender its own requests, not the others', and no CPU.
#[derive(Debug, Default)]
pub(crate) struct FairRequests {
    queues: BTreeMap<ConnectionId, VecDeque<SignedRequest>>,
    /// Connections with requests waiting, in the order they are served next.
    turns: VecDeque<ConnectionId>,
    waiting: usize,
}

/// A client request as read, before its signature is checked.
type SignedRequest = bulwark_crypto::Signed<bulwark_framework::messages::Request>;

/// Client requests [`FairRequests`] holds at most. A correct client has at most its window
/// outstanding, and the verifier takes [`REQUEST_CHUNK_MAX`] at a time.
const CLIENT_REQUESTS_WAITING_MAX: usize = 4 * REQUEST_CHUNK_MAX;

impl FairRequests {
    /// Queues `request`; returns how many requests were shed to stay within the bound.
    pub(crate) fn push(&mut self, connection: ConnectionId, request: SignedRequest) -> u64 {
        let queue = self.queues.entry(connection).or_default();
        if queue.is_empty() {
            self.turns.push_back(connection);
        }
        queue.push_back(request);
        self.waiting += 1;
        if self.waiting <= CLIENT_REQUESTS_WAITING_MAX {
            return 0;
        }
        let longest = self.queues.iter().max_by_key(|(_, queue)| queue.len()).map(|(c, _)| *c);
        if let Some(longest) = longest {
            let queue = self.queues.get_mut(&longest).expect("found above");
            queue.pop_back();
            self.waiting -= 1;
            if queue.is_empty() {
                self.queues.remove(&longest);
                self.turns.retain(|c| *c != longest);
            }
        }
        1
    }

    /// Up to `max` requests, one from each connection in turn.
    pub(crate) fn take(&mut self, max: usize) -> Vec<(ConnectionId, SignedRequest)> {
        let mut taken = Vec::with_capacity(max.min(self.waiting));
        while taken.len() < max {
            let Some(connection) = self.turns.pop_front() else { break };
            let queue = self.queues.get_mut(&connection).expect("a connection in turn has a queue");
            taken.push((connection, queue.pop_front().expect("a connection in turn has a request")));
            self.waiting -= 1;
            if queue.is_empty() {
                self.queues.remove(&connection);
            } else {
                self.turns.push_back(connection);
            }
        }
        taken
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.waiting == 0
    }
}

/// The clients' lane: requests are verified in jobs taken in turn from each connection's
/// queue ([`FairRequests`]), anything else (inquiries, messages claiming a sender outside
/// the cluster) on its own; at most [`CLIENT_IN_FLIGHT_MAX`] at once.
async fn forward_client_lane(
    mut inbound: mpsc::Receiver<Inbound>,
    verifier: VerifierPool,
    target: Recipient<Deliver>,
    batch_target: Recipient<DeliverAll>,
    transport: WeakTransportHandle,
    lanes: Lanes,
) {
    let permits = Arc::new(Semaphore::new(CLIENT_IN_FLIGHT_MAX));
    let mut fair = FairRequests::default();
    loop {
        lanes.gate.wait_open().await;
        // Wait for input only when nothing is queued; otherwise take what is already
        // waiting, so requests that arrived in one burst are verified as one job and handed
        // to the replica in one message.
        let mut arrived = Vec::new();
        if fair.is_empty() {
            let Some(first) = inbound.recv().await else {
                break;
            };
            arrived.push(first);
        }
        while arrived.len() < CLIENT_REQUESTS_WAITING_MAX {
            match inbound.try_recv() {
                Ok(next) => arrived.push(next),
                Err(_) => break,
            }
        }
        let mut shed = 0;
        let mut known = Vec::new();
        let membership = verifier.membership.current();
        let signed_requests = membership.params.client_auth == ClientAuth::Signed;
        for Inbound { connection, scope, message, .. } in arrived {
            if !lanes.wanted(&message) {
                continue;
            }
            if let bulwark_framework::Message::Request(request) = message {
                // Requests are verified in jobs of many, all in this replica's scope: one
                // for another cluster is refused here, for what it is.
                if let Err(refusal) = check_scope(scope, MessageKind::Request, &membership) {
                    if let Ok(mut counts) = verifier.refused.lock() {
                        counts.record(&refusal);
                    }
                    close_refused(&transport, connection, &refusal);
                    continue;
                }
                if lanes.over_window(&request) {
                    shed += 1;
                    continue;
                }
                // Only a checked signature is worth remembering (with connection-trusted
                // links nothing is checked, so nothing is looked up either).
                match signed_requests.then(|| lanes.recall(scope, &request)).flatten() {
                    Some(request) => known.push(Deliver { message: VerifiedMessage::Request(request), connection }),
                    None => shed += fair.push(connection, request),
                }
                continue;
            }
            if !spawn_verify_and_deliver(&permits, scope, message, connection, &verifier, &target, &transport, &lanes)
                .await
            {
                return;
            }
        }
        if !known.is_empty() {
            let _ = batch_target.send(DeliverAll(known)).await;
        }
        if shed > 0 {
            tracing::debug!(shed, "client requests over their connection's share shed unverified");
            if let Ok(mut counts) = verifier.refused.lock() {
                counts.add(bulwark_framework::verify::RefusalKind::OverClientShare, shed);
            }
        }
        let requests = fair.take(REQUEST_CHUNK_MAX);
        if requests.is_empty() {
            continue;
        }
        let Ok(permit) = permits.clone().acquire_many_owned(requests.len() as u32).await else {
            return;
        };
        let (connections, signed): (Vec<ConnectionId>, Vec<_>) = requests.into_iter().unzip();
        if membership.params.client_auth == ClientAuth::Connection {
            // Nothing to check but sizes: done here rather than on another thread.
            let mut keys = ClientKeyCache::default();
            let results = verify_requests(signed, &membership, &mut keys);
            deliver_requests(connections, results, &batch_target, &transport, &verifier, None).await;
            drop(permit);
            continue;
        }
        let batch_target = batch_target.clone();
        let transport = transport.clone();
        let pool = verifier.clone();
        let lanes = lanes.clone();
        actix::spawn(async move {
            if let Ok(results) = pool.verify_requests(signed).await {
                deliver_requests(connections, results, &batch_target, &transport, &pool, Some(&lanes)).await;
            }
            drop(permit);
        });
    }
}

/// Client requests read together and handed to one verifier job (at most this many).
const REQUEST_CHUNK_MAX: usize = 256;

/// Verified messages handed to the replica actor in one go (its actions are carried out
/// once for all of them, so replies and sends are grouped).
#[derive(Debug)]
pub struct DeliverAll(pub Vec<Deliver>);

impl actix::Message for DeliverAll {
    type Result = ();
}

fn close_refused(transport: &WeakTransportHandle, connection: ConnectionId, refusal: &Refusal) {
    tracing::warn!(%connection, %refusal, "closing connection after a refused message");
    if let Some(transport) = transport.upgrade() {
        transport.close_connection(connection);
    }
}

async fn deliver_requests(
    connections: Vec<ConnectionId>,
    results: Vec<Result<bulwark_crypto::Verified<bulwark_framework::messages::Request>, Refusal>>,
    target: &Recipient<DeliverAll>,
    transport: &WeakTransportHandle,
    pool: &VerifierPool,
    remember_in: Option<&Lanes>,
) {
    let mut delivers = Vec::with_capacity(results.len());
    for (connection, result) in connections.into_iter().zip(results) {
        match result {
            Ok(request) => {
                if let Some(lanes) = remember_in {
                    lanes.remember(&request);
                }
                delivers.push(Deliver { message: VerifiedMessage::Request(request), connection })
            }
            Err(refusal) => {
                if pool.membership.current().params.client_auth == ClientAuth::Connection {
                    // Checked here, not on the pool: count it where the pool counts.
                    if let Ok(mut counts) = pool.refused.lock() {
                        counts.record(&refusal);
                    }
                }
                close_refused(transport, connection, &refusal);
            }
        }
    }
    if !delivers.is_empty() {
        let _ = target.send(DeliverAll(delivers)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_crypto::{KeyPair, Signed};
    use bulwark_framework::messages::{MessageKind, Prepare, Request};
    use bulwark_framework::verify::RefusalKind;
    use bulwark_framework::{Message, Timestamp};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;
    use tokio::sync::watch;

    use crate::test_fixtures::{cluster, replica_key};

    fn signed_request(timestamp: u64) -> Signed<Request> {
        match request(timestamp) {
            Message::Request(signed) => signed,
            _ => unreachable!("request() builds a request"),
        }
    }

    /// A Byzantine replica's lanes drop what its strategy does not read before anything is
    /// verified; a correct replica's lanes pass everything.
    #[test]
    fn lanes_drop_unverified_what_an_attacker_does_not_read() {
        let lanes = |byzantine| Lanes { byzantine, ..Lanes::default() };
        let checkpoint = Message::Checkpoint(crate::test_fixtures::sign(
            bulwark_framework::messages::Checkpoint {
                seq: SeqNum(128),
                state_digest: Digest::of(b"state"),
                replica: ReplicaId(1),
            },
            &replica_key(1),
        ));
        for message in [request(1), prepare(1), checkpoint.clone()] {
            assert!(lanes(None).wanted(&message), "{:?}", message.kind());
            assert!(!lanes(Some(Strategy::Silent)).wanted(&message), "{:?}", message.kind());
        }
        let flood = lanes(Some(Strategy::Flood));
        assert!(flood.wanted(&checkpoint) && flood.wanted(&prepare(1)));
        assert!(!flood.wanted(&request(1)));
        assert!(lanes(Some(Strategy::EquivocatingPrimary)).wanted(&request(1)));
    }

    /// A client the replica reports saturated (it holds its whole window there) has its
    /// requests dropped before verification; another client's pass.
    #[test]
    fn lanes_drop_a_saturated_clients_requests_unverified() {
        let lanes = Lanes::default();
        let request = signed_request(1);
        assert!(!lanes.over_window(&request));
        lanes.saturated.view_changer.0.lock().unwrap().clients.insert(request.payload.client());
        assert!(lanes.over_window(&request));
        let other = crate::test_fixtures::sign(
            Request { client_key: replica_key(1).public().into(), ..request.payload.clone() },
            &replica_key(1),
        );
        assert!(!lanes.over_window(&other));
    }

    /// Aardvark's client fairness: a connection flooding requests gets one place per round
    /// in each verification job, and at the bound its own newest requests are shed, not
    /// another connection's.
    #[test]
    fn a_flooding_connection_gets_one_place_per_round_and_is_shed_first() {
        let (flood, client) = (ConnectionId(1), ConnectionId(2));
        let mut fair = FairRequests::default();
        for timestamp in 1..=100 {
            assert_eq!(fair.push(flood, signed_request(timestamp)), 0);
        }
        for timestamp in 1..=3 {
            fair.push(client, signed_request(1_000 + timestamp));
        }
        let taken: Vec<(u64, u64)> = fair.take(8).into_iter().map(|(c, r)| (c.0, r.payload.timestamp.0)).collect();
        assert_eq!(taken, vec![(1, 1), (2, 1001), (1, 2), (2, 1002), (1, 3), (2, 1003), (1, 4), (1, 5)]);
        let mut shed = 0;
        for timestamp in 101..=(CLIENT_REQUESTS_WAITING_MAX as u64 + 200) {
            shed += fair.push(flood, signed_request(timestamp));
        }
        fair.push(client, signed_request(2_000));
        shed += fair.push(client, signed_request(2_001));
        assert!(shed > 0, "the bound was reached");
        let taken = fair.take(2);
        assert_eq!(taken[1].0, client, "the client's requests survived the flood: {:?}", taken[1].1.payload.timestamp);
        assert_eq!(taken[1].1.payload.timestamp.0, 2_000);
        let rest = fair.take(usize::MAX);
        assert_eq!(rest.len() + 2, CLIENT_REQUESTS_WAITING_MAX, "held exactly the bound");
        assert!(rest.iter().any(|(c, r)| *c == client && r.payload.timestamp.0 == 2_001));
    }

    fn request(timestamp: u64) -> Message {
        let key = KeyPair::from_seed([100; 32]);
        let payload = Request {
            client_key: key.public().into(),
            timestamp: Timestamp(timestamp),
            read_only: false,
            operation: vec![],
        };
        Message::Request(crate::test_fixtures::sign(payload, &key))
    }

    fn prepare(replica: u32) -> Message {
        let payload =
            Prepare { view: View(0), seq: SeqNum(1), digest: Digest::of(b"batch"), replica: ReplicaId(replica) };
        Message::Prepare(crate::test_fixtures::sign(payload, &replica_key(replica)))
    }

    /// Stands in for the replica actor: records what it is handed, and holds every batch of
    /// client requests until `handling` opens, as a replica busy elsewhere would.
    struct Sink {
        protocol_messages: Arc<Mutex<Vec<MessageKind>>>,
        requests_handled: Arc<AtomicUsize>,
        requests_in_hand: Arc<AtomicUsize>,
        handling: watch::Receiver<bool>,
    }

    impl Actor for Sink {
        type Context = Context<Self>;
    }

    impl Handler<Deliver> for Sink {
        type Result = ();

        fn handle(&mut self, deliver: Deliver, _: &mut Context<Self>) {
            self.protocol_messages.lock().unwrap().push(deliver.message.kind());
        }
    }

    impl Handler<DeliverAll> for Sink {
        type Result = ResponseFuture<()>;

        fn handle(&mut self, DeliverAll(requests): DeliverAll, _: &mut Context<Self>) -> Self::Result {
            let mut handling = self.handling.clone();
            let handled = self.requests_handled.clone();
            let in_hand = self.requests_in_hand.clone();
            in_hand.fetch_add(requests.len(), Ordering::SeqCst);
            Box::pin(async move {
                let _ = handling.wait_for(|open| *open).await;
                in_hand.fetch_sub(requests.len(), Ordering::SeqCst);
                handled.fetch_add(requests.len(), Ordering::SeqCst);
            })
        }
    }

    async fn eventually(what: &str, condition: impl Fn() -> bool) {
        for _ in 0..30_000 {
            if condition() {
                return;
            }
            actix_rt::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("timed out waiting until {what}");
    }

    /// A client flood against a replica that is slow to handle requests: the client lane
    /// takes what its budget allows and then pushes back (nothing beyond a fixed bound is
    /// read), a PREPARE still passes straight through its own lane, and once the replica
    /// catches up every request read is delivered or, beyond the connection's share of the
    /// waiting queue, shed unverified and counted.
    #[actix_rt::test]
    async fn a_client_flood_is_bounded_and_does_not_hold_back_a_replica_message() {
        let cluster = cluster();
        let pool = VerifierPool::start(1, crate::test_fixtures::handle());
        let (lanes, receivers) = inbound_lanes(&cluster);
        let (unused_inbound, _) = mpsc::channel(1);
        let transport = transport::start(
            TransportConfig {
                listen: Some("127.0.0.1:0".parse().unwrap()),
                peers: BTreeMap::new(),
                frame_bytes_max: cluster.params.frame_bytes_max,
                send_queue_frames_max: 16,
                reconnect_min_ms: 20,
                reconnect_max_ms: 1_000,
                accepted_connections_max: 16,
            },
            unused_inbound,
        )
        .await
        .unwrap();
        let (open_handling, handling) = watch::channel(false);
        let protocol_messages = Arc::new(Mutex::new(Vec::new()));
        let requests_handled = Arc::new(AtomicUsize::new(0));
        let requests_in_hand = Arc::new(AtomicUsize::new(0));
        let sink = Sink {
            protocol_messages: protocol_messages.clone(),
            requests_handled: requests_handled.clone(),
            requests_in_hand: requests_in_hand.clone(),
            handling,
        }
        .start();
        forward(receivers, pool.clone(), sink.clone().recipient(), sink.recipient(), &transport, Lanes::default());

        let flood = 3_000;
        let flood_messages: Vec<Message> = (0..flood).map(|t| request(t as u64)).collect();
        let accepted = Arc::new(AtomicUsize::new(0));
        {
            let lanes = lanes.clone();
            let accepted = accepted.clone();
            actix_rt::spawn(async move {
                for message in flood_messages {
                    // What a connection's reader does: wait for room in the message's lane.
                    if lanes
                        .deliver(Inbound {
                            connection: ConnectionId(1),
                            link: None,
                            scope: crate::test_fixtures::SCOPE,
                            message,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    accepted.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        // The forwarder takes what waits in chunks and the budget per chunk, so the budget
        // is full to within one chunk.
        eventually("the client budget is in the replica's hands", || {
            requests_in_hand.load(Ordering::SeqCst) > CLIENT_IN_FLIGHT_MAX - REQUEST_CHUNK_MAX
        })
        .await;
        actix_rt::time::sleep(Duration::from_millis(300)).await;
        // In flight, waiting in the lane's channel, and what the forwarder's fair queue holds
        // while it waits for budget (one connection floods, so beyond that bound its newest
        // requests are shed as they are read): nothing more is kept.
        let shed = || pool.refused().get(RefusalKind::OverClientShare) as usize;
        let bound = CLIENT_IN_FLIGHT_MAX + CLIENT_IN_FLIGHT_MAX + CLIENT_REQUESTS_WAITING_MAX;
        let accepted_while_stuck = accepted.load(Ordering::SeqCst);
        let kept = accepted_while_stuck - shed();
        assert!(kept <= bound, "{kept} requests kept ({accepted_while_stuck} read), bound {bound}");
        assert!(requests_in_hand.load(Ordering::SeqCst) <= CLIENT_IN_FLIGHT_MAX, "the budget holds");

        lanes
            .deliver(Inbound {
                connection: ConnectionId(2),
                link: None,
                scope: crate::test_fixtures::SCOPE,
                message: prepare(1),
            })
            .await
            .unwrap();
        eventually("the PREPARE reached the replica", || !protocol_messages.lock().unwrap().is_empty()).await;
        assert_eq!(*protocol_messages.lock().unwrap(), vec![MessageKind::Prepare]);
        assert_eq!(requests_handled.load(Ordering::SeqCst), 0, "the PREPARE did not wait for the clients");

        open_handling.send_replace(true);
        eventually("every request was delivered or shed", || requests_handled.load(Ordering::SeqCst) + shed() == flood)
            .await;
        assert_eq!(accepted.load(Ordering::SeqCst), flood);
        // Whether the flood also outruns verification once the replica catches up, and so
        // is shed at the waiting bound, depends on how fast the verifier is: it stopped
        // doing so reliably when requests became batch-verified (about 20 µs each instead
        // of 37 µs). Shedding at the bound is pinned by
        // `a_flooding_connection_gets_one_place_per_round_and_is_shed_first`.
    }

    /// Disk back-pressure: while the gate is closed the forwarder's wait does not end; it
    /// ends as soon as the gate opens, however the two race.
    #[actix_rt::test]
    async fn a_closed_inbound_gate_holds_the_reader_until_it_opens() {
        let gate = InboundGate::default();
        assert!(gate.close(), "the first close is counted");
        assert!(!gate.close(), "closing a closed gate is not a second pause");
        let waiting = {
            let gate = gate.clone();
            actix_rt::spawn(async move { gate.wait_open().await })
        };
        actix_rt::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a closed gate must hold the reader");
        gate.open();
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("opened gate releases").unwrap();
        // Open: passes at once.
        tokio::time::timeout(Duration::from_millis(100), gate.wait_open()).await.expect("an open gate passes");
    }
}
