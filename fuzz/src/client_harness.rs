//! The client harness: the client role fed fuzzed replies through the runtime's reply
//! checks, and the client target's steps.

use crate::builder::{corrupt_signature, reply_bundle};
use crate::checks::check_sendable;
use crate::cluster::{client_key, client_seed, config_for, handle, params, sign};
use crate::pool::{members_or_all, pick};
use crate::steps::{Num, OpSpec, Who};
use crate::{N, STEPS_MAX};
use arbitrary::Arbitrary;
use bulwark_crypto::KeyPair;
use bulwark_framework::config::ClientAuth;
use bulwark_framework::messages::{ClientKey, Message, Reply, VerifiedMessage};
use bulwark_framework::verify::{verify_reply, verify_reply_bundle, ReplyRootCache};
use bulwark_framework::{
    wire, Client, ClientAction, ClientInput, Instant, Membership, Outcome, ReplicaId, Role, SeqNum, Timestamp, View,
};
use std::collections::BTreeSet;
use std::sync::Arc;

/// Which timestamp a reply names.
#[derive(Debug, Clone, Arbitrary)]
pub enum TimestampChoice {
    /// One of the client's outstanding requests.
    Outstanding(u8),
    Any(Num),
}

/// The result a reply carries.
#[derive(Debug, Clone, Arbitrary)]
pub enum ResultChoice {
    /// One of a few encoded outcomes (so that replies of different replicas match).
    Outcome(u8),
    Raw(Vec<u8>),
}

impl ResultChoice {
    pub(crate) fn bytes(&self) -> Vec<u8> {
        match self {
            ResultChoice::Outcome(choice) => {
                let outcome: Outcome<Option<Vec<u8>>> = match choice % 4 {
                    0 => Outcome::Ok(None),
                    1 => Outcome::Ok(Some(vec![*choice])),
                    2 => Outcome::MalformedOperation,
                    _ => Outcome::NotReadOnly,
                };
                rmp_serde::to_vec(&outcome).expect("an outcome encodes")
            }
            ResultChoice::Raw(bytes) => bytes.clone(),
        }
    }
}

/// A REPLY to the fuzzed client.
#[derive(Debug, Clone, Arbitrary)]
pub struct ReplySpec {
    pub view: Num,
    pub timestamp: TimestampChoice,
    /// `== 255`: addressed to another client.
    pub to_other: u8,
    /// A read-only reply (for a read-only request; the client cannot be asked which).
    pub read_only: bool,
    pub result: ResultChoice,
}

/// The connection a reply comes on (in connection mode the reply counts for that replica).
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct Link(pub u8);

impl Link {
    /// Mostly the sender's own connection; sometimes another replica's, or none.
    fn of(self, from: u32) -> Option<ReplicaId> {
        match self.0 {
            0..=239 => Some(ReplicaId(from)),
            240..=247 => Some(ReplicaId((from + 1 + u32::from(self.0 % 3)) % N)),
            _ => None,
        }
    }
}

/// One step of the client target.
#[derive(Debug, Clone, Arbitrary)]
pub enum ClientStep {
    Invoke {
        op: OpSpec,
        read_only: bool,
    },
    Reply {
        from: Who,
        link: Link,
        spec: ReplySpec,
    },
    /// The same reply from several members (low four bits; none means all).
    Replies {
        members: u8,
        spec: ReplySpec,
    },
    /// Ordered replies of one batch from one replica, under one signed root (as a replica
    /// sends them), possibly tampered with (see [`reply_bundle`]).
    Bundle {
        from: Who,
        link: Link,
        seq: Num,
        view: Num,
        replies: Vec<ReplySpec>,
        tamper: u8,
    },
    /// The same bundle (valid) from several members.
    Bundles {
        members: u8,
        seq: Num,
        view: Num,
        replies: Vec<ReplySpec>,
    },
    /// A reply whose signature was damaged.
    Forged {
        from: Who,
        spec: ReplySpec,
        bit: u16,
    },
    /// Bytes into the decoder; replies that verify go to the client.
    Raw {
        link: Who,
        bytes: Vec<u8>,
    },
    /// The client's timer at its deadline.
    Timer,
    Wait {
        millis: u16,
    },
}

