//! What a replica of a site must never forget across a crash, and how it comes back
//! (docs/STEWARD.md TS1, W3, LV2, GV4 and GI5 across restarts).
//!
//! A replica asks its runtime to persist a [`SiteRecord`] with [`SiteOutput::Persist`]
//! **before** the outputs that follow it in the same list, as a PBFT replica does (see
//! `crate::durable`). Folded into a [`SiteDurable`], the records hold:
//! * every payload it shared (TS1): after a restart it never shares a second value in one
//!   slot, so no site signature binds two values with its share and `f` faulty ones;
//! * every local vote it signed, with its batch when it pre-prepared as representative
//!   (W2, W3): it never prepares a second batch at one `(gv, lv, seq)`;
//! * its prepare certificates and the PROPOSALs it took: the LV2 and GV4 reports a new
//!   representative or leader site builds on must show what this replica's shares rest on;
//! * its own site's NEW-REP and the proof of the global view it preinstalled: it never goes
//!   back to a view it left;
//! * the local constraint bundle it adopted (LV3) and, at the leader site of a later global
//!   view, the GLOBAL-CONSTRAINTs it adopted (GV5): it comes back constrained as it was,
//!   rather than a representative gathering a second, possibly different, union for one
//!   local view;
//! * each ordered batch before it executes, and its latest stable site checkpoint with its
//!   image: after a restart its `aru` is at least what it was (GI5).
//!
//! Records are kept in maps that drop what a later record settles (everything at or below
//! an executed batch or the stable checkpoint, views left), so they stay bounded like the
//! replica's own logs.
//!
//! Recovery restores state before views: the stable checkpoint, the shares and votes, the
//! certificates and PROPOSALs, the ordered batches, then the global and local views (so a
//! representative that gathers reports again reports all it holds, and a share a view asks
//! for meets the slots already bound), then the constraints it had adopted. What recovery
//! itself persists (a share a view asked for anew) is handed out by
//! [`start`](SiteReplica::start) before anything else; nothing else it produces is sent.

use super::{SiteOutput, SiteReplica};
use crate::batch::Batch;
use crate::config::ConfigError;
use crate::ids::SeqNum;
use crate::service::Service;
use crate::steward::constraint::Report;
use crate::steward::global::SiteSigned;
use crate::steward::messages::{CheckpointProof, GlobalConstraint, OrderedProof, Proposal};
use crate::steward::payload::{GlobalView, LocalView, SitePayload, Slot};
use crate::steward::sequencing::{LocalVote, PrepareCertificate};
use bulwark_crypto::threshold::ThresholdScheme;
use bulwark_crypto::Verified;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// One thing a replica of a site must not forget.
pub enum SiteRecord<S: ThresholdScheme> {
    /// TS1: this replica shared `payload`.
    Shared(SitePayload),
    /// W2, W3: this replica signed a local vote: its PRE-PREPARE as representative, with
    /// the batch, or its PREPARE.
    Voted { vote: Verified<LocalVote>, batch: Option<Arc<Batch>> },
    /// W3: a prepare certificate it holds (LV2 reports show it).
    Certified(PrepareCertificate),
    /// W5: a PROPOSAL it took; the ACCEPTs and GLOBAL-CONSTRAINTs it shares rest on it.
    Proposal(Proposal<S>),
    /// LV1: its own site's NEW-REP, preinstalled.
    LocalView(SiteSigned<S>),
    /// GV2: the GLOBAL-VCs of a majority of sites for the global view it preinstalled.
    GlobalView(Arc<Vec<SiteSigned<S>>>),
    /// LV3: the bundle of reports whose union it adopted in views `(gv, lv)`.
    LocalConstraint { gv: GlobalView, lv: LocalView, bundle: Arc<Vec<Report<S>>> },
    /// GV5: the GLOBAL-CONSTRAINTs whose union it adopted in views `(gv, lv)`, with the
    /// leader site's ARU they answer.
    GlobalConstraints { gv: GlobalView, lv: LocalView, aru: SiteSigned<S>, bundle: Arc<Vec<GlobalConstraint<S>>> },
    /// W7: a globally ordered batch, before it executes.
    Ordered(Arc<OrderedProof<S>>),
    /// SK1: a stable site checkpoint with this replica's image of its state.
    Stable { proof: CheckpointProof<S>, image: Arc<Vec<u8>> },
}

