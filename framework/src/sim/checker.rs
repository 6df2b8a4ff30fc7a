//! The safety checker: asserts PBFT.md §7's invariants over correct replicas after every
//! simulator step. It sees only what replicas emit (messages they sign, replies, events)
//! and their public accessors; it never trusts a replica's own claim of correctness.

use crate::ids::{ClientId, ReplicaId, SeqNum, Timestamp, View};
use crate::membership::Membership;
use crate::messages::{MessageKind, VerifiedMessage, VerifiedNewView};
use crate::roles::view_change::compute_order;
use crate::roles::{Action, ReplicaEvent};
use bulwark_crypto::Digest;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// One broken invariant, with the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.invariant, self.detail)
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    view: View,
    stable: SeqNum,
    last_executed: SeqNum,
}

/// The checker's record of the run.
#[derive(Debug)]
pub struct Checker {
    membership: Arc<Membership>,
    window: u64,
    /// The highest view each correct replica asked for or entered: it may sign nothing
    /// normal-case below it (I14).
    floors: BTreeMap<ReplicaId, View>,
    /// Canonical executed history: sequence number → batch digest (I1, I2).
    executed: BTreeMap<SeqNum, Digest>,
    /// Canonical result per request (I11, I12).
    results: BTreeMap<(ClientId, Timestamp), Digest>,
    /// Digest each correct replica signed per (kind, view, seq) (I3).
    signed: BTreeMap<(MessageKind, View, SeqNum, ReplicaId), Digest>,
    /// Checkpoint digests signed by correct replicas (I5).
    checkpoints: BTreeMap<SeqNum, Digest>,
    progress: BTreeMap<ReplicaId, Progress>,
    /// Where a replica was when it crashed, until its recovery is observed.
    crashed_at: BTreeMap<ReplicaId, Progress>,
    violations: Vec<Violation>,
    checks: u64,
}

impl Checker {
    pub fn new(membership: Arc<Membership>) -> Self {
        Checker {
            window: membership.params.watermark_window,
            membership,
            floors: BTreeMap::new(),
            executed: BTreeMap::new(),
            results: BTreeMap::new(),
            signed: BTreeMap::new(),
            checkpoints: BTreeMap::new(),
            progress: BTreeMap::new(),
            crashed_at: BTreeMap::new(),
            violations: Vec::new(),
            checks: 0,
        }
    }

    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// How many individual assertions the checker made: a run with zero checks proves
    /// nothing, and tests assert this is large.
    pub fn checks(&self) -> u64 {
        self.checks
    }

    fn fail(&mut self, invariant: &'static str, detail: String) {
        self.violations.push(Violation { invariant, detail });
    }

    fn expect(&mut self, holds: bool, invariant: &'static str, detail: impl FnOnce() -> String) {
        self.checks += 1;
        if !holds {
            let detail = detail();
            self.fail(invariant, detail);
        }
    }

