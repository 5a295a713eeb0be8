//! Mutual TLS configurations for service-to-service gRPC, reloaded from disk without a
//! restart.
//!
//! Why not tonic's own `ServerTlsConfig`/`ClientTlsConfig`: they are fixed when the server
//! or channel is built, so a renewed certificate would need a restart, and they cannot pin
//! the peer's SPIFFE identity. Instead this module builds the rustls configurations itself
//! (TLS 1.3 only, aws-lc-rs, ALPN `h2`) and keeps the current one behind a lock that
//! [`ServerTls::reload`] swaps; [`crate::incoming`] hands each *new* connection to the
//! configuration current at its accept, and [`crate::connector`] does the same for each new
//! client connection. Established connections keep the certificate they were opened with
//! until they close, as with any TLS server.
//!
//! Both sides verify the peer's chain to the configured CA (webpki) **and** its identity:
//!
//! - a server accepts only client certificates that chain to the CA and carry a SPIFFE ID in
//!   its own trust domain; which service may call which method is then decided per call by
//!   [`crate::callers`];
//! - a client checks the server's certificate for the host name it dialled (as usual) and
//!   for the SPIFFE ID it expects (`spiffe://faultline/inventory`), so a certificate issued
//!   to another service cannot impersonate the one it meant to reach.
//!
//! A reload that fails (a half-written file, a key that does not match the certificate, a
//! certificate without an identity) is refused and the configuration in force stays.

mod verify;

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::identity::{IdentityError, ServiceId};
use crate::watch;
use faultline_settings::{SettingError, positive};
use verify::{ClientIdentityVerifier, PinnedServerVerifier};

/// Where a service's certificate, key and CA are. Set from the environment under the section
/// the service gives it (`PAYMENTS_MTLS__CERT_FILE`, ...). There is no `Default`: every
/// service has its own files; [`MtlsSettings::dev`] names the dev command's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsSettings {
    /// PEM certificates of the CA that issues service certificates; peers must chain to it.
    pub ca_file: PathBuf,
    /// PEM certificate chain of this service, its own certificate first.
    pub cert_file: PathBuf,
    /// PEM private key of this service (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// How often the three files are checked for changes, seconds. `dev`: 30.
    pub reload_interval_secs: u64,
    /// Longest a TLS handshake may take before the connection is dropped, milliseconds.
    /// `dev`: 5 000.
    pub handshake_timeout_ms: u64,
}

impl MtlsSettings {
    /// The files `faultline-auth-dev certs --dir <dir>` writes for `service`:
    /// `<dir>/ca.pem`, `<dir>/<service>.pem`, `<dir>/<service>-key.pem`.
    pub fn dev(dir: impl AsRef<Path>, service: &str) -> Self {
        let dir = dir.as_ref();
        Self {
            ca_file: dir.join("ca.pem"),
            cert_file: dir.join(format!("{service}.pem")),
            key_file: dir.join(format!("{service}-key.pem")),
            reload_interval_secs: 30,
            handshake_timeout_ms: 5_000,
        }
    }

    /// Rejects settings that cannot work; `section` is where they sit (`PAYMENTS_MTLS`).
    pub fn validate(&self, section: &str) -> Result<(), SettingError> {
        for (field, path) in [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ] {
            if path.as_os_str().is_empty() {
                return Err(SettingError::new(section, field, "must name a file"));
            }
        }
        positive(section, "reload_interval_secs", self.reload_interval_secs)?;
        positive(section, "handshake_timeout_ms", self.handshake_timeout_ms)
    }

    pub(crate) fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
}

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file has no usable PEM item of the expected kind.
    #[error("{path} holds no {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was expected.
        what: &'static str,
    },
    /// The certificate carries no valid service identity.
    #[error("the certificate in {path} has no usable identity: {source}")]
    Identity {
        /// The file.
        path: PathBuf,
        /// Why.
        source: IdentityError,
    },
    /// rustls refused the material (a key that does not match the certificate, say).
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// The CA certificates cannot build a verifier.
    #[error("the CA certificates cannot verify peers: {0}")]
    Verifier(String),
}

/// Certificate, key and CA as read from disk.
struct Material {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    identity: ServiceId,
    digest: String,
}