impl<S: ThresholdScheme> Clone for SiteRecord<S> {
    fn clone(&self) -> Self {
        match self {
            SiteRecord::Shared(payload) => SiteRecord::Shared(*payload),
            SiteRecord::Voted { vote, batch } => SiteRecord::Voted { vote: vote.clone(), batch: batch.clone() },
            SiteRecord::Certified(certificate) => SiteRecord::Certified(certificate.clone()),
            SiteRecord::Proposal(proposal) => SiteRecord::Proposal(proposal.clone()),
            SiteRecord::LocalView(signed) => SiteRecord::LocalView(signed.clone()),
            SiteRecord::GlobalView(proof) => SiteRecord::GlobalView(proof.clone()),
            SiteRecord::LocalConstraint { gv, lv, bundle } => {
                SiteRecord::LocalConstraint { gv: *gv, lv: *lv, bundle: bundle.clone() }
            }
            SiteRecord::GlobalConstraints { gv, lv, aru, bundle } => {
                SiteRecord::GlobalConstraints { gv: *gv, lv: *lv, aru: aru.clone(), bundle: bundle.clone() }
            }
            SiteRecord::Ordered(proof) => SiteRecord::Ordered(proof.clone()),
            SiteRecord::Stable { proof, image } => SiteRecord::Stable { proof: proof.clone(), image: image.clone() },
        }
    }
}

impl<S: ThresholdScheme> fmt::Debug for SiteRecord<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SiteRecord::Shared(payload) => write!(f, "Shared({payload:?})"),
            SiteRecord::Voted { vote, batch } => write!(f, "Voted({:?}, batch {})", **vote, batch.is_some()),
            SiteRecord::Certified(certificate) => write!(f, "Certified({:?})", certificate.binding()),
            SiteRecord::Proposal(proposal) => write!(f, "Proposal({:?})", proposal.signed.payload),
            SiteRecord::LocalView(signed) => write!(f, "LocalView({:?})", signed.payload),
            SiteRecord::GlobalView(proof) => write!(f, "GlobalView({:?})", proof.first().map(|s| s.payload)),
            SiteRecord::LocalConstraint { gv, lv, bundle } => {
                write!(f, "LocalConstraint(gv {gv}, lv {lv}, {} reports)", bundle.len())
            }
            SiteRecord::GlobalConstraints { gv, lv, bundle, .. } => {
                write!(f, "GlobalConstraints(gv {gv}, lv {lv}, {} sites)", bundle.len())
            }
            SiteRecord::Ordered(proof) => write!(f, "Ordered({:?})", proof.proposal.signed.payload),
            SiteRecord::Stable { proof, .. } => write!(f, "Stable({})", proof.seq),
        }
    }
}

/// A local vote this replica signed, with the batch when it was its PRE-PREPARE.
type OwnVote = (Verified<LocalVote>, Option<Arc<Batch>>);

/// A local constraint adopted: its views and bundle.
type AdoptedLocal<S> = ((GlobalView, LocalView), Arc<Vec<Report<S>>>);
/// GLOBAL-CONSTRAINTs adopted: the views, the ARU they answer, the bundle.
type AdoptedGlobal<S> = ((GlobalView, LocalView), SiteSigned<S>, Arc<Vec<GlobalConstraint<S>>>);

/// A replica's records folded into what it recovers from.
pub struct SiteDurable<S: ThresholdScheme> {
    shared: BTreeMap<Slot, SitePayload>,
    votes: BTreeMap<(GlobalView, LocalView, SeqNum), OwnVote>,
    certificates: BTreeMap<SeqNum, PrepareCertificate>,
    proposals: BTreeMap<SeqNum, Proposal<S>>,
    local_view: Option<SiteSigned<S>>,
    global_view: Option<Arc<Vec<SiteSigned<S>>>>,
    local_constraint: Option<AdoptedLocal<S>>,
    global_constraints: Option<AdoptedGlobal<S>>,
    ordered: BTreeMap<SeqNum, Arc<OrderedProof<S>>>,
    stable: Option<(CheckpointProof<S>, Arc<Vec<u8>>)>,
}

impl<S: ThresholdScheme> Default for SiteDurable<S> {
    fn default() -> Self {
        SiteDurable {
            shared: BTreeMap::new(),
            votes: BTreeMap::new(),
            certificates: BTreeMap::new(),
            proposals: BTreeMap::new(),
            local_view: None,
            global_view: None,
            local_constraint: None,
            global_constraints: None,
            ordered: BTreeMap::new(),
            stable: None,
        }
    }
}

impl<S: ThresholdScheme> fmt::Debug for SiteDurable<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SiteDurable")
            .field("views", &self.views())
            .field("stable", &self.stable_seq())
            .field("held", &self.held())
            .finish()
    }
}

