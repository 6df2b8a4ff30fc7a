//! The checkpoint collector (PBFT.md C3–C4, C7).
//!
//! CHECKPOINT messages are logged per sequence number, one vote per member; `2f + 1`
//! matching `(s, D)` make `s` stable and those messages its proof. Only multiples of `K`
//! above the stable checkpoint are collected, and each member may have at most
//! `L / K + 2` sequence numbers open at once (a newer one displaces its oldest), so a
//! Byzantine member cannot grow the collector. Checkpoints beyond the window are kept too
//! (within that bound): they are how a replica that fell behind learns a stable
//! checkpoint to catch up to (C7).
//!
//! The collector is a role of its own: its replica hands it every CHECKPOINT (its own and
//! its peers') and every stable checkpoint learned elsewhere as a [`CollectorInput`], and
//! hears back [`CollectorOutput`]s. The runtime and the simulator run it beside its
//! replica and carry these messages between the two, so a stable checkpoint reaches the
//! replica some time after the collector formed it, with other inputs in between.

use crate::ids::{Instant, ReplicaId, SeqNum};
use crate::membership::{MemberMap, MembershipHandle};
use crate::messages::Checkpoint;
use crate::quorum::{VoteOutcome, VoteSet};
use crate::roles::refusal::RoleRefusal;
use bulwark_crypto::{Digest, Verified};
use std::collections::BTreeMap;

/// A stable checkpoint and its proof: `2f + 1` matching signed CHECKPOINTs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StableCheckpoint {
    pub seq: SeqNum,
    pub state_digest: Digest,
    pub proof: Vec<Verified<Checkpoint>>,
}

/// What a checkpoint collector is told by its replica.
#[derive(Debug, Clone)]
pub enum CollectorInput {
    /// A member's signed CHECKPOINT, the replica's own included (C2, C3).
    Checkpoint(Verified<Checkpoint>),
    /// A stable checkpoint the replica learned elsewhere: from a NEW-VIEW (VC16) or its
    /// durable records. Its proof was checked where it came from.
    Adopt(StableCheckpoint),
}

/// What a checkpoint collector tells its replica.
#[derive(Debug, Clone)]
pub enum CollectorOutput {
    /// A checkpoint became stable (C3). It may reach the replica after a newer one.
    Stable(StableCheckpoint),
    /// A CHECKPOINT was refused, and why.
    Refused(RoleRefusal),
}

impl StableCheckpoint {
    /// The checkpoint every replica starts from: sequence number 0, the empty state, no
    /// proof needed.
    pub fn initial() -> Self {
        StableCheckpoint { seq: SeqNum(0), state_digest: Digest::default(), proof: Vec::new() }
    }
}

/// The checkpoint collector role.
#[derive(Debug)]
pub struct CheckpointCollector {
    membership: MembershipHandle,
    stable: StableCheckpoint,
    pending: BTreeMap<SeqNum, VoteSet<Checkpoint>>,
    open_per_member: MemberMap<usize>,
}

impl CheckpointCollector {
    pub fn new(membership: MembershipHandle) -> Self {
        let open_per_member = MemberMap::new(&membership.current(), |_| 0);
        CheckpointCollector {
            membership,
            stable: StableCheckpoint::initial(),
            pending: BTreeMap::new(),
            open_per_member,
        }
    }

    pub fn stable(&self) -> &StableCheckpoint {
        &self.stable
    }

    fn open_max(&self) -> usize {
        let params = &self.membership.current().params;
        (params.watermark_window / params.checkpoint_interval) as usize + 2
    }

    /// Handles one input from its replica (the collector has no use for the time).
    pub fn handle(&mut self, input: CollectorInput, _now: Instant) -> Vec<CollectorOutput> {
        match input {
            CollectorInput::Checkpoint(checkpoint) => match self.on_checkpoint(checkpoint) {
                Ok(stable) => stable.map(CollectorOutput::Stable).into_iter().collect(),
                Err(reason) => vec![CollectorOutput::Refused(reason)],
            },
            CollectorInput::Adopt(stable) => {
                self.adopt(stable);
                Vec::new()
            }
        }
    }

