//! Signatures bind where they belong (docs/PBFT.md M1): every message replicas sign binds
//! its cluster and membership epoch,
//! what clients sign binds the cluster. A message signed for another cluster or epoch is
//! refused at the edge for that, under its own reason; the same message relabeled with
//! the receiver's scope is refused as forged; a certificate is checked against the members
//! of the epoch it is checked in.
//!
//! The clusters here share their members' keys on purpose: that is when a signature that
//! did not bind its cluster would be valid in both.

use bulwark_crypto::{Digest, KeyPair, Signed};
use bulwark_framework::ids::{ClusterId, Epoch, ReplicaId, SeqNum, Timestamp, View};
use bulwark_framework::membership::{Membership, Scope};
use bulwark_framework::messages::{
    Batch, Checkpoint, Commit, Inquiry, Message, MessageKind, NewView, PrePrepare, Prepare, PreparedCertificate, Reply,
    Request, Status, ViewChange,
};
use bulwark_framework::signing::Scoped;
use bulwark_framework::verify::{verify_envelope, Refusal, RefusalCounts, RefusalKind};
use bulwark_framework::wire::Envelope;
use bulwark_framework::ProtocolParams;

fn key(i: u32) -> KeyPair {
    KeyPair::from_seed([i as u8 + 1; 32])
}

fn client() -> KeyPair {
    KeyPair::from_seed([100; 32])
}

/// The members `ids`, each with its key, in `scope`.
fn membership(scope: Scope, ids: &[u32]) -> Membership {
    let members = ids.iter().map(|&id| (ReplicaId(id), key(id).public()));
    Membership::new(scope.cluster, scope.epoch, members, ProtocolParams::default()).unwrap()
}

fn scope(cluster: u32, epoch: u64) -> Scope {
    Scope { cluster: ClusterId(cluster), epoch: Epoch(epoch) }
}

fn sign<T: Scoped>(scope: Scope, payload: T, by: &KeyPair) -> Signed<T> {
    scope.sign(payload, by).into_signed()
}

fn request(scope: Scope, timestamp: u64) -> Signed<Request> {
    let payload = Request {
        client_key: client().public().into(),
        timestamp: Timestamp(timestamp),
        read_only: false,
        operation: b"put a 1".to_vec(),
    };
    sign(scope, payload, &client())
}

fn checkpoint(scope: Scope, from: u32, seq: u64) -> Signed<Checkpoint> {
    sign(
        scope,
        Checkpoint { seq: SeqNum(seq), state_digest: Digest::of(b"state"), replica: ReplicaId(from) },
        &key(from),
    )
}

/// A VIEW-CHANGE of `from` to view 1 whose checkpoint proof at 128 is signed by `proof_by`.
fn view_change_with_proof(scope: Scope, from: u32, proof_by: &[(Scope, u32)]) -> Signed<ViewChange> {
    let proof = proof_by.iter().map(|&(scope, by)| checkpoint(scope, by, 128)).collect();
    let payload = ViewChange {
        view: View(1),
        stable: SeqNum(128),
        checkpoint_proof: proof,
        prepared: Vec::new(),
        replica: ReplicaId(from),
    };
    sign(scope, payload, &key(from))
}

