//! Keys with a time to live, over HTTP: they expire through every node at once, skewed clocks
//! cannot bring them back, a restarted replica does not resurrect them, and the background
//! sweep reclaims them without any read.

use std::time::Duration;

use hyper::StatusCode;
use kvserver::LocalCluster;
use serde_json::Value as Json;

use crate::util::{poll, Http};

const TIMEOUT: Duration = Duration::from_secs(20);

async fn three_nodes() -> LocalCluster {
    LocalCluster::builder()
        .nodes(3)
        .configure(|c| {
            c.replicas = 3;
            c.seed_keys = false;
        })
        .start()
        .await
        .expect("cluster starts")
}

async fn read(http: &Http, cluster: &LocalCluster, node: usize, key: &str) -> (StatusCode, Json) {
    http.get(&format!("{}/kv/{key}", cluster.url(node))).await
}

/// Polls until `key` reads as missing through `node`.
async fn until_missing(http: &Http, cluster: &LocalCluster, node: usize, key: &str) {
    poll(&format!("{key} to expire"), TIMEOUT, || async {
        let (status, _) = read(http, cluster, node, key).await;
        (status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_key_with_a_ttl_shows_it_and_then_reads_as_missing_through_every_node() {
    let cluster = three_nodes().await;
    let http = Http::new();
    let (status, put) = http
        .put(
            &format!("{}/kv/session", cluster.url(0)),
            r#"{"value": "token", "ttl_ms": 400}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{put}");
    let ttl = put["ttl_ms"].as_u64().expect("the entry shows its TTL");
    assert!((1..=400).contains(&ttl), "{put}");
    for node in 0..3 {
        let (status, got) = read(&http, &cluster, node, "session").await;
        // Either still there with a TTL counting down, or already gone: never without a TTL.
        match status {
            StatusCode::OK => assert!(got["ttl_ms"].as_u64().is_some_and(|t| t <= 400), "{got}"),
            StatusCode::NOT_FOUND => {}
            other => panic!("read through node {node}: {other} {got}"),
        }
    }
    until_missing(&http, &cluster, 1, "session").await;
    // Once one node has seen it gone, every node sees it gone.
    for node in 0..3 {
        let (status, got) = read(&http, &cluster, node, "session").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "node {node}: {got}");
    }
    // Written again without a TTL, it stays, and shows none.
    let (status, put) = http
        .put(
            &format!("{}/kv/session", cluster.url(2)),
            r#"{"value": "again"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{put}");
    assert!(put.get("ttl_ms").is_none(), "{put}");
    cluster.shutdown().await;
}

#[tokio::test]
async fn writes_clear_the_ttl_unless_kept_and_increments_keep_it() {
    let cluster = three_nodes().await;
    let http = Http::new();
    let url = format!("{}/kv/counter", cluster.url(0));
    let body = r#"{"value": 1, "encoding": "integer", "ttl_ms": 600000}"#;
    let (status, _) = http.put(&url, body).await;
    assert_eq!(status, StatusCode::OK);
    let (status, incr) = http
        .post(
            &format!("{}/kv/counter/incr", cluster.url(1)),
            r#"{"by": 2}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{incr}");
    assert_eq!(incr["value"], 3);
    assert!(
        incr["ttl_ms"].as_u64().is_some_and(|t| t > 500_000),
        "{incr}"
    );
    let (status, kept) = http
        .post(
            &format!("{}/set", cluster.url(2)),
            r#"{"key": "counter", "value": 7, "encoding": "integer", "keep_ttl": true}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{kept}");
    assert!(
        kept["ttl_ms"].as_u64().is_some_and(|t| t > 500_000),
        "{kept}"
    );
    let (status, cleared) = http
        .put(&url, r#"{"value": 8, "encoding": "integer"}"#)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(cleared.get("ttl_ms").is_none(), "{cleared}");
    let (_, got) = read(&http, &cluster, 1, "counter").await;
    assert!(got.get("ttl_ms").is_none(), "{got}");
    assert_eq!(got["value"], 8);

    for (body, message) in [
        (r#"{"value": 1, "ttl_ms": 0}"#, "at least 1"),
        (
            r#"{"value": 1, "ttl_ms": 5, "keep_ttl": true}"#,
            "cannot be combined",
        ),
        (r#"{"value": 1, "ttl_ms": -5}"#, "invalid request body"),
        (r#"{"value": 1, "ttl_ms": "10s"}"#, "invalid request body"),
    ] {
        let (status, error) = http.put(&url, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {error}");
        assert_eq!(error["error"]["code"], "invalid_request", "{body}");
        let text = error["error"]["message"].as_str().unwrap();
        assert!(text.contains(message), "{body}: {text}");
    }
    cluster.shutdown().await;
}

/// A node whose clock runs ahead finds a key expired first; the round it runs removes the key
/// for everyone, so the nodes whose clocks say it still has time never serve it again.
#[tokio::test]
async fn a_node_with_a_clock_ahead_expires_a_key_for_every_node() {
    let cluster = three_nodes().await;
    let http = Http::new();
    cluster.node(0).clock().set_offset_ms(60_000);
    let (status, put) = http
        .put(
            &format!("{}/kv/skewed", cluster.url(1)),
            r#"{"value": "x", "ttl_ms": 30000}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{put}");
    // By the other nodes' clocks it has half a minute to live.
    let (status, got) = read(&http, &cluster, 2, "skewed").await;
    assert_eq!(status, StatusCode::OK, "{got}");
    // Node 0's clock is past its expiry: it reads it as missing...
    let (status, got) = read(&http, &cluster, 0, "skewed").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{got}");
    // ...and from then on so does every node, though their clocks disagree.
    for node in [1, 2] {
        let (status, got) = read(&http, &cluster, node, "skewed").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "node {node}: {got}");
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn the_sweep_removes_expired_keys_from_every_replica_without_reads() {
    let cluster = three_nodes().await;
    let http = Http::new();
    for i in 0..50 {
        let (status, put) = http
            .post(
                &format!("{}/set", cluster.url(i % 3)),
                &format!(
                    r#"{{"key": "temp{i}", "value": {i}, "encoding": "integer", "ttl_ms": 200}}"#
                ),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{put}");
    }
    let (status, _) = http
        .put(&format!("{}/kv/kept", cluster.url(0)), r#"{"value": "v"}"#)
        .await;
    assert_eq!(status, StatusCode::OK);
    // No client reads them: the stores empty themselves of every expired value.
    poll("the expired keys to be swept", TIMEOUT, || async {
        let live: Vec<usize> = (0..3).map(|n| cluster.node(n).store().len()).collect();
        // Each store holds "kept" and the cluster's own record of its map.
        live.iter().all(|&n| n == 2).then_some(())
    })
    .await;
    let expired: u64 = (0..3)
        .map(|n| cluster.node(n).metrics().snapshot().expired)
        .sum();
    assert_eq!(expired, 50, "each key removed by one sweep");
    for i in [0, 17, 49] {
        let (status, _) = read(&http, &cluster, i % 3, &format!("temp{i}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    cluster.shutdown().await;
}

/// A restarted replica copies the key with its expiry time and expires it like the others;
/// one down while its key expires does not bring the key back when it returns.
#[tokio::test]
async fn an_expired_key_never_comes_back_after_a_replica_restarts() {
    let mut cluster = three_nodes().await;
    let http = Http::new();
    let (status, put) = http
        .put(
            &format!("{}/kv/short", cluster.url(0)),
            r#"{"value": "lived", "ttl_ms": 5000}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{put}");
    let expires = cluster.node(0).store().get("short").unwrap().expires;
    assert!(expires.is_some());

    cluster.stop_node(2).await;
    cluster.restart_node(2).await.expect("restarts");
    assert!(cluster.wait_ready(TIMEOUT).await, "node 2 catches up");
    let copied = poll("node 2 to copy the key", TIMEOUT, || async {
        cluster.node(2).store().get("short")
    })
    .await;
    assert_eq!(
        copied.expires, expires,
        "the expiry time is part of the copy"
    );

    cluster.stop_node(1).await;
    until_missing(&http, &cluster, 2, "short").await;
    cluster.restart_node(1).await.expect("restarts");
    assert!(cluster.wait_ready(TIMEOUT).await, "node 1 catches up");
    for node in 0..3 {
        let (status, got) = read(&http, &cluster, node, "short").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "node {node}: {got}");
    }
    for node in 0..3 {
        assert_eq!(cluster.node(node).store().get("short"), None, "node {node}");
    }
    cluster.shutdown().await;
}
