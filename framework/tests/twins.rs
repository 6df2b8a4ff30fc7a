//! Twins (hardening issue): a faulty replica modelled as two correct instances holding the
//! same key, with a partition of the instances chosen per round (`sim::twins`).
//!
//! - Exhaustive for the small scope: n = 4, one twin, two rounds — all 1,024 scenarios.
//! - Sampled for a larger one: n = 7, two twins (f = 2), three rounds.
//! - Negative control: f + 1 twins at n = 4 must break safety somewhere in the scope; a
//!   checker that never fails proves nothing.
//!
//! Each seed asserts the checker's invariants (I1–I14, PBFT.md §7) after every step, and
//! liveness once the last round ends and the network is whole.

use bulwark_framework::sim::campaign::CampaignReport;
use bulwark_framework::sim::twins::{run_twins, TwinsOutcome, TwinsScope};
use bulwark_framework::View;
use bulwark_services::kv::{KvOp, KvStore};
use rand::Rng;

fn run(scope: &TwinsScope, first_seed: u64, seeds: u64, mut each: impl FnMut(&TwinsOutcome)) -> CampaignReport {
    let (first_seed, seeds) = match std::env::var("BULWARK_SEED") {
        Ok(seed) => (seed.parse().expect("BULWARK_SEED is a number"), 1),
        Err(_) => (first_seed, seeds),
    };
    run_twins(
        scope,
        first_seed,
        seeds,
        KvStore::new,
        |rng, client, index| KvOp::Append {
            key: format!("k{}", rng.gen_range(0..4)),
            value: vec![client as u8, (index % 251) as u8],
        },
        |outcome| {
            if !outcome.report.violations.is_empty() || !outcome.report.converged() {
                eprintln!("seed {} ({}): {}", outcome.seed, outcome.scenario, outcome.report);
            }
            each(outcome);
        },
    )
    .expect("the scope is valid")
}

#[test]
fn twins_exhaustive_at_n4_with_one_twin_and_two_rounds_is_safe_and_live() {
    let scope = TwinsScope::default();
    let total = scope.scenarios().unwrap() as u64;
    assert_eq!(total, 1_024);
    let mut view_changed = 0;
    let mut twinned_primary = 0;
    let report = run(&scope, 1, total, |outcome| {
        view_changed += u32::from(outcome.report.views.values().any(|(view, _)| *view > View(0)));
        twinned_primary += u32::from(outcome.scenario.twinned.contains(&bulwark_framework::ReplicaId(0)));
    });
    println!("{report}; {view_changed} scenarios ended in a later view");
    assert_eq!(report.seeds_run, total);
    assert!(report.checks > 0);
    assert!(report.unsafe_seeds.is_empty(), "{report}: unsafe seeds {:?}", report.unsafe_seeds);
    assert!(report.stuck_seeds.is_empty(), "{report}: not live: seeds {:?}", report.stuck_seeds);
    // The partitions bite: a twinned primary cut off from a quorum is replaced.
    assert_eq!(twinned_primary, 256);
    assert!(view_changed > 100, "only {view_changed} scenarios changed view");
}

#[test]
fn twins_sampled_at_n7_with_two_twins_and_three_rounds_is_safe_and_live() {
    let scope = TwinsScope { replicas: 7, twinned: 2, rounds: 3, ..TwinsScope::default() };
    let report = run(&scope, 1, 150, |_| {});
    println!("{report}");
    assert_eq!(report.seeds_run, 150);
    assert!(report.unsafe_seeds.is_empty(), "{report}: unsafe seeds {:?}", report.unsafe_seeds);
    assert!(report.stuck_seeds.is_empty(), "{report}: not live: seeds {:?}", report.stuck_seeds);
}

/// f + 1 = 2 twins at n = 4 hold two quorums' worth of keys: two groups of three distinct
/// ids each can both order a different batch at one sequence number. The scope must find it.
#[test]
fn negative_control_f_plus_1_twins_at_n4_break_safety_and_the_checker_says_so() {
    let scope = TwinsScope { twinned: 2, rounds: 1, ..TwinsScope::default() };
    let total = scope.scenarios().unwrap() as u64;
    let report = run(&scope, 1, total, |_| {});
    println!("{report}");
    assert!(
        !report.unsafe_seeds.is_empty(),
        "no violation in {total} scenarios with f + 1 twins: the checker or the Twins harness is blind"
    );
}
