//! The agreement role: pre-prepare acceptance, prepare and commit (PBFT.md §2, N1–N6).
//!
//! Every replica runs it for every sequence number inside its watermark window
//! `(h, h + L]`; in the primary it holds the primary's own pre-prepares (P4: the primary
//! sends no PREPARE, its pre-prepare is its vote). The log is a map from sequence number
//! to [`Slot`], bounded by the window; messages for the next window are buffered per
//! sender with a bound (C5); anything further is refused.

use crate::ids::{Instant, ReplicaId, SeqNum, View};
use crate::membership::{MemberMap, Membership, MembershipHandle};
use crate::messages::{
    Batch, Commit, MessageKind, PrePrepare, Prepare, SlotProgress, Status, VerifiedMessage, VerifiedPrepared,
};
use crate::quorum::{VoteOutcome, VoteSet};
use crate::roles::refusal::RoleRefusal;
use crate::roles::view_change::null_digest;
use crate::roles::Role;
use bulwark_crypto::{Digest, KeyPair, Verified};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// Where a sequence number falls relative to the watermarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowPosition {
    /// `s ≤ h`: already garbage-collected.
    Below,
    /// `h < s ≤ h + L`.
    Inside,
    /// `h + L < s ≤ h + 2L`: buffered until `h` advances (C5).
    Ahead,
    /// Further still: refused.
    Beyond,
}

/// Quorum thresholds. Only the correct rule exists outside negative-control tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QuorumRule {
    Correct,
    /// Negative control: prepared with `f` prepares, committed with `f + 1` commits.
    /// Switched on only by tests that prove the safety checker can fail.
    #[cfg_attr(not(feature = "negative-controls"), allow(dead_code))]
    Weakened,
}

/// The agreement state of one sequence number in the current view.
#[derive(Debug)]
pub struct Slot {
    pre_prepare: Option<Verified<PrePrepare>>,
    /// The batch of the pre-prepare. Missing only for a pre-prepare taken from a NEW-VIEW
    /// whose batch this replica never received; it is fetched by digest (VC16).
    batch: Option<Arc<Batch>>,
    prepares: VoteSet<Prepare>,
    commits: VoteSet<Commit>,
    prepared: bool,
    committed: bool,
    own_commit: Option<Verified<Commit>>,
    /// The digest of a commit certificate (`2f + 1` COMMITs of this view) that outvoted
    /// the pre-prepare this slot had logged. The certificate proves its batch committed
    /// (f + 1 correct replicas prepared it, as ST6 accepts in state transfer), so the
    /// logged pre-prepare came from an equivocating primary: it is dropped and the
    /// certified batch fetched by digest. Without this a backup that took the "wrong"
    /// pre-prepare of an equivocating primary waits forever for COMMITs that will never
    /// match it (`tests/twins.rs` drives primaries that equivocate this way).
    certified: Option<(View, Digest)>,
}

impl Slot {
    fn new(membership: &Membership) -> Self {
        Slot {
            pre_prepare: None,
            batch: None,
            prepares: VoteSet::new(membership),
            commits: VoteSet::new(membership),
            prepared: false,
            committed: false,
            own_commit: None,
            certified: None,
        }
    }

    pub fn digest(&self) -> Option<Digest> {
        match self.certified {
            Some((_, digest)) => Some(digest),
            None => self.pre_prepare.as_ref().map(|pp| pp.digest),
        }
    }

    /// The view the slot's digest belongs to.
    fn view(&self) -> Option<View> {
        match self.certified {
            Some((view, _)) => Some(view),
            None => self.pre_prepare.as_ref().map(|pp| pp.view),
        }
    }

    pub fn is_committed(&self) -> bool {
        self.committed
    }
}

/// A prepared certificate this replica holds, with its batch: the proof it reports in a
/// VIEW-CHANGE (VC9), kept across views until a stable checkpoint covers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedProof {
    pub certificate: VerifiedPrepared,
    pub batch: Arc<Batch>,
}

