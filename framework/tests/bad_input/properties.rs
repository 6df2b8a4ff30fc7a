//! Property tests: random and mutated bytes fed to the decoder and verifier never panic,
//! every error is a typed refusal, and no mutation verifies as another message. Their
//! regression seeds are in `tests/proptest-regressions/properties.txt`, where proptest looks
//! for those of a module beside a test's `main.rs`.

use crate::fixtures::{cluster, decode, decode_frame, frame_of, limit, sample_frames};
use bulwark_framework::verify::{verify_envelope, verify_message, Refusal, RefusalCounts, RefusalKind};
use bulwark_framework::wire::{self, WireError, FRAME_HEADER_BYTES};
use proptest::prelude::*;

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
