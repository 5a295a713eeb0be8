//! The chaos run's own broker (tansu on sqlite, as `scripts/deps.sh` runs it), reached by
//! each service through a link of its own, so that each service→broker link can be slowed,
//! reset and blackholed while the other services keep theirs.
//!
//! A link is a [`BrokerLink`]: the service's fault proxy, then a forwarder that rewrites the
//! broker's Metadata and FindCoordinator answers to advertise that proxy
//! (`crate::kafka_link`). Without the rewrite a client would use its proxy for bootstrap
//! only, then connect to the address tansu advertises, around the proxy. tansu itself
//! advertises its own port, which the auditor's dead-letter reader uses directly.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::broker::Broker;
use crate::kafka_link::BrokerLink;
use crate::proxy::TcpProxy;
use crate::system::Service;

/// tansu with a link per service; killed when dropped.
#[derive(Debug)]
pub struct ProxiedBroker {
    links: BTreeMap<Service, BrokerLink>,
    broker: Broker,
}

impl ProxiedBroker {
    /// Starts a broker with an empty data directory `dir`, and a link per service to it.
    pub async fn start(dir: PathBuf) -> anyhow::Result<Self> {
        let broker = Broker::start(dir).await?;
        let target: SocketAddr = broker.address.parse()?;
        let mut links = BTreeMap::new();
        for service in Service::ALL {
            links.insert(service, BrokerLink::start(target).await?);
        }
        Ok(Self { links, broker })
    }

    /// The broker itself, for readers no fault should reach (the auditor's).
    pub fn address(&self) -> String {
        self.broker.address.clone()
    }

    /// Where each service bootstraps: its own link's proxy.
    pub fn service_addresses(&self) -> BTreeMap<Service, String> {
        self.links
            .iter()
            .map(|(service, link)| (*service, link.address()))
            .collect()
    }

    /// The fault proxy on `service`'s link.
    pub fn link(&self, service: Service) -> Option<&TcpProxy> {
        self.links.get(&service).map(|link| &link.proxy)
    }

    /// kill -9 (its data stays). The links stay up: a service's connections through them
    /// close with the broker's, and new ones close as soon as they open until it is back.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.broker.kill().await
    }

    /// Starts the broker again on the same port and data, where the links still point.
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        self.broker.resume().await
    }
}
