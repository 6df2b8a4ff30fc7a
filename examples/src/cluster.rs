//! A local cluster in one process and a load generator: what `bulwark demo` and
//! `bulwark bench` are made of, and what the integration tests drive.

use crate::bank::{Bank, BankOp};
use crate::echo::{Echo, EchoOp};
use crate::kv::{KvOp, KvStore};
use actix::prelude::*;
use bulwark_actors::client::{Client, ClientOptions};
use bulwark_actors::replica::{spawn_replica, ReplicaHandle, ReplicaSetup, ReplicaStatus};
use bulwark_actors::verifier::{default_threads, VerifierPool};
use bulwark_crypto::KeyPair;
use bulwark_framework::sim::byzantine::Strategy;
use bulwark_framework::{ClusterId, Membership, MembershipHandle, ProtocolParams, ReplicaId, Service};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Request and reply payload sizes of a workload (the PBFT paper uses 0/0, 4/0 and 0/4 KiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub request_bytes: usize,
    pub reply_bytes: usize,
}

/// A service that can generate its own benchmark workload.
pub trait Workload: Service + Send + Unpin + Default {
    /// Operation number `index` of client `client`.
    fn operation(rng: &mut rand::rngs::StdRng, client: usize, index: u64, sizes: Sizes) -> Self::Op;
}

impl Workload for KvStore {
    fn operation(rng: &mut rand::rngs::StdRng, _: usize, index: u64, sizes: Sizes) -> KvOp {
        let key = format!("key-{}", rng.gen_range(0..1_000));
        if index % 4 == 3 {
            KvOp::Get { key }
        } else {
            KvOp::Put { key, value: vec![b'v'; sizes.request_bytes] }
        }
    }
}

impl Workload for Bank {
    fn operation(rng: &mut rand::rngs::StdRng, client: usize, index: u64, _: Sizes) -> BankOp {
        let account = |n: u32| format!("account-{n}");
        match index % 3 {
            0 => BankOp::Deposit { account: account(client as u32 % 100), amount: rng.gen_range(1..100) },
            1 => BankOp::Transfer {
                from: account(rng.gen_range(0..100)),
                to: account(rng.gen_range(0..100)),
                amount: rng.gen_range(1..50),
            },
            _ => BankOp::Withdraw { account: account(rng.gen_range(0..100)), amount: rng.gen_range(1..50) },
        }
    }
}

impl Workload for Echo {
    fn operation(_: &mut rand::rngs::StdRng, _: usize, _: u64, sizes: Sizes) -> EchoOp {
        EchoOp { payload: vec![0; sizes.request_bytes], reply_bytes: sizes.reply_bytes as u32, read_only: false }
    }
}

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
}

impl<S: Service + Send + Unpin> std::fmt::Debug for LocalCluster<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalCluster(n={})", self.replicas.len())
    }
}

impl<S: Service + Send + Unpin> LocalCluster<S> {
    /// Starts the cluster. Must be called inside a running actix System.
    pub async fn start(n: usize, params: ProtocolParams, make_service: impl Fn() -> S) -> anyhow::Result<Self> {
        Self::start_in(n, params, make_service, None).await
    }

    /// Starts the cluster with durable replicas when `data_dir` is given: replica `i` keeps
    /// its store in `data_dir/replica-<i>.redb`. Must be called inside a running actix System.
    pub async fn start_in(
        n: usize,
        params: ProtocolParams,
        make_service: impl Fn() -> S,
        data_dir: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
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
    ) -> anyhow::Result<Self> {
        let keys: Vec<KeyPair> = (0..n).map(|_| KeyPair::generate(&mut rand::rngs::OsRng)).collect();
        let membership = Membership::numbered(LOCAL_CLUSTER_ID, keys.iter().map(KeyPair::public).collect(), params)?;
        let addresses = free_local_addresses(n)?;
        let verifier = VerifierPool::start(default_threads(), MembershipHandle::new(membership.clone()));
        let mut replicas = Vec::new();
        let mut arbiters = Vec::new();
        for (index, key) in keys.into_iter().enumerate() {
            let arbiter = Arbiter::new();
            let id = ReplicaId(index as u32);
            let setup = ReplicaSetup {
                id,
                key,
                membership: membership.clone(),
                addresses: addresses.clone(),
                service: make_service(),
                verifier: verifier.clone(),
                send_queue_frames_max: 65_536,
                data_dir: data_dir.clone(),
                byzantine: byzantine.iter().find(|(r, _)| *r == id).map(|(_, strategy)| *strategy),
            };
            replicas.push(spawn_replica(setup, &arbiter.handle()).await?);
            arbiters.push(arbiter);
        }
        Ok(LocalCluster { membership, addresses, replicas, verifier, arbiters })
    }

