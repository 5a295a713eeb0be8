//! A consistent-hash ring with virtual nodes (Karger et al., 1997), the design the seed
//! article shows: each node owns `vnodes` points on a 64-bit circle and a key goes to the
//! first point at or after its hash.
//!
//! Balance depends on the number of points (the spread of arc lengths shrinks like
//! `1/sqrt(vnodes)`); lookups are a binary search over `nodes * vnodes` points.

use faultline_cache::placement::{Placement, key_hash, mix};

/// A hash ring with virtual nodes over named nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HashRing {
    /// Sorted `(point, node)` pairs.
    points: Vec<(u64, u32)>,
    nodes: usize,
}

impl HashRing {
    /// Over `nodes`, identified by name, with `vnodes` points each.
    pub(crate) fn new<S: AsRef<str>>(nodes: &[S], vnodes: u32) -> Self {
        let mut points = Vec::with_capacity(nodes.len() * vnodes as usize);
        for (index, name) in nodes.iter().enumerate() {
            let seed = key_hash(name.as_ref().as_bytes());
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            for vnode in 0..u64::from(vnodes) {
                // Point v of a node: its name's hash mixed with v, one hash per point without
                // formatting a string for each.
                points.push((mix(seed ^ mix(vnode.wrapping_add(1))), index));
            }
        }
        points.sort_unstable();
        Self {
            points,
            nodes: nodes.len(),
        }
    }
}

impl Placement for HashRing {
    fn node(&self, key_hash: u64) -> usize {
        let at = self.points.partition_point(|&(point, _)| point < key_hash);
        // Past the last point the circle wraps to the first.
        let (_, node) = self
            .points
            .get(at)
            .or_else(|| self.points.first())
            .copied()
            .unwrap_or((0, 0));
        node as usize
    }

    fn len(&self) -> usize {
        self.nodes
    }
}
