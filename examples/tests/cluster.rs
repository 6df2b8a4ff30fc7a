//! Replicas as actix actors over loopback TCP, driven by the client library.

use bulwark_actors::client::{Client, ClientOptions};
use bulwark_examples::cluster::LocalCluster;
use bulwark_examples::kv::{KvOp, KvReply, KvStore};
use bulwark_framework::{ProtocolParams, ReplicaId};
use std::time::Duration;

const CLIENTS: usize = 5;
const OPERATIONS: usize = 2_000;

/// Each client writes its own keys and reads every one back, 20 requests in flight per
/// client; every reply must be the right one.
async fn workload(clients: &[Client<KvStore>]) {
    let per_client = OPERATIONS / clients.len();
    let mut tasks = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        for lane in 0..20 {
            let client = client.clone();
            tasks.push(actix_rt::spawn(async move {
                for i in (lane..per_client / 2).step_by(20) {
                    let key = format!("client-{c}-key-{i}");
                    let value = format!("value-{c}-{i}").into_bytes();
                    let put = client.invoke(&KvOp::Put { key: key.clone(), value: value.clone() }).await;
                    assert_eq!(put, Ok(KvReply::Done { previous: None }), "put {key}");
                    let get = client.invoke(&KvOp::Get { key: key.clone() }).await;
                    assert_eq!(get, Ok(KvReply::Value(Some(value))), "get {key}");
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("workload task panicked");
    }
}

async fn clients(cluster: &mut LocalCluster<KvStore>) -> Vec<Client<KvStore>> {
    let options = ClientOptions { timeout: Duration::from_secs(20), ..ClientOptions::default() };
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(cluster.client(options.clone()).await.expect("client connects"));
    }
    clients
}

#[actix_rt::test]
async fn four_replicas_five_clients_two_thousand_operations_and_digests_agree() {
    let mut cluster = LocalCluster::<KvStore>::start(4, ProtocolParams::default(), KvStore::new).await.unwrap();
    let clients = clients(&mut cluster).await;
    workload(&clients).await;
    let (agree, statuses) = cluster.settle(Duration::from_secs(10)).await;
    assert_eq!(statuses.len(), 4);
    assert!(agree, "state digests differ: {statuses:?}");
    let executed: u64 = statuses[0].metrics.requests_executed;
    assert_eq!(executed, OPERATIONS as u64, "every operation executed exactly once");
    cluster.shutdown();
}

#[actix_rt::test]
async fn with_one_backup_stopped_the_other_three_keep_serving() {
    let mut cluster = LocalCluster::<KvStore>::start(4, ProtocolParams::default(), KvStore::new).await.unwrap();
    cluster.stop_replica(ReplicaId(3));
    let clients = clients(&mut cluster).await;
    workload(&clients).await;
    let (agree, statuses) = cluster.settle(Duration::from_secs(10)).await;
    assert_eq!(statuses.len(), 3, "the stopped backup answers no status");
    assert!(agree, "state digests differ: {statuses:?}");
    assert!(statuses.iter().all(|s| s.metrics.requests_executed == OPERATIONS as u64));
    cluster.shutdown();
}

/// Durable replicas (a data dir each): the same workload, every replica persists its
/// records in group commits (fewer fsync'd transactions than groups submitted under load),
/// and the digests agree.
#[actix_rt::test]
async fn durable_replicas_persist_in_group_commits_and_digests_agree() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = Some(dir.path().to_path_buf());
    let mut cluster =
        LocalCluster::<KvStore>::start_in(4, ProtocolParams::default(), KvStore::new, data_dir).await.unwrap();
    let clients = clients(&mut cluster).await;
    workload(&clients).await;
    let (agree, statuses) = cluster.settle(Duration::from_secs(10)).await;
    assert_eq!(statuses.len(), 4);
    assert!(agree, "state digests differ: {statuses:?}");
    for status in &statuses {
        let store = status.store.expect("a durable replica reports its store");
        assert!(store.metrics.transactions > 0 && store.metrics.records_written > 0, "{store:?}");
        assert!(store.metrics.transactions <= store.groups, "{store:?}");
        assert_eq!(store.metrics.corrupt_discarded, 0);
        assert!(dir.path().join(format!("replica-{}.redb", status.id.0)).exists());
        eprintln!("replica {}: {store:?}", status.id.0);
    }
    assert_eq!(statuses[0].metrics.requests_executed, OPERATIONS as u64, "every operation executed exactly once");
    cluster.shutdown();
}

#[actix_rt::test]
async fn with_trusted_client_connections_nothing_on_client_links_is_signed_and_every_reply_is_right() {
    use bulwark_framework::config::ClientAuth;
    let params = ProtocolParams { client_auth: ClientAuth::Connection, ..ProtocolParams::default() };
    let mut cluster = LocalCluster::<KvStore>::start(4, params, KvStore::new).await.unwrap();
    let clients = clients(&mut cluster).await;
    workload(&clients).await;
    let (agree, statuses) = cluster.settle(Duration::from_secs(10)).await;
    assert!(agree, "state digests differ: {statuses:?}");
    assert_eq!(statuses[0].metrics.requests_executed, OPERATIONS as u64);
    let refused: u64 = cluster.replicas.iter().map(|r| r.refused().total()).sum();
    assert_eq!(refused, 0, "nothing refused in connection mode");
    cluster.shutdown();
}

/// A client called with more invocations at once than its window holds (CX1) keeps the
/// excess waiting and sends it as earlier ones complete: every invocation succeeds, none
/// fails with a full window, each executes exactly once.
#[actix_rt::test]
async fn invocations_beyond_the_client_window_wait_their_turn() {
    const WINDOW: u64 = 4;
    const INVOCATIONS: usize = 40;
    let params = ProtocolParams { client_window: WINDOW, ..ProtocolParams::default() };
    let mut cluster = LocalCluster::<KvStore>::start(4, params, KvStore::new).await.unwrap();
    let options = ClientOptions { timeout: Duration::from_secs(20), ..ClientOptions::default() };
    let client = cluster.client(options).await.expect("client connects");
    let tasks: Vec<_> = (0..INVOCATIONS)
        .map(|i| {
            let client = client.clone();
            actix_rt::spawn(async move { client.invoke(&KvOp::Put { key: format!("key-{i}"), value: vec![1] }).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("task"), Ok(KvReply::Done { previous: None }));
    }
    let (agree, statuses) = cluster.settle(Duration::from_secs(10)).await;
    assert!(agree, "state digests differ: {statuses:?}");
    assert_eq!(statuses[0].metrics.requests_executed, INVOCATIONS as u64, "each executed once");
    cluster.shutdown();
}

/// What a client holds beyond its window is bounded: with nothing completing (two of four
/// replicas stopped, no quorum), the window fills, `held_invocations_max` more wait, and
/// one more fails at once with `WindowFull`.
#[actix_rt::test]
async fn invocations_held_beyond_the_window_are_bounded() {
    use bulwark_actors::client::InvokeError;
    const WINDOW: u64 = 4;
    const HELD: usize = 3;
    let params = ProtocolParams { client_window: WINDOW, ..ProtocolParams::default() };
    let mut cluster = LocalCluster::<KvStore>::start(4, params, KvStore::new).await.unwrap();
    cluster.stop_replica(ReplicaId(2));
    cluster.stop_replica(ReplicaId(3));
    let options =
        ClientOptions { timeout: Duration::from_secs(2), held_invocations_max: HELD, ..ClientOptions::default() };
    let client = cluster.client(options).await.expect("client connects");
    let waiting: Vec<_> = (0..WINDOW as usize + HELD)
        .map(|i| {
            let client = client.clone();
            actix_rt::spawn(async move { client.invoke(&KvOp::Put { key: format!("key-{i}"), value: vec![1] }).await })
        })
        .collect();
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let overflow = client.invoke(&KvOp::Put { key: "one-too-many".into(), value: vec![1] }).await;
    assert!(matches!(overflow, Err(InvokeError::WindowFull(_))), "{overflow:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "refused at once, not after the timeout");
    for task in waiting {
        assert!(matches!(task.await.expect("task"), Err(InvokeError::Timeout(_))), "no quorum, so each times out");
    }
    cluster.shutdown();
}
