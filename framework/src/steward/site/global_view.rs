//! Electing a new leader site (docs/STEWARD.md GV1–GV6, RS1; TM1, TM3).
//!
//! Every replica runs `Global_T` ([`Timeouts::global_us`]), restarted when it
//! executes a new batch (TM1). When it expires the replica votes for global view `gv + 1` by
//! sharing GLOBAL-VC(site, gv + 1), and votes again only once a view it voted for is
//! preinstalled (GV1). A site's combined GLOBAL-VC is sent by every replica that combined it
//! to its site and to the replica of the same position in every other site, which relays it
//! in its own (RS1): a faulty representative cannot hide it. GLOBAL-VCs of a majority of
//! sites preinstall the view (GV2); a replica behind gets that proof with its status.
//!
//! The new leader site's representative names an `aru` (its own), and a member shares
//! ARU(site, gv, lv, aru) only if it executed that far (GV3): `2f + 1` shares mean `f + 1`
//! correct replicas did, so everything up to it is globally ordered. The ARU travels like a
//! GLOBAL-VC. At every site (the leader site included) the representative then gathers
//! signed reports in global mode ([`crate::steward::constraint`]), and the members sign the
//! union as the site's GLOBAL-CONSTRAINT, which every replica that combined it sends to its
//! same-position replica of the leader site (GV4). With GLOBAL-CONSTRAINTs of a majority of
//! sites for its ARU, the leader representative sends them to its site as a bundle; every
//! replica checks the bundle, adopts its union (per sequence number above the ARU and the
//! latest stable checkpoint, the PROPOSAL of the latest view) and is globally and locally
//! constrained again; the representative proposes again what the union binds (GV5). A
//! replica takes PRE-PREPAREs only while constrained (GV6).
//!
//! **[Bulwark]** A bundle convinces on its own, so a replica that adopts one sends it to its
//! site once: a representative that fails after sending it to some members does not leave
//! the others unconstrained.
//!
//! [`Timeouts::global_us`]: crate::steward::timers::Timeouts::global_us

use super::{SiteOutput, SiteRecord, SiteRefusal, SiteReplica, SiteTimer};
use crate::batch::Batch;
use crate::ids::{ClusterId, Instant, PeerId, SeqNum};
use crate::service::Service;
use crate::steward::constraint::{union_digest, ConstraintRefusal, ConstraintWork, Evidence, Mode, Union};
use crate::steward::global::SiteSigned;
use crate::steward::messages::{CheckpointProof, GlobalConstraint, Proposal, SiteMessage};
use crate::steward::payload::{GlobalView, LocalView, SitePayload};
use bulwark_crypto::threshold::ThresholdScheme;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

type PendingConstraint<S> = (SitePayload, Vec<Proposal<S>>, Option<CheckpointProof<S>>);

/// The global-view state of one replica.
#[derive(Debug)]
pub(super) struct GlobalViews<S: ThresholdScheme> {
    /// The global view this replica voted for last (at least the preinstalled one).
    voted: GlobalView,
    timer_armed: bool,
    /// GLOBAL-VCs of views above the current one, by view and site.
    votes: BTreeMap<GlobalView, BTreeMap<ClusterId, SiteSigned<S>>>,
    /// The GLOBAL-VCs that preinstalled the current view (none for view 0).
    proof: Option<Arc<Vec<SiteSigned<S>>>>,
    /// GV6: the view this replica is globally constrained in.
    constrained: Option<GlobalView>,
    /// The leader site's latest ARU of the current view.
    aru: Option<SiteSigned<S>>,
    /// This site's GLOBAL-CONSTRAINT for that ARU while it combines: the payload, its
    /// PROPOSALs and checkpoint; then signed (sent again while the system is stuck).
    pending: Option<PendingConstraint<S>>,
    signed: Option<Arc<GlobalConstraint<S>>>,
    /// Leader site: GLOBAL-CONSTRAINTs received for the current ARU, by site.
    constraints: BTreeMap<ClusterId, Arc<GlobalConstraint<S>>>,
    /// Leader site: the union adopted (GV5), kept under later local views.
    bound: BTreeMap<SeqNum, Proposal<S>>,
    /// Global views preinstalled so far.
    pub(super) changes: u64,
    /// Negative control only: GV5 with GLOBAL-CONSTRAINTs of this many sites, not a
    /// majority.
    #[cfg_attr(not(feature = "negative-controls"), allow(dead_code))]
    constraints_needed: Option<usize>,
}

