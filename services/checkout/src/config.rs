//! Checkout's configuration. The `Default` impl below is the one place its defaults live;
//! every field can be overridden by `CHECKOUT_<FIELD>` (nested with `__`) or by a TOML file
//! named in `CHECKOUT_CONFIG_FILE`.

use std::net::SocketAddr;
use std::time::Duration;

use faultline_auth::{JwtSettings, MtlsSettings, PolicySettings};
use faultline_cache::CacheConfig;
use faultline_idempotency::IdempotencyConfig;
use faultline_platform::config::{
    self, AdminSettings, ConfigError, DatabaseSettings, KafkaSettings, LifecycleSettings,
};
use faultline_resilience::{ClientConfig, EdgeConfig, HedgeConfig};
use faultline_settings::{SettingError, positive};
use serde::{Deserialize, Serialize};

use crate::admission::AdmissionSettings;

/// Environment variable prefix.
pub const PREFIX: &str = "CHECKOUT";

/// Everything checkout reads at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Public HTTP API. Default `127.0.0.1:8080`.
    pub http_listen: SocketAddr,
    /// Largest request body accepted, in bytes. Default 65 536.
    pub max_body_bytes: usize,
    /// Probe server. Default `127.0.0.1:9180`.
    pub admin: AdminSettings,
    /// Default: database `checkout` on the local Postgres.
    pub database: DatabaseSettings,
    /// Default: broker on `127.0.0.1:9092`, no topic prefix, 3 partitions.
    pub kafka: KafkaSettings,
    /// Default: no drain delay, 10 s grace period.
    pub lifecycle: LifecycleSettings,
    /// How checkout calls inventory's catalog.
    pub inventory: InventoryClientSettings,
    /// The public edge: rate limit per caller, priority shedding, concurrency cap
    /// (`CHECKOUT_EDGE__*`; defaults in `faultline_resilience::EdgeConfig`).
    pub edge: EdgeConfig,
    /// Saga deadlines.
    pub saga: SagaSettings,
    /// How much unfinished work checkout takes on before it refuses new orders
    /// (`CHECKOUT_ADMISSION__*`; defaults in [`AdmissionSettings`]).
    pub admission: AdmissionSettings,
    /// The catalog cache in front of inventory (`CHECKOUT_CACHE__*`): faultline-cache's
    /// defaults (Redis at `redis://127.0.0.1:6379`, 5 min TTL with 10 % jitter, 30 s for
    /// "not found", a 1 s in-process L1).
    pub cache: CacheConfig,
    /// Access tokens (`CHECKOUT_AUTH__*`): issuer `faultline-dev`, audience `faultline`,
    /// keys from `.state/auth/jwks.json` (what `make credentials` writes); point `JWKS` at an
    /// identity provider's URL in production.
    pub auth: JwtSettings,
    /// Authorization policies (`CHECKOUT_POLICY__*`): Rego files under `policies/`, reloaded
    /// every 5 s.
    pub policy: PolicySettings,
    /// Certificates for mutual TLS to inventory (`CHECKOUT_MTLS__*`). Default: what `make
    /// credentials` writes under `.state/certs`.
    pub mtls: MtlsSettings,
    /// `Idempotency-Key` handling for `POST /v1/orders`. Defaults: keys live 24 h, an
    /// in-flight request holds its key 10 s, a duplicate is told to retry after 1 s, expired
    /// keys are reaped every 60 s. The body limit is `max_body_bytes` above.
    pub idempotency: IdempotencyConfig,
}

/// The gRPC client for inventory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryClientSettings {
    /// Default `https://127.0.0.1:50051`. Always mutual TLS (see `mtls`); the scheme is
    /// only checked, never used to turn TLS off.
    pub url: String,
    /// Default 1 000 ms.
    pub connect_timeout_ms: u64,
    /// The client stack (`CHECKOUT_INVENTORY__RESILIENCE__*`): the crate's defaults (2 s
    /// overall deadline sent on as `grpc-timeout`, 500 ms per attempt, 3 attempts within a
    /// 20 % retry budget, a breaker opening at 50 % failures over the last 100 calls), with
    /// hedging on, since `GetProducts` is a read.
    pub resilience: ClientConfig,
}

