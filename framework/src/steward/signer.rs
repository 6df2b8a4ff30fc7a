//! The threshold signer of one replica of a site (docs/STEWARD.md §2, TS1–TS4).
//!
//! Its replica tells it which payloads its own rules allow ([`SignerInput::Sign`]); it
//! shares each unless that would bind a slot to a second value (TS1), sends the share to
//! the site, and gathers the site's shares. Every replica combines for itself as soon as it
//! holds `2f + 1` shares of one message and verifies the result once (TS2: no extra hop,
//! and a faulty representative cannot withhold the signature); a combination that fails
//! makes it check the shares one by one, blame the bad ones and sign from the good (TS3).
//!
//! Shares may arrive before this replica allowed their payload (it has not prepared yet,
//! say). It gathers them under their message's digest, which is all verification needs,
//! and reports the signature without the payload if it completes first. A member may open
//! at most [`SignerLimits::opened_per_member_max`] such collections at once, so a faulty
//! member cannot grow the signer's memory with shares of made-up messages.

use super::payload::{GlobalView, LocalView, SitePayload, Slot};
use crate::ids::{ClusterId, ReplicaId, SeqNum};
use bulwark_crypto::threshold::{ShareCollector, ShareRefusal, ThresholdScheme};
use bulwark_crypto::Digest;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;

/// Bounds on what a signer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignerLimits {
    /// Collections a member may open with shares of messages this replica did not allow.
    pub opened_per_member_max: usize,
    /// Messages remembered as signed, so that late shares of them are dropped quietly.
    pub signed_remembered: usize,
}

impl Default for SignerLimits {
    fn default() -> Self {
        SignerLimits { opened_per_member_max: 64, signed_remembered: 1_024 }
    }
}

/// What the signer is told.
#[derive(Debug)]
pub enum SignerInput<S: ThresholdScheme> {
    /// This replica's own rules allow `payload` (W3, W6, LV1, GV1, SK1): share it.
    Sign(SitePayload),
    /// A member's share of `message`; the envelope it came in was checked as that member's.
    Share { from: ReplicaId, message: Digest, share: S::Share },
    /// Slots and payloads about sequence numbers below `seq` are settled (a stable site
    /// checkpoint): forget them.
    Forget { below: SeqNum },
    /// The site preinstalled local view `lv` and the system global view `gv`: slots of
    /// earlier views (NEW-REPs, GLOBAL-VCs, ARUs, GLOBAL-CONSTRAINTs) are never shared
    /// again, and each binds one value only, so they are forgotten (bounded memory).
    ForgetViews { lv: LocalView, gv: GlobalView },
}

/// Why the signer refused an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
pub enum SignerRefusal {
    /// TS1: sharing it would bind a slot this replica already bound to something else.
    ConflictingBinding,
    /// A payload of another site.
    WrongSite,
    /// A share from a replica that is not a member of the site.
    NotAMember,
    /// A second share of one message from one member.
    DuplicateShare,
    /// A share from a member already blamed for a bad share of this message.
    BlamedMember,
    /// The member has opened as many collections as it may.
    TooManyOpened,
}

/// What the signer produces.
#[derive(Debug)]
pub enum SignerOutput<S: ThresholdScheme> {
    /// Send this replica's share of `message` to every member of the site.
    Share {
        message: Digest,
        share: S::Share,
    },
    /// TS2: the site's signature of `message`, verified; with its payload if this replica
    /// allowed it.
    Signed {
        message: Digest,
        payload: Option<SitePayload>,
        signature: S::Signature,
    },
    /// TS3: `member` sent a bad share of `message`.
    Blamed {
        member: ReplicaId,
        message: Digest,
    },
    Refused(SignerRefusal),
}

/// One message being signed.
struct Pending<S: ThresholdScheme> {
    payload: Option<SitePayload>,
    collector: ShareCollector<S>,
    /// The member whose share opened it, while this replica has not allowed its payload.
    opener: Option<ReplicaId>,
}

/// The threshold signer of one replica.
pub struct ThresholdSigner<S: ThresholdScheme> {
    site: ClusterId,
    /// The site's members in ascending order: a member's share index is its position.
    members: Vec<ReplicaId>,
    key: Arc<S::PublicKey>,
    secret: S::SecretShare,
    limits: SignerLimits,
    /// TS1: the value this replica bound in each slot it shared for.
    shared: BTreeMap<Slot, Digest>,
    pending: BTreeMap<Digest, Pending<S>>,
    opened: BTreeMap<ReplicaId, usize>,
    /// Messages signed, or forgotten below a stable checkpoint: their late shares are
    /// dropped quietly rather than opening a collection that never completes.
    signed: VecDeque<Digest>,
    checks: u64,
}

