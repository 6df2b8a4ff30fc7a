//! A cluster's membership in one epoch, as one value: who the members are (stable ids and
//! public keys), how many faults they tolerate, the quorum sizes, and the protocol
//! parameters every member must agree on.
//!
//! Nothing here assumes one fixed cluster. A replica is named by a stable [`ReplicaId`]
//! (any number chosen when it joins, never a position in a list); the cluster has a
//! [`ClusterId`] (a Steward site is a cluster too) and the membership an [`Epoch`] (its
//! generation: 0 until a reconfiguration changes it). Every signed message binds its
//! cluster and epoch ([`Scope`]), so nothing signed for one cluster or one membership is
//! valid in another.
//!
//! Roles read the membership through a [`MembershipHandle`] that their replica shares with
//! them, so that a change of membership replaces it in one place. Structures kept per
//! member are [`MemberMap`]s: keyed by id, holding exactly the members of the membership
//! they were made for, so a non-member (or a Byzantine peer inventing ids) can never grow
//! them.

use crate::config::{ConfigError, ProtocolParams};
use crate::ids::{ClusterId, Epoch, ReplicaId, View};
use crate::signing::Scoped;
use arc_swap::ArcSwap;
use bulwark_crypto::{KeyPair, PublicKey, Verified};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Where a signature belongs: the cluster and the membership epoch it was made in. Mixed
/// into the signing domain of every protocol message (see [`crate::signing`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Scope {
    pub cluster: ClusterId,
    pub epoch: Epoch,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cluster {} epoch {}", self.cluster.0, self.epoch.0)
    }
}

/// A cluster's members in one epoch: ids sorted, each with its public key, `f`, the
/// quorum sizes derived from them, and the protocol parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    cluster: ClusterId,
    epoch: Epoch,
    /// Sorted by id (the order `primary(v)` walks).
    members: Vec<(ReplicaId, PublicKey)>,
    f: usize,
    pub params: ProtocolParams,
}

impl Membership {
    /// The membership of `cluster` in `epoch`: at least 4 members with distinct ids and
    /// distinct keys. It tolerates `f = (n - 1) / 3` Byzantine members.
    pub fn new(
        cluster: ClusterId,
        epoch: Epoch,
        members: impl IntoIterator<Item = (ReplicaId, PublicKey)>,
        params: ProtocolParams,
    ) -> Result<Self, ConfigError> {
        let mut members: Vec<(ReplicaId, PublicKey)> = members.into_iter().collect();
        members.sort_by_key(|(id, _)| *id);
        if members.len() < 4 {
            return Err(ConfigError::Invalid {
                field: "members",
                reason: format!("a BFT cluster needs at least 4 replicas (3f + 1, f >= 1), got {}", members.len()),
            });
        }
        if let Some(pair) = members.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(ConfigError::Invalid {
                field: "members",
                reason: format!("replica id {} appears twice", pair[0].0 .0),
            });
        }
        let mut keys: Vec<PublicKey> = members.iter().map(|(_, key)| *key).collect();
        keys.sort();
        keys.dedup();
        if keys.len() != members.len() {
            return Err(ConfigError::Invalid { field: "members", reason: "two replicas share a public key".into() });
        }
        params.validate()?;
        let f = (members.len() - 1) / 3;
        let membership = Membership { cluster, epoch, members, f, params };
        let new_view_bytes = membership.new_view_bytes_max();
        if new_view_bytes > membership.params.frame_bytes_max {
            return Err(ConfigError::Invalid {
                field: "frame_bytes_max",
                reason: format!(
                    "a NEW-VIEW for {} replicas with a watermark window of {} can take {} bytes; raise \
                     frame_bytes_max to at least that or lower watermark_window",
                    membership.n(),
                    membership.params.watermark_window,
                    new_view_bytes
                ),
            });
        }
        Ok(membership)
    }

    /// The first membership of a cluster whose members are `keys`, with ids `0..n`: the
    /// shape of a cluster made by `bulwark keygen` without `--ids`, and of most tests.
    pub fn numbered(cluster: ClusterId, keys: Vec<PublicKey>, params: ProtocolParams) -> Result<Self, ConfigError> {
        let members = keys.into_iter().enumerate().map(|(index, key)| (ReplicaId(index as u32), key));
        Membership::new(cluster, Epoch(0), members, params)
    }

    pub fn cluster(&self) -> ClusterId {
        self.cluster
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The cluster and epoch this membership's members sign in.
    pub fn scope(&self) -> Scope {
        Scope { cluster: self.cluster, epoch: self.epoch }
    }

    pub fn n(&self) -> usize {
        self.members.len()
    }

    /// The number of Byzantine members tolerated.
    pub fn f(&self) -> usize {
        self.f
    }

    /// The Byzantine quorum `⌈(n + f + 1) / 2⌉`: any two quorums share at least `f + 1`
    /// members, so at least one correct one, and `n - f` correct members form one. For
    /// `n = 3f + 1` it is `2f + 1`; a larger `n` needs more than `2f + 1` (with `n = 5`,
    /// two sets of 3 may share only one member, a faulty one).
    pub fn quorum(&self) -> usize {
        (self.n() + self.f + 2) / 2
    }

    /// `f + 1`: always includes at least one correct member.
    pub fn weak_quorum(&self) -> usize {
        self.f + 1
    }

    /// The primary of `view`: the view modulo the sorted member list.
    pub fn primary(&self, view: View) -> ReplicaId {
        self.members[(view.0 % self.n() as u64) as usize].0
    }

    pub fn public_key(&self, replica: ReplicaId) -> Option<&PublicKey> {
        self.position(replica).map(|index| &self.members[index].1)
    }

    pub fn is_member(&self, replica: ReplicaId) -> bool {
        self.position(replica).is_some()
    }

    /// The member ids, ascending.
    pub fn replicas(&self) -> impl ExactSizeIterator<Item = ReplicaId> + '_ {
        self.members.iter().map(|(id, _)| *id)
    }

    /// The members with their keys, ascending by id.
    pub fn members(&self) -> &[(ReplicaId, PublicKey)] {
        &self.members
    }

    fn position(&self, replica: ReplicaId) -> Option<usize> {
        self.members.binary_search_by_key(&replica, |(id, _)| *id).ok()
    }

    /// An upper bound on an encoded NEW-VIEW: a quorum of VIEW-CHANGEs, each with a
    /// checkpoint proof and up to `L` prepared certificates of a quorum of signed messages
    /// (about 128 bytes each encoded), plus `L` pre-prepares. It must fit in a frame, or a
    /// view change with a full window could never complete.
    pub fn new_view_bytes_max(&self) -> usize {
        let signed_message = 128;
        let window = self.params.watermark_window as usize;
        let view_change = (self.quorum() + window * self.quorum()) * signed_message + 256;
        self.quorum() * view_change + window * signed_message + 1024
    }
}

