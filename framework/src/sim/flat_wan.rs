//! Flat PBFT over a wide-area network: one cluster whose replicas and clients are spread
//! over sites ([`SimConfig::wan`], a [`WanPlacement`]), the baseline the Steward figures are
//! compared with. This module owns what a placement changes in a run: which messages cross
//! a WAN link and what they cost there, and what the run measures ([`WanLoad`], the WAN
//! traffic by message kind). [`flat_wan_config`] builds such a run.
//!
//! A message between two endpoints at different sites goes through
//! [`Wan::send`](super::wan::Wan::send) with the size of its wire frame (length prefix and
//! envelope, as the TCP transport would send it); the LAN model's delay, loss and
//! duplication do not apply to it, the WAN link's own do. Within a site nothing changes.
//! Flat PBFT sends every message to each remote replica separately, so a broadcast crosses
//! each WAN link once per replica at the far site: that is the cost Steward saves.

use super::network::{Endpoint, Payload};
use super::wan::{LinkCounters, LinkModel, Wan, WanLoad, WanPlacement};
use super::{Event, SimConfig, Simulation};
use crate::config::{ConfigError, ProtocolParams};
use crate::ids::{ClusterId, Instant, ReplicaId};
use crate::service::Service;
use crate::wire;
use std::collections::BTreeMap;

/// A flat PBFT run over `sites` sites of `replicas_per_site` replicas each (placed in
/// blocks, see [`WanPlacement::sites`]), every WAN link following `link`, and
/// `clients_per_site` closed-loop clients per site, each with one request outstanding and
/// `requests_per_client` to make.
///
/// The timers are set for the WAN, far above what a request takes there, so that no view
/// change and no client retransmission happens in a run without faults: with `L` the
/// link's one-way latency plus jitter, a client retransmits after `max(60 L, 0.5 s)` (3 s
/// on 50 ms links; a request needs 4 to 5 one-way crossings plus queueing), a backup
/// suspects the primary after `max(120 L, 1 s)`, and a replica asks for what it misses
/// after `max(20 L, 100 ms)` without progress. Checkpoints come every 64 sequence numbers
/// with a window of 128 (the defaults' 256 would let a NEW-VIEW of 20 replicas outgrow the
/// largest frame). The other protocol parameters are the defaults a deployment would use
/// (4 batches in flight, 1 ms batch delay); the LAN within a site is
/// [`NetworkModel`](super::NetworkModel)'s default.
///
/// Build a simulation from it as from any other configuration; set `cpu` to model signing
/// and verification time, and read [`SimReport::wan_load`](super::SimReport::wan_load):
///
/// ```
/// use bulwark_framework::sim::wan::{CpuCosts, LinkModel};
/// use bulwark_framework::sim::flat_wan_config;
/// let mut config = flat_wan_config(1, 5, 4, LinkModel::symmetric(50, 10.0), 3, 20, 16);
/// config.cpu = Some(CpuCosts::development_machine());
/// assert_eq!((config.replicas, config.clients), (20, 15));
/// // Simulation::new(config, make_service, make_operation)?.run().wan_load
/// ```
pub fn flat_wan_config(
    seed: u64,
    sites: usize,
    replicas_per_site: usize,
    link: LinkModel,
    clients_per_site: usize,
    requests_per_client: u64,
    batch_size_max: usize,
) -> SimConfig {
    let mut config = SimConfig::new(seed, sites * replicas_per_site);
    config.clients = sites * clients_per_site;
    config.requests_per_client = requests_per_client;
    config.client_concurrency = 1;
    let one_way_us = link.latency_us + link.jitter_us;
    let defaults = ProtocolParams::default();
    config.params = ProtocolParams {
        batch_size_max,
        client_retransmit_us: (60 * one_way_us).max(500_000),
        view_change_timeout_us: (120 * one_way_us).max(defaults.view_change_timeout_us),
        status_interval_us: (20 * one_way_us).max(defaults.status_interval_us),
        // The default window (256) would let a NEW-VIEW of 20 replicas outgrow a frame.
        checkpoint_interval: 64,
        watermark_window: 128,
        ..defaults
    };
    config.wan = Some(WanPlacement::sites(&config.ids(), sites, Wan::uniform(link)));
    config
}

/// A run's WAN: the links' queues and counters, where every endpoint is, and what the run
/// measured.
pub(super) struct WanRun {
    /// A clone of the placement's: this run's queues and counters.
    wan: Wan,
    site_of: BTreeMap<ReplicaId, ClusterId>,
    /// Ascending: client `c` is at `sites[c % sites.len()]`.
    sites: Vec<ClusterId>,
    /// Messages and bytes over the WAN by message kind (duplicates and lost ones included,
    /// as in the links' counters).
    by_kind: BTreeMap<&'static str, (u64, u64)>,
    first_issue: Option<Instant>,
    last_completion: Instant,
    latencies_us: Vec<u64>,
}

