//! `bulwark sim --sites S`: the multi-site Steward simulator over many seeds (drawn WAN and
//! LAN faults, Byzantine replicas in every site, and unless `--no-view-change-faults`
//! representatives crashing or Byzantine, sites and leader sites cut off, replicas crashing
//! and coming back from their records), ending with a
//! verdict and the command that replays a failing seed; and with `--figures`, Steward
//! against flat PBFT on the same simulated WAN.

use bulwark_crypto::threshold::Simulated;
use bulwark_examples::kv::{KvOp, KvStore};
use bulwark_framework::sim::flat_wan_config;
use bulwark_framework::sim::sites::campaign::{SitesCampaign, REAL_CRYPTO_EVERY};
use bulwark_framework::sim::sites::{SitesConfig, SitesSimulation};
use bulwark_framework::sim::wan::{CpuCosts, LinkModel, WanLoad};
use bulwark_framework::sim::Simulation;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// What `bulwark sim --sites` is asked for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SitesArgs {
    pub sites: usize,
    pub replicas_per_site: usize,
    pub byzantine_per_site: Option<usize>,
    pub view_change_faults: bool,
    pub first_seed: u64,
    pub seeds: u64,
}

fn append(rng: &mut ChaCha8Rng, client: usize, index: u64) -> KvOp {
    KvOp::Append { key: format!("k{}", rng.gen_range(0..8)), value: vec![client as u8, (index % 251) as u8] }
}

/// Runs the campaign; returns whether every seed was safe.
pub(crate) fn campaign(args: SitesArgs) -> anyhow::Result<bool> {
    if args.sites < 2 || args.replicas_per_site < 4 {
        anyhow::bail!("--sites needs at least 2 sites of at least 4 replicas (--replicas-per-site)");
    }
    let f = (args.replicas_per_site - 1) / 3;
    let byzantine = args.byzantine_per_site.unwrap_or(f);
    let mut campaign = SitesCampaign::new(args.sites, args.replicas_per_site, byzantine);
    if args.view_change_faults {
        campaign = campaign.with_view_change_faults();
    }
    let faults = if args.view_change_faults {
        ", representatives crashing or Byzantine, one seed in two a site cut off for 0.3-1.5 s, \
         one in three the leader site cut off for 3.5-5 s, replicas crashing and restarting"
    } else {
        ""
    };
    let colluding = if campaign.colluders > 0 {
        format!(", the leader site's representative and {} accomplices colluding (beyond f)", campaign.colluders - 1)
    } else {
        String::new()
    };
    println!(
        "Steward: {} sites of {} (f = {f}), {byzantine} Byzantine per site{faults}{colluding}; seeds {}..={}; \
         every {REAL_CRYPTO_EVERY}th seed with BLS12-381",
        args.sites,
        args.replicas_per_site,
        args.first_seed,
        args.first_seed + args.seeds.saturating_sub(1)
    );
    let (mut unsafe_seeds, mut stuck, mut violations) = (Vec::new(), Vec::new(), 0);
    let (mut updates, mut blamed, mut changes, mut cut, mut cut_losses) = (0, 0, 0, 0, 0);
    let (mut leader_changes, mut settle_us, mut restarts) = (0, 0, 0);
    for seed in args.first_seed..args.first_seed.saturating_add(args.seeds) {
        let report = campaign.run(seed, KvStore::new, append);
        updates += report.updates_completed;
        blamed += report.blamed;
        changes += report.representative_changes();
        leader_changes += report.leader_site_changes();
        restarts += report.restarts;
        let config = campaign.config(seed);
        let settled_at = config.faults_until.map_or(0, |at| at.0);
        settle_us = settle_us.max((report.simulated_time.as_micros() as u64).saturating_sub(settled_at));
        let cuts = config.cuts;
        cut += u64::from(!cuts.is_empty());
        cut_losses += report.cut_losses;
        let failed = if !report.violations.is_empty() {
            violations += report.violations.len();
            unsafe_seeds.push(seed);
            true
        } else if !report.converged() {
            stuck.push(seed);
            true
        } else {
            false
        };
        if failed {
            println!("{report}");
            for cut in cuts {
                println!("  {} cut off from {:?} until {:?}", cut.site, cut.from, cut.until);
            }
        }
    }
    let partitioned = if args.view_change_faults {
        format!(
            ", {cut} seeds with a site cut off ({cut_losses} WAN messages lost to cuts), {leader_changes} leader sites replaced, \
             {restarts} replicas restarted from their records"
        )
    } else {
        String::new()
    };
    println!(
        "{} seeds, {updates} updates completed, {blamed} bad shares blamed, {changes} representatives replaced{partitioned}",
        args.seeds
    );
    println!("longest run after the network settled: {:.1} s", settle_us as f64 / 1e6);
    if let Some(seed) = stuck.first() {
        println!("not live: {} seeds; replay the first with `{}`", stuck.len(), campaign.replay_command(*seed));
    }
    match unsafe_seeds.first() {
        None => {
            println!("violations: 0");
            Ok(true)
        }
        Some(seed) => {
            println!(
                "violations: {violations} (first at seed {seed}); replay with `{}`",
                campaign.replay_command(*seed)
            );
            Ok(false)
        }
    }
}

