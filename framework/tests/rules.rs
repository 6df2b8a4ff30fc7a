//! One test per protocol rule of `shared/PBFT.md`, named after the rule it checks.
//!
//! Each test drives a role directly — no network, no runtime — and asserts exactly which
//! actions come out, the way the paper states the rule.

use bulwark_crypto::{Digest, KeyPair, Signed, Verified};
use bulwark_framework::messages::{
    Batch, Checkpoint, Commit, Message, NewView, PrePrepare, Prepare, PreparedCertificate, Reply, Request,
    VerifiedMessage, VerifiedViewChange, ViewChange,
};
use bulwark_framework::roles::backup::{Backup, BackupInput, BackupOutput, WindowPosition};
use bulwark_framework::roles::checkpoint::{CheckpointCollector, CollectorInput, CollectorOutput, StableCheckpoint};
use bulwark_framework::roles::client::{Client, ClientAction, ClientError, ClientInput};
use bulwark_framework::roles::node::Node;
use bulwark_framework::roles::primary::{Admission, Primary, PrimaryInput, PrimaryOutput};
use bulwark_framework::roles::view_change::{
    compute_order, null_digest, OrderError, ViewChanger, ViewChangerInput, ViewChangerOutput,
};
use bulwark_framework::roles::{Action, ReplicaEvent, Role, TimerKind};
use bulwark_framework::signing::Scoped;
use bulwark_framework::verify::{verify_message, Refusal, RefusalKind};
use bulwark_framework::RoleRefusal;
use bulwark_framework::{
    ClusterId, Input, Instant, Membership, MembershipHandle, Outcome, ProtocolParams, Replica, ReplicaId, SeqNum,
    Timestamp, View,
};
use bulwark_services::kv::{KvOp, KvReply, KvStore};
use std::sync::Arc;

struct Fixture {
    keys: Vec<KeyPair>,
    config: Arc<Membership>,
    client: KeyPair,
}

fn params() -> ProtocolParams {
    ProtocolParams { checkpoint_interval: 4, watermark_window: 8, batch_size_max: 4, ..ProtocolParams::default() }
}

fn fixture_with(n: usize, params: ProtocolParams) -> Fixture {
    let keys: Vec<KeyPair> = (0..n).map(|i| KeyPair::from_seed([i as u8 + 1; 32])).collect();
    let config =
        Arc::new(Membership::numbered(ClusterId(1), keys.iter().map(KeyPair::public).collect(), params).unwrap());
    Fixture { keys, config, client: KeyPair::from_seed([200; 32]) }
}

fn fixture() -> Fixture {
    fixture_with(4, params())
}

fn put(key: &str, value: &str) -> Vec<u8> {
    rmp_serde::to_vec(&KvOp::Put { key: key.into(), value: value.as_bytes().to_vec() }).unwrap()
}

impl Fixture {
    /// A membership handle of its own, as each replica (or client) holds one.
    fn handle(&self) -> MembershipHandle {
        MembershipHandle::new((*self.config).clone())
    }

    /// Signs `payload` as `key` in the fixture's scope.
    fn sign<T: Scoped>(&self, payload: T, key: &KeyPair) -> Verified<T> {
        self.config.scope().sign(payload, key)
    }

    fn request(&self, timestamp: u64, operation: Vec<u8>) -> Verified<Request> {
        let request = Request {
            client_key: self.client.public().into(),
            timestamp: Timestamp(timestamp),
            read_only: false,
            operation,
        };
        self.sign(request, &self.client)
    }

    fn batch(&self, timestamps: &[u64]) -> Arc<Batch> {
        Arc::new(Batch::new(timestamps.iter().map(|t| self.request(*t, put("k", &t.to_string()))).collect()))
    }

    fn pre_prepare(&self, view: u64, seq: u64, digest: Digest) -> Verified<PrePrepare> {
        let primary = self.config.primary(View(view));
        let payload = PrePrepare { view: View(view), seq: SeqNum(seq), digest };
        self.sign(payload, &self.keys[primary.0 as usize])
    }

