//! Active expiry: keys whose time ran out are removed in the background, not only when read.
//!
//! A node walks its store a few shards per tick, finds values whose expiry time passed by its
//! clock, and for each key it sweeps runs a full round on it, which chooses the deletion (see
//! [`apply_at`](crate::operation::apply_at)) unless a write replaced the value meanwhile. The
//! tombstone is then collected like any other. A key is swept by its primary, or, while the
//! primary is down, by the first of its replicas that is up, so one round removes it instead
//! of one per replica.
//!
//! Rather than sample keys at random as Redis does (it keeps a separate table of the keys with
//! an expiry time to sample from), the sweep walks shards in turn: every expired key is found
//! within one pass over the store ([`Store::SHARDS`] / [`SHARDS_PER_TICK`] ticks), and a shard
//! holding no value with an expiry time is skipped without a walk, so keys without a TTL cost
//! it nothing. At most [`MAX_PER_TICK`] keys are removed per tick, [`IN_FLIGHT`] rounds at a
//! time; a mass expiry beyond that rate is spread over the following passes (reads still see
//! every expired key as missing at once).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use kvcore::{NodeId, Store};

use crate::clock::Clock;
use crate::coordinator::Coordinator;
use crate::detector::FailureDetector;
use crate::metrics::{bump, Metrics};
use crate::peers::new_request_id;
use crate::readiness::Readiness;
use crate::topology::{is_reserved, Placement, Topology};

/// Shards looked at per tick: with a tick every 100 ms, the whole store every 6.4 s.
pub const SHARDS_PER_TICK: usize = 4;

/// Keys removed per tick at most, so a mass expiry is spread out rather than run at once.
pub const MAX_PER_TICK: usize = 256;

/// Removal rounds run at once.
pub const IN_FLIGHT: usize = 16;

/// The background sweep of expired keys.
#[derive(Debug)]
pub struct Expirer {
    /// The node's store.
    pub store: Arc<Store>,
    /// Who replicates what.
    pub topology: Arc<Topology>,
    /// Runs the rounds that remove keys.
    pub coordinator: Arc<Coordinator>,
    /// Which replicas are up.
    pub detector: Arc<FailureDetector>,
    /// Whether this node has caught up.
    pub readiness: Arc<Readiness>,
    /// What expiry times are compared with.
    pub clock: Arc<Clock>,
    /// Counts removals.
    pub metrics: Arc<Metrics>,
}

impl Expirer {
    /// Sweeps `SHARDS_PER_TICK` shards every `interval`, until the node stops.
    pub async fn run(self, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_shard = 0;
        loop {
            tick.tick().await;
            if !self.readiness.is_ready() {
                continue;
            }
            let mut budget = MAX_PER_TICK;
            for _ in 0..SHARDS_PER_TICK {
                budget -= self.sweep(next_shard, budget).await;
                next_shard = (next_shard + 1) % Store::SHARDS;
                if budget == 0 {
                    break;
                }
            }
        }
    }

    /// Removes up to `max` expired keys of `shard` that this node sweeps; returns how many it
    /// tried.
    async fn sweep(&self, shard: usize, max: usize) -> usize {
        let now = self.clock.now_ms();
        // Which keys are this node's to sweep is decided under the shard's lock, from copies of
        // the map and of the detector's view taken before: nothing else is locked meanwhile (a
        // replica holds the map, then a shard, while it applies a message).
        let (map, r, me) = (
            self.topology.map(),
            self.topology.replicas(),
            self.topology.me(),
        );
        let down: Vec<NodeId> = map
            .nodes()
            .iter()
            .map(|n| n.id)
            .filter(|&id| id != me && self.detector.is_down(id))
            .collect();
        let mine = |key: &str| {
            !is_reserved(key) && sweeper(&Topology::placement_in(&map, r, key), &down) == Some(me)
        };
        let expired = self.store.expired(shard, now, max, mine);
        let tried = expired.len();
        // A read round removes the value if it is still the expired one; a failure leaves it for
        // the next pass (or for the next read, which removes it the same way).
        let mut rounds = futures_util::stream::iter(expired)
            .map(|key| async move {
                let removed = self.coordinator.settle(&key, new_request_id()).await;
                (key, removed)
            })
            .buffer_unordered(IN_FLIGHT);
        while let Some((key, removed)) = rounds.next().await {
            match removed {
                Ok(None) => bump(&self.metrics.expired),
                Ok(Some(_)) => {} // written again meanwhile
                Err(e) => tracing::debug!(key, error = %e, "expired key not removed yet"),
            }
        }
        tried
    }
}

/// The node to remove a key placed as `placement`: its primary, or, while the primary is down,
/// the first replica that is up (`None` if all are down).
fn sweeper(placement: &Placement, down: &[NodeId]) -> Option<NodeId> {
    placement
        .replicas
        .iter()
        .copied()
        .find(|r| !down.contains(r))
}
