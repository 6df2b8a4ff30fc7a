//! Domain-separated signing of serde payloads, and the `Signed` → `Verified` gate.

use crate::{CryptoError, Digest, KeyPair, PublicKey, Signature};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;

/// A payload kind that can be signed. `DOMAIN` is mixed into the signed digest so that
/// a signature over one kind never verifies as another kind (PBFT.md M1).
pub trait Signable: Serialize {
    const DOMAIN: &'static [u8];
}

/// The digest a signature over `payload` covers:
/// `blake3(len(DOMAIN) ‖ DOMAIN ‖ len(context) ‖ context ‖ len(enc) ‖ enc)`, `enc` the
/// compact rmp-serde encoding.
///
/// `context` is where the signature belongs, chosen by the caller: Bulwark passes the
/// cluster and membership epoch a message is signed in, so a signature made for one
/// cluster or one membership never verifies in another. Every signing and checking call
/// takes it; a signature verifies only under the context it was made in.
pub fn signing_digest<T: Signable>(payload: &T, context: &[u8]) -> Result<Digest, CryptoError> {
    let encoded = rmp_serde::to_vec(payload).map_err(|e| CryptoError::Encode(e.to_string()))?;
    Ok(Digest::of_parts(&[T::DOMAIN, context, &encoded]))
}

/// A payload with a signature, as it travels on the wire. Not yet trusted.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed<T> {
    pub payload: T,
    pub signature: Signature,
}

impl<T: Signable> Signed<T> {
    /// Signs `payload` with `key` in `context` (see [`signing_digest`]).
    pub fn sign(payload: T, key: &KeyPair, context: &[u8]) -> Result<Self, CryptoError> {
        let digest = signing_digest(&payload, context)?;
        Ok(Signed { signature: key.sign_digest(&digest), payload })
    }

    /// Checks the signature against `signer` ([`PublicKey::verify_digest`]) in `context`.
    pub fn verify(self, signer: &PublicKey, context: &[u8]) -> Result<Verified<T>, CryptoError> {
        let digest = signing_digest(&self.payload, context)?;
        signer.verify_digest(&digest, &self.signature)?;
        Ok(Verified { signed: self, digest })
    }
}

impl<T: fmt::Debug> fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signed({:?})", self.payload)
    }
}

/// A signed payload whose signature has been checked. Protocol code accepts only these.
///
/// It can be built only by [`Signed::verify`], [`verify_batch`] or [`Verified::sign`] (a
/// payload signed with one's own key), and it cannot be deserialized: data read from the
/// network is a [`Signed`] until verified.
#[derive(Clone, PartialEq, Eq)]
pub struct Verified<T> {
    signed: Signed<T>,
    digest: Digest,
}

impl<T: Signable> Verified<T> {
    /// Signs a payload with one's own key in `context`; the result is trusted by
    /// construction.
    pub fn sign(payload: T, key: &KeyPair, context: &[u8]) -> Result<Self, CryptoError> {
        let digest = signing_digest(&payload, context)?;
        let signature = key.sign_digest(&digest);
        Ok(Verified { signed: Signed { payload, signature }, digest })
    }
}

impl<T: Signable> Verified<T> {
    /// A payload that carries no signature because its origin is authenticated by other
    /// means: a cluster whose client links are trusted (`client_auth = "connection"`) sends
    /// and accepts requests this way. The signature field holds [`Signature::absent`], which
    /// no key verifies, so such a payload never passes a real check (a cluster that asks for
    /// signatures refuses it). The digest is the one a signature would cover, so digests of
    /// requests and batches do not depend on how requests were authenticated.
    pub fn unsigned(payload: T, context: &[u8]) -> Result<Self, CryptoError> {
        let digest = signing_digest(&payload, context)?;
        Ok(Verified { signed: Signed { payload, signature: Signature::absent() }, digest })
    }

    /// Accepts `signed` without checking its signature. Only for payloads whose sender is
    /// vouched for by the link they came on (see [`Verified::unsigned`]); the caller, not
    /// this crate, decides when that holds.
    pub fn trusted_by_link(signed: Signed<T>, context: &[u8]) -> Result<Self, CryptoError> {
        let digest = signing_digest(&signed.payload, context)?;
        Ok(Verified { signed, digest })
    }
}

impl<T> Verified<T> {
    /// The signed wire form, to forward or to embed in a certificate.
    pub fn signed(&self) -> &Signed<T> {
        &self.signed
    }

    pub fn into_signed(self) -> Signed<T> {
        self.signed
    }

    /// The digest the signature covers: domain tag and payload. For a request this is
    /// the request digest of PBFT.md M2.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    pub fn payload(&self) -> &T {
        &self.signed.payload
    }
}

impl<T> Deref for Verified<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.signed.payload
    }
}

