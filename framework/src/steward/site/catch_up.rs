//! Catching up a replica or a site that missed messages (docs/STEWARD.md §9; the bounded,
//! rate-limited reconciliation of RC1 and RC2 in its simplest form).
//!
//! Every replica tells the peers of its site how far it executed on each status timer; a
//! representative whose `aru` did not move while it waits for the WAN tells the other
//! sites' representatives too. A replica that is further answers, at most once per half
//! status interval per peer and at most `catch_up_max` items per answer: the first chunk of
//! its stable checkpoint's image if the peer is behind it (the peer fetches the rest, SK1 in
//! [`super::checkpoints`]), then the proofs of the ordered batches the
//! peer lacks (self-certifying: a PROPOSAL and the ACCEPTs that ordered it). A
//! representative answering another site's also sends again the PROPOSALs and its own
//! site's ACCEPTs above its `aru`, which that site may have lost.

use super::{SiteOutput, SiteRefusal, SiteReplica};
use crate::ids::{Instant, PeerId, SeqNum};
use crate::service::Service;
use crate::steward::global::GlobalOutput;
use crate::steward::messages::{OrderedProof, SiteMessage};
use crate::steward::payload::{GlobalView, SitePayload};
use bulwark_crypto::threshold::ThresholdScheme;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Default)]
pub(super) struct CatchUp {
    /// When each peer was last answered.
    answered: BTreeMap<PeerId, Instant>,
    /// `aru` at the previous status timer.
    aru_before: SeqNum,
}

impl CatchUp {
    /// Whether the replica is stuck: work outstanding and `aru` unchanged since the last
    /// status timer.
    pub(super) fn stuck(&mut self, aru: SeqNum, outstanding: bool) -> bool {
        let stuck = outstanding && aru == self.aru_before;
        self.aru_before = aru;
        stuck
    }
}

impl<Svc: Service, S: ThresholdScheme> SiteReplica<Svc, S> {
    /// A peer of this site, or another site's representative, executed through `their_aru`
    /// and is in global view `their_gv`.
    pub(super) fn on_status(
        &mut self,
        from: PeerId,
        (their_aru, their_gv): (SeqNum, GlobalView),
        out: &mut Vec<SiteOutput<S>>,
    ) {
        let remote = from.cluster != self.site;
        if remote && !self.is_representative() {
            return;
        }
        let quiet_us = self.params.status_interval_us / 2;
        if self.catch_up.answered.get(&from).is_some_and(|at| self.now.0.saturating_sub(at.0) < quiet_us) {
            return;
        }
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
        if remote {
            let proposals = self.proposals.values().take(limit).map(|p| SiteMessage::Proposal(p.clone()));
            answer.extend(proposals.collect::<Vec<_>>());
            let own = self.site;
            let accepts = self.accepts.values().filter_map(|by_site| by_site.get(&own)).take(limit);
            answer.extend(accepts.map(|a| SiteMessage::Accept(a.clone())).collect::<Vec<_>>());
        }
        if answer.is_empty() {
            return;
        }
        self.catch_up.answered.insert(from, self.now);
        out.extend(answer.into_iter().map(|message| SiteOutput::To { peer: from, message }));
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
