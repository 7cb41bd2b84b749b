//! Hardening: recovery at real data sizes, operations that store nothing, tombstone
//! collection, seed keys written once, and the checks every peer message goes through.

use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use kvcore::{Ballot, ErrorCode, NodeId, Precondition, Register, Store, Value, Version};
use kvnet::rpc::{Accept, Collect, Prepare, SyncShard};
use kvnet::{Frame, FrameError, Header, RemoteError, Rpc};
use kvserver::{LocalCluster, LocalClusterBuilder, Node, Transport};
use serde_json::json;

use crate::util::{poll, Http};

/// The default limit on a value's size.
const MAX_VALUE: usize = 1 << 20;

fn quick() -> LocalClusterBuilder {
    LocalCluster::builder().configure(|c| {
        c.heartbeat_ms = 50;
        c.down_after_ms = 200;
        c.anti_entropy_ms = 100;
        c.forward_timeout_ms = 2000;
        c.op_timeout_ms = 4000;
        c.replicas = 3;
    })
}

/// Keys that all fall into one store shard (the same shard on every node).
fn keys_in_shard(shard: usize, prefix: &str, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|k| Store::shard_of(k) == shard)
        .take(n)
        .collect()
}

#[tokio::test]
async fn a_restarted_node_catches_up_a_shard_larger_than_any_reply_over_http() {
    let mut cluster = quick()
        .nodes(3)
        .transport(Transport::Http)
        .start()
        .await
        .unwrap();
    // Six values at the size limit in one store shard: 6 MiB, more than one reply may carry
    // (and more than the 4 MiB the whole shard had to fit in before), plus small keys.
    let big = keys_in_shard(7, "big", 6);
    for (i, key) in big.iter().enumerate() {
        let value = Value::binary(vec![i as u8; MAX_VALUE]);
        let node = cluster.node(i % 3);
        assert!(node
            .set(key, value, Precondition::None)
            .await
            .unwrap()
            .is_ok());
    }
    for i in 0..500 {
        let node = cluster.node(i % 3);
        let key = format!("small{i}");
        let written = node.set(&key, Value::integer(i as i64), Precondition::None);
        assert!(written.await.unwrap().is_ok());
    }
    cluster.stop_node(2).await;
    cluster.restart_node(2).await.unwrap();
    let node = cluster.node(2).clone();
    poll("node 2 caught up", Duration::from_secs(60), || {
        let node = node.clone();
        async move { node.is_ready().then_some(()) }
    })
    .await;
    // Every replica holds every key (R = 3): the restarted one copied them all.
    for (i, key) in big.iter().enumerate() {
        let entry = node
            .store()
            .get(key)
            .unwrap_or_else(|| panic!("{key} copied"));
        assert_eq!(entry.value.as_bytes().len(), MAX_VALUE);
        assert!(entry.value.as_bytes().iter().all(|&b| b == i as u8));
    }
    for i in 0..500 {
        let entry = node.store().get(&format!("small{i}")).unwrap();
        assert_eq!(entry.value.as_i64(), Some(i as i64));
    }
    cluster.shutdown().await;
}

/// Bytes charged in every node's store.
fn used(cluster: &LocalCluster) -> Vec<u64> {
    (0..cluster.len())
        .map(|i| cluster.node(i).store().used_bytes())
        .collect()
}

