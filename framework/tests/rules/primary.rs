//! The primary role (P1–P3, R4): batching, numbering within the window, per-client
//! fairness, and the hop between a replica and its primary role run apart (a proposal
//! that arrives late is refused).

use crate::fixture::*;
use bulwark_crypto::{Digest, KeyPair, Verified};
use bulwark_framework::messages::{Request, VerifiedMessage};
use bulwark_framework::roles::checkpoint::{CollectorOutput, StableCheckpoint};
use bulwark_framework::roles::primary::{Admission, Primary, PrimaryInput, PrimaryOutput};
use bulwark_framework::roles::Action;
use bulwark_framework::{Input, Instant, ProtocolParams, SeqNum, Timestamp, View};

/// A request of another client than the fixture's (a flooder in the R4 tests).
fn flooder_request(flooder: &KeyPair, timestamp: u64) -> Verified<Request> {
    let payload = Request {
        client_key: flooder.public().into(),
        timestamp: Timestamp(timestamp),
        read_only: false,
        operation: put("f", "1"),
    };
    fixture().sign(payload, flooder)
}

/// What a replica hands its primary role, run apart.
fn handed_to_primary(actions: &[Action]) -> Vec<PrimaryInput> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::ToPrimary(input) => Some(input.clone()),
            _ => None,
        })
        .collect()
}

fn proposals(outputs: Vec<PrimaryOutput>) -> Vec<PrimaryOutput> {
    outputs.into_iter().filter(|o| matches!(o, PrimaryOutput::Propose(..))).collect()
}

/// P2: no sequence number beyond h + L is assigned; proposing resumes when h advances.
#[test]
fn p2_no_sequence_number_beyond_the_window() {
    let params = ProtocolParams { batch_size_max: 1, in_flight_batches_max: 100, ..params() };
    let f = fixture_with(4, params);
    let mut primary = Primary::new(f.handle(), SeqNum(1));
    for t in 1..=20 {
        primary.offer(f.request(t, put("k", "v")), Instant(0));
    }
    let first = primary.cut_batches(SeqNum(0), Instant(0));
    assert_eq!(first.len(), 8, "window (0, 8]");
    assert_eq!(first.last().unwrap().0, SeqNum(8));
    let second = primary.cut_batches(SeqNum(4), Instant(0));
    assert_eq!(second.iter().map(|(s, _)| s.0).collect::<Vec<_>>(), vec![9, 10, 11, 12]);
}

/// P3: a batch is cut when full; a partial batch waits for the batch delay while others
/// are in flight, and goes at once when nothing is in flight.
#[test]
fn p3_batching_by_size_and_delay() {
    let f = fixture();
    let mut primary = Primary::new(f.handle(), SeqNum(1));
    primary.offer(f.request(1, put("a", "1")), Instant(0));
    let idle = primary.cut_batches(SeqNum(0), Instant(0));
    assert_eq!(idle.len(), 1, "nothing in flight: no reason to wait");
    for t in 2..=4 {
        primary.offer(f.request(t, put("a", "1")), Instant(10));
    }
    assert!(primary.cut_batches(SeqNum(0), Instant(10)).is_empty(), "3 < batch_size_max and not due");
    let deadline = primary.batch_deadline(SeqNum(0)).expect("timer armed");
    primary.offer(f.request(5, put("a", "1")), Instant(20));
    let full = primary.cut_batches(SeqNum(0), Instant(20));
    assert_eq!(full.len(), 1);
    assert_eq!(full[0].1.len(), 4, "cut at batch_size_max");
    primary.offer(f.request(6, put("a", "1")), Instant(30));
    assert!(primary.cut_batches(SeqNum(0), Instant(30)).is_empty());
    let due = primary.cut_batches(SeqNum(0), primary.batch_deadline(SeqNum(0)).unwrap());
    assert_eq!(due.len(), 1, "cut when the delay expires");
    assert!(deadline > Instant(0));
}

/// P3: while the pipeline is full, the primary arms no batch timer: cutting waits for a
/// batch to execute, not for time. (A due timer that could not cut re-armed itself at
/// the same instant forever: the simulator spun at one simulated time and the actix
/// runtime burned a core.)
#[test]
fn p3_a_full_pipeline_arms_no_batch_timer() {
    let params = ProtocolParams { in_flight_batches_max: 1, ..params() };
    let f = fixture_with(4, params);
    let mut primary = Primary::new(f.handle(), SeqNum(1));
    primary.offer(f.request(1, put("a", "1")), Instant(0));
    assert_eq!(primary.cut_batches(SeqNum(0), Instant(0)).len(), 1);
    primary.offer(f.request(2, put("a", "2")), Instant(10));
    let due = primary.batch_deadline(SeqNum(0)).map(|d| d.0 + 1).unwrap_or(1_000_000);
    assert!(primary.cut_batches(SeqNum(0), Instant(due)).is_empty(), "the pipeline is full");
    assert_eq!(primary.batch_deadline(SeqNum(0)), None, "no timer while nothing can be cut");
    primary.on_executed(SeqNum(1));
    assert_eq!(primary.cut_batches(SeqNum(0), Instant(due)).len(), 1, "cut once a slot frees");
}

