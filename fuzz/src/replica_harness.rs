//! The replica harness: one replica of the fuzzed cluster driven step by step, with the
//! checks of `fuzz_roles.rs` after every input and of everything it sends.

use crate::builder::Builder;
use crate::checks::{check_replies_sendable, check_sendable};
use crate::cluster::{config_for, handle, replica_seed};
use crate::image::image_mirror_matches;
use crate::pool::{push_bounded, Pool};
use crate::service::FuzzKv;
use crate::steps::{Step, TimerChoice};
use crate::{N, STEPS_MAX};
use bulwark_crypto::KeyPair;
use bulwark_framework::config::ClientAuth;
use bulwark_framework::messages::{VerifiedMessage, VerifiedReply};
use bulwark_framework::roles::node::Node;
use bulwark_framework::verify::verify_message;
use bulwark_framework::{Action, ClientId, Input, Instant, Membership, ReplicaId, TimerKind};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One replica of the fuzzed cluster, the time, and the pool.
#[derive(Debug)]
pub struct ReplicaHarness {
    pub config: Arc<Membership>,
    pub replica: Node<FuzzKv>,
    pub me: u32,
    pub now: Instant,
    pub pool: Pool,
    /// Timers the replica set and that have not fired.
    pub timers: BTreeMap<TimerKind, Instant>,
}

impl ReplicaHarness {
    /// Replica `me` of a cluster with client authentication `auth`, started at time zero.
    pub fn new(me: u32, auth: ClientAuth) -> Self {
        let _ = image_mirror_matches();
        let config = config_for(auth);
        let me = me % N;
        let key = KeyPair::from_seed(replica_seed(me));
        let mut replica = Node::new(ReplicaId(me), key, handle(&config), FuzzKv::default());
        let actions = replica.start(Instant::ZERO);
        let mut harness =
            ReplicaHarness { config, replica, me, now: Instant::ZERO, pool: Pool::default(), timers: BTreeMap::new() };
        harness.observe(actions);
        harness
    }

    /// Runs at most [`STEPS_MAX`] steps.
    pub fn run(&mut self, steps: impl IntoIterator<Item = Step>) {
        for step in steps.into_iter().take(STEPS_MAX) {
            self.step(&step);
        }
    }

    pub fn step(&mut self, step: &Step) {
        match step {
            Step::Wait { millis } => {
                self.now = Instant(self.now.0 + u64::from(*millis) * 1_000);
            }
            Step::Timer(choice) => {
                let kind = match choice {
                    TimerChoice::Next => {
                        let Some((&kind, &at)) = self.timers.iter().min_by_key(|(_, at)| **at) else {
                            return;
                        };
                        self.now = self.now.max(at);
                        kind
                    }
                    TimerChoice::Batch => TimerKind::Batch,
                    TimerChoice::Status => TimerKind::Status,
                    TimerChoice::Request => TimerKind::Request,
                    TimerChoice::ViewChange => TimerKind::ViewChange,
                };
                self.timers.remove(&kind);
                self.deliver(Input::Timer(kind));
            }
            _ => {
                let messages = Builder { config: &self.config, pool: &mut self.pool, me: Some(self.me) }.messages(step);
                for message in messages {
                    if let Ok(verified) = verify_message(message, &self.config) {
                        self.deliver(Input::Message(verified));
                    }
                }
            }
        }
    }

