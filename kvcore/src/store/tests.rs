use super::*;
use crate::key::MAX_KEY_BYTES;
use crate::NodeId;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

fn store_with_budget(max: u64) -> Store {
    Store::new(StoreConfig {
        max_memory: Some(max),
        ..Default::default()
    })
}

fn ballot(round: u64, node: u32) -> Ballot {
    Ballot::new(round, NodeId(node))
}

fn reg(b: Ballot, version: u64, v: Option<i64>) -> Register {
    Register {
        ballot: b,
        version: Version(version),
        value: v.map(Value::integer),
        expires: None,
    }
}

fn state(key: &str, promised: Ballot, register: Register) -> ReplicaState {
    ReplicaState {
        key: key.into(),
        promised,
        register,
    }
}

fn scan_all(s: &Store) -> Vec<ReplicaState> {
    let mut all: Vec<_> = (0..Store::SHARDS)
        .flat_map(|i| s.scan_page(i, None, usize::MAX, |_| true).items)
        .collect();
    all.sort_by(|a, b| a.key.cmp(&b.key));
    all
}

/// What `used_bytes` must be: every record's key, value and overhead, tombstones included.
fn recount(s: &Store) -> u64 {
    let mut total = 0;
    s.for_each_register(|key, r| total += charge(key, r.value_len()));
    total
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
fn a_deleted_key_written_again_continues_its_versions() {
    let s = Store::new(StoreConfig::default());
    s.set("k", Value::integer(1)).unwrap();
    s.set("k", Value::integer(2)).unwrap();
    assert_eq!(s.delete("k").unwrap().version, Version(2));
    // The tombstone is version 3: an `if_version` read before the delete cannot match.
    assert_eq!(s.register("k"), reg(Ballot::ZERO, 3, None));
    let stale = s
        .put("k", Value::integer(9), Precondition::IfVersion(Version(2)))
        .unwrap();
    assert_eq!(stale, Err(Conflict { current: None }));
    assert_eq!(
        s.put("k", Value::integer(3), Precondition::IfAbsent)
            .unwrap(),
        Ok(Version(4))
    );
    assert_eq!(s.get("k").unwrap().version, Version(4));
    // Deleting a tombstone changes nothing.
    s.delete("k");
    let changes = s.changes();
    assert_eq!(s.delete("k"), None);
    assert_eq!(s.register("k").version, Version(5));
    assert_eq!(s.changes(), changes);
}

#[test]
fn a_delete_removes_the_key_and_keeps_its_promise_and_version_in_the_floor() {
    let s = Store::new(StoreConfig::default());
    s.accept("k", reg(ballot(4, 1), 7, Some(1)))
        .unwrap()
        .unwrap();
    s.prepare("k", ballot(6, 2), 0).unwrap().unwrap();
    s.delete("k").unwrap();
    assert_eq!(scan_all(&s), vec![]);
    assert_eq!(
        s.floor(Store::shard_of("k")),
        Floor {
            promised: ballot(6, 2),
            version: Version(8)
        }
    );
    assert_eq!(s.register("k"), reg(Ballot::ZERO, 8, None));
    assert_eq!(s.prepare("k", ballot(5, 0), 0).unwrap(), Err(ballot(6, 2)));
    assert_eq!(s.used_bytes(), 0);
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
    // A deleted key costs nothing.
    s.delete("abc");
    s.delete("de");
    assert_eq!(s.used_bytes(), 0);
    assert_eq!(s.len(), 0);
    s.set("de", Value::string("xy")).unwrap();
    assert_eq!(s.used_bytes(), 2 + 2 + ENTRY_OVERHEAD);
    assert_eq!(s.used_bytes(), recount(&s));
    assert_eq!(s.len(), 1);
    // An acceptor's tombstone keeps its key and overhead until it is collected.
    s.accept("t", reg(ballot(1, 0), 1, None)).unwrap().unwrap();
    assert_eq!(s.used_bytes(), 2 + 2 + 1 + 2 * ENTRY_OVERHEAD);
    assert!(s.collect("t", ballot(1, 0)).unwrap());
    assert_eq!(s.used_bytes(), 2 + 2 + ENTRY_OVERHEAD);
}

#[test]
fn a_promise_costs_its_key_and_the_overhead_until_a_value_is_accepted() {
    let s = Store::new(StoreConfig::default());
    assert_eq!(
        s.prepare("key", ballot(1, 0), 100).unwrap(),
        Ok(Register::default())
    );
    assert_eq!(s.used_bytes(), 3 + ENTRY_OVERHEAD);
    assert_eq!((s.len(), s.get("key")), (0, None));
    assert_eq!(
        scan_all(&s),
        vec![state("key", ballot(1, 0), Register::default())]
    );
    s.accept("key", reg(ballot(1, 0), 1, Some(5)))
        .unwrap()
        .unwrap();
    assert_eq!(s.used_bytes(), 3 + 8 + ENTRY_OVERHEAD);
    assert_eq!(s.len(), 1);
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
    // The deleted entry's bytes are all free again.
    assert_eq!(s.used_bytes(), budget - 8 - (ENTRY_OVERHEAD + 10));
    s.set("k3", Value::string("12345678")).unwrap();
    assert_eq!(s.used_bytes(), budget - 8);
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
fn an_accept_can_promise_the_next_ballot_in_the_same_step() {
    let s = Store::new(StoreConfig::default());
    let (b1, b2, b3) = (ballot(1, 0), ballot(2, 0), ballot(3, 0));
    assert_eq!(
        s.accept_promising("k", reg(b1, 1, Some(5)), b2).unwrap(),
        Ok(())
    );
    // The promise of b2 holds: lower ballots are refused, b2 itself is accepted without a
    // prepare, and it can promise the next one again.
    assert_eq!(s.prepare("k", b1, 0).unwrap(), Err(b2));
    assert_eq!(scan_all(&s), vec![state("k", b2, reg(b1, 1, Some(5)))]);
    let used = s.used_bytes();
    assert_eq!(
        s.accept_promising("k", reg(b2, 2, Some(6)), b3).unwrap(),
        Ok(())
    );
    assert_eq!(s.used_bytes(), used, "the record keeps its size");
    assert_eq!(scan_all(&s), vec![state("k", b3, reg(b2, 2, Some(6)))]);
    // A higher promise from another proposer wins over the kept one.
    let other = ballot(9, 1);
    assert_eq!(s.prepare("k", other, 0).unwrap(), Ok(reg(b2, 2, Some(6))));
    assert_eq!(
        s.accept_promising("k", reg(b3, 3, Some(7)), ballot(4, 0))
            .unwrap(),
        Err(other)
    );
    assert_eq!(recount(&s), s.used_bytes());
}

#[test]
fn a_round_by_the_only_replica_takes_one_step() {
    let s = store_with_budget(ENTRY_OVERHEAD + 1 + 8);
    let incr = |by: i64| {
        move |current: &Register| {
            let n = current.value.as_ref().and_then(Value::as_i64).unwrap_or(0) + by;
            let next = Register {
                ballot: Ballot::ZERO,
                version: current.version.next(),
                value: Some(Value::integer(n)),
                expires: None,
            };
            (Some(next), n)
        }
    };
    assert_eq!(s.propose_alone("k", ballot(1, 0), incr(2)).unwrap(), Ok(2));
    assert_eq!(s.propose_alone("k", ballot(2, 0), incr(3)).unwrap(), Ok(5));
    assert_eq!(s.register("k"), reg(ballot(2, 0), 2, Some(5)));
    // Lower ballots are refused, and a round that changes nothing writes nothing.
    assert_eq!(
        s.propose_alone("k", ballot(1, 0), incr(1)).unwrap(),
        Err(ballot(2, 0))
    );
    let read = s
        .propose_alone("k", ballot(3, 0), |r: &Register| (None, r.version))
        .unwrap();
    assert_eq!(read, Ok(Version(2)));
    assert_eq!(
        scan_all(&s),
        vec![state("k", ballot(2, 0), reg(ballot(2, 0), 2, Some(5)))]
    );
    // The budget holds: a second key does not fit.
    let e = s.propose_alone("j", ballot(4, 0), incr(1)).unwrap_err();
    assert_eq!(e.code(), "memory_full");
    assert_eq!(s.get("j"), None);
    assert_eq!(recount(&s), s.used_bytes());
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
    assert!(!s
        .restore(state("k", ballot(1, 0), reg(ballot(1, 0), 9, Some(9))))
        .unwrap());
    assert!(s
        .restore(state("k", ballot(9, 2), reg(ballot(6, 2), 2, Some(2))))
        .unwrap());
    assert_eq!(s.register("k"), reg(ballot(6, 2), 2, Some(2)));
    assert_eq!(s.prepare("k", ballot(8, 0), 0).unwrap(), Err(ballot(9, 2)));
    assert_eq!(
        scan_all(&s),
        vec![state("k", ballot(9, 2), reg(ballot(6, 2), 2, Some(2)))]
    );
}

#[test]
fn restore_is_never_refused_for_the_budget() {
    let s = store_with_budget(ENTRY_OVERHEAD);
    let big = Register {
        ballot: ballot(1, 1),
        version: Version(1),
        value: Some(Value::string("x".repeat(1000))),
        expires: None,
    };
    assert!(s.restore(state("key", ballot(1, 1), big.clone())).unwrap());
    assert_eq!(s.register("key"), big);
    assert_eq!(s.used_bytes(), 3 + 1000 + ENTRY_OVERHEAD);
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
    let long = "k".repeat(MAX_KEY_BYTES + 1);
    assert_eq!(
        s.prepare(&long, ballot(1, 0), 0).unwrap_err().code(),
        "invalid_key"
    );
    assert!(s.is_empty());
    assert_eq!(s.used_bytes(), 0);
    assert_eq!(s.changes(), 0);
}

#[test]
fn the_longest_keys_and_largest_values_round_trip() {
    let s = Store::new(StoreConfig::default());
    let key = "я".repeat(MAX_KEY_BYTES / 2);
    let value = Value::binary(vec![0xab; crate::key::DEFAULT_MAX_VALUE_BYTES]);
    s.set(&key, value.clone()).unwrap();
    assert_eq!(s.get(&key).unwrap().value, value);
    let r = Register {
        ballot: ballot(3, 4),
        version: Version(2),
        value: Some(value.clone()),
        expires: Some(1_700_000_000_000),
    };
    s.accept(&key, r.clone()).unwrap().unwrap();
    assert_eq!(s.register(&key), r);
    assert_eq!(scan_all(&s), vec![state(&key, ballot(3, 4), r)]);
    assert_eq!(s.used_bytes(), footprint(&key, &value));
    let mut seen = Vec::new();
    s.for_each(|k, e| seen.push((k.to_owned(), e.clone())));
    assert_eq!(
        seen,
        vec![(
            key.clone(),
            Entry {
                value,
                version: Version(2),
                expires: Some(1_700_000_000_000),
            }
        )]
    );
}

#[test]
fn walks_see_every_key_once() {
    let s = Store::new(StoreConfig::default());
    for i in 0..2000 {
        s.set(&format!("key{i}"), Value::integer(i)).unwrap();
    }
    s.delete("key7");
    s.prepare("promised", ballot(1, 0), 0).unwrap().unwrap();
    let mut entries = 0;
    s.for_each(|_, _| entries += 1);
    let mut registers = 0;
    s.for_each_register(|_, _| registers += 1);
    let mut ballots = Vec::new();
    s.for_each_register(|k, r| ballots.push((k.to_owned(), r.ballot)));
    assert_eq!((entries, registers, ballots.len()), (1999, 2000, 2000));
    assert_eq!(scan_all(&s).len(), 2000);
    assert_eq!(s.len(), 1999);
    assert!(ballots.contains(&("promised".to_owned(), Ballot::ZERO)));
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

#[test]
fn concurrent_compare_and_set_loses_no_increment() {
    let s = Arc::new(Store::new(StoreConfig::default()));
    let keys = ["a", "b", "c"];
    for k in keys {
        s.set(k, Value::integer(0)).unwrap();
    }
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut won = 0;
                for i in 0..3000 {
                    let key = keys[(i + t) % keys.len()];
                    let e = s.get(key).unwrap();
                    // Values of several sizes, so records move and arenas get compacted while
                    // other threads read.
                    let n = e.value.as_i64().unwrap_or_else(|| {
                        e.value
                            .as_str()
                            .unwrap()
                            .split(':')
                            .next()
                            .unwrap()
                            .parse()
                            .unwrap()
                    });
                    let next = if i % 2 == 0 {
                        Value::integer(n + 1)
                    } else {
                        Value::string(format!("{}:{}", n + 1, "x".repeat(i % 50)))
                    };
                    if s.put(key, next, Precondition::IfVersion(e.version))
                        .unwrap()
                        .is_ok()
                    {
                        won += 1;
                    }
                }
                won
            })
        })
        .collect();
    let won: i64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let total: i64 = keys
        .iter()
        .map(|k| {
            let e = s.get(k).unwrap();
            let n = e.value.as_i64().unwrap_or_else(|| {
                e.value
                    .as_str()
                    .unwrap()
                    .split(':')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            });
            assert_eq!(e.version, Version(n as u64 + 1));
            n
        })
        .sum();
    assert_eq!(total, won);
    assert_eq!(s.used_bytes(), recount(&s));
}

