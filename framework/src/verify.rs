//! Verification at the edge: the only road from [`Message`] to [`VerifiedMessage`].
//!
//! Checks here depend only on the message and the cluster configuration, never on a
//! replica's state, so any thread may run them (the runtime spreads them over its cores)
//! and every correct replica reaches the same verdict. Protocol-state checks (view,
//! watermarks, duplicates) belong to the roles.

use crate::config::ClientAuth;
use crate::ids::{ClientId, ClusterId, Epoch, ReplicaId, SeqNum, Timestamp, View};
use crate::membership::{Membership, Scope};
use crate::messages::{
    request_size, Batch, ClientKey, Command, Message, MessageKind, NewView, PreparedCertificate, Reply, ReplyBundle,
    ReplyProof, ReplyRoot, Request, VerifiedMessage, VerifiedNewView, VerifiedPrepared, VerifiedReply,
    VerifiedViewChange, ViewChange, WireBatch, WireCommand,
};
use crate::roles::checkpoint::StableCheckpoint;
use crate::roles::view_change::compute_order;
use crate::signing::Scoped;
use crate::wire::{Envelope, WireError};
use bulwark_crypto::merkle::merkle_root_from_path;
use bulwark_crypto::{PublicKey, Signed, Verified};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

/// Why a message was refused. Every refusal is counted by kind ([`RefusalCounts`]) and
/// logged; none is fatal to the receiver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("undecodable frame: {0}")]
    Wire(#[from] WireError),
    #[error("{kind:?} claims sender {replica}, which is not a member of the cluster")]
    UnknownSender { kind: MessageKind, replica: ReplicaId },
    #[error("{kind:?} is signed for cluster {claimed}, not for this cluster ({expected})")]
    WrongCluster { kind: MessageKind, claimed: ClusterId, expected: ClusterId },
    #[error("{kind:?} is signed in epoch {claimed}, and this replica is in epoch {expected}")]
    WrongEpoch { kind: MessageKind, claimed: Epoch, expected: Epoch },
    #[error("{kind:?} in a certificate is signed by {replica}, not a member of epoch {epoch}")]
    CertificateSignerNotMember { kind: MessageKind, replica: ReplicaId, epoch: Epoch },
    #[error("{kind:?} has a signature that does not verify")]
    BadSignature { kind: MessageKind },
    #[error("request of {bytes} bytes exceeds the limit of {limit}")]
    RequestTooLarge { bytes: usize, limit: usize },
    #[error("pre-prepare digest does not match its batch")]
    BatchDigestMismatch,
    #[error("batch of {requests} requests / {bytes} bytes exceeds the limits")]
    BatchTooLarge { requests: usize, bytes: usize },
    #[error("batch holds request ({client}, {timestamp}) twice")]
    DuplicateRequestInBatch { client: ClientId, timestamp: Timestamp },
    #[error("batch holds a read-only request")]
    ReadOnlyRequestInBatch,
    #[error("{kind:?} carries an invalid certificate: {reason}")]
    BadCertificate { kind: MessageKind, reason: &'static str },
}

/// The kinds of [`Refusal`], for counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum RefusalKind {
    Malformed,
    Oversized,
    UnknownSender,
    /// Signed for another cluster (the envelope says so; a false envelope fails the
    /// signature check instead).
    WrongCluster,
    /// Signed by the members of another epoch.
    WrongEpoch,
    /// A certificate holds a message whose signer is not a member of its epoch.
    CertificateSignerNotMember,
    BadSignature,
    RequestTooLarge,
    BatchDigestMismatch,
    BatchTooLarge,
    DuplicateRequestInBatch,
    ReadOnlyRequestInBatch,
    BadCertificate,
    /// Not refused for what it is but shed unverified: its connection held more than its
    /// fair share of the client requests waiting for verification (a runtime counter; the
    /// framework itself never sheds for this).
    OverClientShare,
}

