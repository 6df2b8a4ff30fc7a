//! Site checkpoints (docs/STEWARD.md SK1 **[Bulwark]**): every `checkpoint_interval`
//! globally ordered sequence numbers each site threshold-signs SITE-CHECKPOINT(site, seq,
//! state digest) and its representative sends it to every other site. Checkpoints of a
//! majority of sites for one `(seq, digest)` make it stable: the logs at and below `seq`
//! are dropped.
//!
//! State transfer (as `PBFT.md` ST1–ST5): a replica behind a stable checkpoint fetches its
//! image by chunks. A peer that is further answers its status with chunk 0 and the
//! checkpoint's proof; the replica checks the proof once (site signatures of a majority),
//! then each chunk alone against the signed digest (a Merkle path, [`ChunkedImage`]), and
//! asks one source at a time for the next [`CHUNKS_PER_REQUEST`] chunks. It holds one
//! image in progress at most (a newer stable checkpoint replaces it); a source whose chunk
//! does not verify is refused and not asked again during this fetch, and one that sends
//! nothing for a status interval is replaced by the next peer. A replica answers at most
//! [`CHUNKS_PER_REQUEST`] chunks per request and [`CHUNKS_PER_PEER_PER_INTERVAL`] per peer
//! per status interval.

use super::{SiteOutput, SiteRecord, SiteRefusal, SiteReplica};
use crate::ids::{ClusterId, Instant, PeerId, SeqNum};
use crate::roles::executor::{ExecutorInput, ExecutorOutput};
use crate::roles::Role;
use crate::service::Service;
use crate::state::{verify_chunk, Assembly, ChunkedImage};
use crate::steward::global::SiteSigned;
use crate::steward::messages::{CheckpointProof, ImageChunk, SiteMessage};
use crate::steward::payload::SitePayload;
use crate::steward::signer::SignerInput;
use bulwark_crypto::threshold::ThresholdScheme;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// SK1: chunks a replica sends for one state request at most.
pub const CHUNKS_PER_REQUEST: u64 = 4;
/// SK1: chunks a replica sends one peer per status interval at most, over every request.
pub const CHUNKS_PER_PEER_PER_INTERVAL: u64 = 16;

/// The site checkpoints one replica holds.
#[derive(Debug)]
pub(super) struct Checkpoints<S: ThresholdScheme> {
    /// Signed checkpoints above the stable one, by sequence number and site.
    votes: BTreeMap<SeqNum, BTreeMap<ClusterId, SiteSigned<S>>>,
    stable: Option<CheckpointProof<S>>,
    /// The logs are dropped up to here.
    collected: SeqNum,
    /// The image this replica fetches, if it is behind a stable checkpoint.
    fetch: Option<Fetch<S>>,
    /// Chunks sent to each peer in the current status interval, and when it began.
    served: BTreeMap<PeerId, (Instant, u64)>,
}

impl<S: ThresholdScheme> Default for Checkpoints<S> {
    fn default() -> Self {
        Checkpoints { votes: BTreeMap::new(), stable: None, collected: SeqNum(0), fetch: None, served: BTreeMap::new() }
    }
}

/// SK1: the one image a replica fetches, by chunks from one source at a time.
#[derive(Debug)]
struct Fetch<S: ThresholdScheme> {
    proof: CheckpointProof<S>,
    /// Once a first chunk verified (its length is bound into the digest).
    assembly: Option<Assembly>,
    /// The peer asked for chunks, and the end of the range it was asked for.
    source: PeerId,
    asked_until: u64,
    /// When a chunk last verified or a source was last asked.
    progress_at: Instant,
    /// Peers outside the site that sent a chunk that verified: sources too.
    helpers: Vec<PeerId>,
    /// Peers that sent a chunk that did not verify: not asked again during this fetch.
    bad: BTreeSet<PeerId>,
}

impl<S: ThresholdScheme> Fetch<S> {
    fn first_missing(&self) -> u64 {
        self.assembly.as_ref().map_or(0, |assembly| assembly.missing().next().unwrap_or(u64::MAX))
    }

