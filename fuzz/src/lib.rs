//! Shared harness of Bulwark's cargo-fuzz targets (see `fuzz/README.md`).
//!
//! The fuzzer does not write signatures: it writes *steps* ([`Step`], [`ClientStep`]),
//! structured values decoded from its bytes with `arbitrary`, and the harness turns each
//! step into messages signed with the cluster's real test keys (the keys of
//! `framework/tests/fuzz_roles.rs`), so that most inputs get past edge verification and
//! reach the role handlers. Some steps still carry raw bytes ([`Step::Raw`]) or damage a
//! well-formed message after signing ([`Step::Mutate`]), so the refusal paths are kept too.
//!
//! The harness also watches what the replica sends and keeps a small [`Pool`] of it
//! (slots it pre-prepared or voted for, checkpoints it signed, state chunks it asked for,
//! its own VIEW-CHANGEs). Steps such as [`Step::Agree`] answer from that pool with
//! matching votes from the other members, which is what lets a fuzzed replica execute
//! batches, take checkpoints, change views and transfer state instead of refusing
//! everything as "digest unknown".
//!
//! Every target checks, after each input, what `fuzz_roles.rs` checks (no panic, view,
//! stable checkpoint and execution never go back, every bounded structure within its
//! bound) and one more thing: every message a correct replica or client sends must pass
//! edge verification at a correct receiver and fit in a frame.

use arbitrary::{Arbitrary, Unstructured};
use bulwark_crypto::merkle::MerkleTree;
use bulwark_crypto::{Digest, KeyPair, Signature, Signed, Verified};
use bulwark_framework::config::ClientAuth;
use bulwark_framework::messages::{
    reply_messages, Batch, BatchReply, BatchRequest, BundledReply, Checkpoint, ClientKey, Commit, Inquiry, Message,
    NewView, PrePrepare, Prepare, PreparedCertificate, Reply, ReplyBundle, ReplyRoot, Report, Request, SlotProgress,
    StateReply, StateRequest, Status, VerifiedMessage, VerifiedReply, ViewChange, WireCommand,
};
use bulwark_framework::roles::node::Node;
use bulwark_framework::roles::view_change::compute_order;
use bulwark_framework::signing::Scoped;
use bulwark_framework::state::ChunkedImage;
use bulwark_framework::verify::{
    verify_message, verify_reply, verify_reply_bundle, verify_view_change, Refusal, ReplyRootCache,
};
use bulwark_framework::{
    wire, Action, Client, ClientAction, ClientId, ClientInput, ClusterId, Epoch, Input, Instant, Membership, MembershipHandle, Role,
    Outcome, ProtocolParams, Replica, ReplicaId, Scope, SeqNum, Service, ServiceError, TimerKind, Timestamp, View,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

/// Members of the fuzzed cluster (`f = 1`).
pub const N: u32 = 4;
/// Keys the harness signs with: replicas `0..N` are members, `N` and `N + 1` are not.
const SIGNERS: u32 = N + 2;
/// Clients the harness signs requests for.
pub const CLIENTS: u8 = 4;
/// Steps run per input at most (bounds the time of one execution).
pub const STEPS_MAX: usize = 96;
/// Entries the pool keeps of each kind.
const POOL_MAX: usize = 32;

// ---------------------------------------------------------------------------------------
// Keys and configuration
// ---------------------------------------------------------------------------------------

struct Keys {
    replicas: Vec<KeyPair>,
    clients: Vec<KeyPair>,
}

// The seeds of framework/tests/fuzz_roles.rs.
fn replica_seed(i: u32) -> [u8; 32] {
    [(i % SIGNERS) as u8 + 1; 32]
}

fn client_seed(i: u8) -> [u8; 32] {
    [100 + i % CLIENTS; 32]
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        replicas: (0..SIGNERS).map(|i| KeyPair::from_seed(replica_seed(i))).collect(),
        clients: (0..CLIENTS).map(|i| KeyPair::from_seed(client_seed(i))).collect(),
    })
}

/// The signing key of replica `i` (`i < N + 2`; `N` and up are not members).
pub fn replica_key(i: u32) -> &'static KeyPair {
    &keys().replicas[(i % SIGNERS) as usize]
}

/// The signing key of client `i`.
pub fn client_key(i: u8) -> &'static KeyPair {
    &keys().clients[(i % CLIENTS) as usize]
}

/// Small parameters so that windows, checkpoints, buffers and chunked state transfer are
/// all reached within a few dozen steps (those of `fuzz_roles.rs`, plus a small client
/// window and client table so that their eviction is reached too).
pub fn params() -> ProtocolParams {
    ProtocolParams {
        checkpoint_interval: 4,
        watermark_window: 8,
        batch_size_max: 4,
        future_messages_per_sender_max: 16,
        request_queue_max: 64,
        state_chunk_bytes: 64,
        client_window: 8,
        client_table_max: 3,
        ..ProtocolParams::default()
    }
}

/// The fuzzed cluster's configuration, with signed client requests and replies (the
/// default).
pub fn config() -> Arc<Membership> {
    config_for(ClientAuth::Signed)
}

/// The fuzzed cluster's configuration with client authentication `auth` (built once each).
pub fn config_for(auth: ClientAuth) -> Arc<Membership> {
    static SIGNED: OnceLock<Arc<Membership>> = OnceLock::new();
    static CONNECTION: OnceLock<Arc<Membership>> = OnceLock::new();
    let cell = match auth {
        ClientAuth::Signed => &SIGNED,
        ClientAuth::Connection => &CONNECTION,
    };
    cell.get_or_init(|| {
        let members = (0..N).map(|i| replica_key(i).public()).collect();
        let params = ProtocolParams { client_auth: auth, ..params() };
        Arc::new(Membership::numbered(SCOPE.cluster, members, params).expect("the fuzz configuration is valid"))
    })
    .clone()
}

/// The client authentication a target's mode byte selects: connection mode for one byte in
/// four (the top two bits set), signed otherwise.
pub fn auth_of(mode: u8) -> ClientAuth {
    if mode >> 6 == 3 {
        ClientAuth::Connection
    } else {
        ClientAuth::Signed
    }
}

/// The scope every message of the fuzzed cluster is signed in.
pub const SCOPE: Scope = Scope { cluster: ClusterId(1), epoch: Epoch(0) };

fn sign<T: Scoped>(payload: T, by: u32) -> Signed<T> {
    SCOPE.sign(payload, replica_key(by)).into_signed()
}

/// A membership handle of its own on `config`, as each replica or client holds one.
pub fn handle(config: &Membership) -> MembershipHandle {
    MembershipHandle::new(config.clone())
}

// ---------------------------------------------------------------------------------------
// The replicated service
// ---------------------------------------------------------------------------------------

/// The operations of [`FuzzKv`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FuzzOp {
    Put { key: u8, value: Vec<u8> },
    Get { key: u8 },
}

/// A tiny key-value store: deterministic, canonical snapshots, and a `restore` that
/// refuses (never panics on) bytes it did not write.
#[derive(Debug, Default, Clone)]
pub struct FuzzKv {
    map: BTreeMap<u8, Vec<u8>>,
}

impl Service for FuzzKv {
    type Op = FuzzOp;
    type Reply = Option<Vec<u8>>;

    fn execute(&mut self, op: &FuzzOp) -> Option<Vec<u8>> {
        match op {
            FuzzOp::Put { key, value } => self.map.insert(*key, value.clone()),
            FuzzOp::Get { key } => self.map.get(key).cloned(),
        }
    }

