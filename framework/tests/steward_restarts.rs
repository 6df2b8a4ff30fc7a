//! Crash and restart of site replicas (docs/STEWARD.md TS1, W3 and GI5 across restarts): a
//! replica comes back from what it persisted, bound by every vote and share it made, at
//! least as far as it executed, and takes part again. By hand in the world of
//! `steward_world`, and whole runs in the multi-site simulator.

mod steward_world;

use steward_world::*;

use bulwark_crypto::threshold::Simulated;
use bulwark_framework::ids::Instant;
use bulwark_framework::sim::sites::SitesConfig;
use bulwark_framework::steward::messages::SiteMessage;
use bulwark_framework::steward::sequencing::SequencingRefusal;
use bulwark_framework::steward::site::{SiteInput, SiteOutput, SiteRefusal, SiteTimer};
use bulwark_framework::{PeerId, ReplicaId, SeqNum};

/// The PREPAREs `at` sent among `out`, by the digest they vote for.
fn prepares_sent(out: &[Out], at: PeerId) -> Vec<bulwark_crypto::Digest> {
    pick(out, |from, o| match o {
        SiteOutput::ToSite(SiteMessage::Prepare(vote)) if from == at => Some(vote.payload.digest),
        _ => None,
    })
}

/// W3 across a restart: a leader-site replica prepared batch A at `(0, 0, 1)` and shared
/// the PROPOSAL of its certificate, then crashed. Back from its records, it refuses a
/// PRE-PREPARE of batch B for the same `(gv, lv, seq)` from a representative that
/// equivocates; a replica that came back with nothing prepares B (the control), which is
/// how `f` faulty replicas and a forgetful correct one would certify two batches.
#[test]
fn w3_ts1_a_restarted_replica_never_votes_for_a_second_batch_in_one_round() {
    for forget in [false, true] {
        let mut w = World::new(3, params());
        let (representative, me) = (peer(1, 0), peer(1, 1));
        let (a, b) = (w.batch(1, T0), w.batch(2, T0));
        let message = w.pre_prepare((1, 0), (0, 0, 1), a.clone());
        w.deliver(representative, me, message);
        for id in [2, 3] {
            let message = w.prepare((1, id), (0, 0, 1), a.digest());
            w.deliver(peer(1, id), me, message);
        }
        assert_eq!(sharers(&w.trace, proposal_payload(1, a.digest())), vec![me], "certified and shared");

        w.restart(me, forget);
        let start = w.trace.len();
        let message = w.pre_prepare((1, 0), (0, 0, 1), b.clone());
        w.deliver(representative, me, message);
        let out = &w.trace[start..];
        if forget {
            assert_eq!(prepares_sent(out, me), vec![b.digest()], "control: a replica with no records prepares B");
        } else {
            assert!(prepares_sent(out, me).is_empty(), "no PREPARE for B: {:?}", sends(out));
            assert_eq!(refusals(out), vec![SiteRefusal::Sequencing(SequencingRefusal::SeqBound)]);
            // The same PRE-PREPARE again is answered with the same PREPARE.
            let message = w.pre_prepare((1, 0), (0, 0, 1), a.clone());
            let out = w.deliver(representative, me, message);
            assert_eq!(prepares_sent(out, me), vec![a.digest()]);
        }
    }
}

/// TS1, W6 across a restart: a non-leader replica shared the ACCEPT of PROPOSAL A at
/// `seq` 1 and crashed. Back from its records, shown a PROPOSAL binding B to the same
/// `(gv, seq)` (which only more than `f` faulty replicas of the leader site could sign) it
/// shares no ACCEPT of B; with no records (the control) it does.
#[test]
fn ts1_a_restarted_replica_never_shares_a_second_value_in_one_slot() {
    for forget in [false, true] {
        let mut w = World::new(3, params());
        let me = peer(2, 1);
        let (a, b) = (w.batch(1, T0), w.batch(2, T0));
        let proposal = w.proposal(1, a.clone());
        w.deliver(peer(2, 0), me, SiteMessage::Proposal(proposal));
        assert_eq!(sharers(&w.trace, accept_payload(2, 1, a.digest())), vec![me], "accepted A");

        w.restart(me, forget);
        let start = w.trace.len();
        let proposal = w.proposal(1, b.clone());
        w.deliver(peer(2, 0), me, SiteMessage::Proposal(proposal));
        let shared_b = sharers(&w.trace[start..], accept_payload(2, 1, b.digest()));
        if forget {
            assert_eq!(shared_b, vec![me], "control: a replica with no records accepts B");
        } else {
            assert!(shared_b.is_empty(), "no ACCEPT of B after a restart");
            assert_eq!(w.replica(me).aru(), SeqNum(0));
        }
    }
}

