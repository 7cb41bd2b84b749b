//! `kvserver::Client` against real clusters, and against stub nodes for what a cluster cannot
//! be made to do on demand (answer 503 or 504, or drop a connection unanswered).

use std::time::Duration;

use futures_util::TryStreamExt;
use kvcore::{Encoding, ErrorCode, Value, Version};
use kvserver::client::{Entry, SetItem};
use kvserver::{Client, ClientError, LocalCluster, SetOptions};
use serde_json::json;

use crate::stub::{closed_port, Reply, Stub};
use crate::util::poll;

async fn cluster(nodes: usize) -> LocalCluster {
    LocalCluster::builder().nodes(nodes).start().await.unwrap()
}

/// A client that gives up quickly, for stubs that fail on purpose.
fn impatient<I>(nodes: I) -> Client
where
    I: IntoIterator,
    I::Item: ToString,
{
    Client::builder(nodes)
        .backoff(Duration::from_millis(1), Duration::from_millis(5))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// A client of one stub that does not ask it for the cluster's members, so that what the stub
/// saw is the calls alone.
fn stubbed(addr: std::net::SocketAddr) -> Client {
    only(addr)
}

/// A client of this node only, without discovery: what it is answered comes from that node.
fn only(addr: std::net::SocketAddr) -> Client {
    Client::builder([addr]).discover(false).build().unwrap()
}

#[tokio::test]
async fn the_client_reads_writes_deletes_and_increments_through_any_node() {
    let cluster = cluster(3).await;
    let client = Client::new(cluster.addrs()).unwrap();
    assert_eq!(client.get("d").await.unwrap(), None);
    let written = client.set("d", "onto").await.unwrap();
    assert_eq!(
        (
            written.key.as_str(),
            &written.value,
            written.version,
            written.ttl
        ),
        ("d", &Value::string("onto"), Version(1), None)
    );
    // Every node answers for every key.
    for i in 0..cluster.len() {
        let through = only(cluster.addr(i));
        assert_eq!(through.get("d").await.unwrap(), Some(written.clone()));
    }
    let rewritten = client.set("d", "onto again").await.unwrap();
    assert_eq!(rewritten.version, Version(2));

    assert_eq!(
        client.incr("hits", 5).await.unwrap().value.as_i64(),
        Some(5)
    );
    let hits = client.incr("hits", -7).await.unwrap();
    assert_eq!((hits.value.as_i64(), hits.version), (Some(-2), Version(2)));

    let deleted = client.delete("d").await.unwrap().unwrap();
    assert_eq!((deleted.key.as_str(), deleted.version), ("d", Version(2)));
    assert_eq!(client.get("d").await.unwrap(), None);
    assert_eq!(client.delete("d").await.unwrap(), None);
    drop(client);
    cluster.shutdown().await;
}

#[tokio::test]
async fn every_encoding_round_trips_typed_and_awkward_keys_stay_one_key() {
    let cluster = cluster(2).await;
    let client = Client::new(cluster.addrs()).unwrap();
    let values = [
        Value::string("onto"),
        Value::string(""),
        Value::integer(i64::MIN),
        Value::float(-0.125).unwrap(),
        Value::boolean(false),
        Value::binary(vec![0, 1, 2, 255]),
        Value::json(&json!({"name": "Ada", "langs": ["en", "fr"], "n": null})),
    ];
    for (i, value) in values.into_iter().enumerate() {
        let key = format!("enc/{i} a?b#c%d/incr");
        let written = client.set(&key, value.clone()).await.unwrap();
        assert_eq!((&written.key, &written.value), (&key, &value));
        let read = client.get(&key).await.unwrap().unwrap();
        assert_eq!(read, written);
        assert_eq!(kvcore::Entry::from(read).value, value);
    }
    // `enc/0 a?b#c%d/incr` is a key of its own, not an increment of `enc/0 a?b#c%d`.
    assert_eq!(client.get("enc/0 a?b#c%d").await.unwrap(), None);
    drop(client);
    cluster.shutdown().await;
}

#[tokio::test]
async fn failed_conditions_come_back_as_values_with_the_current_entry() {
    let cluster = cluster(3).await;
    let client = Client::new(cluster.addrs()).unwrap();
    let first = client
        .set_with("v", 1, SetOptions::new().if_absent())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.version, Version(1));

    let exists = client
        .set_with("v", 2, SetOptions::new().if_absent())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        (exists.key.as_str(), exists.code, exists.current.clone()),
        ("v", ErrorCode::KeyExists, Some(first.clone()))
    );

    let second = client
        .set_with("v", 2, SetOptions::new().if_version(first.version))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.version, Version(2));
    let stale = client
        .set_with("v", 3, SetOptions::new().if_version(first.version))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(stale.code, ErrorCode::VersionMismatch);
    assert_eq!(stale.current, Some(second.clone()));
    assert!(stale.message.contains("version 2"), "{}", stale.message);

    let missing = client
        .set_with("nothing", 1, SetOptions::new().if_version(Version(1)))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        (missing.code, missing.current),
        (ErrorCode::VersionMismatch, None)
    );
    assert_eq!(client.get("v").await.unwrap(), Some(second));
    drop(client);
    cluster.shutdown().await;
}

