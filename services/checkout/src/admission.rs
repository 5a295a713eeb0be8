//! Admission control: checkout takes a new order only while the saga pipeline can finish it.
//!
//! An order accepted beyond the pipeline's capacity is not served later, it is cancelled
//! later: its saga waits in queues (the outbox, the broker, a participant's partition)
//! until a step deadline runs out. So the edge refuses it instead, with `503` and
//! `Retry-After`, before anything is written (the route puts this in front of the
//! idempotency layer, so not even the key is claimed).
//!
//! Work in flight is measured where it lives, in checkout's database, so every replica sees
//! the same figures: the sagas not yet finished (the saga table's partial deadline index
//! holds exactly those) and the age of the oldest outbox row not yet published (the relay
//! or the broker falling behind). A sampler reads both every `sample_interval_ms`; between
//! samples each admitted order counts itself, so a burst cannot overrun the limit by a
//! whole sample's worth of orders. The same sample gives the age of the oldest unfinished
//! saga, the gauge that says an order is stuck.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use faultline_settings::{SettingError, positive};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// The limits of work in flight.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionSettings {
    /// Sagas not yet finished beyond which new orders are refused. Default 100: at the
    /// local stack's measured capacity (about 27 orders/s, docs/performance.md) that is about
    /// 4 s of work, far inside the 15 s step timeout; at 400 the queue alone came within a
    /// second of it. Raise it with the capacity (capacity x the wait you accept).
    pub max_sagas_in_flight: u64,
    /// Refuse new orders while the oldest unpublished outbox row is older than this.
    /// Default 5 000 ms.
    pub max_outbox_age_ms: u64,
    /// How often the figures are read from the database. Default 200 ms.
    pub sample_interval_ms: u64,
    /// What `Retry-After` tells a refused client, in seconds. Default 1.
    pub retry_after_secs: u64,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        Self {
            max_sagas_in_flight: 100,
            max_outbox_age_ms: 5_000,
            sample_interval_ms: 200,
            retry_after_secs: 1,
        }
    }
}

impl AdmissionSettings {
    /// Rejects settings that cannot work; `path` is the section's variable prefix.
    pub fn validate(&self, path: &str) -> Result<(), SettingError> {
        positive(path, "MAX_SAGAS_IN_FLIGHT", self.max_sagas_in_flight)?;
        positive(path, "MAX_OUTBOX_AGE_MS", self.max_outbox_age_ms)?;
        positive(path, "SAMPLE_INTERVAL_MS", self.sample_interval_ms)?;
        positive(path, "RETRY_AFTER_SECS", self.retry_after_secs)
    }
}

/// Why an order was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Too many sagas are still running.
    #[error("{in_flight} orders are still in progress (limit {limit}); retry later")]
    SagasInFlight {
        /// Sagas not finished.
        in_flight: u64,
        limit: u64,
    },
    /// The outbox is behind.
    #[error("messages wait {age_ms} ms to be published (limit {limit_ms} ms); retry later")]
    OutboxBehind {
        /// Age of the oldest unpublished row.
        age_ms: u64,
        limit_ms: u64,
    },
}

/// The admission decision, shared by every request. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: AdmissionSettings,
    in_flight: AtomicU64,
    outbox_age_ms: AtomicU64,
    oldest_saga_ms: AtomicU64,
    refused: AtomicU64,
}

