//! Keys with a time to live, over HTTP: they expire through every node at once, skewed clocks
//! cannot bring them back, a restarted replica does not resurrect them, and the background
//! sweep reclaims them without any read.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::StatusCode;
use kvcore::NodeId;
use kvnet::Faults;
use kvserver::{LocalCluster, Transport};
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

/// How far node 0's clock is set from the others' in the skew tests: far beyond the bound
/// docs/consistency.md assumes (under a second), so that what skew may and may not change
/// shows in a test that takes no longer than the TTLs below.
const SKEW_MS: u64 = 60_000;

/// Milliseconds since 1970 by the system clock, which the nodes' clocks are offsets of.
fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as u64
}

/// The first key `{prefix}-{n}` whose primary, the node that applies its writes and so
/// decides their expiry times, is node `node` if `primary`, or another node if not.
fn key_placed(cluster: &LocalCluster, prefix: &str, node: usize, primary: bool) -> String {
    (0..1000)
        .map(|n| format!("{prefix}-{n}"))
        .find(|key| (cluster.node(0).owner(key) == NodeId(node as u32)) == primary)
        .expect("three nodes share the keys")
}

/// Writes `key` with `ttl_ms` through `node`; returns the expiry time the replicas hold, and
/// the system clock just before and after the write.
async fn put_with_ttl(
    http: &Http,
    cluster: &LocalCluster,
    node: usize,
    key: &str,
    ttl_ms: u64,
) -> (u64, u64, u64) {
    let before = wall_ms();
    let (status, put) = http
        .put(
            &format!("{}/kv/{key}", cluster.url(node)),
            &format!(r#"{{"value": "x", "ttl_ms": {ttl_ms}}}"#),
        )
        .await;
    let after = wall_ms();
    assert_eq!(status, StatusCode::OK, "{put}");
    let expires = (0..3)
        .find_map(|n| cluster.node(n).store().register(key).expires)
        .expect("a majority holds the write");
    (expires, before, after)
}

/// Reads `key` through `node`: `Some(ttl_ms)` if it is there, `None` if it is missing.
async fn ttl_through(http: &Http, cluster: &LocalCluster, node: usize, key: &str) -> Option<u64> {
    let (status, got) = read(http, cluster, node, key).await;
    match status {
        StatusCode::OK => Some(got["ttl_ms"].as_u64().expect("it was written with a TTL")),
        StatusCode::NOT_FOUND => None,
        other => panic!("{key} through node {node}: {other} {got}"),
    }
}

/// Asserts that `key` reads as missing through every node and that no replica holds a value
/// for it any more (a replica the delete's round missed is brought up by the reads or by
/// anti-entropy).
async fn gone_everywhere(http: &Http, cluster: &LocalCluster, key: &str) {
    for node in 0..3 {
        assert_eq!(
            ttl_through(http, cluster, node, key).await,
            None,
            "node {node}"
        );
    }
    poll(&format!("every replica to drop {key}"), TIMEOUT, || async {
        (0..3)
            .all(|n| cluster.node(n).store().register(key).value.is_none())
            .then_some(())
    })
    .await;
}

/// A node whose clock runs ahead finds a key expired up to the skew early, and the round it
/// runs removes the key for everyone, so the nodes whose clocks say it still has time never
/// serve it again. A key it is the primary of gets its expiry time from its clock: up to the
/// skew late by the others', and read the same through every node.
#[tokio::test]
async fn a_node_with_a_clock_ahead_expires_a_key_for_every_node() {
    let cluster = three_nodes().await;
    let http = Http::new();
    cluster.node(0).clock().set_offset_ms(SKEW_MS as i64);
    let ttl = 30_000;

    // Written through the skewed node, but applied, and given its expiry time, by a primary
    // whose clock is right.
    let key = key_placed(&cluster, "early", 0, false);
    let (expires, before, after) = put_with_ttl(&http, &cluster, 0, &key, ttl).await;
    assert!((before + ttl..=after + ttl).contains(&expires), "{expires}");
    // By the other nodes' clocks it has half a minute to live.
    for node in [1, 2] {
        let left = ttl_through(&http, &cluster, node, &key).await;
        assert!(left.is_some_and(|t| t <= ttl), "node {node}: {left:?}");
    }
    // Node 0's clock is past its expiry: it reads it as missing, and from then on so does
    // every node, though their clocks disagree.
    assert_eq!(ttl_through(&http, &cluster, 0, &key).await, None);
    gone_everywhere(&http, &cluster, &key).await;

    // Applied by the skewed node: its expiry time is a minute later than the others' clocks
    // would have made it, and every node serves it, the skewed one included.
    let key = key_placed(&cluster, "late", 0, true);
    let (expires, before, after) = put_with_ttl(&http, &cluster, 1, &key, ttl).await;
    let skewed = |t: u64| t + SKEW_MS + ttl;
    assert!(
        (skewed(before)..=skewed(after)).contains(&expires),
        "{expires}"
    );
    for node in [1, 2] {
        let left = ttl_through(&http, &cluster, node, &key).await;
        assert!(
            left.is_some_and(|t| t > SKEW_MS && t <= SKEW_MS + ttl),
            "node {node}: {left:?}"
        );
    }
    let left = ttl_through(&http, &cluster, 0, &key).await;
    assert!(left.is_some_and(|t| t <= ttl), "node 0: {left:?}");
    cluster.shutdown().await;
}

/// A node whose clock runs behind cannot bring back a key the others removed, though its clock
/// says the key has time left: neither one it gave an expiry time already past by theirs (a
/// TTL shorter than the skew expires at once), nor one that expired by a correct clock.
#[tokio::test]
async fn a_node_with_a_clock_behind_never_serves_a_key_the_others_expired() {
    let cluster = three_nodes().await;
    let http = Http::new();
    cluster.node(0).clock().set_offset_ms(-(SKEW_MS as i64));

    // Applied by the skewed node: its expiry time is half a minute in the past by the others'
    // clocks, so it expires as soon as one of them reads it.
    let ttl = 30_000;
    let key = key_placed(&cluster, "past", 0, true);
    let (expires, before, after) = put_with_ttl(&http, &cluster, 1, &key, ttl).await;
    let skewed = |t: u64| t + ttl - SKEW_MS;
    assert!(
        (skewed(before)..=skewed(after)).contains(&expires),
        "{expires}"
    );
    assert_eq!(ttl_through(&http, &cluster, 1, &key).await, None);
    gone_everywhere(&http, &cluster, &key).await;

    // Applied by a primary whose clock is right: node 0 reads it with a minute more to live
    // than the others, until they expire it; then it reads it as missing too.
    let ttl = 1_000;
    let key = key_placed(&cluster, "due", 0, false);
    let (expires, before, after) = put_with_ttl(&http, &cluster, 0, &key, ttl).await;
    assert!((before + ttl..=after + ttl).contains(&expires), "{expires}");
    // More than the TTL itself left by node 0's clock, however long the machine took to get
    // here (under the skew), unless another node has removed it already.
    if let Some(left) = ttl_through(&http, &cluster, 0, &key).await {
        assert!(left > ttl && left <= SKEW_MS + ttl, "node 0: {left}");
    }
    until_missing(&http, &cluster, 1, &key).await;
    gone_everywhere(&http, &cluster, &key).await;
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
/// one down while its key expires comes back empty and copies the removal. (A replica that
/// still holds the expired value in memory is the next test.)
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

/// Whether `node`'s replica of `key` holds a value (expired or not).
fn holds_value(cluster: &LocalCluster, node: usize, key: &str) -> bool {
    cluster.node(node).store().register(key).value.is_some()
}

/// A replica that missed the removal of an expired key, and so still holds the value in memory,
/// cannot bring it back: not when another replica restarts and copies from it, nor once
/// everything heals. Peer messages pass through injected faults, over HTTP or in process.
async fn a_replica_that_missed_an_expiry_does_not_resurrect_the_key(transport: Transport) {
    let faults = Faults::new(1);
    let mut cluster = LocalCluster::builder()
        .nodes(3)
        .transport(transport)
        .faults(faults.clone())
        .configure(|c| {
            c.replicas = 3;
            c.seed_keys = false;
        })
        .start()
        .await
        .expect("cluster starts");
    let http = Http::new();
    let key = "stale";
    let all: Vec<NodeId> = (0..3).map(NodeId).collect();
    // The primary removes the key with the restarted replica; the stale one misses it.
    let owners = cluster.node(0).owners(key);
    let [primary, stale, restarted] = [0, 1, 2].map(|i| owners[i].0 as usize);

    let (status, put) = http
        .put(
            &format!("{}/kv/{key}", cluster.url(primary)),
            r#"{"value": "lived", "ttl_ms": 2000}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{put}");
    poll("every replica to hold the value", TIMEOUT, || async {
        (0..3).all(|n| holds_value(&cluster, n, key)).then_some(())
    })
    .await;

    faults.isolate(NodeId(stale as u32), &all);
    until_missing(&http, &cluster, primary, key).await;
    assert!(
        holds_value(&cluster, stale, key),
        "node {stale} was cut off, so it still holds the expired value"
    );

    // The restarted replica copies from both others, the stale one included; the primary stays
    // cut off from the stale one, so nothing repairs it before the copy. (The test's runtime
    // has one thread: no message moves between these two calls.)
    cluster.stop_node(restarted).await;
    faults.heal();
    faults.partition(&[NodeId(primary as u32)], &[NodeId(stale as u32)]);
    assert!(
        holds_value(&cluster, stale, key),
        "no round could reach node {stale}"
    );
    cluster.restart_node(restarted).await.expect("restarts");
    assert!(
        cluster.wait_ready(TIMEOUT).await,
        "node {restarted} catches up"
    );
    assert!(
        !holds_value(&cluster, restarted, key),
        "node {restarted} merged the stale copy over the removal: {:?}",
        cluster.node(restarted).store().register(key)
    );
    for node in [restarted, stale, primary] {
        let (status, got) = read(&http, &cluster, node, key).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "node {node}: {got}");
    }

    faults.heal();
    poll(
        "every replica to agree the key is gone",
        TIMEOUT,
        || async {
            let registers: Vec<_> = (0..3)
                .map(|n| cluster.node(n).store().register(key))
                .collect();
            let agree = registers.windows(2).all(|w| w[0] == w[1]);
            (agree && registers.iter().all(|r| r.value.is_none())).then_some(())
        },
    )
    .await;
    for node in 0..3 {
        let (status, got) = read(&http, &cluster, node, key).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "node {node}: {got}");
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_replica_that_missed_an_expiry_does_not_resurrect_the_key_over_http() {
    a_replica_that_missed_an_expiry_does_not_resurrect_the_key(Transport::Http).await;
}

#[tokio::test]
async fn a_replica_that_missed_an_expiry_does_not_resurrect_the_key_in_process() {
    a_replica_that_missed_an_expiry_does_not_resurrect_the_key(Transport::InProcess).await;
}
