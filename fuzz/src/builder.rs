//! Turns steps into signed messages, recording what it makes in the pool; and the
//! helpers that damage or bundle messages (byte edits, forged signatures, reply bundles).

use crate::cluster::{client_key, params, sign, SCOPE};
use crate::image::image_bytes;
use crate::pool::{checkpoint_seq, members_or_all, pick, push_bounded, HeldImage, Pool};
use crate::steps::{
    BatchChoice, CertSpec, CertifyImageSpec, DigestChoice, NvSpec, PrePrepareSpec, ReqSpec, Step, VcBody, Who,
};
use crate::N;
use bulwark_crypto::merkle::MerkleTree;
use bulwark_crypto::{Digest, Signature, Signed, Verified};
use bulwark_framework::messages::{
    Batch, BatchReply, BatchRequest, BundledReply, Checkpoint, Commit, Inquiry, Message, NewView, PrePrepare, Prepare,
    PreparedCertificate, Reply, ReplyBundle, ReplyRoot, Report, Request, SlotProgress, StateReply, StateRequest,
    Status, ViewChange, WireBatch,
};
use bulwark_framework::roles::view_change::compute_order;
use bulwark_framework::state::ChunkedImage;
use bulwark_framework::verify::verify_view_change;
use bulwark_framework::{wire, ClientId, Membership, ReplicaId, SeqNum, Timestamp, View};
use std::collections::BTreeSet;

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
    fn batch(&mut self, choice: &BatchChoice) -> (Digest, WireBatch) {
        match choice {
            BatchChoice::Null => (Batch::null().digest(), WireBatch::default()),
            BatchChoice::Pool(index) => match pick(&self.pool.batches, *index) {
                Some((digest, requests)) => (*digest, requests.clone()),
                None => (Batch::null().digest(), WireBatch::default()),
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
                            diverged_at: None,
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
