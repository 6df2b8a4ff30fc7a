//! `bulwark`: run a local demo cluster, generate keys, run replicas and clients, benchmark.

mod bench;
mod client;
mod common;
mod demo;
mod keygen;
mod replica;
mod sim;
mod sim_sites;

use clap::{Parser, Subcommand, ValueEnum};

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
    Demo(demo::DemoArgs),
    /// Generate a cluster: DIR/cluster.toml and one secret key file per replica.
    Keygen(keygen::KeygenArgs),
    /// Run one replica process until interrupted.
    Replica(replica::ReplicaArgs),
    /// Run one operation against a cluster, or `status` to see every replica.
    ///
    /// Operations: put K V | get K | delete K | append K V (kv);
    /// deposit A N | withdraw A N | transfer A B N | balance A (bank); status.
    Client(client::ClientArgs),
    /// Load generator: closed loop (N clients) or open loop (fixed rate), against a running
    /// cluster (--config) or an in-process one; prints throughput and latency percentiles.
    Bench(bench::BenchArgs),
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
    ///
    /// With --sites S it runs Steward instead: S sites of --replicas-per-site replicas over a
    /// simulated WAN with loss, duplication and jitter, LAN loss, and up to f Byzantine
    /// replicas per site (bad shares, conflicting shares, silence, equivocating votes,
    /// replays), checking GI1-GI5 after every step. --byzantine-per-site f+1 is the negative
    /// control. --figures prints Steward against flat PBFT on the same simulated WAN.
    Sim(sim::SimArgs),
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
        Command::Demo(args) => demo::run(args).await,
        Command::Keygen(args) => keygen::run(args),
        Command::Replica(args) => replica::run(args).await,
        Command::Client(args) => client::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Sim(args) => sim::run(args),
    }
}
