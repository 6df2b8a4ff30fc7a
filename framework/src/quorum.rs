//! Vote collection: certificates are a quorum (`2f + 1` when `n = 3f + 1`, or one fewer)
//! of matching signed messages from distinct members (PBFT.md M6).
//!
//! A [`VoteSet`] keeps at most one vote per member, so its size is bounded by `n` however
//! many messages a Byzantine member sends; a second vote from the same signer is refused
//! (PF7: Fabric #370 counted duplicates).

use crate::ids::ReplicaId;
use crate::membership::{MemberMap, Membership};
use bulwark_crypto::{Digest, Verified};

/// Outcome of adding a vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoteOutcome {
    /// The vote was new and stored.
    Added,
    /// The signer had already voted for this digest: nothing changed.
    Duplicate,
    /// The signer had already voted for a different digest: refused, the first counts.
    Conflicting,
    /// The signer had already voted for a different digest, and this vote completes a
    /// certificate for its own digest: it replaces the first (see [`VoteSet::add_completing`]).
    Replaced,
}

/// One vote per member for one slot.
#[derive(Debug, Clone)]
pub struct VoteSet<T> {
    votes: MemberMap<Option<(Digest, Verified<T>)>>,
}

impl<T> VoteSet<T> {
    /// An empty vote set for the members of `membership`.
    pub fn new(membership: &Membership) -> Self {
        VoteSet { votes: MemberMap::new(membership, |_| None) }
    }

    /// Adds `vote` for `digest` signed by `signer`. The caller has checked that `signer`
    /// is a member (the edge refuses non-members); a non-member's vote is refused here too.
    pub fn add(&mut self, signer: ReplicaId, digest: Digest, vote: Verified<T>) -> VoteOutcome {
        let Some(place) = self.votes.get_mut(signer) else {
            return VoteOutcome::Conflicting;
        };
        match place {
            Some((existing, _)) if *existing == digest => VoteOutcome::Duplicate,
            Some(_) => VoteOutcome::Conflicting,
            None => {
                *place = Some((digest, vote));
                VoteOutcome::Added
            }
        }
    }

    /// Like [`VoteSet::add`], except that a signer's conflicting vote replaces its first one
    /// when it brings `digest` to `threshold` votes (not counting `excluded`).
    ///
    /// Why: a member that signed two digests is faulty, and keeping only its first vote lets
    /// it choose, per receiver, which of its votes counts. It can then send one receiver a
    /// made-up vote first and everybody else its real one, so that the others' certificates
    /// (forwarded to that receiver as proof) include a vote the receiver refuses, and the
    /// receiver never completes a certificate the rest of the cluster holds (it never
    /// executes). Each of its signed votes is a genuine statement, and a
    /// certificate needs only `threshold` distinct signers for one digest, so counting it for
    /// the digest it completes is as safe as counting it for the first: it still counts once.
    pub fn add_completing(
        &mut self,
        signer: ReplicaId,
        digest: Digest,
        vote: Verified<T>,
        threshold: usize,
        excluded: Option<ReplicaId>,
    ) -> VoteOutcome {
        let conflicting = matches!(self.votes.get(signer), Some(Some((held, _))) if *held != digest);
        if !conflicting || Some(signer) == excluded || self.count(digest, excluded) + 1 < threshold {
            return self.add(signer, digest, vote);
        }
        if let Some(place) = self.votes.get_mut(signer) {
            *place = Some((digest, vote));
        }
        VoteOutcome::Replaced
    }

    /// How many distinct members voted for `digest`, not counting `excluded` (the primary's
    /// prepare never counts, N4).
    pub fn count(&self, digest: Digest, excluded: Option<ReplicaId>) -> usize {
        self.votes
            .iter()
            .filter(|(member, vote)| Some(*member) != excluded && matches!(vote, Some((d, _)) if *d == digest))
            .count()
    }

    /// Forgets `signer`'s vote (used to displace a member's oldest open checkpoint).
    pub fn remove(&mut self, signer: ReplicaId) {
        if let Some(place) = self.votes.get_mut(signer) {
            *place = None;
        }
    }

    pub fn has_voted(&self, signer: ReplicaId) -> bool {
        matches!(self.votes.get(signer), Some(Some(_)))
    }

    pub fn vote_of(&self, signer: ReplicaId) -> Option<&Verified<T>> {
        self.votes.get(signer).and_then(|v| v.as_ref()).map(|(_, vote)| vote)
    }

