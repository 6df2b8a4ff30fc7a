//! The multi-site checker (docs/STEWARD.md §10): after every step of the multi-site
//! simulator it asserts the global invariants GI1–GI5 over what correct replicas executed
//! and replied, what clients accepted, and every site signature seen on the wire.

use crate::ids::{ClientId, PeerId, SeqNum, Timestamp};
use crate::sim::checker::Violation;
use crate::steward::global::SiteSigned;
use crate::steward::payload::{GlobalView, SitePayload};
use bulwark_crypto::threshold::ThresholdScheme;
use bulwark_crypto::Digest;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// What the checker remembers; it grows with the run (tests bound runs, not the checker).
pub struct SitesChecker<S: ThresholdScheme> {
    keys: BTreeMap<crate::ids::ClusterId, Arc<S::PublicKey>>,
    /// GI1: the batch executed at each sequence number, by the first correct replica.
    history: BTreeMap<SeqNum, (Digest, PeerId)>,
    /// GI5: each correct replica's `aru`.
    arus: BTreeMap<PeerId, SeqNum>,
    /// GI2: the value each site-signed slot holds: `(kind is accept, site, gv, seq)`.
    bindings: BTreeMap<(bool, crate::ids::ClusterId, GlobalView, SeqNum), Digest>,
    /// Site-signed payloads already verified.
    verified: BTreeSet<SitePayload>,
    /// GI4: the result correct replicas replied for each update.
    results: BTreeMap<(ClientId, Timestamp), Vec<u8>>,
    violations: Vec<Violation>,
    checks: u64,
}

impl<S: ThresholdScheme> std::fmt::Debug for SitesChecker<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SitesChecker").field("checks", &self.checks).field("violations", &self.violations).finish()
    }
}

impl<S: ThresholdScheme> SitesChecker<S> {
    pub fn new(keys: BTreeMap<crate::ids::ClusterId, Arc<S::PublicKey>>) -> Self {
        SitesChecker {
            keys,
            history: BTreeMap::new(),
            arus: BTreeMap::new(),
            bindings: BTreeMap::new(),
            verified: BTreeSet::new(),
            results: BTreeMap::new(),
            violations: Vec::new(),
            checks: 0,
        }
    }

    fn violate(&mut self, invariant: &'static str, detail: String) {
        if self.violations.len() < 64 {
            self.violations.push(Violation { invariant, detail });
        }
    }

    /// GI1, GI5: a correct replica executed `digest` at `seq`.
    pub fn executed(&mut self, replica: PeerId, seq: SeqNum, digest: Digest) {
        self.checks += 1;
        let aru = self.arus.entry(replica).or_default();
        if seq != aru.next() {
            let detail = format!("{replica} executed {seq} after {aru}: not strictly in order");
            *aru = (*aru).max(seq);
            self.violate("GI5", detail);
        } else {
            *aru = seq;
        }
        match self.history.get(&seq) {
            Some((first, by)) if *first != digest => {
                let detail = format!("{replica} executed {digest:?} at {seq}, {by} executed {first:?}");
                self.violate("GI1", detail);
            }
            Some(_) => {}
            None => {
                self.history.insert(seq, (digest, replica));
            }
        }
        if let Some(proposed) = self.proposed_conflict(seq, digest) {
            self.violate("GI3", proposed);
        }
    }

    /// GI5: a crashed replica came back, recovered through `aru`: it must not have moved
    /// back from what it executed before. It may be further: a batch recorded as ordered
    /// by a step the crash cut short executes during recovery.
    pub fn restarted(&mut self, replica: PeerId, aru: SeqNum) {
        self.checks += 1;
        let before = self.arus.entry(replica).or_default();
        if aru < *before {
            let detail = format!("{replica} came back at aru {aru} after executing through {before}");
            *before = aru;
            self.violate("GI5", detail);
        } else {
            *before = aru;
        }
    }

    /// GI5: a correct replica installed the state of `seq`.
    pub fn installed(&mut self, replica: PeerId, seq: SeqNum) {
        self.checks += 1;
        let aru = self.arus.entry(replica).or_default();
        if seq <= *aru {
            let detail = format!("{replica} installed {seq} at aru {aru}: aru moved back");
            self.violate("GI5", detail);
        } else {
            *aru = seq;
        }
    }

    /// GI3: a site-signed PROPOSAL for an ordered sequence number carries another batch, in
    /// the global view the batch was ordered in or a later one. The view it was ordered in
    /// is the earliest with its PROPOSAL and ACCEPTs of `⌊S/2⌋` sites seen (else the earliest
    /// with its PROPOSAL, else view 0): a leader site cut off in an earlier view may still
    /// propose something else there, which nobody can order.
    fn proposed_conflict(&self, seq: SeqNum, digest: Digest) -> Option<String> {
        let proposals = || self.bindings.iter().filter(move |((accept, _, _, s), _)| !accept && *s == seq);
        let accepted = |gv: GlobalView| {
            let accepts = self
                .bindings
                .iter()
                .filter(|((accept, _, g, s), bound)| *accept && *g == gv && *s == seq && **bound == digest);
            accepts.count() >= self.keys.len() / 2
        };
        let same = || proposals().filter(|(_, bound)| **bound == digest).map(|((_, _, gv, _), _)| *gv);
        let ordered_in = same().filter(|gv| accepted(*gv)).min().or_else(|| same().min()).unwrap_or(0);
        proposals()
            .filter(|((_, _, gv, _), bound)| **bound != digest && *gv >= ordered_in)
            .map(|((_, site, gv, _), bound)| format!("{seq} executed {digest:?}, {site} proposed {bound:?} in gv {gv}"))
            .next()
    }

