//! Time and chance, injectable so tests can decide them.
//!
//! Freshness is judged against wall-clock time because it is shared between processes
//! through Redis (a value one process wrote fresh until T must look the same to all). Load
//! times (XFetch's δ) are measured with the same clock so a test's clock decides them too.
//! Randomness drives TTL jitter and the early-refresh draw.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngExt;

/// Wall-clock time.
pub trait Clock: Send + Sync + 'static {
    /// Microseconds since the Unix epoch.
    fn now_micros(&self) -> u64;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_micros(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }
}

/// A source of uniform random numbers.
pub trait Random: Send + Sync + 'static {
    /// A number drawn uniformly from `(0, 1]` (never 0, so its logarithm is finite).
    fn unit(&self) -> f64;
}

/// The thread-local generator of `rand`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadRandom;

impl Random for ThreadRandom {
    fn unit(&self) -> f64 {
        // random() is in [0, 1); flipping it gives (0, 1].
        1.0 - rand::rng().random::<f64>()
    }
}

/// A fresh lease token: 128 random bits in hex, never injected (two loaders must never share
/// one, whatever a test's `Random` returns).
pub(crate) fn token() -> String {
    let mut rng = rand::rng();
    format!("{:016x}{:016x}", rng.random::<u64>(), rng.random::<u64>())
}
