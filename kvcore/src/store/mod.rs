//! The in-memory store: a sharded concurrent map with exact byte accounting and an optional budget.
//!
//! # Layout
//! - this module: the [`Store`], its two APIs (the plain map and the replication acceptor) and
//!   the byte accounting behind the budget.
//! - `shard`: one shard, an arena of records indexed by a hash table of `u32` offsets.
//! - `record`: the byte layout of one key's record: header, key, value, optional fields.
//! - `access`: the access word each key keeps for eviction ([`Eviction`]), and the
//!   [`EvictionPool`] of sampled candidates.
//! - `read_buffer`: where values read out of the store are copied to.
//!
//! A key costs one record in its shard's arena (22 header bytes, the key and the value) and one
//! 8-byte table slot (the record's offset and the key's access word); there is no allocation
//! per key. See [`ENTRY_OVERHEAD`].
//!
//! A key's shard is [`Store::shard_of`], the same on every node, so that replicas can compare
//! and copy their keys shard by shard; each shard keeps a [`Floor`] that lets a deleted key's
//! record go without its versions ever repeating.

mod access;
mod read_buffer;
mod record;
mod shard;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockWriteGuard};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::key::{validate_key, Limits};
use crate::replica::{Ballot, Register, ReplicaState};
use crate::value::Value;
use access::Access;
use record::{Meta, Record};
use shard::{hash_key, Shard};

pub use access::{
    Candidate, Eviction, EvictionPool, UnknownEviction, LFU_DECAY_MINUTES, LFU_INIT, TICK,
};

/// Number of independently locked shards; a power of two so the shard is the top bits of a hash.
/// Many small shards keep each arena small, so compacting one is short, and keep two threads
/// from meeting on one lock.
const SHARDS: usize = 1 << SHARD_BITS;
const SHARD_BITS: u32 = 8;

/// Seed of the shard hash ([`Store::shard_of`]). The placement hash
/// ([`key_hash`](crate::partition::key_hash)) is XXH3 with seed 0; were the shard taken from it,
/// a ring partitioner, which gives each node ranges of that hash, would put a node's keys in a
/// few shards only. A different seed makes the two hashes independent. Changing it changes every
/// key's shard, which nodes of different builds must agree on: it is pinned by a golden test.
const SHARD_SEED: u64 = 0x6b76_636f_7265_5348;

/// Bytes [`Store::scan_page`] and [`Store::ballots_page`] count per item on top of its key and
/// value bytes: its version, ballots and lengths as a reply carries them, so that a page of many
/// small items is bounded too.
pub const PAGE_ITEM_OVERHEAD: usize = 32;

/// Bytes charged per entry on top of its key and value bytes.
///
/// What a key costs besides its key and value: the record's 22-byte header (lengths, version,
/// accepted ballot); its table slot, a 4-byte offset, the key's 4-byte access word (see
/// [`Eviction`]) and a control byte in a table kept between 7/16 and 7/8 full, so 10 to 21
/// bytes; and the arena's garbage, kept below a quarter of it by compaction. A million 16-byte
/// keys with 32-byte values, loaded through either API, grow the process by 91 bytes a key, 43
/// on top of the 48 bytes of key and value (`cargo bench -p kvcore --bench memory`; the tables
/// are then less than half full, the dearest case: 1.7 million keys take 82.5 bytes each); the
/// other 5 are for garbage between compactions. A promise pending on a key (8 bytes until the
/// accept) is not charged. A removed key ([`Store::delete`], [`Store::collect`]) is charged
/// nothing, and shards give their memory back as they empty: deleting those million keys again
/// takes the process from 89 MiB back to 7 to 20, from run to run (the same benchmark; the
/// allocator keeps some of what the shrinking tables freed).
pub const ENTRY_OVERHEAD: u64 = 48;

/// The version of a stored entry. Versions of one key only grow; `0` is never a stored version.
///
/// The map API counts a key's writes and deletes; the acceptor API stores whatever version the
/// replication protocol chose, which counts the same way.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Version(pub u64);

impl Version {
    /// The highest version; a key that reaches it cannot be written again.
    pub const MAX: Version = Version(u64::MAX);

    /// The version after this one, or [`Version::MAX`] again at the end: it never wraps to a
    /// lower version, whatever a peer sent. The store refuses a write that would not move a
    /// key's version up (see [`checked_next`](Version::checked_next)).
    pub fn next(self) -> Version {
        Version(self.0.saturating_add(1))
    }

    /// The version after this one, `None` after [`Version::MAX`].
    pub fn checked_next(self) -> Option<Version> {
        self.0.checked_add(1).map(Version)
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
    /// When it expires, in milliseconds since 1970; `None` if it does not.
    pub expires: Option<u64>,
}

impl Entry {
    /// An entry that does not expire.
    pub fn new(value: Value, version: Version) -> Entry {
        Entry {
            value,
            version,
            expires: None,
        }
    }

    /// Milliseconds left before the entry expires at `now_ms` (0 once it has), or `None` if it
    /// does not expire.
    pub fn ttl_ms(&self, now_ms: u64) -> Option<u64> {
        self.expires.map(|at| at.saturating_sub(now_ms))
    }
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
    /// What the keys' access words record, for a caller that evicts keys to stay within the
    /// budget (see [`Store::sample`]). The store itself never drops a key; with a policy set,
    /// new writes are admitted a sixteenth below the budget (see [`StoreConfig::admission`]).
    pub eviction: Eviction,
}

impl StoreConfig {
    /// The most [`Store::used_bytes`] can reach: the budget, `max_memory`.
    pub fn ceiling(&self) -> Option<u64> {
        self.max_memory
    }

