//! VIEW-CHANGEs and NEW-VIEWs verified once per process, however often they arrive.
//!
//! A replica changing view rebroadcasts its VIEW-CHANGE on every status tick (PBFT.md VC7)
//! until it enters the new view, and each copy is the same signed bytes. Verifying one
//! costs tens to hundreds of milliseconds (a checkpoint proof and up to a window of
//! prepared certificates, each `2f + 1` signatures; a NEW-VIEW carries `2f + 1` of them),
//! so checking every copy from scratch fills the verifier pool's replica lane with
//! duplicates while the NEW-VIEW that would end the view change waits behind them.
//!
//! Two things keep that from happening, both keyed by [`ContentKey`], a digest of the exact
//! message:
//!
//! * **A cache of verdicts** ([`VerifiedCache`]): a copy of a message already verified is
//!   answered with the verified message kept from the first time, without queueing.
//! * **Coalescing**: a copy arriving while the first is queued or being verified waits for
//!   that verification instead of queueing a second one, and gets the same verdict.
//!
//! Both are sound because verification depends only on the message and the cluster
//! configuration (`bulwark_framework::verify`), and the pool has one configuration: the
//! same bytes always get the same verdict. Only successes are kept; a refused message is
//! verified again each time it comes (its connection is closed anyway).

use bulwark_crypto::{Digest, Signed};
use bulwark_framework::messages::{Message as WireMessage, VerifiedMessage, VerifiedViewChange, ViewChange};
use bulwark_framework::verify::Refusal;
use bulwark_framework::{wire, ReplicaId, Scope};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;

/// Verified messages kept per claimed sender. A member's copies in circulation at once are
/// its VIEW-CHANGE for the view it is moving to (rebroadcast until it gets there), perhaps
/// the one for the view before, and a NEW-VIEW it sent as primary: four covers them, with
/// room for one more view change under way.
pub const ENTRIES_PER_MEMBER: usize = 4;

/// Identifies a message by its exact content: blake3 of its wire encoding. The encoding is
/// injective (decoding it gives the message back), so two different messages have
/// different encodings, and a shared key would take a blake3 collision. A copy with one
/// byte changed, signature or payload, has another key and is verified on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ContentKey(Digest);

impl ContentKey {
    /// The key of `message` if it is worth caching (a VIEW-CHANGE or NEW-VIEW), else `None`.
    /// Encoding and hashing are one pass over the message's bytes, no curve arithmetic:
    /// small against the hundreds of signature checks a full verification makes.
    pub fn of_heavy(scope: Scope, message: &WireMessage) -> Option<ContentKey> {
        if !matches!(message, WireMessage::ViewChange(_) | WireMessage::NewView(_)) {
            return None;
        }
        // A message that cannot be encoded cannot be keyed; it is verified as usual. The
        // scope is part of the key: a verdict holds only in the scope it was reached in.
        let encoded = wire::encode(scope, message).ok()?;
        Some(ContentKey(Digest::of(&encoded)))
    }
}

/// Verified messages by claimed sender and content, at most [`ENTRIES_PER_MEMBER`] per
/// sender, oldest evicted first.
///
/// Memory stays bounded: senders are members (a message claiming anyone else is not
/// cached), so there are at most `n * ENTRIES_PER_MEMBER` entries, and each is one message
/// that arrived in a frame of at most `frame_bytes_max` bytes, held in its verified form.
/// Entries are per sender so that a member sending many distinct valid messages evicts only
/// its own.
#[derive(Debug, Default)]
pub(crate) struct VerifiedCache {
    by_sender: BTreeMap<ReplicaId, VecDeque<(ContentKey, VerifiedMessage)>>,
}

impl VerifiedCache {
    pub(crate) fn get(&self, sender: ReplicaId, key: ContentKey) -> Option<&VerifiedMessage> {
        self.by_sender.get(&sender)?.iter().find(|(kept, _)| *kept == key).map(|(_, message)| message)
    }

