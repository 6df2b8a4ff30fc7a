//! The multi-site simulator: `S` Steward sites of `n` replicas each, clients at every site,
//! LAN links inside a site and the wide-area model of [`super::wan`] between sites, one
//! seed for every random choice, and the [`checker::SitesChecker`] after every step.
//!
//! Replicas are real [`SiteReplica`]s (or [`byzantine::ByzantineSite`]s bending one);
//! clients are the PBFT client role given their own site's membership (SC1: `f + 1`
//! matching replies from their site). A reply reaches a client only from a replica of its
//! own site, as over its own connections. The threshold scheme is a type parameter: the
//! fast stand-in ([`bulwark_crypto::threshold::Simulated`]) for most runs, BLS for a fixed
//! share of them.
//!
//! With a [`CpuCosts`] model a replica handles one input at a time and is busy for the
//! cryptographic work the input made it do, so simulated throughput shows where signing is
//! the bottleneck.

pub mod byzantine;
pub mod campaign;
pub mod checker;
mod report;

pub use report::SitesReport;

use super::wan::{CpuCosts, LinkModel, Wan, WanLoad};
use crate::config::ProtocolParams;
use crate::ids::{ClientId, ClusterId, Epoch, Instant, PeerId, ReplicaId, Timestamp};
use crate::membership::{Membership, MembershipHandle};
use crate::messages::{Request, VerifiedReply};
use crate::roles::client::{Client, ClientAction, ClientInput};
use crate::roles::Role;
use crate::service::Service;
use crate::steward::messages::SiteMessage;
use crate::steward::site::{
    CryptoWork, SiteDurable, SiteInfo, SiteInput, SiteOutput, SiteParams, SiteReplica, SiteSetup, SiteTimer,
};
use bulwark_crypto::threshold::ThresholdScheme;
use bulwark_crypto::{DigestBuilder, KeyPair, Verified};
use byzantine::{ByzantineSite, SiteStrategy};
use checker::SitesChecker;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
use std::time::Duration;

/// Everything that defines a multi-site run besides the service.
#[derive(Debug, Clone)]
pub struct SitesConfig {
    pub seed: u64,
    pub sites: usize,
    pub replicas_per_site: usize,
    pub clients_per_site: usize,
    pub updates_per_client: u64,
    /// The PBFT parameters each site's executor and clients use (checkpoint interval,
    /// client retransmission, chunk size).
    pub params: ProtocolParams,
    pub site_params: SiteParams,
    /// LAN delay inside a site: uniform in `[min, max]`.
    pub lan_delay_min_us: u64,
    pub lan_delay_max_us: u64,
    pub lan_drop: f64,
    pub lan_duplicate: f64,
    /// Every link between two sites.
    pub wan: LinkModel,
    /// LAN and WAN losses and duplicates stop at this time (the network settles).
    pub faults_until: Option<Instant>,
    pub byzantine: Vec<(PeerId, SiteStrategy)>,
    /// Replicas that crash (stop) at the given time.
    pub crashes: Vec<(PeerId, Instant)>,
    /// Crashed replicas that come back at the given time, from what they persisted
    /// ([`SiteDurable`]).
    pub restarts: Vec<(PeerId, Instant)>,
    /// Negative control for GI5 across restarts: a replica comes back with nothing.
    pub forget_records_on_restart: bool,
    /// A replica that will come back crashes in the middle of its next step: the outputs
    /// of that step before a drawn point are carried out (records persisted, messages
    /// sent), those after it are lost. So a message sent before the record it reveals
    /// would be seen by others and forgotten by the replica.
    pub torn_crashes: bool,
    /// Partitions of whole sites from the others (see [`SiteCut`]); they last past
    /// `faults_until` if they say so.
    pub cuts: Vec<SiteCut>,
    pub cpu: Option<CpuCosts>,
    /// Bytes a site signature or share takes on the WAN (96 for BLS12-381), whatever the
    /// scheme the run uses.
    pub signature_bytes: usize,
    pub time_limit: Duration,
}

