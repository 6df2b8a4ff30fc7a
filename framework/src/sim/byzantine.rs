//! Byzantine replica strategies for the simulator. A Byzantine replica holds a real
//! member key and emits raw wire messages, which the simulator passes through the same
//! edge verification as everything else.

use crate::config::ClusterConfig;
use crate::ids::{Instant, ReplicaId, SeqNum, View};
use crate::messages::{
    Batch, Checkpoint, Commit, Message, NewView, PrePrepare, StateReply, VerifiedMessage, VerifiedViewChange,
};
use crate::roles::primary::Primary;
use crate::roles::replica::Input;
use crate::roles::view_change::{compute_order, null_digest};
use crate::roles::TimerKind;
use bulwark_crypto::{KeyPair, Signed};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a Byzantine replica does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Receives everything, sends nothing.
    Silent,
    /// As primary: sends two different pre-prepares for each sequence number to two
    /// halves of the backups, and commits for each half's digest to that half.
    EquivocatingPrimary,
    /// As primary of view 0: proposes every batch, but only at even sequence numbers, so
    /// nothing after the first gap can execute.
    SkippingPrimary,
    /// As primary of view 0: correct proposals, but one request at a time and just under
    /// the view-change timeout apart, so the request timer alone never fires (Aardvark's
    /// "slow primary").
    SlowPrimary,
    /// Signs every checkpoint it sees others sign (so it is among the signers of stable
    /// checkpoint proofs, which state transfer asks for chunks) and answers every state
    /// request with a chunk of garbage.
    CorruptState,
    /// Tells every replica what it wants to hear: to each replica that sends it a PREPARE
    /// for `(view, seq, digest)` it answers with its own PREPARE and COMMIT for exactly
    /// that. Alone (f = 1) it cannot break safety; together with an equivocating primary it
    /// makes f + 1 faults, the negative control of the simulator's checker.
    Colluder,
    /// Silent, except as the primary of a new view: it collects VIEW-CHANGEs like a correct
    /// primary but sends a NEW-VIEW whose `O` is not VC12 of its `V` (every digest replaced
    /// by the null request, one extra entry).
    BadNewView,
}

impl Strategy {
    /// The strategy's name on the command line (`bulwark sim --strategy`).
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Silent => "silent",
            Strategy::EquivocatingPrimary => "equivocating-primary",
            Strategy::SkippingPrimary => "skipping-primary",
            Strategy::SlowPrimary => "slow-primary",
            Strategy::CorruptState => "corrupt-state",
            Strategy::Colluder => "colluder",
            Strategy::BadNewView => "bad-new-view",
        }
    }

    /// The strategy named `name` (see [`Strategy::name`]).
    pub fn from_name(name: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|strategy| strategy.name() == name)
    }

    /// Every strategy, for tests that draw one.
    pub const ALL: [Strategy; 7] = [
        Strategy::Silent,
        Strategy::EquivocatingPrimary,
        Strategy::SkippingPrimary,
        Strategy::SlowPrimary,
        Strategy::CorruptState,
        Strategy::Colluder,
        Strategy::BadNewView,
    ];
}

/// An action of a Byzantine replica.
#[derive(Debug, Clone)]
pub enum ByzantineAction {
    Send { to: ReplicaId, message: Message },
    SetTimer { timer: TimerKind, at: Instant },
}

/// A Byzantine replica.
#[derive(Debug)]
pub struct ByzantineReplica {
    id: ReplicaId,
    key: KeyPair,
    config: Arc<ClusterConfig>,
    strategy: Strategy,
    proposer: Primary,
    view: View,
    /// VIEW-CHANGEs received, by view then sender (BadNewView).
    view_changes: BTreeMap<View, BTreeMap<ReplicaId, VerifiedViewChange>>,
    new_views_sent: Vec<View>,
    /// SlowPrimary: requests not yet proposed, the next sequence number and when the next
    /// proposal may go out.
    slow_queue: std::collections::VecDeque<bulwark_crypto::Verified<crate::messages::Request>>,
    slow_next_seq: SeqNum,
    slow_next_at: Option<Instant>,
    /// CorruptState: the highest checkpoint echoed.
    echoed: SeqNum,
    /// Colluder: what it voted for.
    voted: std::collections::BTreeSet<(View, SeqNum, bulwark_crypto::Digest, ReplicaId)>,
}

fn signed<T: bulwark_crypto::Signable>(payload: T, key: &KeyPair) -> Signed<T> {
    Signed::sign(payload, key).expect("encoding a protocol payload cannot fail")
}

