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

mod settings;

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Principal;
use crate::jwks::{ALLOWED_ALGORITHMS, Fetcher, JwksError, JwksSource, KeySet};
use crate::principal::normalized;
use crate::token_cache::{self, TokenCache};

pub use settings::JwtSettings;

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
mod tests;