impl SitesConfig {
    /// `sites` sites of `replicas_per_site` replicas, two clients per site, symmetric 50 ms
    /// links of 10 Mbit/s, a quiet LAN.
    pub fn new(seed: u64, sites: usize, replicas_per_site: usize) -> Self {
        SitesConfig {
            seed,
            sites,
            replicas_per_site,
            clients_per_site: 2,
            updates_per_client: 10,
            params: ProtocolParams {
                checkpoint_interval: 8,
                client_retransmit_us: 1_500_000,
                state_chunk_bytes: 4_096,
                ..ProtocolParams::default()
            },
            site_params: SiteParams::default(),
            lan_delay_min_us: 100,
            lan_delay_max_us: 1_000,
            lan_drop: 0.0,
            lan_duplicate: 0.0,
            wan: LinkModel::symmetric(50, 10.0),
            faults_until: None,
            byzantine: Vec::new(),
            crashes: Vec::new(),
            restarts: Vec::new(),
            forget_records_on_restart: false,
            torn_crashes: false,
            cuts: Vec::new(),
            cpu: None,
            signature_bytes: 96,
            time_limit: Duration::from_secs(300),
        }
    }

    /// Site `index` (0-based) is cluster `index + 1`.
    pub fn site(index: usize) -> ClusterId {
        ClusterId(index as u32 + 1)
    }

    /// The home site of client `client`.
    pub fn home_of(&self, client: usize) -> ClusterId {
        Self::site(client / self.clients_per_site.max(1))
    }

    /// What [`SitesSimulation::new`] refuses besides bad parameters: a cut of a site that is
    /// not in the run, or one that ends before it starts.
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        let fail = |reason: String| Err(crate::config::ConfigError::Invalid { field: "cuts", reason });
        for cut in &self.cuts {
            if !(1..=self.sites).contains(&(cut.site.0 as usize)) {
                let last = Self::site(self.sites.saturating_sub(1));
                return fail(format!("a cut names site {}; the sites of this run are k1..={last}", cut.site));
            }
            if cut.until < cut.from {
                return fail(format!(
                    "the cut of site {} ends at {:?}, before it starts at {:?}",
                    cut.site, cut.until, cut.from
                ));
            }
        }
        Ok(())
    }
}

/// A site cut off from every other site for a while: every WAN message sent from or to
/// `site` while `from <= now < until` is lost, `now` being when it leaves its sender (one
/// already on its way when the cut starts still arrives). The site's LAN and its own
/// clients are unaffected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SiteCut {
    pub site: ClusterId,
    pub from: Instant,
    pub until: Instant,
}

impl SiteCut {
    /// Whether a WAN message between sites `a` and `b` sent at `now` is lost to this cut.
    pub fn severs(&self, a: ClusterId, b: ClusterId, now: Instant) -> bool {
        (a == self.site || b == self.site) && self.from <= now && now < self.until
    }
}

enum Node<Svc: Service, S: ThresholdScheme> {
    Correct(Box<SiteReplica<Svc, S>>),
    Byzantine(Box<ByzantineSite<Svc, S>>),
}

impl<Svc: Service, S: ThresholdScheme> Node<Svc, S> {
    fn handle(&mut self, input: SiteInput<S>, now: Instant) -> Vec<SiteOutput<S>> {
        match self {
            Node::Correct(replica) => replica.handle(input, now),
            Node::Byzantine(replica) => replica.handle(input, now),
        }
    }

    fn crypto_work(&self) -> CryptoWork {
        match self {
            Node::Correct(replica) => replica.crypto_work(),
            Node::Byzantine(replica) => replica.inner().crypto_work(),
        }
    }
}

enum Event<S: ThresholdScheme> {
    Deliver { to: PeerId, from: PeerId, message: SiteMessage<S> },
    FromClient { to: PeerId, request: Verified<Request> },
    ToClient { client: usize, reply: VerifiedReply },
    Timer { node: PeerId, timer: SiteTimer, generation: u64 },
    ClientTimer { client: usize, generation: u64 },
    Crash { replica: PeerId },
    Restart { replica: PeerId },
}

struct ClientNode {
    client: Client,
    home: ClusterId,
    issued: u64,
    completed: u64,
    timer_generation: u64,
    /// When each outstanding update was issued.
    open: BTreeMap<Timestamp, Instant>,
}

