//! The clients that hold their whole window at one of a replica's roles: the role's actor
//! keeps the set, and the inbound lanes read it to drop those clients' requests before
//! paying for their verification.

use crate::clock::now;
use bulwark_framework::{ClientId, Instant};
use std::collections::BTreeSet;
use std::sync::Arc;

/// The clients saturated at a replica, by the role that holds their requests: the
/// primary role (queued) and the view-changer (waiting to execute).
#[derive(Debug, Clone, Default)]
pub(crate) struct Saturation {
    pub(crate) primary: SaturatedClients,
    pub(crate) view_changer: SaturatedClients,
}

impl Saturation {
    pub(super) fn contains(&self, client: ClientId) -> bool {
        self.primary.contains(client) || self.view_changer.contains(client)
    }
}

/// Clients that hold their whole `client_window` at one of a replica's roles (see
/// [`bulwark_framework::roles::node::Node::client_saturated`]): the role's actor keeps the
/// set, the replica's inbound lanes drop those clients' requests before verification.
/// Only a client sending more than a correct one may is ever in it.
#[derive(Debug, Clone, Default)]
pub(crate) struct SaturatedClients(pub(super) Arc<std::sync::Mutex<Saturated>>);

#[derive(Debug, Default)]
pub(crate) struct Saturated {
    pub(super) clients: BTreeSet<ClientId>,
    /// Where the next step's re-reading starts (the set is re-read in turns).
    cursor: Option<ClientId>,
}

/// Clients of the set re-read per step: a bound on a step's extra work however many
/// clients an attacker keeps saturated (each is left in the set at most a few steps long).
const SATURATED_REREAD_PER_STEP: usize = 16;

impl SaturatedClients {
    pub(crate) fn contains(&self, client: ClientId) -> bool {
        self.0.lock().is_ok_and(|saturated| saturated.clients.contains(&client))
    }

    /// Empties the set: its role no longer holds any client's requests.
    pub(crate) fn clear(&self) {
        if let Ok(mut saturated) = self.0.lock() {
            saturated.clients.clear();
            saturated.cursor = None;
        }
    }

    /// Re-reads, after a step of a role, the saturation of `touched` (the client whose
    /// request it handled) and of up to [`SATURATED_REREAD_PER_STEP`] clients of the set,
    /// taken in turn; `is_saturated` is the role's own answer.
    pub(crate) fn refresh(&self, is_saturated: impl Fn(ClientId, Instant) -> bool, touched: Option<ClientId>) {
        let Ok(mut saturated) = self.0.lock() else {
            return;
        };
        if saturated.clients.is_empty() && touched.is_none() {
            return;
        }
        let now = now();
        let start = saturated.cursor.map_or(ClientId(0), |c| ClientId(c.0.wrapping_add(1)));
        let turn: Vec<ClientId> = saturated
            .clients
            .range(start..)
            .chain(saturated.clients.range(..start))
            .take(SATURATED_REREAD_PER_STEP)
            .copied()
            .collect();
        saturated.cursor = turn.last().copied();
        for client in turn {
            if !is_saturated(client, now) {
                saturated.clients.remove(&client);
            }
        }
        if let Some(client) = touched {
            if is_saturated(client, now) {
                saturated.clients.insert(client);
            } else {
                saturated.clients.remove(&client);
            }
        }
    }
}
