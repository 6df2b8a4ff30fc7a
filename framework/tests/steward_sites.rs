//! The multi-site simulator running Steward sites (docs/STEWARD.md §3, §10): whole runs,
//! each checked by the GI1–GI5 checker after every step.

mod steward_world;

use steward_world::{assert_safe_and_converged, kv_operation, run_sites, seeds};

use bulwark_crypto::threshold::Simulated;
use bulwark_framework::sim::sites::campaign::{SitesCampaign, REAL_CRYPTO_EVERY};
use bulwark_framework::sim::sites::SitesConfig;
use bulwark_services::kv::KvStore;
use rand::{Rng, SeedableRng};

/// W1–W7 end to end: 5 sites of 4 replicas, clients at every site; every correct replica of
/// every site executes the same history and every update completes.
#[test]
fn five_sites_of_four_execute_one_global_history() {
    let report = run_sites::<Simulated>(SitesConfig::new(1, 5, 4));
    assert_safe_and_converged(&report);
    println!("{report}");
}

/// W8: per update batch, `S − 1` PROPOSALs and `(S − 1)²` ACCEPTs cross the WAN, plus one
/// forwarded UPDATE per update whose client is not at the leader site. One update per
/// batch and a lossless network, so every count is exact; checkpoints (SK1) are counted
/// apart.
#[test]
fn w8_wan_messages_per_batch_are_s_minus_one_plus_its_square_plus_a_forwarded_update() {
    let mut config = SitesConfig::new(3, 5, 4);
    config.site_params.batch_size_max = 1;
    config.site_params.batch_delay_us = 0;
    // No retransmission can happen: nothing is lost, and the status timer never finds a
    // replica stuck within its interval.
    config.site_params.status_interval_us = 60_000_000;
    config.time_limit = std::time::Duration::from_secs(5);
    let report = run_sites::<Simulated>(config.clone());
    assert_safe_and_converged(&report);
    let s = config.sites as u64;
    let batches = report.batches();
    assert_eq!(batches, report.updates_completed, "one update per batch");
    let remote_updates = report.updates_completed * (s - 1) / s;
    assert_eq!(report.wan_messages("Proposal"), (s - 1) * batches);
    assert_eq!(report.wan_messages("Accept"), (s - 1) * (s - 1) * batches);
    assert_eq!(report.wan_messages("Update"), remote_updates, "each remote update forwarded once");
    let checkpoints = report.wan_messages("Checkpoint");
    assert_eq!(checkpoints, s * (s - 1) * (batches / config.params.checkpoint_interval));
    let others: u64 = report
        .wan_by_kind
        .iter()
        .filter(|(kind, _)| !["Proposal", "Accept", "Update", "Checkpoint"].contains(kind))
        .map(|(_, (messages, _))| messages)
        .sum();
    assert_eq!(others, 0, "nothing else crossed the WAN: {:?}", report.wan_by_kind);
    let per_batch = (report.load.wan_messages - checkpoints) as f64 / batches as f64;
    let expected = ((s - 1) + (s - 1) * (s - 1)) as f64 + remote_updates as f64 / batches as f64;
    assert!((per_batch - expected).abs() < 1e-9, "{per_batch} WAN messages per batch, expected {expected}");
}

/// Same seed, same run: the trace digest of every delivered event is equal, and another
/// seed gives another trace.
#[test]
fn a_seed_names_a_multi_site_run() {
    let campaign = SitesCampaign::new(3, 4, 1);
    let first = campaign.run(7, KvStore::new, kv_operation);
    let again = campaign.run(7, KvStore::new, kv_operation);
    let other = campaign.run(8, KvStore::new, kv_operation);
    assert_eq!(first.trace, again.trace);
    assert_eq!(first.final_states, again.final_states);
    assert_ne!(first.trace, other.trace);
}

