//! A new leader-site representative rebuilds its site's bindings before it orders anything
//! (docs/STEWARD.md LV2, LV3): CONSTRUCT-LOCAL-CONSTRAINT, driven here; the reports, their
//! checks and the union are [`crate::steward::constraint`]'s.
//!
//! When a leader-site replica preinstalls a new local view it is no longer *locally
//! constrained* and takes no PRE-PREPARE. The new representative names a base (its `aru`)
//! and asks its site for reports; each member answers once per local view with its signed
//! report. With `2f + 1` reports the representative sends the bundle to its site; every
//! replica checks it, computes the union and adopts it (constrained again). The
//! representative then proposes again what the union binds: a combined PROPOSAL is sent to
//! the other sites as it is, a prepare certificate's batch is pre-prepared again in the new
//! local view (TS1 lets replicas share the same binding again), and sequence numbers the
//! union leaves free below its highest are filled with empty batches.
//!
//! A representative asks again every status interval while it gathers, and sends the
//! bundle again while its site is stuck; a replica that lost the bundle cannot prepare.
//!
//! The same gathering runs in global mode at every site when the leader site's ARU arrives
//! (GV4): there the union is not adopted but signed as the site's GLOBAL-CONSTRAINT (see
//! [`super::global_view`]). At the leader site of a global view after the first, a local
//! constraint is adopted only by a replica already globally constrained, and the global
//! union's bindings stay bound under it.

use super::{SiteOutput, SiteRecord, SiteRefusal, SiteReplica};
use crate::ids::{ReplicaId, SeqNum};
use crate::service::Service;
use crate::steward::constraint::{ConstraintContext, ConstraintRefusal, ConstraintWork, Evidence, Mode, Report};
use crate::steward::messages::SiteMessage;
use crate::steward::payload::{GlobalView, LocalView, SitePayload};
use bulwark_crypto::threshold::ThresholdScheme;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

type Views = (GlobalView, LocalView);

type Gathering<S> = (Views, SeqNum, BTreeMap<ReplicaId, Report<S>>);

/// The constraint state of one replica.
#[derive(Debug)]
pub(super) struct Constraining<S: ThresholdScheme> {
    /// As representative, by mode: the views and base it asked for, and the reports
    /// gathered.
    gathering: BTreeMap<Mode, Gathering<S>>,
    /// As representative: the local bundle it sent, sent again while the site is stuck.
    bundle: Option<(Views, Arc<Vec<Report<S>>>)>,
    /// The report this replica sent, by mode: one per views and base.
    answered: BTreeMap<Mode, (Views, SeqNum, Arc<Report<S>>)>,
    /// Local bundles adopted (local views whose representative rebuilt the site's bindings).
    pub(super) adopted: u64,
}

impl<S: ThresholdScheme> Default for Constraining<S> {
    fn default() -> Self {
        Constraining { gathering: BTreeMap::new(), bundle: None, answered: BTreeMap::new(), adopted: 0 }
    }
}

impl<S: ThresholdScheme> Constraining<S> {
    /// A new global view: nothing gathered or sent for the old one matters.
    pub(super) fn clear(&mut self) {
        self.gathering.clear();
        self.bundle = None;
    }
}

impl<Svc: Service, S: ThresholdScheme> SiteReplica<Svc, S> {
    /// LV1 at the leader site: a new local view is preinstalled; the replica waits for its
    /// constraint, and the new representative asks for reports (LV2).
    pub(super) fn start_constraint(&mut self, out: &mut Vec<SiteOutput<S>>) {
        self.local.unconstrain();
        self.constraint.bundle = None;
        self.constraint.gathering.remove(&Mode::Local);
        if self.is_representative() {
            self.gather(Mode::Local, self.aru(), out);
        }
    }

