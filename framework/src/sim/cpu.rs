//! The replicas' CPU, when a run models it ([`SimConfig::cpu`](super::SimConfig::cpu)):
//! what signing and verifying cost each replica instance, and the queue that cost builds.
//!
//! The model: a replica instance handles one input at a time. An input that reaches it
//! while it is busy waits until it is free (the event is scheduled again at that instant,
//! so the run stays deterministic and inputs keep their order). Handling a delivered
//! message costs `ed25519_verify_us` per signature checked at the edge: one per message,
//! plus one per client request inside a PRE-PREPARE or a batch reply when clients sign
//! (the certificates inside VIEW-CHANGE and NEW-VIEW messages are not counted: the runs
//! this model is for have no view change). Then every distinct signature the step puts
//! on the wire costs `ed25519_sign_us`: a broadcast is one signature, replies of one
//! executed batch share their batch's reply-root signature, and what the replica forwards
//! on someone else's signature costs nothing. A message the replica sends again (a
//! retransmission) is charged again, since a step cannot tell. What the step sends leaves
//! once all of it is done.
//!
//! The inputs of a replica instance are the messages delivered to it, its status timer,
//! and what its roles run apart hand back. Those roles (primary, view-changer, checkpoint
//! collector) are actors of their own in the runtime: their timers and the hops to them
//! neither wait for the replica nor cost it anything. Byzantine replicas are charged for
//! what they verify; their sends leave at once. Clients are not modelled.

use super::network::Endpoint;
use super::wan::CpuCosts;
use super::{Event, Simulation};
use crate::config::ClientAuth;
use crate::ids::{Instant, ReplicaId};
use crate::membership::Membership;
use crate::messages::{ReplyProof, VerifiedMessage};
use crate::roles::{Action, TimerKind};
use crate::service::Service;
use std::collections::BTreeMap;
use std::time::Duration;

/// Each replica instance's CPU during a run.
pub(super) struct CpuState {
    costs: CpuCosts,
    /// When each instance is done with what it handled so far.
    busy_until: BTreeMap<Endpoint, Instant>,
    /// Total time each instance spent on cryptography.
    busy_us: BTreeMap<Endpoint, u64>,
}

impl CpuState {
    pub(super) fn new(costs: CpuCosts) -> Self {
        CpuState { costs, busy_until: BTreeMap::new(), busy_us: BTreeMap::new() }
    }

    /// Charges `instance` `cost_us` from `now` on (or from when it is free): the instant
    /// it is done.
    fn charge(&mut self, instance: Endpoint, now: Instant, cost_us: u64) -> Instant {
        let busy_until = self.busy_until.entry(instance).or_insert(Instant::ZERO);
        *busy_until = (*busy_until).max(now) + Duration::from_micros(cost_us);
        *self.busy_us.entry(instance).or_default() += cost_us;
        *busy_until
    }
}

impl<S: Service> Simulation<S> {
    /// When `event` is an input to a replica instance that is busy: the instant to handle
    /// it instead of now.
    pub(super) fn deferred_until(&self, event: &Event) -> Option<Instant> {
        let cpu = self.cpu.as_ref()?;
        let instance = match event {
            Event::Deliver { to: to @ (Endpoint::Replica(_) | Endpoint::Twin(_)), .. } => *to,
            Event::ReplicaTimer { node, timer, .. }
                if *timer == TimerKind::Status || !self.roles_apart.contains_key(node) =>
            {
                *node
            }
            Event::RoleHop { node, hop, .. } if hop.reaches_replica() => *node,
            _ => return None,
        };
        cpu.busy_until.get(&instance).copied().filter(|&busy_until| busy_until > self.now)
    }

    /// `instance` checks the signatures of `message`, delivered now.
    pub(super) fn charge_verification(&mut self, instance: Endpoint, message: &VerifiedMessage) {
        let now = self.now;
        let client_auth = self.membership.params.client_auth;
        let Some(cpu) = self.cpu.as_mut() else { return };
        if let Endpoint::Replica(_) | Endpoint::Twin(_) = instance {
            let cost_us = cpu.costs.ed25519_verify_us * signatures_checked(message, client_auth);
            cpu.charge(instance, now, cost_us);
        }
    }

