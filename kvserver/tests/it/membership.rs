//! Membership changes over HTTP: nodes join, leave alive and are removed dead while clients
//! write, and nothing acknowledged is lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::{Method, StatusCode};
use kvserver::LocalCluster;
use serde_json::Value as Json;

use crate::util::{poll, Acked, Http};

/// Writes `key{w}-{i}` for i in 0..keys, over and over with growing values, through the
/// nodes in turn, until `stop`.
async fn writer(
    w: usize,
    keys: usize,
    urls: Arc<Mutex<Vec<String>>>,
    acked: Arc<Acked>,
    stop: Arc<AtomicBool>,
) -> (u64, u64) {
    let http = Http::new();
    let (mut ok, mut failed) = (0, 0);
    let mut value = 0u64;
    // A write every few milliseconds at most, so the writers leave the nodes room.
    let mut pace = tokio::time::interval(Duration::from_millis(2));
    while !stop.load(Ordering::Relaxed) {
        value += 1;
        let key = format!("w{w}-{}", value as usize % keys);
        let url = {
            let urls = urls.lock().unwrap();
            format!("{}/kv/{key}", urls[value as usize % urls.len()])
        };
        let body = format!(r#"{{"value": {value}, "encoding": "integer"}}"#);
        let answer = http.try_call(Method::PUT, &url, Some(&body), &[]).await;
        match answer {
            Ok((StatusCode::OK, _)) => {
                ok += 1;
                acked.acknowledged(&key, value);
            }
            // Refused before anything was applied: the key keeps what it had.
            Ok((StatusCode::SERVICE_UNAVAILABLE, _)) => failed += 1,
            Ok((status, body)) if status.is_client_error() => {
                panic!("PUT {url} refused: {status} {body}")
            }
            _ => {
                failed += 1;
                acked.unknown(&key, value);
            }
        }
        pace.tick().await;
    }
    (ok, failed)
}

async fn read_value(http: &Http, url: &str, key: &str) -> Result<Option<u64>, String> {
    let (status, body) = http
        .try_call(Method::GET, &format!("{url}/kv/{key}"), None, &[])
        .await?;
    match status {
        StatusCode::OK => Ok(body["value"].as_u64()),
        StatusCode::NOT_FOUND => Ok(None),
        other => Err(format!("GET {key} via {url}: {other} {body}")),
    }
}

/// Checks every written key through every url, and that each key is held by `r` stores.
async fn check_everything(cluster: &LocalCluster, acked: &Acked, members: &[usize], r: usize) {
    let http = Http::new();
    let keys = acked.written();
    for &i in members {
        let url = cluster.url(i);
        for key in &keys {
            let found = read_value(&http, &url, key).await.unwrap();
            acked.check(key, found).unwrap();
        }
    }
    for key in &keys {
        let holders = members
            .iter()
            .filter(|&&i| cluster.node(i).store().get(key).is_some())
            .count();
        assert_eq!(holders, r, "{key} is held by {holders} nodes");
    }
}

async fn cluster_json(url: &str) -> Json {
    let (status, body) = Http::new().get(&format!("{url}/cluster")).await;
    assert_eq!(status, StatusCode::OK);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_leave_and_are_removed_dead_while_clients_write() {
    let mut cluster = LocalCluster::builder()
        .nodes(3)
        .configure(|c| {
            c.replicas = 3;
            c.heartbeat_ms = 50;
            c.down_after_ms = 500;
        })
        .start()
        .await
        .unwrap();
    let urls = Arc::new(Mutex::new((0..3).map(|i| cluster.url(i)).collect()));
    let acked = Arc::new(Acked::default());
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| tokio::spawn(writer(w, 50, urls.clone(), acked.clone(), stop.clone())))
        .collect();
    poll(
        "writes before the join",
        Duration::from_secs(10),
        || async { (acked.written().len() >= 150).then_some(()) },
    )
    .await;

    // A fourth node joins: it gets id 3 and the keys it now owns, while the writers go on.
    let joined = cluster.join_node().await.unwrap();
    assert_eq!(joined, 3);
    assert!(cluster.wait_settled(Duration::from_secs(30)).await);
    urls.lock().unwrap().push(cluster.url(3));
    let view = cluster_json(&cluster.url(0)).await;
    assert_eq!(view["nodes"].as_array().unwrap().len(), 4, "{view}");
    assert_eq!(view["rebalance"]["state"], "idle", "{view}");
    assert!(
        view["rebalance"]["moved_keys"].as_u64().unwrap() > 0,
        "{view}"
    );
    assert!(
        cluster.node(3).store().len() > 20,
        "the new node holds keys: {} {:?}",
        cluster.node(3).store().len(),
        cluster.node(3).metrics().snapshot()
    );

    // Node 1 leaves while alive: it hands its keys over, then knows it was removed.
    urls.lock().unwrap().retain(|u| *u != cluster.url(1));
    let record = cluster.remove_node(1, false).await.unwrap();
    assert!(record.map.departing.iter().any(|n| n.id.0 == 1));
    assert!(cluster.wait_settled(Duration::from_secs(30)).await);
    poll(
        "node 1 to know it was removed",
        Duration::from_secs(10),
        || async { cluster.node(1).is_removed().then_some(()) },
    )
    .await;
    let (status, health) = Http::new().get(&format!("{}/health", cluster.url(1))).await;
    assert_eq!(
        (status, health["status"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("removed"))
    );

    // Node 2 crashes and is removed while dead: its keys are copied from the survivors.
    urls.lock().unwrap().retain(|u| *u != cluster.url(2));
    cluster.stop_node(2).await;
    poll("node 2 seen down", Duration::from_secs(10), || async {
        (cluster.node(0).peer_state(kvcore::NodeId(2)) == kvserver::PeerState::Down).then_some(())
    })
    .await;
    cluster.remove_node(2, false).await.unwrap();
    assert!(cluster.wait_settled(Duration::from_secs(30)).await);

    stop.store(true, Ordering::Relaxed);
    let mut ok = 0;
    for w in writers {
        ok += w.await.unwrap().0;
    }
    assert!(ok > 100, "only {ok} writes acknowledged");
    let view = cluster_json(&cluster.url(3)).await;
    let ids: Vec<u64> = view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [0, 3], "{view}");
    assert_eq!(view["removed"], serde_json::json!([1, 2]), "{view}");
    check_everything(&cluster, &acked, &[0, 3], 2).await;
    cluster.shutdown().await;
}
