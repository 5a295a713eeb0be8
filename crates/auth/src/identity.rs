//! Service identities: SPIFFE IDs (`spiffe://faultline/checkout`) carried in certificates.
//!
//! Every service certificate carries its service's identity as its one URI subject
//! alternative name, as an X.509-SVID does (SPIFFE X.509-SVID §2). Callees authorize by this
//! identity, read from the certificate the TLS handshake verified, never by anything the
//! caller says in headers or metadata.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use x509_parser::extensions::GeneralName;

/// The trust domain of Faultline's own services.
pub const FAULTLINE_TRUST_DOMAIN: &str = "faultline";

/// Why a SPIFFE ID or a certificate's identity is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The text is not a SPIFFE ID.
    #[error("not a SPIFFE ID ({0})")]
    Invalid(&'static str),
    /// The bytes are not an X.509 certificate.
    #[error("not an X.509 certificate")]
    NotACertificate,
    /// The certificate has no URI SAN.
    #[error("the certificate carries no SPIFFE ID")]
    Missing,
    /// The certificate has several URI SANs; an SVID has exactly one.
    #[error("the certificate carries several URI names; a service certificate has exactly one")]
    Ambiguous,
}

/// A SPIFFE ID naming a workload: `spiffe://<trust domain>/<path>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId {
    uri: String,
    /// Where the path starts in `uri` (after the trust domain).
    path_start: usize,
}

impl ServiceId {
    /// `spiffe://faultline/<service>`.
    pub fn faultline(service: &str) -> Result<Self, IdentityError> {
        Self::parse(&format!("spiffe://{FAULTLINE_TRUST_DOMAIN}/{service}"))
    }

    /// Parses and validates a SPIFFE ID (SPIFFE ID §2: lower-case trust domain, path
    /// segments of letters, digits, `.`, `-` and `_`, no `.`/`..` segments, no query,
    /// fragment, port or user info).
    pub fn parse(uri: &str) -> Result<Self, IdentityError> {
        const SCHEME: &str = "spiffe://";
        if uri.len() > 2048 {
            return Err(IdentityError::Invalid("longer than 2048 bytes"));
        }
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or(IdentityError::Invalid("scheme is not spiffe://"))?;
        let (domain, path) = rest
            .split_once('/')
            .ok_or(IdentityError::Invalid("no workload path"))?;
        if domain.is_empty()
            || !domain
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        {
            return Err(IdentityError::Invalid(
                "trust domain must be lower-case letters, digits, '.', '-', '_'",
            ));
        }
        for segment in path.split('/') {
            if segment.is_empty() || segment == "." || segment == ".." {
                return Err(IdentityError::Invalid("empty, '.' or '..' path segment"));
            }
            if !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            {
                return Err(IdentityError::Invalid(
                    "path segments must be letters, digits, '.', '-', '_'",
                ));
            }
        }
        Ok(Self {
            uri: uri.to_owned(),
            path_start: SCHEME.len() + domain.len() + 1,
        })
    }

    /// The identity in a DER certificate: its one URI subject alternative name.
    pub fn from_certificate(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, certificate) =
            x509_parser::parse_x509_certificate(der).map_err(|_| IdentityError::NotACertificate)?;
        let names = certificate
            .subject_alternative_name()
            .map_err(|_| IdentityError::NotACertificate)?
            .ok_or(IdentityError::Missing)?;
        let mut uris = names
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            });
        let uri = uris.next().ok_or(IdentityError::Missing)?;
        if uris.next().is_some() {
            return Err(IdentityError::Ambiguous);
        }
        Self::parse(uri)
    }

    /// The whole ID.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The trust domain (`faultline`).
    pub fn trust_domain(&self) -> &str {
        &self.uri["spiffe://".len()..self.path_start - 1]
    }

    /// The workload path without its leading `/` (`checkout`).
    pub fn service(&self) -> &str {
        &self.uri[self.path_start..]
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl FromStr for ServiceId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for ServiceId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.uri)
    }
}

impl<'de> Deserialize<'de> for ServiceId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_ids() {
        let id = ServiceId::faultline("checkout").unwrap();
        assert_eq!(id.as_str(), "spiffe://faultline/checkout");
        assert_eq!(id.trust_domain(), "faultline");
        assert_eq!(id.service(), "checkout");
        let nested = ServiceId::parse("spiffe://example.org/ns/prod/sa/payments").unwrap();
        assert_eq!(nested.service(), "ns/prod/sa/payments");
    }

    #[test]
    fn refuses_invalid_ids() {
        for bad in [
            "https://faultline/checkout",
            "spiffe://faultline",
            "spiffe://faultline/",
            "spiffe://Faultline/checkout",
            "spiffe://faultline:443/checkout",
            "spiffe://user@faultline/checkout",
            "spiffe://faultline/a//b",
            "spiffe://faultline/../payments",
            "spiffe://faultline/checkout?x=1",
            "spiffe://faultline/checkout#frag",
            "spiffe:///checkout",
        ] {
            assert!(ServiceId::parse(bad).is_err(), "{bad}");
        }
    }
}
