//! Batches and scans over HTTP: `POST /mget` and `POST /mset` spanning every node's keys, with
//! per-item errors, limits and an owner down; `GET /keys` paging every live key exactly once
//! through different nodes, across a membership change and with a node down; and the peer
//! messages behind them refusing forged input.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use hyper::StatusCode;
use kvcore::{ErrorCode, NodeId, Precondition, Store, Value, MAX_KEY_BYTES};
use kvnet::rpc::{MultiGet, MultiSet, ScanKeys, Set, MAX_BATCH_ITEMS};
use kvnet::{CallError, Header};
use kvserver::LocalCluster;
use serde_json::{json, Value as Json};

use crate::util::{encode_key, node_info, peer_header, peers_of, poll, Http};

const TIMEOUT: Duration = Duration::from_secs(30);

async fn cluster(nodes: usize, replicas: usize) -> LocalCluster {
    LocalCluster::builder()
        .nodes(nodes)
        .configure(|c| {
            c.replicas = replicas;
            c.max_value_bytes = 1000;
        })
        .start()
        .await
        .expect("cluster starts")
}

async fn mset(http: &Http, url: &str, entries: &[Json]) -> (StatusCode, Json) {
    let body = json!({ "entries": entries }).to_string();
    http.post(&format!("{url}/mset"), &body).await
}

/// [`mset`], asserting that every item was written.
async fn mset_ok(http: &Http, url: &str, entries: &[Json]) {
    let (status, body) = mset(http, url, entries).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for result in body["results"].as_array().unwrap() {
        assert!(result.get("error").is_none(), "{result}");
    }
}

async fn mget(http: &Http, url: &str, keys: &[Json]) -> (StatusCode, Json) {
    let body = json!({ "keys": keys }).to_string();
    http.post(&format!("{url}/mget"), &body).await
}

/// The `error.code` of a batch item.
fn item_code(item: &Json) -> &str {
    item["error"]["code"].as_str().unwrap_or("")
}

/// Keys `{prefix}{i}` whose primaries, between them, are every node of the cluster.
fn keys_on_every_node(cluster: &LocalCluster, prefix: &str, count: usize) -> Vec<String> {
    let keys: Vec<String> = (0..count).map(|i| format!("{prefix}{i}")).collect();
    let owners: HashSet<NodeId> = keys.iter().map(|k| cluster.node(0).owner(k)).collect();
    assert_eq!(owners.len(), cluster.len(), "{count} keys miss a node");
    keys
}

