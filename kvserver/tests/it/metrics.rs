//! `GET /metrics` (read with a strict parser of the Prometheus text format) and request ids:
//! echoed to clients, and followed through the JSON logs of node processes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use kvserver::LocalCluster;
use serde_json::{json, Value as Json};
use tokio::process::{Child, Command};

use crate::util::poll;

/// One HTTP exchange, the body kept as text and the headers as they came.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn request_id(&self) -> &str {
        self.headers
            .get("x-request-id")
            .expect("every answer has an x-request-id")
            .to_str()
            .unwrap()
    }
}

async fn exchange(
    method: Method,
    url: &str,
    body: Option<&str>,
    headers: &[(&str, &[u8])],
) -> Answer {
    try_exchange(method, url, body, headers)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// [`exchange`], a connection failure an `Err`.
async fn try_exchange(
    method: Method,
    url: &str,
    body: Option<&str>,
    headers: &[(&str, &[u8])],
) -> Result<Answer, hyper_util::client::legacy::Error> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut req = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let body = Full::new(Bytes::from(body.unwrap_or("").to_owned()));
    let response = client.request(req.body(body).unwrap()).await?;
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Ok(Answer {
        status,
        headers,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    })
}

async fn get(url: &str) -> Answer {
    exchange(Method::GET, url, None, &[]).await
}

/// A sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape, parsed.
#[derive(Debug)]
struct Scrape {
    /// Family name to type.
    types: HashMap<String, String>,
    samples: Vec<Sample>,
}

impl Scrape {
    /// The value of the one sample named `name` whose labels include `labels`, or 0 if none is.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let matching: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(matching.len() <= 1, "{name} {labels:?}: {matching:?}");
        matching.first().map_or(0.0, |s| s.value)
    }

    fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Reads `{a="x",b="y"}` (escapes `\\`, `\"`, `\n`) from the start of `text`; returns the labels
/// and the rest.
fn parse_labels(text: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = text.strip_prefix('{').ok_or("expected {")?;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (name, after) = rest.split_once("=\"").ok_or("expected name=\"")?;
        if !is_metric_name(name) || name.contains(':') {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    other => return Err(format!("bad escape \\{other}")),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text.parse().map_err(|_| format!("bad value {text:?}")),
    }
}

/// Parses the Prometheus text format (0.0.4) strictly: every sample belongs to a family with one
/// HELP and one TYPE line given before it, each family's lines are together, names and labels
/// are well formed, a histogram's buckets are cumulative and end at `+Inf` = `_count`, and no
/// series appears twice.
fn parse(text: &str) -> Result<Scrape, String> {
    let mut helps = HashSet::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut done: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut samples = Vec::new();
    let mut series = HashSet::new();
    if !text.ends_with('\n') {
        return Err("the text does not end with a newline".into());
    }
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let (keyword, rest) = comment.split_once(' ').ok_or(line)?;
            let (name, detail) = rest.split_once(' ').ok_or(line)?;
            if !is_metric_name(name) {
                return Err(format!("bad name in {line:?}"));
            }
            if current.as_deref() != Some(name) {
                if let Some(previous) = current.take() {
                    done.insert(previous);
                }
                if done.contains(name) {
                    return Err(format!("family {name} is split"));
                }
                current = Some(name.to_owned());
            }
            match keyword {
                "HELP" if detail.trim().is_empty() => return Err(format!("empty HELP: {line}")),
                "HELP" if !helps.insert(name.to_owned()) => {
                    return Err(format!("HELP twice: {line}"))
                }
                "HELP" => {}
                "TYPE" => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&detail) {
                        return Err(format!("bad type: {line}"));
                    }
                    if types.insert(name.to_owned(), detail.to_owned()).is_some() {
                        return Err(format!("TYPE twice: {line}"));
                    }
                }
                _ => return Err(format!("unknown comment {line:?}")),
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            return Err(format!("unexpected line {line:?}"));
        }
        let name_end = line.find(['{', ' ']).ok_or(line)?;
        let name = &line[..name_end];
        let (labels, rest) = match line[name_end..].starts_with('{') {
            true => parse_labels(&line[name_end..])?,
            false => (BTreeMap::new(), &line[name_end..]),
        };
        let value = parse_value(rest.strip_prefix(' ').ok_or(line)?)?;
        let family = current
            .clone()
            .ok_or(format!("sample before HELP/TYPE: {line}"))?;
        let kind = types.get(&family).ok_or(format!("no TYPE for {line}"))?;
        if !helps.contains(&family) {
            return Err(format!("no HELP for {line}"));
        }
        let allowed = match kind.as_str() {
            "histogram" => vec![
                format!("{family}_bucket"),
                format!("{family}_sum"),
                format!("{family}_count"),
            ],
            _ => vec![family.clone()],
        };
        if !allowed.contains(&name.to_owned()) {
            return Err(format!("{name} does not belong to {kind} {family}"));
        }
        if kind == "counter" && !name.ends_with("_total") {
            return Err(format!("counter {name} does not end in _total"));
        }
        if !series.insert(format!("{name}{labels:?}")) {
            return Err(format!("series twice: {line}"));
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    check_histograms(&types, &samples)?;
    Ok(Scrape { types, samples })
}

