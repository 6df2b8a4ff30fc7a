//! The representative's duties for updates (docs/STEWARD.md W1, W2): a replica hands a
//! client's new update to its site's representative; a non-leader site's representative
//! forwards it to the leader site's (one WAN message, sent again only after
//! `forward_again_us`); the leader site's representative gathers updates into batches and
//! pre-prepares them inside the window.

use super::{SiteOutput, SiteRecord, SiteRefusal, SiteReplica, SiteTimer};
use crate::batch::{Batch, Command};
use crate::ids::{ClientId, Instant, PeerId, SeqNum, Timestamp};
use crate::messages::Request;
use crate::roles::executor::RequestStatus;
use crate::service::Service;
use crate::steward::messages::SiteMessage;
use crate::steward::sequencing::LocalVote;
use bulwark_crypto::threshold::ThresholdScheme;
use bulwark_crypto::Verified;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// Updates on their way to a batch.
#[derive(Debug, Default)]
pub(super) struct Relay {
    /// Leader-site representative: the newest update of each client waiting for a batch.
    pending: BTreeMap<ClientId, Verified<Request>>,
    /// The clients of `pending`, oldest first.
    arrival: VecDeque<ClientId>,
    /// Leader-site representative: updates in batches not executed yet.
    in_flight: BTreeSet<(ClientId, Timestamp)>,
    /// Non-leader representative: the newest update forwarded for each client, and when.
    forwarded: BTreeMap<ClientId, (Timestamp, Instant)>,
    /// Any replica: the newest update it handed to its representative for each client, not
    /// executed yet (it waits for it: `Local_T` runs; a new representative gets it again).
    handed: BTreeMap<ClientId, Verified<Request>>,
    batch_timer_set: bool,
}

impl Relay {
    /// The updates of an executed batch are done with.
    pub(super) fn executed(&mut self, updates: impl Iterator<Item = (ClientId, Timestamp)>) {
        for (client, timestamp) in updates {
            self.in_flight.remove(&(client, timestamp));
            if self.forwarded.get(&client).is_some_and(|(forwarded, _)| *forwarded <= timestamp) {
                self.forwarded.remove(&client);
            }
            if self.handed.get(&client).is_some_and(|handed| handed.timestamp <= timestamp) {
                self.handed.remove(&client);
            }
        }
    }

    /// Whether an update this replica relayed waits for execution.
    pub(super) fn outstanding(&self) -> bool {
        !self.in_flight.is_empty() || !self.forwarded.is_empty() || !self.pending.is_empty() || !self.handed.is_empty()
    }

    pub(super) fn held(&self) -> usize {
        self.pending.len() + self.in_flight.len() + self.forwarded.len() + self.handed.len()
    }

    /// As a former leader-site representative: the updates it held for batches, to hand to
    /// the new one; it forgets what it had in flight.
    pub(super) fn take_pending(&mut self) -> Vec<Verified<Request>> {
        self.arrival.clear();
        self.in_flight.clear();
        std::mem::take(&mut self.pending).into_values().collect()
    }

    /// GV2: updates forwarded to the old leader site may be forwarded to the new one at once.
    pub(super) fn forget_forwarded(&mut self) {
        self.forwarded.clear();
    }

    /// The updates handed to the representative and not executed.
    pub(super) fn handed_updates(&self) -> Vec<Verified<Request>> {
        self.handed.values().cloned().collect()
    }
}

impl<Svc: Service, S: ThresholdScheme> SiteReplica<Svc, S> {
    /// W2, as the leader-site representative: binds `batch` to `seq` in the current views.
    pub(super) fn pre_prepare(&mut self, seq: SeqNum, batch: Arc<Batch>, out: &mut Vec<SiteOutput<S>>) {
        let (gv, lv) = self.views();
        // W2: one batch per sequence number and views, also for a representative that
        // pre-prepared before a restart and was then given a union binding another.
        if self.local.pre_prepared_in((gv, lv), seq).is_some_and(|digest| digest != batch.digest()) {
            tracing::warn!(site = %self.site, replica = %self.id, seq = seq.0, "not pre-preparing a second batch");
            return;
        }
        let vote = self.sign_vote(LocalVote { gv, lv, seq, digest: batch.digest(), replica: self.id });
        out.push(SiteOutput::Persist(SiteRecord::Voted { vote: vote.clone(), batch: Some(batch.clone()) }));
        out.push(SiteOutput::ToSite(SiteMessage::PrePrepare { vote: vote.signed().clone(), batch: batch.clone() }));
        let now = self.now;
        self.on_pre_prepare(vote, batch, now, out);
    }