impl<S: ThresholdScheme> SiteDurable<S> {
    /// Folds one record in; records must be applied in the order they were persisted.
    pub fn apply(&mut self, record: SiteRecord<S>) {
        match record {
            SiteRecord::Shared(payload) => {
                let (slot, _) = payload.binding();
                let (gv, lv) = self.views();
                let settled = payload.seq().is_some_and(|seq| seq < self.stable_seq());
                if slot.outlives(lv, gv) && !settled {
                    self.shared.insert(slot, payload);
                }
            }
            SiteRecord::Voted { vote, batch } => {
                if vote.seq > self.executed() && (vote.gv, vote.lv) >= self.views() {
                    self.votes.insert((vote.gv, vote.lv, vote.seq), (vote, batch));
                }
            }
            SiteRecord::Certified(certificate) => {
                let (_, _, seq, _) = certificate.binding();
                if seq > self.executed() {
                    self.certificates.insert(seq, certificate);
                }
            }
            SiteRecord::Proposal(proposal) => {
                let Some(seq) = proposal.signed.payload.seq() else { return };
                let later = |held: &Proposal<S>| proposal_view(held) <= proposal_view(&proposal);
                if seq > self.executed() && self.proposals.get(&seq).is_none_or(later) {
                    self.proposals.insert(seq, proposal);
                }
            }
            SiteRecord::LocalView(signed) => {
                if let SitePayload::NewRep { lv, .. } = signed.payload {
                    if lv > self.views().1 {
                        self.local_view = Some(signed);
                        self.forget_views();
                    }
                }
            }
            SiteRecord::GlobalView(proof) => {
                let gv = proof_view(&proof);
                if gv > self.views().0 {
                    self.global_view = Some(proof);
                    self.forget_views();
                }
            }
            SiteRecord::LocalConstraint { gv, lv, bundle } => {
                if (gv, lv) >= self.views() {
                    self.local_constraint = Some(((gv, lv), bundle));
                }
            }
            SiteRecord::GlobalConstraints { gv, lv, aru, bundle } => {
                if gv >= self.views().0 {
                    self.global_constraints = Some(((gv, lv), aru, bundle));
                }
            }
            SiteRecord::Ordered(proof) => {
                let Some(seq) = proof.proposal.signed.payload.seq() else { return };
                if seq > self.executed() {
                    self.ordered.insert(seq, proof);
                    self.votes.retain(|(_, _, s), _| *s > seq);
                    self.certificates = self.certificates.split_off(&seq.next());
                    self.proposals = self.proposals.split_off(&seq.next());
                }
            }
            SiteRecord::Stable { proof, image } => {
                if proof.seq <= self.stable_seq() {
                    return;
                }
                let seq = proof.seq;
                self.stable = Some((proof, image));
                self.ordered = self.ordered.split_off(&seq.next());
                self.shared.retain(|_, payload| payload.seq().is_none_or(|s| s >= seq));
                self.votes.retain(|(_, _, s), _| *s > seq);
                self.certificates = self.certificates.split_off(&seq.next());
                self.proposals = self.proposals.split_off(&seq.next());
            }
        }
    }

    /// The views preinstalled: `(gv, lv)`.
    pub fn views(&self) -> (GlobalView, LocalView) {
        let lv = match self.local_view.as_ref().map(|signed| signed.payload) {
            Some(SitePayload::NewRep { lv, .. }) => lv,
            _ => 0,
        };
        (self.global_view.as_ref().map_or(0, |proof| proof_view(proof)), lv)
    }

    pub fn stable_seq(&self) -> SeqNum {
        self.stable.as_ref().map_or(SeqNum(0), |(proof, _)| proof.seq)
    }

    /// The last batch recorded as ordered (or the stable checkpoint).
    pub fn executed(&self) -> SeqNum {
        self.ordered.keys().next_back().copied().unwrap_or(SeqNum(0)).max(self.stable_seq())
    }

    /// Entries held, for footprint checks.
    pub fn held(&self) -> usize {
        self.shared.len() + self.votes.len() + self.certificates.len() + self.proposals.len() + self.ordered.len()
    }

    fn forget_views(&mut self) {
        let (gv, lv) = self.views();
        self.shared.retain(|slot, _| slot.outlives(lv, gv));
        self.votes.retain(|(g, l, _), _| (*g, *l) >= (gv, lv));
        self.local_constraint = self.local_constraint.take().filter(|(views, _)| *views >= (gv, lv));
        self.global_constraints = self.global_constraints.take().filter(|((g, _), _, _)| *g >= gv);
    }
}

