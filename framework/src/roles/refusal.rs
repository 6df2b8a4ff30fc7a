//! Why a role refused an input: one enum for every role's acceptance rules, as
//! [`crate::verify::Refusal`] is for the edge.
//!
//! A refusal is never fatal: the input is dropped and counted under its variant
//! ([`crate::roles::replica::ReplicaMetrics::refused`], the `reason` label of `bulwark_refused_total`,
//! which is the variant's name). Its `Display` names the rule it enforces.

use serde::{Deserialize, Serialize};

/// A role's refusal of an input that passed the edge (signatures and membership are
/// checked there): the input breaks a protocol rule given the role's state.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    thiserror::Error,
    strum::IntoStaticStr,
    strum::EnumIter,
)]
pub enum RoleRefusal {
    // Agreement (the backup role).
    #[error("below the low watermark (C4)")]
    BelowLowWatermark,
    #[error("buffer for the next window full (C5)")]
    FutureBufferFull,
    #[error("beyond the high watermark (C5)")]
    BeyondHighWatermark,
    #[error("pre-prepare for another view (N1.b)")]
    PrePrepareForAnotherView,
    #[error("conflicting pre-prepare (N1.d)")]
    ConflictingPrePrepare,
    #[error("pre-prepare conflicts with a prepare signed before a restart")]
    ConflictsWithVoteBeforeRestart,
    #[error("prepare for another view")]
    PrepareForAnotherView,
    #[error("prepare from the primary (N4)")]
    PrepareFromPrimary,
    #[error("conflicting prepare from one replica (PF7)")]
    ConflictingPrepare,
    #[error("commit for another view")]
    CommitForAnotherView,
    #[error("conflicting commit from one replica (PF7)")]
    ConflictingCommit,
    #[error("logged pre-prepare outvoted by a commit certificate")]
    OutvotedPrePrepare,
    #[error("batch nobody asked for")]
    UnrequestedBatch,
    #[error("batch time farther from this replica's clock than clock_skew_max_us (N1.f)")]
    BatchTimeOutsideClockSkew,
    #[error("batch time out of order with a neighbouring batch of the view (N1.f)")]
    BatchTimeOutOfOrder,

    // The replica's own routing and view bookkeeping.
    #[error("normal-case message while view-changing (VC6)")]
    NormalCaseWhileViewChanging,
    #[error("normal-case message for an older view")]
    NormalCaseForOlderView,
    #[error("buffer for later views full")]
    LaterViewBufferFull,
    #[error("reply or report sent to a replica")]
    ReplyToReplica,
    #[error("request below the client's window (CX3)")]
    RequestBelowClientWindow,
    #[error("system command at a replica that does not lead its view")]
    SystemCommandNotLeading,
    #[error("batch request rate limit")]
    BatchRequestRateLimit,

    // Answers of the replica's own roles that arrive too late.
    #[error("own proposal for a view this replica no longer leads (VC4a)")]
    OwnProposalForViewLeft,
    #[error("own proposal outside the watermarks (P2)")]
    OwnProposalOutsideWatermarks,
    #[error("own new-view for a view this replica no longer changes to")]
    OwnNewViewForViewLeft,

    // Checkpoints (the collector).
    #[error("checkpoint at or below the stable one")]
    CheckpointAtOrBelowStable,
    #[error("checkpoint at a sequence number that is not a multiple of K (C1)")]
    CheckpointNotMultipleOfK,
    #[error("checkpoint from a non-member")]
    CheckpointFromNonMember,
    #[error("too many open checkpoints from one member (C1)")]
    TooManyOpenCheckpoints,
    #[error("conflicting checkpoint from one member")]
    ConflictingCheckpoint,
    #[error("own state digest differs from the stable checkpoint (C6)")]
    OwnDigestDiffersFromStable,

    // View change.
    #[error("view-change for a view already entered")]
    ViewChangeForViewEntered,
    #[error("view-change from a non-member")]
    ViewChangeFromNonMember,
    #[error("new view cannot be computed (VC12.4)")]
    NewViewNotComputable,
    #[error("new-view for a view already entered")]
    NewViewForViewEntered,
    #[error("new-view below this replica's view-change target (VC4a)")]
    NewViewBelowTarget,

    // State transfer.
    #[error("state request rate limit")]
    StateRequestRateLimit,
    #[error("state request for an image not held")]
    StateRequestForImageNotHeld,
    #[error("state request for a chunk past the end of the image")]
    StateRequestPastEnd,
    #[error("state reply without a transfer under way")]
    StateReplyWithoutTransfer,
    #[error("state reply for a checkpoint not asked for (ST4)")]
    StateReplyForAnotherCheckpoint,
    #[error("state chunk does not match the stable checkpoint (ST4)")]
    StateChunkMismatch,
    #[error("checkpoint image larger than state_transfer_bytes_max")]
    StateImageTooLarge,
    #[error("state image could not be installed")]
    StateImageNotInstalled,
    #[error("recovered checkpoint image could not be installed")]
    RecoveredImageNotInstalled,
}

impl RoleRefusal {
    /// The variant's name: the `reason` label of `bulwark_refused_total`.
    pub fn label(self) -> &'static str {
        self.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::IntoEnumIterator;

    /// Labels are what dashboards select on: each refusal has its own, and so does each
    /// text a log line prints.
    #[test]
    fn every_refusal_has_its_own_label_and_text() {
        let labels: std::collections::BTreeSet<&str> = RoleRefusal::iter().map(RoleRefusal::label).collect();
        let texts: std::collections::BTreeSet<String> = RoleRefusal::iter().map(|r| r.to_string()).collect();
        assert_eq!(labels.len(), RoleRefusal::iter().count());
        assert_eq!(texts.len(), RoleRefusal::iter().count());
        assert_eq!(RoleRefusal::PrepareFromPrimary.label(), "PrepareFromPrimary");
    }
}
