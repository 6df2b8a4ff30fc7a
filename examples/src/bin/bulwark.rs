//! `bulwark`: run a local demo cluster, generate keys, run replicas and clients, benchmark.

use anyhow::{bail, Context as _};
use bulwark_actors::client::{Client, ClientOptions};
use bulwark_actors::config::{key_path, keygen, load_replica_key, ClusterFile, Keygen};
use bulwark_actors::replica::{spawn_replica, ReplicaSetup};
use bulwark_actors::store::store_path;
use bulwark_actors::verifier::{default_threads, VerifierPool};
use bulwark_crypto::KeyPair;
use bulwark_examples::bank::{Bank, BankOp};
use bulwark_examples::client_attack::{ClientAttackReport, ClientAttacker, CLIENT_ATTACK_STEPS_PER_S};
use bulwark_examples::cluster::{run_load, LoadReport, LoadSpec, LocalCluster, Sizes, Workload};
use bulwark_examples::echo::Echo;
use bulwark_examples::kv::{KvOp, KvStore};
use bulwark_framework::config::ClientAuth;
use bulwark_framework::sim::byzantine::Strategy;
use bulwark_framework::sim::byzantine_client::ClientAttack;
use bulwark_framework::sim::campaign::{run_campaign, CampaignReport, CampaignSpec};
use bulwark_framework::sim::twins::{run_twins, TwinsScope};
use bulwark_framework::{ClusterId, MembershipHandle, ProtocolParams, ReplicaId, Service, View};
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand, ValueEnum};
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use strum::VariantArray;

