//! The view-changer through a replica (the first byte picks which of the four, `% 4`, and
//! the client authentication, `auth_of`): VIEW-CHANGEs from one or several members with
//! checkpoint proofs and prepared certificates, NEW-VIEWs whose `O` is computed from `V` by
//! VC12 (or tampered with), the request and view-change timers, and the normal-case steps
//! that give it something prepared to carry into the next view.

#![no_main]

use bulwark_fuzz::{auth_of, ReplicaHarness, ViewStep};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u8, Vec<ViewStep>)| {
    let (mode, steps) = input;
    ReplicaHarness::new(u32::from(mode), auth_of(mode)).run(steps.into_iter().flat_map(ViewStep::steps));
});
