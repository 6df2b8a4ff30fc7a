//! The site replica role of Steward and its local ordering (docs/STEWARD.md W1–W4, W6, SC1,
//! SC2, SK1, §9 catch-up): one or more tests per rule, each over sites `ClusterId(1..=S)` of
//! four replicas (`ReplicaId(0..4)`, the representative is replica 0, the leader site is
//! site 1) driven by hand through a FIFO message pump that loses what a test says.

mod steward_world;

use steward_world::*;

use bulwark_crypto::threshold::ThresholdScheme;
use bulwark_crypto::{Digest, KeyPair, Verified};
use bulwark_framework::batch::{Batch, Command};
use bulwark_framework::messages::Request;
use bulwark_framework::steward::global::GlobalRefusal;
use bulwark_framework::steward::messages::{OrderedProof, SiteMessage};
use bulwark_framework::steward::payload::SitePayload;
use bulwark_framework::steward::sequencing::{LocalOrder, LocalVote, Sequenced, SequencingRefusal};
use bulwark_framework::steward::site::{SiteInput, SiteOutput, SiteParams, SiteRefusal, SiteTimer};
use bulwark_framework::verify::verify_message;
use bulwark_framework::{
    Client, ClientAction, ClientInput, ClusterId, Outcome, PeerId, ReplicaId, Role, SeqNum, Timestamp, VerifiedMessage,
};
use bulwark_services::kv::{KvOp, KvReply};
use std::ops::RangeInclusive;
use std::sync::Arc;

/// W1: a replica that is not its site's representative hands a client's update to the
/// representative; the representative of a non-leader site forwards it to the leader
/// site's representative (one WAN message), not again before `forward_again_us`, and not at
/// all once the update executed.
#[test]
fn w1_a_client_update_goes_to_the_representative_and_a_non_leader_representative_forwards_it_once() {
    let mut w = World::new(3, params());
    let update = w.request(2, 1, &put(1), false);
    let out = w.feed(peer(2, 1), SiteInput::Client(update.clone()));
    assert_eq!(sends(out), vec![("Update", peer(2, 1), Some(peer(2, 0)))]);
    w.queue.clear();
    let out = w.deliver(peer(2, 1), peer(2, 0), SiteMessage::Update(update.clone()));
    assert_eq!(sends(out), vec![("Update", peer(2, 0), Some(peer(1, 0)))]);
    // The client broadcast it to its site on a timeout: the other replicas relay it too.
    w.now.0 += FORWARD_AGAIN - 1;
    assert_eq!(sends(w.deliver(peer(2, 2), peer(2, 0), SiteMessage::Update(update.clone()))), vec![]);
    w.now.0 += 1;
    let out = w.deliver(peer(2, 3), peer(2, 0), SiteMessage::Update(update.clone()));
    assert_eq!(sends(out), vec![("Update", peer(2, 0), Some(peer(1, 0)))], "again after forward_again_us");
    w.run();
    assert!(every_replica(3).all(|p| w.replica(p).aru() == SeqNum(1)), "the update executed everywhere");
    w.now.0 += FORWARD_AGAIN;
    assert_eq!(sends(w.deliver(peer(2, 1), peer(2, 0), SiteMessage::Update(update))), vec![], "executed already");
}

/// W2: the leader site's representative pre-prepares a batch as soon as `batch_size_max`
/// updates wait, a partial batch only when the batch timer fires, and never a sequence
/// number beyond `aru + window`.
#[test]
fn w2_the_leader_representative_batches_updates_and_pre_prepares_inside_the_window() {
    let mut w = World::new(3, SiteParams { batch_size_max: 2, window: 2, ..params() });
    let rep = peer(1, 0);
    let feed = |w: &mut World, client: u8| {
        let update = w.request(1, client, &put(client), false);
        pre_prepares(w.feed(rep, SiteInput::Client(update)))
    };
    let out = w.feed(rep, SiteInput::Client(w.request(1, 1, &put(1), false)));
    assert_eq!(pre_prepares(out), vec![]);
    let timer = out
        .iter()
        .any(|(_, o)| matches!(o, SiteOutput::SetTimer { timer: SiteTimer::Batch, at } if at.0 == T0 + 1_000));
    assert!(timer, "the batch timer is armed for a partial batch");
    assert_eq!(feed(&mut w, 2), vec![(1, 2)], "a full batch at once");
    assert_eq!(feed(&mut w, 3), vec![]);
    assert_eq!(feed(&mut w, 4), vec![(2, 2)]);
    assert_eq!(feed(&mut w, 5), vec![]);
    w.now.0 += 1_000;
    assert_eq!(pre_prepares(w.feed(rep, SiteInput::Timer(SiteTimer::Batch))), vec![], "the window (aru 0 + 2) is full");
    w.run();
    assert_eq!(w.replica(rep).aru(), SeqNum(2));
    assert_eq!(pre_prepares(w.feed(rep, SiteInput::Timer(SiteTimer::Batch))), vec![(3, 1)], "the partial batch");
}