/// The agreement role.
#[derive(Debug)]
pub struct Backup {
    me: ReplicaId,
    membership: MembershipHandle,
    /// Signs this replica's PREPAREs and COMMITs.
    key: Arc<KeyPair>,
    view: View,
    low: SeqNum,
    slots: BTreeMap<SeqNum, Slot>,
    /// For each sequence number above `h` that prepared here: the certificate from the
    /// highest view in which it prepared (VC9). Bounded by the window.
    prepared: BTreeMap<SeqNum, PreparedProof>,
    future: MemberMap<VecDeque<VerifiedMessage>>,
    rule: QuorumRule,
    /// Set while the replica is view-changing: nothing more is signed in this view (VC4a),
    /// whatever arrives (a fetched batch, a replayed vote). A frozen backup still logs
    /// pre-prepares and COMMITs of its view and takes a slot as committed on a commit
    /// certificate (`2f + 1` COMMITs, as ST6 accepts a batch): that needs no signature of
    /// its own, and lets a replica whose view change nobody joined keep executing what the
    /// others commit instead of falling out of the cluster until the next view change.
    frozen: bool,
    /// Votes this replica signed before a restart, from its durable records: it never signs
    /// another digest for the same `(kind, view, seq)`.
    signed_before: BTreeMap<(MessageKind, View, SeqNum), Digest>,
    /// The COMMITs among `signed_before`, signed again at the restart (the same statement,
    /// and ed25519 signing is deterministic, so the same bytes) to be retransmitted: the
    /// executed slots themselves are not restored, and a peer that lags may need exactly
    /// this replica's vote to complete its commit certificate (with a silent faulty
    /// replica, `2f + 1` COMMITs need every correct one).
    recorded_commits: BTreeMap<SeqNum, Verified<Commit>>,
    /// Commit certificates of batches executed before a restart, from the durable records:
    /// retransmitted whole to a peer that lacks the batch's commit.
    recorded_certificates: BTreeMap<SeqNum, Vec<Verified<Commit>>>,
    /// Sequence numbers of the current view whose equivocation proof was already passed on:
    /// forwarding it again at every copy would multiply the proof through the cluster.
    equivocations_reported: std::collections::BTreeSet<SeqNum>,
}

/// What the agreement role is told: the normal-case messages of the current view, batches
/// fetched by digest, and the replica's moves (a view change, a new view, a stable
/// checkpoint, an execution).
#[derive(Debug, Clone)]
pub enum BackupInput {
    /// N1: a pre-prepare of the current view's primary, with its batch (the replica's own
    /// proposal included: P4, it is the primary's vote).
    PrePrepare(Verified<PrePrepare>, Arc<Batch>),
    /// N4–N5.
    Prepare(Verified<Prepare>),
    /// N6.
    Commit(Verified<Commit>),
    /// A batch fetched by digest (VC16): logged for every pre-prepare that names it and
    /// lacks it; refused if none does.
    Batch(Arc<Batch>),
    /// VC4a: the replica sent a VIEW-CHANGE; nothing more is signed in the current view
    /// until [`BackupInput::EnterView`].
    Freeze,
    /// VC16(2), and VC13 for the new primary: enter `view` with the pre-prepares `O` of its
    /// NEW-VIEW.
    EnterView { view: View, pre_prepares: Vec<Verified<PrePrepare>> },
    /// C4 with C6: the checkpoint at `stable` became stable; the replica executed through
    /// `last_executed`.
    AdvanceLow { stable: SeqNum, last_executed: SeqNum },
    /// The replica executed through this sequence number: slots kept below the low
    /// watermark only to be executed can go.
    Executed(SeqNum),
}

/// What the agreement role asks for.
#[derive(Debug)]
pub enum BackupOutput {
    Broadcast(VerifiedMessage),
    Refused(RoleRefusal),
    /// C5: a message buffered for the next window that the window now holds, for the
    /// replica to handle again.
    Replay(VerifiedMessage),
    /// VC16: batches named by the new view's pre-prepares that this replica lacks, to fetch
    /// by digest.
    MissingBatches(Vec<Digest>),
    /// N3: the primary signed two pre-prepares for one `(v, s)` with different digests.
    /// Both travel here: they are the proof, and forwarding them lets every correct
    /// replica see it.
    PrimaryEquivocated(VerifiedMessage, VerifiedMessage),
    /// `seq` became prepared: the certificate to persist before the COMMIT goes out.
    Prepared(SeqNum, PreparedProof),
}

impl Backup {
    pub fn new(me: ReplicaId, membership: MembershipHandle, key: Arc<KeyPair>) -> Self {
        let members = membership.current();
        Backup {
            me,
            membership,
            key,
            view: View(0),
            low: SeqNum(0),
            slots: BTreeMap::new(),
            prepared: BTreeMap::new(),
            future: MemberMap::new(&members, |_| VecDeque::new()),
            rule: QuorumRule::Correct,
            frozen: false,
            signed_before: BTreeMap::new(),
            recorded_commits: BTreeMap::new(),
            recorded_certificates: BTreeMap::new(),
            equivocations_reported: Default::default(),
        }
    }

    #[cfg_attr(not(feature = "negative-controls"), allow(dead_code))]
    pub(crate) fn set_rule(&mut self, rule: QuorumRule) {
        self.rule = rule;
    }

    pub fn view(&self) -> View {
        self.view
    }

