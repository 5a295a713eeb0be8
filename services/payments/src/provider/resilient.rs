//! The provider behind the client stack of `faultline-resilience`: a deadline, retries
//! within a budget that reuse the idempotency key, and one circuit breaker for the three
//! operations, since they all reach the same provider.

use std::sync::Arc;

use faultline_resilience::{CircuitBreaker, ClientConfig, ClientStack, RetryIf};
use faultline_settings::SettingError;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Layer, ServiceExt, service_fn};
use uuid::Uuid;

use super::{
    PaymentProvider, ProviderDecision, ProviderError, ProviderRequest, SettleRequest, Settlement,
};

/// One call to the provider, owned and cloneable so that a retry repeats it exactly,
/// idempotency key included.
#[derive(Debug, Clone)]
enum ProviderCall {
    /// An authorization.
    Authorize {
        /// The key, reused by every retry.
        idempotency_key: String,
        /// The order paid for.
        order_id: Uuid,
        /// Minor units.
        amount_minor: i64,
        /// ISO 4217 code.
        currency: String,
    },
    /// A capture of the hold named `hold`.
    Capture(OwnedSettle),
    /// A void of the hold named `hold`.
    Void(OwnedSettle),
}

/// An owned [`SettleRequest`].
#[derive(Debug, Clone)]
struct OwnedSettle {
    idempotency_key: String,
    hold: String,
    amount_minor: i64,
    currency: String,
}

impl From<SettleRequest<'_>> for OwnedSettle {
    fn from(request: SettleRequest<'_>) -> Self {
        Self {
            idempotency_key: request.idempotency_key.to_owned(),
            hold: request.hold.to_owned(),
            amount_minor: request.amount_minor,
            currency: request.currency.to_owned(),
        }
    }
}

impl OwnedSettle {
    fn borrowed(&self) -> SettleRequest<'_> {
        SettleRequest {
            idempotency_key: &self.idempotency_key,
            hold: &self.hold,
            amount_minor: self.amount_minor,
            currency: &self.currency,
        }
    }
}

impl ProviderCall {
    fn idempotency_key(&self) -> &str {
        match self {
            Self::Authorize {
                idempotency_key, ..
            } => idempotency_key,
            Self::Capture(settle) | Self::Void(settle) => &settle.idempotency_key,
        }
    }
}

/// What the provider answered to a [`ProviderCall`].
#[derive(Debug)]
enum Answer {
    Decision(ProviderDecision),
    Settlement(Settlement),
}

type Call = BoxCloneSyncService<ProviderCall, Answer, BoxError>;

/// A provider behind the client stack: what payments actually calls.
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
        // Only calls that carry a key are retried: without one a retry could act twice.
        let stack = ClientStack::new("payment-provider", config)?.retry_safety(RetryIf(
            |call: &ProviderCall| !call.idempotency_key().is_empty(),
        ));
        let breaker = stack.breaker().clone();
        let call = stack.layer(service_fn(move |call: ProviderCall| {
            let inner = inner.clone();
            async move {
                let answer = match &call {
                    ProviderCall::Authorize {
                        idempotency_key,
                        order_id,
                        amount_minor,
                        currency,
                    } => inner
                        .authorize(ProviderRequest {
                            idempotency_key,
                            order_id: *order_id,
                            amount_minor: *amount_minor,
                            currency,
                        })
                        .await
                        .map(Answer::Decision),
                    ProviderCall::Capture(settle) => inner
                        .capture(settle.borrowed())
                        .await
                        .map(Answer::Settlement),
                    ProviderCall::Void(settle) => {
                        inner.void(settle.borrowed()).await.map(Answer::Settlement)
                    }
                };
                answer.map_err(BoxError::from)
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

    async fn send(&self, call: ProviderCall) -> Result<Answer, ProviderError> {
        self.call
            .clone()
            .oneshot(call)
            .await
            .map_err(|error| ProviderError(error.to_string()))
    }

    async fn settle(&self, call: ProviderCall) -> Result<Settlement, ProviderError> {
        match self.send(call).await? {
            Answer::Settlement(settlement) => Ok(settlement),
            Answer::Decision(_) => Err(mismatched()),
        }
    }
}

/// The stack answers each call with its own operation's answer; anything else is a bug here.
fn mismatched() -> ProviderError {
    ProviderError("the provider client mixed up two operations' answers".into())
}

impl PaymentProvider for ResilientProvider {
    async fn authorize(
        &self,
        request: ProviderRequest<'_>,
    ) -> Result<ProviderDecision, ProviderError> {
        let call = ProviderCall::Authorize {
            idempotency_key: request.idempotency_key.to_owned(),
            order_id: request.order_id,
            amount_minor: request.amount_minor,
            currency: request.currency.to_owned(),
        };
        match self.send(call).await? {
            Answer::Decision(decision) => Ok(decision),
            Answer::Settlement(_) => Err(mismatched()),
        }
    }

    async fn capture(&self, request: SettleRequest<'_>) -> Result<Settlement, ProviderError> {
        self.settle(ProviderCall::Capture(request.into())).await
    }

    async fn void(&self, request: SettleRequest<'_>) -> Result<Settlement, ProviderError> {
        self.settle(ProviderCall::Void(request.into())).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{Faults, SimulatedProvider};

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
                    order_id: Uuid::now_v7(),
                    amount_minor: 500,
                    currency: "EUR",
                })
                .await
                .unwrap();
            assert!(matches!(decision, ProviderDecision::Approved { .. }));
            let captured = provider
                .capture(SettleRequest {
                    idempotency_key: &format!("{key}:capture"),
                    hold: &key,
                    amount_minor: 500,
                    currency: "EUR",
                })
                .await
                .unwrap();
            assert_eq!(captured, Settlement::Done);
        }
        assert_eq!(inner.holds(), 20, "one hold per key");
        assert_eq!(inner.captures(), 20, "one capture per hold");
        assert!(inner.calls() > 20, "failures were retried");
    }
}
