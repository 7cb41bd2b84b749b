//! [`ClientError`]: why a call of [`Client`](super::Client) or
//! [`AdminClient`](crate::admin::AdminClient) did not succeed.

use kvcore::ErrorCode;

/// Why a call did not succeed.
///
/// The transport's failures ([`Unreachable`](Self::Unreachable),
/// [`OutcomeUnknown`](Self::OutcomeUnknown) without a code) stay apart from the node's answers
/// ([`Api`](Self::Api)). What a caller must know before trying again is said by
/// [`may_have_applied`](Self::may_have_applied) and [`is_transient`](Self::is_transient).
///
/// Expected outcomes are not errors: a missing key is `Ok(None)`, a failed precondition is
/// `Ok(Err(Conflict))` (see [`Client::set_with`](super::Client::set_with)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The node answered with an error, which the client did not retry or retried without
    /// success (503). Nothing was applied, except where the code says otherwise.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error's stable code.
        code: ErrorCode,
        /// The node's explanation, for people.
        message: String,
    },
    /// A write may or may not have been applied: the node answered 504 (`code` is then its
    /// code, `outcome_unknown`), or the request was sent and no answer came back (`code` is
    /// `None`). Read the key to find out. Never retried by the client.
    #[error("the write may or may not have been applied ({node}): {reason}")]
    OutcomeUnknown {
        /// The node the write was sent to.
        node: String,
        /// The node's error code when it answered 504; `None` when no answer came.
        code: Option<ErrorCode>,
        /// The node's message, or what failed.
        reason: String,
    },
    /// No node gave an answer: none could be connected to, or (for a read) none answered in
    /// time. Nothing was applied.
    #[error("cannot reach {node} (after {attempts} attempt(s)): {reason}")]
    Unreachable {
        /// The last node tried.
        node: String,
        /// How many requests were tried, over all the nodes.
        attempts: u32,
        /// What failed the last time.
        reason: String,
    },
    /// What answered is not what the endpoint returns: not a kv node, or one of another
    /// version.
    #[error("{node} answered HTTP {status} with an unexpected body: {reason}")]
    BadAnswer {
        /// The node asked.
        node: String,
        /// The HTTP status.
        status: u16,
        /// What was wrong with the body.
        reason: String,
    },
    /// The client was given something it cannot use (no node, a node address that is not
    /// `host:port`); nothing was sent.
    #[error("{reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
}

impl ClientError {
    /// The node's error code, if it answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            ClientError::OutcomeUnknown { code, .. } => *code,
            _ => None,
        }
    }

    /// The HTTP status the node answered with, if one did.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::BadAnswer { status, .. } => {
                Some(*status)
            }
            ClientError::OutcomeUnknown { code: Some(_), .. } => Some(504),
            _ => None,
        }
    }

    /// Whether asking again later (the same node or another) may succeed: no answer, a node
    /// or quorum that is unavailable for now (503), or a timeout (504). A write that
    /// [`may_have_applied`](Self::may_have_applied) is transient too, but asking again writes
    /// it again.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } | ClientError::OutcomeUnknown { .. } => true,
            ClientError::Api { status, .. } => *status == 503 || *status == 504,
            ClientError::BadAnswer { .. } | ClientError::Config { .. } => false,
        }
    }

    /// Whether the write may have taken effect although it failed: only
    /// [`OutcomeUnknown`](Self::OutcomeUnknown). Every other error of a write means it was not
    /// applied (or, for [`BadAnswer`](Self::BadAnswer), that what answered is not a kv node).
    pub fn may_have_applied(&self) -> bool {
        matches!(self, ClientError::OutcomeUnknown { .. })
    }

    pub(crate) fn config(reason: impl Into<String>) -> Self {
        ClientError::Config {
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: ErrorCode) -> ClientError {
        ClientError::Api {
            status,
            code,
            message: "m".into(),
        }
    }

    #[test]
    fn only_missing_answers_and_unavailable_nodes_are_worth_asking_again() {
        let unreachable = ClientError::Unreachable {
            node: "n:1".into(),
            attempts: 3,
            reason: "refused".into(),
        };
        let unknown = ClientError::OutcomeUnknown {
            node: "n:1".into(),
            code: None,
            reason: "connection reset".into(),
        };
        assert!(unreachable.is_transient() && !unreachable.may_have_applied());
        assert!(unknown.is_transient() && unknown.may_have_applied());
        assert!(api(503, ErrorCode::QuorumUnavailable).is_transient());
        assert!(api(504, ErrorCode::OwnerTimeout).is_transient());
        assert!(!api(409, ErrorCode::ChangeInProgress).is_transient());
        assert!(!api(400, ErrorCode::InvalidValue).is_transient());
        assert!(!api(503, ErrorCode::QuorumUnavailable).may_have_applied());
        assert_eq!(
            api(404, ErrorCode::NotFound).code(),
            Some(ErrorCode::NotFound)
        );
        assert_eq!((unknown.code(), unknown.status()), (None, None));
        let answered = ClientError::OutcomeUnknown {
            node: "n:1".into(),
            code: Some(ErrorCode::OutcomeUnknown),
            reason: "m".into(),
        };
        assert_eq!(
            (answered.code(), answered.status()),
            (Some(ErrorCode::OutcomeUnknown), Some(504))
        );
    }

    #[test]
    fn messages_carry_the_nodes_words_and_code() {
        assert_eq!(
            api(400, ErrorCode::InvalidValue).to_string(),
            "m (invalid_value, HTTP 400)"
        );
        let unreachable = ClientError::Unreachable {
            node: "127.0.0.1:1".into(),
            attempts: 2,
            reason: "connection refused".into(),
        };
        assert_eq!(
            unreachable.to_string(),
            "cannot reach 127.0.0.1:1 (after 2 attempt(s)): connection refused"
        );
    }
}