    /// After a restart: the votes signed before it and the prepared certificates held.
    pub fn restore(
        &mut self,
        votes: BTreeMap<(MessageKind, View, SeqNum), Digest>,
        prepared: BTreeMap<SeqNum, PreparedProof>,
        certificates: BTreeMap<SeqNum, Vec<Verified<Commit>>>,
    ) {
        let key = self.key.clone();
        self.recorded_certificates = certificates;
        let me = self.me;
        let mut recorded_commits = BTreeMap::new();
        for ((kind, view, seq), digest) in &votes {
            if *kind == MessageKind::Commit && *seq > self.low {
                // Ascending view order: the latest view's COMMIT for `seq` wins.
                recorded_commits.insert(
                    *seq,
                    self.membership.sign(Commit { view: *view, seq: *seq, digest: *digest, replica: me }, &key),
                );
            }
        }
        self.recorded_commits = recorded_commits;
        self.signed_before = votes;
        self.prepared = prepared;
    }

    /// Whether signing `kind` for `(view, seq, digest)` agrees with every vote signed before
    /// a restart.
    fn may_sign(&self, kind: MessageKind, view: View, seq: SeqNum, digest: Digest) -> bool {
        self.signed_before.get(&(kind, view, seq)).is_none_or(|signed| *signed == digest)
    }

    /// VC4a: the replica sent a VIEW-CHANGE; sign nothing more in the current view.
    /// [`Backup::enter_view`] thaws it.
    fn freeze(&mut self) {
        self.frozen = true;
    }

    /// The low watermark `h`.
    pub fn low(&self) -> SeqNum {
        self.low
    }

    /// The high watermark `h + L`.
    pub fn high(&self) -> SeqNum {
        SeqNum(self.low.0.saturating_add(self.membership.current().params.watermark_window))
    }

    pub fn position(&self, seq: SeqNum) -> WindowPosition {
        let window = self.membership.current().params.watermark_window;
        if seq <= self.low {
            WindowPosition::Below
        } else if seq.0 <= self.low.0.saturating_add(window) {
            WindowPosition::Inside
        } else if seq.0 <= self.low.0.saturating_add(2 * window) {
            WindowPosition::Ahead
        } else {
            WindowPosition::Beyond
        }
    }

    fn prepare_threshold(&self) -> usize {
        match self.rule {
            // With the pre-prepare, a quorum (2f + 1 when n = 3f + 1).
            QuorumRule::Correct => self.membership.current().quorum() - 1,
            QuorumRule::Weakened => self.membership.current().f(),
        }
    }

    fn commit_threshold(&self) -> usize {
        match self.rule {
            QuorumRule::Correct => self.membership.current().quorum(),
            QuorumRule::Weakened => self.membership.current().f() + 1,
        }
    }

    /// Sorts a normal-case message by its sequence number: `true` to process it now,
    /// `false` if it was buffered or refused (the reason is pushed to `out`).
    fn admit(
        &mut self,
        seq: SeqNum,
        sender: ReplicaId,
        message: impl FnOnce() -> VerifiedMessage,
        out: &mut Vec<BackupOutput>,
    ) -> bool {
        match self.position(seq) {
            WindowPosition::Inside => true,
            WindowPosition::Below => {
                out.push(BackupOutput::Refused(RoleRefusal::BelowLowWatermark));
                false
            }
            WindowPosition::Ahead => {
                let limit = self.membership.current().params.future_messages_per_sender_max;
                let Some(queue) = self.future.get_mut(sender) else {
                    out.push(BackupOutput::Refused(RoleRefusal::FutureBufferFull));
                    return false;
                };
                if queue.len() < limit {
                    queue.push_back(message());
                } else {
                    out.push(BackupOutput::Refused(RoleRefusal::FutureBufferFull));
                }
                false
            }
            WindowPosition::Beyond => {
                out.push(BackupOutput::Refused(RoleRefusal::BeyondHighWatermark));
                false
            }
        }
    }

    fn slot_mut(&mut self, seq: SeqNum) -> &mut Slot {
        let membership = &self.membership;
        self.slots.entry(seq).or_insert_with(|| Slot::new(&membership.current()))
    }