impl ByzantineReplica {
    pub fn new(id: ReplicaId, key: KeyPair, config: Arc<ClusterConfig>, strategy: Strategy) -> Self {
        let proposer = Primary::new(config.clone(), SeqNum(1));
        ByzantineReplica {
            id,
            key,
            config,
            strategy,
            proposer,
            view: View(0),
            view_changes: BTreeMap::new(),
            new_views_sent: Vec::new(),
            slow_queue: std::collections::VecDeque::new(),
            slow_next_seq: SeqNum(1),
            slow_next_at: None,
            echoed: SeqNum(0),
            voted: Default::default(),
        }
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<ByzantineAction> {
        match self.strategy {
            Strategy::Silent => Vec::new(),
            Strategy::EquivocatingPrimary => self.equivocate(input, now),
            Strategy::SkippingPrimary => self.skip(input, now),
            Strategy::SlowPrimary => self.slow(input, now),
            Strategy::CorruptState => self.corrupt_state(input),
            Strategy::Colluder => self.collude(input),
            Strategy::BadNewView => self.bad_new_view(input),
        }
    }

    fn skip(&mut self, input: Input, now: Instant) -> Vec<ByzantineAction> {
        let mut actions = Vec::new();
        if self.config.primary(self.view) != self.id {
            return actions;
        }
        if let Input::Message(VerifiedMessage::Request(request)) = input {
            self.proposer.offer(request, now);
        }
        for (seq, batch) in self.proposer.cut_batches(SeqNum(0), now) {
            self.proposer.on_executed(seq);
            let skipped = SeqNum(seq.0 * 2);
            if skipped.0 > self.config.params.watermark_window {
                continue;
            }
            let pre_prepare = signed(PrePrepare { view: self.view, seq: skipped, digest: batch.digest() }, &self.key);
            for to in self.config.replicas().filter(|r| *r != self.id) {
                actions.push(ByzantineAction::Send {
                    to,
                    message: Message::PrePrepare(pre_prepare.clone(), batch.to_wire()),
                });
            }
        }
        if let Some(at) = self.proposer.batch_deadline(SeqNum(0)) {
            actions.push(ByzantineAction::SetTimer { timer: TimerKind::Batch, at });
        }
        actions
    }

    fn slow(&mut self, input: Input, now: Instant) -> Vec<ByzantineAction> {
        let mut actions = Vec::new();
        if self.config.primary(self.view) != self.id {
            return actions;
        }
        if let Input::Message(VerifiedMessage::Request(request)) = input {
            let key = (request.client(), request.timestamp);
            if !self.slow_queue.iter().any(|r| (r.client(), r.timestamp) == key) && self.slow_queue.len() < 10_000 {
                self.slow_queue.push_back(request);
            }
        }
        let spacing = self.config.params.view_change_timeout() * 4 / 5;
        if self.slow_next_at.is_none_or(|at| now >= at) && self.slow_next_seq.0 <= self.config.params.watermark_window {
            if let Some(request) = self.slow_queue.pop_front() {
                let batch = Batch::new(vec![request]);
                let seq = self.slow_next_seq;
                self.slow_next_seq = seq.next();
                let pre_prepare = signed(PrePrepare { view: self.view, seq, digest: batch.digest() }, &self.key);
                for to in self.config.replicas().filter(|r| *r != self.id) {
                    actions.push(ByzantineAction::Send {
                        to,
                        message: Message::PrePrepare(pre_prepare.clone(), batch.to_wire()),
                    });
                }
                self.slow_next_at = Some(now + spacing);
                actions.push(ByzantineAction::SetTimer { timer: TimerKind::Batch, at: now + spacing });
            }
        }
        actions
    }

    fn collude(&mut self, input: Input) -> Vec<ByzantineAction> {
        let Input::Message(message) = input else {
            return Vec::new();
        };
        let VerifiedMessage::Prepare(vote) = &message else {
            return Vec::new();
        };
        let (view, seq, digest, to) = (vote.view, vote.seq, vote.digest, vote.replica);
        if !self.voted.insert((view, seq, digest, to)) || self.voted.len() > 100_000 {
            return Vec::new();
        }
        let prepare = signed(crate::messages::Prepare { view, seq, digest, replica: self.id }, &self.key);
        let commit = signed(Commit { view, seq, digest, replica: self.id }, &self.key);
        vec![
            ByzantineAction::Send { to, message: Message::Prepare(prepare) },
            ByzantineAction::Send { to, message: Message::Commit(commit) },
        ]
    }

    fn corrupt_state(&mut self, input: Input) -> Vec<ByzantineAction> {
        match input {
            Input::Message(VerifiedMessage::Checkpoint(checkpoint)) if checkpoint.seq > self.echoed => {
                self.echoed = checkpoint.seq;
                let echo = signed(
                    Checkpoint { seq: checkpoint.seq, state_digest: checkpoint.state_digest, replica: self.id },
                    &self.key,
                );
                self.config
                    .replicas()
                    .filter(|r| *r != self.id)
                    .map(|to| ByzantineAction::Send { to, message: Message::Checkpoint(echo.clone()) })
                    .collect()
            }
            Input::Message(VerifiedMessage::StateRequest(request)) => {
                let chunk_bytes = self.config.params.state_chunk_bytes;
                let garbage = StateReply {
                    replica: self.id,
                    seq: request.seq,
                    total_bytes: 4 * chunk_bytes as u64,
                    index: request.chunk.min(3),
                    data: vec![0xa5; chunk_bytes],
                    path: vec![bulwark_crypto::Digest::of(b"garbage"); 2],
                };
                vec![ByzantineAction::Send {
                    to: request.replica,
                    message: Message::StateReply(signed(garbage, &self.key)),
                }]
            }
            _ => Vec::new(),
        }
    }

    fn bad_new_view(&mut self, input: Input) -> Vec<ByzantineAction> {
        let Input::Message(VerifiedMessage::ViewChange(vc)) = input else {
            return Vec::new();
        };
        let view = vc.view();
        if self.config.primary(view) != self.id || self.new_views_sent.contains(&view) {
            return Vec::new();
        }
        let held = self.view_changes.entry(view).or_default();
        held.insert(vc.sender(), vc.as_ref().clone());
        if held.len() < self.config.quorum() {
            return Vec::new();
        }
        let view_changes: Vec<VerifiedViewChange> = held.values().cloned().collect();
        let Ok(order) = compute_order(&view_changes, &self.config) else {
            return Vec::new();
        };
        self.new_views_sent.push(view);
        let last = order.max_seq.next();
        let pre_prepares = order
            .entries
            .iter()
            .map(|(seq, _)| *seq)
            .chain(std::iter::once(last))
            .map(|seq| signed(PrePrepare { view, seq, digest: null_digest() }, &self.key))
            .collect();
        let new_view = signed(
            NewView {
                view,
                view_changes: view_changes.iter().map(|vc| vc.message.signed().clone()).collect(),
                pre_prepares,
            },
            &self.key,
        );
        self.config
            .replicas()
            .filter(|r| *r != self.id)
            .map(|to| ByzantineAction::Send { to, message: Message::NewView(new_view.clone()) })
            .collect()
    }

    fn equivocate(&mut self, input: Input, now: Instant) -> Vec<ByzantineAction> {
        let mut actions = Vec::new();
        if self.config.primary(self.view) != self.id {
            return actions;
        }
        if let Input::Message(VerifiedMessage::Request(request)) = input {
            self.proposer.offer(request, now);
        }
        let backups: Vec<ReplicaId> = self.config.replicas().filter(|r| *r != self.id).collect();
        let (left, right) = backups.split_at(backups.len().div_ceil(2));
        for (seq, batch) in self.proposer.cut_batches(SeqNum(0), now) {
            // Make the proposer forget it, so it keeps equivocating on fresh numbers.
            self.proposer.on_executed(seq);
            let mut reversed = batch.requests().to_vec();
            reversed.reverse();
            let other = if batch.len() >= 2 { Batch::new(reversed) } else { Batch::null() };
            for (group, variant) in [(left, &batch), (right, &other)] {
                let digest = variant.digest();
                let pre_prepare = signed(PrePrepare { view: self.view, seq, digest }, &self.key);
                let commit = signed(Commit { view: self.view, seq, digest, replica: self.id }, &self.key);
                for to in group {
                    actions.push(ByzantineAction::Send {
                        to: *to,
                        message: Message::PrePrepare(pre_prepare.clone(), variant.to_wire()),
                    });
                    actions.push(ByzantineAction::Send { to: *to, message: Message::Commit(commit.clone()) });
                }
            }
        }
        if let Some(at) = self.proposer.batch_deadline(SeqNum(0)) {
            actions.push(ByzantineAction::SetTimer { timer: TimerKind::Batch, at });
        }
        actions
    }
}