    /// C3: log a checkpoint. Returns the new stable checkpoint if this message completed
    /// a proof above the current one, or the reason it was refused.
    pub fn on_checkpoint(&mut self, checkpoint: Verified<Checkpoint>) -> Result<Option<StableCheckpoint>, RoleRefusal> {
        let seq = checkpoint.seq;
        if seq <= self.stable.seq {
            return Err(RoleRefusal::CheckpointAtOrBelowStable);
        }
        if !seq.0.is_multiple_of(self.membership.current().params.checkpoint_interval) {
            return Err(RoleRefusal::CheckpointNotMultipleOfK);
        }
        let member = checkpoint.replica;
        let Some(open) = self.open_per_member.get(member).copied() else {
            return Err(RoleRefusal::CheckpointFromNonMember);
        };
        if !self.pending.get(&seq).is_some_and(|votes| votes.has_voted(member)) && open >= self.open_max() {
            // Displace this member's oldest open checkpoint, or refuse if this one is older.
            let oldest = self.pending.iter().find(|(_, votes)| votes.has_voted(checkpoint.replica)).map(|(s, _)| *s);
            match oldest {
                Some(oldest) if oldest < seq => self.remove_vote(oldest, member),
                _ => return Err(RoleRefusal::TooManyOpenCheckpoints),
            }
        }
        let membership = self.membership.current();
        let votes = self.pending.entry(seq).or_insert_with(|| VoteSet::new(&membership));
        let digest = checkpoint.state_digest;
        // A member's second, conflicting checkpoint counts instead of its first if it
        // completes a proof (see `VoteSet::add_completing`): else a member that sent one
        // replica a wrong digest first keeps it from ever taking the others' proof.
        match votes.add_completing(member, digest, checkpoint, membership.quorum(), None) {
            VoteOutcome::Added => *self.open_per_member.get_mut(member).expect("a member") += 1,
            VoteOutcome::Duplicate => return Ok(None),
            VoteOutcome::Replaced => {}
            VoteOutcome::Conflicting => return Err(RoleRefusal::ConflictingCheckpoint),
        }
        if votes.count(digest, None) < membership.quorum() {
            return Ok(None);
        }
        let proof: Vec<Verified<Checkpoint>> = votes.certificate(digest).into_iter().cloned().collect();
        self.stable = StableCheckpoint { seq, state_digest: digest, proof };
        self.collect_garbage();
        Ok(Some(self.stable.clone()))
    }

    /// Installs a stable checkpoint learned elsewhere (a proof checked by the caller).
    pub fn adopt(&mut self, stable: StableCheckpoint) {
        if stable.seq > self.stable.seq {
            self.stable = stable;
            self.collect_garbage();
        }
    }

    fn remove_vote(&mut self, seq: SeqNum, member: ReplicaId) {
        if let Some(votes) = self.pending.get_mut(&seq) {
            votes.remove(member);
            if let Some(open) = self.open_per_member.get_mut(member) {
                *open -= 1;
            }
            if votes.is_empty() {
                self.pending.remove(&seq);
            }
        }
    }

    /// C4: drop checkpoint messages at and below the stable checkpoint.
    fn collect_garbage(&mut self) {
        let stable = self.stable.seq;
        let dropped: Vec<SeqNum> = self.pending.range(..=stable).map(|(s, _)| *s).collect();
        for seq in dropped {
            if let Some(votes) = self.pending.remove(&seq) {
                for (member, open) in self.open_per_member.iter_mut() {
                    if votes.has_voted(member) {
                        *open -= 1;
                    }
                }
            }
        }
    }

    /// Checkpoint messages this replica holds above the stable one (bounded).
    pub fn pending_len(&self) -> usize {
        self.pending.values().map(VoteSet::len).sum()
    }
}

impl crate::roles::Role for CheckpointCollector {
    type Input = CollectorInput;
    type Output = CollectorOutput;

    fn handle(&mut self, input: CollectorInput, now: Instant) -> Vec<CollectorOutput> {
        CheckpointCollector::handle(self, input, now)
    }
}
