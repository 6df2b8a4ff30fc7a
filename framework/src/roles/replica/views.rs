//! The replica's side of a view change (PBFT.md §4): signing its VIEW-CHANGE, acting on
//! what its view-changer concludes, accepting and entering a NEW-VIEW, buffering messages
//! for views it has not entered (VC6), and telling its primary role to lead or follow.
//! The view-changer ([`crate::roles::view_change`]) decides when; this module changes the
//! replica's view, and only while what the view-changer based itself on still holds.

use super::*;

impl<S: Service> Replica<S> {
    /// What the view-changer said, acted on only if what it was based on still holds (it
    /// runs apart and may speak about a view this replica has left).
    pub(super) fn on_view_changer_output(
        &mut self,
        output: ViewChangerOutput,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
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

    /// VC6 and VC4a: a normal-case message of `view` is processed only in normal mode in
    /// that view. Messages for a view not yet entered (and not below the view-change
    /// target) are buffered per sender, bounded, until the replica enters it; anything
    /// older is dropped.
    pub(super) fn admit_view(
        &mut self,
        message: VerifiedMessage,
        view: View,
        sender: ReplicaId,
    ) -> Option<VerifiedMessage> {
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

    /// VC2 (and VC3, VC5, N3): sign and multicast `VIEW-CHANGE(view, s_c, C, P, i)` and
    /// stop taking part in lower views (VC4a).
    pub(super) fn start_view_change(&mut self, view: View, now: Instant, actions: &mut Vec<Action>) {
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
    pub(super) fn on_view_change(
        &mut self,
        view_change: Arc<VerifiedViewChange>,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let sender = view_change.sender();
        if sender == self.id {
            return;
        }
        if view_change.view() == self.view() && !self.is_changing() {
            if let Some(new_view) = self.new_view.clone() {
                if self.membership.current().primary(self.view()) == self.id && self.budgets.statuses.take(sender, now)
                {
                    actions.push(Action::Send { to: sender, message: VerifiedMessage::NewView(new_view) });
                }
            }
        }
        actions.push(Action::ToViewChanger(ViewChangerInput::ViewChange(view_change)));
    }

    /// VC13: the NEW-VIEW its view-changer built as `primary(w)`: multicast and enter it,
    /// if this replica still changes to `w` (it may have moved on meanwhile, VC4a).
    pub(super) fn enter_own_new_view(
        &mut self,
        new_view: Arc<VerifiedNewView>,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let view = new_view.view();
        if self.target != Some(view) || self.membership.current().primary(view) != self.id {
            self.refuse(RoleRefusal::OwnNewViewForViewLeft);
            return;
        }
        actions.push(Action::Broadcast { message: VerifiedMessage::NewView(new_view.clone()) });
        self.enter_view(new_view, now, actions);
    }

    /// VC15: accept a NEW-VIEW that edge verification found valid, if this replica may.
    pub(super) fn on_new_view(&mut self, new_view: Arc<VerifiedNewView>, now: Instant, actions: &mut Vec<Action>) {
        if let Err(reason) = self.may_accept(new_view.view()) {
            self.refuse(reason);
            return;
        }
        self.enter_view(new_view, now, actions);
    }

    /// VC15 (the part that depends on this replica): a NEW-VIEW for `w` may be accepted iff
    /// `w` is above the last view entered and not below the view-change target (VC4a).
    pub(super) fn may_accept(&self, view: View) -> Result<(), RoleRefusal> {
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
    pub(super) fn resend_waiting(&mut self, requests: Vec<Verified<Request>>, actions: &mut Vec<Action>) {
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
    pub(super) fn enter_view(&mut self, new_view: Arc<VerifiedNewView>, now: Instant, actions: &mut Vec<Action>) {
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
        self.claims.note_seen(order.max_seq, &self.backup);
        // VC14: fresh sequence numbers from max-s + 1.
        self.lead_or_follow(order.max_seq.next(), actions);
        // Messages that arrived for this view before the NEW-VIEW (VC6).
        let mut replay = Vec::new();
        for queue in self.later_views.values_mut() {
            let held = std::mem::take(queue);
            for message in held {
                match message.normal_case_view() {
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

    pub(super) fn on_batch_reply(
        &mut self,
        _reply: Verified<BatchReply>,
        batch: Arc<Batch>,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        self.hand_to_backup(BackupInput::Batch(batch), now, actions);
    }

    /// Tells the primary role whether this replica now leads its view, and from where it
    /// numbers (VC14).
    pub(super) fn lead_or_follow(&mut self, next_seq: SeqNum, actions: &mut Vec<Action>) {
        if self.is_primary() {
            let (view, low) = (self.view(), self.backup.low());
            let time_floor_us = self.backup.latest_batch_time_us().max(self.executor.time_us());
            self.leads = true;
            self.hand_to_primary(PrimaryInput::Lead { view, next_seq, low, time_floor_us }, actions);
        } else if self.leads {
            self.leads = false;
            self.hand_to_primary(PrimaryInput::Follow, actions);
        }
    }
}
