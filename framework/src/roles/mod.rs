//! The protocol roles, each a pure state machine: inputs in, actions out, no I/O, no
//! clock (the caller passes `now`), no randomness.
//!
//! A replica is composed of five roles, wired together by [`replica::Replica`]:
//! * [`primary::PrimaryRole`] batches requests, assigns sequence numbers and signs the
//!   pre-prepares (active only while its replica leads its view); the runtime and the
//!   simulator run it apart from its replica, exchanging [`primary::PrimaryInput`]s and
//!   [`primary::PrimaryOutput`]s with it;
//! * [`backup::Backup`] runs the three-phase agreement for every sequence number in the
//!   watermark window (every replica runs it; in the primary it accepts its own
//!   pre-prepares);
//! * [`executor::Executor`] executes committed batches strictly in order through the
//!   user's [`crate::service::Service`] and keeps the client table (exactly-once replies);
//! * [`checkpoint::CheckpointCollector`] turns `2f + 1` matching CHECKPOINTs into a stable
//!   checkpoint, which moves the watermarks and lets the log be discarded. The runtime and
//!   the simulator run it apart from its replica, exchanging
//!   [`checkpoint::CollectorInput`]s and [`checkpoint::CollectorOutput`]s with it.
//!
//! * [`view_change::ViewChanger`] suspects a faulty primary, collects VIEW-CHANGEs and
//!   decides when the replica joins a view change, builds a NEW-VIEW or may accept one.
//!
//! [`client::Client`] is the client side.

pub mod backup;
pub mod checkpoint;
pub mod client;
pub mod executor;
pub mod primary;
pub mod replica;
pub mod state_transfer;
pub mod view_change;

use crate::ids::{ClientId, Instant, ReplicaId, SeqNum, View};
use crate::membership::Membership;
use crate::messages::{Report, VerifiedMessage, VerifiedNewView, VerifiedReply};
use bulwark_crypto::{Digest, Verified};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Clients caught signing beyond their window (CX1), with when, remembered for a
/// view-change timeout; at most `client_table_max` of them (the longest-known forgotten
/// first), so a Byzantine client army cannot grow it.
#[derive(Debug, Default)]
pub(crate) struct WindowOffenders {
    caught_at: BTreeMap<ClientId, Instant>,
}

impl WindowOffenders {
    pub(crate) fn note(&mut self, client: ClientId, now: Instant, membership: &Membership) {
        let keep = membership.params.client_table_max.max(1);
        if self.caught_at.len() >= keep && !self.caught_at.contains_key(&client) {
            let oldest = self.caught_at.iter().min_by_key(|(_, at)| **at).map(|(c, _)| *c);
            if let Some(oldest) = oldest {
                self.caught_at.remove(&oldest);
            }
        }
        self.caught_at.insert(client, now);
    }

    pub(crate) fn recent(&self, client: ClientId, now: Instant, membership: &Membership) -> bool {
        let memory = membership.params.view_change_timeout();
        self.caught_at.get(&client).is_some_and(|at| now < *at + memory)
    }
}

/// Timers a replica sets. Setting a timer replaces the pending one of the same kind; a
/// role ignores a firing that is no longer due (it keeps its own deadline).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimerKind {
    /// The primary's batch delay (P3).
    Batch,
    /// Periodic progress check: a stuck replica sends STATUS and retries state transfer.
    Status,
    /// The request timer (VC1): a request this replica knows of waits too long.
    Request,
    /// The view-change timer (VC3): no NEW-VIEW came after `2f + 1` VIEW-CHANGEs.
    ViewChange,
}

/// What a replica asks its runtime to do.
#[derive(Clone, Debug)]
pub enum Action {
    /// Send to one replica.
    Send { to: ReplicaId, message: VerifiedMessage },
    /// Send to every other member of the cluster.
    Broadcast { message: VerifiedMessage },
    /// Deliver a reply to a client.
    Reply { client: ClientId, reply: VerifiedReply },
    /// Answer an INQUIRY.
    Report { client: ClientId, report: Verified<Report> },
    /// Make `Record` durable before carrying out any later action of the same list (see
    /// [`crate::durable`]); one `handle` call's records may be written together.
    Persist(crate::durable::Record),
    /// Fire `TimerKind` at `at` (replacing the pending one of that kind).
    SetTimer { timer: TimerKind, at: Instant },
    /// Hand this to the replica's checkpoint collector, run as a role of its own (see
    /// [`replica::Replica::detach_checkpoint_collector`]); its answer comes back as
    /// [`replica::Input::Checkpoints`].
    ToCheckpoints(checkpoint::CollectorInput),
    /// Hand this to the replica's primary role, run as a role of its own (see
    /// [`replica::Replica::detach_primary`]); its proposals come back as
    /// [`replica::Input::Primary`].
    ToPrimary(primary::PrimaryInput),
    /// Something worth observing happened (metrics, logs, the simulator's checker).
    Event(ReplicaEvent),
}

/// Observable replica events. They carry no decisions: dropping them changes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaEvent {
    /// Batch `seq` with digest `digest` was executed in view `view` (E1).
    Executed { seq: SeqNum, digest: Digest, view: View, requests: usize },
    /// A system command of batch `seq` was executed (after the batch's requests).
    SystemExecuted { seq: SeqNum, command: crate::messages::SystemCommand },
    /// A checkpoint became stable (C3).
    Stable { seq: SeqNum, state_digest: Digest },
    /// A checkpoint image was installed by state transfer (ST5).
    StateInstalled { seq: SeqNum, state_digest: Digest },
    /// A message was refused by a role's acceptance rules.
    Refused { reason: &'static str },
    /// The replica signed and sent a VIEW-CHANGE for `view` (VC2).
    ViewChangeStarted { view: View },
    /// The replica entered `view` by this NEW-VIEW (VC16; for the new primary VC13).
    EnteredView { view: View, new_view: Arc<VerifiedNewView> },
    /// The replica came back from its durable records: stable checkpoint `stable` installed,
    /// the committed batches above it re-executed (each reported by an `Executed` event
    /// after this one), back in view `view`.
    Recovered { stable: SeqNum, view: View },
}
