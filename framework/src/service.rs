//! The one thing a user writes: a deterministic service.

use bulwark_crypto::Digest;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt::Debug;

/// A deterministic state machine replicated by Bulwark.
///
/// Every correct replica calls [`Service::execute`] with the same operations in the same
/// order, so `execute` must depend on nothing but the state and the operation: no clock,
/// no randomness, no iteration over a `HashMap`, no I/O. Snapshots must be canonical:
/// two replicas in the same state produce the same bytes.
pub trait Service: 'static {
    /// The operations clients send. Decoded from the request with rmp-serde.
    type Op: Serialize + DeserializeOwned + Debug + Clone;
    /// The replies clients receive.
    type Reply: Serialize + DeserializeOwned + Debug + Clone + PartialEq;

    /// Applies an ordered operation.
    fn execute(&mut self, op: &Self::Op) -> Self::Reply;

    /// Answers `op` without changing state, or `None` if `op` is not read-only (then the
    /// client must send it ordered). Used by the read-only optimisation.
    fn query(&self, op: &Self::Op) -> Option<Self::Reply>;

    /// A canonical encoding of the whole state.
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the state with a snapshot taken by [`Service::snapshot`].
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), ServiceError>;

    /// A digest of the state. The default hashes the snapshot; override it if the service
    /// can compute it faster (for example incrementally).
    fn state_digest(&self) -> Digest {
        Digest::of(&self.snapshot())
    }
}

/// A service refused a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("snapshot could not be restored: {0}")]
pub struct ServiceError(pub String);

/// What a replica answers to a request: the service's reply, or why the operation never
/// reached the service. Encoded with rmp-serde into the `result` of a REPLY.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome<R> {
    Ok(R),
    /// The operation bytes did not decode as the service's `Op`. Deterministic: every
    /// correct replica answers the same, and the state does not change.
    MalformedOperation,
    /// A read-only request carried an operation the service does not answer read-only.
    NotReadOnly,
}