    /// LV2, GV4, as representative: asks the site for reports above `base`.
    pub(super) fn gather(&mut self, mode: Mode, base: SeqNum, out: &mut Vec<SiteOutput<S>>) {
        let views = self.views();
        let mine = self.my_report(mode, views, base);
        self.constraint.gathering.insert(mode, (views, base, BTreeMap::from([(self.id, mine)])));
        tracing::info!(site = %self.site, replica = %self.id, ?mode, gv = views.0, lv = views.1, base = base.0, "gathering reports");
        let global = mode == Mode::Global;
        out.push(SiteOutput::ToSite(SiteMessage::ConstraintRequest { gv: views.0, lv: views.1, base, global }));
    }

    /// LV2: the best this replica holds for each sequence number above `base`: a combined
    /// PROPOSAL of this global view (executed or not), else its latest prepare certificate.
    /// GV4: every PROPOSAL it holds above `base`, of any global view, and its stable
    /// checkpoint.
    fn my_report(&self, mode: Mode, (gv, lv): Views, base: SeqNum) -> Report<S> {
        let checkpoint = match mode {
            Mode::Local => None,
            Mode::Global => self.checkpoints.stable().cloned(),
        };
        let stable = checkpoint.as_ref().map_or(SeqNum(0), |proof| proof.seq);
        let last = SeqNum(base.max(stable).0.saturating_add(self.params.window));
        let mut evidence: BTreeMap<SeqNum, Evidence<S>> = BTreeMap::new();
        let wanted = |payload: &SitePayload| match (mode, payload) {
            (Mode::Local, SitePayload::Proposal { gv: g, .. }) => *g == gv,
            (Mode::Global, SitePayload::Proposal { gv: g, .. }) => *g <= gv,
            _ => false,
        };
        if mode == Mode::Local {
            for (seq, certificate) in self.local.certificates().range(base.next()..=last) {
                evidence.insert(*seq, Evidence::Certificate(certificate.clone()));
            }
        }
        let ordered = self.ordered.range(base.next()..=last).map(|(seq, proof)| (seq, &proof.proposal));
        for (seq, proposal) in ordered.chain(self.proposals.range(base.next()..=last)) {
            if wanted(&proposal.signed.payload) {
                evidence.insert(*seq, Evidence::Proposal(proposal.clone()));
            }
        }
        let membership = self.membership.current();
        let evidence = evidence.into_values().collect();
        Report::with_mode(&membership, (self.id, &self.key), (mode, gv, lv, base), evidence, checkpoint)
    }

    /// Runs `check` in the context of this site, `views` and `base`, and counts the
    /// signatures it checked.
    pub(super) fn check_constraint<R>(
        &mut self,
        (mode, views, base): (Mode, Views, SeqNum),
        check: impl FnOnce(&ConstraintContext<S>, &mut ConstraintWork) -> R,
    ) -> R {
        let membership = self.membership.current();
        let site_keys = self.sites.iter().map(|(site, info)| (*site, info.key.clone())).collect();
        let context = ConstraintContext {
            mode,
            membership: &membership,
            site: self.site,
            site_keys: &site_keys,
            views,
            base,
            window: self.params.window,
        };
        let mut work = ConstraintWork::default();
        let result = check(&context, &mut work);
        self.crypto.site_signatures_verified += work.site_signatures;
        self.crypto.votes_verified += work.votes;
        result
    }

    /// Whether `from` represents this (leader) site in the current local view.
    fn is_leader_representative(&self, from: ReplicaId) -> bool {
        self.at_leader_site() && self.representative_of(self.site).replica == from
    }

    /// Whether `from` may ask for reports of `mode`: the representative of this site (the
    /// leader site, for a local constraint).
    fn may_gather(&self, mode: Mode, from: ReplicaId) -> bool {
        match mode {
            Mode::Local => self.is_leader_representative(from),
            Mode::Global => self.representative_of(self.site).replica == from,
        }
    }

