//! Signature verification off the role actors' threads, replicas' traffic first.
//!
//! Verification is the hot path (an ed25519 check costs tens of microseconds, a replica
//! does several per request), so it runs on a pool of OS threads, one per core by default.
//! The pipeline from the transport to a role actor is bounded end to end: a semaphore
//! permit is taken for each inbound message before verification and released only after
//! the role actor has handled it (see `replica::forward`), so a flood of messages costs
//! TCP backpressure, never unbounded queues here.
//!
//! # Replica traffic first (Aardvark)
//!
//! The workers share one queue with two lanes. Protocol messages from replicas (PRE-PREPARE,
//! PREPARE, COMMIT, CHECKPOINT, VIEW-CHANGE, NEW-VIEW, status and state transfer) are taken
//! before client requests: a replica whose pool holds hundreds of client requests must
//! still check a NEW-VIEW before its view-change timer fires, or views turn over while the
//! clients' work waits. Two rules keep that from hurting anyone else:
//!
//! * **Clients are never starved.** After [`REPLICA_JOBS_PER_CLIENT_JOB`] replica jobs in a
//!   row taken while client work waited, the next job is a client one. A replica flooding
//!   valid messages slows clients down by at most that factor; it cannot stop them.
//! * **Replicas share fairly.** Replica work is queued per sending replica and taken round
//!   robin, so one member flooding valid messages gets one turn in as many as there are
//!   members with work waiting, and cannot hold back the others' VIEW-CHANGEs.
//!
//! The lane a message goes to is decided by what it claims ([`Origin::of`]), before it is
//! checked: a client cannot gain anything by claiming to be a replica, since the claim is
//! exactly what the verification checks, and a refused message closes its connection.
//!
//! A single FIFO (actix's `SyncArbiter`, which this replaces) cannot do either: its
//! mailbox serves in arrival order.

use bulwark_crypto::{Signed, Verified};
use bulwark_framework::messages::{Message as WireMessage, Request, VerifiedMessage};
use bulwark_framework::verify::{verify_message_with, verify_requests, ClientKeyCache, Refusal, RefusalCounts};
use bulwark_framework::{ClusterConfig, ReplicaId};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use tokio::sync::oneshot;

/// Replica jobs taken in a row, while client work waits, before one client job is taken.
/// A replica job is mostly one signature (a PREPARE or COMMIT) and a client job a batch of
/// up to 256 requests, so even a flood of replica traffic leaves clients a large share of
/// the pool's time.
pub const REPLICA_JOBS_PER_CLIENT_JOB: usize = 8;

/// Who a message claims to come from: which lane of the verification queue it waits in.
/// Used for scheduling only; the claim itself is what verification checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// Protocol traffic claiming to be signed by this member of the cluster.
    Replica(ReplicaId),
    /// Client requests and inquiries, and anything claiming a sender outside the cluster
    /// (it will be refused; it gets no priority on the way).
    Client,
}

impl Origin {
    /// The lane for `message` in `config`'s cluster.
    pub fn of(message: &WireMessage, config: &ClusterConfig) -> Origin {
        match message.claimed_replica_sender(|view| config.primary(view)) {
            Some(replica) if config.is_member(replica) => Origin::Replica(replica),
            _ => Origin::Client,
        }
    }
}

/// The queue's order: replica lane first, round robin between sending replicas, and a
/// client job after every [`REPLICA_JOBS_PER_CLIENT_JOB`] replica jobs taken while clients
/// waited. Holds whatever a job is; the pool's jobs are closures, the tests' numbers.
#[derive(Debug)]
pub(crate) struct Schedule<J> {
    replica_jobs: BTreeMap<ReplicaId, VecDeque<J>>,
    /// Replicas with work waiting, in the order they get their next turn.
    replica_turns: VecDeque<ReplicaId>,
    client_jobs: VecDeque<J>,
    /// Replica jobs taken since the last client job while client work waited.
    replica_jobs_in_a_row: usize,
}

impl<J> Default for Schedule<J> {
    fn default() -> Self {
        Schedule {
            replica_jobs: BTreeMap::new(),
            replica_turns: VecDeque::new(),
            client_jobs: VecDeque::new(),
            replica_jobs_in_a_row: 0,
        }
    }
}

impl<J> Schedule<J> {
    pub(crate) fn push(&mut self, origin: Origin, job: J) {
        match origin {
            Origin::Client => self.client_jobs.push_back(job),
            Origin::Replica(replica) => {
                let jobs = self.replica_jobs.entry(replica).or_default();
                if jobs.is_empty() {
                    self.replica_turns.push_back(replica);
                }
                jobs.push_back(job);
            }
        }
    }

