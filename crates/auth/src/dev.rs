//! Credentials for local runs and tests (feature `dev`): signing keys, JWKS files, access
//! tokens, a CA and service certificates.
//!
//! Everything here is what an identity provider and a PKI would do in production. It exists
//! so the demo and the tests exercise the real verification paths with real keys, tokens and
//! certificates, made in-process or by the `faultline-auth-dev` command. No service asks for
//! this feature, and no service code calls it.

mod certs;
mod tokens;

pub use certs::{DevCa, ServiceCert};
pub use tokens::{SigningKey, TokenSpec, jwks_json};

use std::path::Path;

/// Why a dev credential could not be made.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DevError(pub String);

impl DevError {
    pub(crate) fn new(context: &str, error: impl std::fmt::Display) -> Self {
        Self(format!("{context}: {error}"))
    }
}

/// Writes `contents` to `path`, readable by its owner only (private keys).
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// Writes `contents` to `path` through a temporary file and a rename, so a process reloading
/// `path` never reads half of it.
pub fn write_atomically(path: &Path, contents: &str, private: bool) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = std::path::PathBuf::from(temporary);
    if private {
        write_private(&temporary, contents)?;
    } else {
        std::fs::write(&temporary, contents)?;
    }
    std::fs::rename(&temporary, path)
}
