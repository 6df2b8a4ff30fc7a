//! Byzantine replica strategies for the simulator. A Byzantine replica holds a real
//! member key and emits raw wire messages, which the simulator passes through the same
//! edge verification as everything else.

use crate::ids::{Instant, ReplicaId, SeqNum, View};
use crate::membership::{Membership, MembershipHandle, Scope};
use crate::messages::{
    Batch, Checkpoint, Command, Commit, Message, MessageKind, NewView, PrePrepare, Prepare, PreparedCertificate,
    StateReply, VerifiedMessage, VerifiedViewChange, ViewChange,
};
use crate::roles::primary::Primary;
use crate::roles::replica::Input;
use crate::roles::view_change::{compute_order, null_digest};
use crate::roles::TimerKind;
use crate::signing::Scoped;
use bulwark_crypto::{Digest, DigestBuilder, KeyPair, Signed};
use std::collections::BTreeMap;
use std::sync::Arc;
use strum::VariantArray;

/// What a Byzantine replica does. Its name on the command line (`bulwark sim --strategy`)
/// is the variant's in kebab case (`EquivocatingPrimary` is `equivocating-primary`): see
/// [`Strategy::name`] and `str::parse`; [`VariantArray::VARIANTS`] lists every strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::EnumString, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "kebab-case", parse_err_ty = String, parse_err_fn = unknown_strategy)]
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
    /// As a backup, votes for conflicting digests (N4, N5, PF7): for every pre-prepare it
    /// sees, half of its peers get PREPARE and COMMIT for the proposed digest, the other
    /// half first a vote for a digest made up for that peer alone and then the real one
    /// (which they must refuse as a second vote); it also votes for digests nobody proposed
    /// at the next sequence numbers. Silent as a primary.
    EquivocatingVoter,
    /// Sends valid-signed but useless messages at full rate, a bounded burst per timer tick
    /// (C5, VC6, C3, ST, status): votes beyond the high watermark, below the low one and for
    /// far-future views; STATUS claiming to be far behind; CHECKPOINTs for sequence numbers
    /// nobody reached; BATCH-REQs for unknown digests; STATE-REQs for images nobody holds;
    /// VIEW-CHANGEs for ever higher views.
    Flood,
    /// Records the signed messages it receives (and votes it signs itself) and, once the
    /// cluster moved to a later view, re-sends those of earlier views: old PRE-PREPAREs,
    /// PREPAREs, COMMITs, CHECKPOINTs, VIEW-CHANGEs and NEW-VIEWs (N1.b, N4, VC6, VC15).
    Replay,
    /// Sends certificates that must be refused (M6, VC10, VC15, C3): VIEW-CHANGEs whose
    /// checkpoint proof or prepared certificate has a duplicate signer, votes for another
    /// digest or too few votes, and, for views it is the primary of, NEW-VIEWs whose `V`
    /// names a sender twice or holds too few VIEW-CHANGEs.
    BadCertificate,
    /// Signs CHECKPOINTs with wrong state digests for real checkpoint sequence numbers, a
    /// different digest to each peer, then the right one too (C3, C7, ST1, I5).
    ConflictingCheckpoint,
}

impl Strategy {
    /// The strategy's name on the command line (`bulwark sim --strategy`).
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// Whether this strategy reads messages of `kind`. A runtime drops the others before
    /// checking their signatures: an attacker spends nothing on what it ignores, and where
    /// it shares a host with correct replicas (the bench runs every replica in one process)
    /// whatever it spent would be taken from them. Flood reads only what tells it where
    /// the cluster is (and any input arms its timer): not the batches a STATUS "I am at 0"
    /// brings back from every correct replica.
    pub fn listens_to(self, kind: MessageKind) -> bool {
        match self {
            Strategy::Silent => false,
            Strategy::Flood => matches!(
                kind,
                MessageKind::Prepare
                    | MessageKind::Commit
                    | MessageKind::Checkpoint
                    | MessageKind::Status
                    | MessageKind::NewView
            ),
            _ => true,
        }
    }
}

