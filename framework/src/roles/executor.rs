//! The executor: runs committed batches strictly in sequence order through the user's
//! service, keeps the client table for exactly-once replies, and takes checkpoint images.
//! (PBFT.md E1–E6, CX2–CX4, C1–C2.)
//!
//! It also keeps a service's mistakes from harming its replica, the same way at every
//! correct replica (E6): a panic in `execute` is caught and the operation is defined to
//! have had no effect. Since a panic may leave the service half-changed, the executor
//! rebuilds it: it restores the service part of its latest checkpoint image and executes
//! again the operations it executed since (the *journal*, at most one checkpoint interval
//! of batches), skipping the ones that panicked. A reply that would not fit
//! `reply_bytes_max` becomes [`Outcome::ReplyTooLarge`]; a snapshot the service refuses to
//! restore is reported with the service's own message.

use crate::config::ClientAuth;
use crate::ids::{ClientId, Instant, ReplicaId, SeqNum, Timestamp, View};
use crate::membership::MembershipHandle;
use crate::messages::{Batch, Command, Reply, ReplyProof, ReplyRoot, Request, SystemCommand, VerifiedReply};
use crate::roles::refusal::RoleRefusal;
use crate::roles::Role;
use crate::service::{Caller, ExecutionContext, Outcome, Service};
use crate::state::ChunkedImage;
use bulwark_crypto::merkle::MerkleTree;
use bulwark_crypto::{Digest, KeyPair, Verified};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// What the replica knows of one client (CX2): the executed window `(top - W, top]`, with
/// the result of every executed timestamp in it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ClientRecord {
    top: Timestamp,
    #[serde(with = "results_as_pairs")]
    results: BTreeMap<Timestamp, Vec<u8>>,
    last_active: SeqNum,
}

mod results_as_pairs {
    use super::Timestamp;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    #[derive(Serialize, Deserialize)]
    struct Entry(Timestamp, #[serde(with = "serde_bytes")] Vec<u8>);

    pub fn serialize<S: Serializer>(map: &BTreeMap<Timestamp, Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        let entries: Vec<Entry> = map.iter().map(|(t, r)| Entry(*t, r.clone())).collect();
        entries.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<Timestamp, Vec<u8>>, D::Error> {
        let entries: Vec<Entry> = Vec::deserialize(d)?;
        Ok(entries.into_iter().map(|Entry(t, r)| (t, r)).collect())
    }
}

/// How a replica treats a request, given the client table (CX3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestStatus {
    /// Below the client's executed window: its reply is gone; drop it.
    TooOld,
    /// Executed already: resend this result (R2).
    Executed(Vec<u8>),
    /// Not executed yet.
    New,
}

/// The client table (C2): part of every checkpoint image, so exactly-once execution
/// survives state transfer. Bounded by `client_table_max` clients of `client_window`
/// results each; the least recently active client is evicted first (deterministically,
/// since every replica executes the same sequence).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTable {
    clients: BTreeMap<ClientId, ClientRecord>,
    by_activity: BTreeSet<(SeqNum, ClientId)>,
}

impl ClientTable {
    pub fn status(&self, client: ClientId, timestamp: Timestamp, window: u64) -> RequestStatus {
        let Some(record) = self.clients.get(&client) else {
            return RequestStatus::New;
        };
        if let Some(result) = record.results.get(&timestamp) {
            return RequestStatus::Executed(result.clone());
        }
        if timestamp.0.saturating_add(window) <= record.top.0 {
            return RequestStatus::TooOld;
        }
        RequestStatus::New
    }

