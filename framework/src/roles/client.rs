//! The client role (PBFT.md CL1–CL3, CX1).
//!
//! A client signs each request (unless the cluster trusts client connections,
//! `client_auth = "connection"`) with a fresh, increasing timestamp and sends it to the
//! primary of the latest view it knows. It accepts a result once `f + 1` replicas sent
//! matching replies (at least one of them is correct). If that takes longer than the
//! retransmission timeout it broadcasts the request to every replica, and keeps doing so
//! with backoff. Many requests may be outstanding, up to the client window `W`.
//!
//! A read-only request is broadcast and answered from each replica's current state; it
//! needs `2f + 1` matching replies, and falls back to an ordered request when they do not
//! come (replies differ, or the timer fires).

use crate::config::ClientAuth;
use crate::ids::{ClientId, Instant, ReplicaId, Timestamp, View};
use crate::membership::{MemberMap, Membership, MembershipHandle};
use crate::messages::{client_id, Inquiry, Request, VerifiedReply};
use crate::roles::Role;
use bulwark_crypto::{KeyPair, Verified};
use std::collections::BTreeMap;

/// What the client is told: an operation to issue, a verified reply, its timer.
#[derive(Debug, Clone)]
pub enum ClientInput {
    /// Issue a request for `operation` (encoded `S::Op`), read-only or ordered. Answered
    /// first with [`ClientAction::Issued`] and the request's sends, or with
    /// [`ClientAction::Rejected`] alone.
    Invoke { operation: Vec<u8>, read_only: bool },
    /// CL2: a reply whose signature (or connection) the runtime verified.
    Reply(VerifiedReply),
    /// CL3: the timer set by [`ClientAction::SetTimer`] fired.
    Timer,
}

/// What the client asks its runtime to do, or reports.
#[derive(Debug, Clone)]
pub enum ClientAction {
    /// The operation of [`ClientInput::Invoke`] was issued with this timestamp: its
    /// completion will name it.
    Issued {
        timestamp: Timestamp,
    },
    /// The operation of [`ClientInput::Invoke`] was not issued, and why; nothing changed.
    Rejected(ClientError),
    Send {
        to: ReplicaId,
        request: Verified<Request>,
    },
    Broadcast {
        request: Verified<Request>,
    },
    /// Deliver [`ClientInput::Timer`] at `at` (replaces the pending client timer).
    SetTimer {
        at: Instant,
    },
    /// The request with `timestamp` completed with `result` (an encoded
    /// [`crate::service::Outcome`]).
    Completed {
        timestamp: Timestamp,
        result: Vec<u8>,
    },
}

/// Why the client could not issue a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("{outstanding} requests are outstanding and the oldest is {limit} timestamps back (the client window)")]
    WindowFull { outstanding: usize, limit: usize },
    #[error("operation of {bytes} bytes exceeds the limit of {limit}")]
    OperationTooLarge { bytes: usize, limit: usize },
}

#[derive(Debug)]
struct Outstanding {
    request: Verified<Request>,
    /// The first reply from each replica: its result and view.
    replies: MemberMap<Option<(Vec<u8>, View)>>,
    deadline: Instant,
    retransmissions: u32,
}

/// The client role.
#[derive(Debug)]
pub struct Client {
    key: KeyPair,
    id: ClientId,
    membership: MembershipHandle,
    next_timestamp: Timestamp,
    view: View,
    outstanding: BTreeMap<Timestamp, Outstanding>,
    timer: Option<Instant>,
}

impl Client {
    /// A client with `key`, whose first timestamp is `first_timestamp`. A client that
    /// restarts must start above every timestamp it used before (the runtime uses the
    /// wall clock in microseconds).
    pub fn new(key: KeyPair, membership: MembershipHandle, first_timestamp: Timestamp) -> Self {
        let id = client_id(&key.public().into());
        Client {
            key,
            id,
            membership,
            next_timestamp: first_timestamp,
            view: View(0),
            outstanding: BTreeMap::new(),
            timer: None,
        }
    }