/// Draws a client's next operation: `(rng, client index, update index)`.
type OperationSource<Svc> = Box<dyn FnMut(&mut ChaCha8Rng, usize, u64) -> <Svc as Service>::Op>;

/// What a replica is built from again when it restarts.
struct Rebuild<S: ThresholdScheme> {
    key: Arc<KeyPair>,
    membership: Membership,
    secret: S::SecretShare,
}

/// A multi-site run.
pub struct SitesSimulation<Svc: Service, S: ThresholdScheme> {
    config: SitesConfig,
    rng: ChaCha8Rng,
    now: Instant,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    events: BTreeMap<u64, Event<S>>,
    next_event: u64,
    nodes: BTreeMap<PeerId, Node<Svc, S>>,
    members: BTreeMap<ClusterId, Vec<ReplicaId>>,
    busy_until: BTreeMap<PeerId, Instant>,
    timer_generations: BTreeMap<(PeerId, SiteTimer), u64>,
    clients: Vec<ClientNode>,
    client_index: BTreeMap<ClientId, usize>,
    make_operation: OperationSource<Svc>,
    make_service: Box<dyn Fn() -> Svc>,
    infos: BTreeMap<ClusterId, SiteInfo<S>>,
    rebuild: BTreeMap<PeerId, Rebuild<S>>,
    /// What each correct replica persisted.
    durable: BTreeMap<PeerId, SiteDurable<S>>,
    restarts_done: u64,
    peak_records: usize,
    /// Replicas to crash in the middle of their next step (torn crashes).
    tearing: std::collections::BTreeSet<PeerId>,
    wan: Wan,
    settled: bool,
    checker: SitesChecker<S>,
    trace: DigestBuilder,
    delivered: u64,
    load: WanLoad,
    first_issue: Option<Instant>,
    wan_by_kind: BTreeMap<&'static str, (u64, u64)>,
    refusals: BTreeMap<&'static str, u64>,
    blamed: u64,
    faults: u64,
    peak_held: usize,
    cut_losses: u64,
}

impl<Svc: Service, S: ThresholdScheme> std::fmt::Debug for SitesSimulation<Svc, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SitesSimulation(seed {}, {} sites, now {:?})", self.config.seed, self.config.sites, self.now)
    }
}

/// Deterministic bytes for keys of run `seed`.
fn seeded(seed: u64, what: u8, a: u64, b: u64) -> [u8; 32] {
    *DigestBuilder::new(b"bulwark/sim/sites/keys")
        .update_u64(seed)
        .update(&[what])
        .update_u64(a)
        .update_u64(b)
        .finish()
        .as_bytes()
}

