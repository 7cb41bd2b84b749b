//! The in-memory store: a sharded concurrent map with exact byte accounting and an optional budget.

use hashbrown::HashTable;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockWriteGuard};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::key::{validate_key, Limits};
use crate::replica::{Ballot, Register, ReplicaState};
use crate::value::Value;

/// Number of independently locked shards; a power of two so the shard is a mask of the hash.
const SHARDS: usize = 64;

/// Bytes charged per entry on top of its key and value bytes: the table slot holding the key and
/// entry headers, plus the heap headers of the key and value allocations.
pub const ENTRY_OVERHEAD: u64 = (std::mem::size_of::<(Box<str>, Slot)>() + 16) as u64;

/// The version of a stored entry. Versions of one key only grow; `0` is never a stored version.
///
/// Today the node that owns a key counts its writes; replication will make this a logical
/// (ballot-derived) number, still a plain integer to clients.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Version(pub u64);

impl Version {
    /// The version after this one.
    pub fn next(self) -> Version {
        Version(self.0 + 1)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A stored value and its version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The value.
    pub value: Value,
    /// Its version.
    pub version: Version,
}

/// What a write requires of the key's current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precondition {
    /// Write whatever is there.
    #[default]
    None,
    /// Write only if the key's current version is exactly this.
    IfVersion(Version),
    /// Write only if the key does not exist.
    IfAbsent,
}

/// A write that was not applied because its [`Precondition`] did not hold. An expected outcome,
/// so it is a value, not an [`Error`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// What the key held when the write was refused.
    pub current: Option<Entry>,
}

/// How a [`Store`] is set up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreConfig {
    /// Memory budget in bytes, as counted by [`Store::used_bytes`]; `None` for no limit.
    pub max_memory: Option<u64>,
    /// Key and value size limits.
    pub limits: Limits,
}

/// A point-in-time summary of a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    /// Number of keys.
    pub keys: u64,
    /// Bytes charged against the budget.
    pub bytes: u64,
    /// The budget, if any.
    pub max_memory: Option<u64>,
}

/// What the store keeps per key: the replica register plus the highest promised ballot.
#[derive(Debug, Clone, Default)]
struct Slot {
    promised: Ballot,
    register: Register,
}

/// One shard's table. Keys are hashed once per operation: the hash picks the shard and is reused
/// for the lookup inside it (a `HashMap` would hash the key again).
#[derive(Default)]
struct Shard {
    table: HashTable<(Box<str>, Slot)>,
}

impl Shard {
    fn get(&self, hash: u64, key: &str) -> Option<&Slot> {
        self.table
            .find(hash, |(k, _)| &**k == key)
            .map(|(_, slot)| slot)
    }

    fn get_mut(&mut self, hash: u64, key: &str) -> Option<&mut Slot> {
        self.table
            .find_mut(hash, |(k, _)| &**k == key)
            .map(|(_, slot)| slot)
    }

    /// Inserts a key known to be absent.
    fn insert_new(&mut self, hash: u64, key: &str, slot: Slot, hasher: &ahash::RandomState) {
        self.table
            .insert_unique(hash, (key.into(), slot), |(k, _)| hasher.hash_one(&**k));
    }

