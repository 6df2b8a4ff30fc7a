//! Durability (the durable-replicas issue, PBFT.md I3/I6 across restarts): replicas crash at
//! random points — including after persisting a step and before sending anything of it —
//! and come back from their durable records. The checker's D1 asserts that a restarted
//! replica is back at least at the view and the last executed sequence number it had; I1,
//! I3, I11, I12 and I14 keep holding across incarnations.

mod common;

use bulwark_framework::sim::{Restart, SimConfig};
use bulwark_framework::{Instant, ProtocolParams, ReplicaId};
use rand::Rng;
use std::time::Duration;

fn config(seed: u64, replicas: usize) -> SimConfig {
    let mut config = SimConfig::new(seed, replicas);
    config.params = ProtocolParams { view_change_timeout_us: 300_000, ..config.params };
    config.time_limit = Duration::from_secs(120);
    config
}

/// 500 seeds at n = 4 and n = 7: one or two replicas (the primary among the candidates)
/// crash at a random time, half of the crashes torn between persisting and sending, and
/// restart from their records a random while later, with some message loss. Zero
/// violations, every request completes, all replicas end at one state.
#[test]
fn crash_and_restart_at_random_points_over_500_seeds() {
    let mut restarts = 0;
    let seeds = common::seeds(20_000, 500);
    for seed in seeds.iter().copied() {
        let (mut config, mut rng) = common::random_config(seed, 3_000, 0.05, 0.10);
        let replicas = config.replicas;
        let count = if replicas == 7 { rng.gen_range(1..=2) } else { 1 };
        for victim in 0..count {
            let crash_at = rng.gen_range(0..250_000);
            config.restarts.push(Restart {
                replica: ReplicaId((victim + rng.gen_range(0..replicas as u32)) % replicas as u32),
                crash_at: Instant::from_micros(crash_at),
                restart_at: Instant::from_micros(crash_at + rng.gen_range(1_000..400_000)),
                torn: rng.gen_bool(0.5),
            });
        }
        config.restarts.dedup_by_key(|r| r.replica);
        restarts += config.restarts.len();
        let report = common::run_kv(config);
        common::assert_safe_and_converged(&report);
    }
    assert!(restarts >= seeds.len(), "every seed restarts at least one replica");
}

/// Every replica crashes at once under load (half of them torn between persisting and
/// sending) and restarts: every operation a client saw acknowledged is still there (D1:
/// each replica recovers at least what it had executed; I1/I12: with the same digests and
/// results), and the cluster goes on to complete the rest.
#[test]
fn every_replica_crashing_at_once_loses_no_acknowledged_operation() {
    for seed in common::seeds(30_000, 20) {
        let mut config = config(seed, 4);
        config.clients = 4;
        config.requests_per_client = 120;
        config.client_concurrency = 4;
        let crash_at = 20_000 + seed % 20 * 3_000;
        config.restarts = (0..4)
            .map(|r| Restart {
                replica: ReplicaId(r),
                crash_at: Instant::from_micros(crash_at),
                restart_at: Instant::from_micros(crash_at + 50_000 + r as u64 * 7_000),
                torn: r % 2 == 0,
            })
            .collect();
        let report = common::run_kv(config);
        common::assert_safe_and_converged(&report);
    }
}

/// A torn crash takes effect at the replica's next step; when the restart is due before any
/// step came, the crash happens then, between steps, and the replica comes back. (The
/// simulator once left it crashed for good, crashing it at its first step after the
/// restart: a lost replica that the campaign took for a liveness failure of the protocol,
/// seeds 117, 152, 204 and others.) Checked: the replica is up at the end and converged.
#[test]
fn a_torn_crash_with_no_step_before_the_restart_still_comes_back() {
    for seed in common::seeds(40_000, 20) {
        let mut config = config(seed, 4);
        config.clients = 3;
        config.requests_per_client = 40;
        let crash_at = 30_000 + seed % 7 * 1_000;
        config.restarts = vec![Restart {
            replica: ReplicaId((seed % 4) as u32),
            crash_at: Instant::from_micros(crash_at),
            // One microsecond: no delivery or timer lands in between.
            restart_at: Instant::from_micros(crash_at + 1),
            torn: true,
        }];
        let report = common::run_kv(config);
        assert!(report.down_at_end.is_empty(), "{report}");
        assert!(report.final_states.contains_key(&ReplicaId((seed % 4) as u32)), "{report}");
        common::assert_safe_and_converged(&report);
    }
}
