//! The `Store` against `dashmap` on the same workload, and value encode/decode per encoding.
//!
//! `cargo bench -p kvcore --bench store`
//!
//! Both maps are pre-populated with the same 64Ki keys of 16 bytes and 32-byte string values, then
//! run the same sequence of operations: all reads, all writes, and a 90/10 read/write mix, on 1
//! and on 2 threads (each thread walks the sequence from its own offset). Reported throughput is
//! operations per second over all threads. The dashmap side does what a store built on it would:
//! a read clones the value and its version out of the map, a write bumps the version and replaces
//! the value. It hashes with ahash like the `Store`, so the comparison is of the maps, not of
//! hash functions. The `Store` additionally validates keys and values and accounts bytes; those
//! are part of what is measured.
//!
//! `kvcore-lru` is the same `Store` keeping access words for LRU eviction (every read and write
//! stamps its key), with its clock ticked every 10 ms as an evictor does, to show what that
//! bookkeeping costs.
//!
//! On a 2-core machine, the 2-thread figures also depend on whatever else is running.

// `criterion_group!` defines a public function it cannot document.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dashmap::DashMap;
use kvcore::{Encoding, Entry, Eviction, Store, StoreConfig, Value, Version};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

const KEYS: usize = 1 << 16;
/// Length of the operation sequence; a power of two so wrapping is a mask.
const OPS: usize = 1 << 16;

/// One step of a workload: which key, and whether it is a write.
#[derive(Clone, Copy)]
struct Op {
    key: u32,
    write: bool,
}

fn keys() -> Vec<String> {
    // 16 bytes, the key size of the memory-per-key figure in docs/performance.md.
    (0..KEYS).map(|i| format!("key:{i:012}")).collect()
}

fn value() -> Value {
    Value::string("v".repeat(32))
}

fn ops(write_percent: u32) -> Vec<Op> {
    let mut rng = SmallRng::seed_from_u64(7);
    (0..OPS)
        .map(|_| Op {
            key: rng.gen_range(0..KEYS as u32),
            write: rng.gen_range(0..100) < write_percent,
        })
        .collect()
}

/// The map operations a workload needs, so both maps run the exact same loop.
trait Map: Sync {
    fn read(&self, key: &str) -> Option<Entry>;
    fn write(&self, key: &str, value: Value);
}

impl Map for Store {
    fn read(&self, key: &str) -> Option<Entry> {
        self.get(key)
    }

    fn write(&self, key: &str, value: Value) {
        self.set(key, value).expect("no budget, valid key");
    }
}

type Dash = DashMap<Box<str>, Entry, ahash::RandomState>;

impl Map for Dash {
    fn read(&self, key: &str) -> Option<Entry> {
        self.get(key).map(|e| e.value().clone())
    }

    fn write(&self, key: &str, value: Value) {
        match self.get_mut(key) {
            Some(mut e) => {
                e.version = e.version.next();
                e.value = value;
            }
            None => {
                self.insert(key.into(), Entry::new(value, Version(1)));
            }
        }
    }
}

/// Runs `iters` operations on each of `threads` threads, all starting together; returns the wall
/// time from the start until the last thread is done.
fn run(map: &dyn Map, keys: &[String], ops: &[Op], threads: usize, iters: u64) -> Duration {
    let start = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for t in 0..threads {
            let start = &start;
            s.spawn(move || {
                let first = t * (OPS / threads.max(1));
                start.wait();
                for n in 0..iters {
                    let op = ops[(first + n as usize) & (OPS - 1)];
                    let key = &keys[op.key as usize];
                    if op.write {
                        // A fresh allocation per write, as a server parsing a request has: a
                        // clone of one shared value would make every write contend on its
                        // reference count.
                        map.write(key, value());
                    } else {
                        black_box(map.read(key));
                    }
                }
            });
        }
        start.wait();
        let began = Instant::now();
        // The scope joins every thread before it returns.
        began
    })
    .elapsed()
}

fn store_vs_dashmap(c: &mut Criterion) {
    let keys = keys();
    let store = Store::new(StoreConfig::default());
    let lru = Store::new(StoreConfig {
        eviction: Eviction::Lru,
        ..StoreConfig::default()
    });
    let dash = Dash::with_hasher(ahash::RandomState::new());
    for key in &keys {
        store.write(key, value());
        lru.write(key, value());
        dash.write(key, value());
    }
    let maps: [(&str, &dyn Map); 3] =
        [("kvcore", &store), ("kvcore-lru", &lru), ("dashmap", &dash)];
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                lru.tick();
                std::thread::sleep(kvcore::store::TICK);
            }
        });
        compare(c, &maps, &keys);
        done.store(true, Ordering::Relaxed);
    });
}

fn compare(c: &mut Criterion, maps: &[(&str, &dyn Map)], keys: &[String]) {
    for (name, write_percent) in [("get", 0), ("set", 100), ("mixed_90_10", 10)] {
        let ops = ops(write_percent);
        let mut group = c.benchmark_group(format!("store/{name}"));
        for threads in [1usize, 2] {
            group.throughput(Throughput::Elements(threads as u64));
            for &(map_name, map) in maps {
                group.bench_function(BenchmarkId::new(map_name, format!("{threads}t")), |b| {
                    b.iter_custom(|iters| run(map, keys, &ops, threads, iters))
                });
            }
        }
        group.finish();
    }
}

/// A representative JSON value per encoding, as a client would send it.
fn samples() -> Vec<(Encoding, serde_json::Value)> {
    vec![
        (Encoding::String, json!("v".repeat(32))),
        (Encoding::Integer, json!(1_234_567_890_123i64)),
        (Encoding::Float, json!(-1234.5678)),
        (Encoding::Boolean, json!(true)),
        (
            Encoding::Binary,
            json!("3q2+7wABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhs="),
        ),
        (
            Encoding::Json,
            json!({"user": "ada", "tags": ["a", "b"], "age": 36, "score": 1.5}),
        ),
    ]
}

fn encode_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("value/from_json");
    for (encoding, json) in samples() {
        group.bench_function(encoding.as_str(), |b| {
            b.iter(|| Value::from_json(encoding, black_box(&json)).expect("valid sample"))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("value/to_json");
    for (encoding, json) in samples() {
        let value = Value::from_json(encoding, &json).expect("valid sample");
        group.bench_function(encoding.as_str(), |b| {
            b.iter(|| black_box(&value).to_json())
        });
    }
    group.finish();
}

fn config() -> Criterion {
    // Short runs: the whole file takes about a minute and a half.
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = store_vs_dashmap, encode_decode
}
criterion_main!(benches);