    fn prepare(&self, from: u32, view: u64, seq: u64, digest: Digest) -> Verified<Prepare> {
        let payload = Prepare { view: View(view), seq: SeqNum(seq), digest, replica: ReplicaId(from) };
        self.sign(payload, &self.keys[from as usize])
    }

    fn commit(&self, from: u32, view: u64, seq: u64, digest: Digest) -> Verified<Commit> {
        let payload = Commit { view: View(view), seq: SeqNum(seq), digest, replica: ReplicaId(from) };
        self.sign(payload, &self.keys[from as usize])
    }

    fn checkpoint(&self, from: u32, seq: u64, digest: Digest) -> Verified<Checkpoint> {
        let payload = Checkpoint { seq: SeqNum(seq), state_digest: digest, replica: ReplicaId(from) };
        self.sign(payload, &self.keys[from as usize])
    }

    fn reply(
        &self,
        from: u32,
        timestamp: Timestamp,
        result: &[u8],
        read_only: bool,
    ) -> bulwark_framework::messages::VerifiedReply {
        let client = bulwark_framework::messages::client_id(&self.client.public().into());
        let payload =
            Reply { view: View(0), timestamp, client, replica: ReplicaId(from), read_only, result: result.to_vec() };
        let signed = self.sign(payload, &self.keys[from as usize]).into_signed();
        bulwark_framework::verify::verify_reply(signed, None, &self.config).unwrap()
    }

    fn backup(&self, me: u32) -> Backup {
        Backup::new(ReplicaId(me), self.handle(), Arc::new(KeyPair::from_seed([me as u8 + 1; 32])))
    }

    /// Replica `me` with its roles wired in (what the runtime runs as four actors).
    fn replica(&self, me: u32) -> Node<KvStore> {
        let key = KeyPair::from_seed([me as u8 + 1; 32]);
        let mut node = Node::new(ReplicaId(me), key, self.handle(), KvStore::new());
        node.start(Instant(0));
        node
    }

    /// Replica `me` with its roles, its primary role driven by the test itself (see
    /// [`Node::hold_primary`]).
    fn replica_holding_primary(&self, me: u32) -> Node<KvStore> {
        let mut node = self.replica(me);
        node.hold_primary();
        node
    }

    /// Replica `me` alone: what it hands its roles stays in its actions, for a test to
    /// deliver (or hold back) itself.
    fn bare_replica(&self, me: u32) -> Replica<KvStore> {
        let key = KeyPair::from_seed([me as u8 + 1; 32]);
        Replica::new(ReplicaId(me), key, self.handle(), KvStore::new())
    }

    fn view_changer(&self, me: u32) -> ViewChanger {
        ViewChanger::new(ReplicaId(me), self.handle(), Arc::new(KeyPair::from_seed([me as u8 + 1; 32])))
    }
}

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

/// Brings backup `me` to prepared at `(0, seq)` for `batch`: pre-prepare plus prepares
/// from the other backups.
fn prepare_slot(f: &Fixture, backup: &mut Backup, me: u32, seq: u64, batch: &Arc<Batch>) -> Vec<BackupOutput> {
    let mut out = Vec::new();
    out.extend(
        backup.handle(BackupInput::PrePrepare(f.pre_prepare(0, seq, batch.digest()), batch.clone()), Instant(0)),
    );
    for from in [1, 2, 3].into_iter().filter(|r| *r != me) {
        out.extend(backup.handle(BackupInput::Prepare(f.prepare(from, 0, seq, batch.digest())), Instant(0)));
    }
    out
}

// ---------------------------------------------------------------- N1: pre-prepare

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

// ---------------------------------------------------------------- N4–N6

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

// ---------------------------------------------------------------- C4, C5

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

// ---------------------------------------------------------------- C1, C3: checkpoints