    /// W1: a new update from a client of this site.
    pub(super) fn route_update(&mut self, request: Verified<Request>, out: &mut Vec<SiteOutput<S>>) {
        let representative = self.representative_of(self.site);
        if representative.replica != self.id {
            let client = request.client();
            let newer = self.relay.handed.get(&client).is_none_or(|handed| handed.timestamp <= request.timestamp);
            let room =
                self.relay.handed.len() < self.params.pending_updates_max || self.relay.handed.contains_key(&client);
            if newer && room {
                self.relay.handed.insert(client, request.clone());
            }
            out.push(SiteOutput::To { peer: representative, message: SiteMessage::Update(request) });
        } else if self.at_leader_site() {
            self.enqueue(request, out);
        } else {
            self.forward(request, out);
        }
    }

    /// W1: an update relayed by a replica of this site, or forwarded by another site's
    /// representative to this, the leader site's.
    pub(super) fn on_update(&mut self, from: PeerId, request: Verified<Request>, out: &mut Vec<SiteOutput<S>>) {
        if !self.is_representative() {
            return;
        }
        if from.cluster != self.site && !self.at_leader_site() {
            out.push(SiteOutput::Refused(SiteRefusal::UnknownPeer));
            return;
        }
        if self.executor.request_status(&request) != RequestStatus::New {
            return;
        }
        if self.at_leader_site() {
            self.enqueue(request, out);
        } else {
            self.forward(request, out);
        }
    }

    /// To the leader site's representative, unless forwarded lately.
    fn forward(&mut self, request: Verified<Request>, out: &mut Vec<SiteOutput<S>>) {
        let (client, timestamp) = (request.client(), request.timestamp);
        let recent = self.relay.forwarded.get(&client).is_some_and(|(forwarded, at)| {
            *forwarded >= timestamp && self.now.0.saturating_sub(at.0) < self.params.forward_again_us
        });
        if recent {
            return;
        }
        if self.relay.forwarded.len() >= self.params.pending_updates_max && !self.relay.forwarded.contains_key(&client)
        {
            out.push(SiteOutput::Refused(SiteRefusal::TooManyPending));
            return;
        }
        self.relay.forwarded.insert(client, (timestamp, self.now));
        let leader = self.representative_of(self.leader_site());
        out.push(SiteOutput::To { peer: leader, message: SiteMessage::Update(request) });
    }

    /// W2: into the next batch.
    fn enqueue(&mut self, request: Verified<Request>, out: &mut Vec<SiteOutput<S>>) {
        let (client, timestamp) = (request.client(), request.timestamp);
        if self.relay.in_flight.contains(&(client, timestamp)) {
            return;
        }
        match self.relay.pending.get(&client) {
            Some(waiting) if waiting.timestamp >= timestamp => return,
            Some(_) => {}
            None if self.relay.pending.len() >= self.params.pending_updates_max => {
                out.push(SiteOutput::Refused(SiteRefusal::TooManyPending));
                return;
            }
            None => self.relay.arrival.push_back(client),
        }
        self.relay.pending.insert(client, request);
        self.propose(false, out);
    }

    pub(super) fn on_batch_timer(&mut self, out: &mut Vec<SiteOutput<S>>) {
        self.relay.batch_timer_set = false;
        self.propose(true, out);
    }

    /// W2: pre-prepares full batches while the window has room, and (`partial`: the batch
    /// timer fired) a last batch that is not full; arms the batch timer for what waits.
    pub(super) fn propose(&mut self, partial: bool, out: &mut Vec<SiteOutput<S>>) {
        if !self.is_representative() || !self.at_leader_site() || !self.local.is_constrained(self.views()) {
            return;
        }
        let size = self.params.batch_size_max;
        while self.relay.pending.len() >= size || (partial && !self.relay.pending.is_empty()) {
            let Some(seq) = self.local.next_seq(self.aru()) else { break };
            let mut requests = Vec::with_capacity(size);
            while requests.len() < size {
                let Some(client) = self.relay.arrival.pop_front() else { break };
                if let Some(request) = self.relay.pending.remove(&client) {
                    self.relay.in_flight.insert((client, request.timestamp));
                    requests.push(request);
                }
            }
            let batch = Arc::new(Batch::timed(requests.into_iter().map(Command::Request).collect(), self.now.0));
            self.pre_prepare(seq, batch, out);
        }
        if !self.relay.pending.is_empty() && !self.relay.batch_timer_set {
            self.relay.batch_timer_set = true;
            let at = Instant(self.now.0 + self.params.batch_delay_us);
            out.push(SiteOutput::SetTimer { timer: SiteTimer::Batch, at });
        }
    }
}
