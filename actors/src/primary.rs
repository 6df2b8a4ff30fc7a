//! The primary actor: a thin shell around the framework's [`PrimaryRole`].
//!
//! Its replica's actor tells it whether the replica leads its view, offers it the new
//! requests it receives while it does, and reports executions and the low watermark
//! ([`ToPrimary`]). The role batches the requests, numbers and signs the pre-prepares; they
//! go back to the replica's actor ([`FromPrimary`]), which logs, persists and multicasts
//! them if the replica still leads that view. The role's batch timer runs on this actor's
//! context. Clients that hold their whole window in the role's queue are kept in a set the
//! replica's inbound lanes read, so their next requests are dropped before verification.
//! It makes no decision of its own. The simulator runs the same role apart from its
//! replica in the same way (`NetworkModel::role_hop_max_us`), so the delay and
//! interleaving of this hop are tested there.

use crate::clock::{now, run_at};
use crate::replica::{RoleGauges, SaturatedClients};
use actix::{Actor, AsyncContext, Context, Handler, Message, Recipient, SpawnHandle};
use bulwark_framework::roles::primary::{PrimaryInput, PrimaryOutput, PrimaryRole};
use bulwark_framework::Instant;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Inputs for the primary role from its replica's actor, in the order the replica decided
/// them: those of one replica step travel together (one mailbox hop for a batch of
/// requests rather than one each).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ToPrimary(pub Vec<PrimaryInput>);

/// Proposals and shed requests for the replica's actor, in order: those of one message
/// from the replica travel together.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct FromPrimary(pub Vec<PrimaryOutput>);

/// The primary actor.
pub struct PrimaryActor {
    role: PrimaryRole,
    replica: Recipient<FromPrimary>,
    batch_timer: Option<SpawnHandle>,
    saturated: SaturatedClients,
    gauges: Arc<RoleGauges>,
}

impl std::fmt::Debug for PrimaryActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrimaryActor(leading {:?}, queued {})", self.role.leading(), self.role.queue_len())
    }
}

impl PrimaryActor {
    pub(crate) fn new(
        role: PrimaryRole,
        replica: Recipient<FromPrimary>,
        saturated: SaturatedClients,
        gauges: Arc<RoleGauges>,
    ) -> Self {
        PrimaryActor { role, replica, batch_timer: None, saturated, gauges }
    }

    fn step(&mut self, inputs: Vec<PrimaryInput>, ctx: &mut Context<Self>) {
        let now = now();
        let mut for_replica = Vec::new();
        for input in inputs {
            let touched = match &input {
                PrimaryInput::Offer(request) => Some(request.client()),
                _ => None,
            };
            for output in self.role.handle(input, now) {
                match output {
                    PrimaryOutput::SetBatchTimer(at) => self.set_batch_timer(at, ctx),
                    output => for_replica.push(output),
                }
            }
            if self.role.leading().is_some() {
                let role = &self.role;
                self.saturated.refresh(|client, now| role.client_saturated(client, now), touched);
            } else {
                self.saturated.clear();
            }
        }
        if !for_replica.is_empty() {
            self.replica.do_send(FromPrimary(for_replica));
        }
        self.gauges.queued_requests.store(self.role.queue_len(), Ordering::Relaxed);
        self.gauges.in_flight_batches.store(self.role.in_flight_len(), Ordering::Relaxed);
    }

    /// Arms the batch timer for `at` ([`run_at`]), replacing the pending one.
    fn set_batch_timer(&mut self, at: Instant, ctx: &mut Context<Self>) {
        if let Some(handle) = self.batch_timer.take() {
            ctx.cancel_future(handle);
        }
        let handle = run_at(ctx, at, |actor: &mut Self, ctx| {
            actor.batch_timer = None;
            actor.step(vec![PrimaryInput::BatchTimer], ctx);
        });
        self.batch_timer = Some(handle);
    }
}

impl Actor for PrimaryActor {
    type Context = Context<Self>;
}

impl Handler<ToPrimary> for PrimaryActor {
    type Result = ();

    fn handle(&mut self, ToPrimary(inputs): ToPrimary, ctx: &mut Context<Self>) {
        self.step(inputs, ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::{replica_key, request, Listener};
    use bulwark_framework::{SeqNum, View};
    use tokio::sync::mpsc;

    /// P1 and P3 through the actor: a request offered while the replica leads comes back
    /// as a signed PRE-PREPARE of that view; the batch timer fires on the actor's context
    /// for a partial batch; after `Follow` nothing is proposed.
    #[actix_rt::test]
    async fn p1_p3_the_primary_actor_proposes_while_its_replica_leads_and_its_batch_timer_fires() {
        let key = Arc::new(replica_key(1));
        let role = PrimaryRole::new(crate::test_fixtures::handle(), key, None, SeqNum(1));
        let (sender, mut heard) = mpsc::unbounded_channel();
        let listener = Listener(sender).start();
        let gauges = Arc::new(RoleGauges::default());
        let saturated = SaturatedClients::default();
        let primary = PrimaryActor::new(role, listener.recipient(), saturated, gauges.clone()).start();
        primary.send(ToPrimary(vec![PrimaryInput::Offer(request(1))])).await.unwrap();
        let lead = PrimaryInput::Lead { view: View(1), next_seq: SeqNum(5), low: SeqNum(0), time_floor_us: 0 };
        primary.send(ToPrimary(vec![lead])).await.unwrap();
        // Nothing in flight: the first request goes at once (P3, low load).
        primary.send(ToPrimary(vec![PrimaryInput::Offer(request(2))])).await.unwrap();
        match heard.recv().await {
            Some(FromPrimary(outputs)) => match outputs.as_slice() {
                [PrimaryOutput::Propose(pre_prepare, batch)] => {
                    assert_eq!((pre_prepare.view, pre_prepare.seq, batch.len()), (View(1), SeqNum(5), 1));
                    assert_eq!(pre_prepare.digest, batch.digest());
                }
                other => panic!("expected one proposal, heard {other:?}"),
            },
            other => panic!("expected a proposal, heard {other:?}"),
        }
        // One in flight: the next request waits for the batch delay, then goes alone.
        primary.send(ToPrimary(vec![PrimaryInput::Offer(request(3))])).await.unwrap();
        assert_eq!(gauges.queued_requests.load(Ordering::Relaxed), 1);
        match tokio::time::timeout(std::time::Duration::from_secs(5), heard.recv()).await {
            Ok(Some(FromPrimary(outputs))) => match outputs.as_slice() {
                [PrimaryOutput::Propose(pre_prepare, batch)] => {
                    assert_eq!((pre_prepare.seq, batch.len()), (SeqNum(6), 1))
                }
                other => panic!("expected one proposal, heard {other:?}"),
            },
            other => panic!("expected the batch timer's proposal, heard {other:?}"),
        }
        primary.send(ToPrimary(vec![PrimaryInput::Follow, PrimaryInput::Offer(request(4))])).await.unwrap();
        assert_eq!(gauges.queued_requests.load(Ordering::Relaxed), 0, "a follower queues nothing");
        assert!(heard.try_recv().is_err(), "a follower proposes nothing");
    }
}
