//! `bulwark demo`: a cluster over loopback TCP in this process, a workload with a live
//! progress line, and a check that the replicas agree. Its options put Byzantine replicas in
//! the cluster or crash the primary, to show the protocol riding them out.

use crate::ServiceKind;
use anyhow::bail;
use bulwark_actors::client::ClientOptions;
use bulwark_examples::bank::Bank;
use bulwark_examples::cluster::{run_load, LoadSpec, LocalCluster, Sizes, Workload};
use bulwark_examples::echo::Echo;
use bulwark_examples::kv::KvStore;
use bulwark_framework::sim::byzantine::Strategy;
use bulwark_framework::{ProtocolParams, ReplicaId, View};
use clap::builder::{PossibleValue, TypedValueParser};
use clap::Args;
use std::ffi::OsStr;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Duration;
use strum::VariantArray;

/// The arguments of `bulwark demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
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

/// Runs `bulwark demo`.
pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let DemoArgs {
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
    } = args;
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
    let spec =
        LoadSpec { concurrency, rate: None, duration, warmup: Duration::ZERO, sizes, progress: true, ops_max: None };
    let demo_spec = DemoSpec { replicas, clients, load: spec, crash_primary_after, data_dir, byzantine };
    match service {
        ServiceKind::Kv => demo::<KvStore>(demo_spec).await,
        ServiceKind::Bank => demo::<Bank>(demo_spec).await,
        ServiceKind::Echo => demo::<Echo>(demo_spec).await,
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
            // On a terminal the progress line is rewritten in place, so this note starts a
            // line of its own; elsewhere every progress line already ends with a newline.
            let newline = if std::io::stderr().is_terminal() { "\n" } else { "" };
            eprintln!("{newline}[{:>4.1}s] stopped replica {} (the primary of view 0)", after.as_secs_f64(), primary.0);
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
