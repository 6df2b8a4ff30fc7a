//! The threshold signer of a Steward site (docs/STEWARD.md TS1–TS4, SM1): one test per rule,
//! each over a site of four replicas (ids 3, 8, 21, 40) exchanging shares directly.

use bulwark_crypto::threshold::{Bls, Simulated, ThresholdScheme};
use bulwark_crypto::Digest;
use bulwark_framework::steward::payload::SitePayload;
use bulwark_framework::steward::signer::{SignerInput, SignerLimits, SignerOutput, SignerRefusal, ThresholdSigner};
use bulwark_framework::{ClusterId, ReplicaId, SeqNum};
use rand_chacha::rand_core::SeedableRng;
use std::collections::VecDeque;
use std::sync::Arc;

const SITE: ClusterId = ClusterId(2);
const IDS: [u32; 4] = [3, 8, 21, 40];

struct Site<S: ThresholdScheme> {
    key: Arc<S::PublicKey>,
    signers: Vec<ThresholdSigner<S>>,
    /// What each signer produced, in order.
    outputs: Vec<Vec<SignerOutput<S>>>,
}

impl<S: ThresholdScheme> Site<S> {
    fn new(limits: SignerLimits) -> Self {
        let (key, secrets) = S::deal(4, 3, &mut rand_chacha::ChaCha20Rng::seed_from_u64(11));
        let key = Arc::new(key);
        let members: Vec<ReplicaId> = IDS.iter().map(|&id| ReplicaId(id)).collect();
        let signers = secrets
            .into_iter()
            .map(|secret| ThresholdSigner::new(SITE, members.clone(), key.clone(), secret, limits))
            .collect();
        Site { key, signers, outputs: (0..4).map(|_| Vec::new()).collect() }
    }

    /// Tells `who` (positions) to sign `payload`, and delivers every share to every other
    /// member until nothing moves.
    fn sign(&mut self, who: &[usize], payload: SitePayload) {
        let mut queue: VecDeque<(usize, SignerInput<S>)> =
            who.iter().map(|&i| (i, SignerInput::Sign(payload))).collect();
        while let Some((at, input)) = queue.pop_front() {
            for output in self.signers[at].handle(input) {
                if let SignerOutput::Share { message, share } = &output {
                    for to in (0..4).filter(|to| *to != at) {
                        let from = ReplicaId(IDS[at]);
                        queue.push_back((to, SignerInput::Share { from, message: *message, share: share.clone() }));
                    }
                }
                self.outputs[at].push(output);
            }
        }
    }

    fn signed(&self, at: usize) -> Vec<(Digest, Option<SitePayload>, S::Signature)> {
        self.outputs[at]
            .iter()
            .filter_map(|output| match output {
                SignerOutput::Signed { message, payload, signature } => Some((*message, *payload, signature.clone())),
                _ => None,
            })
            .collect()
    }
}

fn proposal(lv: u64, seq: u64, updates: &[u8]) -> SitePayload {
    SitePayload::Proposal { site: SITE, gv: 0, lv, seq: SeqNum(seq), updates: Digest::of(updates) }
}

/// TS1: a replica never shares two bindings for one `(kind, site, gv, seq)`; the same
/// binding again in a later local view (LV3's re-proposal) is shared.
#[test]
fn ts1_a_replica_never_shares_two_bindings_for_one_slot() {
    let mut site = Site::<Simulated>::new(SignerLimits::default());
    let signer = &mut site.signers[0];
    let shared = |out: &[SignerOutput<Simulated>]| out.iter().any(|o| matches!(o, SignerOutput::Share { .. }));
    assert!(shared(&signer.handle(SignerInput::Sign(proposal(0, 5, b"u")))));
    let conflicting = signer.handle(SignerInput::Sign(proposal(0, 5, b"v")));
    assert!(
        !shared(&conflicting) && matches!(conflicting[..], [SignerOutput::Refused(SignerRefusal::ConflictingBinding)])
    );
    let accept = SitePayload::Accept { site: SITE, gv: 0, lv: 0, seq: SeqNum(5), updates: Digest::of(b"v") };
    assert!(shared(&signer.handle(SignerInput::Sign(accept))), "an ACCEPT is a slot of its own kind");
    assert!(shared(&signer.handle(SignerInput::Sign(proposal(1, 5, b"u")))), "the same binding in a later local view");
    assert!(shared(&signer.handle(SignerInput::Sign(proposal(0, 6, b"v")))), "another sequence number");
    let other_site = SitePayload::NewRep { site: ClusterId(9), lv: 1 };
    assert!(matches!(
        signer.handle(SignerInput::Sign(other_site))[..],
        [SignerOutput::Refused(SignerRefusal::WrongSite)]
    ));
    // Once settled below a stable checkpoint, the slot may be bound anew (a new global view
    // re-proposes from there).
    signer.handle(SignerInput::Forget { below: SeqNum(6) });
    assert!(shared(&signer.handle(SignerInput::Sign(proposal(0, 5, b"w")))));
}

/// TS2: every replica that holds `2f + 1` shares combines and verifies once, and they all
/// get the signature, the payload with it where they allowed it themselves.
#[test]
fn ts2_every_replica_combines_once_its_shares_suffice_and_verifies_once() {
    let mut site = Site::<Simulated>::new(SignerLimits::default());
    let payload = proposal(0, 1, b"batch");
    site.sign(&[0, 1, 2], payload);
    for at in 0..4 {
        let signed = site.signed(at);
        assert_eq!(signed.len(), 1, "replica {at}: {:?}", site.outputs[at]);
        let (message, carried, signature) = &signed[0];
        assert_eq!(*message, payload.message());
        assert_eq!(*carried, (at < 3).then_some(payload), "replica {at}");
        assert!(Simulated::verify(&site.key, signature, message));
        assert_eq!(site.signers[at].checks(), 1, "replica {at} verified once");
        assert_eq!(site.signers[at].pending(), 0);
    }
}