/// The error of parsing an unknown strategy name: it lists the known ones.
fn unknown_strategy(name: &str) -> String {
    let names: Vec<&str> = Strategy::VARIANTS.iter().map(|strategy| strategy.name()).collect();
    format!("unknown strategy {name:?}; one of: {}", names.join(", "))
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
    membership: Arc<Membership>,
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
    /// Messages it sent, every strategy: what tests check to know the attack happened.
    messages_sent: u64,
    /// The highest stable-looking checkpoint sequence number seen in any CHECKPOINT.
    checkpoint_seen: SeqNum,
    /// When its periodic timer (Flood, Replay, BadCertificate) fires next, if armed.
    tick_at: Option<Instant>,
    /// Flood and BadCertificate: how many ticks have run, to rotate what is sent.
    round: u64,
    /// EquivocatingVoter: the `(view, seq)` it already voted on, bounded.
    equivocated: std::collections::BTreeSet<(View, SeqNum)>,
    /// Replay: signed messages recorded with the view they belong to (`None`: no view),
    /// oldest first, bounded; and where the next replay burst starts.
    recorded: std::collections::VecDeque<(Option<View>, Message)>,
    replay_cursor: usize,
    /// BadCertificate: real signed PRE-PREPAREs and CHECKPOINTs of others, the raw
    /// material of its forged certificates (the latest few).
    real_pre_prepares: std::collections::VecDeque<Signed<PrePrepare>>,
    real_checkpoints: std::collections::VecDeque<Signed<Checkpoint>>,
    /// ConflictingCheckpoint: sequence numbers it signed wrong checkpoints for.
    forged_checkpoints: std::collections::BTreeSet<SeqNum>,
}

/// Flood (and BadCertificate, at twice it): how often the periodic burst goes out. Per
/// simulated second that is 800 flood messages to each peer, each signed and checked at
/// the edge: enough to fill every bounded buffer in a run, few enough to keep the
/// campaign fast.
const TICK_INTERVAL_US: u64 = 5_000;
/// Replay: how often a burst of old messages goes out.
const REPLAY_INTERVAL_US: u64 = 10_000;
/// Flood: messages per peer per tick (each signed once and sent to every peer).
const FLOOD_BURST: u64 = 4;
/// Replay: recorded messages kept, and re-sent per burst.
const REPLAY_RECORDED_MAX: usize = 512;
const REPLAY_BURST: usize = 16;
/// BadCertificate: real messages kept as material.
const MATERIAL_MAX: usize = 8;
/// EquivocatingVoter and ConflictingCheckpoint: entries remembered before the oldest go.
const MEMORY_MAX: usize = 4_096;

fn signed<T: Scoped>(scope: Scope, payload: T, key: &KeyPair) -> Signed<T> {
    scope.sign(payload, key).into_signed()
}

