//! The wide-area links between sites, as the multi-site simulator will model them
//! (docs/STEWARD.md; the Steward issues): per directed pair of sites a latency, a jitter, a
//! loss and a duplication probability, and a bandwidth.
//!
//! Bandwidth is a first-in first-out queue per directed link: a message departs when the
//! link is free and occupies it for `bytes × 8 / bandwidth`; it arrives one latency (plus
//! jitter) after its last bit left. A lost or duplicated message used the link like any
//! other (the loss happens on the way; the duplicate is a second transmission). Every random
//! choice comes from the caller's seeded generator, so a seed names a run.
//!
//! [`WanPlacement`] spreads the replicas of one simulated cluster over sites joined by such
//! links: flat PBFT over the same WAN, the baseline Steward is compared with.

use crate::ids::{ClusterId, Instant, ReplicaId};
use rand::Rng;
use std::collections::BTreeMap;
use std::time::Duration;

/// One directed link between two sites.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkModel {
    pub latency_us: u64,
    /// Added to the latency: uniform in `[0, jitter_us]`.
    pub jitter_us: u64,
    pub loss: f64,
    pub duplicate: f64,
    /// Bits per second; 0 means unlimited.
    pub bandwidth_bps: u64,
}

impl LinkModel {
    /// `latency_ms` one way and `mbps` megabits per second, no jitter, loss or duplication:
    /// the Steward paper's symmetric links.
    pub fn symmetric(latency_ms: u64, mbps: f64) -> Self {
        LinkModel {
            latency_us: latency_ms * 1_000,
            jitter_us: 0,
            loss: 0.0,
            duplicate: 0.0,
            bandwidth_bps: (mbps * 1e6) as u64,
        }
    }

    /// How long `bytes` occupy the link.
    pub fn transmission(&self, bytes: usize) -> Duration {
        if self.bandwidth_bps == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos((bytes as u128 * 8 * 1_000_000_000 / self.bandwidth_bps as u128) as u64)
    }
}

/// What one directed link carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    pub messages: u64,
    pub bytes: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Total and largest time a message waited for the link to be free.
    pub queueing_us: u64,
    pub queueing_max_us: u64,
}

/// The wide-area network between sites: its links' models, and their queues and counters.
#[derive(Debug, Clone)]
pub struct Wan {
    default: LinkModel,
    links: BTreeMap<(ClusterId, ClusterId), LinkModel>,
    free_at: BTreeMap<(ClusterId, ClusterId), Instant>,
    counters: BTreeMap<(ClusterId, ClusterId), LinkCounters>,
}

impl Wan {
    /// Every link between two sites follows `default`.
    pub fn uniform(default: LinkModel) -> Self {
        Wan { default, links: BTreeMap::new(), free_at: BTreeMap::new(), counters: BTreeMap::new() }
    }

    /// The link from `from` to `to` follows `model` (the other direction is unchanged).
    pub fn set_link(&mut self, from: ClusterId, to: ClusterId, model: LinkModel) {
        self.links.insert((from, to), model);
    }

    pub fn link(&self, from: ClusterId, to: ClusterId) -> &LinkModel {
        self.links.get(&(from, to)).unwrap_or(&self.default)
    }

