//! Protocol messages (PBFT.md §1).
//!
//! Each signed payload is a struct implementing [`Signable`] with its own domain tag. The
//! wire form is [`Message`] (built of [`Signed`] payloads); what protocol roles accept is
//! [`VerifiedMessage`] (built of [`Verified`] payloads), produced only by
//! [`crate::verify::verify_message`] or by a replica signing its own message.

pub use crate::batch::{batch_digest, request_size, Batch, Command, SystemCommand, WireBatch, WireCommand};
use crate::ids::{ClientId, ReplicaId, SeqNum, Timestamp, View};
use crate::roles::checkpoint::StableCheckpoint;
use crate::signing::Scoped;
use bulwark_crypto::{Digest, PublicKey, Signable, Signature, Signed, Verified};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A client's public key as it travels in a request: 32 bytes, parsed into a curve point
/// only when the request's signature is checked (decoding stays cheap, and a batch of
/// verified requests holds 32 bytes per key rather than a decompressed point).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClientKey(#[serde(with = "serde_bytes")] pub [u8; 32]);

impl ClientKey {
    pub fn to_public_key(&self) -> Result<PublicKey, bulwark_crypto::CryptoError> {
        PublicKey::from_bytes(&self.0)
    }
}

impl From<PublicKey> for ClientKey {
    fn from(key: PublicKey) -> Self {
        ClientKey(key.to_bytes())
    }
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client-key:{:02x}{:02x}{:02x}{:02x}", self.0[0], self.0[1], self.0[2], self.0[3])
    }
}

/// `REQUEST(o, t, c)`: signed by the client. The client is named by its public key, so a
/// replica needs no client registry to check the signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub client_key: ClientKey,
    pub timestamp: Timestamp,
    /// A read-only request is answered from current state without ordering (the PBFT
    /// read-only optimisation); the client needs `2f + 1` matching replies for it.
    pub read_only: bool,
    #[serde(with = "serde_bytes")]
    pub operation: Vec<u8>,
}

impl Request {
    pub fn client(&self) -> ClientId {
        client_id(&self.client_key)
    }
}

/// A client's id: the first eight bytes of the blake3 digest of its public key.
pub fn client_id(key: &ClientKey) -> ClientId {
    let digest = Digest::of(&key.0);
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest.0[..8]);
    ClientId(u64::from_le_bytes(bytes))
}

/// `PRE-PREPARE(v, s, d)`, signed by `primary(v)`; the batch travels beside it (M5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrePrepare {
    pub view: View,
    pub seq: SeqNum,
    pub digest: Digest,
}

/// `PREPARE(v, s, d, i)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepare {
    pub view: View,
    pub seq: SeqNum,
    pub digest: Digest,
    pub replica: ReplicaId,
}

/// `COMMIT(v, s, d, i)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    pub view: View,
    pub seq: SeqNum,
    pub digest: Digest,
    pub replica: ReplicaId,
}

/// `REPLY(v, t, c, i, r)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub view: View,
    pub timestamp: Timestamp,
    pub client: ClientId,
    pub replica: ReplicaId,
    /// Answered from tentative state by the read-only path, not from an ordered execution.
    pub read_only: bool,
    #[serde(with = "serde_bytes")]
    pub result: Vec<u8>,
}

/// What a replica signs once per executed batch instead of once per reply: the Merkle
/// root over the digests of that batch's replies, in execution order.
///
/// Why one signature suffices: a reply's leaf is the signing digest of the whole [`Reply`]
/// (domain tag, view, timestamp, client, replica, result), the tree's inner nodes carry
/// their own domain tag, and the number of leaves is signed, so a path of the right length
/// from a leaf to this root exists only for the replies this replica executed in batch
/// `seq` (blake3 collision resistance). A client that checked the root's signature once
/// therefore knows each reply with a valid path came from `replica` exactly as if that
/// reply had been signed alone, and the `f + 1` matching-reply rule is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyRoot {
    pub view: View,
    pub seq: SeqNum,
    pub replica: ReplicaId,
    /// Replies (leaves) under the root.
    pub leaves: u32,
    pub root: Digest,
}