/// mimalloc rather than the system allocator: a replica allocates and frees a buffer or
/// more per message, and with glibc's malloc that was about a sixth of all CPU time in the
/// cluster benchmark (perf); with mimalloc the in-process benchmark served about 15% more
/// (512 B requests, connection mode, 2 cores).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Bulwark: Byzantine-fault-tolerant state machine replication (PBFT).
#[derive(Debug, Parser)]
#[command(name = "bulwark", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ServiceKind {
    /// Key-value store (put, get, delete, append).
    Kv,
    /// Lamport's toy bank (deposit, withdraw, transfer, balance).
    Bank,
    /// The PBFT paper's null service: payload in, payload out (benchmarks).
    Echo,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a local cluster over loopback TCP in this process, run a workload with a live
    /// progress line, check that all replicas reach the same state digest, print a summary.
    Demo {
        /// Number of replicas (n = 3f + 1).
        #[arg(long, default_value_t = 4)]
        replicas: usize,
        /// Number of clients.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Requests each client keeps in flight.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// How long to run the workload, e.g. 10s, 1m.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// The replicated service.
        #[arg(long, value_enum, default_value_t = ServiceKind::Kv)]
        service: ServiceKind,
        /// Request payload bytes (kv: value size; echo: payload size).
        #[arg(long, default_value_t = 64)]
        request_size: usize,
        /// Reply payload bytes (echo only).
        #[arg(long, default_value_t = 0)]
        reply_size: usize,
        /// Stop replica 0, the primary of view 0, this long after the workload starts
        /// (e.g. 3s; shorter than --duration), as a crash would. The other replicas elect a
        /// new primary by view change and the clients follow it: throughput dips, then
        /// recovers. With this flag the demo uses a 500 ms view-change timeout and a 250 ms
        /// client retransmission timeout, so the dip is short. The summary's `views=` is the
        /// highest view among the live replicas and `digest_agree=` compares only those.
        #[arg(long, value_parser = humantime::parse_duration, verbatim_doc_comment)]
        crash_primary_after: Option<Duration>,
        /// Make the replicas durable: each persists what it must never forget (its votes,
        /// prepared and committed batches, checkpoints) in DIR/replica-<id>.redb, fsync'd
        /// in group commits before it acts on it. Without it nothing is written to disk.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Run replica ID as a Byzantine replica with the simulator's STRATEGY (repeatable),
        /// e.g. `--byzantine 3:silent`, `--byzantine 0:equivocating-primary`; STRATEGY is one
        /// of the possible values listed. The summary's `digest_agree=` then compares the
        /// correct replicas only. More than f are refused unless --allow-more-than-f is given.
        #[arg(long, value_name = "ID:STRATEGY", value_parser = ByzantineParser, verbatim_doc_comment)]
        byzantine: Vec<(ReplicaId, Strategy)>,
        /// Accept more than f Byzantine replicas (the protocol then promises nothing: a
        /// negative control).
        #[arg(long)]
        allow_more_than_f: bool,
    },
    /// Generate a cluster: DIR/cluster.toml and one secret key file per replica.
    Keygen {
        /// Number of replicas (or give their ids with --ids).
        #[arg(long, default_value_t = 4)]
        replicas: usize,
        /// The replicas' ids, any distinct numbers (default 0..replicas). An id names a
        /// replica for as long as it is a member; it is not a position.
        #[arg(long, value_delimiter = ',', value_name = "ID,ID,...")]
        ids: Vec<u32>,
        /// The cluster's id, bound into every signature: two clusters must not share one.
        #[arg(long, default_value_t = 1)]
        cluster_id: u32,
        /// Output directory (created; existing files are never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// Port of the replica with the lowest id; the i-th in ascending id order listens
        /// on base-port + i.
        #[arg(long, default_value_t = 7000)]
        base_port: u16,
        /// Host of each replica (one for all, or one per replica).
        #[arg(long, num_args = 1.., default_value = "127.0.0.1")]
        hosts: Vec<String>,
    },
    /// Run one replica process until interrupted.
    Replica {
        /// The cluster file written by keygen.
        #[arg(long)]
        config: PathBuf,
        /// This replica's id.
        #[arg(long)]
        id: u32,
        /// Secret key file (default: replica-<id>.key beside the cluster file).
        #[arg(long)]
        key: Option<PathBuf>,
        /// The replicated service.
        #[arg(long, value_enum, default_value_t = ServiceKind::Kv)]
        service: ServiceKind,
        /// Keep this replica's durable store in DIR/replica-<id>.redb (created if missing).
        /// Everything the replica must never forget (the votes it signed, its view, prepared
        /// and committed batches, stable checkpoints with their images) is fsync'd there,
        /// in group commits, before the replica acts on it. On start the replica recovers
        /// from the store and then catches up from its peers. A store that fails its
        /// checksums or signature checks is not trusted: it is logged, moved aside as
        /// replica-<id>.redb.corrupt-<unix time>, and the replica starts empty and
        /// catches up by state transfer. Without --data-dir nothing is persisted and a
        /// restarted replica starts from scratch.
        #[arg(long, value_name = "DIR", verbatim_doc_comment)]
        data_dir: Option<PathBuf>,
        /// Serve Prometheus metrics on this port (all interfaces), e.g. 9100.
        #[arg(long)]
        metrics_port: Option<u16>,
    },
    /// Run one operation against a cluster, or `status` to see every replica.
    ///
    /// Operations: put K V | get K | delete K | append K V (kv);
    /// deposit A N | withdraw A N | transfer A B N | balance A (bank); status.
    Client {
        /// The cluster file written by keygen.
        #[arg(long)]
        config: PathBuf,
        /// How long to wait for f + 1 matching replies, e.g. 10s.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// The operation and its arguments.
        #[arg(required = true, num_args = 1..)]
        operation: Vec<String>,
    },
    /// Load generator: closed loop (N clients) or open loop (fixed rate), against a running
    /// cluster (--config) or an in-process one; prints throughput and latency percentiles.
    Bench {
        /// Cluster file of a running cluster; without it an in-process cluster is started.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Replicas of the in-process cluster.
        #[arg(long, default_value_t = 4)]
        replicas: usize,
        /// Number of clients.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Requests each client keeps in flight (closed loop), or may have in flight (open loop).
        /// Beyond the cluster's `client_window` (256 by default) the client library holds the
        /// excess until earlier requests complete.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Open loop: offered requests per second over all clients. Closed loop if absent.
        #[arg(long)]
        rate: Option<f64>,
        /// Measured duration (the run ends earlier when --ops is reached).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Stop once this many operations completed after warm-up, e.g. 1000000 with a long
        /// --duration for a memory run; the report gives resident memory at start and end.
        #[arg(long)]
        ops: Option<u64>,
        /// Load before measuring.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        warmup: Duration,
        /// Request payload bytes.
        #[arg(long, default_value_t = 0)]
        request_size: usize,
        /// Reply payload bytes.
        #[arg(long, default_value_t = 0)]
        reply_size: usize,
        /// Requests per batch at the primary.
        #[arg(long, default_value_t = 256)]
        batch_size: usize,
        /// Batches the primary keeps proposed and not yet executed.
        #[arg(long, default_value_t = ProtocolParams::default().in_flight_batches_max)]
        in_flight_batches: u64,
        /// In-process cluster only: how client links are authenticated. Replica-to-replica
        /// messages are signed either way. Against a running cluster its file decides.
        #[arg(long, default_value_t = ClientAuth::default(), value_parser = client_auth_parser())]
        client_auth: ClientAuth,
        /// Print the result as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// In-process cluster only: durable replicas, each with its store in
        /// DIR/replica-<id>.redb (see `bulwark replica --help`); measures the cost of
        /// persisting. Without it nothing is written to disk.
        #[arg(long, value_name = "DIR", conflicts_with = "config")]
        data_dir: Option<PathBuf>,
        /// In-process cluster only: run the bench twice in this process, fault-free and then
        /// under attack, and print both throughputs and their fraction. ATTACK is a replica
        /// strategy (a primary strategy on replica 0, the primary of view 0; any other on the
        /// last replica) or the attack of a Byzantine client beside the correct ones (1,000
        /// strategy steps a second).
        #[arg(long, value_name = "ATTACK", value_parser = attack_parser(), conflicts_with = "config")]
        attack: Option<Attack>,
        /// In-process cluster only: `ordering_rate_min_per_s`, the requests per second a
        /// backup expects ordered while requests wait before it replaces the primary
        /// (Aardvark's defence against a slow primary). Default: 0 (off), or 100 with
        /// --attack, in both of its runs.
        #[arg(long, value_name = "PER_S")]
        ordering_rate_min: Option<u64>,
    },
    /// Run the deterministic simulator over many seeds: each seed draws loss (up to 30%),
    /// duplication (up to 50%), reordering, a partition, a crash and restart, Byzantine
    /// replicas, the delay between each replica and its primary and checkpoint roles run
    /// apart (up to 10 ms) and, in one seed of four, a Byzantine client, runs a key-value workload and
    /// checks the safety invariants after every step and liveness after the network settles. Ends with `violations: 0`, or with the
    /// first failing seed and the command that replays it (exit status 1).
    ///
    /// With --twins it runs Twins instead: each faulty replica is two correct instances
    /// holding one key, and every round partitions the instances in two. Seeds 1..=N visit
    /// the scope's N scenarios once each (N is printed; n = 4, one twin, two rounds has
    /// 1,024), so enough seeds is exhaustive and fewer is a spread-out sample.
    Sim {
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
    },
}