/// The campaign of the Steward issue: 200 seeds of 5 sites of 4 replicas with WAN loss,
/// duplication and jitter (reordering), LAN loss and duplication, and in every site one
/// Byzantine replica that is not the representative (bad shares, shares of conflicting
/// payloads, silence, equivocating votes, replays). Zero violations of GI1–GI5; once the
/// network settles (3 s) every update completes and every correct replica of every site
/// ends in one state. Bad shares are blamed (TS3) and the sites still sign. Every 20th seed
/// runs BLS12-381 rather than the stand-in.
#[test]
fn campaign_five_sites_with_byzantine_non_representatives_stays_safe_and_live() {
    let campaign = SitesCampaign::new(5, 4, 1);
    let (mut blamed, mut attacks, mut real) = (0, 0, 0);
    for seed in seeds(0, 200) {
        let report = campaign.run(seed, KvStore::new, kv_operation);
        let replay = campaign.replay_command(seed);
        assert!(report.violations.is_empty(), "{report}\nreplay: {replay}");
        assert!(report.converged(), "{report}\nwaiting: {:#?}\nreplay: {replay}", report.waiting);
        blamed += report.blamed;
        attacks += report.byzantine_sent.values().filter(|sent| **sent > 0).count();
        real += u64::from(seed.is_multiple_of(REAL_CRYPTO_EVERY));
    }
    if std::env::var("BULWARK_SEED").is_err() {
        assert!(blamed > 0, "no bad share was ever blamed: the attack did not happen");
        assert!(attacks > 200, "Byzantine replicas sent nothing");
        assert_eq!(real, 10, "every 20th seed runs BLS");
    }
}

/// GI-N: with `f + 1 = 2` colluders at the leader site (its representative equivocates, an
/// accomplice prepares and shares both batches) the site signs two PROPOSALs for one
/// sequence number, and the checker reports it (GI2) on some seed; with `f = 1` (the
/// representative alone) it reports nothing on the same seeds.
#[test]
fn gi_n_f_plus_one_colluders_break_the_checker_and_f_do_not() {
    let mut caught = Vec::new();
    for seed in seeds(0, 12) {
        let beyond = SitesCampaign::new(5, 4, 1).with_colluders(2);
        let within = SitesCampaign::new(5, 4, 1).with_colluders(1);
        let run = |campaign: SitesCampaign| {
            let mut config = campaign.config(seed);
            config.time_limit = std::time::Duration::from_secs(10);
            run_sites::<Simulated>(config)
        };
        let report = run(within);
        assert!(report.violations.is_empty(), "f colluders broke safety: {report}");
        let report = run(beyond);
        if report.violations.iter().any(|v| v.invariant == "GI2") {
            caught.push(seed);
        }
    }
    if std::env::var("BULWARK_SEED").is_err() {
        assert!(!caught.is_empty(), "f + 1 colluders never made the checker fail");
    }
}

/// The campaign with larger sites: 3 sites of 7 replicas (`f = 2`), two Byzantine
/// non-representatives in every site: zero violations, every update completes.
#[test]
fn campaign_three_sites_of_seven_with_two_byzantine_each_stays_safe_and_live() {
    let campaign = SitesCampaign::new(3, 7, 2);
    for seed in seeds(1_000, 20) {
        let report = campaign.run(seed, KvStore::new, kv_operation);
        let replay = campaign.replay_command(seed);
        assert!(report.violations.is_empty(), "{report}\nreplay: {replay}");
        assert!(report.converged(), "{report}\nwaiting: {:#?}\nreplay: {replay}", report.waiting);
        assert_eq!(report.byzantine_sent.len(), 6, "two Byzantine replicas per site");
    }
}