/// One reply in a [`ReplyBundle`]: leaf `index` of the bundle's root, with its path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundledReply {
    pub reply: Reply,
    pub index: u32,
    pub path: Vec<Digest>,
}

/// The replies one replica sends one client for one executed batch, in one frame.
///
/// With `client_auth = "signed"` they share `root`, the replica's signed [`ReplyRoot`], and
/// each carries its Merkle path. With `client_auth = "connection"` there is no root and no
/// path: the client attributes them to the replica whose connection they came on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyBundle {
    pub root: Option<Signed<ReplyRoot>>,
    pub replies: Vec<BundledReply>,
}

/// What vouches for a [`VerifiedReply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyProof {
    /// Signed alone: read-only replies and replies re-sent from the client table.
    Signature(Signature),
    /// Leaf `index` of the signed reply root of one executed batch.
    Batch { root: Arc<Signed<ReplyRoot>>, index: u32, path: Vec<Digest> },
    /// Unsigned (`client_auth = "connection"`): vouched for by the connection it came on.
    Connection,
}

/// A reply whose origin was checked: by its own signature, by a Merkle path to a signed
/// reply root, or (`client_auth = "connection"`) by the replica connection it came on.
/// Built only by [`crate::verify`] or by a replica's executor; it cannot be deserialized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedReply {
    reply: Reply,
    /// The reply's leaf digest: its signing digest (domain tag and payload).
    digest: Digest,
    /// The replica this reply counts for: its signer, or the replica whose connection it
    /// came on.
    from: ReplicaId,
    proof: ReplyProof,
}

impl VerifiedReply {
    pub(crate) fn new(reply: Reply, digest: Digest, from: ReplicaId, proof: ReplyProof) -> Self {
        VerifiedReply { reply, digest, from, proof }
    }

    /// The replica this reply counts for (never merely the `replica` field it carries).
    pub fn attributed_to(&self) -> ReplicaId {
        self.from
    }

    pub fn digest(&self) -> Digest {
        self.digest
    }

    pub fn payload(&self) -> &Reply {
        &self.reply
    }

    pub fn proof(&self) -> &ReplyProof {
        &self.proof
    }

    /// The wire form of this reply alone.
    pub fn to_wire(&self) -> Message {
        reply_messages(std::slice::from_ref(self)).pop().expect("one reply gives one message")
    }
}

impl std::ops::Deref for VerifiedReply {
    type Target = Reply;
    fn deref(&self) -> &Reply {
        &self.reply
    }
}

/// The wire messages carrying `replies` (all to one client): runs of replies under one
/// reply root become one [`ReplyBundle`] (one frame, the root sent once), and so do runs of
/// unsigned ones; a reply signed alone travels alone. The order of `replies` is kept.
pub fn reply_messages(replies: &[VerifiedReply]) -> Vec<Message> {
    let mut messages = Vec::new();
    let mut bundle: Option<ReplyBundle> = None;
    let mut bundle_root: Option<&Arc<Signed<ReplyRoot>>> = None;
    for reply in replies {
        let (root, index, path) = match &reply.proof {
            ReplyProof::Signature(signature) => {
                messages.extend(bundle.take().map(Message::Replies));
                messages.push(Message::Reply(Signed { payload: reply.reply.clone(), signature: *signature }));
                continue;
            }
            ReplyProof::Batch { root, index, path } => (Some(root), *index, path.clone()),
            ReplyProof::Connection => (None, 0, Vec::new()),
        };
        let same = bundle.is_some()
            && match (root, bundle_root) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                (None, None) => true,
                _ => false,
            };
        if !same {
            messages.extend(bundle.take().map(Message::Replies));
            bundle = Some(ReplyBundle { root: root.map(|r| (**r).clone()), replies: Vec::new() });
            bundle_root = root;
        }
        if let Some(open) = bundle.as_mut() {
            open.replies.push(BundledReply { reply: reply.reply.clone(), index, path });
        }
    }
    messages.extend(bundle.take().map(Message::Replies));
    messages
}

