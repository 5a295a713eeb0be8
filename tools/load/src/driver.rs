//! The open-loop driver: sends orders at the times the [`Schedule`] says, whatever the
//! system does, and measures each from the time it was meant to leave.
//!
//! One loop sleeps until each intended send time and hands the request to its own task, so
//! a slow answer never delays the next send. If the loop itself falls behind (the machine is
//! busy), it sends at once and the lateness shows in the latency: nothing is skipped, no
//! clock restarts. The only brake is `--max-in-flight`: beyond it a send is counted as
//! `client_saturated` instead of piling up sockets until the generator is the bottleneck.
//!
//! After the last send the phase waits for the POSTs (each bounded by the request timeout),
//! then up to `--drain-timeout` for accepted orders to end; orders still pending then are
//! reported as unfinished.

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::checkout::Checkout;
use crate::config::{TerminalSource, Workload};
use crate::schedule::Schedule;
use crate::stats::{PhaseReport, PostOutcome, Recorder};
use crate::terminal::{self, Tracker};

/// How often the drain looks at what is still pending.
const DRAIN_TICK: Duration = Duration::from_millis(100);

/// One rate for one duration.
#[derive(Debug, Clone)]
pub struct Phase {
    /// What the progress bar calls it.
    pub label: String,
    /// Orders per second.
    pub rate: f64,
    /// How long.
    pub duration: Duration,
    /// Seed of its schedule.
    pub seed: u64,
}

/// Sends phases of load at one checkout.
#[derive(Debug, Clone)]
pub struct Driver {
    /// The system's API.
    pub checkout: Arc<Checkout>,
    /// Orders not yet ended.
    pub tracker: Arc<Tracker>,
    /// How endings are observed.
    pub terminal: TerminalSource,
    /// The order stream's settings.
    pub workload: Workload,
    /// Fires on Ctrl-C: the phase stops sending and stops waiting.
    pub stop: CancellationToken,
}

impl Driver {
    /// Runs `phase` and waits for its orders to end (bounded); returns what it measured.
    pub async fn run(&self, phase: &Phase) -> PhaseReport {
        let started = Instant::now();
        let recorder = Arc::new(Recorder::new(started));
        let in_flight = Arc::new(Semaphore::new(self.workload.max_in_flight));
        let bar = self.progress(phase);
        let mut posts = JoinSet::new();
        let schedule = Schedule::new(self.workload.arrivals, phase.rate, phase.seed);
        for offset in schedule.within(phase.duration) {
            let intended = started + offset;
            tokio::select! {
                () = self.stop.cancelled() => break,
                () = tokio::time::sleep_until(intended.into()) => {}
            }
            // Reap answered requests as we go, so the set holds only those in flight.
            while posts.try_join_next().is_some() {}
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                recorder.post(intended, PostOutcome::ClientSaturated, Duration::ZERO);
                continue;
            };
            let (checkout, tracker, stop) = (
                self.checkout.clone(),
                self.tracker.clone(),
                self.stop.clone(),
            );
            let phase = recorder.clone();
            let poll_every =
                (self.terminal == TerminalSource::Poll).then_some(self.workload.poll_interval);
            posts.spawn(async move {
                let placed = checkout.place().await;
                phase.post(intended, placed.outcome, intended.elapsed());
                drop(permit);
                if let Some(id) = placed.order_id {
                    tracker.accepted(id, intended, phase);
                    if let Some(interval) = poll_every {
                        tokio::spawn(terminal::poll(checkout, tracker, id, interval, stop));
                    }
                }
            });
            self.show(&bar, &recorder, started, None);
        }
        while posts.join_next().await.is_some() {}

        let deadline = Instant::now() + self.workload.drain_timeout;
        loop {
            let pending = self.tracker.pending_of(&recorder);
            self.show(&bar, &recorder, started, Some(pending));
            if pending == 0 || Instant::now() >= deadline || self.stop.is_cancelled() {
                break;
            }
            tokio::time::sleep(DRAIN_TICK).await;
        }
        let unfinished = self.tracker.abandon(&recorder);
        bar.finish_and_clear();
        recorder.finish(phase.rate, phase.duration, unfinished)
    }

    fn progress(&self, phase: &Phase) -> ProgressBar {
        if self.workload.quiet {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(phase.duration.as_secs().max(1));
        let style = ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos:>4}/{len}s {msg}")
            .map(|style| style.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(phase.label.clone());
        bar
    }

    fn show(
        &self,
        bar: &ProgressBar,
        recorder: &Recorder,
        started: Instant,
        draining: Option<u64>,
    ) {
        let counts = recorder.counts();
        bar.set_position(started.elapsed().as_secs());
        let tail = match draining {
            Some(pending) => format!("  draining: {pending} pending"),
            None => String::new(),
        };
        bar.set_message(format!(
            "sent {} accepted {} done {} shed {} failed {}{tail}",
            counts.sent, counts.accepted, counts.completed, counts.shed, counts.failed
        ));
    }
}
