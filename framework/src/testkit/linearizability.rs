//! Linearizability checking for tests of replicated services.
//!
//! This module owns one question: given a history of client operations, each with the time it
//! was called and the time it returned, is there a single sequential order of those operations
//! that (a) respects real time — an operation that returned before another was called comes
//! first — and (b) is accepted, step by step, by a sequential [`Specification`]? Recording the
//! history (with timestamps from one monotonic clock) and writing the specification belong to
//! the caller.
//!
//! The search is Wing & Gong's (J. M. Wing and C. Gong, "Testing and verifying concurrent
//! objects", Journal of Parallel and Distributed Computing 17(1–2), 1993) with Lowe's
//! memoization (G. Lowe, "Testing for linearizability", Concurrency and Computation: Practice
//! and Experience 29(4), 2017), in the shape Porcupine uses: call and return events sit in one
//! time-ordered doubly linked list; linearizing an operation unlinks ("lifts") its two events
//! and backtracking relinks them, so the candidates for the next linearization point are
//! always the calls that precede the first remaining return. A (set of linearized operations,
//! state) pair that was reached before is not explored again, because what can follow depends
//! only on that pair. Histories can be split by [`Specification::partition`] into independent
//! parts checked separately (P-compositionality: A. Horn and D. Kroening, "Faster
//! linearizability checking via P-compositionality", FORTE 2015), which keeps, for example, a
//! key-value history tractable by checking each key on its own.
//!
//! The search is exponential in the worst case, so it is bounded: [`Checker::history_max`] and
//! [`Checker::steps_max`] turn an intractable check into [`Verdict::Unknown`] instead of a hang.
//!
//! # Operations that never returned
//!
//! A client that timed out does not know whether its operation took effect. Give such an
//! operation `ret = u64::MAX`: it may then be linearized at any point after its call, including
//! after every other operation, which is indistinguishable from never taking effect. Its
//! `output` must be one that [`Specification::step`] accepts from any state (for example an
//! `Unknown`/`TimedOut` variant of the output type); a timed-out read can simply be dropped
//! from the history instead.

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;

/// A sequential specification: what one operation does to a state, single-threaded.
pub trait Specification {
    /// The state of the object. Equal states must behave identically under [`Self::step`],
    /// because the checker skips a state it has already explored with the same operations done.
    type State: Clone + Eq + Hash + Debug;
    /// What a client asked for.
    type Input: Debug;
    /// What the client was told.
    type Output: Debug;

    /// The state before any operation.
    fn initial(&self) -> Self::State;

    /// Applies `input` to `state`; returns whether `output` is what the operation may return
    /// from `state`, and the state after it.
    fn step(&self, state: &Self::State, input: &Self::Input, output: &Self::Output) -> (bool, Self::State);

    /// Splits a history into parts that can be checked independently: the history is
    /// linearizable iff every part is (with each part starting from [`Self::initial`]). Each
    /// returned `Vec` holds indices into `history`; together they must name every operation
    /// exactly once, otherwise the check answers [`Verdict::Unknown`]. Only split where
    /// operations in different parts cannot affect each other's outputs (e.g. different keys
    /// of a key-value store). The default keeps the history whole.
    fn partition(&self, history: &[Operation<Self::Input, Self::Output>]) -> Vec<Vec<usize>> {
        vec![(0..history.len()).collect()]
    }
}

/// One completed operation of a client history: called at `call`, returned at `ret` (any
/// monotonic clock; `call < ret`), by `client`.
///
/// Real-time order is taken from the timestamps alone: `a` must precede `b` iff
/// `a.ret < b.call`. Equal timestamps (`a.ret == b.call`) count as overlapping, so a coarse
/// clock can only make the check more lenient, never report a false violation. `client` is
/// carried for the caller's messages; the checker does not use it. A history need not be
/// sorted. An operation that never returned takes `ret = u64::MAX` (see the module docs).
#[derive(Debug, Clone)]
pub struct Operation<I, O> {
    /// Which client issued the operation.
    pub client: u64,
    /// What the client asked for.
    pub input: I,
    /// What the client was told.
    pub output: O,
    /// When the client issued the operation.
    pub call: u64,
    /// When the client received the response, or `u64::MAX` if it never did.
    pub ret: u64,
}

