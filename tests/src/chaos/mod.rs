//! The chaos matrix (issue 11, section 6): under steady open-loop load, each fault is
//! injected and healed, the system is given a bounded time to go quiet, and the
//! [`auditor`] checks every invariant from each service's own database.
//!
//! A lane is one [`rig::Rig`] (services, a Postgres, a broker and a Redis of its own,
//! proxies on every link) going through its share of the faults in order (`lane.rs`); the
//! short matrix runs three lanes at once to stay within a few minutes, the full one one.
//!
//! Knobs, from the environment ([`Settings::from_env`]): `CHAOS_MODE=short|full` (the
//! defaults below), `CHAOS_SEED`, `CHAOS_RATE` (orders/s), `CHAOS_FAULT_SECS`,
//! `CHAOS_STOP_SECS`, `CHAOS_REDIS_SECS`, `CHAOS_LANES` (rigs at once) and `CHAOS_FAULTS`
//! (comma-separated substrings of fault names: only those run).

pub mod auditor;
pub mod broker;
pub mod cluster;
pub(crate) mod dlq;
pub mod faults;
mod lane;
pub mod load;
pub mod report;
pub mod rig;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use faults::{Durations, Fault};
use report::Report;

/// How a run goes.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Seeds the arrivals, the order mix and the links' jitter.
    pub seed: u64,
    /// Orders per second offered, all run long.
    pub rate: f64,
    /// Load before each fault.
    pub warmup: Duration,
    /// Load after each heal, before the placer stops.
    pub cooldown: Duration,
    /// How long faults last.
    pub durations: Durations,
    /// Longest wait for quiescence after a heal.
    pub quiesce: Duration,
    /// Checkout's saga step timeout (its production default).
    pub step_timeout: Duration,
    /// Only faults whose name contains one of these (all if empty).
    pub only: Vec<String>,
    /// Rigs run at once, each with a share of the faults.
    pub lanes: usize,
}

impl Settings {
    /// `make test`'s matrix: each fault for a few seconds.
    pub fn short(seed: u64) -> Self {
        Self {
            seed,
            // Three lanes at 3/s: 9 orders/s over the machine, below the knee (15/s,
            // docs/performance.md) with three brokers idling.
            rate: 3.0,
            warmup: Duration::from_secs(1),
            cooldown: Duration::from_secs(1),
            durations: Durations {
                fault: Duration::from_secs(3),
                stop: Duration::from_secs(3),
                redis: Duration::from_secs(3),
            },
            // Phases drain in 3-15 s (docs/resilience.md); the bound is generous because it
            // only costs time when something is stuck, and a dynamic member (no
            // GROUP_INSTANCE_ID) would take a minute after a kill.
            quiesce: Duration::from_secs(150),
            step_timeout: Duration::from_secs(15),
            only: Vec::new(),
            lanes: 3,
        }
    }

    /// `make chaos`'s matrix: SIGSTOP 30 s, Redis down 10 s, other faults 15 s.
    pub fn full(seed: u64) -> Self {
        Self {
            rate: 8.0,
            warmup: Duration::from_secs(5),
            cooldown: Duration::from_secs(5),
            durations: Durations {
                fault: Duration::from_secs(15),
                stop: Duration::from_secs(30),
                redis: Duration::from_secs(10),
            },
            quiesce: Duration::from_secs(300),
            lanes: 1,
            ..Self::short(seed)
        }
    }

    /// From the environment (see the module's documentation); the seed defaults to the
    /// clock, and is printed either way.
    pub fn from_env() -> anyhow::Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let seed = match var("CHAOS_SEED") {
            Some(seed) => seed.parse().context("CHAOS_SEED must be an integer")?,
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default(),
        };
        let mut settings = match var("CHAOS_MODE").as_deref() {
            None | Some("short") => Self::short(seed),
            Some("full") => Self::full(seed),
            Some(other) => anyhow::bail!("CHAOS_MODE is short or full, not {other}"),
        };
        let secs = |name: &str| -> anyhow::Result<Option<Duration>> {
            var(name)
                .map(|v| v.parse::<f64>().map(Duration::from_secs_f64))
                .transpose()
                .with_context(|| format!("{name} must be a number of seconds"))
        };
        if let Some(rate) = var("CHAOS_RATE") {
            settings.rate = rate.parse().context("CHAOS_RATE must be a number")?;
            anyhow::ensure!(settings.rate > 0.0, "CHAOS_RATE must be positive");
        }
        if let Some(fault) = secs("CHAOS_FAULT_SECS")? {
            settings.durations.fault = fault;
        }
        if let Some(stop) = secs("CHAOS_STOP_SECS")? {
            settings.durations.stop = stop;
        }
        if let Some(redis) = secs("CHAOS_REDIS_SECS")? {
            settings.durations.redis = redis;
        }
        if let Some(lanes) = var("CHAOS_LANES") {
            settings.lanes = lanes.parse().context("CHAOS_LANES must be a count")?;
        }
        if let Some(only) = var("CHAOS_FAULTS") {
            settings.only = only.split(',').map(|s| s.trim().to_owned()).collect();
        }
        Ok(settings)
    }

    fn describe(&self) -> String {
        format!(
            "{} lane(s) at {:.1} orders/s each (Poisson); warm-up {:?}, cool-down {:?}; faults {:?}, SIGSTOP {:?}, Redis down {:?}; drain bound {:?}; step timeout {:?}",
            self.lanes,
            self.rate,
            self.warmup,
            self.cooldown,
            self.durations.fault,
            self.durations.stop,
            self.durations.redis,
            self.quiesce,
            self.step_timeout
        )
    }
}

/// Runs the matrix and returns its report. Faults are spread over `settings.lanes` rigs
/// that run at once (kills cost the most: a restart, then readiness, so they are spread
/// first); the table lists them in matrix order.
pub async fn run(settings: &Settings) -> anyhow::Result<Report> {
    println!("chaos: seed {} ({})", settings.seed, settings.describe());
    let faults: Vec<(usize, Fault)> = Fault::all()
        .into_iter()
        .enumerate()
        .filter(|(_, f)| {
            settings.only.is_empty()
                || settings
                    .only
                    .iter()
                    .any(|o| f.to_string().contains(o.as_str()))
        })
        .collect();
    let lanes = settings.lanes.clamp(1, faults.len().max(1));
    let mut plan: Vec<(u32, Vec<(usize, Fault)>)> = vec![(0, Vec::new()); lanes];
    for (n, fault) in faults {
        let cost = if matches!(fault, Fault::Kill(_)) {
            10
        } else {
            1
        };
        if let Some((load, lane)) = plan.iter_mut().min_by_key(|(load, _)| *load) {
            *load += cost;
            lane.push((n, fault));
        }
    }
    let mut running = Vec::new();
    for (_, faults) in plan {
        running.push(tokio::spawn(lane::run(settings.clone(), faults)));
    }
    let mut report = Report {
        seed: settings.seed,
        settings: settings.describe(),
        ..Report::default()
    };
    let (mut rows, mut violations) = (Vec::new(), Vec::new());
    for lane in running {
        let lane = lane.await??;
        rows.extend(lane.rows);
        violations.extend(lane.violations);
    }
    rows.sort_by_key(|(n, _)| *n);
    violations.sort_by_key(|(n, _, _)| *n);
    report.rows = rows.into_iter().map(|(_, row)| row).collect();
    report.violations = violations
        .into_iter()
        .map(|(_, fault, violation)| (fault, violation))
        .collect();
    Ok(report)
}