/// TS3: a member that sends a bad share (for another message) under a message's digest is
/// blamed at every replica that combined with it, and the site still signs with the three
/// correct members; the blamed member's later share of that message is refused.
#[test]
fn ts3_a_bad_share_is_blamed_and_the_site_still_signs() {
    let mut site = Site::<Simulated>::new(SignerLimits::default());
    let payload = proposal(0, 1, b"batch");
    let message = payload.message();
    // Member 0 (id 3) is faulty: its "share" is of another payload.
    let (_, secrets) = Simulated::deal(4, 3, &mut rand_chacha::ChaCha20Rng::seed_from_u64(11));
    let bad = Simulated::sign_share(&secrets[0], &proposal(0, 1, b"other").message());
    for at in 1..4 {
        site.signers[at].handle(SignerInput::Share { from: ReplicaId(3), message, share: bad });
    }
    site.sign(&[1, 2, 3], payload);
    for at in 1..4 {
        assert_eq!(site.signed(at).len(), 1, "replica {at} signed: {:?}", site.outputs[at]);
        let blamed = site.outputs[at].iter().any(|o| matches!(o, SignerOutput::Blamed { member: ReplicaId(3), .. }));
        assert!(blamed, "replica {at} blamed member 3: {:?}", site.outputs[at]);
    }
}

/// TS4, with the real scheme: the site signature verifies at another site holding only the
/// site's public key (carried as bytes), and not under another site's key.
#[test]
fn ts4_a_site_signature_verifies_elsewhere_with_the_site_key_alone() {
    let mut site = Site::<Bls>::new(SignerLimits::default());
    let payload = SitePayload::Accept { site: SITE, gv: 2, lv: 0, seq: SeqNum(9), updates: Digest::of(b"u") };
    site.sign(&[0, 1, 2, 3], payload);
    let (message, _, signature) = site.signed(3).remove(0);
    let key_bytes = rmp_serde::to_vec(&*site.key).unwrap();
    let remote: <Bls as ThresholdScheme>::PublicKey = rmp_serde::from_slice(&key_bytes).unwrap();
    assert!(Bls::verify(&remote, &signature, &message));
    let (other, _) = Bls::deal(4, 3, &mut rand_chacha::ChaCha20Rng::seed_from_u64(12));
    assert!(!Bls::verify(&other, &signature, &message));
}

/// SM1: payloads that differ in kind or in any field have different messages, so a share
/// or signature for one never verifies for another.
#[test]
fn sm1_every_kind_and_field_is_bound_into_the_message() {
    let updates = Digest::of(b"u");
    let payloads = [
        proposal(0, 1, b"u"),
        proposal(1, 1, b"u"),
        proposal(0, 2, b"u"),
        proposal(0, 1, b"v"),
        SitePayload::Proposal { site: ClusterId(3), gv: 0, lv: 0, seq: SeqNum(1), updates },
        SitePayload::Proposal { site: SITE, gv: 1, lv: 0, seq: SeqNum(1), updates },
        SitePayload::Accept { site: SITE, gv: 0, lv: 0, seq: SeqNum(1), updates },
        SitePayload::NewRep { site: SITE, lv: 1 },
        SitePayload::GlobalVc { site: SITE, gv: 1 },
        SitePayload::SiteCheckpoint { site: SITE, seq: SeqNum(1), state: updates },
    ];
    let messages: std::collections::BTreeSet<Digest> = payloads.iter().map(SitePayload::message).collect();
    assert_eq!(messages.len(), payloads.len());
}

/// A member that floods shares of made-up messages opens at most its allowance of
/// collections; further ones are refused, and its shares of real messages still count.
#[test]
fn a_member_flooding_shares_of_made_up_messages_is_bounded() {
    let limits = SignerLimits { opened_per_member_max: 8, ..SignerLimits::default() };
    let mut site = Site::<Simulated>::new(limits);
    let (_, secrets) = Simulated::deal(4, 3, &mut rand_chacha::ChaCha20Rng::seed_from_u64(11));
    for n in 0..100u64 {
        let made_up = Digest::of(&n.to_le_bytes());
        let share = Simulated::sign_share(&secrets[0], &made_up);
        site.signers[1].handle(SignerInput::Share { from: ReplicaId(3), message: made_up, share });
    }
    assert_eq!(site.signers[1].pending(), 8);
    let refused = site.signers[1].handle(SignerInput::Share {
        from: ReplicaId(3),
        message: Digest::of(b"one more"),
        share: Simulated::sign_share(&secrets[0], &Digest::of(b"one more")),
    });
    assert!(matches!(refused[..], [SignerOutput::Refused(SignerRefusal::TooManyOpened)]));
    let stranger = site.signers[1].handle(SignerInput::Share {
        from: ReplicaId(99),
        message: Digest::of(b"x"),
        share: Simulated::sign_share(&secrets[0], &Digest::of(b"x")),
    });
    assert!(matches!(stranger[..], [SignerOutput::Refused(SignerRefusal::NotAMember)]));
    site.sign(&[0, 1, 2], proposal(0, 1, b"real"));
    assert_eq!(site.signed(1).len(), 1, "the site still signs");
}
