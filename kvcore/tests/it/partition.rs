//! The contract every partitioner in `partition::all()` keeps, checked on random memberships.
//!
//! Each case builds one layout per membership change and runs every check against it, because
//! building a `Slots` table (2^20 rankings) dominates the run time of unoptimised test builds.

use std::collections::BTreeSet;

use kvcore::partition::{self, key_hash, Layout, Partitioner};
use kvcore::NodeId;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;

/// Keys whose placement the movement checks compare: enough that every node of a small cluster
/// owns hundreds, few enough for unoptimised builds.
const MOVEMENT_KEYS: usize = 20_000;

/// Keys for the per-lookup checks, which try every `n`.
const LOOKUP_KEYS: usize = 500;

/// Replicas compared by the movement checks.
const REPLICAS: usize = 3;

fn hashes(count: usize) -> Vec<u64> {
    (0..count)
        .map(|i| key_hash(format!("key:{i}").as_bytes()))
        .collect()
}

fn owners(layout: &dyn Layout, hash: u64, n: usize) -> Vec<NodeId> {
    let mut out = Vec::new();
    layout.owners(hash, n, &mut out);
    out
}

/// Whether the partitioner promises that a join moves keys only to the newcomer and a leave
/// moves only the leaver's keys. Maglev trades that for a perfectly even table.
fn promises_minimal_movement(p: &dyn Partitioner) -> bool {
    p.name() != "maglev"
}

fn ids(raw: impl IntoIterator<Item = u32>) -> Vec<NodeId> {
    raw.into_iter().map(NodeId).collect()
}

/// The lists differ only by the newcomer moving in (pushing the last owner out if the list was
/// full), or not at all: `after` is no shorter, and without the newcomer it is a prefix of
/// `before`.
fn only_newcomer_moved_in(before: &[NodeId], after: &[NodeId], newcomer: NodeId) -> bool {
    let kept: Vec<NodeId> = after.iter().copied().filter(|&id| id != newcomer).collect();
    after.len() >= before.len() && before.starts_with(&kept)
}

#[derive(Debug, Clone)]
struct Case {
    /// Distinct ids in the order the case gives them.
    members: Vec<NodeId>,
    /// Not a member.
    joiner: NodeId,
    /// A member.
    leaver: NodeId,
}

impl Case {
    fn sorted(&self) -> Vec<NodeId> {
        let mut sorted = self.members.clone();
        sorted.sort();
        sorted
    }
}

fn case() -> impl Strategy<Value = Case> {
    // Small ids like real clusters use, and arbitrary ones to catch assumptions about density.
    let id = prop_oneof![0u32..32, any::<u32>()];
    (
        prop::collection::btree_set(id, 1..=8),
        any::<u32>(),
        any::<Index>(),
    )
        .prop_flat_map(|(set, joiner, leaver)| {
            let leaver = *leaver.get(&set.iter().copied().collect::<Vec<_>>());
            // The smallest id not in the set at or after `joiner`, so joiners land anywhere
            // in the id order.
            let joiner = (joiner..=u32::MAX)
                .chain(0..joiner)
                .find(|j| !set.contains(j))
                .expect("a set of at most 8 ids leaves room");
            let members: Vec<u32> = set.into_iter().collect();
            Just(members).prop_shuffle().prop_map(move |members| Case {
                members: ids(members),
                joiner: NodeId(joiner),
                leaver: NodeId(leaver),
            })
        })
}

