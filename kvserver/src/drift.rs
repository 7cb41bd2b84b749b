//! Signs that a replica may have missed a copy, so anti-entropy knows when a pass is worth it.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts events after which some replica may lack a copy that a majority holds: an accept
/// refused by, or lost on the way to, one replica while the round succeeded on others; an accept
/// of a key this node is primary for coordinated by another node (so this node's own rounds did
/// not see how it went). While it stands still, and no peer changed state, the keys this node is
/// primary for still have every copy they had at the last clean pass.
#[derive(Debug, Default)]
pub struct Drift(AtomicU64);

impl Drift {
    /// Records one such event.
    pub fn note(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// How many have happened so far.
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}
