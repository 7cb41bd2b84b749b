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
        /// Bytes still free under the budget.
        available: u64,
        /// The budget.
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
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidKey { .. } => "invalid_key",
            Error::UnknownEncoding { .. } => "unknown_encoding",
            Error::InvalidValue { .. } => "invalid_value",
            Error::ValueTooLarge { .. } => "value_too_large",
            Error::MemoryFull { .. } => "memory_full",
            Error::InvalidClusterMap { .. } => "invalid_cluster_map",
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
