//! The HTTP contract: every endpoint, every error, the seed's own curl call.

use std::time::Duration;

use hyper::{Method, StatusCode};
use kvcore::ErrorCode;
use kvnet::rpc::Get;
use kvnet::{Header, MAX_HOPS};
use kvserver::LocalCluster;
use serde_json::json;

use crate::util::{
    encode_key, node_info, peer_header, peers_of, poll, raw_exchange, unreplicated, Http,
};

async fn two_nodes() -> LocalCluster {
    LocalCluster::builder().nodes(2).start().await.unwrap()
}

#[tokio::test]
async fn the_seed_curl_call_works_byte_for_byte() {
    let cluster = two_nodes().await;
    // Exactly what `curl -H "Content-Type: application/json" -d '{...}' http://localhost:PORT/set`
    // sends (curl 7.88), plus `Connection: close` so the exchange ends.
    let body = r#"{"key": "d", "value": "onto", "encoding": "string"}"#;
    let request = format!(
        "POST /set HTTP/1.1\r\nHost: localhost:{port}\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\
         Content-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{body}",
        port = cluster.addr(0).port(),
        len = body.len()
    );
    let answer = raw_exchange(cluster.addr(0), request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.contains("content-type: application/json\r\n"),
        "{answer}"
    );
    let json: serde_json::Value =
        serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(
        json,
        json!({"key": "d", "value": "onto", "encoding": "string", "version": 1})
    );

    // And the seed's read, through the other node.
    let (status, got) = Http::new().get(&format!("{}/get/d", cluster.url(1))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["value"], "onto");
    cluster.shutdown().await;
}

#[tokio::test]
async fn every_encoding_round_trips_in_its_json_shape() {
    let cluster = two_nodes().await;
    let http = Http::new();
    let cases = [
        (json!("onto"), "string", json!("onto")),
        (json!("42"), "integer", json!(42)),
        (json!(-7), "integer", json!(-7)),
        (json!("2.5"), "float", json!(2.5)),
        (json!(1e-3), "float", json!(1e-3)),
        (json!("true"), "boolean", json!(true)),
        (json!(false), "boolean", json!(false)),
        (json!("AAEC/w=="), "binary", json!("AAEC/w==")),
        (json!({"a": [1, null]}), "json", json!({"a": [1, null]})),
    ];
    for (i, (sent, encoding, returned)) in cases.into_iter().enumerate() {
        let key = format!("enc-{i}");
        let body = json!({"key": key, "value": sent, "encoding": encoding}).to_string();
        let (status, set) = http.post(&format!("{}/set", cluster.url(0)), &body).await;
        assert_eq!(status, StatusCode::OK, "{set}");
        assert_eq!(set["value"], returned);
        for n in 0..2 {
            let (status, got) = http.get(&format!("{}/get/{key}", cluster.url(n))).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(
                got,
                json!({"key": key, "value": returned, "encoding": encoding, "version": 1})
            );
        }
    }
    // No encoding means string.
    let (status, set) = http
        .put(
            &format!("{}/set", cluster.url(1)),
            r#"{"key": "plain", "value": "v"}"#,
        )
        .await;
    assert_eq!(
        (status, &set["encoding"]),
        (StatusCode::OK, &json!("string"))
    );
    cluster.shutdown().await;
}