    fn held_bytes(&self) -> u64 {
        self.assembly.as_ref().map_or(0, Assembly::held_bytes)
    }
}

impl<S: ThresholdScheme> Checkpoints<S> {
    pub(super) fn stable_seq(&self) -> SeqNum {
        self.stable.as_ref().map_or(SeqNum(0), |proof| proof.seq)
    }

    pub(super) fn stable(&self) -> Option<&CheckpointProof<S>> {
        self.stable.as_ref()
    }

    /// The logs are dropped up to here.
    pub(super) fn collected(&self) -> SeqNum {
        self.collected
    }

    pub(super) fn fetching(&self) -> bool {
        self.fetch.is_some()
    }

    /// Bytes of the image being fetched held so far.
    pub(super) fn fetching_bytes(&self) -> u64 {
        self.fetch.as_ref().map_or(0, Fetch::held_bytes)
    }
}

impl<Svc: Service, S: ThresholdScheme> SiteReplica<Svc, S> {
    fn majority(&self) -> usize {
        self.sites.len() / 2 + 1
    }

    /// SK1: another site's checkpoint, relayed in the site by its representative.
    pub(super) fn on_checkpoint(&mut self, from: PeerId, signed: SiteSigned<S>, out: &mut Vec<SiteOutput<S>>) {
        let SitePayload::SiteCheckpoint { site, seq, .. } = signed.payload else {
            out.push(SiteOutput::Refused(SiteRefusal::BadCheckpoint));
            return;
        };
        let interval = self.executor_checkpoint_interval();
        let horizon = self.aru().0.saturating_add(self.params.window).saturating_add(interval);
        if seq <= self.checkpoints.stable_seq() || seq.0 > horizon || !seq.0.is_multiple_of(interval) {
            return;
        }
        if self.checkpoints.votes.get(&seq).is_some_and(|votes| votes.contains_key(&site)) {
            return;
        }
        match self.site_signature_holds(&signed) {
            None => return out.push(SiteOutput::Refused(SiteRefusal::UnknownPeer)),
            Some(false) => return out.push(SiteOutput::Refused(SiteRefusal::BadCheckpoint)),
            Some(true) => {}
        }
        if from.cluster != self.site && self.is_representative() {
            out.push(SiteOutput::ToSite(SiteMessage::Checkpoint(signed.clone())));
        }
        self.checkpoints.votes.entry(seq).or_default().insert(site, signed);
        self.check_stable(seq);
    }

    /// SK1: this site signed its checkpoint.
    pub(super) fn take_checkpoint(&mut self, signed: SiteSigned<S>, _out: &mut [SiteOutput<S>]) {
        let Some(seq) = signed.payload.seq() else { return };
        if seq <= self.checkpoints.stable_seq() {
            return;
        }
        self.checkpoints.votes.entry(seq).or_default().insert(self.site, signed);
        self.check_stable(seq);
    }

    fn check_stable(&mut self, seq: SeqNum) {
        let majority = self.majority();
        let Some(votes) = self.checkpoints.votes.get(&seq) else { return };
        let mut by_state: BTreeMap<_, Vec<&SiteSigned<S>>> = BTreeMap::new();
        for signed in votes.values() {
            if let SitePayload::SiteCheckpoint { state, .. } = signed.payload {
                by_state.entry(state).or_default().push(signed);
            }
        }
        let Some((state, signed)) = by_state.into_iter().find(|(_, signed)| signed.len() >= majority) else {
            return;
        };
        let checkpoints = signed.into_iter().cloned().collect();
        self.checkpoints.stable = Some(CheckpointProof { seq, state, checkpoints });
        self.checkpoints.votes = self.checkpoints.votes.split_off(&seq.next());
        self.collect_garbage_if_stable();
    }