/// 3 sites of 4 with 20 updates per client; `replica` crashes at 0.4 s and comes back at
/// 1.2 s, after its site ordered more without it.
fn crash_and_restart(seed: u64, replica: PeerId) -> SitesConfig {
    let mut config = SitesConfig::new(seed, 3, 4);
    config.updates_per_client = 20;
    config.crashes = vec![(replica, Instant::from_micros(400_000))];
    config.restarts = vec![(replica, Instant::from_micros(1_200_000))];
    config
}

/// GI5 across restarts, over four seeds and each role: a replica of the leader site, the
/// leader site's representative, and a non-leader site's representative crash and come
/// back from their records. Every run is safe, every update completes, and the restarted
/// replica ends at the state of every other (it caught up on what it missed). The records
/// a replica holds stay below the window plus four checkpoint intervals: they are dropped
/// as batches execute and site checkpoints become stable.
#[test]
fn gi5_a_restarted_replica_comes_back_where_it_was_and_catches_up() {
    let leader = SitesConfig::site(0);
    let other = SitesConfig::site(1);
    for seed in 1..=4 {
        for replica in
            [PeerId::new(leader, ReplicaId(2)), PeerId::new(leader, ReplicaId(0)), PeerId::new(other, ReplicaId(0))]
        {
            let report = run_sites::<Simulated>(crash_and_restart(seed, replica));
            assert!(report.violations.is_empty(), "{replica}: {report}");
            assert_eq!(report.restarts, 1, "{report}");
            assert!(report.converged(), "{replica}: {report}\nwaiting: {:#?}", report.waiting);
            assert!(report.final_states.contains_key(&replica), "{replica} is back");
            // 120 batches' worth of records were made; those settled were dropped.
            let config = SitesConfig::new(seed, 3, 4);
            let bound = config.site_params.window + 4 * config.params.checkpoint_interval;
            assert!(report.peak_records as u64 <= bound, "records held {}: {report}", report.peak_records);
        }
    }
}

/// Persist before send (TS1, W3 and GI5 across restarts): the same crashes, torn: each
/// replica crashes in the middle of its next step, the outputs of that step before a drawn
/// point carried out and those after it lost. Over eight seeds and the three roles: safe,
/// every update completes, the restarted replica ends in everyone's state.
#[test]
fn gi5_a_crash_in_the_middle_of_a_step_keeps_what_was_sent_recorded() {
    let leader = SitesConfig::site(0);
    let other = SitesConfig::site(1);
    for seed in 1..=8 {
        let replicas =
            [PeerId::new(leader, ReplicaId(2)), PeerId::new(leader, ReplicaId(0)), PeerId::new(other, ReplicaId(0))];
        for replica in replicas {
            let mut config = crash_and_restart(seed, replica);
            config.torn_crashes = true;
            let report = run_sites::<Simulated>(config);
            assert!(report.violations.is_empty(), "{replica}: {report}");
            assert_eq!(report.restarts, 1, "{report}");
            assert!(report.converged(), "{replica}: {report}\nwaiting: {:#?}", report.waiting);
        }
    }
}

/// GI5 with a torn crash right after a state install: seed 66 of the 3-site view-change
/// campaign cut a replica's step between installing a stable checkpoint's state (16) and
/// recording it, and it came back at 15. The state is recorded before it is announced.
#[test]
fn gi5_a_state_installed_is_recorded_before_the_crash_can_cut_it_off() {
    use bulwark_framework::sim::sites::campaign::SitesCampaign;
    let campaign = SitesCampaign::new(3, 4, 1).with_view_change_faults();
    let report = campaign.run(66, bulwark_services::kv::KvStore::new, kv_operation);
    assert!(report.restarts > 0, "{report}");
    assert!(report.violations.is_empty(), "{report}");
    assert!(report.converged(), "{report}");
}

