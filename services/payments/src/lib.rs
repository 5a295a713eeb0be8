//! Payments: authorizes, captures and voids payments.
//!
//! - gRPC `Authorize` ([`grpc`]) and Kafka commands `AuthorizePayment`, `VoidPayment`,
//!   `CapturePayment` ([`kafka`]) share the rules in [`payments`].
//! - [`provider`] is the adapter to the payment service provider (authorize, capture, void,
//!   each with its own idempotency key); today a simulated one that keeps real holds and
//!   declines amounts above a configured limit.
//! - Whatever asks the provider holds no database connection while it waits, whichever door
//!   it came through ([`kafka`] explains how the Kafka door manages that).
//!
//! [`run`] starts everything and returns after a graceful shutdown.

pub mod admin;
mod config;
pub mod grpc;
pub mod kafka;
mod keyed;
pub mod payments;
pub mod provider;
mod request;
mod settle;
mod stored;

pub use config::{Config, PREFIX, ProviderSettings};

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use faultline_auth::{AllowedCallers, ServiceId};
use faultline_idempotency::Store;
use faultline_platform::lifecycle::Lifecycle;
use faultline_platform::messaging::{Messaging, Wiring};
use faultline_proto::contract::topics;
use faultline_proto::payments::v1::payments_service_server::PaymentsServiceServer;
use faultline_telemetry::metrics::Metrics;
use tokio_util::sync::CancellationToken;

use crate::grpc::PaymentsGrpc;
use crate::kafka::CommandHandler;
use crate::provider::{ResilientProvider, SimulatedProvider};

/// `spiffe://faultline/<name>`.
fn service_id(name: &str) -> anyhow::Result<ServiceId> {
    ServiceId::faultline(name).map_err(|e| anyhow::anyhow!("service identity {name}: {e}"))
}

/// The service's own migrations, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Runs the payments service until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let simulated = Arc::new(SimulatedProvider::new(config.provider.decline_above_minor));
    simulated.set_faults(config.provider.faults);
    let metrics = Metrics::new();
    let mut life = Lifecycle::begin(
        &config.admin,
        &config.database,
        &config.lifecycle,
        &[
            &MIGRATOR,
            &faultline_outbox::migrator(),
            &faultline_idempotency::migrator(),
        ],
        metrics.clone(),
        admin::routes(simulated.clone()),
        &shutdown,
    )
    .await
    .context("preparing the payments database")?;

    let keys = Store::new(life.pool.clone(), config.idempotency.clone());
    life.spawn(
        "idempotency reaper",
        faultline_idempotency::reaper::run(
            life.pool.clone(),
            Duration::from_secs(config.idempotency.reap_interval_secs),
            life.background(),
        ),
    );
    let provider = Arc::new(
        ResilientProvider::new(simulated.clone(), &config.provider.resilience)
            .context("payment provider client")?,
    );
    let breaker_log = faultline_platform::breakers::observe(
        "payment-provider",
        provider.breaker(),
        &metrics,
        life.background(),
    );
    life.track("breaker log", breaker_log);
    let wiring = Wiring {
        service: "payments",
        consumes: vec![topics::PAYMENTS_COMMANDS],
        produces: vec![topics::PAYMENTS_EVENTS],
    };
    let handler = CommandHandler::new(
        config.kafka.topic(topics::PAYMENTS_EVENTS),
        provider.clone(),
        life.pool.clone(),
        keys.clone(),
    );
    let messaging = Messaging::start(&life, &config.kafka, wiring, handler)
        .await
        .context("starting Kafka messaging")?;

    // Only checkout places holds, for the orders it takes; the operator reads, and a hold it
    // placed would belong to no order and never be voided or captured.
    let callers = AllowedCallers::new().method(
        "/faultline.payments.v1.PaymentsService/Authorize",
        [service_id("checkout")?],
    );
    let service = PaymentsServiceServer::new(PaymentsGrpc::new(life.pool.clone(), provider, keys));
    let served = faultline_platform::grpc::serve(
        &mut life,
        config.grpc_listen,
        &config.mtls,
        callers,
        service,
    )
    .await;
    life.end(messaging).await;
    served?;
    tracing::info!("payments stopped");
    Ok(())
}
