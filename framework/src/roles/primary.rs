//! The primary's proposer role: batching and sequence assignment (PBFT.md P1–P5).
//!
//! [`PrimaryRole`] is the role as its replica sees it: it proposes while its replica says
//! it leads a view, signs the pre-prepares, and runs [`Primary`], the proposer below.
//!
//! Requests are queued (bounded; beyond the bound they are shed and the client
//! retransmits). A batch is cut when it is full, when nothing is in flight (low load:
//! no reason to wait), or when the batch delay expires. Sequence numbers are assigned
//! consecutively, only inside the watermark window and while fewer than
//! `in_flight_batches_max` batches await execution, so many batches are in flight at once
//! (pipelining) but never more than the window allows.
//!
//! Clients are served in turn (Aardvark's fairness): each client has its own queue, of at
//! most `client_window` requests (a correct client never has more outstanding), and a
//! batch takes one request from each client with requests waiting before it takes a second
//! from any. A client flooding valid requests then gets one place per round, as every other
//! client does, instead of the whole queue, which would leave the correct clients almost
//! nothing (`bench --attack request-flood` measures it).
//!
//! Turns alone were not enough: the flooder always has requests queued and correct clients
//! mostly have theirs in flight, so it filled every batch's empty places, half the pipeline
//! became its requests, and the correct clients' latency doubled (their throughput, closed
//! loop, halved). So each client also has a share of the pipeline: at most
//! `in_flight_batches_max × batch_size_max / k` of its requests proposed and not executed,
//! `k` the clients with requests queued or in flight. A client over its share waits for its
//! requests to execute, unless nothing at all is in flight (the pipeline is never left idle
//! for fairness' sake).

use crate::ids::{ClientId, Instant, SeqNum, Timestamp, View};
use crate::membership::MembershipHandle;
use crate::messages::{request_size, Batch, Command, PrePrepare, Request, SystemCommand};
use crate::roles::WindowOffenders;
use bulwark_crypto::{KeyPair, Verified};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// What a replica tells its primary role. A replica sends these in the order it decides
/// them, and the role takes them in that order: it leads exactly while its replica holds
/// it the primary of a view in normal mode.
#[derive(Debug, Clone)]
pub enum PrimaryInput {
    /// This replica is the primary of `view`, in normal mode: propose, numbering batches
    /// from `next_seq` (VC14, or above what it signed before a crash), inside the window
    /// above `low`. Again for the view it leads: number from `next_seq` at the earliest.
    Lead { view: View, next_seq: SeqNum, low: SeqNum, time_floor_us: u64 },
    /// Stop proposing: the replica is view-changing (VC4a) or entered a view it does not
    /// lead. Queued requests are dropped; they wait at the backups, whose timers and the
    /// clients' retransmissions bring them to the next primary.
    Follow,
    /// A request the replica found new (R4, P5: not executed).
    Offer(Verified<Request>),
    /// A system command to order, ahead of the queued requests.
    System(SystemCommand),
    /// Batches up to `seq` were executed, by any path.
    Executed(SeqNum),
    /// The low watermark moved up to `seq` (C4).
    Low(SeqNum),
    /// The batch timer fired (P3).
    BatchTimer,
}

/// What a primary role tells its replica (or, for its timer, its runtime).
#[derive(Debug, Clone)]
pub enum PrimaryOutput {
    /// A signed PRE-PREPARE and its batch (P1): the replica logs it as its own proposal,
    /// persists it and multicasts it, if it still leads the view it names.
    Propose(Verified<PrePrepare>, Arc<Batch>),
    /// A request was shed: the queue, or its client's part of it, was full (R4).
    Shed,
    /// Fire [`PrimaryInput::BatchTimer`] at this time (P3), replacing the pending one.
    SetBatchTimer(Instant),
}