    /// LV2, GV4: the representative asks for this replica's report. One report per mode,
    /// views and base: a repeated request gets the same one.
    pub(super) fn on_constraint_request(
        &mut self,
        from: ReplicaId,
        (gv, lv, base, global): (GlobalView, LocalView, SeqNum, bool),
        out: &mut Vec<SiteOutput<S>>,
    ) {
        let mode = if global { Mode::Global } else { Mode::Local };
        if (gv, lv) != self.views() || !self.may_gather(mode, from) {
            return;
        }
        let report = match self.constraint.answered.get(&mode) {
            Some((views, b, report)) if *views == (gv, lv) && *b == base => report.clone(),
            _ => {
                let report = Arc::new(self.my_report(mode, (gv, lv), base));
                self.constraint.answered.insert(mode, ((gv, lv), base, report.clone()));
                report
            }
        };
        let peer = self.representative_of(self.site);
        out.push(SiteOutput::To { peer, message: SiteMessage::Report(report) });
    }

    /// LV2, GV4, as the representative: a member's report.
    pub(super) fn on_report(&mut self, from: ReplicaId, report: Arc<Report<S>>, out: &mut Vec<SiteOutput<S>>) {
        let mode = if report.signed.payload.global { Mode::Global } else { Mode::Local };
        let Some((views, base, reports)) = self.constraint.gathering.get(&mode) else { return };
        let (views, base) = (*views, *base);
        if report.signed.payload.replica != from || reports.contains_key(&from) {
            return;
        }
        let checked = self.check_constraint((mode, views, base), |context, work| {
            context.check_report(&report, work, &mut BTreeSet::new())
        });
        if let Err(refusal) = checked {
            out.push(SiteOutput::Refused(SiteRefusal::Constraint(refusal)));
            return;
        }
        let quorum = self.membership.current().quorum();
        let Some((_, _, reports)) = self.constraint.gathering.get_mut(&mode) else { return };
        reports.insert(from, (*report).clone());
        if reports.len() < quorum {
            return;
        }
        let Some((_, _, reports)) = self.constraint.gathering.remove(&mode) else { return };
        let bundle: Arc<Vec<Report<S>>> = Arc::new(reports.into_values().collect());
        if mode == Mode::Local {
            self.constraint.bundle = Some((views, bundle.clone()));
        }
        out.push(SiteOutput::ToSite(SiteMessage::Constraint(bundle.clone())));
        self.on_constraint(self.id, bundle, out);
    }

    /// LV3, GV4: the representative's bundle: checked and its union computed; a local
    /// union is adopted, a global one signed as the site's GLOBAL-CONSTRAINT.
    pub(super) fn on_constraint(&mut self, from: ReplicaId, bundle: Arc<Vec<Report<S>>>, out: &mut Vec<SiteOutput<S>>) {
        let views = self.views();
        let Some(first) = bundle.first().map(|report| &report.signed.payload) else {
            return out.push(SiteOutput::Refused(SiteRefusal::Constraint(ConstraintRefusal::TooFewReports)));
        };
        let (mode, base) = (if first.global { Mode::Global } else { Mode::Local }, first.base);
        if !self.may_gather(mode, from) {
            return;
        }
        match mode {
            // GV6: at the leader site of a later global view, the global constraint first.
            Mode::Local if self.local.is_constrained(views) || !self.globally_constrained() => return,
            Mode::Global if !self.wants_global_constraint(base) => return,
            _ => {}
        }
        match self.check_constraint((mode, views, base), |context, work| context.union(&bundle, work)) {
            Ok(union) if mode == Mode::Local => {
                let (gv, lv) = views;
                out.push(SiteOutput::Persist(SiteRecord::LocalConstraint { gv, lv, bundle: bundle.clone() }));
                self.adopt_constraint(views, base, union.entries, out)
            }
            Ok(union) => self.sign_global_constraint(base, union, out),
            Err(refusal) => out.push(SiteOutput::Refused(SiteRefusal::Constraint(refusal))),
        }
    }

