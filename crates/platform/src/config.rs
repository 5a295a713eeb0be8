//! Typed configuration, loaded once at start.
//!
//! Every service has one `Config` struct whose `Default` impl is the single place its
//! defaults are written down. [`load`] layers, lowest first: those defaults, an optional TOML
//! file named by `<PREFIX>_CONFIG_FILE`, and environment variables `<PREFIX>_<FIELD>` with
//! `__` between nested fields (`CHECKOUT_DATABASE__URL`). Unknown keys are errors, so a typo in
//! a variable name stops the service instead of being silently ignored.

use std::net::SocketAddr;

use faultline_auth::Secret;
use faultline_settings::{SettingError, join, positive};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// A configuration that cannot be used, with the setting that is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value could not be read or has the wrong type.
    #[error("configuration could not be loaded: {0}")]
    Load(#[from] Box<figment::Error>),
    /// A value was read but is not acceptable. Every crate's `validate(path)` reports this
    /// one error type, so `?` brings it here.
    #[error(transparent)]
    Invalid(#[from] SettingError),
}

/// Loads `T` from its defaults, the optional file and the environment (see the module docs).
pub fn load<T>(prefix: &str) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let file_var = format!("{prefix}_CONFIG_FILE");
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Ok(path) = std::env::var(&file_var) {
        figment = figment.merge(Toml::file_exact(path));
    }
    figment
        .merge(
            Env::prefixed(&format!("{prefix}_"))
                .ignore(&["CONFIG_FILE"])
                .split("__"),
        )
        .extract()
        .map_err(|e| ConfigError::Load(Box::new(e)))
}

/// Where a service's Postgres database lives and how many connections it may hold.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Connection URL without a password; the database in it is created on first start if
    /// absent.
    pub url: String,
    /// The password (`<PREFIX>_DATABASE__PASSWORD`), kept out of the URL so it never shows
    /// in a log line or a config dump. Default: none (trust or peer authentication).
    #[serde(default)]
    pub password: Option<Secret<String>>,
    /// Upper bound of the pool.
    pub max_connections: u32,
    /// How long a caller waits for a pooled connection before failing.
    pub acquire_timeout_ms: u64,
    /// The server cancels a statement that runs longer (`statement_timeout`): no request,
    /// sweep or consumer step may hold a connection without bound.
    pub statement_timeout_ms: u64,
    /// The server gives up waiting for a row or table lock after this long (`lock_timeout`),
    /// so a stuck lock holder costs its waiters an error they retry, not a hang.
    pub lock_timeout_ms: u64,
    /// The server ends a session that sits inside a transaction doing nothing for this long
    /// (`idle_in_transaction_session_timeout`). This is what frees the row locks of a process
    /// that froze or lost its network mid-transaction: its TCP connection may look alive for
    /// hours, its silence does not.
    pub idle_in_transaction_timeout_ms: u64,
    /// The server drops a connection whose peer stops acknowledging for this long
    /// (`tcp_user_timeout`, with keepalives probing an idle one at a third of it), instead of
    /// the kernel's default of about two hours.
    pub dead_peer_timeout_ms: u64,
}

impl DatabaseSettings {
    /// Settings for the database `name` on the local Postgres.
    pub fn local(name: &str) -> Self {
        Self {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            password: None,
            max_connections: 10,
            acquire_timeout_ms: 5_000,
            statement_timeout_ms: 10_000,
            lock_timeout_ms: 2_000,
            idle_in_transaction_timeout_ms: 15_000,
            dead_peer_timeout_ms: 20_000,
        }
    }

    /// The server-side session settings every connection of the pool starts with (see the
    /// fields); sent in the startup packet, so no connection ever runs without them.
    pub fn session_parameters(&self) -> Vec<(&'static str, String)> {
        let keepalive_idle_s = (self.dead_peer_timeout_ms / 3_000).max(1);
        let keepalive_interval_s = (self.dead_peer_timeout_ms / 9_000).max(1);
        vec![
            ("statement_timeout", self.statement_timeout_ms.to_string()),
            ("lock_timeout", self.lock_timeout_ms.to_string()),
            (
                "idle_in_transaction_session_timeout",
                self.idle_in_transaction_timeout_ms.to_string(),
            ),
            ("tcp_user_timeout", self.dead_peer_timeout_ms.to_string()),
            ("tcp_keepalives_idle", keepalive_idle_s.to_string()),
            ("tcp_keepalives_interval", keepalive_interval_s.to_string()),
            ("tcp_keepalives_count", "3".to_string()),
        ]
    }

