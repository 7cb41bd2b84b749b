//! The peer protocol: what one node asks another, and what it answers.
//!
//! Messages are JSON. Over HTTP an [`Envelope`] is the body of `POST` [`RPC_PATH`], the hop count
//! travels in the [`HOPS_HEADER`], and the reply body is a [`PeerResult`]. The in-process
//! transport uses the very same encoding.

use kvcore::{Ballot, Entry, NodeId, Precondition, Register, ReplicaState, Value, Version};
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
    /// The sender's incarnation: a number that grows every time the sender's process starts.
    /// Receivers remember the highest seen per node, which fences off messages from a
    /// restarted node's previous life.
    #[serde(default)]
    pub incarnation: u64,
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
    /// Add to an integer key (a missing key counts as 0).
    Incr {
        /// The key.
        key: String,
        /// The amount.
        by: i64,
    },
    /// Replication phase 1: promise `ballot` and report the accepted register.
    Prepare {
        /// The key.
        key: String,
        /// The proposal's ballot.
        ballot: Ballot,
        /// Value bytes the proposal may add, checked against the replica's memory budget.
        grow: usize,
    },
    /// Replication phase 2: accept `register` (carrying the proposal's ballot).
    Accept {
        /// The key.
        key: String,
        /// The new register.
        register: Register,
        /// The incarnation of every replica whose promise the proposal counted: a replica that
        /// knows a newer incarnation of one of them refuses, since that replica has restarted
        /// and forgotten its promise.
        promisers: Vec<(NodeId, u64)>,
    },
    /// Read a replica's accepted register without promising anything.
    Read {
        /// The key.
        key: String,
    },
    /// Bring a lagging replica up to a register held by a quorum.
    Repair {
        /// The key.
        key: String,
        /// The chosen register.
        register: Register,
    },
    /// Copy of one store shard's keys that the sender replicates, for a recovering node.
    Sync {
        /// The shard to copy.
        shard: u32,
    },
    /// The accepted ballots of one store shard's keys whose primary is the sender, for
    /// anti-entropy.
    Digest {
        /// The shard.
        shard: u32,
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
            | PeerRequest::Delete { key }
            | PeerRequest::Incr { key, .. }
            | PeerRequest::Prepare { key, .. }
            | PeerRequest::Accept { key, .. }
            | PeerRequest::Read { key }
            | PeerRequest::Repair { key, .. } => Some(key),
            PeerRequest::Sync { .. } | PeerRequest::Digest { .. } | PeerRequest::Ping => None,
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
    /// An increment; the new entry.
    Incremented {
        /// The entry after the increment.
        entry: Entry,
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
        /// Its incarnation.
        incarnation: u64,
        /// Whether it has caught up after starting and votes as a replica.
        ready: bool,
    },
    /// The ballot was promised; this is the replica's accepted register.
    Promised {
        /// The replica's incarnation, for [`PeerRequest::Accept::promisers`].
        incarnation: u64,
        /// What the replica accepted last.
        register: Register,
    },
    /// A higher ballot was already promised or accepted.
    Rejected {
        /// That ballot.
        promised: Ballot,
    },
    /// The register was accepted.
    Accepted,
    /// A replica's accepted register.
    Register {
        /// The register.
        register: Register,
    },
    /// Whether a repair was applied.
    Repaired {
        /// Whether it was.
        applied: bool,
    },
    /// One shard's accepted ballots.
    Digest {
        /// Key and accepted ballot.
        ballots: Vec<(String, Ballot)>,
        /// The next shard to ask for, `None` after the last.
        next: Option<u32>,
    },
    /// One shard's replica states.
    Synced {
        /// The states.
        states: Vec<ReplicaState>,
        /// The next shard to ask for, `None` after the last.
        next: Option<u32>,
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
            PeerRequest::Incr {
                key: "k".into(),
                by: -2,
            },
            PeerRequest::Accept {
                key: "k".into(),
                register: Register {
                    ballot: Ballot::new(3, NodeId(1)),
                    version: Version(2),
                    value: None,
                },
                promisers: vec![(NodeId(1), 5), (NodeId(2), 6)],
            },
            PeerRequest::Sync { shard: 3 },
            PeerRequest::Ping,
        ];
        for request in requests {
            let env = Envelope {
                from: NodeId(3),
                epoch: 9,
                incarnation: 77,
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