    /// One input; then the checks of `fuzz_roles.rs`.
    pub fn deliver(&mut self, input: Input) {
        let replica = &mut self.replica;
        let before = (replica.view(), replica.stable(), replica.last_executed());
        let actions = replica.handle(input, self.now);
        let after = (replica.view(), replica.stable(), replica.last_executed());
        assert!(after.0 >= before.0, "view went back: {before:?} -> {after:?}");
        assert!(after.1 >= before.1, "stable checkpoint went back: {before:?} -> {after:?}");
        assert!(after.2 >= before.2, "execution went back: {before:?} -> {after:?}");
        let params = &self.config.params;
        let n = N as usize;
        let footprint = replica.footprint();
        assert!(footprint.log_slots <= 2 * params.watermark_window as usize, "{footprint:?}");
        assert!(footprint.future_messages <= n * params.future_messages_per_sender_max, "{footprint:?}");
        assert!(footprint.later_view_messages <= n * params.future_messages_per_sender_max, "{footprint:?}");
        assert!(footprint.queued_requests <= params.request_queue_max, "{footprint:?}");
        assert!(footprint.waiting_requests <= params.request_queue_max, "{footprint:?}");
        assert!(footprint.view_changes_held <= n, "{footprint:?}");
        assert!(footprint.transfer_bytes <= params.state_transfer_bytes_max, "{footprint:?}");
        assert!(footprint.clients <= params.client_table_max, "{footprint:?}");
        self.observe(actions);
    }

    /// Checks what the replica sends and keeps what later steps may refer to.
    fn observe(&mut self, actions: Vec<Action>) {
        let who = format!("replica {}", self.me);
        let mut replies: BTreeMap<ClientId, Vec<VerifiedReply>> = BTreeMap::new();
        for action in actions {
            match action {
                Action::Send { to, message } => {
                    check_sendable(&message, &self.config, &who);
                    if let VerifiedMessage::StateRequest(request) = &message {
                        push_bounded(&mut self.pool.state_requests, (to, request.seq, request.chunk));
                    }
                    self.remember(&message);
                }
                Action::Broadcast { message } => {
                    check_sendable(&message, &self.config, &who);
                    self.remember(&message);
                }
                Action::Reply { client, reply } => {
                    assert_eq!(client, reply.client, "{who} sent a reply to another client than it names");
                    assert_eq!(reply.attributed_to().0, self.me, "{who} sent a reply in another replica's name");
                    replies.entry(client).or_default().push(reply);
                }
                Action::Report { report, .. } => {
                    check_sendable(&VerifiedMessage::Report(report), &self.config, &who);
                }
                Action::SetTimer { timer, at } => {
                    self.timers.insert(timer, at);
                }
                Action::ToCheckpoints(_) | Action::ToPrimary(_) | Action::ToViewChanger(_) => {
                    panic!("{who}'s node handles what it hands its roles, yet one left it")
                }
                Action::Persist(_) | Action::Event(_) => {}
            }
        }
        for replies in replies.values() {
            check_replies_sendable(replies, &self.config, &who);
        }
    }

    fn remember(&mut self, message: &VerifiedMessage) {
        let pool = &mut self.pool;
        match message {
            VerifiedMessage::PrePrepare(m, batch) => {
                push_bounded(&mut pool.slots, (m.view, m.seq, m.digest));
                push_bounded(&mut pool.batches, (batch.digest(), batch.to_wire()));
            }
            VerifiedMessage::Prepare(m) => push_bounded(&mut pool.slots, (m.view, m.seq, m.digest)),
            VerifiedMessage::Commit(m) => push_bounded(&mut pool.slots, (m.view, m.seq, m.digest)),
            VerifiedMessage::Checkpoint(m) => push_bounded(&mut pool.checkpoints, (m.seq, m.state_digest)),
            VerifiedMessage::ViewChange(m) if m.sender().0 == self.me => {
                let own = m.message.signed().clone();
                if pool.own_view_changes.len() >= 8 {
                    pool.own_view_changes.remove(0);
                }
                pool.own_view_changes.push(own);
            }
            VerifiedMessage::NewView(m) => {
                for p in &m.pre_prepares {
                    push_bounded(&mut pool.slots, (p.view, p.seq, p.digest));
                }
            }
            VerifiedMessage::BatchRequest(m) => {
                for digest in &m.digests {
                    push_bounded(&mut pool.batch_requests, *digest);
                }
            }
            VerifiedMessage::BatchReply(_, batch) => {
                push_bounded(&mut pool.batches, (batch.digest(), batch.to_wire()));
            }
            _ => {}
        }
    }
}
