//! Retries: which calls, how often, how far apart, and never more than the budget allows.
//!
//! Built on tower's `Retry` service with our [`RetryPolicy`]. A failed attempt is retried
//! only when all of these hold:
//! - the request is safe to repeat ([`RetrySafety`]: idempotent, or carrying an idempotency
//!   key; the request is cloned for each attempt, so a key travels unchanged);
//! - the [`Classifier`] calls the failure transient;
//! - attempts are left (`max_attempts` counts the first);
//! - the backoff (at least the server's `Retry-After`/pushback hint) ends before the call's
//!   [`Deadline`]: an attempt that cannot finish in time is not started;
//! - the [`RetryBudget`] has a token. Every call deposits, every retry withdraws, so retries
//!   stay a fixed fraction of traffic (plus a small floor) even when everything fails: an
//!   outage does not multiply load. When the budget says no, the call fails with
//!   [`ResilienceError::BudgetExhausted`] wrapping the last error.

use std::pin::Pin;
use std::time::Duration;

use rand::RngExt;
use serde::{Deserialize, Serialize};
use tokio::time::{Instant, Sleep};
use tower::{BoxError, Layer};

use crate::backoff::{Backoff, Jitter};
pub use crate::budget::RetryBudget;
use crate::classify::{Classifier, ErrorClass, classify};
use crate::deadline::Deadline;
use crate::error::ResilienceError;
use faultline_settings::{SettingError, percent, positive};

/// Retry settings for one downstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts including the first; 1 disables retries (`..__RETRY__MAX_ATTEMPTS`).
    /// Default 3.
    pub max_attempts: u32,
    /// Backoff before the first retry (`..__RETRY__INITIAL_BACKOFF_MS`). Default 25.
    pub initial_backoff_ms: u64,
    /// Longest backoff (`..__RETRY__MAX_BACKOFF_MS`). Default 1 000.
    pub max_backoff_ms: u64,
    /// `full` or `decorrelated` (`..__RETRY__JITTER`). Default `full`.
    pub jitter: Jitter,
    /// Retries allowed as a percentage of calls (`..__RETRY__BUDGET_PERCENT`), 0..=100.
    /// Default 20.
    pub budget_percent: f64,
    /// Retries per second always allowed, whatever the traffic
    /// (`..__RETRY__BUDGET_MIN_PER_SEC`). Default 10.
    pub budget_min_per_sec: u32,
    /// How long deposits count, 1 000..=60 000 (`..__RETRY__BUDGET_WINDOW_MS`).
    /// Default 10 000.
    pub budget_window_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff_ms: 25,
            max_backoff_ms: 1_000,
            jitter: Jitter::Full,
            budget_percent: 20.0,
            budget_min_per_sec: 10,
            budget_window_ms: 10_000,
        }
    }
}

impl RetryConfig {
    /// Rejects settings that cannot work, naming the setting.
    pub fn validate(&self, path: &str) -> Result<(), SettingError> {
        positive(path, "MAX_ATTEMPTS", u64::from(self.max_attempts))?;
        positive(path, "INITIAL_BACKOFF_MS", self.initial_backoff_ms)?;
        positive(path, "MAX_BACKOFF_MS", self.max_backoff_ms)?;
        if self.max_backoff_ms < self.initial_backoff_ms {
            return Err(SettingError::new(
                path,
                "MAX_BACKOFF_MS",
                format!(
                    "must be at least the initial backoff ({} ms); got {}",
                    self.initial_backoff_ms, self.max_backoff_ms
                ),
            ));
        }
        percent(path, "BUDGET_PERCENT", self.budget_percent, true)?;
        // The budget counts in tenths of its window: under a second it forgets calls before
        // their retries are due, over a minute it remembers traffic long gone.
        if !(1_000..=60_000).contains(&self.budget_window_ms) {
            return Err(SettingError::new(
                path,
                "BUDGET_WINDOW_MS",
                format!("must be within 1000..=60000; got {}", self.budget_window_ms),
            ));
        }
        if self.budget_min_per_sec >= i32::MAX as u32 {
            return Err(SettingError::new(
                path,
                "BUDGET_MIN_PER_SEC",
                "is too large",
            ));
        }
        Ok(())
    }

