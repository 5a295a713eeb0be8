//! Signing keys, their JWKS, and access tokens shaped as RFC 9068 describes.

use std::time::Duration;

use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::RngExt as _;
use serde::Serialize;

use super::DevError;
use crate::{JwtSettings, Secret};

/// A private key that signs access tokens, with its key id (the RFC 7638 thumbprint of its
/// public key) and algorithm.
pub struct SigningKey {
    algorithm: Algorithm,
    kid: String,
    encoding: EncodingKey,
    pkcs8_pem: Secret<String>,
    public: Jwk,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new random key for `algorithm`: RS256 (2048-bit RSA), ES256 (P-256) or EdDSA
    /// (Ed25519).
    pub fn generate(algorithm: Algorithm) -> Result<Self, DevError> {
        let pair = match algorithm {
            Algorithm::RS256 => {
                rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            }
            Algorithm::ES256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            Algorithm::EdDSA => rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519),
            other => return Err(DevError(format!("{other:?} is not an allowed algorithm"))),
        }
        .map_err(|e| DevError::new("generating a key", e))?;
        Self::from_pkcs8_pem(&pair.serialize_pem())
    }

    /// A key from its PKCS#8 PEM (as [`SigningKey::to_pkcs8_pem`] writes it); the algorithm
    /// follows from the key type.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, DevError> {
        let pair =
            rcgen::KeyPair::from_pem(pem).map_err(|e| DevError::new("reading the key", e))?;
        let pkcs8 = pair.serialize_der();
        let signature = pair.algorithm();
        let (algorithm, encoding) = if signature == &rcgen::PKCS_ECDSA_P256_SHA256 {
            (Algorithm::ES256, EncodingKey::from_ec_der(&pkcs8))
        } else if signature == &rcgen::PKCS_ED25519 {
            (Algorithm::EdDSA, EncodingKey::from_ed_der(&pkcs8))
        } else if signature == &rcgen::PKCS_RSA_SHA256 {
            (
                Algorithm::RS256,
                EncodingKey::from_rsa_der(&rsa_private_key(&pkcs8)?),
            )
        } else {
            return Err(DevError("the key is not RSA, P-256 or Ed25519".into()));
        };
        let mut public = if algorithm == Algorithm::EdDSA {
            // jsonwebtoken derives Ed25519 JWKs from PKCS#8 v1 keys only; rcgen writes v2,
            // which carries the public key, so take it from there.
            use base64::Engine as _;
            let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key_raw());
            serde_json::from_value(serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA",
            }))
            .map_err(|e| DevError::new("deriving the public key", e))?
        } else {
            Jwk::from_encoding_key(&encoding, algorithm)
                .map_err(|e| DevError::new("deriving the public key", e))?
        };
        let kid = public
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| DevError::new("computing the key id", e))?;
        public.common.key_id = Some(kid.clone());
        public.common.public_key_use = Some(PublicKeyUse::Signature);
        Ok(Self {
            algorithm,
            kid,
            encoding,
            pkcs8_pem: Secret::new(pem.to_owned()),
            public,
        })
    }

    /// The private key as PKCS#8 PEM, to store (with [`super::write_private`]).
    pub fn to_pkcs8_pem(&self) -> &Secret<String> {
        &self.pkcs8_pem
    }

    /// The key id tokens carry in `kid`.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithm this key signs with.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The public key as a JWK, with `kid`, `use: sig` and `alg`.
    pub fn public_jwk(&self) -> Jwk {
        self.public.clone()
    }

    /// Signs `claims` under `header` as given: for tests that need a token this module would
    /// not mint (wrong `typ`, missing claims, ...).
    pub fn sign(&self, header: &Header, claims: &impl Serialize) -> Result<String, DevError> {
        jsonwebtoken::encode(header, claims, &self.encoding)
            .map_err(|e| DevError::new("signing the token", e))
    }

    /// An access token for `spec`, with `typ: at+jwt` and this key's `kid`.
    pub fn mint(&self, spec: &TokenSpec) -> Result<String, DevError> {
        let mut header = Header::new(self.algorithm);
        header.typ = Some("at+jwt".into());
        header.kid = Some(self.kid.clone());
        self.sign(&header, &spec.claims())
    }
}

