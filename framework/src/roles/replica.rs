//! A replica: the five replica roles wired together (see [`crate::roles`]).
//!
//! [`Replica::handle`] takes one input (a verified message or a timer firing) and the
//! current time, and returns the actions for the runtime. The wiring is deterministic:
//! the same inputs in the same order give the same actions.
//!
//! Besides the paper's normal case this adds two mechanisms a real deployment needs on a
//! lossy network:
//! * **status-driven retransmission** (as in Castro's BFT library): a replica that knows
//!   of sequence numbers it has not executed and made no progress for a status interval
//!   multicasts STATUS with what it has of each; peers answer with the pre-prepares,
//!   prepares, commits and checkpoint proofs it lacks (rate-limited per peer);
//! * **chunked state transfer** to a stable checkpoint (ST1–ST5, see
//!   [`crate::roles::state_transfer`]): a replica whose next batch was garbage-collected by
//!   a stable checkpoint fetches the checkpoint image in chunks from the signers of the
//!   proof, checks each chunk against the proof's state digest, and asks another signer
//!   for any that does not match.

use crate::durable::{Record, Recovered};
use crate::ids::{Instant, ReplicaId, SeqNum, View};
use crate::membership::{MemberMap, MembershipHandle};
use crate::messages::{
    Batch, BatchReply, BatchRequest, Checkpoint, Inquiry, MessageKind, Report, Request, StateReply, StateRequest,
    Status, VerifiedMessage, VerifiedNewView, VerifiedViewChange, ViewChange,
};
use crate::roles::backup::{message_view, Backup, BackupInput, BackupOutput, WindowPosition};
use crate::roles::checkpoint::{CollectorInput, CollectorOutput, StableCheckpoint};
use crate::roles::executor::{Executor, RequestStatus};
use crate::roles::executor::{ExecutorInput, ExecutorOutput};
use crate::roles::primary::{PrimaryInput, PrimaryOutput};
use crate::roles::refusal::RoleRefusal;
use crate::roles::state_transfer::{FetchInput, FetchStep, StateFetch, PARALLEL_CHUNKS};
use crate::roles::view_change::{ViewChangerInput, ViewChangerOutput};
use crate::roles::Role;
use crate::roles::{Action, ReplicaEvent, TimerKind};
use crate::service::Service;
use bulwark_crypto::{Digest, KeyPair, Verified};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// Every this many status ticks a replica sends STATUS even when not stuck.
const STATUS_HEARTBEAT_TICKS: u64 = 10;

/// The period of a peer's retransmission budget, in status intervals
/// ([`Replica::budgeted_pre_prepares`]).
const PRE_PREPARE_RESEND_INTERVALS: u32 = 10;

/// An input to a replica.
#[derive(Debug, Clone)]
pub enum Input {
    Message(VerifiedMessage),
    Timer(TimerKind),
    /// What this replica's checkpoint collector told it.
    Checkpoints(CollectorOutput),
    /// What this replica's primary role proposed or shed.
    Primary(PrimaryOutput),
    /// What this replica's view-changer told it.
    ViewChanger(ViewChangerOutput),
    /// A system command to order, from this replica's own runtime: proposed if this
    /// replica leads its view, refused otherwise.
    ProposeSystem(crate::messages::SystemCommand),
}

/// Counters a replica keeps about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaMetrics {
    pub requests_executed: u64,
    pub batches_executed: u64,
    pub batches_proposed: u64,
    pub requests_shed: u64,
    pub status_sent: u64,
    pub retransmitted: u64,
    /// Pre-prepares not retransmitted to a peer that had its budget for the period.
    pub retransmissions_paced: u64,
    pub state_transfers: u64,
    /// VIEW-CHANGEs this replica signed (VC2, VC3, VC5).
    pub view_changes_started: u64,
    /// Views entered by a NEW-VIEW (VC16), or built as the new primary (VC13).
    pub views_entered: u64,
    /// Times the primary of a view was caught signing two pre-prepares for one `(v, s)` (N3).
    pub primary_equivocations: u64,
    /// Messages refused by the roles' acceptance rules, by reason.
    pub refused: BTreeMap<RoleRefusal, u64>,
}

impl ReplicaMetrics {
    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }
}

/// A replica of service `S`.
#[derive(Debug)]
pub struct Replica<S: Service> {
    id: ReplicaId,
    membership: MembershipHandle,
    key: Arc<KeyPair>,
    /// The last view entered.
    view: View,
    /// While view-changing: the view of this replica's latest VIEW-CHANGE (VC2).
    target: Option<View>,
    /// The NEW-VIEW by which the current view was entered, for replicas that lag (VC7).
    new_view: Option<Arc<VerifiedNewView>>,
    /// Whether the last word to the primary role was [`PrimaryInput::Lead`] (it leads),
    /// rather than [`PrimaryInput::Follow`].
    leads: bool,
    backup: Backup,
    executor: Executor<S>,
    /// The latest stable checkpoint this replica knows: formed by its collector, or taken
    /// from a NEW-VIEW or from its durable records.
    stable: StableCheckpoint,
    /// The CHECKPOINTs this replica signed above `stable`, to retransmit. Execution stays
    /// within the watermarks, so there are at most `L / K` of them.
    own_checkpoints: BTreeMap<SeqNum, Verified<Checkpoint>>,
    /// Per member: the highest sequence number of a CHECKPOINT it sent (C7).
    checkpointed: MemberMap<SeqNum>,
    metrics: ReplicaMetrics,
    /// The highest sequence number this replica knows to exist: its own proposals, the
    /// current primary's pre-prepares, and what `f + 1` other members vouch for.
    highest_seen: SeqNum,
    /// Per member: the highest sequence number it has claimed to reach (a vote, a
    /// checkpoint, a status).
    claimed: MemberMap<SeqNum>,
    executed_at_last_tick: SeqNum,
    /// Last executed when the request timer last fired (`catching_up_at_request_timer`).
    executed_at_request_timer: Option<SeqNum>,
    ticks: u64,
    answered_at: MemberMap<Option<Instant>>,
    /// Per peer: when its current retransmission period began, and the pre-prepares
    /// retransmitted to it since (`Replica::budgeted_pre_prepares`).
    pre_prepares_resent: MemberMap<(Instant, u64)>,
    batches_answered_at: MemberMap<Option<Instant>>,
    /// Normal-case messages for a view this replica has not entered, per sender (VC6).
    later_views: MemberMap<VecDeque<VerifiedMessage>>,
    transfer: Option<StateFetch>,
    /// Per peer: start of the current window and chunks served in it.
    chunks_answered: MemberMap<(Instant, u32)>,
    /// The state digest last computed for a REPORT: (last executed, digest, when).
    report_digest: Option<(SeqNum, Digest, Instant)>,
}

impl<S: Service> Replica<S> {
    /// Replica `id` of `membership`, signing with `key`. Its primary role, checkpoint
    /// collector and view-changer run apart ([`crate::roles::node::Roles`]).
    pub fn new(id: ReplicaId, key: KeyPair, membership: MembershipHandle, service: S) -> Self {
        Replica::with_key(id, Arc::new(key), membership, service)
    }

