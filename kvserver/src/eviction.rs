//! Eviction: with `--eviction lru|lfu` a node runs as a cache, removing keys to stay within
//! `--max-memory` instead of refusing writes with 507.
//!
//! # Design
//! - **What is evicted, and how.** Each node's [`Evictor`] picks keys from what its own store
//!   holds (values only, never the cluster's reserved records) and removes each through the
//!   consensus path, as a conditional delete run by the coordinator like any write: an
//!   [`Evict`] of the state it sampled, named by its version and its
//!   [digest](kvcore::Register::digest). Replicas therefore agree on every eviction, a read
//!   never sees an evicted key come back (an eviction is a chosen tombstone, like any delete),
//!   and an eviction never removes a newer write: a key written since it was sampled is at
//!   another version, and the digest covers the one case the version does not, a sample of a
//!   state this replica accepted but that was never chosen (a write that ended 504) while
//!   another write was chosen at the same version. The condition costs nothing extra: the
//!   delete's own round reads the chosen state.
//! - **Which keys.** Sampled as Redis does: a few keys at a time from random store shards
//!   ([`Store::sample`]) into a pool of the best candidates seen ([`EvictionPool`]), ranked by
//!   the access word each key keeps in its store (see [`kvcore::Eviction`]); the best is checked
//!   again before it goes (a key used since is put back with its new rank). A key's uses are
//!   recorded on the replicas that see them: every replica for writes, the majority asked for
//!   reads. So every replica has a view of the key, and a node over budget evicts by its own.
//! - **When.** The evictor looks at its store's byte count every tick (10 ms); once it passes
//!   the high-water mark ([`HIGH_WATER`] of the admission limit, the budget less a sixteenth)
//!   it evicts until it is back under the low-water mark ([`LOW_WATER`] of it), a batch of at
//!   most [`BATCH`] deletes at a time, about as many bytes as it is over. A write that found no
//!   room wakes it at once ([`Room::want`]), and it then makes room for that write too.
//! - **Writes wait for room rather than fail.** In cache mode a prepare that does not fit is
//!   still refused by the replica (`memory_full`, which changes nothing), but the proposer does
//!   not pass that on to the client: it waits for this node's evictor to free something, or a
//!   short back-off, and runs the round again, until the operation's deadline
//!   (`--op-timeout-ms`). Only then, or for an entry larger than half the budget (which
//!   evicting cannot be relied on to fit), does the client get 507. The wait is in the
//!   proposer, not in the replica, because a replica answers its own node's messages in place,
//!   without awaiting, and because a replica holding a peer's prepare open would hold its
//!   connection too.
//! - **Bytes never pass the budget.** A write is admitted in its prepare against the store's
//!   [admission limit](kvcore::StoreConfig::admission), the budget less a sixteenth; its
//!   accept, a one-round write's accept (which has no prepare, and is tried only while the
//!   coordinator's store [admits](kvcore::Store::admits) it) and copies to lagging replicas
//!   are checked against the budget itself (the [ceiling](kvcore::StoreConfig::ceiling)), so
//!   that writes prepared together do not refuse each other's accepts (a write accepted by
//!   some replicas only has an unknown outcome) while they need less than that sixteenth
//!   together. Nothing is reserved between a prepare and its accept: an accept refused for
//!   room after another replica took it is sent again, unchanged, once there may be some,
//!   until the operation's deadline (see the proposer's full round). A node's bytes
//!   therefore never pass `--max-memory` through writes, and fall back under the admission
//!   limit once the evictor catches up; only copies (catch-up after a restart, keys gained in
//!   a membership change) are taken whatever the budget.
//!   Deletes, and so evictions, add no bytes and never wait: they cannot deadlock on full
//!   replicas.
//! - **Tombstones.** An eviction leaves a tombstone on each replica (the key and the entry
//!   overhead) until it is collected. Rather than leave that to the next anti-entropy pass,
//!   the evictor reads the key's register from every replica, and once all hold the tombstone
//!   collects it as anti-entropy would (the other replicas first, then its own). One a replica
//!   has not caught up with yet (a one-round write reaches the third replica in a background
//!   batch) is tried again a few ticks later, then left to anti-entropy. Seed keys keep their
//!   tombstones, as always.
//! - **R > 1.** Every replica of a key counts it against its own budget. A node over budget
//!   evicts from what it holds, and the replicated delete frees the key on every replica, so
//!   nodes that hold the same keys fall under their marks together. Each evicts at most about
//!   what it is over, so with several nodes over at once they evict a few batches more than one
//!   would have: the low-water mark absorbs that.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kvcore::store::{Candidate, EvictionPool};
use kvcore::{Ballot, NodeId, Store, StoreConfig};
use kvnet::rpc::{Evict, Read};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::anti_entropy::collect_everywhere;
use crate::coordinator::Coordinator;
use crate::error::Error;
use crate::lifecycle::Lifecycle;
use crate::metrics::{bump, Metrics};
use crate::peers::{new_request_id, PeerClient};
use crate::readiness::Readiness;
use crate::seed::is_seed_key;
use crate::topology::{is_reserved, Topology};

