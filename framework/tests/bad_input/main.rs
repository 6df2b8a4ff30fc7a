//! Bad input at the edge: every malformed, oversized, half-written, mis-signed or
//! ill-formed message is refused with a typed error and counted by
//! [`RefusalCounts`], never a panic. Rule IDs refer to `docs/PBFT.md` §1–§2.
//!
//! Every negative case has a positive control beside it (the same message made valid is
//! accepted), so a verifier that refused everything would fail these tests too.

mod batches;
mod counting;
mod fixtures;
mod properties;
mod signatures;
mod wire;
