//! Shared fixtures for the Bulwark benchmarks.
//!
//! Every key is derived from a fixed seed ([`KeyPair::from_seed`]), so each run measures
//! the same bytes. The benchmarks themselves live in `benches/`:
//!
//! * `wire`: [`bulwark_framework::wire::encode_frame`] / `decode_frame` of each
//!   normal-case message kind, throughput in bytes.
//! * `crypto`: ed25519 sign and verify of a prepare, [`bulwark_crypto::verify_batch`]
//!   against one-by-one verification, and [`bulwark_framework::verify::verify_message`]
//!   of a pre-prepare carrying a full batch (the replica hot path).
//! * `round`: complete PBFT rounds in the deterministic simulator on
//!   [`bulwark_services::kv::KvStore`].

use bulwark_crypto::{KeyPair, PublicKey, Signed};
use bulwark_framework::messages::{
    batch_digest, Checkpoint, Commit, Message, PrePrepare, Prepare, Reply, Request, WireBatch,
};
use bulwark_framework::sim::{SimConfig, Simulation};
use bulwark_framework::{
    ClientId, ClusterId, Epoch, Membership, ProtocolParams, ReplicaId, Scope, SeqNum, Timestamp, View,
};
use bulwark_services::kv::{KvOp, KvStore};

/// The scope every fixture message is signed in.
pub const SCOPE: Scope = Scope { cluster: ClusterId(1), epoch: Epoch(0) };

/// Replicas in the benchmark cluster (`n = 3f + 1` with `f = 1`).
pub const REPLICAS: usize = 4;

/// View every fixture message belongs to; its primary is replica 0.
pub const VIEW: View = View(0);

/// Sequence number every fixture message refers to.
pub const SEQ: SeqNum = SeqNum(1);

fn seed(kind: u8, index: usize) -> [u8; 32] {
    let mut seed = [0u8; 32];
    seed[0] = kind;
    seed[1..9].copy_from_slice(&(index as u64).to_le_bytes());
    seed
}

/// The key of replica `index` of the benchmark cluster.
pub fn replica_key(index: usize) -> KeyPair {
    KeyPair::from_seed(seed(1, index))
}

/// The key of benchmark client `index`; every index names a distinct client.
pub fn client_key(index: usize) -> KeyPair {
    KeyPair::from_seed(seed(2, index))
}

/// A request with an `operation_bytes`-byte operation, signed by `client`.
pub fn signed_request(client: &KeyPair, timestamp: u64, operation_bytes: usize) -> Signed<Request> {
    let request = Request {
        client_key: client.public().into(),
        timestamp: Timestamp(timestamp),
        read_only: false,
        operation: vec![0xab; operation_bytes],
    };
    SCOPE.sign(request, client).into_signed()
}

/// `count` requests of `operation_bytes` bytes each, from `count` distinct clients, as a
/// primary would batch them.
pub fn signed_requests(count: usize, operation_bytes: usize) -> Vec<Signed<Request>> {
    (0..count).map(|i| signed_request(&client_key(i), 1, operation_bytes)).collect()
}

/// Pairs each request with the key that should have signed it, the input of
/// [`bulwark_crypto::verify_batch`].
pub fn with_client_keys(requests: Vec<Signed<Request>>) -> Vec<(Signed<Request>, PublicKey)> {
    requests
        .into_iter()
        .map(|request| {
            let key = request.payload.client_key.to_public_key().expect("fixture keys are valid points");
            (request, key)
        })
        .collect()
}

