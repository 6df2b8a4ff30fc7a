//! What the other members claim to have reached, and what a replica may conclude from it.
//!
//! A member claims a sequence number with every vote, CHECKPOINT and STATUS it sends. One
//! member's word may be a Byzantine lie: checkpoints far ahead from one member would keep
//! every correct replica reporting itself stuck, and its peers answering, at every tick.
//! So a replica believes a sequence number exists only on its own evidence (its primary's
//! pre-prepare, a NEW-VIEW) or on the word of `f + 1` members, one of them correct.

use crate::ids::{ReplicaId, SeqNum};
use crate::membership::{MemberMap, MembershipHandle};
use crate::roles::backup::{Backup, WindowPosition};

/// The members' claims, as one replica heard them.
#[derive(Debug)]
pub(super) struct PeerClaims {
    me: ReplicaId,
    membership: MembershipHandle,
    /// Per member: the highest sequence number it has claimed to reach.
    claimed: MemberMap<SeqNum>,
    /// Per member: the highest sequence number of a CHECKPOINT it sent (C7).
    checkpointed: MemberMap<SeqNum>,
    /// The highest sequence number this replica knows to exist: its own proposals, the
    /// current primary's pre-prepares, and what `f + 1` other members vouch for.
    highest_seen: SeqNum,
}

impl PeerClaims {
    pub(super) fn new(me: ReplicaId, membership: MembershipHandle) -> Self {
        let members = membership.current();
        PeerClaims {
            me,
            claimed: MemberMap::new(&members, |_| SeqNum(0)),
            checkpointed: MemberMap::new(&members, |_| SeqNum(0)),
            highest_seen: SeqNum(0),
            membership,
        }
    }

    pub(super) fn highest_seen(&self) -> SeqNum {
        self.highest_seen
    }

    /// `seq` exists, on this replica's own evidence. Only numbers the backup can hold
    /// (inside its window or the next) count: anything further is no work it could do.
    pub(super) fn note_seen(&mut self, seq: SeqNum, backup: &Backup) {
        if seq > self.highest_seen && matches!(backup.position(seq), WindowPosition::Inside | WindowPosition::Ahead) {
            self.highest_seen = seq;
        }
    }

    /// `member` claims to have reached `seq`: only the `(f + 1)`-th highest claim of the
    /// others counts as seen.
    pub(super) fn note_claim(&mut self, member: ReplicaId, seq: SeqNum, backup: &Backup) {
        let me = self.me;
        let Some(claim) = self.claimed.get_mut(member).filter(|_| member != me) else {
            return;
        };
        if seq <= *claim {
            return;
        }
        *claim = seq;
        let mut claims: Vec<SeqNum> =
            self.claimed.iter().filter(|&(member, _)| member != me).map(|(_, &s)| s).collect();
        let f = self.membership.current().f();
        if f < claims.len() {
            let (_, &mut vouched, _) = claims.select_nth_unstable_by(f, |a, b| b.cmp(a));
            self.note_seen(vouched, backup);
        }
    }

    /// `member` sent a CHECKPOINT for `seq`: a claim, and (C7) a member past `seq - 1`.
    pub(super) fn note_checkpoint(&mut self, member: ReplicaId, seq: SeqNum, backup: &Backup) {
        self.note_claim(member, seq, backup);
        if let Some(highest) = self.checkpointed.get_mut(member) {
            *highest = (*highest).max(seq);
        }
    }

    /// How many members sent a CHECKPOINT above `seq` (C7: `f + 1` of them mean a correct
    /// replica executed past it).
    pub(super) fn members_checkpointed_past(&self, seq: SeqNum) -> usize {
        self.checkpointed.values().filter(|&&highest| highest > seq).count()
    }
}
