//! The deterministic simulator.
//!
//! One seed drives every random choice: network delay and jitter, drops, duplicates
//! (and so reordering), which replica crashes and when, and the workload. Time is
//! simulated. The same seed gives the same run, event for event; [`SimReport::trace`] is a
//! digest of every delivered event, so tests can assert it.
//!
//! Correct replicas are real [`Replica`]s; up to `f` may be replaced by
//! [`byzantine::ByzantineReplica`] strategies. Clients are real [`Client`]s running a
//! closed-loop workload. After every step the [`checker::Checker`] asserts the safety
//! invariants; the run ends when every request completed and the live correct replicas
//! executed the same history, or at the time limit.

pub mod byzantine;
pub mod byzantine_client;
pub mod campaign;
pub mod checker;
pub mod twins;

use crate::config::ProtocolParams;
use crate::durable::Recovered;
use crate::ids::{ClusterId, Instant, ReplicaId, SeqNum, View};
use crate::membership::{Membership, MembershipHandle};
use crate::messages::{Message, MessageKind, VerifiedMessage};
use crate::roles::checkpoint::{CollectorInput, CollectorOutput};
use crate::roles::client::{Client, ClientAction, ClientError, ClientInput};
use crate::roles::node::Roles;
use crate::roles::primary::{PrimaryInput, PrimaryOutput};
use crate::roles::replica::{Footprint, Input, Replica, ReplicaMetrics};
use crate::roles::view_change::{ViewChangerInput, ViewChangerOutput};
use crate::roles::{Action, Role, TimerKind};
use crate::service::Service;
use crate::verify::{verify_envelope, verify_message, RefusalCounts};
use crate::wire;
use bulwark_crypto::{Digest, DigestBuilder, KeyPair};
use byzantine::{ByzantineAction, ByzantineReplica, Strategy};
use byzantine_client::{ByzantineClient, ByzantineClientSpec};
use checker::{Checker, Violation};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The simulated network.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkModel {
    pub delay_min_us: u64,
    pub delay_max_us: u64,
    /// Probability that a message is lost.
    pub drop_rate: f64,
    /// Probability that a message is delivered twice (at two independent delays).
    pub duplicate_rate: f64,
    /// Losses and duplicates stop at this time (the network "settles"), if set: liveness
    /// is judged after it.
    pub faults_until: Option<Instant>,
    /// A replica, its checkpoint collector and its primary role run apart (as separate
    /// actors in the runtime): what one hands another arrives after a delay of up to this,
    /// in order, with other inputs in between. Never lost.
    pub role_hop_max_us: u64,
}

impl Default for NetworkModel {
    fn default() -> Self {
        NetworkModel {
            delay_min_us: 200,
            delay_max_us: 2_000,
            drop_rate: 0.0,
            duplicate_rate: 0.0,
            faults_until: None,
            role_hop_max_us: 500,
        }
    }
}

/// A replica cut off from every other node during `[from, until)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Isolation {
    pub replica: ReplicaId,
    pub from: Instant,
    pub until: Instant,
}

/// Every message of `kind` sent by `sender` (to `receiver`, or to anyone if `None`) before
/// `until` is lost: a targeted fault, for scenarios such as "the primary's pre-prepares
/// never arrive".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blackout {
    pub sender: ReplicaId,
    pub receiver: Option<ReplicaId>,
    pub kind: MessageKind,
    pub until: Instant,
}

/// A replica that crashes at `crash_at` and comes back from its durable records at
/// `restart_at`. A `torn` crash happens in the middle of a step: the replica handles its
/// next input, its records are persisted, and it dies before sending anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restart {
    pub replica: ReplicaId,
    pub crash_at: Instant,
    pub restart_at: Instant,
    pub torn: bool,
}

/// One instance of a replica: every replica has its first instance; a twinned one (see
/// [`SimConfig::twins`]) also has a second holding the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instance {
    pub replica: ReplicaId,
    /// The second instance of a twinned replica.
    pub twin: bool,
}

/// A Twins round: until `until`, instances in different groups cannot reach each other
/// (clients reach every instance). An instance in no group is cut off from every other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Round {
    pub until: Instant,
    pub groups: Vec<Vec<Instance>>,
}

impl Round {
    fn group_of(&self, instance: Instance) -> Option<usize> {
        self.groups.iter().position(|group| group.contains(&instance))
    }
}

/// Everything that defines a run besides the service.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub replicas: usize,
    /// The cluster the replicas form.
    pub cluster: ClusterId,
    /// The replicas' ids, if not `0..replicas`: any distinct numbers, `replicas` of them.
    pub replica_ids: Option<Vec<ReplicaId>>,
    pub clients: usize,
    pub requests_per_client: u64,
    /// Requests each client keeps outstanding (closed loop).
    pub client_concurrency: usize,
    pub params: ProtocolParams,
    pub network: NetworkModel,
    /// Replicas that crash (stop for good) at the given time.
    pub crashes: Vec<(ReplicaId, Instant)>,
    /// Replicas that crash and restart from their durable records.
    pub restarts: Vec<Restart>,
    pub isolations: Vec<Isolation>,
    pub blackouts: Vec<Blackout>,
    pub byzantine: Vec<(ReplicaId, Strategy)>,
    /// Encode, decode and verify every message at the receiver, as a real network would.
    /// Slower; the default passes verified messages through.
    pub wire_roundtrip: bool,
    /// Simulated time after which the run stops, finished or not.
    pub time_limit: Duration,
    /// Once every request completed, keep running this long before reporting (the checker
    /// still runs): a view change under way when the last request completed gets to finish,
    /// for tests that assert where the replicas end up rather than where they happened to
    /// be at that instant. Zero by default.
    pub linger: Duration,
    /// Negative control (tests only): correct replicas use weakened quorums.
    pub weaken_quorums: bool,
    /// Twins (Bano et al., "Twins: BFT Systems Made Robust"): each of these replicas runs
    /// as two correct instances holding the same key, which together behave as one
    /// Byzantine replica that equivocates in whatever way the partitions let it. Twinned
    /// replicas are not checked (they count as faulty), and may not also be Byzantine,
    /// crash or restart.
    pub twins: Vec<ReplicaId>,
    /// Partitions of the instances, round by round; after the last round every instance
    /// reaches every other.
    pub rounds: Vec<Round>,
    /// Byzantine clients besides the correct ones (see [`byzantine_client`]).
    pub byzantine_clients: Vec<ByzantineClientSpec>,
}