/// `CHECKPOINT(s, D, i)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: SeqNum,
    pub state_digest: Digest,
    pub replica: ReplicaId,
}

/// What a replica has of one sequence number, reported in [`Status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotProgress {
    pub has_pre_prepare: bool,
    pub prepared: bool,
    pub committed: bool,
}

/// `STATUS`: a replica that is stuck says where it is, and its peers send it what it
/// lacks (the retransmission scheme of Castro's BFT library). Sent only while stuck.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub replica: ReplicaId,
    pub view: View,
    pub stable: SeqNum,
    pub last_executed: SeqNum,
    /// The sequence number `slots` starts at: `last_executed + 1`, or lower when slots at or
    /// below `last_executed` are re-run in a new view and not yet committed in it (E3).
    pub first_slot: SeqNum,
    /// Progress of `first_slot ..`, one entry per sequence number, bounded by the
    /// watermark window.
    pub slots: Vec<SlotProgress>,
}

/// `STATE-REQ`: asks a peer for chunk `chunk` of its checkpoint image at `seq` (ST2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRequest {
    pub replica: ReplicaId,
    pub seq: SeqNum,
    pub chunk: u64,
}

/// `STATE-CHUNK`: chunk `index` of the checkpoint image at `seq` (service snapshot and
/// client table, M7) with its Merkle path. The requester checks it against the state
/// digest of a stable checkpoint proof, never against the sender's word (ST4). A source
/// that no longer holds `seq` answers from its newer stable checkpoint (ST3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateReply {
    pub replica: ReplicaId,
    pub seq: SeqNum,
    pub total_bytes: u64,
    pub index: u64,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    pub path: Vec<Digest>,
}

/// `INQUIRY`: a client or operator asks a replica where it is (not ordered).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inquiry {
    pub client_key: ClientKey,
    pub nonce: u64,
}

/// `REPORT`: a replica's answer to an INQUIRY: its view, stable checkpoint, last executed
/// sequence number and the state digest at that point, and the last stable checkpoint at
/// which its own state differed from the quorum's, if any (C8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub replica: ReplicaId,
    pub client: ClientId,
    pub nonce: u64,
    pub view: View,
    pub stable: SeqNum,
    pub last_executed: SeqNum,
    pub state_digest: Digest,
    pub diverged_at: Option<SeqNum>,
}

/// A prepared certificate as it travels inside a VIEW-CHANGE (M6): the PRE-PREPARE signed by
/// `primary(v)` and `2f` PREPAREs for the same `(v, s, d)` from distinct backups. No batch
/// travels with it (M5).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedCertificate {
    pub pre_prepare: Signed<PrePrepare>,
    pub prepares: Vec<Signed<Prepare>>,
}

/// `VIEW-CHANGE(w, s_c, C, P, i)` (VC9): replica `i` moves to view `w`; `s_c` is its last
/// stable checkpoint, `C` that checkpoint's proof (empty iff `s_c = 0`), `P` a prepared
/// certificate for each sequence number above `s_c` that prepared at `i`, from the highest
/// view in which it prepared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewChange {
    pub view: View,
    pub stable: SeqNum,
    pub checkpoint_proof: Vec<Signed<Checkpoint>>,
    pub prepared: Vec<PreparedCertificate>,
    pub replica: ReplicaId,
}

/// `NEW-VIEW(w, V, O)` (VC11–VC12), signed by `primary(w)`: `V` holds at least `2f + 1`
/// VIEW-CHANGEs for `w`, `O` the pre-prepares for view `w` that VC12 computes from `V`,
/// each signed by `primary(w)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewView {
    pub view: View,
    pub view_changes: Vec<Signed<ViewChange>>,
    pub pre_prepares: Vec<Signed<PrePrepare>>,
}

