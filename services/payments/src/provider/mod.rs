//! The payment-service-provider (PSP) adapter: the one external dependency of payments.
//!
//! Three operations, each with an idempotency key of its own that the adapter passes through,
//! so a retried call never holds, captures or releases twice on the provider's side either:
//! [`PaymentProvider::authorize`] places a hold, [`PaymentProvider::capture`] turns it into a
//! charge, [`PaymentProvider::void`] releases it. [`SimulatedProvider`] stands in for a real
//! provider with a documented, reproducible rule; [`ResilientProvider`] is the client stack
//! in front of whichever provider is used.

mod faults;
mod resilient;
mod simulated;

use std::future::Future;

pub use faults::Faults;
pub use resilient::ResilientProvider;
pub use simulated::{OpenHold, SimulatedProvider};
use uuid::Uuid;

/// What is asked of the provider to authorize.
#[derive(Debug, Clone, Copy)]
pub struct ProviderRequest<'a> {
    /// Passed through so the provider deduplicates retries; it also names the hold in a
    /// later capture or void.
    pub idempotency_key: &'a str,
    /// The order paid for, as the merchant's reference: what the provider reports the hold
    /// under.
    pub order_id: Uuid,
    /// Minor units.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency: &'a str,
}

/// The provider's answer to an authorization.
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

/// A capture or a void of one hold.
#[derive(Debug, Clone, Copy)]
pub struct SettleRequest<'a> {
    /// This operation's own key: a retry gets the first answer and changes nothing more.
    pub idempotency_key: &'a str,
    /// The hold, named by the key its authorization was asked under. That name is known even
    /// when the authorization's answer was lost, so a void can release a hold whose
    /// reference payments never learnt (what real providers call a technical cancel).
    pub hold: &'a str,
    /// Minor units: what a capture moves, what a void expects to release.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency: &'a str,
}

/// The provider's answer to a capture or a void.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Done: the hold was captured, or released (or there was none to release).
    Done,
    /// Refused for good, with the provider's reason (a hold already released cannot be
    /// captured, a captured one cannot be released).
    Refused {
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

    /// Captures a hold: the held amount is charged.
    fn capture(
        &self,
        request: SettleRequest<'_>,
    ) -> impl Future<Output = Result<Settlement, ProviderError>> + Send;

    /// Releases a hold, or makes sure none will be placed under its key.
    fn void(
        &self,
        request: SettleRequest<'_>,
    ) -> impl Future<Output = Result<Settlement, ProviderError>> + Send;
}
