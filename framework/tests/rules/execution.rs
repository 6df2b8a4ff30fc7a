//! Execution and the client table (E1, E2, R2–R4, CX3): strictly ordered execution,
//! cached replies, relaying requests, saturated clients, and the durable records of
//! what executed.

use crate::fixture::*;
use bulwark_crypto::{Digest, KeyPair};
use bulwark_framework::messages::{Batch, VerifiedMessage};
use bulwark_framework::roles::node::Node;
use bulwark_framework::roles::view_change::{ViewChangerInput, ViewChangerOutput};
use bulwark_framework::roles::{Action, Role, TimerKind};
use bulwark_framework::RoleRefusal;
use bulwark_framework::{Input, Instant, Outcome, ProtocolParams, ReplicaId, SeqNum, Timestamp};
use bulwark_services::kv::{KvReply, KvStore};
use std::sync::Arc;

/// E1: batches execute strictly in sequence order; one committed early waits.
#[test]
fn e1_execution_is_strictly_in_order() {
    let f = fixture();
    let mut replica = f.replica(1);
    let (one, two) = (f.batch(&[1]), f.batch(&[2]));
    let early = commit_at(&f, &mut replica, 2, &two);
    assert!(executed(&early).is_empty(), "2 committed before 1 must wait");
    let actions = commit_at(&f, &mut replica, 1, &one);
    assert_eq!(executed(&actions), vec![SeqNum(1), SeqNum(2)]);
    assert_eq!(replica.last_executed(), SeqNum(2));
}

/// E2 / N2: a request already executed is not a reason to refuse a batch; it is skipped
/// at execution, and gets no second reply.
#[test]
fn e2_an_executed_request_in_a_later_batch_is_skipped() {
    let f = fixture();
    let mut replica = f.replica(1);
    let first = f.batch(&[1]);
    commit_at(&f, &mut replica, 1, &first);
    let again = Arc::new(Batch::new(vec![f.request(1, put("k", "1")), f.request(2, put("k", "2"))]));
    let actions = commit_at(&f, &mut replica, 2, &again);
    assert_eq!(executed(&actions), vec![SeqNum(2)]);
    let replies: Vec<Timestamp> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Reply { reply, .. } => Some(reply.timestamp),
            _ => None,
        })
        .collect();
    assert_eq!(replies, vec![Timestamp(2)]);
    assert_eq!(replica.service().get("k"), Some(&b"2"[..]));
}

/// R2: a retransmitted request that was executed gets its cached reply, nothing else.
#[test]
fn r2_retransmitted_executed_request_gets_the_cached_reply() {
    let f = fixture();
    let mut replica = f.replica(1);
    let batch = f.batch(&[1]);
    let first: Vec<Vec<u8>> = commit_at(&f, &mut replica, 1, &batch)
        .into_iter()
        .filter_map(|a| match a {
            Action::Reply { reply, .. } => Some(reply.result.clone()),
            _ => None,
        })
        .collect();
    let again = replica.handle(Input::Message(VerifiedMessage::Request(f.request(1, put("k", "1")))), Instant(5));
    assert_eq!(again.len(), 1, "{again:?}");
    let Action::Reply { reply, .. } = &again[0] else { panic!("{again:?}") };
    assert_eq!(vec![reply.result.clone()], first);
    let outcome: Outcome<KvReply> = rmp_serde::from_slice(&reply.result).unwrap();
    assert_eq!(outcome, Outcome::Ok(KvReply::Done { previous: None }));
}

