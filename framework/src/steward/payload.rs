//! What a Steward site threshold-signs (docs/STEWARD.md §1), the message a share or a site
//! signature is over (SM1), and the binding each payload makes (TS1).

use crate::ids::{ClusterId, SeqNum};
use bulwark_crypto::threshold::threshold_message;
use bulwark_crypto::Digest;
use serde::{Deserialize, Serialize};

/// A global view of Steward (which site leads).
pub type GlobalView = u64;
/// A local view of one site (which replica represents it).
pub type LocalView = u64;

/// A payload a site signs with its threshold key. Update batches are bound by digest (SM2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum SitePayload {
    /// The leader site binds an update batch to `seq` (W3).
    Proposal { site: ClusterId, gv: GlobalView, lv: LocalView, seq: SeqNum, updates: Digest },
    /// A non-leader site accepts a PROPOSAL's binding (W6).
    Accept { site: ClusterId, gv: GlobalView, lv: LocalView, seq: SeqNum, updates: Digest },
    /// The site's replicas agree to move to local view `lv` (LV1).
    NewRep { site: ClusterId, lv: LocalView },
    /// The site asks to move to global view `gv` (GV1).
    GlobalVc { site: ClusterId, gv: GlobalView },
    /// The site's state at `seq` (SK1).
    SiteCheckpoint { site: ClusterId, seq: SeqNum, state: Digest },
    /// The leader site of `gv`, in its local view `lv`, asks every site for its constraint
    /// above `aru` (GV3).
    Aru { site: ClusterId, gv: GlobalView, lv: LocalView, aru: SeqNum },
    /// What `site` holds above `aru` in global view `gv`: the digest of its union above its
    /// latest stable checkpoint `stable` (GV4).
    GlobalConstraint { site: ClusterId, gv: GlobalView, aru: SeqNum, stable: SeqNum, union: Digest },
    /// `site` is behind at `aru` and asks the other sites for what is ordered above it
    /// (RC2): only a request the site signed makes another site stream to it.
    Reconcile { site: ClusterId, aru: SeqNum },
}

/// A binding a replica makes by sharing a payload: at most one value per slot (TS1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    /// What update batch `seq` of global view `gv` holds, for a PROPOSAL or an ACCEPT of
    /// `site`. The local view is not part of it: re-proposing the same binding in a later
    /// local view (LV3) is allowed.
    Binding {
        accept: bool,
        site: ClusterId,
        gv: GlobalView,
        seq: SeqNum,
    },
    NewRep {
        site: ClusterId,
        lv: LocalView,
    },
    GlobalVc {
        site: ClusterId,
        gv: GlobalView,
    },
    Checkpoint {
        site: ClusterId,
        seq: SeqNum,
    },
    /// One ARU per local view of the leader site: a new representative may ask again.
    Aru {
        site: ClusterId,
        gv: GlobalView,
        lv: LocalView,
    },
    /// One GLOBAL-CONSTRAINT per ARU value: what a site holds of earlier views is fixed
    /// once it preinstalled `gv`, so a later one binds no less.
    GlobalConstraint {
        site: ClusterId,
        gv: GlobalView,
        aru: SeqNum,
    },
    /// One RECONCILE per `aru`: it binds nothing, sharing it again is allowed.
    Reconcile {
        site: ClusterId,
        aru: SeqNum,
    },
}

impl Slot {
    /// Whether a replica whose site preinstalled local view `lv` and global view `gv` may
    /// still share in this slot: NEW-REPs, GLOBAL-VCs, ARUs and GLOBAL-CONSTRAINTs of
    /// earlier views are never shared again (bindings and checkpoints are dropped by
    /// sequence number instead).
    pub fn outlives(&self, lv: LocalView, gv: GlobalView) -> bool {
        match *self {
            Slot::NewRep { lv: l, .. } => l >= lv,
            Slot::GlobalVc { gv: g, .. } | Slot::Aru { gv: g, .. } | Slot::GlobalConstraint { gv: g, .. } => g >= gv,
            Slot::Binding { .. } | Slot::Checkpoint { .. } | Slot::Reconcile { .. } => true,
        }
    }
}

impl SitePayload {
    /// The kind's name (also its domain tag's).
    pub fn kind(&self) -> &'static str {
        self.into()
    }

    pub fn site(&self) -> ClusterId {
        match *self {
            SitePayload::Proposal { site, .. }
            | SitePayload::Accept { site, .. }
            | SitePayload::NewRep { site, .. }
            | SitePayload::GlobalVc { site, .. }
            | SitePayload::SiteCheckpoint { site, .. }
            | SitePayload::Aru { site, .. }
            | SitePayload::GlobalConstraint { site, .. }
            | SitePayload::Reconcile { site, .. } => site,
        }
    }

    /// SM1: what shares and the site signature are over: the kind's domain tag, and every
    /// field (site, views, sequence number, what is bound).
    pub fn message(&self) -> Digest {
        let encoded = rmp_serde::to_vec(self).expect("a site payload encodes");
        let tag = format!("bulwark/steward/{}/v1", self.kind());
        threshold_message(tag.as_bytes(), &encoded)
    }

    /// TS1: the slot this payload binds, and the value it binds there.
    pub fn binding(&self) -> (Slot, Digest) {
        match *self {
            SitePayload::Proposal { site, gv, seq, updates, .. } => {
                (Slot::Binding { accept: false, site, gv, seq }, updates)
            }
            SitePayload::Accept { site, gv, seq, updates, .. } => {
                (Slot::Binding { accept: true, site, gv, seq }, updates)
            }
            SitePayload::NewRep { site, lv } => (Slot::NewRep { site, lv }, Digest::default()),
            SitePayload::GlobalVc { site, gv } => (Slot::GlobalVc { site, gv }, Digest::default()),
            SitePayload::SiteCheckpoint { site, seq, state } => (Slot::Checkpoint { site, seq }, state),
            SitePayload::Aru { site, gv, lv, aru } => (Slot::Aru { site, gv, lv }, Digest::of(&aru.0.to_le_bytes())),
            SitePayload::GlobalConstraint { site, gv, aru, stable, union } => {
                let value = Digest::of_parts(&[&stable.0.to_le_bytes(), &union.0]);
                (Slot::GlobalConstraint { site, gv, aru }, value)
            }
            SitePayload::Reconcile { site, aru } => (Slot::Reconcile { site, aru }, Digest::default()),
        }
    }

    /// The sequence number a payload is about, if any: the signer forgets slots below the
    /// site's stable checkpoint.
    pub fn seq(&self) -> Option<SeqNum> {
        match *self {
            SitePayload::Proposal { seq, .. }
            | SitePayload::Accept { seq, .. }
            | SitePayload::SiteCheckpoint { seq, .. }
            | SitePayload::Reconcile { aru: seq, .. } => Some(seq),
            SitePayload::NewRep { .. }
            | SitePayload::GlobalVc { .. }
            | SitePayload::Aru { .. }
            | SitePayload::GlobalConstraint { .. } => None,
        }
    }
}
