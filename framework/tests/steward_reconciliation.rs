//! Catching up and a slow representative (docs/STEWARD.md §9 RC1, RC2, SK1; W4, LV1): a
//! representative that delays what it relays, a replica fetching a stable checkpoint's
//! state by chunks, and a site catching up from the others on its own signed request.
//! Whole runs in the multi-site simulator (checker on) and scenarios driven by hand
//! through the world of `steward_world`.

mod steward_world;

use steward_world::*;

use bulwark_crypto::threshold::ThresholdScheme;
use bulwark_framework::sim::sites::byzantine::SiteStrategy;
use bulwark_framework::sim::sites::{SitesConfig, SitesReport};
use bulwark_framework::steward::messages::SiteMessage;
use bulwark_framework::steward::payload::SitePayload;
use bulwark_framework::steward::site::{
    SiteInput, SiteOutput, SiteRefusal, SiteTimer, CHUNKS_PER_PEER_PER_INTERVAL, CHUNKS_PER_REQUEST,
};
use bulwark_framework::steward::timers::Timeouts;
use bulwark_framework::{ClusterId, PeerId, ProtocolParams, ReplicaId, SeqNum};
use std::collections::BTreeMap;

fn mean_latency_us(report: &SitesReport) -> u64 {
    let latencies = &report.load.latencies_us;
    latencies.iter().sum::<u64>() / latencies.len().max(1) as u64
}

/// W4, LV1: the representative of a non-leader site holds every PROPOSAL and ACCEPT it
/// should relay into its site or send to the other sites until its next status timer.
/// Every run is safe and every update completes. The delay (at most a status interval,
/// 200 ms) is shorter than `Local_T` (1 s at a non-leader site), and its site still
/// executes within it, so it is not replaced (every replica sees its site in local view 0):
/// it only slows the updates (the mean latency is higher than on the same seed without
/// it), over three seeds.
#[test]
fn w4_lv1_a_delaying_non_leader_representative_slows_its_site_and_is_not_replaced() {
    let site = SitesConfig::site(1);
    for seed in seeds(110, 3) {
        let mut config = SitesConfig::new(seed, 5, 4);
        config.updates_per_client = 8;
        let honest = run_sites::<S>(config.clone());
        assert_safe_and_converged(&honest);
        config.byzantine = vec![(PeerId::new(site, ReplicaId(0)), SiteStrategy::DelayingRepresentative)];
        let report = run_sites::<S>(config);
        assert_safe_and_converged(&report);
        assert!(report.byzantine_sent.values().all(|sent| *sent > 0), "it sent nothing");
        assert!(
            report.local_views.values().all(|views| views[&site] == 0),
            "seed {seed}: replaced: {:?}",
            report.local_views
        );
        let (slow, fast) = (mean_latency_us(&report), mean_latency_us(&honest));
        println!("seed {seed}: mean latency {slow} us, {fast} us without it");
        assert!(slow > fast, "seed {seed}: mean latency {slow} us, {fast} us without it");
    }
}

/// Delivers the queue in order until it is empty, as `World::pump`, letting `bend` replace
/// (or drop, with `None`) each message before it is delivered, and handing `watch` each
/// delivered message with what its receiver produced.
fn pump_bent(
    w: &mut World,
    bend: impl Fn(PeerId, PeerId, SiteMessage<S>) -> Option<SiteMessage<S>>,
    mut watch: impl FnMut(PeerId, PeerId, &SiteMessage<S>, &[Out]),
) {
    let mut steps = 0;
    while let Some((from, to, message)) = w.queue.pop_front() {
        steps += 1;
        assert!(steps < 100_000, "the pump does not settle");
        let Some(message) = bend(from, to, message) else { continue };
        let kept = message.clone();
        let out = w.deliver(from, to, message);
        watch(from, to, &kept, out);
    }
}

