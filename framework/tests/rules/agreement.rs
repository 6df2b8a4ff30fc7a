//! The agreement role (the backup): pre-prepare acceptance, prepare and commit (N1–N6,
//! P4, PF7), the watermark window and the next-window buffer (C4–C6), and votes restored
//! after a restart.

use crate::fixture::*;
use bulwark_crypto::Digest;
use bulwark_framework::messages::VerifiedMessage;
use bulwark_framework::roles::backup::{BackupInput, BackupOutput, WindowPosition};
use bulwark_framework::roles::Role;
use bulwark_framework::RoleRefusal;
use bulwark_framework::{Instant, ProtocolParams, ReplicaId, SeqNum, View};

fn broadcasts(out: &[BackupOutput]) -> Vec<&VerifiedMessage> {
    out.iter()
        .filter_map(|o| match o {
            BackupOutput::Broadcast(m) => Some(m),
            _ => None,
        })
        .collect()
}

fn refusals(out: &[BackupOutput]) -> Vec<RoleRefusal> {
    out.iter()
        .filter_map(|o| match o {
            BackupOutput::Refused(r) => Some(*r),
            _ => None,
        })
        .collect()
}

/// N1: a backup that accepts a pre-prepare multicasts PREPARE(v, s, d, i).
#[test]
fn n1_accepted_pre_prepare_is_answered_with_a_prepare() {
    let f = fixture();
    let mut backup = f.backup(1);
    let batch = f.batch(&[1]);
    let mut out = Vec::new();
    out.extend(backup.handle(BackupInput::PrePrepare(f.pre_prepare(0, 1, batch.digest()), batch.clone()), Instant(0)));
    let sent = broadcasts(&out);
    assert_eq!(sent.len(), 1);
    match sent[0] {
        VerifiedMessage::Prepare(p) => {
            assert_eq!((p.view, p.seq, p.digest, p.replica), (View(0), SeqNum(1), batch.digest(), ReplicaId(1)));
        }
        other => panic!("expected a prepare, got {other:?}"),
    }
}

/// N1.b: a backup rejects a pre-prepare for a view other than its own.
#[test]
fn n1b_backup_rejects_pre_prepare_for_another_view() {
    let f = fixture();
    let mut backup = f.backup(2);
    let batch = f.batch(&[1]);
    let mut out = Vec::new();
    out.extend(backup.handle(BackupInput::PrePrepare(f.pre_prepare(1, 1, batch.digest()), batch), Instant(0)));
    assert!(broadcasts(&out).is_empty());
    assert_eq!(refusals(&out), vec![RoleRefusal::PrePrepareForAnotherView]);
}

/// N1.c: a backup rejects a pre-prepare for a sequence number outside the watermarks:
/// at or below h, or beyond h + 2L (between h + L and h + 2L it is buffered, C5).
#[test]
fn n1c_backup_rejects_pre_prepare_outside_the_watermarks() {
    let f = fixture();
    let mut backup = f.backup(1);
    let batch = f.batch(&[1]);
    for (seq, reason) in [(0, RoleRefusal::BelowLowWatermark), (17, RoleRefusal::BeyondHighWatermark)] {
        let mut out = Vec::new();
        out.extend(
            backup.handle(BackupInput::PrePrepare(f.pre_prepare(0, seq, batch.digest()), batch.clone()), Instant(0)),
        );
        assert!(broadcasts(&out).is_empty(), "seq {seq}");
        assert_eq!(refusals(&out), vec![reason], "seq {seq}");
    }
    assert_eq!(backup.position(SeqNum(8)), WindowPosition::Inside);
    assert_eq!(backup.position(SeqNum(9)), WindowPosition::Ahead);
}

