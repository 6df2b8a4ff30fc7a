//! View change (PBFT.md §4, VC1–VC17, PF1–PF4): the request and view-change timers,
//! joining, building and checking NEW-VIEWs, and entering a view.

use crate::fixture::*;
use bulwark_crypto::{Digest, Signed};
use bulwark_framework::messages::{
    Checkpoint, Message, PreparedCertificate, VerifiedMessage, VerifiedViewChange, ViewChange,
};
use bulwark_framework::roles::node::Node;
use bulwark_framework::roles::view_change::{
    compute_order, null_digest, OrderError, ViewChangerInput, ViewChangerOutput,
};
use bulwark_framework::roles::{Action, Role, TimerKind};
use bulwark_framework::verify::{verify_message, Refusal, RefusalKind};
use bulwark_framework::RoleRefusal;
use bulwark_framework::{Input, Instant, ReplicaId, SeqNum, Timestamp, View};
use bulwark_services::kv::KvStore;
use std::sync::Arc;

fn sent_view_changes(actions: &[Action]) -> Vec<Arc<VerifiedViewChange>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Broadcast { message: VerifiedMessage::ViewChange(vc) } => Some(vc.clone()),
            _ => None,
        })
        .collect()
}

fn timer_at(actions: &[Action], kind: TimerKind) -> Option<Instant> {
    actions.iter().rev().find_map(|a| match a {
        Action::SetTimer { timer, at } if *timer == kind => Some(*at),
        _ => None,
    })
}

fn signed_votes_of_view(actions: &[Action], view: View) -> usize {
    actions
        .iter()
        .filter(|a| match a {
            Action::Broadcast { message: VerifiedMessage::Prepare(p) } => p.view == view,
            Action::Broadcast { message: VerifiedMessage::Commit(c) } => c.view == view,
            _ => false,
        })
        .count()
}

fn refused_certificate(f: &Fixture, message: Message) -> bool {
    matches!(verify_message(message, &f.config), Err(Refusal::BadCertificate { .. }))
}

/// VC1, VC2, VC9, PF3: a backup whose waiting request does not execute before its request
/// timer fires multicasts VIEW-CHANGE(v + 1); the message carries the prepared certificate
/// of a slot it already committed and executed (sending COMMIT never excuses it), and it
/// is valid by VC10 at any other replica.
#[test]
fn vc2_request_timer_sends_a_view_change_with_prepared_certificates_pf3() {
    let f = fixture();
    let mut replica = f.replica(1);
    let batch = f.batch(&[1]);
    let actions = commit_at(&f, &mut replica, 1, &batch);
    assert_eq!(executed(&actions), vec![SeqNum(1)]);
    let actions = deliver(&mut replica, VerifiedMessage::Request(f.request(2, put("k", "2"))), 10);
    let deadline = timer_at(&actions, TimerKind::Request).expect("VC1: the request timer starts");
    let early = replica.handle(Input::Timer(TimerKind::Request), Instant(deadline.0 - 1));
    assert!(sent_view_changes(&early).is_empty(), "a firing before the deadline changes nothing: {early:?}");
    let actions = replica.handle(Input::Timer(TimerKind::Request), deadline);
    let sent = sent_view_changes(&actions);
    assert_eq!(sent.len(), 1, "{actions:?}");
    assert_eq!((sent[0].view(), sent[0].message.stable), (View(1), SeqNum(0)));
    assert_eq!(sent[0].prepared.keys().copied().collect::<Vec<_>>(), vec![SeqNum(1)]);
    assert_eq!(replica.view_change_target(), Some(View(1)));
    let wire = VerifiedMessage::ViewChange(sent[0].clone()).to_wire();
    assert!(verify_message(wire, &f.config).is_ok(), "VC10: its own view-change must be valid");
}

