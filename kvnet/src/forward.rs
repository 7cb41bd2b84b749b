//! The `Forwarder` seam: how a node sends a peer request, and how a node answers one.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use kvcore::{NodeId, NodeInfo};

use crate::message::{Envelope, PeerReply, PeerResult, RemoteError};

/// A boxed, sendable future (the traits here are used as trait objects).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a forwarded request has no answer from the remote node, or the remote's own error.
///
/// Transport failures are kept apart from the remote's answer, and among them the ones where the
/// request may have been applied ([`ForwardError::may_have_applied`]) from the ones where it
/// certainly was not: a client must never be told a write failed when it may have succeeded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ForwardError {
    /// The request was not delivered (connection refused, no route, node not running).
    #[error("node {node} is unreachable: {reason}")]
    Unreachable {
        /// The node.
        node: NodeId,
        /// What the transport reported.
        reason: String,
    },
    /// No answer within the deadline; the request may or may not have been applied.
    #[error("node {node} did not answer within {timeout:?}")]
    Timeout {
        /// The node.
        node: NodeId,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// The connection failed after the request was sent, or the answer could not be decoded;
    /// the request may have been applied.
    #[error("exchange with node {node} failed: {reason}")]
    Broken {
        /// The node.
        node: NodeId,
        /// What went wrong.
        reason: String,
    },
    /// The remote node answered with an error.
    #[error("node answered: {0}")]
    Remote(#[from] RemoteError),
}

impl ForwardError {
    /// Whether the request may have taken effect on the remote node.
    pub fn may_have_applied(&self) -> bool {
        match self {
            ForwardError::Unreachable { .. } | ForwardError::Remote(_) => false,
            ForwardError::Timeout { .. } | ForwardError::Broken { .. } => true,
        }
    }
}

/// Sends peer requests. Passed to a node's constructor; implementations are the HTTP transport
/// ([`HttpForwarder`](crate::HttpForwarder)), the in-process one
/// ([`InProcessNetwork`](crate::InProcessNetwork)), and wrappers such as fault injection.
pub trait Forwarder: Send + Sync + fmt::Debug + 'static {
    /// Sends `envelope` to `to`, which has been forwarded `hops` times including this send.
    fn send<'a>(
        &'a self,
        to: &'a NodeInfo,
        hops: u8,
        envelope: Envelope,
    ) -> BoxFuture<'a, Result<PeerReply, ForwardError>>;
}

/// Answers peer requests: implemented by the node, called by the HTTP endpoint or the
/// in-process transport.
pub trait PeerHandler: Send + Sync + 'static {
    /// Handles a request that has been forwarded `hops` times.
    fn handle(&self, hops: u8, envelope: Envelope) -> BoxFuture<'_, PeerResult>;
}
