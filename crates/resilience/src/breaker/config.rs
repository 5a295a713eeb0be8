//! The breaker's settings, as loaded from configuration and checked once.

use serde::{Deserialize, Serialize};

use faultline_settings::{SettingError, percent, positive};

/// How the breaker's window is measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    /// The last `window_size` calls.
    #[default]
    CountBased,
    /// The calls of the last `window_size` seconds.
    TimeBased,
}

/// Circuit breaker settings for one downstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// `count_based` or `time_based` (`..__BREAKER__WINDOW`). Default `count_based`.
    pub window: WindowKind,
    /// Calls (count-based, 1..=100 000) or seconds (time-based, 1..=3 600) in the window
    /// (`..__BREAKER__WINDOW_SIZE`). Default 100.
    pub window_size: u32,
    /// Calls the window must hold before rates are judged (`..__BREAKER__MINIMUM_CALLS`).
    /// Default 20.
    pub minimum_calls: u32,
    /// Failure percentage that opens the breaker, (0, 100]
    /// (`..__BREAKER__FAILURE_RATE_THRESHOLD`). Default 50.
    pub failure_rate_threshold: f64,
    /// Slow-call percentage that opens the breaker, (0, 100]
    /// (`..__BREAKER__SLOW_CALL_RATE_THRESHOLD`). Default 100 (only when every call is slow).
    pub slow_call_rate_threshold: f64,
    /// A call taking at least this long is slow (`..__BREAKER__SLOW_CALL_DURATION_MS`).
    /// Default 1 000.
    pub slow_call_duration_ms: u64,
    /// Time spent open before probing (`..__BREAKER__OPEN_WAIT_MS`). Default 5 000.
    pub open_wait_ms: u64,
    /// Probe calls let through while half-open (`..__BREAKER__HALF_OPEN_CALLS`). Default 5.
    pub half_open_calls: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: WindowKind::CountBased,
            window_size: 100,
            minimum_calls: 20,
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 100.0,
            slow_call_duration_ms: 1_000,
            open_wait_ms: 5_000,
            half_open_calls: 5,
        }
    }
}

impl BreakerConfig {
    /// Rejects settings that cannot work, naming the setting.
    pub fn validate(&self, path: &str) -> Result<(), SettingError> {
        let max_size = match self.window {
            WindowKind::CountBased => 100_000,
            WindowKind::TimeBased => 3_600,
        };
        if !(1..=max_size).contains(&self.window_size) {
            return Err(SettingError::new(
                path,
                "WINDOW_SIZE",
                format!("must be within 1..={max_size}; got {}", self.window_size),
            ));
        }
        positive(path, "MINIMUM_CALLS", u64::from(self.minimum_calls))?;
        if self.window == WindowKind::CountBased && self.window_size < self.minimum_calls {
            return Err(SettingError::new(
                path,
                "WINDOW_SIZE",
                format!(
                    "a window of {} calls can never hold the minimum of {} calls, so the \
                     breaker could never open",
                    self.window_size, self.minimum_calls
                ),
            ));
        }
        percent(
            path,
            "FAILURE_RATE_THRESHOLD",
            self.failure_rate_threshold,
            false,
        )?;
        percent(
            path,
            "SLOW_CALL_RATE_THRESHOLD",
            self.slow_call_rate_threshold,
            false,
        )?;
        positive(path, "SLOW_CALL_DURATION_MS", self.slow_call_duration_ms)?;
        positive(path, "OPEN_WAIT_MS", self.open_wait_ms)?;
        if !(1..=10_000).contains(&self.half_open_calls) {
            return Err(SettingError::new(
                path,
                "HALF_OPEN_CALLS",
                format!("must be within 1..=10000; got {}", self.half_open_calls),
            ));
        }
        Ok(())
    }
}
