//! State transfer (PBFT.md §5): a replica far behind rejoins by fetching the checkpoint
//! image in chunks, each checked against a stable checkpoint proof, and a peer serving a
//! corrupt image is caught and bypassed.

mod common;

use bulwark_framework::sim::byzantine::Strategy;
use bulwark_framework::sim::{Isolation, SimConfig};
use bulwark_framework::RoleRefusal;
use bulwark_framework::{Instant, ProtocolParams, ReplicaId};
use std::time::Duration;

/// A replica cut off while the cluster orders more than 10,000 sequence numbers rejoins:
/// it learns the stable checkpoint, fetches the image in chunks from the proof's signers
/// (ST1–ST5), and ends with the same state digest as the others.
#[test]
fn a_replica_partitioned_for_10000_sequence_numbers_rejoins_with_a_matching_digest() {
    for seed in common::seeds(900, 1) {
        let mut config = SimConfig::new(seed, 4);
        config.clients = 8;
        config.client_concurrency = 4;
        config.requests_per_client = 2_000;
        config.params = ProtocolParams { batch_size_max: 1, state_chunk_bytes: 256, ..config.params };
        config.isolations = vec![Isolation {
            replica: ReplicaId(3),
            from: Instant::from_micros(10_000),
            until: Instant::from_micros(13_000_000),
        }];
        config.time_limit = Duration::from_secs(300);
        let report = common::run_kv(config);
        common::assert_safe_and_converged(&report);
        let (replica, own, cluster) = report.rejoins[0];
        assert_eq!(replica, ReplicaId(3));
        assert!(cluster.0 - own.0 >= 10_000, "only {} sequence numbers behind: {report}", cluster.0 - own.0);
        assert!(report.metrics[&ReplicaId(3)].state_transfers >= 1, "{report}");
        println!("{report}\nrejoined {} sequence numbers behind", cluster.0 - own.0);
    }
}

/// A Byzantine replica signs every checkpoint it sees (so it is among the signers state
/// transfer asks) and answers state requests with garbage. The replica catching up refuses
/// each bad chunk (ST4), stops asking that source, gets the chunk from another signer and
/// converges.
#[test]
fn a_peer_serving_a_corrupt_snapshot_is_detected_and_bypassed() {
    let mut detected = 0;
    for seed in common::seeds(950, 8) {
        let mut config = SimConfig::new(seed, 7);
        config.requests_per_client = 150;
        config.byzantine = vec![(ReplicaId(6), Strategy::CorruptState)];
        config.isolations = vec![Isolation {
            replica: ReplicaId(5),
            from: Instant::from_micros(5_000),
            until: Instant::from_micros(400_000),
        }];
        let report = common::run_kv(config);
        common::assert_safe_and_converged(&report);
        assert!(report.metrics[&ReplicaId(5)].state_transfers >= 1, "no state transfer: {report}");
        detected += report.metrics[&ReplicaId(5)].refused.get(&RoleRefusal::StateChunkMismatch).copied().unwrap_or(0);
    }
    assert!(detected > 0, "the corrupt source was never asked: the test shows nothing");
}
