//! Payments' configuration. The `Default` impl below is the one place its defaults live;
//! every field can be overridden by `PAYMENTS_<FIELD>` (nested with `__`) or by a TOML file
//! named in `PAYMENTS_CONFIG_FILE`.

use std::net::SocketAddr;

use faultline_idempotency::IdempotencyConfig;
use faultline_resilience::ClientConfig;

use crate::provider::Faults;
use faultline_auth::MtlsSettings;
use faultline_platform::config::{
    self, AdminSettings, ConfigError, DatabaseSettings, KafkaSettings, LifecycleSettings,
};
use faultline_settings::SettingError;
use serde::{Deserialize, Serialize};

/// Environment variable prefix.
pub const PREFIX: &str = "PAYMENTS";

/// Everything the payments service reads at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// gRPC listen address. Default `127.0.0.1:50052`.
    pub grpc_listen: SocketAddr,
    /// Probe server. Default `127.0.0.1:9182`.
    pub admin: AdminSettings,
    /// Default: database `payments` on the local Postgres.
    pub database: DatabaseSettings,
    /// Default: broker on `127.0.0.1:9092`, no topic prefix, 3 partitions.
    pub kafka: KafkaSettings,
    /// Default: no drain delay, 10 s grace period.
    pub lifecycle: LifecycleSettings,
    /// Certificates for mutual TLS (`PAYMENTS_MTLS__*`). Default: what `make
    /// credentials` writes, `.state/certs/ca.pem`, `.state/certs/payments.pem` and its key.
    pub mtls: MtlsSettings,
    /// The simulated payment provider.
    pub provider: ProviderSettings,
    /// Idempotency keys of `Authorize` (gRPC and Kafka share them). Defaults: keys live
    /// 24 h, an authorization in flight holds its key 10 s.
    pub idempotency: IdempotencyConfig,
}

/// The simulated payment provider and the client stack in front of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    /// Authorizations above this many minor units are declined (the card's limit).
    /// Default 50 000 (500.00 in a two-decimal currency).
    pub decline_above_minor: i64,
    /// Faults at start (`PAYMENTS_PROVIDER__FAULTS__LATENCY_MS`, `..__FAILURE_RATE`);
    /// changeable at run time through `PUT /provider` on the admin port. Default none.
    pub faults: Faults,
    /// The client stack (`PAYMENTS_PROVIDER__RESILIENCE__*`), the crate's defaults: 2 s
    /// overall, 500 ms per attempt, 3 attempts reusing the idempotency key, a breaker.
    pub resilience: ClientConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 50052)),
            admin: AdminSettings {
                listen: SocketAddr::from(([127, 0, 0, 1], 9182)),
            },
            database: DatabaseSettings::local("payments"),
            kafka: KafkaSettings::default(),
            lifecycle: LifecycleSettings::default(),
            mtls: MtlsSettings::dev(".state/certs", "payments"),
            provider: ProviderSettings {
                decline_above_minor: 50_000,
                faults: Faults::default(),
                resilience: ClientConfig::default(),
            },
            idempotency: IdempotencyConfig::default(),
        }
    }
}

impl Config {
    /// Loads and validates the configuration.
    pub fn load() -> Result<Self, ConfigError> {
        let config: Self = config::load(PREFIX)?;
        config.database.validate(&format!("{PREFIX}_DATABASE"))?;
        config.kafka.validate(&format!("{PREFIX}_KAFKA"))?;
        config.lifecycle.validate(&format!("{PREFIX}_LIFECYCLE"))?;
        config.mtls.validate(&format!("{PREFIX}_MTLS"))?;
        config
            .idempotency
            .validate(&format!("{PREFIX}_IDEMPOTENCY"))?;
        let provider = format!("{PREFIX}_PROVIDER");
        config
            .provider
            .faults
            .validate(&format!("{provider}__FAULTS"))?;
        config
            .provider
            .resilience
            .validate(&format!("{provider}__RESILIENCE"))?;
        if config.provider.decline_above_minor < 0 {
            return Err(SettingError::new(
                &provider,
                "DECLINE_ABOVE_MINOR",
                "must not be negative",
            )
            .into());
        }
        Ok(config)
    }
}
