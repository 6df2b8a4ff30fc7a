//! How requests and replies between clients and replicas are authenticated: replies
//! vouched for by one signed Merkle root per batch (`client_auth = "signed"`, the default),
//! and the trusted-connection mode (`client_auth = "connection"`).

use bulwark_crypto::{Digest, KeyPair, Verified};
use bulwark_framework::config::ClientAuth;
use bulwark_framework::messages::{
    reply_messages, Batch, Message, PrePrepare, Reply, ReplyBundle, ReplyProof, Request, VerifiedMessage, VerifiedReply,
};
use bulwark_framework::roles::client::{Client, ClientAction, ClientInput};
use bulwark_framework::roles::executor::{Executor, ExecutorInput, ExecutorOutput};
use bulwark_framework::roles::Role;
use bulwark_framework::verify::{
    verify_message, verify_reply, verify_reply_bundle, Refusal, RefusalKind, ReplyRootCache,
};
use bulwark_framework::{
    ClusterId, Epoch, Instant, Membership, MembershipHandle, ProtocolParams, ReplicaId, Scope, SeqNum, Timestamp, View,
};
use bulwark_services::kv::{KvOp, KvStore};
use std::sync::Arc;

fn replica_key(i: u32) -> KeyPair {
    KeyPair::from_seed([i as u8 + 1; 32])
}

fn client_key(i: u8) -> KeyPair {
    KeyPair::from_seed([100 + i; 32])
}

const SCOPE: Scope = Scope { cluster: ClusterId(1), epoch: Epoch(0) };

fn config(client_auth: ClientAuth) -> Arc<Membership> {
    let params = ProtocolParams { client_auth, ..ProtocolParams::default() };
    Arc::new(Membership::numbered(SCOPE.cluster, (0..4).map(|i| replica_key(i).public()).collect(), params).unwrap())
}

fn handle(config: &Arc<Membership>) -> MembershipHandle {
    MembershipHandle::new((**config).clone())
}

fn put(key: &str, value: &str) -> Vec<u8> {
    rmp_serde::to_vec(&KvOp::Put { key: key.into(), value: value.as_bytes().to_vec() }).unwrap()
}

fn request(client: u8, timestamp: u64, signed: bool) -> Verified<Request> {
    let key = client_key(client);
    let payload = Request {
        client_key: key.public().into(),
        timestamp: Timestamp(timestamp),
        read_only: false,
        operation: put("k", "v"),
    };
    if signed {
        SCOPE.sign(payload, &key)
    } else {
        SCOPE.unsigned(payload)
    }
}

fn pre_prepare(requests: &[Verified<Request>]) -> Message {
    let batch = Batch::new(requests.to_vec());
    let header = PrePrepare { view: View(0), seq: SeqNum(1), digest: batch.digest() };
    Message::PrePrepare(SCOPE.sign(header, &replica_key(0)).into_signed(), batch.to_wire())
}

fn refusal_kind(result: Result<impl std::fmt::Debug, Refusal>) -> RefusalKind {
    result.expect_err("must be refused").kind()
}

#[test]
fn a_signed_cluster_refuses_an_unsigned_request_in_a_pre_prepare() {
    let signed = config(ClientAuth::Signed);
    let requests = vec![request(1, 1, true), request(2, 1, false), request(3, 1, true)];
    let refused = verify_message(pre_prepare(&requests), &signed);
    assert_eq!(refusal_kind(refused), RefusalKind::BadSignature);
    // Control: the same batch with every request signed is accepted.
    let all_signed = vec![request(1, 1, true), request(2, 1, true), request(3, 1, true)];
    assert!(verify_message(pre_prepare(&all_signed), &signed).is_ok());
    // An unsigned request sent alone is refused too.
    let alone = Message::Request(request(2, 1, false).into_signed());
    assert_eq!(refusal_kind(verify_message(alone, &signed)), RefusalKind::BadSignature);
}

