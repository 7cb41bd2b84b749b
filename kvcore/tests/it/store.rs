//! The store's public contract: versions, tombstones and floors, byte accounting, and replica
//! state that travels from one store to another.

use std::sync::Arc;

use kvcore::store::{footprint, ENTRY_OVERHEAD};
use kvcore::{
    Ballot, Encoding, Floor, NodeId, Precondition, Register, ReplicaState, Store, StoreConfig,
    Value, Version, MAX_KEY_BYTES,
};
use proptest::prelude::*;

fn ballot(round: u64, node: u32) -> Ballot {
    Ballot::new(round, NodeId(node))
}

fn states(store: &Store) -> Vec<ReplicaState> {
    let mut all: Vec<_> = (0..Store::SHARDS)
        .flat_map(|shard| store.scan_page(shard, None, usize::MAX, |_| true).items)
        .collect();
    all.sort_by(|a, b| a.key.cmp(&b.key));
    all
}

/// `used_bytes` as the documented formula gives it: key + value + overhead for every key the
/// store holds state for, tombstones and promises included.
fn expected_bytes(store: &Store) -> u64 {
    states(store)
        .iter()
        .map(|s| s.key.len() as u64 + s.register.value_len() as u64 + ENTRY_OVERHEAD)
        .sum()
}

