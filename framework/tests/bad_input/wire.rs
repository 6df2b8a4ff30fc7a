//! Bad bytes fed to the wire decoder: malformed, truncated, oversized, half-written or
//! trailing-garbage bodies and frames, with the round trip of every message kind as the
//! positive control.

use crate::fixtures::{
    accept, all_kinds, cluster, decode, decode_frame, frame_of, garbage, is_malformed, limit, prepare_payload,
    refuse_wire, replica_key, sign, state_reply_payload, SCOPE,
};
use bulwark_framework::ids::{ReplicaId, SeqNum, View};
use bulwark_framework::messages::{Message, MessageKind, SlotProgress, StateReply, Status, VerifiedMessage};
use bulwark_framework::verify::{RefusalCounts, RefusalKind};
use bulwark_framework::wire::{self, WireError, FRAME_HEADER_BYTES, WIRE_VERSION};

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