impl SimConfig {
    pub fn new(seed: u64, replicas: usize) -> Self {
        SimConfig {
            seed,
            replicas,
            cluster: ClusterId(1),
            replica_ids: None,
            clients: 4,
            requests_per_client: 50,
            client_concurrency: 4,
            params: ProtocolParams {
                checkpoint_interval: 16,
                watermark_window: 64,
                batch_size_max: 16,
                client_retransmit_us: 200_000,
                status_interval_us: 50_000,
                // Small chunks, so that state transfer moves images of many chunks.
                state_chunk_bytes: 512,
                ..ProtocolParams::default()
            },
            network: NetworkModel::default(),
            crashes: Vec::new(),
            restarts: Vec::new(),
            isolations: Vec::new(),
            blackouts: Vec::new(),
            byzantine: Vec::new(),
            wire_roundtrip: false,
            time_limit: Duration::from_secs(600),
            linger: Duration::ZERO,
            weaken_quorums: false,
            twins: Vec::new(),
            rounds: Vec::new(),
            byzantine_clients: Vec::new(),
        }
    }
}

impl SimConfig {
    /// The replicas' ids, ascending: `replica_ids` if set, else `0..replicas`.
    pub fn ids(&self) -> Vec<ReplicaId> {
        let mut ids = self.replica_ids.clone().unwrap_or_else(|| (0..self.replicas as u32).map(ReplicaId).collect());
        ids.sort();
        ids
    }
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct SimReport {
    pub seed: u64,
    pub violations: Vec<Violation>,
    pub checks: u64,
    pub requests_expected: u64,
    pub requests_completed: u64,
    /// Digest of every delivered event in order: equal seeds give equal traces.
    pub trace: Digest,
    /// For each live correct replica: last executed sequence number and state digest.
    pub final_states: BTreeMap<ReplicaId, (SeqNum, Digest)>,
    pub stable_checkpoints: BTreeMap<ReplicaId, SeqNum>,
    /// For each live correct replica: the view it is in, and the view it is changing to.
    pub views: BTreeMap<ReplicaId, (View, Option<View>)>,
    /// Each live correct replica's counters at the end.
    pub metrics: BTreeMap<ReplicaId, ReplicaMetrics>,
    pub simulated_time: Duration,
    pub events: u64,
    pub refused_at_edge: RefusalCounts,
    /// Largest footprint of any correct replica seen during the run, field by field.
    pub peak_footprint: Footprint,
    pub peak_checker_entries: usize,
    pub finished: bool,
    /// Requests still outstanding at the end: `(client index, timestamp)`.
    pub outstanding: Vec<(usize, crate::ids::Timestamp)>,
    /// For each isolation that ended: the isolated replica, its last executed sequence
    /// number then, and the highest any correct replica had executed.
    pub rejoins: Vec<(ReplicaId, SeqNum, SeqNum)>,
    /// Replicas with a scheduled restart that were down at the end: a run that loses a
    /// replica it meant to bring back has not converged, whatever the others did.
    pub down_at_end: Vec<ReplicaId>,
    /// Messages each Byzantine replica sent, and all Byzantine clients together: what a
    /// test checks to know that an attack happened at all.
    pub byzantine_messages_sent: BTreeMap<ReplicaId, u64>,
    pub byzantine_client_messages_sent: u64,
}

impl SimReport {
    /// All requests completed and every live correct replica holds the same state.
    pub fn converged(&self) -> bool {
        let mut states = self.final_states.values();
        let first = states.next();
        self.requests_completed == self.requests_expected
            && self.down_at_end.is_empty()
            && states.all(|s| Some(s) == first)
    }