fn members() -> Vec<ReplicaId> {
    (0..4).map(ReplicaId).collect()
}

/// A batch of one update at `time_us` (two times, two batches); an empty batch binds
/// nothing (LV3's gap filler), so these tests use one that is not.
fn one_update_batch(time_us: u64) -> Arc<Batch> {
    let key = client_key(1);
    let request = Request {
        client_key: key.public().into(),
        timestamp: Timestamp(1),
        read_only: false,
        operation: encode(&put(1)),
    };
    let request = Verified::sign(request, &key, b"").expect("a request encodes");
    Arc::new(Batch::timed(vec![Command::Request(request)], time_us))
}

/// A vote of `from` at site 1 for the `LocalOrder` unit tests (which check no signature).
fn vote(from: u32, (gv, lv, seq): (u64, u64, u64), digest: Digest) -> Verified<LocalVote> {
    let vote = LocalVote { gv, lv, seq: SeqNum(seq), digest, replica: ReplicaId(from) };
    Verified::sign(vote, &KeyPair::from_seed(seed(1, from as u8)), b"").expect("a vote encodes")
}

/// How a replica under test signs its own PREPARE.
fn sign_mine(mine: LocalVote) -> Verified<LocalVote> {
    vote(mine.replica.0, (mine.gv, mine.lv, mine.seq.0), mine.digest)
}

/// W3: a PRE-PREPARE is taken only from the representative of its local view, for the
/// current `(gv, lv)`, with `aru < seq ≤ aru + W`, at a `seq` not bound to another batch and
/// for a batch not bound to another `seq`; then the replica sends PREPARE.
#[test]
fn w3_a_pre_prepare_is_taken_only_from_the_representative_in_view_inside_the_window_and_unbound() {
    let mut order = LocalOrder::new(ReplicaId(1), members(), 4);
    let (a, b) = (one_update_batch(1), one_update_batch(2));
    let mut pre_prepare = |from: u32, at: (u64, u64, u64), aru: u64, batch: &Arc<Batch>| {
        order.on_pre_prepare(vote(from, at, batch.digest()), (0, 0), SeqNum(aru), batch.clone(), sign_mine)
    };
    assert_eq!(pre_prepare(2, (0, 0, 1), 0, &a), Err(SequencingRefusal::WrongSender));
    assert_eq!(pre_prepare(0, (1, 0, 1), 0, &a), Err(SequencingRefusal::WrongView));
    assert_eq!(pre_prepare(1, (0, 1, 1), 0, &a), Err(SequencingRefusal::WrongView), "lv 1 is not current");
    assert_eq!(pre_prepare(0, (0, 0, 3), 3, &a), Err(SequencingRefusal::OutsideWindow));
    assert_eq!(pre_prepare(0, (0, 0, 5), 0, &a), Err(SequencingRefusal::OutsideWindow));
    assert_eq!(pre_prepare(0, (0, 0, 1), 0, &a), Ok(Sequenced::Prepare { seq: SeqNum(1), digest: a.digest() }));
    assert_eq!(pre_prepare(0, (0, 0, 1), 0, &b), Err(SequencingRefusal::SeqBound));
    assert_eq!(pre_prepare(0, (0, 0, 2), 0, &a), Err(SequencingRefusal::BatchBound));
    assert_eq!(pre_prepare(0, (0, 0, 4), 0, &b), Ok(Sequenced::Prepare { seq: SeqNum(4), digest: b.digest() }));
    let again = pre_prepare(0, (0, 0, 1), 0, &a);
    assert_eq!(again, Ok(Sequenced::Prepare { seq: SeqNum(1), digest: a.digest() }), "sent again: PREPARE again");
}

