//! Replacing a site's representative (docs/STEWARD.md LV1, LV4; TM1).
//!
//! Every replica runs `Local_T`
//! ([`Timeouts::local_us`](crate::steward::timers::Timeouts::local_us)); executing a new
//! batch restarts it (TM1). When it expires the replica votes for local view `lv + 1` by
//! sharing NEW-REP(site, lv + 1) (TS1: one per `(site, lv)`), and votes again only once a
//! NEW-REP it voted for is preinstalled: local views advance one at a time (LV1). The timer
//! runs even with nothing outstanding: a site whose representative crashed after the last
//! update hears nothing and could not tell it is behind; an idle site rotates its
//! representative every `T1`, and on each new one the site asks the other sites with a
//! request naming its `aru` (RC2, in [`super::catch_up`]).
//!
//! `2f + 1` shares combine into the site's NEW-REP, proof that `f + 1` correct replicas
//! reached `lv + 1`. Every replica that combines it *preinstalls* `lv + 1` (the
//! representative is now member `lv + 1 mod n`), sends it to its site and to the replica of
//! the same position in every other site, which relays it in its own site (RS1's
//! same-position sending, so a faulty representative cannot hide it). A replica of any site
//! takes a NEW-REP only under the site's key and only for a higher local view.
//!
//! At the leader site `Local_T` is `T2` (TM2) and a new representative first rebuilds the
//! site's bindings (LV2, LV3, in [`super::local_constraint`]).

use super::{SiteOutput, SiteRecord, SiteRefusal, SiteReplica, SiteTimer};
use crate::ids::{Instant, PeerId, SeqNum};
use crate::service::Service;
use crate::steward::global::SiteSigned;
use crate::steward::messages::SiteMessage;
use crate::steward::payload::{LocalView, SitePayload};
use bulwark_crypto::threshold::ThresholdScheme;
use bulwark_crypto::Digest;

/// The local-view state of one replica.
#[derive(Debug, Default)]
pub(super) struct LocalViews {
    /// The local view this replica voted for last (at least the preinstalled one).
    voted: LocalView,
    timer_armed: bool,
    /// Local views preinstalled so far (changes of representative this replica saw).
    pub(super) changes: u64,
}

impl LocalViews {
    /// TM1: the replica executed a new batch: `Local_T` starts over.
    pub(super) fn progressed(&mut self) {
        self.timer_armed = false;
    }
}

impl<Svc: Service, S: ThresholdScheme> SiteReplica<Svc, S> {
    /// W6 across a change of representative: an ACCEPT names the local view it was shared
    /// in, so shares made on both sides of the change never combine. In the new local view
    /// this replica shares again, with it, the ACCEPT of every PROPOSAL it holds that its
    /// site has not signed (TS1 allows the same binding again).
    fn accept_again(&mut self, out: &mut Vec<SiteOutput<S>>) {
        let (gv, lv, aru) = (self.global_view(), self.local_view(), self.aru());
        let unsigned: Vec<(SeqNum, Digest)> = self
            .proposals
            .range(aru.next()..)
            .filter(|(seq, _)| self.accepts.get(seq).is_none_or(|by_site| !by_site.contains_key(&self.site)))
            .filter_map(|(seq, proposal)| match proposal.signed.payload {
                SitePayload::Proposal { gv: g, updates, .. } if g == gv => Some((*seq, updates)),
                _ => None,
            })
            .collect();
        for (seq, updates) in unsigned {
            self.sign(SitePayload::Accept { site: self.site, gv, lv, seq, updates }, out);
        }
    }

    /// Arms `Local_T` if this replica waits for something and it is not running.
    pub(super) fn keep_local_timer(&mut self, out: &mut Vec<SiteOutput<S>>) {
        if self.rep_change.timer_armed {
            return;
        }
        self.rep_change.timer_armed = true;
        let timeout_us = self.timeouts.local_timeout_us(self.global_view(), self.at_leader_site());
        out.push(SiteOutput::SetTimer { timer: SiteTimer::Local, at: Instant(self.now.0 + timeout_us) });
    }

    /// LV1: `Local_T` expired.
    pub(super) fn on_local_timer(&mut self, out: &mut Vec<SiteOutput<S>>) {
        self.rep_change.timer_armed = false;
        let preinstalled = self.local_view();
        if self.rep_change.voted > preinstalled {
            // One local view at a time: wait for the vote already cast to be preinstalled.
            return;
        }
        self.rep_change.voted = preinstalled + 1;
        tracing::info!(site = %self.site, replica = %self.id, lv = self.rep_change.voted, "local timeout: voting for a new representative");
        self.sign(SitePayload::NewRep { site: self.site, lv: self.rep_change.voted }, out);
    }

    /// A NEW-REP from a replica of this or another site.
    pub(super) fn on_new_rep(&mut self, from: PeerId, signed: SiteSigned<S>, out: &mut Vec<SiteOutput<S>>) {
        let SitePayload::NewRep { site, lv } = signed.payload else {
            out.push(SiteOutput::Refused(SiteRefusal::BadNewRep));
            return;
        };
        if lv <= self.local_views.get(&site).copied().unwrap_or(0) {
            return;
        }
        match self.site_signature_holds(&signed) {
            None => return out.push(SiteOutput::Refused(SiteRefusal::UnknownPeer)),
            Some(false) => return out.push(SiteOutput::Refused(SiteRefusal::BadNewRep)),
            Some(true) => {}
        }
        let relay = from.cluster != self.site;
        self.preinstall(signed, relay, out);
    }

    /// LV1: `lv` of `site` is preinstalled; with `announce`, this replica tells its site
    /// (and, for its own site's NEW-REP it combined, the same-position replica of every other
    /// site).
    pub(super) fn preinstall(&mut self, signed: SiteSigned<S>, announce: bool, out: &mut Vec<SiteOutput<S>>) {
        let SitePayload::NewRep { site, lv } = signed.payload else { return };
        let known = self.local_views.entry(site).or_default();
        if lv <= *known {
            return;
        }
        *known = lv;
        if site == self.site {
            out.push(SiteOutput::Persist(SiteRecord::LocalView(signed.clone())));
        }
        self.rep_change.changes += 1;
        if announce {
            out.push(SiteOutput::ToSite(SiteMessage::NewRep(signed.clone())));
        }
        if site != self.site {
            return;
        }
        tracing::info!(site = %self.site, replica = %self.id, lv, "new representative preinstalled");
        self.forget_old_views();
        self.rep_change.voted = self.rep_change.voted.max(lv);
        self.rep_change.timer_armed = false;
        if announce {
            self.to_same_positions(SiteMessage::NewRep(signed.clone()), out);
        }
        self.catch_up.new_rep = Some(signed.clone());
        // RC2: its predecessor may have left the site behind: the site asks the other sites.
        self.reconcile(out);
        if self.at_leader_site() {
            self.start_constraint(out);
        } else {
            self.accept_again(out);
        }
        // The updates this replica handed to the old representative, or held as the old
        // representative, go to the new one.
        let held = if self.is_representative() { Vec::new() } else { self.relay.take_pending() };
        for request in self.relay.handed_updates().into_iter().chain(held) {
            self.route_update(request, out);
        }
    }
}