    /// How to replay this run.
    pub fn replay_hint(&self) -> String {
        format!("replay with BULWARK_SEED={} (same test, same configuration)", self.seed)
    }
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {}: {} violations, {} checks, {}/{} requests, {} events, {:?} simulated, finished={}",
            self.seed,
            self.violations.len(),
            self.checks,
            self.requests_completed,
            self.requests_expected,
            self.events,
            self.simulated_time,
            self.finished
        )?;
        write!(f, "\n  views (entered, changing to): {:?}", self.views)?;
        if !self.down_at_end.is_empty() {
            write!(f, "\n  down at the end although restarted: {:?}", self.down_at_end)?;
        }
        if !self.outstanding.is_empty() {
            let shown: Vec<_> = self.outstanding.iter().take(8).collect();
            write!(f, "\n  outstanding (client, timestamp): {shown:?}")?;
        }
        for violation in self.violations.iter().take(5) {
            write!(f, "\n  {violation}")?;
        }
        if !self.violations.is_empty() || !self.converged() {
            write!(f, "\n  {}", self.replay_hint())?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Endpoint {
    Replica(ReplicaId),
    /// The second instance of a twinned replica.
    Twin(ReplicaId),
    Client(usize),
    ByzantineClient(usize),
}

impl Endpoint {
    fn instance(self) -> Option<Instance> {
        match self {
            Endpoint::Replica(replica) => Some(Instance { replica, twin: false }),
            Endpoint::Twin(replica) => Some(Instance { replica, twin: true }),
            Endpoint::Client(_) | Endpoint::ByzantineClient(_) => None,
        }
    }
}

#[derive(Debug, Clone)]
enum Payload {
    Verified(VerifiedMessage),
    Frame(Arc<Vec<u8>>),
    Raw(Message),
}

#[derive(Debug)]
enum Event {
    Deliver {
        to: Endpoint,
        payload: Payload,
    },
    ReplicaTimer {
        node: Endpoint,
        timer: TimerKind,
        generation: u64,
    },
    ClientTimer {
        client: usize,
        generation: u64,
    },
    Crash {
        replica: ReplicaId,
    },
    /// An isolation ends: record how far behind the isolated replica is.
    Rejoin {
        replica: ReplicaId,
    },
    /// The replica dies after persisting the records of its next step, before sending.
    TornCrash {
        replica: ReplicaId,
    },
    Restart {
        replica: ReplicaId,
    },
    ByzantineClientTick {
        client: usize,
    },
    /// Something reaches a replica instance or one of its roles run apart from it.
    RoleHop {
        node: Endpoint,
        incarnation: u64,
        hop: Hop,
    },
}

/// What goes between a replica instance and its roles run apart.
#[derive(Debug)]
enum Hop {
    ToCollector(CollectorInput),
    FromCollector(CollectorOutput),
    ToPrimary(PrimaryInput),
    FromPrimary(PrimaryOutput),
    ToViewChanger(ViewChangerInput),
    FromViewChanger(ViewChangerOutput),
}

impl Hop {
    /// The link it travels on: each is in order.
    fn link(&self) -> u8 {
        match self {
            Hop::ToCollector(_) => 0,
            Hop::FromCollector(_) => 1,
            Hop::ToPrimary(_) => 2,
            Hop::FromPrimary(_) => 3,
            Hop::ToViewChanger(_) => 4,
            Hop::FromViewChanger(_) => 5,
        }
    }
}

enum Node<S: Service> {
    Correct(Box<Replica<S>>),
    Byzantine(Box<ByzantineReplica>),
    /// An instance of a twinned replica: correct code, unchecked.
    Twin(Box<Replica<S>>),
    Crashed,
}

struct ClientNode {
    client: Client,
    issued: u64,
    completed: u64,
    timer_generation: u64,
}

/// Draws a client's next operation: `(rng, client index, request index)`.
type OperationSource<S> = Box<dyn FnMut(&mut ChaCha8Rng, usize, u64) -> <S as Service>::Op>;

/// A simulation of one cluster running service `S`.
pub struct Simulation<S: Service> {
    config: SimConfig,
    membership: Arc<Membership>,
    rng: ChaCha8Rng,
    now: Instant,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    events: BTreeMap<u64, Event>,
    next_event: u64,
    nodes: BTreeMap<ReplicaId, Node<S>>,
    /// The second instances of twinned replicas.
    twin_nodes: BTreeMap<ReplicaId, Node<S>>,
    /// The checkpoint collector and primary role of each live correct or twin instance.
    roles_apart: BTreeMap<Endpoint, Roles>,
    /// Per instance: bumped at each crash, so that what was on its way between a replica
    /// and its roles does not reach the next incarnation.
    incarnations: BTreeMap<Endpoint, u64>,
    /// Per instance and link: when the last hop on it arrives (they arrive in order, as in
    /// an actor's mailbox).
    hops_due: BTreeMap<(Endpoint, u8), Instant>,
    clients: Vec<ClientNode>,
    timer_generations: BTreeMap<(Endpoint, TimerKind), u64>,
    make_operation: OperationSource<S>,
    checker: Checker,
    trace: DigestBuilder,
    delivered: u64,
    refused_at_edge: RefusalCounts,
    peak: Footprint,
    peak_checker: usize,
    rejoins: Vec<(ReplicaId, SeqNum, SeqNum)>,
    /// Each replica's durable records, folded (what survives a crash).
    stores: BTreeMap<ReplicaId, Recovered>,
    make_service: Box<dyn Fn() -> S>,
    /// Replicas that die after persisting their next step.
    dying: std::collections::BTreeSet<ReplicaId>,
    restarts_done: u64,
    byzantine_clients: Vec<ByzantineClient>,
}

impl<S: Service> fmt::Debug for Simulation<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Simulation(seed {}, now {:?})", self.config.seed, self.now)
    }
}

/// The deterministic key of replica `replica` in simulation `seed`.
pub fn replica_key(seed: u64, replica: ReplicaId) -> KeyPair {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&(replica.0 as u64).to_le_bytes());
    bytes[16] = 1;
    KeyPair::from_seed(*Digest::of(&bytes).as_bytes())
}

fn client_key(seed: u64, client: usize) -> KeyPair {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&(client as u64).to_le_bytes());
    bytes[16] = 2;
    KeyPair::from_seed(*Digest::of(&bytes).as_bytes())
}