/// W3: a PRE-PREPARE and `2f` matching PREPAREs of distinct replicas other than the
/// representative form a prepare certificate (the representative's own PREPARE, or one
/// for another digest, another view or from a non-member, does not count).
#[test]
fn w3_a_pre_prepare_and_2f_prepares_of_distinct_non_representatives_certify() {
    let a = one_update_batch(1);
    let mut order = LocalOrder::new(ReplicaId(0), members(), 4);
    let mut prepare =
        |from: u32, gv: u64, digest: Digest| order.on_prepare(vote(from, (gv, 0, 1), digest), (0, 0), SeqNum(0));
    assert_eq!(prepare(0, 0, a.digest()), Err(SequencingRefusal::WrongSender), "the representative");
    assert_eq!(prepare(9, 0, a.digest()), Err(SequencingRefusal::WrongSender), "not a member");
    assert_eq!(prepare(3, 1, a.digest()), Err(SequencingRefusal::WrongView));
    assert_eq!(prepare(1, 0, a.digest()), Ok(Sequenced::Nothing));
    assert_eq!(prepare(1, 0, a.digest()), Ok(Sequenced::Nothing), "one replica counts once");
    assert_eq!(prepare(2, 0, Digest::of(b"another batch")), Ok(Sequenced::Nothing));
    let own = order.on_pre_prepare(vote(0, (0, 0, 1), a.digest()), (0, 0), SeqNum(0), a.clone(), sign_mine);
    assert_eq!(own, Ok(Sequenced::Nothing), "the representative sends no PREPARE");
    let mut prepare = |from: u32| order.on_prepare(vote(from, (0, 0, 1), a.digest()), (0, 0), SeqNum(0));
    assert_eq!(prepare(3), Ok(Sequenced::Certified { seq: SeqNum(1), digest: a.digest() }));
    assert_eq!(prepare(2), Ok(Sequenced::Nothing), "certified once");
}

/// W3, TS1: at a replica, a PRE-PREPARE from another member than the representative is
/// refused; a PREPARE from the representative does not count; with the PRE-PREPARE, its own
/// PREPARE and one more of a non-representative the replica shares the PROPOSAL.
#[test]
fn w3_a_certified_replica_shares_the_proposal_and_the_representatives_prepare_does_not_count() {
    let mut w = World::new(3, params());
    let batch = w.batch(1, T0);
    let digest = batch.digest();
    let (me, proposal) = (peer(1, 1), proposal_payload(1, digest));
    let out = w.deliver(peer(1, 2), me, w.pre_prepare((1, 2), (0, 0, 1), batch.clone()));
    assert_eq!(refusals(out), vec![SiteRefusal::Sequencing(SequencingRefusal::WrongSender)]);
    let pre_prepare = w.pre_prepare((1, 0), (0, 0, 1), batch);
    assert_eq!(sends(w.deliver(peer(1, 0), me, pre_prepare)), vec![("Prepare", me, None)]);
    let out = w.deliver(peer(1, 0), me, w.prepare((1, 0), (0, 0, 1), digest));
    assert_eq!(refusals(out), vec![SiteRefusal::Sequencing(SequencingRefusal::WrongSender)]);
    assert_eq!(sends(out), vec![]);
    let out = w.deliver(peer(1, 2), me, w.prepare((1, 2), (0, 0, 1), digest));
    assert_eq!(sends(out), vec![("Share", me, None)]);
    assert_eq!(sharers(out, proposal), vec![me], "the share is of the PROPOSAL");
}

/// W3: a PRE-PREPARE that completes a certificate with PREPAREs that came before it still
/// sends this replica's PREPARE (the others may need it), and shares the PROPOSAL.
#[test]
fn w3_a_pre_prepare_that_completes_a_certificate_still_sends_this_replicas_prepare() {
    let mut w = World::new(3, params());
    let batch = w.batch(1, T0);
    let digest = batch.digest();
    let me = peer(1, 3);
    for from in [peer(1, 1), peer(1, 2)] {
        let prepare = w.prepare((1, from.replica.0), (0, 0, 1), digest);
        assert_eq!(sends(w.deliver(from, me, prepare)), vec![]);
    }
    let out = w.deliver(peer(1, 0), me, w.pre_prepare((1, 0), (0, 0, 1), batch));
    assert_eq!(sends(out), vec![("Prepare", me, None), ("Share", me, None)]);
    assert_eq!(sharers(out, proposal_payload(1, digest)), vec![me]);
}

/// W3: only the leader site orders locally: a replica of another site refuses PRE-PREPAREs
/// (and PREPAREs) from its own representative.
#[test]
fn w3_a_replica_at_a_non_leader_site_refuses_pre_prepares() {
    let mut w = World::new(3, params());
    let batch = w.batch(1, T0);
    let digest = batch.digest();
    let not_sequencing = vec![SiteRefusal::Sequencing(SequencingRefusal::NotSequencing)];
    let out = w.deliver(peer(2, 0), peer(2, 1), w.pre_prepare((2, 0), (0, 0, 1), batch));
    assert_eq!((refusals(out), sends(out)), (not_sequencing.clone(), vec![]));
    let out = w.deliver(peer(2, 2), peer(2, 1), w.prepare((2, 2), (0, 0, 1), digest));
    assert_eq!((refusals(out), sends(out)), (not_sequencing, vec![]));
}

