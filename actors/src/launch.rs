//! The entry points a program that replicates its own service starts from: a replica
//! built from a cluster file, its key file and the service in a few lines
//! ([`ReplicaBuilder`]), and a client from a cluster file in one call ([`connect`]).
//! The `bulwark` CLI runs exactly these, with these defaults.
//!
//! ```no_run
//! # use bulwark_actors::launch::{connect, ReplicaBuilder};
//! # use bulwark_actors::client::ClientOptions;
//! # use bulwark_framework::ReplicaId;
//! # async fn replica<S: bulwark_framework::Service + Send + Unpin + Default>() -> Result<(), bulwark_actors::launch::LaunchError> {
//! // One replica process: cluster.toml and replica-2.key as `bulwark keygen` wrote them.
//! let replica = ReplicaBuilder::new("cluster.toml", ReplicaId(2)).data_dir("data").start(S::default()).await?;
//! replica.run_until_interrupted().await?;
//! # Ok(()) }
//! # async fn client<S: bulwark_framework::Service + Send + Unpin>(op: S::Op) -> Result<(), Box<dyn std::error::Error>> {
//! // A client: waits until a quorum of replicas answers, then invokes.
//! let client = connect::<S>("cluster.toml", None, ClientOptions::default()).await?;
//! let reply = client.invoke(&op).await?;
//! # Ok(()) }
//! ```

use crate::client::{Client, ClientOptions, ConnectError};
use crate::config::{key_path, load_replica_key, ClusterFile, ConfigFileError};
use crate::replica::{spawn_replica, ReplicaHandle, ReplicaSetup};
use crate::store::store_path;
use crate::verifier::{default_threads, VerifierPool};
use actix::Arbiter;
use bulwark_crypto::KeyPair;
use bulwark_framework::sim::byzantine::Strategy;
use bulwark_framework::{Membership, MembershipHandle, ReplicaId, Service};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Frames queued per peer connection before the oldest are dropped: what the CLI uses.
pub const SEND_QUEUE_FRAMES_DEFAULT: usize = 65_536;

