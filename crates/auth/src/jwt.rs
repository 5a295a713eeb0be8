//! Verifying JWT access tokens (RFC 9068) as RFC 8725 recommends.
//!
//! [`JwtVerifier::verify`] accepts a token only if, in this order:
//!
//! 1. it is at most `max_token_bytes` long (checked before any parsing, so a megabyte of
//!    garbage costs a length comparison);
//! 2. its header parses, its `alg` is on the allow-list (RS256, ES256, EdDSA; `none` and
//!    HMAC never are), its `typ`, when present, is `at+jwt` or `application/at+jwt`, and it
//!    has no `crit` member (no extension is understood here);
//! 3. its `kid` names a key of the JWKS (an unknown `kid` triggers one refresh of the set, at
//!    most once per `min_refresh_interval_secs`, so forged kids cannot hammer the provider),
//!    and that key's own algorithm equals the token's `alg`;
//! 4. the signature verifies, and `iss`, `aud`, `exp` and `sub` are present and right, with
//!    `exp` and `nbf` checked against the clock with `leeway_secs` of tolerance;
//! 5. `sub`, `tenant`, `roles` and `scope` are well-formed identifiers.
//!
//! Verified tokens are cached (see `token_cache`), so the signature of a token is checked
//! once, not on every request. [`JwtVerifier::spawn_refresh`] re-reads the JWKS on a
//! schedule; during a key rotation the old and new keys both verify while both are
//! published, and a key stops verifying (and cached tokens signed with it are forgotten) as
//! soon as a refresh no longer finds it.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Principal;
use crate::jwks::{ALLOWED_ALGORITHMS, Fetcher, JwksError, JwksSource, KeySet};
use crate::principal::normalized;
use crate::token_cache::{self, TokenCache};
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

/// Why a token was refused. The variants are for logs and tests; clients are told only
/// `invalid_token`, plus whether it expired.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Longer than `max_token_bytes`.
    #[error("the token is too large")]
    TooLarge,
    /// Not three base64url parts with a JSON header and claims of the right shape (this
    /// includes `alg: none`, which is not an algorithm at all here).
    #[error("the token is malformed")]
    Malformed,
    /// `alg` is not RS256, ES256 or EdDSA.
    #[error("the token's algorithm is not allowed")]
    AlgorithmNotAllowed,
    /// `typ` is present and is not `at+jwt`.
    #[error("the token is not an access token (typ)")]
    NotAnAccessToken,
    /// The header has `crit`: it demands extensions this verifier does not implement.
    #[error("the token requires unsupported extensions (crit)")]
    UnsupportedCritical,
    /// No `kid` in the header.
    #[error("the token names no key (kid)")]
    MissingKeyId,
    /// The `kid` is not in the JWKS, even after a refresh.
    #[error("the token's key is unknown")]
    UnknownKey,
    /// The key named by `kid` verifies another algorithm than the token's `alg`.
    #[error("the token's algorithm does not match its key")]
    KeyAlgorithmMismatch,
    /// The signature does not verify.
    #[error("the token's signature is invalid")]
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("the token's issuer is not accepted")]
    WrongIssuer,
    /// `aud` does not include the configured audience.
    #[error("the token is not meant for this audience")]
    WrongAudience,
    /// A required claim (`exp`, `iss`, `aud`, `sub`) is missing.
    #[error("the token lacks a required claim")]
    MissingClaim,
    /// `sub`, `tenant`, a role or a scope is empty, too long or has control characters.
    #[error("the token has an ill-formed claim")]
    InvalidClaim,
}

/// Longest accepted `sub`, `tenant`, role or scope.
const MAX_IDENTIFIER_CHARS: usize = 256;

/// The claims this crate reads; the token may have more.
#[derive(Deserialize)]
struct AccessClaims {
    // Optional here so that a missing one is reported as missing (jsonwebtoken checks the
    // required claims) rather than as a malformed token.
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    roles: Option<Vec<String>>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
}

/// Verifies access tokens against a JWKS that it keeps fresh. Cheap to clone; clones share
/// keys and cache.
#[derive(Clone)]
pub struct JwtVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    settings: JwtSettings,
    /// One validation per allowed algorithm, built once.
    validations: Vec<(Algorithm, Validation)>,
    keys: RwLock<Arc<KeySet>>,
    fetcher: Fetcher,
    /// When an unknown `kid` last caused a read of the JWKS. Held during every read, so
    /// reads never overlap and requests waiting on one see its result.
    last_kid_read: tokio::sync::Mutex<Option<Instant>>,
    cache: TokenCache,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.inner.settings.issuer)
            .field("audience", &self.inner.settings.audience)
            .field("jwks", &self.inner.fetcher.source())
            .field("keys", &*self.keys())
            .finish()
    }
}

