//! Threshold signatures: how a Steward site speaks with one signature made from the shares
//! of `2f + 1` of its `3f + 1` replicas.
//!
//! [`ThresholdScheme`] is the small interface the site roles use: a key set dealt per site
//! (one public key with its public shares, one secret share per replica), sign a share,
//! verify a share, combine shares, verify a combined signature. Two schemes implement it:
//! [`Bls`] (BLS12-381, the real one) and [`Simulated`] (a fast stand-in for simulator runs
//! whose verdicts match the real scheme's; it is not secure and says so).
//!
//! What is signed is never a payload's bytes alone but [`threshold_message`] of a domain
//! tag and the payload (docs/STEWARD.md SM1): a share or signature for one kind of message
//! never verifies as another. [`ShareCollector`] gathers shares for one message and
//! combines them optimistically, verifying the combined signature once and checking shares
//! one by one only when that fails, to blame the bad ones (TS2, TS3).
//!
//! Key files hold the site's public key (`site-<j>.pub`) and a replica's secret share
//! (`replica-<i>.share`), hex with a header line naming the scheme, refused with an error
//! naming the file and the problem as the ed25519 key files are.

mod bls;
mod collector;
mod files;
mod simulated;

pub use bls::Bls;
pub use collector::{Combined, ShareCollector, ShareRefusal};
pub use files::{load_public_key, load_secret_share, save_public_key, save_secret_share};
pub use simulated::Simulated;

use crate::Digest;
use rand_core::CryptoRngCore;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;

/// Domain tag of every threshold-signed message, before the message kind's own tag.
const THRESHOLD_DOMAIN: &[u8] = b"bulwark/threshold/v1";

/// What a threshold scheme signs for a payload of kind `domain`: the digest of the two,
/// so that no share or signature made for one kind verifies for another (SM1).
pub fn threshold_message(domain: &[u8], payload: &[u8]) -> Digest {
    Digest::of_parts(&[THRESHOLD_DOMAIN, domain, payload])
}

/// Why shares could not be combined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThresholdError {
    #[error("{have} distinct shares, {need} needed")]
    NotEnoughShares { have: usize, need: usize },
    #[error("share index {index} is not below the key's {members} members")]
    UnknownIndex { index: u32, members: usize },
    #[error("shares do not combine: {0}")]
    Combine(String),
}

/// A `t`-of-`n` threshold signature scheme with a trusted dealer. Shares are numbered
/// `0..n` (a replica's position in its site's sorted member list).
pub trait ThresholdScheme: Debug + Send + Sync + 'static {
    /// The site's public key: verifies combined signatures, and every member's share.
    type PublicKey: Clone + Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync;
    /// One member's secret share. Its `Debug` never shows the secret.
    type SecretShare: Debug + Serialize + DeserializeOwned + Send + Sync;
    /// One member's share of a signature.
    type Share: Clone + Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync;
    /// A combined signature.
    type Signature: Clone + Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync;

    /// The scheme's name, written in key files.
    const NAME: &'static str;

    /// Deals a key set for `members` members of which any `needed` combine.
    fn deal(members: usize, needed: usize, rng: &mut impl CryptoRngCore) -> (Self::PublicKey, Vec<Self::SecretShare>);

    /// The number of members the key was dealt for.
    fn members(key: &Self::PublicKey) -> usize;

    /// The number of distinct shares that combine.
    fn needed(key: &Self::PublicKey) -> usize;

    /// The index of a secret share.
    fn index(secret: &Self::SecretShare) -> u32;

    fn sign_share(secret: &Self::SecretShare, message: &Digest) -> Self::Share;

    /// Whether `share` is member `index`'s share of `message`.
    fn verify_share(key: &Self::PublicKey, index: u32, share: &Self::Share, message: &Digest) -> bool;

    /// Combines `shares` (distinct indices, at least [`ThresholdScheme::needed`]) without
    /// checking them: a bad share makes a signature that does not verify.
    fn combine(key: &Self::PublicKey, shares: &[(u32, Self::Share)]) -> Result<Self::Signature, ThresholdError>;

    fn verify(key: &Self::PublicKey, signature: &Self::Signature, message: &Digest) -> bool;
}

/// The checks every scheme's `combine` makes before combining.
fn check_combinable(members: usize, needed: usize, shares: &[(u32, impl Sized)]) -> Result<(), ThresholdError> {
    if let Some((index, _)) = shares.iter().find(|(index, _)| *index as usize >= members) {
        return Err(ThresholdError::UnknownIndex { index: *index, members });
    }
    let mut indices: Vec<u32> = shares.iter().map(|(index, _)| *index).collect();
    indices.sort_unstable();
    indices.dedup();
    if indices.len() < needed {
        return Err(ThresholdError::NotEnoughShares { have: indices.len(), need: needed });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
