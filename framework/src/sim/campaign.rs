//! Campaigns: many seeded runs with faults drawn per seed — loss, duplication, reordering,
//! a partition, a crash and restart, Byzantine replicas from the strategy library and, in
//! some seeds, a Byzantine client —
//! each checked for safety (the checker's invariants) and for liveness after the network
//! settles. `bulwark sim` runs one; so does the test suite.

use super::byzantine::Strategy;
use super::byzantine_client::{ByzantineClientSpec, ClientAttack};
use super::{Isolation, NetworkModel, Restart, SimConfig, SimReport, Simulation};
use crate::ids::{Instant, ReplicaId};
use crate::service::Service;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::fmt;
use std::time::Duration;
use strum::VariantArray;

/// What a campaign runs.
#[derive(Debug, Clone, PartialEq)]
pub struct CampaignSpec {
    /// Replicas per run; 0 alternates n = 4 and n = 7 (every fifth seed is n = 7).
    pub replicas: usize,
    pub first_seed: u64,
    pub seeds: u64,
    /// Byzantine replicas per run; `None` means `f`. More than `f` is a negative control:
    /// the campaign is then expected to find violations.
    pub byzantine: Option<usize>,
    /// Use only this strategy; otherwise each Byzantine replica draws one.
    pub strategy: Option<Strategy>,
    /// Highest loss and duplication probabilities drawn.
    pub drop_max: f64,
    pub duplicate_max: f64,
    /// Simulated time after which a run that has not finished counts as not live.
    pub time_limit: Duration,
}

impl Default for CampaignSpec {
    fn default() -> Self {
        CampaignSpec {
            replicas: 0,
            first_seed: 1,
            seeds: 100,
            byzantine: None,
            strategy: None,
            drop_max: 0.3,
            duplicate_max: 0.5,
            time_limit: Duration::from_secs(30),
        }
    }
}

/// The result of one seed.
#[derive(Debug, Clone)]
pub struct SeedOutcome {
    pub seed: u64,
    pub replicas: usize,
    pub byzantine: Vec<(ReplicaId, Strategy)>,
    /// The attacks of the run's Byzantine clients, if any.
    pub byzantine_clients: Vec<ClientAttack>,
    pub report: SimReport,
}

impl SeedOutcome {
    pub fn safe(&self) -> bool {
        self.report.violations.is_empty()
    }

    pub fn live(&self) -> bool {
        self.report.converged()
    }
}

/// What a campaign found.
#[derive(Debug, Clone, Default)]
pub struct CampaignReport {
    pub seeds_run: u64,
    pub checks: u64,
    pub violations: u64,
    /// Seeds with a safety violation.
    pub unsafe_seeds: Vec<u64>,
    /// Seeds that did not complete every request with all live correct replicas agreeing.
    pub stuck_seeds: Vec<u64>,
    /// The first failing seed's report, for the replay hint.
    pub first_failure: Option<String>,
}

impl fmt::Display for CampaignReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} seeds, {} invariant checks, {} unsafe, {} not live",
            self.seeds_run,
            self.checks,
            self.unsafe_seeds.len(),
            self.stuck_seeds.len()
        )
    }
}

