//! A service's mistakes never stop its replicas, and what a service is told about each
//! operation (PBFT.md N1.f, E5, E6, C8): a panic in `execute` has no effect and is answered,
//! at every replica alike and across restarts; an oversized reply becomes a typed error; a
//! refused snapshot is reported with the service's message; a replica whose state departs
//! from the one a quorum signed names the service as probably not deterministic; the
//! agreed time, the caller and the randomness are what the executor says they are.

mod common;

use bulwark_crypto::{KeyPair, Verified};
use bulwark_framework::messages::{Batch, Command, Request};
use bulwark_framework::roles::executor::{Executor, ExecutorInput, ExecutorOutput, ServiceFault};
use bulwark_framework::roles::Role;
use bulwark_framework::service::{Caller, ExecutionContext, Outcome, Service, ServiceError};
use bulwark_framework::sim::{Restart, SimConfig, Simulation};
use bulwark_framework::{
    ClusterId, Epoch, Instant, Membership, MembershipHandle, ProtocolParams, ReplicaId, Scope, SeqNum, Timestamp, View,
};
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

/// What the test service is asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Op {
    Push(u64),
    /// Pushes, then panics: the push must not survive.
    PushThenPanic(u64),
    /// Answers with `n` bytes.
    Big(usize),
    /// Answers with what the context says.
    Context,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Answer {
    Len(usize),
    Bytes(Vec<u8>),
    Context { caller: Caller, seq: u64, time_us: u64, random: u64 },
}

/// A list of numbers. `skew` makes one replica's snapshot differ from the others' (a
/// service that is not deterministic there).
#[derive(Debug, Default)]
struct Pushes {
    items: Vec<u64>,
    skew: bool,
}

impl Service for Pushes {
    type Op = Op;
    type Reply = Answer;

    fn execute(&mut self, op: &Op, context: &mut ExecutionContext) -> Answer {
        match op {
            Op::Push(n) => self.items.push(*n),
            Op::PushThenPanic(n) => {
                self.items.push(*n);
                panic!("test service refuses {n}");
            }
            Op::Big(n) => return Answer::Bytes(vec![7; *n]),
            Op::Context => {
                let random = context.rng().next_u64();
                let (caller, seq, time_us) = (*context.caller(), context.seq().0, context.time_us());
                return Answer::Context { caller, seq, time_us, random };
            }
        }
        Answer::Len(self.items.len())
    }

    fn query(&self, _: &Op, _: &Caller) -> Option<Answer> {
        Some(Answer::Len(self.items.len()))
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut items = self.items.clone();
        if self.skew {
            items.push(u64::MAX);
        }
        rmp_serde::to_vec(&items).unwrap()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), ServiceError> {
        if snapshot.len() > 1 << 16 {
            return Err(ServiceError("the pushes service holds at most 64 KiB".into()));
        }
        self.items = rmp_serde::from_slice(snapshot).map_err(|e| ServiceError(e.to_string()))?;
        Ok(())
    }
}

const SCOPE: Scope = Scope { cluster: ClusterId(1), epoch: Epoch(0) };

fn params() -> ProtocolParams {
    ProtocolParams { checkpoint_interval: 4, watermark_window: 8, reply_bytes_max: 1_000, ..ProtocolParams::default() }
}

fn executor(params: ProtocolParams) -> Executor<Pushes> {
    let keys: Vec<_> = (0..4u8).map(|i| KeyPair::from_seed([i + 1; 32]).public()).collect();
    let membership = Membership::numbered(SCOPE.cluster, keys, params).unwrap();
    Executor::new(
        ReplicaId(0),
        MembershipHandle::new(membership),
        Pushes::default(),
        Arc::new(KeyPair::from_seed([1; 32])),
    )
}

fn client(n: u8) -> KeyPair {
    KeyPair::from_seed([100 + n; 32])
}

