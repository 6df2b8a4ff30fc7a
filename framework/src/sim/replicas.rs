//! The replica instances: delivering an input to one, carrying out what it answers, and its
//! crashes and restarts. The checker observes every correct replica's step here.

use super::byzantine::{ByzantineAction, ByzantineReplica};
use super::hops::Hop;
use super::{replica_key, Endpoint, Event, Payload, Simulation};
use crate::ids::{Instant, ReplicaId};
use crate::membership::MembershipHandle;
use crate::messages::VerifiedMessage;
use crate::roles::node::Roles;
use crate::roles::replica::{Footprint, Input, Replica};
use crate::roles::{Action, TimerKind};
use crate::service::Service;

pub(super) enum Node<S: Service> {
    Correct(Box<Replica<S>>),
    Byzantine(Box<ByzantineReplica>),
    /// An instance of a twinned replica: correct code, unchecked.
    Twin(Box<Replica<S>>),
    Crashed,
}

impl<S: Service> Simulation<S> {
    pub(super) fn node_mut(&mut self, node: Endpoint) -> Option<&mut Node<S>> {
        match node {
            Endpoint::Replica(id) => self.nodes.get_mut(&id),
            Endpoint::Twin(id) => self.twin_nodes.get_mut(&id),
            Endpoint::Client(_) | Endpoint::ByzantineClient(_) => None,
        }
    }

    pub(super) fn deliver_to_replica(&mut self, node: Endpoint, input: Input) {
        let now = self.now;
        let (Endpoint::Replica(id) | Endpoint::Twin(id)) = node else {
            return;
        };
        // Field by field, not through `node_mut`, so the checker stays borrowable below.
        let target = match node {
            Endpoint::Twin(_) => self.twin_nodes.get_mut(&id),
            _ => self.nodes.get_mut(&id),
        };
        let Some(target) = target else {
            return;
        };
        match target {
            Node::Crashed => {}
            Node::Twin(replica) => {
                let actions = replica.handle(input, now);
                self.carry_out(node, actions);
            }
            Node::Correct(replica) => {
                let executed_before = replica.last_executed();
                let mut actions = replica.handle(input, now);
                if replica.last_executed() != executed_before {
                    super::history::check(&mut self.history, id, replica.service(), now);
                }
                let dying = self.dying.remove(&id);
                if dying {
                    // Torn: the records of this step reach the disk, nothing reaches the wire.
                    actions.retain(|a| matches!(a, Action::Persist(_) | Action::Event(_)));
                }
                let (view, stable, executed) = (replica.view(), replica.stable(), replica.last_executed());
                let footprint = match self.roles_apart.get(&node) {
                    Some(roles) => replica.footprint().with_roles_apart(roles.footprint()),
                    None => replica.footprint(),
                };
                self.checker.observe_replica(id, &actions, view, stable, executed);
                self.note_footprint(footprint);
                self.carry_out(node, actions);
                if dying {
                    self.trace.update(b"torn-crash").update_u64(id.0 as u64);
                    self.crash(id);
                }
            }
            Node::Byzantine(byzantine) => {
                let actions = byzantine.handle(input, now);
                for action in actions {
                    match action {
                        ByzantineAction::Send { to, message } => {
                            self.send(Endpoint::Replica(id), Endpoint::Replica(to), Payload::Raw(message))
                        }
                        ByzantineAction::SetTimer { timer, at } => self.set_timer(node, timer, at),
                    }
                }
            }
        }
    }

    /// A crashed replica comes back from its durable records.
    pub(super) fn restart(&mut self, id: ReplicaId) {
        if self.dying.remove(&id) {
            // A torn crash waits for the replica's next step; with no step before the
            // restart is due, the crash happens now, between steps (a clean one). Without
            // this the replica would crash at its first step after the restart and never
            // come back.
            self.trace.update(b"crash").update_u64(id.0 as u64);
            self.crash(id);
        }
        if !matches!(self.nodes.get(&id), Some(Node::Crashed)) {
            return;
        }
        self.trace.update(b"restart").update_u64(id.0 as u64);
        self.restarts_done += 1;
        // Timers set before the crash must not reach the new incarnation.
        for kind in [TimerKind::Batch, TimerKind::Status, TimerKind::Request, TimerKind::ViewChange] {
            *self.timer_generations.entry((Endpoint::Replica(id), kind)).or_default() += 1;
        }
        let recovered = self.stores.get(&id).cloned().unwrap_or_default();
        let key = replica_key(self.config.seed, id);
        let handle = MembershipHandle::new((*self.membership).clone());
        let (replica, actions) = Replica::recover(id, key, handle, (self.make_service)(), recovered, self.now);
        // Fresh roles: what the recovery tells them is among `actions`.
        self.roles_apart.insert(Endpoint::Replica(id), Roles::new(id, replica.key(), replica.membership()));
        self.checker.observe_restart(id);
        self.checker.observe_replica(id, &actions, replica.view(), replica.stable(), replica.last_executed());
        self.nodes.insert(id, Node::Correct(Box::new(replica)));
        self.carry_out(Endpoint::Replica(id), actions);
    }