/// GI5's negative control: the same crash with every record forgotten, so the replica
/// comes back at `aru` 0 after executing batches. The checker reports GI5.
#[test]
fn gi5_negative_control_a_replica_that_forgets_its_records_moves_back() {
    let mut config = crash_and_restart(1, PeerId::new(SitesConfig::site(0), ReplicaId(2)));
    config.forget_records_on_restart = true;
    let report = run_sites::<Simulated>(config);
    assert!(
        report.violations.iter().any(|v| v.invariant == "GI5" && v.detail.contains("came back at aru s0")),
        "the checker must see the replica move back: {report}"
    );
}

/// Every replica of the leader site crashes at once, in the middle of ordering (at a time
/// that differs by seed), and they come back one after another: only their records carry
/// what the site had bound and shared. Over eight seeds: safe, every update completes, one
/// state everywhere.
#[test]
fn gi5_a_whole_leader_site_crashes_and_comes_back_from_its_records() {
    let leader = SitesConfig::site(0);
    for seed in 1..=8 {
        let mut config = SitesConfig::new(seed, 3, 4);
        config.updates_per_client = 20;
        let crash_us = 200_000 + 61_000 * (seed % 13);
        for id in 0..4 {
            let replica = PeerId::new(leader, ReplicaId(id));
            config.crashes.push((replica, Instant::from_micros(crash_us)));
            config.restarts.push((replica, Instant::from_micros(crash_us + 400_000 + 150_000 * u64::from(id))));
        }
        let report = run_sites::<Simulated>(config);
        assert!(report.violations.is_empty(), "{report}");
        assert_eq!(report.restarts, 4, "{report}");
        assert!(report.converged(), "{report}\nwaiting: {:#?}", report.waiting);
    }
}

/// The sequence numbers and batches `at` pre-prepared among `out`.
fn pre_prepared_by(out: &[Out], at: PeerId) -> Vec<(u64, bulwark_crypto::Digest)> {
    pick(out, |from, o| match o {
        SiteOutput::ToSite(SiteMessage::PrePrepare { vote, .. }) if from == at => {
            Some((vote.payload.seq.0, vote.payload.digest))
        }
        _ => None,
    })
}

/// W2, LV3 across a restart: the leader site's representative of local view 1 pre-prepared
/// an update at `seq` 1 that nobody received, then crashed. Back from its records it
/// gathers the site's reports again (the union binds nothing: no certificate formed) and,
/// given the next update, pre-prepares it at `seq` 2: `seq` 1 stays its first batch's, so a
/// correct representative never sends two PRE-PREPAREs for one `(gv, lv, seq)`.
#[test]
fn w2_a_restarted_representative_never_pre_prepares_a_sequence_number_twice() {
    let mut w = World::new(3, params());
    let (old, me) = (peer(1, 0), peer(1, 1));
    for id in 1..4 {
        w.feed(peer(1, id), SiteInput::Timer(SiteTimer::Local));
    }
    w.pump(|from, to, _| from == old || to == old);
    assert_eq!(w.replica(me).local_view(), 1, "replica 1 represents the leader site");

    let first = w.request(1, 1, &put(1), false);
    let start = w.trace.len();
    w.feed(me, SiteInput::Client(first));
    w.pump(|from, to, message| from == old || to == old || matches!(message, SiteMessage::PrePrepare { .. }));
    let before = pre_prepared_by(&w.trace[start..], me);
    assert_eq!(before.len(), 1, "one PRE-PREPARE, lost");
    assert_eq!(before[0].0, 1);

    w.restart(me, false);
    let start = w.trace.len();
    w.feed(me, SiteInput::Timer(SiteTimer::Status));
    w.pump(|from, to, _| from == old || to == old);
    let second = w.request(1, 2, &put(2), false);
    w.feed(me, SiteInput::Client(second));
    w.pump(|from, to, _| from == old || to == old);
    let after = pre_prepared_by(&w.trace[start..], me);
    assert!(!after.is_empty(), "it pre-prepares again after the restart");
    for (seq, digest) in after {
        assert!(seq != 1 || digest == before[0].1, "seq 1 pre-prepared with a second batch");
    }
}