    /// GI2, GI3: a site signature seen on the wire. Only one that verifies is a site
    /// signature; each payload is verified once.
    pub fn observe(&mut self, signed: &SiteSigned<S>) {
        let payload = signed.payload;
        if self.verified.contains(&payload) {
            return;
        }
        let Some(key) = self.keys.get(&payload.site()) else { return };
        if !S::verify(key, &signed.signature, &payload.message()) {
            return;
        }
        self.checks += 1;
        self.verified.insert(payload);
        let (accept, site, gv, seq, digest) = match payload {
            SitePayload::Proposal { site, gv, seq, updates, .. } => (false, site, gv, seq, updates),
            SitePayload::Accept { site, gv, seq, updates, .. } => (true, site, gv, seq, updates),
            _ => return,
        };
        match self.bindings.get(&(accept, site, gv, seq)) {
            Some(bound) if *bound != digest => {
                let kind = if accept { "ACCEPTs" } else { "PROPOSALs" };
                let detail = format!("{site} signed two {kind} for gv {gv} seq {seq}: {bound:?} and {digest:?}");
                self.violate("GI2", detail);
            }
            Some(_) => {}
            None => {
                self.bindings.insert((accept, site, gv, seq), digest);
            }
        }
        if let Some((executed, _)) = self.history.get(&seq) {
            if let Some(detail) = self.proposed_conflict(seq, *executed) {
                self.violate("GI3", detail);
            }
        }
    }

    /// GI4 (its half at the replicas): a correct replica replied `result` to an ordered
    /// update; correct replicas agree on it.
    pub fn replied(&mut self, replica: PeerId, client: ClientId, timestamp: Timestamp, result: &[u8]) {
        self.checks += 1;
        match self.results.get(&(client, timestamp)) {
            Some(first) if first.as_slice() != result => {
                let detail = format!("{replica} replied differently to {client} at {timestamp}");
                self.violate("GI4", detail);
            }
            Some(_) => {}
            None => {
                self.results.insert((client, timestamp), result.to_vec());
            }
        }
    }

    /// GI4: a client accepted `result`; it must be what correct replicas executed.
    pub fn accepted(&mut self, client: ClientId, timestamp: Timestamp, result: &[u8]) {
        self.checks += 1;
        match self.results.get(&(client, timestamp)) {
            Some(replied) if replied.as_slice() == result => {}
            Some(_) => {
                self.violate("GI4", format!("{client} accepted at {timestamp} a result no correct replica gave"))
            }
            None => {
                self.violate("GI4", format!("{client} accepted at {timestamp} a result no correct replica executed"))
            }
        }
    }

    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    pub fn checks(&self) -> u64 {
        self.checks
    }

    /// The globally ordered history: digest per sequence number, for a trace.
    pub fn history_len(&self) -> usize {
        self.history.len()
    }
}

