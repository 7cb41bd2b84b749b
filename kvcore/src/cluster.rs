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
}

impl fmt::Debug for ClusterMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterMap")
            .field("epoch", &self.epoch)
            .field("nodes", &self.nodes)
            .field("partitioner", &self.partitioner.name())
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
        })
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

    /// The member with this id.
    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes
            .binary_search_by_key(&id, |n| n.id)
            .ok()
            .map(|i| &self.nodes[i])
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
