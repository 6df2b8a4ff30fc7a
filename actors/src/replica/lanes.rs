//! A replica's inbound lanes: one for clients and one per member, each with its own budget
//! of messages in flight, moving what the transport reads through the verifier pool to the
//! replica actor. Split by sender so that a flood fills only its own lane.

use super::group_commit::InboundGate;
use super::saturated::Saturation;
use super::{Deliver, DeliverAll};
use crate::recent_requests::{RequestKey, SharedRecentRequests};
use crate::transport::{ConnectionId, Inbound, InboundLanes, TransportHandle, WeakTransportHandle};
use crate::verifier::{Origin, PoolStopped, VerifierPool};
use actix::prelude::*;
use bulwark_framework::config::ClientAuth;
use bulwark_framework::messages::{MessageKind, VerifiedMessage};
use bulwark_framework::sim::byzantine::Strategy;
use bulwark_framework::verify::{check_scope, verify_requests, ClientKeyCache, Refusal};
use bulwark_framework::{Membership, Scope};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Client messages (requests, inquiries) a replica may be verifying or handling at once.
/// Beyond this the client lane stops reading, and TCP pushes back on the clients.
const CLIENT_IN_FLIGHT_MAX: usize = 512;

/// Protocol messages from all peer replicas together that a replica may be verifying or
/// handling at once, shared equally among the members (see [`replica_in_flight_per_sender_max`]).
const REPLICA_IN_FLIGHT_MAX: usize = 512;

/// A peer's share of [`REPLICA_IN_FLIGHT_MAX`] never falls below this, however large the
/// cluster: a PRE-PREPARE, its PREPAREs and COMMITs and a CHECKPOINT in flight at once.
const REPLICA_IN_FLIGHT_PER_SENDER_MIN: usize = 16;

/// Protocol messages one peer may have in verification or handling at once. Each peer has
/// its own lane and its own budget, so one that floods (valid or not) fills only its own
/// lane and TCP pushes back on it alone; the others' messages still get through.
fn replica_in_flight_per_sender_max(n: usize) -> usize {
    (REPLICA_IN_FLIGHT_MAX / n.max(1)).max(REPLICA_IN_FLIGHT_PER_SENDER_MIN)
}

/// Inbound messages a replica may be verifying or handling at once, every lane together:
/// the bound on its actor's mailbox.
pub(super) fn inbound_in_flight_max(n: usize) -> usize {
    CLIENT_IN_FLIGHT_MAX + n * replica_in_flight_per_sender_max(n)
}

/// The receiving ends of a replica's inbound lanes: one for clients, one per member.
#[derive(Debug)]
pub(crate) struct InboundReceivers {
    client: mpsc::Receiver<Inbound>,
    replicas: Vec<mpsc::Receiver<Inbound>>,
}

/// A replica's inbound lanes: clients' messages in one, each member's protocol messages
/// in its own (by the sender they claim, [`Origin::of`]). The transport's readers wait for
/// room in their message's lane only, so clients filling theirs do not hold up the
/// replicas' traffic, nor does one flooding replica hold up the others'.
pub(crate) fn inbound_lanes(membership: &Arc<Membership>) -> (InboundLanes, InboundReceivers) {
    let n = membership.n();
    let (client_tx, client) = mpsc::channel(CLIENT_IN_FLIGHT_MAX);
    let (replica_txs, replicas): (Vec<_>, Vec<_>) =
        (0..n).map(|_| mpsc::channel(replica_in_flight_per_sender_max(n))).unzip();
    let mut senders = vec![client_tx];
    senders.extend(replica_txs);
    let membership = membership.clone();
    // Lane 0 is the clients'; member `i` of the sorted member list has lane `1 + i`.
    let lanes = InboundLanes::new(senders, move |message| match Origin::of(message, &membership) {
        Origin::Client => 0,
        Origin::Replica(replica) => 1 + membership.replicas().position(|member| member == replica).unwrap_or(0),
    });
    (lanes, InboundReceivers { client, replicas })
}