    /// N1: accept a pre-prepare from the primary of the current view.
    ///
    /// N1.a (signature by `primary(v)`) and N1.e (batch well formed and matching `d`) are
    /// established by [`crate::verify::verify_message`]; this checks N1.b (view), N1.c
    /// (watermarks) and N1.d (no other digest for `(v, s)`), then multicasts PREPARE.
    fn on_pre_prepare(
        &mut self,
        pre_prepare: Verified<PrePrepare>,
        batch: Arc<Batch>,
        now: Instant,
        key: &KeyPair,
        out: &mut Vec<BackupOutput>,
    ) {
        let primary = self.membership.current().primary(pre_prepare.view);
        if pre_prepare.view != self.view {
            out.push(BackupOutput::Refused(RoleRefusal::PrePrepareForAnotherView));
            return;
        }
        let message = || VerifiedMessage::PrePrepare(pre_prepare.clone(), batch.clone());
        if !self.admit(pre_prepare.seq, primary, message, out) {
            return;
        }
        let seq = pre_prepare.seq;
        let digest = pre_prepare.digest;
        let view = self.view;
        let me = self.me;
        let i_am_primary = primary == me;
        let frozen = self.frozen;
        let slot = self.slot_mut(seq);
        match slot.digest() {
            Some(existing) if existing == digest => {
                // A certified slot learns the pre-prepare it lacked (to retransmit it).
                slot.pre_prepare.get_or_insert(pre_prepare);
                if slot.batch.is_none() {
                    slot.batch = Some(batch);
                    self.check_progress(seq, key, out);
                }
                return;
            }
            Some(_) => {
                // N3: two signed pre-prepares for one (v, s) prove the primary faulty. The
                // second is refused (N1.d); the replica starts a view change.
                out.push(BackupOutput::Refused(RoleRefusal::ConflictingPrePrepare));
                let first_report = self.equivocations_reported.insert(seq);
                let slot = self.slot_mut(seq);
                if let (true, Some(first), Some(first_batch)) =
                    (first_report, slot.pre_prepare.clone(), slot.batch.clone())
                {
                    out.push(BackupOutput::PrimaryEquivocated(
                        VerifiedMessage::PrePrepare(first, first_batch),
                        VerifiedMessage::PrePrepare(pre_prepare, batch),
                    ));
                }
                return;
            }
            None => {}
        }
        let may_sign = self.may_sign(MessageKind::Prepare, view, seq, digest);
        let time_refusal = if i_am_primary { None } else { self.batch_time_refusal(seq, &batch, now) };
        let scope = self.membership.scope();
        let slot = self.slot_mut(seq);
        slot.pre_prepare = Some(pre_prepare);
        slot.batch = Some(batch);
        if !may_sign {
            out.push(BackupOutput::Refused(RoleRefusal::ConflictsWithVoteBeforeRestart));
            return;
        }
        if let Some(refusal) = time_refusal {
            // Logged, not prepared: the batch still commits if 2f others vouch for its time,
            // and this replica then executes it like any other.
            out.push(BackupOutput::Refused(refusal));
            self.check_progress(seq, key, out);
            return;
        }
        if !i_am_primary && !frozen {
            let prepare = scope.sign(Prepare { view, seq, digest, replica: me }, key);
            slot.prepares.add(me, digest, prepare.clone());
            out.push(BackupOutput::Broadcast(VerifiedMessage::Prepare(prepare)));
        }
        self.check_progress(seq, key, out);
    }

    /// N1.f: why this backup will not vouch (PREPARE) for the time `batch` proposes for
    /// `seq`, if it will not: the time is more than `clock_skew_max_us` from its clock, or
    /// out of order with a batch of this view it logged at a neighbouring number.
    fn batch_time_refusal(&self, seq: SeqNum, batch: &Batch, now: Instant) -> Option<RoleRefusal> {
        let (time, clock) = (batch.time_us(), now.as_micros());
        let skew = self.membership.current().params.clock_skew_max_us;
        if time > clock.saturating_add(skew) || time < clock.saturating_sub(skew) {
            return Some(RoleRefusal::BatchTimeOutsideClockSkew);
        }
        let in_view = |slot: &&Slot| slot.pre_prepare.as_ref().is_some_and(|pp| pp.view == self.view);
        let time_of = |slot: &Slot| slot.batch.as_ref().map(|batch| batch.time_us());
        let before = self.slots.range(..seq).rev().map(|(_, slot)| slot).find(in_view).and_then(time_of);
        let after = self.slots.range(seq.next()..).map(|(_, slot)| slot).find(in_view).and_then(time_of);
        if before.is_some_and(|before| time < before) || after.is_some_and(|after| time > after) {
            return Some(RoleRefusal::BatchTimeOutOfOrder);
        }
        None
    }

    /// The latest time of a batch in the log: a new primary proposes no earlier (N1.f).
    pub fn latest_batch_time_us(&self) -> u64 {
        self.slots.values().filter_map(|slot| slot.batch.as_ref()).map(|batch| batch.time_us()).max().unwrap_or(0)
    }