/// VC4a and VC6: after sending VIEW-CHANGE(w) a replica signs no PREPARE or COMMIT for a
/// view below w, whatever arrives for its old view.
#[test]
fn vc4a_after_a_view_change_nothing_is_signed_in_the_old_view() {
    let f = fixture();
    let mut replica = f.replica(1);
    let actions = deliver(&mut replica, VerifiedMessage::Request(f.request(1, put("k", "1"))), 0);
    let deadline = timer_at(&actions, TimerKind::Request).unwrap();
    replica.handle(Input::Timer(TimerKind::Request), deadline);
    let batch = f.batch(&[5]);
    let d = batch.digest();
    let mut actions = deliver(&mut replica, VerifiedMessage::PrePrepare(f.pre_prepare(0, 1, d), batch), deadline.0);
    for from in [2, 3] {
        actions.extend(deliver(&mut replica, VerifiedMessage::Prepare(f.prepare(from, 0, 1, d)), deadline.0));
    }
    assert_eq!(signed_votes_of_view(&actions, View(0)), 0, "{actions:?}");
}

/// VC5: VIEW-CHANGEs from f + 1 other replicas for a higher view make a replica join at
/// once; f of them do not. VC3: the view-change timer starts only once 2f + 1 (own
/// included) want the view, and when it fires the replica asks for the next view with a
/// doubled timeout.
#[test]
fn vc5_f_plus_1_make_a_replica_join_and_vc3_the_timer_needs_2f_plus_1_and_doubles() {
    let f = fixture();
    let timeout = f.config.params.view_change_timeout();
    let mut replica = f.replica(3);
    let vc = |from, view| VerifiedMessage::ViewChange(f.verified_view_change(f.view_change(from, view, 0, vec![])));
    let actions = deliver(&mut replica, vc(1, 1), 0);
    assert!(sent_view_changes(&actions).is_empty(), "f view-changes must not make it join: {actions:?}");
    assert_eq!(timer_at(&actions, TimerKind::ViewChange), None);
    let actions = deliver(&mut replica, vc(0, 1), 10);
    let sent = sent_view_changes(&actions);
    assert_eq!(sent.iter().map(|vc| vc.view()).collect::<Vec<_>>(), vec![View(1)]);
    assert_eq!(timer_at(&actions, TimerKind::ViewChange), Some(Instant(10) + timeout), "VC3 with 2f + 1");
    let actions = replica.handle(Input::Timer(TimerKind::ViewChange), Instant(10) + timeout);
    assert_eq!(sent_view_changes(&actions).iter().map(|vc| vc.view()).collect::<Vec<_>>(), vec![View(2)]);
    let at = (Instant(10) + timeout).0;
    deliver(&mut replica, vc(0, 2), at);
    let actions = deliver(&mut replica, vc(1, 2), at);
    assert_eq!(timer_at(&actions, TimerKind::ViewChange), Some(Instant(at) + timeout * 2), "T doubles");
}

/// VC3 counts a member that already asked for a later view: one VIEW-CHANGE for the target
/// and one for the view after it, with this replica's own, arm the timer. (A member whose
/// timer for the target ran out retransmits only its latest VIEW-CHANGE; if its message for
/// the target was lost, counting exact matches alone left the others waiting for a NEW-VIEW
/// that could not be built, with no timer to move on: campaign seed 391.)
#[test]
fn vc3_the_timer_counts_members_that_moved_past_the_target() {
    let f = fixture();
    let timeout = f.config.params.view_change_timeout();
    let mut replica = f.replica(3);
    let vc = |from, view| VerifiedMessage::ViewChange(f.verified_view_change(f.view_change(from, view, 0, vec![])));
    deliver(&mut replica, vc(1, 1), 0);
    // f + 1 others above view 0 (one at 1, one at 2): VC5 joins at view 1.
    let actions = deliver(&mut replica, vc(2, 2), 10);
    assert_eq!(sent_view_changes(&actions).iter().map(|vc| vc.view()).collect::<Vec<_>>(), vec![View(1)]);
    assert_eq!(
        timer_at(&actions, TimerKind::ViewChange),
        Some(Instant(10) + timeout),
        "own and r1 at view 1 and r2 at view 2 are 2f + 1 at or above the target: {actions:?}"
    );
    let actions = replica.handle(Input::Timer(TimerKind::ViewChange), Instant(10) + timeout);
    assert_eq!(sent_view_changes(&actions).iter().map(|vc| vc.view()).collect::<Vec<_>>(), vec![View(2)]);
}