/// R3 and VC1: a backup relays a new request to the primary and starts its request timer
/// (once: a second waiting request does not push the deadline back).
#[test]
fn r3_a_backup_relays_a_new_request_to_the_primary_and_starts_its_request_timer() {
    let f = fixture();
    let mut replica = f.replica(2);
    let timeout = f.config.params.view_change_timeout();
    let actions = replica.handle(Input::Message(VerifiedMessage::Request(f.request(1, put("k", "1")))), Instant(0));
    assert!(
        matches!(
            &actions[..],
            [
                Action::Send { to: ReplicaId(0), message: VerifiedMessage::Request(_) },
                Action::SetTimer { timer: TimerKind::Request, at }
            ] if *at == Instant(0) + timeout
        ),
        "{actions:?}"
    );
    let later = replica.handle(Input::Message(VerifiedMessage::Request(f.request(2, put("k", "2")))), Instant(10));
    assert!(!later.iter().any(|a| matches!(a, Action::SetTimer { timer: TimerKind::Request, .. })), "{later:?}");
}

/// CX3: a request below the client's executed window is dropped (its reply is gone).
#[test]
fn cx3_a_request_below_the_client_window_is_dropped() {
    let params = ProtocolParams { client_window: 2, ..params() };
    let f = fixture_with(4, params);
    let mut replica = Node::new(ReplicaId(1), KeyPair::from_seed([2; 32]), f.handle(), KvStore::new());
    let batch = Arc::new(Batch::new(vec![f.request(1, put("a", "1")), f.request(5, put("a", "5"))]));
    commit_at(&f, &mut replica, 1, &batch);
    let actions = replica.handle(Input::Message(VerifiedMessage::Request(f.request(2, put("a", "2")))), Instant(0));
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(replica.metrics().refused.get(&RoleRefusal::RequestBelowClientWindow), Some(&1));
}

/// R4 and VC1 with CX1: a client holding its whole window at a replica (queued at the
/// primary, queued or proposed and not executed; waiting at a backup) is saturated there;
/// the runtime drops its further requests unverified. Another client is not affected.
#[test]
fn r4_vc1_a_client_holding_its_window_is_saturated() {
    let params = ProtocolParams { client_window: 2, in_flight_batches_max: 1, ..params() };
    let f = fixture_with(4, params);
    let client = bulwark_framework::messages::client_id(&f.client.public().into());
    let other = bulwark_framework::ids::ClientId(client.0 ^ 1);
    let mut primary = f.replica(0);
    let mut backup = f.replica(1);
    for timestamp in 1..=3 {
        let request = VerifiedMessage::Request(f.request(timestamp, put("k", &timestamp.to_string())));
        assert!(!primary.client_saturated(client, Instant(0)), "saturated before {timestamp}");
        if timestamp <= 2 {
            assert!(!backup.client_saturated(client, Instant(0)));
            backup.handle(Input::Message(request.clone()), Instant(0));
        }
        primary.handle(Input::Message(request), Instant(0));
    }
    // 1 is proposed at once (the pipeline was idle), 2 and 3 are queued: the window is held.
    assert_eq!(primary.last_executed(), SeqNum(0));
    assert!(primary.client_saturated(client, Instant(0)), "two queued");
    assert!(backup.client_saturated(client, Instant(0)), "two waiting at the backup");
    assert!(!primary.client_saturated(other, Instant(0)) && !backup.client_saturated(other, Instant(0)));
}

/// R4 with CX1: requests in flight do not make a client saturated at the primary. The
/// client's window opens once `f + 1` replicas executed its oldest request, and a busy
/// primary may not have executed it yet: the client's next request is legitimate, and
/// dropping it unverified cost it a retransmission timeout (every request of a client
/// running at its full window waited about 500 ms in `bulwark bench --concurrency 256`).
#[test]
fn r4_requests_in_flight_at_a_lagging_primary_do_not_saturate_their_client() {
    let params = ProtocolParams { client_window: 2, batch_size_max: 1, in_flight_batches_max: 4, ..params() };
    let f = fixture_with(4, params);
    let client = bulwark_framework::messages::client_id(&f.client.public().into());
    let mut primary = f.replica(0);
    for timestamp in 1..=2 {
        primary.handle(Input::Message(VerifiedMessage::Request(f.request(timestamp, put("k", "v")))), Instant(0));
    }
    // Both are proposed, neither executed here; f + 1 backups may have executed 1 already,
    // so the client may send 3.
    assert_eq!(primary.last_executed(), SeqNum(0));
    assert!(!primary.client_saturated(client, Instant(0)), "two in flight, none queued");
    primary.handle(Input::Message(VerifiedMessage::Request(f.request(3, put("k", "v")))), Instant(0));
    assert_eq!(primary.metrics().requests_shed, 0, "3 is queued, not shed");
}

