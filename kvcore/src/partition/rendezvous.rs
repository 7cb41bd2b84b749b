//! Rendezvous (highest random weight) hashing: a key's owners are the nodes with the highest
//! [`score`]s for its hash.
//!
//! Balance is as good as the hash (no virtual nodes to tune) and movement is optimal: a joining
//! node takes exactly the keys it now scores highest on, and a leaving node's keys go to their
//! next-best node. No state beyond the node seeds, but every lookup scores every node, so its cost
//! grows linearly with the cluster; [`Slots`](super::Slots) precomputes the same ranking for a
//! fixed set of slots to get constant-time lookups.
//!
//! # Ranking
//! Nodes are ranked by `score(hash, node_seed(id)) >> TIE_BITS`, highest first, and then by the
//! larger node id. Dropping the low bits lets the hot loop pack a node's index into them and rank
//! with plain integer `max`/`min`, which compile to branch-free conditional moves; because indexes
//! follow id order, the packed comparison is exactly the (score, id) order above, whatever the
//! membership.

use super::{node_seed, sorted_members, Layout, Partitioner};
use crate::cluster::NodeId;

/// Low bits of a [`score`] that do not take part in the ranking; they hold the node index in the
/// packed form used by the lookup loop.
pub const TIE_BITS: u32 = 16;

const TIE_MASK: u64 = (1 << TIE_BITS) - 1;

/// Largest membership the packed loop can index; bigger clusters take the general path, which
/// ranks identically.
const MAX_PACKED_NODES: usize = 1 << TIE_BITS;

/// Largest `n` with a branch-free specialised top-`n` selection.
const MAX_FAST_N: usize = 4;

/// The rendezvous score of the node with seed `seed` for the key hash `hash`: one 64×64→128-bit
/// multiply of `hash ^ seed` by a fixed odd constant, folded to 64 bits by xoring the halves.
///
/// A full finaliser such as [`mix64`](super::mix64) costs two dependent multiplies per node; the
/// folded multiply costs one, and since `hash` is already an XXH3 output and `seed` a hashed id,
/// it only has to decorrelate nodes from each other, which the report's balance figures confirm.
/// Stable: it is plain integer arithmetic.
#[inline]
pub fn score(hash: u64, seed: u64) -> u64 {
    // 2^64 / golden ratio, odd: a good multiplicative mixing constant.
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let p = u128::from(hash ^ seed).wrapping_mul(u128::from(K));
    (p as u64) ^ ((p >> 64) as u64)
}

/// Highest-random-weight placement.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rendezvous;

impl Partitioner for Rendezvous {
    fn name(&self) -> &'static str {
        "rendezvous"
    }

    fn layout(&self, nodes: &[NodeId]) -> Box<dyn Layout> {
        Box::new(RendezvousLayout::new(sorted_members(nodes)))
    }
}

/// The node seeds of one membership, in id order, with a ranking routine shared with
/// [`Slots`](super::Slots) (which ranks slots where this ranks keys).
#[derive(Debug, Clone)]
pub(crate) struct RendezvousLayout {
    ids: Vec<NodeId>,
    seeds: Vec<u64>,
}

impl RendezvousLayout {
    /// `ids` must be sorted and distinct.
    pub(crate) fn new(ids: Vec<NodeId>) -> Self {
        let seeds = ids.iter().map(|&id| node_seed(id)).collect();
        RendezvousLayout { ids, seeds }
    }

    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    pub(crate) fn id(&self, index: usize) -> NodeId {
        self.ids[index]
    }

    /// Calls `emit` with the member indexes of the best `n` nodes for `hash`, best first.
    #[inline]
    pub(crate) fn rank(&self, hash: u64, n: usize, mut emit: impl FnMut(usize)) {
        let n = n.min(self.ids.len());
        if n == 0 {
            return;
        }
        if n > MAX_FAST_N || self.ids.len() > MAX_PACKED_NODES {
            return self.rank_general(hash, n, emit);
        }
        let mut best = [0u64; MAX_FAST_N];
        match n {
            1 => best[..1].copy_from_slice(&self.top::<1>(hash)),
            2 => best[..2].copy_from_slice(&self.top::<2>(hash)),
            3 => best[..3].copy_from_slice(&self.top::<3>(hash)),
            _ => best = self.top::<4>(hash),
        }
        for packed in &best[..n] {
            emit((packed & TIE_MASK) as usize);
        }
    }