/// One value per member of a membership, keyed by id. It holds exactly the members it was
/// made for: lookups of anyone else find nothing, so it never grows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberMap<T> {
    /// Sorted by id.
    entries: Vec<(ReplicaId, T)>,
}

impl<T> MemberMap<T> {
    /// A value for every member of `membership`, made by `value`.
    pub fn new(membership: &Membership, mut value: impl FnMut(ReplicaId) -> T) -> Self {
        MemberMap { entries: membership.replicas().map(|id| (id, value(id))).collect() }
    }

    pub fn get(&self, member: ReplicaId) -> Option<&T> {
        self.position(member).map(|index| &self.entries[index].1)
    }

    pub fn get_mut(&mut self, member: ReplicaId) -> Option<&mut T> {
        self.position(member).map(|index| &mut self.entries[index].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (ReplicaId, &T)> {
        self.entries.iter().map(|(id, value)| (*id, value))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (ReplicaId, &mut T)> {
        self.entries.iter_mut().map(|(id, value)| (*id, value))
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().map(|(_, value)| value)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.entries.iter_mut().map(|(_, value)| value)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn position(&self, member: ReplicaId) -> Option<usize> {
        self.entries.binary_search_by_key(&member, |(id, _)| *id).ok()
    }
}

/// The membership a replica and its roles read, shared between them: replacing it here
/// replaces it for all of them at once. Cloning the handle shares it.
#[derive(Clone)]
pub struct MembershipHandle(Arc<ArcSwap<Membership>>);

impl MembershipHandle {
    pub fn new(membership: Membership) -> Self {
        MembershipHandle(Arc::new(ArcSwap::from_pointee(membership)))
    }

    /// The membership now.
    pub fn current(&self) -> Arc<Membership> {
        self.0.load_full()
    }

    /// Replaces the membership for every holder of this handle.
    pub fn replace(&self, membership: Membership) {
        self.0.store(Arc::new(membership));
    }

    /// The scope the members sign in now.
    pub fn scope(&self) -> Scope {
        self.0.load().scope()
    }

    /// Signs one of the holder's own payloads in the current scope.
    pub fn sign<T: Scoped>(&self, payload: T, key: &KeyPair) -> Verified<T> {
        self.scope().sign(payload, key)
    }
}

impl std::fmt::Debug for MembershipHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let membership = self.current();
        write!(f, "MembershipHandle({}, {} members)", membership.scope(), membership.n())
    }
}

impl From<Membership> for MembershipHandle {
    fn from(membership: Membership) -> Self {
        MembershipHandle::new(membership)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: u8) -> Vec<PublicKey> {
        (0..n).map(|i| KeyPair::from_seed([i + 1; 32]).public()).collect()
    }

    fn membership(ids: &[u32]) -> Membership {
        let members = ids.iter().zip(keys(ids.len() as u8)).map(|(id, key)| (ReplicaId(*id), key));
        Membership::new(ClusterId(1), Epoch(0), members, ProtocolParams::default()).unwrap()
    }

    #[test]
    fn quorum_math_for_n_4_and_7() {
        let four = Membership::numbered(ClusterId(1), keys(4), ProtocolParams::default()).unwrap();
        assert_eq!((four.f(), four.quorum(), four.weak_quorum()), (1, 3, 2));
        let seven = Membership::numbered(ClusterId(1), keys(7), ProtocolParams::default()).unwrap();
        assert_eq!((seven.f(), seven.quorum(), seven.weak_quorum()), (2, 5, 3));
        assert_eq!(seven.primary(View(9)), ReplicaId(2));
    }

    /// M6: a certificate is worth something only because any two quorums share a correct
    /// member. With `2f + 1` as the quorum for every `n`, a cluster of 5 (f = 1) had
    /// quorums of 3 that share one member, possibly the faulty one.
    #[test]
    fn m6_any_two_quorums_share_f_plus_1_members_and_the_correct_members_form_one() {
        let params = ProtocolParams { checkpoint_interval: 16, watermark_window: 32, ..ProtocolParams::default() };
        for n in 4..=22u8 {
            let membership = Membership::numbered(ClusterId(1), keys(n), params.clone()).unwrap();
            let (n, f, q) = (n as usize, membership.f(), membership.quorum());
            let shared = 2 * q - n;
            assert!(shared > f, "n = {n}: quorums of {q} may share only {shared} members");
            assert!(q <= n - f, "n = {n}: the {} correct members cannot form a quorum of {q}", n - f);
        }
    }

    #[test]
    fn ids_are_stable_names_not_positions() {
        let membership = membership(&[40, 3, 21, 8]);
        let sorted: Vec<u32> = membership.replicas().map(|id| id.0).collect();
        assert_eq!(sorted, [3, 8, 21, 40]);
        // The primary walks the sorted members.
        let primaries: Vec<u32> = (0..5).map(|v| membership.primary(View(v)).0).collect();
        assert_eq!(primaries, [3, 8, 21, 40, 3]);
        assert!(membership.is_member(ReplicaId(21)));
        assert!(!membership.is_member(ReplicaId(0)) && !membership.is_member(ReplicaId(4)));
        assert!(membership.public_key(ReplicaId(1)).is_none());
    }

    #[test]
    fn a_member_map_holds_the_members_and_nobody_else() {
        let membership = membership(&[3, 8, 21, 40]);
        let mut map = MemberMap::new(&membership, |id| id.0 * 10);
        assert_eq!(map.get(ReplicaId(21)), Some(&210));
        assert!(map.get(ReplicaId(2)).is_none());
        assert!(map.get_mut(ReplicaId(1000)).is_none());
        *map.get_mut(ReplicaId(3)).unwrap() = 7;
        assert_eq!(map.values().copied().collect::<Vec<_>>(), [7, 80, 210, 400]);
        assert_eq!(map.len(), 4);
    }

    #[test]
    fn too_few_replicas_is_refused() {
        let err = Membership::numbered(ClusterId(1), keys(3), ProtocolParams::default()).unwrap_err();
        assert!(err.to_string().contains("at least 4"), "{err}");
    }

    #[test]
    fn duplicate_member_key_or_id_is_refused() {
        let mut members = keys(4);
        members[3] = members[0];
        assert!(Membership::numbered(ClusterId(1), members, ProtocolParams::default()).is_err());
        let twice = [0u32, 1, 2, 2].iter().zip(keys(4)).map(|(id, key)| (ReplicaId(*id), key));
        let err = Membership::new(ClusterId(1), Epoch(0), twice, ProtocolParams::default()).unwrap_err();
        assert!(err.to_string().contains("appears twice"), "{err}");
    }

    #[test]
    fn a_replaced_membership_is_seen_through_every_clone_of_the_handle() {
        let handle = MembershipHandle::new(membership(&[0, 1, 2, 3]));
        let role = handle.clone();
        let next = Membership::new(
            ClusterId(1),
            Epoch(1),
            [5u32, 6, 7, 8].iter().zip(keys(4)).map(|(id, key)| (ReplicaId(*id), key)),
            ProtocolParams::default(),
        )
        .unwrap();
        handle.replace(next);
        assert_eq!(role.current().epoch(), Epoch(1));
        assert_eq!(role.current().primary(View(0)), ReplicaId(5));
    }
}