    fn record(
        &mut self,
        client: ClientId,
        timestamp: Timestamp,
        result: Vec<u8>,
        seq: SeqNum,
        window: u64,
        max: usize,
    ) {
        let record = self.clients.entry(client).or_default();
        self.by_activity.remove(&(record.last_active, client));
        record.last_active = seq;
        self.by_activity.insert((seq, client));
        record.top = record.top.max(timestamp);
        record.results.insert(timestamp, result);
        let floor = record.top.0.saturating_sub(window);
        while let Some((&oldest, _)) = record.results.first_key_value() {
            if oldest.0 > floor {
                break;
            }
            record.results.remove(&oldest);
        }
        while self.clients.len() > max {
            let Some((_, evicted)) = self.by_activity.pop_first() else {
                break;
            };
            self.clients.remove(&evicted);
        }
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

/// A checkpoint image: the service snapshot, the client table and the agreed time of the
/// last executed batch, encoded canonically.
#[derive(Serialize, Deserialize)]
struct Image {
    #[serde(with = "serde_bytes")]
    service: Vec<u8>,
    clients: Vec<(ClientId, ClientRecord)>,
    time_us: u64,
}

/// A batch executed since the latest image, with the places of the requests in it that
/// reached the service and returned: what a rebuild executes again (E6).
#[derive(Debug)]
struct JournalEntry {
    seq: SeqNum,
    time_us: u64,
    batch: Arc<Batch>,
    executed: Vec<usize>,
}

/// Something a service did wrong, reported by the executor so the replica counts it and
/// names it; never a reason for the replica to stop.
#[derive(Debug, Clone, PartialEq, Eq, strum::IntoStaticStr)]
pub enum ServiceFault {
    /// E6: `execute` panicked on the operation with digest `operation` of `client`, ordered
    /// at `seq`: the operation had no effect and the client got [`Outcome::ServiceFailed`].
    Panicked { seq: SeqNum, client: ClientId, operation: Digest, message: String },
    /// `query` panicked on a read-only operation.
    QueryPanicked { client: ClientId, operation: Digest, message: String },
    /// A reply of `bytes` over `reply_bytes_max` became [`Outcome::ReplyTooLarge`].
    ReplyTooLarge { seq: SeqNum, client: ClientId, bytes: u64, limit: u64 },
    /// `restore` refused the snapshot of checkpoint `seq`, with the service's own message.
    RestoreFailed { seq: SeqNum, message: String },
    /// Rebuilding after a panic, an operation that had returned before panicked this time,
    /// or the rebuilt state's snapshot differs from the one taken before: the service is
    /// not deterministic.
    NotDeterministic { seq: SeqNum, detail: String },
}

/// The executor role.
pub struct Executor<S: Service> {
    me: ReplicaId,
    membership: MembershipHandle,
    /// Signs the replies (with `client_auth = "signed"`).
    key: Arc<KeyPair>,
    service: S,
    clients: ClientTable,
    last_executed: SeqNum,
    /// The agreed time of the last executed batch, microseconds since the Unix epoch (E5).
    time_us: u64,
    /// Checkpoint images by sequence number: the pending ones and the latest stable one,
    /// bounded by `L / K + 1`.
    images: BTreeMap<SeqNum, Arc<ChunkedImage>>,
    /// The latest image, taken or installed, and the batches executed since (E6).
    base: Arc<ChunkedImage>,
    journal: Vec<JournalEntry>,
}

impl<S: Service> std::fmt::Debug for Executor<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("service", &std::any::type_name::<S>())
            .field("last_executed", &self.last_executed)
            .field("clients", &self.clients.len())
            .field("images", &self.images.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What the executor is told.
#[derive(Debug, Clone)]
pub enum ExecutorInput {
    /// E1–E2: execute committed batch `seq` of `view`; it must be `last_executed + 1`.
    Execute { seq: SeqNum, view: View, batch: Arc<Batch> },
    /// R1, R2, CX3: a client request the replica received in `view`. A read-only one is
    /// answered from the current state; one executed before gets its cached reply; one
    /// below its client's window is refused; a new one comes back as
    /// [`ExecutorOutput::New`], to be ordered.
    Request { request: Verified<Request>, view: View },
    /// ST5: install the image of checkpoint `seq`, whose digest the replica checked against
    /// a stable checkpoint proof.
    Install { seq: SeqNum, image: Vec<u8> },
    /// C4: the checkpoint at this sequence number became stable; older images can go.
    Stable(SeqNum),
}

/// What the executor produces, in order.
#[derive(Debug)]
pub enum ExecutorOutput {
    /// A system command of batch `seq`, in the batch's order, for the replica to carry out
    /// (E2: at the batch's sequence number, at every replica; never the user's service).
    System {
        seq: SeqNum,
        command: SystemCommand,
    },
    /// A reply for `client`. Those of one batch share, with `client_auth = "signed"`, one
    /// signed [`ReplyRoot`] (one signature for the whole batch).
    Reply {
        client: ClientId,
        reply: VerifiedReply,
    },
    /// The service did something wrong; see [`ServiceFault`].
    Fault(ServiceFault),
    /// C1: the batch's sequence number is a checkpoint, with this state digest.
    Checkpoint {
        seq: SeqNum,
        state_digest: Digest,
    },
    /// Batch `seq` of `view` (with `digest`) executed: these client requests of it, in
    /// order (E2: those executed before are skipped). The last output of each batch.
    Executed {
        seq: SeqNum,
        view: View,
        digest: Digest,
        requests: Vec<(ClientId, Timestamp)>,
    },
    /// A request not executed before, to be ordered.
    New(Verified<Request>),
    /// ST5: the image of checkpoint `seq` is installed.
    Installed {
        seq: SeqNum,
        state_digest: Digest,
    },
    Refused(RoleRefusal),
}

impl<S: Service> Executor<S> {
    pub fn new(me: ReplicaId, membership: MembershipHandle, service: S, key: Arc<KeyPair>) -> Self {
        let chunk_bytes = membership.current().params.state_chunk_bytes;
        let mut executor = Executor {
            me,
            key,
            membership,
            service,
            clients: ClientTable::default(),
            last_executed: SeqNum(0),
            time_us: 0,
            images: BTreeMap::new(),
            base: Arc::new(ChunkedImage::new(Vec::new(), chunk_bytes)),
            journal: Vec::new(),
        };
        executor.base = Arc::new(ChunkedImage::new(executor.image(), chunk_bytes));
        executor
    }
}

impl<S: Service> Executor<S> {
    pub fn last_executed(&self) -> SeqNum {
        self.last_executed
    }

    /// The agreed time of the last executed batch (E5), microseconds since the Unix epoch.
    pub fn time_us(&self) -> u64 {
        self.time_us
    }

    pub fn request_status(&self, request: &Request) -> RequestStatus {
        self.clients.status(request.client(), request.timestamp, self.membership.current().params.client_window)
    }

    pub fn service(&self) -> &S {
        &self.service
    }

    pub fn client_table(&self) -> &ClientTable {
        &self.clients
    }

    /// A reply for `request` with `result` that travels alone (read-only, or re-sent from
    /// the client table): signed alone, or unsigned with `client_auth = "connection"`.
    fn reply(&self, view: View, request: &Request, result: Vec<u8>, read_only: bool) -> VerifiedReply {
        let reply =
            Reply { view, timestamp: request.timestamp, client: request.client(), replica: self.me, read_only, result };
        match self.membership.current().params.client_auth {
            ClientAuth::Connection => {
                let digest = self.membership.scope().digest(&reply);
                VerifiedReply::new(reply, digest, self.me, ReplyProof::Connection)
            }
            ClientAuth::Signed => {
                let signed = self.membership.sign(reply, &self.key);
                let (digest, signature) = (signed.digest(), signed.signed().signature);
                VerifiedReply::new(signed.into_signed().payload, digest, self.me, ReplyProof::Signature(signature))
            }
        }
    }

    /// The replies of one executed batch. In signed mode: a Merkle tree over their leaf
    /// digests, one signature over its root (see [`ReplyRoot`] for why that is as good as
    /// a signature per reply), and each reply with its index and path.
    fn batch_replies(
        &self,
        seq: SeqNum,
        view: View,
        replies: Vec<(ClientId, Reply)>,
    ) -> Vec<(ClientId, VerifiedReply)> {
        let scope = self.membership.scope();
        let leaves: Vec<Digest> = replies.iter().map(|(_, reply)| scope.digest(reply)).collect();
        if self.membership.current().params.client_auth == ClientAuth::Connection || replies.is_empty() {
            return replies
                .into_iter()
                .zip(leaves)
                .map(|((client, reply), leaf)| {
                    (client, VerifiedReply::new(reply, leaf, self.me, ReplyProof::Connection))
                })
                .collect();
        }
        let tree = MerkleTree::new(leaves.clone());
        let header = ReplyRoot { view, seq, replica: self.me, leaves: leaves.len() as u32, root: tree.root() };
        let root = Arc::new(scope.sign(header, &self.key).into_signed());
        replies
            .into_iter()
            .zip(leaves)
            .enumerate()
            .map(|(index, ((client, reply), leaf))| {
                let path = tree.path(index).expect("every leaf has a path");
                let proof = ReplyProof::Batch { root: root.clone(), index: index as u32, path };
                (client, VerifiedReply::new(reply, leaf, self.me, proof))
            })
            .collect()
    }

    /// The read-only path: answer from current state without ordering.
    fn query(&self, request: &Request, out: &mut Vec<ExecutorOutput>) -> Vec<u8> {
        let outcome = match rmp_serde::from_slice::<S::Op>(&request.operation) {
            Err(_) => Outcome::MalformedOperation,
            Ok(op) => {
                let caller = Caller { id: request.client(), key: request.client_key };
                match catch_unwind(AssertUnwindSafe(|| self.service.query(&op, &caller))) {
                    Ok(Some(reply)) => Outcome::Ok(reply),
                    Ok(None) => Outcome::NotReadOnly,
                    Err(panic) => {
                        let (client, operation) = (request.client(), Digest::of(&request.operation));
                        let message = panic_message(&*panic);
                        tracing::error!(replica = %self.me, %client, %operation, %message, "service query panicked");
                        out.push(ExecutorOutput::Fault(ServiceFault::QueryPanicked { client, operation, message }));
                        Outcome::ServiceFailed
                    }
                }
            }
        };
        self.encode_outcome(&outcome).0
    }

    /// The encoded outcome, or [`Outcome::ReplyTooLarge`] in its place if it does not fit
    /// `reply_bytes_max`; with the size of the refused reply.
    fn encode_outcome(&self, outcome: &Outcome<S::Reply>) -> (Vec<u8>, Option<u64>) {
        let encoded = rmp_serde::to_vec(outcome).expect("encoding a reply cannot fail");
        let limit = self.membership.current().params.reply_bytes_max as u64;
        if encoded.len() as u64 <= limit {
            return (encoded, None);
        }
        let bytes = encoded.len() as u64;
        let too_large: Outcome<S::Reply> = Outcome::ReplyTooLarge { bytes, limit };
        (rmp_serde::to_vec(&too_large).expect("encoding a reply cannot fail"), Some(bytes))
    }

    /// E5–E6: runs `request`, at `index` of `batch`, through the service. A panic leaves
    /// the service rebuilt without it.
    fn run(
        &mut self,
        seq: SeqNum,
        batch: &Batch,
        index: usize,
        request: &Request,
        out: &mut Vec<ExecutorOutput>,
    ) -> Outcome<S::Reply> {
        let Ok(op) = rmp_serde::from_slice::<S::Op>(&request.operation) else {
            return Outcome::MalformedOperation;
        };
        let caller = Caller { id: request.client(), key: request.client_key };
        let mut context = ExecutionContext::new(caller, seq, self.time_us, &batch.digest(), index);
        match catch_unwind(AssertUnwindSafe(|| self.service.execute(&op, &mut context))) {
            Ok(reply) => Outcome::Ok(reply),
            Err(panic) => {
                let (client, operation) = (request.client(), Digest::of(&request.operation));
                let message = panic_message(&*panic);
                tracing::error!(
                    replica = %self.me, %seq, %client, %operation, %message,
                    "the service panicked; the operation has no effect and its client is told so"
                );
                out.push(ExecutorOutput::Fault(ServiceFault::Panicked { seq, client, operation, message }));
                self.rebuild(out);
                Outcome::ServiceFailed
            }
        }
    }

    /// E6: the service as it was at `base`, with the journal's operations executed again
    /// (those of the current batch included, as far as it went).
    fn rebuild(&mut self, out: &mut Vec<ExecutorOutput>) {
        let at = self.last_executed;
        let decoded: Image = match rmp_serde::from_slice(self.base.bytes()) {
            Ok(image) => image,
            Err(error) => panic!("an image this executor encoded does not decode: {error}"),
        };
        if let Err(error) = self.service.restore(&decoded.service) {
            let message = error.to_string();
            tracing::error!(replica = %self.me, seq = %at, %message, "the service refused its own snapshot");
            out.push(ExecutorOutput::Fault(ServiceFault::RestoreFailed { seq: at, message }));
            return;
        }
        for entry in &self.journal {
            for &index in &entry.executed {
                let Some(Command::Request(request)) = entry.batch.commands().get(index) else { continue };
                let Ok(op) = rmp_serde::from_slice::<S::Op>(&request.operation) else { continue };
                let caller = Caller { id: request.client(), key: request.client_key };
                let mut context = ExecutionContext::new(caller, entry.seq, entry.time_us, &entry.batch.digest(), index);
                if catch_unwind(AssertUnwindSafe(|| self.service.execute(&op, &mut context))).is_err() {
                    let detail = format!(
                        "an operation of batch {} that returned before panicked when executed again",
                        entry.seq
                    );
                    tracing::error!(replica = %self.me, seq = %entry.seq, %detail, "the service is probably not deterministic");
                    out.push(ExecutorOutput::Fault(ServiceFault::NotDeterministic { seq: entry.seq, detail }));
                }
            }
        }
    }

    /// E1–E2, E5: execute batch `seq`, which must be `last_executed + 1`, at the agreed
    /// time: the batch's, or the previous batch's if that is later. Requests already
    /// executed (or below their client's window) are skipped, deterministically (N2, CX4);
    /// system commands are handed back to the replica, never to the service.
    fn execute(&mut self, seq: SeqNum, view: View, batch: &Arc<Batch>, out: &mut Vec<ExecutorOutput>) {
        assert_eq!(seq, self.last_executed.next(), "E1: execution is strictly in order");
        let window = self.membership.current().params.client_window;
        let max_clients = self.membership.current().params.client_table_max;
        self.time_us = self.time_us.max(batch.time_us());
        self.last_executed = seq;
        self.journal.push(JournalEntry { seq, time_us: self.time_us, batch: batch.clone(), executed: Vec::new() });
        let mut replies = Vec::new();
        let mut system = Vec::new();
        for (index, command) in batch.commands().iter().enumerate() {
            let request = match command {
                Command::Request(request) => request,
                // Executed by the replica itself: the user's service never sees one.
                Command::System(command) => {
                    system.push(command.clone());
                    continue;
                }
            };
            if self.request_status(request) != RequestStatus::New {
                continue;
            }
            let outcome = self.run(seq, batch, index, request, out);
            if matches!(outcome, Outcome::Ok(_)) {
                self.journal.last_mut().expect("this batch's entry").executed.push(index);
            }
            let (result, refused_bytes) = self.encode_outcome(&outcome);
            if let Some(bytes) = refused_bytes {
                let (client, limit) = (request.client(), self.membership.current().params.reply_bytes_max as u64);
                tracing::warn!(replica = %self.me, %seq, %client, bytes, limit, "a reply over reply_bytes_max was withheld");
                out.push(ExecutorOutput::Fault(ServiceFault::ReplyTooLarge { seq, client, bytes, limit }));
            }
            self.clients.record(request.client(), request.timestamp, result.clone(), seq, window, max_clients);
            let reply = Reply {
                view,
                timestamp: request.timestamp,
                client: request.client(),
                replica: self.me,
                read_only: false,
                result,
            };
            replies.push((request.client(), reply));
        }
        out.extend(system.into_iter().map(|command| ExecutorOutput::System { seq, command }));
        let requests = replies.iter().map(|(client, reply)| (*client, reply.timestamp)).collect();
        let replies = self.batch_replies(seq, view, replies);
        out.extend(replies.into_iter().map(|(client, reply)| ExecutorOutput::Reply { client, reply }));
        if seq.0.is_multiple_of(self.membership.current().params.checkpoint_interval) {
            let image = Arc::new(ChunkedImage::new(self.image(), self.membership.current().params.state_chunk_bytes));
            let state_digest = image.digest();
            self.images.insert(seq, image.clone());
            self.set_base(image);
            out.push(ExecutorOutput::Checkpoint { seq, state_digest });
        }
        out.push(ExecutorOutput::Executed { seq, view, digest: batch.digest(), requests });
    }

    /// `image` is the latest: a rebuild starts from it.
    fn set_base(&mut self, image: Arc<ChunkedImage>) {
        self.base = image;
        self.journal.clear();
    }

    /// R1, R2, CX3: see [`ExecutorInput::Request`].
    fn on_request(&self, request: Verified<Request>, view: View, out: &mut Vec<ExecutorOutput>) {
        let client = request.client();
        if request.read_only {
            let result = self.query(&request, out);
            out.push(ExecutorOutput::Reply { client, reply: self.reply(view, &request, result, true) });
            return;
        }
        match self.request_status(&request) {
            RequestStatus::TooOld => out.push(ExecutorOutput::Refused(RoleRefusal::RequestBelowClientWindow)),
            // R2: the cached reply, nothing else.
            RequestStatus::Executed(result) => {
                out.push(ExecutorOutput::Reply { client, reply: self.reply(view, &request, result, false) })
            }
            RequestStatus::New => out.push(ExecutorOutput::New(request)),
        }
    }

    fn image(&self) -> Vec<u8> {
        let image = Image {
            service: self.service.snapshot(),
            clients: self.clients.clients.iter().map(|(c, r)| (*c, r.clone())).collect(),
            time_us: self.time_us,
        };
        rmp_serde::to_vec(&image).expect("encoding a checkpoint image cannot fail")
    }

    /// The current state digest (service and client table), whether or not `last_executed`
    /// is a checkpoint.
    pub fn state_digest(&self) -> Digest {
        ChunkedImage::new(self.image(), self.membership.current().params.state_chunk_bytes).digest()
    }

    /// The image taken at checkpoint `seq`, if still held.
    pub fn image_at(&self, seq: SeqNum) -> Option<Arc<ChunkedImage>> {
        self.images.get(&seq).cloned()
    }

    /// A checkpoint became stable: older images are no longer needed (C4).
    fn on_stable(&mut self, stable: SeqNum) {
        self.images.retain(|seq, _| *seq >= stable);
    }

    /// ST5: install a checkpoint image whose digest the caller checked against a stable
    /// checkpoint proof. Refused if it does not decode or would move backwards (E4); a
    /// snapshot the service refuses is reported as a [`ServiceFault::RestoreFailed`].
    fn install(&mut self, seq: SeqNum, image: Vec<u8>, out: &mut Vec<ExecutorOutput>) -> Result<Digest, String> {
        if seq <= self.last_executed {
            return Err(format!("image at {seq} is not ahead of last executed {}", self.last_executed));
        }
        let decoded: Image = rmp_serde::from_slice(&image).map_err(|e| format!("image does not decode: {e}"))?;
        if let Err(error) = self.service.restore(&decoded.service) {
            let message = error.0;
            tracing::error!(replica = %self.me, %seq, %message, "the service refused the snapshot of a stable checkpoint");
            out.push(ExecutorOutput::Fault(ServiceFault::RestoreFailed { seq, message: message.clone() }));
            return Err(format!("the service refused the snapshot: {message}"));
        }
        let mut clients = ClientTable::default();
        for (client, record) in decoded.clients {
            clients.by_activity.insert((record.last_active, client));
            clients.clients.insert(client, record);
        }
        self.clients = clients;
        self.last_executed = seq;
        self.time_us = decoded.time_us;
        let image = Arc::new(ChunkedImage::new(image, self.membership.current().params.state_chunk_bytes));
        let digest = image.digest();
        self.images.insert(seq, image.clone());
        self.set_base(image);
        Ok(digest)
    }

    pub fn images_len(&self) -> usize {
        self.images.len()
    }
}

impl<S: Service> Role for Executor<S> {
    type Input = ExecutorInput;
    type Output = ExecutorOutput;

    fn handle(&mut self, input: ExecutorInput, _now: Instant) -> Vec<ExecutorOutput> {
        let mut out = Vec::new();
        match input {
            ExecutorInput::Execute { seq, view, batch } => self.execute(seq, view, &batch, &mut out),
            ExecutorInput::Request { request, view } => self.on_request(request, view, &mut out),
            ExecutorInput::Install { seq, image } => match self.install(seq, image, &mut out) {
                Ok(state_digest) => out.push(ExecutorOutput::Installed { seq, state_digest }),
                Err(reason) => {
                    tracing::warn!(replica = %self.me, %seq, %reason, "checkpoint image not installed");
                    out.push(ExecutorOutput::Refused(RoleRefusal::StateImageNotInstalled));
                }
            },
            ExecutorInput::Stable(seq) => self.on_stable(seq),
        }
        out
    }
}

/// The message a panic carried, if it was a string (as `panic!` with a message makes it).
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(message), _) => (*message).to_string(),
        (_, Some(message)) => message.clone(),
        _ => "(a panic without a message)".to_string(),
    }
}