    pub(crate) fn insert(&mut self, sender: ReplicaId, key: ContentKey, message: VerifiedMessage) {
        let entries = self.by_sender.entry(sender).or_default();
        if entries.iter().any(|(kept, _)| *kept == key) {
            return;
        }
        if entries.len() == ENTRIES_PER_MEMBER {
            entries.pop_front();
        }
        entries.push_back((key, message));
    }

    pub(crate) fn len(&self) -> usize {
        self.by_sender.values().map(VecDeque::len).sum()
    }
}

/// How VIEW-CHANGEs and NEW-VIEWs were answered, since the pool started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeavyVerificationStats {
    /// Verified from scratch (successes and refusals).
    pub verified_in_full: u64,
    /// Answered from the cache of verified messages.
    pub served_from_cache: u64,
    /// Answered by a verification of the same message already queued or running.
    pub coalesced: u64,
    /// VIEW-CHANGEs inside a NEW-VIEW taken from the cache instead of verified again.
    pub view_changes_in_new_views_from_cache: u64,
    /// Verified messages kept now (at most `n * ENTRIES_PER_MEMBER`).
    pub cached: usize,
}

type Verdict = Result<VerifiedMessage, Refusal>;

/// What a caller holding a heavy message does next.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// Verified before: here it is.
    Verified(VerifiedMessage),
    /// Being verified for someone else: the verdict arrives here. Closed without one if
    /// the pool stops first.
    InProgress(oneshot::Receiver<Verdict>),
    /// Nobody has it: the caller verifies it and reports through this.
    Absent(Verification),
}

/// The cache and the verifications under way, shared by every worker and every caller of
/// one pool.
#[derive(Debug, Default)]
pub(crate) struct HeavyVerifications {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    cache: VerifiedCache,
    /// Callers waiting for a verification under way, by the message's key. One entry per
    /// heavy job in the pool's queue or on a worker, one waiter per message in flight: both
    /// bounded by the inbound budgets.
    waiting: HashMap<ContentKey, Vec<oneshot::Sender<Verdict>>>,
    stats: HeavyVerificationStats,
}

impl HeavyVerifications {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing here is left half-updated by a panic elsewhere.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Looks `key` up for a message claiming `sender`; on [`Lookup::Absent`] later lookups of
    /// the same key wait for the returned [`Verification`].
    pub(crate) fn lookup(self: &Arc<Self>, sender: ReplicaId, key: ContentKey) -> Lookup {
        let mut state = self.lock();
        if let Some(message) = state.cache.get(sender, key).cloned() {
            state.stats.served_from_cache += 1;
            return Lookup::Verified(message);
        }
        if let Some(waiters) = state.waiting.get_mut(&key) {
            let (verdict_tx, verdict_rx) = oneshot::channel();
            waiters.push(verdict_tx);
            state.stats.coalesced += 1;
            return Lookup::InProgress(verdict_rx);
        }
        state.waiting.insert(key, Vec::new());
        Lookup::Absent(Verification { shared: self.clone(), sender, key, reported: false })
    }

    /// The verified form of `view_change` if this very message was verified before (a
    /// NEW-VIEW carries the VIEW-CHANGEs its primary received, usually the ones every
    /// replica received too).
    pub(crate) fn verified_view_change(
        &self,
        scope: Scope,
        view_change: &Signed<ViewChange>,
    ) -> Option<VerifiedViewChange> {
        // The key of the VIEW-CHANGE as it travels alone: the one it was cached under.
        let key = ContentKey::of_heavy(scope, &WireMessage::ViewChange(view_change.clone()))?;
        let mut state = self.lock();
        let Some(VerifiedMessage::ViewChange(verified)) = state.cache.get(view_change.payload.replica, key) else {
            return None;
        };
        let verified = VerifiedViewChange::clone(verified);
        state.stats.view_changes_in_new_views_from_cache += 1;
        Some(verified)
    }