    /// A client with a fresh key, on its own arbiter (thread).
    pub async fn client(&mut self, options: ClientOptions) -> anyhow::Result<Client<S>> {
        let key = KeyPair::generate(&mut rand::rngs::OsRng);
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
        // Wait until a quorum of replicas answers, so the first requests do not race the
        // connections being set up (and wait out a retransmission timeout).
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let answered = client.inquire(Duration::from_millis(200)).await.map(|r| r.len()).unwrap_or(0);
            if answered >= self.membership.quorum() {
                break;
            }
        }
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

/// How to load a cluster.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Requests each client keeps outstanding (closed loop).
    pub concurrency: usize,
    /// Offered load in requests per second over all clients (open loop); `None` for closed
    /// loop.
    pub rate: Option<f64>,
    pub duration: Duration,
    /// Load applied before measuring starts.
    pub warmup: Duration,
    pub sizes: Sizes,
    /// Print a live progress line to stderr every second.
    pub progress: bool,
    /// Stop measuring once this many operations completed (or when `duration` is up,
    /// whichever comes first).
    pub ops_max: Option<u64>,
}

/// What a load run achieved.
#[derive(Debug)]
pub struct LoadReport {
    pub completed: u64,
    pub errors: u64,
    /// Open loop: requests not issued because every client window was full.
    pub shed: u64,
    pub elapsed: Duration,
    /// Latency in microseconds.
    pub latency_us: Histogram<u64>,
    pub first_error: Option<String>,
    /// Resident memory of this process when measuring started, at its end, and the
    /// highest one-second sample in between (Linux only; `None` elsewhere). With an
    /// in-process cluster this covers every replica and client.
    pub rss_start_bytes: Option<u64>,
    pub rss_end_bytes: Option<u64>,
    pub rss_max_bytes: Option<u64>,
}

/// Resident set size of this process, from `/proc/self/status` (`VmRSS`); `None` where
/// there is no procfs.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn mib(bytes: Option<u64>) -> f64 {
    bytes.map_or(f64::NAN, |b| b as f64 / (1024.0 * 1024.0))
}