impl Refusal {
    pub fn kind(&self) -> RefusalKind {
        match self {
            Refusal::Wire(WireError::Oversized { .. }) => RefusalKind::Oversized,
            Refusal::Wire(_) => RefusalKind::Malformed,
            Refusal::UnknownSender { .. } => RefusalKind::UnknownSender,
            Refusal::WrongCluster { .. } => RefusalKind::WrongCluster,
            Refusal::WrongEpoch { .. } => RefusalKind::WrongEpoch,
            Refusal::CertificateSignerNotMember { .. } => RefusalKind::CertificateSignerNotMember,
            Refusal::BadSignature { .. } => RefusalKind::BadSignature,
            Refusal::RequestTooLarge { .. } => RefusalKind::RequestTooLarge,
            Refusal::BatchDigestMismatch => RefusalKind::BatchDigestMismatch,
            Refusal::BatchTooLarge { .. } => RefusalKind::BatchTooLarge,
            Refusal::DuplicateRequestInBatch { .. } => RefusalKind::DuplicateRequestInBatch,
            Refusal::ReadOnlyRequestInBatch => RefusalKind::ReadOnlyRequestInBatch,
            Refusal::BadCertificate { .. } => RefusalKind::BadCertificate,
        }
    }
}

/// Counts of refused messages by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RefusalCounts(BTreeMap<RefusalKind, u64>);

impl RefusalCounts {
    pub fn record(&mut self, refusal: &Refusal) {
        self.record_kind(refusal.kind());
    }

    pub fn record_kind(&mut self, kind: RefusalKind) {
        self.add(kind, 1);
    }

    pub fn add(&mut self, kind: RefusalKind, count: u64) {
        *self.0.entry(kind).or_default() += count;
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &RefusalCounts) {
        for (kind, count) in other.iter() {
            self.add(kind, count);
        }
    }

    pub fn get(&self, kind: RefusalKind) -> u64 {
        self.0.get(&kind).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = (RefusalKind, u64)> + '_ {
        self.0.iter().map(|(k, v)| (*k, *v))
    }
}

impl fmt::Display for RefusalCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, (kind, count)) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{kind:?}={count}")?;
        }
        Ok(())
    }
}

fn member_key(membership: &Membership, kind: MessageKind, replica: ReplicaId) -> Result<&PublicKey, Refusal> {
    membership.public_key(replica).ok_or(Refusal::UnknownSender { kind, replica })
}

/// The key of a certificate's signer, who must be a member of the epoch the certificate
/// is checked in (the membership's).
fn certificate_signer_key(
    membership: &Membership,
    kind: MessageKind,
    replica: ReplicaId,
) -> Result<&PublicKey, Refusal> {
    membership.public_key(replica).ok_or(Refusal::CertificateSignerNotMember {
        kind,
        replica,
        epoch: membership.epoch(),
    })
}

/// Whether a message that claims to be signed in `scope` may be checked under
/// `membership` at all: the same cluster, and (for what replicas sign) the same epoch.
pub fn check_scope(scope: Scope, kind: MessageKind, membership: &Membership) -> Result<(), Refusal> {
    let expected = membership.scope();
    if scope.cluster != expected.cluster {
        return Err(Refusal::WrongCluster { kind, claimed: scope.cluster, expected: expected.cluster });
    }
    if kind.binds_epoch() && scope.epoch != expected.epoch {
        return Err(Refusal::WrongEpoch { kind, claimed: scope.epoch, expected: expected.epoch });
    }
    Ok(())
}

/// [`verify_message`] of a message as it came off the wire: refused for what it is if its
/// envelope names another cluster or epoch ([`check_scope`]); otherwise every signature is
/// checked in this membership's scope, so an envelope that lies about its scope gets its
/// message refused as badly signed.
pub fn verify_envelope(envelope: Envelope, membership: &Membership) -> Result<VerifiedMessage, Refusal> {
    check_scope(envelope.scope, envelope.message.kind(), membership)?;
    verify_message(envelope.message, membership)
}

fn check<T: Scoped>(
    membership: &Membership,
    signed: Signed<T>,
    key: &PublicKey,
    kind: MessageKind,
) -> Result<Verified<T>, Refusal> {
    membership.scope().verify(signed, key).map_err(|_| Refusal::BadSignature { kind })
}

fn check_request_size(request: &Request, membership: &Membership) -> Result<(), Refusal> {
    let limit = membership.params.request_bytes_max;
    if request.operation.len() > limit {
        return Err(Refusal::RequestTooLarge { bytes: request.operation.len(), limit });
    }
    Ok(())
}

/// Parsed client keys, so a client's key is decompressed into a curve point once rather
/// than for every request (decompression costs about a third of a verification). Bounded:
/// when full it is cleared, which costs only the re-parsing.
#[derive(Debug, Default)]
pub struct ClientKeyCache {
    keys: std::collections::HashMap<ClientKey, PublicKey>,
}

impl ClientKeyCache {
    /// Keys held before the cache is cleared.
    pub const CAPACITY: usize = 16_384;

