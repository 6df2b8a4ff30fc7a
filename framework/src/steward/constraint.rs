//! CONSTRUCT-LOCAL-CONSTRAINT (docs/STEWARD.md LV2, LV3): how a new leader-site
//! representative learns what its predecessors bound, and how every replica checks it; and
//! the same collection in *global* mode, by which every site states what it holds above the
//! new leader site's ARU (GV4).
//!
//! The new representative of local view `lv` names a base (its `aru`) and asks every member
//! for a signed [`MemberReport`]: for each sequence number above the base, the best it holds,
//! a combined PROPOSAL or else its latest prepare certificate, each travelling beside the
//! report as [`Evidence`] that convinces on its own (the site's threshold signature; `2f + 1`
//! ed25519-signed votes). It bundles `2f + 1` reports of distinct members; every replica
//! checks each report and each piece of evidence, computes the [`union`] itself (per `seq`
//! a PROPOSAL beats a certificate, a later local view beats an earlier one) and adopts it,
//! refusing a bundle that does not check. Nothing the representative says is taken on its
//! word: the union is a function of the reports, and the reports are signed by their
//! authors, so it cannot drop what a correct member reported.
//!
//! Why the union keeps every binding that matters: a PROPOSAL combined in this global view
//! has shares of `f + 1` correct members, each holding a certificate for its batch; any
//! `2f + 1` reports include one of them, and no certificate for another batch can carry a
//! later local view (its correct voters took PRE-PREPAREs only under a union that already
//! bound this batch). Two PROPOSALs of one `(gv, seq)` never both exist (TS1), so the
//! threshold signer, not this module, is what keeps GI2; this module keeps the site live.
//!
//! In global mode a report lists PROPOSALs of any global view up to the current one (each
//! checked with the key of the site that led that view) and no certificates, with the
//! reporter's stable site checkpoint: what it no longer holds is covered by it. The union
//! keeps, per sequence number above the latest checkpoint, the PROPOSAL of the latest global
//! view. A batch globally ordered in some view was accepted by a majority of sites, so any
//! majority of sites' unions carries it, and no later view proposed anything else there
//! (GI3).

use super::messages::{CheckpointProof, Proposal};
use super::payload::{GlobalView, LocalView, SitePayload};
use super::sequencing::{LocalVote, PrepareCertificate};
use crate::batch::Batch;
use crate::ids::{ClusterId, ReplicaId, SeqNum};
use crate::membership::Membership;
use crate::signing::Scoped;
use bulwark_crypto::threshold::ThresholdScheme;
use bulwark_crypto::{Digest, KeyPair, Signable, Signed};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// What a reporter holds for one sequence number above the base.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportEntry {
    pub seq: SeqNum,
    /// The views of the PROPOSAL or certificate.
    pub gv: GlobalView,
    pub lv: LocalView,
    pub digest: Digest,
    /// A combined PROPOSAL (else a prepare certificate).
    pub proposal: bool,
}

/// A member's report to its representative: LV2 at the leader site (local mode), or GV4 at
/// any site (global mode), for the views `(gv, lv)` the representative asked in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberReport {
    pub global: bool,
    pub gv: GlobalView,
    pub lv: LocalView,
    pub base: SeqNum,
    pub replica: ReplicaId,
    /// Global mode: the reporter's stable site checkpoint (its proof travels beside).
    pub stable: SeqNum,
    /// In increasing `seq`, each above `base` and inside the window.
    pub entries: Vec<ReportEntry>,
}

impl Signable for MemberReport {
    const DOMAIN: &'static [u8] = b"bulwark/steward/member-report/v1";
}

impl Scoped for MemberReport {}

/// What a report asks for: LV2's local constraint, or GV4's global one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    Local,
    Global,
}

/// What backs one report entry.
#[derive(Debug)]
pub enum Evidence<S: ThresholdScheme> {
    Proposal(Proposal<S>),
    Certificate(PrepareCertificate),
}

impl<S: ThresholdScheme> Clone for Evidence<S> {
    fn clone(&self) -> Self {
        match self {
            Evidence::Proposal(proposal) => Evidence::Proposal(proposal.clone()),
            Evidence::Certificate(certificate) => Evidence::Certificate(certificate.clone()),
        }
    }
}

impl<S: ThresholdScheme> Evidence<S> {
    /// The entry this evidence backs, if it is well formed.
    pub fn entry(&self) -> Option<ReportEntry> {
        match self {
            Evidence::Proposal(proposal) => match proposal.signed.payload {
                SitePayload::Proposal { gv, lv, seq, updates, .. } => {
                    Some(ReportEntry { seq, gv, lv, digest: updates, proposal: true })
                }
                _ => None,
            },
            Evidence::Certificate(certificate) => {
                let vote = &certificate.votes.first()?.payload;
                Some(ReportEntry { seq: vote.seq, gv: vote.gv, lv: vote.lv, digest: vote.digest, proposal: false })
            }
        }
    }

