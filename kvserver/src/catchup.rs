//! Catching up after a start: a node merges its peers' copies before it votes as a replica.
//!
//! A node copies, from every peer, the state of each key both replicate, one store shard at a
//! time in pages of about [`PAGE_BYTES`](kvnet::rpc::PAGE_BYTES), each resumed after the last
//! key of the one before, so no message grows with the data. The copy from a peer counts only
//! if every page came from one incarnation of that peer; otherwise it starts over.
//!
//! The first sync request to a peer carries the node's new incarnation, which fences off any
//! promise the node made in its previous life (see [`crate::incarnations`]). Each page says
//! which incarnation of this node the peer remembers; if that is not below the node's own (its
//! clock went back across the restart), the node rises above it and starts over with every peer,
//! since only copies asked for with the new incarnation fence the old life off.

use std::sync::Arc;
use std::time::Duration;

use kvcore::{NodeId, Store};
use kvnet::rpc::SyncShard;
use tokio::time::Instant;

use crate::detector::FailureDetector;
use crate::incarnations::Incarnation;
use crate::peers::{new_request_id, PeerClient};
use crate::readiness::Readiness;
use crate::service::{check_ballot, check_register, MAX_PEER_VERSION};
use crate::topology::Topology;

/// What catching up needs.
#[derive(Debug)]
pub struct CatchUp {
    /// Asks peers for pages.
    pub client: Arc<PeerClient>,
    /// Where the copies go.
    pub store: Arc<Store>,
    /// Records progress; set ready at the end.
    pub readiness: Arc<Readiness>,
    /// Who the peers are.
    pub topology: Arc<Topology>,
    /// This node's incarnation, raised if a peer remembers a higher one.
    pub incarnation: Arc<Incarnation>,
    /// Which peers are down.
    pub detector: Arc<FailureDetector>,
}

/// How copying from one peer ended.
pub(crate) enum Copied {
    /// Every page of every shard, from one incarnation of the peer.
    All(Totals),
    /// The peer stopped answering or restarted midway: try it again later.
    Retry,
    /// The peer remembers a higher incarnation of this node: copy from everyone again.
    StartOver,
}

/// What a copy from one peer brought.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Totals {
    pub keys: u64,
    pub bytes: u64,
    pub pages: u64,
}

impl CatchUp {
    /// Merges every peer's copies of the keys this node replicates, retrying peers that do not
    /// answer every `retry`, and marks the node ready once all are merged.
    pub async fn run(self, retry: Duration) {
        // A node with nothing to catch up on (alone, or new to the cluster) votes from the start.
        if self.readiness.is_ready() {
            return;
        }
        let started = Instant::now();
        'start: loop {
            // Read again on every pass: a change of the map changes who the peers are.
            let peers = self.topology.peers();
            for &peer in &peers {
                if self.readiness.has_synced(peer) {
                    continue;
                }
                let began = Instant::now();
                let copy = copy_shards(&self.client, &self.store, &self.incarnation, peer, None);
                match copy.await {
                    Copied::All(t) => {
                        self.readiness.synced(peer);
                        let secs = began.elapsed().as_secs_f64().max(1e-6);
                        // A fresh cluster copies nothing; only a real copy is worth a line.
                        if t.keys == 0 {
                            continue;
                        }
                        tracing::info!(
                            from = %peer,
                            keys = t.keys,
                            bytes = t.bytes,
                            pages = t.pages,
                            mb_per_s = format!("{:.1}", t.bytes as f64 / secs / 1e6),
                            keys_per_s = format!("{:.0}", t.keys as f64 / secs),
                            "copied a peer's replicas"
                        );
                    }
                    Copied::Retry => {}
                    Copied::StartOver => {
                        tracing::warn!(
                            incarnation = self.incarnation.get(),
                            "a peer remembers a later incarnation of this node (its clock went \
                             back?): rose above it; copying from every peer again"
                        );
                        self.readiness.restart();
                        continue 'start;
                    }
                }
            }
            // A node that is leaving the cluster and down is not waited for: this node was
            // removing it when it restarted, and its copies are being taken from the other
            // replicas; waiting would hold the change up for good.
            let map = self.topology.map();
            let needed = |p: NodeId| map.is_member(p) || !self.detector.is_down(p);
            if peers
                .iter()
                .all(|&p| self.readiness.has_synced(p) || !needed(p))
            {
                self.readiness.set_ready();
                tracing::info!(
                    node = %self.topology.me(),
                    keys = self.store.len(),
                    seconds = format!("{:.2}", started.elapsed().as_secs_f64()),
                    "caught up; voting as a replica"
                );
                return;
            }
            tokio::time::sleep(retry).await;
        }
    }
}

/// Shards copied at once from one peer by a restarted node, which serves nothing until it has
/// its copies: each lane walks its share of the shards page by page, so a copy takes as many
/// round trips as the largest lane, not as every shard.
const LANES: u32 = 8;

/// Shards copied at once for a membership change, which runs while the node serves clients.
const MOVING_LANES: u32 = 2;

/// For a membership change, each lane rests this many times as long as its last page took
/// after each page, so copies leave most of the machine to clients (see
/// `docs/membership.md` for what that costs and buys).
const MOVING_REST: u32 = 2;

