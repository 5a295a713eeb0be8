//! What the cache did, as counters a service exposes on `/metrics`.
//!
//! The read path only bumps relaxed atomics (a labelled `Family` would hash its labels and
//! take a lock on every lookup); [`CacheCollector`] turns them into Prometheus families at
//! scrape time. Register it with `faultline_telemetry::Metrics::register_collector`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// How a lookup was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// From the in-process L1.
    L1Hit,
    /// A fresh value from Redis.
    Hit,
    /// A cached "not found" from Redis.
    NegativeHit,
    /// An expired value from Redis, served while another caller reloads it.
    Stale,
    /// Not in the cache: loaded (by this caller, another in this process, or the lease
    /// holder elsewhere).
    Miss,
    /// Redis could not answer (down, slow, breaker open): loaded from the origin directly.
    Bypass,
}

impl Outcome {
    const ALL: [Outcome; 6] = [
        Outcome::L1Hit,
        Outcome::Hit,
        Outcome::NegativeHit,
        Outcome::Stale,
        Outcome::Miss,
        Outcome::Bypass,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::L1Hit => "l1_hit",
            Outcome::Hit => "hit",
            Outcome::NegativeHit => "negative_hit",
            Outcome::Stale => "stale",
            Outcome::Miss => "miss",
            Outcome::Bypass => "bypass",
        }
    }
}

/// Why a Redis call did not give an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// It took longer than the command timeout.
    Timeout,
    /// Redis or the connection failed.
    Redis,
    /// The node's breaker is open: not called at all.
    CircuitOpen,
    /// A stored value could not be decoded (an old shape, corruption); it was deleted.
    Corrupt,
}

impl ErrorKind {
    const ALL: [ErrorKind; 4] = [
        ErrorKind::Timeout,
        ErrorKind::Redis,
        ErrorKind::CircuitOpen,
        ErrorKind::Corrupt,
    ];

    fn label(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Redis => "redis",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::Corrupt => "corrupt",
        }
    }
}

/// Per-node counters.
#[derive(Debug, Default)]
pub(crate) struct NodeStats {
    pub(crate) commands: AtomicU64,
    pub(crate) errors: [AtomicU64; 4],
    /// Keys of this cache on the node, as last counted by `Cache::keys_per_node`.
    pub(crate) keys: AtomicU64,
}

/// The counters of one cache, shared by its clones.
#[derive(Debug)]
pub(crate) struct Stats {
    pub(crate) name: Arc<str>,
    pub(crate) nodes: Vec<(String, NodeStats)>,
    outcomes: [AtomicU64; 6],
    pub(crate) loads: AtomicU64,
    pub(crate) load_errors: AtomicU64,
    pub(crate) coalesced: AtomicU64,
    pub(crate) leases_acquired: AtomicU64,
    pub(crate) leases_busy: AtomicU64,
    pub(crate) lease_wait_timeouts: AtomicU64,
    pub(crate) early_refreshes: AtomicU64,
    pub(crate) invalidations: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    pub(crate) fn new(name: &str, nodes: &[String]) -> Self {
        Self {
            name: name.into(),
            nodes: nodes
                .iter()
                .map(|node| (redact(node), NodeStats::default()))
                .collect(),
            outcomes: Default::default(),
            loads: AtomicU64::new(0),
            load_errors: AtomicU64::new(0),
            coalesced: AtomicU64::new(0),
            leases_acquired: AtomicU64::new(0),
            leases_busy: AtomicU64::new(0),
            lease_wait_timeouts: AtomicU64::new(0),
            early_refreshes: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
        }
    }

    pub(crate) fn outcome(&self, outcome: Outcome) {
        bump(&self.outcomes[outcome as usize]);
    }

    pub(crate) fn command(&self, node: usize) {
        if let Some((_, stats)) = self.nodes.get(node) {
            bump(&stats.commands);
        }
    }

    pub(crate) fn error(&self, node: usize, kind: ErrorKind) {
        if let Some((_, stats)) = self.nodes.get(node) {
            bump(&stats.errors[kind as usize]);
        }
    }

    pub(crate) fn snapshot(&self) -> CacheStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let sum_errors = |kind: ErrorKind| {
            self.nodes
                .iter()
                .map(|(_, n)| get(&n.errors[kind as usize]))
                .sum()
        };
        CacheStats {
            l1_hits: get(&self.outcomes[Outcome::L1Hit as usize]),
            hits: get(&self.outcomes[Outcome::Hit as usize]),
            negative_hits: get(&self.outcomes[Outcome::NegativeHit as usize]),
            stale: get(&self.outcomes[Outcome::Stale as usize]),
            misses: get(&self.outcomes[Outcome::Miss as usize]),
            bypasses: get(&self.outcomes[Outcome::Bypass as usize]),
            loads: get(&self.loads),
            load_errors: get(&self.load_errors),
            coalesced: get(&self.coalesced),
            leases_acquired: get(&self.leases_acquired),
            leases_busy: get(&self.leases_busy),
            lease_wait_timeouts: get(&self.lease_wait_timeouts),
            early_refreshes: get(&self.early_refreshes),
            invalidations: get(&self.invalidations),
            timeouts: sum_errors(ErrorKind::Timeout),
            redis_errors: sum_errors(ErrorKind::Redis),
            circuit_open: sum_errors(ErrorKind::CircuitOpen),
            corrupt: sum_errors(ErrorKind::Corrupt),
            commands_per_node: self.nodes.iter().map(|(_, n)| get(&n.commands)).collect(),
        }
    }
}