/// Moves inbound messages through the verifier pool to `target`, lane by lane, and none
/// while `gate` is closed (a durable replica whose disk is behind; see
/// [`HELD_ACTIONS_MAX`](super::HELD_ACTIONS_MAX)). Each lane has its own budget of messages
/// in flight (taken before verification, returned once the actor has handled the message):
/// [`CLIENT_IN_FLIGHT_MAX`] for clients, [`replica_in_flight_per_sender_max`] for each
/// member. A lane out of budget stops reading; the others go on. The verifier pool then
/// serves the replicas' lanes first (see [`crate::verifier`]).
///
/// Client requests that are already waiting together (up to [`REQUEST_CHUNK_MAX`]) are
/// verified as one ed25519 batch and handed to `batch_target` in one actor message, so the
/// primary pays about half a signature check per request and one actor hop per burst
/// rather than per request. With `client_auth = "connection"` they are only size-checked,
/// here, without a trip to the pool.
///
/// A message the verifier refuses (counted there) proves its sender misbehaves: every
/// [`Refusal`](bulwark_framework::verify::Refusal) it returns is a bad signature, a sender
/// outside the cluster, a malformed batch or an invalid certificate inside a VIEW-CHANGE or
/// NEW-VIEW, never a matter of protocol state. The connection it came on is closed through
/// `transport` (and counted there); messages already read from it are still verified and
/// delivered on their own merit. `transport` is held weakly, so the forwarder never keeps
/// an endpoint running that its owner has dropped.
pub(crate) fn forward(
    receivers: InboundReceivers,
    verifier: VerifierPool,
    target: Recipient<Deliver>,
    batch_target: Recipient<DeliverAll>,
    transport: &TransportHandle,
    lanes: Lanes,
) {
    let transport = transport.downgrade();
    let per_sender = replica_in_flight_per_sender_max(receivers.replicas.len());
    for replica_lane in receivers.replicas {
        actix::spawn(forward_replica_lane(
            replica_lane,
            per_sender,
            verifier.clone(),
            target.clone(),
            transport.clone(),
            lanes.clone(),
        ));
    }
    actix::spawn(forward_client_lane(receivers.client, verifier, target, batch_target, transport, lanes));
}

/// What the inbound lanes of one replica share besides the verifier.
#[derive(Debug, Clone, Default)]
pub(crate) struct Lanes {
    /// The strategy of a Byzantine replica: messages it does not read are dropped
    /// unverified ([`Strategy::listens_to`]).
    pub(crate) byzantine: Option<Strategy>,
    /// Closed while the replica's store catches up (group commit).
    pub(crate) gate: InboundGate,
    /// Client requests this replica verified lately: a copy (a relay, a broadcast, a
    /// request sent again) is not verified again.
    pub(crate) recent: SharedRecentRequests,
    /// Clients holding their whole window at this replica's primary role or view-changer:
    /// their requests are dropped unverified.
    pub(crate) saturated: Saturation,
}

impl Lanes {
    /// Whether `message` is verified and delivered at all.
    fn wanted(&self, message: &bulwark_framework::Message) -> bool {
        self.byzantine.is_none_or(|strategy| strategy.listens_to(message.kind()))
    }

    /// Whether `request` comes from a client that holds its whole window here already.
    fn over_window(&self, request: &SignedRequest) -> bool {
        self.saturated.contains(request.payload.client())
    }

    /// `request` as verified before by this replica, if it was lately.
    fn recall(
        &self,
        scope: Scope,
        request: &SignedRequest,
    ) -> Option<bulwark_crypto::Verified<bulwark_framework::messages::Request>> {
        let key = RequestKey::of(scope, request)?;
        self.recent.lock().ok()?.get(key)
    }

    fn remember(&self, request: &bulwark_crypto::Verified<bulwark_framework::messages::Request>) {
        if let Ok(mut recent) = self.recent.lock() {
            recent.insert(request.clone());
        }
    }
}

/// One member's lane: each message verified on its own, at most `in_flight_max` at once.
async fn forward_replica_lane(
    mut inbound: mpsc::Receiver<Inbound>,
    in_flight_max: usize,
    verifier: VerifierPool,
    target: Recipient<Deliver>,
    transport: WeakTransportHandle,
    lanes: Lanes,
) {
    let permits = Arc::new(Semaphore::new(in_flight_max));
    loop {
        lanes.gate.wait_open().await;
        let Some(Inbound { connection, scope, message, .. }) = inbound.recv().await else {
            break;
        };
        if !lanes.wanted(&message) {
            continue;
        }
        // A request relayed by a backup (R3): dropped if its client holds its window here,
        // delivered without a second check if this replica verified it already (in the
        // scope its envelope names, which must be this replica's).
        if let bulwark_framework::Message::Request(request) = &message {
            if lanes.over_window(request) {
                continue;
            }
            if let Some(known) = lanes.recall(scope, request).filter(|_| scope == verifier.membership.scope()) {
                let _ = target.send(Deliver { message: VerifiedMessage::Request(known), connection }).await;
                continue;
            }
        }
        if !spawn_verify_and_deliver(&permits, scope, message, connection, &verifier, &target, &transport, &lanes).await
        {
            return;
        }
    }
}