    fn get(&mut self, key: &ClientKey) -> Result<PublicKey, Refusal> {
        if let Some(parsed) = self.keys.get(key) {
            return Ok(*parsed);
        }
        let parsed = key.to_public_key().map_err(|_| Refusal::BadSignature { kind: MessageKind::Request })?;
        if self.keys.len() >= Self::CAPACITY {
            self.keys.clear();
        }
        self.keys.insert(*key, parsed);
        Ok(parsed)
    }
}

/// Verifies every signature in `message` and, for a pre-prepare, that its batch is well
/// formed and matches its digest (PBFT.md N1.a and N1.e).
pub fn verify_message(message: Message, membership: &Membership) -> Result<VerifiedMessage, Refusal> {
    verify_message_with(message, membership, &mut ClientKeyCache::default())
}

/// [`verify_message`] with a cache of parsed client keys (one per verification thread).
pub fn verify_message_with(
    message: Message,
    membership: &Membership,
    keys: &mut ClientKeyCache,
) -> Result<VerifiedMessage, Refusal> {
    Ok(match message {
        Message::Request(signed) => {
            check_request_size(&signed.payload, membership)?;
            VerifiedMessage::Request(verify_request(signed, membership, keys)?)
        }
        Message::PrePrepare(signed, requests) => {
            let primary = membership.primary(signed.payload.view);
            let key = member_key(membership, MessageKind::PrePrepare, primary)?;
            // The primary's one signature first: a sender that cannot sign as the primary
            // must not make a replica check a whole batch of client signatures.
            let pre_prepare = check(membership, signed, key, MessageKind::PrePrepare)?;
            let batch = verify_batch_commands(requests, membership, keys)?;
            if batch.digest() != pre_prepare.digest {
                return Err(Refusal::BatchDigestMismatch);
            }
            VerifiedMessage::PrePrepare(pre_prepare, Arc::new(batch))
        }
        Message::Prepare(signed) => {
            let key = member_key(membership, MessageKind::Prepare, signed.payload.replica)?;
            VerifiedMessage::Prepare(check(membership, signed, key, MessageKind::Prepare)?)
        }
        Message::Commit(signed) => {
            let key = member_key(membership, MessageKind::Commit, signed.payload.replica)?;
            VerifiedMessage::Commit(check(membership, signed, key, MessageKind::Commit)?)
        }
        Message::Reply(signed) => VerifiedMessage::Reply(verify_reply(signed, None, membership)?),
        Message::Replies(bundle) => {
            // Without a cache and a connection (the simulator, a replica): one reply alone.
            if bundle.replies.len() != 1 {
                return Err(bad_reply("a bundle of several replies is checked by the client it is for"));
            }
            let mut replies = verify_reply_bundle(bundle, None, membership, &mut ReplyRootCache::default())?;
            VerifiedMessage::Reply(replies.pop().expect("one reply in, one out"))
        }
        Message::Checkpoint(signed) => {
            let key = member_key(membership, MessageKind::Checkpoint, signed.payload.replica)?;
            VerifiedMessage::Checkpoint(check(membership, signed, key, MessageKind::Checkpoint)?)
        }
        Message::Status(signed) => {
            let key = member_key(membership, MessageKind::Status, signed.payload.replica)?;
            VerifiedMessage::Status(check(membership, signed, key, MessageKind::Status)?)
        }
        Message::StateRequest(signed) => {
            let key = member_key(membership, MessageKind::StateRequest, signed.payload.replica)?;
            VerifiedMessage::StateRequest(check(membership, signed, key, MessageKind::StateRequest)?)
        }
        Message::StateReply(signed) => {
            let key = member_key(membership, MessageKind::StateReply, signed.payload.replica)?;
            let chunk = &signed.payload;
            if chunk.data.len() > membership.params.state_chunk_bytes || chunk.path.len() > crate::state::PATH_MAX {
                return Err(Refusal::BadCertificate {
                    kind: MessageKind::StateReply,
                    reason: "state chunk or its Merkle path longer than allowed",
                });
            }
            VerifiedMessage::StateReply(check(membership, signed, key, MessageKind::StateReply)?)
        }
        Message::Inquiry(signed) => {
            let key = signed
                .payload
                .client_key
                .to_public_key()
                .map_err(|_| Refusal::BadSignature { kind: MessageKind::Inquiry })?;
            VerifiedMessage::Inquiry(check(membership, signed, &key, MessageKind::Inquiry)?)
        }
        Message::Report(signed) => {
            let key = member_key(membership, MessageKind::Report, signed.payload.replica)?;
            VerifiedMessage::Report(check(membership, signed, key, MessageKind::Report)?)
        }
        Message::ViewChange(signed) => VerifiedMessage::ViewChange(Arc::new(verify_view_change(signed, membership)?)),
        Message::NewView(signed) => VerifiedMessage::NewView(Arc::new(verify_new_view(signed, membership)?)),
        Message::BatchRequest(signed) => {
            let key = member_key(membership, MessageKind::BatchRequest, signed.payload.replica)?;
            if signed.payload.digests.len() as u64 > membership.params.watermark_window {
                return Err(Refusal::BadCertificate {
                    kind: MessageKind::BatchRequest,
                    reason: "asks for more batches than the window holds",
                });
            }
            VerifiedMessage::BatchRequest(check(membership, signed, key, MessageKind::BatchRequest)?)
        }
        Message::BatchReply(signed, requests) => {
            let key = member_key(membership, MessageKind::BatchReply, signed.payload.replica)?;
            let reply = check(membership, signed, key, MessageKind::BatchReply)?;
            let batch = verify_batch_commands(requests, membership, keys)?;
            if batch.digest() != reply.digest {
                return Err(Refusal::BatchDigestMismatch);
            }
            VerifiedMessage::BatchReply(reply, Arc::new(batch))
        }
    })
}

