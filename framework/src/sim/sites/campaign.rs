//! The multi-site campaign: one configuration per seed, drawn from the seed alone, with WAN
//! loss, duplication and reordering (jitter), LAN loss and duplication, and up to `K`
//! Byzantine replicas per site; the same for the tests and `bulwark sim --sites`. With
//! [`SitesCampaign::with_partitions`] half the seeds also cut one site off from the others
//! for a while ([`SiteCut`]).
//!
//! With `K ≤ f` the Byzantine replicas are never representatives and follow the strategies
//! a site must survive ([`SiteStrategy::tolerated`]). With `K > f` the run is the negative
//! control GI-N: at the leader site the representative equivocates and `K − 1` accomplices
//! help it, so the site signs two PROPOSALs for one sequence number.
//!
//! Most seeds run the fast stand-in threshold scheme; every [`REAL_CRYPTO_EVERY`]th seed runs
//! BLS12-381 (blsttc), whose verdicts the stand-in matches (bulwark-crypto's tests).

use super::byzantine::SiteStrategy;
use super::{SiteCut, SitesConfig, SitesReport, SitesSimulation};
use crate::ids::{Instant, PeerId, ReplicaId};
use crate::service::Service;
use crate::sim::wan::LinkModel;
use bulwark_crypto::threshold::{Bls, Simulated};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Duration;

/// Seeds divisible by this run the real BLS scheme.
pub const REAL_CRYPTO_EVERY: u64 = 20;

/// When the network of every seed settles: no loss, duplication or cut after it.
const FAULTS_UNTIL_US: u64 = 3_000_000;

/// The shape of a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SitesCampaign {
    pub sites: usize,
    pub replicas_per_site: usize,
    /// Byzantine replicas in each site (at most `f` of them are drawn; more make the
    /// leader site collude, see [`SitesCampaign::colluders`]).
    pub byzantine_per_site: usize,
    /// GI-N: the leader site's representative equivocates and this many replicas of its
    /// site, itself included, collude (0: none).
    pub colluders: usize,
    /// Representatives fail too: in each site, one seed in three crashes the representative
    /// and one in three makes it Byzantine (at a non-leader site dropping, altering, delaying or
    /// replaying; at the leader site also pre-preparing conflicting batches); that site then
    /// has no other faulty replica. Replaced by LV1 (and LV2, LV3 at the leader site).
    pub representative_faults: bool,
    /// Partitions: one seed in two cuts one site (any, the leader site included) off from
    /// every other site, from a time in 200 ms..1.5 s for 300 ms..1.5 s, healed before the
    /// network settles (3 s).
    pub partitions: bool,
    /// Leader sites replaced: `K` (TM3) is 3 s, and one seed in three cuts the leader site
    /// off from a time in 0.3..1 s for 3.5..5 s, longer than `Global_T`; the network then
    /// settles when the cut heals (GV1–GV6).
    pub leader_cuts: bool,
    /// Crash and restart (GI5 across restarts): a crashed representative comes back on one
    /// seed in two, 0.2..1.5 s later; and one seed in two also crashes a correct replica
    /// of a site without a crashed representative, at 0.3..1.5 s, and brings it back
    /// 0.2..1.5 s later. Both come back from what they persisted, and each crash is torn
    /// (in the middle of a step, see [`SitesConfig::torn_crashes`]).
    pub restarts: bool,
    pub clients_per_site: usize,
    pub updates_per_client: u64,
}

impl SitesCampaign {
    pub fn new(sites: usize, replicas_per_site: usize, byzantine_per_site: usize) -> Self {
        let f = (replicas_per_site - 1) / 3;
        let colluders = if byzantine_per_site > f { byzantine_per_site } else { 0 };
        SitesCampaign {
            sites,
            replicas_per_site,
            byzantine_per_site,
            colluders,
            representative_faults: false,
            partitions: false,
            leader_cuts: false,
            restarts: false,
            clients_per_site: 2,
            updates_per_client: 6,
        }
    }