#[tokio::test]
async fn refusals_keep_the_nodes_status_code_and_message() {
    let cluster = cluster(2).await;
    let client = Client::new(cluster.addrs()).unwrap();
    client.set("name", "Ada").await.unwrap();
    let cases = [
        (
            client.incr("name", 1).await.unwrap_err(),
            400,
            ErrorCode::NotAnInteger,
        ),
        (
            client.get(&"k".repeat(1025)).await.unwrap_err(),
            400,
            ErrorCode::InvalidKey,
        ),
        (
            client.get("").await.unwrap_err(),
            400,
            ErrorCode::InvalidKey,
        ),
    ];
    for (error, status, code) in cases {
        match &error {
            ClientError::Api {
                status: s,
                code: c,
                message,
            } => {
                assert_eq!((*s, *c), (status, code), "{error}");
                assert!(!message.is_empty());
            }
            other => panic!("not an API error: {other:?}"),
        }
        assert!(!error.is_transient() && !error.may_have_applied());
        assert_eq!(error.status(), Some(status));
    }
    client.set("top", i64::MAX).await.unwrap();
    let overflow = client.incr("top", 1).await.unwrap_err();
    assert_eq!(overflow.code(), Some(ErrorCode::Overflow));
    drop(client);
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_client_fails_over_past_nodes_that_are_down() {
    let mut cluster = cluster(3).await;
    // A port nothing listens on comes first: the call moves on to a live node.
    let (closed, other) = (closed_port(), closed_port());
    let client = Client::new([closed.addr(), cluster.addr(1)]).unwrap();
    assert_eq!(client.set("k", "v").await.unwrap().version, Version(1));
    assert_eq!(
        client.get("k").await.unwrap().map(|e| e.value),
        Some(Value::string("v"))
    );

    // A crashed member of the cluster likewise, for writes and reads.
    cluster.stop_node(0).await;
    let client = Client::new(cluster.addrs()).unwrap();
    assert_eq!(client.incr("n", 1).await.unwrap().value.as_i64(), Some(1));
    assert_eq!(client.get("k").await.unwrap().unwrap().version, Version(1));
    assert!(client.health().await.unwrap().is_ok());
    drop(client);

    // With every node down, the call ends after its attempts with the last failure.
    let dead = Client::builder([closed.addr(), other.addr()])
        .max_attempts(3)
        .backoff(Duration::from_millis(1), Duration::from_millis(2))
        .build()
        .unwrap();
    match dead.set("k", "v").await.unwrap_err() {
        ClientError::Unreachable { attempts, .. } => assert_eq!(attempts, 3),
        other => panic!("{other:?}"),
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_client_given_one_node_learns_the_others_and_fails_over_to_them() {
    let mut cluster = cluster(3).await;
    let client = Client::new([cluster.addr(0)]).unwrap();
    assert_eq!(client.nodes(), [cluster.addr(0).to_string()]);
    assert_eq!(client.set("k", "v").await.unwrap().version, Version(1));
    let mut members: Vec<String> = cluster.addrs().iter().map(|a| a.to_string()).collect();
    members.sort();
    // Learned in the background, after the answer.
    poll("the members learned", Duration::from_secs(10), || {
        let mut known = client.nodes();
        known.sort();
        std::future::ready((known == members).then_some(()))
    })
    .await;
    // The seed stays first.
    assert_eq!(client.nodes()[0], cluster.addr(0).to_string());

    cluster.stop_node(0).await;
    // A read first: the connection the client kept to node 0 may be one a write would go out
    // on and lose its answer (an unknown outcome, rightly not retried); a read moves on.
    assert_eq!(
        client.get("k").await.unwrap().map(|e| e.value),
        Some(Value::string("v"))
    );
    assert_eq!(client.set("k", "w").await.unwrap().version, Version(2));
    assert_eq!(client.incr("n", 2).await.unwrap().value.as_i64(), Some(2));
    let written = client.mset([("m1", 1), ("m2", 2)]).await.unwrap();
    assert!(written.iter().all(Result::is_ok), "{written:?}");
    assert_eq!(
        client.get("k").await.unwrap().map(|e| e.value),
        Some(Value::string("w"))
    );
    drop(client);

    // Without discovery, the node given is the only one.
    let mut cluster2 = self::cluster(2).await;
    let alone = Client::builder([cluster2.addr(0)])
        .discover(false)
        .backoff(Duration::from_millis(1), Duration::from_millis(2))
        .build()
        .unwrap();
    alone.set("k", "v").await.unwrap();
    assert_eq!(alone.nodes(), [cluster2.addr(0).to_string()]);
    cluster2.stop_node(0).await;
    let error = alone.get("k").await.unwrap_err();
    assert!(
        matches!(error, ClientError::Unreachable { .. }),
        "{error:?}"
    );
    drop(alone);
    cluster2.shutdown().await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_503_moves_on_to_the_next_node_and_the_client_stays_there() {
    let cluster = cluster(2).await;
    let busy = Stub::failing(503, "quorum_unavailable").await;
    let client = impatient([busy.addr, cluster.addr(0)]);
    assert_eq!(client.set("k", 1).await.unwrap().version, Version(1));
    assert_eq!(busy.count(), 1);
    // The node that answered is asked first from now on.
    assert_eq!(client.incr("k", 1).await.unwrap().value.as_i64(), Some(2));
    assert!(client.get("k").await.unwrap().is_some());
    assert_eq!(busy.count(), 1);
    drop(client);

    // When every node answers 503, the last answer is the error.
    let other = Stub::failing(503, "recovering").await;
    let client = Client::builder([busy.addr, other.addr])
        .max_attempts(4)
        .backoff(Duration::from_millis(1), Duration::from_millis(2))
        .build()
        .unwrap();
    let error = client.set("k", 1).await.unwrap_err();
    assert_eq!(error.status(), Some(503));
    assert!(error.is_transient() && !error.may_have_applied());
    assert_eq!((busy.count(), other.count()), (1 + 2, 2));
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_504_is_never_retried() {
    let first = Stub::failing(504, "outcome_unknown").await;
    let second = Stub::failing(200, "unused").await;
    let client = impatient([first.addr, second.addr]);
    let error = client.set("k", "v").await.unwrap_err();
    match &error {
        ClientError::OutcomeUnknown { node, code, reason } => {
            assert_eq!(node, &first.addr.to_string());
            assert_eq!(*code, Some(ErrorCode::OutcomeUnknown));
            assert_eq!(reason, "stub says outcome_unknown");
        }
        other => panic!("{other:?}"),
    }
    assert!(error.may_have_applied());
    assert_eq!((first.count(), second.count()), (1, 0));
    // Nor a read's 504.
    let error = client.get("k").await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::OutcomeUnknown));
    assert!(!error.may_have_applied());
    assert_eq!((first.count(), second.count()), (2, 0));

    // A gateway's 504 in front of a node, with a body of its own: a write's outcome is just as
    // unknown, and it is not retried either.
    let gateway = Stub::start(|_| Reply::Json(504, json!("upstream timed out"))).await;
    let client = impatient([gateway.addr, second.addr]);
    let error = client.set("k", "v").await.unwrap_err();
    assert!(
        matches!(error, ClientError::OutcomeUnknown { code: None, .. }),
        "{error:?}"
    );
    assert!(error.may_have_applied());
    assert_eq!((gateway.count(), second.count()), (1, 0));
}

#[tokio::test]
async fn a_write_sent_without_an_answer_is_not_retried_but_a_read_is() {
    let first = Stub::start(|_| Reply::Close).await;
    let second = Stub::start(|_| Reply::Close).await;
    let client = impatient([first.addr, second.addr]);
    for write in [
        client.set("k", "v").await.unwrap_err(),
        client.incr("k", 1).await.unwrap_err(),
        client.delete("k").await.unwrap_err(),
    ] {
        assert!(
            matches!(write, ClientError::OutcomeUnknown { code: None, .. }),
            "{write:?}"
        );
    }
    assert_eq!((first.count(), second.count()), (3, 0));
    let read = client.get("k").await.unwrap_err();
    assert!(
        matches!(read, ClientError::Unreachable { attempts: 4, .. }),
        "{read:?}"
    );
    assert_eq!((first.count(), second.count()), (3 + 2, 2));
}

#[tokio::test]
async fn scan_follows_the_cursor_to_the_last_page() {
    let pages = Stub::start(|seen| {
        let page = match seen.path.as_str() {
            "/keys?prefix=user%3A" => json!({"keys": ["user:1", "user:2"], "cursor": "c 1"}),
            "/keys?prefix=user%3A&cursor=c%201" => json!({"keys": [], "cursor": "c2"}),
            "/keys?prefix=user%3A&cursor=c2" => json!({"keys": ["user:3"], "cursor": null}),
            "/keys?prefix=x&limit=2&cursor=c%3D" => json!({"keys": ["x1"], "cursor": "c4"}),
            "/keys?prefix=p&limit=2" => json!({"keys": ["p1", "p2"], "cursor": "n"}),
            "/keys?prefix=p&limit=2&cursor=n" => json!({"keys": ["p3"], "cursor": null}),
            _ => return Reply::error(404, "no_route"),
        };
        Reply::Json(200, page)
    })
    .await;
    let client = stubbed(pages.addr);
    let keys: Vec<String> = client.scan("user:").try_collect().await.unwrap();
    assert_eq!(keys, ["user:1", "user:2", "user:3"]);
    let page = client.keys_page("x", Some(2), Some("c=")).await.unwrap();
    assert_eq!(
        (page.keys, page.cursor),
        (vec!["x1".to_owned()], Some("c4".into()))
    );
    // A chosen page size goes with every page.
    let keys: Vec<String> = client.scan_with_limit("p", 2).try_collect().await.unwrap();
    assert_eq!(keys, ["p1", "p2", "p3"]);
    assert!(pages.seen().iter().all(|s| s.method == "GET"));
    // An endpoint the node does not have is an error, not an empty listing.
    let error = client.scan("y").try_collect::<Vec<_>>().await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::NoRoute));

    let stuck = Stub::start(|_| Reply::Json(200, json!({"keys": ["a"], "cursor": "same"}))).await;
    let client = stubbed(stuck.addr);
    let error = client.scan("").try_collect::<Vec<_>>().await.unwrap_err();
    assert!(matches!(error, ClientError::BadAnswer { .. }), "{error:?}");
    assert_eq!(stuck.count(), 2);
}

#[tokio::test]
async fn batches_send_the_documented_bodies_and_read_every_result_in_order() {
    let node = Stub::start(|seen| match seen.path.as_str() {
        "/mget" => Reply::Json(
            200,
            json!({"entries": [
                {"key": "a", "value": 1, "encoding": "integer", "version": 3},
                null,
                {"key": "c", "error": {"code": "quorum_unavailable", "message": "down"}},
            ]}),
        ),
        "/mset" => Reply::Json(
            200,
            json!({"results": [
                {"key": "a", "value": "x", "encoding": "string", "version": 4, "ttl_ms": 60000},
                {"key": "b", "error": {"code": "value_too_large", "message": "big"}},
            ]}),
        ),
        _ => Reply::error(404, "no_route"),
    })
    .await;
    let client = stubbed(node.addr);
    let read = client.mget(["a", "b", "c"]).await.unwrap();
    assert_eq!(read.len(), 3);
    assert_eq!(
        read[0].as_ref().unwrap().as_ref().map(|e| &e.value),
        Some(&Value::integer(1))
    );
    assert_eq!(read[1], Ok(None));
    let failed = read[2].as_ref().unwrap_err();
    assert_eq!(
        (failed.key.as_str(), failed.code),
        ("c", ErrorCode::QuorumUnavailable)
    );

    let written = client
        .mset([
            SetItem::new("a", "x").ttl(Duration::from_secs(60)),
            SetItem::from(("b", Value::binary(vec![1; 3]))),
        ])
        .await
        .unwrap();
    let entry: &Entry = written[0].as_ref().unwrap();
    assert_eq!(entry.ttl, Some(Duration::from_secs(60)));
    assert_eq!(
        written[1].as_ref().unwrap_err().code,
        ErrorCode::ValueTooLarge
    );

    let seen = node.seen();
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].json(), json!({"keys": ["a", "b", "c"]}));
    assert_eq!(
        seen[1].json(),
        json!({"entries": [
            {"key": "a", "value": "x", "encoding": "string", "ttl_ms": 60000},
            {"key": "b", "value": "AQEB", "encoding": "binary"},
        ]})
    );
    // An answer with fewer results than keys is not trusted.
    let short = Stub::start(|_| Reply::Json(200, json!({"entries": [null]}))).await;
    let error = Client::new([short.addr])
        .unwrap()
        .mget(["a", "b"])
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::BadAnswer { .. }), "{error:?}");
}