/// The primary role: the proposer of the view its replica leads, and the signing of its
/// pre-prepares. It runs apart from its replica (see [`crate::roles`]).
#[derive(Debug)]
pub struct PrimaryRole {
    membership: MembershipHandle,
    key: Arc<KeyPair>,
    /// The view this role proposes in, while its replica leads one.
    leading: Option<View>,
    low: SeqNum,
    proposer: Primary,
    batch_timer: Option<Instant>,
}

impl PrimaryRole {
    /// The primary role of a replica that leads `leading` (if any), numbering from
    /// `next_seq`.
    pub fn new(membership: MembershipHandle, key: Arc<KeyPair>, leading: Option<View>, next_seq: SeqNum) -> Self {
        let proposer = Primary::new(membership.clone(), next_seq);
        PrimaryRole { membership, key, leading, low: SeqNum(0), proposer, batch_timer: None }
    }

    /// Handles one input at `now`; proposes every batch P2–P3 allow after it.
    pub fn handle(&mut self, input: PrimaryInput, now: Instant) -> Vec<PrimaryOutput> {
        let mut outputs = Vec::new();
        match input {
            PrimaryInput::Lead { view, next_seq, low, time_floor_us } => {
                if self.leading == Some(view) {
                    self.proposer.number_from(next_seq);
                } else {
                    self.proposer = Primary::new(self.membership.clone(), next_seq);
                    self.batch_timer = None;
                }
                self.proposer.time_at_least(time_floor_us);
                self.leading = Some(view);
                self.low = self.low.max(low);
            }
            PrimaryInput::Follow => {
                self.leading = None;
                self.proposer = Primary::new(self.membership.clone(), self.proposer.next_seq());
                self.batch_timer = None;
            }
            PrimaryInput::Offer(request) if self.leading.is_some() => {
                if self.proposer.offer(request, now) == Admission::Shed {
                    outputs.push(PrimaryOutput::Shed);
                }
            }
            PrimaryInput::System(command) if self.leading.is_some() => {
                if self.proposer.offer_system(command, now) == Admission::Shed {
                    outputs.push(PrimaryOutput::Shed);
                }
            }
            // Its replica offers only while it leads, and says so first.
            PrimaryInput::Offer(_) | PrimaryInput::System(_) => {}
            PrimaryInput::Executed(seq) => self.proposer.on_executed(seq),
            PrimaryInput::Low(low) => self.low = self.low.max(low),
            PrimaryInput::BatchTimer => self.batch_timer = None,
        }
        let Some(view) = self.leading else {
            return outputs;
        };
        for (seq, batch) in self.proposer.cut_batches(self.low, now) {
            let pre_prepare = self.membership.sign(PrePrepare { view, seq, digest: batch.digest() }, &self.key);
            outputs.push(PrimaryOutput::Propose(pre_prepare, Arc::new(batch)));
        }
        let deadline = self.proposer.batch_deadline(self.low);
        if deadline != self.batch_timer {
            self.batch_timer = deadline;
            outputs.extend(deadline.map(PrimaryOutput::SetBatchTimer));
        }
        outputs
    }

    /// Whether `client` holds its whole `client_window` here: see
    /// [`crate::roles::node::Node::client_saturated`].
    pub fn client_saturated(&self, client: ClientId, now: Instant) -> bool {
        let queued = self.proposer.queued_of(client);
        let held = if self.proposer.exceeded_window(client, now) {
            queued + self.proposer.in_flight_of(client)
        } else {
            queued
        };
        held as u64 >= self.membership.current().params.client_window
    }

    /// The view this role proposes in.
    pub fn leading(&self) -> Option<View> {
        self.leading
    }

    /// Requests queued (bounded by `request_queue_max`).
    pub fn queue_len(&self) -> usize {
        self.proposer.queue_len()
    }

    /// Batches proposed and not executed (bounded by `in_flight_batches_max`).
    pub fn in_flight_len(&self) -> usize {
        self.proposer.in_flight_len()
    }
}

