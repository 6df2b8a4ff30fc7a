//! The hand-driven world of the Steward rule tests: sites `ClusterId(1..=S)` of four
//! replicas (`ReplicaId(0..4)`; the representative is replica 0, the leader site is site 1)
//! driven through a FIFO message pump that loses what a test says, and helpers that pick
//! what replicas produced.
#![allow(dead_code)]

use bulwark_crypto::threshold::{Simulated, ThresholdScheme};
use bulwark_crypto::{Digest, KeyPair, Signed, Verified};
use bulwark_framework::batch::{Batch, Command};
use bulwark_framework::messages::{Request, VerifiedReply};
use bulwark_framework::sim::sites::{SitesConfig, SitesReport, SitesSimulation};
use bulwark_framework::steward::global::SiteSigned;
use bulwark_framework::steward::messages::{Proposal, SiteMessage};
use bulwark_framework::steward::payload::SitePayload;
use bulwark_framework::steward::sequencing::LocalVote;
use bulwark_framework::steward::site::{
    SiteDurable, SiteInfo, SiteInput, SiteOutput, SiteParams, SiteRefusal, SiteReplica, SiteSetup,
};
use bulwark_framework::{
    ClusterId, Epoch, Instant, Membership, MembershipHandle, PeerId, ProtocolParams, ReplicaId, SeqNum, Timestamp,
};
use bulwark_services::kv::{KvOp, KvStore};
use rand::Rng;
use rand_chacha::rand_core::SeedableRng;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

pub type S = Simulated;
pub type Out = (PeerId, SiteOutput<S>);
pub type SiteKeys = (Arc<<S as ThresholdScheme>::PublicKey>, Vec<<S as ThresholdScheme>::SecretShare>);

pub const LEADER: ClusterId = ClusterId(1);
/// The clock when a test starts, in microseconds.
pub const T0: u64 = 10_000_000;
pub const SKEW: u64 = 5_000_000;
pub const FORWARD_AGAIN: u64 = 1_000_000;

pub fn peer(site: u32, id: u32) -> PeerId {
    PeerId::new(ClusterId(site), ReplicaId(id))
}

/// One update per batch unless a test says otherwise; a checkpoint every 2 sequence numbers.
pub fn params() -> SiteParams {
    SiteParams {
        window: 8,
        batch_size_max: 1,
        batch_delay_us: 1_000,
        forward_again_us: FORWARD_AGAIN,
        clock_skew_max_us: SKEW,
        ..SiteParams::default()
    }
}

/// Distinct key seeds: replicas' by site, clients' under `0xC0`.
pub fn seed(a: u8, b: u8) -> [u8; 32] {
    let mut seed = [7; 32];
    (seed[0], seed[1]) = (a, b);
    seed
}

pub fn client_key(client: u8) -> KeyPair {
    KeyPair::from_seed(seed(0xC0, client))
}

pub fn put(client: u8) -> KvOp {
    KvOp::Put { key: format!("k{client}"), value: format!("value-{client}").into_bytes() }
}

pub fn encode(op: &KvOp) -> Vec<u8> {
    rmp_serde::to_vec(op).expect("an operation encodes")
}

/// Sites of four replicas, what they sent and produced, and the messages in flight.
pub struct World {
    pub replicas: BTreeMap<PeerId, SiteReplica<KvStore, S>>,
    pub memberships: BTreeMap<ClusterId, MembershipHandle>,
    /// Each site's key and copies of its members' secret shares, to sign as the site would.
    pub keys: BTreeMap<ClusterId, SiteKeys>,
    pub now: Instant,
    pub queue: VecDeque<(PeerId, PeerId, SiteMessage<S>)>,
    /// Every output of every replica, in order.
    pub trace: Vec<Out>,
    pub infos: BTreeMap<ClusterId, SiteInfo<S>>,
    pub params: SiteParams,
}

impl World {
    pub fn new(sites: u32, params: SiteParams) -> Self {
        Self::with_checkpoint_interval(sites, params, 2)
    }

    /// The same world with a site checkpoint (SK1) every `interval` sequence numbers.
    pub fn with_checkpoint_interval(sites: u32, params: SiteParams, interval: u64) -> Self {
        Self::with_protocol(
            sites,
            params,
            ProtocolParams { checkpoint_interval: interval, ..ProtocolParams::default() },
        )
    }

