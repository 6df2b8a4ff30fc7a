//! Byzantine clients against a real cluster: the simulator's client strategies
//! ([`ByzantineClient`]) carried out over TCP, for `bulwark bench --attack` and the live
//! tests. The strategy decides what to send; this module only paces it, opens a connection
//! to each replica (again after a replica closes one, as it does on a bad signature), writes
//! the frames and reads and discards whatever comes back.

use bulwark_crypto::KeyPair;
use bulwark_framework::sim::byzantine_client::{ByzantineClient, ByzantineClientSpec, ClientAttack};
use bulwark_framework::{wire, Instant, Membership, ReplicaId, Scope};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

/// Default pace of an attacking client: strategy steps per second. Each step of the
/// simulator's strategies sends one to ten requests to each replica, so this is about
/// 1,000 to 10,000 requests a second per replica: a flood on a 2-core host where the
/// cluster itself orders ~10,000 signed requests a second, yet light enough that the
/// attacker's own signing does not take the cores the cluster measures on.
pub const CLIENT_ATTACK_STEPS_PER_S: u64 = 1_000;

/// What an attacking client did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientAttackReport {
    /// Requests written (each copy to each replica counted).
    pub requests_sent: u64,
    /// Connections opened, the first one to each replica included: more than the replicas
    /// means replicas closed the attacker's connections.
    pub connections_opened: u64,
    pub steps: u64,
}

/// A running attacking client; [`ClientAttacker::stop`] ends it and reports.
#[derive(Debug)]
pub struct ClientAttacker {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<ClientAttackReport>,
}

impl ClientAttacker {
    /// Starts `attack` against the replicas at `addresses`, `steps_per_s` strategy steps a
    /// second. Must be called inside a tokio runtime.
    pub fn start(
        attack: ClientAttack,
        membership: Arc<Membership>,
        addresses: BTreeMap<ReplicaId, SocketAddr>,
        steps_per_s: u64,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let key = KeyPair::generate(&mut rand::rngs::OsRng);
        let other_key = KeyPair::generate(&mut rand::rngs::OsRng);
        let spec = ByzantineClientSpec { attack, until: Instant(u64::MAX) };
        let scope = membership.scope();
        let client = ByzantineClient::new(key, other_key, membership, spec);
        let interval = Duration::from_micros(1_000_000 / steps_per_s.max(1));
        let task = tokio::spawn(drive(client, scope, addresses, interval, stop.clone(), sent.clone()));
        ClientAttacker { stop, sent, task }
    }

    /// Requests written so far.
    pub fn requests_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops the attack and reports what it did.
    pub async fn stop(self) -> ClientAttackReport {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

async fn drive(
    mut client: ByzantineClient,
    scope: Scope,
    addresses: BTreeMap<ReplicaId, SocketAddr>,
    interval: Duration,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> ClientAttackReport {
    let mut report = ClientAttackReport::default();
    let mut links: BTreeMap<ReplicaId, OwnedWriteHalf> = BTreeMap::new();
    let started = std::time::Instant::now();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let now = Instant(started.elapsed().as_micros() as u64);
        let (sends, _) = client.on_tick(now);
        report.steps += 1;
        let mut frames: BTreeMap<ReplicaId, (Vec<u8>, u64)> = BTreeMap::new();
        for send in sends {
            if let Ok(frame) = wire::encode_frame(scope, &send.message) {
                let (bytes, count) = frames.entry(send.to).or_default();
                bytes.extend_from_slice(&frame);
                *count += 1;
            }
        }
        for (replica, (bytes, count)) in frames {
            let Some(address) = addresses.get(&replica) else { continue };
            let writer = match links.entry(replica) {
                std::collections::btree_map::Entry::Occupied(link) => link.into_mut(),
                std::collections::btree_map::Entry::Vacant(place) => {
                    let connect = TcpStream::connect(address);
                    let Ok(Ok(stream)) = tokio::time::timeout(interval.max(Duration::from_millis(50)), connect).await
                    else {
                        continue;
                    };
                    report.connections_opened += 1;
                    let _ = stream.set_nodelay(true);
                    let (mut reader, writer) = stream.into_split();
                    // Replies and refusals come back on the connection: read and drop them.
                    tokio::spawn(async move {
                        let mut sink = vec![0u8; 64 * 1024];
                        while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
                    });
                    place.insert(writer)
                }
            };
            // A replica that closed the connection (a refused signature) or stopped reading
            // costs this step's frames: the next step dials again.
            let written = tokio::time::timeout(Duration::from_millis(100), writer.write_all(&bytes)).await;
            if matches!(written, Ok(Ok(()))) {
                report.requests_sent += count;
            } else {
                links.remove(&replica);
            }
        }
        sent.store(report.requests_sent, Ordering::Relaxed);
    }
    report
}