/// Outcome of offering a request to the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Queued,
    /// Already queued or in flight (R4).
    Duplicate,
    /// The queue, or this client's share of it (`client_window`), is full: shed, the
    /// client will retransmit.
    Shed,
}

/// The proposer role.
#[derive(Debug)]
pub struct Primary {
    membership: MembershipHandle,
    /// Requests waiting, per client, each queue in arrival order.
    queues: BTreeMap<ClientId, VecDeque<Verified<Request>>>,
    /// Clients with requests waiting, in the order they are served next.
    turns: VecDeque<ClientId>,
    /// Requests waiting, over all clients.
    queued: usize,
    /// `(client, timestamp)` of every request queued or proposed and not yet executed.
    pending: BTreeSet<(ClientId, Timestamp)>,
    /// Proposed batches not yet executed: sequence number → the requests in them.
    in_flight: BTreeMap<SeqNum, Vec<(ClientId, Timestamp)>>,
    /// Requests in `in_flight`, per client (only clients with some).
    in_flight_of: BTreeMap<ClientId, usize>,
    next_seq: SeqNum,
    batch_deadline: Option<Instant>,
    /// Clients caught signing a request `client_window` or more above one of theirs still
    /// queued here, with when: see [`Primary::exceeded_window`]. At most `client_table_max`.
    window_exceeded: WindowOffenders,
    /// System commands waiting, in arrival order, at most [`SYSTEM_COMMANDS_QUEUED_MAX`]:
    /// each goes into the next batch, ahead of any request.
    system: VecDeque<SystemCommand>,
    /// The time of the last batch proposed, or of the latest batch logged when this primary
    /// took over: the next proposal's time is no earlier (N1.f).
    time_floor_us: u64,
}

/// System commands a primary keeps queued before it sheds new ones.
pub const SYSTEM_COMMANDS_QUEUED_MAX: usize = 64;

impl Primary {
    /// A proposer that will assign sequence numbers from `next_seq`.
    pub fn new(membership: MembershipHandle, next_seq: SeqNum) -> Self {
        Primary {
            membership,
            queues: BTreeMap::new(),
            turns: VecDeque::new(),
            queued: 0,
            pending: BTreeSet::new(),
            in_flight: BTreeMap::new(),
            in_flight_of: BTreeMap::new(),
            next_seq,
            batch_deadline: None,
            window_exceeded: WindowOffenders::default(),
            system: VecDeque::new(),
            time_floor_us: 0,
        }
    }

    /// Queues a system command for the next batch, unless the same command is queued
    /// already or [`SYSTEM_COMMANDS_QUEUED_MAX`] are.
    pub fn offer_system(&mut self, command: SystemCommand, now: Instant) -> Admission {
        if self.system.contains(&command) {
            return Admission::Duplicate;
        }
        if self.system.len() >= SYSTEM_COMMANDS_QUEUED_MAX {
            return Admission::Shed;
        }
        if self.queued == 0 && self.system.is_empty() {
            self.batch_deadline = Some(now + self.membership.current().params.batch_delay());
        }
        self.system.push_back(command);
        Admission::Queued
    }

    /// Whether `client` was caught exceeding its window here within the last view-change
    /// timeout.
    pub fn exceeded_window(&self, client: ClientId, now: Instant) -> bool {
        self.window_exceeded.recent(client, now, &self.membership.current())
    }

    /// Requests of `client` queued (R4: at most `client_window`).
    pub fn queued_of(&self, client: ClientId) -> usize {
        self.queues.get(&client).map_or(0, VecDeque::len)
    }

