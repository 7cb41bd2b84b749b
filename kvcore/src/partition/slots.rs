//! A fixed table of [`SLOTS`] slots whose owners are chosen by rendezvous: the default.
//!
//! A key belongs to slot `key_hash >> (64 - SLOT_BITS)`. Each slot is ranked exactly like a key
//! under [`Rendezvous`](super::Rendezvous), using [`slot_hash`] in place of the key hash, and the
//! layout stores the best [`DEPTH`] member indexes of every slot. A lookup is then one table read,
//! whatever the cluster size; larger `n` rank the slot on the spot, with the same answer the table
//! would give.
//!
//! Because every slot is ranked by rendezvous, movement is exactly rendezvous's: a joining node
//! takes only the slots it now ranks first on (and their keys), and a leaving node's slots go to
//! their next-best nodes. Balance costs a large table: a node's share of slots varies like a
//! binomial, with relative spread `sqrt(nodes / SLOTS)`, on top of the spread of the keys
//! themselves; 2^20 slots keeps it near 1% at 64 nodes. The price is a table of 4 MiB (8 MiB
//! beyond 256 nodes) and a build that scores every node for every slot (tens of milliseconds at 64
//! nodes in release builds), paid once per membership.

use super::rendezvous::RendezvousLayout;
use super::{mix64, sorted_members, Layout, Partitioner};
use crate::cluster::NodeId;

/// Bits of the key hash that select a slot.
pub const SLOT_BITS: u32 = 20;

/// Number of slots.
pub const SLOTS: usize = 1 << SLOT_BITS;

/// How many owners the table keeps per slot; lookups with a larger `n` rank the slot directly.
pub const DEPTH: usize = 4;

/// The slot of a key hash: its top [`SLOT_BITS`] bits.
#[inline]
pub fn slot_of(hash: u64) -> usize {
    (hash >> (64 - SLOT_BITS)) as usize
}

/// The hash a slot is ranked by, in place of a key hash: [`mix64`] of the slot number.
#[inline]
pub fn slot_hash(slot: usize) -> u64 {
    mix64(slot as u64)
}

/// Rendezvous-ranked slot table.
#[derive(Debug, Clone, Copy, Default)]
pub struct Slots;

impl Partitioner for Slots {
    fn name(&self) -> &'static str {
        "slots"
    }

    fn layout(&self, nodes: &[NodeId]) -> Box<dyn Layout> {
        let ranking = RendezvousLayout::new(sorted_members(nodes));
        // Narrow indexes halve the table, and with it the cache misses of random lookups.
        let width = match ranking.len() {
            0 => Width::None,
            1..=0x100 => Width::Narrow,
            0x101..=0x1_0000 => Width::Wide,
            _ => Width::None,
        };
        Box::new(SlotsLayout::new(ranking, width))
    }
}

#[derive(Debug, Clone, Copy)]
enum Width {
    Narrow,
    Wide,
    None,
}

/// The best `depth` member indexes of every slot.
fn fill<T: Copy + Default>(
    ranking: &RendezvousLayout,
    depth: usize,
    narrow: impl Fn(usize) -> T,
) -> Vec<[T; DEPTH]> {
    (0..SLOTS)
        .map(|slot| {
            let mut row = [T::default(); DEPTH];
            let mut next = row.iter_mut();
            ranking.rank(slot_hash(slot), depth, |index| {
                if let Some(cell) = next.next() {
                    *cell = narrow(index);
                }
            });
            row
        })
        .collect()
}

/// Per-slot owner indexes, as narrow as the membership allows.
enum Table {
    Narrow(Vec<[u8; DEPTH]>),
    Wide(Vec<[u16; DEPTH]>),
    /// No table: memberships too large to index in 16 bits rank every lookup, and empty ones
    /// have nothing to rank.
    None,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Millions of rows are no use in a debug print.
        match self {
            Table::Narrow(rows) => write!(f, "Narrow({} rows)", rows.len()),
            Table::Wide(rows) => write!(f, "Wide({} rows)", rows.len()),
            Table::None => f.write_str("None"),
        }
    }
}

#[derive(Debug)]
struct SlotsLayout {
    ranking: RendezvousLayout,
    depth: usize,
    table: Table,
}

impl SlotsLayout {
    fn new(ranking: RendezvousLayout, width: Width) -> Self {
        let depth = ranking.len().min(DEPTH);
        let table = match width {
            Width::Narrow => Table::Narrow(fill(&ranking, depth, |i| i as u8)),
            Width::Wide => Table::Wide(fill(&ranking, depth, |i| i as u16)),
            Width::None => Table::None,
        };
        SlotsLayout {
            ranking,
            depth,
            table,
        }
    }
}

impl Layout for SlotsLayout {
    #[inline]
    fn owners(&self, hash: u64, n: usize, out: &mut Vec<NodeId>) {
        let n = n.min(self.ranking.len());
        let slot = slot_of(hash);
        if n <= self.depth {
            match &self.table {
                Table::Narrow(rows) => {
                    let row = &rows[slot];
                    out.extend(row[..n].iter().map(|&i| self.ranking.id(usize::from(i))));
                    return;
                }
                Table::Wide(rows) => {
                    let row = &rows[slot];
                    out.extend(row[..n].iter().map(|&i| self.ranking.id(usize::from(i))));
                    return;
                }
                Table::None => {}
            }
        }
        let ranking = &self.ranking;
        ranking.rank(slot_hash(slot), n, |index| out.push(ranking.id(index)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::Rendezvous;

    #[test]
    fn a_key_gets_its_slots_rendezvous_owners() {
        let ids: Vec<NodeId> = [3, 1, 4, 15, 9, 2, 6].map(NodeId).to_vec();
        let slots = Slots.layout(&ids);
        let rendezvous = Rendezvous.layout(&ids);
        for k in 0..2000u64 {
            let hash = mix64(k.wrapping_mul(0x1234_5678_9abc_def1));
            for n in 0..=ids.len() + 1 {
                let (mut got, mut want) = (Vec::new(), Vec::new());
                slots.owners(hash, n, &mut got);
                rendezvous.owners(slot_hash(slot_of(hash)), n, &mut want);
                assert_eq!(got, want, "hash {hash:#x}, n {n}");
            }
        }
    }

    #[test]
    fn every_table_width_gives_the_same_owners() {
        let ids: Vec<NodeId> = (0..6).map(|i| NodeId(i * 1000)).collect();
        let layouts = [Width::Narrow, Width::Wide, Width::None]
            .map(|width| SlotsLayout::new(RendezvousLayout::new(ids.clone()), width));
        for k in 0..2000u64 {
            let hash = mix64(k);
            for n in 0..=ids.len() {
                let answers = layouts.each_ref().map(|layout| {
                    let mut out = Vec::new();
                    layout.owners(hash, n, &mut out);
                    out
                });
                assert_eq!(answers[0], answers[1]);
                assert_eq!(answers[0], answers[2]);
            }
        }
    }
}