/// VC4: `T_cur` doubles when a view change fails — no NEW-VIEW in time, or a view entered
/// that executes no new request before the request timer fires — and returns to the base
/// only when a new request executes in the view entered: the NEW-VIEW's re-proposals (up to its `max-s`)
/// execute at once and do not count, or an overloaded cluster would change views every
/// base timeout and never give a primary the doubled time (seen in a durable bench run).
#[test]
fn vc4_timeout_doubles_until_a_request_ordered_in_the_new_view_executes() {
    let f = fixture();
    let base = f.config.params.view_change_timeout();
    let batch = f.batch(&[7]);
    let vcs = vec![
        f.view_change(0, 1, 0, vec![]),
        f.view_change(2, 1, 0, vec![f.certificate(0, 2, batch.digest())]),
        f.view_change(3, 1, 0, vec![]),
    ];
    let mut changer = f.view_changer(3);
    changer.handle(ViewChangerInput::Started(f.verified_view_change(vcs[2].clone())), Instant(0));
    for vc in &vcs[..2] {
        let out = changer.handle(ViewChangerInput::ViewChange(f.verified_view_change(vc.clone())), Instant(0));
        assert!(!out.iter().any(|o| matches!(o, ViewChangerOutput::Refused(_))), "{out:?}");
    }
    let expired = changer.handle(ViewChangerInput::Timer(TimerKind::ViewChange), Instant(0) + base);
    assert!(
        matches!(expired.as_slice(), [ViewChangerOutput::ViewChangeTimerExpired { target: View(1) }]),
        "{expired:?}"
    );
    assert_eq!(changer.timeout(), base * 2, "VC4: doubled");
    let VerifiedMessage::NewView(new_view) = verify_message(f.correct_new_view(1, vcs), &f.config).unwrap() else {
        panic!("not a new-view")
    };
    assert_eq!(new_view.order.max_seq, SeqNum(2));
    changer.handle(ViewChangerInput::Entered(new_view), Instant(10));
    assert_eq!(changer.view(), View(1));
    let key = |t| (bulwark_framework::messages::client_id(&f.client.public().into()), Timestamp(t));
    changer.handle(ViewChangerInput::Executed { seq: SeqNum(2), requests: vec![key(7)] }, Instant(20));
    assert_eq!(changer.timeout(), base * 2, "a re-proposal executing does not reset T");
    // The request timer fires in view 1 before any new request executed: that view change
    // failed as well, and T doubles again (TOCS §4.5.2).
    let armed = changer.handle(ViewChangerInput::Wait(f.request(8, put("k", "8"))), Instant(20));
    let [ViewChangerOutput::SetTimer(TimerKind::Request, deadline)] = armed.as_slice() else {
        panic!("the request timer starts: {armed:?}")
    };
    let expired = changer.handle(ViewChangerInput::Timer(TimerKind::Request), *deadline);
    assert!(matches!(expired.as_slice(), [ViewChangerOutput::RequestTimerExpired { view: View(1) }]), "{expired:?}");
    assert_eq!(changer.timeout(), base * 4, "a new view that orders nothing new doubles T");
    changer.handle(ViewChangerInput::Executed { seq: SeqNum(3), requests: vec![key(8)] }, Instant(30));
    assert_eq!(changer.timeout(), base, "a request ordered in the new view resets it");
}

/// VC1 with PF4: a replica whose request timer fires while `f + 1` members announced
/// checkpoints past it waits (it is behind, the primary need not be at fault), but only
/// while it executes something between firings. When it does not, the others are stuck as
/// well, and it suspects the primary: campaign seed 488 deadlocked with one correct replica
/// frozen in a view change to v2 and the lagging one re-arming for ever.
#[test]
fn vc1_pf4_a_lagging_replica_that_stops_progressing_suspects_the_primary() {
    let f = fixture();
    let mut replica = f.replica(2);
    let actions = deliver(&mut replica, VerifiedMessage::Request(f.request(1, put("k", "1"))), 0);
    let first = timer_at(&actions, TimerKind::Request).expect("VC1: the request timer starts");
    for from in [1, 3] {
        deliver(&mut replica, VerifiedMessage::Checkpoint(f.checkpoint(from, 16, Digest::of(b"state"))), 1);
    }
    let actions = replica.handle(Input::Timer(TimerKind::Request), first);
    assert!(sent_view_changes(&actions).is_empty(), "behind f + 1 members: it waits first");
    let second = timer_at(&actions, TimerKind::Request).expect("and re-arms");
    let actions = replica.handle(Input::Timer(TimerKind::Request), second);
    assert_eq!(
        sent_view_changes(&actions).iter().map(|vc| vc.view()).collect::<Vec<_>>(),
        vec![View(1)],
        "nothing executed for a whole timeout: the wait is over"
    );
}