/// The CA, certificate and key files, read once (contents and digest).
fn read_files(settings: &MtlsSettings) -> Result<watch::Snapshot, TlsError> {
    let paths = [
        settings.ca_file.clone(),
        settings.cert_file.clone(),
        settings.key_file.clone(),
    ];
    watch::snapshot(&paths).map_err(|source| TlsError::Read {
        // The error does not say which file; name the first that is not readable.
        path: paths
            .iter()
            .find(|p| std::fs::metadata(p).is_err())
            .unwrap_or(&paths[0])
            .clone(),
        source,
    })
}

/// Parses what [`read_files`] read.
fn material(settings: &MtlsSettings, snapshot: watch::Snapshot) -> Result<Material, TlsError> {
    let [ca, cert, key] = &snapshot.files[..] else {
        return Err(TlsError::Pem {
            path: settings.ca_file.clone(),
            what: "certificate",
        });
    };

    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(&ca.1).flatten() {
        roots
            .add(certificate)
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TlsError::Pem {
            path: ca.0.clone(),
            what: "CA certificate",
        });
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&cert.1).flatten().collect();
    let Some(own) = chain.first() else {
        return Err(TlsError::Pem {
            path: cert.0.clone(),
            what: "certificate",
        });
    };
    let identity = ServiceId::from_certificate(own).map_err(|source| TlsError::Identity {
        path: cert.0.clone(),
        source,
    })?;
    let key = PrivateKeyDer::from_pem_slice(&key.1).map_err(|_| TlsError::Pem {
        path: key.0.clone(),
        what: "private key",
    })?;
    Ok(Material {
        roots: Arc::new(roots),
        chain,
        key,
        identity,
        digest: snapshot.digest,
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A configuration built from material, with what it was built from.
struct Current<T> {
    config: Arc<T>,
    identity: ServiceId,
    digest: String,
}

type Build<T> = Box<dyn Fn(Material) -> Result<T, TlsError> + Send + Sync>;

/// A TLS configuration that rebuilds itself when its files change.
struct Reloadable<T> {
    settings: MtlsSettings,
    build: Build<T>,
    current: RwLock<Arc<Current<T>>>,
    what: &'static str,
}

impl<T: Send + Sync + 'static> Reloadable<T> {
    fn load(settings: MtlsSettings, what: &'static str, build: Build<T>) -> Result<Self, TlsError> {
        let current = Self::build(&settings, read_files(&settings)?, &build)?;
        tracing::info!(identity = %current.identity, what, "TLS certificate loaded");
        Ok(Self {
            settings,
            build,
            current: RwLock::new(Arc::new(current)),
            what,
        })
    }

    fn build(
        settings: &MtlsSettings,
        files: watch::Snapshot,
        build: &Build<T>,
    ) -> Result<Current<T>, TlsError> {
        let material = material(settings, files)?;
        let identity = material.identity.clone();
        let digest = material.digest.clone();
        Ok(Current {
            config: Arc::new(build(material)?),
            identity,
            digest,
        })
    }

    fn current(&self) -> Arc<Current<T>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn reload(&self) -> Result<bool, TlsError> {
        // One read: compared with what is in use (most periods nothing changed), and built
        // from if it differs, so what is built is what was compared.
        let files = read_files(&self.settings)?;
        if files.digest == self.current().digest {
            return Ok(false);
        }
        let fresh = Self::build(&self.settings, files, &self.build)?;
        let identity = fresh.identity.clone();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(fresh);
        tracing::info!(%identity, what = self.what, "TLS certificate reloaded");
        Ok(true)
    }
}

fn spawn_reload<T: Send + Sync + 'static>(
    reloadable: Arc<Reloadable<T>>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let period = Duration::from_secs(reloadable.settings.reload_interval_secs.max(1));
    watch::every(period, shutdown, move || {
        let reloadable = reloadable.clone();
        async move {
            match tokio::task::spawn_blocking(move || reloadable.reload()).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, "TLS certificate not reloaded; the one in force stays");
                }
                Err(error) => tracing::error!(%error, "TLS reload panicked"),
            }
        }
    })
}

