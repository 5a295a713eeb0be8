//! The error for a setting that cannot work.
//!
//! Each settings struct of this crate ([`crate::JwtSettings`], [`crate::PolicySettings`],
//! [`crate::MtlsSettings`]) validates itself given the environment-variable path of the
//! section it sits in (`CHECKOUT_AUTH`, say), so the error names the variable to fix:
//! `CHECKOUT_AUTH__JWKS`. The crate does not depend on a config loader; a service maps this
//! error into its own (`faultline_platform::config::ConfigError` converts it with `?`).

/// A setting with a value that cannot work, named as its environment variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting `{setting}`: {reason}")]
pub struct InvalidSetting {
    /// The setting, as an environment variable spells it (`CHECKOUT_AUTH__JWKS`).
    pub setting: String,
    /// What is wrong with it.
    pub reason: String,
}

impl InvalidSetting {
    /// The setting `field` of the section `section` (`CHECKOUT_AUTH` + `jwks` gives
    /// `CHECKOUT_AUTH__JWKS`).
    pub(crate) fn new(section: &str, field: &str, reason: impl Into<String>) -> Self {
        Self {
            setting: format!("{section}__{}", field.to_ascii_uppercase()),
            reason: reason.into(),
        }
    }
}

/// Rejects a zero where at least one is needed.
pub(crate) fn positive(section: &str, field: &str, value: u64) -> Result<(), InvalidSetting> {
    if value == 0 {
        return Err(InvalidSetting::new(section, field, "must be at least 1"));
    }
    Ok(())
}