#[tokio::test]
async fn ttl_options_are_sent_and_the_remaining_ttl_is_read_back() {
    let node = Stub::start(|seen| {
        let mut entry = json!({"key": "s", "value": 7, "encoding": "integer", "version": 2});
        if seen.json().get("ttl_ms").is_some() {
            entry["ttl_ms"] = json!(9_999);
        }
        Reply::Json(200, entry)
    })
    .await;
    let client = stubbed(node.addr);
    let options = SetOptions::new().ttl(Duration::from_secs(10));
    let entry = client.set_with("s", 7, options).await.unwrap().unwrap();
    assert_eq!(entry.ttl, Some(Duration::from_millis(9_999)));
    assert_eq!(entry.value.encoding(), Encoding::Integer);
    let kept = SetOptions::new().keep_ttl().if_version(Version(1));
    assert_eq!(
        client.set_with("s", 7, kept).await.unwrap().unwrap().ttl,
        None
    );
    let seen = node.seen();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("PUT", "/kv/s")
    );
    assert_eq!(
        seen[0].json(),
        json!({"value": 7, "encoding": "integer", "ttl_ms": 10_000})
    );
    assert_eq!(
        seen[1].json(),
        json!({"value": 7, "encoding": "integer", "if_version": 1, "keep_ttl": true})
    );
}