/// LV1, LV4: the representative of a non-leader site crashes at 0.3 s. Its site's replicas,
/// waiting for updates they handed it, time out after `T1` (1 s with `K` = 12 s and
/// `f = 1`), sign NEW-REP for local view 1 and send it to every site; every correct
/// replica of every site preinstalls it, the leader site sends to the new representative,
/// and every update of every site's clients completes. No other site changes
/// representative.
#[test]
fn lv1_a_crashed_non_leader_representative_is_replaced_and_ordering_continues() {
    use bulwark_framework::ids::{Instant, PeerId, ReplicaId};
    let site = SitesConfig::site(2);
    let mut config = SitesConfig::new(5, 5, 4);
    config.updates_per_client = 20;
    config.crashes = vec![(PeerId::new(site, ReplicaId(0)), Instant::from_micros(300_000))];

    let report = run_sites::<Simulated>(config);
    assert_safe_and_converged(&report);
    assert_eq!(report.local_views.len(), 19, "every live replica reports");
    for (replica, views) in &report.local_views {
        for (other, lv) in views {
            let expected = u64::from(*other == site);
            assert_eq!(*lv, expected, "{replica} sees {other} in local view {lv}");
        }
    }
    // The crash, then T1 without progress at that site, then a few round trips.
    assert!(report.simulated_time < std::time::Duration::from_secs(6), "{report}");
}

/// W4, W5, LV1: the representative of a non-leader site is Byzantine. Dropping everything
/// it should relay and send, it is replaced (its site preinstalls local view 1 or later);
/// altering PROPOSALs and ACCEPTs, it is refused (BatchMismatch, BadSiteSignature);
/// replaying them, each is taken once; delaying them, it only slows its site. Every run is safe and every update completes, over
/// three seeds each.
#[test]
fn a_byzantine_non_leader_representative_is_refused_or_replaced() {
    use bulwark_framework::ids::{PeerId, ReplicaId};
    use bulwark_framework::sim::sites::byzantine::SiteStrategy;
    let site = SitesConfig::site(2);
    for strategy in SiteStrategy::representative() {
        for seed in seeds(40, 3) {
            let mut config = SitesConfig::new(seed, 5, 4);
            config.updates_per_client = 12;
            config.byzantine = vec![(PeerId::new(site, ReplicaId(0)), strategy)];
            let report = run_sites::<Simulated>(config);
            assert_safe_and_converged(&report);
            assert!(report.byzantine_sent.values().all(|sent| *sent > 0), "{strategy:?} sent nothing");
            let replaced = report.local_views.values().all(|views| views[&site] >= 1);
            match strategy {
                SiteStrategy::DroppingRepresentative => assert!(replaced, "{strategy:?}: {:?}", report.local_views),
                SiteStrategy::AlteringRepresentative => {
                    let refused = report.refusals.get("BatchMismatch").copied().unwrap_or(0)
                        + report.refusals.get("BadSiteSignature").copied().unwrap_or(0);
                    assert!(refused > 0, "nothing altered was refused: {:?}", report.refusals);
                }
                _ => {}
            }
        }
    }
}

/// LV1–LV3: the leader site's representative crashes while updates are being ordered,
/// some after their prepare certificates formed. The others replace it (local view 1 or
/// later at the leader site, seen by every site), the new representative rebuilds the
/// bindings and proposes them again: the checker sees no two PROPOSALs binding different
/// batches to one `(gv, seq)` (GI2), and every update completes, over four seeds with
/// crash times drawn between 100 ms and 1 s.
#[test]
fn lv2_a_crashed_leader_representative_is_replaced_and_what_it_bound_is_proposed_again() {
    use bulwark_framework::ids::{Instant, PeerId, ReplicaId};
    let leader = SitesConfig::site(0);
    for seed in seeds(60, 4) {
        let mut config = SitesConfig::new(seed, 5, 4);
        config.updates_per_client = 20;
        let at = rand_chacha::ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9)).gen_range(100_000..1_000_000);
        config.crashes = vec![(PeerId::new(leader, ReplicaId(0)), Instant::from_micros(at))];
        let report = run_sites::<Simulated>(config);
        assert_safe_and_converged(&report);
        for (replica, views) in &report.local_views {
            assert!(views[&leader] >= 1, "seed {seed}: {replica} still sees the crashed representative");
        }
        // The crash, `T2` (3 s) without progress, then the new representative's rounds.
        assert!(report.simulated_time < std::time::Duration::from_secs(12), "seed {seed}: {report}");
    }
}