impl<Svc: Service, S: ThresholdScheme> SitesSimulation<Svc, S> {
    /// Builds a run. `make_service` builds each replica's initial service;
    /// `make_operation(rng, client, index)` a client's `index`-th operation.
    pub fn new(
        config: SitesConfig,
        make_service: impl Fn() -> Svc + 'static,
        make_operation: impl FnMut(&mut ChaCha8Rng, usize, u64) -> Svc::Op + 'static,
    ) -> Result<Self, crate::config::ConfigError> {
        config.validate()?;
        let n = config.replicas_per_site;
        let f = (n.max(1) - 1) / 3;
        let ids: Vec<ReplicaId> = (0..n as u32).map(ReplicaId).collect();
        let mut memberships = BTreeMap::new();
        let mut secrets = BTreeMap::new();
        let mut infos = BTreeMap::new();
        let mut keys = BTreeMap::new();
        for index in 0..config.sites {
            let site = SitesConfig::site(index);
            let pairs: Vec<(ReplicaId, KeyPair)> = ids
                .iter()
                .map(|id| (*id, KeyPair::from_seed(seeded(config.seed, 1, index as u64, id.0 as u64))))
                .collect();
            let membership =
                Membership::new(site, Epoch(0), pairs.iter().map(|(id, k)| (*id, k.public())), config.params.clone())?;
            let mut deal_rng = ChaCha8Rng::from_seed(seeded(config.seed, 2, index as u64, 0));
            let (key, shares) = S::deal(n, 2 * f + 1, &mut deal_rng);
            let key = Arc::new(key);
            infos.insert(site, SiteInfo { members: ids.clone(), key: key.clone() });
            keys.insert(site, key);
            memberships.insert(site, membership);
            secrets.insert(site, pairs.into_iter().zip(shares).collect::<Vec<_>>());
        }
        let site_list: Vec<ClusterId> = infos.keys().copied().collect();
        let mut nodes = BTreeMap::new();
        let mut rebuild = BTreeMap::new();
        for (site, members) in secrets {
            for ((id, pair), secret) in members {
                let peer = PeerId::new(site, id);
                let strategy = config.byzantine.iter().find(|(p, _)| *p == peer).map(|(_, s)| *s);
                let byzantine_secret = strategy.map(|_| copy_secret::<S>(&secret));
                let key = Arc::new(pair);
                if config.restarts.iter().any(|(p, _)| *p == peer) {
                    let (membership, secret) = (memberships[&site].clone(), copy_secret::<S>(&secret));
                    rebuild.insert(peer, Rebuild { key: key.clone(), membership, secret });
                }
                let setup = SiteSetup {
                    site,
                    id,
                    key,
                    membership: MembershipHandle::new(memberships[&site].clone()),
                    sites: infos.clone(),
                    secret,
                    params: config.site_params.clone(),
                };
                let replica = SiteReplica::new(setup, make_service())?;
                let node = match (strategy, byzantine_secret) {
                    (Some(strategy), Some(secret)) => {
                        Node::Byzantine(Box::new(ByzantineSite::new(replica, strategy, secret)))
                    }
                    _ => Node::Correct(Box::new(replica)),
                };
                nodes.insert(peer, node);
            }
        }
        let clients: Vec<ClientNode> = (0..config.sites * config.clients_per_site)
            .map(|c| {
                let home = config.home_of(c);
                let key = KeyPair::from_seed(seeded(config.seed, 3, c as u64, 0));
                ClientNode {
                    client: Client::new(key, MembershipHandle::new(memberships[&home].clone()), Timestamp(1)),
                    home,
                    issued: 0,
                    completed: 0,
                    timer_generation: 0,
                    open: BTreeMap::new(),
                }
            })
            .collect();
        let client_index = clients.iter().enumerate().map(|(i, c)| (c.client.id(), i)).collect();
        Ok(SitesSimulation {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            now: Instant::ZERO,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_event: 0,
            nodes,
            members: site_list.iter().map(|site| (*site, ids.clone())).collect(),
            busy_until: BTreeMap::new(),
            timer_generations: BTreeMap::new(),
            clients,
            client_index,
            make_operation: Box::new(make_operation),
            make_service: Box::new(make_service),
            infos,
            rebuild,
            durable: BTreeMap::new(),
            restarts_done: 0,
            peak_records: 0,
            tearing: std::collections::BTreeSet::new(),
            wan: Wan::uniform(config.wan),
            settled: false,
            checker: SitesChecker::new(keys),
            trace: DigestBuilder::new(b"bulwark/sim/sites-trace/v1"),
            delivered: 0,
            load: WanLoad::default(),
            first_issue: None,
            wan_by_kind: BTreeMap::new(),
            refusals: BTreeMap::new(),
            blamed: 0,
            faults: 0,
            peak_held: 0,
            cut_losses: 0,
            config,
        })
    }

    fn schedule(&mut self, at: Instant, event: Event<S>) {
        let id = self.next_event;
        self.next_event += 1;
        self.events.insert(id, event);
        self.queue.push(Reverse((at, id)));
    }