    /// Once this replica executed through the stable checkpoint: drop what it covers.
    pub(super) fn collect_garbage_if_stable(&mut self) {
        let stable = self.checkpoints.stable_seq();
        if stable <= self.checkpoints.collected || stable > self.aru() {
            return;
        }
        self.checkpoints.collected = stable;
        self.executor.handle(ExecutorInput::Stable(stable), self.now);
        // The checkpoint at `stable` itself may still be combining here (a majority of
        // other sites made it stable first): its shares stay, so this site still sends it.
        self.signer.handle(SignerInput::Forget { below: stable });
        self.ordered = self.ordered.split_off(&stable.next());
        self.my_shares.retain(|_, (payload, _)| payload.seq().is_none_or(|seq| seq > stable));
    }

    /// GV5: a stable checkpoint another site proved: this replica knows it is stable (if it
    /// is behind it, it fetches the state once a peer offers the first chunk).
    pub(super) fn learn_stable(&mut self, proof: CheckpointProof<S>) {
        if proof.seq <= self.checkpoints.stable_seq() || !self.check_proof(&proof) {
            return;
        }
        let votes = self.checkpoints.votes.entry(proof.seq).or_default();
        for signed in proof.checkpoints {
            votes.insert(signed.payload.site(), signed);
        }
        self.check_stable(proof.seq);
    }

    /// SK1: the first chunk of the stable checkpoint's image, with its proof, for a replica
    /// behind it (which then asks for the rest).
    pub(super) fn state_offer(&self) -> Option<SiteMessage<S>> {
        let proof = self.checkpoints.stable()?;
        let image = self.executor.image_at(proof.seq)?;
        let (data, path) = image.chunk(0)?;
        let chunk = ImageChunk { total_bytes: image.total_bytes(), index: 0, data: data.to_vec(), path };
        Some(SiteMessage::StateChunk { proof: proof.clone(), chunk: Arc::new(chunk) })
    }

    /// SK1: a peer asks for chunks of the image at `seq` from `from` on. Answered from this
    /// replica's stable checkpoint (from chunk 0 if it is not `seq` any more), bounded per
    /// request and per peer per status interval; to a replica of another site only while
    /// its site asks (RC2).
    pub(super) fn on_state_request(&mut self, from: PeerId, (seq, first): (SeqNum, u64), out: &mut Vec<SiteOutput<S>>) {
        // RC2: a replica of another site gets chunks only while its site asks (signed).
        if !self.may_stream_to(from.cluster) {
            return;
        }
        let Some(proof) = self.checkpoints.stable().cloned() else { return };
        let Some(image) = self.executor.image_at(proof.seq) else { return };
        let interval = self.params.status_interval_us;
        let now = self.now;
        let served = self.checkpoints.served.entry(from).or_insert((now, 0));
        if now.0.saturating_sub(served.0 .0) >= interval {
            *served = (now, 0);
        }
        let budget = CHUNKS_PER_REQUEST.min(CHUNKS_PER_PEER_PER_INTERVAL.saturating_sub(served.1));
        let first = if seq == proof.seq { first } else { 0 };
        let last = first.saturating_add(budget).min(image.chunk_count());
        for index in first..last {
            let Some((data, path)) = image.chunk(index) else { break };
            served.1 += 1;
            let chunk = ImageChunk { total_bytes: image.total_bytes(), index, data: data.to_vec(), path };
            let message = SiteMessage::StateChunk { proof: proof.clone(), chunk: Arc::new(chunk) };
            out.push(SiteOutput::To { peer: from, message });
        }
    }

    /// SK1: checkpoints of a majority of distinct sites, each signed by its site, for one
    /// `(seq, state)`.
    fn check_proof(&mut self, proof: &CheckpointProof<S>) -> bool {
        let mut sites = BTreeSet::new();
        for signed in &proof.checkpoints {
            let SitePayload::SiteCheckpoint { site, seq, state } = signed.payload else { return false };
            if seq != proof.seq || state != proof.state || !sites.insert(site) {
                return false;
            }
            if self.site_signature_holds(signed) != Some(true) {
                return false;
            }
        }
        sites.len() >= self.majority()
    }

