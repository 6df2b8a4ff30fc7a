//! One replica of a Steward site (docs/STEWARD.md §3, §4, §9): the pure role the runtime and
//! the multi-site simulator drive. It composes the pieces that own the rules:
//!
//! * [`LocalOrder`](super::sequencing::LocalOrder): local ordering at the leader site (W2,
//!   W3);
//! * [`ThresholdSigner`]: the site's threshold signatures (TS1–TS4);
//! * [`GlobalOrder`]: which PROPOSALs and ACCEPTs it takes and when a batch is globally
//!   ordered (W5, W7);
//! * the PBFT [`Executor`]: strict in-order execution, the client table for exactly-once
//!   replies, checkpoint images and state install (PBFT.md E1–E6, CX2–CX4), reused as is;
//!
//! and owns what is Steward's own here: the representative's duties (W1, W4: relaying
//! updates to the leader site, PROPOSALs and ACCEPTs in and out of the site, in
//! [`relay`]); sharing ACCEPTs (W6); site checkpoints and state transfer against a
//! site-signed digest (SK1, in [`checkpoints`]); and catching up a replica or site that
//! missed messages (in [`catch_up`]).
//!
//! Replies (SC1): every replica answers the clients of every batch it executes; the
//! transport delivers a reply only over the client's own connection, which is to replicas
//! of its own site, so a client hears from its site alone and accepts `f + 1` matching
//! replies (the PBFT client role, given its site's membership). Read-only queries are
//! answered inside the site from current state (SC2).
//!
//! Changes of representative (LV1–LV4) are in [`local_view`] and, at the leader site,
//! [`local_constraint`]; changes of leader site (GV1–GV6, RS1) in [`global_view`]. What a
//! replica persists and how it comes back after a crash ([`SiteRecord`],
//! [`SiteReplica::recover`]) is in [`durable`].

mod catch_up;
mod checkpoints;
mod durable;
mod footprint;
mod global_view;
mod local_constraint;
mod local_view;
mod relay;

pub use catch_up::RECONCILE_FRESH_INTERVALS;
pub use checkpoints::{CHUNKS_PER_PEER_PER_INTERVAL, CHUNKS_PER_REQUEST};
pub use durable::{SiteDurable, SiteRecord};

use super::constraint::ConstraintRefusal;
use super::global::{GlobalOrder, GlobalOutput, GlobalRefusal, SiteSigned};
use super::messages::{OrderedProof, Proposal, SiteMessage};
use super::payload::{GlobalView, LocalView, SitePayload};
use super::sequencing::{LocalOrder, LocalVote, Sequenced, SequencingRefusal};
use super::signer::{SignerInput, SignerLimits, SignerOutput, SignerRefusal, ThresholdSigner};
use super::timers::Timeouts;
use crate::batch::Batch;
use crate::config::ConfigError;
use crate::ids::{ClientId, ClusterId, Instant, PeerId, ReplicaId, SeqNum, View};
use crate::membership::MembershipHandle;
use crate::messages::{Request, VerifiedReply};
use crate::roles::executor::{Executor, ExecutorInput, ExecutorOutput, ServiceFault};
use crate::roles::Role;
use crate::service::Service;
use bulwark_crypto::threshold::ThresholdScheme;
use bulwark_crypto::{Digest, KeyPair, Signed, Verified};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;

/// The parameters of the wide-area layer, the same at every replica of every site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteParams {
    /// W3: sequence numbers taken above `aru`.
    pub window: u64,
    /// Updates one PROPOSAL orders at most (SM2).
    pub batch_size_max: usize,
    /// How long the leader-site representative waits for a batch to fill.
    pub batch_delay_us: u64,
    /// How often a replica tells its peers how far it executed, sends again what may have
    /// been lost, and (stuck with work outstanding) asks the other sites (RC2).
    pub status_interval_us: u64,
    /// Ordered batches (and PROPOSALs, ACCEPTs) sent to one peer per status it sends.
    pub catch_up_max: usize,
    /// Updates the leader-site representative holds unordered; more are refused.
    pub pending_updates_max: usize,
    /// A forwarded update is forwarded again only after this long.
    pub forward_again_us: u64,
    /// PBFT.md N1.f: a PRE-PREPARE's agreed time may differ from the replica's clock by
    /// at most this.
    pub clock_skew_max_us: u64,
    /// TM3's `K`: `Global_T` in global view 0; `Local_T` is `K / (f + 3)` at the leader
    /// site and `K / ((f + 3)(f + 2))` elsewhere (see [`Timeouts`]).
    pub global_timeout_base_us: u64,
}

impl Default for SiteParams {
    fn default() -> Self {
        SiteParams {
            window: 64,
            batch_size_max: 32,
            batch_delay_us: 2_000,
            status_interval_us: 200_000,
            catch_up_max: 16,
            pending_updates_max: 4_096,
            forward_again_us: 1_000_000,
            clock_skew_max_us: 5_000_000,
            global_timeout_base_us: 12_000_000,
        }
    }
}

/// What a replica knows of a site: its members and its public key.
#[derive(Debug)]
pub struct SiteInfo<S: ThresholdScheme> {
    /// Sorted.
    pub members: Vec<ReplicaId>,
    pub key: Arc<S::PublicKey>,
}