fn proposal_view<S: ThresholdScheme>(proposal: &Proposal<S>) -> (GlobalView, LocalView) {
    match proposal.signed.payload {
        SitePayload::Proposal { gv, lv, .. } => (gv, lv),
        _ => (0, 0),
    }
}

fn proof_view<S: ThresholdScheme>(proof: &[SiteSigned<S>]) -> GlobalView {
    match proof.first().map(|signed| signed.payload) {
        Some(SitePayload::GlobalVc { gv, .. }) => gv,
        _ => 0,
    }
}

impl<Svc: Service, S: ThresholdScheme> SiteReplica<Svc, S> {
    /// A replica that crashed, from its setup and what it persisted: it comes back in the
    /// views it left, bound by every share and vote it made, with the state of its stable
    /// checkpoint and every batch ordered after it executed again. What recovery produces
    /// (shares, messages, timers) is not sent: [`start`](Self::start) arms its timers, and
    /// what a peer lacks is sent again as after any loss.
    pub fn recover(setup: super::SiteSetup<S>, service: Svc, durable: &SiteDurable<S>) -> Result<Self, ConfigError> {
        let mut replica = Self::new(setup, service)?;
        let mut unsent = Vec::new();
        if let Some((proof, image)) = &durable.stable {
            replica.restore_stable(proof.clone(), image, &mut unsent);
        }
        for payload in durable.shared.values() {
            replica.sign(*payload, &mut unsent);
        }
        for (vote, batch) in durable.votes.values() {
            replica.local.restore_vote(vote.clone(), batch.clone());
        }
        for certificate in durable.certificates.values() {
            replica.local.restore_certificate(certificate.clone());
        }
        for proposal in durable.proposals.values() {
            replica.restore_proposal(proposal.clone());
        }
        for proof in durable.ordered.values() {
            replica.on_ordered(proof.clone(), &mut unsent);
        }
        if let Some(proof) = &durable.global_view {
            replica.on_global_vc_proof(proof.clone(), &mut unsent);
        }
        if let Some(signed) = &durable.local_view {
            replica.preinstall(signed.clone(), false, &mut unsent);
        }
        if let Some(((gv, lv), aru, bundle)) = &durable.global_constraints {
            if *gv == replica.global_view() {
                replica.readopt_global(*lv, aru.clone(), bundle.clone(), &mut unsent);
            }
        }
        if let Some((views, bundle)) = &durable.local_constraint {
            if *views == replica.views() {
                replica.readopt_local(bundle.clone(), &mut unsent);
            }
        }
        // PROPOSALs of the view it is in go through global ordering again, now that the
        // views and bindings are back.
        let gv = replica.global_view();
        let current: Vec<Proposal<S>> =
            replica.proposals.values().filter(|p| proposal_view(p).0 == gv).cloned().collect();
        for proposal in current {
            let outputs = replica.order.on_proposal(&proposal.signed);
            replica.global_outputs(outputs, &mut unsent);
        }
        replica.status_timer_set = false;
        replica.persisted_stable = durable.stable_seq();
        replica.recovered = unsent
            .into_iter()
            .filter_map(|output| match output {
                SiteOutput::Persist(record) => Some(record),
                _ => None,
            })
            .collect();
        tracing::info!(site = %replica.site, replica = %replica.id, aru = replica.aru().0, "recovered");
        Ok(replica)
    }

    /// SK1: once the logs below a stable checkpoint are dropped, its image replaces them
    /// among the records (nothing sent depends on it, so it may follow the sends).
    pub(super) fn persist_stable(&mut self, out: &mut Vec<SiteOutput<S>>) {
        if self.checkpoints.collected() <= self.persisted_stable {
            return;
        }
        if let Some((proof, image)) = self.stable_state() {
            self.persisted_stable = proof.seq;
            out.push(SiteOutput::Persist(SiteRecord::Stable { proof, image }));
        }
    }

    /// A PROPOSAL this replica took before it crashed: held again, for the reports of LV2
    /// and GV4 and the ACCEPT its share already bound; global ordering takes it again when
    /// it comes again (its peers and the other sites send it while this site is behind).
    fn restore_proposal(&mut self, proposal: Proposal<S>) {
        let Some(seq) = proposal.signed.payload.seq() else { return };
        if seq > self.aru() {
            self.batches.insert(proposal.batch.digest(), proposal.batch.clone());
            self.proposals.insert(seq, proposal);
        }
    }
}