#[test]
fn a_connection_cluster_accepts_unsigned_requests_with_the_same_digests() {
    let connection = config(ClientAuth::Connection);
    let requests = vec![request(1, 1, false), request(2, 1, false)];
    let Ok(VerifiedMessage::PrePrepare(_, batch)) = verify_message(pre_prepare(&requests), &connection) else {
        panic!("an unsigned batch is accepted in connection mode");
    };
    // The batch digest does not depend on how its requests were authenticated.
    let signed_batch = Batch::new(vec![request(1, 1, true), request(2, 1, true)]);
    assert_eq!(batch.digest(), signed_batch.digest());
    assert_eq!(batch.requests().next().map(|r| r.client()), Some(requests[0].client()));
}

/// Replica `me` executes one batch of `requests` (client 1, timestamps 1..=count).
fn executed_replies(config: &Arc<Membership>, me: u32, count: u64) -> Vec<VerifiedReply> {
    let mut executor = executor(config, me);
    let requests: Vec<_> =
        (1..=count).map(|t| request(1, t, config.params.client_auth == ClientAuth::Signed)).collect();
    execute(&mut executor, SeqNum(1), Batch::new(requests))
}

fn executor(config: &Arc<Membership>, me: u32) -> Executor<KvStore> {
    Executor::new(ReplicaId(me), handle(config), KvStore::default(), Arc::new(replica_key(me)))
}

/// The replies of executing `batch` at `seq` (in view 0).
fn execute(executor: &mut Executor<KvStore>, seq: SeqNum, batch: Batch) -> Vec<VerifiedReply> {
    let input = ExecutorInput::Execute { seq, view: View(0), batch: Arc::new(batch) };
    replies(executor.handle(input, Instant(0)))
}

fn replies(outputs: Vec<ExecutorOutput>) -> Vec<VerifiedReply> {
    outputs
        .into_iter()
        .filter_map(|output| match output {
            ExecutorOutput::Reply { reply, .. } => Some(reply),
            _ => None,
        })
        .collect()
}

fn one_bundle(replies: &[VerifiedReply]) -> ReplyBundle {
    let mut messages = reply_messages(replies);
    assert_eq!(messages.len(), 1, "one client's replies from one batch travel in one frame");
    let Some(Message::Replies(bundle)) = messages.pop() else { panic!("a bundle") };
    bundle
}

#[test]
fn replies_of_a_batch_share_one_signed_root_and_verify_by_their_paths() {
    let config = config(ClientAuth::Signed);
    let replies = executed_replies(&config, 2, 7);
    assert_eq!(replies.len(), 7);
    let roots: Vec<_> = replies
        .iter()
        .map(|reply| match reply.proof() {
            ReplyProof::Batch { root, .. } => root.clone(),
            other => panic!("an ordered reply is under the batch root, not {other:?}"),
        })
        .collect();
    assert!(roots.iter().all(|root| Arc::ptr_eq(root, &roots[0])), "one signature for the whole batch");
    let bundle = one_bundle(&replies);
    assert!(bundle.root.is_some());
    let mut cache = ReplyRootCache::default();
    let verified = verify_reply_bundle(bundle.clone(), None, &config, &mut cache).unwrap();
    assert_eq!(verified.len(), 7);
    for (original, checked) in replies.iter().zip(&verified) {
        assert_eq!(checked.payload(), original.payload());
        assert_eq!(checked.attributed_to(), ReplicaId(2));
        assert_eq!(checked.digest(), original.digest());
    }
    assert_eq!(cache.len(), 1, "the root is remembered once checked");
    // Again, now from the cache: same verdict.
    assert_eq!(verify_reply_bundle(bundle, None, &config, &mut cache).unwrap().len(), 7);
    // One reply alone in a bundle also passes the stateless edge check (the simulator's path).
    let single = replies[3].to_wire();
    let Ok(VerifiedMessage::Reply(alone)) = verify_message(single, &config) else { panic!("accepted") };
    assert_eq!(alone.timestamp, replies[3].timestamp);
}