/// Owners are distinct members, as many as asked for while members last, the same on every
/// call, and each `n` extends the answer for `n - 1`.
fn check_lookups(
    p: &dyn Partitioner,
    layout: &dyn Layout,
    members: &BTreeSet<NodeId>,
) -> Result<(), TestCaseError> {
    let name = p.name();
    for hash in hashes(LOOKUP_KEYS) {
        let mut previous: Vec<NodeId> = Vec::new();
        for n in 0..=members.len() + 2 {
            let got = owners(layout, hash, n);
            prop_assert_eq!(
                got.len(),
                n.min(members.len()),
                "{}: count for n={}",
                name,
                n
            );
            prop_assert!(
                got.iter().all(|id| members.contains(id)),
                "{}: non-member in {:?}",
                name,
                got
            );
            let distinct: BTreeSet<_> = got.iter().collect();
            prop_assert_eq!(
                distinct.len(),
                got.len(),
                "{}: repeated owner in {:?}",
                name,
                got
            );
            prop_assert!(
                got.starts_with(&previous),
                "{}: n={} gave {:?} after {:?}",
                name,
                n,
                got,
                previous
            );
            prop_assert_eq!(
                &owners(layout, hash, n),
                &got,
                "{}: second call differs",
                name
            );
            previous = got;
        }
        // `owners` appends; what is already in `out` neither counts nor changes.
        let mut out = vec![NodeId(u32::MAX); 2];
        layout.owners(hash, REPLICAS, &mut out);
        prop_assert_eq!(
            &out[..2],
            &[NodeId(u32::MAX); 2][..],
            "{}: overwrote out",
            name
        );
        prop_assert_eq!(
            &out[2..],
            &owners(layout, hash, REPLICAS)[..],
            "{}: append differs",
            name
        );
    }
    Ok(())
}

/// A layout built from the members in another order, with a duplicate, answers identically.
fn check_order_independence(
    p: &dyn Partitioner,
    layout: &dyn Layout,
    case: &Case,
) -> Result<(), TestCaseError> {
    let mut given = case.members.clone();
    given.push(case.members[0]);
    let other = p.layout(&given);
    for hash in hashes(LOOKUP_KEYS) {
        let n = case.members.len();
        prop_assert_eq!(
            owners(other.as_ref(), hash, n),
            owners(layout, hash, n),
            "{}: order {:?} changed placement",
            p.name(),
            given
        );
    }
    Ok(())
}

/// Placement before and after a membership change, `REPLICAS` owners per key.
fn placements(
    before: &dyn Layout,
    after: &dyn Layout,
    keys: &[u64],
) -> Vec<(Vec<NodeId>, Vec<NodeId>)> {
    keys.iter()
        .map(|&h| (owners(before, h, REPLICAS), owners(after, h, REPLICAS)))
        .collect()
}

/// When a node joins, every key either keeps its owners or gains the newcomer in its list.
fn check_join_moves_only_to_newcomer(
    p: &dyn Partitioner,
    layout: &dyn Layout,
    case: &Case,
    keys: &[u64],
) -> Result<(), TestCaseError> {
    let mut grown = case.members.clone();
    grown.push(case.joiner);
    let joined = p.layout(&grown);
    let mut moved = 0;
    for (before, after) in placements(layout, joined.as_ref(), keys) {
        prop_assert!(
            only_newcomer_moved_in(&before, &after, case.joiner),
            "{}: {:?} became {:?} when {} joined",
            p.name(),
            before,
            after,
            case.joiner
        );
        moved += usize::from(before[0] != after[0]);
    }
    // The newcomer takes a fair share of primaries: about 1/(n+1) of the keys.
    let expected = keys.len() as f64 / grown.len() as f64;
    prop_assert!(moved > 0, "{}: the newcomer got no keys", p.name());
    prop_assert!(
        (moved as f64) < 2.0 * expected,
        "{}: {} keys moved, expected about {:.0}",
        p.name(),
        moved,
        expected
    );
    Ok(())
}

/// When a node leaves, only keys it owned change owners, and they lose only the leaver.
fn check_leave_moves_only_leavers_keys(
    p: &dyn Partitioner,
    layout: &dyn Layout,
    case: &Case,
    keys: &[u64],
) -> Result<(), TestCaseError> {
    let shrunk: Vec<NodeId> = case
        .members
        .iter()
        .copied()
        .filter(|&id| id != case.leaver)
        .collect();
    if shrunk.is_empty() {
        return Ok(());
    }
    let left = p.layout(&shrunk);
    for (before, after) in placements(layout, left.as_ref(), keys) {
        // Leaving is joining in reverse.
        prop_assert!(
            only_newcomer_moved_in(&after, &before, case.leaver),
            "{}: {:?} became {:?} when {} left",
            p.name(),
            before,
            after,
            case.leaver
        );
    }
    Ok(())
}