    /// Runs to completion (or the time limit) and reports.
    pub fn run(mut self) -> SitesReport {
        let peers: Vec<PeerId> = self.nodes.keys().copied().collect();
        for peer in peers {
            let outputs = match self.nodes.get_mut(&peer) {
                Some(Node::Correct(replica)) => replica.start(self.now),
                Some(Node::Byzantine(replica)) => replica.start(self.now),
                None => Vec::new(),
            };
            self.carry_out(peer, outputs);
        }
        for client in 0..self.clients.len() {
            self.issue(client);
        }
        for (replica, at) in self.config.crashes.clone() {
            self.schedule(at, Event::Crash { replica });
        }
        for (replica, at) in self.config.restarts.clone() {
            self.schedule(at, Event::Restart { replica });
        }
        let limit = Instant(self.config.time_limit.as_micros() as u64);
        let mut finished = false;
        while let Some(Reverse((at, id))) = self.queue.pop() {
            if at > limit {
                break;
            }
            self.now = at;
            if !self.settled && self.config.faults_until.is_some_and(|until| at >= until) {
                self.settled = true;
                self.wan.settle();
            }
            let event = self.events.remove(&id).expect("scheduled event exists");
            self.step(event);
            if self.done() {
                finished = true;
                break;
            }
        }
        self.report(finished)
    }

    fn done(&self) -> bool {
        if self.clients.iter().any(|c| c.completed < self.config.updates_per_client) {
            return false;
        }
        let mut arus = self.correct().map(|(_, replica)| (replica.aru(), replica.state_digest()));
        let first = arus.next();
        arus.all(|a| Some(a) == first)
    }

    fn correct(&self) -> impl Iterator<Item = (&PeerId, &SiteReplica<Svc, S>)> {
        self.nodes.iter().filter_map(|(peer, node)| match node {
            Node::Correct(replica) => Some((peer, replica.as_ref())),
            Node::Byzantine(_) => None,
        })
    }

    fn step(&mut self, event: Event<S>) {
        match event {
            Event::Deliver { to, from, message } => {
                if self.defer(to, Event::Deliver { to, from, message: message.clone() }) {
                    return;
                }
                self.delivered += 1;
                self.trace.update(message.kind().as_bytes()).update_u64(self.now.0).update_u64(peer_code(to));
                self.node_step(to, SiteInput::Message { from, message }, 1);
            }
            Event::FromClient { to, request } => {
                if self.defer(to, Event::FromClient { to, request: request.clone() }) {
                    return;
                }
                self.trace.update(b"update").update_u64(self.now.0).update_u64(peer_code(to));
                self.node_step(to, SiteInput::Client(request), 1);
            }
            Event::Timer { node, timer, generation } => {
                if self.timer_generations.get(&(node, timer)) != Some(&generation) {
                    return;
                }
                if self.defer(node, Event::Timer { node, timer, generation }) {
                    return;
                }
                self.trace.update(b"timer").update_u64(self.now.0).update_u64(peer_code(node));
                self.node_step(node, SiteInput::Timer(timer), 0);
            }
            Event::ToClient { client, reply } => {
                self.trace.update(b"reply").update_u64(self.now.0).update_u64(client as u64);
                let actions = self.clients[client].client.handle(ClientInput::Reply(reply), self.now);
                self.client_actions(client, actions);
            }
            Event::Crash { replica } => {
                let comes_back = self.config.restarts.iter().any(|(peer, _)| *peer == replica);
                if self.config.torn_crashes && comes_back && matches!(self.nodes.get(&replica), Some(Node::Correct(_)))
                {
                    self.tearing.insert(replica);
                } else {
                    self.crash(replica);
                }
            }
            Event::Restart { replica } => self.restart(replica),
            Event::ClientTimer { client, generation } => {
                if self.clients[client].timer_generation == generation {
                    let actions = self.clients[client].client.handle(ClientInput::Timer, self.now);
                    self.client_actions(client, actions);
                }
            }
        }
    }

    fn crash(&mut self, replica: PeerId) {
        self.trace.update(b"crash").update_u64(self.now.0).update_u64(peer_code(replica));
        self.nodes.remove(&replica);
        self.busy_until.remove(&replica);
    }

