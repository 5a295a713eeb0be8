//! Inventory: the product catalog and stock levels.
//!
//! - gRPC `GetProducts` and `UpsertProducts` ([`grpc`]) over the catalog ([`catalog`]).
//! - Kafka commands `ReserveStock`, `ReleaseStock`, `CommitStock` ([`kafka`]) over the
//!   reservation rules ([`stock`]), each answered with an event through the outbox.
//!
//! [`run`] starts everything and returns after a graceful shutdown.

pub mod catalog;
mod config;
pub mod grpc;
pub mod kafka;
pub mod stock;

pub use config::{Config, PREFIX};

use std::time::Duration;

use anyhow::Context;
use faultline_auth::{AllowedCallers, ServiceId};
use faultline_idempotency::Store;
use faultline_platform::lifecycle::Lifecycle;
use faultline_platform::messaging::{Messaging, Wiring};
use faultline_proto::contract::topics;
use faultline_proto::inventory::v1::inventory_service_server::InventoryServiceServer;
use faultline_telemetry::metrics::Metrics;
use tokio_util::sync::CancellationToken;

use crate::grpc::InventoryGrpc;
use crate::kafka::CommandHandler;

/// `spiffe://faultline/<name>`.
fn service_id(name: &str) -> anyhow::Result<ServiceId> {
    ServiceId::faultline(name).map_err(|e| anyhow::anyhow!("service identity {name}: {e}"))
}

/// The service's own migrations, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Runs the inventory service until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut life = Lifecycle::begin(
        &config.admin,
        &config.database,
        &config.lifecycle,
        &[
            &MIGRATOR,
            &faultline_outbox::migrator(),
            &faultline_idempotency::migrator(),
        ],
        Metrics::new(),
        axum::Router::new(),
        &shutdown,
    )
    .await
    .context("preparing the inventory database")?;

    let keys = Store::new(life.pool.clone(), config.idempotency.clone());
    life.spawn(
        "idempotency reaper",
        faultline_idempotency::reaper::run(
            life.pool.clone(),
            Duration::from_secs(config.idempotency.reap_interval_secs),
            life.background(),
        ),
    );
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

    let callers = AllowedCallers::new()
        .method(
            "/faultline.inventory.v1.InventoryService/GetProducts",
            [service_id("checkout")?, service_id("operator")?],
        )
        .method(
            "/faultline.inventory.v1.InventoryService/UpsertProducts",
            [service_id("operator")?],
        );
    let service = InventoryServiceServer::new(InventoryGrpc::new(
        life.pool.clone(),
        keys,
        config.kafka.topic(topics::CATALOG_EVENTS),
    ));
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
    tracing::info!("inventory stopped");
    Ok(())
}