    /// N4: log a PREPARE of the current view inside the window. A prepare from the
    /// primary is ignored. Votes may arrive before the pre-prepare (PF8).
    fn on_prepare(&mut self, prepare: Verified<Prepare>, key: &KeyPair, out: &mut Vec<BackupOutput>) {
        if prepare.view != self.view {
            out.push(BackupOutput::Refused(RoleRefusal::PrepareForAnotherView));
            return;
        }
        if prepare.replica == self.membership.current().primary(prepare.view) {
            out.push(BackupOutput::Refused(RoleRefusal::PrepareFromPrimary));
            return;
        }
        let message = || VerifiedMessage::Prepare(prepare.clone());
        if !self.admit(prepare.seq, prepare.replica, message, out) {
            return;
        }
        let (seq, replica, digest) = (prepare.seq, prepare.replica, prepare.digest);
        let (threshold, primary) = (self.prepare_threshold(), self.membership.current().primary(self.view));
        let outcome = self.slot_mut(seq).prepares.add_completing(replica, digest, prepare, threshold, Some(primary));
        if outcome == VoteOutcome::Conflicting {
            out.push(BackupOutput::Refused(RoleRefusal::ConflictingPrepare));
        }
        self.check_progress(seq, key, out);
    }

    /// N4: log a COMMIT of the current view inside the window.
    fn on_commit(&mut self, commit: Verified<Commit>, key: &KeyPair, out: &mut Vec<BackupOutput>) {
        if commit.view != self.view {
            out.push(BackupOutput::Refused(RoleRefusal::CommitForAnotherView));
            return;
        }
        let message = || VerifiedMessage::Commit(commit.clone());
        if !self.admit(commit.seq, commit.replica, message, out) {
            return;
        }
        let (seq, replica, digest) = (commit.seq, commit.replica, commit.digest);
        let threshold = self.commit_threshold();
        if self.slot_mut(seq).commits.add_completing(replica, digest, commit, threshold, None)
            == VoteOutcome::Conflicting
        {
            out.push(BackupOutput::Refused(RoleRefusal::ConflictingCommit));
        }
        self.check_progress(seq, key, out);
    }

    /// N5 and N6: become prepared (and multicast COMMIT once), then committed-local.
    fn check_progress(&mut self, seq: SeqNum, key: &KeyPair, out: &mut Vec<BackupOutput>) {
        let frozen = self.frozen;
        let Some(digest) = self.slots.get(&seq).and_then(Slot::digest) else { return };
        let may_commit = self.may_sign(MessageKind::Commit, self.view, seq, digest);
        let prepare_threshold = self.prepare_threshold();
        let commit_threshold = self.commit_threshold();
        let primary = self.membership.current().primary(self.view);
        let (view, me) = (self.view, self.me);
        let Some(slot) = self.slots.get_mut(&seq) else {
            return;
        };
        if !slot.committed && !slot.prepared && slot.certified.is_none() {
            // A commit certificate for another digest outvotes the logged pre-prepare (see
            // `Slot::certified`). A replica prepared here cannot meet one: two digests
            // prepared in one view would need a correct replica to prepare both.
            if let Some(certified) = slot.commits.digest_with(commit_threshold).filter(|d| *d != digest) {
                slot.pre_prepare = None;
                slot.batch = None;
                slot.certified = Some((view, certified));
                out.push(BackupOutput::Refused(RoleRefusal::OutvotedPrePrepare));
                if let Some(batch) = self.batch_with(certified) {
                    self.slots.get_mut(&seq).expect("just updated").batch = Some(batch);
                }
                self.check_progress(seq, key, out);
                return;
            }
        }
        // N5: prepared needs the batch logged too.
        let Some(batch) = slot.batch.clone() else { return };
        let logged_pre_prepare = slot.pre_prepare.is_some();
        if !frozen
            && may_commit
            && logged_pre_prepare
            && !slot.prepared
            && slot.prepares.count(digest, Some(primary)) >= prepare_threshold
        {
            slot.prepared = true;
            let certificate = VerifiedPrepared {
                pre_prepare: slot.pre_prepare.clone().expect("digest implies a pre-prepare"),
                prepares: slot
                    .prepares
                    .certificate(digest)
                    .into_iter()
                    .filter(|p| p.replica != primary)
                    .take(prepare_threshold)
                    .cloned()
                    .collect(),
            };
            let proof = PreparedProof { certificate, batch };
            out.push(BackupOutput::Prepared(seq, proof.clone()));
            self.prepared.insert(seq, proof);
            let commit = self.membership.sign(Commit { view, seq, digest, replica: me }, key);
            slot.commits.add(me, digest, commit.clone());
            slot.own_commit = Some(commit.clone());
            out.push(BackupOutput::Broadcast(VerifiedMessage::Commit(commit)));
        }
        // N6 when prepared here; otherwise `2f + 1` COMMITs are a commit certificate, which
        // proves the batch committed as ST6 accepts it in state transfer (f + 1 correct
        // replicas prepared it, so every later view keeps it). A replica that missed the
        // prepares (a frozen one, VC4a, or one whose peer lost its slot in a restart and
        // can only resend COMMITs) still executes; it signs nothing without being prepared.
        if !slot.committed && slot.commits.count(digest, None) >= commit_threshold {
            slot.committed = true;
        }
    }

