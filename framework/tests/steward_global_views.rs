//! Electing a new leader site (docs/STEWARD.md GV1–GV6, RS1, GI3), driven by hand through
//! the world of `steward_world`: three sites of four, site 1 leads global view 0, site 2
//! leads global view 1.

mod steward_world;

use steward_world::*;

use bulwark_crypto::Digest;
use bulwark_framework::sim::sites::checker::SitesChecker;
use bulwark_framework::steward::messages::SiteMessage;
use bulwark_framework::steward::payload::SitePayload;
use bulwark_framework::steward::site::{SiteInput, SiteOutput, SiteTimer};
use bulwark_framework::{ClusterId, PeerId, SeqNum};
use std::collections::BTreeMap;

/// Every PROPOSAL among `out` at `seq`: its global view and the batch it binds.
fn proposals_at(out: &[Out], seq: u64) -> Vec<(u64, Digest)> {
    pick(out, |_, o| match o {
        SiteOutput::To { message: SiteMessage::Proposal(p), .. } | SiteOutput::ToSite(SiteMessage::Proposal(p)) => {
            match p.signed.payload {
                SitePayload::Proposal { gv, seq: s, updates, .. } if s.0 == seq => Some((gv, updates)),
                _ => None,
            }
        }
        _ => None,
    })
}

fn site(id: u32) -> impl Iterator<Item = PeerId> {
    (0..4).map(move |replica| peer(id, replica))
}

/// Fires `timer` at every replica of `sites` and delivers what follows, but nothing to or
/// from site 1 (cut off).
fn fire(w: &mut World, sites: &[u32], timer: SiteTimer) {
    for at in sites.iter().flat_map(|s| site(*s)) {
        w.feed(at, SiteInput::Timer(timer));
    }
    w.pump(|from, to, _| from.cluster == ClusterId(1) || to.cluster == ClusterId(1));
}

/// GV1–GV5, GI3: site 1 proposes batch `u` at `seq` 1; only site 3 hears it, accepts and
/// executes it (its own ACCEPT and the PROPOSAL order it), and nobody else hears site 3's
/// ACCEPT. Then site 1 is cut off. `Global_T` expires at sites 2 and 3: their GLOBAL-VCs (a
/// majority) preinstall global view 1, led by site 2; site 2's ARU, both sites'
/// GLOBAL-CONSTRAINTs and site 2's bundle make site 2 bind `u` to `seq` 1 again: every
/// PROPOSAL ever made for `seq` 1 binds `u`. Site 2 gets the batch ordered in view 0 from
/// site 3 and executes `u`; a new update is then ordered in view 1 by sites 2 and 3.
#[test]
fn gv1_to_gv5_a_cut_off_leader_site_is_replaced_and_what_one_site_ordered_stays_ordered() {
    let mut w = World::new(3, params());
    let update = w.request(1, 1, &put(1), false);
    w.feed(peer(1, 0), SiteInput::Client(update));
    w.pump(|from, to, _| {
        let (a, b) = (from.cluster.0, to.cluster.0);
        (a == 1 && b == 2) || (a == 3 && b != 3)
    });
    let bound = proposals_at(&w.trace, 1);
    assert!(!bound.is_empty(), "site 1 proposed seq 1");
    let u = bound[0].1;
    for at in site(3) {
        assert_eq!(executed(&w.trace, at), vec![(1, u)], "{at}: ordered by the PROPOSAL and its own ACCEPT");
    }
    for at in site(1).chain(site(2)) {
        assert_eq!(w.replica(at).aru(), SeqNum(0), "{at}");
    }

    fire(&mut w, &[2, 3], SiteTimer::Global);
    for at in site(2).chain(site(3)) {
        assert_eq!(w.replica(at).global_view(), 1, "{at} preinstalled global view 1");
        assert_eq!(w.replica(at).leader_site(), ClusterId(2));
    }
    let again = proposals_at(&w.trace, 1);
    assert!(again.iter().any(|(gv, _)| *gv == 1), "site 2 proposed seq 1 in view 1: {again:?}");
    assert!(again.iter().all(|(_, d)| *d == u), "GI3: every PROPOSAL for seq 1 binds u: {again:?}");

    // Site 3 executed seq 1 already and does not accept it again; site 2 asks, and gets
    // the batch ordered in view 0.
    for _ in 0..3 {
        fire(&mut w, &[2, 3], SiteTimer::Status);
    }
    for at in site(2) {
        assert_eq!(executed(&w.trace, at), vec![(1, u)], "{at}");
    }

    let update = w.request(2, 2, &put(2), false);
    w.feed(peer(2, 0), SiteInput::Client(update));
    w.pump(|from, to, _| from.cluster == ClusterId(1) || to.cluster == ClusterId(1));
    for at in site(2).chain(site(3)) {
        assert_eq!(w.replica(at).aru(), SeqNum(2), "{at} executed the update ordered in view 1");
    }
    assert_eq!(w.replica(peer(2, 1)).state_digest(), w.replica(peer(3, 1)).state_digest());
}

/// The durations `timer` was set for among `out`, by replica (the world's clock stands
/// still, so a timer set at `at` runs `at - T0`).
fn timers_set(out: &[Out], timer: SiteTimer) -> Vec<(PeerId, u64)> {
    pick(out, |from, o| match o {
        SiteOutput::SetTimer { timer: t, at } if *t == timer => Some((from, at.0 - T0)),
        _ => None,
    })
}