    /// The configuration of `seed`: network faults until 3 s, then a settled network.
    pub fn config(&self, seed: u64) -> SitesConfig {
        let mut draw = ChaCha8Rng::seed_from_u64(seed ^ 0x5173_5eed);
        let mut config = SitesConfig::new(seed, self.sites, self.replicas_per_site);
        config.clients_per_site = self.clients_per_site;
        config.updates_per_client = self.updates_per_client;
        config.site_params.batch_size_max = 4;
        config.site_params.status_interval_us = 150_000;
        config.wan = LinkModel {
            latency_us: draw.gen_range(10_000..=60_000),
            jitter_us: draw.gen_range(0..=20_000),
            loss: draw.gen_range(0.0..0.05),
            duplicate: draw.gen_range(0.0..0.05),
            bandwidth_bps: [0, 10_000_000, 2_500_000][draw.gen_range(0..3)],
        };
        config.lan_drop = draw.gen_range(0.0..0.03);
        config.lan_duplicate = draw.gen_range(0.0..0.03);
        config.faults_until = Some(Instant::from_micros(FAULTS_UNTIL_US));
        config.time_limit = Duration::from_secs(120);
        let f = (self.replicas_per_site - 1) / 3;
        for site in 0..self.sites {
            let cluster = SitesConfig::site(site);
            let colluding = self.colluders > 0 && site == 0;
            let mut others: Vec<u32> = (1..self.replicas_per_site as u32).collect();
            others.shuffle(&mut draw);
            if colluding {
                config.byzantine.push((PeerId::new(cluster, ReplicaId(0)), SiteStrategy::EquivocatingRepresentative));
                for id in 1..self.colluders as u32 {
                    config.byzantine.push((PeerId::new(cluster, ReplicaId(id)), SiteStrategy::Accomplice));
                }
                continue;
            }
            if self.representative_faults && self.byzantine_per_site > 0 {
                let representative = PeerId::new(cluster, ReplicaId(0));
                match draw.gen_range(0..3) {
                    0 => {
                        let at = Instant::from_micros(draw.gen_range(200_000..2_000_000));
                        config.crashes.push((representative, at));
                        continue;
                    }
                    1 => {
                        let strategies = if site == 0 {
                            SiteStrategy::leader_representative().to_vec()
                        } else {
                            SiteStrategy::representative().to_vec()
                        };
                        let strategy = *strategies.choose(&mut draw).expect("strategies");
                        config.byzantine.push((representative, strategy));
                        continue;
                    }
                    _ => {}
                }
            }
            for id in others.into_iter().take(self.byzantine_per_site.min(f)) {
                let strategy = *SiteStrategy::tolerated().choose(&mut draw).expect("strategies");
                config.byzantine.push((PeerId::new(cluster, ReplicaId(id)), strategy));
            }
        }
        // Drawn last, so that the draws above are those of the same seed without partitions.
        if self.partitions && draw.gen_bool(0.5) {
            let site = SitesConfig::site(draw.gen_range(0..self.sites));
            let from = draw.gen_range(200_000..1_500_000);
            let until = (from + draw.gen_range(300_000..1_500_000)).min(FAULTS_UNTIL_US - 1);
            config.cuts.push(SiteCut { site, from: Instant::from_micros(from), until: Instant::from_micros(until) });
        }
        if self.leader_cuts {
            config.site_params.global_timeout_base_us = 3_000_000;
            if draw.gen_bool(1.0 / 3.0) {
                let from = draw.gen_range(300_000..1_000_000);
                let until = from + draw.gen_range(3_500_000..5_000_000);
                let (from, until) = (Instant::from_micros(from), Instant::from_micros(until));
                config.cuts.push(SiteCut { site: SitesConfig::site(0), from, until });
                config.faults_until = config.faults_until.max(Some(until));
            }
        }
        if self.restarts {
            self.draw_restarts(&mut draw, &mut config);
        }
        config
    }

