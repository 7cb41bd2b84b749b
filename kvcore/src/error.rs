//! The one error type of kvcore.

use crate::value::Encoding;

/// Everything kvcore can refuse.
///
/// Each variant has a stable [`code`](Error::code) that the HTTP layer puts in its JSON error body;
/// only the server decides which status a code maps to.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The key is empty, too long, or otherwise unusable.
    #[error("invalid key: {reason}")]
    InvalidKey {
        /// Why the key was refused.
        reason: String,
    },
    /// The encoding name is not one of the known encodings.
    #[error(
        "unknown encoding {name:?}: expected one of string, integer, float, boolean, binary, json"
    )]
    UnknownEncoding {
        /// The name that was given.
        name: String,
    },
    /// The value does not fit its encoding.
    #[error("value does not match encoding `{encoding}`: {reason}")]
    InvalidValue {
        /// The encoding the value was checked against.
        encoding: Encoding,
        /// What was wrong with it.
        reason: String,
    },
    /// The encoded value is larger than the configured limit.
    #[error("value is {size} bytes, over the limit of {limit} bytes")]
    ValueTooLarge {
        /// Encoded size of the value.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Storing the entry would take the store over its memory budget; nothing was changed.
    #[error("memory budget exhausted: the write needs {needed} more bytes, {available} of {max_memory} are free")]
    MemoryFull {
        /// Additional bytes the write needs.
        needed: u64,
        /// Bytes still free under that limit.
        available: u64,
        /// The limit the write was checked against: the budget, or for a new write in cache
        /// mode its [admission limit](crate::StoreConfig::admission).
        max_memory: u64,
    },
    /// The cluster map is not usable (no nodes, duplicate ids, ...).
    #[error("invalid cluster map: {reason}")]
    InvalidClusterMap {
        /// What was wrong.
        reason: String,
    },
}

impl Error {
    /// A short, stable, machine-readable name for the error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidKey { .. } => ErrorCode::InvalidKey,
            Error::UnknownEncoding { .. } => ErrorCode::UnknownEncoding,
            Error::InvalidValue { .. } => ErrorCode::InvalidValue,
            Error::ValueTooLarge { .. } => ErrorCode::ValueTooLarge,
            Error::MemoryFull { .. } => ErrorCode::MemoryFull,
            Error::InvalidClusterMap { .. } => ErrorCode::InvalidClusterMap,
        }
    }

    pub(crate) fn invalid_value(encoding: Encoding, reason: impl Into<String>) -> Self {
        Error::InvalidValue {
            encoding,
            reason: reason.into(),
        }
    }
}

/// Shorthand for results whose error is kvcore's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

macro_rules! error_codes {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal,)*) => {
        /// Every error code of the system, shared by all crates: what kvcore refuses, what the
        /// peer protocol answers and what the HTTP API reports. The server maps each to an HTTP
        /// status in one exhaustive match, so a code cannot be added without deciding its status.
        ///
        /// On the wire and in JSON a code is its snake_case name, so a node meeting a code from a
        /// newer version still decodes it, as [`ErrorCode::Unrecognized`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[doc = $doc])* $variant,)*
            /// A code this version does not know (sent by a newer node).
            Unrecognized,
        }

        impl ErrorCode {
            /// Every known code.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code's stable name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $name,)*
                    ErrorCode::Unrecognized => "unrecognized",
                }
            }

            /// The code with this name; [`ErrorCode::Unrecognized`] for a name not known here.
            pub fn from_name(name: &str) -> ErrorCode {
                match name {
                    $($name => ErrorCode::$variant,)*
                    _ => ErrorCode::Unrecognized,
                }
            }
        }
    };
}

error_codes! {
    /// The key is empty, too long, or not UTF-8.
    InvalidKey = "invalid_key",
    /// The encoding name is unknown.
    UnknownEncoding = "unknown_encoding",
    /// The value does not match its encoding.
    InvalidValue = "invalid_value",
    /// The value is over the size limit.
    ValueTooLarge = "value_too_large",
    /// The memory budget would be exceeded.
    MemoryFull = "memory_full",
    /// The cluster map is unusable.
    InvalidClusterMap = "invalid_cluster_map",
    /// The request body is not JSON.
    MalformedJson = "malformed_json",
    /// The request is well-formed but of the wrong shape.
    InvalidRequest = "invalid_request",
    /// An increment of a value that is not an integer.
    NotAnInteger = "not_an_integer",
    /// An increment past the 64-bit range.
    Overflow = "overflow",
    /// The key does not exist.
    NotFound = "not_found",
    /// No such endpoint.
    NoRoute = "no_route",
    /// The endpoint does not take this method.
    MethodNotAllowed = "method_not_allowed",
    /// An `if_version` condition failed.
    VersionMismatch = "version_mismatch",
    /// An `if_absent` condition failed.
    KeyExists = "key_exists",
    /// The request body is over the limit.
    BodyTooLarge = "body_too_large",
    /// A batch request names more keys than one batch may hold.
    BatchTooLarge = "batch_too_large",
    /// The request body did not arrive within the body read timeout.
    RequestTimeout = "request_timeout",
    /// A peer request without a valid MAC under the cluster secret; nothing was changed.
    Unauthenticated = "unauthenticated",
    /// The node has as many open connections as it allows.
    TooManyConnections = "too_many_connections",
    /// A request reached a node that is not a replica of its key, with no forwards left.
    Misdirected = "misdirected",
    /// A peer message came from a node with a different cluster map epoch.
    EpochMismatch = "epoch_mismatch",
    /// A membership change was asked for while another one runs; retry once it has finished.
    ChangeInProgress = "change_in_progress",
    /// A membership change that would leave some keys without a majority of their copies;
    /// `"force": true` makes it anyway.
    WouldLoseWrites = "would_lose_writes",
    /// This node was removed from the cluster: it serves nothing any more.
    NodeRemoved = "node_removed",
    /// A peer message in a protocol version this node does not speak.
    UnsupportedProtocol = "unsupported_protocol",
    /// None of the key's replicas could be reached; nothing was applied.
    OwnerUnavailable = "owner_unavailable",
    /// Fewer than a majority of the key's replicas answered; nothing was changed.
    QuorumUnavailable = "quorum_unavailable",
    /// The replica is catching up after a restart and does not vote yet.
    Recovering = "recovering",
    /// A proposal counted a promise from a replica that has restarted since.
    StaleIncarnation = "stale_incarnation",
    /// Too many operations queued on one key; nothing was changed.
    Overloaded = "overloaded",
    /// A read forwarded to a replica got no answer in time.
    OwnerTimeout = "owner_timeout",
    /// A write may or may not have taken effect.
    OutcomeUnknown = "outcome_unknown",
    /// The node is shutting down.
    ShuttingDown = "shutting_down",
    /// A bug: something that should not happen.
    Internal = "internal",
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(ErrorCode::from_name(&name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_by_name_and_unknown_names_are_unrecognized() {
        for &code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_name(code.as_str()), code);
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
        assert_eq!(
            ErrorCode::from_name("from_the_future"),
            ErrorCode::Unrecognized
        );
        assert_eq!(ErrorCode::MemoryFull, "memory_full");
    }
}
