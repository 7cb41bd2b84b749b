//! Anti-entropy: every key a node is primary for keeps a current copy on each of its replicas,
//! and tombstones that every replica holds are collected.
//!
//! A pass goes through the store one shard at a time (shards are the same on every node), so it
//! holds at most one shard's keys. For each shard it reads the ballot of every key this node is
//! primary for from every replica (in [`DigestShard`] pages), copies a chosen register to the
//! replicas that lag, and settles keys whose state is not known to be chosen with a round. A
//! key whose every replica holds the same tombstone is collected ([`Collect`]): first on the
//! other replicas, then here, so while any replica keeps it, the primary keeps it too and the
//! next pass finishes the job. It publishes how many keys lacked a copy.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kvcore::{Ballot, NodeId, Store};
use kvnet::rpc::{Collect, DigestShard, Repair, PAGE_BYTES};

use crate::coordinator::Coordinator;
use crate::detector::FailureDetector;
use crate::drift::Drift;
use crate::metrics::{bump, Metrics};
use crate::peers::{new_request_id, PeerClient};
use crate::readiness::Readiness;
use crate::seed::is_seed_key;
use crate::topology::{replicas_into, Topology};

/// What anti-entropy needs.
#[derive(Debug)]
pub struct AntiEntropy {
    /// Sends digests and repairs.
    pub client: Arc<PeerClient>,
    /// This node's replicas.
    pub store: Arc<Store>,
    /// Where keys live.
    pub topology: Arc<Topology>,
    /// Skips peers known to be down.
    pub detector: Arc<FailureDetector>,
    /// Passes wait until the node has caught up.
    pub readiness: Arc<Readiness>,
    /// Settles keys whose state is not known to be chosen.
    pub coordinator: Arc<Coordinator>,
    /// Counts repairs.
    pub metrics: Arc<Metrics>,
    /// Keys this node is primary for that lacked a copy at the last pass.
    pub under_replicated: Arc<AtomicU64>,
    /// Signs that a copy may have been missed since.
    pub drift: Arc<Drift>,
}