impl ByzantineReplica {
    pub fn new(id: ReplicaId, key: KeyPair, membership: Arc<Membership>, strategy: Strategy) -> Self {
        let proposer = Primary::new(MembershipHandle::new((*membership).clone()), SeqNum(1));
        ByzantineReplica {
            id,
            key,
            membership,
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
            messages_sent: 0,
            checkpoint_seen: SeqNum(0),
            tick_at: None,
            round: 0,
            equivocated: Default::default(),
            recorded: Default::default(),
            replay_cursor: 0,
            real_pre_prepares: Default::default(),
            real_checkpoints: Default::default(),
            forged_checkpoints: Default::default(),
        }
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Messages this replica has sent so far.
    pub fn messages_sent(&self) -> u64 {
        self.messages_sent
    }

    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<ByzantineAction> {
        // What the strategy ignores never reaches it, here as in the runtime (which drops
        // it before verification).
        if let Input::Message(message) = &input {
            if !self.strategy.listens_to(message.kind()) {
                return Vec::new();
            }
        }
        let actions = match self.strategy {
            Strategy::Silent => Vec::new(),
            Strategy::EquivocatingPrimary => self.equivocate(input, now),
            Strategy::SkippingPrimary => self.skip(input, now),
            Strategy::SlowPrimary => self.slow(input, now),
            Strategy::CorruptState => self.corrupt_state(input),
            Strategy::Colluder => self.collude(input),
            Strategy::BadNewView => self.bad_new_view(input),
            Strategy::EquivocatingVoter => {
                self.observe(&input);
                self.equivocate_votes(input)
            }
            Strategy::Flood => {
                self.observe(&input);
                self.periodic(input, now, TICK_INTERVAL_US, Self::flood)
            }
            Strategy::Replay => {
                self.observe(&input);
                self.record(&input);
                let mut actions = self.vote_like_a_backup(&input);
                actions.extend(self.periodic(input, now, REPLAY_INTERVAL_US, Self::replay));
                actions
            }
            Strategy::BadCertificate => {
                self.observe(&input);
                self.collect_material(&input);
                self.periodic(input, now, TICK_INTERVAL_US * 2, Self::bad_certificates)
            }
            Strategy::ConflictingCheckpoint => {
                self.observe(&input);
                self.conflicting_checkpoints(input)
            }
        };
        self.messages_sent += actions.iter().filter(|a| matches!(a, ByzantineAction::Send { .. })).count() as u64;
        actions
    }

    fn peers(&self) -> Vec<ReplicaId> {
        self.membership.replicas().filter(|r| *r != self.id).collect()
    }

    fn to_every_peer(&self, message: Message) -> Vec<ByzantineAction> {
        self.peers().into_iter().map(|to| ByzantineAction::Send { to, message: message.clone() }).collect()
    }

    /// Follows the cluster: the view of the latest NEW-VIEW it received (so its lies are
    /// about the current view, not view 0 forever) and the highest checkpoint named.
    fn observe(&mut self, input: &Input) {
        match input {
            Input::Message(VerifiedMessage::NewView(new_view)) if new_view.view() > self.view => {
                self.view = new_view.view();
            }
            Input::Message(VerifiedMessage::Checkpoint(checkpoint)) if checkpoint.seq > self.checkpoint_seen => {
                self.checkpoint_seen = checkpoint.seq;
            }
            _ => {}
        }
    }

    /// A periodic strategy: `burst` runs when its timer fires, and the timer is kept armed
    /// `interval_us` apart (the first input of any kind arms it: the simulator and the
    /// runtime start a Byzantine replica with no timers).
    fn periodic(
        &mut self,
        input: Input,
        now: Instant,
        interval_us: u64,
        burst: fn(&mut Self) -> Vec<ByzantineAction>,
    ) -> Vec<ByzantineAction> {
        let mut actions = Vec::new();
        if matches!(input, Input::Timer(TimerKind::Status)) && self.tick_at.is_some_and(|at| now >= at) {
            self.tick_at = None;
            self.round += 1;
            actions = burst(self);
        }
        if self.tick_at.is_none() {
            let at = now + std::time::Duration::from_micros(interval_us);
            self.tick_at = Some(at);
            actions.push(ByzantineAction::SetTimer { timer: TimerKind::Status, at });
        }
        actions
    }

    /// A digest nobody proposed, different for each `(purpose, seq, peer)`.
    fn made_up_digest(&self, purpose: &[u8], seq: SeqNum, peer: ReplicaId) -> Digest {
        DigestBuilder::new(b"bulwark/sim/made-up-digest")
            .update(purpose)
            .update_u64(self.id.0 as u64)
            .update_u64(seq.0)
            .update_u64(peer.0 as u64)
            .finish()
    }

    fn equivocate_votes(&mut self, input: Input) -> Vec<ByzantineAction> {
        let Input::Message(VerifiedMessage::PrePrepare(pre_prepare, _)) = input else {
            return Vec::new();
        };
        let (view, seq, digest) = (pre_prepare.view, pre_prepare.seq, pre_prepare.digest);
        if self.membership.primary(view) == self.id || !self.equivocated.insert((view, seq)) {
            return Vec::new();
        }
        if self.equivocated.len() > MEMORY_MAX {
            self.equivocated.pop_first();
        }
        let mut actions = Vec::new();
        let vote = |digest: Digest, key: &KeyPair, id: ReplicaId| {
            [
                Message::Prepare(signed(self.membership.scope(), Prepare { view, seq, digest, replica: id }, key)),
                Message::Commit(signed(self.membership.scope(), Commit { view, seq, digest, replica: id }, key)),
            ]
        };
        let honest = vote(digest, &self.key, self.id);
        for (position, to) in self.peers().into_iter().enumerate() {
            if position % 2 == 1 {
                // The made-up vote first: it is the one this peer keeps (one vote per signer),
                // and the honest one after it must be refused as a second vote (PF7).
                let made_up = self.made_up_digest(b"vote", seq, to);
                actions.extend(vote(made_up, &self.key, self.id).map(|message| ByzantineAction::Send { to, message }));
            }
            actions.extend(honest.iter().cloned().map(|message| ByzantineAction::Send { to, message }));
            // Votes for a digest never proposed at the next sequence number, before its
            // pre-prepare: a peer must not let them stand in for the real proposal's votes.
            let ahead = seq.next();
            let never_proposed = self.made_up_digest(b"ahead", ahead, to);
            let prepare = Prepare { view, seq: ahead, digest: never_proposed, replica: self.id };
            actions.push(ByzantineAction::Send {
                to,
                message: Message::Prepare(signed(self.membership.scope(), prepare, &self.key)),
            });
        }
        actions
    }

    /// Flood: one burst of useless messages, `FLOOD_BURST` of them per peer, each valid
    /// by its signature and each refused or ignored by what a correct replica checks.
    fn flood(&mut self) -> Vec<ByzantineAction> {
        let window = self.membership.params.watermark_window;
        let interval = self.membership.params.checkpoint_interval;
        let (view, id, round) = (self.view, self.id, self.round);
        let base = self.checkpoint_seen;
        let mut messages = Vec::new();
        for slot in 0..FLOOD_BURST {
            let variety = (round * FLOOD_BURST + slot) % 8;
            let junk = DigestBuilder::new(b"bulwark/sim/flood").update_u64(round).update_u64(slot).finish();
            let message = match variety {
                // Beyond the high watermark of anyone at or above `base` (C5: refused).
                0 => Message::Prepare(signed(
                    self.membership.scope(),
                    Prepare { view, seq: SeqNum(base.0 + 3 * window + round % window), digest: junk, replica: id },
                    &self.key,
                )),
                // At or below the low watermark (N4: refused).
                1 => Message::Commit(signed(
                    self.membership.scope(),
                    Commit { view, seq: base, digest: junk, replica: id },
                    &self.key,
                )),
                // For a view far ahead: buffered per sender, bounded (VC6).
                2 => Message::Commit(signed(
                    self.membership.scope(),
                    Commit { view: View(view.0 + 1_000 + round), seq: base.next(), digest: junk, replica: id },
                    &self.key,
                )),
                // "I am far behind": peers answer, rate-limited per peer.
                3 => Message::Status(signed(
                    self.membership.scope(),
                    crate::messages::Status {
                        replica: id,
                        view,
                        stable: SeqNum(0),
                        last_executed: SeqNum(0),
                        first_slot: SeqNum(1),
                        slots: Vec::new(),
                    },
                    &self.key,
                )),
                // A checkpoint nobody reached: bounded open checkpoints per member (C3).
                4 => Message::Checkpoint(signed(
                    self.membership.scope(),
                    Checkpoint {
                        seq: SeqNum(base.0 + interval * (2 + round % 1_000)),
                        state_digest: junk,
                        replica: id,
                    },
                    &self.key,
                )),
                // Batches nobody has.
                5 => Message::BatchRequest(signed(
                    self.membership.scope(),
                    crate::messages::BatchRequest { replica: id, digests: vec![junk; 4] },
                    &self.key,
                )),
                // An image nobody holds.
                6 => Message::StateRequest(signed(
                    self.membership.scope(),
                    crate::messages::StateRequest { replica: id, seq: SeqNum(base.0 + interval * 1_000), chunk: round },
                    &self.key,
                )),
                // A view change to an ever higher view: one sender alone cannot start one
                // (VC5 needs f + 1), and each replaces the last held from it (VC8).
                _ => Message::ViewChange(signed(
                    self.membership.scope(),
                    ViewChange {
                        view: View(view.0 + 2 + round),
                        stable: SeqNum(0),
                        checkpoint_proof: Vec::new(),
                        prepared: Vec::new(),
                        replica: id,
                    },
                    &self.key,
                )),
            };
            messages.push(message);
        }
        messages.into_iter().flat_map(|message| self.to_every_peer(message)).collect()
    }

    /// Replay: keeps what it may re-send later, with the view it belongs to.
    fn record(&mut self, input: &Input) {
        let Input::Message(message) = input else {
            return;
        };
        let view = match message {
            VerifiedMessage::PrePrepare(m, _) => Some(m.view),
            VerifiedMessage::Prepare(m) => Some(m.view),
            VerifiedMessage::Commit(m) => Some(m.view),
            VerifiedMessage::ViewChange(m) => Some(m.view()),
            VerifiedMessage::NewView(m) => Some(m.view()),
            VerifiedMessage::Checkpoint(_) => None,
            _ => return,
        };
        self.keep_recorded(view, message.to_wire());
    }

    fn keep_recorded(&mut self, view: Option<View>, message: Message) {
        if self.recorded.len() >= REPLAY_RECORDED_MAX {
            self.recorded.pop_front();
        }
        self.recorded.push_back((view, message));
    }

    /// Replay, while nothing is to be replayed: votes like a correct backup (PREPARE and
    /// COMMIT for every pre-prepare of the view it follows), so it has votes of its own
    /// from earlier views to replay later.
    fn vote_like_a_backup(&mut self, input: &Input) -> Vec<ByzantineAction> {
        let Input::Message(VerifiedMessage::PrePrepare(pre_prepare, _)) = input else {
            return Vec::new();
        };
        let (view, seq, digest) = (pre_prepare.view, pre_prepare.seq, pre_prepare.digest);
        if view != self.view || self.membership.primary(view) == self.id || !self.equivocated.insert((view, seq)) {
            return Vec::new();
        }
        if self.equivocated.len() > MEMORY_MAX {
            self.equivocated.pop_first();
        }
        let prepare = Message::Prepare(signed(
            self.membership.scope(),
            Prepare { view, seq, digest, replica: self.id },
            &self.key,
        ));
        let commit =
            Message::Commit(signed(self.membership.scope(), Commit { view, seq, digest, replica: self.id }, &self.key));
        self.keep_recorded(Some(view), prepare.clone());
        self.keep_recorded(Some(view), commit.clone());
        let mut actions = self.to_every_peer(prepare);
        actions.extend(self.to_every_peer(commit));
        actions
    }

    /// Replay: a burst of recorded messages from views before the current one (and old
    /// checkpoints), to every peer, cycling through what it holds.
    fn replay(&mut self) -> Vec<ByzantineAction> {
        let view = self.view;
        let old: Vec<&Message> = self
            .recorded
            .iter()
            .filter(|(recorded_view, _)| recorded_view.is_none_or(|v| v < view))
            .map(|(_, message)| message)
            .collect();
        if view == View(0) || old.is_empty() {
            return Vec::new();
        }
        let start = self.replay_cursor % old.len();
        let burst: Vec<Message> =
            old.iter().cycle().skip(start).take(REPLAY_BURST.min(old.len())).map(|m| (*m).clone()).collect();
        self.replay_cursor = start + burst.len();
        burst.into_iter().flat_map(|message| self.to_every_peer(message)).collect()
    }

    /// BadCertificate: keeps a few real signed PRE-PREPAREs and CHECKPOINTs of others.
    fn collect_material(&mut self, input: &Input) {
        match input {
            Input::Message(VerifiedMessage::PrePrepare(pre_prepare, _)) => {
                if self.real_pre_prepares.len() >= MATERIAL_MAX {
                    self.real_pre_prepares.pop_front();
                }
                self.real_pre_prepares.push_back(pre_prepare.signed().clone());
            }
            Input::Message(VerifiedMessage::Checkpoint(checkpoint)) if checkpoint.replica != self.id => {
                if self.real_checkpoints.len() >= MATERIAL_MAX {
                    self.real_checkpoints.pop_front();
                }
                self.real_checkpoints.push_back(checkpoint.signed().clone());
            }
            _ => {}
        }
    }

    /// BadCertificate: one forged certificate per tick, rotating through the ways a
    /// certificate can be wrong.
    fn bad_certificates(&mut self) -> Vec<ByzantineAction> {
        let quorum = self.membership.quorum();
        let f = self.membership.f();
        let interval = self.membership.params.checkpoint_interval;
        let (id, view) = (self.id, self.view);
        let target = view.next();
        let own_checkpoint = |seq: SeqNum, state_digest: Digest, key: &KeyPair| {
            signed(self.membership.scope(), Checkpoint { seq, state_digest, replica: id }, key)
        };
        let view_change = |stable: SeqNum, proof: Vec<Signed<Checkpoint>>, prepared: Vec<PreparedCertificate>| {
            ViewChange { view: target, stable, checkpoint_proof: proof, prepared, replica: id }
        };
        let stable = SeqNum(interval);
        let digest = DigestBuilder::new(b"bulwark/sim/bad-certificate").update_u64(self.round).finish();
        let message = match self.round % 6 {
            // C3: one member's checkpoint counted 2f + 1 times.
            0 => {
                let proof = vec![own_checkpoint(stable, digest, &self.key); quorum];
                Message::ViewChange(signed(self.membership.scope(), view_change(stable, proof, Vec::new()), &self.key))
            }
            // C3: 2f + 1 checkpoints that disagree on the state digest (real ones of others
            // where it has them, its own with a wrong digest).
            1 => {
                let Some(real) = self.real_checkpoints.back().cloned() else {
                    return Vec::new();
                };
                let mut proof: Vec<Signed<Checkpoint>> =
                    self.real_checkpoints.iter().filter(|c| c.payload.seq == real.payload.seq).cloned().collect();
                proof.sort_by_key(|c| c.payload.replica);
                proof.dedup_by_key(|c| c.payload.replica);
                proof.truncate(quorum - 1);
                proof.push(own_checkpoint(real.payload.seq, digest, &self.key));
                Message::ViewChange(signed(
                    self.membership.scope(),
                    view_change(real.payload.seq, proof, Vec::new()),
                    &self.key,
                ))
            }
            // C3: a proof of f + 1 checkpoints, short of 2f + 1.
            2 => {
                let proof = vec![own_checkpoint(stable, digest, &self.key); f + 1];
                Message::ViewChange(signed(self.membership.scope(), view_change(stable, proof, Vec::new()), &self.key))
            }
            // M6/VC10: a prepared certificate whose 2f prepares are one signer's.
            3 | 4 => {
                let Some(pre_prepare) = self.real_pre_prepares.back().cloned() else {
                    return Vec::new();
                };
                let header = pre_prepare.payload;
                if header.view >= target || self.membership.primary(header.view) == id {
                    return Vec::new();
                }
                let prepares = if self.round % 6 == 3 {
                    let own = Prepare { view: header.view, seq: header.seq, digest: header.digest, replica: id };
                    vec![signed(self.membership.scope(), own, &self.key); 2 * f]
                } else {
                    // M6/VC10: prepares for another digest than the pre-prepare's.
                    (0..2 * f)
                        .map(|_| {
                            signed(
                                self.membership.scope(),
                                Prepare { view: header.view, seq: header.seq, digest, replica: id },
                                &self.key,
                            )
                        })
                        .collect()
                };
                let certificate = PreparedCertificate { pre_prepare, prepares };
                Message::ViewChange(signed(
                    self.membership.scope(),
                    view_change(SeqNum(0), Vec::new(), vec![certificate]),
                    &self.key,
                ))
            }
            // VC15: a NEW-VIEW for the next view it is the primary of, whose V names one
            // sender 2f + 1 times (and so holds too few distinct VIEW-CHANGEs).
            _ => {
                let n = self.membership.n() as u64;
                let own_view = (1..=n)
                    .map(|ahead| View(view.0 + ahead))
                    .find(|next| self.membership.primary(*next) == id)
                    .expect("a member leads one of any n consecutive views");
                let own = ViewChange {
                    view: own_view,
                    stable: SeqNum(0),
                    checkpoint_proof: Vec::new(),
                    prepared: Vec::new(),
                    replica: id,
                };
                let new_view = NewView {
                    view: own_view,
                    view_changes: vec![signed(self.membership.scope(), own, &self.key); quorum],
                    pre_prepares: Vec::new(),
                };
                Message::NewView(signed(self.membership.scope(), new_view, &self.key))
            }
        };
        self.to_every_peer(message)
    }

    /// ConflictingCheckpoint: for each checkpoint sequence number another replica reaches,
    /// every peer gets a CHECKPOINT with a state digest made up for it; every other peer then
    /// also gets the right one (which it must refuse as a second vote from one member).
    fn conflicting_checkpoints(&mut self, input: Input) -> Vec<ByzantineAction> {
        let Input::Message(VerifiedMessage::Checkpoint(checkpoint)) = input else {
            return Vec::new();
        };
        let seq = checkpoint.seq;
        if checkpoint.replica == self.id || !self.forged_checkpoints.insert(seq) {
            return Vec::new();
        }
        if self.forged_checkpoints.len() > MEMORY_MAX {
            self.forged_checkpoints.pop_first();
        }
        let right = signed(
            self.membership.scope(),
            Checkpoint { seq, state_digest: checkpoint.state_digest, replica: self.id },
            &self.key,
        );
        let mut actions = Vec::new();
        for (position, to) in self.peers().into_iter().enumerate() {
            let wrong = Checkpoint { seq, state_digest: self.made_up_digest(b"checkpoint", seq, to), replica: self.id };
            actions.push(ByzantineAction::Send {
                to,
                message: Message::Checkpoint(signed(self.membership.scope(), wrong, &self.key)),
            });
            if position % 2 == 0 {
                actions.push(ByzantineAction::Send { to, message: Message::Checkpoint(right.clone()) });
            }
        }
        actions
    }

    fn skip(&mut self, input: Input, now: Instant) -> Vec<ByzantineAction> {
        let mut actions = Vec::new();
        if self.membership.primary(self.view) != self.id {
            return actions;
        }
        if let Input::Message(VerifiedMessage::Request(request)) = input {
            self.proposer.offer(request, now);
        }
        for (seq, batch) in self.proposer.cut_batches(SeqNum(0), now) {
            self.proposer.on_executed(seq);
            let skipped = SeqNum(seq.0 * 2);
            if skipped.0 > self.membership.params.watermark_window {
                continue;
            }
            let pre_prepare = signed(
                self.membership.scope(),
                PrePrepare { view: self.view, seq: skipped, digest: batch.digest() },
                &self.key,
            );
            for to in self.membership.replicas().filter(|r| *r != self.id) {
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
        if self.membership.primary(self.view) != self.id {
            return actions;
        }
        if let Input::Message(VerifiedMessage::Request(request)) = input {
            let key = (request.client(), request.timestamp);
            if !self.slow_queue.iter().any(|r| (r.client(), r.timestamp) == key) && self.slow_queue.len() < 10_000 {
                self.slow_queue.push_back(request);
            }
        }
        let spacing = self.membership.params.view_change_timeout() * 4 / 5;
        if self.slow_next_at.is_none_or(|at| now >= at)
            && self.slow_next_seq.0 <= self.membership.params.watermark_window
        {
            if let Some(request) = self.slow_queue.pop_front() {
                // Stamped with the time now, as a correct primary would (N1.f): only slow.
                let batch = Batch::timed(vec![Command::Request(request)], now.as_micros());
                let seq = self.slow_next_seq;
                self.slow_next_seq = seq.next();
                let pre_prepare = signed(
                    self.membership.scope(),
                    PrePrepare { view: self.view, seq, digest: batch.digest() },
                    &self.key,
                );
                for to in self.membership.replicas().filter(|r| *r != self.id) {
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
        let prepare = signed(
            self.membership.scope(),
            crate::messages::Prepare { view, seq, digest, replica: self.id },
            &self.key,
        );
        let commit = signed(self.membership.scope(), Commit { view, seq, digest, replica: self.id }, &self.key);
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
                    self.membership.scope(),
                    Checkpoint { seq: checkpoint.seq, state_digest: checkpoint.state_digest, replica: self.id },
                    &self.key,
                );
                self.membership
                    .replicas()
                    .filter(|r| *r != self.id)
                    .map(|to| ByzantineAction::Send { to, message: Message::Checkpoint(echo.clone()) })
                    .collect()
            }
            Input::Message(VerifiedMessage::StateRequest(request)) => {
                let chunk_bytes = self.membership.params.state_chunk_bytes;
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
                    message: Message::StateReply(signed(self.membership.scope(), garbage, &self.key)),
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
        if self.membership.primary(view) != self.id || self.new_views_sent.contains(&view) {
            return Vec::new();
        }
        let held = self.view_changes.entry(view).or_default();
        held.insert(vc.sender(), vc.as_ref().clone());
        if held.len() < self.membership.quorum() {
            return Vec::new();
        }
        let view_changes: Vec<VerifiedViewChange> = held.values().cloned().collect();
        let Ok(order) = compute_order(&view_changes, &self.membership) else {
            return Vec::new();
        };
        self.new_views_sent.push(view);
        let last = order.max_seq.next();
        let pre_prepares = order
            .entries
            .iter()
            .map(|(seq, _)| *seq)
            .chain(std::iter::once(last))
            .map(|seq| signed(self.membership.scope(), PrePrepare { view, seq, digest: null_digest() }, &self.key))
            .collect();
        let new_view = signed(
            self.membership.scope(),
            NewView {
                view,
                view_changes: view_changes.iter().map(|vc| vc.message.signed().clone()).collect(),
                pre_prepares,
            },
            &self.key,
        );
        self.membership
            .replicas()
            .filter(|r| *r != self.id)
            .map(|to| ByzantineAction::Send { to, message: Message::NewView(new_view.clone()) })
            .collect()
    }

    fn equivocate(&mut self, input: Input, now: Instant) -> Vec<ByzantineAction> {
        let mut actions = Vec::new();
        if self.membership.primary(self.view) != self.id {
            return actions;
        }
        if let Input::Message(VerifiedMessage::Request(request)) = input {
            self.proposer.offer(request, now);
        }
        let backups: Vec<ReplicaId> = self.membership.replicas().filter(|r| *r != self.id).collect();
        let (left, right) = backups.split_at(backups.len().div_ceil(2));
        for (seq, batch) in self.proposer.cut_batches(SeqNum(0), now) {
            // Make the proposer forget it, so it keeps equivocating on fresh numbers.
            self.proposer.on_executed(seq);
            let mut reversed = batch.commands().to_vec();
            reversed.reverse();
            let other = if batch.len() >= 2 { Batch::timed(reversed, batch.time_us()) } else { Batch::null() };
            for (group, variant) in [(left, &batch), (right, &other)] {
                let digest = variant.digest();
                let pre_prepare =
                    signed(self.membership.scope(), PrePrepare { view: self.view, seq, digest }, &self.key);
                let commit = signed(
                    self.membership.scope(),
                    Commit { view: self.view, seq, digest, replica: self.id },
                    &self.key,
                );
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
