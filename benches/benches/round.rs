//! Complete normal-case PBFT rounds in the deterministic simulator: request →
//! pre-prepare → prepare → commit → execute → reply, on a 4-replica `KvStore` cluster with
//! real ed25519 signatures.
//!
//! Building the simulation (deriving keys, creating replicas) is setup and not timed;
//! `Simulation::run` is. The `wire` variants also encode, decode and verify every message
//! at its receiver (`SimConfig::wire_roundtrip`), as a real network would; the others pass
//! signed messages through without verifying them again.

use bulwark_benches::kv_simulation;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::time::Duration;

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
}

const SEED: u64 = 1;

fn rounds(c: &mut Criterion) {
    let mut group = c.benchmark_group("round");
    // (name, clients, requests per client)
    for (name, clients, per_client) in [("1_request", 1usize, 1u64), ("64_requests_4_clients", 4, 16)] {
        let requests = clients as u64 * per_client;
        group.throughput(Throughput::Elements(requests));
        for wire_roundtrip in [false, true] {
            let report = kv_simulation(SEED, clients, per_client, wire_roundtrip).run();
            assert!(report.violations.is_empty() && report.converged(), "{report}");
            assert_eq!(report.requests_completed, requests);
            let id = if wire_roundtrip { format!("{name}/wire") } else { name.to_owned() };
            group.bench_function(id, |b| {
                b.iter_batched(
                    || kv_simulation(SEED, clients, per_client, wire_roundtrip),
                    |simulation| simulation.run(),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = rounds
}
criterion_main!(benches);
