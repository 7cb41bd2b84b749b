//! Background work of a node: heartbeats, catching up after a start, anti-entropy.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kvcore::{Ballot, NodeId, Precondition, Store, Value};
use kvnet::{PeerReply, PeerRequest};
use tokio::task::JoinSet;

use crate::node::{Counters, Node, SEED_KEYS};
use crate::replication::Change;

/// Sleeps for `period`, or returns `false` once the node is stopping.
async fn pause(node: &Node, period: Duration) -> bool {
    let mut stop = node.shutdown.subscribe();
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        () = tokio::time::sleep(period) => true,
        _ = stop.changed() => false,
    }
}

async fn ask(node: &Node, to: NodeId, request: PeerRequest) -> Option<PeerReply> {
    let map = node.map();
    let info = map.node(to)?;
    node.forwarder
        .send(info, 1, node.envelope(request))
        .await
        .ok()
}

/// Pings every peer each heartbeat interval and records who answers.
pub(crate) async fn heartbeats(node: Arc<Node>) {
    let interval = node.config.heartbeat_interval;
    loop {
        let peers: Vec<NodeId> = node.peers();
        let mut pings = JoinSet::new();
        for peer in peers {
            let node = node.clone();
            pings.spawn(async move {
                let pong =
                    tokio::time::timeout(interval * 2, ask(&node, peer, PeerRequest::Ping)).await;
                match pong {
                    Ok(Some(PeerReply::Pong { ready, .. })) => node.membership.heard(peer, ready),
                    _ => node.membership.missed(peer),
                }
            });
        }
        while pings.join_next().await.is_some() {}
        if !pause(&node, interval).await {
            return;
        }
    }
}

/// Brings a starting node up to date before it votes as a replica.
///
/// A node starts empty. Before its replica may vote for a key it merges the copies of every
/// other replica of that key; until then a read quorum that included it could miss a write
/// acknowledged before the restart. The first sync request to a peer carries the node's new
/// incarnation, which fences off any promise the node made in its previous life (see
/// [`crate::membership`]). Then the node writes the seed keys it is primary for.
pub(crate) async fn catch_up(node: Arc<Node>) {
    let peers: Vec<NodeId> = node.peers();
    loop {
        for &peer in &peers {
            if node
                .synced
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&peer)
            {
                continue;
            }
            if sync_from(&node, peer).await {
                node.synced
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(peer);
            }
        }
        let done = {
            let synced = node.synced.lock().unwrap_or_else(|p| p.into_inner());
            peers.iter().all(|p| synced.contains(p))
        };
        if done {
            node.ready.store(true, Ordering::Release);
            tracing::info!(node = %node.id, keys = node.store.len(), "caught up; voting as a replica");
            break;
        }
        if !pause(&node, node.config.heartbeat_interval).await {
            return;
        }
    }
    if node.config.seed_keys {
        seed(&node).await;
    }
}

/// Merges every shard of `peer`'s copies; false if the peer stopped answering midway.
async fn sync_from(node: &Node, peer: NodeId) -> bool {
    let mut shard = 0;
    loop {
        match ask(node, peer, PeerRequest::Sync { shard }).await {
            Some(PeerReply::Synced { states, next }) => {
                for state in states {
                    if let Err(e) = node.store.restore(state) {
                        tracing::warn!(error = %e, "could not restore a key from node {peer}");
                    }
                }
                match next {
                    Some(n) => shard = n,
                    None => return true,
                }
            }
            _ => return false,
        }
    }
}

/// Writes the seed keys this node is primary for, unless they exist.
async fn seed(node: &Node) {
    for (key, value) in SEED_KEYS {
        if node.owner(key) != node.id {
            continue;
        }
        let change = Change::Set {
            value: Value::string(value),
            precondition: Precondition::IfAbsent,
        };
        for _ in 0..10 {
            match node.execute(&change, key, 0).await {
                Ok(_) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "seeding {key:?} failed; retrying");
                    if !pause(node, node.config.heartbeat_interval).await {
                        return;
                    }
                }
            }
        }
    }
}

/// Periodically checks that every key this node is primary for has a current copy on each of
/// its replicas, repairing the ones that lag, and publishes how many keys lacked one.
///
/// A pass reads every key's ballot from every replica, so it is skipped while nothing could
/// have changed: the last pass found every copy, this node's store has not changed, and no peer
/// has changed state since. Every tenth interval a pass runs regardless, for writes this node
/// missed without noticing a peer go down (a partition shorter than the failure detector's
/// grace period).
pub(crate) async fn anti_entropy(node: Arc<Node>) {
    const BACKSTOP: u32 = 10;
    let mut last: Option<(u64, u64)> = None;
    let mut idle = 0;
    loop {
        if !pause(&node, node.config.anti_entropy_interval).await {
            return;
        }
        if !node.is_ready() {
            continue;
        }
        let now = (node.store.changes(), node.membership.transitions());
        if last == Some(now) && idle < BACKSTOP {
            idle += 1;
            continue;
        }
        idle = 0;
        let lacking = anti_entropy_pass(&node).await;
        node.under_replicated.store(lacking, Ordering::Relaxed);
        // Only a clean pass lets the next ones be skipped.
        last = (lacking == 0).then_some(now);
    }
}

