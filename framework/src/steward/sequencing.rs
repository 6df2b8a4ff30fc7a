//! Local ordering at the leader site (docs/STEWARD.md W2, W3): the PBFT pre-prepare and
//! prepare phases of one site, whose commit phase is replaced by threshold-signing the
//! PROPOSAL.
//!
//! The representative assigns a sequence number to an update batch and sends PRE-PREPARE;
//! every other replica that accepts it sends PREPARE; a PRE-PREPARE and `2f` matching
//! PREPAREs of distinct replicas other than the representative form a *prepare certificate*,
//! and a replica holding one may share the PROPOSAL (TS1). The rules are PBFT's N1 and P1
//! (see `PBFT.md`) with the views `(gv, lv)` in place of the PBFT view.
//!
//! Votes are signed with the voter's ed25519 key ([`LocalVote`]), so a prepare certificate
//! convinces a replica that did not see it: a new representative rebuilds the site's
//! bindings from them (LV2, LV3). After a change of representative a replica takes
//! PRE-PREPAREs only once *locally constrained* for the new local view: a sequence number
//! the constraint binds takes only its batch ([`LocalOrder::adopt`]).
//!
//! **[Bulwark]** A PRE-PREPARE may name any unbound sequence number inside the window, not
//! only the next one: pre-prepares reordered on the LAN are not refused, as in PBFT.

use super::payload::{GlobalView, LocalView};
use crate::batch::Batch;
use crate::ids::{ReplicaId, SeqNum};
use crate::signing::Scoped;
use bulwark_crypto::{Digest, Signable, Signed, Verified};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A leader-site replica's vote in a local round: the representative's PRE-PREPARE, or
/// another member's PREPARE, of `digest` at `(gv, lv, seq)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LocalVote {
    pub gv: GlobalView,
    pub lv: LocalView,
    pub seq: SeqNum,
    pub digest: Digest,
    pub replica: ReplicaId,
}

impl Signable for LocalVote {
    const DOMAIN: &'static [u8] = b"bulwark/steward/local-vote/v1";
}

impl Scoped for LocalVote {}

/// W3: a PRE-PREPARE and `2f` PREPAREs of distinct other members for one `(gv, lv, seq,
/// digest)`, with the batch: shown to a new representative, it binds the batch (LV2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrepareCertificate {
    /// The representative's vote first.
    pub votes: Vec<Signed<LocalVote>>,
    pub batch: Arc<Batch>,
}

impl PrepareCertificate {
    /// What the certificate binds: the first vote's `(gv, lv, seq, digest)`.
    pub fn binding(&self) -> (GlobalView, LocalView, SeqNum, Digest) {
        let vote = &self.votes[0].payload;
        (vote.gv, vote.lv, vote.seq, vote.digest)
    }
}

/// Why a PRE-PREPARE or PREPARE was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
pub enum SequencingRefusal {
    /// Not from the representative of the local view (a PRE-PREPARE), or from it (a
    /// PREPARE: its PRE-PREPARE is its vote), or from a non-member.
    WrongSender,
    /// For views other than the current ones.
    WrongView,
    /// At or below `aru`, or beyond `aru + window`.
    OutsideWindow,
    /// W3: the sequence number is bound to another batch in these views.
    SeqBound,
    /// W3: the batch is bound to another sequence number in these views.
    BatchBound,
    /// The batch's agreed time is ahead of this replica's clock by more than the skew
    /// allowed, or behind the agreed time of the last batch it executed (PBFT.md N1.f, as
    /// Steward applies it: a PRE-PREPARE sent again after a loss keeps its time).
    TimeOutsideClockSkew,
    /// This replica is not at the leader site, or not constrained (LV3, GV6).
    NotSequencing,
    /// A PRE-PREPARE whose batch is not the one its vote names.
    BatchMismatch,
    /// A vote whose signature does not verify, or that names another sender than its link.
    BadSignature,
}

