//! The agreed time of a batch (N1.f): the primary proposes its clock, never behind the
//! batches before; a backup vouches (PREPAREs) only for a time within `clock_skew_max_us`
//! of its own clock and in order with its neighbours in the view, and a batch it would not
//! vouch for still commits on the word of `2f` others.

use crate::fixture::*;
use bulwark_framework::messages::{Batch, Command, VerifiedMessage};
use bulwark_framework::roles::backup::{BackupInput, BackupOutput};
use bulwark_framework::roles::primary::Primary;
use bulwark_framework::roles::Role;
use bulwark_framework::{Instant, ProtocolParams, RoleRefusal, SeqNum};
use std::sync::Arc;

const SECOND: u64 = 1_000_000;

fn timed_batch(f: &Fixture, timestamp: u64, time_us: u64) -> Arc<Batch> {
    Arc::new(Batch::timed(vec![Command::Request(f.request(timestamp, put("k", "v")))], time_us))
}

fn prepared_and_refused(out: &[BackupOutput]) -> (bool, Vec<RoleRefusal>) {
    let prepared = out.iter().any(|o| matches!(o, BackupOutput::Broadcast(VerifiedMessage::Prepare(_))));
    let refused = out
        .iter()
        .filter_map(|o| match o {
            BackupOutput::Refused(r) => Some(*r),
            _ => None,
        })
        .collect();
    (prepared, refused)
}

/// N1.f: the primary stamps a batch with its clock, and never with a time before the last
/// batch it proposed or the floor it was given on taking over.
#[test]
fn n1f_the_primary_proposes_its_clock_and_never_goes_back() {
    let params = ProtocolParams { in_flight_batches_max: 100, ..params() };
    let f = fixture_with(4, params);
    let mut primary = Primary::new(f.handle(), SeqNum(1));
    primary.offer(f.request(1, put("a", "1")), Instant(5 * SECOND));
    let first = primary.cut_batches(SeqNum(0), Instant(5 * SECOND));
    assert_eq!(first[0].1.time_us(), 5 * SECOND);
    primary.time_at_least(9 * SECOND);
    primary.on_executed(SeqNum(1));
    primary.offer(f.request(2, put("a", "2")), Instant(6 * SECOND));
    let second = primary.cut_batches(SeqNum(0), Instant(6 * SECOND));
    assert_eq!(second[0].1.time_us(), 9 * SECOND, "the floor wins over a clock behind it");
    primary.on_executed(SeqNum(2));
    primary.offer(f.request(3, put("a", "3")), Instant(10 * SECOND));
    let third = primary.cut_batches(SeqNum(0), Instant(10 * SECOND));
    assert_eq!(third[0].1.time_us(), 10 * SECOND);
}

/// N1.f: a backup withholds its PREPARE for a batch whose time is more than
/// `clock_skew_max_us` ahead of or behind its clock, and prepares one within it.
#[test]
fn n1f_a_backup_withholds_its_prepare_for_a_time_outside_the_clock_skew() {
    let f = fixture();
    let skew = f.config.params.clock_skew_max_us;
    let now = Instant(100 * SECOND);
    for (time_us, vouches) in
        [(now.0 + skew + 1, false), (now.0 - skew - 1, false), (now.0 + skew, true), (now.0 - skew, true)]
    {
        let mut backup = f.backup(1);
        let batch = timed_batch(&f, 1, time_us);
        let out = backup.handle(BackupInput::PrePrepare(f.pre_prepare(0, 1, batch.digest()), batch), now);
        let (prepared, refused) = prepared_and_refused(&out);
        assert_eq!(prepared, vouches, "time {time_us} at clock {}", now.0);
        let expected = if vouches { vec![] } else { vec![RoleRefusal::BatchTimeOutsideClockSkew] };
        assert_eq!(refused, expected);
    }
}

/// N1.f: a batch whose time is before that of a batch at a lower number of the view, or
/// after one at a higher number, gets no PREPARE.
#[test]
fn n1f_a_backup_withholds_its_prepare_for_a_time_out_of_order() {
    let f = fixture();
    let now = Instant(100 * SECOND);
    let mut backup = f.backup(1);
    let middle = timed_batch(&f, 2, now.0);
    let out = backup.handle(BackupInput::PrePrepare(f.pre_prepare(0, 2, middle.digest()), middle), now);
    assert!(prepared_and_refused(&out).0);
    for (seq, time_us) in [(1, now.0 + 1), (3, now.0 - 1)] {
        let batch = timed_batch(&f, seq + 10, time_us);
        let out = backup.handle(BackupInput::PrePrepare(f.pre_prepare(0, seq, batch.digest()), batch), now);
        assert_eq!(prepared_and_refused(&out), (false, vec![RoleRefusal::BatchTimeOutOfOrder]), "seq {seq}");
    }
    let equal = timed_batch(&f, 30, now.0);
    let out = backup.handle(BackupInput::PrePrepare(f.pre_prepare(0, 4, equal.digest()), equal), now);
    assert!(prepared_and_refused(&out).0, "an equal time is in order");
}

/// N1.f: a backup that would not vouch for a batch's time still logs it, and when `2f`
/// others prepare it, it commits it like any other (so a replica whose clock is off keeps
/// up with its cluster).
#[test]
fn n1f_a_batch_a_backup_would_not_vouch_for_commits_on_the_word_of_2f_others() {
    let f = fixture();
    let mut backup = f.backup(1);
    let now = Instant(100 * SECOND);
    let batch = timed_batch(&f, 1, now.0 + 60 * SECOND);
    let digest = batch.digest();
    let out = backup.handle(BackupInput::PrePrepare(f.pre_prepare(0, 1, digest), batch), now);
    assert!(!prepared_and_refused(&out).0);
    let mut out = Vec::new();
    for from in [2, 3] {
        out.extend(backup.handle(BackupInput::Prepare(f.prepare(from, 0, 1, digest)), now));
    }
    assert!(
        out.iter().any(|o| matches!(o, BackupOutput::Broadcast(VerifiedMessage::Commit(c)) if c.digest == digest)),
        "prepared by 2f others, it commits: {out:?}"
    );
    for from in [0, 2, 3] {
        backup.handle(BackupInput::Commit(f.commit(from, 0, 1, digest)), now);
    }
    assert!(backup.committed_batch(SeqNum(1)).is_some());
}