impl AntiEntropy {
    /// Runs a pass every `interval`.
    ///
    /// A pass reads every key's ballot from every replica, so it is skipped while no copy can
    /// have gone missing: the last pass found every copy, no peer has changed state, and no
    /// accept was refused or lost, here or on any peer (peers report their count in heartbeats),
    /// nor any round on this node's keys run elsewhere, since (see [`Drift`]). A healthy cluster under load then spends nothing on it. Every tenth interval
    /// a pass runs regardless, as a backstop for whatever that misses.
    pub async fn run(self, interval: Duration) {
        const BACKSTOP: u32 = 10;
        let mut last: Option<(u64, u64)> = None;
        let mut idle = 0;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !self.readiness.is_ready() {
                continue;
            }
            let drift = self.drift.count().wrapping_add(self.detector.peers_drift());
            let now = (drift, self.detector.transitions());
            if last == Some(now) && idle < BACKSTOP {
                idle += 1;
                bump(&self.metrics.anti_entropy_skips);
                continue;
            }
            idle = 0;
            bump(&self.metrics.anti_entropy_passes);
            let lacking = self.pass().await;
            self.under_replicated.store(lacking, Ordering::Relaxed);
            // Only a clean pass lets the next ones be skipped.
            last = (lacking == 0).then_some(now);
        }
    }

    /// One pass; returns how many keys lacked a current copy on some replica when it started,
    /// or wait to be collected.
    async fn pass(&self) -> u64 {
        if self.topology.map().len() == 1 {
            // Every key's only replica is here (and drops tombstones as soon as they are
            // chosen). With more members, even at `R = 1` the cluster's map is on every one.
            return 0;
        }
        let mut lacking = 0;
        for shard in 0..Store::SHARDS {
            lacking += self.pass_shard(shard).await;
        }
        lacking
    }

    /// A pass over one store shard.
    ///
    /// The whole pass works under one map: digests are asked for at its epoch (a replica at
    /// another refuses), keys are placed under it, and nothing is collected once this node has
    /// adopted another (a replica's "absent" may then mean "not copied yet").
    async fn pass_shard(&self, shard: usize) -> u64 {
        let r = self.topology.replicas();
        let me = self.topology.me();
        let map = self.topology.map();
        let epoch = map.epoch();
        let (mut owners, mut previous) = (Vec::with_capacity(r), Vec::new());
        // key -> ballot per replica (None: the replica did not answer).
        let mut seen: HashMap<String, Vec<(NodeId, Option<Ballot>)>> = HashMap::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .ballots_page(shard, after.as_deref(), PAGE_BYTES, |key| {
                    replicas_into(&map, key, r, &mut owners, &mut previous);
                    owners[0] == me
                });
            for (key, ballot) in page.items {
                seen.insert(key, vec![(me, Some(ballot))]);
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let mut answered = Vec::new();
        for peer in self.topology.peers() {
            if self.detector.is_down(peer) || !self.digest_from(epoch, peer, shard, &mut seen).await
            {
                continue;
            }
            answered.push(peer);
        }
        let mut lacking = 0;
        let mut collectable = Vec::new();
        for (key, copies) in seen {
            if self.topology.epoch() != epoch {
                return lacking;
            }
            let placement = Topology::placement_in(&map, r, &key);
            let owners = &placement.replicas;
            let ballot_of = |n: NodeId| -> Option<Ballot> {
                match copies.iter().find(|(c, _)| *c == n) {
                    Some((_, b)) => *b,
                    // A replica that answered but did not list the key has nothing for it.
                    None if n == me || answered.contains(&n) => Some(Ballot::ZERO),
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
            let holders: Vec<NodeId> = ballots
                .iter()
                .filter(|(_, b)| *b == Some(highest))
                .map(|(n, _)| *n)
                .collect();
            let mine = self.store.register(&key);
            // While a membership change runs, new replicas may still be receiving their
            // copies: an empty one is not "absent", so nothing of a moving key is collected.
            let collecting = !placement.is_joint() && !is_seed_key(&key);
            if holders.len() == owners.len() {
                // Every replica holds the same register: a tombstone there can go, and so can
                // a promise-only record (nothing accepted: a round that failed after its
                // prepare), whose promise the floor keeps.
                if mine.ballot == highest && mine.value.is_none() && collecting {
                    lacking += 1;
                    collectable.push((key, highest, owners.clone()));
                }
                continue;
            }
            lacking += 1;
            let absent: Vec<NodeId> = ballots
                .iter()
                .filter(|(_, b)| *b == Some(Ballot::ZERO))
                .map(|(n, _)| *n)
                .collect();
            if placement.is_quorum(&absent) && collecting {
                // A majority holds nothing, so nothing is chosen: the ballot above zero is a
                // tombstone some replicas have already dropped (a collection cut short), or a
                // write that was never chosen. The holders drop the former; `Collect` leaves
                // anything else alone, for the round below.
                if self.collect_from(epoch, &key, highest, &holders).await {
                    continue;
                }
            }
            if mine.ballot == highest && placement.is_quorum(&holders) {
                // Chosen: copy it to the replicas that answered with an older ballot.
                let repair = Repair {
                    key: key.clone(),
                    register: mine,
                };
                let request_id = new_request_id();
                let mut refused = false;
                for (n, b) in ballots {
                    if matches!(b, Some(b) if b < highest) {
                        match self.client.call(n, request_id, 1, &repair).await {
                            Ok(true) => bump(&self.metrics.repairs),
                            // The replica promised more than this ballot (its shard's floor,
                            // raised by collected keys, counts as a promise for a key it lacks).
                            Ok(false) => refused = true,
                            Err(_) => {}
                        }
                    }
                }
                if refused {
                    // A round under a fresh ballot reaches every replica.
                    let _ = self.coordinator.settle(&key, new_request_id()).await;
                }
            } else if placement.is_quorum(&holders) && mine.ballot > Ballot::ZERO {
                // Chosen, and this replica holds an older state: a copy could be refused here
                // (this replica may have promised more than the chosen ballot), so a round
                // under a fresh ballot brings every replica to it. (A replica that holds
                // nothing of the key is left to the read below: it may be the last step of a
                // collection.)
                let _ = self.coordinator.settle(&key, new_request_id()).await;
            } else {
                // Not known to be chosen (an interrupted write): a read round settles it on a
                // majority; the next pass copies it to the rest.
                let _ = self.coordinator.get(&key, 0, new_request_id()).await;
            }
        }
        self.collect(epoch, collectable).await;
        lacking
    }

    fn collect_here(&self, epoch: u64, key: &str, ballot: Ballot) -> bool {
        collect_here(&self.topology, &self.store, epoch, key, ballot)
    }

    /// Drops `key`'s tombstone of `ballot` on each of `holders`; whether all of them did.
    async fn collect_from(
        &self,
        epoch: u64,
        key: &str,
        ballot: Ballot,
        holders: &[NodeId],
    ) -> bool {
        let me = self.topology.me();
        let request = Collect {
            keys: vec![(key.to_owned(), ballot)],
        };
        let mut all = true;
        for &n in holders {
            let removed = if n == me {
                self.collect_here(epoch, key, ballot)
            } else {
                let answer = self
                    .client
                    .call_at(epoch, n, new_request_id(), 1, &request)
                    .await;
                matches!(answer.as_deref(), Ok([true]))
            };
            if removed {
                bump(&self.metrics.collected);
            }
            all &= removed;
        }
        all
    }

    async fn collect(&self, epoch: u64, keys: Vec<(String, Ballot, Vec<NodeId>)>) {
        let (client, topology, store) = (&self.client, &self.topology, &self.store);
        collect_everywhere(client, topology, store, &self.metrics, epoch, keys).await;
    }

    /// Adds `peer`'s ballots for the keys of `shard` this node is primary for; false if it did
    /// not answer.
    async fn digest_from(
        &self,
        epoch: u64,
        peer: NodeId,
        shard: usize,
        seen: &mut HashMap<String, Vec<(NodeId, Option<Ballot>)>>,
    ) -> bool {
        let me = self.topology.me();
        let request_id = new_request_id();
        let mut after: Option<String> = None;
        loop {
            let request = DigestShard {
                shard: shard as u32,
                after: after.clone(),
            };
            match self
                .client
                .call_at(epoch, peer, request_id, 1, &request)
                .await
            {
                Ok(page) => {
                    for (key, ballot) in page.ballots {
                        seen.entry(key)
                            .or_insert_with(|| vec![(me, Some(Ballot::ZERO))])
                            .push((peer, Some(ballot)));
                    }
                    match page.next {
                        // Pages must move forward, or a confused peer could keep this going.
                        Some(next) if after.as_ref().is_none_or(|a| &next > a) => {
                            after = Some(next)
                        }
                        Some(_) => return false,
                        None => return true,
                    }
                }
                Err(_) => return false,
            }
        }
    }
}

/// Collects tombstones that every replica of their key holds (each given with its ballot and
/// its key's replicas, as found under the map of `epoch`): on the other replicas first, then
/// here once every other replica has dropped its copy, so while any replica keeps one, this
/// node keeps it too and a later pass finishes the job. What anti-entropy does with the
/// tombstones it finds, and the evictor with those its evictions leave.
pub async fn collect_everywhere(
    client: &PeerClient,
    topology: &Topology,
    store: &Store,
    metrics: &Metrics,
    epoch: u64,
    keys: Vec<(String, Ballot, Vec<NodeId>)>,
) {
    let me = topology.me();
    // Messages of about a page each, whatever the keys' lengths.
    let mut batches = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (key, _, _)) in keys.iter().enumerate() {
        if bytes >= PAGE_BYTES {
            batches.push(&keys[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += key.len() + 16;
    }
    batches.push(&keys[start..]);
    for batch in batches {
        let mut dropped = vec![0usize; batch.len()];
        let mut asked = vec![0usize; batch.len()];
        for peer in topology.peers() {
            let mine: Vec<usize> = (0..batch.len())
                .filter(|&i| batch[i].2.contains(&peer))
                .collect();
            if mine.is_empty() {
                continue;
            }
            for &i in &mine {
                asked[i] += 1;
            }
            let request = Collect {
                keys: mine
                    .iter()
                    .map(|&i| (batch[i].0.clone(), batch[i].1))
                    .collect(),
            };
            let answer = client.call_at(epoch, peer, new_request_id(), 1, &request);
            if let Ok(removed) = answer.await {
                for (&i, removed) in mine.iter().zip(removed) {
                    dropped[i] += usize::from(removed);
                }
            }
        }
        for (i, (key, ballot, owners)) in batch.iter().enumerate() {
            debug_assert!(owners.contains(&me));
            if dropped[i] == asked[i] && collect_here(topology, store, epoch, key, *ballot) {
                bump(&metrics.collected);
            }
        }
    }
}

/// Collects `key`'s tombstone of `ballot` here, if this node is still at `epoch`.
fn collect_here(topology: &Topology, store: &Store, epoch: u64, key: &str, ballot: Ballot) -> bool {
    let map = topology.pin();
    map.epoch() == epoch && store.collect(key, ballot).unwrap_or(false)
}