/// The client role, the client-side reply checks of the runtime (a root cache), and what
/// the client has completed.
#[derive(Debug)]
pub struct ClientHarness {
    pub config: Arc<Membership>,
    pub client: Client,
    pub roots: ReplyRootCache,
    pub now: Instant,
    pub timer: Option<Instant>,
    pub completed: BTreeSet<Timestamp>,
    pub last_view: View,
}

impl ClientHarness {
    /// Client 0 of a cluster with client authentication `auth`, its first timestamp `first`
    /// (the runtime uses wall-clock microseconds, far from `u64::MAX`).
    pub fn new(first: u32, auth: ClientAuth) -> Self {
        let config = config_for(auth);
        let key = KeyPair::from_seed(client_seed(0));
        let client = Client::new(key, handle(&config), Timestamp(u64::from(first) + 1));
        ClientHarness {
            config,
            client,
            roots: ReplyRootCache::default(),
            now: Instant::ZERO,
            timer: None,
            completed: BTreeSet::new(),
            last_view: View(0),
        }
    }

    pub fn run(&mut self, steps: impl IntoIterator<Item = ClientStep>) {
        for step in steps.into_iter().take(STEPS_MAX) {
            self.step(step);
        }
    }

    fn reply(&self, from: u32, view: Option<View>, spec: &ReplySpec) -> Reply {
        let outstanding = self.client.outstanding_timestamps();
        let timestamp = match &spec.timestamp {
            TimestampChoice::Outstanding(i) => pick(&outstanding, *i).copied().unwrap_or(Timestamp(1)),
            TimestampChoice::Any(n) => Timestamp(n.0),
        };
        let client = if spec.to_other == 255 {
            bulwark_framework::messages::client_id(&ClientKey::from(client_key(1).public()))
        } else {
            self.client.id()
        };
        Reply {
            view: view.unwrap_or(View(spec.view.0)),
            timestamp,
            client,
            replica: ReplicaId(from),
            read_only: spec.read_only && view.is_none(),
            result: spec.result.bytes(),
        }
    }

    fn bundle(&self, from: u32, seq: Num, view: Num, replies: &[ReplySpec], tamper: u8) -> Message {
        let view = View(view.0);
        let replies =
            replies.iter().take(params().batch_size_max + 1).map(|spec| self.reply(from, Some(view), spec)).collect();
        Message::Replies(reply_bundle(from, view, SeqNum(seq.0), replies, tamper))
    }