    fn query(&self, op: &FuzzOp) -> Option<Option<Vec<u8>>> {
        match op {
            FuzzOp::Get { key } => Some(self.map.get(key).cloned()),
            FuzzOp::Put { .. } => None,
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        rmp_serde::to_vec(&self.map).expect("a map of bytes always encodes")
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), ServiceError> {
        self.map = rmp_serde::from_slice(snapshot).map_err(|e| ServiceError(e.to_string()))?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Fuzzer-chosen values
// ---------------------------------------------------------------------------------------

/// A number that is small most of the time (views, sequence numbers and timestamps near
/// the replica's window) and sometimes anything, or just below `u64::MAX`, to find
/// overflows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Num(pub u64);

impl<'a> Arbitrary<'a> for Num {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let tag: u8 = u.arbitrary()?;
        Ok(Num(match tag {
            0..=223 => u64::from(tag % 32),
            224..=239 => u64::from(u.arbitrary::<u16>()?),
            240..=247 => u64::MAX - u64::from(tag - 240),
            _ => u.arbitrary::<u64>()?,
        }))
    }

    fn size_hint(_depth: usize) -> (usize, Option<usize>) {
        (1, Some(9))
    }
}

/// A signer: mostly a member, rarely one of two non-members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub struct Who(pub u8);

impl Who {
    pub fn id(self) -> u32 {
        if self.0 >= 248 {
            N + u32::from(self.0 & 1)
        } else {
            u32::from(self.0) % N
        }
    }
}

/// An operation: one the service understands, or bytes it does not.
#[derive(Debug, Clone, Arbitrary)]
pub enum OpSpec {
    Put { key: u8, value: u8 },
    Get { key: u8 },
    Raw(Vec<u8>),
}

impl OpSpec {
    pub fn encode(&self) -> Vec<u8> {
        let op = match self {
            OpSpec::Put { key, value } => FuzzOp::Put { key: key % 8, value: vec![*value] },
            OpSpec::Get { key } => FuzzOp::Get { key: key % 8 },
            OpSpec::Raw(bytes) => return bytes.clone(),
        };
        rmp_serde::to_vec(&op).expect("an operation always encodes")
    }
}

/// A client request.
#[derive(Debug, Clone, Arbitrary)]
pub struct ReqSpec {
    pub client: u8,
    pub timestamp: Num,
    /// Read-only when `flags % 8 == 7`; sent without a signature (as in connection mode)
    /// when `flags >> 5 == 7`.
    pub flags: u8,
    pub op: OpSpec,
}

impl ReqSpec {
    fn payload(&self) -> Request {
        Request {
            client_key: client_key(self.client).public().into(),
            timestamp: Timestamp(self.timestamp.0),
            read_only: self.flags % 8 == 7,
            operation: self.op.encode(),
        }
    }

    fn unsigned(&self) -> bool {
        self.flags >> 5 == 7
    }

    pub fn signed(&self) -> Signed<Request> {
        if self.unsigned() {
            return Signed { payload: self.payload(), signature: Signature::absent() };
        }
        SCOPE.sign(self.payload(), client_key(self.client)).into_signed()
    }

    fn verified(&self) -> Verified<Request> {
        if self.unsigned() {
            return SCOPE.unsigned(self.payload());
        }
        SCOPE.sign(self.payload(), client_key(self.client))
    }
}

/// A batch: the null request, one made of fuzzer-chosen requests, or one seen before.
#[derive(Debug, Clone, Arbitrary)]
pub enum BatchChoice {
    Null,
    Spec(Vec<ReqSpec>),
    Pool(u8),
}

/// A digest: of a batch, of a slot seen before, or any 32 bytes.
#[derive(Debug, Clone, Arbitrary)]
pub enum DigestChoice {
    Pool(u8),
    Batch(BatchChoice),
    Bytes([u8; 32]),
}

/// A vote or proposal: its view, sequence number and digest.
#[derive(Debug, Clone, Arbitrary)]
pub struct VoteSpec {
    pub from: Who,
    pub view: Num,
    pub seq: Num,
    pub digest: DigestChoice,
}

/// A proposal with its batch, signed by the primary of its view.
#[derive(Debug, Clone, Arbitrary)]
pub struct PrePrepareSpec {
    pub view: Num,
    pub seq: Num,
    pub batch: BatchChoice,
    /// Sign with the key of `primary(view) + 1` instead (a replica proposing out of turn).
    pub out_of_turn: bool,
}

/// Votes of several members for a slot from the pool.
#[derive(Debug, Clone, Arbitrary)]
pub struct AgreeSpec {
    pub slot: u8,
    /// Members (low four bits; none means every other member) that send PREPARE.
    pub prepares: u8,
    /// Members that send COMMIT.
    pub commits: u8,
}

/// A CHECKPOINT.
#[derive(Debug, Clone, Arbitrary)]
pub struct CheckpointSpec {
    pub from: Who,
    pub seq: Num,
    pub digest: DigestChoice,
}

/// CHECKPOINTs of several members for a checkpoint from the pool.
#[derive(Debug, Clone, Arbitrary)]
pub struct AgreeCheckpointSpec {
    pub checkpoint: u8,
    pub members: u8,
}

/// A prepared certificate inside a VIEW-CHANGE.
#[derive(Debug, Clone, Arbitrary)]
pub struct CertSpec {
    /// A slot from the pool, or these fields.
    pub slot: Option<u8>,
    pub view: Num,
    pub seq: Num,
    pub digest: DigestChoice,
    /// `% 16`: 1 drops a prepare, 2 adds the primary's, 3 mismatches a sequence number,
    /// anything else is a valid certificate.
    pub tamper: u8,
}

/// The body of a VIEW-CHANGE (its view comes from the caller).
#[derive(Debug, Clone, Arbitrary)]
pub struct VcBody {
    pub from: Who,
    /// A checkpoint from the pool, with a proof of `2f + 1` CHECKPOINTs, or none.
    pub stable: Option<u8>,
    pub prepared: Vec<CertSpec>,
}

/// A VIEW-CHANGE.
#[derive(Debug, Clone, Arbitrary)]
pub struct VcSpec {
    pub view: Num,
    pub body: VcBody,
}

/// A NEW-VIEW whose `O` is computed from its `V` as VC12 says (unless tampered with).
#[derive(Debug, Clone, Arbitrary)]
pub struct NvSpec {
    pub view: Num,
    /// VIEW-CHANGEs of `V`; padded to `2f + 1` distinct senders.
    pub view_changes: Vec<VcBody>,
    /// Use the replica's own VIEW-CHANGE for this view in `V` when it sent one.
    pub with_own: bool,
    /// `% 16`: 1 drops the last entry of `O`, 2 signs with another key, 3 keeps `V` short,
    /// anything else is a valid NEW-VIEW.
    pub tamper: u8,
}

/// A STATUS.
#[derive(Debug, Clone, Arbitrary)]
pub struct StatusSpec {
    pub from: Who,
    pub view: Num,
    pub stable: Num,
    pub last_executed: Num,
    pub first_slot: Num,
    pub slots: Vec<u8>,
}

/// A STATE-REQ.
#[derive(Debug, Clone, Arbitrary)]
pub struct StateRequestSpec {
    pub from: Who,
    pub seq: Num,
    pub chunk: Num,
}

/// A STATE-CHUNK with made-up contents (it verifies against no digest).
#[derive(Debug, Clone, Arbitrary)]
pub struct StateReplySpec {
    pub from: Who,
    pub seq: Num,
    pub total_bytes: Num,
    pub index: Num,
    pub data: Vec<u8>,
    pub path: u8,
}

/// The service part of a checkpoint image.
#[derive(Debug, Clone, Arbitrary)]
pub enum ServiceImage {
    Map(Vec<(u8, Vec<u8>)>),
    Raw(Vec<u8>),
}

/// One client of the client table in a checkpoint image.
#[derive(Debug, Clone, Arbitrary)]
pub struct ClientImage {
    /// `< 8`: one of the harness's clients; otherwise an arbitrary id.
    pub client: u8,
    pub id: u64,
    pub top: Num,
    pub results: Vec<(Num, Vec<u8>)>,
    pub last_active: Num,
}

/// A checkpoint image: well-formed (the executor's encoding, service snapshot and client
/// table) with fuzzer-chosen contents, or any bytes.
#[derive(Debug, Clone, Arbitrary)]
pub enum ImageSpec {
    Structured { service: ServiceImage, clients: Vec<ClientImage> },
    Raw(Vec<u8>),
}

/// A checkpoint image made stable by CHECKPOINTs of `2f + 1` members other than the
/// fuzzed replica, so that a replica behind it fetches it by state transfer.
#[derive(Debug, Clone, Arbitrary)]
pub struct CertifyImageSpec {
    pub image: ImageSpec,
    /// Multiplied by the checkpoint interval.
    pub seq: Num,
    /// Members (low four bits) that sign; none means every other member.
    pub members: u8,
}

/// A STATE-CHUNK of an image from the pool, correct with its Merkle path.
#[derive(Debug, Clone, Arbitrary)]
pub struct StateChunkSpec {
    /// Answer every STATE-REQ the replica sent since the last such step (when it sent one).
    pub answer_requests: bool,
    pub from: Who,
    pub image: u8,
    pub chunk: Num,
}

/// A BATCH-REQ.
#[derive(Debug, Clone, Arbitrary)]
pub struct BatchRequestSpec {
    pub from: Who,
    pub digests: Vec<DigestChoice>,
}

/// A BATCH: answers the replica's last BATCH-REQ from the pool when it can.
#[derive(Debug, Clone, Arbitrary)]
pub struct BatchReplySpec {
    pub from: Who,
    pub answer_request: bool,
    pub batch: BatchChoice,
}

/// One reply of a [`BundleSpec`].
#[derive(Debug, Clone, Arbitrary)]
pub struct BundledSpec {
    pub client: u8,
    pub timestamp: Num,
    pub result: ResultChoice,
}

/// The replies of one executed batch under one signed Merkle root, as a replica's executor
/// makes them (replicas must refuse them; they are for clients).
#[derive(Debug, Clone, Arbitrary)]
pub struct BundleSpec {
    pub from: Who,
    pub view: Num,
    pub seq: Num,
    pub replies: Vec<BundledSpec>,
    /// See [`reply_bundle`].
    pub tamper: u8,
}

/// A timer firing.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum TimerChoice {
    /// The earliest timer the replica set, at its deadline (time moves there).
    Next,
    /// This kind, now (due or not: a role must ignore a firing that is no longer due).
    Batch,
    Status,
    Request,
    ViewChange,
}

/// One step of a replica target.
#[derive(Debug, Clone, Arbitrary)]
pub enum Step {
    Request(ReqSpec),
    PrePrepare(PrePrepareSpec),
    Prepare(VoteSpec),
    Commit(VoteSpec),
    Agree(AgreeSpec),
    Checkpoint(CheckpointSpec),
    AgreeCheckpoint(AgreeCheckpointSpec),
    ViewChange(VcSpec),
    NewView(NvSpec),
    Status(StatusSpec),
    StateRequest(StateRequestSpec),
    StateReply(StateReplySpec),
    CertifyImage(CertifyImageSpec),
    StateChunk(StateChunkSpec),
    BatchRequest(BatchRequestSpec),
    BatchReply(BatchReplySpec),
    Inquiry {
        client: u8,
        nonce: u64,
    },
    /// A REPLY or REPORT sent to a replica (it must refuse them).
    Stray {
        from: Who,
        report: bool,
    },
    /// A bundle of replies under a signed root.
    Replies(BundleSpec),
    /// The message of `step`, encoded, with bytes changed, then decoded again.
    Mutate {
        step: Box<Step>,
        edits: Vec<(u16, u8)>,
    },
    /// Bytes straight into the decoder (an envelope, no length prefix).
    Raw(Vec<u8>),
    Timer(TimerChoice),
    /// Time passes: `millis` milliseconds (up to about a minute).
    Wait {
        millis: u16,
    },
}

/// The steps of the view-change target: the same steps, with the view-change ones more
/// likely.
#[derive(Debug, Clone, Arbitrary)]
pub enum ViewStep {
    ViewChange(VcSpec),
    ViewChangeFromMany { view: Num, members: u8, body: VcBody },
    NewView(NvSpec),
    Agree(AgreeSpec),
    AgreeCheckpoint(AgreeCheckpointSpec),
    Request(ReqSpec),
    PrePrepare(PrePrepareSpec),
    Timer(TimerChoice),
    Wait { millis: u16 },
    BatchReply(BatchReplySpec),
    Other(Step),
}

impl ViewStep {
    /// The steps this one stands for.
    pub fn steps(self) -> Vec<Step> {
        match self {
            ViewStep::ViewChange(spec) => vec![Step::ViewChange(spec)],
            ViewStep::ViewChangeFromMany { view, members, body } => members_or_all(members, None)
                .into_iter()
                .map(|from| Step::ViewChange(VcSpec { view, body: VcBody { from: Who(from as u8), ..body.clone() } }))
                .collect(),
            ViewStep::NewView(spec) => vec![Step::NewView(spec)],
            ViewStep::Agree(spec) => vec![Step::Agree(spec)],
            ViewStep::AgreeCheckpoint(spec) => vec![Step::AgreeCheckpoint(spec)],
            ViewStep::Request(spec) => vec![Step::Request(spec)],
            ViewStep::PrePrepare(spec) => vec![Step::PrePrepare(spec)],
            ViewStep::Timer(timer) => vec![Step::Timer(timer)],
            ViewStep::Wait { millis } => vec![Step::Wait { millis }],
            ViewStep::BatchReply(spec) => vec![Step::BatchReply(spec)],
            ViewStep::Other(step) => vec![step],
        }
    }
}

/// The steps of the state-transfer target.
#[derive(Debug, Clone, Arbitrary)]
pub enum TransferStep {
    CertifyImage(CertifyImageSpec),
    StateChunk(StateChunkSpec),
    StateReply(StateReplySpec),
    StateRequest(StateRequestSpec),
    Agree(AgreeSpec),
    AgreeCheckpoint(AgreeCheckpointSpec),
    Checkpoint(CheckpointSpec),
    Request(ReqSpec),
    PrePrepare(PrePrepareSpec),
    Status(StatusSpec),
    Timer(TimerChoice),
    Wait { millis: u16 },
    Other(Step),
}

impl TransferStep {
    pub fn step(self) -> Step {
        match self {
            TransferStep::CertifyImage(spec) => Step::CertifyImage(spec),
            TransferStep::StateChunk(spec) => Step::StateChunk(spec),
            TransferStep::StateReply(spec) => Step::StateReply(spec),
            TransferStep::StateRequest(spec) => Step::StateRequest(spec),
            TransferStep::Agree(spec) => Step::Agree(spec),
            TransferStep::AgreeCheckpoint(spec) => Step::AgreeCheckpoint(spec),
            TransferStep::Checkpoint(spec) => Step::Checkpoint(spec),
            TransferStep::Request(spec) => Step::Request(spec),
            TransferStep::PrePrepare(spec) => Step::PrePrepare(spec),
            TransferStep::Status(spec) => Step::Status(spec),
            TransferStep::Timer(timer) => Step::Timer(timer),
            TransferStep::Wait { millis } => Step::Wait { millis },
            TransferStep::Other(step) => step,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The pool and the message builder
// ---------------------------------------------------------------------------------------

/// A checkpoint image held by the harness, to serve chunks of.
#[derive(Debug, Clone)]
pub struct HeldImage {
    pub seq: SeqNum,
    pub image: ChunkedImage,
}

/// What the harness has seen or made, for steps to refer to.
#[derive(Debug, Default)]
pub struct Pool {
    /// `(view, seq, digest)` of proposals and votes.
    pub slots: Vec<(View, SeqNum, Digest)>,
    /// Batches by digest, in wire form.
    pub batches: Vec<(Digest, Vec<WireCommand>)>,
    /// `(seq, state digest)` of checkpoints.
    pub checkpoints: Vec<(SeqNum, Digest)>,
    /// Images to serve.
    pub images: Vec<HeldImage>,
    /// STATE-REQs the replica sent and not yet answered: `(to, seq, chunk)`.
    pub state_requests: Vec<(ReplicaId, SeqNum, u64)>,
    /// Digests the replica asked for in a BATCH-REQ.
    pub batch_requests: Vec<Digest>,
    /// The replica's own VIEW-CHANGEs.
    pub own_view_changes: Vec<Signed<ViewChange>>,
}

fn push_bounded<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if list.contains(&item) {
        return;
    }
    if list.len() >= POOL_MAX {
        list.remove(0);
    }
    list.push(item);
}

fn pick<T>(list: &[T], index: u8) -> Option<&T> {
    if list.is_empty() {
        None
    } else {
        list.get(usize::from(index) % list.len())
    }
}

/// Members in the low four bits of `mask` other than `except`; every member other than
/// `except` if none is.
fn members_or_all(mask: u8, except: Option<u32>) -> Vec<u32> {
    let chosen: Vec<u32> = (0..N).filter(|r| mask & (1 << r) != 0 && Some(*r) != except).collect();
    if chosen.is_empty() {
        (0..N).filter(|r| Some(*r) != except).collect()
    } else {
        chosen
    }
}

/// A checkpoint sequence number from a fuzzer number: a multiple of the interval.
fn checkpoint_seq(n: Num) -> SeqNum {
    let interval = params().checkpoint_interval;
    if n.0 < 1 << 32 {
        SeqNum(n.0 * interval)
    } else {
        SeqNum(n.0 - n.0 % interval)
    }
}

/// The executor's checkpoint image encoding (framework/src/roles/executor.rs, `Image` and
/// `ClientRecord`, both private), mirrored so that the harness can make well-formed images
/// with fuzzer-chosen contents. [`image_mirror_matches`] checks it is still the same.
mod image {
    use bulwark_framework::{ClientId, SeqNum, Timestamp};
    use serde::Serialize;

    #[derive(Serialize)]
    pub struct Entry(pub Timestamp, #[serde(with = "serde_bytes")] pub Vec<u8>);

    #[derive(Serialize)]
    pub struct ClientRecord {
        pub top: Timestamp,
        pub results: Vec<Entry>,
        pub last_active: SeqNum,
    }

    #[derive(Serialize)]
    pub struct Image {
        #[serde(with = "serde_bytes")]
        pub service: Vec<u8>,
        pub clients: Vec<(ClientId, ClientRecord)>,
    }
}

/// The bytes of a checkpoint image.
pub fn image_bytes(spec: &ImageSpec) -> Vec<u8> {
    match spec {
        ImageSpec::Raw(bytes) => bytes.clone(),
        ImageSpec::Structured { service, clients } => {
            let service = match service {
                ServiceImage::Map(entries) => {
                    let map: BTreeMap<u8, Vec<u8>> = entries.iter().cloned().collect();
                    FuzzKv { map }.snapshot()
                }
                ServiceImage::Raw(bytes) => bytes.clone(),
            };
            let clients = clients
                .iter()
                .map(|c| {
                    let id = if c.client < 8 {
                        bulwark_framework::messages::client_id(&client_key(c.client).public().into())
                    } else {
                        ClientId(c.id)
                    };
                    let record = image::ClientRecord {
                        top: Timestamp(c.top.0),
                        results: c.results.iter().map(|(t, r)| image::Entry(Timestamp(t.0), r.clone())).collect(),
                        last_active: SeqNum(c.last_active.0),
                    };
                    (id, record)
                })
                .collect();
            rmp_serde::to_vec(&image::Image { service, clients }).expect("an image always encodes")
        }
    }
}

/// Whether the mirrored image encoding still gives a fresh replica's state digest (if it
/// does not, structured images decode as garbage: the targets still run, but reach less).
pub fn image_mirror_matches() -> bool {
    static MATCHES: OnceLock<bool> = OnceLock::new();
    *MATCHES.get_or_init(|| {
        let replica =
            Replica::new(ReplicaId(0), KeyPair::from_seed(replica_seed(0)), handle(&config()), FuzzKv::default());
        let spec = ImageSpec::Structured { service: ServiceImage::Map(Vec::new()), clients: Vec::new() };
        let digest = ChunkedImage::new(image_bytes(&spec), params().state_chunk_bytes).digest();
        let matches = digest == replica.state_digest();
        if !matches {
            eprintln!("bulwark-fuzz: the mirrored checkpoint image encoding no longer matches the executor's");
        }
        matches
    })
}

/// Builds signed messages from steps, recording what it makes in the pool.
#[derive(Debug)]
pub struct Builder<'a> {
    pub config: &'a Membership,
    pub pool: &'a mut Pool,
    /// The fuzzed replica, if any (the harness signs nothing as it, except where a step
    /// says so).
    pub me: Option<u32>,
}

impl Builder<'_> {
    fn batch(&mut self, choice: &BatchChoice) -> (Digest, Vec<WireCommand>) {
        match choice {
            BatchChoice::Null => (Batch::null().digest(), Vec::new()),
            BatchChoice::Pool(index) => match pick(&self.pool.batches, *index) {
                Some((digest, requests)) => (*digest, requests.clone()),
                None => (Batch::null().digest(), Vec::new()),
            },
            BatchChoice::Spec(specs) => {
                // One more than `batch_size_max` at most: a refusal, not a slow input.
                let specs = &specs[..specs.len().min(params().batch_size_max + 1)];
                let verified: Vec<Verified<Request>> = specs.iter().map(ReqSpec::verified).collect();
                let batch = Batch::new(verified);
                let wire = batch.to_wire();
                push_bounded(&mut self.pool.batches, (batch.digest(), wire.clone()));
                (batch.digest(), wire)
            }
        }
    }

    fn digest(&mut self, choice: &DigestChoice) -> Digest {
        match choice {
            DigestChoice::Pool(index) => {
                pick(&self.pool.slots, *index).map(|(_, _, d)| *d).unwrap_or_else(|| Batch::null().digest())
            }
            DigestChoice::Batch(batch) => self.batch(batch).0,
            DigestChoice::Bytes(bytes) => Digest(*bytes),
        }
    }

    fn slot(&mut self, view: View, seq: SeqNum, digest: Digest) {
        push_bounded(&mut self.pool.slots, (view, seq, digest));
    }

    fn pre_prepare(&mut self, spec: &PrePrepareSpec) -> Message {
        let view = View(spec.view.0);
        let (digest, requests) = self.batch(&spec.batch);
        let primary = self.config.primary(view).0;
        let signer = if spec.out_of_turn { (primary + 1) % N } else { primary };
        self.slot(view, SeqNum(spec.seq.0), digest);
        Message::PrePrepare(sign(PrePrepare { view, seq: SeqNum(spec.seq.0), digest }, signer), requests)
    }

    fn prepared(&mut self, spec: &CertSpec) -> PreparedCertificate {
        let (view, seq, digest) = match spec.slot.and_then(|i| pick(&self.pool.slots, i).copied()) {
            Some(slot) => slot,
            None => (View(spec.view.0), SeqNum(spec.seq.0), self.digest(&spec.digest)),
        };
        let primary = self.config.primary(view).0;
        let pre_prepare = sign(PrePrepare { view, seq, digest }, primary);
        let mut preparers: Vec<u32> = (0..N).filter(|r| *r != primary).take(2).collect();
        match spec.tamper % 16 {
            1 => {
                preparers.pop();
            }
            2 => preparers.push(primary),
            _ => {}
        }
        let prepares = preparers
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let seq = if spec.tamper % 16 == 3 && i == 0 { SeqNum(seq.0.wrapping_add(1)) } else { seq };
                sign(Prepare { view, seq, digest, replica: ReplicaId(r) }, r)
            })
            .collect();
        PreparedCertificate { pre_prepare, prepares }
    }

