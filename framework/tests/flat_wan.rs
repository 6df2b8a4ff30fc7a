//! Flat PBFT over an emulated WAN (`SimConfig::wan`, `sim::flat_wan`): one cluster spread
//! over sites, the baseline of the Steward figures. These runs check that a placement sends
//! what crosses sites through the WAN links and only that, what a run measures there, the
//! optional CPU model, and that a run with neither is the run it was before they existed.
//!
//! The seeds are fixed; a failure names its seed.

mod common;

use bulwark_framework::sim::wan::{CpuCosts, LinkModel, Wan, WanPlacement};
use bulwark_framework::sim::{flat_wan_config, Completion, NetworkModel, SimConfig, SimReport, Simulation};
use bulwark_framework::View;
use bulwark_services::kv::{KvOp, KvStore};
use rand::Rng;

/// Runs the key-value service with 200-byte updates (a put of a 200-byte value under one
/// of eight keys): the report, and every completion.
fn run(config: SimConfig) -> (SimReport, Vec<Completion<KvStore>>) {
    Simulation::new(config, KvStore::new, |rng, client, index| {
        let key = format!("k{}", rng.gen_range(0..8));
        let mut value = vec![0u8; 200];
        value[..2].copy_from_slice(&[client as u8, index as u8]);
        KvOp::Put { key, value }
    })
    .expect("valid simulation config")
    .run_with_history()
}

/// Safe, every request completed, every correct replica in the same state, and still in
/// view 0: the WAN timers leave no room for a spurious view change.
fn assert_converged_in_view_zero(report: &SimReport) {
    common::assert_safe_and_converged(report);
    assert!(report.views.values().all(|view| *view == (View(0), None)), "a view change happened: {report}");
}

/// 20 replicas (f = 6, quorum 14) in 5 sites of 4 on symmetric 50 ms, 10 Mbit/s links, 3
/// clients per site: the run converges with no violation and no view change, the WAN
/// figures add up, and no request beats what PBFT needs across the WAN.
///
/// The bound, with `t1` the instant the primary (replica 0, site 1) has the request: a
/// replica is prepared with the pre-prepare and 13 prepares (the quorum less one), at most
/// 4 of them from its own site, so at least 9 crossed the WAN. The primary's site has only
/// 3 backups, so at least 6 of those come from the other sites, whose backups get the
/// pre-prepare at `t1 + 50 ms` at the earliest and prepare only then: no replica is
/// prepared before `t1 + 100`. Committing takes 14 commits, at least 10 from other sites,
/// each sent once its sender is prepared: no replica executes before `t1 + 150`. The client
/// needs f + 1 = 7 matching replies, at least 3 from other sites: not before `t1 + 200`.
/// A client away from the primary's site needs 50 ms more to reach it. So latency is at
/// least 200 ms at site 1 (clients 0, 5, 10) and at least 250 ms elsewhere.
#[test]
fn twenty_replicas_over_five_sites_converge_and_no_request_beats_the_wan_bound() {
    let config = flat_wan_config(1, 5, 4, LinkModel::symmetric(50, 10.0), 3, 10, 16);
    let (report, completions) = run(config);
    assert_converged_in_view_zero(&report);
    let load = report.wan_load.as_ref().expect("a placement measures its load");
    assert_eq!((load.updates, load.latencies_us.len()), (150, 150), "{report}");
    for completion in &completions {
        let bound_us = if completion.client % 5 == 0 { 200_000 } else { 250_000 };
        let latency_us = completion.ret.as_micros() - completion.call.as_micros();
        assert!(latency_us >= bound_us, "client {} took {latency_us} µs: {report}", completion.client);
    }
    // The bound is nearly met, so it is the WAN that the time goes to.
    let fastest_us = completions.iter().map(|c| c.ret.as_micros() - c.call.as_micros()).min().unwrap_or_default();
    assert!(fastest_us < 230_000, "fastest {fastest_us} µs: {report}");
    // The figures are the links' counters, and every kind of the normal case crossed.
    let links = report.wan_links.expect("a placement counts its links");
    assert_eq!((load.wan_messages, load.wan_bytes), (links.messages, links.bytes));
    let by_kind: (u64, u64) = report.wan_by_kind.values().fold((0, 0), |sum, (m, b)| (sum.0 + m, sum.1 + b));
    assert_eq!(by_kind, (links.messages, links.bytes), "{:?}", report.wan_by_kind);
    for kind in ["request", "pre_prepare", "prepare", "commit", "reply"] {
        assert!(report.wan_by_kind.get(kind).is_some_and(|(messages, _)| *messages > 0), "no {kind} crossed");
    }
    // Each reply to a client crosses from the 16 replicas of the other four sites.
    assert_eq!(report.wan_by_kind["reply"].0, 150 * 16, "{:?}", report.wan_by_kind);
    assert!(report.cpu_busy_us.is_empty(), "no CPU model, no CPU time");
}

/// Without a placement or a CPU model a run is exactly the run it was before either
/// existed: the trace digests below were recorded on the commit before them (98d3d82), for
/// the default configuration and for one with losses, duplicates and the wire encoding.
#[test]
fn without_a_placement_the_trace_is_what_it_was_before_the_wan_existed() {
    let report = common::run_kv(SimConfig::new(7, 4));
    assert!(report.converged() && report.wan_load.is_none() && report.wan_by_kind.is_empty(), "{report}");
    assert_eq!(report.trace.to_hex(), "173383bf6dcc56470d369bf11fc552d70eaa1f08dde61b1e27b8e9af82543363");
    let mut config = SimConfig::new(11, 7);
    config.network = NetworkModel { drop_rate: 0.05, duplicate_rate: 0.1, ..NetworkModel::default() };
    config.wire_roundtrip = true;
    config.clients = 3;
    config.requests_per_client = 20;
    let report = common::run_kv(config);
    assert!(report.converged(), "{report}");
    assert_eq!(report.trace.to_hex(), "4ca934606c0e57551805ef66e0aa706526835315145c6fbc1a28ff7ada114d06");
}

