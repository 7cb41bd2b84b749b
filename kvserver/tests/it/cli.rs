//! The key commands of the `kvserver` binary, run as a process against an in-process cluster
//! and against stub nodes.

use std::net::SocketAddr;

use serde_json::{json, Value as Json};
use tokio::process::Command;

use crate::stub::{closed_port, Reply, Stub};
use kvserver::{Client, LocalCluster};

/// What a run of the binary left.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The output's one line as JSON.
    fn json(&self) -> Json {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// Runs `kvserver ARGS` with `KV_NODE` set to `node` (unset when `None`).
async fn kvserver_with(node: Option<String>, args: &[&str]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kvserver"));
    command.args(args).kill_on_drop(true);
    match node {
        Some(node) => command.env("KV_NODE", node),
        None => command.env_remove("KV_NODE"),
    };
    let output = command.output().await.unwrap();
    Run {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// Runs `kvserver ARGS` against `node`.
async fn kvserver(node: SocketAddr, args: &[&str]) -> Run {
    kvserver_with(Some(node.to_string()), args).await
}

#[tokio::test]
async fn key_commands_print_readable_lines_and_exit_0() {
    let cluster = LocalCluster::builder().nodes(2).start().await.unwrap();
    let node = cluster.addr(1);
    let set = kvserver(node, &["set", "visits", "41", "--encoding", "integer"]).await;
    assert_eq!(
        (set.code, set.stdout.as_str()),
        (Some(0), "visits = 41 (integer, version 1)\n"),
        "{set:?}"
    );
    let incr = kvserver(node, &["incr", "visits"]).await;
    assert_eq!(
        incr.stdout, "visits = 42 (integer, version 2)\n",
        "{incr:?}"
    );
    let down = kvserver(node, &["incr", "visits", "--by", "-50"]).await;
    assert_eq!(
        down.stdout, "visits = -8 (integer, version 3)\n",
        "{down:?}"
    );
    let get = kvserver(node, &["get", "visits"]).await;
    assert_eq!(
        (get.code, get.stdout.as_str()),
        (Some(0), "visits = -8 (integer, version 3)\n")
    );

    let text = kvserver(node, &["set", "greeting", "hello world"]).await;
    assert_eq!(
        text.stdout,
        "greeting = \"hello world\" (string, version 1)\n"
    );
    let doc = kvserver(
        node,
        &["set", "doc", r#"{"b": 1, "a": [true]}"#, "-e", "json"],
    )
    .await;
    assert_eq!(
        doc.stdout,
        "doc = {\"a\":[true],\"b\":1} (json, version 1)\n"
    );
    let negative = kvserver(node, &["set", "t", "-1.5", "-e", "float"]).await;
    assert_eq!(
        negative.stdout, "t = -1.5 (float, version 1)\n",
        "{negative:?}"
    );

    let deleted = kvserver(node, &["delete", "visits"]).await;
    assert_eq!(
        (deleted.code, deleted.stdout.as_str()),
        (Some(0), "deleted visits (version 3)\n")
    );
    // --node wins over KV_NODE.
    let closed = closed_port();
    let flag = kvserver_with(
        Some(closed.addr().to_string()),
        &["get", "greeting", "--node", &node.to_string()],
    )
    .await;
    assert_eq!(flag.code, Some(0), "{flag:?}");
    // Several nodes: the first is down, the next answers.
    let nodes = format!("{},{}", closed.addr(), cluster.addr(0));
    let failover = kvserver_with(None, &["get", "greeting", "--node", &nodes]).await;
    assert_eq!(failover.code, Some(0), "{failover:?}");
    cluster.shutdown().await;
}

#[tokio::test]
async fn json_output_is_the_nodes_answer() {
    let cluster = LocalCluster::builder().nodes(2).start().await.unwrap();
    let node = cluster.addr(0);
    let set = kvserver(
        node,
        &["set", "blob", "3q2+7w==", "--encoding", "binary", "--json"],
    )
    .await;
    let entry = json!({"key": "blob", "value": "3q2+7w==", "encoding": "binary", "version": 1});
    assert_eq!(set.json(), entry);
    assert_eq!(
        kvserver(node, &["get", "blob", "--json"]).await.json(),
        entry
    );
    let incr = kvserver(node, &["incr", "n", "--by", "3", "--json"]).await;
    assert_eq!(
        incr.json(),
        json!({"key": "n", "value": 3, "encoding": "integer", "version": 1})
    );
    let deleted = kvserver(node, &["delete", "blob", "--json"]).await;
    assert_eq!(
        deleted.json(),
        json!({"key": "blob", "deleted": true, "version": 1})
    );
    cluster.shutdown().await;
}

#[tokio::test]
async fn missing_keys_and_failed_conditions_exit_1_with_the_reason_on_stderr() {
    let cluster = LocalCluster::builder().nodes(2).start().await.unwrap();
    let node = cluster.addr(0);
    let get = kvserver(node, &["get", "nope"]).await;
    assert_eq!((get.code, get.stdout.as_str()), (Some(1), ""));
    assert_eq!(get.stderr, "kvserver: key \"nope\" not found\n");
    assert_eq!(kvserver(node, &["delete", "nope"]).await.code, Some(1));

    kvserver(node, &["set", "v", "1", "-e", "integer"]).await;
    let exists = kvserver(node, &["set", "v", "2", "-e", "integer", "--if-absent"]).await;
    assert_eq!(exists.code, Some(1), "{exists:?}");
    assert!(exists.stderr.contains("key_exists"), "{exists:?}");
    assert!(
        exists
            .stderr
            .contains("it holds v = 1 (integer, version 1)"),
        "{exists:?}"
    );
    let stale = kvserver(
        node,
        &["set", "v", "2", "-e", "integer", "--if-version", "7"],
    )
    .await;
    assert_eq!(stale.code, Some(1));
    assert!(stale.stderr.contains("version_mismatch"), "{stale:?}");
    let fresh = kvserver(
        node,
        &["set", "v", "2", "-e", "integer", "--if-version", "1"],
    )
    .await;
    assert_eq!(fresh.stdout, "v = 2 (integer, version 2)\n", "{fresh:?}");
    cluster.shutdown().await;
}

#[tokio::test]
async fn usage_errors_refusals_and_closed_ports_exit_2() {
    let cluster = LocalCluster::builder().nodes(1).start().await.unwrap();
    let node = cluster.addr(0);
    let closed = closed_port();
    let unreachable = kvserver(closed.addr(), &["get", "a"]).await;
    assert_eq!(unreachable.code, Some(2), "{unreachable:?}");
    assert!(
        unreachable.stderr.contains("cannot reach"),
        "{unreachable:?}"
    );
    for args in [
        &["set", "a", "1", "--ttl", "5x"][..],
        &["set", "a", "1", "--ttl", "0s"],
        &["set", "a", "1", "--if-version", "1", "--if-absent"],
        &["set", "a", "1", "--ttl", "1s", "--keep-ttl"],
        &["set", "a", "1", "--encoding", "decimal"],
        &["get"],
    ] {
        let run = kvserver(node, args).await;
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        assert!(!run.stderr.is_empty());
    }
    let bad = kvserver(node, &["set", "a", "many", "--encoding", "integer"]).await;
    assert_eq!(bad.code, Some(2));
    assert!(bad.stderr.contains("not an integer"), "{bad:?}");
    kvserver(node, &["set", "s", "text"]).await;
    let refused = kvserver(node, &["incr", "s"]).await;
    assert_eq!(refused.code, Some(2));
    assert!(
        refused.stderr.contains("not_an_integer, HTTP 400"),
        "{refused:?}"
    );
    cluster.shutdown().await;
}

#[tokio::test]
async fn unavailable_clusters_and_unknown_outcomes_exit_3() {
    let busy = Stub::failing(503, "quorum_unavailable").await;
    let run = kvserver(busy.addr, &["get", "a"]).await;
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(
        run.stderr.contains("stub says quorum_unavailable"),
        "{run:?}"
    );
    let unknown = Stub::failing(504, "outcome_unknown").await;
    let run = kvserver(unknown.addr, &["set", "a", "b"]).await;
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(
        run.stderr.contains("may or may not have been applied"),
        "{run:?}"
    );
    assert_eq!(unknown.count(), 1);
    // Other failures on the server's side are the cluster's too.
    for (status, code) in [(500, "internal"), (507, "memory_full")] {
        let failing = Stub::failing(status, code).await;
        let run = kvserver(failing.addr, &["set", "a", "b"]).await;
        assert_eq!(run.code, Some(3), "{status}: {run:?}");
        assert!(run.stderr.contains(&format!("HTTP {status}")), "{run:?}");
    }
}

#[tokio::test]
async fn a_request_refused_as_bad_exits_2() {
    let too_large = Stub::failing(413, "value_too_large").await;
    let run = kvserver(too_large.addr, &["set", "a", "b"]).await;
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("value_too_large, HTTP 413"), "{run:?}");
    let help = kvserver_with(None, &["keys", "--help"]).await;
    assert!(
        help.stdout.contains("Exit status: 0 on success"),
        "{help:?}"
    );
}

#[tokio::test]
async fn ttls_are_sent_in_milliseconds_and_shown_as_time_left() {
    let node = Stub::start(|seen| {
        Reply::Json(
            200,
            json!({"key": "s", "value": "x", "encoding": "string", "version": 1,
                   "ttl_ms": seen.json()["ttl_ms"].as_u64().unwrap_or(0) - 500}),
        )
    })
    .await;
    // The time left is shown to the nearest second: 89.5 s is 1m30s.
    let run = kvserver(node.addr, &["set", "s", "x", "--ttl", "1m30s"]).await;
    assert_eq!(
        run.stdout, "s = \"x\" (string, version 1, expires in 1m30s)\n",
        "{run:?}"
    );
    let run = kvserver(node.addr, &["set", "s", "x", "--ttl", "1500ms", "--json"]).await;
    assert_eq!(run.json()["ttl_ms"], 1000);
    let seen = node.seen();
    assert_eq!(seen[0].json()["ttl_ms"], 90_000);
    assert_eq!(seen[1].json()["ttl_ms"], 1500);
}

#[tokio::test]
async fn keys_are_listed_page_by_page_up_to_the_limit() {
    let pages = Stub::start(|seen| {
        let (path, query) = seen.path.split_once('?').unwrap_or((&seen.path, ""));
        assert_eq!(path, "/keys");
        let cursor = query
            .split('&')
            .find_map(|p| p.strip_prefix("cursor="))
            .unwrap_or("0");
        let page = match cursor {
            "0" => json!({"keys": ["k1", "k2"], "cursor": "1"}),
            "1" => json!({"keys": ["k3"], "cursor": "2"}),
            _ => json!({"keys": ["k4"], "cursor": null}),
        };
        Reply::Json(200, page)
    })
    .await;
    let all = kvserver(pages.addr, &["keys"]).await;
    assert_eq!(
        (all.code, all.stdout.as_str()),
        (Some(0), "k1\nk2\nk3\nk4\n")
    );
    let json = kvserver(pages.addr, &["keys", "--prefix", "k", "--json"]).await;
    assert_eq!(
        json.json(),
        json!({"keys": ["k1", "k2", "k3", "k4"], "cursor": null})
    );
    let limited = kvserver(pages.addr, &["keys", "--limit", "3", "--json"]).await;
    assert_eq!(
        limited.json(),
        json!({"keys": ["k1", "k2", "k3"], "cursor": "2"})
    );
    // `keys` also asks the first node that answers for the cluster's members.
    let paths: Vec<String> = pages
        .seen()
        .into_iter()
        .map(|s| s.path)
        .filter(|p| p != "/cluster")
        .collect();
    assert_eq!(
        &paths[3..],
        [
            "/keys?prefix=k",
            "/keys?prefix=k&cursor=1",
            "/keys?prefix=k&cursor=2",
            "/keys?limit=3",
            "/keys?limit=1&cursor=1",
        ]
    );
}

#[tokio::test]
async fn the_existing_commands_still_parse() {
    let help = kvserver_with(None, &["--help"]).await;
    for command in [
        "cluster", "node", "admin", "get", "set", "delete", "incr", "keys",
    ] {
        assert!(
            help.stdout.contains(&format!("  {command} ")),
            "{command}: {help:?}"
        );
    }
    let closed = closed_port();
    let admin = kvserver_with(
        None,
        &["admin", "--node", &closed.addr().to_string(), "status"],
    )
    .await;
    assert_eq!(admin.code, Some(2), "{admin:?}");
}

/// Writes `count` keys `{prefix}{i:04}` through a client of the whole cluster, in batches.
async fn write_keys(cluster: &LocalCluster, prefix: &str, count: usize) -> Vec<String> {
    let client = Client::new(cluster.addrs()).unwrap();
    let keys: Vec<String> = (0..count).map(|i| format!("{prefix}{i:04}")).collect();
    let written = client
        .mset(keys.iter().map(|k| (k.clone(), "v")))
        .await
        .unwrap();
    assert!(written.iter().all(Result::is_ok), "{written:?}");
    keys
}

#[tokio::test]
async fn keys_lists_a_clusters_keys_over_several_pages() {
    let cluster = crate::util::unreplicated(3).await;
    // More than two of the node's default pages (100 keys), held one copy each: every node
    // holds some, so every page gathers keys from every node.
    let mut expected = write_keys(&cluster, "user:", 250).await;
    write_keys(&cluster, "other:", 20).await;
    for n in 0..cluster.len() {
        assert!(cluster.node(n).store().len() > 30, "node {n}");
    }
    expected.sort();
    let node = cluster.addr(1);

    let listed = kvserver(node, &["keys", "--prefix", "user:"]).await;
    assert_eq!(listed.code, Some(0), "{listed:?}");
    let mut lines: Vec<String> = listed.stdout.lines().map(str::to_owned).collect();
    lines.sort();
    assert_eq!(lines, expected);

    let json = kvserver(node, &["keys", "--prefix", "user:", "--json"]).await;
    let answer = json.json();
    assert_eq!(answer["cursor"], Json::Null, "{json:?}");
    let mut keys: Vec<String> = serde_json::from_value(answer["keys"].clone()).unwrap();
    keys.sort();
    assert_eq!(keys, expected);

    // A limit stops part-way and says where the rest starts; nothing is listed twice.
    let first = kvserver(
        node,
        &["keys", "--prefix", "user:", "--limit", "120", "--json"],
    )
    .await;
    let first = first.json();
    let head: Vec<String> = serde_json::from_value(first["keys"].clone()).unwrap();
    assert_eq!(head.len(), 120);
    assert!(first["cursor"].is_string(), "{first}");
    let client = Client::new([node]).unwrap();
    let rest = client
        .keys_page("user:", Some(1000), first["cursor"].as_str())
        .await
        .unwrap();
    let mut all: Vec<String> = head.into_iter().chain(rest.keys).collect();
    all.sort();
    assert_eq!(all, expected);

    let empty = kvserver(node, &["keys", "--prefix", "nobody:", "--json"]).await;
    assert_eq!(empty.json(), json!({"keys": [], "cursor": null}));
    let zero = kvserver(node, &["keys", "--limit", "0"]).await;
    assert_eq!((zero.code, zero.stdout.as_str()), (Some(2), ""), "{zero:?}");
    assert!(zero.stderr.contains("at least 1"), "{zero:?}");
    drop(client);
    cluster.shutdown().await;
}

#[tokio::test]
async fn set_with_a_ttl_shows_the_time_left_and_the_key_keeps_it() {
    let cluster = LocalCluster::builder().nodes(3).start().await.unwrap();
    let node = cluster.addr(0);
    let set = kvserver(
        node,
        &["set", "session:1", "abc", "--ttl", "30m", "--if-absent"],
    )
    .await;
    // The TTL left when the node answered, to the nearest second: 30m0s unless the machine
    // took over half a second between applying the write and answering.
    let written =
        |left: &str| format!("session:1 = \"abc\" (string, version 1, expires in {left})\n");
    assert_eq!(set.code, Some(0), "{set:?}");
    assert!(
        [written("30m0s"), written("29m59s")].contains(&set.stdout),
        "{set:?}"
    );
    let get = kvserver(cluster.addr(2), &["get", "session:1", "--json"]).await;
    let ttl_ms = get.json()["ttl_ms"].as_u64().unwrap();
    assert!((1_790_000..=1_800_000).contains(&ttl_ms), "{get:?}");
    // --keep-ttl keeps it; a plain write drops it.
    let kept = kvserver(node, &["set", "session:1", "abd", "--keep-ttl", "--json"]).await;
    assert!(kept.json()["ttl_ms"].as_u64().is_some(), "{kept:?}");
    let plain = kvserver(node, &["set", "session:1", "abe", "--json"]).await;
    assert_eq!(plain.json().get("ttl_ms"), None, "{plain:?}");
    cluster.shutdown().await;
}

#[tokio::test]
async fn keys_prints_each_page_before_asking_for_the_next() {
    // The second page never comes: what was printed before is the first page alone.
    let broken = Stub::start(|seen| {
        if seen.path.contains("cursor=") {
            Reply::Close
        } else {
            Reply::Json(200, json!({"keys": ["k1", "k\"2"], "cursor": "1"}))
        }
    })
    .await;
    let run = kvserver(broken.addr, &["keys"]).await;
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (Some(2), "k1\nk\"2\n"),
        "{run:?}"
    );
    assert!(run.stderr.contains("cannot reach"), "{run:?}");
    // With --json, the object so far, unfinished (the exit status says the listing failed).
    let run = kvserver(broken.addr, &["keys", "--json"]).await;
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (Some(2), r#"{"keys":["k1","k\"2""#),
        "{run:?}"
    );
}
