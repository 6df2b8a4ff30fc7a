//! Keys, a four-replica cluster and messages the unit tests of several modules share.

use bulwark_crypto::{KeyPair, Signed, Verified};
use bulwark_framework::messages::{Request, ViewChange};
use bulwark_framework::signing::Scoped;
use bulwark_framework::{
    ClusterId, Epoch, Membership, MembershipHandle, ProtocolParams, ReplicaId, Scope, SeqNum, Timestamp, View,
};
use std::sync::Arc;

/// The scope of [`cluster`]'s messages.
pub(crate) const SCOPE: Scope = Scope { cluster: ClusterId(1), epoch: Epoch(0) };

/// Replica `i`'s key in [`cluster`].
pub(crate) fn replica_key(i: u32) -> KeyPair {
    KeyPair::from_seed([i as u8 + 1; 32])
}

/// Four replicas with the default parameters.
pub(crate) fn cluster() -> Arc<Membership> {
    let members = (0..4).map(|i| replica_key(i).public()).collect();
    Arc::new(Membership::numbered(SCOPE.cluster, members, ProtocolParams::default()).unwrap())
}

/// A handle of its own on [`cluster`], as each replica or client holds one.
pub(crate) fn handle() -> MembershipHandle {
    MembershipHandle::new((*cluster()).clone())
}

/// Signs `payload` with `key` in [`SCOPE`].
pub(crate) fn sign<T: Scoped>(payload: T, key: &KeyPair) -> Signed<T> {
    SCOPE.sign(payload, key).into_signed()
}

/// A client's (key 9's) empty request with `timestamp`, signed.
pub(crate) fn request(timestamp: u64) -> Verified<Request> {
    let client = replica_key(9);
    let payload = Request {
        client_key: client.public().into(),
        timestamp: Timestamp(timestamp),
        read_only: false,
        operation: vec![],
    };
    SCOPE.sign(payload, &client)
}

/// A valid VIEW-CHANGE to `view` with no certificates (cheap to verify).
pub(crate) fn signed_view_change(replica: u32, view: u64) -> Signed<ViewChange> {
    let payload = ViewChange {
        view: View(view),
        stable: SeqNum(0),
        checkpoint_proof: vec![],
        prepared: vec![],
        replica: ReplicaId(replica),
    };
    sign(payload, &replica_key(replica))
}

/// Stands in for an actor that receives `M`: passes each one on to a channel.
pub(crate) struct Listener<M>(pub(crate) tokio::sync::mpsc::UnboundedSender<M>);

impl<M: Unpin + 'static> actix::Actor for Listener<M> {
    type Context = actix::Context<Self>;
}

impl<M: actix::Message<Result = ()> + Unpin + 'static> actix::Handler<M> for Listener<M> {
    type Result = ();

    fn handle(&mut self, message: M, _: &mut actix::Context<Self>) {
        let _ = self.0.send(message);
    }
}
