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
//! **[Bulwark]** A PRE-PREPARE may name any unbound sequence number inside the window, not
//! only the next one: pre-prepares reordered on the LAN are not refused, as in PBFT.

use super::payload::{GlobalView, LocalView};
use crate::batch::Batch;
use crate::ids::{ReplicaId, SeqNum};
use bulwark_crypto::Digest;
use std::collections::BTreeMap;
use std::sync::Arc;

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
    /// This replica is not at the leader site, or not constrained (GV6).
    NotSequencing,
}

/// One sequence number's local round.
#[derive(Debug, Default)]
struct Round {
    /// The batch pre-prepared for it, with the views it was pre-prepared in.
    pre_prepared: Option<(GlobalView, LocalView, Arc<Batch>)>,
    /// Each member's PREPARE: the first one it sent in the latest views it voted in, so
    /// that a member sending many conflicting PREPAREs holds one entry.
    prepares: BTreeMap<ReplicaId, (GlobalView, LocalView, Digest)>,
    certified: bool,
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
        LocalOrder { me, members, prepares_needed: 2 * f, window, rounds: BTreeMap::new(), assigned: SeqNum(0) }
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

    /// The batch pre-prepared at `seq`, if any.
    pub fn batch(&self, seq: SeqNum) -> Option<&Arc<Batch>> {
        self.rounds.get(&seq).and_then(|round| round.pre_prepared.as_ref()).map(|(_, _, batch)| batch)
    }

    /// The pre-prepared rounds not executed: what the representative sends again while the
    /// site is stuck (a replica that lost a PRE-PREPARE cannot prepare or share).
    pub fn pre_prepared(&self) -> impl Iterator<Item = (SeqNum, GlobalView, LocalView, &Arc<Batch>)> {
        self.rounds.iter().filter_map(|(seq, round)| round.pre_prepared.as_ref().map(|(gv, lv, b)| (*seq, *gv, *lv, b)))
    }

    /// The pre-prepared rounds that have no certificate yet.
    pub fn uncertified(&self) -> impl Iterator<Item = (SeqNum, GlobalView, LocalView, &Arc<Batch>)> {
        self.rounds
            .iter()
            .filter(|(_, round)| !round.certified)
            .filter_map(|(seq, round)| round.pre_prepared.as_ref().map(|(gv, lv, b)| (*seq, *gv, *lv, b)))
    }

    /// The PREPAREs this replica sent for rounds not executed yet: sent again while the
    /// site is stuck, since a peer that lost one cannot certify.
    pub fn my_prepares(&self) -> impl Iterator<Item = (SeqNum, GlobalView, LocalView, Digest)> + '_ {
        self.rounds
            .iter()
            .filter_map(|(seq, round)| round.prepares.get(&self.me).map(|(gv, lv, digest)| (*seq, *gv, *lv, *digest)))
    }

    /// W3: a PRE-PREPARE from `from` for `(gv, lv, seq)` in views `views`, above `aru`.
    /// The representative takes its own PRE-PREPARE here too (it sends no PREPARE).
    pub fn on_pre_prepare(
        &mut self,
        from: ReplicaId,
        views: (GlobalView, LocalView),
        aru: SeqNum,
        (gv, lv, seq): (GlobalView, LocalView, SeqNum),
        batch: Arc<Batch>,
    ) -> Result<Sequenced, SequencingRefusal> {
        if from != self.representative(lv) {
            return Err(SequencingRefusal::WrongSender);
        }
        if (gv, lv) != views {
            return Err(SequencingRefusal::WrongView);
        }
        self.check_window(aru, seq)?;
        let digest = batch.digest();
        let round = self.rounds.entry(seq).or_default();
        match &round.pre_prepared {
            Some((g, l, bound)) if (*g, *l) == (gv, lv) => {
                if bound.digest() != digest {
                    return Err(SequencingRefusal::SeqBound);
                }
                // A repeated PRE-PREPARE: the representative did not see our PREPARE.
                return Ok(if from == self.me { Sequenced::Nothing } else { Sequenced::Prepare { seq, digest } });
            }
            _ => {}
        }
        let bound_elsewhere = self.rounds.iter().any(|(s, r)| {
            *s != seq && r.pre_prepared.as_ref().is_some_and(|(g, l, b)| (*g, *l) == (gv, lv) && b.digest() == digest)
        });
        if bound_elsewhere {
            return Err(SequencingRefusal::BatchBound);
        }
        let round = self.rounds.get_mut(&seq).expect("just inserted");
        round.pre_prepared = Some((gv, lv, batch));
        if from != self.me {
            round.prepares.insert(self.me, (gv, lv, digest));
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

    /// W3: a PREPARE from `from`.
    pub fn on_prepare(
        &mut self,
        from: ReplicaId,
        views: (GlobalView, LocalView),
        aru: SeqNum,
        (gv, lv, seq): (GlobalView, LocalView, SeqNum),
        digest: Digest,
    ) -> Result<Sequenced, SequencingRefusal> {
        if self.members.binary_search(&from).is_err() || from == self.representative(lv) {
            return Err(SequencingRefusal::WrongSender);
        }
        if (gv, lv) != views {
            return Err(SequencingRefusal::WrongView);
        }
        self.check_window(aru, seq)?;
        let votes = &mut self.rounds.entry(seq).or_default().prepares;
        match votes.get(&from) {
            Some((g, l, _)) if (*g, *l) >= (gv, lv) => {}
            _ => {
                votes.insert(from, (gv, lv, digest));
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
        let Some((gv, lv, batch)) = &round.pre_prepared else { return false };
        let vote = (*gv, *lv, batch.digest());
        let voters = round.prepares.values().filter(|v| **v == vote).count();
        round.certified = voters >= needed;
        round.certified
    }

    /// Rounds at or below `aru` are done: drop them.
    pub fn executed_through(&mut self, aru: SeqNum) {
        self.rounds = self.rounds.split_off(&aru.next());
    }

    /// Whether a round holds the batch with `digest`.
    pub fn holds(&self, digest: &Digest) -> bool {
        self.rounds.values().any(|round| round.pre_prepared.as_ref().is_some_and(|(_, _, b)| b.digest() == *digest))
    }

    /// The votes of an uncertified round, for diagnosis.
    pub fn describe(&self, seq: SeqNum) -> String {
        let Some(round) = self.rounds.get(&seq) else { return "none".into() };
        let pre = round.pre_prepared.as_ref().map(|(g, l, b)| (*g, *l, b.digest()));
        format!("pre {pre:?} votes {:?}", round.prepares)
    }

    /// Rounds held (for footprint checks).
    pub fn rounds(&self) -> usize {
        self.rounds.len()
    }
}
