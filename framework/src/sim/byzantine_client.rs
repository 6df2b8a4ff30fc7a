//! Byzantine clients for the simulator. A Byzantine client holds a real client key (or
//! none it may use) and sends raw wire requests, which the simulator passes through the
//! same edge verification as every other message. It never waits for replies: the run's
//! liveness is judged on the correct clients alone, and its attack stops at `until` (like
//! the network's faults, so that liveness can be judged after it).

use crate::ids::{Instant, ReplicaId, Timestamp, View};
use crate::membership::Membership;
use crate::messages::{Message, Request};
use bulwark_crypto::{KeyPair, Signature, Signed};
use std::sync::Arc;
use std::time::Duration;
use strum::VariantArray;

/// What a Byzantine client does. Its name (`bulwark bench --attack`) is the variant's in
/// kebab case (`BadSignatures` is `bad-signatures`): see [`ClientAttack::name`] and
/// `str::parse`; [`VariantArray::VARIANTS`] lists every attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::EnumString, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "kebab-case", parse_err_ty = String, parse_err_fn = unknown_attack)]
pub enum ClientAttack {
    /// Requests whose signatures do not verify (R1, N1.e): signed by another key than the
    /// one they name, with a flipped bit, or not signed at all. Every replica must refuse
    /// them at the edge, whatever `client_auth` the cluster uses for signatures (in
    /// `"connection"` mode they are accepted on the link's word, as documented).
    BadSignatures,
    /// Correctly signed requests sent to one replica only, in turn each of them (R3, VC1): a
    /// backup that alone holds a request relays it to the primary and waits for it; the
    /// primary that alone holds one orders it.
    PartialDelivery,
    /// One timestamp, a different operation for each replica, all correctly signed (R4,
    /// P5, CX3, E2, I11): replicas hold different requests under one `(c, t)`; at most one
    /// of them executes, and every correct replica executes the same one.
    ConflictingRequests,
    /// Many correctly signed requests at full rate to every replica, and old ones again
    /// (CX3: below the client's window), bounded per tick (R4: the primary's queue sheds).
    RequestFlood,
}

impl ClientAttack {
    /// The attack's name on the command line (`bulwark bench --attack`).
    pub fn name(self) -> &'static str {
        self.into()
    }
}

/// The error of parsing an unknown attack name: it lists the known ones.
fn unknown_attack(name: &str) -> String {
    let names: Vec<&str> = ClientAttack::VARIANTS.iter().map(|attack| attack.name()).collect();
    format!("unknown client attack {name:?}; one of: {}", names.join(", "))
}

/// One Byzantine client in a simulation: its attack and when the attack stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByzantineClientSpec {
    pub attack: ClientAttack,
    pub until: Instant,
}

/// How often a Byzantine client acts.
pub const TICK_INTERVAL_US: u64 = 5_000;
/// RequestFlood: fresh requests per tick (to every replica), and old ones re-sent.
const FLOOD_FRESH_PER_TICK: u64 = 4;
const FLOOD_OLD_PER_TICK: u64 = 2;

/// A message a Byzantine client sends.
#[derive(Debug, Clone)]
pub struct ClientSend {
    pub to: ReplicaId,
    pub message: Message,
}

/// A Byzantine client.
#[derive(Debug)]
pub struct ByzantineClient {
    key: KeyPair,
    /// A key that is not this client's: what "signed by someone else" signs with.
    other_key: KeyPair,
    membership: Arc<Membership>,
    spec: ByzantineClientSpec,
    next_timestamp: Timestamp,
    ticks: u64,
    sent: u64,
}

impl ByzantineClient {
    pub fn new(key: KeyPair, other_key: KeyPair, membership: Arc<Membership>, spec: ByzantineClientSpec) -> Self {
        ByzantineClient { key, other_key, membership, spec, next_timestamp: Timestamp(1), ticks: 0, sent: 0 }
    }

    pub fn attack(&self) -> ClientAttack {
        self.spec.attack
    }

    /// Requests this client has sent so far (each copy to each replica counted).
    pub fn messages_sent(&self) -> u64 {
        self.sent
    }