    /// The same world with these PBFT parameters at every site (checkpoint interval, chunk
    /// size of checkpoint images).
    pub fn with_protocol(sites: u32, params: SiteParams, protocol: ProtocolParams) -> Self {
        let deal = |site: u32| S::deal(4, 3, &mut rand_chacha::ChaCha20Rng::seed_from_u64(site.into()));
        let (mut infos, mut memberships, mut keys, mut pairs) =
            (BTreeMap::new(), BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        for site in (1..=sites).map(ClusterId) {
            let (key, secrets) = deal(site.0);
            let key = Arc::new(key);
            let members: Vec<ReplicaId> = (0..4).map(ReplicaId).collect();
            let site_pairs: Vec<KeyPair> = (0..4u8).map(|id| KeyPair::from_seed(seed(site.0 as u8, id))).collect();
            let public = members.iter().zip(&site_pairs).map(|(id, pair)| (*id, pair.public()));
            let membership = Membership::new(site, Epoch(0), public, protocol.clone()).expect("a valid site");
            memberships.insert(site, MembershipHandle::new(membership));
            infos.insert(site, SiteInfo { members, key: key.clone() });
            keys.insert(site, (key, secrets));
            pairs.insert(site, site_pairs);
        }
        let mut replicas = BTreeMap::new();
        for (site, site_pairs) in pairs {
            // The same dealing again: the replicas' own copies of the secret shares.
            for ((id, pair), secret) in site_pairs.into_iter().enumerate().zip(deal(site.0).1) {
                let setup = SiteSetup {
                    site,
                    id: ReplicaId(id as u32),
                    key: Arc::new(pair),
                    membership: memberships[&site].clone(),
                    sites: infos.clone(),
                    secret,
                    params: params.clone(),
                };
                replicas.insert(
                    PeerId::new(site, ReplicaId(id as u32)),
                    SiteReplica::new(setup, KvStore::new()).expect("valid parameters"),
                );
            }
        }
        World {
            replicas,
            memberships,
            keys,
            now: Instant(T0),
            queue: VecDeque::new(),
            trace: Vec::new(),
            infos,
            params,
        }
    }

    /// Replica `at` crashes and comes back from what it persisted (every
    /// [`SiteOutput::Persist`] it produced so far, in order); with `forget`, from nothing.
    pub fn restart(&mut self, at: PeerId, forget: bool) {
        let mut durable = SiteDurable::default();
        if !forget {
            for (_, output) in self.trace.iter().filter(|(from, _)| *from == at) {
                if let SiteOutput::Persist(record) = output {
                    durable.apply(record.clone());
                }
            }
        }
        let deal = S::deal(4, 3, &mut rand_chacha::ChaCha20Rng::seed_from_u64(at.cluster.0.into()));
        let secret = deal.1.into_iter().nth(at.replica.0 as usize).expect("a member's share");
        let setup = SiteSetup {
            site: at.cluster,
            id: at.replica,
            key: Arc::new(KeyPair::from_seed(seed(at.cluster.0 as u8, at.replica.0 as u8))),
            membership: self.memberships[&at.cluster].clone(),
            sites: self.infos.clone(),
            secret,
            params: self.params.clone(),
        };
        let replica = SiteReplica::recover(setup, KvStore::new(), &durable).expect("valid parameters");
        self.replicas.insert(at, replica);
    }

    pub fn replica(&self, at: PeerId) -> &SiteReplica<KvStore, S> {
        &self.replicas[&at]
    }

    /// Hands `input` to replica `to`; its sends join the queue. Returns what it produced.
    pub fn feed(&mut self, to: PeerId, input: SiteInput<S>) -> &[Out] {
        let start = self.trace.len();
        for output in self.replicas.get_mut(&to).expect("a replica").handle(input, self.now) {
            match &output {
                SiteOutput::ToSite(message) => {
                    for other in (0..4).map(ReplicaId).filter(|id| *id != to.replica) {
                        self.queue.push_back((to, PeerId::new(to.cluster, other), message.clone()));
                    }
                }
                SiteOutput::To { peer, message } => self.queue.push_back((to, *peer, message.clone())),
                _ => {}
            }
            self.trace.push((to, output));
        }
        &self.trace[start..]
    }

    pub fn deliver(&mut self, from: PeerId, to: PeerId, message: SiteMessage<S>) -> &[Out] {
        self.feed(to, SiteInput::Message { from, message })
    }

    /// Delivers the queue in order until it is empty; `lost(from, to, message)` messages
    /// are dropped.
    pub fn pump(&mut self, lost: impl Fn(PeerId, PeerId, &SiteMessage<S>) -> bool) {
        let mut steps = 0;
        while let Some((from, to, message)) = self.queue.pop_front() {
            steps += 1;
            assert!(steps < 100_000, "the pump does not settle");
            if !lost(from, to, &message) {
                self.deliver(from, to, message);
            }
        }
    }

    pub fn run(&mut self) {
        self.pump(|_, _, _| false);
    }

    /// An update of `client` (one of site `site`'s clients), signed by it.
    pub fn request(&self, site: u32, client: u8, op: &KvOp, read_only: bool) -> Verified<Request> {
        let key = client_key(client);
        let request =
            Request { client_key: key.public().into(), timestamp: Timestamp(1), read_only, operation: encode(op) };
        self.memberships[&ClusterId(site)].sign(request, &key)
    }

    /// A batch of one update of leader-site client `client`, at agreed time `time_us`.
    pub fn batch(&self, client: u8, time_us: u64) -> Arc<Batch> {
        Arc::new(Batch::timed(vec![Command::Request(self.request(1, client, &put(client), false))], time_us))
    }

    /// `payload` signed with three shares of `signer`'s key (its own site, or another).
    pub fn signed_by(&self, signer: ClusterId, payload: SitePayload) -> SiteSigned<S> {
        let (key, secrets) = &self.keys[&signer];
        let message = payload.message();
        let shares: Vec<_> = secrets.iter().take(3).map(|s| (S::index(s), S::sign_share(s, &message))).collect();
        SiteSigned { payload, signature: S::combine(key, &shares).expect("three shares combine") }
    }

    pub fn signed(&self, payload: SitePayload) -> SiteSigned<S> {
        self.signed_by(payload.site(), payload)
    }

    /// A local vote of replica `id` of `site`, signed with its key.
    pub fn vote(&self, (site, id): (u32, u32), (gv, lv, seq): (u64, u64, u64), digest: Digest) -> Signed<LocalVote> {
        let vote = LocalVote { gv, lv, seq: SeqNum(seq), digest, replica: ReplicaId(id) };
        let key = KeyPair::from_seed(seed(site as u8, id as u8));
        self.memberships[&ClusterId(site)].sign(vote, &key).into_signed()
    }

    /// The PRE-PREPARE of replica `id` of `site` binding `batch` at `at`.
    pub fn pre_prepare(&self, (site, id): (u32, u32), at: (u64, u64, u64), batch: Arc<Batch>) -> SiteMessage<S> {
        SiteMessage::PrePrepare { vote: self.vote((site, id), at, batch.digest()), batch }
    }

    /// The PREPARE of replica `id` of `site` for `digest` at `at`.
    pub fn prepare(&self, (site, id): (u32, u32), at: (u64, u64, u64), digest: Digest) -> SiteMessage<S> {
        SiteMessage::Prepare(self.vote((site, id), at, digest))
    }

    /// The leader site's PROPOSAL binding `batch` to `seq`.
    pub fn proposal(&self, seq: u64, batch: Arc<Batch>) -> Proposal<S> {
        Proposal { signed: self.signed(proposal_payload(seq, batch.digest())), batch }
    }
}

pub fn proposal_payload(seq: u64, updates: Digest) -> SitePayload {
    SitePayload::Proposal { site: LEADER, gv: 0, lv: 0, seq: SeqNum(seq), updates }
}

pub fn accept_payload(site: u32, seq: u64, updates: Digest) -> SitePayload {
    SitePayload::Accept { site: ClusterId(site), gv: 0, lv: 0, seq: SeqNum(seq), updates }
}

/// The sends among `out`: kind, sender, and the replica it is for (`None`: its whole site).
pub fn sends(out: &[Out]) -> Vec<(&'static str, PeerId, Option<PeerId>)> {
    pick(out, |from, o| match o {
        SiteOutput::ToSite(message) => Some((message.kind(), from, None)),
        SiteOutput::To { peer, message } => Some((message.kind(), from, Some(*peer))),
        _ => None,
    })
}

/// Sends of `kind` from one site to another: (sender, receiver).
pub fn wan(out: &[Out], kind: &str) -> Vec<(PeerId, PeerId)> {
    sends(out)
        .into_iter()
        .filter_map(|(k, from, to)| to.filter(|to| k == kind && to.cluster != from.cluster).map(|to| (from, to)))
        .collect()
}

/// Who shared `payload` with their site, in order of id.
pub fn sharers(out: &[Out], payload: SitePayload) -> Vec<PeerId> {
    let wanted = payload.message();
    let mut sharers = pick(out, |from, o| match o {
        SiteOutput::ToSite(SiteMessage::Share { message, .. }) if *message == wanted => Some(from),
        _ => None,
    });
    sharers.sort();
    sharers
}

/// What `pick` finds among `out`, in order.
pub fn pick<T>(out: &[Out], pick: impl Fn(PeerId, &SiteOutput<S>) -> Option<T>) -> Vec<T> {
    out.iter().filter_map(|(from, output)| pick(*from, output)).collect()
}

pub fn refusals(out: &[Out]) -> Vec<SiteRefusal> {
    pick(out, |_, o| if let SiteOutput::Refused(refusal) = o { Some(*refusal) } else { None })
}

pub fn replies(out: &[Out]) -> Vec<(PeerId, VerifiedReply)> {
    pick(out, |from, o| if let SiteOutput::Reply { reply, .. } = o { Some((from, reply.clone())) } else { None })
}

/// The batches `at` executed: sequence number and digest.
pub fn executed(out: &[Out], at: PeerId) -> Vec<(u64, Digest)> {
    pick(out, |from, o| match o {
        SiteOutput::Executed { seq, digest } if from == at => Some((seq.0, *digest)),
        _ => None,
    })
}

/// The PRE-PREPAREs among `out`: sequence number and batch size.
pub fn pre_prepares(out: &[Out]) -> Vec<(u64, usize)> {
    pick(out, |_, o| match o {
        SiteOutput::ToSite(SiteMessage::PrePrepare { vote, batch }) => Some((vote.payload.seq.0, batch.len())),
        _ => None,
    })
}

pub fn every_replica(sites: u32) -> impl Iterator<Item = PeerId> {
    (1..=sites).flat_map(|site| (0..4).map(move |id| peer(site, id)))
}

/// A client's `index`-th operation in multi-site runs: every client appends to one of eight
/// keys, so any difference in order shows in the state digest.
pub fn kv_operation(rng: &mut rand_chacha::ChaCha8Rng, client: usize, index: u64) -> KvOp {
    let key = format!("k{}", rng.gen_range(0..8));
    KvOp::Append { key, value: vec![client as u8, (index % 251) as u8] }
}

/// A multi-site run of the simulator with the threshold scheme `T`.
pub fn run_sites<T: ThresholdScheme>(config: SitesConfig) -> SitesReport {
    SitesSimulation::<KvStore, T>::new(config, KvStore::new, kv_operation).expect("valid configuration").run()
}

/// Seeds to run: `BULWARK_SEED` replays a single one; otherwise `count` from `first`.
pub fn seeds(first: u64, count: u64) -> Vec<u64> {
    match std::env::var("BULWARK_SEED") {
        Ok(seed) => vec![seed.parse().expect("BULWARK_SEED is a number")],
        Err(_) => (first..first + count).collect(),
    }
}

pub fn assert_safe_and_converged(report: &SitesReport) {
    assert!(report.violations.is_empty(), "safety violated: {report}");
    assert!(report.checks > 0, "the checker checked nothing: {report}");
    assert!(
        report.converged(),
        "did not converge: {report}\nrefusals: {:?}\nwaiting: {:#?}",
        report.refusals,
        report.waiting
    );
}
