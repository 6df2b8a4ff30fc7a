//! What defines a run besides the service: the cluster, the workload, the network model and
//! every scheduled fault. Plain data with defaults, kept apart from the event loop that
//! reads it.

use super::byzantine::Strategy;
use super::byzantine_client::ByzantineClientSpec;
use super::wan::{CpuCosts, WanPlacement};
use crate::config::ProtocolParams;
use crate::ids::{ClusterId, Instant, ReplicaId};
use crate::messages::MessageKind;
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
    pub(super) fn group_of(&self, instance: Instance) -> Option<usize> {
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
    /// Byzantine clients besides the correct ones (see
    /// [`byzantine_client`](super::byzantine_client)).
    pub byzantine_clients: Vec<ByzantineClientSpec>,
    /// Spreads the cluster over sites joined by wide-area links (flat PBFT over a WAN, see
    /// [`flat_wan`](super::flat_wan)). A message between two sites crosses its WAN link,
    /// with that link's latency, bandwidth queue, loss and duplication instead of
    /// `network`'s; within a site `network` applies as without a placement. `None` (the
    /// default): one site, every run as before.
    pub wan: Option<WanPlacement>,
    /// Models each replica instance's CPU: it handles one input at a time, pays
    /// `ed25519_verify_us` per signature it checks and `ed25519_sign_us` per signature it
    /// puts on the wire, and what it sends leaves when its step is done (the model in full:
    /// `framework/src/sim/cpu.rs`). `None` (the default): all of it is free and instant.
    pub cpu: Option<CpuCosts>,
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
            wan: None,
            cpu: None,
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
