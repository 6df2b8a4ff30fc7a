//! The primary's proposer role: batching and sequence assignment (PBFT.md P1–P5).
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
//! client does, instead of the whole queue: without this one such client brought a bench's
//! correct clients to 1% of their fault-free throughput (`bench --attack request-flood`).

use crate::config::ClusterConfig;
use crate::ids::{ClientId, Instant, SeqNum, Timestamp};
use crate::messages::{request_size, Batch, Request};
use bulwark_crypto::Verified;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

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
    config: Arc<ClusterConfig>,
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
    next_seq: SeqNum,
    batch_deadline: Option<Instant>,
}

impl Primary {
    /// A proposer that will assign sequence numbers from `next_seq`.
    pub fn new(config: Arc<ClusterConfig>, next_seq: SeqNum) -> Self {
        Primary {
            config,
            queues: BTreeMap::new(),
            turns: VecDeque::new(),
            queued: 0,
            pending: BTreeSet::new(),
            in_flight: BTreeMap::new(),
            next_seq,
            batch_deadline: None,
        }
    }

    /// R4: queue a request unless it is already queued or in flight. The caller has
    /// checked that it was not executed (P5).
    pub fn offer(&mut self, request: Verified<Request>, now: Instant) -> Admission {
        let key = (request.client(), request.timestamp);
        if self.pending.contains(&key) {
            return Admission::Duplicate;
        }
        let client = key.0;
        let own = self.queues.get(&client).map_or(0, VecDeque::len);
        if self.queued >= self.config.params.request_queue_max || own as u64 >= self.config.params.client_window {
            return Admission::Shed;
        }
        if self.queued == 0 {
            self.batch_deadline = Some(now + self.config.params.batch_delay());
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
        let params = &self.config.params;
        let high = low.0.saturating_add(params.watermark_window);
        // Numbers at or below a stable checkpoint are decided: a primary that fell behind one
        // (it restarted, or caught up by state transfer) continues above it.
        self.next_seq = self.next_seq.max(low.next());
        let mut proposals = Vec::new();
        while self.queued > 0 && self.next_seq.0 <= high && (self.in_flight.len() as u64) < params.in_flight_batches_max
        {
            let full = self.queued >= params.batch_size_max;
            let idle = self.in_flight.is_empty();
            let due = self.batch_deadline.is_some_and(|deadline| now >= deadline);
            if !(full || idle || due) {
                break;
            }
            let mut requests = Vec::new();
            let mut bytes = 0;
            while let Some(&client) = self.turns.front() {
                let queue = self.queues.get_mut(&client).expect("a client in turn has a queue");
                let request = queue.front().expect("a client in turn has a request");
                let size = request_size(request.payload());
                if requests.len() == params.batch_size_max
                    || (bytes + size > params.batch_bytes_max && !requests.is_empty())
                {
                    break;
                }
                bytes += size;
                requests.push(queue.pop_front().expect("front exists"));
                self.queued -= 1;
                self.turns.pop_front();
                if queue.is_empty() {
                    self.queues.remove(&client);
                } else {
                    self.turns.push_back(client);
                }
            }
            let seq = self.next_seq;
            self.next_seq = seq.next();
            self.in_flight.insert(seq, requests.iter().map(|r| (r.client(), r.timestamp)).collect());
            proposals.push((seq, Batch::new(requests)));
            self.batch_deadline = if self.queued == 0 { None } else { Some(now + params.batch_delay()) };
        }
        proposals
    }

    /// When the batch timer should fire: only if a partial batch is waiting and time alone
    /// could let it be cut. While the pipeline or the window is full no timer is needed (the
    /// next cut follows an execution or a stable checkpoint), and arming one would make a
    /// due timer fire again and again without effect.
    pub fn batch_deadline(&self, low: SeqNum) -> Option<Instant> {
        let params = &self.config.params;
        let window_full = self.next_seq.0 > low.0.saturating_add(params.watermark_window);
        let pipeline_full = self.in_flight.len() as u64 >= params.in_flight_batches_max;
        if window_full || pipeline_full {
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
            }
        }
    }

    /// The sequence number the next batch will get.
    pub fn next_seq(&self) -> SeqNum {
        self.next_seq
    }

    pub fn queue_len(&self) -> usize {
        self.queued
    }

    pub fn in_flight_len(&self) -> usize {
        self.in_flight.len()
    }
}
