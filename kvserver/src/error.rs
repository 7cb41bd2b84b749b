//! Errors of the node and the API, and the one place that maps them to HTTP statuses.

use hyper::StatusCode;
use kvcore::{ErrorCode, NodeId};
use kvnet::{CallError, RemoteError};

/// Why a node could not carry out a client's request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The request itself was refused by kvcore (bad key, bad value, budget full, ...).
    #[error(transparent)]
    Core(#[from] kvcore::Error),
    /// The request could not be parsed or cannot be carried out as asked.
    #[error("{message}")]
    BadRequest {
        /// What kind of problem (`malformed_json`, `invalid_request`, `not_an_integer`, ...).
        code: ErrorCode,
        /// What was wrong.
        message: String,
    },
    /// The key does not exist.
    #[error("key {key:?} not found")]
    NotFound {
        /// The key.
        key: String,
    },
    /// No such endpoint.
    #[error("no endpoint {path}")]
    NoRoute {
        /// The path asked for.
        path: String,
    },
    /// The endpoint exists but not with this method.
    #[error("method {method} is not allowed on {path}; allowed: {allowed}")]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The path.
        path: String,
        /// Methods the endpoint accepts, comma-separated.
        allowed: &'static str,
    },
    /// The request body is larger than the limit.
    #[error("request body is over the limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The node owning the key could not be reached; the request was not applied.
    #[error("node {node} owning the key is unavailable: {reason}")]
    OwnerUnavailable {
        /// The owner.
        node: NodeId,
        /// What the transport reported.
        reason: String,
    },
    /// The owner did not answer a read in time.
    #[error("node {node} owning the key did not answer in time: {reason}")]
    OwnerTimeout {
        /// The owner.
        node: NodeId,
        /// What the transport reported.
        reason: String,
    },
    /// A write was sent but no answer came back: it may or may not have been applied.
    #[error("the write may or may not have been applied: {reason}")]
    OutcomeUnknown {
        /// What happened.
        reason: String,
    },
    /// Fewer than a majority of the key's replicas answered; nothing was changed.
    #[error("{message}")]
    QuorumUnavailable {
        /// Detail.
        message: String,
    },
    /// The operation waited its whole deadline behind others on the same key; nothing was changed.
    #[error("{message}")]
    Overloaded {
        /// Detail.
        message: String,
    },
    /// A peer request reached a node that does not own the key, with no hops left to forward it.
    #[error("{message}")]
    Misdirected {
        /// Detail.
        message: String,
    },
    /// The node is stopping and did not carry the request out.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// This node was removed from the cluster and serves nothing.
    #[error("node {node} was removed from the cluster; ask another node")]
    Removed {
        /// This node.
        node: kvcore::NodeId,
    },
    /// An error answered by the replica that handled the request, passed on as it is.
    #[error("{}", .0.message)]
    Remote(RemoteError),
}

impl Error {
    /// A refused request with this code.
    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Error::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// The error of a failed call to a replica: a transport failure, or the replica's own error.
    pub fn from_call(e: CallError, is_write: bool) -> Self {
        match e {
            CallError::Remote(remote) => Error::Remote(remote),
            CallError::Unreachable { node, reason } => Error::OwnerUnavailable { node, reason },
            e @ (CallError::Timeout { .. } | CallError::Broken { .. }) if is_write => {
                Error::OutcomeUnknown {
                    reason: e.to_string(),
                }
            }
            CallError::Timeout { node, .. } | CallError::Broken { node, .. } => {
                Error::OwnerTimeout {
                    node,
                    reason: e.to_string(),
                }
            }
        }
    }

    /// The stable code clients see.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Core(e) => e.code(),
            Error::BadRequest { code, .. } => *code,
            Error::NotFound { .. } => ErrorCode::NotFound,
            Error::NoRoute { .. } => ErrorCode::NoRoute,
            Error::MethodNotAllowed { .. } => ErrorCode::MethodNotAllowed,
            Error::BodyTooLarge { .. } => ErrorCode::BodyTooLarge,
            Error::OwnerUnavailable { .. } => ErrorCode::OwnerUnavailable,
            Error::OwnerTimeout { .. } => ErrorCode::OwnerTimeout,
            Error::OutcomeUnknown { .. } => ErrorCode::OutcomeUnknown,
            Error::QuorumUnavailable { .. } => ErrorCode::QuorumUnavailable,
            Error::Overloaded { .. } => ErrorCode::Overloaded,
            Error::Misdirected { .. } => ErrorCode::Misdirected,
            Error::ShuttingDown => ErrorCode::ShuttingDown,
            Error::Removed { .. } => ErrorCode::NodeRemoved,
            Error::Remote(r) => r.code,
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        status(self.code())
    }

    /// The error as a peer protocol answer.
    pub fn to_remote(&self) -> RemoteError {
        match self {
            Error::Remote(r) => r.clone(),
            other => RemoteError::new(other.code(), other.to_string()),
        }
    }
}