/// W2, LV3 across a restart: the representative of lv 1 pre-prepares X at seq 1 (its
/// bundle bound nothing there), crashes, and comes back. A second bundle for lv 1 could
/// bind seq 1 to Y (a lv-0 certificate held by replica 3 alone, whose report missed the
/// first bundle): it adopts the bundle it recorded instead, gathers no second one, and
/// never sends a second PRE-PREPARE for `(0, 1, 1)`. (Found by review; it did before.)
#[test]
fn w2_lv3_a_restarted_representative_keeps_the_constraint_it_adopted() {
    let mut w = World::new(3, params());
    let (old, me, holder) = (peer(1, 0), peer(1, 1), peer(1, 3));
    let y = w.batch(2, T0);
    // lv 0: everyone prepares Y at seq 1, only replica 3 gets the PREPAREs (a certificate).
    for id in 1..4 {
        let message = w.pre_prepare((1, 0), (0, 0, 1), y.clone());
        w.deliver(old, peer(1, id), message);
    }
    w.pump(|_, to, message| !(to == holder && matches!(message, SiteMessage::Prepare(_))));
    // lv 1: every member votes; the first bundle misses replica 3's report.
    for id in 0..4 {
        w.feed(peer(1, id), SiteInput::Timer(SiteTimer::Local));
    }
    w.pump(|from, _, message| from == holder && matches!(message, SiteMessage::Report(_)));
    assert_eq!(w.replica(me).local_view(), 1, "replica 1 represents the leader site");
    let first = w.request(1, 1, &put(1), false);
    let start = w.trace.len();
    w.feed(me, SiteInput::Client(first));
    w.pump(|_, _, message| matches!(message, SiteMessage::PrePrepare { .. }));
    let before = pre_prepared_by(&w.trace[start..], me);
    assert_eq!(before.len(), 1, "one PRE-PREPARE, lost: {before:?}");
    assert_eq!(before[0].0, 1);
    assert_ne!(before[0].1, y.digest());

    w.restart(me, false);
    let start = w.trace.len();
    w.feed(me, SiteInput::Timer(SiteTimer::Status));
    // The second bundle misses replica 0's report instead, and holds replica 3's.
    w.pump(|from, _, message| from == old && matches!(message, SiteMessage::Report(_)));
    let after = pre_prepared_by(&w.trace[start..], me);
    for (seq, digest) in &after {
        assert!(*seq != 1 || *digest == before[0].1, "seq 1 pre-prepared with a second batch: {after:?}");
    }
}

/// TS1, GV3 across a restart: site 2's representative (member 0, local view 0)
/// preinstalls global view 1, as the new leader site, and shares ARU(2, gv 1, lv 0, aru 1).
/// Back from its records (its shares and executed batches before its views), it never
/// shares a second ARU value in that slot. (Found by review: replaying the views first
/// shared ARU at aru 0.)
#[test]
fn ts1_a_restarted_leader_representative_shares_one_aru_per_slot() {
    use bulwark_framework::steward::payload::SitePayload;
    use bulwark_framework::ClusterId;
    let mut w = World::new(3, params());
    let update = w.request(1, 1, &put(1), false);
    w.feed(peer(1, 0), SiteInput::Client(update));
    w.run();
    assert_eq!(w.replica(peer(2, 0)).aru(), SeqNum(1));
    for s in [2, 3] {
        for id in 0..4 {
            w.feed(peer(s, id), SiteInput::Timer(SiteTimer::Global));
        }
    }
    w.pump(|from, to, _| from.cluster == ClusterId(1) || to.cluster == ClusterId(1));
    let me = peer(2, 0);
    assert_eq!(w.replica(me).global_view(), 1);
    let aru = |aru| SitePayload::Aru { site: ClusterId(2), gv: 1, lv: 0, aru: SeqNum(aru) };
    assert!(sharers(&w.trace, aru(1)).contains(&me), "shared ARU at aru 1 before the crash");

    w.restart(me, false);
    assert_eq!(w.replica(me).aru(), SeqNum(1), "back at aru 1");
    let start = w.trace.len();
    for _ in 0..3 {
        w.feed(me, SiteInput::Timer(SiteTimer::Status));
    }
    let second = sharers(&w.trace[start..], aru(0));
    assert!(second.is_empty(), "ARU(gv 1, lv 0) shared again with aru 0 after aru 1: {second:?}");
}

