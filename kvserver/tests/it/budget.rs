//! The per-node memory budget.

use hyper::StatusCode;
use kvcore::store::{footprint, ENTRY_OVERHEAD};
use kvcore::Value;
use kvserver::LocalCluster;
use serde_json::json;

use crate::util::Http;

const VALUE: usize = 1000;
/// Room for about 40 entries of 1000-byte values on one node.
const BUDGET: u64 = 40 * (VALUE as u64 + 16 + ENTRY_OVERHEAD);

fn body(key: &str) -> String {
    json!({"key": key, "value": "x".repeat(VALUE)}).to_string()
}

/// Writes keys `k0, k1, ...` through `url` until the first refusal; returns how many fit.
async fn fill(http: &Http, url: &str) -> usize {
    for i in 0.. {
        let key = format!("k{i}");
        let (status, answer) = http.post(&format!("{url}/set"), &body(&key)).await;
        match status {
            StatusCode::OK => continue,
            StatusCode::INSUFFICIENT_STORAGE => {
                assert_eq!(answer["error"]["code"], "memory_full", "{answer}");
                return i;
            }
            other => panic!("unexpected {other}: {answer}"),
        }
    }
    unreachable!()
}

#[tokio::test]
async fn a_full_node_refuses_writes_with_507_and_keeps_serving_reads() {
    let cluster = LocalCluster::builder()
        .nodes(1)
        .configure(|c| c.replicas = 1)
        .configure(|c| c.max_memory = Some(BUDGET))
        .start()
        .await
        .unwrap();
    let http = Http::new();
    let url = cluster.url(0);
    let stored = fill(&http, &url).await;
    let per_entry = footprint("k10", &Value::string("x".repeat(VALUE)));
    assert!(
        stored as u64 >= BUDGET / per_entry - 1 && stored as u64 <= BUDGET / per_entry,
        "{stored}"
    );
    let store = cluster.node(0).store();
    assert!(store.used_bytes() <= BUDGET);
    // Plus the cluster's record of its map.
    assert_eq!(store.len(), stored + 1);
    // The refused key was not stored, and every earlier key is intact and readable.
    let (status, _) = http.get(&format!("{url}/get/k{stored}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for i in 0..stored {
        let (status, got) = http.get(&format!("{url}/get/k{i}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(got["value"].as_str().map(str::len), Some(VALUE));
    }
    // Overwriting an existing key with a value of the same size still works; deleting frees room.
    let (status, _) = http.post(&format!("{url}/set"), &body("k0")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = http.delete(&format!("{url}/kv/k1")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = http.post(&format!("{url}/set"), &body("fresh")).await;
    assert_eq!(status, StatusCode::OK);
    // Without an eviction policy nothing is ever evicted.
    let (_, stats) = http.get(&format!("{url}/stats")).await;
    assert_eq!(stats["eviction"], "none");
    assert_eq!(stats["requests"]["evicted"], 0);
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_cluster_stores_more_than_one_node_could() {
    let one = LocalCluster::builder()
        .nodes(1)
        .configure(|c| c.replicas = 1)
        .configure(|c| c.max_memory = Some(BUDGET))
        .start()
        .await
        .unwrap();
    let http = Http::new();
    let single = fill(&http, &one.url(0)).await;
    one.shutdown().await;

    let four = LocalCluster::builder()
        .nodes(4)
        .configure(|c| c.replicas = 1)
        .configure(|c| c.max_memory = Some(BUDGET))
        .start()
        .await
        .unwrap();
    let total = fill(&http, &four.url(2)).await;
    // The first refusal comes when the fullest node is full: with keys spread over four nodes
    // that is well past what one node holds.
    assert!(
        total > 2 * single,
        "4 nodes stored {total}, one node {single}"
    );
    // Every key once (`R = 1`), and the cluster's record of its map on each node.
    let held: usize = (0..4).map(|n| four.node(n).store().len()).sum();
    assert_eq!(held, total + 4);
    for n in 0..4 {
        assert!(four.node(n).store().used_bytes() <= BUDGET);
    }
    four.shutdown().await;
}
