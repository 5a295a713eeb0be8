//! The system the matrix breaks: the three services, with every dependency a fault can touch
//! owned by the run and every link it can cut behind a proxy.
//!
//! - Postgres: a cluster of the run's own ([`Cluster`]), so it can be restarted immediately;
//!   each service reaches it through a proxy of its own (service→Postgres links).
//! - The broker: tansu of the run's own; each service reaches it through a link of its own
//!   (service→broker links: a proxy, then a forwarder that makes the broker advertise it).
//! - Redis: a `redis-server` of the run's own (checkout's catalog cache).
//! - checkout→inventory gRPC: a proxy; its target port is only known once the system runs,
//!   so checkout is restarted once, before any load, with the proxy's address.
//!
//! The auditor reads the databases directly, never through a proxy.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::proxy::TcpProxy;
use crate::redis::RedisServer;
use crate::system::{Options, Service, Signal, System};

use super::auditor::Pools;
use super::broker::ProxiedBroker;
use super::cluster::Cluster;

/// Everything one chaos run owns.
pub struct Rig {
    /// The services.
    pub system: System,
    /// The run's Postgres.
    pub postgres: Cluster,
    /// The run's Redis.
    pub redis: RedisServer,
    /// The run's broker and each service's link to it.
    pub broker: ProxiedBroker,
    /// checkout→inventory.
    pub inventory_link: TcpProxy,
    /// Each service→Postgres.
    pub database_links: BTreeMap<Service, TcpProxy>,
    /// Direct pools on the three databases, for the auditor and the quiescence check.
    pub pools: Pools,
    /// Where the run keeps Postgres and the broker.
    pub dir: PathBuf,
}

impl Rig {
    /// Starts it all; `step_timeout` is checkout's saga step timeout.
    pub async fn start(step_timeout: Duration) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(faultline_testkit::unique("chaos"));
        let cluster_dir = dir.join("postgres");
        let postgres = tokio::task::spawn_blocking(move || Cluster::start(&cluster_dir)).await??;
        let redis = tokio::task::spawn_blocking(RedisServer::start).await?;
        let broker = ProxiedBroker::start(dir.join("broker")).await?;

        let target: SocketAddr = format!("127.0.0.1:{}", postgres.port).parse()?;
        let mut database_links = BTreeMap::new();
        let mut database_servers = BTreeMap::new();
        for service in Service::ALL {
            let link = TcpProxy::start(target).await?;
            database_servers.insert(
                service,
                format!("postgres://postgres@127.0.0.1:{}", link.port),
            );
            database_links.insert(service, link);
        }
        let mut system = System::start(Options {
            saga_step_timeout: step_timeout,
            brokers: Some(broker.address()),
            service_brokers: broker.service_addresses(),
            postgres_server: Some(postgres.url()),
            database_servers,
            extra_env: vec![(
                Service::Checkout,
                "CHECKOUT_CACHE__NODES".to_owned(),
                redis.url(),
            )],
            ..Options::default()
        })
        .await?;

        let inventory: SocketAddr = system
            .client
            .inventory_url()
            .trim_start_matches("https://")
            .parse()
            .context("inventory's URL is https://ip:port")?;
        let inventory_link = TcpProxy::start(inventory).await?;
        system.set_env(
            Service::Checkout,
            "CHECKOUT_INVENTORY__URL",
            &format!("https://127.0.0.1:{}", inventory_link.port),
        )?;
        system.stop(Service::Checkout, Signal::Term).await?;
        system.restart(Service::Checkout).await?;

        let mut pools = BTreeMap::new();
        for service in Service::ALL {
            pools.insert(service, system.database(service).await?);
        }
        Ok(Self {
            system,
            postgres,
            redis,
            broker,
            inventory_link,
            database_links,
            pools,
            dir,
        })
    }

    /// Stops everything and removes what the run wrote (databases, broker data, logs).
    pub async fn teardown(self) -> anyhow::Result<()> {
        for pool in self.pools.values() {
            pool.close().await;
        }
        self.system.teardown().await?;
        drop(self.broker);
        drop(self.postgres);
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}
