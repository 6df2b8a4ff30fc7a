//! What Steward replicas send each other, inside a site (over the LAN, each message from
//! one replica) and between sites (over the WAN, carrying a site signature)
//! (docs/STEWARD.md §1).
//!
//! Inside a site a message's sender is its authenticated link (the runtime signs with the
//! replica's ed25519 key, the simulator names the sender); a message that speaks for a site
//! carries the site's threshold signature and is self-certifying (TS4).

use super::constraint::Report;
use super::global::SiteSigned;
use super::payload::{GlobalView, LocalView};
use super::sequencing::LocalVote;
use crate::batch::Batch;
use crate::ids::SeqNum;
use crate::messages::Request;
use bulwark_crypto::threshold::ThresholdScheme;
use bulwark_crypto::{Digest, Signed, Verified};
use std::sync::Arc;

/// A PROPOSAL with the batch it binds by digest (SM2).
#[derive(Debug)]
pub struct Proposal<S: ThresholdScheme> {
    pub signed: SiteSigned<S>,
    pub batch: Arc<Batch>,
}

impl<S: ThresholdScheme> Clone for Proposal<S> {
    fn clone(&self) -> Self {
        Proposal { signed: self.signed.clone(), batch: self.batch.clone() }
    }
}

/// A globally ordered batch, self-certifying: its PROPOSAL and ACCEPTs of `⌊S/2⌋` other
/// sites (W7). What a replica streams to one that is behind.
#[derive(Debug)]
pub struct OrderedProof<S: ThresholdScheme> {
    pub proposal: Proposal<S>,
    pub accepts: Vec<SiteSigned<S>>,
}

/// SITE-CHECKPOINTs of a majority of sites for one `(seq, state digest)`: a stable site
/// checkpoint (SK1).
#[derive(Debug)]
pub struct CheckpointProof<S: ThresholdScheme> {
    pub seq: SeqNum,
    pub state: Digest,
    pub checkpoints: Vec<SiteSigned<S>>,
}

impl<S: ThresholdScheme> Clone for CheckpointProof<S> {
    fn clone(&self) -> Self {
        CheckpointProof { seq: self.seq, state: self.state, checkpoints: self.checkpoints.clone() }
    }
}

/// SK1: chunk `index` of the image of a stable site checkpoint (an image of `total_bytes`),
/// with its Merkle path: checked alone against the checkpoint's signed digest
/// ([`crate::state::verify_chunk`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageChunk {
    pub total_bytes: u64,
    pub index: u64,
    pub data: Vec<u8>,
    pub path: Vec<Digest>,
}

/// GV4: a site's GLOBAL-CONSTRAINT with the PROPOSALs its union binds (their digest is the
/// payload's `union`) and the stable checkpoint below which it binds nothing.
#[derive(Debug)]
pub struct GlobalConstraint<S: ThresholdScheme> {
    pub signed: SiteSigned<S>,
    pub proposals: Vec<Proposal<S>>,
    pub checkpoint: Option<CheckpointProof<S>>,
}

impl<S: ThresholdScheme> Clone for GlobalConstraint<S> {
    fn clone(&self) -> Self {
        GlobalConstraint {
            signed: self.signed.clone(),
            proposals: self.proposals.clone(),
            checkpoint: self.checkpoint.clone(),
        }
    }
}

