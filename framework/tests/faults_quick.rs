mod common;
use bulwark_framework::sim::{NetworkModel, SimConfig};
use bulwark_framework::{Instant, ReplicaId};

#[test]
fn faults_quick() {
    for seed in common::seeds(1, 60) {
        for n in [4usize, 7] {
            let mut config = SimConfig::new(seed, n);
            config.network = NetworkModel { delay_min_us: 100, delay_max_us: 5_000, drop_rate: 0.25, duplicate_rate: 0.3 };
            config.crashes = vec![(ReplicaId(1 + (seed as u32 % (n as u32 - 1))), Instant((seed % 50) * 1000))];
            config.wire_roundtrip = seed % 4 == 0; config.requests_per_client = 150; config.isolations = vec![bulwark_framework::sim::Isolation { replica: ReplicaId(n as u32 - 1), from: Instant(100_000), until: Instant(900_000) }];
            let start = std::time::Instant::now();
            let report = common::run_kv(config);
            println!("n={n} {report} wall={:?} {:?}", start.elapsed(), report.final_states);
            common::assert_safe_and_converged(&report);
        }
    }
}
