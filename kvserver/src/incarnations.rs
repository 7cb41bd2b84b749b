//! Incarnations: which life of each peer this node has heard from.
//!
//! A node that restarts comes back empty with a higher incarnation, and a promise it made in its
//! previous life must no longer count. Every peer frame carries the sender's incarnation;
//! [`Incarnations::observe`] records the highest seen under a write lock, and the acceptor checks
//! proposals against it under the read lock, so once a replica has seen a node's new incarnation
//! no accept relying on that node's old promise can be applied there.

use std::collections::HashMap;
use std::sync::{RwLock, RwLockReadGuard};

use kvcore::NodeId;

/// The highest incarnation seen of each peer.
#[derive(Debug, Default)]
pub struct Incarnations {
    known: RwLock<HashMap<NodeId, u64>>,
}

impl Incarnations {
    /// Records a peer's incarnation if it is newer than the one known. Returns the highest known.
    pub fn observe(&self, id: NodeId, incarnation: u64) -> u64 {
        if let Some(&known) = self.read().get(&id) {
            if known >= incarnation {
                return known;
            }
        }
        let mut map = self.known.write().unwrap_or_else(|p| p.into_inner());
        let known = map.entry(id).or_insert(incarnation);
        *known = (*known).max(incarnation);
        *known
    }

    /// The incarnations known, read-locked: hold the guard while applying anything that must not
    /// interleave with a newer incarnation being recorded.
    pub fn read(&self) -> RwLockReadGuard<'_, HashMap<NodeId, u64>> {
        self.known.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// A number that grows with every process start: microseconds since the Unix epoch. If the clock
/// stepped backwards across a restart, peers that know the higher old incarnation refuse this
/// node's promises as stale: the node fails closed (its proposals fail) rather than unsafely.
pub fn new_incarnation() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incarnations_only_grow() {
        let m = Incarnations::default();
        assert_eq!(m.observe(NodeId(1), 5), 5);
        assert_eq!(m.observe(NodeId(1), 3), 5);
        assert_eq!(m.observe(NodeId(1), 8), 8);
        assert_eq!(m.read().get(&NodeId(1)), Some(&8));
    }
}
