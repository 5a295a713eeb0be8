//! The cache's settings: one serde struct whose `Default` is the one place defaults live.
//!
//! Embed [`CacheConfig`] in a service's configuration (say as `cache` in checkout) and every
//! field becomes an environment variable under `CHECKOUT_CACHE__`; call
//! `config.cache.validate("CHECKOUT_CACHE")` at start (the platform's `SettingError` takes the
//! error with `?`). Errors are `faultline-settings`' [`SettingError`], as everywhere, so the
//! breaker's settings nested here report the same way.

use faultline_resilience::BreakerConfig;
use faultline_settings::{SettingError, join, positive};
use serde::{Deserialize, Serialize};

/// Settings of one cache (one key space, one value type), its Redis nodes and its L1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Off: every read goes to the origin and nothing is cached (`..__ENABLED`). Default true.
    pub enabled: bool,
    /// Comma-separated `redis://host:port[/db]` URLs; keys are spread across them by
    /// rendezvous hashing on the URL as written (`..__NODES`). Default
    /// `redis://127.0.0.1:6379`.
    pub nodes: String,
    /// First segment of every key, so several systems can share a Redis (`..__KEY_PREFIX`).
    /// No `:` or whitespace. Default `faultline`.
    pub key_prefix: String,
    /// Longest time a loaded value is served as fresh (`..__TTL_MS`). Default 300 000 (5 min).
    pub ttl_ms: u64,
    /// Each write's TTL is drawn uniformly from `[ttl × (1 − p/100), ttl]`, so keys loaded
    /// together do not expire together; `ttl_ms` stays the upper bound
    /// (`..__TTL_JITTER_PERCENT`, `0..100`). Default 10.
    pub ttl_jitter_percent: f64,
    /// TTL of a cached "not found", jittered the same way (`..__NEGATIVE_TTL_MS`). Default
    /// 30 000.
    pub negative_ttl_ms: u64,
    /// How long an expired value stays in Redis to be served while one caller reloads it
    /// (`..__STALE_MS`; 0 = never serve stale). Default 30 000.
    pub stale_ms: u64,
    /// XFetch's β: how eagerly a hot key is refreshed before it expires (`..__EARLY_REFRESH_BETA`;
    /// 0 = never early, 1 = the paper's optimum, more = earlier). Default 1.0.
    pub early_refresh_beta: f64,
    /// Lifetime of the lease that lets one process load a key (`..__LEASE_TTL_MS`); a loader
    /// that dies holds it at most this long. Default 2 000.
    pub lease_ttl_ms: u64,
    /// How long a caller that found the lease taken waits for the loader's value before
    /// loading itself (`..__LEASE_WAIT_MS`; 0 = never wait). Default 300.
    pub lease_wait_ms: u64,
    /// How often a waiting caller looks for the value (`..__LEASE_POLL_MS`). Default 20.
    pub lease_poll_ms: u64,
    /// Every Redis command's timeout, a timeout counting as a breaker failure
    /// (`..__COMMAND_TIMEOUT_MS`). Default 100.
    pub command_timeout_ms: u64,
    /// Timeout of each connection attempt (`..__CONNECT_TIMEOUT_MS`). Default 250.
    pub connect_timeout_ms: u64,
    /// Keys longer than this many bytes (or containing `#`) are stored as their first 32
    /// bytes, `#` and their SHA-256 in hex (`..__MAX_KEY_BYTES`, `16..=1024`). Default 200.
    pub max_key_bytes: usize,
    /// The in-process cache in front of Redis (`..__L1__*`).
    pub l1: L1Config,
    /// The breaker around each Redis node (`..__BREAKER__*`, see faultline-resilience);
    /// defaults as there.
    pub breaker: BreakerConfig,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            nodes: "redis://127.0.0.1:6379".into(),
            key_prefix: "faultline".into(),
            ttl_ms: 300_000,
            ttl_jitter_percent: 10.0,
            negative_ttl_ms: 30_000,
            stale_ms: 30_000,
            early_refresh_beta: 1.0,
            lease_ttl_ms: 2_000,
            lease_wait_ms: 300,
            lease_poll_ms: 20,
            command_timeout_ms: 100,
            connect_timeout_ms: 250,
            max_key_bytes: 200,
            l1: L1Config::default(),
            breaker: BreakerConfig::default(),
        }
    }
}

/// The optional in-process cache (moka) in front of Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct L1Config {
    /// Whether to keep one (`..__L1__ENABLED`). Default true.
    pub enabled: bool,
    /// How long an entry lives in it; invalidation reaches only the process that receives
    /// the event, so this bounds how stale the others can be (`..__L1__TTL_MS`). Default
    /// 1 000.
    pub ttl_ms: u64,
    /// Most entries held, least recently useful evicted first (`..__L1__MAX_ENTRIES`).
    /// Default 10 000.
    pub max_entries: u64,
}

impl Default for L1Config {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl_ms: 1_000,
            max_entries: 10_000,
        }
    }
}