    /// What a write that adds bytes is admitted against when it is prepared (and a write
    /// through the map API, and a lone replica's round): the budget, and with an eviction
    /// policy the budget less a sixteenth.
    ///
    /// In cache mode a write is admitted when it is prepared, and a prepare that does not fit
    /// waits for evictions; its accept, and copies to lagging replicas, are checked against
    /// the [ceiling](StoreConfig::ceiling) instead, so that writes prepared together do not
    /// refuse each other's accepts (a write half accepted has an unknown outcome) and replicas
    /// do not miss copies. The last sixteenth of the budget is the room those writes share
    /// until evictions catch up, so writes never take the bytes past the budget itself
    /// ([`restore`](Store::restore), a recovering replica's copy, is not limited).
    pub fn admission(&self) -> Option<u64> {
        let max = self.max_memory?;
        Some(if self.eviction.evicts() {
            max - max / 16
        } else {
            max
        })
    }
}

/// What a shard counts a key without a record as: promised at `promised`, at version `version`,
/// nothing accepted. A key's record is removed only once its tombstone is chosen (see
/// [`Store::collect`]); its promise and version are then folded into its shard's floor, so the
/// key behaves afterwards as if its tombstone were still there: a proposal at or below its old
/// promise is refused, so a stale copy of its old value cannot be accepted, and its next version
/// continues above the old one.
///
/// Floors only rise, field by field ([`join`](Floor::join)). A replica that catches up copies its
/// peers' floors with [`Store::raise_floor`] as well as their keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Floor {
    /// Every key without a record counts as having promised this ballot.
    pub promised: Ballot,
    /// Every key without a record counts as being at this version (so its next is above it).
    pub version: Version,
}

impl Floor {
    /// The higher of the two in each field.
    pub fn join(self, other: Floor) -> Floor {
        Floor {
            promised: self.promised.max(other.promised),
            version: self.version.max(other.version),
        }
    }
}

/// One page of a shard's keys, from [`Store::scan_page`] or [`Store::ballots_page`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The items, in key order.
    pub items: Vec<T>,
    /// The last key returned, when more keys may follow it in the shard: pass it as `after` to
    /// get the next page. `None` when the shard has no more.
    pub next: Option<String>,
}