/// W3 (BatchBound) across a restart: a leader-site replica prepared batch A at `(0, 0, 1)`.
/// Live or restarted (its PREPARE restored without the PRE-PREPARE), it refuses A again at
/// seq 2 in the same views. (Found by review: the restarted one prepared it.)
#[test]
fn w3_a_restarted_replica_prepares_one_batch_at_one_sequence_number() {
    for restart in [false, true] {
        let mut w = World::new(3, params());
        let (representative, me) = (peer(1, 0), peer(1, 1));
        let a = w.batch(1, T0);
        let message = w.pre_prepare((1, 0), (0, 0, 1), a.clone());
        w.deliver(representative, me, message);
        if restart {
            w.restart(me, false);
        }
        let start = w.trace.len();
        let message = w.pre_prepare((1, 0), (0, 0, 2), a.clone());
        w.deliver(representative, me, message);
        let out = &w.trace[start..];
        assert!(prepares_sent(out, me).is_empty(), "restart {restart}: A prepared at seq 2 as well: {:?}", sends(out));
    }
}

/// LV2 across a restart: replica 1 holds the only prepare certificate for A at seq 1
/// (lv 0), becomes the representative of lv 1 and crashes before any report arrives. Back
/// from its records, it gathers again with its certificates restored: its own report binds
/// A, and seq 1 carries A, live or restarted. (Found by review: replaying the views first
/// reported nothing and put a fresh batch at seq 1.)
#[test]
fn lv2_a_restarted_representative_reports_its_own_certificates() {
    for restart in [false, true] {
        let mut w = World::new(3, params());
        let me = peer(1, 1);
        let a = w.batch(1, T0);
        let message = w.pre_prepare((1, 0), (0, 0, 1), a.clone());
        w.deliver(peer(1, 0), me, message);
        for id in [2, 3] {
            let message = w.prepare((1, id), (0, 0, 1), a.digest());
            w.deliver(peer(1, id), me, message);
        }
        w.queue.clear();
        for id in 0..4 {
            w.feed(peer(1, id), SiteInput::Timer(SiteTimer::Local));
        }
        w.pump(|_, _, message| matches!(message, SiteMessage::Report(_) | SiteMessage::ConstraintRequest { .. }));
        assert_eq!(w.replica(me).local_view(), 1);

        if restart {
            w.restart(me, false);
        }
        let start = w.trace.len();
        w.feed(me, SiteInput::Timer(SiteTimer::Status));
        w.pump(|_, _, _| false);
        let second = w.request(1, 2, &put(2), false);
        w.feed(me, SiteInput::Client(second));
        w.pump(|_, _, _| false);
        let at_one: Vec<_> = pre_prepared_by(&w.trace[start..], me).into_iter().filter(|(seq, _)| *seq == 1).collect();
        assert!(
            at_one.iter().all(|(_, d)| *d == a.digest()) && !at_one.is_empty(),
            "restart {restart}: seq 1 must carry A: {at_one:?}"
        );
    }
}

/// GV5, GV6 across a restart: a member of the leader site of global view 1 restarts after
/// its site adopted the GLOBAL-CONSTRAINTs. It adopts again those it recorded (with the ARU
/// they answer) and prepares again, live or restarted. (Found by review: unrecorded, the
/// bundle was never sent again and the member prepared nothing for the rest of the view.)
#[test]
fn gv5_gv6_a_restarted_leader_site_member_is_globally_constrained_again() {
    use bulwark_framework::ClusterId;
    for restart in [false, true] {
        let mut w = World::new(3, params());
        let update = w.request(1, 1, &put(1), false);
        w.feed(peer(1, 0), SiteInput::Client(update));
        w.run();
        for s in [2, 3] {
            for id in 0..4 {
                w.feed(peer(s, id), SiteInput::Timer(SiteTimer::Global));
            }
        }
        let cut =
            |from: PeerId, to: PeerId, _: &SiteMessage<S>| from.cluster == ClusterId(1) || to.cluster == ClusterId(1);
        w.pump(cut);
        let me = peer(2, 1);
        assert_eq!(w.replica(me).global_view(), 1);
        if restart {
            w.restart(me, false);
        }
        let start = w.trace.len();
        for round in 0..3u8 {
            let update = w.request(2, 2 + round, &put(2 + round), false);
            w.feed(peer(2, 0), SiteInput::Client(update));
            w.pump(cut);
            for s in [2, 3] {
                for id in 0..4 {
                    w.feed(peer(s, id), SiteInput::Timer(SiteTimer::Status));
                }
            }
            w.pump(cut);
        }
        assert!(w.replica(peer(2, 0)).aru() > SeqNum(1), "the site orders");
        assert!(!prepares_sent(&w.trace[start..], me).is_empty(), "restart {restart}: {me} prepares nothing");
    }
}
