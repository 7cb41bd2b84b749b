//! A cluster of separate `kvserver node` processes.

use std::process::Stdio;
use std::time::Duration;

use hyper::StatusCode;
use serde_json::json;
use tokio::process::{Child, Command};

use crate::util::{poll, Http};

/// Kills the processes when the test ends, even when it fails.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.start_kill();
        }
    }
}

/// Free ports on 127.0.0.1, found by binding port 0 (released just before the nodes bind them).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

#[tokio::test]
async fn node_processes_form_a_cluster() {
    let ports = free_ports(3);
    let peers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut children = Processes(Vec::new());
    for (i, peer) in peers.iter().enumerate() {
        let child = Command::new(env!("CARGO_BIN_EXE_kvserver"))
            .args([
                "node",
                "--id",
                &i.to_string(),
                "--listen",
                peer,
                "--peers",
                &peers.join(","),
                "--replicas",
                "1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        children.0.push(child);
    }
    let http = Http::new();
    for peer in &peers {
        poll("node health", Duration::from_secs(20), || async {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Empty<bytes::Bytes>>();
            let uri = format!("http://{peer}/health").parse().unwrap();
            client
                .get(uri)
                .await
                .ok()
                .filter(|r| r.status() == StatusCode::OK)
        })
        .await;
    }
    // Seed keys are served by every process.
    for peer in &peers {
        let (status, a) = http.get(&format!("http://{peer}/get/a")).await;
        assert_eq!((status, &a["value"]), (StatusCode::OK, &json!("alpha")));
    }
    for i in 0..30 {
        let body = json!({"key": format!("p{i}"), "value": i, "encoding": "integer"}).to_string();
        let (status, answer) = http
            .post(&format!("http://{}/set", peers[i % 3]), &body)
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    for i in 0..30 {
        for peer in &peers {
            let (status, got) = http.get(&format!("http://{peer}/get/p{i}")).await;
            assert_eq!((status, &got["value"]), (StatusCode::OK, &json!(i)));
        }
    }
    let mut stored = 0;
    for peer in &peers {
        let (_, stats) = http.get(&format!("http://{peer}/stats")).await;
        stored += stats["keys"].as_u64().unwrap();
    }
    assert_eq!(stored, 32, "30 keys and 2 seed keys, each stored once");
    // SIGKILL one node: requests for its keys fail fast with 503; the others still answer.
    children.0[1].start_kill().unwrap();
    children.0[1].wait().await.unwrap();
    let (status, _) = http.get(&format!("http://{}/get/a", peers[0])).await;
    assert!(
        status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE,
        "{status}"
    );
    let mut unavailable = 0;
    for i in 0..30 {
        let (status, got) = http.get(&format!("http://{}/get/p{i}", peers[0])).await;
        match status {
            StatusCode::OK => assert_eq!(got["value"], i),
            StatusCode::SERVICE_UNAVAILABLE => unavailable += 1,
            other => panic!("{other}: {got}"),
        }
    }
    assert!(unavailable > 0 && unavailable < 30, "{unavailable}");
}

/// The cluster secret of the node processes these tests start.
const SECRET: &str = "process-tests-0123456789abcdef";

fn spawn_node(i: usize, peers: &[String], replicas: &str) -> Child {
    spawn_node_with(i, peers, &["--replicas", replicas, "--no-seed"])
}

/// Starts node `i` of `peers` as its own process, authenticated with [`SECRET`].
fn spawn_node_with(i: usize, peers: &[String], options: &[&str]) -> Child {
    let id = i.to_string();
    let all = peers.join(",");
    let mut args = vec!["node", "--id", &id, "--listen", &peers[i], "--peers", &all];
    args.extend_from_slice(options);
    Command::new(env!("CARGO_BIN_EXE_kvserver"))
        .args(args)
        .env("KV_CLUSTER_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn wait_healthy(http: &Http, peer: &str) {
    poll("node health", Duration::from_secs(30), || async {
        let health = http
            .try_call(
                hyper::Method::GET,
                &format!("http://{peer}/health"),
                None,
                &[],
            )
            .await;
        matches!(health, Ok((StatusCode::OK, _))).then_some(())
    })
    .await;
}

#[tokio::test]
async fn acknowledged_writes_survive_a_sigkilled_and_restarted_node() {
    let ports = free_ports(5);
    let peers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut children = Processes((0..5).map(|i| spawn_node(i, &peers, "3")).collect());
    let http = Http::new();
    for peer in &peers {
        wait_healthy(&http, peer).await;
    }
    // A writer keeps writing unique keys through every node in turn while node 2 is killed
    // with SIGKILL and restarted.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = {
        let (http, peers, acked) = (http.clone(), peers.clone(), acked.clone());
        tokio::spawn(async move {
            for i in 0.. {
                if *stop_rx.borrow() {
                    break;
                }
                let body =
                    json!({"key": format!("w{i}"), "value": i, "encoding": "integer"}).to_string();
                let url = format!("http://{}/set", peers[i % peers.len()]);
                let answer = http
                    .try_call(hyper::Method::POST, &url, Some(&body), &[])
                    .await;
                if let Ok((StatusCode::OK, _)) = answer {
                    acked.lock().unwrap().push(i);
                }
            }
        })
    };
    let count = || acked.lock().unwrap().len();
    let more = |n: usize, what: &'static str| {
        let target = count() + n;
        poll(what, Duration::from_secs(60), move || {
            let done = count() >= target;
            async move { done.then_some(()) }
        })
    };
    more(100, "writes before the kill").await;
    children.0[2].start_kill().unwrap();
    children.0[2].wait().await.unwrap();
    more(100, "writes while node 2 is down").await;
    children.0[2] = spawn_node(2, &peers, "3");
    wait_healthy(&http, &peers[2]).await;
    more(100, "writes after the restart").await;
    stop_tx.send(true).unwrap();
    writer.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    // Every acknowledged write is read back, through every node.
    for &i in &acked {
        for peer in &peers {
            let (status, got) = http.get(&format!("http://{peer}/get/w{i}")).await;
            assert_eq!(
                (status, &got["value"]),
                (StatusCode::OK, &json!(i)),
                "w{i} through {peer}"
            );
        }
    }
}

#[tokio::test]
async fn a_deleted_seed_key_stays_deleted_when_its_sigkilled_primary_restarts() {
    let ports = free_ports(3);
    let peers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let options = [
        "--replicas",
        "3",
        "--heartbeat-ms",
        "50",
        "--down-after-ms",
        "200",
    ];
    let mut children = Processes(
        (0..3)
            .map(|i| spawn_node_with(i, &peers, &options))
            .collect(),
    );
    let http = Http::new();
    for peer in &peers {
        wait_healthy(&http, peer).await;
    }
    // Healthy means the seed keys are there, through every node.
    for peer in &peers {
        let (status, got) = http.get(&format!("http://{peer}/get/a")).await;
        assert_eq!((status, &got["value"]), (StatusCode::OK, &json!("alpha")));
    }
    let (status, _) = http.delete(&format!("http://{}/kv/a", peers[1])).await;
    assert_eq!(status, StatusCode::OK);
    let nodes = peers
        .iter()
        .enumerate()
        .map(|(i, addr)| kvcore::NodeInfo {
            id: kvcore::NodeId(i as u32),
            addr: addr.clone(),
        })
        .collect();
    let map = kvcore::ClusterMap::new(1, nodes, kvcore::partition::default_partitioner()).unwrap();
    let primary = map.owners("a", 3)[0].0 as usize;
    children.0[primary].start_kill().unwrap();
    children.0[primary].wait().await.unwrap();
    children.0[primary] = spawn_node_with(primary, &peers, &options);
    wait_healthy(&http, &peers[primary]).await;
    for peer in &peers {
        let (status, got) = http.get(&format!("http://{peer}/get/a")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "through {peer}: {got}");
        let (status, _) = http.get(&format!("http://{peer}/get/b")).await;
        assert_eq!(status, StatusCode::OK);
    }
}
