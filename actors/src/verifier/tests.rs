//! The verifier pool under load, floods and bad input: verdicts, batching, lanes, caches.

use super::*;
use bulwark_crypto::{Digest, KeyPair, Signed};
use bulwark_framework::messages::{MessageKind, NewView, Prepare, ViewChange};
use bulwark_framework::verify::{verify_message, RefusalKind};
use bulwark_framework::wire;
use bulwark_framework::{SeqNum, Timestamp, View};
use std::time::Duration;

use crate::test_fixtures::{cluster, replica_key, signed_view_change};

fn prepare(replica: u32, seq: u64) -> WireMessage {
    let payload =
        Prepare { view: View(0), seq: SeqNum(seq), digest: Digest::of(b"batch"), replica: ReplicaId(replica) };
    WireMessage::Prepare(crate::test_fixtures::sign(payload, &replica_key(replica)))
}

/// A valid VIEW-CHANGE to `view` with no certificates (cheap to verify; the cache
/// does not care what it costs).
fn view_change(replica: u32, view: u64) -> WireMessage {
    WireMessage::ViewChange(signed_view_change(replica, view))
}

/// A NEW-VIEW for view 1 (primary: replica 1) over `view_changes`; with no prepared
/// certificates in them, `O` is empty.
fn new_view(view_changes: Vec<Signed<ViewChange>>) -> WireMessage {
    let payload = NewView { view: View(1), view_changes, pre_prepares: vec![] };
    WireMessage::NewView(crate::test_fixtures::sign(payload, &replica_key(1)))
}

/// `message` with the last byte of its encoding flipped: a byte of its signature.
fn one_byte_changed(message: &WireMessage) -> WireMessage {
    let mut encoded = wire::encode(crate::test_fixtures::SCOPE, message).unwrap();
    *encoded.last_mut().unwrap() ^= 1;
    let tampered = wire::decode(&encoded, usize::MAX).unwrap().message;
    assert_ne!(&tampered, message);
    tampered
}