impl<S: ThresholdScheme> fmt::Debug for ThresholdSigner<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThresholdSigner")
            .field("site", &self.site)
            .field("index", &S::index(&self.secret))
            .field("shared", &self.shared.len())
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl<S: ThresholdScheme> ThresholdSigner<S> {
    /// The signer of the member holding `secret` in `site`, whose members are `members`
    /// (any order) and whose key is `key`.
    pub fn new(
        site: ClusterId,
        mut members: Vec<ReplicaId>,
        key: Arc<S::PublicKey>,
        secret: S::SecretShare,
        limits: SignerLimits,
    ) -> Self {
        members.sort();
        members.dedup();
        assert_eq!(members.len(), S::members(&key), "the key was dealt for the site's members");
        ThresholdSigner {
            site,
            members,
            key,
            secret,
            limits,
            shared: BTreeMap::new(),
            pending: BTreeMap::new(),
            opened: BTreeMap::new(),
            signed: VecDeque::new(),
            checks: 0,
        }
    }

    pub fn handle(&mut self, input: SignerInput<S>) -> Vec<SignerOutput<S>> {
        let mut out = Vec::new();
        match input {
            SignerInput::Sign(payload) => self.sign(payload, &mut out),
            SignerInput::Share { from, message, share } => self.on_share(from, message, share, &mut out),
            SignerInput::Forget { below } => self.forget(below),
            SignerInput::ForgetViews { lv, gv } => self.shared.retain(|slot, _| slot.outlives(lv, gv)),
        }
        out
    }

    /// TS1, then this replica's share.
    fn sign(&mut self, payload: SitePayload, out: &mut Vec<SignerOutput<S>>) {
        if payload.site() != self.site {
            out.push(SignerOutput::Refused(SignerRefusal::WrongSite));
            return;
        }
        let (slot, value) = payload.binding();
        match self.shared.get(&slot) {
            Some(bound) if *bound != value => {
                out.push(SignerOutput::Refused(SignerRefusal::ConflictingBinding));
                return;
            }
            _ => {
                self.shared.insert(slot, value);
            }
        }
        let message = payload.message();
        if self.signed.contains(&message) {
            return;
        }
        let (share, index) = (S::sign_share(&self.secret, &message), S::index(&self.secret));
        let pending = self.pending_for(message);
        pending.payload = Some(payload);
        let opener = pending.opener.take();
        let _ = pending.collector.add(index, share.clone());
        if let Some(opener) = opener {
            self.release(opener);
        }
        out.push(SignerOutput::Share { message, share });
        self.try_combine(message, out);
    }

    fn on_share(&mut self, from: ReplicaId, message: Digest, share: S::Share, out: &mut Vec<SignerOutput<S>>) {
        let Ok(index) = self.members.binary_search(&from) else {
            out.push(SignerOutput::Refused(SignerRefusal::NotAMember));
            return;
        };
        if self.signed.contains(&message) {
            return;
        }
        if !self.pending.contains_key(&message) {
            let opened = self.opened.entry(from).or_default();
            if *opened >= self.limits.opened_per_member_max {
                out.push(SignerOutput::Refused(SignerRefusal::TooManyOpened));
                return;
            }
            *opened += 1;
            self.pending_for(message).opener = Some(from);
        }
        let pending = self.pending.get_mut(&message).expect("just ensured");
        match pending.collector.add(index as u32, share) {
            Ok(()) => self.try_combine(message, out),
            Err(ShareRefusal::Duplicate) => out.push(SignerOutput::Refused(SignerRefusal::DuplicateShare)),
            Err(ShareRefusal::Blamed) => out.push(SignerOutput::Refused(SignerRefusal::BlamedMember)),
            Err(ShareRefusal::UnknownSigner) => out.push(SignerOutput::Refused(SignerRefusal::NotAMember)),
            Err(ShareRefusal::AlreadySigned) => {}
        }
    }

    fn pending_for(&mut self, message: Digest) -> &mut Pending<S> {
        let key = self.key.clone();
        self.pending.entry(message).or_insert_with(|| Pending {
            payload: None,
            collector: ShareCollector::new(key, message),
            opener: None,
        })
    }

    /// TS2, TS3.
    fn try_combine(&mut self, message: Digest, out: &mut Vec<SignerOutput<S>>) {
        let Some(pending) = self.pending.get_mut(&message) else { return };
        let before = pending.collector.checks();
        let combined = pending.collector.try_combine();
        self.checks += pending.collector.checks() - before;
        for index in combined.blamed {
            out.push(SignerOutput::Blamed { member: self.members[index as usize], message });
        }
        let Some(signature) = combined.signature else { return };
        let pending = self.pending.remove(&message).expect("present");
        if let Some(opener) = pending.opener {
            self.release(opener);
        }
        self.remember(message);
        out.push(SignerOutput::Signed { message, payload: pending.payload, signature });
    }

    fn release(&mut self, opener: ReplicaId) {
        if let Some(opened) = self.opened.get_mut(&opener) {
            *opened = opened.saturating_sub(1);
        }
    }

    fn forget(&mut self, below: SeqNum) {
        self.shared.retain(|slot, _| match slot {
            Slot::Binding { seq, .. } | Slot::Checkpoint { seq, .. } | Slot::Reconcile { aru: seq, .. } => {
                *seq >= below
            }
            Slot::NewRep { .. } | Slot::GlobalVc { .. } | Slot::Aru { .. } | Slot::GlobalConstraint { .. } => true,
        });
        let done: Vec<Digest> = self
            .pending
            .iter()
            .filter(|(_, p)| p.payload.and_then(|payload| payload.seq()).is_some_and(|seq| seq < below))
            .map(|(message, _)| *message)
            .collect();
        for message in done {
            self.pending.remove(&message);
            self.remember(message);
        }
    }

    fn remember(&mut self, message: Digest) {
        self.signed.push_back(message);
        if self.signed.len() > self.limits.signed_remembered {
            self.signed.pop_front();
        }
    }

    /// Pairing-priced checks made so far (combined signatures and single shares).
    pub fn checks(&self) -> u64 {
        self.checks
    }

    /// Messages being signed now.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Slots this replica shared a value for and remembers (TS1).
    pub fn slots(&self) -> usize {
        self.shared.len()
    }

    pub fn key(&self) -> &Arc<S::PublicKey> {
        &self.key
    }
}
