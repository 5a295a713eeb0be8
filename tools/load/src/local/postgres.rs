//! The Postgres side of `make load`: the commit ceiling of this server (pgbench with a
//! transaction shaped like the saga's writes) and the commits the system spends per order
//! (`pg_stat_database.xact_commit` over its three databases).
//!
//! Their quotient, ceiling ÷ commits per order, is the order rate at which Postgres alone
//! would saturate; the knee of a ramp divided by it says how close the system gets.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use faultline_e2e::{Service, System};
use faultline_testkit::TestDatabase;
use serde::Serialize;

/// The scratch schema: an orders table, a saga table with rows to update, an outbox.
const SCHEMA: &str = "
CREATE TABLE orders (
    id uuid PRIMARY KEY,
    customer_id text NOT NULL,
    total_minor bigint NOT NULL,
    status text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE sagas (
    id bigint PRIMARY KEY,
    state text NOT NULL,
    version bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO sagas (id, state, version) SELECT g, 'started', 0 FROM generate_series(1, 10000) g;
CREATE TABLE outbox (
    id bigserial PRIMARY KEY,
    topic text NOT NULL,
    key text NOT NULL,
    payload bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
";

/// One saga-like transaction: a row inserted, a saga row updated, an outbox row inserted,
/// committed together, as each saga step does (state change + the command it sends).
const SCRIPT: &str = "\\set saga random(1, 10000)
BEGIN;
INSERT INTO orders (id, customer_id, total_minor, status)
    VALUES (gen_random_uuid(), 'customer-' || :saga, 1000, 'PENDING');
UPDATE sagas SET state = 'reserving', version = version + 1, updated_at = now() WHERE id = :saga;
INSERT INTO outbox (topic, key, payload)
    VALUES ('inventory.commands', :saga, convert_to(repeat('x', 200), 'UTF8'));
END;
";

/// What pgbench measured.
#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    /// Transactions per second (pgbench's `tps`, without connection time).
    pub tps: f64,
    pub clients: u32,
    /// Seconds it ran.
    pub duration_s: f64,
    /// The transaction.
    pub script: &'static str,
}

/// Runs pgbench with [`SCRIPT`] on a scratch database of `server` and drops it after.
pub async fn ceiling(dir: &Path, clients: u32, duration: Duration) -> anyhow::Result<Ceiling> {
    let database = TestDatabase::create("load_pgbench")
        .await
        .context("creating the pgbench scratch database")?;
    let measured = pgbench(&database, dir, clients, duration).await;
    database
        .drop()
        .await
        .context("dropping the pgbench scratch database")?;
    measured
}

async fn pgbench(
    database: &TestDatabase,
    dir: &Path,
    clients: u32,
    duration: Duration,
) -> anyhow::Result<Ceiling> {
    sqlx::raw_sql(SCHEMA)
        .execute(&database.pool)
        .await
        .context("creating the pgbench schema")?;
    let script = dir.join("pgbench-saga.sql");
    std::fs::write(&script, SCRIPT).with_context(|| format!("writing {}", script.display()))?;
    let url = format!("{}/{}", faultline_testkit::postgres_server(), database.name);
    let seconds = duration.as_secs().max(1);
    let run = tokio::process::Command::new("pgbench")
        .args(["--no-vacuum", "--protocol=prepared", "--file"])
        .arg(&script)
        .arg(format!("--client={clients}"))
        .arg(format!("--jobs={}", clients.clamp(1, 2)))
        .arg(format!("--time={seconds}"))
        .arg(&url)
        .kill_on_drop(true)
        .output();
    // pgbench stops itself after --time; the margin covers connecting and a slow exit.
    let output = tokio::time::timeout(duration + Duration::from_secs(60), run)
        .await
        .context("pgbench did not finish")?
        .context("running pgbench (install it with `make load-tools`)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let tps =
        parse_tps(&stdout).with_context(|| format!("no tps in pgbench's output:\n{stdout}"))?;
    Ok(Ceiling {
        tps,
        clients,
        duration_s: seconds as f64,
        script: SCRIPT,
    })
}

/// The `tps = ...` figure of pgbench's summary.
fn parse_tps(output: &str) -> Option<f64> {
    output
        .lines()
        .find_map(|line| line.trim().strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
}

/// Committed transactions so far in each of the system's three databases, summed.
pub async fn commits(system: &System) -> anyhow::Result<i64> {
    let mut total = 0;
    for service in Service::ALL {
        let pool = system.database(service).await?;
        let commits: i64 = sqlx::query_scalar(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&pool)
        .await
        .with_context(|| format!("reading {}'s commit count", service.name()))?;
        pool.close().await;
        total += commits;
    }
    Ok(total)
}

/// What checkout's own database says about the run: cancellations by code, and sagas not
/// finished.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Ledger {
    /// CANCELLED orders per cancellation code.
    pub cancelled_by_code: Vec<(String, i64)>,
    /// Sagas not completed or compensated.
    pub sagas_unfinished: i64,
}

/// Reads [`Ledger`] from checkout's database.
pub async fn ledger(system: &System) -> anyhow::Result<Ledger> {
    let pool = system.database(Service::Checkout).await?;
    let cancelled_by_code = sqlx::query_as(
        "SELECT coalesce(cancellation_code, '?'), count(*) FROM orders
         WHERE status = 'CANCELLED' GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .context("reading cancellations")?;
    let sagas_unfinished = sqlx::query_scalar(
        "SELECT count(*) FROM order_sagas WHERE state NOT IN ('completed', 'compensated')",
    )
    .fetch_one(&pool)
    .await
    .context("reading unfinished sagas")?;
    pool.close().await;
    Ok(Ledger {
        cancelled_by_code,
        sagas_unfinished,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tps_is_read_from_pgbench_output() {
        let output = "transaction type: saga.sql\nnumber of clients: 8\n\
            latency average = 5.046 ms\ninitial connection time = 12.693 ms\n\
            tps = 1585.386621 (without initial connection time)\n";
        assert_eq!(parse_tps(output), Some(1_585.386621));
        assert_eq!(parse_tps("nothing here"), None);
    }
}
