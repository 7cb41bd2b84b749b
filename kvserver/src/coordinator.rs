//! The coordinator: where a client's operation runs.
//!
//! A replica of the key runs it itself; any other node forwards it to a replica, at most
//! [`MAX_HOPS`] times in all. Writes go to the key's primary, so that one node proposes for a key
//! and concurrent writes queue there instead of duelling with ballots; when the primary cannot
//! be reached, or the hops are spent, another replica proposes. Any node reads a majority of the
//! replicas directly (one round trip when they agree).

use std::sync::Arc;

use kvcore::{Entry, ErrorCode, NodeId};
use kvnet::rpc::{Delete, Get};
use kvnet::{CallError, MAX_HOPS};

use crate::clock::Clock;
use crate::detector::FailureDetector;
use crate::error::Error;
use crate::metrics::{bump, Metrics};
use crate::operation::Operation;
use crate::peers::PeerClient;
use crate::proposer::Proposer;
use crate::topology::{Placement, Topology};

/// Routes client operations to the key's replicas.
#[derive(Debug)]
pub struct Coordinator {
    topology: Arc<Topology>,
    proposer: Arc<Proposer>,
    client: Arc<PeerClient>,
    detector: Arc<FailureDetector>,
    metrics: Arc<Metrics>,
    clock: Arc<Clock>,
}

impl Coordinator {
    /// A coordinator proposing with `proposer` and forwarding through `client`.
    pub fn new(
        topology: Arc<Topology>,
        proposer: Arc<Proposer>,
        client: Arc<PeerClient>,
        detector: Arc<FailureDetector>,
        metrics: Arc<Metrics>,
        clock: Arc<Clock>,
    ) -> Self {
        Coordinator {
            topology,
            proposer,
            client,
            detector,
            metrics,
            clock,
        }
    }

    fn me(&self) -> NodeId {
        self.topology.me()
    }

    /// Reads `key`, linearizably. `hops` is how often the request was already forwarded.
    ///
    /// A value that has expired by this node's clock is deleted (on the condition that it is
    /// still the version read) before the key is reported missing, so no node, whatever its
    /// clock, reads it afterwards. A value written again meanwhile is read again.
    pub async fn get(&self, key: &str, hops: u8, request_id: u64) -> Result<Option<Entry>, Error> {
        for _ in 0..3 {
            let entry = match self.get_anywhere(key, hops, request_id).await? {
                Some(entry) if entry.expires.is_some_and(|at| at <= self.clock.now_ms()) => entry,
                live => return Ok(live),
            };
            let delete = Delete {
                key: key.into(),
                if_version: Some(entry.version),
            };
            if self.write(delete, hops, request_id).await?.is_some() {
                return Ok(None);
            }
        }
        Err(Error::Overloaded {
            message: format!("key {key:?} kept changing while its expired value was removed"),
        })
    }

    async fn get_anywhere(
        &self,
        key: &str,
        hops: u8,
        request_id: u64,
    ) -> Result<Option<Entry>, Error> {
        let mut placed = 0;
        loop {
            let placement = self.topology.placement(key);
            let read = self.get_placed(&placement, key, hops, request_id).await;
            if !self.place_again(&placement, &read, &mut placed) {
                return read;
            }
        }
    }

    /// Whether an operation placed as `placement` that ended with `result` runs again: it
    /// applied nothing, and this node adopted a later map meanwhile (a replica refused the
    /// operation for its epoch, and this node fetched that replica's map).
    fn place_again<T>(
        &self,
        placement: &Placement,
        result: &Result<T, Error>,
        placed: &mut u32,
    ) -> bool {
        let Err(e) = result else {
            return false;
        };
        use kvcore::ErrorCode as C;
        let applied_nothing = matches!(
            e.code(),
            C::QuorumUnavailable
                | C::OwnerUnavailable
                | C::EpochMismatch
                | C::Misdirected
                | C::StaleIncarnation
                | C::Recovering
        );
        *placed += 1;
        applied_nothing && *placed <= 3 && self.topology.epoch() != placement.map.epoch()
    }

    async fn get_placed(
        &self,
        placement: &Placement,
        key: &str,
        hops: u8,
        request_id: u64,
    ) -> Result<Option<Entry>, Error> {
        let op = Get { key: key.into() };
        if placement.contains(self.me()) {
            if hops == 0 {
                bump(&self.metrics.local);
            }
            return self.read_as_replica(placement, &op, hops, request_id).await;
        }
        if hops >= MAX_HOPS {
            return Err(self.misdirected(hops));
        }
        if hops == 0 {
            bump(&self.metrics.forwarded);
        }
        if placement.replicas.len() > 1 {
            // A majority answers as it would a replica; only if they disagree does a replica
            // settle it.
            if let Ok(Some(entry)) = self.proposer.fast_read(placement, key, request_id).await {
                return Ok(entry);
            }
        }
        self.forward(placement, &op, hops, request_id).await
    }

