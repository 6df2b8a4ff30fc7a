//! State transfer through a replica (the first byte picks which of the four, `% 4`, and the
//! client authentication, `auth_of`): checkpoint images with fuzzer-chosen contents
//! (well-formed or not) made stable by `2f + 1` CHECKPOINTs of the other members, their
//! chunks with correct Merkle paths answering the replica's STATE-REQs, made-up chunks, and
//! STATE-REQs to a replica that serves its own images. Installing an image it fetched must
//! never make the replica panic.

#![no_main]

use bulwark_fuzz::{auth_of, ReplicaHarness, TransferStep};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u8, Vec<TransferStep>)| {
    let (mode, steps) = input;
    ReplicaHarness::new(u32::from(mode), auth_of(mode)).run(steps.into_iter().map(TransferStep::step));
});