/// The outcome of [`Checker::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Some real-time-respecting order of all operations is accepted by the specification.
    Linearizable,
    /// No such order exists.
    NotLinearizable {
        /// The longest sequence of operations (indices into the history, in linearization
        /// order) the search managed to linearize within the failing partition, for a message:
        /// the operation that could not follow it is usually the culprit.
        longest_prefix: Vec<usize>,
    },
    /// The checker gave up or the input was malformed; `reason` says which.
    Unknown {
        /// Why no verdict was reached.
        reason: String,
    },
}

/// Runs linearizability checks within bounds.
#[derive(Debug, Clone)]
pub struct Checker {
    /// Histories with more operations than this are not searched ([`Verdict::Unknown`]).
    pub history_max: usize,
    /// The most search steps (one step tries one call or undoes one linearization), summed over
    /// all partitions, before giving up with [`Verdict::Unknown`].
    pub steps_max: u64,
}

impl Default for Checker {
    /// Sized for tests in a debug build: about a second of search at worst. Memory for the
    /// memoization grows with the steps taken (each remembered pair holds one bit per
    /// operation of its partition plus a state), so raise `steps_max` with care.
    fn default() -> Self {
        Checker { history_max: 2_000, steps_max: 1_000_000 }
    }
}

impl Checker {
    /// Decides whether `history` is linearizable with respect to `spec`.
    ///
    /// Never panics on its own account (a panicking `spec` still panics) and does at most
    /// `steps_max` search steps. If one partition is not linearizable the verdict is
    /// [`Verdict::NotLinearizable`] for that partition even if others were not yet checked.
    pub fn check<S: Specification>(&self, spec: &S, history: &[Operation<S::Input, S::Output>]) -> Verdict {
        if history.len() > self.history_max {
            return Verdict::Unknown {
                reason: format!(
                    "history has {} operations, more than history_max = {}",
                    history.len(),
                    self.history_max
                ),
            };
        }
        if let Some((i, op)) = history.iter().enumerate().find(|(_, op)| op.call > op.ret) {
            return Verdict::Unknown {
                reason: format!("operation {i} returns (at {}) before it is called (at {})", op.ret, op.call),
            };
        }
        let partitions = spec.partition(history);
        if let Err(reason) = validate_partitions(&partitions, history.len()) {
            return Verdict::Unknown { reason };
        }
        let mut steps_left = self.steps_max;
        for part in &partitions {
            match search(spec, history, part, &mut steps_left) {
                Outcome::Linearizable => {}
                Outcome::NotLinearizable(longest_prefix) => return Verdict::NotLinearizable { longest_prefix },
                Outcome::OutOfSteps => {
                    return Verdict::Unknown {
                        reason: format!(
                            "search exceeded steps_max = {} (in a partition of {} operations)",
                            self.steps_max,
                            part.len()
                        ),
                    }
                }
            }
        }
        Verdict::Linearizable
    }
}

/// A partition that skipped or repeated an operation would check a different history than
/// the one recorded, so it is rejected rather than trusted.
fn validate_partitions(partitions: &[Vec<usize>], len: usize) -> Result<(), String> {
    let mut seen = vec![false; len];
    for part in partitions {
        for &i in part {
            match seen.get_mut(i) {
                None => return Err(format!("partition names operation {i}, but the history has {len}")),
                Some(true) => return Err(format!("partition names operation {i} more than once")),
                Some(s) => *s = true,
            }
        }
    }
    match seen.iter().position(|s| !s) {
        Some(i) => Err(format!("partition leaves out operation {i}")),
        None => Ok(()),
    }
}

#[derive(Debug)]
enum Outcome {
    Linearizable,
    /// History indices, in linearization order.
    NotLinearizable(Vec<usize>),
    OutOfSteps,
}

/// Which operations (by position within a partition) are in the current linearization. It is
/// half of the memoization key, so it must hash and compare by content.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bitset(Vec<u64>);

