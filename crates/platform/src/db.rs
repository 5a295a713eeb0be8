//! The service's Postgres pool.
//!
//! Each service owns one database. On first start it does not exist yet, so [`connect`]
//! creates it; the service then runs its own migrations before serving anything.

use std::time::Duration;

use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::config::DatabaseSettings;

/// Creates the database named in `settings.url` if absent and opens a pool to it.
pub async fn connect(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    if !sqlx::Postgres::database_exists(&settings.url).await? {
        // Two instances starting at once may race here; the loser sees "already exists".
        if let Err(error) = sqlx::Postgres::create_database(&settings.url).await
            && !sqlx::Postgres::database_exists(&settings.url).await?
        {
            return Err(error);
        }
        tracing::info!("created database");
    }
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
        .connect(&settings.url)
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

/// Connects (creating the database if needed), then applies the service's migrations and the
/// outbox/inbox tables' own migrations.
pub async fn open(
    settings: &DatabaseSettings,
    migrator: &sqlx::migrate::Migrator,
) -> Result<PgPool, OpenError> {
    let pool = connect(settings).await?;
    migrator.run(&pool).await?;
    faultline_outbox::migrate(&pool).await?;
    Ok(pool)
}