/// R4: a request already queued or in flight is not queued again; a full queue sheds.
#[test]
fn r4_duplicate_requests_are_not_queued_twice_and_a_full_queue_sheds() {
    let params = ProtocolParams { request_queue_max: 2, ..params() };
    let f = fixture_with(4, params);
    let mut primary = Primary::new(f.handle(), SeqNum(1));
    assert_eq!(primary.offer(f.request(1, put("a", "1")), Instant(0)), Admission::Queued);
    assert_eq!(primary.offer(f.request(1, put("a", "1")), Instant(0)), Admission::Duplicate);
    primary.cut_batches(SeqNum(0), Instant(0));
    assert_eq!(primary.offer(f.request(1, put("a", "1")), Instant(0)), Admission::Duplicate, "in flight");
    primary.offer(f.request(2, put("a", "1")), Instant(0));
    primary.offer(f.request(3, put("a", "1")), Instant(0));
    assert_eq!(primary.offer(f.request(4, put("a", "1")), Instant(0)), Admission::Shed);
    primary.on_executed(SeqNum(1));
    assert_eq!(primary.in_flight_len(), 0);
}

/// R4 with Aardvark's fairness: a client gets at most `client_window` places in the
/// primary's queue (a correct client never has more outstanding), and batches take one
/// request from each waiting client in turn, so a client flooding valid requests cannot
/// push the others' requests back.
#[test]
fn r4_a_flooding_client_is_capped_at_its_window_and_served_in_turn() {
    let params = ProtocolParams { client_window: 4, batch_size_max: 4, ..params() };
    let f = fixture_with(4, params);
    let flooder = KeyPair::from_seed([201; 32]);
    let flood = |timestamp: u64| flooder_request(&flooder, timestamp);
    let mut primary = Primary::new(f.handle(), SeqNum(1));
    // Something in flight, so that the next batches are cut by size, not because idle.
    primary.offer(f.request(1, put("a", "1")), Instant(0));
    assert_eq!(primary.cut_batches(SeqNum(0), Instant(0)).len(), 1);
    let admissions: Vec<Admission> = (1..=10).map(|t| primary.offer(flood(t), Instant(0))).collect();
    assert_eq!(admissions.iter().filter(|a| **a == Admission::Queued).count(), 4, "{admissions:?}");
    assert_eq!(admissions.iter().filter(|a| **a == Admission::Shed).count(), 6, "beyond its window: shed");
    for t in 2..=4 {
        assert_eq!(primary.offer(f.request(t, put("a", "1")), Instant(0)), Admission::Queued);
    }
    let batches = primary.cut_batches(SeqNum(0), Instant(0));
    let first: Vec<u64> = batches[0].1.requests().map(|r| r.timestamp.0).collect();
    let clients = batches[0].1.requests().map(|r| r.client()).collect::<std::collections::BTreeSet<_>>();
    assert_eq!(clients.len(), 2, "both clients in the first batch: {first:?}");
    assert_eq!(first, vec![1, 2, 2, 3], "the flooder and the other client alternate");
}