impl WanRun {
    /// The run of `placement` for a cluster of `ids`; every one of them needs a site.
    pub(super) fn new(placement: &WanPlacement, ids: &[ReplicaId]) -> Result<Self, ConfigError> {
        if let Some(id) = ids.iter().find(|id| !placement.site_of.contains_key(id)) {
            return Err(ConfigError::Invalid { field: "wan", reason: format!("replica {id} has no site") });
        }
        Ok(WanRun {
            wan: placement.wan.clone(),
            site_of: placement.site_of.clone(),
            sites: placement.site_list(),
            by_kind: BTreeMap::new(),
            first_issue: None,
            last_completion: Instant::ZERO,
            latencies_us: Vec::new(),
        })
    }

    fn site(&self, endpoint: Endpoint) -> ClusterId {
        match endpoint {
            Endpoint::Replica(replica) | Endpoint::Twin(replica) => self.site_of[&replica],
            Endpoint::Client(client) | Endpoint::ByzantineClient(client) => self.sites[client % self.sites.len()],
        }
    }
}

/// What a run over a placement measured (see the fields of the same names in
/// [`SimReport`](super::SimReport)).
pub(super) struct WanFigures {
    pub(super) load: Option<WanLoad>,
    pub(super) links: Option<LinkCounters>,
    pub(super) by_kind: BTreeMap<&'static str, (u64, u64)>,
}

impl<S: Service> Simulation<S> {
    /// The sites of `from` and `to`, when a placement puts them at different ones.
    pub(super) fn wan_sites(&self, from: Endpoint, to: Endpoint) -> Option<(ClusterId, ClusterId)> {
        let run = self.flat_wan.as_ref()?;
        let (from, to) = (run.site(from), run.site(to));
        (from != to).then_some((from, to))
    }

    /// Sends `payload` to `to` over the WAN link between `sites`: it arrives at each instant
    /// the link gives (none if lost, two if duplicated).
    pub(super) fn send_over_wan(&mut self, sites: (ClusterId, ClusterId), to: Endpoint, payload: Payload) {
        let bytes = self.frame_bytes(&payload);
        let kind = payload.kind().as_str();
        let departs = self.departs();
        let Some(run) = self.flat_wan.as_mut() else { return };
        let before = run.wan.counters(sites.0, sites.1);
        let arrivals = run.wan.send(sites.0, sites.1, bytes, departs, &mut self.rng);
        let after = run.wan.counters(sites.0, sites.1);
        let counted = run.by_kind.entry(kind).or_default();
        counted.0 += after.messages - before.messages;
        counted.1 += after.bytes - before.bytes;
        for at in arrivals {
            self.schedule(at, Event::Deliver { to, payload: payload.clone() });
        }
    }

    /// The length of the frame that carries `payload` on the wire.
    fn frame_bytes(&self, payload: &Payload) -> usize {
        let scope = self.membership.scope();
        let frame = match payload {
            Payload::Frame(frame, _) => return frame.len(),
            Payload::Verified(message) => wire::encode_frame(scope, &message.to_wire()),
            Payload::Raw(message) => wire::encode_frame(scope, message),
        };
        // Encoding plain data does not fail; were it to, the message would take no link time.
        frame.map_or(0, |frame| frame.len())
    }

    /// A correct client issued a request now.
    pub(super) fn note_wan_issue(&mut self) {
        let now = self.now;
        if let Some(run) = self.flat_wan.as_mut() {
            run.first_issue.get_or_insert(now);
        }
    }

    /// A correct client accepted the result of a request it issued at `call`.
    pub(super) fn note_wan_completion(&mut self, call: Instant) {
        let now = self.now;
        if let Some(run) = self.flat_wan.as_mut() {
            run.latencies_us.push(now.as_micros() - call.as_micros());
            run.last_completion = now;
        }
    }

    pub(super) fn wan_figures(&self) -> WanFigures {
        let Some(run) = self.flat_wan.as_ref() else {
            return WanFigures { load: None, links: None, by_kind: BTreeMap::new() };
        };
        let totals = run.wan.totals();
        let first = run.first_issue.unwrap_or(Instant::ZERO);
        let load = WanLoad {
            updates: run.latencies_us.len() as u64,
            span_us: run.last_completion.as_micros().saturating_sub(first.as_micros()),
            latencies_us: run.latencies_us.clone(),
            wan_messages: totals.messages,
            wan_bytes: totals.bytes,
        };
        WanFigures { load: Some(load), links: Some(totals), by_kind: run.by_kind.clone() }
    }
}
