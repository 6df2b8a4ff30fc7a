//! A test kit for service authors: what to run on a new service before a cluster runs it.
//!
//! * [`check_determinism`]: two instances, one operation sequence, the same replies and
//!   snapshot bytes (and snapshots that restore to themselves).
//! * [`ServiceTest`]: the service in the deterministic simulator over many seeds, with the
//!   simulator's faults (loss, duplication, reordering, a partition, a crash and restart,
//!   Byzantine replicas), a workload of the author's, the author's own invariant checked on
//!   every correct replica whenever its state moves, and, for a service with a sequential
//!   specification, a [`linearizability`] check of the clients' history. A failure names
//!   its seed and how to replay it.
//!
//! The simulator's own invariants (the replicas agree, checkpoints match, …) are checked
//! in every run as well, so a service that is not deterministic fails there too.

pub mod determinism;
pub mod linearizability;

pub use determinism::{check_determinism, NotDeterministic};

use crate::ids::ReplicaId;
use crate::service::Service;
use crate::sim::campaign::{scenario, CampaignSpec};
use crate::sim::{Completion, SimConfig, SimReport, Simulation};
use linearizability::{Checker, Operation, Specification, Verdict};
use rand_chacha::ChaCha8Rng;
use std::fmt;
use std::ops::Range;
use std::rc::Rc;
use std::time::Duration;

/// Which faults each seed draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Faults {
    /// A clean network and no faulty replica: the service alone is on trial.
    None,
    /// What `bulwark sim` draws per seed: loss and duplication (up to 10% and 20% here),
    /// reordering, a partition, a crash and restart, up to `f` Byzantine replicas and
    /// sometimes a Byzantine client.
    Campaign,
}

type Workload<S> = Rc<dyn Fn(&mut ChaCha8Rng, usize, u64) -> <S as Service>::Op>;
type Invariant<S> = Rc<dyn Fn(&S) -> Result<(), String>>;
type HistoryCheck<S> = Rc<dyn Fn(&[Completion<S>]) -> Result<(), String>>;

/// A service run in the simulator over a range of seeds (see the module documentation).
pub struct ServiceTest<S: Service> {
    make_service: Rc<dyn Fn() -> S>,
    workload: Workload<S>,
    invariant: Option<Invariant<S>>,
    history_check: Option<HistoryCheck<S>>,
    seeds: Range<u64>,
    faults: Faults,
    replicas: usize,
    clients: usize,
    requests_per_client: u64,
}

impl<S: Service> fmt::Debug for ServiceTest<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceTest")
            .field("seeds", &self.seeds)
            .field("faults", &self.faults)
            .field("replicas", &self.replicas)
            .field("clients", &self.clients)
            .field("requests_per_client", &self.requests_per_client)
            .finish()
    }
}

impl<S: Service> ServiceTest<S> {
    /// Replicas of `make_service()`, driven by `workload(rng, client, index)`: client
    /// `client`'s `index`-th operation. Defaults: seeds 1..21, campaign faults, 4 replicas,
    /// 3 clients of 30 operations each.
    pub fn new(
        make_service: impl Fn() -> S + 'static,
        workload: impl Fn(&mut ChaCha8Rng, usize, u64) -> S::Op + 'static,
    ) -> Self {
        ServiceTest {
            make_service: Rc::new(make_service),
            workload: Rc::new(workload),
            invariant: None,
            history_check: None,
            seeds: 1..21,
            faults: Faults::Campaign,
            replicas: 4,
            clients: 3,
            requests_per_client: 30,
        }
    }

    pub fn seeds(mut self, seeds: Range<u64>) -> Self {
        self.seeds = seeds;
        self
    }

    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// `n = 3f + 1` replicas per run (4 or 7 keep runs fast).
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    pub fn clients(mut self, clients: usize, requests_per_client: u64) -> Self {
        self.clients = clients;
        self.requests_per_client = requests_per_client;
        self
    }

    /// A state the service must never be in: checked on every correct replica after every
    /// step that moved its state.
    pub fn invariant(mut self, invariant: impl Fn(&S) -> Result<(), String> + 'static) -> Self {
        self.invariant = Some(Rc::new(invariant));
        self
    }