/// Pages smaller than this are not rested after.
const REST_AFTER_BYTES: u64 = 64 << 10;

/// Copies every shard of `peer`'s replicas of the keys this node replicates, or with `moving`
/// (a change's epoch), of the keys that change moves to this node, every page asked for at that
/// epoch. The copy counts only if every page came from one incarnation of the peer.
pub(crate) async fn copy_shards(
    client: &Arc<PeerClient>,
    store: &Arc<Store>,
    incarnation: &Arc<Incarnation>,
    peer: NodeId,
    moving: Option<u64>,
) -> Copied {
    let request_id = new_request_id();
    let mut lanes = tokio::task::JoinSet::new();
    let count = if moving.is_some() {
        MOVING_LANES
    } else {
        LANES
    };
    for lane in 0..count {
        let (client, store, incarnation) = (client.clone(), store.clone(), incarnation.clone());
        lanes.spawn(async move {
            let shards = (lane..Store::SHARDS as u32).step_by(count as usize);
            copy_lane(
                &client,
                &store,
                &incarnation,
                peer,
                moving,
                request_id,
                shards,
            )
            .await
        });
    }
    // Dropping the set (this copy cancelled, or the node crashed) aborts every lane.
    let mut totals = Totals::default();
    let mut peer_incarnation = None;
    let mut outcome = None;
    while let Some(lane) = lanes.join_next().await {
        match lane {
            Ok(Ok((lane_totals, lane_incarnation))) => {
                totals.keys += lane_totals.keys;
                totals.bytes += lane_totals.bytes;
                totals.pages += lane_totals.pages;
                let Some(seen) = lane_incarnation else {
                    continue;
                };
                if *peer_incarnation.get_or_insert(seen) != seen {
                    tracing::info!("node {peer} restarted while this node copied from it; starting over with it");
                    outcome.get_or_insert(Copied::Retry);
                }
            }
            Ok(Err(Copied::StartOver)) => outcome = Some(Copied::StartOver),
            Ok(Err(other)) => {
                outcome.get_or_insert(other);
            }
            Err(_) => {
                outcome.get_or_insert(Copied::Retry);
            }
        }
    }
    outcome.unwrap_or(Copied::All(totals))
}

/// Copies the shards of one lane from `peer`; returns what it copied and the incarnation of the
/// peer every page came from (`None` if there were no pages).
async fn copy_lane(
    client: &PeerClient,
    store: &Store,
    incarnation: &Incarnation,
    peer: NodeId,
    moving: Option<u64>,
    request_id: u64,
    shards: impl Iterator<Item = u32>,
) -> Result<(Totals, Option<u64>), Copied> {
    let mut peer_incarnation = None;
    let mut totals = Totals::default();
    for shard in shards {
        let mut after: Option<String> = None;
        loop {
            let request = SyncShard {
                shard,
                after: after.clone(),
                moving: moving.is_some(),
            };
            let asked = Instant::now();
            let call = match moving {
                Some(epoch) => client.call_at(epoch, peer, request_id, 1, &request).await,
                None => client.call(peer, request_id, 1, &request).await,
            };
            let page = match call {
                Ok(page) => page,
                Err(e) => {
                    tracing::debug!(error = %e, "catching up from node {peer} failed; will retry");
                    return Err(Copied::Retry);
                }
            };
            if page.known > incarnation.get() && incarnation.exceed(page.known) {
                return Err(Copied::StartOver);
            }
            if *peer_incarnation.get_or_insert(page.incarnation) != page.incarnation {
                tracing::info!(
                    "node {peer} restarted while this node copied from it; starting over with it"
                );
                return Err(Copied::Retry);
            }
            // Pages must move forward, or a confused peer could keep this loop going.
            if let (Some(next), Some(prev)) = (&page.next, &after) {
                if next <= prev {
                    tracing::warn!("node {peer} sent a sync page that does not move forward");
                    return Err(Copied::Retry);
                }
            }
            // What a peer sends is checked like any peer input: a floor or register out of
            // range would leave keys unwritable here.
            let in_range = check_ballot(page.floor.promised).is_ok()
                && page.floor.version.0 <= MAX_PEER_VERSION
                && page.states.iter().all(|s| {
                    check_ballot(s.promised).is_ok() && check_register(&s.register).is_ok()
                });
            if !in_range {
                tracing::warn!(
                    "node {peer} sent a sync page with a ballot or version out of range"
                );
                return Err(Copied::Retry);
            }
            totals.pages += 1;
            let mut page_bytes = 0;
            store.raise_floor(shard as usize, page.floor);
            for state in page.states {
                totals.keys += 1;
                let bytes =
                    (state.key.len() + state.register.value.as_ref().map_or(0, |v| v.len())) as u64;
                totals.bytes += bytes;
                page_bytes += bytes;
                if let Err(e) = store.restore(state) {
                    tracing::warn!(error = %e, "could not restore a key from node {peer}");
                }
            }
            // Only pages that carried something are worth resting after: a change of a small
            // or empty store takes one round trip per shard.
            if moving.is_some() && page_bytes >= REST_AFTER_BYTES {
                tokio::time::sleep(asked.elapsed() * MOVING_REST).await;
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }
    Ok((totals, peer_incarnation))
}
