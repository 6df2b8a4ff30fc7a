//! Byzantine replicas of a Steward site, for the multi-site simulator. Each runs the
//! correct role inside and bends what it sends:
//!
//! * strategies of non-representatives, which a site must survive (STEWARD.md TS1–TS3, W3,
//!   §9): [`SiteStrategy::Silent`], [`SiteStrategy::BadShares`],
//!   [`SiteStrategy::ConflictingShares`], [`SiteStrategy::EquivocatingVotes`],
//!   [`SiteStrategy::Replay`], [`SiteStrategy::Flooding`];
//! * strategies of a non-leader site's representative (STEWARD.md W4, LV1):
//!   [`SiteStrategy::DroppingRepresentative`], [`SiteStrategy::AlteringRepresentative`],
//!   [`SiteStrategy::ReplayingRepresentative`], [`SiteStrategy::DelayingRepresentative`];
//! * strategies of the leader site's representative (STEWARD.md W2, LV2, LV3):
//!   [`SiteStrategy::ConflictingPrePrepares`], and the four above at the leader site, each
//!   stalling its site until `Local_T` replaces it or only slowing it;
//! * two that collude beyond the model for the negative control GI-N:
//!   [`SiteStrategy::EquivocatingRepresentative`] (the leader site's representative sends
//!   two batches for one sequence number, each to part of the site) and
//!   [`SiteStrategy::Accomplice`] (prepares and shares every PRE-PREPARE it sees). Together,
//!   `f + 1` of them make the site sign two PROPOSALs for one `(gv, seq)`.

use crate::batch::Batch;
use crate::ids::{ClusterId, PeerId, ReplicaId, SeqNum};
use crate::service::Service;
use crate::steward::global::SiteSigned;
use crate::steward::messages::{Proposal, SiteMessage};
use crate::steward::payload::SitePayload;
use crate::steward::sequencing::LocalVote;
use crate::steward::site::{SiteInput, SiteOutput, SiteReplica};
use bulwark_crypto::threshold::{ShareCollector, ThresholdScheme};
use bulwark_crypto::{Digest, DigestBuilder};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// How a Byzantine replica of a site behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "kebab-case")]
pub enum SiteStrategy {
    /// Sends nothing.
    Silent,
    /// Every share it sends is over another message (TS3: blamed, the site still signs).
    BadShares,
    /// Besides its honest shares, shares PROPOSALs or ACCEPTs that bind other batches to
    /// the sequence numbers it sees (TS1 at the others: never combined).
    ConflictingShares,
    /// Sends PREPAREs and shares for its honest vote to half of its site and for a made-up
    /// batch to the other half.
    EquivocatingVotes,
    /// Sends again, later and to its whole site, messages it received.
    Replay,
    /// Negative control: as the leader site's representative, pre-prepares two batches for
    /// each sequence number, each to part of the site, and sends each PROPOSAL its site
    /// signs to part of the other sites.
    EquivocatingRepresentative,
    /// Negative control: prepares and shares every PRE-PREPARE it receives.
    Accomplice,
    /// As a non-leader site's representative: relays nothing into its site and sends
    /// nothing to other sites (LV1 replaces it).
    DroppingRepresentative,
    /// As a non-leader site's representative: alters what it relays and sends (a PROPOSAL's
    /// batch, an ACCEPT's binding): refused by every correct replica (W5, TS4).
    AlteringRepresentative,
    /// As a non-leader site's representative: sends every PROPOSAL and ACCEPT again, later,
    /// to its site and to the other sites (harmless: each is taken once).
    ReplayingRepresentative,
    /// As a site's representative: holds every PROPOSAL and ACCEPT it would send or relay
    /// until its next status timer, then sends them all (in order). Progress slows by up
    /// to a status interval per hop, which is shorter than `Local_T`, so the site is not
    /// silent and need not replace it. Holds at most [`DELAYED_MAX`] messages; more push
    /// the oldest out early.
    DelayingRepresentative,
    /// As the leader site's representative: pre-prepares a different batch for each
    /// sequence number to each member (the same updates at other times), so that no
    /// certificate forms (W3: at most one could) and `Local_T` replaces it (LV1–LV3).
    ConflictingPrePrepares,
    /// On every status timer, besides its honest messages: asks its site and the
    /// same-position replica of every other site to catch it up from scratch (a status at
    /// `aru` 0 in view 0) and shares NEW-REPs for eight local views far ahead. Answers are
    /// rate-limited per peer, and the shares' collections bounded per member.
    Flooding,
}

