//! Shared helpers for the simulation tests.
#![allow(dead_code)]

use bulwark_examples::kv::{KvOp, KvStore};
use bulwark_framework::sim::{SimConfig, SimReport, Simulation};
use rand::Rng;

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