    /// A crashed replica comes back from what it persisted.
    fn restart(&mut self, peer: PeerId) {
        // A torn crash waits for the replica's next step; with none before the restart is
        // due, it crashes now, between steps.
        if self.tearing.remove(&peer) {
            self.crash(peer);
        }
        if self.nodes.contains_key(&peer) {
            return;
        }
        let Some(rebuild) = self.rebuild.get(&peer) else { return };
        self.trace.update(b"restart").update_u64(self.now.0).update_u64(peer_code(peer));
        let setup = SiteSetup {
            site: peer.cluster,
            id: peer.replica,
            key: rebuild.key.clone(),
            membership: MembershipHandle::new(rebuild.membership.clone()),
            sites: self.infos.clone(),
            secret: copy_secret::<S>(&rebuild.secret),
            params: self.config.site_params.clone(),
        };
        if self.config.forget_records_on_restart {
            self.durable.remove(&peer);
        }
        let durable = self.durable.entry(peer).or_default();
        let replica =
            SiteReplica::recover(setup, (self.make_service)(), durable).expect("the setup was valid at the start");
        self.checker.restarted(peer, replica.aru());
        self.restarts_done += 1;
        // Timers set before the crash must not reach the new incarnation.
        for ((node, _), generation) in self.timer_generations.iter_mut() {
            if *node == peer {
                *generation += 1;
            }
        }
        self.nodes.insert(peer, Node::Correct(Box::new(replica)));
        let outputs = match self.nodes.get_mut(&peer) {
            Some(Node::Correct(replica)) => replica.start(self.now),
            _ => Vec::new(),
        };
        self.carry_out(peer, outputs);
    }

    /// With a CPU model: an input for a busy replica waits until it is free.
    fn defer(&mut self, node: PeerId, event: Event<S>) -> bool {
        match self.busy_until.get(&node) {
            Some(free) if *free > self.now => {
                let free = *free;
                self.schedule(free, event);
                true
            }
            _ => false,
        }
    }

    /// One input to one replica; `verifies` ed25519 checks it took to receive it.
    fn node_step(&mut self, peer: PeerId, input: SiteInput<S>, verifies: u64) {
        let Some(node) = self.nodes.get_mut(&peer) else { return };
        let before = node.crypto_work();
        let mut outputs = node.handle(input, self.now);
        let torn = self.tearing.remove(&peer);
        if torn {
            let kept = self.rng.gen_range(0..=outputs.len());
            outputs.truncate(kept);
        }
        let after = node.crypto_work();
        if let Node::Correct(replica) = node {
            self.peak_held = self.peak_held.max(replica.held());
        }
        if let Some(cpu) = self.config.cpu {
            let sends = outputs.iter().filter(|o| matches!(o, SiteOutput::ToSite(_) | SiteOutput::To { .. })).count();
            let replies = u64::from(outputs.iter().any(|o| matches!(o, SiteOutput::Reply { .. })));
            let verifies = verifies + (after.votes_verified - before.votes_verified);
            let cost_us = cpu.ed25519_verify_us * verifies
                + cpu.ed25519_sign_us * (sends as u64 + replies)
                + cpu.share_sign_us * (after.shares_signed - before.shares_signed)
                + cpu.share_verify_us * (after.signer_checks - before.signer_checks)
                + cpu.combine_us * (after.combined - before.combined)
                + cpu.combined_verify_us * (after.site_signatures_verified - before.site_signatures_verified);
            if cost_us > 0 {
                self.busy_until.insert(peer, Instant(self.now.0 + cost_us));
            }
        }
        self.carry_out(peer, outputs);
        if torn {
            self.trace.update(b"torn");
            self.crash(peer);
        }
    }

