//! Domain-separated signing of serde payloads, and the `Signed` → `Verified` gate.

use crate::{CryptoError, Digest, KeyPair, PublicKey, Signature};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::Deref;

/// A payload kind that can be signed. `DOMAIN` is mixed into the signed digest so that
/// a signature over one kind never verifies as another kind (PBFT.md M1).
pub trait Signable: Serialize {
    const DOMAIN: &'static [u8];
}

/// The digest a signature over `payload` covers:
/// `blake3(len(DOMAIN) ‖ DOMAIN ‖ len(enc) ‖ enc)`, `enc` the compact rmp-serde encoding.
pub fn signing_digest<T: Signable>(payload: &T) -> Result<Digest, CryptoError> {
    let encoded = rmp_serde::to_vec(payload).map_err(|e| CryptoError::Encode(e.to_string()))?;
    Ok(Digest::of_parts(&[T::DOMAIN, &encoded]))
}

/// A payload with a signature, as it travels on the wire. Not yet trusted.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed<T> {
    pub payload: T,
    pub signature: Signature,
}

impl<T: Signable> Signed<T> {
    /// Signs `payload` with `key`.
    pub fn sign(payload: T, key: &KeyPair) -> Result<Self, CryptoError> {
        let digest = signing_digest(&payload)?;
        Ok(Signed { signature: key.sign_digest(&digest), payload })
    }