#[test]
fn versions_never_repeat_across_deletes() {
    let store = Store::new(StoreConfig::default());
    let mut seen = Vec::new();
    for round in 0..5 {
        seen.push(store.set("k", Value::integer(round)).unwrap());
        seen.push(store.set("k", Value::integer(round)).unwrap());
        let deleted = store.delete("k").unwrap();
        assert_eq!(deleted.version, *seen.last().unwrap());
        assert_eq!(store.get("k"), None);
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    // Each delete counted as a change: 5 rounds of set, set, delete.
    assert_eq!(store.register("k").version, Version(15));
    assert!(store.is_empty());
    assert_eq!(store.used_bytes(), 0);
}

#[test]
fn a_tombstone_keeps_the_ballot_and_travels_with_the_replica_state() {
    let store = Store::new(StoreConfig::default());
    let accepted = Register {
        ballot: ballot(4, 2),
        version: Version(1),
        value: Some(Value::string("x")),
        expires: None,
    };
    store.accept("gone", accepted).unwrap().unwrap();
    let tombstone = Register {
        ballot: ballot(5, 2),
        version: Version(2),
        value: None,
        expires: None,
    };
    store.accept("gone", tombstone).unwrap().unwrap();
    let [state] = &states(&store)[..] else {
        panic!("one key")
    };
    assert_eq!(state.register.value, None);
    assert_eq!(state.register.version, Version(2));
    assert_eq!(state.register.ballot, ballot(5, 2));
    let copy = Store::new(StoreConfig::default());
    assert!(copy.restore(state.clone()).unwrap());
    // The copy keeps counting from the tombstone.
    assert_eq!(copy.set("gone", Value::string("y")).unwrap(), Version(3));
}

#[test]
fn a_collected_key_travels_as_its_shards_floor() {
    let store = Store::new(StoreConfig::default());
    let tombstone = Register {
        ballot: ballot(5, 2),
        version: Version(4),
        value: None,
        expires: None,
    };
    store.accept("gone", tombstone).unwrap().unwrap();
    assert!(store.collect("gone", ballot(5, 2)).unwrap());
    assert_eq!((states(&store), store.used_bytes()), (vec![], 0));
    let copy = Store::new(StoreConfig::default());
    for shard in 0..Store::SHARDS {
        copy.raise_floor(shard, store.floor(shard));
    }
    let shard = Store::shard_of("gone");
    assert_eq!(
        copy.floor(shard),
        Floor {
            promised: ballot(5, 2),
            version: Version(4)
        }
    );
    // The copy refuses what the original refuses, and counts on from the deleted version.
    assert_eq!(
        copy.prepare("gone", ballot(5, 2), 0).unwrap(),
        Err(ballot(5, 2))
    );
    assert_eq!(copy.set("gone", Value::string("y")).unwrap(), Version(5));
}

#[test]
fn map_writes_carry_no_ballot_so_restore_never_spreads_them() {
    let store = Store::new(StoreConfig::default());
    store.set("local", Value::integer(1)).unwrap();
    let state = states(&store).remove(0);
    assert_eq!(state.register.ballot, Ballot::ZERO);
    let copy = Store::new(StoreConfig::default());
    assert!(!copy.restore(state).unwrap());
    assert_eq!(copy.get("local"), None);
}

#[test]
fn the_acceptor_path_stores_what_a_replicated_write_accepts() {
    let store = Store::new(StoreConfig::default());
    let key = "key:000000000001";
    let b1 = ballot(1, 7);
    assert_eq!(store.prepare(key, b1, 32).unwrap(), Ok(Register::default()));
    let first = Register {
        ballot: b1,
        version: Version(1),
        value: Some(Value::string("v".repeat(32))),
        expires: None,
    };
    store.accept(key, first.clone()).unwrap().unwrap();
    assert_eq!(store.register(key), first);
    assert_eq!(store.get(key).unwrap().version, Version(1));
    assert_eq!(
        store.used_bytes(),
        footprint(key, first.value.as_ref().unwrap())
    );
    // A second proposer's promise blocks the first one's late accept.
    let b2 = ballot(2, 3);
    assert_eq!(store.prepare(key, b2, 32).unwrap(), Ok(first.clone()));
    let late = Register {
        version: Version(2),
        ..first.clone()
    };
    assert_eq!(store.accept(key, late).unwrap(), Err(b2));
    assert_eq!(states(&store)[0].promised, b2);
}

#[test]
fn a_whole_store_copies_into_an_empty_one_through_scan_and_restore() {
    let source = Store::new(StoreConfig::default());
    for i in 0..3000u64 {
        let key = format!("key{i}");
        match i % 4 {
            0 | 1 => {
                let register = Register {
                    ballot: ballot(i, 3),
                    version: Version(i),
                    value: Some(Value::string("x".repeat(i as usize % 300))),
                    expires: None,
                };
                source.accept(&key, register).unwrap().unwrap();
                if i % 4 == 1 {
                    source.delete(&key).unwrap();
                }
            }
            2 => {
                source.prepare(&key, ballot(i, 1), 0).unwrap().unwrap();
            }
            _ => {
                let b = ballot(i, 2);
                source.prepare(&key, b, 8).unwrap().unwrap();
                let register = Register {
                    ballot: b,
                    version: Version(1),
                    value: Some(Value::binary(i.to_le_bytes().to_vec())),
                    expires: None,
                };
                source.accept(&key, register).unwrap().unwrap();
            }
        }
    }
    let copy = Store::new(StoreConfig {
        // Restores are never refused for the budget.
        max_memory: Some(1),
        ..Default::default()
    });
    for state in states(&source) {
        assert!(copy.restore(state).unwrap());
    }
    // The keys deleted from the source are in its floors, which a copy takes too.
    for shard in 0..Store::SHARDS {
        copy.raise_floor(shard, source.floor(shard));
        assert_eq!(copy.floor(shard), source.floor(shard));
    }
    assert_eq!(states(&copy), states(&source));
    for i in 0..3000 {
        let key = format!("key{i}");
        assert_eq!(copy.register(&key), source.register(&key), "{key}");
    }
    assert_eq!(copy.len(), source.len());
    assert_eq!(copy.len(), 1500);
    assert_eq!(copy.used_bytes(), source.used_bytes());
    assert_eq!(copy.used_bytes(), expected_bytes(&copy));
    // Restoring the same states again changes nothing.
    let changes = copy.changes();
    for state in states(&source) {
        assert!(!copy.restore(state).unwrap());
    }
    assert_eq!(copy.changes(), changes);
}

#[test]
fn readers_see_whole_values_while_writers_resize_them() {
    let store = Arc::new(Store::new(StoreConfig::default()));
    let keys: Vec<String> = (0..64).map(|i| format!("key{i}")).collect();
    // Every value is a run of one byte repeated as many times as the byte says, so a reader can
    // tell a torn or misplaced value from a whole one.
    let value = |n: u8| Value::binary(vec![n; n as usize]);
    for k in &keys {
        store.set(k, value(1)).unwrap();
    }
    let writers: Vec<_> = (0..2u8)
        .map(|t| {
            let (store, keys) = (store.clone(), keys.clone());
            std::thread::spawn(move || {
                for i in 0..20_000usize {
                    let k = &keys[(i * 7 + t as usize) % keys.len()];
                    store.set(k, value((i % 251) as u8 + 1)).unwrap();
                }
            })
        })
        .collect();
    let reader = {
        let (store, keys) = (store.clone(), keys.clone());
        std::thread::spawn(move || {
            let mut last = vec![Version(0); keys.len()];
            for i in 0..40_000usize {
                let j = i % keys.len();
                let e = store.get(&keys[j]).expect("never deleted");
                let bytes = e.value.as_bytes();
                assert!(!bytes.is_empty() && bytes.iter().all(|&b| b as usize == bytes.len()));
                assert!(e.version >= last[j], "versions went back");
                last[j] = e.version;
            }
        })
    };
    for h in writers {
        h.join().unwrap();
    }
    reader.join().unwrap();
    assert_eq!(store.used_bytes(), expected_bytes(&store));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any key up to the longest and any value up to a mebibyte reads back as written, through
    /// both APIs.
    #[test]
    fn keys_and_values_of_every_size_round_trip(
        key in prop_oneof![
            "[a-zA-Z0-9:/ ]{1,64}",
            "[€ж😀a]{1,256}".prop_filter("fits", |k| k.len() <= MAX_KEY_BYTES),
            (1..=MAX_KEY_BYTES).prop_map(|n| "k".repeat(n)),
        ],
        len in prop_oneof![0..100usize, 0..=1usize << 20],
        byte in any::<u8>(),
        encoding in prop_oneof![Just(Encoding::Binary), Just(Encoding::String)],
    ) {
        let value = match encoding {
            Encoding::String => Value::string("s".repeat(len)),
            _ => Value::binary(vec![byte; len]),
        };
        let store = Store::new(StoreConfig::default());
        prop_assert_eq!(store.put(&key, value.clone(), Precondition::IfAbsent).unwrap(), Ok(Version(1)));
        prop_assert_eq!(&store.get(&key).unwrap().value, &value);
        prop_assert_eq!(store.used_bytes(), footprint(&key, &value));
        let b = ballot(5, 1);
        store.prepare(&key, b, len).unwrap().unwrap();
        let register = Register { ballot: b, version: Version(2), value: Some(value.clone()), expires: None, };
        store.accept(&key, register.clone()).unwrap().unwrap();
        prop_assert_eq!(store.register(&key), register);
        prop_assert_eq!(store.delete(&key).map(|e| e.value), Some(value));
        prop_assert_eq!(store.used_bytes(), 0);
    }
}
