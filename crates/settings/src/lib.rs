//! The one error for a setting that cannot work, and the one way settings are named.
//!
//! Every settings struct in Faultline (a layer's `RetryConfig`, the cache's `CacheConfig`,
//! auth's `JwtSettings`, the platform's `DatabaseSettings`) has a `validate(path)` whose
//! `path` is the environment-variable spelling of where the struct sits: `CHECKOUT_CACHE`,
//! `CHECKOUT_INVENTORY__RESILIENCE__RETRY`. A field is appended with `__`, the way the
//! platform's loader nests them, so a [`SettingError`] names the exact variable to fix
//! (`CHECKOUT_CACHE__TTL_MS`) whichever crate found the problem.
//!
//! This crate sits below all the others so that a tower layer's settings need neither the
//! platform (Postgres, Kafka) nor a config loader to say what is wrong with them.

#![warn(missing_docs)]

/// A setting whose value cannot work, named as its environment variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting `{setting}`: {reason}")]
pub struct SettingError {
    /// The variable, e.g. `CHECKOUT_INVENTORY__RESILIENCE__BREAKER__WINDOW_SIZE`.
    pub setting: String,
    /// What is wrong with its value.
    pub reason: String,
}

impl SettingError {
    /// The error for `field` of the section at `path` (`CHECKOUT_CACHE` and `ttl_ms` name
    /// `CHECKOUT_CACHE__TTL_MS`).
    pub fn new(path: &str, field: &str, reason: impl Into<String>) -> Self {
        Self::named(join(path, field), reason)
    }

    /// The error for a setting already spelt out in full.
    pub fn named(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            setting: setting.into(),
            reason: reason.into(),
        }
    }
}

/// The path of `field` (a setting or a nested section) inside the section at `path`.
pub fn join(path: &str, field: &str) -> String {
    let field = field.to_ascii_uppercase();
    if path.is_empty() {
        field
    } else {
        format!("{path}__{field}")
    }
}

/// Rejects zero where a zero duration or count means nothing sensible.
pub fn positive(path: &str, field: &str, value: u64) -> Result<(), SettingError> {
    if value == 0 {
        return Err(SettingError::new(path, field, "must be greater than zero"));
    }
    Ok(())
}

/// Rejects a percentage outside `(0, 100]` (or `[0, 100]` when `zero_ok`), and NaN.
pub fn percent(path: &str, field: &str, value: f64, zero_ok: bool) -> Result<(), SettingError> {
    let low_ok = if zero_ok { value >= 0.0 } else { value > 0.0 };
    if !value.is_finite() || !low_ok || value > 100.0 {
        let range = if zero_ok {
            "0..=100"
        } else {
            "greater than 0 and at most 100"
        };
        return Err(SettingError::new(
            path,
            field,
            format!("must be a percentage, {range}; got {value}"),
        ));
    }
    Ok(())
}

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_names_use_double_underscores_and_upper_case() {
        let err = positive("CHECKOUT_INVENTORY__RESILIENCE__RETRY", "max_attempts", 0)
            .expect_err("zero is refused");
        assert_eq!(
            err.setting,
            "CHECKOUT_INVENTORY__RESILIENCE__RETRY__MAX_ATTEMPTS"
        );
        assert!(err.to_string().contains("greater than zero"), "{err}");
        assert_eq!(join("", "TTL_MS"), "TTL_MS");
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
