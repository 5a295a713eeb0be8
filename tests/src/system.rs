//! One Faultline system under test: three service processes, three fresh databases, one
//! topic prefix.

mod control;
mod invariants;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, ensure};
use sqlx::PgPool;
use tokio::process::Child;

use crate::client::Client;
use crate::credentials::Credentials;
use crate::proxy::TcpProxy;

/// One of the three services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    /// The HTTP API and saga orchestrator.
    Checkout,
    /// Catalog and stock.
    Inventory,
    Payments,
}

impl Service {
    /// All three, in start order.
    pub const ALL: [Service; 3] = [Service::Inventory, Service::Payments, Service::Checkout];

    /// Binary and database name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Checkout => "checkout",
            Self::Inventory => "inventory",
            Self::Payments => "payments",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Self::Checkout => "CHECKOUT",
            Self::Inventory => "INVENTORY",
            Self::Payments => "PAYMENTS",
        }
    }
}

/// How to stop a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: graceful shutdown.
    Term,
    /// SIGKILL: a crash.
    Kill,
}

/// What a frozen process looks like from outside: connections open, nothing answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freeze {
    /// SIGSTOP: the process hangs.
    Stop,
    /// SIGCONT: it carries on.
    Continue,
}

/// Knobs of a test system.
#[derive(Debug, Clone)]
pub struct Options {
    /// Checkout's saga step timeout.
    pub saga_step_timeout: Duration,
    /// Payments declines amounts above this (cents).
    pub decline_above_cents: i64,
    /// OTLP endpoint the services export traces to; none by default.
    pub otlp_endpoint: Option<String>,
    /// A broker of the test's own instead of the shared one.
    pub brokers: Option<String>,
    /// Where one service bootstraps its Kafka clients instead (a link the test owns in front
    /// of that broker). [`System::brokers`] stays the broker itself.
    pub service_brokers: BTreeMap<Service, String>,
    /// Route this service's database connections through a proxy the test can cut.
    pub database_proxy: Option<Service>,
    /// More environment for one service: `(service, variable, value)`.
    pub extra_env: Vec<(Service, String, String)>,
    /// A Postgres server of the test's own (`postgres://user@host:port`) instead of
    /// `FAULTLINE_POSTGRES_URL`'s, for tests that restart it.
    pub postgres_server: Option<String>,
    /// Where one service reaches that server instead (a proxy the test owns in front of it).
    pub database_servers: BTreeMap<Service, String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            saga_step_timeout: Duration::from_secs(30),
            decline_above_cents: 50_000,
            otlp_endpoint: None,
            brokers: None,
            service_brokers: BTreeMap::new(),
            database_proxy: None,
            extra_env: Vec::new(),
            postgres_server: None,
            database_servers: BTreeMap::new(),
        }
    }
}

struct Process {
    child: Option<Child>,
    env: Vec<(String, String)>,
    admin_port: u16,
}

/// A running system; dropping it kills the processes, [`System::teardown`] also removes
/// its databases.
pub struct System {
    /// Unique id of this system; prefixes databases and topics.
    pub run_id: String,
    /// The client for its APIs.
    pub client: Client,
    /// Payments' gRPC endpoint (`https://127.0.0.1:<port>`, mutual TLS).
    pub payments_url: String,
    /// This system's CA, certificates and token signing key.
    pub credentials: Credentials,
    /// The proxy in front of one service's database, if asked for.
    pub database_proxy: Option<TcpProxy>,
    postgres_url: String,
    brokers: String,
    bin_dir: PathBuf,
    log_dir: PathBuf,
    processes: BTreeMap<Service, Process>,
}