impl<S: ThresholdScheme> Clone for SiteInfo<S> {
    fn clone(&self) -> Self {
        SiteInfo { members: self.members.clone(), key: self.key.clone() }
    }
}

/// Everything a replica of a site is made from.
#[derive(Debug)]
pub struct SiteSetup<S: ThresholdScheme> {
    pub site: ClusterId,
    pub id: ReplicaId,
    /// Its ed25519 key (it signs replies with it).
    pub key: Arc<KeyPair>,
    /// Its site as a cluster: members, their keys, the PBFT parameters the executor uses.
    pub membership: MembershipHandle,
    /// Every site, its own included.
    pub sites: BTreeMap<ClusterId, SiteInfo<S>>,
    pub secret: S::SecretShare,
    pub params: SiteParams,
}

/// What a replica is told.
#[derive(Debug)]
pub enum SiteInput<S: ThresholdScheme> {
    /// From a replica of this or another site; the link vouches for the sender.
    Message {
        from: PeerId,
        message: SiteMessage<S>,
    },
    /// An update or read-only query from a client of this site.
    Client(Verified<Request>),
    Timer(SiteTimer),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SiteTimer {
    /// The leader-site representative's batch waited long enough.
    Batch,
    /// Time to send status, and to send again what may have been lost.
    Status,
    /// `Local_T` (LV1).
    Local,
    /// `Global_T` (GV1).
    Global,
}

/// Why an input was refused; counted by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteRefusal {
    Sequencing(SequencingRefusal),
    Global(GlobalRefusal),
    Signer(SignerRefusal),
    /// A message from a replica that is not a member of the site it names, or a message
    /// only a replica of this site may send, from another site.
    UnknownPeer,
    /// A PROPOSAL whose batch is not the one its payload binds.
    BatchMismatch,
    /// A checkpoint or state whose site signatures or digest do not hold.
    BadCheckpoint,
    /// SK1: a chunk of a checkpoint image that does not verify against the signed digest.
    BadStateChunk,
    /// SK1: a checkpoint image larger than `state_transfer_bytes_max`.
    StateTooLarge,
    /// The leader-site representative holds as many unordered updates as it may.
    TooManyPending,
    /// The executor refused (a request below its client's window, an image not installed).
    Executor,
    /// A NEW-REP that is not one, or whose site signature does not verify.
    BadNewRep,
    /// LV2, LV3: a report or constraint bundle that does not check, or a request, report or
    /// bundle from a replica that is not the one that may send it.
    Constraint(ConstraintRefusal),
    /// GV1–GV3: a GLOBAL-VC, its proof or an ARU that is not one or does not verify.
    BadGlobalView,
    /// RC2: a request to reconcile that is not one or whose site signature does not verify.
    BadReconcile,
}

impl SiteRefusal {
    /// The counter label: the kind and the inner reason.
    pub fn name(&self) -> &'static str {
        match self {
            SiteRefusal::Sequencing(r) => r.into(),
            SiteRefusal::Global(r) => r.into(),
            SiteRefusal::Signer(r) => r.into(),
            SiteRefusal::UnknownPeer => "UnknownPeer",
            SiteRefusal::BatchMismatch => "BatchMismatch",
            SiteRefusal::BadCheckpoint => "BadCheckpoint",
            SiteRefusal::BadStateChunk => "BadStateChunk",
            SiteRefusal::StateTooLarge => "StateTooLarge",
            SiteRefusal::TooManyPending => "TooManyPending",
            SiteRefusal::Executor => "Executor",
            SiteRefusal::BadNewRep => "BadNewRep",
            SiteRefusal::Constraint(r) => r.into(),
            SiteRefusal::BadGlobalView => "BadGlobalView",
            SiteRefusal::BadReconcile => "BadReconcile",
        }
    }
}

/// What a replica produces.
#[derive(Debug)]
pub enum SiteOutput<S: ThresholdScheme> {
    /// Make this durable before carrying out the outputs after it (see [`durable`]).
    Persist(SiteRecord<S>),
    /// To every other member of this replica's site.
    ToSite(SiteMessage<S>),
    /// To one replica, of this or another site.
    To {
        peer: PeerId,
        message: SiteMessage<S>,
    },
    /// To `client`, if it is connected to this replica.
    Reply {
        client: ClientId,
        reply: VerifiedReply,
    },
    SetTimer {
        timer: SiteTimer,
        at: Instant,
    },
    /// W7: batch `seq` with `digest` executed.
    Executed {
        seq: SeqNum,
        digest: Digest,
    },
    /// SK1: the state of the stable site checkpoint `seq` was installed.
    Installed {
        seq: SeqNum,
        state: Digest,
    },
    /// TS3: `member` of this site sent a bad share.
    Blamed {
        member: ReplicaId,
        message: Digest,
    },
    Fault(ServiceFault),
    Refused(SiteRefusal),
}

/// Cryptographic work done so far, for a simulator that charges CPU time for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CryptoWork {
    pub shares_signed: u64,
    /// Shares and combined signatures checked by the signer.
    pub signer_checks: u64,
    pub combined: u64,
    /// Site signatures of other messages verified (PROPOSALs, ACCEPTs, checkpoints).
    pub site_signatures_verified: u64,
    /// ed25519 signatures checked inside forwarded reports and certificates (LV2, LV3),
    /// beyond the one per message received.
    pub votes_verified: u64,
}

