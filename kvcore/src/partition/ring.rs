//! A consistent-hash ring with virtual nodes: every node places [`vnodes`](Ring::vnodes) points
//! on a 64-bit circle, and a key's owners are the distinct nodes met walking clockwise from its
//! hash.
//!
//! Movement is optimal, as with rendezvous: a joining node's points only take over arcs (so keys
//! only move to it), and a leaving node's arcs fall to the next points along. Balance is the weak
//! side: a node's share is the total length of its arcs, whose relative spread is about
//! `1 / sqrt(vnodes)`; meeting a 5% peak at 64 nodes would take thousands of points per node.
//!
//! # Placement
//! Point `v` of node `id` sits at the `v`-th output of SplitMix64 seeded with
//! [`node_seed(id)`](super::node_seed). A key belongs to the first point at or after its hash,
//! wrapping past the top; points at the same position are ordered by node id.

use super::{mix64, node_seed, sorted_members, Layout, Partitioner};
use crate::cluster::NodeId;

/// SplitMix64's increment (2^64 / golden ratio, odd).
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// The ring position of virtual node `v` of the node with seed `seed`.
#[inline]
pub fn point(seed: u64, v: u32) -> u64 {
    mix64(seed.wrapping_add(GAMMA.wrapping_mul(u64::from(v) + 1)))
}

/// Consistent hashing with virtual nodes.
#[derive(Debug, Clone, Copy)]
pub struct Ring {
    vnodes: u32,
}

impl Ring {
    /// The number of points per node used by [`Ring::default`]. 256 is the usual production
    /// choice (Cassandra's historical default): a few hundred kilobytes at 64 nodes.
    pub const DEFAULT_VNODES: u32 = 256;

    /// A ring with `vnodes` points per node (at least one). Every node must use the same
    /// count: the [`name`](Partitioner::name) is `"ring"` whatever it is.
    pub const fn new(vnodes: u32) -> Self {
        Ring {
            vnodes: if vnodes == 0 { 1 } else { vnodes },
        }
    }

    /// Points per node. More points even out the arcs but make the ring larger.
    pub const fn vnodes(&self) -> u32 {
        self.vnodes
    }
}

impl Default for Ring {
    fn default() -> Self {
        Ring::new(Ring::DEFAULT_VNODES)
    }
}

impl Partitioner for Ring {
    fn name(&self) -> &'static str {
        "ring"
    }

    fn layout(&self, nodes: &[NodeId]) -> Box<dyn Layout> {
        Box::new(RingLayout::new(sorted_members(nodes), self.vnodes))
    }
}

#[derive(Debug)]
struct RingLayout {
    ids: Vec<NodeId>,
    /// Point positions, ascending.
    positions: Vec<u64>,
    /// The member index owning each point.
    owners: Vec<u32>,
    /// `index[t]` is the first point whose position's top `index_bits` bits are at least `t`,
    /// so a lookup scans a bucket of about one point instead of binary-searching the ring.
    index: Vec<u32>,
    index_bits: u32,
}

impl RingLayout {
    fn new(ids: Vec<NodeId>, vnodes: u32) -> Self {
        let mut points: Vec<(u64, NodeId, u32)> = ids
            .iter()
            .enumerate()
            .flat_map(|(i, &id)| {
                let seed = node_seed(id);
                (0..vnodes).map(move |v| (point(seed, v), id, i as u32))
            })
            .collect();
        points.sort_unstable();
        let positions: Vec<u64> = points.iter().map(|p| p.0).collect();
        let owners = points.iter().map(|p| p.2).collect();

        let index_bits = positions
            .len()
            .max(2)
            .next_power_of_two()
            .trailing_zeros()
            .clamp(1, 24);
        let index = (0..=1u64 << index_bits)
            .map(|t| positions.partition_point(|&p| p >> (64 - index_bits) < t) as u32)
            .collect();
        RingLayout {
            ids,
            positions,
            owners,
            index,
            index_bits,
        }
    }

    /// The first point at or after `hash`, wrapping to 0.
    #[inline]
    fn successor(&self, hash: u64) -> usize {
        let t = (hash >> (64 - self.index_bits)) as usize;
        let (mut i, end) = (self.index[t] as usize, self.index[t + 1] as usize);
        while i < end && self.positions[i] < hash {
            i += 1;
        }
        if i == self.positions.len() {
            0
        } else {
            i
        }
    }
}

impl Layout for RingLayout {
    fn owners(&self, hash: u64, n: usize, out: &mut Vec<NodeId>) {
        let n = n.min(self.ids.len());
        if n == 0 {
            return;
        }
        let start = out.len();
        let points = self.positions.len();
        let first = self.successor(hash);
        for step in 0..points {
            let at = first + step;
            let at = if at >= points { at - points } else { at };
            let id = self.ids[self.owners[at] as usize];
            if !out[start..].contains(&id) {
                out.push(id);
                if out.len() - start == n {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The successor found through the bucket index must match a plain search of the ring.
    #[test]
    fn indexed_successor_matches_binary_search() {
        for (count, vnodes) in [(1u32, 1u32), (1, 3), (3, 5), (7, 64)] {
            let ids: Vec<NodeId> = (0..count).map(NodeId).collect();
            let ring = RingLayout::new(ids, vnodes);
            let mut probes: Vec<u64> = vec![0, 1, u64::MAX, u64::MAX - 1];
            for &p in &ring.positions {
                probes.extend([p, p.wrapping_sub(1), p.wrapping_add(1)]);
            }
            probes.extend((0..1000u64).map(mix64));
            for hash in probes {
                let want = ring.positions.partition_point(|&p| p < hash) % ring.positions.len();
                assert_eq!(ring.successor(hash), want, "hash {hash:#x}");
            }
        }
    }

    #[test]
    fn a_key_on_a_point_belongs_to_that_point() {
        let ids = vec![NodeId(0), NodeId(1)];
        let ring = RingLayout::new(ids.clone(), 4);
        for (at, &position) in ring.positions.iter().enumerate() {
            let mut out = Vec::new();
            ring.owners(position, 1, &mut out);
            assert_eq!(out, [ids[ring.owners[at] as usize]]);
        }
    }
}
