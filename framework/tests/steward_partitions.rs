//! Partitions between sites (docs/STEWARD.md §0: the network may partition and re-merge):
//! a minority site cut off from the others keeps answering reads inside itself (SC2) while
//! the connected majority keeps ordering (W7), and after the cut heals it catches up (§9,
//! RC1, RC2, SK1) to the same history and state. By hand over the rule tests' world, and in the
//! multi-site simulator over several seeds.

mod steward_world;

use steward_world::*;

use bulwark_crypto::threshold::Simulated;
use bulwark_crypto::Digest;
use bulwark_framework::sim::sites::{SiteCut, SitesConfig, SitesReport, SitesSimulation};
use bulwark_framework::steward::messages::SiteMessage;
use bulwark_framework::steward::payload::SitePayload;
use bulwark_framework::steward::site::{SiteInput, SiteOutput, SiteTimer};
use bulwark_framework::steward::timers::Timeouts;
use bulwark_framework::verify::verify_message;
use bulwark_framework::{
    Client, ClientAction, ClientInput, ClusterId, Instant, Outcome, PeerId, Role, SeqNum, Timestamp, VerifiedMessage,
};
use bulwark_services::kv::{KvOp, KvReply, KvStore};
use rand::Rng;

/// The site the hand-driven scenarios cut off: a minority of one of three sites, not the
/// leader site.
const CUT: ClusterId = ClusterId(3);

/// Whether a message crosses the cut: between site 3 and another site, either way.
fn across_the_cut(from: PeerId, to: PeerId, _: &SiteMessage<S>) -> bool {
    (from.cluster == CUT) != (to.cluster == CUT)
}

fn set(value: &str) -> KvOp {
    KvOp::Put { key: "x".into(), value: value.as_bytes().to_vec() }
}

/// An update of client `client` of site `site` putting `x = value`, handed to replica `to`
/// (of that site), then the pump, losing what `lost` says.
fn order(
    w: &mut World,
    (site, client): (u32, u8),
    to: PeerId,
    value: &str,
    lost: impl Fn(PeerId, PeerId, &SiteMessage<S>) -> bool,
) {
    let update = w.request(site, client, &set(value), false);
    w.feed(to, SiteInput::Client(update));
    w.pump(lost);
}

fn site_replicas(site: ClusterId) -> Vec<PeerId> {
    (0..4).map(|id| peer(site.0, id)).collect()
}

/// SC2 at a cut-off site: a client of site 3 reads `x` (read-only); every replica of its site
/// answers at once from its own state, nothing leaves the site, and the PBFT client completes
/// on the third matching reply (`2f + 1`), not the second. Returns the value read.
fn read_inside_the_cut_site(w: &mut World) -> Option<Vec<u8>> {
    let mut client = Client::new(client_key(30), w.memberships[&CUT].clone(), Timestamp(1));
    let query = rmp_serde::to_vec(&KvOp::Get { key: "x".into() }).expect("a query encodes");
    let actions = client.handle(ClientInput::Invoke { operation: query, read_only: true }, w.now);
    let request = actions
        .into_iter()
        .find_map(|a| match a {
            ClientAction::Broadcast { request } => Some(request),
            _ => None,
        })
        .expect("a read-only query goes to every replica of the site");
    let membership = w.memberships[&CUT].current();
    let mut answers = Vec::new();
    for replica in site_replicas(CUT) {
        let out = w.feed(replica, SiteInput::Client(request.clone()));
        assert_eq!(sends(out), vec![], "{replica} answers from its own state, sending nothing");
        for (from, reply) in replies(out) {
            assert_eq!(from, replica);
            assert!(reply.read_only);
            match verify_message(reply.to_wire(), &membership) {
                Ok(VerifiedMessage::Reply(reply)) => answers.push(reply),
                other => panic!("the reply of {from} does not verify under its site's membership: {other:?}"),
            }
        }
    }
    assert!(w.queue.is_empty(), "nothing left site 3");
    assert_eq!(answers.len(), 4, "every replica of site 3 answers");
    let mut completed = None;
    for (count, reply) in answers.into_iter().enumerate() {
        for action in client.handle(ClientInput::Reply(reply), w.now) {
            if let ClientAction::Completed { result, .. } = action {
                assert_eq!(count + 1, 3, "completed on reply {} rather than the third (2f + 1)", count + 1);
                completed = Some(result);
            }
        }
    }
    let result = completed.expect("three matching replies complete the read");
    match rmp_serde::from_slice::<Outcome<KvReply>>(&result).expect("an outcome") {
        Outcome::Ok(KvReply::Value(value)) => value,
        other => panic!("a read answered {other:?}"),
    }
}

