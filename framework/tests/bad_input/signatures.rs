//! Messages fed to edge verification with the wrong sender or signature: unknown
//! senders, outsiders, tampered payloads, pre-prepares not signed by the primary, and
//! signatures of one kind presented as another (M1 domain separation).

use crate::fixtures::{
    accept, checkpoint_payload, client_key, cluster, commit_payload, outsider_key, pre_prepare, prepare_payload,
    refuse, replica_key, replica_messages, reply_payload, request, sign, state_reply_payload, state_request_payload,
    three_requests, N, SCOPE,
};
use bulwark_crypto::{Digest, Signed};
use bulwark_framework::ids::{ReplicaId, SeqNum, View};
use bulwark_framework::messages::{Commit, Message, MessageKind, Prepare, StateReply};
use bulwark_framework::verify::{Refusal, RefusalKind};

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