/// `BATCH-REQ`: asks peers for the batches with these digests (batches named by a NEW-VIEW
/// that this replica never received, VC16). At most `L` digests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRequest {
    pub replica: ReplicaId,
    pub digests: Vec<Digest>,
}

/// `BATCH`: the answer to a BATCH-REQ. The commands travel beside it; the receiver checks
/// them against the digest it asked for, never against the sender's word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchReply {
    pub replica: ReplicaId,
    pub digest: Digest,
}

/// A prepared certificate whose every signature was checked and whose votes match (VC10).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedPrepared {
    pub pre_prepare: Verified<PrePrepare>,
    pub prepares: Vec<Verified<Prepare>>,
}

impl VerifiedPrepared {
    pub fn to_wire(&self) -> PreparedCertificate {
        PreparedCertificate {
            pre_prepare: self.pre_prepare.signed().clone(),
            prepares: self.prepares.iter().map(|p| p.signed().clone()).collect(),
        }
    }
}

/// A VIEW-CHANGE that is valid by VC10: its sender's signature, its checkpoint proof and
/// every prepared certificate in it were checked. Built only by [`crate::verify`] or by a
/// replica from its own verified state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedViewChange {
    pub message: Verified<ViewChange>,
    /// The sender's stable checkpoint with its proof (`seq` 0 and no proof at the start).
    pub checkpoint: StableCheckpoint,
    /// The prepared certificates by sequence number (at most one per number).
    pub prepared: BTreeMap<SeqNum, VerifiedPrepared>,
}

impl VerifiedViewChange {
    pub fn view(&self) -> View {
        self.message.view
    }

    pub fn sender(&self) -> ReplicaId {
        self.message.replica
    }
}

/// What VC12 computes from a NEW-VIEW's `V`: the checkpoint `min-s` with its proof, `max-s`,
/// and for each `min-s < s ≤ max-s` the digest to re-propose (the null batch for a gap).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewViewOrder {
    pub checkpoint: StableCheckpoint,
    pub max_seq: SeqNum,
    pub entries: Vec<(SeqNum, Digest)>,
}

impl NewViewOrder {
    pub fn min_seq(&self) -> SeqNum {
        self.checkpoint.seq
    }
}

/// A NEW-VIEW that is valid by VC15 as far as a message alone can say: signed by
/// `primary(w)`, `V` holds valid VIEW-CHANGEs for `w` from at least `2f + 1` distinct
/// replicas, and `O` is exactly VC12 of `V`, each pre-prepare signed by `primary(w)`.
/// Whether a replica may accept it (its own view) is the view-changer's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedNewView {
    pub message: Verified<NewView>,
    pub view_changes: Vec<VerifiedViewChange>,
    pub order: NewViewOrder,
    pub pre_prepares: Vec<Verified<PrePrepare>>,
}

impl VerifiedNewView {
    pub fn view(&self) -> View {
        self.message.view
    }
}

/// Each payload kind's domain tag (M1) and what its signatures bind (see [`crate::signing`]):
/// replicas' messages their cluster and epoch, clients' their cluster only.
macro_rules! payload_kinds {
    ($($kind:ty => $domain:literal, binds epoch: $epoch:literal;)*) => {$(
        impl Signable for $kind {
            const DOMAIN: &'static [u8] = $domain;
        }
        impl Scoped for $kind {
            const BINDS_EPOCH: bool = $epoch;
        }
    )*};
}