    /// The `2f + 1` (or more) COMMITs that made `seq` committed here, if it is.
    pub fn commit_certificate(&self, seq: SeqNum) -> Vec<Verified<Commit>> {
        let Some(slot) = self.slots.get(&seq).filter(|slot| slot.committed) else {
            return Vec::new();
        };
        let (Some(view), Some(digest)) = (slot.view(), slot.digest()) else {
            return Vec::new();
        };
        slot.commits.certificate(digest).into_iter().filter(|c| c.view == view).cloned().collect()
    }

    /// The batch at `seq` if it is committed-local (E1 asks for it in order).
    pub fn committed_batch(&self, seq: SeqNum) -> Option<(Arc<Batch>, View)> {
        let slot = self.slots.get(&seq)?;
        if !slot.committed {
            return None;
        }
        let batch = slot.batch.clone()?;
        slot.view().map(|view| (batch, view))
    }

    pub fn is_committed(&self, seq: SeqNum) -> bool {
        self.slots.get(&seq).is_some_and(|s| s.committed)
    }

    /// C4 (with C6): a checkpoint at `stable` became stable. Discard the log at and below
    /// it, except committed batches the replica can execute next (C6). Returns the
    /// buffered messages to re-examine (C5).
    fn advance_low(&mut self, stable: SeqNum, last_executed: SeqNum) -> Vec<VerifiedMessage> {
        if stable <= self.low {
            return Vec::new();
        }
        self.low = stable;
        // Keep only the committed run that starts right after the last executed batch: the
        // replica executes it at once. Anything after a gap could only run once the gap is
        // filled, and below the stable checkpoint nobody will fill it; state transfer
        // replaces the whole range, so keeping it would only let the log grow while a
        // replica is behind.
        let mut executable_until = last_executed;
        while self.slots.get(&executable_until.next()).is_some_and(|s| s.committed) {
            executable_until = executable_until.next();
        }
        self.slots.retain(|seq, _| *seq > stable || (*seq > last_executed && *seq <= executable_until));
        self.prepared.retain(|seq, _| *seq > stable);
        self.recorded_commits.retain(|seq, _| *seq > stable);
        self.recorded_certificates.retain(|seq, _| *seq > stable);
        self.equivocations_reported.retain(|seq| *seq > stable);
        let mut replay = Vec::new();
        for queue in self.future.values_mut() {
            replay.extend(queue.drain(..));
        }
        replay
    }

    /// Drops executed slots that a later stable checkpoint will not need: called after
    /// executing, for slots kept by `advance_low` below the window.
    fn forget_executed_below_low(&mut self, last_executed: SeqNum) {
        let low = self.low;
        self.slots.retain(|seq, _| *seq > low || *seq > last_executed);
    }

    /// Progress of `seq`, for STATUS.
    pub fn progress(&self, seq: SeqNum) -> SlotProgress {
        match self.slots.get(&seq) {
            None => SlotProgress { has_pre_prepare: false, prepared: false, committed: false },
            Some(slot) => SlotProgress {
                has_pre_prepare: slot.pre_prepare.is_some(),
                prepared: slot.prepared,
                committed: slot.committed,
            },
        }
    }

