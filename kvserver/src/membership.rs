//! The cluster's record of its own membership, and the changes made to it.
//!
//! The record lives in the map register ([`MAP_KEY`](crate::topology::MAP_KEY)), a CASPaxos
//! register replicated on every member. A change reads it linearizably, computes the next record
//! from it ([`Membership::join`], [`Membership::remove`], [`Membership::report`],
//! [`Membership::finish`]) and writes that with a compare-and-set on the register's version, so
//! two changes computed from one record cannot both apply, and a change retried after an
//! unknown outcome finds the record already saying what it asks. See `docs/membership.md`.

use std::collections::HashSet;

use kvcore::{ClusterMap, ErrorCode, MapSpec, NodeId, NodeInfo};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The cluster's membership as the map register records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Grows with every write of the record, whether or not placement changes.
    pub version: u64,
    /// The members, the partitioner, the placement epoch and the change in progress.
    pub map: MapSpec,
    /// Copies kept of each key (at most one per member).
    pub replicas: usize,
    /// The id the next node to join gets: ids are never reused.
    pub next_id: u32,
    /// While a change runs: the members that have not yet copied the keys it moves to them.
    #[serde(default)]
    pub copying: Vec<NodeId>,
    /// Whether the running change was forced: its copies take what the live replicas hold,
    /// even short of a majority of a key's previous replicas.
    #[serde(default)]
    pub forced: bool,
    /// Keys copied so far by the running change, or by the last one.
    #[serde(default)]
    pub moved_keys: u64,
    /// Nodes removed for good.
    #[serde(default)]
    pub removed: Vec<NodeId>,
}

/// What a change asks of the record.
#[derive(Debug)]
pub enum Step {
    /// Write this record.
    Write(Membership),
    /// The record already says what the change asks: nothing to write.
    Already,
}

/// The state of a node as `GET /cluster` shows it, from the record's point of view; `None`
/// when the record says nothing special (the failure detector decides).
pub fn recorded_state(record: &Membership, id: NodeId) -> Option<&'static str> {
    let previous = record.map.previous.as_deref().unwrap_or_default();
    if record.map.departing.iter().any(|n| n.id == id) {
        Some("leaving")
    } else if record.map.previous.is_some() && !previous.contains(&id) {
        Some("joining")
    } else {
        None
    }
}

impl Membership {
    /// The record of a cluster created with `map`, keeping `replicas` copies of each key.
    pub fn initial(map: MapSpec, replicas: usize) -> Self {
        let next_id = map
            .nodes
            .iter()
            .map(|n| n.id.0 + 1)
            .max()
            .unwrap_or_default();
        let copying = match &map.previous {
            Some(_) => map.nodes.iter().map(|n| n.id).collect(),
            None => Vec::new(),
        };
        Membership {
            version: 1,
            map,
            replicas: replicas.max(1),
            next_id,
            copying,
            forced: false,
            moved_keys: 0,
            removed: Vec::new(),
        }
    }

    /// What orders two records: the epoch, then the version.
    pub fn version_key(&self) -> (u64, u64) {
        (self.map.epoch, self.version)
    }

    /// Whether a change is running.
    pub fn is_changing(&self) -> bool {
        self.map.previous.is_some()
    }

    fn cluster_map(&self) -> Result<ClusterMap, Error> {
        ClusterMap::from_spec(&self.map).map_err(Error::Core)
    }

    /// The record with the change to member set `nodes` begun.
    fn begin(&self, nodes: Vec<NodeInfo>) -> Result<Membership, Error> {
        let map = self.cluster_map()?.begin_change(nodes)?;
        Ok(Membership {
            version: self.version + 1,
            copying: map.nodes().iter().map(|n| n.id).collect(),
            map: map.spec(),
            forced: false,
            moved_keys: 0,
            ..self.clone()
        })
    }

    /// The member or departing node listening on `addr`.
    pub fn node_at(&self, addr: &str) -> Option<NodeId> {
        self.map
            .nodes
            .iter()
            .chain(&self.map.departing)
            .find(|n| n.addr == addr)
            .map(|n| n.id)
    }