payload_kinds! {
    ViewChange => b"bulwark/view-change/v1", binds epoch: true;
    NewView => b"bulwark/new-view/v1", binds epoch: true;
    BatchRequest => b"bulwark/batch-request/v1", binds epoch: true;
    BatchReply => b"bulwark/batch-reply/v1", binds epoch: true;
    Inquiry => b"bulwark/inquiry/v1", binds epoch: false;
    Report => b"bulwark/report/v1", binds epoch: true;
    Request => b"bulwark/request/v1", binds epoch: false;
    PrePrepare => b"bulwark/pre-prepare/v1", binds epoch: true;
    Prepare => b"bulwark/prepare/v1", binds epoch: true;
    Commit => b"bulwark/commit/v1", binds epoch: true;
    Reply => b"bulwark/reply/v1", binds epoch: true;
    ReplyRoot => b"bulwark/reply-root/v1", binds epoch: true;
    Checkpoint => b"bulwark/checkpoint/v1", binds epoch: true;
    Status => b"bulwark/status/v1", binds epoch: true;
    StateRequest => b"bulwark/state-request/v1", binds epoch: true;
    StateReply => b"bulwark/state-reply/v1", binds epoch: true;
}

/// A message as it travels between replicas and clients. Not yet trusted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    Request(Signed<Request>),
    PrePrepare(Signed<PrePrepare>, WireBatch),
    Prepare(Signed<Prepare>),
    Commit(Signed<Commit>),
    /// A reply signed alone (read-only, or re-sent from the client table).
    Reply(Signed<Reply>),
    Checkpoint(Signed<Checkpoint>),
    Status(Signed<Status>),
    StateRequest(Signed<StateRequest>),
    StateReply(Signed<StateReply>),
    Inquiry(Signed<Inquiry>),
    Report(Signed<Report>),
    ViewChange(Signed<ViewChange>),
    NewView(Signed<NewView>),
    BatchRequest(Signed<BatchRequest>),
    BatchReply(Signed<BatchReply>, WireBatch),
    /// Replies to one client from one executed batch (see [`ReplyBundle`]).
    Replies(ReplyBundle),
}

/// The kind of a message, for counters and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MessageKind {
    Request,
    PrePrepare,
    Prepare,
    Commit,
    Reply,
    Checkpoint,
    Status,
    StateRequest,
    StateReply,
    Inquiry,
    Report,
    ViewChange,
    NewView,
    BatchRequest,
    BatchReply,
}

impl MessageKind {
    /// Whether signatures of this kind bind the epoch as well as the cluster (see
    /// [`crate::signing::Scoped`]): what replicas sign does, what clients sign does not.
    pub fn binds_epoch(self) -> bool {
        match self {
            MessageKind::Request => Request::BINDS_EPOCH,
            MessageKind::PrePrepare => PrePrepare::BINDS_EPOCH,
            MessageKind::Prepare => Prepare::BINDS_EPOCH,
            MessageKind::Commit => Commit::BINDS_EPOCH,
            MessageKind::Reply => Reply::BINDS_EPOCH,
            MessageKind::Checkpoint => Checkpoint::BINDS_EPOCH,
            MessageKind::Status => Status::BINDS_EPOCH,
            MessageKind::StateRequest => StateRequest::BINDS_EPOCH,
            MessageKind::StateReply => StateReply::BINDS_EPOCH,
            MessageKind::Inquiry => Inquiry::BINDS_EPOCH,
            MessageKind::Report => Report::BINDS_EPOCH,
            MessageKind::ViewChange => ViewChange::BINDS_EPOCH,
            MessageKind::NewView => NewView::BINDS_EPOCH,
            MessageKind::BatchRequest => BatchRequest::BINDS_EPOCH,
            MessageKind::BatchReply => BatchReply::BINDS_EPOCH,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Request => "request",
            MessageKind::PrePrepare => "pre_prepare",
            MessageKind::Prepare => "prepare",
            MessageKind::Commit => "commit",
            MessageKind::Reply => "reply",
            MessageKind::Checkpoint => "checkpoint",
            MessageKind::Status => "status",
            MessageKind::StateRequest => "state_request",
            MessageKind::StateReply => "state_reply",
            MessageKind::Inquiry => "inquiry",
            MessageKind::Report => "report",
            MessageKind::ViewChange => "view_change",
            MessageKind::NewView => "new_view",
            MessageKind::BatchRequest => "batch_request",
            MessageKind::BatchReply => "batch_reply",
        }
    }
}

