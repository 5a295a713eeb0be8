//! Validation shared by every layer's settings.
//!
//! Each layer has its own serde settings struct (`TimeoutConfig`, `RetryConfig`, ...) whose
//! `Default` impl is the one place its defaults are written, and whose `validate(path)`
//! rejects values that cannot work. `path` is the environment-variable spelling of where the
//! struct sits in the service's configuration (say `CHECKOUT_INVENTORY__RESILIENCE`); fields
//! are appended with `__`, the way `faultline_platform::config::load` nests them, so an error
//! names the exact variable to fix (`CHECKOUT_INVENTORY__RESILIENCE__RETRY__MAX_ATTEMPTS`).
//!
//! This crate does not depend on `faultline-platform` (that would pull Postgres and Kafka
//! into every user of a tower layer); [`ConfigError`] has the same shape as the platform's
//! `ConfigError::Invalid`, so a service maps one onto the other in one line.

/// A setting that cannot work, named as an environment variable would spell it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting `{setting}`: {reason}")]
pub struct ConfigError {
    /// The setting, e.g. `CHECKOUT_INVENTORY__RESILIENCE__BREAKER__WINDOW_SIZE`.
    pub setting: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    /// The error for `field` of the section at `path` (`CHECKOUT_CACHE`, `TTL_MS`): the
    /// setting is named as its environment variable, `CHECKOUT_CACHE__TTL_MS`. Other crates'
    /// settings use it too, so every setting error reads the same.
    pub fn new(path: &str, field: &str, reason: impl Into<String>) -> Self {
        Self {
            setting: join(path, field),
            reason: reason.into(),
        }
    }

    /// Rejects zero where a zero duration or count means nothing sensible.
    pub fn positive(path: &str, field: &str, value: u64) -> Result<(), Self> {
        positive(path, field, value)
    }

    /// The variable prefix of the section `field` nested in `path` (`CHECKOUT_CACHE__L1`).
    pub fn section(path: &str, field: &str) -> String {
        join(path, field)
    }
}

/// `path` and `field` joined the way nested settings are spelt in the environment.
pub(crate) fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}__{field}")
    }
}

/// Rejects zero where a zero duration or count means nothing sensible.
pub(crate) fn positive(path: &str, field: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::new(path, field, "must be greater than zero"));
    }
    Ok(())
}

/// Rejects a percentage outside `(0, 100]` (or `[0, 100]` when `zero_ok`), and NaN.
pub(crate) fn percent(
    path: &str,
    field: &str,
    value: f64,
    zero_ok: bool,
) -> Result<(), ConfigError> {
    let low_ok = if zero_ok { value >= 0.0 } else { value > 0.0 };
    if !value.is_finite() || !low_ok || value > 100.0 {
        let range = if zero_ok {
            "0..=100"
        } else {
            "greater than 0 and at most 100"
        };
        return Err(ConfigError::new(
            path,
            field,
            format!("must be a percentage, {range}; got {value}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_names_use_double_underscores() {
        let err = positive("CHECKOUT_INVENTORY__RESILIENCE__RETRY", "MAX_ATTEMPTS", 0).unwrap_err();
        assert_eq!(
            err.setting,
            "CHECKOUT_INVENTORY__RESILIENCE__RETRY__MAX_ATTEMPTS"
        );
        assert!(err.to_string().contains("greater than zero"), "{err}");
    }

    #[test]
    fn percentages_reject_nan_negative_and_above_one_hundred() {
        for bad in [f64::NAN, -1.0, 100.5, f64::INFINITY] {
            assert!(percent("P", "X", bad, true).is_err(), "{bad}");
        }
        assert!(percent("P", "X", 0.0, false).is_err());
        assert!(percent("P", "X", 0.0, true).is_ok());
        assert!(percent("P", "X", 100.0, false).is_ok());
    }
}
