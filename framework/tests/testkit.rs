//! The test kit a service author runs first (`bulwark_framework::testkit`): it catches a
//! double-booking bug planted in a seat service, by the author's invariant and by the
//! linearizability check, on the first seeds; it catches a non-deterministic service, by
//! the determinism check and in the simulator; and the correct service passes both under
//! the simulator's faults (the negative control of each catch).

use bulwark_framework::service::{Caller, ExecutionContext, Outcome, Service, ServiceError};
use bulwark_framework::sim::Completion;
use bulwark_framework::testkit::linearizability::Specification;
use bulwark_framework::testkit::{check_determinism, Faults, NotDeterministic, ServiceTest};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Op {
    Reserve(u32),
    Cancel(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
enum Reply {
    Reserved,
    Taken,
    Cancelled,
    NotYours,
}

/// Seat bookings as a list, so a seat booked twice shows. With `planted_bug` a seat is
/// reserved without looking whether it is taken.
#[derive(Debug, Default)]
struct Seats {
    bookings: Vec<(u32, u64)>,
    planted_bug: bool,
}

impl Service for Seats {
    type Op = Op;
    type Reply = Reply;

    fn execute(&mut self, op: &Op, context: &mut ExecutionContext) -> Reply {
        let caller = context.caller().id.0;
        match *op {
            Op::Reserve(seat) if !self.planted_bug && self.bookings.iter().any(|(s, _)| *s == seat) => Reply::Taken,
            Op::Reserve(seat) => {
                self.bookings.push((seat, caller));
                self.bookings.sort();
                Reply::Reserved
            }
            Op::Cancel(seat) => match self.bookings.iter().position(|b| *b == (seat, caller)) {
                Some(at) => {
                    self.bookings.remove(at);
                    Reply::Cancelled
                }
                None => Reply::NotYours,
            },
        }
    }

    fn query(&self, _: &Op, _: &Caller) -> Option<Reply> {
        None
    }

    fn snapshot(&self) -> Vec<u8> {
        rmp_serde::to_vec(&self.bookings).unwrap()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), ServiceError> {
        self.bookings = rmp_serde::from_slice(snapshot).map_err(|e| ServiceError(e.to_string()))?;
        Ok(())
    }
}

/// No seat is booked twice.
fn no_double_booking(seats: &Seats) -> Result<(), String> {
    match seats.bookings.windows(2).find(|w| w[0].0 == w[1].0) {
        Some(w) => Err(format!("seat {} is booked twice", w[0].0)),
        None => Ok(()),
    }
}

/// Few seats, so clients collide: reserve mostly, cancel sometimes.
fn workload(rng: &mut rand_chacha::ChaCha8Rng, _client: usize, _index: u64) -> Op {
    let seat = rng.gen_range(1..6);
    if rng.gen_bool(0.8) {
        Op::Reserve(seat)
    } else {
        Op::Cancel(seat)
    }
}

/// The sequential specification: a map from seat to holder.
struct SeatSpec;

impl Specification for SeatSpec {
    type State = BTreeMap<u32, u64>;
    type Input = (u64, Op);
    type Output = Reply;

    fn initial(&self) -> Self::State {
        BTreeMap::new()
    }

    fn step(&self, state: &Self::State, (client, op): &(u64, Op), reply: &Reply) -> (bool, Self::State) {
        let mut next = state.clone();
        let expected = match *op {
            Op::Reserve(seat) if state.contains_key(&seat) => Reply::Taken,
            Op::Reserve(seat) => {
                next.insert(seat, *client);
                Reply::Reserved
            }
            Op::Cancel(seat) if state.get(&seat) == Some(client) => {
                next.remove(&seat);
                Reply::Cancelled
            }
            Op::Cancel(_) => Reply::NotYours,
        };
        (expected == *reply, next)
    }

    fn partition(
        &self,
        history: &[bulwark_framework::testkit::linearizability::Operation<(u64, Op), Reply>],
    ) -> Vec<Vec<usize>> {
        let mut by_seat: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (index, operation) in history.iter().enumerate() {
            let (Op::Reserve(seat) | Op::Cancel(seat)) = operation.input.1;
            by_seat.entry(seat).or_default().push(index);
        }
        by_seat.into_values().collect()
    }
}

/// A completion in the specification's terms: the client index stands for the caller.
fn as_spec_operation(completion: &Completion<Seats>) -> Option<((u64, Op), Reply)> {
    match &completion.outcome {
        Outcome::Ok(reply) => Some(((completion.client as u64, completion.operation.clone()), *reply)),
        _ => None,
    }
}

/// The simulated clients sign with distinct keys, one per client index, so the service's
/// caller and the specification's client agree as long as they are compared per client:
/// what the spec needs is only that one client's cancel matches its own reservation.
fn seat_test(planted_bug: bool) -> ServiceTest<Seats> {
    ServiceTest::new(move || Seats { bookings: Vec::new(), planted_bug }, workload).clients(3, 25)
}

#[test]
fn the_invariant_catches_a_planted_double_booking_on_the_first_seeds() {
    let failure = seat_test(true).seeds(1..4).invariant(no_double_booking).run().unwrap_err();
    assert!(failure.seed < 4, "{failure}");
    assert!(failure.what.contains("service") && failure.what.contains("booked twice"), "{failure}");
    assert!(failure.to_string().contains(&format!(".seeds({}..{})", failure.seed, failure.seed + 1)), "{failure}");
}

#[test]
fn the_linearizability_check_catches_the_planted_double_booking() {
    let failure =
        seat_test(true).seeds(1..4).faults(Faults::None).linearizable(SeatSpec, as_spec_operation).run().unwrap_err();
    assert!(failure.seed < 4, "{failure}");
    assert!(failure.what.contains("not linearizable"), "{failure}");
}

/// The control: the correct service passes the invariant and the linearizability check
/// under the simulator's faults.
#[test]
fn the_correct_seat_service_passes_under_faults() {
    let seeds = seat_test(false)
        .seeds(1..13)
        .invariant(no_double_booking)
        .linearizable(SeatSpec, as_spec_operation)
        .run()
        .unwrap_or_else(|failure| panic!("{failure}"));
    assert_eq!(seeds, 12);
}

/// A counter per name kept in a `HashMap` whose snapshot lists the map in iteration order:
/// two instances disagree on the bytes.
#[derive(Debug, Default)]
struct HashCounts(HashMap<u32, u64>);

impl Service for HashCounts {
    type Op = u32;
    type Reply = u64;

    fn execute(&mut self, name: &u32, _: &mut ExecutionContext) -> u64 {
        let count = self.0.entry(*name).or_default();
        *count += 1;
        *count
    }

    fn query(&self, _: &u32, _: &Caller) -> Option<u64> {
        None
    }

    fn snapshot(&self) -> Vec<u8> {
        rmp_serde::to_vec(&self.0.iter().collect::<Vec<_>>()).unwrap()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), ServiceError> {
        let pairs: Vec<(u32, u64)> = rmp_serde::from_slice(snapshot).map_err(|e| ServiceError(e.to_string()))?;
        self.0 = pairs.into_iter().collect();
        Ok(())
    }
}

#[test]
fn the_determinism_check_catches_hashmap_order_and_passes_a_btreemap() {
    let operations: Vec<u32> = (0..40).map(|i| i % 13).collect();
    let error = check_determinism(HashCounts::default, &operations, Caller::test(1)).unwrap_err();
    assert!(matches!(error, NotDeterministic::Snapshots { .. } | NotDeterministic::NotCanonical { .. }), "{error}");

    let seats: Vec<Op> = (0..40).map(|i| if i % 3 == 0 { Op::Cancel(i % 5) } else { Op::Reserve(i % 5) }).collect();
    check_determinism(Seats::default, &seats, Caller::test(1)).unwrap();
}

#[test]
fn the_simulator_catches_the_non_deterministic_service_on_its_first_seed() {
    let test = ServiceTest::new(HashCounts::default, |rng, _, _| rng.gen_range(0..13u32)).faults(Faults::None);
    let failure = test.seeds(1..2).run().unwrap_err();
    assert_eq!(failure.seed, 1);
    assert!(failure.what.contains("violations") || failure.what.contains("converge"), "{failure}");
}