/// Three updates ordered while `peer(2, 3)` hears nothing, with 4-byte chunks of
/// checkpoint images: the others hold stable checkpoint 2, whose image is several chunks.
fn behind_a_checkpoint_of_several_chunks() -> (World, PeerId) {
    let protocol = ProtocolParams { checkpoint_interval: 2, state_chunk_bytes: 4, ..ProtocolParams::default() };
    let mut w = World::with_protocol(3, params(), protocol);
    let behind = peer(2, 3);
    for client in 1..=3 {
        let update = w.request(1, client, &put(client), false);
        w.feed(peer(1, 0), SiteInput::Client(update));
        w.pump(|_, to, _| to == behind);
    }
    assert!(every_replica(3).filter(|p| *p != behind).all(|p| w.replica(p).stable_checkpoint() == SeqNum(2)));
    assert_eq!(w.replica(behind).aru(), SeqNum(0));
    (w, behind)
}

/// The chunk indices among what `behind` was sent, by sender.
type Chunks = BTreeMap<PeerId, Vec<u64>>;

/// Status timers at `behind` a status interval apart, the queue delivered after each
/// (through `bend`), until it executed something or `rounds` pass. Checks that no answer
/// to one state request holds more than [`CHUNKS_PER_REQUEST`] chunks. Returns the chunk
/// indices `behind` was sent, by sender, and what it refused.
fn catch_up_by_chunks(
    w: &mut World,
    behind: PeerId,
    rounds: usize,
    bend: impl Fn(PeerId, PeerId, SiteMessage<S>) -> Option<SiteMessage<S>>,
) -> (Chunks, Vec<SiteRefusal>) {
    let (mut chunks, mut refused) = (Chunks::new(), Vec::new());
    for _ in 0..rounds {
        w.now.0 += params().status_interval_us;
        w.feed(behind, SiteInput::Timer(SiteTimer::Status));
        pump_bent(w, &bend, |from, to, message, out| {
            if let SiteMessage::StateRequest { .. } = message {
                let answer = sends(out).into_iter().filter(|(kind, ..)| *kind == "StateChunk").count();
                assert!(answer as u64 <= CHUNKS_PER_REQUEST, "{to} answered {answer} chunks to one request");
            }
            if to == behind {
                if let SiteMessage::StateChunk { chunk, .. } = message {
                    chunks.entry(from).or_default().push(chunk.index);
                }
                refused.extend(refusals(out));
            }
        });
        if w.replica(behind).aru() > SeqNum(0) {
            break;
        }
    }
    (chunks, refused)
}

/// The state requests `behind` sent: receiver and first chunk asked for.
fn requests_of(w: &World, behind: PeerId) -> Vec<(PeerId, u64)> {
    pick(&w.trace, |at, o| match o {
        SiteOutput::To { peer, message: SiteMessage::StateRequest { from, .. } } if at == behind => {
            Some((*peer, *from))
        }
        _ => None,
    })
}

/// SK1 (state transfer as PBFT.md ST2–ST4): a replica behind a stable site checkpoint whose
/// image is several chunks fetches it by chunks. Its peers offer chunk 0 with the proof; it
/// asks one source at a time for the next chunks, which answers at most
/// `CHUNKS_PER_REQUEST` per request and `CHUNKS_PER_PEER_PER_INTERVAL` per status interval;
/// every chunk is checked against the signed digest; the replica installs the image, ends in
/// its peers' state and executes what is ordered above the checkpoint.
#[test]
fn sk1_a_lagging_replica_fetches_the_state_by_chunks_checked_against_the_digest() {
    let (mut w, behind) = behind_a_checkpoint_of_several_chunks();
    let (chunks, refused) = catch_up_by_chunks(&mut w, behind, 10, |_, _, m| Some(m));
    assert_eq!(refused, vec![]);
    let installed = pick(&w.trace, |at, o| match o {
        SiteOutput::Installed { seq, .. } if at == behind => Some(seq.0),
        _ => None,
    });
    assert_eq!(installed, vec![2]);
    assert_eq!(w.replica(behind).aru(), SeqNum(3));
    assert_eq!(w.replica(behind).state_digest(), w.replica(peer(2, 1)).state_digest());
    let count = chunks.values().flatten().max().expect("chunks were sent") + 1;
    assert_eq!(count, 23, "an image of several chunks, more than a peer sends in an interval");
    // Replica 0 offers chunk 0 first and is asked for the rest, four at a time; after 16 in
    // one status interval it answers no more, so on the next status timer replica 1 is
    // asked where it stopped.
    let (r0, r1) = (peer(2, 0), peer(2, 1));
    let requests = requests_of(&w, behind);
    assert_eq!(requests, vec![(r0, 1), (r0, 5), (r0, 9), (r0, 13), (r0, 17), (r1, 17), (r1, 21)]);
    let answered = |from: PeerId| chunks[&from].iter().filter(|index| **index > 0).count() as u64;
    assert_eq!((answered(r0), answered(r1)), (CHUNKS_PER_PEER_PER_INTERVAL, count - 1 - CHUNKS_PER_PEER_PER_INTERVAL));
    assert_eq!(w.replica(behind).fetching_bytes(), 0, "nothing held once installed");
}

