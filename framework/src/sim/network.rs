//! The simulated network: who can send to whom, what a message costs on the way (drops,
//! delays, duplicates, isolations, partitions, blackouts), and the edge checks a delivered
//! message passes. Every random draw of the network is made here.

use super::config::Instance;
use super::{Event, Simulation};
use crate::ids::{Instant, ReplicaId};
use crate::messages::{Message, MessageKind, VerifiedMessage};
use crate::service::Service;
use crate::verify::{verify_envelope, verify_message};
use crate::wire;
use bulwark_crypto::{Digest, DigestBuilder};
use rand::Rng;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Endpoint {
    Replica(ReplicaId),
    /// The second instance of a twinned replica.
    Twin(ReplicaId),
    Client(usize),
    ByzantineClient(usize),
}

impl Endpoint {
    fn instance(self) -> Option<Instance> {
        match self {
            Endpoint::Replica(replica) => Some(Instance { replica, twin: false }),
            Endpoint::Twin(replica) => Some(Instance { replica, twin: true }),
            Endpoint::Client(_) | Endpoint::ByzantineClient(_) => None,
        }
    }
}

#[derive(Debug, Clone)]
pub(super) enum Payload {
    Verified(VerifiedMessage),
    /// An encoded frame, and the kind of the message it holds (what the WAN counts it as).
    Frame(Arc<Vec<u8>>, MessageKind),
    Raw(Message),
}

impl Payload {
    pub(super) fn kind(&self) -> MessageKind {
        match self {
            Payload::Verified(message) => message.kind(),
            Payload::Frame(_, kind) => *kind,
            Payload::Raw(message) => message.kind(),
        }
    }
}

impl<S: Service> Simulation<S> {
    fn isolated(&self, replica: ReplicaId, at: Instant) -> bool {
        self.config.isolations.iter().any(|i| i.replica == replica && i.from <= at && at < i.until)
    }

    pub(super) fn cut_off(&self, endpoint: Endpoint, at: Instant) -> bool {
        match endpoint {
            Endpoint::Replica(r) | Endpoint::Twin(r) => self.isolated(r, at),
            Endpoint::Client(_) | Endpoint::ByzantineClient(_) => false,
        }
    }

    /// Whether the current Twins round keeps `from` and `to` apart.
    fn partitioned(&self, from: Endpoint, to: Endpoint, at: Instant) -> bool {
        let (Some(from), Some(to)) = (from.instance(), to.instance()) else {
            return false;
        };
        match self.config.rounds.iter().find(|round| at < round.until) {
            Some(round) => round.group_of(from).is_none() || round.group_of(from) != round.group_of(to),
            None => false,
        }
    }

    /// Sends over the simulated network: drop, delay with jitter, maybe duplicate, or across
    /// the WAN link between two sites when a placement puts `from` and `to` apart. What is
    /// sent to a twinned replica reaches each of its instances independently.
    pub(super) fn send(&mut self, from: Endpoint, to: Endpoint, payload: Payload) {
        if let Endpoint::Replica(replica) = to {
            if self.twin_nodes.contains_key(&replica) {
                self.send_one(from, Endpoint::Twin(replica), payload.clone());
            }
        }
        self.send_one(from, to, payload);
    }

    fn send_one(&mut self, from: Endpoint, to: Endpoint, payload: Payload) {
        if self.cut_off(from, self.now) || self.partitioned(from, to, self.now) {
            return;
        }
        if let Some(sites) = self.wan_sites(from, to) {
            self.send_over_wan(sites, to, payload);
            return;
        }
        let network = self.config.network.clone();
        let faulty = network.faults_until.is_none_or(|until| self.now < until);
        if faulty && self.rng.gen_bool(network.drop_rate) {
            return;
        }
        let copies = if faulty && self.rng.gen_bool(network.duplicate_rate) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = self.rng.gen_range(network.delay_min_us..=network.delay_max_us);
            let at = Instant(self.departs().0 + delay);
            self.schedule(at, Event::Deliver { to, payload: payload.clone() });
        }
    }

    pub(super) fn encode(&self, message: &VerifiedMessage) -> Payload {
        if self.config.wire_roundtrip {
            match wire::encode_frame(self.membership.scope(), &message.to_wire()) {
                Ok(frame) => Payload::Frame(Arc::new(frame), message.kind()),
                Err(_) => Payload::Verified(message.clone()),
            }
        } else {
            Payload::Verified(message.clone())
        }
    }

    pub(super) fn verify(&mut self, message: Message) -> Option<VerifiedMessage> {
        self.refuse_at_edge(verify_message(message, &self.membership))
    }

    pub(super) fn verify_envelope(&mut self, envelope: wire::Envelope) -> Option<VerifiedMessage> {
        self.refuse_at_edge(verify_envelope(envelope, &self.membership))
    }

    fn refuse_at_edge(&mut self, verdict: Result<VerifiedMessage, crate::verify::Refusal>) -> Option<VerifiedMessage> {
        match verdict {
            Ok(message) => Some(message),
            Err(refusal) => {
                self.refused_at_edge.record(&refusal);
                None
            }
        }
    }

    pub(super) fn blacked_out(&self, from: ReplicaId, to: ReplicaId, message: &VerifiedMessage) -> bool {
        let kind = message.kind();
        self.config
            .blackouts
            .iter()
            .any(|b| b.sender == from && b.receiver.is_none_or(|r| r == to) && b.kind == kind && self.now < b.until)
    }
}

/// A digest naming a message for the trace: the signed digest of its payload.
pub(super) fn fingerprint(message: &VerifiedMessage) -> Digest {
    let kind = message.kind() as u64;
    let inner = match message {
        VerifiedMessage::Request(m) => m.digest(),
        VerifiedMessage::PrePrepare(m, _) => m.digest(),
        VerifiedMessage::Prepare(m) => m.digest(),
        VerifiedMessage::Commit(m) => m.digest(),
        VerifiedMessage::Reply(m) => m.digest(),
        VerifiedMessage::Checkpoint(m) => m.digest(),
        VerifiedMessage::Status(m) => m.digest(),
        VerifiedMessage::StateRequest(m) => m.digest(),
        VerifiedMessage::StateReply(m) => m.digest(),
        VerifiedMessage::Inquiry(m) => m.digest(),
        VerifiedMessage::Report(m) => m.digest(),
        VerifiedMessage::ViewChange(m) => m.message.digest(),
        VerifiedMessage::NewView(m) => m.message.digest(),
        VerifiedMessage::BatchRequest(m) => m.digest(),
        VerifiedMessage::BatchReply(m, _) => m.digest(),
    };
    DigestBuilder::new(b"fingerprint").update_u64(kind).update(&inner.0).finish()
}
