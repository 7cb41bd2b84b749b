//! Runnable examples of the kv store, and what the measuring ones share.
//!
//! Each file in `examples/` is a small program, run in CI, that exits with status 0 when it
//! behaves as it says:
//!
//! - `in_process_cluster`: starts a 4-node [`kvserver::LocalCluster`] on free ports, talks to it
//!   over real HTTP with a [`kvserver::Client`], and shows which node owns each key.
//!   `cargo run -p examples --example in_process_cluster`
//! - `embed_kvcore`: uses [`kvcore`] alone as an embedded store: typed values, conditional
//!   writes, the memory budget, and key placement with a cluster map.
//!   `cargo run -p examples --example embed_kvcore`
//!
//! The measuring examples (`load`, `partition_report`, `recovery_time`, `rebalance`, `batch`)
//! run in release mode by hand; see the README's "Examples". `batch` compares `/mget` and
//! `/mset` with single-key requests and measures scans:
//! `cargo run --release -p examples --example batch`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kvcore::Value;
use kvserver::{Client, LocalCluster};

/// A client of each of the cluster's nodes, by id: what the examples' client traffic goes
/// through, so that it chooses its node (none of them learns or moves on to the others).
pub fn node_clients(cluster: &LocalCluster) -> Vec<Client> {
    (0..cluster.len())
        .map(|i| {
            Client::builder([cluster.addr(i)])
                .discover(false)
                .build()
                .expect("a node's address is host:port")
        })
        .collect()
}

/// Writes `key:00000000` .. `key:{keys - 1}`, each holding `value`, over HTTP through the
/// cluster's nodes in turn, `concurrency` writes at a time; panics if a write fails.
pub async fn load_keys(cluster: &LocalCluster, keys: usize, value: &str, concurrency: usize) {
    let value = Value::string(value);
    let clients = node_clients(cluster);
    let next = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..concurrency {
        let client = clients[w % clients.len()].clone();
        let (next, value) = (next.clone(), value.clone());
        writers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= keys {
                    break;
                }
                client
                    .set(&format!("key:{i:08}"), value.clone())
                    .await
                    .expect("write succeeds");
            }
        }));
    }
    for w in writers {
        w.await.expect("writer finished");
    }
}

/// Waits until the nodes' stores hold `copies` records in all (the last accepts of a load land
/// after its writes are acknowledged).
pub async fn wait_for_copies(cluster: &LocalCluster, copies: usize) {
    let held = |c: &LocalCluster| (0..c.len()).map(|n| c.node(n).store().len()).sum::<usize>();
    let mut every = tokio::time::interval(Duration::from_millis(10));
    while held(cluster) < copies {
        every.tick().await;
    }
}
