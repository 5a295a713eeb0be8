//! Inventory: the product catalog and stock levels.
//!
//! - gRPC `GetProducts` and `UpsertProducts` ([`grpc`]) over the catalog ([`catalog`]).
//! - Kafka commands `ReserveStock`, `ReleaseStock`, `CommitStock` ([`commands`]) over the
//!   reservation rules ([`stock`]), each answered with an event through the outbox.
//!
//! [`run`] starts everything and returns after a graceful shutdown.

pub mod catalog;
pub mod commands;
mod config;
pub mod grpc;
pub mod stock;

pub use config::{Config, PREFIX};

use std::time::Duration;

use anyhow::Context;
use faultline_auth::{AllowedCallers, CallerAuthLayer, ServiceId};
use faultline_idempotency::Store;
use faultline_platform::grpc::{listen_mtls, mirror_readiness};
use faultline_platform::lifecycle::Lifecycle;
use faultline_platform::messaging::{Messaging, Wiring};
use faultline_proto::contract::topics;
use faultline_proto::inventory::v1::inventory_service_server::InventoryServiceServer;
use faultline_telemetry::http::HttpServerLayer;
use faultline_telemetry::metrics::Metrics;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use crate::commands::CommandHandler;
use crate::grpc::InventoryGrpc;

/// `spiffe://faultline/<name>`.
fn service_id(name: &str) -> anyhow::Result<ServiceId> {
    ServiceId::faultline(name).map_err(|e| anyhow::anyhow!("service identity {name}: {e}"))
}

/// The service's own migrations, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Runs the inventory service until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
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
        axum::Router::new(),
        &shutdown,
    )
    .await
    .context("preparing the inventory database")?;

    let keys = Store::new(life.pool.clone(), config.idempotency.clone());
    let reaper = tokio::spawn(faultline_idempotency::reaper::run(
        life.pool.clone(),
        Duration::from_secs(config.idempotency.reap_interval_secs),
        life.background(),
    ));
    let wiring = Wiring {
        service: "inventory",
        consumes: vec![topics::INVENTORY_COMMANDS],
        produces: vec![topics::INVENTORY_EVENTS, topics::CATALOG_EVENTS],
    };
    let handler = CommandHandler {
        events_topic: config.kafka.topic(topics::INVENTORY_EVENTS),
    };
    let messaging = Messaging::start(&life, &config.kafka, wiring, handler)
        .await
        .context("starting Kafka messaging")?;

    let (incoming, tls_reload) =
        listen_mtls(config.grpc_listen, &config.mtls, life.background()).await?;
    let callers = AllowedCallers::new()
        .method(
            "/faultline.inventory.v1.InventoryService/GetProducts",
            [service_id("checkout")?, service_id("operator")?],
        )
        .method(
            "/faultline.inventory.v1.InventoryService/UpsertProducts",
            [service_id("operator")?],
        )
        .service_for_any_caller("grpc.health.v1.Health");
    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<InventoryServiceServer<InventoryGrpc>>()
        .await;
    let mirror = tokio::spawn(mirror_readiness(
        life.health.clone(),
        reporter,
        "faultline.inventory.v1.InventoryService",
        life.background(),
    ));
    let grpc = Server::builder()
        .layer(HttpServerLayer::new(metrics))
        .layer(CallerAuthLayer::new(callers))
        .add_service(health_service)
        .add_service(InventoryServiceServer::new(InventoryGrpc::new(
            life.pool.clone(),
            keys,
            config.kafka.topic(topics::CATALOG_EVENTS),
        )))
        .serve_with_incoming_shutdown(incoming, life.serving().cancelled_owned());

    life.started();
    tracing::info!(listen = %config.grpc_listen, "inventory is serving gRPC over mutual TLS");
    let served = grpc.await;
    life.end(
        messaging,
        vec![
            ("idempotency reaper", reaper),
            ("grpc health", mirror),
            ("certificate reload", tls_reload),
        ],
    )
    .await;
    served.context("gRPC server failed")?;
    tracing::info!("inventory stopped");
    Ok(())
}
