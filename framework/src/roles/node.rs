//! A replica with its roles run apart, wired together with no delay: what rule tests and
//! fuzzers drive.
//!
//! The runtime runs the replica, its primary role, its checkpoint collector and its
//! view-changer as four actors, and the simulator as four nodes with a drawn delay on each
//! hop. [`Node`] is the same wiring, synchronous: whatever the replica hands a role
//! ([`Action::ToPrimary`], [`Action::ToCheckpoints`], [`Action::ToViewChanger`]) is handled
//! by that role at once, and what the role answers goes back to the replica at once, in
//! order. So a test exercises exactly the messages production exchanges between the roles,
//! only without the interleaving (which the simulator explores).

use crate::durable::Recovered;
use crate::ids::{ClientId, Instant, ReplicaId, SeqNum};
use crate::membership::MembershipHandle;
use crate::roles::checkpoint::{CheckpointCollector, CollectorOutput};
use crate::roles::primary::{PrimaryInput, PrimaryOutput, PrimaryRole};
use crate::roles::replica::{Footprint, Input, Replica};
use crate::roles::view_change::{ViewChanger, ViewChangerInput, ViewChangerOutput};
use crate::roles::{Action, Role, TimerKind};
use crate::service::Service;
use bulwark_crypto::KeyPair;
use std::collections::VecDeque;
use std::sync::Arc;

/// The roles of one replica that run apart from it.
#[derive(Debug)]
pub struct Roles {
    pub primary: PrimaryRole,
    pub collector: CheckpointCollector,
    pub view_changer: ViewChanger,
}

impl Roles {
    /// The roles of replica `id`, sharing its membership handle and key. None leads
    /// anything until its replica says so.
    pub fn new(id: ReplicaId, key: Arc<KeyPair>, membership: &MembershipHandle) -> Self {
        Roles {
            primary: PrimaryRole::new(membership.clone(), key.clone(), None, SeqNum(1)),
            collector: CheckpointCollector::new(membership.clone()),
            view_changer: ViewChanger::new(id, membership.clone(), key),
        }
    }

    /// What the roles hold, for a replica's footprint: CHECKPOINT messages, queued requests,
    /// batches in flight, waiting requests, VIEW-CHANGEs.
    pub fn footprint(&self) -> RolesFootprint {
        RolesFootprint {
            checkpoint_votes: self.collector.pending_len(),
            queued_requests: self.primary.queue_len(),
            in_flight_batches: self.primary.in_flight_len(),
            waiting_requests: self.view_changer.waiting_len(),
            view_changes_held: self.view_changer.view_changes_held(),
        }
    }
}

/// Sizes of what a replica's roles hold (see [`Roles::footprint`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RolesFootprint {
    pub checkpoint_votes: usize,
    pub queued_requests: usize,
    pub in_flight_batches: usize,
    pub waiting_requests: usize,
    pub view_changes_held: usize,
}

/// A replica and its roles, wired with no delay (see the module documentation).
#[derive(Debug)]
pub struct Node<S: Service> {
    pub replica: Replica<S>,
    pub roles: Roles,
    /// Whether what the replica hands its primary role stays in the actions instead.
    primary_held: bool,
}

/// What one of a replica's roles says, on its way back to the replica.
enum Answer {
    Primary(PrimaryOutput),
    Checkpoints(CollectorOutput),
    ViewChanger(ViewChangerOutput),
}

impl<S: Service> Node<S> {
    /// Replica `id` with its roles.
    pub fn new(id: ReplicaId, key: KeyPair, membership: MembershipHandle, service: S) -> Self {
        let key = Arc::new(key);
        let roles = Roles::new(id, key.clone(), &membership);
        Node { replica: Replica::with_key(id, key, membership, service), roles, primary_held: false }
    }

    /// Replica `id` back from its durable records ([`Replica::recover`]), with fresh roles
    /// that hear what the recovery tells them; returns the node and the remaining actions.
    pub fn recover(
        id: ReplicaId,
        key: KeyPair,
        membership: MembershipHandle,
        service: S,
        recovered: Recovered,
        now: Instant,
    ) -> (Self, Vec<Action>) {
        let key = Arc::new(key);
        let roles = Roles::new(id, key.clone(), &membership);
        let (replica, actions) = Replica::recover_with_key(id, key, membership, service, recovered, now);
        let mut node = Node { replica, roles, primary_held: false };
        let actions = node.route(actions, now);
        (node, actions)
    }