    /// Sends `bytes` from site `from` to site `to` at `now`: the instants the message
    /// arrives (none if it is lost, two if it is duplicated).
    pub fn send(
        &mut self,
        from: ClusterId,
        to: ClusterId,
        bytes: usize,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Vec<Instant> {
        let model = *self.link(from, to);
        let copies = if model.duplicate > 0.0 && rng.gen_bool(model.duplicate) { 2 } else { 1 };
        let mut arrivals = Vec::with_capacity(copies);
        for copy in 0..copies {
            let free_at = self.free_at.entry((from, to)).or_insert(Instant::ZERO);
            let departs = now.max(*free_at);
            let done = departs + model.transmission(bytes);
            *free_at = done;
            let waited = departs.as_micros() - now.as_micros();
            let counters = self.counters.entry((from, to)).or_default();
            counters.messages += 1;
            counters.bytes += bytes as u64;
            counters.duplicated += u64::from(copy > 0);
            counters.queueing_us += waited;
            counters.queueing_max_us = counters.queueing_max_us.max(waited);
            if model.loss > 0.0 && rng.gen_bool(model.loss) {
                counters.lost += 1;
                continue;
            }
            let jitter = if model.jitter_us > 0 { rng.gen_range(0..=model.jitter_us) } else { 0 };
            arrivals.push(done + Duration::from_micros(model.latency_us + jitter));
        }
        arrivals
    }

    /// Losses and duplicates stop on every link (the network settles); latency, jitter
    /// and bandwidth stay.
    pub fn settle(&mut self) {
        for model in std::iter::once(&mut self.default).chain(self.links.values_mut()) {
            model.loss = 0.0;
            model.duplicate = 0.0;
        }
    }

    /// What the link from `from` to `to` carried so far.
    pub fn counters(&self, from: ClusterId, to: ClusterId) -> LinkCounters {
        self.counters.get(&(from, to)).copied().unwrap_or_default()
    }

    /// Messages and bytes over every link together.
    pub fn totals(&self) -> LinkCounters {
        self.counters.values().fold(LinkCounters::default(), |mut total, c| {
            total.messages += c.messages;
            total.bytes += c.bytes;
            total.lost += c.lost;
            total.duplicated += c.duplicated;
            total.queueing_us += c.queueing_us;
            total.queueing_max_us = total.queueing_max_us.max(c.queueing_max_us);
            total
        })
    }
}

/// Where the replicas and clients of one simulated cluster are (their sites), and the links
/// between the sites (see [`SimConfig::wan`](super::SimConfig::wan)). Sites are named
/// `ClusterId(1)`, `ClusterId(2)`, … as Steward's are. Correct client `c` (and Byzantine
/// client `c`) is at the `c % S`-th site in ascending order, `S` the number of sites, so
/// that `k × S` clients put `k` at each site; a twinned replica's second instance is at its
/// replica's site.
///
/// The simulation runs on a clone of `wan`: the queues and counters of this value stay
/// empty.
#[derive(Debug, Clone)]
pub struct WanPlacement {
    pub site_of: BTreeMap<ReplicaId, ClusterId>,
    pub wan: Wan,
}

impl WanPlacement {
    /// `ids` in blocks over `sites` sites: in ascending order, the `i`-th of `n` replicas
    /// is at site `ClusterId(1 + i × sites / n)`, so with `n = 20` and 5 sites, replicas 0–3
    /// are at site 1, 4–7 at site 2, and so on (block sizes differ by at most one when
    /// `sites` does not divide `n`). Blocks, not round robin, so that a site is a group of
    /// neighbours as in a Steward deployment, and the primary of view 0 (the lowest id)
    /// shares its site with the next few primaries.
    pub fn sites(ids: &[ReplicaId], sites: usize, wan: Wan) -> Self {
        let mut sorted = ids.to_vec();
        sorted.sort();
        let n = sorted.len().max(1);
        let sites = sites.max(1);
        let site_of = sorted.iter().enumerate().map(|(i, &id)| (id, ClusterId(1 + (i * sites / n) as u32))).collect();
        WanPlacement { site_of, wan }
    }

    /// The sites that hold at least one replica, ascending.
    pub fn site_list(&self) -> Vec<ClusterId> {
        let mut sites: Vec<ClusterId> = self.site_of.values().copied().collect();
        sites.sort();
        sites.dedup();
        sites
    }

    /// The site of client `client` (correct or Byzantine): the `client % S`-th site.
    pub fn client_site(&self, client: usize) -> ClusterId {
        let sites = self.site_list();
        sites[client % sites.len()]
    }
}

/// Simulated CPU time per cryptographic operation, charged to the replica that performs it
/// when a simulation models CPU (the Steward issues): a replica handles one input at a time,
/// so a replica that signs and verifies more than it can keeps a queue, and simulated
/// throughput shows where signing is the bottleneck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuCosts {
    pub ed25519_sign_us: u64,
    pub ed25519_verify_us: u64,
    pub share_sign_us: u64,
    pub share_verify_us: u64,
    /// Combining `2f + 1` shares (for `f = 1`).
    pub combine_us: u64,
    pub combined_verify_us: u64,
}

impl CpuCosts {
    /// Measured on the development machine (docs/STEWARD.md §12; `benches/` threshold and
    /// signing benchmarks): ed25519, and BLS12-381 threshold signatures with 4 members.
    pub fn development_machine() -> Self {
        CpuCosts {
            ed25519_sign_us: 12,
            ed25519_verify_us: 25,
            share_sign_us: 240,
            share_verify_us: 960,
            combine_us: 350,
            combined_verify_us: 960,
        }
    }

    /// Nothing costs time: the default, for runs that judge safety rather than speed.
    pub fn free() -> Self {
        CpuCosts {
            ed25519_sign_us: 0,
            ed25519_verify_us: 0,
            share_sign_us: 0,
            share_verify_us: 0,
            combine_us: 0,
            combined_verify_us: 0,
        }
    }
}

/// What a run across the WAN achieved, measured alike for Steward and flat PBFT so that
/// their figures compare: completed updates, their latencies in simulated time, the span
/// from the first issue to the last completion, and the WAN traffic.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WanLoad {
    pub updates: u64,
    /// Simulated time from the first update issued to the last one completed.
    pub span_us: u64,
    /// Each completed update's latency, issue to acceptance by its client.
    pub latencies_us: Vec<u64>,
    pub wan_messages: u64,
    pub wan_bytes: u64,
}

impl WanLoad {
    pub fn updates_per_sec(&self) -> f64 {
        if self.span_us == 0 {
            return 0.0;
        }
        self.updates as f64 * 1e6 / self.span_us as f64
    }

    /// The latency at percentile `p` (0 to 100), in milliseconds; 0 with no update.
    pub fn latency_ms(&self, p: f64) -> f64 {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
        sorted[rank.min(sorted.len() - 1)] as f64 / 1_000.0
    }

