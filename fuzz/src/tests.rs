//! Scripted runs of the harness: they check that the steps reach what the targets are for
//! (execution, checkpoints, a view change, a state transfer, a completed request), so that
//! a protocol change that leaves the fuzzers refusing everything is noticed. Run with
//! `cargo test --manifest-path fuzz/Cargo.toml`.

use super::*;
use bulwark_framework::config::ClientAuth;
use bulwark_framework::{SeqNum, View};

fn request(client: u8, timestamp: u64) -> ReqSpec {
    ReqSpec { client, timestamp: Num(timestamp), flags: 0, op: OpSpec::Put { key: client, value: 1 } }
}

fn last_slot(harness: &ReplicaHarness) -> u8 {
    (harness.pool.slots.len() - 1) as u8
}

fn agree(harness: &mut ReplicaHarness) {
    let slot = last_slot(harness);
    harness.step(&Step::Agree(AgreeSpec { slot, prepares: 0, commits: 0 }));
}

/// As primary: requests, a batch, votes of the others until a checkpoint is stable.
fn primary_executes(auth: ClientAuth) {
    let mut harness = ReplicaHarness::new(0, auth);
    for seq in 1..=4u64 {
        harness.step(&Step::Request(request(seq as u8 % CLIENTS, seq)));
        harness.step(&Step::Wait { millis: 2 });
        harness.step(&Step::Timer(TimerChoice::Next));
        agree(&mut harness);
        assert_eq!(harness.replica.last_executed(), SeqNum(seq), "{:?}", harness.replica.metrics());
    }
    let checkpoint = (harness.pool.checkpoints.len() - 1) as u8;
    harness.step(&Step::AgreeCheckpoint(AgreeCheckpointSpec { checkpoint, members: 0 }));
    assert_eq!(harness.replica.stable(), SeqNum(4));
}

#[test]
fn the_primary_executes_and_checkpoints() {
    primary_executes(ClientAuth::Signed);
    primary_executes(ClientAuth::Connection);
}

#[test]
fn a_backup_executes_a_proposal() {
    let mut harness = ReplicaHarness::new(1, ClientAuth::Signed);
    let batch = BatchChoice::Spec(vec![request(0, 1), request(1, 1)]);
    harness.step(&Step::PrePrepare(PrePrepareSpec { view: Num(0), seq: Num(1), batch, out_of_turn: false }));
    agree(&mut harness);
    assert_eq!(harness.replica.last_executed(), SeqNum(1), "{:?}", harness.replica.metrics());
    assert_eq!(harness.replica.metrics().requests_executed, 2);
}

#[test]
fn view_changes_reach_a_new_view() {
    // Replica 1, primary of view 1, builds the NEW-VIEW.
    let mut harness = ReplicaHarness::new(1, ClientAuth::Signed);
    let body = VcBody { from: Who(0), stable: None, prepared: Vec::new() };
    let steps = ViewStep::ViewChangeFromMany { view: Num(1), members: 0b1101, body }.steps();
    for step in steps {
        harness.step(&step);
    }
    assert_eq!(harness.replica.view(), View(1), "{:?}", harness.replica.metrics());
    // Replica 2 accepts a NEW-VIEW carrying a prepared certificate.
    let mut harness = ReplicaHarness::new(2, ClientAuth::Signed);
    let batch = BatchChoice::Spec(vec![request(0, 1)]);
    harness.step(&Step::PrePrepare(PrePrepareSpec { view: Num(0), seq: Num(1), batch, out_of_turn: false }));
    let body = VcBody { from: Who(0), stable: None, prepared: Vec::new() };
    let steps = ViewStep::ViewChangeFromMany { view: Num(1), members: 0b0011, body }.steps();
    for step in steps {
        harness.step(&step);
    }
    let certificate =
        CertSpec { slot: Some(0), view: Num(0), seq: Num(0), digest: DigestChoice::Bytes([0; 32]), tamper: 0 };
    let view_changes = vec![VcBody { from: Who(0), stable: None, prepared: vec![certificate] }];
    harness.step(&Step::NewView(NvSpec { view: Num(1), view_changes, with_own: true, tamper: 0 }));
    assert_eq!(harness.replica.view(), View(1), "{:?}", harness.replica.metrics());
    agree(&mut harness);
    assert_eq!(harness.replica.last_executed(), SeqNum(1), "{:?}", harness.replica.metrics());
}

#[test]
fn a_replica_behind_a_stable_checkpoint_fetches_and_installs_it() {
    assert!(image_mirror_matches(), "the mirrored image encoding differs from the executor's");
    let mut harness = ReplicaHarness::new(3, ClientAuth::Signed);
    let clients = vec![ClientImage {
        client: 2,
        id: 0,
        top: Num(3),
        results: vec![(Num(3), vec![1, 2, 3])],
        last_active: Num(4),
    }];
    let entries = (0..20u8).map(|k| (k, vec![k; 7])).collect();
    let image = ImageSpec::Structured { service: ServiceImage::Map(entries), clients };
    harness.step(&Step::CertifyImage(CertifyImageSpec { image, seq: Num(1), members: 0 }));
    assert_eq!(harness.replica.stable(), SeqNum(4));
    for _ in 0..8 {
        let chunk = StateChunkSpec { answer_requests: true, from: Who(0), image: 0, chunk: Num(0) };
        harness.step(&Step::StateChunk(chunk));
    }
    assert_eq!(harness.replica.last_executed(), SeqNum(4), "{:?}", harness.replica.metrics());
    assert_eq!(harness.replica.state_digest(), harness.pool.images[0].image.digest());
}

fn client_completes(auth: ClientAuth) {
    let mut harness = ClientHarness::new(0, auth);
    harness.step(ClientStep::Invoke { op: OpSpec::Get { key: 1 }, read_only: false });
    let spec = ReplySpec {
        view: Num(0),
        timestamp: TimestampChoice::Outstanding(0),
        to_other: 0,
        read_only: false,
        result: ResultChoice::Outcome(1),
    };
    harness.step(ClientStep::Bundles { members: 0b0011, seq: Num(1), view: Num(0), replies: vec![spec] });
    assert_eq!(harness.completed.len(), 1);
    assert_eq!(harness.client.outstanding(), 0);
}

#[test]
fn the_client_completes_a_request_from_bundled_replies() {
    client_completes(ClientAuth::Signed);
    client_completes(ClientAuth::Connection);
}
