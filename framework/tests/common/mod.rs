//! Shared helpers for the simulation tests.
#![allow(dead_code)]

use bulwark_framework::sim::{NetworkModel, SimConfig, SimReport, Simulation};
use bulwark_framework::ProtocolParams;
use bulwark_services::kv::{KvOp, KvStore};
use rand::Rng;
use std::time::Duration;

/// Runs the key-value service under `config`: every client appends to one of eight keys,
/// so any difference in execution order shows up in the state digest.
pub fn run_kv(config: SimConfig) -> SimReport {
    Simulation::new(config, KvStore::new, |rng, client, index| {
        let key = format!("k{}", rng.gen_range(0..8));
        KvOp::Append { key, value: vec![client as u8, (index % 251) as u8] }
    })
    .expect("valid simulation config")
    .run()
}

/// Seeds to run: `BULWARK_SEED` replays a single one; otherwise `count` from `first`.
pub fn seeds(first: u64, count: u64) -> Vec<u64> {
    match std::env::var("BULWARK_SEED") {
        Ok(seed) => vec![seed.parse().expect("BULWARK_SEED is a number")],
        Err(_) => (first..first + count).collect(),
    }
}

/// Asserts a run was safe and live, printing the seed and how to replay it if not.
pub fn assert_safe_and_converged(report: &SimReport) {
    assert!(report.violations.is_empty(), "safety violated: {report}");
    assert!(report.checks > 0, "the checker checked nothing: {report}");
    assert!(report.converged(), "did not converge: {report}\nfinal states: {:?}", report.final_states);
}

/// A run with a random workload and network for `seed`: n = 7 for every fifth seed, else
/// n = 4; 2–5 clients with 20–79 requests each and 1–5 outstanding; delays up to
/// `delay_max_us` (at least 500 µs); losses below `drop_max`, duplicates below `duplicate_max`;
/// every eighth seed through the real wire encoding. The view-change timeout is 300 ms.
/// Returns the configuration and the rng, for the caller's faults.
pub fn random_config(
    seed: u64,
    delay_max_us: u64,
    drop_max: f64,
    duplicate_max: f64,
) -> (SimConfig, rand_chacha::ChaCha8Rng) {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let replicas = if seed.is_multiple_of(5) { 7 } else { 4 };
    let mut config = SimConfig::new(seed, replicas);
    config.params = ProtocolParams { view_change_timeout_us: 300_000, ..config.params };
    config.time_limit = Duration::from_secs(120);
    config.clients = rng.gen_range(2..6);
    config.requests_per_client = rng.gen_range(20..80);
    config.client_concurrency = rng.gen_range(1..6);
    config.network = NetworkModel {
        delay_min_us: 100,
        delay_max_us: rng.gen_range(500..delay_max_us.max(501)),
        drop_rate: rng.gen_range(0.0..drop_max),
        duplicate_rate: rng.gen_range(0.0..duplicate_max),
        faults_until: None,
        ..NetworkModel::default()
    };
    config.wire_roundtrip = seed.is_multiple_of(8);
    // The hop between each replica and its checkpoint collector, from its own stream so
    // that the caller's faults stay what they were for each seed.
    let mut hop_rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x0c01_1ec7);
    config.network.role_hop_max_us = hop_rng.gen_range(0..10_000);
    (config, rng)
}