impl LoadReport {
    pub fn ops_per_sec(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn percentile_ms(&self, quantile: f64) -> f64 {
        self.latency_us.value_at_quantile(quantile) as f64 / 1000.0
    }

    pub fn rss_start_mib(&self) -> f64 {
        mib(self.rss_start_bytes)
    }

    pub fn rss_end_mib(&self) -> f64 {
        mib(self.rss_end_bytes)
    }

    pub fn rss_max_mib(&self) -> f64 {
        mib(self.rss_max_bytes)
    }
}

#[derive(Debug)]
struct Tally {
    measuring: bool,
    completed: u64,
    errors: u64,
    shed: u64,
    latency_us: Histogram<u64>,
    interval_completed: u64,
    interval_latency_us: Histogram<u64>,
    first_error: Option<String>,
    outstanding: usize,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// How long a closed-loop lane waits after a failed request before the next one.
const ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Runs `spec` against `clients`. Must be called inside a running actix System.
pub async fn run_load<S: Workload>(clients: &[Client<S>], spec: &LoadSpec) -> LoadReport {
    let tally = Rc::new(RefCell::new(Tally {
        measuring: spec.warmup.is_zero(),
        completed: 0,
        errors: 0,
        shed: 0,
        latency_us: histogram(),
        interval_completed: 0,
        interval_latency_us: histogram(),
        first_error: None,
        outstanding: 0,
    }));
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let stop_at = measure_from + spec.duration;
    let one = |client: Client<S>, tally: Rc<RefCell<Tally>>, op: S::Op| async move {
        tally.borrow_mut().outstanding += 1;
        let sent = Instant::now();
        let result = client.invoke(&op).await;
        let failed = result.is_err();
        let mut t = tally.borrow_mut();
        t.outstanding -= 1;
        if !t.measuring {
            return failed;
        }
        match result {
            Ok(_) => {
                let micros = sent.elapsed().as_micros().max(1) as u64;
                t.completed += 1;
                t.interval_completed += 1;
                let _ = t.latency_us.record(micros);
                let _ = t.interval_latency_us.record(micros);
            }
            Err(error) => {
                t.errors += 1;
                if t.first_error.is_none() {
                    t.first_error = Some(error.to_string());
                }
            }
        }
        failed
    };
    let mut tasks = Vec::new();
    match spec.rate {
        None => {
            for (index, client) in clients.iter().enumerate() {
                for lane in 0..spec.concurrency {
                    let client = client.clone();
                    let tally = tally.clone();
                    let sizes = spec.sizes;
                    tasks.push(actix::spawn(async move {
                        let mut rng = rand::rngs::StdRng::seed_from_u64((index * 10_000 + lane) as u64);
                        let mut n = 0;
                        while Instant::now() < stop_at {
                            let op = S::operation(&mut rng, index, n, sizes);
                            n += 1;
                            if one(client.clone(), tally.clone(), op).await {
                                // A lane that failed (a full client window after timeouts,
                                // say) waits before trying again: retrying at once spins
                                // millions of refusals a second and starves the cluster
                                // that shares this process of the CPU it needs to recover.
                                actix_rt::time::sleep(ERROR_BACKOFF).await;
                            }
                        }
                    }));
                }
            }
        }
        Some(rate) => {
            let clients = clients.to_vec();
            let tally = tally.clone();
            let sizes = spec.sizes;
            let cap = clients.len() * spec.concurrency;
            tasks.push(actix::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(7);
                let period = Duration::from_secs_f64(1.0 / rate.max(1.0));
                let mut next = Instant::now();
                let mut n: u64 = 0;
                while Instant::now() < stop_at {
                    // Issue every request that is due; sleep in 1 ms steps to keep timer
                    // overhead low at high rates.
                    while next <= Instant::now() {
                        next += period;
                        let index = (n % clients.len() as u64) as usize;
                        n += 1;
                        if tally.borrow().outstanding >= cap {
                            let mut t = tally.borrow_mut();
                            if t.measuring {
                                t.shed += 1;
                            }
                            continue;
                        }
                        let op = S::operation(&mut rng, index, n, sizes);
                        actix::spawn(one(clients[index].clone(), tally.clone(), op));
                    }
                    actix_rt::time::sleep(Duration::from_millis(1)).await;
                }
            }));
        }
    }
    // Warm-up, then measure, printing progress every second.
    if !spec.warmup.is_zero() {
        actix_rt::time::sleep_until(measure_from.into()).await;
        tally.borrow_mut().measuring = true;
    }
    let measuring_started = Instant::now();
    let rss_start_bytes = resident_bytes();
    let mut rss_max_bytes = rss_start_bytes;
    let mut last_tick = Instant::now();
    // Checked every 10 ms so that `ops_max` ends the run close to the count asked for.
    let check_every = if spec.ops_max.is_some() { Duration::from_millis(10) } else { Duration::from_secs(1) };
    while Instant::now() < stop_at {
        let step = check_every.min(stop_at.saturating_duration_since(Instant::now()));
        actix_rt::time::sleep(step).await;
        let done = spec.ops_max.is_some_and(|max| tally.borrow().completed >= max);
        if !done && last_tick.elapsed() < Duration::from_secs(1) {
            continue;
        }
        let rss = resident_bytes();
        rss_max_bytes = rss_max_bytes.max(rss);
        if spec.progress {
            let mut t = tally.borrow_mut();
            let secs = last_tick.elapsed().as_secs_f64().max(1e-9);
            eprint!(
                "\r[{:>4.0}s] {:>9.0} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms  completed {:>9}  errors {}  rss {:.0} MiB   ",
                measuring_started.elapsed().as_secs_f64(),
                t.interval_completed as f64 / secs,
                t.interval_latency_us.value_at_quantile(0.5) as f64 / 1000.0,
                t.interval_latency_us.value_at_quantile(0.99) as f64 / 1000.0,
                t.completed,
                t.errors,
                mib(rss),
            );
            t.interval_completed = 0;
            t.interval_latency_us.reset();
        }
        last_tick = Instant::now();
        if done {
            break;
        }
    }
    let elapsed = measuring_started.elapsed();
    let rss_end_bytes = resident_bytes();
    rss_max_bytes = rss_max_bytes.max(rss_end_bytes);
    tally.borrow_mut().measuring = false;
    if spec.progress {
        eprintln!();
    }
    for task in tasks {
        task.abort();
    }
    let t = tally.borrow();
    LoadReport {
        completed: t.completed,
        errors: t.errors,
        shed: t.shed,
        elapsed,
        latency_us: t.latency_us.clone(),
        first_error: t.first_error.clone(),
        rss_start_bytes,
        rss_end_bytes,
        rss_max_bytes,
    }
}