fn bad_view_change(reason: &'static str) -> Refusal {
    Refusal::BadCertificate { kind: MessageKind::ViewChange, reason }
}

fn bad_new_view(reason: &'static str) -> Refusal {
    Refusal::BadCertificate { kind: MessageKind::NewView, reason }
}

/// VC10: a VIEW-CHANGE is valid iff signed by a member, its checkpoint proof is `2f + 1`
/// matching CHECKPOINTs from distinct members for `s_c` (or `s_c = 0` and no proof), and
/// every element of `P` is a prepared certificate for a view below `w` and a sequence
/// number in `(s_c, s_c + L]`, at most one per sequence number.
pub fn verify_view_change(
    signed: bulwark_crypto::Signed<ViewChange>,
    membership: &Membership,
) -> Result<VerifiedViewChange, Refusal> {
    let key = member_key(membership, MessageKind::ViewChange, signed.payload.replica)?;
    let message = check(membership, signed, key, MessageKind::ViewChange)?;
    let checkpoint = verify_checkpoint_proof(&message, membership)?;
    let window = membership.params.watermark_window;
    if message.prepared.len() as u64 > window {
        return Err(bad_view_change("more prepared certificates than the window holds"));
    }
    let mut prepared = std::collections::BTreeMap::new();
    for certificate in &message.prepared {
        let verified = verify_prepared(certificate, message.view, membership)?;
        let seq = verified.pre_prepare.seq;
        if seq <= message.stable || seq.0 > message.stable.0 + window {
            return Err(bad_view_change("prepared certificate outside (s_c, s_c + L]"));
        }
        if prepared.insert(seq, verified).is_some() {
            return Err(bad_view_change("two prepared certificates for one sequence number"));
        }
    }
    Ok(VerifiedViewChange { message, checkpoint, prepared })
}

fn verify_checkpoint_proof(message: &ViewChange, membership: &Membership) -> Result<StableCheckpoint, Refusal> {
    checkpoint_proof(message.stable, &message.checkpoint_proof, membership)
}

/// C3: `proof` is `2f + 1` CHECKPOINTs for `stable` with one state digest from distinct
/// members, signatures valid (or `stable` is 0 and `proof` empty).
pub fn checkpoint_proof(
    stable: SeqNum,
    proof: &[bulwark_crypto::Signed<crate::messages::Checkpoint>],
    membership: &Membership,
) -> Result<StableCheckpoint, Refusal> {
    if stable == SeqNum(0) {
        if !proof.is_empty() {
            return Err(bad_view_change("checkpoint proof for sequence number 0"));
        }
        return Ok(StableCheckpoint { seq: stable, state_digest: Default::default(), proof: Vec::new() });
    }
    if !stable.0.is_multiple_of(membership.params.checkpoint_interval) {
        return Err(bad_view_change("stable checkpoint not at a multiple of K"));
    }
    if proof.len() < membership.quorum() || proof.len() > membership.n() {
        return Err(bad_view_change("checkpoint proof without a quorum of messages"));
    }
    let state_digest = proof[0].payload.state_digest;
    let mut signers = BTreeSet::new();
    let mut verified = Vec::with_capacity(proof.len());
    for checkpoint in proof {
        if checkpoint.payload.seq != stable || checkpoint.payload.state_digest != state_digest {
            return Err(bad_view_change("checkpoint proof messages do not match"));
        }
        if !signers.insert(checkpoint.payload.replica) {
            return Err(bad_view_change("checkpoint proof with a duplicate signer"));
        }
        let key = certificate_signer_key(membership, MessageKind::Checkpoint, checkpoint.payload.replica)?;
        verified.push(check(membership, checkpoint.clone(), key, MessageKind::Checkpoint)?);
    }
    Ok(StableCheckpoint { seq: stable, state_digest, proof: verified })
}