/// Takes one of `permits` (waiting while all are in use: that is the lane's backpressure)
/// and verifies and delivers `message` on a task of its own. False once the permits are
/// closed.
#[allow(clippy::too_many_arguments)]
async fn spawn_verify_and_deliver(
    permits: &Arc<Semaphore>,
    scope: Scope,
    message: bulwark_framework::Message,
    connection: ConnectionId,
    verifier: &VerifierPool,
    target: &Recipient<Deliver>,
    transport: &WeakTransportHandle,
    lanes: &Lanes,
) -> bool {
    let Ok(permit) = permits.clone().acquire_owned().await else {
        return false;
    };
    let (verifier, target, transport, lanes) = (verifier.clone(), target.clone(), transport.clone(), lanes.clone());
    actix::spawn(verify_and_deliver(scope, message, connection, verifier, target, transport, lanes, permit));
    true
}

/// Verifies `message` and hands it to `target`; `permit` is held until the actor handled
/// it.
#[allow(clippy::too_many_arguments)]
async fn verify_and_deliver(
    scope: Scope,
    message: bulwark_framework::Message,
    connection: ConnectionId,
    verifier: VerifierPool,
    target: Recipient<Deliver>,
    transport: WeakTransportHandle,
    lanes: Lanes,
    permit: OwnedSemaphorePermit,
) {
    match verifier.verify(scope, message).await {
        Ok(Ok(message)) => {
            if let VerifiedMessage::Request(request) = &message {
                lanes.remember(request);
            }
            let _ = target.send(Deliver { message, connection }).await;
        }
        Ok(Err(refusal)) => close_refused(&transport, connection, &refusal),
        // The verifier pool is gone: the system is stopping.
        Err(PoolStopped) => {}
    }
    drop(permit);
}

/// Client requests read but not yet handed to verification, at most
/// [`CLIENT_REQUESTS_WAITING_MAX`], queued per connection and taken in turn (Aardvark's
/// fairness for clients): a connection flooding valid requests gets one place per round
/// in each verification job, like every other connection with requests waiting, instead of
/// the whole job. When the bound is reached the longest queue loses its newest request,
/// unverified, so a flood costs its sender its own requests, not the others', and no CPU.
#[derive(Debug, Default)]
pub(crate) struct FairRequests {
    queues: BTreeMap<ConnectionId, VecDeque<SignedRequest>>,
    /// Connections with requests waiting, in the order they are served next.
    turns: VecDeque<ConnectionId>,
    waiting: usize,
}

/// A client request as read, before its signature is checked.
type SignedRequest = bulwark_crypto::Signed<bulwark_framework::messages::Request>;

/// Client requests [`FairRequests`] holds at most. A correct client has at most its window
/// outstanding, and the verifier takes [`REQUEST_CHUNK_MAX`] at a time.
const CLIENT_REQUESTS_WAITING_MAX: usize = 4 * REQUEST_CHUNK_MAX;

impl FairRequests {
    /// Queues `request`; returns how many requests were shed to stay within the bound.
    pub(crate) fn push(&mut self, connection: ConnectionId, request: SignedRequest) -> u64 {
        let queue = self.queues.entry(connection).or_default();
        if queue.is_empty() {
            self.turns.push_back(connection);
        }
        queue.push_back(request);
        self.waiting += 1;
        if self.waiting <= CLIENT_REQUESTS_WAITING_MAX {
            return 0;
        }
        let longest = self.queues.iter().max_by_key(|(_, queue)| queue.len()).map(|(c, _)| *c);
        if let Some(longest) = longest {
            let queue = self.queues.get_mut(&longest).expect("found above");
            queue.pop_back();
            self.waiting -= 1;
            if queue.is_empty() {
                self.queues.remove(&longest);
                self.turns.retain(|c| *c != longest);
            }
        }
        1
    }