#[test]
fn a_forged_path_root_reply_or_signer_is_refused() {
    let config = config(ClientAuth::Signed);
    let replies = executed_replies(&config, 1, 5);
    let bundle = one_bundle(&replies);
    let check = |bundle: ReplyBundle| verify_reply_bundle(bundle, None, &config, &mut ReplyRootCache::default());
    assert!(check(bundle.clone()).is_ok(), "control");

    let mut forged_path = bundle.clone();
    forged_path.replies[2].path[0] = Digest::of(b"forged");
    assert_eq!(refusal_kind(check(forged_path)), RefusalKind::BadCertificate);

    let mut forged_result = bundle.clone();
    forged_result.replies[1].reply.result = b"forged".to_vec();
    assert_eq!(refusal_kind(check(forged_result)), RefusalKind::BadCertificate);

    let mut moved = bundle.clone();
    moved.replies[0].index = 1;
    assert_eq!(refusal_kind(check(moved)), RefusalKind::BadCertificate);

    // A root over forged replies, with paths that lead to it, but not signed by the replica.
    let mut forged_root = bundle.clone();
    let root = forged_root.root.as_mut().unwrap();
    let mut leaves: Vec<Digest> = forged_root.replies.iter().map(|r| SCOPE.digest(&r.reply)).collect();
    forged_root.replies[0].reply.result = b"forged".to_vec();
    leaves[0] = SCOPE.digest(&forged_root.replies[0].reply);
    let tree = bulwark_crypto::merkle::MerkleTree::new(leaves);
    root.payload.root = tree.root();
    for (index, bundled) in forged_root.replies.iter_mut().enumerate() {
        bundled.path = tree.path(index).unwrap();
    }
    assert_eq!(refusal_kind(check(forged_root.clone())), RefusalKind::BadSignature);
    // The same forged root signed by another replica's key does not count for replica 1.
    let resigned = SCOPE.sign(forged_root.root.as_ref().unwrap().payload, &replica_key(3)).into_signed();
    forged_root.root = Some(resigned);
    assert_eq!(refusal_kind(check(forged_root)), RefusalKind::BadSignature);

    // A reply that names another replica than its root's signer.
    let mut other_replica = bundle.clone();
    other_replica.replies[0].reply.replica = ReplicaId(3);
    assert_eq!(refusal_kind(check(other_replica)), RefusalKind::BadCertificate);

    // No root at all in a signed cluster.
    let mut rootless = bundle;
    rootless.root = None;
    assert_eq!(refusal_kind(check(rootless)), RefusalKind::BadCertificate);
}

#[test]
fn a_cached_root_counts_only_with_its_own_signature() {
    let config = config(ClientAuth::Signed);
    let bundle = one_bundle(&executed_replies(&config, 1, 3));
    let mut cache = ReplyRootCache::default();
    verify_reply_bundle(bundle.clone(), None, &config, &mut cache).unwrap();
    let mut bad_signature = bundle;
    let root = bad_signature.root.as_mut().unwrap();
    root.signature = bulwark_crypto::Signature::from_bytes(&[7; 64]);
    let refused = verify_reply_bundle(bad_signature, None, &config, &mut cache);
    assert_eq!(refusal_kind(refused), RefusalKind::BadSignature);
}

#[test]
fn the_reply_root_cache_is_bounded() {
    let config = config(ClientAuth::Signed);
    let mut executor = executor(&config, 0);
    let mut cache = ReplyRootCache::default();
    let batches = ReplyRootCache::CAPACITY as u64 + 100;
    for seq in 1..=batches {
        let replies = execute(&mut executor, SeqNum(seq), Batch::new(vec![request(1, seq, true)]));
        verify_reply_bundle(one_bundle(&replies), None, &config, &mut cache).unwrap();
        assert!(cache.len() <= ReplyRootCache::CAPACITY);
    }
    assert_eq!(cache.len(), ReplyRootCache::CAPACITY);
}

#[test]
fn read_only_and_resent_replies_are_signed_alone() {
    let config = config(ClientAuth::Signed);
    let mut executor = executor(&config, 2);
    execute(&mut executor, SeqNum(1), Batch::new(vec![request(1, 1, true)]));
    let read_only = {
        let mut payload = request(1, 2, true).payload().clone();
        payload.read_only = true;
        config.scope().sign(payload, &client_key(1))
    };
    for request in [request(1, 1, true), read_only] {
        let read_only = request.read_only;
        let answered = replies(executor.handle(ExecutorInput::Request { request, view: View(0) }, Instant(0)));
        let [reply] = answered.as_slice() else { panic!("one reply: {answered:?}") };
        let Message::Reply(signed) = reply.to_wire() else { panic!("signed alone") };
        let verified = verify_reply(signed, None, &config).unwrap();
        assert_eq!((verified.attributed_to(), verified.read_only), (ReplicaId(2), read_only));
    }
}