#[tokio::test]
async fn operations_that_change_nothing_store_nothing() {
    let cluster = quick()
        .nodes(3)
        .transport(Transport::InProcess)
        .start()
        .await
        .unwrap();
    let node = cluster.node(0).clone();
    assert!(node
        .set("present", Value::string("x"), Precondition::None)
        .await
        .unwrap()
        .is_ok());
    let before = used(&cluster);
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let nodes: Vec<Arc<Node>> = (0..3).map(|i| cluster.node(i).clone()).collect();
        tasks.spawn(async move {
            for i in (worker..100_000).step_by(16) {
                let node = &nodes[i % 3];
                let key = format!("missing{i}");
                match i % 4 {
                    0 | 1 => assert_eq!(node.delete(&key).await.unwrap(), None),
                    2 => {
                        let stale = Precondition::IfVersion(Version(3));
                        let refused = node.set(&key, Value::integer(1), stale).await.unwrap();
                        assert_eq!(refused.unwrap_err().current, None);
                    }
                    _ => {
                        let taken = Precondition::IfAbsent;
                        let refused = node.set("present", Value::integer(1), taken).await.unwrap();
                        assert!(refused.unwrap_err().current.is_some());
                    }
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    assert_eq!(
        used(&cluster),
        before,
        "bytes stored after 100 000 no-op writes"
    );
    // "present", and the cluster's record of its map.
    assert_eq!(cluster.node(1).store().len(), 2);
    cluster.shutdown().await;
}

#[tokio::test]
async fn no_op_deletes_over_http_leave_stats_bytes_flat() {
    let cluster = quick().nodes(3).start().await.unwrap();
    let http = Http::new();
    let bytes = |n: usize| {
        let (http, url) = (http.clone(), cluster.url(n));
        async move {
            let (_, stats) = http.get(&format!("{url}/stats")).await;
            stats["bytes"].as_u64().unwrap()
        }
    };
    let before = [bytes(0).await, bytes(1).await, bytes(2).await];
    for i in 0..600 {
        let (status, body) = http
            .delete(&format!("{}/kv/gone{i}", cluster.url(i % 3)))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        let body = json!({"key": format!("gone{i}"), "value": "v", "if_version": 2}).to_string();
        let (status, _) = http
            .post(&format!("{}/set", cluster.url(i % 3)), &body)
            .await;
        assert_eq!(status, StatusCode::CONFLICT);
    }
    let after = [bytes(0).await, bytes(1).await, bytes(2).await];
    assert_eq!(after, before);
    cluster.shutdown().await;
}

#[tokio::test]
async fn deleting_every_key_gives_the_memory_back_and_versions_keep_growing() {
    let cluster = quick()
        .nodes(3)
        .transport(Transport::InProcess)
        .start()
        .await
        .unwrap();
    let start = used(&cluster);
    for i in 0..2000 {
        let node = cluster.node(i % 3);
        let v = Value::string(format!("value {i}"));
        assert!(node
            .set(&format!("k{i}"), v, Precondition::None)
            .await
            .unwrap()
            .is_ok());
    }
    let full = used(&cluster);
    assert!(full.iter().zip(&start).all(|(f, s)| f > s));
    let mut last = Version(0);
    for i in 0..2000 {
        let node = cluster.node((i + 1) % 3);
        let old = node.delete(&format!("k{i}")).await.unwrap().unwrap();
        if i == 5 {
            last = old.version;
        }
    }
    // Anti-entropy collects the tombstones once every replica holds them.
    poll("tombstones collected", Duration::from_secs(30), || {
        let now = used(&cluster);
        let start = start.clone();
        async move { (now == start).then_some(()) }
    })
    .await;
    // Every replica collected every tombstone. A round that reaches a key while its collection
    // is under way (anti-entropy settling a lagging replica) can leave promise-only records on
    // the replicas that had already dropped it; those are collected too, so the count may be a
    // little higher, never lower.
    let collected: u64 = (0..3)
        .map(|i| cluster.node(i).metrics().snapshot().collected)
        .sum();
    assert!(
        (3 * 2000..3 * 2000 + 30).contains(&collected),
        "{collected} collections"
    );
    // A re-created key continues above the versions it had: the deleted value's version and its
    // tombstone's are never used again.
    let node = cluster.node(2);
    let again = node
        .set("k5", Value::string("again"), Precondition::IfAbsent)
        .await
        .unwrap()
        .unwrap();
    assert!(again > last.next(), "{again} after {last}");
    for i in 0..3 {
        let got = cluster.node(i).get("k5").await.unwrap().unwrap();
        assert_eq!((got.value.as_str(), got.version), (Some("again"), again));
        assert_eq!(cluster.node(i).get("k6").await.unwrap(), None);
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_deleted_seed_key_stays_deleted_when_its_primary_restarts() {
    let mut cluster = quick()
        .nodes(3)
        .configure(|c| c.seed_keys = true)
        .start()
        .await
        .unwrap();
    let http = Http::new();
    let (status, _) = http.get(&format!("{}/get/a", cluster.url(1))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = http.delete(&format!("{}/kv/a", cluster.url(1))).await;
    assert_eq!(status, StatusCode::OK);
    let primary = cluster.node(0).owner("a").0 as usize;
    cluster.stop_node(primary).await;
    cluster.restart_node(primary).await.unwrap();
    let url = cluster.url(primary);
    poll(
        "the restarted primary healthy",
        Duration::from_secs(30),
        || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let (status, _) = http.get(&format!("{url}/health")).await;
                (status == StatusCode::OK).then_some(())
            }
        },
    )
    .await;
    // Anti-entropy runs a few passes over the tombstone without collecting it. Once a pass
    // is clean, only every eleventh interval runs one, so four take about five seconds.
    let node = cluster.node(primary).clone();
    let passes = node.metrics().snapshot().anti_entropy_passes;
    poll("anti-entropy passes", Duration::from_secs(60), || {
        let node = node.clone();
        async move { (node.metrics().snapshot().anti_entropy_passes > passes + 3).then_some(()) }
    })
    .await;
    for n in 0..3 {
        let (status, body) = http.get(&format!("{}/get/a", cluster.url(n))).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "node {n}: {body}");
        let (status, _) = http.get(&format!("{}/get/b", cluster.url(n))).await;
        assert_eq!(status, StatusCode::OK);
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn seed_keys_are_readable_on_every_node_once_any_node_reports_healthy() {
    for _ in 0..3 {
        let cluster = LocalCluster::builder()
            .nodes(3)
            .configure(|c| c.seed_keys = true)
            .start()
            .await
            .unwrap();
        let http = Http::new();
        let urls: Vec<String> = (0..3).map(|i| cluster.url(i)).collect();
        poll("a node healthy", Duration::from_secs(30), || {
            let (http, urls) = (http.clone(), urls.clone());
            async move {
                for url in urls {
                    let (status, _) = http.get(&format!("{url}/health")).await;
                    if status == StatusCode::OK {
                        return Some(());
                    }
                }
                None
            }
        })
        .await;
        for url in &urls {
            for (key, value) in kvserver::SEED_KEYS {
                let (status, got) = http.get(&format!("{url}/get/{key}")).await;
                assert_eq!(
                    (status, got["value"].as_str()),
                    (StatusCode::OK, Some(value))
                );
            }
        }
        cluster.shutdown().await;
    }
}

/// Sends `request` to `node` as if from `header.from`, straight to its peer handler.
async fn send_as<R: Rpc>(
    node: &Node,
    header: Header,
    request: &R,
) -> Result<Result<R::Reply, RemoteError>, FrameError> {
    let frame = Frame::encode(&header, request);
    let reply = node
        .peer_handler()
        .handle_frame(frame.bytes().clone())
        .await?;
    frame.decode_reply(&reply)
}

#[tokio::test]
async fn out_of_range_fields_of_peer_messages_are_refused_and_change_nothing() {
    let cluster = quick()
        .nodes(3)
        .transport(Transport::InProcess)
        .start()
        .await
        .unwrap();
    let node = cluster.node(0).clone();
    let peer = cluster.node(1).clone();
    let header = Header {
        from: NodeId(1),
        incarnation: peer.incarnation(),
        epoch: node.map().epoch(),
        request_id: 1,
        hops: 1,
    };
    fn refused<T: std::fmt::Debug>(answer: Result<Result<T, RemoteError>, FrameError>, what: &str) {
        let e = answer.unwrap().expect_err(what);
        assert_eq!(e.code, ErrorCode::InvalidRequest, "{what}: {e}");
    }
    let prepare = |ballot| Prepare {
        key: "k".into(),
        ballot,
        grow: 1,
    };
    let own = |round| Ballot::new(round, NodeId(1));
    refused(
        send_as(&node, header, &prepare(own(Ballot::MAX_ROUND))).await,
        "a ballot no one could outbid",
    );
    refused(
        send_as(&node, header, &prepare(Ballot::new(5, NodeId(2)))).await,
        "another node's ballot",
    );
    let huge = Prepare {
        grow: u32::MAX,
        ..prepare(own(5))
    };
    refused(send_as(&node, header, &huge).await, "a huge grow");
    let stranger = Header {
        from: NodeId(42),
        ..header
    };
    refused(
        send_as(&node, stranger, &prepare(own(5))).await,
        "a stranger",
    );
    let itself = Header {
        from: NodeId(0),
        incarnation: node.incarnation() - 1,
        ..header
    };
    let its_own = Prepare {
        ballot: Ballot::new(5, NodeId(0)),
        ..prepare(own(5))
    };
    refused(
        send_as(&node, itself, &its_own).await,
        "itself in an earlier life",
    );
    let future = Header {
        incarnation: u64::MAX,
        ..header
    };
    refused(
        send_as(&node, future, &prepare(own(5))).await,
        "an incarnation from the far future",
    );
    let accept = Accept {
        key: "k".into(),
        register: Register {
            ballot: own(7),
            version: Version(u64::MAX),
            value: Some(Value::integer(1)),
            expires: None,
        },
        promisers: vec![(NodeId(1), peer.incarnation())],
        promise_next: None,
    };
    refused(
        send_as(&node, header, &accept).await,
        "a version that cannot grow",
    );
    let collect = Collect {
        keys: vec![("k".into(), own(Ballot::MAX_ROUND))],
    };
    assert_eq!(
        send_as(&node, header, &collect).await.unwrap().unwrap(),
        [false]
    );
    let sync = SyncShard {
        shard: u32::MAX,
        after: None,
        moving: false,
    };
    refused(
        send_as(&node, header, &sync).await,
        "a shard that does not exist",
    );
    // None of it took: the key is writable and the node still counts node 1's real incarnation.
    for i in 0..3 {
        let written = cluster
            .node(i)
            .set("k", Value::integer(i as i64), Precondition::None);
        assert!(written.await.unwrap().is_ok());
    }
    assert_eq!(
        cluster
            .node(2)
            .get("k")
            .await
            .unwrap()
            .unwrap()
            .value
            .as_i64(),
        Some(2)
    );
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_node_whose_clock_went_back_rises_above_its_previous_incarnation() {
    let mut cluster = quick().nodes(3).start().await.unwrap();
    let before = cluster.node(1).incarnation();
    // The restarted node's clock is an hour behind its previous life's.
    let behind = before - 3600 * 1_000_000;
    cluster
        .restart_node_with_incarnation(1, behind)
        .await
        .unwrap();
    assert!(cluster.wait_ready(Duration::from_secs(30)).await);
    let now = cluster.node(1).incarnation();
    assert!(now > before, "incarnation {now} is not above {before}");
    // It coordinates writes to its own keys and counts as a replica again: every key is
    // writable through it with one other node cut off.
    let keys: Vec<String> = (0..40).map(|i| format!("mine{i}")).collect();
    for key in &keys {
        let node = cluster.node(1);
        let written = node.set(key, Value::string("x"), Precondition::None);
        assert!(written.await.unwrap().is_ok(), "{key}");
    }
    cluster.stop_node(2).await;
    for key in &keys {
        let node = cluster.node(1);
        let written = node.set(key, Value::string("y"), Precondition::None);
        assert!(written.await.unwrap().is_ok(), "{key} with node 2 down");
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_recovering_replica_keeps_its_tombstones_until_it_has_caught_up() {
    let faults = kvnet::Faults::new(5);
    let mut cluster = quick()
        .nodes(3)
        .transport(Transport::Http)
        .faults(faults.clone())
        .start()
        .await
        .unwrap();
    let node = cluster.node(0).clone();
    assert!(node
        .set("k", Value::string("v"), Precondition::None)
        .await
        .unwrap()
        .is_ok());
    assert!(node.delete("k").await.unwrap().is_some());
    // Node 2 restarts and copies node 0's replicas, tombstone included, but its copy from node 1
    // is held back: it stays recovering, and a copy node 1 made before the delete could still
    // arrive and be merged.
    faults.hold(
        Some(NodeId(2)),
        Some(NodeId(1)),
        Some(kvnet::Kind::SyncShard),
    );
    cluster.restart_node(2).await.unwrap();
    let restarted = cluster.node(2).clone();
    poll("the tombstone copied", Duration::from_secs(30), || {
        let restarted = restarted.clone();
        async move { (restarted.store().register("k").ballot != Ballot::ZERO).then_some(()) }
    })
    .await;
    assert!(!restarted.is_ready());
    let tombstone = restarted.store().register("k");
    assert!(tombstone.value.is_none());
    let header = Header {
        from: NodeId(0),
        incarnation: node.incarnation(),
        epoch: node.map().epoch(),
        request_id: 7,
        hops: 1,
    };
    let collect = Collect {
        keys: vec![("k".into(), tombstone.ballot)],
    };
    let removed = send_as(&restarted, header, &collect)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(removed, [false]);
    assert_eq!(restarted.store().register("k"), tombstone);
    let digest = kvnet::rpc::DigestShard {
        shard: Store::shard_of("k") as u32,
        after: None,
    };
    let refused = send_as(&restarted, header, &digest).await.unwrap();
    assert_eq!(refused.unwrap_err().code, ErrorCode::Recovering);
    // Once it has caught up, the tombstone is collected everywhere.
    faults.release();
    poll("tombstone collected", Duration::from_secs(30), || {
        let nodes: Vec<Arc<Node>> = (0..3).map(|i| cluster.node(i).clone()).collect();
        async move {
            let gone = nodes
                .iter()
                .all(|n| n.is_ready() && n.store().register("k").ballot == Ballot::ZERO);
            gone.then_some(())
        }
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_deleted_seed_key_stays_deleted_with_one_replica_per_key() {
    let mut cluster = quick()
        .nodes(3)
        .configure(|c| {
            c.replicas = 1;
            c.seed_keys = true;
        })
        .transport(Transport::InProcess)
        .start()
        .await
        .unwrap();
    let owner = cluster.node(0).owner("a").0 as usize;
    let other = (owner + 1) % 3;
    assert!(cluster.node(other).delete("a").await.unwrap().is_some());
    // Another node restarts and makes sure of the seed keys again.
    cluster.restart_node(other).await.unwrap();
    assert!(cluster.wait_ready(Duration::from_secs(30)).await);
    for i in 0..3 {
        assert_eq!(cluster.node(i).get("a").await.unwrap(), None, "node {i}");
        assert!(cluster.node(i).get("b").await.unwrap().is_some());
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn the_cluster_map_is_recorded_on_every_member_and_closed_to_clients() {
    let mut cluster = quick().nodes(3).start().await.unwrap();
    let expected = cluster.node(0).map().spec();
    for i in 0..3 {
        let recorded = cluster.node(i).recorded_map().await.unwrap();
        assert_eq!(recorded.as_ref(), Some(&expected), "through node {i}");
        assert!(cluster.node(i).holds_map_replica());
    }
    // A restarted member copies it like any replica.
    cluster.restart_node(1).await.unwrap();
    assert!(cluster.wait_ready(Duration::from_secs(30)).await);
    assert!(cluster.node(1).holds_map_replica());
    assert_eq!(
        cluster.node(1).recorded_map().await.unwrap(),
        Some(expected)
    );
    // Clients cannot name the cluster's own records, and they are not counted as keys.
    let http = Http::new();
    let (status, body) = http
        .get(&format!("{}/get/%00cluster-map", cluster.url(0)))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_key"))
    );
    let set = json!({"key": "\u{0}cluster-map", "value": "mine"}).to_string();
    let (status, _) = http.post(&format!("{}/set", cluster.url(2)), &set).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = http
        .delete(&format!("{}/kv/%00cluster-map", cluster.url(1)))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, stats) = http.get(&format!("{}/stats", cluster.url(0))).await;
    assert_eq!(stats["keys"], 0);
    cluster.shutdown().await;
}
