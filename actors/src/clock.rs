//! The runtime's clock: framework roles never read one, the runtime passes `now` in.

use bulwark_framework::Instant;
use std::sync::OnceLock;

static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();

/// Microseconds since the first call in this process, as a framework [`Instant`].
pub fn now() -> Instant {
    let origin = ORIGIN.get_or_init(std::time::Instant::now);
    Instant(origin.elapsed().as_micros() as u64)
}

/// Microseconds since the Unix epoch: a client's first timestamp, so a restarted client
/// starts above every timestamp it used before (PBFT.md CX1).
pub fn wall_clock_micros() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(1)
}
