//! The peer protocol: what one node asks another, and what it answers.
//!
//! Messages are JSON. Over HTTP an [`Envelope`] is the body of `POST` [`RPC_PATH`], the hop count
//! travels in the [`HOPS_HEADER`], and the reply body is a [`PeerResult`]. The in-process
//! transport uses the very same encoding.

use kvcore::{Entry, NodeId, Precondition, Value, Version};
use serde::{Deserialize, Serialize};

/// Path of the peer endpoint on every node.
pub const RPC_PATH: &str = "/internal/v1/rpc";

/// Header carrying how many times a request has been forwarded between nodes.
pub const HOPS_HEADER: &str = "x-kv-hops";

/// A request is forwarded at most this many times. Client-facing endpoints always start at 0
/// (they ignore the header), so a client cannot raise the budget; a peer refuses a request that
/// arrives with the budget spent instead of forwarding it again.
pub const MAX_HOPS: u8 = 2;

/// A request from one node to another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The sending node.
    pub from: NodeId,
    /// The epoch of the sender's cluster map.
    pub epoch: u64,
    /// What is asked.
    pub request: PeerRequest,
}

/// The operations a node can ask of a peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum PeerRequest {
    /// Read a key.
    Get {
        /// The key.
        key: String,
    },
    /// Write a key.
    Set {
        /// The key.
        key: String,
        /// The value.
        value: Value,
        /// What the write requires of the current state.
        #[serde(default, with = "precondition")]
        precondition: Precondition,
    },
    /// Delete a key.
    Delete {
        /// The key.
        key: String,
    },
    /// Liveness probe.
    Ping,
}

impl PeerRequest {
    /// The key the request is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            PeerRequest::Get { key }
            | PeerRequest::Set { key, .. }
            | PeerRequest::Delete { key } => Some(key),
            PeerRequest::Ping => None,
        }
    }
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum PeerReply {
    /// The key's entry, if it exists.
    Entry {
        /// The entry.
        entry: Option<Entry>,
    },
    /// A write was applied.
    Written {
        /// The new version.
        version: Version,
    },
    /// A conditional write was refused; this is what the key holds.
    Conflict {
        /// The current entry.
        current: Option<Entry>,
    },
    /// A delete; what the key held.
    Deleted {
        /// The removed entry.
        entry: Option<Entry>,
    },
    /// Answer to [`PeerRequest::Ping`].
    Pong {
        /// The answering node.
        node: NodeId,
        /// Its map epoch.
        epoch: u64,
    },
}

/// An error answered by the remote node itself (as opposed to a transport failure).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RemoteError {
    /// Stable error code, as in the client API (`memory_full`, `invalid_value`, ...).
    pub code: String,
    /// Human-readable detail.
    pub message: String,
}

impl RemoteError {
    /// An error with this code and message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        RemoteError {
            code: code.into(),
            message: message.into(),
        }
    }
}

impl From<kvcore::Error> for RemoteError {
    fn from(e: kvcore::Error) -> Self {
        RemoteError::new(e.code(), e.to_string())
    }
}

/// What a peer answers: `{"Ok": {...}}` or `{"Err": {"code", "message"}}`.
pub type PeerResult = Result<PeerReply, RemoteError>;

/// Encodes a value for the wire.
pub fn encode<T: Serialize>(msg: &T) -> bytes::Bytes {
    // Serializing these types cannot fail: every map key is a string and no Serialize impl errs.
    bytes::Bytes::from(serde_json::to_vec(msg).expect("peer messages always serialize"))
}

/// Decodes a value from the wire.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// Serde form of [`Precondition`]: `null`, `{"if_version": 3}` or `"if_absent"`.
mod precondition {
    use kvcore::{Precondition, Version};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Wire {
        IfVersion(Version),
        IfAbsent,
    }

    pub fn serialize<S: Serializer>(p: &Precondition, s: S) -> Result<S::Ok, S::Error> {
        match p {
            Precondition::None => Option::<Wire>::None,
            Precondition::IfVersion(v) => Some(Wire::IfVersion(*v)),
            Precondition::IfAbsent => Some(Wire::IfAbsent),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Precondition, D::Error> {
        Ok(match Option::<Wire>::deserialize(d)? {
            None => Precondition::None,
            Some(Wire::IfVersion(v)) => Precondition::IfVersion(v),
            Some(Wire::IfAbsent) => Precondition::IfAbsent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_json() {
        let requests = [
            PeerRequest::Get {
                key: "ключ".into()
            },
            PeerRequest::Set {
                key: "k".into(),
                value: Value::integer(-3),
                precondition: Precondition::IfVersion(Version(4)),
            },
            PeerRequest::Set {
                key: "k".into(),
                value: Value::binary(vec![0, 255]),
                precondition: Precondition::None,
            },
            PeerRequest::Delete { key: "k".into() },
            PeerRequest::Ping,
        ];
        for request in requests {
            let env = Envelope {
                from: NodeId(3),
                epoch: 9,
                request,
            };
            assert_eq!(decode::<Envelope>(&encode(&env)).unwrap(), env);
        }
        let results: [PeerResult; 3] = [
            Ok(PeerReply::Entry {
                entry: Some(Entry {
                    value: Value::string("v"),
                    version: Version(2),
                }),
            }),
            Ok(PeerReply::Written {
                version: Version(1),
            }),
            Err(RemoteError::new("memory_full", "full")),
        ];
        for r in results {
            assert_eq!(decode::<PeerResult>(&encode(&r)).unwrap(), r);
        }
    }

    #[test]
    fn invalid_values_are_refused_when_decoding() {
        let bad = br#"{"from":0,"epoch":1,"request":{"op":"set","key":"k","value":{"encoding":"integer","value":"x"}}}"#;
        assert!(decode::<Envelope>(bad).is_err());
    }
}