impl Bitset {
    fn new(bits: usize) -> Self {
        Bitset(vec![0; bits.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// Node of the list before every event; its successor is the earliest event not yet lifted.
const HEAD: usize = 0;
/// Node after every event, so that unlinking never needs a "no successor" case.
const TAIL: usize = 1;

/// The call and return events of one partition as a doubly linked list in time order, held in
/// index arrays. Operation `k` (position within the partition) has its call at node `2 + 2k`
/// and its return at node `3 + 2k`, so a call finds its return without a lookup.
#[derive(Debug)]
struct Events {
    prev: Vec<usize>,
    next: Vec<usize>,
}

impl Events {
    fn new<I, O>(history: &[Operation<I, O>], part: &[usize]) -> Self {
        // At equal times calls sort before returns: touching operations count as overlapping.
        let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * part.len());
        for (k, &i) in part.iter().enumerate() {
            order.push((history[i].call, false, Self::call_node(k)));
            order.push((history[i].ret, true, Self::call_node(k) + 1));
        }
        order.sort_unstable();
        let nodes = 2 + order.len();
        let mut events = Events { prev: vec![HEAD; nodes], next: vec![TAIL; nodes] };
        let mut last = HEAD;
        for &(_, _, node) in &order {
            events.next[last] = node;
            events.prev[node] = last;
            last = node;
        }
        events.next[last] = TAIL;
        events.prev[TAIL] = last;
        events
    }

    fn call_node(k: usize) -> usize {
        2 + 2 * k
    }

    /// The operation whose call is at `node`, or `None` for a return or a sentinel.
    fn call_of(node: usize) -> Option<usize> {
        (node >= 2 && node & 1 == 0).then(|| (node - 2) / 2)
    }

    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    /// Undoes `unlink(node)`; valid because unlinks are undone in reverse order, so `node`'s
    /// own `prev`/`next` still name its old neighbours.
    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        self.prev[n] = node;
    }

    /// Removes a linearized operation's call and return.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(call + 1);
    }

    fn unlift(&mut self, call: usize) {
        self.relink(call + 1);
        self.relink(call);
    }
}

/// Searches one partition. `part` holds history indices; the result names history indices.
fn search<S: Specification>(
    spec: &S,
    history: &[Operation<S::Input, S::Output>],
    part: &[usize],
    steps_left: &mut u64,
) -> Outcome {
    let mut events = Events::new(history, part);
    let mut state = spec.initial();
    let mut linearized = Bitset::new(part.len());
    let mut explored: HashSet<(Bitset, S::State)> = HashSet::new();
    // The current linearization: each lifted call node with the state before it.
    let mut stack: Vec<(usize, S::State)> = Vec::new();
    let mut longest: Vec<usize> = Vec::new();
    let mut node = events.next[HEAD];
    // Every remaining call precedes its own return, so the last event before TAIL is a return
    // and the walk below never steps onto TAIL: at a return it backtracks or stops.
    while events.next[HEAD] != TAIL {
        if *steps_left == 0 {
            return Outcome::OutOfSteps;
        }
        *steps_left -= 1;
        if let Some(k) = Events::call_of(node) {
            let op = &history[part[k]];
            let (ok, after) = spec.step(&state, &op.input, &op.output);
            if ok {
                linearized.set(k);
                if explored.insert((linearized.clone(), after.clone())) {
                    stack.push((node, std::mem::replace(&mut state, after)));
                    events.lift(node);
                    if stack.len() > longest.len() {
                        longest = stack.iter().filter_map(|&(n, _)| Events::call_of(n)).map(|k| part[k]).collect();
                    }
                    node = events.next[HEAD];
                    continue;
                }
                linearized.clear(k);
            }
            node = events.next[node];
        } else {
            // A return whose operation is not yet linearized: nothing after it may go first.
            let Some((call, before)) = stack.pop() else {
                return Outcome::NotLinearizable(longest);
            };
            state = before;
            if let Some(k) = Events::call_of(call) {
                linearized.clear(k);
            }
            events.unlift(call);
            node = events.next[call];
        }
    }
    Outcome::Linearizable
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn op<I, O>(client: u64, input: I, output: O, call: u64, ret: u64) -> Operation<I, O> {
        Operation { client, input, output, call, ret }
    }

    fn is_not_linearizable(v: &Verdict) -> bool {
        matches!(v, Verdict::NotLinearizable { .. })
    }

    fn check<S: Specification>(spec: &S, history: &[Operation<S::Input, S::Output>]) -> Verdict {
        Checker::default().check(spec, history)
    }

    // ---- register ----

    #[derive(Debug)]
    struct Register;
    #[derive(Debug, Clone, Copy)]
    enum RegIn {
        Read,
        Write(u64),
    }
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum RegOut {
        Ack,
        Value(u64),
        TimedOut,
    }

    impl Specification for Register {
        type State = u64;
        type Input = RegIn;
        type Output = RegOut;
        fn initial(&self) -> u64 {
            0
        }
        fn step(&self, state: &u64, input: &RegIn, output: &RegOut) -> (bool, u64) {
            match (input, output) {
                (RegIn::Write(v), RegOut::Ack | RegOut::TimedOut) => (true, *v),
                (RegIn::Read, RegOut::Value(v)) => (v == state, *state),
                (RegIn::Read, RegOut::TimedOut) => (true, *state),
                _ => (false, *state),
            }
        }
    }

    fn w(client: u64, v: u64, call: u64, ret: u64) -> Operation<RegIn, RegOut> {
        op(client, RegIn::Write(v), RegOut::Ack, call, ret)
    }
    fn r(client: u64, v: u64, call: u64, ret: u64) -> Operation<RegIn, RegOut> {
        op(client, RegIn::Read, RegOut::Value(v), call, ret)
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_eq!(check(&Register, &[]), Verdict::Linearizable);
        assert_eq!(check(&Kv, &[]), Verdict::Linearizable);
    }

    #[test]
    fn register_sequential_history_is_linearizable() {
        let h = [r(0, 0, 0, 1), w(0, 1, 2, 3), r(1, 1, 4, 5), w(1, 2, 6, 7), r(0, 2, 8, 9)];
        assert_eq!(check(&Register, &h), Verdict::Linearizable);
        // The same history with one read off is a violation: the test above can fail.
        let mut bad = h.to_vec();
        bad[4] = r(0, 1, 8, 9);
        assert!(is_not_linearizable(&check(&Register, &bad)));
    }

    #[test]
    fn register_overlapping_writes_may_be_read_in_either_order() {
        for last in [1, 2] {
            let h = [w(0, 1, 0, 10), w(1, 2, 5, 15), r(2, last, 20, 30)];
            assert_eq!(check(&Register, &h), Verdict::Linearizable, "final read {last}");
            // Both orders were legal, but only one can be observed twice in a row.
            let flip = if last == 1 { 2 } else { 1 };
            let h = [w(0, 1, 0, 10), w(1, 2, 5, 15), r(2, last, 20, 30), r(2, flip, 40, 50)];
            assert!(is_not_linearizable(&check(&Register, &h)), "reads {last} then {flip}");
        }
    }

    #[test]
    fn register_read_concurrent_with_write_sees_old_or_new() {
        for seen in [0, 1] {
            let h = [w(0, 1, 0, 10), r(1, seen, 5, 15)];
            assert_eq!(check(&Register, &h), Verdict::Linearizable, "read {seen}");
        }
        assert!(is_not_linearizable(&check(&Register, &[w(0, 1, 0, 10), r(1, 2, 5, 15)])));
    }

    #[test]
    fn register_read_of_never_written_value_is_not_linearizable() {
        let h = [w(0, 1, 0, 10), w(1, 2, 5, 15), r(2, 3, 8, 20)];
        match check(&Register, &h) {
            Verdict::NotLinearizable { longest_prefix } => {
                assert!(!longest_prefix.contains(&2), "{longest_prefix:?}");
                assert_eq!(longest_prefix.len(), 2, "{longest_prefix:?}");
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn register_stale_read_after_completed_write_is_not_linearizable() {
        let h = [w(0, 1, 0, 10), r(1, 0, 11, 20)];
        assert_eq!(check(&Register, &h), Verdict::NotLinearizable { longest_prefix: vec![0] });
    }

    #[test]
    fn touching_timestamps_count_as_overlapping() {
        let h = [w(0, 1, 0, 10), r(1, 0, 10, 20)];
        assert_eq!(check(&Register, &h), Verdict::Linearizable);
    }

    #[test]
    fn register_new_then_old_reads_in_real_time_order_is_not_linearizable() {
        let h = [w(0, 1, 0, 100), r(1, 1, 10, 20), r(2, 0, 30, 40)];
        assert!(is_not_linearizable(&check(&Register, &h)));
        // Old then new is fine.
        let h = [w(0, 1, 0, 100), r(1, 0, 10, 20), r(2, 1, 30, 40)];
        assert_eq!(check(&Register, &h), Verdict::Linearizable);
    }

    #[test]
    fn unsorted_history_is_accepted() {
        let h = [r(2, 2, 20, 30), w(1, 2, 5, 15), w(0, 1, 0, 10)];
        assert_eq!(check(&Register, &h), Verdict::Linearizable);
        let h = [r(1, 0, 11, 20), w(0, 1, 0, 10)];
        assert_eq!(check(&Register, &h), Verdict::NotLinearizable { longest_prefix: vec![1] });
    }

    // ---- operations that never returned ----

    #[test]
    fn timed_out_write_may_take_effect_later_or_never() {
        let pending = op(0, RegIn::Write(1), RegOut::TimedOut, 0, u64::MAX);
        // Never observed: as if it never happened.
        let h = [pending.clone(), r(1, 0, 10, 20), r(1, 0, 1_000, 1_010)];
        assert_eq!(check(&Register, &h), Verdict::Linearizable);
        // Observed long after the client gave up.
        let h = [pending.clone(), r(1, 0, 10, 20), r(1, 1, 1_000, 1_010)];
        assert_eq!(check(&Register, &h), Verdict::Linearizable);
        // But it takes effect once: new then old is still a violation.
        let h = [pending.clone(), r(1, 1, 10, 20), r(1, 0, 1_000, 1_010)];
        assert!(is_not_linearizable(&check(&Register, &h)));
        // And not before its call.
        let h = [r(1, 1, 0, 5), op(0, RegIn::Write(1), RegOut::TimedOut, 10, u64::MAX)];
        assert!(is_not_linearizable(&check(&Register, &h)));
    }

    #[test]
    fn several_timed_out_operations() {
        let h = [
            op(0, RegIn::Write(1), RegOut::TimedOut, 0, u64::MAX),
            op(1, RegIn::Write(2), RegOut::TimedOut, 1, u64::MAX),
            op(2, RegIn::Read, RegOut::TimedOut, 2, u64::MAX),
            r(3, 2, 10, 20),
            r(3, 1, 30, 40),
        ];
        assert_eq!(check(&Register, &h), Verdict::Linearizable);
        let mut bad = h.to_vec();
        bad.push(r(3, 2, 50, 60));
        assert!(is_not_linearizable(&check(&Register, &bad)));
    }

    // ---- key-value store, partitioned by key ----

    #[derive(Debug)]
    struct Kv;
    #[derive(Debug, Clone, Copy)]
    enum KvIn {
        Put(u64, u64),
        Get(u64),
    }
    #[derive(Debug, Clone, Copy)]
    enum KvOut {
        Ack,
        Value(Option<u64>),
    }

    impl KvIn {
        fn key(&self) -> u64 {
            match *self {
                KvIn::Put(k, _) | KvIn::Get(k) => k,
            }
        }
    }

    impl Specification for Kv {
        type State = BTreeMap<u64, u64>;
        type Input = KvIn;
        type Output = KvOut;
        fn initial(&self) -> Self::State {
            BTreeMap::new()
        }
        fn step(&self, state: &Self::State, input: &KvIn, output: &KvOut) -> (bool, Self::State) {
            match (input, output) {
                (KvIn::Put(k, v), KvOut::Ack) => {
                    let mut next = state.clone();
                    next.insert(*k, *v);
                    (true, next)
                }
                (KvIn::Get(k), KvOut::Value(v)) => (state.get(k) == v.as_ref(), state.clone()),
                _ => (false, state.clone()),
            }
        }
        fn partition(&self, history: &[Operation<KvIn, KvOut>]) -> Vec<Vec<usize>> {
            let mut by_key: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
            for (i, o) in history.iter().enumerate() {
                by_key.entry(o.input.key()).or_default().push(i);
            }
            by_key.into_values().collect()
        }
    }

    /// A specification with its partitioning turned off, to compare against.
    #[derive(Debug)]
    struct Whole<S>(S);
    impl<S: Specification> Specification for Whole<S> {
        type State = S::State;
        type Input = S::Input;
        type Output = S::Output;
        fn initial(&self) -> S::State {
            self.0.initial()
        }
        fn step(&self, state: &S::State, input: &S::Input, output: &S::Output) -> (bool, S::State) {
            self.0.step(state, input, output)
        }
    }

    fn put(k: u64, v: u64, call: u64, ret: u64) -> Operation<KvIn, KvOut> {
        op(0, KvIn::Put(k, v), KvOut::Ack, call, ret)
    }
    fn get(k: u64, v: Option<u64>, call: u64, ret: u64) -> Operation<KvIn, KvOut> {
        op(1, KvIn::Get(k), KvOut::Value(v), call, ret)
    }

    #[test]
    fn kv_checks_each_key_separately() {
        let h = [
            put(1, 10, 0, 10),
            put(2, 20, 5, 15),
            get(1, Some(10), 12, 20),
            get(2, None, 6, 8),
            get(3, None, 0, 100),
            put(2, 21, 30, 40),
            get(2, Some(21), 41, 50),
        ];
        assert_eq!(check(&Kv, &h), Verdict::Linearizable);
        assert_eq!(check(&Whole(Kv), &h), Verdict::Linearizable);

        // A stale read on key 2 only; the prefix names key 2's operations, as history indices.
        let mut bad = h.to_vec();
        bad[6] = get(2, Some(20), 41, 50);
        for v in [check(&Kv, &bad), check(&Whole(Kv), &bad)] {
            assert!(is_not_linearizable(&v), "{v:?}");
        }
        match check(&Kv, &bad) {
            Verdict::NotLinearizable { longest_prefix } => {
                assert_eq!(longest_prefix, vec![3, 1, 5], "key 2's ops in the only possible order")
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn kv_partitioning_keeps_the_search_small() {
        // Per key: four mutually concurrent puts, then a read that sees the put listed first,
        // so the search has to reorder every key. All keys overlap in time.
        let keys = 8;
        let mut h = Vec::new();
        for k in 0..keys {
            for v in 0..4 {
                h.push(put(k, 100 * k + v, 0, 100));
            }
        }
        for k in 0..keys {
            h.push(get(k, Some(100 * k), 200, 210));
        }
        let tight = Checker { steps_max: 10_000, ..Checker::default() };
        assert_eq!(tight.check(&Kv, &h), Verdict::Linearizable);
        assert!(matches!(tight.check(&Whole(Kv), &h), Verdict::Unknown { .. }));
    }

    #[derive(Debug)]
    struct BadPartition(Vec<Vec<usize>>);
    impl Specification for BadPartition {
        type State = u64;
        type Input = RegIn;
        type Output = RegOut;
        fn initial(&self) -> u64 {
            0
        }
        fn step(&self, state: &u64, input: &RegIn, output: &RegOut) -> (bool, u64) {
            Register.step(state, input, output)
        }
        fn partition(&self, _: &[Operation<RegIn, RegOut>]) -> Vec<Vec<usize>> {
            self.0.clone()
        }
    }

    #[test]
    fn malformed_partition_gives_unknown() {
        let h = [w(0, 1, 0, 10), r(1, 0, 11, 20)];
        for parts in [vec![vec![0, 2], vec![1]], vec![vec![0, 1], vec![1]], vec![vec![0]], vec![vec![1, 0, 0]]] {
            let v = check(&BadPartition(parts.clone()), &h);
            assert!(matches!(v, Verdict::Unknown { .. }), "{parts:?}: {v:?}");
        }
        // A proper cover works, in any grouping the spec chooses.
        assert!(is_not_linearizable(&check(&BadPartition(vec![vec![1, 0]]), &h)));
        assert_eq!(check(&BadPartition(vec![vec![1], vec![0]]), &h), Verdict::Linearizable);
    }

    // ---- seat reservation ----

    #[derive(Debug)]
    struct Seats;
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum SeatOut {
        Ok,
        AlreadyTaken,
    }

    impl Specification for Seats {
        type State = BTreeSet<u32>;
        type Input = u32;
        type Output = SeatOut;
        fn initial(&self) -> Self::State {
            BTreeSet::new()
        }
        fn step(&self, taken: &Self::State, seat: &u32, output: &SeatOut) -> (bool, Self::State) {
            let mut next = taken.clone();
            let fresh = next.insert(*seat);
            (*output == if fresh { SeatOut::Ok } else { SeatOut::AlreadyTaken }, next)
        }
    }

    #[test]
    fn seat_reserved_twice_in_sequence_is_not_linearizable() {
        let h = [op(0, 7, SeatOut::Ok, 0, 10), op(1, 7, SeatOut::Ok, 20, 30)];
        assert_eq!(check(&Seats, &h), Verdict::NotLinearizable { longest_prefix: vec![0] });
        let h = [op(0, 7, SeatOut::Ok, 0, 10), op(1, 7, SeatOut::AlreadyTaken, 20, 30)];
        assert_eq!(check(&Seats, &h), Verdict::Linearizable);
        // Reversed outcome in real time: the loser finished before the winner started.
        let h = [op(0, 7, SeatOut::AlreadyTaken, 0, 10), op(1, 7, SeatOut::Ok, 20, 30)];
        assert!(is_not_linearizable(&check(&Seats, &h)));
    }

    #[test]
    fn seat_concurrent_reservations_need_exactly_one_winner() {
        for (a, b) in [(SeatOut::Ok, SeatOut::AlreadyTaken), (SeatOut::AlreadyTaken, SeatOut::Ok)] {
            let h = [op(0, 7, a, 0, 20), op(1, 7, b, 10, 30)];
            assert_eq!(check(&Seats, &h), Verdict::Linearizable, "{a:?} {b:?}");
        }
        for out in [SeatOut::Ok, SeatOut::AlreadyTaken] {
            let h = [op(0, 7, out, 0, 20), op(1, 7, out, 10, 30)];
            assert!(is_not_linearizable(&check(&Seats, &h)), "both {out:?}");
        }
    }

    // ---- bounds ----

    #[test]
    fn history_max_gives_unknown() {
        let h = [w(0, 1, 0, 1), w(0, 2, 2, 3), w(0, 3, 4, 5), r(0, 3, 6, 7)];
        let small = Checker { history_max: 3, ..Checker::default() };
        assert!(matches!(small.check(&Register, &h), Verdict::Unknown { .. }));
        let exact = Checker { history_max: 4, ..Checker::default() };
        assert_eq!(exact.check(&Register, &h), Verdict::Linearizable);
    }

    #[test]
    fn steps_max_gives_unknown() {
        let h: Vec<_> = (0..10).map(|i| w(0, i, 2 * i, 2 * i + 1)).collect();
        let few = Checker { steps_max: 5, ..Checker::default() };
        assert!(matches!(few.check(&Register, &h), Verdict::Unknown { .. }));
        let enough = Checker { steps_max: 10, ..Checker::default() };
        assert_eq!(enough.check(&Register, &h), Verdict::Linearizable);
        let none = Checker { steps_max: 0, ..Checker::default() };
        assert_eq!(none.check(&Register, &[]), Verdict::Linearizable);
    }

    #[test]
    fn operation_returning_before_its_call_gives_unknown() {
        let h = [w(0, 1, 10, 5)];
        assert!(matches!(check(&Register, &h), Verdict::Unknown { .. }));
    }

    #[test]
    fn memoization_collapses_equal_states() {
        // Twelve concurrent writes of one value and an impossible read: without memoization
        // the search would try 12! orders; with it, each subset of writes is visited once.
        let n = 12;
        let mut h: Vec<_> = (0..n).map(|i| w(i, 1, i, 100)).collect();
        h.push(r(n, 5, 50, 200));
        let checker = Checker { steps_max: 200_000, ..Checker::default() };
        assert!(is_not_linearizable(&checker.check(&Register, &h)));
    }

    // ---- randomized ----

    /// Knuth's MMIX LCG: deterministic, no dependencies.
    struct Lcg(u64);
    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }
        fn shuffle<T>(&mut self, v: &mut [T]) {
            for i in (1..v.len()).rev() {
                v.swap(i, self.below(i as u64 + 1) as usize);
            }
        }
    }

    /// Runs `inputs` through `spec` in order, giving operation `i` an interval around the
    /// linearization point `100 * i + 100` wide enough to overlap its neighbours, so the
    /// history is linearizable by construction but not sequential; then shuffles it.
    fn generate<S: Specification>(
        spec: &S,
        rng: &mut Lcg,
        inputs: Vec<S::Input>,
        output: impl Fn(&S::State, &S::Input) -> S::Output,
    ) -> Vec<Operation<S::Input, S::Output>> {
        let mut state = spec.initial();
        let mut h = Vec::new();
        for (i, input) in inputs.into_iter().enumerate() {
            let point = 100 * i as u64 + 100;
            let out = output(&state, &input);
            let (ok, next) = spec.step(&state, &input, &out);
            assert!(ok, "generator produced an output the spec rejects");
            state = next;
            let (call, ret) = (point - rng.below(100), point + 1 + rng.below(150));
            h.push(op(rng.below(4), input, out, call, ret));
        }
        rng.shuffle(&mut h);
        h
    }

    fn assert_corruption_detected<I: Debug + Clone, O: Debug + Clone, S: Specification<Input = I, Output = O>>(
        spec: &S,
        h: &[Operation<I, O>],
        j: usize,
        bad: O,
    ) {
        let mut h = h.to_vec();
        h[j].output = bad;
        match Checker::default().check(spec, &h) {
            Verdict::NotLinearizable { longest_prefix } => assert!(!longest_prefix.contains(&j)),
            v => panic!("corrupting op {j} gave {v:?} for {h:?}"),
        }
    }

    #[test]
    fn randomized_register_histories() {
        let mut corrupted = 0;
        for seed in 0..40 {
            let mut rng = Lcg(seed);
            let inputs: Vec<_> =
                (0..30).map(|_| if rng.below(2) == 0 { RegIn::Read } else { RegIn::Write(1 + rng.below(4)) }).collect();
            let h = generate(&Register, &mut rng, inputs, |s, i| match i {
                RegIn::Read => RegOut::Value(*s),
                RegIn::Write(_) => RegOut::Ack,
            });
            assert_eq!(check(&Register, &h), Verdict::Linearizable, "seed {seed}: {h:?}");
            let reads: Vec<_> = (0..h.len()).filter(|&j| matches!(h[j].input, RegIn::Read)).collect();
            if !reads.is_empty() {
                let j = reads[rng.below(reads.len() as u64) as usize];
                assert_corruption_detected(&Register, &h, j, RegOut::Value(999));
                corrupted += 1;
            }
        }
        assert!(corrupted > 30);
    }

    #[test]
    fn randomized_kv_histories() {
        let mut corrupted = 0;
        for seed in 0..40 {
            let mut rng = Lcg(1_000 + seed);
            let inputs: Vec<_> = (0..40)
                .map(|_| {
                    let k = rng.below(4);
                    if rng.below(2) == 0 {
                        KvIn::Get(k)
                    } else {
                        KvIn::Put(k, 1 + rng.below(3))
                    }
                })
                .collect();
            let h = generate(&Kv, &mut rng, inputs, |s, i| match i {
                KvIn::Get(k) => KvOut::Value(s.get(k).copied()),
                KvIn::Put(..) => KvOut::Ack,
            });
            assert_eq!(check(&Kv, &h), Verdict::Linearizable, "seed {seed}: {h:?}");
            let gets: Vec<_> = (0..h.len()).filter(|&j| matches!(h[j].input, KvIn::Get(_))).collect();
            if !gets.is_empty() {
                let j = gets[rng.below(gets.len() as u64) as usize];
                assert_corruption_detected(&Kv, &h, j, KvOut::Value(Some(999)));
                corrupted += 1;
            }
        }
        assert!(corrupted > 30);
    }
}