    /// LV3: adopts the union (over the global union's bindings, GV5); the representative
    /// proposes again what it binds.
    pub(super) fn adopt_constraint(
        &mut self,
        views: Views,
        base: SeqNum,
        union: BTreeMap<SeqNum, Evidence<S>>,
        out: &mut Vec<SiteOutput<S>>,
    ) {
        let aru = self.aru();
        let mut bound = self.global_bindings(base);
        bound.extend(union);
        let union: BTreeMap<SeqNum, Evidence<S>> = bound.into_iter().filter(|(seq, _)| *seq > aru).collect();
        let bound = union.iter().map(|(seq, evidence)| (*seq, evidence.batch().digest())).collect();
        let mut certificates = Vec::new();
        let mut proposals = Vec::new();
        // Batches to pre-prepare again in these views: a certificate's, or one a PROPOSAL of
        // an earlier global view bound (GV5); a PROPOSAL of this view is sent as it is.
        let mut again = Vec::new();
        for (seq, evidence) in &union {
            self.batches.insert(evidence.batch().digest(), evidence.batch().clone());
            match evidence {
                Evidence::Proposal(proposal) if matches!(proposal.signed.payload, SitePayload::Proposal { gv, .. } if gv == views.0) => {
                    proposals.push(proposal.clone())
                }
                Evidence::Proposal(proposal) => again.push((*seq, proposal.batch.clone())),
                Evidence::Certificate(certificate) => {
                    again.push((*seq, certificate.batch.clone()));
                    certificates.push(certificate.clone());
                }
            }
        }
        self.local.adopt(views, base, bound, certificates);
        self.constraint.adopted += 1;
        tracing::info!(site = %self.site, replica = %self.id, lv = views.1, bound = union.len(), "locally constrained");
        let representative = self.is_representative();
        for proposal in proposals {
            if representative {
                self.to_other_sites(SiteMessage::Proposal(proposal.clone()), out);
            }
            self.take_proposal(proposal, false, out);
        }
        if !representative {
            return;
        }
        for (seq, batch) in again {
            if seq > self.aru() {
                self.pre_prepare(seq, batch, out);
            }
        }
        for seq in self.local.gaps(self.aru().max(base)) {
            let batch = self.empty_batch();
            self.pre_prepare(seq, batch, out);
        }
        self.propose(false, out);
    }

    /// Recovery: the local bundle this replica adopted in its current views before it
    /// crashed is adopted again (checked as when it came), and a representative does not
    /// gather a second one for these views.
    pub(super) fn readopt_local(&mut self, bundle: Arc<Vec<Report<S>>>, out: &mut Vec<SiteOutput<S>>) {
        self.local.unconstrain();
        self.constraint.gathering.remove(&Mode::Local);
        if self.is_representative() {
            self.constraint.bundle = Some((self.views(), bundle.clone()));
        }
        let representative = self.representative_of(self.site).replica;
        self.on_constraint(representative, bundle, out);
    }

    /// Recovery: once constrained again in its views, a representative gathers no second
    /// bundle for them.
    pub(super) fn gathered_enough(&mut self) {
        if self.local.is_constrained(self.views()) {
            self.constraint.gathering.remove(&Mode::Local);
        }
    }

    /// On the status timer: the gathering representative asks again (a member may have
    /// lost the request or preinstalled late); with the site `stuck`, it sends its bundle
    /// again (a member that lost it cannot prepare).
    pub(super) fn constraint_again(&mut self, stuck: bool, out: &mut Vec<SiteOutput<S>>) {
        for (mode, ((gv, lv), base, _)) in &self.constraint.gathering {
            let global = *mode == Mode::Global;
            let message = SiteMessage::ConstraintRequest { gv: *gv, lv: *lv, base: *base, global };
            out.push(SiteOutput::ToSite(message));
        }
        match &self.constraint.bundle {
            Some((views, bundle)) if stuck && *views == self.views() && self.is_representative() => {
                out.push(SiteOutput::ToSite(SiteMessage::Constraint(bundle.clone())));
            }
            _ => {}
        }
    }
}
