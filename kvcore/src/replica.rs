//! Replica state for quorum replication: ballots and the per-key register an acceptor keeps.
//!
//! The replication protocol (CASPaxos, run by kvserver) treats every key as an independent
//! register replicated on the key's owners. Each replica remembers, per key, the highest ballot it
//! promised and the last state it accepted with that state's ballot. kvcore only stores these and
//! applies the acceptor rules atomically per key ([`Store::prepare`](crate::Store::prepare),
//! [`Store::accept`](crate::Store::accept)); proposing is the server's job.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::cluster::NodeId;
use crate::store::{Entry, Version};
use crate::value::Value;

/// A proposal number: a round, tie-broken by the proposing node. Totally ordered; never derived
/// from wall-clock time.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Ballot {
    /// The round; proposers pick one higher than any they have seen.
    pub round: u64,
    /// The proposer, so two proposers never pick the same ballot.
    pub node: NodeId,
}

impl Ballot {
    /// The ballot of a register nothing was ever accepted into.
    pub const ZERO: Ballot = Ballot {
        round: 0,
        node: NodeId(0),
    };

    /// Whether this is [`Ballot::ZERO`].
    pub fn is_zero(&self) -> bool {
        *self == Ballot::ZERO
    }
}

impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.round, self.node)
    }
}

/// The accepted state of one key on one replica: the value (or its absence, a tombstone once
/// deleted), its client-visible version, and the ballot it was accepted with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    /// Ballot of the accepting proposal; [`Ballot::ZERO`] if nothing was ever accepted.
    pub ballot: Ballot,
    /// Version of the value: grows by one with every change, deletes included, so a key that
    /// is deleted and written again never reuses a version.
    pub version: Version,
    /// The value, `None` when the key does not exist.
    pub value: Option<Value>,
}

impl Register {
    /// The client-visible entry, if the key exists.
    pub fn entry(&self) -> Option<Entry> {
        self.value.clone().map(|value| Entry {
            value,
            version: self.version,
        })
    }

    /// Encoded size of the value (0 for none).
    pub fn value_len(&self) -> usize {
        self.value.as_ref().map_or(0, Value::len)
    }
}

/// Everything a replica knows of one key, as copied to a recovering replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaState {
    /// The key.
    pub key: String,
    /// Highest ballot promised.
    pub promised: Ballot,
    /// What was accepted.
    pub register: Register,
}