    /// The next job to run, if any.
    pub(crate) fn pop(&mut self) -> Option<J> {
        let clients_due = self.replica_jobs_in_a_row >= REPLICA_JOBS_PER_CLIENT_JOB;
        if !self.client_jobs.is_empty() && (clients_due || self.replica_turns.is_empty()) {
            self.replica_jobs_in_a_row = 0;
            return self.client_jobs.pop_front();
        }
        let replica = self.replica_turns.pop_front()?;
        let jobs = self.replica_jobs.get_mut(&replica).expect("a replica with a turn has jobs");
        let job = jobs.pop_front().expect("a replica with a turn has jobs");
        if jobs.is_empty() {
            // Dropped, not kept empty: the map holds only members with work waiting.
            self.replica_jobs.remove(&replica);
        } else {
            self.replica_turns.push_back(replica);
        }
        // Counted only while clients wait: a client job arriving later waits for at most
        // `REPLICA_JOBS_PER_CLIENT_JOB` replica jobs, not for a debt run up before it came.
        self.replica_jobs_in_a_row = if self.client_jobs.is_empty() { 0 } else { self.replica_jobs_in_a_row + 1 };
        Some(job)
    }

    pub(crate) fn depth(&self) -> QueueDepth {
        QueueDepth {
            replica_jobs: self.replica_jobs.values().map(VecDeque::len).sum(),
            client_jobs: self.client_jobs.len(),
        }
    }
}

/// Jobs waiting in the verification queue (not those being run), per lane.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDepth {
    pub replica_jobs: usize,
    pub client_jobs: usize,
}

/// What a worker thread keeps between jobs.
#[derive(Debug)]
pub(crate) struct Worker {
    config: Arc<ClusterConfig>,
    refused: Arc<Mutex<RefusalCounts>>,
    client_keys: ClientKeyCache,
}

impl Worker {
    fn verify(&mut self, message: WireMessage) -> Result<VerifiedMessage, Refusal> {
        let kind = message.kind();
        verify_message_with(message, &self.config, &mut self.client_keys).inspect_err(|refusal| {
            tracing::debug!(kind = kind.as_str(), %refusal, "refused at the edge");
            if let Ok(mut counts) = self.refused.lock() {
                counts.record(refusal);
            }
        })
    }

    fn verify_requests(&mut self, requests: Vec<Signed<Request>>) -> Vec<Result<Verified<Request>, Refusal>> {
        let results = verify_requests(requests, &self.config, &mut self.client_keys);
        for refusal in results.iter().filter_map(|r| r.as_ref().err()) {
            tracing::debug!(%refusal, "request refused at the edge");
            if let Ok(mut counts) = self.refused.lock() {
                counts.record(refusal);
            }
        }
        results
    }
}

pub(crate) type Job = Box<dyn FnOnce(&mut Worker) + Send>;

/// The queue the workers wait on.
#[derive(Debug, Default)]
struct Queue {
    state: Mutex<QueueState>,
    work_waiting: Condvar,
}

#[derive(Default)]
struct QueueState {
    schedule: Schedule<Job>,
    /// Every handle of the pool is gone: workers finish and leave.
    closed: bool,
}

impl std::fmt::Debug for QueueState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueState").field("depth", &self.schedule.depth()).field("closed", &self.closed).finish()
    }
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A job that panicked poisons nothing worth refusing: the schedule is updated
        // only outside jobs.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, origin: Origin, job: Job) -> Result<(), PoolStopped> {
        let mut state = self.lock();
        if state.closed {
            return Err(PoolStopped);
        }
        state.schedule.push(origin, job);
        drop(state);
        self.work_waiting.notify_one();
        Ok(())
    }

    /// The next job, waiting for one; `None` once the pool is closed.
    fn next(&self) -> Option<Job> {
        let mut state = self.lock();
        loop {
            if state.closed {
                return None;
            }
            if let Some(job) = state.schedule.pop() {
                return Some(job);
            }
            state = self.work_waiting.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.work_waiting.notify_all();
    }
}

/// Closes the queue when the last handle of the pool is dropped, so the workers end.
#[derive(Debug)]
struct CloseOnDrop(Arc<Queue>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The pool stopped (every handle was dropped) before the job ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the verifier pool has stopped")]
pub struct PoolStopped;

/// A pool of verification threads, the queue they share and the refusal counters. Cheap
/// to clone; the threads end when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct VerifierPool {
    queue: Arc<Queue>,
    _close_on_drop: Arc<CloseOnDrop>,
    pub refused: Arc<Mutex<RefusalCounts>>,
    /// The cluster the pool verifies for.
    pub config: Arc<ClusterConfig>,
}