    pub fn batch(&self) -> &Arc<Batch> {
        match self {
            Evidence::Proposal(proposal) => &proposal.batch,
            Evidence::Certificate(certificate) => &certificate.batch,
        }
    }

    /// Bytes on the wire, with site signatures counted at `signature_bytes`.
    pub fn wire_bytes(&self, signature_bytes: usize) -> usize {
        const VOTE_BYTES: usize = 64 + 8 + 8 + 8 + 32 + 4;
        match self {
            Evidence::Proposal(proposal) => signature_bytes + 64 + proposal.batch.encoded_bytes(),
            Evidence::Certificate(certificate) => {
                certificate.votes.len() * VOTE_BYTES + certificate.batch.encoded_bytes()
            }
        }
    }
}

/// A signed report with its evidence, entry by entry, and (global mode) the proof of the
/// reporter's stable checkpoint.
#[derive(Debug)]
pub struct Report<S: ThresholdScheme> {
    pub signed: Signed<MemberReport>,
    pub evidence: Vec<Evidence<S>>,
    pub checkpoint: Option<CheckpointProof<S>>,
}

impl<S: ThresholdScheme> Clone for Report<S> {
    fn clone(&self) -> Self {
        Report { signed: self.signed.clone(), evidence: self.evidence.clone(), checkpoint: self.checkpoint.clone() }
    }
}

impl<S: ThresholdScheme> Report<S> {
    /// `replica`'s local-mode report for `(gv, lv)` above `base`, signed with its `key` in
    /// its site's scope.
    pub fn new(
        membership: &Membership,
        (replica, key): (ReplicaId, &KeyPair),
        (gv, lv, base): (GlobalView, LocalView, SeqNum),
        evidence: Vec<Evidence<S>>,
    ) -> Self {
        Self::with_mode(membership, (replica, key), (Mode::Local, gv, lv, base), evidence, None)
    }

    /// A report of either mode; `checkpoint` is the reporter's stable checkpoint (global).
    pub fn with_mode(
        membership: &Membership,
        (replica, key): (ReplicaId, &KeyPair),
        (mode, gv, lv, base): (Mode, GlobalView, LocalView, SeqNum),
        evidence: Vec<Evidence<S>>,
        checkpoint: Option<CheckpointProof<S>>,
    ) -> Self {
        let entries = evidence.iter().filter_map(Evidence::entry).collect();
        let stable = checkpoint.as_ref().map_or(SeqNum(0), |proof| proof.seq);
        let report = MemberReport { global: mode == Mode::Global, gv, lv, base, replica, stable, entries };
        Report { signed: membership.scope().sign(report, key).into_signed(), evidence, checkpoint }
    }

    pub fn wire_bytes(&self, signature_bytes: usize) -> usize {
        let checkpoint = self.checkpoint.as_ref().map_or(0, |p| p.checkpoints.len() * (signature_bytes + 80));
        96 + self.signed.payload.entries.len() * 57
            + checkpoint
            + self.evidence.iter().map(|e| e.wire_bytes(signature_bytes)).sum::<usize>()
    }
}

/// What a bundle of reports binds: per sequence number the evidence chosen, and (global
/// mode) the latest stable checkpoint any report proved, below which nothing is bound.
#[derive(Debug)]
pub struct Union<S: ThresholdScheme> {
    pub entries: BTreeMap<SeqNum, Evidence<S>>,
    pub checkpoint: Option<CheckpointProof<S>>,
}

/// GV4: the digest a GLOBAL-CONSTRAINT binds: each PROPOSAL of the union, in order.
pub fn union_digest<S: ThresholdScheme>(proposals: &[Proposal<S>]) -> Digest {
    let messages: Vec<Digest> = proposals.iter().map(|p| p.signed.payload.message()).collect();
    let parts: Vec<&[u8]> = messages.iter().map(|m| &m.0[..]).collect();
    Digest::of_parts(&parts)
}

/// Why a report or a bundle was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
pub enum ConstraintRefusal {
    /// Fewer than `2f + 1` reports of distinct members.
    TooFewReports,
    /// A report for other views or another base than the bundle's.
    WrongViews,
    /// A report from a non-member, twice from one member, or whose signature does not
    /// verify.
    BadReport,
    /// An entry out of order or outside the window, or evidence that does not back its
    /// entry or does not verify.
    BadEvidence,
}