    /// Rejects settings that cannot work; `path` is the section's variable prefix
    /// (`CHECKOUT_DATABASE`).
    pub fn validate(&self, path: &str) -> Result<(), SettingError> {
        if !self.url.starts_with("postgres://") && !self.url.starts_with("postgresql://") {
            return Err(SettingError::new(path, "URL", "must be a postgres:// URL"));
        }
        if url_has_password(&self.url) {
            return Err(SettingError::new(
                path,
                "URL",
                format!(
                    "must not carry a password; set {} instead, which is never logged",
                    join(path, "PASSWORD")
                ),
            ));
        }
        positive(path, "MAX_CONNECTIONS", u64::from(self.max_connections))?;
        positive(path, "STATEMENT_TIMEOUT_MS", self.statement_timeout_ms)?;
        positive(path, "LOCK_TIMEOUT_MS", self.lock_timeout_ms)?;
        positive(
            path,
            "IDLE_IN_TRANSACTION_TIMEOUT_MS",
            self.idle_in_transaction_timeout_ms,
        )?;
        if self.dead_peer_timeout_ms < 3_000 {
            return Err(SettingError::new(
                path,
                "DEAD_PEER_TIMEOUT_MS",
                "must be at least 3000: keepalives probe in whole seconds",
            ));
        }
        Ok(())
    }
}

/// Whether a `postgres://user:password@host/...` URL has the `:password` part (or a
/// `password=` query parameter).
fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let userinfo = authority.rsplit_once('@').map(|(userinfo, _)| userinfo);
    let query = url
        .split_once('?')
        .map(|(_, query)| query)
        .unwrap_or_default();
    userinfo.is_some_and(|userinfo| userinfo.contains(':'))
        || query
            .split('&')
            .any(|pair| pair.to_ascii_lowercase().starts_with("password="))
}

/// How a service reaches the Kafka-protocol broker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// Comma-separated `host:port` list.
    pub brokers: String,
    /// Prepended to every topic and consumer group name, so several independent systems
    /// (test runs, say) can share one broker.
    pub topic_prefix: String,
    /// Partitions for topics this service creates.
    pub partitions: i32,
    /// Replication factor for topics this service creates (1 on a single local broker).
    pub replication_factor: i32,
    /// A consumer with work and no progress for this long is replaced by a new group
    /// member, then fails readiness, then liveness (`faultline_outbox::consumer::watchdog`).
    /// Longer than the 30 s session timeout, so an ordinary rebalance is not a stall.
    pub consumer_stall_ms: u64,
    /// The consumer group to read with, when not the service's own (its name under the
    /// prefix, the default: empty). The inbox keeps the service's name, so a fresh group
    /// re-reads every topic from the start and every record is found there and skipped:
    /// the way to replay a topic, or to prove that a replay changes nothing.
    pub consumer_group: String,
    /// This replica's static group membership (`group.instance.id`; empty, the default: a
    /// dynamic member). A static member that crashes and starts again under the same id
    /// takes its old membership and partitions back on its first join, instead of waiting
    /// for the broker to expire the dead member's session (30 s) and then rebalancing. The
    /// price: it never leaves the group, even when it stops cleanly, so a replica that goes
    /// away for good holds its partitions until its session expires. Set it only to a name
    /// that survives a process restart and that no other live process has: two processes
    /// with one id fence each other.
    pub group_instance_id: String,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic_prefix: String::new(),
            partitions: 3,
            replication_factor: 1,
            consumer_stall_ms: 45_000,
            consumer_group: String::new(),
            group_instance_id: String::new(),
        }
    }
}

impl KafkaSettings {
    /// The full name of `topic` under this system's prefix.
    pub fn topic(&self, topic: &str) -> String {
        format!("{}{topic}", self.topic_prefix)
    }

    /// The consumer group of `service`: [`KafkaSettings::consumer_group`] if set, else the
    /// service's name under the prefix.
    pub fn group(&self, service: &str) -> String {
        if self.consumer_group.is_empty() {
            self.topic(service)
        } else {
            self.consumer_group.clone()
        }
    }

    /// Rejects settings that cannot work; `path` is the section's variable prefix
    /// (`CHECKOUT_KAFKA`).
    pub fn validate(&self, path: &str) -> Result<(), SettingError> {
        if self.brokers.trim().is_empty() {
            return Err(SettingError::new(
                path,
                "BROKERS",
                "must name at least one broker",
            ));
        }
        for (field, value) in [
            ("PARTITIONS", self.partitions),
            ("REPLICATION_FACTOR", self.replication_factor),
        ] {
            if value < 1 {
                return Err(SettingError::new(path, field, "must be at least 1"));
            }
        }
        positive(path, "CONSUMER_STALL_MS", self.consumer_stall_ms)
    }
}

