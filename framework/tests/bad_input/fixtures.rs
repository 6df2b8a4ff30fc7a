//! The fixtures every group of tests shares: the test cluster and its keys, signed
//! messages of every kind, and the helpers that check a message is accepted or refused
//! and counted under the expected kind. One set, so that every group builds and judges
//! messages the same way.

use bulwark_crypto::{Digest, KeyPair, Signed};
use bulwark_framework::config::ProtocolParams;
use bulwark_framework::ids::{ClusterId, Epoch, ReplicaId, SeqNum, Timestamp, View};
use bulwark_framework::membership::{Membership, Scope};
use bulwark_framework::messages::{
    batch_digest, client_id, BatchReply, BatchRequest, Checkpoint, Commit, Message, NewView, PrePrepare, Prepare,
    PreparedCertificate, Reply, Request, SlotProgress, StateReply, StateRequest, Status, VerifiedMessage, ViewChange,
    WireBatch,
};
use bulwark_framework::signing::Scoped;
use bulwark_framework::verify::{verify_message, Refusal, RefusalCounts, RefusalKind};
use bulwark_framework::wire::{self, WireError};
use std::sync::OnceLock;

/// Replicas in the test cluster (`f = 1`).
pub(crate) const N: u32 = 4;

/// Key of replica `i`: seed `[i + 1; 32]`, as the brief and the config tests use.
pub(crate) fn replica_key(i: u32) -> KeyPair {
    KeyPair::from_seed([i as u8 + 1; 32])
}

/// Key of client `i`: seeds from 100 up, disjoint from the replicas'.
pub(crate) fn client_key(i: u8) -> KeyPair {
    KeyPair::from_seed([100 + i; 32])
}

/// A key no cluster member holds.
pub(crate) fn outsider_key() -> KeyPair {
    KeyPair::from_seed([222; 32])
}

/// The scope every message of these tests is signed in.
pub(crate) const SCOPE: Scope = Scope { cluster: ClusterId(1), epoch: Epoch(0) };

pub(crate) fn cluster() -> Membership {
    cluster_with(ProtocolParams::default())
}

pub(crate) fn cluster_with(params: ProtocolParams) -> Membership {
    let members = (0..N).map(|i| replica_key(i).public()).collect();
    Membership::numbered(SCOPE.cluster, members, params).expect("a valid 4-replica cluster")
}

/// Decodes a body and checks it names [`SCOPE`]; the message.
pub(crate) fn decode(bytes: &[u8], limit: usize) -> Result<Message, WireError> {
    wire::decode(bytes, limit).map(|envelope| {
        assert_eq!(envelope.scope, SCOPE);
        envelope.message
    })
}

/// Splits a frame off `buffer` and checks it names [`SCOPE`].
pub(crate) fn decode_frame(buffer: &[u8], limit: usize) -> Result<Option<(Message, usize)>, WireError> {
    Ok(wire::decode_frame(buffer, limit)?.map(|(envelope, consumed)| {
        assert_eq!(envelope.scope, SCOPE);
        (envelope.message, consumed)
    }))
}

/// The default frame limit.
pub(crate) fn limit() -> usize {
    ProtocolParams::default().frame_bytes_max
}

pub(crate) fn sign<T: Scoped>(payload: T, key: &KeyPair) -> Signed<T> {
    SCOPE.sign(payload, key).into_signed()
}

pub(crate) fn request_with(client: u8, timestamp: u64, read_only: bool, operation: Vec<u8>) -> Signed<Request> {
    let key = client_key(client);
    let payload = Request { client_key: key.public().into(), timestamp: Timestamp(timestamp), read_only, operation };
    sign(payload, &key)
}

pub(crate) fn request(client: u8, timestamp: u64, operation: &[u8]) -> Signed<Request> {
    request_with(client, timestamp, false, operation.to_vec())
}

/// Three requests from three clients: the batch of the positive controls.
pub(crate) fn three_requests() -> Vec<Signed<Request>> {
    vec![request(1, 1, b"put a 1"), request(2, 7, b"put b 2"), request(3, 3, b"get a")]
}