fn request(client: &KeyPair, timestamp: u64, op: &Op) -> Verified<Request> {
    let request = Request {
        client_key: client.public().into(),
        timestamp: Timestamp(timestamp),
        read_only: false,
        operation: rmp_serde::to_vec(op).unwrap(),
    };
    SCOPE.sign(request, client)
}

/// Executes `ops` (by client 1, timestamps from `first`) as batch `seq` proposed at `time_us`.
fn run(executor: &mut Executor<Pushes>, seq: u64, time_us: u64, first: u64, ops: &[Op]) -> Vec<ExecutorOutput> {
    let commands = ops.iter().enumerate().map(|(i, op)| Command::Request(request(&client(1), first + i as u64, op)));
    let batch = Arc::new(Batch::timed(commands.collect(), time_us));
    executor.handle(ExecutorInput::Execute { seq: SeqNum(seq), view: View(0), batch }, Instant(0))
}

fn outcomes(outputs: &[ExecutorOutput]) -> Vec<Outcome<Answer>> {
    outputs
        .iter()
        .filter_map(|output| match output {
            ExecutorOutput::Reply { reply, .. } => Some(rmp_serde::from_slice(&reply.result).unwrap()),
            _ => None,
        })
        .collect()
}

fn faults(outputs: &[ExecutorOutput]) -> Vec<ServiceFault> {
    outputs
        .iter()
        .filter_map(|output| match output {
            ExecutorOutput::Fault(fault) => Some(fault.clone()),
            _ => None,
        })
        .collect()
}

/// E6: a panicking operation is answered `ServiceFailed` and has no effect, even though it
/// changed the state before it panicked, also when it comes checkpoints after the last
/// image and in the middle of a batch; the operations around it take effect.
#[test]
fn e6_a_panicking_operation_has_no_effect_and_the_others_take_effect() {
    let mut executor = executor(params());
    let mut timestamp = 1;
    for seq in 1..=5 {
        run(&mut executor, seq, 0, timestamp, &[Op::Push(seq)]);
        timestamp += 1;
    }
    let out = run(&mut executor, 6, 0, timestamp, &[Op::Push(60), Op::PushThenPanic(61), Op::Push(62)]);
    assert_eq!(outcomes(&out), vec![Outcome::Ok(Answer::Len(6)), Outcome::ServiceFailed, Outcome::Ok(Answer::Len(7))]);
    let [ServiceFault::Panicked { seq, message, .. }] = &faults(&out)[..] else { panic!("one fault: {out:?}") };
    assert_eq!((*seq, message.as_str()), (SeqNum(6), "test service refuses 61"));
    assert_eq!(executor.service().items, vec![1, 2, 3, 4, 5, 60, 62], "the panicking push is gone");

    // Resent, the request gets the same answer from the client table; the state stays.
    let again = request(&client(1), timestamp + 1, &Op::PushThenPanic(61));
    let out = executor.handle(ExecutorInput::Request { request: again, view: View(0) }, Instant(0));
    assert_eq!(outcomes(&out), vec![Outcome::ServiceFailed]);
    assert_eq!(executor.service().items.len(), 7);
}

/// E6 and durability: a replica replaying the batch with the panicking operation (as at a
/// restart) reaches the same state and answer, and does not stop.
#[test]
fn e6_replaying_a_batch_that_panicked_gives_the_same_state_and_answers() {
    let ops = [Op::Push(1), Op::PushThenPanic(2), Op::Push(3)];
    let (mut first, mut replay) = (executor(params()), executor(params()));
    let a = run(&mut first, 1, 0, 1, &ops);
    let b = run(&mut replay, 1, 0, 1, &ops);
    assert_eq!(outcomes(&a), outcomes(&b));
    assert_eq!(first.state_digest(), replay.state_digest());
}