    /// [`Replica::new`] with a key shared with its roles.
    pub fn with_key(id: ReplicaId, key: Arc<KeyPair>, membership: MembershipHandle, service: S) -> Self {
        let members = membership.current();
        let leads = members.primary(View(0)) == id;
        Replica {
            id,
            view: View(0),
            target: None,
            new_view: None,
            leads,
            backup: Backup::new(id, membership.clone(), key.clone()),
            executor: Executor::new(id, membership.clone(), service, key.clone()),
            stable: StableCheckpoint::initial(),
            own_checkpoints: BTreeMap::new(),
            checkpointed: MemberMap::new(&members, |_| SeqNum(0)),
            metrics: ReplicaMetrics::default(),
            highest_seen: SeqNum(0),
            claimed: MemberMap::new(&members, |_| SeqNum(0)),
            executed_at_last_tick: SeqNum(0),
            executed_at_request_timer: None,
            ticks: 0,
            answered_at: MemberMap::new(&members, |_| None),
            pre_prepares_resent: MemberMap::new(&members, |_| (Instant::ZERO, 0)),
            batches_answered_at: MemberMap::new(&members, |_| None),
            later_views: MemberMap::new(&members, |_| VecDeque::new()),
            transfer: None,
            chunks_answered: MemberMap::new(&members, |_| (Instant::ZERO, 0)),
            report_digest: None,
            key,
            membership,
        }
    }

    /// Negative control for tests only: prepared with `f` prepares, committed with `f + 1`
    /// commits. A replica built this way is not safe; tests use it to show that the
    /// simulator's checker catches what this breaks.
    #[cfg(feature = "negative-controls")]
    pub fn weaken_quorums_for_negative_control(&mut self) {
        self.backup.set_rule(crate::roles::backup::QuorumRule::Weakened);
    }

    /// Brings a replica back from its durable records (see [`crate::durable`]): installs
    /// the stable checkpoint's image, re-executes the committed batches above it in order,
    /// restores the votes it signed and its prepared certificates, re-enters the view it had
    /// entered and, if it had asked to leave that view, asks again. Returns the replica and
    /// the actions to carry out, timers included (it needs no [`Replica::start`]).
    pub fn recover(
        id: ReplicaId,
        key: KeyPair,
        membership: MembershipHandle,
        service: S,
        recovered: Recovered,
        now: Instant,
    ) -> (Self, Vec<Action>) {
        Replica::recover_with_key(id, Arc::new(key), membership, service, recovered, now)
    }

    /// [`Replica::recover`] with a key shared with its roles.
    pub fn recover_with_key(
        id: ReplicaId,
        key: Arc<KeyPair>,
        membership: MembershipHandle,
        service: S,
        recovered: Recovered,
        now: Instant,
    ) -> (Self, Vec<Action>) {
        let mut replica = Replica::with_key(id, key, membership, service);
        let mut actions = replica.start(now);
        if let Some((checkpoint, image)) = &recovered.stable {
            let install = ExecutorInput::Install { seq: checkpoint.seq, image: image.bytes().to_vec() };
            match replica.executor.handle(install, now).as_slice() {
                [ExecutorOutput::Installed { .. }] => {
                    replica.stable = checkpoint.clone();
                    actions.push(Action::ToCheckpoints(CollectorInput::Adopt(checkpoint.clone())));
                    let input = BackupInput::AdvanceLow { stable: checkpoint.seq, last_executed: checkpoint.seq };
                    let replay = replica.backup.handle(input, now);
                    replica.apply(replay, now, &mut actions);
                }
                _ => replica.refuse(RoleRefusal::RecoveredImageNotInstalled),
            }
        }
        let view = recovered.view();
        actions.push(Action::Event(ReplicaEvent::Recovered { stable: replica.last_executed(), view }));
        let mut next = replica.last_executed().next();
        while let Some((view, batch)) = recovered.committed.get(&next) {
            replica.execute(next, *view, batch, now, &mut actions);
            next = next.next();
        }
        replica.backup.restore(recovered.votes.clone(), recovered.prepared.clone(), recovered.certificates.clone());
        if let Some(new_view) = &recovered.new_view {
            replica.enter_view(new_view.clone(), now, &mut actions);
        }
        // A primary numbers new batches above every pre-prepare it signed before the crash.
        let proposed = recovered
            .votes
            .keys()
            .filter(|(kind, v, _)| *kind == MessageKind::PrePrepare && *v == replica.view())
            .map(|(_, _, seq)| *seq)
            .max()
            .unwrap_or_default();
        let next_seq = proposed.max(replica.last_executed()).max(replica.stable()).next();
        replica.lead_or_follow(next_seq, &mut actions);
        if recovered.floor > replica.view() {
            replica.start_view_change(recovered.floor, now, &mut actions);
        }
        replica.drive(now, &mut actions);
        (replica, actions)
    }

