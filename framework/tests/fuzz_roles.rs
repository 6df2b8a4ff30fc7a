//! Property-based fuzzing of a replica's message handling (the in-CI form of the fuzz
//! targets): random sequences of messages any member could sign — valid, stale, from the
//! future, conflicting, for views it never entered, garbage state chunks — and timer
//! firings are fed through edge verification into a correct replica. It must never panic,
//! and every bounded structure must stay within its bound.

use bulwark_crypto::{Digest, KeyPair, Signed};
use bulwark_framework::messages::{
    Batch, BatchReply, BatchRequest, Checkpoint, Commit, Message, NewView, PrePrepare, Prepare, PreparedCertificate,
    Request, SlotProgress, StateReply, StateRequest, Status, ViewChange, WireBatch,
};
use bulwark_framework::roles::node::Node;
use bulwark_framework::roles::TimerKind;
use bulwark_framework::signing::Scoped;
use bulwark_framework::verify::verify_message;
use bulwark_framework::{
    ClusterId, Input, Instant, Membership, MembershipHandle, ProtocolParams, ReplicaId, SeqNum, Timestamp, View,
};
use bulwark_services::kv::{KvOp, KvStore};
use proptest::prelude::*;
use std::sync::Arc;

const N: u32 = 4;

fn key(i: u32) -> KeyPair {
    KeyPair::from_seed([i as u8 + 1; 32])
}

fn client_key(i: u8) -> KeyPair {
    KeyPair::from_seed([100 + i; 32])
}

fn params() -> ProtocolParams {
    ProtocolParams {
        checkpoint_interval: 4,
        watermark_window: 8,
        batch_size_max: 4,
        future_messages_per_sender_max: 16,
        request_queue_max: 64,
        state_chunk_bytes: 64,
        ..ProtocolParams::default()
    }
}

fn config() -> Arc<Membership> {
    Arc::new(Membership::numbered(ClusterId(1), (0..N).map(|i| key(i).public()).collect(), params()).unwrap())
}

fn sign<T: Scoped>(payload: T, by: u32) -> Signed<T> {
    config().scope().sign(payload, &key(by)).into_signed()
}

fn request(client: u8, timestamp: u64) -> Signed<Request> {
    let operation = rmp_serde::to_vec(&KvOp::Put { key: format!("k{client}"), value: vec![timestamp as u8] }).unwrap();
    let payload = Request {
        client_key: client_key(client).public().into(),
        timestamp: Timestamp(timestamp),
        read_only: false,
        operation,
    };
    config().scope().sign(payload, &client_key(client)).into_signed()
}

/// Batch number `choice`: one of a few fixed batches (0 is the null request).
fn batch(choice: u8) -> Vec<Signed<Request>> {
    (0..choice % 4).map(|i| request(i, 1 + choice as u64)).collect()
}

fn digest_of(choice: u8) -> Digest {
    let requests: Vec<_> = batch(choice)
        .into_iter()
        .map(|r| {
            let signer = r.payload.client_key.to_public_key().unwrap();
            config().scope().verify(r, &signer).unwrap()
        })
        .collect();
    Batch::new(requests).digest()
}

#[derive(Debug, Clone)]
enum Step {
    Request { client: u8, timestamp: u64 },
    PrePrepare { view: u64, seq: u64, batch: u8 },
    Prepare { from: u32, view: u64, seq: u64, batch: u8 },
    Commit { from: u32, view: u64, seq: u64, batch: u8 },
    Checkpoint { from: u32, seq: u64, digest: u8 },
    ViewChange { from: u32, view: u64, certificate: Option<(u64, u8)> },
    NewView { view: u64 },
    Status { from: u32, view: u64, last_executed: u64, first_slot: u64, slots: usize },
    StateRequest { from: u32, seq: u64, chunk: u64 },
    StateReply { from: u32, seq: u64, total: u64, index: u64, len: usize, path: usize },
    BatchRequest { from: u32, batch: u8 },
    BatchReply { from: u32, batch: u8 },
    Timer(u8),
    Wait(u64),
}

