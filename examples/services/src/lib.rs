//! The example services: ordinary implementations of
//! [`bulwark_framework::service::Service`], the deterministic state machines an
//! application developer writes. Nothing in them knows about replicas, views or quorums,
//! and this crate depends on no runtime (no actix, no tokio, no storage), so the
//! framework's own tests and the simulator replicate them as they are.
//!
//! - [`kv`]: a key-value store with put, get, delete and append.
//! - [`bank`]: Lamport's toy bank, whose invariant (money is neither created nor lost
//!   by transfers) makes a replication bug easy to see.
//! - [`echo`]: the null service of the PBFT paper's micro benchmarks: an operation
//!   carries a payload and asks for a reply of some size, and executing it only counts it.

pub mod bank;
pub mod echo;
pub mod kv;