/// W2, W3, LV1–LV3: the leader site's representative is Byzantine. Pre-prepares that
/// conflict (a different batch for each member) form no certificate; dropping, altering,
/// replaying or delaying what it should send to the other sites stalls, is refused or only
/// slows ordering. Each time the site replaces it (every correct replica sees the leader
/// site in local view 1 or later) or the system is unharmed, every run is safe, and every
/// update completes, over two seeds per strategy.
#[test]
fn a_byzantine_leader_representative_is_replaced_and_ordering_continues() {
    use bulwark_framework::ids::{PeerId, ReplicaId};
    use bulwark_framework::sim::sites::byzantine::SiteStrategy;
    let leader = SitesConfig::site(0);
    for strategy in SiteStrategy::leader_representative() {
        for seed in seeds(70, 2) {
            let mut config = SitesConfig::new(seed, 5, 4);
            config.updates_per_client = 12;
            config.byzantine = vec![(PeerId::new(leader, ReplicaId(0)), strategy)];
            let report = run_sites::<Simulated>(config);
            assert_safe_and_converged(&report);
            assert!(report.byzantine_sent.values().all(|sent| *sent > 0), "{strategy:?} sent nothing");
            let replaced = report.local_views.values().all(|views| views[&leader] >= 1);
            let harmless = [SiteStrategy::ReplayingRepresentative, SiteStrategy::DelayingRepresentative];
            if !harmless.contains(&strategy) {
                assert!(replaced, "{strategy:?}, seed {seed}: {:?}", report.local_views);
            }
        }
    }
}

/// GV1–GV6, RS1: the leader site is cut off from every other site from 0.5 s to 5.5 s,
/// longer than `Global_T` (K = 3 s), while the representative of site 2 drops everything it
/// should send to other sites. The other four sites preinstall global view 1 (site 2's
/// GLOBAL-VC reaches them through its other replicas, RS1), site 2 leads, and once the cut
/// heals the old leader site learns the new view: safe, every update completes, every
/// correct replica ends in global view 1 or later, over three seeds.
#[test]
fn gv_a_leader_site_cut_off_is_replaced_even_with_a_dropping_representative_elsewhere() {
    use bulwark_framework::ids::{Instant, PeerId, ReplicaId};
    use bulwark_framework::sim::sites::byzantine::SiteStrategy;
    use bulwark_framework::sim::sites::SiteCut;
    for seed in seeds(90, 3) {
        let mut config = SitesConfig::new(seed, 5, 4);
        config.updates_per_client = 15;
        config.site_params.global_timeout_base_us = 3_000_000;
        let (from, until) = (Instant::from_micros(500_000), Instant::from_micros(5_500_000));
        config.cuts = vec![SiteCut { site: SitesConfig::site(0), from, until }];
        config.byzantine =
            vec![(PeerId::new(SitesConfig::site(1), ReplicaId(0)), SiteStrategy::DroppingRepresentative)];
        let report = run_sites::<Simulated>(config);
        assert_safe_and_converged(&report);
        assert!(report.global_views.values().all(|gv| *gv >= 1), "seed {seed}: {:?}", report.global_views);
        assert!(report.simulated_time < std::time::Duration::from_secs(20), "seed {seed}: {report}");
    }
}

/// Once the network settles, every update completes within this (the longest measured over
/// 450 seeds of `bulwark sim --sites` was under 10 s).
const SETTLED_WITHIN: std::time::Duration = std::time::Duration::from_secs(20);

