//! Maglev hashing (Eisenbud et al., NSDI 2016): a lookup table of [`TABLE_SIZE`] entries filled
//! by letting the nodes take turns claiming their next preferred free entry.
//!
//! Each node prefers the entries `offset, offset + skip, offset + 2·skip, ...` modulo the prime
//! table size, with `offset` and `skip` derived from its seed, so its preferences visit every
//! entry once. Turns go in node-id order, which makes the table a function of the node set. A key
//! hash selects an entry, whose node is the primary; replicas are the next distinct nodes found by
//! rehashing the key ([`probe_hash`]) and looking up further entries.
//!
//! What it promises: every node holds ⌊M/N⌋ or ⌈M/N⌉ entries, so balance is limited only by the
//! keys' own spread, with a 256 KiB table and an O(1) lookup. What it does not: minimal movement.
//! A joining node changes the turn order, so some entries also move between nodes that stayed,
//! and likewise on leave; the excess grows with the cluster (about 5% over the optimal share at 16
//! nodes, 30% at 64, in `docs/partitioning.md`).

use super::{mix64, sorted_members, Layout, Partitioner};
use crate::cluster::NodeId;

/// Entries in the lookup table: a prime, so every `skip` visits every entry, and well above 100×
/// the node counts this store targets, which Maglev's authors recommend to keep disruption low.
pub const TABLE_SIZE: usize = 65_537;

/// Maglev's permutation-filled table.
#[derive(Debug, Clone, Copy, Default)]
pub struct Maglev;

impl Partitioner for Maglev {
    fn name(&self) -> &'static str {
        "maglev"
    }

    fn layout(&self, nodes: &[NodeId]) -> Box<dyn Layout> {
        Box::new(MaglevLayout::new(sorted_members(nodes)))
    }
}

/// A node's first preferred entry and its stride, from its seed.
fn preference(seed: u64) -> (u64, u64) {
    let m = TABLE_SIZE as u64;
    (seed % m, mix64(seed) % (m - 1) + 1)
}

#[derive(Debug)]
struct MaglevLayout {
    ids: Vec<NodeId>,
    /// The member index owning each entry.
    table: Vec<u32>,
}

impl MaglevLayout {
    fn new(ids: Vec<NodeId>) -> Self {
        const FREE: u32 = u32::MAX;
        let mut table = vec![FREE; TABLE_SIZE];
        if ids.is_empty() {
            return MaglevLayout {
                ids,
                table: Vec::new(),
            };
        }
        let m = TABLE_SIZE as u64;
        // Each node's next candidate entry and stride.
        let mut cursor: Vec<(u64, u64)> = ids
            .iter()
            .map(|&id| preference(super::node_seed(id)))
            .collect();
        let mut filled = 0;
        'fill: loop {
            for (index, (at, skip)) in cursor.iter_mut().enumerate() {
                while table[*at as usize] != FREE {
                    *at = (*at + *skip) % m;
                }
                table[*at as usize] = index as u32;
                *at = (*at + *skip) % m;
                filled += 1;
                if filled == TABLE_SIZE {
                    break 'fill;
                }
            }
        }
        MaglevLayout { ids, table }
    }

    /// Entries per member index.
    #[cfg(test)]
    fn shares(&self) -> Vec<usize> {
        let mut shares = vec![0; self.ids.len()];
        for &index in &self.table {
            shares[index as usize] += 1;
        }
        shares
    }
}

/// The hash of a key's `k`-th probe: the key hash itself, then SplitMix64-style rehashes.
#[inline]
pub fn probe_hash(hash: u64, k: u64) -> u64 {
    if k == 0 {
        hash
    } else {
        mix64(hash.wrapping_add(k.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
    }
}

impl MaglevLayout {
    #[inline]
    fn entry(&self, hash: u64) -> NodeId {
        // Multiply-shift maps the hash onto the entries without a division or modulo bias.
        let at = ((u128::from(hash) * TABLE_SIZE as u128) >> 64) as usize;
        self.ids[self.table[at] as usize]
    }
}

impl Layout for MaglevLayout {
    fn owners(&self, hash: u64, n: usize, out: &mut Vec<NodeId>) {
        let n = n.min(self.ids.len());
        if n == 0 {
            return;
        }
        let start = out.len();
        out.push(self.entry(hash));
        // Replicas come from independent probes rather than the entries after the primary's:
        // neighbouring entries were filled in the same round-robin pass, so walking them gives
        // lopsided replica loads (up to 14% over the mean at 4 nodes).
        let probes = 16 * self.ids.len() as u64 + 64;
        for k in 1..probes {
            if out.len() - start == n {
                return;
            }
            let id = self.entry(probe_hash(hash, k));
            if !out[start..].contains(&id) {
                out.push(id);
            }
        }
        // Reached only for memberships larger than the table or astronomically unlucky probes;
        // the remaining members follow in id order so the answer still has n distinct members.
        for &id in &self.ids {
            if out.len() - start == n {
                return;
            }
            if !out[start..].contains(&id) {
                out.push(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_holds_an_equal_share_of_entries() {
        for count in [1u32, 2, 3, 5, 16, 64, 1000] {
            let ids: Vec<NodeId> = (0..count).map(|i| NodeId(i * 13 + 1)).collect();
            let shares = MaglevLayout::new(ids).shares();
            let (min, max) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
            assert_eq!(*min, TABLE_SIZE / count as usize, "{count} nodes");
            assert!(max - min <= 1, "{count} nodes: {min}..{max}");
        }
    }
}