/// How long [`connect`] waits for a quorum of replicas to answer before it returns the
/// client anyway (its requests then wait for the replicas like any retransmission).
pub const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// Why a replica or a client could not start. Each names the file or address at fault.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Config(#[from] ConfigFileError),
    #[error("replica {id} could not listen on {address}: {source}")]
    Listen { id: ReplicaId, address: SocketAddr, source: std::io::Error },
    #[error("the client could not start: {0}")]
    Client(#[from] ConnectError),
    #[error("waiting for an interrupt: {0}")]
    Signal(std::io::Error),
    #[error("replica {0} stopped: its durable store failed (see the log)")]
    StoreFailed(ReplicaId),
    #[error("invalid protocol parameters: {0}")]
    Params(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Builds one replica process's replica from the cluster file `bulwark keygen` wrote and
/// this replica's key file. Defaults: the key at `replica-<id>.key` beside the cluster file,
/// no durable store, no metrics endpoint, one signature-checking thread per core.
#[derive(Debug, Clone)]
pub struct ReplicaBuilder {
    cluster_file: PathBuf,
    id: ReplicaId,
    key_file: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    metrics_port: Option<u16>,
    verifier_threads: usize,
    send_queue_frames_max: usize,
    byzantine: Option<Strategy>,
}

impl ReplicaBuilder {
    pub fn new(cluster_file: impl Into<PathBuf>, id: ReplicaId) -> Self {
        ReplicaBuilder {
            cluster_file: cluster_file.into(),
            id,
            key_file: None,
            data_dir: None,
            metrics_port: None,
            verifier_threads: default_threads(),
            send_queue_frames_max: SEND_QUEUE_FRAMES_DEFAULT,
            byzantine: None,
        }
    }

    /// The replica's secret key file, if not `replica-<id>.key` beside the cluster file.
    pub fn key_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.key_file = Some(path.into());
        self
    }

    /// Keeps the replica's durable store in `dir/replica-<id>.redb` (created if missing):
    /// everything it must never forget is fsync'd there before it acts on it, and it
    /// recovers from there at the next start. Without it a restarted replica starts empty
    /// and catches up from its peers.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Serves Prometheus metrics on this port, all interfaces.
    pub fn metrics_port(mut self, port: u16) -> Self {
        self.metrics_port = Some(port);
        self
    }

    /// Threads that check signatures (default: one per core).
    pub fn verifier_threads(mut self, threads: usize) -> Self {
        self.verifier_threads = threads.max(1);
        self
    }

    /// Runs one of the simulator's Byzantine strategies instead of the protocol: for
    /// attack tests and demos only.
    pub fn byzantine(mut self, strategy: Strategy) -> Self {
        self.byzantine = Some(strategy);
        self
    }

    /// Starts the replica on an arbiter (thread) of its own. Must be called inside a
    /// running actix System.
    pub async fn start<S: Service + Send + Unpin>(self, service: S) -> Result<RunningReplica<S>, LaunchError> {
        let file = ClusterFile::load(&self.cluster_file)?;
        let id = self.id;
        let key_file =
            self.key_file.clone().unwrap_or_else(|| key_path(self.cluster_file.parent().unwrap_or(Path::new(".")), id));
        let key = load_replica_key(&file, id, &key_file)?;
        let membership = file.membership()?;
        let address = file.addresses()[&id];
        let verifier = VerifierPool::start(self.verifier_threads, MembershipHandle::new(membership.clone()));
        let setup = ReplicaSetup {
            id,
            key,
            membership,
            addresses: file.addresses(),
            service,
            verifier,
            send_queue_frames_max: self.send_queue_frames_max,
            data_dir: self.data_dir.clone(),
            byzantine: self.byzantine,
        };
        let arbiter = Arbiter::new();
        let handle = spawn_replica(setup, &arbiter.handle()).await.map_err(|source| LaunchError::Listen {
            id,
            address,
            source,
        })?;
        tracing::info!(replica = %id, %address, "replica listening");
        let metrics = self.metrics_port.map(|port| SocketAddr::from(([0, 0, 0, 0], port)));
        if let Some(metrics) = metrics {
            let replica = handle.clone();
            actix::spawn(async move {
                if let Err(error) = crate::metrics::serve(metrics, replica).await {
                    tracing::error!(%error, address = %metrics, "metrics endpoint failed");
                }
            });
        }
        let store = self.data_dir.as_deref().map(|dir| store_path(dir, id));
        Ok(RunningReplica { handle, address, store, metrics, _arbiter: arbiter })
    }
}

/// A replica started by [`ReplicaBuilder::start`].
#[derive(Debug)]
pub struct RunningReplica<S: Service + Send + Unpin> {
    pub handle: ReplicaHandle<S>,
    /// Where it listens for peers and clients.
    pub address: SocketAddr,
    /// Its durable store's file, if it has one.
    pub store: Option<PathBuf>,
    /// Where it serves metrics, if it does.
    pub metrics: Option<SocketAddr>,
    _arbiter: Arbiter,
}

impl<S: Service + Send + Unpin> RunningReplica<S> {
    /// Runs until the process is interrupted (Ctrl-C, SIGINT), then stops the replica; or
    /// until the replica stops by itself, which only a failed durable store makes it do.
    pub async fn run_until_interrupted(self) -> Result<(), LaunchError> {
        let stopped = async {
            while self.handle.addr.connected() {
                actix_rt::time::sleep(Duration::from_millis(200)).await;
            }
        };
        tokio::select! {
            signal = tokio::signal::ctrl_c() => {
                self.handle.stop();
                signal.map_err(LaunchError::Signal)
            }
            () = stopped => Err(LaunchError::StoreFailed(self.handle.id)),
        }
    }
}

/// A client of the cluster in `cluster_file`, signing with `key` (a fresh key if `None`),
/// on the current arbiter. Returns once a quorum of replicas answers an INQUIRY (or after
/// [`CONNECT_WAIT`]), so that the first requests do not race the connections being set up.
pub async fn connect<S: Service>(
    cluster_file: impl AsRef<Path>,
    key: Option<KeyPair>,
    options: ClientOptions,
) -> Result<Client<S>, LaunchError> {
    let file = ClusterFile::load(cluster_file.as_ref())?;
    let membership = file.membership()?;
    let key = key.unwrap_or_else(|| KeyPair::generate(&mut rand_core::OsRng));
    let verifier = VerifierPool::start(1, MembershipHandle::new(membership.clone()));
    let client = Client::connect(membership.clone(), file.addresses(), key, verifier, options).await?;
    wait_for_quorum(&client, &membership).await;
    Ok(client)
}

/// Waits until a quorum of `membership` answers `client`'s INQUIRY, at most [`CONNECT_WAIT`].
pub async fn wait_for_quorum<S: Service>(client: &Client<S>, membership: &Membership) {
    let deadline = Instant::now() + CONNECT_WAIT;
    while Instant::now() < deadline {
        let answered = client.inquire(Duration::from_millis(200)).await.map(|r| r.len()).unwrap_or(0);
        if answered >= membership.quorum() {
            break;
        }
    }
}
