//! What a service author checks in the simulator besides the protocol's invariants: every
//! completed operation with its reply and its call and return times (the history a
//! linearizability checker reads, and what a workload may react to), and the author's own
//! invariant over each correct replica's service, checked whenever that replica's state
//! moves.

use super::checker::Violation;
use super::Simulation;
use crate::ids::{Instant, ReplicaId, Timestamp};
use crate::service::{Outcome, Service};
use std::collections::BTreeMap;

/// One operation a correct simulated client completed: what it asked, what `f + 1`
/// replicas answered, and when it was called and returned (simulated time).
#[derive(Debug, Clone)]
pub struct Completion<S: Service> {
    /// The client's index (0..`SimConfig::clients`).
    pub client: usize,
    pub operation: S::Op,
    /// The accepted reply; an undecodable one reads as `Outcome::MalformedOperation`.
    pub outcome: Outcome<S::Reply>,
    pub call: Instant,
    pub ret: Instant,
}

/// A service author's invariant: `Err(why)` when `service`, at replica `replica`, is in a
/// state the service must never reach.
pub type ServiceInvariant<S> = Box<dyn FnMut(ReplicaId, &S) -> Result<(), String>>;

/// Told each completion as it happens (a workload that reacts to replies shares state with
/// its operation source through it).
pub type ReplyObserver<S> = Box<dyn FnMut(&Completion<S>)>;

/// The history kept during a run.
pub(super) struct History<S: Service> {
    /// Operations issued and not yet completed, by client and timestamp, with their call time.
    pub(super) open: BTreeMap<(usize, Timestamp), (S::Op, Instant)>,
    pub(super) completed: Vec<Completion<S>>,
    pub(super) invariant: Option<ServiceInvariant<S>>,
    pub(super) observer: Option<ReplyObserver<S>>,
    pub(super) violations: Vec<Violation>,
}

impl<S: Service> Default for History<S> {
    fn default() -> Self {
        History {
            open: BTreeMap::new(),
            completed: Vec::new(),
            invariant: None,
            observer: None,
            violations: Vec::new(),
        }
    }
}

impl<S: Service> Simulation<S> {
    /// Checks `invariant` on every correct replica's service after each step in which its
    /// state moved (an execution, an installed checkpoint, a recovery). A failure is a
    /// violation of the report, named `service`, like the protocol's own.
    pub fn check_service(mut self, invariant: impl FnMut(ReplicaId, &S) -> Result<(), String> + 'static) -> Self {
        self.history.invariant = Some(Box::new(invariant));
        self
    }

    /// Calls `observer` with every completed operation, in the order they complete.
    pub fn on_reply(mut self, observer: impl FnMut(&Completion<S>) + 'static) -> Self {
        self.history.observer = Some(Box::new(observer));
        self
    }

    /// Runs like [`Simulation::run`], and also returns every completed operation in the
    /// order they completed.
    pub fn run_with_history(mut self) -> (super::SimReport, Vec<Completion<S>>) {
        let finished = self.run_events();
        let history = std::mem::take(&mut self.history.completed);
        (self.report(finished), history)
    }

    pub(super) fn note_issued(&mut self, client: usize, timestamp: Timestamp, operation: S::Op) {
        self.history.open.insert((client, timestamp), (operation, self.now));
        self.note_wan_issue();
    }

    pub(super) fn note_completed(&mut self, client: usize, timestamp: Timestamp, result: &[u8]) {
        let Some((operation, call)) = self.history.open.remove(&(client, timestamp)) else { return };
        self.note_wan_completion(call);
        let outcome = rmp_serde::from_slice(result).unwrap_or(Outcome::MalformedOperation);
        let completion = Completion { client, operation, outcome, call, ret: self.now };
        if let Some(observer) = &mut self.history.observer {
            observer(&completion);
        }
        self.history.completed.push(completion);
    }
}

/// Checks `invariant` on `service` of `replica`, recording a violation if it fails.
pub(super) fn check<S: Service>(history: &mut History<S>, replica: ReplicaId, service: &S, now: Instant) {
    let Some(invariant) = &mut history.invariant else { return };
    if let Err(detail) = invariant(replica, service) {
        history.violations.push(Violation {
            invariant: "service",
            detail: format!("{replica} at {:.3} s: {detail}", now.as_micros() as f64 / 1e6),
        });
    }
}
