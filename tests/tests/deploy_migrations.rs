//! Several replicas of a service starting at once against a fresh database, as a Kubernetes
//! rollout or scale-up starts them: each creates the database if absent and runs the
//! migrations at start (crates/platform/src/db.rs). sqlx's migrator holds a Postgres
//! advisory lock while it migrates, so one replica applies each migration and the others
//! find it done; all of them must start (docs/deploy.md, "Migrations with several replicas").
//! Each replica's own `healthcheck` subcommand, what the images probe with, then sees it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use faultline_e2e::Credentials;
use sqlx::PgPool;
use tokio::process::{Child, Command};

const REPLICAS: usize = 3;

fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("FAULTLINE_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("no directory")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

async fn started(port: u16) -> bool {
    match reqwest::get(format!("http://127.0.0.1:{port}/startup")).await {
        Ok(response) => response.status().is_success(),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_starting_at_once_migrate_one_database_once() -> anyhow::Result<()> {
    let run_id = faultline_testkit::unique("replicas");
    let server = faultline_testkit::postgres_server();
    let database = format!("inventory_{run_id}");
    let scratch = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.state/e2e")
        .join(&run_id);
    std::fs::create_dir_all(&scratch)?;
    let credentials = Credentials::generate(&scratch.join("credentials"))?;
    let binary = bin_dir()?.join("inventory");

    let mut replicas: Vec<(Child, u16)> = Vec::new();
    for replica in 0..REPLICAS {
        let admin = faultline_testkit::free_port();
        let log = std::fs::File::create(scratch.join(format!("inventory-{replica}.log")))?;
        let child = Command::new(&binary)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("RUST_LOG", "info")
            .env("INVENTORY_ADMIN__LISTEN", format!("127.0.0.1:{admin}"))
            .env(
                "INVENTORY_GRPC_LISTEN",
                format!("127.0.0.1:{}", faultline_testkit::free_port()),
            )
            .env("INVENTORY_DATABASE__URL", format!("{server}/{database}"))
            .env(
                "INVENTORY_KAFKA__BROKERS",
                faultline_testkit::kafka_brokers(),
            )
            .env("INVENTORY_KAFKA__TOPIC_PREFIX", format!("{run_id}."))
            .envs(credentials.service_env("INVENTORY", "inventory"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        replicas.push((child, admin));
    }

    let deadline = Instant::now() + Duration::from_secs(90);
    for (child, admin) in &mut replicas {
        while !started(*admin).await {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "a replica exited with {status} while the others migrated; see {}",
                    scratch.display()
                );
            }
            if Instant::now() > deadline {
                bail!("a replica did not start in 90 s; see {}", scratch.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // The probe the container images use: the binary's own `healthcheck`, which asks the
    // admin server it is configured with. (`/startup` is what is known to answer 200 here;
    // `/ready` also needs the consumer group joined, which a shared broker may take a while
    // to do for three new members.)
    for (_, admin) in &replicas {
        let probe = |path: &str| {
            std::process::Command::new(&binary)
                .args(["healthcheck", path])
                .env("INVENTORY_ADMIN__LISTEN", format!("127.0.0.1:{admin}"))
                .output()
        };
        assert!(probe("/startup")?.status.success(), "healthcheck /startup");
        assert!(
            !probe("/no-such-probe")?.status.success(),
            "healthcheck passed on a path the admin server does not serve"
        );
    }

    let pool = PgPool::connect(&format!("{server}/{database}")).await?;
    // Each migrator (inventory's own and the outbox's) keeps its own table; every version in
    // each is applied once and successfully.
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_name IN ('_sqlx_migrations', $1)",
    )
    .bind(faultline_outbox::MIGRATIONS_TABLE)
    .fetch_all(&pool)
    .await?;
    assert!(
        tables.len() == 2,
        "expected the service's and the outbox's migration tables, found {tables:?}"
    );
    for table in &tables {
        let statement = format!(
            "SELECT count(*), count(DISTINCT version), bool_and(success) FROM \"{}\"",
            table.replace('"', "\"\"")
        );
        let (rows, versions, success): (i64, i64, Option<bool>) =
            sqlx::query_as(sqlx::AssertSqlSafe(statement))
                .fetch_one(&pool)
                .await?;
        assert!(rows > 0, "{table} is empty");
        assert_eq!(rows, versions, "{table}: a migration was recorded twice");
        assert_eq!(success, Some(true), "{table}: a migration failed");
    }
    pool.close().await;

    for (mut child, _) in replicas {
        child.kill().await?;
    }
    let admin = PgPool::connect(&format!("{server}/postgres")).await?;
    let statement = format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
        .execute(&admin)
        .await?;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}
