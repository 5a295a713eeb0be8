//! Payments: authorizes, captures and voids payments.
//!
//! - gRPC `Authorize` ([`grpc`]) and Kafka commands `AuthorizePayment`, `VoidPayment`,
//!   `CapturePayment` ([`commands`]) share the rules in [`payments`].
//! - [`provider`] is the adapter to the payment service provider (authorize, capture, void,
//!   each with its own idempotency key); today a simulated one that keeps real holds and
//!   declines amounts above a configured limit.
//! - Whatever asks the provider holds no database connection while it waits, whichever door
//!   it came through ([`commands`] explains how the Kafka door manages that).
//!
//! [`run`] starts everything and returns after a graceful shutdown.

pub mod admin;
pub mod commands;
mod config;
pub mod grpc;
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
use faultline_auth::{AllowedCallers, CallerAuthLayer, ServiceId};
use faultline_idempotency::Store;
use faultline_platform::grpc::{listen_mtls, mirror_readiness};
use faultline_platform::lifecycle::Lifecycle;
use faultline_platform::messaging::{Messaging, Wiring};
use faultline_proto::contract::topics;
use faultline_proto::payments::v1::payments_service_server::PaymentsServiceServer;
use faultline_telemetry::http::HttpServerLayer;
use faultline_telemetry::metrics::Metrics;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use crate::commands::CommandHandler;
use crate::grpc::PaymentsGrpc;
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
    let life = Lifecycle::begin(
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
    let reaper = tokio::spawn(faultline_idempotency::reaper::run(
        life.pool.clone(),
        Duration::from_secs(config.idempotency.reap_interval_secs),
        life.background(),
    ));
    let provider = Arc::new(
        ResilientProvider::new(simulated.clone(), &config.provider.resilience)
            .context("payment provider client")?,
    );
    let breaker = faultline_platform::breakers::observe(
        "payment-provider",
        provider.breaker(),
        &metrics,
        life.background(),
    );
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

    let (incoming, tls_reload) =
        listen_mtls(config.grpc_listen, &config.mtls, life.background()).await?;
    // Only checkout places holds, for the orders it takes; the operator reads, and a hold it
    // placed would belong to no order and never be voided or captured.
    let callers = AllowedCallers::new()
        .method(
            "/faultline.payments.v1.PaymentsService/Authorize",
            [service_id("checkout")?],
        )
        .service_for_any_caller("grpc.health.v1.Health");
    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<PaymentsServiceServer<PaymentsGrpc<ResilientProvider>>>()
        .await;
    let mirror = tokio::spawn(mirror_readiness(
        life.health.clone(),
        reporter,
        "faultline.payments.v1.PaymentsService",
        life.background(),
    ));
    let grpc = Server::builder()
        .layer(HttpServerLayer::new(metrics))
        .layer(CallerAuthLayer::new(callers))
        .add_service(health_service)
        .add_service(PaymentsServiceServer::new(PaymentsGrpc::new(
            life.pool.clone(),
            provider,
            keys,
        )))
        .serve_with_incoming_shutdown(incoming, life.serving().cancelled_owned());

    life.started();
    tracing::info!(listen = %config.grpc_listen, "payments is serving gRPC over mutual TLS");
    let served = grpc.await;
    life.end(
        messaging,
        vec![
            ("idempotency reaper", reaper),
            ("grpc health", mirror),
            ("breaker log", breaker),
            ("certificate reload", tls_reload),
        ],
    )
    .await;
    served.context("gRPC server failed")?;
    tracing::info!("payments stopped");
    Ok(())
}
