//! Group commit for a durable replica: its actions wait until the records before them are
//! durable, and inbound delivery pauses while too many wait, so a slow disk costs latency
//! rather than memory.

use crate::store::{StoreMetrics, StoreWriter};
use bulwark_framework::Action;
use std::collections::VecDeque;
use std::sync::Arc;

/// A durable replica's store counters and what it holds back for them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStatus {
    pub metrics: StoreMetrics,
    /// Groups of records submitted (one per `handle` call that persisted anything); each
    /// write transaction commits one or more of them.
    pub groups: u64,
    /// Actions waiting for their records to become durable.
    pub held_actions: usize,
    /// Times inbound delivery was paused because `held_actions` passed
    /// [`HELD_ACTIONS_MAX`] (a disk slower than the load).
    pub inbound_pauses: u64,
}

/// Actions a durable replica may hold for the disk before it stops taking inbound
/// messages. While paused, the forwarder reads nothing more, the transport's bounded
/// inbound channel fills, and TCP flow control pushes back on the senders: a disk that
/// stalls for seconds costs latency, not memory. Delivery resumes below half of this.
pub const HELD_ACTIONS_MAX: usize = 65_536;

/// Opened and closed by the replica actor; the forwarder waits at it before reading the
/// next inbound message.
#[derive(Debug, Clone, Default)]
pub(crate) struct InboundGate {
    closed: Arc<std::sync::atomic::AtomicBool>,
    reopened: Arc<tokio::sync::Notify>,
}

impl InboundGate {
    fn close(&self) -> bool {
        !self.closed.swap(true, std::sync::atomic::Ordering::SeqCst)
    }

    fn open(&self) {
        if self.closed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.reopened.notify_waiters();
        }
    }

    pub(super) async fn wait_open(&self) {
        loop {
            // Created before the check, so an `open` between the check and the await is
            // not missed.
            let reopened = self.reopened.notified();
            if !self.closed.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            reopened.await;
        }
    }
}

/// Holds a durable replica's actions back until the records before them are durable.
///
/// Each `handle` call's records are submitted as one group with the next ticket; every
/// action after them waits for that ticket, and so does every action of a later call while
/// anything is still waiting (an action never overtakes a record that came before it).
#[derive(Debug)]
pub(super) struct GroupCommit {
    pub(super) writer: StoreWriter,
    pub(super) submitted: u64,
    pub(super) durable: u64,
    pub(super) held: VecDeque<(u64, Action)>,
    pub(super) gate: InboundGate,
    pub(super) inbound_pauses: u64,
}

impl GroupCommit {
    /// Pauses inbound delivery above [`HELD_ACTIONS_MAX`] held actions, resumes it below
    /// half of that.
    pub(super) fn regulate(&mut self) {
        if self.held.len() > HELD_ACTIONS_MAX {
            if self.gate.close() {
                self.inbound_pauses += 1;
                tracing::warn!(held = self.held.len(), "the disk is behind: pausing inbound messages");
            }
        } else if self.held.len() <= HELD_ACTIONS_MAX / 2 {
            self.gate.open();
        }
    }

    /// Takes one call's actions: submits its records and returns what may be carried out
    /// now (nothing, while an earlier or this call's records are not yet durable).
    pub(super) fn admit(&mut self, actions: Vec<Action>) -> Vec<Action> {
        let mut records = Vec::new();
        let mut rest = Vec::with_capacity(actions.len());
        for action in actions {
            match action {
                Action::Persist(record) => records.push(record),
                other => rest.push(other),
            }
        }
        if !records.is_empty() {
            self.submitted += 1;
            // A writer that stopped has reported its failure; the replica is stopping.
            let _ = self.writer.submit(self.submitted, records);
        }
        if self.durable == self.submitted && self.held.is_empty() {
            return rest;
        }
        let ticket = self.submitted;
        self.held.extend(rest.into_iter().map(|action| (ticket, action)));
        Vec::new()
    }

    /// Everything up to `ticket` is durable: the actions that waited only for it, in order.
    pub(super) fn durable(&mut self, ticket: u64) -> Vec<Action> {
        self.durable = self.durable.max(ticket);
        let ready = self.held.iter().take_while(|(t, _)| *t <= self.durable).count();
        self.held.drain(..ready).map(|(_, action)| action).collect()
    }

    pub(super) fn status(&self) -> StoreStatus {
        StoreStatus {
            metrics: self.writer.metrics(),
            groups: self.submitted,
            held_actions: self.held.len(),
            inbound_pauses: self.inbound_pauses,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Disk back-pressure: while the gate is closed the forwarder's wait does not end; it
    /// ends as soon as the gate opens, however the two race.
    #[actix_rt::test]
    async fn a_closed_inbound_gate_holds_the_reader_until_it_opens() {
        let gate = InboundGate::default();
        assert!(gate.close(), "the first close is counted");
        assert!(!gate.close(), "closing a closed gate is not a second pause");
        let waiting = {
            let gate = gate.clone();
            actix_rt::spawn(async move { gate.wait_open().await })
        };
        actix_rt::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a closed gate must hold the reader");
        gate.open();
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("opened gate releases").unwrap();
        // Open: passes at once.
        tokio::time::timeout(Duration::from_millis(100), gate.wait_open()).await.expect("an open gate passes");
    }
}