impl<S: ThresholdScheme> Default for GlobalViews<S> {
    fn default() -> Self {
        GlobalViews {
            voted: 0,
            timer_armed: false,
            votes: BTreeMap::new(),
            proof: None,
            constrained: Some(0),
            aru: None,
            pending: None,
            signed: None,
            constraints: BTreeMap::new(),
            bound: BTreeMap::new(),
            changes: 0,
            constraints_needed: None,
        }
    }
}

impl<S: ThresholdScheme> GlobalViews<S> {
    /// TM1: the replica executed a new batch: `Global_T` starts over.
    pub(super) fn progressed(&mut self) {
        self.timer_armed = false;
    }
}

impl<Svc: Service, S: ThresholdScheme> SiteReplica<Svc, S> {
    /// Negative control for tests only: GV5 with the GLOBAL-CONSTRAINT of one site (its
    /// own, at the leader site) instead of a majority's. A replica built this way is not
    /// safe: tests use it to show that the checker catches a batch ordered in an earlier
    /// view being replaced (GI3).
    #[cfg(feature = "negative-controls")]
    pub fn accept_minority_global_constraints_for_negative_control(&mut self) {
        self.global.constraints_needed = Some(1);
    }

    /// GV5: GLOBAL-CONSTRAINTs of a majority of sites.
    fn global_constraints_needed(&self) -> usize {
        self.global.constraints_needed.unwrap_or(self.sites.len() / 2 + 1)
    }

    /// GV6: whether this replica may sequence in the current global view.
    pub(super) fn globally_constrained(&self) -> bool {
        self.global.constrained == Some(self.global_view())
    }

    /// GV5: the global union's bindings above `base`, as evidence for a local constraint.
    pub(super) fn global_bindings(&self, base: SeqNum) -> BTreeMap<SeqNum, Evidence<S>> {
        self.global.bound.range(base.next()..).map(|(seq, p)| (*seq, Evidence::Proposal(p.clone()))).collect()
    }

    /// Arms `Global_T` if it is not running.
    pub(super) fn keep_global_timer(&mut self, out: &mut Vec<SiteOutput<S>>) {
        if self.global.timer_armed {
            return;
        }
        self.global.timer_armed = true;
        let timeout_us = self.timeouts.global_us(self.global_view());
        out.push(SiteOutput::SetTimer { timer: SiteTimer::Global, at: Instant(self.now.0 + timeout_us) });
    }

    /// GV1: `Global_T` expired.
    pub(super) fn on_global_timer(&mut self, out: &mut Vec<SiteOutput<S>>) {
        self.global.timer_armed = false;
        let gv = self.global_view();
        if self.global.voted > gv {
            return;
        }
        self.global.voted = gv + 1;
        tracing::info!(site = %self.site, replica = %self.id, gv = gv + 1, "global timeout: voting for a new leader site");
        self.sign(SitePayload::GlobalVc { site: self.site, gv: gv + 1 }, out);
    }

    /// RS1: to this site and to the replica of the same position in every other site.
    fn send_reliably(&self, message: SiteMessage<S>, out: &mut Vec<SiteOutput<S>>) {
        out.push(SiteOutput::ToSite(message.clone()));
        self.to_same_positions(message, out);
    }

    /// RS1: to the replica of the same position as this one in every other site, which
    /// relays it in its own.
    pub(super) fn to_same_positions(&self, message: SiteMessage<S>, out: &mut Vec<SiteOutput<S>>) {
        let position = self.sites[&self.site].members.binary_search(&self.id).unwrap_or(0);
        for (other, info) in self.sites.iter().filter(|(other, _)| **other != self.site) {
            if let Some(peer) = info.members.get(position) {
                out.push(SiteOutput::To { peer: PeerId::new(*other, *peer), message: message.clone() });
            }
        }
    }

