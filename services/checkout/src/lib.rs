//! Checkout: the public order API and the orchestrator of the order saga.
//!
//! - [`http`]: `POST /v1/orders` (with a required `Idempotency-Key`) and
//!   `GET /v1/orders/{id}` (axum); [`admission`] refuses new orders while the saga pipeline
//!   is full.
//! - [`orders`]: placing (parse, price with [`pricing`], store, start the saga) and reading
//!   orders.
//! - [`catalog`]: product lookups against inventory over gRPC; [`catalog_cache`] puts a
//!   Redis cache in front, invalidated by inventory's `ProductChanged` events.
//! - [`saga`]: the saga as a pure state machine; [`orchestrator`] runs it against the
//!   database and the outbox; [`kafka`] feeds it the participants' answers from Kafka.
//!
//! [`run`] starts everything and returns after a graceful shutdown.

pub mod admission;
pub mod catalog;
pub mod catalog_cache;
mod config;
pub mod http;
pub mod kafka;
pub mod orchestrator;
pub mod orders;
pub mod pricing;
pub mod saga;

pub use config::{Config, InventoryClientSettings, PREFIX, SagaSettings};

use std::time::Duration;

use anyhow::Context;
use faultline_auth::{ClientTls, JwtVerifier, Policy, ServiceId};
use faultline_cache::Cache;
use faultline_idempotency::{IdempotencyConfig, Store};
use faultline_platform::lifecycle::Lifecycle;
use faultline_platform::messaging::{Messaging, Wiring};
use faultline_proto::contract::topics;
use faultline_telemetry::metrics::Metrics;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::catalog::{CatalogItem, GrpcCatalog};
use crate::catalog_cache::{CATALOG_CACHE_VERSION, CachedCatalog};
use crate::http::AppState;
use crate::kafka::EventHandler;
use crate::orchestrator::{Orchestrator, SagaMetrics, Topics};

/// The service's own migrations, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Runs checkout until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
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
        axum::Router::new(),
        &shutdown,
    )
    .await
    .context("preparing the checkout database")?;
    let pool = life.pool.clone();
    let idempotency = Store::new(
        pool.clone(),
        IdempotencyConfig {
            max_body_bytes: config.max_body_bytes,
            ..config.idempotency.clone()
        },
    );
    life.spawn(
        "idempotency reaper",
        faultline_idempotency::reaper::run(
            pool.clone(),
            Duration::from_secs(config.idempotency.reap_interval_secs),
            life.background(),
        ),
    );

    let kafka = &config.kafka;
    let orchestrator = Orchestrator::new(
        Topics {
            inventory_commands: kafka.topic(topics::INVENTORY_COMMANDS),
            payments_commands: kafka.topic(topics::PAYMENTS_COMMANDS),
            orders_events: kafka.topic(topics::ORDERS_EVENTS),
        },
        config.saga.step_timeout(),
        config.saga.max_attempts,
        SagaMetrics::register(&metrics),
    );
    let (verifier, policy, tls) = credentials(&config, &mut life).await?;

    let catalog = catalog(&config, &tls, &mut life).await?;

    let wiring = Wiring {
        service: "checkout",
        consumes: vec![
            topics::INVENTORY_EVENTS,
            topics::PAYMENTS_EVENTS,
            topics::CATALOG_EVENTS,
        ],
        produces: vec![
            topics::INVENTORY_COMMANDS,
            topics::PAYMENTS_COMMANDS,
            topics::ORDERS_EVENTS,
        ],
    };
    let handler = EventHandler {
        orchestrator: orchestrator.clone(),
        catalog: catalog.clone(),
    };
    let messaging = Messaging::start(&life, kafka, wiring, handler)
        .await
        .context("starting Kafka messaging")?;
    life.spawn(
        "deadline sweeper",
        sweep_deadlines(
            pool.clone(),
            orchestrator.clone(),
            Duration::from_millis(config.saga.sweep_interval_ms),
            life.background(),
        ),
    );

    let admission = Admission::new(config.admission.clone());
    metrics.register_collector(admission.collector());
    life.spawn(
        "admission sampler",
        admission.clone().sample(pool.clone(), life.background()),
    );
    let state = AppState {
        pool: pool.clone(),
        catalog,
        orchestrator,
        policy,
        admission,
    };
    let app = http::router(
        state,
        idempotency,
        http::Limits {
            max_body_bytes: config.max_body_bytes,
            edge: &config.edge,
        },
        verifier,
        metrics,
    );
    let served = faultline_platform::http::serve(&life, config.http_listen, app).await;

    life.end(messaging).await;
    served?;
    tracing::info!("checkout stopped");
    Ok(())
}

