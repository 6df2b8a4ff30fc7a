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

use super::{SiteOutput, SiteRefusal, SiteReplica};
use crate::batch::Batch;
use crate::ids::{ReplicaId, SeqNum};
use crate::service::Service;
use crate::steward::constraint::{ConstraintContext, ConstraintRefusal, ConstraintWork, Evidence, Report};
use crate::steward::messages::SiteMessage;
use crate::steward::payload::{GlobalView, LocalView, SitePayload};
use bulwark_crypto::threshold::ThresholdScheme;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

type Views = (GlobalView, LocalView);

/// The constraint state of one leader-site replica.
#[derive(Debug)]
pub(super) struct Constraining<S: ThresholdScheme> {
    /// As new representative: the views and base it asked for, and the reports gathered.
    gathering: Option<(Views, SeqNum, BTreeMap<ReplicaId, Report<S>>)>,
    /// As representative: the bundle it sent, sent again while the site is stuck.
    bundle: Option<(Views, Arc<Vec<Report<S>>>)>,
    /// The report this replica sent for some views: one per local view.
    answered: Option<(Views, Arc<Report<S>>)>,
    /// Bundles adopted (local views whose representative rebuilt the site's bindings).
    pub(super) adopted: u64,
}

impl<S: ThresholdScheme> Default for Constraining<S> {
    fn default() -> Self {
        Constraining { gathering: None, bundle: None, answered: None, adopted: 0 }
    }
}

impl<Svc: Service, S: ThresholdScheme> SiteReplica<Svc, S> {
    /// LV1 at the leader site: a new local view is preinstalled; the replica waits for its
    /// constraint, and the new representative asks for reports (LV2).
    pub(super) fn start_constraint(&mut self, out: &mut Vec<SiteOutput<S>>) {
        self.local.unconstrain();
        self.constraint.bundle = None;
        self.constraint.gathering = None;
        if !self.is_representative() {
            return;
        }
        let (views, base) = (self.views(), self.aru());
        let mine = self.my_report(views, base);
        self.constraint.gathering = Some((views, base, BTreeMap::from([(self.id, mine)])));
        tracing::info!(site = %self.site, replica = %self.id, lv = views.1, base = base.0, "new leader-site representative: gathering reports");
        out.push(SiteOutput::ToSite(SiteMessage::ConstraintRequest { gv: views.0, lv: views.1, base }));
    }

    /// LV2: the best this replica holds for each sequence number above `base`: a combined
    /// PROPOSAL of this global view (executed or not), else its latest prepare certificate.
    fn my_report(&self, (gv, lv): Views, base: SeqNum) -> Report<S> {
        let last = SeqNum(base.0.saturating_add(self.params.window));
        let mut evidence: BTreeMap<SeqNum, Evidence<S>> = BTreeMap::new();
        let current = |payload: &SitePayload| matches!(payload, SitePayload::Proposal { gv: g, .. } if *g == gv);
        for (seq, certificate) in self.local.certificates().range(base.next()..=last) {
            evidence.insert(*seq, Evidence::Certificate(certificate.clone()));
        }
        let ordered = self.ordered.range(base.next()..=last).map(|(seq, proof)| (seq, &proof.proposal));
        for (seq, proposal) in ordered.chain(self.proposals.range(base.next()..=last)) {
            if current(&proposal.signed.payload) {
                evidence.insert(*seq, Evidence::Proposal(proposal.clone()));
            }
        }
        let membership = self.membership.current();
        Report::new(&membership, (self.id, &self.key), (gv, lv, base), evidence.into_values().collect())
    }