    /// The replica of the same position as this one at `site`.
    fn same_position(&self, site: ClusterId) -> Option<PeerId> {
        let position = self.sites[&self.site].members.binary_search(&self.id).ok()?;
        self.sites.get(&site)?.members.get(position).map(|peer| PeerId::new(site, *peer))
    }

    /// GV1, GV2: a GLOBAL-VC this replica combined (`from` is None) or received.
    pub(super) fn on_global_vc(&mut self, from: Option<PeerId>, signed: SiteSigned<S>, out: &mut Vec<SiteOutput<S>>) {
        let SitePayload::GlobalVc { site, gv } = signed.payload else {
            return out.push(SiteOutput::Refused(SiteRefusal::BadGlobalView));
        };
        let current = self.global_view();
        let horizon = current + self.sites.len() as u64;
        if gv <= current || gv > horizon || self.global.votes.get(&gv).is_some_and(|v| v.contains_key(&site)) {
            return;
        }
        if from.is_some() && self.site_signature_holds(&signed) != Some(true) {
            return out.push(SiteOutput::Refused(SiteRefusal::BadGlobalView));
        }
        match from {
            None => self.send_reliably(SiteMessage::GlobalVc(signed.clone()), out),
            Some(from) if from.cluster != self.site => {
                out.push(SiteOutput::ToSite(SiteMessage::GlobalVc(signed.clone())))
            }
            Some(_) => {}
        }
        let votes = self.global.votes.entry(gv).or_default();
        votes.insert(site, signed);
        if votes.len() > self.sites.len() / 2 {
            let proof = Arc::new(votes.values().cloned().collect());
            self.preinstall_global(gv, proof, out);
        }
    }

    /// GV2: GLOBAL-VCs of a majority of sites for one view, for a replica that is behind.
    pub(super) fn on_global_vc_proof(&mut self, proof: Arc<Vec<SiteSigned<S>>>, out: &mut Vec<SiteOutput<S>>) {
        let Some(gv) = proof.first().and_then(|s| match s.payload {
            SitePayload::GlobalVc { gv, .. } => Some(gv),
            _ => None,
        }) else {
            return out.push(SiteOutput::Refused(SiteRefusal::BadGlobalView));
        };
        if gv <= self.global_view() {
            return;
        }
        let mut sites = BTreeSet::new();
        for signed in proof.iter() {
            let valid =
                matches!(signed.payload, SitePayload::GlobalVc { site, gv: g } if g == gv && sites.insert(site));
            if !valid || self.site_signature_holds(signed) != Some(true) {
                return out.push(SiteOutput::Refused(SiteRefusal::BadGlobalView));
            }
        }
        if sites.len() <= self.sites.len() / 2 {
            return out.push(SiteOutput::Refused(SiteRefusal::BadGlobalView));
        }
        self.preinstall_global(gv, proof, out);
    }

    /// The proof of the current global view, for a peer that reported an earlier one.
    pub(super) fn global_vc_proof(&self) -> Option<Arc<Vec<SiteSigned<S>>>> {
        self.global.proof.clone()
    }

    /// GV2: global view `gv` is preinstalled.
    fn preinstall_global(&mut self, gv: GlobalView, proof: Arc<Vec<SiteSigned<S>>>, out: &mut Vec<SiteOutput<S>>) {
        out.push(SiteOutput::Persist(SiteRecord::GlobalView(proof.clone())));
        self.order.preinstall(gv);
        self.global.votes = self.global.votes.split_off(&(gv + 1));
        self.global.proof = Some(proof);
        self.global.changes += 1;
        self.global.voted = self.global.voted.max(gv);
        self.global.timer_armed = false;
        self.global.constrained = None;
        self.global.aru = None;
        self.global.pending = None;
        self.global.signed = None;
        self.global.constraints.clear();
        self.global.bound.clear();
        self.local.unconstrain();
        self.constraint.clear();
        self.forget_old_views();
        tracing::info!(site = %self.site, replica = %self.id, gv, leader = %self.leader_site(), "global view preinstalled");
        // Updates waiting for the old leader site go to the new one.
        self.relay.forget_forwarded();
        let held = self.relay.take_pending();
        for request in self.relay.handed_updates().into_iter().chain(held) {
            self.route_update(request, out);
        }
        if self.at_leader_site() && self.is_representative() {
            self.ask_aru(out);
        }
    }

