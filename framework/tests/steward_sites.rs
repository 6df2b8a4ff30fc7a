//! The multi-site simulator running Steward sites (docs/STEWARD.md §3, §10): whole runs,
//! each checked by the GI1–GI5 checker after every step.

use bulwark_crypto::threshold::{Simulated, ThresholdScheme};
use bulwark_framework::sim::sites::{SitesConfig, SitesReport, SitesSimulation};
use bulwark_services::kv::{KvOp, KvStore};
use rand::Rng;

/// Every client appends to one of eight keys, so any difference in order shows in the
/// state digest.
fn run<S: ThresholdScheme>(config: SitesConfig) -> SitesReport {
    SitesSimulation::<KvStore, S>::new(config, KvStore::new, |rng, client, index| {
        let key = format!("k{}", rng.gen_range(0..8));
        KvOp::Append { key, value: vec![client as u8, (index % 251) as u8] }
    })
    .expect("valid configuration")
    .run()
}

fn assert_safe_and_converged(report: &SitesReport) {
    assert!(report.violations.is_empty(), "safety violated: {report}");
    assert!(report.checks > 0, "the checker checked nothing: {report}");
    assert!(report.converged(), "did not converge: {report}\nfinal states: {:?}", report.final_states);
}

/// W1–W7 end to end: 5 sites of 4 replicas, clients at every site; every correct replica of
/// every site executes the same history and every update completes.
#[test]
fn five_sites_of_four_execute_one_global_history() {
    let report = run::<Simulated>(SitesConfig::new(1, 5, 4));
    assert_safe_and_converged(&report);
    println!("{report}");
}