    fn carry_out(&mut self, from: PeerId, outputs: Vec<SiteOutput<S>>) {
        let correct = matches!(self.nodes.get(&from), Some(Node::Correct(_)));
        let free = self.busy_until.get(&from).copied().unwrap_or(self.now).max(self.now);
        for output in outputs {
            match output {
                SiteOutput::ToSite(message) => {
                    let peers: Vec<PeerId> = self.members[&from.cluster]
                        .iter()
                        .map(|id| PeerId::new(from.cluster, *id))
                        .filter(|peer| *peer != from)
                        .collect();
                    for peer in peers {
                        self.send(from, peer, message.clone(), free);
                    }
                }
                SiteOutput::To { peer, message } => self.send(from, peer, message, free),
                SiteOutput::Reply { client, reply } => {
                    let Some(&index) = self.client_index.get(&client) else { continue };
                    if correct && !reply.read_only {
                        self.checker.replied(from, client, reply.timestamp, &reply.result);
                    }
                    if self.clients[index].home == from.cluster {
                        let at = self.lan_delay(free);
                        self.schedule(at, Event::ToClient { client: index, reply });
                    }
                }
                SiteOutput::SetTimer { timer, at } => {
                    let generation = self.timer_generations.entry((from, timer)).or_default();
                    *generation += 1;
                    let generation = *generation;
                    self.schedule(at.max(self.now), Event::Timer { node: from, timer, generation });
                }
                SiteOutput::Executed { seq, digest } => {
                    if correct {
                        self.checker.executed(from, seq, digest);
                    }
                }
                SiteOutput::Installed { seq, .. } => {
                    if correct {
                        self.checker.installed(from, seq);
                    }
                }
                SiteOutput::Persist(record) => {
                    if correct {
                        let durable = self.durable.entry(from).or_default();
                        durable.apply(record);
                        self.peak_records = self.peak_records.max(durable.held());
                    }
                }
                SiteOutput::Blamed { .. } => self.blamed += u64::from(correct),
                SiteOutput::Fault(_) => self.faults += 1,
                SiteOutput::Refused(refusal) => {
                    if correct {
                        *self.refusals.entry(refusal.name()).or_default() += 1;
                    }
                }
            }
        }
    }

    fn lan_delay(&mut self, from: Instant) -> Instant {
        let delay = self.rng.gen_range(self.config.lan_delay_min_us..=self.config.lan_delay_max_us);
        Instant(from.0 + delay)
    }

    fn faulty_now(&self) -> bool {
        self.config.faults_until.is_none_or(|until| self.now < until)
    }

