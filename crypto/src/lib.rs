//! Keys, signatures and digests for Bulwark.
//!
//! * [`Digest`] is a blake3 hash.
//! * [`KeyPair`] / [`PublicKey`] / [`Signature`] wrap ed25519-dalek 2 (keys, signing);
//!   a signature is valid under ZIP-215's rules, checked with ed25519-zebra: the
//!   cofactored equation, a canonical `s`, and here also a key not of small order.
//!   Replicas check what each of them receives on its own and must agree on every
//!   signature; under ZIP-215 a batch check and a single check agree on every signature,
//!   which `verify_strict` with ed25519-dalek's (uncofactored) batch check does not.
//! * A payload is signed through [`Signable`], which names a domain tag per message kind,
//!   so a signature over one kind never verifies as another (PBFT.md M1).
//! * [`Signed<T>`] is what travels on the wire; [`Verified<T>`] is what protocol code
//!   accepts. The only ways to obtain a `Verified<T>` are verifying a `Signed<T>` or
//!   signing a payload yourself, so unverified data cannot reach protocol logic.
//! * [`verify_batch`] checks many signatures at once and, if the batch fails, falls back
//!   to one-by-one checks so that a bad signature is attributed to its sender and the
//!   good ones still pass. Each item's verdict is the one it gets alone (see its
//!   documentation).
//!
//! * [`threshold`]: threshold signatures, with which a Steward site of `3f + 1` replicas
//!   speaks with one signature made from `2f + 1` shares (BLS12-381, and a fast stand-in
//!   for simulator runs whose verdicts match).

#![forbid(unsafe_code)]

mod keys;
pub mod merkle;
mod signed;
pub mod threshold;
#[cfg(feature = "torsion-crafting")]
pub mod torsion;

pub use keys::{KeyPair, PublicKey, Signature, KEY_FILE_HEADER};
pub use signed::{signing_digest, verify_batch, Signable, Signed, Verified};

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;

/// Errors of this crate. Every variant names what was wrong; none is fatal to a caller.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("signature does not verify for the claimed signer")]
    BadSignature,
    #[error("public key bytes are not a valid ed25519 point")]
    BadPublicKey,
    #[error("payload could not be encoded for signing: {0}")]
    Encode(String),
    #[error("key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
}

/// A blake3 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct Digest(#[serde(with = "serde_bytes")] pub [u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(*blake3::hash(bytes).as_bytes())
    }

    /// The digest of several parts, each length-prefixed so that different splits of the
    /// same bytes give different digests.
    pub fn of_parts(parts: &[&[u8]]) -> Self {
        let mut hasher = blake3::Hasher::new();
        for part in parts {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        Digest(*hasher.finalize().as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex of the full digest.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// Incremental hashing for digests over many pieces (batch digests, state digests).
#[derive(Clone, Default)]
pub struct DigestBuilder(blake3::Hasher);

impl DigestBuilder {
    pub fn new(domain: &[u8]) -> Self {
        let mut builder = DigestBuilder(blake3::Hasher::new());
        builder.update(domain);
        builder
    }

    /// Adds one length-prefixed piece.
    pub fn update(&mut self, piece: &[u8]) -> &mut Self {
        self.0.update(&(piece.len() as u64).to_le_bytes());
        self.0.update(piece);
        self
    }

    pub fn update_u64(&mut self, value: u64) -> &mut Self {
        self.0.update(&value.to_le_bytes());
        self
    }

    pub fn finish(&self) -> Digest {
        Digest(*self.0.finalize().as_bytes())
    }
}

impl fmt::Debug for DigestBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DigestBuilder")
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Eight hex digits are plenty to tell digests apart in logs.
        write!(f, "{}", &hex::encode(&self.0[..4]))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_parts_depends_on_the_split() {
        assert_ne!(Digest::of_parts(&[b"ab", b"c"]), Digest::of_parts(&[b"a", b"bc"]));
        assert_eq!(Digest::of_parts(&[b"ab", b"c"]), Digest::of_parts(&[b"ab", b"c"]));
    }

    #[test]
    fn digest_builder_is_domain_separated() {
        let a = DigestBuilder::new(b"one").update(b"x").finish();
        let b = DigestBuilder::new(b"two").update(b"x").finish();
        assert_ne!(a, b);
    }
}