fn step() -> impl Strategy<Value = Step> {
    let replica = 0..N;
    prop_oneof![
        (0u8..4, 1u64..12).prop_map(|(client, timestamp)| Step::Request { client, timestamp }),
        (0u64..4, 0u64..30, 0u8..6).prop_map(|(view, seq, batch)| Step::PrePrepare { view, seq, batch }),
        (replica.clone(), 0u64..4, 0u64..30, 0u8..6).prop_map(|(from, view, seq, batch)| Step::Prepare {
            from,
            view,
            seq,
            batch
        }),
        (replica.clone(), 0u64..4, 0u64..30, 0u8..6).prop_map(|(from, view, seq, batch)| Step::Commit {
            from,
            view,
            seq,
            batch
        }),
        (replica.clone(), 0u64..8, 0u8..3).prop_map(|(from, seq, digest)| Step::Checkpoint {
            from,
            seq: seq * 4,
            digest
        }),
        (replica.clone(), 1u64..5, proptest::option::of((1u64..9, 0u8..6)))
            .prop_map(|(from, view, certificate)| Step::ViewChange { from, view, certificate }),
        (1u64..5).prop_map(|view| Step::NewView { view }),
        (replica.clone(), 0u64..5, 0u64..30, 0u64..30, 0usize..12).prop_map(
            |(from, view, last_executed, first_slot, slots)| {
                Step::Status { from, view, last_executed, first_slot, slots }
            }
        ),
        (replica.clone(), 0u64..40, 0u64..1000).prop_map(|(from, seq, chunk)| Step::StateRequest { from, seq, chunk }),
        (replica.clone(), 0u64..40, 0u64..10_000, 0u64..200, 0usize..64, 0usize..8)
            .prop_map(|(from, seq, total, index, len, path)| Step::StateReply { from, seq, total, index, len, path }),
        (replica.clone(), 0u8..6).prop_map(|(from, batch)| Step::BatchRequest { from, batch }),
        (replica, 0u8..6).prop_map(|(from, batch)| Step::BatchReply { from, batch }),
        (0u8..4).prop_map(Step::Timer),
        (0u64..400_000).prop_map(Step::Wait),
    ]
}

fn view_change(from: u32, view: u64, certificate: Option<(u64, u8)>) -> Signed<ViewChange> {
    let prepared = certificate
        .into_iter()
        .filter(|(seq, _)| *seq >= 1)
        .map(|(seq, choice)| {
            let d = digest_of(choice);
            let pre_prepare = sign(PrePrepare { view: View(0), seq: SeqNum(seq), digest: d }, 0);
            let prepares = [1, 2]
                .into_iter()
                .map(|r| sign(Prepare { view: View(0), seq: SeqNum(seq), digest: d, replica: ReplicaId(r) }, r))
                .collect();
            PreparedCertificate { pre_prepare, prepares }
        })
        .collect();
    let payload = ViewChange {
        view: View(view),
        stable: SeqNum(0),
        checkpoint_proof: vec![],
        prepared,
        replica: ReplicaId(from),
    };
    sign(payload, from)
}

