//! The view-changer role (PBFT.md §4, VC1–VC12): when to suspect the primary (the request
//! timer and the ordering-rate guard), which VIEW-CHANGEs to keep, when to join a view
//! change, when the view-change timer runs out, and, as the new primary, building and
//! signing the NEW-VIEW. [`compute_order`] is VC12, the pure function from a NEW-VIEW's `V`
//! to its `O`, shared by the new primary (to build `O`), by edge verification (to check
//! it) and by the simulator's checker (I10).
//!
//! The role runs apart from its replica (an actor of its own in the runtime, a node behind
//! a drawn hop delay in the simulator, [`crate::roles::node::Node`] with no delay in
//! tests). Its replica keeps what its own acceptance rules need at once: the view it is
//! in, the view it is changing to, and the NEW-VIEW it entered by; it signs its
//! VIEW-CHANGEs (they report its prepared certificates) and enters views (VC13, VC16). It
//! tells the view-changer what happened ([`ViewChangerInput`]) and hears back what to do
//! ([`ViewChangerOutput`]). A suggestion may arrive after the replica moved on, so each
//! says what it was based on, and the replica acts on it only if that still holds.

use crate::ids::{ClientId, Instant, ReplicaId, SeqNum, Timestamp, View};
use crate::membership::{MemberMap, Membership, MembershipHandle};
use crate::messages::{batch_digest, NewView, NewViewOrder, PrePrepare, Request, VerifiedNewView, VerifiedViewChange};
use crate::roles::refusal::RoleRefusal;
use crate::roles::{Role, TimerKind, WindowOffenders};
use bulwark_crypto::{Digest, KeyPair, Verified};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The null request's digest (M4): the digest of the empty batch.
pub fn null_digest() -> Digest {
    batch_digest(0, std::iter::empty())
}

/// Why VC12 cannot compute `O` from a set of VIEW-CHANGEs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("no view-change messages")]
    Empty,
    /// VC12(4): two certificates for one sequence number at the same highest view with
    /// different digests; only more than `f` faulty replicas can produce them.
    #[error("conflicting prepared certificates at sequence number {0} (VC12.4)")]
    ConflictingCertificates(SeqNum),
    /// `max-s - min-s > L`: VC10 rules this out for valid VIEW-CHANGEs.
    #[error("prepared certificates span more than the watermark window")]
    BeyondWindow,
}

/// VC12: the new view's order `O` as a pure function of `V`.
///
/// 1. `min-s` is the **highest** stable checkpoint in `V` (not the lowest: PF1);
/// 2. `max-s` the highest sequence number of any prepared certificate in `V` (or `min-s`);
/// 3. each `min-s < s ≤ max-s` takes the digest of the certificate with the highest view,
///    or the null request if no certificate names `s`.
pub fn compute_order(view_changes: &[VerifiedViewChange], membership: &Membership) -> Result<NewViewOrder, OrderError> {
    let checkpoint = view_changes
        .iter()
        .map(|vc| &vc.checkpoint)
        .max_by_key(|checkpoint| checkpoint.seq)
        .ok_or(OrderError::Empty)?
        .clone();
    let min_seq = checkpoint.seq;
    // For each sequence number above min-s: the highest view and the digests seen at it.
    let mut best: BTreeMap<SeqNum, (View, Digest)> = BTreeMap::new();
    let mut conflicts = BTreeMap::new();
    for vc in view_changes {
        for (seq, certificate) in vc.prepared.range(min_seq.next()..) {
            let (view, digest) = (certificate.pre_prepare.view, certificate.pre_prepare.digest);
            match best.get(seq) {
                Some((best_view, _)) if *best_view > view => {}
                Some((best_view, best_digest)) if *best_view == view => {
                    if *best_digest != digest {
                        conflicts.insert(*seq, view);
                    }
                }
                _ => {
                    conflicts.remove(seq);
                    best.insert(*seq, (view, digest));
                }
            }
        }
    }
    if let Some((seq, _)) = conflicts.into_iter().next() {
        return Err(OrderError::ConflictingCertificates(seq));
    }
    let max_seq = best.keys().next_back().copied().unwrap_or(min_seq).max(min_seq);
    if max_seq.0 - min_seq.0 > membership.params.watermark_window {
        return Err(OrderError::BeyondWindow);
    }
    let null = null_digest();
    let entries = (min_seq.0 + 1..=max_seq.0)
        .map(SeqNum)
        .map(|seq| (seq, best.get(&seq).map(|(_, digest)| *digest).unwrap_or(null)))
        .collect();
    Ok(NewViewOrder { checkpoint, max_seq, entries })
}