    /// Replica instance `instance` (replica `id`) signs what `actions` send: the instant
    /// they leave, or `None` when the run does not model CPU.
    pub(super) fn charge_signatures(
        &mut self,
        instance: Endpoint,
        id: ReplicaId,
        actions: &[Action],
    ) -> Option<Instant> {
        let now = self.now;
        let cpu = self.cpu.as_mut()?;
        let mut signatures: Vec<[u8; 64]> = Vec::new();
        for action in actions {
            let signature = match action {
                Action::Send { message, .. } | Action::Broadcast { message } => {
                    own_signature(message, id, &self.membership)
                }
                Action::Reply { reply, .. } => match reply.proof() {
                    ReplyProof::Signature(signature) => Some(signature.to_bytes()),
                    ReplyProof::Batch { root, .. } => Some(root.signature.to_bytes()),
                    ReplyProof::Connection => None,
                },
                _ => None,
            };
            if let Some(signature) = signature.filter(|s| !signatures.contains(s)) {
                signatures.push(signature);
            }
        }
        Some(cpu.charge(instance, now, cpu.costs.ed25519_sign_us * signatures.len() as u64))
    }

    /// Each replica's (first instance's) time spent on cryptography.
    pub(super) fn cpu_busy_us(&self) -> BTreeMap<ReplicaId, u64> {
        let Some(cpu) = self.cpu.as_ref() else { return BTreeMap::new() };
        cpu.busy_us
            .iter()
            .filter_map(|(instance, busy_us)| match instance {
                Endpoint::Replica(id) => Some((*id, *busy_us)),
                _ => None,
            })
            .collect()
    }
}

/// The signatures a replica checks to accept `message`.
fn signatures_checked(message: &VerifiedMessage, client_auth: ClientAuth) -> u64 {
    let signed_requests = client_auth == ClientAuth::Signed;
    match message {
        VerifiedMessage::PrePrepare(_, batch) | VerifiedMessage::BatchReply(_, batch) if signed_requests => {
            1 + batch.requests().count() as u64
        }
        VerifiedMessage::Request(_) | VerifiedMessage::Inquiry(_) if !signed_requests => 0,
        _ => 1,
    }
}

/// The signature replica `id` made on `message`, if it made one (not a client's request,
/// nor another replica's message forwarded).
fn own_signature(message: &VerifiedMessage, id: ReplicaId, membership: &Membership) -> Option<[u8; 64]> {
    if message.replica_sender(|view| membership.primary(view)) != Some(id) {
        return None;
    }
    let signature = match message {
        VerifiedMessage::Request(_) | VerifiedMessage::Inquiry(_) => return None,
        VerifiedMessage::Reply(reply) => match reply.proof() {
            ReplyProof::Signature(signature) => *signature,
            ReplyProof::Batch { root, .. } => root.signature,
            ReplyProof::Connection => return None,
        },
        VerifiedMessage::PrePrepare(m, _) => m.signed().signature,
        VerifiedMessage::Prepare(m) => m.signed().signature,
        VerifiedMessage::Commit(m) => m.signed().signature,
        VerifiedMessage::Checkpoint(m) => m.signed().signature,
        VerifiedMessage::Status(m) => m.signed().signature,
        VerifiedMessage::StateRequest(m) => m.signed().signature,
        VerifiedMessage::StateReply(m) => m.signed().signature,
        VerifiedMessage::Report(m) => m.signed().signature,
        VerifiedMessage::ViewChange(m) => m.message.signed().signature,
        VerifiedMessage::NewView(m) => m.message.signed().signature,
        VerifiedMessage::BatchRequest(m) => m.signed().signature,
        VerifiedMessage::BatchReply(m, _) => m.signed().signature,
    };
    Some(signature.to_bytes())
}