    /// Over the LAN inside a site, over the WAN between sites; `departs` is when the
    /// sender is done with the input that made the message. A WAN message departing while
    /// a [`SiteCut`] of either end holds is lost.
    fn send(&mut self, from: PeerId, to: PeerId, message: SiteMessage<S>, departs: Instant) {
        for signed in message.site_signed() {
            self.checker.observe(signed);
        }
        if !self.nodes.contains_key(&to) {
            return;
        }
        if from.cluster == to.cluster {
            let faulty = self.faulty_now();
            if faulty && self.config.lan_drop > 0.0 && self.rng.gen_bool(self.config.lan_drop) {
                return;
            }
            let copies = if faulty && self.config.lan_duplicate > 0.0 && self.rng.gen_bool(self.config.lan_duplicate) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let at = self.lan_delay(departs);
                self.schedule(at, Event::Deliver { to, from, message: message.clone() });
            }
            return;
        }
        let bytes = message.wire_bytes(self.config.signature_bytes);
        let kind = self.wan_by_kind.entry(message.kind()).or_default();
        kind.0 += 1;
        kind.1 += bytes as u64;
        let arrivals = self.wan.send(from.cluster, to.cluster, bytes, departs, &mut self.rng);
        // A cut loses the message after it took its place on the link, as WAN loss does.
        if self.config.cuts.iter().any(|cut| cut.severs(from.cluster, to.cluster, departs)) {
            self.cut_losses += arrivals.len() as u64;
            return;
        }
        for at in arrivals {
            self.schedule(at, Event::Deliver { to, from, message: message.clone() });
        }
    }

    fn issue(&mut self, client: usize) {
        while self.clients[client].issued < self.config.updates_per_client
            && self.clients[client].client.outstanding() == 0
        {
            let index = self.clients[client].issued;
            let operation = (self.make_operation)(&mut self.rng, client, index);
            let bytes = rmp_serde::to_vec(&operation).expect("operations encode");
            let actions = self.clients[client]
                .client
                .handle(ClientInput::Invoke { operation: bytes, read_only: false }, self.now);
            self.clients[client].issued += 1;
            self.first_issue.get_or_insert(self.now);
            self.client_actions(client, actions);
        }
    }

    fn client_actions(&mut self, client: usize, actions: Vec<ClientAction>) {
        let home = self.clients[client].home;
        let mut completed = false;
        for action in actions {
            match action {
                ClientAction::Issued { timestamp } => {
                    self.clients[client].open.insert(timestamp, self.now);
                }
                ClientAction::Send { to, request } => {
                    let at = self.lan_delay(self.now);
                    self.schedule(at, Event::FromClient { to: PeerId::new(home, to), request });
                }
                ClientAction::Broadcast { request } => {
                    for id in self.members[&home].clone() {
                        let at = self.lan_delay(self.now);
                        self.schedule(at, Event::FromClient { to: PeerId::new(home, id), request: request.clone() });
                    }
                }
                ClientAction::SetTimer { at } => {
                    let node = &mut self.clients[client];
                    node.timer_generation += 1;
                    let generation = node.timer_generation;
                    self.schedule(at.max(self.now), Event::ClientTimer { client, generation });
                }
                ClientAction::Completed { timestamp, result } => {
                    let id = self.clients[client].client.id();
                    self.checker.accepted(id, timestamp, &result);
                    if let Some(issued) = self.clients[client].open.remove(&timestamp) {
                        self.load.latencies_us.push(self.now.0 - issued.0);
                    }
                    self.load.updates += 1;
                    self.load.span_us = self.now.0 - self.first_issue.unwrap_or(Instant::ZERO).0;
                    self.clients[client].completed += 1;
                    completed = true;
                }
                ClientAction::Rejected(error) => panic!("simulated client misconfigured: {error}"),
            }
        }
        if completed {
            self.issue(client);
        }
    }

    fn report(self, finished: bool) -> SitesReport {
        let totals = self.wan.totals();
        let mut load = self.load.clone();
        load.wan_messages = totals.messages;
        load.wan_bytes = totals.bytes;
        let final_states =
            self.correct().map(|(peer, replica)| (*peer, (replica.aru(), replica.state_digest()))).collect();
        let byzantine_sent = self
            .nodes
            .iter()
            .filter_map(|(peer, node)| match node {
                Node::Byzantine(replica) => Some((*peer, replica.sent())),
                Node::Correct(_) => None,
            })
            .collect();
        let waiting = if finished {
            BTreeMap::new()
        } else {
            self.correct().map(|(peer, replica)| (*peer, replica.waiting_for())).collect()
        };
        let stable_checkpoints = self.correct().map(|(peer, replica)| (*peer, replica.stable_checkpoint())).collect();
        let local_views = self
            .correct()
            .map(|(peer, replica)| {
                let views = replica.sites().keys().map(|site| (*site, replica.local_view_of(*site))).collect();
                (*peer, views)
            })
            .collect();
        let global_views = self.correct().map(|(peer, replica)| (*peer, replica.global_view())).collect();
        SitesReport {
            seed: self.config.seed,
            global_views,
            violations: self.checker.violations().to_vec(),
            checks: self.checker.checks(),
            updates_expected: self.config.updates_per_client * self.clients.len() as u64,
            updates_completed: self.clients.iter().map(|c| c.completed).sum(),
            trace: self.trace.finish(),
            final_states,
            stable_checkpoints,
            local_views,
            load,
            wan_by_kind: self.wan_by_kind,
            refusals: self.refusals,
            blamed: self.blamed,
            service_faults: self.faults,
            byzantine_sent,
            simulated_time: Duration::from_micros(self.now.0),
            events: self.delivered,
            finished,
            peak_held: self.peak_held,
            cut_losses: self.cut_losses,
            restarts: self.restarts_done,
            peak_records: self.peak_records,
            waiting,
        }
    }
}

/// A second copy of a secret share, for the Byzantine wrapper of the replica holding it.
fn copy_secret<S: ThresholdScheme>(secret: &S::SecretShare) -> S::SecretShare {
    let bytes = rmp_serde::to_vec(secret).expect("a secret share encodes");
    rmp_serde::from_slice(&bytes).expect("a secret share decodes")
}

/// A number naming a replica in the trace.
fn peer_code(peer: PeerId) -> u64 {
    ((peer.cluster.0 as u64) << 32) | peer.replica.0 as u64
}
