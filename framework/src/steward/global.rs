//! Global ordering at every replica of every site (docs/STEWARD.md W5, W7): which
//! threshold-signed PROPOSALs and ACCEPTs it takes, when an update batch is globally
//! ordered, and strict in-order execution.
//!
//! A PROPOSAL is taken only for the current global view, from the leader site of that view,
//! inside the window above `aru`, with a site signature that verifies under the leader
//! site's key alone (W5, TS4); a replica of a non-leader site may then share its site's
//! ACCEPT ([`GlobalOutput::Accepted`]). An ACCEPT is taken from another non-leader site, for
//! the current global view and inside the window, signed by that site. A PROPOSAL and
//! ACCEPTs for the same `(gv, seq, digest)` from `⌊S/2⌋` distinct other sites order the
//! batch (W7); batches execute strictly in `seq` order and `aru` follows.

use super::payload::{GlobalView, SitePayload};
use crate::ids::{ClusterId, SeqNum};
use bulwark_crypto::threshold::ThresholdScheme;
use bulwark_crypto::Digest;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

/// A site payload with its site's combined signature, as it travels between sites.
#[derive(Debug)]
pub struct SiteSigned<S: ThresholdScheme> {
    pub payload: SitePayload,
    pub signature: S::Signature,
}

impl<S: ThresholdScheme> Clone for SiteSigned<S> {
    fn clone(&self) -> Self {
        SiteSigned { payload: self.payload, signature: self.signature.clone() }
    }
}

/// Why a PROPOSAL or ACCEPT was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
pub enum GlobalRefusal {
    /// Not a PROPOSAL (or not an ACCEPT) where one was expected.
    WrongKind,
    /// For a global view other than the current one.
    WrongGlobalView,
    /// A PROPOSAL from a site that does not lead the view, or an ACCEPT from the leader
    /// site (its PROPOSAL is its vote) or from an unknown site.
    WrongSite,
    /// At or below `aru`, or beyond `aru + window`.
    OutsideWindow,
    /// The site signature does not verify under the site's key.
    BadSiteSignature,
    /// A second PROPOSAL for one `(gv, seq)` with another digest: the leader site's
    /// signature on two bindings, impossible with at most `f` faulty replicas there (GI2).
    ConflictingProposal,
    /// An ordered batch shown with ACCEPTs of fewer than `⌊S/2⌋` other sites.
    TooFewAccepts,
}

/// What global ordering produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlobalOutput {
    /// W5: a PROPOSAL taken; a replica of a non-leader site may share its ACCEPT of
    /// `updates` at `seq`.
    Accepted {
        gv: GlobalView,
        seq: SeqNum,
        updates: Digest,
    },
    /// W7: batch `seq` is globally ordered and every batch below it executed: execute it.
    Execute {
        seq: SeqNum,
        updates: Digest,
    },
    Refused(GlobalRefusal),
}

/// Votes for one sequence number.
#[derive(Debug, Default)]
struct Slot {
    proposal: Option<(GlobalView, Digest)>,
    accepts: BTreeMap<(GlobalView, Digest), BTreeSet<ClusterId>>,
}

/// Global ordering as one replica sees it.
pub struct GlobalOrder<S: ThresholdScheme> {
    /// Every site's public key, by site, in the order that names leader sites.
    sites: BTreeMap<ClusterId, Arc<S::PublicKey>>,
    gv: GlobalView,
    aru: SeqNum,
    window: u64,
    slots: BTreeMap<SeqNum, Slot>,
    ordered: BTreeMap<SeqNum, Digest>,
    /// Site signatures verified so far (pairing-priced).
    verified: u64,
}

impl<S: ThresholdScheme> fmt::Debug for GlobalOrder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GlobalOrder")
            .field("sites", &self.sites.keys().collect::<Vec<_>>())
            .field("gv", &self.gv)
            .field("aru", &self.aru)
            .field("slots", &self.slots.len())
            .finish()
    }
}