    /// R4: queue a request unless it is already queued or in flight. The caller has
    /// checked that it was not executed (P5).
    pub fn offer(&mut self, request: Verified<Request>, now: Instant) -> Admission {
        let key = (request.client(), request.timestamp);
        if self.pending.contains(&key) {
            return Admission::Duplicate;
        }
        let client = key.0;
        // CX1: a request `client_window` or more above one still queued here, which a
        // correct client never signs (the queued one is outstanding at the client: in this
        // view only this primary proposes).
        let queue = self.queues.get(&client);
        if let Some(oldest) = queue.and_then(VecDeque::front) {
            if key.1 .0 >= oldest.timestamp.0.saturating_add(self.membership.current().params.client_window) {
                self.window_exceeded.note(client, now, &self.membership.current());
            }
        }
        let own = queue.map_or(0, VecDeque::len);
        if self.queued >= self.membership.current().params.request_queue_max
            || own as u64 >= self.membership.current().params.client_window
        {
            return Admission::Shed;
        }
        if self.queued == 0 {
            self.batch_deadline = Some(now + self.membership.current().params.batch_delay());
        }
        self.pending.insert(key);
        if own == 0 {
            self.turns.push_back(client);
        }
        self.queues.entry(client).or_default().push_back(request);
        self.queued += 1;
        Admission::Queued
    }

    /// Cuts every batch that P2/P3 allow now, given the low watermark `low`.
    /// Returns `(seq, batch)` pairs to pre-prepare, in order.
    pub fn cut_batches(&mut self, low: SeqNum, now: Instant) -> Vec<(SeqNum, Batch)> {
        let membership = self.membership.current();
        let params = &membership.params;
        let high = low.0.saturating_add(params.watermark_window);
        // Numbers at or below a stable checkpoint are decided: a primary that fell behind one
        // (it restarted, or caught up by state transfer) continues above it.
        self.next_seq = self.next_seq.max(low.next());
        let mut proposals = Vec::new();
        while (self.queued > 0 || !self.system.is_empty())
            && self.next_seq.0 <= high
            && (self.in_flight.len() as u64) < params.in_flight_batches_max
        {
            let full = self.queued + self.system.len() >= params.batch_size_max;
            let idle = self.in_flight.is_empty();
            let due = self.batch_deadline.is_some_and(|deadline| now >= deadline);
            if !(full || idle || due) {
                break;
            }
            // System commands first, all that fit.
            let take = self.system.len().min(params.batch_size_max);
            let mut commands: Vec<Command> = self.system.drain(..take).map(Command::System).collect();
            let mut bytes: usize = commands
                .iter()
                .map(|command| match command {
                    Command::System(system) => system.encoded_bytes(),
                    Command::Request(request) => request_size(request.payload()),
                })
                .sum();
            let mut requests = Vec::new();
            let share = self.pipeline_share();
            // Clients at their share of the pipeline sit this batch out, keeping their turn.
            let mut over_share = Vec::new();
            while let Some(&client) = self.turns.front() {
                if !idle && self.in_flight_of(client) >= share {
                    self.turns.pop_front();
                    over_share.push(client);
                    continue;
                }
                let queue = self.queues.get_mut(&client).expect("a client in turn has a queue");
                let request = queue.front().expect("a client in turn has a request");
                let size = request_size(request.payload());
                if commands.len() + requests.len() == params.batch_size_max
                    || (bytes + size > params.batch_bytes_max && commands.len() + requests.len() > 0)
                {
                    break;
                }
                bytes += size;
                requests.push(queue.pop_front().expect("front exists"));
                *self.in_flight_of.entry(client).or_default() += 1;
                self.queued -= 1;
                self.turns.pop_front();
                if queue.is_empty() {
                    self.queues.remove(&client);
                } else {
                    self.turns.push_back(client);
                }
            }
            for client in over_share.into_iter().rev() {
                self.turns.push_front(client);
            }
            if requests.is_empty() && commands.is_empty() {
                // Everyone waiting is over its share: the next execution makes room.
                break;
            }
            let seq = self.next_seq;
            self.next_seq = seq.next();
            self.in_flight.insert(seq, requests.iter().map(|r| (r.client(), r.timestamp)).collect());
            commands.extend(requests.into_iter().map(Command::Request));
            // N1.f: this replica's clock, never behind the batches before.
            let time_us = now.as_micros().max(self.time_floor_us);
            self.time_floor_us = time_us;
            proposals.push((seq, Batch::timed(commands, time_us)));
            let waiting = self.queued > 0 || !self.system.is_empty();
            self.batch_deadline = if waiting { Some(now + params.batch_delay()) } else { None };
        }
        proposals
    }

