//! The cluster every rule test runs against (four replicas, small windows), messages
//! signed by its members, and helpers that read a role's outputs.

use bulwark_crypto::{Digest, KeyPair, Signed, Verified};
use bulwark_framework::messages::{
    Batch, Checkpoint, Commit, Message, NewView, PrePrepare, Prepare, PreparedCertificate, Reply, Request,
    VerifiedMessage, VerifiedViewChange, ViewChange,
};
use bulwark_framework::roles::backup::{Backup, BackupInput, BackupOutput};
use bulwark_framework::roles::client::Client;
use bulwark_framework::roles::node::Node;
use bulwark_framework::roles::view_change::{compute_order, ViewChanger};
use bulwark_framework::roles::{Action, ReplicaEvent, Role};
use bulwark_framework::signing::Scoped;
use bulwark_framework::verify::verify_message;
use bulwark_framework::{
    ClusterId, Input, Instant, Membership, MembershipHandle, ProtocolParams, Replica, ReplicaId, SeqNum, Timestamp,
    View,
};
use bulwark_services::kv::{KvOp, KvStore};
use std::sync::Arc;

pub(crate) struct Fixture {
    pub(crate) keys: Vec<KeyPair>,
    pub(crate) config: Arc<Membership>,
    pub(crate) client: KeyPair,
}

pub(crate) fn params() -> ProtocolParams {
    ProtocolParams { checkpoint_interval: 4, watermark_window: 8, batch_size_max: 4, ..ProtocolParams::default() }
}

pub(crate) fn fixture_with(n: usize, params: ProtocolParams) -> Fixture {
    let keys: Vec<KeyPair> = (0..n).map(|i| KeyPair::from_seed([i as u8 + 1; 32])).collect();
    let config =
        Arc::new(Membership::numbered(ClusterId(1), keys.iter().map(KeyPair::public).collect(), params).unwrap());
    Fixture { keys, config, client: KeyPair::from_seed([200; 32]) }
}

pub(crate) fn fixture() -> Fixture {
    fixture_with(4, params())
}

pub(crate) fn put(key: &str, value: &str) -> Vec<u8> {
    rmp_serde::to_vec(&KvOp::Put { key: key.into(), value: value.as_bytes().to_vec() }).unwrap()
}

impl Fixture {
    /// A membership handle of its own, as each replica (or client) holds one.
    pub(crate) fn handle(&self) -> MembershipHandle {
        MembershipHandle::new((*self.config).clone())
    }

    /// Signs `payload` as `key` in the fixture's scope.
    pub(crate) fn sign<T: Scoped>(&self, payload: T, key: &KeyPair) -> Verified<T> {
        self.config.scope().sign(payload, key)
    }

    pub(crate) fn request(&self, timestamp: u64, operation: Vec<u8>) -> Verified<Request> {
        let request = Request {
            client_key: self.client.public().into(),
            timestamp: Timestamp(timestamp),
            read_only: false,
            operation,
        };
        self.sign(request, &self.client)
    }

    pub(crate) fn batch(&self, timestamps: &[u64]) -> Arc<Batch> {
        Arc::new(Batch::new(timestamps.iter().map(|t| self.request(*t, put("k", &t.to_string()))).collect()))
    }

    pub(crate) fn pre_prepare(&self, view: u64, seq: u64, digest: Digest) -> Verified<PrePrepare> {
        let primary = self.config.primary(View(view));
        let payload = PrePrepare { view: View(view), seq: SeqNum(seq), digest };
        self.sign(payload, &self.keys[primary.0 as usize])
    }

    pub(crate) fn prepare(&self, from: u32, view: u64, seq: u64, digest: Digest) -> Verified<Prepare> {
        let payload = Prepare { view: View(view), seq: SeqNum(seq), digest, replica: ReplicaId(from) };
        self.sign(payload, &self.keys[from as usize])
    }