/// The access-token keys, the authorization policy and checkout's certificates, each kept
/// fresh by a tracked task. A bad key set, policy or certificate stops the start, never a
/// request.
async fn credentials(
    config: &Config,
    life: &mut Lifecycle,
) -> anyhow::Result<(JwtVerifier, Policy, ClientTls)> {
    let verifier = JwtVerifier::new(config.auth.clone())
        .await
        .context("reading the access-token keys (CHECKOUT_AUTH__JWKS)")?;
    life.track("JWKS refresh", verifier.spawn_refresh(life.background()));
    let policy = Policy::load(config.policy.clone())
        .context("loading the authorization policy (CHECKOUT_POLICY__DIR)")?;
    life.track("policy reload", policy.spawn_reload(life.background()));
    let inventory_id = ServiceId::faultline("inventory").context("inventory's identity")?;
    let tls = ClientTls::load(config.mtls.clone(), inventory_id)
        .context("loading checkout's certificates (CHECKOUT_MTLS__*)")?;
    life.track("certificate reload", tls.spawn_reload(life.background()));
    Ok((verifier, policy, tls))
}

/// The catalog: inventory over gRPC, behind the Redis cache, with their breakers logged and
/// the cache's keys counted. The cache starts even when Redis is down; its breakers then send
/// lookups to inventory.
async fn catalog(
    config: &Config,
    tls: &ClientTls,
    life: &mut Lifecycle,
) -> anyhow::Result<CachedCatalog<GrpcCatalog>> {
    let metrics = life.metrics.clone();
    let inventory =
        GrpcCatalog::new(&config.inventory, tls, &metrics).context("inventory client")?;
    let inventory_breaker_log = faultline_platform::breakers::observe(
        "inventory",
        inventory.breaker(),
        &metrics,
        life.background(),
    );
    life.track("inventory breaker log", inventory_breaker_log);
    let cache = Cache::connect("catalog", CATALOG_CACHE_VERSION, &config.cache)
        .await
        .context("catalog cache (CHECKOUT_CACHE__*)")?;
    metrics.register_collector(cache.collector());
    for (index, node) in cache.nodes().iter().enumerate() {
        if let Some(breaker) = cache.breaker(index) {
            let name = format!("cache {node}");
            let log =
                faultline_platform::breakers::observe(&name, breaker, &metrics, life.background());
            life.track("cache breaker log", log);
        }
    }
    life.spawn(
        "cache key census",
        count_cache_keys(cache.clone(), life.background()),
    );
    Ok(CachedCatalog::new(inventory, cache))
}

/// How often the catalog cache's keys are counted per Redis node.
const KEY_CENSUS_INTERVAL: Duration = Duration::from_secs(60);

/// Counts the catalog cache's keys on each Redis node every minute, for the
/// `faultline_cache_node_keys` gauge: how evenly rendezvous hashing spreads them. A `SCAN`
/// walks a node's whole key space, which is why it runs this rarely.
/// The first count waits a whole interval: every replica starting at once (a deploy) would
/// otherwise scan every node at the same moment.
async fn count_cache_keys(cache: Cache<CatalogItem>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(KEY_CENSUS_INTERVAL) => {}
        }
        for (node, count) in cache.nodes().iter().zip(cache.keys_per_node().await) {
            if let Err(error) = count {
                tracing::debug!(%node, %error, "cache keys not counted");
            }
        }
    }
}

async fn sweep_deadlines(
    pool: PgPool,
    orchestrator: Orchestrator,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if let Err(error) = orchestrator.sweep(&pool).await {
            tracing::warn!(%error, "deadline sweep failed; will retry");
        }
    }
}
