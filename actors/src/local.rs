//! A whole cluster in one process: `n` replicas of a service, each on its own arbiter
//! (thread), over loopback TCP, with clients beside them. For tests, demos and benchmarks
//! of a service before it runs as separate processes (see [`crate::launch`]).

use crate::client::{Client, ClientOptions};
use crate::launch::{wait_for_quorum, LaunchError, SEND_QUEUE_FRAMES_DEFAULT};
use crate::replica::{spawn_replica, ReplicaHandle, ReplicaSetup, ReplicaStatus};
use crate::verifier::{default_threads, VerifierPool};
use actix::Arbiter;
use bulwark_crypto::KeyPair;
use bulwark_framework::sim::byzantine::Strategy;
use bulwark_framework::{ClusterId, Membership, MembershipHandle, ProtocolParams, ReplicaId, Service};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Free TCP ports on 127.0.0.1, one per replica (bound and released: the usual race, fine
/// for a local demo).
pub fn free_local_addresses(count: usize) -> std::io::Result<BTreeMap<ReplicaId, SocketAddr>> {
    let listeners: Vec<TcpListener> = (0..count).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
    listeners.iter().enumerate().map(|(i, l)| Ok((ReplicaId(i as u32), l.local_addr()?))).collect()
}

/// The cluster id of a [`LocalCluster`].
pub const LOCAL_CLUSTER_ID: ClusterId = ClusterId(1);

/// `n` replicas of `S` in this process, each on its own arbiter, over loopback TCP.
pub struct LocalCluster<S: Service + Send + Unpin> {
    /// The cluster's membership (cluster [`LOCAL_CLUSTER_ID`], replicas `0..n`).
    pub membership: Membership,
    pub addresses: BTreeMap<ReplicaId, SocketAddr>,
    pub replicas: Vec<ReplicaHandle<S>>,
    pub verifier: VerifierPool,
    arbiters: Vec<Arbiter>,
    /// What [`LocalCluster::restart`] starts the replicas again with: the seeds of their
    /// keys (a local cluster's keys live and die with the process).
    key_seeds: Vec<[u8; 32]>,
    data_dir: Option<PathBuf>,
}

impl<S: Service + Send + Unpin> std::fmt::Debug for LocalCluster<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalCluster(n={})", self.replicas.len())
    }
}

impl<S: Service + Send + Unpin> LocalCluster<S> {
    /// Starts the cluster. Must be called inside a running actix System.
    pub async fn start(n: usize, params: ProtocolParams, make_service: impl Fn() -> S) -> Result<Self, LaunchError> {
        Self::start_in(n, params, make_service, None).await
    }

    /// Starts the cluster with durable replicas when `data_dir` is given: replica `i` keeps
    /// its store in `data_dir/replica-<i>.redb`. Must be called inside a running actix System.
    pub async fn start_in(
        n: usize,
        params: ProtocolParams,
        make_service: impl Fn() -> S,
        data_dir: Option<PathBuf>,
    ) -> Result<Self, LaunchError> {
        Self::start_with_byzantine(n, params, make_service, data_dir, &[]).await
    }

    /// Starts the cluster with the replicas named in `byzantine` running the simulator's
    /// Byzantine strategies instead of the protocol (they report no status, so [`settle`]
    /// and [`statuses`] cover the correct replicas only). Must be called inside a running
    /// actix System.
    ///
    /// [`settle`]: LocalCluster::settle
    /// [`statuses`]: LocalCluster::statuses
    pub async fn start_with_byzantine(
        n: usize,
        params: ProtocolParams,
        make_service: impl Fn() -> S,
        data_dir: Option<PathBuf>,
        byzantine: &[(ReplicaId, Strategy)],
    ) -> Result<Self, LaunchError> {
        let key_seeds: Vec<[u8; 32]> = (0..n)
            .map(|_| {
                let mut seed = [0u8; 32];
                rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
                seed
            })
            .collect();
        let members = key_seeds.iter().map(|seed| KeyPair::from_seed(*seed).public()).collect();
        let membership =
            Membership::numbered(LOCAL_CLUSTER_ID, members, params).map_err(|e| LaunchError::Params(e.to_string()))?;
        let addresses = free_local_addresses(n)?;
        let verifier = VerifierPool::start(default_threads(), MembershipHandle::new(membership.clone()));
        let mut cluster = LocalCluster {
            membership,
            addresses,
            replicas: Vec::new(),
            verifier,
            arbiters: Vec::new(),
            key_seeds,
            data_dir,
        };
        cluster.spawn_replicas(make_service, byzantine).await?;
        Ok(cluster)
    }