/// What a replica tells its view-changer, in the order it happened.
#[derive(Debug, Clone)]
pub enum ViewChangerInput {
    /// VC1: the replica holds this request and has not seen it executed.
    Wait(Verified<Request>),
    /// The requests of batch `seq` that executed, in order (VC1, VC4).
    Executed { seq: SeqNum, requests: Vec<(ClientId, Timestamp)> },
    /// The replica installed a checkpoint image, executing requests it does not list: the
    /// view-changer answers with [`ViewChangerOutput::Waiting`].
    Installed,
    /// These waiting requests executed (the replica's answer to `Waiting`).
    Forget(Vec<(ClientId, Timestamp)>),
    /// The replica signed and sent this VIEW-CHANGE (VC2, VC3, VC5).
    Started(Arc<VerifiedViewChange>),
    /// A member's VIEW-CHANGE (VC8).
    ViewChange(Arc<VerifiedViewChange>),
    /// The replica entered the NEW-VIEW's view (VC16; for the new primary VC13).
    Entered(Arc<VerifiedNewView>),
    /// The request timer expired while the replica is catching up: it waits again instead
    /// of suspecting the primary (PF4).
    StillCatchingUp,
    /// The replica's periodic tick: VC7 retransmission, the ordering-rate guard.
    Tick,
    /// A timer of this role's fired ([`TimerKind::Request`] or [`TimerKind::ViewChange`]).
    Timer(TimerKind),
}

/// What a view-changer tells its replica (or, for its timers, its runtime).
#[derive(Debug, Clone)]
pub enum ViewChangerOutput {
    /// Fire [`ViewChangerInput::Timer`] of this kind at this time, replacing the pending one.
    SetTimer(TimerKind, Instant),
    /// VC2: the request timer expired in `view` with requests waiting. The replica moves to
    /// the next view if it is still in `view` and not changing, and not catching up (then it
    /// answers [`ViewChangerInput::StillCatchingUp`]).
    RequestTimerExpired { view: View },
    /// VC3: no NEW-VIEW for `target` in time. The replica asks for the next view if it is
    /// still changing to `target`.
    ViewChangeTimerExpired { target: View },
    /// VC5: `f + 1` others want views above everything the replica asked for: ask for
    /// `view` if it is above the replica's floor.
    Join { view: View },
    /// The primary of `view` orders below `ordering_rate_min_per_s`: the replica moves to
    /// the next view if it is still in `view` and not changing.
    TooSlow { view: View },
    /// VC11: as `primary(w)` with `2f + 1` VIEW-CHANGEs for `w`, the NEW-VIEW it built and
    /// signed. The replica persists, multicasts and enters it if it still changes to `w`.
    NewView(Arc<VerifiedNewView>),
    /// VC7: the replica's latest VIEW-CHANGE, to multicast again.
    Retransmit(Arc<VerifiedViewChange>),
    /// The requests waiting (answer to [`ViewChangerInput::Installed`]).
    Waiting(Vec<(ClientId, Timestamp)>),
    /// Requests that waited through a view change, for the new view's primary (VC16).
    Resend(Vec<Verified<Request>>),
    /// An input was refused, and why.
    Refused(RoleRefusal),
}