/// The empty, last page; written out because a derived `Default` would require `T: Default`.
impl<T> Default for Page<T> {
    fn default() -> Self {
        Page {
            items: Vec::new(),
            next: None,
        }
    }
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

/// A shard's lock on cache lines of its own, so threads working on neighbouring shards do not
/// take each other's line away (128 bytes: adjacent-line prefetching pairs 64-byte lines).
#[derive(Default)]
#[repr(align(128))]
struct PaddedShard(RwLock<Shard>);

/// A concurrent in-memory map from keys to versioned [`Value`]s, which is also the acceptor of
/// the replication protocol.
///
/// It has two APIs over the same keys:
/// - the [map API](#map-api) ([`get`](Store::get), [`set`](Store::set), [`put`](Store::put),
///   [`delete`](Store::delete)) for programs that embed kvcore and use it as a map;
/// - the [acceptor API](#acceptor-api) ([`prepare`](Store::prepare), [`accept`](Store::accept),
///   [`repair`](Store::repair), [`restore`](Store::restore), [`register`](Store::register),
///   [`collect`](Store::collect), [`scan_page`](Store::scan_page)) through which the replication
///   protocol (CASPaxos, run by kvserver) keeps a key's replicas; it applies the acceptor's rules
///   atomically per key.
///
/// A replicated node writes only through the acceptor API; a map write to a replicated key would
/// change this replica without a ballot, behind the protocol's back.
///
/// Memory is accounted per entry as key bytes + encoded value bytes + [`ENTRY_OVERHEAD`]. With a
/// budget set, a write that would take the total over it fails with [`Error::MemoryFull`] and
/// changes nothing; reads, deletes and writes that shrink an entry always go through. (With an
/// [`Eviction`] policy, new writes are admitted below the budget, leaving its last sixteenth to
/// accepts of writes already admitted: see [`StoreConfig::admission`].)
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
    shards: Box<[PaddedShard]>,
    hasher: ahash::RandomState,
    used: AtomicU64,
    config: StoreConfig,
    access: Access,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// # Map API
///
/// A plain map with versions, for programs that embed kvcore. What is promised is that a key's
/// versions only grow: every write and every delete moves them up by one, so a deleted key that
/// is written again never repeats a version, and an `IfVersion` read before the delete cannot
/// match the new key. A key's first version is 1 only if nothing in its shard was deleted
/// before: a delete removes the key and its bytes, and raises its shard's [`Floor`] to the
/// deleted version, so a key created afterwards in that shard, deleted or new, may start above 1.
impl Store {
    /// The shard of `key`, in `0..`[`Store::SHARDS`]: the top 8 bits of the XXH3-64 hash of the
    /// key's bytes with seed `0x6b76_636f_7265_5348`. A specified function of the key alone, so
    /// every node, build and CPU agrees on it and replicas can compare and copy a shard at a
    /// time; it is independent of [`key_hash`](crate::partition::key_hash), the placement hash.
    #[inline]
    pub fn shard_of(key: &str) -> usize {
        (xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), SHARD_SEED) >> (64 - SHARD_BITS))
            as usize
    }

    /// An empty store.
    pub fn new(config: StoreConfig) -> Self {
        Store {
            shards: (0..SHARDS).map(|_| PaddedShard::default()).collect(),
            hasher: ahash::RandomState::new(),
            used: AtomicU64::new(0),
            config,
            access: Access::new(config.eviction),
        }
    }

    /// The store's configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The entry stored under `key`, its value copied out. A use of the key, for eviction.
    pub fn get(&self, key: &str) -> Option<Entry> {
        self.read_touching(key, |shard, at| at.and_then(|at| shard.record(at).entry()))
    }

    /// Stores `value` under `key` whatever was there, returning the new version.
    pub fn set(&self, key: &str, value: Value) -> Result<Version> {
        match self.put(key, value, Precondition::None)? {
            Ok(version) => Ok(version),
            Err(_) => unreachable!("an unconditional write has no conflict"),
        }
    }

    /// Stores `value` under `key` if `precondition` holds; the new version, or the [`Conflict`].
    ///
    /// The key's ballots are kept as they are: the map API does not take part in replication.
    pub fn put(
        &self,
        key: &str,
        value: Value,
        precondition: Precondition,
    ) -> Result<Result<Version, Conflict>> {
        validate_key(key)?;
        self.config.limits.check_value(&value)?;
        let (h, mut shard) = self.write(key);
        // One lookup, and the record rewritten in place when the value keeps its size: this is
        // the hot path of every write.
        let at = self.find_touching(&shard, h, key);
        let current = at.map(|at| shard.record(at));
        let version = current.map_or(shard.floor().version, |r| r.version());
        let exists = current.is_some_and(|r| r.has_value());
        if !precondition.holds_for(exists.then_some(version)) {
            return Ok(Err(Conflict {
                current: current.and_then(|r| r.entry()),
            }));
        }
        let version = version.checked_next().ok_or_else(|| exhausted(key))?;
        let stored = (value.encoding(), &value.as_bytes()[..]);
        // A value as long as the one it replaces costs no bytes more or less.
        if at.is_some_and(|at| shard.overwrite_value(at, version, stored)) {
            return Ok(Ok(version));
        }
        // A new key keeps the floor's promise: the map API does not take part in replication,
        // but it must not undo a promise either.
        let next = Meta {
            version,
            expires: None,
            ..shard.meta_at(at)
        };
        self.apply(
            &mut shard,
            h,
            key,
            at,
            &next,
            Some(&value),
            self.config.admission(),
        )?;
        Ok(Ok(version))
    }

    /// Deletes `key`, returning what it held. The key's record goes, and its bytes with it; its
    /// shard's floor rises to the delete's version (one past the deleted entry) and to the key's
    /// promise, so a later write continues its versions (see the [map API](#map-api)). A key
    /// that holds no value (an acceptor's tombstone or promise) is left as it is.
    pub fn delete(&self, key: &str) -> Option<Entry> {
        let (h, mut shard) = self.write(key);
        let at = shard.find(h, key.as_bytes())?;
        let record = shard.record(at);
        let old = record.entry()?;
        let floor = Floor {
            promised: record.meta().promised,
            version: old.version.next(),
        };
        self.remove(&mut shard, h, key, at);
        shard.raise_floor(floor);
        Some(old)
    }
}

/// # Acceptor API
///
/// The replica side of the replication protocol (CASPaxos, run by kvserver). Per key the store
/// keeps the accepted [`Register`] (ballot, version, value or tombstone) and the highest ballot
/// promised, and applies the acceptor's rules to them atomically. A promise is never lower than
/// the accepted ballot: accepting a ballot promises it too. Proposing, quorums and retries are
/// the server's job. A key written only through the map API has accepted nothing (its ballot
/// is [`Ballot::ZERO`]), so no replica's state is ever older than it and
/// [`restore`](Store::restore) never copies it.
///
/// A key without a record counts as promised at its shard's [`Floor`]: its register is
/// [`Ballot::ZERO`] at the floor's version with no value, a prepare at or below the floor's
/// ballot is refused with it, and an accept or repair below it is refused. Once every replica
/// holds a key's chosen tombstone, [`collect`](Store::collect) removes it into the floor.
impl Store {
    /// The register of `key` on this replica. For a key without a record: [`Ballot::ZERO`], the
    /// version of its shard's floor, no value.
    pub fn register(&self, key: &str) -> Register {
        self.read(key, |shard, at| shard.register_at(at))
    }

    /// [`register`](Store::register), for a client's read: a use of the key, for eviction.
    pub fn read_register(&self, key: &str) -> Register {
        self.read_touching(key, |shard, at| shard.register_at(at))
    }

    /// Whether a write of `value_len` value bytes to `key` fits now: what a
    /// [`prepare`](Store::prepare) growing the key to that size would find against the
    /// [admission limit](StoreConfig::admission). Always, without a budget.
    pub fn admits(&self, key: &str, value_len: usize) -> bool {
        let Some(limit) = self.config.admission() else {
            return true;
        };
        let used = self.used_bytes();
        if used.saturating_add(charge(key, value_len)) <= limit {
            return true; // fits even as a new key: no need to look the key up
        }
        let held = self.read(key, |shard, at| at.map(|at| shard.record(at).value_len()));
        let before = held.map_or(0, |len| charge(key, len));
        let after = charge(key, held.unwrap_or(0).max(value_len));
        after <= before || used.saturating_add(after - before) <= limit
    }