impl<S: ThresholdScheme> GlobalOrder<S> {
    /// Ordering among `sites` (each with its public key), in global view 0, nothing
    /// executed, taking sequence numbers up to `window` above `aru`.
    pub fn new(sites: BTreeMap<ClusterId, Arc<S::PublicKey>>, window: u64) -> Self {
        GlobalOrder {
            sites,
            gv: 0,
            aru: SeqNum(0),
            window,
            slots: BTreeMap::new(),
            ordered: BTreeMap::new(),
            verified: 0,
        }
    }

    /// The leader site of global view `gv`: position `gv mod S` of the sorted sites.
    pub fn leader(&self, gv: GlobalView) -> ClusterId {
        *self.sites.keys().nth((gv % self.sites.len() as u64) as usize).expect("at least one site")
    }

    /// The highest sequence number below which everything executed.
    pub fn aru(&self) -> SeqNum {
        self.aru
    }

    /// Site signatures verified so far: each costs a pairing check.
    pub fn verified(&self) -> u64 {
        self.verified
    }

    pub fn global_view(&self) -> GlobalView {
        self.gv
    }

    /// The sites, in the order that names leader sites.
    pub fn sites(&self) -> impl Iterator<Item = ClusterId> + '_ {
        self.sites.keys().copied()
    }

    /// The public key of `site`.
    pub fn site_key(&self, site: ClusterId) -> Option<&Arc<S::PublicKey>> {
        self.sites.get(&site)
    }

    /// GV2: global view `gv` is preinstalled (a later one than the current): PROPOSALs and
    /// ACCEPTs of earlier views are no longer taken.
    pub fn preinstall(&mut self, gv: GlobalView) {
        self.gv = self.gv.max(gv);
    }

    /// A batch ordered in this or an earlier global view, shown by its PROPOSAL (from the
    /// leader site of its view) and ACCEPTs of `⌊S/2⌋` distinct other sites for the same
    /// `(gv, seq, digest)`, every signature checked: what a replica that is behind receives.
    pub fn on_ordered(&mut self, proposal: &SiteSigned<S>, accepts: &[SiteSigned<S>]) -> Vec<GlobalOutput> {
        let SitePayload::Proposal { site, gv, seq, updates, .. } = proposal.payload else {
            return vec![GlobalOutput::Refused(GlobalRefusal::WrongKind)];
        };
        if gv > self.gv || site != self.leader(gv) {
            return vec![GlobalOutput::Refused(GlobalRefusal::WrongSite)];
        }
        if seq <= self.aru || seq.0 > self.aru.0.saturating_add(self.window) {
            return vec![GlobalOutput::Refused(GlobalRefusal::OutsideWindow)];
        }
        if !self.signed_by_its_site(proposal) {
            return vec![GlobalOutput::Refused(GlobalRefusal::BadSiteSignature)];
        }
        let mut sites = BTreeSet::new();
        for accept in accepts {
            let SitePayload::Accept { site: by, gv: g, seq: s, updates: u, .. } = accept.payload else { continue };
            if (g, s, u) != (gv, seq, updates) || by == site || sites.contains(&by) {
                continue;
            }
            if !self.signed_by_its_site(accept) {
                return vec![GlobalOutput::Refused(GlobalRefusal::BadSiteSignature)];
            }
            sites.insert(by);
        }
        if sites.len() < self.accepts_needed() {
            return vec![GlobalOutput::Refused(GlobalRefusal::TooFewAccepts)];
        }
        self.ordered.insert(seq, updates);
        let mut out = Vec::new();
        self.execute_in_order(&mut out);
        out
    }

    fn signed_by_its_site(&mut self, signed: &SiteSigned<S>) -> bool {
        let Some(key) = self.sites.get(&signed.payload.site()).cloned() else { return false };
        self.verified += 1;
        S::verify(&key, &signed.signature, &signed.payload.message())
    }

    /// SK1: the replica installed the state at `seq`, above `aru`: everything up to it
    /// counts as executed. Batches ordered above it may execute now.
    pub fn skip_to(&mut self, seq: SeqNum) -> Vec<GlobalOutput> {
        let mut out = Vec::new();
        if seq > self.aru {
            self.aru = seq;
            self.slots = self.slots.split_off(&seq.next());
            self.ordered = self.ordered.split_off(&seq.next());
            self.execute_in_order(&mut out);
        }
        out
    }

    /// ACCEPTs from this many distinct other sites order a batch with its PROPOSAL.
    pub fn accepts_needed(&self) -> usize {
        self.sites.len() / 2
    }

    /// W5: a leader site's PROPOSAL.
    pub fn on_proposal(&mut self, signed: &SiteSigned<S>) -> Vec<GlobalOutput> {
        let SitePayload::Proposal { site, gv, seq, updates, .. } = signed.payload else {
            return vec![GlobalOutput::Refused(GlobalRefusal::WrongKind)];
        };
        if let Err(refusal) = self.admit(&signed.payload, site, gv, seq, &signed.signature) {
            return vec![GlobalOutput::Refused(refusal)];
        }
        if site != self.leader(gv) {
            return vec![GlobalOutput::Refused(GlobalRefusal::WrongSite)];
        }
        let slot = self.slots.entry(seq).or_default();
        match slot.proposal {
            Some((held, bound)) if held == gv && bound != updates => {
                return vec![GlobalOutput::Refused(GlobalRefusal::ConflictingProposal)]
            }
            Some((held, _)) if held == gv => return Vec::new(),
            // Nothing, or a PROPOSAL of an earlier global view: this view's replaces it (GV5).
            _ => slot.proposal = Some((gv, updates)),
        }
        let mut out = vec![GlobalOutput::Accepted { gv, seq, updates }];
        self.check_ordered(seq, &mut out);
        out
    }

    /// An ACCEPT of another non-leader site.
    pub fn on_accept(&mut self, signed: &SiteSigned<S>) -> Vec<GlobalOutput> {
        let SitePayload::Accept { site, gv, seq, updates, .. } = signed.payload else {
            return vec![GlobalOutput::Refused(GlobalRefusal::WrongKind)];
        };
        if let Err(refusal) = self.admit(&signed.payload, site, gv, seq, &signed.signature) {
            return vec![GlobalOutput::Refused(refusal)];
        }
        if site == self.leader(gv) {
            return vec![GlobalOutput::Refused(GlobalRefusal::WrongSite)];
        }
        self.slots.entry(seq).or_default().accepts.entry((gv, updates)).or_default().insert(site);
        let mut out = Vec::new();
        self.check_ordered(seq, &mut out);
        out
    }

    /// The checks a PROPOSAL and an ACCEPT share: a known site, the current global view,
    /// inside the window, and the site's signature (TS4).
    fn admit(
        &mut self,
        payload: &SitePayload,
        site: ClusterId,
        gv: GlobalView,
        seq: SeqNum,
        signature: &S::Signature,
    ) -> Result<(), GlobalRefusal> {
        let key = self.sites.get(&site).ok_or(GlobalRefusal::WrongSite)?.clone();
        if gv != self.gv {
            return Err(GlobalRefusal::WrongGlobalView);
        }
        if seq <= self.aru || seq.0 > self.aru.0.saturating_add(self.window) {
            return Err(GlobalRefusal::OutsideWindow);
        }
        self.verified += 1;
        if !S::verify(&key, signature, &payload.message()) {
            return Err(GlobalRefusal::BadSiteSignature);
        }
        Ok(())
    }

    /// W7, then strict in-order execution from `aru`.
    fn check_ordered(&mut self, seq: SeqNum, out: &mut Vec<GlobalOutput>) {
        let needed = self.accepts_needed();
        if let Some(slot) = self.slots.get(&seq) {
            if let Some((gv, updates)) = slot.proposal {
                let accepted = slot.accepts.get(&(gv, updates)).map_or(0, BTreeSet::len);
                if accepted >= needed {
                    self.ordered.insert(seq, updates);
                }
            }
        }
        self.execute_in_order(out);
    }

    fn execute_in_order(&mut self, out: &mut Vec<GlobalOutput>) {
        while let Some(updates) = self.ordered.remove(&self.aru.next()) {
            self.aru = self.aru.next();
            self.slots.remove(&self.aru);
            out.push(GlobalOutput::Execute { seq: self.aru, updates });
        }
    }
}
