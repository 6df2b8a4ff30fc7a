//! `bulwark replica`: one replica process, from a cluster file and its key, until it is
//! interrupted or its durable store fails.

use crate::ServiceKind;
use anyhow::{bail, Context as _};
use bulwark_actors::config::{key_path, load_replica_key, ClusterFile};
use bulwark_actors::replica::{spawn_replica, ReplicaSetup};
use bulwark_actors::store::store_path;
use bulwark_actors::verifier::{default_threads, VerifierPool};
use bulwark_examples::bank::Bank;
use bulwark_examples::cluster::Workload;
use bulwark_examples::echo::Echo;
use bulwark_examples::kv::KvStore;
use bulwark_framework::{MembershipHandle, ReplicaId};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

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
