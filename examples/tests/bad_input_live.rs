//! Bad input against a running replica: random bytes, an oversized length prefix, a
//! half-written frame, frames signed by a key outside the cluster. Each closes the
//! connection it came on and is counted; the cluster keeps serving.

use bulwark_actors::client::ClientOptions;
use bulwark_crypto::{Digest, KeyPair};
use bulwark_examples::cluster::{LocalCluster, LOCAL_CLUSTER_ID};
use bulwark_examples::kv::{KvOp, KvReply, KvStore};
use bulwark_framework::messages::{Message, Prepare};
use bulwark_framework::verify::{RefusalCounts, RefusalKind};
use bulwark_framework::wire::encode_frame;
use bulwark_framework::{ClusterId, Epoch, ProtocolParams, ReplicaId, Scope, SeqNum, View};
use rand::{RngCore, SeedableRng};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// The whole test is bounded: a hang is a failure, not a stuck CI job.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a replica may take to close a connection that sent bad input.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the counters of replica 0 say about bad input so far.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    closed_bad_input: u64,
    closed_refused: u64,
    refused: RefusalCounts,
}

fn seen(cluster: &LocalCluster<KvStore>) -> Seen {
    let replica = &cluster.replicas[0];
    let stats = replica.transport.stats();
    Seen {
        closed_bad_input: stats.connections_closed_bad_input,
        closed_refused: stats.connections_closed_refused,
        refused: replica.refused(),
    }
}

/// Polls `condition` until it holds, or fails after `CLOSE_TIMEOUT`.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let polled = timeout(CLOSE_TIMEOUT, async {
        while !condition() {
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(polled.is_ok(), "{what}: not within {CLOSE_TIMEOUT:?}");
}

/// Reads from a raw stream until the replica closes it: end of stream, or a reset when it
/// closed with unread bytes in its receive buffer.
async fn assert_closed_by_replica(stream: &mut TcpStream, what: &str) {
    let mut buffer = [0u8; 256];
    let read = timeout(CLOSE_TIMEOUT, stream.read(&mut buffer))
        .await
        .unwrap_or_else(|_| panic!("{what}: the replica did not close the connection within {CLOSE_TIMEOUT:?}"));
    match read {
        Ok(0) => {}
        Err(error) => assert!(
            matches!(error.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe),
            "{what}: {error}"
        ),
        Ok(read) => panic!("{what}: unexpected {read} bytes from the replica"),
    }
}

async fn connect(address: SocketAddr) -> TcpStream {
    timeout(CLOSE_TIMEOUT, TcpStream::connect(address))
        .await
        .expect("connecting within the timeout")
        .expect("connecting to replica 0")
}

/// The local cluster's scope.
const SCOPE: Scope = Scope { cluster: LOCAL_CLUSTER_ID, epoch: Epoch(0) };

/// A well-formed prepare frame claiming to come from `replica`, signed by `key` in `scope`.
fn prepare_frame_in(scope: Scope, replica: ReplicaId, key: &KeyPair) -> Vec<u8> {
    let payload = Prepare { view: View(0), seq: SeqNum(1), digest: Digest::of(b"not a real batch"), replica };
    let message = Message::Prepare(scope.sign(payload, key).into_signed());
    encode_frame(scope, &message).expect("encoding a prepare")
}

/// A well-formed prepare frame claiming to come from `replica`, signed by `key`.
fn prepare_frame(replica: ReplicaId, key: &KeyPair) -> Vec<u8> {
    prepare_frame_in(SCOPE, replica, key)
}