    pub fn wan_messages_per_update(&self) -> f64 {
        self.wan_messages as f64 / self.updates.max(1) as f64
    }

    pub fn wan_bytes_per_update(&self) -> f64 {
        self.wan_bytes as f64 / self.updates.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const A: ClusterId = ClusterId(1);
    const B: ClusterId = ClusterId(2);

    /// 1,250 bytes take 1 ms on a 10 Mbit/s link; two sent at once queue one behind the
    /// other and arrive a latency after their last bit.
    #[test]
    fn a_link_carries_its_messages_first_in_first_out_at_its_bandwidth() {
        let mut wan = Wan::uniform(LinkModel::symmetric(50, 10.0));
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(wan.link(A, B).transmission(1_250), Duration::from_millis(1));
        let first = wan.send(A, B, 1_250, Instant::ZERO, &mut rng);
        let second = wan.send(A, B, 1_250, Instant::ZERO, &mut rng);
        assert_eq!(first, vec![Instant::from_micros(51_000)]);
        assert_eq!(second, vec![Instant::from_micros(52_000)]);
        // The other direction has a queue of its own.
        assert_eq!(wan.send(B, A, 1_250, Instant::ZERO, &mut rng), vec![Instant::from_micros(51_000)]);
        // A message after the queue drained does not wait.
        let later = Instant::from_micros(10_000);
        assert_eq!(wan.send(A, B, 125, later, &mut rng), vec![Instant::from_micros(60_100)]);
        let counters = wan.counters(A, B);
        assert_eq!(
            (counters.messages, counters.bytes, counters.queueing_us, counters.queueing_max_us),
            (3, 2_625, 1_000, 1_000)
        );
        assert_eq!(wan.totals().messages, 4);
    }

    /// Loss and duplication happen at their rates (seeded), lost and duplicated copies use
    /// the link, and the same seed gives the same arrivals.
    #[test]
    fn loss_duplication_and_jitter_follow_the_model_and_the_seed() {
        let model = LinkModel { latency_us: 1_000, jitter_us: 500, loss: 0.1, duplicate: 0.2, bandwidth_bps: 0 };
        let run = |seed| {
            let mut wan = Wan::uniform(LinkModel::symmetric(1, 0.0));
            wan.set_link(A, B, model);
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let arrivals: Vec<Vec<Instant>> =
                (0..10_000).map(|_| wan.send(A, B, 100, Instant::ZERO, &mut rng)).collect();
            (arrivals, wan.counters(A, B))
        };
        let (arrivals, counters) = run(7);
        assert_eq!(run(7).0, arrivals, "a seed names a run");
        assert_ne!(run(8).0, arrivals);
        let sent = counters.messages as f64;
        assert!((counters.duplicated as f64 / 10_000.0 - 0.2).abs() < 0.02, "{counters:?}");
        assert!((counters.lost as f64 / sent - 0.1).abs() < 0.02, "{counters:?}");
        let all: Vec<u64> = arrivals.iter().flatten().map(|at| at.as_micros()).collect();
        assert!(all.iter().all(|&at| (1_000..=1_500).contains(&at)), "latency plus jitter");
        assert!(all.iter().any(|&at| at > 1_400) && all.iter().any(|&at| at < 1_100), "jitter spreads");
        let mut wan = Wan::uniform(LinkModel::symmetric(1, 0.0));
        wan.set_link(A, B, model);
        assert_eq!(wan.link(B, A), &LinkModel::symmetric(1, 0.0), "the reverse direction keeps the default");
    }

    /// Replicas go to sites in blocks of consecutive ids, whatever order they are given in;
    /// clients go round robin over the sites.
    #[test]
    fn a_placement_puts_replicas_in_blocks_and_clients_round_robin() {
        let ids: Vec<ReplicaId> = (0..20).rev().map(ReplicaId).collect();
        let placement = WanPlacement::sites(&ids, 5, Wan::uniform(LinkModel::symmetric(50, 10.0)));
        let site = |id: u32| placement.site_of[&ReplicaId(id)];
        assert_eq!([site(0), site(3), site(4), site(19)], [ClusterId(1), ClusterId(1), ClusterId(2), ClusterId(5)]);
        assert_eq!(placement.site_list(), (1..=5).map(ClusterId).collect::<Vec<_>>());
        assert_eq!(
            [placement.client_site(0), placement.client_site(4), placement.client_site(5)],
            [A, ClusterId(5), A]
        );
        // Seven replicas over three sites: blocks of 3, 2 and 2.
        let seven: Vec<ReplicaId> = (0..7).map(ReplicaId).collect();
        let placement = WanPlacement::sites(&seven, 3, Wan::uniform(LinkModel::symmetric(1, 0.0)));
        let sizes: Vec<usize> =
            placement.site_list().iter().map(|s| placement.site_of.values().filter(|v| *v == s).count()).collect();
        assert_eq!(sizes, vec![3, 2, 2]);
    }
}