    /// Adds a node listening on `addr`: it gets the next free id. A node already in the map at
    /// that address keeps its id (a joining node that restarted asks again).
    pub fn join(&self, addr: &str) -> Result<Step, Error> {
        if self.node_at(addr).is_some() {
            return Ok(Step::Already);
        }
        if self.is_changing() {
            return Err(change_in_progress(self));
        }
        if self.next_id >= 1 << 24 {
            return Err(Error::bad_request(
                ErrorCode::InvalidRequest,
                "node ids are exhausted (at most 2^24 nodes ever join a cluster)",
            ));
        }
        let mut nodes = self.map.nodes.clone();
        nodes.push(NodeInfo {
            id: NodeId(self.next_id),
            addr: addr.to_owned(),
        });
        let mut next = self.begin(nodes)?;
        next.next_id += 1;
        Ok(Step::Write(next))
    }

    /// Removes node `id`. Alive, it hands its keys over; down (`down` says which nodes are),
    /// its keys are copied from the other replicas. Refused if some key could be left without
    /// a majority of its copies to take them from, unless `force`. Removing a node that a
    /// running change is adding undoes that change's part for it (the change's new member set
    /// loses it; the copies start over).
    pub fn remove(
        &self,
        id: NodeId,
        force: bool,
        down: impl Fn(NodeId) -> bool,
    ) -> Result<Step, Error> {
        let member = self.map.nodes.iter().any(|n| n.id == id);
        if !member {
            let known = self.removed.contains(&id) || self.map.departing.iter().any(|n| n.id == id);
            if known {
                return Ok(Step::Already);
            }
            return Err(Error::bad_request(
                ErrorCode::NotFound,
                format!("node {id} is not a member of the cluster"),
            ));
        }
        if self.map.nodes.len() == 1 {
            return Err(Error::bad_request(
                ErrorCode::InvalidRequest,
                "the last member of a cluster cannot be removed",
            ));
        }
        let nodes: Vec<NodeInfo> = self
            .map
            .nodes
            .iter()
            .filter(|n| n.id != id)
            .cloned()
            .collect();
        if let Some(previous) = &self.map.previous {
            if previous.contains(&id) {
                return Err(change_in_progress(self));
            }
            // Retarget the running change: the same previous members, a new member set
            // without the node it was adding, at the next epoch.
            let previous_nodes: Vec<NodeInfo> = self
                .map
                .nodes
                .iter()
                .chain(&self.map.departing)
                .filter(|n| previous.contains(&n.id))
                .cloned()
                .collect();
            let stable = ClusterMap::new(
                self.map.epoch,
                previous_nodes,
                self.cluster_map()?.partitioner().clone(),
            )?;
            let map = stable.begin_change(nodes)?;
            return Ok(Step::Write(Membership {
                version: self.version + 1,
                copying: map.nodes().iter().map(|n| n.id).collect(),
                map: map.spec(),
                removed: extend(&self.removed, id),
                moved_keys: 0,
                ..self.clone()
            }));
        }
        let r = self.replicas.min(self.map.nodes.len());
        let down: Vec<NodeId> = self
            .map
            .nodes
            .iter()
            .map(|n| n.id)
            .filter(|&n| down(n))
            .collect();
        if !force && down.len() > (r - 1) / 2 {
            let what = if down.len() >= r {
                "may be left with no copy at all"
            } else {
                "could not be copied from a majority of their replicas"
            };
            return Err(Error::bad_request(
                ErrorCode::WouldLoseWrites,
                format!(
                    "nodes {down:?} are down: with {r} copies of each key, some keys {what}; \
                     bring nodes back first, or remove with \"force\": true, which may lose \
                     acknowledged writes of those keys"
                ),
            ));
        }
        let mut next = self.begin(nodes)?;
        next.forced = force;
        Ok(Step::Write(next))
    }

    /// Records that member `id` has copied the keys the running change moves to it (`moved`
    /// of them).
    pub fn report(&self, epoch: u64, id: NodeId, moved: u64) -> Step {
        if self.map.epoch != epoch || !self.copying.contains(&id) {
            return Step::Already;
        }
        Step::Write(Membership {
            version: self.version + 1,
            copying: self.copying.iter().copied().filter(|&n| n != id).collect(),
            moved_keys: self.moved_keys + moved,
            ..self.clone()
        })
    }

