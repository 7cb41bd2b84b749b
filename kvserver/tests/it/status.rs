//! The status page (`GET /`) and the overview it reads (`GET /cluster/overview`): every node's
//! own figures as the serving node gathers them, and nodes that cannot be asked.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kvnet::wire::Incoming as Frame;
use kvnet::{BoxFuture, FrameError, FrameHandler, HttpTransport, HttpTransportConfig, Kind};
use kvserver::status::ASK_TIMEOUT;
use kvserver::{Config, LocalCluster, Node};
use serde_json::{json, Value as Json};
use tokio::net::TcpListener;

use crate::util::{poll, Http};

/// How long an overview may take however many nodes are silent: one ask's timeout, plus room
/// for a slow machine.
const OVERVIEW_BOUND: Duration = Duration::from_secs(4);

async fn overview(http: &Http, url: &str) -> Json {
    let started = Instant::now();
    let (status, body) = http.get(&format!("{url}/cluster/overview")).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(took < OVERVIEW_BOUND, "the overview took {took:?}");
    body
}

/// An overview with every node's figures (on a loaded machine one may miss its second).
async fn complete_overview(http: &Http, url: &str) -> Json {
    poll(
        "an overview with every node's figures",
        Duration::from_secs(10),
        || async {
            let seen = overview(http, url).await;
            (seen["unavailable"] == json!([])).then_some(seen)
        },
    )
    .await
}