/// R4 (Aardvark's fairness, pipeline share): a client may have at most an equal part of
/// the pipeline (`in_flight_batches_max × batch_size_max / k`, `k` clients active) proposed
/// and not executed. A flooder over its share sits batches out, keeping its queue, while
/// another client's request goes at once; alone, or with nothing in flight, it is not held.
#[test]
fn r4_a_client_over_its_share_of_the_pipeline_waits_for_its_requests_to_execute() {
    let params = ProtocolParams { client_window: 8, batch_size_max: 4, in_flight_batches_max: 2, ..params() };
    let f = fixture_with(4, params);
    let flooder = KeyPair::from_seed([201; 32]);
    let flood = |timestamp: u64| flooder_request(&flooder, timestamp);
    let flooder_id = bulwark_framework::messages::client_id(&flooder.public().into());
    let mut primary = Primary::new(f.handle(), SeqNum(1));
    // Alone, the flooder may fill the whole pipeline (share 2 × 4 = 8).
    for t in 1..=8 {
        assert_eq!(primary.offer(flood(t), Instant(0)), Admission::Queued);
    }
    assert_eq!(primary.cut_batches(SeqNum(0), Instant(0)).len(), 2);
    assert_eq!(primary.in_flight_of(flooder_id), 8);
    primary.on_executed(SeqNum(1));
    assert_eq!(primary.in_flight_of(flooder_id), 4);
    // Another client arrives: two active clients, a share of 4 each. The flooder has 4 in
    // flight and 4 queued; the next batch takes only the other client's request.
    for t in 9..=12 {
        assert_eq!(primary.offer(flood(t), Instant(0)), Admission::Queued);
    }
    primary.offer(f.request(1, put("a", "1")), Instant(0));
    let batches = primary.cut_batches(SeqNum(0), Instant(0));
    assert_eq!(batches.len(), 1);
    let clients: Vec<_> = batches[0].1.requests().map(|r| r.client()).collect();
    assert!(!clients.contains(&flooder_id), "the flooder over its share got a place: {clients:?}");
    assert_eq!(primary.queue_len(), 4, "its requests stay queued");
    // Once its requests execute it is under its share again and its queue goes.
    primary.on_executed(SeqNum(3));
    let batches = primary.cut_batches(SeqNum(0), Instant(0));
    assert_eq!(batches.iter().map(|(_, b)| b.len()).sum::<usize>(), 4);
    assert_eq!(primary.in_flight_of(flooder_id), 4);
}

/// The primary proposes: it signs a PRE-PREPARE for the batch and broadcasts it (P1).
#[test]
fn p1_the_primary_pre_prepares_a_request_it_receives() {
    let f = fixture();
    let mut replica = f.replica(0);
    let actions = replica.handle(Input::Message(VerifiedMessage::Request(f.request(1, put("k", "1")))), Instant(0));
    let proposals: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Broadcast { message: VerifiedMessage::PrePrepare(pp, batch) } => Some((pp.seq, batch.len())),
            _ => None,
        })
        .collect();
    assert_eq!(proposals, vec![(SeqNum(1), 1)]);
}

/// P1 and VC4a across the hop between roles: a replica whose primary role runs apart
/// offers it the new requests it gets while it leads, and tells it to follow when it starts
/// a view change. A proposal the role made before hearing so arrives after it and is
/// refused: nothing of it is persisted or sent, so a view the replica left gets no
/// pre-prepare from it.
#[test]
fn p1_vc4a_a_primary_role_run_apart_proposes_while_its_replica_leads_and_a_late_proposal_is_refused() {
    let f = fixture();
    let mut replica = f.replica_holding_primary(0);
    assert_eq!(replica.roles.primary.leading(), Some(View(0)), "told to lead view 0 at start");
    let actions = deliver(&mut replica, VerifiedMessage::Request(f.request(1, put("k", "1"))), 0);
    let offered = handed_to_primary(&actions);
    assert!(matches!(offered.as_slice(), [PrimaryInput::Offer(r)] if r.timestamp == Timestamp(1)), "{offered:?}");
    let first = proposals(replica.roles.primary.handle(offered[0].clone(), Instant(0)));
    let actions = replica.handle(Input::Primary(first[0].clone()), Instant(0));
    let proposed = |actions: &[Action]| {
        actions.iter().any(|a| matches!(a, Action::Broadcast { message: VerifiedMessage::PrePrepare(..) }))
            && actions.iter().any(|a| matches!(a, Action::Persist(_)))
    };
    assert!(proposed(&actions), "P1: its own proposal is persisted and multicast: {actions:?}");
    // The next request waits for the batch delay (one batch in flight), then is proposed.
    let actions = deliver(&mut replica, VerifiedMessage::Request(f.request(2, put("k", "2"))), 1);
    for input in handed_to_primary(&actions) {
        assert!(proposals(replica.roles.primary.handle(input, Instant(1))).is_empty());
    }
    let late = proposals(replica.roles.primary.handle(PrimaryInput::BatchTimer, Instant(10_000_000)));
    assert_eq!(late.len(), 1);
    // Before it arrives, f + 1 others ask for view 1: the replica joins and stops leading.
    let vc = |from| VerifiedMessage::ViewChange(f.verified_view_change(f.view_change(from, 1, 0, vec![])));
    let mut actions = deliver(&mut replica, vc(1), 2);
    actions.extend(deliver(&mut replica, vc(2), 2));
    assert_eq!(replica.view_change_target(), Some(View(1)));
    assert!(matches!(handed_to_primary(&actions).as_slice(), [PrimaryInput::Follow]), "{actions:?}");
    let refused_before = replica.metrics().refused_total();
    let actions = replica.handle(Input::Primary(late[0].clone()), Instant(3));
    assert!(!proposed(&actions), "a proposal for a view it left must not leave the replica: {actions:?}");
    assert_eq!(replica.metrics().refused_total(), refused_before + 1);
    // A request now is not offered: the replica does not lead.
    let actions = deliver(&mut replica, VerifiedMessage::Request(f.request(3, put("k", "3"))), 4);
    assert!(handed_to_primary(&actions).is_empty(), "{actions:?}");
}

