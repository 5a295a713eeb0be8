//! What is asked of payments to authorize, whichever door it came through.

use faultline_domain::{Currency, CustomerId};
use faultline_idempotency::{Fingerprint, IdempotencyKey};
use uuid::Uuid;

/// A request to hold funds for an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizeRequest {
    /// Caller-chosen key; the same key always gets the same answer.
    pub idempotency_key: String,
    /// The order being paid.
    pub order_id: Uuid,
    /// Who pays.
    pub customer_id: String,
    /// Minor units, zero or more: a free order authorizes 0, which holds nothing.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
}

impl AuthorizeRequest {
    /// Checks every field; the error names the field and the rule.
    pub fn validate(&self) -> Result<(), String> {
        // The idempotency store's own rule, and the key exactly as the store keeps it (no
        // quotes or spaces to strip): the payment row, the provider and the key table must
        // all see the same key, or a retry cannot find what the first attempt wrote.
        let key = &self.idempotency_key;
        match IdempotencyKey::parse(key) {
            Ok(parsed) if parsed.as_str() == key => {}
            Ok(_) => {
                return Err("idempotency_key must not be quoted or padded with spaces".into());
            }
            Err(error) => return Err(format!("idempotency_key: {error}")),
        }
        // Checkout's rules, from the same crate: what checkout accepted is never refused here.
        CustomerId::parse(self.customer_id.as_str()).map_err(|e| format!("customer_id: {e}"))?;
        if self.amount_minor < 0 {
            return Err("amount must not be negative".into());
        }
        Currency::parse(&self.currency)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

impl AuthorizeRequest {
    /// What makes two authorization requests the same request, whichever door (gRPC or a
    /// Kafka command) they came through.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&[
            b"authorize",
            self.order_id.as_bytes(),
            self.customer_id.as_bytes(),
            &self.amount_minor.to_be_bytes(),
            self.currency.as_bytes(),
        ])
    }
}