/// A message between Steward replicas.
#[derive(Debug, strum::IntoStaticStr)]
pub enum SiteMessage<S: ThresholdScheme> {
    /// W1: a client's update, relayed to the representative, and by a non-leader site's
    /// representative to the leader site's.
    Update(Verified<Request>),
    /// W2: the leader-site representative binds `batch` to the vote's `seq`.
    PrePrepare { vote: Signed<LocalVote>, batch: Arc<Batch> },
    /// W3: a leader-site replica accepted the PRE-PREPARE its vote names.
    Prepare(Signed<LocalVote>),
    /// TS2: the sender's share of `message` (a [`SitePayload::message`]).
    Share { message: Digest, share: S::Share },
    /// W4: the leader site's PROPOSAL, sent to every other site's representative and
    /// relayed in the site.
    Proposal(Proposal<S>),
    /// W6: a non-leader site's ACCEPT, sent to every other site's representative and
    /// relayed in the site.
    Accept(SiteSigned<S>),
    /// SK1: a site's checkpoint, sent to every other site's representative and relayed in
    /// the site.
    Checkpoint(SiteSigned<S>),
    /// LV1: a site's NEW-REP, sent in the site and to the same-position replica of every
    /// other site, which relays it in its own.
    NewRep(SiteSigned<S>),
    /// LV2 (local) or GV4 (`global`): a representative asks its site for reports above
    /// `base` in views `(gv, lv)`.
    ConstraintRequest { gv: GlobalView, lv: LocalView, base: SeqNum, global: bool },
    /// LV2: a member's report, to the representative that asked.
    Report(Arc<Report<S>>),
    /// LV3: the representative's bundle of `2f + 1` reports, to its site.
    Constraint(Arc<Vec<Report<S>>>),
    /// GV1: a site's GLOBAL-VC, sent in the site and to the same-position replica of every
    /// other site, which relays it in its own (RS1).
    GlobalVc(SiteSigned<S>),
    /// GV2: GLOBAL-VCs of a majority of sites for one global view, for a replica behind.
    GlobalVcProof(Arc<Vec<SiteSigned<S>>>),
    /// GV3: the new leader site's representative asks its site to share ARU(`gv`, `aru`).
    AruRequest { gv: GlobalView, aru: SeqNum },
    /// GV3: the leader site's ARU, sent like a GLOBAL-VC (RS1).
    Aru(SiteSigned<S>),
    /// GV4: a site's GLOBAL-CONSTRAINT, to the same-position replica of the leader site,
    /// which relays it in its site.
    GlobalConstraint(Arc<GlobalConstraint<S>>),
    /// GV5: the GLOBAL-CONSTRAINTs of a majority of sites the leader representative adopts,
    /// to its site.
    GlobalBundle(Arc<Vec<GlobalConstraint<S>>>),
    /// RC1: how far the sender executed, and its global view: a peer of its site that is
    /// further sends what it lacks. Another site's replica sends only the proof of its
    /// global view if the sender is behind it (GV2).
    Status { aru: SeqNum, gv: GlobalView },
    /// RC2: the sender's site signed that it is behind at `aru` (a
    /// [`SitePayload::Reconcile`](super::payload::SitePayload::Reconcile)); sent by each of its
    /// replicas to the same-position replica of every other site, which streams what it
    /// lacks. `gv` (not signed) is the sender's global view, for the proof of a later one.
    Reconcile { signed: SiteSigned<S>, gv: GlobalView },
    /// A globally ordered batch for a replica that is behind.
    Ordered(Arc<OrderedProof<S>>),
    /// SK1: a replica behind the stable site checkpoint `seq` asks a peer for the chunks of
    /// its image from `from` on.
    StateRequest { seq: SeqNum, from: u64 },
    /// SK1: a chunk of the image at a stable site checkpoint, with the checkpoint's proof,
    /// for a replica behind it; checked against the proof's digest before it is kept.
    StateChunk { proof: CheckpointProof<S>, chunk: Arc<ImageChunk> },
}

impl<S: ThresholdScheme> Clone for SiteMessage<S> {
    fn clone(&self) -> Self {
        match self {
            SiteMessage::Update(request) => SiteMessage::Update(request.clone()),
            SiteMessage::PrePrepare { vote, batch } => {
                SiteMessage::PrePrepare { vote: vote.clone(), batch: batch.clone() }
            }
            SiteMessage::Prepare(vote) => SiteMessage::Prepare(vote.clone()),
            SiteMessage::ConstraintRequest { gv, lv, base, global } => {
                SiteMessage::ConstraintRequest { gv: *gv, lv: *lv, base: *base, global: *global }
            }
            SiteMessage::GlobalVc(signed) => SiteMessage::GlobalVc(signed.clone()),
            SiteMessage::GlobalVcProof(proof) => SiteMessage::GlobalVcProof(proof.clone()),
            SiteMessage::AruRequest { gv, aru } => SiteMessage::AruRequest { gv: *gv, aru: *aru },
            SiteMessage::Aru(signed) => SiteMessage::Aru(signed.clone()),
            SiteMessage::GlobalConstraint(constraint) => SiteMessage::GlobalConstraint(constraint.clone()),
            SiteMessage::GlobalBundle(bundle) => SiteMessage::GlobalBundle(bundle.clone()),
            SiteMessage::Report(report) => SiteMessage::Report(report.clone()),
            SiteMessage::Constraint(reports) => SiteMessage::Constraint(reports.clone()),
            SiteMessage::Share { message, share } => SiteMessage::Share { message: *message, share: share.clone() },
            SiteMessage::Proposal(proposal) => SiteMessage::Proposal(proposal.clone()),
            SiteMessage::Accept(signed) => SiteMessage::Accept(signed.clone()),
            SiteMessage::Checkpoint(signed) => SiteMessage::Checkpoint(signed.clone()),
            SiteMessage::NewRep(signed) => SiteMessage::NewRep(signed.clone()),
            SiteMessage::Status { aru, gv } => SiteMessage::Status { aru: *aru, gv: *gv },
            SiteMessage::Reconcile { signed, gv } => SiteMessage::Reconcile { signed: signed.clone(), gv: *gv },
            SiteMessage::Ordered(proof) => SiteMessage::Ordered(proof.clone()),
            SiteMessage::StateRequest { seq, from } => SiteMessage::StateRequest { seq: *seq, from: *from },
            SiteMessage::StateChunk { proof, chunk } => {
                SiteMessage::StateChunk { proof: proof.clone(), chunk: chunk.clone() }
            }
        }
    }
}

