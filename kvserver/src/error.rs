//! Errors of the node and the API, and the one place that maps them to HTTP statuses.

use hyper::StatusCode;
use kvcore::NodeId;
use kvnet::{ForwardError, RemoteError};

/// Why a node could not carry out a client's request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The request itself was refused by kvcore (bad key, bad value, budget full, ...).
    #[error(transparent)]
    Core(#[from] kvcore::Error),
    /// The request could not be parsed.
    #[error("{message}")]
    BadRequest {
        /// Stable code (`malformed_json`, `invalid_request`, ...).
        code: &'static str,
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
    /// A write was sent to its owner but no answer came back: it may or may not have been applied.
    #[error("the write may or may not have been applied: {reason}")]
    OutcomeUnknown {
        /// What the transport reported.
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
    /// An error answered by the replica that handled the request, passed on as it is.
    #[error("{}", .0.message)]
    Remote(RemoteError),
}

impl Error {
    /// The error of a failed forward: a transport failure, or the owner's own error.
    pub fn from_forward(e: ForwardError, is_write: bool) -> Self {
        match e {
            ForwardError::Remote(remote) => Error::from_remote(remote),
            ForwardError::Unreachable { node, reason } => Error::OwnerUnavailable { node, reason },
            e @ (ForwardError::Timeout { .. } | ForwardError::Broken { .. }) if is_write => {
                Error::OutcomeUnknown {
                    reason: e.to_string(),
                }
            }
            ForwardError::Timeout { node, .. } | ForwardError::Broken { node, .. } => {
                Error::OwnerTimeout {
                    node,
                    reason: e.to_string(),
                }
            }
        }
    }

    /// A remote error; its code keeps the status it has on the remote node.
    pub fn from_remote(remote: RemoteError) -> Self {
        Error::Remote(remote)
    }

    /// The stable code clients see.
    pub fn code(&self) -> &str {
        match self {
            Error::Core(e) => e.code(),
            Error::BadRequest { code, .. } => code,
            Error::NotFound { .. } => "not_found",
            Error::NoRoute { .. } => "no_route",
            Error::MethodNotAllowed { .. } => "method_not_allowed",
            Error::BodyTooLarge { .. } => "body_too_large",
            Error::OwnerUnavailable { .. } => "owner_unavailable",
            Error::OwnerTimeout { .. } => "owner_timeout",
            Error::OutcomeUnknown { .. } => "outcome_unknown",
            Error::Misdirected { .. } => "misdirected",
            Error::QuorumUnavailable { .. } => "quorum_unavailable",
            Error::Overloaded { .. } => "overloaded",
            Error::Remote(r) => &r.code,
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Core(e) => core_status(e),
            Error::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Error::NotFound { .. } | Error::NoRoute { .. } => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Error::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::OwnerUnavailable { .. }
            | Error::QuorumUnavailable { .. }
            | Error::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::OwnerTimeout { .. } | Error::OutcomeUnknown { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Error::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            Error::Remote(r) => remote_status(&r.code),
        }
    }

    /// The error as a peer protocol answer.
    pub fn to_remote(&self) -> RemoteError {
        match self {
            Error::Remote(r) => r.clone(),
            other => RemoteError::new(other.code(), other.to_string()),
        }
    }
}

fn core_status(e: &kvcore::Error) -> StatusCode {
    use kvcore::Error as E;
    match e {
        E::InvalidKey { .. } | E::UnknownEncoding { .. } | E::InvalidValue { .. } => {
            StatusCode::BAD_REQUEST
        }
        E::ValueTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        E::MemoryFull { .. } => StatusCode::INSUFFICIENT_STORAGE,
        E::InvalidClusterMap { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Status for an error code that came from a peer: the status that code has here, so a client
/// sees the same answer whichever node it asked.
fn remote_status(code: &str) -> StatusCode {
    match code {
        "invalid_key" | "unknown_encoding" | "invalid_value" | "malformed_json"
        | "invalid_request" | "not_an_integer" | "overflow" => StatusCode::BAD_REQUEST,
        "value_too_large" | "body_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "memory_full" => StatusCode::INSUFFICIENT_STORAGE,
        "not_found" => StatusCode::NOT_FOUND,
        "owner_unavailable" | "quorum_unavailable" | "recovering" | "overloaded" => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        "owner_timeout" | "outcome_unknown" => StatusCode::GATEWAY_TIMEOUT,
        "misdirected" => StatusCode::MISDIRECTED_REQUEST,
        _ => StatusCode::BAD_GATEWAY,
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
            let remote = Error::from_remote(e.to_remote());
            assert_eq!(remote.status(), e.status(), "{e}");
            assert_eq!(remote.code(), e.code());
        }
        let unknown = Error::from_remote(RemoteError::new("from_the_future", "?"));
        assert_eq!(unknown.status(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn write_timeouts_are_ambiguous_and_read_timeouts_are_not() {
        let timeout = || ForwardError::Timeout {
            node: NodeId(2),
            timeout: std::time::Duration::from_secs(1),
        };
        assert_eq!(
            Error::from_forward(timeout(), true).code(),
            "outcome_unknown"
        );
        assert_eq!(
            Error::from_forward(timeout(), false).code(),
            "owner_timeout"
        );
        let down = ForwardError::Unreachable {
            node: NodeId(2),
            reason: "refused".into(),
        };
        let e = Error::from_forward(down, true);
        assert_eq!(
            (e.code(), e.status()),
            ("owner_unavailable", StatusCode::SERVICE_UNAVAILABLE)
        );
    }
}