/// TM2, TM3 observed in a run (K = 12 s, f = 1, S = 3): in global view 0, `Global_T` is
/// K, the leader site's `Local_T` K / 4 and the others' K / 12; once global view 1 is
/// preinstalled every timer set is twice as long (⌈1 / S⌉ = 1 doubling).
#[test]
fn tm2_tm3_timers_set_in_a_run_keep_their_ratios_and_double_in_the_next_global_views() {
    const K: u64 = 12_000_000;
    let mut w = World::new(3, params());
    let update = w.request(1, 1, &put(1), false);
    w.feed(peer(1, 0), SiteInput::Client(update));
    w.run();
    let before = timers_set(&w.trace, SiteTimer::Global);
    assert!(!before.is_empty() && before.iter().all(|(_, us)| *us == K), "{before:?}");
    let local = timers_set(&w.trace, SiteTimer::Local);
    assert!(
        local.iter().any(|(p, _)| p.cluster == ClusterId(1)) && local.iter().any(|(p, _)| p.cluster != ClusterId(1))
    );
    for (at, us) in local {
        let expected = if at.cluster == ClusterId(1) { K / 4 } else { K / 12 };
        assert_eq!(us, expected, "{at}: T2 = T3 / (f + 3), T1 = T2 / (f + 2)");
    }

    let mark = w.trace.len();
    fire(&mut w, &[2, 3], SiteTimer::Global);
    let update = w.request(2, 2, &put(2), false);
    w.feed(peer(2, 0), SiteInput::Client(update));
    w.pump(|from, to, _| from.cluster == ClusterId(1) || to.cluster == ClusterId(1));
    assert!(site(2).chain(site(3)).all(|at| w.replica(at).global_view() == 1 && w.replica(at).aru() == SeqNum(2)));
    // The last timers each replica set: in global view 1 (a vote in view 0 re-armed at K).
    let last = |timer| -> BTreeMap<PeerId, u64> { timers_set(&w.trace[mark..], timer).into_iter().collect() };
    let global = last(SiteTimer::Global);
    assert_eq!(global.len(), 8, "{global:?}");
    assert!(global.values().all(|us| *us == 2 * K), "{global:?}");
    let local = last(SiteTimer::Local);
    assert_eq!(local.len(), 8, "{local:?}");
    for (at, us) in local {
        let expected = if at.cluster == ClusterId(2) { 2 * K / 4 } else { 2 * K / 12 };
        assert_eq!(us, expected, "{at} in global view 1, led by site 2");
    }
}

/// What the multi-site checker says of a hand-driven run: every site signature sent and
/// every batch executed, in order.
fn check(w: &World) -> Vec<String> {
    let keys = w.keys.iter().map(|(site, (key, _))| (*site, key.clone())).collect();
    let mut checker = SitesChecker::<S>::new(keys);
    for (from, output) in &w.trace {
        match output {
            SiteOutput::ToSite(message) | SiteOutput::To { message, .. } => {
                for signed in message.site_signed() {
                    checker.observe(signed);
                }
            }
            SiteOutput::Executed { seq, digest } => checker.executed(*from, *seq, *digest),
            _ => {}
        }
    }
    checker.violations().iter().map(|v| v.to_string()).collect()
}

/// GV5's negative control: the run above with site 3's GLOBAL-CONSTRAINTs lost, and the new
/// leader site adopting a set from fewer than a majority of sites (its own alone, a rule
/// broken on purpose, only with the `negative-controls` feature). It does not learn that
/// site 3 ordered `u` at `seq` 1, binds a new update there instead, and the checker reports
/// it (GI3). With the rule intact the leader site waits for a majority and the checker
/// reports nothing.
#[test]
fn gv5_negative_control_a_constraint_set_of_fewer_than_a_majority_of_sites_breaks_gi3() {
    for broken in [false, true] {
        let mut w = World::new(3, params());
        if broken {
            for at in site(2) {
                w.replicas.get_mut(&at).expect("a replica").accept_minority_global_constraints_for_negative_control();
            }
        }
        let update = w.request(1, 1, &put(1), false);
        w.feed(peer(1, 0), SiteInput::Client(update));
        w.pump(|from, to, _| {
            let (a, b) = (from.cluster.0, to.cluster.0);
            (a == 1 && b == 2) || (a == 3 && b != 3)
        });
        let lost = |from: PeerId, to: PeerId, message: &SiteMessage<S>| {
            from.cluster == ClusterId(1)
                || to.cluster == ClusterId(1)
                || (from.cluster == ClusterId(3) && matches!(message, SiteMessage::GlobalConstraint(_)))
        };
        for at in site(2).chain(site(3)) {
            w.feed(at, SiteInput::Timer(SiteTimer::Global));
        }
        w.pump(lost);
        let update = w.request(2, 2, &put(2), false);
        w.feed(peer(2, 0), SiteInput::Client(update));
        w.pump(lost);
        let violations = check(&w);
        if broken {
            assert!(violations.iter().any(|v| v.contains("GI3")), "the checker missed it: {violations:?}");
        } else {
            assert!(violations.is_empty(), "{violations:?}");
        }
    }
}
