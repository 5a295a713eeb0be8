//! The credentials a test system (or the demo) runs with: a dev CA with a certificate per
//! service and one for the operator, and a token signing key with the JWKS that publishes
//! it.
//!
//! Each [`crate::System`] makes its own, so no test depends on files another left behind;
//! the demo reads the ones `make credentials` wrote under `.state/`. Either way the services
//! verify real tokens and real certificates: nothing here switches a check off.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use faultline_auth::dev::{DevCa, SigningKey, TokenSpec, jwks_json, write_private};
use faultline_auth::{ClientTls, JwtSettings, MtlsSettings, ServiceId};
use jsonwebtoken::Algorithm;

/// The identity of whoever runs the system: loads the catalog, reads any payment.
pub const OPERATOR: &str = "operator";

/// Services and the operator, each with a certificate.
const HOLDERS: [&str; 4] = ["checkout", "inventory", "payments", OPERATOR];

/// Who a token speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    /// A customer with `orders:read orders:write`.
    Customer(String),
    /// An administrator (role `admin`), who reads every order.
    Admin,
}

/// Keys, certificates and tokens of one system. Cheap to clone.
#[derive(Clone)]
pub struct Credentials {
    inner: Arc<Inner>,
}

struct Inner {
    signing_key: SigningKey,
    jwt: JwtSettings,
    auth_dir: PathBuf,
    certs_dir: PathBuf,
    tokens: Mutex<HashMap<Caller, String>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("auth_dir", &self.inner.auth_dir)
            .field("certs_dir", &self.inner.certs_dir)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Makes a fresh CA, certificates and signing key and writes them under `dir` (`auth/`
    /// and `certs/`, laid out as `faultline-auth-dev` does).
    pub fn generate(dir: &Path) -> anyhow::Result<Self> {
        let auth_dir = dir.join("auth");
        let certs_dir = dir.join("certs");
        std::fs::create_dir_all(&auth_dir)?;
        std::fs::create_dir_all(&certs_dir)?;
        let ca = DevCa::generate("Faultline Test CA")?;
        std::fs::write(certs_dir.join("ca.pem"), ca.cert_pem())?;
        for holder in HOLDERS {
            let issued = ca.issue(holder, &[])?;
            std::fs::write(certs_dir.join(format!("{holder}.pem")), &issued.cert_pem)?;
            write_private(
                &certs_dir.join(format!("{holder}-key.pem")),
                issued.key_pem.expose(),
            )?;
        }
        let signing_key = SigningKey::generate(Algorithm::ES256)?;
        write_private(
            &auth_dir.join("signing-key.pem"),
            signing_key.to_pkcs8_pem().expose(),
        )?;
        std::fs::write(auth_dir.join("jwks.json"), jwks_json(&[&signing_key]))?;
        Ok(Self::new(signing_key, auth_dir, certs_dir))
    }

    /// Reads what `make credentials` wrote: `<auth_dir>/signing-key.pem` and the operator's
    /// certificate in `certs_dir`.
    pub fn load(auth_dir: &Path, certs_dir: &Path) -> anyhow::Result<Self> {
        let path = auth_dir.join("signing-key.pem");
        let pem = std::fs::read_to_string(&path)
            .with_context(|| format!("{} (run `make credentials`)", path.display()))?;
        let signing_key = SigningKey::from_pkcs8_pem(&pem)?;
        Ok(Self::new(
            signing_key,
            auth_dir.to_path_buf(),
            certs_dir.to_path_buf(),
        ))
    }

    fn new(signing_key: SigningKey, auth_dir: PathBuf, certs_dir: PathBuf) -> Self {
        Self {
            inner: Arc::new(Inner {
                signing_key,
                jwt: JwtSettings::default(),
                auth_dir,
                certs_dir,
                tokens: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The environment that points `service` (`CHECKOUT`, ...) at these files.
    pub fn service_env(&self, prefix: &str, service: &str) -> Vec<(String, String)> {
        let tls = self.mtls(service);
        let mut env = vec![
            (
                format!("{prefix}_MTLS__CA_FILE"),
                tls.ca_file.display().to_string(),
            ),
            (
                format!("{prefix}_MTLS__CERT_FILE"),
                tls.cert_file.display().to_string(),
            ),
            (
                format!("{prefix}_MTLS__KEY_FILE"),
                tls.key_file.display().to_string(),
            ),
        ];
        if service == "checkout" {
            env.push((
                format!("{prefix}_AUTH__JWKS"),
                self.inner.auth_dir.join("jwks.json").display().to_string(),
            ));
        }
        env
    }

    /// Certificate, key and CA of `holder` (a service or [`OPERATOR`]).
    pub fn mtls(&self, holder: &str) -> MtlsSettings {
        MtlsSettings::dev(&self.inner.certs_dir, holder)
    }

    /// Where the CA, certificates and keys are.
    pub fn certs_dir(&self) -> &Path {
        &self.inner.certs_dir
    }

    /// Where the signing key and the JWKS are.
    pub fn auth_dir(&self) -> &Path {
        &self.inner.auth_dir
    }

    /// What the services verify tokens against (issuer, audience).
    pub fn jwt_settings(&self) -> &JwtSettings {
        &self.inner.jwt
    }

    /// Signs any token, for tests that need odd ones.
    pub fn mint(&self, spec: &TokenSpec) -> anyhow::Result<String> {
        Ok(self.inner.signing_key.mint(spec)?)
    }

    /// The key that signs tokens.
    pub fn signing_key(&self) -> &SigningKey {
        &self.inner.signing_key
    }

    /// A valid token for `caller`, minted once and reused (as a real client reuses its
    /// access token until it expires).
    pub fn token(&self, caller: &Caller) -> anyhow::Result<String> {
        let mut tokens = self
            .inner
            .tokens
            .lock()
            .map_err(|_| anyhow::anyhow!("token cache poisoned"))?;
        if let Some(token) = tokens.get(caller) {
            return Ok(token.clone());
        }
        let spec = match caller {
            Caller::Customer(subject) => {
                TokenSpec::new(&self.inner.jwt, subject).scopes(&["orders:read", "orders:write"])
            }
            Caller::Admin => TokenSpec::new(&self.inner.jwt, "faultline-admin")
                .scopes(&["orders:read"])
                .roles(&["admin"]),
        };
        let token = self.mint(&spec)?;
        tokens.insert(caller.clone(), token.clone());
        Ok(token)
    }

    /// TLS for calling `server` (`inventory`, `payments`) as the operator.
    pub fn operator_tls(&self, server: &str) -> anyhow::Result<ClientTls> {
        Ok(ClientTls::load(
            self.mtls(OPERATOR),
            ServiceId::faultline(server)?,
        )?)
    }
}
