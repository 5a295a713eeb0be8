//! Jump consistent hash (Lamping and Veach, 2014): no table, no memory, perfect balance and
//! minimal movement, but nodes are numbered `0..n` and only the last one can be removed.

use faultline_cache::placement::Placement;

/// Jump consistent hash over `n` numbered nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JumpHash {
    nodes: u32,
}

impl JumpHash {
    /// Over nodes `0..nodes`.
    pub(crate) fn new(nodes: u32) -> Self {
        Self { nodes }
    }
}

/// The paper's algorithm: a linear congruential walk that jumps forward to the next node
/// count at which the key would move, until it passes `nodes`.
pub(crate) fn jump(mut key: u64, nodes: u32) -> u32 {
    let mut bucket: i64 = -1;
    let mut next: i64 = 0;
    while next < i64::from(nodes) {
        bucket = next;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        // (bucket + 1) * 2^31 / ((key >> 33) + 1), in floating point as in the paper.
        let scale = f64::from(1_u32 << 31) / ((key >> 33) as f64 + 1.0);
        next = ((bucket + 1) as f64 * scale) as i64;
    }
    u32::try_from(bucket.max(0)).unwrap_or(0)
}

impl Placement for JumpHash {
    fn node(&self, key_hash: u64) -> usize {
        jump(key_hash, self.nodes) as usize
    }

    fn len(&self) -> usize {
        self.nodes as usize
    }
}
