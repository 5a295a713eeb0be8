//! Inventory's configuration. The `Default` impl below is the one place its defaults live;
//! every field can be overridden by `INVENTORY_<FIELD>` (nested with `__`) or by a TOML file
//! named in `INVENTORY_CONFIG_FILE`.

use std::net::SocketAddr;

use faultline_auth::MtlsSettings;
use faultline_idempotency::IdempotencyConfig;
use faultline_platform::config::{
    self, AdminSettings, ConfigError, DatabaseSettings, KafkaSettings, LifecycleSettings,
};
use serde::{Deserialize, Serialize};

/// Environment variable prefix.
pub const PREFIX: &str = "INVENTORY";

/// Everything the inventory service reads at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// gRPC listen address. Default `127.0.0.1:50051`.
    pub grpc_listen: SocketAddr,
    /// Probe server. Default `127.0.0.1:9181`.
    pub admin: AdminSettings,
    /// Default: database `inventory` on the local Postgres.
    pub database: DatabaseSettings,
    /// Default: broker on `127.0.0.1:9092`, no topic prefix, 3 partitions.
    pub kafka: KafkaSettings,
    /// Default: no drain delay, 10 s grace period.
    pub lifecycle: LifecycleSettings,
    /// Certificates for mutual TLS (`INVENTORY_MTLS__*`). Default: what `make
    /// credentials` writes, `.state/certs/ca.pem`, `.state/certs/inventory.pem` and its key.
    pub mtls: MtlsSettings,
    /// Idempotency keys of `UpsertProducts` (`INVENTORY_IDEMPOTENCY__*`). Defaults: keys
    /// live 24 h, a call in flight holds its key 10 s.
    pub idempotency: IdempotencyConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            admin: AdminSettings {
                listen: SocketAddr::from(([127, 0, 0, 1], 9181)),
            },
            database: DatabaseSettings::local("inventory"),
            kafka: KafkaSettings::default(),
            lifecycle: LifecycleSettings::default(),
            mtls: MtlsSettings::dev(".state/certs", "inventory"),
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
        Ok(config)
    }
}