    /// The backoff schedule these settings describe.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(
            Duration::from_millis(self.initial_backoff_ms),
            Duration::from_millis(self.max_backoff_ms),
            self.jitter,
        )
    }
}

/// Whether a request may be sent more than once.
pub trait RetrySafety<Req>: Clone + Send + Sync + 'static {
    /// `true` if sending `request` twice has the effect of sending it once.
    fn is_retry_safe(&self, request: &Req) -> bool;
}

/// Every request is safe to repeat (reads, or operations made idempotent by a key that
/// every clone carries).
#[derive(Debug, Clone, Copy, Default)]
pub struct Idempotent;

impl<Req> RetrySafety<Req> for Idempotent {
    fn is_retry_safe(&self, _request: &Req) -> bool {
        true
    }
}

/// No request is repeated: the default, so that nothing is retried by accident.
#[derive(Debug, Clone, Copy, Default)]
pub struct NeverRetry;

impl<Req> RetrySafety<Req> for NeverRetry {
    fn is_retry_safe(&self, _request: &Req) -> bool {
        false
    }
}

/// Decides per request, e.g. `RetryIf(|req: &Payment| req.idempotency_key.is_some())`.
#[derive(Debug, Clone, Copy)]
pub struct RetryIf<F>(pub F);

impl<Req, F> RetrySafety<Req> for RetryIf<F>
where
    F: Fn(&Req) -> bool + Clone + Send + Sync + 'static,
{
    fn is_retry_safe(&self, request: &Req) -> bool {
        (self.0)(request)
    }
}

/// The [`tower::retry::Policy`] described in the module docs. Cloned per call; the clone
/// holds that call's attempt count and last backoff.
#[derive(Debug, Clone)]
pub struct RetryPolicy<C, I> {
    rules: RetryRules<C, I>,
    progress: Progress,
}

impl<C, I> RetryPolicy<C, I> {
    /// A policy from validated settings, sharing `budget`.
    pub fn new(config: &RetryConfig, budget: RetryBudget, classifier: C, safety: I) -> Self {
        Self {
            rules: RetryRules::new(config, budget, classifier, safety),
            progress: Progress::default(),
        }
    }
}

/// What a retry decision needs that does not change from call to call, apart from the
/// [`Progress`] that does.
#[derive(Debug, Clone)]
pub(crate) struct RetryRules<C, I> {
    max_attempts: u32,
    backoff: Backoff,
    pub(crate) budget: RetryBudget,
    pub(crate) classifier: C,
    pub(crate) safety: I,
}

/// One call's retry state: attempts made so far and the last jittered backoff (which
/// decorrelated jitter grows from).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Progress {
    attempts: u32,
    /// In microseconds: a `Duration` would double the size of every call's future.
    previous_micros: u32,
}

impl<C, I> RetryRules<C, I> {
    pub(crate) fn new(config: &RetryConfig, budget: RetryBudget, classifier: C, safety: I) -> Self {
        Self {
            max_attempts: config.max_attempts,
            backoff: config.backoff(),
            budget,
            classifier,
            safety,
        }
    }

    /// Counts a new call in the budget (at `now`, a clock reading the caller already made)
    /// and returns the copy of `request` for a retry, if one may follow.
    #[inline]
    pub(crate) fn start<Req: Clone>(
        &self,
        progress: &Progress,
        request: &Req,
        now: Instant,
    ) -> Option<Req>
    where
        I: RetrySafety<Req>,
    {
        self.budget.deposit_at(now);
        self.copy(progress, request)
    }

    /// The copy of `request` for another attempt after the one about to be made, or `None`
    /// when there will be none (that attempt is the last, or the request is not safe to
    /// repeat): no copy is made for nothing.
    #[inline]
    pub(crate) fn copy<Req: Clone>(&self, progress: &Progress, request: &Req) -> Option<Req>
    where
        I: RetrySafety<Req>,
    {
        (progress.attempts + 1 < self.max_attempts && self.safety.is_retry_safe(request))
            .then(|| request.clone())
    }