/// M6 and VC10: the PRE-PREPARE signed by `primary(v')` with `v' < w`, and `2f` PREPAREs
/// for the same `(v', s, d)` from distinct backups other than `primary(v')`.
pub fn verify_prepared(
    certificate: &PreparedCertificate,
    target: View,
    membership: &Membership,
) -> Result<VerifiedPrepared, Refusal> {
    let header = certificate.pre_prepare.payload;
    if header.view >= target {
        return Err(bad_view_change("prepared certificate from a view not below the target"));
    }
    // The pre-prepare and the prepares together are a quorum (2f + 1 when n = 3f + 1).
    let needed = membership.quorum() - 1;
    if certificate.prepares.len() < needed || certificate.prepares.len() >= membership.n() {
        return Err(bad_view_change("prepared certificate without a quorum of prepares"));
    }
    let primary = membership.primary(header.view);
    let key = member_key(membership, MessageKind::PrePrepare, primary)?;
    let pre_prepare = check(membership, certificate.pre_prepare.clone(), key, MessageKind::PrePrepare)?;
    let mut signers = BTreeSet::new();
    let mut prepares = Vec::with_capacity(certificate.prepares.len());
    for prepare in &certificate.prepares {
        let vote = &prepare.payload;
        if vote.view != header.view || vote.seq != header.seq || vote.digest != header.digest {
            return Err(bad_view_change("prepare does not match its pre-prepare"));
        }
        if vote.replica == primary {
            return Err(bad_view_change("prepare from the primary in a certificate"));
        }
        if !signers.insert(vote.replica) {
            return Err(bad_view_change("prepared certificate with a duplicate signer"));
        }
        let key = certificate_signer_key(membership, MessageKind::Prepare, vote.replica)?;
        prepares.push(check(membership, prepare.clone(), key, MessageKind::Prepare)?);
    }
    Ok(VerifiedPrepared { pre_prepare, prepares })
}

/// VC15 as far as the message alone can say: signed by `primary(w)`; `V` holds valid
/// VIEW-CHANGEs for `w` from at least `2f + 1` distinct replicas; `O` equals VC12 of `V`,
/// each entry a pre-prepare for view `w` signed by `primary(w)`.
pub fn verify_new_view(
    signed: bulwark_crypto::Signed<NewView>,
    membership: &Membership,
) -> Result<VerifiedNewView, Refusal> {
    verify_new_view_with(signed, membership, |_| None)
}

/// [`verify_new_view`], taking a VIEW-CHANGE in `V` as verified when `verified_before`
/// returns it: `V`'s VIEW-CHANGEs are the ones the new primary received, which every
/// replica has usually verified already, and they are most of a NEW-VIEW's cost.
/// `verified_before` must return only what [`verify_view_change`] returned for exactly that
/// message under this `config` (the checks here depend on nothing else, so the verdict is
/// the same); the checks on `V` as a whole are made either way.
pub fn verify_new_view_with(
    signed: bulwark_crypto::Signed<NewView>,
    membership: &Membership,
    mut verified_before: impl FnMut(&bulwark_crypto::Signed<ViewChange>) -> Option<VerifiedViewChange>,
) -> Result<VerifiedNewView, Refusal> {
    let view = signed.payload.view;
    let key = member_key(membership, MessageKind::NewView, membership.primary(view))?;
    // The new primary's one signature first: nobody else can make a replica check the
    // hundreds of signatures inside.
    let message = check(membership, signed, key, MessageKind::NewView)?;
    if message.view_changes.len() < membership.quorum() || message.view_changes.len() > membership.n() {
        return Err(bad_new_view("V does not hold a quorum of view-changes"));
    }
    let mut senders = BTreeSet::new();
    let mut view_changes = Vec::with_capacity(message.view_changes.len());
    for vc in &message.view_changes {
        if vc.payload.view != view {
            return Err(bad_new_view("view-change in V for another view"));
        }
        if !senders.insert(vc.payload.replica) {
            return Err(bad_new_view("two view-changes in V from one replica"));
        }
        if let Some(verified) = verified_before(vc) {
            view_changes.push(verified);
            continue;
        }
        let verified = verify_view_change(vc.clone(), membership).map_err(|refusal| {
            if let Refusal::BadCertificate { reason, .. } = refusal {
                bad_new_view(reason)
            } else {
                refusal
            }
        })?;
        view_changes.push(verified);
    }
    let order =
        compute_order(&view_changes, membership).map_err(|_| bad_new_view("O cannot be computed from V (VC12)"))?;
    if message.pre_prepares.len() != order.entries.len() {
        return Err(bad_new_view("O differs from VC12 applied to V"));
    }
    let mut pre_prepares = Vec::with_capacity(order.entries.len());
    for (entry, (seq, digest)) in message.pre_prepares.iter().zip(&order.entries) {
        let header = entry.payload;
        if header.view != view || header.seq != *seq || header.digest != *digest {
            return Err(bad_new_view("O differs from VC12 applied to V"));
        }
        pre_prepares.push(check(membership, entry.clone(), key, MessageKind::PrePrepare)?);
    }
    Ok(VerifiedNewView { message, view_changes, order, pre_prepares })
}