    /// The first actions of a replica: arm the periodic status timer and, as the primary
    /// of view 0, tell its primary role to lead.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = vec![Action::SetTimer {
            timer: TimerKind::Status,
            at: now + self.membership.current().params.status_interval(),
        }];
        if self.leads {
            let lead = PrimaryInput::Lead { view: self.view, next_seq: SeqNum(1), low: self.backup.low() };
            actions.push(Action::ToPrimary(lead));
        }
        actions
    }

    pub fn id(&self) -> ReplicaId {
        self.id
    }

    /// The last view this replica entered.
    pub fn view(&self) -> View {
        self.view
    }

    /// The view this replica is changing to, while it is view-changing.
    pub fn view_change_target(&self) -> Option<View> {
        self.target
    }

    fn is_changing(&self) -> bool {
        self.target.is_some()
    }

    /// The highest view this replica has asked for or entered: nothing below it may be
    /// signed any more (VC4a).
    fn floor(&self) -> View {
        self.target.unwrap_or(self.view)
    }

    /// Whether this replica is the primary of its view and in normal mode (P1).
    pub fn is_primary(&self) -> bool {
        self.membership.current().primary(self.view()) == self.id && !self.is_changing()
    }

    pub fn last_executed(&self) -> SeqNum {
        self.executor.last_executed()
    }

    /// The low watermark `h` (last stable checkpoint).
    pub fn stable(&self) -> SeqNum {
        self.stable.seq
    }

    pub fn stable_checkpoint(&self) -> &StableCheckpoint {
        &self.stable
    }

    pub fn state_digest(&self) -> Digest {
        self.executor.state_digest()
    }

    pub fn service(&self) -> &S {
        self.executor.service()
    }

    pub fn metrics(&self) -> &ReplicaMetrics {
        &self.metrics
    }

    pub fn membership(&self) -> &MembershipHandle {
        &self.membership
    }

    /// The key this replica signs with, for its roles run apart.
    pub fn key(&self) -> Arc<KeyPair> {
        self.key.clone()
    }

    /// Sizes of every bounded structure: log slots, next-window buffer, checkpoint votes,
    /// checkpoint images, primary queue and in-flight batches, client table.
    pub fn footprint(&self) -> Footprint {
        Footprint {
            log_slots: self.backup.log_len(),
            future_messages: self.backup.future_len(),
            checkpoint_votes: self.own_checkpoints.len(),
            checkpoint_images: self.executor.images_len(),
            queued_requests: 0,
            in_flight_batches: 0,
            clients: self.executor.client_table().len(),
            later_view_messages: self.later_views.values().map(VecDeque::len).sum(),
            waiting_requests: 0,
            view_changes_held: 0,
            transfer_bytes: self.transfer.as_ref().map_or(0, StateFetch::buffered_bytes),
        }
    }

    fn refuse(&mut self, reason: RoleRefusal) {
        tracing::debug!(replica = %self.id, %reason, "refused");
        *self.metrics.refused.entry(reason).or_default() += 1;
    }

    /// Handles one input at time `now`.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        match input {
            Input::Message(message) => self.on_message(message, now, &mut actions),
            Input::Checkpoints(output) => self.on_collector_output(output, now, &mut actions),
            Input::Primary(output) => self.on_primary_output(output, now, &mut actions),
            Input::ViewChanger(output) => self.on_view_changer_output(output, now, &mut actions),
            Input::ProposeSystem(command) if self.leads => {
                self.hand_to_primary(PrimaryInput::System(command), &mut actions)
            }
            Input::ProposeSystem(_) => self.refuse(RoleRefusal::SystemCommandNotLeading),
            Input::Timer(TimerKind::Status) => self.on_status_tick(now, &mut actions),
            // The other timers are its roles' (see `TimerKind`).
            Input::Timer(_) => {}
        }
        self.drive(now, &mut actions);
        actions
    }

    /// What the view-changer said, acted on only if what it was based on still holds (it
    /// runs apart and may speak about a view this replica has left).
    fn on_view_changer_output(&mut self, output: ViewChangerOutput, now: Instant, actions: &mut Vec<Action>) {
        let in_normal_view = |replica: &Self, view: View| replica.view == view && !replica.is_changing();
        match output {
            ViewChangerOutput::SetTimer(timer, at) => actions.push(Action::SetTimer { timer, at }),
            // A replica catching up to a stable checkpoint waits because it is behind, not
            // because the primary stalls: the checkpoint proves that f + 1 correct replicas
            // executed past it. It waits again instead of suspecting (PF4).
            ViewChangerOutput::RequestTimerExpired { view } if in_normal_view(self, view) => {
                if self.catching_up_at_request_timer() {
                    actions.push(Action::ToViewChanger(ViewChangerInput::StillCatchingUp));
                } else {
                    self.start_view_change(view.next(), now, actions);
                }
            }
            ViewChangerOutput::TooSlow { view } if in_normal_view(self, view) => {
                tracing::info!(replica = %self.id, "primary orders below the minimum rate; suspecting it");
                self.start_view_change(view.next(), now, actions);
            }
            ViewChangerOutput::ViewChangeTimerExpired { target } if self.target == Some(target) => {
                self.start_view_change(target.next(), now, actions);
            }
            ViewChangerOutput::Join { view } => self.start_view_change(view, now, actions),
            ViewChangerOutput::NewView(new_view) => self.enter_own_new_view(new_view, now, actions),
            ViewChangerOutput::Retransmit(own) if self.target == Some(own.view()) => {
                actions.push(Action::Broadcast { message: VerifiedMessage::ViewChange(own) });
            }
            ViewChangerOutput::Waiting(keys) => {
                let window = self.membership.current().params.client_window;
                let table = self.executor.client_table();
                let done =
                    keys.into_iter().filter(|(client, t)| table.status(*client, *t, window) != RequestStatus::New);
                actions.push(Action::ToViewChanger(ViewChangerInput::Forget(done.collect())));
            }
            ViewChangerOutput::Resend(requests) => self.resend_waiting(requests, actions),
            ViewChangerOutput::Refused(reason) => self.refuse(reason),
            // Based on a view or target this replica has left.
            ViewChangerOutput::RequestTimerExpired { .. }
            | ViewChangerOutput::TooSlow { .. }
            | ViewChangerOutput::ViewChangeTimerExpired { .. }
            | ViewChangerOutput::Retransmit(_) => {}
        }
    }

    fn note_seen(&mut self, seq: SeqNum) {
        if seq > self.highest_seen
            && matches!(self.backup.position(seq), WindowPosition::Inside | WindowPosition::Ahead)
        {
            self.highest_seen = seq;
        }
    }

    /// A member claims to have reached `seq`. One member's word may be a Byzantine lie
    /// that keeps this replica reporting itself stuck, and its peers answering, at every
    /// tick (the flood strategy's checkpoints far ahead did exactly that). So only the
    /// `(f + 1)`-th highest claim counts: at least one correct member vouches for it.
    fn note_claim(&mut self, member: ReplicaId, seq: SeqNum) {
        let me = self.id;
        let Some(claim) = self.claimed.get_mut(member).filter(|_| member != me) else {
            return;
        };
        if seq <= *claim {
            return;
        }
        *claim = seq;
        let mut claims: Vec<SeqNum> =
            self.claimed.iter().filter(|&(member, _)| member != me).map(|(_, &s)| s).collect();
        let f = self.membership.current().f();
        if f < claims.len() {
            let (_, &mut vouched, _) = claims.select_nth_unstable_by(f, |a, b| b.cmp(a));
            self.note_seen(vouched);
        }
    }

    fn on_message(&mut self, message: VerifiedMessage, now: Instant, actions: &mut Vec<Action>) {
        match message {
            VerifiedMessage::Request(request) => self.on_request(request, now, actions),
            VerifiedMessage::PrePrepare(ref pre_prepare, _) => {
                let (view, seq, sender) =
                    (pre_prepare.view, pre_prepare.seq, self.membership.current().primary(pre_prepare.view));
                if let Some(VerifiedMessage::PrePrepare(pre_prepare, batch)) = self.admit_view(message, view, sender) {
                    self.note_seen(seq);
                    self.hand_to_backup(BackupInput::PrePrepare(pre_prepare, batch), now, actions);
                }
            }
            VerifiedMessage::Prepare(ref prepare) => {
                let (view, seq, sender) = (prepare.view, prepare.seq, prepare.replica);
                if let Some(VerifiedMessage::Prepare(prepare)) = self.admit_view(message, view, sender) {
                    self.note_claim(sender, seq);
                    self.hand_to_backup(BackupInput::Prepare(prepare), now, actions);
                }
            }
            VerifiedMessage::Commit(ref commit) => {
                let (view, seq, sender) = (commit.view, commit.seq, commit.replica);
                if let Some(VerifiedMessage::Commit(commit)) = self.admit_view(message, view, sender) {
                    self.note_claim(sender, seq);
                    self.hand_to_backup(BackupInput::Commit(commit), now, actions);
                }
            }
            VerifiedMessage::ViewChange(view_change) => self.on_view_change(view_change, now, actions),
            VerifiedMessage::NewView(new_view) => self.on_new_view(new_view, now, actions),
            VerifiedMessage::BatchRequest(request) => self.on_batch_request(request, now, actions),
            VerifiedMessage::BatchReply(reply, batch) => self.on_batch_reply(reply, batch, now, actions),
            VerifiedMessage::Checkpoint(checkpoint) => self.on_checkpoint(checkpoint, actions),
            VerifiedMessage::Status(status) => self.on_status(status, now, actions),
            VerifiedMessage::StateRequest(request) => self.on_state_request(request, now, actions),
            VerifiedMessage::StateReply(reply) => self.on_state_reply(reply, now, actions),
            VerifiedMessage::Inquiry(inquiry) => self.on_inquiry(inquiry, now, actions),
            VerifiedMessage::Reply(_) | VerifiedMessage::Report(_) => self.refuse(RoleRefusal::ReplyToReplica),
        }
    }

    /// VC6 and VC4a: a normal-case message of `view` is processed only in normal mode in
    /// that view. Messages for a view not yet entered (and not below the view-change
    /// target) are buffered per sender, bounded, until the replica enters it; anything
    /// older is dropped.
    fn admit_view(&mut self, message: VerifiedMessage, view: View, sender: ReplicaId) -> Option<VerifiedMessage> {
        let current = self.view();
        if view == current && !self.is_changing() {
            return Some(message);
        }
        // A view-changing replica still learns what its view commits (pre-prepares carry
        // the batches, COMMITs the certificates); the frozen backup signs nothing for it.
        if view == current && matches!(message, VerifiedMessage::PrePrepare(..) | VerifiedMessage::Commit(_)) {
            return Some(message);
        }
        if view <= current || view < self.floor() {
            self.refuse(if view == current {
                RoleRefusal::NormalCaseWhileViewChanging
            } else {
                RoleRefusal::NormalCaseForOlderView
            });
            return None;
        }
        let limit = self.membership.current().params.future_messages_per_sender_max;
        let queue = self.later_views.get_mut(sender)?;
        if queue.len() >= limit {
            self.refuse(RoleRefusal::LaterViewBufferFull);
        } else {
            queue.push_back(message);
        }
        None
    }

    /// Hands `input` to the agreement role and carries out what it answers.
    fn hand_to_backup(&mut self, input: BackupInput, now: Instant, actions: &mut Vec<Action>) {
        let outputs = self.backup.handle(input, now);
        self.apply(outputs, now, actions);
    }

    fn apply(&mut self, outputs: Vec<BackupOutput>, now: Instant, actions: &mut Vec<Action>) {
        for output in outputs {
            match output {
                BackupOutput::Replay(message) => self.on_message(message, now, actions),
                BackupOutput::MissingBatches(digests) => {
                    let request = self.membership.sign(BatchRequest { replica: self.id, digests }, &self.key);
                    actions.push(Action::Broadcast { message: VerifiedMessage::BatchRequest(request) });
                }
                BackupOutput::Broadcast(message) => {
                    if let Some(record) = own_vote(&message, self.id) {
                        actions.push(Action::Persist(record));
                    }
                    actions.push(Action::Broadcast { message })
                }
                BackupOutput::Prepared(seq, proof) => actions.push(Action::Persist(Record::Prepared(seq, proof))),
                BackupOutput::Refused(reason) => self.refuse(reason),
                BackupOutput::PrimaryEquivocated(first, second) => {
                    // N3: the two signed pre-prepares are the proof; forwarding them lets
                    // every correct replica see it and join (VC2).
                    self.metrics.primary_equivocations += 1;
                    let suspected = message_view(&first).unwrap_or(self.view());
                    actions.push(Action::Broadcast { message: first });
                    actions.push(Action::Broadcast { message: second });
                    if suspected == self.view() && !self.is_changing() {
                        self.start_view_change(suspected.next(), now, actions);
                    }
                }
            }
        }
    }

    /// R1–R4 with CX3: answered by the executor from the client table or the current
    /// state, or (a new request) queued at the primary or relayed to it.
    fn on_request(&mut self, request: Verified<Request>, now: Instant, actions: &mut Vec<Action>) {
        self.hand_to_executor(ExecutorInput::Request { request, view: self.view() }, now, actions);
    }

    /// Hands `input` to the executor and carries out what it answers.
    fn hand_to_executor(&mut self, input: ExecutorInput, now: Instant, actions: &mut Vec<Action>) {
        for output in self.executor.handle(input, now) {
            self.on_executor_output(output, now, actions);
        }
    }

    fn on_executor_output(&mut self, output: ExecutorOutput, now: Instant, actions: &mut Vec<Action>) {
        match output {
            ExecutorOutput::Reply { client, reply } => actions.push(Action::Reply { client, reply }),
            ExecutorOutput::Refused(reason) => self.refuse(reason),
            ExecutorOutput::New(request) if self.is_primary() => {
                self.hand_to_primary(PrimaryInput::Offer(request), actions)
            }
            ExecutorOutput::New(request) => {
                // R3: relay to the primary and start the request timer (VC1). While
                // view-changing the request only waits: it goes to the next primary.
                if !self.is_changing() {
                    let primary = self.membership.current().primary(self.view());
                    actions.push(Action::Send { to: primary, message: VerifiedMessage::Request(request.clone()) });
                }
                actions.push(Action::ToViewChanger(ViewChangerInput::Wait(request)));
            }
            ExecutorOutput::System { seq, command } => {
                actions.push(Action::Event(ReplicaEvent::SystemExecuted { seq, command }))
            }
            ExecutorOutput::Checkpoint { seq, state_digest } => self.own_checkpoint(seq, state_digest, actions),
            ExecutorOutput::Executed { seq, view, digest, requests } => {
                self.metrics.batches_executed += 1;
                self.metrics.requests_executed += requests.len() as u64;
                let count = requests.len();
                actions.push(Action::Event(ReplicaEvent::Executed { seq, digest, view, requests: count }));
                actions.push(Action::ToViewChanger(ViewChangerInput::Executed { seq, requests }));
                self.backup.handle(BackupInput::Executed(seq), now);
                // Last: the requests it frees room for are proposed after this batch's effects.
                self.hand_to_primary(PrimaryInput::Executed(seq), actions);
            }
            ExecutorOutput::Installed { seq, state_digest } => {
                self.hand_to_primary(PrimaryInput::Executed(seq), actions);
                self.backup.handle(BackupInput::Executed(seq), now);
                actions.push(Action::ToViewChanger(ViewChangerInput::Installed));
                actions.push(Action::Event(ReplicaEvent::StateInstalled { seq, state_digest }));
                let stable = self.stable.clone();
                if let Some(image) = self.executor.image_at(seq).filter(|_| stable.seq == seq) {
                    actions.push(Action::Persist(Record::Stable { checkpoint: stable, image }));
                }
            }
        }
    }

    /// C1 and C6: this replica's CHECKPOINT for `seq`, signed, multicast and collected.
    fn own_checkpoint(&mut self, seq: SeqNum, state_digest: Digest, actions: &mut Vec<Action>) {
        let checkpoint = self.membership.sign(Checkpoint { seq, state_digest, replica: self.id }, &self.key);
        actions.push(Action::Broadcast { message: VerifiedMessage::Checkpoint(checkpoint.clone()) });
        if seq > self.stable.seq {
            self.own_checkpoints.insert(seq, checkpoint.clone());
        }
        if self.stable.seq == seq && self.stable.state_digest != state_digest {
            // C6: a stable checkpoint this replica executed through with another digest
            // means its own state is wrong; it can only be repaired from a later one.
            self.refuse(RoleRefusal::OwnDigestDiffersFromStable);
        }
        self.on_checkpoint(checkpoint, actions);
    }

    /// Executes what is committed, in order, as far as it goes.
    fn drive(&mut self, now: Instant, actions: &mut Vec<Action>) {
        loop {
            let next = self.executor.last_executed().next();
            let Some((batch, view)) = self.backup.committed_batch(next) else {
                break;
            };
            self.execute(next, view, &batch, now, actions);
        }
        if self.last_executed() < self.stable() && self.backup.committed_batch(self.last_executed().next()).is_none() {
            self.ensure_transfer(now, actions);
        }
    }

    /// Hands `input` to the primary role, which runs apart: its answers come back as
    /// [`Input::Primary`]. Only what the role needs while it leads is sent (besides the word
    /// that it leads or follows).
    fn hand_to_primary(&mut self, input: PrimaryInput, actions: &mut Vec<Action>) {
        let needed = match input {
            PrimaryInput::Lead { .. } | PrimaryInput::Follow | PrimaryInput::BatchTimer => true,
            PrimaryInput::Offer(_) | PrimaryInput::System(_) | PrimaryInput::Executed(_) | PrimaryInput::Low(_) => {
                self.leads
            }
        };
        if needed {
            actions.push(Action::ToPrimary(input));
        }
    }

    /// Tells the primary role whether this replica now leads its view, and from where it
    /// numbers (VC14).
    fn lead_or_follow(&mut self, next_seq: SeqNum, actions: &mut Vec<Action>) {
        if self.is_primary() {
            let (view, low) = (self.view(), self.backup.low());
            self.leads = true;
            self.hand_to_primary(PrimaryInput::Lead { view, next_seq, low }, actions);
        } else if self.leads {
            self.leads = false;
            self.hand_to_primary(PrimaryInput::Follow, actions);
        }
    }

    /// P1: log, persist and multicast this replica's own proposal, if it still leads the
    /// view the proposal names and the number is inside its window (P2). A primary role run
    /// apart proposes with what it last heard: it may propose after its replica began a
    /// view change, or below a stable checkpoint its replica took meanwhile. Such a proposal
    /// never leaves the replica; its requests are proposed again by whoever leads next.
    fn on_primary_output(&mut self, output: PrimaryOutput, now: Instant, actions: &mut Vec<Action>) {
        match output {
            PrimaryOutput::Shed => self.metrics.requests_shed += 1,
            PrimaryOutput::SetBatchTimer(at) => actions.push(Action::SetTimer { timer: TimerKind::Batch, at }),
            PrimaryOutput::Propose(pre_prepare, _) if !(self.is_primary() && pre_prepare.view == self.view()) => {
                self.refuse(RoleRefusal::OwnProposalForViewLeft);
            }
            PrimaryOutput::Propose(pre_prepare, _)
                if self.backup.position(pre_prepare.seq) != WindowPosition::Inside =>
            {
                self.refuse(RoleRefusal::OwnProposalOutsideWatermarks);
            }
            PrimaryOutput::Propose(pre_prepare, batch) => {
                let (view, seq, digest) = (pre_prepare.view, pre_prepare.seq, pre_prepare.digest);
                actions.push(Action::Persist(Record::Vote { kind: MessageKind::PrePrepare, view, seq, digest }));
                self.metrics.batches_proposed += 1;
                // A proposal lost on the way to every backup must still make this replica
                // report itself stuck, or nobody would ever ask for it.
                self.note_seen(seq);
                actions.push(Action::Broadcast {
                    message: VerifiedMessage::PrePrepare(pre_prepare.clone(), batch.clone()),
                });
                self.hand_to_backup(BackupInput::PrePrepare(pre_prepare, batch), now, actions);
            }
        }
    }

    /// E1–E2 and C1.
    fn execute(&mut self, seq: SeqNum, view: View, batch: &Arc<Batch>, now: Instant, actions: &mut Vec<Action>) {
        // Durable before it executes: the replies below acknowledge it.
        let certificate = self.backup.commit_certificate(seq);
        actions.push(Action::Persist(Record::Committed { seq, view, batch: batch.clone(), certificate }));
        self.hand_to_executor(ExecutorInput::Execute { seq, view, batch: batch.clone() }, now, actions);
    }

    /// C3: hand a checkpoint to the collector, noting how far its sender claims to be.
    fn on_checkpoint(&mut self, checkpoint: Verified<Checkpoint>, actions: &mut Vec<Action>) {
        let (member, seq) = (checkpoint.replica, checkpoint.seq);
        self.note_claim(member, seq);
        if let Some(highest) = self.checkpointed.get_mut(member) {
            *highest = (*highest).max(seq);
        }
        actions.push(Action::ToCheckpoints(CollectorInput::Checkpoint(checkpoint)));
    }

    fn on_collector_output(&mut self, output: CollectorOutput, now: Instant, actions: &mut Vec<Action>) {
        match output {
            CollectorOutput::Refused(reason) => self.refuse(reason),
            // The collector may report a checkpoint this replica has passed meanwhile (one
            // from a NEW-VIEW, say): the watermarks only move up.
            CollectorOutput::Stable(stable) if stable.seq <= self.stable.seq => {}
            CollectorOutput::Stable(stable) => self.on_stable(stable, now, actions),
        }
    }

    /// C4 and C5: take `stable` as the stable checkpoint, discard the log below it, move
    /// the watermarks, re-examine the messages buffered for the next window.
    fn on_stable(&mut self, stable: StableCheckpoint, now: Instant, actions: &mut Vec<Action>) {
        self.stable = stable.clone();
        self.own_checkpoints = self.own_checkpoints.split_off(&stable.seq.next());
        actions.push(Action::Event(ReplicaEvent::Stable { seq: stable.seq, state_digest: stable.state_digest }));
        if let Some(image) = self.executor.image_at(stable.seq) {
            actions.push(Action::Persist(Record::Stable { checkpoint: stable.clone(), image }));
        }
        self.executor.handle(ExecutorInput::Stable(stable.seq), now);
        let replay = self
            .backup
            .handle(BackupInput::AdvanceLow { stable: stable.seq, last_executed: self.last_executed() }, now);
        self.hand_to_primary(PrimaryInput::Low(stable.seq), actions);
        self.apply(replay, now, actions);
    }

    /// ST1: fetch the image of the stable checkpoint from the signers of its proof.
    fn ensure_transfer(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let stable = self.stable.clone();
        // A transfer under way is left to finish while it makes progress, even if a newer
        // checkpoint became stable meanwhile: installing the older image is progress too,
        // while retargeting at every new checkpoint could chase a moving target forever.
        let interval = self.membership.current().params.status_interval();
        if self.transfer.as_ref().is_some_and(|t| t.seq() >= stable.seq || now < t.last_progress() + interval) {
            return;
        }
        self.start_transfer(&stable, now, actions);
    }

    fn start_transfer(&mut self, stable: &StableCheckpoint, now: Instant, actions: &mut Vec<Action>) {
        let sources: Vec<ReplicaId> = stable.proof.iter().map(|c| c.replica).filter(|r| *r != self.id).collect();
        if sources.is_empty() {
            return;
        }
        self.metrics.state_transfers += 1;
        let offset = (self.id.0 as usize) % sources.len();
        let (fetch, steps) =
            StateFetch::start(self.membership.clone(), stable.seq, stable.state_digest, sources, offset, now);
        self.transfer = Some(fetch);
        self.run_fetch_steps(steps, now, actions);
    }

    fn run_fetch_steps(&mut self, steps: Vec<FetchStep>, now: Instant, actions: &mut Vec<Action>) {
        for step in steps {
            match step {
                FetchStep::Request { to, seq, chunk } => {
                    let request = self.membership.sign(StateRequest { replica: self.id, seq, chunk }, &self.key);
                    actions.push(Action::Send { to, message: VerifiedMessage::StateRequest(request) });
                }
                FetchStep::Refused(reason) => self.refuse(reason),
                FetchStep::Complete(image) => self.install_image(image, now, actions),
            }
        }
    }

    /// ST5: every chunk verified; install the image.
    fn install_image(&mut self, image: Vec<u8>, now: Instant, actions: &mut Vec<Action>) {
        let Some(fetch) = self.transfer.take() else {
            return;
        };
        let seq = fetch.seq();
        self.hand_to_executor(ExecutorInput::Install { seq, image }, now, actions);
    }

    /// Serve one chunk of a checkpoint image: of the one asked for, or of a newer stable
    /// one (ST3). A per-peer budget bounds what a peer can make this replica send.
    fn on_state_request(&mut self, request: Verified<StateRequest>, now: Instant, actions: &mut Vec<Action>) {
        let window = self.membership.current().params.status_interval();
        let budget = 4 * PARALLEL_CHUNKS as u32;
        let Some((window_start, used)) = self.chunks_answered.get_mut(request.replica) else {
            return;
        };
        if now >= *window_start + window {
            *window_start = now;
            *used = 0;
        }
        if *used >= budget {
            self.refuse(RoleRefusal::StateRequestRateLimit);
            return;
        }
        *used += 1;
        let stable = self.stable();
        let image =
            self.executor.image_at(request.seq).map(|image| (request.seq, image)).or_else(|| {
                (stable > request.seq).then(|| self.executor.image_at(stable).map(|i| (stable, i))).flatten()
            });
        let Some((seq, image)) = image else {
            self.refuse(RoleRefusal::StateRequestForImageNotHeld);
            return;
        };
        let Some((data, path)) = image.chunk(request.chunk) else {
            self.refuse(RoleRefusal::StateRequestPastEnd);
            return;
        };
        let reply = self.membership.sign(
            StateReply {
                replica: self.id,
                seq,
                total_bytes: image.total_bytes(),
                index: request.chunk,
                data: data.to_vec(),
                path,
            },
            &self.key,
        );
        actions.push(Action::Send { to: request.replica, message: VerifiedMessage::StateReply(reply) });
    }

    /// ST4: a chunk of the image under transfer, or (ST3) of the newer stable checkpoint a
    /// source moved on to, which retargets the transfer.
    fn on_state_reply(&mut self, reply: Verified<StateReply>, now: Instant, actions: &mut Vec<Action>) {
        let Some(fetch_seq) = self.transfer.as_ref().map(StateFetch::seq) else {
            self.refuse(RoleRefusal::StateReplyWithoutTransfer);
            return;
        };
        if reply.seq != fetch_seq {
            let stable = self.stable.clone();
            if reply.seq == stable.seq && reply.seq > fetch_seq && reply.seq > self.last_executed() {
                self.transfer = None;
                self.start_transfer(&stable, now, actions);
            } else {
                self.refuse(RoleRefusal::StateReplyForAnotherCheckpoint);
                return;
            }
        }
        let Some(fetch) = self.transfer.as_mut() else {
            return;
        };
        let steps = fetch.handle(FetchInput::Chunk(reply), now);
        self.run_fetch_steps(steps, now, actions);
    }

    /// Behind a stable checkpoint, fetching its image, or `f + 1` replicas (so at least one
    /// correct one) checkpointed past this replica's last executed sequence number (C7).
    /// Whether the request timer fired because this replica is behind rather than because
    /// the primary stalls. A state transfer or a stable checkpoint above what it executed is
    /// proof. Checkpoints of `f + 1` members past it (not yet stable) count only while it
    /// still executes from one timer to the next: when the others are stuck too — a
    /// correct replica froze in a view change that needs this replica to join it — waiting
    /// for them deadlocks the cluster (campaign seed 488).
    fn catching_up_at_request_timer(&mut self) -> bool {
        let last_executed = self.last_executed();
        // The first firing has nothing to compare with: it gets the benefit of the doubt.
        let progressed = self.executed_at_request_timer.is_none_or(|before| last_executed > before);
        self.executed_at_request_timer = Some(last_executed);
        self.transfer.is_some()
            || last_executed < self.stable()
            || (progressed && self.members_checkpointed_past(last_executed) >= self.membership.current().weak_quorum())
    }

    /// How many members sent a CHECKPOINT above `seq` (C7: `f + 1` of them mean a correct
    /// replica executed past it).
    fn members_checkpointed_past(&self, seq: SeqNum) -> usize {
        self.checkpointed.values().filter(|&&highest| highest > seq).count()
    }

    fn may_answer(&mut self, peer: ReplicaId, now: Instant) -> bool {
        let spacing = self.membership.current().params.status_interval() / 2;
        Self::rate_limit(&mut self.answered_at, peer, spacing, now)
    }

    /// Keeps the pre-prepares of `retransmissions` within `peer`'s budget: a window of them
    /// per [`PRE_PREPARE_RESEND_INTERVALS`] status intervals. A correct peer catching up
    /// needs at most a window per period from each correct replica (more behind, it fetches
    /// state); without a budget a Byzantine STATUS claiming to lack the whole window bought
    /// every batch of it from every correct replica at every answer, twenty a second.
    fn budgeted_pre_prepares(
        &mut self,
        peer: ReplicaId,
        retransmissions: Vec<VerifiedMessage>,
        now: Instant,
    ) -> Vec<VerifiedMessage> {
        let budget = self.membership.current().params.watermark_window;
        let period = self.membership.current().params.status_interval() * PRE_PREPARE_RESEND_INTERVALS;
        let Some((period_start, sent)) = self.pre_prepares_resent.get_mut(peer) else {
            return retransmissions;
        };
        if now >= *period_start + period {
            (*period_start, *sent) = (now, 0);
        }
        let mut kept = Vec::with_capacity(retransmissions.len());
        for message in retransmissions {
            if matches!(message, VerifiedMessage::PrePrepare(..)) {
                if *sent >= budget {
                    self.metrics.retransmissions_paced += 1;
                    continue;
                }
                *sent += 1;
            }
            kept.push(message);
        }
        kept
    }

    /// Per-peer rate limit: true (and noted) if `peer` was last answered `spacing` ago.
    fn rate_limit(
        answered_at: &mut MemberMap<Option<Instant>>,
        peer: ReplicaId,
        spacing: std::time::Duration,
        now: Instant,
    ) -> bool {
        let Some(last) = answered_at.get_mut(peer) else {
            return false;
        };
        if last.is_some_and(|at| now < at + spacing) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Periodic: retry state transfer; if stuck, tell peers what this replica has.
    fn on_status_tick(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let interval = self.membership.current().params.status_interval();
        actions.push(Action::SetTimer { timer: TimerKind::Status, at: now + interval });
        if let Some(seq) = self.transfer.as_ref().map(StateFetch::seq) {
            let stalled = self.transfer.as_ref().is_some_and(|t| now >= t.last_progress() + interval);
            if self.last_executed() >= seq {
                // Executed past it meanwhile (C6): nothing to fetch.
                self.transfer = None;
            } else if seq < self.stable() && stalled {
                // Its sources may have dropped that image: go for the newest stable one.
                self.transfer = None;
                self.ensure_transfer(now, actions);
            } else if let Some(fetch) = self.transfer.as_mut() {
                let steps = fetch.handle(FetchInput::Tick, now);
                self.run_fetch_steps(steps, now, actions);
            }
        }
        // VC7 retransmission and the ordering-rate guard are the view-changer's, paced by
        // this tick.
        actions.push(Action::ToViewChanger(ViewChangerInput::Tick));
        self.request_missing_batches(actions);
        let last_executed = self.last_executed();
        // Slots re-run after a view change (E3) count as work too: a peer may need this
        // replica's votes on them although this replica executed them long ago.
        let rerun = self.backup.first_rerun_pending(last_executed);
        let stuck =
            (self.highest_seen > last_executed || rerun.is_some()) && last_executed == self.executed_at_last_tick;
        self.executed_at_last_tick = last_executed;
        self.ticks += 1;
        // Even a replica that knows of nothing newer says where it is now and then: a
        // replica that missed the last messages of a burst cannot know it is behind, and
        // its peers only learn it from this heartbeat.
        let heartbeat = self.ticks.is_multiple_of(STATUS_HEARTBEAT_TICKS);
        if !stuck && !heartbeat {
            return;
        }
        let window = self.membership.current().params.watermark_window;
        let first_slot = rerun.unwrap_or(last_executed.next());
        let last = self.highest_seen.0.max(last_executed.0).min(first_slot.0.saturating_add(window - 1));
        let slots = (first_slot.0..=last).map(|s| self.backup.progress(SeqNum(s))).collect();
        let status = self.membership.sign(
            Status { replica: self.id, view: self.view(), stable: self.stable(), last_executed, first_slot, slots },
            &self.key,
        );
        self.metrics.status_sent += 1;
        actions.push(Action::Broadcast { message: VerifiedMessage::Status(status) });
    }

    /// Answer an INQUIRY with where this replica is. The state digest is recomputed at
    /// most once per status interval (it costs a snapshot); in between the cached one for
    /// the same last executed sequence number is reused, so inquiries cannot make a replica
    /// snapshot its state at line rate.
    fn on_inquiry(&mut self, inquiry: Verified<Inquiry>, now: Instant, actions: &mut Vec<Action>) {
        let last_executed = self.last_executed();
        let fresh = match self.report_digest {
            Some((seq, _, at)) if seq == last_executed => Some(at),
            _ => None,
        };
        let due =
            self.report_digest.is_none_or(|(_, _, at)| now >= at + self.membership.current().params.status_interval());
        if fresh.is_none() && due {
            self.report_digest = Some((last_executed, self.executor.state_digest(), now));
        }
        let Some((seq, state_digest, _)) = self.report_digest else {
            return;
        };
        let client = crate::messages::client_id(&inquiry.client_key);
        let report = self.membership.sign(
            Report {
                replica: self.id,
                client,
                nonce: inquiry.nonce,
                view: self.view(),
                stable: self.stable(),
                last_executed: seq,
                state_digest,
            },
            &self.key,
        );
        actions.push(Action::Report { client, report });
    }

    /// Answer a stuck peer with what it lacks (rate-limited per peer).
    fn on_status(&mut self, status: Verified<Status>, now: Instant, actions: &mut Vec<Action>) {
        self.note_claim(status.replica, status.last_executed);
        if let Some(offset) = status.slots.iter().rposition(|p| p.has_pre_prepare) {
            // The slots start at `first_slot` (before `last_executed` when re-running after
            // a view change). Saturating: it is the peer's word (fuzzing found u64::MAX - 3).
            let seq = SeqNum(status.first_slot.0.saturating_add(offset as u64));
            if status.view == self.view() && status.replica == self.membership.current().primary(status.view) {
                // The primary is the source of pre-prepares: one it holds and a backup
                // lacks (lost on the way to every backup) is enough to ask for.
                self.note_seen(seq);
            } else {
                self.note_claim(status.replica, seq);
            }
        }
        if !self.may_answer(status.replica, now) {
            return;
        }
        let peer = status.replica;
        let mut messages = Vec::new();
        // VC7 and PF4: a peer still in an older view gets the NEW-VIEW that ended it.
        if status.view < self.view() {
            if let Some(new_view) = &self.new_view {
                messages.push(VerifiedMessage::NewView(new_view.clone()));
            }
        }
        let stable = &self.stable;
        if status.stable < stable.seq {
            messages.extend(stable.proof.iter().cloned().map(VerifiedMessage::Checkpoint));
        }
        messages.extend(
            self.own_checkpoints.range(status.stable.next()..).map(|(_, c)| VerifiedMessage::Checkpoint(c.clone())),
        );
        // A peer behind the stable checkpoint can use nothing of the log above it before it
        // has fetched that state (the proof above starts the transfer), and its watermarks
        // keep it from even holding most of it. Sending the window anyway turned a small
        // Byzantine STATUS ("I am at 0") into a whole window of batches from every correct
        // replica, at every answer.
        if status.last_executed >= stable.seq {
            let retransmissions = self.backup.retransmissions_for(&status);
            messages.extend(self.budgeted_pre_prepares(peer, retransmissions, now));
        }
        self.metrics.retransmitted += messages.len() as u64;
        for message in messages {
            actions.push(Action::Send { to: peer, message });
        }
    }
}