/// How a service stops.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleSettings {
    /// After SIGTERM, readiness fails at once but the servers keep serving this long, so
    /// load balancers stop sending traffic before connections are refused. Default 0 (no
    /// load balancer locally); a few seconds behind Kubernetes.
    pub drain_delay_ms: u64,
    /// Longest the whole shutdown may take, from the signal to exit; what has not finished
    /// by then is abandoned (and redelivered or re-run on restart). Default 10 000.
    pub grace_period_ms: u64,
}

impl Default for LifecycleSettings {
    fn default() -> Self {
        Self {
            drain_delay_ms: 0,
            grace_period_ms: 10_000,
        }
    }
}

impl LifecycleSettings {
    /// Rejects settings that cannot work; `path` is the section's variable prefix
    /// (`CHECKOUT_LIFECYCLE`).
    pub fn validate(&self, path: &str) -> Result<(), SettingError> {
        positive(path, "GRACE_PERIOD_MS", self.grace_period_ms)?;
        if self.drain_delay_ms >= self.grace_period_ms {
            return Err(SettingError::new(
                path,
                "DRAIN_DELAY_MS",
                "must be shorter than the grace period",
            ));
        }
        Ok(())
    }
}

/// The admin HTTP server that answers the probes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Address to listen on.
    pub listen: SocketAddr,
}

#[cfg(test)]
// `figment::Jail` closures must return `figment::Error`, which is large; not our choice.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Example {
        name: String,
        kafka: KafkaSettings,
        database: DatabaseSettings,
    }

    impl Default for Example {
        fn default() -> Self {
            Self {
                name: "default".into(),
                kafka: KafkaSettings::default(),
                database: DatabaseSettings::local("example"),
            }
        }
    }

    #[test]
    fn the_database_password_is_set_apart_and_never_shown() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("EXAMPLE_DATABASE__PASSWORD", "hunter2");
            let config: Example = load("EXAMPLE").map_err(|e| e.to_string())?;
            let password = config
                .database
                .password
                .as_ref()
                .map(|p| p.expose().as_str());
            assert_eq!(password, Some("hunter2"));
            let shown = format!("{config:?} {}", serde_json::json!(config.database.password));
            assert!(!shown.contains("hunter2"), "{shown}");
            Ok(())
        });
    }

    #[test]
    fn a_password_inside_the_url_is_refused() {
        for url in [
            "postgres://app:hunter2@db:5432/orders",
            "postgres://app@db/orders?sslmode=require&password=hunter2",
        ] {
            let settings = DatabaseSettings {
                url: url.into(),
                ..DatabaseSettings::local("x")
            };
            let err = settings
                .validate("CHECKOUT_DATABASE")
                .unwrap_err()
                .to_string();
            assert!(err.contains("CHECKOUT_DATABASE__PASSWORD"), "{url}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        for url in [
            "postgres://postgres@127.0.0.1:5432/orders",
            "postgresql://db/orders?application_name=a:b",
        ] {
            let settings = DatabaseSettings {
                url: url.into(),
                ..DatabaseSettings::local("x")
            };
            assert!(settings.validate("CHECKOUT_DATABASE").is_ok(), "{url}");
        }
    }

    #[test]
    fn defaults_then_environment_with_nested_fields() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("EXAMPLE_NAME", "from-env");
            jail.set_env("EXAMPLE_KAFKA__PARTITIONS", "7");
            let config: Example = load("EXAMPLE").map_err(|e| e.to_string())?;
            assert_eq!(config.name, "from-env");
            assert_eq!(config.kafka.partitions, 7);
            assert_eq!(config.kafka.brokers, "127.0.0.1:9092");
            Ok(())
        });
    }

    #[test]
    fn a_file_sits_between_defaults_and_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "example.toml",
                "name = \"from-file\"\n[kafka]\npartitions = 5\n",
            )?;
            jail.set_env("EXAMPLE_CONFIG_FILE", "example.toml");
            jail.set_env("EXAMPLE_KAFKA__PARTITIONS", "9");
            let config: Example = load("EXAMPLE").map_err(|e| e.to_string())?;
            assert_eq!(config.name, "from-file");
            assert_eq!(config.kafka.partitions, 9);
            Ok(())
        });
    }

    #[test]
    fn a_misspelled_variable_is_an_error_not_a_silent_default() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("EXAMPLE_KAFKA__PARTITONS", "7");
            let err = load::<Example>("EXAMPLE").unwrap_err();
            assert!(err.to_string().contains("partitons"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn validation_names_the_setting() {
        let kafka = KafkaSettings {
            partitions: 0,
            ..KafkaSettings::default()
        };
        let err = kafka.validate("CHECKOUT_KAFKA").unwrap_err();
        assert!(
            err.to_string().contains("CHECKOUT_KAFKA__PARTITIONS"),
            "{err}"
        );
    }
}
