//! Multi-node behaviour: forwarding, placement, unreachable and slow owners.

use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use kvnet::{HttpTransport, HttpTransportConfig};
use kvserver::{Config, LocalCluster, Node, Transport};
use serde_json::json;
use tokio::net::TcpListener;

use crate::util::{poll, Http};

async fn every_key_through_every_node(transport: Transport, replicas: usize) {
    let cluster = LocalCluster::builder()
        .nodes(4)
        .configure(|c| c.replicas = replicas)
        .transport(transport)
        .start()
        .await
        .unwrap();
    let http = Http::new();
    let keys: Vec<String> = (0..64).map(|i| format!("key-{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        let body = json!({"key": key, "value": i, "encoding": "integer"}).to_string();
        let (status, set) = http
            .post(&format!("{}/set", cluster.url(i % 4)), &body)
            .await;
        assert_eq!(status, StatusCode::OK, "{set}");
    }
    for (i, key) in keys.iter().enumerate() {
        for n in 0..4 {
            let (status, got) = http.get(&format!("{}/get/{key}", cluster.url(n))).await;
            assert_eq!(status, StatusCode::OK, "{key} through node {n}: {got}");
            assert_eq!(got["value"], i, "{key} through node {n}");
        }
    }
    // Keys live only on their replicas: on all of them once the last accepts have landed, and
    // on at least a majority the moment a write is acknowledged. Every node holds some.
    let copies = |key: &str| {
        (0..4)
            .filter(|&n| cluster.node(n).store().get(key).is_some())
            .count()
    };
    for key in &keys {
        let owners = cluster.node(0).owners(key);
        let mut distinct = owners.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(
            (owners.len(), distinct.len()),
            (replicas, replicas),
            "{key}: {owners:?}"
        );
        for n in 0..4 {
            if !owners.contains(&cluster.node(n).id()) {
                assert!(
                    cluster.node(n).store().get(key).is_none(),
                    "{key} on non-replica {n}"
                );
            }
        }
        assert!(copies(key) > owners.len() / 2, "{key}");
    }
    poll("every copy", Duration::from_secs(10), || async {
        keys.iter().all(|k| copies(k) == replicas).then_some(())
    })
    .await;
    for n in 0..4 {
        assert!(
            !cluster.node(n).store().is_empty(),
            "node {n} holds none of 64 keys"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn keys_set_through_any_node_are_read_through_every_node_over_http() {
    every_key_through_every_node(Transport::Http, 1).await;
    every_key_through_every_node(Transport::Http, 3).await;
}

#[tokio::test]
async fn keys_set_through_any_node_are_read_through_every_node_in_process() {
    every_key_through_every_node(Transport::InProcess, 1).await;
    every_key_through_every_node(Transport::InProcess, 3).await;
}

#[tokio::test]
async fn an_unreachable_owner_gives_503_and_the_rest_keeps_working() {
    let mut cluster = crate::util::unreplicated(3).await;
    let http = Http::new();
    let owned_by = |n: u32| {
        let node = cluster.node(0).clone();
        (0..)
            .map(|i| format!("k{i}"))
            .find(move |k| node.owner(k).0 == n)
            .unwrap()
    };
    let (on_two, on_one) = (owned_by(2), owned_by(1));
    cluster.stop_node(2).await;
    let body = json!({"key": on_two, "value": "v"}).to_string();
    let (status, err) = http.post(&format!("{}/set", cluster.url(0)), &body).await;
    assert_eq!(
        (status, &err["error"]["code"]),
        (StatusCode::SERVICE_UNAVAILABLE, &json!("owner_unavailable"))
    );
    let (status, err) = http.get(&format!("{}/get/{on_two}", cluster.url(1))).await;
    assert_eq!(
        (status, &err["error"]["code"]),
        (StatusCode::SERVICE_UNAVAILABLE, &json!("owner_unavailable"))
    );
    // Keys owned by live nodes are unaffected.
    let body = json!({"key": on_one, "value": "v"}).to_string();
    let (status, _) = http.post(&format!("{}/set", cluster.url(0)), &body).await;
    assert_eq!(status, StatusCode::OK);
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_silent_owner_gives_504_and_writes_are_reported_as_unknown() {
    // Node 1 accepts connections but never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = Config {
        seed_keys: false,
        replicas: 1,
        forward_timeout_ms: 300,
        ..Config::new(0, vec![addr.to_string(), silent_addr.to_string()])
    };
    let transport = Arc::new(HttpTransport::new(HttpTransportConfig {
        request_timeout: config.forward_timeout(),
        ..Default::default()
    }));
    let node = Arc::new(Node::new(&config, transport).unwrap());
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| node.owner(k).0 == 1)
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(kvserver::run(listener, node, async {
        let _ = stopped.await;
    }));
    let http = Http::new();
    let body = json!({"key": key, "value": "v"}).to_string();
    let (status, err) = http.post(&format!("http://{addr}/set"), &body).await;
    assert_eq!(
        (status, &err["error"]["code"]),
        (StatusCode::GATEWAY_TIMEOUT, &json!("outcome_unknown"))
    );
    let (status, err) = http.get(&format!("http://{addr}/get/{key}")).await;
    assert_eq!(
        (status, &err["error"]["code"]),
        (StatusCode::GATEWAY_TIMEOUT, &json!("owner_timeout"))
    );
    let _ = stop.send(());
    server.await.unwrap();
    accepting.abort();
}
