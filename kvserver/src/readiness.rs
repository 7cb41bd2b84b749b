//! Whether this node's replica may vote: a started node first merges its peers' copies.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use kvcore::NodeId;

/// Catch-up progress of a starting node.
///
/// A node starts empty. Before its replica may vote for a key it merges the copies of every other
/// replica of that key; until then a read quorum that included it could miss a write
/// acknowledged before the restart.
#[derive(Debug)]
pub struct Readiness {
    ready: AtomicBool,
    /// Whether the cluster map and the seed keys (if asked for) are known to be recorded.
    seeded: AtomicBool,
    /// Peers whose copies this node has merged since it started.
    synced: Mutex<HashSet<NodeId>>,
    /// Whether this node was removed from the cluster: it serves nothing any more.
    removed: AtomicBool,
}

impl Readiness {
    /// A node that still has to catch up, unless `alone` (it has no peers), and then to record
    /// the cluster map and the seed keys.
    pub fn new(alone: bool) -> Self {
        Readiness {
            ready: AtomicBool::new(alone),
            seeded: AtomicBool::new(false),
            synced: Mutex::default(),
            removed: AtomicBool::new(false),
        }
    }

    /// Whether this node was removed from the cluster.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// Marks the node removed from the cluster, for good.
    pub fn set_removed(&self) {
        self.removed.store(true, Ordering::Release);
    }

    /// Whether the node has merged every peer and votes for every key.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Marks the node caught up.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Whether the node is ready and the cluster map and seed keys are recorded: it reports
    /// healthy.
    pub fn is_healthy(&self) -> bool {
        self.is_ready() && self.seeded.load(Ordering::Acquire) && !self.is_removed()
    }

    /// Marks the cluster map and the seed keys recorded.
    pub fn set_seeded(&self) {
        self.seeded.store(true, Ordering::Release);
    }

    /// Forgets every peer merged so far: the node must copy from each again (its incarnation
    /// changed, and a copy only fences off the previous life if it was asked for with the new
    /// one).
    pub fn restart(&self) {
        self.synced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Whether `peer`'s copies have been merged.
    pub fn has_synced(&self, peer: NodeId) -> bool {
        self.synced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&peer)
    }

    /// Records that `peer`'s copies have been merged.
    pub fn synced(&self, peer: NodeId) {
        self.synced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer);
    }

    /// Whether node `me` may vote for a key replicated on `replicas`: it is ready, or it has
    /// merged the copies of every other replica of the key.
    pub fn can_vote(&self, me: NodeId, replicas: &[NodeId]) -> bool {
        if self.is_ready() {
            return true;
        }
        let synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        replicas.iter().all(|&r| r == me || synced.contains(&r))
    }
}