    /// Starts every replica, each on an arbiter of its own, with the cluster's keys,
    /// addresses and data dir.
    async fn spawn_replicas(
        &mut self,
        make_service: impl Fn() -> S,
        byzantine: &[(ReplicaId, Strategy)],
    ) -> Result<(), LaunchError> {
        let mut replicas = Vec::new();
        for (index, seed) in self.key_seeds.iter().enumerate() {
            let arbiter = Arbiter::new();
            let id = ReplicaId(index as u32);
            let setup = ReplicaSetup {
                id,
                key: KeyPair::from_seed(*seed),
                membership: self.membership.clone(),
                addresses: self.addresses.clone(),
                service: make_service(),
                verifier: self.verifier.clone(),
                send_queue_frames_max: SEND_QUEUE_FRAMES_DEFAULT,
                data_dir: self.data_dir.clone(),
                byzantine: byzantine.iter().find(|(r, _)| *r == id).map(|(_, strategy)| *strategy),
            };
            let address = self.addresses[&id];
            let replica = spawn_replica(setup, &arbiter.handle()).await.map_err(|source| LaunchError::Listen {
                id,
                address,
                source,
            })?;
            replicas.push(replica);
            self.arbiters.push(arbiter);
        }
        self.replicas = replicas;
        Ok(())
    }

    /// Stops every replica and starts it again with its key, its address and (for a
    /// durable cluster) its store, as a restart of every process would: each recovers from
    /// its records. Must be called inside a running actix System.
    pub async fn restart(&mut self, make_service: impl Fn() -> S) -> Result<(), LaunchError> {
        for replica in &self.replicas {
            replica.stop();
        }
        // The listeners close with their actors; wait until each address is free again.
        for address in self.addresses.values() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while TcpListener::bind(address).is_err() && Instant::now() < deadline {
                actix_rt::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.spawn_replicas(make_service, &[]).await
    }

    /// A client with a fresh key, on its own arbiter (thread).
    pub async fn client(&mut self, options: ClientOptions) -> Result<Client<S>, LaunchError> {
        let key = KeyPair::generate(&mut rand_core::OsRng);
        let arbiter = Arbiter::new();
        let client = Client::connect_on(
            &arbiter.handle(),
            self.membership.clone(),
            self.addresses.clone(),
            key,
            self.verifier.clone(),
            options,
        )
        .await?;
        self.arbiters.push(arbiter);
        wait_for_quorum(&client, &self.membership).await;
        Ok(client)
    }

    /// Every replica's status (`None` for a stopped or Byzantine one).
    pub async fn statuses(&self) -> Vec<Option<ReplicaStatus>> {
        let mut statuses = Vec::new();
        for replica in &self.replicas {
            statuses.push(replica.status().await);
        }
        statuses
    }

    /// Waits until the running replicas have executed the same sequence number (or
    /// `timeout`), then reports whether their state digests agree.
    pub async fn settle(&self, timeout: Duration) -> (bool, Vec<ReplicaStatus>) {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses: Vec<ReplicaStatus> = self.statuses().await.into_iter().flatten().collect();
            let same_point = statuses.windows(2).all(|w| w[0].last_executed == w[1].last_executed);
            if same_point || Instant::now() >= deadline {
                let agree = same_point && statuses.windows(2).all(|w| w[0].state_digest == w[1].state_digest);
                return (agree, statuses);
            }
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops replica `id` (its actor and connections), as a crash would.
    pub fn stop_replica(&self, id: ReplicaId) {
        if let Some(replica) = self.replicas.iter().find(|replica| replica.id == id) {
            replica.stop();
        }
    }

    /// Stops every replica and its arbiter.
    pub fn shutdown(&self) {
        for replica in &self.replicas {
            replica.stop();
        }
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }
}
