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

fn kv_operation(rng: &mut rand_chacha::ChaCha8Rng, client: usize, index: u64) -> KvOp {
    let key = format!("k{}", rng.gen_range(0..8));
    KvOp::Append { key, value: vec![client as u8, (index % 251) as u8] }
}

/// The multi-site campaign with up to `f` Byzantine non-representatives per site.
#[test]
fn campaign_probe() {
    use bulwark_framework::sim::sites::campaign::SitesCampaign;
    let campaign = SitesCampaign::new(5, 4, 1);
    let mut bad = 0;
    for seed in [0u64; 0] {
        let config = campaign.config(seed);
        println!(
            "seed {seed}: byz {:?} wan {:?} lan drop {} dup {}",
            config.byzantine, config.wan, config.lan_drop, config.lan_duplicate
        );
        let report = campaign.run(seed, KvStore::new, kv_operation);
        println!("{report}\n  kinds {:?}\n refusals {:?}", report.wan_by_kind, report.refusals);
        for (peer, waiting) in &report.waiting {
            println!("  {peer}: {waiting}");
        }
    }
    for seed in 0..0 {
        let report = campaign.run(seed, KvStore::new, kv_operation);
        if !report.violations.is_empty() || !report.converged() {
            bad += 1;
            println!("{report}\n  refusals {:?}\n  states {:?}", report.refusals, report.final_states);
        }
    }
    let mut violated = [0, 0];
    for colluders in [1, 2] {
        let negative = SitesCampaign::new(5, 4, 1).with_colluders(colluders);
        for seed in 0..20 {
            let report = negative.run(seed, KvStore::new, kv_operation);
            violated[colluders - 1] += usize::from(!report.violations.is_empty());
            if seed < 2 {
                println!("colluders {colluders}: {report}\n {:?}", report.byzantine_sent);
            }
        }
    }
    println!("bad {bad}, negative violated {violated:?}/20");
}