impl SiteStrategy {
    /// The strategies a site must survive with up to `f` of them, none its representative.
    pub fn tolerated() -> [SiteStrategy; 6] {
        use SiteStrategy::*;
        [Silent, BadShares, ConflictingShares, EquivocatingVotes, Replay, Flooding]
    }

    /// The strategies of a non-leader site's representative that its site and the others
    /// must survive.
    pub fn representative() -> [SiteStrategy; 4] {
        use SiteStrategy::*;
        [DroppingRepresentative, AlteringRepresentative, ReplayingRepresentative, DelayingRepresentative]
    }

    /// The strategies of the leader site's representative that the system must survive.
    pub fn leader_representative() -> [SiteStrategy; 5] {
        use SiteStrategy::*;
        [
            ConflictingPrePrepares,
            DroppingRepresentative,
            AlteringRepresentative,
            ReplayingRepresentative,
            DelayingRepresentative,
        ]
    }
}

/// PROPOSALs and ACCEPTs a delaying representative holds at most.
pub const DELAYED_MAX: usize = 256;

fn proposal_or_accept<S: ThresholdScheme>(output: &SiteOutput<S>) -> bool {
    match output {
        SiteOutput::ToSite(message) | SiteOutput::To { message, .. } => {
            matches!(message, SiteMessage::Proposal(_) | SiteMessage::Accept(_))
        }
        _ => false,
    }
}

/// A Byzantine replica of a site.
pub struct ByzantineSite<Svc: Service, S: ThresholdScheme> {
    inner: SiteReplica<Svc, S>,
    strategy: SiteStrategy,
    secret: S::SecretShare,
    key: Arc<S::PublicKey>,
    members: Vec<ReplicaId>,
    sites: Vec<ClusterId>,
    replayable: VecDeque<SiteMessage<S>>,
    /// What the delaying representative holds until its next status timer.
    delayed: VecDeque<SiteOutput<S>>,
    /// Made-up PROPOSALs it collects shares for (the equivocating representative).
    forged: BTreeMap<Digest, (SitePayload, Arc<Batch>, ShareCollector<S>)>,
    sent: u64,
}

impl<Svc: Service, S: ThresholdScheme> std::fmt::Debug for ByzantineSite<Svc, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ByzantineSite({:?}, {:?})", self.inner, self.strategy)
    }
}

fn made_up(seq: SeqNum, salt: &[u8]) -> Digest {
    DigestBuilder::new(b"bulwark/sim/made-up-batch").update(salt).update_u64(seq.0).finish()
}

impl<Svc: Service, S: ThresholdScheme> ByzantineSite<Svc, S> {
    /// The replica `inner` bent by `strategy`; `secret` is a copy of its secret share.
    pub fn new(inner: SiteReplica<Svc, S>, strategy: SiteStrategy, secret: S::SecretShare) -> Self {
        let own = &inner.sites()[&inner.site()];
        let (key, members) = (own.key.clone(), own.members.clone());
        let sites = inner.sites().keys().copied().collect();
        ByzantineSite {
            inner,
            strategy,
            secret,
            key,
            members,
            sites,
            replayable: VecDeque::new(),
            delayed: VecDeque::new(),
            forged: BTreeMap::new(),
            sent: 0,
        }
    }

    /// The correct role inside.
    pub fn inner(&self) -> &SiteReplica<Svc, S> {
        &self.inner
    }

    pub fn strategy(&self) -> SiteStrategy {
        self.strategy
    }