/// `--strategy NAME`: one of the simulator's Byzantine strategies, which `--help` lists and
/// an unknown name's error too.
fn strategy_parser() -> impl TypedValueParser<Value = Strategy> {
    PossibleValuesParser::new(Strategy::VARIANTS.iter().map(|strategy| strategy.name()))
        .map(|name| name.parse().expect("a possible value names a strategy"))
}

/// What `bulwark bench --attack` runs: a Byzantine replica or a Byzantine client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attack {
    Replica(Strategy),
    Client(ClientAttack),
}

impl Attack {
    fn name(self) -> &'static str {
        match self {
            Attack::Replica(strategy) => strategy.name(),
            Attack::Client(attack) => attack.name(),
        }
    }
}

/// `--attack NAME`: a replica strategy or a client attack, which `--help` lists (each
/// saying which it is) and an unknown name's error too.
fn attack_parser() -> impl TypedValueParser<Value = Attack> {
    let replicas =
        Strategy::VARIANTS.iter().map(|strategy| PossibleValue::new(strategy.name()).help("replica strategy"));
    let clients = ClientAttack::VARIANTS.iter().map(|attack| PossibleValue::new(attack.name()).help("client attack"));
    PossibleValuesParser::new(replicas.chain(clients)).map(|name| {
        name.parse()
            .map(Attack::Replica)
            .or_else(|_| name.parse().map(Attack::Client))
            .expect("a possible value names a strategy or a client attack")
    })
}

/// `--client-auth MODE`: the modes, which `--help` lists with what each means.
fn client_auth_parser() -> impl TypedValueParser<Value = ClientAuth> {
    let modes = ClientAuth::VARIANTS.iter().map(|mode| {
        let help = match mode {
            ClientAuth::Signed => {
                "every request ed25519-signed by its client and checked by every replica, replies vouched for by \
                 one signature per batch (a Merkle root)"
            }
            ClientAuth::Connection => {
                "nothing on client links is signed; requests and replies are trusted by the connection they come \
                 on (for client links authenticated by the network, and the PBFT paper's benchmark setting; anyone \
                 on the client network could forge them)"
            }
        };
        PossibleValue::new(<&str>::from(mode)).help(help)
    });
    PossibleValuesParser::new(modes).map(|name| name.parse().expect("a possible value names a mode"))
}

/// `--byzantine ID:STRATEGY`: a replica id and one of the simulator's strategies. A value is
/// not one of the strategies, but they are its possible values so that `--help` lists them.
#[derive(Debug, Clone, Copy)]
struct ByzantineParser;

impl TypedValueParser for ByzantineParser {
    type Value = (ReplicaId, Strategy);

    fn parse_ref(
        &self,
        command: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<Self::Value, clap::Error> {
        parse_byzantine.parse_ref(command, arg, value)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(Strategy::VARIANTS.iter().map(|strategy| PossibleValue::new(strategy.name()))))
    }
}

/// A `--byzantine` value; an unknown strategy's error lists the known ones.
fn parse_byzantine(text: &str) -> Result<(ReplicaId, Strategy), String> {
    let (id, name) = text.split_once(':').ok_or_else(|| format!("expected ID:STRATEGY, got {text:?}"))?;
    let id: u32 = id.parse().map_err(|_| format!("bad replica id {id:?} in {text:?}"))?;
    Ok((ReplicaId(id), name.parse()?))
}