/// W3 with PBFT.md N1.f as Steward applies it: a PRE-PREPARE whose agreed time is ahead of
/// the replica's clock by more than `clock_skew_max_us`, or behind the agreed time of the
/// last batch it executed, is refused; one sent again long after (behind the clock, not
/// behind the last executed batch) is taken.
#[test]
fn w3_the_agreed_time_is_refused_ahead_of_the_clock_or_behind_the_last_executed_batch() {
    let mut w = World::new(3, params());
    let update = w.request(1, 1, &put(1), false);
    w.feed(peer(1, 0), SiteInput::Client(update));
    w.run();
    assert_eq!(w.replica(peer(1, 1)).aru(), SeqNum(1), "batch 1 executed at agreed time T0");
    w.now.0 += 10 * SKEW;
    let now = w.now.0;
    let cases = [(1, T0, true), (2, T0 - 1, false), (3, now + SKEW + 1, false), (3, now + SKEW, true)];
    for (id, time_us, taken) in cases {
        let batch = w.batch(2 + id as u8, time_us);
        let out = w.deliver(peer(1, 0), peer(1, id), w.pre_prepare((1, 0), (0, 0, 2), batch));
        let prepared = sends(out).iter().any(|(kind, ..)| *kind == "Prepare");
        assert_eq!(prepared, taken, "agreed time {time_us} at clock {now}");
        if !taken {
            assert_eq!(refusals(out), vec![SiteRefusal::Sequencing(SequencingRefusal::TimeOutsideClockSkew)]);
        }
    }
}

/// W4: only the leader site's representative sends the combined PROPOSAL, once to each
/// other site's representative; a representative relays a PROPOSAL or ACCEPT it receives
/// from another site to its site; a non-representative relays nothing.
#[test]
fn w4_the_leader_representative_sends_the_proposal_to_every_other_representative_and_representatives_relay() {
    let mut w = World::new(3, params());
    let update = w.request(1, 1, &put(1), false);
    w.feed(peer(1, 0), SiteInput::Client(update));
    let isolated = peer(3, 1);
    w.pump(|_, to, _| to == isolated);
    let all = sends(&w.trace);
    assert_eq!(wan(&w.trace, "Proposal"), vec![(peer(1, 0), peer(2, 0)), (peer(1, 0), peer(3, 0))]);
    let relayed = |kind: &str| -> Vec<PeerId> {
        all.iter().filter(|(k, _, to)| *k == kind && to.is_none()).map(|(_, from, _)| *from).collect()
    };
    assert_eq!(relayed("Proposal"), vec![peer(2, 0), peer(3, 0)]);
    assert!(relayed("Accept").contains(&peer(1, 0)), "the leader representative relays the ACCEPT it gets");
    assert!(relayed("Accept").iter().all(|from| from.replica == ReplicaId(0)), "{:?}", relayed("Accept"));
    // A non-representative given a PROPOSAL and an ACCEPT from another site relays neither.
    let proposal = pick(&w.trace, |_, o| match o {
        SiteOutput::To { message: SiteMessage::Proposal(p), .. } => Some(p.clone()),
        _ => None,
    });
    let accept = pick(&w.trace, |from, o| match o {
        SiteOutput::To { message: SiteMessage::Accept(a), .. } if from.cluster == ClusterId(2) => Some(a.clone()),
        _ => None,
    });
    let out = w.deliver(peer(1, 0), isolated, SiteMessage::Proposal(proposal[0].clone()));
    assert_eq!(sends(out), vec![("Share", isolated, None)], "its ACCEPT share only");
    let out = w.deliver(peer(2, 0), isolated, SiteMessage::Accept(accept[0].clone()));
    assert_eq!(sends(out), vec![]);
    assert_eq!(w.replica(isolated).aru(), SeqNum(1), "and it took both");
}

