//! Checkpoints (C1, C3, C4): the collector decides stability from `2f + 1` matching
//! CHECKPOINTs, also across the hop from a replica to its collector run apart.

use crate::fixture::*;
use bulwark_crypto::Digest;
use bulwark_framework::messages::VerifiedMessage;
use bulwark_framework::roles::checkpoint::{CheckpointCollector, CollectorInput, CollectorOutput};
use bulwark_framework::roles::{Action, ReplicaEvent};
use bulwark_framework::{Input, Instant, ReplicaId, SeqNum};

/// What a replica hands its checkpoint collector, run as a role apart.
fn handed_to_collector(actions: &[Action]) -> Vec<CollectorInput> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::ToCheckpoints(input) => Some(input.clone()),
            _ => None,
        })
        .collect()
}

/// C3: 2f+1 matching CHECKPOINTs from distinct replicas make a checkpoint stable; 2f do
/// not, nor do mismatching digests.
#[test]
fn c3_checkpoint_is_stable_with_2f_plus_1_matching_messages() {
    let f = fixture();
    let mut collector = CheckpointCollector::new(f.handle());
    let (good, bad) = (Digest::of(b"state"), Digest::of(b"forged"));
    assert_eq!(collector.on_checkpoint(f.checkpoint(0, 4, good)), Ok(None));
    assert_eq!(collector.on_checkpoint(f.checkpoint(1, 4, bad)), Ok(None));
    assert_eq!(collector.on_checkpoint(f.checkpoint(2, 4, good)), Ok(None));
    assert_eq!(collector.on_checkpoint(f.checkpoint(2, 4, good)), Ok(None), "duplicate");
    let stable = collector.on_checkpoint(f.checkpoint(3, 4, good)).unwrap().expect("stable");
    assert_eq!((stable.seq, stable.state_digest, stable.proof.len()), (SeqNum(4), good, 3));
    assert_eq!(collector.pending_len(), 0, "C4: messages at the stable checkpoint are dropped");
    assert!(collector.on_checkpoint(f.checkpoint(1, 4, good)).is_err(), "at the stable one");
}

/// C1: checkpoints only at multiples of K; a member cannot open unbounded checkpoints.
#[test]
fn c1_checkpoints_only_at_multiples_of_k_and_bounded_per_member() {
    let f = fixture();
    let mut collector = CheckpointCollector::new(f.handle());
    assert!(collector.on_checkpoint(f.checkpoint(1, 5, Digest::of(b"x"))).is_err());
    for seq in (4..=400).step_by(4) {
        let _ = collector.on_checkpoint(f.checkpoint(1, seq, Digest::of(b"x")));
    }
    // L/K + 2 = 4 open checkpoints at most for one member.
    assert!(collector.pending_len() <= 4, "{}", collector.pending_len());
}

/// C3 and C4 across the hop between roles: a replica whose checkpoint collector runs
/// apart hands it every CHECKPOINT (its own included) and moves its watermarks only on the
/// collector's answer; an answer overtaken by a newer stable checkpoint is ignored, since
/// the low watermark only moves up.
#[test]
fn c3_c4_a_collector_run_apart_decides_stability_and_a_late_answer_moves_nothing_back() {
    let f = fixture();
    let mut replica = f.bare_replica(1);
    let mut collector = CheckpointCollector::new(f.handle());
    let mut handed = Vec::new();
    for seq in 1..=8 {
        handed.extend(handed_to_collector(&commit_at(&f, &mut replica, seq, &f.batch(&[seq]))));
    }
    let own: Vec<(SeqNum, Digest)> = handed
        .iter()
        .map(|input| match input {
            CollectorInput::Checkpoint(c) if c.replica == ReplicaId(1) => (c.seq, c.state_digest),
            other => panic!("only its own checkpoints so far: {other:?}"),
        })
        .collect();
    assert_eq!(own.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![SeqNum(4), SeqNum(8)], "C1");
    for (seq, digest) in &own {
        for peer in [0, 2] {
            let message = VerifiedMessage::Checkpoint(f.checkpoint(peer, seq.0, *digest));
            let actions = replica.handle(Input::Message(message), Instant(0));
            assert!(!actions.iter().any(|a| matches!(a, Action::Event(ReplicaEvent::Stable { .. }))));
            handed.extend(handed_to_collector(&actions));
        }
    }
    assert_eq!(handed.len(), 6, "every CHECKPOINT goes to the collector");
    assert_eq!(replica.stable(), SeqNum(0), "only the collector's answer makes a checkpoint stable");
    let answers: Vec<CollectorOutput> =
        handed.into_iter().flat_map(|input| collector.handle(input, Instant(0))).collect();
    let stable_at: Vec<SeqNum> = answers
        .iter()
        .map(|answer| match answer {
            CollectorOutput::Stable(stable) => stable.seq,
            CollectorOutput::Refused(reason) => panic!("refused: {reason}"),
        })
        .collect();
    assert_eq!(stable_at, vec![SeqNum(4), SeqNum(8)]);
    let (first, newest) = (answers[0].clone(), answers[1].clone());
    let actions = replica.handle(Input::Checkpoints(newest), Instant(0));
    assert!(actions.iter().any(|a| matches!(a, Action::Event(ReplicaEvent::Stable { seq: SeqNum(8), .. }))));
    assert_eq!(replica.stable(), SeqNum(8), "C4");
    let actions = replica.handle(Input::Checkpoints(first), Instant(0));
    assert_eq!(replica.stable(), SeqNum(8), "the low watermark never moves down");
    assert!(!actions.iter().any(|a| matches!(a, Action::Event(ReplicaEvent::Stable { .. }) | Action::Persist(_))));
}