impl<S: Service> Replica<S> {
    /// VC2 (and VC3, VC5, N3): sign and multicast `VIEW-CHANGE(view, s_c, C, P, i)` and
    /// stop taking part in lower views (VC4a).
    fn start_view_change(&mut self, view: View, now: Instant, actions: &mut Vec<Action>) {
        if view <= self.floor() {
            return;
        }
        let checkpoint = self.stable.clone();
        let prepared = self.backup.prepared_certificates(checkpoint.seq);
        let message = self.membership.sign(
            ViewChange {
                view,
                stable: checkpoint.seq,
                checkpoint_proof: checkpoint.proof.iter().map(|c| c.signed().clone()).collect(),
                prepared: prepared.values().map(|p| p.to_wire()).collect(),
                replica: self.id,
            },
            &self.key,
        );
        let own = Arc::new(VerifiedViewChange { message, checkpoint, prepared });
        tracing::info!(replica = %self.id, %view, "view change");
        self.metrics.view_changes_started += 1;
        if self.leads {
            self.leads = false;
            self.hand_to_primary(PrimaryInput::Follow, actions);
        }
        self.backup.handle(BackupInput::Freeze, now);
        actions.push(Action::Event(ReplicaEvent::ViewChangeStarted { view }));
        actions.push(Action::Persist(Record::ViewFloor(view)));
        actions.push(Action::Broadcast { message: VerifiedMessage::ViewChange(own.clone()) });
        self.target = Some(view);
        actions.push(Action::ToViewChanger(ViewChangerInput::Started(own)));
    }

