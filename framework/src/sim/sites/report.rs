//! What a multi-site run produced, and its verdict.

use crate::ids::{PeerId, SeqNum};
use crate::sim::checker::Violation;
use crate::sim::wan::WanLoad;
use bulwark_crypto::Digest;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// What a multi-site run produced.
#[derive(Debug, Clone)]
pub struct SitesReport {
    pub seed: u64,
    pub violations: Vec<Violation>,
    pub checks: u64,
    pub updates_expected: u64,
    pub updates_completed: u64,
    /// Digest of every delivered event in order: equal seeds give equal traces.
    pub trace: Digest,
    /// Each correct replica's `aru` and state digest at the end.
    pub final_states: BTreeMap<PeerId, (SeqNum, Digest)>,
    pub stable_checkpoints: BTreeMap<PeerId, SeqNum>,
    /// Each correct replica's global view at the end (GV2).
    pub global_views: BTreeMap<PeerId, crate::steward::payload::GlobalView>,
    /// Each correct replica's view of every site's preinstalled local view.
    pub local_views: BTreeMap<PeerId, BTreeMap<crate::ids::ClusterId, crate::steward::payload::LocalView>>,
    /// Updates, latencies and WAN traffic.
    pub load: WanLoad,
    /// WAN messages and bytes by message kind.
    pub wan_by_kind: BTreeMap<&'static str, (u64, u64)>,
    /// Inputs correct replicas refused, by reason.
    pub refusals: BTreeMap<&'static str, u64>,
    /// Bad shares correct replicas blamed (TS3).
    pub blamed: u64,
    pub service_faults: u64,
    /// Messages each Byzantine replica sent: proof that an attack happened at all.
    pub byzantine_sent: BTreeMap<PeerId, u64>,
    pub simulated_time: Duration,
    pub events: u64,
    pub finished: bool,
    /// The most entries any correct replica held in its logs at once.
    pub peak_held: usize,
    /// WAN messages lost to [`SiteCut`](super::SiteCut)s (copies that would otherwise have
    /// arrived).
    pub cut_losses: u64,
    /// Crashed replicas that came back from their records.
    pub restarts: u64,
    /// The most entries any correct replica held in its records at once.
    pub peak_records: usize,
    /// For a run that did not finish: what each correct replica waits for.
    pub waiting: BTreeMap<PeerId, String>,
}

impl SitesReport {
    /// Every update completed and every correct replica of every site holds one state.
    pub fn converged(&self) -> bool {
        let mut states = self.final_states.values();
        let first = states.next();
        self.updates_completed == self.updates_expected && states.all(|s| Some(s) == first)
    }

    /// The batches the correct replicas executed (the highest `aru`).
    pub fn batches(&self) -> u64 {
        self.final_states.values().map(|(aru, _)| aru.0).max().unwrap_or(0)
    }

    /// The highest global view any correct replica reached: leader sites replaced.
    pub fn leader_site_changes(&self) -> u64 {
        self.global_views.values().copied().max().unwrap_or(0)
    }

    /// Changes of representative over all sites: each site's highest local view any
    /// correct replica preinstalled, summed.
    pub fn representative_changes(&self) -> u64 {
        let mut highest: BTreeMap<crate::ids::ClusterId, u64> = BTreeMap::new();
        for views in self.local_views.values() {
            for (site, lv) in views {
                let entry = highest.entry(*site).or_default();
                *entry = (*entry).max(*lv);
            }
        }
        highest.values().sum()
    }

    /// WAN messages of `kind` sent.
    pub fn wan_messages(&self, kind: &str) -> u64 {
        self.wan_by_kind.get(kind).map_or(0, |(messages, _)| *messages)
    }
}

impl fmt::Display for SitesReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {}: {} violations, {} checks, {}/{} updates in {} batches, {:?} simulated, finished={}, \
             wan {:.1} msgs/update, blamed {}",
            self.seed,
            self.violations.len(),
            self.checks,
            self.updates_completed,
            self.updates_expected,
            self.batches(),
            self.simulated_time,
            self.finished,
            self.load.wan_messages_per_update(),
            self.blamed,
        )?;
        if self.cut_losses > 0 {
            write!(f, ", {} lost to cuts", self.cut_losses)?;
        }
        if self.restarts > 0 {
            write!(f, ", {} restarts", self.restarts)?;
        }
        for violation in self.violations.iter().take(3) {
            write!(f, "\n  {violation}")?;
        }
        Ok(())
    }
}
