//! Chunked state transfer to a stable checkpoint (ST1–ST5): a replica whose next batch
//! was garbage-collected by a stable checkpoint fetches the checkpoint's image from the
//! signers of its proof ([`crate::roles::state_transfer`]) and installs it; and whether a
//! replica whose request timer fired is behind rather than facing a faulty primary (PF4).

use super::*;

impl<S: Service> Replica<S> {
    /// ST1: fetch the image of the stable checkpoint from the signers of its proof.
    pub(super) fn ensure_transfer(&mut self, now: Instant, actions: &mut Vec<Action>) {
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

    pub(super) fn start_transfer(&mut self, stable: &StableCheckpoint, now: Instant, actions: &mut Vec<Action>) {
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

    pub(super) fn run_fetch_steps(&mut self, steps: Vec<FetchStep>, now: Instant, actions: &mut Vec<Action>) {
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
    pub(super) fn install_image(&mut self, image: Vec<u8>, now: Instant, actions: &mut Vec<Action>) {
        let Some(fetch) = self.transfer.take() else {
            return;
        };
        let seq = fetch.seq();
        self.hand_to_executor(ExecutorInput::Install { seq, image }, now, actions);
    }

    /// ST4: a chunk of the image under transfer, or (ST3) of the newer stable checkpoint a
    /// source moved on to, which retargets the transfer.
    pub(super) fn on_state_reply(&mut self, reply: Verified<StateReply>, now: Instant, actions: &mut Vec<Action>) {
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
    /// for them would deadlock the cluster.
    pub(super) fn catching_up_at_request_timer(&mut self) -> bool {
        let last_executed = self.last_executed();
        // The first firing has nothing to compare with: it gets the benefit of the doubt.
        let progressed = self.executed_at_request_timer.is_none_or(|before| last_executed > before);
        self.executed_at_request_timer = Some(last_executed);
        self.transfer.is_some()
            || last_executed < self.stable()
            || (progressed
                && self.claims.members_checkpointed_past(last_executed) >= self.membership.current().weak_quorum())
    }
}
