//! Concurrent clients under injected faults; every key's history must be linearizable.
//!
//! Each seed runs a five-node in-process cluster at `R = 3` (other replication factors too, in
//! fewer seeds) whose peer messages pass through
//! [`Faults`]: random request and reply loss, delays, partitions, and crash-restarts of one node
//! at a time. Several clients per key write unique values, compare-and-set, delete, increment and
//! read through random nodes; every operation is recorded with its real-time interval, timeouts
//! as unknown outcomes. After the faults stop and every node is back, each key is read through
//! every node, and the whole history is checked against a sequential register.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kvcore::{NodeId, Precondition, Value};
use kvnet::Faults;
use kvserver::{BatchWrite, Error, LocalCluster, Node, Transport, WriteOptions};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::checker::{check_all, History, Observed, Op, Outcome};

const NODES: usize = 5;
/// Keys written with unique values (sets, compare-and-sets, deletes).
const REGISTERS: [&str; 3] = ["reg-a", "reg-b", "reg-c"];
/// Keys only incremented, so a duplicated or lost increment shows.
const COUNTERS: [&str; 1] = ["counter"];
const CLIENTS: usize = 8;
const OPS_PER_CLIENT: usize = 40;

/// Seeded choices, so a failing seed replays.
struct Choices(SmallRng);

impl Choices {
    fn new(seed: u64) -> Self {
        Choices(SmallRng::seed_from_u64(seed))
    }

    fn below(&mut self, n: usize) -> usize {
        self.0.gen_range(0..n)
    }

    fn chance(&mut self, p: f64) -> bool {
        self.0.gen_bool(p)
    }
}

/// How an error answer counts for the checker: definitely not applied, or maybe applied.
fn classify(e: &Error) -> Outcome {
    use kvcore::ErrorCode as C;
    match e.code() {
        C::QuorumUnavailable
        | C::OwnerUnavailable
        | C::Recovering
        | C::MemoryFull
        | C::Misdirected
        | C::Overloaded => Outcome::Fail,
        _ => Outcome::Unknown,
    }
}

/// The nodes clients may talk to: crashed ones are taken out while they are down.
type Live = Arc<RwLock<Vec<Option<Arc<Node>>>>>;

/// The keys one run's clients use.
#[derive(Clone, Copy)]
struct Keys {
    registers: &'static [&'static str],
    counters: &'static [&'static str],
}

const FEW: Keys = Keys {
    registers: &REGISTERS,
    counters: &COUNTERS,
};

/// More keys, for longer runs: each key's history stays short enough to check.
const MANY: Keys = Keys {
    registers: &[
        "reg-a", "reg-b", "reg-c", "reg-d", "reg-e", "reg-f", "reg-g", "reg-h", "reg-i", "reg-j",
    ],
    counters: &["counter", "counter-2", "counter-3", "counter-4"],
};

