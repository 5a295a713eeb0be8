//! Maglev hashing (Eisenbud et al., NSDI 2016): a lookup table of prime size filled by
//! letting each node claim slots in turn along its own permutation.
//!
//! Every node ends up with `M/n` slots give or take one, so balance is as good as the key
//! hash; lookup is one table read. The price is the table (`M` entries, rebuilt on every
//! membership change) and slightly more than minimal movement: filling the table again
//! reshuffles a few slots between nodes that stay.

use faultline_cache::placement::{Placement, key_hash, mix};

/// The table size the paper suggests for small clusters: prime, and much larger than the
/// node count so slot counts differ by at most one in 65 537.
pub(crate) const DEFAULT_TABLE_SIZE: u32 = 65_537;

/// Maglev placement over named nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Maglev {
    table: Vec<u32>,
    nodes: usize,
}

impl Maglev {
    /// Over `nodes`, identified by name, with a table of [`DEFAULT_TABLE_SIZE`] slots.
    pub(crate) fn new<S: AsRef<str>>(nodes: &[S]) -> Self {
        Self::with_table_size(nodes, DEFAULT_TABLE_SIZE)
    }

    /// With a table of `size` slots. `size` should be prime, so that every node's permutation
    /// visits every slot; otherwise filling falls back to the first free slot.
    pub(crate) fn with_table_size<S: AsRef<str>>(nodes: &[S], size: u32) -> Self {
        let m = u64::from(size.max(1));
        let n = nodes.len();
        if n == 0 {
            return Self {
                table: Vec::new(),
                nodes: 0,
            };
        }
        // Each node's permutation of the slots: offset + j * skip (mod m).
        let perms: Vec<(u64, u64)> = nodes
            .iter()
            .map(|name| {
                let h = key_hash(name.as_ref().as_bytes());
                let offset = mix(h) % m;
                let skip = mix(h ^ 0x9e37_79b9_7f4a_7c15) % (m - 1).max(1) + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0_u64; n];
        let mut table = vec![u32::MAX; m as usize];
        let mut filled = 0_u64;
        'fill: loop {
            for (node, &(offset, skip)) in perms.iter().enumerate() {
                // The node's next slot along its permutation that nobody has taken.
                let slot = loop {
                    if next[node] >= m {
                        // Only when `m` is not prime: the permutation cycles early, so take
                        // the first free slot rather than loop forever.
                        let free = table.iter().position(|&owner| owner == u32::MAX);
                        break free.unwrap_or(0) as u64;
                    }
                    let slot = (offset + next[node] * skip) % m;
                    next[node] += 1;
                    if table[slot as usize] == u32::MAX {
                        break slot;
                    }
                };
                table[slot as usize] = u32::try_from(node).unwrap_or(u32::MAX);
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
        Self { table, nodes: n }
    }
}

impl Placement for Maglev {
    fn node(&self, key_hash: u64) -> usize {
        let len = self.table.len() as u64;
        if len == 0 {
            return 0;
        }
        self.table[(key_hash % len) as usize] as usize
    }

    fn len(&self) -> usize {
        self.nodes
    }
}