/// One pass; returns how many keys lacked a current copy on some replica when it started.
async fn anti_entropy_pass(node: &Node) -> u64 {
    let r = node.replication_factor();
    if r == 1 {
        return 0;
    }
    let map = node.map();
    let mut owners = Vec::with_capacity(r);
    // key -> ballot per replica (None: the replica did not answer).
    let mut seen: HashMap<String, Vec<(NodeId, Option<Ballot>)>> = HashMap::new();
    node.store.for_each_register(|key, register| {
        map.owners_into(key.as_bytes(), r, &mut owners);
        if owners[0] == node.id {
            seen.insert(key.to_owned(), vec![(node.id, Some(register.ballot))]);
        }
    });
    let peers: Vec<NodeId> = node.peers();
    let mut answered = Vec::new();
    for peer in peers {
        if node.membership.is_down(peer) || !digest_from(node, peer, &mut seen).await {
            continue;
        }
        answered.push(peer);
    }
    let quorum = r / 2 + 1;
    let mut lacking = 0;
    for (key, copies) in seen {
        map.owners_into(key.as_bytes(), r, &mut owners);
        let ballot_of = |n: NodeId| -> Option<Ballot> {
            match copies.iter().find(|(c, _)| *c == n) {
                Some((_, b)) => *b,
                // A replica that answered but did not list the key has nothing for it.
                None if n == node.id || answered.contains(&n) => Some(Ballot::ZERO),
                None => None,
            }
        };
        let ballots: Vec<(NodeId, Option<Ballot>)> =
            owners.iter().map(|&n| (n, ballot_of(n))).collect();
        let highest = ballots
            .iter()
            .filter_map(|(_, b)| *b)
            .max()
            .unwrap_or(Ballot::ZERO);
        let holders = ballots.iter().filter(|(_, b)| *b == Some(highest)).count();
        if holders == r {
            continue;
        }
        lacking += 1;
        let mine = node.store.register(&key);
        if mine.ballot == highest && holders >= quorum {
            // Chosen: copy it to the replicas that answered with an older ballot.
            for (n, b) in ballots {
                if matches!(b, Some(b) if b < highest) {
                    let reply = ask(
                        node,
                        n,
                        PeerRequest::Repair {
                            key: key.clone(),
                            register: mine.clone(),
                        },
                    )
                    .await;
                    if let Some(PeerReply::Repaired { applied: true }) = reply {
                        Counters::bump(&node.counters.repairs);
                    }
                }
            }
        } else {
            // Not known to be chosen (an interrupted write, or this replica lags): a read
            // round settles it on a majority; the next pass copies it to the rest.
            let _ = node.execute(&Change::Read, &key, 0).await;
        }
    }
    lacking
}

/// Adds `peer`'s ballots for the keys this node is primary for; false if it did not answer.
async fn digest_from(
    node: &Node,
    peer: NodeId,
    seen: &mut HashMap<String, Vec<(NodeId, Option<Ballot>)>>,
) -> bool {
    let mut shard = 0;
    loop {
        match ask(node, peer, PeerRequest::Digest { shard }).await {
            Some(PeerReply::Digest { ballots, next }) => {
                for (key, ballot) in ballots {
                    seen.entry(key)
                        .or_insert_with(|| vec![(node.id, Some(Ballot::ZERO))])
                        .push((peer, Some(ballot)));
                }
                match next {
                    Some(n) => shard = n,
                    None => return true,
                }
            }
            _ => return false,
        }
    }
}

/// The reply to a digest request from `primary` for one shard.
pub(crate) fn digest(node: &Node, primary: NodeId, shard: u32) -> PeerReply {
    let map = node.map();
    let r = node.replication_factor();
    let mut owners = Vec::with_capacity(r);
    let ballots = node
        .store
        .scan_shard(shard as usize, |key| {
            map.owners_into(key.as_bytes(), r, &mut owners);
            owners.first() == Some(&primary)
        })
        .into_iter()
        .map(|s| (s.key, s.register.ballot))
        .collect();
    let next = shard + 1;
    PeerReply::Digest {
        ballots,
        next: (next < Store::SHARDS as u32).then_some(next),
    }
}