/// The M3 digest of `requests` computed from their payloads, independently of
/// verification (so a batch with a bad client signature still gets the digest its
/// pre-prepare would carry).
pub(crate) fn digest_of(requests: &[Signed<Request>]) -> Digest {
    let digests: Vec<Digest> = requests.iter().map(|r| SCOPE.digest(&r.payload)).collect();
    batch_digest(0, digests.iter())
}

/// A pre-prepare for `(view, seq)` carrying `requests` under their true digest.
pub(crate) fn pre_prepare(view: u64, seq: u64, requests: Vec<Signed<Request>>, signer: &KeyPair) -> Message {
    let digest = digest_of(&requests);
    pre_prepare_with_digest(view, seq, digest, requests, signer)
}

pub(crate) fn pre_prepare_with_digest(
    view: u64,
    seq: u64,
    digest: Digest,
    requests: Vec<Signed<Request>>,
    signer: &KeyPair,
) -> Message {
    let payload = PrePrepare { view: View(view), seq: SeqNum(seq), digest };
    Message::PrePrepare(sign(payload, signer), WireBatch::requests(0, requests))
}

pub(crate) fn some_digest() -> Digest {
    Digest::of(b"some batch")
}

pub(crate) fn prepare_payload(replica: u32) -> Prepare {
    Prepare { view: View(0), seq: SeqNum(1), digest: some_digest(), replica: ReplicaId(replica) }
}

pub(crate) fn commit_payload(replica: u32) -> Commit {
    Commit { view: View(0), seq: SeqNum(1), digest: some_digest(), replica: ReplicaId(replica) }
}

pub(crate) fn reply_payload(replica: u32) -> Reply {
    Reply {
        view: View(0),
        timestamp: Timestamp(7),
        client: client_id(&client_key(1).public().into()),
        replica: ReplicaId(replica),
        read_only: false,
        result: b"ok".to_vec(),
    }
}

pub(crate) fn checkpoint_payload(replica: u32) -> Checkpoint {
    Checkpoint { seq: SeqNum(128), state_digest: Digest::of(b"state"), replica: ReplicaId(replica) }
}

pub(crate) fn status_payload(replica: u32) -> Status {
    let slot = SlotProgress { has_pre_prepare: true, prepared: true, committed: false };
    Status {
        replica: ReplicaId(replica),
        view: View(0),
        stable: SeqNum(0),
        last_executed: SeqNum(3),
        first_slot: SeqNum(4),
        slots: vec![slot; 3],
    }
}

pub(crate) fn state_request_payload(replica: u32) -> StateRequest {
    StateRequest { replica: ReplicaId(replica), seq: SeqNum(128), chunk: 3 }
}

pub(crate) fn state_reply_payload(replica: u32) -> StateReply {
    StateReply {
        replica: ReplicaId(replica),
        seq: SeqNum(128),
        total_bytes: 4_000,
        index: 1,
        data: vec![0x5a; 300],
        path: vec![some_digest(); 3],
    }
}

/// A prepared certificate for `(0, 1, d)`: the pre-prepare of replica 0 and prepares from
/// replicas 1 and 2 (M6).
pub(crate) fn prepared_certificate() -> PreparedCertificate {
    let d = some_digest();
    let prepare =
        |r: u32| sign(Prepare { view: View(0), seq: SeqNum(1), digest: d, replica: ReplicaId(r) }, &replica_key(r));
    PreparedCertificate {
        pre_prepare: sign(PrePrepare { view: View(0), seq: SeqNum(1), digest: d }, &replica_key(0)),
        prepares: vec![prepare(1), prepare(2)],
    }
}

pub(crate) fn view_change_payload(replica: u32, view: u64, prepared: Vec<PreparedCertificate>) -> ViewChange {
    ViewChange { view: View(view), stable: SeqNum(0), checkpoint_proof: vec![], prepared, replica: ReplicaId(replica) }
}