/// SK1 (PBFT.md ST4): of the replica's peers, replica 0 (Byzantine) alters every chunk it
/// sends and replica 1 sends it nothing. Replica 0's chunk is refused (`BadStateChunk`,
/// once: it is not asked again during this fetch); replica 1, asked next, is replaced by
/// replica 2 after a status interval of silence; the rest of the image comes from replica 2
/// and is installed, the replica ends in its peers' state.
#[test]
fn sk1_a_wrong_chunk_is_refused_and_the_state_comes_from_another_peer() {
    let (mut w, behind) = behind_a_checkpoint_of_several_chunks();
    let (r0, r1, r2) = (peer(2, 0), peer(2, 1), peer(2, 2));
    let bend = move |from: PeerId, to: PeerId, message: SiteMessage<S>| match message {
        _ if from == r1 && to == behind => None,
        SiteMessage::StateChunk { proof, chunk } if from == r0 => {
            let mut altered = (*chunk).clone();
            altered.data[0] ^= 1;
            Some(SiteMessage::StateChunk { proof, chunk: std::sync::Arc::new(altered) })
        }
        message => Some(message),
    };
    let (chunks, refused) = catch_up_by_chunks(&mut w, behind, 10, bend);
    assert_eq!(refused, vec![SiteRefusal::BadStateChunk]);
    let requests = requests_of(&w, behind);
    assert!(!requests.iter().any(|(to, _)| *to == r0), "the peer that sent a bad chunk is not asked: {requests:?}");
    // Replica 1 is asked at once; silent for a status interval, it is replaced by replica 2,
    // which sends 16 chunks in that interval; the next timer asks replica 1 again (a silent
    // peer may only have been busy), then replica 2.
    let expected = [(r1, 0), (r2, 1), (r2, 5), (r2, 9), (r2, 13), (r2, 17), (r1, 17), (r2, 17), (r2, 21)];
    assert_eq!(requests, expected);
    assert_eq!(chunks[&r2].iter().filter(|index| **index > 0).count(), 22);
    assert_eq!(w.replica(behind).aru(), SeqNum(3));
    assert_eq!(w.replica(behind).state_digest(), w.replica(r2).state_digest());
}

/// Whether a message crosses the cut around site 3, either way.
fn across_the_cut(from: PeerId, to: PeerId, _: &SiteMessage<S>) -> bool {
    (from.cluster == ClusterId(3)) != (to.cluster == ClusterId(3))
}

/// Kinds of message that stream what a replica lacks.
const STREAMED: [&str; 5] = ["Ordered", "StateChunk", "Proposal", "Accept", "GlobalVcProof"];

