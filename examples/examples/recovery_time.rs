//! Measures how long a restarted node takes to catch up and vote again.
//!
//! Starts a 4-node cluster (R = 3, HTTP between the nodes), writes `--keys` keys through the
//! nodes, restarts one node (it comes back empty) and reports how long it stays `recovering`
//! while its peers' copies are merged, along with how many keys it then holds.
//!
//! ```console
//! cargo run --release -p examples --example recovery_time -- --keys 100000
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use kvcore::{Precondition, Value};
use kvserver::LocalCluster;

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
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..args.concurrency {
        let node = cluster.node(w % 4).clone();
        let (next, value, keys) = (next.clone(), value.clone(), args.keys);
        writers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= keys {
                    break;
                }
                node.set(
                    &format!("key:{i:08}"),
                    Value::string(value.as_str()),
                    Precondition::None,
                )
                .await
                .expect("write succeeds")
                .expect("unconditional");
            }
        }));
    }
    for w in writers {
        w.await.expect("writer finished");
    }
    let load_time = loading.elapsed();
    // Wait for the last accepts to land everywhere, so every key has its three copies.
    let copies = |c: &LocalCluster| (0..4).map(|n| c.node(n).store().len()).sum::<usize>();
    let mut every = tokio::time::interval(Duration::from_millis(10));
    while copies(&cluster) < 3 * args.keys {
        every.tick().await;
    }
    let before = cluster.node(args.node).store().len();

    let restarted = Instant::now();
    cluster.restart_node(args.node).await.expect("restart");
    assert!(
        cluster.wait_ready(Duration::from_secs(600)).await,
        "node did not recover"
    );
    let recovery = restarted.elapsed();
    let after = cluster.node(args.node).store().len();

    println!(
        "loaded {} keys ({} B values) in {:.1?} ({:.0} writes/s, R=3, 4 nodes, HTTP)",
        args.keys,
        args.value_size,
        load_time,
        args.keys as f64 / load_time.as_secs_f64()
    );
    println!(
        "node {} held {before} keys; restarted empty, it was ready after {:.1?} holding {after} keys ({:.0} keys/s)",
        args.node,
        recovery,
        after as f64 / recovery.as_secs_f64()
    );
    cluster.shutdown().await;
}