impl Admission {
    /// Admits everything until the first sample says otherwise.
    pub fn new(settings: AdmissionSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                in_flight: AtomicU64::new(0),
                outbox_age_ms: AtomicU64::new(0),
                oldest_saga_ms: AtomicU64::new(0),
                refused: AtomicU64::new(0),
            }),
        }
    }

    /// Takes one more order, or says why not. An admitted order counts itself until the
    /// next sample replaces the estimate with the database's figure.
    pub fn admit(&self) -> Result<(), Refusal> {
        let settings = &self.inner.settings;
        let age_ms = self.inner.outbox_age_ms.load(Ordering::Relaxed);
        let refusal = if age_ms > settings.max_outbox_age_ms {
            Some(Refusal::OutboxBehind {
                age_ms,
                limit_ms: settings.max_outbox_age_ms,
            })
        } else {
            let limit = settings.max_sagas_in_flight;
            let counted =
                self.inner
                    .in_flight
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        (n < limit).then_some(n + 1)
                    });
            counted
                .err()
                .map(|in_flight| Refusal::SagasInFlight { in_flight, limit })
        };
        match refusal {
            None => Ok(()),
            Some(refusal) => {
                self.inner.refused.fetch_add(1, Ordering::Relaxed);
                Err(refusal)
            }
        }
    }

    /// What a refused client is told to wait.
    pub fn retry_after_secs(&self) -> u64 {
        self.inner.settings.retry_after_secs
    }

    /// Orders refused so far.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// Sagas in flight, as last sampled (plus orders admitted since).
    pub fn in_flight(&self) -> u64 {
        self.inner.in_flight.load(Ordering::Relaxed)
    }

    /// `checkout_sagas_in_flight` and `checkout_orders_refused_total`, read at scrape time.
    pub fn collector(&self) -> impl Collector {
        AdmissionMetrics(self.clone())
    }

    fn record(&self, in_flight: u64, outbox_age: Duration) {
        self.inner.in_flight.store(in_flight, Ordering::Relaxed);
        let age_ms = u64::try_from(outbox_age.as_millis()).unwrap_or(u64::MAX);
        self.inner.outbox_age_ms.store(age_ms, Ordering::Relaxed);
    }

    /// Refreshes the figures from `pool` until `stop`. A failed sample keeps the last
    /// figures: an unreachable database refuses orders on its own.
    pub async fn sample(self, pool: PgPool, stop: CancellationToken) {
        let every = Duration::from_millis(self.inner.settings.sample_interval_ms);
        loop {
            match read(&pool).await {
                Ok(sample) => {
                    self.record(sample.in_flight, sample.outbox_age);
                    let millis = u64::try_from(sample.oldest_saga.as_millis()).unwrap_or(u64::MAX);
                    self.inner.oldest_saga_ms.store(millis, Ordering::Relaxed);
                }
                Err(error) => tracing::debug!(%error, "admission sample failed"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}

#[derive(Debug)]
struct AdmissionMetrics(Admission);

impl Collector for AdmissionMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let in_flight = ConstGauge::new(i64::try_from(self.0.in_flight()).unwrap_or(i64::MAX));
        let metric = encoder.encode_descriptor(
            "checkout_sagas_in_flight",
            "Sagas not yet finished, as admission control last counted them",
            None,
            in_flight.metric_type(),
        )?;
        in_flight.encode(metric)?;
        let oldest_ms = self.0.inner.oldest_saga_ms.load(Ordering::Relaxed);
        let oldest = ConstGauge::new(oldest_ms as f64 / 1000.0);
        let metric = encoder.encode_descriptor(
            "checkout_oldest_unfinished_saga_age",
            "Age of the oldest saga not yet finished: how long the most stuck order has waited",
            Some(&Unit::Seconds),
            oldest.metric_type(),
        )?;
        oldest.encode(metric)?;
        let refused = ConstCounter::new(self.0.refused());
        let metric = encoder.encode_descriptor(
            "checkout_orders_refused",
            "New orders refused because the saga pipeline was full",
            None,
            refused.metric_type(),
        )?;
        refused.encode(metric)
    }
}

/// What one sample reads.
struct Sample {
    in_flight: u64,
    oldest_saga: Duration,
    outbox_age: Duration,
}

async fn read(pool: &PgPool) -> Result<Sample, sqlx::Error> {
    // Unfinished sagas are exactly those with a deadline (a CHECK constraint says so), and
    // the partial index on deadlines finds just those.
    let (in_flight, oldest): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*), extract(epoch FROM now() - min(created_at))::float8
         FROM order_sagas WHERE deadline_at IS NOT NULL",
    )
    .fetch_one(pool)
    .await?;
    let backlog = faultline_outbox::backlog(pool).await?;
    Ok(Sample {
        in_flight: u64::try_from(in_flight).unwrap_or(0),
        oldest_saga: Duration::try_from_secs_f64(oldest.unwrap_or(0.0)).unwrap_or_default(),
        outbox_age: backlog.oldest.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max_sagas_in_flight: u64) -> Admission {
        Admission::new(AdmissionSettings {
            max_sagas_in_flight,
            ..AdmissionSettings::default()
        })
    }

    #[test]
    fn orders_admitted_between_samples_count_against_the_limit() {
        let admission = admission(3);
        admission.record(1, Duration::ZERO);
        assert!(admission.admit().is_ok());
        assert!(admission.admit().is_ok());
        assert_eq!(
            admission.admit(),
            Err(Refusal::SagasInFlight {
                in_flight: 3,
                limit: 3
            })
        );
        assert_eq!(admission.refused(), 1);
        // The next sample sees sagas finished and makes room again.
        admission.record(0, Duration::ZERO);
        assert!(admission.admit().is_ok());
    }

    #[test]
    fn an_outbox_behind_refuses_whatever_the_saga_count() {
        let admission = admission(100);
        admission.record(0, Duration::from_millis(5_001));
        assert!(matches!(
            admission.admit(),
            Err(Refusal::OutboxBehind { age_ms: 5_001, .. })
        ));
        admission.record(0, Duration::from_millis(5_000));
        assert!(admission.admit().is_ok());
    }
}