fn connection_reply(claimed: u32) -> ReplyBundle {
    let config = config(ClientAuth::Connection);
    let mut bundle = one_bundle(&executed_replies(&config, 1, 2));
    for bundled in &mut bundle.replies {
        bundled.reply.replica = ReplicaId(claimed);
    }
    bundle
}

#[test]
fn in_connection_mode_replies_are_unsigned_and_count_for_the_connection_they_came_on() {
    let config = config(ClientAuth::Connection);
    let bundle = one_bundle(&executed_replies(&config, 1, 2));
    assert!(bundle.root.is_none(), "no signature in connection mode");
    assert!(bundle.replies.iter().all(|r| r.path.is_empty()));
    let mut cache = ReplyRootCache::default();
    let verified = verify_reply_bundle(bundle, Some(ReplicaId(1)), &config, &mut cache).unwrap();
    assert!(verified.iter().all(|r| r.attributed_to() == ReplicaId(1)));
    // A reply claiming replica 2 that came on replica 1's connection does not count for 2.
    let refused = verify_reply_bundle(connection_reply(2), Some(ReplicaId(1)), &config, &mut cache);
    assert_eq!(refusal_kind(refused), RefusalKind::BadCertificate);
    // Without a replica connection (an accepted connection, or no connection known) an
    // unsigned reply counts for nobody.
    let refused = verify_reply_bundle(connection_reply(1), None, &config, &mut cache);
    assert_eq!(refusal_kind(refused), RefusalKind::BadCertificate);
    assert!(verify_message(Message::Replies(connection_reply(1)), &config).is_err());
    // A link to a replica outside the cluster is no attribution either.
    let refused = verify_reply_bundle(connection_reply(9), Some(ReplicaId(9)), &config, &mut cache);
    assert_eq!(refusal_kind(refused), RefusalKind::UnknownSender);
}

#[test]
fn a_connection_mode_client_needs_f_plus_one_distinct_connections() {
    let config = config(ClientAuth::Connection);
    let key = client_key(1);
    let mut client = Client::new(key, handle(&config), Timestamp(1));
    let actions = client.handle(ClientInput::Invoke { operation: put("k", "v"), read_only: false }, Instant(0));
    let [ClientAction::Issued { timestamp }, ClientAction::Send { request, .. }, ..] = actions.as_slice() else {
        panic!("{actions:?}")
    };
    let timestamp = *timestamp;
    assert!(request.signed().signature.is_absent(), "connection-mode requests are not signed");
    let client_id = client.id();
    let reply = |claimed: u32| {
        let payload = Reply {
            view: View(0),
            timestamp,
            client: client_id,
            replica: ReplicaId(claimed),
            read_only: false,
            result: b"ok".to_vec(),
        };
        ReplyBundle {
            root: None,
            replies: vec![bulwark_framework::messages::BundledReply { reply: payload, index: 0, path: Vec::new() }],
        }
    };
    let mut cache = ReplyRootCache::default();
    let from_link = |bundle: ReplyBundle, link: u32, cache: &mut ReplyRootCache| {
        verify_reply_bundle(bundle, Some(ReplicaId(link)), &config, cache).unwrap().pop().unwrap()
    };
    let first = from_link(reply(1), 1, &mut cache);
    let completed = |actions: &[ClientAction]| actions.iter().any(|a| matches!(a, ClientAction::Completed { .. }));
    assert!(!completed(&client.handle(ClientInput::Reply(first.clone()), Instant(1))));
    assert!(!completed(&client.handle(ClientInput::Reply(first), Instant(1))), "one connection counts once");
    let second = from_link(reply(3), 3, &mut cache);
    assert!(completed(&client.handle(ClientInput::Reply(second), Instant(1))), "f + 1 = 2 distinct connections");
}
