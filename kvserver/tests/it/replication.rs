//! Replication: quorum loss, restarted nodes, anti-entropy.

use std::time::Duration;

use hyper::StatusCode;
use kvcore::{NodeId, Precondition, Value};
use kvnet::Faults;
use kvserver::{LocalCluster, Transport};
use serde_json::json;

use crate::util::{poll, Http};

fn quick() -> kvserver::LocalClusterBuilder {
    LocalCluster::builder().configure(|c| {
        c.heartbeat_ms = 50;
        c.down_after_ms = 200;
        c.anti_entropy_ms = 100;
        c.forward_timeout_ms = 500;
        c.op_timeout_ms = 2000;
    })
}

#[tokio::test]
async fn losing_a_quorum_refuses_writes_and_loses_nothing_acknowledged() {
    let faults = Faults::new(9);
    let mut cluster = quick()
        .nodes(3)
        .configure(|c| c.replicas = 3)
        .faults(faults.clone())
        .start()
        .await
        .unwrap();
    let http = Http::new();
    for i in 0..20 {
        let body = json!({"key": format!("q{i}"), "value": i, "encoding": "integer"}).to_string();
        let (status, _) = http
            .post(&format!("{}/set", cluster.url(i % 3)), &body)
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    // Nodes 1 and 2 become unreachable from node 0: 2 of 3 replicas of every key are down as far
    // as node 0 can tell. Nothing can be acknowledged, and the answer says whether the write may
    // have been applied (504) or certainly was not (503).
    faults.partition(&[NodeId(0)], &[NodeId(1), NodeId(2)]);
    let mut maybe_applied = Vec::new();
    for i in 0..5 {
        let body =
            json!({"key": format!("q{i}"), "value": 100 + i, "encoding": "integer"}).to_string();
        let (status, err) = http.post(&format!("{}/set", cluster.url(0)), &body).await;
        match (status, err["error"]["code"].as_str()) {
            (StatusCode::SERVICE_UNAVAILABLE, Some("quorum_unavailable")) => {}
            (StatusCode::GATEWAY_TIMEOUT, Some("outcome_unknown")) => maybe_applied.push(i),
            other => panic!("{other:?}: {err}"),
        }
        let (status, err) = http.get(&format!("{}/get/q{i}", cluster.url(0))).await;
        assert_eq!(
            (status, &err["error"]["code"]),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                &json!("quorum_unavailable")
            )
        );
    }
    faults.heal();
    let check = |i: usize, got: &serde_json::Value| {
        let v = got["value"].as_i64().unwrap();
        assert!(
            v == i as i64 || (maybe_applied.contains(&i) && v == 100 + i as i64),
            "q{i} = {v}"
        );
    };
    for i in 0..20 {
        for n in 0..3 {
            let (status, got) = http.get(&format!("{}/get/q{i}", cluster.url(n))).await;
            assert_eq!(status, StatusCode::OK, "{got}");
            check(i, &got);
        }
    }
    // Now two replicas crash and come back empty. Once every copy is on node 0 (anti-entropy
    // guarantees it), they catch up from it and nothing acknowledged is lost.
    poll(
        "node 0 holds every key",
        Duration::from_secs(10),
        || async {
            (0..20)
                .all(|i| cluster.node(0).store().get(&format!("q{i}")).is_some())
                .then_some(())
        },
    )
    .await;
    cluster.stop_node(1).await;
    cluster.stop_node(2).await;
    let (status, _) = http
        .post(
            &format!("{}/set", cluster.url(0)),
            r#"{"key": "q0", "value": "x"}"#,
        )
        .await;
    assert!(status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::GATEWAY_TIMEOUT);
    cluster.restart_node(1).await.unwrap();
    cluster.restart_node(2).await.unwrap();
    assert!(cluster.wait_ready(Duration::from_secs(10)).await);
    for i in 0..20 {
        for n in 0..3 {
            let (status, got) = http.get(&format!("{}/get/q{i}", cluster.url(n))).await;
            assert_eq!(status, StatusCode::OK, "{got}");
            if i > 0 {
                check(i, &got);
            }
        }
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_restarted_node_recovers_before_voting_and_serves_everything() {
    let faults = Faults::new(1);
    let mut cluster = quick()
        .nodes(4)
        .configure(|c| c.replicas = 3)
        .transport(Transport::InProcess)
        .faults(faults.clone())
        .start()
        .await
        .unwrap();
    let http = Http::new();
    for i in 0..200 {
        let node = cluster.node(i % 4);
        node.set(
            &format!("r{i}"),
            Value::integer(i as i64),
            Precondition::None,
        )
        .await
        .unwrap()
        .unwrap();
    }
    // Node 3 restarts while cut off from node 0: it cannot merge node 0's copies, so it stays
    // recovering and does not vote, and says so.
    faults.partition(&[NodeId(3)], &[NodeId(0)]);
    cluster.restart_node(3).await.unwrap();
    let url = cluster.url(3);
    poll("recovering health", Duration::from_secs(5), || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let (status, health) = http.get(&format!("{url}/health")).await;
            (status == StatusCode::SERVICE_UNAVAILABLE && health["status"] == "recovering")
                .then_some(())
        }
    })
    .await;
    let url1 = cluster.url(1);
    poll(
        "node 1 sees node 3 recovering",
        Duration::from_secs(5),
        || {
            let (http, url) = (http.clone(), url1.clone());
            async move {
                let (_, map) = http.get(&format!("{url}/cluster")).await;
                (map["nodes"][3]["state"] == "recovering").then_some(())
            }
        },
    )
    .await;
    assert!(!cluster.node(3).is_ready());
    // Meanwhile every key is still readable and writable through the nodes that reach a
    // majority of its voting replicas.
    for i in 0..200 {
        let n = [1, 2][i % 2];
        let entry = cluster
            .node(n)
            .get(&format!("r{i}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(entry.value.as_i64(), Some(i as i64));
    }
    cluster
        .node(1)
        .set("during", Value::integer(1), Precondition::None)
        .await
        .unwrap()
        .unwrap();
    faults.heal();
    assert!(cluster.wait_ready(Duration::from_secs(10)).await);
    // Once ready it holds its replicas' copies itself.
    for i in 0..200 {
        let key = format!("r{i}");
        if cluster.node(3).owners(&key).contains(&NodeId(3)) {
            assert_eq!(
                cluster.node(3).store().get(&key).unwrap().value.as_i64(),
                Some(i as i64)
            );
        }
    }
    for n in 0..4 {
        assert_eq!(
            cluster
                .node(n)
                .get("during")
                .await
                .unwrap()
                .unwrap()
                .value
                .as_i64(),
            Some(1)
        );
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn anti_entropy_restores_every_copy_after_a_partition_heals() {
    let faults = Faults::new(2);
    let cluster = quick()
        .nodes(3)
        .configure(|c| c.replicas = 3)
        .transport(Transport::InProcess)
        .faults(faults.clone())
        .start()
        .await
        .unwrap();
    // Node 2 is cut off; writes through node 0 reach a majority (0 and 1) only.
    faults.partition(&[NodeId(2)], &[NodeId(0), NodeId(1)]);
    for i in 0..50 {
        cluster
            .node(0)
            .set(&format!("ae{i}"), Value::integer(i), Precondition::None)
            .await
            .unwrap()
            .unwrap();
    }
    let lacking = |cluster: &LocalCluster| {
        (0..3)
            .map(|n| cluster.node(n).under_replicated())
            .sum::<u64>()
    };
    poll(
        "under-replication reported",
        Duration::from_secs(10),
        || async { (lacking(&cluster) > 0).then_some(()) },
    )
    .await;
    faults.heal();
    poll(
        "under-replication back to 0",
        Duration::from_secs(15),
        || async {
            let complete =
                (0..50).all(|i| cluster.node(2).store().get(&format!("ae{i}")).is_some());
            (complete && lacking(&cluster) == 0).then_some(())
        },
    )
    .await;
    let http = Http::new();
    let (_, stats) = http.get(&format!("{}/stats", cluster.url(0))).await;
    assert_eq!(stats["under_replicated"], 0);
    cluster.shutdown().await;
}

#[tokio::test]
async fn conditional_writes_and_increments_are_atomic_across_coordinators() {
    let cluster = quick()
        .nodes(3)
        .configure(|c| c.replicas = 3)
        .transport(Transport::InProcess)
        .start()
        .await
        .unwrap();
    // 60 increments racing from three coordinators: none is lost or applied twice.
    let mut tasks = Vec::new();
    for c in 0..3 {
        let node = cluster.node(c).clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..20 {
                node.incr("counter", 1).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let entry = cluster.node(1).get("counter").await.unwrap().unwrap();
    assert_eq!(entry.value.as_i64(), Some(60));
    // Exactly one of several racing if_absent writes wins.
    let mut tasks = Vec::new();
    for c in 0..3 {
        let node = cluster.node(c).clone();
        tasks.push(tokio::spawn(async move {
            node.set("once", Value::integer(c as i64), Precondition::IfAbsent)
                .await
                .unwrap()
                .is_ok()
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += t.await.unwrap() as usize;
    }
    assert_eq!(wins, 1);
    // Increments over HTTP, and their errors.
    let http = Http::new();
    let (status, got) = http
        .post(
            &format!("{}/kv/counter/incr", cluster.url(2)),
            r#"{"by": -10}"#,
        )
        .await;
    assert_eq!((status, &got["value"]), (StatusCode::OK, &json!(50)));
    let (status, got) = http
        .post(&format!("{}/kv/fresh/incr", cluster.url(0)), "{}")
        .await;
    assert_eq!(
        (status, &got["value"], &got["version"]),
        (StatusCode::OK, &json!(1), &json!(1))
    );
    cluster
        .node(0)
        .set("text", Value::string("x"), Precondition::None)
        .await
        .unwrap()
        .unwrap();
    let (status, err) = http
        .post(&format!("{}/kv/text/incr", cluster.url(1)), r#"{"by": 1}"#)
        .await;
    assert_eq!(
        (status, &err["error"]["code"]),
        (StatusCode::BAD_REQUEST, &json!("not_an_integer"))
    );
    cluster
        .node(0)
        .set("big", Value::integer(i64::MAX), Precondition::None)
        .await
        .unwrap()
        .unwrap();
    let (status, err) = http
        .post(&format!("{}/kv/big/incr", cluster.url(1)), r#"{"by": 1}"#)
        .await;
    assert_eq!(
        (status, &err["error"]["code"]),
        (StatusCode::BAD_REQUEST, &json!("overflow"))
    );
    // Versions never repeat across a delete and re-create.
    cluster
        .node(0)
        .set("v", Value::integer(1), Precondition::None)
        .await
        .unwrap()
        .unwrap();
    cluster.node(1).delete("v").await.unwrap();
    let again = cluster
        .node(2)
        .set("v", Value::integer(2), Precondition::None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.0, 3);
    cluster.shutdown().await;
}

/// The example from the README's "Clusters in your tests", kept here so it stays true.
#[tokio::test]
async fn a_write_survives_its_primary_crashing() {
    let mut cluster = LocalCluster::builder()
        .nodes(3)
        .configure(|c| c.replicas = 3)
        .start()
        .await
        .unwrap();
    cluster
        .node(1)
        .set("user:42", Value::string("Ada"), Default::default())
        .await
        .unwrap()
        .unwrap();
    let primary = cluster.node(0).owner("user:42").0 as usize;
    cluster.stop_node(primary).await;
    let other = (primary + 1) % cluster.len();
    let entry = cluster.node(other).get("user:42").await.unwrap().unwrap();
    assert_eq!(entry.value.as_str(), Some("Ada"));
    cluster.restart_node(primary).await.unwrap();
    assert!(cluster.wait_ready(Duration::from_secs(10)).await);
    let entry = cluster.node(primary).get("user:42").await.unwrap().unwrap();
    assert_eq!(entry.value.as_str(), Some("Ada"));
    cluster.shutdown().await;
}

#[tokio::test]
async fn during_a_membership_change_a_write_needs_a_majority_of_the_old_owners_too() {
    let mut cluster = quick()
        .nodes(5)
        .configure(|c| {
            c.replicas = 3;
            c.changing_from = vec![0, 1, 2, 3];
        })
        .transport(Transport::Http)
        .start()
        .await
        .unwrap();
    // A key node 4 takes over from an old owner: new owners {x, y, 4}, old owners {x, y, z}.
    let map = cluster.node(0).map();
    let mut previous = Vec::new();
    let (key, new, old) = (0..)
        .map(|i| format!("moving{i}"))
        .find_map(|key| {
            let new = map.owners(&key, 3);
            map.previous_owners_into(key.as_bytes(), 3, &mut previous);
            let shared = new.iter().filter(|n| previous.contains(n)).count();
            (new.contains(&NodeId(4)) && shared == 2).then(|| (key, new, previous.clone()))
        })
        .unwrap();
    assert_eq!(cluster.node(0).owners(&key).len(), 4);
    let x = new.iter().copied().find(|&n| n != NodeId(4)).unwrap();
    let z = old.iter().copied().find(|n| !new.contains(n)).unwrap();
    let y = old.iter().copied().find(|&n| n != x && n != z).unwrap();
    assert!(cluster
        .node(x.0 as usize)
        .set(&key, Value::integer(1), Precondition::None)
        .await
        .unwrap()
        .is_ok());
    // With y and z down, x and 4 are a majority of the new owners but not of the old ones:
    // nothing may be acknowledged.
    cluster.stop_node(y.0 as usize).await;
    cluster.stop_node(z.0 as usize).await;
    let refused = cluster
        .node(x.0 as usize)
        .set(&key, Value::integer(2), Precondition::None)
        .await;
    assert!(
        matches!(
            refused,
            Err(kvserver::Error::QuorumUnavailable { .. } | kvserver::Error::OutcomeUnknown { .. })
        ),
        "{refused:?}"
    );
    // With both back (restarted, caught up from every peer), the write goes through.
    cluster.restart_node(y.0 as usize).await.unwrap();
    cluster.restart_node(z.0 as usize).await.unwrap();
    assert!(cluster.wait_ready(Duration::from_secs(30)).await);
    let written = cluster
        .node(x.0 as usize)
        .set(&key, Value::integer(3), Precondition::None)
        .await
        .unwrap()
        .unwrap();
    let got = cluster.node(z.0 as usize).get(&key).await.unwrap().unwrap();
    assert_eq!((got.value.as_i64(), got.version), (Some(3), written));
    cluster.shutdown().await;
}
