//! Status-driven retransmission: when a replica reports itself stuck, what a peer
//! answers, and the budgets that bound what a Byzantine STATUS can buy.

use crate::fixture::*;
use bulwark_crypto::Digest;
use bulwark_framework::messages::VerifiedMessage;
use bulwark_framework::roles::backup::BackupInput;
use bulwark_framework::roles::node::Node;
use bulwark_framework::roles::{Action, Role, TimerKind};
use bulwark_framework::verify::verify_message;
use bulwark_framework::{Input, Instant, ReplicaId, SeqNum, View};
use bulwark_services::kv::KvStore;

/// Whether a status tick made the replica multicast STATUS (report itself stuck).
fn sent_status(actions: &[Action]) -> bool {
    actions.iter().any(|a| matches!(a, Action::Broadcast { message: VerifiedMessage::Status(_) }))
}

fn peer_status(
    from: u32,
    first_slot: u64,
    slots: Vec<bulwark_framework::messages::SlotProgress>,
) -> bulwark_framework::messages::Status {
    bulwark_framework::messages::Status {
        replica: ReplicaId(from),
        view: View(0),
        stable: SeqNum(0),
        last_executed: SeqNum(first_slot - 1),
        first_slot: SeqNum(first_slot),
        slots,
    }
}

fn commits_sent(messages: &[VerifiedMessage]) -> Vec<(u32, u64)> {
    let mut sent: Vec<(u32, u64)> = messages
        .iter()
        .filter_map(|m| match m {
            VerifiedMessage::Commit(c) => Some((c.replica.0, c.seq.0)),
            _ => None,
        })
        .collect();
    sent.sort();
    sent
}

/// A replica with unexecuted work and no progress for a status interval multicasts STATUS;
/// a peer answers with what it lacks (retransmission, Castro's BFT library).
#[test]
fn status_a_stuck_replica_asks_and_a_peer_retransmits() {
    let f = fixture();
    let mut primary = f.replica(0);
    let mut backup = f.replica(1);
    let interval = f.config.params.status_interval();
    // The primary proposes; the pre-prepare is "lost" (never delivered).
    primary.handle(Input::Message(VerifiedMessage::Request(f.request(1, put("k", "1")))), Instant(0));
    let tick = Instant(0) + interval;
    primary.handle(Input::Timer(TimerKind::Status), tick);
    let status = primary.handle(Input::Timer(TimerKind::Status), tick + interval);
    let Some(Action::Broadcast { message: status @ VerifiedMessage::Status(_) }) =
        status.iter().find(|a| matches!(a, Action::Broadcast { message: VerifiedMessage::Status(_) }))
    else {
        panic!("stuck primary sent no status: {status:?}")
    };
    // The backup learns that sequence 1 exists; on its own ticks it reports itself stuck,
    // and the primary answers with the pre-prepare.
    backup.handle(Input::Message(status.clone()), tick + interval);
    backup.handle(Input::Timer(TimerKind::Status), tick + interval * 2);
    let asked = backup.handle(Input::Timer(TimerKind::Status), tick + interval * 3);
    let Some(Action::Broadcast { message: backup_status }) =
        asked.iter().find(|a| matches!(a, Action::Broadcast { message: VerifiedMessage::Status(_) }))
    else {
        panic!("stuck backup sent no status: {asked:?}")
    };
    let answer = primary.handle(Input::Message(backup_status.clone()), tick + interval * 3);
    assert!(
        answer.iter().any(|a| matches!(a, Action::Send { to: ReplicaId(1), message: VerifiedMessage::PrePrepare(..) })),
        "{answer:?}"
    );
}

/// A replica reports itself stuck only on what `f + 1` members claim: one Byzantine
/// member's checkpoints and votes far ahead (the flood strategy) would otherwise keep
/// every correct replica multicasting STATUS, and answering each other, at every tick.
#[test]
fn status_one_members_claims_alone_do_not_make_a_replica_stuck_f_plus_1_do() {
    let f = fixture();
    let mut backup = f.replica(1);
    let interval = f.config.params.status_interval();
    let junk = Digest::of(b"nobody reached this");
    let tick = |replica: &mut Node<KvStore>, round: u64| {
        replica.handle(Input::Timer(TimerKind::Status), Instant(0) + interval * (round as u32 + 1))
    };
    // Replica 3 alone claims sequence numbers 8 (a checkpoint) and 7 (votes).
    for message in [
        VerifiedMessage::Checkpoint(f.checkpoint(3, 8, junk)),
        VerifiedMessage::Prepare(f.prepare(3, 0, 7, junk)),
        VerifiedMessage::Commit(f.commit(3, 0, 7, junk)),
    ] {
        backup.handle(Input::Message(message), Instant(0));
    }
    for round in 0..3 {
        assert!(!sent_status(&tick(&mut backup, round)), "stuck on one member's word (tick {round})");
    }
    // A second member vouches for sequence number 4: now this replica is behind.
    let checkpoint = VerifiedMessage::Checkpoint(f.checkpoint(2, 4, junk));
    backup.handle(Input::Message(checkpoint), Instant(0) + interval * 3);
    assert!(sent_status(&tick(&mut backup, 3)), "f + 1 members are ahead and the replica did not ask");
}