impl<T: fmt::Debug> fmt::Debug for Verified<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Verified({:?})", self.signed.payload)
    }
}

impl<T: Serialize> Serialize for Verified<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.signed.serialize(serializer)
    }
}

/// Verifies many signatures at once, all made in `context`.
///
/// The fast path is ed25519-zebra's batch check. If the batch fails, each signer's items
/// are checked as a batch of their own, and the items of a signer whose batch fails one by
/// one, so a bad signature is attributed to its own item, the good ones still pass, and
/// one signer's bad signatures cost the others little. The result has one entry per
/// input, in order.
///
/// Each item's verdict is its verdict alone, whatever else is in the batch: the validity
/// rule ([`PublicKey::verify_digest`]) is ZIP-215's cofactored equation, and the batch
/// check is `[8]·Σ zᵢ·(sᵢB − Rᵢ − kᵢAᵢ) = 0` with 128-bit coefficients `zᵢ`. A list of
/// signatures each valid alone passes for every choice of coefficients, small-order
/// components included (the cofactor clears them); a list holding an invalid one passes
/// with probability about 2⁻¹²⁸. The coefficients come from a ChaCha20 stream seeded with
/// a blake3 hash of the whole list, so the check uses no outside randomness (the simulator
/// stays reproducible) and a signer cannot choose them without changing the list.
///
/// This is what lets replicas batch what each of them receives on its own (client
/// requests, votes): they reach the same verdict on every signature. (ed25519-dalek's
/// batch check, used before, is not cofactored: a signer could craft, over its own key, a
/// signature with a small-order component in `R` that its equation accepted or refused
/// depending on the companions; the `torsion` module behind the `torsion-crafting`
/// feature builds them for the tests.)
pub fn verify_batch<T: Signable>(
    items: Vec<(Signed<T>, PublicKey)>,
    context: &[u8],
) -> Vec<Result<Verified<T>, CryptoError>> {
    let digests: Vec<Result<Digest, CryptoError>> =
        items.iter().map(|(signed, _)| signing_digest(&signed.payload, context)).collect();
    let all: Vec<usize> = (0..items.len()).collect();
    let mut valid = vec![false; items.len()];
    if batch_passes(&items, &digests, &all) {
        valid.fill(true);
    } else if items.len() > 1 {
        // Some signature is bad. Its signer's other signatures are suspect too, everyone
        // else's likely fine: check each signer's items as a batch of their own, so one
        // signer sending bad signatures does not make everyone's be checked one by one.
        let mut by_signer: BTreeMap<[u8; 32], Vec<usize>> = BTreeMap::new();
        for (index, (_, key)) in items.iter().enumerate() {
            by_signer.entry(key.to_bytes()).or_default().push(index);
        }
        // One signer only: its batch is the one that just failed.
        let groups = if by_signer.len() > 1 { by_signer.values().collect() } else { Vec::new() };
        for group in groups {
            if group.len() > 1 && batch_passes(&items, &digests, group) {
                for &index in group {
                    valid[index] = true;
                }
            }
        }
    }
    items
        .into_iter()
        .zip(digests)
        .zip(valid)
        .map(|(((signed, key), digest), valid)| {
            let digest = digest?;
            if !valid {
                key.verify_digest(&digest, &signed.signature)?;
            }
            Ok(Verified { signed, digest })
        })
        .collect()
}