/// The same run (seed, 40 clients, 200-byte updates, batches of up to 16) on 2.5 instead of
/// 10 Mbit/s links: fewer updates per second, and messages wait longer for their links.
#[test]
fn a_narrower_link_lowers_throughput_and_lengthens_the_queues() {
    let at = |mbps| {
        let (report, _) = run(flat_wan_config(1, 5, 4, LinkModel::symmetric(50, mbps), 8, 5, 16));
        assert_converged_in_view_zero(&report);
        (report.wan_load.clone().expect("measured"), report.wan_links.expect("counted"))
    };
    let ((wide, wide_links), (narrow, narrow_links)) = (at(10.0), at(2.5));
    println!(
        "10 Mbit/s: {:.1} updates/s, queueing {} µs; 2.5 Mbit/s: {:.1} updates/s, queueing {} µs",
        wide.updates_per_sec(),
        wide_links.queueing_us,
        narrow.updates_per_sec(),
        narrow_links.queueing_us
    );
    assert!(narrow.updates_per_sec() < 0.9 * wide.updates_per_sec());
    assert!(narrow.latency_ms(50.0) > wide.latency_ms(50.0));
    assert!(narrow_links.queueing_us > 4 * wide_links.queueing_us);
    assert!(narrow_links.queueing_max_us > wide_links.queueing_max_us);
}

/// With the development machine's CPU costs a WAN run still converges, and every replica
/// spent at least one request verification per update (the primary checks each request
/// as it arrives, the backups inside the pre-prepares). On 50 ms links those costs vanish
/// in the noise of batching, so the span is compared where cryptography is on the critical
/// path: on 1 ms links the same seed takes clearly longer with the CPU modelled.
#[test]
fn a_modelled_cpu_converges_and_lengthens_a_run_where_cryptography_is_on_the_critical_path() {
    let costs = CpuCosts::development_machine();
    let mut config = flat_wan_config(2, 5, 4, LinkModel::symmetric(50, 10.0), 3, 10, 16);
    config.cpu = Some(costs);
    let (report, _) = run(config);
    assert_converged_in_view_zero(&report);
    let updates = report.wan_load.as_ref().expect("measured").updates;
    assert_eq!(report.cpu_busy_us.len(), 20);
    for (replica, busy_us) in &report.cpu_busy_us {
        assert!(*busy_us >= updates * costs.ed25519_verify_us, "{replica} busy {busy_us} µs for {updates} updates");
    }
    let span_us = |cpu| {
        let mut config = flat_wan_config(2, 5, 4, LinkModel::symmetric(1, 1_000.0), 3, 10, 16);
        config.cpu = cpu;
        let (report, _) = run(config);
        assert_converged_in_view_zero(&report);
        report.wan_load.expect("measured").span_us
    };
    let (free, charged) = (span_us(None), span_us(Some(costs)));
    assert!(charged as f64 > 1.05 * free as f64, "span {charged} µs with the CPU, {free} µs without");
}

/// The same seed gives the same run over a WAN whose links draw from the seed (jitter,
/// loss, duplication): the same trace, the same figures; another seed another trace. And
/// the run converges despite the losses, by retransmission.
#[test]
fn a_seed_names_a_run_over_the_wan() {
    let link =
        LinkModel { latency_us: 50_000, jitter_us: 5_000, loss: 0.01, duplicate: 0.01, bandwidth_bps: 10_000_000 };
    let go = |seed| {
        let (report, _) = run(flat_wan_config(seed, 5, 4, link, 2, 5, 16));
        common::assert_safe_and_converged(&report);
        report
    };
    let (first, again, other) = (go(3), go(3), go(4));
    assert_eq!(first.trace, again.trace);
    assert_eq!(first.wan_load, again.wan_load);
    assert_eq!(first.wan_by_kind, again.wan_by_kind);
    assert_ne!(first.trace, other.trace);
    let links = first.wan_links.expect("counted");
    assert!(links.lost > 0 && links.duplicated > 0, "the links' faults happened: {links:?}");
}

/// The LAN's faults stay off the WAN: with every LAN message lost, five sites of one
/// replica each still order every request, because all replica traffic crosses sites and
/// clients reach the replicas of the other sites over the WAN (a client's request to a
/// replica at its own site is lost, and gets through when the client broadcasts it).
#[test]
fn lan_faults_stay_off_the_wan_links() {
    let mut config = SimConfig::new(5, 5);
    config.clients = 5;
    config.requests_per_client = 3;
    config.client_concurrency = 1;
    config.network.drop_rate = 1.0;
    config.wan = Some(WanPlacement::sites(&config.ids(), 5, Wan::uniform(LinkModel::symmetric(20, 10.0))));
    let (report, _) = run(config);
    common::assert_safe_and_converged(&report);
    let load = report.wan_load.expect("measured");
    assert_eq!(load.updates, 15);
    // Replies from the other four sites only: each crossed the WAN.
    assert_eq!(report.wan_by_kind["reply"].0, 15 * 4, "{:?}", report.wan_by_kind);
}
