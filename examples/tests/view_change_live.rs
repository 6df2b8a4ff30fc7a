//! View change over real TCP: four replica actors on loopback, clients running key-value
//! operations, and the primary of view 0 stopped mid-run. The backups suspect it, move to
//! view 1 (whose primary is replica 1), the clients follow the replies to the new view, and
//! operations keep completing with every reply checked.

use bulwark_actors::client::{Client, ClientOptions};
use bulwark_examples::cluster::LocalCluster;
use bulwark_examples::kv::{KvOp, KvReply, KvStore};
use bulwark_framework::{ProtocolParams, ReplicaId, View};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

const CLIENTS: usize = 3;
const LANES: usize = 8;
/// Operations completed before the primary is stopped.
const BEFORE_CRASH: u64 = 300;
/// Operations that must complete after it was stopped.
const AFTER_CRASH: u64 = 600;

/// What the lanes share with the test body.
#[derive(Default)]
struct Progress {
    completed: Cell<u64>,
    stop: Cell<bool>,
    first_error: RefCell<Option<String>>,
}

impl Progress {
    fn fail(&self, error: String) {
        self.first_error.borrow_mut().get_or_insert(error);
        self.stop.set(true);
    }
}

/// One lane: puts fresh keys of its own and reads each back until told to stop. A put of
/// a fresh key must answer "no previous value" (executed once, even when the request was
/// retransmitted across the view change) and the get must return what was put.
async fn lane(client: Client<KvStore>, name: String, progress: Rc<Progress>) {
    let mut i = 0u64;
    while !progress.stop.get() {
        let key = format!("{name}-key-{i}");
        let value = format!("{name}-value-{i}").into_bytes();
        i += 1;
        let put = client.invoke(&KvOp::Put { key: key.clone(), value: value.clone() }).await;
        if put != Ok(KvReply::Done { previous: None }) {
            return progress.fail(format!("put {key}: {put:?}"));
        }
        let get = client.invoke(&KvOp::Get { key: key.clone() }).await;
        if get != Ok(KvReply::Value(Some(value))) {
            return progress.fail(format!("get {key}: {get:?}"));
        }
        progress.completed.set(progress.completed.get() + 2);
    }
}

/// Waits until `progress` has completed `target` operations; panics on a lane's error or
/// after `timeout`.
async fn wait_for(progress: &Progress, target: u64, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    while progress.completed.get() < target {
        if let Some(error) = progress.first_error.borrow().as_ref() {
            panic!("{what}: an operation failed: {error}");
        }
        assert!(
            Instant::now() < deadline,
            "{what}: only {} of {target} operations completed within {timeout:?}",
            progress.completed.get()
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_rt::test]
async fn stopping_the_primary_mid_run_moves_every_live_replica_to_a_new_view_and_operations_keep_completing() {
    // The timeouts `bulwark demo --crash-primary-after` uses: a client broadcasts after
    // 250 ms without f + 1 replies, the backups suspect the primary 500 ms later.
    let params =
        ProtocolParams { view_change_timeout_us: 500_000, client_retransmit_us: 250_000, ..ProtocolParams::default() };
    let mut cluster = LocalCluster::<KvStore>::start(4, params, KvStore::new).await.unwrap();
    let options = ClientOptions { timeout: Duration::from_secs(15), ..ClientOptions::default() };
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(cluster.client(options.clone()).await.expect("client connects"));
    }
    let progress = Rc::new(Progress::default());
    let mut tasks = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        for l in 0..LANES {
            tasks.push(actix_rt::spawn(lane(client.clone(), format!("client-{c}-lane-{l}"), progress.clone())));
        }
    }

    wait_for(&progress, BEFORE_CRASH, Duration::from_secs(10), "before the crash").await;
    let primary = cluster.membership.primary(View(0));
    assert_eq!(primary, ReplicaId(0));
    cluster.stop_replica(primary);
    let stopped_at = Instant::now();
    let at_crash = progress.completed.get();

    wait_for(&progress, at_crash + AFTER_CRASH, Duration::from_secs(12), "after the primary stopped").await;
    let recovered_in = stopped_at.elapsed();
    progress.stop.set(true);
    for task in tasks {
        task.await.expect("lane task panicked");
    }
    if let Some(error) = progress.first_error.borrow().as_ref() {
        panic!("an operation failed: {error}");
    }

    // The clients followed the replies to the new view.
    for (c, client) in clients.iter().enumerate() {
        let view = client.view().await.expect("client running");
        assert!(view >= View(1), "client {c} still believes view {view:?} is current");
    }

    let (agree, statuses) = cluster.settle(Duration::from_secs(10)).await;
    assert_eq!(statuses.len(), 3, "the stopped primary answers no status: {statuses:?}");
    assert!(agree, "live replicas' state digests differ: {statuses:?}");
    for status in &statuses {
        assert!(status.view >= View(1), "replica {} still in view {:?}: {status:?}", status.id, status.view);
        assert!(status.metrics.views_entered >= 1, "replica {} entered no view: {:?}", status.id, status.metrics);
        assert!(status.metrics.view_changes_started >= 1, "replica {} sent no VIEW-CHANGE", status.id);
        assert_eq!(status.metrics.primary_equivocations, 0, "replica {}: a crash is not equivocation", status.id);
    }
    eprintln!(
        "{} operations before the crash, {} after; {AFTER_CRASH} more completed {recovered_in:?} after the stop; \
         views {:?}",
        at_crash,
        progress.completed.get() - at_crash,
        statuses.iter().map(|s| (s.id.0, s.view.0)).collect::<Vec<_>>()
    );
    for client in &clients {
        client.close();
    }
    cluster.shutdown();
}