/// The batch check of [`verify_batch`] over `items[i]` for `i` in `indices`. False if
/// fewer than two, or any digest did not encode, or any key is weak: those are checked
/// one by one.
fn batch_passes<T>(
    items: &[(Signed<T>, PublicKey)],
    digests: &[Result<Digest, CryptoError>],
    indices: &[usize],
) -> bool {
    use rand_core::SeedableRng;
    if indices.len() < 2 {
        return false;
    }
    let mut transcript = blake3::Hasher::new_derive_key("bulwark batch verification coefficients v1");
    let mut verifier = ed25519_zebra::batch::Verifier::new();
    for &index in indices {
        let (signed, key) = &items[index];
        let Ok(digest) = &digests[index] else { return false };
        if key.is_weak() {
            return false;
        }
        let key_bytes = key.to_bytes();
        transcript.update(&key_bytes);
        transcript.update(&signed.signature.to_bytes());
        transcript.update(digest.as_bytes());
        verifier.queue((ed25519_zebra::VerificationKeyBytes::from(key_bytes), signed.signature.0, digest.as_bytes()));
    }
    let seed: [u8; 32] = transcript.finalize().into();
    verifier.verify(rand_chacha::ChaCha20Rng::from_seed(seed)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Vote {
        round: u64,
    }
    impl Signable for Vote {
        const DOMAIN: &'static [u8] = b"test/vote";
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Ballot {
        round: u64,
    }
    impl Signable for Ballot {
        const DOMAIN: &'static [u8] = b"test/ballot";
    }

    const CONTEXT: &[u8] = b"test context";

    fn key(i: u8) -> KeyPair {
        KeyPair::from_seed([i; 32])
    }

    #[test]
    fn sign_then_verify() {
        let signed = Signed::sign(Vote { round: 3 }, &key(1), CONTEXT).unwrap();
        let verified = signed.verify(&key(1).public(), CONTEXT).unwrap();
        assert_eq!(verified.round, 3);
    }

    #[test]
    fn wrong_signer_is_refused() {
        let signed = Signed::sign(Vote { round: 3 }, &key(1), CONTEXT).unwrap();
        assert!(matches!(signed.verify(&key(2).public(), CONTEXT), Err(CryptoError::BadSignature)));
    }

    #[test]
    fn tampered_payload_is_refused() {
        let mut signed = Signed::sign(Vote { round: 3 }, &key(1), CONTEXT).unwrap();
        signed.payload.round = 4;
        assert!(signed.verify(&key(1).public(), CONTEXT).is_err());
    }

    #[test]
    fn a_signature_of_one_kind_does_not_verify_as_another() {
        // M1: same encoded fields, different domain.
        let vote = Signed::sign(Vote { round: 9 }, &key(1), CONTEXT).unwrap();
        let forged = Signed { payload: Ballot { round: 9 }, signature: vote.signature };
        assert!(forged.verify(&key(1).public(), CONTEXT).is_err());
    }

    #[test]
    fn a_signature_made_in_one_context_does_not_verify_in_another() {
        let signed = Signed::sign(Vote { round: 9 }, &key(1), b"cluster 1").unwrap();
        assert!(signed.clone().verify(&key(1).public(), b"cluster 2").is_err());
        assert!(verify_batch(vec![(signed.clone(), key(1).public())], b"cluster 2")[0].is_err());
        assert!(signed.verify(&key(1).public(), b"cluster 1").is_ok());
    }

    #[test]
    fn batch_accepts_all_good_signatures() {
        let items: Vec<_> = (1..=8u8)
            .map(|i| (Signed::sign(Vote { round: i as u64 }, &key(i), CONTEXT).unwrap(), key(i).public()))
            .collect();
        let results = verify_batch(items, CONTEXT);
        assert_eq!(results.len(), 8);
        assert!(results.iter().all(|r| r.is_ok()));
    }

    #[test]
    fn batch_with_one_bad_signature_attributes_it_and_keeps_the_rest() {
        let mut items: Vec<_> = (1..=8u8)
            .map(|i| (Signed::sign(Vote { round: i as u64 }, &key(i), CONTEXT).unwrap(), key(i).public()))
            .collect();
        items[5].0.payload.round = 99;
        let results = verify_batch(items, CONTEXT);
        for (index, result) in results.iter().enumerate() {
            assert_eq!(result.is_err(), index == 5, "item {index}");
        }
    }

    #[test]
    fn an_unsigned_payload_never_verifies_but_keeps_its_digest() {
        let unsigned = Verified::unsigned(Vote { round: 1 }, CONTEXT).unwrap();
        assert_eq!(unsigned.digest(), signing_digest(&Vote { round: 1 }, CONTEXT).unwrap());
        assert!(unsigned.signed().clone().verify(&key(1).public(), CONTEXT).is_err());
        let items = vec![
            (unsigned.signed().clone(), key(1).public()),
            (Signed::sign(Vote { round: 2 }, &key(2), CONTEXT).unwrap(), key(2).public()),
        ];
        let results = verify_batch(items, CONTEXT);
        assert!(results[0].is_err() && results[1].is_ok());
    }

    /// A torsioned signature from signer `seed` over `Vote { round }`, with its key.
    fn torsioned_vote(seed: u8, round: u64) -> (Signed<Vote>, PublicKey) {
        let signed = crate::torsion::sign_with_torsion(
            Vote { round },
            [seed; 32],
            crate::torsion::ORDER_EIGHT_TORSION[0],
            CONTEXT,
        )
        .unwrap();
        (signed, key(seed).public())
    }

    #[test]
    fn crafting_without_torsion_gives_the_ordinary_signature() {
        // The crafting follows RFC 8032, so the torsion, not a crafting slip, is what the
        // tests below exercise.
        let plain = crate::torsion::sign_with_torsion(Vote { round: 4 }, [3; 32], 0, CONTEXT).unwrap();
        assert_eq!(plain, Signed::sign(Vote { round: 4 }, &key(3), CONTEXT).unwrap());
    }

    #[test]
    fn r1_a_torsioned_signature_gets_one_verdict_alone_and_in_every_batch() {
        // A signer's own signature with a small-order component in R satisfies the
        // cofactored equation: valid, alone and in every batch, whatever its companions
        // (under dalek's uncofactored batch check the verdict depended on them).
        for index in 1..8 {
            let signed = crate::torsion::sign_with_torsion(Vote { round: 4 }, [3; 32], index, CONTEXT).unwrap();
            assert!(signed.clone().verify(&key(3).public(), CONTEXT).is_ok(), "torsion point {index} alone");
            for round in 0..16u64 {
                let companion = (Signed::sign(Vote { round }, &key(5), CONTEXT).unwrap(), key(5).public());
                let results = verify_batch(vec![(signed.clone(), key(3).public()), companion], CONTEXT);
                assert!(results.iter().all(Result::is_ok), "torsion point {index}, companion {round}");
            }
        }
        // It is still a signature over its own payload by its own key only.
        let (crafted, _) = torsioned_vote(3, 4);
        assert!(crafted.clone().verify(&key(4).public(), CONTEXT).is_err());
        let tampered = Signed { payload: Vote { round: 5 }, signature: crafted.signature };
        assert!(tampered.verify(&key(3).public(), CONTEXT).is_err());
    }

    #[test]
    fn r1_an_invalid_signature_is_refused_in_every_batch_and_its_companions_pass() {
        let (crafted, crafted_key) = torsioned_vote(3, 4);
        let forged = Signed { payload: Vote { round: 5 }, signature: crafted.signature };
        for round in 0..32u64 {
            let companion = (Signed::sign(Vote { round }, &key(5), CONTEXT).unwrap(), key(5).public());
            let results =
                verify_batch(vec![(forged.clone(), crafted_key), companion, (crafted.clone(), crafted_key)], CONTEXT);
            assert!(results[0].is_err(), "companion {round}");
            assert!(results[1].is_ok() && results[2].is_ok(), "companion {round}");
        }
    }

    #[test]
    fn a_signer_with_bad_signatures_does_not_change_anyone_elses_verdicts() {
        // Signer 7 sends one good and two forged votes among other signers' good ones: the
        // whole batch fails, each signer's own batch is tried next, and only the forgeries
        // are refused.
        let forged = |round| Signed {
            payload: Vote { round: 99 },
            signature: Signed::sign(Vote { round }, &key(7), CONTEXT).unwrap().signature,
        };
        let mut items = Vec::new();
        for round in 0..6u64 {
            items.push((
                Signed::sign(Vote { round }, &key(1 + (round % 3) as u8), CONTEXT).unwrap(),
                key(1 + (round % 3) as u8).public(),
            ));
        }
        items.push((forged(1), key(7).public()));
        items.push((Signed::sign(Vote { round: 2 }, &key(7), CONTEXT).unwrap(), key(7).public()));
        items.push((forged(3), key(7).public()));
        let verdicts: Vec<bool> = verify_batch(items, CONTEXT).iter().map(Result::is_ok).collect();
        assert_eq!(verdicts, [true, true, true, true, true, true, false, true, false]);
    }

    #[test]
    fn a_small_order_key_verifies_nothing() {
        // The identity point: under it the cofactored equation holds for any message with
        // a small-order R and s = 0 (the absent signature), so such keys are refused.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = PublicKey::from_bytes(&identity).expect("the identity decodes");
        assert!(weak.is_weak());
        let absent = Signed { payload: Vote { round: 1 }, signature: Signature::absent() };
        assert!(absent.clone().verify(&weak, CONTEXT).is_err());
        let companion = (Signed::sign(Vote { round: 2 }, &key(2), CONTEXT).unwrap(), key(2).public());
        let results = verify_batch(vec![(absent, weak), companion], CONTEXT);
        assert!(results[0].is_err() && results[1].is_ok());
    }

    #[test]
    fn batch_verdict_is_a_function_of_the_list_alone() {
        // The coefficients come from the list itself, so the same list gets the same
        // verdict in every run and at every replica (the simulator relies on it).
        let (crafted, crafted_key) = torsioned_vote(3, 4);
        for round in 0..16u64 {
            let list = vec![
                (crafted.clone(), crafted_key),
                (Signed::sign(Vote { round }, &key(5), CONTEXT).unwrap(), key(5).public()),
            ];
            let first: Vec<bool> = verify_batch(list.clone(), CONTEXT).iter().map(Result::is_ok).collect();
            let second: Vec<bool> = verify_batch(list, CONTEXT).iter().map(Result::is_ok).collect();
            assert_eq!(first, second, "companion round {round}");
        }
    }

    #[test]
    fn verified_digest_is_the_signing_digest() {
        let verified = Verified::sign(Vote { round: 1 }, &key(1), CONTEXT).unwrap();
        assert_eq!(verified.digest(), signing_digest(&Vote { round: 1 }, CONTEXT).unwrap());
    }
}
