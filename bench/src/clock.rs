//! Wall-clock timestamps in nanoseconds since the Unix epoch.
//!
//! Publish and receive happen in different processes; `SystemTime` is the one clock they
//! share on a machine, so latencies are differences of these (monotonic `Instant`s are used
//! for everything measured within one process).

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in nanoseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
