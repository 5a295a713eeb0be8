//! The end-to-end harness: starts Faultline's three service binaries as real processes on
//! free ports, each with a fresh database and its own topic prefix on the shared broker, and
//! talks to them the way a client would (HTTP to checkout, gRPC to inventory).
//!
//! The binaries are not built here: `make test` builds them first (`cargo build --bins`),
//! and the harness finds them next to the test executable or in `FAULTLINE_BIN_DIR`.
//!
//! Every system gets its own [`Credentials`] (CA, certificates, token signing key), so
//! checkout verifies real tokens and the gRPC servers real client certificates.
//!
//! [`Client`] is also what the demo (`src/bin/demo.rs`) uses against a running system.

pub mod broker;
pub mod chaos;
mod client;
pub mod collector;
pub mod credentials;
pub mod kafka_link;
mod provider_books;
pub mod proxy;
pub mod redis;
mod system;

pub use client::{Answer, Client, DEFAULT_CUSTOMER, ProductSpec};
pub use credentials::{Caller, Credentials};
pub use system::{Freeze, Options, Service, Signal, System, sample};