/// A replica of a Steward site.
pub struct SiteReplica<Svc: Service, S: ThresholdScheme> {
    site: ClusterId,
    id: ReplicaId,
    /// Its ed25519 key: it signs its local votes, reports and replies with it.
    key: Arc<KeyPair>,
    params: SiteParams,
    sites: BTreeMap<ClusterId, SiteInfo<S>>,
    /// The local view each site is in, as this replica knows it.
    local_views: BTreeMap<ClusterId, LocalView>,
    local: LocalOrder,
    signer: ThresholdSigner<S>,
    order: GlobalOrder<S>,
    executor: Executor<Svc>,
    membership: MembershipHandle,
    /// Batch contents by digest, for batches pre-prepared or proposed and not executed.
    batches: BTreeMap<Digest, Arc<Batch>>,
    /// Combined PROPOSALs above `aru`.
    proposals: BTreeMap<SeqNum, Proposal<S>>,
    /// ACCEPTs above `aru`, this site's included, by site.
    accepts: BTreeMap<SeqNum, BTreeMap<ClusterId, SiteSigned<S>>>,
    /// Executed batches above the stable checkpoint, with their proofs (for catch-up).
    ordered: BTreeMap<SeqNum, Arc<OrderedProof<S>>>,
    /// This replica's shares of PROPOSALs and ACCEPTs above `aru` and of checkpoints above
    /// the stable one, sent again on the status timer: a peer may have lost one even after
    /// this replica combined.
    my_shares: BTreeMap<Digest, (SitePayload, S::Share)>,
    /// Site signatures completed before this replica allowed their payload.
    unclaimed: VecDeque<(Digest, S::Signature)>,
    relay: relay::Relay,
    checkpoints: checkpoints::Checkpoints<S>,
    catch_up: catch_up::CatchUp<S>,
    timeouts: Timeouts,
    rep_change: local_view::LocalViews,
    constraint: local_constraint::Constraining<S>,
    global: global_view::GlobalViews<S>,
    status_timer_set: bool,
    /// The stable checkpoint last persisted.
    persisted_stable: SeqNum,
    /// What recovery persisted anew, handed out by `start` before anything else.
    recovered: Vec<SiteRecord<S>>,
    crypto: CryptoWork,
    /// The time of the input being handled.
    now: Instant,
}

impl<Svc: Service, S: ThresholdScheme> fmt::Debug for SiteReplica<Svc, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SiteReplica")
            .field("site", &self.site)
            .field("id", &self.id)
            .field("aru", &self.order.aru())
            .finish()
    }
}

impl<Svc: Service, S: ThresholdScheme> SiteReplica<Svc, S> {
    /// A replica from its setup; refused if the parameters are not valid (TM3).
    pub fn new(setup: SiteSetup<S>, service: Svc) -> Result<Self, ConfigError> {
        let SiteSetup { site, id, key, membership, sites, secret, params } = setup;
        let f = sites.values().map(|info| info.members.len().saturating_sub(1) / 3).max().unwrap_or(0);
        let timeouts = Timeouts::new(params.global_timeout_base_us, f, sites.len())?;
        let own = sites.get(&site).expect("a replica's own site is among the sites").clone();
        let keys = sites.iter().map(|(site, info)| (*site, info.key.clone())).collect();
        Ok(SiteReplica {
            site,
            id,
            timeouts,
            rep_change: local_view::LocalViews::default(),
            constraint: local_constraint::Constraining::default(),
            global: global_view::GlobalViews::default(),
            local: LocalOrder::new(id, own.members.clone(), params.window),
            signer: ThresholdSigner::new(site, own.members.clone(), own.key.clone(), secret, SignerLimits::default()),
            order: GlobalOrder::new(keys, params.window),
            executor: Executor::new(id, membership.clone(), service, key.clone()),
            key,
            membership,
            local_views: sites.keys().map(|site| (*site, 0)).collect(),
            sites,
            params,
            batches: BTreeMap::new(),
            proposals: BTreeMap::new(),
            accepts: BTreeMap::new(),
            ordered: BTreeMap::new(),
            my_shares: BTreeMap::new(),
            unclaimed: VecDeque::new(),
            relay: relay::Relay::default(),
            checkpoints: checkpoints::Checkpoints::default(),
            catch_up: catch_up::CatchUp::default(),
            status_timer_set: false,
            persisted_stable: SeqNum(0),
            recovered: Vec::new(),
            crypto: CryptoWork::default(),
            now: Instant::ZERO,
        })
    }

    pub fn site(&self) -> ClusterId {
        self.site
    }

    pub fn id(&self) -> ReplicaId {
        self.id
    }

    /// Every site, its own included: members and public key.
    pub fn sites(&self) -> &BTreeMap<ClusterId, SiteInfo<S>> {
        &self.sites
    }

    /// Everything up to here is executed (W7).
    pub fn aru(&self) -> SeqNum {
        self.order.aru()
    }

    pub fn global_view(&self) -> GlobalView {
        self.order.global_view()
    }

