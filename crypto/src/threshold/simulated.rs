//! A fast stand-in for threshold signatures in simulator runs: keyed blake3 hashes in
//! place of pairings, a few hundred nanoseconds instead of a millisecond per operation.
//!
//! **Not secure, and not meant to be:** its public key holds every secret, so whoever has
//! it can sign for the site. What it keeps of the real scheme is every verdict a protocol
//! role can observe: a member's share verifies only under that member's index and only
//! for its message; `needed` distinct shares combine, fewer do not; combining with a bad
//! share gives a signature that does not verify; the combined signature is the same from
//! any `needed` good shares. `threshold/tests.rs` checks these verdicts against [`super::Bls`]'s.
//! A stand-in share carries its message's digest (so that combining can tell a bad share
//! from a good one without the message), 32 bytes more than a real share.

use super::{check_combinable, ThresholdError, ThresholdScheme};
use crate::Digest;
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The stand-in scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Simulated;

/// The stand-in's site key: every secret, in the clear (see the module documentation).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimulatedKey {
    needed: usize,
    site: [u8; 32],
    members: Vec<[u8; 32]>,
}

impl fmt::Debug for SimulatedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SimulatedKey({} of {})", self.needed, self.members.len())
    }
}

/// One member's secret in the stand-in.
#[derive(Serialize, Deserialize)]
pub struct SimulatedSecret {
    index: u32,
    secret: [u8; 32],
}

impl fmt::Debug for SimulatedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SimulatedSecret({})", self.index)
    }
}

/// A share of the stand-in: the message it is for, and its member's keyed hash of it.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimulatedShare {
    message: Digest,
    mac: Mac,
}

impl fmt::Debug for SimulatedShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SimulatedShare({:?} for {:?})", self.mac, self.message)
    }
}

/// A keyed hash: the stand-in's signature.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mac(pub [u8; 32]);

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", hex::encode(&self.0[..4]))
    }
}

fn mac(key: &[u8; 32], message: &Digest) -> Mac {
    Mac(*blake3::keyed_hash(key, message.as_bytes()).as_bytes())
}

/// Domain of the value a combination with a bad share gives: never a site's MAC of any
/// message.
const SPOILED: &[u8] = b"bulwark/simulated-threshold/spoiled";

impl ThresholdScheme for Simulated {
    type PublicKey = SimulatedKey;
    type SecretShare = SimulatedSecret;
    type Share = SimulatedShare;
    type Signature = Mac;

    const NAME: &'static str = "simulated";

    fn deal(members: usize, needed: usize, rng: &mut impl CryptoRngCore) -> (SimulatedKey, Vec<SimulatedSecret>) {
        let mut draw = || {
            let mut secret = [0u8; 32];
            rng.fill_bytes(&mut secret);
            secret
        };
        let site = draw();
        let secrets: Vec<[u8; 32]> = (0..members).map(|_| draw()).collect();
        let shares = secrets.iter().enumerate().map(|(i, s)| SimulatedSecret { index: i as u32, secret: *s }).collect();
        (SimulatedKey { needed, site, members: secrets }, shares)
    }

    fn members(key: &SimulatedKey) -> usize {
        key.members.len()
    }

    fn needed(key: &SimulatedKey) -> usize {
        key.needed
    }

    fn index(secret: &SimulatedSecret) -> u32 {
        secret.index
    }

    fn sign_share(secret: &SimulatedSecret, message: &Digest) -> SimulatedShare {
        SimulatedShare { message: *message, mac: mac(&secret.secret, message) }
    }

    fn verify_share(key: &SimulatedKey, index: u32, share: &SimulatedShare, message: &Digest) -> bool {
        share.message == *message
            && key.members.get(index as usize).is_some_and(|secret| mac(secret, message) == share.mac)
    }

    fn combine(key: &SimulatedKey, shares: &[(u32, SimulatedShare)]) -> Result<Mac, ThresholdError> {
        check_combinable(key.members.len(), key.needed, shares)?;
        let message = shares[0].1.message;
        if shares.iter().all(|(index, share)| Simulated::verify_share(key, *index, share, &message)) {
            return Ok(mac(&key.site, &message));
        }
        // As a real combination with a bad share: a value that verifies for no message.
        let mut spoiled = blake3::Hasher::new_keyed(&key.site);
        spoiled.update(SPOILED);
        for (index, share) in shares {
            spoiled.update(&index.to_le_bytes()).update(share.message.as_bytes()).update(&share.mac.0);
        }
        Ok(Mac(*spoiled.finalize().as_bytes()))
    }

    fn verify(key: &SimulatedKey, signature: &Mac, message: &Digest) -> bool {
        mac(&key.site, message) == *signature
    }
}
