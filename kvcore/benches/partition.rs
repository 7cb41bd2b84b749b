//! Lookup cost of every partitioner: hash a short key and find its 3 owners, at 4, 16 and 64
//! nodes, with `key_hash` alone as the baseline.
//!
//! `cargo bench -p kvcore --bench partition`
//!
//! Keys cycle through 64Ki distinct random keys, so table-based layouts pay the cache misses a
//! server would rather than hitting a few hot cache lines. Consecutive lookups are independent, so
//! the figures are throughput; a single lookup on a cold cache also waits for one memory access.

// `criterion_group!` defines a public function it cannot document.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kvcore::partition::{self, key_hash};
use kvcore::NodeId;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const KEYS: usize = 1 << 16;
const REPLICAS: usize = 3;

fn keys() -> Vec<String> {
    let mut rng = SmallRng::seed_from_u64(42);
    (0..KEYS)
        .map(|_| format!("user:{}", rng.gen_range(0..10_000_000_000u64)))
        .collect()
}

fn lookup(c: &mut Criterion) {
    let keys = keys();

    let mut group = c.benchmark_group("key_hash");
    let mut i = 0;
    group.bench_function("xxh3", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            key_hash(black_box(keys[i].as_bytes()))
        })
    });
    group.finish();

    let mut group = c.benchmark_group("lookup");
    for p in partition::all() {
        for nodes in [4u32, 16, 64] {
            let ids: Vec<NodeId> = (0..nodes).map(NodeId).collect();
            let layout = p.layout(&ids);
            let mut out = Vec::with_capacity(REPLICAS);
            let mut i = 0;
            group.bench_with_input(BenchmarkId::new(p.name(), nodes), &nodes, |b, _| {
                b.iter(|| {
                    i = (i + 1) % KEYS;
                    out.clear();
                    layout.owners(key_hash(black_box(keys[i].as_bytes())), REPLICAS, &mut out);
                    black_box(&out);
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Short runs: the numbers are for comparing strategies, on machines shared with builds.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = lookup
}
criterion_main!(benches);
