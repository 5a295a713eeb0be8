//! What one phase (a run, or one ramp step) observed: POST latency per status, order-to-
//! terminal latency, outcomes, and a per-second timeline, all measured from each order's
//! intended send time.
//!
//! Tasks record into one [`Recorder`] behind a mutex: a few hundred short updates a second
//! is nothing to contend on, and one owner of the counts keeps the arithmetic in one place.
//! [`Recorder::finish`] turns it into the [`PhaseReport`] that goes into the JSON result.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::histogram::{Latency, Summary};

/// Timeline entries kept at most (one per second): a day.
const MAX_SECONDS: usize = 86_400;
/// Distinct cancellation reasons kept; the rest are counted as `other`.
const MAX_REASONS: usize = 20;

/// How a POST ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostOutcome {
    /// 202: the order was accepted.
    Accepted,
    /// Any other HTTP status.
    Status(u16),
    /// No HTTP answer: connection refused or reset, or the request timed out.
    Transport,
    /// Not sent: the generator had `--max-in-flight` requests outstanding already.
    ClientSaturated,
}

/// How an accepted order ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Confirmed,
    /// CANCELLED, with the reason checkout gave.
    Cancelled {
        /// The human-readable reason (the events carry only this).
        reason: String,
        /// Whether the saga gave up waiting for a participant.
        timeout: bool,
    },
}

/// One second of the timeline, by when orders were meant to be sent (`sent`, `accepted`,
/// `shed`, `failed`) and when they ended (`completed`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Second {
    /// Orders meant to leave in this second.
    pub sent: u64,
    /// Of those, accepted (202).
    pub accepted: u64,
    /// Of those, shed (503).
    pub shed: u64,
    /// Of those, any other failure (other statuses, transport errors, client saturation).
    pub failed: u64,
    /// Orders that reached a terminal state in this second.
    pub completed: u64,
}

/// Running counts, for the progress bar.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    /// POSTs answered or given up.
    pub sent: u64,
    /// 202s.
    pub accepted: u64,
    /// Terminal orders.
    pub completed: u64,
    /// 503s.
    pub shed: u64,
    /// Other failures.
    pub failed: u64,
}

/// Collects one phase's observations.
#[derive(Debug)]
pub struct Recorder {
    started: Instant,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    counts: Counts,
    saturated: u64,
    post: BTreeMap<String, Latency>,
    terminal: Latency,
    confirmed: u64,
    cancelled: u64,
    cancelled_by_timeout: u64,
    reasons: BTreeMap<String, u64>,
    last_end: Option<Instant>,
    timeline: Vec<Second>,
}

impl Inner {
    fn second(&mut self, offset: Duration) -> Option<&mut Second> {
        let index = usize::try_from(offset.as_secs()).ok()?;
        if index >= MAX_SECONDS {
            return None;
        }
        if self.timeline.len() <= index {
            self.timeline.resize(index + 1, Second::default());
        }
        self.timeline.get_mut(index)
    }
}

