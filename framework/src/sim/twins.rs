//! Twins (Bano, Sonnino, Chursin, Perelman, Li, Ching, Malkhi: "Twins: BFT Systems Made
//! Robust", OPODIS 2022): a faulty replica is modelled as two *correct* instances holding
//! the same key. Each instance follows the protocol, but the network partitions them apart,
//! so together they equivocate, vote twice, and lose and recall state in exactly the ways a
//! Byzantine replica could — without anyone writing the attack.
//!
//! A scenario picks which replicas are twinned and, for each round, a partition of the
//! instances into two groups (or none). The Twins paper also picks each round's leader;
//! PBFT fixes the primary as `v mod n`, so here the leader of a round follows from which
//! replica is twinned (a twinned primary is an equivocating leader) and from the
//! partitions, which decide when views change and so who leads next.
//!
//! The scenarios of a scope are numbered; [`TwinsScope::scenario_of_seed`] maps seeds
//! `1..=N` onto the `N` scenarios one to one, in an order that spreads any prefix across
//! the scope. Running `N` seeds is therefore exhaustive, fewer is a sample, and one seed
//! names one scenario for replay.

use super::campaign::CampaignReport;
use super::{Instance, NetworkModel, Round, SimConfig, SimReport, Simulation};
use crate::config::ConfigError;
use crate::ids::{Instant, ReplicaId};
use crate::service::Service;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

/// Rejects a Twins configuration the simulator cannot run faithfully.
pub(super) fn check(config: &SimConfig) -> Result<(), ConfigError> {
    let invalid = |field: &'static str, reason: String| Err(ConfigError::Invalid { field, reason });
    let ids = config.ids();
    let twinned: BTreeSet<ReplicaId> = config.twins.iter().copied().collect();
    if twinned.len() != config.twins.len() {
        return invalid("twins", format!("a replica is twinned twice: {:?}", config.twins));
    }
    for replica in &twinned {
        if !ids.contains(replica) {
            return invalid("twins", format!("replica {} is not one of the {} replicas", replica.0, config.replicas));
        }
        let elsewhere = config.byzantine.iter().any(|(r, _)| r == replica)
            || config.crashes.iter().any(|(r, _)| r == replica)
            || config.restarts.iter().any(|r| r.replica == *replica);
        if elsewhere {
            return invalid("twins", format!("replica {} is twinned and also Byzantine or crashing", replica.0));
        }
    }
    let mut until = Instant::ZERO;
    for (index, round) in config.rounds.iter().enumerate() {
        if round.until <= until {
            return invalid("rounds", format!("round {index} does not end after the one before"));
        }
        until = round.until;
        let mut seen = BTreeSet::new();
        for instance in round.groups.iter().flatten() {
            let exists = ids.contains(&instance.replica) && (!instance.twin || twinned.contains(&instance.replica));
            if !exists {
                return invalid("rounds", format!("round {index} names an instance that does not exist: {instance:?}"));
            }
            if !seen.insert(*instance) {
                return invalid("rounds", format!("round {index} puts {instance:?} in two groups"));
            }
        }
    }
    Ok(())
}

/// What a Twins run covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwinsScope {
    pub replicas: usize,
    /// Twinned replicas: up to `f` must be safe and live; `f + 1` is the negative control.
    pub twinned: usize,
    pub rounds: usize,
    /// Length of a round in simulated time; after the last round the network is whole.
    pub round_us: u64,
}

impl Default for TwinsScope {
    /// `n = 4`, one twin, two rounds of 400 ms (longer than the 300 ms view-change
    /// timeout, so a round can take a view change): 4 · 16² = 1,024 scenarios.
    fn default() -> Self {
        TwinsScope { replicas: 4, twinned: 1, rounds: 2, round_us: 400_000 }
    }
}

/// One scenario: the twinned replicas and a partition per round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwinsScenario {
    pub twinned: Vec<ReplicaId>,
    pub rounds: Vec<Round>,
}

