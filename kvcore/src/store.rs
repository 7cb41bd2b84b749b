//! The in-memory store: a sharded concurrent map with exact byte accounting and an optional budget.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockWriteGuard};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::key::{validate_key, Limits};
use crate::value::Value;

/// Number of independently locked shards; a power of two so the shard is a mask of the hash.
const SHARDS: usize = 64;

/// Bytes charged per entry on top of its key and value bytes: the table slot holding the key and
/// entry headers, plus the heap headers of the key and value allocations.
pub const ENTRY_OVERHEAD: u64 = (std::mem::size_of::<(Box<str>, Entry)>() + 16) as u64;

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

type Shard = HashMap<Box<str>, Entry, ahash::RandomState>;

/// A concurrent in-memory map from keys to versioned [`Value`]s.
///
/// Memory is accounted per entry as key bytes + encoded value bytes + [`ENTRY_OVERHEAD`]. With a
/// budget set, a write that would take the total over it fails with [`Error::MemoryFull`] and
/// changes nothing; reads, deletes and writes that shrink an entry always go through.
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
        let shards = (0..SHARDS)
            .map(|_| RwLock::new(HashMap::with_hasher(hasher.clone())))
            .collect();
        Store {
            shards,
            hasher,
            used: AtomicU64::new(0),
            config,
        }
    }

    /// The store's configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn shard(&self, key: &str) -> &RwLock<Shard> {
        let h = self.hasher.hash_one(key) as usize;
        // The map hashes the same bytes again; use the high bits here so that shard choice and
        // bucket choice stay independent.
        &self.shards[(h >> 58) & (SHARDS - 1)]
    }

    fn write(&self, key: &str) -> RwLockWriteGuard<'_, Shard> {
        // A panic while holding the lock cannot leave an entry half-written (every mutation is a
        // single map operation), so a poisoned lock is safe to keep using.
        self.shard(key)
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The entry stored under `key`.
    pub fn get(&self, key: &str) -> Option<Entry> {
        let shard = self
            .shard(key)
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        shard.get(key).cloned()
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
        let mut shard = self.write(key);
        let current = shard.get(key);
        let holds = match precondition {
            Precondition::None => true,
            Precondition::IfVersion(v) => current.map(|e| e.version) == Some(v),
            Precondition::IfAbsent => current.is_none(),
        };
        if !holds {
            return Ok(Err(Conflict {
                current: current.cloned(),
            }));
        }
        let version = current.map_or(Version(1), |e| e.version.next());
        self.replace(&mut shard, key, Entry { value, version })?;
        Ok(Ok(version))
    }

    /// Stores `entry` under `key` if its version is newer than what is there (used to apply a
    /// replica's copy). Returns whether it was stored.
    pub fn merge(&self, key: &str, entry: Entry) -> Result<bool> {
        validate_key(key)?;
        self.config.limits.check_value(&entry.value)?;
        let mut shard = self.write(key);
        if shard.get(key).is_some_and(|e| e.version >= entry.version) {
            return Ok(false);
        }
        self.replace(&mut shard, key, entry)?;
        Ok(true)
    }

    /// Removes `key`, returning what it held.
    pub fn delete(&self, key: &str) -> Option<Entry> {
        let mut shard = self.write(key);
        let (k, old) = shard.remove_entry(key)?;
        self.used
            .fetch_sub(footprint(&k, &old.value), Ordering::Relaxed);
        Some(old)
    }

    /// Inserts or replaces under the shard's write lock, charging the size difference.
    fn replace(&self, shard: &mut Shard, key: &str, entry: Entry) -> Result<()> {
        let new = footprint(key, &entry.value);
        let old = shard.get(key).map_or(0, |e| footprint(key, &e.value));
        if new > old {
            self.reserve(new - old)?;
        } else {
            self.used.fetch_sub(old - new, Ordering::Relaxed);
        }
        match shard.get_mut(key) {
            Some(slot) => *slot = entry,
            None => {
                shard.insert(key.into(), entry);
            }
        }
        Ok(())
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

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// Whether the store holds no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

    /// Calls `f` with every key and entry, one shard at a time (a shard is read-locked while it
    /// is visited, so `f` must not write to the store).
    pub fn for_each(&self, mut f: impl FnMut(&str, &Entry)) {
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap_or_else(|p| p.into_inner());
            for (k, e) in shard.iter() {
                f(k, e);
            }
        }
    }
}

/// Bytes an entry is charged.
pub fn footprint(key: &str, value: &Value) -> u64 {
    key.len() as u64 + value.len() as u64 + ENTRY_OVERHEAD
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

    #[test]
    fn merge_keeps_the_newest_version() {
        let s = Store::new(StoreConfig::default());
        let e = |v, n| Entry {
            value: Value::integer(v),
            version: Version(n),
        };
        assert!(s.merge("k", e(5, 5)).unwrap());
        assert!(!s.merge("k", e(3, 3)).unwrap());
        assert!(!s.merge("k", e(9, 5)).unwrap());
        assert_eq!(s.get("k").unwrap(), e(5, 5));
        assert!(s.merge("k", e(6, 6)).unwrap());
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
