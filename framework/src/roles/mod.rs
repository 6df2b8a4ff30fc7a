//! The protocol roles, each a pure state machine: no I/O, no clock (the caller passes
//! `now`), no randomness.
//!
//! # One shape
//!
//! Every role implements [`Role`]: one input and the current time in, its outputs out, in
//! the order they are to be carried out — the backup ([`backup::BackupInput`]), the
//! executor ([`executor::ExecutorInput`]), the state fetcher
//! ([`state_transfer::FetchInput`]), the primary, the checkpoint collector, the
//! view-changer, the replica itself and the client ([`client::ClientInput`]). Whatever a
//! role needs from another travels as an output of one and an input of the other, never as
//! a call, so a runtime can run a role as an actor of its own and the simulator can put a
//! delay (and other inputs) between them. A refusal is an output carrying a
//! [`refusal::RoleRefusal`]. Reading a role's state (its view, its sizes, a query such as
//! [`backup::Backup::position`]) is a plain `&self` method; changing it is only ever
//! `handle`, apart from building a role and restoring it from durable records.
//!
//! # A replica and its roles
//!
//! [`replica::Replica`] (`Input` to [`Action`]s) hosts the backup, the executor and the
//! state fetcher, keeps its view and watermarks, and routes what the other roles need:
//! * [`primary::PrimaryRole`] batches requests, assigns sequence numbers and signs the
//!   pre-prepares while its replica leads its view ([`Action::ToPrimary`] in,
//!   [`replica::Input::Primary`] back);
//! * [`checkpoint::CheckpointCollector`] turns `2f + 1` matching CHECKPOINTs into a stable
//!   checkpoint ([`Action::ToCheckpoints`], [`replica::Input::Checkpoints`]);
//! * [`view_change::ViewChanger`] suspects a faulty primary, collects VIEW-CHANGEs, decides
//!   when to join a view change and builds the NEW-VIEW as the new primary
//!   ([`Action::ToViewChanger`], [`replica::Input::ViewChanger`]).
//!
//! The runtime runs each of the three as an actor of its own, the simulator each behind a
//! hop with a drawn delay, and [`node::Node`] wires them with no delay for tests and
//! fuzzers: one wiring everywhere. Inside the replica, [`backup::Backup`] runs the
//! three-phase agreement and [`executor::Executor`] executes committed batches strictly in
//! order through the user's [`crate::service::Service`].
//!
//! [`client::Client`] is the client side.

use crate::roles::refusal::RoleRefusal;

pub mod backup;
pub mod checkpoint;
pub mod client;
pub mod executor;
pub mod node;
pub mod primary;
pub mod refusal;
pub mod replica;
pub mod state_transfer;
pub mod view_change;

use crate::ids::{ClientId, Instant, ReplicaId, SeqNum, View};
use crate::membership::Membership;
use crate::messages::{Report, VerifiedMessage, VerifiedNewView, VerifiedReply};
use crate::roles::view_change::ViewChangerInput;
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

/// The one shape of every role (see the module documentation).
pub trait Role {
    type Input;
    type Output;

    /// Handles one input at time `now`; returns what to carry out, in order.
    fn handle(&mut self, input: Self::Input, now: Instant) -> Vec<Self::Output>;
}

/// Timers of a replica and its roles. Setting a timer replaces the pending one of the same
/// kind; a role ignores a firing that is no longer due (it keeps its own deadline). The
/// status timer is the replica's, the batch timer the primary role's, the request and
/// view-change timers the view-changer's: a runtime delivers each to its own role.
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
    /// Hand this to the replica's checkpoint collector; its answer comes back as
    /// [`replica::Input::Checkpoints`].
    ToCheckpoints(checkpoint::CollectorInput),
    /// Hand this to the replica's primary role; its proposals come back as
    /// [`replica::Input::Primary`].
    ToPrimary(primary::PrimaryInput),
    /// Hand this to the replica's view-changer; its answers come back as
    /// [`replica::Input::ViewChanger`].
    ToViewChanger(ViewChangerInput),
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
    Refused { reason: RoleRefusal },
    /// The service did something wrong; the replica carried on (E6).
    ServiceFault(crate::roles::executor::ServiceFault),
    /// C8: at stable checkpoint `seq` this replica's state digest was `own`, not the
    /// `agreed` one a quorum signed: the service is probably not deterministic.
    Diverged { seq: SeqNum, own: Digest, agreed: Digest },
    /// The replica signed and sent a VIEW-CHANGE for `view` (VC2).
    ViewChangeStarted { view: View },
    /// The replica entered `view` by this NEW-VIEW (VC16; for the new primary VC13).
    EnteredView { view: View, new_view: Arc<VerifiedNewView> },
    /// The replica came back from its durable records: stable checkpoint `stable` installed,
    /// the committed batches above it re-executed (each reported by an `Executed` event
    /// after this one), back in view `view`.
    Recovered { stable: SeqNum, view: View },
}