/// W6, TS1: a non-leader replica shares ACCEPT for a PROPOSAL it takes, never for a second
/// batch at one `(gv, seq)` (even one the leader site validly signed); leader-site replicas
/// share no ACCEPT; each non-leader representative sends its site's combined ACCEPT to
/// every other site's representative, `S − 1` messages.
#[test]
fn w6_a_non_leader_replica_shares_one_accept_per_gv_seq_and_the_leader_site_sends_none() {
    let mut w = World::new(3, params());
    let (a, b) = (w.proposal(1, w.batch(1, T0)), w.proposal(1, w.batch(2, T0)));
    let me = peer(2, 1);
    let out = w.deliver(peer(1, 0), me, SiteMessage::Proposal(a.clone()));
    assert_eq!(sends(out), vec![("Share", me, None)]);
    assert_eq!(sharers(out, accept_payload(2, 1, a.batch.digest())), vec![me]);
    let out = w.deliver(peer(1, 0), me, SiteMessage::Proposal(b.clone()));
    assert_eq!(refusals(out), vec![SiteRefusal::Global(GlobalRefusal::ConflictingProposal)]);
    assert_eq!(sends(out), vec![], "no second ACCEPT share");
    let out = w.deliver(peer(1, 0), peer(1, 2), SiteMessage::Proposal(a));
    assert_eq!((refusals(out), sends(out)), (vec![], vec![]), "a leader-site replica takes it and shares nothing");

    let mut w = World::new(5, params());
    let update = w.request(3, 1, &put(1), false);
    w.feed(peer(3, 2), SiteInput::Client(update));
    w.run();
    assert!(every_replica(5).all(|p| w.replica(p).aru() == SeqNum(1)));
    let accepts = wan(&w.trace, "Accept");
    for site in 2..=5 {
        let sent: Vec<PeerId> = accepts.iter().filter(|(from, _)| from.cluster.0 == site).map(|(_, to)| *to).collect();
        let others: Vec<PeerId> = (1..=5).filter(|s| *s != site).map(|s| peer(s, 0)).collect();
        assert_eq!(sent, others, "site {site}'s ACCEPT");
    }
    assert!(accepts.iter().all(|(from, _)| from.replica == ReplicaId(0)), "only representatives send it");
    assert!(accepts.iter().all(|(from, _)| from.cluster != LEADER), "the leader site sends no ACCEPT");
    let digest = executed(&w.trace, peer(1, 0))[0].1;
    let proposal = proposal_payload(1, digest).message();
    let leader_shares = pick(&w.trace, |from, o| match o {
        SiteOutput::ToSite(SiteMessage::Share { message, .. }) if from.cluster == LEADER => Some(*message),
        _ => None,
    });
    assert_eq!(leader_shares, vec![proposal; 4], "each leader-site replica shares the PROPOSAL, nothing else");
}

