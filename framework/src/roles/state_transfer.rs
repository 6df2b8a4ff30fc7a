//! The state fetcher (PBFT.md ST1–ST5): fetching the image of a stable checkpoint in
//! chunks, from the replicas that signed its proof, checking each chunk against the
//! proof's state digest before keeping it.
//!
//! The first chunk comes from one source and tells the image's length (bound into the
//! digest, so it cannot be lied about); then up to [`PARALLEL_CHUNKS`] chunks are in flight
//! at once, spread over the sources. A source that sends a chunk that does not verify is
//! not asked again during this fetch (ST4); one that does not answer within a status
//! interval has its chunks asked of the next source. Memory is bounded by
//! `state_transfer_bytes_max`.

use crate::ids::{Instant, ReplicaId, SeqNum};
use crate::membership::MembershipHandle;
use crate::messages::StateReply;
use crate::roles::refusal::RoleRefusal;
use crate::roles::Role;
use crate::state::{verify_chunk, Assembly};
use bulwark_crypto::{Digest, Verified};
use std::collections::{BTreeMap, BTreeSet};

/// Chunk requests in flight at once.
pub const PARALLEL_CHUNKS: usize = 8;

/// What the fetcher asks for or reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchStep {
    /// Send `STATE-REQ(seq, chunk)` to `to`.
    Request { to: ReplicaId, seq: SeqNum, chunk: u64 },
    /// A chunk was refused.
    Refused(RoleRefusal),
    /// Every chunk arrived and verified: the image.
    Complete(Vec<u8>),
}

/// What the fetcher is told.
#[derive(Debug, Clone)]
pub enum FetchInput {
    /// ST4: a chunk of this fetch's checkpoint image (the replica checked that the reply
    /// names this fetch's checkpoint).
    Chunk(Verified<StateReply>),
    /// The replica's periodic tick: chunks asked for a status interval ago or longer are
    /// asked of another source.
    Tick,
}

/// One fetch of one checkpoint image.
#[derive(Debug, Clone)]
pub struct StateFetch {
    membership: MembershipHandle,
    seq: SeqNum,
    digest: Digest,
    sources: Vec<ReplicaId>,
    next_source: usize,
    bad: BTreeSet<ReplicaId>,
    assembly: Option<Assembly>,
    outstanding: BTreeMap<u64, (ReplicaId, Instant)>,
    last_progress: Instant,
}

impl StateFetch {
    /// Starts fetching the image of `(seq, digest)` from `sources` (the proof's signers
    /// other than this replica), beginning with `sources[offset]`.
    pub fn start(
        membership: MembershipHandle,
        seq: SeqNum,
        digest: Digest,
        sources: Vec<ReplicaId>,
        offset: usize,
        now: Instant,
    ) -> (Self, Vec<FetchStep>) {
        let mut fetch = StateFetch {
            membership,
            seq,
            digest,
            next_source: offset,
            sources,
            bad: BTreeSet::new(),
            assembly: None,
            outstanding: BTreeMap::new(),
            last_progress: now,
        };
        let steps = fetch.fill(now);
        (fetch, steps)
    }

    pub fn seq(&self) -> SeqNum {
        self.seq
    }

    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// When a chunk last verified (or the fetch started).
    pub fn last_progress(&self) -> Instant {
        self.last_progress
    }

    /// Bytes held for this fetch (bounded by `state_transfer_bytes_max`).
    pub fn buffered_bytes(&self) -> u64 {
        self.assembly.as_ref().map_or(0, Assembly::held_bytes)
    }

    /// Sources that sent a chunk that did not verify.
    pub fn bad_sources(&self) -> impl Iterator<Item = &ReplicaId> {
        self.bad.iter()
    }

    fn next_good_source(&mut self, avoid: Option<ReplicaId>) -> Option<ReplicaId> {
        if self.sources.is_empty() {
            return None;
        }
        if self.sources.iter().all(|s| self.bad.contains(s)) {
            // Every source failed once: more than f cannot be faulty, so some failure was
            // transient (a restart, an image replaced). Start trusting them again.
            self.bad.clear();
        }
        for _ in 0..2 * self.sources.len() {
            let source = self.sources[self.next_source % self.sources.len()];
            self.next_source += 1;
            if !self.bad.contains(&source) && (Some(source) != avoid || self.sources.len() == 1) {
                return Some(source);
            }
        }
        self.sources.iter().copied().find(|s| !self.bad.contains(s))
    }

