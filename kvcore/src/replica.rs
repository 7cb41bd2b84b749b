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
///
/// Packed into one `u64` (the round in the high [`Ballot::ROUND_BITS`] bits, the node id in the
/// low [`Ballot::NODE_BITS`]) so a stored ballot costs 8 bytes and ballots compare as integers:
/// the order is that of `(round, node)`. Node ids only grow (an id is never reused), and 24 bits
/// leave room for 16 million of them; 40 bits of rounds last a proposer writing a million times
/// a second for twelve days on one key, and rounds are per key.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Ballot(u64);

impl Ballot {
    /// Bits of the node id.
    pub const NODE_BITS: u32 = 24;
    /// Bits of the round.
    pub const ROUND_BITS: u32 = 64 - Self::NODE_BITS;
    /// The highest round a ballot can carry.
    pub const MAX_ROUND: u64 = (1 << Self::ROUND_BITS) - 1;
    /// The highest node id a ballot can carry.
    pub const MAX_NODE: u32 = (1 << Self::NODE_BITS) - 1;

    /// The ballot of a register nothing was ever accepted into.
    pub const ZERO: Ballot = Ballot(0);

    /// The ballot of `round` proposed by `node`. A round past [`Ballot::MAX_ROUND`] saturates
    /// there; a node id past [`Ballot::MAX_NODE`] is refused when the configuration is
    /// validated, and masked here.
    pub const fn new(round: u64, node: NodeId) -> Ballot {
        let round = if round > Self::MAX_ROUND {
            Self::MAX_ROUND
        } else {
            round
        };
        Ballot(round << Self::NODE_BITS | (node.0 & Self::MAX_NODE) as u64)
    }

    /// The round.
    pub const fn round(self) -> u64 {
        self.0 >> Self::NODE_BITS
    }

    /// The proposing node.
    pub const fn node(self) -> NodeId {
        NodeId((self.0 & Self::MAX_NODE as u64) as u32)
    }

    /// The packed form.
    pub const fn to_bits(self) -> u64 {
        self.0
    }

    /// A ballot from its packed form.
    pub const fn from_bits(bits: u64) -> Ballot {
        Ballot(bits)
    }

    /// Whether this is [`Ballot::ZERO`].
    pub fn is_zero(&self) -> bool {
        *self == Ballot::ZERO
    }
}

impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.round(), self.node())
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
    /// When the value expires, in milliseconds since 1970 by the clock of the node that wrote
    /// it; `None` for a value that does not expire (and always for a tombstone). It travels
    /// with the value, so every replica holds the same expiry time; replicas never act on it
    /// themselves: a round that finds the time passed chooses the key's removal.
    pub expires: Option<u64>,
}

impl Register {
    /// The client-visible entry, if the key exists. An expired value is still returned here:
    /// whether it counts as gone is for a round to decide ([`Register::is_expired`]).
    pub fn entry(&self) -> Option<Entry> {
        self.value.clone().map(|value| Entry {
            value,
            version: self.version,
            expires: self.expires,
        })
    }

    /// Whether the register holds a value whose expiry time is at or before `now_ms`
    /// (milliseconds since 1970).
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.value.is_some() && self.expires.is_some_and(|at| at <= now_ms)
    }

    /// Encoded size of the value (0 for none).
    pub fn value_len(&self) -> usize {
        self.value.as_ref().map_or(0, Value::len)
    }

    /// A 64-bit digest of what the register holds (the value with its encoding, or none, and
    /// the expiry time), not of how it got there (ballot) nor when (version): two replicas
    /// holding the same state give the same digest, on any platform (XXH3). Together with the
    /// version it names the state a node sampled, for a delete that must remove exactly that.
    pub fn digest(&self) -> u64 {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        match &self.value {
            None => hasher.update(&[0]),
            Some(value) => {
                hasher.update(&[1, value.encoding().tag()]);
                hasher.update(&(value.len() as u64).to_le_bytes());
                hasher.update(value.as_bytes());
            }
        }
        match self.expires {
            None => hasher.update(&[0]),
            Some(at) => {
                hasher.update(&[1]);
                hasher.update(&at.to_le_bytes());
            }
        }
        hasher.digest()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_names_the_state_not_how_or_when_it_was_accepted() {
        let register = |value: Option<Value>, expires: Option<u64>| Register {
            ballot: Ballot::new(3, NodeId(1)),
            version: Version(9),
            value,
            expires,
        };
        let a = register(Some(Value::string("ab")), None);
        let same = Register {
            ballot: Ballot::new(40, NodeId(2)),
            version: Version(12),
            ..a.clone()
        };
        assert_eq!(a.digest(), same.digest());
        let others = [
            register(Some(Value::string("ac")), None),
            register(Some(Value::binary(&b"ab"[..])), None),
            register(Some(Value::string("ab")), Some(5)),
            register(Some(Value::string("ab")), Some(6)),
            register(Some(Value::string("")), None),
            register(None, None),
            register(Some(Value::integer(0)), None),
            register(Some(Value::integer(1)), None),
        ];
        let mut digests: Vec<u64> = others.iter().map(Register::digest).collect();
        digests.push(a.digest());
        let count = digests.len();
        digests.sort_unstable();
        digests.dedup();
        assert_eq!(digests.len(), count, "every state has its own digest");
    }

    #[test]
    fn packed_ballots_order_by_round_then_node() {
        let b = Ballot::new(7, NodeId(3));
        assert_eq!((b.round(), b.node()), (7, NodeId(3)));
        assert!(Ballot::new(7, NodeId(4)) > b);
        assert!(Ballot::new(8, NodeId(0)) > Ballot::new(7, NodeId(Ballot::MAX_NODE)));
        assert_eq!(Ballot::from_bits(b.to_bits()), b);
        let top = Ballot::new(u64::MAX, NodeId(1));
        assert_eq!((top.round(), top.node()), (Ballot::MAX_ROUND, NodeId(1)));
        assert!(Ballot::ZERO.is_zero() && Ballot::ZERO < Ballot::new(0, NodeId(1)));
    }
}