/// N1.d: a second pre-prepare for (v, s) with another digest is refused (and proves the
/// primary faulty, N3); the same one again is a harmless duplicate.
#[test]
fn n1d_conflicting_pre_prepare_is_refused_and_a_duplicate_ignored() {
    let f = fixture();
    let mut backup = f.backup(1);
    let (a, b) = (f.batch(&[1]), f.batch(&[2]));
    let a_digest = a.digest();
    let mut out = Vec::new();
    out.extend(backup.handle(BackupInput::PrePrepare(f.pre_prepare(0, 1, a.digest()), a.clone()), Instant(0)));
    out.clear();
    out.extend(backup.handle(BackupInput::PrePrepare(f.pre_prepare(0, 1, a.digest()), a), Instant(0)));
    assert!(out.is_empty(), "a duplicate pre-prepare must change nothing: {out:?}");
    out.extend(backup.handle(BackupInput::PrePrepare(f.pre_prepare(0, 1, b.digest()), b), Instant(0)));
    assert!(broadcasts(&out).is_empty());
    assert_eq!(refusals(&out), vec![RoleRefusal::ConflictingPrePrepare]);
    // N3: the two signed pre-prepares come out as the proof of equivocation.
    let proof: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            BackupOutput::PrimaryEquivocated(first, second) => Some((first.clone(), second.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(proof.len(), 1);
    assert!(matches!(&proof[0].0, VerifiedMessage::PrePrepare(pp, _) if pp.digest == a_digest));
    assert!(matches!(&proof[0].1, VerifiedMessage::PrePrepare(pp, _) if pp.digest != a_digest));
}

/// P4: the primary logs its own pre-prepare and sends no PREPARE.
#[test]
fn p4_the_primary_sends_no_prepare_for_its_own_pre_prepare() {
    let f = fixture();
    let mut primary = f.backup(0);
    let batch = f.batch(&[1]);
    let mut out = Vec::new();
    out.extend(primary.handle(BackupInput::PrePrepare(f.pre_prepare(0, 1, batch.digest()), batch), Instant(0)));
    assert!(out.is_empty(), "{out:?}");
}

/// N4: a PREPARE from the primary is ignored; it never counts toward prepared.
#[test]
fn n4_prepare_from_the_primary_is_ignored() {
    let f = fixture();
    let mut backup = f.backup(1);
    let batch = f.batch(&[1]);
    let mut out = Vec::new();
    out.extend(backup.handle(BackupInput::PrePrepare(f.pre_prepare(0, 1, batch.digest()), batch.clone()), Instant(0)));
    out.clear();
    out.extend(backup.handle(BackupInput::Prepare(f.prepare(0, 0, 1, batch.digest())), Instant(0)));
    assert_eq!(refusals(&out), vec![RoleRefusal::PrepareFromPrimary]);
    assert!(!backup.progress(SeqNum(1)).prepared);
}

/// N4 / PF8: votes may arrive before the pre-prepare; they are kept and count once it comes.
#[test]
fn n4_votes_arriving_before_the_pre_prepare_are_kept() {
    let f = fixture();
    let mut backup = f.backup(1);
    let batch = f.batch(&[1]);
    let mut out = Vec::new();
    out.extend(backup.handle(BackupInput::Prepare(f.prepare(2, 0, 1, batch.digest())), Instant(0)));
    out.extend(backup.handle(BackupInput::Commit(f.commit(2, 0, 1, batch.digest())), Instant(0)));
    out.extend(backup.handle(BackupInput::Commit(f.commit(3, 0, 1, batch.digest())), Instant(0)));
    assert!(out.is_empty() && !backup.progress(SeqNum(1)).has_pre_prepare);
    out.extend(backup.handle(BackupInput::PrePrepare(f.pre_prepare(0, 1, batch.digest()), batch), Instant(0)));
    // Own prepare + r2's = 2f: prepared, commit sent; own + r2 + r3 commits = 2f+1.
    let progress = backup.progress(SeqNum(1));
    assert!(progress.prepared && progress.committed, "{progress:?}");
}

/// N5: prepared after the pre-prepare and 2f matching prepares from distinct backups; the
/// COMMIT is multicast exactly once.
#[test]
fn n5_prepared_after_2f_prepares_and_commit_is_sent_once() {
    let f = fixture();
    let mut backup = f.backup(1);
    let batch = f.batch(&[1]);
    let mut out = Vec::new();
    out.extend(backup.handle(BackupInput::PrePrepare(f.pre_prepare(0, 1, batch.digest()), batch.clone()), Instant(0)));
    assert!(!backup.progress(SeqNum(1)).prepared, "own prepare alone is f, not 2f");
    out.clear();
    out.extend(backup.handle(BackupInput::Prepare(f.prepare(2, 0, 1, batch.digest())), Instant(0)));
    assert!(backup.progress(SeqNum(1)).prepared);
    let commits = broadcasts(&out).iter().filter(|m| matches!(m, VerifiedMessage::Commit(_))).count();
    assert_eq!(commits, 1);
    out.clear();
    out.extend(backup.handle(BackupInput::Prepare(f.prepare(3, 0, 1, batch.digest())), Instant(0)));
    assert!(broadcasts(&out).is_empty(), "no second commit: {out:?}");
}

/// N5: prepares for another digest do not count.
#[test]
fn n5_prepares_for_another_digest_do_not_count() {
    let f = fixture();
    let mut backup = f.backup(1);
    let (batch, other) = (f.batch(&[1]), f.batch(&[2]));
    let mut out = Vec::new();
    out.extend(backup.handle(BackupInput::PrePrepare(f.pre_prepare(0, 1, batch.digest()), batch), Instant(0)));
    out.extend(backup.handle(BackupInput::Prepare(f.prepare(2, 0, 1, other.digest())), Instant(0)));
    out.extend(backup.handle(BackupInput::Prepare(f.prepare(3, 0, 1, other.digest())), Instant(0)));
    assert!(!backup.progress(SeqNum(1)).prepared);
}

/// N6: committed-local needs 2f+1 matching commits; 2f is not enough.
#[test]
fn n6_committed_needs_2f_plus_1_commits_not_2f() {
    let f = fixture();
    let mut backup = f.backup(1);
    let batch = f.batch(&[1]);
    prepare_slot(&f, &mut backup, 1, 1, &batch);
    let mut out = Vec::new();
    out.extend(backup.handle(BackupInput::Commit(f.commit(2, 0, 1, batch.digest())), Instant(0)));
    assert!(!backup.is_committed(SeqNum(1)), "own + one = 2f commits");
    out.extend(backup.handle(BackupInput::Commit(f.commit(3, 0, 1, batch.digest())), Instant(0)));
    assert!(backup.is_committed(SeqNum(1)));
    assert_eq!(backup.committed_batch(SeqNum(1)).unwrap().0.digest(), batch.digest());
}

/// N6 and ST6: a replica that is not prepared sends no COMMIT of its own; `2f + 1` COMMITs
/// from others are a commit certificate, which proves the batch (as ST6 accepts it in state
/// transfer), and it becomes executable; `2f` are not enough.
#[test]
fn n6_st6_commits_without_prepared_commit_only_as_a_full_certificate() {
    let f = fixture();
    let mut backup = f.backup(1);
    let batch = f.batch(&[1]);
    let mut out = Vec::new();
    out.extend(backup.handle(BackupInput::PrePrepare(f.pre_prepare(0, 1, batch.digest()), batch.clone()), Instant(0)));
    for from in [0, 2] {
        out.extend(backup.handle(BackupInput::Commit(f.commit(from, 0, 1, batch.digest())), Instant(0)));
    }
    assert!(!backup.is_committed(SeqNum(1)), "2f commits are no certificate");
    out.extend(backup.handle(BackupInput::Commit(f.commit(3, 0, 1, batch.digest())), Instant(0)));
    assert!(backup.is_committed(SeqNum(1)), "2f + 1 commits are a certificate");
    assert_eq!(backup.committed_batch(SeqNum(1)).map(|(b, _)| b.digest()), Some(batch.digest()));
    assert!(broadcasts(&out).iter().all(|m| !matches!(m, VerifiedMessage::Commit(_))), "no own commit: {out:?}");
}

/// N1.d with ST6: a backup that logged one pre-prepare of an equivocating primary and then
/// meets a commit certificate (`2f + 1` COMMITs of its view) for the other digest drops its
/// pre-prepare, asks for the certified batch by digest, and executes that batch once it
/// arrives; it signs nothing for it. Twins found the stall without this (`tests/twins.rs`:
/// a backup partitioned with one twin of the primary waited for ever).
#[test]
fn n1d_st6_a_commit_certificate_outvotes_an_equivocating_primarys_pre_prepare() {
    let f = fixture();
    let mut backup = f.backup(1);
    let (taken, certified) = (f.batch(&[1]), f.batch(&[2]));
    let mut out = Vec::new();
    out.extend(backup.handle(BackupInput::PrePrepare(f.pre_prepare(0, 1, taken.digest()), taken.clone()), Instant(0)));
    for from in [0, 2] {
        out.extend(backup.handle(BackupInput::Commit(f.commit(from, 0, 1, certified.digest())), Instant(0)));
    }
    assert_eq!(backup.missing_batches(), Vec::new(), "2f commits outvote nothing");
    out.extend(backup.handle(BackupInput::Commit(f.commit(3, 0, 1, certified.digest())), Instant(0)));
    assert!(refusals(&out).contains(&RoleRefusal::OutvotedPrePrepare), "{out:?}");
    assert_eq!(backup.missing_batches(), vec![certified.digest()], "the certified batch is fetched");
    assert!(backup.committed_batch(SeqNum(1)).is_none(), "nothing to execute before the batch arrives");
    let not_taken = backup.handle(BackupInput::Batch(taken.clone()), Instant(0));
    assert_eq!(refusals(&not_taken), vec![RoleRefusal::UnrequestedBatch], "the outvoted batch is not taken back");
    let taken = backup.handle(BackupInput::Batch(certified.clone()), Instant(0));
    assert!(refusals(&taken).is_empty(), "{taken:?}");
    out.extend(taken);
    assert_eq!(backup.committed_batch(SeqNum(1)).map(|(b, v)| (b.digest(), v)), Some((certified.digest(), View(0))));
    assert_eq!(backup.commit_certificate(SeqNum(1)).len(), 3);
    assert!(broadcasts(&out).iter().all(|m| !matches!(m, VerifiedMessage::Commit(_))), "no own commit: {out:?}");
}

/// PF7 / M6: a replica's second commit counts once, and a conflicting one is refused.
#[test]
fn pf7_one_replica_counts_once_however_often_it_votes() {
    let f = fixture();
    let mut backup = f.backup(1);
    let batch = f.batch(&[1]);
    prepare_slot(&f, &mut backup, 1, 1, &batch);
    let mut out = Vec::new();
    for _ in 0..5 {
        out.extend(backup.handle(BackupInput::Commit(f.commit(2, 0, 1, batch.digest())), Instant(0)));
    }
    assert!(!backup.is_committed(SeqNum(1)));
    out.extend(backup.handle(BackupInput::Commit(f.commit(2, 0, 1, Digest::of(b"other"))), Instant(0)));
    assert!(refusals(&out).contains(&RoleRefusal::ConflictingCommit));
}

/// C5 (PF2): a message for (h+L, h+2L] is buffered, not dropped, and re-examined when h
/// advances (Fabric #1119: the primary's window ran ahead of the backups').
#[test]
fn c5_messages_for_the_next_window_are_buffered_and_replayed() {
    let f = fixture();
    let mut backup = f.backup(1);
    let batch = f.batch(&[1]);
    let mut out = Vec::new();
    out.extend(backup.handle(BackupInput::PrePrepare(f.pre_prepare(0, 10, batch.digest()), batch.clone()), Instant(0)));
    assert!(broadcasts(&out).is_empty());
    assert_eq!(backup.future_len(), 1);
    let replay = backup.handle(BackupInput::AdvanceLow { stable: SeqNum(4), last_executed: SeqNum(4) }, Instant(0));
    assert_eq!(replay.len(), 1);
    assert_eq!(backup.future_len(), 0);
    let BackupOutput::Replay(VerifiedMessage::PrePrepare(pp, b)) = &replay[0] else { panic!("{replay:?}") };
    let (pp, b) = (pp.clone(), b.clone());
    out.extend(backup.handle(BackupInput::PrePrepare(pp, b), Instant(0)));
    assert!(backup.progress(SeqNum(10)).has_pre_prepare);
}

/// C5: the next-window buffer is bounded per sender.
#[test]
fn c5_the_next_window_buffer_is_bounded_per_sender() {
    let params = ProtocolParams { future_messages_per_sender_max: 3, ..params() };
    let f = fixture_with(4, params);
    let mut backup = f.backup(1);
    let mut out = Vec::new();
    for seq in 9..=16 {
        out.extend(backup.handle(BackupInput::Prepare(f.prepare(2, 0, seq, Digest::of(b"d"))), Instant(0)));
    }
    assert_eq!(backup.future_len(), 3);
    assert_eq!(refusals(&out).iter().filter(|r| **r == RoleRefusal::FutureBufferFull).count(), 5);
}

/// C4: a stable checkpoint discards the log at and below it and moves the watermarks.
#[test]
fn c4_stable_checkpoint_discards_the_log_and_moves_the_window() {
    let f = fixture();
    let mut backup = f.backup(1);
    for seq in 1..=6 {
        let batch = f.batch(&[seq]);
        prepare_slot(&f, &mut backup, 1, seq, &batch);
    }
    assert_eq!(backup.log_len(), 6);
    backup.handle(BackupInput::AdvanceLow { stable: SeqNum(4), last_executed: SeqNum(4) }, Instant(0));
    assert_eq!(backup.log_len(), 2);
    assert_eq!((backup.low(), backup.high()), (SeqNum(4), SeqNum(12)));
    assert_eq!(backup.position(SeqNum(4)), WindowPosition::Below);
    assert_eq!(backup.position(SeqNum(12)), WindowPosition::Inside);
}

/// C6: committed batches the replica can execute next (the run right after its last
/// executed one) survive the garbage collection of a checkpoint it has not reached; a
/// committed batch after a gap does not (state transfer replaces that range), which keeps
/// the log bounded while a replica is behind.
#[test]
fn c6_the_executable_committed_run_survives_a_checkpoint_ahead_of_execution() {
    let f = fixture();
    let mut backup = f.backup(1);
    let mut out = Vec::new();
    for seq in [2, 3, 5] {
        let batch = f.batch(&[seq]);
        prepare_slot(&f, &mut backup, 1, seq, &batch);
        out.extend(backup.handle(BackupInput::Commit(f.commit(2, 0, seq, batch.digest())), Instant(0)));
        out.extend(backup.handle(BackupInput::Commit(f.commit(3, 0, seq, batch.digest())), Instant(0)));
    }
    backup.handle(BackupInput::AdvanceLow { stable: SeqNum(8), last_executed: SeqNum(1) }, Instant(0));
    assert!(backup.committed_batch(SeqNum(2)).is_some());
    assert!(backup.committed_batch(SeqNum(3)).is_some());
    assert!(backup.committed_batch(SeqNum(5)).is_none(), "after the gap at 4");
    assert_eq!(backup.log_len(), 2);
}

/// Durability (I3 across restarts): a backup restored with the votes it signed before a
/// crash refuses to sign a PREPARE for another digest at the same view and sequence number
/// (a primary that equivocates across the restart gets nothing), and still signs the same
/// one again.
#[test]
fn restored_votes_forbid_a_different_prepare_after_a_restart() {
    use bulwark_framework::messages::MessageKind;
    let f = fixture();
    let (a, b) = (f.batch(&[1]), f.batch(&[2]));
    let votes = [((MessageKind::Prepare, View(0), SeqNum(1)), a.digest())].into_iter().collect();
    let mut backup = f.backup(1);
    backup.restore(votes, Default::default(), Default::default());
    let mut out = Vec::new();
    out.extend(backup.handle(BackupInput::PrePrepare(f.pre_prepare(0, 1, b.digest()), b), Instant(0)));
    assert!(broadcasts(&out).is_empty(), "{out:?}");
    assert_eq!(refusals(&out), vec![RoleRefusal::ConflictsWithVoteBeforeRestart]);
    let mut backup = f.backup(1);
    let votes = [((MessageKind::Prepare, View(0), SeqNum(1)), a.digest())].into_iter().collect();
    backup.restore(votes, Default::default(), Default::default());
    let mut out = Vec::new();
    out.extend(backup.handle(BackupInput::PrePrepare(f.pre_prepare(0, 1, a.digest()), a), Instant(0)));
    assert_eq!(broadcasts(&out).len(), 1, "the same prepare may be signed again");
}