    /// The highest ballot `key` promised on this replica (or accepted: accepting promises
    /// too); for a key with no record, its shard's floor.
    pub fn promise(&self, key: &str) -> Ballot {
        self.read(key, |shard, at| shard.meta_at(at).promised)
    }

    /// Phase 1 of a proposal: promises `ballot` if it is higher than anything promised or
    /// accepted for `key`, returning the accepted register; otherwise returns the higher ballot.
    ///
    /// `grow` is how many value bytes the proposal may add; if the [admission
    /// limit](StoreConfig::admission) cannot take them the promise is refused with
    /// [`Error::MemoryFull`] and nothing changes, so a write that cannot fit is refused before
    /// any replica accepts it. A prepare that adds no value bytes (a read or a delete) is
    /// checked against the [ceiling](StoreConfig::ceiling) only, so that in cache mode the
    /// rounds that make room are not refused for want of it.
    pub fn prepare(
        &self,
        key: &str,
        ballot: Ballot,
        grow: usize,
    ) -> Result<Result<Register, Ballot>> {
        validate_key(key)?;
        let (h, mut shard) = self.write(key);
        let at = shard.find(h, key.as_bytes());
        let meta = shard.meta_at(at);
        if ballot <= meta.promised {
            return Ok(Err(meta.promised));
        }
        let value_len = at.map_or(0, |at| shard.record(at).value_len());
        let before = at.map_or(0, |_| charge(key, value_len));
        let after = charge(key, value_len.max(grow));
        if after > before {
            let limit = if grow > 0 {
                self.config.admission()
            } else {
                self.config.ceiling()
            };
            check_room(self.used_bytes(), after - before, limit)?;
        }
        let register = shard.register_at(at);
        let next = Meta {
            promised: ballot,
            ..meta
        };
        // The record a new key's promise takes is charged against the ceiling as it is made:
        // prepares of other keys may have taken the room checked above meanwhile.
        let limit = self.config.ceiling();
        self.apply(
            &mut shard,
            h,
            key,
            at,
            &next,
            register.value.as_ref(),
            limit,
        )?;
        Ok(Ok(register))
    }

    /// Phase 2 of a proposal: accepts `register` (whose ballot is the proposal's) unless a higher
    /// ballot was promised, returning that ballot if so.
    pub fn accept(&self, key: &str, register: Register) -> Result<Result<(), Ballot>> {
        let ballot = register.ballot;
        self.accept_promising(key, register, ballot)
    }

    /// [`accept`](Store::accept), and in the same step the promise of `next`, the proposer's
    /// next ballot: phase 1 of its next round on this key, whose result is the register just
    /// accepted. Done in one step, so nothing can be accepted in between, and the record keeps
    /// its size from one such write to the next.
    ///
    /// Checked against the [ceiling](StoreConfig::ceiling), and a use of the key.
    pub fn accept_promising(
        &self,
        key: &str,
        register: Register,
        next: Ballot,
    ) -> Result<Result<(), Ballot>> {
        validate_key(key)?;
        if let Some(value) = &register.value {
            self.config.limits.check_value(value)?;
        }
        let (h, mut shard) = self.write(key);
        let at = self.find_touching(&shard, h, key);
        let promised = shard.meta_at(at).promised;
        if register.ballot < promised {
            return Ok(Err(promised));
        }
        let next = Meta::accepted(&register, next);
        let limit = self.config.ceiling();
        self.apply(
            &mut shard,
            h,
            key,
            at,
            &next,
            register.value.as_ref(),
            limit,
        )?;
        Ok(Ok(()))
    }

    /// A whole round by the only replica of `key`: promises `ballot` and, if `round` returns a
    /// new register, accepts it, all under one lock, so a key kept on one node costs one lookup
    /// per write and its record never carries a promise. `round` gets the accepted register and
    /// returns the register to accept (its ballot is set to `ballot`) and what to answer.
    /// Returns the higher ballot if one was promised.
    ///
    /// A tombstone is not stored: with no other replica to wait for, it is chosen as soon as it
    /// is accepted, so the key is removed at once and its shard's floor raised to `ballot` and
    /// the tombstone's version, as [`collect`](Store::collect) would. A register whose version
    /// is not above the current one is refused with [`Error::InvalidKey`] (the key's versions
    /// are used up). A use of the key; a value is checked against the budget.
    pub fn propose_alone<T>(
        &self,
        key: &str,
        ballot: Ballot,
        round: impl FnOnce(&Register) -> (Option<Register>, T),
    ) -> Result<Result<T, Ballot>> {
        validate_key(key)?;
        let (h, mut shard) = self.write(key);
        let at = self.find_touching(&shard, h, key);
        let meta = shard.meta_at(at);
        if ballot <= meta.promised {
            return Ok(Err(meta.promised));
        }
        let register = shard.register_at(at);
        let (next, answer) = round(&register);
        let Some(mut next) = next else {
            return Ok(Ok(answer));
        };
        if next.version <= register.version {
            return Err(exhausted(key));
        }
        let Some(value) = &next.value else {
            if let Some(at) = at {
                self.remove(&mut shard, h, key, at);
            }
            shard.raise_floor(Floor {
                promised: ballot,
                version: next.version,
            });
            return Ok(Ok(answer));
        };
        self.config.limits.check_value(value)?;
        next.ballot = ballot;
        let meta = Meta::accepted(&next, ballot);
        let limit = self.config.admission();
        self.apply(&mut shard, h, key, at, &meta, next.value.as_ref(), limit)?;
        Ok(Ok(answer))
    }