/// One message of every kind a replica signs, and a client's request and inquiry, all
/// signed in `scope` by members of `{0, 1, 2, 3}` (the primary of view 0 is replica 0).
fn every_kind(scope: Scope) -> Vec<Message> {
    let batch = Batch::new(vec![scope.trusted_by_link(request(scope, 1)).unwrap()]);
    let digest = batch.digest();
    let pre_prepare = sign(scope, PrePrepare { view: View(0), seq: SeqNum(1), digest }, &key(0));
    let prepare = |from: u32| {
        sign(scope, Prepare { view: View(0), seq: SeqNum(1), digest, replica: ReplicaId(from) }, &key(from))
    };
    let view_change = |from: u32| {
        let payload = ViewChange {
            view: View(1),
            stable: SeqNum(0),
            checkpoint_proof: Vec::new(),
            prepared: Vec::new(),
            replica: ReplicaId(from),
        };
        sign(scope, payload, &key(from))
    };
    let certificate = PreparedCertificate { pre_prepare: pre_prepare.clone(), prepares: vec![prepare(1), prepare(2)] };
    let with_certificate = ViewChange {
        view: View(1),
        stable: SeqNum(0),
        checkpoint_proof: Vec::new(),
        prepared: vec![certificate],
        replica: ReplicaId(3),
    };
    let new_view = NewView {
        view: View(1),
        view_changes: vec![view_change(1), view_change(2), view_change(3)],
        pre_prepares: Vec::new(),
    };
    let reply = Reply {
        view: View(0),
        timestamp: Timestamp(1),
        client: bulwark_framework::messages::client_id(&client().public().into()),
        replica: ReplicaId(2),
        read_only: true,
        result: b"ok".to_vec(),
    };
    let status = Status {
        replica: ReplicaId(3),
        view: View(0),
        stable: SeqNum(0),
        last_executed: SeqNum(0),
        first_slot: SeqNum(1),
        slots: Vec::new(),
    };
    vec![
        Message::Request(request(scope, 2)),
        Message::Inquiry(sign(scope, Inquiry { client_key: client().public().into(), nonce: 7 }, &client())),
        Message::PrePrepare(pre_prepare, batch.to_wire()),
        Message::Prepare(prepare(1)),
        Message::Commit(sign(scope, Commit { view: View(0), seq: SeqNum(1), digest, replica: ReplicaId(2) }, &key(2))),
        Message::Checkpoint(checkpoint(scope, 3, 128)),
        Message::Status(sign(scope, status, &key(3))),
        Message::Reply(sign(scope, reply, &key(2))),
        Message::ViewChange(sign(scope, with_certificate, &key(3))),
        Message::NewView(sign(scope, new_view, &key(1))),
    ]
}

fn refusal(result: Result<impl std::fmt::Debug, Refusal>) -> Refusal {
    result.expect_err("must be refused")
}

#[test]
fn a_message_signed_for_cluster_a_is_refused_by_cluster_b_as_wrong_cluster_and_a_relabeled_one_as_forged() {
    let (a, b) = (scope(1, 0), scope(2, 0));
    let (cluster_a, cluster_b) = (membership(a, &[0, 1, 2, 3]), membership(b, &[0, 1, 2, 3]));
    let mut counts = RefusalCounts::default();
    for message in every_kind(a) {
        let kind = message.kind();
        // Control: valid where it was signed.
        assert!(verify_envelope(Envelope { scope: a, message: message.clone() }, &cluster_a).is_ok(), "{kind:?}");
        // Sent to cluster B as what it is.
        let refused = refusal(verify_envelope(Envelope { scope: a, message: message.clone() }, &cluster_b));
        assert_eq!(refused.kind(), RefusalKind::WrongCluster, "{kind:?}: {refused}");
        counts.record(&refused);
        // Relabeled as cluster B's: the signatures bind cluster A, so it is a forgery there.
        let relabeled = refusal(verify_envelope(Envelope { scope: b, message }, &cluster_b));
        assert_eq!(relabeled.kind(), RefusalKind::BadSignature, "{kind:?}: {relabeled}");
    }
    assert_eq!(counts.get(RefusalKind::WrongCluster), every_kind(a).len() as u64);
    assert_eq!(counts.total(), counts.get(RefusalKind::WrongCluster), "{counts}");
}

#[test]
fn a_message_signed_in_epoch_0_is_refused_in_epoch_1_and_a_clients_request_is_not() {
    let (zero, one) = (scope(1, 0), scope(1, 1));
    let (epoch_0, epoch_1) = (membership(zero, &[0, 1, 2, 3]), membership(one, &[0, 1, 2, 3]));
    let mut counts = RefusalCounts::default();
    for message in every_kind(zero) {
        let kind = message.kind();
        // Control: valid in the epoch it was signed in.
        assert!(verify_envelope(Envelope { scope: zero, message: message.clone() }, &epoch_0).is_ok(), "{kind:?}");
        let as_sent = verify_envelope(Envelope { scope: zero, message: message.clone() }, &epoch_1);
        let relabeled = verify_envelope(Envelope { scope: one, message }, &epoch_1);
        if !kind.binds_epoch() {
            // What a client signs binds its cluster only: it stays valid across a change of
            // membership (a client retransmits it to the new members).
            assert!(matches!(kind, MessageKind::Request | MessageKind::Inquiry), "{kind:?}");
            assert!(as_sent.is_ok() && relabeled.is_ok(), "{kind:?}");
            continue;
        }
        let refused = refusal(as_sent);
        assert_eq!(refused.kind(), RefusalKind::WrongEpoch, "{kind:?}: {refused}");
        counts.record(&refused);
        assert_eq!(refusal(relabeled).kind(), RefusalKind::BadSignature, "{kind:?}");
    }
    assert_eq!(counts.get(RefusalKind::WrongEpoch), every_kind(zero).len() as u64 - 2);
    assert_eq!(counts.total(), counts.get(RefusalKind::WrongEpoch), "{counts}");
}

