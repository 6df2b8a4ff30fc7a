//! A replicated key-value store.
//!
//! The state is a [`BTreeMap`] from string keys to byte values. A `BTreeMap` rather than
//! a `HashMap` because its iteration order is fixed by the keys alone, which makes the
//! snapshot encoding canonical: every replica in the same state produces the same bytes,
//! and therefore the same state digest.

use std::collections::BTreeMap;

use bulwark_framework::service::{Caller, ExecutionContext, Service, ServiceError};
use serde::{Deserialize, Serialize};

/// The longest key, in bytes, a mutating operation accepts.
///
/// Limits keep one client from growing every replica's state (and every snapshot and
/// state transfer) without bound with a single request.
pub const MAX_KEY_LEN: usize = 1024;

/// The longest value, in bytes, the store holds under one key, after an append.
pub const MAX_VALUE_LEN: usize = 1024 * 1024;

/// An operation on the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOp {
    /// Sets `key` to `value`, replacing any previous value.
    /// Answers [`KvReply::Done`] with the previous value.
    Put { key: String, value: Vec<u8> },
    /// Reads `key`. Read-only: can be answered by [`Service::query`].
    /// Answers [`KvReply::Value`].
    Get { key: String },
    /// Removes `key`. Answers [`KvReply::Done`] with the removed value, if any.
    Delete { key: String },
    /// Appends `value` to the value under `key`, treating a missing key as empty (so this
    /// creates the key). Answers [`KvReply::Appended`] with the new length.
    Append { key: String, value: Vec<u8> },
}

impl KvOp {
    /// The key the operation is about.
    pub fn key(&self) -> &str {
        match self {
            KvOp::Put { key, .. } | KvOp::Get { key } | KvOp::Delete { key } | KvOp::Append { key, .. } => key,
        }
    }

    /// Whether the operation leaves the state unchanged, and so may skip ordering.
    pub fn is_read_only(&self) -> bool {
        matches!(self, KvOp::Get { .. })
    }
}

/// The store's answer to a [`KvOp`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvReply {
    /// The value under the key read by [`KvOp::Get`], or `None` if there is none.
    Value(Option<Vec<u8>>),
    /// A [`KvOp::Put`] or [`KvOp::Delete`] took effect; `previous` is the value it
    /// replaced or removed. Returning it lets clients build compare-and-swap-style logic
    /// without a separate read.
    Done { previous: Option<Vec<u8>> },
    /// A [`KvOp::Append`] took effect; the value under the key is now `len` bytes long.
    Appended { len: u64 },
    /// The operation was refused, and the state is unchanged, because its key is longer
    /// than `max` bytes.
    KeyTooLong { max: u64 },
    /// The operation was refused, and the state is unchanged, because the value it would
    /// store is longer than `max` bytes.
    ValueTooLong { max: u64 },
}

/// A key-value store replicated by Bulwark.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KvStore {
    entries: BTreeMap<String, Vec<u8>>,
}

impl KvStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value under `key`, if any. For local inspection (tests, tools); clients read
    /// through [`KvOp::Get`].
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.entries.get(key).map(Vec::as_slice)
    }

    /// How many keys the store holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the store holds no keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks a mutating operation's key against [`MAX_KEY_LEN`].
    fn check_key(key: &str) -> Result<(), KvReply> {
        if key.len() > MAX_KEY_LEN {
            Err(KvReply::KeyTooLong { max: MAX_KEY_LEN as u64 })
        } else {
            Ok(())
        }
    }

    fn value_too_long() -> KvReply {
        KvReply::ValueTooLong { max: MAX_VALUE_LEN as u64 }
    }

    fn read(&self, key: &str) -> KvReply {
        // No key longer than MAX_KEY_LEN can be stored, so a long key simply has no
        // value: answering `None` is the truth, not a silent rejection.
        KvReply::Value(self.entries.get(key).cloned())
    }

    fn apply(&mut self, op: &KvOp) -> Result<KvReply, KvReply> {
        match op {
            KvOp::Get { key } => Ok(self.read(key)),
            KvOp::Put { key, value } => {
                Self::check_key(key)?;
                if value.len() > MAX_VALUE_LEN {
                    return Err(Self::value_too_long());
                }
                let previous = self.entries.insert(key.clone(), value.clone());
                Ok(KvReply::Done { previous })
            }
            KvOp::Delete { key } => {
                // Deleting a key that cannot exist is harmless, but check anyway so that
                // every mutating operation treats long keys the same way.
                Self::check_key(key)?;
                Ok(KvReply::Done { previous: self.entries.remove(key) })
            }
            KvOp::Append { key, value } => {
                Self::check_key(key)?;
                let current = self.entries.get(key).map_or(0, Vec::len);
                // Check before touching the map, so a refused append changes nothing
                // (not even creating an empty entry).
                if current.saturating_add(value.len()) > MAX_VALUE_LEN {
                    return Err(Self::value_too_long());
                }
                let stored = self.entries.entry(key.clone()).or_default();
                stored.extend_from_slice(value);
                Ok(KvReply::Appended { len: stored.len() as u64 })
            }
        }
    }
}