    /// SK1: a chunk of the image of a stable checkpoint ahead of this replica. A proof newer
    /// than the fetch in progress (if any) is checked and replaces it; a chunk is kept only
    /// if it verifies against the proof's digest.
    pub(super) fn on_state_chunk(
        &mut self,
        from: PeerId,
        proof: CheckpointProof<S>,
        chunk: Arc<ImageChunk>,
        out: &mut Vec<SiteOutput<S>>,
    ) {
        if proof.seq <= self.aru() {
            return;
        }
        let current = self.checkpoints.fetch.as_ref().map(|fetch| (fetch.proof.seq, fetch.proof.state));
        if current != Some((proof.seq, proof.state)) {
            if current.is_some_and(|(seq, _)| proof.seq <= seq) {
                return;
            }
            if !self.check_proof(&proof) {
                out.push(SiteOutput::Refused(SiteRefusal::BadCheckpoint));
                return;
            }
            self.checkpoints.fetch = Some(Fetch {
                proof: proof.clone(),
                assembly: None,
                source: from,
                asked_until: chunk.index.saturating_add(1),
                progress_at: self.now,
                helpers: Vec::new(),
                bad: BTreeSet::new(),
            });
        }
        let chunk_bytes = self.executor_chunk_bytes();
        let bytes_max = self.membership_params().state_transfer_bytes_max;
        let now = self.now;
        let own_site = from.cluster == self.site;
        let fetch = self.checkpoints.fetch.as_mut().expect("a fetch for this proof");
        if fetch.assembly.as_ref().is_some_and(|assembly| assembly.has(chunk.index)) {
            return;
        }
        let ImageChunk { total_bytes, index, ref data, ref path } = *chunk;
        if !verify_chunk(&proof.state, chunk_bytes, total_bytes, index, data, path) {
            out.push(SiteOutput::Refused(SiteRefusal::BadStateChunk));
            fetch.bad.insert(from);
            if fetch.source == from {
                self.ask_next_source(out);
            }
            return;
        }
        if total_bytes > bytes_max {
            // It verified, so the image really is this large: it cannot be fetched here.
            out.push(SiteOutput::Refused(SiteRefusal::StateTooLarge));
            self.checkpoints.fetch = None;
            return;
        }
        let assembly = fetch.assembly.get_or_insert_with(|| Assembly::new(total_bytes, chunk_bytes));
        assembly.insert(index, data.clone());
        fetch.progress_at = now;
        if !own_site && !fetch.helpers.contains(&from) {
            fetch.helpers.push(from);
        }
        if assembly.is_complete() {
            let fetch = self.checkpoints.fetch.take().expect("the fetch");
            let image = fetch.assembly.and_then(Assembly::into_image).unwrap_or_default();
            self.install(fetch.proof, image, out);
            return;
        }
        // The source sent everything it was asked for: ask it for the next chunks.
        if from == fetch.source && fetch.first_missing() >= fetch.asked_until {
            let source = fetch.source;
            self.ask(source, out);
        }
    }

    /// SK1: asks `source` for the next chunks of the fetch in progress.
    fn ask(&mut self, source: PeerId, out: &mut Vec<SiteOutput<S>>) {
        let now = self.now;
        let Some(fetch) = self.checkpoints.fetch.as_mut() else { return };
        let first = fetch.first_missing();
        fetch.source = source;
        fetch.asked_until = first.saturating_add(CHUNKS_PER_REQUEST);
        fetch.progress_at = now;
        let message = SiteMessage::StateRequest { seq: fetch.proof.seq, from: first };
        out.push(SiteOutput::To { peer: source, message });
    }

    /// SK1: the source sent a chunk that did not verify, or nothing for a status interval:
    /// the next peer of the site (or outside it that sent a good chunk) is asked instead.
    fn ask_next_source(&mut self, out: &mut Vec<SiteOutput<S>>) {
        let me = PeerId::new(self.site, self.id);
        let members = self.sites[&self.site].members.iter().map(|id| PeerId::new(self.site, *id));
        let Some(fetch) = self.checkpoints.fetch.as_mut() else { return };
        let candidates: Vec<PeerId> = members.chain(fetch.helpers.iter().copied()).filter(|p| *p != me).collect();
        if candidates.iter().all(|peer| fetch.bad.contains(peer)) {
            // More than f cannot be faulty: some failure was transient (an image replaced by
            // a newer one). Start trusting them again.
            fetch.bad.clear();
        }
        let after = candidates.iter().position(|peer| *peer == fetch.source).map_or(0, |at| at + 1);
        let next = (0..candidates.len())
            .map(|k| candidates[(after + k) % candidates.len()])
            .find(|peer| !fetch.bad.contains(peer));
        if let Some(next) = next {
            self.ask(next, out);
        }
    }

