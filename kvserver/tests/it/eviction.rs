//! Cache mode (`--eviction lru|lfu`): a node over its memory budget evicts keys through
//! replicated deletes, so writes keep succeeding, bytes stay within a bound, reads never see
//! an evicted value come back, and the keys that go are the cold ones.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::StatusCode;
use kvcore::{Ballot, ErrorCode, Eviction, Register, StoreConfig, Value, Version};
use kvnet::rpc::Evict;
use kvserver::LocalCluster;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value as Json};

use crate::util::{node_info, peer_header, peers_of, poll, Http};

const TIMEOUT: Duration = Duration::from_secs(30);
const BUDGET: u64 = 256 << 10;
const VALUE: usize = 1000;

async fn cache(nodes: usize, policy: Eviction) -> LocalCluster {
    LocalCluster::builder()
        .nodes(nodes)
        .configure(|c| {
            c.replicas = 3;
            c.seed_keys = false;
            c.max_memory = Some(BUDGET);
            c.eviction = policy;
        })
        .start()
        .await
        .expect("cluster starts")
}

/// What new writes are admitted up to in cache mode: the budget less the sixteenth left to
/// the accepts of writes admitted already.
fn admitted() -> u64 {
    StoreConfig {
        max_memory: Some(BUDGET),
        eviction: Eviction::Lru,
        ..StoreConfig::default()
    }
    .admission()
    .unwrap()
}

/// A value that reads back as `n`: the number, then padding to [`VALUE`] bytes.
fn value(n: u64) -> String {
    format!("{n:012}-{}", "x".repeat(VALUE - 13))
}

fn number(got: &Json) -> u64 {
    let text = got["value"].as_str().expect("a string value");
    text[..12].parse().expect("written by `value`")
}

async fn put(http: &Http, url: &str, key: &str, n: u64) -> (StatusCode, Json) {
    let body = json!({ "key": key, "value": value(n) }).to_string();
    http.post(&format!("{url}/set"), &body).await
}

/// The value `key` reads as through `url`, `None` if it is missing.
async fn get(http: &Http, url: &str, key: &str) -> Option<u64> {
    let (status, got) = http.get(&format!("{url}/get/{key}")).await;
    match status {
        StatusCode::OK => Some(number(&got)),
        StatusCode::NOT_FOUND => None,
        other => panic!("read of {key} through {url}: {other} {got}"),
    }
}

/// Watches every node's byte count until stopped; the highest seen.
struct Watcher {
    highest: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    fn start(cluster: &LocalCluster) -> Watcher {
        let stores: Vec<_> = (0..cluster.len())
            .map(|i| cluster.node(i).clone())
            .collect();
        let highest = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (highest.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(1));
            while !s.load(Ordering::Relaxed) {
                every.tick().await;
                for node in &stores {
                    h.fetch_max(node.store().used_bytes(), Ordering::Relaxed);
                }
            }
        });
        Watcher {
            highest,
            stop,
            task,
        }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        self.highest.load(Ordering::Relaxed)
    }
}

/// Polls until every node is back under the limit new writes are admitted against.
async fn until_under_admission(cluster: &LocalCluster) {
    poll("every node under its admission limit", TIMEOUT, || async {
        (0..cluster.len())
            .all(|i| cluster.node(i).store().used_bytes() <= admitted())
            .then_some(())
    })
    .await;
}

