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

mod group_commit;
mod lanes;
mod saturated;

pub use group_commit::{StoreStatus, HELD_ACTIONS_MAX};
pub(crate) use saturated::SaturatedClients;

use crate::checkpoints::{CheckpointActor, Collect, Collected};
use crate::clock::{now, run_at};
use crate::primary::{FromPrimary, PrimaryActor, ToPrimary};
use crate::store::{store_path, Opened, Store, StoreEvent, StoreWriter};
use crate::transport::{self, ConnectionId, TransportConfig, TransportHandle, TransportStats};
use crate::verifier::VerifierPool;
use crate::view_changer::{FromViewChanger, ToViewChanger, ViewChangerActor};
use actix::prelude::*;
use bulwark_crypto::Digest;
use bulwark_crypto::KeyPair;
use bulwark_framework::messages::{reply_messages, VerifiedMessage, VerifiedReply};
use bulwark_framework::roles::node::{Roles, RolesFootprint};
use bulwark_framework::roles::replica::{Footprint, ReplicaMetrics};
use bulwark_framework::roles::ReplicaEvent;
use bulwark_framework::sim::byzantine::{ByzantineAction, ByzantineReplica, Strategy};
use bulwark_framework::verify::RefusalCounts;
use bulwark_framework::wire::encode_frame;
use bulwark_framework::{
    Action, ClientId, Input, Instant, Membership, MembershipHandle, PeerId, Replica, ReplicaId, SeqNum, Service,
    TimerKind, View,
};
use bytes::Bytes;
use group_commit::{GroupCommit, InboundGate};
use lanes::{forward, inbound_in_flight_max, inbound_lanes, Lanes};
use saturated::Saturation;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

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

/// Verified messages handed to the replica actor in one go (its actions are carried out
/// once for all of them, so replies and sends are grouped).
#[derive(Debug)]
pub struct DeliverAll(pub Vec<Deliver>);

impl actix::Message for DeliverAll {
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

    /// Arms `timer` to fire at `at` ([`run_at`]), replacing the pending one of that kind: a
    /// correct replica's status timer (its roles' actors run theirs), every timer of a
    /// Byzantine one. The node keeps its own deadlines, the actor only delivers the firing.
    fn set_timer(&mut self, timer: TimerKind, at: Instant, ctx: &mut Context<Self>) {
        if let Some(handle) = self.timers.remove(&timer) {
            ctx.cancel_future(handle);
        }
        let handle = run_at(ctx, at, move |actor: &mut Self, ctx| {
            actor.timers.remove(&timer);
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
            wan: BTreeMap::new(),
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