/// Buckets of each histogram series rise with `le` and end at `+Inf`, equal to `_count`.
fn check_histograms(types: &HashMap<String, String>, samples: &[Sample]) -> Result<(), String> {
    for (family, _) in types.iter().filter(|(_, t)| *t == "histogram") {
        // Per series (its labels but `le`): its buckets as (le, count).
        let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for s in samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
        {
            let mut labels = s.labels.clone();
            let le = parse_value(&labels.remove("le").ok_or("bucket without le")?)?;
            let series = format!("{labels:?}");
            buckets.entry(series).or_default().push((le, s.value));
        }
        for (series, mut bs) in buckets {
            bs.sort_by(|a, b| a.0.total_cmp(&b.0));
            if !bs.windows(2).all(|w| w[0].1 <= w[1].1) {
                return Err(format!("{family} {series}: buckets not cumulative"));
            }
            let count = samples
                .iter()
                .find(|s| {
                    s.name == format!("{family}_count") && format!("{:?}", s.labels) == series
                })
                .ok_or(format!("{family} {series}: no _count"))?;
            if bs.last() != Some(&(f64::INFINITY, count.value)) {
                return Err(format!("{family} {series}: +Inf bucket is not _count"));
            }
        }
    }
    Ok(())
}

async fn scrape(base: &str) -> Scrape {
    let answer = get(&format!("{base}/metrics")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(
        answer.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    parse(&answer.body).unwrap_or_else(|e| panic!("{e}\n{}", answer.body))
}

#[test]
fn the_parser_refuses_what_prometheus_would() {
    let ok = "# HELP a_total An a.\n# TYPE a_total counter\na_total{x=\"1\"} 2\n";
    assert!(parse(ok).is_ok());
    for bad in [
        "a_total 2\n",
        "# TYPE a_total counter\na_total 2\n",
        "# HELP a_total An a.\na_total 2\n",
        "# HELP a An a.\n# TYPE a counter\na 2\n",
        "# HELP a_total An a.\n# TYPE a_total counter\na_total{x=\"1} 2\n",
        "# HELP a_total An a.\n# TYPE a_total counter\na_total 2\na_total 3\n",
        "# HELP a_total An a.\n# TYPE a_total counter\na_total two\n",
        "# HELP g G.\n# TYPE g gauge\ng 1\n# HELP h H.\n# TYPE h gauge\nh 1\n# HELP g G.\n",
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 0\n",
        "# HELP a_total An a.\n# TYPE a_total counter\na_total 2",
    ] {
        assert!(parse(bad).is_err(), "{bad}");
    }
}

#[tokio::test]
async fn metrics_count_requests_by_endpoint_method_and_status_class() {
    let cluster = crate::util::unreplicated(3).await;
    let base = cluster.url(0);
    let node = cluster.node(0);
    // A key this node owns, and one another node owns; their names must never show up.
    let key = |local: bool| {
        (0..)
            .map(|i| format!("label-check-{i}"))
            .find(|k| (node.owner(k) == node.id()) == local)
            .unwrap()
    };
    let (here, there) = (key(true), key(false));
    for k in [&here, &there] {
        let body = json!({"key": k, "value": "v"}).to_string();
        let set = exchange(Method::POST, &format!("{base}/set"), Some(&body), &[]).await;
        assert_eq!(set.status, StatusCode::OK, "{}", set.body);
    }

    let before = scrape(&base).await;
    for _ in 0..3 {
        assert_eq!(
            get(&format!("{base}/get/{here}")).await.status,
            StatusCode::OK
        );
    }
    let missing = get(&format!("{base}/get/label-check-missing")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        get(&format!("{base}/get/{there}")).await.status,
        StatusCode::OK
    );
    let after = scrape(&base).await;

    let requests = |s: &Scrape, status: &str| {
        s.value(
            "kv_client_requests_total",
            &[("endpoint", "get"), ("method", "GET"), ("status", status)],
        )
    };
    assert_eq!(requests(&after, "2xx") - requests(&before, "2xx"), 4.0);
    assert_eq!(requests(&after, "4xx") - requests(&before, "4xx"), 1.0);
    let latencies = |s: &Scrape| {
        s.value(
            "kv_client_request_duration_seconds_count",
            &[("endpoint", "get")],
        )
    };
    assert_eq!(latencies(&after) - latencies(&before), 5.0);
    let forwarded = |s: &Scrape| s.value("kv_forwarded_requests_total", &[]);
    assert!(
        forwarded(&after) > forwarded(&before),
        "the read of {there} was forwarded"
    );
    // The forwarded read reached its owner as a peer message, timed here by kind.
    let owner = node.owner(&there);
    let owner_base = cluster.url(owner.0 as usize);
    let received = scrape(&owner_base).await;
    assert!(received.value("kv_peer_messages_received_total", &[("kind", "Get")]) >= 1.0);
    assert!(after.value("kv_peer_call_duration_seconds_count", &[("kind", "Get")]) >= 1.0);

    // The store's gauges say what /stats says.
    let stats: Json = serde_json::from_str(&get(&format!("{base}/stats")).await.body).unwrap();
    let now = scrape(&base).await;
    assert_eq!(now.value("kv_keys", &[]), stats["keys"].as_f64().unwrap());
    assert_eq!(
        now.value("kv_stored_bytes", &[]),
        stats["bytes"].as_f64().unwrap()
    );
    assert!(!now.has("kv_max_memory_bytes"), "no budget, no figure");
    assert_eq!(
        now.value("kv_consensus_rounds_total", &[]),
        stats["requests"]["rounds"].as_f64().unwrap()
    );
    assert!(now.value("kv_open_connections", &[]) >= 1.0);
    assert!(now.value("kv_process_resident_memory_bytes", &[]) > 1e6);
    // Every node up, once this node's detector has heard from each since they caught up.
    poll("every node up", Duration::from_secs(10), || async {
        let s = scrape(&base).await;
        (0..cluster.len())
            .all(|i| {
                let id = i.to_string();
                s.value("kv_node_state", &[("node", &id), ("state", "up")]) == 1.0
            })
            .then_some(())
    })
    .await;
    let text = get(&format!("{base}/metrics")).await.body;
    assert!(
        !text.contains("label-check"),
        "a key became a label:\n{text}"
    );
    for family in [
        "kv_client_requests_total",
        "kv_client_request_duration_seconds",
        "kv_peer_call_duration_seconds",
        "kv_node_state",
        "kv_under_replicated_keys",
        "kv_rebalance_running",
        "kv_rebalance_remaining_keys",
        "kv_evictions_total",
        "kv_expired_keys_total",
        "kv_start_time_seconds",
    ] {
        assert!(now.types.contains_key(family), "{family} missing");
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_node_with_a_budget_reports_it() {
    let cluster = LocalCluster::builder()
        .nodes(1)
        .configure(|c| c.max_memory = Some(64 << 20))
        .start()
        .await
        .unwrap();
    let now = scrape(&cluster.url(0)).await;
    assert_eq!(now.value("kv_max_memory_bytes", &[]), (64 << 20) as f64);
    cluster.shutdown().await;
}

#[tokio::test]
async fn metrics_show_a_stopped_node_as_down() {
    let mut cluster = LocalCluster::builder().nodes(3).start().await.unwrap();
    let base = cluster.url(0);
    let gone = cluster.node(2).id().0.to_string();
    cluster.stop_node(2).await;
    poll(
        "node 2 down in node 0's metrics",
        Duration::from_secs(20),
        || async {
            let s = scrape(&base).await;
            let down = s.value("kv_node_state", &[("node", &gone), ("state", "down")]);
            (down == 1.0).then_some(s)
        },
    )
    .await
    .samples
    .iter()
    .filter(|s| s.name == "kv_node_state" && s.labels["node"] == gone)
    .for_each(|s| {
        let expected = if s.labels["state"] == "down" {
            1.0
        } else {
            0.0
        };
        assert_eq!(s.value, expected, "{s:?}");
    });
    cluster.shutdown().await;
}

fn is_hex_id(id: &str) -> bool {
    id.len() == 16
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[tokio::test]
async fn request_ids_are_echoed_whether_given_or_generated() {
    let cluster = LocalCluster::builder().nodes(1).start().await.unwrap();
    let base = cluster.url(0);
    let url = format!("{base}/get/a");
    let set = format!("{base}/set");
    let body = json!({"key": "a", "value": "alpha"}).to_string();
    assert_eq!(
        exchange(Method::POST, &set, Some(&body), &[]).await.status,
        StatusCode::OK
    );
    for given in [&b"00000000deadbeef"[..], b"7", b"client-trace/42 x"] {
        let answer = exchange(Method::GET, &url, None, &[("x-request-id", given)]).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.request_id().as_bytes(), given);
    }
    // Errors carry it too.
    let missing = format!("{base}/get/nothing-here");
    let answer = exchange(Method::GET, &missing, None, &[("x-request-id", b"abc")]).await;
    assert_eq!(
        (answer.status, answer.request_id()),
        (StatusCode::NOT_FOUND, "abc")
    );
    // Generated: 16 hex digits, a new one each time.
    let mut seen = HashSet::new();
    for path in ["/get/a", "/get/nothing-here", "/nowhere", "/metrics"] {
        for _ in 0..5 {
            let answer = get(&format!("{base}{path}")).await;
            let id = answer.request_id().to_owned();
            assert!(is_hex_id(&id), "{id}");
            assert!(seen.insert(id), "ids repeat");
        }
    }
    // Too long or not printable: refused with a JSON error, under a generated id.
    let long = [b'a'; 129];
    for bad in [&long[..], b"caf\xc3\xa9"] {
        let answer = exchange(Method::GET, &url, None, &[("x-request-id", bad)]).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        let body: Json = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(body["error"]["code"], "invalid_request", "{body}");
        assert!(is_hex_id(answer.request_id()));
    }
    cluster.shutdown().await;
}

/// Kills the processes when the test ends, even when it fails.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.start_kill();
        }
    }
}

#[tokio::test]
async fn a_request_id_reaches_the_json_logs_of_every_node_it_touches() {
    let listeners: Vec<_> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let peers: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    drop(listeners);
    let dir = std::env::temp_dir().join(format!("kv-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = |i: usize| dir.join(format!("node-{i}.log"));
    let mut children = Processes(Vec::new());
    for (i, listen) in peers.iter().enumerate() {
        let file = std::fs::File::create(log(i)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kvserver"))
            .args(["node", "--id", &i.to_string(), "--listen", listen])
            .args(["--peers", &peers.join(","), "--replicas", "3"])
            .args(["--log-format", "json"])
            .env("RUST_LOG", "info,kvserver=debug")
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        children.0.push(child);
    }
    for peer in &peers {
        poll("node health", Duration::from_secs(30), || async {
            let url = format!("http://{peer}/health");
            let health = try_exchange(Method::GET, &url, None, &[]).await;
            health.ok().filter(|h| h.status == StatusCode::OK)
        })
        .await;
    }
    let id = "00000000deadbeef";
    let body = json!({"key": "traced", "value": 1, "encoding": "integer"}).to_string();
    let url = format!("http://{}/set", peers[0]);
    let answer = exchange(
        Method::POST,
        &url,
        Some(&body),
        &[("x-request-id", id.as_bytes())],
    )
    .await;
    assert_eq!((answer.status, answer.request_id()), (StatusCode::OK, id));

    // The lines of node `i` that carry the id (one still being written is read again later; the
    // last check below reads every line, once the nodes have stopped).
    let traced = |i: usize| -> Vec<Json> {
        std::fs::read_to_string(log(i))
            .unwrap()
            .lines()
            .filter(|l| l.contains(id))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let access = poll("node 0's access line", Duration::from_secs(10), || async {
        traced(0)
            .into_iter()
            .find(|l| l["fields"]["message"] == "request answered")
    })
    .await;
    assert_eq!(access["fields"]["endpoint"], "set");
    assert_eq!(access["fields"]["status"], 200);
    assert_eq!(access["spans"][0]["request_id"], id);
    // A write needs a majority of the three replicas, so at least one other node handled a
    // message of this request; every node that did logged it in a span with the id.
    let others = poll(
        "the id in another node's log",
        Duration::from_secs(10),
        || async {
            let lines: Vec<Json> = (1..3).flat_map(traced).collect();
            (!lines.is_empty()).then_some(lines)
        },
    )
    .await;
    for line in &others {
        let span = &line["spans"][0];
        assert_eq!(
            (&span["name"], &span["request_id"]),
            (&json!("peer"), &json!(id))
        );
        assert!(
            span["kind"].is_string() && span["from"].is_string(),
            "{line}"
        );
    }
    // A scan asks every node for a page: each logs the scan's id.
    let scan_id = "0000000000005ca7";
    let url = format!("http://{}/keys", peers[0]);
    let answer = exchange(
        Method::GET,
        &url,
        None,
        &[("x-request-id", scan_id.as_bytes())],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    for i in 1..3 {
        poll(
            "the scan's id in every node's log",
            Duration::from_secs(10),
            || async {
                std::fs::read_to_string(log(i))
                    .unwrap()
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Json>(l).ok())
                    .find(|l| {
                        let span = &l["spans"][0];
                        span["request_id"] == scan_id && span["kind"] == "ScanKeys"
                    })
            },
        )
        .await;
    }
    // A client's own id that is not hex is logged beside the hex id it was given.
    let answer = exchange(
        Method::GET,
        &format!("http://{}/get/traced", peers[0]),
        None,
        &[("x-request-id", b"order-1234")],
    )
    .await;
    assert_eq!(answer.request_id(), "order-1234");
    let line = poll(
        "the client's id in the access line",
        Duration::from_secs(10),
        || async {
            std::fs::read_to_string(log(0))
                .unwrap()
                .lines()
                .find(|l| l.contains("order-1234"))
                .and_then(|l| serde_json::from_str::<Json>(l).ok())
        },
    )
    .await;
    assert_eq!(line["fields"]["client_request_id"], "order-1234");
    assert!(is_hex_id(line["spans"][0]["request_id"].as_str().unwrap()));
    // Every line of every log is one JSON object (read once the nodes stopped writing).
    for child in &mut children.0 {
        child.kill().await.unwrap();
    }
    for i in 0..3 {
        for l in std::fs::read_to_string(log(i)).unwrap().lines() {
            let parsed: Json = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            assert!(parsed.is_object() && parsed["level"].is_string(), "{l}");
        }
    }
    drop(children);
    let _ = std::fs::remove_dir_all(&dir);
}
