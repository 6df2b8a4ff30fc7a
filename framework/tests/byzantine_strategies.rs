//! The hardening issue's Byzantine strategies, one scenario each, named after the rules they
//! attack (PBFT.md): an equivocating voter (N4, N5, PF7), a flood of useless messages (C5,
//! VC6, C3, bounded memory), replays of old views' messages (N1.b, N4, VC6, VC15), bad
//! certificates (M6, VC10, VC15, C3), conflicting checkpoints (C3, ST1, I5) and Byzantine
//! clients (R1, R3, R4, CX3, E2, I11). Each run is checked by the simulator's checker and
//! must complete every correct client's request with all correct replicas at one state;
//! each test also checks that the attack happened (messages sent, refusals counted), so
//! that a strategy that does nothing cannot pass for a defence that works.

mod common;

use bulwark_crypto::Digest;
use bulwark_framework::messages::{Checkpoint, Message, PrePrepare};
use bulwark_framework::sim::byzantine::{ByzantineAction, ByzantineReplica, Strategy};
use bulwark_framework::sim::byzantine_client::{ByzantineClientSpec, ClientAttack};
use bulwark_framework::sim::{replica_key, Isolation, SimConfig, SimReport};
use bulwark_framework::verify::{verify_message, Refusal, RefusalKind};
use bulwark_framework::RoleRefusal;
use bulwark_framework::{ClusterId, Instant, Membership, ProtocolParams, ReplicaId, SeqNum, View};
use std::sync::Arc;
use std::time::Duration;
use strum::VariantArray;

fn config(seed: u64, replicas: usize) -> SimConfig {
    let mut config = SimConfig::new(seed, replicas);
    config.params = ProtocolParams { view_change_timeout_us: 300_000, ..config.params };
    config.time_limit = Duration::from_secs(120);
    config
}

/// Sum over the correct replicas of the role refusals with this reason.
fn refused(report: &SimReport, reason: RoleRefusal) -> u64 {
    report.metrics.values().map(|m| m.refused.get(&reason).copied().unwrap_or(0)).sum()
}

fn sent_by(report: &SimReport, replica: ReplicaId) -> u64 {
    report.byzantine_messages_sent.get(&replica).copied().unwrap_or(0)
}

