//! Replica 1, a backup in view 0: the checks of `replica_primary` from a backup's seat.
//! The first byte picks the cluster's client authentication (`auth_of`).

#![no_main]

use bulwark_fuzz::{auth_of, ReplicaHarness, Step};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u8, Vec<Step>)| {
    let (mode, steps) = input;
    ReplicaHarness::new(1, auth_of(mode)).run(steps);
});
