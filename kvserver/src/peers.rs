//! Typed calls from this node to its peers, with this node's header on every frame.

use std::sync::Arc;

use kvcore::{NodeId, NodeInfo};
use kvnet::{CallError, Frame, Header, Peers, Rpc, Transport};

use crate::incarnations::Incarnation;
use crate::topology::Topology;

/// Sends this node's requests: builds the frame header (sender, incarnation, current epoch,
/// request id, hops) and looks peers up in the current map.
#[derive(Debug)]
pub struct PeerClient {
    peers: Peers,
    topology: Arc<Topology>,
    incarnation: Arc<Incarnation>,
}

impl PeerClient {
    /// A client sending through `transport` on behalf of the node described by `topology`,
    /// in its current incarnation.
    pub fn new(
        transport: Arc<dyn Transport>,
        topology: Arc<Topology>,
        incarnation: Arc<Incarnation>,
    ) -> Self {
        PeerClient {
            peers: Peers::new(transport),
            topology,
            incarnation,
        }
    }

    /// This node.
    pub fn me(&self) -> NodeId {
        self.topology.me()
    }

    /// The header of a frame sent by this node.
    pub fn header(&self, request_id: u64, hops: u8) -> Header {
        Header {
            from: self.topology.me(),
            incarnation: self.incarnation.get(),
            epoch: self.topology.epoch(),
            request_id,
            hops,
        }
    }

    /// Encodes `request` once, for sending to one or more peers.
    pub fn frame<R: Rpc>(&self, request_id: u64, hops: u8, request: &R) -> Frame<R> {
        Frame::encode(&self.header(request_id, hops), request)
    }

    /// Sends an encoded frame to `to`.
    pub async fn send<R: Rpc>(
        &self,
        to: &NodeInfo,
        frame: &Frame<R>,
    ) -> Result<R::Reply, CallError> {
        self.peers.send(to, frame).await
    }

    /// Encodes `request` and sends it to member `to` of the current map.
    pub async fn call<R: Rpc>(
        &self,
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
        self.send(&info, &self.frame(request_id, hops, request))
            .await
    }
}

/// A fresh id for a request that no client started (background work).
pub fn new_request_id() -> u64 {
    rand::random()
}
