//! The cache's own errors. Reads never return them: a cache that cannot answer sends the read
//! to the origin. Only setup and explicit writes (invalidation) report them.

pub use crate::node::NodeError;

/// A cache that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The configuration is invalid (see `CacheConfig::validate`).
    #[error(transparent)]
    Config(#[from] faultline_settings::SettingError),
    /// A node URL that redis-rs cannot use.
    #[error("Redis node `{node}`: {message}")]
    Node {
        /// The node, as configured (password removed).
        node: String,
        /// What redis-rs said.
        message: String,
    },
    /// The cache's name is empty or holds `:` or whitespace.
    #[error("cache name `{0}` must be non-empty, without `:` or whitespace")]
    Name(String),
}

/// An invalidation that did not reach Redis: the caller should retry it (say, by not
/// committing the event's offset), or the old value stays until its TTL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalidation of `{key}` failed: {source}")]
pub struct InvalidateError {
    /// The caller's key.
    pub key: String,
    /// Why.
    pub source: NodeError,
}