/// Percent of the admission limit above which the evictor starts.
pub const HIGH_WATER: u64 = 95;

/// Percent of the admission limit the evictor brings a node back under.
pub const LOW_WATER: u64 = 90;

/// Evictions in flight at once.
pub const BATCH: usize = 16;

/// Keys sampled per key picked (Redis's `maxmemory-samples` default); the pool keeps the best
/// across samples.
const SAMPLE_KEYS: usize = 5;

/// Shards a sample looks at, at most, for its keys: a small store leaves most shards empty.
const SAMPLE_SHARDS: usize = 32;

/// Times a tombstone whose replicas do not all hold it yet is looked at again before it is
/// left to anti-entropy.
const COLLECT_TRIES: u32 = 5;

/// Ticks between two looks at a tombstone waiting for its replicas.
const COLLECT_EVERY: u32 = 3;

/// What the write path and the evictor share: writes that found no room wake the evictor and
/// wait for it to free some.
#[derive(Debug)]
pub struct Room {
    config: StoreConfig,
    /// The most bytes a write refused since the evictor last looked needed.
    wanted: AtomicU64,
    wake: Notify,
    freed: Notify,
}

impl Room {
    /// Room of a store set up as `config`.
    pub fn new(config: StoreConfig) -> Self {
        Room {
            config,
            wanted: AtomicU64::new(0),
            wake: Notify::new(),
            freed: Notify::new(),
        }
    }

    /// Whether a write that needs `bytes` more is worth waiting for: in cache mode, and no more
    /// than half the [admission limit](StoreConfig::admission) (evicting down to less than
    /// half is not done for one write).
    pub fn worth_waiting(&self, bytes: u64) -> bool {
        self.config.eviction.evicts()
            && self
                .config
                .admission()
                .is_some_and(|limit| bytes <= limit / 2)
    }

    /// A write found no room for `bytes` more in this node's store: wakes the evictor, which
    /// makes room for it too. Nothing in a store that does not evict.
    pub fn want(&self, bytes: u64) {
        if self.worth_waiting(bytes) {
            self.wanted.fetch_max(bytes, Ordering::Relaxed);
            self.wake.notify_one();
        }
    }

    /// Waits until the evictor has freed something, or until `until`.
    pub async fn wait(&self, until: Instant) {
        let _ = tokio::time::timeout_at(until, self.freed.notified()).await;
    }

    fn take_wanted(&self) -> u64 {
        self.wanted.swap(0, Ordering::Relaxed)
    }
}

/// A tombstone an eviction left, waiting for every replica to hold it before it is collected.
#[derive(Debug)]
struct Tombstone {
    key: String,
    ballot: Ballot,
    tries: u32,
}

/// The background task that keeps a node in cache mode within its budget.
#[derive(Debug)]
pub struct Evictor {
    /// The node's store.
    pub store: Arc<Store>,
    /// Who replicates what.
    pub topology: Arc<Topology>,
    /// Runs the deletes.
    pub coordinator: Arc<Coordinator>,
    /// Reads replicas' registers and collects tombstones.
    pub client: Arc<PeerClient>,
    /// Whether this node has caught up.
    pub readiness: Arc<Readiness>,
    /// Counts evictions.
    pub metrics: Arc<Metrics>,
    /// Where writes that found no room wake it.
    pub room: Arc<Room>,
    /// Runs each eviction as a task of the node.
    pub lifecycle: Arc<Lifecycle>,
}

