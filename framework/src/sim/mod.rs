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
//!
//! Optionally the cluster is spread over sites joined by wide-area links
//! ([`SimConfig::wan`], see [`flat_wan`]), and each replica's CPU is modelled
//! ([`SimConfig::cpu`], see `cpu.rs`); without them a run is exactly what it was before
//! either existed.

pub mod byzantine;
pub mod byzantine_client;
pub mod campaign;
pub mod checker;
mod clients;
mod config;
mod cpu;
pub mod flat_wan;
mod history;
mod hops;
mod network;
mod replicas;
mod report;
pub mod sites;
pub mod twins;
pub mod wan;

pub use config::{Blackout, Instance, Isolation, NetworkModel, Restart, Round, SimConfig};
pub use flat_wan::flat_wan_config;
pub use history::{Completion, ReplyObserver, ServiceInvariant};
pub use report::SimReport;

use crate::durable::Recovered;
use crate::ids::{Instant, ReplicaId, SeqNum};
use crate::membership::{Membership, MembershipHandle};
use crate::messages::VerifiedMessage;
use crate::roles::client::{Client, ClientInput};
use crate::roles::node::Roles;
use crate::roles::primary::PrimaryInput;
use crate::roles::replica::{Footprint, Input, Replica};
use crate::roles::view_change::ViewChangerInput;
use crate::roles::{Role, TimerKind};
use crate::service::Service;
use crate::verify::RefusalCounts;
use crate::wire;
use bulwark_crypto::{Digest, DigestBuilder, KeyPair};
use byzantine::ByzantineReplica;
use byzantine_client::ByzantineClient;
use checker::Checker;
use clients::ClientNode;
use hops::Hop;
use network::{fingerprint, Endpoint, Payload};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use replicas::Node;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;
use std::sync::Arc;

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
    history: history::History<S>,
    /// The WAN between the sites, with a placement.
    flat_wan: Option<flat_wan::WanRun>,
    /// The replicas' CPU, when modelled.
    cpu: Option<cpu::CpuState>,
    /// While a replica modelled with a CPU carries out a step: when what it sends leaves.
    departure: Option<Instant>,
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
        let flat_wan = config.wan.as_ref().map(|placement| flat_wan::WanRun::new(placement, &ids)).transpose()?;
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
            history: history::History::default(),
            flat_wan,
            cpu: config.cpu.map(cpu::CpuState::new),
            departure: None,
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

    /// When what is sent now leaves: now, or when the replica sending it is done with its
    /// step (see `cpu.rs`).
    fn departs(&self) -> Instant {
        self.departure.unwrap_or(self.now)
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        let id = self.next_event;
        self.next_event += 1;
        self.events.insert(id, event);
        self.queue.push(Reverse((at, id)));
    }

    /// Runs to completion (or the time limit) and reports.
    pub fn run(mut self) -> SimReport {
        let finished = self.run_events();
        self.report(finished)
    }

    /// Runs the events to completion (or the time limit); whether the run finished.
    fn run_events(&mut self) -> bool {
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
        finished
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
        if let Some(free_at) = self.deferred_until(&event) {
            self.schedule(free_at, event);
            return;
        }
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
                    Payload::Frame(frame, _) => {
                        match wire::decode_frame(&frame, self.membership.params.frame_bytes_max) {
                            Ok(Some((envelope, _))) => match self.verify_envelope(envelope) {
                                Some(message) => message,
                                None => return,
                            },
                            Ok(None) => return,
                            Err(error) => {
                                self.refused_at_edge.record(&error.into());
                                return;
                            }
                        }
                    }
                    Payload::Raw(message) => match self.verify(message) {
                        Some(message) => message,
                        None => return,
                    },
                };
                self.trace.update(&fingerprint(&message).0).update_u64(self.now.0);
                self.charge_verification(to, &message);
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
}
