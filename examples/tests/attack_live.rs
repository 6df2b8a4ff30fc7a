//! The simulator's Byzantine strategies over real TCP: a four-replica in-process cluster
//! with one replica running a strategy from `bulwark_framework::sim::byzantine` in the
//! actor runtime (what `bulwark demo --byzantine` starts). Clients running key-value
//! operations must see every operation complete with the right answer, and the three
//! correct replicas must reach the same state digest.

use bulwark_actors::client::ClientOptions;
use bulwark_examples::cluster::LocalCluster;
use bulwark_examples::kv::{KvOp, KvReply, KvStore};
use bulwark_framework::sim::byzantine::Strategy;
use bulwark_framework::{ProtocolParams, ReplicaId};
use std::time::{Duration, Instant};

const CLIENTS: usize = 2;
/// Put-then-get pairs each client runs, one after the other.
const PAIRS_PER_CLIENT: usize = 40;

/// Runs the workload against a cluster where `byzantine` runs `strategy` and checks the
/// correct replicas. Timeouts are the short ones `bulwark demo --crash-primary-after`
/// uses, so a faulty primary is replaced within about a second.
async fn run_with(byzantine: ReplicaId, strategy: Strategy) {
    let params =
        ProtocolParams { view_change_timeout_us: 500_000, client_retransmit_us: 250_000, ..ProtocolParams::default() };
    let mut cluster =
        LocalCluster::<KvStore>::start_with_byzantine(4, params, KvStore::new, None, &[(byzantine, strategy)])
            .await
            .expect("cluster starts");
    let options = ClientOptions { timeout: Duration::from_secs(10), ..ClientOptions::default() };
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(cluster.client(options.clone()).await.expect("client connects"));
    }
    let started = Instant::now();
    let mut lanes = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        let client = client.clone();
        lanes.push(actix_rt::spawn(async move {
            for i in 0..PAIRS_PER_CLIENT {
                let key = format!("client-{c}-key-{i}");
                let value = format!("client-{c}-value-{i}").into_bytes();
                let put = client.invoke(&KvOp::Put { key: key.clone(), value: value.clone() }).await;
                assert_eq!(put, Ok(KvReply::Done { previous: None }), "put {key}");
                let get = client.invoke(&KvOp::Get { key: key.clone() }).await;
                assert_eq!(get, Ok(KvReply::Value(Some(value))), "get {key}");
            }
        }));
    }
    for lane in lanes {
        lane.await.expect("every operation completes with the right answer");
    }
    let took = started.elapsed();

    let (agree, statuses) = cluster.settle(Duration::from_secs(10)).await;
    assert_eq!(statuses.len(), 3, "the Byzantine replica reports no status: {statuses:?}");
    assert!(statuses.iter().all(|status| status.id != byzantine), "{statuses:?}");
    assert!(agree, "correct replicas' state digests differ: {statuses:?}");
    let executed = statuses[0].last_executed.0;
    assert!(executed > 0, "nothing executed: {statuses:?}");
    eprintln!(
        "{}: {} operations in {took:?}; views {:?}, executed {executed}",
        strategy.name(),
        CLIENTS * PAIRS_PER_CLIENT * 2,
        statuses.iter().map(|s| (s.id.0, s.view.0)).collect::<Vec<_>>()
    );
    for client in &clients {
        client.close();
    }
    cluster.shutdown();
}

#[actix_rt::test]
async fn a_silent_backup_does_not_stop_operations_and_the_correct_replicas_agree() {
    run_with(ReplicaId(3), Strategy::Silent).await;
}

#[actix_rt::test]
async fn an_equivocating_primary_is_replaced_and_the_correct_replicas_agree() {
    run_with(ReplicaId(0), Strategy::EquivocatingPrimary).await;
}