/// The workload of the figures: 200-byte values.
fn put(rng: &mut ChaCha8Rng, client: usize, index: u64) -> KvOp {
    let mut value = vec![0u8; 200];
    rng.fill(&mut value[..]);
    KvOp::Put { key: format!("c{client}-{}", index % 16), value }
}

/// One row of the figures.
struct Row {
    mbps: f64,
    steward: WanLoad,
    pbft: WanLoad,
    /// WAN bytes per update by message kind.
    steward_kinds: Vec<(&'static str, f64)>,
    pbft_kinds: Vec<(&'static str, f64)>,
}

/// WAN bytes per update of each kind, largest first.
fn per_update(kinds: &BTreeMap<&'static str, (u64, u64)>, updates: u64) -> Vec<(&'static str, f64)> {
    let mut kinds: Vec<(&'static str, f64)> =
        kinds.iter().map(|(kind, (_, bytes))| (*kind, *bytes as f64 / updates.max(1) as f64)).collect();
    kinds.sort_by(|a, b| b.1.total_cmp(&a.1));
    kinds
}

/// Steward and flat PBFT on the same seed, sites, clients, batching and WAN model, with
/// simulated CPU cost for every signature.
pub(crate) fn figures(
    sites: usize,
    replicas_per_site: usize,
    clients_per_site: usize,
    updates: u64,
) -> anyhow::Result<()> {
    let batch_size_max = 16;
    let mut rows = Vec::new();
    for mbps in [10.0, 5.0, 2.5] {
        let link = LinkModel::symmetric(50, mbps);
        let mut steward = SitesConfig::new(1, sites, replicas_per_site);
        steward.wan = link;
        steward.clients_per_site = clients_per_site;
        steward.updates_per_client = updates;
        steward.site_params.batch_size_max = batch_size_max;
        steward.site_params.batch_delay_us = 1_000;
        steward.params.checkpoint_interval = 64;
        steward.params.client_retransmit_us = 3_000_000;
        steward.cpu = Some(CpuCosts::development_machine());
        let steward = SitesSimulation::<KvStore, Simulated>::new(steward, KvStore::new, put)?.run();
        if !steward.violations.is_empty() || !steward.converged() {
            anyhow::bail!("the Steward run did not converge: {steward}");
        }
        let mut pbft = flat_wan_config(1, sites, replicas_per_site, link, clients_per_site, updates, batch_size_max);
        pbft.cpu = Some(CpuCosts::development_machine());
        let pbft = Simulation::new(pbft, KvStore::new, put)?.run();
        if !pbft.violations.is_empty() || !pbft.converged() {
            anyhow::bail!("the flat PBFT run did not converge: {pbft}");
        }
        let pbft_kinds = per_update(&pbft.wan_by_kind, pbft.requests_completed);
        let pbft = pbft.wan_load.expect("a placement measures its load");
        let steward_kinds = per_update(&steward.wan_by_kind, steward.load.updates);
        rows.push(Row { mbps, steward: steward.load, pbft, steward_kinds, pbft_kinds });
    }
    println!(
        "{sites} sites x {replicas_per_site} replicas, symmetric 50 ms links, 200-byte updates, {} clients \
         ({clients_per_site} per site, one update outstanding each), batches of up to {batch_size_max}, \
         simulated CPU cost per signature (STEWARD.md §12)",
        sites * clients_per_site
    );
    println!(
        "{:>6} | {:>10} {:>8} {:>8} {:>9} {:>10} | {:>10} {:>8} {:>8} {:>9} {:>10} | {:>6}",
        "Mbit/s",
        "steward/s",
        "p50 ms",
        "p99 ms",
        "wan msg/u",
        "wan B/u",
        "pbft/s",
        "p50 ms",
        "p99 ms",
        "wan msg/u",
        "wan B/u",
        "ratio"
    );
    for Row { mbps, steward, pbft, .. } in &rows {
        println!(
            "{mbps:>6} | {:>10.1} {:>8.0} {:>8.0} {:>9.1} {:>10.0} | {:>10.1} {:>8.0} {:>8.0} {:>9.1} {:>10.0} | {:>5.1}x",
            steward.updates_per_sec(),
            steward.latency_ms(50.0),
            steward.latency_ms(99.0),
            steward.wan_messages_per_update(),
            steward.wan_bytes_per_update(),
            pbft.updates_per_sec(),
            pbft.latency_ms(50.0),
            pbft.latency_ms(99.0),
            pbft.wan_messages_per_update(),
            pbft.wan_bytes_per_update(),
            steward.updates_per_sec() / pbft.updates_per_sec().max(f64::MIN_POSITIVE),
        );
    }
    let show = |kinds: &[(&str, f64)]| kinds.iter().map(|(k, b)| format!("{k} {b:.0}")).collect::<Vec<_>>().join(", ");
    for Row { mbps, steward_kinds, pbft_kinds, .. } in &rows {
        println!("WAN bytes per update at {mbps} Mbit/s: steward {}", show(steward_kinds));
        println!("{:>33} pbft {}", "", show(pbft_kinds));
    }
    Ok(())
}
