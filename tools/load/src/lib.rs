//! `faultline-load`: Faultline's load generator, as a library the binary drives.
//!
//! ```sh
//! faultline-load run  --url http://127.0.0.1:8080 --rate 50 --duration 60s
//! faultline-load ramp --start-rate 25 --rate-step 25 --step-duration 20s --slo-p99 1s
//! faultline-load local run --rate 50 --duration 60s      # what `make load` runs
//! ```
//!
//! Open-loop: orders leave at the times a [`schedule`] fixed in advance (constant or
//! Poisson), and every latency counts from that intended time, so a system that stalls is
//! charged for the whole stall (no coordinated omission). It reports POST latency by
//! status, order-to-terminal latency (from `orders.events` or by polling), throughput,
//! error and shed rates; a ramp steps the rate until the SLO breaks and names the knee. Each
//! invocation writes `result.json` and `chart.svg` under `--out`.
//!
//! Module map: [`config`] (the command line) → [`plan`] (steady or ramp) → [`driver`] (one
//! phase, open loop) using [`checkout`] (HTTP) and [`terminal`] (endings), recording into
//! [`stats`] ([`histogram`]s); [`ramp`] and [`knee`] find the knee; [`report`] and [`chart`]
//! write the results; [`local`] is `make load`'s fresh system with Postgres and /proc figures; [`remote`]
//! drives a checkout that is already running.

pub mod chart;
pub mod checkout;
pub mod config;
pub mod driver;
pub mod histogram;
pub mod knee;
pub mod local;
pub mod plan;
pub mod ramp;
pub mod remote;
pub mod report;
pub mod schedule;
pub mod stats;
pub mod stock;
pub mod terminal;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Lifetime of the tokens the generator mints: longer than any run it allows.
pub const TOKEN_TTL: Duration = Duration::from_secs(26 * 3_600);

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