/// What partitioners without minimal movement still promise: a join or leave disturbs the
/// primaries of not much more than the optimal share of keys, and most keys that move on a join
/// move to the newcomer.
fn check_bounded_disruption(
    p: &dyn Partitioner,
    layout: &dyn Layout,
    case: &Case,
    keys: &[u64],
) -> Result<(), TestCaseError> {
    let mut grown = case.members.clone();
    grown.push(case.joiner);
    let joined = p.layout(&grown);
    let (mut moved, mut to_newcomer) = (0usize, 0usize);
    for (before, after) in placements(layout, joined.as_ref(), keys) {
        if before[0] != after[0] {
            moved += 1;
            to_newcomer += usize::from(after[0] == case.joiner);
        }
    }
    let optimal = keys.len() as f64 / grown.len() as f64;
    prop_assert!(
        (moved as f64) < 1.5 * optimal,
        "{}: join moved {} keys, optimal {:.0}",
        p.name(),
        moved,
        optimal
    );
    prop_assert!(
        to_newcomer as f64 >= 0.8 * moved as f64,
        "{}: only {} of {} moved keys went to the newcomer",
        p.name(),
        to_newcomer,
        moved
    );

    let shrunk: Vec<NodeId> = case
        .members
        .iter()
        .copied()
        .filter(|&id| id != case.leaver)
        .collect();
    if shrunk.is_empty() {
        return Ok(());
    }
    let left = p.layout(&shrunk);
    let moved = placements(layout, left.as_ref(), keys)
        .iter()
        .filter(|(before, after)| before[0] != after[0])
        .count();
    let optimal = keys.len() as f64 / case.members.len() as f64;
    prop_assert!(
        (moved as f64) < 1.5 * optimal,
        "{}: leave moved {} keys, optimal {:.0}",
        p.name(),
        moved,
        optimal
    );
    Ok(())
}

fn check_contract(p: &dyn Partitioner, case: &Case, keys: &[u64]) -> Result<(), TestCaseError> {
    let layout = p.layout(&case.sorted());
    let members: BTreeSet<NodeId> = case.members.iter().copied().collect();
    check_lookups(p, layout.as_ref(), &members)?;
    check_order_independence(p, layout.as_ref(), case)?;
    if promises_minimal_movement(p) {
        check_join_moves_only_to_newcomer(p, layout.as_ref(), case, keys)?;
        check_leave_moves_only_leavers_keys(p, layout.as_ref(), case, keys)?;
    } else {
        check_bounded_disruption(p, layout.as_ref(), case, keys)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn every_partitioner_keeps_its_contract(case in case()) {
        let keys = hashes(MOVEMENT_KEYS);
        for p in partition::all() {
            check_contract(p.as_ref(), &case, &keys)?;
        }
    }
}

#[test]
fn names_are_unique_and_found_by_name() {
    let all = partition::all();
    let names: BTreeSet<&str> = all.iter().map(|p| p.name()).collect();
    assert_eq!(names.len(), all.len(), "duplicate names in {names:?}");
    for name in names {
        assert_eq!(partition::by_name(name).map(|p| p.name()), Some(name));
    }
    assert!(partition::by_name("nope").is_none());
    assert_eq!(all[0].name(), partition::default_partitioner().name());
}

#[test]
fn the_default_promises_minimal_movement() {
    assert!(promises_minimal_movement(
        partition::default_partitioner().as_ref()
    ));
}

#[test]
fn a_single_node_owns_everything() {
    for p in partition::all() {
        let layout = p.layout(&ids([7]));
        for hash in hashes(100) {
            assert_eq!(owners(layout.as_ref(), hash, 3), ids([7]), "{}", p.name());
        }
    }
}

#[test]
fn an_empty_membership_owns_nothing() {
    for p in partition::all() {
        let layout = p.layout(&[]);
        assert!(owners(layout.as_ref(), 42, 3).is_empty(), "{}", p.name());
    }
}
