//! The client role, behind the runtime client's reply checks (a reply alone by its
//! signature, a bundle of one batch's replies by its signed Merkle root, cached, and each
//! reply's path; in connection mode by the connection it came on): invocations (ordered and
//! read-only), replies and bundles from members, matching or not, for outstanding
//! timestamps or any, addressed to it or to another client, tampered with, forged or raw,
//! and retransmission timers. It must never panic, complete a request twice or one it did
//! not have outstanding, exceed its window, go back a view, or send a request a replica
//! would refuse. The first byte picks the cluster's client authentication (`auth_of`).

#![no_main]

use bulwark_fuzz::{auth_of, ClientHarness, ClientStep};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u8, u32, Vec<ClientStep>)| {
    let (mode, first_timestamp, steps) = input;
    ClientHarness::new(first_timestamp, auth_of(mode)).run(steps);
});