    pub fn local_view(&self) -> LocalView {
        self.local_views[&self.site]
    }

    /// The local view this replica knows `site` to be in (preinstalled).
    pub fn local_view_of(&self, site: ClusterId) -> LocalView {
        self.local_views.get(&site).copied().unwrap_or(0)
    }

    /// The digest of the current state (service and client table).
    pub fn state_digest(&self) -> Digest {
        self.executor.state_digest()
    }

    pub fn service(&self) -> &Svc {
        self.executor.service()
    }

    /// Changes of representative this replica preinstalled, of any site (LV1).
    pub fn local_view_changes(&self) -> u64 {
        self.rep_change.changes
    }

    /// Global views this replica preinstalled (GV2).
    pub fn global_view_changes(&self) -> u64 {
        self.global.changes
    }

    /// The latest stable site checkpoint.
    pub fn stable_checkpoint(&self) -> SeqNum {
        self.checkpoints.stable_seq()
    }

    pub fn crypto_work(&self) -> CryptoWork {
        CryptoWork {
            signer_checks: self.signer.checks(),
            site_signatures_verified: self.order.verified() + self.crypto.site_signatures_verified,
            ..self.crypto
        }
    }

    /// The leader site of the current global view.
    pub fn leader_site(&self) -> ClusterId {
        self.order.leader(self.global_view())
    }

    fn at_leader_site(&self) -> bool {
        self.leader_site() == self.site
    }

    /// The representative of `site` in the local view this replica knows it to be in.
    pub fn representative_of(&self, site: ClusterId) -> PeerId {
        let members = &self.sites[&site].members;
        let lv = self.local_views.get(&site).copied().unwrap_or(0);
        PeerId::new(site, members[(lv % members.len() as u64) as usize])
    }

    fn is_representative(&self) -> bool {
        self.representative_of(self.site).replica == self.id
    }

    fn membership_params(&self) -> crate::config::ProtocolParams {
        self.membership.current().params.clone()
    }

    fn views(&self) -> (GlobalView, LocalView) {
        (self.global_view(), self.local_view())
    }

    /// Starts the status timer (after [`recover`](Self::recover), first what recovery
    /// persisted anew).
    pub fn start(&mut self, now: Instant) -> Vec<SiteOutput<S>> {
        let mut out: Vec<SiteOutput<S>> = self.recovered.drain(..).map(SiteOutput::Persist).collect();
        self.arm_status(now, &mut out);
        out
    }

    fn arm_status(&mut self, now: Instant, out: &mut Vec<SiteOutput<S>>) {
        if !self.status_timer_set {
            self.status_timer_set = true;
            let at = Instant(now.0 + self.params.status_interval_us);
            out.push(SiteOutput::SetTimer { timer: SiteTimer::Status, at });
        }
    }

    pub fn handle(&mut self, input: SiteInput<S>, now: Instant) -> Vec<SiteOutput<S>> {
        self.now = now;
        let mut out = Vec::new();
        match input {
            SiteInput::Client(request) => self.on_client(request, &mut out),
            SiteInput::Timer(SiteTimer::Batch) => self.on_batch_timer(&mut out),
            SiteInput::Timer(SiteTimer::Local) => self.on_local_timer(&mut out),
            SiteInput::Timer(SiteTimer::Global) => self.on_global_timer(&mut out),
            SiteInput::Timer(SiteTimer::Status) => {
                self.status_timer_set = false;
                self.on_status_timer(&mut out);
                self.arm_status(now, &mut out);
            }
            SiteInput::Message { from, message } => {
                if self.sites.get(&from.cluster).is_none_or(|site| site.members.binary_search(&from.replica).is_err()) {
                    out.push(SiteOutput::Refused(SiteRefusal::UnknownPeer));
                    return out;
                }
                self.on_message(from, message, now, &mut out);
            }
        }
        self.keep_local_timer(&mut out);
        self.keep_global_timer(&mut out);
        self.persist_stable(&mut out);
        out
    }