/// VC7: a view-changing replica retransmits its VIEW-CHANGE on its periodic tick, paced:
/// first a status interval after sending it, then after twice as long, and so on up to
/// `T_cur` (each copy costs every receiver a check of all its certificates).
#[test]
fn vc7_a_view_changing_replica_retransmits_its_view_change_with_backoff() {
    let f = fixture();
    let mut replica = f.replica(2);
    let actions = deliver(&mut replica, VerifiedMessage::Request(f.request(1, put("k", "1"))), 0);
    let deadline = timer_at(&actions, TimerKind::Request).unwrap();
    let actions = replica.handle(Input::Timer(TimerKind::Request), deadline);
    assert_eq!(sent_view_changes(&actions).len(), 1, "VC2: sent once when it starts");
    let status_us = f.config.params.status_interval_us;
    let timeout_us = f.config.params.view_change_timeout_us;
    let sent_at = |replica: &mut Node<KvStore>, after_us: u64| {
        let actions = replica.handle(Input::Timer(TimerKind::Status), Instant(deadline.0 + after_us));
        sent_view_changes(&actions).iter().map(|vc| vc.view()).collect::<Vec<_>>()
    };
    assert_eq!(sent_at(&mut replica, 1), vec![], "not again at once");
    assert_eq!(sent_at(&mut replica, status_us), vec![View(1)]);
    assert_eq!(sent_at(&mut replica, 2 * status_us), vec![], "the wait doubled");
    assert_eq!(sent_at(&mut replica, 3 * status_us), vec![View(1)]);
    // Waits of 4, 8, ... status intervals, never more than T_cur: within any T_cur after
    // the backoff reached it, one copy goes out.
    let mut copies = 0;
    let mut at = 3 * status_us;
    while at < 3 * status_us + 4 * timeout_us {
        at += status_us;
        copies += sent_at(&mut replica, at).len();
    }
    assert!((4..=8).contains(&copies), "{copies} copies in 4 T_cur");
}

/// VC11–VC14 and VC16: the primary of view 1, with 2f + 1 view-changes, multicasts a
/// NEW-VIEW that re-proposes the prepared batch under its digest and fills the gap below
/// it with the null request; a backup accepts it, enters view 1, multicasts PREPARE for
/// each entry of `O`, and asks for the batch it lacks. New requests get `max-s + 1`.
#[test]
fn vc11_the_new_primary_builds_a_new_view_and_vc16_backups_enter_it() {
    let f = fixture();
    let batch = f.batch(&[7]);
    let d = batch.digest();
    let with_cert = f.view_change(2, 1, 0, vec![f.certificate(0, 2, d)]);
    let mut primary = f.replica(1);
    deliver(&mut primary, VerifiedMessage::ViewChange(f.verified_view_change(with_cert.clone())), 0);
    let actions =
        deliver(&mut primary, VerifiedMessage::ViewChange(f.verified_view_change(f.view_change(3, 1, 0, vec![]))), 0);
    let new_view = actions
        .iter()
        .find_map(|a| match a {
            Action::Broadcast { message: VerifiedMessage::NewView(nv) } => Some(nv.clone()),
            _ => None,
        })
        .expect("VC11: NEW-VIEW sent");
    assert_eq!(new_view.order.entries, vec![(SeqNum(1), null_digest()), (SeqNum(2), d)]);
    assert_eq!(primary.view(), View(1));
    assert!(primary.is_primary());
    let wire = VerifiedMessage::NewView(new_view.clone()).to_wire();
    let VerifiedMessage::NewView(checked) = verify_message(wire, &f.config).expect("VC15: valid at the edge") else {
        panic!("not a new-view")
    };
    let mut backup = f.replica(2);
    let actions = deliver(&mut backup, VerifiedMessage::NewView(checked), 5);
    assert_eq!(backup.view(), View(1));
    let prepares: Vec<(SeqNum, Digest)> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Broadcast { message: VerifiedMessage::Prepare(p) } if p.view == View(1) => Some((p.seq, p.digest)),
            _ => None,
        })
        .collect();
    assert_eq!(prepares, vec![(SeqNum(1), null_digest()), (SeqNum(2), d)]);
    let asked = actions
        .iter()
        .any(|a| matches!(a, Action::Broadcast { message: VerifiedMessage::BatchRequest(r) } if r.digests == vec![d]));
    assert!(asked, "VC16: the missing batch is fetched by digest: {actions:?}");
    // VC14: the new primary numbers new requests from max-s + 1.
    let actions = deliver(&mut primary, VerifiedMessage::Request(f.request(9, put("k", "9"))), 10);
    let proposed: Vec<SeqNum> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Broadcast { message: VerifiedMessage::PrePrepare(pp, _) } => Some(pp.seq),
            _ => None,
        })
        .collect();
    assert_eq!(proposed, vec![SeqNum(3)]);
}

