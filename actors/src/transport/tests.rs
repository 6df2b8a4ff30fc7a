//! The endpoint's tests. They stay together because each drives whole endpoints over
//! loopback sockets through `start` and the handle, across links, listener, connections
//! and readers at once.

use super::*;
use bulwark_crypto::{Digest, KeyPair};
use bulwark_framework::ids::{ClientId, ClusterId, ReplicaId, SeqNum, Timestamp, View};
use bulwark_framework::messages::{Prepare, Reply};
use bulwark_framework::verify::RefusalKind;
use bulwark_framework::wire;
use std::sync::OnceLock;
use std::time::Instant as WallClock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout};

/// Every test is bounded: a hang is a failure, not a stuck CI job.
const TEST_TIMEOUT: Duration = Duration::from_secs(20);
const B: PeerId = PeerId { cluster: ClusterId(1), replica: ReplicaId(1) };

fn key() -> &'static KeyPair {
    static KEY: OnceLock<KeyPair> = OnceLock::new();
    KEY.get_or_init(|| KeyPair::from_seed([1; 32]))
}

fn prepare(seq: u64) -> Message {
    let payload =
        Prepare { view: View(0), seq: SeqNum(seq), digest: Digest::of(&seq.to_le_bytes()), replica: ReplicaId(0) };
    Message::Prepare(crate::test_fixtures::sign(payload, key()))
}

fn reply(result_bytes: usize) -> Message {
    let payload = Reply {
        view: View(0),
        timestamp: Timestamp(7),
        client: ClientId(9),
        replica: B.replica,
        read_only: false,
        result: vec![0x5a; result_bytes],
    };
    Message::Reply(crate::test_fixtures::sign(payload, key()))
}

fn seq_of(message: &Message) -> u64 {
    match message {
        Message::Prepare(signed) => signed.payload.seq.0,
        other => panic!("expected a prepare, got {other:?}"),
    }
}

fn frame(message: &Message) -> Bytes {
    Bytes::from(wire::encode_frame(crate::test_fixtures::SCOPE, message).expect("encoding a frame"))
}

fn config(listen: bool, peers: &[(PeerId, SocketAddr)], queue: usize) -> TransportConfig {
    TransportConfig {
        listen: listen.then(|| "127.0.0.1:0".parse().expect("an address")),
        peers: peers.iter().copied().collect(),
        frame_bytes_max: 1 << 20,
        send_queue_frames_max: queue,
        reconnect_min_ms: 10,
        reconnect_max_ms: 200,
        accepted_connections_max: ACCEPTED_CONNECTIONS_MAX,
        wan: BTreeMap::new(),
    }
}

async fn endpoint(config: TransportConfig) -> (TransportHandle, mpsc::Receiver<Inbound>) {
    let (sender, receiver) = mpsc::channel(64);
    let handle = start(config, sender).await.expect("starting an endpoint");
    (handle, receiver)
}

async fn recv(inbound: &mut mpsc::Receiver<Inbound>) -> Inbound {
    timeout(Duration::from_secs(10), inbound.recv())
        .await
        .expect("a message within 10 s")
        .expect("inbound channel open")
}

/// An address nobody listens on: bind port 0, note it, close it.
fn unused_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding port 0");
    listener.local_addr().expect("local address")
}

/// Polls `condition` until it holds (or the test times out).
async fn eventually(mut condition: impl FnMut() -> bool) {
    while !condition() {
        sleep(Duration::from_millis(5)).await;
    }
}

