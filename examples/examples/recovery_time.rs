//! Measures how long a restarted node takes to catch up and vote again.
//!
//! Starts a 4-node cluster (R = 3, HTTP between the nodes), writes `--keys` keys through the
//! nodes, restarts one node (it comes back empty) and reports how long it stays `recovering`
//! while its peers' copies are merged, how many keys and bytes it then holds, and the catch-up
//! rate. Meanwhile `--traffic` writers (`kvserver::Client`s over HTTP) keep writing through the
//! other nodes, and their count of acknowledged and failed writes is reported too.
//!
//! ```console
//! cargo run --release -p examples --example recovery_time -- --keys 100000
//! # a node holding about 1 GiB (1.4 M values of 1 KiB, three copies over four nodes):
//! cargo run --release -p examples --example recovery_time -- --keys 1400000 --value-size 1024
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use kvcore::Value;
use kvserver::{Client, LocalCluster};

/// Time to recover a restarted node.
#[derive(Parser, Debug)]
struct Args {
    /// Keys to write before the restart.
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    /// Size of each value in bytes.
    #[arg(long, default_value_t = 32)]
    value_size: usize,
    /// Writes in flight while loading.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// The node to restart.
    #[arg(long, default_value_t = 2)]
    node: usize,
    /// Writers that keep writing through the other nodes while the node catches up.
    #[arg(long, default_value_t = 8)]
    traffic: usize,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut cluster = LocalCluster::builder()
        .nodes(4)
        .configure(|c| c.replicas = 3)
        .start()
        .await
        .expect("cluster starts");
    let value = "v".repeat(args.value_size);
    let loading = Instant::now();
    examples::load_keys(&cluster, args.keys, &value, args.concurrency).await;
    let load_time = loading.elapsed();
    // Three copies of every key, and each node's copy of the cluster's own map.
    examples::wait_for_copies(&cluster, 3 * args.keys + 4).await;
    let before = cluster.node(args.node).store().len();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut traffic = Vec::new();
    let clients: Vec<Client> = examples::node_clients(&cluster)
        .into_iter()
        .enumerate()
        .filter(|(n, _)| *n != args.node)
        .map(|(_, client)| client)
        .collect();
    for w in 0..args.traffic {
        let client = clients[w % clients.len()].clone();
        let (stop, acked, failed) = (stop.clone(), acked.clone(), failed.clone());
        let value = Value::string(value.as_str());
        traffic.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("live:{w}:{i}");
                let written = client.set(&key, value.clone()).await;
                let counter = if written.is_ok() { &acked } else { &failed };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                i += 1;
            }
        }));
    }

    let restarted = Instant::now();
    cluster.restart_node(args.node).await.expect("restart");
    let mut every = tokio::time::interval(Duration::from_millis(10));
    while !cluster.node(args.node).is_ready() {
        assert!(
            restarted.elapsed() < Duration::from_secs(1800),
            "node did not recover"
        );
        every.tick().await;
    }
    let recovery = restarted.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in traffic {
        t.await.expect("traffic writer finished");
    }
    // Idle pooled connections would otherwise hold the nodes' graceful shutdown open.
    drop(clients);
    let after = cluster.node(args.node).store().len();
    let bytes = cluster.node(args.node).store().used_bytes();

    println!(
        "loaded {} keys ({} B values) in {:.1?} ({:.0} writes/s, R=3, 4 nodes, HTTP)",
        args.keys,
        args.value_size,
        load_time,
        args.keys as f64 / load_time.as_secs_f64()
    );
    let secs = recovery.as_secs_f64();
    println!(
        "node {} held {before} keys; restarted empty, it was ready after {:.1?} holding {after} keys \
         and {:.1} MB ({:.0} keys/s, {:.1} MB/s, counting key, value and 40 B per key)",
        args.node,
        recovery,
        bytes as f64 / 1e6,
        after as f64 / secs,
        bytes as f64 / 1e6 / secs,
    );
    println!(
        "meanwhile {} writes through the other nodes were acknowledged and {} failed",
        acked.load(std::sync::atomic::Ordering::Relaxed),
        failed.load(std::sync::atomic::Ordering::Relaxed),
    );
    cluster.shutdown().await;
}
