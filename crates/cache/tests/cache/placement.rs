//! Properties of the cache's placement (rendezvous): deterministic, in range, moving a key
//! only onto an added node or off a removed one, and meeting the balance and movement
//! targets. The designs it was compared with live in the placement benchmark.

use faultline_cache::placement::{Placement, Rendezvous, key_hash, keys_per_node};
use proptest::prelude::*;

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("redis://10.0.0.{i}:6379")).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn placement_is_deterministic_and_in_range(
        n in 1_usize..16,
        keys in proptest::collection::vec(any::<Vec<u8>>(), 1..64),
    ) {
        let nodes = names(n);
        let (a, b) = (Rendezvous::new(&nodes), Rendezvous::new(&nodes));
        prop_assert_eq!(a.len(), n);
        for key in &keys {
            let node = a.node_for(key);
            prop_assert!(node < n, "a key on node {} of {}", node, n);
            prop_assert_eq!(node, b.node_for(key));
        }
    }

    #[test]
    fn adding_a_node_only_moves_keys_onto_it(
        n in 1_usize..12,
        hashes in proptest::collection::vec(any::<u64>(), 1..256),
    ) {
        let (old, new) = (Rendezvous::new(&names(n)), Rendezvous::new(&names(n + 1)));
        for &hash in &hashes {
            let (from, to) = (old.node(hash), new.node(hash));
            prop_assert!(from == to || to == n, "moved a key from {} to {}", from, to);
        }
    }

    #[test]
    fn removing_a_rendezvous_node_only_moves_its_keys(
        n in 2_usize..12,
        removed in 0_usize..12,
        hashes in proptest::collection::vec(any::<u64>(), 1..256),
    ) {
        let removed = removed % n;
        let before = names(n);
        let mut after = before.clone();
        after.remove(removed);
        let (old, new) = (Rendezvous::new(&before), Rendezvous::new(&after));
        for &hash in &hashes {
            let from = old.node(hash);
            if from != removed {
                prop_assert_eq!(&before[from], &after[new.node(hash)]);
            }
        }
    }
}

/// Share of `keys` whose node differs between two placements (node names compared).
fn moved(
    old: &dyn Placement,
    old_names: &[String],
    new: &dyn Placement,
    new_names: &[String],
    keys: &[u64],
) -> f64 {
    let moved = keys
        .iter()
        .filter(|&&h| old_names[old.node(h)] != new_names[new.node(h)])
        .count();
    moved as f64 / keys.len() as f64
}

#[test]
fn rendezvous_meets_the_balance_and_movement_targets() {
    let keys: Vec<String> = (0..1_000_000).map(|i| format!("SKU-{i:07}")).collect();
    let hashes: Vec<u64> = keys.iter().map(|k| key_hash(k.as_bytes())).collect();
    for n in [3, 10] {
        let nodes = names(n);
        let counts = keys_per_node(&Rendezvous::new(&nodes), &keys);
        let max = *counts.iter().max().unwrap() as f64;
        let mean = keys.len() as f64 / n as f64;
        assert!(max / mean <= 1.05, "{n} nodes: max/mean {}", max / mean);

        let after = names(n + 1);
        let share = moved(
            &Rendezvous::new(&nodes),
            &nodes,
            &Rendezvous::new(&after),
            &after,
            &hashes,
        );
        let ideal = 1.0 / (n + 1) as f64;
        assert!(
            share <= 1.1 * ideal,
            "{n} -> {}: {share} moved, ideal {ideal}",
            n + 1
        );
    }
}