/// C3: 2f+1 matching CHECKPOINTs from distinct replicas make a checkpoint stable; 2f do
/// not, nor do mismatching digests.
#[test]
fn c3_checkpoint_is_stable_with_2f_plus_1_matching_messages() {
    let f = fixture();
    let mut collector = CheckpointCollector::new(f.handle());
    let (good, bad) = (Digest::of(b"state"), Digest::of(b"forged"));
    assert_eq!(collector.on_checkpoint(f.checkpoint(0, 4, good)), Ok(None));
    assert_eq!(collector.on_checkpoint(f.checkpoint(1, 4, bad)), Ok(None));
    assert_eq!(collector.on_checkpoint(f.checkpoint(2, 4, good)), Ok(None));
    assert_eq!(collector.on_checkpoint(f.checkpoint(2, 4, good)), Ok(None), "duplicate");
    let stable = collector.on_checkpoint(f.checkpoint(3, 4, good)).unwrap().expect("stable");
    assert_eq!((stable.seq, stable.state_digest, stable.proof.len()), (SeqNum(4), good, 3));
    assert_eq!(collector.pending_len(), 0, "C4: messages at the stable checkpoint are dropped");
    assert!(collector.on_checkpoint(f.checkpoint(1, 4, good)).is_err(), "at the stable one");
}

/// C1: checkpoints only at multiples of K; a member cannot open unbounded checkpoints.
#[test]
fn c1_checkpoints_only_at_multiples_of_k_and_bounded_per_member() {
    let f = fixture();
    let mut collector = CheckpointCollector::new(f.handle());
    assert!(collector.on_checkpoint(f.checkpoint(1, 5, Digest::of(b"x"))).is_err());
    for seq in (4..=400).step_by(4) {
        let _ = collector.on_checkpoint(f.checkpoint(1, seq, Digest::of(b"x")));
    }
    // L/K + 2 = 4 open checkpoints at most for one member.
    assert!(collector.pending_len() <= 4, "{}", collector.pending_len());
}

/// What a replica hands its checkpoint collector, run as a role apart.
fn handed_to_collector(actions: &[Action]) -> Vec<CollectorInput> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::ToCheckpoints(input) => Some(input.clone()),
            _ => None,
        })
        .collect()
}

/// C3 and C4 across the hop between roles: a replica whose checkpoint collector runs
/// apart hands it every CHECKPOINT (its own included) and moves its watermarks only on the
/// collector's answer; an answer overtaken by a newer stable checkpoint is ignored, since
/// the low watermark only moves up.
#[test]
fn c3_c4_a_collector_run_apart_decides_stability_and_a_late_answer_moves_nothing_back() {
    let f = fixture();
    let mut replica = f.bare_replica(1);
    let mut collector = CheckpointCollector::new(f.handle());
    let mut handed = Vec::new();
    for seq in 1..=8 {
        handed.extend(handed_to_collector(&commit_at(&f, &mut replica, seq, &f.batch(&[seq]))));
    }
    let own: Vec<(SeqNum, Digest)> = handed
        .iter()
        .map(|input| match input {
            CollectorInput::Checkpoint(c) if c.replica == ReplicaId(1) => (c.seq, c.state_digest),
            other => panic!("only its own checkpoints so far: {other:?}"),
        })
        .collect();
    assert_eq!(own.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![SeqNum(4), SeqNum(8)], "C1");
    for (seq, digest) in &own {
        for peer in [0, 2] {
            let message = VerifiedMessage::Checkpoint(f.checkpoint(peer, seq.0, *digest));
            let actions = replica.handle(Input::Message(message), Instant(0));
            assert!(!actions.iter().any(|a| matches!(a, Action::Event(ReplicaEvent::Stable { .. }))));
            handed.extend(handed_to_collector(&actions));
        }
    }
    assert_eq!(handed.len(), 6, "every CHECKPOINT goes to the collector");
    assert_eq!(replica.stable(), SeqNum(0), "only the collector's answer makes a checkpoint stable");
    let answers: Vec<CollectorOutput> =
        handed.into_iter().flat_map(|input| collector.handle(input, Instant(0))).collect();
    let stable_at: Vec<SeqNum> = answers
        .iter()
        .map(|answer| match answer {
            CollectorOutput::Stable(stable) => stable.seq,
            CollectorOutput::Refused(reason) => panic!("refused: {reason}"),
        })
        .collect();
    assert_eq!(stable_at, vec![SeqNum(4), SeqNum(8)]);
    let (first, newest) = (answers[0].clone(), answers[1].clone());
    let actions = replica.handle(Input::Checkpoints(newest), Instant(0));
    assert!(actions.iter().any(|a| matches!(a, Action::Event(ReplicaEvent::Stable { seq: SeqNum(8), .. }))));
    assert_eq!(replica.stable(), SeqNum(8), "C4");
    let actions = replica.handle(Input::Checkpoints(first), Instant(0));
    assert_eq!(replica.stable(), SeqNum(8), "the low watermark never moves down");
    assert!(!actions.iter().any(|a| matches!(a, Action::Event(ReplicaEvent::Stable { .. }) | Action::Persist(_))));
}

