//! `bulwark replica`: one replica process, from a cluster file and its key, until it is
//! interrupted or its durable store fails.

use crate::ServiceKind;
use anyhow::Context as _;
use bulwark_actors::launch::ReplicaBuilder;
use bulwark_examples::bank::Bank;
use bulwark_examples::cluster::Workload;
use bulwark_examples::echo::Echo;
use bulwark_examples::kv::KvStore;
use bulwark_framework::ReplicaId;
use clap::Args;
use std::path::PathBuf;

/// The arguments of `bulwark replica`.
#[derive(Debug, Args)]
pub(crate) struct ReplicaArgs {
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
}

/// Runs `bulwark replica`.
pub(crate) async fn run(args: ReplicaArgs) -> anyhow::Result<()> {
    let ReplicaArgs { config, id, key, service, data_dir, metrics_port } = args;
    let options = ReplicaOptions { config, id, key, data_dir, metrics_port };
    match service {
        ServiceKind::Kv => replica::<KvStore>(options).await,
        ServiceKind::Bank => replica::<Bank>(options).await,
        ServiceKind::Echo => replica::<Echo>(options).await,
    }
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
    let mut builder = ReplicaBuilder::new(&config, ReplicaId(id));
    if let Some(key) = key {
        builder = builder.key_file(key);
    }
    if let Some(dir) = data_dir {
        builder = builder.data_dir(dir);
    }
    if let Some(port) = metrics_port {
        builder = builder.metrics_port(port);
    }
    let replica = builder.start(S::default()).await.with_context(|| format!("starting replica {id}"))?;
    eprintln!("replica {id} listening on {}", replica.address);
    if let Some(store) = &replica.store {
        match replica.handle.status().await.and_then(|status| status.store) {
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
    if let Some(address) = replica.metrics {
        eprintln!("metrics on http://{address}/metrics");
    }
    // Runs until interrupted, or until the replica stops by itself (its store failed).
    Ok(replica.run_until_interrupted().await?)
}