/// RC2 after a cut: site 3 is cut off while sites 1 and 2 order three updates (site
/// checkpoints 2 and 4 become stable). Once the cut heals, the status timers bring site 3
/// nothing (it is idle, not stuck, and another site's status gets no stream); when its
/// `Local_T` expires and a new representative is preinstalled (LV1), its replicas share
/// RECONCILE(site 3, aru 1), and each sends the combined request to its same-position
/// replica of sites 1 and 2 only. Those stream to the replicas that sent it (and no
/// other): the state of checkpoint 4 by chunks (SK1), and no ordered batch (none is above
/// it); every replica of site 3 ends at `aru` 4 in site 1's state.
#[test]
fn rc2_a_site_cut_off_catches_up_after_healing_on_its_signed_request() {
    let mut w = World::new(3, params());
    let order = |w: &mut World, client: u8, lost: fn(PeerId, PeerId, &SiteMessage<S>) -> bool| {
        let update = w.request(1, client, &put(client), false);
        w.feed(peer(1, 0), SiteInput::Client(update));
        w.pump(lost);
    };
    order(&mut w, 1, |_, _, _| false);
    for client in 2..=4 {
        order(&mut w, client, across_the_cut);
    }
    let cut: Vec<PeerId> = (0..4).map(|id| peer(3, id)).collect();
    assert!(cut.iter().all(|p| w.replica(*p).aru() == SeqNum(1)));
    assert!(every_replica(3)
        .filter(|p| p.cluster != ClusterId(3))
        .all(|p| w.replica(p).stable_checkpoint() == SeqNum(4)));

    let mark = w.trace.len();
    w.now.0 += params().status_interval_us;
    for replica in every_replica(3) {
        w.feed(replica, SiteInput::Timer(SiteTimer::Status));
    }
    w.run();
    let streamed = |out: &[Out]| -> Vec<(PeerId, PeerId)> { STREAMED.iter().flat_map(|kind| wan(out, kind)).collect() };
    assert_eq!(streamed(&w.trace[mark..]), vec![], "nothing streams before site 3 asks");
    assert_eq!(wan(&w.trace[mark..], "Reconcile"), vec![]);

    let mark = w.trace.len();
    let t1 = Timeouts::new(params().global_timeout_base_us, 1, 3).expect("valid timeouts").local_us(0);
    w.now.0 += t1;
    for replica in &cut {
        w.feed(*replica, SiteInput::Timer(SiteTimer::Local));
    }
    w.run();
    for _ in 0..2 {
        w.now.0 += params().status_interval_us;
        for replica in &cut {
            w.feed(*replica, SiteInput::Timer(SiteTimer::Status));
        }
        w.run();
    }
    let out = &w.trace[mark..];
    let mut requests = wan(out, "Reconcile");
    requests.sort();
    requests.dedup();
    let same_positions: Vec<(PeerId, PeerId)> =
        (0..4).flat_map(|id| [(peer(3, id), peer(1, id)), (peer(3, id), peer(2, id))]).collect();
    assert_eq!(requests, same_positions, "every replica of site 3 asks its same-position peers");
    for (from, to) in streamed(out) {
        assert_eq!(to.cluster, ClusterId(3), "only site 3 is streamed to");
        assert!(requests.contains(&(to, from)), "{from} streams to {to}, which did not ask it");
    }
    assert!(wan(out, "StateChunk").len() >= 4, "the state comes from the other sites");
    assert!(wan(out, "Ordered").is_empty(), "nothing is ordered above the checkpoint");
    let answered: u64 = every_replica(3).map(|p| w.replica(p).reconciles_answered()).sum();
    assert!(answered >= 4, "{answered} requests answered");
    let leader_state = w.replica(peer(1, 0)).state_digest();
    for replica in &cut {
        assert_eq!(w.replica(*replica).aru(), SeqNum(4), "{replica}");
        assert_eq!(w.replica(*replica).state_digest(), leader_state, "{replica}");
    }
}

