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
/// Note: batch verification is cofactored while `verify_strict` is not, so a signature that
/// its own signer deliberately crafted with a mixed-order torsion component may pass in a
/// batch and fail alone. Only the signer can produce such a signature (it cannot forge one
/// for an honest key); the effect is that such a signer's message may be accepted by some
/// replicas and not others, which the protocol already tolerates from a Byzantine sender.
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

    #[test]
    fn verified_digest_is_the_signing_digest() {
        let verified = Verified::sign(Vote { round: 1 }, &key(1)).unwrap();
        assert_eq!(verified.digest(), signing_digest(&Vote { round: 1 }).unwrap());
    }
}