/// The server side of mutual TLS. Cheap to clone; clones share the reloading configuration.
#[derive(Clone)]
pub struct ServerTls {
    inner: Arc<Reloadable<ServerConfig>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("identity", &self.identity())
            .field("cert_file", &self.inner.settings.cert_file)
            .finish()
    }
}

impl ServerTls {
    /// Loads the server's certificate, key and CA. Fails if any is missing or invalid, or if
    /// the certificate carries no SPIFFE ID.
    pub fn load(settings: MtlsSettings) -> Result<Self, TlsError> {
        let build: Build<ServerConfig> = Box::new(|material: Material| {
            let provider = provider();
            let webpki =
                WebPkiClientVerifier::builder_with_provider(material.roots, provider.clone())
                    .build()
                    .map_err(|e| TlsError::Verifier(e.to_string()))?;
            let verifier = Arc::new(ClientIdentityVerifier {
                inner: webpki,
                trust_domain: material.identity.trust_domain().to_owned(),
            });
            let mut config = ServerConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .with_client_cert_verifier(verifier)
                .with_single_cert(material.chain, material.key)?;
            config.alpn_protocols = vec![b"h2".to_vec()];
            Ok(config)
        });
        Ok(Self {
            inner: Arc::new(Reloadable::load(settings, "server", build)?),
        })
    }

    /// This server's identity, from its current certificate.
    pub fn identity(&self) -> ServiceId {
        self.inner.current().identity.clone()
    }

    /// The configuration new connections get now.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.inner.current().config.clone()
    }

    /// The settings this was loaded with.
    pub fn settings(&self) -> &MtlsSettings {
        &self.inner.settings
    }

    /// Reads the files again and, if they changed and are valid, serves the new certificate
    /// to new connections. Returns whether it changed.
    pub fn reload(&self) -> Result<bool, TlsError> {
        self.inner.reload()
    }

    /// Calls [`ServerTls::reload`] every `reload_interval_secs` until `shutdown`.
    pub fn spawn_reload(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        spawn_reload(self.inner.clone(), shutdown)
    }
}

/// The client side of mutual TLS, for calls to one service whose identity it pins. Cheap to
/// clone; clones share the reloading configuration.
#[derive(Clone)]
pub struct ClientTls {
    inner: Arc<Reloadable<ClientConfig>>,
    server: ServiceId,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("identity", &self.identity())
            .field("server", &self.server)
            .finish()
    }
}

impl ClientTls {
    /// Loads this service's certificate, key and CA for calling the service `server`.
    pub fn load(settings: MtlsSettings, server: ServiceId) -> Result<Self, TlsError> {
        let expected = server.clone();
        let build: Build<ClientConfig> = Box::new(move |material: Material| {
            let provider = provider();
            let webpki =
                WebPkiServerVerifier::builder_with_provider(material.roots, provider.clone())
                    .build()
                    .map_err(|e| TlsError::Verifier(e.to_string()))?;
            let verifier = Arc::new(PinnedServerVerifier {
                inner: webpki,
                expected: expected.clone(),
            });
            let mut config = ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_client_auth_cert(material.chain, material.key)?;
            config.alpn_protocols = vec![b"h2".to_vec()];
            Ok(config)
        });
        Ok(Self {
            inner: Arc::new(Reloadable::load(settings, "client", build)?),
            server,
        })
    }

    /// This client's identity, from its current certificate.
    pub fn identity(&self) -> ServiceId {
        self.inner.current().identity.clone()
    }

    /// The server identity this client insists on.
    pub fn server(&self) -> &ServiceId {
        &self.server
    }

    /// The configuration new connections get now.
    pub fn config(&self) -> Arc<ClientConfig> {
        self.inner.current().config.clone()
    }

    /// The settings this was loaded with.
    pub fn settings(&self) -> &MtlsSettings {
        &self.inner.settings
    }

    /// Reads the files again and, if they changed and are valid, uses the new certificate
    /// for new connections. Returns whether it changed.
    pub fn reload(&self) -> Result<bool, TlsError> {
        self.inner.reload()
    }

    /// Calls [`ClientTls::reload`] every `reload_interval_secs` until `shutdown`.
    pub fn spawn_reload(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        spawn_reload(self.inner.clone(), shutdown)
    }
}