    /// Replica `id` stops, and its roles run apart with it.
    pub(super) fn crash(&mut self, id: ReplicaId) {
        let node = Endpoint::Replica(id);
        self.nodes.insert(id, Node::Crashed);
        self.roles_apart.remove(&node);
        *self.incarnations.entry(node).or_default() += 1;
    }

    fn note_footprint(&mut self, footprint: Footprint) {
        let peak = &mut self.peak;
        peak.log_slots = peak.log_slots.max(footprint.log_slots);
        peak.future_messages = peak.future_messages.max(footprint.future_messages);
        peak.checkpoint_votes = peak.checkpoint_votes.max(footprint.checkpoint_votes);
        peak.checkpoint_images = peak.checkpoint_images.max(footprint.checkpoint_images);
        peak.queued_requests = peak.queued_requests.max(footprint.queued_requests);
        peak.in_flight_batches = peak.in_flight_batches.max(footprint.in_flight_batches);
        peak.clients = peak.clients.max(footprint.clients);
        peak.later_view_messages = peak.later_view_messages.max(footprint.later_view_messages);
        peak.waiting_requests = peak.waiting_requests.max(footprint.waiting_requests);
        peak.view_changes_held = peak.view_changes_held.max(footprint.view_changes_held);
        peak.transfer_bytes = peak.transfer_bytes.max(footprint.transfer_bytes);
        if self.delivered.is_multiple_of(4096) {
            let floor = self.correct_replicas().map(Replica::stable).min().unwrap_or_default();
            self.checker.collect_garbage(floor);
        }
        self.peak_checker = self.peak_checker.max(self.checker.footprint());
    }

    pub(super) fn set_timer(&mut self, node: Endpoint, timer: TimerKind, at: Instant) {
        let generation = self.timer_generations.entry((node, timer)).or_default();
        *generation += 1;
        let generation = *generation;
        self.schedule(at.max(self.now), Event::ReplicaTimer { node, timer, generation });
    }

    pub(super) fn carry_out(&mut self, node: Endpoint, actions: Vec<Action>) {
        let (Endpoint::Replica(from) | Endpoint::Twin(from)) = node else {
            return;
        };
        // With a CPU model, what this step sends leaves once the replica has signed it.
        self.departure = self.charge_signatures(node, from, &actions);
        for action in actions {
            match action {
                Action::Send { to, message } => {
                    if self.blacked_out(from, to, &message) {
                        continue;
                    }
                    let payload = self.encode(&message);
                    self.send(node, Endpoint::Replica(to), payload);
                }
                Action::Broadcast { message } => {
                    let payload = self.encode(&message);
                    let members: Vec<ReplicaId> = self.nodes.keys().copied().collect();
                    for to in members {
                        if to != from && !self.blacked_out(from, to, &message) {
                            self.send(node, Endpoint::Replica(to), payload.clone());
                        }
                    }
                }
                Action::Reply { client, reply } => {
                    let index = self.clients.iter().position(|c| c.client.id() == client);
                    if let Some(index) = index {
                        let payload = self.encode(&VerifiedMessage::Reply(reply));
                        self.send(node, Endpoint::Client(index), payload);
                    }
                }
                Action::SetTimer { timer, at } => self.set_timer(node, timer, at),
                // Twins never restart: their records are not kept.
                Action::Persist(record) if node == Endpoint::Replica(from) => {
                    if let Some(store) = self.stores.get_mut(&from) {
                        store.apply(record);
                    }
                }
                Action::Persist(_) => {}
                Action::ToCheckpoints(input) => self.hop(node, Hop::ToCollector(input)),
                Action::ToPrimary(input) => self.hop(node, Hop::ToPrimary(input)),
                Action::ToViewChanger(input) => self.hop(node, Hop::ToViewChanger(input)),
                Action::Report { .. } | Action::Event(_) => {}
            }
        }
        self.departure = None;
    }
}