// ---------------------------------------------------------------- P2, P3, R4: primary

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

// ---------------------------------------------------------------- replica: E1, E2, R2, R3

fn executed(actions: &[Action]) -> Vec<SeqNum> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Event(ReplicaEvent::Executed { seq, .. }) => Some(*seq),
            _ => None,
        })
        .collect()
}

/// Feeds a replica everything needed to commit `batch` at `seq` (it is a backup, r1).
fn commit_at(
    f: &Fixture,
    replica: &mut impl Role<Input = Input, Output = Action>,
    seq: u64,
    batch: &Arc<Batch>,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let d = batch.digest();
    let inputs = vec![
        VerifiedMessage::PrePrepare(f.pre_prepare(0, seq, d), batch.clone()),
        VerifiedMessage::Prepare(f.prepare(2, 0, seq, d)),
        VerifiedMessage::Commit(f.commit(2, 0, seq, d)),
        VerifiedMessage::Commit(f.commit(3, 0, seq, d)),
    ];
    for input in inputs {
        actions.extend(replica.handle(Input::Message(input), Instant(0)));
    }
    actions
}

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

/// Whether a status tick made the replica multicast STATUS (report itself stuck).
fn sent_status(actions: &[Action]) -> bool {
    actions.iter().any(|a| matches!(a, Action::Broadcast { message: VerifiedMessage::Status(_) }))
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

// ---------------------------------------------------------------- client: CL2, CL3, CX1

fn client(f: &Fixture) -> Client {
    Client::new(KeyPair::from_seed([200; 32]), f.handle(), Timestamp(1))
}

/// Issues `operation`: its timestamp and the actions after [`ClientAction::Issued`].
fn invoke(c: &mut Client, operation: Vec<u8>, read_only: bool, now: Instant) -> (Timestamp, Vec<ClientAction>) {
    let mut actions = c.handle(ClientInput::Invoke { operation, read_only }, now);
    match actions.first() {
        Some(ClientAction::Issued { timestamp }) => {
            let timestamp = *timestamp;
            actions.remove(0);
            (timestamp, actions)
        }
        _ => panic!("not issued: {actions:?}"),
    }
}

fn completed(actions: &[ClientAction]) -> Vec<(Timestamp, Vec<u8>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            ClientAction::Completed { timestamp, result } => Some((*timestamp, result.clone())),
            _ => None,
        })
        .collect()
}

/// CL1: a request goes to the primary of the client's view.
#[test]
fn cl1_a_request_goes_to_the_primary() {
    let f = fixture();
    let mut c = client(&f);
    let (_, actions) = invoke(&mut c, put("a", "1"), false, Instant(0));
    assert!(matches!(actions[0], ClientAction::Send { to: ReplicaId(0), .. }), "{actions:?}");
}

