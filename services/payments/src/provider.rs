//! The payment-service-provider (PSP) adapter: the one external dependency of payments.
//!
//! Real PSPs deduplicate on an idempotency key, so the adapter passes ours through and a
//! retried call can never charge twice on the provider's side either. [`SimulatedProvider`]
//! stands in for a real one with a documented, reproducible rule.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use faultline_resilience::{CircuitBreaker, ClientConfig, ClientStack, RetryIf};
use faultline_settings::SettingError;
use rand::RngExt;
use serde::{Deserialize, Serialize};
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Layer, ServiceExt, service_fn};

/// What is asked of the provider.
#[derive(Debug, Clone, Copy)]
pub struct ProviderRequest<'a> {
    /// Passed through so the provider deduplicates retries.
    pub idempotency_key: &'a str,
    /// Minor units.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency: &'a str,
}

/// The provider's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderDecision {
    /// Funds are held; `reference` identifies the hold at the provider.
    Approved {
        /// Provider's reference.
        reference: String,
    },
    /// Refused, with the provider's reason.
    Declined {
        /// Why.
        reason: String,
    },
}

/// The provider could not be asked, or its answer was lost; worth retrying later with the
/// same key.
#[derive(Debug, thiserror::Error)]
#[error("payment provider unavailable: {0}")]
pub struct ProviderError(pub String);

/// A payment service provider.
pub trait PaymentProvider: Send + Sync {
    /// Asks for an authorization (a hold of funds).
    fn authorize(
        &self,
        request: ProviderRequest<'_>,
    ) -> impl Future<Output = Result<ProviderDecision, ProviderError>> + Send;
}

/// How many keys the simulated provider remembers, oldest forgotten first. Real providers
/// keep keys for a day or so; this bounds the simulation's memory.
const REMEMBERED_KEYS: usize = 100_000;

/// A provider that approves every amount up to a limit and declines the rest, so both paths
/// of the saga can be triggered on purpose. Like a real provider it answers a repeated
/// idempotency key with its first answer, holding funds once.
#[derive(Debug, Default)]
pub struct SimulatedProvider {
    decline_above_minor: i64,
    decisions: Mutex<Decisions>,
    calls: AtomicU64,
    holds_placed: AtomicU64,
    faults: Mutex<Faults>,
}

/// Trouble the simulated provider makes, changeable while it runs (payments' admin port
/// serves `GET` and `PUT /provider`), so timeouts, retries and the breaker have something
/// real to face.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Added to every call.
    pub latency_ms: u64,
    /// Fraction of calls that fail, 0 to 1. Half of the failures happen after the provider
    /// decided (the answer is lost on the way back), which is what makes reusing the
    /// idempotency key on retry matter.
    pub failure_rate: f64,
}

