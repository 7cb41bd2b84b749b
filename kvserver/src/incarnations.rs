//! Incarnations: which life of each peer this node has heard from.
//!
//! A node that restarts comes back empty with a higher incarnation, and a promise it made in its
//! previous life must no longer count. Every peer frame carries the sender's incarnation;
//! [`Incarnations::observe`] records the highest seen under a write lock, and the acceptor checks
//! proposals against it under the read lock, so once a replica has seen a node's new incarnation
//! no accept relying on that node's old promise can be applied there.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// This node's own incarnation: a number above every earlier life's, so peers can tell the
/// lives apart. Nothing is persisted: it starts from the clock (microseconds since the Unix
/// epoch) and, while the node catches up, rises above whatever incarnation of this node any
/// peer remembers ([`Incarnation::exceed`]), so a clock that went back across a restart
/// cannot fence the node out of its own keys.
#[derive(Debug)]
pub struct Incarnation(AtomicU64);

impl Incarnation {
    /// An incarnation starting at `start` (normally [`clock_micros`]); never 0.
    pub fn new(start: u64) -> Self {
        Incarnation(AtomicU64::new(start.max(1)))
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Rises above `known`, an incarnation of this node a peer remembers. Returns whether it
    /// rose: every copy made under the old value must then be made again.
    pub fn exceed(&self, known: u64) -> bool {
        let above = known.saturating_add(1);
        self.0.fetch_max(above, Ordering::AcqRel) < above
    }
}

/// How far ahead of this node's clock a peer's incarnation may be: incarnations come from
/// clocks, and one far ahead would fence that peer's next lives off for as long.
pub const MAX_CLOCK_AHEAD_MICROS: u64 = 24 * 3600 * 1_000_000;

/// Whether `incarnation` is one a clock within [`MAX_CLOCK_AHEAD_MICROS`] of this node's could
/// give.
pub fn plausible(incarnation: u64) -> bool {
    incarnation != 0 && incarnation <= clock_micros().saturating_add(MAX_CLOCK_AHEAD_MICROS)
}

/// Microseconds since the Unix epoch (0 if the clock is before it).
pub fn clock_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
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

    #[test]
    fn an_incarnation_rises_above_what_peers_remember() {
        let own = Incarnation::new(clock_micros());
        let start = own.get();
        assert!(!own.exceed(start - 1), "already above");
        assert_eq!(own.get(), start);
        assert!(own.exceed(start + 1000));
        assert_eq!(own.get(), start + 1001);
        assert!(!own.exceed(u64::MAX - 1) || own.get() == u64::MAX);
    }
}