    /// Messages it sent.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    fn me(&self) -> PeerId {
        PeerId::new(self.inner.site(), self.inner.id())
    }

    fn share_of(&self, payload: SitePayload) -> SiteMessage<S> {
        let message = payload.message();
        SiteMessage::Share { message, share: S::sign_share(&self.secret, &message) }
    }

    fn peers(&self) -> Vec<PeerId> {
        let me = self.me();
        self.members.iter().map(|id| PeerId::new(me.cluster, *id)).filter(|p| *p != me).collect()
    }

    pub fn start(&mut self, now: crate::ids::Instant) -> Vec<SiteOutput<S>> {
        self.inner.start(now)
    }

    pub fn handle(&mut self, input: SiteInput<S>, now: crate::ids::Instant) -> Vec<SiteOutput<S>> {
        let mut extra = Vec::new();
        let status_timer = matches!(input, SiteInput::Timer(crate::steward::site::SiteTimer::Status));
        if let SiteInput::Message { from, message } = &input {
            self.observe(message, &mut extra);
            if let (SiteStrategy::EquivocatingRepresentative, SiteMessage::Share { message, share }) =
                (self.strategy, message)
            {
                extra.extend(self.on_share(from.replica, message, share));
            }
        }
        let outputs = self.inner.handle(input, now);
        let mut sent = Vec::new();
        if self.strategy == SiteStrategy::DelayingRepresentative && status_timer {
            sent.extend(self.delayed.drain(..));
        }
        for output in outputs {
            self.bend(output, &mut sent);
        }
        sent.extend(extra);
        if self.strategy == SiteStrategy::Flooding && status_timer {
            self.flood(&mut sent);
        }
        if self.strategy == SiteStrategy::Silent {
            sent.retain(|o| matches!(o, SiteOutput::SetTimer { .. }));
        }
        self.sent += sent.iter().filter(|o| matches!(o, SiteOutput::ToSite(_) | SiteOutput::To { .. })).count() as u64;
        sent
    }

    /// Flooding: a status from scratch to its site and to its same-position peers, and
    /// shares of NEW-REPs for local views far ahead of its own (its rate is its status
    /// timer's: an attacker's bandwidth is finite, and the simulator's queue too).
    fn flood(&mut self, sent: &mut Vec<SiteOutput<S>>) {
        let me = self.me();
        sent.push(SiteOutput::ToSite(SiteMessage::Status { aru: SeqNum(0), gv: 0 }));
        let position = self.members.binary_search(&me.replica).unwrap_or(0);
        for site in self.sites.iter().filter(|s| **s != me.cluster) {
            let peer = PeerId::new(*site, ReplicaId(position as u32));
            sent.push(SiteOutput::To { peer, message: SiteMessage::Status { aru: SeqNum(0), gv: 0 } });
        }
        for k in 0..8 {
            let lv = self.inner.local_view() + 100 + (self.sent + k) % 64;
            sent.push(SiteOutput::ToSite(self.share_of(SitePayload::NewRep { site: me.cluster, lv })));
        }
    }

    /// Reacts to what it receives, besides the inner role.
    fn observe(&mut self, message: &SiteMessage<S>, extra: &mut Vec<SiteOutput<S>>) {
        let me = self.me();
        match (self.strategy, message) {
            (SiteStrategy::Replay, message) => {
                self.replayable.push_back(message.clone());
                if self.replayable.len() > 64 {
                    self.replayable.pop_front();
                }
            }
            (SiteStrategy::ConflictingShares, SiteMessage::PrePrepare { vote, .. }) => {
                let LocalVote { gv, lv, seq, .. } = vote.payload;
                let payload = SitePayload::Proposal { site: me.cluster, gv, lv, seq, updates: made_up(seq, b"c") };
                extra.push(SiteOutput::ToSite(self.share_of(payload)));
            }
            (SiteStrategy::ConflictingShares, SiteMessage::Proposal(proposal)) => {
                if let SitePayload::Proposal { gv, lv, seq, .. } = proposal.signed.payload {
                    let updates = made_up(seq, b"c");
                    let payload = SitePayload::Accept { site: me.cluster, gv, lv, seq, updates };
                    extra.push(SiteOutput::ToSite(self.share_of(payload)));
                }
            }
            (SiteStrategy::Accomplice, SiteMessage::PrePrepare { vote, .. }) => {
                let LocalVote { gv, lv, seq, digest, .. } = vote.payload;
                let mine = self.inner.sign_vote(LocalVote { replica: me.replica, ..vote.payload });
                extra.push(SiteOutput::ToSite(SiteMessage::Prepare(mine.into_signed())));
                let payload = SitePayload::Proposal { site: me.cluster, gv, lv, seq, updates: digest };
                extra.push(SiteOutput::ToSite(self.share_of(payload)));
            }
            _ => {}
        }
    }

    /// The equivocating representative gathers the shares of its made-up PROPOSALs, and
    /// sends each it completes to the second half of the other sites.
    fn on_share(&mut self, from: ReplicaId, message: &Digest, share: &S::Share) -> Vec<SiteOutput<S>> {
        let Ok(index) = self.members.binary_search(&from) else { return Vec::new() };
        let Some((payload, batch, collector)) = self.forged.get_mut(message) else { return Vec::new() };
        let _ = collector.add(index as u32, share.clone());
        let Some(signature) = collector.try_combine().signature else { return Vec::new() };
        let (payload, batch) = (*payload, batch.clone());
        self.forged.remove(message);
        let proposal = Proposal { signed: SiteSigned { payload, signature }, batch };
        let others: Vec<ClusterId> = self.sites.iter().copied().filter(|s| *s != self.me().cluster).collect();
        others[others.len() / 2..]
            .iter()
            .map(|site| SiteOutput::To {
                peer: self.inner.representative_of(*site),
                message: SiteMessage::Proposal(proposal.clone()),
            })
            .collect()
    }

    /// Bends one output of the inner role.
    fn bend(&mut self, output: SiteOutput<S>, sent: &mut Vec<SiteOutput<S>>) {
        let me = self.me();
        match (self.strategy, output) {
            (SiteStrategy::BadShares, SiteOutput::ToSite(SiteMessage::Share { message, .. })) => {
                let other = DigestBuilder::new(b"bulwark/sim/bad-share").update(&message.0).finish();
                sent.push(SiteOutput::ToSite(SiteMessage::Share {
                    message,
                    share: S::sign_share(&self.secret, &other),
                }));
            }
            (SiteStrategy::EquivocatingVotes, SiteOutput::ToSite(SiteMessage::Prepare(vote))) => {
                let peers = self.peers();
                let (honest, lying) = peers.split_at(peers.len() / 2);
                for peer in honest {
                    sent.push(SiteOutput::To { peer: *peer, message: SiteMessage::Prepare(vote.clone()) });
                }
                let digest = made_up(vote.payload.seq, b"e");
                let lie = self.inner.sign_vote(LocalVote { digest, ..vote.payload }).into_signed();
                for peer in lying {
                    sent.push(SiteOutput::To { peer: *peer, message: SiteMessage::Prepare(lie.clone()) });
                }
            }
            (SiteStrategy::EquivocatingVotes, SiteOutput::ToSite(SiteMessage::Share { message, share })) => {
                let peers = self.peers();
                let (honest, lying) = peers.split_at(peers.len() / 2);
                for peer in honest {
                    let message = SiteMessage::Share { message, share: share.clone() };
                    sent.push(SiteOutput::To { peer: *peer, message });
                }
                let other = DigestBuilder::new(b"bulwark/sim/equivocation").update(&message.0).finish();
                for peer in lying {
                    let message = SiteMessage::Share { message: other, share: S::sign_share(&self.secret, &other) };
                    sent.push(SiteOutput::To { peer: *peer, message });
                }
            }
            (SiteStrategy::Replay, output @ SiteOutput::ToSite(_)) => {
                sent.push(output);
                if let Some(old) = self.replayable.pop_front() {
                    sent.push(SiteOutput::ToSite(old));
                }
            }
            (SiteStrategy::EquivocatingRepresentative, SiteOutput::ToSite(SiteMessage::PrePrepare { vote, batch })) => {
                // Two batches for one sequence number: the same updates at another time.
                let LocalVote { gv, lv, seq, .. } = vote.payload;
                let other = Arc::new(Batch::timed(batch.commands().to_vec(), batch.time_us() + 1));
                let other_vote =
                    self.inner.sign_vote(LocalVote { digest: other.digest(), ..vote.payload }).into_signed();
                let peers = self.peers();
                let (first, second) = peers.split_at(peers.len().div_ceil(2));
                for peer in first {
                    let message = SiteMessage::PrePrepare { vote: vote.clone(), batch: batch.clone() };
                    sent.push(SiteOutput::To { peer: *peer, message });
                }
                for peer in second {
                    let message = SiteMessage::PrePrepare { vote: other_vote.clone(), batch: other.clone() };
                    sent.push(SiteOutput::To { peer: *peer, message });
                }
                // The accomplice (the first peer) gets both.
                if let Some(accomplice) = first.first() {
                    let message = SiteMessage::PrePrepare { vote: other_vote.clone(), batch: other.clone() };
                    sent.push(SiteOutput::To { peer: *accomplice, message });
                }
                let payload = SitePayload::Proposal { site: me.cluster, gv, lv, seq, updates: other.digest() };
                let message = payload.message();
                let mut collector = ShareCollector::new(self.key.clone(), message);
                let index = self.members.binary_search(&me.replica).expect("a member") as u32;
                let share = S::sign_share(&self.secret, &message);
                let _ = collector.add(index, share.clone());
                self.forged.insert(message, (payload, other, collector));
                sent.push(SiteOutput::ToSite(SiteMessage::Share { message, share }));
            }
            (SiteStrategy::ConflictingPrePrepares, SiteOutput::ToSite(SiteMessage::PrePrepare { vote, batch })) => {
                for (k, peer) in self.peers().into_iter().enumerate() {
                    let other = Arc::new(Batch::timed(batch.commands().to_vec(), batch.time_us() + 1 + k as u64));
                    let signed = self.inner.sign_vote(LocalVote { digest: other.digest(), ..vote.payload });
                    let message = SiteMessage::PrePrepare { vote: signed.into_signed(), batch: other };
                    sent.push(SiteOutput::To { peer, message });
                }
            }
            (SiteStrategy::EquivocatingRepresentative, SiteOutput::To { peer, message: SiteMessage::Proposal(p) }) => {
                // Its honest PROPOSAL goes to the first half of the other sites only.
                let others: Vec<ClusterId> = self.sites.iter().copied().filter(|s| *s != me.cluster).collect();
                if others[..others.len() / 2].contains(&peer.cluster) {
                    sent.push(SiteOutput::To { peer, message: SiteMessage::Proposal(p) });
                }
            }
            (SiteStrategy::DroppingRepresentative, SiteOutput::To { peer, .. }) if peer.cluster != me.cluster => {}
            (
                SiteStrategy::DroppingRepresentative,
                SiteOutput::ToSite(SiteMessage::Proposal(_) | SiteMessage::Accept(_) | SiteMessage::Checkpoint(_)),
            ) => {}
            (SiteStrategy::AlteringRepresentative, SiteOutput::ToSite(message)) => {
                sent.push(SiteOutput::ToSite(Self::altered(message)))
            }
            (SiteStrategy::AlteringRepresentative, SiteOutput::To { peer, message }) if peer.cluster != me.cluster => {
                sent.push(SiteOutput::To { peer, message: Self::altered(message) })
            }
            (SiteStrategy::DelayingRepresentative, output) if proposal_or_accept(&output) => {
                self.delayed.push_back(output);
                if self.delayed.len() > DELAYED_MAX {
                    sent.extend(self.delayed.pop_front());
                }
            }
            (SiteStrategy::ReplayingRepresentative, output) => {
                if let SiteOutput::ToSite(message) | SiteOutput::To { message, .. } = &output {
                    if matches!(message, SiteMessage::Proposal(_) | SiteMessage::Accept(_)) {
                        self.replayable.push_back(message.clone());
                        if self.replayable.len() > 64 {
                            self.replayable.pop_front();
                        }
                    }
                }
                sent.push(output);
                if let Some(old) = self.replayable.pop_front() {
                    sent.push(SiteOutput::ToSite(old.clone()));
                    for site in self.sites.iter().filter(|s| **s != me.cluster) {
                        let peer = self.inner.representative_of(*site);
                        sent.push(SiteOutput::To { peer, message: old.clone() });
                    }
                }
            }
            (_, output) => sent.push(output),
        }
    }

    /// A PROPOSAL with one update fewer in its batch, an ACCEPT binding another batch;
    /// anything else unchanged.
    fn altered(message: SiteMessage<S>) -> SiteMessage<S> {
        match message {
            SiteMessage::Proposal(mut proposal) => {
                let commands = proposal.batch.commands().iter().skip(1).cloned().collect();
                proposal.batch = Arc::new(Batch::timed(commands, proposal.batch.time_us()));
                SiteMessage::Proposal(proposal)
            }
            SiteMessage::Accept(mut signed) => {
                if let SitePayload::Accept { updates, .. } = &mut signed.payload {
                    *updates = DigestBuilder::new(b"bulwark/sim/altered").update(&updates.0).finish();
                }
                SiteMessage::Accept(signed)
            }
            other => other,
        }
    }
}