    pub(crate) fn commit(&self, from: u32, view: u64, seq: u64, digest: Digest) -> Verified<Commit> {
        let payload = Commit { view: View(view), seq: SeqNum(seq), digest, replica: ReplicaId(from) };
        self.sign(payload, &self.keys[from as usize])
    }

    pub(crate) fn checkpoint(&self, from: u32, seq: u64, digest: Digest) -> Verified<Checkpoint> {
        let payload = Checkpoint { seq: SeqNum(seq), state_digest: digest, replica: ReplicaId(from) };
        self.sign(payload, &self.keys[from as usize])
    }

    pub(crate) fn reply(
        &self,
        from: u32,
        timestamp: Timestamp,
        result: &[u8],
        read_only: bool,
    ) -> bulwark_framework::messages::VerifiedReply {
        let client = bulwark_framework::messages::client_id(&self.client.public().into());
        let payload =
            Reply { view: View(0), timestamp, client, replica: ReplicaId(from), read_only, result: result.to_vec() };
        let signed = self.sign(payload, &self.keys[from as usize]).into_signed();
        bulwark_framework::verify::verify_reply(signed, None, &self.config).unwrap()
    }

    pub(crate) fn backup(&self, me: u32) -> Backup {
        Backup::new(ReplicaId(me), self.handle(), Arc::new(KeyPair::from_seed([me as u8 + 1; 32])))
    }

    /// Replica `me` with its roles wired in (what the runtime runs as four actors).
    pub(crate) fn replica(&self, me: u32) -> Node<KvStore> {
        let key = KeyPair::from_seed([me as u8 + 1; 32]);
        let mut node = Node::new(ReplicaId(me), key, self.handle(), KvStore::new());
        node.start(Instant(0));
        node
    }

    /// Replica `me` with its roles, its primary role driven by the test itself (see
    /// [`Node::hold_primary`]).
    pub(crate) fn replica_holding_primary(&self, me: u32) -> Node<KvStore> {
        let mut node = self.replica(me);
        node.hold_primary();
        node
    }

    /// Replica `me` alone: what it hands its roles stays in its actions, for a test to
    /// deliver (or hold back) itself.
    pub(crate) fn bare_replica(&self, me: u32) -> Replica<KvStore> {
        let key = KeyPair::from_seed([me as u8 + 1; 32]);
        Replica::new(ReplicaId(me), key, self.handle(), KvStore::new())
    }

    pub(crate) fn view_changer(&self, me: u32) -> ViewChanger {
        ViewChanger::new(ReplicaId(me), self.handle(), Arc::new(KeyPair::from_seed([me as u8 + 1; 32])))
    }
}

/// Brings backup `me` to prepared at `(0, seq)` for `batch`: pre-prepare plus prepares
/// from the other backups.
pub(crate) fn prepare_slot(
    f: &Fixture,
    backup: &mut Backup,
    me: u32,
    seq: u64,
    batch: &Arc<Batch>,
) -> Vec<BackupOutput> {
    let mut out = Vec::new();
    out.extend(
        backup.handle(BackupInput::PrePrepare(f.pre_prepare(0, seq, batch.digest()), batch.clone()), Instant(0)),
    );
    for from in [1, 2, 3].into_iter().filter(|r| *r != me) {
        out.extend(backup.handle(BackupInput::Prepare(f.prepare(from, 0, seq, batch.digest())), Instant(0)));
    }
    out
}

pub(crate) fn executed(actions: &[Action]) -> Vec<SeqNum> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Event(ReplicaEvent::Executed { seq, .. }) => Some(*seq),
            _ => None,
        })
        .collect()
}

/// Feeds a replica everything needed to commit `batch` at `seq` (it is a backup, r1).
pub(crate) fn commit_at(
    f: &Fixture,
    replica: &mut impl Role<Input = Input, Output = Action>,
    seq: u64,
    batch: &Arc<Batch>,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let d = batch.digest();
    let inputs = vec![
        VerifiedMessage::PrePrepare(f.pre_prepare(0, seq, d), batch.clone()),
        VerifiedMessage::Prepare(f.prepare(2, 0, seq, d)),
        VerifiedMessage::Commit(f.commit(2, 0, seq, d)),
        VerifiedMessage::Commit(f.commit(3, 0, seq, d)),
    ];
    for input in inputs {
        actions.extend(replica.handle(Input::Message(input), Instant(0)));
    }
    actions
}

