//! Catching up a replica or a site that missed messages (docs/STEWARD.md §9: the bounded,
//! rate-limited LOCAL-RECONCILIATION RC1 and GLOBAL-RECONCILIATION RC2).
//!
//! RC1: every replica tells the peers of its site how far it executed on each status timer.
//! A peer that is further answers, at most once per half status interval per peer and at
//! most `catch_up_max` items per answer: the first chunk of its stable checkpoint's image
//! if the peer is behind it (the peer fetches the rest, SK1 in [`super::checkpoints`]),
//! then the proofs of the ordered batches the peer lacks (self-certifying: a PROPOSAL and
//! the ACCEPTs that ordered it).
//!
//! RC2: a replica that is stuck (work outstanding and `aru` unchanged since the last status
//! timer), or whose site just preinstalled a new representative (its predecessor may have left
//! the site behind), shares RECONCILE(site, `aru`) for its own `aru`. Replicas of one site
//! reach the same `aru` through RC1, so `2f + 1` shares combine; every replica that combines
//! sends the signed request to its same-position replica of every other site (RS1's helper),
//! and sends it again on its status timers while it is stuck at that `aru`. A replica of
//! another site streams to the sender only on a request its site signed: as for RC1, plus the
//! proof of its global view if the request says the sender is in an earlier one, and (its
//! representative, whose duty sending them is, W4) the PROPOSALs and its own site's ACCEPTs
//! above its `aru`, which the lagging site may have lost on the WAN. Another site's status
//! alone gets that proof and nothing else, so one faulty replica cannot make remote sites
//! stream to it; nor does it get chunks of a state image (a remote state request is answered
//! only for a site whose signed request was seen in the last [`RECONCILE_FRESH_INTERVALS`]
//! status intervals). A request below the latest one seen of its site is a replay and is not
//! answered, so a faulty replica replaying its site's request gets at most the bounded,
//! rate-limited stream its site asked for last.
//!
//! A replica sends again its site's latest NEW-REP (LV1) with each request, to its site on each
//! timer that finds it stuck, and to a site whose request it answers: a replica that lost its
//! site's NEW-REP broadcast would stay a local view behind for good and could not vote the next
//! one, and a site that lost another's would send PROPOSALs and updates to a replaced
//! representative.

use super::{SiteOutput, SiteRefusal, SiteReplica};
use crate::ids::{ClusterId, Instant, PeerId, SeqNum};
use crate::service::Service;
use crate::steward::global::{GlobalOutput, SiteSigned};
use crate::steward::messages::{OrderedProof, SiteMessage};
use crate::steward::payload::{GlobalView, SitePayload};
use bulwark_crypto::threshold::ThresholdScheme;
use std::collections::BTreeMap;
use std::sync::Arc;

/// RC2: status intervals during which a site's signed request lets its replicas fetch
/// state chunks from this replica.
pub const RECONCILE_FRESH_INTERVALS: u64 = 4;

#[derive(Debug)]
pub(super) struct CatchUp<S: ThresholdScheme> {
    /// When each peer was last answered.
    answered: BTreeMap<PeerId, Instant>,
    /// `aru` at the previous status timer.
    aru_before: SeqNum,
    /// RC2: the latest request this replica's site signed.
    reconcile: Option<SiteSigned<S>>,
    /// LV1: the latest NEW-REP of this replica's site it preinstalled, sent again with
    /// requests and answers: a peer or site that lost it would send to a replaced
    /// representative, or stay a local view behind for good.
    pub(super) new_rep: Option<SiteSigned<S>>,
    /// RC2: the latest signed request of each other site (its `aru`) and when it came.
    reconciling: BTreeMap<ClusterId, (SeqNum, Instant)>,
    /// RC2: requests of other sites answered.
    pub(super) streamed: u64,
}

impl<S: ThresholdScheme> Default for CatchUp<S> {
    fn default() -> Self {
        CatchUp {
            answered: BTreeMap::new(),
            aru_before: SeqNum(0),
            reconcile: None,
            new_rep: None,
            reconciling: BTreeMap::new(),
            streamed: 0,
        }
    }
}

impl<S: ThresholdScheme> CatchUp<S> {
    /// Whether the replica is stuck: work outstanding and `aru` unchanged since the last
    /// status timer.
    pub(super) fn stuck(&mut self, aru: SeqNum, outstanding: bool) -> bool {
        let stuck = outstanding && aru == self.aru_before;
        self.aru_before = aru;
        stuck
    }
}