    /// Brings a lagging replica up to a register known to be chosen (held by a quorum). Applied
    /// only if it is newer than what is accepted here and no higher ballot was promised, exactly
    /// as a late copy of the original accept would be. Returns whether it was applied. Like an
    /// accept, checked against the [ceiling](StoreConfig::ceiling) and a use of the key.
    pub fn repair(&self, key: &str, register: Register) -> Result<bool> {
        validate_key(key)?;
        let (h, mut shard) = self.write(key);
        let at = self.find_touching(&shard, h, key);
        let meta = shard.meta_at(at);
        if register.ballot <= meta.ballot || register.ballot < meta.promised {
            return Ok(false);
        }
        let next = Meta::accepted(&register, meta.promised);
        let limit = self.config.ceiling();
        self.apply(
            &mut shard,
            h,
            key,
            at,
            &next,
            register.value.as_ref(),
            limit,
        )?;
        Ok(true)
    }

    /// Merges a peer's copy of `key` into a replica that is recovering: the higher promise and
    /// the newer accepted register win (between two registers where nothing was accepted, the
    /// higher version). Never refused for the budget (a recovering replica must
    /// hold what its peers hold), nor for the floor: a copy whose ballot is below a floor that
    /// other keys raised is still this key's latest state. The floor's promise is kept in the
    /// merged promise, as a missing key counted as promised at it. Returns whether anything
    /// changed.
    pub fn restore(&self, state: ReplicaState) -> Result<bool> {
        validate_key(&state.key)?;
        let key = state.key.as_str();
        let (h, mut shard) = self.write(key);
        let at = shard.find(h, key.as_bytes());
        let meta = shard.meta_at(at);
        let current = shard.register_at(at);
        let (mut next, register) = if state.register.ballot > meta.ballot {
            let next = Meta::accepted(&state.register, state.register.ballot);
            (next, state.register)
        } else if nothing_accepted(&state.register)
            && nothing_accepted(&current)
            && state.register.version > current.version
        {
            // A key only promised took its version from its shard's floor when it was promised;
            // the higher of two such versions is the one that keeps the key's versions from
            // repeating, whichever replica it comes from.
            let next = Meta {
                version: state.register.version,
                ..meta
            };
            (next, state.register)
        } else {
            (meta, current)
        };
        next.promised = next.promised.max(meta.promised).max(state.promised);
        if next == meta {
            return Ok(false);
        }
        self.apply(&mut shard, h, key, at, &next, register.value.as_ref(), None)?;
        Ok(true)
    }

    /// Drops `key`'s record, whatever it holds: how a node forgets a key it no longer
    /// replicates (after a membership change moved it elsewhere), or an old copy of a key it is
    /// about to copy afresh. Its shard's floor rises to the record's promise and version, as
    /// for a collected key, so a copy of the key's state from before (a late repair) cannot
    /// take its place. Returns whether there was a record.
    pub fn forget(&self, key: &str) -> bool {
        let (h, mut shard) = self.write(key);
        let Some(at) = shard.find(h, key.as_bytes()) else {
            return false;
        };
        let meta = shard.record(at).meta();
        self.remove(&mut shard, h, key, at);
        shard.raise_floor(Floor {
            promised: meta.promised,
            version: meta.version,
        });
        true
    }

    /// Removes `key`'s record if it is a tombstone accepted with exactly `ballot`, raising its
    /// shard's floor to at least the record's promise and version; returns whether it removed.
    ///
    /// The caller (the replication protocol) calls it once every replica of the key holds that
    /// tombstone, so that no replica keeps a state another could copy back. The record's promise
    /// goes into the floor, so collecting is safe even if a higher ballot was promised since:
    /// that proposal's accept is still taken, and a prepare at or below it still refused. The
    /// record's bytes are no longer charged to [`used_bytes`](Store::used_bytes); its arena space
    /// is reclaimed by compaction.
    pub fn collect(&self, key: &str, ballot: Ballot) -> Result<bool> {
        validate_key(key)?;
        let (h, mut shard) = self.write(key);
        let Some(at) = shard.find(h, key.as_bytes()) else {
            return Ok(false);
        };
        let record = shard.record(at);
        let meta = record.meta();
        if record.has_value() || meta.ballot != ballot {
            return Ok(false);
        }
        self.remove(&mut shard, h, key, at);
        shard.raise_floor(Floor {
            promised: meta.promised,
            version: meta.version,
        });
        Ok(true)
    }

    /// The floor of shard `shard` (0..[`Store::SHARDS`]); the default, lowest floor for an index
    /// out of range.
    pub fn floor(&self, shard: usize) -> Floor {
        self.shards.get(shard).map_or_else(Floor::default, |s| {
            s.0.read().unwrap_or_else(|p| p.into_inner()).floor()
        })
    }

    /// Raises the floor of shard `shard` to at least `floor`, field by field: how a catching-up
    /// replica takes a peer's floors. An index out of range changes nothing.
    pub fn raise_floor(&self, shard: usize, floor: Floor) {
        if let Some(s) = self.shards.get(shard) {
            s.0.write()
                .unwrap_or_else(|p| p.into_inner())
                .raise_floor(floor);
        }
    }

