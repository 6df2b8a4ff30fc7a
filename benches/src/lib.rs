//! Shared helpers for the Bulwark benchmarks.
