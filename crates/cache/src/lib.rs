//! Cache-aside on Redis that survives stampedes, hot keys and a dead Redis.
//!
//! [`Cache<V>`] sits in front of an origin (a gRPC call, a database query): a lookup is
//! answered from an optional in-process L1, then Redis, and only on a miss by the origin,
//! whose answer is stored with a jittered TTL. Around that:
//!
//! - **Stampedes**: concurrent misses of a key in one process coalesce into one load
//!   (a single flight per key); across processes a short Redis lease lets one loader run
//!   while the others poll for its value or serve the stale one; XFetch refreshes hot keys
//!   just before they expire, so they never do.
//! - **Not found** is cached too, with its own short TTL.
//! - **Invalidation** ([`Cache::invalidate`]) drops the value and revokes any lease, so a
//!   load racing the change cannot write what it read before it.
//! - **A dead or slow Redis**: every command has a timeout, each node has a circuit breaker
//!   (faultline-resilience), and a lookup Redis cannot answer goes to the origin. A cache
//!   failure never fails a lookup.
//! - **Several nodes**: keys are spread by rendezvous hashing ([`placement`]; ADR 0006
//!   compares it with a ring, jump hash and Maglev).
//! - **Bad bytes** (an old shape, corruption) are a miss: counted, deleted, reloaded.
//!
//! Values are versioned by key (`faultline:catalog:v1:<key>`): bump the version when `V`
//! changes shape. Settings are [`CacheConfig`]; counters are in [`Cache::stats`] and, for
//! Prometheus, [`Cache::collector`].

#![warn(missing_docs)]

mod cache;
mod clock;
mod config;
mod entry;
mod error;
mod flight;
mod key;
mod metrics;
mod node;
pub mod placement;
mod xfetch;

pub use cache::{Cache, CacheBuilder, CacheValue};
pub use clock::{Clock, Random, SystemClock, ThreadRandom};
pub use config::{CacheConfig, L1Config};
pub use error::{InvalidateError, NodeError, SetupError};
pub use key::{KeySpace, READABLE_PREFIX_BYTES};
pub use metrics::{CacheCollector, CacheStats, ErrorKind, Outcome};

/// The README's example, compiled as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
