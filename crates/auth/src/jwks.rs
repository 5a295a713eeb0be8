//! Verification keys from a JSON Web Key Set (RFC 7517), and where the set comes from.
//!
//! A [`KeySet`] keeps only keys that can verify one of the allowed algorithms, and fixes each
//! key's algorithm **from the key itself**: an RSA key verifies RS256, a P-256 key ES256, an
//! Ed25519 key EdDSA. A token's `alg` header must then equal its key's algorithm, so a token
//! cannot choose how its key is used (the "algorithm confusion" attack, where an RSA public
//! key is used as an HMAC secret). A JWK whose `alg` contradicts its key type, symmetric
//! (`oct`) keys, keys for encryption, RSA keys under 2048 bits and keys without a `kid` are
//! left out, each with a warning; the rest of the set still loads.
//!
//! [`JwksSource`] reads the set from a file (local runs) or fetches it over HTTP(S) from an
//! identity provider, with a timeout, no redirects and a size cap.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};

/// The algorithms access tokens may be signed with (RFC 8725 §3.1: an explicit allow-list).
pub const ALLOWED_ALGORITHMS: [Algorithm; 3] =
    [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// A JWKS document larger than this is refused: real sets are a few kilobytes.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Smallest RSA modulus accepted, in bytes (2048 bits; RFC 7518 §3.3).
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// Longest `kid` accepted; longer ones are not keys anyone meant to publish.
const MAX_KID_CHARS: usize = 256;

/// Why a key set could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The file could not be read.
    #[error("cannot read the JWKS file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The URL could not be fetched, or did not answer 200.
    #[error("cannot fetch the JWKS from {url}: {reason}")]
    Fetch {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The document is larger than [`MAX_JWKS_BYTES`].
    #[error("the JWKS is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    /// The document is not a JWKS.
    #[error("the JWKS is not a JSON object with a `keys` array: {0}")]
    Malformed(String),
    /// Not one key in the set can verify an allowed algorithm. Refused so that a broken
    /// answer from the provider cannot replace working keys with none.
    #[error("the JWKS has no usable signature key ({skipped} skipped)")]
    NoUsableKey {
        /// How many keys were left out.
        skipped: usize,
    },
}

/// One key that can verify tokens, with the one algorithm it verifies.
pub(crate) struct VerificationKey {
    pub(crate) algorithm: Algorithm,
    pub(crate) key: DecodingKey,
    /// The JWK as published, to tell a changed key from an unchanged one across refreshes.
    published: String,
}

/// The usable keys of a JWKS, by `kid`. Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct KeySet {
    keys: HashMap<String, VerificationKey>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<_> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("KeySet").field("kids", &kids).finish()
    }
}

impl KeySet {
    /// Reads a JWKS document, keeping the usable keys (see the module docs).
    pub fn from_json(document: &[u8]) -> Result<Self, JwksError> {
        if document.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge);
        }
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document =
            serde_json::from_slice(document).map_err(|e| JwksError::Malformed(e.to_string()))?;

        let mut keys = HashMap::new();
        let mut duplicated = Vec::new();
        let mut skipped = 0;
        for value in document.keys {
            match usable_key(&value) {
                Ok((kid, key)) => {
                    if keys.insert(kid.clone(), key).is_some() {
                        duplicated.push(kid);
                    }
                }
                Err(reason) => {
                    skipped += 1;
                    let kid = value
                        .get("kid")
                        .and_then(|k| k.as_str())
                        .unwrap_or("(none)");
                    tracing::warn!(kid, reason, "JWKS key left out");
                }
            }
        }
        // Two keys under one kid: which one a token means is ambiguous, so neither is used.
        for kid in duplicated {
            keys.remove(&kid);
            skipped += 2;
            tracing::warn!(
                kid,
                "JWKS has several keys with this kid; all of them left out"
            );
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey { skipped });
        }
        Ok(Self { keys })
    }

    /// The key ids in the set, sorted.
    pub fn key_ids(&self) -> Vec<String> {
        let mut kids: Vec<String> = self.keys.keys().cloned().collect();
        kids.sort();
        kids
    }

    /// How many usable keys the set has.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set has no usable key (only [`KeySet::default`] can).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub(crate) fn get(&self, kid: &str) -> Option<&VerificationKey> {
        self.keys.get(kid)
    }

    /// Whether `newer` dropped or changed a key of this set: tokens verified with this set
    /// may no longer be valid under `newer`.
    pub(crate) fn withdrawn_in(&self, newer: &KeySet) -> bool {
        self.keys.iter().any(|(kid, key)| {
            newer
                .keys
                .get(kid)
                .is_none_or(|other| other.published != key.published)
        })
    }
}