/// Attack requests per second a backup expects ordered under `bulwark bench --attack`
/// unless `--ordering-rate-min` says otherwise: far below what even a starved in-process
/// cluster orders (thousands per second), far above what a slow primary orders (one
/// request per 0.8 view-change timeouts).
const ATTACK_ORDERING_RATE_MIN_PER_S: u64 = 100;

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

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let system = actix_rt::System::new();
    system.block_on(run(cli.command))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Demo {
            replicas,
            clients,
            concurrency,
            duration,
            service,
            request_size,
            reply_size,
            crash_primary_after,
            data_dir,
            byzantine,
            allow_more_than_f,
        } => {
            let f = replicas.saturating_sub(1) / 3;
            for (index, (id, _)) in byzantine.iter().enumerate() {
                if id.0 as usize >= replicas {
                    bail!("--byzantine {}: there are only {replicas} replicas", id.0);
                }
                if byzantine[..index].iter().any(|(other, _)| other == id) {
                    bail!("--byzantine {}: given twice", id.0);
                }
            }
            if byzantine.len() > f && !allow_more_than_f {
                bail!(
                    "{} Byzantine replicas but f = {f}: the protocol tolerates at most f \
                     (pass --allow-more-than-f to run it anyway)",
                    byzantine.len()
                );
            }
            if crash_primary_after.is_some_and(|after| after >= duration) {
                bail!("--crash-primary-after must be shorter than --duration ({duration:?})");
            }
            let sizes = Sizes { request_bytes: request_size, reply_bytes: reply_size };
            let spec = LoadSpec {
                concurrency,
                rate: None,
                duration,
                warmup: Duration::ZERO,
                sizes,
                progress: true,
                ops_max: None,
            };
            let demo_spec = DemoSpec { replicas, clients, load: spec, crash_primary_after, data_dir, byzantine };
            match service {
                ServiceKind::Kv => demo::<KvStore>(demo_spec).await,
                ServiceKind::Bank => demo::<Bank>(demo_spec).await,
                ServiceKind::Echo => demo::<Echo>(demo_spec).await,
            }
        }
        Command::Keygen { replicas, ids, cluster_id, out, base_port, hosts } => {
            let replicas = if ids.is_empty() { replicas } else { ids.len() };
            let spec = Keygen {
                cluster_id: ClusterId(cluster_id),
                replicas,
                ids: ids.into_iter().map(ReplicaId).collect(),
                hosts,
                base_port,
                params: ProtocolParams::default(),
            };
            let file = keygen(&spec, &out, &mut rand::rngs::OsRng)?;
            println!("wrote {} and {} key files", out.join("cluster.toml").display(), file.replicas.len());
            for entry in &file.replicas {
                println!("  replica {} at {}  key {}", entry.id.0, entry.address, key_path(&out, entry.id).display());
            }
            Ok(())
        }
        Command::Replica { config, id, key, service, data_dir, metrics_port } => {
            let options = ReplicaOptions { config, id, key, data_dir, metrics_port };
            match service {
                ServiceKind::Kv => replica::<KvStore>(options).await,
                ServiceKind::Bank => replica::<Bank>(options).await,
                ServiceKind::Echo => replica::<Echo>(options).await,
            }
        }
        Command::Client { config, timeout, operation } => client(config, timeout, operation).await,
        Command::Bench {
            config,
            replicas,
            clients,
            concurrency,
            rate,
            duration,
            warmup,
            request_size,
            reply_size,
            batch_size,
            in_flight_batches,
            ops,
            client_auth,
            json,
            data_dir,
            attack,
            ordering_rate_min,
        } => {
            let default_rate_min = if attack.is_some() { ATTACK_ORDERING_RATE_MIN_PER_S } else { 0 };
            let sizes = Sizes { request_bytes: request_size, reply_bytes: reply_size };
            let spec = LoadSpec { concurrency, rate, duration, warmup, sizes, progress: !json, ops_max: ops };
            let params = ProtocolParams {
                batch_size_max: batch_size,
                in_flight_batches_max: in_flight_batches,
                client_auth,
                ordering_rate_min_per_s: ordering_rate_min.unwrap_or(default_rate_min),
                ..ProtocolParams::default()
            };
            let target = match (config, attack) {
                (Some(path), _) => BenchTarget::Running(path),
                (None, None) => BenchTarget::InProcess { replicas, params, data_dir },
                (None, Some(attack)) => BenchTarget::Attack { replicas, params, data_dir, attack },
            };
            bench(target, clients, spec, json).await
        }
        Command::Sim { replicas, seeds, first_seed, byzantine, strategy: _, twins: true, rounds } => {
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
        Command::Sim { replicas, seeds, first_seed, byzantine, strategy, twins: false, rounds: _ } => {
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

/// What `bulwark demo` runs.
#[derive(Debug)]
struct DemoSpec {
    replicas: usize,
    clients: usize,
    load: LoadSpec,
    /// Stop the primary of view 0 this long into the workload.
    crash_primary_after: Option<Duration>,
    /// Durable replicas with their stores here.
    data_dir: Option<PathBuf>,
    /// Replicas running a Byzantine strategy.
    byzantine: Vec<(ReplicaId, Strategy)>,
}

/// Protocol parameters of the demo cluster. When the primary is to crash, the timeouts that
/// bound the dip are shortened: a client broadcasts a request the primary does not answer
/// after 250 ms (which starts the backups' request timers, VC1), and a backup suspects the
/// primary 500 ms later; a NEW-VIEW follows within a few round trips. On one host every
/// request completes in tens of milliseconds, far below either timeout.
fn demo_params(crash: bool) -> ProtocolParams {
    if crash {
        ProtocolParams { view_change_timeout_us: 500_000, client_retransmit_us: 250_000, ..ProtocolParams::default() }
    } else {
        ProtocolParams::default()
    }
}

async fn demo<S: Workload>(spec: DemoSpec) -> anyhow::Result<()> {
    let DemoSpec { replicas, clients, load, crash_primary_after, data_dir, byzantine } = spec;
    let params = demo_params(crash_primary_after.is_some());
    if let Some(dir) = &data_dir {
        eprintln!("durable replicas: stores in {}", dir.display());
    }
    for (id, strategy) in &byzantine {
        eprintln!("replica {} is Byzantine: {}", id.0, strategy.name());
    }
    let mut cluster =
        LocalCluster::<S>::start_with_byzantine(replicas, params, S::default, data_dir, &byzantine).await?;
    let f = cluster.membership.f();
    eprintln!(
        "started {replicas} replicas (f = {f}) on {}; {clients} clients x {} in flight for {:?}",
        cluster.addresses.values().map(|a| a.to_string()).collect::<Vec<_>>().join(", "),
        load.concurrency,
        load.duration
    );
    let mut handles = Vec::new();
    for _ in 0..clients {
        handles.push(cluster.client(ClientOptions::default()).await?);
    }
    let primary = cluster.membership.primary(View(0));
    if let Some(after) = crash_primary_after {
        eprintln!("replica {} (the primary of view 0) will be stopped after {after:?}", primary.0);
    }
    let crash = async {
        if let Some(after) = crash_primary_after {
            actix_rt::time::sleep(after).await;
            cluster.stop_replica(primary);
            // The progress line is rewritten in place; this note goes on a line of its own.
            eprintln!("\n[{:>4.1}s] stopped replica {} (the primary of view 0)", after.as_secs_f64(), primary.0);
        }
    };
    let (report, ()) = tokio::join!(run_load(&handles, &load), crash);
    for client in &handles {
        client.close();
    }
    // Stopped replicas answer no status: the digests and views below are the live ones'.
    let (agree, statuses) = cluster.settle(Duration::from_secs(10)).await;
    for replica in &cluster.replicas {
        match statuses.iter().find(|status| status.id == replica.id) {
            Some(status) => {
                let changing = match status.view_change_target {
                    Some(target) => format!(" (changing to v{})", target.0),
                    None => String::new(),
                };
                eprintln!(
                    "replica {}: view {}{changing} stable {} executed {} digest {}",
                    status.id.0, status.view.0, status.stable.0, status.last_executed.0, status.state_digest
                );
                if let Some(store) = &status.store {
                    let m = &store.metrics;
                    eprintln!(
                        "  store: {} groups in {} fsync'd transactions, {} records / {} KiB written, \
                         {} compactions, {} records held, last commit {} us",
                        store.groups,
                        m.transactions,
                        m.records_written,
                        m.bytes_written / 1024,
                        m.compactions,
                        m.records_stored,
                        m.last_commit_us
                    );
                }
            }
            None => match byzantine.iter().find(|(id, _)| *id == replica.id) {
                Some((_, strategy)) => {
                    eprintln!("replica {}: Byzantine ({}), not checked", replica.id.0, strategy.name())
                }
                None => eprintln!("replica {}: stopped", replica.id.0),
            },
        }
    }
    if let Some(error) = &report.first_error {
        eprintln!("first error: {error}");
    }
    let views = statuses.iter().map(|status| status.view.0).max().unwrap_or(0);
    if !byzantine.is_empty() {
        eprintln!(
            "digest_agree compares the {} correct replicas only ({} Byzantine)",
            replicas - byzantine.len(),
            byzantine.len()
        );
    }
    println!(
        "summary: replicas={replicas} f={f} ops={} ops_per_sec={:.0} p50_ms={:.2} p99_ms={:.2} errors={} views={views} digest_agree={agree}",
        report.completed,
        report.ops_per_sec(),
        report.percentile_ms(0.5),
        report.percentile_ms(0.99),
        report.errors
    );
    cluster.shutdown();
    if !agree {
        bail!("replicas did not reach the same state digest");
    }
    Ok(())
}

/// What `bulwark replica` runs.
#[derive(Debug)]
struct ReplicaOptions {
    config: PathBuf,
    id: u32,
    key: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    metrics_port: Option<u16>,
}

async fn replica<S: Workload>(options: ReplicaOptions) -> anyhow::Result<()> {
    let ReplicaOptions { config, id, key, data_dir, metrics_port } = options;
    let file = ClusterFile::load(&config)?;
    let id = ReplicaId(id);
    let key_file = key.unwrap_or_else(|| key_path(config.parent().unwrap_or(std::path::Path::new(".")), id));
    let key = load_replica_key(&file, id, &key_file)?;
    let membership = file.membership()?;
    let verifier = VerifierPool::start(default_threads(), MembershipHandle::new(membership.clone()));
    let setup = ReplicaSetup {
        id,
        key,
        membership,
        addresses: file.addresses(),
        service: S::default(),
        verifier,
        send_queue_frames_max: 65_536,
        data_dir: data_dir.clone(),
        byzantine: None,
    };
    let arbiter = actix::Arbiter::new();
    let handle = spawn_replica(setup, &arbiter.handle())
        .await
        .with_context(|| format!("starting replica {} at {}", id.0, file.addresses()[&id]))?;
    eprintln!("replica {} listening on {}", id.0, file.addresses()[&id]);
    if let Some(dir) = &data_dir {
        let store = store_path(dir, id);
        match handle.status().await.and_then(|status| status.store) {
            Some(store_status) if store_status.metrics.corrupt_discarded > 0 => eprintln!(
                "durable store {} was corrupt: moved aside, started empty; catching up from the peers",
                store.display()
            ),
            Some(store_status) => eprintln!(
                "durable store {}: recovered from {} records",
                store.display(),
                store_status.metrics.records_loaded
            ),
            None => {}
        }
    }
    if let Some(port) = metrics_port {
        let address = std::net::SocketAddr::from(([0, 0, 0, 0], port));
        let replica = handle.clone();
        actix::spawn(async move {
            if let Err(error) = bulwark_actors::metrics::serve(address, replica).await {
                tracing::error!(%error, %address, "metrics endpoint failed");
            }
        });
        eprintln!("metrics on http://{address}/metrics");
    }
    // Runs until interrupted, or until the replica stops by itself (its store failed).
    let stopped = async {
        while handle.addr.connected() {
            actix_rt::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {
            handle.stop();
            Ok(())
        }
        () = stopped => bail!("replica {} stopped: its durable store failed (see the log above)", id.0),
    }
}

async fn connect<S: Service>(file: &ClusterFile, timeout: Duration) -> anyhow::Result<Client<S>> {
    let membership = file.membership()?;
    let verifier = VerifierPool::start(1, MembershipHandle::new(membership.clone()));
    let key = KeyPair::generate(&mut rand::rngs::OsRng);
    let options = ClientOptions { timeout, ..ClientOptions::default() };
    Ok(Client::connect(membership, file.addresses(), key, verifier, options).await?)
}

fn parse_amount(text: &str) -> anyhow::Result<u64> {
    text.parse().with_context(|| format!("{text:?} is not an amount (a whole number)"))
}

async fn client(config: PathBuf, timeout: Duration, words: Vec<String>) -> anyhow::Result<()> {
    let file = ClusterFile::load(&config)?;
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["status"] => {
            let client = connect::<KvStore>(&file, timeout).await?;
            let reports = client.inquire(Duration::from_secs(2)).await?;
            println!("{:<8} {:>6} {:>8} {:>10}  state digest", "replica", "view", "stable", "executed");
            for report in &reports {
                println!(
                    "{:<8} {:>6} {:>8} {:>10}  {}",
                    report.replica.0,
                    report.view.0,
                    report.stable.0,
                    report.last_executed.0,
                    report.state_digest.to_hex()
                );
            }
            let silent: Vec<u32> =
                file.replicas.iter().map(|r| r.id.0).filter(|id| !reports.iter().any(|r| r.replica.0 == *id)).collect();
            if !silent.is_empty() {
                println!("no answer from: {silent:?}");
            }
            Ok(())
        }
        ["put", key, value] => {
            kv(&file, timeout, KvOp::Put { key: key.to_string(), value: value.as_bytes().to_vec() }).await
        }
        ["append", key, value] => {
            kv(&file, timeout, KvOp::Append { key: key.to_string(), value: value.as_bytes().to_vec() }).await
        }
        ["get", key] => kv(&file, timeout, KvOp::Get { key: key.to_string() }).await,
        ["delete", key] => kv(&file, timeout, KvOp::Delete { key: key.to_string() }).await,
        ["deposit", account, amount] => {
            bank(&file, timeout, BankOp::Deposit { account: account.to_string(), amount: parse_amount(amount)? }).await
        }
        ["withdraw", account, amount] => {
            bank(&file, timeout, BankOp::Withdraw { account: account.to_string(), amount: parse_amount(amount)? }).await
        }
        ["transfer", from, to, amount] => {
            let op = BankOp::Transfer { from: from.to_string(), to: to.to_string(), amount: parse_amount(amount)? };
            bank(&file, timeout, op).await
        }
        ["balance", account] => bank(&file, timeout, BankOp::Balance { account: account.to_string() }).await,
        other => bail!(
            "unknown operation {other:?}; expected one of: put K V | get K | delete K | append K V | \
             deposit A N | withdraw A N | transfer A B N | balance A | status"
        ),
    }
}

async fn kv(file: &ClusterFile, timeout: Duration, op: KvOp) -> anyhow::Result<()> {
    let client = connect::<KvStore>(file, timeout).await?;
    let reply = client.invoke(&op).await?;
    match reply {
        bulwark_examples::kv::KvReply::Value(Some(value)) => {
            println!("{}", String::from_utf8_lossy(&value))
        }
        bulwark_examples::kv::KvReply::Value(None) => println!("(not found)"),
        other => println!("{other:?}"),
    }
    client.close();
    Ok(())
}

async fn bank(file: &ClusterFile, timeout: Duration, op: BankOp) -> anyhow::Result<()> {
    let client = connect::<Bank>(file, timeout).await?;
    println!("{:?}", client.invoke(&op).await?);
    client.close();
    Ok(())
}

/// What `bulwark bench` loads.
#[derive(Debug)]
enum BenchTarget {
    /// A running cluster, by its cluster file.
    Running(PathBuf),
    /// A cluster started in this process (durable with a data dir).
    InProcess { replicas: usize, params: ProtocolParams, data_dir: Option<PathBuf> },
    /// An in-process cluster twice: fault-free, then under `attack`.
    Attack { replicas: usize, params: ProtocolParams, data_dir: Option<PathBuf>, attack: Attack },
}

/// The replica that runs `strategy` under `bulwark bench --attack`: the primary of view 0
/// for the strategies that act as primary, the last replica (a backup) otherwise.
fn attacker(strategy: Strategy, replicas: usize) -> ReplicaId {
    match strategy {
        Strategy::EquivocatingPrimary | Strategy::SkippingPrimary | Strategy::SlowPrimary => ReplicaId(0),
        _ => ReplicaId(replicas.saturating_sub(1) as u32),
    }
}

/// One closed- or open-loop run against a fresh in-process cluster, with Byzantine
/// replicas and a Byzantine client if asked. Returns the load's figures and, with a
/// Byzantine client, what it did.
async fn bench_in_process(
    replicas: usize,
    params: ProtocolParams,
    data_dir: Option<PathBuf>,
    byzantine: &[(ReplicaId, Strategy)],
    client_attack: Option<ClientAttack>,
    clients: usize,
    spec: &LoadSpec,
) -> anyhow::Result<(LoadReport, Option<ClientAttackReport>)> {
    let mut cluster =
        LocalCluster::<Echo>::start_with_byzantine(replicas, params, Echo::default, data_dir, byzantine).await?;
    let mut handles = Vec::new();
    for _ in 0..clients {
        handles.push(cluster.client(ClientOptions::default()).await?);
    }
    let attacker = client_attack.map(|attack| {
        ClientAttacker::start(
            attack,
            Arc::new(cluster.membership.clone()),
            cluster.addresses.clone(),
            CLIENT_ATTACK_STEPS_PER_S,
        )
    });
    let report = run_load(&handles, spec).await;
    let attacked = match attacker {
        Some(attacker) => Some(attacker.stop().await),
        None => None,
    };
    // How much view-change work the shared verifier pool did, and how much it was spared
    // (RUST_LOG=info).
    let heavy = cluster.verifier.heavy_stats();
    tracing::info!(
        verified_in_full = heavy.verified_in_full,
        served_from_cache = heavy.served_from_cache,
        coalesced = heavy.coalesced,
        view_changes_in_new_views_from_cache = heavy.view_changes_in_new_views_from_cache,
        "VIEW-CHANGE and NEW-VIEW verifications"
    );
    for client in &handles {
        client.close();
    }
    cluster.shutdown();
    Ok((report, attacked))
}

async fn bench(target: BenchTarget, clients: usize, spec: LoadSpec, json: bool) -> anyhow::Result<()> {
    let (report, n, client_auth) = match target {
        BenchTarget::Running(path) => {
            let file = ClusterFile::load(&path)?;
            let client_auth = file.params.client_auth;
            let mut handles = Vec::new();
            for _ in 0..clients {
                handles.push(connect::<Echo>(&file, Duration::from_secs(10)).await?);
            }
            (run_load(&handles, &spec).await, file.replicas.len(), client_auth)
        }
        BenchTarget::InProcess { replicas, params, data_dir } => {
            let client_auth = params.client_auth;
            (bench_in_process(replicas, params, data_dir, &[], None, clients, &spec).await?.0, replicas, client_auth)
        }
        BenchTarget::Attack { replicas, params, data_dir, attack } => {
            let client_auth = params.client_auth;
            let rate_min = params.ordering_rate_min_per_s;
            let (byzantine, client_attack) = match attack {
                Attack::Replica(strategy) => (vec![(attacker(strategy, replicas), strategy)], None),
                Attack::Client(client_attack) => (Vec::new(), Some(client_attack)),
            };
            let attacker = byzantine.first().map(|(id, _)| id.0.to_string()).unwrap_or_else(|| "client".into());
            if !json {
                eprintln!("fault-free run");
            }
            let (fault_free, _) =
                bench_in_process(replicas, params.clone(), data_dir.clone(), &[], None, clients, &spec).await?;
            if !json {
                print_bench(&fault_free, &spec, clients, replicas, client_auth, false);
                eprintln!(
                    "run under attack: {} {attacker}: {}",
                    if client_attack.is_some() { "a Byzantine" } else { "replica" },
                    attack.name()
                );
            }
            let (attacked, client_report) =
                bench_in_process(replicas, params, data_dir, &byzantine, client_attack, clients, &spec).await?;
            let fraction = attacked.ops_per_sec() / fault_free.ops_per_sec().max(1e-9);
            let attacker_requests = client_report.map(|r| r.requests_sent);
            let attacker_connections = client_report.map(|r| r.connections_opened);
            if json {
                let value = serde_json::json!({
                    "attack": attack.name(),
                    "byzantine_replica": byzantine.first().map(|(id, _)| id.0),
                    "byzantine_client_requests": attacker_requests,
                    "byzantine_client_connections": attacker_connections,
                    "ordering_rate_min_per_s": rate_min,
                    "fault_free": bench_json(&fault_free, &spec, clients, replicas, client_auth),
                    "under_attack": bench_json(&attacked, &spec, clients, replicas, client_auth),
                    "fault_free_ops_per_sec": fault_free.ops_per_sec(),
                    "attack_ops_per_sec": attacked.ops_per_sec(),
                    "fraction": fraction,
                });
                println!("{value}");
            } else {
                print_bench(&attacked, &spec, clients, replicas, client_auth, false);
                println!("ordering_rate_min_per_s {rate_min}");
                if let Some(report) = client_report {
                    println!(
                        "Byzantine client: {} requests written over {} connections",
                        report.requests_sent, report.connections_opened
                    );
                }
                println!("| attack | Byzantine | fault-free ops/s | under attack ops/s | fraction |");
                println!("|---|---|---|---|---|");
                println!(
                    "| {} | {} | {:.0} | {:.0} | {:.0}% |",
                    attack.name(),
                    attacker,
                    fault_free.ops_per_sec(),
                    attacked.ops_per_sec(),
                    fraction * 100.0
                );
            }
            return Ok(());
        }
    };
    print_bench(&report, &spec, clients, n, client_auth, json);
    Ok(())
}

/// One run's figures, as `bulwark bench --json` prints them.
fn bench_json(
    report: &LoadReport,
    spec: &LoadSpec,
    clients: usize,
    replicas: usize,
    client_auth: ClientAuth,
) -> serde_json::Value {
    let mode = bench_mode(spec, clients);
    serde_json::json!({
        "replicas": replicas,
        "clients": clients,
        "mode": mode,
        "client_auth": client_auth.to_string(),
        "request_bytes": spec.sizes.request_bytes,
        "reply_bytes": spec.sizes.reply_bytes,
        "duration_s": report.elapsed.as_secs_f64(),
        "completed": report.completed,
        "errors": report.errors,
        "shed": report.shed,
        "ops_per_sec": report.ops_per_sec(),
        "p50_ms": report.percentile_ms(0.5),
        "p90_ms": report.percentile_ms(0.9),
        "p99_ms": report.percentile_ms(0.99),
        "p999_ms": report.percentile_ms(0.999),
        "max_ms": report.latency_us.max() as f64 / 1000.0,
        "rss_start_mib": report.rss_start_mib(),
        "rss_end_mib": report.rss_end_mib(),
        "rss_max_mib": report.rss_max_mib(),
        "first_error": report.first_error,
    })
}

fn bench_mode(spec: &LoadSpec, clients: usize) -> String {
    match spec.rate {
        Some(rate) => format!("open loop, {rate:.0} req/s offered"),
        None => format!("closed loop, {clients} clients x {} in flight", spec.concurrency),
    }
}

fn print_bench(
    report: &LoadReport,
    spec: &LoadSpec,
    clients: usize,
    replicas: usize,
    client_auth: ClientAuth,
    json: bool,
) {
    let mode = bench_mode(spec, clients);
    let quantiles = [0.5, 0.9, 0.99, 0.999];
    if json {
        println!("{}", bench_json(report, spec, clients, replicas, client_auth));
        return;
    }
    println!(
        "replicas {replicas}, {mode}, request {} B, reply {} B, client auth {client_auth}",
        spec.sizes.request_bytes, spec.sizes.reply_bytes
    );
    println!("| ops/s | completed | errors | shed | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let percentiles: Vec<String> = quantiles.iter().map(|q| format!("{:.2}", report.percentile_ms(*q))).collect();
    println!(
        "| {:.0} | {} | {} | {} | {} | {:.2} |",
        report.ops_per_sec(),
        report.completed,
        report.errors,
        report.shed,
        percentiles.join(" | "),
        report.latency_us.max() as f64 / 1000.0
    );
    println!(
        "resident memory of this process (with an in-process cluster: every replica and client): \
         {:.1} MiB at start, {:.1} MiB at end, {:.1} MiB highest",
        report.rss_start_mib(),
        report.rss_end_mib(),
        report.rss_max_mib()
    );
    if let Some(error) = &report.first_error {
        println!("first error: {error}");
    }
}
