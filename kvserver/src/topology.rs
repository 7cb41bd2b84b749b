//! The current cluster map, swapped whole, and where a key lives in it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard};

use kvcore::{ClusterMap, NodeId, NodeInfo, Store};
use tokio::sync::watch;

use crate::membership::Membership;

/// This node's view of the cluster: the current [`ClusterMap`] (replaced as a whole, never
/// mutated), the cluster's record of its membership it was built from, and how many replicas
/// each key has.
///
/// A node adopts only maps the cluster chose (written through the map register, or learned from
/// a node that adopted them), and only ever a later one: epochs never go back.
#[derive(Debug)]
pub struct Topology {
    me: NodeId,
    map: RwLock<Arc<ClusterMap>>,
    record: Mutex<Arc<Membership>>,
    /// Tells the background work that the map changed (the value is the epoch).
    changed: watch::Sender<u64>,
    /// Adoptions, one at a time.
    adopting: Mutex<()>,
    /// The node's store, once attached: stale copies are dropped from it before a change that
    /// moves keys here is adopted.
    store: OnceLock<Arc<Store>>,
    /// The epoch of a stable map under which the store was found to hold only keys it owns
    /// (0: none yet), so adopting a change from that map needs no scan for stale copies.
    clean: AtomicU64,
    /// The record's `replicas`, read on every request without the record's lock.
    replicas: AtomicUsize,
}

impl Topology {
    /// The topology of node `me` under the recorded membership `record`.
    pub fn new(me: NodeId, record: Membership) -> Result<Self, kvcore::Error> {
        let map = ClusterMap::from_spec(&record.map)?;
        let record_replicas = record.replicas;
        let (changed, _) = watch::channel(map.epoch());
        Ok(Topology {
            me,
            map: RwLock::new(Arc::new(map)),
            record: Mutex::new(Arc::new(record)),
            changed,
            adopting: Mutex::default(),
            store: OnceLock::new(),
            clean: AtomicU64::new(0),
            replicas: AtomicUsize::new(record_replicas),
        })
    }

    /// Attaches the node's store (see [`adopt`](Self::adopt)).
    pub fn attach_store(&self, store: Arc<Store>) {
        let _ = self.store.set(store);
    }

    /// This node.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The current map.
    pub fn map(&self) -> Arc<ClusterMap> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The current map, held: no other map can be adopted until the guard is dropped. What a
    /// replica holds while it checks a message's epoch and applies it, so that once it has
    /// adopted an epoch it applies nothing sent under an earlier one. Do not call the other
    /// methods of `Topology` that read the map while holding it.
    pub fn pin(&self) -> RwLockReadGuard<'_, Arc<ClusterMap>> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The current map's epoch.
    pub fn epoch(&self) -> u64 {
        self.map.read().unwrap_or_else(|p| p.into_inner()).epoch()
    }