/// N1.e: every request signed by its client and within size limits, the batch within
/// `batch_size_max`/`batch_bytes_max` (system commands count like requests), no
/// `(client, timestamp)` twice, no read-only request (those are never ordered).
///
/// Signatures are batch-verified; each request's verdict is the one it gets alone (see
/// [`bulwark_crypto::verify_batch`]), so every correct replica reaches the same verdict on
/// the batch, and a request a correct primary accepted on arrival passes here. A system
/// command needs no check here: whatever authorizes it is judged at execution.
pub fn verify_batch_commands(
    wire: WireBatch,
    membership: &Membership,
    keys: &mut ClientKeyCache,
) -> Result<Batch, Refusal> {
    let WireBatch { time_us, commands } = wire;
    let params = &membership.params;
    let bytes: usize = commands
        .iter()
        .map(|command| match command {
            WireCommand::Request(request) => request_size(&request.payload),
            WireCommand::System(system) => system.encoded_bytes(),
        })
        .sum();
    if commands.len() > params.batch_size_max || bytes > params.batch_bytes_max {
        return Err(Refusal::BatchTooLarge { requests: commands.len(), bytes });
    }
    let mut seen = BTreeSet::new();
    for command in &commands {
        let WireCommand::Request(request) = command else { continue };
        check_request_size(&request.payload, membership)?;
        if request.payload.read_only {
            return Err(Refusal::ReadOnlyRequestInBatch);
        }
        let key = (request.payload.client(), request.payload.timestamp);
        if !seen.insert(key) {
            return Err(Refusal::DuplicateRequestInBatch { client: key.0, timestamp: key.1 });
        }
    }
    if membership.params.client_auth == ClientAuth::Connection {
        // The primary vouches for the requests it orders (see `ClientAuth::Connection`).
        let trusted: Result<Vec<Command>, Refusal> = commands
            .into_iter()
            .map(|command| match command {
                WireCommand::Request(request) => trust_request(request, membership).map(Command::Request),
                WireCommand::System(system) => Ok(Command::System(system)),
            })
            .collect();
        return Ok(Batch::timed(trusted?, time_us));
    }
    // Every request's signature in one batch check; the commands keep their places.
    let mut items = Vec::new();
    let mut places = Vec::with_capacity(commands.len());
    for command in commands {
        match command {
            WireCommand::Request(request) => {
                let key = keys.get(&request.payload.client_key)?;
                items.push((request, key));
                places.push(None);
            }
            WireCommand::System(system) => places.push(Some(system)),
        }
    }
    let mut verified = membership.scope().verify_batch(items).into_iter();
    let mut batch = Vec::with_capacity(places.len());
    for place in places {
        batch.push(match place {
            Some(system) => Command::System(system),
            None => {
                let request = verified.next().expect("one verdict per request");
                Command::Request(request.map_err(|_| Refusal::BadSignature { kind: MessageKind::Request })?)
            }
        });
    }
    Ok(Batch::timed(batch, time_us))
}

fn trust_request(signed: Signed<Request>, membership: &Membership) -> Result<Verified<Request>, Refusal> {
    membership.scope().trusted_by_link(signed).map_err(|_| Refusal::BadSignature { kind: MessageKind::Request })
}

