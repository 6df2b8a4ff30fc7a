//! What a replica must never forget across a crash, and how it comes back.
//!
//! A replica asks its runtime to persist a [`Record`] with [`crate::roles::Action::Persist`]
//! **before** the actions that follow it in the same list: the runtime makes every
//! record of one `handle` call durable (one group commit), then sends. So a replica that
//! crashes at any point has on disk
//! * every vote it signed (PRE-PREPARE, PREPARE, COMMIT): after a restart it never signs a
//!   different digest for the same view and sequence number (I3 across restarts);
//! * the highest view it asked for, and the NEW-VIEW of the view it entered (VC4a across
//!   restarts);
//! * every prepared certificate, with its batch: its next VIEW-CHANGE reports everything
//!   that prepared at it (VC9), which view-change safety relies on;
//! * every committed batch before it executes it: an operation acknowledged to a client was
//!   executed by `f + 1` replicas, so at least one correct replica re-executes it after a
//!   crash of every replica;
//! * its stable checkpoints with their proofs and images, which bound all of the above:
//!   records at or below the stable checkpoint are dropped.
//!
//! [`Recovered`] folds records in order into what [`crate::Replica::recover`] needs; a
//! runtime's store and the simulator's both use it.

use crate::ids::{SeqNum, View};
use crate::messages::{Batch, MessageKind, VerifiedNewView};
use crate::roles::backup::PreparedProof;
use crate::roles::checkpoint::StableCheckpoint;
use crate::state::ChunkedImage;
use bulwark_crypto::Digest;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One thing a replica must not forget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// This replica signed a vote of `kind` (pre-prepare, prepare or commit) for
    /// `(view, seq, digest)`.
    Vote { kind: MessageKind, view: View, seq: SeqNum, digest: Digest },
    /// This replica asked to leave every view below `view` (it sent VIEW-CHANGE(view)).
    ViewFloor(View),
    /// This replica entered the NEW-VIEW's view.
    EnteredView(Arc<VerifiedNewView>),
    /// A prepared certificate with its batch (VC9).
    Prepared(SeqNum, PreparedProof),
    /// A batch committed at `seq` in `view`, persisted before it executes.
    Committed { seq: SeqNum, view: View, batch: Arc<Batch> },
    /// A stable checkpoint with its proof and this replica's image of it.
    Stable { checkpoint: StableCheckpoint, image: Arc<ChunkedImage> },
}

/// Everything a replica recovers from its records.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    pub floor: View,
    pub new_view: Option<Arc<VerifiedNewView>>,
    pub votes: BTreeMap<(MessageKind, View, SeqNum), Digest>,
    pub prepared: BTreeMap<SeqNum, PreparedProof>,
    pub committed: BTreeMap<SeqNum, (View, Arc<Batch>)>,
    pub stable: Option<(StableCheckpoint, Arc<ChunkedImage>)>,
}

impl Recovered {
    /// Folds one record in (records must be applied in the order they were persisted).
    pub fn apply(&mut self, record: Record) {
        let low = self.low();
        match record {
            Record::Vote { kind, view, seq, digest } => {
                if seq > low {
                    self.votes.insert((kind, view, seq), digest);
                }
            }
            Record::ViewFloor(view) => self.floor = self.floor.max(view),
            Record::EnteredView(new_view) => {
                self.floor = self.floor.max(new_view.view());
                if self.new_view.as_ref().is_none_or(|held| held.view() < new_view.view()) {
                    self.new_view = Some(new_view);
                }
            }
            Record::Prepared(seq, proof) => {
                if seq > low {
                    let newer = self
                        .prepared
                        .get(&seq)
                        .is_none_or(|held| held.certificate.pre_prepare.view <= proof.certificate.pre_prepare.view);
                    if newer {
                        self.prepared.insert(seq, proof);
                    }
                }
            }
            Record::Committed { seq, view, batch } => {
                if seq > low {
                    self.committed.insert(seq, (view, batch));
                }
            }
            Record::Stable { checkpoint, image } => {
                if checkpoint.seq > low {
                    let seq = checkpoint.seq;
                    self.stable = Some((checkpoint, image));
                    self.votes.retain(|(_, _, s), _| *s > seq);
                    self.prepared.retain(|s, _| *s > seq);
                    self.committed.retain(|s, _| *s > seq);
                }
            }
        }
    }

    /// The stable checkpoint recovered (0 without one).
    pub fn low(&self) -> SeqNum {
        self.stable.as_ref().map(|(checkpoint, _)| checkpoint.seq).unwrap_or_default()
    }

    /// The view entered last (0 without a NEW-VIEW).
    pub fn view(&self) -> View {
        self.new_view.as_ref().map(|nv| nv.view()).unwrap_or_default()
    }

    /// Entries held (for bounded-memory checks).
    pub fn len(&self) -> usize {
        self.votes.len() + self.prepared.len() + self.committed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.stable.is_none()
    }
}