/// SC1: every replica of the client's site replies when it executes the update; the PBFT
/// client role, given its site's membership, completes after `f + 1 = 2` matching replies
/// and not before. Replies of other sites' replicas (they execute too) do not verify under
/// its site's membership, so they never reach it as replies.
#[test]
fn sc1_a_client_accepts_after_f_plus_one_matching_replies_of_its_own_site() {
    let mut w = World::new(3, params());
    let home = ClusterId(2);
    let mut client = Client::new(client_key(9), w.memberships[&home].clone(), Timestamp(1));
    let actions = client.handle(ClientInput::Invoke { operation: encode(&put(9)), read_only: false }, w.now);
    let (to, request) = actions
        .into_iter()
        .find_map(|a| match a {
            ClientAction::Send { to, request } => Some((to, request)),
            _ => None,
        })
        .expect("the client sends its update");
    w.feed(PeerId::new(home, to), SiteInput::Client(request));
    w.run();
    let membership = w.memberships[&home].current();
    let (mut own, mut foreign) = (Vec::new(), 0);
    for (from, reply) in replies(&w.trace).into_iter().filter(|(_, r)| r.client == client.id()) {
        let verified = verify_message(reply.to_wire(), &membership);
        if from.cluster == home {
            match verified {
                Ok(VerifiedMessage::Reply(reply)) => own.push((from, reply)),
                other => panic!("a reply of {from} does not verify: {other:?}"),
            }
        } else {
            assert!(verified.is_err(), "a reply of {from} verifies as one of site {home:?}");
            foreign += 1;
        }
    }
    own.sort_by_key(|(from, _)| *from);
    assert_eq!(own.iter().map(|(from, _)| from.replica.0).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    assert_eq!(foreign, 8, "the replicas of the two other sites executed and replied too");
    let completed = |actions: Vec<ClientAction>| {
        actions.into_iter().find_map(|a| match a {
            ClientAction::Completed { timestamp, result } => Some((timestamp, result)),
            _ => None,
        })
    };
    assert_eq!(completed(client.handle(ClientInput::Reply(own[0].1.clone()), w.now)), None, "one reply is not enough");
    let (timestamp, result) = completed(client.handle(ClientInput::Reply(own[1].1.clone()), w.now)).expect("f + 1");
    assert_eq!(timestamp, Timestamp(1));
    let outcome: Outcome<KvReply> = rmp_serde::from_slice(&result).expect("an outcome");
    assert_eq!(outcome, Outcome::Ok(KvReply::Done { previous: None }));
}

/// SC2: a read-only query to a replica of a non-leader site is answered at once from its
/// state, marked read-only, and nothing leaves the replica.
#[test]
fn sc2_a_read_only_query_is_answered_inside_the_site() {
    let mut w = World::new(3, params());
    let update = w.request(1, 1, &put(1), false);
    w.feed(peer(1, 0), SiteInput::Client(update));
    w.run();
    let query = w.request(2, 2, &KvOp::Get { key: "k1".into() }, true);
    let out = w.feed(peer(2, 2), SiteInput::Client(query));
    assert_eq!(sends(out), vec![]);
    let answers = replies(out);
    assert_eq!(answers.len(), 1);
    assert!(answers[0].1.read_only);
    let outcome: Outcome<KvReply> = rmp_serde::from_slice(&answers[0].1.result).expect("an outcome");
    assert_eq!(outcome, Outcome::Ok(KvReply::Value(Some(b"value-1".to_vec()))));
}

/// Orders an update of each leader-site client of `clients`, one per batch, losing what
/// `lost` says.
fn order_updates(w: &mut World, clients: RangeInclusive<u8>, lost: impl Fn(PeerId, PeerId, &SiteMessage<S>) -> bool) {
    for client in clients {
        let update = w.request(1, client, &put(client), false);
        w.feed(peer(1, 0), SiteInput::Client(update));
        w.pump(&lost);
    }
}

/// SK1: every `checkpoint_interval` (2) globally ordered sequence numbers every replica of
/// every site shares its site's SITE-CHECKPOINT of its state, the representative of a site
/// that signs it sends it to every other site's representative, and it becomes stable.
#[test]
fn sk1_every_checkpoint_interval_a_site_shares_a_site_checkpoint() {
    let mut w = World::new(3, params());
    order_updates(&mut w, 1..=1, |_, _, _| false);
    assert!(sends(&w.trace).iter().all(|(kind, ..)| *kind != "Checkpoint"), "none at seq 1");
    assert!(every_replica(3).all(|p| w.replica(p).stable_checkpoint() == SeqNum(0)));
    let mark = w.trace.len();
    order_updates(&mut w, 2..=2, |_, _, _| false);
    let out = &w.trace[mark..];
    for site in 1..=3 {
        let state = w.replica(peer(site, 0)).state_digest();
        let checkpoint = SitePayload::SiteCheckpoint { site: ClusterId(site), seq: SeqNum(2), state };
        assert_eq!(sharers(out, checkpoint), (0..4).map(|id| peer(site, id)).collect::<Vec<_>>());
    }
    // Sites 2 and 3 execute first (their own ACCEPT orders the batch) and the leader site
    // finds the checkpoint stable with theirs before its own combines; it still sends its
    // own, so every site's representative sends one to every other.
    let others = |site: u32| (1..=3).filter(|s| *s != site).map(|s| (peer(site, 0), peer(s, 0))).collect::<Vec<_>>();
    let mut sent = wan(out, "Checkpoint");
    sent.sort();
    assert_eq!(sent, [others(1), others(2), others(3)].concat());
    assert!(every_replica(3).all(|p| w.replica(p).stable_checkpoint() == SeqNum(2)));
}

/// SK1, TS2: when other sites' checkpoints make seq 4 stable at the leader representative
/// after one peer's share of its own site's checkpoint came and before the two others did,
/// its signer forgets that collection; the late shares are then dropped, not gathered into
/// a collection that never completes and holds a correct member's opening budget for good.
#[test]
fn sk1_late_shares_of_a_checkpoint_forgotten_as_stable_open_no_collection() {
    let mut w = World::new(3, params());
    order_updates(&mut w, 1..=2, |_, _, _| false);
    let rep = peer(1, 0);
    w.feed(rep, SiteInput::Client(w.request(1, 3, &put(3), false)));
    w.feed(rep, SiteInput::Client(w.request(1, 4, &put(4), false)));
    let mut late = Vec::new();
    while let Some((from, to, message)) = w.queue.pop_front() {
        let executed = w.replica(rep).aru() == SeqNum(4);
        let share = matches!(message, SiteMessage::Share { .. }) && [peer(1, 2), peer(1, 3)].contains(&from);
        if to == rep && (matches!(message, SiteMessage::Checkpoint(_)) || executed && share) {
            late.push((from, message));
        } else {
            w.deliver(from, to, message);
        }
    }
    late.sort_by_key(|(_, message)| !matches!(message, SiteMessage::Checkpoint(_)));
    assert_eq!(late.iter().filter(|(_, message)| matches!(message, SiteMessage::Share { .. })).count(), 2);
    for (from, message) in late {
        w.deliver(from, rep, message);
    }
    assert_eq!(w.replica(rep).stable_checkpoint(), SeqNum(4));
    assert_eq!(w.replica(rep).held(), 0, "{}", w.replica(rep).waiting_for());
}

/// SK1: SITE-CHECKPOINTs of a majority of sites (3 of 5) for one `(seq, digest)` make it
/// stable; two do not, one for another digest does not count, nor does a forged one.
#[test]
fn sk1_checkpoints_of_a_majority_of_sites_for_one_seq_and_digest_make_it_stable() {
    let mut w = World::new(5, params());
    let (state, other) = (Digest::of(b"state"), Digest::of(b"another state"));
    let checkpoint = |site: u32, state| SitePayload::SiteCheckpoint { site: ClusterId(site), seq: SeqNum(2), state };
    let me = peer(2, 1);
    for (site, digest) in [(1, state), (3, state), (4, other)] {
        let signed = w.signed(checkpoint(site, digest));
        assert_eq!(refusals(w.deliver(peer(site, 0), me, SiteMessage::Checkpoint(signed))), vec![]);
        assert_eq!(w.replica(me).stable_checkpoint(), SeqNum(0), "after site {site}");
    }
    let mut forged = w.signed(checkpoint(5, state));
    forged.signature = w.signed(checkpoint(5, other)).signature;
    assert_eq!(refusals(w.deliver(peer(5, 0), me, SiteMessage::Checkpoint(forged))), vec![SiteRefusal::BadCheckpoint]);
    assert_eq!(w.replica(me).stable_checkpoint(), SeqNum(0));
    let signed = w.signed(checkpoint(5, state));
    w.deliver(peer(5, 0), me, SiteMessage::Checkpoint(signed));
    assert_eq!(w.replica(me).stable_checkpoint(), SeqNum(2));
}

/// Three batches ordered while `peer(2, 3)` hears nothing; the others hold stable
/// checkpoint 2.
fn one_replica_behind() -> (World, PeerId) {
    let mut w = World::new(3, params());
    let behind = peer(2, 3);
    order_updates(&mut w, 1..=3, |_, to, _| to == behind);
    assert!(every_replica(3).filter(|p| *p != behind).all(|p| w.replica(p).stable_checkpoint() == SeqNum(2)));
    assert!(every_replica(3).filter(|p| *p != behind).all(|p| w.replica(p).aru() == SeqNum(3)));
    assert_eq!(w.replica(behind).aru(), SeqNum(0));
    (w, behind)
}

/// SK1: a replica behind a stable site checkpoint asks its peers (status); it installs the
/// state they send, whose image matches the digest the sites signed; its `aru` jumps to the
/// checkpoint and it executes what is ordered above it.
#[test]
fn sk1_a_replica_behind_a_stable_checkpoint_installs_the_state_and_executes_what_is_ordered_above() {
    let (mut w, behind) = one_replica_behind();
    assert_eq!(sends(w.feed(behind, SiteInput::Timer(SiteTimer::Status))), vec![("Status", behind, None)]);
    let mark = w.trace.len();
    w.run();
    let out = &w.trace[mark..];
    let installed = pick(out, |at, o| match o {
        SiteOutput::Installed { seq, .. } if at == behind => Some(seq.0),
        _ => None,
    });
    assert_eq!(installed, vec![2]);
    assert_eq!(executed(out, behind).iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), vec![3]);
    assert_eq!(w.replica(behind).aru(), SeqNum(3));
    assert_eq!(w.replica(behind).state_digest(), w.replica(peer(2, 1)).state_digest());
}

