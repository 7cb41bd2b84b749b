//! The current cluster map, swapped whole, and where a key lives in it.

use std::sync::{Arc, RwLock};

use kvcore::{ClusterMap, NodeId, NodeInfo};

/// This node's view of the cluster: the current [`ClusterMap`] (replaced as a whole, never
/// mutated) and how many replicas each key has.
#[derive(Debug)]
pub struct Topology {
    me: NodeId,
    replication_factor: usize,
    map: RwLock<Arc<ClusterMap>>,
}

impl Topology {
    /// The topology of node `me` in `map`, keeping `replication_factor` copies of each key.
    pub fn new(me: NodeId, map: ClusterMap, replication_factor: usize) -> Self {
        Topology {
            me,
            replication_factor: replication_factor.clamp(1, map.len()),
            map: RwLock::new(Arc::new(map)),
        }
    }

    /// This node.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The current map.
    pub fn map(&self) -> Arc<ClusterMap> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The current map's epoch.
    pub fn epoch(&self) -> u64 {
        self.map.read().unwrap_or_else(|p| p.into_inner()).epoch()
    }

    /// Copies kept of each key.
    pub fn replication_factor(&self) -> usize {
        self.replication_factor
    }

    /// Where `key` lives under the current map. Computed once per request and passed along.
    pub fn placement(&self, key: &str) -> Placement {
        let map = self.map();
        let replicas = map.owners(key, self.replication_factor);
        Placement { map, replicas }
    }

    /// Every other member of the cluster.
    pub fn peers(&self) -> Vec<NodeId> {
        self.map()
            .nodes()
            .iter()
            .map(|n| n.id)
            .filter(|&id| id != self.me)
            .collect()
    }
}

/// A key's replicas, primary first, under the map they were computed from.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The map.
    pub map: Arc<ClusterMap>,
    /// The replicas, primary first.
    pub replicas: Vec<NodeId>,
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

    /// Answers needed for a majority of the replicas.
    pub fn quorum(&self) -> usize {
        self.replicas.len() / 2 + 1
    }

    /// The address of a member of the map.
    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.map.node(id)
    }
}
