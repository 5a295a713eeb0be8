//! What every side of a Kafka contract must agree on: the topic names. The shape of the
//! values in the messages (SKUs, customers, money) is `faultline-domain`'s, which every
//! service parses with.

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