    fn checkpoint_proof(&mut self, stable: Option<u8>) -> (SeqNum, Vec<Signed<Checkpoint>>) {
        let Some((seq, digest)) = stable.and_then(|i| pick(&self.pool.checkpoints, i).copied()) else {
            return (SeqNum(0), Vec::new());
        };
        if seq == SeqNum(0) {
            return (seq, Vec::new());
        }
        let first = u32::from(stable.unwrap_or(0)) % N;
        let proof = (0..self.config.quorum() as u32)
            .map(|i| (first + i) % N)
            .map(|r| sign(Checkpoint { seq, state_digest: digest, replica: ReplicaId(r) }, r))
            .collect();
        (seq, proof)
    }

    fn view_change(&mut self, view: View, body: &VcBody) -> Signed<ViewChange> {
        let from = body.from.id();
        let (stable, checkpoint_proof) = self.checkpoint_proof(body.stable);
        let window = self.config.params.watermark_window as usize;
        let prepared = body.prepared.iter().take(window + 1).map(|c| self.prepared(c)).collect();
        sign(ViewChange { view, stable, checkpoint_proof, prepared, replica: ReplicaId(from) }, from)
    }

    fn new_view(&mut self, spec: &NvSpec) -> Message {
        let view = View(spec.view.0);
        let primary = self.config.primary(view).0;
        let mut senders = BTreeSet::new();
        let mut view_changes = Vec::new();
        if spec.with_own {
            if let Some(own) = self.pool.own_view_changes.iter().rev().find(|vc| vc.payload.view == view) {
                senders.insert(own.payload.replica.0);
                view_changes.push(own.clone());
            }
        }
        for body in spec.view_changes.iter().take(N as usize) {
            if senders.insert(body.from.id()) {
                view_changes.push(self.view_change(view, body));
            }
        }
        let wanted = if spec.tamper % 16 == 3 { self.config.quorum() - 1 } else { self.config.quorum() };
        for r in 0..N {
            if view_changes.len() >= wanted {
                break;
            }
            if senders.insert(r) {
                let body = VcBody { from: Who(r as u8), stable: None, prepared: Vec::new() };
                view_changes.push(self.view_change(view, &body));
            }
        }
        // O as VC12 computes it from V (when V is valid).
        let verified: Result<Vec<_>, _> =
            view_changes.iter().map(|vc| verify_view_change(vc.clone(), self.config)).collect();
        let mut pre_prepares: Vec<Signed<PrePrepare>> = match verified.ok().map(|v| compute_order(&v, self.config)) {
            Some(Ok(order)) => order
                .entries
                .iter()
                .map(|(seq, digest)| sign(PrePrepare { view, seq: *seq, digest: *digest }, primary))
                .collect(),
            _ => Vec::new(),
        };
        for entry in &pre_prepares {
            self.slot(view, entry.payload.seq, entry.payload.digest);
        }
        if spec.tamper % 16 == 1 {
            pre_prepares.pop();
        }
        let signer = if spec.tamper % 16 == 2 { (primary + 1) % N } else { primary };
        Message::NewView(sign(NewView { view, view_changes, pre_prepares }, signer))
    }