    /// The `K` largest packed `(score, index)` values, largest first. Needs `K <= len`.
    ///
    /// Every node goes through the same compare-exchange chain: a branchy "insert if better than
    /// the K-th" mispredicts about K·ln(nodes/K) times per lookup, which cost more than the
    /// scoring itself at 64 nodes. Masks and index loops rather than `max`/`min` and iterators
    /// compile to the same conditional moves when optimised and run several times faster when
    /// not, which matters because unoptimised test builds fill a [`Slots`](super::Slots) table
    /// (2^20 rankings) for every cluster map.
    #[inline]
    fn top<const K: usize>(&self, hash: u64) -> [u64; K] {
        // Zero is below every real value except (score 0, index 0), which it equals, so starting
        // from zeros cannot change which indexes come out once at least K nodes were seen.
        let mut best = [0u64; K];
        let seeds = &self.seeds[..];
        let mut index = 0;
        while index < seeds.len() {
            let mut v = (score(hash, seeds[index]) & !TIE_MASK) | index as u64;
            let mut k = 0;
            while k < K {
                let b = best[k];
                let take = u64::from(v > b).wrapping_neg();
                best[k] = (v & take) | (b & !take);
                v = (b & take) | (v & !take);
                k += 1;
            }
            index += 1;
        }
        best
    }

    /// Any `n` and membership size: sorts `(score, id)` explicitly.
    fn rank_general(&self, hash: u64, n: usize, mut emit: impl FnMut(usize)) {
        let mut all: Vec<(u64, NodeId, usize)> = self
            .seeds
            .iter()
            .zip(&self.ids)
            .enumerate()
            .map(|(index, (&seed, &id))| (score(hash, seed) >> TIE_BITS, id, index))
            .collect();
        let by_rank =
            |a: &(u64, NodeId, usize), b: &(u64, NodeId, usize)| (b.0, b.1).cmp(&(a.0, a.1));
        if n < all.len() {
            all.select_nth_unstable_by(n - 1, by_rank);
            all.truncate(n);
        }
        all.sort_unstable_by(by_rank);
        for &(_, _, index) in &all {
            emit(index);
        }
    }
}

impl Layout for RendezvousLayout {
    fn owners(&self, hash: u64, n: usize, out: &mut Vec<NodeId>) {
        let ids = &self.ids;
        self.rank(hash, n, |index| out.push(ids[index]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ranking rule written as directly as possible.
    fn reference(ids: &[NodeId], hash: u64, n: usize) -> Vec<NodeId> {
        let mut ranked: Vec<(u64, NodeId)> = ids
            .iter()
            .map(|&id| (score(hash, node_seed(id)) >> TIE_BITS, id))
            .collect();
        ranked.sort_unstable_by(|a, b| b.cmp(a));
        ranked.into_iter().take(n).map(|(_, id)| id).collect()
    }

    #[test]
    fn fast_and_general_paths_follow_the_ranking_rule() {
        for size in [1u32, 2, 3, 4, 5, 9, 64] {
            let ids: Vec<NodeId> = (0..size).map(|i| NodeId(i * 7 + 3)).collect();
            let layout = RendezvousLayout::new(ids.clone());
            for k in 0..500u64 {
                let hash = super::super::mix64(k);
                for n in 0..=7 {
                    let mut fast = Vec::new();
                    layout.owners(hash, n, &mut fast);
                    let mut general = Vec::new();
                    layout.rank_general(hash, n.min(ids.len()).max(1), |i| general.push(ids[i]));
                    general.truncate(n);
                    let want = reference(&ids, hash, n);
                    assert_eq!(fast, want, "size {size}, n {n}, hash {hash:#x}");
                    assert_eq!(general, want, "size {size}, n {n}, hash {hash:#x}");
                }
            }
        }
    }

    /// A one-multiply score is only acceptable if the owner lists it produces are uniform: every
    /// ordered (primary, second, third) triple of 8 nodes should be about equally common.
    #[test]
    fn owner_triples_are_uniform() {
        let ids: Vec<NodeId> = (0..8).map(NodeId).collect();
        let layout = RendezvousLayout::new(ids);
        let keys = 200_000u32;
        let mut counts = vec![0u32; 8 * 8 * 8];
        let mut out = Vec::new();
        for k in 0..keys {
            out.clear();
            layout.owners(crate::partition::key_hash(&k.to_le_bytes()), 3, &mut out);
            counts[(out[0].0 * 64 + out[1].0 * 8 + out[2].0) as usize] += 1;
        }
        let cells = 8 * 7 * 6;
        let expected = f64::from(keys) / f64::from(cells);
        let chi2: f64 = counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| (f64::from(c) - expected).powi(2) / expected)
            .sum();
        assert_eq!(counts.iter().filter(|&&c| c > 0).count(), cells as usize);
        // Chi-square with 335 degrees of freedom: mean 335, standard deviation about 26.
        assert!(chi2 < 335.0 + 5.0 * 26.0, "chi-square {chi2:.0}");
    }

    #[test]
    fn equal_scores_go_to_the_larger_id() {
        // Two nodes whose seeds are equal would always tie; emulate that by ranking one hash
        // against a layout whose seeds were overwritten.
        let mut layout = RendezvousLayout::new(vec![NodeId(1), NodeId(5), NodeId(9)]);
        layout.seeds = vec![42; 3];
        let mut out = Vec::new();
        layout.owners(7, 3, &mut out);
        assert_eq!(out, [NodeId(9), NodeId(5), NodeId(1)]);
        let mut general = Vec::new();
        layout.rank_general(7, 3, |i| general.push(layout.ids[i]));
        assert_eq!(general, out);
    }
}