/// One sequence number's local round.
#[derive(Debug, Default)]
struct Round {
    /// The representative's PRE-PREPARE and its batch.
    pre_prepared: Option<(Verified<LocalVote>, Arc<Batch>)>,
    /// Each member's PREPARE: the first one it sent in the latest views it voted in, so
    /// that a member sending many conflicting PREPAREs holds one entry.
    prepares: BTreeMap<ReplicaId, Verified<LocalVote>>,
    certified: bool,
}

fn views_of(vote: &LocalVote) -> (GlobalView, LocalView) {
    (vote.gv, vote.lv)
}

/// The local rounds of one leader-site replica.
#[derive(Debug)]
pub struct LocalOrder {
    me: ReplicaId,
    /// Sorted.
    members: Vec<ReplicaId>,
    /// `2f`: PREPAREs that, with the PRE-PREPARE, certify.
    prepares_needed: usize,
    window: u64,
    rounds: BTreeMap<SeqNum, Round>,
    /// The highest sequence number this replica assigned, as representative.
    assigned: SeqNum,
    /// The latest prepare certificate of each sequence number not executed.
    certificates: BTreeMap<SeqNum, PrepareCertificate>,
    /// The views this replica is locally constrained in (LV3), if any: it takes
    /// PRE-PREPAREs only in them.
    constrained: Option<(GlobalView, LocalView)>,
    /// LV3: what the constraint binds above `aru`, by sequence number.
    bound: BTreeMap<SeqNum, Digest>,
}

/// What taking a PRE-PREPARE or PREPARE produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sequenced {
    /// Nothing new (a PREPARE still short of a certificate, a repeated message).
    Nothing,
    /// W3: send PREPARE for `(seq, digest)`.
    Prepare { seq: SeqNum, digest: Digest },
    /// W3: a prepare certificate formed for `(seq, digest)`: share the PROPOSAL.
    Certified { seq: SeqNum, digest: Digest },
    /// Both: the PRE-PREPARE completed a certificate with PREPAREs that came before it.
    PrepareCertified { seq: SeqNum, digest: Digest },
}

impl LocalOrder {
    pub fn new(me: ReplicaId, mut members: Vec<ReplicaId>, window: u64) -> Self {
        members.sort();
        let f = (members.len() - 1) / 3;
        LocalOrder {
            me,
            members,
            prepares_needed: 2 * f,
            window,
            rounds: BTreeMap::new(),
            assigned: SeqNum(0),
            certificates: BTreeMap::new(),
            constrained: Some((0, 0)),
            bound: BTreeMap::new(),
        }
    }

    /// The representative of local view `lv`: position `lv mod n` of the sorted members.
    pub fn representative(&self, lv: LocalView) -> ReplicaId {
        self.members[(lv % self.members.len() as u64) as usize]
    }

    /// W2, as representative: the sequence number for the next batch, if the window above
    /// `aru` has room.
    pub fn next_seq(&mut self, aru: SeqNum) -> Option<SeqNum> {
        let next = self.assigned.max(aru).next();
        (next.0 <= aru.0.saturating_add(self.window)).then(|| {
            self.assigned = next;
            next
        })
    }

    /// The digest pre-prepared at `seq` in `views`, if any.
    pub fn pre_prepared_in(&self, views: (GlobalView, LocalView), seq: SeqNum) -> Option<Digest> {
        let (vote, _) = self.rounds.get(&seq)?.pre_prepared.as_ref()?;
        (views_of(vote) == views).then_some(vote.digest)
    }

    /// The batch pre-prepared at `seq`, if any.
    pub fn batch(&self, seq: SeqNum) -> Option<&Arc<Batch>> {
        self.rounds.get(&seq).and_then(|round| round.pre_prepared.as_ref()).map(|(_, batch)| batch)
    }

    /// The pre-prepared rounds not executed, with their batches: what the representative
    /// sends again while the site is stuck (a replica that lost a PRE-PREPARE cannot prepare
    /// or share).
    pub fn pre_prepared(&self) -> impl Iterator<Item = (&Verified<LocalVote>, &Arc<Batch>)> {
        self.rounds.values().filter_map(|round| round.pre_prepared.as_ref().map(|(vote, batch)| (vote, batch)))
    }

