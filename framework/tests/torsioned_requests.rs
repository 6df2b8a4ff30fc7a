//! Byzantine clients: requests valid at only some replicas.
//!
//! A client can sign its own request with a small-order component in `R`
//! ([`bulwark_crypto::torsion`]). Under ed25519-dalek's `verify_strict` and its uncofactored
//! batch check, a batch accepted such a signature or not depending on the other items in
//! it; replicas batching the requests that reach each of them would disagree on it, and a
//! correct primary proposing it would be refused by its backups and replaced. Under the
//! cofactored rule Bulwark uses (ZIP-215) the signature is valid alone and in every batch.
//! These tests pin what matters: whether a request is valid (R1, N1.e) is a property of the
//! request alone, the same on every path and beside any companions. Rule IDs refer to
//! `docs/PBFT.md`.

use bulwark_crypto::torsion::{sign_with_torsion, ORDER_EIGHT_TORSION};
use bulwark_crypto::{Digest, KeyPair, Signed};
use bulwark_framework::config::ProtocolParams;
use bulwark_framework::ids::{ClusterId, Epoch, SeqNum, Timestamp, View};
use bulwark_framework::membership::{Membership, Scope};

use bulwark_framework::messages::{batch_digest, Message, PrePrepare, Request, VerifiedMessage, WireBatch};
use bulwark_framework::verify::{verify_message, verify_requests, ClientKeyCache, Refusal};

/// Tries per test: under dalek's uncofactored batch check a point of order 8 was accepted
/// with probability about 1/8 per companion, so 64 companions would have shown a split
/// verdict with probability 1 − (7/8)^64 ≈ 0.9998.
const TRIES: u64 = 64;

const BYZANTINE_CLIENT_SEED: [u8; 32] = [150; 32];

fn replica_key(i: u32) -> KeyPair {
    KeyPair::from_seed([i as u8 + 1; 32])
}

fn honest_client_key(i: u8) -> KeyPair {
    KeyPair::from_seed([100 + i; 32])
}

const SCOPE: Scope = Scope { cluster: ClusterId(1), epoch: Epoch(0) };

fn cluster() -> Membership {
    let members = (0..4).map(replica_key).collect::<Vec<_>>().iter().map(KeyPair::public).collect();
    Membership::numbered(SCOPE.cluster, members, ProtocolParams::default()).expect("a valid 4-replica cluster")
}

fn payload(key: &KeyPair, timestamp: u64) -> Request {
    Request {
        client_key: key.public().into(),
        timestamp: Timestamp(timestamp),
        read_only: false,
        operation: b"put a 1".to_vec(),
    }
}

fn honest_request(client: u8, timestamp: u64) -> Signed<Request> {
    let key = honest_client_key(client);
    SCOPE.sign(payload(&key, timestamp), &key).into_signed()
}

/// The Byzantine client's request with timestamp `timestamp`, its signature carrying a
/// torsion point of order 8.
fn torsioned_request(timestamp: u64) -> Signed<Request> {
    let key = KeyPair::from_seed(BYZANTINE_CLIENT_SEED);
    sign_with_torsion(
        payload(&key, timestamp),
        BYZANTINE_CLIENT_SEED,
        ORDER_EIGHT_TORSION[0],
        SCOPE.context::<Request>().as_bytes(),
    )
    .expect("request encodes")
}

/// A PRE-PREPARE for `(view 0, seq 1)` by the view-0 primary, carrying `requests`.
fn pre_prepare(requests: Vec<Signed<Request>>) -> Message {
    let digests: Vec<Digest> = requests.iter().map(|r| SCOPE.digest(&r.payload)).collect();
    let header = PrePrepare { view: View(0), seq: SeqNum(1), digest: batch_digest(0, digests.iter()) };
    Message::PrePrepare(SCOPE.sign(header, &replica_key(0)).into_signed(), WireBatch::requests(0, requests))
}