    fn remove(&mut self, hash: u64, key: &str) -> Option<(Box<str>, Slot)> {
        match self.table.find_entry(hash, |(k, _)| &**k == key) {
            Ok(entry) => Some(entry.remove().0),
            Err(_) => None,
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &Slot)> {
        self.table.iter().map(|(k, slot)| (&**k, slot))
    }
}

/// A concurrent in-memory map from keys to versioned [`Value`]s.
///
/// Memory is accounted per entry as key bytes + encoded value bytes + [`ENTRY_OVERHEAD`]. With a
/// budget set, a write that would take the total over it fails with [`Error::MemoryFull`] and
/// changes nothing; reads, deletes and writes that shrink an entry always go through.
///
/// Besides the plain map operations ([`get`](Store::get), [`set`](Store::set),
/// [`put`](Store::put), [`delete`](Store::delete)) the store is the acceptor of the replication
/// protocol: [`prepare`](Store::prepare), [`accept`](Store::accept), [`repair`](Store::repair) and
/// [`restore`](Store::restore) apply its rules atomically per key.
///
/// ```
/// use kvcore::{Store, StoreConfig, Value};
///
/// let store = Store::new(StoreConfig::default());
/// let v1 = store.set("greeting", Value::string("hello")).unwrap();
/// let v2 = store.set("greeting", Value::string("hi")).unwrap();
/// assert!(v2 > v1);
/// assert_eq!(store.get("greeting").unwrap().value.as_str(), Some("hi"));
/// ```
pub struct Store {
    shards: Box<[RwLock<Shard>]>,
    hasher: ahash::RandomState,
    used: AtomicU64,
    changes: AtomicU64,
    config: StoreConfig,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// An empty store.
    pub fn new(config: StoreConfig) -> Self {
        let hasher = ahash::RandomState::new();
        let shards = (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect();
        Store {
            shards,
            hasher,
            used: AtomicU64::new(0),
            changes: AtomicU64::new(0),
            config,
        }
    }

    /// The store's configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The key's hash and its shard. The table inside a shard uses the hash's low bits (bucket)
    /// and top 7 bits (tag), so the shard is chosen from bits in between, independent of both.
    fn locate(&self, key: &str) -> (u64, &RwLock<Shard>) {
        let h = self.hasher.hash_one(key);
        (h, &self.shards[(h >> 40) as usize & (SHARDS - 1)])
    }

    fn write(&self, key: &str) -> (u64, RwLockWriteGuard<'_, Shard>) {
        let (h, shard) = self.locate(key);
        // A panic while holding the lock cannot leave an entry half-written (every mutation is a
        // single table operation), so a poisoned lock is safe to keep using.
        (
            h,
            shard.write().unwrap_or_else(|poison| poison.into_inner()),
        )
    }

    fn read_slot<T>(&self, key: &str, f: impl FnOnce(Option<&Slot>) -> T) -> T {
        let (h, shard) = self.locate(key);
        let shard = shard.read().unwrap_or_else(|poison| poison.into_inner());
        f(shard.get(h, key))
    }

    /// The entry stored under `key`.
    pub fn get(&self, key: &str) -> Option<Entry> {
        self.read_slot(key, |slot| slot.and_then(|s| s.register.entry()))
    }

    /// Stores `value` under `key` whatever was there, returning the new version.
    pub fn set(&self, key: &str, value: Value) -> Result<Version> {
        match self.put(key, value, Precondition::None)? {
            Ok(version) => Ok(version),
            Err(_) => unreachable!("an unconditional write has no conflict"),
        }
    }

    /// Stores `value` under `key` if `precondition` holds; the new version, or the [`Conflict`].
    pub fn put(
        &self,
        key: &str,
        value: Value,
        precondition: Precondition,
    ) -> Result<Result<Version, Conflict>> {
        validate_key(key)?;
        self.config.limits.check_value(&value)?;
        let (h, mut shard) = self.write(key);
        // One lookup, and the slot updated in place: this is the hot path of every write.
        if let Some(slot) = shard.get_mut(h, key) {
            let register = &mut slot.register;
            let exists = register.value.is_some();
            if !precondition.holds_for(exists.then_some(register.version)) {
                return Ok(Err(Conflict {
                    current: register.entry(),
                }));
            }
            let (old, new) = (register.value_len() as u64, value.len() as u64);
            if new > old {
                self.reserve(new - old)?;
            } else {
                self.used.fetch_sub(old - new, Ordering::Relaxed);
            }
            register.version = register.version.next();
            register.value = Some(value);
            self.changes.fetch_add(1, Ordering::Relaxed);
            return Ok(Ok(register.version));
        }
        if !precondition.holds_for(None) {
            return Ok(Err(Conflict { current: None }));
        }
        self.reserve(footprint(key, &value))?;
        let version = Version(1);
        let register = Register {
            ballot: Ballot::ZERO,
            version,
            value: Some(value),
        };
        let slot = Slot {
            promised: Ballot::ZERO,
            register,
        };
        shard.insert_new(h, key, slot, &self.hasher);
        self.changes.fetch_add(1, Ordering::Relaxed);
        Ok(Ok(version))
    }

    /// Removes `key`, returning what it held.
    pub fn delete(&self, key: &str) -> Option<Entry> {
        let (h, mut shard) = self.write(key);
        let (k, old) = shard.remove(h, key)?;
        self.used
            .fetch_sub(slot_footprint(&k, &old), Ordering::Relaxed);
        old.register.entry()
    }

    /// The register of `key` on this replica (the default, empty register if it has none).
    pub fn register(&self, key: &str) -> Register {
        self.read_slot(key, |slot| {
            slot.map(|s| s.register.clone()).unwrap_or_default()
        })
    }

    /// Phase 1 of a proposal: promises `ballot` if it is higher than anything promised or
    /// accepted for `key`, returning the accepted register; otherwise returns the higher ballot.
    ///
    /// `grow` is how many value bytes the proposal may add; if the budget cannot take them the
    /// promise is refused with [`Error::MemoryFull`] and nothing changes, so a write that cannot
    /// fit is refused before any replica accepts it.
    pub fn prepare(
        &self,
        key: &str,
        ballot: Ballot,
        grow: usize,
    ) -> Result<Result<Register, Ballot>> {
        validate_key(key)?;
        let (h, mut shard) = self.write(key);
        let slot = shard.get(h, key).cloned().unwrap_or_default();
        let highest = slot.promised.max(slot.register.ballot);
        if ballot <= highest {
            return Ok(Err(highest));
        }
        let current = slot_footprint(key, &slot);
        let after =
            key.len() as u64 + (slot.register.value_len().max(grow)) as u64 + ENTRY_OVERHEAD;
        if after > current {
            self.check_room(after - current)?;
        }
        let register = slot.register.clone();
        self.replace(
            &mut shard,
            h,
            key,
            Slot {
                promised: ballot,
                ..slot
            },
            false,
        )?;
        Ok(Ok(register))
    }

    /// Phase 2 of a proposal: accepts `register` (whose ballot is the proposal's) unless a higher
    /// ballot was promised, returning that ballot if so.
    pub fn accept(&self, key: &str, register: Register) -> Result<Result<(), Ballot>> {
        validate_key(key)?;
        if let Some(value) = &register.value {
            self.config.limits.check_value(value)?;
        }
        let (h, mut shard) = self.write(key);
        let slot = shard.get(h, key).cloned().unwrap_or_default();
        if register.ballot < slot.promised || register.ballot < slot.register.ballot {
            return Ok(Err(slot.promised.max(slot.register.ballot)));
        }
        let next = Slot {
            promised: register.ballot,
            register,
        };
        self.replace(&mut shard, h, key, next, true)?;
        Ok(Ok(()))
    }

    /// Brings a lagging replica up to a register known to be chosen (held by a quorum). Applied
    /// only if it is newer than what is accepted here and no higher ballot was promised, exactly
    /// as a late copy of the original accept would be. Returns whether it was applied.
    pub fn repair(&self, key: &str, register: Register) -> Result<bool> {
        validate_key(key)?;
        let (h, mut shard) = self.write(key);
        let slot = shard.get(h, key).cloned().unwrap_or_default();
        if register.ballot <= slot.register.ballot || register.ballot < slot.promised {
            return Ok(false);
        }
        let next = Slot {
            promised: slot.promised,
            register,
        };
        self.replace(&mut shard, h, key, next, true)?;
        Ok(true)
    }

    /// Merges a peer's copy of `key` into a replica that is recovering: the higher promise and
    /// the newer accepted register win. Never refused for the budget (a recovering replica must
    /// hold what its peers hold); returns whether anything changed.
    pub fn restore(&self, state: ReplicaState) -> Result<bool> {
        validate_key(&state.key)?;
        let key = state.key.as_str();
        let (h, mut shard) = self.write(key);
        let slot = shard.get(h, key).cloned().unwrap_or_default();
        let mut next = slot.clone();
        next.promised = slot.promised.max(state.promised);
        if state.register.ballot > slot.register.ballot {
            next.register = state.register;
        }
        let changed =
            next.promised != slot.promised || next.register.ballot != slot.register.ballot;
        if changed {
            self.replace(&mut shard, h, key, next, false)?;
        }
        Ok(changed)
    }

    /// Copies the state of every key in shard `shard` (0..[`Store::SHARDS`]) that `filter`
    /// accepts. Used to bring a recovering replica up to date, one shard at a time.
    pub fn scan_shard(
        &self,
        shard: usize,
        mut filter: impl FnMut(&str) -> bool,
    ) -> Vec<ReplicaState> {
        let Some(shard) = self.shards.get(shard) else {
            return Vec::new();
        };
        let shard = shard.read().unwrap_or_else(|p| p.into_inner());
        shard
            .iter()
            .filter(|(k, _)| filter(k))
            .map(|(k, slot)| ReplicaState {
                key: k.to_string(),
                promised: slot.promised,
                register: slot.register.clone(),
            })
            .collect()
    }

    /// Number of shards, for [`scan_shard`](Store::scan_shard).
    pub const SHARDS: usize = SHARDS;

    /// Inserts or replaces under the shard's write lock, charging the size difference. With
    /// `enforce` the budget is checked; without, the slot is stored regardless (the caller
    /// checked room earlier, or must not refuse).
    fn replace(
        &self,
        shard: &mut Shard,
        h: u64,
        key: &str,
        slot: Slot,
        enforce: bool,
    ) -> Result<()> {
        self.changes.fetch_add(1, Ordering::Relaxed);
        let new = slot_footprint(key, &slot);
        let old = shard.get(h, key).map_or(0, |s| slot_footprint(key, s));
        if new > old {
            if enforce {
                self.reserve(new - old)?;
            } else {
                self.used.fetch_add(new - old, Ordering::Relaxed);
            }
        } else {
            self.used.fetch_sub(old - new, Ordering::Relaxed);
        }
        match shard.get_mut(h, key) {
            Some(existing) => *existing = slot,
            None => shard.insert_new(h, key, slot, &self.hasher),
        }
        Ok(())
    }

    fn check_room(&self, bytes: u64) -> Result<()> {
        match self.config.max_memory {
            Some(max) => {
                let used = self.used.load(Ordering::Relaxed);
                if used.saturating_add(bytes) > max {
                    return Err(Error::MemoryFull {
                        needed: bytes,
                        available: max.saturating_sub(used),
                        max_memory: max,
                    });
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Charges `bytes` against the budget, or fails without charging anything.
    fn reserve(&self, bytes: u64) -> Result<()> {
        let Some(max) = self.config.max_memory else {
            self.used.fetch_add(bytes, Ordering::Relaxed);
            return Ok(());
        };
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&total| total <= max)
            })
            .map(drop)
            .map_err(|used| Error::MemoryFull {
                needed: bytes,
                available: max.saturating_sub(used),
                max_memory: max,
            })
    }

    /// Number of keys that hold a value.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.read().unwrap_or_else(|p| p.into_inner());
                s.iter()
                    .filter(|(_, slot)| slot.register.value.is_some())
                    .count()
            })
            .sum()
    }