fn constraint_bytes<S: ThresholdScheme>(constraint: &GlobalConstraint<S>, signature_bytes: usize) -> usize {
    let site_signed = HEADER_BYTES + DIGEST_BYTES + signature_bytes;
    let proposals: usize = constraint.proposals.iter().map(|p| site_signed + p.batch.encoded_bytes()).sum();
    let checkpoint = constraint.checkpoint.as_ref().map_or(0, |p| p.checkpoints.len() * site_signed);
    site_signed + proposals + checkpoint
}

/// Bytes of the fixed part of a message: framing, kind, views, sequence number, and the
/// sender's ed25519 signature (64 bytes) with its id.
const HEADER_BYTES: usize = 96;
/// A digest on the wire.
const DIGEST_BYTES: usize = 32;

impl<S: ThresholdScheme> SiteMessage<S> {
    pub fn kind(&self) -> &'static str {
        self.into()
    }

    /// The size of the message on the wire, with site signatures and shares counted at
    /// `signature_bytes` each (96 for BLS12-381 G2), whatever the scheme in use: the
    /// simulator charges the WAN for these bytes.
    pub fn wire_bytes(&self, signature_bytes: usize) -> usize {
        let site_signed = HEADER_BYTES + DIGEST_BYTES + signature_bytes;
        match self {
            SiteMessage::Update(request) => crate::batch::request_size(request),
            SiteMessage::PrePrepare { batch, .. } => HEADER_BYTES + batch.encoded_bytes(),
            SiteMessage::Prepare { .. } => HEADER_BYTES + DIGEST_BYTES,
            SiteMessage::ConstraintRequest { .. } | SiteMessage::AruRequest { .. } => HEADER_BYTES,
            SiteMessage::GlobalVc(_) | SiteMessage::Aru(_) => site_signed,
            SiteMessage::GlobalVcProof(proof) => HEADER_BYTES + proof.len() * site_signed,
            SiteMessage::GlobalConstraint(constraint) => constraint_bytes(constraint, signature_bytes),
            SiteMessage::GlobalBundle(bundle) => {
                HEADER_BYTES + bundle.iter().map(|c| constraint_bytes(c, signature_bytes)).sum::<usize>()
            }
            SiteMessage::Report(report) => report.wire_bytes(signature_bytes),
            SiteMessage::Constraint(reports) => {
                HEADER_BYTES + reports.iter().map(|r| r.wire_bytes(signature_bytes)).sum::<usize>()
            }
            SiteMessage::Share { .. } => HEADER_BYTES + DIGEST_BYTES + signature_bytes,
            SiteMessage::Proposal(proposal) => site_signed + proposal.batch.encoded_bytes(),
            SiteMessage::Accept(_) | SiteMessage::Checkpoint(_) | SiteMessage::NewRep(_) => site_signed,
            SiteMessage::Status { .. } => HEADER_BYTES,
            SiteMessage::Reconcile { .. } => site_signed,
            SiteMessage::Ordered(proof) => {
                site_signed + proof.proposal.batch.encoded_bytes() + proof.accepts.len() * site_signed
            }
            SiteMessage::StateRequest { .. } => HEADER_BYTES,
            SiteMessage::StateChunk { proof, chunk } => {
                HEADER_BYTES
                    + proof.checkpoints.len() * site_signed
                    + chunk.data.len()
                    + chunk.path.len() * DIGEST_BYTES
            }
        }
    }

    /// The site-signed PROPOSALs, ACCEPTs, checkpoints and NEW-REPs the message carries,
    /// for a checker that watches the wire (GI2, GI3).
    pub fn site_signed(&self) -> Vec<&SiteSigned<S>> {
        match self {
            SiteMessage::Proposal(proposal) => vec![&proposal.signed],
            SiteMessage::Accept(signed) | SiteMessage::Checkpoint(signed) | SiteMessage::NewRep(signed) => vec![signed],
            SiteMessage::Ordered(proof) => {
                std::iter::once(&proof.proposal.signed).chain(proof.accepts.iter()).collect()
            }
            SiteMessage::StateChunk { proof, .. } => proof.checkpoints.iter().collect(),
            _ => Vec::new(),
        }
    }
}