/// The view-changer role.
#[derive(Debug)]
pub struct ViewChanger {
    me: ReplicaId,
    membership: MembershipHandle,
    /// Signs the NEW-VIEWs this replica builds as the new primary (VC11).
    key: Arc<KeyPair>,
    /// The last view entered.
    view: View,
    /// While view-changing: the view of this replica's latest VIEW-CHANGE.
    target: Option<View>,
    /// This replica's latest VIEW-CHANGE, retransmitted while view-changing (VC7).
    own: Option<Arc<VerifiedViewChange>>,
    /// VC7 pacing: when `own` goes out again, and the wait after that. The wait starts at
    /// the status interval and doubles up to `T_cur`: every copy costs each receiver a
    /// check of up to a window of prepared certificates (hundreds of signatures), and
    /// copies at every status tick from every view-changing replica can keep a loaded
    /// host's verifiers busy past the NEW-VIEW they wait for. Receivers also drop
    /// byte-identical copies cheaply.
    retransmit_at: Option<Instant>,
    retransmit_wait: Duration,
    /// Each member's highest-view VIEW-CHANGE above the current view (VC8).
    received: MemberMap<Option<Arc<VerifiedViewChange>>>,
    /// `T_cur` (VC3, VC4).
    timeout: Duration,
    view_change_deadline: Option<Instant>,
    /// The view for which this replica (as its primary) built a NEW-VIEW.
    built_for: Option<View>,
    /// The NEW-VIEW by which the current view was entered, for replicas that lag (VC7).
    new_view: Option<Arc<VerifiedNewView>>,
    /// Requests this replica waits to see executed (VC1), bounded.
    waiting: BTreeMap<(ClientId, Timestamp), Verified<Request>>,
    /// Requests in `waiting` per client (only clients with some): read at every runtime
    /// step for the clients it keeps saturated, so counted, not scanned.
    waiting_per_client: BTreeMap<ClientId, usize>,
    /// Clients caught exceeding their window (a waiting request of theirs fell below it),
    /// with when: see [`ViewChanger::exceeded_window`]. At most `client_table_max`.
    window_exceeded: WindowOffenders,
    request_deadline: Option<Instant>,
    /// Aardvark guard: requests executed since `rate_window_start`.
    executed_in_window: u64,
    /// A request ordered in the current view (not a NEW-VIEW re-proposal) executed since
    /// the view was entered.
    ordered_since_entered: bool,
    rate_window_start: Instant,
}

impl ViewChanger {
    pub fn new(me: ReplicaId, membership: MembershipHandle, key: Arc<KeyPair>) -> Self {
        let members = membership.current();
        let timeout = members.params.view_change_timeout();
        ViewChanger {
            me,
            key,
            received: MemberMap::new(&members, |_| None),
            membership,
            view: View(0),
            target: None,
            own: None,
            retransmit_at: None,
            retransmit_wait: Duration::ZERO,
            timeout,
            view_change_deadline: None,
            built_for: None,
            new_view: None,
            waiting: BTreeMap::new(),
            waiting_per_client: BTreeMap::new(),
            window_exceeded: WindowOffenders::default(),
            request_deadline: None,
            executed_in_window: 0,
            ordered_since_entered: false,
            rate_window_start: Instant::ZERO,
        }
    }

    /// The last view entered, as this role last heard.
    pub fn view(&self) -> View {
        self.view
    }

    /// Whether `client` holds its whole window here: its requests waiting fill
    /// `client_window`, or it was caught exceeding its window lately. A runtime drops such a
    /// client's next request before its signature is checked (see
    /// [`crate::roles::primary::PrimaryRole::client_saturated`] for the primary's part).
    pub fn client_saturated(&self, client: ClientId, now: Instant) -> bool {
        self.exceeded_window(client, now)
            || self.waiting_of(client) as u64 >= self.membership.current().params.client_window
    }

    /// The view this replica is changing to, if it is view-changing.
    pub fn target(&self) -> Option<View> {
        self.target
    }

    pub fn is_changing(&self) -> bool {
        self.target.is_some()
    }

    /// The highest view this replica has asked for or entered: nothing below it may be
    /// signed any more (VC4a).
    pub fn floor(&self) -> View {
        self.target.unwrap_or(self.view)
    }

