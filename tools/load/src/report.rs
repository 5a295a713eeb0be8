//! The result of a run or a ramp: the JSON document written next to the chart, and the
//! table printed at the end. One struct serves both, so the table never shows a figure the
//! JSON does not have.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::config::{TerminalSource, Workload};
use crate::histogram::Summary;
use crate::local::LocalReport;
use crate::ramp::RampReport;
use crate::schedule::Arrivals;
use crate::stats::PhaseReport;

/// Everything one invocation measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    /// `faultline-load` and its version.
    pub tool: String,
    /// Seconds since the Unix epoch when the run started.
    pub started_unix_s: u64,
    /// Checkout's URL.
    pub target: String,
    /// How order endings were observed.
    pub terminal: TerminalSource,
    /// Arrival process.
    pub arrivals: Arrivals,
    /// Schedule seed.
    pub seed: u64,
    /// SKU and units per order.
    pub sku: String,
    /// Units per order.
    pub quantity: i64,
    /// Customers the load was spread over.
    pub customers: u32,
    /// The run or the ramp.
    #[serde(flatten)]
    pub mode: Mode,
    /// With `local`: Postgres and process figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalReport>,
}

/// Run or ramp.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Mode {
    /// One rate.
    Run {
        /// Its figures (boxed: a phase is much larger than a ramp's vector of them).
        run: Box<PhaseReport>,
    },
    /// Steps to the knee.
    Ramp {
        /// Its figures.
        ramp: RampReport,
    },
}

impl LoadResult {
    /// The result of driving `workload` against `target`, started at `started_unix_s`,
    /// observing endings through `terminal`; `local` figures are added by the caller that
    /// has them.
    pub fn new(
        target: String,
        terminal: TerminalSource,
        workload: &Workload,
        started_unix_s: u64,
        mode: Mode,
    ) -> Self {
        Self {
            tool: format!("faultline-load {}", env!("CARGO_PKG_VERSION")),
            started_unix_s,
            target,
            terminal,
            arrivals: workload.arrivals,
            seed: workload.seed,
            sku: workload.sku.clone(),
            quantity: workload.quantity,
            customers: workload.customers,
            mode,
            local: None,
        }
    }

    /// Orders that reached a terminal state, over the whole invocation.
    pub fn completed(&self) -> u64 {
        match &self.mode {
            Mode::Run { run } => run.completed,
            Mode::Ramp { ramp } => ramp.steps.iter().map(|s| s.phase.completed).sum(),
        }
    }

    /// Writes the JSON document to `path`.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self).context("serializing the result")?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let source = match self.terminal {
            TerminalSource::Events => "orders.events",
            TerminalSource::Poll => "polling GET",
        };
        let _ = writeln!(
            out,
            "\nfaultline-load against {} ({:?} arrivals, seed {}, {} customers, {} x {})",
            self.target, self.arrivals, self.seed, self.customers, self.quantity, self.sku
        );
        match &self.mode {
            Mode::Run { run } => phase_table(&mut out, run, source),
            Mode::Ramp { ramp } => ramp_table(&mut out, ramp),
        }
        if let Some(local) = &self.local {
            local.table(&mut out, self);
        }
        out
    }
}

const RULE: &str = "  --------------------------------------------------------------------------------------------";

fn latency_header(out: &mut String) {
    let _ = writeln!(
        out,
        "  {:<34} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency from intended send", "count", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    let _ = writeln!(out, "{RULE}");
}

fn latency_row(out: &mut String, name: &str, s: &Summary) {
    let _ = writeln!(
        out,
        "  {:<34} {:>8} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
        name, s.count, s.p50_ms, s.p90_ms, s.p99_ms, s.p999_ms, s.max_ms
    );
}

fn percent(rate: f64) -> String {
    if rate.is_nan() {
        "-".to_owned()
    } else {
        format!("{:.2} %", rate * 100.0)
    }
}

fn phase_table(out: &mut String, run: &PhaseReport, source: &str) {
    let _ = writeln!(
        out,
        "  offered {:.1}/s for {:.0} s: {} sent\n",
        run.offered_rate, run.duration_s, run.sent
    );
    latency_header(out);
    for (status, summary) in &run.post {
        latency_row(out, &format!("POST {status}"), summary);
    }
    latency_row(out, "POST, all answers", &run.post_all);
    latency_row(out, &format!("order to terminal ({source})"), &run.terminal);
    let _ = writeln!(out, "{RULE}");
    let _ = writeln!(
        out,
        "  throughput   accepted {:.1}/s, completed {:.1}/s",
        run.accepted_per_s, run.completed_per_s
    );
    let _ = writeln!(
        out,
        "  refusals     shed (503) {} ({}), errors {} ({}, of which {} never sent: generator saturated)",
        run.shed,
        percent(run.shed_rate),
        run.failed,
        percent(run.error_rate),
        run.client_saturated
    );
    let o = &run.outcomes;
    let _ = writeln!(
        out,
        "  outcomes     {} confirmed, {} cancelled ({} by timeout), {} unfinished; failure rate {}",
        o.confirmed,
        o.cancelled,
        o.cancelled_by_timeout,
        run.unfinished,
        percent(run.failure_rate)
    );
    for (reason, count) in &o.reasons {
        let _ = writeln!(out, "               {count:>6} x {reason}");
    }
}

fn ramp_table(out: &mut String, ramp: &RampReport) {
    let _ = writeln!(
        out,
        "  ramp, SLO: p99 ({:?}) <= {:.0} ms and failures <= {}\n",
        ramp.slo_on,
        ramp.slo_p99_ms,
        percent(ramp.slo_failure_rate)
    );
    let _ = writeln!(
        out,
        "  {:>9} {:>10} {:>11} {:>12} {:>11} {:>11} {:>9}  breach",
        "offered/s",
        "accepted/s",
        "completed/s",
        "POST p99 ms",
        "end p50 ms",
        "end p99 ms",
        "failures"
    );
    let _ = writeln!(out, "{RULE}");
    for step in &ramp.steps {
        let p = &step.phase;
        let _ = writeln!(
            out,
            "  {:>9.1} {:>10.1} {:>11.1} {:>12.1} {:>11.1} {:>11.1} {:>9}  {}",
            p.offered_rate,
            p.accepted_per_s,
            p.completed_per_s,
            p.post_all.p99_ms,
            p.terminal.p50_ms,
            p.terminal.p99_ms,
            percent(p.failure_rate),
            step.breach.map(|b| format!("{b:?}")).unwrap_or_default()
        );
    }
    let _ = writeln!(out, "{RULE}");
    let _ = writeln!(out, "  knee: {:?}", ramp.knee);
}
