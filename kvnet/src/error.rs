//! Errors of peer calls: the remote node's own answer, kept apart from transport failures.

use std::time::Duration;

use kvcore::{ErrorCode, NodeId};
use serde::{Deserialize, Serialize};

/// An error answered by the remote node itself (as opposed to a transport failure).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RemoteError {
    /// What went wrong, as in the client API.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

impl RemoteError {
    /// An error with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RemoteError {
            code,
            message: message.into(),
        }
    }
}

impl From<kvcore::Error> for RemoteError {
    fn from(e: kvcore::Error) -> Self {
        RemoteError::new(e.code(), e.to_string())
    }
}

/// Why a peer call has no answer from the remote node, or the remote's own error.
///
/// Transport failures are kept apart from the remote's answer, and among them the ones where the
/// request may have been applied ([`CallError::may_have_applied`]) from the ones where it
/// certainly was not: a client must never be told a write failed when it may have succeeded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
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

impl CallError {
    /// Whether the request may have taken effect on the remote node.
    pub fn may_have_applied(&self) -> bool {
        match self {
            CallError::Unreachable { .. } | CallError::Remote(_) => false,
            CallError::Timeout { .. } | CallError::Broken { .. } => true,
        }
    }

    /// The remote's error code, if the remote answered with an error.
    pub fn remote_code(&self) -> Option<ErrorCode> {
        match self {
            CallError::Remote(e) => Some(e.code),
            _ => None,
        }
    }
}
