//! One test per protocol rule of `docs/PBFT.md`, named after the rule it checks.
//!
//! Each test drives a role directly, or a replica with its roles wired as production wires
//! them (`roles::node::Node`, with no delay on the hops) — no network, no runtime — and
//! asserts exactly which outputs come out, the way the paper states the rule.
//!
//! One module per role; [`fixture`] is the cluster they share.

mod agreement;
mod checkpoints;
mod client;
mod execution;
mod fixture;
mod primary;
mod status;
mod time;
mod view_change;
