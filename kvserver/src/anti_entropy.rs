//! Anti-entropy: every key a node is primary for keeps a current copy on each of its replicas.
//!
//! Each pass reads every such key's ballot from every replica (in [`DigestShard`] pages), copies
//! a chosen register to the replicas that lag, and settles keys whose state is not known to be
//! chosen with a read round. It publishes how many keys lacked a copy.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kvcore::{Ballot, NodeId, Store};
use kvnet::rpc::{DigestShard, Repair};

use crate::coordinator::Coordinator;
use crate::detector::FailureDetector;
use crate::drift::Drift;
use crate::metrics::{bump, Metrics};
use crate::peers::{new_request_id, PeerClient};
use crate::readiness::Readiness;
use crate::topology::Topology;

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

    /// One pass; returns how many keys lacked a current copy on some replica when it started.
    async fn pass(&self) -> u64 {
        let r = self.topology.replication_factor();
        if r == 1 {
            return 0;
        }
        let me = self.topology.me();
        let map = self.topology.map();
        let mut owners = Vec::with_capacity(r);
        // key -> ballot per replica (None: the replica did not answer).
        let mut seen: HashMap<String, Vec<(NodeId, Option<Ballot>)>> = HashMap::new();
        self.store.for_each_ballot(|key, ballot| {
            map.owners_into(key.as_bytes(), r, &mut owners);
            if owners[0] == me {
                seen.insert(key.to_owned(), vec![(me, Some(ballot))]);
            }
        });
        let mut answered = Vec::new();
        for peer in self.topology.peers() {
            if self.detector.is_down(peer) || !self.digest_from(peer, &mut seen).await {
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
            let holders = ballots.iter().filter(|(_, b)| *b == Some(highest)).count();
            if holders == r {
                continue;
            }
            lacking += 1;
            let mine = self.store.register(&key);
            if mine.ballot == highest && holders >= quorum {
                // Chosen: copy it to the replicas that answered with an older ballot.
                let repair = Repair {
                    key: key.clone(),
                    register: mine,
                };
                let request_id = new_request_id();
                for (n, b) in ballots {
                    if matches!(b, Some(b) if b < highest) {
                        if let Ok(true) = self.client.call(n, request_id, 1, &repair).await {
                            bump(&self.metrics.repairs);
                        }
                    }
                }
            } else {
                // Not known to be chosen (an interrupted write, or this replica lags): a read
                // round settles it on a majority; the next pass copies it to the rest.
                let _ = self.coordinator.get(&key, 0, new_request_id()).await;
            }
        }
        lacking
    }

    /// Adds `peer`'s ballots for the keys this node is primary for; false if it did not answer.
    async fn digest_from(
        &self,
        peer: NodeId,
        seen: &mut HashMap<String, Vec<(NodeId, Option<Ballot>)>>,
    ) -> bool {
        let me = self.topology.me();
        let request_id = new_request_id();
        let mut shard = 0;
        loop {
            match self
                .client
                .call(peer, request_id, 1, &DigestShard { shard })
                .await
            {
                Ok(page) => {
                    for (key, ballot) in page.ballots {
                        seen.entry(key)
                            .or_insert_with(|| vec![(me, Some(Ballot::ZERO))])
                            .push((peer, Some(ballot)));
                    }
                    match page.next {
                        Some(n) if n > shard => shard = n,
                        _ => return true,
                    }
                }
                Err(_) => return false,
            }
        }
    }
}