/// R4 with CX1: a client that signs a request `client_window` or more above one still
/// queued at the primary exceeds its window, which a correct client never does; for a
/// view-change timeout its requests in flight count toward its saturation again.
#[test]
fn r4_cx1_a_client_caught_beyond_its_window_at_the_primary_counts_its_requests_in_flight() {
    let params = ProtocolParams { client_window: 3, batch_size_max: 1, in_flight_batches_max: 1, ..params() };
    let f = fixture_with(4, params);
    let client = bulwark_framework::messages::client_id(&f.client.public().into());
    let offer = |primary: &mut Node<KvStore>, timestamps: &[u64], at: Instant| {
        for &timestamp in timestamps {
            let request = VerifiedMessage::Request(f.request(timestamp, put("k", &timestamp.to_string())));
            primary.handle(Input::Message(request), at);
        }
    };
    // Within its window: 1 in flight, 2 and 3 queued. Not saturated (two queued of three).
    let mut primary = f.replica(0);
    offer(&mut primary, &[1, 2, 3], Instant(0));
    assert!(!primary.client_saturated(client, Instant(0)), "a correct client's in-flight request does not count");
    // Beyond it: 1 in flight, 2 queued, then 5, three above the queued 2.
    let mut primary = f.replica(0);
    offer(&mut primary, &[1, 2], Instant(0));
    assert!(!primary.client_saturated(client, Instant(0)));
    offer(&mut primary, &[5], Instant(0));
    assert!(primary.client_saturated(client, Instant(0)), "caught: two queued and one in flight");
    let timeout = primary.membership().current().params.view_change_timeout();
    assert!(!primary.client_saturated(client, Instant(0) + timeout), "forgotten after a view-change timeout");
}

/// CX3 with VC1: a backup forgets waiting requests that fell below their client's window
/// when a later one executes: they can never execute, and a flooding client's shed requests
/// would otherwise pile up for ever. The client is remembered as having exceeded its window.
#[test]
fn cx3_waiting_requests_below_the_client_window_are_forgotten() {
    let f = fixture();
    let window = f.config.params.client_window;
    let mut changer = f.view_changer(1);
    for timestamp in [1, 2, 3] {
        changer.handle(ViewChangerInput::Wait(f.request(timestamp, put("k", "v"))), Instant(0));
    }
    let client = bulwark_framework::messages::client_id(&f.client.public().into());
    assert_eq!(changer.waiting_of(client), 3);
    let executed = ViewChangerInput::Executed { seq: SeqNum(1), requests: vec![(client, Timestamp(window + 2))] };
    changer.handle(executed, Instant(10));
    assert_eq!(changer.waiting_of(client), 1, "1 and 2 are below the window, 3 is not");
    // Only a client that signed beyond its window (CX1) causes that: it is remembered for a
    // view-change timeout (a backup then drops its requests unverified).
    let timeout = f.config.params.view_change_timeout();
    assert!(changer.exceeded_window(client, Instant(10)));
    assert!(!changer.exceeded_window(client, Instant(10) + timeout));
    let other = bulwark_framework::ids::ClientId(client.0 ^ 1);
    assert!(!changer.exceeded_window(other, Instant(10)));
    // After a state transfer the replica is asked which requests wait, and names those that
    // executed in the image; the per-client count follows.
    changer.handle(ViewChangerInput::Wait(f.request(window + 3, put("k", "v"))), Instant(20));
    assert_eq!(changer.waiting_of(client), 2);
    let waiting = changer.handle(ViewChangerInput::Installed, Instant(20));
    let [ViewChangerOutput::Waiting(keys)] = waiting.as_slice() else { panic!("{waiting:?}") };
    assert_eq!(keys.len(), 2);
    let executed_in_image = keys.iter().copied().filter(|(_, timestamp)| *timestamp != Timestamp(3)).collect();
    changer.handle(ViewChangerInput::Forget(executed_in_image), Instant(20));
    assert_eq!(changer.waiting_of(client), 1);
}