/// The run for `seed`: every fault drawn from the seed alone, so a seed names its run.
pub fn scenario(spec: &CampaignSpec, seed: u64) -> (SimConfig, Vec<(ReplicaId, Strategy)>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xca3a_16e5);
    let replicas = match spec.replicas {
        0 if seed.is_multiple_of(5) => 7,
        0 => 4,
        n => n,
    };
    let f = (replicas - 1) / 3;
    let mut config = SimConfig::new(seed, replicas);
    config.params.view_change_timeout_us = 300_000;
    config.time_limit = spec.time_limit;
    config.clients = rng.gen_range(2..6);
    config.requests_per_client = rng.gen_range(20..60);
    config.client_concurrency = rng.gen_range(1..6);
    config.params.in_flight_batches_max = rng.gen_range(1..8);
    let settle = Instant::from_micros(rng.gen_range(300_000..1_500_000));
    config.network = NetworkModel {
        delay_min_us: 100,
        delay_max_us: rng.gen_range(500..5_000),
        drop_rate: rng.gen_range(0.0..spec.drop_max.max(f64::MIN_POSITIVE)),
        duplicate_rate: rng.gen_range(0.0..spec.duplicate_max.max(f64::MIN_POSITIVE)),
        faults_until: Some(settle),
        ..NetworkModel::default()
    };
    config.wire_roundtrip = seed.is_multiple_of(8);
    let mut members: Vec<ReplicaId> = (0..replicas as u32).map(ReplicaId).collect();
    members.shuffle(&mut rng);
    let count = spec.byzantine.unwrap_or(f).min(replicas);
    let byzantine: Vec<(ReplicaId, Strategy)> = if count > f && spec.strategy.is_none() {
        // A negative control gets the strongest attack in the library: the primary of view
        // 0 equivocates to two halves of the backups, and the faulty replicas that follow it
        // collude with both halves.
        members.sort();
        let strategy =
            |r: &ReplicaId| if *r == ReplicaId(0) { Strategy::EquivocatingPrimary } else { Strategy::Colluder };
        members[..count].iter().map(|r| (*r, strategy(r))).collect()
    } else {
        members[..count]
            .iter()
            .map(|r| {
                (*r, spec.strategy.unwrap_or_else(|| *Strategy::VARIANTS.choose(&mut rng).expect("strategies exist")))
            })
            .collect()
    };
    if byzantine.iter().any(|(_, s)| *s == Strategy::SlowPrimary) {
        config.params.ordering_rate_min_per_s = 20;
    }
    let correct = &members[count..];
    // A partition of one correct replica, healed before the network settles.
    if rng.gen_bool(0.5) {
        let from = rng.gen_range(0..settle.as_micros() / 2);
        let until = rng.gen_range(from + 1..settle.as_micros());
        let replica = *correct.choose(&mut rng).expect("a correct replica");
        config.isolations.push(Isolation {
            replica,
            from: Instant::from_micros(from),
            until: Instant::from_micros(until),
        });
    }
    // A crash and restart from durable records, half of them torn.
    if rng.gen_bool(0.5) {
        let crash_at = rng.gen_range(0..settle.as_micros());
        let replica = *correct.choose(&mut rng).expect("a correct replica");
        config.restarts.push(Restart {
            replica,
            crash_at: Instant::from_micros(crash_at),
            restart_at: Instant::from_micros(crash_at + rng.gen_range(1_000..400_000)),
            torn: rng.gen_bool(0.5),
        });
    }
    config.byzantine = byzantine.clone();
    // Byzantine clients in one seed of four, drawn from their own stream so that the
    // replica faults above stay what they were for each seed.
    let mut client_rng = ChaCha8Rng::seed_from_u64(seed ^ 0xb12a_c11e);
    if client_rng.gen_bool(0.25) {
        let attack = *ClientAttack::VARIANTS.choose(&mut client_rng).expect("attacks exist");
        config.byzantine_clients.push(ByzantineClientSpec { attack, until: settle });
    }
    // The hop between each replica and its checkpoint collector, from its own stream too.
    let mut hop_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0c01_1ec7);
    config.network.role_hop_max_us = hop_rng.gen_range(0..10_000);
    (config, byzantine)
}

/// Runs every seed of `spec` with service `S`, calling `each` after each seed.
pub fn run_campaign<S: Service>(
    spec: &CampaignSpec,
    make_service: impl Fn() -> S + Clone + 'static,
    make_operation: impl Fn(&mut ChaCha8Rng, usize, u64) -> S::Op + Clone + 'static,
    mut each: impl FnMut(&SeedOutcome),
) -> CampaignReport {
    let mut campaign = CampaignReport::default();
    for seed in spec.first_seed..spec.first_seed + spec.seeds {
        let (config, byzantine) = scenario(spec, seed);
        let replicas = config.replicas;
        let byzantine_clients = config.byzantine_clients.iter().map(|spec| spec.attack).collect();
        let report = match Simulation::new(config, make_service.clone(), make_operation.clone()) {
            Ok(simulation) => simulation.run(),
            Err(error) => panic!("campaign scenario for seed {seed} is misconfigured: {error}"),
        };
        let outcome = SeedOutcome { seed, replicas, byzantine, byzantine_clients, report };
        campaign.seeds_run += 1;
        campaign.checks += outcome.report.checks;
        campaign.violations += outcome.report.violations.len() as u64;
        if !outcome.safe() {
            campaign.unsafe_seeds.push(seed);
        } else if !outcome.live() {
            campaign.stuck_seeds.push(seed);
        }
        if (!outcome.safe() || !outcome.live()) && campaign.first_failure.is_none() {
            campaign.first_failure = Some(format!(
                "{} (byzantine: {:?}, byzantine clients: {:?})",
                outcome.report, outcome.byzantine, outcome.byzantine_clients
            ));
        }
        each(&outcome);
    }
    campaign
}