/// A client's request: its signature checked (`client_auth = "signed"`), or accepted on the
/// connection it came on (`"connection"`). In signed mode a request without a signature
/// ([`bulwark_crypto::Signature::absent`]) fails like any bad signature.
pub fn verify_request(
    signed: Signed<Request>,
    membership: &Membership,
    keys: &mut ClientKeyCache,
) -> Result<Verified<Request>, Refusal> {
    match membership.params.client_auth {
        ClientAuth::Connection => trust_request(signed, membership),
        ClientAuth::Signed => {
            let key = keys.get(&signed.payload.client_key)?;
            check(membership, signed, &key, MessageKind::Request)
        }
    }
}

/// Client requests arriving at a replica, checked together (R1). One result per request,
/// in order.
///
/// Batch-verified: each request's verdict is the one it gets alone, whatever arrived with
/// it (see [`bulwark_crypto::verify_batch`]). That matters because each replica batches the
/// requests that happen to reach it together: were verdicts to depend on the companions, a
/// client could sign its own request so that some replicas accept it and others refuse it,
/// and a correct primary that accepted it would propose it and be refused by its backups
/// (N1.e), or a backup that accepted it would relay it to a primary that refuses it and
/// then suspect that primary (`framework/tests/torsioned_requests.rs`).
pub fn verify_requests(
    requests: Vec<Signed<Request>>,
    membership: &Membership,
    keys: &mut ClientKeyCache,
) -> Vec<Result<Verified<Request>, Refusal>> {
    if membership.params.client_auth == ClientAuth::Connection {
        return requests
            .into_iter()
            .map(|request| {
                check_request_size(&request.payload, membership)?;
                verify_request(request, membership, keys)
            })
            .collect();
    }
    let mut results: Vec<Option<Result<Verified<Request>, Refusal>>> = Vec::with_capacity(requests.len());
    let mut items = Vec::with_capacity(requests.len());
    let mut positions = Vec::with_capacity(requests.len());
    for request in requests {
        let key = check_request_size(&request.payload, membership).and_then(|()| keys.get(&request.payload.client_key));
        match key {
            Ok(key) => {
                positions.push(results.len());
                results.push(None);
                items.push((request, key));
            }
            Err(refusal) => results.push(Some(Err(refusal))),
        }
    }
    for (position, verdict) in positions.into_iter().zip(membership.scope().verify_batch(items)) {
        results[position] = Some(verdict.map_err(|_| Refusal::BadSignature { kind: MessageKind::Request }));
    }
    results.into_iter().map(|result| result.expect("every position is filled")).collect()
}

fn bad_reply(reason: &'static str) -> Refusal {
    Refusal::BadCertificate { kind: MessageKind::Reply, reason }
}

/// Longest Merkle path accepted in a reply: enough for 2^32 leaves.
const REPLY_PATH_MAX: usize = 32;

/// Reply roots whose signatures a client has checked, so that many replies under one root
/// cost one signature check per (replica, view, sequence number). Bounded: it keeps the
/// [`ReplyRootCache::CAPACITY`] most recently added roots and forgets older ones (which
/// only costs a second check of a root that is needed again).
#[derive(Debug, Default)]
pub struct ReplyRootCache {
    roots: std::collections::HashMap<(ReplicaId, View, SeqNum), Signed<ReplyRoot>>,
    order: std::collections::VecDeque<(ReplicaId, View, SeqNum)>,
}

impl ReplyRootCache {
    /// Roots kept: a few hundred batches from each of a handful of replicas.
    pub const CAPACITY: usize = 512;