/// How long saga steps may take.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SagaSettings {
    /// A step without an answer after this long is sent again. Default 15 000 ms.
    pub step_timeout_ms: u64,
    /// Sends of a compensable step before the order is cancelled. Default 3.
    pub max_attempts: u32,
    /// How often overdue sagas are looked for. Default 1 000 ms.
    pub sweep_interval_ms: u64,
}

impl SagaSettings {
    /// `step_timeout_ms` as a duration.
    pub fn step_timeout(&self) -> Duration {
        Duration::from_millis(self.step_timeout_ms)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 64 * 1024,
            admin: AdminSettings {
                listen: SocketAddr::from(([127, 0, 0, 1], 9180)),
            },
            database: DatabaseSettings::local("checkout"),
            kafka: KafkaSettings::default(),
            lifecycle: LifecycleSettings::default(),
            inventory: InventoryClientSettings {
                url: "https://127.0.0.1:50051".into(),
                connect_timeout_ms: 1_000,
                resilience: ClientConfig {
                    hedge: HedgeConfig {
                        enabled: true,
                        ..HedgeConfig::default()
                    },
                    ..ClientConfig::default()
                },
            },
            edge: EdgeConfig::default(),
            saga: SagaSettings {
                step_timeout_ms: 15_000,
                max_attempts: 3,
                sweep_interval_ms: 1_000,
            },
            admission: AdmissionSettings::default(),
            cache: CacheConfig::default(),
            auth: JwtSettings::default(),
            policy: PolicySettings::default(),
            mtls: MtlsSettings::dev(".state/certs", "checkout"),
            idempotency: IdempotencyConfig::default(),
        }
    }
}

impl Config {
    /// Loads and validates the configuration.
    pub fn load() -> Result<Self, ConfigError> {
        let config: Self = config::load(PREFIX)?;
        config.validate()?;
        Ok(config)
    }

    /// Rejects settings that cannot work, naming the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.database.validate(&format!("{PREFIX}_DATABASE"))?;
        self.kafka.validate(&format!("{PREFIX}_KAFKA"))?;
        self.lifecycle.validate(&format!("{PREFIX}_LIFECYCLE"))?;
        if self.max_body_bytes == 0 {
            return Err(SettingError::named(
                format!("{PREFIX}_MAX_BODY_BYTES"),
                "must be greater than zero",
            )
            .into());
        }
        let inventory = format!("{PREFIX}_INVENTORY");
        positive(
            &inventory,
            "CONNECT_TIMEOUT_MS",
            self.inventory.connect_timeout_ms,
        )?;
        let saga = format!("{PREFIX}_SAGA");
        positive(&saga, "STEP_TIMEOUT_MS", self.saga.step_timeout_ms)?;
        positive(&saga, "MAX_ATTEMPTS", u64::from(self.saga.max_attempts))?;
        positive(&saga, "SWEEP_INTERVAL_MS", self.saga.sweep_interval_ms)?;
        self.admission.validate(&format!("{PREFIX}_ADMISSION"))?;
        self.inventory
            .resilience
            .validate(&format!("{inventory}__RESILIENCE"))?;
        self.edge.validate(&format!("{PREFIX}_EDGE"))?;
        self.cache.validate(&format!("{PREFIX}_CACHE"))?;
        self.auth.validate(&format!("{PREFIX}_AUTH"))?;
        self.policy.validate(&format!("{PREFIX}_POLICY"))?;
        self.mtls.validate(&format!("{PREFIX}_MTLS"))?;
        self.idempotency
            .validate(&format!("{PREFIX}_IDEMPOTENCY"))?;
        if !self.inventory.url.starts_with("https://") {
            return Err(SettingError::new(
                &inventory,
                "URL",
                "must be an https:// URL: inventory is reached over mutual TLS only",
            )
            .into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn a_broken_resilience_setting_is_refused_by_its_full_name() {
        let mut config = Config::default();
        config.inventory.resilience.breaker.failure_rate_threshold = 120.0;
        let error = config.validate().unwrap_err().to_string();
        assert!(
            error.contains("CHECKOUT_INVENTORY__RESILIENCE__BREAKER__FAILURE_RATE_THRESHOLD"),
            "{error}"
        );
    }

    #[test]
    fn a_zero_timeout_is_refused_by_name() {
        let mut config = Config::default();
        config.saga.step_timeout_ms = 0;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("CHECKOUT_SAGA__STEP_TIMEOUT_MS"), "{error}");
    }
}
