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
//! * every committed batch before it executes it, with its commit certificate: an
//!   operation acknowledged to a client was executed by `f + 1` replicas, so at least one
//!   correct replica re-executes it after a crash of every replica; and the certificate
//!   lets a restarted replica prove the batch to a peer that lags (with a silent faulty
//!   replica, that peer may find no other way to gather `2f + 1` COMMITs);
//! * its stable checkpoints with their proofs and images, which bound all of the above:
//!   records at or below the stable checkpoint are dropped.
//!
//! [`Recovered`] folds records in order into what [`crate::Replica::recover`] needs; a
//! runtime's store and the simulator's both use it.

use crate::ids::{SeqNum, View};
use crate::membership::Membership;
use crate::messages::{
    Batch, Checkpoint, Commit, Message, MessageKind, NewView, PreparedCertificate, VerifiedMessage, VerifiedNewView,
    WireBatch,
};
use crate::roles::backup::PreparedProof;
use crate::roles::checkpoint::StableCheckpoint;
use crate::state::ChunkedImage;
use crate::verify::{
    checkpoint_proof, verify_batch_commands, verify_message, verify_prepared, ClientKeyCache, Refusal,
};
use bulwark_crypto::Digest;
use bulwark_crypto::{Signed, Verified};
use serde::{Deserialize, Serialize};
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
    /// A batch committed at `seq` in `view`, persisted before it executes, with the
    /// `2f + 1` COMMITs that committed it here (empty when it was not committed by votes
    /// this replica holds).
    Committed { seq: SeqNum, view: View, batch: Arc<Batch>, certificate: Vec<Verified<Commit>> },
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
    /// The commit certificates of `committed` batches, where one was recorded.
    pub certificates: BTreeMap<SeqNum, Vec<Verified<Commit>>>,
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
            Record::Committed { seq, view, batch, certificate } => {
                if seq > low {
                    if !certificate.is_empty() {
                        self.certificates.insert(seq, certificate);
                    } else if self.committed.get(&seq).is_none_or(|(_, held)| held.digest() != batch.digest()) {
                        self.certificates.remove(&seq);
                    }
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
                    self.certificates.retain(|s, _| *s > seq);
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

/// A [`Record`] as a runtime stores it: plain signed messages and bytes, encodable with
/// serde. Reading one back re-checks every signature, digest and certificate in it
/// ([`StoredRecord::verify`]), so a store that was corrupted or tampered with is refused
/// rather than trusted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredRecord {
    Vote {
        kind: MessageKind,
        view: View,
        seq: SeqNum,
        digest: Digest,
    },
    ViewFloor(View),
    EnteredView(Signed<NewView>),
    Prepared {
        seq: SeqNum,
        certificate: PreparedCertificate,
        batch: WireBatch,
    },
    Committed {
        seq: SeqNum,
        view: View,
        batch: WireBatch,
        commits: Vec<Signed<Commit>>,
    },
    Stable {
        seq: SeqNum,
        proof: Vec<Signed<Checkpoint>>,
        #[serde(with = "serde_bytes")]
        image: Vec<u8>,
    },
}

/// Why a stored record cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("stored record fails verification: {0}")]
    Invalid(#[from] Refusal),
    #[error("stored record is inconsistent: {0}")]
    Inconsistent(&'static str),
}

impl From<&Record> for StoredRecord {
    fn from(record: &Record) -> Self {
        match record {
            Record::Vote { kind, view, seq, digest } => {
                StoredRecord::Vote { kind: *kind, view: *view, seq: *seq, digest: *digest }
            }
            Record::ViewFloor(view) => StoredRecord::ViewFloor(*view),
            Record::EnteredView(new_view) => StoredRecord::EnteredView(new_view.message.signed().clone()),
            Record::Prepared(seq, proof) => StoredRecord::Prepared {
                seq: *seq,
                certificate: proof.certificate.to_wire(),
                batch: proof.batch.to_wire(),
            },
            Record::Committed { seq, view, batch, certificate } => StoredRecord::Committed {
                seq: *seq,
                view: *view,
                batch: batch.to_wire(),
                commits: certificate.iter().map(|c| c.signed().clone()).collect(),
            },
            Record::Stable { checkpoint, image } => StoredRecord::Stable {
                seq: checkpoint.seq,
                proof: checkpoint.proof.iter().map(|c| c.signed().clone()).collect(),
                image: image.bytes().to_vec(),
            },
        }
    }
}

impl StoredRecord {
    /// Re-checks everything in the record against `membership` (in its scope: a store
    /// records which cluster it belongs to, see the runtime's store) and rebuilds the
    /// [`Record`].
    pub fn verify(self, membership: &Membership) -> Result<Record, StoreError> {
        let mut keys = ClientKeyCache::default();
        Ok(match self {
            StoredRecord::Vote { kind, view, seq, digest } => Record::Vote { kind, view, seq, digest },
            StoredRecord::ViewFloor(view) => Record::ViewFloor(view),
            StoredRecord::EnteredView(signed) => match verify_message(Message::NewView(signed), membership)? {
                VerifiedMessage::NewView(new_view) => Record::EnteredView(new_view),
                _ => return Err(StoreError::Inconsistent("a new-view record that is not a new-view")),
            },
            StoredRecord::Prepared { seq, certificate, batch } => {
                let target = certificate.pre_prepare.payload.view.next();
                let certificate = verify_prepared(&certificate, target, membership)?;
                let batch = verify_batch_commands(batch, membership, &mut keys)?;
                if certificate.pre_prepare.seq != seq || certificate.pre_prepare.digest != batch.digest() {
                    return Err(StoreError::Inconsistent("prepared certificate does not match its batch"));
                }
                Record::Prepared(seq, crate::roles::backup::PreparedProof { certificate, batch: Arc::new(batch) })
            }
            StoredRecord::Committed { seq, view, batch, commits } => {
                let batch = verify_batch_commands(batch, membership, &mut keys)?;
                let mut certificate: Vec<Verified<Commit>> = Vec::with_capacity(commits.len());
                for signed in commits {
                    let VerifiedMessage::Commit(commit) = verify_message(Message::Commit(signed), membership)? else {
                        return Err(StoreError::Inconsistent("a commit in a certificate that is not a commit"));
                    };
                    if (commit.view, commit.seq, commit.digest) != (view, seq, batch.digest()) {
                        return Err(StoreError::Inconsistent("commit certificate does not match its batch"));
                    }
                    if certificate.iter().any(|held| held.replica == commit.replica) {
                        return Err(StoreError::Inconsistent("commit certificate names a replica twice"));
                    }
                    certificate.push(commit);
                }
                Record::Committed { seq, view, batch: Arc::new(batch), certificate }
            }
            StoredRecord::Stable { seq, proof, image } => {
                let checkpoint = checkpoint_proof(seq, &proof, membership)?;
                let image = ChunkedImage::new(image, membership.params.state_chunk_bytes);
                if image.digest() != checkpoint.state_digest {
                    return Err(StoreError::Inconsistent("checkpoint image does not match its proof"));
                }
                Record::Stable { checkpoint, image: Arc::new(image) }
            }
        })
    }
}

impl Recovered {
    /// The records that rebuild this state, in an order [`Recovered::apply`] accepts: what
    /// a store writes when it compacts itself (after a stable checkpoint).
    pub fn to_records(&self) -> Vec<Record> {
        let mut records = Vec::new();
        if let Some((checkpoint, image)) = &self.stable {
            records.push(Record::Stable { checkpoint: checkpoint.clone(), image: image.clone() });
        }
        records.push(Record::ViewFloor(self.floor));
        if let Some(new_view) = &self.new_view {
            records.push(Record::EnteredView(new_view.clone()));
        }
        for ((kind, view, seq), digest) in &self.votes {
            records.push(Record::Vote { kind: *kind, view: *view, seq: *seq, digest: *digest });
        }
        for (seq, proof) in &self.prepared {
            records.push(Record::Prepared(*seq, proof.clone()));
        }
        for (seq, (view, batch)) in &self.committed {
            let certificate = self.certificates.get(seq).cloned().unwrap_or_default();
            records.push(Record::Committed { seq: *seq, view: *view, batch: batch.clone(), certificate });
        }
        records
    }
}
