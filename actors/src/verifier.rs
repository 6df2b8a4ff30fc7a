//! Signature verification off the role actors' threads.
//!
//! Verification is the hot path (an ed25519 check costs tens of microseconds, a replica
//! does several per request), so it runs on a [`SyncArbiter`] pool of OS threads, one per
//! core by default. The pipeline from the transport to a role actor is bounded end to end:
//! a semaphore permit is taken for each inbound message before verification and released
//! only after the role actor has handled it, so a flood of messages costs TCP backpressure,
//! never unbounded mailboxes.

use actix::prelude::*;
use bulwark_crypto::{Signed, Verified};
use bulwark_framework::messages::{Message as WireMessage, Request, VerifiedMessage};
use bulwark_framework::verify::{verify_message_with, verify_requests, ClientKeyCache, Refusal, RefusalCounts};
use bulwark_framework::ClusterConfig;
use std::sync::{Arc, Mutex};

/// Verify one message from the network.
#[derive(Debug)]
pub struct Verify(pub WireMessage);

impl actix::Message for Verify {
    type Result = Result<VerifiedMessage, Refusal>;
}

/// Verify client requests together: one ed25519 batch verification for all of them (about
/// half the cost of one check each). One result per request, in order.
#[derive(Debug)]
pub struct VerifyRequests(pub Vec<Signed<Request>>);

impl actix::Message for VerifyRequests {
    type Result = Vec<Result<Verified<Request>, Refusal>>;
}

/// A verification worker. Stateless but for the cluster configuration and the shared
/// refusal counters.
#[derive(Debug)]
pub struct Verifier {
    config: Arc<ClusterConfig>,
    refused: Arc<Mutex<RefusalCounts>>,
    client_keys: ClientKeyCache,
}

impl Actor for Verifier {
    type Context = SyncContext<Self>;
}

impl Handler<Verify> for Verifier {
    type Result = Result<VerifiedMessage, Refusal>;

    fn handle(&mut self, Verify(message): Verify, _: &mut SyncContext<Self>) -> Self::Result {
        let kind = message.kind();
        verify_message_with(message, &self.config, &mut self.client_keys).inspect_err(|refusal| {
            tracing::debug!(kind = kind.as_str(), %refusal, "refused at the edge");
            if let Ok(mut counts) = self.refused.lock() {
                counts.record(refusal);
            }
        })
    }
}

impl Handler<VerifyRequests> for Verifier {
    type Result = Vec<Result<Verified<Request>, Refusal>>;

    fn handle(&mut self, VerifyRequests(requests): VerifyRequests, _: &mut SyncContext<Self>) -> Self::Result {
        let results = verify_requests(requests, &self.config, &mut self.client_keys);
        for refusal in results.iter().filter_map(|r| r.as_ref().err()) {
            tracing::debug!(%refusal, "request refused at the edge");
            if let Ok(mut counts) = self.refused.lock() {
                counts.record(refusal);
            }
        }
        results
    }
}

/// A pool of verifiers and the counters they share.
#[derive(Clone, Debug)]
pub struct VerifierPool {
    pub addr: Addr<Verifier>,
    pub refused: Arc<Mutex<RefusalCounts>>,
    /// The cluster the pool verifies for.
    pub config: Arc<ClusterConfig>,
}

impl VerifierPool {
    /// Starts `threads` verification workers for `config`. Must be called inside a running
    /// actix System.
    pub fn start(threads: usize, config: Arc<ClusterConfig>) -> Self {
        let refused = Arc::new(Mutex::new(RefusalCounts::default()));
        let shared = refused.clone();
        let for_workers = config.clone();
        let addr = SyncArbiter::start(threads.max(1), move || Verifier {
            config: for_workers.clone(),
            refused: shared.clone(),
            client_keys: ClientKeyCache::default(),
        });
        VerifierPool { addr, refused, config }
    }

    /// A copy of the refusal counters.
    pub fn refused(&self) -> RefusalCounts {
        self.refused.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

/// Threads to verify with: one per core, as reported by the OS.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}