    /// One page of the full state of shard `shard`'s keys: those after `after` (in byte order;
    /// from the first if `None`) that `filter` accepts, in key order, tombstones and
    /// promise-only keys included. The page holds as many as fit in `max_bytes`, counting each
    /// item's key and value bytes and [`PAGE_ITEM_OVERHEAD`], but at least one if any remain, so
    /// a single item may be larger. Pass [`Page::next`] as `after` to get the next page. A shard
    /// index out of range gives an empty page.
    ///
    /// A page's size depends on `max_bytes`, not on how much the shard holds, so the reply to
    /// a catch-up request stays bounded however large the store grows.
    pub fn scan_page(
        &self,
        shard: usize,
        after: Option<&str>,
        max_bytes: usize,
        filter: impl FnMut(&str) -> bool,
    ) -> Page<ReplicaState> {
        let Some(shard) = self.shards.get(shard) else {
            return Page::default();
        };
        let shard = shard.0.read().unwrap_or_else(|p| p.into_inner());
        shard.page(
            after,
            max_bytes,
            filter,
            |r| page_bytes(r.key().len(), r.value_len()),
            |r| ReplicaState {
                key: r.key_str().to_owned(),
                promised: r.meta().promised,
                register: r.register(),
            },
        )
    }

    /// Like [`scan_page`](Store::scan_page), but each item is only the key and its accepted
    /// ballot, and counts as its key bytes and [`PAGE_ITEM_OVERHEAD`]: what replicas compare to
    /// find the keys they disagree on.
    pub fn ballots_page(
        &self,
        shard: usize,
        after: Option<&str>,
        max_bytes: usize,
        filter: impl FnMut(&str) -> bool,
    ) -> Page<(String, Ballot)> {
        let Some(shard) = self.shards.get(shard) else {
            return Page::default();
        };
        let shard = shard.0.read().unwrap_or_else(|p| p.into_inner());
        shard.page(
            after,
            max_bytes,
            filter,
            |r| page_bytes(r.key().len(), 0),
            |r| (r.key_str().to_owned(), r.meta().ballot),
        )
    }

    /// Up to `max` keys of shard `shard` whose value expired at or before `now_ms` and that
    /// `keep` accepts: what a background sweep removes (through
    /// a replicated round; the store never drops a value because of its expiry time). Walks the
    /// shard under its read lock, so a sweep goes one shard at a time; a shard with no value
    /// that expires is not walked at all, so a store without expiry times costs a sweep nothing.
    pub fn expired(
        &self,
        shard: usize,
        now_ms: u64,
        max: usize,
        mut keep: impl FnMut(&str) -> bool,
    ) -> Vec<String> {
        let Some(shard) = self.shards.get(shard) else {
            return Vec::new();
        };
        let shard = shard.0.read().unwrap_or_else(|p| p.into_inner());
        if shard.expiring() == 0 {
            return Vec::new();
        }
        shard
            .records()
            .filter(|r| r.has_value() && r.expires().is_some_and(|at| at <= now_ms))
            .filter(|r| keep(r.key_str()))
            .take(max)
            .map(|r| r.key_str().to_owned())
            .collect()
    }

    /// Number of keys holding a value with an expiry time (expired or not).
    pub fn expiring(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.0.read().unwrap_or_else(|p| p.into_inner()).expiring())
            .sum()
    }

    /// Up to `limit` keys that hold a live value at `now_ms` (one without an expiry time, or
    /// expiring after `now_ms`), start with `prefix` and that `filter` accepts, in scan order:
    /// by shard ([`Store::shard_of`]), then by key bytes within a shard. The walk starts after
    /// `after` (a shard and a key in it) or, if `None`, at the start of shard 0. Returns the keys
    /// with their shards, and whether more such keys follow the last one. Tombstones and
    /// promise-only keys are not listed; an `after` shard out of range lists nothing.
    ///
    /// Scan order depends only on the keys, so the same `after` resumes a walk on any node, and
    /// the walk of a cluster can go from node to node. No value is copied; each shard's read lock
    /// is held only while that shard is walked, and `filter` runs under it.
    pub fn live_keys_after(
        &self,
        after: Option<(usize, &str)>,
        prefix: &str,
        limit: usize,
        now_ms: u64,
        mut filter: impl FnMut(&str) -> bool,
    ) -> (Vec<(usize, String)>, bool) {
        let mut keys = Vec::new();
        let first = after.map_or(0, |(shard, _)| shard);
        // One key past the limit tells whether more follow.
        let wanted = limit.saturating_add(1);
        for index in first..SHARDS {
            let after_key = after.and_then(|(shard, key)| (shard == index).then_some(key));
            let shard = self.shards[index]
                .0
                .read()
                .unwrap_or_else(|p| p.into_inner());
            let live = shard
                .in_key_order(after_key, |key| key.starts_with(prefix.as_bytes()))
                .filter(|r| r.has_value() && r.expires().is_none_or(|at| at > now_ms))
                .filter(|r| filter(r.key_str()))
                .take(wanted - keys.len())
                .map(|r| (index, r.key_str().to_owned()));
            keys.extend(live);
            if keys.len() == wanted {
                keys.pop();
                return (keys, true);
            }
        }
        (keys, false)
    }

    /// Number of shards, for [`shard_of`](Store::shard_of), [`scan_page`](Store::scan_page) and
    /// [`floor`](Store::floor).
    pub const SHARDS: usize = SHARDS;
}

