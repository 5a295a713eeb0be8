//! Faultline's wire contracts: the gRPC services and the Kafka messages of the order saga,
//! generated from `proto/` at build time, plus [`envelope`] helpers that wrap a typed message
//! into the [`messaging::v1::Envelope`] every Kafka record carries.
//!
//! Generated code is kept in modules that mirror the protobuf packages, so
//! `faultline.inventory.v1.ReserveStock` is `faultline_proto::inventory::v1::ReserveStock`.

#![warn(missing_docs)]

pub mod contract;
pub mod envelope;

/// Value types shared by all contracts.
pub mod common {
    /// Version 1 of the shared value types.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/faultline.common.v1.rs"));
    }
}

/// The message envelope.
pub mod messaging {
    /// Version 1 of the envelope.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/faultline.messaging.v1.rs"));
    }
}

/// Inventory's gRPC service and its Kafka commands and events.
pub mod inventory {
    /// Version 1 of the inventory contract.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/faultline.inventory.v1.rs"));
    }
}

/// Payments' gRPC service and its Kafka commands and events.
pub mod payments {
    /// Version 1 of the payments contract.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/faultline.payments.v1.rs"));
    }
}

/// Order lifecycle events published by checkout.
pub mod orders {
    /// Version 1 of the order events.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/faultline.orders.v1.rs"));
    }
}

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
