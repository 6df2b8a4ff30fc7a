//! Pre-prepares fed to edge verification with a bad batch (N1.e: digest, client
//! signatures, size, duplicates, read-only requests), and the batch digest rules they
//! rest on (M3, M4).

use crate::fixtures::{
    accept, client_key, cluster, cluster_with, digest_of, pre_prepare, pre_prepare_with_digest, refuse, replica_key,
    request, request_with, some_digest, three_requests, SCOPE,
};
use bulwark_crypto::{Digest, DigestBuilder};
use bulwark_framework::config::ProtocolParams;
use bulwark_framework::ids::{Timestamp, View};
use bulwark_framework::messages::{batch_digest, client_id, Batch, Message, MessageKind, VerifiedMessage};
use bulwark_framework::verify::{Refusal, RefusalKind};

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

    // M3 formula: H(tag_batch ‖ t ‖ k ‖ D(m_1) ‖ … ‖ D(m_k)), t the proposed time (0 here).
    let mut builder = DigestBuilder::new(b"bulwark/batch/v2");
    builder.update_u64(0);
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
    // N1.f: the proposed time is bound too.
    let later = batch_digest(1, requests.iter().map(|r| SCOPE.digest(&r.payload)).collect::<Vec<_>>().iter());
    assert_ne!(later, digests[0], "the time is bound");
}

/// M4: the null batch's digest is `Batch::null().digest() = H(tag_batch ‖ 0 ‖ 0)` (time 0, no
/// commands), stable, and verifies.
#[test]
fn m4_null_batch_digest_is_stable_and_is_what_an_empty_pre_prepare_carries() {
    let null = Batch::null().digest();
    assert_eq!(null, Batch::null().digest());
    assert_eq!(null, batch_digest(0, std::iter::empty()));
    assert_eq!(null, Batch::new(Vec::new()).digest());
    let mut builder = DigestBuilder::new(b"bulwark/batch/v2");
    builder.update_u64(0);
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