/// Retransmission of commits: a replica that committed a slot sends a peer that lacks it
/// the whole commit certificate, not only its own vote (with one replica silent, a lagging
/// peer finds `2f + 1` COMMITs no other way). After a restart the slot is gone, and the
/// replica sends the certificate from its durable records or, without one, its own COMMIT
/// signed again (the same statement, the same bytes): campaign seeds 94, 134, 208, 351.
#[test]
fn status_a_lagging_peer_gets_the_commit_certificate_also_after_a_restart() {
    use bulwark_framework::messages::{MessageKind, SlotProgress};
    let f = fixture();
    let batch = f.batch(&[1]);
    let d = batch.digest();
    let lacking = vec![SlotProgress { has_pre_prepare: true, prepared: true, committed: false }];
    let has_it = vec![SlotProgress { has_pre_prepare: true, prepared: true, committed: true }];
    // In memory: r1 committed seq 1 with COMMITs from r1, r2, r3.
    let mut backup = f.backup(1);
    let mut out = prepare_slot(&f, &mut backup, 1, 1, &batch);
    for from in [2, 3] {
        out.extend(backup.handle(BackupInput::Commit(f.commit(from, 0, 1, d)), Instant(0)));
    }
    assert!(backup.is_committed(SeqNum(1)));
    let sent = backup.retransmissions_for(&peer_status(0, 1, lacking.clone()));
    assert_eq!(commits_sent(&sent), vec![(1, 1), (2, 1), (3, 1)], "{sent:?}");
    assert!(commits_sent(&backup.retransmissions_for(&peer_status(0, 1, has_it.clone()))).is_empty());
    // Restarted with the certificate in its records.
    let certificate = backup.commit_certificate(SeqNum(1));
    assert_eq!(certificate.len(), 3);
    let votes: std::collections::BTreeMap<_, _> =
        [((MessageKind::Commit, View(0), SeqNum(1)), d)].into_iter().collect();
    let mut restarted = f.backup(1);
    let certificates = [(SeqNum(1), certificate)].into_iter().collect();
    restarted.restore(votes.clone(), Default::default(), certificates);
    let sent = restarted.retransmissions_for(&peer_status(0, 1, lacking.clone()));
    assert_eq!(commits_sent(&sent), vec![(1, 1), (2, 1), (3, 1)], "{sent:?}");
    // Restarted with its vote only: its own COMMIT, signed again and valid.
    let mut restarted = f.backup(1);
    restarted.restore(votes, Default::default(), Default::default());
    let sent = restarted.retransmissions_for(&peer_status(0, 1, lacking));
    assert_eq!(commits_sent(&sent), vec![(1, 1)], "{sent:?}");
    assert!(verify_message(sent[0].to_wire(), &f.config).is_ok());
    assert!(commits_sent(&restarted.retransmissions_for(&peer_status(0, 1, has_it))).is_empty());
}

/// A peer behind the stable checkpoint gets the checkpoint's proof (to fetch that state),
/// not the log above it: it can use none of it before the transfer, and a Byzantine STATUS
/// "I am at 0" would otherwise bring back a window of batches from every correct replica
/// at every answer. A peer at the checkpoint gets the slots it lacks.
#[test]
fn status_a_peer_behind_the_stable_checkpoint_gets_the_proof_not_the_log() {
    let f = fixture();
    let mut replica = f.replica(1);
    let mut actions = Vec::new();
    for seq in 1..=5 {
        actions.extend(commit_at(&f, &mut replica, seq, &f.batch(&[seq])));
    }
    let own_checkpoint = actions
        .iter()
        .find_map(|a| match a {
            Action::Broadcast { message: VerifiedMessage::Checkpoint(c) } if c.seq == SeqNum(4) => Some(c.clone()),
            _ => None,
        })
        .expect("a checkpoint at 4");
    for from in [2, 3] {
        let checkpoint = VerifiedMessage::Checkpoint(f.checkpoint(from, 4, own_checkpoint.state_digest));
        replica.handle(Input::Message(checkpoint), Instant(0));
    }
    assert_eq!(replica.stable(), SeqNum(4));
    let status = |from: u32, last_executed: u64| {
        let status = peer_status(from, last_executed + 1, Vec::new());
        VerifiedMessage::Status(f.sign(status, &f.keys[from as usize]))
    };
    let sent_to = |actions: &[Action], peer: u32| -> Vec<bulwark_framework::messages::MessageKind> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { to, message } if *to == ReplicaId(peer) => Some(message.kind()),
                _ => None,
            })
            .collect()
    };
    use bulwark_framework::messages::MessageKind;
    let behind = sent_to(&replica.handle(Input::Message(status(3, 0)), Instant(0)), 3);
    assert!(behind.contains(&MessageKind::Checkpoint), "{behind:?}");
    assert!(!behind.contains(&MessageKind::PrePrepare), "the log went to a peer that cannot use it: {behind:?}");
    let at_checkpoint = sent_to(&replica.handle(Input::Message(status(2, 4)), Instant(0)), 2);
    assert!(at_checkpoint.contains(&MessageKind::PrePrepare), "{at_checkpoint:?}");
}