impl<S: Service> Simulation<S> {
    /// Builds a simulation. `make_service` builds each replica's initial service;
    /// `make_operation(rng, client, index)` gives a client's `index`-th operation.
    pub fn new(
        config: SimConfig,
        make_service: impl Fn() -> S + 'static,
        make_operation: impl FnMut(&mut ChaCha8Rng, usize, u64) -> S::Op + 'static,
    ) -> Result<Self, crate::config::ConfigError> {
        let ids = config.ids();
        if ids.len() != config.replicas {
            return Err(crate::config::ConfigError::Invalid {
                field: "replica_ids",
                reason: format!("{} ids for {} replicas", ids.len(), config.replicas),
            });
        }
        let members = ids.iter().map(|&id| (id, replica_key(config.seed, id).public()));
        let membership = Membership::new(config.cluster, crate::ids::Epoch(0), members, config.params.clone())?;
        let membership = Arc::new(membership);
        twins::check(&config)?;
        let mut checker = Checker::new(membership.clone());
        // Each replica has a handle of its own, as a replica of its own process would.
        let handle = || MembershipHandle::new((*membership).clone());
        let mut nodes: BTreeMap<ReplicaId, Node<S>> = ids
            .iter()
            .map(|&id| {
                let key = replica_key(config.seed, id);
                if config.twins.contains(&id) {
                    return (id, Node::Twin(Box::new(Replica::new(id, key, handle(), make_service()))));
                }
                let node = match config.byzantine.iter().find(|(r, _)| *r == id) {
                    Some((_, strategy)) => {
                        Node::Byzantine(Box::new(ByzantineReplica::new(id, key, membership.clone(), *strategy)))
                    }
                    None => {
                        checker.register(id);
                        #[allow(unused_mut)]
                        let mut replica = Replica::new(id, key, handle(), make_service());
                        if config.weaken_quorums {
                            #[cfg(feature = "negative-controls")]
                            replica.weaken_quorums_for_negative_control();
                            #[cfg(not(feature = "negative-controls"))]
                            panic!("weaken_quorums needs the negative-controls feature");
                        }
                        Node::Correct(Box::new(replica))
                    }
                };
                (id, node)
            })
            .collect();
        let mut twin_nodes: BTreeMap<ReplicaId, Node<S>> = config
            .twins
            .iter()
            .map(|&id| {
                let key = replica_key(config.seed, id);
                (id, Node::Twin(Box::new(Replica::new(id, key, handle(), make_service()))))
            })
            .collect();
        let clients = (0..config.clients)
            .map(|c| ClientNode {
                client: Client::new(client_key(config.seed, c), handle(), crate::ids::Timestamp(1)),
                issued: 0,
                completed: 0,
                timer_generation: 0,
            })
            .collect();
        let byzantine_clients = (0..config.byzantine_clients.len())
            .map(|index| {
                let key = client_key(config.seed, 1_000 + index);
                let other_key = client_key(config.seed, 2_000 + index);
                ByzantineClient::new(key, other_key, membership.clone(), config.byzantine_clients[index])
            })
            .collect();
        let mut roles_apart = BTreeMap::new();
        let instances = nodes
            .iter_mut()
            .map(|(id, node)| (Endpoint::Replica(*id), node))
            .chain(twin_nodes.iter_mut().map(|(id, node)| (Endpoint::Twin(*id), node)));
        for (endpoint, node) in instances {
            if let Node::Correct(replica) | Node::Twin(replica) = node {
                roles_apart.insert(endpoint, Roles::new(replica.id(), replica.key(), replica.membership()));
            }
        }
        Ok(Simulation {
            roles_apart,
            incarnations: BTreeMap::new(),
            hops_due: BTreeMap::new(),
            byzantine_clients,
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            stores: ids.iter().map(|&id| (id, Recovered::default())).collect(),
            membership,
            now: Instant::ZERO,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_event: 0,
            nodes,
            twin_nodes,
            clients,
            timer_generations: BTreeMap::new(),
            make_operation: Box::new(make_operation),
            checker,
            trace: DigestBuilder::new(b"bulwark/sim-trace/v1"),
            delivered: 0,
            refused_at_edge: RefusalCounts::default(),
            peak: Footprint::default(),
            peak_checker: 0,
            rejoins: Vec::new(),
            make_service: Box::new(make_service),
            dying: Default::default(),
            restarts_done: 0,
            config,
        })
    }

    pub fn membership(&self) -> &Arc<Membership> {
        &self.membership
    }

    /// A correct replica, if replica `id` is one and has not crashed.
    pub fn replica(&self, id: ReplicaId) -> Option<&Replica<S>> {
        match self.nodes.get(&id) {
            Some(Node::Correct(replica)) => Some(replica),
            _ => None,
        }
    }

    /// The live correct replicas.
    fn correct_replicas(&self) -> impl Iterator<Item = &Replica<S>> {
        self.nodes.values().filter_map(|node| match node {
            Node::Correct(replica) => Some(replica.as_ref()),
            _ => None,
        })
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        let id = self.next_event;
        self.next_event += 1;
        self.events.insert(id, event);
        self.queue.push(Reverse((at, id)));
    }

    fn isolated(&self, replica: ReplicaId, at: Instant) -> bool {
        self.config.isolations.iter().any(|i| i.replica == replica && i.from <= at && at < i.until)
    }

    fn cut_off(&self, endpoint: Endpoint, at: Instant) -> bool {
        match endpoint {
            Endpoint::Replica(r) | Endpoint::Twin(r) => self.isolated(r, at),
            Endpoint::Client(_) | Endpoint::ByzantineClient(_) => false,
        }
    }

    /// Whether the current Twins round keeps `from` and `to` apart.
    fn partitioned(&self, from: Endpoint, to: Endpoint, at: Instant) -> bool {
        let (Some(from), Some(to)) = (from.instance(), to.instance()) else {
            return false;
        };
        match self.config.rounds.iter().find(|round| at < round.until) {
            Some(round) => round.group_of(from).is_none() || round.group_of(from) != round.group_of(to),
            None => false,
        }
    }

    /// Sends over the simulated network: drop, delay with jitter, maybe duplicate. What is
    /// sent to a twinned replica reaches each of its instances independently.
    fn send(&mut self, from: Endpoint, to: Endpoint, payload: Payload) {
        if let Endpoint::Replica(replica) = to {
            if self.twin_nodes.contains_key(&replica) {
                self.send_one(from, Endpoint::Twin(replica), payload.clone());
            }
        }
        self.send_one(from, to, payload);
    }

