//! A change of representative at the leader site (docs/STEWARD.md LV1–LV3): the new
//! representative gathers signed reports, every replica checks the bundle and adopts its
//! union, and what was bound is proposed again, never another batch for the same
//! `(gv, seq)`. Driven by hand through the world of `steward_world`.

mod steward_world;

use steward_world::*;

use bulwark_crypto::{Digest, KeyPair};
use bulwark_framework::batch::Batch;
use bulwark_framework::steward::constraint::{
    ConstraintContext, ConstraintRefusal, ConstraintWork, Evidence, Mode, Report,
};
use bulwark_framework::steward::messages::SiteMessage;
use bulwark_framework::steward::payload::SitePayload;
use bulwark_framework::steward::sequencing::{PrepareCertificate, SequencingRefusal};
use bulwark_framework::steward::site::{SiteInput, SiteOutput, SiteRefusal, SiteTimer};
use bulwark_framework::{ClusterId, PeerId, ReplicaId, SeqNum};
use std::sync::Arc;

/// The leader site's representative (replica 0) pre-prepared client 1's update at `seq` 1
/// and every replica of the site certified it, but every share was lost: no PROPOSAL
/// combined. Returns the world and the batch bound to `seq` 1.
fn certified_but_not_proposed() -> (World, Arc<Batch>) {
    let mut w = World::new(3, params());
    let update = w.request(1, 1, &put(1), false);
    w.feed(peer(1, 0), SiteInput::Client(update));
    w.pump(|_, _, message| matches!(message, SiteMessage::Share { .. }));
    let batches = pick(&w.trace, |_, o| match o {
        SiteOutput::ToSite(SiteMessage::PrePrepare { batch, .. }) => Some(batch.clone()),
        _ => None,
    });
    assert_eq!(batches.len(), 1, "one PRE-PREPARE");
    assert!(every_replica(3).all(|at| w.replica(at).aru() == SeqNum(0)), "nothing executed");
    (w, batches[0].clone())
}

/// Replica 0 of the leader site stops; `Local_T` expires at the others (LV1), and the
/// messages of the change of representative flow except those `lost` says.
fn replace_leader_representative(w: &mut World, lost: impl Fn(PeerId, PeerId, &SiteMessage<S>) -> bool) {
    for id in 1..4 {
        w.feed(peer(1, id), SiteInput::Timer(SiteTimer::Local));
    }
    let stopped = peer(1, 0);
    w.pump(|from, to, message| from == stopped || to == stopped || lost(from, to, message));
}

/// The `updates` of every PROPOSAL at `seq` among `out` (LV3, GI2: one binding only).
fn proposed_at(out: &[Out], seq: u64) -> Vec<(u64, Digest)> {
    pick(out, |_, o| match o {
        SiteOutput::To { message: SiteMessage::Proposal(proposal), .. } => match proposal.signed.payload {
            SitePayload::Proposal { lv, seq: s, updates, .. } if s.0 == seq => Some((lv, updates)),
            _ => None,
        },
        _ => None,
    })
}

/// LV1, LV2, LV3: the leader site's representative stops after a prepare certificate formed
/// but before any PROPOSAL combined. The others preinstall local view 1; its representative
/// (replica 1) asks for reports, bundles `2f + 1` of them, every replica adopts the union,
/// and replica 1 pre-prepares the same batch again in local view 1: the site signs the
/// PROPOSAL for it (TS1 allows the same binding again), every site executes it, and no
/// PROPOSAL for `seq` 1 binds anything else.
#[test]
fn lv2_lv3_a_new_leader_representative_rebuilds_the_bindings_and_proposes_them_again() {
    let (mut w, batch) = certified_but_not_proposed();
    let start = w.trace.len();
    replace_leader_representative(&mut w, |_, _, _| false);
    let out = &w.trace[start..];
    let kinds = sends(out);
    let requests: Vec<_> = kinds.iter().filter(|(kind, ..)| *kind == "ConstraintRequest").collect();
    assert_eq!(requests, vec![&("ConstraintRequest", peer(1, 1), None)], "the new representative asks");
    let mut reporters: Vec<PeerId> =
        kinds.iter().filter(|(kind, ..)| *kind == "Report").map(|(_, from, _)| *from).collect();
    reporters.sort();
    assert_eq!(reporters, vec![peer(1, 2), peer(1, 3)], "each live member reports once");
    let bundles = pick(out, |from, o| match o {
        SiteOutput::ToSite(SiteMessage::Constraint(reports)) => Some((from, reports.len())),
        _ => None,
    });
    assert_eq!(bundles, vec![(peer(1, 1), 3)], "2f + 1 reports, the representative's own included");
    assert!(refusals(out).is_empty(), "{:?}", refusals(out));
    let again = pick(out, |from, o| match o {
        SiteOutput::ToSite(SiteMessage::PrePrepare { vote, batch }) => {
            Some((from, vote.payload.lv, vote.payload.seq, batch.digest()))
        }
        _ => None,
    });
    assert_eq!(again, vec![(peer(1, 1), 1, SeqNum(1), batch.digest())], "the same batch, again, in lv 1");
    assert_eq!(proposed_at(&w.trace, 1), vec![(1, batch.digest()), (1, batch.digest())], "to sites 2 and 3");
    for at in every_replica(3).filter(|at| *at != peer(1, 0)) {
        assert_eq!(executed(&w.trace, at), vec![(1, batch.digest())], "{at} executed the bound batch");
        assert_eq!(w.replica(at).local_view_of(ClusterId(1)), 1, "{at} knows the new representative");
    }
}