/// SK1: a chunk offered with a proof that holds checkpoints of fewer than a majority of
/// sites is refused (`BadCheckpoint`), as is a chunk that does not match the signed digest
/// (`BadStateChunk`); the genuine chunk (the whole image here) is installed.
#[test]
fn sk1_a_state_chunk_with_a_tampered_image_or_too_few_site_checkpoints_is_refused() {
    let (mut w, behind) = one_replica_behind();
    let answer = w.deliver(behind, peer(2, 1), SiteMessage::Status { aru: SeqNum(0), gv: 0 });
    let state = pick(answer, |_, o| match o {
        SiteOutput::To { message: SiteMessage::StateChunk { proof, chunk }, .. } => {
            Some((proof.clone(), chunk.clone()))
        }
        _ => None,
    });
    let (proof, chunk) = state.into_iter().next().expect("a peer offers its stable state");
    assert_eq!(chunk.index, 0);
    let mut tampered = (*chunk).clone();
    let at = tampered.data.windows(7).position(|bytes| bytes == b"value-1").expect("the image holds the value");
    tampered.data[at..at + 7].copy_from_slice(b"VALUE-1");
    let mut few = proof.clone();
    few.checkpoints.truncate(1);
    let cases = [
        (few, chunk.clone(), SiteRefusal::BadCheckpoint),
        (proof.clone(), Arc::new(tampered), SiteRefusal::BadStateChunk),
    ];
    for (proof, chunk, refusal) in cases {
        let out = w.deliver(peer(2, 1), behind, SiteMessage::StateChunk { proof, chunk });
        assert_eq!(refusals(out), vec![refusal]);
        assert_eq!(w.replica(behind).aru(), SeqNum(0));
    }
    let out = w.deliver(peer(2, 1), behind, SiteMessage::StateChunk { proof, chunk });
    assert!(out.iter().any(|(_, o)| matches!(o, SiteOutput::Installed { seq: SeqNum(2), .. })));
    assert_eq!(w.replica(behind).aru(), SeqNum(2));
}

