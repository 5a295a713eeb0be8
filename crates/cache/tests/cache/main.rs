//! The cache against real Redis: the machine's server (`FAULTLINE_REDIS_URL`, default
//! `redis://127.0.0.1:6379`) for single-node behaviour, and `redis-server` children this
//! test starts, stops and restarts for failures and sharding. Each test uses its own cache
//! name, so tests share a server without sharing keys.

// Helpers panic on failure: in a test, that is the report.
#![allow(clippy::unwrap_used)]

mod degradation;
mod placement;
mod read_path;
mod sharding;
mod stampede;
mod support;