    /// GV3, as the leader site's representative: asks its site to share ARU at its `aru`.
    fn ask_aru(&mut self, out: &mut Vec<SiteOutput<S>>) {
        let (gv, aru) = (self.global_view(), self.aru());
        out.push(SiteOutput::ToSite(SiteMessage::AruRequest { gv, aru }));
        self.on_aru_request((gv, aru), out);
    }

    /// GV3: the representative asks to share ARU(`gv`, `aru`): shared only by a replica
    /// that executed that far, in the views of the request.
    pub(super) fn on_aru_request(&mut self, (gv, aru): (GlobalView, SeqNum), out: &mut Vec<SiteOutput<S>>) {
        if gv != self.global_view() || !self.at_leader_site() || aru > self.aru() || self.globally_constrained() {
            return;
        }
        let lv = self.local_view();
        self.sign(SitePayload::Aru { site: self.site, gv, lv, aru }, out);
    }

    /// GV3: an ARU this replica combined (`from` is None) or received. A later local view's
    /// ARU replaces an earlier one; every site's representative gathers its constraint.
    pub(super) fn on_aru(&mut self, from: Option<PeerId>, signed: SiteSigned<S>, out: &mut Vec<SiteOutput<S>>) {
        let SitePayload::Aru { site, gv, lv, aru } = signed.payload else {
            return out.push(SiteOutput::Refused(SiteRefusal::BadGlobalView));
        };
        if gv != self.global_view() || site != self.leader_site() {
            return;
        }
        let newer = self
            .global
            .aru
            .as_ref()
            .is_none_or(|held| matches!(held.payload, SitePayload::Aru { lv: l, .. } if l < lv));
        if !newer {
            return;
        }
        if from.is_some() && self.site_signature_holds(&signed) != Some(true) {
            return out.push(SiteOutput::Refused(SiteRefusal::BadGlobalView));
        }
        match from {
            None => self.send_reliably(SiteMessage::Aru(signed.clone()), out),
            Some(from) if from.cluster != self.site => out.push(SiteOutput::ToSite(SiteMessage::Aru(signed.clone()))),
            Some(_) => {}
        }
        self.global.aru = Some(signed);
        self.global
            .constraints
            .retain(|_, c| matches!(c.signed.payload, SitePayload::GlobalConstraint { aru: a, .. } if a == aru));
        match &self.global.signed {
            Some(mine) if matches!(mine.signed.payload, SitePayload::GlobalConstraint { aru: a, .. } if a == aru) => {
                let mine = mine.clone();
                self.send_global_constraint(mine, out);
            }
            _ => {
                if self.is_representative() {
                    self.gather(Mode::Global, aru, out);
                }
            }
        }
    }

    /// Whether a global bundle above `base` is what this site should sign now.
    pub(super) fn wants_global_constraint(&self, base: SeqNum) -> bool {
        matches!(&self.global.aru, Some(signed) if matches!(signed.payload, SitePayload::Aru { aru, .. } if aru == base))
    }

    /// GV4: every member shares the site's GLOBAL-CONSTRAINT of the union it computed.
    pub(super) fn sign_global_constraint(&mut self, aru: SeqNum, union: Union<S>, out: &mut Vec<SiteOutput<S>>) {
        let proposals: Vec<Proposal<S>> = union
            .entries
            .into_values()
            .filter_map(|evidence| match evidence {
                Evidence::Proposal(proposal) => Some(proposal),
                Evidence::Certificate(_) => None,
            })
            .collect();
        let stable = union.checkpoint.as_ref().map_or(SeqNum(0), |proof| proof.seq);
        let payload = SitePayload::GlobalConstraint {
            site: self.site,
            gv: self.global_view(),
            aru,
            stable,
            union: union_digest(&proposals),
        };
        self.global.pending = Some((payload, proposals, union.checkpoint));
        self.sign(payload, out);
    }