impl JwtVerifier {
    /// A verifier for `settings`, with the JWKS read once now. Fails if the settings are
    /// invalid or the JWKS cannot be read: a service without keys can only refuse everyone.
    pub async fn new(settings: JwtSettings) -> Result<Self, JwksError> {
        let fetcher = Fetcher::new(
            JwksSource::parse(&settings.jwks),
            Duration::from_millis(settings.fetch_timeout_ms),
        )?;
        let keys = fetcher.fetch().await?;
        let verifier = Self::build(settings, fetcher, keys);
        tracing::info!(kids = ?verifier.keys().key_ids(), "JWKS loaded");
        Ok(verifier)
    }

    fn build(settings: JwtSettings, fetcher: Fetcher, keys: Arc<KeySet>) -> Self {
        let validations = ALLOWED_ALGORITHMS
            .iter()
            .map(|&algorithm| {
                let mut validation = Validation::new(algorithm);
                validation.set_issuer(&[&settings.issuer]);
                validation.set_audience(&[&settings.audience]);
                validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                validation.leeway = settings.leeway_secs;
                validation.validate_exp = true;
                validation.validate_nbf = true;
                validation.validate_aud = true;
                (algorithm, validation)
            })
            .collect();
        let cache = TokenCache::new(settings.token_cache_entries);
        Self {
            inner: Arc::new(Inner {
                settings,
                validations,
                keys: RwLock::new(keys),
                fetcher,
                last_kid_read: tokio::sync::Mutex::new(None),
                cache,
            }),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &JwtSettings {
        &self.inner.settings
    }

    /// The key ids currently trusted, sorted.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys().key_ids()
    }

    fn keys(&self) -> Arc<KeySet> {
        self.inner
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Verifies `token` (without the `Bearer ` prefix) and returns who it speaks for. See the
    /// module docs for the checks.
    pub async fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        let settings = &self.inner.settings;
        if token.len() > settings.max_token_bytes {
            return Err(TokenError::TooLarge);
        }
        let now = jsonwebtoken::get_current_timestamp();
        let digest = token_cache::digest(token);
        if let Some(principal) = self.inner.cache.get(&digest, now) {
            return Ok(principal);
        }

        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if !ALLOWED_ALGORITHMS.contains(&header.alg) {
            return Err(TokenError::AlgorithmNotAllowed);
        }
        if let Some(typ) = &header.typ
            && !typ.eq_ignore_ascii_case("at+jwt")
            && !typ.eq_ignore_ascii_case("application/at+jwt")
        {
            return Err(TokenError::NotAnAccessToken);
        }
        if header.crit.is_some() {
            return Err(TokenError::UnsupportedCritical);
        }
        let kid = header.kid.as_deref().ok_or(TokenError::MissingKeyId)?;
        let keys = self.keys_with(kid).await?;
        let key = keys.get(kid).ok_or(TokenError::UnknownKey)?;
        // The key decides the algorithm; the header only gets to agree with it.
        if key.algorithm != header.alg {
            return Err(TokenError::KeyAlgorithmMismatch);
        }
        let validation = self
            .inner
            .validations
            .iter()
            .find(|(algorithm, _)| *algorithm == key.algorithm)
            .map(|(_, validation)| validation)
            .ok_or(TokenError::AlgorithmNotAllowed)?;
        let claims = jsonwebtoken::decode::<AccessClaims>(token, &key.key, validation)
            .map_err(|e| token_error(e.kind()))?
            .claims;

        let (Some(subject), Some(exp)) = (claims.sub, claims.exp) else {
            return Err(TokenError::MissingClaim);
        };
        let principal = principal(
            subject,
            claims.tenant,
            claims.roles,
            claims.scope,
            claims.client_id,
        )?;
        let expires_after = exp.saturating_add(settings.leeway_secs);
        self.inner
            .cache
            .insert(digest, principal.clone(), expires_after, now);
        Ok(principal)
    }

    /// The current key set if it has `kid`; otherwise one read of the JWKS, unless an
    /// unknown `kid` already caused one less than `min_refresh_interval_secs` ago. Scheduled
    /// reads do not count: the limit bounds what forged kids can cause, nothing else.
    async fn keys_with(&self, kid: &str) -> Result<Arc<KeySet>, TokenError> {
        let keys = self.keys();
        if keys.get(kid).is_some() {
            return Ok(keys);
        }
        let mut last_kid_read = self.inner.last_kid_read.lock().await;
        // Another request may have read the set while this one waited.
        let keys = self.keys();
        if keys.get(kid).is_some() {
            return Ok(keys);
        }
        let min_interval = Duration::from_secs(self.inner.settings.min_refresh_interval_secs);
        if last_kid_read.is_some_and(|at| at.elapsed() < min_interval) {
            tracing::debug!("unknown kid; the JWKS was read for one recently, not again yet");
            return Err(TokenError::UnknownKey);
        }
        *last_kid_read = Some(Instant::now());
        tracing::info!("unknown kid; reading the JWKS again");
        match self.inner.fetcher.fetch().await {
            Ok(fresh) => {
                self.install(fresh.clone());
                Ok(fresh)
            }
            Err(error) => {
                tracing::warn!(%error, "JWKS read failed; keeping the keys we have");
                Err(TokenError::UnknownKey)
            }
        }
    }

    /// Reads the JWKS now, whatever the rate limit, and installs it. On failure the keys in
    /// force stay. This is what the scheduled refresh calls.
    pub async fn refresh(&self) -> Result<(), JwksError> {
        let _reading = self.inner.last_kid_read.lock().await;
        let fresh = self.inner.fetcher.fetch().await?;
        self.install(fresh);
        Ok(())
    }

    fn install(&self, fresh: Arc<KeySet>) {
        let previous = {
            let mut keys = self
                .inner
                .keys
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            std::mem::replace(&mut *keys, fresh.clone())
        };
        if previous.withdrawn_in(&fresh) {
            // Tokens verified with a withdrawn key must be verified again (and fail).
            self.inner.cache.clear();
            tracing::info!(before = ?previous.key_ids(), now = ?fresh.key_ids(), "JWKS keys withdrawn or changed");
        } else if previous.len() != fresh.len() {
            tracing::info!(before = ?previous.key_ids(), now = ?fresh.key_ids(), "JWKS keys added");
        }
    }

    /// Reads the JWKS every `refresh_interval_secs` until `shutdown` is cancelled. A failed
    /// read is logged and the keys in force stay until the next one.
    pub fn spawn_refresh(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let verifier = self.clone();
        let period = Duration::from_secs(self.inner.settings.refresh_interval_secs.max(1));
        crate::watch::every(period, shutdown, move || {
            let verifier = verifier.clone();
            async move {
                if let Err(error) = verifier.refresh().await {
                    tracing::warn!(%error, "scheduled JWKS refresh failed; keeping the keys we have");
                }
            }
        })
    }
}

fn token_error(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::MissingRequiredClaim(_) => TokenError::MissingClaim,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            TokenError::AlgorithmNotAllowed
        }
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::Provider(_) => TokenError::BadSignature,
        _ => TokenError::Malformed,
    }
}