    fn held_image(&mut self, spec: &CertifyImageSpec) -> HeldImage {
        let seq = checkpoint_seq(spec.seq);
        let image = ChunkedImage::new(image_bytes(&spec.image), self.config.params.state_chunk_bytes);
        push_bounded(&mut self.pool.checkpoints, (seq, image.digest()));
        if self.pool.images.len() >= 8 {
            self.pool.images.remove(0);
        }
        let held = HeldImage { seq, image };
        self.pool.images.push(held.clone());
        held
    }

    fn chunk(&self, from: u32, held: &HeldImage, index: u64) -> Message {
        let (data, path) = match held.image.chunk(index) {
            Some((data, path)) => (data.to_vec(), path),
            None => (Vec::new(), Vec::new()),
        };
        Message::StateReply(sign(
            StateReply {
                replica: ReplicaId(from),
                seq: held.seq,
                total_bytes: held.image.total_bytes(),
                index,
                data,
                path,
            },
            from,
        ))
    }

    /// The messages of `step` (none for timers and waits).
    pub fn messages(&mut self, step: &Step) -> Vec<Message> {
        match step {
            Step::Request(spec) => vec![Message::Request(spec.signed())],
            Step::PrePrepare(spec) => vec![self.pre_prepare(spec)],
            Step::Prepare(spec) | Step::Commit(spec) => {
                let (view, seq, from) = (View(spec.view.0), SeqNum(spec.seq.0), spec.from.id());
                let digest = self.digest(&spec.digest);
                self.slot(view, seq, digest);
                let replica = ReplicaId(from);
                vec![if matches!(step, Step::Prepare(_)) {
                    Message::Prepare(sign(Prepare { view, seq, digest, replica }, from))
                } else {
                    Message::Commit(sign(Commit { view, seq, digest, replica }, from))
                }]
            }
            Step::Agree(spec) => {
                let Some((view, seq, digest)) = pick(&self.pool.slots, spec.slot).copied() else {
                    return Vec::new();
                };
                let mut messages: Vec<Message> = members_or_all(spec.prepares, self.me)
                    .into_iter()
                    .filter(|r| *r != self.config.primary(view).0)
                    .map(|r| Message::Prepare(sign(Prepare { view, seq, digest, replica: ReplicaId(r) }, r)))
                    .collect();
                messages.extend(
                    members_or_all(spec.commits, self.me)
                        .into_iter()
                        .map(|r| Message::Commit(sign(Commit { view, seq, digest, replica: ReplicaId(r) }, r))),
                );
                messages
            }
            Step::Checkpoint(spec) => {
                let from = spec.from.id();
                let digest = match &spec.digest {
                    DigestChoice::Pool(index) => {
                        pick(&self.pool.checkpoints, *index).map(|(_, d)| *d).unwrap_or_default()
                    }
                    other => self.digest(other),
                };
                let checkpoint = Checkpoint { seq: SeqNum(spec.seq.0), state_digest: digest, replica: ReplicaId(from) };
                vec![Message::Checkpoint(sign(checkpoint, from))]
            }
            Step::AgreeCheckpoint(spec) => {
                let Some((seq, state_digest)) = pick(&self.pool.checkpoints, spec.checkpoint).copied() else {
                    return Vec::new();
                };
                members_or_all(spec.members, self.me)
                    .into_iter()
                    .map(|r| Message::Checkpoint(sign(Checkpoint { seq, state_digest, replica: ReplicaId(r) }, r)))
                    .collect()
            }
            Step::ViewChange(spec) => vec![Message::ViewChange(self.view_change(View(spec.view.0), &spec.body))],
            Step::NewView(spec) => vec![self.new_view(spec)],
            Step::Status(spec) => {
                let from = spec.from.id();
                let window = self.config.params.watermark_window as usize;
                let slots = spec
                    .slots
                    .iter()
                    .take(2 * window + 1)
                    .map(|b| SlotProgress { has_pre_prepare: b & 1 != 0, prepared: b & 2 != 0, committed: b & 4 != 0 })
                    .collect();
                vec![Message::Status(sign(
                    Status {
                        replica: ReplicaId(from),
                        view: View(spec.view.0),
                        stable: SeqNum(spec.stable.0),
                        last_executed: SeqNum(spec.last_executed.0),
                        first_slot: SeqNum(spec.first_slot.0),
                        slots,
                    },
                    from,
                ))]
            }
            Step::StateRequest(spec) => {
                let from = spec.from.id();
                vec![Message::StateRequest(sign(
                    StateRequest { replica: ReplicaId(from), seq: SeqNum(spec.seq.0), chunk: spec.chunk.0 },
                    from,
                ))]
            }
            Step::StateReply(spec) => {
                let from = spec.from.id();
                let chunk_bytes = self.config.params.state_chunk_bytes;
                vec![Message::StateReply(sign(
                    StateReply {
                        replica: ReplicaId(from),
                        seq: SeqNum(spec.seq.0),
                        total_bytes: spec.total_bytes.0,
                        index: spec.index.0,
                        data: spec.data.iter().copied().take(chunk_bytes + 1).collect(),
                        path: vec![Digest::of(b"path"); usize::from(spec.path % 50)],
                    },
                    from,
                ))]
            }
            Step::CertifyImage(spec) => {
                let held = self.held_image(spec);
                let state_digest = held.image.digest();
                members_or_all(spec.members, self.me)
                    .into_iter()
                    .map(|r| {
                        let checkpoint = Checkpoint { seq: held.seq, state_digest, replica: ReplicaId(r) };
                        Message::Checkpoint(sign(checkpoint, r))
                    })
                    .collect()
            }
            Step::StateChunk(spec) => {
                if spec.answer_requests && !self.pool.state_requests.is_empty() {
                    let requests = std::mem::take(&mut self.pool.state_requests);
                    return requests
                        .into_iter()
                        .filter_map(|(to, seq, chunk)| {
                            let held = self.pool.images.iter().rev().find(|h| h.seq == seq)?;
                            Some(self.chunk(to.0, held, chunk))
                        })
                        .collect();
                }
                let Some(held) = pick(&self.pool.images, spec.image).cloned() else {
                    return Vec::new();
                };
                let index = if spec.chunk.0 < 1 << 16 { spec.chunk.0 % held.image.chunk_count() } else { spec.chunk.0 };
                vec![self.chunk(spec.from.id(), &held, index)]
            }
            Step::BatchRequest(spec) => {
                let from = spec.from.id();
                let window = self.config.params.watermark_window as usize;
                let digests = spec.digests.iter().take(window + 1).map(|d| self.digest(d)).collect();
                vec![Message::BatchRequest(sign(BatchRequest { replica: ReplicaId(from), digests }, from))]
            }
            Step::BatchReply(spec) => {
                let from = spec.from.id();
                let asked = spec
                    .answer_request
                    .then(|| self.pool.batch_requests.pop())
                    .flatten()
                    .and_then(|digest| self.pool.batches.iter().find(|(d, _)| *d == digest).cloned());
                let (digest, requests) = match asked {
                    Some(batch) => batch,
                    None => self.batch(&spec.batch),
                };
                vec![Message::BatchReply(sign(BatchReply { replica: ReplicaId(from), digest }, from), requests)]
            }
            Step::Replies(spec) => {
                let from = spec.from.id();
                let (view, seq) = (View(spec.view.0), SeqNum(spec.seq.0));
                let replies = spec
                    .replies
                    .iter()
                    .take(params().batch_size_max + 1)
                    .map(|r| Reply {
                        view,
                        timestamp: Timestamp(r.timestamp.0),
                        client: bulwark_framework::messages::client_id(&client_key(r.client).public().into()),
                        replica: ReplicaId(from),
                        read_only: false,
                        result: r.result.bytes(),
                    })
                    .collect();
                vec![Message::Replies(reply_bundle(from, view, seq, replies, spec.tamper))]
            }
            Step::Inquiry { client, nonce } => {
                let inquiry = Inquiry { client_key: client_key(*client).public().into(), nonce: *nonce };
                vec![Message::Inquiry(SCOPE.sign(inquiry, client_key(*client)).into_signed())]
            }
            Step::Stray { from, report } => {
                let from = from.id();
                vec![if *report {
                    Message::Report(sign(
                        Report {
                            replica: ReplicaId(from),
                            client: ClientId(0),
                            nonce: 0,
                            view: View(0),
                            stable: SeqNum(0),
                            last_executed: SeqNum(0),
                            state_digest: Digest::default(),
                        },
                        from,
                    ))
                } else {
                    Message::Reply(sign(
                        Reply {
                            view: View(0),
                            timestamp: Timestamp(1),
                            client: ClientId(0),
                            replica: ReplicaId(from),
                            read_only: false,
                            result: Vec::new(),
                        },
                        from,
                    ))
                }]
            }
            Step::Mutate { step, edits } => {
                if matches!(**step, Step::Mutate { .. }) {
                    return Vec::new();
                }
                self.messages(step)
                    .into_iter()
                    .filter_map(|message| {
                        let mut bytes = wire::encode(SCOPE, &message).ok()?;
                        mutate(&mut bytes, edits);
                        wire::decode(&bytes, self.config.params.frame_bytes_max).ok().map(|envelope| envelope.message)
                    })
                    .collect()
            }
            Step::Raw(bytes) => wire::decode(bytes, self.config.params.frame_bytes_max)
                .into_iter()
                .map(|envelope| envelope.message)
                .collect(),
            Step::Timer(_) | Step::Wait { .. } => Vec::new(),
        }
    }
}

