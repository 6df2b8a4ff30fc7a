//! Fuzzer-chosen values: the structured steps the targets decode from their bytes with
//! `arbitrary`, and the specs they carry. They carry no signatures, so that the fuzzer spends
//! its bytes on structure; the builder signs them.

use crate::client_harness::ResultChoice;
use crate::cluster::{client_key, SCOPE};
use crate::pool::members_or_all;
use crate::service::FuzzOp;
use crate::N;
use arbitrary::{Arbitrary, Unstructured};
use bulwark_crypto::{Signature, Signed, Verified};
use bulwark_framework::messages::Request;
use bulwark_framework::Timestamp;

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

    pub(crate) fn verified(&self) -> Verified<Request> {
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
    /// See [`reply_bundle`](crate::reply_bundle).
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