impl<Svc: Service, S: ThresholdScheme> SiteReplica<Svc, S> {
    /// RC1: a peer of this site executed through `their_aru` and is in global view
    /// `their_gv`. From another site's replica a status gets only the proof of this global
    /// view, if it is in an earlier one (GV2).
    pub(super) fn on_status(
        &mut self,
        from: PeerId,
        (their_aru, their_gv): (SeqNum, GlobalView),
        out: &mut Vec<SiteOutput<S>>,
    ) {
        if self.answered_lately(from) {
            return;
        }
        if from.cluster != self.site {
            if their_gv < self.global_view() {
                if let Some(proof) = self.global_vc_proof() {
                    self.catch_up.answered.insert(from, self.now);
                    out.push(SiteOutput::To { peer: from, message: SiteMessage::GlobalVcProof(proof) });
                }
            }
            return;
        }
        self.stream(from, (their_aru, their_gv), false, out);
    }

    fn answered_lately(&self, peer: PeerId) -> bool {
        let quiet_us = self.params.status_interval_us / 2;
        self.catch_up.answered.get(&peer).is_some_and(|at| self.now.0.saturating_sub(at.0) < quiet_us)
    }

    /// RC1, RC2: what `to`, at `their_aru` in `their_gv`, lacks, bounded by `catch_up_max`
    /// per kind; with `remote` and from the representative, also the PROPOSALs and this
    /// site's ACCEPTs above this replica's `aru`.
    fn stream(
        &mut self,
        to: PeerId,
        (their_aru, their_gv): (SeqNum, GlobalView),
        remote: bool,
        out: &mut Vec<SiteOutput<S>>,
    ) {
        let mut answer = Vec::new();
        // GV2: a peer in an earlier global view gets the proof of this one.
        if their_gv < self.global_view() {
            answer.extend(self.global_vc_proof().map(SiteMessage::GlobalVcProof));
        }
        let mut next = their_aru;
        if their_aru < self.checkpoints.stable_seq() {
            if let Some(offer) = self.state_offer() {
                next = self.checkpoints.stable_seq();
                answer.push(offer);
            }
        }
        let limit = self.params.catch_up_max;
        answer.extend(
            self.ordered.range(next.next()..).take(limit).map(|(_, proof)| SiteMessage::Ordered(proof.clone())),
        );
        // W4: sending PROPOSALs and ACCEPTs to other sites is the representative's duty; a
        // replica that is not cannot route around one that fails to (LV1 replaces it).
        if remote {
            // LV1: which replica represents this site now, for the PROPOSALs and updates it
            // sends here.
            answer.extend(self.catch_up.new_rep.clone().map(SiteMessage::NewRep));
        }
        if remote && self.is_representative() {
            let proposals = self.proposals.values().take(limit).map(|p| SiteMessage::Proposal(p.clone()));
            answer.extend(proposals.collect::<Vec<_>>());
            let own = self.site;
            let accepts = self.accepts.values().filter_map(|by_site| by_site.get(&own)).take(limit);
            answer.extend(accepts.map(|a| SiteMessage::Accept(a.clone())).collect::<Vec<_>>());
        }
        if answer.is_empty() {
            return;
        }
        self.catch_up.answered.insert(to, self.now);
        out.extend(answer.into_iter().map(|message| SiteOutput::To { peer: to, message }));
    }

    /// RC2: this replica's site may be behind (it is stuck, or a new representative was
    /// preinstalled): it sends again the request its site signed for its `aru`, or shares
    /// one (TS1: for its own `aru` only).
    pub(super) fn reconcile(&mut self, out: &mut Vec<SiteOutput<S>>) {
        // LV1: a peer that lost this site's latest NEW-REP would stay a local view behind
        // and could not vote the next one.
        if let Some(new_rep) = &self.catch_up.new_rep {
            out.push(SiteOutput::ToSite(SiteMessage::NewRep(new_rep.clone())));
        }
        let (aru, gv) = (self.aru(), self.global_view());
        let signed = self.catch_up.reconcile.as_ref();
        if let Some(signed) = signed.filter(|s| matches!(s.payload, SitePayload::Reconcile { aru: a, .. } if a == aru))
        {
            let message = SiteMessage::Reconcile { signed: signed.clone(), gv };
            self.send_reconcile(message, out);
            return;
        }
        let payload = SitePayload::Reconcile { site: self.site, aru };
        self.sign(payload, out);
        // A lost share is shared again on the next timer that finds this replica stuck,
        // not with the shares that wait for a batch to execute.
        self.my_shares.remove(&payload.message());
    }

