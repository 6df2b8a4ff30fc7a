//! Replica 0, the primary of view 0: any sequence of steps (requests, proposals, votes,
//! checkpoints, view changes, state transfer, raw bytes, timers) must never make it panic,
//! move its view, stable checkpoint or execution back, break a bound, or send a message
//! (or replies) a correct peer (or client) would refuse. The first byte picks the
//! cluster's client authentication (`auth_of`: connection mode one time in four).

#![no_main]

use bulwark_fuzz::{auth_of, ReplicaHarness, Step};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u8, Vec<Step>)| {
    let (mode, steps) = input;
    ReplicaHarness::new(0, auth_of(mode)).run(steps);
});
