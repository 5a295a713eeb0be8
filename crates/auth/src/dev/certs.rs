//! A dev CA and the service certificates it issues, each carrying its SPIFFE ID.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use super::DevError;
use crate::{Secret, ServiceId};

/// How long dev certificates are valid.
const CA_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
const SERVICE_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// Certificates start an hour in the past, so clock skew never makes them "not yet valid".
const BACKDATE: Duration = Duration::from_secs(3600);

/// A certificate authority for local runs and tests.
pub struct DevCa {
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

/// A service's certificate and private key, PEM.
#[derive(Debug, Clone)]
pub struct ServiceCert {
    /// The identity in the certificate.
    pub identity: ServiceId,
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: Secret<String>,
}

fn validity(params: &mut CertificateParams, length: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + length;
}

fn new_key() -> Result<KeyPair, DevError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| DevError::new("generating a key", e))
}

impl DevCa {
    /// A new CA named `name`, with a P-256 key, valid for a year.
    pub fn generate(name: &str) -> Result<Self, DevError> {
        let key = new_key()?;
        let mut params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, name);
        subject.push(DnType::OrganizationName, "Faultline (development only)");
        params.distinguished_name = subject;
        // It signs service certificates only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, CA_VALIDITY);
        let cert = params
            .self_signed(&key)
            .map_err(|e| DevError::new("self-signing the CA", e))?;
        Ok(Self {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// A CA from its certificate and key, as written before.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, DevError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| DevError::new("reading the CA key", e))?;
        // Checks that the certificate parses as a CA certificate for this key.
        Issuer::from_ca_cert_pem(cert_pem, &key)
            .map_err(|e| DevError::new("reading the CA certificate", e))?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key,
        })
    }

    /// The CA certificate, PEM: what peers trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, PEM.
    pub fn key_pem(&self) -> Secret<String> {
        Secret::new(self.key.serialize_pem())
    }

    /// A certificate for `service` (`spiffe://faultline/<service>` as its one URI name),
    /// valid for 90 days, for TLS servers and clients alike, with the DNS names `localhost`
    /// and `<service>`, the loopback addresses, and `extra_dns_names`.
    pub fn issue(&self, service: &str, extra_dns_names: &[&str]) -> Result<ServiceCert, DevError> {
        let identity =
            ServiceId::faultline(service).map_err(|e| DevError::new("the service name", e))?;
        self.issue_for(&identity, extra_dns_names)
    }

    /// Like [`DevCa::issue`] for any SPIFFE ID (another trust domain, in tests).
    pub fn issue_for(
        &self,
        identity: &ServiceId,
        extra_dns_names: &[&str],
    ) -> Result<ServiceCert, DevError> {
        let ia5 = |text: &str| {
            text.to_owned()
                .try_into()
                .map_err(|e| DevError::new("a certificate name", e))
        };
        let key = new_key()?;
        let mut params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, identity.service());
        params.distinguished_name = subject;
        let mut names = vec![
            SanType::URI(ia5(identity.as_str())?),
            SanType::DnsName(ia5("localhost")?),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ];
        let service_dns = identity.service().replace('/', "-");
        for dns in std::iter::once(service_dns.as_str()).chain(extra_dns_names.iter().copied()) {
            names.push(SanType::DnsName(ia5(dns)?));
        }
        params.subject_alt_names = names;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, SERVICE_VALIDITY);
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)
            .map_err(|e| DevError::new("reading the CA certificate", e))?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| DevError::new("signing the service certificate", e))?;
        Ok(ServiceCert {
            identity: identity.clone(),
            cert_pem: cert.pem(),
            key_pem: Secret::new(key.serialize_pem()),
        })
    }
}