    /// When the batch timer should fire: only if a partial batch is waiting and time alone
    /// could let it be cut. While the pipeline or the window is full no timer is needed (the
    /// next cut follows an execution or a stable checkpoint), and arming one would make a
    /// due timer fire again and again without effect.
    pub fn batch_deadline(&self, low: SeqNum) -> Option<Instant> {
        let membership = self.membership.current();
        let params = &membership.params;
        let window_full = self.next_seq.0 > low.0.saturating_add(params.watermark_window);
        let pipeline_full = self.in_flight.len() as u64 >= params.in_flight_batches_max;
        if window_full || pipeline_full || !self.any_under_share() {
            return None;
        }
        self.batch_deadline
    }

    /// Batch `seq` was executed (by any path): its requests leave the pending set.
    pub fn on_executed(&mut self, seq: SeqNum) {
        let done: Vec<SeqNum> = self.in_flight.range(..=seq).map(|(s, _)| *s).collect();
        for s in done {
            for key in self.in_flight.remove(&s).unwrap_or_default() {
                self.pending.remove(&key);
                if let Some(count) = self.in_flight_of.get_mut(&key.0) {
                    *count -= 1;
                    if *count == 0 {
                        self.in_flight_of.remove(&key.0);
                    }
                }
            }
        }
    }

    /// How many of its requests one client may have in flight: an equal part of the
    /// pipeline for each client with requests queued or in flight (at least one).
    fn pipeline_share(&self) -> usize {
        let membership = self.membership.current();
        let params = &membership.params;
        let capacity = (params.in_flight_batches_max as usize).saturating_mul(params.batch_size_max);
        let only_in_flight = self.in_flight_of.keys().filter(|c| !self.queues.contains_key(c)).count();
        let active = (self.queues.len() + only_in_flight).max(1);
        (capacity / active).max(1)
    }

    /// Whether some client with requests queued is under its share (a batch could take
    /// from it now), a system command waits, or nothing is in flight (any queued request
    /// may go).
    fn any_under_share(&self) -> bool {
        if self.in_flight.is_empty() || !self.system.is_empty() {
            return true;
        }
        let share = self.pipeline_share();
        self.queues.keys().any(|client| self.in_flight_of(*client) < share)
    }

    /// Requests of `client` proposed and not yet executed.
    pub fn in_flight_of(&self, client: ClientId) -> usize {
        self.in_flight_of.get(&client).copied().unwrap_or(0)
    }

    /// Numbers the next batch `seq` at the earliest.
    /// Proposes no batch with a time before `time_us` (N1.f).
    pub fn time_at_least(&mut self, time_us: u64) {
        self.time_floor_us = self.time_floor_us.max(time_us);
    }

    pub fn number_from(&mut self, seq: SeqNum) {
        self.next_seq = self.next_seq.max(seq);
    }

    /// The sequence number the next batch will get.
    pub fn next_seq(&self) -> SeqNum {
        self.next_seq
    }

    /// Requests and system commands queued.
    pub fn queue_len(&self) -> usize {
        self.queued + self.system.len()
    }

    pub fn in_flight_len(&self) -> usize {
        self.in_flight.len()
    }
}

impl crate::roles::Role for PrimaryRole {
    type Input = PrimaryInput;
    type Output = PrimaryOutput;

    fn handle(&mut self, input: PrimaryInput, now: Instant) -> Vec<PrimaryOutput> {
        PrimaryRole::handle(self, input, now)
    }
}
