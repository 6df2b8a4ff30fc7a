//! Serving what peers and clients ask of a replica outside the normal case: batches by
//! digest (VC16), chunks of checkpoint images (ST3), and REPORTs answering INQUIRY. Each
//! is paid from the asker's budget or rate-limited, so that asking costs the replica
//! little however often it is asked.

use super::*;

impl<S: Service> Replica<S> {
    /// Serve a batch by digest (VC16), rate-limited per peer.
    pub(super) fn on_batch_request(
        &mut self,
        request: Verified<BatchRequest>,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let batches: Vec<Arc<Batch>> = request.digests.iter().filter_map(|d| self.backup.batch_with(*d)).collect();
        if batches.is_empty() {
            return;
        }
        // At most L batches in an answer (the request's digests are bounded at the edge).
        if !self.budgets.batches.take(request.replica, now) {
            self.refuse(RoleRefusal::BatchRequestRateLimit);
            return;
        }
        for batch in batches {
            let reply = self.membership.sign(BatchReply { replica: self.id, digest: batch.digest() }, &self.key);
            actions.push(Action::Send { to: request.replica, message: VerifiedMessage::BatchReply(reply, batch) });
        }
    }

    /// Serve one chunk of a checkpoint image: of the one asked for, or of a newer stable
    /// one (ST3). A per-peer budget bounds what a peer can make this replica send.
    pub(super) fn on_state_request(
        &mut self,
        request: Verified<StateRequest>,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        if !self.budgets.chunks.take(request.replica, now) {
            self.refuse(RoleRefusal::StateRequestRateLimit);
            return;
        }
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

    /// Answer an INQUIRY with where this replica is. The state digest is recomputed at
    /// most once per status interval (it costs a snapshot); in between the cached one for
    /// the same last executed sequence number is reused, so inquiries cannot make a replica
    /// snapshot its state at line rate.
    pub(super) fn on_inquiry(&mut self, inquiry: Verified<Inquiry>, now: Instant, actions: &mut Vec<Action>) {
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
                diverged_at: self.diverged_at,
            },
            &self.key,
        );
        actions.push(Action::Report { client, report });
    }
}
