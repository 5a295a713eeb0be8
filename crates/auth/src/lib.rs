//! Authentication and authorization for Faultline services.
//!
//! Four ideas, each usable on its own:
//!
//! - **The HTTP edge** ([`edge`]): a tower layer that verifies `Authorization: Bearer` JWT
//!   access tokens ([`jwt`]) against keys from a JWKS ([`jwks`]), puts the typed
//!   [`Principal`] into the request's extensions, and
//!   answers RFC 6750 `401`s as RFC 9457 problem documents.
//! - **Authorization as code** ([`policy`], [`access`]): Rego policies evaluated in-process
//!   with regorus, reloaded from disk without a restart, every decision logged with the
//!   policy's version.
//! - **Service to service** ([`tls`], [`incoming`], [`connector`], [`callers`]): mutual TLS
//!   for tonic with certificates that carry a SPIFFE identity ([`identity`]), reloaded from
//!   disk without a restart, and a layer that lets only the listed services call each method.
//! - **Secrets** ([`secret`]): a wrapper whose `Debug`, `Display` and serialization never show
//!   the value.
//!
//! With the `dev` feature, [`dev`] mints signing keys, JWKS files, tokens, a CA and service
//! certificates for local runs and tests, and the `faultline-auth-dev` command does the same
//! from a shell. The services do not ask for it (see the README on how a workspace build
//! still compiles it in, unused).
//!
//! The crate's README shows the smallest real use of each part.

#![warn(missing_docs)]

pub mod access;
pub mod callers;
pub mod connector;
#[cfg(feature = "dev")]
pub mod dev;
pub mod edge;
pub mod identity;
pub mod incoming;
pub mod jwks;
pub mod jwt;
pub mod policy;
pub mod principal;
pub mod secret;
pub mod tls;
mod token_cache;
mod watch;

pub use access::{Access, AuthorizeLayer, Forbidden};
pub use callers::{AllowedCallers, CallContext, CallerAuthLayer, ON_BEHALF_OF, set_on_behalf_of};
pub use connector::MtlsConnector;
pub use edge::{AuthLayer, Unauthenticated};
pub use identity::ServiceId;
pub use incoming::MtlsIncoming;
pub use jwt::{JwtSettings, JwtVerifier, TokenError};
pub use policy::{AccessRequest, Decision, Policy, PolicySettings, Resource};
pub use principal::Principal;
pub use secret::Secret;
pub use tls::{ClientTls, MtlsSettings, ServerTls, TlsError};

/// The README's examples, compiled as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
