//! `make load`: a fresh local system, measured in one run.
//!
//! 1. pgbench measures this Postgres server's commit ceiling with a saga-like transaction,
//!    before anything else runs, so nothing competes with it.
//! 2. The end-to-end harness starts the three release binaries with fresh databases, a fresh
//!    topic prefix and credentials of their own (`faultline_e2e::System`), and the SKU gets
//!    more stock than the run can sell.
//! 3. While the generator runs (or ramps), /proc is sampled for each service, the broker and
//!    the generator itself; `xact_commit` is read before and after.
//! 4. After the sagas settle (bounded), checkout's database tells how orders were
//!    cancelled; the system is torn down, its databases dropped unless `--keep-databases`.

pub mod postgres;
pub mod procs;

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use faultline_e2e::{Options, Service, System};
use serde::Serialize;

use crate::checkout::Checkout;
use crate::config::{Local, TerminalSource, Workload};
use crate::driver::Driver;
use crate::plan::Plan;
use crate::report::{LoadResult, Mode};
use crate::terminal::{self, Tracker};
use crate::{now_unix, stock};

use postgres::{Ceiling, Ledger};
use procs::{ProcessReport, Sampler, Watched};

/// How long after the run the statistics collector is given to publish the last commits.
const STATS_FLUSH: Duration = Duration::from_secs(2);

/// What `local` adds to a result.
#[derive(Debug, Clone, Serialize)]
pub struct LocalReport {
    /// The system's run id (database suffix and topic prefix).
    pub run_id: String,
    /// pgbench's figure, unless skipped.
    pub commit_ceiling: Option<Ceiling>,
    /// `xact_commit` summed over the three databases, before and after.
    pub commits_before: i64,
    /// After the sagas settled.
    pub commits_after: i64,
    /// `(after - before) / completed orders`.
    pub commits_per_order: f64,
    /// `ceiling / commits_per_order`: orders/s at which Postgres alone saturates.
    pub postgres_bound_orders_per_s: Option<f64>,
    /// Each process over the run.
    pub processes: Vec<ProcessReport>,
    /// From checkout's database after the run.
    pub ledger: Ledger,
}

