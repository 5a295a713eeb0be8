//! The payment-service-provider (PSP) adapter: the one external dependency of payments.
//!
//! Real PSPs deduplicate on an idempotency key, so the adapter passes ours through and a
//! retried call can never charge twice on the provider's side either. [`SimulatedProvider`]
//! stands in for a real one with a documented, reproducible rule.

use std::future::Future;

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

/// A provider that approves every amount up to a limit and declines the rest, so both paths
/// of the saga can be triggered on purpose.
#[derive(Debug, Clone)]
pub struct SimulatedProvider {
    decline_above_minor: i64,
}

impl SimulatedProvider {
    /// Declines amounts strictly above `decline_above_minor`.
    pub fn new(decline_above_minor: i64) -> Self {
        Self {
            decline_above_minor,
        }
    }
}

impl PaymentProvider for SimulatedProvider {
    async fn authorize(
        &self,
        request: ProviderRequest<'_>,
    ) -> Result<ProviderDecision, ProviderError> {
        if request.amount_minor > self.decline_above_minor {
            Ok(ProviderDecision::Declined {
                reason: format!(
                    "amount {} {} exceeds the card's limit of {} {}",
                    two_decimals(request.amount_minor),
                    request.currency,
                    two_decimals(self.decline_above_minor),
                    request.currency
                ),
            })
        } else {
            Ok(ProviderDecision::Approved {
                reference: format!("sim-{}", request.idempotency_key),
            })
        }
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
        ProviderRequest {
            idempotency_key: "key-1",
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
}
