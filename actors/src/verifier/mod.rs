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
//!
//! # VIEW-CHANGEs and NEW-VIEWs
//!
//! They are the costly jobs (tens to hundreds of milliseconds each) and arrive many times
//! over (rebroadcast until the view change ends). A copy of one already verified is
//! answered from a cache, and a copy of one already queued waits for that job, without
//! queueing again ([`crate::verified_cache`]). A NEW-VIEW goes ahead of its sender's queued
//! work: it carries the `2f + 1` VIEW-CHANGEs that matter and is what ends the view change,
//! so it must not wait behind that sender's own VIEW-CHANGEs.

use crate::verified_cache::{ContentKey, HeavyVerificationStats, HeavyVerifications, Lookup};
use bulwark_crypto::{Signed, Verified};
use bulwark_framework::messages::{Message as WireMessage, Request, VerifiedMessage};
use bulwark_framework::verify::{
    check_scope, verify_message_with, verify_new_view_with, verify_requests, ClientKeyCache, Refusal, RefusalCounts,
};
use bulwark_framework::{Membership, MembershipHandle, ReplicaId, Scope};
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
    /// The lane for `message` among `membership`'s members.
    pub fn of(message: &WireMessage, membership: &Membership) -> Origin {
        match message.claimed_replica_sender(|view| membership.primary(view)) {
            Some(replica) if membership.is_member(replica) => Origin::Replica(replica),
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

/// Where a job joins its lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// Behind everything waiting in its lane (its sender's queue, for a replica).
    InOrder,
    /// Ahead of its sender's queued work; in the client lane, behind everything as usual.
    /// The sender's turn among the members does not change.
    AheadOfSender,
}

impl Place {
    /// A NEW-VIEW goes ahead of its sender's queue: it carries the VIEW-CHANGEs that
    /// matter and ends the view change. Everything else waits its turn.
    pub(crate) fn of(message: &WireMessage) -> Place {
        match message {
            WireMessage::NewView(_) => Place::AheadOfSender,
            _ => Place::InOrder,
        }
    }
}

impl<J> Schedule<J> {
    #[cfg(test)]
    pub(crate) fn push(&mut self, origin: Origin, job: J) {
        self.push_at(origin, Place::InOrder, job);
    }

    pub(crate) fn push_at(&mut self, origin: Origin, place: Place, job: J) {
        match origin {
            Origin::Client => self.client_jobs.push_back(job),
            Origin::Replica(replica) => {
                let jobs = self.replica_jobs.entry(replica).or_default();
                if jobs.is_empty() {
                    self.replica_turns.push_back(replica);
                }
                match place {
                    Place::InOrder => jobs.push_back(job),
                    Place::AheadOfSender => jobs.push_front(job),
                }
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
    membership: MembershipHandle,
    refused: Arc<Mutex<RefusalCounts>>,
    client_keys: ClientKeyCache,
    heavy: Arc<HeavyVerifications>,
}

impl Worker {
    /// Verifies a message its envelope says is signed in `scope` (see
    /// [`bulwark_framework::verify::verify_envelope`]).
    fn verify(&mut self, scope: Scope, message: WireMessage) -> Result<VerifiedMessage, Refusal> {
        let kind = message.kind();
        let membership = self.membership.current();
        let verdict = check_scope(scope, kind, &membership).and_then(|()| match message {
            // Its VIEW-CHANGEs were most likely verified already, each on its own.
            WireMessage::NewView(signed) => {
                let heavy = &self.heavy;
                verify_new_view_with(signed, &membership, |view_change| heavy.verified_view_change(scope, view_change))
                    .map(|new_view| VerifiedMessage::NewView(Arc::new(new_view)))
            }
            message => verify_message_with(message, &membership, &mut self.client_keys),
        });
        verdict.inspect_err(|refusal| record_refusal(&self.refused, kind.as_str(), refusal))
    }

    fn verify_requests(&mut self, requests: Vec<Signed<Request>>) -> Vec<Result<Verified<Request>, Refusal>> {
        let results = verify_requests(requests, &self.membership.current(), &mut self.client_keys);
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

    fn push(&self, origin: Origin, place: Place, job: Job) -> Result<(), PoolStopped> {
        let mut state = self.lock();
        if state.closed {
            return Err(PoolStopped);
        }
        state.schedule.push_at(origin, place, job);
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
    /// The membership the pool verifies for: a message signed in another cluster or
    /// epoch is refused.
    pub membership: MembershipHandle,
    /// VIEW-CHANGEs and NEW-VIEWs verified or being verified, shared by every caller.
    heavy: Arc<HeavyVerifications>,
}

impl VerifierPool {
    /// Starts `threads` verification workers for `membership`.
    pub fn start(threads: usize, membership: MembershipHandle) -> Self {
        let refused = Arc::new(Mutex::new(RefusalCounts::default()));
        let queue = Arc::new(Queue::default());
        let heavy = Arc::new(HeavyVerifications::default());
        for index in 0..threads.max(1) {
            let queue = queue.clone();
            let mut worker = Worker {
                membership: membership.clone(),
                refused: refused.clone(),
                client_keys: ClientKeyCache::default(),
                heavy: heavy.clone(),
            };
            std::thread::Builder::new()
                .name(format!("verifier-{index}"))
                .spawn(move || {
                    while let Some(job) = queue.next() {
                        job(&mut worker);
                    }
                })
                .expect("starting a verifier thread");
        }
        VerifierPool { _close_on_drop: Arc::new(CloseOnDrop(queue.clone())), queue, refused, membership, heavy }
    }

    /// Verifies one message from the network, in the lane its claimed sender puts it in. A
    /// VIEW-CHANGE or NEW-VIEW from a member is verified once however many copies arrive:
    /// a copy of one verified before is answered at once, a copy of one queued or being
    /// verified waits for that verdict.
    pub async fn verify(
        &self,
        scope: Scope,
        message: WireMessage,
    ) -> Result<Result<VerifiedMessage, Refusal>, PoolStopped> {
        let membership = self.membership.current();
        // Another cluster's or epoch's message is refused before it costs a queue place,
        // and never meets a verdict cached for this one.
        if let Err(refusal) = check_scope(scope, message.kind(), &membership) {
            record_refusal(&self.refused, message.kind().as_str(), &refusal);
            return Ok(Err(refusal));
        }
        let origin = Origin::of(&message, &membership);
        let place = Place::of(&message);
        let heavy = match origin {
            Origin::Replica(sender) => ContentKey::of_heavy(scope, &message).map(|key| (sender, key)),
            Origin::Client => None,
        };
        let Some((sender, key)) = heavy else {
            return self.run_at(origin, place, move |worker| worker.verify(scope, message)).await;
        };
        match self.heavy.lookup(sender, key) {
            Lookup::Verified(message) => Ok(Ok(message)),
            Lookup::InProgress(verdict) => {
                // Closed without a verdict only when the job was dropped unrun.
                let verdict = verdict.await.map_err(|_| PoolStopped)?;
                if let Err(refusal) = &verdict {
                    // Each copy is a message refused, as if it had been verified itself.
                    if let Ok(mut counts) = self.refused.lock() {
                        counts.record(refusal);
                    }
                }
                Ok(verdict)
            }
            Lookup::Absent(verification) => {
                self.run_at(origin, place, move |worker| {
                    let verdict = worker.verify(scope, message);
                    verification.report(&verdict);
                    verdict
                })
                .await
            }
        }
    }

    /// How VIEW-CHANGEs and NEW-VIEWs were answered: verified, from the cache, coalesced.
    pub fn heavy_stats(&self) -> HeavyVerificationStats {
        self.heavy.stats()
    }

    /// Verifies client requests in one job, in the client lane, batch-verified; each
    /// request's verdict is the one it gets alone, so every replica reaches the same verdict
    /// on each (see [`verify_requests`]). One result per request, in order.
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

    /// Queues `work` last in `origin`'s lane and waits for its result.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        origin: Origin,
        work: impl FnOnce(&mut Worker) -> T + Send + 'static,
    ) -> Result<T, PoolStopped> {
        self.run_at(origin, Place::InOrder, work).await
    }

    /// Queues `work` at `place` in `origin`'s lane and waits for its result.
    pub(crate) async fn run_at<T: Send + 'static>(
        &self,
        origin: Origin,
        place: Place,
        work: impl FnOnce(&mut Worker) -> T + Send + 'static,
    ) -> Result<T, PoolStopped> {
        let (result_tx, result_rx) = oneshot::channel();
        self.queue.push(
            origin,
            place,
            Box::new(move |worker| {
                // The asker may have gone (its replica stopped); the result is then unwanted.
                let _ = result_tx.send(work(worker));
            }),
        )?;
        // A job dropped unrun means the pool closed under it.
        result_rx.await.map_err(|_| PoolStopped)
    }
}

/// Counts and logs one refusal at the edge.
fn record_refusal(counts: &Mutex<RefusalCounts>, kind: &str, refusal: &Refusal) {
    tracing::debug!(kind, %refusal, "refused at the edge");
    if let Ok(mut counts) = counts.lock() {
        counts.record(refusal);
    }
}

/// Threads to verify with: one per core, as reported by the OS.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

#[cfg(test)]
mod tests;
