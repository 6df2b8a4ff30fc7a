//! A replica: its backup, executor and state fetcher, and the routing between them and the
//! roles that run apart from it (see [`crate::roles`]).
//!
//! [`Replica::handle`] takes one input (a verified message, a timer firing, or what one of
//! its roles run apart answered) and the current time, and returns the actions for the
//! runtime. The wiring is deterministic: the same inputs in the same order give the same
//! actions. This module keeps the normal case — routing messages to the backup, executing
//! what commits, checkpoints — and the translators from each role's outputs to actions;
//! the rest lives in submodules:
//! * `views`: the replica's side of a view change;
//! * `status`: status-driven retransmission (as in Castro's BFT library), which a real
//!   deployment on a lossy network needs besides the paper's normal case;
//! * `transfer`: chunked state transfer to a stable checkpoint (ST1–ST5);
//! * `serving`: batches, state chunks and REPORTs served to peers and clients;
//! * `budget`: what each peer can make the replica send;
//! * `claims`: what the other members claim to have reached.

mod budget;
mod claims;
mod serving;
mod status;
mod transfer;
mod views;

use crate::durable::{Record, Recovered};
use crate::ids::{Instant, ReplicaId, SeqNum, View};
use crate::membership::{MemberMap, MembershipHandle};
use crate::messages::{
    Batch, BatchReply, BatchRequest, Checkpoint, Inquiry, MessageKind, Report, Request, StateReply, StateRequest,
    Status, VerifiedMessage, VerifiedNewView, VerifiedViewChange, ViewChange,
};
use crate::roles::backup::{Backup, BackupInput, BackupOutput, WindowPosition};
use crate::roles::checkpoint::{CollectorInput, CollectorOutput, StableCheckpoint};
use crate::roles::executor::{Executor, RequestStatus};
use crate::roles::executor::{ExecutorInput, ExecutorOutput};
use crate::roles::primary::{PrimaryInput, PrimaryOutput};
use crate::roles::refusal::RoleRefusal;
use crate::roles::state_transfer::{FetchInput, FetchStep, StateFetch};
use crate::roles::view_change::{ViewChangerInput, ViewChangerOutput};
use crate::roles::Role;
use crate::roles::{Action, ReplicaEvent, TimerKind};
use crate::service::Service;
use budget::Budgets;
use bulwark_crypto::{Digest, KeyPair, Verified};
use claims::PeerClaims;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

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
    /// What the service did wrong (E6), by [`ServiceFault`] variant name.
    pub service_faults: BTreeMap<&'static str, u64>,
    /// Stable checkpoints whose digest, signed by a quorum, differed from this replica's
    /// own for the same sequence number (C8): the service is probably not deterministic.
    pub divergences: u64,
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
    /// See [`Replica::diverged_at`].
    diverged_at: Option<SeqNum>,
    metrics: ReplicaMetrics,
    /// What the other members claim to have reached (votes, checkpoints, statuses).
    claims: PeerClaims,
    executed_at_last_tick: SeqNum,
    /// Last executed when the request timer last fired (`catching_up_at_request_timer`).
    executed_at_request_timer: Option<SeqNum>,
    ticks: u64,
    /// What each peer can make this replica send: STATUS answers, retransmitted
    /// pre-prepares, batches and state chunks.
    budgets: Budgets,
    /// Normal-case messages for a view this replica has not entered, per sender (VC6).
    later_views: MemberMap<VecDeque<VerifiedMessage>>,
    transfer: Option<StateFetch>,
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
            diverged_at: None,
            metrics: ReplicaMetrics::default(),
            claims: PeerClaims::new(id, membership.clone()),
            executed_at_last_tick: SeqNum(0),
            executed_at_request_timer: None,
            ticks: 0,
            budgets: Budgets::new(&members),
            later_views: MemberMap::new(&members, |_| VecDeque::new()),
            transfer: None,
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
            let outputs = replica.executor.handle(install, now);
            let installed = matches!(outputs.as_slice(), [ExecutorOutput::Installed { .. }]);
            for output in outputs.into_iter().filter(|output| matches!(output, ExecutorOutput::Fault(_))) {
                replica.on_executor_output(output, now, &mut actions);
            }
            if installed {
                replica.stable = checkpoint.clone();
                actions.push(Action::ToCheckpoints(CollectorInput::Adopt(checkpoint.clone())));
                let input = BackupInput::AdvanceLow { stable: checkpoint.seq, last_executed: checkpoint.seq };
                let replay = replica.backup.handle(input, now);
                replica.apply(replay, now, &mut actions);
            } else {
                // The service's own refusal, if it was one, is counted above (E6).
                replica.refuse(RoleRefusal::RecoveredImageNotInstalled);
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
            let lead =
                PrimaryInput::Lead { view: self.view, next_seq: SeqNum(1), low: self.backup.low(), time_floor_us: 0 };
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

    fn on_message(&mut self, message: VerifiedMessage, now: Instant, actions: &mut Vec<Action>) {
        match message {
            VerifiedMessage::Request(request) => self.on_request(request, now, actions),
            VerifiedMessage::PrePrepare(ref pre_prepare, _) => {
                let (view, seq, sender) =
                    (pre_prepare.view, pre_prepare.seq, self.membership.current().primary(pre_prepare.view));
                if let Some(VerifiedMessage::PrePrepare(pre_prepare, batch)) = self.admit_view(message, view, sender) {
                    self.claims.note_seen(seq, &self.backup);
                    self.hand_to_backup(BackupInput::PrePrepare(pre_prepare, batch), now, actions);
                }
            }
            VerifiedMessage::Prepare(ref prepare) => {
                let (view, seq, sender) = (prepare.view, prepare.seq, prepare.replica);
                if let Some(VerifiedMessage::Prepare(prepare)) = self.admit_view(message, view, sender) {
                    self.claims.note_claim(sender, seq, &self.backup);
                    self.hand_to_backup(BackupInput::Prepare(prepare), now, actions);
                }
            }
            VerifiedMessage::Commit(ref commit) => {
                let (view, seq, sender) = (commit.view, commit.seq, commit.replica);
                if let Some(VerifiedMessage::Commit(commit)) = self.admit_view(message, view, sender) {
                    self.claims.note_claim(sender, seq, &self.backup);
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
                    let suspected = first.normal_case_view().unwrap_or(self.view());
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
            ExecutorOutput::Fault(fault) => {
                *self.metrics.service_faults.entry(<&'static str>::from(&fault)).or_default() += 1;
                actions.push(Action::Event(ReplicaEvent::ServiceFault(fault)));
            }
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
            self.diverged(seq, state_digest, self.stable.state_digest, actions);
        }
        self.on_checkpoint(checkpoint, actions);
    }

    /// C8: this replica executed through `seq` to state `own`, but a quorum signed
    /// `agreed`. With a correct replica that can only mean the service is not deterministic:
    /// said loudly, counted, and reported in STATUS answers; state transfer then repairs it.
    fn diverged(&mut self, seq: SeqNum, own: Digest, agreed: Digest, actions: &mut Vec<Action>) {
        self.metrics.divergences += 1;
        self.diverged_at = Some(seq);
        tracing::error!(
            replica = %self.id, %seq, %own, %agreed,
            "this replica's state at a stable checkpoint differs from the one 2f + 1 replicas signed: \
             the service is probably not deterministic (run it in the simulator to find out, see the README)"
        );
        actions.push(Action::Event(ReplicaEvent::Diverged { seq, own, agreed }));
    }

    /// The last stable checkpoint at which this replica's own state differed from the one a
    /// quorum signed, if any (see [`ReplicaEvent::Diverged`]).
    pub fn diverged_at(&self) -> Option<SeqNum> {
        self.diverged_at
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
                self.claims.note_seen(seq, &self.backup);
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
        self.claims.note_checkpoint(member, seq, &self.backup);
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
        if let Some(own) = self.own_checkpoints.get(&stable.seq).map(|own| own.state_digest) {
            if own != stable.state_digest {
                self.diverged(stable.seq, own, stable.state_digest, actions);
            }
        }
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
}

impl<S: Service> Replica<S> {}

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