/// A reply over `reply_bytes_max` becomes `ReplyTooLarge` at every replica, is counted, and
/// the operation still took effect (its state change is not undone).
#[test]
fn an_oversized_reply_becomes_a_typed_error() {
    let mut executor = executor(params());
    let out = run(&mut executor, 1, 0, 1, &[Op::Big(5_000), Op::Big(10)]);
    let outcomes = outcomes(&out);
    let Outcome::ReplyTooLarge { bytes, limit } = outcomes[0] else { panic!("{outcomes:?}") };
    assert!(bytes > 5_000 && limit == 1_000, "{bytes} {limit}");
    assert_eq!(outcomes[1], Outcome::Ok(Answer::Bytes(vec![7; 10])));
    assert!(matches!(faults(&out)[..], [ServiceFault::ReplyTooLarge { bytes: b, limit: 1_000, .. }] if b == bytes));
}

/// ST5 with a snapshot the service refuses: reported with the service's own message, the
/// replica stays where it was.
#[test]
fn a_refused_snapshot_is_reported_with_the_services_message() {
    let mut source = executor(params());
    for seq in 1..=4 {
        run(&mut source, seq, 0, seq, &[Op::Big(0)]);
    }
    let image = source.image_at(SeqNum(4)).unwrap().bytes().to_vec();
    let mut target = executor(params());
    // A well-formed image the service refuses: one with a snapshot over its limit.
    let refused_image = {
        #[derive(Serialize)]
        struct Image<'a> {
            #[serde(with = "serde_bytes")]
            service: &'a [u8],
            clients: Vec<()>,
            time_us: u64,
        }
        rmp_serde::to_vec(&Image { service: &vec![0u8; 70_000], clients: vec![], time_us: 0 }).unwrap()
    };
    let out = target.handle(ExecutorInput::Install { seq: SeqNum(4), image: refused_image }, Instant(0));
    let [ServiceFault::RestoreFailed { seq, message }] = &faults(&out)[..] else { panic!("{out:?}") };
    assert_eq!((*seq, message.as_str()), (SeqNum(4), "the pushes service holds at most 64 KiB"));
    assert_eq!(target.last_executed(), SeqNum(0));
    // The source's image installs.
    let out = target.handle(ExecutorInput::Install { seq: SeqNum(4), image }, Instant(0));
    assert!(matches!(out[..], [ExecutorOutput::Installed { .. }]), "{out:?}");
}

/// E5: the agreed time is the batch's, never earlier than the batch before (a batch
/// re-proposed in a later view carries its older time); the caller is the request's
/// signer; the randomness is the same at every replica and differs per operation.
#[test]
fn e5_the_context_holds_the_agreed_time_the_signer_and_shared_randomness() {
    let (mut one, mut two) = (executor(params()), executor(params()));
    let context = |executor: &mut Executor<Pushes>, seq, time_us| -> Vec<Answer> {
        let out = run(executor, seq, time_us, seq * 10, &[Op::Context, Op::Context]);
        outcomes(&out)
            .into_iter()
            .map(|outcome| match outcome {
                Outcome::Ok(answer) => answer,
                other => panic!("{other:?}"),
            })
            .collect()
    };
    let first = context(&mut one, 1, 5_000_000);
    assert_eq!(first, context(&mut two, 1, 5_000_000), "the same at every replica");
    let Answer::Context { caller, seq, time_us, random } = first[0] else { unreachable!() };
    assert_eq!((caller, seq, time_us), (Caller::new(client(1).public().into()), 1, 5_000_000));
    let Answer::Context { random: other, .. } = first[1] else { unreachable!() };
    assert_ne!(random, other, "each operation draws its own numbers");

    let older = context(&mut one, 2, 4_000_000);
    assert!(matches!(older[0], Answer::Context { time_us: 5_000_000, .. }), "never back: {older:?}");
    let later = context(&mut one, 3, 6_000_000);
    assert!(matches!(later[0], Answer::Context { time_us: 6_000_000, .. }), "{later:?}");
    assert_eq!(one.time_us(), 6_000_000);
}