impl VerifierPool {
    /// Starts `threads` verification workers for `config`.
    pub fn start(threads: usize, config: Arc<ClusterConfig>) -> Self {
        let refused = Arc::new(Mutex::new(RefusalCounts::default()));
        let queue = Arc::new(Queue::default());
        for index in 0..threads.max(1) {
            let queue = queue.clone();
            let mut worker =
                Worker { config: config.clone(), refused: refused.clone(), client_keys: ClientKeyCache::default() };
            std::thread::Builder::new()
                .name(format!("verifier-{index}"))
                .spawn(move || {
                    while let Some(job) = queue.next() {
                        job(&mut worker);
                    }
                })
                .expect("starting a verifier thread");
        }
        VerifierPool { _close_on_drop: Arc::new(CloseOnDrop(queue.clone())), queue, refused, config }
    }

    /// Verifies one message from the network, in the lane its claimed sender puts it in.
    pub async fn verify(&self, message: WireMessage) -> Result<Result<VerifiedMessage, Refusal>, PoolStopped> {
        let origin = Origin::of(&message, &self.config);
        self.run(origin, move |worker| worker.verify(message)).await
    }

    /// Verifies client requests in one job, in the client lane: each checked alone with
    /// `verify_strict`, never batch-verified, so every replica reaches the same verdict on
    /// each (see [`verify_requests`]). One result per request, in order.
    pub async fn verify_requests(
        &self,
        requests: Vec<Signed<Request>>,
    ) -> Result<Vec<Result<Verified<Request>, Refusal>>, PoolStopped> {
        self.run(Origin::Client, move |worker| worker.verify_requests(requests)).await
    }

    /// Jobs waiting (not running), per lane.
    pub fn depth(&self) -> QueueDepth {
        self.queue.lock().schedule.depth()
    }

    /// A copy of the refusal counters.
    pub fn refused(&self) -> RefusalCounts {
        self.refused.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Queues `work` in `origin`'s lane and waits for its result.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        origin: Origin,
        work: impl FnOnce(&mut Worker) -> T + Send + 'static,
    ) -> Result<T, PoolStopped> {
        let (result_tx, result_rx) = oneshot::channel();
        self.queue.push(
            origin,
            Box::new(move |worker| {
                // The asker may have gone (its replica stopped); the result is then unwanted.
                let _ = result_tx.send(work(worker));
            }),
        )?;
        // A job dropped unrun means the pool closed under it.
        result_rx.await.map_err(|_| PoolStopped)
    }
}

