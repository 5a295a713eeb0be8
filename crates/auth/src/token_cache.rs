//! A bounded cache of access tokens that were already verified, so a client that sends the
//! same token with every request pays for one signature check, not one per request.
//!
//! Entries are keyed by the SHA-256 of the whole token, so only the exact bytes that were
//! verified hit; a lookup compares digests, which tells an attacker nothing about cached
//! tokens. A hit still checks the token's expiry against the clock, so the cache never
//! extends a token's life. The verifier clears the cache when its key set drops or changes a
//! key, so a withdrawn key stops working at once. When full, expired entries go first, and if
//! none are expired the whole cache is emptied: simple, bounded, and self-healing.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use sha2::{Digest, Sha256};

use crate::Principal;

/// The cache key of a token.
pub(crate) type TokenDigest = [u8; 32];

pub(crate) fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

struct Entry {
    principal: Principal,
    /// Seconds since the epoch after which the token is expired, leeway included.
    expires_after: u64,
}

pub(crate) struct TokenCache {
    capacity: usize,
    entries: RwLock<HashMap<TokenDigest, Entry>>,
}

impl TokenCache {
    /// A cache of at most `capacity` tokens; 0 turns it off.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: RwLock::new(HashMap::new()),
        }
    }

    /// The principal of a verified token that has not expired at `now`.
    pub(crate) fn get(&self, key: &TokenDigest, now: u64) -> Option<Principal> {
        if self.capacity == 0 {
            return None;
        }
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let entry = entries.get(key)?;
        (now <= entry.expires_after).then(|| entry.principal.clone())
    }

    pub(crate) fn insert(
        &self,
        key: TokenDigest,
        principal: Principal,
        expires_after: u64,
        now: u64,
    ) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= self.capacity {
            entries.retain(|_, entry| now <= entry.expires_after);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(
            key,
            Entry {
                principal,
                expires_after,
            },
        );
    }

    pub(crate) fn clear(&self) {
        self.entries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(subject: &str) -> Principal {
        Principal {
            subject: subject.into(),
            tenant: None,
            roles: vec![],
            scopes: vec![],
            client_id: None,
        }
    }

    #[test]
    fn a_hit_still_respects_expiry() {
        let cache = TokenCache::new(10);
        let key = digest("a.b.c");
        cache.insert(key, principal("alice"), 100, 50);
        assert_eq!(cache.get(&key, 100).unwrap().subject, "alice");
        assert!(cache.get(&key, 101).is_none());
        assert!(cache.get(&digest("a.b.d"), 50).is_none());
    }

    #[test]
    fn stays_bounded_dropping_expired_entries_first() {
        let cache = TokenCache::new(2);
        cache.insert(digest("1"), principal("one"), 10, 0);
        cache.insert(digest("2"), principal("two"), 100, 0);
        cache.insert(digest("3"), principal("three"), 100, 50);
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&digest("2"), 50).is_some());
        cache.insert(digest("4"), principal("four"), 100, 50);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn capacity_zero_turns_it_off() {
        let cache = TokenCache::new(0);
        cache.insert(digest("1"), principal("one"), 10, 0);
        assert!(cache.get(&digest("1"), 0).is_none());
    }
}