    /// Up to `max` requests, one from each connection in turn.
    pub(crate) fn take(&mut self, max: usize) -> Vec<(ConnectionId, SignedRequest)> {
        let mut taken = Vec::with_capacity(max.min(self.waiting));
        while taken.len() < max {
            let Some(connection) = self.turns.pop_front() else { break };
            let queue = self.queues.get_mut(&connection).expect("a connection in turn has a queue");
            taken.push((connection, queue.pop_front().expect("a connection in turn has a request")));
            self.waiting -= 1;
            if queue.is_empty() {
                self.queues.remove(&connection);
            } else {
                self.turns.push_back(connection);
            }
        }
        taken
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.waiting == 0
    }
}

/// The clients' lane: requests are verified in jobs taken in turn from each connection's
/// queue ([`FairRequests`]), anything else (inquiries, messages claiming a sender outside
/// the cluster) on its own; at most [`CLIENT_IN_FLIGHT_MAX`] at once.
async fn forward_client_lane(
    mut inbound: mpsc::Receiver<Inbound>,
    verifier: VerifierPool,
    target: Recipient<Deliver>,
    batch_target: Recipient<DeliverAll>,
    transport: WeakTransportHandle,
    lanes: Lanes,
) {
    let permits = Arc::new(Semaphore::new(CLIENT_IN_FLIGHT_MAX));
    let mut fair = FairRequests::default();
    loop {
        lanes.gate.wait_open().await;
        // Wait for input only when nothing is queued; otherwise take what is already
        // waiting, so requests that arrived in one burst are verified as one job and handed
        // to the replica in one message.
        let mut arrived = Vec::new();
        if fair.is_empty() {
            let Some(first) = inbound.recv().await else {
                break;
            };
            arrived.push(first);
        }
        while arrived.len() < CLIENT_REQUESTS_WAITING_MAX {
            match inbound.try_recv() {
                Ok(next) => arrived.push(next),
                Err(_) => break,
            }
        }
        let mut shed = 0;
        let mut known = Vec::new();
        let membership = verifier.membership.current();
        let signed_requests = membership.params.client_auth == ClientAuth::Signed;
        for Inbound { connection, scope, message, .. } in arrived {
            if !lanes.wanted(&message) {
                continue;
            }
            if let bulwark_framework::Message::Request(request) = message {
                // Requests are verified in jobs of many, all in this replica's scope: one
                // for another cluster is refused here, for what it is.
                if let Err(refusal) = check_scope(scope, MessageKind::Request, &membership) {
                    if let Ok(mut counts) = verifier.refused.lock() {
                        counts.record(&refusal);
                    }
                    close_refused(&transport, connection, &refusal);
                    continue;
                }
                if lanes.over_window(&request) {
                    shed += 1;
                    continue;
                }
                // Only a checked signature is worth remembering (with connection-trusted
                // links nothing is checked, so nothing is looked up either).
                match signed_requests.then(|| lanes.recall(scope, &request)).flatten() {
                    Some(request) => known.push(Deliver { message: VerifiedMessage::Request(request), connection }),
                    None => shed += fair.push(connection, request),
                }
                continue;
            }
            if !spawn_verify_and_deliver(&permits, scope, message, connection, &verifier, &target, &transport, &lanes)
                .await
            {
                return;
            }
        }
        if !known.is_empty() {
            let _ = batch_target.send(DeliverAll(known)).await;
        }
        if shed > 0 {
            tracing::debug!(shed, "client requests over their connection's share shed unverified");
            if let Ok(mut counts) = verifier.refused.lock() {
                counts.add(bulwark_framework::verify::RefusalKind::OverClientShare, shed);
            }
        }
        let requests = fair.take(REQUEST_CHUNK_MAX);
        if requests.is_empty() {
            continue;
        }
        let Ok(permit) = permits.clone().acquire_many_owned(requests.len() as u32).await else {
            return;
        };
        let (connections, signed): (Vec<ConnectionId>, Vec<_>) = requests.into_iter().unzip();
        if membership.params.client_auth == ClientAuth::Connection {
            // Nothing to check but sizes: done here rather than on another thread.
            let mut keys = ClientKeyCache::default();
            let results = verify_requests(signed, &membership, &mut keys);
            deliver_requests(connections, results, &batch_target, &transport, &verifier, None).await;
            drop(permit);
            continue;
        }
        let batch_target = batch_target.clone();
        let transport = transport.clone();
        let pool = verifier.clone();
        let lanes = lanes.clone();
        actix::spawn(async move {
            if let Ok(results) = pool.verify_requests(signed).await {
                deliver_requests(connections, results, &batch_target, &transport, &pool, Some(&lanes)).await;
            }
            drop(permit);
        });
    }
}

