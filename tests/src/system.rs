//! One Faultline system under test: three service processes, three fresh databases, one
//! topic prefix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use sqlx::PgPool;
use tokio::process::{Child, Command};

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
    /// Payments.
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
                (format!("{prefix}_KAFKA__BROKERS"), brokers.clone()),
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

    fn launch(&mut self, service: Service) -> anyhow::Result<()> {
        let process = self
            .processes
            .get_mut(&service)
            .context("unknown service")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_dir.join(format!("{}.log", service.name())))?;
        let child = Command::new(self.bin_dir.join(service.name()))
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .envs(process.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", service.name()))?;
        process.child = Some(child);
        Ok(())
    }

    /// The process id of `service` while it runs (for tools that sample it from /proc).
    pub fn pid(&self, service: Service) -> Option<u32> {
        self.processes.get(&service)?.child.as_ref()?.id()
    }

    /// Polls the service's `/ready` until it answers 200.
    pub async fn wait_ready(&mut self, service: Service, timeout: Duration) -> anyhow::Result<()> {
        let port = self.processes[&service].admin_port;
        let url = format!("http://127.0.0.1:{port}/ready");
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Some(process) = self.processes.get_mut(&service)
                && let Some(child) = process.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "{} exited with {status} while starting; see {}",
                    service.name(),
                    self.log_dir.display()
                );
            }
            if let Ok(response) = http.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "{} not ready after {timeout:?}; see {}",
                    service.name(),
                    self.log_dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops `service` with `signal` and waits for the process to exit.
    pub async fn stop(&mut self, service: Service, signal: Signal) -> anyhow::Result<()> {
        let process = self
            .processes
            .get_mut(&service)
            .context("unknown service")?;
        let Some(mut child) = process.child.take() else {
            return Ok(());
        };
        match signal {
            Signal::Kill => child.start_kill()?,
            Signal::Term => {
                let pid = child.id().context("process already reaped")?;
                let status = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()?;
                ensure!(status.success(), "kill -TERM {pid} failed");
            }
        }
        tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .context("service did not exit within 30 s")??;
        Ok(())
    }

    /// The value of the first sample of `series` (a metric name, with its labels if it has
    /// any) in `service`'s `/metrics`, or `None` if it has none.
    pub async fn metric(&self, service: Service, series: &str) -> anyhow::Result<Option<f64>> {
        let (_, text) = self.admin(service, "/metrics").await?;
        Ok(sample(&text, series))
    }

    /// `GET` of `path` on `service`'s admin port: status and body.
    pub async fn admin(&self, service: Service, path: &str) -> anyhow::Result<(u16, String)> {
        let port = self.processes[&service].admin_port;
        let response = reqwest::get(format!("http://127.0.0.1:{port}{path}")).await?;
        Ok((response.status().as_u16(), response.text().await?))
    }

    /// Everything `service` has logged so far.
    pub fn log(&self, service: Service) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(
            self.log_dir.join(format!("{}.log", service.name())),
        )?)
    }

    /// The full name of `topic` in this system.
    pub fn topic(&self, topic: &str) -> String {
        format!("{}.{topic}", self.run_id)
    }

    /// The broker's bootstrap address.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// Freezes or thaws `service` (SIGSTOP / SIGCONT): a hung dependency, not a dead one.
    pub fn freeze(&mut self, service: Service, freeze: Freeze) -> anyhow::Result<()> {
        let process = self
            .processes
            .get_mut(&service)
            .context("unknown service")?;
        let pid = process
            .child
            .as_ref()
            .and_then(Child::id)
            .context("service is not running")?;
        let signal = match freeze {
            Freeze::Stop => "-STOP",
            Freeze::Continue => "-CONT",
        };
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()?;
        ensure!(status.success(), "kill {signal} {pid} failed");
        Ok(())
    }

    /// `PUT` of `body` as JSON to `path` on `service`'s admin port.
    pub async fn admin_put(
        &self,
        service: Service,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<(u16, String)> {
        let port = self.processes[&service].admin_port;
        let response = reqwest::Client::new()
            .put(format!("http://127.0.0.1:{port}{path}"))
            .json(body)
            .send()
            .await?;
        Ok((response.status().as_u16(), response.text().await?))
    }

    /// Starts `service` again with the same settings and waits until it is ready.
    pub async fn restart(&mut self, service: Service) -> anyhow::Result<()> {
        self.launch(service)?;
        self.wait_ready(service, Duration::from_secs(60)).await
    }

    /// Sets (or replaces) one environment variable of `service` for its next start.
    pub fn set_env(&mut self, service: Service, key: &str, value: &str) -> anyhow::Result<()> {
        let process = self
            .processes
            .get_mut(&service)
            .context("unknown service")?;
        process.env.retain(|(k, _)| k != key);
        process.env.push((key.to_owned(), value.to_owned()));
        Ok(())
    }

    /// A pool on `service`'s database, for checking invariants from outside.
    pub async fn database(&self, service: Service) -> anyhow::Result<PgPool> {
        let url = format!("{}/{}_{}", self.postgres_url, service.name(), self.run_id);
        Ok(PgPool::connect(&url).await?)
    }

    /// Waits until no saga is still running, for at most `timeout`.
    pub async fn wait_until_settled(&self, timeout: Duration) -> anyhow::Result<()> {
        let checkout = self.database(Service::Checkout).await?;
        let started = Instant::now();
        loop {
            let running: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM order_sagas WHERE state NOT IN ('completed', 'compensated')",
            )
            .fetch_one(&checkout)
            .await?;
            if running == 0 {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!("{running} sagas still running after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Checks the invariants every test ends with, once sagas have settled. `loaded` is the
    /// stock the test loaded per SKU.
    pub async fn check_invariants(&self, loaded: &BTreeMap<String, i64>) -> anyhow::Result<()> {
        let checkout = self.database(Service::Checkout).await?;
        let inventory = self.database(Service::Inventory).await?;
        let payments = self.database(Service::Payments).await?;

        // No order is left non-terminal.
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'PENDING'")
                .fetch_one(&checkout)
                .await?;
        ensure!(pending == 0, "{pending} orders left PENDING");

        // Stock is conserved, nothing stays reserved, and what was sold is what confirmed
        // orders bought.
        let stock: Vec<(String, i64, i64, i64, i64)> =
            sqlx::query_as("SELECT sku, available, reserved, sold, loaded FROM products")
                .fetch_all(&inventory)
                .await?;
        let sold_by_orders: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
            "SELECT i.sku, sum(i.quantity)::bigint FROM order_items i
             JOIN orders o ON o.id = i.order_id WHERE o.status = 'CONFIRMED' GROUP BY i.sku",
        )
        .fetch_all(&checkout)
        .await?
        .into_iter()
        .collect();
        for (sku, available, reserved, sold, total) in &stock {
            ensure!(
                available + reserved + sold == *total,
                "{sku}: available {available} + reserved {reserved} + sold {sold} != loaded {total}"
            );
            ensure!(*reserved == 0, "{sku}: {reserved} units still reserved");
            if let Some(expected) = loaded.get(sku) {
                ensure!(
                    total == expected,
                    "{sku}: loaded {total}, the test loaded {expected}"
                );
            }
            let bought = sold_by_orders.get(sku).copied().unwrap_or(0);
            ensure!(
                *sold == bought,
                "{sku}: sold {sold}, confirmed orders bought {bought}"
            );
        }

        // Every capture belongs to a confirmed order, for its total; every confirmed order
        // is captured exactly once; nothing stays authorized.
        let confirmed: BTreeMap<String, i64> = sqlx::query_as::<_, (uuid::Uuid, i64)>(
            "SELECT id, total_minor FROM orders WHERE status = 'CONFIRMED'",
        )
        .fetch_all(&checkout)
        .await?
        .into_iter()
        .map(|(id, total)| (id.to_string(), total))
        .collect();
        let captured: Vec<(uuid::Uuid, i64)> =
            sqlx::query_as("SELECT order_id, amount_minor FROM payments WHERE status = 'captured'")
                .fetch_all(&payments)
                .await?;
        for (order_id, amount) in &captured {
            let total = confirmed.get(&order_id.to_string());
            ensure!(
                total == Some(amount),
                "payment of order {order_id} captured {amount} but the order's confirmed total is {total:?}"
            );
        }
        ensure!(
            captured.len() == confirmed.len(),
            "{} confirmed orders but {} captures",
            confirmed.len(),
            captured.len()
        );
        let authorized: i64 =
            sqlx::query_scalar("SELECT count(*) FROM payments WHERE status = 'authorized'")
                .fetch_one(&payments)
                .await?;
        ensure!(authorized == 0, "{authorized} payments left authorized");

        // The ledger balances, per payment and overall.
        let unbalanced: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT payment_id FROM ledger_entries
             GROUP BY payment_id HAVING sum(amount_minor) <> 0) u",
        )
        .fetch_one(&payments)
        .await?;
        ensure!(
            unbalanced == 0,
            "{unbalanced} payments with an unbalanced ledger"
        );
        let captured_total: i64 = captured.iter().map(|(_, amount)| amount).sum();
        let debits: Option<i64> = sqlx::query_scalar(
            "SELECT sum(amount_minor)::bigint FROM ledger_entries WHERE amount_minor > 0",
        )
        .fetch_one(&payments)
        .await?;
        ensure!(
            debits.unwrap_or(0) == captured_total,
            "ledger debits {debits:?} != captured total {captured_total}"
        );

        // The provider's books agree with payments': holds, captures, and none left behind.
        let (status, provider) = self.admin(Service::Payments, "/provider").await?;
        ensure!(
            status == 200,
            "payments' /provider answered {status}: {provider}"
        );
        crate::provider_books::check(&provider, &checkout, &payments).await
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
