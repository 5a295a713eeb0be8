//! The values every Faultline service agrees on, each parsed once where it enters a service
//! (an HTTP body, a gRPC request, a Kafka message, the catalog seed) into a type that cannot
//! hold a bad value. Code further in takes these types, so it never checks a SKU or a
//! currency again, and a value one service accepts is never refused by the next: they all
//! parse with the same rules.
//!
//! - [`Sku`]: a product's id.
//! - [`CustomerId`]: who orders and pays (the token's subject).
//! - [`Currency`] and [`Money`]: minor units in one currency, added only with checks.

#![warn(missing_docs)]

mod customer;
mod money;
mod sku;

pub use customer::CustomerId;
pub use money::{Currency, Money, MoneyError};
pub use sku::Sku;

/// A value that breaks its type's rule; the message names the field and the rule, fit to
/// show to whoever sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(String);

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
