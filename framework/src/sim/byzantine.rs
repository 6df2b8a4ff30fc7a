//! Byzantine replica strategies for the simulator. A Byzantine replica holds a real
//! member key and emits raw wire messages, which the simulator passes through the same
//! edge verification as everything else.

use crate::config::ClusterConfig;
use crate::ids::{Instant, ReplicaId, SeqNum, View};
use crate::messages::{Batch, Commit, Message, PrePrepare, VerifiedMessage};
use crate::roles::primary::Primary;
use crate::roles::replica::Input;
use crate::roles::TimerKind;
use bulwark_crypto::{KeyPair, Signed};
use std::sync::Arc;

/// What a Byzantine replica does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Receives everything, sends nothing.
    Silent,
    /// As primary: sends two different pre-prepares for each sequence number to two
    /// halves of the backups, and commits for each half's digest to that half.
    EquivocatingPrimary,
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
}

fn signed<T: bulwark_crypto::Signable>(payload: T, key: &KeyPair) -> Signed<T> {
    Signed::sign(payload, key).expect("encoding a protocol payload cannot fail")
}

impl ByzantineReplica {
    pub fn new(id: ReplicaId, key: KeyPair, config: Arc<ClusterConfig>, strategy: Strategy) -> Self {
        let proposer = Primary::new(config.clone(), SeqNum(1));
        ByzantineReplica { id, key, config, strategy, proposer, view: View(0) }
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<ByzantineAction> {
        match self.strategy {
            Strategy::Silent => Vec::new(),
            Strategy::EquivocatingPrimary => self.equivocate(input, now),
        }
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