/// The batches each replica of `site` executed, by sequence number.
fn executed_at(w: &World, site: ClusterId) -> Vec<Vec<(u64, Digest)>> {
    site_replicas(site).into_iter().map(|replica| executed(&w.trace, replica)).collect()
}

/// What brings a site that heard nothing up to date once the cut heals: time passes and the
/// status timers of every replica fire, but they bring nothing to a site that has nothing
/// outstanding (it is not stuck, so it does not ask the other sites, and they do not know
/// it is behind); `Local_T` expires at the idle cut-off site (T1, TM3), and on its new
/// representative (LV1) the site signs a request naming its `aru` (RC2), which its replicas
/// send to their same-position peers, which stream what it lacks (RC2, SK1).
fn heal(w: &mut World) {
    let status_interval = params().status_interval_us;
    w.now.0 += status_interval;
    for replica in every_replica(3) {
        w.feed(replica, SiteInput::Timer(SiteTimer::Status));
    }
    w.run();
    let t1 = Timeouts::new(params().global_timeout_base_us, 1, 3).expect("valid timeouts").local_us(0);
    w.now.0 += t1;
    for replica in site_replicas(CUT) {
        w.feed(replica, SiteInput::Timer(SiteTimer::Local));
    }
    w.run();
    w.now.0 += status_interval;
    for replica in site_replicas(CUT) {
        w.feed(replica, SiteInput::Timer(SiteTimer::Status));
    }
    w.run();
}

