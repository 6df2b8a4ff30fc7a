//! Status-driven retransmission (as in Castro's BFT library): a replica that knows of
//! sequence numbers it has not executed and made no progress for a status interval
//! multicasts STATUS with what it has of each; its peers answer with what it lacks:
//! pre-prepares, votes, commit certificates, checkpoint proofs, the NEW-VIEW that ended
//! its view. Each answer is paid from the asking peer's budget ([`super::budget`]).

use super::*;

/// Every this many status ticks a replica sends STATUS even when not stuck.
const STATUS_HEARTBEAT_TICKS: u64 = 10;

impl<S: Service> Replica<S> {
    /// Periodic: retry state transfer; if stuck, tell peers what this replica has.
    pub(super) fn on_status_tick(&mut self, now: Instant, actions: &mut Vec<Action>) {
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
        let stuck = (self.claims.highest_seen() > last_executed || rerun.is_some())
            && last_executed == self.executed_at_last_tick;
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
        let last = self.claims.highest_seen().0.max(last_executed.0).min(first_slot.0.saturating_add(window - 1));
        let slots = (first_slot.0..=last).map(|s| self.backup.progress(SeqNum(s))).collect();
        let status = self.membership.sign(
            Status { replica: self.id, view: self.view(), stable: self.stable(), last_executed, first_slot, slots },
            &self.key,
        );
        self.metrics.status_sent += 1;
        actions.push(Action::Broadcast { message: VerifiedMessage::Status(status) });
    }

    /// Answer a stuck peer with what it lacks (rate-limited per peer).
    pub(super) fn on_status(&mut self, status: Verified<Status>, now: Instant, actions: &mut Vec<Action>) {
        self.claims.note_claim(status.replica, status.last_executed, &self.backup);
        if let Some(offset) = status.slots.iter().rposition(|p| p.has_pre_prepare) {
            // The slots start at `first_slot` (before `last_executed` when re-running after
            // a view change). Saturating: it is the peer's word, and may be any number.
            let seq = SeqNum(status.first_slot.0.saturating_add(offset as u64));
            if status.view == self.view() && status.replica == self.membership.current().primary(status.view) {
                // The primary is the source of pre-prepares: one it holds and a backup
                // lacks (lost on the way to every backup) is enough to ask for.
                self.claims.note_seen(seq, &self.backup);
            } else {
                self.claims.note_claim(status.replica, seq, &self.backup);
            }
        }
        if !self.budgets.statuses.take(status.replica, now) {
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
        // keep it from even holding most of it. Sending the window anyway would turn a small
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

    /// Keeps the pre-prepares of `retransmissions` within `peer`'s budget (see
    /// [`Budgets::pre_prepares`]); the rest are dropped and counted as paced.
    pub(super) fn budgeted_pre_prepares(
        &mut self,
        peer: ReplicaId,
        retransmissions: Vec<VerifiedMessage>,
        now: Instant,
    ) -> Vec<VerifiedMessage> {
        let mut kept = Vec::with_capacity(retransmissions.len());
        for message in retransmissions {
            if matches!(message, VerifiedMessage::PrePrepare(..)) && !self.budgets.pre_prepares.take(peer, now) {
                self.metrics.retransmissions_paced += 1;
                continue;
            }
            kept.push(message);
        }
        kept
    }

    /// Re-ask for batches named by the NEW-VIEW that have not arrived (on the status tick).
    pub(super) fn request_missing_batches(&mut self, actions: &mut Vec<Action>) {
        let missing = self.backup.missing_batches();
        if !missing.is_empty() {
            let request = self.membership.sign(BatchRequest { replica: self.id, digests: missing }, &self.key);
            actions.push(Action::Broadcast { message: VerifiedMessage::BatchRequest(request) });
        }
    }
}