/// The message of `step` (signed by whoever it claims), or `None` for timers and waits.
fn message(step: &Step, config: &Membership) -> Option<Message> {
    Some(match step.clone() {
        Step::Request { client, timestamp } => Message::Request(request(client, timestamp)),
        Step::PrePrepare { view, seq, batch: choice } => {
            let primary = config.primary(View(view)).0;
            let pre_prepare =
                sign(PrePrepare { view: View(view), seq: SeqNum(seq), digest: digest_of(choice) }, primary);
            Message::PrePrepare(pre_prepare, WireBatch::requests(0, batch(choice)))
        }
        Step::Prepare { from, view, seq, batch } => Message::Prepare(sign(
            Prepare { view: View(view), seq: SeqNum(seq), digest: digest_of(batch), replica: ReplicaId(from) },
            from,
        )),
        Step::Commit { from, view, seq, batch } => Message::Commit(sign(
            Commit { view: View(view), seq: SeqNum(seq), digest: digest_of(batch), replica: ReplicaId(from) },
            from,
        )),
        Step::Checkpoint { from, seq, digest } => Message::Checkpoint(sign(
            Checkpoint { seq: SeqNum(seq), state_digest: Digest::of(&[digest]), replica: ReplicaId(from) },
            from,
        )),
        Step::ViewChange { from, view, certificate } => Message::ViewChange(view_change(from, view, certificate)),
        Step::NewView { view } => {
            let primary = config.primary(View(view)).0;
            let view_changes: Vec<_> = (0..N).filter(|r| *r != 3).map(|r| view_change(r, view, None)).collect();
            Message::NewView(sign(NewView { view: View(view), view_changes, pre_prepares: vec![] }, primary))
        }
        Step::Status { from, view, last_executed, first_slot, slots } => Message::Status(sign(
            Status {
                replica: ReplicaId(from),
                view: View(view),
                stable: SeqNum(0),
                last_executed: SeqNum(last_executed),
                first_slot: SeqNum(first_slot),
                slots: vec![SlotProgress { has_pre_prepare: slots % 2 == 0, prepared: false, committed: false }; slots],
            },
            from,
        )),
        Step::StateRequest { from, seq, chunk } => {
            Message::StateRequest(sign(StateRequest { replica: ReplicaId(from), seq: SeqNum(seq), chunk }, from))
        }
        Step::StateReply { from, seq, total, index, len, path } => Message::StateReply(sign(
            StateReply {
                replica: ReplicaId(from),
                seq: SeqNum(seq),
                total_bytes: total,
                index,
                data: vec![0x5a; len],
                path: vec![Digest::of(b"path"); path],
            },
            from,
        )),
        Step::BatchRequest { from, batch } => Message::BatchRequest(sign(
            BatchRequest { replica: ReplicaId(from), digests: vec![digest_of(batch)] },
            from,
        )),
        Step::BatchReply { from, batch: choice } => Message::BatchReply(
            sign(BatchReply { replica: ReplicaId(from), digest: digest_of(choice) }, from),
            WireBatch::requests(0, batch(choice)),
        ),
        Step::Timer(_) | Step::Wait(_) => return None,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any sequence of signed messages and timer firings: no panic, every structure within
    /// its bound, and the replica's view, stable checkpoint and execution never go back.
    #[test]
    fn prop_replica_survives_any_sequence_of_messages(me in 0..N, steps in prop::collection::vec(step(), 1..120)) {
        let config = config();
        let mut replica = Node::new(ReplicaId(me), key(me), MembershipHandle::new((*config).clone()), KvStore::new());
        let mut now = Instant::ZERO;
        replica.start(now);
        let window = config.params.watermark_window as usize;
        for step in &steps {
            let input = match step {
                Step::Wait(us) => {
                    now = Instant(now.0 + us);
                    continue;
                }
                Step::Timer(kind) => Input::Timer(match kind {
                    0 => TimerKind::Batch,
                    1 => TimerKind::Status,
                    2 => TimerKind::Request,
                    _ => TimerKind::ViewChange,
                }),
                _ => match verify_message(message(step, &config).expect("a message step"), &config) {
                    Ok(verified) => Input::Message(verified),
                    Err(_) => continue,
                },
            };
            let before = (replica.view(), replica.stable(), replica.last_executed());
            replica.handle(input, now);
            let after = (replica.view(), replica.stable(), replica.last_executed());
            prop_assert!(after.0 >= before.0 && after.1 >= before.1 && after.2 >= before.2, "{before:?} -> {after:?}");
            let footprint = replica.footprint();
            prop_assert!(footprint.log_slots <= 2 * window, "{footprint:?}");
            prop_assert!(footprint.future_messages <= N as usize * config.params.future_messages_per_sender_max);
            prop_assert!(footprint.later_view_messages <= N as usize * config.params.future_messages_per_sender_max);
            prop_assert!(footprint.queued_requests <= config.params.request_queue_max);
            prop_assert!(footprint.waiting_requests <= config.params.request_queue_max);
            prop_assert!(footprint.view_changes_held <= N as usize);
            prop_assert!(footprint.transfer_bytes <= config.params.state_transfer_bytes_max);
        }
    }
}
