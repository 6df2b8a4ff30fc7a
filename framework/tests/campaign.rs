//! The Byzantine campaign (hardening issue): seeds across n = 4 and n = 7 with up to 30%
//! loss, up to 50% duplication, reordering, a partition, a crash and restart, and `f`
//! Byzantine replicas drawn from the strategy library per seed. Asserted: zero safety
//! violations, and liveness once the faults stop: every request completes and every
//! correct replica (restarted ones included) ends at the same state within 30 simulated
//! seconds. (Seeds that once were not live, each fixed by a change with its own rule or
//! scenario test: a simulator that lost a torn-crashed replica — 117, 152, 204 and others;
//! a restarted replica that could not resend its COMMITs or commit certificates — 94, 134,
//! 138, 208, 351, 736; a lagging backup that waited for prepares although it held a commit
//! certificate — 738; VC3 that counted only exact-view VIEW-CHANGEs — 391.)

use bulwark_framework::sim::campaign::{run_campaign, CampaignSpec};
use bulwark_services::kv::{KvOp, KvStore};
use rand::Rng;

fn campaign(first_seed: u64, seeds: u64) {
    let (first_seed, seeds) = match std::env::var("BULWARK_SEED") {
        Ok(seed) => (seed.parse().expect("BULWARK_SEED is a number"), 1),
        Err(_) => (first_seed, seeds),
    };
    let spec = CampaignSpec { first_seed, seeds, ..CampaignSpec::default() };
    let report = run_campaign(
        &spec,
        KvStore::new,
        |rng, client, index| KvOp::Append {
            key: format!("k{}", rng.gen_range(0..8)),
            value: vec![client as u8, (index % 251) as u8],
        },
        |outcome| {
            if std::env::var("BULWARK_CAMPAIGN_TRACE").is_ok() {
                eprintln!(
                    "trace seed {} events {} simulated {:?}",
                    outcome.seed, outcome.report.events, outcome.report.simulated_time
                );
            }
            if !outcome.safe() || !outcome.live() {
                eprintln!(
                    "seed {} (n = {}, byzantine {:?}, byzantine clients {:?}): {}",
                    outcome.seed, outcome.replicas, outcome.byzantine, outcome.byzantine_clients, outcome.report
                );
            }
        },
    );
    println!("{report}");
    assert!(report.unsafe_seeds.is_empty(), "{report}: unsafe seeds {:?}", report.unsafe_seeds);
    assert!(report.checks > 0);
    assert!(report.stuck_seeds.is_empty(), "{report}: not live within the time limit: seeds {:?}", report.stuck_seeds);
}

#[test]
fn a_campaign_of_1000_seeds_with_byzantine_replicas_partitions_restarts_and_loss_is_safe() {
    campaign(1, 1_000);
}
