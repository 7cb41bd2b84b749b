//! Typed calls from this node to its peers, with this node's header on every frame.

use std::sync::Arc;

use kvcore::{ErrorCode, NodeId, NodeInfo};
use kvnet::rpc::FetchMap;
use kvnet::{CallError, Frame, Header, Peers, Rpc, Transport};

use crate::incarnations::Incarnation;
use crate::membership::Membership;
use crate::request_id;
use crate::telemetry::Telemetry;
use crate::topology::Topology;

/// Sends this node's requests: builds the frame header (sender, incarnation, epoch, request id,
/// hops) and looks peers up in the current map. A peer that refuses a frame for its epoch is
/// asked for its map, which this node adopts if it is later.
#[derive(Debug)]
pub struct PeerClient {
    peers: Peers,
    topology: Arc<Topology>,
    incarnation: Arc<Incarnation>,
    telemetry: Arc<Telemetry>,
    /// Map fetches, one at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl PeerClient {
    /// A client sending through `transport` on behalf of the node described by `topology`,
    /// in its current incarnation, timing its calls in `telemetry`.
    pub fn new(
        transport: Arc<dyn Transport>,
        topology: Arc<Topology>,
        incarnation: Arc<Incarnation>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        PeerClient {
            peers: Peers::new(transport),
            topology,
            incarnation,
            telemetry,
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// This node.
    pub fn me(&self) -> NodeId {
        self.topology.me()
    }

    /// The epoch of this node's map.
    pub fn epoch(&self) -> u64 {
        self.topology.epoch()
    }

    /// The header of a frame sent by this node about the map of epoch `epoch`.
    pub fn header_at(&self, epoch: u64, request_id: u64, hops: u8) -> Header {
        Header {
            from: self.topology.me(),
            incarnation: self.incarnation.get(),
            epoch,
            request_id,
            hops,
        }
    }

    /// Encodes `request` once, for sending to one or more peers, under the current epoch.
    pub fn frame<R: Rpc>(&self, request_id: u64, hops: u8, request: &R) -> Frame<R> {
        self.frame_at(self.topology.epoch(), request_id, hops, request)
    }

    /// Encodes `request` computed from the map of epoch `epoch`: a replica at another epoch
    /// refuses it, so nothing placed under one map is applied under another.
    pub fn frame_at<R: Rpc>(&self, epoch: u64, request_id: u64, hops: u8, request: &R) -> Frame<R> {
        Frame::encode(&self.header_at(epoch, request_id, hops), request)
    }

    /// Sends an encoded frame to `to`. If `to` refuses it for its epoch, this node asks `to`
    /// for its map before returning the refusal, so the caller can place its request again.
    pub async fn send<R: Rpc>(
        &self,
        to: &NodeInfo,
        frame: &Frame<R>,
    ) -> Result<R::Reply, CallError> {
        let timer = self.telemetry.time_peer_call(R::KIND);
        let answer = self.peers.send(to, frame).await;
        drop(timer);
        if let Err(e) = &answer {
            if e.remote_code() == Some(ErrorCode::EpochMismatch) {
                self.fetch_map(to).await;
            }
        }
        answer
    }

    /// Encodes `request` and sends it to member `to` of the current map, under its epoch.
    pub async fn call<R: Rpc>(
        &self,
        to: NodeId,
        request_id: u64,
        hops: u8,
        request: &R,
    ) -> Result<R::Reply, CallError> {
        let epoch = self.topology.epoch();
        self.call_at(epoch, to, request_id, hops, request).await
    }

    /// [`call`](Self::call) under epoch `epoch`.
    pub async fn call_at<R: Rpc>(
        &self,
        epoch: u64,
        to: NodeId,
        request_id: u64,
        hops: u8,
        request: &R,
    ) -> Result<R::Reply, CallError> {
        let Some(info) = self.topology.map().node(to).cloned() else {
            return Err(CallError::Unreachable {
                node: to,
                reason: "not a member of the cluster map".into(),
            });
        };
        let frame = self.frame_at(epoch, request_id, hops, request);
        self.send(&info, &frame).await
    }

    /// Asks `from` for the map it acts on and adopts it if it is later than this node's.
    /// Concurrent fetches wait for each other, and one that finds the map changed while it
    /// waited fetches nothing. Returns whether this node's map changed.
    pub async fn fetch_map(&self, from: &NodeInfo) -> bool {
        let before = self.topology.record().version_key();
        let _turn = self.fetching.lock().await;
        if self.topology.record().version_key() != before {
            return true;
        }
        let frame = self.frame(request_id::current(), 1, &FetchMap);
        let timer = self.telemetry.time_peer_call(FetchMap::KIND);
        let copy = self.peers.send(from, &frame).await;
        drop(timer);
        let copy = match copy {
            Ok(copy) => copy,
            Err(e) => {
                tracing::debug!(error = %e, from = %from.id, "fetching the cluster map failed");
                return false;
            }
        };
        let record: Membership = match serde_json::from_slice(&copy.record) {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(error = %e, from = %from.id, "a peer sent a cluster map that does not decode");
                return false;
            }
        };
        match self.topology.adopt(record) {
            Ok(changed) => changed,
            Err(e) => {
                tracing::warn!(error = %e, from = %from.id, "a peer sent an unusable cluster map");
                false
            }
        }
    }

    /// Brings this node's map up to at least `epoch`: asks `hint` first (the node that showed
    /// it), then the other nodes of the map, until one has it.
    pub async fn catch_up_map(&self, epoch: u64, hint: NodeId) {
        let map = self.topology.map();
        let mut ask: Vec<NodeInfo> = map.node(hint).cloned().into_iter().collect();
        ask.extend(
            map.nodes()
                .iter()
                .chain(map.departing())
                .filter(|n| n.id != hint && n.id != self.me())
                .cloned(),
        );
        for node in ask {
            if self.topology.epoch() >= epoch {
                return;
            }
            self.fetch_map(&node).await;
        }
    }
}

/// A fresh id for a request that no client started (background work).
pub fn new_request_id() -> u64 {
    rand::random()
}