async fn client(id: usize, seed: u64, ops: usize, keys: Keys, live: Live, history: Arc<History>) {
    let mut rng = Choices::new(seed ^ (id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    // What this client last read per register, for compare-and-set.
    let mut last_read: std::collections::HashMap<&str, (i64, kvcore::Version)> = Default::default();
    for n in 0..ops {
        let node = loop {
            let nodes = live.read().unwrap().clone();
            let up: Vec<_> = nodes.into_iter().flatten().collect();
            if !up.is_empty() {
                break up[rng.below(up.len())].clone();
            }
            tokio::task::yield_now().await;
        };
        // Unique per client and operation.
        let unique = (id * 1_000_000 + n + 1) as i64;
        if rng.chance(0.25) {
            let key = keys.counters[rng.below(keys.counters.len())];
            if rng.chance(0.7) {
                let by = 1 + rng.below(5) as i64;
                let t = history.start(id, key, Op::Incr(by));
                let outcome = match node.incr(key, by).await {
                    Ok(entry) => Outcome::Ok(Observed::Incr(entry.value.as_i64().unwrap())),
                    Err(e) => classify(&e),
                };
                history.finish(t, outcome);
            } else {
                read(&history, id, &node, key, &mut last_read).await;
            }
            continue;
        }
        if rng.chance(0.1) {
            batch(&history, id, &node, &keys, &mut rng, n).await;
            continue;
        }
        let key = keys.registers[rng.below(keys.registers.len())];
        match rng.below(10) {
            0..=3 => read(&history, id, &node, key, &mut last_read).await,
            4..=6 => {
                // One write in three lives for a few milliseconds, so keys expire mid-history.
                let ttl = rng
                    .chance(0.33)
                    .then(|| Duration::from_millis(5 + rng.below(100) as u64));
                let options = WriteOptions {
                    ttl_ms: ttl.map(|t| t.as_millis() as u64),
                    ..WriteOptions::default()
                };
                let t = history.start(id, key, Op::Write(unique));
                if let Some(ttl) = ttl {
                    history.expiry(&t, key, ttl);
                }
                let outcome = match node.set_with(key, Value::integer(unique), options).await {
                    Ok(Ok(_)) => Outcome::Ok(Observed::Done),
                    Ok(Err(_)) => unreachable!("unconditional"),
                    Err(e) => classify(&e),
                };
                history.finish(t, outcome);
            }
            7 => {
                let t = history.start(id, key, Op::Delete);
                let outcome = match node.delete(key).await {
                    Ok(_) => Outcome::Ok(Observed::Done),
                    Err(e) => classify(&e),
                };
                history.finish(t, outcome);
            }
            _ => {
                // Values are unique, so "at the version I read" is "holding the value I read".
                let (expect, precondition) = match last_read.get(key) {
                    Some(&(value, version)) if rng.chance(0.7) => {
                        (Some(value), Precondition::IfVersion(version))
                    }
                    _ => (None, Precondition::IfAbsent),
                };
                let t = history.start(
                    id,
                    key,
                    Op::Cas {
                        expect,
                        new: unique,
                    },
                );
                let outcome = match node.set(key, Value::integer(unique), precondition).await {
                    Ok(written) => Outcome::Ok(Observed::Cas(written.is_ok())),
                    Err(e) => classify(&e),
                };
                history.finish(t, outcome);
            }
        }
    }
}

/// A batch of two or three registers, read (`/mget`) or written (`/mset`, with values unique
/// to the client, operation and position). A batch is not atomic: each item is recorded as the
/// single-key operation it is, spanning the whole batch.
async fn batch(
    history: &History,
    id: usize,
    node: &Node,
    keys: &Keys,
    rng: &mut Choices,
    n: usize,
) {
    let count = 2 + rng.below(2);
    let mut picked: Vec<&'static str> = (0..count)
        .map(|_| keys.registers[rng.below(keys.registers.len())])
        .collect();
    picked.sort_unstable();
    picked.dedup();
    let count = picked.len();
    if rng.chance(0.5) {
        let tickets: Vec<_> = picked
            .iter()
            .map(|key| history.start(id, key, Op::Read))
            .collect();
        let names: Vec<String> = picked.iter().map(|k| k.to_string()).collect();
        let answers = node.mget(&names).await;
        for (i, ticket) in tickets.into_iter().enumerate() {
            let outcome = match &answers {
                Ok(answers) => match &answers[i] {
                    Ok(entry) => Outcome::Ok(Observed::Read(
                        entry.as_ref().map(|e| e.value.as_i64().unwrap()),
                    )),
                    Err(_) => Outcome::Fail,
                },
                Err(_) => Outcome::Fail,
            };
            history.finish(ticket, outcome);
        }
    } else {
        let values: Vec<i64> = (0..count)
            .map(|j| (id * 1_000_000 + 200_000 * (j + 1) + n + 1) as i64)
            .collect();
        let tickets: Vec<_> = picked
            .iter()
            .zip(&values)
            .map(|(key, &v)| history.start(id, key, Op::Write(v)))
            .collect();
        let items = picked
            .iter()
            .zip(&values)
            .map(|(key, &v)| BatchWrite {
                key: key.to_string(),
                value: Value::integer(v),
                options: WriteOptions::default(),
            })
            .collect();
        let answers = node.mset(items).await;
        for (i, ticket) in tickets.into_iter().enumerate() {
            let outcome = match &answers {
                Ok(answers) => match &answers[i] {
                    Ok(Ok(_)) => Outcome::Ok(Observed::Done),
                    Ok(Err(_)) => unreachable!("unconditional"),
                    Err(e) => classify(e),
                },
                Err(e) => classify(e),
            };
            history.finish(ticket, outcome);
        }
    }
}

async fn read(
    history: &History,
    id: usize,
    node: &Node,
    key: &'static str,
    last_read: &mut std::collections::HashMap<&'static str, (i64, kvcore::Version)>,
) {
    let t = history.start(id, key, Op::Read);
    let outcome = match node.get(key).await {
        Ok(entry) => {
            if let Some(e) = &entry {
                last_read.insert(key, (e.value.as_i64().unwrap(), e.version));
            }
            Outcome::Ok(Observed::Read(entry.map(|e| e.value.as_i64().unwrap())))
        }
        // A failed read has no effect either way.
        Err(_) => Outcome::Fail,
    };
    history.finish(t, outcome);
}

/// Waits until the clients have started `n` more operations (or finished): faults are held for
/// an amount of client progress rather than of wall-clock time, so a slow machine gets the same
/// schedule as a fast one.
async fn after_ops(history: &History, n: usize, done: &AtomicBool) {
    let target = history.events().len() + n;
    let mut every = tokio::time::interval(Duration::from_millis(2));
    while history.events().len() < target && !done.load(Ordering::Relaxed) {
        every.tick().await;
    }
}

/// Runs one seed; returns (operations recorded, keys checked).
async fn run_seed(seed: u64, transport: Transport, replicas: usize) -> (usize, usize) {
    run_seed_with(seed, transport, replicas, Vec::new()).await
}

/// [`run_seed`], on a cluster in the middle of a membership change from the members
/// `changing_from` to all of them: every key uses the joint quorums of its old and new owners.
async fn run_seed_with(
    seed: u64,
    transport: Transport,
    replicas: usize,
    changing_from: Vec<u32>,
) -> (usize, usize) {
    let faults = Faults::new(seed);
    let cluster = LocalCluster::builder()
        .nodes(NODES)
        .transport(transport)
        .faults(faults.clone())
        .configure(|c| {
            c.replicas = replicas;
            c.changing_from = changing_from;
            quick_timeouts(c);
        })
        .start()
        .await
        .unwrap();
    let cluster = Arc::new(tokio::sync::Mutex::new(cluster));
    let live: Live = {
        let c = cluster.lock().await;
        Arc::new(RwLock::new(
            (0..NODES).map(|i| Some(c.node(i).clone())).collect(),
        ))
    };
    let history = Arc::new(History::new());
    let done = Arc::new(AtomicBool::new(false));

    let nemesis = {
        let (cluster, live, faults, done, history) = (
            cluster.clone(),
            live.clone(),
            faults.clone(),
            done.clone(),
            history.clone(),
        );
        tokio::spawn(async move {
            let mut rng = Choices::new(seed.wrapping_mul(31));
            let all: Vec<NodeId> = (0..NODES as u32).map(NodeId).collect();
            while !done.load(Ordering::Relaxed) {
                match rng.below(6) {
                    0 => faults.set_drop(0.05, 0.05),
                    1 => faults.set_delay(Some((Duration::ZERO, Duration::from_millis(15)))),
                    2 => {
                        let cut = 1 + rng.below(2);
                        let (a, b) = all.split_at(cut);
                        faults.partition(a, b);
                    }
                    // Crash a node only once every node has caught up from the last crash:
                    // the guarantee is for one replica lost at a time (see docs/consistency.md).
                    3 if (0..NODES).all(|n| {
                        live.read().unwrap()[n]
                            .as_ref()
                            .is_some_and(|node| node.is_ready())
                    }) =>
                    {
                        let i = rng.below(NODES);
                        live.write().unwrap()[i] = None;
                        let mut c = cluster.lock().await;
                        c.stop_node(i).await;
                        drop(c);
                        after_ops(&history, 5 + rng.below(20), &done).await;
                        let mut c = cluster.lock().await;
                        c.restart_node(i).await.unwrap();
                        live.write().unwrap()[i] = Some(c.node(i).clone());
                    }
                    _ => faults.clear(),
                }
                after_ops(&history, 3 + rng.below(15), &done).await;
            }
            faults.clear();
        })
    };

    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let (live, history) = (live.clone(), history.clone());
            tokio::spawn(client(id, seed, OPS_PER_CLIENT, FEW, live, history))
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    nemesis.await.unwrap();
    faults.clear();

    // Healed: every node back and caught up; then every key read through every node. These
    // reads come after every acknowledged write, so an acknowledged write that was lost, or an
    // increment applied twice, makes the history non-linearizable.
    let cluster = Arc::try_unwrap(cluster)
        .expect("nemesis finished")
        .into_inner();
    assert!(
        cluster.wait_ready(Duration::from_secs(20)).await,
        "seed {seed}: nodes did not recover"
    );
    let keys = REGISTERS.iter().chain(COUNTERS.iter()).copied();
    read_everything(
        &cluster,
        &history,
        keys,
        &(0..NODES).collect::<Vec<_>>(),
        seed,
    )
    .await;
    cluster.shutdown().await;
    let events = history.events();
    let unknown = events
        .iter()
        .filter(|e| e.outcome == Outcome::Unknown)
        .count();
    let failed = events.iter().filter(|e| e.outcome == Outcome::Fail).count();
    println!(
        "seed {seed}: {} operations, {failed} failed cleanly, {unknown} with unknown outcome",
        events.len()
    );
    match check_all(&events, None) {
        Ok(keys) => (events.len(), keys),
        Err(violation) => panic!("seed {seed}: not linearizable:\n{violation}"),
    }
}

/// Short timeouts, so a seed runs through many faults in a few seconds.
fn quick_timeouts(c: &mut kvserver::Config) {
    c.forward_timeout_ms = 200;
    c.op_timeout_ms = 1500;
    c.heartbeat_ms = 40;
    c.down_after_ms = 150;
    c.anti_entropy_ms = 100;
}

/// Once healed: every key read through each of `nodes`, after every acknowledged write, so an
/// acknowledged write that was lost, or an increment applied twice, makes the history
/// non-linearizable. A read that fails (the failure detectors may take a heartbeat to see every
/// peer again) is tried again, every 20 ms, at most 50 times.
async fn read_everything(
    cluster: &LocalCluster,
    history: &History,
    keys: impl Iterator<Item = &'static str>,
    nodes: &[usize],
    seed: u64,
) {
    for key in keys {
        for &n in nodes {
            let mut every = tokio::time::interval(Duration::from_millis(20));
            for attempt in 1.. {
                every.tick().await;
                let t = history.start(100 + n, key, Op::Read);
                match cluster.node(n).get(key).await {
                    Ok(entry) => {
                        let value = entry.map(|e| e.value.as_i64().unwrap());
                        history.finish(t, Outcome::Ok(Observed::Read(value)));
                        break;
                    }
                    Err(e) => {
                        history.finish(t, Outcome::Fail);
                        assert!(
                            attempt < 50,
                            "seed {seed}: final read of {key} through {n}: {e}"
                        );
                    }
                }
            }
        }
    }
}

/// Seeds to run: the count in the environment variable `var` raises it for longer local runs.
fn seeds(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_under_faults_are_linearizable() {
    let mut ops = 0;
    let mut keys = 0;
    // `KV_CHAOS_SEED` replays one seed.
    let only: Option<u64> = std::env::var("KV_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    let seeds: Vec<u64> = match only {
        Some(seed) => vec![seed],
        None => (1..=seeds("KV_CHAOS_SEEDS", 12))
            .map(|s| s * 7919)
            .collect(),
    };
    for &seed in &seeds {
        let (o, k) = run_seed(seed, Transport::InProcess, 3).await;
        ops += o;
        keys += k;
    }
    println!(
        "chaos: {} seeds, {ops} operations over {keys} key histories, all linearizable",
        seeds.len()
    );
}

/// The same nemesis over real HTTP between the nodes: crashes drop real connections, and a
/// restarted node listens again on its old port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_under_faults_over_http_are_linearizable() {
    let mut ops = 0;
    let count = seeds("KV_CHAOS_HTTP_SEEDS", 3);
    for seed in 1..=count {
        ops += run_seed(seed * 104_729, Transport::Http, 3).await.0;
    }
    println!("chaos over HTTP: {count} seeds, {ops} operations, all linearizable");
}

/// Quorum arithmetic at other sizes: even replica counts (a majority of 2 is both, of 4 is 3)
/// and five replicas. `KV_CHAOS_OTHER_SEEDS` raises the seeds per size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_at_other_replication_factors_are_linearizable() {
    let count = seeds("KV_CHAOS_OTHER_SEEDS", 1);
    for replicas in [2, 4, 5] {
        let mut ops = 0;
        for seed in 1..=count {
            ops += run_seed(
                seed * 15_485_863 + replicas as u64,
                Transport::InProcess,
                replicas,
            )
            .await
            .0;
        }
        println!("chaos at R = {replicas}: {count} seeds, {ops} operations, all linearizable");
    }
}

/// Joint quorums: the five nodes are in the middle of a change from the first four to all five
/// (node 4 joining), so a key node 4 now owns is replicated on its old and new owners, and every
/// operation needs a majority of each. `KV_CHAOS_JOINT_SEEDS` raises the seeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_under_the_joint_quorums_of_a_membership_change_are_linearizable() {
    let count = seeds("KV_CHAOS_JOINT_SEEDS", 2);
    let mut ops = 0;
    for seed in 1..=count {
        ops += run_seed_with(seed * 32_452_843, Transport::InProcess, 3, vec![0, 1, 2, 3])
            .await
            .0;
    }
    println!("chaos under joint quorums: {count} seeds, {ops} operations, all linearizable");
}