    /// Inspects the actions a correct replica emitted in one step; `before` is its
    /// progress before the step, `after` after it.
    pub fn observe_replica(
        &mut self,
        replica: ReplicaId,
        actions: &[Action],
        view: View,
        stable: SeqNum,
        last_executed: SeqNum,
    ) {
        let before = self.progress.get(&replica).copied().unwrap_or_default();
        let mut exec_cursor = before.last_executed;
        // The replica's h as it moves during the step: a checkpoint that becomes stable
        // mid-step lets it sign in the next window right away (I7 is about h at signing).
        let mut stable_cursor = before.stable;
        for action in actions {
            match action {
                Action::Send { message, .. } | Action::Broadcast { message } => {
                    self.observe_signed(replica, message, stable_cursor);
                }
                Action::Event(ReplicaEvent::Stable { seq, .. }) => {
                    stable_cursor = stable_cursor.max(*seq);
                }
                Action::Reply { reply, .. } if !reply.read_only => {
                    let key = (reply.client, reply.timestamp);
                    let digest = Digest::of(&reply.result);
                    match self.results.get(&key) {
                        Some(existing) => {
                            let existing = *existing;
                            self.expect(existing == digest, "I11", || {
                                format!("{replica} replied {digest} for {key:?}, another correct replica {existing}")
                            });
                        }
                        None => {
                            self.results.insert(key, digest);
                        }
                    }
                }
                Action::Event(ReplicaEvent::Executed { seq, digest, .. }) => {
                    self.expect(*seq == exec_cursor.next(), "I8", || {
                        format!("{replica} executed {seq} after {exec_cursor}")
                    });
                    exec_cursor = *seq;
                    match self.executed.get(seq) {
                        Some(canonical) => {
                            let canonical = *canonical;
                            self.expect(canonical == *digest, "I1/I2", || {
                                format!("{replica} executed {digest} at {seq}; another correct replica executed {canonical}")
                            });
                        }
                        None => {
                            self.executed.insert(*seq, *digest);
                        }
                    }
                }
                Action::Event(ReplicaEvent::Recovered { stable, .. }) => {
                    // Recovery installs the stable checkpoint, then re-executes from it.
                    exec_cursor = *stable;
                }
                Action::Event(ReplicaEvent::ViewChangeStarted { view }) => {
                    let floor = self.floors.entry(replica).or_default();
                    *floor = (*floor).max(*view);
                }
                Action::Event(ReplicaEvent::EnteredView { view, new_view }) => {
                    let floor = self.floors.entry(replica).or_default();
                    *floor = (*floor).max(*view);
                    self.observe_new_view(replica, *view, new_view);
                }
                Action::Event(ReplicaEvent::StateInstalled { seq, state_digest }) => {
                    let known = self.checkpoints.get(seq).copied();
                    self.expect(known == Some(*state_digest), "I5", || {
                        format!("{replica} installed state {state_digest} at {seq}; correct replicas checkpointed {known:?}")
                    });
                    self.expect(*seq > exec_cursor, "I6", || {
                        format!("{replica} installed {seq} at or below {exec_cursor}")
                    });
                    exec_cursor = *seq;
                }
                _ => {}
            }
        }
        self.expect(exec_cursor == last_executed, "I8", || {
            format!("{replica} reports last executed {last_executed}, its events say {exec_cursor}")
        });
        self.expect(
            view >= before.view && stable >= before.stable && last_executed >= before.last_executed,
            "I6",
            || format!("{replica} moved backwards: {before:?} -> view {view} stable {stable} executed {last_executed}"),
        );
        self.progress.insert(replica, Progress { view, stable, last_executed });
        if let Some(crashed) = self.crashed_at.remove(&replica) {
            // Durability: a restarted replica is back at least where it was (everything it
            // executed was committed and persisted first; its view floor was persisted).
            self.expect(last_executed >= crashed.last_executed && view >= crashed.view, "D1", || {
                format!("{replica} recovered at view {view} executed {last_executed}, crashed at {crashed:?}")
            });
        }
    }

    /// A correct replica restarts from its durable records: the next observation is its
    /// recovery, which starts from its stable checkpoint.
    pub fn observe_restart(&mut self, replica: ReplicaId) {
        let before = self.progress.insert(replica, Progress::default()).unwrap_or_default();
        self.crashed_at.insert(replica, before);
    }

    fn observe_signed(&mut self, replica: ReplicaId, message: &VerifiedMessage, stable_before: SeqNum) {
        let (kind, view, seq, digest) = match message {
            VerifiedMessage::PrePrepare(m, _) => (MessageKind::PrePrepare, m.view, m.seq, m.digest),
            VerifiedMessage::Prepare(m) if m.replica == replica => (MessageKind::Prepare, m.view, m.seq, m.digest),
            VerifiedMessage::Commit(m) if m.replica == replica => (MessageKind::Commit, m.view, m.seq, m.digest),
            VerifiedMessage::Checkpoint(m) if m.replica == replica => {
                let (seq, digest) = (m.seq, m.state_digest);
                match self.checkpoints.get(&seq) {
                    Some(existing) => {
                        let existing = *existing;
                        self.expect(existing == digest, "I5", || {
                            format!("{replica} checkpointed {digest} at {seq}; another correct replica {existing}")
                        });
                    }
                    None => {
                        self.checkpoints.insert(seq, digest);
                    }
                }
                return;
            }
            _ => return,
        };
        // A forwarded pre-prepare is the primary's signature, not this replica's.
        if kind == MessageKind::PrePrepare && self.membership.primary(view) != replica {
            return;
        }
        let floor = self.floors.get(&replica).copied().unwrap_or_default();
        let fresh = !self.signed.contains_key(&(kind, view, seq, replica));
        if fresh {
            self.expect(view >= floor, "I14", || {
                format!("{replica} signed {kind:?} for view {view} at {seq} after asking for view {floor}")
            });
        }
        match self.signed.get(&(kind, view, seq, replica)) {
            Some(existing) => {
                let existing = *existing;
                self.expect(existing == digest, "I3", || {
                    format!("{replica} signed {kind:?} {view} {seq} for {existing} and {digest}")
                });
            }
            None => {
                let window = self.window;
                self.expect(seq > stable_before && seq.0 <= stable_before.0 + window, "I7", || {
                    format!("{replica} signed {kind:?} {seq} outside its window above {stable_before}")
                });
                self.signed.insert((kind, view, seq, replica), digest);
            }
        }
    }