    /// GV4: this site signed its GLOBAL-CONSTRAINT.
    pub(super) fn on_global_constraint_signed(&mut self, signed: SiteSigned<S>, out: &mut Vec<SiteOutput<S>>) {
        let Some((payload, proposals, checkpoint)) = self.global.pending.take() else { return };
        if payload != signed.payload {
            self.global.pending = Some((payload, proposals, checkpoint));
            return;
        }
        let constraint = Arc::new(GlobalConstraint { signed, proposals, checkpoint });
        self.global.signed = Some(constraint.clone());
        self.send_global_constraint(constraint, out);
    }

    /// GV4: to the same-position replica of the leader site (the leader site takes its own).
    fn send_global_constraint(&mut self, constraint: Arc<GlobalConstraint<S>>, out: &mut Vec<SiteOutput<S>>) {
        if self.at_leader_site() {
            self.take_global_constraint(constraint, out);
        } else if let Some(peer) = self.same_position(self.leader_site()) {
            out.push(SiteOutput::To { peer, message: SiteMessage::GlobalConstraint(constraint) });
        }
    }

    /// GV4 at the leader site: another site's GLOBAL-CONSTRAINT, relayed in the site.
    pub(super) fn on_global_constraint(
        &mut self,
        from: PeerId,
        constraint: Arc<GlobalConstraint<S>>,
        out: &mut Vec<SiteOutput<S>>,
    ) {
        let SitePayload::GlobalConstraint { site, .. } = constraint.signed.payload else {
            return out.push(SiteOutput::Refused(SiteRefusal::Constraint(ConstraintRefusal::BadEvidence)));
        };
        if !self.at_leader_site() || self.global.constraints.contains_key(&site) || self.globally_constrained() {
            return;
        }
        if let Err(refusal) = self.check_global_constraint(&constraint) {
            return out.push(SiteOutput::Refused(SiteRefusal::Constraint(refusal)));
        }
        if from.cluster != self.site {
            out.push(SiteOutput::ToSite(SiteMessage::GlobalConstraint(constraint.clone())));
        }
        self.take_global_constraint(constraint, out);
    }

    /// GV4: a GLOBAL-CONSTRAINT of the current view and ARU, signed by its site, whose
    /// PROPOSALs are the ones its digest binds (each signed by the site that led its view)
    /// and whose checkpoint is the one it names.
    fn check_global_constraint(&mut self, constraint: &GlobalConstraint<S>) -> Result<(), ConstraintRefusal> {
        let SitePayload::GlobalConstraint { gv, aru, stable, union, .. } = constraint.signed.payload else {
            return Err(ConstraintRefusal::BadEvidence);
        };
        if gv != self.global_view() || !self.wants_global_constraint(aru) {
            return Err(ConstraintRefusal::WrongViews);
        }
        if self.site_signature_holds(&constraint.signed) != Some(true) || union_digest(&constraint.proposals) != union {
            return Err(ConstraintRefusal::BadReport);
        }
        let views = self.views();
        let checkpoint = constraint.checkpoint.clone();
        let proposals = constraint.proposals.clone();
        self.check_constraint((Mode::Global, views, aru), move |context, work: &mut ConstraintWork| {
            match &checkpoint {
                None if stable == SeqNum(0) => {}
                Some(proof) if proof.seq == stable => context.check_checkpoint(proof, work)?,
                _ => return Err(ConstraintRefusal::BadEvidence),
            }
            let evidence: Vec<Evidence<S>> = proposals.into_iter().map(Evidence::Proposal).collect();
            let entries: Vec<_> = evidence.iter().filter_map(Evidence::entry).collect();
            context.check_entries((aru, stable), &entries, &evidence, work, &mut BTreeSet::new())
        })
    }

