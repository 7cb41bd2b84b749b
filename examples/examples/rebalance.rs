//! Measures a join: how long a fourth node takes to join a loaded three-node cluster, how many
//! keys move (against the fewest any placement could move), how evenly keys end up spread, and
//! what clients see meanwhile.
//!
//! Starts a 3-node cluster (R = 3, HTTP between the nodes), writes `--keys` keys, runs
//! `--traffic` clients (`kvserver::Client`s over HTTP, half reading, half writing existing keys
//! through every node) for
//! `--idle-secs` to measure their latency at rest, then joins a fourth node while they go on
//! and measures their latency again until the change has finished everywhere.
//!
//! ```console
//! cargo run --release -p examples --example rebalance -- --keys 1000000
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use kvcore::Value;
use kvserver::{Client, LocalCluster};

/// Time and cost of a join.
#[derive(Parser, Debug)]
struct Args {
    /// Keys to write before the join.
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    /// Size of each value in bytes.
    #[arg(long, default_value_t = 32)]
    value_size: usize,
    /// Writes in flight while loading.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Clients running during the measurements.
    #[arg(long, default_value_t = 8)]
    traffic: usize,
    /// Seconds of traffic measured before the join (after as long again of warm-up).
    #[arg(long, default_value_t = 5)]
    idle_secs: u64,
}

/// Latencies of client operations, in microseconds.
#[derive(Default)]
struct Latencies(Mutex<Vec<u64>>);

impl Latencies {
    fn take(&self) -> Vec<u64> {
        let mut all = std::mem::take(&mut *self.0.lock().unwrap());
        all.sort_unstable();
        all
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[at] as f64 / 1000.0
}

async fn client(
    client: Client,
    id: usize,
    keys: usize,
    value: Value,
    stop: Arc<AtomicBool>,
    latencies: Arc<Latencies>,
    failures: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut i = id.wrapping_mul(7_919);
    while !stop.load(Ordering::Relaxed) {
        i = (i + 104_729) % keys;
        let key = format!("key:{i:08}");
        let started = Instant::now();
        let ok = if id.is_multiple_of(2) {
            client.get(&key).await.map(|_| ())
        } else {
            client.set(&key, value.clone()).await.map(|_| ())
        };
        let micros = started.elapsed().as_micros() as u64;
        match ok {
            Ok(()) => latencies.0.lock().unwrap().push(micros),
            Err(e) => {
                failures.fetch_add(1, Ordering::Relaxed);
                eprintln!("a client operation failed: {e}");
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut cluster = LocalCluster::builder()
        .nodes(3)
        .configure(|c| c.replicas = 3)
        .start()
        .await
        .expect("cluster starts");
    let value = "v".repeat(args.value_size);
    let loading = Instant::now();
    examples::load_keys(&cluster, args.keys, &value, args.concurrency).await;
    let value = Value::string(value);
    let load_time = loading.elapsed();
    // Three copies of every key, and each node's copy of the cluster's own map.
    examples::wait_for_copies(&cluster, 3 * args.keys + 3).await;
    println!(
        "loaded {} keys ({} B values) in {:.1?}: 3 nodes, R = 3, HTTP between nodes",
        args.keys, args.value_size, load_time
    );

    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Latencies::default());
    let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let node_clients = examples::node_clients(&cluster);
    let mut clients = Vec::new();
    for id in 0..args.traffic {
        clients.push(tokio::spawn(client(
            node_clients[id % 3].clone(),
            id,
            args.keys,
            value.clone(),
            stop.clone(),
            latencies.clone(),
            failures.clone(),
        )));
    }
    // Warm up first: right after loading, the nodes still run their first anti-entropy passes.
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    latencies.take();
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    let idle = latencies.take();

    let joining = Instant::now();
    let new = cluster.join_node().await.expect("the node joins");
    assert!(
        cluster.wait_settled(Duration::from_secs(3600)).await,
        "the join did not finish"
    );
    let join_time = joining.elapsed();
    let during = latencies.take();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client finished");
    }
    // Idle pooled connections would otherwise hold the nodes' graceful shutdown open.
    drop(node_clients);

    let record = cluster.node(0).membership();
    // The old owners drop the keys that moved away in the background.
    let held = |c: &LocalCluster| (0..4).map(|n| c.node(n).store().len()).collect::<Vec<_>>();
    let cleaning = Instant::now();
    let mut every = tokio::time::interval(Duration::from_millis(10));
    while held(&cluster).iter().sum::<usize>() > 3 * args.keys + 4
        && cleaning.elapsed() < Duration::from_secs(600)
    {
        every.tick().await;
    }
    let held = held(&cluster);
    let new_bytes = cluster.node(new).store().used_bytes();
    // The fewest copies any placement could move: the new node's fair share of all copies.
    let optimal = (3 * args.keys) as f64 / 4.0;
    let mean = held.iter().sum::<usize>() as f64 / 4.0;
    let max = *held.iter().max().unwrap() as f64;
    println!(
        "join: node {new} ready and the change finished in {:.1?}; it holds {} keys and {:.1} MB \
         ({:.1} MB/s, counting key, value and 40 B per key)",
        join_time,
        held[new],
        new_bytes as f64 / 1e6,
        new_bytes as f64 / 1e6 / join_time.as_secs_f64()
    );
    println!(
        "moved: {} key copies, {:.3}x the fewest possible ({optimal:.0}); keys per node {held:?}, \
         largest {:.3}x the mean",
        record.moved_keys,
        record.moved_keys as f64 / optimal,
        max / mean
    );
    println!(
        "clients ({} of them): idle p50 {:.2} ms p99 {:.2} ms over {} ops; during the join p50 \
         {:.2} ms p99 {:.2} ms over {} ops ({:.2}x the idle p99); {} failed",
        args.traffic,
        percentile(&idle, 0.50),
        percentile(&idle, 0.99),
        idle.len(),
        percentile(&during, 0.50),
        percentile(&during, 0.99),
        during.len(),
        percentile(&during, 0.99) / percentile(&idle, 0.99),
        failures.load(Ordering::Relaxed)
    );
    cluster.shutdown().await;
}