/// Durability: every record a replica persists survives the store's encoding and its
/// re-verification on load unchanged, and a record altered in the store (a request of a
/// committed batch changed, a checkpoint image byte flipped) is refused, not trusted.
#[test]
fn durable_records_round_trip_through_the_store_form_and_tampering_is_refused() {
    use bulwark_framework::durable::{Record, StoredRecord};
    let f = fixture();
    let mut replica = f.replica(1);
    let mut records = Vec::new();
    for seq in 1..=4 {
        let actions = commit_at(&f, &mut replica, seq, &f.batch(&[seq]));
        records.extend(actions.into_iter().filter_map(|a| match a {
            Action::Persist(record) => Some(record),
            _ => None,
        }));
    }
    // Checkpoint 4 becomes stable with the others' votes: the image is persisted too.
    let digest = replica.state_digest();
    for from in [0, 2] {
        let actions = deliver(&mut replica, VerifiedMessage::Checkpoint(f.checkpoint(from, 4, digest)), 1);
        records.extend(actions.into_iter().filter_map(|a| match a {
            Action::Persist(record) => Some(record),
            _ => None,
        }));
    }
    let kinds = |kind: fn(&Record) -> bool| records.iter().filter(|r| kind(r)).count();
    assert_eq!(kinds(|r| matches!(r, Record::Committed { .. })), 4);
    assert_eq!(kinds(|r| matches!(r, Record::Prepared(..))), 4);
    assert_eq!(kinds(|r| matches!(r, Record::Vote { .. })), 8, "a prepare and a commit per batch");
    assert_eq!(kinds(|r| matches!(r, Record::Stable { .. })), 1);
    for record in &records {
        let bytes = rmp_serde::to_vec(&StoredRecord::from(record)).unwrap();
        let stored: StoredRecord = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(&stored.verify(&f.config).unwrap(), record);
    }
    for record in &records {
        match StoredRecord::from(record) {
            StoredRecord::Committed { seq, view, batch, commits } => {
                assert!(commits.len() >= f.config.quorum(), "the commit certificate is recorded: {commits:?}");
                let mut forged = batch.clone();
                let bulwark_framework::messages::WireCommand::Request(request) = &mut forged.commands[0] else {
                    panic!("the batch holds a request: {forged:?}");
                };
                request.payload.operation = put("k", "forged");
                let record = StoredRecord::Committed { seq, view, batch: forged, commits: commits.clone() };
                assert!(record.verify(&f.config).is_err());
                let mut retimed = batch.clone();
                retimed.time_us += 1;
                let record = StoredRecord::Committed { seq, view, batch: retimed, commits: commits.clone() };
                assert!(record.verify(&f.config).is_err(), "a batch time the commits did not vouch for");
                let mut twice = commits.clone();
                twice.push(commits[0].clone());
                let record = StoredRecord::Committed { seq, view, batch: batch.clone(), commits: twice };
                assert!(record.verify(&f.config).is_err(), "a replica named twice in a certificate");
                let mut bad_signature = commits.clone();
                bad_signature[0].payload.digest = Digest::of(b"another batch");
                let record = StoredRecord::Committed { seq, view, batch, commits: bad_signature };
                assert!(record.verify(&f.config).is_err(), "a commit that does not verify");
            }
            StoredRecord::Stable { seq, proof, mut image } => {
                image[0] ^= 1;
                assert!(StoredRecord::Stable { seq, proof, image }.verify(&f.config).is_err());
            }
            _ => {}
        }
    }
}