/// Epoch 1 of cluster 1 replaced replica 3 by replica 4. A certificate in an epoch-1
/// message must be signed by members of epoch 1, in epoch 1.
#[test]
fn a_certificate_whose_signers_are_not_all_members_of_its_epoch_is_refused() {
    let (zero, one) = (scope(1, 0), scope(1, 1));
    let epoch_1 = membership(one, &[0, 1, 2, 4]);
    let mut counts = RefusalCounts::default();
    let check = |view_change: Signed<ViewChange>| {
        verify_envelope(Envelope { scope: one, message: Message::ViewChange(view_change) }, &epoch_1)
    };

    // Control: a proof by members of epoch 1, signed in epoch 1.
    assert!(check(view_change_with_proof(one, 1, &[(one, 0), (one, 1), (one, 4)])).is_ok());

    // Replica 3, removed, signs a checkpoint in epoch 1's scope with its real key.
    let refused = refusal(check(view_change_with_proof(one, 1, &[(one, 0), (one, 1), (one, 3)])));
    assert_eq!(
        refused,
        Refusal::CertificateSignerNotMember { kind: MessageKind::Checkpoint, replica: ReplicaId(3), epoch: Epoch(1) }
    );
    counts.record(&refused);

    // Replica 3's checkpoint from epoch 0, when it was a member: signed in another epoch.
    let refused = refusal(check(view_change_with_proof(one, 1, &[(one, 0), (one, 1), (zero, 3)])));
    assert_eq!(refused.kind(), RefusalKind::CertificateSignerNotMember, "{refused}");
    // A member's checkpoint signed in epoch 0 does not count in epoch 1 either.
    let refused = refusal(check(view_change_with_proof(one, 1, &[(one, 0), (one, 1), (zero, 2)])));
    assert_eq!(refused.kind(), RefusalKind::BadSignature, "{refused}");
    counts.record(&refused);

    // A prepared certificate with a prepare of the removed replica, inside a NEW-VIEW.
    let digest = Digest::of(b"batch");
    let pre_prepare = sign(one, PrePrepare { view: View(0), seq: SeqNum(1), digest }, &key(0));
    let prepare =
        |from: u32| sign(one, Prepare { view: View(0), seq: SeqNum(1), digest, replica: ReplicaId(from) }, &key(from));
    let certificate = PreparedCertificate { pre_prepare, prepares: vec![prepare(1), prepare(3)] };
    let payload = ViewChange {
        view: View(1),
        stable: SeqNum(0),
        checkpoint_proof: Vec::new(),
        prepared: vec![certificate],
        replica: ReplicaId(2),
    };
    let refused = refusal(check(sign(one, payload, &key(2))));
    assert_eq!(
        refused,
        Refusal::CertificateSignerNotMember { kind: MessageKind::Prepare, replica: ReplicaId(3), epoch: Epoch(1) }
    );
    counts.record(&refused);

    assert_eq!(counts.get(RefusalKind::CertificateSignerNotMember), 2, "{counts}");
    assert_eq!(counts.get(RefusalKind::BadSignature), 1, "{counts}");
}

/// The three refusals are told apart by the counters: a runtime's metrics show each under
/// its own reason.
#[test]
fn each_scope_refusal_is_counted_under_its_own_reason() {
    let home = membership(scope(1, 0), &[0, 1, 2, 3]);
    let frames = [
        Envelope { scope: scope(2, 0), message: every_kind(scope(2, 0)).remove(3) },
        Envelope { scope: scope(1, 1), message: every_kind(scope(1, 1)).remove(3) },
        Envelope {
            scope: scope(1, 0),
            message: Message::ViewChange(view_change_with_proof(
                scope(1, 0),
                1,
                &[(scope(1, 0), 0), (scope(1, 0), 1), (scope(1, 0), 9)],
            )),
        },
    ];
    let mut counts = RefusalCounts::default();
    for envelope in frames {
        counts.record(&refusal(verify_envelope(envelope, &home)));
    }
    assert_eq!(counts.to_string(), "WrongCluster=1 WrongEpoch=1 CertificateSignerNotMember=1");
}