    /// From now on, leaves what the replica hands its primary role ([`Action::ToPrimary`]) in
    /// the actions for the caller to deliver to `roles.primary` itself, late or never, as a
    /// slow hop would; the primary's answers go in through [`Input::Primary`].
    pub fn hold_primary(&mut self) {
        self.primary_held = true;
    }

    /// Whether `client` holds its whole window at this replica, by its primary role's
    /// count or its view-changer's: the runtime drops its next request unverified.
    pub fn client_saturated(&self, client: ClientId, now: Instant) -> bool {
        self.roles.primary.client_saturated(client, now) || self.roles.view_changer.client_saturated(client, now)
    }

    /// What the replica and its roles hold together.
    pub fn footprint(&self) -> Footprint {
        self.replica.footprint().with_roles_apart(self.roles.footprint())
    }

    /// The replica's first actions ([`Replica::start`]), routed.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        let actions = self.replica.start(now);
        self.route(actions, now)
    }

    /// Handles one input at `now`: a timer goes to the role it belongs to, anything else
    /// to the replica; then whatever the replica hands its roles is handled, and their
    /// answers go back to it, until nothing is left to route. Returns the actions for the
    /// outside world (sends, replies, timers, records, events), in order.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Action> {
        match input {
            Input::Timer(TimerKind::Batch) => {
                let answers = self.primary_step(PrimaryInput::BatchTimer, now);
                self.answer_all(answers, now)
            }
            Input::Timer(timer @ (TimerKind::Request | TimerKind::ViewChange)) => {
                let answers = self.view_changer_step(ViewChangerInput::Timer(timer), now);
                self.answer_all(answers, now)
            }
            input => {
                let actions = self.replica.handle(input, now);
                self.route(actions, now)
            }
        }
    }

    fn route(&mut self, actions: Vec<Action>, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        self.route_into(actions, now, &mut out);
        out
    }

    /// Carries the replica's hand-overs to its roles and their answers back, depth first
    /// so that everything keeps the order it was decided in.
    fn route_into(&mut self, actions: Vec<Action>, now: Instant, out: &mut Vec<Action>) {
        for action in actions {
            let answers = match action {
                Action::ToPrimary(input) if !self.primary_held => self.primary_step(input, now),
                Action::ToCheckpoints(input) => {
                    self.roles.collector.handle(input, now).into_iter().map(Answer::Checkpoints).collect()
                }
                Action::ToViewChanger(input) => self.view_changer_step(input, now),
                action => {
                    out.push(action);
                    continue;
                }
            };
            self.answer_into(answers, now, out);
        }
    }

    fn answer_all(&mut self, answers: VecDeque<Answer>, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        self.answer_into(answers, now, &mut out);
        out
    }

    fn answer_into(&mut self, answers: VecDeque<Answer>, now: Instant, out: &mut Vec<Action>) {
        for answer in answers {
            let input = match answer {
                Answer::Primary(PrimaryOutput::SetBatchTimer(at)) => {
                    out.push(Action::SetTimer { timer: TimerKind::Batch, at });
                    continue;
                }
                Answer::ViewChanger(ViewChangerOutput::SetTimer(timer, at)) => {
                    out.push(Action::SetTimer { timer, at });
                    continue;
                }
                Answer::Primary(output) => Input::Primary(output),
                Answer::Checkpoints(output) => Input::Checkpoints(output),
                Answer::ViewChanger(output) => Input::ViewChanger(output),
            };
            let actions = self.replica.handle(input, now);
            self.route_into(actions, now, out);
        }
    }

    fn primary_step(&mut self, input: PrimaryInput, now: Instant) -> VecDeque<Answer> {
        self.roles.primary.handle(input, now).into_iter().map(Answer::Primary).collect()
    }

    fn view_changer_step(&mut self, input: ViewChangerInput, now: Instant) -> VecDeque<Answer> {
        self.roles.view_changer.handle(input, now).into_iter().map(Answer::ViewChanger).collect()
    }
}

impl<S: Service> Role for Node<S> {
    type Input = Input;
    type Output = Action;

    fn handle(&mut self, input: Input, now: Instant) -> Vec<Action> {
        Node::handle(self, input, now)
    }
}

impl<S: Service> std::ops::Deref for Node<S> {
    type Target = Replica<S>;

    fn deref(&self) -> &Replica<S> {
        &self.replica
    }
}
