//! Bad input at the edge: every malformed, oversized, half-written, mis-signed or
//! ill-formed message is refused with a typed error and counted by
//! [`RefusalCounts`], never a panic. Rule IDs refer to `shared/PBFT.md` §1–§2.
//!
//! Every negative case has a positive control beside it (the same message made valid is
//! accepted), so a verifier that refused everything would fail these tests too.

use bulwark_crypto::{Digest, DigestBuilder, KeyPair, Signed};
use bulwark_framework::config::ProtocolParams;
use bulwark_framework::ids::{ClusterId, Epoch, ReplicaId, SeqNum, Timestamp, View};
use bulwark_framework::membership::{Membership, Scope};
use bulwark_framework::messages::{
    batch_digest, client_id, Batch, BatchReply, BatchRequest, Checkpoint, Commit, Message, MessageKind, NewView,
    PrePrepare, Prepare, PreparedCertificate, Reply, Request, SlotProgress, StateReply, StateRequest, Status,
    VerifiedMessage, ViewChange, WireCommand,
};
use bulwark_framework::signing::Scoped;
use bulwark_framework::verify::{verify_envelope, verify_message, Refusal, RefusalCounts, RefusalKind};
use bulwark_framework::wire::{self, WireError, FRAME_HEADER_BYTES, WIRE_VERSION};
use proptest::prelude::*;
use std::sync::OnceLock;

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

/// Replicas in the test cluster (`f = 1`).
const N: u32 = 4;

/// Key of replica `i`: seed `[i + 1; 32]`, as the brief and the config tests use.
fn replica_key(i: u32) -> KeyPair {
    KeyPair::from_seed([i as u8 + 1; 32])
}

/// Key of client `i`: seeds from 100 up, disjoint from the replicas'.
fn client_key(i: u8) -> KeyPair {
    KeyPair::from_seed([100 + i; 32])
}

/// A key no cluster member holds.
fn outsider_key() -> KeyPair {
    KeyPair::from_seed([222; 32])
}

/// The scope every message of these tests is signed in.
const SCOPE: Scope = Scope { cluster: ClusterId(1), epoch: Epoch(0) };

fn cluster() -> Membership {
    cluster_with(ProtocolParams::default())
}

fn cluster_with(params: ProtocolParams) -> Membership {
    let members = (0..N).map(|i| replica_key(i).public()).collect();
    Membership::numbered(SCOPE.cluster, members, params).expect("a valid 4-replica cluster")
}

/// Decodes a body and checks it names [`SCOPE`]; the message.
fn decode(bytes: &[u8], limit: usize) -> Result<Message, WireError> {
    wire::decode(bytes, limit).map(|envelope| {
        assert_eq!(envelope.scope, SCOPE);
        envelope.message
    })
}

/// Splits a frame off `buffer` and checks it names [`SCOPE`].
fn decode_frame(buffer: &[u8], limit: usize) -> Result<Option<(Message, usize)>, WireError> {
    Ok(wire::decode_frame(buffer, limit)?.map(|(envelope, consumed)| {
        assert_eq!(envelope.scope, SCOPE);
        (envelope.message, consumed)
    }))
}

/// The default frame limit.
fn limit() -> usize {
    ProtocolParams::default().frame_bytes_max
}

fn sign<T: Scoped>(payload: T, key: &KeyPair) -> Signed<T> {
    SCOPE.sign(payload, key).into_signed()
}

fn request_with(client: u8, timestamp: u64, read_only: bool, operation: Vec<u8>) -> Signed<Request> {
    let key = client_key(client);
    let payload = Request { client_key: key.public().into(), timestamp: Timestamp(timestamp), read_only, operation };
    sign(payload, &key)
}

fn request(client: u8, timestamp: u64, operation: &[u8]) -> Signed<Request> {
    request_with(client, timestamp, false, operation.to_vec())
}

/// Three requests from three clients: the batch of the positive controls.
fn three_requests() -> Vec<Signed<Request>> {
    vec![request(1, 1, b"put a 1"), request(2, 7, b"put b 2"), request(3, 3, b"get a")]
}

/// The M3 digest of `requests` computed from their payloads, independently of
/// verification (so a batch with a bad client signature still gets the digest its
/// pre-prepare would carry).
fn digest_of(requests: &[Signed<Request>]) -> Digest {
    let digests: Vec<Digest> = requests.iter().map(|r| SCOPE.digest(&r.payload)).collect();
    batch_digest(digests.iter())
}

/// A pre-prepare for `(view, seq)` carrying `requests` under their true digest.
fn pre_prepare(view: u64, seq: u64, requests: Vec<Signed<Request>>, signer: &KeyPair) -> Message {
    let digest = digest_of(&requests);
    pre_prepare_with_digest(view, seq, digest, requests, signer)
}

fn pre_prepare_with_digest(
    view: u64,
    seq: u64,
    digest: Digest,
    requests: Vec<Signed<Request>>,
    signer: &KeyPair,
) -> Message {
    let payload = PrePrepare { view: View(view), seq: SeqNum(seq), digest };
    Message::PrePrepare(sign(payload, signer), WireCommand::requests(requests))
}

fn some_digest() -> Digest {
    Digest::of(b"some batch")
}

fn prepare_payload(replica: u32) -> Prepare {
    Prepare { view: View(0), seq: SeqNum(1), digest: some_digest(), replica: ReplicaId(replica) }
}

fn commit_payload(replica: u32) -> Commit {
    Commit { view: View(0), seq: SeqNum(1), digest: some_digest(), replica: ReplicaId(replica) }
}

fn reply_payload(replica: u32) -> Reply {
    Reply {
        view: View(0),
        timestamp: Timestamp(7),
        client: client_id(&client_key(1).public().into()),
        replica: ReplicaId(replica),
        read_only: false,
        result: b"ok".to_vec(),
    }
}

fn checkpoint_payload(replica: u32) -> Checkpoint {
    Checkpoint { seq: SeqNum(128), state_digest: Digest::of(b"state"), replica: ReplicaId(replica) }
}

