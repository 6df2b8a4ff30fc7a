//! The simulator's Byzantine strategies over real TCP: a four-replica in-process cluster
//! with one replica running a strategy from `bulwark_framework::sim::byzantine` in the
//! actor runtime (what `bulwark demo --byzantine` starts). Clients running key-value
//! operations must see every operation complete with the right answer, and the three
//! correct replicas must reach the same state digest. The same for Byzantine clients
//! (`bulwark_examples::client_attack`, what `bulwark bench --attack` runs for the client
//! strategies) beside the correct ones.

use bulwark_actors::client::ClientOptions;
use bulwark_examples::client_attack::ClientAttacker;
use bulwark_examples::cluster::LocalCluster;
use bulwark_examples::kv::{KvOp, KvReply, KvStore};
use bulwark_framework::sim::byzantine::Strategy;
use bulwark_framework::sim::byzantine_client::ClientAttack;
use bulwark_framework::verify::RefusalKind;
use bulwark_framework::{ProtocolParams, ReplicaId};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENTS: usize = 2;
/// Put-then-get pairs each client runs, one after the other.
const PAIRS_PER_CLIENT: usize = 40;

/// Runs the workload against a cluster where `byzantine` runs `strategy` and checks the
/// correct replicas. Timeouts are the short ones `bulwark demo --crash-primary-after`
/// uses, so a faulty primary is replaced within about a second.
async fn run_with(byzantine: ReplicaId, strategy: Strategy) {
    run_attacked(&[(byzantine, strategy)], &[]).await;
}

/// The workload and the checks of [`run_with`], with any Byzantine replicas and Byzantine
/// clients (each at 1,000 strategy steps a second). Returns the requests the Byzantine
/// clients wrote and the requests the cluster refused at the edge for their signatures.
async fn run_attacked(byzantine: &[(ReplicaId, Strategy)], client_attacks: &[ClientAttack]) -> (u64, u64) {
    let params =
        ProtocolParams { view_change_timeout_us: 500_000, client_retransmit_us: 250_000, ..ProtocolParams::default() };
    let mut cluster = LocalCluster::<KvStore>::start_with_byzantine(4, params, KvStore::new, None, byzantine)
        .await
        .expect("cluster starts");
    let attackers: Vec<ClientAttacker> = client_attacks
        .iter()
        .map(|attack| {
            ClientAttacker::start(*attack, Arc::new(cluster.membership.clone()), cluster.addresses.clone(), 1_000)
        })
        .collect();
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
    let mut attacker_requests = 0;
    for attacker in attackers {
        attacker_requests += attacker.stop().await.requests_sent;
    }
    let refused_signatures = cluster.verifier.refused().get(RefusalKind::BadSignature);

    let (agree, statuses) = cluster.settle(Duration::from_secs(10)).await;
    assert_eq!(statuses.len(), 4 - byzantine.len(), "Byzantine replicas report no status: {statuses:?}");
    assert!(statuses.iter().all(|status| byzantine.iter().all(|(id, _)| status.id != *id)), "{statuses:?}");
    assert!(agree, "correct replicas' state digests differ: {statuses:?}");
    let executed = statuses[0].last_executed.0;
    assert!(executed > 0, "nothing executed: {statuses:?}");
    eprintln!(
        "{:?} {:?}: {} operations in {took:?}; views {:?}, executed {executed}; Byzantine clients wrote \
         {attacker_requests} requests, {refused_signatures} refused for their signature",
        byzantine.iter().map(|(_, s)| s.name()).collect::<Vec<_>>(),
        client_attacks.iter().map(|a| a.name()).collect::<Vec<_>>(),
        CLIENTS * PAIRS_PER_CLIENT * 2,
        statuses.iter().map(|s| (s.id.0, s.view.0)).collect::<Vec<_>>()
    );
    for client in &clients {
        client.close();
    }
    cluster.shutdown();
    (attacker_requests, refused_signatures)
}

/// R1 and CX3 over TCP: Byzantine clients sending badly signed requests and conflicting
/// requests under one timestamp beside the correct clients. Every correct operation
/// completes with the right answer, the correct replicas agree, and the bad signatures are
/// refused at the edge and counted.
#[actix_rt::test]
async fn byzantine_clients_do_not_stop_correct_clients_and_bad_signatures_are_refused() {
    let (sent, refused) = run_attacked(&[], &[ClientAttack::BadSignatures, ClientAttack::ConflictingRequests]).await;
    assert!(sent > 0, "the Byzantine clients wrote nothing");
    assert!(refused > 0, "no request was refused for its signature");
}

#[actix_rt::test]
async fn a_silent_backup_does_not_stop_operations_and_the_correct_replicas_agree() {
    run_with(ReplicaId(3), Strategy::Silent).await;
}

#[actix_rt::test]
async fn an_equivocating_primary_is_replaced_and_the_correct_replicas_agree() {
    run_with(ReplicaId(0), Strategy::EquivocatingPrimary).await;
}