/// Retransmission budget: a peer gets at most a window of pre-prepares per ten status
/// intervals, however often it asks. A Byzantine STATUS claiming to lack the whole window
/// otherwise bought every batch of it from every correct replica at every answer.
#[test]
fn status_a_peer_gets_at_most_a_window_of_pre_prepares_per_ten_intervals() {
    let f = fixture();
    let mut primary = f.replica(0);
    let interval = f.config.params.status_interval();
    let window = f.config.params.watermark_window;
    // The primary proposes; the pre-prepare is "lost" on the way to every backup.
    primary.handle(Input::Message(VerifiedMessage::Request(f.request(1, put("k", "1")))), Instant(0));
    let status = VerifiedMessage::Status(f.sign(peer_status(1, 1, Vec::new()), &f.keys[1]));
    let pre_prepares_to_1 = |actions: &[Action]| {
        actions
            .iter()
            .filter(|a| matches!(a, Action::Send { to: ReplicaId(1), message: VerifiedMessage::PrePrepare(..) }))
            .count() as u64
    };
    // Asked every half interval (the answer rate limit) for almost ten intervals.
    let mut sent = 0;
    for half in 1..20u32 {
        sent += pre_prepares_to_1(&primary.handle(Input::Message(status.clone()), Instant(0) + interval * half / 2));
    }
    assert_eq!(sent, window, "one pre-prepare per answer until the budget is spent");
    assert_eq!(primary.metrics().retransmissions_paced, 19 - window);
    let next_period = Instant(0) + interval / 2 + interval * 10;
    assert_eq!(pre_prepares_to_1(&primary.handle(Input::Message(status), next_period)), 1, "a new period");
}

/// Numbers near `u64::MAX` from peers (cargo-fuzz findings, `fuzz/regressions/`): a STATUS
/// whose `first_slot` or `last_executed` is just below `u64::MAX` (one faulty member
/// suffices) and a stable checkpoint within a window of it (2f + 1 signers, outside the
/// fault model but still no panic). Each overflowed an addition; tests run with overflow
/// checks, so each of these panicked before the fix.
#[test]
fn fuzz_findings_numbers_near_u64_max_do_not_overflow() {
    use bulwark_framework::messages::{SlotProgress, Status};
    let f = fixture();
    let slot = SlotProgress { has_pre_prepare: true, prepared: false, committed: false };
    let status = |first_slot: u64, last_executed: u64| {
        let payload = Status {
            replica: ReplicaId(3),
            view: View(0),
            stable: SeqNum(62_965),
            last_executed: SeqNum(last_executed),
            first_slot: SeqNum(first_slot),
            slots: vec![slot],
        };
        VerifiedMessage::Status(f.sign(payload, &f.keys[3]))
    };
    for (first_slot, last_executed) in [(u64::MAX - 5, 12), (13, u64::MAX - 3), (u64::MAX, u64::MAX)] {
        for me in [0, 1, 2] {
            let mut replica = f.replica(me);
            deliver(&mut replica, VerifiedMessage::Request(f.request(1, put("k", "1"))), 0);
            deliver(&mut replica, status(first_slot, last_executed), 10);
            replica.handle(Input::Timer(TimerKind::Status), Instant(10) + f.config.params.status_interval());
        }
    }
    let mut primary = f.replica(0);
    deliver(&mut primary, VerifiedMessage::Request(f.request(1, put("k", "1"))), 0);
    for from in [1, 2, 3] {
        deliver(&mut primary, VerifiedMessage::Checkpoint(f.checkpoint(from, u64::MAX - 7, Digest::of(b"s"))), 5);
    }
    deliver(&mut primary, VerifiedMessage::Request(f.request(2, put("k", "2"))), 6);
    primary.handle(Input::Timer(TimerKind::Batch), Instant(1_000_000));
}
