//! Catching up and a slow representative (docs/STEWARD.md §9 RC1, RC2, SK1; W4, LV1): a
//! representative that delays what it relays, a replica fetching a stable checkpoint's
//! state by chunks, and a site catching up from the others on its own signed request.
//! Whole runs in the multi-site simulator (checker on) and scenarios driven by hand
//! through the world of `steward_world`.

mod steward_world;

use bulwark_framework::ids::{PeerId, ReplicaId};
use bulwark_framework::sim::sites::byzantine::SiteStrategy;
use bulwark_framework::sim::sites::{SitesConfig, SitesReport, SitesSimulation};
use bulwark_services::kv::{KvOp, KvStore};
use rand::Rng;

fn kv_operation(rng: &mut rand_chacha::ChaCha8Rng, client: usize, index: u64) -> KvOp {
    let key = format!("k{}", rng.gen_range(0..8));
    KvOp::Append { key, value: vec![client as u8, (index % 251) as u8] }
}

fn run(config: SitesConfig) -> SitesReport {
    SitesSimulation::<KvStore, steward_world::S>::new(config, KvStore::new, kv_operation)
        .expect("valid configuration")
        .run()
}

/// Seeds to run: `BULWARK_SEED` replays a single one; otherwise `count` from `first`.
fn seeds(first: u64, count: u64) -> Vec<u64> {
    match std::env::var("BULWARK_SEED") {
        Ok(seed) => vec![seed.parse().expect("BULWARK_SEED is a number")],
        Err(_) => (first..first + count).collect(),
    }
}

fn assert_safe_and_converged(report: &SitesReport) {
    assert!(report.violations.is_empty(), "safety violated: {report}");
    assert!(report.checks > 0, "the checker checked nothing: {report}");
    assert!(
        report.converged(),
        "did not converge: {report}\nrefusals: {:?}\nwaiting: {:#?}",
        report.refusals,
        report.waiting
    );
}

fn mean_latency_us(report: &SitesReport) -> u64 {
    let latencies = &report.load.latencies_us;
    latencies.iter().sum::<u64>() / latencies.len().max(1) as u64
}

/// W4, LV1: the representative of a non-leader site holds every PROPOSAL and ACCEPT it
/// should relay into its site or send to the other sites until its next status timer.
/// Every run is safe and every update completes. The delay (at most a status interval,
/// 200 ms) is shorter than `Local_T` (1 s at a non-leader site), and its site still
/// executes within it, so it is not replaced (every replica sees its site in local view 0):
/// it only slows the updates (the mean latency is higher than on the same seed without
/// it), over three seeds.
#[test]
fn w4_lv1_a_delaying_non_leader_representative_slows_its_site_and_is_not_replaced() {
    let site = SitesConfig::site(1);
    for seed in seeds(110, 3) {
        let mut config = SitesConfig::new(seed, 5, 4);
        config.updates_per_client = 8;
        let honest = run(config.clone());
        assert_safe_and_converged(&honest);
        config.byzantine = vec![(PeerId::new(site, ReplicaId(0)), SiteStrategy::DelayingRepresentative)];
        let report = run(config);
        assert_safe_and_converged(&report);
        assert!(report.byzantine_sent.values().all(|sent| *sent > 0), "it sent nothing");
        assert!(
            report.local_views.values().all(|views| views[&site] == 0),
            "seed {seed}: replaced: {:?}",
            report.local_views
        );
        let (slow, fast) = (mean_latency_us(&report), mean_latency_us(&honest));
        println!("seed {seed}: mean latency {slow} us, {fast} us without it");
        assert!(slow > fast, "seed {seed}: mean latency {slow} us, {fast} us without it");
    }
}