/// # Eviction
///
/// The store keeps an access word per key (see [`Eviction`]) and offers samples of its keys
/// ranked by it; the caller evicts (a replicated node through a round, so replicas agree). What
/// counts as a use of a key: [`get`](Store::get), [`put`](Store::put),
/// [`read_register`](Store::read_register), [`accept`](Store::accept),
/// [`propose_alone`](Store::propose_alone) and [`repair`](Store::repair). Background reads
/// ([`register`](Store::register), [`scan_page`](Store::scan_page)) and prepares do not count.
impl Store {
    /// Advances the clock that stamps uses of keys to the time now (it has a resolution of
    /// [`TICK`]). Uses are stamped with the clock as of the last tick, so that a read does not
    /// ask the OS for the time; [`sample`](Store::sample) ticks too, and whoever evicts should
    /// tick about every [`TICK`] between samples.
    pub fn tick(&self) {
        self.access.tick();
    }

    /// Offers to `pool` up to `n` keys of shard `shard` that hold a value and that `keep`
    /// accepts, each with its version and [score](Candidate::score): a run of neighbours in the
    /// shard's table, from the `from`th key on (modulo the shard's size). A caller picks `from`
    /// at random; the table's order is that of the keys' hashes, so the run is a random sample.
    /// Looks at no more than `4 n` keys, and at none with no policy set. Returns how many it
    /// offered.
    pub fn sample(
        &self,
        shard: usize,
        from: usize,
        n: usize,
        mut keep: impl FnMut(&str) -> bool,
        pool: &mut EvictionPool,
    ) -> usize {
        if !self.config.eviction.evicts() {
            return 0;
        }
        let Some(shard) = self.shards.get(shard) else {
            return 0;
        };
        self.access.tick();
        let shard = shard.0.read().unwrap_or_else(|p| p.into_inner());
        let candidates = shard
            .sample(from, n.saturating_mul(4))
            .filter(|(r, _)| r.has_value() && keep(r.key_str()))
            .take(n)
            .map(|(r, word)| Candidate {
                key: r.key_str().to_owned(),
                version: r.version(),
                score: self.access.score(word),
                bytes: charge(r.key_str(), r.value_len()),
            });
        let mut offered = 0;
        for candidate in candidates {
            pool.offer(candidate);
            offered += 1;
        }
        offered
    }

    /// `key` as a candidate for eviction now: its version and current score, if it holds a
    /// value. How a caller checks a candidate sampled a while ago before evicting it.
    pub fn candidate(&self, key: &str) -> Option<Candidate> {
        let (h, shard) = self.locate(key);
        let shard = shard.read().unwrap_or_else(|poison| poison.into_inner());
        let slot = shard.slot(h, key.as_bytes())?;
        let record = shard.record(slot.at());
        record.has_value().then(|| Candidate {
            key: key.to_owned(),
            version: record.version(),
            score: self.access.score(slot.access().load(Ordering::Relaxed)),
            bytes: charge(key, record.value_len()),
        })
    }

    /// Moves the access clock on by `ticks`, for tests of aging.
    #[cfg(test)]
    fn advance_clock(&self, ticks: u32) {
        self.access.advance(ticks);
    }
}

/// # Inspection
///
/// Counts and walks over the whole store, for either API.
impl Store {
    /// Number of keys that hold a value (tombstones and promise-only keys are not counted).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.0.read().unwrap_or_else(|p| p.into_inner()).values())
            .sum()
    }

    /// Whether the store holds no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A counter that moves whenever anything in the store changes, so a background task can
    /// tell that nothing happened since it last looked.
    pub fn changes(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.read().unwrap_or_else(|p| p.into_inner()).changes())
            .sum()
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
        self.visit(|r| {
            if let Some(entry) = r.entry() {
                f(r.key_str(), &entry);
            }
        });
    }

    /// Calls `f` with every key and its register, tombstones and promise-only keys included
    /// (their register has no value), one shard at a time like [`for_each`](Store::for_each).
    pub fn for_each_register(&self, mut f: impl FnMut(&str, &Register)) {
        self.visit(|r| f(r.key_str(), &r.register()));
    }
}

impl Store {
    /// The key's hash in its shard's table and its shard. Two hashes: the shard must be the
    /// same on every node ([`shard_of`](Store::shard_of)), while the table's hash is seeded at
    /// random per process, so that keys chosen to collide cannot make one shard's lookups slow.
    #[inline]
    fn locate(&self, key: &str) -> (u64, &RwLock<Shard>) {
        let h = hash_key(&self.hasher, key.as_bytes());
        (h, &self.shards[Store::shard_of(key)].0)
    }

    fn write(&self, key: &str) -> (u64, RwLockWriteGuard<'_, Shard>) {
        let (h, shard) = self.locate(key);
        // A panic while holding the lock cannot leave a record half-written (a record is encoded
        // after every check, and the table updated before), so a poisoned lock is safe to use.
        (
            h,
            shard.write().unwrap_or_else(|poison| poison.into_inner()),
        )
    }

    #[inline]
    fn read<T>(&self, key: &str, f: impl FnOnce(&Shard, Option<u32>) -> T) -> T {
        let (h, shard) = self.locate(key);
        let shard = shard.read().unwrap_or_else(|poison| poison.into_inner());
        f(&shard, shard.find(h, key.as_bytes()))
    }