    pub(crate) fn stats(&self) -> HeavyVerificationStats {
        let state = self.lock();
        HeavyVerificationStats { cached: state.cache.len(), ..state.stats }
    }
}

/// A verification one caller owes the others waiting on the same key. Dropped unreported
/// (the pool stopped before it ran), it lets the waiters go without a verdict and the next
/// copy be verified afresh.
#[derive(Debug)]
pub(crate) struct Verification {
    shared: Arc<HeavyVerifications>,
    sender: ReplicaId,
    key: ContentKey,
    reported: bool,
}

impl Verification {
    /// Hands `verdict` to everyone waiting and, if it is a success, keeps it for later
    /// copies.
    pub(crate) fn report(mut self, verdict: &Verdict) {
        self.reported = true;
        let waiters = {
            let mut state = self.shared.lock();
            state.stats.verified_in_full += 1;
            if let Ok(message) = verdict {
                state.cache.insert(self.sender, self.key, message.clone());
            }
            state.waiting.remove(&self.key).unwrap_or_default()
        };
        for waiter in waiters {
            // A waiter whose asker has gone no longer needs the verdict.
            let _ = waiter.send(verdict.clone());
        }
    }
}

impl Drop for Verification {
    fn drop(&mut self) {
        if !self.reported {
            self.shared.lock().waiting.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_framework::verify::verify_message;

    use crate::test_fixtures::{cluster, signed_view_change};

    fn view_change(replica: u32, view: u64) -> WireMessage {
        WireMessage::ViewChange(signed_view_change(replica, view))
    }

    #[test]
    fn keys_differ_for_a_copy_with_one_byte_changed_and_agree_for_an_identical_copy() {
        let original = view_change(1, 1);
        let mut encoded = wire::encode(crate::test_fixtures::SCOPE, &original).unwrap();
        *encoded.last_mut().unwrap() ^= 1;
        let tampered = wire::decode(&encoded, usize::MAX).unwrap().message;
        assert_ne!(tampered, original);
        assert_ne!(
            ContentKey::of_heavy(crate::test_fixtures::SCOPE, &tampered),
            ContentKey::of_heavy(crate::test_fixtures::SCOPE, &original)
        );
        assert_eq!(
            ContentKey::of_heavy(crate::test_fixtures::SCOPE, &original.clone()),
            ContentKey::of_heavy(crate::test_fixtures::SCOPE, &original)
        );
        assert!(ContentKey::of_heavy(crate::test_fixtures::SCOPE, &original).is_some());
    }

    #[test]
    fn the_cache_keeps_at_most_a_few_messages_per_sender_the_newest() {
        let config = cluster();
        let mut cache = VerifiedCache::default();
        for view in 1..=50 {
            for replica in 0..4 {
                let message = view_change(replica, view);
                let key = ContentKey::of_heavy(crate::test_fixtures::SCOPE, &message).unwrap();
                let verified = verify_message(message, &config).unwrap();
                cache.insert(ReplicaId(replica), key, verified);
                assert!(cache.len() <= 4 * ENTRIES_PER_MEMBER, "{} entries", cache.len());
            }
        }
        assert_eq!(cache.len(), 4 * ENTRIES_PER_MEMBER);
        let newest = ContentKey::of_heavy(crate::test_fixtures::SCOPE, &view_change(2, 50)).unwrap();
        let evicted =
            ContentKey::of_heavy(crate::test_fixtures::SCOPE, &view_change(2, 50 - ENTRIES_PER_MEMBER as u64)).unwrap();
        assert!(cache.get(ReplicaId(2), newest).is_some(), "the newest is kept");
        assert!(cache.get(ReplicaId(2), evicted).is_none(), "the oldest are evicted");
        assert!(cache.get(ReplicaId(1), newest).is_none(), "kept under its own sender only");
    }
}