#[test]
fn concurrent_acceptors_keep_accounting_exact() {
    let s = Arc::new(Store::new(StoreConfig::default()));
    let handles: Vec<_> = (0..4u32)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..2000u64 {
                    let key = format!("key{}", i % 37);
                    let b = ballot(i + 1, t);
                    match i % 5 {
                        0 => {
                            s.delete(&key);
                        }
                        1 => {
                            s.set(&key, Value::string("v".repeat((i % 70) as usize)))
                                .unwrap();
                        }
                        _ => {
                            if let Ok(Ok(current)) = s.prepare(&key, b, 8) {
                                let value = (i % 3 != 0).then(|| Value::integer(i as i64));
                                let next = reg(b, current.version.0 + 1, None);
                                let next = Register { value, ..next };
                                // Another thread may have promised higher meanwhile.
                                let _ = s.accept(&key, next).unwrap();
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(s.used_bytes(), recount(&s));
    let mut with_values = 0;
    s.for_each(|_, _| with_values += 1);
    assert_eq!(s.len(), with_values);
}

/// The acceptor and map rules, written out plainly over an ordered map: what the store must do.
#[derive(Default)]
struct Model {
    keys: BTreeMap<String, (Ballot, Register)>,
    floors: BTreeMap<usize, Floor>,
    max: Option<u64>,
}

impl Model {
    fn used(&self) -> u64 {
        self.keys
            .iter()
            .map(|(k, (_, r))| charge(k, r.value_len()))
            .sum()
    }

    fn fits(&self, key: &str, value_len: usize) -> bool {
        let before = self
            .keys
            .get(key)
            .map_or(0, |(_, r)| charge(key, r.value_len()));
        let after = charge(key, value_len);
        match self.max {
            Some(max) => after <= before || self.used() + (after - before) <= max,
            None => true,
        }
    }

    fn floor(&self, key: &str) -> Floor {
        self.floors
            .get(&Store::shard_of(key))
            .copied()
            .unwrap_or_default()
    }

    /// The key's promise and register, a missing key's from its shard's floor.
    fn get(&self, key: &str) -> (Ballot, Register) {
        self.keys.get(key).cloned().unwrap_or_else(|| {
            let floor = self.floor(key);
            (floor.promised, reg(Ballot::ZERO, floor.version.0, None))
        })
    }

    fn remove(&mut self, key: &str, floor: Floor) {
        self.keys.remove(key);
        let shard = self.floors.entry(Store::shard_of(key)).or_default();
        *shard = shard.join(floor);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Set(usize, Value, Precondition),
    Delete(usize),
    Prepare(usize, Ballot, usize),
    Accept(usize, Register),
    Repair(usize, Register),
    Restore(usize, Ballot, Register),
    /// Collect at this ballot, or at the key's accepted one.
    Collect(usize, Option<Ballot>),
    /// A round by the only replica that writes this value (a tombstone for none) one version up.
    ProposeAlone(usize, Ballot, Option<Value>),
}

/// Keys of very different lengths, up to the longest; three of them share a shard, so that
/// one key's collection raises the floor another key sees.
fn key_name(k: usize) -> String {
    static SAME_SHARD: OnceLock<Vec<String>> = OnceLock::new();
    let same = SAME_SHARD.get_or_init(|| {
        let shard = Store::shard_of("s0");
        (0..)
            .map(|i| format!("s{i}"))
            .filter(|k| Store::shard_of(k) == shard)
            .take(3)
            .collect()
    });
    match k {
        0 => "k".repeat(MAX_KEY_BYTES),
        1..=3 => format!("key{k}{}", "-".repeat(k * 7)),
        k => same[k - 4].clone(),
    }
}

const MODEL_KEYS: usize = 7;

fn any_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::integer),
        "[a-z]{0,80}".prop_map(Value::string),
        any::<bool>().prop_map(Value::boolean),
        (0..3000usize).prop_map(|n| Value::binary(vec![7; n])),
    ]
}

fn any_ballot() -> impl Strategy<Value = Ballot> {
    (0..12u64, 0..3u32).prop_map(|(r, n)| ballot(r, n))
}

fn any_register() -> impl Strategy<Value = Register> {
    (
        any_ballot(),
        0..20u64,
        proptest::option::of(any_value()),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(ballot, v, value, expires)| Register {
            ballot,
            version: Version(v),
            expires: value.as_ref().and(expires),
            value,
        })
}

fn any_op() -> impl Strategy<Value = Op> {
    let key = 0..MODEL_KEYS;
    prop_oneof![
        (key.clone(), any_value(), 0..3u8, 0..6u64).prop_map(|(k, v, p, n)| {
            let p = match p {
                0 => Precondition::None,
                1 => Precondition::IfAbsent,
                _ => Precondition::IfVersion(Version(n)),
            };
            Op::Set(k, v, p)
        }),
        key.clone().prop_map(Op::Delete),
        (key.clone(), any_ballot(), 0..4000usize).prop_map(|(k, b, g)| Op::Prepare(k, b, g)),
        (key.clone(), any_register()).prop_map(|(k, r)| Op::Accept(k, r)),
        (key.clone(), any_register()).prop_map(|(k, r)| Op::Repair(k, r)),
        (key.clone(), any_ballot(), any_register()).prop_map(|(k, b, r)| Op::Restore(k, b, r)),
        (key.clone(), proptest::option::of(any_ballot())).prop_map(|(k, b)| Op::Collect(k, b)),
        (key, any_ballot(), proptest::option::of(any_value()))
            .prop_map(|(k, b, v)| Op::ProposeAlone(k, b, v)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Every operation answers as the plain model does, and after each one the byte count, the
    /// key count and every key's full state agree with it; missing keys answer from their
    /// shard's floor.
    #[test]
    fn the_store_behaves_like_the_model(
        ops in proptest::collection::vec(any_op(), 1..120),
        budget in proptest::option::of(0..20_000u64),
    ) {
        let s = Store::new(StoreConfig { max_memory: budget, ..Default::default() });
        let mut m = Model { max: budget, ..Model::default() };
        for op in ops {
            match op {
                Op::Set(k, value, pre) => {
                    let key = key_name(k);
                    let (promised, mut r) = m.get(&key);
                    let current = r.entry();
                    let got = s.put(&key, value.clone(), pre);
                    if !pre.holds(current.as_ref()) {
                        prop_assert_eq!(got, Ok(Err(Conflict { current })));
                    } else if !m.fits(&key, value.len()) {
                        prop_assert_eq!(got.unwrap_err().code(), "memory_full");
                    } else {
                        r.version = r.version.next();
                        r.value = Some(value);
                        r.expires = None;
                        prop_assert_eq!(got, Ok(Ok(r.version)));
                        m.keys.insert(key, (promised, r));
                    }
                }
                Op::Delete(k) => {
                    let key = key_name(k);
                    let got = s.delete(&key);
                    let (promised, r) = m.get(&key);
                    if r.value.is_some() {
                        prop_assert_eq!(got, r.entry());
                        m.remove(&key, Floor { promised, version: r.version.next() });
                    } else {
                        prop_assert_eq!(got, None);
                    }
                }
                Op::Prepare(k, b, grow) => {
                    let key = key_name(k);
                    let (promised, r) = m.get(&key);
                    let got = s.prepare(&key, b, grow);
                    if b <= promised {
                        prop_assert_eq!(got, Ok(Err(promised)));
                    } else if !m.fits(&key, r.value_len().max(grow)) {
                        prop_assert_eq!(got.unwrap_err().code(), "memory_full");
                    } else {
                        prop_assert_eq!(got, Ok(Ok(r.clone())));
                        m.keys.insert(key, (b, r));
                    }
                }
                Op::Accept(k, r) => {
                    let key = key_name(k);
                    let (promised, _) = m.get(&key);
                    let got = s.accept(&key, r.clone());
                    if r.ballot < promised {
                        prop_assert_eq!(got, Ok(Err(promised)));
                    } else if !m.fits(&key, r.value_len()) {
                        prop_assert_eq!(got.unwrap_err().code(), "memory_full");
                    } else {
                        prop_assert_eq!(got, Ok(Ok(())));
                        m.keys.insert(key, (r.ballot, r));
                    }
                }
                Op::Repair(k, r) => {
                    let key = key_name(k);
                    let (promised, current) = m.get(&key);
                    let got = s.repair(&key, r.clone());
                    if r.ballot <= current.ballot || r.ballot < promised {
                        prop_assert_eq!(got, Ok(false));
                    } else if !m.fits(&key, r.value_len()) {
                        prop_assert_eq!(got.unwrap_err().code(), "memory_full");
                    } else {
                        prop_assert_eq!(got, Ok(true));
                        m.keys.insert(key, (promised.max(r.ballot), r));
                    }
                }
                Op::Restore(k, p, r) => {
                    let key = key_name(k);
                    let (promised, current) = m.get(&key);
                    let got = s.restore(state(&key, p, r.clone()));
                    let newer = r.ballot > current.ballot;
                    let none = |r: &Register| r.ballot == Ballot::ZERO && r.value.is_none();
                    let later = none(&r) && none(&current) && r.version > current.version;
                    let next = if newer || later { r } else { current };
                    let next_promised = promised.max(p).max(next.ballot);
                    let changed = newer || later || next_promised != promised;
                    prop_assert_eq!(got, Ok(changed));
                    if changed {
                        m.keys.insert(key, (next_promised, next));
                    }
                }
                Op::Collect(k, b) => {
                    let key = key_name(k);
                    let (promised, r) = m.get(&key);
                    let b = b.unwrap_or(r.ballot);
                    let removes = m.keys.contains_key(&key) && r.value.is_none() && r.ballot == b;
                    prop_assert_eq!(s.collect(&key, b), Ok(removes));
                    if removes {
                        m.remove(&key, Floor { promised, version: r.version });
                    }
                }
                Op::ProposeAlone(k, b, value) => {
                    let key = key_name(k);
                    let (promised, current) = m.get(&key);
                    let next = Register { ballot: Ballot::ZERO, version: current.version.next(), value, expires: None };
                    let got = s.propose_alone(&key, b, |r| {
                        assert_eq!(r, &current);
                        (Some(next.clone()), r.version)
                    });
                    if b <= promised {
                        prop_assert_eq!(got, Ok(Err(promised)));
                    } else if next.value.is_none() {
                        prop_assert_eq!(got, Ok(Ok(current.version)));
                        m.remove(&key, Floor { promised: b, version: next.version });
                    } else if !m.fits(&key, next.value_len()) {
                        prop_assert_eq!(got.unwrap_err().code(), "memory_full");
                    } else {
                        prop_assert_eq!(got, Ok(Ok(current.version)));
                        m.keys.insert(key, (b, Register { ballot: b, ..next }));
                    }
                }
            }
            prop_assert_eq!(s.used_bytes(), m.used());
            prop_assert_eq!(s.len(), m.keys.values().filter(|(_, r)| r.value.is_some()).count());
        }
        let expected: Vec<ReplicaState> = m
            .keys
            .iter()
            .map(|(k, (p, r))| state(k, *p, r.clone()))
            .collect();
        prop_assert_eq!(scan_all(&s), expected);
        for k in 0..MODEL_KEYS {
            let key = key_name(k);
            prop_assert_eq!(s.register(&key), m.get(&key).1);
        }
        for shard in 0..Store::SHARDS {
            prop_assert_eq!(s.floor(shard), m.floors.get(&shard).copied().unwrap_or_default());
        }
        if let Some(max) = budget {
            prop_assert!(s.used_bytes() <= max.max(m.used()));
        }
    }
}

/// Keys `prefix0`, `prefix1`, ... that fall in shard `shard`.
fn keys_in_shard(shard: usize, prefix: &str) -> impl Iterator<Item = String> {
    let prefix = prefix.to_owned();
    (0..)
        .map(move |i| format!("{prefix}{i}"))
        .filter(move |k| Store::shard_of(k) == shard)
}

#[test]
fn shard_of_is_pinned_by_golden_values() {
    // These are part of the protocol: replicas compare and copy their keys shard by shard, so
    // every node of every build must agree on them. Change them only with a protocol version.
    let longest = "k".repeat(MAX_KEY_BYTES);
    let golden = [
        ("", 94),
        ("a", 112),
        ("key:000000000001", 39),
        ("user:42", 228),
        ("ключ", 228),
        (&longest, 172),
    ];
    for (key, shard) in golden {
        assert_eq!(Store::shard_of(key), shard, "{key:?}");
    }
    assert!((0..10_000).all(|i| Store::shard_of(&format!("k{i}")) < Store::SHARDS));
}

#[test]
fn keys_in_one_range_of_the_placement_hash_spread_over_every_shard() {
    // What a ring partitioner gives one node: a sixteenth of the placement hash's range.
    let mut per_shard = [0u32; Store::SHARDS];
    let mut n = 0;
    for i in 0..200_000 {
        let key = format!("key:{i:012}");
        if crate::partition::key_hash(key.as_bytes()) >> 60 == 0 {
            per_shard[Store::shard_of(&key)] += 1;
            n += 1;
        }
    }
    let mean = n / Store::SHARDS as u32;
    let (min, max) = (per_shard.iter().min(), per_shard.iter().max());
    assert!(
        *min.unwrap() > mean / 2 && *max.unwrap() < mean * 2,
        "{min:?} {max:?} of {mean}"
    );
}

#[test]
fn a_collected_keys_versions_never_repeat() {
    let s = Store::new(StoreConfig::default());
    s.accept("k", reg(ballot(1, 0), 1, Some(10)))
        .unwrap()
        .unwrap();
    s.accept("k", reg(ballot(2, 0), 2, None)).unwrap().unwrap();
    assert!(s.collect("k", ballot(2, 0)).unwrap());
    assert_eq!(scan_all(&s), vec![]);
    // The key reads as its tombstone did, but with no ballot, as on a replica that never had
    // it; the next proposal continues above the deleted version.
    assert_eq!(s.register("k"), reg(Ballot::ZERO, 2, None));
    assert_eq!(
        s.prepare("k", ballot(3, 1), 8).unwrap(),
        Ok(reg(Ballot::ZERO, 2, None))
    );
    s.accept("k", reg(ballot(3, 1), 3, Some(11)))
        .unwrap()
        .unwrap();
    assert_eq!(s.get("k").unwrap().version, Version(3));
    // The same through the map API: deleted, written again, one version up.
    assert_eq!(s.delete("k").unwrap().version, Version(3));
    assert_eq!(s.set("k", Value::integer(1)).unwrap(), Version(5));
    // A key never written, in a shard whose floor rose, starts above it too.
    let other = keys_in_shard(Store::shard_of("k"), "o").next().unwrap();
    assert_eq!(s.set(&other, Value::integer(1)).unwrap(), Version(5));
}

#[test]
fn collect_removes_only_a_tombstone_of_that_ballot() {
    let s = Store::new(StoreConfig::default());
    s.accept("v", reg(ballot(1, 0), 1, Some(1)))
        .unwrap()
        .unwrap();
    s.accept("t", reg(ballot(2, 0), 2, None)).unwrap().unwrap();
    assert!(!s.collect("v", ballot(1, 0)).unwrap(), "a value");
    assert!(!s.collect("t", ballot(1, 0)).unwrap(), "an older ballot");
    assert!(!s.collect("t", ballot(3, 0)).unwrap(), "a newer ballot");
    assert!(!s.collect("missing", Ballot::ZERO).unwrap());
    assert_eq!(
        s.collect("", ballot(2, 0)).unwrap_err().code(),
        "invalid_key"
    );
    assert_eq!(scan_all(&s).len(), 2);
    assert_eq!(s.floor(Store::shard_of("t")), Floor::default());
    assert!(s.collect("t", ballot(2, 0)).unwrap());
    assert!(!s.collect("t", ballot(2, 0)).unwrap(), "already gone");
    assert_eq!(
        scan_all(&s),
        vec![state("v", ballot(1, 0), reg(ballot(1, 0), 1, Some(1)))]
    );
}

#[test]
fn after_collect_the_deleted_value_cannot_come_back() {
    let s = Store::new(StoreConfig::default());
    let old = reg(ballot(1, 0), 1, Some(7));
    s.accept("k", old.clone()).unwrap().unwrap();
    s.accept("k", reg(ballot(2, 0), 2, None)).unwrap().unwrap();
    // A proposer promised since: collecting keeps its promise.
    s.prepare("k", ballot(5, 1), 0).unwrap().unwrap();
    assert!(s.collect("k", ballot(2, 0)).unwrap());
    let floor = Floor {
        promised: ballot(5, 1),
        version: Version(2),
    };
    assert_eq!(s.floor(Store::shard_of("k")), floor);
    for b in [ballot(1, 0), ballot(2, 0), ballot(5, 1)] {
        assert_eq!(s.prepare("k", b, 0).unwrap(), Err(ballot(5, 1)));
        assert_eq!(
            s.propose_alone("k", b, |r| (Some(r.clone()), ())).unwrap(),
            Err(ballot(5, 1))
        );
    }
    // Stale copies of the deleted value, and of its tombstone, are refused.
    assert_eq!(s.accept("k", old.clone()).unwrap(), Err(ballot(5, 1)));
    assert!(!s.repair("k", old.clone()).unwrap());
    assert!(!s.repair("k", reg(ballot(2, 0), 2, None)).unwrap());
    assert_eq!(s.get("k"), None);
    // Any key of the shard is refused the same way.
    let other = keys_in_shard(Store::shard_of("k"), "o").next().unwrap();
    assert_eq!(
        s.prepare(&other, ballot(4, 0), 0).unwrap(),
        Err(ballot(5, 1))
    );
    // The proposal that was promised completes, above the deleted version.
    assert_eq!(
        s.accept("k", reg(ballot(5, 1), 3, Some(8))).unwrap(),
        Ok(())
    );
    assert_eq!(s.register("k"), reg(ballot(5, 1), 3, Some(8)));
}

#[test]
fn restore_applies_a_copy_below_the_floor_that_other_keys_raised() {
    let s = Store::new(StoreConfig::default());
    let mut same = keys_in_shard(7, "r");
    let (gone, copied) = (same.next().unwrap(), same.next().unwrap());
    s.accept(&gone, reg(ballot(9, 0), 4, None))
        .unwrap()
        .unwrap();
    assert!(s.collect(&gone, ballot(9, 0)).unwrap());
    // A peer's copy of another key, accepted at a lower ballot before the floor rose here.
    let copy = reg(ballot(3, 1), 1, Some(5));
    assert!(s
        .restore(state(&copied, ballot(3, 1), copy.clone()))
        .unwrap());
    assert_eq!(s.register(&copied), copy);
    // The floor's promise holds for it as it did while it was missing.
    assert_eq!(scan_all(&s), vec![state(&copied, ballot(9, 0), copy)]);
    assert_eq!(
        s.prepare(&copied, ballot(8, 0), 0).unwrap(),
        Err(ballot(9, 0))
    );
}

#[test]
fn floors_rise_field_by_field_and_never_fall() {
    let s = Store::new(StoreConfig::default());
    let f = |round, version| Floor {
        promised: ballot(round, 0),
        version: Version(version),
    };
    s.raise_floor(3, f(5, 1));
    s.raise_floor(3, f(2, 7));
    assert_eq!(s.floor(3), f(5, 7));
    s.raise_floor(3, Floor::default());
    assert_eq!(s.floor(3), f(5, 7));
    assert_eq!(s.floor(4), Floor::default());
    assert_eq!(f(1, 9).join(f(4, 2)), f(4, 9));
    // Out of range: nothing to read or raise, and no panic.
    s.raise_floor(Store::SHARDS, f(1, 1));
    assert_eq!(s.floor(Store::SHARDS), Floor::default());
    assert_eq!(s.floor(usize::MAX), Floor::default());
    // A copied floor is what a missing key of the shard answers with.
    let key = keys_in_shard(3, "f").next().unwrap();
    assert_eq!(s.register(&key), reg(Ballot::ZERO, 7, None));
    assert_eq!(s.prepare(&key, ballot(5, 0), 0).unwrap(), Err(ballot(5, 0)));
    assert_eq!(
        s.accept(&key, reg(ballot(4, 9), 8, Some(1))).unwrap(),
        Err(ballot(5, 0))
    );
}

#[test]
fn a_lone_replicas_tombstone_is_removed_at_once() {
    let s = Store::new(StoreConfig::default());
    let write = |value: Option<i64>| {
        move |r: &Register| (Some(reg(Ballot::ZERO, r.version.0 + 1, value)), r.version)
    };
    s.propose_alone("k", ballot(1, 0), write(Some(1)))
        .unwrap()
        .unwrap();
    assert_eq!(
        s.propose_alone("k", ballot(2, 0), write(None)).unwrap(),
        Ok(Version(1))
    );
    assert_eq!((scan_all(&s), s.used_bytes()), (vec![], 0));
    assert_eq!(
        s.floor(Store::shard_of("k")),
        Floor {
            promised: ballot(2, 0),
            version: Version(2)
        }
    );
    assert_eq!(s.register("k"), reg(Ballot::ZERO, 2, None));
    assert_eq!(
        s.propose_alone("k", ballot(3, 0), write(Some(2))).unwrap(),
        Ok(Version(2))
    );
    assert_eq!(s.register("k"), reg(ballot(3, 0), 3, Some(2)));
}

#[test]
fn extreme_versions_ballots_and_sizes_neither_panic_nor_wrap() {
    assert_eq!(Version::MAX.next(), Version::MAX);
    assert_eq!(Version::MAX.checked_next(), None);
    assert_eq!(Version(7).checked_next(), Some(Version(8)));
    let top = Ballot::from_bits(u64::MAX);
    let s = store_with_budget(1 << 20);

    // A key at the last version cannot be written again, through either API.
    s.accept("k", reg(ballot(1, 0), u64::MAX - 1, Some(1)))
        .unwrap()
        .unwrap();
    assert_eq!(s.set("k", Value::integer(2)).unwrap(), Version::MAX);
    let e = s.set("k", Value::integer(3)).unwrap_err();
    assert_eq!(e.code(), "invalid_key");
    assert!(e.to_string().contains("used up its versions"), "{e}");
    let e = s
        .propose_alone("k", ballot(2, 0), |r| {
            (
                Some(Register {
                    version: r.version.next(),
                    ..r.clone()
                }),
                (),
            )
        })
        .unwrap_err();
    assert_eq!(e.code(), "invalid_key");
    assert_eq!(s.get("k").unwrap().value.as_i64(), Some(2));
    // Deleted at the last version, its floor stays there and it stays unwritable.
    assert_eq!(s.delete("k").unwrap().version, Version::MAX);
    assert_eq!(s.floor(Store::shard_of("k")).version, Version::MAX);
    assert_eq!(
        s.set("k", Value::integer(4)).unwrap_err().code(),
        "invalid_key"
    );

    // The highest ballot: promised, accepted, collected into a floor that refuses every prepare.
    assert!(s.prepare("b", top, 0).unwrap().is_ok());
    assert_eq!(s.prepare("b", top, 0).unwrap(), Err(top));
    s.accept("b", reg(top, u64::MAX, None)).unwrap().unwrap();
    assert!(s.collect("b", top).unwrap());
    assert_eq!(s.prepare("b", top, 0).unwrap(), Err(top));
    assert_eq!(s.register("b"), reg(Ballot::ZERO, u64::MAX, None));
    s.raise_floor(
        0,
        Floor {
            promised: top,
            version: Version::MAX,
        },
    );

    // A grow no budget can hold is refused; without a budget it is only a promise.
    let e = s.prepare("g", ballot(1, 0), usize::MAX).unwrap_err();
    assert_eq!(e.code(), "memory_full");
    let unbounded = Store::new(StoreConfig::default());
    assert!(unbounded
        .prepare("g", ballot(1, 0), usize::MAX)
        .unwrap()
        .is_ok());
    assert_eq!(unbounded.used_bytes(), 1 + ENTRY_OVERHEAD);

    // Pages at both ends of the budget.
    let page = s.scan_page(Store::shard_of("k"), None, usize::MAX, |_| true);
    assert_eq!(page.next, None);
    let page = unbounded.scan_page(Store::shard_of("g"), None, 0, |_| true);
    assert_eq!((page.items.len(), page.next), (1, None));
}

#[test]
fn used_bytes_and_memory_return_after_deleting_and_collecting_everything() {
    let s = Store::new(StoreConfig::default());
    let start = s.used_bytes();
    let allocated = |s: &Store| -> usize {
        s.shards
            .iter()
            .map(|p| p.0.read().unwrap().allocated())
            .sum()
    };
    let n = 20_000u64;
    for i in 0..n {
        s.set(&format!("map:{i:08}"), Value::string("v".repeat(32)))
            .unwrap();
        let key = format!("acc:{i:08}");
        let b = ballot(i + 1, 1);
        let current = s.prepare(&key, b, 32).unwrap().unwrap();
        s.accept(&key, reg(b, current.version.0 + 1, Some(i as i64)))
            .unwrap()
            .unwrap();
    }
    let full = allocated(&s);
    // Delete nine in ten: the shards shrink.
    let gone = |i: u64| !i.is_multiple_of(10);
    for i in (0..n).filter(|&i| gone(i)) {
        s.delete(&format!("map:{i:08}")).unwrap();
        let key = format!("acc:{i:08}");
        let b = ballot(n + i + 1, 1);
        let current = s.prepare(&key, b, 0).unwrap().unwrap();
        s.accept(&key, reg(b, current.version.0 + 1, None))
            .unwrap()
            .unwrap();
        assert!(s.collect(&key, b).unwrap());
    }
    assert_eq!(s.used_bytes(), recount(&s));
    let tenth = allocated(&s);
    assert!(tenth * 4 < full, "{tenth} of {full} bytes still allocated");
    // Everything that was left, too: nothing is charged, nothing is allocated.
    for i in (0..n).filter(|&i| !gone(i)) {
        s.delete(&format!("map:{i:08}")).unwrap();
        let key = format!("acc:{i:08}");
        let b = ballot(n + i + 1, 1);
        s.accept(&key, reg(b, 3, None)).unwrap().unwrap();
        assert!(s.collect(&key, b).unwrap());
    }
    assert_eq!((s.used_bytes(), s.len(), scan_all(&s).len()), (start, 0, 0));
    assert_eq!(allocated(&s), 0);
    // And the keys come back above their old versions.
    assert!(s.set("map:00000001", Value::integer(1)).unwrap() > Version(2));
}

#[test]
fn pages_of_empty_missing_and_exhausted_shards_are_empty() {
    let s = Store::new(StoreConfig::default());
    assert_eq!(s.scan_page(0, None, 100, |_| true), Page::default());
    assert_eq!(
        s.ballots_page(Store::SHARDS, None, 100, |_| true),
        Page::default()
    );
    assert_eq!(
        s.scan_page(usize::MAX, Some("x"), 0, |_| true),
        Page::default()
    );
    let key = keys_in_shard(9, "p").next().unwrap();
    s.set(&key, Value::integer(1)).unwrap();
    let page = s.ballots_page(9, None, 0, |_| true);
    assert_eq!(
        page,
        Page {
            items: vec![(key.clone(), Ballot::ZERO)],
            next: None
        }
    );
    assert_eq!(
        s.ballots_page(9, Some(&key), 1000, |_| true),
        Page::default()
    );
    assert_eq!(s.ballots_page(9, None, 1000, |_| false), Page::default());
}

fn page_cost(state: &ReplicaState) -> usize {
    page_bytes(state.key.len(), state.register.value_len())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Paging through a shard with any budgets returns every key that passes the filter exactly
    /// once, in key order, each page within its budget unless it is a single item, and full:
    /// the next page's first item would not have fitted.
    #[test]
    fn pages_return_every_key_once_in_order_within_the_budget(
        items in proptest::collection::vec((0..60usize, 0..900usize, 0..4u8), 0..50),
        budgets in proptest::collection::vec(0..1500usize, 1..6),
        dense in any::<bool>(),
        odd_only in any::<bool>(),
    ) {
        let s = Store::new(StoreConfig::default());
        for (j, (pad, value_len, kind)) in items.into_iter().enumerate() {
            let key = if dense {
                keys_in_shard(7, &format!("d{j}{}-", "x".repeat(pad))).next().unwrap()
            } else {
                format!("k{j}{}", "x".repeat(pad))
            };
            let b = ballot(j as u64 + 1, 0);
            match kind {
                0 | 1 => { s.set(&key, Value::binary(vec![1; value_len])).unwrap(); }
                2 => { s.accept(&key, reg(b, 1, None)).unwrap().unwrap(); }
                _ => { s.prepare(&key, b, 0).unwrap().unwrap(); }
            }
        }
        let filter = |k: &str| !odd_only || k.len() % 2 == 1;
        for shard in 0..Store::SHARDS {
            // The oracle: every record of the shard, read key by key.
            let mut keys = Vec::new();
            s.for_each_register(|k, _| {
                if Store::shard_of(k) == shard && filter(k) {
                    keys.push(k.to_owned());
                }
            });
            keys.sort();
            let expected: Vec<ReplicaState> = keys
                .into_iter()
                .map(|key| ReplicaState {
                    promised: s.promise(&key),
                    register: s.register(&key),
                    key,
                })
                .collect();
            let mut got: Vec<ReplicaState> = Vec::new();
            let mut got_ballots: Vec<(String, Ballot)> = Vec::new();
            let (mut after, mut after_ballots) = (None::<String>, None::<String>);
            for round in 0.. {
                let budget = budgets[round % budgets.len()];
                let page = s.scan_page(shard, after.as_deref(), budget, filter);
                let bytes: usize = page.items.iter().map(page_cost).sum();
                prop_assert!(bytes <= budget || page.items.len() == 1, "{} bytes in {}", bytes, budget);
                if let Some(next) = &page.next {
                    prop_assert_eq!(Some(next), page.items.last().map(|s| &s.key));
                    if let Some(first_left) = expected.get(got.len() + page.items.len()) {
                        prop_assert!(bytes + page_cost(first_left) > budget);
                    }
                }
                prop_assert!(!page.items.is_empty() || page.next.is_none());
                got.extend(page.items);
                after = page.next;
                if after.is_none() { break; }
            }
            for round in 0.. {
                let budget = budgets[round % budgets.len()];
                let page = s.ballots_page(shard, after_ballots.as_deref(), budget, filter);
                let bytes: usize = page.items.iter().map(|(k, _)| page_bytes(k.len(), 0)).sum();
                prop_assert!(bytes <= budget || page.items.len() == 1);
                got_ballots.extend(page.items);
                after_ballots = page.next;
                if after_ballots.is_none() { break; }
            }
            let expected_ballots: Vec<_> = expected.iter().map(|s| (s.key.clone(), s.register.ballot)).collect();
            prop_assert_eq!(got, expected);
            prop_assert_eq!(got_ballots, expected_ballots);
        }
    }
}

fn cache(policy: Eviction, max: Option<u64>) -> Store {
    Store::new(StoreConfig {
        max_memory: max,
        eviction: policy,
        ..Default::default()
    })
}

/// Every key holding a value that `keep` accepts, as candidates, sampled shard by shard.
fn sample_all(s: &Store, keep: impl Fn(&str) -> bool) -> Vec<Candidate> {
    let mut all = Vec::new();
    for shard in 0..Store::SHARDS {
        let mut pool = EvictionPool::new();
        s.sample(shard, 0, EvictionPool::CAPACITY, &keep, &mut pool);
        all.extend(std::iter::from_fn(|| pool.pop()));
    }
    all.sort_by(|a, b| a.key.cmp(&b.key));
    all
}

#[test]
fn lru_candidates_are_ranked_by_the_time_since_their_last_use() {
    let s = cache(Eviction::Lru, None);
    for i in 0..100 {
        s.set(&format!("k{i:03}"), Value::integer(i)).unwrap();
    }
    s.advance_clock(30);
    // Reads through either API and writes are uses; a background read of the register is not.
    for i in 0..10 {
        s.get(&format!("k{i:03}")).unwrap();
    }
    for i in 10..20 {
        s.read_register(&format!("k{i:03}"));
    }
    for i in 20..30 {
        s.set(&format!("k{i:03}"), Value::integer(-i)).unwrap();
    }
    for i in 30..40 {
        s.register(&format!("k{i:03}"));
        s.promise(&format!("k{i:03}"));
    }
    s.advance_clock(5);
    let all = sample_all(&s, |_| true);
    assert_eq!(all.len(), 100);
    for c in &all {
        let i: usize = c.key[1..].parse().unwrap();
        assert_eq!(c.score, if i < 30 { 5 } else { 35 }, "{c:?}");
        let version = if (20..30).contains(&i) { 2 } else { 1 };
        assert_eq!(c.version, Version(version), "{c:?}");
        assert_eq!(s.candidate(&c.key).as_ref(), Some(c));
    }
}

#[test]
fn replicated_writes_and_copies_are_uses_and_prepares_are_not() {
    let s = cache(Eviction::Lru, None);
    let b = ballot(1, 1);
    for key in ["accepted", "repaired", "prepared"] {
        s.prepare(key, b, 8).unwrap().unwrap();
        s.accept(key, reg(b, 1, Some(1))).unwrap().unwrap();
    }
    s.advance_clock(20);
    let b2 = ballot(2, 1);
    s.prepare("accepted", b2, 8).unwrap().unwrap();
    s.accept("accepted", reg(b2, 2, Some(2))).unwrap().unwrap();
    assert!(s.repair("repaired", reg(b2, 2, Some(2))).unwrap());
    s.prepare("prepared", b2, 8).unwrap().unwrap();
    let score = |key: &str| s.candidate(key).unwrap().score;
    assert_eq!(
        (score("accepted"), score("repaired"), score("prepared")),
        (0, 0, 20)
    );
}

#[test]
fn samples_hold_only_values_that_the_filter_keeps() {
    let s = cache(Eviction::Lru, None);
    for i in 0..200 {
        s.set(&format!("k{i:03}"), Value::integer(i)).unwrap();
    }
    // A tombstone and a promise-only key are no candidates.
    let b = ballot(1, 1);
    s.prepare("tomb", b, 0).unwrap().unwrap();
    s.accept("tomb", reg(b, 1, None)).unwrap().unwrap();
    s.prepare("promised", b, 0).unwrap().unwrap();
    s.delete("k000");
    let all = sample_all(&s, |key| !key.ends_with('7'));
    let keys: Vec<&str> = all.iter().map(|c| c.key.as_str()).collect();
    let expected: Vec<String> = (1..200)
        .map(|i| format!("k{i:03}"))
        .filter(|k| !k.ends_with('7'))
        .collect();
    assert_eq!(keys, expected);
    assert_eq!(s.candidate("tomb"), None);
    assert_eq!(s.candidate("k000"), None);
    // A sample from any starting point wraps around the shard; at most `n` are offered.
    let shard = Store::shard_of("k001");
    let mut pool = EvictionPool::new();
    assert_eq!(s.sample(shard, usize::MAX, 2, |_| true, &mut pool), 2);
    assert_eq!(pool.len(), 2);
    // Without a policy, nothing is sampled.
    let plain = Store::new(StoreConfig::default());
    plain.set("k", Value::integer(1)).unwrap();
    let mut pool = EvictionPool::new();
    plain.sample(Store::shard_of("k"), 0, 5, |_| true, &mut pool);
    assert!(pool.is_empty());
}

#[test]
fn lfu_candidates_are_ranked_by_how_often_they_were_used() {
    let s = cache(Eviction::Lfu, None);
    for i in 0..50 {
        s.set(&format!("k{i:02}"), Value::integer(i)).unwrap();
    }
    for _ in 0..200 {
        for i in 0..10 {
            s.get(&format!("k{i:02}")).unwrap();
        }
    }
    let all = sample_all(&s, |_| true);
    let hot = all.iter().filter(|c| *c.key < *"k10");
    let coldest_hot = hot.map(|c| c.score).max().unwrap();
    let hottest_cold = all.iter().filter(|c| *c.key >= *"k10").map(|c| c.score);
    assert!(hottest_cold.min().unwrap() > coldest_hot);
}

#[test]
fn the_pool_over_many_small_samples_finds_the_least_recently_used() {
    let s = cache(Eviction::Lru, None);
    let n = 5000;
    for i in 0..n {
        s.set(&format!("k{i:05}"), Value::integer(i)).unwrap();
        if i % 500 == 499 {
            s.advance_clock(1);
        }
    }
    // Keys written first are the oldest: the first 500 are 9 ticks old, the last 500 not at
    // all. Samples of 5 keys from random shards into one pool, as an evictor takes them.
    let mut pool = EvictionPool::new();
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng as usize
    };
    let mut evicted = Vec::new();
    for _ in 0..200 {
        for _ in 0..3 {
            s.sample(next() % Store::SHARDS, next(), 5, |_| true, &mut pool);
        }
        let best = pool.pop().unwrap();
        assert!(s.delete(&best.key).is_some());
        evicted.push(best.score);
    }
    // 200 evictions, all from the oldest tenth or two: never a key younger than 7 ticks.
    let mean = evicted.iter().sum::<u32>() as f64 / evicted.len() as f64;
    assert!(evicted.iter().all(|&age| age >= 7), "{evicted:?}");
    assert!(mean > 8.0, "{mean}");
}

#[test]
fn in_cache_mode_writes_are_admitted_below_the_budget_and_accepts_stop_at_it() {
    let max = 10_000;
    let s = cache(Eviction::Lru, Some(max));
    let admitted = max - max / 16;
    assert_eq!(
        (s.config().admission(), s.config().ceiling()),
        (Some(admitted), Some(max))
    );
    let strict = store_with_budget(max);
    assert_eq!(
        (strict.config().admission(), strict.config().ceiling()),
        (Some(max), Some(max))
    );
    let entry = charge("k0000", 100);
    let b = ballot(1, 1);
    let write = |s: &Store, i: usize, prepare: bool| -> Result<()> {
        let key = format!("k{i:04}");
        if prepare {
            s.prepare(&key, b, 100)?.unwrap();
        }
        let r = Register {
            ballot: b,
            version: Version(1),
            value: Some(Value::binary(vec![i as u8; 100])),
            expires: None,
        };
        s.accept(&key, r)?.unwrap();
        Ok(())
    };
    // Whole writes fill the admission limit and no more: the prepare refuses the first that
    // does not fit, in either mode.
    for (store, limit) in [(&s, admitted), (&strict, max)] {
        let n = (0..).find(|&i| write(store, i, true).is_err()).unwrap();
        assert_eq!(n as u64, limit / entry);
        assert!(store.used_bytes() <= limit);
    }
    // A prepare that adds nothing (a delete, a read) goes through up to the budget.
    assert!(s.prepare("other", ballot(2, 1), 0).unwrap().is_ok());
    // Accepts of writes prepared earlier take the last sixteenth, and stop at the budget.
    let first = admitted as usize / entry as usize + 1;
    let more = (first..).find(|&i| write(&s, i, false).is_err()).unwrap() - first;
    assert!(more > 0 && s.used_bytes() > admitted && s.used_bytes() <= max);
    assert!(s.used_bytes() + entry > max);
    assert!(write(&strict, max as usize / entry as usize + 1, false).is_err());
    assert_eq!(recount(&s), s.used_bytes());
    // What a prepare would admit: nothing that grows in the full stores, a write that does not
    // grow its key still; anything without a budget.
    for store in [&s, &strict] {
        assert!(!store.admits("new", 100));
        assert!(!store.admits("k0000", 200));
        assert!(store.admits("k0000", 100));
        assert!(store.admits("k0000", 0));
    }
    assert!(Store::new(StoreConfig::default()).admits("new", 1 << 20));
}

#[test]
fn moving_and_compacting_records_keeps_their_access_words() {
    let s = cache(Eviction::Lru, None);
    for i in 0..300 {
        s.set(&format!("k{i:03}"), Value::string("x".repeat(10)))
            .unwrap();
    }
    s.advance_clock(100);
    // Growing records moves them and turns their old bytes to garbage, which compaction
    // removes; deleting shrinks the table. The words of the keys left stay where they were.
    for i in (0..300).step_by(3) {
        s.delete(&format!("k{i:03}"));
    }
    for i in (1..300).step_by(3) {
        s.set(&format!("k{i:03}"), Value::string("y".repeat(200)))
            .unwrap();
    }
    s.advance_clock(1);
    for c in sample_all(&s, |_| true) {
        let i: usize = c.key[1..].parse().unwrap();
        assert_eq!(c.score, if i % 3 == 1 { 1 } else { 101 }, "{c:?}");
    }
}

/// Every key `live_keys_after` lists from the start, page after page of `limit`.
fn live_pages(
    s: &Store,
    prefix: &str,
    limit: usize,
    now_ms: u64,
    filter: impl Fn(&str) -> bool,
) -> Vec<Vec<(usize, String)>> {
    let mut pages = Vec::new();
    let mut after: Option<(usize, String)> = None;
    loop {
        let (keys, more) = s.live_keys_after(
            after.as_ref().map(|(shard, key)| (*shard, key.as_str())),
            prefix,
            limit,
            now_ms,
            &filter,
        );
        assert!(keys.len() <= limit);
        assert!(
            !more || keys.len() == limit,
            "a short page says more follow"
        );
        after = keys.last().cloned();
        pages.push(keys);
        if !more {
            return pages;
        }
    }
}

#[test]
fn live_keys_come_in_shard_then_key_order_without_tombstones_promises_or_expired_values() {
    let s = Store::new(StoreConfig::default());
    let now = 1_700_000_000_000;
    for i in 0..300 {
        s.set(&format!("user:{i}"), Value::integer(i)).unwrap();
        s.set(&format!("item:{i}"), Value::integer(i)).unwrap();
    }
    // A tombstone, a promise-only key, a value that expired and one that has not yet.
    s.accept("user:dead", reg(ballot(1, 0), 2, None))
        .unwrap()
        .unwrap();
    s.prepare("user:promised", ballot(1, 0), 0)
        .unwrap()
        .unwrap();
    let expiring = |at: u64| Register {
        expires: Some(at),
        ..reg(ballot(1, 0), 1, Some(1))
    };
    s.accept("user:expired", expiring(now)).unwrap().unwrap();
    s.accept("user:later", expiring(now + 1)).unwrap().unwrap();

    let mut expected: Vec<(usize, String)> = (0..300)
        .map(|i| format!("user:{i}"))
        .chain(["user:later".to_owned()])
        .map(|k| (Store::shard_of(&k), k))
        .collect();
    expected.sort();
    for limit in [1, 7, 64, 1000] {
        let pages = live_pages(&s, "user:", limit, now, |_| true);
        let all: Vec<_> = pages.concat();
        assert_eq!(all, expected, "pages of {limit}");
        assert!(pages.iter().rev().skip(1).all(|p| p.len() == limit));
    }
    // With an hour more on the clock the expiring key is gone too; without a prefix every kind
    // of key is listed; a filter takes keys out.
    let later = live_pages(&s, "user:", 50, now + 3_600_000, |_| true).concat();
    assert_eq!(later.len(), 300);
    assert_eq!(live_pages(&s, "", 100, now, |_| true).concat().len(), 601);
    let odd = live_pages(&s, "item:", 9, now, |k| k.ends_with('1')).concat();
    assert_eq!(odd.len(), 30);
    assert!(odd.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn a_walk_resumes_after_any_key_and_past_the_last_shard_is_empty() {
    let s = Store::new(StoreConfig::default());
    for i in 0..200 {
        s.set(&format!("k{i}"), Value::string("v")).unwrap();
    }
    let all = live_pages(&s, "", 1000, 0, |_| true).concat();
    assert_eq!(all.len(), 200);
    for (i, (shard, key)) in all.iter().enumerate() {
        let (rest, more) = s.live_keys_after(Some((*shard, key)), "", 1000, 0, |_| true);
        assert_eq!(rest, all[i + 1..], "after {key}");
        assert!(!more);
    }
    // Resuming after a key that is not there (deleted since) still continues in order.
    let (shard, key) = all[100].clone();
    s.delete(&key);
    let (rest, _) = s.live_keys_after(Some((shard, &key)), "", 1000, 0, |_| true);
    assert_eq!(rest, all[101..]);
    assert_eq!(
        s.live_keys_after(Some((Store::SHARDS, "k1")), "", 10, 0, |_| true),
        (Vec::new(), false)
    );
    let (none, more) = s.live_keys_after(None, "", 0, 0, |_| true);
    assert!(none.is_empty() && more);
    assert_eq!(
        s.live_keys_after(None, "absent:", 10, 0, |_| true),
        (Vec::new(), false)
    );
}

#[test]
fn expired_values_are_found_by_shard_and_a_store_without_expiry_times_is_not_walked() {
    let s = Store::new(StoreConfig::default());
    let now = 1_700_000_000_000;
    let expiring = |version: u64, at: u64| Register {
        expires: Some(at),
        ..reg(ballot(1, 0), version, Some(1))
    };
    for i in 0..200 {
        s.set(&format!("plain{i}"), Value::integer(i)).unwrap();
    }
    assert_eq!(s.expiring(), 0);
    let expired_everywhere = |s: &Store, now: u64| -> Vec<String> {
        let mut keys: Vec<String> = (0..Store::SHARDS)
            .flat_map(|shard| s.expired(shard, now, usize::MAX, |_| true))
            .collect();
        keys.sort();
        keys
    };
    assert!(expired_everywhere(&s, u64::MAX).is_empty());

    for i in 0..10 {
        s.accept(&format!("ttl{i}"), expiring(1, now + i))
            .unwrap()
            .unwrap();
    }
    assert_eq!(s.expiring(), 10);
    assert_eq!(expired_everywhere(&s, now + 2), ["ttl0", "ttl1", "ttl2"]);
    // Overwritten without an expiry time, deleted, forgotten: no longer expiring. Written again
    // with one: counted once.
    s.accept("ttl0", reg(ballot(2, 0), 2, Some(5)))
        .unwrap()
        .unwrap();
    s.accept("ttl1", reg(ballot(2, 0), 2, None))
        .unwrap()
        .unwrap();
    assert!(s.forget("ttl2"));
    s.accept("ttl3", expiring(2, now + 100)).unwrap().unwrap();
    assert_eq!(s.expiring(), 7);
    assert_eq!(expired_everywhere(&s, now + 3), Vec::<String>::new());
    assert_eq!(expired_everywhere(&s, now + 9).len(), 6);
    // `keep` picks keys out before `max` counts them.
    let shard = Store::shard_of("ttl9");
    let kept = s.expired(shard, now + 9, 1, |k| k == "ttl9");
    assert_eq!(kept, ["ttl9"]);
    // The count holds through rewrites in place and a store emptied of them.
    for i in 3..10 {
        s.accept(&format!("ttl{i}"), reg(ballot(3, 0), 3, None))
            .unwrap()
            .unwrap();
    }
    assert_eq!(s.expiring(), 0);
}