/// The algorithm a JWK verifies, from its key type, or why it cannot be used.
fn usable_key(value: &serde_json::Value) -> Result<(String, VerificationKey), &'static str> {
    let jwk: Jwk = serde_json::from_value(value.clone()).map_err(|_| "not a valid JWK")?;
    let kid = match jwk.common.key_id.as_deref() {
        Some(kid) if !kid.is_empty() && kid.chars().count() <= MAX_KID_CHARS => kid.to_owned(),
        Some(_) => return Err("kid is empty or too long"),
        None => return Err("no kid"),
    };
    if let Some(usage) = &jwk.common.public_key_use
        && *usage != PublicKeyUse::Signature
    {
        return Err("use is not `sig`");
    }
    if let Some(ops) = &jwk.common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return Err("key_ops does not include `verify`");
    }
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let modulus = decode_b64url(&rsa.n).ok_or("RSA modulus is not base64url")?;
            let significant = modulus.iter().skip_while(|b| **b == 0).count();
            if significant < MIN_RSA_MODULUS_BYTES {
                return Err("RSA key shorter than 2048 bits");
            }
            Algorithm::RS256
        }
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::EllipticCurve(_) => return Err("EC curve other than P-256"),
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        AlgorithmParameters::OctetKeyPair(_) => return Err("OKP curve other than Ed25519"),
        AlgorithmParameters::OctetKey(_) => return Err("symmetric keys are never accepted"),
        _ => return Err("unsupported key type"),
    };
    if let Some(declared) = jwk.common.key_algorithm
        && key_algorithm(declared) != Some(algorithm)
    {
        return Err("alg does not match the key type, or is not allowed");
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| "key parameters are invalid")?;
    Ok((
        kid,
        VerificationKey {
            algorithm,
            key,
            published: value.to_string(),
        },
    ))
}

/// The allowed signature algorithm a JWK's `alg` names, if any.
fn key_algorithm(declared: KeyAlgorithm) -> Option<Algorithm> {
    match declared {
        KeyAlgorithm::RS256 => Some(Algorithm::RS256),
        KeyAlgorithm::ES256 => Some(Algorithm::ES256),
        KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
        _ => None,
    }
}

/// Unpadded base64url (RFC 7515 §2), as JWK members are encoded.
fn decode_b64url(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
}

/// Where the key set comes from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    /// A file, read again on every refresh.
    File(PathBuf),
    /// An HTTP(S) URL, fetched on every refresh.
    Url(String),
}

impl JwksSource {
    /// `http://` and `https://` locations are URLs; anything else is a file path.
    pub fn parse(location: &str) -> Self {
        if location.starts_with("https://") || location.starts_with("http://") {
            Self::Url(location.to_owned())
        } else {
            Self::File(PathBuf::from(location))
        }
    }
}

/// Reads a [`JwksSource`].
#[derive(Debug, Clone)]
pub(crate) struct Fetcher {
    source: JwksSource,
    client: reqwest::Client,
}

impl Fetcher {
    pub(crate) fn new(source: JwksSource, timeout: Duration) -> Result<Self, JwksError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // The configured URL is the trusted one; a redirect would hand the choice of keys
            // to whoever answers it.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| JwksError::Fetch {
                url: String::new(),
                reason: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(Self { source, client })
    }

    pub(crate) fn source(&self) -> &JwksSource {
        &self.source
    }

    /// Reads and parses the current key set.
    pub(crate) async fn fetch(&self) -> Result<Arc<KeySet>, JwksError> {
        let document = match &self.source {
            JwksSource::File(path) => read_file(path).await?,
            JwksSource::Url(url) => self.read_url(url).await?,
        };
        KeySet::from_json(&document).map(Arc::new)
    }

    async fn read_url(&self, url: &str) -> Result<Vec<u8>, JwksError> {
        let failed = |reason: String| JwksError::Fetch {
            url: url.to_owned(),
            reason,
        };
        let mut response = self
            .client
            .get(url)
            .header(
                http::header::ACCEPT,
                "application/jwk-set+json, application/json",
            )
            .send()
            .await
            .map_err(|e| failed(e.to_string()))?;
        if response.status() != http::StatusCode::OK {
            return Err(failed(format!("answered {}", response.status())));
        }
        if response
            .content_length()
            .is_some_and(|length| length > MAX_JWKS_BYTES as u64)
        {
            return Err(JwksError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| failed(e.to_string()))? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(JwksError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

async fn read_file(path: &PathBuf) -> Result<Vec<u8>, JwksError> {
    let failed = |source| JwksError::File {
        path: path.clone(),
        source,
    };
    let length = tokio::fs::metadata(path).await.map_err(failed)?.len();
    if length > MAX_JWKS_BYTES as u64 {
        return Err(JwksError::TooLarge);
    }
    tokio::fs::read(path).await.map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_decodes_like_the_rfc_example() {
        // RFC 7515 appendix C: the octets 3, 236, 255, 224, 193 encode as "A-z_4ME".
        assert_eq!(decode_b64url("A-z_4ME").unwrap(), [3, 236, 255, 224, 193]);
        assert!(decode_b64url("not base64!").is_none());
    }

    #[test]
    fn a_document_without_usable_keys_is_refused() {
        let symmetric = br#"{"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}]}"#;
        assert!(matches!(
            KeySet::from_json(symmetric),
            Err(JwksError::NoUsableKey { skipped: 1 })
        ));
        assert!(matches!(
            KeySet::from_json(b"[]"),
            Err(JwksError::Malformed(_))
        ));
    }

    #[test]
    fn sources_are_urls_or_files() {
        assert!(matches!(
            JwksSource::parse("https://idp/jwks"),
            JwksSource::Url(_)
        ));
        assert!(matches!(
            JwksSource::parse(".state/auth/jwks.json"),
            JwksSource::File(_)
        ));
    }
}
