//! The replication protocol step by step: nodes over the in-process transport, under tokio's
//! paused clock, with messages held, dropped, duplicated and reordered at exact points.
//!
//! No HTTP here: every node is a [`Node`] whose peers reach it through an
//! [`InProcessNetwork`] (the same frames as over HTTP), so time only moves when every task
//! waits, and a test can stop a coordinator between two of its accepts.

use std::sync::Arc;
use std::time::Duration;

use kvcore::{
    Ballot, ErrorCode, Eviction, NodeId, NodeInfo, Precondition, Register, Value, Version,
};
use kvnet::rpc::{Accept, AcceptReply, Kind, Prepare, PrepareReply};
use kvnet::{Faults, Header, InProcessNetwork, Peers};
use kvserver::{Config, Error, Node};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::checker::{check_all, History, Observed, Op, Outcome};

/// Nodes of one cluster in this process, with faults between them.
struct Sim {
    net: InProcessNetwork,
    faults: Faults,
    config: Config,
    nodes: Vec<Arc<Node>>,
}

impl Sim {
    /// `n` nodes keeping `replicas` copies of each key, all caught up.
    async fn start(n: usize, replicas: usize, seed: u64) -> Sim {
        Sim::start_with(n, replicas, seed, true).await
    }

    /// The same, with the primary's kept promises (one-round-trip writes) on or off.
    async fn start_with(n: usize, replicas: usize, seed: u64, cached_promises: bool) -> Sim {
        Sim::start_configured(n, replicas, seed, |c| c.cached_promises = cached_promises).await
    }

    /// The same, with the configuration changed by `configure` first.
    async fn start_configured(
        n: usize,
        replicas: usize,
        seed: u64,
        configure: impl FnOnce(&mut Config),
    ) -> Sim {
        let mut config = Config {
            peers: (0..n).map(|i| format!("10.9.0.{}:5100", i + 1)).collect(),
            replicas,
            seed_keys: false,
            heartbeat_ms: 50,
            down_after_ms: 200,
            anti_entropy_ms: 200,
            forward_timeout_ms: 500,
            op_timeout_ms: 3000,
            ..Config::default()
        };
        configure(&mut config);
        let mut sim = Sim {
            net: InProcessNetwork::new(config.forward_timeout()),
            faults: Faults::new(seed),
            config,
            nodes: Vec::new(),
        };
        for i in 0..n {
            let node = sim.launch(i);
            sim.nodes.push(node);
        }
        for i in 0..n {
            sim.ready(i).await;
        }
        sim
    }

    fn launch(&self, i: usize) -> Arc<Node> {
        let config = Config {
            id: i as u32,
            ..self.config.clone()
        };
        let transport = Arc::new(self.faults.wrap(NodeId(i as u32), self.net.clone()));
        let node = Arc::new(Node::new(&config, transport).unwrap());
        self.net.register(
            self.config.peers[i].clone(),
            Arc::downgrade(&node.peer_handler()),
        );
        node.start();
        node
    }

    fn node(&self, i: usize) -> &Arc<Node> {
        &self.nodes[i]
    }

    /// Crashes node `i`: every task it runs stops where it stands, its memory is gone.
    fn crash(&self, i: usize) {
        self.net.unregister(&self.config.peers[i]);
        self.nodes[i].crash();
    }

    /// Starts node `i` again, empty, with a new incarnation, and waits until it has caught up.
    async fn restart(&mut self, i: usize) {
        self.nodes[i] = self.launch(i);
        self.ready(i).await;
    }

    /// Waits (in virtual time) until node `i` has caught up.
    async fn ready(&self, i: usize) {
        let node = self.nodes[i].clone();
        until(&format!("node {i} caught up"), || node.is_ready()).await;
    }

    /// Node indexes of `key`'s replicas, primary first.
    fn replicas(&self, key: &str) -> Vec<usize> {
        let owners = self.nodes[0].owners(key);
        owners.into_iter().map(|n| n.0 as usize).collect()
    }

