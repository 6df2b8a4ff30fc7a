//! Electing a new leader site (docs/STEWARD.md GV1–GV6, RS1, GI3), driven by hand through
//! the world of `steward_world`: three sites of four, site 1 leads global view 0, site 2
//! leads global view 1.

mod steward_world;

use steward_world::*;

use bulwark_crypto::Digest;
use bulwark_framework::steward::messages::SiteMessage;
use bulwark_framework::steward::payload::SitePayload;
use bulwark_framework::steward::site::{SiteInput, SiteOutput, SiteTimer};
use bulwark_framework::{ClusterId, PeerId, SeqNum};

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