    /// The clients' history must be linearizable against `spec`. `operation` turns a
    /// completion into the specification's terms, or `None` to leave it out (an operation
    /// whose outcome says nothing, say). Checked on runs where every operation completed.
    pub fn linearizable<P>(
        mut self,
        spec: P,
        operation: impl Fn(&Completion<S>) -> Option<(P::Input, P::Output)> + 'static,
    ) -> Self
    where
        P: Specification + 'static,
    {
        let check = move |history: &[Completion<S>]| {
            let operations: Vec<Operation<P::Input, P::Output>> = history
                .iter()
                .filter_map(|completion| {
                    let (input, output) = operation(completion)?;
                    let (call, ret) = (completion.call.as_micros(), completion.ret.as_micros());
                    Some(Operation { client: completion.client as u64, input, output, call, ret })
                })
                .collect();
            match Checker::default().check(&spec, &operations) {
                Verdict::Linearizable => Ok(()),
                Verdict::NotLinearizable { longest_prefix } => Err(format!(
                    "the history of {} operations is not linearizable; the longest linearizable prefix holds {}",
                    operations.len(),
                    longest_prefix.len()
                )),
                Verdict::Unknown { reason } => Err(format!("linearizability undecided: {reason}")),
            }
        };
        self.history_check = Some(Rc::new(check));
        self
    }

    /// The simulator configuration of `seed`.
    fn config(&self, seed: u64) -> SimConfig {
        let mut config = match self.faults {
            Faults::None => SimConfig::new(seed, self.replicas),
            Faults::Campaign => {
                let spec = CampaignSpec {
                    replicas: self.replicas,
                    drop_max: 0.1,
                    duplicate_max: 0.2,
                    time_limit: Duration::from_secs(60),
                    ..CampaignSpec::default()
                };
                scenario(&spec, seed).0
            }
        };
        config.clients = self.clients;
        config.requests_per_client = self.requests_per_client;
        config
    }

    /// Runs one seed.
    pub fn run_seed(&self, seed: u64) -> Result<SimReport, ServiceTestFailure> {
        let workload = self.workload.clone();
        let make_service = self.make_service.clone();
        let mut simulation = Simulation::new(
            self.config(seed),
            move || make_service(),
            move |rng, client, index| workload(rng, client, index),
        )
        .map_err(|error| ServiceTestFailure::new(seed, format!("invalid configuration: {error}"), None))?;
        if let Some(invariant) = self.invariant.clone() {
            simulation = simulation.check_service(move |_: ReplicaId, service: &S| invariant(service));
        }
        let (report, history) = simulation.run_with_history();
        if !report.violations.is_empty() {
            let first = &report.violations[0];
            return Err(ServiceTestFailure::new(
                seed,
                format!("{} violations, first {first}", report.violations.len()),
                Some(report),
            ));
        }
        if !report.converged() {
            return Err(ServiceTestFailure::new(seed, "the replicas did not converge".into(), Some(report)));
        }
        if let Some(check) = &self.history_check {
            check(&history).map_err(|what| ServiceTestFailure::new(seed, what, Some(report.clone())))?;
        }
        Ok(report)
    }

    /// Runs every seed; the first failure, or how many seeds passed.
    pub fn run(&self) -> Result<u64, ServiceTestFailure> {
        for seed in self.seeds.clone() {
            self.run_seed(seed)?;
        }
        Ok(self.seeds.end.saturating_sub(self.seeds.start))
    }
}

/// A seed on which a [`ServiceTest`] failed.
#[derive(Debug, Clone)]
pub struct ServiceTestFailure {
    pub seed: u64,
    /// What went wrong: the first violated invariant, no convergence, or the history check.
    pub what: String,
    pub report: Option<Box<SimReport>>,
}

impl ServiceTestFailure {
    fn new(seed: u64, what: String, report: Option<SimReport>) -> Self {
        ServiceTestFailure { seed, what, report: report.map(Box::new) }
    }
}

impl fmt::Display for ServiceTestFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seed {}: {} (replay it alone with .seeds({}..{}))", self.seed, self.what, self.seed, self.seed + 1)?;
        if let Some(report) = &self.report {
            write!(f, "\n{report}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ServiceTestFailure {}