/// A valid NEW-VIEW for view 2 (primary: replica 2) built from three view-changes with no
/// prepared certificates: `O` is empty.
pub(crate) fn new_view() -> Message {
    let view_changes =
        [0, 1, 3].into_iter().map(|r| sign(view_change_payload(r, 2, vec![]), &replica_key(r))).collect();
    Message::NewView(sign(NewView { view: View(2), view_changes, pre_prepares: vec![] }, &replica_key(2)))
}

/// Every replica-signed message kind that names its sender, claiming `replica` and
/// signed by `key`.
pub(crate) fn replica_messages(replica: u32, key: &KeyPair) -> Vec<Message> {
    vec![
        Message::ViewChange(sign(view_change_payload(replica, 3, vec![prepared_certificate()]), key)),
        Message::BatchRequest(sign(BatchRequest { replica: ReplicaId(replica), digests: vec![some_digest()] }, key)),
        Message::BatchReply(
            sign(BatchReply { replica: ReplicaId(replica), digest: digest_of(&three_requests()) }, key),
            WireBatch::requests(0, three_requests()),
        ),
        Message::Prepare(sign(prepare_payload(replica), key)),
        Message::Commit(sign(commit_payload(replica), key)),
        Message::Reply(sign(reply_payload(replica), key)),
        Message::Checkpoint(sign(checkpoint_payload(replica), key)),
        Message::Status(sign(status_payload(replica), key)),
        Message::StateRequest(sign(state_request_payload(replica), key)),
        Message::StateReply(sign(state_reply_payload(replica), key)),
    ]
}

/// One valid message of every kind; the pre-prepare carries a 3-request batch.
pub(crate) fn all_kinds() -> Vec<Message> {
    let mut messages =
        vec![Message::Request(request(1, 1, b"put a 1")), pre_prepare(0, 1, three_requests(), &replica_key(0))];
    messages.extend(replica_messages(2, &replica_key(2)));
    messages.push(new_view());
    messages
}

/// [`all_kinds`], built once and encoded as frames, for the property tests.
pub(crate) fn sample_frames() -> &'static [(Message, Vec<u8>)] {
    static SAMPLES: OnceLock<Vec<(Message, Vec<u8>)>> = OnceLock::new();
    SAMPLES.get_or_init(|| {
        all_kinds()
            .into_iter()
            .map(|m| {
                let frame = wire::encode_frame(SCOPE, &m).expect("encodes");
                (m, frame)
            })
            .collect()
    })
}

/// Verifies `message`, which must be accepted.
pub(crate) fn accept(message: Message, config: &Membership) -> VerifiedMessage {
    let kind = message.kind();
    match verify_message(message, config) {
        Ok(verified) => verified,
        Err(refusal) => panic!("valid {kind:?} was refused: {refusal}"),
    }
}

/// Verifies `message`, which must be refused with `kind`; counts the refusal and checks
/// the counter moved by exactly one, under `kind`.
pub(crate) fn refuse(message: Message, config: &Membership, kind: RefusalKind) -> Refusal {
    let refusal = match verify_message(message, config) {
        Ok(verified) => panic!("bad message was accepted: {verified:?}"),
        Err(refusal) => refusal,
    };
    assert_counted(&refusal, kind);
    refusal
}

/// Turns a wire error into a refusal, counts it and checks it lands under `kind`.
pub(crate) fn refuse_wire(error: WireError, kind: RefusalKind) -> Refusal {
    let refusal = Refusal::from(error);
    assert_counted(&refusal, kind);
    refusal
}

pub(crate) fn assert_counted(refusal: &Refusal, kind: RefusalKind) {
    let mut counts = RefusalCounts::default();
    counts.record(refusal);
    assert_eq!(refusal.kind(), kind, "{refusal}");
    assert_eq!(counts.get(kind), 1, "{counts}");
    assert_eq!(counts.total(), 1, "{counts}");
}

pub(crate) fn is_malformed(error: &WireError) -> bool {
    matches!(error, WireError::Malformed(_))
}

/// Deterministic pseudo-random bytes (splitmix64), for garbage that does not depend on
/// the proptest seed.
pub(crate) fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) as u8
        })
        .collect()
}

pub(crate) fn frame_of(body: &[u8]) -> Vec<u8> {
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    frame
}
