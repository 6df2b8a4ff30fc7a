//! What the harness has seen or made (slots, batches, checkpoints, images, requests), kept
//! bounded, and how a step picks from it: what lets steps answer the replica with matching
//! messages instead of guesses it refuses.

use crate::cluster::params;
use crate::steps::Num;
use crate::{N, POOL_MAX};
use bulwark_crypto::{Digest, Signed};
use bulwark_framework::messages::{ViewChange, WireBatch};
use bulwark_framework::state::ChunkedImage;
use bulwark_framework::{ReplicaId, SeqNum, View};

/// A checkpoint image held by the harness, to serve chunks of.
#[derive(Debug, Clone)]
pub struct HeldImage {
    pub seq: SeqNum,
    pub image: ChunkedImage,
}

/// What the harness has seen or made, for steps to refer to.
#[derive(Debug, Default)]
pub struct Pool {
    /// `(view, seq, digest)` of proposals and votes.
    pub slots: Vec<(View, SeqNum, Digest)>,
    /// Batches by digest, in wire form.
    pub batches: Vec<(Digest, WireBatch)>,
    /// `(seq, state digest)` of checkpoints.
    pub checkpoints: Vec<(SeqNum, Digest)>,
    /// Images to serve.
    pub images: Vec<HeldImage>,
    /// STATE-REQs the replica sent and not yet answered: `(to, seq, chunk)`.
    pub state_requests: Vec<(ReplicaId, SeqNum, u64)>,
    /// Digests the replica asked for in a BATCH-REQ.
    pub batch_requests: Vec<Digest>,
    /// The replica's own VIEW-CHANGEs.
    pub own_view_changes: Vec<Signed<ViewChange>>,
}

pub(crate) fn push_bounded<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if list.contains(&item) {
        return;
    }
    if list.len() >= POOL_MAX {
        list.remove(0);
    }
    list.push(item);
}

pub(crate) fn pick<T>(list: &[T], index: u8) -> Option<&T> {
    if list.is_empty() {
        None
    } else {
        list.get(usize::from(index) % list.len())
    }
}

/// Members in the low four bits of `mask` other than `except`; every member other than
/// `except` if none is.
pub(crate) fn members_or_all(mask: u8, except: Option<u32>) -> Vec<u32> {
    let chosen: Vec<u32> = (0..N).filter(|r| mask & (1 << r) != 0 && Some(*r) != except).collect();
    if chosen.is_empty() {
        (0..N).filter(|r| Some(*r) != except).collect()
    } else {
        chosen
    }
}

/// A checkpoint sequence number from a fuzzer number: a multiple of the interval.
pub(crate) fn checkpoint_seq(n: Num) -> SeqNum {
    let interval = params().checkpoint_interval;
    if n.0 < 1 << 32 {
        SeqNum(n.0 * interval)
    } else {
        SeqNum(n.0 - n.0 % interval)
    }
}