impl Recorder {
    /// A recorder for a phase that starts at `started`.
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Recording never panics midway, and counts are still counts if it did.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A POST meant to leave at `intended` ended with `outcome` after `latency` (measured
    /// from `intended`, not from when it actually left).
    pub fn post(&self, intended: Instant, outcome: PostOutcome, latency: Duration) {
        let offset = intended.saturating_duration_since(self.started);
        let mut inner = self.lock();
        inner.counts.sent += 1;
        let key = match outcome {
            PostOutcome::Accepted => {
                inner.counts.accepted += 1;
                "202".to_owned()
            }
            PostOutcome::Status(503) => {
                inner.counts.shed += 1;
                "503".to_owned()
            }
            PostOutcome::Status(status) => {
                inner.counts.failed += 1;
                status.to_string()
            }
            PostOutcome::Transport => {
                inner.counts.failed += 1;
                "transport".to_owned()
            }
            PostOutcome::ClientSaturated => {
                inner.counts.failed += 1;
                inner.saturated += 1;
                // Never sent, so it has no latency to speak of.
                if let Some(second) = inner.second(offset) {
                    second.sent += 1;
                    second.failed += 1;
                }
                return;
            }
        };
        inner.post.entry(key).or_default().record(latency);
        if let Some(second) = inner.second(offset) {
            second.sent += 1;
            match outcome {
                PostOutcome::Accepted => second.accepted += 1,
                PostOutcome::Status(503) => second.shed += 1,
                _ => second.failed += 1,
            }
        }
    }

    /// An order meant to be sent at `intended` reached a terminal state at `ended`.
    pub fn ended(&self, intended: Instant, ended: Instant, ending: Ending) {
        let offset = ended.saturating_duration_since(self.started);
        let mut inner = self.lock();
        inner.counts.completed += 1;
        inner
            .terminal
            .record(ended.saturating_duration_since(intended));
        inner.last_end = Some(inner.last_end.map_or(ended, |last| last.max(ended)));
        match ending {
            Ending::Confirmed => inner.confirmed += 1,
            Ending::Cancelled { reason, timeout } => {
                inner.cancelled += 1;
                if timeout {
                    inner.cancelled_by_timeout += 1;
                }
                let key =
                    if inner.reasons.len() < MAX_REASONS || inner.reasons.contains_key(&reason) {
                        reason
                    } else {
                        "other".to_owned()
                    };
                *inner.reasons.entry(key).or_default() += 1;
            }
        }
        if let Some(second) = inner.second(offset) {
            second.completed += 1;
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> Counts {
        self.lock().counts
    }

    /// The phase's report: it offered `offered_rate` for `duration`, and `unfinished`
    /// accepted orders had not ended when the generator stopped waiting.
    pub fn finish(&self, offered_rate: f64, duration: Duration, unfinished: u64) -> PhaseReport {
        let inner = self.lock();
        let counts = inner.counts;
        let mut post_all = Latency::new();
        for histogram in inner.post.values() {
            post_all.merge(histogram);
        }
        let per = |n: u64| {
            if counts.sent == 0 {
                f64::NAN
            } else {
                n as f64 / counts.sent as f64
            }
        };
        let seconds = duration.as_secs_f64().max(f64::EPSILON);
        // Completions per second over the time it took to complete them: from the start
        // of the phase to the last order that ended.
        let completing = inner
            .last_end
            .map(|last| last.saturating_duration_since(self.started).as_secs_f64())
            .unwrap_or(seconds)
            .max(f64::EPSILON);
        let failed_orders = counts.shed + counts.failed + unfinished + inner.cancelled_by_timeout;
        PhaseReport {
            offered_rate,
            duration_s: duration.as_secs_f64(),
            sent: counts.sent,
            accepted: counts.accepted,
            shed: counts.shed,
            failed: counts.failed,
            client_saturated: inner.saturated,
            completed: counts.completed,
            unfinished,
            accepted_per_s: counts.accepted as f64 / seconds,
            completed_per_s: counts.completed as f64 / completing,
            shed_rate: per(counts.shed),
            error_rate: per(counts.failed),
            failure_rate: per(failed_orders),
            post_all: post_all.summary(),
            post: inner
                .post
                .iter()
                .map(|(status, h)| (status.clone(), h.summary()))
                .collect(),
            terminal: inner.terminal.summary(),
            outcomes: Outcomes {
                confirmed: inner.confirmed,
                cancelled: inner.cancelled,
                cancelled_by_timeout: inner.cancelled_by_timeout,
                reasons: inner.reasons.clone(),
            },
            timeline: inner.timeline.clone(),
        }
    }
}

/// How accepted orders ended.
#[derive(Debug, Clone, Serialize)]
pub struct Outcomes {
    pub confirmed: u64,
    /// CANCELLED, for any reason.
    pub cancelled: u64,
    /// CANCELLED because a participant did not answer in time.
    pub cancelled_by_timeout: u64,
    /// CANCELLED, by reason.
    pub reasons: BTreeMap<String, u64>,
}

/// One phase, as the JSON result records it. Rates are over orders sent; `failure_rate`
/// counts everything that did not become a finished, non-timed-out order.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    /// Orders per second offered.
    pub offered_rate: f64,
    /// How long the rate was offered.
    pub duration_s: f64,
    /// Orders the schedule sent (or tried to).
    pub sent: u64,
    /// 202s.
    pub accepted: u64,
    /// 503s: refused by the edge.
    pub shed: u64,
    /// Other statuses, transport errors and client saturation.
    pub failed: u64,
    /// Of `failed`, never sent because the generator was saturated.
    pub client_saturated: u64,
    /// Accepted orders that reached a terminal state.
    pub completed: u64,
    /// Accepted orders still not terminal when the generator stopped waiting.
    pub unfinished: u64,
    /// Accepted per second of offered load.
    pub accepted_per_s: f64,
    /// Completed per second, from the phase's start to the last completion.
    pub completed_per_s: f64,
    /// `shed / sent`.
    pub shed_rate: f64,
    /// `failed / sent`.
    pub error_rate: f64,
    /// `(shed + failed + unfinished + cancelled by timeout) / sent`: what the SLO judges.
    pub failure_rate: f64,
    /// POST latency over every answered request.
    pub post_all: Summary,
    /// POST latency by status (`202`, `503`, ..., `transport`).
    pub post: BTreeMap<String, Summary>,
    /// Intended send to terminal state, over completed orders.
    pub terminal: Summary,
    /// How accepted orders ended.
    pub outcomes: Outcomes,
    /// Per second since the phase started.
    pub timeline: Vec<Second>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_is_counted_per_status_and_rates_over_sent() {
        let start = Instant::now();
        let recorder = Recorder::new(start);
        let ms = Duration::from_millis;
        recorder.post(start, PostOutcome::Accepted, ms(10));
        recorder.post(start + ms(500), PostOutcome::Accepted, ms(20));
        recorder.post(start + ms(1_200), PostOutcome::Status(503), ms(1));
        recorder.post(start + ms(1_300), PostOutcome::ClientSaturated, ms(0));
        recorder.ended(start, start + ms(900), Ending::Confirmed);
        let timeout = Ending::Cancelled {
            reason: "inventory did not answer in time".into(),
            timeout: true,
        };
        recorder.ended(start + ms(500), start + ms(1_500), timeout);

        let report = recorder.finish(2.0, Duration::from_secs(2), 0);
        assert_eq!(
            (report.sent, report.accepted, report.shed, report.failed),
            (4, 2, 1, 1)
        );
        assert_eq!(report.post["202"].count, 2);
        assert_eq!(report.post["503"].count, 1);
        assert!(!report.post.contains_key("transport"));
        assert_eq!(
            report.post_all.count, 3,
            "a request never sent has no latency"
        );
        assert_eq!(report.terminal.count, 2);
        assert_eq!(report.outcomes.cancelled_by_timeout, 1);
        assert_eq!(report.shed_rate, 0.25);
        // shed + saturated + the timed-out cancellation
        assert_eq!(report.failure_rate, 0.75);
        assert_eq!(report.timeline.len(), 2);
        assert_eq!(report.timeline[0].sent, 2);
        assert_eq!(report.timeline[0].completed, 1);
        assert_eq!(report.timeline[1].completed, 1);
        assert_eq!(report.timeline[1].shed, 1);
    }

    #[test]
    fn an_empty_phase_has_undefined_rates_not_zero_ones() {
        let report = Recorder::new(Instant::now()).finish(10.0, Duration::from_secs(1), 0);
        assert!(report.failure_rate.is_nan());
    }
}
