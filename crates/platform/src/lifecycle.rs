//! The part of a service's life every Faultline service shares: probes up first, then the
//! database, then (after the service's own start-up) readiness; and on shutdown the reverse,
//! with readiness failing before anything stops.

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{AdminSettings, DatabaseSettings};
use crate::db::{self, OpenError};
use crate::health::{self, Health};
use crate::messaging::Messaging;

/// A service between [`Lifecycle::begin`] and [`Lifecycle::end`].
#[derive(Debug)]
pub struct Lifecycle {
    /// The service's database, migrated.
    pub pool: PgPool,
    /// The probe state.
    pub health: Health,
    admin: JoinHandle<std::io::Result<()>>,
    admin_stop: CancellationToken,
}

impl Lifecycle {
    /// Serves the probes (reporting "starting"), opens and migrates the database, and makes
    /// readiness depend on it. Readiness turns to "shutting down" as soon as `shutdown` is
    /// cancelled, while the probes keep answering until [`Lifecycle::end`].
    pub async fn begin(
        admin: &AdminSettings,
        database: &DatabaseSettings,
        migrator: &Migrator,
        shutdown: &CancellationToken,
    ) -> Result<Self, OpenError> {
        let health = Health::new();
        let admin_stop = CancellationToken::new();
        let admin = tokio::spawn(health::serve(
            admin.listen,
            health.clone(),
            admin_stop.clone(),
        ));
        let draining = health.clone();
        let signal = shutdown.clone();
        tokio::spawn(async move {
            signal.cancelled().await;
            draining.mark_draining();
        });

        let pool = db::open(database, migrator).await?;
        let check_pool = pool.clone();
        health.add_check("database", move || {
            let pool = check_pool.clone();
            async move { db::ping(&pool).await.map_err(|e| e.to_string()) }
        });
        Ok(Self {
            pool,
            health,
            admin,
            admin_stop,
        })
    }

    /// Start-up is complete: `/startup` and (dependencies permitting) `/ready` answer 200.
    pub fn started(&self) {
        self.health.mark_started();
    }

    /// After the service's servers have drained: waits for the relay and the consumer, closes
    /// the pool and stops the probes.
    pub async fn end(self, messaging: Messaging) {
        self.health.mark_draining();
        messaging.join().await;
        self.pool.close().await;
        self.admin_stop.cancel();
        match self.admin.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "admin server failed"),
            Err(error) => tracing::warn!(%error, "admin server panicked"),
        }
    }
}
