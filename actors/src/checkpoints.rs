//! The checkpoint collector actor: a thin shell around the framework's
//! [`CheckpointCollector`] role.
//!
//! Its replica's actor hands it every CHECKPOINT (the replica's own and its peers', once
//! verified) and every stable checkpoint learned elsewhere ([`Collect`]); what the collector
//! answers, a new stable checkpoint or a refusal, goes back to the replica's actor as a
//! [`Collected`]. It makes no decision of its own. The simulator runs the same role apart
//! from its replica in the same way (`NetworkModel::role_hop_max_us`), so the delay and
//! interleaving of this hop are tested there.

use crate::clock::now;
use crate::replica::RoleGauges;
use actix::{Actor, Context, Handler, Message, Recipient};
use bulwark_framework::roles::checkpoint::{CheckpointCollector, CollectorInput, CollectorOutput};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// An input for the collector, from its replica's actor.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Collect(pub CollectorInput);

/// The collector's answer, for its replica's actor.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Collected(pub CollectorOutput);

/// The checkpoint collector actor.
pub struct CheckpointActor {
    collector: CheckpointCollector,
    replica: Recipient<Collected>,
    /// Where it says how many CHECKPOINT messages it holds, for the replica's status.
    gauges: Arc<RoleGauges>,
}

impl std::fmt::Debug for CheckpointActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CheckpointActor(pending {})", self.collector.pending_len())
    }
}

impl CheckpointActor {
    pub(crate) fn new(collector: CheckpointCollector, replica: Recipient<Collected>, gauges: Arc<RoleGauges>) -> Self {
        CheckpointActor { collector, replica, gauges }
    }
}

impl Actor for CheckpointActor {
    type Context = Context<Self>;
}

impl Handler<Collect> for CheckpointActor {
    type Result = ();

    fn handle(&mut self, Collect(input): Collect, _: &mut Context<Self>) {
        let outputs = self.collector.handle(input, now());
        self.gauges.checkpoint_votes.store(self.collector.pending_len(), Ordering::Relaxed);
        for output in outputs {
            self.replica.do_send(Collected(output));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::{cluster, replica_key, Listener};
    use bulwark_crypto::Digest;
    use bulwark_framework::messages::Checkpoint;
    use bulwark_framework::{ReplicaId, SeqNum};
    use tokio::sync::mpsc;

    fn checkpoint(replica: u32, seq: u64, digest: Digest) -> CollectorInput {
        let payload = Checkpoint { seq: SeqNum(seq), state_digest: digest, replica: ReplicaId(replica) };
        CollectorInput::Checkpoint(crate::test_fixtures::SCOPE.sign(payload, &replica_key(replica)))
    }

    /// C3 through the actor: `2f + 1` matching CHECKPOINTs come back as one stable
    /// checkpoint, a refused one as its reason, and the pending gauge follows the votes.
    #[actix_rt::test]
    async fn c3_the_collector_actor_answers_its_replica_with_stable_checkpoints_and_refusals() {
        let config = cluster();
        let k = config.params.checkpoint_interval;
        let (sender, mut heard) = mpsc::unbounded_channel();
        let listener = Listener(sender).start();
        let gauges = Arc::new(RoleGauges::default());
        let collector = CheckpointActor::new(
            CheckpointCollector::new(crate::test_fixtures::handle()),
            listener.recipient(),
            gauges.clone(),
        );
        let collector = collector.start();
        let state = Digest::of(b"state");
        collector.send(Collect(checkpoint(0, k, state))).await.unwrap();
        collector.send(Collect(checkpoint(1, k, state))).await.unwrap();
        assert_eq!(gauges.checkpoint_votes.load(Ordering::Relaxed), 2);
        collector.send(Collect(checkpoint(2, k, state))).await.unwrap();
        match heard.recv().await {
            Some(Collected(CollectorOutput::Stable(stable))) => {
                assert_eq!((stable.seq, stable.state_digest, stable.proof.len()), (SeqNum(k), state, 3));
            }
            other => panic!("expected a stable checkpoint, heard {other:?}"),
        }
        assert_eq!(
            gauges.checkpoint_votes.load(Ordering::Relaxed),
            0,
            "C4: the votes at the stable checkpoint are dropped"
        );
        collector.send(Collect(checkpoint(3, k + 1, state))).await.unwrap();
        match heard.recv().await {
            Some(Collected(CollectorOutput::Refused(reason))) => {
                assert_eq!(reason, bulwark_framework::RoleRefusal::CheckpointNotMultipleOfK)
            }
            other => panic!("expected a refusal, heard {other:?}"),
        }
    }
}
