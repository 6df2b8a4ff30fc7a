//! Verification at the edge: the only road from [`Message`] to [`VerifiedMessage`].
//!
//! Checks here depend only on the message and the cluster configuration, never on a
//! replica's state, so any thread may run them (the runtime spreads them over its cores)
//! and every correct replica reaches the same verdict. Protocol-state checks (view,
//! watermarks, duplicates) belong to the roles.

use crate::config::ClusterConfig;
use crate::ids::{ClientId, ReplicaId, Timestamp};
use crate::messages::{request_size, Batch, ClientKey, Message, MessageKind, Request, VerifiedMessage};
use crate::wire::WireError;
use bulwark_crypto::{verify_batch, PublicKey, Signable, Signed, Verified};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

/// Why a message was refused. Every refusal is counted by kind ([`RefusalCounts`]) and
/// logged; none is fatal to the receiver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("undecodable frame: {0}")]
    Wire(#[from] WireError),
    #[error("{kind:?} claims sender {replica}, which is not a member of the cluster")]
    UnknownSender { kind: MessageKind, replica: ReplicaId },
    #[error("{kind:?} has a signature that does not verify")]
    BadSignature { kind: MessageKind },
    #[error("request of {bytes} bytes exceeds the limit of {limit}")]
    RequestTooLarge { bytes: usize, limit: usize },
    #[error("pre-prepare digest does not match its batch")]
    BatchDigestMismatch,
    #[error("batch of {requests} requests / {bytes} bytes exceeds the limits")]
    BatchTooLarge { requests: usize, bytes: usize },
    #[error("batch holds request ({client}, {timestamp}) twice")]
    DuplicateRequestInBatch { client: ClientId, timestamp: Timestamp },
    #[error("batch holds a read-only request")]
    ReadOnlyRequestInBatch,
}

/// The kinds of [`Refusal`], for counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum RefusalKind {
    Malformed,
    Oversized,
    UnknownSender,
    BadSignature,
    RequestTooLarge,
    BatchDigestMismatch,
    BatchTooLarge,
    DuplicateRequestInBatch,
    ReadOnlyRequestInBatch,
}

impl Refusal {
    pub fn kind(&self) -> RefusalKind {
        match self {
            Refusal::Wire(WireError::Oversized { .. }) => RefusalKind::Oversized,
            Refusal::Wire(_) => RefusalKind::Malformed,
            Refusal::UnknownSender { .. } => RefusalKind::UnknownSender,
            Refusal::BadSignature { .. } => RefusalKind::BadSignature,
            Refusal::RequestTooLarge { .. } => RefusalKind::RequestTooLarge,
            Refusal::BatchDigestMismatch => RefusalKind::BatchDigestMismatch,
            Refusal::BatchTooLarge { .. } => RefusalKind::BatchTooLarge,
            Refusal::DuplicateRequestInBatch { .. } => RefusalKind::DuplicateRequestInBatch,
            Refusal::ReadOnlyRequestInBatch => RefusalKind::ReadOnlyRequestInBatch,
        }
    }
}

/// Counts of refused messages by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RefusalCounts(BTreeMap<RefusalKind, u64>);

impl RefusalCounts {
    pub fn record(&mut self, refusal: &Refusal) {
        self.record_kind(refusal.kind());
    }

    pub fn record_kind(&mut self, kind: RefusalKind) {
        self.add(kind, 1);
    }

    pub fn add(&mut self, kind: RefusalKind, count: u64) {
        *self.0.entry(kind).or_default() += count;
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &RefusalCounts) {
        for (kind, count) in other.iter() {
            self.add(kind, count);
        }
    }

    pub fn get(&self, kind: RefusalKind) -> u64 {
        self.0.get(&kind).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = (RefusalKind, u64)> + '_ {
        self.0.iter().map(|(k, v)| (*k, *v))
    }
}

impl fmt::Display for RefusalCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, (kind, count)) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{kind:?}={count}")?;
        }
        Ok(())
    }
}

fn member_key(config: &ClusterConfig, kind: MessageKind, replica: ReplicaId) -> Result<&PublicKey, Refusal> {
    config.public_key(replica).ok_or(Refusal::UnknownSender { kind, replica })
}

fn check<T: Signable>(signed: Signed<T>, key: &PublicKey, kind: MessageKind) -> Result<Verified<T>, Refusal> {
    signed.verify(key).map_err(|_| Refusal::BadSignature { kind })
}

fn check_request_size(request: &Request, config: &ClusterConfig) -> Result<(), Refusal> {
    let limit = config.params.request_bytes_max;
    if request.operation.len() > limit {
        return Err(Refusal::RequestTooLarge { bytes: request.operation.len(), limit });
    }
    Ok(())
}

/// Parsed client keys, so a client's key is decompressed into a curve point once rather
/// than for every request (decompression costs about a third of a verification). Bounded:
/// when full it is cleared, which costs only the re-parsing.
#[derive(Debug, Default)]
pub struct ClientKeyCache {
    keys: std::collections::HashMap<ClientKey, PublicKey>,
}

impl ClientKeyCache {
    /// Keys held before the cache is cleared.
    pub const CAPACITY: usize = 16_384;