    /// The pre-prepared rounds that have no certificate yet.
    pub fn uncertified(&self) -> impl Iterator<Item = (&Verified<LocalVote>, &Arc<Batch>)> {
        self.rounds
            .values()
            .filter(|round| !round.certified)
            .filter_map(|round| round.pre_prepared.as_ref().map(|(vote, batch)| (vote, batch)))
    }

    /// The PREPAREs this replica sent for rounds not executed yet: sent again while the
    /// site is stuck, since a peer that lost one cannot certify.
    pub fn my_prepares(&self) -> impl Iterator<Item = &Verified<LocalVote>> + '_ {
        self.rounds.values().filter_map(|round| round.prepares.get(&self.me))
    }

    /// The latest prepare certificate of each sequence number above `aru` (LV2).
    pub fn certificates(&self) -> &BTreeMap<SeqNum, PrepareCertificate> {
        &self.certificates
    }

    /// LV1: the replica preinstalled a new local view: it takes no PRE-PREPARE until a
    /// constraint for that view is adopted.
    pub fn unconstrain(&mut self) {
        self.constrained = None;
    }

    /// Whether this replica is locally constrained in `views` (LV3, GV6).
    pub fn is_constrained(&self, views: (GlobalView, LocalView)) -> bool {
        self.constrained == Some(views)
    }

    /// LV3: adopts the union of a constraint bundle for `views`: above `base`, the rounds of
    /// earlier views are dropped, the certificates become the union's, and a PRE-PREPARE
    /// at a sequence number the union binds is taken only for its batch. A representative
    /// assigns fresh sequence numbers above the highest one bound.
    pub fn adopt(
        &mut self,
        views: (GlobalView, LocalView),
        base: SeqNum,
        bound: BTreeMap<SeqNum, Digest>,
        certificates: Vec<PrepareCertificate>,
    ) {
        // Votes of the adopted views that came before the bundle still count.
        for round in self.rounds.range_mut(base.next()..).map(|(_, round)| round) {
            if round.pre_prepared.as_ref().is_some_and(|(vote, _)| views_of(vote) != views) {
                round.pre_prepared = None;
                round.certified = false;
            }
            round.prepares.retain(|_, vote| views_of(vote) == views);
        }
        self.certificates.retain(|seq, _| *seq <= base);
        for certificate in certificates {
            let (_, _, seq, _) = certificate.binding();
            self.certificates.insert(seq, certificate);
        }
        // A representative that restarted may have pre-prepared in these views already:
        // those sequence numbers are taken too.
        let highest_bound = bound.keys().next_back().copied().unwrap_or(base).max(base);
        self.assigned = highest_bound.max(self.my_pre_prepares(views).max().unwrap_or(base));
        self.bound = bound;
        self.constrained = Some(views);
    }

    /// The sequence numbers this replica pre-prepared in `views`, as their representative.
    fn my_pre_prepares(&self, views: (GlobalView, LocalView)) -> impl Iterator<Item = SeqNum> + '_ {
        self.rounds.iter().filter_map(move |(seq, round)| {
            let (vote, _) = round.pre_prepared.as_ref()?;
            (vote.replica == self.me && views_of(vote) == views).then_some(*seq)
        })
    }

    /// LV3: the batch the adopted constraint binds to `seq`, if any.
    pub fn bound_to(&self, seq: SeqNum) -> Option<Digest> {
        self.bound.get(&seq).copied()
    }

    /// LV3, as the new representative: the sequence numbers above `aru` and below the
    /// highest one the constraint binds that it leaves free and that this replica did not
    /// pre-prepare itself in these views before a restart (filled with empty batches, so
    /// that execution does not wait for them).
    pub fn gaps(&self, aru: SeqNum) -> Vec<SeqNum> {
        let Some(last) = self.bound.keys().next_back() else { return Vec::new() };
        let mine: Vec<SeqNum> = self.constrained.map(|views| self.my_pre_prepares(views).collect()).unwrap_or_default();
        (aru.0 + 1..last.0).map(SeqNum).filter(|seq| !self.bound.contains_key(seq) && !mine.contains(seq)).collect()
    }

    /// W3: a PRE-PREPARE (the representative's signed vote and its batch) in views `views`,
    /// above `aru`; `sign` signs this replica's PREPARE if it takes it (then
    /// [`my_prepare`](Self::my_prepare) is what to send). The representative takes its own
    /// PRE-PREPARE here too (it sends no PREPARE).
    pub fn on_pre_prepare(
        &mut self,
        vote: Verified<LocalVote>,
        views: (GlobalView, LocalView),
        aru: SeqNum,
        batch: Arc<Batch>,
        sign: impl FnOnce(LocalVote) -> Verified<LocalVote>,
    ) -> Result<Sequenced, SequencingRefusal> {
        let LocalVote { gv, lv, seq, digest, replica: from } = *vote;
        if from != self.representative(lv) {
            return Err(SequencingRefusal::WrongSender);
        }
        if (gv, lv) != views {
            return Err(SequencingRefusal::WrongView);
        }
        if !self.is_constrained(views) {
            return Err(SequencingRefusal::NotSequencing);
        }
        if batch.digest() != digest {
            return Err(SequencingRefusal::BatchMismatch);
        }
        self.check_window(aru, seq)?;
        if self.bound.get(&seq).is_some_and(|bound| *bound != digest) {
            return Err(SequencingRefusal::SeqBound);
        }
        let round = self.rounds.entry(seq).or_default();
        // A PREPARE this replica signed before a restart binds it as its PRE-PREPARE would.
        if round.prepares.get(&self.me).is_some_and(|mine| views_of(mine) == (gv, lv) && mine.digest != digest) {
            return Err(SequencingRefusal::SeqBound);
        }
        if let Some((bound, _)) = &round.pre_prepared {
            if views_of(bound) == (gv, lv) {
                if bound.digest != digest {
                    return Err(SequencingRefusal::SeqBound);
                }
                // A repeated PRE-PREPARE: the representative did not see our PREPARE.
                return Ok(if from == self.me { Sequenced::Nothing } else { Sequenced::Prepare { seq, digest } });
            }
        }
        // An empty batch binds nothing: the representative fills gaps with them. A PREPARE
        // this replica signed (restored after a restart without its PRE-PREPARE) binds too.
        let here = |v: &LocalVote| views_of(v) == (gv, lv) && v.digest == digest;
        let bound_elsewhere = !batch.is_empty()
            && (self.bound.iter().any(|(s, d)| *s != seq && *d == digest)
                || self.rounds.iter().any(|(s, r)| {
                    *s != seq
                        && (r.pre_prepared.as_ref().is_some_and(|(v, _)| here(v))
                            || r.prepares.get(&self.me).is_some_and(|v| here(v)))
                }));
        if bound_elsewhere {
            return Err(SequencingRefusal::BatchBound);
        }
        let mine = LocalVote { replica: self.me, ..*vote };
        let round = self.rounds.get_mut(&seq).expect("just inserted");
        round.pre_prepared = Some((vote, batch));
        round.certified = false;
        if from != self.me {
            round.prepares.insert(self.me, sign(mine));
        }
        // PREPAREs that came before the PRE-PREPARE may certify it at once; this replica's
        // PREPARE is still owed to the others.
        Ok(match (from == self.me, self.check_certified(seq)) {
            (true, true) => Sequenced::Certified { seq, digest },
            (true, false) => Sequenced::Nothing,
            (false, true) => Sequenced::PrepareCertified { seq, digest },
            (false, false) => Sequenced::Prepare { seq, digest },
        })
    }

    /// This replica's PREPARE at `seq`, to send.
    pub fn my_prepare(&self, seq: SeqNum) -> Option<&Verified<LocalVote>> {
        self.rounds.get(&seq).and_then(|round| round.prepares.get(&self.me))
    }

    /// W3: another member's signed PREPARE.
    pub fn on_prepare(
        &mut self,
        vote: Verified<LocalVote>,
        views: (GlobalView, LocalView),
        aru: SeqNum,
    ) -> Result<Sequenced, SequencingRefusal> {
        let LocalVote { gv, lv, seq, digest, replica: from } = *vote;
        if self.members.binary_search(&from).is_err() || from == self.representative(lv) {
            return Err(SequencingRefusal::WrongSender);
        }
        if (gv, lv) != views {
            return Err(SequencingRefusal::WrongView);
        }
        self.check_window(aru, seq)?;
        let votes = &mut self.rounds.entry(seq).or_default().prepares;
        match votes.get(&from) {
            Some(held) if views_of(held) >= (gv, lv) => {}
            _ => {
                votes.insert(from, vote);
            }
        }
        Ok(if self.check_certified(seq) { Sequenced::Certified { seq, digest } } else { Sequenced::Nothing })
    }

    fn check_window(&self, aru: SeqNum, seq: SeqNum) -> Result<(), SequencingRefusal> {
        if seq <= aru || seq.0 > aru.0.saturating_add(self.window) {
            return Err(SequencingRefusal::OutsideWindow);
        }
        Ok(())
    }

    /// Whether round `seq` just became certified.
    fn check_certified(&mut self, seq: SeqNum) -> bool {
        let needed = self.prepares_needed;
        let Some(round) = self.rounds.get_mut(&seq) else { return false };
        if round.certified {
            return false;
        }
        let Some((pre_prepare, batch)) = &round.pre_prepared else { return false };
        let same =
            |v: &LocalVote| (v.gv, v.lv, v.seq, v.digest) == (pre_prepare.gv, pre_prepare.lv, seq, pre_prepare.digest);
        let matching: Vec<Signed<LocalVote>> =
            round.prepares.values().filter(|v| same(v)).map(|v| v.signed().clone()).collect();
        round.certified = matching.len() >= needed;
        if round.certified {
            let mut votes = vec![pre_prepare.signed().clone()];
            votes.extend(matching.into_iter().take(needed));
            self.certificates.insert(seq, PrepareCertificate { votes, batch: batch.clone() });
        }
        round.certified
    }

    /// A vote this replica signed before it crashed (see `site::durable`): its
    /// PRE-PREPARE, with the batch, as the representative of the vote's views, or its
    /// PREPARE. It binds the round as when it was signed.
    pub fn restore_vote(&mut self, vote: Verified<LocalVote>, batch: Option<Arc<Batch>>) {
        if vote.replica != self.me {
            return;
        }
        let seq = vote.seq;
        let representative = self.representative(vote.lv);
        let round = self.rounds.entry(seq).or_default();
        match batch {
            Some(batch) if vote.replica == representative => {
                round.pre_prepared = Some((vote, batch));
                self.assigned = self.assigned.max(seq);
            }
            _ => {
                round.prepares.insert(self.me, vote);
            }
        }
    }

    /// A prepare certificate this replica held before it crashed (LV2 reports show it).
    pub fn restore_certificate(&mut self, certificate: PrepareCertificate) {
        let (_, _, seq, _) = certificate.binding();
        self.certificates.insert(seq, certificate);
    }

    /// Rounds at or below `aru` are done: drop them.
    pub fn executed_through(&mut self, aru: SeqNum) {
        self.rounds = self.rounds.split_off(&aru.next());
        self.certificates = self.certificates.split_off(&aru.next());
        self.bound = self.bound.split_off(&aru.next());
    }

    /// Whether a round holds the batch with `digest`.
    pub fn holds(&self, digest: &Digest) -> bool {
        self.rounds.values().any(|round| round.pre_prepared.as_ref().is_some_and(|(v, _)| v.digest == *digest))
    }

    /// The votes of an uncertified round, for diagnosis.
    pub fn describe(&self, seq: SeqNum) -> String {
        let Some(round) = self.rounds.get(&seq) else { return "none".into() };
        let pre = round.pre_prepared.as_ref().map(|(v, _)| **v);
        let votes: Vec<_> = round.prepares.values().map(|v| **v).collect();
        format!("pre {pre:?} votes {votes:?}")
    }

    /// Rounds held (for footprint checks).
    pub fn rounds(&self) -> usize {
        self.rounds.len()
    }
}