impl Faults {
    /// Checks the ranges; `path` is the section's variable prefix.
    pub fn validate(&self, path: &str) -> Result<(), SettingError> {
        if !(0.0..=1.0).contains(&self.failure_rate) {
            return Err(SettingError::new(
                path,
                "FAILURE_RATE",
                "must be between 0 and 1",
            ));
        }
        if self.latency_ms > 60_000 {
            return Err(SettingError::new(
                path,
                "LATENCY_MS",
                "must be at most 60000",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Decisions {
    by_key: HashMap<String, ProviderDecision>,
    order: VecDeque<String>,
}

impl SimulatedProvider {
    /// Declines amounts strictly above `decline_above_minor`.
    pub fn new(decline_above_minor: i64) -> Self {
        Self {
            decline_above_minor,
            ..Self::default()
        }
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.faults.lock().map(|f| *f).unwrap_or_default()
    }

    /// Changes the faults (already validated).
    pub fn set_faults(&self, faults: Faults) {
        if let Ok(mut current) = self.faults.lock() {
            *current = faults;
        }
    }

    /// Authorization requests received, repeats included.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Holds placed: calls that approved afresh and so held funds. Counted where the hold is
    /// made, not from the keys remembered, so a repeat that held again (the dedupe broken)
    /// shows up here as a second hold instead of hiding behind its key.
    pub fn holds(&self) -> u64 {
        self.holds_placed.load(Ordering::Relaxed)
    }

    fn decide(&self, request: ProviderRequest<'_>) -> ProviderDecision {
        if request.amount_minor > self.decline_above_minor {
            ProviderDecision::Declined {
                reason: format!(
                    "amount {} {} exceeds the card's limit of {} {}",
                    two_decimals(request.amount_minor),
                    request.currency,
                    two_decimals(self.decline_above_minor),
                    request.currency
                ),
            }
        } else {
            ProviderDecision::Approved {
                reference: format!("sim-{}", request.idempotency_key),
            }
        }
    }
}

impl PaymentProvider for SimulatedProvider {
    async fn authorize(
        &self,
        request: ProviderRequest<'_>,
    ) -> Result<ProviderDecision, ProviderError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let faults = self.faults();
        if faults.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
        }
        let (fails, after_deciding) = {
            let mut rng = rand::rng();
            (
                faults.failure_rate > 0.0 && rng.random::<f64>() < faults.failure_rate,
                rng.random::<bool>(),
            )
        };
        if fails && !after_deciding {
            return Err(ProviderError("simulated outage: request refused".into()));
        }
        let decision = {
            let mut decisions = self
                .decisions
                .lock()
                .map_err(|_| ProviderError("simulated provider state poisoned".into()))?;
            match decisions.by_key.get(request.idempotency_key) {
                Some(first) => first.clone(),
                None => {
                    let decision = self.decide(request);
                    if matches!(decision, ProviderDecision::Approved { .. }) {
                        self.holds_placed.fetch_add(1, Ordering::Relaxed);
                    }
                    let key = request.idempotency_key.to_owned();
                    decisions.by_key.insert(key.clone(), decision.clone());
                    decisions.order.push_back(key);
                    if decisions.order.len() > REMEMBERED_KEYS
                        && let Some(oldest) = decisions.order.pop_front()
                    {
                        decisions.by_key.remove(&oldest);
                    }
                    decision
                }
            }
        };
        if fails {
            return Err(ProviderError(
                "simulated outage: answer lost after deciding".into(),
            ));
        }
        Ok(decision)
    }
}

/// An owned authorization request, cloneable so that a retry repeats it exactly, idempotency
/// key included.
#[derive(Debug, Clone)]
pub struct AuthorizeCall {
    /// The key, reused by every retry.
    pub idempotency_key: String,
    /// Minor units.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
}

type Call = BoxCloneSyncService<AuthorizeCall, ProviderDecision, BoxError>;

/// A provider behind the client stack of `faultline-resilience` (deadline, retries within a
/// budget that reuse the idempotency key, a circuit breaker): what payments actually calls.
#[derive(Debug, Clone)]
pub struct ResilientProvider {
    call: Call,
    breaker: CircuitBreaker,
}

impl ResilientProvider {
    /// Wraps `inner` with the stack configured by `config`.
    pub fn new<P: PaymentProvider + 'static>(
        inner: Arc<P>,
        config: &ClientConfig,
    ) -> Result<Self, SettingError> {
        // Only requests that carry a key are retried: without one a retry could hold twice.
        let stack = ClientStack::new("payment-provider", config)?.retry_safety(RetryIf(
            |call: &AuthorizeCall| !call.idempotency_key.is_empty(),
        ));
        let breaker = stack.breaker().clone();
        let call = stack.layer(service_fn(move |call: AuthorizeCall| {
            let inner = inner.clone();
            async move {
                inner
                    .authorize(ProviderRequest {
                        idempotency_key: &call.idempotency_key,
                        amount_minor: call.amount_minor,
                        currency: &call.currency,
                    })
                    .await
                    .map_err(BoxError::from)
            }
        }));
        Ok(Self {
            call: BoxCloneSyncService::new(call),
            breaker,
        })
    }

    /// The breaker in front of the provider.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }
}

impl PaymentProvider for ResilientProvider {
    async fn authorize(
        &self,
        request: ProviderRequest<'_>,
    ) -> Result<ProviderDecision, ProviderError> {
        let call = AuthorizeCall {
            idempotency_key: request.idempotency_key.to_owned(),
            amount_minor: request.amount_minor,
            currency: request.currency.to_owned(),
        };
        self.call
            .clone()
            .oneshot(call)
            .await
            .map_err(|error| ProviderError(error.to_string()))
    }
}

/// Renders minor units with two decimals, as the demo currencies use. Only for messages.
fn two_decimals(minor: i64) -> String {
    format!("{}.{:02}", minor / 100, (minor % 100).abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(amount_minor: i64) -> ProviderRequest<'static> {
        let key = if amount_minor > 1_000 {
            "key-high"
        } else {
            "key-low"
        };
        ProviderRequest {
            idempotency_key: key,
            amount_minor,
            currency: "EUR",
        }
    }

    #[tokio::test]
    async fn approves_up_to_the_limit_and_declines_above_it() {
        let provider = SimulatedProvider::new(1_000);
        assert!(matches!(
            provider.authorize(request(1_000)).await.unwrap(),
            ProviderDecision::Approved { .. }
        ));
        let ProviderDecision::Declined { reason } =
            provider.authorize(request(1_001)).await.unwrap()
        else {
            panic!("expected a decline");
        };
        assert_eq!(
            reason,
            "amount 10.01 EUR exceeds the card's limit of 10.00 EUR"
        );
    }

    #[tokio::test]
    async fn faults_refuse_or_lose_answers_but_never_hold_twice() {
        let provider = SimulatedProvider::new(1_000);
        provider.set_faults(Faults {
            latency_ms: 0,
            failure_rate: 1.0,
        });
        for _ in 0..20 {
            assert!(provider.authorize(request(500)).await.is_err());
        }
        assert!(
            provider.holds() <= 1,
            "lost answers still hold once per key"
        );
        provider.set_faults(Faults::default());
        assert!(provider.authorize(request(500)).await.is_ok());
        assert_eq!(provider.holds(), 1);
    }

    #[tokio::test]
    async fn a_resilient_provider_retries_with_the_same_key_until_it_gets_through() {
        let inner = Arc::new(SimulatedProvider::new(1_000));
        inner.set_faults(Faults {
            latency_ms: 0,
            failure_rate: 0.5,
        });
        let mut config = ClientConfig::default();
        // At a 50 % failure rate a key fails for good with probability 2^-attempts: with
        // 10 attempts this test would fail one run in fifty; with 30, never in practice.
        config.retry.max_attempts = 30;
        config.retry.initial_backoff_ms = 1;
        config.retry.max_backoff_ms = 2;
        config.breaker.minimum_calls = 1_000;
        config.breaker.window_size = 1_000;
        let provider = ResilientProvider::new(inner.clone(), &config).unwrap();
        for i in 0..20 {
            let key = format!("key-{i}");
            let decision = provider
                .authorize(ProviderRequest {
                    idempotency_key: &key,
                    amount_minor: 500,
                    currency: "EUR",
                })
                .await
                .unwrap();
            assert!(matches!(decision, ProviderDecision::Approved { .. }));
        }
        assert_eq!(inner.holds(), 20, "one hold per key");
        assert!(inner.calls() > 20, "failures were retried");
    }

    #[tokio::test]
    async fn a_repeated_key_gets_the_first_answer_and_holds_once() {
        let provider = SimulatedProvider::new(1_000);
        let first = provider.authorize(request(500)).await.unwrap();
        let again = provider.authorize(request(500)).await.unwrap();
        assert_eq!(first, again);
        assert_eq!((provider.calls(), provider.holds()), (2, 1));
    }
}
