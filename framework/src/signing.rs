//! How protocol messages are signed and checked: always in a [`Scope`].
//!
//! A signature covers the message kind's domain tag (PBFT.md M1), the scope it was made
//! in, and the payload ([`bulwark_crypto::signing_digest`]). Replicas' messages bind their
//! cluster and membership epoch, so a message signed for one cluster, or by the members of
//! one epoch, is worth nothing in another cluster or another epoch, even between replicas
//! that share a key. What clients sign (requests, inquiries) binds the cluster only: a
//! request stays valid across a change of membership, and is retransmitted to the new
//! members with the same timestamp.
//!
//! Every signing and checking in the framework goes through [`Scope`]'s methods here, so
//! there is one place where the binding is made.

use crate::membership::Scope;
use bulwark_crypto::{
    signing_digest, verify_batch, CryptoError, Digest, KeyPair, PublicKey, Signable, Signed, Verified,
};

/// A payload kind of the protocol: which parts of a [`Scope`] its signatures bind.
pub trait Scoped: Signable {
    /// Whether signatures bind the epoch as well as the cluster. True for everything
    /// replicas sign; false for what clients sign.
    const BINDS_EPOCH: bool = true;
}

/// The signing context of one payload kind in one scope: the cluster (4 bytes,
/// little-endian) and, if the kind binds it, the epoch (8 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    bytes: [u8; 12],
    len: usize,
}

impl Context {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Scope {
    /// The context in which payloads of kind `T` are signed in this scope.
    pub fn context<T: Scoped>(&self) -> Context {
        let mut bytes = [0u8; 12];
        bytes[..4].copy_from_slice(&self.cluster.0.to_le_bytes());
        let len = if T::BINDS_EPOCH {
            bytes[4..].copy_from_slice(&self.epoch.0.to_le_bytes());
            12
        } else {
            4
        };
        Context { bytes, len }
    }

    /// Signs one of this replica's (or client's) own payloads. Encoding a fixed-shape
    /// protocol payload cannot fail.
    pub fn sign<T: Scoped>(&self, payload: T, key: &KeyPair) -> Verified<T> {
        Verified::sign(payload, key, self.context::<T>().as_bytes()).expect("encoding a protocol payload cannot fail")
    }

    /// Checks `signed` against `signer` in this scope.
    pub fn verify<T: Scoped>(&self, signed: Signed<T>, signer: &PublicKey) -> Result<Verified<T>, CryptoError> {
        signed.verify(signer, self.context::<T>().as_bytes())
    }

    /// Checks many signatures made in this scope at once (see [`bulwark_crypto::verify_batch`]).
    pub fn verify_batch<T: Scoped>(&self, items: Vec<(Signed<T>, PublicKey)>) -> Vec<Result<Verified<T>, CryptoError>> {
        verify_batch(items, self.context::<T>().as_bytes())
    }

    /// The digest a signature over `payload` in this scope covers.
    pub fn digest<T: Scoped>(&self, payload: &T) -> Digest {
        signing_digest(payload, self.context::<T>().as_bytes()).expect("encoding a protocol payload cannot fail")
    }

    /// A payload sent without a signature (see [`Verified::unsigned`]), with the digest a
    /// signature in this scope would cover.
    pub fn unsigned<T: Scoped>(&self, payload: T) -> Verified<T> {
        Verified::unsigned(payload, self.context::<T>().as_bytes()).expect("encoding a protocol payload cannot fail")
    }

    /// Accepts `signed` on the word of the link it came on (see [`Verified::trusted_by_link`]).
    pub fn trusted_by_link<T: Scoped>(&self, signed: Signed<T>) -> Result<Verified<T>, CryptoError> {
        Verified::trusted_by_link(signed, self.context::<T>().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Timestamp;
    use crate::ids::{ClusterId, Epoch, ReplicaId, SeqNum, View};
    use crate::messages::{ClientKey, Prepare, Request};
    use bulwark_crypto::Digest;

    fn scope(cluster: u32, epoch: u64) -> Scope {
        Scope { cluster: ClusterId(cluster), epoch: Epoch(epoch) }
    }

    fn prepare() -> Prepare {
        Prepare { view: View(0), seq: SeqNum(1), digest: Digest::of(b"batch"), replica: ReplicaId(1) }
    }

    #[test]
    fn a_replica_signature_binds_the_cluster_and_the_epoch() {
        let key = KeyPair::from_seed([1; 32]);
        let signed = scope(1, 0).sign(prepare(), &key).into_signed();
        assert!(scope(2, 0).verify(signed.clone(), &key.public()).is_err(), "another cluster");
        assert!(scope(1, 1).verify(signed.clone(), &key.public()).is_err(), "another epoch");
        assert!(scope(1, 0).verify(signed, &key.public()).is_ok());
    }

    #[test]
    fn a_client_signature_binds_the_cluster_only() {
        let key = KeyPair::from_seed([2; 32]);
        let request = Request {
            client_key: ClientKey::from(key.public()),
            timestamp: Timestamp(1),
            read_only: false,
            operation: vec![1],
        };
        let signed = scope(1, 0).sign(request, &key).into_signed();
        assert!(scope(1, 5).verify(signed.clone(), &key.public()).is_ok(), "any epoch of its cluster");
        assert!(scope(2, 0).verify(signed, &key.public()).is_err(), "not another cluster");
    }
}
