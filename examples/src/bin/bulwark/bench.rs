//! `bulwark bench`: the load generator, closed or open loop, against a running cluster or
//! one in this process, optionally run twice to measure what an attack costs.

use crate::common::connect;
use bulwark_actors::client::ClientOptions;
use bulwark_actors::config::ClusterFile;
use bulwark_examples::client_attack::{ClientAttackReport, ClientAttacker, CLIENT_ATTACK_STEPS_PER_S};
use bulwark_examples::cluster::{run_load, LoadReport, LoadSpec, LocalCluster, Sizes};
use bulwark_examples::echo::Echo;
use bulwark_framework::config::ClientAuth;
use bulwark_framework::sim::byzantine::Strategy;
use bulwark_framework::sim::byzantine_client::ClientAttack;
use bulwark_framework::{ProtocolParams, ReplicaId};
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use strum::VariantArray;

/// The arguments of `bulwark bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
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

/// Attack requests per second a backup expects ordered under `bulwark bench --attack`
/// unless `--ordering-rate-min` says otherwise: far below what even a starved in-process
/// cluster orders (thousands per second), far above what a slow primary orders (one
/// request per 0.8 view-change timeouts).
const ATTACK_ORDERING_RATE_MIN_PER_S: u64 = 100;

/// Runs `bulwark bench`.
pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let BenchArgs {
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
    } = args;
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
                handles.push(connect::<Echo>(&path, None, Duration::from_secs(10)).await?);
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