impl Message {
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Request(_) => MessageKind::Request,
            Message::PrePrepare(..) => MessageKind::PrePrepare,
            Message::Prepare(_) => MessageKind::Prepare,
            Message::Commit(_) => MessageKind::Commit,
            Message::Reply(_) => MessageKind::Reply,
            Message::Checkpoint(_) => MessageKind::Checkpoint,
            Message::Status(_) => MessageKind::Status,
            Message::StateRequest(_) => MessageKind::StateRequest,
            Message::StateReply(_) => MessageKind::StateReply,
            Message::Inquiry(_) => MessageKind::Inquiry,
            Message::Report(_) => MessageKind::Report,
            Message::ViewChange(_) => MessageKind::ViewChange,
            Message::NewView(_) => MessageKind::NewView,
            Message::BatchRequest(_) => MessageKind::BatchRequest,
            Message::BatchReply(..) => MessageKind::BatchReply,
            Message::Replies(_) => MessageKind::Reply,
        }
    }

    /// The replica this message claims to be signed by, before any check: what
    /// [`VerifiedMessage::replica_sender`] will say if the signature verifies. For
    /// scheduling work at the edge only (a runtime serves replicas' traffic ahead of
    /// clients'); a false claim fails the verification it schedules. `None` for what
    /// clients sign (requests, inquiries) and for replies, which clients check themselves.
    pub fn claimed_replica_sender(&self, primary_of: impl Fn(View) -> ReplicaId) -> Option<ReplicaId> {
        match self {
            Message::Request(_) | Message::Inquiry(_) | Message::Reply(_) | Message::Replies(_) => None,
            Message::PrePrepare(m, _) => Some(primary_of(m.payload.view)),
            Message::Prepare(m) => Some(m.payload.replica),
            Message::Commit(m) => Some(m.payload.replica),
            Message::Checkpoint(m) => Some(m.payload.replica),
            Message::Status(m) => Some(m.payload.replica),
            Message::StateRequest(m) => Some(m.payload.replica),
            Message::StateReply(m) => Some(m.payload.replica),
            Message::Report(m) => Some(m.payload.replica),
            Message::ViewChange(m) => Some(m.payload.replica),
            Message::NewView(m) => Some(primary_of(m.payload.view)),
            Message::BatchRequest(m) => Some(m.payload.replica),
            Message::BatchReply(m, _) => Some(m.payload.replica),
        }
    }
}

/// A message whose signatures (and, for a pre-prepare, batch) have been checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifiedMessage {
    Request(Verified<Request>),
    PrePrepare(Verified<PrePrepare>, Arc<Batch>),
    Prepare(Verified<Prepare>),
    Commit(Verified<Commit>),
    Reply(VerifiedReply),
    Checkpoint(Verified<Checkpoint>),
    Status(Verified<Status>),
    StateRequest(Verified<StateRequest>),
    StateReply(Verified<StateReply>),
    Inquiry(Verified<Inquiry>),
    Report(Verified<Report>),
    ViewChange(Arc<VerifiedViewChange>),
    NewView(Arc<VerifiedNewView>),
    BatchRequest(Verified<BatchRequest>),
    BatchReply(Verified<BatchReply>, Arc<Batch>),
}

