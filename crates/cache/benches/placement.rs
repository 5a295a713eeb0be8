//! Key placement: the cache's rendezvous hashing side by side with the designs it was
//! chosen over (a ring with virtual nodes, jump hash and Maglev, in `placement/`, here only
//! to be compared) and a faithful port of the seed article's ring.
//!
//! The port: 100 virtual nodes per node, each the MD5 hex digest of `"<node>-<v>"`, kept as
//! sorted hex strings with a map from point to node; a key goes to the point found by
//! bisecting (to the right) with the MD5 hex digest of the key, wrapping past the end.
//!
//! First a table, computed once over 1 000 000 keys: balance (max / mean keys per node at 3
//! and 10 nodes) and movement (share of keys whose node changes when an 11th or 4th node is
//! added, against the ideal 1/(n+1)). Then criterion measures lookups per second, key
//! hashing included, at 10 nodes.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group};
use faultline_cache::placement::{Placement, Rendezvous};
use md5::{Digest, Md5};

#[path = "placement/jump.rs"]
mod jump;
#[path = "placement/maglev.rs"]
mod maglev;
#[path = "placement/ring.rs"]
mod ring;

use jump::JumpHash;
use maglev::Maglev;
use ring::HashRing;

/// The seed article's ring, ported as written.
struct Md5Ring {
    sorted: Vec<String>,
    ring: HashMap<String, usize>,
}

fn md5_hex(data: &str) -> String {
    let mut hex = String::with_capacity(32);
    for byte in Md5::digest(data.as_bytes()) {
        write!(hex, "{byte:02x}").unwrap();
    }
    hex
}

impl Md5Ring {
    const VNODES: usize = 100;

    fn new(nodes: &[String]) -> Self {
        let mut ring = HashMap::new();
        for (index, node) in nodes.iter().enumerate() {
            for v in 0..Self::VNODES {
                ring.insert(md5_hex(&format!("{node}-{v}")), index);
            }
        }
        let mut sorted: Vec<String> = ring.keys().cloned().collect();
        sorted.sort();
        Self { sorted, ring }
    }

    fn node(&self, key: &str) -> usize {
        let h = md5_hex(key);
        let at = self
            .sorted
            .partition_point(|point| point.as_str() <= h.as_str())
            % self.sorted.len();
        self.ring[&self.sorted[at]]
    }
}

/// A design under comparison: builds over node names, places a key.
enum Design {
    Seed(Md5Ring),
    Ours(Box<dyn Placement>),
}

impl Design {
    fn node(&self, key: &str) -> usize {
        match self {
            Design::Seed(ring) => ring.node(key),
            Design::Ours(placement) => placement.node_for(key.as_bytes()),
        }
    }
}

type Build = fn(&[String]) -> Design;

fn designs() -> Vec<(&'static str, Build)> {
    vec![
        ("seed ring (MD5, 100 vnodes)", |n| {
            Design::Seed(Md5Ring::new(n))
        }),
        ("ring (XXH3, 100 vnodes)", |n| {
            Design::Ours(Box::new(HashRing::new(n, 100)))
        }),
        ("ring (XXH3, 1000 vnodes)", |n| {
            Design::Ours(Box::new(HashRing::new(n, 1_000)))
        }),
        ("jump", |n| {
            Design::Ours(Box::new(JumpHash::new(n.len() as u32)))
        }),
        ("rendezvous", |n| Design::Ours(Box::new(Rendezvous::new(n)))),
        ("maglev (M = 65537)", |n| {
            Design::Ours(Box::new(Maglev::new(n)))
        }),
    ]
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("redis://10.0.0.{i}:6379")).collect()
}

fn keys(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("SKU-{i:07}")).collect()
}

fn table() {
    let keys = keys(1_000_000);
    println!("\nplacement of {} keys", keys.len());
    println!(
        "{:<28} {:>14} {:>14} {:>22} {:>22}",
        "design", "max/mean n=3", "max/mean n=10", "moved 3->4 (x ideal)", "moved 10->11 (x ideal)"
    );
    for (name, build) in designs() {
        let mut balance = Vec::new();
        let mut movement = Vec::new();
        for n in [3, 10] {
            let (before, after) = (names(n), names(n + 1));
            let (old, new) = (build(&before), build(&after));
            let mut counts = vec![0_u64; n];
            let mut moved = 0_u64;
            for key in &keys {
                let from = old.node(key);
                counts[from] += 1;
                // Names, not indexes: a design may renumber (none here does).
                if before[from] != after[new.node(key)] {
                    moved += 1;
                }
            }
            let mean = keys.len() as f64 / n as f64;
            balance.push(*counts.iter().max().unwrap() as f64 / mean);
            let share = moved as f64 / keys.len() as f64;
            movement.push((share, share * (n + 1) as f64));
        }
        println!(
            "{:<28} {:>14.4} {:>14.4} {:>13.4} ({:.3}x) {:>13.4} ({:.3}x)",
            name,
            balance[0],
            balance[1],
            movement[0].0,
            movement[0].1,
            movement[1].0,
            movement[1].1
        );
    }
    println!();
}

fn lookups(c: &mut Criterion) {
    let keys = keys(1_024);
    let nodes = names(10);
    let mut group = c.benchmark_group("placement_10_nodes");
    group.throughput(Throughput::Elements(keys.len() as u64));
    for (name, build) in designs() {
        let design = build(&nodes);
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut sum = 0_usize;
                for key in &keys {
                    sum += design.node(black_box(key));
                }
                black_box(sum)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, lookups);

fn main() {
    table();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