/// CL2: the client accepts after f+1 matching replies from distinct replicas, not before;
/// a replica's second reply does not count, nor does a different result.
#[test]
fn cl2_accepts_after_f_plus_1_matching_replies() {
    let f = fixture();
    let mut c = client(&f);
    let (t, _) = invoke(&mut c, put("a", "1"), false, Instant(0));
    assert!(completed(&c.handle(ClientInput::Reply(f.reply(1, t, b"ok", false)), Instant(1))).is_empty());
    assert!(
        completed(&c.handle(ClientInput::Reply(f.reply(1, t, b"ok", false)), Instant(1))).is_empty(),
        "same replica twice"
    );
    assert!(
        completed(&c.handle(ClientInput::Reply(f.reply(2, t, b"forged", false)), Instant(1))).is_empty(),
        "different result"
    );
    let done = completed(&c.handle(ClientInput::Reply(f.reply(3, t, b"ok", false)), Instant(1)));
    assert_eq!(done, vec![(t, b"ok".to_vec())]);
    assert_eq!(c.outstanding(), 0);
}

/// CL3: when the timer fires first, the client broadcasts the request to all replicas.
#[test]
fn cl3_on_timeout_the_client_broadcasts() {
    let f = fixture();
    let mut c = client(&f);
    let (_, actions) = invoke(&mut c, put("a", "1"), false, Instant(0));
    let Some(ClientAction::SetTimer { at }) = actions.iter().find(|a| matches!(a, ClientAction::SetTimer { .. }))
    else {
        panic!("{actions:?}")
    };
    let retry = c.handle(ClientInput::Timer, *at);
    assert!(retry.iter().any(|a| matches!(a, ClientAction::Broadcast { .. })), "{retry:?}");
    assert!(c.handle(ClientInput::Timer, *at).iter().all(|a| !matches!(a, ClientAction::Broadcast { .. })), "backoff");
}

/// CX1: at most W requests outstanding; the next is refused with a typed error.
#[test]
fn cx1_outstanding_requests_are_bounded_by_the_window() {
    let params = ProtocolParams { client_window: 2, ..params() };
    let f = fixture_with(4, params);
    let mut c = client(&f);
    invoke(&mut c, put("a", "1"), false, Instant(0));
    invoke(&mut c, put("a", "2"), false, Instant(0));
    let rejected = c.handle(ClientInput::Invoke { operation: put("a", "3"), read_only: false }, Instant(0));
    assert!(
        matches!(rejected.as_slice(), [ClientAction::Rejected(ClientError::WindowFull { outstanding: 2, limit: 2 })]),
        "{rejected:?}"
    );
}

/// Read-only optimisation: needs 2f+1 matching read-only replies; when they cannot match,
/// the client falls back to an ordered request.
#[test]
fn read_only_needs_2f_plus_1_and_falls_back_to_ordered() {
    let f = fixture();
    let mut c = client(&f);
    let (t, _) = invoke(&mut c, put("a", "1"), true, Instant(0));
    c.handle(ClientInput::Reply(f.reply(0, t, b"x", true)), Instant(1));
    assert!(
        completed(&c.handle(ClientInput::Reply(f.reply(1, t, b"x", true)), Instant(1))).is_empty(),
        "f+1 is not enough"
    );
    assert_eq!(completed(&c.handle(ClientInput::Reply(f.reply(2, t, b"x", true)), Instant(1))).len(), 1);

    let (t, _) = invoke(&mut c, put("a", "1"), true, Instant(0));
    c.handle(ClientInput::Reply(f.reply(0, t, b"x", true)), Instant(1));
    c.handle(ClientInput::Reply(f.reply(1, t, b"y", true)), Instant(1));
    let fallback = c.handle(ClientInput::Reply(f.reply(2, t, b"z", true)), Instant(1));
    assert!(
        fallback.iter().any(|a| matches!(a, ClientAction::Broadcast { request } if !request.read_only)),
        "{fallback:?}"
    );
}

// ---------------------------------------------------------------- view change (§4)

impl Fixture {
    fn signed<T: Scoped>(&self, from: u32, payload: T) -> Signed<T> {
        self.sign(payload, &self.keys[from as usize]).into_signed()
    }