impl CacheConfig {
    /// The node URLs, trimmed, empty entries dropped.
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Rejects settings that cannot work, naming the setting as an environment variable
    /// under `path` (say `CHECKOUT_CACHE`).
    pub fn validate(&self, path: &str) -> Result<(), SettingError> {
        let urls = self.node_urls();
        if urls.is_empty() {
            return Err(SettingError::new(
                path,
                "NODES",
                "must name at least one Redis node",
            ));
        }
        for (i, url) in urls.iter().enumerate() {
            if !url.starts_with("redis://") {
                return Err(SettingError::new(
                    path,
                    "NODES",
                    format!("`{url}` must be a redis:// URL"),
                ));
            }
            if urls[..i].contains(url) {
                return Err(SettingError::new(
                    path,
                    "NODES",
                    format!("`{url}` is listed twice"),
                ));
            }
        }
        if self.key_prefix.is_empty()
            || self
                .key_prefix
                .chars()
                .any(|c| c == ':' || c.is_whitespace())
        {
            return Err(SettingError::new(
                path,
                "KEY_PREFIX",
                "must be non-empty, without `:` or whitespace",
            ));
        }
        positive(path, "TTL_MS", self.ttl_ms)?;
        if !(0.0..100.0).contains(&self.ttl_jitter_percent) {
            return Err(SettingError::new(
                path,
                "TTL_JITTER_PERCENT",
                format!("must be within 0..100; got {}", self.ttl_jitter_percent),
            ));
        }
        positive(path, "NEGATIVE_TTL_MS", self.negative_ttl_ms)?;
        if !self.early_refresh_beta.is_finite() || self.early_refresh_beta < 0.0 {
            return Err(SettingError::new(
                path,
                "EARLY_REFRESH_BETA",
                format!("must be zero or more; got {}", self.early_refresh_beta),
            ));
        }
        positive(path, "LEASE_TTL_MS", self.lease_ttl_ms)?;
        positive(path, "LEASE_POLL_MS", self.lease_poll_ms)?;
        positive(path, "COMMAND_TIMEOUT_MS", self.command_timeout_ms)?;
        positive(path, "CONNECT_TIMEOUT_MS", self.connect_timeout_ms)?;
        if !(16..=1024).contains(&self.max_key_bytes) {
            return Err(SettingError::new(
                path,
                "MAX_KEY_BYTES",
                format!("must be within 16..=1024; got {}", self.max_key_bytes),
            ));
        }
        if self.l1.enabled {
            let l1 = join(path, "L1");
            positive(&l1, "TTL_MS", self.l1.ttl_ms)?;
            positive(&l1, "MAX_ENTRIES", self.l1.max_entries)?;
        }
        self.breaker.validate(&join(path, "BREAKER"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        CacheConfig::default().validate("CHECKOUT_CACHE").unwrap();
    }

    #[test]
    fn errors_name_the_variable() {
        let cases: Vec<(CacheConfig, &str)> = vec![
            (
                CacheConfig {
                    ttl_ms: 0,
                    ..CacheConfig::default()
                },
                "CHECKOUT_CACHE__TTL_MS",
            ),
            (
                CacheConfig {
                    nodes: " , ".into(),
                    ..CacheConfig::default()
                },
                "CHECKOUT_CACHE__NODES",
            ),
            (
                CacheConfig {
                    nodes: "redis://a:1,redis://a:1".into(),
                    ..CacheConfig::default()
                },
                "CHECKOUT_CACHE__NODES",
            ),
            (
                CacheConfig {
                    key_prefix: "a:b".into(),
                    ..CacheConfig::default()
                },
                "CHECKOUT_CACHE__KEY_PREFIX",
            ),
            (
                CacheConfig {
                    ttl_jitter_percent: 100.0,
                    ..CacheConfig::default()
                },
                "CHECKOUT_CACHE__TTL_JITTER_PERCENT",
            ),
            (
                CacheConfig {
                    early_refresh_beta: f64::NAN,
                    ..CacheConfig::default()
                },
                "CHECKOUT_CACHE__EARLY_REFRESH_BETA",
            ),
            (
                CacheConfig {
                    l1: L1Config {
                        ttl_ms: 0,
                        ..L1Config::default()
                    },
                    ..CacheConfig::default()
                },
                "CHECKOUT_CACHE__L1__TTL_MS",
            ),
            (
                CacheConfig {
                    breaker: BreakerConfig {
                        open_wait_ms: 0,
                        ..BreakerConfig::default()
                    },
                    ..CacheConfig::default()
                },
                "CHECKOUT_CACHE__BREAKER__OPEN_WAIT_MS",
            ),
        ];
        for (config, setting) in cases {
            let err = config.validate("CHECKOUT_CACHE").unwrap_err();
            assert_eq!(err.setting, setting, "{err}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<CacheConfig>(r#"{"ttl_msec": 5}"#).unwrap_err();
        assert!(err.to_string().contains("ttl_msec"), "{err}");
        let partial: CacheConfig = serde_json::from_str(r#"{"ttl_ms": 5}"#).unwrap();
        assert_eq!(partial.ttl_ms, 5);
        assert_eq!(partial.stale_ms, CacheConfig::default().stale_ms);
    }
}