/// The HTTP status of every error code: the one place that decides it, so a client gets the same
/// status whichever node it asked, and a new code cannot be added without deciding its status.
pub fn status(code: ErrorCode) -> StatusCode {
    use ErrorCode as C;
    match code {
        C::InvalidKey
        | C::UnknownEncoding
        | C::InvalidValue
        | C::MalformedJson
        | C::InvalidRequest
        | C::NotAnInteger
        | C::Overflow
        | C::UnsupportedProtocol => StatusCode::BAD_REQUEST,
        C::Unauthenticated => StatusCode::UNAUTHORIZED,
        C::NotFound | C::NoRoute => StatusCode::NOT_FOUND,
        C::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        C::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        C::VersionMismatch
        | C::KeyExists
        | C::EpochMismatch
        | C::ChangeInProgress
        | C::WouldLoseWrites => StatusCode::CONFLICT,
        C::ValueTooLarge | C::BodyTooLarge | C::BatchTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        C::Misdirected => StatusCode::MISDIRECTED_REQUEST,
        C::OwnerUnavailable
        | C::QuorumUnavailable
        | C::Recovering
        | C::StaleIncarnation
        | C::Overloaded
        | C::TooManyConnections
        | C::ShuttingDown
        | C::NodeRemoved => StatusCode::SERVICE_UNAVAILABLE,
        C::OwnerTimeout | C::OutcomeUnknown => StatusCode::GATEWAY_TIMEOUT,
        C::MemoryFull => StatusCode::INSUFFICIENT_STORAGE,
        C::InvalidClusterMap | C::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        C::Unrecognized => StatusCode::BAD_GATEWAY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_errors_keep_their_local_status() {
        let local = [
            Error::Core(kvcore::Error::InvalidKey { reason: "x".into() }),
            Error::Core(kvcore::Error::MemoryFull {
                needed: 1,
                available: 0,
                max_memory: 1,
            }),
            Error::Core(kvcore::Error::ValueTooLarge { size: 2, limit: 1 }),
            Error::OwnerUnavailable {
                node: NodeId(1),
                reason: "down".into(),
            },
            Error::OutcomeUnknown { reason: "t".into() },
            Error::Misdirected {
                message: "m".into(),
            },
        ];
        for e in local {
            let remote = Error::Remote(e.to_remote());
            assert_eq!(remote.status(), e.status(), "{e}");
            assert_eq!(remote.code(), e.code());
        }
        let unknown = Error::Remote(RemoteError::new(
            ErrorCode::from_name("from_the_future"),
            "?",
        ));
        assert_eq!(unknown.status(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn every_code_has_a_deliberate_status() {
        for &code in ErrorCode::ALL {
            let s = status(code);
            assert!(s.is_client_error() || s.is_server_error(), "{code}: {s}");
            assert_ne!(
                s,
                StatusCode::BAD_GATEWAY,
                "{code} fell through to the fallback"
            );
        }
    }

    #[test]
    fn hardening_codes_have_their_http_statuses() {
        assert_eq!(status(ErrorCode::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(
            status(ErrorCode::RequestTimeout),
            StatusCode::REQUEST_TIMEOUT
        );
        assert_eq!(
            status(ErrorCode::TooManyConnections),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(ErrorCode::BodyTooLarge),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            status(ErrorCode::BatchTooLarge),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[test]
    fn write_timeouts_are_ambiguous_and_read_timeouts_are_not() {
        let timeout = || CallError::Timeout {
            node: NodeId(2),
            timeout: std::time::Duration::from_secs(1),
        };
        assert_eq!(
            Error::from_call(timeout(), true).code(),
            ErrorCode::OutcomeUnknown
        );
        assert_eq!(
            Error::from_call(timeout(), false).code(),
            ErrorCode::OwnerTimeout
        );
        let down = CallError::Unreachable {
            node: NodeId(2),
            reason: "refused".into(),
        };
        let e = Error::from_call(down, true);
        assert_eq!(
            (e.code(), e.status()),
            (ErrorCode::OwnerUnavailable, StatusCode::SERVICE_UNAVAILABLE)
        );
    }
}