    /// What a peer that sent `status` lacks and this replica can give: the pre-prepare
    /// (forwarded, it is signed by the primary), this replica's own PREPARE and COMMIT.
    /// Bounded by the window.
    pub fn retransmissions_for(&self, status: &Status) -> Vec<VerifiedMessage> {
        let mut messages = Vec::new();
        if status.view != self.view {
            return messages;
        }
        let first = status.first_slot.max(self.low.next());
        // Saturating: `first_slot` is the peer's word, and may be any number.
        let last =
            SeqNum(first.0.saturating_add(self.membership.current().params.watermark_window - 1)).min(self.high());
        if first > last {
            return messages;
        }
        for (seq, slot) in self.slots.range(first..=last) {
            let offset = (seq.0 - status.first_slot.0) as usize;
            let theirs = status.slots.get(offset).copied().unwrap_or(SlotProgress {
                has_pre_prepare: false,
                prepared: false,
                committed: false,
            });
            if theirs.committed {
                continue;
            }
            if let (Some(pp), Some(batch)) = (&slot.pre_prepare, &slot.batch) {
                // Committed here but not there: the peer may hold another pre-prepare for
                // this slot (an equivocating primary may have given it one), and
                // this one is what lets it see the equivocation (N3) and take part again.
                if !theirs.has_pre_prepare || slot.committed {
                    messages.push(VerifiedMessage::PrePrepare(pp.clone(), batch.clone()));
                }
            }
            if !theirs.prepared {
                if let Some(prepare) = slot.prepares.vote_of(self.me) {
                    messages.push(VerifiedMessage::Prepare(prepare.clone()));
                }
            }
            if slot.committed {
                // The whole certificate, not only this replica's vote: a peer may lack the
                // vote of a replica that has gone silent, and `2f + 1` COMMITs prove the
                // batch whoever forwards them.
                let certificate = self.commit_certificate(*seq);
                if !certificate.is_empty() {
                    messages.extend(certificate.into_iter().map(VerifiedMessage::Commit));
                    continue;
                }
            }
            if let Some(commit) = &slot.own_commit {
                messages.push(VerifiedMessage::Commit(commit.clone()));
            }
        }
        // Executed before a restart: no slot left, but the records hold the certificate (or
        // at least this replica's own COMMIT).
        let recorded: std::collections::BTreeSet<SeqNum> = self
            .recorded_certificates
            .range(first..=last)
            .map(|(seq, _)| *seq)
            .chain(self.recorded_commits.range(first..=last).map(|(seq, _)| *seq))
            .collect();
        for seq in recorded {
            let offset = (seq.0 - status.first_slot.0) as usize;
            let theirs_committed = status.slots.get(offset).is_some_and(|p| p.committed);
            if theirs_committed || self.slots.get(&seq).is_some_and(|slot| slot.own_commit.is_some() || slot.committed)
            {
                continue;
            }
            match self.recorded_certificates.get(&seq) {
                Some(certificate) if certificate.iter().all(|c| c.view == self.view) => {
                    messages.extend(certificate.iter().cloned().map(VerifiedMessage::Commit));
                }
                _ => {
                    if let Some(commit) = self.recorded_commits.get(&seq).filter(|c| c.view == self.view) {
                        messages.push(VerifiedMessage::Commit(commit.clone()));
                    }
                }
            }
        }
        messages
    }

    /// VC9: the prepared certificates above `stable` (at most `L` of them, one per sequence
    /// number, each from the highest view in which it prepared here).
    pub fn prepared_certificates(&self, stable: SeqNum) -> BTreeMap<SeqNum, VerifiedPrepared> {
        let last = SeqNum(stable.0 + self.membership.current().params.watermark_window);
        self.prepared.range(stable.next()..=last).map(|(seq, proof)| (*seq, proof.certificate.clone())).collect()
    }

    /// A batch this replica holds with digest `digest`, to answer a BATCH-REQ.
    pub fn batch_with(&self, digest: Digest) -> Option<Arc<Batch>> {
        self.slots
            .values()
            .filter(|slot| slot.digest() == Some(digest))
            .find_map(|slot| slot.batch.clone())
            .or_else(|| self.prepared.values().find(|p| p.batch.digest() == digest).map(|p| p.batch.clone()))
    }

    /// Digests named by pre-prepares in the log whose batch is missing (VC16).
    pub fn missing_batches(&self) -> Vec<Digest> {
        let mut digests: Vec<Digest> =
            self.slots.values().filter(|slot| slot.batch.is_none()).filter_map(Slot::digest).collect();
        digests.sort();
        digests.dedup();
        digests
    }

    /// A fetched batch: log it for every pre-prepare that names its digest and lacks it.
    /// Returns whether any pre-prepare needed it.
    fn supply_batch(&mut self, batch: Arc<Batch>, key: &KeyPair, out: &mut Vec<BackupOutput>) -> bool {
        let digest = batch.digest();
        let needing: Vec<SeqNum> = self
            .slots
            .iter()
            .filter(|(_, slot)| slot.batch.is_none() && slot.digest() == Some(digest))
            .map(|(seq, _)| *seq)
            .collect();
        for seq in &needing {
            self.slots.get_mut(seq).expect("listed above").batch = Some(batch.clone());
            self.check_progress(*seq, key, out);
        }
        !needing.is_empty()
    }