/// Threads to verify with: one per core, as reported by the OS.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_crypto::{Digest, KeyPair};
    use bulwark_framework::messages::Prepare;
    use bulwark_framework::{ProtocolParams, SeqNum, Timestamp, View};
    use std::time::Duration;

    fn replica_key(i: u32) -> KeyPair {
        KeyPair::from_seed([i as u8 + 1; 32])
    }

    fn cluster() -> Arc<ClusterConfig> {
        let members = (0..4).map(|i| replica_key(i).public()).collect();
        Arc::new(ClusterConfig::new(members, ProtocolParams::default()).unwrap())
    }

    fn prepare(replica: u32, seq: u64) -> WireMessage {
        let payload =
            Prepare { view: View(0), seq: SeqNum(seq), digest: Digest::of(b"batch"), replica: ReplicaId(replica) };
        WireMessage::Prepare(Signed::sign(payload, &replica_key(replica)).unwrap())
    }

    fn request(client: u8, timestamp: u64) -> Signed<Request> {
        let key = KeyPair::from_seed([100 + client; 32]);
        let payload = Request {
            client_key: key.public().into(),
            timestamp: Timestamp(timestamp),
            read_only: false,
            operation: vec![],
        };
        Signed::sign(payload, &key).unwrap()
    }

    /// Polls `condition` every millisecond for up to thirty seconds (the machine may be busy).
    async fn eventually(what: &str, condition: impl Fn() -> bool) {
        for _ in 0..30_000 {
            if condition() {
                return;
            }
            actix_rt::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("timed out waiting until {what}");
    }

    /// Occupies the pool's only worker until the returned sender is dropped or sent to, so
    /// that everything queued meanwhile is ordered by the schedule alone.
    async fn hold_the_only_worker(pool: &VerifierPool) -> std::sync::mpsc::Sender<()> {
        let (release, released) = std::sync::mpsc::channel::<()>();
        let holder = pool.clone();
        actix_rt::spawn(async move {
            holder
                .run(Origin::Client, move |_| {
                    let _ = released.recv();
                })
                .await
        });
        eventually("the worker took the holding job", || pool.depth() == QueueDepth::default()).await;
        release
    }

    #[test]
    fn a_replica_job_is_taken_before_every_waiting_client_job() {
        let mut schedule = Schedule::default();
        for job in 0..100 {
            schedule.push(Origin::Client, job);
        }
        schedule.push(Origin::Replica(ReplicaId(2)), 1_000);
        assert_eq!(schedule.pop(), Some(1_000), "the replica job jumps the client queue");
        assert_eq!(schedule.pop(), Some(0), "then clients, in their order");
        assert_eq!(schedule.depth(), QueueDepth { replica_jobs: 0, client_jobs: 99 });
    }

    #[test]
    fn clients_get_one_job_in_every_few_under_a_replica_flood() {
        let mut schedule = Schedule::default();
        for job in 0..10 {
            schedule.push(Origin::Client, job);
        }
        let mut client_jobs_taken = Vec::new();
        for taken in 1..=10 * (REPLICA_JOBS_PER_CLIENT_JOB + 1) {
            // The replica lane never runs dry: a member floods valid messages.
            schedule.push(Origin::Replica(ReplicaId(1)), 1_000 + taken as i32);
            let job = schedule.pop().expect("work is waiting");
            if job < 1_000 {
                client_jobs_taken.push((job, taken));
            }
        }
        let expected: Vec<(i32, usize)> =
            (0..10).map(|job| (job, (job as usize + 1) * (REPLICA_JOBS_PER_CLIENT_JOB + 1))).collect();
        assert_eq!(client_jobs_taken, expected, "a client job after every {REPLICA_JOBS_PER_CLIENT_JOB} replica jobs");
    }

    #[test]
    fn a_client_job_arriving_after_a_run_of_replica_jobs_does_not_jump_the_replicas() {
        let mut schedule = Schedule::default();
        for job in 0..100 {
            schedule.push(Origin::Replica(ReplicaId(1)), job);
        }
        for _ in 0..50 {
            schedule.pop();
        }
        schedule.push(Origin::Client, 1_000);
        let before_client: Vec<i32> = std::iter::from_fn(|| schedule.pop()).take_while(|job| *job != 1_000).collect();
        assert_eq!(
            before_client.len(),
            REPLICA_JOBS_PER_CLIENT_JOB,
            "replica jobs taken before clients were waiting earn clients nothing"
        );
    }

    #[test]
    fn members_take_turns_so_one_flooding_replica_cannot_hold_back_another() {
        let mut schedule = Schedule::default();
        for job in 0..1_000 {
            schedule.push(Origin::Replica(ReplicaId(1)), job);
        }
        schedule.push(Origin::Replica(ReplicaId(2)), 5_000);
        schedule.push(Origin::Replica(ReplicaId(3)), 6_000);
        let first: Vec<i32> = (0..4).map(|_| schedule.pop().unwrap()).collect();
        assert_eq!(first, vec![0, 5_000, 6_000, 1], "one job per member with work waiting, in turn");
        assert_eq!(schedule.depth().replica_jobs, 998);
    }

    #[test]
    fn a_message_claiming_a_sender_outside_the_cluster_gets_no_priority() {
        let config = cluster();
        assert_eq!(Origin::of(&prepare(1, 1), &config), Origin::Replica(ReplicaId(1)));
        assert_eq!(Origin::of(&WireMessage::Request(request(1, 1)), &config), Origin::Client);
        // Signed by a key outside the cluster, claiming member id 9 of 4.
        let stranger = Prepare { view: View(0), seq: SeqNum(1), digest: Digest::of(b"batch"), replica: ReplicaId(9) };
        let stranger = WireMessage::Prepare(Signed::sign(stranger, &replica_key(9)).unwrap());
        assert_eq!(Origin::of(&stranger, &config), Origin::Client);
    }

    /// Queues `message` as [`VerifierPool::verify`] does, noting `label` in `log` on the
    /// worker thread when it runs, so the test sees the order jobs ran in, however the
    /// tasks waiting for them are scheduled.
    fn verify_logged(
        pool: &VerifierPool,
        log: &Arc<Mutex<Vec<&'static str>>>,
        label: &'static str,
        message: WireMessage,
    ) -> actix_rt::task::JoinHandle<Result<Result<VerifiedMessage, Refusal>, PoolStopped>> {
        let (pool, log) = (pool.clone(), log.clone());
        let origin = Origin::of(&message, &pool.config);
        actix_rt::spawn(async move {
            pool.run(origin, move |worker| {
                log.lock().unwrap().push(label);
                worker.verify(message)
            })
            .await
        })
    }

    type RequestResults = Vec<Result<Verified<Request>, Refusal>>;

    /// As [`verify_logged`], for a batch of client requests.
    fn verify_requests_logged(
        pool: &VerifierPool,
        log: &Arc<Mutex<Vec<&'static str>>>,
        requests: Vec<Signed<Request>>,
    ) -> actix_rt::task::JoinHandle<Result<RequestResults, PoolStopped>> {
        let (pool, log) = (pool.clone(), log.clone());
        actix_rt::spawn(async move {
            pool.run(Origin::Client, move |worker| {
                log.lock().unwrap().push("client");
                worker.verify_requests(requests)
            })
            .await
        })
    }

    /// The fix for view turnover under load: with the clients' lane full of batches, a
    /// PREPARE is verified next, not after them.
    #[actix_rt::test]
    async fn with_the_client_lane_full_a_replica_message_is_verified_next() {
        let pool = VerifierPool::start(1, cluster());
        let log = Arc::new(Mutex::new(Vec::new()));
        let release = hold_the_only_worker(&pool).await;
        let client_batches = 64;
        let batches: Vec<_> = (0..client_batches)
            .map(|batch| verify_requests_logged(&pool, &log, (0..16).map(|t| request(batch as u8, t)).collect()))
            .collect();
        eventually("the client batches are queued", || pool.depth().client_jobs == client_batches).await;
        let verified_prepare = verify_logged(&pool, &log, "prepare", prepare(1, 7));
        eventually("the PREPARE is queued", || pool.depth().replica_jobs == 1).await;
        release.send(()).unwrap();
        let verified = verified_prepare.await.unwrap();
        assert!(matches!(verified, Ok(Ok(VerifiedMessage::Prepare(_)))), "{verified:?}");
        for batch in batches {
            let results = batch.await.unwrap().expect("pool running");
            assert!(results.iter().all(Result::is_ok), "every client request still verified");
        }
        let log = log.lock().unwrap();
        assert_eq!(log.len(), client_batches + 1);
        assert_eq!(log[0], "prepare", "the PREPARE waited behind client batches: {log:?}");
    }

    /// The other side: a member flooding valid messages slows clients down, it does not
    /// stop them.
    #[actix_rt::test]
    async fn client_requests_still_progress_while_a_replica_floods() {
        let pool = VerifierPool::start(1, cluster());
        let log = Arc::new(Mutex::new(Vec::new()));
        let release = hold_the_only_worker(&pool).await;
        let flood = 400;
        let prepares: Vec<_> = (0..flood).map(|seq| verify_logged(&pool, &log, "prepare", prepare(2, seq))).collect();
        eventually("the flood is queued", || pool.depth().replica_jobs == flood as usize).await;
        let client_batches = 5;
        let batches: Vec<_> = (0..client_batches)
            .map(|batch| verify_requests_logged(&pool, &log, (0..4).map(|t| request(batch as u8, t)).collect()))
            .collect();
        eventually("the client batches are queued", || pool.depth().client_jobs == client_batches).await;
        release.send(()).unwrap();
        for batch in batches {
            assert!(batch.await.unwrap().expect("pool running").iter().all(Result::is_ok));
        }
        for prepare in prepares {
            assert!(matches!(prepare.await.unwrap(), Ok(Ok(VerifiedMessage::Prepare(_)))));
        }
        let log = log.lock().unwrap();
        let client_turns: Vec<usize> =
            log.iter().enumerate().filter(|(_, label)| **label == "client").map(|(turn, _)| turn).collect();
        let expected: Vec<usize> = (1..=client_batches).map(|k| k * (REPLICA_JOBS_PER_CLIENT_JOB + 1) - 1).collect();
        assert_eq!(client_turns, expected, "one client job after every {REPLICA_JOBS_PER_CLIENT_JOB} of the flood");
    }

    #[actix_rt::test]
    async fn the_workers_end_when_the_last_handle_is_dropped() {
        let pool = VerifierPool::start(2, cluster());
        let queue = Arc::downgrade(&pool.queue);
        assert!(pool.verify(prepare(1, 1)).await.unwrap().is_ok());
        drop(pool);
        // Each worker holds the queue until it leaves.
        eventually("the workers left", || queue.strong_count() == 0).await;
    }
}