/// Runs `count` seeds from `first` of `campaign` with every view-change fault: zero
/// violations, every update completes within [`SETTLED_WITHIN`] of the network settling with
/// every correct replica at one state; returns (representatives replaced, leader sites
/// replaced, seeds with a cut, replicas restarted).
fn view_change_campaign(campaign: SitesCampaign, first: u64, count: u64) -> (u64, u64, u64, u64) {
    let campaign = campaign.with_view_change_faults();
    let (mut representatives, mut leaders, mut cut, mut restarts) = (0, 0, 0, 0);
    for seed in seeds(first, count) {
        let config = campaign.config(seed);
        let report = campaign.run(seed, KvStore::new, kv_operation);
        let replay = campaign.replay_command(seed);
        assert!(report.violations.is_empty(), "{report}\ncuts {:?}\nreplay: {replay}", config.cuts);
        assert!(
            report.converged(),
            "{report}\ncuts {:?}\nwaiting: {:#?}\nreplay: {replay}",
            config.cuts,
            report.waiting
        );
        let settled = std::time::Duration::from_micros(config.faults_until.map_or(0, |at| at.0));
        assert!(report.simulated_time <= settled + SETTLED_WITHIN, "{report}\nreplay: {replay}");
        representatives += report.representative_changes();
        leaders += report.leader_site_changes();
        cut += u64::from(!config.cuts.is_empty());
        restarts += report.restarts;
    }
    (representatives, leaders, cut, restarts)
}

/// The view-change campaign (LV1–LV4, GV1–GV6, RS1, with the faults of the 200-seed
/// campaign): 250 seeds of 5 sites of 4. Besides WAN and LAN loss, duplication and jitter and
/// up to `f` Byzantine replicas per site: each site's representative crashes or is
/// Byzantine (dropping, altering, replaying, delaying; the leader site's also pre-preparing
/// conflicting batches) on two seeds in three; one seed in two cuts a site off for
/// 0.3–1.5 s; one seed in three cuts the leader site off for 3.5–5 s, longer than
/// `Global_T` (K = 3 s), so that it is replaced. Crash and restart (GI5 across restarts):
/// a crashed representative comes back from its records on one seed in two, and one seed in
/// two also crashes a correct replica and brings it back. Leader sites and representatives
/// are replaced, and replicas restarted, on many seeds.
#[test]
fn campaign_with_view_change_faults_five_sites_of_four() {
    let (representatives, leaders, cut, restarts) = view_change_campaign(SitesCampaign::new(5, 4, 1), 3_000, 250);
    if std::env::var("BULWARK_SEED").is_err() {
        let counts = format!("{representatives} {leaders} {cut} {restarts}");
        assert!(representatives >= 250 && leaders >= 40 && cut >= 100 && restarts >= 150, "{counts}");
    }
}

/// The view-change campaign on 200 seeds of 3 sites of 4 (a majority is 2 sites).
#[test]
fn campaign_with_view_change_faults_three_sites_of_four() {
    let (representatives, leaders, cut, restarts) = view_change_campaign(SitesCampaign::new(3, 4, 1), 4_000, 200);
    if std::env::var("BULWARK_SEED").is_err() {
        let counts = format!("{representatives} {leaders} {cut} {restarts}");
        assert!(representatives >= 200 && leaders >= 30 && cut >= 80 && restarts >= 80, "{counts}");
    }
}

/// The view-change campaign on 50 seeds of 3 sites of 7 (`f = 2`, two Byzantine replicas
/// per site).
#[test]
fn campaign_with_view_change_faults_three_sites_of_seven() {
    let (representatives, leaders, cut, restarts) = view_change_campaign(SitesCampaign::new(3, 7, 2), 5_000, 50);
    if std::env::var("BULWARK_SEED").is_err() {
        let counts = format!("{representatives} {leaders} {cut} {restarts}");
        assert!(representatives >= 50 && leaders >= 5 && cut >= 20 && restarts >= 20, "{counts}");
    }
}
