//! [`JwtSettings`]: what a verifier accepts, loaded once and checked before any key is
//! fetched.

use serde::{Deserialize, Serialize};

use crate::jwks::JwksSource;
use faultline_settings::{SettingError, positive};

/// How access tokens are verified. Every field can be set from the environment under the
/// section the service gives it (`CHECKOUT_AUTH__ISSUER`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    /// The `iss` every token must carry. Default `faultline-dev` (what the dev command mints).
    pub issuer: String,
    /// The `aud` every token must include. Default `faultline`.
    pub audience: String,
    /// Where the JWKS is: an `https://` URL of the identity provider, an `http://` URL on
    /// loopback (tests), or a file path. Default `.state/auth/jwks.json`.
    pub jwks: String,
    /// Clock skew tolerated on `exp` and `nbf`, seconds. Default 30.
    pub leeway_secs: u64,
    /// How often the JWKS is read again, seconds. Default 300.
    pub refresh_interval_secs: u64,
    /// Least time between two reads caused by unknown `kid`s, seconds. Default 30.
    pub min_refresh_interval_secs: u64,
    /// Timeout of one JWKS fetch, milliseconds. Default 2 000.
    pub fetch_timeout_ms: u64,
    /// Longest accepted token, bytes; longer ones are refused before parsing. Default 8 192.
    pub max_token_bytes: usize,
    /// Verified tokens remembered so their signatures are checked once; 0 turns the cache
    /// off. Default 10 000.
    pub token_cache_entries: usize,
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self {
            issuer: "faultline-dev".into(),
            audience: "faultline".into(),
            jwks: ".state/auth/jwks.json".into(),
            leeway_secs: 30,
            refresh_interval_secs: 300,
            min_refresh_interval_secs: 30,
            fetch_timeout_ms: 2_000,
            max_token_bytes: 8 * 1024,
            token_cache_entries: 10_000,
        }
    }
}

impl JwtSettings {
    /// Rejects settings that cannot work; `section` is where they sit (`CHECKOUT_AUTH`).
    pub fn validate(&self, section: &str) -> Result<(), SettingError> {
        if self.issuer.trim().is_empty() {
            return Err(SettingError::new(section, "issuer", "must not be empty"));
        }
        if self.audience.trim().is_empty() {
            return Err(SettingError::new(section, "audience", "must not be empty"));
        }
        match JwksSource::parse(&self.jwks) {
            JwksSource::File(path) if path.as_os_str().is_empty() => {
                return Err(SettingError::new(
                    section,
                    "jwks",
                    "must name a file or an https:// URL",
                ));
            }
            JwksSource::Url(url) if url.starts_with("http://") && !is_loopback_url(&url) => {
                return Err(SettingError::new(
                    section,
                    "jwks",
                    "must be https:// unless it is on loopback: keys fetched in plain text can be replaced on the way",
                ));
            }
            _ => {}
        }
        if self.leeway_secs > 300 {
            return Err(SettingError::new(
                section,
                "leeway_secs",
                "must be at most 300: clock skew is seconds, not minutes",
            ));
        }
        positive(section, "refresh_interval_secs", self.refresh_interval_secs)?;
        positive(
            section,
            "min_refresh_interval_secs",
            self.min_refresh_interval_secs,
        )?;
        positive(section, "fetch_timeout_ms", self.fetch_timeout_ms)?;
        if !(256..=64 * 1024).contains(&self.max_token_bytes) {
            return Err(SettingError::new(
                section,
                "max_token_bytes",
                "must be between 256 and 65536",
            ));
        }
        Ok(())
    }
}

fn is_loopback_url(url: &str) -> bool {
    let rest = url.trim_start_matches("http://");
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
