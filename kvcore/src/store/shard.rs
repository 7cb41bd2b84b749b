//! One shard of the store: an arena of records and a hash table of their offsets.
//!
//! Every key's record (see [`record`](super::record)) lives in the shard's arena, one `Vec<u8>`,
//! and the table holds only each record's `u32` offset and its 32-bit access word (a [`Slot`]):
//! 8 bytes and a control byte per bucket, and no allocation per key. A lookup hashes the key once with the store's random hasher,
//! probes the table, and compares the key in the arena; the record's header and value sit on
//! either side of the key, so a read touches one place in memory.
//!
//! A record that grows moves to the end of the arena, and its old bytes become garbage; once
//! garbage is a quarter of the arena, the live records are moved down over it and the arena
//! shrinks in place. A record
//! that shrinks, or grows at the end of the arena, stays where it is. A removed record is garbage
//! too; removals also give memory back (see [`Shard::remove`]), which writes never do, so a
//! shard that is refilled right after shrinking does not flap.
//!
//! A shard also keeps its [`Floor`]: what every key it does not hold counts as having promised
//! and reached.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU32, Ordering};

use hashbrown::HashTable;

use super::record::{self, Meta, Record};
use super::{Floor, Page, Version};
use crate::replica::{Ballot, Register};
use crate::value::Encoding;

/// Offsets are `u32`, so an arena stays below 4 GiB.
const MAX_ARENA: usize = u32::MAX as usize;

/// Capacity of an arena when it first grows. An allocation this large is mapped from the OS by
/// common allocators (glibc's default threshold is 128 KiB), so growing it later remaps its pages
/// instead of copying them and leaving the old block behind as a resident hole; small arenas
/// growing by doubling left about 30 bytes per key of such holes at 300 000 keys. Pages not yet
/// written cost no memory.
const MIN_ARENA: usize = 128 << 10;

/// A table with at most this many slots is never shrunk: rehashing it would save less than a
/// kibibyte.
const MIN_TABLE: usize = 128;

/// The record of a key is replaced by a longer one and no room can be made: the arena would
/// pass [`MAX_ARENA`] even without garbage.
#[derive(Debug)]
pub(super) struct ArenaFull {
    /// Bytes the record needs.
    pub needed: usize,
    /// Bytes left in the arena.
    pub available: usize,
}

/// The hash every lookup and every rehash of a table use.
#[inline]
pub(super) fn hash_key(hasher: &ahash::RandomState, key: &[u8]) -> u64 {
    hasher.hash_one(key)
}

/// Whether a record holds a value with an expiry time.
#[inline]
fn expiring(record: &Record<'_>) -> bool {
    record.has_value() && record.expires().is_some()
}

/// `a == b`, for keys: most are 8 to 16 bytes, which two overlapping 8-byte loads compare without
/// a call to `memcmp`.
#[inline]
fn same_key(a: &[u8], b: &[u8]) -> bool {
    let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8"));
    match a.len() {
        n if n != b.len() => false,
        8..=16 => {
            let last = a.len() - 8;
            word(a, 0) == word(b, 0) && word(a, last) == word(b, last)
        }
        _ => a == b,
    }
}

/// A table entry: where a key's record starts, and the key's access word (see
/// [`access`](super::access)). The word sits here rather than in the record so that a read,
/// which holds only the shard's read lock, can update it: it is the one field that changes
/// under that lock, and it is atomic.
pub(super) struct Slot {
    at: u32,
    access: AtomicU32,
}

impl Slot {
    /// The record's offset.
    #[inline]
    pub fn at(&self) -> u32 {
        self.at
    }

    /// The key's access word.
    #[inline]
    pub fn access(&self) -> &AtomicU32 {
        &self.access
    }
}

/// The records of the keys whose hash picks this shard. Only the store's write lock around it
/// allows changes (but for access words, which are atomic), so a shard needs no
/// synchronisation of its own.
#[derive(Default)]
pub(super) struct Shard {
    table: HashTable<Slot>,
    arena: Vec<u8>,
    /// Bytes of the arena that belong to no record.
    garbage: usize,
    /// Records that hold a value.
    values: usize,
    /// Records that hold a value with an expiry time: a sweep for expired values skips a shard
    /// without any.
    expiring: usize,
    /// Mutations so far.
    changes: u64,
    /// What a key without a record counts as: see [`Floor`].
    floor: Floor,
}