    /// The votes for `digest`, one per signer: a certificate once there are enough.
    pub fn certificate(&self, digest: Digest) -> Vec<&Verified<T>> {
        self.votes.values().filter_map(|v| v.as_ref()).filter(|(d, _)| *d == digest).map(|(_, vote)| vote).collect()
    }

    /// A digest that has at least `threshold` votes, if any.
    pub fn digest_with(&self, threshold: usize) -> Option<Digest> {
        self.votes.values().filter_map(|v| v.as_ref().map(|(d, _)| *d)).find(|d| self.count(*d, None) >= threshold)
    }

    pub fn len(&self) -> usize {
        self.votes.values().filter(|v| v.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProtocolParams;
    use crate::ids::{ClusterId, SeqNum, View};
    use crate::messages::Prepare;
    use bulwark_crypto::KeyPair;

    fn key(replica: u32) -> KeyPair {
        KeyPair::from_seed([replica as u8 + 1; 32])
    }

    fn members() -> Membership {
        Membership::numbered(ClusterId(1), (0..4).map(|r| key(r).public()).collect(), ProtocolParams::default())
            .unwrap()
    }

    fn prepare(replica: u32, digest: Digest) -> Verified<Prepare> {
        let payload = Prepare { view: View(0), seq: SeqNum(1), digest, replica: ReplicaId(replica) };
        members().scope().sign(payload, &key(replica))
    }

    #[test]
    fn pf7_a_second_vote_from_one_signer_never_counts_twice() {
        let d = Digest::of(b"batch");
        let mut votes = VoteSet::new(&members());
        assert_eq!(votes.add(ReplicaId(1), d, prepare(1, d)), VoteOutcome::Added);
        assert_eq!(votes.add(ReplicaId(1), d, prepare(1, d)), VoteOutcome::Duplicate);
        assert_eq!(votes.count(d, None), 1);
    }

    #[test]
    fn m6_a_conflicting_vote_is_refused_and_the_first_counts() {
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let mut votes = VoteSet::new(&members());
        votes.add(ReplicaId(2), a, prepare(2, a));
        assert_eq!(votes.add(ReplicaId(2), b, prepare(2, b)), VoteOutcome::Conflicting);
        assert_eq!((votes.count(a, None), votes.count(b, None)), (1, 0));
    }

    #[test]
    fn n4_the_excluded_signer_does_not_count() {
        let d = Digest::of(b"batch");
        let mut votes = VoteSet::new(&members());
        for r in 0..3 {
            votes.add(ReplicaId(r), d, prepare(r, d));
        }
        assert_eq!(votes.count(d, Some(ReplicaId(0))), 2);
        assert_eq!(votes.count(d, None), 3);
        assert_eq!(votes.digest_with(3), Some(d));
        assert_eq!(votes.certificate(d).len(), 3);
    }

    #[test]
    fn m6_a_conflicting_vote_that_completes_a_certificate_replaces_the_first() {
        let (made_up, real) = (Digest::of(b"made up"), Digest::of(b"real"));
        let mut votes = VoteSet::new(&members());
        votes.add(ReplicaId(2), made_up, prepare(2, made_up));
        votes.add(ReplicaId(1), real, prepare(1, real));
        // Two of three needed: replica 2's real vote would be the second, not the third.
        assert_eq!(votes.add_completing(ReplicaId(2), real, prepare(2, real), 3, None), VoteOutcome::Conflicting);
        assert_eq!(votes.count(real, None), 1);
        votes.add(ReplicaId(3), real, prepare(3, real));
        assert_eq!(votes.add_completing(ReplicaId(2), real, prepare(2, real), 3, None), VoteOutcome::Replaced);
        assert_eq!((votes.count(real, None), votes.count(made_up, None)), (3, 0));
        assert_eq!(votes.len(), 3, "the signer still counts once");
        // The excluded signer (the primary, N4) never completes anything.
        let mut votes = VoteSet::new(&members());
        votes.add(ReplicaId(0), made_up, prepare(0, made_up));
        votes.add(ReplicaId(1), real, prepare(1, real));
        assert_eq!(
            votes.add_completing(ReplicaId(0), real, prepare(0, real), 2, Some(ReplicaId(0))),
            VoteOutcome::Conflicting
        );
    }

    #[test]
    fn a_vote_set_never_holds_more_than_n_votes() {
        let mut votes = VoteSet::new(&members());
        for round in 0..100u32 {
            let d = Digest::of(&round.to_le_bytes());
            votes.add(ReplicaId(round % 4), d, prepare(round % 4, d));
        }
        assert_eq!(votes.len(), 4);
    }
}