/// Runs `plan` against a fresh local system as `local` says.
pub async fn run(
    local: &Local,
    workload: &Workload,
    plan: &Plan,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<LoadResult> {
    std::fs::create_dir_all(&workload.out)
        .with_context(|| format!("creating {}", workload.out.display()))?;
    let commit_ceiling = if local.no_pgbench {
        None
    } else {
        eprintln!(
            "[load] pgbench: {} clients for {:?} on a scratch database",
            local.pgbench_clients, local.pgbench_duration
        );
        let ceiling =
            postgres::ceiling(&workload.out, local.pgbench_clients, local.pgbench_duration).await?;
        eprintln!("[load] commit ceiling: {:.0} tx/s", ceiling.tps);
        Some(ceiling)
    };

    eprintln!(
        "[load] starting a fresh system (binaries from {})",
        std::env::var("FAULTLINE_BIN_DIR").unwrap_or_else(|_| "beside this tool".into())
    );
    let options = Options {
        saga_step_timeout: local.saga_step_timeout,
        extra_env: Service::ALL
            .iter()
            .map(|s| (*s, "RUST_LOG".to_owned(), local.service_log.clone()))
            .collect(),
        ..Options::default()
    };
    let system = System::start(options).await.context(
        "starting the system (build it with `make load`, which builds release binaries)",
    )?;
    let started_unix_s = now_unix();
    let result = measure(
        &system,
        local,
        workload,
        plan,
        commit_ceiling,
        stop,
        started_unix_s,
    )
    .await;
    if local.keep_databases {
        eprintln!(
            "[load] --keep-databases: the databases *_{} stay; the services stop with this process",
            system.run_id
        );
    } else if let Err(error) = system.teardown().await {
        // The figures are measured by now; a service slow to stop is worth a warning, not
        // the loss of the run.
        eprintln!("[load] tearing the system down: {error:#}");
    }
    result
}

async fn measure(
    system: &System,
    local: &Local,
    workload: &Workload,
    plan: &Plan,
    commit_ceiling: Option<Ceiling>,
    stop: tokio_util::sync::CancellationToken,
    started_unix_s: u64,
) -> anyhow::Result<LoadResult> {
    // Twice what the plan can sell, so no order is cancelled for want of stock.
    let units = i64::try_from(plan.max_orders().saturating_mul(2))
        .unwrap_or(i64::MAX / 2)
        .saturating_mul(workload.quantity)
        .saturating_add(1_000);
    let available = stock::add(&system.client, &workload.sku, units).await?;
    eprintln!("[load] {available} x {} in stock", workload.sku);

    let tracker = Arc::new(Tracker::default());
    let consumer = match local.terminal {
        TerminalSource::Events => {
            let (brokers, topic) = (system.brokers().to_owned(), system.topic("orders.events"));
            let consumer =
                tokio::task::spawn_blocking(move || terminal::events_consumer(&brokers, &topic))
                    .await
                    .context("the consumer setup panicked")??;
            let task = tokio::spawn(terminal::consume_events(
                consumer,
                tracker.clone(),
                stop.clone(),
            ));
            Some(task)
        }
        TerminalSource::Poll => None,
    };
    let checkout = Checkout::new(
        system.client.checkout_url(),
        &system.credentials,
        workload.customers,
        &workload.sku,
        workload.quantity,
        workload.request_timeout,
        crate::TOKEN_TTL,
    )?;
    let driver = Driver {
        checkout: Arc::new(checkout),
        tracker,
        terminal: local.terminal,
        workload: workload.clone(),
        stop: stop.clone(),
    };

    let commits_before = postgres::commits(system).await?;
    let sampler = Sampler::start(watched(system, local), local.sample_interval);
    let mode = plan.drive(&driver).await;
    let settled = Instant::now();
    if let Err(error) = system.wait_until_settled(workload.drain_timeout).await {
        eprintln!("[load] {error}");
    }
    eprintln!(
        "[load] settled after {:.1} s",
        settled.elapsed().as_secs_f64()
    );
    tokio::time::sleep(STATS_FLUSH).await;
    let commits_after = postgres::commits(system).await?;
    let ledger = postgres::ledger(system).await?;

    let mut result = LoadResult::new(
        system.client.checkout_url().to_owned(),
        local.terminal,
        workload,
        started_unix_s,
        mode,
    );
    let completed = result.completed();
    let processes = sampler.finish(completed).await;
    stop.cancel();
    if let Some(task) = consumer {
        let _ = task.await;
    }
    let commits_per_order = if completed > 0 {
        (commits_after - commits_before) as f64 / completed as f64
    } else {
        f64::NAN
    };
    result.local = Some(LocalReport {
        run_id: system.run_id.clone(),
        postgres_bound_orders_per_s: commit_ceiling
            .as_ref()
            .map(|c| c.tps / commits_per_order)
            .filter(|bound| bound.is_finite()),
        commit_ceiling,
        commits_before,
        commits_after,
        commits_per_order,
        processes,
        ledger,
    });
    Ok(result)
}

/// The services, the broker (if we can find it) and the generator itself.
fn watched(system: &System, local: &Local) -> Vec<Watched> {
    let mut watched: Vec<Watched> = Service::ALL
        .iter()
        .filter_map(|service| {
            Some(Watched {
                name: service.name().to_owned(),
                pid: system.pid(*service)?,
            })
        })
        .collect();
    match broker_pid(&local.broker_pid_file, local.broker_port) {
        Some(pid) => watched.push(Watched {
            name: "broker".to_owned(),
            pid,
        }),
        None => eprintln!(
            "[load] no broker process found ({} or port {}): it is not sampled",
            local.broker_pid_file.display(),
            local.broker_port
        ),
    }
    watched.push(Watched {
        name: "faultline-load".to_owned(),
        pid: std::process::id(),
    });
    watched
}

fn broker_pid(pid_file: &Path, port: u16) -> Option<u32> {
    let from_file = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .filter(|pid| Path::new(&format!("/proc/{pid}")).exists());
    from_file.or_else(|| procs::listener_pid(port))
}

impl LocalReport {
    /// Appends the Postgres and process part of the table.
    pub fn table(&self, out: &mut String, result: &LoadResult) {
        const RULE: &str = "  --------------------------------------------------------------------------------------------";
        let _ = writeln!(out, "{RULE}");
        match &self.commit_ceiling {
            Some(c) => {
                let _ = writeln!(
                    out,
                    "  postgres     commit ceiling {:.0} tx/s (pgbench, {} clients, {:.0} s, insert + update + outbox insert)",
                    c.tps, c.clients, c.duration_s
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "  postgres     commit ceiling not measured (--no-pgbench)"
                );
            }
        }
        let _ = writeln!(
            out,
            "               {:.2} commits per order (xact_commit +{} over the run's 3 databases / {} orders)",
            self.commits_per_order,
            self.commits_after - self.commits_before,
            result.completed()
        );
        if let Some(bound) = self.postgres_bound_orders_per_s {
            let _ = write!(
                out,
                "               ceiling / commits per order = {bound:.1} orders/s"
            );
            if let Mode::Ramp { ramp } = &result.mode {
                let _ = write!(
                    out,
                    "; knee {:.1}/s is {:.2} of it",
                    ramp.knee.rate(),
                    ramp.knee.rate() / bound
                );
            }
            let _ = writeln!(out);
        }
        let codes: Vec<String> = self
            .ledger
            .cancelled_by_code
            .iter()
            .map(|(code, n)| format!("{n} {code}"))
            .collect();
        let _ = writeln!(
            out,
            "  checkout db  cancelled: {}; sagas unfinished: {}",
            if codes.is_empty() {
                "none".to_owned()
            } else {
                codes.join(", ")
            },
            self.ledger.sagas_unfinished
        );
        let _ = writeln!(out, "{RULE}");
        let _ = writeln!(
            out,
            "  {:<16} {:>8} {:>10} {:>10} {:>10} {:>10} {:>12}",
            "process", "pid", "RSS start", "RSS max", "RSS end", "CPU cores", "CPU ms/order"
        );
        for p in &self.processes {
            let _ = writeln!(
                out,
                "  {:<16} {:>8} {:>7.1} MiB {:>6.1} MiB {:>6.1} MiB {:>10.2} {:>12.2}",
                p.name,
                p.pid,
                p.rss_start_mib,
                p.rss_max_mib,
                p.rss_end_mib,
                p.cpu_cores,
                p.cpu_ms_per_order
            );
        }
    }
}