impl fmt::Display for TwinsScenario {
    /// `twins [0]; rounds: 0 0' 1 | 2 3; whole` — a primed id is a second instance.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let twinned: Vec<u32> = self.twinned.iter().map(|r| r.0).collect();
        write!(f, "twins {twinned:?}; rounds:")?;
        for (index, round) in self.rounds.iter().enumerate() {
            let separator = if index == 0 { " " } else { "; " };
            if round.groups.len() <= 1 {
                write!(f, "{separator}whole")?;
                continue;
            }
            let groups: Vec<String> = round
                .groups
                .iter()
                .map(|group| {
                    let names: Vec<String> =
                        group.iter().map(|i| format!("{}{}", i.replica.0, if i.twin { "'" } else { "" })).collect();
                    names.join(" ")
                })
                .collect();
            write!(f, "{separator}{}", groups.join(" | "))?;
        }
        Ok(())
    }
}

/// Every way to choose `k` of `0..n`, in lexicographic order.
fn combinations(n: usize, k: usize) -> Vec<Vec<ReplicaId>> {
    fn extend(start: usize, n: usize, k: usize, current: &mut Vec<ReplicaId>, out: &mut Vec<Vec<ReplicaId>>) {
        if current.len() == k {
            out.push(current.clone());
            return;
        }
        for next in start..n {
            current.push(ReplicaId(next as u32));
            extend(next + 1, n, k, current, out);
            current.pop();
        }
    }
    let mut out = Vec::new();
    extend(0, n, k, &mut Vec::new(), &mut out);
    out
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl TwinsScope {
    /// Checks the scope and counts its scenarios.
    pub fn scenarios(&self) -> Result<u128, ConfigError> {
        let invalid = |reason: String| Err(ConfigError::Invalid { field: "twins", reason });
        if self.replicas < 4 || self.replicas > 64 {
            return invalid(format!("Twins scopes take 4 to 64 replicas, got {}", self.replicas));
        }
        if self.twinned == 0 || self.twinned > self.replicas {
            return invalid(format!("twin between 1 and {} replicas, got {}", self.replicas, self.twinned));
        }
        if self.rounds == 0 || self.round_us == 0 {
            return invalid("a Twins scope needs at least one round of non-zero length".into());
        }
        let instances = (self.replicas + self.twinned) as u32;
        let too_many = || ConfigError::Invalid {
            field: "twins",
            reason: format!("the scope ({self:?}) has more scenarios than can be numbered"),
        };
        let partitions = 1u128.checked_shl(instances - 1).ok_or_else(too_many)?;
        let per_twinned_set =
            (0..self.rounds).try_fold(1u128, |total, _| total.checked_mul(partitions)).ok_or_else(too_many)?;
        let sets = combinations_count(self.replicas as u128, self.twinned as u128).ok_or_else(too_many)?;
        sets.checked_mul(per_twinned_set).ok_or_else(too_many)
    }

    /// Scenario `index` (below [`TwinsScope::scenarios`]): the twinned set is the most
    /// significant digit, then one partition per round. Partition `p` of the instances
    /// (first instances in id order, then second instances) keeps the first instance in
    /// group A and puts instance `i > 0` in group B when bit `i - 1` of `p` is set; `p = 0`
    /// is no partition.
    pub fn scenario(&self, index: u128) -> Result<TwinsScenario, ConfigError> {
        let total = self.scenarios()?;
        if index >= total {
            return Err(ConfigError::Invalid {
                field: "twins",
                reason: format!("scenario {index} is outside the scope's {total}"),
            });
        }
        let partitions = 1u128 << (self.replicas + self.twinned - 1);
        let mut rest = index;
        let mut digits = Vec::with_capacity(self.rounds);
        for _ in 0..self.rounds {
            digits.push(rest % partitions);
            rest /= partitions;
        }
        let sets = combinations(self.replicas, self.twinned);
        let twinned = sets[rest as usize].clone();
        let instances: Vec<Instance> = (0..self.replicas as u32)
            .map(|r| Instance { replica: ReplicaId(r), twin: false })
            .chain(twinned.iter().map(|&replica| Instance { replica, twin: true }))
            .collect();
        let rounds = digits
            .iter()
            .rev()
            .enumerate()
            .map(|(round, &partition)| {
                let (mut a, mut b) = (vec![instances[0]], Vec::new());
                for (bit, instance) in instances[1..].iter().enumerate() {
                    if partition >> bit & 1 == 1 {
                        b.push(*instance);
                    } else {
                        a.push(*instance);
                    }
                }
                let groups = if b.is_empty() { vec![a] } else { vec![a, b] };
                Round { until: Instant::from_micros(self.round_us * (round as u64 + 1)), groups }
            })
            .collect();
        Ok(TwinsScenario { twinned, rounds })
    }

    /// The scenario seed `seed` runs: seeds `1..=N` visit all `N` scenarios once each (a
    /// stride coprime to `N`, so a prefix of the seeds is spread across the scope), and
    /// later seeds wrap around with other network delays.
    pub fn scenario_of_seed(&self, seed: u64) -> Result<u128, ConfigError> {
        let total = self.scenarios()?;
        let mut stride = total / 8 * 5 + 1;
        while gcd(stride, total) != 1 {
            stride += 1;
        }
        let position = u128::from(seed.saturating_sub(1)) % total;
        // (position · stride) mod total without overflow: both are below total < 2^127
        // for any scope that numbers, so double-and-add stays in range.
        Ok(mul_mod(position, stride % total, total))
    }

    /// The simulation for `seed`: its scenario, a short closed-loop workload, no loss, and
    /// a view-change timeout shorter than a round.
    pub fn config(&self, seed: u64) -> Result<(SimConfig, TwinsScenario), ConfigError> {
        let scenario = self.scenario(self.scenario_of_seed(seed)?)?;
        let mut config = SimConfig::new(seed, self.replicas);
        config.params.view_change_timeout_us = 300_000;
        config.clients = 2;
        config.requests_per_client = 12;
        config.client_concurrency = 3;
        config.network = NetworkModel {
            delay_min_us: 100,
            delay_max_us: 2_000,
            drop_rate: 0.0,
            duplicate_rate: 0.0,
            faults_until: None,
            ..NetworkModel::default()
        };
        config.time_limit = Duration::from_secs(30);
        config.twins = scenario.twinned.clone();
        config.rounds = scenario.rounds.clone();
        Ok((config, scenario))
    }
}

fn combinations_count(n: u128, k: u128) -> Option<u128> {
    (0..k).try_fold(1u128, |acc, i| acc.checked_mul(n - i).map(|v| v / (i + 1)))
}

fn mul_mod(mut a: u128, mut b: u128, modulus: u128) -> u128 {
    let mut result = 0u128;
    a %= modulus;
    while b > 0 {
        if b & 1 == 1 {
            result = (result + a) % modulus;
        }
        a = (a + a) % modulus;
        b >>= 1;
    }
    result
}

/// The result of one Twins seed.
#[derive(Debug, Clone)]
pub struct TwinsOutcome {
    pub seed: u64,
    pub scenario: TwinsScenario,
    pub report: SimReport,
}

/// Runs seeds `first_seed..first_seed + seeds` of `scope` with service `S`, calling `each`
/// after each. Safety is the checker's; a seed is live if every request completed and the
/// correct replicas agree (judged after the last round, when the network is whole).
pub fn run_twins<S: Service>(
    scope: &TwinsScope,
    first_seed: u64,
    seeds: u64,
    make_service: impl Fn() -> S + Clone + 'static,
    make_operation: impl Fn(&mut ChaCha8Rng, usize, u64) -> S::Op + Clone + 'static,
    mut each: impl FnMut(&TwinsOutcome),
) -> Result<CampaignReport, ConfigError> {
    let mut campaign = CampaignReport::default();
    for seed in first_seed..first_seed.saturating_add(seeds) {
        let (config, scenario) = scope.config(seed)?;
        let report = Simulation::new(config, make_service.clone(), make_operation.clone())?.run();
        let outcome = TwinsOutcome { seed, scenario, report };
        campaign.seeds_run += 1;
        campaign.checks += outcome.report.checks;
        campaign.violations += outcome.report.violations.len() as u64;
        let safe = outcome.report.violations.is_empty();
        if !safe {
            campaign.unsafe_seeds.push(seed);
        } else if !outcome.report.converged() {
            campaign.stuck_seeds.push(seed);
        }
        if (!safe || !outcome.report.converged()) && campaign.first_failure.is_none() {
            campaign.first_failure = Some(format!("{} ({})", outcome.report, outcome.scenario));
        }
        each(&outcome);
    }
    Ok(campaign)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_one_to_n_visit_every_scenario_of_the_scope_once() {
        for scope in [TwinsScope::default(), TwinsScope { rounds: 1, ..TwinsScope::default() }] {
            let total = scope.scenarios().unwrap();
            let visited: BTreeSet<u128> = (1..=total as u64).map(|s| scope.scenario_of_seed(s).unwrap()).collect();
            assert_eq!(visited.len() as u128, total, "{scope:?}");
            assert_eq!(visited.last(), Some(&(total - 1)));
        }
        assert_eq!(TwinsScope::default().scenarios().unwrap(), 4 * 16 * 16);
        assert_eq!(
            TwinsScope { replicas: 7, twinned: 2, rounds: 3, ..TwinsScope::default() }.scenarios().unwrap(),
            21 * (1 << 24)
        );
    }

    #[test]
    fn a_scenario_partitions_every_instance_into_at_most_two_groups() {
        let scope = TwinsScope::default();
        let mut partitioned_twins = 0;
        for index in 0..scope.scenarios().unwrap() {
            let scenario = scope.scenario(index).unwrap();
            assert_eq!(scenario.twinned.len(), 1);
            for round in &scenario.rounds {
                let all: BTreeSet<Instance> = round.groups.iter().flatten().copied().collect();
                assert_eq!(all.len(), 5, "{scenario}");
                assert!(round.groups.len() <= 2 && round.groups.iter().all(|g| !g.is_empty()));
                let twin = scenario.twinned[0];
                let first = round.group_of(Instance { replica: twin, twin: false });
                let second = round.group_of(Instance { replica: twin, twin: true });
                partitioned_twins += u32::from(first != second);
            }
        }
        // Half of the 16 partitions of a round split the twin's two instances.
        assert_eq!(partitioned_twins, 4 * 2 * 16 * 8);
        assert!(scope.scenario(scope.scenarios().unwrap()).is_err());
    }

    #[test]
    fn impossible_twins_configurations_are_refused() {
        let mut config = SimConfig::new(1, 4);
        config.twins = vec![ReplicaId(4)];
        assert!(check(&config).is_err());
        config.twins = vec![ReplicaId(1)];
        config.byzantine = vec![(ReplicaId(1), super::super::byzantine::Strategy::Silent)];
        assert!(check(&config).is_err());
        config.byzantine.clear();
        let second = Instance { replica: ReplicaId(2), twin: true };
        config.rounds = vec![Round { until: Instant::from_micros(10), groups: vec![vec![second]] }];
        assert!(check(&config).is_err(), "replica 2 has no second instance");
        assert!(TwinsScope { twinned: 0, ..TwinsScope::default() }.scenarios().is_err());
        assert!(TwinsScope { replicas: 64, twinned: 64, rounds: 3, ..TwinsScope::default() }.scenarios().is_err());
    }
}
