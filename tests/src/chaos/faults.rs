//! The faults of the matrix, and how each is injected and healed on a [`Rig`].

use std::fmt;
use std::time::{Duration, Instant};

use crate::system::{Freeze, Service, Signal};

use super::rig::Rig;

/// A link a proxy sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// checkout's gRPC calls to inventory's catalog.
    CheckoutToInventory,
    /// One service's Kafka connections, and only its (the broker advertises each service
    /// its own link).
    ToBroker(Service),
    /// One service's database connections.
    ToPostgres(Service),
}

/// What goes wrong on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkFault {
    /// Every chunk held 50 ms plus up to 150 ms of seeded jitter.
    Latency,
    /// Every open connection reset (RST) every 500 ms.
    Resets,
    /// Nothing forwarded, nothing closed: packets dropped.
    Blackhole,
}

/// One fault of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nothing: the control row, load alone.
    Baseline,
    /// kill -9, down for the fault's duration, then started again (as a supervisor would).
    Kill(Service),
    /// SIGSTOP for the stop duration, then SIGCONT: a frozen host, connections open.
    Stop(Service),
    /// kill -9 of the broker, restarted on the same data after the fault's duration.
    KillBroker,
    /// `pg_ctl stop -m immediate`, started again (crash recovery) after the fault's duration.
    PostgresRestart,
    /// Redis killed, started again (empty) after the Redis duration.
    RedisDown,
    /// A fault on one link for the fault's duration.
    Link(Link, LinkFault),
}

/// How long faults last.
#[derive(Debug, Clone, Copy)]
pub struct Durations {
    /// Kills, the broker, Postgres and links.
    pub fault: Duration,
    /// SIGSTOP.
    pub stop: Duration,
    /// Redis down.
    pub redis: Duration,
}

const LATENCY: Duration = Duration::from_millis(50);
const JITTER: Duration = Duration::from_millis(150);
const RESET_EVERY: Duration = Duration::from_millis(500);

impl Fault {
    /// Every fault, in the order the matrix runs them.
    pub fn all() -> Vec<Fault> {
        let mut faults = vec![Fault::Baseline];
        for service in [Service::Checkout, Service::Inventory, Service::Payments] {
            faults.push(Fault::Kill(service));
        }
        for service in [Service::Checkout, Service::Inventory, Service::Payments] {
            faults.push(Fault::Stop(service));
        }
        faults.extend([Fault::KillBroker, Fault::PostgresRestart, Fault::RedisDown]);
        let services = [Service::Checkout, Service::Inventory, Service::Payments];
        let mut links = vec![Link::CheckoutToInventory];
        links.extend(services.map(Link::ToBroker));
        links.extend(services.map(Link::ToPostgres));
        for link in links {
            for fault in [LinkFault::Latency, LinkFault::Resets, LinkFault::Blackhole] {
                faults.push(Fault::Link(link, fault));
            }
        }
        faults
    }

    /// Injects the fault, keeps it for its duration and heals it; returns once healed (a
    /// restarted service is ready).
    pub async fn run(&self, rig: &mut Rig, durations: &Durations, seed: u64) -> anyhow::Result<()> {
        let hold = durations.fault;
        match *self {
            Fault::Baseline => tokio::time::sleep(hold).await,
            Fault::Kill(service) => {
                rig.system.stop(service, Signal::Kill).await?;
                tokio::time::sleep(hold).await;
                rig.system.restart(service).await?;
            }
            Fault::Stop(service) => {
                rig.system.freeze(service, Freeze::Stop)?;
                tokio::time::sleep(durations.stop).await;
                rig.system.freeze(service, Freeze::Continue)?;
            }
            Fault::KillBroker => {
                rig.broker.kill().await?;
                tokio::time::sleep(hold).await;
                rig.broker.resume().await?;
            }
            Fault::PostgresRestart => {
                tokio::task::block_in_place(|| rig.postgres.stop_immediate())?;
                tokio::time::sleep(hold).await;
                tokio::task::block_in_place(|| rig.postgres.start_again())?;
            }
            Fault::RedisDown => {
                rig.redis.stop();
                tokio::time::sleep(durations.redis).await;
                tokio::task::block_in_place(|| rig.redis.restart());
            }
            Fault::Link(link, fault) => {
                let proxy = match link {
                    Link::CheckoutToInventory => &rig.inventory_link,
                    Link::ToBroker(service) => rig
                        .broker
                        .link(service)
                        .ok_or_else(|| anyhow::anyhow!("no broker link for {service:?}"))?,
                    Link::ToPostgres(service) => rig
                        .database_links
                        .get(&service)
                        .ok_or_else(|| anyhow::anyhow!("no database link for {service:?}"))?,
                };
                match fault {
                    LinkFault::Latency => {
                        proxy.delay(LATENCY, JITTER, seed);
                        tokio::time::sleep(hold).await;
                    }
                    LinkFault::Resets => {
                        let until = Instant::now() + hold;
                        while Instant::now() < until {
                            proxy.reset();
                            tokio::time::sleep(RESET_EVERY).await;
                        }
                    }
                    LinkFault::Blackhole => {
                        proxy.freeze();
                        tokio::time::sleep(hold).await;
                    }
                }
                proxy.restore();
            }
        }
        Ok(())
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Baseline => write!(f, "none (baseline)"),
            Fault::Kill(service) => write!(f, "kill -9 {}", service.name()),
            Fault::Stop(service) => write!(f, "SIGSTOP {}", service.name()),
            Fault::KillBroker => write!(f, "kill -9 broker"),
            Fault::PostgresRestart => write!(f, "Postgres immediate restart"),
            Fault::RedisDown => write!(f, "Redis down"),
            Fault::Link(link, fault) => {
                let link = match link {
                    Link::CheckoutToInventory => "checkout→inventory".to_owned(),
                    Link::ToBroker(service) => format!("{}→broker", service.name()),
                    Link::ToPostgres(service) => format!("{}→Postgres", service.name()),
                };
                let fault = match fault {
                    LinkFault::Latency => "latency 50 ms + 0-150 ms jitter",
                    LinkFault::Resets => "resets every 500 ms",
                    LinkFault::Blackhole => "blackhole",
                };
                write!(f, "{link}: {fault}")
            }
        }
    }
}