    fn on_message(&mut self, from: PeerId, message: SiteMessage<S>, now: Instant, out: &mut Vec<SiteOutput<S>>) {
        let local = from.cluster == self.site;
        match message {
            SiteMessage::Update(request) => self.on_update(from, request, out),
            SiteMessage::PrePrepare { vote, batch } if local => {
                if let Some(vote) = self.verify_vote(from, vote, out) {
                    self.on_pre_prepare(vote, batch, now, out)
                }
            }
            SiteMessage::Prepare(vote) if local => {
                if let Some(vote) = self.verify_vote(from, vote, out) {
                    self.on_prepare(vote, out)
                }
            }
            SiteMessage::ConstraintRequest { gv, lv, base, global } if local => {
                self.on_constraint_request(from.replica, (gv, lv, base, global), out)
            }
            SiteMessage::AruRequest { gv, aru } if local => {
                if self.representative_of(self.site) == from {
                    self.on_aru_request((gv, aru), out)
                }
            }
            SiteMessage::GlobalBundle(bundle) if local => self.on_global_bundle(bundle, out),
            SiteMessage::GlobalVc(signed) => self.on_global_vc(Some(from), signed, out),
            SiteMessage::GlobalVcProof(proof) => self.on_global_vc_proof(proof, out),
            SiteMessage::Aru(signed) => self.on_aru(Some(from), signed, out),
            SiteMessage::GlobalConstraint(constraint) => self.on_global_constraint(from, constraint, out),
            SiteMessage::Report(report) if local => self.on_report(from.replica, report, out),
            SiteMessage::Constraint(reports) if local => self.on_constraint(from.replica, reports, out),
            SiteMessage::Share { message, share } if local => {
                let outputs = self.signer.handle(SignerInput::Share { from: from.replica, message, share });
                self.signer_outputs(outputs, None, out);
            }
            SiteMessage::Proposal(proposal) => self.on_proposal(from, proposal, out),
            SiteMessage::Accept(signed) => self.on_accept(from, signed, out),
            SiteMessage::Checkpoint(signed) => self.on_checkpoint(from, signed, out),
            SiteMessage::NewRep(signed) => self.on_new_rep(from, signed, out),
            SiteMessage::Status { aru, gv } => self.on_status(from, (aru, gv), out),
            SiteMessage::Reconcile { signed, gv } => self.on_reconcile(from, signed, gv, out),
            SiteMessage::Ordered(proof) => self.on_ordered(proof, out),
            SiteMessage::StateRequest { seq, from: first } => self.on_state_request(from, (seq, first), out),
            SiteMessage::StateChunk { proof, chunk } => self.on_state_chunk(from, proof, chunk, out),
            SiteMessage::PrePrepare { .. }
            | SiteMessage::Prepare(_)
            | SiteMessage::Share { .. }
            | SiteMessage::ConstraintRequest { .. }
            | SiteMessage::Report(_)
            | SiteMessage::Constraint(_)
            | SiteMessage::AruRequest { .. }
            | SiteMessage::GlobalBundle(_) => out.push(SiteOutput::Refused(SiteRefusal::UnknownPeer)),
        }
    }

    /// W1: a client's update reaches the executor first (a cached reply, a read-only
    /// answer, or a new update to order).
    fn on_client(&mut self, request: Verified<Request>, out: &mut Vec<SiteOutput<S>>) {
        let view = View(self.local_view());
        let outputs = self.executor.handle(ExecutorInput::Request { request, view }, self.now);
        for output in outputs {
            match output {
                ExecutorOutput::Reply { client, reply } => out.push(SiteOutput::Reply { client, reply }),
                ExecutorOutput::New(request) => self.route_update(request, out),
                ExecutorOutput::Fault(fault) => out.push(SiteOutput::Fault(fault)),
                ExecutorOutput::Refused(_) => out.push(SiteOutput::Refused(SiteRefusal::Executor)),
                _ => {}
            }
        }
    }

    /// This replica's signature on one of its local votes (also what a Byzantine replica of
    /// the simulator signs what it bends with).
    pub fn sign_vote(&self, vote: LocalVote) -> Verified<LocalVote> {
        self.membership.sign(vote, &self.key)
    }

    /// A local vote signed by the replica its link names.
    fn verify_vote(
        &mut self,
        from: PeerId,
        vote: Signed<LocalVote>,
        out: &mut Vec<SiteOutput<S>>,
    ) -> Option<Verified<LocalVote>> {
        let membership = self.membership.current();
        let verified = membership
            .public_key(from.replica)
            .filter(|_| vote.payload.replica == from.replica)
            .and_then(|key| membership.scope().verify(vote, key).ok());
        if verified.is_none() {
            out.push(SiteOutput::Refused(SiteRefusal::Sequencing(SequencingRefusal::BadSignature)));
        }
        verified
    }

    /// W2, W3 (a leader-site replica): a PRE-PREPARE.
    fn on_pre_prepare(
        &mut self,
        vote: Verified<LocalVote>,
        batch: Arc<Batch>,
        now: Instant,
        out: &mut Vec<SiteOutput<S>>,
    ) {
        if !self.at_leader_site() {
            out.push(SiteOutput::Refused(SiteRefusal::Sequencing(SequencingRefusal::NotSequencing)));
            return;
        }
        // LV3: a batch the constraint binds was taken in an earlier local view with its time.
        let rebound = self.local.bound_to(vote.seq) == Some(vote.digest);
        let ahead = batch.time_us() > now.0.saturating_add(self.params.clock_skew_max_us);
        if !rebound && (ahead || batch.time_us() < self.executor.time_us()) {
            out.push(SiteOutput::Refused(SiteRefusal::Sequencing(SequencingRefusal::TimeOutsideClockSkew)));
            return;
        }
        let (views, aru) = (self.views(), self.aru());
        let (membership, key) = (self.membership.clone(), self.key.clone());
        let sign = |mine: LocalVote| membership.sign(mine, &key);
        match self.local.on_pre_prepare(vote, views, aru, batch.clone(), sign) {
            Ok(sequenced) => {
                self.batches.insert(batch.digest(), batch);
                self.sequenced(sequenced, out);
            }
            Err(refusal) => out.push(SiteOutput::Refused(SiteRefusal::Sequencing(refusal))),
        }
    }

