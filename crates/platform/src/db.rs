//! The service's Postgres pool.
//!
//! Each service owns one database. On first start it does not exist yet, so [`connect`]
//! creates it; the service then runs its own migrations before serving anything.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};

use crate::config::DatabaseSettings;

/// The connection options of `settings`: the URL, the server-side timeouts every session
/// starts with ([`DatabaseSettings::session_parameters`]), plus the password kept apart from
/// the URL so that it never appears in one that might be logged.
pub fn connect_options(settings: &DatabaseSettings) -> Result<PgConnectOptions, sqlx::Error> {
    let options = PgConnectOptions::from_str(&settings.url)?.options(settings.session_parameters());
    Ok(match &settings.password {
        Some(password) => options.password(password.expose()),
        None => options,
    })
}

/// Creates the database named in `settings.url` if absent and opens a pool to it.
pub async fn connect(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    let options = connect_options(settings)?;
    if let Some(name) = options.get_database() {
        create_if_absent(&options, name).await?;
    }
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
        .connect_with(options)
        .await
}

/// Creates the database `name` through the server's maintenance database unless it exists.
async fn create_if_absent(options: &PgConnectOptions, name: &str) -> Result<(), sqlx::Error> {
    let mut admin = PgConnection::connect_with(&options.clone().database("postgres")).await?;
    if !database_exists(&mut admin, name).await? {
        // An identifier cannot be a bind parameter; quoting it (doubling quotes) is the
        // documented way to make any name safe.
        let statement = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        // Two instances starting at once may race here; the loser sees "already exists".
        if let Err(error) = sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&mut admin)
            .await
            && !database_exists(&mut admin, name).await?
        {
            return Err(error);
        }
        tracing::info!(database = name, "created database");
    }
    admin.close().await
}

async fn database_exists(admin: &mut PgConnection, name: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(admin)
        .await
}

/// A cheap round trip that tells whether the database answers.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}

/// Why the database could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Connecting or creating the database failed.
    #[error("cannot connect to the database: {0}")]
    Connect(#[from] sqlx::Error),
    /// A migration failed; the service must not start on a half-migrated schema.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The admin server could not listen.
    #[error("cannot start the admin server: {0}")]
    Admin(#[from] std::io::Error),
}

/// Connects (creating the database if needed), then applies `migrations` in order: the
/// service's own and those of each shared crate whose tables it uses (outbox and inbox,
/// idempotency keys), all listed by the service in one place.
pub async fn open(
    settings: &DatabaseSettings,
    migrations: &[&sqlx::migrate::Migrator],
) -> Result<PgPool, OpenError> {
    let pool = connect(settings).await?;
    // Migrations run on a connection of their own without the request timeouts: a second
    // instance starting at the same moment waits for the first one's migration lock, and a
    // long index build is not a stuck request.
    let unbounded =
        connect_options(settings)?.options([("statement_timeout", "0"), ("lock_timeout", "0")]);
    let mut connection = PgConnection::connect_with(&unbounded).await?;
    for migrator in migrations {
        migrator.run(&mut connection).await?;
    }
    connection.close().await?;
    Ok(pool)
}