    pub fn len(&self) -> usize {
        self.roots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    fn key(root: &ReplyRoot) -> (ReplicaId, View, SeqNum) {
        (root.replica, root.view, root.seq)
    }

    /// Whether exactly this signed root (payload and signature) was checked before.
    fn holds(&self, root: &Signed<ReplyRoot>) -> bool {
        self.roots.get(&Self::key(&root.payload)).is_some_and(|known| known == root)
    }

    fn insert(&mut self, root: Signed<ReplyRoot>) {
        let key = Self::key(&root.payload);
        if self.roots.insert(key, root).is_none() {
            self.order.push_back(key);
        }
        while self.roots.len() > Self::CAPACITY {
            let Some(oldest) = self.order.pop_front() else { break };
            self.roots.remove(&oldest);
        }
    }
}

/// The replica a reply counts for in connection mode: the one whose connection it came on,
/// which must also be the one it names (a replica that names another is refused).
fn connection_sender(reply: &Reply, link: Option<ReplicaId>, membership: &Membership) -> Result<ReplicaId, Refusal> {
    let Some(link) = link else {
        return Err(bad_reply("unsigned reply that did not come on a replica's connection"));
    };
    member_key(membership, MessageKind::Reply, link)?;
    if reply.replica != link {
        return Err(bad_reply("reply names another replica than the one whose connection it came on"));
    }
    Ok(link)
}

fn leaf_digest(reply: &Reply, membership: &Membership) -> bulwark_crypto::Digest {
    membership.scope().digest(reply)
}

/// A reply signed alone. With `client_auth = "connection"` the signature is not needed: the
/// reply counts for the replica of `link` (the connection it came on), and without one it
/// is refused.
pub fn verify_reply(
    signed: Signed<Reply>,
    link: Option<ReplicaId>,
    membership: &Membership,
) -> Result<VerifiedReply, Refusal> {
    if membership.params.client_auth == ClientAuth::Connection {
        let from = connection_sender(&signed.payload, link, membership)?;
        let digest = leaf_digest(&signed.payload, membership);
        return Ok(VerifiedReply::new(signed.payload, digest, from, ReplyProof::Connection));
    }
    let from = signed.payload.replica;
    let key = member_key(membership, MessageKind::Reply, from)?;
    let signature = signed.signature;
    let verified = check(membership, signed, key, MessageKind::Reply)?;
    let digest = verified.digest();
    Ok(VerifiedReply::new(verified.into_signed().payload, digest, from, ReplyProof::Signature(signature)))
}

/// The replies of a [`ReplyBundle`], all or none.
///
/// Signed mode: the root must be signed by the replica every reply names, for the view
/// every reply carries; its signature is checked unless `cache` holds exactly this signed
/// root; each reply must be an ordered (not read-only) reply whose leaf digest leads by its
/// path to the root. Connection mode: the replies count for the replica of `link`.
pub fn verify_reply_bundle(
    bundle: ReplyBundle,
    link: Option<ReplicaId>,
    membership: &Membership,
    cache: &mut ReplyRootCache,
) -> Result<Vec<VerifiedReply>, Refusal> {
    if bundle.replies.len() > membership.params.batch_size_max {
        return Err(bad_reply("more replies than a batch holds"));
    }
    if membership.params.client_auth == ClientAuth::Connection {
        let mut replies = Vec::with_capacity(bundle.replies.len());
        for bundled in bundle.replies {
            let from = connection_sender(&bundled.reply, link, membership)?;
            let digest = leaf_digest(&bundled.reply, membership);
            replies.push(VerifiedReply::new(bundled.reply, digest, from, ReplyProof::Connection));
        }
        return Ok(replies);
    }
    let Some(root) = bundle.root else {
        return Err(bad_reply("replies without a signed root in a cluster that signs replies"));
    };
    let header = root.payload;
    let key = member_key(membership, MessageKind::Reply, header.replica)?;
    // The paths first: they cost a few hashes, the root's signature a curve check.
    let mut leaves = Vec::with_capacity(bundle.replies.len());
    for bundled in &bundle.replies {
        let reply = &bundled.reply;
        if reply.replica != header.replica || reply.view != header.view {
            return Err(bad_reply("reply does not match the replica and view of its root"));
        }
        if reply.read_only {
            return Err(bad_reply("a read-only reply under a batch root"));
        }
        if bundled.path.len() > REPLY_PATH_MAX {
            return Err(bad_reply("Merkle path longer than allowed"));
        }
        let leaf = leaf_digest(reply, membership);
        let computed = merkle_root_from_path(&leaf, bundled.index as usize, header.leaves as usize, &bundled.path);
        if computed != Some(header.root) {
            return Err(bad_reply("Merkle path does not lead to the signed root"));
        }
        leaves.push(leaf);
    }
    let root = if cache.holds(&root) {
        Arc::new(root)
    } else {
        let verified = check(membership, root, key, MessageKind::Reply)?;
        let signed = verified.into_signed();
        cache.insert(signed.clone());
        Arc::new(signed)
    };
    Ok(bundle
        .replies
        .into_iter()
        .zip(leaves)
        .map(|(bundled, leaf)| {
            let proof = ReplyProof::Batch { root: root.clone(), index: bundled.index, path: bundled.path };
            VerifiedReply::new(bundled.reply, leaf, header.replica, proof)
        })
        .collect())
}