    /// VC16(2), and VC13 for the new primary: enter view `view` with the pre-prepares `O`
    /// of its NEW-VIEW. The log of the old view is dropped except committed slots at or
    /// below `h` kept to execute (C6); every pre-prepare of `O` above `h` is logged with its
    /// batch if this replica holds it (the null batch always), and a backup multicasts
    /// PREPARE for each. Returns the digests of batches it must fetch.
    fn enter_view(
        &mut self,
        view: View,
        pre_prepares: &[Verified<PrePrepare>],
        key: &KeyPair,
        out: &mut Vec<BackupOutput>,
    ) -> Vec<Digest> {
        let low = self.low;
        let mut known: BTreeMap<Digest, Arc<Batch>> = BTreeMap::new();
        for slot in self.slots.values() {
            if let (Some(digest), Some(batch)) = (slot.digest(), &slot.batch) {
                known.insert(digest, batch.clone());
            }
        }
        for proof in self.prepared.values() {
            known.insert(proof.batch.digest(), proof.batch.clone());
        }
        let null = null_digest();
        known.insert(null, Arc::new(Batch::null()));
        self.view = view;
        self.frozen = false;
        self.equivocations_reported.clear();
        self.slots.retain(|seq, slot| *seq <= low && slot.committed);
        for queue in self.future.values_mut() {
            queue.retain(|message| message.normal_case_view().is_none_or(|v| v >= view));
        }
        let i_am_primary = self.membership.current().primary(view) == self.me;
        let mut missing = Vec::new();
        for pre_prepare in pre_prepares.iter().filter(|pp| pp.seq > low && pp.view == view) {
            let (seq, digest) = (pre_prepare.seq, pre_prepare.digest);
            let batch = known.get(&digest).cloned();
            if batch.is_none() {
                missing.push(digest);
            }
            let me = self.me;
            let may_sign = self.may_sign(MessageKind::Prepare, view, seq, digest);
            let scope = self.membership.scope();
            let slot = self.slot_mut(seq);
            slot.pre_prepare = Some(pre_prepare.clone());
            slot.batch = batch;
            if !i_am_primary && may_sign {
                let prepare = scope.sign(Prepare { view, seq, digest, replica: me }, key);
                slot.prepares.add(me, digest, prepare.clone());
                out.push(BackupOutput::Broadcast(VerifiedMessage::Prepare(prepare)));
            }
            self.check_progress(seq, key, out);
        }
        missing.sort();
        missing.dedup();
        missing
    }

    /// The lowest sequence number at or below `last_executed` whose slot in the current
    /// view has its pre-prepare but is not committed: after a view change these run the
    /// three phases again (E3), and peers still need this replica's votes on them.
    pub fn first_rerun_pending(&self, last_executed: SeqNum) -> Option<SeqNum> {
        if last_executed <= self.low {
            return None;
        }
        self.slots
            .range(self.low.next()..=last_executed)
            .find(|(_, slot)| slot.pre_prepare.is_some() && !slot.committed)
            .map(|(seq, _)| *seq)
    }

    /// Highest sequence number with any state in the log.
    pub fn highest_logged(&self) -> SeqNum {
        self.slots.keys().next_back().copied().unwrap_or(self.low)
    }

    /// Entries in the log (bounded by the window plus committed-unexecuted slots).
    pub fn log_len(&self) -> usize {
        self.slots.len()
    }

    /// Messages buffered for the next window, all senders.
    pub fn future_len(&self) -> usize {
        self.future.values().map(VecDeque::len).sum()
    }
}

impl Role for Backup {
    type Input = BackupInput;
    type Output = BackupOutput;

    fn handle(&mut self, input: BackupInput, now: Instant) -> Vec<BackupOutput> {
        let key = self.key.clone();
        let mut out = Vec::new();
        match input {
            BackupInput::PrePrepare(pre_prepare, batch) => self.on_pre_prepare(pre_prepare, batch, now, &key, &mut out),
            BackupInput::Prepare(prepare) => self.on_prepare(prepare, &key, &mut out),
            BackupInput::Commit(commit) => self.on_commit(commit, &key, &mut out),
            BackupInput::Batch(batch) => {
                if !self.supply_batch(batch, &key, &mut out) {
                    out.push(BackupOutput::Refused(RoleRefusal::UnrequestedBatch));
                }
            }
            BackupInput::Freeze => self.freeze(),
            BackupInput::EnterView { view, pre_prepares } => {
                let missing = self.enter_view(view, &pre_prepares, &key, &mut out);
                if !missing.is_empty() {
                    out.push(BackupOutput::MissingBatches(missing));
                }
            }
            BackupInput::AdvanceLow { stable, last_executed } => {
                out.extend(self.advance_low(stable, last_executed).into_iter().map(BackupOutput::Replay));
            }
            BackupInput::Executed(seq) => self.forget_executed_below_low(seq),
        }
        out
    }
}