    /// VC8 and VC7: keep the sender's highest VIEW-CHANGE; as primary of the view it asks
    /// for, answer a replica that did not see the NEW-VIEW.
    fn on_view_change(&mut self, view_change: Arc<VerifiedViewChange>, now: Instant, actions: &mut Vec<Action>) {
        let sender = view_change.sender();
        if sender == self.id {
            return;
        }
        if view_change.view() == self.view() && !self.is_changing() {
            if let Some(new_view) = self.new_view.clone() {
                if self.membership.current().primary(self.view()) == self.id && self.may_answer(sender, now) {
                    actions.push(Action::Send { to: sender, message: VerifiedMessage::NewView(new_view) });
                }
            }
        }
        actions.push(Action::ToViewChanger(ViewChangerInput::ViewChange(view_change)));
    }

    /// VC13: the NEW-VIEW its view-changer built as `primary(w)`: multicast and enter it,
    /// if this replica still changes to `w` (it may have moved on meanwhile, VC4a).
    fn enter_own_new_view(&mut self, new_view: Arc<VerifiedNewView>, now: Instant, actions: &mut Vec<Action>) {
        let view = new_view.view();
        if self.target != Some(view) || self.membership.current().primary(view) != self.id {
            self.refuse(RoleRefusal::OwnNewViewForViewLeft);
            return;
        }
        actions.push(Action::Broadcast { message: VerifiedMessage::NewView(new_view.clone()) });
        self.enter_view(new_view, now, actions);
    }

