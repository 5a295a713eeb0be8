//! Rendezvous (highest-random-weight) hashing: every node scores the key, the highest wins.
//!
//! Adding a node moves exactly the keys it now wins, about `1/n` of them, and removing one
//! moves only its own keys; nodes are named, not numbered, so their order in the
//! configuration does not matter. Lookup is `O(n)`, a multiply-xorshift per node, which for
//! the handful of Redis nodes a service talks to is faster than a ring's binary search.

use super::{Placement, key_hash, mix};

/// Highest-random-weight placement over named nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    /// One seed per node, from its name.
    seeds: Vec<u64>,
}

impl Rendezvous {
    /// Over `nodes`, identified by name (say `redis-a:6379`).
    pub fn new<S: AsRef<str>>(nodes: &[S]) -> Self {
        Self {
            seeds: nodes
                .iter()
                .map(|name| key_hash(name.as_ref().as_bytes()))
                .collect(),
        }
    }
}

impl Placement for Rendezvous {
    fn node(&self, key_hash: u64) -> usize {
        // Scores are mix(key ^ seed): mix is a bijection, so for any two nodes the pairing
        // y <-> y ^ (seed_a ^ seed_b) makes each win exactly half of all key hashes.
        let mut best = 0;
        let mut best_score = 0;
        for (node, &seed) in self.seeds.iter().enumerate() {
            let score = mix(key_hash ^ seed);
            if node == 0 || score > best_score {
                best = node;
                best_score = score;
            }
        }
        best
    }

    fn len(&self) -> usize {
        self.seeds.len()
    }
}
