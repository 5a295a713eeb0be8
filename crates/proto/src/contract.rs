//! Rules of the contracts that every side must agree on: topic names and the shape of
//! identifiers and amounts. Each service validates its own inputs with these, so a value
//! accepted at the edge is never refused further in.

/// Topic names, before any deployment prefix.
pub mod topics {
    /// Commands for inventory: `ReserveStock`, `ReleaseStock`, `CommitStock`.
    pub const INVENTORY_COMMANDS: &str = "inventory.commands";
    /// Inventory's answers: `StockReserved`, `StockRejected`, `StockReleased`, `StockCommitted`.
    pub const INVENTORY_EVENTS: &str = "inventory.events";
    /// Commands for payments: `AuthorizePayment`, `VoidPayment`, `CapturePayment`.
    pub const PAYMENTS_COMMANDS: &str = "payments.commands";
    /// Payments' answers: `PaymentAuthorized`, `PaymentDeclined`, `PaymentVoided`, `PaymentCaptured`.
    pub const PAYMENTS_EVENTS: &str = "payments.events";
    /// Order outcomes: `OrderConfirmed`, `OrderCancelled`.
    pub const ORDERS_EVENTS: &str = "orders.events";
    /// Catalog changes, keyed by SKU: `ProductChanged`. Readers that cache the catalog
    /// invalidate on them.
    pub const CATALOG_EVENTS: &str = "catalog.events";
}

/// Longest SKU.
pub const MAX_SKU_LEN: usize = 64;

/// A SKU is 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
pub fn validate_sku(sku: &str) -> Result<(), String> {
    if sku.is_empty() {
        return Err("sku must not be empty".into());
    }
    if sku.len() > MAX_SKU_LEN {
        return Err(format!("sku must be at most {MAX_SKU_LEN} characters"));
    }
    if !sku
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("sku may only contain letters, digits, '.', '_' and '-'".into());
    }
    Ok(())
}

/// A currency is an ISO 4217 alphabetic code: three upper-case ASCII letters.
pub fn validate_currency(currency: &str) -> Result<(), String> {
    if currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(format!(
            "currency must be a three-letter ISO 4217 code such as EUR, not {currency:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skus() {
        assert!(validate_sku("LAMP-01").is_ok());
        assert!(validate_sku("a.b_c-9").is_ok());
        assert!(validate_sku("").is_err());
        assert!(validate_sku("has space").is_err());
        assert!(validate_sku("ünïcode").is_err());
        assert!(validate_sku(&"x".repeat(MAX_SKU_LEN)).is_ok());
        assert!(validate_sku(&"x".repeat(MAX_SKU_LEN + 1)).is_err());
    }

    #[test]
    fn currencies() {
        assert!(validate_currency("EUR").is_ok());
        assert!(validate_currency("eur").is_err());
        assert!(validate_currency("EURO").is_err());
        assert!(validate_currency("").is_err());
    }
}