impl Shard {
    /// The offset of `key`'s record.
    #[inline]
    pub fn find(&self, hash: u64, key: &[u8]) -> Option<u32> {
        self.slot(hash, key).map(Slot::at)
    }

    /// `key`'s table entry.
    #[inline]
    pub fn slot(&self, hash: u64, key: &[u8]) -> Option<&Slot> {
        let arena = &self.arena[..];
        self.table.find(hash, |slot| {
            same_key(Record::key_at(arena, slot.at as usize), key)
        })
    }

    /// The record at `at`, an offset from [`find`](Shard::find) since the last write.
    #[inline]
    pub fn record(&self, at: u32) -> Record<'_> {
        Record::at(&self.arena, at as usize)
    }

    /// `key`'s record.
    #[cfg(test)]
    pub fn get(&self, hash: u64, key: &[u8]) -> Option<Record<'_>> {
        self.find(hash, key).map(|at| self.record(at))
    }

    /// Every record, in no particular order.
    pub fn records(&self) -> impl Iterator<Item = Record<'_>> {
        self.table.iter().map(|slot| self.record(slot.at))
    }

    /// Up to `n` records with their access words, in table order from the `from`th (modulo
    /// the number of records), wrapping around: the table's order is its hashes', so a run of
    /// neighbours is a random sample of the shard's keys.
    pub fn sample(&self, from: usize, n: usize) -> impl Iterator<Item = (Record<'_>, u32)> {
        let len = self.table.len();
        let from = if len == 0 { 0 } else { from % len };
        self.table
            .iter()
            .skip(from)
            .chain(self.table.iter())
            .take(n.min(len))
            .map(|slot| (self.record(slot.at), slot.access.load(Ordering::Relaxed)))
    }

    /// The metadata of the record at `at`, or, for a key without one, what the floor says it
    /// is: promised at the floor's ballot, at the floor's version, nothing accepted.
    #[inline]
    pub fn meta_at(&self, at: Option<u32>) -> Meta {
        match at {
            Some(at) => self.record(at).meta(),
            None => Meta {
                version: self.floor.version,
                ballot: Ballot::ZERO,
                promised: self.floor.promised,
                expires: None,
            },
        }
    }

    /// The accepted register of the record at `at`, or, for a key without one, the empty
    /// register at the floor's version. Its ballot is [`Ballot::ZERO`], whatever the floor
    /// promised, so that replicas whose floors differ still agree on a missing key in reads that
    /// compare ballots.
    pub fn register_at(&self, at: Option<u32>) -> Register {
        match at {
            Some(at) => self.record(at).register(),
            None => Register {
                ballot: Ballot::ZERO,
                version: self.floor.version,
                value: None,
                expires: None,
            },
        }
    }

    /// The floor.
    pub fn floor(&self) -> Floor {
        self.floor
    }

    /// Raises the floor to at least `floor`, field by field.
    pub fn raise_floor(&mut self, floor: Floor) {
        let raised = self.floor.join(floor);
        if raised != self.floor {
            self.floor = raised;
            self.changes += 1;
        }
    }

    /// The records whose keys sort after `after` (in byte order; from the first if `None`) and
    /// that `select` accepts by their key, in key order.
    ///
    /// The table keeps no order. A heap of the candidates is built in linear time and popped
    /// only as far as the caller goes, so taking k records out of n costs O(n + k log n), not a
    /// sort of the whole shard per call.
    pub fn in_key_order<'a>(
        &'a self,
        after: Option<&str>,
        mut select: impl FnMut(&[u8]) -> bool,
    ) -> impl Iterator<Item = Record<'a>> + 'a {
        let arena = &self.arena[..];
        let after = after.map(str::as_bytes);
        let mut heap: BinaryHeap<Reverse<(&[u8], u32)>> = self
            .table
            .iter()
            .map(|slot| (Record::key_at(arena, slot.at as usize), slot.at))
            .filter(|&(key, _)| !matches!(after, Some(after) if key <= after) && select(key))
            .map(Reverse)
            .collect();
        std::iter::from_fn(move || heap.pop().map(|Reverse((_, at))| self.record(at)))
    }

    /// The records whose keys sort after `after`, in key order, that `filter` accepts, turned
    /// into items by `item`, until the next one would take the total of `size` past `max_bytes`
    /// (the first one is always taken). See [`Store::scan_page`](super::Store::scan_page).
    pub fn page<T>(
        &self,
        after: Option<&str>,
        max_bytes: usize,
        mut filter: impl FnMut(&str) -> bool,
        size: impl Fn(&Record<'_>) -> usize,
        mut item: impl FnMut(&Record<'_>) -> T,
    ) -> Page<T> {
        let mut items = Vec::new();
        let mut bytes = 0usize;
        let mut last = None;
        for record in self.in_key_order(after, |_| true) {
            if !filter(record.key_str()) {
                continue;
            }
            let cost = size(&record);
            if !items.is_empty() && bytes.saturating_add(cost) > max_bytes {
                return Page {
                    items,
                    next: last.map(str::to_owned),
                };
            }
            bytes = bytes.saturating_add(cost);
            items.push(item(&record));
            last = Some(record.key_str());
        }
        Page { items, next: None }
    }

    /// Number of records that hold a value.
    pub fn values(&self) -> usize {
        self.values
    }

    /// Number of records that hold a value with an expiry time.
    pub fn expiring(&self) -> usize {
        self.expiring
    }

    /// Number of writes so far.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Sets the version and value of the record at `at` in place, if the value is as long as
    /// the one there (see [`record::overwrite_value`]); returns whether it did.
    pub fn overwrite_value(&mut self, at: u32, version: Version, value: (Encoding, &[u8])) -> bool {
        let at = at as usize;
        let had_value = self.record(at as u32).has_value();
        if !record::overwrite_value(&mut self.arena[at..], version, value) {
            return false;
        }
        self.values += usize::from(!had_value);
        self.changes += 1;
        true
    }

    /// Replaces `key`'s record (at `at`, from [`find`](Shard::find), or none yet) with one made of
    /// `meta` and `value`; a new key's access word starts as `access`. Nothing changes if it
    /// fails.
    #[allow(clippy::too_many_arguments)]
    pub fn write(
        &mut self,
        hasher: &ahash::RandomState,
        hash: u64,
        key: &[u8],
        mut at: Option<u32>,
        meta: &Meta,
        value: Option<(Encoding, &[u8])>,
        access: u32,
    ) -> Result<(), ArenaFull> {
        let value_len = value.map_or(0, |(_, b)| b.len());
        let len = record::encoded_len(key.len(), meta, value_len);
        let old = at.map(|at| {
            let r = self.record(at);
            (at as usize, r.len(), r.has_value())
        });
        let was_expiring = at.is_some_and(|at| expiring(&self.record(at)));
        // Where the record goes: in place if it fits there, else at the end.
        let place = match old {
            Some((start, old_len, _)) if start + old_len == self.arena.len() => start,
            Some((start, old_len, _)) if len <= old_len => start,
            _ => self.arena.len(),
        };
        if place + len > MAX_ARENA {
            if self.garbage == 0 || self.arena.len() - self.garbage + len > MAX_ARENA {
                return Err(ArenaFull {
                    needed: len,
                    available: MAX_ARENA.saturating_sub(self.arena.len() - self.garbage),
                });
            }
            self.compact(0);
            at = self.find(hash, key);
            return self.write(hasher, hash, key, at, meta, value, access);
        }

        if self.arena.capacity() < place + len {
            let want = (place + len).max(self.arena.capacity() * 2).max(MIN_ARENA);
            self.arena.reserve_exact(want - self.arena.len());
        }
        match old {
            Some((start, old_len, _)) if place == start => {
                if start + old_len == self.arena.len() {
                    self.arena.resize(start + len, 0);
                } else {
                    self.garbage += old_len - len;
                }
            }
            Some((start, old_len, _)) => {
                self.garbage += old_len;
                self.arena.resize(place + len, 0);
                let slot = self
                    .table
                    .find_mut(hash, |slot| slot.at as usize == start)
                    .expect("the record being replaced is in the table");
                slot.at = place as u32;
            }
            None => {
                self.arena.resize(place + len, 0);
                let arena = &self.arena[..];
                let slot = Slot {
                    at: place as u32,
                    access: AtomicU32::new(access),
                };
                self.table.insert_unique(hash, slot, |slot| {
                    hash_key(hasher, Record::key_at(arena, slot.at as usize))
                });
            }
        }
        record::encode(&mut self.arena[place..place + len], key, meta, value);

        let had_value = old.is_some_and(|(_, _, v)| v);
        match (had_value, value.is_some()) {
            (false, true) => self.values += 1,
            (true, false) => self.values -= 1,
            _ => {}
        }
        let is_expiring = value.is_some() && meta.expires.is_some();
        match (was_expiring, is_expiring) {
            (false, true) => self.expiring += 1,
            (true, false) => self.expiring -= 1,
            _ => {}
        }
        self.changes += 1;
        if self.garbage > self.arena.len() / 4 {
            self.compact(self.arena.len() / 8);
        }
        Ok(())
    }

    /// Removes the record at `at` (from [`find`](Shard::find), for the key whose hash is `hash`),
    /// and gives memory back once much of it is unused.
    ///
    /// Shrinking happens here only, never on a write: a store whose keys are deleted must get
    /// its memory back, but one that is written steadily must not pay for it. The thresholds
    /// leave room on both sides: the table is halved-or-more only once it is under a quarter
    /// full (it grows again only when over 7/8 full), and the arena is copied out only once a
    /// quarter of it is garbage or three quarters of its capacity are unused, keeping an eighth
    /// of the live bytes spare.
    pub fn remove(&mut self, hasher: &ahash::RandomState, hash: u64, at: u32) {
        let record = self.record(at);
        let (start, len, had_value) = (at as usize, record.len(), record.has_value());
        let was_expiring = expiring(&record);
        self.table
            .find_entry(hash, |slot| slot.at == at)
            .unwrap_or_else(|_| unreachable!("the record being removed is in the table"))
            .remove();
        if start + len == self.arena.len() {
            self.arena.truncate(start);
        } else {
            self.garbage += len;
        }
        self.values -= usize::from(had_value);
        self.expiring -= usize::from(was_expiring);
        self.changes += 1;

        if self.table.is_empty() {
            // Dropping both frees them: an emptied shard holds no memory.
            self.table = HashTable::new();
            self.arena = Vec::new();
            self.garbage = 0;
            return;
        }
        if self.table.capacity() > MIN_TABLE && self.table.len() < self.table.capacity() / 4 {
            let arena = &self.arena[..];
            self.table.shrink_to(self.table.len(), |slot| {
                hash_key(hasher, Record::key_at(arena, slot.at as usize))
            });
        }
        let live = self.arena.len() - self.garbage;
        if self.garbage > self.arena.len() / 4
            || (self.arena.capacity() > MIN_ARENA && self.arena.len() < self.arena.capacity() / 4)
        {
            self.compact(live / 8);
        }
    }

    /// Moves the live records down over the garbage, in the order they lie, and shrinks the
    /// arena to them and `headroom` spare bytes, dropping garbage.
    ///
    /// No second arena is allocated: the allocation shrinks where it is. A large arena is mapped
    /// from the OS, and shrinking it unmaps its tail; a fresh arena would come from the
    /// allocator's heap instead (glibc raises its mapping threshold once a mapped block is
    /// freed), whence freed memory returns to the OS only from the top, so a store emptied by
    /// deletes kept most of its peak. Visiting the records in offset order takes a sort of
    /// their table slots, a few tens of microseconds for a shard of thousands of keys, once per
    /// quarter of the arena turned to garbage.
    fn compact(&mut self, headroom: usize) {
        let mut slots: Vec<&mut Slot> = self.table.iter_mut().collect();
        slots.sort_unstable_by_key(|slot| slot.at);
        let mut end = 0;
        for slot in slots {
            let start = slot.at as usize;
            let len = Record::at(&self.arena, start).len();
            self.arena.copy_within(start..start + len, end);
            slot.at = end as u32;
            end += len;
        }
        self.arena.truncate(end);
        self.arena.shrink_to(end + headroom);
        self.garbage = 0;
    }

    /// Bytes of arena in use, garbage included, and of garbage.
    #[cfg(test)]
    pub fn arena_bytes(&self) -> (usize, usize) {
        (self.arena.len(), self.garbage)
    }

    /// Bytes the arena and the table have allocated (the table's slots and a control byte
    /// each).
    #[cfg(test)]
    pub fn allocated(&self) -> usize {
        self.arena.capacity() + self.table.capacity() * (std::mem::size_of::<Slot>() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::Ballot;
    use crate::NodeId;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    struct Fixture {
        hasher: ahash::RandomState,
        shard: Shard,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                hasher: ahash::RandomState::new(),
                shard: Shard::default(),
            }
        }

        fn put(&mut self, key: &str, version: u64, value: Option<&[u8]>) {
            let hash = hash_key(&self.hasher, key.as_bytes());
            let at = self.shard.find(hash, key.as_bytes());
            let meta = Meta {
                version: Version(version),
                ..Meta::default()
            };
            let value = value.map(|v| (Encoding::Binary, v));
            self.shard
                .write(&self.hasher, hash, key.as_bytes(), at, &meta, value, 0)
                .unwrap();
        }

        fn get(&self, key: &str) -> Option<(u64, Option<Vec<u8>>)> {
            let hash = hash_key(&self.hasher, key.as_bytes());
            let r = self.shard.get(hash, key.as_bytes())?;
            Some((r.meta().version.0, r.value().map(|(_, b)| b.to_vec())))
        }
    }

    #[test]
    fn keys_compare_equal_only_when_every_byte_is() {
        for len in 0..40 {
            let a: Vec<u8> = (0..len as u8).collect();
            assert!(same_key(&a, &a.clone()));
            for i in 0..len {
                let mut b = a.clone();
                b[i] ^= 0x40;
                assert!(!same_key(&a, &b), "{len} {i}");
            }
            if len > 0 {
                assert!(!same_key(&a, &a[..len - 1]));
            }
        }
    }

    #[test]
    fn a_record_that_shrinks_or_sits_at_the_end_stays_in_place() {
        let mut f = Fixture::new();
        f.put("a", 1, Some(&[1; 10]));
        f.put("b", 1, Some(&[2; 10]));
        let len = f.shard.arena_bytes().0;
        // `b` is last: it grows and shrinks in place.
        f.put("b", 2, Some(&[2; 20]));
        f.put("b", 3, Some(&[2; 5]));
        assert_eq!(f.shard.arena_bytes(), (len - 5, 0));
        // `a` is not: shrinking leaves garbage behind it, growing moves it to the end.
        f.put("a", 2, Some(&[1; 8]));
        assert_eq!(f.shard.arena_bytes(), (len - 5, 2));
        f.put("a", 3, Some(&[1; 200]));
        assert_eq!(f.get("a"), Some((3, Some(vec![1; 200]))));
        assert_eq!(f.get("b"), Some((3, Some(vec![2; 5]))));
        assert_eq!(f.shard.values(), 2);
    }

    #[test]
    fn garbage_is_collected_once_it_is_a_quarter_of_the_arena() {
        let mut f = Fixture::new();
        for i in 0..100 {
            f.put(&format!("key{i}"), 1, Some(&[0; 30]));
        }
        let full = f.shard.arena_bytes().0;
        for round in 2..50 {
            for i in (0..100).step_by(3) {
                f.put(
                    &format!("key{i}"),
                    round,
                    Some(&vec![round as u8; 30 + round as usize]),
                );
            }
            let (len, garbage) = f.shard.arena_bytes();
            assert!(garbage * 4 <= len, "{garbage} of {len}");
        }
        let (len, _) = f.shard.arena_bytes();
        assert!(len < 3 * full, "{len} against {full}");
        for i in 0..100 {
            let expected = if i % 3 == 0 {
                vec![49; 79]
            } else {
                vec![0; 30]
            };
            let version = if i % 3 == 0 { 49 } else { 1 };
            assert_eq!(f.get(&format!("key{i}")), Some((version, Some(expected))));
        }
    }

    #[test]
    fn tombstones_and_promises_count_as_keys_without_values() {
        let mut f = Fixture::new();
        f.put("a", 1, Some(b"x"));
        f.put("a", 2, None);
        assert_eq!(f.shard.values(), 0);
        assert_eq!(f.get("a"), Some((2, None)));
        let hash = hash_key(&f.hasher, b"p");
        let meta = Meta {
            promised: Ballot::new(3, NodeId(1)),
            ..Meta::default()
        };
        f.shard
            .write(&f.hasher, hash, b"p", None, &meta, None, 0)
            .unwrap();
        assert_eq!(f.shard.get(hash, b"p").unwrap().meta(), meta);
        assert_eq!(f.shard.records().count(), 2);
        assert_eq!(f.shard.values(), 0);
        assert_eq!(f.shard.changes(), 3);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put(u8, Option<Vec<u8>>, Option<u64>),
        Promise(u8, u64),
        Overwrite(u8, u8),
        Remove(u8),
    }

    fn any_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (
                0..20u8,
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..100)),
                proptest::option::of(any::<u64>()),
            )
                .prop_map(|(k, v, expires)| Op::Put(k, v, expires)),
            (0..20u8, any::<u64>()).prop_map(|(k, b)| Op::Promise(k, b)),
            (0..20u8, any::<u8>()).prop_map(|(k, fill)| Op::Overwrite(k, fill)),
            (0..20u8).prop_map(Op::Remove),
        ]
    }

    proptest! {
        /// Whatever the sequence of growing, shrinking, moving, overwritten in place and removed
        /// records, every key reads back what was last written, the arena holds no more than
        /// its records and the garbage it counts, and the counts of values and of values with
        /// an expiry time are right.
        #[test]
        fn the_shard_reads_back_what_was_written(ops in proptest::collection::vec(any_op(), 1..300)) {
            let mut f = Fixture::new();
            let mut model: BTreeMap<String, (Meta, Option<Vec<u8>>)> = BTreeMap::new();
            let name = |k: u8| format!("key-{k}-{}", "x".repeat(k as usize));
            for op in ops {
                let (key, meta, value) = match op {
                    Op::Put(k, value, expires) => {
                        let key = name(k);
                        let mut meta = model.get(&key).map(|(m, _)| *m).unwrap_or_default();
                        meta.version = meta.version.next();
                        meta.expires = value.as_ref().and(expires);
                        (key, meta, value)
                    }
                    Op::Promise(k, ballot) => {
                        let key = name(k);
                        let (mut meta, value) = model.get(&key).cloned().unwrap_or_default();
                        meta.promised = Ballot::from_bits(ballot);
                        (key, meta, value)
                    }
                    Op::Overwrite(k, fill) => {
                        // In place when the value keeps its length and has no expiry time,
                        // as the store's map API does; refused otherwise, changing nothing.
                        let key = name(k);
                        let hash = hash_key(&f.hasher, key.as_bytes());
                        let Some(at) = f.shard.find(hash, key.as_bytes()) else { continue };
                        let Some((meta, Some(old))) = model.get(&key).cloned() else { continue };
                        let new = vec![fill; old.len()];
                        let version = meta.version.next();
                        if f.shard.overwrite_value(at, version, (Encoding::Binary, &new)) {
                            prop_assert_eq!(meta.expires, None);
                            model.insert(key, (Meta { version, ..meta }, Some(new)));
                        } else {
                            prop_assert!(meta.expires.is_some());
                        }
                        continue;
                    }
                    Op::Remove(k) => {
                        let key = name(k);
                        let hash = hash_key(&f.hasher, key.as_bytes());
                        if let Some(at) = f.shard.find(hash, key.as_bytes()) {
                            f.shard.remove(&f.hasher, hash, at);
                            model.remove(&key);
                        }
                        continue;
                    }
                };
                let hash = hash_key(&f.hasher, key.as_bytes());
                let at = f.shard.find(hash, key.as_bytes());
                f.shard.write(
                    &f.hasher,
                    hash,
                    key.as_bytes(),
                    at,
                    &meta,
                    value.as_deref().map(|v| (Encoding::Binary, v)),
                    0,
                ).unwrap();
                model.insert(key, (meta, value));
            }
            let mut live = 0;
            for (key, (meta, value)) in &model {
                let r = f.shard.get(hash_key(&f.hasher, key.as_bytes()), key.as_bytes()).unwrap();
                prop_assert_eq!(r.meta(), *meta);
                prop_assert_eq!(r.value().map(|(_, b)| b.to_vec()), value.clone());
                live += r.as_bytes().len();
            }
            let (len, garbage) = f.shard.arena_bytes();
            prop_assert_eq!(len, live + garbage);
            prop_assert!(garbage * 4 <= len);
            prop_assert_eq!(f.shard.records().count(), model.len());
            prop_assert_eq!(f.shard.values(), model.values().filter(|(_, v)| v.is_some()).count());
            let expiring = model.values().filter(|(m, v)| v.is_some() && m.expires.is_some());
            prop_assert_eq!(f.shard.expiring(), expiring.count());
        }
    }
}