#[tokio::test]
async fn the_kv_resource_supports_get_put_delete_and_conditions() {
    let cluster = two_nodes().await;
    let http = Http::new();
    for key in ["user:42", "a b", "ключ", "with/slash"] {
        let url = |n: usize| format!("{}/kv/{}", cluster.url(n), encode_key(key));
        let (status, put) = http
            .put(&url(0), r#"{"value": 5, "encoding": "integer"}"#)
            .await;
        assert_eq!(status, StatusCode::OK, "{put}");
        assert_eq!(put["key"], key);
        let (status, got) = http.get(&url(1)).await;
        assert_eq!((status, &got["value"]), (StatusCode::OK, &json!(5)));
        // The seed's /get path decodes keys the same way.
        let (status, _) = http
            .get(&format!("{}/get/{}", cluster.url(1), encode_key(key)))
            .await;
        assert_eq!(status, StatusCode::OK);

        let (status, conflict) = http
            .put(
                &url(1),
                r#"{"value": 6, "encoding": "integer", "if_version": 9}"#,
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(conflict["error"]["code"], "version_mismatch");
        assert_eq!(conflict["current"]["version"], 1);
        let (status, _) = http
            .put(
                &url(0),
                r#"{"value": 6, "encoding": "integer", "if_version": 1}"#,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let (status, exists) = http
            .put(
                &url(0),
                r#"{"value": 7, "encoding": "integer", "if_absent": true}"#,
            )
            .await;
        assert_eq!(
            (status, &exists["error"]["code"]),
            (StatusCode::CONFLICT, &json!("key_exists"))
        );
        assert_eq!(exists["current"]["value"], 6);

        let (status, deleted) = http.delete(&url(1)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            (&deleted["deleted"], &deleted["version"]),
            (&json!(true), &json!(2))
        );
        let (status, missing) = http.get(&url(0)).await;
        assert_eq!(
            (status, &missing["error"]["code"]),
            (StatusCode::NOT_FOUND, &json!("not_found"))
        );
        let (status, _) = http.delete(&url(0)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_json_errors_with_stable_codes() {
    let cluster = two_nodes().await;
    let http = Http::new();
    let set = format!("{}/set", cluster.url(0));
    let long_key = "k".repeat(1025);
    let cases: Vec<(Method, String, Option<String>, StatusCode, &str)> = vec![
        (
            Method::POST,
            set.clone(),
            Some("{not json".into()),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            Method::POST,
            set.clone(),
            Some("".into()),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            Method::POST,
            set.clone(),
            Some("[1,2]".into()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        // The fields of a body in an array, in order: still not an object.
        (
            Method::POST,
            set.clone(),
            Some(r#"["k", "v"]"#.into()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            set.clone(),
            Some(r#"{"value": "v"}"#.into()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            set.clone(),
            Some(r#"{"key": "k"}"#.into()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            set.clone(),
            Some(r#"{"key": "k", "value": "v", "encodng": "string"}"#.into()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            set.clone(),
            Some(r#"{"key": "k", "value": "v", "encoding": "varchar"}"#.into()),
            StatusCode::BAD_REQUEST,
            "unknown_encoding",
        ),
        (
            Method::POST,
            set.clone(),
            Some(r#"{"key": "k", "value": "x", "encoding": "integer"}"#.into()),
            StatusCode::BAD_REQUEST,
            "invalid_value",
        ),
        (
            Method::POST,
            set.clone(),
            Some(r#"{"key": "k", "value": 1.5, "encoding": "integer"}"#.into()),
            StatusCode::BAD_REQUEST,
            "invalid_value",
        ),
        (
            Method::POST,
            set.clone(),
            Some(r#"{"key": "k", "value": "%%", "encoding": "binary"}"#.into()),
            StatusCode::BAD_REQUEST,
            "invalid_value",
        ),
        (
            Method::POST,
            set.clone(),
            Some(r#"{"key": "k", "value": 3, "encoding": "string"}"#.into()),
            StatusCode::BAD_REQUEST,
            "invalid_value",
        ),
        (
            Method::POST,
            set.clone(),
            Some(r#"{"key": "", "value": "v"}"#.into()),
            StatusCode::BAD_REQUEST,
            "invalid_key",
        ),
        (
            Method::POST,
            set.clone(),
            Some(json!({"key": long_key, "value": "v"}).to_string()),
            StatusCode::BAD_REQUEST,
            "invalid_key",
        ),
        (
            Method::POST,
            set.clone(),
            Some(r#"{"key": "k", "value": "v", "if_version": 1, "if_absent": true}"#.into()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            set.clone(),
            Some(json!({"key": "k", "value": "v".repeat((1 << 20) + 1)}).to_string()),
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
        ),
        (
            Method::POST,
            set.clone(),
            // Over 6 times the 1 MiB value limit: room for a value written all in escapes.
            Some(json!({"key": "k", "value": "v".repeat(7 << 20)}).to_string()),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            Method::GET,
            set.clone(),
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::DELETE,
            format!("{}/get/a", cluster.url(0)),
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::POST,
            format!("{}/kv/a", cluster.url(0)),
            Some("{}".into()),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::GET,
            format!("{}/get/", cluster.url(0)),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_key",
        ),
        (
            Method::GET,
            format!("{}/get/%FF", cluster.url(0)),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_key",
        ),
        (
            Method::GET,
            format!("{}/get/{long_key}", cluster.url(1)),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_key",
        ),
        (
            Method::GET,
            format!("{}/get/missing", cluster.url(1)),
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::GET,
            format!("{}/nowhere", cluster.url(0)),
            None,
            StatusCode::NOT_FOUND,
            "no_route",
        ),
        (
            Method::PUT,
            format!("{}/kv/k", cluster.url(0)),
            Some(r#"{"value": "v", "key": "k"}"#.into()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        // The peer endpoint takes only frames with a valid MAC, checked before anything is
        // decoded (frames that are MACed but not readable: security.rs).
        (
            Method::POST,
            format!("{}/internal/v1/rpc", cluster.url(0)),
            Some(r#"{"from":1,"epoch":1,"request":{"op":"ping"}}"#.into()),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            Method::POST,
            format!("{}/internal/v1/rpc", cluster.url(0)),
            Some("\u{1}\u{0}not a frame".into()),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
    ];
    for (method, url, body, status, code) in cases {
        let (got_status, got) = http.call(method.clone(), &url, body.as_deref()).await;
        let shown = body.as_deref().map(|b| &b[..b.len().min(80)]);
        assert_eq!(got_status, status, "{method} {url} {shown:?}: {got}");
        assert_eq!(
            got["error"]["code"], code,
            "{method} {url} {shown:?}: {got}"
        );
        assert!(got["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // Nothing above was stored: each store holds only the cluster's record of its map.
    for n in 0..2 {
        assert_eq!(cluster.node(n).store().len(), 1);
        assert!(cluster.node(n).holds_map_replica());
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_forged_hop_count_cannot_make_a_request_loop() {
    let cluster = unreplicated(3).await;
    let http = Http::new();
    // A key node 0 does not own, sent to node 0 as a peer request with the hop budget spent.
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| cluster.node(0).owner(k).0 != 0)
        .unwrap();
    let peers = peers_of(&cluster);
    let node0 = node_info(&cluster, 0);
    let header = |hops| Header {
        hops,
        ..peer_header(&cluster, 1)
    };
    let get = Get { key: key.clone() };
    for hops in [0, MAX_HOPS + 1, 255] {
        let e = peers.call(&node0, &header(hops), &get).await.unwrap_err();
        assert_eq!(
            e.remote_code(),
            Some(ErrorCode::InvalidRequest),
            "hops {hops}: {e}"
        );
    }
    let e = peers
        .call(&node0, &header(MAX_HOPS), &get)
        .await
        .unwrap_err();
    assert_eq!(e.remote_code(), Some(ErrorCode::Misdirected), "{e}");
    // With a hop left, the node forwards once more, to the owner.
    assert_eq!(peers.call(&node0, &header(1), &get).await, Ok(None));
    // Client-facing endpoints ignore the header: the request is routed normally.
    let (status, _) = http
        .call_with(
            Method::GET,
            &format!("{}/get/{key}", cluster.url(0)),
            None,
            &[("x-kv-hops", "2")],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(cluster.node(0).metrics().snapshot().forwarded, 1);
    cluster.shutdown().await;
}

#[tokio::test]
async fn health_cluster_and_stats_describe_the_node() {
    let cluster = LocalCluster::builder()
        .nodes(3)
        .configure(|c| c.replicas = 2)
        .configure(|c| c.seed_keys = true)
        .start()
        .await
        .unwrap();
    let http = Http::new();
    let (status, health) = http.get(&format!("{}/health", cluster.url(1))).await;
    assert_eq!(
        (status, &health["status"], &health["node"]),
        (StatusCode::OK, &json!("ok"), &json!(1))
    );
    // Heartbeats bring every node's view to "all up" shortly after start.
    let url = cluster.url(2);
    let map = poll("all nodes up", Duration::from_secs(10), || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let (_, map) = http.get(&format!("{url}/cluster")).await;
            let states = map["nodes"].as_array()?.iter().map(|n| n["state"].clone());
            states.into_iter().all(|s| s == "up").then_some(map)
        }
    })
    .await;
    assert_eq!(map["epoch"], 1);
    assert_eq!(
        map["partitioner"],
        kvcore::partition::default_partitioner().name()
    );
    assert_eq!(map["replication_factor"], 2);
    let nodes = map["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(n["id"], i);
        assert_eq!(n["addr"], cluster.addr(i).to_string());
    }
    // The seed keys are served through every node, and stored on both their replicas.
    let url = cluster.url(0);
    poll("seed keys", Duration::from_secs(10), || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let (a, _) = http.get(&format!("{url}/get/a")).await;
            let (b, _) = http.get(&format!("{url}/get/b")).await;
            (a == StatusCode::OK && b == StatusCode::OK).then_some(())
        }
    })
    .await;
    for n in 0..3 {
        for (key, value) in kvserver::SEED_KEYS {
            let (status, got) = http.get(&format!("{}/get/{key}", cluster.url(n))).await;
            assert_eq!(
                (status, got["value"].as_str()),
                (StatusCode::OK, Some(value))
            );
        }
    }
    let mut keys = 0;
    for n in 0..3 {
        let (_, stats) = http.get(&format!("{}/stats", cluster.url(n))).await;
        keys += stats["keys"].as_u64().unwrap();
        assert!(stats["requests"]["gets"].as_u64().unwrap() >= 2);
        assert_eq!(stats["max_memory"], json!(null));
    }
    assert_eq!(keys, 4);
    cluster.shutdown().await;
}

/// Liveness never waits for catch-up: a restarted node that cannot finish copying (a peer it
/// shares keys with is down) is alive but not ready.
#[tokio::test]
async fn a_recovering_node_is_alive_but_not_ready() {
    let mut cluster = LocalCluster::builder()
        .nodes(3)
        .configure(|c| c.replicas = 3)
        .start()
        .await
        .unwrap();
    let http = Http::new();
    cluster.stop_node(2).await;
    cluster.restart_node(1).await.unwrap();
    let (status, health) = http.get(&format!("{}/health", cluster.url(1))).await;
    assert_eq!(
        (status, &health["status"]),
        (StatusCode::SERVICE_UNAVAILABLE, &json!("recovering"))
    );
    let (status, live) = http.get(&format!("{}/livez", cluster.url(1))).await;
    assert_eq!((status, &live["status"]), (StatusCode::OK, &json!("alive")));
    let (status, _) = http.post(&format!("{}/livez", cluster.url(1)), "{}").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    cluster.shutdown().await;
}