/// VC12 and PF1: `min-s` is the highest stable checkpoint in `V`, not the lowest; a
/// certificate at or below it is ignored; for a sequence number named by two
/// certificates the one from the higher view wins; gaps get the null request.
#[test]
fn vc12_pf1_the_order_starts_at_the_highest_checkpoint_and_the_highest_view_wins() {
    let f = fixture();
    let (a, b, c) = (Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c"));
    let vcs = vec![
        f.view_change(0, 3, 0, vec![f.certificate(0, 3, a), f.certificate(0, 6, a)]),
        f.view_change(1, 3, 4, vec![f.certificate(1, 6, b)]),
        f.view_change(2, 3, 4, vec![f.certificate(0, 8, c)]),
    ];
    let verified: Vec<VerifiedViewChange> =
        vcs.into_iter().map(|vc| f.verified_view_change(vc).as_ref().clone()).collect();
    let order = compute_order(&verified, &f.config).unwrap();
    let null = null_digest();
    assert_eq!(order.min_seq(), SeqNum(4));
    assert_eq!(order.max_seq, SeqNum(8));
    let expected = vec![(SeqNum(5), null), (SeqNum(6), b), (SeqNum(7), null), (SeqNum(8), c)];
    assert_eq!(order.entries, expected);
}

/// VC12(4): two certificates for one sequence number at the same highest view with
/// different digests cannot come from ≤ f faults; no order is computed.
#[test]
fn vc12_4_conflicting_certificates_at_the_highest_view_give_no_order() {
    let f = fixture();
    let vcs = vec![
        f.view_change(0, 1, 0, vec![f.certificate(0, 1, Digest::of(b"a"))]),
        f.view_change(1, 1, 0, vec![f.certificate(0, 1, Digest::of(b"b"))]),
    ];
    let verified: Vec<VerifiedViewChange> =
        vcs.into_iter().map(|vc| f.verified_view_change(vc).as_ref().clone()).collect();
    assert_eq!(compute_order(&verified, &f.config), Err(OrderError::ConflictingCertificates(SeqNum(1))));
}

/// VC10: invalid VIEW-CHANGEs are refused at the edge: too few prepares, a prepare from
/// the primary, duplicate signers, a certificate from a view not below the target, a
/// certificate outside `(s_c, s_c + L]`, two certificates for one sequence number, a
/// checkpoint proof with too few or duplicate signers.
#[test]
fn vc10_invalid_view_changes_are_refused() {
    let f = fixture();
    let d = Digest::of(b"batch");
    let vc = |prepared: Vec<PreparedCertificate>| Message::ViewChange(f.view_change(1, 2, 0, prepared));
    let mut few = f.certificate(0, 1, d);
    few.prepares.pop();
    assert!(refused_certificate(&f, vc(vec![few])));
    let mut from_primary = f.certificate(0, 1, d);
    from_primary.prepares[0] = f.prepare(0, 0, 1, d).into_signed();
    assert!(refused_certificate(&f, vc(vec![from_primary])));
    let mut duplicate = f.certificate(0, 1, d);
    duplicate.prepares[1] = duplicate.prepares[0].clone();
    assert!(refused_certificate(&f, vc(vec![duplicate])));
    assert!(refused_certificate(&f, vc(vec![f.certificate(2, 1, d)])), "certificate from the target view");
    assert!(refused_certificate(&f, vc(vec![f.certificate(0, 9, d)])), "beyond s_c + L");
    assert!(refused_certificate(&f, vc(vec![f.certificate(0, 1, d), f.certificate(1, 1, d)])));
    let mut mismatched = f.certificate(0, 1, d);
    mismatched.prepares[0] = f.prepare(1, 0, 1, Digest::of(b"other")).into_signed();
    assert!(refused_certificate(&f, vc(vec![mismatched])));
    // Checkpoint proofs.
    let with_proof = |proof: Vec<Signed<Checkpoint>>| {
        let payload = ViewChange {
            view: View(2),
            stable: SeqNum(4),
            checkpoint_proof: proof,
            prepared: vec![],
            replica: ReplicaId(1),
        };
        Message::ViewChange(f.signed(1, payload))
    };
    let mut short = f.proof(4, Digest::of(b"state"));
    short.pop();
    assert!(refused_certificate(&f, with_proof(short)));
    let mut duplicated = f.proof(4, Digest::of(b"state"));
    duplicated[2] = duplicated[0].clone();
    assert!(refused_certificate(&f, with_proof(duplicated)));
    assert!(verify_message(with_proof(f.proof(4, Digest::of(b"state"))), &f.config).is_ok());
    // A valid one passes.
    assert!(verify_message(vc(vec![f.certificate(0, 1, d), f.certificate(1, 2, d)]), &f.config).is_ok());
}

/// VC15 at the edge: a NEW-VIEW is refused if `O` is not VC12 of `V` (here: built from the
/// lowest checkpoint, PF1; or a prepared batch replaced by the null request), if `V` holds
/// fewer than 2f + 1 view-changes or two from one replica, or if it is not signed by
/// `primary(w)`.
#[test]
fn vc15_new_views_that_do_not_match_vc12_are_refused() {
    let f = fixture();
    let d = Digest::of(b"batch");
    let vcs = vec![
        f.view_change(0, 1, 0, vec![f.certificate(0, 5, d)]),
        f.view_change(2, 1, 4, vec![f.certificate(0, 5, d)]),
        f.view_change(3, 1, 0, vec![]),
    ];
    let null = null_digest();
    assert!(verify_message(f.correct_new_view(1, vcs.clone()), &f.config).is_ok());
    let from_lowest = [(1, null), (2, null), (3, null), (4, null), (5, d)];
    assert!(refused_certificate(&f, f.new_view(1, 1, vcs.clone(), &from_lowest)), "PF1");
    assert!(refused_certificate(&f, f.new_view(1, 1, vcs.clone(), &[(5, null)])), "prepared batch dropped");
    assert!(refused_certificate(&f, f.new_view(1, 1, vcs[..2].to_vec(), &[(5, d)])), "2f view-changes");
    let twice = vec![vcs[0].clone(), vcs[0].clone(), vcs[2].clone()];
    assert!(refused_certificate(&f, f.new_view(1, 1, twice, &[(5, d)])));
    let by_other = f.new_view(2, 1, vcs, &[(5, d)]);
    assert_eq!(
        verify_message(by_other, &f.config).unwrap_err().kind(),
        RefusalKind::BadSignature,
        "signed by a replica that is not primary(w)"
    );
}

/// VC15 and VC4a at the replica: a NEW-VIEW below the view it is changing to is refused;
/// VC17: one for a higher view is accepted directly.
#[test]
fn vc15_a_new_view_below_the_target_is_refused_and_vc17_a_higher_one_is_entered() {
    let f = fixture();
    let mut replica = f.replica(3);
    let vc = |from, view| VerifiedMessage::ViewChange(f.verified_view_change(f.view_change(from, view, 0, vec![])));
    deliver(&mut replica, vc(0, 2), 0);
    deliver(&mut replica, vc(1, 2), 0);
    assert_eq!(replica.view_change_target(), Some(View(2)));
    let nv1 = f.correct_new_view(
        1,
        vec![f.view_change(0, 1, 0, vec![]), f.view_change(1, 1, 0, vec![]), f.view_change(2, 1, 0, vec![])],
    );
    let nv1 = verify_message(nv1, &f.config).unwrap();
    deliver(&mut replica, nv1, 1);
    assert_eq!(replica.view(), View(0));
    assert_eq!(replica.metrics().refused.get(&RoleRefusal::NewViewBelowTarget), Some(&1));
    let nv3 = f.correct_new_view(
        3,
        vec![f.view_change(0, 3, 0, vec![]), f.view_change(1, 3, 0, vec![]), f.view_change(2, 3, 0, vec![])],
    );
    deliver(&mut replica, verify_message(nv3, &f.config).unwrap(), 2);
    assert_eq!((replica.view(), replica.view_change_target()), (View(3), None));
    assert!(replica.is_primary(), "replica 3 is primary(3)");
}

/// N3: a backup that holds two signed pre-prepares of the primary for one `(v, s)` with
/// different digests forwards both (the proof) and starts a view change at once.
#[test]
fn n3_an_equivocating_primary_is_proven_and_suspected_at_once() {
    let f = fixture();
    let mut replica = f.replica(2);
    let (a, b) = (f.batch(&[1]), f.batch(&[2]));
    deliver(&mut replica, VerifiedMessage::PrePrepare(f.pre_prepare(0, 1, a.digest()), a.clone()), 0);
    let actions = deliver(&mut replica, VerifiedMessage::PrePrepare(f.pre_prepare(0, 1, b.digest()), b.clone()), 1);
    let forwarded: Vec<Digest> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Broadcast { message: VerifiedMessage::PrePrepare(pp, _) } => Some(pp.digest),
            _ => None,
        })
        .collect();
    assert_eq!(forwarded, vec![a.digest(), b.digest()]);
    assert_eq!(sent_view_changes(&actions).iter().map(|vc| vc.view()).collect::<Vec<_>>(), vec![View(1)]);
    assert_eq!(replica.metrics().primary_equivocations, 1);
}