/// The crafted request with another payload under the same signature: a forgery, invalid
/// under every rule.
fn forged_request(timestamp: u64) -> Signed<Request> {
    let crafted = torsioned_request(timestamp);
    let mut payload = crafted.payload.clone();
    payload.operation = b"put a 2".to_vec();
    Signed { payload, signature: crafted.signature }
}

#[test]
fn r1_incoming_requests_give_a_torsioned_signature_one_verdict_whatever_arrives_with_it() {
    let config = cluster();
    let crafted = torsioned_request(1);
    let alone = verify_message(Message::Request(crafted.clone()), &config).is_ok();
    assert!(alone, "a client's own signature satisfies the cofactored equation");
    for companion in 0..TRIES {
        // A fresh cache each time: as a different replica would see it.
        let results = verify_requests(
            vec![crafted.clone(), honest_request(1, companion), forged_request(2)],
            &config,
            &mut ClientKeyCache::default(),
        );
        assert_eq!(results[0].is_ok(), alone, "the verdict changed beside companion {companion}");
        assert!(results[1].is_ok(), "honest companion {companion} refused");
        assert!(matches!(results[2], Err(Refusal::BadSignature { .. })), "forgery accepted beside {companion}");
    }
}

#[test]
fn r1_a_single_request_gets_the_verdict_it_gets_in_a_batch() {
    let config = cluster();
    for timestamp in 1..=8 {
        let single = verify_message(Message::Request(torsioned_request(timestamp)), &config);
        let batched = verify_requests(
            vec![honest_request(3, timestamp), torsioned_request(timestamp)],
            &config,
            &mut ClientKeyCache::default(),
        );
        assert_eq!(single.is_ok(), batched[1].is_ok(), "timestamp {timestamp}");
        let forged = verify_message(Message::Request(forged_request(timestamp)), &config);
        assert!(matches!(forged, Err(Refusal::BadSignature { .. })), "timestamp {timestamp}");
    }
}

#[test]
fn n1e_requests_a_correct_primary_accepts_pass_every_backups_batch_check() {
    // The primary accepts a request only through the incoming paths; whatever passes them
    // must pass the backups' check of the PRE-PREPARE, or a correct primary is suspected.
    let config = cluster();
    for round in 0..TRIES {
        let mut incoming = vec![torsioned_request(round + 1), forged_request(round + 1)];
        incoming.extend((0..5).map(|client| honest_request(client, round * 8 + client as u64)));
        let mut primary_keys = ClientKeyCache::default();
        let accepted: Vec<Signed<Request>> = verify_requests(incoming.clone(), &config, &mut primary_keys)
            .into_iter()
            .filter_map(Result::ok)
            .map(|verified| verified.into_signed())
            .collect();
        assert_eq!(accepted.len(), 6, "round {round}: all but the forgery are accepted");
        for request in &accepted {
            assert!(verify_message(Message::Request(request.clone()), &config).is_ok(), "single path, round {round}");
        }
        let verdict = verify_message(pre_prepare(accepted), &config);
        assert!(matches!(verdict, Ok(VerifiedMessage::PrePrepare(..))), "round {round}: {verdict:?}");
    }
}

#[test]
fn n1e_a_pre_prepare_carrying_a_torsioned_request_gets_one_verdict_at_every_backup() {
    // Only a Byzantine primary proposes such a request. Every backup checks the same list,
    // so all reach the same verdict, whatever it is: the primary gains no split.
    let config = cluster();
    for round in 0..TRIES {
        let requests = vec![torsioned_request(round + 1), honest_request(1, round), honest_request(2, round)];
        let verdicts: Vec<bool> =
            (0..3).map(|_| verify_message(pre_prepare(requests.clone()), &config).is_ok()).collect();
        assert!(verdicts.iter().all(|v| *v == verdicts[0]), "round {round}: {verdicts:?}");
    }
}
