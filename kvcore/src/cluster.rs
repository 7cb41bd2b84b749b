//! The cluster map: which nodes exist, where they listen, and how keys are placed on them.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::partition::{key_hash, Layout, Partitioner};

/// A node's stable identity within a cluster.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct NodeId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its identity.
    pub id: NodeId,
    /// Where peers and clients reach it, as `host:port`.
    pub addr: String,
}

/// An immutable snapshot of the cluster's membership and placement.
///
/// A node swaps a whole `Arc<ClusterMap>` when membership changes, never mutates one; the epoch
/// grows with every change, and peer messages carry it so a node acting on an old map finds out.
///
/// ```
/// use std::sync::Arc;
/// use kvcore::{ClusterMap, NodeId, NodeInfo, partition};
///
/// let nodes = (0..4).map(|i| NodeInfo { id: NodeId(i), addr: format!("127.0.0.1:{}", 5100 + i) });
/// let map = ClusterMap::new(1, nodes.collect(), partition::default_partitioner()).unwrap();
/// let owners = map.owners("user:42", 3);
/// assert_eq!(owners.len(), 3);
/// assert_eq!(owners, map.owners("user:42", 3)); // the same answer every time, on every node
/// ```
pub struct ClusterMap {
    epoch: u64,
    nodes: Vec<NodeInfo>,
    partitioner: Arc<dyn Partitioner>,
    layout: Box<dyn Layout>,
    /// While a membership change runs: the member ids keys were placed on before it, and their
    /// layout (see [`ClusterMap::previous_owners_into`]).
    previous: Option<(Vec<NodeId>, Box<dyn Layout>)>,
    /// While a membership change runs: the previous members that are not members any more
    /// (still reachable, as replicas of the keys they hand over).
    departing: Vec<NodeInfo>,
}

/// A [`ClusterMap`] as data: what travels between nodes and is stored, from which every node
/// rebuilds the same map (placement is a function of it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapSpec {
    /// The placement epoch.
    pub epoch: u64,
    /// The members.
    pub nodes: Vec<NodeInfo>,
    /// The partitioner's name (see [`crate::partition::by_name`]).
    pub partitioner: String,
    /// While a membership change runs, the member ids keys were placed on before it.
    pub previous: Option<Vec<NodeId>>,
    /// While a membership change runs, the previous members that are not members any more.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub departing: Vec<NodeInfo>,
}

impl fmt::Debug for ClusterMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterMap")
            .field("epoch", &self.epoch)
            .field("nodes", &self.nodes)
            .field("partitioner", &self.partitioner.name())
            .field("previous", &self.previous.as_ref().map(|(ids, _)| ids))
            .field("departing", &self.departing)
            .finish()
    }
}

