//! Commands of the system itself (docs/PBFT.md E2; `framework/src/batch.rs`): a
//! batch orders client requests and system commands alike; a system command is executed
//! by every replica at the same sequence number, in its batch's order, and never reaches
//! the user's service.

use bulwark_crypto::KeyPair;
use bulwark_framework::messages::{Request, SystemCommand, VerifiedMessage};
use bulwark_framework::roles::node::Node;
use bulwark_framework::roles::{Action, ReplicaEvent, TimerKind};
use bulwark_framework::{
    ClusterId, Input, Instant, Membership, MembershipHandle, ProtocolParams, ReplicaId, SeqNum, Service, ServiceError,
    Timestamp,
};
use std::collections::{BTreeMap, VecDeque};

/// Records every operation it executes.
#[derive(Debug, Default)]
struct Recorder {
    executed: Vec<u64>,
}

impl Service for Recorder {
    type Op = u64;
    type Reply = u64;

    fn execute(&mut self, op: &u64, _: &mut bulwark_framework::service::ExecutionContext) -> u64 {
        self.executed.push(*op);
        *op
    }

    fn query(&self, _: &u64, _: &bulwark_framework::service::Caller) -> Option<u64> {
        None
    }

    fn snapshot(&self) -> Vec<u8> {
        rmp_serde::to_vec(&self.executed).expect("a list encodes")
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), ServiceError> {
        self.executed = rmp_serde::from_slice(bytes).map_err(|e| ServiceError(e.to_string()))?;
        Ok(())
    }
}

fn key(i: u32) -> KeyPair {
    KeyPair::from_seed([i as u8 + 1; 32])
}

/// Four replicas, each with its roles, wired directly to each other (every message delivered at once, in order).
struct Cluster {
    replicas: Vec<Node<Recorder>>,
    membership: Membership,
    now: Instant,
    /// What each replica reported, by replica.
    events: BTreeMap<u32, Vec<ReplicaEvent>>,
}

impl Cluster {
    fn new() -> Self {
        let params = ProtocolParams { checkpoint_interval: 4, watermark_window: 8, ..ProtocolParams::default() };
        let membership = Membership::numbered(ClusterId(1), (0..4).map(|i| key(i).public()).collect(), params).unwrap();
        let replicas = (0..4)
            .map(|i| {
                let mut node =
                    Node::new(ReplicaId(i), key(i), MembershipHandle::new(membership.clone()), Recorder::default());
                node.start(Instant::ZERO);
                node
            })
            .collect();
        Cluster { replicas, membership, now: Instant::ZERO, events: BTreeMap::new() }
    }

    /// Hands `input` to replica `to` and everything that follows from it to everyone.
    fn run(&mut self, to: u32, input: Input) {
        let mut queue = VecDeque::from([(to, input)]);
        while let Some((to, input)) = queue.pop_front() {
            for action in self.replicas[to as usize].handle(input, self.now) {
                match action {
                    Action::Broadcast { message } => {
                        for peer in (0..4).filter(|peer| *peer != to) {
                            queue.push_back((peer, Input::Message(message.clone())));
                        }
                    }
                    Action::Send { to, message } => queue.push_back((to.0, Input::Message(message))),
                    Action::Event(event) => self.events.entry(to).or_default().push(event),
                    _ => {}
                }
            }
        }
    }

    fn request(&self, timestamp: u64, op: u64) -> VerifiedMessage {
        let client = KeyPair::from_seed([100; 32]);
        let request = Request {
            client_key: client.public().into(),
            timestamp: Timestamp(timestamp),
            read_only: false,
            operation: rmp_serde::to_vec(&op).unwrap(),
        };
        VerifiedMessage::Request(self.membership.scope().sign(request, &client))
    }