    fn draw_restarts(&self, draw: &mut ChaCha8Rng, config: &mut SitesConfig) {
        config.torn_crashes = true;
        // The network settles once every crashed replica that comes back is back.
        let back = |draw: &mut ChaCha8Rng, config: &mut SitesConfig, replica: PeerId, at: Instant| {
            let back = Instant::from_micros(at.0 + draw.gen_range(200_000..1_500_000));
            config.restarts.push((replica, back));
            config.faults_until = config.faults_until.max(Some(back));
        };
        for (replica, at) in config.crashes.clone() {
            if draw.gen_bool(0.5) {
                back(draw, config, replica, at);
            }
        }
        if !draw.gen_bool(0.5) {
            return;
        }
        let crashed: Vec<_> = config.crashes.iter().map(|(peer, _)| peer.cluster).collect();
        let site = SitesConfig::site(draw.gen_range(0..self.sites));
        if crashed.contains(&site) {
            return;
        }
        let candidates: Vec<PeerId> = (1..self.replicas_per_site as u32)
            .map(|id| PeerId::new(site, ReplicaId(id)))
            .filter(|peer| config.byzantine.iter().all(|(byzantine, _)| byzantine != peer))
            .collect();
        let Some(replica) = candidates.choose(draw).copied() else { return };
        let at = Instant::from_micros(draw.gen_range(300_000..1_500_000));
        config.crashes.push((replica, at));
        back(draw, config, replica, at);
    }

    /// Runs `seed` with the stand-in scheme or (every [`REAL_CRYPTO_EVERY`]th seed) BLS.
    pub fn run<Svc: Service>(
        &self,
        seed: u64,
        make_service: impl Fn() -> Svc + 'static,
        make_operation: impl FnMut(&mut ChaCha8Rng, usize, u64) -> Svc::Op + 'static,
    ) -> SitesReport {
        let config = self.config(seed);
        let built = if seed.is_multiple_of(REAL_CRYPTO_EVERY) {
            SitesSimulation::<Svc, Bls>::new(config, make_service, make_operation).map(SitesSimulation::run)
        } else {
            SitesSimulation::<Svc, Simulated>::new(config, make_service, make_operation).map(SitesSimulation::run)
        };
        built.expect("campaign configurations are valid")
    }

    /// GI-N on the same seeds: `colluders` replicas of the leader site, its representative
    /// among them, collude; the other sites have up to `f` Byzantine replicas as usual.
    pub fn with_colluders(mut self, colluders: usize) -> Self {
        self.colluders = colluders;
        self
    }

    /// With representatives crashing or Byzantine too (LV1–LV3).
    pub fn with_representative_faults(mut self) -> Self {
        self.representative_faults = true;
        self
    }

    /// With partitions: one seed in two cuts one site off for a while.
    pub fn with_partitions(mut self) -> Self {
        self.partitions = true;
        self
    }

    /// With every view-change fault: representatives crashing or Byzantine, sites cut off
    /// for a while, and leader sites cut off long enough to be replaced. What `bulwark sim
    /// --sites` runs unless told `--no-view-change-faults`.
    pub fn with_view_change_faults(mut self) -> Self {
        self.representative_faults = true;
        self.partitions = true;
        self.leader_cuts = true;
        self.restarts = true;
        self
    }

    /// With replicas crashing and coming back from their records.
    pub fn with_restarts(mut self) -> Self {
        self.restarts = true;
        self
    }

    /// The command that replays `seed` of this campaign (`bulwark sim` runs either every
    /// view-change fault or none).
    pub fn replay_command(&self, seed: u64) -> String {
        let all = self.representative_faults && self.partitions && self.leader_cuts && self.restarts;
        let none = !(self.representative_faults || self.partitions || self.leader_cuts || self.restarts);
        let faults = match (all, none) {
            (true, _) => "",
            (_, true) => " --no-view-change-faults",
            _ => " (a test's subset of the view-change faults: replay with BULWARK_SEED)",
        };
        format!(
            "bulwark sim --sites {} --replicas-per-site {} --byzantine-per-site {} --first-seed {seed} --seeds 1{faults}",
            self.sites, self.replicas_per_site, self.byzantine_per_site
        )
    }
}
