//! Rendezvous (highest random weight) hashing: a key's owners are the nodes with the highest
//! `mix64(key_hash ^ node_seed)` scores.
//!
//! Balance is as good as the hash (no virtual nodes to tune) and movement is optimal: a joining
//! node takes exactly the keys it now scores highest on, and a leaving node's keys go to their
//! next-best node. Lookup is O(nodes).

use super::{mix64, node_seed, Layout, Partitioner};
use crate::cluster::NodeId;

/// Highest-random-weight placement.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rendezvous;

impl Partitioner for Rendezvous {
    fn name(&self) -> &'static str {
        "rendezvous"
    }

    fn layout(&self, nodes: &[NodeId]) -> Box<dyn Layout> {
        Box::new(RendezvousLayout {
            nodes: nodes.iter().map(|&id| (node_seed(id), id)).collect(),
        })
    }
}

#[derive(Debug)]
struct RendezvousLayout {
    nodes: Vec<(u64, NodeId)>,
}

impl Layout for RendezvousLayout {
    fn owners(&self, hash: u64, n: usize, out: &mut Vec<NodeId>) {
        let n = n.min(self.nodes.len());
        if n == 0 {
            return;
        }
        // Keep the n best (score, id) pairs, best first; ties break on the node id so the answer
        // never depends on membership order.
        let mut best: Vec<(u64, NodeId)> = Vec::with_capacity(n + 1);
        for &(seed, id) in &self.nodes {
            let score = (mix64(hash ^ seed), id);
            if best.len() == n && score <= best[n - 1] {
                continue;
            }
            let pos = best.partition_point(|b| *b > score);
            best.insert(pos, score);
            best.truncate(n);
        }
        out.extend(best.into_iter().map(|(_, id)| id));
    }
}