    fn send_one(&mut self, from: Endpoint, to: Endpoint, payload: Payload) {
        if self.cut_off(from, self.now) || self.partitioned(from, to, self.now) {
            return;
        }
        let network = self.config.network.clone();
        let faulty = network.faults_until.is_none_or(|until| self.now < until);
        if faulty && self.rng.gen_bool(network.drop_rate) {
            return;
        }
        let copies = if faulty && self.rng.gen_bool(network.duplicate_rate) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = self.rng.gen_range(network.delay_min_us..=network.delay_max_us);
            let at = Instant(self.now.0 + delay);
            self.schedule(at, Event::Deliver { to, payload: payload.clone() });
        }
    }

    fn encode(&self, message: &VerifiedMessage) -> Payload {
        if self.config.wire_roundtrip {
            match wire::encode_frame(self.membership.scope(), &message.to_wire()) {
                Ok(frame) => Payload::Frame(Arc::new(frame)),
                Err(_) => Payload::Verified(message.clone()),
            }
        } else {
            Payload::Verified(message.clone())
        }
    }

    /// Runs to completion (or the time limit) and reports.
    pub fn run(mut self) -> SimReport {
        self.start();
        let mut limit = Instant(self.config.time_limit.as_micros() as u64);
        let mut finished = false;
        while let Some(Reverse((at, id))) = self.queue.pop() {
            if at > limit {
                break;
            }
            self.now = at;
            let event = self.events.remove(&id).expect("scheduled event exists");
            self.step(event);
            if !finished && self.done() {
                finished = true;
                if self.config.linger.is_zero() {
                    break;
                }
                limit = limit.min(self.now + self.config.linger);
            }
        }
        self.report(finished)
    }

    fn start(&mut self) {
        for (replica, at) in self.config.crashes.clone() {
            self.schedule(at, Event::Crash { replica });
        }
        for restart in self.config.restarts.clone() {
            let crash = if restart.torn {
                Event::TornCrash { replica: restart.replica }
            } else {
                Event::Crash { replica: restart.replica }
            };
            self.schedule(restart.crash_at, crash);
            self.schedule(restart.restart_at, Event::Restart { replica: restart.replica });
        }
        for isolation in self.config.isolations.clone() {
            self.schedule(isolation.until, Event::Rejoin { replica: isolation.replica });
        }
        let instances: Vec<Endpoint> = self
            .nodes
            .keys()
            .map(|id| Endpoint::Replica(*id))
            .chain(self.twin_nodes.keys().map(|id| Endpoint::Twin(*id)))
            .collect();
        let now = self.now;
        for node in instances {
            if let Some(Node::Correct(replica) | Node::Twin(replica)) = self.node_mut(node) {
                let actions = replica.start(now);
                self.carry_out(node, actions);
            }
        }
        for client in 0..self.clients.len() {
            self.issue(client);
        }
        for client in 0..self.byzantine_clients.len() {
            self.schedule(self.now, Event::ByzantineClientTick { client });
        }
    }

    fn done(&self) -> bool {
        let expected = self.config.requests_per_client;
        if self.clients.iter().any(|c| c.completed < expected) {
            return false;
        }
        if !self.restarted_replicas_down().is_empty() || self.restarts_done < self.config.restarts.len() as u64 {
            return false;
        }
        let mut executed = self.correct_replicas().map(Replica::last_executed);
        let first = executed.next();
        executed.all(|e| Some(e) == first)
    }

    /// Replicas with a scheduled restart that are down now.
    fn restarted_replicas_down(&self) -> Vec<ReplicaId> {
        let mut down: Vec<ReplicaId> = self
            .config
            .restarts
            .iter()
            .map(|r| r.replica)
            .filter(|r| matches!(self.nodes.get(r), Some(Node::Crashed)) || self.dying.contains(r))
            .collect();
        down.sort();
        down.dedup();
        down
    }

    fn step(&mut self, event: Event) {
        match event {
            Event::ByzantineClientTick { client } => {
                let (sends, next) = self.byzantine_clients[client].on_tick(self.now);
                for send in sends {
                    let to = Endpoint::Replica(send.to);
                    self.send(Endpoint::ByzantineClient(client), to, Payload::Raw(send.message));
                }
                if let Some(at) = next {
                    self.schedule(at, Event::ByzantineClientTick { client });
                }
            }
            Event::Rejoin { replica } => {
                let own = self.replica(replica).map(Replica::last_executed);
                let cluster = self.correct_replicas().map(Replica::last_executed).max().unwrap_or_default();
                if let Some(own) = own {
                    self.rejoins.push((replica, own, cluster));
                }
            }
            Event::TornCrash { replica } => {
                if matches!(self.nodes.get(&replica), Some(Node::Correct(_))) {
                    self.dying.insert(replica);
                }
            }
            Event::Restart { replica } => self.restart(replica),
            Event::Crash { replica } => {
                self.trace.update(b"crash").update_u64(replica.0 as u64);
                self.crash(replica);
            }
            Event::RoleHop { node, incarnation, hop } => {
                if self.incarnation(node) != incarnation {
                    return;
                }
                self.trace.update(b"role-hop").update_u64(hop.link() as u64).update_u64(self.now.0);
                match hop {
                    Hop::ToCollector(input) => {
                        let now = self.now;
                        let outputs = match self.roles_apart.get_mut(&node) {
                            Some(roles) => roles.collector.handle(input, now),
                            None => Vec::new(),
                        };
                        for output in outputs {
                            self.hop(node, Hop::FromCollector(output));
                        }
                    }
                    Hop::ToPrimary(input) => self.primary_step(node, input),
                    Hop::ToViewChanger(input) => self.view_changer_step(node, input),
                    Hop::FromCollector(output) => self.deliver_to_replica(node, Input::Checkpoints(output)),
                    Hop::FromPrimary(output) => self.deliver_to_replica(node, Input::Primary(output)),
                    Hop::FromViewChanger(output) => self.deliver_to_replica(node, Input::ViewChanger(output)),
                }
            }
            Event::ReplicaTimer { node, timer, generation } => {
                if self.timer_generations.get(&(node, timer)) != Some(&generation) {
                    return;
                }
                let (Endpoint::Replica(replica) | Endpoint::Twin(replica)) = node else {
                    return;
                };
                self.trace.update(b"timer").update_u64(self.now.0).update_u64(replica.0 as u64);
                // Each timer goes to the role it belongs to; a Byzantine node has no roles
                // apart and gets all of its timers itself.
                match timer {
                    _ if !self.roles_apart.contains_key(&node) => self.deliver_to_replica(node, Input::Timer(timer)),
                    TimerKind::Batch => self.primary_step(node, PrimaryInput::BatchTimer),
                    TimerKind::Request | TimerKind::ViewChange => {
                        self.view_changer_step(node, ViewChangerInput::Timer(timer))
                    }
                    TimerKind::Status => self.deliver_to_replica(node, Input::Timer(timer)),
                }
            }
            Event::ClientTimer { client, generation } => {
                if self.clients[client].timer_generation != generation {
                    return;
                }
                let actions = self.clients[client].client.handle(ClientInput::Timer, self.now);
                self.client_actions(client, actions);
            }
            Event::Deliver { to, payload } => {
                if self.cut_off(to, self.now) {
                    return;
                }
                self.delivered += 1;
                let message = match payload {
                    Payload::Verified(message) => message,
                    Payload::Frame(frame) => match wire::decode_frame(&frame, self.membership.params.frame_bytes_max) {
                        Ok(Some((envelope, _))) => match self.verify_envelope(envelope) {
                            Some(message) => message,
                            None => return,
                        },
                        Ok(None) => return,
                        Err(error) => {
                            self.refused_at_edge.record(&error.into());
                            return;
                        }
                    },
                    Payload::Raw(message) => match self.verify(message) {
                        Some(message) => message,
                        None => return,
                    },
                };
                self.trace.update(&fingerprint(&message).0).update_u64(self.now.0);
                match to {
                    Endpoint::Replica(_) | Endpoint::Twin(_) => self.deliver_to_replica(to, Input::Message(message)),
                    // A Byzantine client reads no replies (they are not routed to it).
                    Endpoint::ByzantineClient(_) => {}
                    Endpoint::Client(client) => {
                        if let VerifiedMessage::Reply(reply) = message {
                            let actions = self.clients[client].client.handle(ClientInput::Reply(reply), self.now);
                            self.client_actions(client, actions);
                        }
                    }
                }
            }
        }
    }

    fn verify(&mut self, message: Message) -> Option<VerifiedMessage> {
        self.refuse_at_edge(verify_message(message, &self.membership))
    }

    fn verify_envelope(&mut self, envelope: wire::Envelope) -> Option<VerifiedMessage> {
        self.refuse_at_edge(verify_envelope(envelope, &self.membership))
    }

    fn refuse_at_edge(&mut self, verdict: Result<VerifiedMessage, crate::verify::Refusal>) -> Option<VerifiedMessage> {
        match verdict {
            Ok(message) => Some(message),
            Err(refusal) => {
                self.refused_at_edge.record(&refusal);
                None
            }
        }
    }

    fn node_mut(&mut self, node: Endpoint) -> Option<&mut Node<S>> {
        match node {
            Endpoint::Replica(id) => self.nodes.get_mut(&id),
            Endpoint::Twin(id) => self.twin_nodes.get_mut(&id),
            Endpoint::Client(_) | Endpoint::ByzantineClient(_) => None,
        }
    }

    fn deliver_to_replica(&mut self, node: Endpoint, input: Input) {
        let now = self.now;
        let (Endpoint::Replica(id) | Endpoint::Twin(id)) = node else {
            return;
        };
        // Field by field, not through `node_mut`, so the checker stays borrowable below.
        let target = match node {
            Endpoint::Twin(_) => self.twin_nodes.get_mut(&id),
            _ => self.nodes.get_mut(&id),
        };
        let Some(target) = target else {
            return;
        };
        match target {
            Node::Crashed => {}
            Node::Twin(replica) => {
                let actions = replica.handle(input, now);
                self.carry_out(node, actions);
            }
            Node::Correct(replica) => {
                let mut actions = replica.handle(input, now);
                let dying = self.dying.remove(&id);
                if dying {
                    // Torn: the records of this step reach the disk, nothing reaches the wire.
                    actions.retain(|a| matches!(a, Action::Persist(_) | Action::Event(_)));
                }
                let (view, stable, executed) = (replica.view(), replica.stable(), replica.last_executed());
                let footprint = match self.roles_apart.get(&node) {
                    Some(roles) => replica.footprint().with_roles_apart(roles.footprint()),
                    None => replica.footprint(),
                };
                self.checker.observe_replica(id, &actions, view, stable, executed);
                self.note_footprint(footprint);
                self.carry_out(node, actions);
                if dying {
                    self.trace.update(b"torn-crash").update_u64(id.0 as u64);
                    self.crash(id);
                }
            }
            Node::Byzantine(byzantine) => {
                let actions = byzantine.handle(input, now);
                for action in actions {
                    match action {
                        ByzantineAction::Send { to, message } => {
                            self.send(Endpoint::Replica(id), Endpoint::Replica(to), Payload::Raw(message))
                        }
                        ByzantineAction::SetTimer { timer, at } => self.set_timer(node, timer, at),
                    }
                }
            }
        }
    }

    /// A crashed replica comes back from its durable records.
    fn restart(&mut self, id: ReplicaId) {
        if self.dying.remove(&id) {
            // A torn crash waits for the replica's next step; with no step before the
            // restart is due, the crash happens now, between steps (a clean one). Without
            // this the replica would crash at its first step after the restart and never
            // come back.
            self.trace.update(b"crash").update_u64(id.0 as u64);
            self.crash(id);
        }
        if !matches!(self.nodes.get(&id), Some(Node::Crashed)) {
            return;
        }
        self.trace.update(b"restart").update_u64(id.0 as u64);
        self.restarts_done += 1;
        // Timers set before the crash must not reach the new incarnation.
        for kind in [TimerKind::Batch, TimerKind::Status, TimerKind::Request, TimerKind::ViewChange] {
            *self.timer_generations.entry((Endpoint::Replica(id), kind)).or_default() += 1;
        }
        let recovered = self.stores.get(&id).cloned().unwrap_or_default();
        let key = replica_key(self.config.seed, id);
        let handle = MembershipHandle::new((*self.membership).clone());
        let (replica, actions) = Replica::recover(id, key, handle, (self.make_service)(), recovered, self.now);
        // Fresh roles: what the recovery tells them is among `actions`.
        self.roles_apart.insert(Endpoint::Replica(id), Roles::new(id, replica.key(), replica.membership()));
        self.checker.observe_restart(id);
        self.checker.observe_replica(id, &actions, replica.view(), replica.stable(), replica.last_executed());
        self.nodes.insert(id, Node::Correct(Box::new(replica)));
        self.carry_out(Endpoint::Replica(id), actions);
    }

    /// Replica `id` stops, and its roles run apart with it.
    fn crash(&mut self, id: ReplicaId) {
        let node = Endpoint::Replica(id);
        self.nodes.insert(id, Node::Crashed);
        self.roles_apart.remove(&node);
        *self.incarnations.entry(node).or_default() += 1;
    }

    fn incarnation(&self, node: Endpoint) -> u64 {
        self.incarnations.get(&node).copied().unwrap_or_default()
    }

    /// Sends `hop` between `node`'s replica and one of its roles: it arrives after a
    /// random delay, never before the previous hop on the same link.
    fn hop(&mut self, node: Endpoint, hop: Hop) {
        let delay = self.rng.gen_range(0..=self.config.network.role_hop_max_us);
        let due = self.hops_due.entry((node, hop.link())).or_insert(Instant::ZERO);
        *due = Instant(self.now.0 + delay).max(*due);
        let (at, incarnation) = (*due, self.incarnation(node));
        self.schedule(at, Event::RoleHop { node, incarnation, hop });
    }

    /// `node`'s primary role, run apart, takes `input`; its proposals go to its replica,
    /// its batch timer is the simulator's.
    fn primary_step(&mut self, node: Endpoint, input: PrimaryInput) {
        let now = self.now;
        let Some(roles) = self.roles_apart.get_mut(&node) else {
            return;
        };
        for output in roles.primary.handle(input, now) {
            match output {
                PrimaryOutput::SetBatchTimer(at) => self.set_timer(node, TimerKind::Batch, at),
                output => self.hop(node, Hop::FromPrimary(output)),
            }
        }
    }

    /// `node`'s view-changer, run apart, takes `input`; its answers go to its replica, its
    /// request and view-change timers are the simulator's.
    fn view_changer_step(&mut self, node: Endpoint, input: ViewChangerInput) {
        let now = self.now;
        let Some(roles) = self.roles_apart.get_mut(&node) else {
            return;
        };
        for output in roles.view_changer.handle(input, now) {
            match output {
                ViewChangerOutput::SetTimer(timer, at) => self.set_timer(node, timer, at),
                output => self.hop(node, Hop::FromViewChanger(output)),
            }
        }
    }

    fn note_footprint(&mut self, footprint: Footprint) {
        let peak = &mut self.peak;
        peak.log_slots = peak.log_slots.max(footprint.log_slots);
        peak.future_messages = peak.future_messages.max(footprint.future_messages);
        peak.checkpoint_votes = peak.checkpoint_votes.max(footprint.checkpoint_votes);
        peak.checkpoint_images = peak.checkpoint_images.max(footprint.checkpoint_images);
        peak.queued_requests = peak.queued_requests.max(footprint.queued_requests);
        peak.in_flight_batches = peak.in_flight_batches.max(footprint.in_flight_batches);
        peak.clients = peak.clients.max(footprint.clients);
        peak.later_view_messages = peak.later_view_messages.max(footprint.later_view_messages);
        peak.waiting_requests = peak.waiting_requests.max(footprint.waiting_requests);
        peak.view_changes_held = peak.view_changes_held.max(footprint.view_changes_held);
        peak.transfer_bytes = peak.transfer_bytes.max(footprint.transfer_bytes);
        if self.delivered.is_multiple_of(4096) {
            let floor = self.correct_replicas().map(Replica::stable).min().unwrap_or_default();
            self.checker.collect_garbage(floor);
        }
        self.peak_checker = self.peak_checker.max(self.checker.footprint());
    }

    fn set_timer(&mut self, node: Endpoint, timer: TimerKind, at: Instant) {
        let generation = self.timer_generations.entry((node, timer)).or_default();
        *generation += 1;
        let generation = *generation;
        self.schedule(at.max(self.now), Event::ReplicaTimer { node, timer, generation });
    }

    fn carry_out(&mut self, node: Endpoint, actions: Vec<Action>) {
        let (Endpoint::Replica(from) | Endpoint::Twin(from)) = node else {
            return;
        };
        for action in actions {
            match action {
                Action::Send { to, message } => {
                    if self.blacked_out(from, to, &message) {
                        continue;
                    }
                    let payload = self.encode(&message);
                    self.send(node, Endpoint::Replica(to), payload);
                }
                Action::Broadcast { message } => {
                    let payload = self.encode(&message);
                    let members: Vec<ReplicaId> = self.nodes.keys().copied().collect();
                    for to in members {
                        if to != from && !self.blacked_out(from, to, &message) {
                            self.send(node, Endpoint::Replica(to), payload.clone());
                        }
                    }
                }
                Action::Reply { client, reply } => {
                    let index = self.clients.iter().position(|c| c.client.id() == client);
                    if let Some(index) = index {
                        let payload = self.encode(&VerifiedMessage::Reply(reply));
                        self.send(node, Endpoint::Client(index), payload);
                    }
                }
                Action::SetTimer { timer, at } => self.set_timer(node, timer, at),
                // Twins never restart: their records are not kept.
                Action::Persist(record) if node == Endpoint::Replica(from) => {
                    if let Some(store) = self.stores.get_mut(&from) {
                        store.apply(record);
                    }
                }
                Action::Persist(_) => {}
                Action::ToCheckpoints(input) => self.hop(node, Hop::ToCollector(input)),
                Action::ToPrimary(input) => self.hop(node, Hop::ToPrimary(input)),
                Action::ToViewChanger(input) => self.hop(node, Hop::ToViewChanger(input)),
                Action::Report { .. } | Action::Event(_) => {}
            }
        }
    }

    fn blacked_out(&self, from: ReplicaId, to: ReplicaId, message: &VerifiedMessage) -> bool {
        let kind = message.kind();
        self.config
            .blackouts
            .iter()
            .any(|b| b.sender == from && b.receiver.is_none_or(|r| r == to) && b.kind == kind && self.now < b.until)
    }

    fn issue(&mut self, client: usize) {
        let node = &self.clients[client];
        let expected = self.config.requests_per_client;
        let mut to_issue = Vec::new();
        let mut issued = node.issued;
        let mut outstanding = node.client.outstanding();
        while issued < expected && outstanding < self.config.client_concurrency {
            let operation = (self.make_operation)(&mut self.rng, client, issued);
            to_issue.push(operation);
            issued += 1;
            outstanding += 1;
        }
        for operation in to_issue {
            let bytes = rmp_serde::to_vec(&operation).expect("operations encode");
            let actions = self.clients[client]
                .client
                .handle(ClientInput::Invoke { operation: bytes, read_only: false }, self.now);
            match actions.first() {
                // The oldest outstanding request holds the window: wait for it. The drawn
                // operation is discarded, deterministically.
                Some(ClientAction::Rejected(ClientError::WindowFull { .. })) => break,
                Some(ClientAction::Rejected(error)) => panic!("simulated client misconfigured: {error}"),
                _ => {
                    self.clients[client].issued += 1;
                    self.client_actions(client, actions);
                }
            }
        }
    }

    fn client_actions(&mut self, client: usize, actions: Vec<ClientAction>) {
        let mut completed_any = false;
        for action in actions {
            match action {
                ClientAction::Send { to, request } => {
                    let payload = self.encode(&VerifiedMessage::Request(request));
                    self.send(Endpoint::Client(client), Endpoint::Replica(to), payload);
                }
                ClientAction::Broadcast { request } => {
                    let payload = self.encode(&VerifiedMessage::Request(request));
                    let members: Vec<ReplicaId> = self.nodes.keys().copied().collect();
                    for to in members {
                        self.send(Endpoint::Client(client), Endpoint::Replica(to), payload.clone());
                    }
                }
                ClientAction::SetTimer { at } => {
                    let node = &mut self.clients[client];
                    node.timer_generation += 1;
                    let generation = node.timer_generation;
                    self.schedule(at.max(self.now), Event::ClientTimer { client, generation });
                }
                ClientAction::Issued { .. } | ClientAction::Rejected(_) => {}
                ClientAction::Completed { timestamp, result } => {
                    let id = self.clients[client].client.id();
                    self.checker.observe_accepted(id, timestamp, &result);
                    self.clients[client].completed += 1;
                    completed_any = true;
                }
            }
        }
        if completed_any {
            self.issue(client);
        }
    }

    fn report(self, finished: bool) -> SimReport {
        let down_at_end = self.restarted_replicas_down();
        let byzantine_messages_sent = self
            .nodes
            .iter()
            .filter_map(|(id, node)| match node {
                Node::Byzantine(byzantine) => Some((*id, byzantine.messages_sent())),
                _ => None,
            })
            .collect();
        let mut final_states = BTreeMap::new();
        let mut stable_checkpoints = BTreeMap::new();
        let mut views = BTreeMap::new();
        let mut metrics = BTreeMap::new();
        for node in self.nodes.values() {
            if let Node::Correct(replica) = node {
                metrics.insert(replica.id(), replica.metrics().clone());
                final_states.insert(replica.id(), (replica.last_executed(), replica.state_digest()));
                stable_checkpoints.insert(replica.id(), replica.stable());
                views.insert(replica.id(), (replica.view(), replica.view_change_target()));
            }
        }
        SimReport {
            seed: self.config.seed,
            violations: self.checker.violations().to_vec(),
            checks: self.checker.checks(),
            requests_expected: self.config.requests_per_client * self.config.clients as u64,
            requests_completed: self.clients.iter().map(|c| c.completed).sum(),
            trace: self.trace.finish(),
            final_states,
            stable_checkpoints,
            views,
            metrics,
            simulated_time: Duration::from_micros(self.now.0),
            events: self.delivered,
            refused_at_edge: self.refused_at_edge,
            peak_footprint: self.peak,
            peak_checker_entries: self.peak_checker,
            finished,
            rejoins: self.rejoins.clone(),
            down_at_end,
            byzantine_messages_sent,
            byzantine_client_messages_sent: self.byzantine_clients.iter().map(ByzantineClient::messages_sent).sum(),
            outstanding: self
                .clients
                .iter()
                .enumerate()
                .flat_map(|(index, c)| c.client.outstanding_timestamps().into_iter().map(move |t| (index, t)))
                .collect(),
        }
    }
}

/// A digest naming a message for the trace: the signed digest of its payload.
fn fingerprint(message: &VerifiedMessage) -> Digest {
    let kind = message.kind() as u64;
    let inner = match message {
        VerifiedMessage::Request(m) => m.digest(),
        VerifiedMessage::PrePrepare(m, _) => m.digest(),
        VerifiedMessage::Prepare(m) => m.digest(),
        VerifiedMessage::Commit(m) => m.digest(),
        VerifiedMessage::Reply(m) => m.digest(),
        VerifiedMessage::Checkpoint(m) => m.digest(),
        VerifiedMessage::Status(m) => m.digest(),
        VerifiedMessage::StateRequest(m) => m.digest(),
        VerifiedMessage::StateReply(m) => m.digest(),
        VerifiedMessage::Inquiry(m) => m.digest(),
        VerifiedMessage::Report(m) => m.digest(),
        VerifiedMessage::ViewChange(m) => m.message.digest(),
        VerifiedMessage::NewView(m) => m.message.digest(),
        VerifiedMessage::BatchRequest(m) => m.digest(),
        VerifiedMessage::BatchReply(m, _) => m.digest(),
    };
    DigestBuilder::new(b"fingerprint").update_u64(kind).update(&inner.0).finish()
}
