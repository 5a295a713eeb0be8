//! Where a value lives in Redis: `<prefix>:<name>:v<version>:<key>`.
//!
//! The version belongs to the value's shape: a deploy that changes the shape bumps it and
//! reads a fresh key space, never the old bytes (which simply expire). The lease guarding a
//! key's load lives under `lease-v<version>` instead of `v<version>`, a segment no value key
//! can have, so no caller key can collide with a lease.
//!
//! Caller keys longer than `max_key_bytes`, or containing `#`, are stored as their first 32
//! bytes, `#`, and the SHA-256 of the whole key in hex: bounded key sizes, still readable in
//! `redis-cli`, and unambiguous, since a key kept as-is never contains `#`.

use std::borrow::Cow;
use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use crate::placement::key_hash;

/// How many bytes of a hashed key are kept in front of its digest.
pub const READABLE_PREFIX_BYTES: usize = 32;

/// The Redis key space of one cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpace {
    /// `<prefix>:<name>:v<version>:`.
    value_prefix: String,
    /// `<prefix>:<name>:lease-v<version>:`.
    lease_prefix: String,
    max_key_bytes: usize,
}

/// A caller's key resolved to its Redis value key and node hash; the lease key is built
/// only when needed (never on a hit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResolvedKey<'a> {
    pub(crate) value: String,
    /// Where the stored key starts in `value`.
    stored_from: usize,
    lease_prefix: &'a str,
    /// Hash of the stored key, which picks the node: value and lease land together.
    pub(crate) hash: u64,
}

impl ResolvedKey<'_> {
    /// The key of the lease guarding this key's load.
    pub(crate) fn lease(&self) -> String {
        let stored = &self.value[self.stored_from..];
        let mut lease = String::with_capacity(self.lease_prefix.len() + stored.len());
        lease.push_str(self.lease_prefix);
        lease.push_str(stored);
        lease
    }
}

impl KeySpace {
    /// Keys `<prefix>:<name>:v<version>:...`, caller keys hashed past `max_key_bytes`.
    pub fn new(prefix: &str, name: &str, version: u32, max_key_bytes: usize) -> Self {
        Self {
            value_prefix: format!("{prefix}:{name}:v{version}:"),
            lease_prefix: format!("{prefix}:{name}:lease-v{version}:"),
            max_key_bytes,
        }
    }

    /// The Redis key holding `key`'s value (for operators and tests).
    pub fn redis_key(&self, key: &str) -> String {
        format!("{}{}", self.value_prefix, self.stored(key))
    }

    /// The pattern matching every value key of this space (for `SCAN`).
    pub(crate) fn pattern(&self) -> String {
        let mut pattern = String::with_capacity(self.value_prefix.len() + 1);
        for c in self.value_prefix.chars() {
            // `*`, `?`, `[` and `\` are glob syntax in SCAN's MATCH.
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('*');
        pattern
    }

    pub(crate) fn resolve(&self, key: &str) -> ResolvedKey<'_> {
        let stored = self.stored(key);
        let mut value = String::with_capacity(self.value_prefix.len() + stored.len());
        value.push_str(&self.value_prefix);
        value.push_str(&stored);
        ResolvedKey {
            value,
            stored_from: self.value_prefix.len(),
            lease_prefix: &self.lease_prefix,
            hash: key_hash(stored.as_bytes()),
        }
    }

    /// The key as stored: itself, or its readable prefix and digest.
    pub(crate) fn stored<'k>(&self, key: &'k str) -> Cow<'k, str> {
        if key.len() <= self.max_key_bytes && !key.contains('#') {
            return Cow::Borrowed(key);
        }
        let mut cut = READABLE_PREFIX_BYTES.min(key.len());
        while !key.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut stored: String = key[..cut].chars().filter(|&c| c != '#').collect();
        stored.push('#');
        for byte in Sha256::digest(key.as_bytes()) {
            // Writing into a String cannot fail.
            let _ = write!(stored, "{byte:02x}");
        }
        Cow::Owned(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_are_kept_and_versioned() {
        let space = KeySpace::new("faultline", "catalog", 1, 200);
        assert_eq!(space.redis_key("LAMP-01"), "faultline:catalog:v1:LAMP-01");
        let resolved = space.resolve("LAMP-01");
        assert_eq!(resolved.lease(), "faultline:catalog:lease-v1:LAMP-01");
        assert_eq!(resolved.hash, key_hash(b"LAMP-01"));
        let v2 = KeySpace::new("faultline", "catalog", 2, 200);
        assert_ne!(v2.redis_key("LAMP-01"), space.redis_key("LAMP-01"));
    }

    #[test]
    fn long_keys_are_hashed_with_a_readable_prefix() {
        let space = KeySpace::new("faultline", "catalog", 1, 16);
        let long = "a-very-long-sku-name-that-goes-on-and-on-and-on";
        let stored = space.stored(long);
        assert!(
            stored.starts_with("a-very-long-sku-name-that-goes-o#"),
            "{stored}"
        );
        assert_eq!(stored.len(), 32 + 1 + 64);
        assert_ne!(space.stored(&format!("{long}!")), stored);
        // A short key with `#` is hashed too, so a kept key can never look like a hashed one.
        assert!(space.stored("a#b").starts_with("ab#"));
        assert_ne!(space.stored("a#b"), space.stored("ab"));
        // Multi-byte characters are never cut in half.
        let accents = "é".repeat(40);
        assert!(space.stored(&accents).starts_with(&"é".repeat(16)));
    }

    #[test]
    fn scan_patterns_escape_glob_characters() {
        let space = KeySpace::new("fault*line", "cat[a]log", 3, 200);
        assert_eq!(space.pattern(), r"fault\*line:cat\[a\]log:v3:*");
    }
}