    /// Judges an attempt's `result`: `Some(wait)` to try again after `wait`, `None` to hand
    /// `result` to the caller. Called only for a request that got a [`copy`](Self::copy),
    /// which settled that it is safe to repeat. A retry the budget refuses turns the error
    /// into [`ResilienceError::BudgetExhausted`]. `deadline` is the call's: an attempt that
    /// could not start before it is not waited for.
    pub(crate) fn after<Res>(
        &self,
        progress: &mut Progress,
        result: &mut Result<Res, BoxError>,
        deadline: Option<Deadline>,
    ) -> Option<Duration>
    where
        C: Classifier<Res>,
    {
        progress.attempts += 1;
        let class = classify(&self.classifier, result.as_ref().map_err(|e| &**e))?;
        match self.next_delay(progress, class, deadline) {
            Decision::Stop => None,
            Decision::Wait(delay) => Some(delay),
            Decision::OutOfBudget => {
                if let Err(last) = result {
                    let last = std::mem::replace(last, ResilienceError::Throttled.boxed());
                    *result = Err(ResilienceError::BudgetExhausted { last }.boxed());
                }
                None
            }
        }
    }

    /// Decides on a failed attempt of class `class`: the wait before the next, or why not.
    fn next_delay(
        &self,
        progress: &mut Progress,
        class: ErrorClass,
        deadline: Option<Deadline>,
    ) -> Decision {
        let ErrorClass::Transient { retry_after } = class else {
            return Decision::Stop;
        };
        if progress.attempts >= self.max_attempts {
            return Decision::Stop;
        }
        let unit: f64 = rand::rng().random_range(0.0..1.0);
        let jittered = self.backoff.delay(
            progress.attempts,
            Duration::from_micros(u64::from(progress.previous_micros)),
            unit,
        );
        let delay = jittered.max(retry_after.unwrap_or(Duration::ZERO));
        let now = Instant::now();
        if let Some(deadline) = deadline
            && now + delay >= deadline.instant()
        {
            return Decision::Stop;
        }
        if !self.budget.withdraw_at(now) {
            return Decision::OutOfBudget;
        }
        progress.previous_micros = u32::try_from(jittered.as_micros()).unwrap_or(u32::MAX);
        Decision::Wait(delay)
    }
}

enum Decision {
    Stop,
    OutOfBudget,
    Wait(Duration),
}

impl<C, I, Req, Res> tower::retry::Policy<Req, Res, BoxError> for RetryPolicy<C, I>
where
    C: Classifier<Res>,
    I: RetrySafety<Req>,
    Req: Clone,
{
    // Boxed so that tower's retry future, which holds it inline, stays small on the
    // no-retry path; the allocation happens only when a retry is due.
    type Future = Pin<Box<Sleep>>;

    fn retry(
        &mut self,
        // tower asks only when `clone_request` made a copy: the request is safe to repeat.
        _request: &mut Req,
        result: &mut Result<Res, BoxError>,
    ) -> Option<Self::Future> {
        self.rules
            .after(&mut self.progress, result, Deadline::current())
            .map(|delay| Box::pin(tokio::time::sleep(delay)))
    }

    fn clone_request(&mut self, request: &Req) -> Option<Req> {
        if self.progress.attempts == 0 {
            // tower asks for the first copy in `Retry::call`, inside the total timeout's
            // `call`, whose clock reading is current: the deposit reuses it.
            let now = Deadline::current_scope().1.unwrap_or_else(Instant::now);
            return self.rules.start(&self.progress, request, now);
        }
        self.rules.copy(&self.progress, request)
    }
}

/// Adds retries with a [`RetryPolicy`]; the service it makes is tower's `Retry`.
#[derive(Debug, Clone)]
pub struct RetryLayer<C, I> {
    policy: RetryPolicy<C, I>,
}

impl<C, I> RetryLayer<C, I> {
    /// Retries per `config`, drawing on `budget`, judging results with `classifier` and
    /// requests with `safety`.
    pub fn new(config: &RetryConfig, budget: RetryBudget, classifier: C, safety: I) -> Self {
        Self {
            policy: RetryPolicy::new(config, budget, classifier, safety),
        }
    }
}

impl<S, C: Clone, I: Clone> Layer<S> for RetryLayer<C, I> {
    type Service = tower::retry::Retry<RetryPolicy<C, I>, S>;

    fn layer(&self, inner: S) -> Self::Service {
        tower::retry::Retry::new(self.policy.clone(), inner)
    }
}

#[cfg(test)]
mod tests;