#[tokio::test]
async fn something_that_is_not_a_kv_node_is_a_bad_answer() {
    let web = Stub::start(|_| Reply::Json(200, json!({"hello": "world"}))).await;
    let client = Client::new([web.addr]).unwrap();
    let error = client.get("k").await.unwrap_err();
    assert!(
        matches!(error, ClientError::BadAnswer { status: 200, .. }),
        "{error:?}"
    );
    assert!(!error.is_transient());
    assert!(Client::new(["not an address"]).is_err());
}

#[tokio::test]
async fn a_ttl_set_through_the_client_expires_through_every_node() {
    let cluster = cluster(3).await;
    let client = Client::new(cluster.addrs()).unwrap();
    let options = SetOptions::default().ttl(Duration::from_millis(300));
    let written = client
        .set_with("fleeting", "soon gone", options)
        .await
        .unwrap()
        .unwrap();
    assert!(written.ttl.is_some_and(|t| t <= Duration::from_millis(300)));
    let kept = client
        .set_with(
            "fleeting",
            "still soon gone",
            SetOptions::default().keep_ttl(),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(kept.ttl.is_some());
    for addr in cluster.addrs() {
        let one = only(addr);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut every = tokio::time::interval(Duration::from_millis(20));
        while one.get("fleeting").await.unwrap().is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{addr}: never expired"
            );
            every.tick().await;
        }
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn batch_items_carry_their_own_conditions_and_expiry() {
    let cluster = cluster(3).await;
    let client = Client::new(cluster.addrs()).unwrap();
    // Distinct keys: the items of a batch run concurrently, so two writes of one key race.
    let v1 = client.set("held", 1).await.unwrap().version;
    let stale = client.set("moved", 1).await.unwrap().version;
    client.set("moved", 2).await.unwrap();
    client.set("taken", "t").await.unwrap();
    let timed = SetOptions::new().ttl(Duration::from_secs(600));
    client.set_with("timed", "t", timed).await.unwrap().unwrap();
    let written = client
        .mset([
            SetItem::new("held", 2).if_version(v1),
            SetItem::new("moved", 3).if_version(stale),
            SetItem::new("fresh", "f").if_absent(),
            SetItem::new("taken", "again").if_absent(),
            SetItem::new("timed", "kept").keep_ttl(),
        ])
        .await
        .unwrap();
    assert_eq!(written[0].as_ref().unwrap().value, Value::integer(2));
    // A failed condition says what the key held instead.
    let moved = written[1].as_ref().unwrap_err();
    assert_eq!(moved.code, ErrorCode::VersionMismatch);
    let current = moved.current.as_ref().expect("the key's entry");
    assert_eq!(
        (&current.value, current.version),
        (&Value::integer(2), stale.next())
    );
    assert_eq!(written[2].as_ref().unwrap().version, Version(1));
    let taken = written[3].as_ref().unwrap_err();
    assert_eq!(taken.code, ErrorCode::KeyExists);
    assert_eq!(
        taken.current.as_ref().map(|e| &e.value),
        Some(&Value::string("t"))
    );
    let kept = written[4].as_ref().unwrap().ttl;
    assert!(
        kept.is_some_and(|t| t > Duration::from_secs(500)),
        "{kept:?}"
    );
    let read = client
        .mget(["held", "moved", "fresh", "taken"])
        .await
        .unwrap();
    let values: Vec<Value> = read
        .into_iter()
        .map(|r| r.unwrap().unwrap().value)
        .collect();
    assert_eq!(
        values,
        [
            Value::integer(2),
            Value::integer(2),
            Value::string("f"),
            Value::string("t")
        ]
    );
    drop(client);
    cluster.shutdown().await;
}

/// The client's batches and scans against a real cluster: items on every node, a failing item
/// answered in its place, and a scan that lists every key once.
#[tokio::test]
async fn batches_and_scans_through_the_client_span_every_node() {
    let cluster = LocalCluster::builder()
        .nodes(3)
        .configure(|c| c.replicas = 2)
        .start()
        .await
        .unwrap();
    let client = Client::new(cluster.addrs()).unwrap();
    let mut items: Vec<SetItem> = (0..60)
        .map(|i| SetItem::new(format!("batch:{i:02}"), i as i64))
        .collect();
    items.push(SetItem::new("batch:ttl", "brief").ttl(Duration::from_secs(600)));
    items.push(SetItem::new("\u{0}reserved", "no"));
    let written = client.mset(items).await.unwrap();
    assert_eq!(written.len(), 62);
    assert!(written[..61].iter().all(Result::is_ok), "{written:?}");
    assert_eq!(
        written[61].as_ref().unwrap_err().code,
        ErrorCode::InvalidKey
    );
    // Every node holds some of them.
    for n in 0..3 {
        assert!(cluster.node(n).store().len() > 10, "node {n}");
    }

    let keys = ["batch:07", "batch:missing", "batch:ttl", "batch:59"];
    let read = client.mget(keys).await.unwrap();
    assert_eq!(
        read[0].as_ref().unwrap().as_ref().unwrap().value,
        Value::integer(7)
    );
    assert_eq!(read[1].as_ref().unwrap(), &None);
    let ttl = read[2].as_ref().unwrap().as_ref().unwrap().ttl;
    assert!(ttl.is_some_and(|t| t > Duration::from_secs(500)), "{ttl:?}");
    assert_eq!(
        read[3].as_ref().unwrap().as_ref().unwrap().value,
        Value::integer(59)
    );

    let mut listed: Vec<String> = client.scan("batch:").try_collect().await.unwrap();
    listed.sort();
    let mut expected: Vec<String> = (0..60).map(|i| format!("batch:{i:02}")).collect();
    expected.push("batch:ttl".into());
    expected.sort();
    assert_eq!(listed, expected);
    // Pages of 7: the same keys, once each, in more pages.
    let pages_before = scan_pages(&cluster);
    let mut by_seven: Vec<String> = client
        .scan_with_limit("batch:", 7)
        .try_collect()
        .await
        .unwrap();
    by_seven.sort();
    assert_eq!(by_seven, expected);
    assert!(scan_pages(&cluster) - pages_before >= 9);
    let refused = client
        .scan_with_limit("batch:", 0)
        .try_collect::<Vec<_>>()
        .await;
    assert_eq!(refused.unwrap_err().code(), Some(ErrorCode::InvalidRequest));
    cluster.shutdown().await;
}

/// Scan pages served by the cluster's nodes so far.
fn scan_pages(cluster: &LocalCluster) -> u64 {
    (0..cluster.len())
        .map(|i| cluster.node(i).metrics().snapshot().scans)
        .sum()
}