#[test]
fn every_strategy_and_client_attack_name_names_it() {
    for strategy in Strategy::VARIANTS {
        assert_eq!(strategy.name().parse(), Ok(*strategy));
    }
    let names: std::collections::BTreeSet<&str> = Strategy::VARIANTS.iter().map(|s| s.name()).collect();
    assert_eq!(names.len(), Strategy::VARIANTS.len(), "two strategies share a name");
    // The names the README, the benchmark tables and replay commands use.
    let names: Vec<&str> = Strategy::VARIANTS.iter().map(|s| s.name()).collect();
    assert_eq!(
        names,
        [
            "silent",
            "equivocating-primary",
            "skipping-primary",
            "slow-primary",
            "corrupt-state",
            "colluder",
            "bad-new-view",
            "equivocating-voter",
            "flood",
            "replay",
            "bad-certificate",
            "conflicting-checkpoint",
        ]
    );
    let error = "loud".parse::<Strategy>().unwrap_err();
    assert!(error.starts_with(r#"unknown strategy "loud"; one of: silent, equivocating-primary, "#), "{error}");
    let names: Vec<&str> = ClientAttack::VARIANTS.iter().map(|a| a.name()).collect();
    assert_eq!(names, ["bad-signatures", "partial-delivery", "conflicting-requests", "request-flood"]);
    for attack in ClientAttack::VARIANTS {
        assert_eq!(attack.name().parse(), Ok(*attack));
    }
}

/// N4, N5, M6, PF7: a backup that votes for a digest made up for each peer, then for the
/// real one, and for digests nobody proposed at the next sequence number. A correct replica
/// keeps one vote per signer (the second is refused and counted), prepares and commits only
/// on `2f` / `2f + 1` matching votes, and the made-up ones never count toward a
/// certificate: safe, and the three correct replicas order everything.
#[test]
fn n4_n5_pf7_an_equivocating_voter_never_counts_twice_and_cannot_split_a_certificate() {
    let mut conflicting = 0;
    for seed in common::seeds(1_100, 8) {
        let mut config = config(seed, 4);
        config.byzantine = vec![(ReplicaId(3), Strategy::EquivocatingVoter)];
        config.network.duplicate_rate = 0.1;
        let report = common::run_kv(config);
        common::assert_safe_and_converged(&report);
        assert!(sent_by(&report, ReplicaId(3)) > 0, "the equivocating voter sent nothing: {report}");
        conflicting +=
            refused(&report, RoleRefusal::ConflictingPrepare) + refused(&report, RoleRefusal::ConflictingCommit);
    }
    assert!(conflicting > 0, "no correct replica ever saw a second, conflicting vote: the attack did not happen");
}

/// C5, VC6, C3, ST, status: a replica that sends valid-signed but useless messages at full
/// rate (votes beyond and below the window and for far views, STATUS, CHECKPOINTs nobody
/// reached, BATCH-REQs and STATE-REQs for nothing, VIEW-CHANGEs for ever higher views).
/// Every bounded structure of every correct replica stays within its bound (the per-sender
/// buffer for later views is made small here, so that the flood fills it and the bound is
/// seen to hold), and the cluster stays live.
#[test]
fn a_flood_of_useless_messages_keeps_memory_bounded_and_the_cluster_live() {
    for seed in common::seeds(1_200, 3) {
        let mut config = config(seed, 4);
        config.byzantine = vec![(ReplicaId(3), Strategy::Flood)];
        config.requests_per_client = 150;
        config.params.future_messages_per_sender_max = 16;
        let params = config.params.clone();
        let report = common::run_kv(config);
        common::assert_safe_and_converged(&report);
        let sent = sent_by(&report, ReplicaId(3));
        assert!(sent > 300, "the flood sent only {sent} messages: {report}");
        assert!(refused(&report, RoleRefusal::BeyondHighWatermark) > 0, "{report}");
        assert!(
            refused(&report, RoleRefusal::LaterViewBufferFull) > 0,
            "the later-view buffer was never full: {report}"
        );
        let peak = report.peak_footprint;
        let n = 4;
        let window = params.watermark_window as usize;
        let per_sender = params.future_messages_per_sender_max;
        let checkpoints_open = (params.watermark_window / params.checkpoint_interval) as usize + 2;
        assert!(peak.later_view_messages <= n * per_sender, "later-view buffer grew: {peak:?}");
        assert!(peak.future_messages <= n * per_sender, "next-window buffer grew: {peak:?}");
        assert!(peak.checkpoint_votes <= n * checkpoints_open, "checkpoint votes grew: {peak:?}");
        assert!(peak.log_slots <= 2 * window, "log grew: {peak:?}");
        assert!(peak.view_changes_held <= n, "view-changes held grew: {peak:?}");
        println!("seed {seed}: {sent} flood messages, peak footprint {peak:?}");
    }
}

/// N1.b, N4, VC6, VC15, VC8: a replica that records what it received (and its own votes)
/// and, once the cluster moved to a later view, re-sends the PRE-PREPAREs, PREPAREs,
/// COMMITs, VIEW-CHANGEs, NEW-VIEWs and CHECKPOINTs of earlier views. The primary of view 0
/// is cut off for a while so that a view change happens. Old-view messages are refused by
/// view, never acted on; the cluster is safe and live in the new view.
#[test]
fn replayed_messages_from_earlier_views_are_refused_by_view() {
    let mut refusals = 0;
    for seed in common::seeds(1_300, 6) {
        let mut config = config(seed, 4);
        config.byzantine = vec![(ReplicaId(3), Strategy::Replay)];
        config.requests_per_client = 80;
        config.isolations = vec![Isolation {
            replica: ReplicaId(0),
            from: Instant::from_micros(30_000),
            until: Instant::from_micros(900_000),
        }];
        let report = common::run_kv(config);
        common::assert_safe_and_converged(&report);
        let view = report.views.values().map(|(view, _)| *view).max().unwrap_or_default();
        assert!(view >= View(1), "no view change happened, nothing was replayed: {report}");
        assert!(sent_by(&report, ReplicaId(3)) > 0, "{report}");
        refusals += refused(&report, RoleRefusal::NormalCaseForOlderView)
            + refused(&report, RoleRefusal::NewViewForViewEntered)
            + refused(&report, RoleRefusal::ViewChangeForViewEntered);
    }
    assert!(refusals > 0, "no replayed message from an earlier view was ever refused: the attack did not happen");
}

/// M6, VC10, VC15, C3, at the edge: every certificate the bad-certificate strategy forges
/// — a checkpoint proof with one signer three times, one whose checkpoints disagree on the
/// state digest, one of `f + 1` checkpoints, a prepared certificate whose prepares are one
/// signer's, one whose prepares are for another digest, and a NEW-VIEW whose `V` names one
/// sender three times — is refused by edge verification as a bad certificate, signature
/// valid notwithstanding.
#[test]
fn m6_vc10_vc15_every_forged_certificate_is_refused_at_the_edge() {
    let seed = 7;
    let keys: Vec<_> = (0..4).map(|i| replica_key(seed, ReplicaId(i))).collect();
    let params = SimConfig::new(seed, 4).params;
    let members = keys.iter().map(|k| k.public()).collect();
    let cluster = Arc::new(Membership::numbered(ClusterId(1), members, params).unwrap());
    let scope = cluster.scope();
    let mut byzantine =
        ByzantineReplica::new(ReplicaId(3), replica_key(seed, ReplicaId(3)), cluster.clone(), Strategy::BadCertificate);
    // Material: a real PRE-PREPARE of the primary of view 0 and real CHECKPOINTs of two peers.
    let digest = bulwark_framework::roles::view_change::null_digest();
    let pre_prepare = scope.sign(PrePrepare { view: View(0), seq: SeqNum(1), digest }, &keys[0]).into_signed();
    let material = [
        Message::PrePrepare(pre_prepare, Default::default()),
        Message::Checkpoint(
            scope
                .sign(
                    Checkpoint { seq: SeqNum(16), state_digest: Digest::of(b"state"), replica: ReplicaId(0) },
                    &keys[0],
                )
                .into_signed(),
        ),
        Message::Checkpoint(
            scope
                .sign(
                    Checkpoint { seq: SeqNum(16), state_digest: Digest::of(b"state"), replica: ReplicaId(1) },
                    &keys[1],
                )
                .into_signed(),
        ),
    ];
    let mut now = Instant::ZERO;
    let mut timer = None;
    let mut forged = Vec::new();
    let feed =
        |byzantine: &mut ByzantineReplica, input, now, forged: &mut Vec<Message>, timer: &mut Option<Instant>| {
            for action in byzantine.handle(input, now) {
                match action {
                    ByzantineAction::Send { to: ReplicaId(0), message } => forged.push(message),
                    ByzantineAction::Send { .. } => {}
                    ByzantineAction::SetTimer { at, .. } => *timer = Some(at),
                }
            }
        };
    for message in material {
        let verified = verify_message(message, &cluster).expect("the material is genuine");
        feed(&mut byzantine, bulwark_framework::Input::Message(verified), now, &mut forged, &mut timer);
    }
    for _ in 0..12 {
        now = timer.expect("the strategy keeps its timer armed");
        feed(
            &mut byzantine,
            bulwark_framework::Input::Timer(bulwark_framework::roles::TimerKind::Status),
            now,
            &mut forged,
            &mut timer,
        );
    }
    assert!(forged.len() >= 12, "only {} forged certificates in 12 ticks", forged.len());
    let mut reasons = std::collections::BTreeSet::new();
    for message in forged {
        match verify_message(message, &cluster) {
            Err(Refusal::BadCertificate { reason, .. }) => {
                reasons.insert(reason);
            }
            other => panic!("a forged certificate was not refused as one: {other:?}"),
        }
    }
    assert!(reasons.len() >= 6, "only these ways of being wrong were tried: {reasons:?}");
}

/// The same strategy in a running cluster (n = 4, and n = 7 with a view change): the
/// forged certificates are refused and counted, nobody crashes or stalls.
#[test]
fn bad_certificates_are_refused_and_counted_and_nobody_stalls() {
    for (seed, replicas) in common::seeds(1_400, 4).into_iter().zip([4, 7, 4, 7]) {
        let mut config = config(seed, replicas);
        let byzantine = ReplicaId(replicas as u32 - 1);
        config.byzantine = vec![(byzantine, Strategy::BadCertificate)];
        config.requests_per_client = 80;
        if replicas == 7 {
            config.byzantine.push((ReplicaId(0), Strategy::Silent));
        }
        let report = common::run_kv(config);
        common::assert_safe_and_converged(&report);
        assert!(
            report.refused_at_edge.get(RefusalKind::BadCertificate) > 0,
            "no forged certificate was refused: {report}"
        );
        assert!(sent_by(&report, byzantine) > 0, "{report}");
    }
}

/// C3, C7, ST1, I5: a replica signs CHECKPOINTs with a wrong state digest for every real
/// checkpoint sequence number, a different one to each peer (and the right one after it to
/// half of them, refused as a second vote). Proofs form from the correct replicas' matching
/// checkpoints only; a replica cut off for a while catches up by state transfer from a real
/// proof; the state digests agree.
#[test]
fn conflicting_checkpoints_never_form_a_proof_and_state_transfer_still_works() {
    let mut conflicting = 0;
    for seed in common::seeds(1_500, 4) {
        let mut config = config(seed, 7);
        config.byzantine = vec![(ReplicaId(6), Strategy::ConflictingCheckpoint)];
        config.requests_per_client = 150;
        config.isolations = vec![Isolation {
            replica: ReplicaId(5),
            from: Instant::from_micros(5_000),
            until: Instant::from_micros(400_000),
        }];
        let report = common::run_kv(config);
        common::assert_safe_and_converged(&report);
        assert!(sent_by(&report, ReplicaId(6)) > 0, "{report}");
        assert!(report.stable_checkpoints.values().all(|s| s.0 > 0), "no checkpoint became stable: {report}");
        assert!(report.metrics[&ReplicaId(5)].state_transfers >= 1, "no state transfer: {report}");
        conflicting += refused(&report, RoleRefusal::ConflictingCheckpoint);
    }
    assert!(conflicting > 0, "no second, conflicting checkpoint was ever refused: the attack did not happen");
}

fn with_byzantine_client(seed: u64, attack: ClientAttack, requests_per_client: u64) -> SimReport {
    let mut config = config(seed, 4);
    config.requests_per_client = requests_per_client;
    config.byzantine_clients = vec![ByzantineClientSpec { attack, until: Instant::from_micros(1_000_000) }];
    let report = common::run_kv(config);
    common::assert_safe_and_converged(&report);
    assert!(report.byzantine_client_messages_sent > 0, "{report}");
    report
}

fn executed_requests(report: &SimReport) -> u64 {
    report.metrics.values().map(|m| m.requests_executed).min().unwrap_or(0)
}

/// R1, N1.e: requests signed by another key than they name, with a flipped bit, or not
/// signed at all, sent to every replica: each is refused at the edge and counted; none is
/// executed; correct clients are served.
#[test]
fn r1_requests_with_bad_signatures_are_refused_at_the_edge() {
    for seed in common::seeds(1_600, 3) {
        let report = with_byzantine_client(seed, ClientAttack::BadSignatures, 60);
        assert!(report.refused_at_edge.get(RefusalKind::BadSignature) > 0, "{report}");
        assert_eq!(executed_requests(&report), report.requests_expected, "a forged request executed: {report}");
    }
}

/// R3, VC1: correctly signed requests each sent to one replica only. A backup that alone
/// holds one relays it to the primary, which orders it: they execute (so correct replicas
/// execute more requests than the correct clients sent) and nobody is left waiting.
#[test]
fn r3_requests_sent_to_one_replica_only_are_relayed_and_executed() {
    for seed in common::seeds(1_700, 3) {
        let report = with_byzantine_client(seed, ClientAttack::PartialDelivery, 60);
        assert!(executed_requests(&report) > report.requests_expected, "no partial request executed: {report}");
    }
}

/// R4, P5, CX3, E2, I11: one timestamp with a different operation for each replica. Each
/// replica holds its own request under one `(c, t)`; at most one is executed, the same one
/// everywhere (the checker's I11 and equal state digests), and nobody waits forever for the
/// others.
#[test]
fn cx3_e2_conflicting_requests_under_one_timestamp_execute_once_and_alike() {
    for seed in common::seeds(1_800, 3) {
        let report = with_byzantine_client(seed, ClientAttack::ConflictingRequests, 60);
        assert!(executed_requests(&report) > report.requests_expected, "no conflicting request executed: {report}");
    }
}

/// R4, CX3: a client sending four fresh requests per 5 ms to every replica, and old ones
/// again, while the correct clients' 1,200 requests run: its requests are ordered or shed at bounded queues, the
/// old ones answered from the client table or refused as below the window, and the correct
/// clients are served.
#[test]
fn r4_cx3_a_request_flood_is_absorbed_and_correct_clients_are_served() {
    for seed in common::seeds(1_900, 3) {
        let report = with_byzantine_client(seed, ClientAttack::RequestFlood, 300);
        assert!(executed_requests(&report) > report.requests_expected + 100, "the flood was not ordered: {report}");
        let peak = report.peak_footprint;
        assert!(peak.queued_requests <= SimConfig::new(seed, 4).params.request_queue_max, "{peak:?}");
    }
}

/// M6, N6, PF7 (campaign seed 61, found by the equivocating voter): replica 2 sends replica 1
/// a made-up COMMIT first and everybody else its real one; the primary crashes early and
/// comes back from its records, having executed slot 1 on a certificate without signing a
/// COMMIT of its own. The commit certificates the others forward to replica 1 hold replica
/// 2's real COMMIT, which replica 1 used to refuse as a second vote, so it never reached
/// `2f + 1` for slot 1, never executed anything and no checkpoint ever became stable. A
/// conflicting vote that completes a certificate now counts instead of the first.
#[test]
fn m6_a_forwarded_certificate_completes_despite_an_earlier_conflicting_vote_of_its_signer() {
    use bulwark_framework::sim::{NetworkModel, Restart};
    let mut config = config(61, 4);
    config.byzantine = vec![(ReplicaId(2), Strategy::EquivocatingVoter)];
    config.clients = 3;
    config.requests_per_client = 25;
    config.client_concurrency = 1;
    config.params.in_flight_batches_max = 5;
    config.time_limit = Duration::from_secs(30);
    config.network = NetworkModel {
        delay_min_us: 100,
        delay_max_us: 1_518,
        drop_rate: 0.129_804_746_932_824_18,
        duplicate_rate: 0.305_521_597_782_245_2,
        faults_until: Some(Instant::from_micros(350_963)),
        ..NetworkModel::default()
    };
    config.restarts = vec![Restart {
        replica: ReplicaId(0),
        crash_at: Instant::from_micros(19_876),
        restart_at: Instant::from_micros(329_030),
        torn: false,
    }];
    let report = common::run_kv(config);
    common::assert_safe_and_converged(&report);
    assert!(report.final_states[&ReplicaId(1)].0 > SeqNum(0), "replica 1 executed nothing: {report}");
}

/// N3, status retransmission (campaign seed 637, exposed by the new draws): the
/// equivocating primary gives replicas 1 and 2 one pre-prepare and its COMMIT for it, and
/// replica 3 another. Replicas 1 and 2 commit with the primary's COMMIT and every request
/// completes, so no request timer runs; replica 3 holds the other pre-prepare and asked
/// for help by STATUS, but peers sent it only the commit certificate (not the pre-prepare,
/// as it reported having one), which never matches its slot: it executed nothing, for
/// good. A replica that has a slot committed now also sends its pre-prepare to a peer that
/// has not; the peer sees the equivocation (N3), the view changes, and all three agree.
#[test]
fn n3_a_peer_holding_the_other_pre_prepare_of_a_committed_slot_is_sent_the_committed_one() {
    use bulwark_framework::sim::{NetworkModel, Restart};
    let mut config = config(637, 4);
    config.byzantine = vec![(ReplicaId(0), Strategy::EquivocatingPrimary)];
    config.clients = 2;
    config.requests_per_client = 23;
    config.client_concurrency = 5;
    config.params.in_flight_batches_max = 4;
    config.time_limit = Duration::from_secs(30);
    config.network = NetworkModel {
        delay_min_us: 100,
        delay_max_us: 2_102,
        drop_rate: 0.001_716_141_822_208_694_4,
        duplicate_rate: 0.416_906_091_024_637_27,
        faults_until: Some(Instant::from_micros(1_255_895)),
        ..NetworkModel::default()
    };
    config.restarts = vec![Restart {
        replica: ReplicaId(1),
        crash_at: Instant::from_micros(716_407),
        restart_at: Instant::from_micros(985_224),
        torn: false,
    }];
    let report = common::run_kv(config);
    common::assert_safe_and_converged(&report);
    assert!(report.final_states[&ReplicaId(3)].0 > SeqNum(0), "replica 3 executed nothing: {report}");
}