/// Negative controls of each invariant: the checker fails on the violation it names.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ClusterId, ReplicaId};
    use bulwark_crypto::threshold::Simulated;
    use rand::SeedableRng;

    type Key = <Simulated as ThresholdScheme>::PublicKey;
    type Secret = <Simulated as ThresholdScheme>::SecretShare;

    const A: PeerId = PeerId { cluster: ClusterId(1), replica: ReplicaId(0) };
    const B: PeerId = PeerId { cluster: ClusterId(2), replica: ReplicaId(1) };

    fn digest(n: u8) -> Digest {
        Digest::of(&[n])
    }

    /// A checker of one site, and that site's secret shares (3 of 4 combine).
    fn checker() -> (SitesChecker<Simulated>, Arc<Key>, Vec<Secret>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let (key, secrets) = Simulated::deal(4, 3, &mut rng);
        let key = Arc::new(key);
        (SitesChecker::new([(ClusterId(1), key.clone())].into()), key, secrets)
    }

    fn signed(key: &Key, secrets: &[Secret], payload: SitePayload) -> SiteSigned<Simulated> {
        let message = payload.message();
        let shares: Vec<_> =
            secrets.iter().take(3).map(|s| (Simulated::index(s), Simulated::sign_share(s, &message))).collect();
        SiteSigned { payload, signature: Simulated::combine(key, &shares).expect("three shares combine") }
    }

    fn proposal(seq: u64, updates: Digest) -> SitePayload {
        SitePayload::Proposal { site: ClusterId(1), gv: 0, lv: 0, seq: SeqNum(seq), updates }
    }

    fn invariants(checker: &SitesChecker<Simulated>) -> Vec<&'static str> {
        checker.violations().iter().map(|v| v.invariant).collect()
    }

    #[test]
    fn gi1_two_replicas_executing_different_batches_at_one_seq_is_a_violation() {
        let (mut checker, _, _) = checker();
        checker.executed(A, SeqNum(1), digest(1));
        checker.executed(B, SeqNum(1), digest(1));
        assert!(checker.violations().is_empty());
        checker.executed(A, SeqNum(2), digest(2));
        checker.executed(B, SeqNum(2), digest(3));
        assert_eq!(invariants(&checker), ["GI1"]);
    }

    #[test]
    fn gi2_two_site_signed_proposals_for_one_seq_are_a_violation_and_a_bad_signature_is_none() {
        let (mut checker, key, secrets) = checker();
        checker.observe(&signed(&key, &secrets, proposal(1, digest(1))));
        let mut forged = signed(&key, &secrets, proposal(1, digest(1)));
        forged.payload = proposal(1, digest(2));
        checker.observe(&forged);
        assert!(checker.violations().is_empty(), "a signature that does not verify is no site signature");
        checker.observe(&signed(&key, &secrets, proposal(1, digest(2))));
        assert_eq!(invariants(&checker), ["GI2"]);
    }

    #[test]
    fn gi3_a_proposal_for_an_executed_seq_with_another_batch_is_a_violation() {
        let (mut checker, key, secrets) = checker();
        checker.executed(A, SeqNum(1), digest(1));
        let mut later = proposal(1, digest(2));
        if let SitePayload::Proposal { gv, .. } = &mut later {
            *gv = 5;
        }
        checker.observe(&signed(&key, &secrets, later));
        assert_eq!(invariants(&checker), ["GI3"]);
    }

    /// GI3 is about the view the batch was ordered in and later ones: a PROPOSAL of an
    /// earlier view (a leader site cut off, replaced) for another batch is none.
    #[test]
    fn gi3_a_proposal_of_an_earlier_view_than_the_one_that_ordered_the_batch_is_no_violation() {
        let (mut checker, key, secrets) = checker();
        // One site: a PROPOSAL alone is accepted by `⌊1/2⌋ = 0` other sites.
        let in_view = |gv: GlobalView, payload: SitePayload| match payload {
            SitePayload::Proposal { site, lv, seq, updates, .. } => {
                SitePayload::Proposal { site, gv, lv, seq, updates }
            }
            other => other,
        };
        checker.observe(&signed(&key, &secrets, in_view(0, proposal(1, digest(2)))));
        checker.observe(&signed(&key, &secrets, in_view(1, proposal(1, digest(1)))));
        checker.executed(A, SeqNum(1), digest(1));
        assert!(checker.violations().is_empty(), "{:?}", checker.violations());
        checker.observe(&signed(&key, &secrets, in_view(2, proposal(1, digest(3)))));
        assert_eq!(invariants(&checker), ["GI3"]);
    }

    #[test]
    fn gi4_a_client_accepting_a_result_no_correct_replica_gave_is_a_violation() {
        let (mut checker, _, _) = checker();
        let client = ClientId(7);
        checker.replied(A, client, Timestamp(1), b"ok");
        checker.accepted(client, Timestamp(1), b"ok");
        assert!(checker.violations().is_empty());
        checker.accepted(client, Timestamp(1), b"forged");
        checker.accepted(client, Timestamp(2), b"never executed");
        checker.replied(B, client, Timestamp(1), b"other");
        assert_eq!(invariants(&checker), ["GI4", "GI4", "GI4"]);
    }

    #[test]
    fn gi5_executing_out_of_order_or_installing_backwards_is_a_violation() {
        let (mut checker, _, _) = checker();
        checker.executed(A, SeqNum(1), digest(1));
        checker.installed(A, SeqNum(8));
        checker.executed(A, SeqNum(9), digest(9));
        assert!(checker.violations().is_empty());
        checker.executed(A, SeqNum(11), digest(11));
        checker.installed(A, SeqNum(4));
        assert_eq!(invariants(&checker), ["GI5", "GI5"]);
    }

    /// A replica may come back further than it was seen executing (a batch it recorded as
    /// ordered in a step the crash cut short executes during recovery), never behind it.
    /// (Campaign seed 3112 with torn crashes: flagged before the checker allowed it.)
    #[test]
    fn gi5_a_restarted_replica_may_come_back_ahead_but_not_behind() {
        let (mut checker, _, _) = checker();
        checker.executed(A, SeqNum(1), digest(1));
        checker.restarted(A, SeqNum(2));
        checker.executed(A, SeqNum(3), digest(3));
        assert!(checker.violations().is_empty(), "{:?}", checker.violations());
        checker.restarted(A, SeqNum(1));
        assert_eq!(invariants(&checker), ["GI5"]);
    }
}