/// Drops a password from a node URL before it becomes a label.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// A snapshot of one cache's counters since it was built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered by the L1.
    pub l1_hits: u64,
    /// Lookups answered by a fresh value from Redis.
    pub hits: u64,
    /// Lookups answered by a cached "not found".
    pub negative_hits: u64,
    /// Lookups answered by an expired value while another caller reloaded it.
    pub stale: u64,
    /// Lookups that found nothing usable in Redis.
    pub misses: u64,
    /// Lookups that went to the origin because Redis could not answer.
    pub bypasses: u64,
    /// Origin loads this process ran.
    pub loads: u64,
    /// Of those, the ones that failed.
    pub load_errors: u64,
    /// Callers that shared another caller's load in this process instead of loading.
    pub coalesced: u64,
    /// Leases this process won.
    pub leases_acquired: u64,
    /// Times a lease was found held by another loader.
    pub leases_busy: u64,
    /// Waits for another loader's value that ran out, after which the caller loaded itself.
    pub lease_wait_timeouts: u64,
    /// XFetch refreshes before expiry.
    pub early_refreshes: u64,
    /// Keys invalidated.
    pub invalidations: u64,
    /// Redis calls that timed out.
    pub timeouts: u64,
    /// Redis calls that failed.
    pub redis_errors: u64,
    /// Redis calls not made because a breaker was open.
    pub circuit_open: u64,
    /// Stored values that failed to decode (deleted).
    pub corrupt: u64,
    /// Redis commands sent, per node (in configuration order).
    pub commands_per_node: Vec<u64>,
}

/// Exposes a cache's counters to Prometheus; made by `Cache::collector`.
#[derive(Clone)]
pub struct CacheCollector {
    pub(crate) stats: Arc<Stats>,
}

impl fmt::Debug for CacheCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheCollector")
            .field("cache", &self.stats.name)
            .finish()
    }
}

fn counter<'a>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Vec<(&'a str, &'a str)>, u64)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (labels, value) in rows {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let stats = &*self.stats;
        let cache = &*stats.name;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        counter(
            &mut encoder,
            "faultline_cache_lookups",
            "Cache lookups by how they were answered",
            Outcome::ALL.iter().map(|&o| {
                (
                    vec![("cache", cache), ("outcome", o.label())],
                    get(&stats.outcomes[o as usize]),
                )
            }),
        )?;
        counter(
            &mut encoder,
            "faultline_cache_loads",
            "Origin loads run by this process",
            [
                (
                    vec![("cache", cache), ("result", "ok")],
                    get(&stats.loads).saturating_sub(get(&stats.load_errors)),
                ),
                (
                    vec![("cache", cache), ("result", "error")],
                    get(&stats.load_errors),
                ),
            ],
        )?;
        counter(
            &mut encoder,
            "faultline_cache_events",
            "Stampede control: coalesced callers, leases won and found busy, waits that ran out, early refreshes, invalidations",
            [
                ("coalesced", &stats.coalesced),
                ("lease_acquired", &stats.leases_acquired),
                ("lease_busy", &stats.leases_busy),
                ("lease_wait_timeout", &stats.lease_wait_timeouts),
                ("early_refresh", &stats.early_refreshes),
                ("invalidation", &stats.invalidations),
            ]
            .into_iter()
            .map(|(event, c)| (vec![("cache", cache), ("event", event)], get(c))),
        )?;
        counter(
            &mut encoder,
            "faultline_cache_node_commands",
            "Redis commands sent, per node",
            stats.nodes.iter().map(|(node, n)| {
                (
                    vec![("cache", cache), ("node", node.as_str())],
                    get(&n.commands),
                )
            }),
        )?;
        counter(
            &mut encoder,
            "faultline_cache_errors",
            "Redis calls without an answer, per node and kind (corrupt: a value that failed to decode)",
            stats.nodes.iter().flat_map(|(node, n)| {
                ErrorKind::ALL.iter().map(move |&k| {
                    (
                        vec![
                            ("cache", cache),
                            ("node", node.as_str()),
                            ("kind", k.label()),
                        ],
                        n.errors[k as usize].load(Ordering::Relaxed),
                    )
                })
            }),
        )?;
        let mut keys = encoder.encode_descriptor(
            "faultline_cache_node_keys",
            "Keys of this cache per Redis node, as last counted by Cache::keys_per_node",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (node, n) in &stats.nodes {
            let labels = [("cache", cache), ("node", node.as_str())];
            let value = i64::try_from(get(&n.keys)).unwrap_or(i64::MAX);
            ConstGauge::new(value).encode(keys.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn renders_every_family_with_labels() {
        let stats = Arc::new(Stats::new(
            "catalog",
            &["redis://:secret@a:6379".into(), "redis://b:6379".into()],
        ));
        stats.outcome(Outcome::Hit);
        stats.outcome(Outcome::Hit);
        stats.command(1);
        stats.error(0, ErrorKind::Corrupt);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(CacheCollector {
            stats: stats.clone(),
        }));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"faultline_cache_lookups_total{cache="catalog",outcome="hit"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"faultline_cache_errors_total{cache="catalog",node="redis://a:6379",kind="corrupt"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"faultline_cache_node_keys{cache="catalog",node="redis://b:6379"} 0"#)
        );
        assert!(!text.contains("secret"));
        assert_eq!(stats.snapshot().corrupt, 1);
    }
}
