//! The failure detector: which peers answer heartbeats, on tokio's clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvcore::NodeId;
use kvnet::rpc::Ping;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::peers::{new_request_id, PeerClient};
use crate::topology::Topology;

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
    /// The peer's own count of missed copies, from its last answer.
    drift: u64,
}

/// Liveness of a node's peers, from heartbeats.
#[derive(Debug)]
pub struct FailureDetector {
    health: Mutex<HashMap<NodeId, Health>>,
    /// Counts changes of any peer's state.
    transitions: AtomicU64,
    down_after: Duration,
}

impl FailureDetector {
    /// Peers start out `up`: a request to a peer that is actually down fails fast with a
    /// connection error, and heartbeats correct the view within `down_after`.
    pub fn new(peers: impl IntoIterator<Item = NodeId>, down_after: Duration) -> Self {
        let now = Instant::now();
        let health = peers
            .into_iter()
            .map(|id| {
                let health = Health {
                    state: PeerState::Up,
                    last_ok: now,
                    drift: 0,
                };
                (id, health)
            })
            .collect();
        FailureDetector {
            health: Mutex::new(health),
            transitions: AtomicU64::new(0),
            down_after,
        }
    }

    /// A peer answered a heartbeat.
    pub fn heard(&self, id: NodeId, ready: bool, drift: u64) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        // A node that joined since this detector started is heard of here first.
        let h = health.entry(id).or_insert_with(|| Health {
            state: PeerState::Up,
            last_ok: Instant::now(),
            drift: 0,
        });
        h.last_ok = Instant::now();
        h.drift = drift;
        let state = if ready {
            PeerState::Up
        } else {
            PeerState::Recovering
        };
        self.set(h, state);
    }

    /// A heartbeat to a peer failed.
    pub fn missed(&self, id: NodeId) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let h = health.entry(id).or_insert_with(|| Health {
            state: PeerState::Up,
            last_ok: now,
            drift: 0,
        });
        if h.last_ok.elapsed() >= self.down_after {
            self.set(h, PeerState::Down);
        }
    }

    fn set(&self, health: &mut Health, state: PeerState) {
        if health.state != state {
            health.state = state;
            self.transitions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The sum of the peers' counts of missed copies, as last heard (see
    /// [`Drift`](crate::drift::Drift)).
    pub fn peers_drift(&self) -> u64 {
        let health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        health.values().map(|h| h.drift).fold(0, u64::wrapping_add)
    }

    /// How many times any peer changed state so far.
    pub fn transitions(&self) -> u64 {
        self.transitions.load(Ordering::Relaxed)
    }

    /// The peer's state (`Up` for unknown ids).
    pub fn state(&self, id: NodeId) -> PeerState {
        let health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        health.get(&id).map_or(PeerState::Up, |h| h.state)
    }

    /// Whether requests to the peer should not even be attempted.
    pub fn is_down(&self, id: NodeId) -> bool {
        self.state(id) == PeerState::Down
    }

    /// Pings every peer each `interval` and records who answers. Runs until its task is
    /// cancelled.
    pub async fn run(
        self: Arc<Self>,
        client: Arc<PeerClient>,
        topology: Arc<Topology>,
        interval: Duration,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mut pings = JoinSet::new();
            for peer in topology.peers() {
                let (detector, client) = (self.clone(), client.clone());
                pings.spawn(async move {
                    let ping = client.call(peer, new_request_id(), 1, &Ping);
                    match tokio::time::timeout(interval * 2, ping).await {
                        Ok(Ok(pong)) => {
                            detector.heard(peer, pong.ready, pong.drift);
                            // Epochs spread with heartbeats: a peer ahead has a later map.
                            if pong.epoch > client.epoch() {
                                client.catch_up_map(pong.epoch, peer).await;
                            }
                        }
                        _ => detector.missed(peer),
                    }
                });
            }
            while pings.join_next().await.is_some() {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn peers_go_down_only_after_the_grace_period_and_come_back() {
        let d = FailureDetector::new([NodeId(1)], Duration::from_secs(1));
        d.missed(NodeId(1));
        assert_eq!(d.state(NodeId(1)), PeerState::Up);
        tokio::time::advance(Duration::from_millis(999)).await;
        d.missed(NodeId(1));
        assert_eq!(d.state(NodeId(1)), PeerState::Up);
        tokio::time::advance(Duration::from_millis(1)).await;
        d.missed(NodeId(1));
        assert!(d.is_down(NodeId(1)));
        d.heard(NodeId(1), false, 0);
        assert_eq!(d.state(NodeId(1)), PeerState::Recovering);
        d.heard(NodeId(1), true, 3);
        assert_eq!(d.peers_drift(), 3);
        assert_eq!(d.state(NodeId(1)), PeerState::Up);
        assert_eq!(d.transitions(), 3);
    }
}
