//! The one thing a user writes: a deterministic service, and what it is told about each
//! operation it executes.

use crate::ids::{ClientId, SeqNum};
use crate::messages::ClientKey;
use bulwark_crypto::{Digest, DigestBuilder};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt::Debug;
use std::time::{Duration, SystemTime};

/// A deterministic state machine replicated by Bulwark.
///
/// Every correct replica calls [`Service::execute`] with the same operations and the same
/// [`ExecutionContext`]s in the same order, so `execute` must depend on nothing but the
/// state, the operation and the context: no clock (use [`ExecutionContext::time`]), no
/// randomness of its own (use [`ExecutionContext::rng`]), no iteration over a `HashMap`, no
/// I/O. Snapshots must be canonical: two replicas in the same state produce the same bytes.
/// `bulwark_framework::testkit` checks both on your service before a cluster ever runs it.
///
/// A panic in `execute` does not take a replica down: the operation is defined to have had
/// no effect (the replica rebuilds the state from its last checkpoint image, see
/// [`crate::roles::executor`]) and its client gets [`Outcome::ServiceFailed`].
///
/// The checkpoint digest covers the snapshot's bytes, chunk by chunk, because state
/// transfer checks each fetched chunk against it; so a service has no digest of its own to
/// offer, and there is no `state_digest` method.
pub trait Service: 'static {
    /// The operations clients send. Decoded from the request with rmp-serde.
    type Op: Serialize + DeserializeOwned + Debug + Clone;
    /// The replies clients receive.
    type Reply: Serialize + DeserializeOwned + Debug + Clone + PartialEq;

    /// Applies an ordered operation.
    fn execute(&mut self, op: &Self::Op, context: &mut ExecutionContext) -> Self::Reply;

    /// Answers `op` without changing state, or `None` if `op` is not read-only (then the
    /// client must send it ordered). Used by the read-only optimisation. `caller` is the
    /// request's signer (see [`ExecutionContext::caller`]).
    fn query(&self, op: &Self::Op, caller: &Caller) -> Option<Self::Reply>;

    /// A canonical encoding of the whole state.
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the state with a snapshot taken by [`Service::snapshot`].
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), ServiceError>;
}

/// Who sent an operation: the public key that signed the request, and the client id derived
/// from it. With `client_auth = "signed"` (the default) every replica checked the signature,
/// so a service may grant rights by key ("only the holder may cancel"). With
/// `client_auth = "connection"` the key is what the client's connection claimed; see
/// [`crate::config::ClientAuth::Connection`] for what that trusts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Caller {
    pub id: ClientId,
    pub key: ClientKey,
}

impl Caller {
    /// The caller that signs with `key`.
    pub fn new(key: ClientKey) -> Caller {
        Caller { id: crate::messages::client_id(&key), key }
    }

    /// A caller made from one byte, for a service's unit tests: `Caller::test(1)` and
    /// `Caller::test(2)` are two different clients.
    pub fn test(n: u8) -> Caller {
        Caller::new(ClientKey([n; 32]))
    }
}

/// What a replica tells the service about the operation it executes, identical at every
/// correct replica.
#[derive(Debug)]
pub struct ExecutionContext {
    caller: Caller,
    seq: SeqNum,
    time_us: u64,
    seed: Digest,
    rng: Option<ChaCha20Rng>,
}

/// Domain tag of the seed of an operation's random numbers.
const RANDOMNESS_DOMAIN: &[u8] = b"bulwark/execution-randomness/v1";

impl ExecutionContext {
    /// The context of the operation at `index` of the batch with digest `batch` ordered at
    /// `seq`, executed at the agreed time `time_us` (microseconds since the Unix epoch).
    pub fn new(caller: Caller, seq: SeqNum, time_us: u64, batch: &Digest, index: usize) -> Self {
        let mut seed = DigestBuilder::new(RANDOMNESS_DOMAIN);
        seed.update(&batch.0);
        seed.update_u64(seq.0);
        seed.update_u64(index as u64);
        ExecutionContext { caller, seq, time_us, seed: seed.finish(), rng: None }
    }

    /// A context for calling a service directly in its unit tests: operation 0 of batch
    /// `seq` at time `time_us`, with randomness seeded from `seq` alone.
    pub fn test(caller: Caller, seq: u64, time_us: u64) -> Self {
        ExecutionContext::new(caller, SeqNum(seq), time_us, &Digest([0; 32]), 0)
    }

    /// The request's signer.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// The sequence number of the batch that ordered this operation.
    pub fn seq(&self) -> SeqNum {
        self.seq
    }

    /// The time the replicas agreed on for this batch (PBFT.md N1.f, E5): proposed by the
    /// primary, accepted only within `clock_skew_max_us` of the backups' clocks, and never
    /// earlier than the time of an operation executed before. In the simulator it counts
    /// from the Unix epoch at the start of a run.
    pub fn time(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_micros(self.time_us)
    }

    /// [`ExecutionContext::time`] in microseconds since the Unix epoch.
    pub fn time_us(&self) -> u64 {
        self.time_us
    }

    /// Random numbers seeded from the ordered batch, the sequence number and the
    /// operation's place in the batch: the same at every replica, different for every
    /// operation. Not secret: anyone who knows the batch can compute them, and a faulty
    /// primary can choose among batches to pick the numbers; do not draw a lottery with
    /// them whose outcome a primary may care about.
    pub fn rng(&mut self) -> &mut dyn RngCore {
        let seed = self.seed.0;
        self.rng.get_or_insert_with(|| ChaCha20Rng::from_seed(seed))
    }
}

/// A service refused a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("snapshot could not be restored: {0}")]
pub struct ServiceError(pub String);

/// What a replica answers to a request: the service's reply, or why the operation never
/// reached the service or had no effect. Encoded with rmp-serde into the `result` of a
/// REPLY. Every variant is reached the same way at every correct replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome<R> {
    Ok(R),
    /// The operation bytes did not decode as the service's `Op`; the state does not change.
    MalformedOperation,
    /// A read-only request carried an operation the service does not answer read-only.
    NotReadOnly,
    /// The service panicked on this operation; it had no effect (PBFT.md E6).
    ServiceFailed,
    /// The service's reply encodes to `bytes`, more than the cluster's `reply_bytes_max`
    /// (`limit`). The operation took effect; only its reply is withheld.
    ReplyTooLarge {
        bytes: u64,
        limit: u64,
    },
}