impl Evictor {
    /// Looks at the store every `interval` (and whenever a write found no room) until the node
    /// stops.
    pub async fn run(self, interval: Duration) {
        // Marks of the admission limit, below which new writes fit (the budget's last
        // sixteenth is left to writes already admitted): see `StoreConfig::admission`.
        let Some(max) = self.store.config().admission() else {
            return;
        };
        let high = max / 100 * HIGH_WATER;
        let low = max / 100 * LOW_WATER;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rng = SmallRng::from_entropy();
        let mut pool = EvictionPool::new();
        let mut tombstones: Vec<Tombstone> = Vec::new();
        let mut ticks: u32 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.room.wake.notified() => {}
            }
            ticks = ticks.wrapping_add(1);
            self.store.tick();
            if !self.readiness.is_ready() {
                continue;
            }
            let wanted = self.room.take_wanted();
            // Room for the write that asked, but never below half the admission limit for it.
            let target = low.min(max.saturating_sub(wanted)).max(max / 2);
            if self.store.used_bytes() > high || wanted > 0 {
                self.evict_to(target, &mut rng, &mut pool, &mut tombstones)
                    .await;
                self.room.freed.notify_waiters();
            }
            if ticks.is_multiple_of(COLLECT_EVERY) && !tombstones.is_empty() {
                let waiting = std::mem::take(&mut tombstones);
                tombstones = self.collect(waiting).await;
            }
        }
    }

    /// Evicts until the store's bytes are at most `target`, or nothing more can be evicted.
    async fn evict_to(
        &self,
        target: u64,
        rng: &mut SmallRng,
        pool: &mut EvictionPool,
        tombstones: &mut Vec<Tombstone>,
    ) {
        let mut fruitless = 0;
        loop {
            self.store.tick();
            let used = self.store.used_bytes();
            if used <= target {
                return;
            }
            let picks = self.pick(used - target, rng, pool);
            if picks.is_empty() {
                return;
            }
            let evicted = self.evict(picks).await;
            self.room.freed.notify_waiters();
            if evicted.is_empty() {
                // Every pick was written again, or failed: the next batch may fare better, a
                // third in a row is left for the next tick.
                fruitless += 1;
                if fruitless == 3 {
                    return;
                }
                continue;
            }
            fruitless = 0;
            tombstones.extend(self.tombstones(evicted));
            let waiting = std::mem::take(tombstones);
            *tombstones = self.collect(waiting).await;
        }
    }

    /// Up to [`BATCH`] keys to evict, about `bytes` of them: the best of the pool after a few
    /// more samples each, each checked again against the store, with the digest of the state
    /// its replica holds then (the state the eviction removes, or nothing).
    fn pick(
        &self,
        bytes: u64,
        rng: &mut SmallRng,
        pool: &mut EvictionPool,
    ) -> Vec<(Candidate, u64)> {
        let me = self.topology.me();
        let mut picks: Vec<(Candidate, u64)> = Vec::new();
        let mut freed = 0u64;
        for _ in 0..BATCH * 4 {
            if picks.len() == BATCH || freed >= bytes {
                break;
            }
            let mut sampled = 0;
            for _ in 0..SAMPLE_SHARDS {
                if sampled >= SAMPLE_KEYS {
                    break;
                }
                let shard = rng.gen_range(0..Store::SHARDS);
                let from = rng.gen();
                let taken =
                    |key: &str| !is_reserved(key) && !picks.iter().any(|(p, _)| p.key == key);
                sampled += self
                    .store
                    .sample(shard, from, SAMPLE_KEYS - sampled, taken, pool);
            }
            let Some(best) = pool.pop() else {
                continue;
            };
            let Some(now) = self.store.candidate(&best.key) else {
                continue; // gone meanwhile
            };
            if now.version != best.version {
                continue; // written again: sampled afresh some other time
            }
            if pool.best_score().is_some_and(|next| now.score < next) {
                pool.offer(now); // used since it was sampled
                continue;
            }
            if !self.topology.placement(&now.key).contains(me) {
                continue; // a copy this node keeps only until a membership change drops it
            }
            let sampled = self.store.register(&now.key);
            if sampled.value.is_none() || sampled.version != now.version {
                continue; // changed since the look above
            }
            freed += now.bytes;
            picks.push((now, sampled.digest()));
        }
        picks
    }

    /// Deletes each of `picks` if it still holds the state picked (by version and digest), all
    /// at once; returns those deleted.
    async fn evict(&self, picks: Vec<(Candidate, u64)>) -> Vec<Candidate> {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Candidate, Result<bool, Error>)>();
        for (candidate, digest) in picks {
            let (coordinator, tx) = (self.coordinator.clone(), tx.clone());
            self.lifecycle.spawn(async move {
                let evict = Evict {
                    key: candidate.key.clone(),
                    version: candidate.version,
                    digest,
                };
                let deleted = coordinator.write(evict, 0, new_request_id()).await;
                let _ = tx.send((candidate, deleted));
            });
        }
        drop(tx);
        let mut evicted = Vec::new();
        while let Some((candidate, deleted)) = rx.recv().await {
            match deleted {
                Ok(true) => {
                    bump(&self.metrics.evicted);
                    evicted.push(candidate);
                }
                Ok(false) => {} // written again since it was sampled: it stays
                Err(e) => {
                    tracing::debug!(key = candidate.key, error = %e, "eviction failed");
                }
            }
        }
        evicted
    }

    /// The tombstones `evicted` left here that can be collected: not a seed key's, not of a
    /// key a membership change is moving, and still the eviction's own.
    fn tombstones(&self, evicted: Vec<Candidate>) -> Vec<Tombstone> {
        evicted
            .into_iter()
            .filter(|c| !is_seed_key(&c.key) && !self.topology.placement(&c.key).is_joint())
            .filter_map(|c| {
                let mine = self.store.register(&c.key);
                let own = mine.value.is_none()
                    && mine.version == c.version.next()
                    && mine.ballot > Ballot::ZERO;
                own.then_some(Tombstone {
                    key: c.key,
                    ballot: mine.ballot,
                    tries: 0,
                })
            })
            .collect()
    }

    /// Collects every tombstone of `waiting` that all its replicas hold (see
    /// [`collect_everywhere`]); returns those to look at again.
    async fn collect(&self, waiting: Vec<Tombstone>) -> Vec<Tombstone> {
        let map = self.topology.map();
        let epoch = map.epoch();
        let me = self.topology.me();
        let (tx, mut rx) = mpsc::unbounded_channel::<(Tombstone, Option<Vec<NodeId>>)>();
        for tombstone in waiting {
            let placement = Topology::placement_in(&map, self.topology.replicas(), &tombstone.key);
            if placement.is_joint() || !placement.contains(me) {
                continue;
            }
            let (client, tx) = (self.client.clone(), tx.clone());
            self.lifecycle.spawn(async move {
                let read = Read {
                    key: tombstone.key.clone(),
                };
                let id = new_request_id();
                let mut everywhere = true;
                for &peer in placement.replicas.iter().filter(|&&n| n != me) {
                    let held = match client.call_at(epoch, peer, id, 1, &read).await {
                        Ok(register) => {
                            register.ballot == tombstone.ballot && register.value.is_none()
                        }
                        Err(_) => false,
                    };
                    if !held {
                        everywhere = false;
                        break;
                    }
                }
                let owners = everywhere.then_some(placement.replicas);
                let _ = tx.send((tombstone, owners));
            });
        }
        drop(tx);
        let mut collectable = Vec::new();
        let mut again = Vec::new();
        while let Some((mut tombstone, owners)) = rx.recv().await {
            match owners {
                Some(owners) => collectable.push((tombstone.key, tombstone.ballot, owners)),
                None => {
                    tombstone.tries += 1;
                    if tombstone.tries < COLLECT_TRIES {
                        again.push(tombstone);
                    }
                }
            }
        }
        if !collectable.is_empty() {
            collect_everywhere(
                &self.client,
                &self.topology,
                &self.store,
                &self.metrics,
                epoch,
                collectable,
            )
            .await;
        }
        again
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvcore::Eviction;

    #[test]
    fn writes_wait_for_room_only_in_cache_mode_and_only_for_what_eviction_can_make() {
        let cache = StoreConfig {
            max_memory: Some(1000),
            eviction: Eviction::Lru,
            ..StoreConfig::default()
        };
        // Half of what writes are admitted up to (1000 less a sixteenth, 938): what the
        // evictor makes room for at most.
        let room = Room::new(cache);
        assert!(room.worth_waiting(469));
        assert!(!room.worth_waiting(470));
        room.want(10);
        room.want(300);
        room.want(20);
        room.want(900);
        assert_eq!(room.take_wanted(), 300);
        assert_eq!(room.take_wanted(), 0);
        let refusing = Room::new(StoreConfig {
            eviction: Eviction::None,
            ..cache
        });
        assert!(!refusing.worth_waiting(1));
        refusing.want(10);
        assert_eq!(refusing.take_wanted(), 0);
    }
}