/// Applies byte edits: `(position, value)` xors `value` into the byte at `position`
/// (modulo the length); a zero value truncates there instead.
pub fn mutate(bytes: &mut Vec<u8>, edits: &[(u16, u8)]) {
    for (position, value) in edits.iter().take(8) {
        if bytes.is_empty() {
            return;
        }
        let at = usize::from(*position) % bytes.len();
        if *value == 0 {
            bytes.truncate(at);
        } else {
            bytes[at] ^= value;
        }
    }
}

/// Flips one bit of a message's outer signature (a forgery the receiver must refuse).
pub fn corrupt_signature(message: &mut Message, bit: u16) {
    fn flip(signature: &mut Signature, bit: u16) {
        let mut bytes = signature.to_bytes();
        bytes[usize::from(bit / 8) % 64] ^= 1 << (bit % 8);
        *signature = Signature::from_bytes(&bytes);
    }
    match message {
        Message::Request(m) => flip(&mut m.signature, bit),
        Message::PrePrepare(m, _) => flip(&mut m.signature, bit),
        Message::Prepare(m) => flip(&mut m.signature, bit),
        Message::Commit(m) => flip(&mut m.signature, bit),
        Message::Reply(m) => flip(&mut m.signature, bit),
        Message::Checkpoint(m) => flip(&mut m.signature, bit),
        Message::Status(m) => flip(&mut m.signature, bit),
        Message::StateRequest(m) => flip(&mut m.signature, bit),
        Message::StateReply(m) => flip(&mut m.signature, bit),
        Message::Inquiry(m) => flip(&mut m.signature, bit),
        Message::Report(m) => flip(&mut m.signature, bit),
        Message::ViewChange(m) => flip(&mut m.signature, bit),
        Message::NewView(m) => flip(&mut m.signature, bit),
        Message::BatchRequest(m) => flip(&mut m.signature, bit),
        Message::BatchReply(m, _) => flip(&mut m.signature, bit),
        Message::Replies(bundle) => match &mut bundle.root {
            Some(root) => flip(&mut root.signature, bit),
            None => {
                if let Some(first) = bundle.replies.first_mut() {
                    first.reply.result.push(bit as u8);
                }
            }
        },
    }
}