    /// I10 and I9 for a NEW-VIEW a correct replica entered: `V` holds `2f + 1` distinct
    /// VIEW-CHANGEs for the view, `O` is VC12 of `V` within one window, and `O` assigns every
    /// sequence number above `min-s` that a correct replica executed its executed digest.
    fn observe_new_view(&mut self, replica: ReplicaId, view: View, new_view: &Arc<VerifiedNewView>) {
        let senders: BTreeSet<ReplicaId> = new_view.view_changes.iter().map(|vc| vc.sender()).collect();
        let quorum = self.membership.quorum();
        let all_for_view = new_view.view_changes.iter().all(|vc| vc.view() == view);
        self.expect(senders.len() >= quorum && all_for_view && new_view.view() == view, "I10", || {
            format!("{replica} entered view {view} with a V of {} distinct senders", senders.len())
        });
        let recomputed = compute_order(&new_view.view_changes, &self.membership);
        let order = &new_view.order;
        let matches = recomputed.as_ref().is_ok_and(|r| r == order)
            && order.entries.len() == new_view.pre_prepares.len()
            && order
                .entries
                .iter()
                .zip(&new_view.pre_prepares)
                .all(|((seq, digest), pp)| pp.seq == *seq && pp.digest == *digest && pp.view == view);
        self.expect(matches, "I10", || format!("{replica} entered view {view} with an O that is not VC12 of V"));
        let span = order.max_seq.0.saturating_sub(order.min_seq().0);
        self.expect(span <= self.window, "I10", || format!("view {view}: max-s - min-s = {span} exceeds L"));
        if self.membership.primary(view) == replica {
            // The new primary signed each pre-prepare of `O` when it built the NEW-VIEW
            // (VC11): when it later forwards one alone (status retransmission), that is the
            // same signature again, not a new one (I3, I14).
            for pre_prepare in &new_view.pre_prepares {
                self.signed
                    .entry((MessageKind::PrePrepare, view, pre_prepare.seq, replica))
                    .or_insert(pre_prepare.digest);
            }
        }
        for (seq, digest) in &order.entries {
            if let Some(executed) = self.executed.get(seq).copied() {
                self.expect(executed == *digest, "I9", || {
                    format!("view {view} re-proposes {digest} at {seq}, where correct replicas executed {executed}")
                });
            }
        }
    }

    /// I12 and CL2: a client accepted `result` for `(client, timestamp)`: it must be the
    /// result correct replicas produced (at least one of the `f + 1` is correct).
    pub fn observe_accepted(&mut self, client: ClientId, timestamp: Timestamp, result: &[u8]) {
        let digest = Digest::of(result);
        let canonical = self.results.get(&(client, timestamp)).copied();
        self.expect(canonical == Some(digest), "I12", || {
            format!("client {client} accepted {digest} for {timestamp}; correct replicas produced {canonical:?}")
        });
    }

    /// Registers the correct replicas (needed before observing, for the primary check).
    pub fn register(&mut self, replica: ReplicaId) {
        self.progress.entry(replica).or_default();
    }

    /// Drops records no correct replica can need again: at or below `floor`, the lowest
    /// stable checkpoint among live correct replicas. Keeps the checker bounded too.
    pub fn collect_garbage(&mut self, floor: SeqNum) {
        self.signed.retain(|(_, _, seq, _), _| *seq > floor);
        self.executed.retain(|seq, _| *seq > floor);
        let keep_from = floor;
        self.checkpoints.retain(|seq, _| *seq >= keep_from);
    }

    /// Entries the checker holds (for the bounded-memory test).
    pub fn footprint(&self) -> usize {
        self.signed.len() + self.executed.len() + self.checkpoints.len()
    }
}