    pub fn id(&self) -> ClientId {
        self.id
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// A signed INQUIRY (where is each replica?) with `nonce`.
    pub fn inquiry(&self, nonce: u64) -> Verified<Inquiry> {
        self.membership.sign(Inquiry { client_key: self.key.public().into(), nonce }, &self.key)
    }

    /// Timestamps of the requests still outstanding.
    pub fn outstanding_timestamps(&self) -> Vec<Timestamp> {
        self.outstanding.keys().copied().collect()
    }

    /// The view the client believes current.
    pub fn view(&self) -> View {
        self.view
    }

    /// Whether [`ClientInput::Invoke`] would be rejected now for lack of room in the client
    /// window.
    pub fn window_full(&self) -> bool {
        let limit = self.membership.current().params.client_window;
        let oldest = self.outstanding.keys().next().copied().unwrap_or(self.next_timestamp);
        self.next_timestamp.0 >= oldest.0 + limit
    }

    /// Issues a request. Returns its timestamp and the actions to carry out.
    fn invoke(
        &mut self,
        operation: Vec<u8>,
        read_only: bool,
        now: Instant,
    ) -> Result<(Timestamp, Vec<ClientAction>), ClientError> {
        // CX1/CX3: replicas keep a client's executed window (t_max - W, t_max], so a new
        // timestamp must stay within W of the oldest outstanding one, or that one would
        // fall below the window and be dropped as too old.
        if self.window_full() {
            let limit = self.membership.current().params.client_window as usize;
            return Err(ClientError::WindowFull { outstanding: self.outstanding.len(), limit });
        }
        let bytes_limit = self.membership.current().params.request_bytes_max;
        if operation.len() > bytes_limit {
            return Err(ClientError::OperationTooLarge { bytes: operation.len(), limit: bytes_limit });
        }
        let timestamp = self.next_timestamp;
        self.next_timestamp = Timestamp(timestamp.0 + 1);
        let request =
            self.authenticate(Request { client_key: self.key.public().into(), timestamp, read_only, operation });
        let mut actions = vec![ClientAction::Issued { timestamp }];
        actions.push(if read_only {
            ClientAction::Broadcast { request: request.clone() }
        } else {
            ClientAction::Send { to: self.membership.current().primary(self.view), request: request.clone() }
        });
        let deadline = now + self.membership.current().params.client_retransmit();
        self.outstanding.insert(
            timestamp,
            Outstanding {
                request,
                replies: MemberMap::new(&self.membership.current(), |_| None),
                deadline,
                retransmissions: 0,
            },
        );
        self.rearm(&mut actions);
        Ok((timestamp, actions))
    }

    fn authenticate(&self, request: Request) -> Verified<Request> {
        authenticate(&self.membership.current(), &self.key, request)
    }

    /// CL2: take a verified reply. It counts for the replica it is attributed to (its
    /// signer, or in connection mode the replica whose connection it came on).
    fn on_reply(&mut self, reply: VerifiedReply, now: Instant) -> Vec<ClientAction> {
        let mut actions = Vec::new();
        if reply.client != self.id {
            return actions;
        }
        let timestamp = reply.timestamp;
        let n = self.membership.current().n();
        let Some(pending) = self.outstanding.get_mut(&timestamp) else {
            return actions;
        };
        if reply.read_only != pending.request.read_only {
            return actions;
        }
        let Some(slot) = pending.replies.get_mut(reply.attributed_to()) else {
            return actions;
        };
        if slot.is_some() {
            return actions;
        }
        *slot = Some((reply.result.clone(), reply.view));
        let needed = if pending.request.read_only {
            self.membership.current().quorum()
        } else {
            self.membership.current().weak_quorum()
        };
        let matching: Vec<View> = pending
            .replies
            .values()
            .flatten()
            .filter(|(result, _)| *result == reply.result)
            .map(|(_, view)| *view)
            .collect();
        if matching.len() >= needed {
            let mut views = matching;
            views.sort_unstable_by(|a, b| b.cmp(a));
            // The (f+1)-th highest view among matching replies is vouched for by at least
            // one correct replica.
            let vouched = views[self.membership.current().weak_quorum() - 1];
            self.view = self.view.max(vouched);
            self.outstanding.remove(&timestamp);
            actions.push(ClientAction::Completed { timestamp, result: reply.result.clone() });
        } else if pending.request.read_only {
            let replied = pending.replies.values().flatten().count();
            let best = best_match(&pending.replies);
            if best + (n - replied) < needed {
                self.fall_back_to_ordered(timestamp, now, &mut actions);
            }
        }
        self.rearm(&mut actions);
        actions
    }

    /// CL3: retransmit every request whose deadline passed, to all replicas, with backoff.
    fn on_timer(&mut self, now: Instant) -> Vec<ClientAction> {
        let mut actions = Vec::new();
        let due: Vec<Timestamp> = self.outstanding.iter().filter(|(_, p)| p.deadline <= now).map(|(t, _)| *t).collect();
        for timestamp in due {
            let read_only = self.outstanding[&timestamp].request.read_only;
            if read_only {
                self.fall_back_to_ordered(timestamp, now, &mut actions);
                continue;
            }
            let base = self.membership.current().params.client_retransmit();
            let pending = self.outstanding.get_mut(&timestamp).expect("due entry exists");
            pending.retransmissions += 1;
            pending.deadline = now + base * (1u32 << pending.retransmissions.min(3));
            actions.push(ClientAction::Broadcast { request: pending.request.clone() });
        }
        self.timer = None;
        self.rearm(&mut actions);
        actions
    }

    fn fall_back_to_ordered(&mut self, timestamp: Timestamp, now: Instant, actions: &mut Vec<ClientAction>) {
        let Some(pending) = self.outstanding.get_mut(&timestamp) else {
            return;
        };
        let mut request = pending.request.payload().clone();
        request.read_only = false;
        pending.request = authenticate(&self.membership.current(), &self.key, request);
        pending.replies = MemberMap::new(&self.membership.current(), |_| None);
        pending.deadline = now + self.membership.current().params.client_retransmit();
        actions.push(ClientAction::Broadcast { request: pending.request.clone() });
    }

    fn rearm(&mut self, actions: &mut Vec<ClientAction>) {
        let earliest = self.outstanding.values().map(|p| p.deadline).min();
        if earliest != self.timer {
            self.timer = earliest;
            if let Some(at) = earliest {
                actions.push(ClientAction::SetTimer { at });
            }
        }
    }
}

impl Role for Client {
    type Input = ClientInput;
    type Output = ClientAction;

    fn handle(&mut self, input: ClientInput, now: Instant) -> Vec<ClientAction> {
        match input {
            ClientInput::Invoke { operation, read_only } => match self.invoke(operation, read_only, now) {
                Ok((_, actions)) => actions,
                Err(error) => vec![ClientAction::Rejected(error)],
            },
            ClientInput::Reply(reply) => self.on_reply(reply, now),
            ClientInput::Timer => self.on_timer(now),
        }
    }
}

/// A request signed by the client, or (`client_auth = "connection"`) sent unsigned.
fn authenticate(membership: &Membership, key: &KeyPair, request: Request) -> Verified<Request> {
    match membership.params.client_auth {
        ClientAuth::Signed => membership.scope().sign(request, key),
        ClientAuth::Connection => membership.scope().unsigned(request),
    }
}

fn best_match(replies: &MemberMap<Option<(Vec<u8>, View)>>) -> usize {
    let results: Vec<&Vec<u8>> = replies.values().flatten().map(|(r, _)| r).collect();
    results.iter().map(|r| results.iter().filter(|other| *other == r).count()).max().unwrap_or(0)
}