/// The bundle a replica's executor sends for `replies` (all from `from`, in `view`, for
/// batch `seq`): a Merkle tree over their signing digests and one signature by `from` over
/// its root; each reply with its index and path.
///
/// `tamper % 16` damages it: 1 shifts the first reply's index, 2 cuts its path, 3 lies
/// about the number of leaves, 4 names another replica in the first reply, 5 signs the
/// root with another key, 6 drops the root, 7 marks the first reply read-only, 8 claims
/// no leaves, 9 gives the first reply index `u32::MAX`, 10 changes the first reply's
/// result after the tree was built; anything else leaves it valid.
pub fn reply_bundle(from: u32, view: View, seq: SeqNum, replies: Vec<Reply>, tamper: u8) -> ReplyBundle {
    let leaves: Vec<Digest> = replies.iter().map(|r| SCOPE.digest(r)).collect();
    let tree = MerkleTree::new(leaves.clone());
    let mut header = ReplyRoot { view, seq, replica: ReplicaId(from), leaves: leaves.len() as u32, root: tree.root() };
    let mut signer = from;
    let mut bundled: Vec<BundledReply> = replies
        .into_iter()
        .enumerate()
        .map(|(index, reply)| BundledReply { reply, index: index as u32, path: tree.path(index).unwrap_or_default() })
        .collect();
    match (tamper % 16, bundled.first_mut()) {
        (1, Some(first)) => first.index = first.index.wrapping_add(1),
        (2, Some(first)) => {
            first.path.pop();
        }
        (3, _) => header.leaves = header.leaves.wrapping_add(1),
        (4, Some(first)) => first.reply.replica = ReplicaId((from + 1) % N),
        (5, _) => signer = (from + 1) % N,
        (7, Some(first)) => first.reply.read_only = true,
        (8, _) => header.leaves = 0,
        (9, Some(first)) => first.index = u32::MAX,
        (10, Some(first)) => first.reply.result.push(0),
        _ => {}
    }
    let root = (tamper % 16 != 6).then(|| sign(header, signer));
    ReplyBundle { root, replies: bundled }
}

/// A message a correct sender produced must pass edge verification at a correct receiver
/// and fit in one frame.
pub fn check_sendable(message: &VerifiedMessage, config: &Membership, who: &str) {
    let wire_form = message.to_wire();
    let frame = wire::encode_frame(SCOPE, &wire_form).expect("an outgoing message encodes");
    assert!(
        frame.len() - wire::FRAME_HEADER_BYTES <= config.params.frame_bytes_max,
        "{who} sent a {:?} of {} bytes, over frame_bytes_max",
        message.kind(),
        frame.len()
    );
    if let Err(refusal) = verify_message(wire_form, config) {
        panic!("{who} sent a {:?} that a correct receiver refuses: {refusal}", message.kind());
    }
}

/// The replies a correct replica sent one client, as the runtime frames them
/// ([`reply_messages`]), must pass the client's checks on the connection from that replica
/// and come out as they went in.
pub fn check_replies_sendable(replies: &[VerifiedReply], config: &Membership, who: &str) {
    let mut cache = ReplyRootCache::default();
    let mut received = Vec::new();
    for message in reply_messages(replies) {
        let frame = wire::encode_frame(SCOPE, &message).expect("an outgoing message encodes");
        assert!(
            frame.len() - wire::FRAME_HEADER_BYTES <= config.params.frame_bytes_max,
            "{who}: reply frame too large"
        );
        let result: Result<Vec<VerifiedReply>, Refusal> = match message {
            Message::Reply(signed) => {
                let link = Some(signed.payload.replica);
                verify_reply(signed, link, config).map(|r| vec![r])
            }
            Message::Replies(bundle) => {
                let link = bundle.replies.first().map(|r| r.reply.replica);
                verify_reply_bundle(bundle, link, config, &mut cache)
            }
            other => panic!("{who}: replies framed as a {:?}", other.kind()),
        };
        match result {
            Ok(verified) => received.extend(verified),
            Err(refusal) => panic!("{who} sent replies a correct client refuses: {refusal}"),
        }
    }
    assert_eq!(received.len(), replies.len(), "{who}: replies lost in framing");
    for (sent, got) in replies.iter().zip(&received) {
        assert_eq!(sent.payload(), got.payload(), "{who}: a reply changed in framing");
        assert_eq!(sent.attributed_to(), got.attributed_to(), "{who}: a reply changed sender in framing");
    }
}

// ---------------------------------------------------------------------------------------
// The replica harness
// ---------------------------------------------------------------------------------------

/// One replica of the fuzzed cluster, the time, and the pool.
#[derive(Debug)]
pub struct ReplicaHarness {
    pub config: Arc<Membership>,
    pub replica: Node<FuzzKv>,
    pub me: u32,
    pub now: Instant,
    pub pool: Pool,
    /// Timers the replica set and that have not fired.
    pub timers: BTreeMap<TimerKind, Instant>,
}

impl ReplicaHarness {
    /// Replica `me` of a cluster with client authentication `auth`, started at time zero.
    pub fn new(me: u32, auth: ClientAuth) -> Self {
        let _ = image_mirror_matches();
        let config = config_for(auth);
        let me = me % N;
        let key = KeyPair::from_seed(replica_seed(me));
        let mut replica = Node::new(ReplicaId(me), key, handle(&config), FuzzKv::default());
        let actions = replica.start(Instant::ZERO);
        let mut harness =
            ReplicaHarness { config, replica, me, now: Instant::ZERO, pool: Pool::default(), timers: BTreeMap::new() };
        harness.observe(actions);
        harness
    }

    /// Runs at most [`STEPS_MAX`] steps.
    pub fn run(&mut self, steps: impl IntoIterator<Item = Step>) {
        for step in steps.into_iter().take(STEPS_MAX) {
            self.step(&step);
        }
    }

    pub fn step(&mut self, step: &Step) {
        match step {
            Step::Wait { millis } => {
                self.now = Instant(self.now.0 + u64::from(*millis) * 1_000);
            }
            Step::Timer(choice) => {
                let kind = match choice {
                    TimerChoice::Next => {
                        let Some((&kind, &at)) = self.timers.iter().min_by_key(|(_, at)| **at) else {
                            return;
                        };
                        self.now = self.now.max(at);
                        kind
                    }
                    TimerChoice::Batch => TimerKind::Batch,
                    TimerChoice::Status => TimerKind::Status,
                    TimerChoice::Request => TimerKind::Request,
                    TimerChoice::ViewChange => TimerKind::ViewChange,
                };
                self.timers.remove(&kind);
                self.deliver(Input::Timer(kind));
            }
            _ => {
                let messages = Builder { config: &self.config, pool: &mut self.pool, me: Some(self.me) }.messages(step);
                for message in messages {
                    if let Ok(verified) = verify_message(message, &self.config) {
                        self.deliver(Input::Message(verified));
                    }
                }
            }
        }
    }

    /// One input; then the checks of `fuzz_roles.rs`.
    pub fn deliver(&mut self, input: Input) {
        let replica = &mut self.replica;
        let before = (replica.view(), replica.stable(), replica.last_executed());
        let actions = replica.handle(input, self.now);
        let after = (replica.view(), replica.stable(), replica.last_executed());
        assert!(after.0 >= before.0, "view went back: {before:?} -> {after:?}");
        assert!(after.1 >= before.1, "stable checkpoint went back: {before:?} -> {after:?}");
        assert!(after.2 >= before.2, "execution went back: {before:?} -> {after:?}");
        let params = &self.config.params;
        let n = N as usize;
        let footprint = replica.footprint();
        assert!(footprint.log_slots <= 2 * params.watermark_window as usize, "{footprint:?}");
        assert!(footprint.future_messages <= n * params.future_messages_per_sender_max, "{footprint:?}");
        assert!(footprint.later_view_messages <= n * params.future_messages_per_sender_max, "{footprint:?}");
        assert!(footprint.queued_requests <= params.request_queue_max, "{footprint:?}");
        assert!(footprint.waiting_requests <= params.request_queue_max, "{footprint:?}");
        assert!(footprint.view_changes_held <= n, "{footprint:?}");
        assert!(footprint.transfer_bytes <= params.state_transfer_bytes_max, "{footprint:?}");
        assert!(footprint.clients <= params.client_table_max, "{footprint:?}");
        self.observe(actions);
    }

    /// Checks what the replica sends and keeps what later steps may refer to.
    fn observe(&mut self, actions: Vec<Action>) {
        let who = format!("replica {}", self.me);
        let mut replies: BTreeMap<ClientId, Vec<VerifiedReply>> = BTreeMap::new();
        for action in actions {
            match action {
                Action::Send { to, message } => {
                    check_sendable(&message, &self.config, &who);
                    if let VerifiedMessage::StateRequest(request) = &message {
                        push_bounded(&mut self.pool.state_requests, (to, request.seq, request.chunk));
                    }
                    self.remember(&message);
                }
                Action::Broadcast { message } => {
                    check_sendable(&message, &self.config, &who);
                    self.remember(&message);
                }
                Action::Reply { client, reply } => {
                    assert_eq!(client, reply.client, "{who} sent a reply to another client than it names");
                    assert_eq!(reply.attributed_to().0, self.me, "{who} sent a reply in another replica's name");
                    replies.entry(client).or_default().push(reply);
                }
                Action::Report { report, .. } => {
                    check_sendable(&VerifiedMessage::Report(report), &self.config, &who);
                }
                Action::SetTimer { timer, at } => {
                    self.timers.insert(timer, at);
                }
                Action::ToCheckpoints(_) | Action::ToPrimary(_) | Action::ToViewChanger(_) => {
                    panic!("{who}'s node handles what it hands its roles, yet one left it")
                }
                Action::Persist(_) | Action::Event(_) => {}
            }
        }
        for replies in replies.values() {
            check_replies_sendable(replies, &self.config, &who);
        }
    }

