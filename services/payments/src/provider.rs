//! The payment-service-provider (PSP) adapter: the one external dependency of payments.
//!
//! Real PSPs deduplicate on an idempotency key, so the adapter passes ours through and a
//! retried call can never charge twice on the provider's side either. [`SimulatedProvider`]
//! stands in for a real one with a documented, reproducible rule.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// The provider could not be asked; worth retrying later with the same key.
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

    /// Authorization requests received, repeats included.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Distinct holds placed (approved authorizations under distinct keys).
    pub fn holds(&self) -> usize {
        self.decisions.lock().map_or(0, |d| {
            d.by_key
                .values()
                .filter(|d| matches!(d, ProviderDecision::Approved { .. }))
                .count()
        })
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
        let mut decisions = self
            .decisions
            .lock()
            .map_err(|_| ProviderError("simulated provider state poisoned".into()))?;
        if let Some(first) = decisions.by_key.get(request.idempotency_key) {
            return Ok(first.clone());
        }
        let decision = self.decide(request);
        let key = request.idempotency_key.to_owned();
        decisions.by_key.insert(key.clone(), decision.clone());
        decisions.order.push_back(key);
        if decisions.order.len() > REMEMBERED_KEYS
            && let Some(oldest) = decisions.order.pop_front()
        {
            decisions.by_key.remove(&oldest);
        }
        Ok(decision)
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
    async fn a_repeated_key_gets_the_first_answer_and_holds_once() {
        let provider = SimulatedProvider::new(1_000);
        let first = provider.authorize(request(500)).await.unwrap();
        let again = provider.authorize(request(500)).await.unwrap();
        assert_eq!(first, again);
        assert_eq!((provider.calls(), provider.holds()), (2, 1));
    }
}
