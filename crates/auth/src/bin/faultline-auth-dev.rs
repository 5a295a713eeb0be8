//! `faultline-auth-dev`: development credentials for local runs and the demo.
//!
//! ```sh
//! faultline-auth-dev keys  --dir .state/auth                 # signing key + jwks.json (once)
//! faultline-auth-dev keys  --dir .state/auth --rotate        # new key; the old one stays published
//! faultline-auth-dev keys  --dir .state/auth --retire        # stop publishing the old key
//! faultline-auth-dev token --dir .state/auth --sub alice --scope "orders:read orders:write"
//! faultline-auth-dev certs --dir .state/certs                # dev CA + checkout, inventory, payments
//! ```
//!
//! Never use these credentials outside a developer's machine or a test.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use faultline_auth::JwtSettings;
use faultline_auth::dev::{DevCa, SigningKey, TokenSpec, jwks_json, write_atomically};
use jsonwebtoken::Algorithm;

const SIGNING_KEY: &str = "signing-key.pem";
const PREVIOUS_KEY: &str = "previous-key.pem";
const JWKS: &str = "jwks.json";
const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";

#[derive(Parser)]
#[command(
    name = "faultline-auth-dev",
    about = "Development keys, tokens and certificates for Faultline (never for production)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Creates the token signing key and the JWKS that publishes it, unless they exist.
    Keys {
        /// Where the key and jwks.json live.
        #[arg(long, default_value = ".state/auth")]
        dir: PathBuf,
        /// Algorithm of a new key.
        #[arg(long, value_enum, default_value_t = Alg::Es256)]
        alg: Alg,
        /// Makes a new signing key; the current one stays in the JWKS until --retire.
        #[arg(long, conflicts_with = "retire")]
        rotate: bool,
        /// Removes the previous key from the JWKS: tokens it signed stop verifying.
        #[arg(long)]
        retire: bool,
    },
    /// Prints an access token signed with the current key.
    Token {
        /// Where the signing key lives.
        #[arg(long, default_value = ".state/auth")]
        dir: PathBuf,
        /// The subject (`sub`): the customer or user.
        #[arg(long)]
        sub: String,
        /// The tenant claim.
        #[arg(long)]
        tenant: Option<String>,
        /// Space-separated scopes.
        #[arg(long, default_value = "orders:read orders:write")]
        scope: String,
        /// A role (repeat for more): `--role admin`.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// `iss`; services expect `faultline-dev` unless configured otherwise.
        #[arg(long)]
        issuer: Option<String>,
        /// `aud`; services expect `faultline` unless configured otherwise.
        #[arg(long)]
        audience: Option<String>,
    },
    /// Creates a dev CA (unless it exists) and a certificate per service.
    Certs {
        /// Where ca.pem, ca-key.pem and each SERVICE.pem and SERVICE-key.pem go.
        #[arg(long, default_value = ".state/certs")]
        dir: PathBuf,
        /// Services to issue certificates for (repeat the flag).
        #[arg(long = "service", default_values_t = ["checkout".to_owned(), "inventory".to_owned(), "payments".to_owned()])]
        services: Vec<String>,
        /// Extra DNS names for every certificate (repeat the flag).
        #[arg(long = "dns")]
        dns_names: Vec<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Alg {
    #[value(name = "ES256")]
    Es256,
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "EdDSA")]
    EdDsa,
}

impl From<Alg> for Algorithm {
    fn from(alg: Alg) -> Self {
        match alg {
            Alg::Es256 => Algorithm::ES256,
            Alg::Rs256 => Algorithm::RS256,
            Alg::EdDsa => Algorithm::EdDSA,
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("faultline-auth-dev: {error}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn run(command: Command) -> Result<()> {
    match command {
        Command::Keys {
            dir,
            alg,
            rotate,
            retire,
        } => keys(&dir, alg.into(), rotate, retire),
        Command::Token {
            dir,
            sub,
            tenant,
            scope,
            roles,
            ttl,
            issuer,
            audience,
        } => {
            let key = read_key(&dir.join(SIGNING_KEY))?
                .ok_or("no signing key; run `faultline-auth-dev keys` first")?;
            let defaults = JwtSettings::default();
            let mut spec = TokenSpec::new(&defaults, &sub);
            spec.issuer = issuer.unwrap_or(defaults.issuer);
            spec.audience = audience.unwrap_or(defaults.audience);
            spec.tenant = tenant;
            spec.scopes = scope.split_whitespace().map(str::to_owned).collect();
            spec.roles = roles;
            spec.ttl = Duration::from_secs(ttl);
            println!("{}", key.mint(&spec)?);
            Ok(())
        }
        Command::Certs {
            dir,
            services,
            dns_names,
        } => certs(&dir, &services, &dns_names),
    }
}

fn read_key(path: &Path) -> Result<Option<SigningKey>> {
    match std::fs::read_to_string(path) {
        Ok(pem) => Ok(Some(SigningKey::from_pkcs8_pem(&pem)?)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(format!("{}: {error}", path.display()).into()),
    }
}

fn keys(dir: &Path, alg: Algorithm, rotate: bool, retire: bool) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let current_path = dir.join(SIGNING_KEY);
    let previous_path = dir.join(PREVIOUS_KEY);
    let mut current = read_key(&current_path)?;
    let mut previous = read_key(&previous_path)?;
    if retire {
        if previous.take().is_some() {
            std::fs::remove_file(&previous_path)?;
            eprintln!("retired the previous key");
        }
    } else if rotate || current.is_none() {
        let fresh = SigningKey::generate(alg)?;
        if let Some(old) = current.take() {
            write_atomically(&previous_path, old.to_pkcs8_pem().expose(), true)?;
            previous = Some(old);
        }
        write_atomically(&current_path, fresh.to_pkcs8_pem().expose(), true)?;
        eprintln!("new {:?} signing key {}", fresh.algorithm(), fresh.kid());
        current = Some(fresh);
    }
    let published: Vec<&SigningKey> = current.iter().chain(previous.iter()).collect();
    write_atomically(&dir.join(JWKS), &jwks_json(&published), false)?;
    eprintln!(
        "{} publishes {} key(s): {}",
        dir.join(JWKS).display(),
        published.len(),
        published
            .iter()
            .map(|k| k.kid())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

fn certs(dir: &Path, services: &[String], dns_names: &[String]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    let ca = match (
        std::fs::read_to_string(&cert_path),
        std::fs::read_to_string(&key_path),
    ) {
        (Ok(cert), Ok(key)) => DevCa::from_pem(&cert, &key)?,
        _ => {
            let ca = DevCa::generate("Faultline Dev CA")?;
            write_atomically(&key_path, ca.key_pem().expose(), true)?;
            write_atomically(&cert_path, ca.cert_pem(), false)?;
            eprintln!("new dev CA in {}", cert_path.display());
            ca
        }
    };
    let extra: Vec<&str> = dns_names.iter().map(String::as_str).collect();
    for service in services {
        let issued = ca.issue(service, &extra)?;
        // Key first: a server reloading between the two writes then sees a mismatched pair,
        // refuses it and keeps its old certificate, rather than serving a new key late.
        write_atomically(
            &dir.join(format!("{service}-key.pem")),
            issued.key_pem.expose(),
            true,
        )?;
        write_atomically(&dir.join(format!("{service}.pem")), &issued.cert_pem, false)?;
        eprintln!(
            "{} for {}",
            dir.join(format!("{service}.pem")).display(),
            issued.identity
        );
    }
    Ok(())
}
