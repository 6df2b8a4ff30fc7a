//! Site checkpoints (docs/STEWARD.md SK1 **[Bulwark]**): every `checkpoint_interval`
//! globally ordered sequence numbers each site threshold-signs SITE-CHECKPOINT(site, seq,
//! state digest) and its representative sends it to every other site. Checkpoints of a
//! majority of sites for one `(seq, digest)` make it stable: the logs at and below `seq`
//! are dropped. A replica behind a stable checkpoint installs the state, checked against
//! the digest the majority signed (state transfer).

use super::{SiteOutput, SiteRefusal, SiteReplica};
use crate::ids::{ClusterId, PeerId, SeqNum};
use crate::roles::executor::{ExecutorInput, ExecutorOutput};
use crate::roles::Role;
use crate::service::Service;
use crate::state::ChunkedImage;
use crate::steward::global::SiteSigned;
use crate::steward::messages::{CheckpointProof, SiteMessage};
use crate::steward::payload::SitePayload;
use crate::steward::signer::SignerInput;
use bulwark_crypto::threshold::ThresholdScheme;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The site checkpoints one replica holds.
#[derive(Debug)]
pub(super) struct Checkpoints<S: ThresholdScheme> {
    /// Signed checkpoints above the stable one, by sequence number and site.
    votes: BTreeMap<SeqNum, BTreeMap<ClusterId, SiteSigned<S>>>,
    stable: Option<CheckpointProof<S>>,
    /// The logs are dropped up to here.
    collected: SeqNum,
}

impl<S: ThresholdScheme> Default for Checkpoints<S> {
    fn default() -> Self {
        Checkpoints { votes: BTreeMap::new(), stable: None, collected: SeqNum(0) }
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

    /// GV5: a stable checkpoint another site proved: this replica knows it is stable (and
    /// fetches the state if it is behind it).
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

    /// The proof and image to send a replica behind the stable checkpoint.
    pub(super) fn stable_state(&self) -> Option<(CheckpointProof<S>, Arc<Vec<u8>>)> {
        let proof = self.checkpoints.stable()?;
        let image = self.executor.image_at(proof.seq)?;
        Some((proof.clone(), Arc::new(image.bytes().to_vec())))
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

    /// SK1: the state of a stable checkpoint ahead of this replica.
    pub(super) fn on_state(&mut self, proof: CheckpointProof<S>, image: Arc<Vec<u8>>, out: &mut Vec<SiteOutput<S>>) {
        if proof.seq <= self.aru() {
            return;
        }
        if !self.check_proof(&proof) {
            out.push(SiteOutput::Refused(SiteRefusal::BadCheckpoint));
            return;
        }
        let chunk_bytes = self.executor_chunk_bytes();
        if ChunkedImage::new(image.to_vec(), chunk_bytes).digest() != proof.state {
            out.push(SiteOutput::Refused(SiteRefusal::BadCheckpoint));
            return;
        }
        let seq = proof.seq;
        let outputs = self.executor.handle(ExecutorInput::Install { seq, image: image.to_vec() }, self.now);
        let mut installed = None;
        for output in outputs {
            match output {
                ExecutorOutput::Installed { seq, state_digest } => installed = Some((seq, state_digest)),
                ExecutorOutput::Fault(fault) => out.push(SiteOutput::Fault(fault)),
                _ => out.push(SiteOutput::Refused(SiteRefusal::Executor)),
            }
        }
        let Some((seq, state)) = installed else { return };
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
