//! Global ordering of Steward (docs/STEWARD.md W5, W7): five sites of four replicas, site
//! signatures made from three shares each, one replica's view of the order.

use bulwark_crypto::threshold::{Simulated, ThresholdScheme};
use bulwark_crypto::Digest;
use bulwark_framework::steward::global::{GlobalOrder, GlobalOutput, GlobalRefusal, SiteSigned};
use bulwark_framework::steward::payload::SitePayload;
use bulwark_framework::{ClusterId, SeqNum};
use rand_chacha::rand_core::SeedableRng;
use std::collections::BTreeMap;
use std::sync::Arc;

type S = Simulated;

/// A site's public key and its members' secret shares.
type SiteKeys = (Arc<<S as ThresholdScheme>::PublicKey>, Vec<<S as ThresholdScheme>::SecretShare>);

struct Sites {
    keys: BTreeMap<ClusterId, SiteKeys>,
}

impl Sites {
    fn new() -> Self {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
        let keys = (1..=5u32)
            .map(|site| {
                let (key, secrets) = S::deal(4, 3, &mut rng);
                (ClusterId(site), (Arc::new(key), secrets))
            })
            .collect();
        Sites { keys }
    }

    fn order(&self) -> GlobalOrder<S> {
        GlobalOrder::new(self.keys.iter().map(|(site, (key, _))| (*site, key.clone())).collect(), 8)
    }

    /// `payload` signed by its site from three of its members' shares.
    fn signed(&self, payload: SitePayload) -> SiteSigned<S> {
        let (key, secrets) = &self.keys[&payload.site()];
        let message = payload.message();
        let shares: Vec<_> =
            secrets.iter().take(3).map(|secret| (S::index(secret), S::sign_share(secret, &message))).collect();
        SiteSigned { payload, signature: S::combine(key, &shares).unwrap() }
    }
}

fn proposal(site: u32, gv: u64, seq: u64, updates: &[u8]) -> SitePayload {
    SitePayload::Proposal { site: ClusterId(site), gv, lv: 0, seq: SeqNum(seq), updates: Digest::of(updates) }
}

fn accept(site: u32, gv: u64, seq: u64, updates: &[u8]) -> SitePayload {
    SitePayload::Accept { site: ClusterId(site), gv, lv: 0, seq: SeqNum(seq), updates: Digest::of(updates) }
}

fn refused(out: &[GlobalOutput]) -> Option<GlobalRefusal> {
    match out {
        [GlobalOutput::Refused(refusal)] => Some(*refusal),
        _ => None,
    }
}

/// W5: a PROPOSAL is taken only from the leader site of the current global view, inside
/// the window, with a signature that verifies under that site's key.
#[test]
fn w5_a_proposal_is_taken_only_from_the_leader_site_in_view_and_window_with_its_signature() {
    let sites = Sites::new();
    let mut order = sites.order();
    assert_eq!(order.leader(0), ClusterId(1));
    assert_eq!(refused(&order.on_proposal(&sites.signed(proposal(2, 0, 1, b"u")))), Some(GlobalRefusal::WrongSite));
    assert_eq!(
        refused(&order.on_proposal(&sites.signed(proposal(2, 1, 1, b"u")))),
        Some(GlobalRefusal::WrongGlobalView)
    );
    assert_eq!(refused(&order.on_proposal(&sites.signed(proposal(1, 0, 9, b"u")))), Some(GlobalRefusal::OutsideWindow));
    assert_eq!(refused(&order.on_proposal(&sites.signed(proposal(1, 0, 0, b"u")))), Some(GlobalRefusal::OutsideWindow));
    // The leader site's signature of another payload.
    let mut forged = sites.signed(proposal(1, 0, 1, b"u"));
    forged.signature = sites.signed(proposal(1, 0, 1, b"v")).signature;
    assert_eq!(refused(&order.on_proposal(&forged)), Some(GlobalRefusal::BadSiteSignature));
    let out = order.on_proposal(&sites.signed(proposal(1, 0, 1, b"u")));
    assert_eq!(out, vec![GlobalOutput::Accepted { gv: 0, seq: SeqNum(1), updates: Digest::of(b"u") }]);
    assert_eq!(
        refused(&order.on_proposal(&sites.signed(proposal(1, 0, 1, b"v")))),
        Some(GlobalRefusal::ConflictingProposal)
    );
    assert_eq!(refused(&order.on_accept(&sites.signed(proposal(1, 0, 1, b"u")))), Some(GlobalRefusal::WrongKind));
}

/// W7: with five sites a PROPOSAL and ACCEPTs from two distinct other sites for the same
/// binding order a batch; ACCEPTs of another binding, from the leader site, or twice from
/// one site do not count; batches execute strictly in order.
#[test]
fn w7_a_proposal_and_accepts_of_a_majority_order_a_batch_executed_in_order() {
    let sites = Sites::new();
    let mut order = sites.order();
    assert_eq!(order.accepts_needed(), 2);
    // Batch 2 is ordered first, and waits for batch 1.
    order.on_proposal(&sites.signed(proposal(1, 0, 2, b"two")));
    assert_eq!(order.on_accept(&sites.signed(accept(2, 0, 2, b"two"))), vec![]);
    assert_eq!(order.on_accept(&sites.signed(accept(3, 0, 2, b"two"))), vec![], "ordered, not executable before 1");
    order.on_proposal(&sites.signed(proposal(1, 0, 1, b"one")));
    assert_eq!(refused(&order.on_accept(&sites.signed(accept(1, 0, 1, b"one")))), Some(GlobalRefusal::WrongSite));
    assert_eq!(order.on_accept(&sites.signed(accept(4, 0, 1, b"other"))), vec![], "another binding");
    assert_eq!(order.on_accept(&sites.signed(accept(5, 0, 1, b"one"))), vec![]);
    assert_eq!(order.on_accept(&sites.signed(accept(5, 0, 1, b"one"))), vec![], "one site counts once");
    assert_eq!(order.aru(), SeqNum(0));
    let out = order.on_accept(&sites.signed(accept(2, 0, 1, b"one")));
    assert_eq!(
        out,
        vec![
            GlobalOutput::Execute { seq: SeqNum(1), updates: Digest::of(b"one") },
            GlobalOutput::Execute { seq: SeqNum(2), updates: Digest::of(b"two") },
        ]
    );
    assert_eq!(order.aru(), SeqNum(2));
    assert_eq!(refused(&order.on_accept(&sites.signed(accept(4, 0, 2, b"two")))), Some(GlobalRefusal::OutsideWindow));
}