    /// SK1, on the status timer: a fetch whose source sent nothing for a status interval
    /// asks the next one.
    pub(super) fn fetch_again(&mut self, out: &mut Vec<SiteOutput<S>>) {
        let interval = self.params.status_interval_us;
        let aru = self.aru();
        let Some(fetch) = self.checkpoints.fetch.as_ref() else { return };
        if fetch.proof.seq <= aru {
            self.checkpoints.fetch = None;
            return;
        }
        if self.now.0.saturating_sub(fetch.progress_at.0) >= interval {
            self.ask_next_source(out);
        }
    }

    /// The stable checkpoint with this replica's image of it, to persist (see `durable`).
    pub(super) fn stable_state(&self) -> Option<(CheckpointProof<S>, Arc<Vec<u8>>)> {
        let proof = self.checkpoints.stable()?;
        let image = self.executor.image_at(proof.seq)?;
        Some((proof.clone(), Arc::new(image.bytes().to_vec())))
    }

    /// A stable checkpoint this replica persisted, installed again on recovery if the image
    /// still matches the digest its proof signs (a damaged store is refused, not trusted).
    pub(super) fn restore_stable(&mut self, proof: CheckpointProof<S>, image: &[u8], out: &mut Vec<SiteOutput<S>>) {
        if ChunkedImage::new(image.to_vec(), self.executor_chunk_bytes()).digest() != proof.state {
            out.push(SiteOutput::Refused(SiteRefusal::BadCheckpoint));
            return;
        }
        self.install(proof, image.to_vec(), out);
    }

    /// SK1: installs `image`, whose chunks all verified against the digest `proof` signs.
    fn install(&mut self, proof: CheckpointProof<S>, image: Vec<u8>, out: &mut Vec<SiteOutput<S>>) {
        let seq = proof.seq;
        let record = SiteRecord::Stable { proof: proof.clone(), image: Arc::new(image.clone()) };
        let outputs = self.executor.handle(ExecutorInput::Install { seq, image }, self.now);
        let mut installed = None;
        for output in outputs {
            match output {
                ExecutorOutput::Installed { seq, state_digest } => installed = Some((seq, state_digest)),
                ExecutorOutput::Fault(fault) => out.push(SiteOutput::Fault(fault)),
                _ => out.push(SiteOutput::Refused(SiteRefusal::Executor)),
            }
        }
        let Some((seq, state)) = installed else { return };
        // GI5: the state is this replica's before anything says it is (unlike a checkpoint
        // of batches it executed, whose ordered records stand for it until then).
        out.push(SiteOutput::Persist(record));
        self.persisted_stable = self.persisted_stable.max(seq);
        out.push(SiteOutput::Installed { seq, state });
        self.checkpoints.stable = Some(proof);
        self.checkpoints.votes = self.checkpoints.votes.split_off(&seq.next());
        self.proposals = self.proposals.split_off(&seq.next());
        self.accepts = self.accepts.split_off(&seq.next());
        let still_needed: BTreeSet<_> = self.proposals.values().map(|p| p.batch.digest()).collect();
        self.batches.retain(|digest, _| still_needed.contains(digest) || self.local.holds(digest));
        let outputs = self.order.skip_to(seq);
        self.local.executed_through(seq);
        self.forget_executed_shares();
        self.collect_garbage_if_stable();
        self.global_outputs(outputs, out);
    }

    fn executor_checkpoint_interval(&self) -> u64 {
        self.membership_params().checkpoint_interval.max(1)
    }

    fn executor_chunk_bytes(&self) -> usize {
        self.membership_params().state_chunk_bytes
    }
}