    async fn stop(self) {
        for node in &self.nodes {
            node.stop().await;
        }
    }
}

/// Polls `check` every virtual millisecond until it holds, for at most 100 virtual seconds.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let mut every = tokio::time::interval(Duration::from_millis(1));
    for _ in 0..100_000 {
        every.tick().await;
        if check() {
            return;
        }
    }
    panic!("never happened: {what}");
}

fn outcome_of(e: &Error) -> Outcome {
    match e.code() {
        ErrorCode::QuorumUnavailable | ErrorCode::OwnerUnavailable | ErrorCode::Recovering => {
            Outcome::Fail
        }
        _ => Outcome::Unknown,
    }
}

async fn incr(history: &History, client: usize, node: &Node, key: &str, by: i64) -> Outcome {
    let t = history.start(client, key, Op::Incr(by));
    let outcome = match node.incr(key, by).await {
        Ok(entry) => Outcome::Ok(Observed::Incr(entry.value.as_i64().unwrap())),
        Err(e) => outcome_of(&e),
    };
    history.finish(t, outcome);
    outcome
}

async fn read(history: &History, client: usize, node: &Node, key: &str) -> Option<i64> {
    let t = history.start(client, key, Op::Read);
    match node.get(key).await {
        Ok(entry) => {
            let value = entry.map(|e| e.value.as_i64().unwrap());
            history.finish(t, Outcome::Ok(Observed::Read(value)));
            value
        }
        Err(e) => panic!("read through node {}: {e}", node.id()),
    }
}

