//! The Bulwark runtime: one actix actor per protocol role, the TCP transport, timers,
//! storage and configuration loading. Built in the Runtime issue; the protocol it drives
//! lives in `bulwark-framework`.
pub mod client;
pub mod clock;
pub mod config;
pub mod metrics;
pub mod replica;
pub mod transport;
pub mod verifier;