    /// Runs a write, linearizably. `hops` is how often the request was already forwarded.
    pub async fn write<O: Operation>(
        &self,
        op: O,
        hops: u8,
        request_id: u64,
    ) -> Result<O::Reply, Error> {
        let mut placed = 0;
        loop {
            let placement = self.topology.placement(op.key());
            let write = self.write_placed(&placement, &op, hops, request_id).await;
            if !self.place_again(&placement, &write, &mut placed) {
                return write;
            }
        }
    }

    async fn write_placed<O: Operation>(
        &self,
        placement: &Placement,
        op: &O,
        hops: u8,
        request_id: u64,
    ) -> Result<O::Reply, Error> {
        let me = self.me();
        if placement.contains(me) && (placement.primary() == me || hops >= MAX_HOPS) {
            if hops == 0 {
                bump(&self.metrics.local);
            }
            return self.proposer.run(placement, op, request_id).await;
        }
        if hops >= MAX_HOPS {
            return Err(self.misdirected(hops));
        }
        if hops == 0 {
            bump(&self.metrics.forwarded);
        }
        self.forward(placement, op, hops, request_id).await
    }

    /// Runs a full round on `key` that changes nothing, so whatever a majority holds is
    /// accepted by every replica under a fresh ballot (one above any replica's promise). For
    /// background work on a replica of the key.
    pub async fn settle(&self, key: &str, request_id: u64) -> Result<Option<Entry>, Error> {
        let placement = self.topology.placement(key);
        let op = Get { key: key.into() };
        self.proposer.run(&placement, &op, request_id).await
    }

    /// A read coordinated by one of the key's replicas.
    async fn read_as_replica(
        &self,
        placement: &Placement,
        op: &Get,
        hops: u8,
        request_id: u64,
    ) -> Result<Option<Entry>, Error> {
        if placement.replicas.len() > 1 {
            if let Some(entry) = self
                .proposer
                .fast_read(placement, &op.key, request_id)
                .await?
            {
                return Ok(entry);
            }
            // The replicas disagree: a write is in flight or a replica lags. A full round
            // settles it; the primary runs it if it can, queued with its own writes, rather
            // than this node outbidding them.
            let primary = placement.primary();
            if primary != self.me() && hops < MAX_HOPS && !self.detector.is_down(primary) {
                if let Some(info) = placement.node(primary) {
                    // The primary must settle it itself: sent with the hops spent.
                    let epoch = placement.map.epoch();
                    let frame = self.client.frame_at(epoch, request_id, MAX_HOPS, op);
                    match self.client.send(info, &frame).await {
                        Ok(entry) => return Ok(entry),
                        Err(e) if e.may_have_applied() => return Err(Error::from_call(e, false)),
                        Err(_) => {}
                    }
                }
            }
        }
        self.proposer.run(placement, op, request_id).await
    }

    /// Sends `op` to the key's replicas in placement order (the primary first), those known to
    /// be down last, until one answers. A replica that was unreachable never received the
    /// request, and one that answered `quorum_unavailable` applied nothing, so trying the next
    /// one is safe even for writes. If none answers and this node is a replica, it proposes.
    async fn forward<O: Operation>(
        &self,
        placement: &Placement,
        op: &O,
        hops: u8,
        request_id: u64,
    ) -> Result<O::Reply, Error> {
        let me = self.me();
        let mut candidates: Vec<NodeId> = placement
            .replicas
            .iter()
            .copied()
            .filter(|&r| r != me)
            .collect();
        candidates.sort_by_key(|&r| self.detector.is_down(r));
        let frame = self
            .client
            .frame_at(placement.map.epoch(), request_id, hops + 1, op);
        let mut last = None;
        for to in candidates {
            let Some(info) = placement.node(to) else {
                continue;
            };
            match self.client.send(info, &frame).await {
                Ok(reply) => return Ok(reply),
                Err(e @ CallError::Unreachable { .. }) => last = Some(e),
                Err(e) if e.remote_code() == Some(ErrorCode::QuorumUnavailable) => last = Some(e),
                Err(e) => return Err(Error::from_call(e, O::WRITES)),
            }
        }
        if placement.contains(me) {
            return self.proposer.run(placement, op, request_id).await;
        }
        Err(match last {
            Some(e) => Error::from_call(e, O::WRITES),
            None => Error::QuorumUnavailable {
                message: "no replica of the key is a member of the cluster map".into(),
            },
        })
    }

    fn misdirected(&self, hops: u8) -> Error {
        Error::Misdirected {
            message: format!(
                "node {} is not a replica of the key and the request was already forwarded {hops} times",
                self.me()
            ),
        }
    }
}