    /// Acts once at `now`: the messages to send and, while the attack lasts, when to act
    /// next.
    pub fn on_tick(&mut self, now: Instant) -> (Vec<ClientSend>, Option<Instant>) {
        if now >= self.spec.until {
            return (Vec::new(), None);
        }
        self.ticks += 1;
        let sends = match self.spec.attack {
            ClientAttack::BadSignatures => self.bad_signatures(),
            ClientAttack::PartialDelivery => self.partial_delivery(),
            ClientAttack::ConflictingRequests => self.conflicting_requests(),
            ClientAttack::RequestFlood => self.request_flood(),
        };
        self.sent += sends.len() as u64;
        (sends, Some(now + Duration::from_micros(TICK_INTERVAL_US)))
    }

    fn replicas(&self) -> Vec<ReplicaId> {
        self.membership.replicas().collect()
    }

    /// A request of this client's at `timestamp`; its operation is opaque bytes (a service
    /// answers an undecodable operation with an error, the same at every replica).
    fn request(&self, timestamp: Timestamp, variant: u64) -> Request {
        let mut operation = b"byzantine-client".to_vec();
        operation.extend_from_slice(&variant.to_le_bytes());
        Request { client_key: self.key.public().into(), timestamp, read_only: false, operation }
    }

    fn fresh_timestamp(&mut self) -> Timestamp {
        let timestamp = self.next_timestamp;
        self.next_timestamp = Timestamp(timestamp.0 + 1);
        timestamp
    }

    fn sign(&self, request: Request) -> Signed<Request> {
        self.membership.scope().sign(request, &self.key).into_signed()
    }

    fn bad_signatures(&mut self) -> Vec<ClientSend> {
        let timestamp = self.fresh_timestamp();
        let request = self.request(timestamp, self.ticks);
        let forged = match self.ticks % 3 {
            // Names this client, signed by another key.
            0 => self.membership.scope().sign(request, &self.other_key).into_signed(),
            // This client's signature with one bit flipped.
            1 => {
                let mut signed = self.sign(request);
                let mut bytes = signed.signature.to_bytes();
                bytes[(self.ticks % 64) as usize] ^= 1;
                signed.signature = Signature::from_bytes(&bytes);
                signed
            }
            // No signature at all.
            _ => Signed { payload: request, signature: Signature::absent() },
        };
        self.replicas().into_iter().map(|to| ClientSend { to, message: Message::Request(forged.clone()) }).collect()
    }

    fn partial_delivery(&mut self) -> Vec<ClientSend> {
        let timestamp = self.fresh_timestamp();
        let request = self.sign(self.request(timestamp, 0));
        let replicas = self.replicas();
        let to = replicas[(self.ticks % replicas.len() as u64) as usize];
        vec![ClientSend { to, message: Message::Request(request) }]
    }

    fn conflicting_requests(&mut self) -> Vec<ClientSend> {
        let timestamp = self.fresh_timestamp();
        self.replicas()
            .into_iter()
            .map(|to| {
                let request = self.sign(self.request(timestamp, to.0 as u64 + 1));
                ClientSend { to, message: Message::Request(request) }
            })
            .collect()
    }

    fn request_flood(&mut self) -> Vec<ClientSend> {
        let replicas = self.replicas();
        let mut sends = Vec::new();
        for _ in 0..FLOOD_FRESH_PER_TICK {
            let timestamp = self.fresh_timestamp();
            let request = self.sign(self.request(timestamp, 0));
            sends.extend(replicas.iter().map(|to| ClientSend { to: *to, message: Message::Request(request.clone()) }));
        }
        // Old timestamps again: executed long ago, or below the client window (CX3).
        for old in 0..FLOOD_OLD_PER_TICK {
            let timestamp = Timestamp(1 + (self.ticks + old) % self.next_timestamp.0.max(1));
            let request = self.sign(self.request(timestamp, 0));
            let to = self.membership.primary(View(0));
            sends.push(ClientSend { to, message: Message::Request(request) });
        }
        sends
    }
}