    /// A prepared certificate (M6): the pre-prepare of `primary(view)` and prepares from
    /// the first `2f` other replicas.
    fn certificate(&self, view: u64, seq: u64, digest: Digest) -> PreparedCertificate {
        let primary = self.config.primary(View(view)).0;
        let voters = (0..self.config.n() as u32).filter(|r| *r != primary).take(2 * self.config.f());
        PreparedCertificate {
            pre_prepare: self.pre_prepare(view, seq, digest).into_signed(),
            prepares: voters.map(|r| self.prepare(r, view, seq, digest).into_signed()).collect(),
        }
    }

    /// A checkpoint proof: `2f + 1` CHECKPOINTs for `(seq, digest)`.
    fn proof(&self, seq: u64, digest: Digest) -> Vec<Signed<Checkpoint>> {
        (0..self.config.quorum() as u32).map(|r| self.checkpoint(r, seq, digest).into_signed()).collect()
    }

    fn view_change(&self, from: u32, view: u64, stable: u64, prepared: Vec<PreparedCertificate>) -> Signed<ViewChange> {
        let checkpoint_proof = if stable == 0 { Vec::new() } else { self.proof(stable, Digest::of(b"state")) };
        let payload = ViewChange {
            view: View(view),
            stable: SeqNum(stable),
            checkpoint_proof,
            prepared,
            replica: ReplicaId(from),
        };
        self.signed(from, payload)
    }

    fn verified_view_change(&self, signed: Signed<ViewChange>) -> Arc<VerifiedViewChange> {
        match verify_message(Message::ViewChange(signed), &self.config) {
            Ok(VerifiedMessage::ViewChange(vc)) => vc,
            other => panic!("expected a valid view-change: {other:?}"),
        }
    }

    /// A NEW-VIEW for `view` signed by `signer` with `O` = `entries`.
    fn new_view(&self, signer: u32, view: u64, vcs: Vec<Signed<ViewChange>>, entries: &[(u64, Digest)]) -> Message {
        let pre_prepares = entries
            .iter()
            .map(|(seq, d)| self.signed(signer, PrePrepare { view: View(view), seq: SeqNum(*seq), digest: *d }))
            .collect();
        Message::NewView(self.signed(signer, NewView { view: View(view), view_changes: vcs, pre_prepares }))
    }

    /// The NEW-VIEW a correct `primary(view)` sends for these view-changes.
    fn correct_new_view(&self, view: u64, vcs: Vec<Signed<ViewChange>>) -> Message {
        let verified: Vec<VerifiedViewChange> =
            vcs.iter().map(|vc| self.verified_view_change(vc.clone()).as_ref().clone()).collect();
        let order = compute_order(&verified, &self.config).unwrap();
        let entries: Vec<(u64, Digest)> = order.entries.iter().map(|(s, d)| (s.0, *d)).collect();
        self.new_view(self.config.primary(View(view)).0, view, vcs, &entries)
    }
}

fn deliver(replica: &mut impl Role<Input = Input, Output = Action>, message: VerifiedMessage, at: u64) -> Vec<Action> {
    replica.handle(Input::Message(message), Instant(at))
}

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

fn refused_certificate(f: &Fixture, message: Message) -> bool {
    matches!(verify_message(message, &f.config), Err(Refusal::BadCertificate { .. }))
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
            StoredRecord::Committed { seq, view, commands, commits } => {
                assert!(commits.len() >= f.config.quorum(), "the commit certificate is recorded: {commits:?}");
                let mut forged = commands.clone();
                let bulwark_framework::messages::WireCommand::Request(request) = &mut forged[0] else {
                    panic!("the batch holds a request: {forged:?}");
                };
                request.payload.operation = put("k", "forged");
                let record = StoredRecord::Committed { seq, view, commands: forged, commits: commits.clone() };
                assert!(record.verify(&f.config).is_err());
                let mut twice = commits.clone();
                twice.push(commits[0].clone());
                let record = StoredRecord::Committed { seq, view, commands: commands.clone(), commits: twice };
                assert!(record.verify(&f.config).is_err(), "a replica named twice in a certificate");
                let mut bad_signature = commits.clone();
                bad_signature[0].payload.digest = Digest::of(b"another batch");
                let record = StoredRecord::Committed { seq, view, commands, commits: bad_signature };
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