    fn remember(&mut self, message: &VerifiedMessage) {
        let pool = &mut self.pool;
        match message {
            VerifiedMessage::PrePrepare(m, batch) => {
                push_bounded(&mut pool.slots, (m.view, m.seq, m.digest));
                push_bounded(&mut pool.batches, (batch.digest(), batch.to_wire()));
            }
            VerifiedMessage::Prepare(m) => push_bounded(&mut pool.slots, (m.view, m.seq, m.digest)),
            VerifiedMessage::Commit(m) => push_bounded(&mut pool.slots, (m.view, m.seq, m.digest)),
            VerifiedMessage::Checkpoint(m) => push_bounded(&mut pool.checkpoints, (m.seq, m.state_digest)),
            VerifiedMessage::ViewChange(m) if m.sender().0 == self.me => {
                let own = m.message.signed().clone();
                if pool.own_view_changes.len() >= 8 {
                    pool.own_view_changes.remove(0);
                }
                pool.own_view_changes.push(own);
            }
            VerifiedMessage::NewView(m) => {
                for p in &m.pre_prepares {
                    push_bounded(&mut pool.slots, (p.view, p.seq, p.digest));
                }
            }
            VerifiedMessage::BatchRequest(m) => {
                for digest in &m.digests {
                    push_bounded(&mut pool.batch_requests, *digest);
                }
            }
            VerifiedMessage::BatchReply(_, batch) => {
                push_bounded(&mut pool.batches, (batch.digest(), batch.to_wire()));
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// The client harness
// ---------------------------------------------------------------------------------------

/// Which timestamp a reply names.
#[derive(Debug, Clone, Arbitrary)]
pub enum TimestampChoice {
    /// One of the client's outstanding requests.
    Outstanding(u8),
    Any(Num),
}

/// The result a reply carries.
#[derive(Debug, Clone, Arbitrary)]
pub enum ResultChoice {
    /// One of a few encoded outcomes (so that replies of different replicas match).
    Outcome(u8),
    Raw(Vec<u8>),
}

impl ResultChoice {
    fn bytes(&self) -> Vec<u8> {
        match self {
            ResultChoice::Outcome(choice) => {
                let outcome: Outcome<Option<Vec<u8>>> = match choice % 4 {
                    0 => Outcome::Ok(None),
                    1 => Outcome::Ok(Some(vec![*choice])),
                    2 => Outcome::MalformedOperation,
                    _ => Outcome::NotReadOnly,
                };
                rmp_serde::to_vec(&outcome).expect("an outcome encodes")
            }
            ResultChoice::Raw(bytes) => bytes.clone(),
        }
    }
}

/// A REPLY to the fuzzed client.
#[derive(Debug, Clone, Arbitrary)]
pub struct ReplySpec {
    pub view: Num,
    pub timestamp: TimestampChoice,
    /// `== 255`: addressed to another client.
    pub to_other: u8,
    /// A read-only reply (for a read-only request; the client cannot be asked which).
    pub read_only: bool,
    pub result: ResultChoice,
}

/// The connection a reply comes on (in connection mode the reply counts for that replica).
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct Link(pub u8);

impl Link {
    /// Mostly the sender's own connection; sometimes another replica's, or none.
    fn of(self, from: u32) -> Option<ReplicaId> {
        match self.0 {
            0..=239 => Some(ReplicaId(from)),
            240..=247 => Some(ReplicaId((from + 1 + u32::from(self.0 % 3)) % N)),
            _ => None,
        }
    }
}

/// One step of the client target.
#[derive(Debug, Clone, Arbitrary)]
pub enum ClientStep {
    Invoke {
        op: OpSpec,
        read_only: bool,
    },
    Reply {
        from: Who,
        link: Link,
        spec: ReplySpec,
    },
    /// The same reply from several members (low four bits; none means all).
    Replies {
        members: u8,
        spec: ReplySpec,
    },
    /// Ordered replies of one batch from one replica, under one signed root (as a replica
    /// sends them), possibly tampered with (see [`reply_bundle`]).
    Bundle {
        from: Who,
        link: Link,
        seq: Num,
        view: Num,
        replies: Vec<ReplySpec>,
        tamper: u8,
    },
    /// The same bundle (valid) from several members.
    Bundles {
        members: u8,
        seq: Num,
        view: Num,
        replies: Vec<ReplySpec>,
    },
    /// A reply whose signature was damaged.
    Forged {
        from: Who,
        spec: ReplySpec,
        bit: u16,
    },
    /// Bytes into the decoder; replies that verify go to the client.
    Raw {
        link: Who,
        bytes: Vec<u8>,
    },
    /// The client's timer at its deadline.
    Timer,
    Wait {
        millis: u16,
    },
}

/// The client role, the client-side reply checks of the runtime (a root cache), and what
/// the client has completed.
#[derive(Debug)]
pub struct ClientHarness {
    pub config: Arc<Membership>,
    pub client: Client,
    pub roots: ReplyRootCache,
    pub now: Instant,
    pub timer: Option<Instant>,
    pub completed: BTreeSet<Timestamp>,
    pub last_view: View,
}

impl ClientHarness {
    /// Client 0 of a cluster with client authentication `auth`, its first timestamp `first`
    /// (the runtime uses wall-clock microseconds, far from `u64::MAX`).
    pub fn new(first: u32, auth: ClientAuth) -> Self {
        let config = config_for(auth);
        let key = KeyPair::from_seed(client_seed(0));
        let client = Client::new(key, handle(&config), Timestamp(u64::from(first) + 1));
        ClientHarness {
            config,
            client,
            roots: ReplyRootCache::default(),
            now: Instant::ZERO,
            timer: None,
            completed: BTreeSet::new(),
            last_view: View(0),
        }
    }

    pub fn run(&mut self, steps: impl IntoIterator<Item = ClientStep>) {
        for step in steps.into_iter().take(STEPS_MAX) {
            self.step(step);
        }
    }

    fn reply(&self, from: u32, view: Option<View>, spec: &ReplySpec) -> Reply {
        let outstanding = self.client.outstanding_timestamps();
        let timestamp = match &spec.timestamp {
            TimestampChoice::Outstanding(i) => pick(&outstanding, *i).copied().unwrap_or(Timestamp(1)),
            TimestampChoice::Any(n) => Timestamp(n.0),
        };
        let client = if spec.to_other == 255 {
            bulwark_framework::messages::client_id(&ClientKey::from(client_key(1).public()))
        } else {
            self.client.id()
        };
        Reply {
            view: view.unwrap_or(View(spec.view.0)),
            timestamp,
            client,
            replica: ReplicaId(from),
            read_only: spec.read_only && view.is_none(),
            result: spec.result.bytes(),
        }
    }

    fn bundle(&self, from: u32, seq: Num, view: Num, replies: &[ReplySpec], tamper: u8) -> Message {
        let view = View(view.0);
        let replies =
            replies.iter().take(params().batch_size_max + 1).map(|spec| self.reply(from, Some(view), spec)).collect();
        Message::Replies(reply_bundle(from, view, SeqNum(seq.0), replies, tamper))
    }

    pub fn step(&mut self, step: ClientStep) {
        match step {
            ClientStep::Invoke { op, read_only } => {
                let outstanding = self.client.outstanding();
                let actions =
                    self.client.handle(ClientInput::Invoke { operation: op.encode(), read_only }, self.now);
                match actions.first() {
                    Some(&ClientAction::Issued { timestamp }) => {
                        assert!(!self.completed.contains(&timestamp), "timestamp {timestamp:?} reused");
                        self.observe(actions, &[]);
                    }
                    Some(ClientAction::Rejected(_)) => {
                        // Refused: nothing may have changed.
                        assert_eq!(actions.len(), 1, "a rejected invocation did something: {actions:?}");
                        assert_eq!(self.client.outstanding(), outstanding);
                    }
                    other => panic!("an invocation answered with neither issued nor rejected: {other:?}"),
                }
            }
            ClientStep::Reply { from, link, spec } => {
                let from = from.id();
                let message = Message::Reply(sign(self.reply(from, None, &spec), from));
                self.deliver(message, link.of(from));
            }
            ClientStep::Replies { members, spec } => {
                for from in members_or_all(members, None) {
                    let message = Message::Reply(sign(self.reply(from, None, &spec), from));
                    self.deliver(message, Some(ReplicaId(from)));
                }
            }
            ClientStep::Bundle { from, link, seq, view, replies, tamper } => {
                let from = from.id();
                let message = self.bundle(from, seq, view, &replies, tamper);
                self.deliver(message, link.of(from));
            }
            ClientStep::Bundles { members, seq, view, replies } => {
                for from in members_or_all(members, None) {
                    let message = self.bundle(from, seq, view, &replies, 0);
                    self.deliver(message, Some(ReplicaId(from)));
                }
            }
            ClientStep::Forged { from, spec, bit } => {
                let from = from.id();
                let mut message = Message::Reply(sign(self.reply(from, None, &spec), from));
                corrupt_signature(&mut message, bit);
                self.deliver(message, Some(ReplicaId(from)));
            }
            ClientStep::Raw { link, bytes } => {
                if let Ok(envelope) = wire::decode(&bytes, self.config.params.frame_bytes_max) {
                    self.deliver(envelope.message, Some(ReplicaId(link.id())));
                }
            }
            ClientStep::Timer => {
                if let Some(at) = self.timer.take() {
                    self.now = self.now.max(at);
                }
                let actions = self.client.handle(ClientInput::Timer, self.now);
                self.observe(actions, &[]);
            }
            ClientStep::Wait { millis } => {
                self.now = Instant(self.now.0 + u64::from(millis) * 1_000);
            }
        }
    }

    /// The runtime client's checks (`actors/src/client.rs`): a reply alone by its
    /// signature, a bundle by its root (cached) and paths; in connection mode by `link`.
    fn deliver(&mut self, message: Message, link: Option<ReplicaId>) {
        let replies = match message {
            Message::Reply(signed) => verify_reply(signed, link, &self.config).map(|r| vec![r]),
            Message::Replies(bundle) => {
                let fresh = verify_reply_bundle(bundle.clone(), link, &self.config, &mut ReplyRootCache::default());
                let cached = verify_reply_bundle(bundle, link, &self.config, &mut self.roots);
                assert_eq!(fresh, cached, "the reply root cache changed the verdict");
                cached
            }
            _ => return,
        };
        let Ok(replies) = replies else { return };
        for reply in replies {
            if self.config.params.client_auth == ClientAuth::Connection {
                assert_eq!(Some(reply.attributed_to()), link, "a reply counted for another replica than its link");
            } else {
                assert_eq!(reply.attributed_to(), reply.replica, "a signed reply counted for another replica");
            }
            let outstanding = self.client.outstanding_timestamps();
            let actions = self.client.handle(ClientInput::Reply(reply), self.now);
            self.observe(actions, &outstanding);
        }
    }

    fn observe(&mut self, actions: Vec<ClientAction>, outstanding_before: &[Timestamp]) {
        let me = ClientKey::from(client_key(0).public());
        for action in actions {
            match action {
                ClientAction::Send { request, .. } | ClientAction::Broadcast { request } => {
                    assert_eq!(request.client_key, me, "the client sent another client's request");
                    check_sendable(&VerifiedMessage::Request(request), &self.config, "the client");
                }
                ClientAction::SetTimer { at } => self.timer = Some(at),
                ClientAction::Issued { .. } => {}
                ClientAction::Rejected(error) => panic!("only an invocation is rejected: {error}"),
                ClientAction::Completed { timestamp, .. } => {
                    assert!(
                        outstanding_before.contains(&timestamp),
                        "completed {timestamp:?}, which was not outstanding"
                    );
                    assert!(self.completed.insert(timestamp), "completed {timestamp:?} twice");
                }
            }
        }
        let limit = self.config.params.client_window as usize;
        assert!(self.client.outstanding() <= limit, "{} outstanding, window {limit}", self.client.outstanding());
        assert!(self.client.view() >= self.last_view, "the client's view went back");
        self.last_view = self.client.view();
    }
}

/// Scripted runs of the harness: they check that the steps reach what the targets are for
/// (execution, checkpoints, a view change, a state transfer, a completed request), so that
/// a protocol change that leaves the fuzzers refusing everything is noticed. Run with
/// `cargo test --manifest-path fuzz/Cargo.toml`.
#[cfg(test)]
mod tests {
    use super::*;

    fn request(client: u8, timestamp: u64) -> ReqSpec {
        ReqSpec { client, timestamp: Num(timestamp), flags: 0, op: OpSpec::Put { key: client, value: 1 } }
    }

    fn last_slot(harness: &ReplicaHarness) -> u8 {
        (harness.pool.slots.len() - 1) as u8
    }

    fn agree(harness: &mut ReplicaHarness) {
        let slot = last_slot(harness);
        harness.step(&Step::Agree(AgreeSpec { slot, prepares: 0, commits: 0 }));
    }

    /// As primary: requests, a batch, votes of the others until a checkpoint is stable.
    fn primary_executes(auth: ClientAuth) {
        let mut harness = ReplicaHarness::new(0, auth);
        for seq in 1..=4u64 {
            harness.step(&Step::Request(request(seq as u8 % CLIENTS, seq)));
            harness.step(&Step::Wait { millis: 2 });
            harness.step(&Step::Timer(TimerChoice::Next));
            agree(&mut harness);
            assert_eq!(harness.replica.last_executed(), SeqNum(seq), "{:?}", harness.replica.metrics());
        }
        let checkpoint = (harness.pool.checkpoints.len() - 1) as u8;
        harness.step(&Step::AgreeCheckpoint(AgreeCheckpointSpec { checkpoint, members: 0 }));
        assert_eq!(harness.replica.stable(), SeqNum(4));
    }

    #[test]
    fn the_primary_executes_and_checkpoints() {
        primary_executes(ClientAuth::Signed);
        primary_executes(ClientAuth::Connection);
    }

    #[test]
    fn a_backup_executes_a_proposal() {
        let mut harness = ReplicaHarness::new(1, ClientAuth::Signed);
        let batch = BatchChoice::Spec(vec![request(0, 1), request(1, 1)]);
        harness.step(&Step::PrePrepare(PrePrepareSpec { view: Num(0), seq: Num(1), batch, out_of_turn: false }));
        agree(&mut harness);
        assert_eq!(harness.replica.last_executed(), SeqNum(1), "{:?}", harness.replica.metrics());
        assert_eq!(harness.replica.metrics().requests_executed, 2);
    }

    #[test]
    fn view_changes_reach_a_new_view() {
        // Replica 1, primary of view 1, builds the NEW-VIEW.
        let mut harness = ReplicaHarness::new(1, ClientAuth::Signed);
        let body = VcBody { from: Who(0), stable: None, prepared: Vec::new() };
        let steps = ViewStep::ViewChangeFromMany { view: Num(1), members: 0b1101, body }.steps();
        for step in steps {
            harness.step(&step);
        }
        assert_eq!(harness.replica.view(), View(1), "{:?}", harness.replica.metrics());
        // Replica 2 accepts a NEW-VIEW carrying a prepared certificate.
        let mut harness = ReplicaHarness::new(2, ClientAuth::Signed);
        let batch = BatchChoice::Spec(vec![request(0, 1)]);
        harness.step(&Step::PrePrepare(PrePrepareSpec { view: Num(0), seq: Num(1), batch, out_of_turn: false }));
        let body = VcBody { from: Who(0), stable: None, prepared: Vec::new() };
        let steps = ViewStep::ViewChangeFromMany { view: Num(1), members: 0b0011, body }.steps();
        for step in steps {
            harness.step(&step);
        }
        let certificate =
            CertSpec { slot: Some(0), view: Num(0), seq: Num(0), digest: DigestChoice::Bytes([0; 32]), tamper: 0 };
        let view_changes = vec![VcBody { from: Who(0), stable: None, prepared: vec![certificate] }];
        harness.step(&Step::NewView(NvSpec { view: Num(1), view_changes, with_own: true, tamper: 0 }));
        assert_eq!(harness.replica.view(), View(1), "{:?}", harness.replica.metrics());
        agree(&mut harness);
        assert_eq!(harness.replica.last_executed(), SeqNum(1), "{:?}", harness.replica.metrics());
    }

    #[test]
    fn a_replica_behind_a_stable_checkpoint_fetches_and_installs_it() {
        assert!(image_mirror_matches(), "the mirrored image encoding differs from the executor's");
        let mut harness = ReplicaHarness::new(3, ClientAuth::Signed);
        let clients = vec![ClientImage {
            client: 2,
            id: 0,
            top: Num(3),
            results: vec![(Num(3), vec![1, 2, 3])],
            last_active: Num(4),
        }];
        let entries = (0..20u8).map(|k| (k, vec![k; 7])).collect();
        let image = ImageSpec::Structured { service: ServiceImage::Map(entries), clients };
        harness.step(&Step::CertifyImage(CertifyImageSpec { image, seq: Num(1), members: 0 }));
        assert_eq!(harness.replica.stable(), SeqNum(4));
        for _ in 0..8 {
            let chunk = StateChunkSpec { answer_requests: true, from: Who(0), image: 0, chunk: Num(0) };
            harness.step(&Step::StateChunk(chunk));
        }
        assert_eq!(harness.replica.last_executed(), SeqNum(4), "{:?}", harness.replica.metrics());
        assert_eq!(harness.replica.state_digest(), harness.pool.images[0].image.digest());
    }

    fn client_completes(auth: ClientAuth) {
        let mut harness = ClientHarness::new(0, auth);
        harness.step(ClientStep::Invoke { op: OpSpec::Get { key: 1 }, read_only: false });
        let spec = ReplySpec {
            view: Num(0),
            timestamp: TimestampChoice::Outstanding(0),
            to_other: 0,
            read_only: false,
            result: ResultChoice::Outcome(1),
        };
        harness.step(ClientStep::Bundles { members: 0b0011, seq: Num(1), view: Num(0), replies: vec![spec] });
        assert_eq!(harness.completed.len(), 1);
        assert_eq!(harness.client.outstanding(), 0);
    }

    #[test]
    fn the_client_completes_a_request_from_bundled_replies() {
        client_completes(ClientAuth::Signed);
        client_completes(ClientAuth::Connection);
    }
}
