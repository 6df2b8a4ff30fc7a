//! Services users would write on top of Bulwark.
//!
//! Each module here is an ordinary implementation of
//! [`bulwark_framework::service::Service`]: a deterministic state machine that the
//! framework replicates with PBFT. Nothing in them knows about replicas, views or
//! quorums; they are what an application developer writes, and they double as the
//! services the framework's own tests and benchmarks replicate.
//!
//! - [`kv`]: a key-value store with put, get, delete and append.
//! - [`bank`]: Lamport's toy bank, whose invariant (money is neither created nor lost
//!   by transfers) makes a replication bug easy to see.
//!
//! Beside them: [`cluster`] starts a local cluster in one process (the demo, the bench and
//! the tests use it), and [`client_attack`] runs the simulator's Byzantine clients against
//! a real cluster.

pub mod bank;
pub mod client_attack;
pub mod cluster;
pub mod echo;
pub mod kv;

/// The README's code blocks, compiled and run as doc tests so the README stays true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
