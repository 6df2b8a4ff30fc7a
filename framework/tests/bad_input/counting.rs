//! A mixed stream of bad frames fed through decoding and verification: each refusal is
//! counted under its kind, and the good message in the stream still passes.

use crate::fixtures::{
    cluster, decode_frame, frame_of, limit, outsider_key, pre_prepare, pre_prepare_with_digest, prepare_payload,
    replica_key, sign, some_digest, three_requests, SCOPE,
};
use bulwark_framework::messages::Message;
use bulwark_framework::verify::{verify_message, Refusal, RefusalCounts, RefusalKind};
use bulwark_framework::wire;

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