    pub fn step(&mut self, step: ClientStep) {
        match step {
            ClientStep::Invoke { op, read_only } => {
                let outstanding = self.client.outstanding();
                let actions = self.client.handle(ClientInput::Invoke { operation: op.encode(), read_only }, self.now);
                match actions.first() {
                    Some(&ClientAction::Issued { timestamp }) => {
                        assert!(!self.completed.contains(&timestamp), "timestamp {timestamp:?} reused");
                        self.observe(actions, &[]);
                    }
                    Some(ClientAction::Rejected(_)) => {
                        // Refused: nothing may have changed.
                        assert_eq!(actions.len(), 1, "a rejected invocation did something: {actions:?}");
                        assert_eq!(self.client.outstanding(), outstanding);
                    }
                    other => panic!("an invocation answered with neither issued nor rejected: {other:?}"),
                }
            }
            ClientStep::Reply { from, link, spec } => {
                let from = from.id();
                let message = Message::Reply(sign(self.reply(from, None, &spec), from));
                self.deliver(message, link.of(from));
            }
            ClientStep::Replies { members, spec } => {
                for from in members_or_all(members, None) {
                    let message = Message::Reply(sign(self.reply(from, None, &spec), from));
                    self.deliver(message, Some(ReplicaId(from)));
                }
            }
            ClientStep::Bundle { from, link, seq, view, replies, tamper } => {
                let from = from.id();
                let message = self.bundle(from, seq, view, &replies, tamper);
                self.deliver(message, link.of(from));
            }
            ClientStep::Bundles { members, seq, view, replies } => {
                for from in members_or_all(members, None) {
                    let message = self.bundle(from, seq, view, &replies, 0);
                    self.deliver(message, Some(ReplicaId(from)));
                }
            }
            ClientStep::Forged { from, spec, bit } => {
                let from = from.id();
                let mut message = Message::Reply(sign(self.reply(from, None, &spec), from));
                corrupt_signature(&mut message, bit);
                self.deliver(message, Some(ReplicaId(from)));
            }
            ClientStep::Raw { link, bytes } => {
                if let Ok(envelope) = wire::decode(&bytes, self.config.params.frame_bytes_max) {
                    self.deliver(envelope.message, Some(ReplicaId(link.id())));
                }
            }
            ClientStep::Timer => {
                if let Some(at) = self.timer.take() {
                    self.now = self.now.max(at);
                }
                let actions = self.client.handle(ClientInput::Timer, self.now);
                self.observe(actions, &[]);
            }
            ClientStep::Wait { millis } => {
                self.now = Instant(self.now.0 + u64::from(millis) * 1_000);
            }
        }
    }

    /// The runtime client's checks (`actors/src/client.rs`): a reply alone by its
    /// signature, a bundle by its root (cached) and paths; in connection mode by `link`.
    fn deliver(&mut self, message: Message, link: Option<ReplicaId>) {
        let replies = match message {
            Message::Reply(signed) => verify_reply(signed, link, &self.config).map(|r| vec![r]),
            Message::Replies(bundle) => {
                let fresh = verify_reply_bundle(bundle.clone(), link, &self.config, &mut ReplyRootCache::default());
                let cached = verify_reply_bundle(bundle, link, &self.config, &mut self.roots);
                assert_eq!(fresh, cached, "the reply root cache changed the verdict");
                cached
            }
            _ => return,
        };
        let Ok(replies) = replies else { return };
        for reply in replies {
            if self.config.params.client_auth == ClientAuth::Connection {
                assert_eq!(Some(reply.attributed_to()), link, "a reply counted for another replica than its link");
            } else {
                assert_eq!(reply.attributed_to(), reply.replica, "a signed reply counted for another replica");
            }
            let outstanding = self.client.outstanding_timestamps();
            let actions = self.client.handle(ClientInput::Reply(reply), self.now);
            self.observe(actions, &outstanding);
        }
    }

    fn observe(&mut self, actions: Vec<ClientAction>, outstanding_before: &[Timestamp]) {
        let me = ClientKey::from(client_key(0).public());
        for action in actions {
            match action {
                ClientAction::Send { request, .. } | ClientAction::Broadcast { request } => {
                    assert_eq!(request.client_key, me, "the client sent another client's request");
                    check_sendable(&VerifiedMessage::Request(request), &self.config, "the client");
                }
                ClientAction::SetTimer { at } => self.timer = Some(at),
                ClientAction::Issued { .. } => {}
                ClientAction::Rejected(error) => panic!("only an invocation is rejected: {error}"),
                ClientAction::Completed { timestamp, .. } => {
                    assert!(
                        outstanding_before.contains(&timestamp),
                        "completed {timestamp:?}, which was not outstanding"
                    );
                    assert!(self.completed.insert(timestamp), "completed {timestamp:?} twice");
                }
            }
        }
        let limit = self.config.params.client_window as usize;
        assert!(self.client.outstanding() <= limit, "{} outstanding, window {limit}", self.client.outstanding());
        assert!(self.client.view() >= self.last_view, "the client's view went back");
        self.last_view = self.client.view();
    }
}