    /// [`read`](Store::read), recording a use of the key.
    #[inline]
    fn read_touching<T>(&self, key: &str, f: impl FnOnce(&Shard, Option<u32>) -> T) -> T {
        let (h, shard) = self.locate(key);
        let shard = shard.read().unwrap_or_else(|poison| poison.into_inner());
        let at = self.find_touching(&shard, h, key);
        f(&shard, at)
    }

    /// The offset of `key`'s record in `shard`, recording a use of the key. Under either lock:
    /// the access word is atomic.
    #[inline]
    fn find_touching(&self, shard: &Shard, h: u64, key: &str) -> Option<u32> {
        let slot = shard.slot(h, key.as_bytes())?;
        self.access.touch(slot.access());
        Some(slot.at())
    }

    fn visit(&self, mut f: impl FnMut(Record<'_>)) {
        for shard in self.shards.iter() {
            let shard = shard.0.read().unwrap_or_else(|p| p.into_inner());
            shard.records().for_each(&mut f);
        }
    }

    /// Removes `key`'s record (at `at`) under its shard's write lock, and its charge.
    fn remove(&self, shard: &mut Shard, h: u64, key: &str, at: u32) {
        let charged = charge(key, shard.record(at).value_len());
        self.used.fetch_sub(charged, Ordering::Relaxed);
        shard.remove(&self.hasher, h, at);
    }

    /// Replaces `key`'s record (at `at`, or none yet) under its shard's write lock, charging the
    /// difference in footprint. A growth that would take the total past `limit` is refused;
    /// with no limit the record is stored regardless (the caller checked room earlier, or must
    /// not refuse). Nothing changes if it fails.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &self,
        shard: &mut Shard,
        h: u64,
        key: &str,
        at: Option<u32>,
        meta: &Meta,
        value: Option<&Value>,
        limit: Option<u64>,
    ) -> Result<()> {
        let value_len = value.map_or(0, Value::len);
        // Only `restore` takes values unchecked against the limits; a record has 32 bits for
        // the value's length.
        if u32::try_from(value_len).is_err() {
            return Err(Error::ValueTooLarge {
                size: value_len,
                limit: u32::MAX as usize,
            });
        }
        let old = at.map_or(0, |at| charge(key, shard.record(at).value_len()));
        let new = charge(key, value_len);
        // Same-size writes, the common case, leave the shared counter alone.
        if new > old {
            self.reserve(new - old, limit)?;
        } else if new < old {
            self.used.fetch_sub(old - new, Ordering::Relaxed);
        }
        let value = value.map(|v| (v.encoding(), &v.as_bytes()[..]));
        let access = self.access.initial();
        if let Err(full) = shard.write(&self.hasher, h, key.as_bytes(), at, meta, value, access) {
            if new > old {
                self.used.fetch_sub(new - old, Ordering::Relaxed);
            } else {
                self.used.fetch_add(old - new, Ordering::Relaxed);
            }
            // A shard's records are addressed with 32 bits; only a shard holding 4 GiB (a store
            // of a terabyte) gets here, and then even without a budget.
            return Err(Error::MemoryFull {
                needed: full.needed as u64,
                available: full.available as u64,
                max_memory: u64::from(u32::MAX),
            });
        }
        Ok(())
    }

    /// Charges `bytes` unless that takes the total past `limit`, or fails without charging
    /// anything.
    fn reserve(&self, bytes: u64, limit: Option<u64>) -> Result<()> {
        let Some(limit) = limit else {
            self.used.fetch_add(bytes, Ordering::Relaxed);
            return Ok(());
        };
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&total| total <= limit)
            })
            .map(drop)
            .map_err(|used| full(bytes, used, limit))
    }
}

/// Whether `bytes` more fit under `limit` with `used` charged already.
fn check_room(used: u64, bytes: u64, limit: Option<u64>) -> Result<()> {
    match limit {
        Some(limit) if used.saturating_add(bytes) > limit => Err(full(bytes, used, limit)),
        _ => Ok(()),
    }
}

/// The error for `needed` bytes that do not fit under `limit` with `used` charged.
fn full(needed: u64, used: u64, limit: u64) -> Error {
    Error::MemoryFull {
        needed,
        available: limit.saturating_sub(used),
        max_memory: limit,
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
    charge(key, value.len())
}

/// Bytes an entry of `key` with `value_len` value bytes is charged. Saturating, as `value_len`
/// may be a peer's claim (a prepare's `grow`) rather than a length.
pub fn charge(key: &str, value_len: usize) -> u64 {
    (key.len() as u64)
        .saturating_add(value_len as u64)
        .saturating_add(ENTRY_OVERHEAD)
}

/// Whether nothing was ever accepted into `register`: a missing or only promised key.
fn nothing_accepted(register: &Register) -> bool {
    register.ballot.is_zero() && register.value.is_none()
}

/// What an item of a page counts against its byte budget.
fn page_bytes(key_len: usize, value_len: usize) -> usize {
    key_len
        .saturating_add(value_len)
        .saturating_add(PAGE_ITEM_OVERHEAD)
}

/// The error for a write that would take `key`'s version past [`Version::MAX`]. Only a peer
/// sending versions near the end can bring a key there; the key cannot be written again.
fn exhausted(key: &str) -> Error {
    Error::InvalidKey {
        reason: format!(
            "key {key:?} has used up its versions (the last is {})",
            u64::MAX
        ),
    }
}

#[cfg(test)]
mod tests;