    /// Where each replica executed system commands: `(seq, command)` in order.
    fn system_executed(&self, replica: u32) -> Vec<(SeqNum, SystemCommand)> {
        self.events
            .get(&replica)
            .into_iter()
            .flatten()
            .filter_map(|event| match event {
                ReplicaEvent::SystemExecuted { seq, command } => Some((*seq, command.clone())),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn a_system_command_is_ordered_and_executed_at_every_replica_in_one_place_and_reaches_no_service() {
    let mut cluster = Cluster::new();
    // Replica 0 leads view 0. Two requests wait in its queue, a system command arrives,
    // then the batch timer cuts one batch of all three.
    cluster.now = Instant(1);
    cluster.run(0, Input::Message(cluster.request(1, 11)));
    cluster.run(0, Input::Message(cluster.request(2, 22)));
    let marker = SystemCommand::Marker { label: 7 };
    cluster.run(0, Input::ProposeSystem(marker.clone()));
    cluster.now = Instant(10_000_000);
    cluster.run(0, Input::Timer(TimerKind::Batch));
    cluster.run(0, Input::Message(cluster.request(3, 33)));
    cluster.now = Instant(20_000_000);
    cluster.run(0, Input::Timer(TimerKind::Batch));

    let at_primary = cluster.system_executed(0);
    assert_eq!(at_primary.len(), 1, "{:?}", cluster.events.get(&0));
    let (seq, command) = at_primary[0].clone();
    assert_eq!(command, marker);
    for replica in 0..4 {
        assert_eq!(cluster.system_executed(replica), vec![(seq, marker.clone())], "replica {replica}");
        let recorder = cluster.replicas[replica as usize].service();
        assert_eq!(recorder.executed, vec![11, 22, 33], "replica {replica}: the service saw only the requests");
        assert_eq!(cluster.replicas[replica as usize].last_executed(), cluster.replicas[0].last_executed());
        assert_eq!(cluster.replicas[replica as usize].state_digest(), cluster.replicas[0].state_digest());
    }
}

#[test]
fn a_replica_that_does_not_lead_refuses_to_propose_a_system_command() {
    let mut cluster = Cluster::new();
    cluster.run(1, Input::ProposeSystem(SystemCommand::Marker { label: 1 }));
    cluster.now = Instant(10_000_000);
    cluster.run(1, Input::Timer(TimerKind::Batch));
    assert!((0..4).all(|replica| cluster.system_executed(replica).is_empty()));
    assert_eq!(cluster.replicas[1].metrics().refused_total(), 1);
}

/// N1.e with M3: a pre-prepare whose batch holds a system command between two requests
/// verifies at the edge with every command in its place, through the wire and back; the
/// same batch with the commands in another order has another digest and is refused.
#[test]
fn n1e_m3_a_batch_with_a_system_command_crosses_the_wire_in_order() {
    use bulwark_framework::messages::{Batch, Command, Message, PrePrepare, WireCommand};
    use bulwark_framework::verify::{verify_envelope, RefusalKind};
    use bulwark_framework::wire;
    use bulwark_framework::View;

    let cluster = Cluster::new();
    let scope = cluster.membership.scope();
    let request = |timestamp, op| match cluster.request(timestamp, op) {
        VerifiedMessage::Request(request) => request,
        _ => unreachable!(),
    };
    let commands = vec![
        Command::Request(request(1, 11)),
        Command::System(SystemCommand::Marker { label: 9 }),
        Command::Request(request(2, 22)),
    ];
    let batch = Batch::of(commands.clone());
    let header = PrePrepare { view: View(0), seq: SeqNum(1), digest: batch.digest() };
    let signed = scope.sign(header, &key(0)).into_signed();
    let frame = wire::encode_frame(scope, &Message::PrePrepare(signed.clone(), batch.to_wire())).unwrap();
    let (envelope, _) = wire::decode_frame(&frame, usize::MAX).unwrap().unwrap();
    let Ok(VerifiedMessage::PrePrepare(_, received)) = verify_envelope(envelope, &cluster.membership) else {
        panic!("a well-formed batch with a system command is refused");
    };
    assert_eq!(received.commands(), &commands[..]);
    assert_eq!(received.digest(), batch.digest());

    let mut swapped = batch.to_wire();
    swapped.commands.swap(0, 1);
    assert!(matches!(swapped.commands[0], WireCommand::System(_)));
    let refused =
        verify_envelope(wire::Envelope { scope, message: Message::PrePrepare(signed, swapped) }, &cluster.membership);
    assert_eq!(refused.unwrap_err().kind(), RefusalKind::BatchDigestMismatch);
}