impl Service for KvStore {
    type Op = KvOp;
    type Reply = KvReply;

    fn execute(&mut self, op: &KvOp, _: &mut ExecutionContext) -> KvReply {
        self.apply(op).unwrap_or_else(|refused| refused)
    }

    fn query(&self, op: &KvOp, _: &Caller) -> Option<KvReply> {
        match op {
            KvOp::Get { key } => Some(self.read(key)),
            KvOp::Put { .. } | KvOp::Delete { .. } | KvOp::Append { .. } => None,
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        // Encoding a map of strings to bytes into a Vec cannot fail: rmp-serde's only
        // errors are from the writer (a Vec never fails) or from sequences of unknown
        // length (a BTreeMap knows its length).
        rmp_serde::to_vec(&self.entries).expect("encoding a BTreeMap into a Vec cannot fail")
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), ServiceError> {
        let entries: BTreeMap<String, Vec<u8>> = rmp_serde::from_slice(snapshot)
            .map_err(|e| ServiceError(format!("key-value snapshot does not decode: {e}")))?;
        if let Some((key, value)) =
            entries.iter().find(|(key, value)| key.len() > MAX_KEY_LEN || value.len() > MAX_VALUE_LEN)
        {
            return Err(ServiceError(format!(
                "key-value snapshot holds an entry over the limits ({} byte key, {} byte value)",
                key.len(),
                value.len()
            )));
        }
        // Accept only the exact bytes `snapshot` would produce for this state (no
        // trailing bytes, no unsorted or duplicate keys, no alternative integer
        // encodings). Then the state digest after a restore is the digest of the bytes
        // that were restored, which is what a replica fetching state checked.
        if rmp_serde::to_vec(&entries).ok().as_deref() != Some(snapshot) {
            return Err(ServiceError("key-value snapshot is not in canonical form".to_owned()));
        }
        self.entries = entries;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_crypto::Digest;
    use proptest::prelude::*;

    fn put(key: &str, value: &[u8]) -> KvOp {
        KvOp::Put { key: key.to_owned(), value: value.to_vec() }
    }

    fn get(key: &str) -> KvOp {
        KvOp::Get { key: key.to_owned() }
    }

    fn delete(key: &str) -> KvOp {
        KvOp::Delete { key: key.to_owned() }
    }

    fn append(key: &str, value: &[u8]) -> KvOp {
        KvOp::Append { key: key.to_owned(), value: value.to_vec() }
    }

    fn populated() -> KvStore {
        let mut store = KvStore::new();
        for op in [put("a", b"1"), put("b", b"22"), append("c", b"333")] {
            store.execute(&op, &mut ExecutionContext::test(Caller::test(1), 1, 0));
        }
        store
    }

    #[test]
    fn put_get_delete() {
        let mut store = KvStore::new();
        assert_eq!(store.execute(&get("k"), &mut ExecutionContext::test(Caller::test(1), 1, 0)), KvReply::Value(None));
        assert_eq!(
            store.execute(&put("k", b"v1"), &mut ExecutionContext::test(Caller::test(1), 1, 0)),
            KvReply::Done { previous: None }
        );
        assert_eq!(
            store.execute(&get("k"), &mut ExecutionContext::test(Caller::test(1), 1, 0)),
            KvReply::Value(Some(b"v1".to_vec()))
        );
        assert_eq!(
            store.execute(&put("k", b"v2"), &mut ExecutionContext::test(Caller::test(1), 1, 0)),
            KvReply::Done { previous: Some(b"v1".to_vec()) }
        );
        assert_eq!(
            store.execute(&delete("k"), &mut ExecutionContext::test(Caller::test(1), 1, 0)),
            KvReply::Done { previous: Some(b"v2".to_vec()) }
        );
        assert_eq!(store.execute(&get("k"), &mut ExecutionContext::test(Caller::test(1), 1, 0)), KvReply::Value(None));
        assert_eq!(
            store.execute(&delete("k"), &mut ExecutionContext::test(Caller::test(1), 1, 0)),
            KvReply::Done { previous: None }
        );
        assert!(store.is_empty());
    }

    #[test]
    fn empty_value_is_distinct_from_absent() {
        let mut store = KvStore::new();
        store.execute(&put("k", b""), &mut ExecutionContext::test(Caller::test(1), 1, 0));
        assert_eq!(
            store.execute(&get("k"), &mut ExecutionContext::test(Caller::test(1), 1, 0)),
            KvReply::Value(Some(Vec::new()))
        );
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn append_creates_and_extends() {
        let mut store = KvStore::new();
        assert_eq!(
            store.execute(&append("k", b"ab"), &mut ExecutionContext::test(Caller::test(1), 1, 0)),
            KvReply::Appended { len: 2 }
        );
        assert_eq!(
            store.execute(&append("k", b"cde"), &mut ExecutionContext::test(Caller::test(1), 1, 0)),
            KvReply::Appended { len: 5 }
        );
        assert_eq!(store.get("k"), Some(&b"abcde"[..]));
    }

    #[test]
    fn long_keys_are_refused_without_change() {
        let mut store = populated();
        let before = Digest::of(&store.snapshot());
        let long = "x".repeat(MAX_KEY_LEN + 1);
        let refused = KvReply::KeyTooLong { max: MAX_KEY_LEN as u64 };
        assert_eq!(store.execute(&put(&long, b"v"), &mut ExecutionContext::test(Caller::test(1), 1, 0)), refused);
        assert_eq!(store.execute(&append(&long, b"v"), &mut ExecutionContext::test(Caller::test(1), 1, 0)), refused);
        assert_eq!(store.execute(&delete(&long), &mut ExecutionContext::test(Caller::test(1), 1, 0)), refused);
        assert_eq!(
            store.execute(&get(&long), &mut ExecutionContext::test(Caller::test(1), 1, 0)),
            KvReply::Value(None)
        );
        assert_eq!(Digest::of(&store.snapshot()), before);

        let longest = "x".repeat(MAX_KEY_LEN);
        assert_eq!(
            store.execute(&put(&longest, b"v"), &mut ExecutionContext::test(Caller::test(1), 1, 0)),
            KvReply::Done { previous: None }
        );
    }

    #[test]
    fn long_values_are_refused_without_change() {
        let mut store = populated();
        let before = Digest::of(&store.snapshot());
        let refused = KvReply::ValueTooLong { max: MAX_VALUE_LEN as u64 };
        let big = vec![0; MAX_VALUE_LEN + 1];
        assert_eq!(store.execute(&put("a", &big), &mut ExecutionContext::test(Caller::test(1), 1, 0)), refused);
        assert_eq!(store.execute(&append("new", &big), &mut ExecutionContext::test(Caller::test(1), 1, 0)), refused);
        assert_eq!(Digest::of(&store.snapshot()), before);
        assert_eq!(store.get("new"), None, "a refused append creates no key");

        // An append that would push an existing value over the limit is refused too.
        store.execute(&put("a", &vec![0; MAX_VALUE_LEN]), &mut ExecutionContext::test(Caller::test(1), 1, 0));
        let before = Digest::of(&store.snapshot());
        assert_eq!(store.execute(&append("a", b"!"), &mut ExecutionContext::test(Caller::test(1), 1, 0)), refused);
        assert_eq!(Digest::of(&store.snapshot()), before);
        assert_eq!(
            store.execute(&append("a", b""), &mut ExecutionContext::test(Caller::test(1), 1, 0)),
            KvReply::Appended { len: MAX_VALUE_LEN as u64 }
        );
    }

    #[test]
    fn query_answers_reads_only() {
        let store = populated();
        assert_eq!(store.query(&get("b"), &Caller::test(1)), Some(KvReply::Value(Some(b"22".to_vec()))));
        assert_eq!(store.query(&get("missing"), &Caller::test(1)), Some(KvReply::Value(None)));
        assert_eq!(store.query(&put("a", b"x"), &Caller::test(1)), None);
        assert_eq!(store.query(&delete("a"), &Caller::test(1)), None);
        assert_eq!(store.query(&append("a", b"x"), &Caller::test(1)), None);
        assert_eq!(store, populated(), "query changed nothing");
    }

    #[test]
    fn snapshot_round_trips() {
        let store = populated();
        let mut restored = KvStore::new();
        restored.restore(&store.snapshot()).unwrap();
        assert_eq!(Digest::of(&restored.snapshot()), Digest::of(&store.snapshot()));
        assert_eq!(restored, store);
    }

    #[test]
    fn restore_replaces_rather_than_merges() {
        let mut store = KvStore::new();
        store.execute(&put("stale", b"x"), &mut ExecutionContext::test(Caller::test(1), 1, 0));
        store.restore(&populated().snapshot()).unwrap();
        assert_eq!(store, populated());
    }

    #[test]
    fn restore_rejects_garbage_and_keeps_state() {
        let mut store = populated();
        let before = Digest::of(&store.snapshot());
        for garbage in [
            &b""[..],
            &b"\xc1"[..],
            &b"not a snapshot"[..],
            &[0x81, 0xa1, b'k'][..], // a map whose only value is cut off
            &[0x93, 1, 2, 3][..],    // an array, not a map
        ] {
            let err = store.restore(garbage).unwrap_err();
            assert!(err.0.contains("snapshot"), "unhelpful error: {err}");
        }
        assert_eq!(Digest::of(&store.snapshot()), before);
    }

    #[test]
    fn restore_rejects_non_canonical_encodings() {
        let mut store = KvStore::new();
        let mut trailing = populated().snapshot();
        trailing.push(0);
        assert!(store.restore(&trailing).is_err());

        // {"b": [], "a": []}: valid msgpack, keys out of order.
        let unsorted = [0x82, 0xa1, b'b', 0x90, 0xa1, b'a', 0x90];
        assert!(store.restore(&unsorted).is_err());
        assert!(store.is_empty());
    }

    #[test]
    fn same_ops_same_digest() {
        let ops = [put("x", b"1"), append("y", b"2"), delete("x"), append("y", b"3"), put("z", b"")];
        let (mut one, mut two) = (KvStore::new(), KvStore::new());
        for op in &ops {
            assert_eq!(
                one.execute(op, &mut ExecutionContext::test(Caller::test(1), 1, 0)),
                two.execute(op, &mut ExecutionContext::test(Caller::test(1), 1, 0))
            );
        }
        assert_eq!(Digest::of(&one.snapshot()), Digest::of(&two.snapshot()));
        assert_ne!(Digest::of(&one.snapshot()), Digest::of(&KvStore::new().snapshot()));
    }

    fn arb_op() -> impl Strategy<Value = KvOp> {
        // A handful of keys, so operations collide often.
        let key = "[a-d]";
        let value = proptest::collection::vec(any::<u8>(), 0..8);
        prop_oneof![
            (key, value.clone()).prop_map(|(key, value)| KvOp::Put { key, value }),
            key.prop_map(|key| KvOp::Get { key }),
            key.prop_map(|key| KvOp::Delete { key }),
            (key, value).prop_map(|(key, value)| KvOp::Append { key, value }),
        ]
    }

    proptest! {
        #[test]
        fn any_history_snapshots_and_queries_consistently(
            ops in proptest::collection::vec(arb_op(), 0..40),
        ) {
            let mut store = KvStore::new();
            for op in &ops {
                let before = Digest::of(&store.snapshot());
                let queried = store.query(op, &Caller::test(1));
                prop_assert_eq!(queried.is_some(), op.is_read_only());
                let reply = store.execute(op, &mut ExecutionContext::test(Caller::test(1), 1, 0));
                if let Some(queried) = queried {
                    prop_assert_eq!(queried, reply);
                    prop_assert_eq!(Digest::of(&store.snapshot()), before);
                }
            }
            let snapshot = store.snapshot();
            let mut restored = KvStore::new();
            restored.restore(&snapshot).unwrap();
            prop_assert_eq!(Digest::of(&restored.snapshot()), Digest::of(&store.snapshot()));
            prop_assert_eq!(restored.snapshot(), snapshot);
        }
    }
}
