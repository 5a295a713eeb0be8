//! Which Redis node holds a key: client-side consistent hashing.
//!
//! The cache uses rendezvous, or highest-random-weight, hashing ([`Rendezvous`]) behind one
//! small trait, [`Placement`]. The designs it was chosen over (a hash ring with virtual
//! nodes, jump consistent hash and Maglev) implement the same trait in the placement
//! benchmark (`benches/placement/`), which measures all of them side by side; ADR 0006 has
//! the figures and the reasons.
//!
//! Every process must put a key on the same node, whatever build it runs, so keys are hashed
//! with a specified, portable function ([`key_hash`], XXH3-64) rather than std's `Hasher`s,
//! whose output is unspecified or randomly keyed per process.

mod rendezvous;

pub use rendezvous::Rendezvous;

/// Maps key hashes onto nodes `0..len()`.
pub trait Placement: Send + Sync {
    /// The node (an index into the node list it was built from) for a key with this hash.
    fn node(&self, key_hash: u64) -> usize;

    /// How many nodes keys are spread across.
    fn len(&self) -> usize;

    /// Whether there are no nodes (every key then maps to node 0).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The node for `key`: [`Placement::node`] of its [`key_hash`].
    fn node_for(&self, key: &[u8]) -> usize {
        self.node(key_hash(key))
    }
}

/// The hash every placement is fed: XXH3-64 of the key's bytes, seed 0. Stable across
/// processes, platforms and releases (the algorithm is specified), and a few nanoseconds for a
/// short key.
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// How many of `keys` each node would hold under `placement`: the keys-per-node figure used
/// to judge balance (`max / mean`) and in the cache's metrics.
pub fn keys_per_node<P, I, K>(placement: &P, keys: I) -> Vec<u64>
where
    P: Placement + ?Sized,
    I: IntoIterator<Item = K>,
    K: AsRef<[u8]>,
{
    let mut counts = vec![0_u64; placement.len().max(1)];
    for key in keys {
        if let Some(count) = counts.get_mut(placement.node_for(key.as_ref())) {
            *count += 1;
        }
    }
    counts
}

/// MurmurHash3's 64-bit finaliser: a bijection with full avalanche, used to derive
/// independent-looking numbers from one key hash (rendezvous scores; ring points and Maglev
/// offsets in the benchmark's designs).
pub fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_hash_is_pinned() {
        // Changing it moves every key in every deployment: this test must never be edited to
        // pass, only the hash restored.
        assert_eq!(key_hash(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(key_hash(b"LAMP-01"), 0x0b52_8e24_132f_dca0);
        assert_ne!(key_hash(b"LAMP-01"), key_hash(b"LAMP-02"));
    }

    #[test]
    fn which_node_holds_a_key_is_pinned() {
        // The other half of placement: the node scores. Same rule as above.
        let nodes = [
            "redis://10.0.0.1:6379",
            "redis://10.0.0.2:6379",
            "redis://10.0.0.3:6379",
        ];
        let placement = Rendezvous::new(&nodes);
        let placed: Vec<usize> = ["LAMP-01", "CHAIR-02", "DESK-03", "MUG-04", "SKU-5"]
            .iter()
            .map(|sku| placement.node(key_hash(sku.as_bytes())))
            .collect();
        assert_eq!(placed, [1, 2, 1, 0, 1]);
    }

    #[test]
    fn keys_per_node_counts_every_key_once() {
        let placement = Rendezvous::new(&["a", "b", "c"]);
        let keys: Vec<String> = (0..3_000).map(|i| format!("SKU-{i}")).collect();
        let counts = keys_per_node(&placement, &keys);
        assert_eq!(counts.len(), 3);
        assert_eq!(counts.iter().sum::<u64>(), 3_000);
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
