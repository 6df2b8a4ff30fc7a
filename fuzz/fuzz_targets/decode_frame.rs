//! The wire decoder: bytes as they come off a connection.
//!
//! The first byte picks the mode. Even: the rest is a byte stream, split into frames with
//! `decode_frame` as the simulator does and, header then body, with `frame_length` and
//! `decode` as the TCP transport does. Odd: the rest describes a well-formed message
//! (a [`Step`] of the replica targets, signed), which is framed, damaged by a few byte
//! edits and decoded; this reaches the decoding of every message kind quickly.
//!
//! Whatever decodes must re-encode to bytes that decode to the same message.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use bulwark_framework::wire::{self, Envelope, FRAME_HEADER_BYTES};
use bulwark_fuzz::{config, mutate, Builder, Pool, Step, SCOPE};
use libfuzzer_sys::fuzz_target;

/// Limits a frame is decoded under: the configured one and a small one.
const LIMITS: [usize; 2] = [4 << 20, 300];

fn round_trip(envelope: &Envelope) {
    let frame = wire::encode_frame(envelope.scope, &envelope.message).expect("a decoded message encodes");
    let (again, used) = match wire::decode_frame(&frame, usize::MAX) {
        Ok(Some(decoded)) => decoded,
        other => panic!("a re-encoded {:?} does not decode: {other:?}", envelope.message.kind()),
    };
    assert_eq!(used, frame.len());
    assert_eq!(&again, envelope, "decode(encode(m)) != m");
}

/// Splits `stream` into frames like the simulator's receiver.
fn stream(bytes: &[u8], limit: usize) {
    let mut rest = bytes;
    while let Ok(Some((message, used))) = wire::decode_frame(rest, limit) {
        assert!(used > FRAME_HEADER_BYTES && used <= rest.len() && used - FRAME_HEADER_BYTES <= limit);
        round_trip(&message);
        rest = &rest[used..];
    }
}

/// Reads header then body like the TCP transport.
fn transport(bytes: &[u8], limit: usize) {
    let mut rest = bytes;
    while rest.len() >= FRAME_HEADER_BYTES {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        header.copy_from_slice(&rest[..FRAME_HEADER_BYTES]);
        let Ok(length) = wire::frame_length(header, limit) else { return };
        assert!(length > 0 && length <= limit);
        let body = &rest[FRAME_HEADER_BYTES..];
        if body.len() < length {
            // A truncated frame; the body alone still goes through the decoder.
            let _ = wire::decode(body, limit);
            return;
        }
        match wire::decode(&body[..length], limit) {
            Ok(message) => round_trip(&message),
            Err(_) => return,
        }
        rest = &body[length..];
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode % 2 == 0 {
        let limit = LIMITS[usize::from(mode / 2) % LIMITS.len()];
        stream(rest, limit);
        transport(rest, limit);
        // The bytes as one envelope, without a length prefix.
        if let Ok(message) = wire::decode(rest, limit) {
            round_trip(&message);
        }
        return;
    }
    let mut u = Unstructured::new(rest);
    let Ok(step) = Step::arbitrary(&mut u) else { return };
    let Ok(edits) = Vec::<(u16, u8)>::arbitrary(&mut u) else { return };
    let config = config();
    let mut pool = Pool::default();
    let messages = Builder { config: &config, pool: &mut pool, me: None }.messages(&step);
    for message in messages {
        let mut frame = wire::encode_frame(SCOPE, &message).expect("a built message encodes");
        // The undamaged frame decodes to the message.
        match wire::decode_frame(&frame, config.params.frame_bytes_max) {
            Ok(Some((decoded, used))) => {
                assert_eq!(decoded, Envelope { scope: SCOPE, message: message.clone() });
                assert_eq!(used, frame.len());
            }
            other => panic!("a well-formed {:?} does not decode: {other:?}", message.kind()),
        }
        mutate(&mut frame, &edits);
        stream(&frame, config.params.frame_bytes_max);
        transport(&frame, config.params.frame_bytes_max);
    }
});
