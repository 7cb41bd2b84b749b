//! Golden values: fixed keys and memberships with their owners, written down once from the
//! implementation. Any change to hashing or placement fails here, because nodes running
//! different builds must agree on every key's owners. Change these only together with a plan for
//! moving data already placed by the old rule.

use kvcore::partition::{self, key_hash, mix64, node_seed, rendezvous};
use kvcore::{ClusterMap, NodeId, NodeInfo};

const KEYS: [&str; 5] = ["a", "b", "user:42", "ключ", ""];

/// Owners (n = 3) of each of [`KEYS`] on nodes `0..4` and `0..16`.
const OWNERS: &[(&str, [[[u32; 3]; 5]; 2])] = &[
    (
        "slots",
        [
            [[2, 1, 3], [3, 1, 2], [1, 2, 0], [3, 0, 2], [0, 3, 1]],
            [
                [13, 5, 9],
                [6, 10, 11],
                [4, 14, 15],
                [15, 6, 14],
                [14, 12, 10],
            ],
        ],
    ),
    (
        "rendezvous",
        [
            [[3, 0, 1], [1, 2, 3], [0, 2, 1], [1, 2, 0], [1, 2, 0]],
            [[12, 14, 9], [6, 1, 2], [0, 11, 8], [1, 2, 13], [10, 7, 9]],
        ],
    ),
    (
        "ring",
        [
            [[3, 2, 1], [1, 3, 0], [2, 0, 1], [2, 3, 1], [1, 2, 0]],
            [[3, 2, 14], [12, 1, 4], [7, 5, 9], [12, 10, 15], [7, 6, 4]],
        ],
    ),
    (
        "maglev",
        [
            [[2, 3, 0], [1, 2, 0], [1, 3, 0], [3, 2, 1], [2, 3, 0]],
            [
                [11, 9, 7],
                [4, 2, 15],
                [11, 13, 12],
                [11, 14, 2],
                [11, 2, 14],
            ],
        ],
    ),
];

#[test]
fn key_hashes_are_xxh3_64() {
    let hashes = KEYS.map(|k| key_hash(k.as_bytes()));
    assert_eq!(
        hashes,
        [
            0xe6c6_32b6_1e96_4e1f,
            0x575a_0b1c_44d8_843f,
            0x9fc1_e605_fa71_74aa,
            0x9a13_7c08_c1e5_5ede,
            // XXH3-64 of the empty input, as published with the reference implementation.
            0x2d06_8005_38d3_94c2,
        ]
    );
}

#[test]
fn mixing_functions_are_pinned() {
    assert_eq!(mix64(0), 0);
    assert_eq!(mix64(1), 0x5692_161d_100b_05e5);
    assert_eq!(node_seed(NodeId(0)), 0x48b2_c926_16fc_193d);
    assert_eq!(rendezvous::score(1, 2), 0xdaa6_6d2c_7ddf_743e);
}

#[test]
fn every_partitioner_places_the_golden_keys() {
    let all = partition::all();
    let pinned: Vec<&str> = OWNERS.iter().map(|(name, _)| *name).collect();
    let names: Vec<&str> = all.iter().map(|p| p.name()).collect();
    assert_eq!(names, pinned, "every partitioner needs golden values");
    for (p, (_, expected)) in all.iter().zip(OWNERS) {
        for (size, expected) in [4u32, 16].into_iter().zip(expected) {
            let ids: Vec<NodeId> = (0..size).map(NodeId).collect();
            let layout = p.layout(&ids);
            for (key, want) in KEYS.iter().zip(expected) {
                let mut got = Vec::new();
                layout.owners(key_hash(key.as_bytes()), 3, &mut got);
                let got: Vec<u32> = got.iter().map(|id| id.0).collect();
                assert_eq!(got, want, "{} on {size} nodes, key {key:?}", p.name());
            }
        }
    }
}

#[test]
fn the_cluster_map_places_with_the_default_partitioner() {
    let nodes = (0..4)
        .map(|i| NodeInfo {
            id: NodeId(i),
            addr: format!("127.0.0.1:{}", 5100 + i),
        })
        .collect();
    let map = ClusterMap::new(1, nodes, partition::default_partitioner()).unwrap();
    let (_, expected) = OWNERS[0];
    for (key, want) in KEYS.iter().zip(&expected[0]) {
        let got: Vec<u32> = map.owners(key, 3).iter().map(|id| id.0).collect();
        assert_eq!(got, want, "key {key:?}");
    }
}