/// Client requests read together and handed to one verifier job (at most this many).
const REQUEST_CHUNK_MAX: usize = 256;

fn close_refused(transport: &WeakTransportHandle, connection: ConnectionId, refusal: &Refusal) {
    tracing::warn!(%connection, %refusal, "closing connection after a refused message");
    if let Some(transport) = transport.upgrade() {
        transport.close_connection(connection);
    }
}

async fn deliver_requests(
    connections: Vec<ConnectionId>,
    results: Vec<Result<bulwark_crypto::Verified<bulwark_framework::messages::Request>, Refusal>>,
    target: &Recipient<DeliverAll>,
    transport: &WeakTransportHandle,
    pool: &VerifierPool,
    remember_in: Option<&Lanes>,
) {
    let mut delivers = Vec::with_capacity(results.len());
    for (connection, result) in connections.into_iter().zip(results) {
        match result {
            Ok(request) => {
                if let Some(lanes) = remember_in {
                    lanes.remember(&request);
                }
                delivers.push(Deliver { message: VerifiedMessage::Request(request), connection })
            }
            Err(refusal) => {
                if pool.membership.current().params.client_auth == ClientAuth::Connection {
                    // Checked here, not on the pool: count it where the pool counts.
                    if let Ok(mut counts) = pool.refused.lock() {
                        counts.record(&refusal);
                    }
                }
                close_refused(transport, connection, &refusal);
            }
        }
    }
    if !delivers.is_empty() {
        let _ = target.send(DeliverAll(delivers)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{self, TransportConfig};
    use bulwark_crypto::{Digest, KeyPair, Signed};
    use bulwark_framework::messages::{MessageKind, Prepare, Request};
    use bulwark_framework::verify::RefusalKind;
    use bulwark_framework::{Message, ReplicaId, SeqNum, Timestamp, View};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;
    use tokio::sync::watch;

    use crate::test_fixtures::{cluster, replica_key};

    fn signed_request(timestamp: u64) -> Signed<Request> {
        match request(timestamp) {
            Message::Request(signed) => signed,
            _ => unreachable!("request() builds a request"),
        }
    }

    /// A Byzantine replica's lanes drop what its strategy does not read before anything is
    /// verified; a correct replica's lanes pass everything.
    #[test]
    fn lanes_drop_unverified_what_an_attacker_does_not_read() {
        let lanes = |byzantine| Lanes { byzantine, ..Lanes::default() };
        let checkpoint = Message::Checkpoint(crate::test_fixtures::sign(
            bulwark_framework::messages::Checkpoint {
                seq: SeqNum(128),
                state_digest: Digest::of(b"state"),
                replica: ReplicaId(1),
            },
            &replica_key(1),
        ));
        for message in [request(1), prepare(1), checkpoint.clone()] {
            assert!(lanes(None).wanted(&message), "{:?}", message.kind());
            assert!(!lanes(Some(Strategy::Silent)).wanted(&message), "{:?}", message.kind());
        }
        let flood = lanes(Some(Strategy::Flood));
        assert!(flood.wanted(&checkpoint) && flood.wanted(&prepare(1)));
        assert!(!flood.wanted(&request(1)));
        assert!(lanes(Some(Strategy::EquivocatingPrimary)).wanted(&request(1)));
    }

    /// A client the replica reports saturated (it holds its whole window there) has its
    /// requests dropped before verification; another client's pass.
    #[test]
    fn lanes_drop_a_saturated_clients_requests_unverified() {
        let lanes = Lanes::default();
        let request = signed_request(1);
        assert!(!lanes.over_window(&request));
        lanes.saturated.view_changer.0.lock().unwrap().clients.insert(request.payload.client());
        assert!(lanes.over_window(&request));
        let other = crate::test_fixtures::sign(
            Request { client_key: replica_key(1).public().into(), ..request.payload.clone() },
            &replica_key(1),
        );
        assert!(!lanes.over_window(&other));
    }

    /// Aardvark's client fairness: a connection flooding requests gets one place per round
    /// in each verification job, and at the bound its own newest requests are shed, not
    /// another connection's.
    #[test]
    fn a_flooding_connection_gets_one_place_per_round_and_is_shed_first() {
        let (flood, client) = (ConnectionId(1), ConnectionId(2));
        let mut fair = FairRequests::default();
        for timestamp in 1..=100 {
            assert_eq!(fair.push(flood, signed_request(timestamp)), 0);
        }
        for timestamp in 1..=3 {
            fair.push(client, signed_request(1_000 + timestamp));
        }
        let taken: Vec<(u64, u64)> = fair.take(8).into_iter().map(|(c, r)| (c.0, r.payload.timestamp.0)).collect();
        assert_eq!(taken, vec![(1, 1), (2, 1001), (1, 2), (2, 1002), (1, 3), (2, 1003), (1, 4), (1, 5)]);
        let mut shed = 0;
        for timestamp in 101..=(CLIENT_REQUESTS_WAITING_MAX as u64 + 200) {
            shed += fair.push(flood, signed_request(timestamp));
        }
        fair.push(client, signed_request(2_000));
        shed += fair.push(client, signed_request(2_001));
        assert!(shed > 0, "the bound was reached");
        let taken = fair.take(2);
        assert_eq!(taken[1].0, client, "the client's requests survived the flood: {:?}", taken[1].1.payload.timestamp);
        assert_eq!(taken[1].1.payload.timestamp.0, 2_000);
        let rest = fair.take(usize::MAX);
        assert_eq!(rest.len() + 2, CLIENT_REQUESTS_WAITING_MAX, "held exactly the bound");
        assert!(rest.iter().any(|(c, r)| *c == client && r.payload.timestamp.0 == 2_001));
    }

    fn request(timestamp: u64) -> Message {
        let key = KeyPair::from_seed([100; 32]);
        let payload = Request {
            client_key: key.public().into(),
            timestamp: Timestamp(timestamp),
            read_only: false,
            operation: vec![],
        };
        Message::Request(crate::test_fixtures::sign(payload, &key))
    }

    fn prepare(replica: u32) -> Message {
        let payload =
            Prepare { view: View(0), seq: SeqNum(1), digest: Digest::of(b"batch"), replica: ReplicaId(replica) };
        Message::Prepare(crate::test_fixtures::sign(payload, &replica_key(replica)))
    }

    /// Stands in for the replica actor: records what it is handed, and holds every batch of
    /// client requests until `handling` opens, as a replica busy elsewhere would.
    struct Sink {
        protocol_messages: Arc<Mutex<Vec<MessageKind>>>,
        requests_handled: Arc<AtomicUsize>,
        requests_in_hand: Arc<AtomicUsize>,
        handling: watch::Receiver<bool>,
    }

    impl Actor for Sink {
        type Context = Context<Self>;
    }

    impl Handler<Deliver> for Sink {
        type Result = ();

        fn handle(&mut self, deliver: Deliver, _: &mut Context<Self>) {
            self.protocol_messages.lock().unwrap().push(deliver.message.kind());
        }
    }

    impl Handler<DeliverAll> for Sink {
        type Result = ResponseFuture<()>;

        fn handle(&mut self, DeliverAll(requests): DeliverAll, _: &mut Context<Self>) -> Self::Result {
            let mut handling = self.handling.clone();
            let handled = self.requests_handled.clone();
            let in_hand = self.requests_in_hand.clone();
            in_hand.fetch_add(requests.len(), Ordering::SeqCst);
            Box::pin(async move {
                let _ = handling.wait_for(|open| *open).await;
                in_hand.fetch_sub(requests.len(), Ordering::SeqCst);
                handled.fetch_add(requests.len(), Ordering::SeqCst);
            })
        }
    }

    async fn eventually(what: &str, condition: impl Fn() -> bool) {
        for _ in 0..30_000 {
            if condition() {
                return;
            }
            actix_rt::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("timed out waiting until {what}");
    }

    /// A client flood against a replica that is slow to handle requests: the client lane
    /// takes what its budget allows and then pushes back (nothing beyond a fixed bound is
    /// read), a PREPARE still passes straight through its own lane, and once the replica
    /// catches up every request read is delivered or, beyond the connection's share of the
    /// waiting queue, shed unverified and counted.
    #[actix_rt::test]
    async fn a_client_flood_is_bounded_and_does_not_hold_back_a_replica_message() {
        let cluster = cluster();
        let pool = VerifierPool::start(1, crate::test_fixtures::handle());
        let (lanes, receivers) = inbound_lanes(&cluster);
        let (unused_inbound, _) = mpsc::channel(1);
        let transport = transport::start(
            TransportConfig {
                listen: Some("127.0.0.1:0".parse().unwrap()),
                peers: BTreeMap::new(),
                frame_bytes_max: cluster.params.frame_bytes_max,
                send_queue_frames_max: 16,
                reconnect_min_ms: 20,
                reconnect_max_ms: 1_000,
                accepted_connections_max: 16,
                wan: BTreeMap::new(),
            },
            unused_inbound,
        )
        .await
        .unwrap();
        let (open_handling, handling) = watch::channel(false);
        let protocol_messages = Arc::new(Mutex::new(Vec::new()));
        let requests_handled = Arc::new(AtomicUsize::new(0));
        let requests_in_hand = Arc::new(AtomicUsize::new(0));
        let sink = Sink {
            protocol_messages: protocol_messages.clone(),
            requests_handled: requests_handled.clone(),
            requests_in_hand: requests_in_hand.clone(),
            handling,
        }
        .start();
        forward(receivers, pool.clone(), sink.clone().recipient(), sink.recipient(), &transport, Lanes::default());

        let flood = 3_000;
        let flood_messages: Vec<Message> = (0..flood).map(|t| request(t as u64)).collect();
        let accepted = Arc::new(AtomicUsize::new(0));
        {
            let lanes = lanes.clone();
            let accepted = accepted.clone();
            actix_rt::spawn(async move {
                for message in flood_messages {
                    // What a connection's reader does: wait for room in the message's lane.
                    if lanes
                        .deliver(Inbound {
                            connection: ConnectionId(1),
                            link: None,
                            scope: crate::test_fixtures::SCOPE,
                            message,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    accepted.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        // The forwarder takes what waits in chunks and the budget per chunk, so the budget
        // is full to within one chunk.
        eventually("the client budget is in the replica's hands", || {
            requests_in_hand.load(Ordering::SeqCst) > CLIENT_IN_FLIGHT_MAX - REQUEST_CHUNK_MAX
        })
        .await;
        actix_rt::time::sleep(Duration::from_millis(300)).await;
        // In flight, waiting in the lane's channel, and what the forwarder's fair queue holds
        // while it waits for budget (one connection floods, so beyond that bound its newest
        // requests are shed as they are read): nothing more is kept.
        let shed = || pool.refused().get(RefusalKind::OverClientShare) as usize;
        let bound = CLIENT_IN_FLIGHT_MAX + CLIENT_IN_FLIGHT_MAX + CLIENT_REQUESTS_WAITING_MAX;
        let accepted_while_stuck = accepted.load(Ordering::SeqCst);
        let kept = accepted_while_stuck - shed();
        assert!(kept <= bound, "{kept} requests kept ({accepted_while_stuck} read), bound {bound}");
        assert!(requests_in_hand.load(Ordering::SeqCst) <= CLIENT_IN_FLIGHT_MAX, "the budget holds");

        lanes
            .deliver(Inbound {
                connection: ConnectionId(2),
                link: None,
                scope: crate::test_fixtures::SCOPE,
                message: prepare(1),
            })
            .await
            .unwrap();
        eventually("the PREPARE reached the replica", || !protocol_messages.lock().unwrap().is_empty()).await;
        assert_eq!(*protocol_messages.lock().unwrap(), vec![MessageKind::Prepare]);
        assert_eq!(requests_handled.load(Ordering::SeqCst), 0, "the PREPARE did not wait for the clients");

        open_handling.send_replace(true);
        eventually("every request was delivered or shed", || requests_handled.load(Ordering::SeqCst) + shed() == flood)
            .await;
        assert_eq!(accepted.load(Ordering::SeqCst), flood);
        // Whether the flood also outruns verification once the replica catches up, and so
        // is shed at the waiting bound, depends on how fast the verifier is: it stopped
        // doing so reliably when requests became batch-verified (about 20 µs each instead
        // of 37 µs). Shedding at the bound is pinned by
        // `a_flooding_connection_gets_one_place_per_round_and_is_shed_first`.
    }
}