    /// Checks the signature against `signer` with `verify_strict`.
    pub fn verify(self, signer: &PublicKey) -> Result<Verified<T>, CryptoError> {
        let digest = signing_digest(&self.payload)?;
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
    /// Signs a payload with one's own key; the result is trusted by construction.
    pub fn sign(payload: T, key: &KeyPair) -> Result<Self, CryptoError> {
        let digest = signing_digest(&payload)?;
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
    pub fn unsigned(payload: T) -> Result<Self, CryptoError> {
        let digest = signing_digest(&payload)?;
        Ok(Verified { signed: Signed { payload, signature: Signature::absent() }, digest })
    }

    /// Accepts `signed` without checking its signature. Only for payloads whose sender is
    /// vouched for by the link they came on (see [`Verified::unsigned`]); the caller, not
    /// this crate, decides when that holds.
    pub fn trusted_by_link(signed: Signed<T>) -> Result<Self, CryptoError> {
        let digest = signing_digest(&signed.payload)?;
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

/// Verifies many signatures at once.
///
/// The fast path is ed25519 batch verification. If the batch fails, every item is checked
/// alone with `verify_strict`, so a bad signature is attributed to its own item and the
/// good ones still pass. Weak (small-order) public keys are refused before batching, as
/// `verify_strict` would refuse them. The result has one entry per input, in order.
///
/// What the batch verdict means. ed25519-dalek's batch check (2.2) is not cofactored: it
/// tests `Σ zᵢ·(sᵢB − Rᵢ − kᵢAᵢ) = 0` with 128-bit coefficients `zᵢ` drawn from a Merlin
/// transcript of the items themselves (no outside randomness). Hence:
///
/// * A signature valid under `verify_strict` satisfies its equation exactly, so a list of
///   such signatures always passes the batch.
/// * The verdict on a list is a deterministic function of that list: every replica checking
///   the same list (a PRE-PREPARE's or BATCH-REPLY's batch) reaches the same verdict.
/// * The verdict on one item can depend on the *other* items. A signer can craft, over its
///   own key only, a signature whose `R` carries a small-order component `T` (see the
///   `torsion` module behind the `torsion-crafting` feature): `verify_strict` refuses it,
///   and a batch accepts it exactly when `ord(T)` divides its coefficient, probability
///   about `1/ord(T)` (at least 1/8) per batch it lands in.
///
/// So never use this where each caller forms its own batch and the verdicts must agree:
/// client requests arriving at replicas are checked one by one for that reason
/// (`bulwark_framework::verify::verify_requests`); otherwise a Byzantine client could make
/// a correct primary propose a request its backups refuse.
pub fn verify_batch<T: Signable>(items: Vec<(Signed<T>, PublicKey)>) -> Vec<Result<Verified<T>, CryptoError>> {
    let mut digests = Vec::with_capacity(items.len());
    for (signed, _) in &items {
        digests.push(signing_digest(&signed.payload));
    }
    let batchable =
        items.len() > 1 && digests.iter().all(|d| d.is_ok()) && items.iter().all(|(_, key)| !key.0.is_weak());
    if batchable {
        let digests: Vec<Digest> = digests.iter().map(|d| *d.as_ref().expect("checked above")).collect();
        let messages: Vec<&[u8]> = digests.iter().map(|d| &d.0[..]).collect();
        let signatures: Vec<ed25519_dalek::Signature> = items.iter().map(|(s, _)| s.signature.0).collect();
        let keys: Vec<ed25519_dalek::VerifyingKey> = items.iter().map(|(_, k)| k.0).collect();
        if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
            return items
                .into_iter()
                .zip(digests)
                .map(|((signed, _), digest)| Ok(Verified { signed, digest }))
                .collect();
        }
    }
    items
        .into_iter()
        .zip(digests)
        .map(|((signed, key), digest)| {
            let digest = digest?;
            key.verify_digest(&digest, &signed.signature)?;
            Ok(Verified { signed, digest })
        })
        .collect()
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

    fn key(i: u8) -> KeyPair {
        KeyPair::from_seed([i; 32])
    }

    #[test]
    fn sign_then_verify() {
        let signed = Signed::sign(Vote { round: 3 }, &key(1)).unwrap();
        let verified = signed.verify(&key(1).public()).unwrap();
        assert_eq!(verified.round, 3);
    }

    #[test]
    fn wrong_signer_is_refused() {
        let signed = Signed::sign(Vote { round: 3 }, &key(1)).unwrap();
        assert!(matches!(signed.verify(&key(2).public()), Err(CryptoError::BadSignature)));
    }

    #[test]
    fn tampered_payload_is_refused() {
        let mut signed = Signed::sign(Vote { round: 3 }, &key(1)).unwrap();
        signed.payload.round = 4;
        assert!(signed.verify(&key(1).public()).is_err());
    }

    #[test]
    fn a_signature_of_one_kind_does_not_verify_as_another() {
        // M1: same encoded fields, different domain.
        let vote = Signed::sign(Vote { round: 9 }, &key(1)).unwrap();
        let forged = Signed { payload: Ballot { round: 9 }, signature: vote.signature };
        assert!(forged.verify(&key(1).public()).is_err());
    }

    #[test]
    fn batch_accepts_all_good_signatures() {
        let items: Vec<_> =
            (1..=8u8).map(|i| (Signed::sign(Vote { round: i as u64 }, &key(i)).unwrap(), key(i).public())).collect();
        let results = verify_batch(items);
        assert_eq!(results.len(), 8);
        assert!(results.iter().all(|r| r.is_ok()));
    }

    #[test]
    fn batch_with_one_bad_signature_attributes_it_and_keeps_the_rest() {
        let mut items: Vec<_> =
            (1..=8u8).map(|i| (Signed::sign(Vote { round: i as u64 }, &key(i)).unwrap(), key(i).public())).collect();
        items[5].0.payload.round = 99;
        let results = verify_batch(items);
        for (index, result) in results.iter().enumerate() {
            assert_eq!(result.is_err(), index == 5, "item {index}");
        }
    }

    #[test]
    fn an_unsigned_payload_never_verifies_but_keeps_its_digest() {
        let unsigned = Verified::unsigned(Vote { round: 1 }).unwrap();
        assert_eq!(unsigned.digest(), signing_digest(&Vote { round: 1 }).unwrap());
        assert!(unsigned.signed().clone().verify(&key(1).public()).is_err());
        let items = vec![
            (unsigned.signed().clone(), key(1).public()),
            (Signed::sign(Vote { round: 2 }, &key(2)).unwrap(), key(2).public()),
        ];
        let results = verify_batch(items);
        assert!(results[0].is_err() && results[1].is_ok());
    }

    /// A torsioned signature from signer `seed` over `Vote { round }`, with its key.
    fn torsioned_vote(seed: u8, round: u64) -> (Signed<Vote>, PublicKey) {
        let signed =
            crate::torsion::sign_with_torsion(Vote { round }, [seed; 32], crate::torsion::ORDER_EIGHT_TORSION[0])
                .unwrap();
        (signed, key(seed).public())
    }

    #[test]
    fn crafting_without_torsion_gives_the_ordinary_signature() {
        // The crafting follows RFC 8032, so the torsion, not a crafting slip, is what the
        // tests below exercise.
        let plain = crate::torsion::sign_with_torsion(Vote { round: 4 }, [3; 32], 0).unwrap();
        assert_eq!(plain, Signed::sign(Vote { round: 4 }, &key(3)).unwrap());
    }

    #[test]
    fn r1_verify_strict_refuses_a_signature_with_a_torsion_component() {
        for index in 1..8 {
            let signed = crate::torsion::sign_with_torsion(Vote { round: 4 }, [3; 32], index).unwrap();
            assert!(signed.verify(&key(3).public()).is_err(), "torsion point {index}");
        }
        // A batch of one is checked with `verify_strict` too.
        let (signed, signer) = torsioned_vote(3, 4);
        assert!(verify_batch(vec![(signed, signer)])[0].is_err());
    }

    #[test]
    fn r1_batch_verdict_on_a_torsioned_signature_depends_on_its_companion() {
        // The split verdict: the same crafted signature, batched with different honest
        // companions, is accepted in some batches and refused in others.
        let (crafted, crafted_key) = torsioned_vote(3, 4);
        let mut accepted = 0;
        let mut refused = 0;
        for round in 0..64u64 {
            let companion = (Signed::sign(Vote { round }, &key(5)).unwrap(), key(5).public());
            let results = verify_batch(vec![(crafted.clone(), crafted_key), companion]);
            assert!(results[1].is_ok(), "the honest companion passes either way");
            if results[0].is_ok() {
                accepted += 1;
            } else {
                refused += 1;
            }
        }
        assert!(accepted > 0 && refused > 0, "accepted {accepted}, refused {refused} of 64 batches");
    }

    #[test]
    fn batch_verdict_is_a_function_of_the_list_alone() {
        // What makes the batch path safe where every replica checks the same list (a
        // PRE-PREPARE's batch): ed25519-dalek derives the coefficients from the items
        // themselves, so the same list gets the same verdict everywhere, torsion or not.
        let (crafted, crafted_key) = torsioned_vote(3, 4);
        for round in 0..16u64 {
            let list =
                vec![(crafted.clone(), crafted_key), (Signed::sign(Vote { round }, &key(5)).unwrap(), key(5).public())];
            let first: Vec<bool> = verify_batch(list.clone()).iter().map(Result::is_ok).collect();
            let second: Vec<bool> = verify_batch(list).iter().map(Result::is_ok).collect();
            assert_eq!(first, second, "companion round {round}");
        }
    }

    #[test]
    fn verified_digest_is_the_signing_digest() {
        let verified = Verified::sign(Vote { round: 1 }, &key(1)).unwrap();
        assert_eq!(verified.digest(), signing_digest(&Vote { round: 1 }).unwrap());
    }
}