    /// Ends the change of epoch `epoch` once every member has copied its keys: the next epoch
    /// places keys on the members only.
    pub fn finish(&self, epoch: u64) -> Result<Step, Error> {
        if self.map.epoch != epoch || !self.is_changing() || !self.copying.is_empty() {
            return Ok(Step::Already);
        }
        let map = self.cluster_map()?.finish_change()?;
        let mut removed = self.removed.clone();
        removed.extend(self.map.departing.iter().map(|n| n.id));
        let unique: HashSet<NodeId> = removed.drain(..).collect();
        let mut removed: Vec<NodeId> = unique.into_iter().collect();
        removed.sort();
        Ok(Step::Write(Membership {
            version: self.version + 1,
            map: map.spec(),
            forced: false,
            removed,
            ..self.clone()
        }))
    }
}

fn extend(ids: &[NodeId], id: NodeId) -> Vec<NodeId> {
    let mut ids = ids.to_vec();
    if !ids.contains(&id) {
        ids.push(id);
        ids.sort();
    }
    ids
}

fn change_in_progress(record: &Membership) -> Error {
    Error::bad_request(
        ErrorCode::ChangeInProgress,
        format!(
            "a membership change (epoch {}) is running; {} member(s) still copying: ask again \
             once it has finished",
            record.map.epoch,
            record.copying.len()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvcore::partition;

    fn record(ids: &[u32]) -> Membership {
        let nodes = ids
            .iter()
            .map(|&i| NodeInfo {
                id: NodeId(i),
                addr: format!("n{i}:1"),
            })
            .collect();
        let map = ClusterMap::new(1, nodes, partition::default_partitioner()).unwrap();
        Membership::initial(map.spec(), 3)
    }

    fn written(step: Result<Step, Error>) -> Membership {
        match step.unwrap() {
            Step::Write(r) => r,
            Step::Already => panic!("nothing to write"),
        }
    }

    #[test]
    fn a_join_takes_the_next_id_and_runs_until_every_member_copied() {
        let r = record(&[0, 1, 2]);
        let joining = written(r.join("n3:1"));
        assert_eq!((joining.map.epoch, joining.next_id), (2, 4));
        assert_eq!(recorded_state(&joining, NodeId(3)), Some("joining"));
        assert_eq!(recorded_state(&joining, NodeId(0)), None);
        // The same join again is harmless; another change waits.
        assert!(matches!(joining.join("n3:1"), Ok(Step::Already)));
        let busy = joining.join("n4:1").unwrap_err();
        assert_eq!(busy.code(), ErrorCode::ChangeInProgress);
        assert!(matches!(joining.finish(2), Ok(Step::Already)));
        let mut now = joining.clone();
        for id in [0, 1, 2, 3] {
            now = match now.report(2, NodeId(id), 10) {
                Step::Write(r) => r,
                Step::Already => panic!("report of {id} not written"),
            };
            assert!(matches!(now.report(2, NodeId(id), 10), Step::Already));
        }
        assert_eq!(now.moved_keys, 40);
        let done = written(now.finish(2));
        assert_eq!((done.map.epoch, done.map.nodes.len()), (3, 4));
        assert!(!done.is_changing());
        assert!(matches!(done.finish(2), Ok(Step::Already)));
    }

    #[test]
    fn a_removal_checks_what_could_be_lost_and_can_undo_a_join() {
        let r = record(&[0, 1, 2, 3]);
        let leaving = written(r.remove(NodeId(1), false, |_| false));
        assert_eq!(recorded_state(&leaving, NodeId(1)), Some("leaving"));
        assert!(matches!(
            leaving.remove(NodeId(1), false, |_| false),
            Ok(Step::Already)
        ));
        // Two of four nodes down at R = 3: some key has two of its three replicas down.
        let refused = r
            .remove(NodeId(1), false, |n| n == NodeId(1) || n == NodeId(2))
            .unwrap_err();
        assert_eq!(refused.code(), ErrorCode::WouldLoseWrites);
        assert!(r
            .remove(NodeId(1), true, |n| n == NodeId(1) || n == NodeId(2))
            .is_ok());
        assert_eq!(
            r.remove(NodeId(9), false, |_| false).unwrap_err().code(),
            ErrorCode::NotFound
        );
        // Removing the node a join is adding retargets the change back to the old members.
        let joining = written(r.join("n4:1"));
        let undone = written(joining.remove(NodeId(4), false, |_| false));
        assert_eq!(undone.map.epoch, joining.map.epoch + 1);
        assert_eq!(undone.map.nodes.len(), 4);
        assert!(undone.removed.contains(&NodeId(4)));
        assert_eq!(
            joining
                .remove(NodeId(0), false, |_| false)
                .unwrap_err()
                .code(),
            ErrorCode::ChangeInProgress
        );
    }
}