    /// The cluster's record of its membership that the current map was built from (or a later
    /// one of the same epoch).
    pub fn record(&self) -> Arc<Membership> {
        self.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Adopts `record` if it is later than the current one: a later epoch replaces the map,
    /// a later version of the same epoch only the record. Returns whether the map changed.
    ///
    /// Before a new map is installed, this node drops whatever it holds of keys it does not own
    /// under it (while a change runs, under its previous member set): a copy left from an
    /// earlier map must not come back to life when the key moves here again (a delete, and the
    /// collection of its tombstone, may have happened since). Keys a change moves here are
    /// copied afresh from their previous owners.
    pub fn adopt(&self, record: Membership) -> Result<bool, kvcore::Error> {
        let _turn = self.adopting.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.record();
        let newer = (record.map.epoch, record.version) > (current.map.epoch, current.version);
        if !newer {
            return Ok(false);
        }
        if record.map.epoch == current.map.epoch {
            self.replicas.store(record.replicas, Ordering::Release);
            *self.record.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(record);
            return Ok(false);
        }
        let map = Arc::new(ClusterMap::from_spec(&record.map)?);
        // A change moves keys here: copies left from an earlier map must go first, unless the
        // store is known to hold only keys of the stable map the change starts from. (Keys a
        // stable map moves away are dropped in the background: they only matter once a later
        // change moves them back, and that change's adoption drops them if they are still
        // here.)
        let old = self.map();
        let known_clean = !old.is_changing() && self.clean.load(Ordering::Acquire) == old.epoch();
        if let Some(store) = self.store.get() {
            if map.is_changing() && !known_clean {
                forget_unowned(store, &map, record.replicas, self.me);
            }
        }
        let epoch = map.epoch();
        self.replicas.store(record.replicas, Ordering::Release);
        *self.map.write().unwrap_or_else(|p| p.into_inner()) = map;
        *self.record.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(record);
        self.changed.send_replace(epoch);
        tracing::info!(node = %self.me, epoch, "adopted a new cluster map");
        Ok(true)
    }

    /// Records that the store held only keys owned under the stable map of `epoch` once a
    /// scan under that map finished (see [`adopt`](Self::adopt)).
    pub fn mark_clean(&self, epoch: u64) {
        self.clean.store(epoch, Ordering::Release);
    }

    /// A receiver told of every map this node adopts.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Copies asked for of each key (fewer while the cluster has fewer members).
    pub fn replicas(&self) -> usize {
        self.replicas.load(Ordering::Acquire)
    }

    /// Copies kept of each key: the replicas asked for, at most one per member.
    pub fn replication_factor(&self) -> usize {
        self.replicas().clamp(1, self.map().len())
    }

    /// Where `key` lives under the current map. Computed once per request and passed along.
    pub fn placement(&self, key: &str) -> Placement {
        Self::placement_in(&self.map(), self.replicas(), key)
    }

    /// Where `key` lives under `map`, with `r` copies of each key.
    pub fn placement_in(map: &Arc<ClusterMap>, r: usize, key: &str) -> Placement {
        let mut replicas = Vec::with_capacity(r);
        let mut previous = Vec::new();
        let owners = replicas_into(map, key, r, &mut replicas, &mut previous);
        // A key whose owners a change leaves as they were is not moving: its quorums are the
        // same either way.
        let moving = !previous.is_empty()
            && (previous.len() != owners
                || previous.iter().any(|n| !replicas[..owners].contains(n)));
        Placement {
            map: map.clone(),
            replicas,
            owners,
            previous: moving.then_some(previous),
        }
    }

    /// Every other member of the cluster, and while a change runs, the departing ones.
    pub fn peers(&self) -> Vec<NodeId> {
        let map = self.map();
        map.nodes()
            .iter()
            .chain(map.departing())
            .map(|n| n.id)
            .filter(|&id| id != self.me)
            .collect()
    }

    /// Whether this node takes part in the current map: a member, or a departing one.
    pub fn takes_part(&self) -> bool {
        self.map().node(self.me).is_some()
    }
}

/// The key under which the cluster keeps its own map, replicated on every member (clients cannot
/// name it: keys starting with U+0000 are reserved for the cluster's own records).
pub const MAP_KEY: &str = "\u{0}cluster-map";

/// Whether clients may not use `key`: it is one of the cluster's own records.
pub fn is_reserved(key: &str) -> bool {
    key.starts_with('\u{0}')
}

/// Fills `replicas` with `key`'s replicas under `map`, primary first: its `r` owners and, while a
/// membership change runs, then its owners under the previous member set that are not among
/// them, whose owners under the previous member set go to `previous` (left empty otherwise).
/// Returns how many of `replicas` are owners under the current members. The cluster's own map
/// ([`MAP_KEY`]) is owned by every member.
pub fn replicas_into(
    map: &ClusterMap,
    key: &str,
    r: usize,
    replicas: &mut Vec<NodeId>,
    previous: &mut Vec<NodeId>,
) -> usize {
    if key == MAP_KEY {
        replicas.clear();
        replicas.extend(map.nodes().iter().map(|n| n.id));
        let owners = replicas.len();
        previous.clear();
        if let Some(before) = map.previous_members() {
            previous.extend_from_slice(before);
            for &n in before {
                if !replicas.contains(&n) {
                    replicas.push(n);
                }
            }
        }
        return owners;
    }
    map.owners_into(key.as_bytes(), r, replicas);
    let owners = replicas.len();
    if map.previous_owners_into(key.as_bytes(), r, previous) {
        for &n in previous.iter() {
            if !replicas.contains(&n) {
                replicas.push(n);
            }
        }
    }
    owners
}

/// Drops every key this node holds but does not replicate under `map` (with `r` copies per
/// key); returns how many. Bounded pages at a time, so other work on the store goes on.
pub fn forget_foreign(store: &Store, map: &ClusterMap, r: usize, me: NodeId) -> u64 {
    let (mut replicas, mut previous) = (Vec::with_capacity(r), Vec::new());
    forget_where(store, |key| {
        replicas_into(map, key, r, &mut replicas, &mut previous);
        !replicas.contains(&me)
    })
}

/// Drops every key this node holds that it does not own under `map` (with `r` copies per
/// key), or while `map` runs a change, under the change's previous member set; returns how
/// many. What a node does before it installs a new map (see [`Topology::adopt`]).
pub fn forget_unowned(store: &Store, map: &ClusterMap, r: usize, me: NodeId) -> u64 {
    let (mut replicas, mut previous) = (Vec::with_capacity(r), Vec::new());
    let changing = map.is_changing();
    forget_where(store, |key| {
        let owners = replicas_into(map, key, r, &mut replicas, &mut previous);
        let base = if changing {
            &previous[..]
        } else {
            &replicas[..owners]
        };
        !base.contains(&me)
    })
}

fn forget_where(store: &Store, mut drop: impl FnMut(&str) -> bool) -> u64 {
    let mut forgotten = 0;
    for shard in 0..Store::SHARDS {
        let mut after: Option<String> = None;
        loop {
            let page = store.ballots_page(shard, after.as_deref(), 1 << 20, &mut drop);
            for (key, _) in &page.items {
                forgotten += u64::from(store.forget(key));
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }
    forgotten
}

/// A key's replicas, primary first, under the map they were computed from.
///
/// While a membership change runs, a key has two sets of owners, under the members before and
/// after the change; it is replicated on both, and a quorum is a majority of each (joint
/// quorums: see `docs/membership.md`).
#[derive(Debug, Clone)]
pub struct Placement {
    /// The map.
    pub map: Arc<ClusterMap>,
    /// The replicas, primary first: the owners under the current members, then, while a change
    /// runs, the owners under the previous ones not among them.
    pub replicas: Vec<NodeId>,
    /// How many of `replicas` are owners under the current members.
    owners: usize,
    /// While a change runs, the owners under the previous member set.
    pub previous: Option<Vec<NodeId>>,
}

/// Whether `nodes` hold a majority of `set`.
fn majority(set: &[NodeId], nodes: &[NodeId]) -> bool {
    let held = set.iter().filter(|n| nodes.contains(n)).count();
    held > set.len() / 2
}

impl Placement {
    /// The key's primary replica.
    pub fn primary(&self) -> NodeId {
        self.replicas[0]
    }

    /// Whether `node` is one of the replicas.
    pub fn contains(&self, node: NodeId) -> bool {
        self.replicas.contains(&node)
    }

    /// Whether a membership change runs, so quorums are joint.
    pub fn is_joint(&self) -> bool {
        self.previous.is_some()
    }

    /// Whether `nodes` form a quorum: a majority of the owners, and while a change runs, a
    /// majority of the previous owners too.
    pub fn is_quorum(&self, nodes: &[NodeId]) -> bool {
        majority(&self.replicas[..self.owners], nodes)
            && self.previous.as_ref().is_none_or(|p| majority(p, nodes))
    }

    /// Whether `nodes` hold a majority of the owners or, while a change runs, of the previous
    /// owners. A register a quorum accepted is held by a majority of at least one of the two
    /// (a key the change has not copied yet is only on the previous owners), and one that a
    /// later quorum replaced by a minority of each: what a scan needs to list a key that
    /// `nodes` report.
    pub fn is_majority_of_either(&self, nodes: &[NodeId]) -> bool {
        majority(&self.replicas[..self.owners], nodes)
            || self.previous.as_ref().is_some_and(|p| majority(p, nodes))
    }

    /// Whether the replicas not in `failed` can still form a quorum.
    pub fn can_reach_quorum(&self, failed: &[NodeId]) -> bool {
        let rest: Vec<NodeId> = self
            .replicas
            .iter()
            .copied()
            .filter(|n| !failed.contains(n))
            .collect();
        self.is_quorum(&rest)
    }

    /// Answers needed for a majority of the owners; with joint quorums, more may be needed
    /// (see [`is_quorum`](Self::is_quorum)).
    pub fn quorum(&self) -> usize {
        self.owners / 2 + 1
    }

    /// How many replicas a request goes to first: a majority, or every replica while quorums
    /// are joint (the smallest joint quorum depends on which replicas answer).
    pub fn first_wave(&self) -> usize {
        if self.is_joint() {
            self.replicas.len()
        } else {
            self.quorum()
        }
    }

    /// The address of a member of the map.
    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.map.node(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvcore::{partition, MapSpec};

    fn map(nodes: &[u32], previous: Option<&[u32]>) -> ClusterMap {
        let nodes = nodes
            .iter()
            .map(|&i| NodeInfo {
                id: NodeId(i),
                addr: format!("127.0.0.1:{}", 5100 + i),
            })
            .collect();
        let spec = MapSpec {
            epoch: 1,
            nodes,
            partitioner: partition::default_partitioner().name().to_owned(),
            previous: previous.map(|p| p.iter().map(|&i| NodeId(i)).collect()),
            departing: Vec::new(),
        };
        ClusterMap::from_spec(&spec).unwrap()
    }

    fn topology(me: u32, map: ClusterMap, r: usize) -> Topology {
        Topology::new(NodeId(me), Membership::initial(map.spec(), r)).unwrap()
    }

    #[test]
    fn a_quorum_is_a_majority_and_during_a_change_a_majority_of_both_owner_sets() {
        let still = topology(0, map(&[0, 1, 2], None), 3);
        let p = still.placement("k");
        assert!(!p.is_joint());
        assert_eq!((p.replicas.len(), p.quorum(), p.first_wave()), (3, 2, 2));
        assert!(p.is_quorum(&p.replicas[..2]));
        assert!(!p.is_quorum(&p.replicas[..1]));
        assert!(p.can_reach_quorum(&p.replicas[..1]));
        assert!(!p.can_reach_quorum(&p.replicas[..2]));

        // Node 3 joins a cluster of 0, 1, 2: keys it takes have four replicas meanwhile.
        let joining = topology(0, map(&[0, 1, 2, 3], Some(&[0, 1, 2])), 3);
        let key = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| joining.placement(k).contains(NodeId(3)))
            .unwrap();
        let p = joining.placement(&key);
        assert!(p.is_joint());
        assert_eq!(p.replicas.len(), 4);
        assert_eq!(p.first_wave(), 4);
        let old = p.previous.clone().unwrap();
        let gone = *old.iter().find(|n| !p.replicas[..3].contains(n)).unwrap();
        // Two of the new owners without the old one that leaves: a majority of the new owners
        // and of the old ones too (the two that stay are in both).
        let stay: Vec<NodeId> = old.iter().copied().filter(|&n| n != gone).collect();
        assert!(p.is_quorum(&stay));
        // The joining node and one that stays: a majority of the new owners only.
        let new_only = [NodeId(3), stay[0]];
        assert!(!p.is_quorum(&new_only));
        // The leaving one and one that stays: a majority of the old owners only.
        assert!(!p.is_quorum(&[gone, stay[0]]));
        assert!(p.is_quorum(&[gone, stay[0], NodeId(3)]));
        assert!(!p.can_reach_quorum(&[stay[0], NodeId(3)]));
    }
}
