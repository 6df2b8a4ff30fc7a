//! `bulwark sim`: the deterministic simulator over many seeds, drawn faults or Twins
//! scenarios, ending with a verdict and the command that replays a failing seed.

use crate::sim_sites::{self, SitesArgs};
use anyhow::bail;
use bulwark_examples::kv::{KvOp, KvStore};
use bulwark_framework::sim::byzantine::Strategy;
use bulwark_framework::sim::campaign::{run_campaign, CampaignReport, CampaignSpec};
use bulwark_framework::sim::twins::{run_twins, TwinsScope};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;
use std::time::Duration;
use strum::VariantArray;

/// The arguments of `bulwark sim`.
#[derive(Debug, Args)]
pub(crate) struct SimArgs {
    /// Replicas per run; 0 alternates n = 4 and n = 7.
    #[arg(long, default_value_t = 4)]
    replicas: usize,
    /// How many seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed (replay one with --first-seed S --seeds 1).
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// Byzantine replicas per run (default: f); with --twins, the twinned replicas.
    /// More than f is a negative control: the checker should then report violations.
    #[arg(long)]
    byzantine: Option<usize>,
    /// Use only this Byzantine strategy (default: each Byzantine replica draws one).
    #[arg(long, value_parser = strategy_parser(), conflicts_with = "twins")]
    strategy: Option<Strategy>,
    /// Run Twins scenarios instead of drawn strategies (needs --replicas 4 or more).
    #[arg(long)]
    twins: bool,
    /// Twins rounds per scenario, 400 ms of simulated time each; the network is whole
    /// after the last.
    #[arg(long, default_value_t = 2, requires = "twins")]
    rounds: usize,
    /// Run Steward instead: this many sites, each a cluster of --replicas-per-site, over a
    /// simulated WAN (loss, duplication, jitter, and 10 or 2.5 Mbit/s or unlimited links).
    #[arg(long, conflicts_with_all = ["twins", "byzantine", "strategy"])]
    sites: Option<usize>,
    /// With --sites: replicas per site.
    #[arg(long, default_value_t = 4, requires = "sites")]
    replicas_per_site: usize,
    /// With --sites: Byzantine replicas per site (default f), never a representative. More
    /// than f is the negative control GI-N: the leader site's representative and accomplices
    /// collude, and the checker should report a violation.
    #[arg(long, requires = "sites")]
    byzantine_per_site: Option<usize>,
    /// With --sites: leave out the view-change faults drawn by default. By default,
    /// besides WAN and LAN faults and Byzantine replicas: in each site one seed in three
    /// crashes the representative and one in three makes it Byzantine (dropping, altering or
    /// replaying; the leader site's also pre-prepares conflicting batches), replaced by a
    /// local view change (LV1-LV3); one seed in two cuts one site (the leader site included)
    /// off from the others for 0.3-1.5 s; and one seed in three cuts the leader site off for
    /// 3.5-5 s, longer than Global_T (3 s here), so that it is replaced (GV1-GV6). A
    /// crashed representative comes back from its records on one seed in two, and one seed
    /// in two also crashes a correct replica for 0.2-1.5 s (GI5 across restarts); such
    /// crashes are torn, in the middle of a step.
    #[arg(long, requires = "sites", conflicts_with = "figures")]
    no_view_change_faults: bool,
    /// With --sites: instead of a campaign, print Steward against flat PBFT on the same
    /// simulated WAN (50 ms links at 10, 5 and 2.5 Mbit/s).
    #[arg(long, requires = "sites")]
    figures: bool,
    /// With --figures: closed-loop clients per site.
    #[arg(long, default_value_t = 3, requires = "figures")]
    clients_per_site: usize,
    /// With --figures: updates each client makes.
    #[arg(long, default_value_t = 40, requires = "figures")]
    updates_per_client: u64,
}

/// `--strategy NAME`: one of the simulator's Byzantine strategies, which `--help` lists and
/// an unknown name's error too.
fn strategy_parser() -> impl TypedValueParser<Value = Strategy> {
    PossibleValuesParser::new(Strategy::VARIANTS.iter().map(|strategy| strategy.name()))
        .map(|name| name.parse().expect("a possible value names a strategy"))
}

