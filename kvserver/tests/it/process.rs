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
    spawn_kvserver(&args)
}

/// Runs the `kvserver` binary with `args` and the cluster secret, its output discarded; it is
/// killed when the handle is dropped.
fn spawn_kvserver(args: &[&str]) -> Child {
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

/// Starts a node that joins the cluster through `members`, listening on `listen`.
fn spawn_joining(listen: &str, members: &[String], options: &[&str]) -> Child {
    let members = members.join(",");
    let mut args = vec!["node", "--listen", listen, "--join", &members];
    args.extend_from_slice(options);
    spawn_kvserver(&args)
}

/// Runs `kvserver admin` with the cluster secret; returns its exit code, stdout and stderr.
async fn admin(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_kvserver"))
        .arg("admin")
        .args(args)
        .env("KV_CLUSTER_SECRET", SECRET)
        .env_remove("KV_NODE")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    (
        output.status.code(),
        text(output.stdout),
        text(output.stderr),
    )
}

/// `GET /cluster` on `peer`, if it answers.
async fn cluster_view(http: &Http, peer: &str) -> Option<serde_json::Value> {
    let url = format!("http://{peer}/cluster");
    match http.try_call(hyper::Method::GET, &url, None, &[]).await {
        Ok((StatusCode::OK, view)) => Some(view),
        _ => None,
    }
}

/// Polls until every one of `peers` sees the same epoch, exactly `peers` as members, all up,
/// and no membership change running.
async fn wait_settled(http: &Http, peers: &[String], what: &str) {
    poll(what, Duration::from_secs(45), || async {
        let mut epochs = Vec::new();
        for peer in peers {
            let view = cluster_view(http, peer).await?;
            let mut addrs: Vec<&str> = view["nodes"]
                .as_array()?
                .iter()
                .filter(|n| n["state"] == "up")
                .filter_map(|n| n["addr"].as_str())
                .collect();
            addrs.sort();
            let mut expected: Vec<&str> = peers.iter().map(String::as_str).collect();
            expected.sort();
            let settled = view["rebalance"]["state"] == "idle"
                && addrs == expected
                && view["nodes"].as_array()?.len() == peers.len();
            if !settled {
                return None;
            }
            epochs.push(view["epoch"].as_u64()?);
        }
        epochs.windows(2).all(|w| w[0] == w[1]).then_some(())
    })
    .await;
}

/// The id `peer` has in the cluster, as `GET /cluster` on `through` shows it.
async fn id_of(http: &Http, through: &str, peer: &str) -> u64 {
    let view = cluster_view(http, through).await.unwrap();
    let nodes = view["nodes"].as_array().unwrap();
    let node = nodes.iter().find(|n| n["addr"] == peer);
    node.unwrap_or_else(|| panic!("{peer} not in {view}"))["id"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn node_processes_join_and_leave_while_acknowledged_writes_survive() {
    let ports = free_ports(5);
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let options = [
        "--replicas",
        "3",
        "--no-seed",
        "--heartbeat-ms",
        "100",
        "--down-after-ms",
        "600",
    ];
    let first = &addrs[..3];
    let mut children = Processes(
        (0..3)
            .map(|i| spawn_node_with(i, first, &options))
            .collect(),
    );
    let http = Http::new();
    for peer in first {
        wait_healthy(&http, peer).await;
    }

    // One writer, through the nodes in turn: every 8th write a new key, the others rewrite
    // 32 keys with ever larger values. 503 means not applied; any other failure, unknown.
    let acked = std::sync::Arc::new(crate::util::Acked::default());
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let targets = std::sync::Arc::new(std::sync::Mutex::new(first.to_vec()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = {
        let (http, acked, count, targets) =
            (http.clone(), acked.clone(), count.clone(), targets.clone());
        tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_millis(5));
            for value in 1u64.. {
                pace.tick().await;
                if *stop_rx.borrow() {
                    break;
                }
                let key = if value % 8 == 0 {
                    format!("d{value}")
                } else {
                    format!("r{}", value % 32)
                };
                let url = {
                    let targets = targets.lock().unwrap();
                    format!(
                        "http://{}/kv/{key}",
                        targets[value as usize % targets.len()]
                    )
                };
                let body = json!({"value": value, "encoding": "integer"}).to_string();
                let answer = http
                    .try_call(hyper::Method::PUT, &url, Some(&body), &[])
                    .await;
                match answer {
                    Ok((StatusCode::OK, _)) => {
                        acked.acknowledged(&key, value);
                        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok((StatusCode::SERVICE_UNAVAILABLE, _)) => {}
                    _ => acked.unknown(&key, value),
                }
            }
        })
    };
    let more = |n: usize, what: &'static str| {
        let count = count.clone();
        let target = count.load(std::sync::atomic::Ordering::Relaxed) + n;
        poll(what, Duration::from_secs(30), move || {
            let done = count.load(std::sync::atomic::Ordering::Relaxed) >= target;
            async move { done.then_some(()) }
        })
    };
    more(50, "writes before the joins").await;

    // Two nodes join at once through nodes 0 and 1: the second waits for the first's change.
    let members = [addrs[0].clone(), addrs[1].clone()];
    for addr in &addrs[3..] {
        children.0.push(spawn_joining(addr, &members, &options));
    }
    wait_settled(&http, &addrs, "five members, settled").await;
    let mut joined: Vec<u64> = Vec::new();
    for addr in &addrs[3..] {
        wait_healthy(&http, addr).await;
        joined.push(id_of(&http, &addrs[0], addr).await);
    }
    joined.sort();
    assert_eq!(joined, [3, 4], "joining nodes take the next ids");
    targets.lock().unwrap().extend(addrs[3..].iter().cloned());
    more(50, "writes through five members").await;

    // `kvserver health` is a container health check: 0 for a node that is ok.
    let health = Command::new(env!("CARGO_BIN_EXE_kvserver"))
        .args(["health", "--node", &addrs[1]])
        .output()
        .await
        .unwrap();
    assert_eq!(health.status.code(), Some(0), "{health:?}");
    // A preStop hook with --joined-only leaves a first member (by its environment) alone.
    let first = Command::new(env!("CARGO_BIN_EXE_kvserver"))
        .args(["admin", "leave", "--joined-only", "--node", &addrs[1]])
        .env("KV_CLUSTER_SECRET", SECRET)
        .env("KV_ID", "1")
        .env(
            "KV_PEERS",
            format!("{},{},{}", addrs[0], addrs[1], addrs[2]),
        )
        .output()
        .await
        .unwrap();
    assert_eq!(first.status.code(), Some(0), "{first:?}");
    assert!(String::from_utf8_lossy(&first.stdout).contains("not leaving"));

    // Node 1 leaves while alive, through `kvserver admin leave` asked of it: it hands its keys
    // over, its process exits by itself once it knows, and the command waits for that.
    targets.lock().unwrap().retain(|a| *a != addrs[1]);
    let (code, out, err) = admin(&["leave", "--node", &addrs[1]]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    // It says so once node 1 reports itself removed, or once node 1 has exited.
    assert!(
        out.contains("node 1 left the cluster") || out.contains("node 1 stopped answering"),
        "{out}"
    );
    let remaining: Vec<String> = [0, 2, 3, 4].iter().map(|&i| addrs[i].clone()).collect();
    wait_settled(&http, &remaining, "node 1 removed, settled").await;
    let exited = poll("node 1 to exit", Duration::from_secs(20), || {
        let status = children.0[1].try_wait().unwrap();
        async move { status }
    })
    .await;
    assert!(exited.success(), "a removed node exits with 0: {exited}");
    let view = cluster_view(&http, &addrs[0]).await.unwrap();
    assert_eq!(view["removed"], json!([1]), "{view}");
    more(50, "writes after node 1 left").await;

    // Node 2 is killed, seen down, then removed dead over HTTP with the bearer secret.
    targets.lock().unwrap().retain(|a| *a != addrs[2]);
    children.0[2].start_kill().unwrap();
    children.0[2].wait().await.unwrap();
    poll("node 2 seen down", Duration::from_secs(20), || async {
        let view = cluster_view(&http, &addrs[0]).await?;
        let nodes = view["nodes"].as_array()?;
        nodes
            .iter()
            .any(|n| n["id"] == 2 && n["state"] == "down")
            .then_some(())
    })
    .await;
    let remove = format!("http://{}/cluster/remove", addrs[3]);
    let (status, body) = http.post(&remove, r#"{"node": 2}"#).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::UNAUTHORIZED, &json!("unauthenticated")),
        "{body}"
    );
    let bearer = format!("Bearer {SECRET}");
    let (status, body) = http
        .call_with(
            hyper::Method::POST,
            &remove,
            Some(r#"{"node": 2}"#),
            &[("authorization", &bearer)],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (&body["node"], &body["state"]),
        (&json!(2), &json!("leaving"))
    );
    let remaining: Vec<String> = [0, 3, 4].iter().map(|&i| addrs[i].clone()).collect();
    wait_settled(&http, &remaining, "node 2 removed, settled").await;
    more(50, "writes after node 2 was removed").await;

    // `kvserver admin status`, as JSON and as a table; refusals and unreachable nodes.
    let (code, out, err) = admin(&["--node", &addrs[4], "--json", "status"]).await;
    assert_eq!(code, Some(0), "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["rebalance"]["state"], "idle", "{status}");
    let mut listed: Vec<&str> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["addr"].as_str().unwrap())
        .collect();
    listed.sort();
    let mut expected: Vec<&str> = remaining.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(listed, expected);
    let mut removed: Vec<u64> = serde_json::from_value(status["removed"].clone()).unwrap();
    removed.sort();
    assert_eq!(removed, [1, 2]);
    let (code, table, err) = admin(&["status", "--node", &addrs[0]]).await;
    assert_eq!(code, Some(0), "{err}");
    for addr in &remaining {
        assert!(
            table.contains(addr.as_str()),
            "{addr} missing from\n{table}"
        );
    }
    assert!(table.contains("rebalance: idle"), "{table}");
    let (code, _, err) = admin(&["--node", &addrs[0], "remove", "9"]).await;
    assert_eq!(code, Some(1), "a refusal exits 1: {err}");
    assert!(err.contains("not a member"), "{err}");
    let (code, _, err) = admin(&["--node", &addrs[2], "status"]).await;
    assert_eq!(code, Some(2), "an unreachable node exits 2: {err}");

    stop_tx.send(true).unwrap();
    writer.await.unwrap();
    // Every acknowledged write is read back through every remaining node.
    let keys = acked.written();
    assert!(keys.len() > 40, "{} keys written", keys.len());
    for peer in &remaining {
        for key in &keys {
            let url = format!("http://{peer}/kv/{key}");
            let (status, got) = http.get(&url).await;
            let found = match status {
                StatusCode::OK => got["value"].as_u64(),
                StatusCode::NOT_FOUND => None,
                other => panic!("GET {url}: {other} {got}"),
            };
            acked.check(key, found).unwrap();
        }
    }
}
