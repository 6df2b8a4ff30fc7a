//! What a run produced: the report, its verdict and its display, and how a simulation's
//! state at the end becomes one.

use super::byzantine_client::ByzantineClient;
use super::checker::Violation;
use super::replicas::Node;
use super::wan::{LinkCounters, WanLoad};
use super::Simulation;
use crate::ids::{ReplicaId, SeqNum, View};
use crate::roles::replica::{Footprint, ReplicaMetrics};
use crate::service::Service;
use crate::verify::RefusalCounts;
use bulwark_crypto::Digest;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// What a run produced.
#[derive(Debug, Clone)]
pub struct SimReport {
    pub seed: u64,
    pub violations: Vec<Violation>,
    pub checks: u64,
    pub requests_expected: u64,
    pub requests_completed: u64,
    /// Digest of every delivered event in order: equal seeds give equal traces.
    pub trace: Digest,
    /// For each live correct replica: last executed sequence number and state digest.
    pub final_states: BTreeMap<ReplicaId, (SeqNum, Digest)>,
    pub stable_checkpoints: BTreeMap<ReplicaId, SeqNum>,
    /// For each live correct replica: the view it is in, and the view it is changing to.
    pub views: BTreeMap<ReplicaId, (View, Option<View>)>,
    /// Each live correct replica's counters at the end.
    pub metrics: BTreeMap<ReplicaId, ReplicaMetrics>,
    pub simulated_time: Duration,
    pub events: u64,
    pub refused_at_edge: RefusalCounts,
    /// Largest footprint of any correct replica seen during the run, field by field.
    pub peak_footprint: Footprint,
    pub peak_checker_entries: usize,
    pub finished: bool,
    /// Requests still outstanding at the end: `(client index, timestamp)`.
    pub outstanding: Vec<(usize, crate::ids::Timestamp)>,
    /// For each isolation that ended: the isolated replica, its last executed sequence
    /// number then, and the highest any correct replica had executed.
    pub rejoins: Vec<(ReplicaId, SeqNum, SeqNum)>,
    /// Replicas with a scheduled restart that were down at the end: a run that loses a
    /// replica it meant to bring back has not converged, whatever the others did.
    pub down_at_end: Vec<ReplicaId>,
    /// Messages each Byzantine replica sent, and all Byzantine clients together: what a
    /// test checks to know that an attack happened at all.
    pub byzantine_messages_sent: BTreeMap<ReplicaId, u64>,
    pub byzantine_client_messages_sent: u64,
    /// With a placement ([`SimConfig::wan`](super::SimConfig::wan)): completed updates,
    /// their latencies, the span and the WAN traffic, measured as Steward's runs measure
    /// theirs.
    pub wan_load: Option<WanLoad>,
    /// With a placement: every WAN link's counters added up (messages, bytes, losses,
    /// duplicates, time spent queueing for a link).
    pub wan_links: Option<LinkCounters>,
    /// With a placement: WAN messages and bytes by message kind
    /// ([`MessageKind::as_str`](crate::messages::MessageKind::as_str)); empty without one.
    pub wan_by_kind: BTreeMap<&'static str, (u64, u64)>,
    /// With a CPU model ([`SimConfig::cpu`](super::SimConfig::cpu)): the simulated time
    /// each replica spent signing and verifying; empty without one.
    pub cpu_busy_us: BTreeMap<ReplicaId, u64>,
}

impl SimReport {
    /// All requests completed and every live correct replica holds the same state.
    pub fn converged(&self) -> bool {
        let mut states = self.final_states.values();
        let first = states.next();
        self.requests_completed == self.requests_expected
            && self.down_at_end.is_empty()
            && states.all(|s| Some(s) == first)
    }

    /// How to replay this run.
    pub fn replay_hint(&self) -> String {
        format!("replay with BULWARK_SEED={} (same test, same configuration)", self.seed)
    }
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {}: {} violations, {} checks, {}/{} requests, {} events, {:?} simulated, finished={}",
            self.seed,
            self.violations.len(),
            self.checks,
            self.requests_completed,
            self.requests_expected,
            self.events,
            self.simulated_time,
            self.finished
        )?;
        write!(f, "\n  views (entered, changing to): {:?}", self.views)?;
        if let Some(load) = &self.wan_load {
            write!(
                f,
                "\n  WAN: {} updates, {:.1}/s, latency p50 {:.1} ms p99 {:.1} ms, {:.1} messages and {:.0} bytes per update",
                load.updates,
                load.updates_per_sec(),
                load.latency_ms(50.0),
                load.latency_ms(99.0),
                load.wan_messages_per_update(),
                load.wan_bytes_per_update()
            )?;
        }
        if !self.down_at_end.is_empty() {
            write!(f, "\n  down at the end although restarted: {:?}", self.down_at_end)?;
        }
        if !self.outstanding.is_empty() {
            let shown: Vec<_> = self.outstanding.iter().take(8).collect();
            write!(f, "\n  outstanding (client, timestamp): {shown:?}")?;
        }
        for violation in self.violations.iter().take(5) {
            write!(f, "\n  {violation}")?;
        }
        if !self.violations.is_empty() || !self.converged() {
            write!(f, "\n  {}", self.replay_hint())?;
        }
        Ok(())
    }
}

impl<S: Service> Simulation<S> {
    pub(super) fn report(self, finished: bool) -> SimReport {
        let down_at_end = self.restarted_replicas_down();
        let byzantine_messages_sent = self
            .nodes
            .iter()
            .filter_map(|(id, node)| match node {
                Node::Byzantine(byzantine) => Some((*id, byzantine.messages_sent())),
                _ => None,
            })
            .collect();
        let wan = self.wan_figures();
        let cpu_busy_us = self.cpu_busy_us();
        let mut final_states = BTreeMap::new();
        let mut stable_checkpoints = BTreeMap::new();
        let mut views = BTreeMap::new();
        let mut metrics = BTreeMap::new();
        for node in self.nodes.values() {
            if let Node::Correct(replica) = node {
                metrics.insert(replica.id(), replica.metrics().clone());
                final_states.insert(replica.id(), (replica.last_executed(), replica.state_digest()));
                stable_checkpoints.insert(replica.id(), replica.stable());
                views.insert(replica.id(), (replica.view(), replica.view_change_target()));
            }
        }
        SimReport {
            seed: self.config.seed,
            violations: self.checker.violations().iter().chain(&self.history.violations).cloned().collect(),
            checks: self.checker.checks(),
            requests_expected: self.config.requests_per_client * self.config.clients as u64,
            requests_completed: self.clients.iter().map(|c| c.completed).sum(),
            trace: self.trace.finish(),
            final_states,
            stable_checkpoints,
            views,
            metrics,
            simulated_time: Duration::from_micros(self.now.0),
            events: self.delivered,
            refused_at_edge: self.refused_at_edge,
            peak_footprint: self.peak,
            peak_checker_entries: self.peak_checker,
            finished,
            rejoins: self.rejoins.clone(),
            down_at_end,
            byzantine_messages_sent,
            byzantine_client_messages_sent: self.byzantine_clients.iter().map(ByzantineClient::messages_sent).sum(),
            wan_load: wan.load,
            wan_links: wan.links,
            wan_by_kind: wan.by_kind,
            cpu_busy_us,
            outstanding: self
                .clients
                .iter()
                .enumerate()
                .flat_map(|(index, c)| c.client.outstanding_timestamps().into_iter().map(move |t| (index, t)))
                .collect(),
        }
    }
}