    fn on_prepare(&mut self, vote: Verified<LocalVote>, out: &mut Vec<SiteOutput<S>>) {
        if !self.at_leader_site() {
            out.push(SiteOutput::Refused(SiteRefusal::Sequencing(SequencingRefusal::NotSequencing)));
            return;
        }
        let (views, aru) = (self.views(), self.aru());
        match self.local.on_prepare(vote, views, aru) {
            Ok(sequenced) => self.sequenced(sequenced, out),
            Err(refusal) => out.push(SiteOutput::Refused(SiteRefusal::Sequencing(refusal))),
        }
    }

    /// W3: PREPARE, or share the PROPOSAL of a prepare certificate (TS1).
    fn sequenced(&mut self, sequenced: Sequenced, out: &mut Vec<SiteOutput<S>>) {
        let (gv, lv) = self.views();
        let (seq, digest, prepare, certified) = match sequenced {
            Sequenced::Nothing => return,
            Sequenced::Prepare { seq, digest } => (seq, digest, true, false),
            Sequenced::Certified { seq, digest } => (seq, digest, false, true),
            Sequenced::PrepareCertified { seq, digest } => (seq, digest, true, true),
        };
        if prepare {
            if let Some(vote) = self.local.my_prepare(seq) {
                out.push(SiteOutput::Persist(SiteRecord::Voted { vote: vote.clone(), batch: None }));
                out.push(SiteOutput::ToSite(SiteMessage::Prepare(vote.signed().clone())));
            }
        }
        if certified {
            if let Some(certificate) = self.local.certificates().get(&seq) {
                out.push(SiteOutput::Persist(SiteRecord::Certified(certificate.clone())));
            }
            self.sign(SitePayload::Proposal { site: self.site, gv, lv, seq, updates: digest }, out)
        }
    }

    /// TS1: asks the signer to share `payload`, or takes the site's signature of it if it
    /// completed before this replica allowed it.
    fn sign(&mut self, payload: SitePayload, out: &mut Vec<SiteOutput<S>>) {
        let message = payload.message();
        if let Some(position) = self.unclaimed.iter().position(|(m, _)| *m == message) {
            let (_, signature) = self.unclaimed.remove(position).expect("found");
            self.on_site_signed(SiteSigned { payload, signature }, out);
            return;
        }
        let outputs = self.signer.handle(SignerInput::Sign(payload));
        self.signer_outputs(outputs, Some(payload), out);
    }

    /// `signing` is the payload this replica asked the signer to share, if it did.
    fn signer_outputs(
        &mut self,
        outputs: Vec<SignerOutput<S>>,
        signing: Option<SitePayload>,
        out: &mut Vec<SiteOutput<S>>,
    ) {
        for output in outputs {
            match output {
                SignerOutput::Share { message, share } => {
                    self.crypto.shares_signed += 1;
                    if let Some(payload) = signing {
                        out.push(SiteOutput::Persist(SiteRecord::Shared(payload)));
                        self.my_shares.insert(message, (payload, share.clone()));
                    }
                    out.push(SiteOutput::ToSite(SiteMessage::Share { message, share }));
                }
                SignerOutput::Signed { message, payload, signature } => {
                    self.crypto.combined += 1;
                    match payload {
                        Some(payload) => self.on_site_signed(SiteSigned { payload, signature }, out),
                        None => {
                            self.unclaimed.push_back((message, signature));
                            if self.unclaimed.len() > 2 * self.params.window as usize {
                                self.unclaimed.pop_front();
                            }
                        }
                    }
                }
                SignerOutput::Blamed { member, message } => out.push(SiteOutput::Blamed { member, message }),
                // Shares are sent again until their batch executes: a repeat is expected.
                SignerOutput::Refused(SignerRefusal::DuplicateShare) => {}
                SignerOutput::Refused(refusal) => out.push(SiteOutput::Refused(SiteRefusal::Signer(refusal))),
            }
        }
    }

    /// TS2: this site signed `signed`.
    fn on_site_signed(&mut self, signed: SiteSigned<S>, out: &mut Vec<SiteOutput<S>>) {
        match signed.payload {
            SitePayload::Proposal { seq, updates, .. } => {
                let Some(batch) = self.batches.get(&updates).cloned() else { return };
                let proposal = Proposal { signed, batch };
                out.push(SiteOutput::Persist(SiteRecord::Proposal(proposal.clone())));
                if self.is_representative() {
                    self.to_other_sites(SiteMessage::Proposal(proposal.clone()), out);
                }
                let outputs = self.order.on_proposal(&proposal.signed);
                self.proposals.insert(seq, proposal);
                self.global_outputs(outputs, out);
            }
            SitePayload::Accept { seq, .. } => {
                if self.is_representative() {
                    self.to_other_sites(SiteMessage::Accept(signed.clone()), out);
                }
                let outputs = self.order.on_accept(&signed);
                self.accepts.entry(seq).or_default().insert(self.site, signed);
                self.global_outputs(outputs, out);
            }
            SitePayload::SiteCheckpoint { .. } => {
                if self.is_representative() {
                    self.to_other_sites(SiteMessage::Checkpoint(signed.clone()), out);
                }
                self.take_checkpoint(signed, out);
            }
            SitePayload::NewRep { .. } => self.preinstall(signed, true, out),
            SitePayload::GlobalVc { .. } => self.on_global_vc(None, signed, out),
            SitePayload::Aru { .. } => self.on_aru(None, signed, out),
            SitePayload::GlobalConstraint { .. } => self.on_global_constraint_signed(signed, out),
            SitePayload::Reconcile { .. } => self.on_reconcile_signed(signed, out),
        }
    }

