//! The recommended client stack for calls to one downstream, in the recommended order.
//!
//! ```text
//! bulkhead → total timeout → retry → hedge → throttle → breaker → attempt timeout → service
//! ```
//!
//! Why this order, outermost first:
//! - **Bulkhead** outermost: a call waiting for a slot has not started its clock, and the
//!   slot is held for the whole call, retries included, so N slots really bound the load
//!   this caller puts on the downstream.
//! - **Total timeout** next: it fixes the [`Deadline`](crate::Deadline) that everything
//!   below sees; retries and backoff all happen inside it.
//! - **Retry** outside the breaker: each attempt asks the breaker, so an open breaker stops
//!   retries at once (its error is never retried), and each attempt's failure is counted.
//! - **Hedge** beside retry, drawing on the same budget: each copy goes through the breaker.
//! - **Throttle** (opt-in) just outside the breaker: it needs every attempt's outcome.
//! - **Breaker** sees attempts, not calls, and their timeouts as failures.
//! - **Attempt timeout** innermost: it bounds one attempt by the earlier of its own limit
//!   and the deadline, and hands that on to the last hop as `grpc-timeout`.
//!
//! Hedging and throttling are off unless their config enables them; a disabled layer is a
//! pass-through costing a branch.
//!
//! [`ClientStack`] is a [`Layer`] that composes the separate layers in that order, as tower
//! and linkerd2-proxy compose theirs: each layer is small, readable and testable on its own,
//! and the stack is their sum. What the composition costs per call, and what that is next to
//! a real gRPC call, is measured in `benches/overhead.rs` (ADR 0005).

use serde::{Deserialize, Serialize};
use tower::Layer;
use tower::retry::Retry;

use crate::breaker::{BreakerConfig, BreakerService, CircuitBreaker};
use crate::bulkhead::{Bulkhead, BulkheadConfig, BulkheadService};
use crate::classify::AllErrorsTransient;
use crate::hedge::{HedgeConfig, HedgeLayer, HedgeService};
use crate::retry::{Idempotent, NeverRetry, RetryBudget, RetryConfig, RetryLayer, RetryPolicy};
use crate::throttle::{AdaptiveThrottle, ThrottleConfig, ThrottleService};
use crate::timeout::{TimeoutConfig, TimeoutLayer, TimeoutService};
use faultline_settings::{SettingError, join};

/// Everything a client needs for one downstream. Embed it in a service's config, e.g. as
/// `inventory.resilience`, and every field is a variable:
/// `CHECKOUT_INVENTORY__RESILIENCE__RETRY__MAX_ATTEMPTS`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// Total and per-attempt timeouts (`..__TIMEOUT__*`).
    pub timeout: TimeoutConfig,
    /// Retries and their budget (`..__RETRY__*`).
    pub retry: RetryConfig,
    /// The circuit breaker (`..__BREAKER__*`).
    pub breaker: BreakerConfig,
    /// The bulkhead (`..__BULKHEAD__*`).
    pub bulkhead: BulkheadConfig,
    /// Hedging, off by default (`..__HEDGE__*`).
    pub hedge: HedgeConfig,
    /// Adaptive throttling, off by default (`..__THROTTLE__*`).
    pub throttle: ThrottleConfig,
}

impl ClientConfig {
    /// Validates every part; `path` is this struct's own variable prefix, such as
    /// `CHECKOUT_INVENTORY__RESILIENCE`.
    pub fn validate(&self, path: &str) -> Result<(), SettingError> {
        self.timeout.validate(&join(path, "TIMEOUT"))?;
        self.retry.validate(&join(path, "RETRY"))?;
        self.breaker.validate(&join(path, "BREAKER"))?;
        self.bulkhead.validate(&join(path, "BULKHEAD"))?;
        self.hedge.validate(&join(path, "HEDGE"))?;
        self.throttle.validate(&join(path, "THROTTLE"))
    }
}

/// The composed client stack for one downstream; see the module docs. Build one per
/// downstream at start, keep it (it owns the shared breaker, bulkhead, budget and
/// throttle), and apply it as a [`Layer`] to the service that makes the call.
#[derive(Debug, Clone)]
pub struct ClientStack<C = AllErrorsTransient, I = NeverRetry> {
    config: ClientConfig,
    classifier: C,
    safety: I,
    bulkhead: Bulkhead,
    budget: RetryBudget,
    breaker: CircuitBreaker,
    throttle: AdaptiveThrottle,
    hedge: HedgeLayer<I>,
}