    /// RC2: this replica's site signed a request; to the same-position replicas.
    pub(super) fn on_reconcile_signed(&mut self, signed: SiteSigned<S>, out: &mut Vec<SiteOutput<S>>) {
        let SitePayload::Reconcile { aru, .. } = signed.payload else { return };
        if aru != self.aru() || self.catch_up.reconcile.as_ref().is_some_and(|s| s.payload == signed.payload) {
            return;
        }
        self.catch_up.reconcile = Some(signed.clone());
        let message = SiteMessage::Reconcile { signed, gv: self.global_view() };
        self.send_reconcile(message, out);
    }

    /// RC2: the request to the same-position replicas, with this site's latest NEW-REP
    /// (LV1: the other sites send PROPOSALs and updates to its representative).
    fn send_reconcile(&self, request: SiteMessage<S>, out: &mut Vec<SiteOutput<S>>) {
        if let Some(new_rep) = &self.catch_up.new_rep {
            self.to_same_positions(SiteMessage::NewRep(new_rep.clone()), out);
        }
        self.to_same_positions(request, out);
    }

    /// RC2: another site's signed request, from one of its replicas: streamed to, at most
    /// once per half status interval per peer.
    pub(super) fn on_reconcile(
        &mut self,
        from: PeerId,
        signed: SiteSigned<S>,
        their_gv: GlobalView,
        out: &mut Vec<SiteOutput<S>>,
    ) {
        let SitePayload::Reconcile { site, aru } = signed.payload else {
            return out.push(SiteOutput::Refused(SiteRefusal::BadReconcile));
        };
        if site != from.cluster || site == self.site {
            return out.push(SiteOutput::Refused(SiteRefusal::UnknownPeer));
        }
        // A request below the latest of its site is a replay: the site moved on.
        let replayed = self.catch_up.reconciling.get(&site).is_some_and(|(latest, _)| *latest > aru);
        if replayed || self.answered_lately(from) {
            return;
        }
        if self.site_signature_holds(&signed) != Some(true) {
            return out.push(SiteOutput::Refused(SiteRefusal::BadReconcile));
        }
        self.catch_up.reconciling.insert(site, (aru, self.now));
        self.catch_up.streamed += 1;
        self.stream(from, (aru, their_gv), true, out);
    }

    /// RC2: whether a replica of `site` may fetch state chunks from this replica: its site
    /// signed a request lately.
    pub(super) fn may_stream_to(&self, site: ClusterId) -> bool {
        if site == self.site {
            return true;
        }
        let fresh_us = self.params.status_interval_us.saturating_mul(RECONCILE_FRESH_INTERVALS);
        self.catch_up.reconciling.get(&site).is_some_and(|(_, at)| self.now.0.saturating_sub(at.0) < fresh_us)
    }

    /// An ordered batch for this replica, which is behind: its ACCEPTs and PROPOSAL go
    /// through global ordering like any other (W5, W7), signatures checked.
    pub(super) fn on_ordered(&mut self, proof: Arc<OrderedProof<S>>, out: &mut Vec<SiteOutput<S>>) {
        let SitePayload::Proposal { seq, updates, .. } = proof.proposal.signed.payload else {
            out.push(SiteOutput::Refused(SiteRefusal::BadCheckpoint));
            return;
        };
        if seq <= self.aru() {
            return;
        }
        if proof.proposal.batch.digest() != updates {
            out.push(SiteOutput::Refused(SiteRefusal::BatchMismatch));
            return;
        }
        // Ordered in this or an earlier global view: checked as a whole.
        let outputs = self.order.on_ordered(&proof.proposal.signed, &proof.accepts);
        if outputs.iter().any(|o| matches!(o, GlobalOutput::Refused(_))) {
            self.global_outputs(outputs, out);
            return;
        }
        self.batches.insert(updates, proof.proposal.batch.clone());
        self.proposals.insert(seq, proof.proposal.clone());
        let accepts = self.accepts.entry(seq).or_default();
        for accept in &proof.accepts {
            accepts.insert(accept.payload.site(), accept.clone());
        }
        self.global_outputs(outputs, out);
    }
}
