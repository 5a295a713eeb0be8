//! The part of a service's life every Faultline service shares.
//!
//! Start: the admin server comes up first (probes answer "starting"), then the database is
//! created and migrated, then the service starts its servers and messaging and calls
//! [`Lifecycle::started`].
//!
//! Stop, on SIGTERM:
//! 1. readiness fails at once, so traffic drains away;
//! 2. after `drain_delay_ms` the servers stop accepting and finish the requests in flight
//!    (the [`Lifecycle::serving`] token);
//! 3. [`Lifecycle::end`] then stops the background work (the [`Lifecycle::background`]
//!    token): consumers finish the record in hand and commit their offsets, the relay gives
//!    its slots back and flushes its producer;
//! 4. the pool closes and the probes stop. The caller flushes the tracer last.
//!
//! The whole sequence is bounded by `grace_period_ms`; whatever has not finished by then is
//! abandoned, which is safe: unpublished outbox rows stay in the outbox and unfinished
//! records are redelivered.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use faultline_telemetry::metrics::{self, Metrics};
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{AdminSettings, DatabaseSettings, LifecycleSettings};
use crate::db::{self, OpenError};
use crate::health::Health;
use crate::messaging::Messaging;

/// A service between [`Lifecycle::begin`] and [`Lifecycle::end`].
#[derive(Debug)]
pub struct Lifecycle {
    /// The service's database, migrated.
    pub pool: PgPool,
    /// The probe state.
    pub health: Health,
    /// The metrics registry served at `/metrics`.
    pub metrics: Metrics,
    serving: CancellationToken,
    background: CancellationToken,
    signalled_at: Arc<Mutex<Option<Instant>>>,
    grace_period: Duration,
    admin: JoinHandle<std::io::Result<()>>,
    admin_stop: CancellationToken,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Lifecycle {
    /// Serves the probes, `/metrics` and the service's own operator routes `admin_routes`
    /// (reporting "starting"), opens the database and applies `migrations` (the service's
    /// and each shared crate's it uses, in order), makes readiness depend on it, and arms the
    /// shutdown sequence on `shutdown`.
    pub async fn begin(
        admin: &AdminSettings,
        database: &DatabaseSettings,
        settings: &LifecycleSettings,
        migrations: &[&Migrator],
        metrics: Metrics,
        admin_routes: Router,
        shutdown: &CancellationToken,
    ) -> Result<Self, OpenError> {
        let health = Health::new();
        let admin_stop = CancellationToken::new();
        let scrape = metrics.clone();
        let router = health.router().merge(admin_routes).route(
            "/metrics",
            get(move || {
                let scrape = scrape.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
                        scrape.render(),
                    )
                        .into_response()
                }
            }),
        );
        let router = router.layer(axum::middleware::from_fn(crate::http::refuse_large_heads));
        let listener = tokio::net::TcpListener::bind(admin.listen).await?;
        tracing::info!(addr = %admin.listen, "admin server listening");
        let stop = admin_stop.clone();
        let admin = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        });

        let serving = CancellationToken::new();
        let signalled_at = Arc::new(Mutex::new(None));
        {
            let health = health.clone();
            let serving = serving.clone();
            let signal = shutdown.clone();
            let signalled_at = signalled_at.clone();
            let drain_delay = Duration::from_millis(settings.drain_delay_ms);
            tokio::spawn(async move {
                signal.cancelled().await;
                if let Ok(mut at) = signalled_at.lock() {
                    *at = Some(Instant::now());
                }
                health.mark_draining();
                tracing::info!(
                    ?drain_delay,
                    "draining: readiness fails, servers stop after the drain delay"
                );
                tokio::time::sleep(drain_delay).await;
                serving.cancel();
            });
        }

        let pool = db::open(database, migrations).await?;
        let check_pool = pool.clone();
        health.add_check("database", move || {
            let pool = check_pool.clone();
            async move { db::ping(&pool).await.map_err(|e| e.to_string()) }
        });
        Ok(Self {
            pool,
            health,
            metrics,
            serving,
            background: CancellationToken::new(),
            signalled_at,
            grace_period: Duration::from_millis(settings.grace_period_ms),
            admin,
            admin_stop,
            tasks: Vec::new(),
        })
    }

    /// Servers stop accepting when this is cancelled (after the drain delay).
    pub fn serving(&self) -> CancellationToken {
        self.serving.clone()
    }

    /// Relays, consumers, sweepers and reapers stop when this is cancelled, in
    /// [`Lifecycle::end`], after the servers.
    pub fn background(&self) -> CancellationToken {
        self.background.clone()
    }

    /// Background work that [`Lifecycle::end`] waits for, named for the log if it panics.
    /// It should stop when [`Lifecycle::background`] is cancelled.
    pub fn track(&mut self, name: &'static str, task: JoinHandle<()>) {
        self.tasks.push((name, task));
    }

    /// Spawns `work` and [tracks](Lifecycle::track) it.
    pub fn spawn(&mut self, name: &'static str, work: impl Future<Output = ()> + Send + 'static) {
        self.track(name, tokio::spawn(work));
    }

    /// Start-up is complete: `/startup` and (dependencies permitting) `/ready` answer 200.
    pub fn started(&self) {
        self.health.mark_started();
    }

    /// After the servers have drained: stops the background work and waits for it
    /// (`messaging` and every tracked task) within what is left of the grace period, then
    /// closes the pool and stops the probes.
    pub async fn end(self, messaging: Messaging) {
        self.health.mark_draining();
        self.serving.cancel();
        self.background.cancel();
        let signalled = self
            .signalled_at
            .lock()
            .ok()
            .and_then(|at| *at)
            .unwrap_or_else(Instant::now);
        let left = self.grace_period.saturating_sub(signalled.elapsed());
        let finish = async {
            messaging.join().await;
            for (name, task) in self.tasks {
                if let Err(error) = task.await {
                    tracing::error!(%error, task = name, "background task panicked");
                }
            }
        };
        if tokio::time::timeout(left, finish).await.is_err() {
            tracing::error!(
                grace_period = ?self.grace_period,
                "grace period exceeded; stopping with background work unfinished (it resumes on restart)"
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.pool.close()).await;
        self.admin_stop.cancel();
        match self.admin.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "admin server failed"),
            Err(error) => tracing::warn!(%error, "admin server panicked"),
        }
    }
}
