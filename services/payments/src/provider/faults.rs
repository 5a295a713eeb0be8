//! The trouble the simulated provider makes on purpose.

use faultline_settings::SettingError;
use serde::{Deserialize, Serialize};

/// Trouble the simulated provider makes, changeable while it runs (payments' admin port
/// serves `GET` and `PUT /provider`), so timeouts, retries and the breaker have something
/// real to face.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Added to every call.
    pub latency_ms: u64,
    /// Fraction of calls that fail, 0 to 1. Half of the failures happen after the provider
    /// acted (the answer is lost on the way back), which is what makes reusing the
    /// idempotency key on retry matter.
    pub failure_rate: f64,
}

impl Faults {
    /// Checks the ranges; `path` is the section's variable prefix.
    pub fn validate(&self, path: &str) -> Result<(), SettingError> {
        if !(0.0..=1.0).contains(&self.failure_rate) {
            return Err(SettingError::new(
                path,
                "FAILURE_RATE",
                "must be between 0 and 1",
            ));
        }
        if self.latency_ms > 60_000 {
            return Err(SettingError::new(
                path,
                "LATENCY_MS",
                "must be at most 60000",
            ));
        }
        Ok(())
    }
}