impl ClusterMap {
    /// A map of `nodes` (in any order; kept sorted by id) placing keys with `partitioner`.
    pub fn new(
        epoch: u64,
        mut nodes: Vec<NodeInfo>,
        partitioner: Arc<dyn Partitioner>,
    ) -> Result<Self> {
        if nodes.is_empty() {
            return Err(Error::InvalidClusterMap {
                reason: "a cluster needs at least one node".into(),
            });
        }
        nodes.sort_by_key(|n| n.id);
        if let Some(w) = nodes.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(Error::InvalidClusterMap {
                reason: format!("node id {} appears twice", w[0].id),
            });
        }
        let ids: Vec<NodeId> = nodes.iter().map(|n| n.id).collect();
        let layout = partitioner.layout(&ids);
        Ok(ClusterMap {
            epoch,
            nodes,
            partitioner,
            layout,
            previous: None,
            departing: Vec::new(),
        })
    }

    /// The map `spec` describes; the same on every node that builds it.
    pub fn from_spec(spec: &MapSpec) -> Result<Self> {
        let partitioner = crate::partition::by_name(&spec.partitioner).ok_or_else(|| {
            Error::InvalidClusterMap {
                reason: format!("unknown partitioner {:?}", spec.partitioner),
            }
        })?;
        let map = ClusterMap::new(spec.epoch, spec.nodes.clone(), partitioner)?;
        match &spec.previous {
            None => Ok(map),
            Some(previous) => map.with_previous(previous.clone(), spec.departing.clone()),
        }
    }

    /// The data this map is built from.
    pub fn spec(&self) -> MapSpec {
        MapSpec {
            epoch: self.epoch,
            nodes: self.nodes.clone(),
            partitioner: self.partitioner.name().to_owned(),
            previous: self.previous.as_ref().map(|(ids, _)| ids.clone()),
            departing: self.departing.clone(),
        }
    }

    fn with_previous(
        mut self,
        mut previous: Vec<NodeId>,
        mut departing: Vec<NodeInfo>,
    ) -> Result<Self> {
        previous.sort();
        previous.dedup();
        if previous.is_empty() {
            return Err(Error::InvalidClusterMap {
                reason: "a change cannot start from an empty cluster".into(),
            });
        }
        departing.sort_by_key(|n| n.id);
        departing.dedup_by_key(|n| n.id);
        if let Some(n) = departing
            .iter()
            .find(|n| self.node(n.id).is_some() || previous.binary_search(&n.id).is_err())
        {
            return Err(Error::InvalidClusterMap {
                reason: format!(
                    "departing node {} must be a previous member and not a current one",
                    n.id
                ),
            });
        }
        let layout = self.partitioner.layout(&previous);
        self.previous = Some((previous, layout));
        self.departing = departing;
        Ok(self)
    }

    /// The start of a membership change to `nodes`: the next epoch, placing keys on `nodes`
    /// while remembering this map's members as the previous placement, so a key's replicas are
    /// its owners under both until the change is [finished](Self::finish_change).
    pub fn begin_change(&self, nodes: Vec<NodeInfo>) -> Result<Self> {
        if self.previous.is_some() {
            return Err(Error::InvalidClusterMap {
                reason: "a membership change is already running".into(),
            });
        }
        let ids = self.nodes.iter().map(|n| n.id).collect();
        let departing = self
            .nodes
            .iter()
            .filter(|n| !nodes.iter().any(|m| m.id == n.id))
            .cloned()
            .collect();
        ClusterMap::new(self.epoch + 1, nodes, self.partitioner.clone())?
            .with_previous(ids, departing)
    }

    /// The end of the change in progress: the next epoch, placing keys on the members only.
    pub fn finish_change(&self) -> Result<Self> {
        if self.previous.is_none() {
            return Err(Error::InvalidClusterMap {
                reason: "no membership change is running".into(),
            });
        }
        ClusterMap::new(self.epoch + 1, self.nodes.clone(), self.partitioner.clone())
    }

    /// Whether a membership change is running.
    pub fn is_changing(&self) -> bool {
        self.previous.is_some()
    }

    /// While a change runs, the ids of the members keys were placed on before it.
    pub fn previous_members(&self) -> Option<&[NodeId]> {
        self.previous.as_ref().map(|(ids, _)| ids.as_slice())
    }

    /// While a change runs, like [`owners_into`](Self::owners_into) under the member set keys
    /// were placed on before it; `false` (and `out` left empty) when no change runs.
    pub fn previous_owners_into(&self, key: &[u8], n: usize, out: &mut Vec<NodeId>) -> bool {
        out.clear();
        match &self.previous {
            Some((_, layout)) => {
                layout.owners(key_hash(key), n, out);
                true
            }
            None => false,
        }
    }

    /// The map's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// All members, sorted by id.
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a map has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The member with this id, or while a change runs, the departing previous member.
    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        fn find(nodes: &[NodeInfo], id: NodeId) -> Option<&NodeInfo> {
            let at = nodes.binary_search_by_key(&id, |n| n.id).ok()?;
            Some(&nodes[at])
        }
        find(&self.nodes, id).or_else(|| find(&self.departing, id))
    }

    /// Whether `id` is a member (not only a departing one).
    pub fn is_member(&self, id: NodeId) -> bool {
        self.nodes.binary_search_by_key(&id, |n| n.id).is_ok()
    }

    /// While a change runs, the previous members that are not members any more.
    pub fn departing(&self) -> &[NodeInfo] {
        &self.departing
    }

    /// The partitioner placing keys.
    pub fn partitioner(&self) -> &Arc<dyn Partitioner> {
        &self.partitioner
    }

    /// Up to `n` distinct owners of `key`, primary first.
    pub fn owners(&self, key: &str, n: usize) -> Vec<NodeId> {
        let mut out = Vec::with_capacity(n.min(self.nodes.len()));
        self.owners_into(key.as_bytes(), n, &mut out);
        out
    }

    /// Like [`owners`](Self::owners) but writes into `out` (cleared first), for hot paths.
    pub fn owners_into(&self, key: &[u8], n: usize, out: &mut Vec<NodeId>) {
        out.clear();
        self.layout.owners(key_hash(key), n, out);
    }

    /// The same membership under a new epoch, with `node` added (or its address updated).
    pub fn with_node(&self, node: NodeInfo) -> Result<Self> {
        let mut nodes: Vec<NodeInfo> = self
            .nodes
            .iter()
            .filter(|n| n.id != node.id)
            .cloned()
            .collect();
        nodes.push(node);
        ClusterMap::new(self.epoch + 1, nodes, self.partitioner.clone())
    }

    /// The same membership under a new epoch, without `id`.
    pub fn without_node(&self, id: NodeId) -> Result<Self> {
        let nodes = self.nodes.iter().filter(|n| n.id != id).cloned().collect();
        ClusterMap::new(self.epoch + 1, nodes, self.partitioner.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::default_partitioner;

    fn nodes(ids: &[u32]) -> Vec<NodeInfo> {
        ids.iter()
            .map(|&i| NodeInfo {
                id: NodeId(i),
                addr: format!("127.0.0.1:{}", 5100 + i),
            })
            .collect()
    }

    #[test]
    fn maps_are_sorted_and_validated() {
        let map = ClusterMap::new(3, nodes(&[2, 0, 1]), default_partitioner()).unwrap();
        let ids: Vec<u32> = map.nodes().iter().map(|n| n.id.0).collect();
        assert_eq!(ids, [0, 1, 2]);
        assert_eq!(map.node(NodeId(1)).unwrap().addr, "127.0.0.1:5101");
        assert!(map.node(NodeId(9)).is_none());
        assert!(ClusterMap::new(1, vec![], default_partitioner()).is_err());
        let dup = ClusterMap::new(1, nodes(&[1, 1]), default_partitioner()).unwrap_err();
        assert_eq!(dup.code(), "invalid_cluster_map");
    }

    #[test]
    fn owners_are_distinct_members_and_capped_at_cluster_size() {
        let map = ClusterMap::new(1, nodes(&[0, 1, 2]), default_partitioner()).unwrap();
        for key in ["a", "b", "user:42", "ключ"] {
            let owners = map.owners(key, 5);
            assert_eq!(owners.len(), 3);
            let mut sorted = owners.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted, [NodeId(0), NodeId(1), NodeId(2)]);
        }
    }

    #[test]
    fn a_change_places_keys_on_both_member_sets_until_it_finishes() {
        let map = ClusterMap::new(1, nodes(&[0, 1, 2]), default_partitioner()).unwrap();
        assert!(!map.is_changing());
        let mut old = Vec::new();
        assert!(!map.previous_owners_into(b"k", 3, &mut old));
        let joining = map.begin_change(nodes(&[0, 1, 2, 3])).unwrap();
        assert_eq!(joining.epoch(), 2);
        assert!(joining.is_changing());
        assert!(joining.begin_change(nodes(&[0, 1])).is_err());
        // Under the change, a key's previous owners are its owners under the old map.
        let (mut new, mut moved) = (Vec::new(), 0);
        let keys = 4000;
        for i in 0..keys {
            let key = format!("key{i}");
            assert!(joining.previous_owners_into(key.as_bytes(), 2, &mut old));
            assert_eq!(old, map.owners(&key, 2));
            joining.owners_into(key.as_bytes(), 2, &mut new);
            moved += new.iter().filter(|n| !old.contains(n)).count();
        }
        // Only the copies the new node takes move: it ends up holding about a quarter of them.
        let copies = 2 * keys;
        assert!(
            moved > copies / 8 && moved < copies * 3 / 8,
            "{moved} of {copies}"
        );
        // A member that leaves stays reachable while the change runs, then is gone.
        let leaving = map.begin_change(nodes(&[0, 2])).unwrap();
        assert!(!leaving.is_member(NodeId(1)));
        assert_eq!(leaving.node(NodeId(1)).unwrap().addr, "127.0.0.1:5101");
        assert_eq!(leaving.departing().len(), 1);
        let left = ClusterMap::from_spec(&leaving.spec()).unwrap();
        assert_eq!(left.departing(), leaving.departing());
        assert!(leaving.finish_change().unwrap().node(NodeId(1)).is_none());
        let done = joining.finish_change().unwrap();
        assert_eq!(
            (done.epoch(), done.is_changing(), done.len()),
            (3, false, 4)
        );
        assert!(done.finish_change().is_err());
    }

    #[test]
    fn after_joins_the_default_partitioner_spreads_keys_within_a_tenth_of_the_mean() {
        let mut map = ClusterMap::new(1, nodes(&[0, 1, 2]), default_partitioner()).unwrap();
        for joined in 3..6 {
            let mut members = map.nodes().to_vec();
            members.extend(nodes(&[joined]));
            map = map.begin_change(members).unwrap().finish_change().unwrap();
            let mut held = vec![0usize; map.len()];
            let mut owners = Vec::new();
            for i in 0..60_000 {
                map.owners_into(format!("user:{i}").as_bytes(), 3, &mut owners);
                for n in &owners {
                    held[n.0 as usize] += 1;
                }
            }
            let mean = held.iter().sum::<usize>() as f64 / held.len() as f64;
            let most = *held.iter().max().unwrap() as f64;
            assert!(most <= 1.1 * mean, "{} nodes: {held:?}", map.len());
        }
    }

    #[test]
    fn a_spec_rebuilds_the_same_map() {
        let map = ClusterMap::new(1, nodes(&[0, 1, 2]), default_partitioner()).unwrap();
        let changing = map.begin_change(nodes(&[1, 2, 5])).unwrap();
        let spec = changing.spec();
        let json = serde_json::to_string(&spec).unwrap();
        let again = ClusterMap::from_spec(&serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!(again.spec(), spec);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for key in ["a", "b", "user:42", "ключ"] {
            assert_eq!(again.owners(key, 2), changing.owners(key, 2));
            changing.previous_owners_into(key.as_bytes(), 2, &mut a);
            again.previous_owners_into(key.as_bytes(), 2, &mut b);
            assert_eq!(a, b);
        }
        let unknown = MapSpec {
            partitioner: "nope".into(),
            ..spec
        };
        assert!(ClusterMap::from_spec(&unknown).is_err());
    }

    #[test]
    fn membership_changes_bump_the_epoch() {
        let map = ClusterMap::new(1, nodes(&[0, 1]), default_partitioner()).unwrap();
        let grown = map.with_node(nodes(&[7]).remove(0)).unwrap();
        assert_eq!((grown.epoch(), grown.len()), (2, 3));
        let shrunk = grown.without_node(NodeId(0)).unwrap();
        assert_eq!((shrunk.epoch(), shrunk.len()), (3, 2));
        assert!(shrunk
            .without_node(NodeId(1))
            .unwrap()
            .without_node(NodeId(7))
            .is_err());
    }
}