    /// VC15: accept a NEW-VIEW that edge verification found valid, if this replica may.
    fn on_new_view(&mut self, new_view: Arc<VerifiedNewView>, now: Instant, actions: &mut Vec<Action>) {
        if let Err(reason) = self.may_accept(new_view.view()) {
            self.refuse(reason);
            return;
        }
        self.enter_view(new_view, now, actions);
    }

    /// VC15 (the part that depends on this replica): a NEW-VIEW for `w` may be accepted iff
    /// `w` is above the last view entered and not below the view-change target (VC4a).
    fn may_accept(&self, view: View) -> Result<(), RoleRefusal> {
        if view <= self.view {
            return Err(RoleRefusal::NewViewForViewEntered);
        }
        if self.target.is_some_and(|target| view < target) {
            return Err(RoleRefusal::NewViewBelowTarget);
        }
        Ok(())
    }

    /// VC16: requests that waited through the view change go to the new view's primary
    /// (offered to this replica's primary role if it is that primary).
    fn resend_waiting(&mut self, requests: Vec<Verified<Request>>, actions: &mut Vec<Action>) {
        if self.is_changing() {
            return;
        }
        if self.is_primary() {
            for request in requests {
                if self.executor.request_status(&request) == RequestStatus::New {
                    self.hand_to_primary(PrimaryInput::Offer(request), actions);
                }
            }
        } else {
            let primary = self.membership.current().primary(self.view);
            for request in requests {
                actions.push(Action::Send { to: primary, message: VerifiedMessage::Request(request) });
            }
        }
    }

