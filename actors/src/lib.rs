//! The Bulwark runtime: one actix actor per protocol role, the TCP transport, timers,
//! storage and configuration loading. Built in the Runtime issue; the protocol it drives
//! lives in `bulwark-framework`.