fn node(overview: &Json, id: u64) -> &Json {
    overview["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == id)
        .unwrap_or_else(|| panic!("node {id} is not in {overview}"))
}

#[tokio::test]
async fn the_overview_lists_every_node_with_the_figures_it_reports_itself() {
    let cluster = LocalCluster::builder()
        .nodes(3)
        .configure(|c| {
            c.replicas = 1;
            c.max_memory = Some(32 << 20);
        })
        .start()
        .await
        .unwrap();
    let http = Http::new();
    for i in 0..30 {
        let body = json!({"key": format!("k{i}"), "value": "v".repeat(i)}).to_string();
        let (status, answer) = http
            .post(&format!("{}/set", cluster.url(i % 3)), &body)
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    // Each node up, with its figures as its own /stats has them, once they have settled.
    let own = poll(
        "each node's figures in the overview",
        Duration::from_secs(10),
        || async {
            let seen = overview(&http, &cluster.url(0)).await;
            let mut stats = Vec::new();
            for i in 0..3 {
                let (_, s) = http.get(&format!("{}/stats", cluster.url(i))).await;
                let f = &node(&seen, i as u64)["figures"];
                // Seen up: right after the start a peer may still be recovering as last heard.
                let same = node(&seen, i as u64)["state"] == "up"
                    && f["keys"] == s["keys"]
                    && f["bytes"] == s["bytes"]
                    && f["max_memory"] == s["max_memory"]
                    && f["under_replicated"] == s["under_replicated"];
                if !same {
                    return None;
                }
                stats.push(s);
            }
            Some((seen, stats))
        },
    )
    .await;
    let (seen, stats) = own;
    assert_eq!(
        stats
            .iter()
            .map(|s| s["keys"].as_u64().unwrap())
            .sum::<u64>(),
        30,
        "one copy of each key"
    );
    assert_eq!(seen["node"], 0);
    assert_eq!(seen["epoch"], cluster.node(0).map().epoch());
    assert_eq!(seen["replication_factor"], 1);
    assert_eq!(seen["unavailable"], json!([]));
    assert_eq!(seen["under_replicated"], 0);
    assert_eq!(seen["rebalance"]["state"], "idle");
    assert_eq!(seen["nodes"].as_array().unwrap().len(), 3);
    for i in 0..3 {
        let n = node(&seen, i);
        assert_eq!(n["addr"], cluster.addr(i as usize).to_string());
        assert_eq!(n["state"], "up");
        assert_eq!(n["serving"], i == 0);
        assert_eq!(n["error"], Json::Null);
        let f = &n["figures"];
        assert_eq!(f["max_memory"], 32 << 20);
        assert_eq!(f["ready"], true);
        assert_eq!(f["epoch"], seen["epoch"]);
        assert_eq!(f["incarnation"], cluster.node(i as usize).incarnation());
    }

    // Counters are totals since each node started: reads served by node 1 count there only.
    let before = complete_overview(&http, &cluster.url(2)).await;
    for i in 0..5 {
        let (status, _) = http.get(&format!("{}/get/k{i}", cluster.url(1))).await;
        assert_eq!(status, StatusCode::OK);
    }
    // An overview asked for after the reads is built after them.
    let after = complete_overview(&http, &cluster.url(2)).await;
    let grown = |id: u64, field: &str| {
        let at = |o: &Json| node(o, id)["figures"]["requests"][field].as_u64().unwrap();
        at(&after) - at(&before)
    };
    let total = |o: &Json, id: u64| node(o, id)["figures"]["operations_total"].as_u64().unwrap();
    assert_eq!(
        (grown(1, "reads"), grown(0, "reads"), grown(2, "reads")),
        (5, 0, 0)
    );
    assert_eq!(total(&after, 1) - total(&before, 1), 5);
    assert_eq!(node(&after, 2)["serving"], true);
    cluster.shutdown().await;
}

/// How many status requests `node` has received from its peers, as its `/metrics` count them.
fn status_requests_received(node: &Node) -> u64 {
    kvserver::exposition::render(node)
        .lines()
        .find(|l| l.starts_with("kv_peer_messages_received_total{kind=\"FetchStatus\"}"))
        .map_or(0, |l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

#[tokio::test]
async fn overviews_asked_together_share_one_round_of_status_requests() {
    let cluster = LocalCluster::builder().nodes(3).start().await.unwrap();
    let http = Http::new();
    let before = status_requests_received(cluster.node(1));
    let url = cluster.url(0);
    let asks = (0..10).map(|_| overview(&http, &url));
    let seen = futures_util::future::join_all(asks).await;
    let after = status_requests_received(cluster.node(1));
    // Ten at once share one build (two if some come as the first ends), not ten.
    assert!(after - before <= 2, "{} status requests", after - before);
    assert!(after > before);
    assert!(seen
        .iter()
        .all(|o| o["nodes"].as_array().unwrap().len() == 3));
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_stopped_node_is_shown_down_and_unavailable_without_failing_the_overview() {
    let mut cluster = LocalCluster::builder().nodes(3).start().await.unwrap();
    let http = Http::new();
    cluster.stop_node(2).await;
    // At once, before the failure detector has noticed: the overview still answers in time.
    let first = overview(&http, &cluster.url(0)).await;
    assert_eq!(node(&first, 2)["figures"], Json::Null, "{first}");
    assert_eq!(first["unavailable"], json!([2]));
    let seen = poll("node 2 shown down", Duration::from_secs(10), || async {
        let seen = overview(&http, &cluster.url(1)).await;
        (node(&seen, 2)["state"] == "down").then_some(seen)
    })
    .await;
    let down = node(&seen, 2);
    assert_eq!(down["addr"], cluster.addr(2).to_string());
    assert_eq!(down["figures"], Json::Null);
    assert!(
        down["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{down}"
    );
    assert_eq!(seen["unavailable"], json!([2]));
    for i in 0..2 {
        assert_eq!(node(&seen, i)["state"], "up");
        assert!(node(&seen, i)["figures"]["keys"].is_u64(), "{seen}");
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_joined_node_is_listed_with_its_figures_and_a_removed_one_in_removed() {
    let mut cluster = LocalCluster::builder()
        .nodes(3)
        .configure(|c| c.replicas = 2)
        .start()
        .await
        .unwrap();
    let http = Http::new();
    for i in 0..40 {
        let body = json!({"key": format!("m{i}"), "value": format!("v{i}")}).to_string();
        let (status, answer) = http.post(&format!("{}/set", cluster.url(0)), &body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    assert_eq!(cluster.join_node().await.unwrap(), 3);
    assert!(cluster.wait_settled(Duration::from_secs(30)).await);
    let seen = poll(
        "node 3 listed up with keys",
        Duration::from_secs(10),
        || async {
            let seen = overview(&http, &cluster.url(0)).await;
            let new = seen["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["id"] == 3)?;
            let keys = new["figures"]["keys"].as_u64()?;
            (new["state"] == "up" && keys > 0).then_some(seen)
        },
    )
    .await;
    assert_eq!(node(&seen, 3)["addr"], cluster.addr(3).to_string());
    assert_eq!(seen["rebalance"]["state"], "idle", "{seen}");
    assert!(
        seen["rebalance"]["moved_keys"].as_u64().unwrap() > 0,
        "{seen}"
    );

    cluster.remove_node(1, false).await.unwrap();
    assert!(cluster.wait_settled(Duration::from_secs(30)).await);
    let seen = poll(
        "node 1 out of the table",
        Duration::from_secs(10),
        || async {
            let seen = overview(&http, &cluster.url(0)).await;
            (seen["removed"] == json!([1])).then_some(seen)
        },
    )
    .await;
    let listed: Vec<&Json> = seen["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| &n["id"])
        .collect();
    assert_eq!(listed, [&json!(0), &json!(2), &json!(3)], "{seen}");
    assert_eq!(seen["unavailable"], json!([]));
    cluster.shutdown().await;
}

/// The peer endpoint of a node of an older build, which does not know the kind of a
/// `FetchStatus`: the frame is refused as `Incoming::parse` refuses an unknown kind, served by
/// kvnet's own server half, so the asker gets exactly the answer such a node gives.
struct OlderBuild;

impl FrameHandler for OlderBuild {
    fn handle_frame(&self, frame: Bytes) -> BoxFuture<'_, Result<Bytes, FrameError>> {
        Box::pin(async move {
            let kind = Frame::parse(&frame)?.kind;
            assert_eq!(kind, Kind::FetchStatus, "the test sends nothing else");
            Err(FrameError::Malformed {
                reason: format!("unknown message kind {}", kind as u8),
            })
        })
    }
}

async fn serve_older_build(listener: TcpListener) {
    let handler = Arc::new(OlderBuild);
    while let Ok((stream, _)) = listener.accept().await {
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let handler = handler.clone();
                async move {
                    let config = kvnet::ServeConfig {
                        max_frame_bytes: 1 << 20,
                        body_timeout: Duration::from_secs(5),
                        secret: None,
                    };
                    Ok::<_, std::convert::Infallible>(
                        kvnet::http::serve(&*handler, req, &config).await,
                    )
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[tokio::test]
async fn a_silent_node_and_a_node_of_an_older_build_are_shown_unavailable_in_time() {
    // Node 1 accepts connections and never answers; node 2 refuses the kind it does not know.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let holding = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let older = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let older_addr = older.local_addr().unwrap();
    let older_task = tokio::spawn(serve_older_build(older));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = Config {
        seed_keys: false,
        // Longer than the overview waits for one node: the overview's own timeout must apply.
        forward_timeout_ms: 10_000,
        ..Config::new(
            0,
            vec![
                addr.to_string(),
                silent_addr.to_string(),
                older_addr.to_string(),
            ],
        )
    };
    let transport = Arc::new(HttpTransport::new(HttpTransportConfig {
        request_timeout: config.forward_timeout(),
        ..Default::default()
    }));
    let serving = Arc::new(Node::new(&config, transport).unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(kvserver::run(listener, serving, async {
        let _ = stopped.await;
    }));
    let http = Http::new();
    let started = Instant::now();
    let seen = overview(&http, &format!("http://{addr}")).await;
    assert!(
        started.elapsed() >= ASK_TIMEOUT,
        "answered before the silent node's timeout"
    );
    assert_eq!(seen["unavailable"], json!([1, 2]));
    assert!(node(&seen, 0)["figures"]["keys"].is_u64(), "{seen}");
    let quiet = node(&seen, 1);
    assert_eq!(quiet["figures"], Json::Null);
    assert_eq!(quiet["addr"], silent_addr.to_string());
    assert!(
        quiet["error"]
            .as_str()
            .unwrap()
            .contains("no answer within"),
        "{quiet}"
    );
    let old = node(&seen, 2);
    assert_eq!(old["figures"], Json::Null);
    let error = old["error"].as_str().unwrap();
    assert!(
        error.contains("invalid_request")
            && error.contains(&format!("unknown message kind {}", Kind::FetchStatus as u8)),
        "{old}"
    );
    let _ = stop.send(());
    server.await.unwrap();
    holding.abort();
    older_task.abort();
}

#[tokio::test]
async fn the_status_page_is_one_html_document_that_reads_the_overview() {
    let cluster = LocalCluster::builder().nodes(1).start().await.unwrap();
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let request = Request::get(format!("{}/", cluster.url(0)))
        .body(Full::default())
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(
        header("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    let policy = header("content-security-policy").unwrap();
    assert!(
        policy.contains("default-src 'none'") && policy.contains("connect-src 'self'"),
        "{policy}"
    );
    // Only the page's own script runs: by its hash, not any inline script.
    assert!(policy.contains("script-src 'sha256-"), "{policy}");
    assert!(policy.contains("style-src 'sha256-"), "{policy}");
    assert!(!policy.contains("'unsafe-inline'"), "{policy}");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let page = std::str::from_utf8(&body).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(
        page.contains(r#"fetch("cluster/overview""#),
        "reads the overview, relatively"
    );
    // Self-contained: nothing is loaded from anywhere else, and no data is parsed as HTML.
    for outside in [
        "http://",
        "https://",
        "<link",
        "src=",
        "@import",
        "innerHTML",
    ] {
        assert!(!page.contains(outside), "the page contains {outside:?}");
    }
    // Only GET; every other answer stays JSON.
    let http = Http::new();
    let (status, error) = http.post(&format!("{}/", cluster.url(0)), "{}").await;
    assert_eq!(
        (status, &error["error"]["code"]),
        (StatusCode::METHOD_NOT_ALLOWED, &json!("method_not_allowed"))
    );
    let (status, error) = http
        .call(
            Method::DELETE,
            &format!("{}/cluster/overview", cluster.url(0)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{error}");
    let (status, _) = http.get(&format!("{}/cluster", cluster.url(0))).await;
    assert_eq!(status, StatusCode::OK);
    cluster.shutdown().await;
}