fn assert_linearizable(history: &History) {
    if let Err(violation) = check_all(&history.events(), None) {
        panic!("not linearizable:\n{violation}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_coordinator_crashing_between_its_accepts_applies_the_write_once_or_not_at_all() {
    // With kept promises the interrupted write is a one-round write; without, a full round.
    crash_between_accepts(true).await;
    crash_between_accepts(false).await;
}

async fn crash_between_accepts(cached_promises: bool) {
    // Five replicas: two accepts are short of the three needed.
    let mut sim = Sim::start_with(5, 5, 1, cached_promises).await;
    let key = "counter";
    let replicas = sim.replicas(key);
    let (p, x) = (replicas[0], replicas[1]);
    let history = Arc::new(History::new());
    assert_eq!(
        incr(&history, 0, sim.node(p), key, 10).await,
        Outcome::Ok(Observed::Incr(10))
    );

    // The primary's accepts reach `x` and nobody else; then it crashes.
    for &other in &replicas[2..] {
        sim.faults.hold(
            Some(NodeId(p as u32)),
            Some(NodeId(other as u32)),
            Some(Kind::Accept),
        );
    }
    let interrupted = {
        let (history, node) = (history.clone(), sim.node(p).clone());
        tokio::spawn(async move { incr(&history, 1, &node, key, 1).await })
    };
    let on_x = sim.node(x).clone();
    until("the accept reached x", || {
        on_x.store().get(key).and_then(|e| e.value.as_i64()) == Some(11)
    })
    .await;
    sim.crash(p);
    sim.faults.release();
    let outcome = interrupted.await.unwrap();
    assert_eq!(
        outcome,
        Outcome::Unknown,
        "a write short of a quorum is never acknowledged"
    );

    // The survivors decide it one way, once, and agree; then it comes back and agrees too.
    let survivors: Vec<usize> = (0..5).filter(|&i| i != p).collect();
    for (client, &i) in survivors.iter().enumerate() {
        read(&history, 10 + client, sim.node(i), key).await;
        incr(&history, 10 + client, sim.node(i), key, 100).await;
    }
    sim.restart(p).await;
    let mut seen = Vec::new();
    for i in 0..5 {
        seen.push(read(&history, 20 + i, sim.node(i), key).await.unwrap());
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
    assert!(seen[0] == 410 || seen[0] == 411, "{seen:?}");
    assert_linearizable(&history);
    sim.stop().await;
}

/// In cache mode, a replica that refuses a write's accept for want of room after another replica
/// took it is asked again once its evictor has made some: the write is acknowledged, where it
/// would otherwise have ended with its outcome unknown.
#[tokio::test(start_paused = true)]
async fn an_accept_refused_for_want_of_room_is_sent_again_once_there_is_some() {
    let sim = Sim::start_configured(3, 3, 1, |c| {
        c.cached_promises = false;
        c.max_memory = Some(64 << 10);
        c.eviction = Eviction::Lru;
    })
    .await;
    let key = "k";
    let replicas = sim.replicas(key);
    let (p, others) = (replicas[0], replicas[1..].to_vec());
    for &o in &others {
        let (from, to) = (NodeId(p as u32), NodeId(o as u32));
        sim.faults.hold(Some(from), Some(to), Some(Kind::Accept));
    }
    let write = {
        let node = sim.node(p).clone();
        let value = Value::string("w".repeat(1000));
        tokio::spawn(async move { node.set(key, value, Precondition::None).await })
    };
    let primary = sim.node(p).clone();
    until("the primary's own replica took the accept", || {
        primary.store().get(key).is_some()
    })
    .await;
    // Prepared on every replica (so admitted there), but before their accepts arrive the other
    // replicas fill up to their budget with keys of their own.
    for &o in &others {
        let store = sim.node(o).store();
        let filler = || Register {
            ballot: Ballot::new(1, NodeId(o as u32)),
            version: Version(1),
            value: Some(Value::string("f".repeat(1000))),
            expires: None,
        };
        let mut i = 0;
        while store.accept(&format!("fill-{o}-{i}"), filler()).is_ok() {
            i += 1;
        }
        assert!(
            store.accept(&format!("more-{o}"), filler()).is_err(),
            "node {o} is full"
        );
    }
    sim.faults.release();
    let written = write.await.unwrap();
    assert!(written.is_ok(), "{written:?}");
    for &o in &others {
        let node = sim.node(o).clone();
        until(&format!("node {o} holds the write"), || {
            node.store().get(key).is_some()
        })
        .await;
    }
    sim.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_promise_from_an_earlier_life_is_not_counted() {
    let mut sim = Sim::start(3, 3, 2).await;
    let key = "k";
    let replicas = sim.replicas(key);
    let (a, b) = (replicas[1], replicas[2]);
    let old = sim.node(a).incarnation();
    sim.crash(a);
    sim.restart(a).await;
    let new = sim.node(a).incarnation();
    assert!(new > old);
    // Node `b` has heard from `a`'s new life (its catch-up asked `b` for copies), so an accept
    // that counted a promise `a` made before the restart is refused there.
    let peers = Peers::new(Arc::new(sim.net.clone()));
    let to_b = NodeInfo {
        id: NodeId(b as u32),
        addr: sim.config.peers[b].clone(),
    };
    let header = Header {
        from: NodeId(replicas[0] as u32),
        incarnation: sim.node(replicas[0]).incarnation(),
        epoch: 1,
        request_id: 1,
        hops: 1,
    };
    let accept = |incarnation_of_a| Accept {
        key: key.into(),
        register: Register {
            ballot: kvcore::Ballot::new(1_000, NodeId(replicas[0] as u32)),
            version: Version(1),
            value: Some(Value::integer(7)),
            expires: None,
        },
        promisers: vec![(NodeId(a as u32), incarnation_of_a)],
        promise_next: None,
    };
    let refused = peers.call(&to_b, &header, &accept(old)).await.unwrap_err();
    assert_eq!(refused.remote_code(), Some(ErrorCode::StaleIncarnation));
    assert!(
        sim.node(b).store().get(key).is_none(),
        "a refused accept changed nothing"
    );
    let accepted = peers.call(&to_b, &header, &accept(new)).await.unwrap();
    assert_eq!(
        accepted,
        AcceptReply::Accepted {
            promised_next: None
        }
    );
    sim.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_round_whose_promiser_restarted_midway_is_never_acknowledged_wrongly() {
    // A full round: with kept promises the primary would skip the prepare this test holds.
    let mut sim = Sim::start_with(3, 3, 3, false).await;
    let key = "k";
    let replicas = sim.replicas(key);
    let (p, a, b) = (replicas[0], replicas[1], replicas[2]);
    let history = Arc::new(History::new());
    assert_eq!(
        incr(&history, 0, sim.node(p), key, 5).await,
        Outcome::Ok(Observed::Incr(5))
    );
    // The primary's round counts `a`'s promise; `b` hears nothing from it, and the accepts to
    // `a` wait while `a` restarts and forgets.
    let (pn, an, bn) = (NodeId(p as u32), NodeId(a as u32), NodeId(b as u32));
    sim.faults.hold(Some(pn), Some(bn), None);
    sim.faults.hold(Some(pn), Some(an), Some(Kind::Accept));
    let interrupted = {
        let (history, node) = (history.clone(), sim.node(p).clone());
        tokio::spawn(async move { incr(&history, 1, &node, key, 1).await })
    };
    let on_p = sim.node(p).clone();
    until("the primary accepted its own proposal", || {
        on_p.store().get(key).and_then(|e| e.value.as_i64()) == Some(6)
    })
    .await;
    sim.crash(a);
    sim.restart(a).await;
    sim.faults.release();
    let outcome = interrupted.await.unwrap();
    assert_ne!(
        outcome,
        Outcome::Ok(Observed::Incr(6)),
        "the accepts relying on a forgotten promise were refused, so the round cannot succeed"
    );
    for (client, i) in [p, a, b].into_iter().enumerate() {
        read(&history, 10 + client, sim.node(i), key).await;
        incr(&history, 10 + client, sim.node(i), key, 10).await;
    }
    assert_linearizable(&history);
    sim.stop().await;
}

/// Frames the nodes received, all together.
fn frames(sim: &Sim) -> u64 {
    sim.nodes.iter().map(|n| n.metrics().snapshot().peer).sum()
}

#[tokio::test(start_paused = true)]
async fn a_kept_promise_lets_the_next_write_skip_its_prepare() {
    for cached_promises in [true, false] {
        let sim = Sim::start_with(3, 3, 4, cached_promises).await;
        let key = "k";
        let p = sim.node(sim.replicas(key)[0]).clone();
        let mut costs = Vec::new();
        let mut sum = 0;
        for by in 1..=3 {
            let before = frames(&sim);
            let entry = p.incr(key, by).await.unwrap();
            sum += by;
            assert_eq!(entry.version, Version(by as u64));
            costs.push(frames(&sim) - before);
            // The replica the write did not wait for gets its copy in the background.
            let replicas = sim.replicas(key);
            until("every replica holds the write", || {
                replicas.iter().all(|&i| {
                    let entry = sim.node(i).store().get(key);
                    entry.and_then(|e| e.value.as_i64()) == Some(sum)
                })
            })
            .await;
        }
        // A full round: a prepare to one other replica (with the primary's own, a majority),
        // then accepts to both. With the promise kept, a later write sends one accept (with the
        // primary's own, a majority) and the third replica's copy goes in a backfill message
        // afterwards (batched with other writes' copies when there are several).
        let expected = if cached_promises {
            [3, 1, 1]
        } else {
            [3, 3, 3]
        };
        assert_eq!(costs, expected, "cached promises {cached_promises}");
        sim.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_kept_promise_is_not_relied_on_after_its_promiser_restarts() {
    let mut sim = Sim::start(3, 3, 5).await;
    let key = "k";
    let replicas = sim.replicas(key);
    let history = Arc::new(History::new());
    let p = sim.node(replicas[0]).clone();
    assert_eq!(
        incr(&history, 0, &p, key, 5).await,
        Outcome::Ok(Observed::Incr(5))
    );
    for &other in &replicas[1..] {
        sim.crash(other);
        sim.restart(other).await;
        assert_eq!(
            incr(&history, 1, &p, key, 1).await,
            Outcome::Ok(Observed::Incr(if other == replicas[1] { 6 } else { 7 }))
        );
    }
    // Another proposer's round in between: the kept promise is outbid, and the primary's next
    // write still succeeds, after a full round.
    let other = sim.node(replicas[1]).clone();
    let t = history.start(2, key, Op::Write(100));
    other
        .set(key, Value::integer(100), Precondition::None)
        .await
        .unwrap()
        .unwrap();
    history.finish(t, Outcome::Ok(Observed::Done));
    assert_eq!(
        incr(&history, 0, &p, key, 1).await,
        Outcome::Ok(Observed::Incr(101))
    );
    for (client, &i) in replicas.iter().enumerate() {
        assert_eq!(
            read(&history, 10 + client, sim.node(i), key).await,
            Some(101)
        );
    }
    assert_linearizable(&history);
    sim.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_kept_promise_outbid_on_the_primarys_own_replica_still_succeeds_through_the_others() {
    let sim = Sim::start(3, 3, 7).await;
    let key = "k";
    let replicas = sim.replicas(key);
    let p = sim.node(replicas[0]).clone();
    assert_eq!(p.incr(key, 1).await.unwrap().value.as_i64(), Some(1));
    // Another proposer's prepare reaches only the primary's replica: the primary's kept promise
    // no longer holds there, but still does on the other two.
    let peers = Peers::new(Arc::new(sim.net.clone()));
    let primary = NodeInfo {
        id: p.id(),
        addr: sim.config.peers[replicas[0]].clone(),
    };
    let other = NodeId(replicas[1] as u32);
    let header = Header {
        from: other,
        incarnation: sim.node(replicas[1]).incarnation(),
        epoch: 1,
        request_id: 1,
        hops: 1,
    };
    let prepare = Prepare {
        key: key.into(),
        ballot: kvcore::Ballot::new(1 << 30, other),
        grow: 0,
    };
    let promised = peers.call(&primary, &header, &prepare).await.unwrap();
    assert!(matches!(promised, PrepareReply::Promised { .. }));
    // The other two accept the one-round write, which is then chosen: a success, not a 504.
    let entry = p.incr(key, 1).await.unwrap();
    assert_eq!(entry.value.as_i64(), Some(2));
    for &i in &replicas {
        assert_eq!(
            sim.node(i).get(key).await.unwrap().unwrap().value.as_i64(),
            Some(2)
        );
    }
    sim.stop().await;
}

fn passes(sim: &Sim) -> u64 {
    sim.nodes
        .iter()
        .map(|n| n.metrics().snapshot().anti_entropy_passes)
        .sum()
}

/// The fewest anti-entropy passes any node has skipped.
fn fewest_skips(sim: &Sim) -> u64 {
    let skips = sim
        .nodes
        .iter()
        .map(|n| n.metrics().snapshot().anti_entropy_skips);
    skips.min().unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn anti_entropy_rests_while_every_copy_is_made_and_wakes_when_one_is_missed() {
    let sim = Sim::start(3, 3, 6).await;
    // Every node runs a first pass once it is ready; then they rest.
    until("every node ran a pass and then rested", || {
        passes(&sim) >= 3 && fewest_skips(&sim) >= 1
    })
    .await;
    let settled = passes(&sim);
    for i in 0..30 {
        let node = sim.node(i % 3);
        node.incr(&format!("k{i}"), 1).await.unwrap();
    }
    let skipped = fewest_skips(&sim);
    until("every node skipped four more passes", || {
        fewest_skips(&sim) >= skipped + 4
    })
    .await;
    assert_eq!(passes(&sim), settled, "healthy writes woke anti-entropy");
    // An accept that never arrives: its primary's next pass runs and restores the copy.
    let key = "missed";
    let replicas = sim.replicas(key);
    let (p, lagging) = (NodeId(replicas[0] as u32), replicas[2]);
    sim.faults.isolate(NodeId(lagging as u32), &[p]);
    sim.node(replicas[0]).incr(key, 1).await.unwrap();
    sim.faults.heal();
    let on_lagging = sim.node(lagging).clone();
    until("anti-entropy copied the missed write", || {
        on_lagging.store().get(key).is_some()
    })
    .await;
    assert!(passes(&sim) > settled);
    sim.stop().await;
}

/// Seeds per replication factor: `KV_PROTOCOL_SEEDS` raises it for longer local runs.
fn seeds() -> u64 {
    std::env::var("KV_PROTOCOL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
}

/// Concurrent clients through random nodes while messages are dropped, duplicated, delayed and
/// reordered; every key's history must be linearizable. Run at odd and even replication
/// factors, so quorum arithmetic is exercised beyond `R = 3`.
async fn messy_network(replicas: usize, seed: u64) {
    let sim = Sim::start(5, replicas, seed).await;
    sim.faults.set_drop(0.05, 0.05);
    sim.faults.set_duplicate(0.3);
    sim.faults
        .set_delay(Some((Duration::from_millis(0), Duration::from_millis(30))));
    let history = Arc::new(History::new());
    let mut clients = Vec::new();
    for client in 0..6 {
        let nodes = sim.nodes.clone();
        let history = history.clone();
        clients.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(seed * 100 + client as u64);
            for n in 0..25 {
                let node = &nodes[rng.gen_range(0..nodes.len())];
                let key = ["x", "y"][rng.gen_range(0..2)];
                match rng.gen_range(0..4) {
                    0 => {
                        incr(&history, client, node, key, 1 + rng.gen_range(0..3)).await;
                    }
                    1 => {
                        let value = (client * 1000 + n) as i64;
                        let t = history.start(client, key, Op::Write(value));
                        let outcome = match node
                            .set(key, Value::integer(value), Precondition::None)
                            .await
                        {
                            Ok(Ok(_)) => Outcome::Ok(Observed::Done),
                            Ok(Err(_)) => unreachable!("an unconditional write has no conflict"),
                            Err(e) => outcome_of(&e),
                        };
                        history.finish(t, outcome);
                    }
                    _ => {
                        let t = history.start(client, key, Op::Read);
                        let outcome = match node.get(key).await {
                            Ok(e) => {
                                Outcome::Ok(Observed::Read(e.map(|e| e.value.as_i64().unwrap())))
                            }
                            Err(_) => Outcome::Fail,
                        };
                        history.finish(t, outcome);
                    }
                }
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    sim.faults.clear();
    for (i, node) in sim.nodes.iter().enumerate() {
        for key in ["x", "y"] {
            read(&history, 100 + i, node, key).await;
        }
    }
    let events = history.events();
    let acknowledged = events
        .iter()
        .filter(|e| matches!(e.outcome, Outcome::Ok(_)))
        .count();
    assert!(
        acknowledged > events.len() / 2,
        "R={replicas}: too few operations succeeded to mean anything"
    );
    if let Err(violation) = check_all(&events, None) {
        panic!("R={replicas}, seed {seed}: not linearizable:\n{violation}");
    }
    sim.stop().await;
}

#[tokio::test(start_paused = true)]
async fn duplicated_delayed_and_reordered_messages_keep_histories_linearizable_at_r2() {
    for seed in 1..=seeds() {
        messy_network(2, seed).await;
    }
}

#[tokio::test(start_paused = true)]
async fn duplicated_delayed_and_reordered_messages_keep_histories_linearizable_at_r3() {
    for seed in 1..=seeds() {
        messy_network(3, seed).await;
    }
}

#[tokio::test(start_paused = true)]
async fn duplicated_delayed_and_reordered_messages_keep_histories_linearizable_at_r4() {
    for seed in 1..=seeds() {
        messy_network(4, seed).await;
    }
}

#[tokio::test(start_paused = true)]
async fn duplicated_delayed_and_reordered_messages_keep_histories_linearizable_at_r5() {
    for seed in 1..=seeds() {
        messy_network(5, seed).await;
    }
}

impl Sim {
    /// Waits (in virtual time) until every one of `running` that was not removed is at
    /// `epoch`, with no change running, and votes.
    async fn settled(&self, running: &[usize], epoch: u64) {
        let nodes: Vec<Arc<Node>> = running.iter().map(|&i| self.nodes[i].clone()).collect();
        until("the membership change finished everywhere", || {
            nodes
                .iter()
                .filter(|n| !n.is_removed())
                .all(|n| n.map().epoch() == epoch && !n.map().is_changing() && n.is_ready())
        })
        .await;
    }
}

/// Counters incremented through node 0 before a change, `keys` of them, each to its index + 1.
async fn counters(sim: &Sim, history: &History, keys: usize) -> Vec<String> {
    let names: Vec<String> = (0..keys).map(|i| format!("c{i}")).collect();
    for (i, key) in names.iter().enumerate() {
        let outcome = incr(history, 0, sim.node(0), key, i as i64 + 1).await;
        assert_eq!(outcome, Outcome::Ok(Observed::Incr(i as i64 + 1)));
    }
    names
}

/// Reads every counter through each of `through` and checks it holds its index + 1.
async fn counters_intact(sim: &Sim, history: &History, keys: &[String], through: &[usize]) {
    for &n in through {
        for (i, key) in keys.iter().enumerate() {
            let value = read(history, 50 + n, sim.node(n), key).await;
            assert_eq!(value, Some(i as i64 + 1), "{key} through node {n}");
        }
    }
    assert_linearizable(history);
}

#[tokio::test(start_paused = true)]
async fn of_two_changes_asked_at_once_one_runs_and_the_other_is_refused() {
    let sim = Sim::start(4, 3, 11).await;
    // Copies are held back, so the change that applies cannot finish meanwhile.
    sim.faults.hold(None, None, Some(Kind::SyncShard));
    let (a, b) = (sim.node(0).clone(), sim.node(1).clone());
    let first = tokio::spawn(async move { a.remove(NodeId(3), false).await });
    let second = tokio::spawn(async move { b.remove(NodeId(2), false).await });
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    let refused = match (&first, &second) {
        (Ok(_), Err(e)) | (Err(e), Ok(_)) => e.code(),
        _ => panic!("exactly one change applies: {first:?} / {second:?}"),
    };
    assert_eq!(refused, ErrorCode::ChangeInProgress);
    let removed = if first.is_ok() { 3 } else { 2 };
    // The change that applied, asked again, is recognised and changes nothing.
    let again = sim
        .node(2)
        .remove(NodeId(removed as u32), false)
        .await
        .unwrap();
    assert_eq!((again.map.epoch, again.version), (2, 2));
    sim.faults.release();
    sim.settled(&[0, 1, 2, 3], 3).await;
    assert!(sim.node(removed).is_removed());
    let members: Vec<u32> = sim.node(0).map().nodes().iter().map(|n| n.id.0).collect();
    assert_eq!(members.len(), 3);
    assert!(!members.contains(&(removed as u32)));
    sim.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_message_of_an_earlier_epoch_is_refused_and_a_node_left_behind_catches_up() {
    let sim = Sim::start(4, 3, 12).await;
    let history = History::new();
    let keys = counters(&sim, &history, 8).await;
    // Node 2 hears nothing while the removal of node 3 starts.
    let all: Vec<NodeId> = (0..4).map(NodeId).collect();
    sim.faults.isolate(NodeId(2), &all);
    sim.node(0).remove(NodeId(3), false).await.unwrap();
    let nodes: Vec<Arc<Node>> = [0, 1].iter().map(|&i| sim.node(i).clone()).collect();
    until("nodes 0 and 1 moved on to the change", || {
        nodes.iter().all(|n| n.map().epoch() == 2)
    })
    .await;
    assert_eq!(sim.node(2).map().epoch(), 1);

    // A replica message placed under epoch 1 is refused by a node at epoch 2.
    let peers = Peers::new(Arc::new(sim.net.clone()));
    let header = Header {
        from: NodeId(0),
        incarnation: sim.node(0).incarnation(),
        epoch: 1,
        request_id: 7,
        hops: 1,
    };
    let to = NodeInfo {
        id: NodeId(1),
        addr: sim.config.peers[1].clone(),
    };
    let prepare = Prepare {
        key: keys[0].clone(),
        ballot: kvcore::Ballot::new(1 << 20, NodeId(0)),
        grow: 0,
    };
    let refused = peers.call(&to, &header, &prepare).await.unwrap_err();
    assert_eq!(refused.remote_code(), Some(ErrorCode::EpochMismatch));

    // Healed, node 2 learns the map, its reads and writes are placed again under it, and the
    // change, which waited for node 2's copies, finishes.
    sim.faults.heal();
    counters_intact(&sim, &history, &keys, &[2]).await;
    assert!(sim.node(2).map().epoch() >= 2);
    assert_eq!(
        incr(&history, 9, sim.node(2), "late", 10).await,
        Outcome::Ok(Observed::Incr(10))
    );
    sim.settled(&[0, 1, 2, 3], 3).await;
    counters_intact(&sim, &history, &keys, &[0, 1, 2]).await;
    sim.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_change_whose_writer_crashes_at_once_is_found_and_finished_by_the_others() {
    let mut sim = Sim::start(4, 3, 13).await;
    let history = History::new();
    let keys = counters(&sim, &history, 8).await;
    // Node 0 writes the change and crashes before any other node has heard of it.
    for to in 1..4 {
        sim.faults
            .hold(Some(NodeId(0)), Some(NodeId(to)), Some(Kind::Ping));
        sim.faults
            .hold(Some(NodeId(0)), Some(NodeId(to)), Some(Kind::FetchMap));
    }
    sim.node(0).remove(NodeId(3), false).await.unwrap();
    sim.crash(0);
    sim.faults.release();
    // The others find the change in the map register (no message told them of it) ...
    let others: Vec<Arc<Node>> = (1..4).map(|i| sim.node(i).clone()).collect();
    until("the others found the change", || {
        others.iter().all(|n| n.map().epoch() == 2)
    })
    .await;
    // ... and see it through once node 0, which must copy the keys it gains, is back.
    sim.restart(0).await;
    sim.settled(&[0, 1, 2, 3], 3).await;
    assert!(sim.node(3).is_removed());
    counters_intact(&sim, &history, &keys, &[0, 1, 2]).await;
    sim.stop().await;
}

/// Removes node 3 while its copies are held back, crashes node `crashed` in the middle of the
/// move, restarts it, and checks the move finishes with every counter intact.
async fn crash_during_a_move(crashed: usize, seed: u64) {
    let mut sim = Sim::start(4, 3, seed).await;
    let history = History::new();
    let keys = counters(&sim, &history, 12).await;
    sim.faults.hold(None, None, Some(Kind::SyncShard));
    sim.node(0).remove(NodeId(3), false).await.unwrap();
    let node = sim.node(crashed).clone();
    until("the crashed node heard of the change", || {
        node.map().is_changing()
    })
    .await;
    // Writes during the move go through joint quorums.
    let writer = if crashed == 1 { 2 } else { 1 };
    for key in &keys[..4] {
        incr(&history, 1, sim.node(writer), key, 1000).await;
    }
    sim.crash(crashed);
    sim.faults.release();
    sim.restart(crashed).await;
    sim.settled(&[0, 1, 2, 3], 3).await;
    for &n in &[0, 1, 2] {
        for (i, key) in keys.iter().enumerate() {
            let extra = if i < 4 { 1000 } else { 0 };
            let value = read(&history, 60 + n, sim.node(n), key).await;
            assert_eq!(value, Some(i as i64 + 1 + extra), "{key} through node {n}");
        }
    }
    assert_linearizable(&history);
    sim.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_crash_of_a_node_gaining_keys_in_the_middle_of_a_move_loses_nothing() {
    // With node 3 leaving four nodes at R = 3, every other node gains keys.
    crash_during_a_move(1, 14).await;
}

#[tokio::test(start_paused = true)]
async fn a_crash_of_the_leaving_node_in_the_middle_of_its_move_loses_nothing() {
    crash_during_a_move(3, 15).await;
}