/// LV3: a replica that lost the bundle refuses the new representative's PRE-PREPARE (not
/// constrained); it refuses bundles that do not check (too few reports, one member twice,
/// an altered report, evidence missing), ignores one sent by a replica that is not the
/// representative, adopts the genuine one, and then refuses a PRE-PREPARE binding another
/// batch to a sequence number the union binds, and a vote signed by another replica than
/// its link names. With the genuine PRE-PREPARE again, the site orders the bound batch.
#[test]
fn lv3_a_replica_refuses_a_bundle_that_does_not_check_and_a_pre_prepare_the_union_does_not_bind() {
    let (mut w, batch) = certified_but_not_proposed();
    let me = peer(1, 3);
    replace_leader_representative(&mut w, |_, to, m| to == me && matches!(m, SiteMessage::Constraint(_)));
    let not_constrained = SiteRefusal::Sequencing(SequencingRefusal::NotSequencing);
    assert!(refusals(&w.trace).contains(&not_constrained), "the PRE-PREPARE of lv 1 was refused");
    assert!(every_replica(1).all(|at| w.replica(at).aru() == SeqNum(0)), "no certificate without replica 3");
    let bundle = pick(&w.trace, |_, o| match o {
        SiteOutput::ToSite(SiteMessage::Constraint(reports)) => Some((**reports).clone()),
        _ => None,
    })
    .remove(0);
    let pre_prepare = pick(&w.trace, |_, o| match o {
        SiteOutput::ToSite(message @ SiteMessage::PrePrepare { .. }) => Some(message.clone()),
        _ => None,
    })
    .pop()
    .expect("the PRE-PREPARE of lv 1");
    w.queue.clear();

    let tampered: [(&str, Vec<Report<S>>, ConstraintRefusal); 4] = [
        ("two reports", bundle[..2].to_vec(), ConstraintRefusal::TooFewReports),
        ("a member twice", vec![bundle[0].clone(), bundle[1].clone(), bundle[0].clone()], ConstraintRefusal::BadReport),
        ("an altered report", altered(&bundle), ConstraintRefusal::BadReport),
        ("evidence missing", without_evidence(&bundle), ConstraintRefusal::BadEvidence),
    ];
    for (what, reports, refusal) in tampered {
        let out = w.deliver(peer(1, 1), me, SiteMessage::Constraint(Arc::new(reports)));
        assert_eq!(refusals(out), vec![SiteRefusal::Constraint(refusal)], "{what}");
    }
    let out = w.deliver(peer(1, 2), me, SiteMessage::Constraint(Arc::new(bundle.clone())));
    assert!(refusals(out).is_empty() && sends(out).is_empty(), "not from the representative: ignored");
    let out = w.deliver(peer(1, 1), me, SiteMessage::Constraint(Arc::new(bundle)));
    assert!(refusals(out).is_empty(), "{:?}", refusals(out));

    let other = w.batch(9, w.now.0);
    let out = w.deliver(peer(1, 1), me, w.pre_prepare((1, 1), (0, 1, 1), other.clone()));
    assert_eq!(refusals(out), vec![SiteRefusal::Sequencing(SequencingRefusal::SeqBound)], "the union binds seq 1");
    let forged = SiteMessage::Prepare(w.vote((1, 2), (0, 1, 1), batch.digest()));
    let out = w.deliver(peer(1, 1), me, forged);
    assert_eq!(refusals(out), vec![SiteRefusal::Sequencing(SequencingRefusal::BadSignature)], "2's vote on 1's link");

    let out = w.deliver(peer(1, 1), me, pre_prepare);
    let kept = "replica 2's PREPARE of lv 1, come before the bundle, still counts";
    assert_eq!(sends(out), vec![("Prepare", me, None), ("Share", me, None)], "{kept}");
    w.pump(|from, to, _| from == peer(1, 0) || to == peer(1, 0));
    for at in every_replica(3).filter(|at| *at != peer(1, 0)) {
        assert_eq!(executed(&w.trace, at), vec![(1, batch.digest())], "{at}");
    }
}

/// The first report with an entry, one entry's local view changed under its signature.
fn altered(bundle: &[Report<S>]) -> Vec<Report<S>> {
    let mut reports = bundle.to_vec();
    let report = reports.iter_mut().find(|r| !r.signed.payload.entries.is_empty()).expect("a report with an entry");
    report.signed.payload.entries[0].lv += 1;
    reports
}