    /// TS4: whether `signed` carries its site's signature, checked with the site's key
    /// alone; `None` for a site this replica does not know.
    fn site_signature_holds(&mut self, signed: &SiteSigned<S>) -> Option<bool> {
        let key = self.sites.get(&signed.payload.site())?.key.clone();
        self.crypto.site_signatures_verified += 1;
        Some(S::verify(&key, &signed.signature, &signed.payload.message()))
    }

    /// W4: to the representative of every other site.
    fn to_other_sites(&self, message: SiteMessage<S>, out: &mut Vec<SiteOutput<S>>) {
        for site in self.sites.keys().filter(|site| **site != self.site) {
            out.push(SiteOutput::To { peer: self.representative_of(*site), message: message.clone() });
        }
    }

    /// W5, W6: a PROPOSAL from the leader site, relayed in the site by its representative
    /// when it came from another site.
    fn on_proposal(&mut self, from: PeerId, proposal: Proposal<S>, out: &mut Vec<SiteOutput<S>>) {
        let relay = from.cluster != self.site && self.is_representative();
        self.take_proposal(proposal, relay, out);
    }

    fn take_proposal(&mut self, proposal: Proposal<S>, relay: bool, out: &mut Vec<SiteOutput<S>>) {
        let SitePayload::Proposal { seq, updates, .. } = proposal.signed.payload else {
            out.push(SiteOutput::Refused(SiteRefusal::Global(GlobalRefusal::WrongKind)));
            return;
        };
        if proposal.batch.digest() != updates {
            out.push(SiteOutput::Refused(SiteRefusal::BatchMismatch));
            return;
        }
        if seq <= self.aru() || self.proposals.get(&seq).is_some_and(|p| p.signed.payload == proposal.signed.payload) {
            return;
        }
        let outputs = self.order.on_proposal(&proposal.signed);
        if outputs.iter().any(|o| matches!(o, GlobalOutput::Refused(_))) {
            self.global_outputs(outputs, out);
            return;
        }
        out.push(SiteOutput::Persist(SiteRecord::Proposal(proposal.clone())));
        if relay {
            out.push(SiteOutput::ToSite(SiteMessage::Proposal(proposal.clone())));
        }
        self.batches.insert(updates, proposal.batch.clone());
        self.proposals.insert(seq, proposal);
        self.global_outputs(outputs, out);
    }

    /// W7: an ACCEPT of another site, relayed in the site by its representative when it
    /// came from another site.
    fn on_accept(&mut self, from: PeerId, signed: SiteSigned<S>, out: &mut Vec<SiteOutput<S>>) {
        let relay = from.cluster != self.site && self.is_representative();
        self.take_accept(signed, relay, out);
    }

    fn take_accept(&mut self, signed: SiteSigned<S>, relay: bool, out: &mut Vec<SiteOutput<S>>) {
        let SitePayload::Accept { site, seq, .. } = signed.payload else {
            out.push(SiteOutput::Refused(SiteRefusal::Global(GlobalRefusal::WrongKind)));
            return;
        };
        if seq <= self.aru()
            || self.accepts.get(&seq).and_then(|a| a.get(&site)).is_some_and(|a| a.payload == signed.payload)
        {
            return;
        }
        let outputs = self.order.on_accept(&signed);
        if outputs.iter().any(|o| matches!(o, GlobalOutput::Refused(_))) {
            self.global_outputs(outputs, out);
            return;
        }
        if relay {
            out.push(SiteOutput::ToSite(SiteMessage::Accept(signed.clone())));
        }
        self.accepts.entry(seq).or_default().insert(site, signed);
        self.global_outputs(outputs, out);
    }

    fn global_outputs(&mut self, outputs: Vec<GlobalOutput>, out: &mut Vec<SiteOutput<S>>) {
        // A batch ordered by the same input needs no ACCEPT of this site.
        let executing = outputs.iter().filter_map(|o| match o {
            GlobalOutput::Execute { seq, .. } => Some(*seq),
            _ => None,
        });
        let executing = executing.max().unwrap_or(SeqNum(0));
        for output in outputs {
            match output {
                // W6: a non-leader site accepts; the leader site's PROPOSAL is its vote.
                GlobalOutput::Accepted { gv, seq, updates } => {
                    if !self.at_leader_site() && seq > self.aru() && seq > executing {
                        let lv = self.local_view();
                        self.sign(SitePayload::Accept { site: self.site, gv, lv, seq, updates }, out);
                    }
                }
                GlobalOutput::Execute { seq, updates } => self.execute(seq, updates, out),
                GlobalOutput::Refused(refusal) => out.push(SiteOutput::Refused(SiteRefusal::Global(refusal))),
            }
        }
    }

