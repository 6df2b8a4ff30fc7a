//! The hops between a replica instance and its roles run apart (checkpoint collector,
//! primary, view-changer): they arrive in order per link after a random delay, as through an
//! actor's mailbox, and never reach a later incarnation.

use super::{Endpoint, Event, Simulation};
use crate::ids::Instant;
use crate::roles::checkpoint::{CollectorInput, CollectorOutput};
use crate::roles::primary::{PrimaryInput, PrimaryOutput};
use crate::roles::view_change::{ViewChangerInput, ViewChangerOutput};
use crate::roles::{Role, TimerKind};
use crate::service::Service;
use rand::Rng;

/// What goes between a replica instance and its roles run apart.
#[derive(Debug)]
pub(super) enum Hop {
    ToCollector(CollectorInput),
    FromCollector(CollectorOutput),
    ToPrimary(PrimaryInput),
    FromPrimary(PrimaryOutput),
    ToViewChanger(ViewChangerInput),
    FromViewChanger(ViewChangerOutput),
}

impl Hop {
    /// The link it travels on: each is in order.
    pub(super) fn link(&self) -> u8 {
        match self {
            Hop::ToCollector(_) => 0,
            Hop::FromCollector(_) => 1,
            Hop::ToPrimary(_) => 2,
            Hop::FromPrimary(_) => 3,
            Hop::ToViewChanger(_) => 4,
            Hop::FromViewChanger(_) => 5,
        }
    }

    /// Whether the replica instance takes it (rather than one of its roles).
    pub(super) fn reaches_replica(&self) -> bool {
        matches!(self, Hop::FromCollector(_) | Hop::FromPrimary(_) | Hop::FromViewChanger(_))
    }
}

impl<S: Service> Simulation<S> {
    pub(super) fn incarnation(&self, node: Endpoint) -> u64 {
        self.incarnations.get(&node).copied().unwrap_or_default()
    }

    /// Sends `hop` between `node`'s replica and one of its roles: it arrives after a
    /// random delay, never before the previous hop on the same link.
    pub(super) fn hop(&mut self, node: Endpoint, hop: Hop) {
        let delay = self.rng.gen_range(0..=self.config.network.role_hop_max_us);
        // A replica modelled with a CPU hands its roles what it produced once its step is done.
        let sent = self.departs();
        let due = self.hops_due.entry((node, hop.link())).or_insert(Instant::ZERO);
        *due = Instant(sent.0 + delay).max(*due);
        let (at, incarnation) = (*due, self.incarnation(node));
        self.schedule(at, Event::RoleHop { node, incarnation, hop });
    }

    /// `node`'s primary role, run apart, takes `input`; its proposals go to its replica,
    /// its batch timer is the simulator's.
    pub(super) fn primary_step(&mut self, node: Endpoint, input: PrimaryInput) {
        let now = self.now;
        let Some(roles) = self.roles_apart.get_mut(&node) else {
            return;
        };
        for output in roles.primary.handle(input, now) {
            match output {
                PrimaryOutput::SetBatchTimer(at) => self.set_timer(node, TimerKind::Batch, at),
                output => self.hop(node, Hop::FromPrimary(output)),
            }
        }
    }

    /// `node`'s view-changer, run apart, takes `input`; its answers go to its replica, its
    /// request and view-change timers are the simulator's.
    pub(super) fn view_changer_step(&mut self, node: Endpoint, input: ViewChangerInput) {
        let now = self.now;
        let Some(roles) = self.roles_apart.get_mut(&node) else {
            return;
        };
        for output in roles.view_changer.handle(input, now) {
            match output {
                ViewChangerOutput::SetTimer(timer, at) => self.set_timer(node, timer, at),
                output => self.hop(node, Hop::FromViewChanger(output)),
            }
        }
    }
}