    /// Requests what may be in flight now: chunk 0 alone until the length is known, then
    /// up to [`PARALLEL_CHUNKS`] missing chunks.
    fn fill(&mut self, now: Instant) -> Vec<FetchStep> {
        let wanted: Vec<u64> = match &self.assembly {
            None => vec![0],
            Some(assembly) => assembly.missing().collect(),
        };
        let mut steps = Vec::new();
        for chunk in wanted {
            if self.outstanding.len() >= PARALLEL_CHUNKS || (self.assembly.is_none() && !self.outstanding.is_empty()) {
                break;
            }
            if self.outstanding.contains_key(&chunk) {
                continue;
            }
            let Some(to) = self.next_good_source(None) else { break };
            self.outstanding.insert(chunk, (to, now));
            steps.push(FetchStep::Request { to, seq: self.seq, chunk });
        }
        steps
    }

    /// ST4: a chunk for this fetch's checkpoint. It is kept only if it verifies against the
    /// digest; a source whose chunk does not is not asked again, and the chunk is asked of
    /// another source.
    fn on_chunk(&mut self, chunk: Verified<StateReply>, now: Instant) -> Vec<FetchStep> {
        let chunk_bytes = self.membership.current().params.state_chunk_bytes;
        if !verify_chunk(&self.digest, chunk_bytes, chunk.total_bytes, chunk.index, &chunk.data, &chunk.path) {
            self.bad.insert(chunk.replica);
            let mut steps = vec![FetchStep::Refused(RoleRefusal::StateChunkMismatch)];
            if self.outstanding.get(&chunk.index).is_some_and(|(source, _)| *source == chunk.replica) {
                self.outstanding.remove(&chunk.index);
                steps.extend(self.fill(now));
            }
            return steps;
        }
        if chunk.total_bytes > self.membership.current().params.state_transfer_bytes_max {
            // Verified, so the image really is this large: it cannot be fetched here.
            return vec![FetchStep::Refused(RoleRefusal::StateImageTooLarge)];
        }
        let assembly = self.assembly.get_or_insert_with(|| Assembly::new(chunk.total_bytes, chunk_bytes));
        if assembly.has(chunk.index) {
            return Vec::new();
        }
        let index = chunk.index;
        assembly.insert(index, chunk.into_signed().payload.data);
        self.outstanding.remove(&index);
        self.last_progress = now;
        if assembly.is_complete() {
            let image = self.assembly.take().and_then(Assembly::into_image).unwrap_or_default();
            return vec![FetchStep::Complete(image)];
        }
        self.fill(now)
    }

    /// Chunks asked for more than `timeout` ago are asked of another source.
    fn on_tick(&mut self, now: Instant, timeout: std::time::Duration) -> Vec<FetchStep> {
        let late: Vec<(u64, ReplicaId)> = self
            .outstanding
            .iter()
            .filter(|(_, (_, at))| now >= *at + timeout)
            .map(|(chunk, (source, _))| (*chunk, *source))
            .collect();
        let mut steps = Vec::new();
        for (chunk, silent) in late {
            let Some(to) = self.next_good_source(Some(silent)) else { break };
            self.outstanding.insert(chunk, (to, now));
            steps.push(FetchStep::Request { to, seq: self.seq, chunk });
        }
        steps.extend(self.fill(now));
        steps
    }
}

impl Role for StateFetch {
    type Input = FetchInput;
    type Output = FetchStep;

    fn handle(&mut self, input: FetchInput, now: Instant) -> Vec<FetchStep> {
        match input {
            FetchInput::Chunk(chunk) => self.on_chunk(chunk, now),
            FetchInput::Tick => {
                let timeout = self.membership.current().params.status_interval();
                self.on_tick(now, timeout)
            }
        }
    }
}
