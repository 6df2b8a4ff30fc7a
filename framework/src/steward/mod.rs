//! Steward: sites that are Bulwark clusters and speak to each other with threshold
//! signatures (docs/STEWARD.md). Pure roles, like the PBFT roles, driven alike by the
//! runtime and the simulator.
//!
//! Built so far, and the rules each part owns:
//! * [`payload`]: what a site threshold-signs, its message (SM1) and the binding it makes
//!   (the slot of TS1).
//! * [`signer`]: the threshold signer of one replica: shares only payloads whose binding
//!   it never contradicted (TS1), combines with `2f + 1` shares and verifies once (TS2),
//!   blames bad shares and still signs (TS3); the signature it produces verifies with the
//!   site's key alone (TS4).
//!
//! A site is named by its cluster's [`crate::ClusterId`].

pub mod payload;
pub mod signer;