    /// GV4 at the leader site: a checked GLOBAL-CONSTRAINT; the representative with a
    /// majority of sites' sends the bundle and adopts it (GV5).
    fn take_global_constraint(&mut self, constraint: Arc<GlobalConstraint<S>>, out: &mut Vec<SiteOutput<S>>) {
        let SitePayload::GlobalConstraint { site, .. } = constraint.signed.payload else { return };
        self.global.constraints.insert(site, constraint);
        let enough = self.global.constraints.len() >= self.global_constraints_needed();
        if self.globally_constrained() || !self.is_representative() || !enough {
            return;
        }
        let bundle: Arc<Vec<GlobalConstraint<S>>> =
            Arc::new(self.global.constraints.values().map(|c| (**c).clone()).collect());
        self.adopt_global(bundle, out);
    }

    /// GV5: a bundle of GLOBAL-CONSTRAINTs from the representative (or a member that
    /// adopted it).
    pub(super) fn on_global_bundle(&mut self, bundle: Arc<Vec<GlobalConstraint<S>>>, out: &mut Vec<SiteOutput<S>>) {
        if self.global_bundle_holds(&bundle, out) {
            self.adopt_global(bundle, out);
        }
    }

    /// GV5: whether this replica, at the leader site and not yet globally constrained,
    /// takes `bundle`: GLOBAL-CONSTRAINTs of a majority of distinct sites, each checked.
    fn global_bundle_holds(&mut self, bundle: &[GlobalConstraint<S>], out: &mut Vec<SiteOutput<S>>) -> bool {
        if !self.at_leader_site() || self.globally_constrained() {
            return false;
        }
        let refuse = |out: &mut Vec<SiteOutput<S>>, refusal| {
            out.push(SiteOutput::Refused(SiteRefusal::Constraint(refusal)));
            false
        };
        let mut sites = BTreeSet::new();
        for constraint in bundle.iter() {
            let SitePayload::GlobalConstraint { site, .. } = constraint.signed.payload else {
                return refuse(out, ConstraintRefusal::BadEvidence);
            };
            if !sites.insert(site) {
                return refuse(out, ConstraintRefusal::BadReport);
            }
            if let Err(refusal) = self.check_global_constraint(constraint) {
                return refuse(out, refusal);
            }
        }
        if sites.len() < self.global_constraints_needed() {
            return refuse(out, ConstraintRefusal::TooFewReports);
        }
        true
    }

    /// GV5: adopts the union of a majority of sites' GLOBAL-CONSTRAINTs (see
    /// [`take_global_bindings`](Self::take_global_bindings)), sends the bundle to its site
    /// and takes it as its local constraint in its current views.
    fn adopt_global(&mut self, bundle: Arc<Vec<GlobalConstraint<S>>>, out: &mut Vec<SiteOutput<S>>) {
        let Some(base) = self.take_global_bindings(&bundle, out) else { return };
        out.push(SiteOutput::ToSite(SiteMessage::GlobalBundle(bundle)));
        self.adopt_constraint(self.views(), base, BTreeMap::new(), out);
    }

