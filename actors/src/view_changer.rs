//! The view-changer actor: a thin shell around the framework's [`ViewChanger`] role.
//!
//! Its replica's actor hands it the requests the replica waits to see executed, what
//! executed, the VIEW-CHANGEs it sent and received and the views it entered
//! ([`ToViewChanger`]). The role runs the request and view-change timers (VC1–VC4) on this
//! actor's context, collects VIEW-CHANGEs (VC5, VC8), builds and signs the NEW-VIEW when
//! its replica is the next primary (VC11), and paces the retransmission of its replica's
//! VIEW-CHANGE (VC7). What it concludes goes back to the replica's actor
//! ([`FromViewChanger`]), which acts on it only if the replica is still where the role
//! thought (the hop may be overtaken). Clients that hold their whole window among the
//! waiting requests are kept in a set the replica's inbound lanes read, so their next
//! requests are dropped before verification. It makes no decision of its own. The
//! simulator runs the same role apart from its replica in the same way
//! (`NetworkModel::role_hop_max_us`), so the delay and interleaving of this hop are
//! tested there.

use crate::clock::{now, run_at};
use crate::replica::{RoleGauges, SaturatedClients};
use actix::{Actor, AsyncContext, Context, Handler, Message, Recipient, SpawnHandle};
use bulwark_framework::roles::view_change::{ViewChanger, ViewChangerInput, ViewChangerOutput};
use bulwark_framework::roles::Role;
use bulwark_framework::{Instant, TimerKind};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Inputs for the view-changer from its replica's actor, in the order the replica decided
/// them (those of one replica step travel together).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ToViewChanger(pub Vec<ViewChangerInput>);

/// What the view-changer concludes, for its replica's actor, in order.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct FromViewChanger(pub Vec<ViewChangerOutput>);

/// The view-changer actor.
pub struct ViewChangerActor {
    role: ViewChanger,
    replica: Recipient<FromViewChanger>,
    /// The request and view-change timers, by kind.
    timers: BTreeMap<TimerKind, SpawnHandle>,
    saturated: SaturatedClients,
    gauges: Arc<RoleGauges>,
}

impl std::fmt::Debug for ViewChangerActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ViewChangerActor(view {}, target {:?})", self.role.view(), self.role.target())
    }
}

impl ViewChangerActor {
    pub(crate) fn new(
        role: ViewChanger,
        replica: Recipient<FromViewChanger>,
        saturated: SaturatedClients,
        gauges: Arc<RoleGauges>,
    ) -> Self {
        ViewChangerActor { role, replica, timers: BTreeMap::new(), saturated, gauges }
    }

    fn step(&mut self, inputs: Vec<ViewChangerInput>, ctx: &mut Context<Self>) {
        let now = now();
        let mut for_replica = Vec::new();
        for input in inputs {
            let touched = match &input {
                ViewChangerInput::Wait(request) => Some(request.client()),
                _ => None,
            };
            for output in self.role.handle(input, now) {
                match output {
                    ViewChangerOutput::SetTimer(timer, at) => self.set_timer(timer, at, ctx),
                    output => for_replica.push(output),
                }
            }
            let role = &self.role;
            self.saturated.refresh(|client, now| role.client_saturated(client, now), touched);
        }
        if !for_replica.is_empty() {
            self.replica.do_send(FromViewChanger(for_replica));
        }
        self.gauges.waiting_requests.store(self.role.waiting_len(), Ordering::Relaxed);
        self.gauges.view_changes_held.store(self.role.view_changes_held(), Ordering::Relaxed);
    }

    /// Arms `timer` for `at` ([`run_at`]), replacing the pending one of its kind.
    fn set_timer(&mut self, timer: TimerKind, at: Instant, ctx: &mut Context<Self>) {
        if let Some(handle) = self.timers.remove(&timer) {
            ctx.cancel_future(handle);
        }
        let handle = run_at(ctx, at, move |actor: &mut Self, ctx| {
            actor.timers.remove(&timer);
            actor.step(vec![ViewChangerInput::Timer(timer)], ctx);
        });
        self.timers.insert(timer, handle);
    }
}

impl Actor for ViewChangerActor {
    type Context = Context<Self>;
}

impl Handler<ToViewChanger> for ViewChangerActor {
    type Result = ();

    fn handle(&mut self, ToViewChanger(inputs): ToViewChanger, ctx: &mut Context<Self>) {
        self.step(inputs, ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::{replica_key, request, Listener};
    use bulwark_framework::messages::client_id;
    use bulwark_framework::{ReplicaId, Timestamp, View};
    use std::time::Duration;
    use tokio::sync::mpsc;

    /// VC1 and VC2 through the actor: a waiting request starts the request timer on the
    /// actor's context; when it fires with the request still waiting, the replica hears
    /// that the timer expired in its view. The waiting gauge and the saturated set follow
    /// the role (R4: a client whose waiting requests fill its window is saturated).
    #[actix_rt::test]
    async fn vc1_vc2_the_view_changer_actor_runs_the_request_timer_and_reports_its_expiry() {
        let mut membership = (*crate::test_fixtures::cluster()).clone();
        membership.params.view_change_timeout_us = 50_000;
        membership.params.client_window = 2;
        let role = ViewChanger::new(
            ReplicaId(1),
            bulwark_framework::MembershipHandle::new(membership),
            Arc::new(replica_key(1)),
        );
        let (sender, mut heard) = mpsc::unbounded_channel();
        let listener = Listener(sender).start();
        let gauges = Arc::new(RoleGauges::default());
        let saturated = SaturatedClients::default();
        let actor = ViewChangerActor::new(role, listener.recipient(), saturated.clone(), gauges.clone()).start();
        let client = client_id(&replica_key(9).public().into());
        actor.send(ToViewChanger(vec![ViewChangerInput::Wait(request(1))])).await.unwrap();
        assert_eq!(gauges.waiting_requests.load(Ordering::Relaxed), 1);
        assert!(!saturated.contains(client), "one request of a window of two");
        actor.send(ToViewChanger(vec![ViewChangerInput::Wait(request(2))])).await.unwrap();
        assert!(saturated.contains(client), "two waiting fill the window");
        match tokio::time::timeout(Duration::from_secs(5), heard.recv()).await {
            Ok(Some(FromViewChanger(outputs))) => assert!(
                matches!(outputs.as_slice(), [ViewChangerOutput::RequestTimerExpired { view: View(0) }]),
                "{outputs:?}"
            ),
            other => panic!("expected the request timer's expiry, heard {other:?}"),
        }
        let executed = ViewChangerInput::Executed {
            seq: bulwark_framework::SeqNum(1),
            requests: vec![(client, Timestamp(1)), (client, Timestamp(2))],
        };
        actor.send(ToViewChanger(vec![executed])).await.unwrap();
        assert_eq!(gauges.waiting_requests.load(Ordering::Relaxed), 0);
        assert!(!saturated.contains(client), "nothing waits any more");
    }
}