pub(crate) fn client(f: &Fixture) -> Client {
    Client::new(KeyPair::from_seed([200; 32]), f.handle(), Timestamp(1))
}

impl Fixture {
    pub(crate) fn signed<T: Scoped>(&self, from: u32, payload: T) -> Signed<T> {
        self.sign(payload, &self.keys[from as usize]).into_signed()
    }

    /// A prepared certificate (M6): the pre-prepare of `primary(view)` and prepares from
    /// the first `2f` other replicas.
    pub(crate) fn certificate(&self, view: u64, seq: u64, digest: Digest) -> PreparedCertificate {
        let primary = self.config.primary(View(view)).0;
        let voters = (0..self.config.n() as u32).filter(|r| *r != primary).take(2 * self.config.f());
        PreparedCertificate {
            pre_prepare: self.pre_prepare(view, seq, digest).into_signed(),
            prepares: voters.map(|r| self.prepare(r, view, seq, digest).into_signed()).collect(),
        }
    }

    /// A checkpoint proof: `2f + 1` CHECKPOINTs for `(seq, digest)`.
    pub(crate) fn proof(&self, seq: u64, digest: Digest) -> Vec<Signed<Checkpoint>> {
        (0..self.config.quorum() as u32).map(|r| self.checkpoint(r, seq, digest).into_signed()).collect()
    }

    pub(crate) fn view_change(
        &self,
        from: u32,
        view: u64,
        stable: u64,
        prepared: Vec<PreparedCertificate>,
    ) -> Signed<ViewChange> {
        let checkpoint_proof = if stable == 0 { Vec::new() } else { self.proof(stable, Digest::of(b"state")) };
        let payload = ViewChange {
            view: View(view),
            stable: SeqNum(stable),
            checkpoint_proof,
            prepared,
            replica: ReplicaId(from),
        };
        self.signed(from, payload)
    }

    pub(crate) fn verified_view_change(&self, signed: Signed<ViewChange>) -> Arc<VerifiedViewChange> {
        match verify_message(Message::ViewChange(signed), &self.config) {
            Ok(VerifiedMessage::ViewChange(vc)) => vc,
            other => panic!("expected a valid view-change: {other:?}"),
        }
    }

    /// A NEW-VIEW for `view` signed by `signer` with `O` = `entries`.
    pub(crate) fn new_view(
        &self,
        signer: u32,
        view: u64,
        vcs: Vec<Signed<ViewChange>>,
        entries: &[(u64, Digest)],
    ) -> Message {
        let pre_prepares = entries
            .iter()
            .map(|(seq, d)| self.signed(signer, PrePrepare { view: View(view), seq: SeqNum(*seq), digest: *d }))
            .collect();
        Message::NewView(self.signed(signer, NewView { view: View(view), view_changes: vcs, pre_prepares }))
    }

    /// The NEW-VIEW a correct `primary(view)` sends for these view-changes.
    pub(crate) fn correct_new_view(&self, view: u64, vcs: Vec<Signed<ViewChange>>) -> Message {
        let verified: Vec<VerifiedViewChange> =
            vcs.iter().map(|vc| self.verified_view_change(vc.clone()).as_ref().clone()).collect();
        let order = compute_order(&verified, &self.config).unwrap();
        let entries: Vec<(u64, Digest)> = order.entries.iter().map(|(s, d)| (s.0, *d)).collect();
        self.new_view(self.config.primary(View(view)).0, view, vcs, &entries)
    }
}

pub(crate) fn deliver(
    replica: &mut impl Role<Input = Input, Output = Action>,
    message: VerifiedMessage,
    at: u64,
) -> Vec<Action> {
    replica.handle(Input::Message(message), Instant(at))
}