    /// VC16 (VC13 for the new primary), in the paper's order.
    fn enter_view(&mut self, new_view: Arc<VerifiedNewView>, now: Instant, actions: &mut Vec<Action>) {
        let view = new_view.view();
        let order = new_view.order.clone();
        actions.push(Action::Persist(Record::EnteredView(new_view.clone())));
        tracing::info!(replica = %self.id, %view, min = %order.min_seq(), max = %order.max_seq, "entering view");
        // (1) A later stable checkpoint from V: install its proof and collect garbage;
        // state transfer follows in `drive` if this replica is behind it (ST1, PF5).
        if order.min_seq() > self.stable() {
            actions.push(Action::ToCheckpoints(CollectorInput::Adopt(order.checkpoint.clone())));
            self.on_stable(order.checkpoint.clone(), now, actions);
        }
        // (2) Log O, multicast PREPAREs, fetch missing batches.
        let pre_prepares = new_view.pre_prepares.clone();
        self.hand_to_backup(BackupInput::EnterView { view, pre_prepares }, now, actions);
        // (3) Enter the view; (4) the view-changer restarts the request timer if requests
        // still wait, and hands them back for the new primary.
        self.metrics.views_entered += 1;
        self.view = view;
        self.target = None;
        self.new_view = Some(new_view.clone());
        actions.push(Action::ToViewChanger(ViewChangerInput::Entered(new_view.clone())));
        actions.push(Action::Event(ReplicaEvent::EnteredView { view, new_view }));
        self.note_seen(order.max_seq);
        // VC14: fresh sequence numbers from max-s + 1.
        self.lead_or_follow(order.max_seq.next(), actions);
        // Messages that arrived for this view before the NEW-VIEW (VC6).
        let mut replay = Vec::new();
        for queue in self.later_views.values_mut() {
            let held = std::mem::take(queue);
            for message in held {
                match message_view(&message) {
                    Some(v) if v == view => replay.push(message),
                    Some(v) if v > view => queue.push_back(message),
                    _ => {}
                }
            }
        }
        for message in replay {
            self.on_message(message, now, actions);
        }
    }