fn status_payload(replica: u32) -> Status {
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

fn state_request_payload(replica: u32) -> StateRequest {
    StateRequest { replica: ReplicaId(replica), seq: SeqNum(128), chunk: 3 }
}

fn state_reply_payload(replica: u32) -> StateReply {
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
fn prepared_certificate() -> PreparedCertificate {
    let d = some_digest();
    let prepare =
        |r: u32| sign(Prepare { view: View(0), seq: SeqNum(1), digest: d, replica: ReplicaId(r) }, &replica_key(r));
    PreparedCertificate {
        pre_prepare: sign(PrePrepare { view: View(0), seq: SeqNum(1), digest: d }, &replica_key(0)),
        prepares: vec![prepare(1), prepare(2)],
    }
}

fn view_change_payload(replica: u32, view: u64, prepared: Vec<PreparedCertificate>) -> ViewChange {
    ViewChange { view: View(view), stable: SeqNum(0), checkpoint_proof: vec![], prepared, replica: ReplicaId(replica) }
}

/// A valid NEW-VIEW for view 2 (primary: replica 2) built from three view-changes with no
/// prepared certificates: `O` is empty.
fn new_view() -> Message {
    let view_changes =
        [0, 1, 3].into_iter().map(|r| sign(view_change_payload(r, 2, vec![]), &replica_key(r))).collect();
    Message::NewView(sign(NewView { view: View(2), view_changes, pre_prepares: vec![] }, &replica_key(2)))
}

/// Every replica-signed message kind that names its sender, claiming `replica` and
/// signed by `key`.
fn replica_messages(replica: u32, key: &KeyPair) -> Vec<Message> {
    vec![
        Message::ViewChange(sign(view_change_payload(replica, 3, vec![prepared_certificate()]), key)),
        Message::BatchRequest(sign(BatchRequest { replica: ReplicaId(replica), digests: vec![some_digest()] }, key)),
        Message::BatchReply(
            sign(BatchReply { replica: ReplicaId(replica), digest: digest_of(&three_requests()) }, key),
            WireCommand::requests(three_requests()),
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
fn all_kinds() -> Vec<Message> {
    let mut messages =
        vec![Message::Request(request(1, 1, b"put a 1")), pre_prepare(0, 1, three_requests(), &replica_key(0))];
    messages.extend(replica_messages(2, &replica_key(2)));
    messages.push(new_view());
    messages
}

/// [`all_kinds`], built once and encoded as frames, for the property tests.
fn sample_frames() -> &'static [(Message, Vec<u8>)] {
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
fn accept(message: Message, config: &Membership) -> VerifiedMessage {
    let kind = message.kind();
    match verify_message(message, config) {
        Ok(verified) => verified,
        Err(refusal) => panic!("valid {kind:?} was refused: {refusal}"),
    }
}

/// Verifies `message`, which must be refused with `kind`; counts the refusal and checks
/// the counter moved by exactly one, under `kind`.
fn refuse(message: Message, config: &Membership, kind: RefusalKind) -> Refusal {
    let refusal = match verify_message(message, config) {
        Ok(verified) => panic!("bad message was accepted: {verified:?}"),
        Err(refusal) => refusal,
    };
    assert_counted(&refusal, kind);
    refusal
}

/// Turns a wire error into a refusal, counts it and checks it lands under `kind`.
fn refuse_wire(error: WireError, kind: RefusalKind) -> Refusal {
    let refusal = Refusal::from(error);
    assert_counted(&refusal, kind);
    refusal
}

fn assert_counted(refusal: &Refusal, kind: RefusalKind) {
    let mut counts = RefusalCounts::default();
    counts.record(refusal);
    assert_eq!(refusal.kind(), kind, "{refusal}");
    assert_eq!(counts.get(kind), 1, "{counts}");
    assert_eq!(counts.total(), 1, "{counts}");
}

fn is_malformed(error: &WireError) -> bool {
    matches!(error, WireError::Malformed(_))
}

/// Deterministic pseudo-random bytes (splitmix64), for garbage that does not depend on
/// the proptest seed.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
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

fn frame_of(body: &[u8]) -> Vec<u8> {
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    frame
}

// ---------------------------------------------------------------------------------------
// 1. Malformed bytes
// ---------------------------------------------------------------------------------------

/// Random garbage and hand-picked invalid MessagePack are refused as Malformed and counted.
#[test]
fn wire_random_garbage_is_refused_as_malformed_and_counted() {
    let mut inputs: Vec<Vec<u8>> = vec![
        vec![0xc1],                                                       // the one never-used MessagePack marker
        b"hello, replica".to_vec(),                                       // text
        vec![0x93],                                                       // an envelope array with nothing in it
        vec![0x93, 0x02],                                                 // version and nothing else
        vec![0x93, 0x02, 0x92, 0x01, 0x00],                               // version, scope, no message
        vec![0x93, 0x02, 0x92, 0x01, 0x00, 0xc0],                         // message is nil
        vec![0x93, 0x02, 0x92, 0x01, 0x00, 0x81, 0x19, 0xc0],             // message variant 25 does not exist
        vec![0x93, 0x02, 0x92, 0x01, 0x00, 0x81, 0x02, 0x92, 0xc0, 0xc0], // a Prepare of nils
        vec![0x92, 0x02, 0x01],                                           // envelope without a scope
        vec![0x91, 0x02],                                                 // envelope with one field
        vec![0x00; 64],
        vec![0xff; 64],
    ];
    for seed in 0..200 {
        inputs.push(garbage(seed, 1 + (seed as usize * 37) % 2000));
    }
    let mut counts = RefusalCounts::default();
    for input in &inputs {
        let error = decode(input, limit()).expect_err("garbage decoded as a message");
        // Garbage that happens to start like an envelope of another version is refused
        // for that, under the same counter.
        let unsupported = matches!(error, WireError::UnsupportedVersion { .. });
        assert!(is_malformed(&error) || unsupported, "{input:02x?}: {error}");
        let framed = decode_frame(&frame_of(input), limit()).expect_err("garbage frame decoded");
        assert_eq!(framed, error, "frame and body disagree");
        counts.record(&refuse_wire(error, RefusalKind::Malformed));
    }
    assert_eq!(counts.get(RefusalKind::Malformed), inputs.len() as u64);
    assert_eq!(counts.total(), inputs.len() as u64);
}

/// Zero bytes, as a body or as a frame whose header says 0, are refused as Empty.
#[test]
fn wire_empty_body_and_zero_length_frame_are_refused_as_empty() {
    assert_eq!(decode(&[], limit()), Err(WireError::Empty));
    assert_eq!(wire::frame_length([0; FRAME_HEADER_BYTES], limit()), Err(WireError::Empty));
    assert_eq!(decode_frame(&[0, 0, 0, 0, 0x92], limit()), Err(WireError::Empty));
    refuse_wire(WireError::Empty, RefusalKind::Malformed);
}

/// Every strict prefix of every valid envelope is refused (Malformed, or Empty for none).
#[test]
fn wire_truncated_valid_envelopes_are_refused_as_malformed() {
    for message in all_kinds() {
        let body = wire::encode(SCOPE, &message).expect("encodes");
        assert_eq!(decode(&body, limit()).as_ref(), Ok(&message), "control: full body decodes");
        for cut in 0..body.len() {
            let error = decode(&body[..cut], limit()).expect_err("truncated envelope decoded");
            if cut == 0 {
                assert_eq!(error, WireError::Empty);
            } else {
                assert!(is_malformed(&error), "{:?} cut at {cut}: {error}", message.kind());
            }
            refuse_wire(error, RefusalKind::Malformed);
            // Framed with its (short) length, the truncated body is a complete frame of garbage.
            if cut > 0 {
                let framed = decode_frame(&frame_of(&body[..cut]), limit());
                assert!(matches!(framed, Err(WireError::Malformed(_))), "{framed:?}");
            }
        }
    }
}

/// A well-formed envelope of another wire version is refused as UnsupportedVersion.
#[test]
fn wire_valid_envelope_with_a_wrong_version_is_refused_as_unsupported_version() {
    for message in all_kinds() {
        // Control: our hand-built envelope with the right version is the real format.
        let same = rmp_serde::to_vec(&(WIRE_VERSION, SCOPE, &message)).expect("encodes");
        assert_eq!(same, wire::encode(SCOPE, &message).expect("encodes"));
        assert_eq!(decode(&same, limit()).as_ref(), Ok(&message));

        for version in [0u16, WIRE_VERSION + 1, 0x7f, 0x80, u16::MAX] {
            let body = rmp_serde::to_vec(&(version, SCOPE, &message)).expect("encodes");
            let error = decode(&body, limit()).expect_err("wrong version accepted");
            assert_eq!(error, WireError::UnsupportedVersion { found: version });
            let framed = decode_frame(&frame_of(&body), limit());
            assert_eq!(framed, Err(WireError::UnsupportedVersion { found: version }));
            refuse_wire(error, RefusalKind::Malformed);
        }
    }
}

/// A version number that does not fit the envelope's u16 is Malformed, not a wrap-around.
#[test]
fn wire_version_wider_than_u16_is_refused_as_malformed() {
    let message = all_kinds().remove(0);
    let body = rmp_serde::to_vec(&(u32::from(WIRE_VERSION) + 65_536, SCOPE, &message)).expect("encodes");
    let error = decode(&body, limit()).expect_err("version 65537 accepted");
    assert!(is_malformed(&error), "{error}");
}

// ---------------------------------------------------------------------------------------
// 2. Oversized lengths
// ---------------------------------------------------------------------------------------

/// A frame header above frame_bytes_max is refused as Oversized from the header alone.
#[test]
fn wire_frame_length_above_frame_bytes_max_is_refused_as_oversized() {
    let limit = limit();
    let at = (limit as u32).to_be_bytes();
    assert_eq!(wire::frame_length(at, limit), Ok(limit), "control: exactly the limit is allowed");
    let over = (limit as u32 + 1).to_be_bytes();
    let error = wire::frame_length(over, limit).expect_err("oversized header accepted");
    assert_eq!(error, WireError::Oversized { length: limit + 1, limit });
    refuse_wire(error, RefusalKind::Oversized);
    let error = wire::frame_length([0xff; 4], limit).expect_err("4 GiB header accepted");
    assert_eq!(error, WireError::Oversized { length: u32::MAX as usize, limit });
    refuse_wire(error, RefusalKind::Oversized);
}

/// A buffer whose header claims 4 GiB is Oversized at once, without waiting for the body.
#[test]
fn wire_decode_frame_whose_header_claims_4_gib_is_oversized_not_an_allocation() {
    // Only the header and a byte of body: a reader that trusted the header would return
    // Ok(None) and wait for (or allocate) 4 GiB.
    for buffer in [vec![0xff, 0xff, 0xff, 0xff], vec![0xff, 0xff, 0xff, 0xff, 0x92]] {
        let error = decode_frame(&buffer, limit()).expect_err("4 GiB frame accepted");
        assert_eq!(error, WireError::Oversized { length: u32::MAX as usize, limit: limit() });
        refuse_wire(error, RefusalKind::Oversized);
    }
    // Just over the limit is refused the same way; the limit itself waits for the body.
    let just_over = ((limit() + 1) as u32).to_be_bytes();
    assert_eq!(decode_frame(&just_over, limit()), Err(WireError::Oversized { length: limit() + 1, limit: limit() }));
    let at_limit = (limit() as u32).to_be_bytes();
    assert_eq!(decode_frame(&at_limit, limit()), Ok(None));
}

/// An envelope longer than the limit is refused as Oversized, valid or not.
#[test]
fn wire_decode_of_a_body_longer_than_the_limit_is_oversized() {
    let limit = 1024;
    let error = decode(&vec![0u8; limit + 1], limit).expect_err("oversized body accepted");
    assert_eq!(error, WireError::Oversized { length: limit + 1, limit });
    refuse_wire(error, RefusalKind::Oversized);

    // A perfectly valid message is refused too when it exceeds the limit it is read under.
    let message =
        Message::StateReply(sign(StateReply { data: vec![7; 2000], ..state_reply_payload(1) }, &replica_key(1)));
    let body = wire::encode(SCOPE, &message).expect("encodes");
    assert_eq!(decode(&body, body.len()).as_ref(), Ok(&message), "control: at the limit");
    let error = decode(&body, body.len() - 1).expect_err("valid but oversized body accepted");
    assert_eq!(error, WireError::Oversized { length: body.len(), limit: body.len() - 1 });
    refuse_wire(error, RefusalKind::Oversized);
    let frame = wire::encode_frame(SCOPE, &message).expect("encodes");
    assert_eq!(
        decode_frame(&frame, body.len() - 1),
        Err(WireError::Oversized { length: body.len(), limit: body.len() - 1 })
    );
}

/// A length inside the envelope that lies (a 4 GiB byte string or array) is Malformed.
#[test]
fn wire_inner_length_claiming_4_gib_is_refused_as_malformed() {
    // A state chunk of 70 000 bytes is encoded as bin32: 0xc6 then a big-endian length.
    let image_len: u32 = 70_000;
    let reply = Message::StateReply(sign(
        StateReply { data: vec![0xab; image_len as usize], ..state_reply_payload(1) },
        &replica_key(1),
    ));
    // Status slots: 70 000 entries is an array32: 0xdd then a big-endian count.
    let slot = SlotProgress { has_pre_prepare: false, prepared: false, committed: false };
    let status = Message::Status(sign(
        Status {
            replica: ReplicaId(1),
            view: View(0),
            stable: SeqNum(0),
            last_executed: SeqNum(0),
            first_slot: SeqNum(1),
            slots: vec![slot; image_len as usize],
        },
        &replica_key(1),
    ));
    for (message, marker) in [(reply, 0xc6u8), (status, 0xddu8)] {
        let mut body = wire::encode(SCOPE, &message).expect("encodes");
        assert_eq!(decode(&body, limit()).as_ref(), Ok(&message), "control");
        let mut needle = vec![marker];
        needle.extend_from_slice(&image_len.to_be_bytes());
        let at = body.windows(5).position(|w| w == needle).expect("length header present");
        body[at + 1..at + 5].copy_from_slice(&u32::MAX.to_be_bytes());
        let error = decode(&body, limit()).expect_err("lying inner length accepted");
        assert!(is_malformed(&error), "{error}");
        refuse_wire(error, RefusalKind::Malformed);
    }
}

// ---------------------------------------------------------------------------------------
// 3. Half-written frames
// ---------------------------------------------------------------------------------------

/// Every strict prefix of a valid frame needs more bytes; the full frame decodes.
#[test]
fn wire_half_written_frame_needs_more_bytes_then_decodes() {
    for message in all_kinds() {
        let frame = wire::encode_frame(SCOPE, &message).expect("encodes");
        for cut in 0..frame.len() {
            assert_eq!(decode_frame(&frame[..cut], limit()), Ok(None), "{:?} cut at {cut}", message.kind());
        }
        let (decoded, consumed) = decode_frame(&frame, limit()).expect("valid frame").expect("complete frame");
        assert_eq!(decoded, message);
        assert_eq!(consumed, frame.len());
    }
}

/// Frames back to back decode one after another, and a trailing partial frame waits.
#[test]
fn wire_frames_back_to_back_decode_one_after_another() {
    let messages = all_kinds();
    let mut stream = Vec::new();
    for message in &messages {
        stream.extend(wire::encode_frame(SCOPE, message).expect("encodes"));
    }
    let partial = wire::encode_frame(SCOPE, &messages[1]).expect("encodes");
    stream.extend_from_slice(&partial[..partial.len() / 2]);

    let mut rest = &stream[..];
    let mut decoded = Vec::new();
    while let Some((message, consumed)) = decode_frame(rest, limit()).expect("valid stream") {
        assert!(consumed <= rest.len());
        decoded.push(message);
        rest = &rest[consumed..];
    }
    assert_eq!(decoded, messages);
    assert_eq!(rest, &partial[..partial.len() / 2], "the partial frame is left for later");
}

// ---------------------------------------------------------------------------------------
// 4. Unknown sender
// ---------------------------------------------------------------------------------------

/// A message naming a replica outside `0..n` is refused as UnknownSender (N1.a, M6: members only).
#[test]
fn n1a_message_claiming_a_replica_outside_the_cluster_is_refused_as_unknown_sender() {
    let config = cluster();
    for replica in [99, N, u32::MAX] {
        for message in replica_messages(replica, &outsider_key()) {
            let kind = message.kind();
            let refusal = refuse(message, &config, RefusalKind::UnknownSender);
            assert_eq!(refusal, Refusal::UnknownSender { kind, replica: ReplicaId(replica) });
        }
    }
    // Control: the same messages from a member, signed by that member, are accepted.
    for message in replica_messages(N - 1, &replica_key(N - 1)) {
        let verified = accept(message.clone(), &config);
        assert_eq!(verified.to_wire(), message);
    }
}

// ---------------------------------------------------------------------------------------
// 5. Wrong signatures
// ---------------------------------------------------------------------------------------

/// A message signed by a key outside the cluster but claiming a member id is BadSignature.
#[test]
fn n1a_message_signed_by_an_outsider_claiming_a_member_id_is_refused_as_bad_signature() {
    let config = cluster();
    for message in replica_messages(1, &outsider_key()) {
        let kind = message.kind();
        assert_eq!(refuse(message, &config, RefusalKind::BadSignature), Refusal::BadSignature { kind });
    }
    // Another member's key is no better than an outsider's.
    for message in replica_messages(1, &replica_key(2)) {
        let kind = message.kind();
        assert_eq!(refuse(message, &config, RefusalKind::BadSignature), Refusal::BadSignature { kind });
    }
    // Control: replica 1's own key.
    for message in replica_messages(1, &replica_key(1)) {
        accept(message, &config);
    }
}

/// A payload changed after signing, or a signature changed, is BadSignature (M1).
#[test]
fn m1_payload_or_signature_tampered_after_signing_is_refused_as_bad_signature() {
    let config = cluster();

    let mut commit = sign(commit_payload(1), &replica_key(1));
    accept(Message::Commit(commit.clone()), &config);
    commit.payload.seq = SeqNum(2);
    let refusal = refuse(Message::Commit(commit), &config, RefusalKind::BadSignature);
    assert_eq!(refusal, Refusal::BadSignature { kind: MessageKind::Commit });

    let mut checkpoint = sign(checkpoint_payload(3), &replica_key(3));
    checkpoint.payload.state_digest = Digest::of(b"another state");
    let refusal = refuse(Message::Checkpoint(checkpoint), &config, RefusalKind::BadSignature);
    assert_eq!(refusal, Refusal::BadSignature { kind: MessageKind::Checkpoint });

    let mut reply = sign(reply_payload(2), &replica_key(2));
    reply.payload.read_only = true;
    let refusal = refuse(Message::Reply(reply), &config, RefusalKind::BadSignature);
    assert_eq!(refusal, Refusal::BadSignature { kind: MessageKind::Reply });

    let mut client_request = request(1, 5, b"transfer 10");
    accept(Message::Request(client_request.clone()), &config);
    client_request.payload.operation = b"transfer 99".to_vec();
    let refusal = refuse(Message::Request(client_request), &config, RefusalKind::BadSignature);
    assert_eq!(refusal, Refusal::BadSignature { kind: MessageKind::Request });

    // A client key swapped for another client's: the request no longer verifies.
    let mut client_request = request(1, 5, b"transfer 10");
    client_request.payload.client_key = client_key(2).public().into();
    let refusal = refuse(Message::Request(client_request), &config, RefusalKind::BadSignature);
    assert_eq!(refusal, Refusal::BadSignature { kind: MessageKind::Request });

    // One bit of the signature flipped.
    let prepare = sign(prepare_payload(1), &replica_key(1));
    for byte in [0, 31, 32, 63] {
        let mut bytes = prepare.signature.to_bytes();
        bytes[byte] ^= 0x01;
        let forged = Signed { payload: prepare.payload, signature: bulwark_crypto::Signature::from_bytes(&bytes) };
        let refusal = refuse(Message::Prepare(forged), &config, RefusalKind::BadSignature);
        assert_eq!(refusal, Refusal::BadSignature { kind: MessageKind::Prepare });
    }
}

/// N1.a: a pre-prepare is checked against primary(v)'s key; a backup's signature is BadSignature.
#[test]
fn n1a_pre_prepare_signed_by_a_non_primary_member_is_refused_as_bad_signature() {
    let config = cluster();
    for view in 0..(2 * N as u64) {
        let primary = config.primary(View(view));
        assert_eq!(primary, ReplicaId((view % N as u64) as u32));
        for signer in 0..N {
            let message = pre_prepare(view, 1, three_requests(), &replica_key(signer));
            if ReplicaId(signer) == primary {
                accept(message, &config);
            } else {
                let refusal = refuse(message, &config, RefusalKind::BadSignature);
                assert_eq!(refusal, Refusal::BadSignature { kind: MessageKind::PrePrepare });
            }
        }
        let refusal =
            refuse(pre_prepare(view, 1, three_requests(), &outsider_key()), &config, RefusalKind::BadSignature);
        assert_eq!(refusal, Refusal::BadSignature { kind: MessageKind::PrePrepare });
    }
    // A valid pre-prepare moved to another view (another primary) no longer verifies.
    let Message::PrePrepare(mut signed, batch) = pre_prepare(0, 1, three_requests(), &replica_key(0)) else {
        unreachable!()
    };
    signed.payload.view = View(1);
    let refusal = refuse(Message::PrePrepare(signed, batch), &config, RefusalKind::BadSignature);
    assert_eq!(refusal, Refusal::BadSignature { kind: MessageKind::PrePrepare });
}

// ---------------------------------------------------------------------------------------
// 6. Batch checks (N1.e)
// ---------------------------------------------------------------------------------------

/// N1.e: `d = digest(B)`; a pre-prepare whose digest is not its batch's is BatchDigestMismatch.
#[test]
fn n1e_pre_prepare_whose_digest_does_not_match_its_batch_is_refused() {
    let config = cluster();
    let primary = replica_key(0);
    let batch = three_requests();
    let mut reordered = batch.clone();
    reordered.swap(0, 2);
    let cases = vec![
        ("arbitrary digest", some_digest(), batch.clone()),
        ("digest of the batch in another order", digest_of(&reordered), batch.clone()),
        ("digest of a sub-batch", digest_of(&batch[..2]), batch.clone()),
        ("null digest with requests", Batch::null().digest(), batch.clone()),
        ("digest of the batch, no requests carried", digest_of(&batch), Vec::new()),
        ("digest of the batch, one request dropped", digest_of(&batch), batch[1..].to_vec()),
    ];
    for (case, digest, requests) in cases {
        let message = pre_prepare_with_digest(0, 1, digest, requests, &primary);
        let refusal = refuse(message, &config, RefusalKind::BatchDigestMismatch);
        assert_eq!(refusal, Refusal::BatchDigestMismatch, "{case}");
    }
    // Control: the true digest of each of those batches is accepted.
    accept(pre_prepare(0, 1, batch, &primary), &config);
    accept(pre_prepare(0, 1, reordered, &primary), &config);
    accept(pre_prepare(0, 1, Vec::new(), &primary), &config);
}

/// N1.e: every request in the batch has a valid client signature; one bad one is BadSignature.
#[test]
fn n1e_batch_holding_a_request_with_a_bad_client_signature_is_refused() {
    let config = cluster();
    for bad in 0..3 {
        let mut requests = three_requests();
        requests[bad].payload.operation = b"tampered".to_vec();
        // The digest is the true digest of the batch as carried: only the signature is wrong.
        let message = pre_prepare(0, 1, requests, &replica_key(0));
        let refusal = refuse(message, &config, RefusalKind::BadSignature);
        assert_eq!(refusal, Refusal::BadSignature { kind: MessageKind::Request }, "bad request at {bad}");
    }
    // A single-request batch takes the one-by-one path rather than batch verification.
    let mut lone = request(1, 1, b"put a 1");
    lone.signature = request(1, 2, b"put a 1").signature;
    let refusal = refuse(pre_prepare(0, 1, vec![lone], &replica_key(0)), &config, RefusalKind::BadSignature);
    assert_eq!(refusal, Refusal::BadSignature { kind: MessageKind::Request });
    // Control.
    accept(pre_prepare(0, 1, three_requests(), &replica_key(0)), &config);
    accept(pre_prepare(0, 1, vec![request(1, 1, b"put a 1")], &replica_key(0)), &config);
}

/// N1.e / P3: a batch over batch_size_max requests or batch_bytes_max bytes is BatchTooLarge.
#[test]
fn n1e_batch_over_batch_size_max_is_refused_as_batch_too_large() {
    let config = cluster();
    let max = config.params.batch_size_max;
    let requests: Vec<_> = (0..=max).map(|t| request(1, t as u64 + 1, b"x")).collect();
    let at_max = requests[..max].to_vec();
    let message = pre_prepare(0, 1, requests, &replica_key(0));
    let refusal = refuse(message, &config, RefusalKind::BatchTooLarge);
    assert!(matches!(refusal, Refusal::BatchTooLarge { requests, .. } if requests == max + 1), "{refusal}");
    accept(pre_prepare(0, 1, at_max, &replica_key(0)), &config);

    // By bytes: requests of request_bytes_max each, one more than batch_bytes_max holds.
    let big = config.params.request_bytes_max;
    let fit = config.params.batch_bytes_max / (big + 128);
    let requests: Vec<_> = (0..=fit).map(|t| request(1, t as u64 + 1, &vec![b'z'; big])).collect();
    let under = requests[..fit].to_vec();
    let message = pre_prepare(0, 1, requests, &replica_key(0));
    let refusal = refuse(message, &config, RefusalKind::BatchTooLarge);
    assert!(matches!(refusal, Refusal::BatchTooLarge { requests, .. } if requests == fit + 1), "{refusal}");
    accept(pre_prepare(0, 1, under, &replica_key(0)), &config);

    // A smaller configured limit is honoured too.
    let small = cluster_with(ProtocolParams { batch_size_max: 2, ..ProtocolParams::default() });
    let refusal = refuse(pre_prepare(0, 1, three_requests(), &replica_key(0)), &small, RefusalKind::BatchTooLarge);
    assert!(matches!(refusal, Refusal::BatchTooLarge { requests: 3, .. }), "{refusal}");
    accept(pre_prepare(0, 1, three_requests()[..2].to_vec(), &replica_key(0)), &small);
}

/// N1.e / CX4: each `(c, t)` at most once in a batch; a repeat is DuplicateRequestInBatch.
#[test]
fn n1e_batch_holding_the_same_client_and_timestamp_twice_is_refused() {
    let config = cluster();
    let client = client_id(&client_key(2).public().into());
    let cases = vec![
        vec![request(2, 5, b"op"), request(2, 5, b"op")],
        vec![request(2, 5, b"op"), request(1, 5, b"op"), request(2, 5, b"another op")],
    ];
    for requests in cases {
        let refusal =
            refuse(pre_prepare(0, 1, requests, &replica_key(0)), &config, RefusalKind::DuplicateRequestInBatch);
        assert_eq!(refusal, Refusal::DuplicateRequestInBatch { client, timestamp: Timestamp(5) });
    }
    // Control (CX4): one client may appear several times with distinct timestamps, and
    // two clients may use the same timestamp.
    accept(
        pre_prepare(0, 1, vec![request(2, 5, b"op"), request(2, 6, b"op"), request(1, 5, b"op")], &replica_key(0)),
        &config,
    );
}

/// N1.e: read-only requests are never ordered; one inside a batch is ReadOnlyRequestInBatch.
#[test]
fn n1e_batch_holding_a_read_only_request_is_refused() {
    let config = cluster();
    let read_only = request_with(3, 9, true, b"get a".to_vec());
    accept(Message::Request(read_only.clone()), &config); // control: fine on its own
    let mut requests = three_requests();
    requests.insert(1, read_only);
    let refusal = refuse(pre_prepare(0, 1, requests, &replica_key(0)), &config, RefusalKind::ReadOnlyRequestInBatch);
    assert_eq!(refusal, Refusal::ReadOnlyRequestInBatch);
}

/// N1.e: a request's operation above request_bytes_max is RequestTooLarge, alone or in a batch.
#[test]
fn n1e_request_above_request_bytes_max_is_refused_as_request_too_large() {
    let config = cluster();
    let max = config.params.request_bytes_max;
    let too_large = request(1, 1, &vec![b'o'; max + 1]);
    let expected = Refusal::RequestTooLarge { bytes: max + 1, limit: max };

    let refusal = refuse(Message::Request(too_large.clone()), &config, RefusalKind::RequestTooLarge);
    assert_eq!(refusal, expected);
    let message = pre_prepare(0, 1, vec![request(2, 1, b"small"), too_large], &replica_key(0));
    let refusal = refuse(message, &config, RefusalKind::RequestTooLarge);
    assert_eq!(refusal, expected);

    // Control: exactly the limit is allowed.
    let at_max = request(1, 1, &vec![b'o'; max]);
    accept(Message::Request(at_max.clone()), &config);
    accept(pre_prepare(0, 1, vec![at_max], &replica_key(0)), &config);
}

// ---------------------------------------------------------------------------------------
// 7. M1 domain separation
// ---------------------------------------------------------------------------------------

/// M1: a Prepare's signature does not verify as a Commit with the same fields, nor back.
#[test]
fn m1_prepare_signature_does_not_verify_as_a_commit_with_the_same_fields() {
    let config = cluster();
    let prepare = sign(prepare_payload(1), &replica_key(1));
    accept(Message::Prepare(prepare.clone()), &config);
    let as_commit = Signed {
        payload: Commit {
            view: prepare.payload.view,
            seq: prepare.payload.seq,
            digest: prepare.payload.digest,
            replica: prepare.payload.replica,
        },
        signature: prepare.signature,
    };
    // The two payloads encode identically; only the domain tag differs.
    assert_eq!(rmp_serde::to_vec(&prepare.payload).unwrap(), rmp_serde::to_vec(&as_commit.payload).unwrap());
    assert!(SCOPE.verify(as_commit.clone(), &replica_key(1).public()).is_err());
    let refusal = refuse(Message::Commit(as_commit), &config, RefusalKind::BadSignature);
    assert_eq!(refusal, Refusal::BadSignature { kind: MessageKind::Commit });

    let commit = sign(commit_payload(2), &replica_key(2));
    accept(Message::Commit(commit.clone()), &config);
    let as_prepare = Signed {
        payload: Prepare {
            view: commit.payload.view,
            seq: commit.payload.seq,
            digest: commit.payload.digest,
            replica: commit.payload.replica,
        },
        signature: commit.signature,
    };
    let refusal = refuse(Message::Prepare(as_prepare), &config, RefusalKind::BadSignature);
    assert_eq!(refusal, Refusal::BadSignature { kind: MessageKind::Prepare });

    // A StateRequest's signature does not verify as a StateReply for the same replica and seq.
    let request = sign(state_request_payload(3), &replica_key(3));
    let as_reply = Signed {
        payload: StateReply { replica: request.payload.replica, seq: request.payload.seq, ..state_reply_payload(3) },
        signature: request.signature,
    };
    let refusal = refuse(Message::StateReply(as_reply), &config, RefusalKind::BadSignature);
    assert_eq!(refusal, Refusal::BadSignature { kind: MessageKind::StateReply });
}

// ---------------------------------------------------------------------------------------
// 8. M3 / M4 batch digests
// ---------------------------------------------------------------------------------------

/// M3: the batch digest binds neither view nor sequence number, and depends on request order.
#[test]
fn m3_batch_digest_is_independent_of_view_and_seq_and_depends_on_order() {
    let config = cluster();
    let requests = three_requests();
    let mut digests = Vec::new();
    // The same batch proposed in several (view, seq) by the right primary.
    for (view, seq) in [(0u64, 1u64), (1, 1), (5, 9), (1_000, 77_777)] {
        let primary = config.primary(View(view));
        let message = pre_prepare(view, seq, requests.clone(), &replica_key(primary.0));
        let VerifiedMessage::PrePrepare(header, batch) = accept(message, &config) else { panic!("not a pre-prepare") };
        assert_eq!(header.digest, batch.digest());
        digests.push(batch.digest());
    }
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    assert_eq!(digests[0], digest_of(&requests), "Batch::digest is the M3 digest of the request digests");

    // M3 formula: H(tag_batch ‖ k ‖ D(m_1) ‖ … ‖ D(m_k)).
    let mut builder = DigestBuilder::new(b"bulwark/batch/v1");
    builder.update_u64(requests.len() as u64);
    for request in &requests {
        builder.update(&SCOPE.digest(&request.payload).0);
    }
    assert_eq!(builder.finish(), digests[0]);

    // Order matters.
    let mut reordered = requests.clone();
    reordered.swap(0, 1);
    assert_ne!(digest_of(&reordered), digests[0]);
    let mut reversed = requests.clone();
    reversed.reverse();
    assert_ne!(digest_of(&reversed), digests[0]);
    assert_ne!(digest_of(&requests[..2]), digests[0], "a prefix has another digest (k is bound)");
}

/// M4: the null batch's digest is `Batch::null().digest() = H(tag_batch ‖ 0)`, stable, and verifies.
#[test]
fn m4_null_batch_digest_is_stable_and_is_what_an_empty_pre_prepare_carries() {
    let null = Batch::null().digest();
    assert_eq!(null, Batch::null().digest());
    assert_eq!(null, batch_digest(std::iter::empty()));
    assert_eq!(null, Batch::new(Vec::new()).digest());
    let mut builder = DigestBuilder::new(b"bulwark/batch/v1");
    builder.update_u64(0);
    assert_eq!(null, builder.finish());
    assert!(Batch::null().is_empty());
    assert_ne!(null, digest_of(&three_requests()[..1]));
    assert_ne!(null, Digest::default());

    let config = cluster();
    for view in [0u64, 3, 6] {
        let message = pre_prepare_with_digest(view, 2, null, Vec::new(), &replica_key(config.primary(View(view)).0));
        let VerifiedMessage::PrePrepare(_, batch) = accept(message, &config) else { panic!("not a pre-prepare") };
        assert_eq!(batch.digest(), null);
        assert!(batch.is_empty());
    }
}

// ---------------------------------------------------------------------------------------
// 9. Round trip
// ---------------------------------------------------------------------------------------

/// Every message kind survives encode → decode → verify_message unchanged.
#[test]
fn wire_every_message_kind_round_trips_through_encode_decode_and_verify() {
    let config = cluster();
    let messages = all_kinds();
    let kinds: Vec<MessageKind> = messages.iter().map(Message::kind).collect();
    assert_eq!(
        kinds,
        vec![
            MessageKind::Request,
            MessageKind::PrePrepare,
            MessageKind::ViewChange,
            MessageKind::BatchRequest,
            MessageKind::BatchReply,
            MessageKind::Prepare,
            MessageKind::Commit,
            MessageKind::Reply,
            MessageKind::Checkpoint,
            MessageKind::Status,
            MessageKind::StateRequest,
            MessageKind::StateReply,
            MessageKind::NewView,
        ]
    );
    for message in messages {
        let body = wire::encode(SCOPE, &message).expect("encodes");
        let decoded = decode(&body, limit()).expect("decodes");
        assert_eq!(decoded, message);

        let frame = wire::encode_frame(SCOPE, &message).expect("encodes");
        assert_eq!(&frame[..FRAME_HEADER_BYTES], &(body.len() as u32).to_be_bytes());
        assert_eq!(&frame[FRAME_HEADER_BYTES..], &body[..]);
        let (framed, consumed) = decode_frame(&frame, limit()).expect("decodes").expect("complete");
        assert_eq!(consumed, frame.len());
        assert_eq!(framed, message);

        let verified = accept(framed, &config);
        assert_eq!(verified.kind(), message.kind());
        assert_eq!(verified.to_wire(), message);
        if let VerifiedMessage::PrePrepare(_, batch) = &verified {
            assert_eq!(batch.len(), 3);
        }
        // Re-encoding the verified message gives the same bytes.
        assert_eq!(wire::encode(SCOPE, &verified.to_wire()).expect("encodes"), body);
    }
}

// ---------------------------------------------------------------------------------------
// Counting across a stream
// ---------------------------------------------------------------------------------------

/// A stream of mixed bad input is counted by kind, and the good message in it still passes.
#[test]
fn refusal_counts_tally_a_mixed_stream_by_kind() {
    let config = cluster();
    let good = Message::Prepare(sign(prepare_payload(1), &replica_key(1)));
    let frames: Vec<Vec<u8>> = vec![
        frame_of(&[0xc1]),                                            // Malformed
        frame_of(&rmp_serde::to_vec(&(9u16, SCOPE, &good)).unwrap()), // Malformed (version)
        vec![0xff, 0xff, 0xff, 0xff],                                 // Oversized
        vec![0, 0, 0, 0],                                             // Malformed (empty)
        wire::encode_frame(SCOPE, &Message::Prepare(sign(prepare_payload(99), &outsider_key()))).unwrap(), // UnknownSender
        wire::encode_frame(SCOPE, &Message::Prepare(sign(prepare_payload(1), &outsider_key()))).unwrap(), // BadSignature
        wire::encode_frame(SCOPE, &pre_prepare(0, 1, three_requests(), &replica_key(1))).unwrap(), // BadSignature
        wire::encode_frame(SCOPE, &pre_prepare_with_digest(0, 1, some_digest(), three_requests(), &replica_key(0)))
            .unwrap(), // BatchDigestMismatch
        wire::encode_frame(SCOPE, &good).unwrap(),                                                 // accepted
    ];
    let mut counts = RefusalCounts::default();
    let mut accepted = Vec::new();
    for frame in frames {
        let outcome = decode_frame(&frame, limit()).map_err(Refusal::from).and_then(|decoded| {
            let (message, _) = decoded.expect("every test frame is complete");
            verify_message(message, &config)
        });
        match outcome {
            Ok(verified) => accepted.push(verified.to_wire()),
            Err(refusal) => counts.record(&refusal),
        }
    }
    assert_eq!(accepted, vec![good]);
    assert_eq!(counts.get(RefusalKind::Malformed), 3);
    assert_eq!(counts.get(RefusalKind::Oversized), 1);
    assert_eq!(counts.get(RefusalKind::UnknownSender), 1);
    assert_eq!(counts.get(RefusalKind::BadSignature), 2);
    assert_eq!(counts.get(RefusalKind::BatchDigestMismatch), 1);
    assert_eq!(counts.get(RefusalKind::ReadOnlyRequestInBatch), 0);
    assert_eq!(counts.total(), 8);
    assert_eq!(counts.to_string(), "Malformed=3 Oversized=1 UnknownSender=1 BadSignature=2 BatchDigestMismatch=1");
    let kinds: Vec<RefusalKind> = counts.iter().map(|(kind, _)| kind).collect();
    assert_eq!(
        kinds,
        vec![
            RefusalKind::Malformed,
            RefusalKind::Oversized,
            RefusalKind::UnknownSender,
            RefusalKind::BadSignature,
            RefusalKind::BatchDigestMismatch,
        ]
    );
}

/// A frame body holding a valid envelope followed by extra bytes is not an envelope.
/// (Found by this suite: `rmp_serde::from_slice` ignored trailing bytes.)
#[test]
fn wire_frame_with_bytes_after_the_envelope_is_refused_as_malformed() {
    let message = Message::Prepare(sign(prepare_payload(1), &replica_key(1)));
    let mut body = wire::encode(SCOPE, &message).expect("encodes");
    body.extend_from_slice(b"trailing garbage");
    let decoded = decode(&body, limit());
    assert!(matches!(decoded, Err(WireError::Malformed(_))), "accepted with trailing bytes: {decoded:?}");
}

// ---------------------------------------------------------------------------------------
// 10. Property tests
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random bytes up to 4 KiB never panic the decoder; every error is a typed, counted refusal.
    #[test]
    fn prop_wire_random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let mut counts = RefusalCounts::default();
        match decode(&bytes, limit()) {
            Ok(message) => { let _ = verify_message(message, &cluster()); }
            Err(error) => counts.record(&Refusal::from(error)),
        }
        match decode(&bytes, 64) {
            Err(WireError::Oversized { length, limit }) => prop_assert!(length == bytes.len() && limit == 64 && bytes.len() > 64),
            other => prop_assert!(bytes.len() <= 64, "{} bytes over a limit of 64 gave {other:?}", bytes.len()),
        }
        match decode_frame(&bytes, limit()) {
            Ok(Some((_, consumed))) => prop_assert!(consumed <= bytes.len()),
            Ok(None) => {
                let incomplete = bytes.len() < FRAME_HEADER_BYTES
                    || bytes.len() < FRAME_HEADER_BYTES + u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
                prop_assert!(incomplete, "a complete frame was reported incomplete");
            }
            Err(error) => counts.record(&Refusal::from(error)),
        }
        prop_assert_eq!(counts.get(RefusalKind::Malformed) + counts.get(RefusalKind::Oversized), counts.total());
    }

    /// Random bytes behind a plausible header (length = what follows) never panic either.
    #[test]
    fn prop_wire_random_framed_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 1..4096)) {
        let frame = frame_of(&body);
        match decode_frame(&frame, limit()) {
            Ok(Some((message, consumed))) => {
                prop_assert_eq!(consumed, frame.len());
                let _ = verify_message(message, &cluster());
            }
            Ok(None) => prop_assert!(false, "a complete frame was reported incomplete"),
            Err(error) => prop_assert!(Refusal::from(error).kind() == RefusalKind::Malformed),
        }
    }

    /// One byte of a valid frame changed never panics, and verify never accepts a message
    /// that differs from the original.
    #[test]
    fn prop_wire_single_byte_mutation_never_panics_nor_verifies_as_another_message(
        which in any::<prop::sample::Index>(),
        position in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let (original, frame) = &sample_frames()[which.index(sample_frames().len())];
        let mut mutated = frame.clone();
        let at = position.index(mutated.len());
        mutated[at] ^= flip;
        let mut counts = RefusalCounts::default();
        match wire::decode_frame(&mutated, limit()) {
            Ok(None) => prop_assert!(at < FRAME_HEADER_BYTES, "only a header change can make a frame incomplete"),
            Ok(Some((envelope, _))) => match verify_envelope(envelope, &cluster()) {
                Ok(verified) => prop_assert_eq!(&verified.to_wire(), original, "mutation at {} verified as another message", at),
                Err(refusal) => counts.record(&refusal),
            },
            Err(error) => counts.record(&Refusal::from(error)),
        }
        prop_assert!(counts.total() <= 1);
    }

    /// Several bytes changed at once: still never a panic, never another message accepted.
    #[test]
    fn prop_wire_multi_byte_mutation_never_verifies_as_another_message(
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8),
    ) {
        let (original, frame) = &sample_frames()[which.index(sample_frames().len())];
        let mut mutated = frame.clone();
        for (position, flip) in &edits {
            let at = FRAME_HEADER_BYTES + position.index(mutated.len() - FRAME_HEADER_BYTES);
            mutated[at] ^= flip;
        }
        if let Ok(Some((envelope, _))) = wire::decode_frame(&mutated, limit()) {
            if let Ok(verified) = verify_envelope(envelope, &cluster()) {
                prop_assert_eq!(&verified.to_wire(), original);
            }
        }
    }
}
