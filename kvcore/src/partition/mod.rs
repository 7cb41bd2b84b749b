//! Partitioners: which nodes own a key.
//!
//! A [`Partitioner`] turns a membership (a list of node ids) into a [`Layout`], the lookup state
//! for that membership; the [`ClusterMap`](crate::ClusterMap) builds its layout once and every
//! lookup is then `layout.owners(key_hash(key), n)`. Splitting the two keeps lookups at a few
//! nanoseconds for strategies that need precomputed tables (rings, slot tables) while the
//! contract stays pure: the same key, membership and `n` give the same owners on every node,
//! build and CPU.
//!
//! Keys are hashed with XXH3-64 over their UTF-8 bytes ([`key_hash`]), a specified hash with a
//! stable output; `ahash` and `std`'s `DefaultHasher` make no such promise and are used for
//! in-memory tables only. Golden-value tests pin the placement.
//!
//! The [`default_partitioner`] is [`Slots`]; `docs/partitioning.md` compares the strategies
//! with measurements.
//!
//! # Layout
//! One file per strategy:
//! - [`slots`]: a fixed table of 2^20 slots, each ranked by rendezvous; the default.
//! - [`rendezvous`]: highest random weight over all members for every key.
//! - [`ring`]: a consistent-hash ring with virtual nodes.
//! - [`maglev`]: Maglev's permutation-filled lookup table.

use std::fmt;
use std::sync::Arc;

use crate::cluster::NodeId;

pub mod maglev;
pub mod rendezvous;
pub mod ring;
pub mod slots;

pub use maglev::Maglev;
pub use rendezvous::Rendezvous;
pub use ring::Ring;
pub use slots::Slots;

/// A placement strategy.
///
/// Implementations must be pure and deterministic: a layout depends only on the set of node ids
/// it is given (not their order), and its answers only on the key hash and `n`.
pub trait Partitioner: Send + Sync + fmt::Debug {
    /// A short stable name (`"rendezvous"`, `"ring"`, ...), shown by `/cluster`.
    fn name(&self) -> &'static str;

    /// Lookup state for a membership. `nodes` should be non-empty; its order and any duplicates
    /// are ignored (the [`ClusterMap`](crate::ClusterMap) passes it sorted and distinct).
    fn layout(&self, nodes: &[NodeId]) -> Box<dyn Layout>;
}

/// The lookup state of one partitioner for one membership.
pub trait Layout: Send + Sync + fmt::Debug {
    /// Appends to `out` up to `n` distinct owners of the key whose [`key_hash`] is `hash`,
    /// primary first. Fewer than `n` only when the membership is smaller than `n`.
    fn owners(&self, hash: u64, n: usize, out: &mut Vec<NodeId>);
}

/// The placement hash of a key: XXH3-64 of its bytes with seed 0.
#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// A well-mixed 64-bit permutation (the SplitMix64 / MurmurHash3 finalizer), for deriving
/// per-node and per-slot scores from a key hash. Stable: it is plain arithmetic.
#[inline]
pub fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The stable seed of a node id, used by strategies that hash node ids.
#[inline]
pub fn node_seed(id: NodeId) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&id.0.to_le_bytes())
}

/// The partitioner used when none is chosen: [`Slots`], the one that meets every balance,
/// movement and lookup-cost target in `docs/partitioning.md`.
pub fn default_partitioner() -> Arc<dyn Partitioner> {
    Arc::new(Slots)
}

/// Every built-in partitioner, the default first.
pub fn all() -> Vec<Arc<dyn Partitioner>> {
    vec![
        Arc::new(Slots),
        Arc::new(Rendezvous),
        Arc::new(Ring::default()),
        Arc::new(Maglev),
    ]
}

/// The built-in partitioner with this [`name`](Partitioner::name).
pub fn by_name(name: &str) -> Option<Arc<dyn Partitioner>> {
    all().into_iter().find(|p| p.name() == name)
}

/// The members of `nodes` in id order without duplicates, so every layout is a function of the
/// node set alone.
pub(crate) fn sorted_members(nodes: &[NodeId]) -> Vec<NodeId> {
    let mut ids = nodes.to_vec();
    ids.sort_unstable();
    ids.dedup();
    ids
}
