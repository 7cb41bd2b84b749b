//! Catching up after a start: a node merges its peers' copies before it votes as a replica.
//!
//! The first sync request to a peer carries the node's new incarnation, which fences off any
//! promise the node made in its previous life (see [`crate::incarnations`]).

use std::sync::Arc;
use std::time::Duration;

use kvcore::{NodeId, Store};
use kvnet::rpc::SyncShard;

use crate::peers::{new_request_id, PeerClient};
use crate::readiness::Readiness;
use crate::topology::Topology;

/// Merges every peer's copies of the keys this node replicates, retrying peers that do not
/// answer every `retry`, and marks the node ready once all are merged.
pub async fn catch_up(
    client: Arc<PeerClient>,
    store: Arc<Store>,
    readiness: Arc<Readiness>,
    topology: Arc<Topology>,
    retry: Duration,
) {
    let peers = topology.peers();
    loop {
        for &peer in &peers {
            if !readiness.has_synced(peer) && sync_from(&client, &store, peer).await {
                readiness.synced(peer);
            }
        }
        if peers.iter().all(|&p| readiness.has_synced(p)) {
            readiness.set_ready();
            tracing::info!(node = %topology.me(), keys = store.len(), "caught up; voting as a replica");
            return;
        }
        tokio::time::sleep(retry).await;
    }
}

/// Merges every shard of `peer`'s copies; false if the peer stopped answering midway.
async fn sync_from(client: &PeerClient, store: &Store, peer: NodeId) -> bool {
    let request_id = new_request_id();
    let mut shard = 0;
    loop {
        match client.call(peer, request_id, 1, &SyncShard { shard }).await {
            Ok(page) => {
                for state in page.states {
                    if let Err(e) = store.restore(state) {
                        tracing::warn!(error = %e, "could not restore a key from node {peer}");
                    }
                }
                match page.next {
                    Some(n) if n > shard => shard = n,
                    _ => return true,
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "catching up from node {peer} failed; will retry");
                return false;
            }
        }
    }
}