    /// The current `T_cur`.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn own_view_change(&self) -> Option<&Arc<VerifiedViewChange>> {
        self.own.as_ref()
    }

    /// VC7: this replica's VIEW-CHANGE if it is view-changing and a retransmission is due
    /// at `now` (see `retransmit_at` for the pacing).
    fn retransmission_due(&mut self, now: Instant) -> Option<Arc<VerifiedViewChange>> {
        if self.target.is_none() || self.retransmit_at.is_none_or(|at| now < at) {
            return None;
        }
        self.retransmit_wait =
            (self.retransmit_wait * 2).min(self.timeout).max(self.membership.current().params.status_interval());
        self.retransmit_at = Some(now + self.retransmit_wait);
        self.own.clone()
    }

    pub fn current_new_view(&self) -> Option<&Arc<VerifiedNewView>> {
        self.new_view.as_ref()
    }

    fn waiting(&self) -> impl Iterator<Item = &Verified<Request>> {
        self.waiting.values()
    }

    /// Removes a waiting request; whether it was there.
    fn remove_waiting(&mut self, key: (ClientId, Timestamp)) -> bool {
        if self.waiting.remove(&key).is_none() {
            return false;
        }
        if let Some(count) = self.waiting_per_client.get_mut(&key.0) {
            *count -= 1;
            if *count == 0 {
                self.waiting_per_client.remove(&key.0);
            }
        }
        true
    }

    /// Whether `client` was caught exceeding its window within the last view-change timeout.
    pub fn exceeded_window(&self, client: ClientId, now: Instant) -> bool {
        self.window_exceeded.recent(client, now, &self.membership.current())
    }

    /// Requests of `client` waiting (VC1).
    pub fn waiting_of(&self, client: ClientId) -> usize {
        self.waiting_per_client.get(&client).copied().unwrap_or(0)
    }

    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    /// VIEW-CHANGEs held (at most one per member).
    pub fn view_changes_held(&self) -> usize {
        self.received.values().flatten().count()
    }

    /// VC1: the replica holds a valid request it has not seen executed. Starts the request
    /// timer if it is not running; returns the deadline to arm, if any.
    fn wait_for(&mut self, request: Verified<Request>, now: Instant) -> Option<Instant> {
        let key = (request.client(), request.timestamp);
        if !self.waiting.contains_key(&key) {
            if self.waiting.len() >= self.membership.current().params.request_queue_max {
                return None;
            }
            self.waiting.insert(key, request);
            *self.waiting_per_client.entry(key.0).or_default() += 1;
        }
        if self.request_deadline.is_none() && !self.is_changing() {
            if self.waiting.len() == 1 {
                self.restart_rate_window(now);
            }
            let at = now + self.timeout;
            self.request_deadline = Some(at);
            return Some(at);
        }
        None
    }

    fn restart_rate_window(&mut self, now: Instant) {
        self.rate_window_start = now;
        self.executed_in_window = 0;
    }

    /// VC1 and VC4: requests executed at `seq`. Stops the request timer when nothing is
    /// waiting any more, restarts it when something still is; a new request executed in a
    /// view resets `T_cur` to the base timeout. "New" means ordered by this view's primary,
    /// above the NEW-VIEW's re-proposals: those execute at once after a view change and say
    /// nothing about whether the new primary keeps up, and resetting on them would keep
    /// an overloaded cluster changing views every base timeout without ever doubling it.
    /// Returns the deadline to arm, if any.
    fn executed(
        &mut self,
        seq: SeqNum,
        keys: impl IntoIterator<Item = (ClientId, Timestamp)>,
        now: Instant,
    ) -> Option<Instant> {
        let mut removed = 0u64;
        let mut executed = 0u64;
        let window = self.membership.current().params.client_window;
        for (client, timestamp) in keys {
            executed += 1;
            if self.remove_waiting((client, timestamp)) {
                removed += 1;
            }
            // CX3: the client's requests at or below `timestamp - client_window` are below
            // its window now and will never execute (the primary shed them, or the client
            // sent more than it may). Waiting for them would let them pile up, one client's
            // flood to `request_queue_max`, and keep the timer alive for nothing.
            if let Some(floor) = timestamp.0.checked_sub(window) {
                let below: Vec<_> =
                    self.waiting.range((client, Timestamp(0))..=(client, Timestamp(floor))).map(|(k, _)| *k).collect();
                if !below.is_empty() {
                    // A request of `client` fell below its window without executing: it
                    // signed one `client_window` or more above one it had outstanding,
                    // which a correct client never does (CX1; a correct client's request
                    // that completed executed at every correct replica before any later one).
                    self.window_exceeded.note(client, now, &self.membership.current());
                }
                for key in below {
                    self.remove_waiting(key);
                    removed += 1;
                }
            }
        }
        self.executed_in_window += executed;
        let reproposed = self.new_view.as_ref().is_some_and(|nv| nv.view() == self.view && seq <= nv.order.max_seq);
        if executed > 0 && !self.is_changing() && !reproposed {
            self.timeout = self.membership.current().params.view_change_timeout();
            self.ordered_since_entered = true;
        }
        if removed == 0 || self.is_changing() {
            return None;
        }
        self.restart_request_timer(now)
    }

    /// VC1: restart the request timer if requests still wait, stop it if none do.
    fn restart_request_timer(&mut self, now: Instant) -> Option<Instant> {
        if self.waiting.is_empty() {
            self.request_deadline = None;
            return None;
        }
        let at = now + self.timeout;
        self.request_deadline = Some(at);
        Some(at)
    }

    /// Forgets waiting requests that executed without being reported one by one (after a
    /// state transfer).
    fn forget(&mut self, keys: Vec<(ClientId, Timestamp)>) {
        for key in keys {
            self.remove_waiting(key);
        }
        if self.waiting.is_empty() {
            self.request_deadline = None;
        }
    }

    /// VC2 and the Aardvark guard: the request timer fired. Returns the view to change to
    /// if the primary is suspected, and otherwise the deadline to re-arm, if any.
    fn on_request_timer(&mut self, now: Instant) -> Result<View, Option<Instant>> {
        let Some(deadline) = self.request_deadline else {
            return Err(None);
        };
        if self.is_changing() {
            return Err(None);
        }
        if now < deadline {
            return Err(Some(deadline));
        }
        if self.waiting.is_empty() {
            self.request_deadline = None;
            return Err(None);
        }
        // VC4 (Castro & Liskov, TOCS §4.5.2): a view entered by a view change that executes
        // no new request before the request timer fires failed too, and the next one waits
        // twice as long. Without this, a new primary with a full window to re-run (an
        // equivocating primary's 256 slots under load) never got more than the base timeout
        // and the cluster changed views forever.
        if self.view.0 > 0 && !self.ordered_since_entered {
            self.double_timeout();
        }
        Ok(self.view.next())
    }

    /// The Aardvark guard, checked on the replica's periodic tick: while requests wait, the
    /// primary must order at least `ordering_rate_min_per_s`. Returns the view to change
    /// to when it does not.
    fn check_ordering_rate(&mut self, now: Instant) -> Option<View> {
        let rate_min = self.membership.current().params.ordering_rate_min_per_s;
        if rate_min == 0 || self.is_changing() || self.waiting.is_empty() {
            self.restart_rate_window(now);
            return None;
        }
        let elapsed = now.saturating_since(self.rate_window_start);
        if elapsed < self.membership.current().params.view_change_timeout() {
            return None;
        }
        let expected = rate_min as f64 * elapsed.as_secs_f64();
        let slow = (self.executed_in_window as f64) < expected;
        self.restart_rate_window(now);
        slow.then(|| self.view.next())
    }

    /// VC2/VC3/VC5: this replica sent `own`, a VIEW-CHANGE for `own.view()` (above every
    /// view it asked for before: its replica checked).
    fn start(&mut self, own: Arc<VerifiedViewChange>, now: Instant, out: &mut Vec<ViewChangerOutput>) {
        if own.view() <= self.floor() {
            return;
        }
        self.target = Some(own.view());
        if let Some(place) = self.received.get_mut(self.me) {
            *place = Some(own.clone());
        }
        self.own = Some(own);
        self.retransmit_wait = self.membership.current().params.status_interval();
        self.retransmit_at = Some(now + self.retransmit_wait);
        self.request_deadline = None;
        self.view_change_deadline = None;
        self.progress(now, out);
    }

    /// VC8: keep a member's VIEW-CHANGE if it is for a higher view than the one held.
    fn on_view_change(&mut self, vc: Arc<VerifiedViewChange>, now: Instant, out: &mut Vec<ViewChangerOutput>) {
        if vc.view() <= self.view {
            out.push(ViewChangerOutput::Refused(RoleRefusal::ViewChangeForViewEntered));
            return;
        }
        let Some(place) = self.received.get_mut(vc.sender()) else {
            out.push(ViewChangerOutput::Refused(RoleRefusal::ViewChangeFromNonMember));
            return;
        };
        if place.as_ref().is_some_and(|held| held.view() >= vc.view()) {
            return;
        }
        *place = Some(vc);
        self.progress(now, out);
    }

    fn holders_of(&self, view: View) -> Vec<Arc<VerifiedViewChange>> {
        self.received.values().flatten().filter(|vc| vc.view() == view).cloned().collect()
    }

    /// VC3, VC5 and VC11 after any change.
    fn progress(&mut self, now: Instant, out: &mut Vec<ViewChangerOutput>) {
        // VC5: f + 1 others want views above everything this replica asked for.
        let floor = self.floor();
        let mut higher: Vec<View> = self
            .received
            .iter()
            .filter(|(member, _)| *member != self.me)
            .filter_map(|(_, vc)| vc.as_ref().map(|vc| vc.view()))
            .filter(|view| *view > floor)
            .collect();
        if higher.len() >= self.membership.current().weak_quorum() {
            higher.sort_unstable();
            // The smallest view that f + 1 of them are at or above.
            let join = higher[higher.len() - self.membership.current().weak_quorum()];
            out.push(ViewChangerOutput::Join { view: join });
            return;
        }
        let Some(target) = self.target else {
            return;
        };
        let holders = self.holders_of(target);
        // VC3 counts members that asked for `target` or a later view: one that already moved
        // past `target` (its view-change timer for it ran out) retransmits only its latest
        // VIEW-CHANGE (VC7), and if its message for `target` was lost, counting exact
        // matches alone would leave the others waiting for a NEW-VIEW that cannot be built
        // and without a timer to move on.
        let at_or_above = self.received.values().flatten().filter(|vc| vc.view() >= target).count();
        if at_or_above >= self.membership.current().quorum() && self.view_change_deadline.is_none() {
            let at = now + self.timeout;
            self.view_change_deadline = Some(at);
            out.push(ViewChangerOutput::SetTimer(TimerKind::ViewChange, at));
        }
        if self.membership.current().primary(target) == self.me
            && self.built_for != Some(target)
            && holders.len() >= self.membership.current().quorum()
        {
            self.built_for = Some(target);
            // Own first, then the others by member id: 2f + 1 messages.
            let mut chosen: Vec<Arc<VerifiedViewChange>> = holders;
            chosen.sort_by_key(|vc| (vc.sender() != self.me, vc.sender()));
            chosen.truncate(self.membership.current().quorum());
            match self.build_new_view(target, &chosen) {
                Ok(new_view) => out.push(ViewChangerOutput::NewView(new_view)),
                // VC12(4): only more than f faults produce this; send nothing.
                Err(reason) => out.push(ViewChangerOutput::Refused(reason)),
            }
        }
    }

    /// VC11–VC12: compute `O` from `V`, sign each of its pre-prepares and the NEW-VIEW.
    fn build_new_view(
        &self,
        view: View,
        chosen: &[Arc<VerifiedViewChange>],
    ) -> Result<Arc<VerifiedNewView>, RoleRefusal> {
        let view_changes: Vec<VerifiedViewChange> = chosen.iter().map(|vc| vc.as_ref().clone()).collect();
        let membership = self.membership.current();
        let order = compute_order(&view_changes, &membership).map_err(|error| {
            tracing::error!(replica = %self.me, %view, %error, "cannot build a new view");
            RoleRefusal::NewViewNotComputable
        })?;
        let scope = membership.scope();
        let pre_prepares: Vec<Verified<PrePrepare>> = order
            .entries
            .iter()
            .map(|(seq, digest)| scope.sign(PrePrepare { view, seq: *seq, digest: *digest }, &self.key))
            .collect();
        let message = scope.sign(
            NewView {
                view,
                view_changes: view_changes.iter().map(|vc| vc.message.signed().clone()).collect(),
                pre_prepares: pre_prepares.iter().map(|pp| pp.signed().clone()).collect(),
            },
            &self.key,
        );
        Ok(Arc::new(VerifiedNewView { message, view_changes, order, pre_prepares }))
    }

    /// VC3: the view-change timer fired. Returns the next view to ask for (and doubles
    /// `T_cur`) if no NEW-VIEW arrived in time; otherwise the deadline to re-arm, if the
    /// firing came early.
    fn on_view_change_timer(&mut self, now: Instant) -> Result<View, Option<Instant>> {
        let (Some(deadline), Some(target)) = (self.view_change_deadline, self.target) else {
            return Err(None);
        };
        if now < deadline {
            return Err(Some(deadline));
        }
        self.view_change_deadline = None;
        self.double_timeout();
        Ok(target.next())
    }

    /// VC4: a failed view change doubles `T_cur`, up to 64 times the base.
    fn double_timeout(&mut self) {
        let cap = self.membership.current().params.view_change_timeout() * 64;
        self.timeout = (self.timeout * 2).min(cap);
    }

    /// VC16(3–4): enter view `view`. Returns the request-timer deadline to arm if requests
    /// are still waiting.
    pub fn enter(&mut self, view: View, new_view: Option<Arc<VerifiedNewView>>, now: Instant) -> Option<Instant> {
        self.ordered_since_entered = false;
        self.view = view;
        self.target = None;
        self.view_change_deadline = None;
        self.new_view = new_view;
        for place in self.received.values_mut() {
            if place.as_ref().is_some_and(|vc| vc.view() <= view) {
                *place = None;
            }
        }
        self.restart_rate_window(now);
        self.restart_request_timer(now)
    }
}