/// The first report with an entry, its evidence removed (its signature still holds).
fn without_evidence(bundle: &[Report<S>]) -> Vec<Report<S>> {
    let mut reports = bundle.to_vec();
    let report = reports.iter_mut().find(|r| !r.signed.payload.entries.is_empty()).expect("a report with an entry");
    report.evidence.clear();
    reports
}

/// A prepare certificate of site 1 for `batch` at `(gv 0, lv, seq)`: the PRE-PREPARE of the
/// representative of `lv` and PREPAREs of the next two members.
fn certificate(w: &World, lv: u64, seq: u64, batch: &Arc<Batch>) -> PrepareCertificate {
    let voters = (0..3).map(|k| ((lv + k) % 4) as u32);
    let votes = voters.map(|id| w.vote((1, id), (0, lv, seq), batch.digest())).collect();
    PrepareCertificate { votes, batch: batch.clone() }
}

/// LV3's union, rule by rule: per sequence number a PROPOSAL beats a prepare certificate and
/// a later local view beats an earlier one; fewer than `2f + 1` reports is refused, and so
/// is a certificate short of `2f + 1` votes or whose first vote is not the representative's.
#[test]
fn lv3_the_union_prefers_a_proposal_then_the_latest_local_view() {
    let w = World::new(3, params());
    let (a, b, c, d) = (w.batch(1, T0), w.batch(2, T0), w.batch(3, T0), w.batch(4, T0));
    let membership = w.memberships[&ClusterId(1)].current();
    let key = |id: u8| KeyPair::from_seed(seed(1, id));
    let report = |id: u32, evidence: Vec<Evidence<S>>| {
        Report::<S>::new(&membership, (ReplicaId(id), &key(id as u8)), (0, 2, SeqNum(0)), evidence)
    };
    let reports = vec![
        report(
            1,
            vec![Evidence::Certificate(certificate(&w, 0, 1, &a)), Evidence::Certificate(certificate(&w, 0, 2, &b))],
        ),
        report(2, vec![Evidence::Certificate(certificate(&w, 1, 1, &c)), Evidence::Proposal(w.proposal(2, d.clone()))]),
        report(3, Vec::new()),
    ];
    let site_keys = w.keys.iter().map(|(site, (key, _))| (*site, key.clone())).collect();
    let context = ConstraintContext::<S> {
        mode: Mode::Local,
        membership: &membership,
        site: ClusterId(1),
        site_keys: &site_keys,
        views: (0, 2),
        base: SeqNum(0),
        window: 8,
    };
    let mut work = ConstraintWork::default();
    let union = context.union(&reports, &mut work).expect("a valid bundle");
    let chosen: Vec<(u64, Digest, bool)> =
        union.entries.iter().map(|(seq, e)| (seq.0, e.batch().digest(), matches!(e, Evidence::Proposal(_)))).collect();
    assert_eq!(chosen, vec![(1, c.digest(), false), (2, d.digest(), true)]);
    assert_eq!(work.site_signatures, 1, "the PROPOSAL's site signature, once");
    assert_eq!(context.union(&reports[..2], &mut work).err(), Some(ConstraintRefusal::TooFewReports));

    let mut short = certificate(&w, 0, 1, &a);
    short.votes.pop();
    let mut wrong_first = certificate(&w, 0, 1, &a);
    wrong_first.votes.rotate_left(1);
    for bad in [short, wrong_first] {
        let reports = vec![report(1, vec![Evidence::Certificate(bad)]), report(2, Vec::new()), report(3, Vec::new())];
        assert_eq!(context.union(&reports, &mut work).err(), Some(ConstraintRefusal::BadEvidence));
    }
}

/// LV1, bounded memory: a site whose representative is replaced again and again (here 40
/// times, `Local_T` fired by hand) holds no more state than after the first change: the
/// signer forgets the NEW-REP slots of local views before the preinstalled one, and the
/// replica its shares of NEW-REPs already preinstalled.
#[test]
fn lv1_many_changes_of_representative_hold_bounded_state() {
    let mut w = World::new(3, params());
    let mut held_after_first = 0;
    for change in 1..=40u64 {
        for at in (0..4).map(|id| peer(2, id)) {
            w.feed(at, SiteInput::Timer(SiteTimer::Local));
        }
        w.run();
        for at in (0..4).map(|id| peer(2, id)) {
            assert_eq!(w.replica(at).local_view(), change, "{at}");
        }
        let held = (0..4).map(|id| w.replica(peer(2, id)).held() + w.replica(peer(2, id)).signer_slots()).max();
        let held = held.unwrap_or(0);
        if change == 1 {
            held_after_first = held;
        }
        let first = held_after_first;
        assert!(held <= first, "change {change}: {held} entries held, {first} after the first");
    }
}
