//! The plumbing every Faultline service shares and no business logic needs to see:
//!
//! - [`breakers`]: circuit breakers in the logs and on `/metrics`.
//! - [`command`]: `--check-config` and `healthcheck`, for deployments.
//! - [`config`]: one typed configuration struct per service, loaded once from defaults, an
//!   optional TOML file and environment variables, and validated before anything starts.
//! - [`db`]: a Postgres pool whose database is created on first start.
//! - [`drain`]: request bodies a handler refused are read to the end, so its answer arrives.
//! - [`grpc`]: serving a gRPC service (mutual TLS, callers, health), and database errors
//!   as gRPC status codes.
//! - [`http`]: serving a public HTTP API.
//! - [`health`]: liveness, readiness and startup probes on a small admin HTTP server.
//! - [`lifecycle`]: the start-up and shutdown order every service follows.
//! - [`messaging`]: typed protobuf envelopes on the outbox and inbox.
//! - [`shutdown`]: a cancellation token that SIGTERM and Ctrl-C trip, so every task can stop
//!   in order.

#![warn(missing_docs)]

pub mod breakers;
pub mod command;
pub mod config;
pub mod db;
pub mod drain;
pub mod grpc;
pub mod health;
pub mod http;
pub mod lifecycle;
pub mod messaging;
pub mod shutdown;

/// The README's example, compiled as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