/// `/stats` of every node: the policy each shows, and the evictions they made in all.
async fn evictions(http: &Http, cluster: &LocalCluster, policy: &str) -> u64 {
    let mut total = 0;
    for i in 0..cluster.len() {
        let (status, stats) = http.get(&format!("{}/stats", cluster.url(i))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(stats["eviction"], policy, "{stats}");
        assert_eq!(stats["max_memory"], BUDGET, "{stats}");
        total += stats["requests"]["evicted"].as_u64().expect("a counter");
    }
    total
}

#[tokio::test]
async fn a_cache_over_its_budget_keeps_taking_writes_and_never_serves_an_evicted_value_again() {
    const WRITERS: u64 = 8;
    const KEYS_PER_WRITER: u64 = 60;
    const ROUNDS: u64 = 3;
    let cluster = cache(3, Eviction::Lru).await;
    let http = Http::new();
    let urls: Vec<String> = (0..3).map(|i| cluster.url(i)).collect();
    // Per key, the highest value a completed write or read has shown: a read that starts
    // later must not return less (a missing key is fine: it was evicted).
    let known: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let refused: Arc<Mutex<Vec<String>>> = Arc::default();
    // Writes that ended 504 (their outcome unknown: an accept lost or refused under load), by
    // key and value. Not a refusal, but not acknowledged either.
    let unknown: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let watcher = Watcher::start(&cluster);
    let writing = Arc::new(AtomicBool::new(true));

    let mut readers = Vec::new();
    for r in 0..4u64 {
        let (http, urls, known, writing) =
            (http.clone(), urls.clone(), known.clone(), writing.clone());
        readers.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(r);
            let mut reads = 0;
            while writing.load(Ordering::Relaxed) {
                let key = format!(
                    "w{}-{}",
                    rng.gen_range(0..WRITERS),
                    rng.gen_range(0..KEYS_PER_WRITER)
                );
                let floor = known.lock().unwrap().get(&key).copied();
                let url = &urls[rng.gen_range(0..urls.len())];
                if let Some(got) = get(&http, url, &key).await {
                    assert!(
                        floor.is_none_or(|f| got >= f),
                        "{key} read {got} after {floor:?} was seen"
                    );
                    let mut known = known.lock().unwrap();
                    let seen = known.entry(key).or_default();
                    *seen = (*seen).max(got);
                }
                reads += 1;
            }
            reads
        }));
    }
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (http, urls, known, refused, unknown) = (
            http.clone(),
            urls.clone(),
            known.clone(),
            refused.clone(),
            unknown.clone(),
        );
        writers.push(tokio::spawn(async move {
            for round in 1..=ROUNDS {
                for k in 0..KEYS_PER_WRITER {
                    let key = format!("w{w}-{k}");
                    let url = &urls[((w + k + round) % 3) as usize];
                    let (status, answer) = put(&http, url, &key, round).await;
                    if status == StatusCode::OK {
                        let mut known = known.lock().unwrap();
                        let seen = known.entry(key).or_default();
                        *seen = (*seen).max(round);
                    } else if status == StatusCode::GATEWAY_TIMEOUT {
                        unknown.lock().unwrap().push((key, round));
                    } else {
                        refused
                            .lock()
                            .unwrap()
                            .push(format!("{key}: {status} {answer}"));
                    }
                }
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    writing.store(false, Ordering::Relaxed);
    let mut reads = 0;
    for reader in readers {
        reads += reader.await.unwrap();
    }
    let refused = refused.lock().unwrap().clone();
    assert!(
        refused.is_empty(),
        "{} writes refused: {refused:?}",
        refused.len()
    );
    let unknown = unknown.lock().unwrap().clone();
    let writes = (WRITERS * KEYS_PER_WRITER * ROUNDS) as usize;
    assert!(
        unknown.len() * 100 <= writes,
        "{} of {writes} writes ended with an unknown outcome: {unknown:?}",
        unknown.len()
    );
    assert!(reads > 0);

    // Five times the budget was written to every node, over twice as many keys as fit; the
    // nodes stayed within their budget all along, and are back under the admission limit once
    // the writes stop.
    let written = WRITERS * KEYS_PER_WRITER * ROUNDS * VALUE as u64;
    assert!(written > 5 * BUDGET);
    until_under_admission(&cluster).await;
    let highest = watcher.stop().await;
    assert!(highest <= BUDGET, "{highest} bytes against {BUDGET}");
    assert!(evictions(&http, &cluster, "lru").await > 0);

    // Every key reads as its last write or as missing, the same through every node.
    let mut held = 0;
    for w in 0..WRITERS {
        for k in 0..KEYS_PER_WRITER {
            let key = format!("w{w}-{k}");
            let first = get(&http, &urls[0], &key).await;
            // The last write, or the one before it if the last one's outcome is unknown.
            let last_unknown = unknown.contains(&(key.clone(), ROUNDS));
            assert!(
                first.is_none_or(|v| v == ROUNDS || (last_unknown && v == ROUNDS - 1)),
                "{key}: {first:?}"
            );
            for url in &urls[1..] {
                assert_eq!(get(&http, url, &key).await, first, "{key}");
            }
            held += usize::from(first.is_some());
        }
    }
    // Evicted down to the low-water mark, but not much further.
    let entry = kvcore::store::charge("w0-00", VALUE + 2) as usize;
    assert!(held > BUDGET as usize / entry / 2, "{held} keys left");
    cluster.shutdown().await;
}

/// Reads the `hot` keys once each, through every node in turn: each replica sees the reads it
/// is asked about.
async fn read_hot(http: &Http, urls: &[String], hot: u64, round: u64) {
    for h in 0..hot {
        let url = &urls[((h + round) % urls.len() as u64) as usize];
        get(http, url, &format!("hot-{h}")).await;
    }
}

/// Writes `hot` keys, reads them `warm` times each, then writes `cold` keys through `writers`
/// tasks while one task keeps reading the hot keys; returns how many hot keys are left.
async fn hot_keys_left(cluster: &LocalCluster, hot: u64, warm: u64, cold: u64) -> usize {
    let http = Http::new();
    let urls: Vec<String> = (0..cluster.len()).map(|i| cluster.url(i)).collect();
    for h in 0..hot {
        let (status, answer) = put(&http, &urls[0], &format!("hot-{h}"), 1).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    // Warm-up reads, a few rounds at a time.
    let rounds: Vec<u64> = (0..warm).collect();
    for some in rounds.chunks(8) {
        let reads = some.iter().map(|&round| read_hot(&http, &urls, hot, round));
        futures_util::future::join_all(reads).await;
    }
    let writing = Arc::new(AtomicBool::new(true));
    let reader = {
        let (http, urls, writing) = (http.clone(), urls.clone(), writing.clone());
        tokio::spawn(async move {
            let mut round = 0;
            while writing.load(Ordering::Relaxed) {
                read_hot(&http, &urls, hot, round).await;
                round += 1;
            }
        })
    };
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (http, urls) = (http.clone(), urls.clone());
            tokio::spawn(async move {
                for c in (w..cold).step_by(4) {
                    let url = &urls[(c % urls.len() as u64) as usize];
                    let (status, answer) = put(&http, url, &format!("cold-{c}"), 1).await;
                    assert_eq!(status, StatusCode::OK, "cold-{c}: {answer}");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    writing.store(false, Ordering::Relaxed);
    reader.await.unwrap();
    until_under_admission(cluster).await;
    let mut left = 0;
    for h in 0..hot {
        left += usize::from(get(&http, &urls[0], &format!("hot-{h}")).await.is_some());
    }
    let mut cold_left = 0;
    for c in 0..cold {
        cold_left += usize::from(get(&http, &urls[0], &format!("cold-{c}")).await.is_some());
    }
    // The cold keys are far more than fit: most of them went.
    assert!(
        cold_left < cold as usize / 2,
        "{cold_left} of {cold} cold keys left"
    );
    left
}

#[tokio::test]
async fn with_lru_the_keys_read_often_survive_a_flood_of_cold_writes() {
    let cluster = cache(3, Eviction::Lru).await;
    let left = hot_keys_left(&cluster, 20, 2, 1200).await;
    assert!(left >= 18, "{left} of 20 hot keys left");
    assert!(evictions(&Http::new(), &cluster, "lru").await > 0);
    cluster.shutdown().await;
}

#[tokio::test]
async fn with_lfu_the_keys_read_most_survive_a_flood_of_cold_writes() {
    let cluster = cache(3, Eviction::Lfu).await;
    // Two hundred reads each before the flood, about 130 on each replica (a read asks a
    // majority): the logarithmic counters are then at 7 or more on every replica but a few in
    // a million, above a new key's 5 or 6. With forty, one hot key's counter in twelve stays at
    // 6 on some replica, where that replica's evictor cannot tell it from a cold key.
    let left = hot_keys_left(&cluster, 20, 200, 1200).await;
    assert!(left >= 18, "{left} of 20 hot keys left");
    assert!(evictions(&Http::new(), &cluster, "lfu").await > 0);
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_lone_cache_node_evicts_too_and_refuses_only_what_cannot_fit() {
    let cluster = LocalCluster::builder()
        .nodes(1)
        .configure(|c| {
            c.replicas = 1;
            c.seed_keys = false;
            c.max_memory = Some(BUDGET);
            c.eviction = Eviction::Lfu;
            // Long enough that a write waiting for room it cannot get would outlast the
            // test's patience below.
            c.op_timeout_ms = 600_000;
        })
        .start()
        .await
        .expect("cluster starts");
    let http = Http::new();
    let url = cluster.url(0);
    let watcher = Watcher::start(&cluster);
    for n in 0..1000 {
        let (status, answer) = put(&http, &url, &format!("k{n}"), n).await;
        assert_eq!(status, StatusCode::OK, "k{n}: {answer}");
    }
    until_under_admission(&cluster).await;
    assert!(watcher.stop().await <= BUDGET);
    assert!(evictions(&http, &cluster, "lfu").await > 0);
    assert!(cluster.node(0).store().len() < 300);
    // An entry charged more than half the admission limit is refused at once: evicting is not
    // done for it (the evictor would not make that much room, so waiting would be in vain).
    // One just under it is made room for.
    let entry = |key: &str, charged: u64| {
        let len = charged as usize - kvcore::store::charge(key, 0) as usize;
        json!({"key": key, "value": "x".repeat(len)}).to_string()
    };
    let half = admitted() / 2;
    for (key, charged, status) in [
        ("over", half + 1, StatusCode::INSUFFICIENT_STORAGE),
        ("under", half, StatusCode::OK),
    ] {
        let (target, body) = (format!("{url}/set"), entry(key, charged));
        let (got, answer) = tokio::time::timeout(TIMEOUT, http.post(&target, &body))
            .await
            .unwrap_or_else(|_| panic!("{key}: still waiting for room after {TIMEOUT:?}"));
        assert_eq!(got, status, "{key}: {answer}");
    }
    cluster.shutdown().await;
}

/// An eviction names the state it sampled by version and digest, and removes only that: a
/// different value at the same version (a replica's copy that was never chosen, while another
/// write was chosen at its version) stays, through the peer protocol over HTTP.
#[tokio::test]
async fn an_eviction_removes_only_the_state_it_names() {
    let cluster = cache(3, Eviction::Lru).await;
    let http = Http::new();
    let (status, written) = http
        .post(
            &format!("{}/set", cluster.url(0)),
            &json!({"key": "k", "value": "chosen"}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{written}");
    let version = Version(written["version"].as_u64().expect("a version"));
    let state = |value: &str| Register {
        ballot: Ballot::ZERO,
        version,
        value: Some(Value::string(value)),
        expires: None,
    };
    let peers = peers_of(&cluster);
    let to = node_info(&cluster, 1);
    let header = peer_header(&cluster, 2);
    let evict = |version: Version, digest: u64| Evict {
        key: "k".into(),
        version,
        digest,
    };

    // Another state at the same version, and the chosen state at another version: kept.
    for wrong in [
        evict(version, state("never chosen").digest()),
        evict(Version(version.0 + 1), state("chosen").digest()),
    ] {
        let deleted = peers.call(&to, &header, &wrong).await.unwrap();
        assert!(!deleted, "{wrong:?}");
    }
    for n in 0..3 {
        let (status, got) = http.get(&format!("{}/get/k", cluster.url(n))).await;
        assert_eq!(
            (status, got["value"].as_str()),
            (StatusCode::OK, Some("chosen"))
        );
    }
    // The state it names: removed, on every node.
    let deleted = peers
        .call(&to, &header, &evict(version, state("chosen").digest()))
        .await
        .unwrap();
    assert!(deleted);
    for n in 0..3 {
        let (status, got) = http.get(&format!("{}/get/k", cluster.url(n))).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "node {n}: {got}");
    }
    // The cluster's own records are not a peer's to evict.
    let map = Evict {
        key: "\u{0}cluster-map".into(),
        version: Version(1),
        digest: 0,
    };
    let refused = peers.call(&to, &header, &map).await.unwrap_err();
    assert_eq!(
        refused.remote_code(),
        Some(ErrorCode::InvalidKey),
        "{refused}"
    );
    cluster.shutdown().await;
}