/// RC2: one faulty replica of site 3 (replica 2), behind, cannot make the other sites
/// stream to it. Its status to its same-position peers or to the other sites'
/// representatives gets nothing (they are in its global view); a request signed with another site's key is refused (`BadReconcile`); a state
/// request gets no chunk; its share of RECONCILE(site 3, aru 0) does not combine: the correct
/// replicas of site 3, which are not behind and not stuck, never share it, so no request
/// of site 3 crosses the WAN and no replica of sites 1 and 2 answers one.
#[test]
fn rc2_one_faulty_replica_alone_gets_no_stream_from_other_sites() {
    let mut w = World::new(3, params());
    let faulty = peer(3, 2);
    for client in 1..=3 {
        let update = w.request(1, client, &put(client), false);
        w.feed(peer(1, 0), SiteInput::Client(update));
        w.pump(|_, to, _| to == faulty);
    }
    assert_eq!(w.replica(peer(1, 2)).stable_checkpoint(), SeqNum(2));
    let mark = w.trace.len();
    let payload = SitePayload::Reconcile { site: ClusterId(3), aru: SeqNum(0) };
    let forged = w.signed_by(ClusterId(2), payload);
    // Its same-position peers and the representatives (which streamed to any other site's
    // status before RC2).
    for remote in [peer(1, 2), peer(2, 2), peer(1, 0), peer(2, 0)] {
        let out = w.deliver(faulty, remote, SiteMessage::Status { aru: SeqNum(0), gv: 0 });
        assert_eq!(sends(out), vec![], "a status from another site gets no stream");
        let out = w.deliver(faulty, remote, SiteMessage::Reconcile { signed: forged.clone(), gv: 0 });
        assert_eq!((refusals(out), sends(out)), (vec![SiteRefusal::BadReconcile], vec![]));
        let out = w.deliver(faulty, remote, SiteMessage::StateRequest { seq: SeqNum(2), from: 0 });
        assert_eq!(sends(out), vec![], "no chunk without its site's request");
    }
    let message = payload.message();
    let share = S::sign_share(&w.keys[&ClusterId(3)].1[2], &message);
    for id in [0, 1, 3] {
        w.deliver(faulty, peer(3, id), SiteMessage::Share { message, share });
    }
    w.run();
    w.now.0 += params().status_interval_us;
    for replica in (0..4).filter(|id| *id != 2).map(|id| peer(3, id)) {
        w.feed(replica, SiteInput::Timer(SiteTimer::Status));
    }
    w.pump(|from, to, _| from == faulty || to == faulty);
    let out = &w.trace[mark..];
    assert_eq!(wan(out, "Reconcile"), vec![], "site 3 signed no request");
    let streamed: Vec<(PeerId, PeerId)> = STREAMED.iter().flat_map(|kind| wan(out, kind)).collect();
    assert_eq!(streamed, vec![]);
    assert!(every_replica(3).all(|p| w.replica(p).reconciles_answered() == 0));
}

/// LV1, RC2: replica 3 of site 2 lost every message of its site's change to local view 1
/// (the NEW-REP broadcast included), so it stays in local view 0 and could never vote for
/// local view 2. When a peer that is stuck (its client's update forwarded, nothing back
/// from the leader site) asks the other sites (RC2), it also sends its site the latest
/// NEW-REP again, and replica 3 preinstalls local view 1.
#[test]
fn lv1_a_replica_that_lost_its_sites_new_rep_gets_it_again_from_a_stuck_peer() {
    let mut w = World::new(3, params());
    let lost = peer(2, 3);
    for id in 0..4 {
        w.feed(peer(2, id), SiteInput::Timer(SiteTimer::Local));
    }
    w.pump(|_, to, _| to == lost);
    assert_eq!((w.replica(peer(2, 1)).local_view(), w.replica(lost).local_view()), (1, 0));
    let update = w.request(2, 1, &put(1), false);
    w.feed(peer(2, 1), SiteInput::Client(update));
    w.pump(|from, to, _| to == lost || from.cluster != to.cluster);
    w.now.0 += params().status_interval_us;
    let out = w.feed(peer(2, 1), SiteInput::Timer(SiteTimer::Status));
    assert!(sends(out).contains(&("NewRep", peer(2, 1), None)), "{:?}", sends(out));
    w.pump(|from, to, _| from.cluster != to.cluster);
    assert_eq!(w.replica(lost).local_view(), 1);
}
