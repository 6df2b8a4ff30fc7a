//! Shared harness of Bulwark's cargo-fuzz targets (see `fuzz/README.md`).
//!
//! The fuzzer does not write signatures: it writes *steps* ([`Step`], [`ClientStep`]),
//! structured values decoded from its bytes with `arbitrary`, and the harness turns each
//! step into messages signed with the cluster's real test keys (the keys of
//! `framework/tests/fuzz_roles.rs`), so that most inputs get past edge verification and
//! reach the role handlers. Some steps still carry raw bytes ([`Step::Raw`]) or damage a
//! well-formed message after signing ([`Step::Mutate`]), so the refusal paths are kept too.
//!
//! The harness also watches what the replica sends and keeps a small [`Pool`] of it
//! (slots it pre-prepared or voted for, checkpoints it signed, state chunks it asked for,
//! its own VIEW-CHANGEs). Steps such as [`Step::Agree`] answer from that pool with
//! matching votes from the other members, which is what lets a fuzzed replica execute
//! batches, take checkpoints, change views and transfer state instead of refusing
//! everything as "digest unknown".
//!
//! Every target checks, after each input, what `fuzz_roles.rs` checks (no panic, view,
//! stable checkpoint and execution never go back, every bounded structure within its
//! bound) and one more thing: every message a correct replica or client sends must pass
//! edge verification at a correct receiver and fit in a frame.

mod builder;
mod checks;
mod client_harness;
mod cluster;
mod image;
mod pool;
mod replica_harness;
mod service;
mod steps;
#[cfg(test)]
mod tests;

pub use builder::{corrupt_signature, mutate, reply_bundle, Builder};
pub use checks::{check_replies_sendable, check_sendable};
pub use client_harness::{ClientHarness, ClientStep, Link, ReplySpec, ResultChoice, TimestampChoice};
pub use cluster::{auth_of, client_key, config, config_for, handle, params, replica_key, SCOPE};
pub use image::{image_bytes, image_mirror_matches};
pub use pool::{HeldImage, Pool};
pub use replica_harness::ReplicaHarness;
pub use service::{FuzzKv, FuzzOp};
pub use steps::{
    AgreeCheckpointSpec, AgreeSpec, BatchChoice, BatchReplySpec, BatchRequestSpec, BundleSpec, BundledSpec, CertSpec,
    CertifyImageSpec, CheckpointSpec, ClientImage, DigestChoice, ImageSpec, Num, NvSpec, OpSpec, PrePrepareSpec,
    ReqSpec, ServiceImage, StateChunkSpec, StateReplySpec, StateRequestSpec, StatusSpec, Step, TimerChoice,
    TransferStep, VcBody, VcSpec, ViewStep, VoteSpec, Who,
};

/// Members of the fuzzed cluster (`f = 1`).
pub const N: u32 = 4;
/// Keys the harness signs with: replicas `0..N` are members, `N` and `N + 1` are not.
const SIGNERS: u32 = N + 2;
/// Clients the harness signs requests for.
pub const CLIENTS: u8 = 4;
/// Steps run per input at most (bounds the time of one execution).
pub const STEPS_MAX: usize = 96;
/// Entries the pool keeps of each kind.
const POOL_MAX: usize = 32;