/// P2 across the hop between roles: a proposal the primary role numbered with the low
/// watermark it knew arrives after a stable checkpoint moved the watermark past it; the
/// replica refuses it instead of signing into a window it has left (I7; simulation seed 3
/// of `p1_c3_c4_slow_hops_to_the_roles_run_apart_keep_replicas_safe_and_live`, where a
/// restarted primary proposed slots 4 and 5 after learning the checkpoint at 32).
#[test]
fn p2_a_late_proposal_below_the_low_watermark_is_refused() {
    let f = fixture();
    let mut replica = f.replica_holding_primary(0);
    let actions = deliver(&mut replica, VerifiedMessage::Request(f.request(1, put("k", "1"))), 0);
    let late: Vec<PrimaryOutput> = handed_to_primary(&actions)
        .into_iter()
        .flat_map(|input| proposals(replica.roles.primary.handle(input, Instant(0))))
        .collect();
    assert!(matches!(late.as_slice(), [PrimaryOutput::Propose(pp, _)] if pp.seq == SeqNum(1)), "{late:?}");
    let digest = Digest::of(b"state");
    let proof = (0..3).map(|r| f.checkpoint(r, 4, digest)).collect();
    let stable = StableCheckpoint { seq: SeqNum(4), state_digest: digest, proof };
    replica.handle(Input::Checkpoints(CollectorOutput::Stable(stable)), Instant(1));
    assert_eq!(replica.stable(), SeqNum(4));
    let actions = replica.handle(Input::Primary(late[0].clone()), Instant(2));
    let signed = actions
        .iter()
        .any(|a| matches!(a, Action::Broadcast { message: VerifiedMessage::PrePrepare(..) } | Action::Persist(_)));
    assert!(!signed, "a proposal at or below h must not be persisted or sent: {actions:?}");
}

/// VC13 and VC14 across the hop between roles: the primary of the next view, once it has
/// built the NEW-VIEW and entered it, tells its primary role to lead that view, numbering
/// from `max-s + 1`.
#[test]
fn vc13_vc14_entering_a_view_it_leads_a_replica_tells_its_primary_role_to_lead_from_max_s_plus_1() {
    let f = fixture();
    let mut replica = f.replica_holding_primary(1);
    // Slot 1 committed here: its prepared certificate is in this replica's VIEW-CHANGE, and
    // O re-proposes it (max-s = 1).
    let batch = f.batch(&[1]);
    commit_at(&f, &mut replica, 1, &batch);
    let vc = |from| VerifiedMessage::ViewChange(f.verified_view_change(f.view_change(from, 1, 0, vec![])));
    let mut actions = deliver(&mut replica, vc(2), 10);
    actions.extend(deliver(&mut replica, vc(3), 10));
    assert_eq!(replica.view(), View(1), "VC13: the new primary entered its view: {actions:?}");
    let handed = handed_to_primary(&actions);
    let lead = handed.iter().find_map(|input| match input {
        PrimaryInput::Lead { view, next_seq, .. } => Some((*view, *next_seq)),
        _ => None,
    });
    assert_eq!(lead, Some((View(1), SeqNum(2))), "VC14: {handed:?}");
    for input in handed {
        replica.roles.primary.handle(input, Instant(10));
    }
    assert_eq!(replica.roles.primary.leading(), Some(View(1)));
    let offered = handed_to_primary(&deliver(&mut replica, VerifiedMessage::Request(f.request(9, put("k", "9"))), 11));
    let proposed =
        proposals(offered.into_iter().flat_map(|input| replica.roles.primary.handle(input, Instant(11))).collect());
    match proposed.as_slice() {
        [PrimaryOutput::Propose(pre_prepare, _)] => {
            assert_eq!((pre_prepare.view, pre_prepare.seq), (View(1), SeqNum(2)))
        }
        other => panic!("expected one proposal: {other:?}"),
    }
}
