//! What a node knows of its peers: liveness from heartbeats, and each peer's incarnation.
//!
//! Incarnations fence off a restarted node's previous life: a node that restarts comes back
//! empty with a higher incarnation, and a promise it made before the restart must no longer
//! count. Every peer message carries the sender's incarnation; [`Membership::observe`] records the
//! highest seen under a write lock, and replicas check proposals against it under the read lock
//! (see `Node::acceptor`), so once a peer has seen a node's new incarnation no accept relying
//! on the old one can be applied there.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use kvcore::NodeId;
use serde::Serialize;

/// A peer's state as seen from this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerState {
    /// Answering heartbeats and voting as a replica.
    Up,
    /// Answering, but still catching up after a restart: it does not vote yet.
    Recovering,
    /// Not answering heartbeats.
    Down,
}

impl PeerState {
    /// The state's name in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Up => "up",
            PeerState::Recovering => "recovering",
            PeerState::Down => "down",
        }
    }
}

#[derive(Debug, Clone)]
struct Health {
    state: PeerState,
    last_ok: Instant,
}

/// Liveness and incarnations of a node's peers.
#[derive(Debug)]
pub struct Membership {
    health: Mutex<HashMap<NodeId, Health>>,
    /// Counts changes of any peer's state.
    transitions: std::sync::atomic::AtomicU64,
    incarnations: RwLock<HashMap<NodeId, u64>>,
    down_after: Duration,
}

impl Membership {
    /// Peers start out `up`: a request to a peer that is actually down fails fast with a
    /// connection error, and heartbeats correct the view within `down_after`.
    pub fn new(peers: impl IntoIterator<Item = NodeId>, down_after: Duration) -> Self {
        let now = Instant::now();
        let health = peers
            .into_iter()
            .map(|id| {
                (
                    id,
                    Health {
                        state: PeerState::Up,
                        last_ok: now,
                    },
                )
            })
            .collect();
        Membership {
            health: Mutex::new(health),
            transitions: std::sync::atomic::AtomicU64::new(0),
            incarnations: RwLock::default(),
            down_after,
        }
    }

    /// A peer answered a heartbeat.
    pub fn heard(&self, id: NodeId, ready: bool) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = health.get_mut(&id) {
            h.last_ok = Instant::now();
            let state = if ready {
                PeerState::Up
            } else {
                PeerState::Recovering
            };
            self.set(h, state);
        }
    }

    /// A heartbeat to a peer failed.
    pub fn missed(&self, id: NodeId) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = health.get_mut(&id) {
            if h.last_ok.elapsed() >= self.down_after {
                self.set(h, PeerState::Down);
            }
        }
    }

    fn set(&self, health: &mut Health, state: PeerState) {
        if health.state != state {
            health.state = state;
            self.transitions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// How many times any peer changed state so far.
    pub fn transitions(&self) -> u64 {
        self.transitions.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The peer's state (`Up` for this node itself or unknown ids).
    pub fn state(&self, id: NodeId) -> PeerState {
        let health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        health.get(&id).map_or(PeerState::Up, |h| h.state)
    }

    /// Whether requests to the peer should not even be attempted.
    pub fn is_down(&self, id: NodeId) -> bool {
        self.state(id) == PeerState::Down
    }

    /// Records a peer's incarnation if it is newer than the one known. Returns the highest known.
    pub fn observe(&self, id: NodeId, incarnation: u64) -> u64 {
        if let Some(&known) = self.read_incarnations().get(&id) {
            if known >= incarnation {
                return known;
            }
        }
        let mut map = self.incarnations.write().unwrap_or_else(|p| p.into_inner());
        let known = map.entry(id).or_insert(incarnation);
        *known = (*known).max(incarnation);
        *known
    }

    /// The incarnations known, read-locked: hold the guard while applying anything that must not
    /// interleave with a newer incarnation being recorded.
    pub fn read_incarnations(&self) -> RwLockReadGuard<'_, HashMap<NodeId, u64>> {
        self.incarnations.read().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_go_down_only_after_the_grace_period_and_come_back() {
        let m = Membership::new([NodeId(1)], Duration::from_secs(3600));
        m.missed(NodeId(1));
        assert_eq!(m.state(NodeId(1)), PeerState::Up);
        let m = Membership::new([NodeId(1)], Duration::ZERO);
        m.missed(NodeId(1));
        assert!(m.is_down(NodeId(1)));
        m.heard(NodeId(1), false);
        assert_eq!(m.state(NodeId(1)), PeerState::Recovering);
        m.heard(NodeId(1), true);
        assert_eq!(m.state(NodeId(1)), PeerState::Up);
    }

    #[test]
    fn incarnations_only_grow() {
        let m = Membership::new([NodeId(1)], Duration::from_secs(1));
        assert_eq!(m.observe(NodeId(1), 5), 5);
        assert_eq!(m.observe(NodeId(1), 3), 5);
        assert_eq!(m.observe(NodeId(1), 8), 8);
        assert_eq!(m.read_incarnations().get(&NodeId(1)), Some(&8));
    }
}