    /// Serve a batch by digest (VC16), rate-limited per peer.
    fn on_batch_request(&mut self, request: Verified<BatchRequest>, now: Instant, actions: &mut Vec<Action>) {
        let batches: Vec<Arc<Batch>> = request.digests.iter().filter_map(|d| self.backup.batch_with(*d)).collect();
        if batches.is_empty() {
            return;
        }
        // One answered request per peer per quarter status interval, at most L batches in
        // it: what a Byzantine peer can make this replica send is bounded.
        let spacing = self.membership.current().params.status_interval() / 4;
        if !Self::rate_limit(&mut self.batches_answered_at, request.replica, spacing, now) {
            self.refuse(RoleRefusal::BatchRequestRateLimit);
            return;
        }
        for batch in batches {
            let reply = self.membership.sign(BatchReply { replica: self.id, digest: batch.digest() }, &self.key);
            actions.push(Action::Send { to: request.replica, message: VerifiedMessage::BatchReply(reply, batch) });
        }
    }

    fn on_batch_reply(
        &mut self,
        _reply: Verified<BatchReply>,
        batch: Arc<Batch>,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        self.hand_to_backup(BackupInput::Batch(batch), now, actions);
    }

    /// Re-ask for batches named by the NEW-VIEW that have not arrived (on the status tick).
    fn request_missing_batches(&mut self, actions: &mut Vec<Action>) {
        let missing = self.backup.missing_batches();
        if !missing.is_empty() {
            let request = self.membership.sign(BatchRequest { replica: self.id, digests: missing }, &self.key);
            actions.push(Action::Broadcast { message: VerifiedMessage::BatchRequest(request) });
        }
    }
}

/// The durable record of a vote this replica signed, if `message` is one.
fn own_vote(message: &VerifiedMessage, me: ReplicaId) -> Option<Record> {
    match message {
        VerifiedMessage::Prepare(p) if p.replica == me => {
            Some(Record::Vote { kind: MessageKind::Prepare, view: p.view, seq: p.seq, digest: p.digest })
        }
        VerifiedMessage::Commit(c) if c.replica == me => {
            Some(Record::Vote { kind: MessageKind::Commit, view: c.view, seq: c.seq, digest: c.digest })
        }
        _ => None,
    }
}

/// Sizes of a replica's bounded structures (see [`Replica::footprint`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Footprint {
    pub log_slots: usize,
    pub future_messages: usize,
    pub checkpoint_votes: usize,
    pub checkpoint_images: usize,
    pub queued_requests: usize,
    pub in_flight_batches: usize,
    pub clients: usize,
    pub later_view_messages: usize,
    pub waiting_requests: usize,
    pub view_changes_held: usize,
    pub transfer_bytes: u64,
}

impl Footprint {
    /// A replica's footprint with what its roles run apart hold: the collector's CHECKPOINT
    /// messages, the primary role's queued requests and batches in flight, the
    /// view-changer's waiting requests and VIEW-CHANGEs.
    pub fn with_roles_apart(self, roles: crate::roles::node::RolesFootprint) -> Self {
        Footprint {
            checkpoint_votes: self.checkpoint_votes + roles.checkpoint_votes,
            queued_requests: self.queued_requests + roles.queued_requests,
            in_flight_batches: self.in_flight_batches + roles.in_flight_batches,
            waiting_requests: self.waiting_requests + roles.waiting_requests,
            view_changes_held: self.view_changes_held + roles.view_changes_held,
            ..self
        }
    }
}

impl<S: Service> crate::roles::Role for Replica<S> {
    type Input = Input;
    type Output = Action;

    fn handle(&mut self, input: Input, now: Instant) -> Vec<Action> {
        Replica::handle(self, input, now)
    }
}