async fn with_timeout<F: std::future::Future<Output = ()>>(test: F) {
    timeout(TEST_TIMEOUT, test).await.expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_frames_arrive_in_order_and_intact() {
    with_timeout(async {
        let (b, mut b_in) = endpoint(config(true, &[], 16)).await;
        let b_addr = b.local_addr().expect("b listens");
        let (a, _a_in) = endpoint(config(false, &[(B, b_addr)], 2048)).await;
        assert_eq!(a.local_addr(), None);
        let sent: Vec<Message> = (0..1000).map(prepare).collect();
        for message in &sent {
            a.send_to_peer(B, frame(message));
        }
        let mut connection = None;
        for expected in &sent {
            let got = recv(&mut b_in).await;
            assert_eq!(&got.message, expected);
            // All on the one connection A dialed.
            assert_eq!(*connection.get_or_insert(got.connection), got.connection);
        }
        // Counted once `write_all` returns, which may be after B has read the frames.
        eventually(|| a.stats().frames_out == 1000).await;
        let a_stats = a.stats();
        assert_eq!(a_stats.dropped_queue_full, 0);
        assert_eq!(a_stats.bytes_out, sent.iter().map(|m| frame(m).len() as u64).sum());
        let b_stats = b.stats();
        assert_eq!(b_stats.frames_in, 1000);
        assert_eq!(b_stats.bytes_in, a_stats.bytes_out);
        assert_eq!(b_stats.connections_accepted, 1);
        assert_eq!(b_stats.refused.total(), 0);
        a.shutdown();
        b.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_travel_back_on_the_dialed_connection() {
    with_timeout(async {
        let (b, mut b_in) = endpoint(config(true, &[], 16)).await;
        let b_addr = b.local_addr().expect("b listens");
        let (a, mut a_in) = endpoint(config(false, &[(B, b_addr)], 16)).await;
        a.send_to_peer(B, frame(&prepare(1)));
        let request = recv(&mut b_in).await;
        assert_eq!(request.message, prepare(1));

        let answer = reply(100);
        b.send_to_connection(request.connection, frame(&answer));
        let got = recv(&mut a_in).await;
        assert_eq!(got.message, answer);

        // A can answer back on the connection it received on (its dialed link).
        a.send_to_connection(got.connection, frame(&prepare(2)));
        assert_eq!(recv(&mut b_in).await.message, prepare(2));

        // Unknown connections and unknown replicas: dropped and counted.
        b.send_to_connection(ConnectionId(999), frame(&answer));
        a.send_to_peer(PeerId::new(ClusterId(1), ReplicaId(42)), frame(&answer));
        assert_eq!(b.stats().dropped_unroutable, 1);
        assert_eq!(a.stats().dropped_unroutable, 1);

        // Once B closes the connection, its id is no longer routable.
        b.shutdown();
        b.send_to_connection(request.connection, frame(&answer));
        assert_eq!(b.stats().dropped_unroutable, 2);
        a.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_reconnects_after_its_peer_restarts() {
    with_timeout(async {
        let bound = 8;
        let (b1, mut b1_in) = endpoint(config(true, &[], 16)).await;
        let b_addr = b1.local_addr().expect("b listens");
        let (a, _a_in) = endpoint(config(false, &[(B, b_addr)], bound)).await;
        a.send_to_peer(B, frame(&prepare(0)));
        assert_eq!(seq_of(&recv(&mut b1_in).await.message), 0);

        b1.shutdown();
        // Wait until B's port refuses connections and A has noticed the loss.
        loop {
            if TcpStream::connect(b_addr).await.is_err() {
                break;
            }
            sleep(Duration::from_millis(5)).await;
        }
        eventually(|| a.stats().reconnects >= 1).await;

        // While B is down, sends neither block nor grow memory: the queue keeps `bound`
        // frames and drops the rest.
        let started = WallClock::now();
        for seq in 1..=100 {
            a.send_to_peer(B, frame(&prepare(seq)));
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        let dropped = a.stats().dropped_queue_full;
        assert!(dropped >= 100 - 2 * bound as u64, "dropped {dropped}");
        assert!(dropped <= 100 - bound as u64, "dropped {dropped}");

        // A new B on the same port: B1's sockets close as its tasks wind down, so retry.
        let (b2, mut b2_in) = loop {
            let mut again = config(true, &[], 16);
            again.listen = Some(b_addr);
            let (sender, receiver) = mpsc::channel(64);
            match start(again, sender).await {
                Ok(handle) => break (handle, receiver),
                Err(error) if error.kind() == io::ErrorKind::AddrInUse => sleep(Duration::from_millis(10)).await,
                Err(error) => panic!("restarting b: {error}"),
            }
        };
        // The frames kept in the queue come first, then fresh ones flow. The marker is
        // resent until it arrives: until A reconnects, its queue is full and drops it.
        let marker = 1_000_000;
        let mut kept = Vec::new();
        'flowing: loop {
            a.send_to_peer(B, frame(&prepare(marker)));
            while let Ok(got) = timeout(Duration::from_millis(50), b2_in.recv()).await {
                let seq = seq_of(&got.expect("inbound channel open").message);
                if seq == marker {
                    break 'flowing;
                }
                kept.push(seq);
            }
        }
        assert!(kept.len() <= bound, "kept {kept:?}");
        assert!(kept.windows(2).all(|pair| pair[0] < pair[1]), "kept {kept:?}");
        assert!(a.stats().reconnects >= 1);
        a.shutdown();
        b2.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_costs_counted_drops_not_memory() {
    with_timeout(async {
        let bound = 16;
        let (a, _a_in) = endpoint(config(false, &[(B, unused_address())], bound)).await;
        let message = frame(&prepare(3));
        for _ in 0..10 * bound {
            a.send_to_peer(B, message.clone());
        }
        let stats = a.stats();
        assert!(stats.dropped_queue_full >= 9 * bound as u64, "{stats:?}");
        assert_eq!(stats.frames_out, 0);
        // The queue is full at its bound, and that is all it holds.
        let queue = &a.shared.links[&B];
        assert_eq!(queue.max_capacity(), bound);
        assert_eq!(queue.capacity(), 0);
        // The dialer keeps retrying with backoff, and never connects.
        eventually(|| a.stats().reconnects >= 2).await;
        a.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_costs_counted_drops_not_memory() {
    with_timeout(async {
        let bound = 16;
        // Accepts at the TCP level (kernel backlog) but never reads a byte.
        let silent = TcpListener::bind("127.0.0.1:0").await.expect("binding");
        let silent_addr = silent.local_addr().expect("local address");
        let (a, _a_in) = endpoint(config(false, &[(B, silent_addr)], bound)).await;
        let big = frame(&reply(60 * 1024));
        let sent = 2000u64; // ~120 MiB offered, far beyond any socket buffer
        for _ in 0..sent {
            a.send_to_peer(B, big.clone());
            tokio::task::yield_now().await;
        }
        // Let the writer fill the socket buffers until it blocks.
        sleep(Duration::from_millis(200)).await;
        let stats = a.stats();
        assert!(stats.dropped_queue_full >= 9 * bound as u64, "{stats:?}");
        // Whatever is neither written nor dropped sits in the queue or in the one
        // batch being written: at most two bounds' worth.
        let unaccounted = sent - stats.frames_out - stats.dropped_queue_full;
        assert!(unaccounted <= 2 * bound as u64, "{stats:?}");
        a.shutdown();
        drop(silent);
    })
    .await;
}

/// Reads from a raw stream until the transport closes it: EOF, or a reset when the
/// transport closed with unread bytes in its receive buffer.
async fn assert_closed_by_peer(stream: &mut TcpStream) {
    let mut buffer = [0u8; 64];
    let read = timeout(Duration::from_secs(5), stream.read(&mut buffer))
        .await
        .expect("the transport closes a connection that sent bad input");
    match read {
        Ok(0) => {}
        Err(error) => {
            assert!(matches!(error.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe), "{error}")
        }
        Ok(read) => panic!("unexpected {read} bytes from the transport"),
    }
}

/// Deterministic noise (xorshift64), so a failure can be replayed.
fn noise(mut state: u64, length: usize) -> Vec<u8> {
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_only_that_connection() {
    with_timeout(async {
        let (b, mut b_in) = endpoint(config(true, &[], 16)).await;
        let b_addr = b.local_addr().expect("b listens");
        let (a, _a_in) = endpoint(config(false, &[(B, b_addr)], 16)).await;
        a.send_to_peer(B, frame(&prepare(1)));
        assert_eq!(seq_of(&recv(&mut b_in).await.message), 1);

        // An oversized length prefix: refused on the header alone.
        let mut oversized = TcpStream::connect(b_addr).await.expect("connecting");
        oversized.write_all(&[0xFF; 4]).await.expect("writing");
        assert_closed_by_peer(&mut oversized).await;
        assert_eq!(b.stats().refused.get(RefusalKind::Oversized), 1);
        assert_eq!(b.stats().connections_closed_bad_input, 1);

        // A frame whose body is not an envelope (0xc1 is never valid msgpack).
        let mut garbage = TcpStream::connect(b_addr).await.expect("connecting");
        garbage.write_all(&[0, 0, 0, 8]).await.expect("writing");
        garbage.write_all(&[0xC1; 8]).await.expect("writing");
        assert_closed_by_peer(&mut garbage).await;
        assert_eq!(b.stats().refused.get(RefusalKind::Malformed), 1);

        // Half a frame, then end of stream.
        let whole = frame(&prepare(2));
        let mut half = TcpStream::connect(b_addr).await.expect("connecting");
        half.write_all(&whole[..whole.len() / 2]).await.expect("writing");
        half.shutdown().await.expect("half-closing");
        assert_closed_by_peer(&mut half).await;
        assert_eq!(b.stats().refused.get(RefusalKind::Malformed), 2);

        // Half a header, then end of stream.
        let mut stub = TcpStream::connect(b_addr).await.expect("connecting");
        stub.write_all(&[0, 0]).await.expect("writing");
        stub.shutdown().await.expect("half-closing");
        assert_closed_by_peer(&mut stub).await;
        assert_eq!(b.stats().refused.get(RefusalKind::Malformed), 3);

        // A valid frame (delivered), then garbage (closes the connection).
        let mut mixed = TcpStream::connect(b_addr).await.expect("connecting");
        mixed.write_all(&frame(&prepare(3))).await.expect("writing");
        mixed.write_all(&[0, 0, 0, 3, 1, 2, 3]).await.expect("writing");
        let delivered = recv(&mut b_in).await;
        assert_eq!(delivered.message, prepare(3));
        assert_closed_by_peer(&mut mixed).await;
        assert_eq!(b.stats().refused.get(RefusalKind::Malformed), 4);
        // Its id died with it.
        b.send_to_connection(delivered.connection, frame(&prepare(0)));
        assert_eq!(b.stats().dropped_unroutable, 1);

        // Random bytes: oversized, malformed or truncated, but refused either way.
        for seed in 1..=8u64 {
            let mut random = TcpStream::connect(b_addr).await.expect("connecting");
            random.write_all(&noise(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15), 512)).await.expect("writing");
            // The transport may already have closed; a failed half-close is fine.
            let _ = random.shutdown().await;
            assert_closed_by_peer(&mut random).await;
        }
        let stats = b.stats();
        assert_eq!(stats.connections_closed_bad_input, 13, "{stats:?}");
        assert_eq!(stats.refused.total(), 13, "{stats:?}");
        assert_eq!(stats.connections_accepted, 14, "{stats:?}");

        // The well-behaved connection, and new ones, still work.
        a.send_to_peer(B, frame(&prepare(4)));
        assert_eq!(seq_of(&recv(&mut b_in).await.message), 4);
        let (c, _c_in) = endpoint(config(false, &[(B, b_addr)], 16)).await;
        c.send_to_peer(B, frame(&prepare(5)));
        assert_eq!(seq_of(&recv(&mut b_in).await.message), 5);
        a.shutdown();
        b.shutdown();
        c.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_connection_closes_accepted_ones_and_redials_dialed_ones() {
    with_timeout(async {
        let (b, mut b_in) = endpoint(config(true, &[], 16)).await;
        let b_addr = b.local_addr().expect("b listens");
        let (a, mut a_in) = endpoint(config(false, &[(B, b_addr)], 16)).await;

        // An accepted connection: closed for good, its socket closed, counted once.
        let mut raw = TcpStream::connect(b_addr).await.expect("connecting");
        raw.write_all(&frame(&prepare(1))).await.expect("writing");
        let from_raw = recv(&mut b_in).await;
        assert_eq!(from_raw.message, prepare(1));
        b.close_connection(from_raw.connection);
        assert_closed_by_peer(&mut raw).await;
        assert_eq!(b.stats().connections_closed_refused, 1);
        // Closed ids and unknown ids: no-ops, not counted.
        b.close_connection(from_raw.connection);
        b.close_connection(ConnectionId(999));
        assert_eq!(b.stats().connections_closed_refused, 1);
        b.send_to_connection(from_raw.connection, frame(&prepare(0)));
        assert_eq!(b.stats().dropped_unroutable, 1);

        // B closes the connection A dialed: A's link notices and dials again.
        a.send_to_peer(B, frame(&prepare(2)));
        let first = recv(&mut b_in).await;
        assert_eq!(first.message, prepare(2));
        b.close_connection(first.connection);
        assert_eq!(b.stats().connections_closed_refused, 2);
        eventually(|| a.stats().reconnects >= 1).await;
        // Resent until it arrives: one sent while A has not noticed yet may be lost.
        let second = loop {
            a.send_to_peer(B, frame(&prepare(3)));
            if let Ok(got) = timeout(Duration::from_millis(50), b_in.recv()).await {
                break got.expect("inbound channel open");
            }
        };
        assert_eq!(second.message, prepare(3));
        assert_ne!(second.connection, first.connection);

        // A closes its own dialed connection (as for a refused reply): the link drops
        // that TCP connection and reconnects, keeping its queue.
        b.send_to_connection(second.connection, frame(&reply(10)));
        let answer = recv(&mut a_in).await;
        assert_eq!(answer.message, reply(10));
        let accepted = b.stats().connections_accepted;
        a.close_connection(answer.connection);
        assert_eq!(a.stats().connections_closed_refused, 1);
        eventually(|| b.stats().connections_accepted > accepted).await;
        let third = loop {
            a.send_to_peer(B, frame(&prepare(4)));
            if let Ok(got) = timeout(Duration::from_millis(50), b_in.recv()).await {
                let got = got.expect("inbound channel open");
                if got.message == prepare(4) {
                    break got;
                }
            }
        };
        assert_ne!(third.connection, second.connection);
        a.send_to_connection(answer.connection, frame(&prepare(5)));
        assert_eq!(a.stats().dropped_unroutable, 1);
        assert_eq!(a.stats().connections_closed_refused, 1);
        // Neither side counted any of this as bad input.
        assert_eq!(a.stats().connections_closed_bad_input + b.stats().connections_closed_bad_input, 0);
        a.shutdown();
        b.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_frames_are_coalesced_into_few_writes() {
    with_timeout(async {
        // Queue 50 frames while the peer is down; when it comes up, the writer finds
        // them all queued and writes them together.
        let b_addr = unused_address();
        let (a, _a_in) = endpoint(config(false, &[(B, b_addr)], 64)).await;
        for seq in 0..50 {
            a.send_to_peer(B, frame(&prepare(seq)));
        }
        let mut b_config = config(true, &[], 16);
        b_config.listen = Some(b_addr);
        let (b, mut b_in) = endpoint(b_config).await;
        for seq in 0..50 {
            assert_eq!(seq_of(&recv(&mut b_in).await.message), seq);
        }
        eventually(|| a.stats().frames_out == 50).await;
        let stats = a.stats();
        assert!(stats.write_batches < stats.frames_out, "{stats:?}");
        a.shutdown();
        b.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_sends_are_dropped_before_the_link() {
    with_timeout(async {
        let (b, mut b_in) = endpoint(config(true, &[], 16)).await;
        let b_addr = b.local_addr().expect("b listens");
        let mut small = config(false, &[(B, b_addr)], 16);
        small.frame_bytes_max = 1024;
        let (a, _a_in) = endpoint(small).await;
        a.send_to_peer(B, frame(&reply(4096)));
        a.send_to_peer(B, Bytes::new());
        a.send_to_peer(B, frame(&prepare(1)));
        assert_eq!(seq_of(&recv(&mut b_in).await.message), 1);
        assert_eq!(a.stats().dropped_oversized, 2);
        assert_eq!(b.stats().refused.total(), 0);
        a.shutdown();
        b.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_the_listener_and_connections() {
    with_timeout(async {
        let (b, _b_in) = endpoint(config(true, &[], 16)).await;
        let b_addr = b.local_addr().expect("b listens");
        let mut raw = TcpStream::connect(b_addr).await.expect("connecting");
        eventually(|| b.stats().connections_accepted == 1).await;
        b.shutdown();
        assert_closed_by_peer(&mut raw).await;
        loop {
            if TcpStream::connect(b_addr).await.is_err() {
                break;
            }
            sleep(Duration::from_millis(5)).await;
        }
        b.send_to_peer(B, frame(&prepare(1)));
        assert_eq!(b.stats().dropped_unroutable, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_shuts_the_endpoint_down() {
    with_timeout(async {
        let (b, _b_in) = endpoint(config(true, &[], 16)).await;
        let b_addr = b.local_addr().expect("b listens");
        let mut raw = TcpStream::connect(b_addr).await.expect("connecting");
        eventually(|| b.stats().connections_accepted == 1).await;
        drop(b);
        assert_closed_by_peer(&mut raw).await;
    })
    .await;
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_and_counted() {
    with_timeout(async {
        let mut limited = config(true, &[], 16);
        limited.accepted_connections_max = 2;
        let (b, _b_in) = endpoint(limited).await;
        let address = b.local_addr().expect("b listens");
        let _first = TcpStream::connect(address).await.expect("first connects");
        let _second = TcpStream::connect(address).await.expect("second connects");
        eventually(|| b.stats().connections_accepted == 2).await;
        let mut third = TcpStream::connect(address).await.expect("the TCP handshake completes");
        let mut byte = [0u8; 1];
        let closed = matches!(third.read(&mut byte).await, Ok(0) | Err(_));
        assert!(closed, "the connection beyond the limit is closed");
        assert_eq!(b.stats().connections_refused_limit, 1);
        // Once a connection ends its place is free again (the server notices the close
        // asynchronously, so retry until it has).
        drop(_first);
        let mut later = Vec::new();
        while b.stats().connections_accepted < 3 {
            later.push(TcpStream::connect(address).await.expect("connects"));
            sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(b.stats().connections_accepted, 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configurations_are_refused() {
    let (sender, _receiver) = mpsc::channel(1);
    let mut zero_queue = config(true, &[], 0);
    assert_eq!(
        start(zero_queue.clone(), sender.clone()).await.map(|_| ()).map_err(|e| e.kind()),
        Err(io::ErrorKind::InvalidInput)
    );
    zero_queue.send_queue_frames_max = 1;
    zero_queue.reconnect_min_ms = 500;
    zero_queue.reconnect_max_ms = 100;
    assert_eq!(start(zero_queue, sender).await.map(|_| ()).map_err(|e| e.kind()), Err(io::ErrorKind::InvalidInput));
}

/// The actix runtime: a current-thread tokio runtime driving a `LocalSet`.
#[test]
fn works_on_a_current_thread_runtime_with_a_local_set() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("building a runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        with_timeout(async {
            let (b, mut b_in) = endpoint(config(true, &[], 16)).await;
            let b_addr = b.local_addr().expect("b listens");
            let (a, mut a_in) = endpoint(config(false, &[(B, b_addr)], 256)).await;
            for seq in 0..100 {
                a.send_to_peer(B, frame(&prepare(seq)));
            }
            let mut last = None;
            for seq in 0..100 {
                let got = recv(&mut b_in).await;
                assert_eq!(seq_of(&got.message), seq);
                last = Some(got.connection);
            }
            let connection = last.expect("a connection");
            b.send_to_connection(connection, frame(&reply(10)));
            assert_eq!(recv(&mut a_in).await.message, reply(10));
            a.shutdown();
            b.shutdown();
        })
        .await;
    });
}

/// The wide-area emulation is honest: over an emulated 1 Mbit/s, 50 ms link, one small
/// frame arrives 50 ms (plus its transmission time) after it is sent, and a known volume
/// (40 frames of about 1.6 KB, some 0.5 s of transmission) arrives 50 ms plus its
/// transmission time after the first frame is sent. Tolerance: never early (by more than
/// 2 ms of timer rounding) and at most 10% + 25 ms late (loopback, scheduling and timer
/// granularity on a loaded 2-core machine). The link's counters carry what crossed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emulated_link_adds_its_latency_and_the_transmission_time() {
    with_timeout(async {
        let (b, mut b_in) = endpoint(config(true, &[], 64)).await;
        let b_addr = b.local_addr().expect("b listens");
        let mut shaped = config(false, &[(B, b_addr)], 256);
        shaped.wan.insert(B.cluster, LinkModel::symmetric(50, 1.0));
        let (a, _a_in) = endpoint(shaped).await;
        let link = LinkModel::symmetric(50, 1.0);
        let within = |elapsed: Duration, expected: Duration| {
            let late = expected.mul_f64(1.1) + Duration::from_millis(25);
            assert!(
                elapsed + Duration::from_millis(2) >= expected && elapsed <= late,
                "took {elapsed:?}, expected {expected:?} (at most {late:?})"
            );
        };
        // The first frame also waits for the connection.
        a.send_to_peer(B, frame(&prepare(0)));
        recv(&mut b_in).await;

        let small = frame(&prepare(1));
        let started = WallClock::now();
        a.send_to_peer(B, small.clone());
        recv(&mut b_in).await;
        within(started.elapsed(), Duration::from_millis(50) + link.transmission(small.len()));

        let bulk: Vec<Bytes> = (0..40).map(|_| frame(&reply(1_500))).collect();
        let volume: usize = bulk.iter().map(Bytes::len).sum();
        let started = WallClock::now();
        for frame in &bulk {
            a.send_to_peer(B, frame.clone());
        }
        for _ in &bulk {
            recv(&mut b_in).await;
        }
        within(started.elapsed(), Duration::from_millis(50) + link.transmission(volume));

        let stats = a.link_stats()[&B];
        assert_eq!((stats.frames, stats.lost, stats.dropped), (42, 0, 0));
        assert_eq!(stats.bytes, (frame(&prepare(0)).len() + small.len() + volume) as u64);
        assert!(stats.queueing_max_us >= link.transmission(volume).as_micros() as u64 * 9 / 10, "{stats:?}");
        a.shutdown();
        b.shutdown();
    })
    .await;
}

/// A link whose loss is not a probability below 1 is refused at start, with the reason.
#[tokio::test]
async fn an_emulated_link_with_impossible_loss_is_refused() {
    let mut bad = config(false, &[], 16);
    bad.wan.insert(ClusterId(3), LinkModel { loss: 1.5, ..LinkModel::symmetric(50, 1.0) });
    let (sender, _receiver) = mpsc::channel(1);
    let error = start(bad, sender).await.expect_err("refused");
    assert!(error.to_string().contains("loss"), "{error}");
}
