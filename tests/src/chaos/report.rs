//! The matrix's table: one row per fault, and every violation the auditor found under it.

use std::fmt::Write as _;
use std::time::Duration;

use super::auditor::{Kind, Violation};

/// What one fault did.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub fault: String,
    /// POSTs sent in the phase (warm-up, fault, cool-down).
    pub sent: usize,
    /// Answered 202.
    pub accepted: usize,
    /// Of those, confirmed / cancelled.
    pub confirmed: usize,
    /// Cancelled for any reason (out of stock and declined cards are part of the mix).
    pub cancelled: usize,
    /// Cancelled with a `*_timeout` code.
    pub timeouts: usize,
    /// Those per code (`inventory_timeout`, `payment_timeout`).
    pub timeout_codes: std::collections::BTreeMap<String, usize>,
    /// New violations of each kind found by the audit after this fault.
    pub lost: usize,
    /// See [`Row::lost`].
    pub doubled: usize,
    /// See [`Row::lost`].
    pub other: usize,
    /// From the heal to no saga running and no outbox row pending; `None`: not within the
    /// bound.
    pub drained: Option<Duration>,
    /// p99 of POSTs meant to leave while the fault was on, from their intended send time.
    pub post_p99: Option<Duration>,
    /// p99 from order creation to its decision, for the orders accepted while it was on.
    pub terminal_p99: Option<Duration>,
}

/// The whole run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The seed (printed at the start, and here).
    pub seed: u64,
    /// The settings, in words.
    pub settings: String,
    /// One per fault, in order.
    pub rows: Vec<Row>,
    /// Every violation, with the fault after which it first appeared.
    pub violations: Vec<(String, Violation)>,
}

impl Report {
    /// Whether the auditor found nothing.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The table in Markdown, then the violations.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "seed {}; {}\n", self.seed, self.settings);
        out.push_str(
            "| fault | sent | accepted | confirmed | cancelled | of which timeout | lost | doubled | other violations | drained in | POST p99 during | order→decision p99 during |\n",
        );
        out.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        for row in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                row.fault,
                row.sent,
                row.accepted,
                row.confirmed,
                row.cancelled,
                timeouts(row),
                row.lost,
                row.doubled,
                row.other,
                row.drained.map_or("**not drained**".to_owned(), seconds),
                row.post_p99.map_or("-".to_owned(), millis),
                row.terminal_p99.map_or("-".to_owned(), millis),
            );
        }
        if !self.violations.is_empty() {
            let _ = writeln!(out, "\nViolations ({}):", self.violations.len());
            for (fault, violation) in &self.violations {
                let kind = match violation.kind {
                    Kind::Lost => "lost",
                    Kind::Doubled => "doubled",
                    Kind::Other => "other",
                };
                let _ = writeln!(out, "- after `{fault}` [{kind}]: {}", violation.what);
            }
        }
        out
    }
}

/// "0", or "26 (inventory 20, payment 6)".
fn timeouts(row: &Row) -> String {
    if row.timeouts == 0 {
        return "0".to_owned();
    }
    let codes: Vec<String> = row
        .timeout_codes
        .iter()
        .map(|(code, n)| format!("{} {n}", code.trim_end_matches("_timeout")))
        .collect();
    format!("{} ({})", row.timeouts, codes.join(", "))
}

fn seconds(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

fn millis(duration: Duration) -> String {
    format!("{} ms", duration.as_millis())
}
