//! Services users would write on top of Bulwark, and the programs that run them.
//!
//! The services themselves ([`kv`], [`bank`], [`echo`]) live in the `bulwark-services`
//! crate, which depends on no runtime, so that the framework's own tests can replicate
//! them; they are re-exported here.
//!
//! Beside them: [`cluster`] starts a local cluster in one process (the demo, the bench and
//! the tests use it), and [`client_attack`] runs the simulator's Byzantine clients against
//! a real cluster.

pub use bulwark_services::{bank, echo, kv};

pub mod client_attack;
pub mod cluster;

/// The README's code blocks, compiled and run as doc tests so the README stays true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