#[tokio::test]
async fn mset_and_mget_span_every_node_and_answer_each_item_in_its_place() {
    let cluster = cluster(4, 2).await;
    let http = Http::new();
    let keys = keys_on_every_node(&cluster, "batch:", 40);
    let mut entries: Vec<Json> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| json!({"key": k, "value": i, "encoding": "integer"}))
        .collect();
    // Items that fail on their own, between the good ones.
    entries.insert(3, json!({"key": "", "value": "empty key"}));
    entries.insert(7, json!({"key": "too-big", "value": "x".repeat(1001)}));
    entries.insert(
        11,
        json!({"key": "bad-encoding", "value": "v", "encoding": "varchar"}),
    );
    entries.insert(
        13,
        json!({"key": "not-an-integer", "value": "v", "encoding": "integer"}),
    );
    entries.insert(17, json!({"key": "\u{0}reserved", "value": "v"}));
    entries.insert(19, json!("not an object"));
    entries.insert(
        23,
        json!({"key": "short-lived", "value": "v", "ttl_ms": 300}),
    );
    entries.insert(29, json!({"key": "zero-ttl", "value": "v", "ttl_ms": 0}));
    let (status, body) = mset(&http, &cluster.url(1), &entries).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), entries.len());
    let expected_errors = [
        (3, "invalid_key"),
        (7, "value_too_large"),
        (11, "unknown_encoding"),
        (13, "invalid_value"),
        (17, "invalid_key"),
        (19, "invalid_request"),
        (29, "invalid_request"),
    ];
    for (i, (entry, result)) in entries.iter().zip(results).enumerate() {
        match expected_errors.iter().find(|(at, _)| *at == i) {
            Some((_, code)) => {
                assert_eq!(item_code(result), *code, "item {i}: {result}");
                assert_eq!(result["key"], entry["key"].clone(), "item {i}");
            }
            None => {
                assert_eq!(result["key"], entry["key"], "item {i}: {result}");
                assert!(result["version"].is_u64(), "item {i}: {result}");
                assert!(result.get("error").is_none(), "item {i}: {result}");
            }
        }
    }
    let ttl = results[23]["ttl_ms"].as_u64().expect("the TTL is shown");
    assert!((1..=300).contains(&ttl), "{}", results[23]);
    assert!(results[0].get("ttl_ms").is_none());

    // Every write reads back through single GETs on the other nodes.
    for (i, key) in keys.iter().enumerate() {
        let node = (i + 2) % cluster.len();
        let url = format!("{}/kv/{}", cluster.url(node), encode_key(key));
        let (status, got) = http.get(&url).await;
        assert_eq!(
            (status, &got["value"]),
            (StatusCode::OK, &json!(i)),
            "{key}"
        );
    }

    // Reads in order, duplicates answered per position, missing keys null, bad keys errors.
    let mut asked: Vec<Json> = keys.iter().map(|k| json!(k)).collect();
    asked.insert(0, json!("missing:0"));
    asked.insert(5, json!(keys[9]));
    asked.insert(8, json!(""));
    asked.insert(9, json!(42));
    asked.push(json!("k".repeat(MAX_KEY_BYTES + 1)));
    asked.push(json!("missing:1"));
    let (status, body) = mget(&http, &cluster.url(3), &asked).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let got = body["entries"].as_array().unwrap();
    assert_eq!(got.len(), asked.len());
    for (i, (key, entry)) in asked.iter().zip(got).enumerate() {
        match key.as_str() {
            Some(k) if k.starts_with("batch:") => {
                let n: usize = k["batch:".len()..].parse().unwrap();
                assert_eq!(entry["key"], *key, "{i}: {entry}");
                assert_eq!(entry["value"], json!(n), "{i}: {entry}");
                assert_eq!(entry["encoding"], "integer");
                assert!(entry["version"].is_u64());
            }
            Some(k) if k.starts_with("missing:") => assert!(entry.is_null(), "{i}: {entry}"),
            _ => {
                assert_eq!(item_code(entry), "invalid_key", "{i}: {entry}");
                assert_eq!(entry["key"], *key);
            }
        }
    }

    // The short-lived key expires for batches as for single reads.
    let (status, body) = mget(&http, &cluster.url(0), &[json!("short-lived")]).await;
    assert_eq!(status, StatusCode::OK);
    let first = &body["entries"][0];
    assert!(
        first.is_null() || first["ttl_ms"].as_u64().is_some(),
        "{first}"
    );
    poll("the short-lived key to expire", TIMEOUT, || async {
        let (_, body) = mget(&http, &cluster.url(2), &[json!("short-lived")]).await;
        body["entries"][0].is_null().then_some(())
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn conditional_batch_writes_answer_their_conflicts_with_the_current_entry() {
    let cluster = cluster(3, 3).await;
    let http = Http::new();
    let url = cluster.url(0);
    let (status, body) = mset(
        &http,
        &url,
        &[
            json!({"key": "c1", "value": "one"}),
            json!({"key": "c2", "value": "two"}),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v1 = body["results"][0]["version"].as_u64().unwrap();
    let entries = [
        json!({"key": "c1", "value": "again", "if_version": v1}),
        json!({"key": "c2", "value": "again", "if_absent": true}),
        json!({"key": "c3", "value": "new", "if_absent": true}),
        json!({"key": "c1", "value": "stale", "if_version": v1}),
        json!({"key": "c9", "value": "x", "if_version": 1}),
        json!({"key": "c4", "value": "x", "if_version": 1, "if_absent": true}),
        json!({"key": "c4", "value": "x", "ttl_ms": 5, "keep_ttl": true}),
    ];
    // Items of one batch are not ordered among themselves: the two writes of `c1` go one after
    // the other, so only one of them can match `v1`.
    let (status, body) = mset(&http, &cluster.url(2), &entries).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let r = body["results"].as_array().unwrap();
    let c1 = [&r[0], &r[3]];
    let won: Vec<_> = c1.iter().filter(|r| r["version"].is_u64()).collect();
    let lost: Vec<_> = c1.iter().filter(|r| r.get("error").is_some()).collect();
    assert_eq!((won.len(), lost.len()), (1, 1), "{body}");
    assert_eq!(item_code(lost[0]), "version_mismatch");
    assert_eq!(lost[0]["current"]["version"], won[0]["version"]);
    assert_eq!(item_code(&r[1]), "key_exists", "{}", r[1]);
    assert_eq!(r[1]["current"]["value"], "two");
    assert_eq!(r[2]["value"], "new");
    assert_eq!(item_code(&r[4]), "version_mismatch");
    assert!(r[4]["current"].is_null(), "{}", r[4]);
    assert_eq!(item_code(&r[5]), "invalid_request");
    assert_eq!(item_code(&r[6]), "invalid_request");
    cluster.shutdown().await;
}

#[tokio::test]
async fn batches_over_the_limit_empty_or_malformed_are_refused_whole() {
    let cluster = cluster(2, 2).await;
    let http = Http::new();
    let url = cluster.url(0);
    let keys: Vec<Json> = (0..=MAX_BATCH_ITEMS)
        .map(|i| json!(format!("k{i}")))
        .collect();
    let entries: Vec<Json> = (0..=MAX_BATCH_ITEMS)
        .map(|i| json!({"key": format!("k{i}"), "value": i}))
        .collect();
    let huge = json!({"keys": ["x".repeat(7 << 20)]}).to_string();
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        (
            "/mget",
            json!({ "keys": keys }).to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
        ),
        (
            "/mset",
            json!({ "entries": entries }).to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
        ),
        (
            "/mget",
            huge,
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            "/mget",
            r#"{"keys": []}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/mset",
            r#"{"entries": []}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/mget",
            r#"{"keys": "a"}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/mget",
            r#"{"keys": ["a"], "extra": 1}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/mget",
            r#"[["a"]]"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/mset",
            r#"{"entries": [{"key": "a", "value": 1}"#.into(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "/mset",
            String::new(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
    ];
    for (path, body, status, code) in cases {
        let (got, answer) = http.post(&format!("{url}{path}"), &body).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{path} {}: {answer}",
            &body[..body.len().min(80)]
        );
    }
    // Exactly the limit is fine, however long the keys.
    let full: Vec<Json> = (0..MAX_BATCH_ITEMS)
        .map(|i| json!(format!("{i:04}{}", "k".repeat(MAX_KEY_BYTES - 4))))
        .collect();
    let (status, body) = mget(&http, &url, &full).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let entries = body["entries"].as_array().unwrap();
    assert_eq!(entries.len(), MAX_BATCH_ITEMS);
    let not_null: Vec<&Json> = entries.iter().filter(|e| !e.is_null()).collect();
    assert!(
        not_null.is_empty(),
        "{} not null, first {}",
        not_null.len(),
        not_null[0]
    );
    let (status, body) = http.get(&format!("{url}/mget")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_batch_with_an_owner_down_fails_over_and_reports_no_unreadable_success() {
    let mut cluster = cluster(4, 3).await;
    let http = Http::new();
    let keys = keys_on_every_node(&cluster, "down:", 60);
    cluster.stop_node(3).await;
    // At once, before anyone noticed: writes to node 3's keys find it unreachable. What each
    // key may hold: a write acknowledged is all it can hold; one refused changes nothing; one
    // of unknown outcome may or may not have been applied.
    let mut possible: HashMap<&str, Vec<Option<String>>> =
        keys.iter().map(|k| (k.as_str(), vec![None])).collect();
    let mut acked = 0;
    for round in 0..2 {
        let entries: Vec<Json> = keys
            .iter()
            .map(|k| json!({"key": k, "value": format!("{k}@{round}")}))
            .collect();
        let (status, body) = mset(&http, &cluster.url(round), &entries).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let results = body["results"].as_array().unwrap();
        assert_eq!(results.len(), keys.len(), "{body}");
        for (key, result) in keys.iter().zip(results) {
            assert_eq!(result["key"], json!(key), "{result}");
            let value = Some(format!("{key}@{round}"));
            let may = possible.get_mut(key.as_str()).unwrap();
            let code = item_code(result);
            match code {
                "" => {
                    assert!(result["version"].is_u64(), "{key}: {result}");
                    *may = vec![value];
                    acked += 1;
                    continue;
                }
                // Never a silent failure: refused before anything applied, or unknown.
                "owner_unavailable" | "quorum_unavailable" => {}
                "outcome_unknown" => may.push(value),
                other => panic!("{key}: {other}: {result}"),
            }
            let message = result["error"]["message"].as_str().unwrap_or("");
            assert!(!message.is_empty(), "{key}: {result}");
            assert!(result.get("version").is_none(), "{key}: {result}");
        }
        // Every acknowledged item reads back with its value, and every other one as it may be,
        // through every live node.
        read_back(&http, &cluster, &[0, 1, 2], &possible).await;
    }
    // Once node 3 is known to be down, every write goes through the other replicas.
    poll("node 3 to be seen down", TIMEOUT, || async {
        let (_, body) = http.get(&format!("{}/cluster", cluster.url(0))).await;
        (body["nodes"][3]["state"] == "down").then_some(())
    })
    .await;
    let entries: Vec<Json> = keys
        .iter()
        .map(|k| json!({"key": k, "value": format!("{k}@last")}))
        .collect();
    let (status, body) = mset(&http, &cluster.url(1), &entries).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for (key, result) in keys.iter().zip(body["results"].as_array().unwrap()) {
        assert!(result.get("error").is_none(), "{key}: {result}");
    }
    // Every success is readable through every live node, by batch and by single reads.
    let last: HashMap<&str, Vec<Option<String>>> = keys
        .iter()
        .map(|k| (k.as_str(), vec![Some(format!("{k}@last"))]))
        .collect();
    read_back(&http, &cluster, &[0, 1, 2], &last).await;
    assert!(acked > 0, "no write was acknowledged with node 3 down");
    cluster.shutdown().await;
}

/// Reads every key of `possible` through each of `nodes`, by `/mget` and, for the keys with one
/// possible value, by single reads too; each must hold one of its possible values (`None`:
/// missing). A read that fails (a replica just crashed and not yet seen down) is tried again.
async fn read_back(
    http: &Http,
    cluster: &LocalCluster,
    nodes: &[usize],
    possible: &HashMap<&str, Vec<Option<String>>>,
) {
    let keys: Vec<&str> = possible.keys().copied().collect();
    let asked: Vec<Json> = keys.iter().map(|k| json!(k)).collect();
    let fits = |key: &str, got: Option<&Json>| {
        let got = got.map(|v| v.as_str().expect("written as strings").to_owned());
        possible[key].contains(&got)
    };
    for &node in nodes {
        let entries = poll("an mget with every item read", TIMEOUT, || async {
            let (status, body) = mget(http, &cluster.url(node), &asked).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let entries = body["entries"].as_array().unwrap().clone();
            entries
                .iter()
                .all(|e| e.get("error").is_none())
                .then_some(entries)
        })
        .await;
        for (key, entry) in keys.iter().zip(&entries) {
            let got = (!entry.is_null()).then(|| &entry["value"]);
            assert!(
                fits(key, got),
                "{key} through node {node}: {entry}, expected one of {:?}",
                possible[key]
            );
        }
        for key in keys.iter().filter(|k| possible[**k].len() == 1) {
            let url = format!("{}/kv/{}", cluster.url(node), encode_key(key));
            // A read that fails (503, or 504 from a replica slow to answer) changes nothing:
            // it is asked again.
            let (status, got) = poll("a single read", TIMEOUT, || async {
                let (status, got) = http.get(&url).await;
                (!status.is_server_error()).then_some((status, got))
            })
            .await;
            let got = match status {
                StatusCode::OK => Some(&got["value"]),
                StatusCode::NOT_FOUND => None,
                other => panic!("{key} through node {node}: {other} {got}"),
            };
            assert!(
                fits(key, got),
                "{key} through node {node}: {got:?}, expected {:?}",
                possible[*key]
            );
        }
    }
}

/// Every key of a scan of `prefix`, page by page of `limit`, each page through the next node in
/// `via`; panics if a key comes twice. Retries a page that fails with a 503 (a node not
/// answering) until `TIMEOUT`.
async fn scan_all(http: &Http, urls: &[String], prefix: &str, limit: usize) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0.. {
        let url = &urls[page % urls.len()];
        let mut target = format!("{url}/keys?prefix={}&limit={limit}", encode_key(prefix));
        if let Some(c) = &cursor {
            target.push_str(&format!("&cursor={c}"));
        }
        let body = poll("a scan page", TIMEOUT, || async {
            let (status, body) = http.get(&target).await;
            match status {
                StatusCode::OK => Some(body),
                StatusCode::SERVICE_UNAVAILABLE => None,
                other => panic!("{target}: {other} {body}"),
            }
        })
        .await;
        let got = body["keys"].as_array().unwrap();
        assert!(got.len() <= limit.min(1000), "{body}");
        keys.extend(got.iter().map(|k| k.as_str().unwrap().to_owned()));
        match body["cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let unique: HashSet<&String> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len(), "a key came twice");
    keys
}

/// Scan order: by store shard, then by key.
fn in_scan_order(keys: &[String]) -> bool {
    let order: Vec<(usize, &str)> = keys.iter().map(|k| (Store::shard_of(k), &k[..])).collect();
    order.windows(2).all(|w| w[0] < w[1])
}

#[tokio::test]
async fn a_scan_lists_every_live_key_once_through_any_node_and_no_deleted_or_expired_one() {
    let cluster = LocalCluster::builder()
        .nodes(4)
        .configure(|c| {
            c.replicas = 2;
            // The expired keys stay in the stores until the scan: it must leave them out itself.
            c.expiry_sweep_ms = 3_600_000;
        })
        .start()
        .await
        .unwrap();
    let http = Http::new();
    let urls: Vec<String> = (0..4).map(|i| cluster.url(i)).collect();
    let keys = keys_on_every_node(&cluster, "scan:", 500);
    for chunk in keys.chunks(200) {
        let entries: Vec<Json> = chunk
            .iter()
            .map(|k| json!({"key": k, "value": k}))
            .collect();
        let (status, body) = mset(&http, &urls[0], &entries).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r.get("error").is_none()));
    }
    // Others, enough for more than the largest page.
    for chunk in 0..2 {
        let others: Vec<Json> = (0..325)
            .map(|i| json!({"key": format!("other:{chunk}:{i}"), "value": "v"}))
            .collect();
        mset_ok(&http, &urls[1], &others).await;
    }
    // Deleted keys, and keys that expire.
    let mut live: BTreeSet<String> = keys.iter().cloned().collect();
    for key in keys.iter().step_by(25) {
        let (status, _) = http
            .delete(&format!("{}/kv/{}", urls[2], encode_key(key)))
            .await;
        assert_eq!(status, StatusCode::OK);
        live.remove(key);
    }
    let expiring: Vec<Json> = keys
        .iter()
        .skip(3)
        .step_by(40)
        .map(|k| json!({"key": k, "value": "brief", "ttl_ms": 200}))
        .collect();
    mset_ok(&http, &urls[3], &expiring).await;
    let expires_by = cluster.node(0).clock().now_ms() + 200;
    for e in &expiring {
        live.remove(e["key"].as_str().unwrap());
    }
    poll("the TTLs to pass", TIMEOUT, || async {
        (cluster.node(0).clock().now_ms() > expires_by + 50).then_some(())
    })
    .await;

    let scanned = scan_all(&http, &urls, "scan:", 7).await;
    assert!(in_scan_order(&scanned), "not in scan order");
    assert_eq!(scanned.iter().cloned().collect::<BTreeSet<_>>(), live);
    // Without a prefix: every key, the cluster's own records left out.
    let everything = scan_all(&http, &urls[1..2], "", 1000).await;
    assert_eq!(everything.len(), live.len() + 650);
    assert!(in_scan_order(&everything));

    // A limit over the cap is lowered to it: no node holds a thousand keys, so the page is cut
    // by the limit alone.
    let (status, body) = http.get(&format!("{}/keys?limit=5000", urls[0])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["keys"].as_array().unwrap().len(), 1000);
    assert!(body["cursor"].is_string(), "{body}");
    let (status, body) = http
        .get(&format!("{}/keys?prefix=scan%3A&limit=2", urls[2]))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["keys"].as_array().unwrap().len(), 2, "{body}");
    assert!(body["cursor"].is_string());

    // Bad queries.
    let cursor = body["cursor"].as_str().unwrap();
    let mut forged = cursor.to_owned();
    forged.replace_range(2..6, "00ff");
    for query in [
        "cursor=zz".to_owned(),
        format!("cursor={forged}"),
        format!("cursor={}", &cursor[..cursor.len() - 1]),
        "limit=0".to_owned(),
        "limit=-1".to_owned(),
        "limit=ten".to_owned(),
        "prefix=a&prefix=b".to_owned(),
        "order=asc".to_owned(),
        format!("prefix={}", "p".repeat(MAX_KEY_BYTES + 1)),
    ] {
        let (status, body) = http.get(&format!("{}/keys?{query}", urls[1])).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_request")),
            "{query}: {body}"
        );
    }
    let (status, _) = http.post(&format!("{}/keys", urls[0]), "{}").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_scan_resumes_through_a_membership_change() {
    let mut cluster = LocalCluster::builder()
        .nodes(3)
        .configure(|c| c.replicas = 2)
        .start()
        .await
        .unwrap();
    let http = Http::new();
    let keys: Vec<String> = (0..600).map(|i| format!("move:{i}")).collect();
    let entries: Vec<Json> = keys
        .iter()
        .map(|k| json!({"key": k, "value": "v"}))
        .collect();
    mset_ok(&http, &cluster.url(0), &entries).await;
    // A few pages before the change.
    let first = format!("{}/keys?prefix=move:&limit=50", cluster.url(1));
    let (status, body) = http.get(&first).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut scanned: Vec<String> = body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    let mut cursor = body["cursor"].as_str().unwrap().to_owned();
    let new = cluster.join_node().await.unwrap();
    // The rest while the keys move to the new node and after, through it and the others.
    let urls: Vec<String> = (0..=new).rev().map(|i| cluster.url(i)).collect();
    for page in 0.. {
        let url = format!(
            "{}/keys?prefix=move:&limit=50&cursor={cursor}",
            urls[page % urls.len()]
        );
        let body = poll("a scan page", TIMEOUT, || async {
            let (status, body) = http.get(&url).await;
            match status {
                StatusCode::OK => Some(body),
                StatusCode::SERVICE_UNAVAILABLE => None,
                other => panic!("{url}: {other} {body}"),
            }
        })
        .await;
        scanned.extend(
            body["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.as_str().unwrap().to_owned()),
        );
        match body["cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    let unique: BTreeSet<String> = scanned.iter().cloned().collect();
    assert_eq!(unique.len(), scanned.len(), "a key came twice");
    assert_eq!(unique, keys.iter().cloned().collect::<BTreeSet<_>>());
    assert!(cluster.wait_settled(TIMEOUT).await);
    let after: Vec<String> = scan_all(&http, &urls, "move:", 100).await;
    assert_eq!(after.len(), keys.len());
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_scan_survives_a_node_down_while_every_key_keeps_a_majority_and_fails_loudly_otherwise() {
    for (replicas, survives) in [(3, true), (1, false)] {
        let mut cluster = cluster(4, replicas).await;
        let http = Http::new();
        let keys = keys_on_every_node(&cluster, "k", 200);
        let entries: Vec<Json> = keys
            .iter()
            .map(|k| json!({"key": k, "value": "v"}))
            .collect();
        mset_ok(&http, &cluster.url(0), &entries).await;
        cluster.stop_node(2).await;
        let urls = [cluster.url(0), cluster.url(3)];
        if survives {
            let scanned = scan_all(&http, &urls, "", 30).await;
            assert_eq!(scanned.len(), keys.len(), "R={replicas}");
        } else {
            let (status, body) = http.get(&format!("{}/keys", urls[0])).await;
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (StatusCode::SERVICE_UNAVAILABLE, Some("quorum_unavailable")),
                "R={replicas}: {body}"
            );
        }
        cluster.shutdown().await;
    }
}

#[tokio::test]
async fn forged_batch_and_scan_messages_are_refused_and_change_nothing() {
    let cluster = cluster(3, 3).await;
    let peers = peers_of(&cluster);
    let to = node_info(&cluster, 0);
    let header = peer_header(&cluster, 1);
    let remote_code = |e: CallError| e.remote_code();

    // More items than a message may carry, and scans out of bounds: refused whole.
    let too_many = MultiGet {
        keys: (0..=MAX_BATCH_ITEMS).map(|i| format!("k{i}")).collect(),
    };
    let e = peers.call(&to, &header, &too_many).await.unwrap_err();
    assert_eq!(remote_code(e), Some(ErrorCode::InvalidRequest));
    let scan = ScanKeys {
        prefix: String::new(),
        after: None,
        limit: 10,
        now_ms: 0,
    };
    for bad in [
        ScanKeys {
            limit: 0,
            ..scan.clone()
        },
        ScanKeys {
            limit: MAX_BATCH_ITEMS as u32 + 1,
            ..scan.clone()
        },
        ScanKeys {
            after: Some((4096, "k".into())),
            ..scan.clone()
        },
        ScanKeys {
            prefix: "p".repeat(MAX_KEY_BYTES + 1),
            ..scan.clone()
        },
    ] {
        let e = peers.call(&to, &header, &bad).await.unwrap_err();
        assert_eq!(remote_code(e), Some(ErrorCode::InvalidRequest), "{bad:?}");
    }
    // A frame over the peer frame limit is refused before it is read (the refusal, sent before
    // the request was authenticated, carries no MAC: the sender cannot trust it).
    let oversized = MultiGet {
        keys: vec!["x".repeat(3 << 20)],
    };
    match peers.call(&to, &header, &oversized).await.unwrap_err() {
        CallError::Broken { reason, .. } => assert!(reason.contains("body_too_large"), "{reason}"),
        other => panic!("{other}"),
    }
    // The longest keys, as many as a message may carry: the reply answers as many as fit in a
    // page, and the sender asks again for the rest.
    let longest = MultiGet {
        keys: (0..MAX_BATCH_ITEMS)
            .map(|i| format!("{i:04}{}", "k".repeat(MAX_KEY_BYTES - 4)))
            .collect(),
    };
    let answers = peers.call(&to, &header, &longest).await.unwrap();
    assert!(
        (900..MAX_BATCH_ITEMS).contains(&answers.len()),
        "{}",
        answers.len()
    );
    assert!(answers.iter().all(|a| matches!(a, Ok(None))));
    // A stale epoch is refused, so the sender places its items again.
    let stale = Header {
        epoch: header.epoch + 5,
        ..header
    };
    let e = peers
        .call(
            &to,
            &stale,
            &MultiGet {
                keys: vec!["a".into()],
            },
        )
        .await
        .unwrap_err();
    assert!(e.remote_code().is_some(), "{e}");

    // Items a client could not send are refused one by one.
    let set = |key: &str, value: Value, precondition| Set {
        key: key.into(),
        value,
        precondition,
        ttl_ms: None,
        keep_ttl: false,
    };
    let items = vec![
        set("ok", Value::string("v"), Precondition::None),
        set("cond", Value::string("v"), Precondition::IfAbsent),
        set("\u{0}cluster-map", Value::string("v"), Precondition::None),
        set("big", Value::binary(vec![0; 1001]), Precondition::None),
        set("", Value::string("v"), Precondition::None),
    ];
    let answers = peers.call(&to, &header, &MultiSet { items }).await.unwrap();
    let codes: Vec<Option<ErrorCode>> = answers
        .iter()
        .map(|a| a.as_ref().err().map(|e| e.code))
        .collect();
    assert_eq!(
        codes,
        [
            None,
            Some(ErrorCode::InvalidRequest),
            Some(ErrorCode::InvalidKey),
            Some(ErrorCode::ValueTooLarge),
            Some(ErrorCode::InvalidKey),
        ]
    );
    let answers = peers
        .call(
            &to,
            &header,
            &MultiGet {
                keys: vec!["ok".into(), "\u{0}cluster-map".into(), "cond".into()],
            },
        )
        .await
        .unwrap();
    assert!(matches!(&answers[0], Ok(Some(e)) if e.value.as_str() == Some("v")));
    assert_eq!(answers[1].as_ref().unwrap_err().code, ErrorCode::InvalidKey);
    assert!(
        matches!(answers[2], Ok(None)),
        "the refused write left nothing"
    );
    // The cluster map the reserved key holds is untouched.
    assert!(cluster.node(0).recorded_map().await.unwrap().is_some());
    // A scan through a peer answers only keys that node replicates, in scan order.
    let page = peers.call(&to, &header, &scan).await.unwrap();
    assert_eq!(page.keys, [(Store::shard_of("ok") as u32, "ok".to_owned())]);
    assert!(!page.more);
    cluster.shutdown().await;
}