fn request(client: u8, timestamp: u64) -> Signed<Request> {
    let key = KeyPair::from_seed([100 + client; 32]);
    let payload = Request {
        client_key: key.public().into(),
        timestamp: Timestamp(timestamp),
        read_only: false,
        operation: vec![],
    };
    crate::test_fixtures::sign(payload, &key)
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
    let taken = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (holder, holding) = (pool.clone(), taken.clone());
    actix_rt::spawn(async move {
        holder
            .run(Origin::Client, move |_| {
                holding.store(true, std::sync::atomic::Ordering::SeqCst);
                let _ = released.recv();
            })
            .await
    });
    // Waiting for the job to run, not for the queue to be empty: the queue is empty
    // before the job is even pushed, and a job pushed before the worker took this one
    // would run first on a busy machine.
    eventually("the worker took the holding job", || taken.load(std::sync::atomic::Ordering::SeqCst)).await;
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
    let stranger = WireMessage::Prepare(crate::test_fixtures::sign(stranger, &replica_key(9)));
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
    let origin = Origin::of(&message, &pool.membership.current());
    actix_rt::spawn(async move {
        pool.run(origin, move |worker| {
            log.lock().unwrap().push(label);
            worker.verify(crate::test_fixtures::SCOPE, message)
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
    let pool = VerifierPool::start(1, crate::test_fixtures::handle());
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
    let pool = VerifierPool::start(1, crate::test_fixtures::handle());
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
async fn a_repeated_view_change_is_verified_once() {
    let pool = VerifierPool::start(2, crate::test_fixtures::handle());
    let first = pool.verify(crate::test_fixtures::SCOPE, view_change(1, 1)).await.unwrap().expect("valid");
    for _ in 0..9 {
        let again = pool.verify(crate::test_fixtures::SCOPE, view_change(1, 1)).await.unwrap().expect("still valid");
        assert_eq!(again, first);
    }
    let stats = pool.heavy_stats();
    assert_eq!((stats.verified_in_full, stats.served_from_cache, stats.coalesced), (1, 9, 0), "{stats:?}");
    assert_eq!(
        pool.verify(crate::test_fixtures::SCOPE, view_change(1, 2)).await.unwrap().map(|m| m.kind()),
        Ok(MessageKind::ViewChange)
    );
    assert_eq!(pool.heavy_stats().verified_in_full, 2, "another view's VIEW-CHANGE is another message");
}

#[actix_rt::test]
async fn copies_queued_behind_an_identical_view_change_wait_for_its_verdict() {
    let pool = VerifierPool::start(1, crate::test_fixtures::handle());
    let release = hold_the_only_worker(&pool).await;
    let copies: Vec<_> = (0..5)
        .map(|_| {
            let pool = pool.clone();
            actix_rt::spawn(async move { pool.verify(crate::test_fixtures::SCOPE, view_change(2, 1)).await })
        })
        .collect();
    eventually("every copy has asked", || pool.heavy_stats().coalesced == 4).await;
    assert_eq!(pool.depth().replica_jobs, 1, "one job queued for five copies");
    release.send(()).unwrap();
    for copy in copies {
        assert!(matches!(copy.await.unwrap(), Ok(Ok(VerifiedMessage::ViewChange(_)))));
    }
    assert_eq!(pool.heavy_stats().verified_in_full, 1);
}

#[actix_rt::test]
async fn a_view_change_with_one_byte_changed_is_not_served_from_the_cache() {
    let pool = VerifierPool::start(1, crate::test_fixtures::handle());
    let original = view_change(1, 1);
    assert!(pool.verify(crate::test_fixtures::SCOPE, original.clone()).await.unwrap().is_ok());
    let refused = pool.verify(crate::test_fixtures::SCOPE, one_byte_changed(&original)).await.unwrap();
    assert_eq!(refused, Err(Refusal::BadSignature { kind: MessageKind::ViewChange }));
    assert_eq!(pool.heavy_stats().verified_in_full, 2, "the tampered copy was verified, not looked up");
    assert!(pool.verify(crate::test_fixtures::SCOPE, original).await.unwrap().is_ok(), "the original is still served");
    assert_eq!(pool.heavy_stats().served_from_cache, 1);
}

#[actix_rt::test]
async fn a_refused_view_change_is_not_cached() {
    let pool = VerifierPool::start(1, crate::test_fixtures::handle());
    let forged = one_byte_changed(&view_change(3, 1));
    for attempt in 1..=3 {
        let verdict = pool.verify(crate::test_fixtures::SCOPE, forged.clone()).await.unwrap();
        assert_eq!(verdict, Err(Refusal::BadSignature { kind: MessageKind::ViewChange }));
        let stats = pool.heavy_stats();
        assert_eq!((stats.verified_in_full, stats.served_from_cache, stats.cached), (attempt, 0, 0), "{stats:?}");
    }
    assert_eq!(pool.refused().get(RefusalKind::BadSignature), 3);
}

#[actix_rt::test]
async fn copies_waiting_on_a_refused_view_change_are_refused_and_counted() {
    let pool = VerifierPool::start(1, crate::test_fixtures::handle());
    let release = hold_the_only_worker(&pool).await;
    let forged = one_byte_changed(&view_change(3, 1));
    let copies: Vec<_> = (0..3)
        .map(|_| {
            let (pool, forged) = (pool.clone(), forged.clone());
            actix_rt::spawn(async move { pool.verify(crate::test_fixtures::SCOPE, forged).await })
        })
        .collect();
    eventually("every copy has asked", || pool.heavy_stats().coalesced == 2).await;
    release.send(()).unwrap();
    for copy in copies {
        assert_eq!(copy.await.unwrap(), Ok(Err(Refusal::BadSignature { kind: MessageKind::ViewChange })));
    }
    assert_eq!(pool.refused().get(RefusalKind::BadSignature), 3, "every copy counted as refused");
    assert_eq!(pool.heavy_stats().cached, 0);
}

#[actix_rt::test]
async fn the_cache_stays_within_its_bound_under_many_distinct_view_changes() {
    let pool = VerifierPool::start(2, crate::test_fixtures::handle());
    for view in 1..=40 {
        for replica in 0..4 {
            assert!(pool.verify(crate::test_fixtures::SCOPE, view_change(replica, view)).await.unwrap().is_ok());
        }
        assert!(pool.heavy_stats().cached <= 4 * crate::verified_cache::ENTRIES_PER_MEMBER);
    }
    let stats = pool.heavy_stats();
    assert_eq!(stats.cached, 4 * crate::verified_cache::ENTRIES_PER_MEMBER);
    assert_eq!(stats.verified_in_full, 160);
    assert!(pool.verify(crate::test_fixtures::SCOPE, view_change(0, 40)).await.unwrap().is_ok());
    assert_eq!(pool.heavy_stats().served_from_cache, 1, "the newest are the ones kept");
}

/// Replicas 0..3's VIEW-CHANGEs to `view`, each verified (and so cached) by `pool`.
async fn cache_view_changes(pool: &VerifierPool, view: u64) -> Vec<Signed<ViewChange>> {
    let view_changes: Vec<_> = (0..3).map(|replica| signed_view_change(replica, view)).collect();
    for view_change in &view_changes {
        let verdict = pool.verify(crate::test_fixtures::SCOPE, WireMessage::ViewChange(view_change.clone())).await;
        assert!(verdict.unwrap().is_ok());
    }
    view_changes
}

#[actix_rt::test]
async fn a_new_view_takes_the_view_changes_it_carries_from_the_cache() {
    let pool = VerifierPool::start(1, crate::test_fixtures::handle());
    let view_changes = cache_view_changes(&pool, 1).await;
    let new_view = new_view(view_changes);
    let verified = pool.verify(crate::test_fixtures::SCOPE, new_view.clone()).await.unwrap();
    assert_eq!(verified, verify_message(new_view, &pool.membership.current()), "the same verdict as from scratch");
    assert!(matches!(verified, Ok(VerifiedMessage::NewView(_))), "{verified:?}");
    let stats = pool.heavy_stats();
    assert_eq!(stats.view_changes_in_new_views_from_cache, 3, "{stats:?}");
    assert_eq!(stats.verified_in_full, 4);
}

#[actix_rt::test]
async fn a_new_view_carrying_a_view_change_with_one_byte_changed_is_refused_though_the_original_is_cached() {
    let pool = VerifierPool::start(1, crate::test_fixtures::handle());
    let view_changes = cache_view_changes(&pool, 1).await;
    let mut carried = view_changes;
    let WireMessage::ViewChange(tampered) = one_byte_changed(&WireMessage::ViewChange(carried[2].clone())) else {
        unreachable!("a VIEW-CHANGE stays one");
    };
    carried[2] = tampered;
    let verdict = pool.verify(crate::test_fixtures::SCOPE, new_view(carried)).await.unwrap();
    assert_eq!(verdict, Err(Refusal::BadSignature { kind: MessageKind::ViewChange }));
    assert_eq!(pool.heavy_stats().view_changes_in_new_views_from_cache, 2, "only the untouched ones");
}

#[test]
fn a_job_placed_ahead_of_its_sender_goes_before_that_senders_queue_only() {
    let mut schedule = Schedule::default();
    schedule.push(Origin::Replica(ReplicaId(1)), 10);
    schedule.push(Origin::Replica(ReplicaId(1)), 11);
    schedule.push(Origin::Replica(ReplicaId(2)), 20);
    schedule.push_at(Origin::Replica(ReplicaId(2)), Place::AheadOfSender, 29);
    schedule.push_at(Origin::Replica(ReplicaId(1)), Place::AheadOfSender, 19);
    let order: Vec<i32> = std::iter::from_fn(|| schedule.pop()).collect();
    assert_eq!(order, vec![19, 29, 10, 20, 11], "ahead within its sender, members still take turns");
}

/// The NEW-VIEW's place in practice: queued behind its sender's VIEW-CHANGEs, it is
/// verified before them.
#[actix_rt::test]
async fn a_new_view_is_verified_before_its_senders_queued_view_changes() {
    let pool = VerifierPool::start(1, crate::test_fixtures::handle());
    let log = Arc::new(Mutex::new(Vec::new()));
    let release = hold_the_only_worker(&pool).await;
    // Replica 1 is the primary of view 1 (and of 5, 9, ...).
    let view_changes: Vec<_> =
        (1..=3).map(|view| verify_logged(&pool, &log, "view-change", view_change(1, 4 * view + 1))).collect();
    eventually("the VIEW-CHANGEs are queued", || pool.depth().replica_jobs == 3).await;
    let new_view = NewView { view: View(1), view_changes: vec![], pre_prepares: vec![] };
    let new_view = WireMessage::NewView(crate::test_fixtures::sign(new_view, &replica_key(1)));
    let (queued_pool, queued_log) = (pool.clone(), log.clone());
    let new_view = actix_rt::spawn(async move {
        // Queued as `VerifierPool::verify` queues it, with a note in the log when it runs.
        let (origin, place) = (Origin::of(&new_view, &queued_pool.membership.current()), Place::of(&new_view));
        queued_pool
            .run_at(origin, place, move |worker| {
                queued_log.lock().unwrap().push("new-view");
                worker.verify(crate::test_fixtures::SCOPE, new_view)
            })
            .await
    });
    eventually("the NEW-VIEW is queued", || pool.depth().replica_jobs == 4).await;
    release.send(()).unwrap();
    new_view.await.unwrap().unwrap().expect_err("an empty NEW-VIEW is refused, but only after its turn");
    for view_change in view_changes {
        assert!(view_change.await.unwrap().unwrap().is_ok());
    }
    assert_eq!(*log.lock().unwrap(), vec!["new-view", "view-change", "view-change", "view-change"]);
}

#[actix_rt::test]
async fn the_workers_end_when_the_last_handle_is_dropped() {
    let pool = VerifierPool::start(2, crate::test_fixtures::handle());
    let queue = Arc::downgrade(&pool.queue);
    assert!(pool.verify(crate::test_fixtures::SCOPE, prepare(1, 1)).await.unwrap().is_ok());
    drop(pool);
    // Each worker holds the queue until it leaves.
    eventually("the workers left", || queue.strong_count() == 0).await;
}