    /// GV5: the union of a majority of sites' GLOBAL-CONSTRAINTs: above the ARU and the
    /// latest stable checkpoint, per sequence number the PROPOSAL of the latest view. It
    /// binds every later local view of this global view. Returns the base it binds above.
    fn take_global_bindings(
        &mut self,
        bundle: &Arc<Vec<GlobalConstraint<S>>>,
        out: &mut Vec<SiteOutput<S>>,
    ) -> Option<SeqNum> {
        let Some(SitePayload::GlobalConstraint { aru, .. }) = bundle.first().map(|c| c.signed.payload) else {
            return None;
        };
        let checkpoint: Option<CheckpointProof<S>> =
            bundle.iter().filter_map(|c| c.checkpoint.clone()).max_by_key(|proof| proof.seq);
        let base = aru.max(checkpoint.as_ref().map_or(SeqNum(0), |proof| proof.seq));
        let mut union: BTreeMap<SeqNum, Proposal<S>> = BTreeMap::new();
        let rank = |p: &Proposal<S>| match p.signed.payload {
            SitePayload::Proposal { gv, lv, updates, .. } => (gv, lv, std::cmp::Reverse(updates)),
            _ => (0, 0, std::cmp::Reverse(Default::default())),
        };
        for proposal in bundle.iter().flat_map(|c| c.proposals.iter()) {
            let Some(seq) = proposal.signed.payload.seq().filter(|seq| *seq > base) else { continue };
            if union.get(&seq).is_none_or(|held| rank(held) < rank(proposal)) {
                union.insert(seq, proposal.clone());
            }
        }
        let gv = self.global_view();
        tracing::info!(site = %self.site, replica = %self.id, gv, aru = aru.0, bound = union.len(), "globally constrained");
        if let Some(aru) = self.global.aru.clone() {
            let lv = self.local_view();
            out.push(SiteOutput::Persist(SiteRecord::GlobalConstraints { gv, lv, aru, bundle: bundle.clone() }));
        }
        self.global.constrained = Some(gv);
        self.global.bound = union;
        if let Some(proof) = checkpoint {
            self.learn_stable(proof);
        }
        Some(base)
    }

    /// Recovery: the GLOBAL-CONSTRAINTs this replica adopted in local view `lv` of its
    /// global view before it crashed are adopted again (checked as when they came). In
    /// that same local view they are its local constraint too; in a later one only their
    /// bindings are, and that view's own constraint (LV2, LV3) is still needed.
    pub(super) fn readopt_global(
        &mut self,
        lv: LocalView,
        aru: SiteSigned<S>,
        bundle: Arc<Vec<GlobalConstraint<S>>>,
        out: &mut Vec<SiteOutput<S>>,
    ) {
        let this_view = matches!(aru.payload, SitePayload::Aru { gv, .. } if gv == self.global_view());
        if !this_view || self.site_signature_holds(&aru) != Some(true) {
            return;
        }
        self.global.aru = Some(aru);
        if !self.global_bundle_holds(&bundle, out) {
            return;
        }
        if lv == self.local_view() {
            self.adopt_global(bundle, out);
            self.gathered_enough();
        } else {
            self.take_global_bindings(&bundle, out);
        }
    }

    /// On the status timer: what the view change waits for, sent again.
    pub(super) fn global_again(&mut self, stuck: bool, out: &mut Vec<SiteOutput<S>>) {
        if self.global_view() == 0 || self.globally_constrained() && !stuck {
            return;
        }
        if self.at_leader_site() && self.is_representative() && self.global.aru.is_none() {
            self.ask_aru(out);
        }
        if let Some(aru) = self.global.aru.clone() {
            if self.at_leader_site() && !self.globally_constrained() {
                self.send_reliably(SiteMessage::Aru(aru), out);
            }
        }
        if let Some(mine) = self.global.signed.clone() {
            if !self.at_leader_site() {
                self.send_global_constraint(mine, out);
            }
        }
    }

    /// Views changed: the signer forgets the slots of earlier views, and this replica the
    /// shares it would send again for views that are done.
    pub(super) fn forget_old_views(&mut self) {
        let (gv, lv) = self.views();
        let outputs = self.signer.handle(crate::steward::signer::SignerInput::ForgetViews { lv, gv });
        debug_assert!(outputs.is_empty(), "forgetting produces nothing");
        let site = self.site;
        self.my_shares.retain(|_, (payload, _)| match *payload {
            SitePayload::NewRep { site: s, lv: l } => s != site || l > lv,
            SitePayload::GlobalVc { gv: g, .. } => g > gv,
            SitePayload::Aru { gv: g, .. } | SitePayload::GlobalConstraint { gv: g, .. } => g >= gv,
            _ => true,
        });
    }

    /// An empty batch for a gap, timed not before what executed.
    pub(super) fn empty_batch(&self) -> Arc<Batch> {
        Arc::new(Batch::timed(Vec::new(), self.now.0.max(self.executor.time_us())))
    }
}