/// A 4-replica cluster with default protocol parameters, and its members' keys.
#[derive(Debug)]
pub struct Fixture {
    /// Replica `i`'s key pair at index `i`.
    pub replica_keys: Vec<KeyPair>,
    pub config: Membership,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture {
    pub fn new() -> Self {
        let replica_keys: Vec<KeyPair> = (0..REPLICAS).map(replica_key).collect();
        let members = replica_keys.iter().map(KeyPair::public).collect();
        let config =
            Membership::numbered(SCOPE.cluster, members, ProtocolParams::default()).expect("valid benchmark cluster");
        Fixture { replica_keys, config }
    }

    /// The largest frame a replica accepts, the `limit` of `decode_frame`.
    pub fn frame_limit(&self) -> usize {
        self.config.params.frame_bytes_max
    }

    fn key(&self, replica: ReplicaId) -> &KeyPair {
        &self.replica_keys[replica.0 as usize]
    }

    /// A pre-prepare for `requests` at ([`VIEW`], [`SEQ`]), signed by the primary, with
    /// the batch digest that verification expects.
    pub fn pre_prepare(&self, requests: Vec<Signed<Request>>) -> Message {
        let digests: Vec<_> = requests.iter().map(|r| SCOPE.digest(&r.payload)).collect();
        let payload = PrePrepare { view: VIEW, seq: SEQ, digest: batch_digest(0, digests.iter()) };
        let primary = self.config.primary(VIEW);
        let signed = SCOPE.sign(payload, self.key(primary)).into_signed();
        Message::PrePrepare(signed, WireBatch::requests(0, requests))
    }

    /// The unsigned prepare replica 1 sends for the fixture slot.
    pub fn prepare_payload(&self) -> Prepare {
        Prepare { view: VIEW, seq: SEQ, digest: bulwark_crypto::Digest::of(b"batch"), replica: ReplicaId(1) }
    }

    /// Replica 1's prepare, signed.
    pub fn prepare(&self) -> Signed<Prepare> {
        let payload = self.prepare_payload();
        SCOPE.sign(payload, self.key(payload.replica)).into_signed()
    }

    /// Replica 2's commit, signed.
    pub fn commit(&self) -> Message {
        let payload =
            Commit { view: VIEW, seq: SEQ, digest: bulwark_crypto::Digest::of(b"batch"), replica: ReplicaId(2) };
        Message::Commit(SCOPE.sign(payload, self.key(payload.replica)).into_signed())
    }

    /// Replica 3's reply carrying a `result_bytes`-byte result, signed.
    pub fn reply(&self, result_bytes: usize) -> Message {
        let payload = Reply {
            view: VIEW,
            timestamp: Timestamp(1),
            client: ClientId(7),
            replica: ReplicaId(3),
            read_only: false,
            result: vec![0xcd; result_bytes],
        };
        Message::Reply(SCOPE.sign(payload, self.key(ReplicaId(3))).into_signed())
    }

    /// Replica 1's checkpoint, signed.
    pub fn checkpoint(&self) -> Message {
        let payload =
            Checkpoint { seq: SeqNum(128), state_digest: bulwark_crypto::Digest::of(b"state"), replica: ReplicaId(1) };
        Message::Checkpoint(SCOPE.sign(payload, self.key(payload.replica)).into_signed())
    }
}

/// A simulated 4-replica cluster running [`KvStore`]: `clients` clients each issue
/// `requests_per_client` appends (to one of eight keys). With `wire_roundtrip` every
/// message is also encoded, decoded and verified at its receiver, as on a real network.
pub fn kv_simulation(seed: u64, clients: usize, requests_per_client: u64, wire_roundtrip: bool) -> Simulation<KvStore> {
    let mut config = SimConfig::new(seed, REPLICAS);
    config.clients = clients;
    config.requests_per_client = requests_per_client;
    config.wire_roundtrip = wire_roundtrip;
    Simulation::new(config, KvStore::new, |_rng, client, index| KvOp::Append {
        key: format!("k{}", index % 8),
        value: vec![client as u8, (index % 251) as u8],
    })
    .expect("valid simulation config")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_framework::verify::verify_envelope;
    use bulwark_framework::wire::{decode_frame, encode_frame};

    #[test]
    fn every_fixture_message_round_trips_and_verifies() {
        let fixture = Fixture::new();
        let messages = [
            Message::Request(signed_request(&client_key(0), 1, 512)),
            fixture.pre_prepare(signed_requests(16, 512)),
            Message::Prepare(fixture.prepare()),
            fixture.commit(),
            fixture.reply(4096),
            fixture.checkpoint(),
        ];
        for message in messages {
            let frame = encode_frame(SCOPE, &message).unwrap();
            let (decoded, used) = decode_frame(&frame, fixture.frame_limit()).unwrap().unwrap();
            assert_eq!(used, frame.len());
            assert_eq!(decoded.message, message);
            verify_envelope(decoded, &fixture.config).unwrap();
        }
    }

    #[test]
    fn one_request_simulation_converges() {
        let report = kv_simulation(1, 1, 1, true).run();
        assert!(report.violations.is_empty() && report.converged(), "{report}");
    }
}