/// Runs one attack and checks that it closed its connection and moved the counters from
/// `before` by exactly `expected`.
async fn attack<F, Fut>(cluster: &LocalCluster<KvStore>, what: &str, expected: impl Fn(&Seen) -> Seen, send: F)
where
    F: FnOnce(TcpStream) -> Fut,
    Fut: Future<Output = TcpStream>,
{
    let before = seen(cluster);
    let want = expected(&before);
    let stream = connect(cluster.addresses[&ReplicaId(0)]).await;
    let mut stream = send(stream).await;
    assert_closed_by_replica(&mut stream, what).await;
    // The counters move before the connection closes; polling only absorbs scheduling.
    eventually(what, || seen(cluster) == want).await;
}

fn bump(seen: &Seen, bad_input: u64, refused: u64, kinds: &[RefusalKind]) -> Seen {
    let mut next = seen.clone();
    next.closed_bad_input += bad_input;
    next.closed_refused += refused;
    for kind in kinds {
        next.refused.record_kind(*kind);
    }
    next
}

/// Random bytes are refused as oversized or as malformed, depending on the four that happen
/// to be the length prefix; either way exactly one of the two is counted.
async fn random_bytes(cluster: &LocalCluster<KvStore>) {
    let before = seen(cluster);
    let noise = {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let mut noise = vec![0u8; 1024];
        rng.fill_bytes(&mut noise);
        noise
    };
    let mut stream = connect(cluster.addresses[&ReplicaId(0)]).await;
    // The replica may close as soon as it has read the header; later writes may then fail.
    let _ = stream.write_all(&noise).await;
    // A prefix that fits the limit would wait for the rest of its frame: end the stream.
    let _ = stream.shutdown().await;
    assert_closed_by_replica(&mut stream, "random bytes").await;
    eventually("random bytes counted", || {
        let now = seen(cluster);
        let decode_refusals = |s: &Seen| s.refused.get(RefusalKind::Malformed) + s.refused.get(RefusalKind::Oversized);
        now.closed_bad_input == before.closed_bad_input + 1
            && now.closed_refused == before.closed_refused
            && decode_refusals(&now) == decode_refusals(&before) + 1
            && now.refused.total() == before.refused.total() + 1
    })
    .await;
}

async fn kv_operations(cluster: &mut LocalCluster<KvStore>, operations: usize) {
    let options = ClientOptions { timeout: Duration::from_secs(20), ..ClientOptions::default() };
    let client = cluster.client(options).await.expect("client connects");
    let lanes = 10;
    let mut tasks = Vec::new();
    for lane in 0..lanes {
        let client = client.clone();
        tasks.push(actix_rt::spawn(async move {
            for i in (lane..operations / 2).step_by(lanes) {
                let key = format!("after-attack-{i}");
                let value = format!("value-{i}").into_bytes();
                let put = client.invoke(&KvOp::Put { key: key.clone(), value: value.clone() }).await;
                assert_eq!(put, Ok(KvReply::Done { previous: None }), "put {key}");
                let get = client.invoke(&KvOp::Get { key: key.clone() }).await;
                assert_eq!(get, Ok(KvReply::Value(Some(value))), "get {key}");
            }
        }));
    }
    for task in tasks {
        task.await.expect("kv task panicked");
    }
}