    fn get(&mut self, key: &ClientKey) -> Result<PublicKey, Refusal> {
        if let Some(parsed) = self.keys.get(key) {
            return Ok(*parsed);
        }
        let parsed = key.to_public_key().map_err(|_| Refusal::BadSignature { kind: MessageKind::Request })?;
        if self.keys.len() >= Self::CAPACITY {
            self.keys.clear();
        }
        self.keys.insert(*key, parsed);
        Ok(parsed)
    }
}

/// Verifies every signature in `message` and, for a pre-prepare, that its batch is well
/// formed and matches its digest (PBFT.md N1.a and N1.e).
pub fn verify_message(message: Message, config: &ClusterConfig) -> Result<VerifiedMessage, Refusal> {
    verify_message_with(message, config, &mut ClientKeyCache::default())
}

/// [`verify_message`] with a cache of parsed client keys (one per verification thread).
pub fn verify_message_with(
    message: Message,
    config: &ClusterConfig,
    keys: &mut ClientKeyCache,
) -> Result<VerifiedMessage, Refusal> {
    Ok(match message {
        Message::Request(signed) => {
            check_request_size(&signed.payload, config)?;
            let key = keys.get(&signed.payload.client_key)?;
            VerifiedMessage::Request(check(signed, &key, MessageKind::Request)?)
        }
        Message::PrePrepare(signed, requests) => {
            let primary = config.primary(signed.payload.view);
            let key = member_key(config, MessageKind::PrePrepare, primary)?;
            // The primary's one signature first: a sender that cannot sign as the primary
            // must not make a replica check a whole batch of client signatures.
            let pre_prepare = check(signed, key, MessageKind::PrePrepare)?;
            let batch = verify_batch_requests(requests, config, keys)?;
            if batch.digest() != pre_prepare.digest {
                return Err(Refusal::BatchDigestMismatch);
            }
            VerifiedMessage::PrePrepare(pre_prepare, Arc::new(batch))
        }
        Message::Prepare(signed) => {
            let key = member_key(config, MessageKind::Prepare, signed.payload.replica)?;
            VerifiedMessage::Prepare(check(signed, key, MessageKind::Prepare)?)
        }
        Message::Commit(signed) => {
            let key = member_key(config, MessageKind::Commit, signed.payload.replica)?;
            VerifiedMessage::Commit(check(signed, key, MessageKind::Commit)?)
        }
        Message::Reply(signed) => {
            let key = member_key(config, MessageKind::Reply, signed.payload.replica)?;
            VerifiedMessage::Reply(check(signed, key, MessageKind::Reply)?)
        }
        Message::Checkpoint(signed) => {
            let key = member_key(config, MessageKind::Checkpoint, signed.payload.replica)?;
            VerifiedMessage::Checkpoint(check(signed, key, MessageKind::Checkpoint)?)
        }
        Message::Status(signed) => {
            let key = member_key(config, MessageKind::Status, signed.payload.replica)?;
            VerifiedMessage::Status(check(signed, key, MessageKind::Status)?)
        }
        Message::StateRequest(signed) => {
            let key = member_key(config, MessageKind::StateRequest, signed.payload.replica)?;
            VerifiedMessage::StateRequest(check(signed, key, MessageKind::StateRequest)?)
        }
        Message::StateReply(signed) => {
            let key = member_key(config, MessageKind::StateReply, signed.payload.replica)?;
            VerifiedMessage::StateReply(check(signed, key, MessageKind::StateReply)?)
        }
        Message::Inquiry(signed) => {
            let key = signed
                .payload
                .client_key
                .to_public_key()
                .map_err(|_| Refusal::BadSignature { kind: MessageKind::Inquiry })?;
            VerifiedMessage::Inquiry(check(signed, &key, MessageKind::Inquiry)?)
        }
        Message::Report(signed) => {
            let key = member_key(config, MessageKind::Report, signed.payload.replica)?;
            VerifiedMessage::Report(check(signed, key, MessageKind::Report)?)
        }
    })
}

/// N1.e: every request signed by its client and within size limits, the batch within
/// `batch_size_max`/`batch_bytes_max`, no `(client, timestamp)` twice, no read-only
/// request (those are never ordered). Signatures are batch-verified.
fn verify_batch_requests(
    requests: Vec<Signed<Request>>,
    config: &ClusterConfig,
    keys: &mut ClientKeyCache,
) -> Result<Batch, Refusal> {
    let params = &config.params;
    let bytes: usize = requests.iter().map(|r| request_size(&r.payload)).sum();
    if requests.len() > params.batch_size_max || bytes > params.batch_bytes_max {
        return Err(Refusal::BatchTooLarge { requests: requests.len(), bytes });
    }
    let mut seen = BTreeSet::new();
    for request in &requests {
        check_request_size(&request.payload, config)?;
        if request.payload.read_only {
            return Err(Refusal::ReadOnlyRequestInBatch);
        }
        let key = (request.payload.client(), request.payload.timestamp);
        if !seen.insert(key) {
            return Err(Refusal::DuplicateRequestInBatch { client: key.0, timestamp: key.1 });
        }
    }
    let mut items = Vec::with_capacity(requests.len());
    for request in requests {
        let key = keys.get(&request.payload.client_key)?;
        items.push((request, key));
    }
    let verified: Result<Vec<_>, _> = verify_batch(items)
        .into_iter()
        .map(|r| r.map_err(|_| Refusal::BadSignature { kind: MessageKind::Request }))
        .collect();
    Ok(Batch::new(verified?))
}