/// What a replica checks a report or a bundle against.
pub struct ConstraintContext<'a, S: ThresholdScheme> {
    pub mode: Mode,
    /// The site's members.
    pub membership: &'a Membership,
    pub site: ClusterId,
    /// Every site's key, in the order that names leader sites.
    pub site_keys: &'a BTreeMap<ClusterId, Arc<S::PublicKey>>,
    pub views: (GlobalView, LocalView),
    pub base: SeqNum,
    pub window: u64,
}

impl<S: ThresholdScheme> std::fmt::Debug for ConstraintContext<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConstraintContext({:?}, {}, {:?}, base {})", self.mode, self.site, self.views, self.base.0)
    }
}

/// Signatures checked, for a simulator that charges CPU time for them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConstraintWork {
    pub site_signatures: u64,
    pub votes: u64,
}

impl<S: ThresholdScheme> ConstraintContext<'_, S> {
    fn leader(&self, gv: GlobalView) -> Option<ClusterId> {
        self.site_keys.keys().nth((gv % self.site_keys.len().max(1) as u64) as usize).copied()
    }

    fn representative(&self, lv: LocalView) -> ReplicaId {
        let mut members: Vec<ReplicaId> = self.membership.replicas().collect();
        members.sort();
        members[(lv % members.len() as u64) as usize]
    }

    /// LV2: one report, for this context's views and base, with every piece of evidence.
    pub fn check_report(
        &self,
        report: &Report<S>,
        work: &mut ConstraintWork,
        proposals_checked: &mut BTreeSet<Digest>,
    ) -> Result<(), ConstraintRefusal> {
        let payload = &report.signed.payload;
        let global = self.mode == Mode::Global;
        if (payload.global, payload.gv, payload.lv, payload.base) != (global, self.views.0, self.views.1, self.base) {
            return Err(ConstraintRefusal::WrongViews);
        }
        let key = self.membership.public_key(payload.replica).ok_or(ConstraintRefusal::BadReport)?;
        work.votes += 1;
        self.membership.scope().verify(report.signed.clone(), key).map_err(|_| ConstraintRefusal::BadReport)?;
        match &report.checkpoint {
            None if payload.stable == SeqNum(0) => {}
            Some(proof) if global && proof.seq == payload.stable => self.check_checkpoint(proof, work)?,
            _ => return Err(ConstraintRefusal::BadEvidence),
        }
        self.check_entries((self.base, payload.stable), &payload.entries, &report.evidence, work, proposals_checked)
    }

    /// The entries of a report (or a GLOBAL-CONSTRAINT) above `base` and a stable
    /// checkpoint at `stable`: in increasing order inside the window, each backed by its
    /// evidence, each piece of evidence valid for this context's mode.
    pub fn check_entries(
        &self,
        (base, stable): (SeqNum, SeqNum),
        entries: &[ReportEntry],
        evidence: &[Evidence<S>],
        work: &mut ConstraintWork,
        proposals_checked: &mut BTreeSet<Digest>,
    ) -> Result<(), ConstraintRefusal> {
        if entries.len() != evidence.len() {
            return Err(ConstraintRefusal::BadEvidence);
        }
        let global = self.mode == Mode::Global;
        let mut previous = base;
        let last = base.max(stable).0.saturating_add(self.window);
        for (entry, evidence) in entries.iter().zip(evidence) {
            if entry.seq <= previous || entry.seq.0 > last {
                return Err(ConstraintRefusal::BadEvidence);
            }
            previous = entry.seq;
            if evidence.entry() != Some(*entry) || evidence.batch().digest() != entry.digest {
                return Err(ConstraintRefusal::BadEvidence);
            }
            match evidence {
                Evidence::Proposal(proposal) => self.check_proposal(proposal, work, proposals_checked)?,
                Evidence::Certificate(_) if global => return Err(ConstraintRefusal::BadEvidence),
                Evidence::Certificate(certificate) => self.check_certificate(certificate, work)?,
            }
        }
        Ok(())
    }

    /// SK1: SITE-CHECKPOINTs of a majority of distinct sites, each signed by its site, for
    /// one `(seq, state)`.
    pub fn check_checkpoint(
        &self,
        proof: &CheckpointProof<S>,
        work: &mut ConstraintWork,
    ) -> Result<(), ConstraintRefusal> {
        let mut sites = BTreeSet::new();
        for signed in &proof.checkpoints {
            let SitePayload::SiteCheckpoint { site, seq, state } = signed.payload else {
                return Err(ConstraintRefusal::BadEvidence);
            };
            let key = self.site_keys.get(&site).ok_or(ConstraintRefusal::BadEvidence)?;
            if seq != proof.seq || state != proof.state || !sites.insert(site) {
                return Err(ConstraintRefusal::BadEvidence);
            }
            work.site_signatures += 1;
            if !S::verify(key, &signed.signature, &signed.payload.message()) {
                return Err(ConstraintRefusal::BadEvidence);
            }
        }
        if sites.len() <= self.site_keys.len() / 2 {
            return Err(ConstraintRefusal::BadEvidence);
        }
        Ok(())
    }

    fn check_proposal(
        &self,
        proposal: &Proposal<S>,
        work: &mut ConstraintWork,
        checked: &mut BTreeSet<Digest>,
    ) -> Result<(), ConstraintRefusal> {
        let SitePayload::Proposal { site, gv, .. } = proposal.signed.payload else {
            return Err(ConstraintRefusal::BadEvidence);
        };
        let expected = match self.mode {
            Mode::Local => (site == self.site && gv == self.views.0).then_some(self.site),
            Mode::Global => self.leader(gv).filter(|leader| gv <= self.views.0 && site == *leader),
        };
        let key = expected.and_then(|site| self.site_keys.get(&site)).ok_or(ConstraintRefusal::BadEvidence)?;
        let message = proposal.signed.payload.message();
        if checked.contains(&message) {
            return Ok(());
        }
        work.site_signatures += 1;
        if !S::verify(key, &proposal.signed.signature, &message) {
            return Err(ConstraintRefusal::BadEvidence);
        }
        checked.insert(message);
        Ok(())
    }

    /// W3: a PRE-PREPARE of the representative of its local view and `2f` PREPAREs of
    /// distinct other members, all for one `(gv, lv, seq, digest)` of this global view and a
    /// local view not after this one.
    fn check_certificate(
        &self,
        certificate: &PrepareCertificate,
        work: &mut ConstraintWork,
    ) -> Result<(), ConstraintRefusal> {
        let (gv, lv, seq, digest) = certificate.binding();
        if gv != self.views.0 || lv > self.views.1 {
            return Err(ConstraintRefusal::BadEvidence);
        }
        let representative = self.representative(lv);
        if certificate.votes[0].payload.replica != representative {
            return Err(ConstraintRefusal::BadEvidence);
        }
        let mut voters = BTreeSet::new();
        let scope = self.membership.scope();
        for signed in &certificate.votes {
            let vote: &LocalVote = &signed.payload;
            if (vote.gv, vote.lv, vote.seq, vote.digest) != (gv, lv, seq, digest) || !voters.insert(vote.replica) {
                return Err(ConstraintRefusal::BadEvidence);
            }
            let key = self.membership.public_key(vote.replica).ok_or(ConstraintRefusal::BadEvidence)?;
            work.votes += 1;
            scope.verify(signed.clone(), key).map_err(|_| ConstraintRefusal::BadEvidence)?;
        }
        if voters.len() < self.membership.quorum() {
            return Err(ConstraintRefusal::BadEvidence);
        }
        Ok(())
    }

    /// LV3, GV4: checks a bundle and computes its union: for each sequence number above the
    /// base, the best evidence any report holds (a later global view beats an earlier one,
    /// then a PROPOSAL beats a certificate, then a later local view beats an earlier one;
    /// the lower digest breaks a tie so every replica picks the same). In global mode
    /// nothing at or below the latest stable checkpoint proved is bound.
    pub fn union(&self, reports: &[Report<S>], work: &mut ConstraintWork) -> Result<Union<S>, ConstraintRefusal> {
        let mut reporters = BTreeSet::new();
        let mut checked = BTreeSet::new();
        for report in reports {
            if !reporters.insert(report.signed.payload.replica) {
                return Err(ConstraintRefusal::BadReport);
            }
            self.check_report(report, work, &mut checked)?;
        }
        if reporters.len() < self.membership.quorum() {
            return Err(ConstraintRefusal::TooFewReports);
        }
        let rank = |e: &ReportEntry| (e.gv, e.proposal, e.lv, std::cmp::Reverse(e.digest));
        let mut union: BTreeMap<SeqNum, (ReportEntry, &Evidence<S>)> = BTreeMap::new();
        for report in reports {
            for (entry, evidence) in report.signed.payload.entries.iter().zip(&report.evidence) {
                match union.get(&entry.seq) {
                    Some((best, _)) if rank(best) >= rank(entry) => {}
                    _ => {
                        union.insert(entry.seq, (*entry, evidence));
                    }
                }
            }
        }
        let checkpoint = reports.iter().filter_map(|r| r.checkpoint.as_ref()).max_by_key(|p| p.seq).cloned();
        let stable = checkpoint.as_ref().map_or(SeqNum(0), |p| p.seq);
        let entries = union
            .into_iter()
            .filter(|(seq, _)| *seq > stable)
            .map(|(seq, (_, evidence))| (seq, evidence.clone()))
            .collect();
        Ok(Union { entries, checkpoint })
    }
}
