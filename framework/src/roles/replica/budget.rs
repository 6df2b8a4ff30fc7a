//! Per-peer budgets: how much one peer can make this replica send. Every answer a replica
//! gives a peer's request (a STATUS, a batch request, a state chunk request) and every
//! pre-prepare it retransmits costs it bandwidth and signatures, so each is paid from the
//! asking peer's budget, and a Byzantine peer that asks without end gets the same as a
//! correct one catching up.

use crate::ids::{Instant, ReplicaId};
use crate::membership::{MemberMap, Membership};
use crate::roles::state_transfer::PARALLEL_CHUNKS;
use std::time::Duration;

/// The period of a peer's retransmission budget, in status intervals
/// ([`Budgets::pre_prepares`]).
const PRE_PREPARE_RESEND_INTERVALS: u32 = 10;

/// What each peer can make a replica send.
#[derive(Debug)]
pub(super) struct Budgets {
    /// Answers to STATUS (and a view-changing peer's VIEW-CHANGE): one per half status
    /// interval.
    pub(super) statuses: PeerBudget,
    /// Pre-prepares retransmitted: a window of them per [`PRE_PREPARE_RESEND_INTERVALS`]
    /// status intervals. A correct peer catching up needs at most a window per period
    /// from each correct replica (more behind, it fetches state); without a budget a
    /// Byzantine STATUS claiming to lack the whole window bought every batch of it from
    /// every correct replica at every answer.
    pub(super) pre_prepares: PeerBudget,
    /// Answered batch requests: one per quarter status interval.
    pub(super) batches: PeerBudget,
    /// State chunks served: as many per status interval as four transfers in parallel ask.
    pub(super) chunks: PeerBudget,
}

impl Budgets {
    pub(super) fn new(members: &Membership) -> Self {
        let status = members.params.status_interval();
        Budgets {
            statuses: PeerBudget::new(members, status / 2, 1),
            pre_prepares: PeerBudget::new(
                members,
                status * PRE_PREPARE_RESEND_INTERVALS,
                members.params.watermark_window,
            ),
            batches: PeerBudget::new(members, status / 4, 1),
            chunks: PeerBudget::new(members, status, 4 * PARALLEL_CHUNKS as u64),
        }
    }
}

/// At most `allowance` units per member per `period`. A member's period starts at the
/// first unit it takes after its last period ended.
#[derive(Debug)]
pub(super) struct PeerBudget {
    period: Duration,
    allowance: u64,
    /// Per member: when its current period began (none yet), and what it used of it.
    used: MemberMap<(Option<Instant>, u64)>,
}

impl PeerBudget {
    pub(super) fn new(membership: &Membership, period: Duration, allowance: u64) -> Self {
        PeerBudget { period, allowance, used: MemberMap::new(membership, |_| (None, 0)) }
    }

    /// Takes one unit of `peer`'s budget at `now`; false, taking nothing, if its budget for
    /// the period is spent or it is not a member.
    pub(super) fn take(&mut self, peer: ReplicaId, now: Instant) -> bool {
        let Some((start, used)) = self.used.get_mut(peer) else {
            return false;
        };
        if start.is_none_or(|start| now >= start + self.period) {
            (*start, *used) = (Some(now), 0);
        }
        if *used >= self.allowance {
            return false;
        }
        *used += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProtocolParams;
    use crate::ids::ClusterId;
    use bulwark_crypto::KeyPair;

    fn members() -> Membership {
        let keys = (0..4).map(|i| KeyPair::from_seed([i + 1; 32]).public()).collect();
        Membership::numbered(ClusterId(1), keys, ProtocolParams::default()).unwrap()
    }

    #[test]
    fn a_peer_gets_its_allowance_per_period_and_no_more() {
        let mut budget = PeerBudget::new(&members(), Duration::from_millis(10), 2);
        let at = |ms: u64| Instant(1_000_000 + ms * 1_000);
        assert!(budget.take(ReplicaId(1), at(0)) && budget.take(ReplicaId(1), at(3)));
        assert!(!budget.take(ReplicaId(1), at(9)), "spent for the period that began at 0");
        assert!(budget.take(ReplicaId(2), at(9)), "each peer has its own");
        assert!(budget.take(ReplicaId(1), at(10)), "a new period began");
        assert!(budget.take(ReplicaId(1), at(19)) && !budget.take(ReplicaId(1), at(19)));
    }

    #[test]
    fn a_non_member_gets_nothing() {
        let mut budget = PeerBudget::new(&members(), Duration::from_millis(10), 100);
        assert!(!budget.take(ReplicaId(9), Instant(0)));
    }
}