/// §9 catch-up (RC1): a replica that lost its representative's relay of the PROPOSAL and
/// every ACCEPT gets the ordered batch from a peer's answer to its status and executes it.
#[test]
fn catch_up_a_replica_that_lost_the_proposal_and_accepts_gets_the_ordered_batch_from_a_peer() {
    let mut w = World::new(3, params());
    let behind = peer(3, 2);
    order_updates(&mut w, 1..=1, |_, to, m| {
        to == behind && matches!(m, SiteMessage::Proposal(_) | SiteMessage::Accept(_))
    });
    assert_eq!((w.replica(behind).aru(), w.replica(peer(3, 1)).aru()), (SeqNum(0), SeqNum(1)));
    w.feed(behind, SiteInput::Timer(SiteTimer::Status));
    let mark = w.trace.len();
    w.run();
    let out = &w.trace[mark..];
    assert!(wan(out, "Ordered").is_empty());
    assert!(sends(out).iter().any(|(kind, _, to)| *kind == "Ordered" && *to == Some(behind)));
    assert_eq!(executed(out, behind), executed(&w.trace, peer(3, 1)));
    assert_eq!(w.replica(behind).state_digest(), w.replica(peer(3, 1)).state_digest());
}

/// §9 catch-up, TS4: an ordered proof is checked like the PROPOSAL and ACCEPTs it carries:
/// a PROPOSAL signature of another batch, or an ACCEPT signed with another site's key, is
/// refused and nothing executes; the genuine proof executes.
#[test]
fn catch_up_a_forged_ordered_proof_is_refused() {
    let w = &mut World::new(3, params());
    let proposal = w.proposal(1, w.batch(1, T0));
    let accept = w.signed(accept_payload(2, 1, proposal.batch.digest()));
    let mut forged_proposal = proposal.clone();
    forged_proposal.signed.signature = w.proposal(1, w.batch(2, T0)).signed.signature;
    let mut forged_accept = accept.clone();
    forged_accept.signature = w.signed_by(ClusterId(3), accept.payload).signature;
    let cases = [(1, forged_proposal, accept.clone(), false), (2, proposal.clone(), forged_accept, false)];
    for (id, proposal, accept, executes) in cases.into_iter().chain([(3, proposal, accept, true)]) {
        let proof = Arc::new(OrderedProof { proposal, accepts: vec![accept] });
        let out = w.deliver(peer(3, 0), peer(3, id), SiteMessage::Ordered(proof));
        let bad = refusals(out) == vec![SiteRefusal::Global(GlobalRefusal::BadSiteSignature)];
        assert_eq!((bad, w.replica(peer(3, id)).aru()), (!executes, SeqNum(u64::from(executes))), "replica {id}");
    }
}

/// Bad input: a message from a peer that is not a member of any site is refused
/// (`UnknownPeer`) before it does anything.
#[test]
fn bad_input_a_message_from_an_unknown_peer_is_refused() {
    let mut w = World::new(3, params());
    let update = w.request(1, 1, &put(1), false);
    for stranger in [PeerId::new(ClusterId(9), ReplicaId(0)), peer(1, 4)] {
        let out = w.deliver(stranger, peer(1, 0), SiteMessage::Update(update.clone()));
        assert_eq!((refusals(out), sends(out)), (vec![SiteRefusal::UnknownPeer], vec![]), "from {stranger}");
    }
}

/// Bad input: PRE-PREPARE, PREPARE and shares are messages of a site's own replicas; from
/// a replica of another site (even one whose id is the representative's) they are refused.
#[test]
fn bad_input_local_messages_from_another_sites_replica_are_refused() {
    let mut w = World::new(3, params());
    let batch = w.batch(1, T0);
    let digest = batch.digest();
    let message = proposal_payload(1, digest).message();
    let share = S::sign_share(&w.keys[&ClusterId(2)].1[2], &message);
    let messages = [
        (peer(2, 0), w.pre_prepare((2, 0), (0, 0, 1), batch)),
        (peer(2, 2), w.prepare((2, 2), (0, 0, 1), digest)),
        (peer(2, 2), SiteMessage::Share { message, share }),
    ];
    for (from, message) in messages {
        let kind = message.kind();
        let out = w.deliver(from, peer(1, 1), message);
        assert_eq!((refusals(out), sends(out)), (vec![SiteRefusal::UnknownPeer], vec![]), "{kind}");
    }
}

/// Bad input: a PROPOSAL whose batch is not the one its signed payload binds is refused
/// (`BatchMismatch`): not relayed, not accepted.
#[test]
fn bad_input_a_proposal_whose_batch_does_not_match_its_digest_is_refused() {
    let mut w = World::new(3, params());
    let mut proposal = w.proposal(1, w.batch(1, T0));
    proposal.batch = w.batch(2, T0);
    let out = w.deliver(peer(1, 0), peer(2, 0), SiteMessage::Proposal(proposal));
    assert_eq!((refusals(out), sends(out)), (vec![SiteRefusal::BatchMismatch], vec![]));
}