impl ClientStack {
    /// The stack for the downstream `name` (it names the breaker and bulkhead in errors,
    /// logs and events). Judges every error transient and retries nothing until told
    /// otherwise ([`ClientStack::classifier`], [`ClientStack::idempotent`],
    /// [`ClientStack::retry_safety`]).
    ///
    /// Validates `config` (services should also validate it at start with their full
    /// variable prefix, which names the setting exactly).
    pub fn new(name: &str, config: &ClientConfig) -> Result<Self, SettingError> {
        config.validate("")?;
        let budget = RetryBudget::new(&config.retry);
        Ok(Self {
            config: config.clone(),
            classifier: AllErrorsTransient,
            safety: NeverRetry,
            bulkhead: Bulkhead::new(name, &config.bulkhead),
            breaker: CircuitBreaker::new(name, &config.breaker),
            throttle: AdaptiveThrottle::new(&config.throttle),
            hedge: HedgeLayer::new(&config.hedge, budget.clone(), NeverRetry),
            budget,
        })
    }
}

impl<C, I> ClientStack<C, I> {
    /// Judge results with `classifier` (e.g. `GrpcClassifier`).
    pub fn classifier<C2>(self, classifier: C2) -> ClientStack<C2, I> {
        ClientStack {
            config: self.config,
            classifier,
            safety: self.safety,
            bulkhead: self.bulkhead,
            budget: self.budget,
            breaker: self.breaker,
            throttle: self.throttle,
            hedge: self.hedge,
        }
    }

    /// Decide per request whether it may be retried or hedged (e.g.
    /// `RetryIf(|p: &Payment| p.idempotency_key.is_some())`).
    pub fn retry_safety<I2: Clone>(self, safety: I2) -> ClientStack<C, I2> {
        ClientStack {
            hedge: HedgeLayer::new(&self.config.hedge, self.budget.clone(), safety.clone()),
            config: self.config,
            classifier: self.classifier,
            safety,
            bulkhead: self.bulkhead,
            budget: self.budget,
            breaker: self.breaker,
            throttle: self.throttle,
        }
    }

    /// Every request may be retried or hedged (reads).
    pub fn idempotent(self) -> ClientStack<C, Idempotent> {
        self.retry_safety(Idempotent)
    }

    /// The downstream's breaker: subscribe to its events, read its metrics, force it.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// The downstream's bulkhead.
    pub fn bulkhead(&self) -> &Bulkhead {
        &self.bulkhead
    }

    /// The retry budget shared by retries and hedges.
    pub fn budget(&self) -> &RetryBudget {
        &self.budget
    }

    /// The adaptive throttle (a pass-through unless enabled).
    pub fn throttle(&self) -> &AdaptiveThrottle {
        &self.throttle
    }

    /// The settings it was built with.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }
}

/// The service a [`ClientStack`] makes of `S`: the layers of the module docs, outermost
/// first.
pub type ClientService<S, C, I> = BulkheadService<
    TimeoutService<
        Retry<
            RetryPolicy<C, I>,
            HedgeService<ThrottleService<BreakerService<TimeoutService<S>, C>, C>, I>,
        >,
    >,
>;

impl<S, C: Clone, I: Clone> Layer<S> for ClientStack<C, I> {
    type Service = ClientService<S, C, I>;

    fn layer(&self, inner: S) -> Self::Service {
        let attempt = TimeoutLayer::per_attempt(self.config.timeout.attempt()).layer(inner);
        let breaker = self.breaker.layer(self.classifier.clone()).layer(attempt);
        let throttle = self.throttle.layer(self.classifier.clone()).layer(breaker);
        let hedge = self.hedge.layer(throttle);
        let retry = RetryLayer::new(
            &self.config.retry,
            self.budget.clone(),
            self.classifier.clone(),
            self.safety.clone(),
        )
        .layer(hedge);
        let total = TimeoutLayer::total(self.config.timeout.total()).layer(retry);
        self.bulkhead.layer(total)
    }
}