/// PF2 (Fabric #1119) across a view change: a backup that entered view 1 receives the new
/// primary's pre-prepare above its high watermark (the primary's window already moved);
/// it is buffered, not dropped, and accepted once the checkpoint becomes stable (C5).
#[test]
fn pf2_a_pre_prepare_above_the_window_in_a_new_view_is_buffered_not_dropped() {
    let f = fixture();
    let mut replica = f.replica(2);
    let nv = f.correct_new_view(
        1,
        vec![f.view_change(0, 1, 0, vec![]), f.view_change(1, 1, 0, vec![]), f.view_change(3, 1, 0, vec![])],
    );
    deliver(&mut replica, verify_message(nv, &f.config).unwrap(), 0);
    assert_eq!(replica.view(), View(1));
    let batch = f.batch(&[3]);
    let ahead = f.pre_prepare(1, 10, batch.digest());
    let actions = deliver(&mut replica, VerifiedMessage::PrePrepare(ahead, batch.clone()), 1);
    assert_eq!(signed_votes_of_view(&actions, View(1)), 0, "above h + L: not yet accepted");
    let state = Digest::of(b"state");
    let mut actions = Vec::new();
    for from in [0, 1, 3] {
        actions.extend(deliver(&mut replica, VerifiedMessage::Checkpoint(f.checkpoint(from, 4, state)), 2));
    }
    let prepared: Vec<SeqNum> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Broadcast { message: VerifiedMessage::Prepare(p) } if p.view == View(1) => Some(p.seq),
            _ => None,
        })
        .collect();
    assert_eq!(prepared, vec![SeqNum(10)], "the buffered pre-prepare is accepted once h moves");
}