/// The PKCS#1 `RSAPrivateKey` inside a PKCS#8 `PrivateKeyInfo` (RFC 5208 §5: version,
/// algorithm, then the key as an OCTET STRING), which is what the RSA signer reads.
fn rsa_private_key(pkcs8: &[u8]) -> Result<Vec<u8>, DevError> {
    let (_, info) = x509_parser::der_parser::parse_der(pkcs8)
        .map_err(|e| DevError::new("reading the PKCS#8 key", e))?;
    let fields = info
        .as_sequence()
        .map_err(|e| DevError::new("reading the PKCS#8 key", e))?;
    let key = fields
        .get(2)
        .ok_or_else(|| DevError("the PKCS#8 key has no key field".into()))?
        .as_slice()
        .map_err(|e| DevError::new("reading the PKCS#8 key", e))?;
    Ok(key.to_vec())
}

/// The JWKS document publishing the public halves of `keys`.
pub fn jwks_json(keys: &[&SigningKey]) -> String {
    let set = JwkSet {
        keys: keys.iter().map(|key| key.public_jwk()).collect(),
    };
    // Serializing plain structs of strings cannot fail; an empty set is the safe fallback.
    serde_json::to_string_pretty(&set).unwrap_or_else(|_| r#"{"keys": []}"#.into())
}

/// What an access token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpec {
    /// `iss`.
    pub issuer: String,
    /// `aud`.
    pub audience: String,
    /// `sub`.
    pub subject: String,
    /// `tenant`, if any.
    pub tenant: Option<String>,
    /// `scope`, joined with spaces.
    pub scopes: Vec<String>,
    /// `roles`.
    pub roles: Vec<String>,
    /// `client_id`.
    pub client_id: String,
    /// From `iat` to `exp`.
    pub ttl: Duration,
    /// `nbf` = `iat` + this (0: valid at once). For tokens that are not valid yet.
    pub not_before_in: Duration,
    /// Moves `iat`, `nbf` and `exp` this far into the past. For expired tokens.
    pub backdate: Duration,
}

impl TokenSpec {
    /// A token for `subject` that `settings` accept: their issuer and audience, no scopes or
    /// roles, valid for an hour.
    pub fn new(settings: &JwtSettings, subject: &str) -> Self {
        Self {
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            subject: subject.to_owned(),
            tenant: None,
            scopes: Vec::new(),
            roles: Vec::new(),
            client_id: "faultline-dev".into(),
            ttl: Duration::from_secs(3600),
            not_before_in: Duration::ZERO,
            backdate: Duration::ZERO,
        }
    }

    /// With these scopes.
    pub fn scopes(mut self, scopes: &[&str]) -> Self {
        self.scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// With these roles.
    pub fn roles(mut self, roles: &[&str]) -> Self {
        self.roles = roles.iter().map(|r| (*r).to_owned()).collect();
        self
    }

    /// In this tenant.
    pub fn tenant(mut self, tenant: &str) -> Self {
        self.tenant = Some(tenant.to_owned());
        self
    }

    /// The claims, as JSON.
    pub fn claims(&self) -> serde_json::Value {
        let now = jsonwebtoken::get_current_timestamp().saturating_sub(self.backdate.as_secs());
        let jti: [u8; 16] = rand::rng().random();
        let jti: String = jti.iter().map(|b| format!("{b:02x}")).collect();
        let mut claims = serde_json::json!({
            "iss": self.issuer,
            "aud": self.audience,
            "sub": self.subject,
            "client_id": self.client_id,
            "iat": now,
            "nbf": now + self.not_before_in.as_secs(),
            "exp": now + self.ttl.as_secs(),
            "jti": jti,
        });
        if !self.scopes.is_empty() {
            claims["scope"] = self.scopes.join(" ").into();
        }
        if !self.roles.is_empty() {
            claims["roles"] = self.roles.clone().into();
        }
        if let Some(tenant) = &self.tenant {
            claims["tenant"] = tenant.clone().into();
        }
        claims
    }
}