/// Builds the principal, refusing identifiers that are empty, huge or carry control
/// characters: they end up in logs, policies and idempotency scopes.
fn principal(
    subject: String,
    tenant: Option<String>,
    roles: Option<Vec<String>>,
    scope: Option<String>,
    client_id: Option<String>,
) -> Result<Principal, TokenError> {
    let well_formed = |value: &str| {
        !value.is_empty()
            && value.chars().count() <= MAX_IDENTIFIER_CHARS
            && !value.chars().any(char::is_control)
    };
    let roles = roles.unwrap_or_default();
    let scopes: Vec<String> = scope
        .as_deref()
        .unwrap_or_default()
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let all_well_formed = well_formed(&subject)
        && tenant.as_deref().is_none_or(well_formed)
        && client_id.as_deref().is_none_or(well_formed)
        && roles.iter().all(|r| well_formed(r))
        && scopes.iter().all(|s| well_formed(s));
    if !all_well_formed {
        return Err(TokenError::InvalidClaim);
    }
    Ok(Principal {
        subject,
        tenant,
        roles: normalized(roles),
        scopes: normalized(scopes),
        client_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_only_for_loopback() {
        let mut settings = JwtSettings {
            jwks: "http://idp.example/jwks".into(),
            ..JwtSettings::default()
        };
        let err = settings.validate("CHECKOUT_AUTH").unwrap_err();
        assert_eq!(err.setting, "CHECKOUT_AUTH__JWKS");
        for ok in [
            "http://127.0.0.1:8081/jwks",
            "http://localhost/jwks",
            "http://[::1]:99/jwks",
            "https://idp.example/jwks",
            "/etc/faultline/jwks.json",
        ] {
            settings.jwks = ok.into();
            settings.validate("CHECKOUT_AUTH").unwrap();
        }
    }

    #[test]
    fn validation_names_the_setting() {
        let settings = JwtSettings {
            leeway_secs: 3600,
            ..JwtSettings::default()
        };
        let err = settings.validate("CHECKOUT_AUTH").unwrap_err();
        assert!(
            err.to_string().contains("CHECKOUT_AUTH__LEEWAY_SECS"),
            "{err}"
        );
        JwtSettings::default().validate("CHECKOUT_AUTH").unwrap();
    }

    #[test]
    fn identifiers_must_be_well_formed() {
        let ok = principal("alice".into(), None, None, Some("b a a".into()), None).unwrap();
        assert_eq!(ok.scopes, ["a", "b"]);
        assert_eq!(
            principal(String::new(), None, None, None, None),
            Err(TokenError::InvalidClaim)
        );
        assert_eq!(
            principal("a\nb".into(), None, None, None, None),
            Err(TokenError::InvalidClaim)
        );
        assert_eq!(
            principal("a".into(), None, Some(vec!["x".repeat(300)]), None, None),
            Err(TokenError::InvalidClaim)
        );
    }
}