/// Four replicas in the simulator, one client whose every fifth operation panics the
/// service: every replica keeps going, the client is answered, the others' operations all
/// complete, and the digests agree; then every replica restarts from its durable records
/// (replaying the batches that panicked) and they still agree.
#[test]
fn e6_a_poison_operation_at_every_replica_leaves_the_cluster_serving_and_restarts_cleanly() {
    for seed in common::seeds(3_100, 4) {
        let mut config = SimConfig::new(seed, 4);
        config.clients = 3;
        config.requests_per_client = 30;
        config.restarts = (0..4)
            .map(|r| Restart {
                replica: ReplicaId(r),
                crash_at: Instant::from_micros(150_000 + r as u64 * 20_000),
                restart_at: Instant::from_micros(300_000 + r as u64 * 20_000),
                torn: false,
            })
            .collect();
        let (report, history) = Simulation::new(config, Pushes::default, |_, client, index| {
            if client == 0 && index % 5 == 4 {
                Op::PushThenPanic(index)
            } else {
                Op::Push(index)
            }
        })
        .unwrap()
        .run_with_history();
        // The poisoning client was told, and nobody else was.
        for completion in &history {
            let poisoned = matches!(completion.operation, Op::PushThenPanic(_));
            assert_eq!(completion.outcome == Outcome::ServiceFailed, poisoned, "{completion:?}");
        }
        assert_eq!(history.iter().filter(|c| c.outcome == Outcome::ServiceFailed).count(), 6);
        common::assert_safe_and_converged(&report);
        // Six poison operations; each caught by every replica that executed it (a replica
        // that caught up by state transfer never ran it).
        let panics: u64 = report.metrics.values().map(|m| m.service_faults.get("Panicked").copied().unwrap_or(0)).sum();
        assert!(panics >= 6, "the poison operations were caught: {panics} in {report}");
    }
}

/// C8: a replica whose service is not deterministic (its snapshot differs from everyone
/// else's) is told so when a checkpoint becomes stable without it: the divergence is
/// counted there and nowhere else. The simulator's checker names it too (I5, checkpoint
/// digests that differ): what a service author sees when running a service in the simulator.
#[test]
fn c8_a_replica_whose_state_departs_from_the_quorums_names_the_service_non_deterministic() {
    for seed in common::seeds(3_200, 3) {
        let mut config = SimConfig::new(seed, 4);
        config.params = ProtocolParams { checkpoint_interval: 4, watermark_window: 8, ..config.params };
        config.clients = 2;
        config.requests_per_client = 40;
        let made = Rc::new(Cell::new(0u32));
        let made_in = made.clone();
        let report = Simulation::new(
            config,
            move || {
                made_in.set(made_in.get() + 1);
                Pushes { items: Vec::new(), skew: made_in.get() == 3 }
            },
            |_, _, index| Op::Push(index),
        )
        .unwrap()
        .run();
        assert!(!report.violations.is_empty(), "the checker saw nothing: {report}");
        assert!(report.violations.iter().all(|v| v.invariant == "I5"), "only checkpoints differ: {report}");
        assert!(report.violations.iter().any(|v| v.detail.contains("r2 ")), "r2's differ: {report}");
        assert_eq!(made.get(), 4);
        let diverged: Vec<_> = report.metrics.iter().filter(|(_, m)| m.divergences > 0).map(|(id, _)| *id).collect();
        assert_eq!(diverged, vec![ReplicaId(2)], "only the skewed replica is told: {report}");
    }
}

/// The negative control of the C8 test: with every replica deterministic nobody diverges.
#[test]
fn c8_control_deterministic_replicas_never_report_divergence() {
    let mut config = SimConfig::new(3_300, 4);
    config.params = ProtocolParams { checkpoint_interval: 4, watermark_window: 8, ..config.params };
    config.clients = 2;
    config.requests_per_client = 40;
    let report = Simulation::new(config, Pushes::default, |_, _, index| Op::Push(index)).unwrap().run();
    common::assert_safe_and_converged(&report);
    assert!(report.metrics.values().all(|m| m.divergences == 0), "{report}");
}