    /// Whether the store holds no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A counter that moves whenever anything in the store changes, so a background task can
    /// tell that nothing happened since it last looked.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    /// Bytes charged against the budget.
    pub fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Keys, bytes and budget.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            keys: self.len() as u64,
            bytes: self.used_bytes(),
            max_memory: self.config.max_memory,
        }
    }

    /// Calls `f` with every key and its entry, one shard at a time (a shard is read-locked while
    /// it is visited, so `f` must not write to the store).
    pub fn for_each(&self, mut f: impl FnMut(&str, &Entry)) {
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap_or_else(|p| p.into_inner());
            for (k, slot) in shard.iter() {
                if let Some(entry) = slot.register.entry() {
                    f(k, &entry);
                }
            }
        }
    }

    /// Calls `f` with every key and its register, tombstones included.
    pub fn for_each_register(&self, mut f: impl FnMut(&str, &Register)) {
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap_or_else(|p| p.into_inner());
            for (k, slot) in shard.iter() {
                f(k, &slot.register);
            }
        }
    }
}

impl Precondition {
    /// Whether the precondition holds for the key's current entry.
    pub fn holds(&self, current: Option<&Entry>) -> bool {
        self.holds_for(current.map(|e| e.version))
    }

    /// Whether the precondition holds for a key at this version (`None`: the key does not exist).
    pub fn holds_for(&self, version: Option<Version>) -> bool {
        match self {
            Precondition::None => true,
            Precondition::IfVersion(v) => version == Some(*v),
            Precondition::IfAbsent => version.is_none(),
        }
    }
}