impl VerifiedMessage {
    /// The wire form, to encode and send.
    pub fn to_wire(&self) -> Message {
        match self {
            VerifiedMessage::Request(m) => Message::Request(m.signed().clone()),
            VerifiedMessage::PrePrepare(m, batch) => Message::PrePrepare(m.signed().clone(), batch.to_wire()),
            VerifiedMessage::Prepare(m) => Message::Prepare(m.signed().clone()),
            VerifiedMessage::Commit(m) => Message::Commit(m.signed().clone()),
            VerifiedMessage::Reply(m) => m.to_wire(),
            VerifiedMessage::Checkpoint(m) => Message::Checkpoint(m.signed().clone()),
            VerifiedMessage::Status(m) => Message::Status(m.signed().clone()),
            VerifiedMessage::StateRequest(m) => Message::StateRequest(m.signed().clone()),
            VerifiedMessage::StateReply(m) => Message::StateReply(m.signed().clone()),
            VerifiedMessage::Inquiry(m) => Message::Inquiry(m.signed().clone()),
            VerifiedMessage::Report(m) => Message::Report(m.signed().clone()),
            VerifiedMessage::ViewChange(m) => Message::ViewChange(m.message.signed().clone()),
            VerifiedMessage::NewView(m) => Message::NewView(m.message.signed().clone()),
            VerifiedMessage::BatchRequest(m) => Message::BatchRequest(m.signed().clone()),
            VerifiedMessage::BatchReply(m, batch) => Message::BatchReply(m.signed().clone(), batch.to_wire()),
        }
    }

    /// The view of a normal-case message (PRE-PREPARE, PREPARE, COMMIT); none for others.
    pub fn normal_case_view(&self) -> Option<View> {
        match self {
            VerifiedMessage::PrePrepare(m, _) => Some(m.view),
            VerifiedMessage::Prepare(m) => Some(m.view),
            VerifiedMessage::Commit(m) => Some(m.view),
            _ => None,
        }
    }

    pub fn kind(&self) -> MessageKind {
        match self {
            VerifiedMessage::Request(_) => MessageKind::Request,
            VerifiedMessage::PrePrepare(..) => MessageKind::PrePrepare,
            VerifiedMessage::Prepare(_) => MessageKind::Prepare,
            VerifiedMessage::Commit(_) => MessageKind::Commit,
            VerifiedMessage::Reply(_) => MessageKind::Reply,
            VerifiedMessage::Checkpoint(_) => MessageKind::Checkpoint,
            VerifiedMessage::Status(_) => MessageKind::Status,
            VerifiedMessage::StateRequest(_) => MessageKind::StateRequest,
            VerifiedMessage::StateReply(_) => MessageKind::StateReply,
            VerifiedMessage::Inquiry(_) => MessageKind::Inquiry,
            VerifiedMessage::Report(_) => MessageKind::Report,
            VerifiedMessage::ViewChange(_) => MessageKind::ViewChange,
            VerifiedMessage::NewView(_) => MessageKind::NewView,
            VerifiedMessage::BatchRequest(_) => MessageKind::BatchRequest,
            VerifiedMessage::BatchReply(..) => MessageKind::BatchReply,
        }
    }

    /// The replica that signed this message, if a replica did.
    pub fn replica_sender(&self, primary_of: impl Fn(View) -> ReplicaId) -> Option<ReplicaId> {
        match self {
            VerifiedMessage::Request(_) => None,
            VerifiedMessage::PrePrepare(m, _) => Some(primary_of(m.view)),
            VerifiedMessage::Prepare(m) => Some(m.replica),
            VerifiedMessage::Commit(m) => Some(m.replica),
            VerifiedMessage::Reply(m) => Some(m.attributed_to()),
            VerifiedMessage::Checkpoint(m) => Some(m.replica),
            VerifiedMessage::Status(m) => Some(m.replica),
            VerifiedMessage::StateRequest(m) => Some(m.replica),
            VerifiedMessage::StateReply(m) => Some(m.replica),
            VerifiedMessage::Inquiry(_) => None,
            VerifiedMessage::Report(m) => Some(m.replica),
            VerifiedMessage::ViewChange(m) => Some(m.sender()),
            VerifiedMessage::NewView(m) => Some(primary_of(m.view())),
            VerifiedMessage::BatchRequest(m) => Some(m.replica),
            VerifiedMessage::BatchReply(m, _) => Some(m.replica),
        }
    }
}