/// Runs `bulwark sim`.
pub(crate) fn run(args: SimArgs) -> anyhow::Result<()> {
    if let Some(sites) = args.sites {
        if args.figures {
            return sim_sites::figures(sites, args.replicas_per_site, args.clients_per_site, args.updates_per_client);
        }
        let sites_args = SitesArgs {
            sites,
            replicas_per_site: args.replicas_per_site,
            byzantine_per_site: args.byzantine_per_site,
            view_change_faults: !args.no_view_change_faults,
            first_seed: args.first_seed,
            seeds: args.seeds,
        };
        if !sim_sites::campaign(sites_args)? {
            std::process::exit(1);
        }
        return Ok(());
    }
    match args {
        SimArgs { replicas, seeds, first_seed, byzantine, strategy: _, twins: true, rounds, .. } => {
            if replicas < 4 {
                bail!("--twins needs --replicas 4 or more, got {replicas}");
            }
            let twinned = byzantine.unwrap_or((replicas - 1) / 3);
            let scope = TwinsScope { replicas, twinned, rounds, ..TwinsScope::default() };
            if !sim_twins(scope, first_seed, seeds)? {
                std::process::exit(1);
            }
            Ok(())
        }
        SimArgs { replicas, seeds, first_seed, byzantine, strategy, twins: false, .. } => {
            if replicas != 0 && replicas < 4 {
                bail!("--replicas must be 0 (alternate 4 and 7) or at least 4, got {replicas}");
            }
            let spec = CampaignSpec { replicas, seeds, first_seed, byzantine, strategy, ..CampaignSpec::default() };
            if !sim(spec) {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// `bulwark sim`: a campaign of seeded simulations; returns whether it was safe.
fn sim(spec: CampaignSpec) -> bool {
    let report = run_campaign(
        &spec,
        KvStore::new,
        |rng, client, index| KvOp::Append {
            key: format!("k{}", rand::Rng::gen_range(rng, 0..8)),
            value: vec![client as u8, (index % 251) as u8],
        },
        |outcome| {
            if !outcome.safe() || !outcome.live() {
                println!(
                    "seed {} (n = {}, byzantine {:?}): {}",
                    outcome.seed, outcome.replicas, outcome.byzantine, outcome.report
                );
            }
        },
    );
    println!("{report}");
    let replay = |seed: u64| {
        let mut command = format!("bulwark sim --replicas {} --first-seed {seed} --seeds 1", spec.replicas);
        if let Some(byzantine) = spec.byzantine {
            command.push_str(&format!(" --byzantine {byzantine}"));
        }
        if let Some(strategy) = spec.strategy {
            command.push_str(&format!(" --strategy {}", strategy.name()));
        }
        command
    };
    conclude(&report, spec.time_limit, replay)
}

/// `bulwark sim --twins`: seeds of a Twins scope; returns whether they were safe.
fn sim_twins(scope: TwinsScope, first_seed: u64, seeds: u64) -> anyhow::Result<bool> {
    let total = scope.scenarios()?;
    let covered = if u128::from(seeds) >= total && first_seed == 1 { "exhaustive" } else { "sampled" };
    println!(
        "Twins: n = {}, {} twinned, {} rounds of {} ms: {total} scenarios; running seeds {first_seed}..={} ({covered})",
        scope.replicas,
        scope.twinned,
        scope.rounds,
        scope.round_us / 1_000,
        first_seed.saturating_add(seeds).saturating_sub(1)
    );
    let report = run_twins(
        &scope,
        first_seed,
        seeds,
        KvStore::new,
        |rng, client, index| KvOp::Append {
            key: format!("k{}", rand::Rng::gen_range(rng, 0..4)),
            value: vec![client as u8, (index % 251) as u8],
        },
        |outcome| {
            if !outcome.report.violations.is_empty() || !outcome.report.converged() {
                println!("seed {} ({}): {}", outcome.seed, outcome.scenario, outcome.report);
            }
        },
    )?;
    println!("{report}");
    let replay = |seed: u64| {
        format!(
            "bulwark sim --twins --replicas {} --byzantine {} --rounds {} --first-seed {seed} --seeds 1",
            scope.replicas, scope.twinned, scope.rounds
        )
    };
    Ok(conclude(&report, Duration::from_secs(30), replay))
}

/// Prints the verdict of a simulator run: the stuck seeds, then `violations: 0` or the
/// first unsafe seed with its replay command. Returns whether the run was safe.
fn conclude(report: &CampaignReport, time_limit: Duration, replay: impl Fn(u64) -> String) -> bool {
    if let Some(seed) = report.stuck_seeds.first() {
        println!(
            "not live within {:?}: {} seeds; replay the first with `{}`",
            time_limit,
            report.stuck_seeds.len(),
            replay(*seed)
        );
    }
    match report.unsafe_seeds.first() {
        None => {
            println!("violations: 0");
            true
        }
        Some(seed) => {
            println!("violations: {} (first at seed {seed}); replay with `{}`", report.violations, replay(*seed));
            false
        }
    }
}