#[actix_rt::test]
async fn bad_input_closes_the_connection_is_counted_and_the_cluster_keeps_serving() {
    timeout(TEST_TIMEOUT, async {
        let mut cluster = LocalCluster::<KvStore>::start(4, ProtocolParams::default(), KvStore::new).await.unwrap();
        let start = seen(&cluster);
        assert_eq!(start.closed_bad_input + start.closed_refused + start.refused.total(), 0, "{start:?}");

        // (a) 1 KiB of random bytes.
        random_bytes(&cluster).await;

        // (b) A length prefix of 4 GiB - 1: refused on the header alone.
        attack(
            &cluster,
            "oversized length prefix",
            |s| bump(s, 1, 0, &[RefusalKind::Oversized]),
            |mut stream| async move {
                stream.write_all(&[0xFF; 4]).await.expect("writing a length prefix");
                stream
            },
        )
        .await;

        // (c) Half of a valid frame, then end of stream.
        let outsider = KeyPair::generate(&mut rand::rngs::OsRng);
        let whole = prepare_frame(ReplicaId(1), &outsider);
        attack(
            &cluster,
            "half a frame",
            |s| bump(s, 1, 0, &[RefusalKind::Malformed]),
            |mut stream| async move {
                stream.write_all(&whole[..whole.len() / 2]).await.expect("writing half a frame");
                stream.shutdown().await.expect("closing the write side");
                stream
            },
        )
        .await;

        // (d) A whole, well-formed prepare claiming to be replica 1's, signed by a key
        // outside the cluster. The connection stays open on our side: the replica closes it.
        let forged = prepare_frame(ReplicaId(1), &outsider);
        attack(
            &cluster,
            "prepare with a bad signature",
            |s| bump(s, 0, 1, &[RefusalKind::BadSignature]),
            |mut stream| async move {
                stream.write_all(&forged).await.expect("writing a forged prepare");
                stream
            },
        )
        .await;

        // (e) A prepare claiming a replica that is not in the cluster.
        let stranger = prepare_frame(ReplicaId(99), &outsider);
        attack(
            &cluster,
            "prepare from an unknown replica",
            |s| bump(s, 0, 1, &[RefusalKind::UnknownSender]),
            |mut stream| async move {
                stream.write_all(&stranger).await.expect("writing a prepare from a stranger");
                stream
            },
        )
        .await;

        // (f) A prepare signed for another cluster: refused for that, whatever its signature.
        let other_cluster = Scope { cluster: ClusterId(LOCAL_CLUSTER_ID.0 + 1), ..SCOPE };
        let foreign = prepare_frame_in(other_cluster, ReplicaId(1), &outsider);
        attack(
            &cluster,
            "prepare signed for another cluster",
            |s| bump(s, 0, 1, &[RefusalKind::WrongCluster]),
            |mut stream| async move {
                stream.write_all(&foreign).await.expect("writing another cluster's prepare");
                stream
            },
        )
        .await;

        // (g) A prepare signed in another epoch of this cluster.
        let next_epoch = Scope { epoch: Epoch(1), ..SCOPE };
        let stale = prepare_frame_in(next_epoch, ReplicaId(1), &outsider);
        attack(
            &cluster,
            "prepare signed in another epoch",
            |s| bump(s, 0, 1, &[RefusalKind::WrongEpoch]),
            |mut stream| async move {
                stream.write_all(&stale).await.expect("writing another epoch's prepare");
                stream
            },
        )
        .await;

        let after_attacks = seen(&cluster);
        assert_eq!(after_attacks.closed_bad_input, 3, "{after_attacks:?}");
        assert_eq!(after_attacks.closed_refused, 4, "{after_attacks:?}");
        assert_eq!(after_attacks.refused.get(RefusalKind::BadSignature), 1, "{after_attacks:?}");
        assert_eq!(after_attacks.refused.get(RefusalKind::UnknownSender), 1, "{after_attacks:?}");
        assert_eq!(after_attacks.refused.get(RefusalKind::WrongCluster), 1, "{after_attacks:?}");
        assert_eq!(after_attacks.refused.get(RefusalKind::WrongEpoch), 1, "{after_attacks:?}");
        assert_eq!(after_attacks.refused.total(), 7, "{after_attacks:?}");

        // The cluster keeps serving, and replica 0 keeps up with it.
        kv_operations(&mut cluster, 200).await;
        let (agree, statuses) = cluster.settle(Duration::from_secs(10)).await;
        assert_eq!(statuses.len(), 4);
        assert!(agree, "state digests differ: {statuses:?}");
        assert!(statuses.iter().all(|s| s.last_executed == statuses[0].last_executed));
        // Nothing well behaved was refused or cut off along the way.
        assert_eq!(seen(&cluster), after_attacks);
        cluster.shutdown();
    })
    .await
    .expect("test timed out");
}