/// Where the service binaries are: `FAULTLINE_BIN_DIR`, else next to this executable (tests
/// run from `target/<profile>/deps`, binaries live in `target/<profile>`).
fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("FAULTLINE_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .context("executable has no directory")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

impl System {
    /// Starts inventory, payments and checkout and waits until all three are ready.
    pub async fn start(options: Options) -> anyhow::Result<Self> {
        // With a counter: several systems start at once in one test binary.
        let run_id = faultline_testkit::unique("e2e");
        let postgres_url = options
            .postgres_server
            .clone()
            .unwrap_or_else(faultline_testkit::postgres_server);
        let brokers = options
            .brokers
            .clone()
            .unwrap_or_else(faultline_testkit::kafka_brokers);
        let database_proxy = match options.database_proxy {
            Some(_) => {
                let target = postgres_url
                    .rsplit('@')
                    .next()
                    .context("FAULTLINE_POSTGRES_URL needs a host")?
                    .parse()
                    .context("FAULTLINE_POSTGRES_URL's host must be ip:port for the proxy")?;
                Some(TcpProxy::start(target).await?)
            }
            None => None,
        };
        let bin_dir = bin_dir()?;
        for service in Service::ALL {
            let binary = bin_dir.join(service.name());
            ensure!(
                binary.exists(),
                "{} not found; build the services first (`cargo build --workspace --bins`, which `make test` does)",
                binary.display()
            );
        }
        let log_dir = repo_root().join(".state/e2e").join(&run_id);
        std::fs::create_dir_all(&log_dir)?;
        let credentials = Credentials::generate(&log_dir.join("credentials"))?;

        let checkout_port = faultline_testkit::free_port();
        let inventory_port = faultline_testkit::free_port();
        let payments_port = faultline_testkit::free_port();
        let topic_prefix = format!("{run_id}.");
        let mut processes = BTreeMap::new();
        for service in Service::ALL {
            let prefix = service.prefix();
            let admin_port = faultline_testkit::free_port();
            let database_server = match (&database_proxy, options.database_proxy) {
                (Some(proxy), Some(proxied)) if proxied == service => {
                    format!("postgres://postgres@127.0.0.1:{}", proxy.port)
                }
                _ => options
                    .database_servers
                    .get(&service)
                    .cloned()
                    .unwrap_or_else(|| postgres_url.clone()),
            };
            let mut env = vec![
                ("RUST_LOG".to_owned(), "info".to_owned()),
                ("FAULTLINE_LOG_FORMAT".to_owned(), "json".to_owned()),
                (
                    format!("{prefix}_ADMIN__LISTEN"),
                    format!("127.0.0.1:{admin_port}"),
                ),
                (
                    format!("{prefix}_DATABASE__URL"),
                    format!("{database_server}/{}_{run_id}", service.name()),
                ),
                (
                    format!("{prefix}_KAFKA__BROKERS"),
                    options
                        .service_brokers
                        .get(&service)
                        .cloned()
                        .unwrap_or_else(|| brokers.clone()),
                ),
                (
                    format!("{prefix}_KAFKA__TOPIC_PREFIX"),
                    topic_prefix.clone(),
                ),
                // One process per service, restarted under the same name: a static member
                // that takes its partitions back after a kill, as a supervisor's would.
                (
                    format!("{prefix}_KAFKA__GROUP_INSTANCE_ID"),
                    format!("{}-{run_id}", service.name()),
                ),
            ];
            env.extend(credentials.service_env(prefix, service.name()));
            if let Some(endpoint) = &options.otlp_endpoint {
                env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone()));
                env.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()));
            }
            match service {
                Service::Checkout => {
                    env.push((
                        "CHECKOUT_HTTP_LISTEN".into(),
                        format!("127.0.0.1:{checkout_port}"),
                    ));
                    env.push((
                        "CHECKOUT_INVENTORY__URL".into(),
                        format!("https://127.0.0.1:{inventory_port}"),
                    ));
                    // The shared Redis is shared by every system: keys of each live apart.
                    env.push(("CHECKOUT_CACHE__KEY_PREFIX".into(), run_id.clone()));
                    env.push((
                        "CHECKOUT_POLICY__DIR".into(),
                        repo_root().join("policies").display().to_string(),
                    ));
                    env.push((
                        "CHECKOUT_SAGA__STEP_TIMEOUT_MS".into(),
                        options.saga_step_timeout.as_millis().to_string(),
                    ));
                }
                Service::Inventory => env.push((
                    "INVENTORY_GRPC_LISTEN".into(),
                    format!("127.0.0.1:{inventory_port}"),
                )),
                Service::Payments => {
                    env.push((
                        "PAYMENTS_GRPC_LISTEN".into(),
                        format!("127.0.0.1:{payments_port}"),
                    ));
                    env.push((
                        "PAYMENTS_PROVIDER__DECLINE_ABOVE_MINOR".into(),
                        options.decline_above_cents.to_string(),
                    ));
                }
            }
            env.extend(
                options
                    .extra_env
                    .iter()
                    .filter(|(target, _, _)| *target == service)
                    .map(|(_, name, value)| (name.clone(), value.clone())),
            );
            processes.insert(
                service,
                Process {
                    child: None,
                    env,
                    admin_port,
                },
            );
        }

        let mut system = Self {
            client: Client::new(
                format!("http://127.0.0.1:{checkout_port}"),
                format!("https://127.0.0.1:{inventory_port}"),
                credentials.clone(),
            ),
            payments_url: format!("https://127.0.0.1:{payments_port}"),
            credentials,
            database_proxy,
            run_id,
            postgres_url,
            brokers,
            bin_dir,
            log_dir,
            processes,
        };
        for service in Service::ALL {
            system.launch(service)?;
        }
        for service in Service::ALL {
            system.wait_ready(service, Duration::from_secs(60)).await?;
        }
        Ok(system)
    }

    /// A pool on `service`'s database, for checking invariants from outside.
    pub async fn database(&self, service: Service) -> anyhow::Result<PgPool> {
        let url = format!("{}/{}_{}", self.postgres_url, service.name(), self.run_id);
        Ok(PgPool::connect(&url).await?)
    }

    /// Ends every test that starts a system: waits for its sagas to settle, checks the
    /// invariants ([`System::check_invariants`], whatever the test did), then stops the
    /// processes and removes the system's databases and logs. A test that broke an invariant
    /// fails here even if it asserted nothing about money or stock itself.
    pub async fn teardown(self) -> anyhow::Result<()> {
        self.wait_until_settled(Duration::from_secs(120)).await?;
        self.check_invariants(&BTreeMap::new()).await?;
        self.discard().await
    }

    /// Stops the processes and removes the system's databases and logs without checking
    /// anything, for a test whose system is left broken on purpose.
    pub async fn discard(mut self) -> anyhow::Result<()> {
        for service in Service::ALL {
            self.stop(service, Signal::Term).await?;
        }
        let admin = PgPool::connect(&format!("{}/postgres", self.postgres_url)).await?;
        for service in Service::ALL {
            let statement = format!(
                "DROP DATABASE IF EXISTS \"{}_{}\" WITH (FORCE)",
                service.name(),
                self.run_id
            );
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(&admin)
                .await?;
        }
        // Topics stay: deleting a topic on tansu 0.6.0's sqlite engine breaks idempotent
        // producers of every other topic (docs/adr/0002). They are cheap, and prefixed.
        let _ = std::fs::remove_dir_all(&self.log_dir);
        Ok(())
    }
}

/// The value of the first sample of `series` (a metric name, with its labels if it has any)
/// in a Prometheus text scrape.
pub fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}