/// Membership changes under faults: four nodes at `R = 3`; while the clients run, nodes join,
/// members leave alive, and crashed members are removed while dead, interleaved with lost and
/// delayed messages, partitions and crash-restarts. Every key's history must be linearizable,
/// and once healed and settled every key's replicas must hold the same state, on its replicas
/// only. `KV_CHAOS_MEMBERSHIP_SEEDS` raises the seeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_under_membership_changes_are_linearizable() {
    let count = seeds("KV_CHAOS_MEMBERSHIP_SEEDS", 3);
    let (mut ops, mut changes) = (0, 0);
    let only: Option<u64> = std::env::var("KV_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    let seeds: Vec<u64> = match only {
        Some(seed) => vec![seed],
        None => (1..=count).map(|s| s * 49_979_687).collect(),
    };
    for &seed in &seeds {
        let (o, c) = run_membership_seed(seed).await;
        ops += o;
        changes += c;
    }
    println!(
        "chaos with membership changes: {} seeds, {changes} changes, {ops} operations, all \
         linearizable",
        seeds.len()
    );
}

/// Members of the cluster a change may be asked of, by index (= node id).
fn members(cluster: &LocalCluster) -> Vec<usize> {
    let map = (0..cluster.len())
        .filter(|&i| cluster.is_running(i) && !cluster.node(i).is_removed())
        .map(|i| cluster.node(i).map())
        .max_by_key(|m| m.epoch())
        .expect("a running member");
    map.nodes().iter().map(|n| n.id.0 as usize).collect()
}