impl Role for ViewChanger {
    type Input = ViewChangerInput;
    type Output = ViewChangerOutput;

    fn handle(&mut self, input: ViewChangerInput, now: Instant) -> Vec<ViewChangerOutput> {
        let mut out = Vec::new();
        match input {
            ViewChangerInput::Wait(request) => {
                if let Some(at) = self.wait_for(request, now) {
                    out.push(ViewChangerOutput::SetTimer(TimerKind::Request, at));
                }
            }
            ViewChangerInput::Executed { seq, requests } => {
                if let Some(at) = self.executed(seq, requests, now) {
                    out.push(ViewChangerOutput::SetTimer(TimerKind::Request, at));
                }
            }
            ViewChangerInput::Installed => out.push(ViewChangerOutput::Waiting(self.waiting.keys().copied().collect())),
            ViewChangerInput::Forget(keys) => self.forget(keys),
            ViewChangerInput::Started(own) => self.start(own, now, &mut out),
            ViewChangerInput::ViewChange(view_change) => self.on_view_change(view_change, now, &mut out),
            ViewChangerInput::Entered(new_view) => {
                if new_view.view() > self.view {
                    if let Some(at) = self.enter(new_view.view(), Some(new_view), now) {
                        out.push(ViewChangerOutput::SetTimer(TimerKind::Request, at));
                    }
                    // VC16: what waited goes to the new primary (a bounded part of it; the
                    // clients' retransmissions bring the rest).
                    let resend = self.membership.current().params.batch_size_max * 4;
                    out.push(ViewChangerOutput::Resend(self.waiting().take(resend).cloned().collect()));
                }
            }
            ViewChangerInput::StillCatchingUp => {
                let at = now + self.timeout;
                self.request_deadline = Some(at);
                out.push(ViewChangerOutput::SetTimer(TimerKind::Request, at));
            }
            ViewChangerInput::Tick => {
                if let Some(own) = self.retransmission_due(now) {
                    out.push(ViewChangerOutput::Retransmit(own));
                }
                let view = self.view;
                if self.check_ordering_rate(now).is_some() {
                    out.push(ViewChangerOutput::TooSlow { view });
                }
            }
            ViewChangerInput::Timer(TimerKind::Request) => {
                let view = self.view;
                match self.on_request_timer(now) {
                    Ok(_) => out.push(ViewChangerOutput::RequestTimerExpired { view }),
                    Err(Some(at)) => out.push(ViewChangerOutput::SetTimer(TimerKind::Request, at)),
                    Err(None) => {}
                }
            }
            ViewChangerInput::Timer(TimerKind::ViewChange) => {
                let target = self.target;
                match (self.on_view_change_timer(now), target) {
                    (Ok(_), Some(target)) => out.push(ViewChangerOutput::ViewChangeTimerExpired { target }),
                    (Err(Some(at)), _) => out.push(ViewChangerOutput::SetTimer(TimerKind::ViewChange, at)),
                    _ => {}
                }
            }
            ViewChangerInput::Timer(_) => {}
        }
        out
    }
}