/// Bytes an entry is charged.
pub fn footprint(key: &str, value: &Value) -> u64 {
    key.len() as u64 + value.len() as u64 + ENTRY_OVERHEAD
}

fn slot_footprint(key: &str, slot: &Slot) -> u64 {
    key.len() as u64 + slot.register.value_len() as u64 + ENTRY_OVERHEAD
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn store_with_budget(max: u64) -> Store {
        Store::new(StoreConfig {
            max_memory: Some(max),
            ..Default::default()
        })
    }

    #[test]
    fn set_get_delete_and_versions() {
        let s = Store::new(StoreConfig::default());
        assert_eq!(s.get("k"), None);
        assert_eq!(s.set("k", Value::integer(1)).unwrap(), Version(1));
        assert_eq!(s.set("k", Value::integer(2)).unwrap(), Version(2));
        let e = s.get("k").unwrap();
        assert_eq!((e.value.as_i64(), e.version), (Some(2), Version(2)));
        assert_eq!(s.len(), 1);
        assert_eq!(s.delete("k").unwrap().version, Version(2));
        assert_eq!(s.get("k"), None);
        assert_eq!(s.delete("k"), None);
        assert!(s.is_empty());
    }

    #[test]
    fn bytes_are_accounted_exactly() {
        let s = Store::new(StoreConfig::default());
        s.set("abc", Value::string("12345")).unwrap();
        assert_eq!(s.used_bytes(), 3 + 5 + ENTRY_OVERHEAD);
        s.set("abc", Value::string("1")).unwrap();
        assert_eq!(s.used_bytes(), 3 + 1 + ENTRY_OVERHEAD);
        s.set("de", Value::integer(7)).unwrap();
        assert_eq!(s.used_bytes(), 3 + 1 + 2 + 8 + 2 * ENTRY_OVERHEAD);
        s.delete("abc");
        s.delete("de");
        assert_eq!(s.used_bytes(), 0);
    }

    #[test]
    fn budget_refuses_overflowing_write_and_changes_nothing() {
        let budget = 2 * (ENTRY_OVERHEAD + 10);
        let s = store_with_budget(budget);
        s.set("k1", Value::string("12345678")).unwrap(); // 10 + overhead
        let before = s.used_bytes();
        let err = s.set("k2", Value::string("123456789")).unwrap_err();
        assert_eq!(err.code(), "memory_full");
        assert!(matches!(err, Error::MemoryFull { needed, .. } if needed == ENTRY_OVERHEAD + 11));
        assert_eq!(s.get("k2"), None);
        assert_eq!(s.used_bytes(), before);
        // An existing key cannot grow past the budget either, and keeps its value.
        assert!(s
            .set("k1", Value::string("x".repeat(2 * ENTRY_OVERHEAD as usize)))
            .is_err());
        assert_eq!(s.get("k1").unwrap().value.as_str(), Some("12345678"));
        // Exactly filling the budget is allowed; shrinking and deleting always are.
        s.set("k2", Value::string("12345678")).unwrap();
        assert_eq!(s.used_bytes(), budget);
        s.set("k1", Value::string("")).unwrap();
        assert!(s.delete("k2").is_some());
    }

    #[test]
    fn preconditions_report_conflicts_as_values() {
        let s = Store::new(StoreConfig::default());
        assert_eq!(
            s.put("k", Value::integer(1), Precondition::IfAbsent)
                .unwrap(),
            Ok(Version(1))
        );
        let c = s
            .put("k", Value::integer(2), Precondition::IfAbsent)
            .unwrap()
            .unwrap_err();
        assert_eq!(c.current.unwrap().version, Version(1));
        let c = s
            .put("k", Value::integer(2), Precondition::IfVersion(Version(7)))
            .unwrap()
            .unwrap_err();
        assert_eq!(c.current.unwrap().value.as_i64(), Some(1));
        assert_eq!(
            s.put("k", Value::integer(2), Precondition::IfVersion(Version(1)))
                .unwrap(),
            Ok(Version(2))
        );
    }

    fn ballot(round: u64, node: u32) -> Ballot {
        Ballot::new(round, crate::NodeId(node))
    }

    fn reg(b: Ballot, version: u64, v: Option<i64>) -> Register {
        Register {
            ballot: b,
            version: Version(version),
            value: v.map(Value::integer),
        }
    }

    #[test]
    fn acceptor_promises_only_higher_ballots_and_reports_the_accepted_register() {
        let s = Store::new(StoreConfig::default());
        assert_eq!(
            s.prepare("k", ballot(1, 0), 8).unwrap(),
            Ok(Register::default())
        );
        assert_eq!(s.prepare("k", ballot(1, 0), 8).unwrap(), Err(ballot(1, 0)));
        assert_eq!(s.prepare("k", ballot(0, 9), 8).unwrap(), Err(ballot(1, 0)));
        // A promise-only slot holds no value.
        assert_eq!(s.get("k"), None);
        assert_eq!(s.len(), 0);
        assert_eq!(
            s.accept("k", reg(ballot(1, 0), 1, Some(5))).unwrap(),
            Ok(())
        );
        assert_eq!(s.get("k").unwrap().value.as_i64(), Some(5));
        // A higher promise blocks older accepts; the accepted register is reported to it.
        assert_eq!(
            s.prepare("k", ballot(2, 1), 8).unwrap(),
            Ok(reg(ballot(1, 0), 1, Some(5)))
        );
        assert_eq!(
            s.accept("k", reg(ballot(1, 0), 2, Some(6))).unwrap(),
            Err(ballot(2, 1))
        );
        assert_eq!(s.accept("k", reg(ballot(2, 1), 2, None)).unwrap(), Ok(()));
        assert_eq!(s.get("k"), None);
        assert_eq!(s.register("k").version, Version(2));
        // An accept without a prior promise is fine if nothing higher was promised.
        assert_eq!(
            s.accept("k", reg(ballot(3, 0), 3, Some(1))).unwrap(),
            Ok(())
        );
        assert_eq!(s.register("k").ballot, ballot(3, 0));
    }

    #[test]
    fn prepare_refuses_writes_that_cannot_fit_before_anything_is_accepted() {
        let s = store_with_budget(ENTRY_OVERHEAD + 20);
        assert!(s.prepare("k", ballot(1, 0), 8).unwrap().is_ok());
        let e = s.prepare("k", ballot(2, 0), 64).unwrap_err();
        assert_eq!(e.code(), "memory_full");
        // Nothing changed: the refused prepare did not promise.
        assert!(s.prepare("k", ballot(2, 0), 8).unwrap().is_ok());
    }

    #[test]
    fn repair_and_restore_only_move_replicas_forward() {
        let s = Store::new(StoreConfig::default());
        s.prepare("k", ballot(5, 0), 0).unwrap().unwrap();
        // Repair never overrides a higher promise.
        assert!(!s.repair("k", reg(ballot(4, 1), 1, Some(1))).unwrap());
        assert!(s.repair("k", reg(ballot(5, 1), 1, Some(1))).unwrap());
        assert!(!s.repair("k", reg(ballot(5, 1), 1, Some(1))).unwrap());
        let state = |p: Ballot, r: Register| ReplicaState {
            key: "k".into(),
            promised: p,
            register: r,
        };
        assert!(!s
            .restore(state(ballot(1, 0), reg(ballot(1, 0), 9, Some(9))))
            .unwrap());
        assert!(s
            .restore(state(ballot(9, 2), reg(ballot(6, 2), 2, Some(2))))
            .unwrap());
        assert_eq!(s.register("k"), reg(ballot(6, 2), 2, Some(2)));
        assert_eq!(s.prepare("k", ballot(8, 0), 0).unwrap(), Err(ballot(9, 2)));
        let scanned: Vec<_> = (0..Store::SHARDS)
            .flat_map(|i| s.scan_shard(i, |_| true))
            .collect();
        assert_eq!(
            scanned,
            vec![state(ballot(9, 2), reg(ballot(6, 2), 2, Some(2)))]
        );
    }

    #[test]
    fn invalid_writes_are_refused() {
        let s = Store::new(StoreConfig {
            limits: Limits { max_value_bytes: 3 },
            ..Default::default()
        });
        assert_eq!(
            s.set("", Value::integer(1)).unwrap_err().code(),
            "invalid_key"
        );
        assert_eq!(
            s.set("k", Value::string("long")).unwrap_err().code(),
            "value_too_large"
        );
        assert!(s.is_empty());
        assert_eq!(s.used_bytes(), 0);
    }

    #[test]
    fn concurrent_writers_never_exceed_the_budget() {
        let per_entry = ENTRY_OVERHEAD + 4 + 8;
        let s = Arc::new(store_with_budget(100 * per_entry));
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    (0..100)
                        .filter(|i| s.set(&format!("{t}{i:03}"), Value::integer(*i)).is_ok())
                        .count()
                })
            })
            .collect();
        let stored: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(stored, 100);
        assert_eq!(s.len(), 100);
        assert_eq!(s.used_bytes(), 100 * per_entry);
    }
}