    /// Runs `check` in the context of this site, `views` and `base`, and counts the
    /// signatures it checked.
    fn check_constraint<R>(
        &mut self,
        views: Views,
        base: SeqNum,
        check: impl FnOnce(&ConstraintContext<S>, &mut ConstraintWork) -> R,
    ) -> R {
        let membership = self.membership.current();
        let site_key = self.sites[&self.site].key.clone();
        let context = ConstraintContext {
            membership: &membership,
            site: self.site,
            site_key: site_key.as_ref(),
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

    /// LV2: the representative asks for this replica's report.
    pub(super) fn on_constraint_request(
        &mut self,
        from: ReplicaId,
        (gv, lv, base): (GlobalView, LocalView, SeqNum),
        out: &mut Vec<SiteOutput<S>>,
    ) {
        if (gv, lv) != self.views() || !self.is_leader_representative(from) {
            return;
        }
        let report = match &self.constraint.answered {
            Some((views, report)) if *views == (gv, lv) => report.clone(),
            _ => {
                let report = Arc::new(self.my_report((gv, lv), base));
                self.constraint.answered = Some(((gv, lv), report.clone()));
                report
            }
        };
        if report.signed.payload.base == base {
            let peer = self.representative_of(self.site);
            out.push(SiteOutput::To { peer, message: SiteMessage::Report(report) });
        }
    }

    /// LV2, as the new representative: a member's report.
    pub(super) fn on_report(&mut self, from: ReplicaId, report: Arc<Report<S>>, out: &mut Vec<SiteOutput<S>>) {
        let Some((views, base, reports)) = &self.constraint.gathering else { return };
        let (views, base) = (*views, *base);
        if report.signed.payload.replica != from || reports.contains_key(&from) {
            return;
        }
        let checked = self
            .check_constraint(views, base, |context, work| context.check_report(&report, work, &mut BTreeSet::new()));
        if let Err(refusal) = checked {
            out.push(SiteOutput::Refused(SiteRefusal::Constraint(refusal)));
            return;
        }
        let quorum = self.membership.current().quorum();
        let Some((_, _, reports)) = &mut self.constraint.gathering else { return };
        reports.insert(from, (*report).clone());
        if reports.len() < quorum {
            return;
        }
        let Some((_, _, reports)) = self.constraint.gathering.take() else { return };
        let bundle: Arc<Vec<Report<S>>> = Arc::new(reports.into_values().collect());
        self.constraint.bundle = Some((views, bundle.clone()));
        out.push(SiteOutput::ToSite(SiteMessage::Constraint(bundle.clone())));
        self.on_constraint(self.id, bundle, out);
    }

    /// LV3: the representative's bundle: checked, its union computed and adopted.
    pub(super) fn on_constraint(&mut self, from: ReplicaId, bundle: Arc<Vec<Report<S>>>, out: &mut Vec<SiteOutput<S>>) {
        let views = self.views();
        if !self.is_leader_representative(from) || self.local.is_constrained(views) {
            return;
        }
        let Some(base) = bundle.first().map(|report| report.signed.payload.base) else {
            return out.push(SiteOutput::Refused(SiteRefusal::Constraint(ConstraintRefusal::TooFewReports)));
        };
        match self.check_constraint(views, base, |context, work| context.union(&bundle, work)) {
            Ok(union) => self.adopt_constraint(views, base, union, out),
            Err(refusal) => out.push(SiteOutput::Refused(SiteRefusal::Constraint(refusal))),
        }
    }

    /// LV3: adopts the union; the representative proposes again what it binds.
    fn adopt_constraint(
        &mut self,
        views: Views,
        base: SeqNum,
        union: BTreeMap<SeqNum, Evidence<S>>,
        out: &mut Vec<SiteOutput<S>>,
    ) {
        let aru = self.aru();
        let union: BTreeMap<SeqNum, Evidence<S>> = union.into_iter().filter(|(seq, _)| *seq > aru).collect();
        let bound = union.iter().map(|(seq, evidence)| (*seq, evidence.batch().digest())).collect();
        let mut certificates = Vec::new();
        let mut proposals = Vec::new();
        for evidence in union.values() {
            self.batches.insert(evidence.batch().digest(), evidence.batch().clone());
            match evidence {
                Evidence::Proposal(proposal) => proposals.push(proposal.clone()),
                Evidence::Certificate(certificate) => certificates.push(certificate.clone()),
            }
        }
        self.local.adopt(views, base, bound, certificates.clone());
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
        for certificate in certificates {
            let (_, _, seq, _) = certificate.binding();
            if seq > self.aru() {
                self.pre_prepare(seq, certificate.batch, out);
            }
        }
        let time_us = self.now.0.max(self.executor.time_us());
        for seq in self.local.gaps(self.aru()) {
            self.pre_prepare(seq, Arc::new(Batch::timed(Vec::new(), time_us)), out);
        }
        self.propose(false, out);
    }

    /// On the status timer: the gathering representative asks again (a member may have
    /// lost the request or preinstalled late); with the site `stuck`, it sends its bundle
    /// again (a member that lost it cannot prepare).
    pub(super) fn constraint_again(&mut self, stuck: bool, out: &mut Vec<SiteOutput<S>>) {
        if let Some(((gv, lv), base, _)) = &self.constraint.gathering {
            let message = SiteMessage::ConstraintRequest { gv: *gv, lv: *lv, base: *base };
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