/// SC2, W7, §9 catch-up: of three sites, site 3 is cut off after `x = before` was ordered
/// everywhere. Sites 1 and 2 (a majority: W7 needs `⌊3/2⌋ = 1` ACCEPT besides the leader
/// site's PROPOSAL) order three more updates, from clients of both; site 3's replicas
/// execute none of them. A read-only query of a client of site 3 is answered inside site 3
/// by `2f + 1` matching replies of its own replicas, with the stale value. Once the cut
/// heals, site 3's replicas execute the same batches (same digests, in order) as site 1's
/// and end in its state; a read at site 3 then sees the last value.
#[test]
fn sc2_a_cut_off_minority_site_keeps_serving_reads_and_catches_up_after_healing() {
    // A checkpoint every 8 sequence numbers: none becomes stable here, so site 3 catches up
    // batch by batch rather than by installing a state.
    let mut w = World::with_checkpoint_interval(3, params(), 8);
    order(&mut w, (1, 1), peer(1, 0), "before", |_, _, _| false);
    assert!(every_replica(3).all(|p| w.replica(p).aru() == SeqNum(1)), "ordered everywhere before the cut");

    order(&mut w, (1, 2), peer(1, 0), "after-2", across_the_cut);
    order(&mut w, (2, 3), peer(2, 1), "after-3", across_the_cut);
    order(&mut w, (1, 4), peer(1, 0), "after-4", across_the_cut);
    for replica in every_replica(3) {
        let expected = if replica.cluster == CUT { 1 } else { 4 };
        assert_eq!(w.replica(replica).aru(), SeqNum(expected), "{replica} during the cut");
    }
    let leader = executed(&w.trace, peer(1, 0));
    assert_eq!(leader.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    for (replica, batches) in site_replicas(CUT).into_iter().zip(executed_at(&w, CUT)) {
        assert_eq!(batches, leader[..1], "{replica} executed nothing ordered during the cut");
    }
    assert!(
        every_replica(3).all(|p| w.replica(p).stable_checkpoint() == SeqNum(0)),
        "no stable checkpoint: catch-up must bring the batches"
    );

    assert_eq!(read_inside_the_cut_site(&mut w), Some(b"before".to_vec()), "the stale value, served while cut off");

    heal(&mut w);
    let leader_state = w.replica(peer(1, 0)).state_digest();
    for (replica, batches) in site_replicas(CUT).into_iter().zip(executed_at(&w, CUT)) {
        assert_eq!(batches, leader, "{replica} executed the batches site 1 executed");
        assert_eq!(w.replica(replica).aru(), SeqNum(4), "{replica}");
        assert_eq!(w.replica(replica).state_digest(), leader_state, "{replica} ends in site 1's state");
    }
    assert_eq!(read_inside_the_cut_site(&mut w), Some(b"after-4".to_vec()), "caught up, site 3 reads the last value");
}

/// SK1 after a cut: site 3 is cut off while sites 1 and 2 order three updates, so site
/// checkpoints at 2 and 4 become stable with the signatures of two sites of three;
/// once the cut heals, site 3's replicas install the site-signed state rather than
/// re-executing what is below it, and end at `aru` 4 in site 1's state.
#[test]
fn sk1_a_site_cut_off_past_a_stable_checkpoint_installs_the_state_after_healing() {
    let mut w = World::new(3, params());
    order(&mut w, (1, 1), peer(1, 0), "before", |_, _, _| false);
    for (client, value) in [(2, "after-2"), (3, "after-3"), (4, "after-4")] {
        order(&mut w, (1, client), peer(1, 0), value, across_the_cut);
    }
    assert!(every_replica(3).filter(|p| p.cluster != CUT).all(|p| w.replica(p).stable_checkpoint() == SeqNum(4)));
    assert!(site_replicas(CUT).into_iter().all(|p| w.replica(p).aru() == SeqNum(1)));
    assert_eq!(read_inside_the_cut_site(&mut w), Some(b"before".to_vec()));

    let mark = w.trace.len();
    heal(&mut w);
    let leader_state = w.replica(peer(1, 0)).state_digest();
    for replica in site_replicas(CUT) {
        let installed = pick(&w.trace[mark..], |at, o| match o {
            SiteOutput::Installed { seq, .. } if at == replica => Some(seq.0),
            _ => None,
        });
        assert_eq!(installed, vec![4], "{replica} installs the state at the stable checkpoint");
        assert_eq!(executed(&w.trace[mark..], replica), vec![], "{replica} re-executes nothing below it");
        assert_eq!(w.replica(replica).aru(), SeqNum(4), "{replica}");
        assert_eq!(w.replica(replica).state_digest(), leader_state, "{replica} ends in site 1's state");
    }
    assert_eq!(read_inside_the_cut_site(&mut w), Some(b"after-4".to_vec()));
}

/// W6, W7, LV1 with a minority cut off (found by `bulwark sim --sites 5 --partitions`,
/// seed 194; see below): sites 1 and 2, a connected majority with no faulty replica, must
/// order an update (W7 needs `⌊3/2⌋ = 1` ACCEPT besides the leader site's PROPOSAL) while
/// site 3 is cut off. Site 2's `Local_T` expires at its four replicas at once (an idle site
/// rotates its representative, T1) and the PROPOSAL arrives while the change is under way:
/// replicas 0 and 1 have preinstalled local view 1, replicas 2 and 3 not yet (their NEW-REP
/// shares come after the PROPOSAL, LAN reordering). Each replica shares ACCEPT(site 2,
/// gv 0, lv, seq 1, H(u)) with its own `lv`, so two shares bind local view 1 and two local
/// view 0, and neither reaches `2f + 1 = 3`. Once every replica of site 2 is in local view 1,
/// status timers (RC0: stuck replicas send their shares again, the same two-and-two) and a
/// further local view change did not make site 2 sign: the update was never ordered.
///
/// Seed 194 of the partition campaign (`bulwark sim --sites 5 --replicas-per-site 4
/// --byzantine-per-site 1 --partitions --first-seed 194 --seeds 1`) showed it at several
/// sites at once and never ended. The fix: a replica that preinstalls a new local view
/// shares again, with it, the ACCEPT of every PROPOSAL its site has not signed (TS1 allows
/// the same binding in a later local view).
#[test]
fn w6_a_proposal_taken_across_a_local_view_change_is_still_accepted_by_the_connected_majority() {
    let mut w = World::new(3, params());
    let late = [peer(2, 2), peer(2, 3)];
    for id in 0..4 {
        w.feed(peer(2, id), SiteInput::Timer(SiteTimer::Local));
    }
    let mut held = Vec::new();
    let pump_holding = |w: &mut World, held: &mut Vec<_>, hold: &dyn Fn(&SiteMessage<S>) -> bool| {
        while let Some((from, to, message)) = w.queue.pop_front() {
            if across_the_cut(from, to, &message) {
                continue;
            }
            if late.contains(&to) && hold(&message) {
                held.push((from, to, message));
            } else {
                w.deliver(from, to, message);
            }
        }
    };
    // Local view 1 of site 2 is preinstalled at replicas 0 and 1; what would tell replicas
    // 2 and 3 is late.
    pump_holding(&mut w, &mut held, &|_| true);
    let lv = |w: &World, replica: PeerId| w.replica(replica).local_view_of(ClusterId(2));
    assert_eq!((lv(&w, peer(2, 0)), lv(&w, peer(2, 1))), (1, 1));
    assert_eq!((lv(&w, late[0]), lv(&w, late[1])), (0, 0));

    // The leader site orders an update; its PROPOSAL reaches every replica of site 2.
    let update = w.request(1, 1, &put(1), false);
    w.feed(peer(1, 0), SiteInput::Client(update));
    pump_holding(&mut w, &mut held, &|message| !matches!(message, SiteMessage::Proposal(_)));
    let digest = pick(&w.trace, |_, o| match o {
        SiteOutput::ToSite(SiteMessage::PrePrepare { batch, .. }) => Some(batch.digest()),
        _ => None,
    })[0];
    let accept = |lv| SitePayload::Accept { site: ClusterId(2), gv: 0, lv, seq: SeqNum(1), updates: digest };
    assert_eq!(sharers(&w.trace, accept(1)), vec![peer(2, 0), peer(2, 1)], "ACCEPT shares of local view 1");
    assert_eq!(sharers(&w.trace, accept(0)), late.to_vec(), "ACCEPT shares of local view 0");

    // Everything late arrives; every replica of site 2 is in local view 1.
    for (from, to, message) in held {
        w.deliver(from, to, message);
    }
    w.pump(across_the_cut);
    assert!(site_replicas(ClusterId(2)).into_iter().all(|replica| lv(&w, replica) == 1));

    // Time passes: status timers everywhere, twice; `Local_T` at site 2 once more (local
    // view 2 everywhere); status timers twice again.
    let status_twice = |w: &mut World| {
        for _ in 0..2 {
            w.now.0 += params().status_interval_us;
            for replica in every_replica(3) {
                w.feed(replica, SiteInput::Timer(SiteTimer::Status));
            }
            w.pump(across_the_cut);
        }
    };
    status_twice(&mut w);
    w.now.0 += Timeouts::new(params().global_timeout_base_us, 1, 3).expect("valid timeouts").local_us(0);
    for replica in site_replicas(ClusterId(2)) {
        w.feed(replica, SiteInput::Timer(SiteTimer::Local));
    }
    w.pump(across_the_cut);
    assert!(site_replicas(ClusterId(2)).into_iter().all(|replica| lv(&w, replica) == 2));
    status_twice(&mut w);
    for replica in every_replica(2) {
        assert_eq!(
            w.replica(replica).aru(),
            SeqNum(1),
            "{replica} never executes the update: {}",
            w.replica(replica).waiting_for()
        );
    }
}

fn kv_operation(rng: &mut rand_chacha::ChaCha8Rng, client: usize, index: u64) -> KvOp {
    KvOp::Append { key: format!("k{}", rng.gen_range(0..8)), value: vec![client as u8, (index % 251) as u8] }
}

fn run(config: SitesConfig) -> SitesReport {
    SitesSimulation::<KvStore, Simulated>::new(config, KvStore::new, kv_operation).expect("valid configuration").run()
}

/// Liveness with a connected majority (§0), W7, §9 catch-up, GI1–GI5: 5 sites of 4, clients
/// at every site issuing all along; a non-leader site is cut off from 0.3 s to 2 s. Just
/// before the cut heals the four connected sites have ordered past everything the cut site
/// executed (they do not wait for it); the whole run is safe, every update of every site's
/// clients completes (the cut site's own ones after the heal), and every correct replica,
/// the cut site's included, ends in one state. Over four seeds and two cut sites.
#[test]
fn a_non_leader_site_cut_off_for_seconds_stays_safe_and_catches_up() {
    for (seed, index) in [(1, 2), (2, 4), (3, 1), (4, 3)] {
        let site = SitesConfig::site(index);
        let mut config = SitesConfig::new(seed, 5, 4);
        config.updates_per_client = 20;
        config.cuts =
            vec![SiteCut { site, from: Instant::from_micros(300_000), until: Instant::from_micros(2_000_000) }];

        let mut during = config.clone();
        during.time_limit = std::time::Duration::from_micros(1_950_000);
        let during = run(during);
        assert!(during.violations.is_empty(), "seed {seed}: {during}");
        let (inside, outside): (Vec<_>, Vec<_>) = during.final_states.iter().partition(|(p, _)| p.cluster == site);
        let cut_aru = inside.iter().map(|(_, (aru, _))| *aru).max().expect("the cut site's replicas");
        let others_aru = outside.iter().map(|(_, (aru, _))| *aru).min().expect("the other replicas");
        assert!(
            others_aru > cut_aru,
            "seed {seed}: the connected majority ordered nothing the cut site missed: {:?}",
            during.final_states
        );
        assert!(during.cut_losses > 0, "seed {seed}: the cut lost nothing");

        let report = run(config);
        assert!(report.violations.is_empty(), "seed {seed}: {report}");
        assert!(report.converged(), "seed {seed}: {report}\nwaiting: {:#?}", report.waiting);
        assert_eq!(report.final_states.len(), 20, "seed {seed}: every replica reports");
        assert!(report.simulated_time > std::time::Duration::from_secs(2), "seed {seed}: done before the heal");
        println!("site {site} cut off: at 1.95 s it is at {cut_aru}, the others at {others_aru} or more; {report}");
    }
}

/// A cut of a site that is not in the run, or one that ends before it starts, is refused by
/// `SitesSimulation::new` (field `cuts`); a cut from 0 to 0 is allowed and loses nothing.
#[test]
fn bad_cuts_are_refused_when_the_run_is_built() {
    let cut = |site: u32, from: u64, until: u64| SiteCut {
        site: ClusterId(site),
        from: Instant::from_micros(from),
        until: Instant::from_micros(until),
    };
    for (bad, why) in [(cut(6, 0, 1_000), "site k6"), (cut(0, 0, 1_000), "site k0"), (cut(2, 1_000, 999), "before")] {
        let mut config = SitesConfig::new(1, 5, 4);
        config.cuts = vec![bad];
        let error = SitesSimulation::<KvStore, Simulated>::new(config, KvStore::new, kv_operation)
            .expect_err("a bad cut is refused");
        let error = error.to_string();
        assert!(error.starts_with("cuts: ") && error.contains(why), "{error}");
    }
    let mut config = SitesConfig::new(1, 3, 4);
    config.updates_per_client = 2;
    config.cuts = vec![cut(2, 0, 0)];
    let report = run(config);
    assert!(report.converged() && report.cut_losses == 0, "{report}");
}
