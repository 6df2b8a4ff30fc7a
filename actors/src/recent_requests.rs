//! Client requests one replica verified lately, so that another copy of the same bytes is
//! not verified again.
//!
//! A request reaches a replica more than once in ordinary operation: a client that
//! broadcasts it (CL3, or a client that always sends to every replica) gives every backup a
//! copy, and each backup relays its copy to the primary (R3), which then holds up to `n`
//! copies of one request. A client re-sending the same request later (its old timestamps,
//! a retransmission) sends the same bytes again: ed25519 signatures are deterministic. Each
//! copy cost a strict signature check (tens of microseconds); a request flood sent to every
//! replica turned into `2n - 1` checks per request, and the relays reached the primary on
//! its replica lanes, ahead of the correct clients' requests.
//!
//! The cache is keyed by the request's signing digest and its signature, so a hit is the
//! same statement with the same signature: checking it again would give the same verdict
//! (strict verification depends on nothing else). Only successes are kept, and the cache
//! belongs to one replica: replicas sharing a process (the bench) do not share verdicts, so
//! every replica still pays for its own checks, as it would on a host of its own.

use bulwark_crypto::{Digest, Signed, Verified};
use bulwark_framework::membership::Scope;
use bulwark_framework::messages::Request;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Requests a replica's cache keeps, the oldest evicted first: a few client windows' worth
/// (about 200 bytes each for small requests, a few MiB at most for large ones).
pub const RECENT_REQUESTS_MAX: usize = 4_096;

/// Identifies a signed request by what was signed and the signature itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestKey(Digest);

impl RequestKey {
    /// One hash over the request's encoding: small against a signature check. `None` for a
    /// request that cannot be encoded (it is verified, and refused, as usual).
    pub fn of(scope: Scope, request: &Signed<Request>) -> Option<RequestKey> {
        Some(RequestKey::from_parts(scope.digest(&request.payload), request))
    }

    /// The key of a request already verified (its signing digest is known).
    pub fn of_verified(request: &Verified<Request>) -> RequestKey {
        RequestKey::from_parts(request.digest(), request.signed())
    }

    fn from_parts(digest: Digest, request: &Signed<Request>) -> RequestKey {
        RequestKey(Digest::of_parts(&[digest.as_bytes(), &request.signature.to_bytes()]))
    }
}

/// Verified requests by key, at most [`RECENT_REQUESTS_MAX`], oldest evicted first.
#[derive(Debug, Default)]
pub struct RecentRequests {
    verified: HashMap<RequestKey, Verified<Request>>,
    order: VecDeque<RequestKey>,
    hits: u64,
}

/// One replica's cache, shared by its inbound lanes.
pub type SharedRecentRequests = Arc<Mutex<RecentRequests>>;

impl RecentRequests {
    /// The verified form of a request with this key, if one was verified lately.
    pub fn get(&mut self, key: RequestKey) -> Option<Verified<Request>> {
        let found = self.verified.get(&key).cloned();
        if found.is_some() {
            self.hits += 1;
        }
        found
    }

    /// Keeps `request`, verified.
    pub fn insert(&mut self, request: Verified<Request>) {
        let key = RequestKey::of_verified(&request);
        if self.verified.insert(key, request).is_some() {
            return;
        }
        self.order.push_back(key);
        while self.order.len() > RECENT_REQUESTS_MAX {
            if let Some(oldest) = self.order.pop_front() {
                self.verified.remove(&oldest);
            }
        }
    }

    /// Requests found here instead of verified again, so far.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    pub fn len(&self) -> usize {
        self.verified.len()
    }

    pub fn is_empty(&self) -> bool {
        self.verified.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_crypto::KeyPair;
    use bulwark_framework::{ClusterId, Epoch, Timestamp};

    const SCOPE: Scope = Scope { cluster: ClusterId(1), epoch: Epoch(0) };

    fn request(key: &KeyPair, timestamp: u64) -> Signed<Request> {
        let payload = Request {
            client_key: key.public().into(),
            timestamp: Timestamp(timestamp),
            read_only: false,
            operation: vec![],
        };
        SCOPE.sign(payload, key).into_signed()
    }

    #[test]
    fn a_copy_of_the_same_bytes_hits_and_any_change_misses() {
        let key = KeyPair::from_seed([7; 32]);
        let signed = request(&key, 1);
        let mut recent = RecentRequests::default();
        let verified = SCOPE.verify(signed.clone(), &key.public()).unwrap();
        recent.insert(verified);
        // Signatures are deterministic: signing the same request again gives the same key.
        assert!(recent.get(RequestKey::of(SCOPE, &request(&key, 1)).unwrap()).is_some());
        assert_eq!(recent.hits(), 1);
        assert!(recent.get(RequestKey::of(SCOPE, &request(&key, 2)).unwrap()).is_none());
        let mut forged = signed.clone();
        forged.signature = request(&key, 2).signature;
        assert!(recent.get(RequestKey::of(SCOPE, &forged).unwrap()).is_none(), "another signature is another key");
        let mut other_operation = signed;
        other_operation.payload.operation = b"x".to_vec();
        assert!(recent.get(RequestKey::of(SCOPE, &other_operation).unwrap()).is_none());
    }

    #[test]
    fn the_cache_is_bounded_and_evicts_the_oldest() {
        let key = KeyPair::from_seed([8; 32]);
        let mut recent = RecentRequests::default();
        let first = request(&key, 0);
        for timestamp in 0..(RECENT_REQUESTS_MAX as u64 + 10) {
            let signed = request(&key, timestamp);
            let verified = SCOPE.verify(signed.clone(), &key.public()).unwrap();
            recent.insert(verified);
        }
        assert_eq!(recent.len(), RECENT_REQUESTS_MAX);
        assert!(recent.get(RequestKey::of(SCOPE, &first).unwrap()).is_none(), "the oldest was evicted");
        let last = request(&key, RECENT_REQUESTS_MAX as u64 + 9);
        assert!(recent.get(RequestKey::of(SCOPE, &last).unwrap()).is_some());
    }
}