    /// W7: batch `seq` is globally ordered and everything below it executed.
    fn execute(&mut self, seq: SeqNum, digest: Digest, out: &mut Vec<SiteOutput<S>>) {
        // Global ordering takes a batch only with its PROPOSAL, which this replica keeps
        // with the batch until the batch executes.
        let proposal = self.proposals.remove(&seq).expect("an ordered batch has its PROPOSAL");
        let proposed_in = match proposal.signed.payload {
            SitePayload::Proposal { gv, .. } => gv,
            _ => 0,
        };
        let batch = proposal.batch.clone();
        self.batches.remove(&digest);
        let accepts = self.accepts.remove(&seq).unwrap_or_default();
        let accepts: Vec<SiteSigned<S>> = accepts
            .into_values()
            .filter(|a| matches!(a.payload, SitePayload::Accept { gv, updates, .. } if updates == digest && gv == proposed_in))
            .collect();
        let proof = Arc::new(OrderedProof { proposal, accepts });
        out.push(SiteOutput::Persist(SiteRecord::Ordered(proof.clone())));
        self.ordered.insert(seq, proof);
        self.relay.executed(batch.requests().map(|request| (request.client(), request.timestamp)));
        let view = View(self.local_view());
        let outputs = self.executor.handle(ExecutorInput::Execute { seq, view, batch }, self.now);
        for output in outputs {
            match output {
                ExecutorOutput::Reply { client, reply } => out.push(SiteOutput::Reply { client, reply }),
                ExecutorOutput::Checkpoint { seq, state_digest } => {
                    self.sign(SitePayload::SiteCheckpoint { site: self.site, seq, state: state_digest }, out)
                }
                ExecutorOutput::Executed { .. } => out.push(SiteOutput::Executed { seq, digest }),
                ExecutorOutput::Fault(fault) => out.push(SiteOutput::Fault(fault)),
                ExecutorOutput::Refused(_) => out.push(SiteOutput::Refused(SiteRefusal::Executor)),
                ExecutorOutput::System { .. } | ExecutorOutput::New(_) | ExecutorOutput::Installed { .. } => {}
            }
        }
        self.local.executed_through(self.aru());
        self.rep_change.progressed();
        self.global.progressed();
        self.forget_executed_shares();
        self.collect_garbage_if_stable();
        if self.is_representative() && self.at_leader_site() {
            self.propose(false, out);
        }
    }

    /// Shares of PROPOSALs and ACCEPTs at or below `aru` need no resending.
    fn forget_executed_shares(&mut self) {
        let aru = self.aru();
        self.my_shares.retain(|_, (payload, _)| match payload {
            SitePayload::Proposal { seq, .. } | SitePayload::Accept { seq, .. } => *seq > aru,
            _ => true,
        });
    }

    /// The status timer: tell the peers how far this replica is (a peer that is further
    /// sends what this one lacks). If this replica is stuck (work outstanding and `aru`
    /// unchanged since the last timer), send again what a peer may have lost: its shares,
    /// its PREPAREs, the PROPOSALs it holds (a relay may have been lost), the PRE-PREPAREs of batches
    /// not executed (the leader-site representative), and ask the other sites (RC2).
    fn on_status_timer(&mut self, out: &mut Vec<SiteOutput<S>>) {
        let (aru, gv) = (self.aru(), self.global_view());
        out.push(SiteOutput::ToSite(SiteMessage::Status { aru, gv }));
        self.fetch_again(out);
        let leader_representative = self.is_representative() && self.at_leader_site();
        if leader_representative {
            self.propose(true, out);
        }
        let outstanding = self.has_outstanding_work();
        let stuck = self.catch_up.stuck(aru, outstanding);
        self.constraint_again(stuck, out);
        self.global_again(stuck, out);
        if !stuck {
            return;
        }
        for (message, (_, share)) in &self.my_shares {
            out.push(SiteOutput::ToSite(SiteMessage::Share { message: *message, share: share.clone() }));
        }
        for proposal in self.proposals.values().take(self.params.catch_up_max) {
            out.push(SiteOutput::ToSite(SiteMessage::Proposal(proposal.clone())));
        }
        for vote in self.local.my_prepares() {
            out.push(SiteOutput::ToSite(SiteMessage::Prepare(vote.signed().clone())));
        }
        if leader_representative {
            let (gv, lv) = self.views();
            let mine =
                self.local.pre_prepared().filter(|(vote, _)| (vote.gv, vote.lv, vote.replica) == (gv, lv, self.id));
            for (vote, batch) in mine {
                let vote = vote.signed().clone();
                out.push(SiteOutput::ToSite(SiteMessage::PrePrepare { vote, batch: batch.clone() }));
            }
        }
        self.reconcile(out);
    }

    /// Whether this replica waits for something the WAN should bring: a PROPOSAL or ACCEPT
    /// above `aru`, a batch its site ordered, an update it forwarded, or a state image.
    fn has_outstanding_work(&self) -> bool {
        !self.proposals.is_empty()
            || !self.my_shares.is_empty()
            || !self.accepts.is_empty()
            || self.relay.outstanding()
            || self.local.uncertified().next().is_some()
            || self.checkpoints.fetching()
    }
}

/// What the simulator and the runtime drive.
impl<Svc: Service, S: ThresholdScheme> Role for SiteReplica<Svc, S> {
    type Input = SiteInput<S>;
    type Output = SiteOutput<S>;

    fn handle(&mut self, input: SiteInput<S>, now: Instant) -> Vec<SiteOutput<S>> {
        SiteReplica::handle(self, input, now)
    }
}