/// Members and departing nodes of the latest map a running node holds, by index.
fn taking_part(cluster: &LocalCluster) -> Vec<usize> {
    let map = (0..cluster.len())
        .filter(|&i| cluster.is_running(i) && !cluster.node(i).is_removed())
        .map(|i| cluster.node(i).map())
        .max_by_key(|m| m.epoch())
        .expect("a running member");
    map.nodes()
        .iter()
        .chain(map.departing())
        .map(|n| n.id.0 as usize)
        .collect()
}

/// Restarts node `i`. Once the membership has changed it rejoins through a member, which needs
/// a quorum of the map register: the faults are lifted until it is back, as an operator would
/// retry.
async fn restart(cluster: &mut LocalCluster, i: usize, faults: &Faults) {
    let mut every = tokio::time::interval(Duration::from_millis(100));
    for attempt in 0.. {
        every.tick().await;
        match cluster.restart_node(i).await {
            Ok(()) => return,
            Err(e) => {
                assert!(attempt < 50, "node {i} did not restart: {e}");
                faults.clear();
            }
        }
    }
}

/// Runs one seed with membership changes; returns (operations recorded, changes made).
async fn run_membership_seed(seed: u64) -> (usize, usize) {
    const START: usize = 4;
    let faults = Faults::new(seed);
    let cluster = LocalCluster::builder()
        .nodes(START)
        .transport(Transport::InProcess)
        .faults(faults.clone())
        .configure(|c| {
            c.replicas = 3;
            quick_timeouts(c);
        })
        .start()
        .await
        .unwrap();
    let cluster = Arc::new(tokio::sync::Mutex::new(cluster));
    let live: Live = {
        let c = cluster.lock().await;
        Arc::new(RwLock::new(
            (0..START).map(|i| Some(c.node(i).clone())).collect(),
        ))
    };
    let history = Arc::new(History::new());
    let done = Arc::new(AtomicBool::new(false));

    let nemesis = {
        let (cluster, live, faults, done, history) = (
            cluster.clone(),
            live.clone(),
            faults.clone(),
            done.clone(),
            history.clone(),
        );
        tokio::spawn(async move {
            let mut rng = Choices::new(seed.wrapping_mul(37));
            let mut changes = 0;
            while !done.load(Ordering::Relaxed) {
                let mut c = cluster.lock().await;
                let members = members(&c);
                let changing = members
                    .iter()
                    .any(|&i| c.is_running(i) && c.node(i).map().is_changing());
                // Every node that takes part in the map (members, and nodes leaving it) runs
                // and votes: one replica is lost at a time.
                let all_ready = taking_part(&c)
                    .iter()
                    .all(|&i| c.is_running(i) && c.node(i).is_ready());
                match rng.below(10) {
                    0 => faults.set_drop(0.05, 0.05),
                    1 => faults.set_delay(Some((Duration::ZERO, Duration::from_millis(15)))),
                    // Partitions while no change runs, and during one only now and then: a
                    // change waits out a partition, and the run should see several changes.
                    2 if !changing || rng.chance(0.2) => {
                        let ids: Vec<NodeId> = members.iter().map(|&i| NodeId(i as u32)).collect();
                        let cut = 1 + rng.below(ids.len() / 2);
                        let (a, b) = ids.split_at(cut);
                        faults.partition(a, b);
                    }
                    3 | 7 if !changing && members.len() < 6 => {
                        // A join while faults go on: the joining node may find no majority for
                        // a while; it keeps asking.
                        faults.clear();
                        match c.join_node().await {
                            Ok(i) => {
                                live.write().unwrap().push(Some(c.node(i).clone()));
                                changes += 1;
                            }
                            Err(e) => println!("seed {seed}: join failed: {e}"),
                        }
                    }
                    4 | 8 if !changing && all_ready && members.len() > 3 => {
                        // A member leaves while alive.
                        let i = members[rng.below(members.len())];
                        if c.remove_node(i, false).await.is_ok() {
                            changes += 1;
                        }
                    }
                    5 if !changing && all_ready && members.len() > 3 => {
                        // A member crashes and is removed while dead.
                        let i = members[rng.below(members.len())];
                        live.write().unwrap()[i] = None;
                        c.stop_node(i).await;
                        drop(c);
                        after_ops(&history, 3 + rng.below(10), &done).await;
                        c = cluster.lock().await;
                        faults.clear();
                        if c.remove_node(i, false).await.is_ok() {
                            changes += 1;
                        } else {
                            restart(&mut c, i, &faults).await;
                            live.write().unwrap()[i] = Some(c.node(i).clone());
                        }
                    }
                    // A crash-restart, one replica lost at a time; during a change only now and
                    // then, so that changes also get to finish.
                    6 if all_ready && (!changing || rng.chance(0.1)) => {
                        let i = members[rng.below(members.len())];
                        live.write().unwrap()[i] = None;
                        c.stop_node(i).await;
                        drop(c);
                        after_ops(&history, 5 + rng.below(20), &done).await;
                        c = cluster.lock().await;
                        restart(&mut c, i, &faults).await;
                        live.write().unwrap()[i] = Some(c.node(i).clone());
                    }
                    _ => faults.clear(),
                }
                drop(c);
                after_ops(&history, 3 + rng.below(15), &done).await;
            }
            faults.clear();
            changes
        })
    };

    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let (live, history) = (live.clone(), history.clone());
            tokio::spawn(client(id, seed, 8 * OPS_PER_CLIENT, MANY, live, history))
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let changes = nemesis.await.unwrap();
    faults.clear();

    let cluster = Arc::try_unwrap(cluster)
        .expect("nemesis finished")
        .into_inner();
    if !cluster.wait_settled(Duration::from_secs(30)).await {
        let states: Vec<String> = (0..cluster.len())
            .filter(|&i| cluster.is_running(i))
            .map(|i| {
                let n = cluster.node(i);
                let r = n.membership();
                format!(
                    "node {i}: epoch {} changing {} ready {} healthy {} removed {} copying {:?} \
                     members {:?}",
                    n.map().epoch(),
                    n.map().is_changing(),
                    n.is_ready(),
                    n.is_healthy(),
                    n.is_removed(),
                    r.copying,
                    r.map.nodes.iter().map(|n| n.id.0).collect::<Vec<_>>()
                )
            })
            .collect();
        panic!(
            "seed {seed}: the cluster did not settle:\n{}",
            states.join("\n")
        );
    }
    let members = members(&cluster);
    let keys = MANY.registers.iter().chain(MANY.counters).copied();
    read_everything(&cluster, &history, keys, &members, seed).await;
    // Every key's replicas hold the same state (reads repair the ones that lag), and no other
    // member holds any.
    for key in MANY.registers.iter().chain(MANY.counters) {
        let replicas = cluster.node(members[0]).owners(key);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut every = tokio::time::interval(Duration::from_millis(20));
        loop {
            every.tick().await;
            let states: Vec<_> = replicas
                .iter()
                .map(|r| cluster.node(r.0 as usize).store().register(key))
                .collect();
            let agree = states.windows(2).all(|w| w[0] == w[1]);
            let elsewhere: Vec<usize> = members
                .iter()
                .copied()
                .filter(|&n| !replicas.contains(&NodeId(n as u32)))
                .filter(|&n| cluster.node(n).store().register(key).ballot != kvcore::Ballot::ZERO)
                .collect();
            if agree && elsewhere.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "seed {seed}: {key}: replicas {replicas:?} hold {states:?}; also held by \
                 {elsewhere:?}"
            );
        }
    }
    cluster.shutdown().await;
    let events = history.events();
    println!(
        "seed {seed}: {changes} membership changes, {} operations, members {members:?}",
        events.len()
    );
    match check_all(&events, None) {
        Ok(_) => (events.len(), changes),
        Err(violation) => panic!("seed {seed}: not linearizable:\n{violation}"),
    }
}
