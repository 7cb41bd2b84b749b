//! The peer protocol's messages, each tied to its reply by the [`Rpc`] trait.
//!
//! Every request is its own type with an associated reply type, so a caller decodes exactly the
//! reply its request can have: there is no "unexpected reply" to handle. The server side is the
//! [`PeerService`] trait (one [`Handle`] implementation per message) and [`dispatch`], which
//! decodes a frame, calls the right handler and encodes its answer.
//!
//! The messages, by what they are for:
//! - **operations** a coordinator forwards to one of a key's replicas: [`Get`], [`Set`],
//!   [`Delete`], [`Incr`], [`Seed`], and [`Evict`] (what an evicting node sends); and in
//!   batches, to the node that coordinates them: [`MultiGet`], [`MultiSet`];
//! - **scans**: [`ScanKeys`], a page of the live keys a node replicates, in an order every node
//!   shares;
//! - **acceptor messages** of the replication protocol (CASPaxos): [`Prepare`], [`Accept`],
//!   [`Read`], [`Repair`], [`Backfill`], [`Collect`], and the bulk [`SyncShard`] and
//!   [`DigestShard`] pages for catch-up and anti-entropy; plus [`Ping`] for the failure detector;
//! - **read-only reports**: [`FetchMap`] (the cluster map a node acts on) and [`FetchStatus`]
//!   (a node's own figures, for the status page).
//!
//! No reply's size depends on how much data a node holds: bulk replies come in pages of about
//! [`PAGE_BYTES`], each resumed after the last key of the one before; batches and scans carry at
//! most [`MAX_BATCH_ITEMS`] items.

use bytes::Bytes;
use kvcore::{Ballot, Entry, Floor, NodeId, Precondition, Register, ReplicaState, Value, Version};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::RemoteError;
use crate::transport::BoxFuture;
use crate::wire::{encode_reply, FrameError, Header, Incoming};

/// A request of the peer protocol and the reply it gets.
pub trait Rpc: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// What the remote answers on success.
    type Reply: Serialize + DeserializeOwned + Send + 'static;
    /// The message's tag on the wire.
    const KIND: Kind;
}

macro_rules! kinds {
    ($($(#[doc = $doc:literal])* $name:ident = $tag:literal,)*) => {
        /// The tag of each message on the wire. Tags are never reused.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum Kind {
            $($(#[doc = $doc])* $name = $tag,)*
        }

        impl Kind {
            /// Whether handling a message of this kind twice has the effect of handling it once.
            /// Acceptor messages are (a repeated promise or accept of the same ballot changes
            /// nothing); forwarded writes are not: a `Set`, `Delete` or `Incr` delivered twice is
            /// applied twice. Transports over TCP never deliver a request twice.
            pub fn is_idempotent(self) -> bool {
                !matches!(
                    self,
                    Kind::Set | Kind::Delete | Kind::Incr | Kind::Seed | Kind::MultiSet
                )
            }

            /// The message's name, as its type is called (`MultiGet`): what logs and metrics
            /// label it with.
            pub fn name(self) -> &'static str {
                match self {
                    $(Kind::$name => stringify!($name),)*
                }
            }

            /// The kind with this tag.
            pub fn from_u8(tag: u8) -> Option<Kind> {
                match tag {
                    $($tag => Some(Kind::$name),)*
                    _ => None,
                }
            }
        }

        /// Answers peer requests: one handler per message.
        pub trait PeerService: $(Handle<$name> +)* Send + Sync {}
        impl<T: $(Handle<$name> +)* Send + Sync> PeerService for T {}

        /// Decodes a request frame, runs the service's handler for it and encodes the answer.
        /// A frame that cannot be read is refused with a [`FrameError`]; everything else,
        /// errors of the handler included, is answered in a reply frame.
        pub async fn dispatch<S: PeerService + ?Sized>(
            service: &S,
            frame: &[u8],
        ) -> Result<Bytes, FrameError> {
            let incoming = Incoming::parse(frame)?;
            match incoming.kind {
                $(Kind::$name => serve::<S, $name>(service, &incoming).await,)*
            }
        }
    };
}

kinds! {
    /// [`Get`].
    Get = 1,
    /// [`Set`].
    Set = 2,
    /// [`Delete`].
    Delete = 3,
    /// [`Incr`].
    Incr = 4,
    /// [`Prepare`].
    Prepare = 5,
    /// [`Accept`].
    Accept = 6,
    /// [`Read`].
    Read = 7,
    /// [`Repair`].
    Repair = 8,
    /// [`SyncShard`].
    SyncShard = 9,
    /// [`DigestShard`].
    DigestShard = 10,
    /// [`Ping`].
    Ping = 11,
    /// [`Backfill`].
    Backfill = 12,
    /// [`Seed`].
    Seed = 13,
    /// [`Collect`].
    Collect = 14,
    /// [`FetchMap`].
    FetchMap = 15,
    /// [`MultiGet`].
    MultiGet = 16,
    /// [`MultiSet`].
    MultiSet = 17,
    /// [`ScanKeys`].
    ScanKeys = 18,
    /// [`FetchStatus`].
    FetchStatus = 19,
    /// [`Evict`].
    Evict = 20,
}

/// Handles one kind of request.
pub trait Handle<R: Rpc> {
    /// Answers `request`, sent under `header`.
    fn handle<'a>(
        &'a self,
        header: &'a Header,
        request: R,
    ) -> BoxFuture<'a, Result<R::Reply, RemoteError>>;
}

async fn serve<S: Handle<R> + ?Sized, R: Rpc>(
    service: &S,
    incoming: &Incoming<'_>,
) -> Result<Bytes, FrameError> {
    let request: R = incoming.body()?;
    let result = service.handle(&incoming.header, request).await;
    Ok(encode_reply(&result))
}

/// Reads a key (an operation forwarded to a replica).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Get {
    /// The key.
    pub key: String,
}

impl Rpc for Get {
    type Reply = Option<Entry>;
    const KIND: Kind = Kind::Get;
}

/// Writes a key if its precondition holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Set {
    /// The key.
    pub key: String,
    /// The value, as its stored bytes.
    pub value: Value,
    /// What the write requires of the current state.
    #[serde(with = "precondition")]
    pub precondition: Precondition,
    /// Milliseconds the value lives for, counted from when the round applies it; `None`: no
    /// time limit of its own (see `keep_ttl`).
    pub ttl_ms: Option<u64>,
    /// Without `ttl_ms`: keep the expiry time the key had (a write normally clears it).
    pub keep_ttl: bool,
}

/// The answer to a [`Set`]: the new version, or what the key held when its precondition failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SetReply {
    /// The write was applied: the new version and the value's expiry time, if it has one.
    Written {
        /// The new version.
        version: Version,
        /// When the value expires (milliseconds since 1970).
        expires: Option<u64>,
    },
    /// The precondition did not hold; nothing was written.
    Conflict(Option<Entry>),
}

impl Rpc for Set {
    type Reply = SetReply;
    const KIND: Kind = Kind::Set;
}

/// Deletes a key; the reply is what it held (`None`: nothing was deleted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delete {
    /// The key.
    pub key: String,
    /// Delete only if the key is at exactly this version.
    pub if_version: Option<Version>,
}

impl Rpc for Delete {
    type Reply = Option<Entry>;
    const KIND: Kind = Kind::Delete;
}

/// Deletes a key if it still holds exactly the state a node in cache mode sampled from its own
/// replica: the same version, and the same value and expiry time by
/// [digest](kvcore::Register::digest). A version alone is not enough: the sampled copy may be a
/// state accepted on that replica but never chosen, and another write can be chosen at the
/// same version later. The reply says whether the key was deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evict {
    /// The key.
    pub key: String,
    /// The version sampled.
    pub version: Version,
    /// The digest of the state sampled.
    pub digest: u64,
}

impl Rpc for Evict {
    type Reply = bool;
    const KIND: Kind = Kind::Evict;
}

/// Adds to an integer key (a missing key counts as 0); the reply is the new entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incr {
    /// The key.
    pub key: String,
    /// The amount.
    pub by: i64,
}

impl Rpc for Incr {
    type Reply = Entry;
    const KIND: Kind = Kind::Incr;
}

/// Replication phase 1: promise `ballot` and report the accepted register.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prepare {
    /// The key.
    pub key: String,
    /// The proposal's ballot.
    pub ballot: Ballot,
    /// Value bytes the proposal may add, checked against the replica's memory budget.
    pub grow: u32,
}

/// The answer to a [`Prepare`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PrepareReply {
    /// The ballot was promised; this is what the replica accepted last.
    Promised {
        /// The replica's incarnation, for [`Accept::promisers`].
        incarnation: u64,
        /// The accepted register.
        register: Register,
    },
    /// A higher ballot was already promised or accepted.
    Rejected {
        /// That ballot.
        promised: Ballot,
    },
}

impl Rpc for Prepare {
    type Reply = PrepareReply;
    const KIND: Kind = Kind::Prepare;
}

/// Replication phase 2: accept `register` (carrying the proposal's ballot).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accept {
    /// The key.
    pub key: String,
    /// The new register.
    pub register: Register,
    /// The incarnation of every replica whose promise the proposal counted: a replica that knows
    /// a newer incarnation of one of them refuses, since that replica has restarted and
    /// forgotten its promise.
    pub promisers: Vec<(NodeId, u64)>,
    /// The proposer's next ballot, to be promised in the same step if the register is accepted:
    /// the phase 1 of the proposer's next round on this key, done in advance, so that round
    /// needs only an accept (CASPaxos's one-round-trip optimisation).
    pub promise_next: Option<Ballot>,
}

/// The answer to an [`Accept`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AcceptReply {
    /// The register was accepted.
    Accepted {
        /// Set when [`Accept::promise_next`] was promised too, with nothing accepted in between:
        /// the replica's incarnation, to be named in the accept that relies on the promise.
        promised_next: Option<u64>,
    },
    /// A higher ballot was promised.
    Rejected {
        /// That ballot.
        promised: Ballot,
    },
}

impl Rpc for Accept {
    type Reply = AcceptReply;
    const KIND: Kind = Kind::Accept;
}

/// Reads a replica's accepted register without promising anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Read {
    /// The key.
    pub key: String,
}

impl Rpc for Read {
    type Reply = Register;
    const KIND: Kind = Kind::Read;
}

/// Brings a lagging replica up to a register held by a quorum; the reply says whether it was
/// applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Repair {
    /// The key.
    pub key: String,
    /// The chosen register.
    pub register: Register,
}

impl Rpc for Repair {
    type Reply = bool;
    const KIND: Kind = Kind::Repair;
}

/// Registers already chosen (accepted by a majority), sent in bulk to a replica that was not
/// asked to accept them, so it gets its copy without a message per write; each is applied as a
/// [`Repair`]. The reply says, per repair, whether it was applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backfill {
    /// The copies.
    pub repairs: Vec<Repair>,
}

impl Rpc for Backfill {
    type Reply = Vec<bool>;
    const KIND: Kind = Kind::Backfill;
}

/// Writes a seed key (one the cluster serves from the start) unless the key was ever written:
/// a seed key a client deleted stays deleted. The reply is as for a [`Set`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Seed {
    /// The key.
    pub key: String,
    /// Its initial value.
    pub value: Value,
}

impl Rpc for Seed {
    type Reply = SetReply;
    const KIND: Kind = Kind::Seed;
}

/// Drops tombstones every replica of their key holds (the CASPaxos deletion procedure): each
/// key is removed if its accepted register is still the tombstone of that ballot, and its store
/// shard's floor rises so the key's versions and ballots never repeat. The reply says, per key,
/// whether it was removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Collect {
    /// Keys and the ballot of the tombstone each one holds on every replica.
    pub keys: Vec<(String, Ballot)>,
}

impl Rpc for Collect {
    type Reply = Vec<bool>;
    const KIND: Kind = Kind::Collect;
}

/// About how many bytes of keys and values one page of a bulk reply carries ([`SyncPage`],
/// [`DigestPage`]); a page always holds at least one key, so a page of one value at the size
/// limit is larger.
pub const PAGE_BYTES: usize = 1 << 20;

/// A page of the full replica state of one store shard's keys that the sender replicates, for
/// a node catching up after a start. Store shards are the same on every node
/// ([`kvcore::Store::shard_of`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncShard {
    /// The shard to copy (`0..Store::SHARDS`).
    pub shard: u32,
    /// Resume after this key; `None` for the shard's first page.
    pub after: Option<String>,
    /// Only the keys a membership change moves to the requester: those it replicates under the
    /// change's new member set and either did not replicate before or whose replica set
    /// shrinks. Served only by a replica that votes, at the requester's epoch.
    pub moving: bool,
}

/// One page of a [`SyncShard`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncPage {
    /// The states, in key order.
    pub states: Vec<ReplicaState>,
    /// The shard's floor: what collected keys leave behind (see [`Collect`]).
    pub floor: Floor,
    /// The last key of this page if the shard has more; `None` after its last page.
    pub next: Option<String>,
    /// The sender's incarnation: a copy made of pages from two incarnations of a peer is
    /// not a copy of either, so the requester starts over if it changes.
    pub incarnation: u64,
    /// The highest incarnation of the requester the sender knows of, so a node whose clock went
    /// back across a restart can still pick an incarnation above its previous life's.
    pub known: u64,
}

impl Rpc for SyncShard {
    type Reply = SyncPage;
    const KIND: Kind = Kind::SyncShard;
}

/// A page of the accepted ballots of one store shard's keys whose primary is the sender, for
/// anti-entropy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DigestShard {
    /// The shard (`0..Store::SHARDS`).
    pub shard: u32,
    /// Resume after this key; `None` for the shard's first page.
    pub after: Option<String>,
}

/// One page of a [`DigestShard`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DigestPage {
    /// Key and accepted ballot, in key order.
    pub ballots: Vec<(String, Ballot)>,
    /// The last key of this page if the shard has more; `None` after its last page.
    pub next: Option<String>,
}

impl Rpc for DigestShard {
    type Reply = DigestPage;
    const KIND: Kind = Kind::DigestShard;
}

/// Liveness probe of the failure detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping;

/// The answer to a [`Ping`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The answering node.
    pub node: NodeId,
    /// Its map epoch.
    pub epoch: u64,
    /// Its incarnation.
    pub incarnation: u64,
    /// Whether it has caught up after starting and votes as a replica.
    pub ready: bool,
    /// How many times the answering node has seen a replica miss a copy (a refused or lost
    /// accept): heard by every peer, so that a key's primary learns of a copy missed in a round
    /// another node coordinated.
    pub drift: u64,
}

impl Rpc for Ping {
    type Reply = Pong;
    const KIND: Kind = Kind::Ping;
}

/// Asks a node for the cluster map it acts on, as the cluster recorded it. Answered whatever the
/// epochs of the two nodes, and to nodes that are not (or no longer) members: it is how a node
/// that finds itself behind, a joining node and a removed one learn the current map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchMap;

/// The answer to a [`FetchMap`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapCopy {
    /// The epoch of the map.
    pub epoch: u64,
    /// The cluster's record of its membership, as JSON (its schema belongs to the server).
    pub record: Vec<u8>,
}

impl Rpc for FetchMap {
    type Reply = MapCopy;
    const KIND: Kind = Kind::FetchMap;
}

/// The most items a batch message ([`MultiGet`], [`MultiSet`]) carries and the most keys a
/// [`ScanKeys`] asks for; a receiver refuses more.
pub const MAX_BATCH_ITEMS: usize = 1000;

/// Reads several keys, each as a forwarded [`Get`] would be, on the node that coordinates them.
///
/// The reply answers the keys in order, each with its entry (`None`: the key does not exist) or
/// its own error. It may answer only the first keys, as many as fit in about [`PAGE_BYTES`] of
/// keys and values (at least one), so its size does not depend on the values: the sender asks
/// again for the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultiGet {
    /// The keys, at most [`MAX_BATCH_ITEMS`].
    pub keys: Vec<String>,
}

impl Rpc for MultiGet {
    type Reply = Vec<Result<Option<Entry>, RemoteError>>;
    const KIND: Kind = Kind::MultiGet;
}

/// Writes several keys, each as a forwarded [`Set`] would be, on the node that coordinates them
/// (their primary). The reply answers every item, in order.
///
/// The writes must be unconditional: a failed condition's answer carries the key's current
/// value, which would make the reply's size depend on the data. A conditional write goes alone,
/// as a [`Set`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultiSet {
    /// The writes, at most [`MAX_BATCH_ITEMS`], each with [`Precondition::None`].
    pub items: Vec<Set>,
}

impl Rpc for MultiSet {
    type Reply = Vec<Result<SetReply, RemoteError>>;
    const KIND: Kind = Kind::MultiSet;
}

/// Asks a node for the next keys it replicates (under the sender's map) that hold a live value,
/// in scan order: by store shard ([`kvcore::Store::shard_of`]), then by key bytes. Scan order is
/// the same on every node and under every map, so a cluster-wide scan merges the pages of all
/// nodes and resumes anywhere.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanKeys {
    /// Only keys that start with this.
    pub prefix: String,
    /// Resume after this shard and key; `None` from the start.
    pub after: Option<(u32, String)>,
    /// The most keys to return, 1 to [`MAX_BATCH_ITEMS`].
    pub limit: u32,
    /// The sender's clock (milliseconds since 1970): values that expire at or before it are not
    /// live. One clock for every node asked, so they judge expiry alike.
    pub now_ms: u64,
}

/// The answer to a [`ScanKeys`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeysPage {
    /// The keys with their shards, in scan order.
    pub keys: Vec<(u32, String)>,
    /// Whether the node has more keys after the last one.
    pub more: bool,
}

impl Rpc for ScanKeys {
    type Reply = KeysPage;
    const KIND: Kind = Kind::ScanKeys;
}

/// Asks a node for its own figures: what it stores and how many requests it has served, for a
/// status page that shows every node of the cluster. Read-only, and answered whatever the epochs
/// of the two nodes. A node of an older build, which does not know this kind, refuses the frame
/// as malformed ("unknown message kind"), which the asker shows as that node's figures being
/// unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchStatus;

/// The answer to a [`FetchStatus`]: fixed-size fields only, so the reply's size does not depend
/// on anything the node holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The answering node.
    pub node: NodeId,
    /// Its incarnation.
    pub incarnation: u64,
    /// The epoch of its cluster map.
    pub epoch: u64,
    /// Whether it has caught up after starting and votes as a replica.
    pub ready: bool,
    /// Milliseconds since its process started.
    pub uptime_ms: u64,
    /// Clients' keys it holds replicas of.
    pub keys: u64,
    /// Bytes its store charges against its memory budget.
    pub bytes: u64,
    /// Its memory budget, if it has one.
    pub max_memory: Option<u64>,
    /// Keys it is primary for that lacked a copy at its last anti-entropy pass.
    pub under_replicated: u64,
    /// Its request counters, totals since it started.
    pub requests: RequestCounts,
}

/// Requests a node has served since it started (see [`NodeStatus`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    /// Client reads it served (single keys).
    pub reads: u64,
    /// Client writes it served (sets, deletes, increments).
    pub writes: u64,
    /// Client batches it served (`/mget`, `/mset`).
    pub batches: u64,
    /// Scan pages it served to clients.
    pub scans: u64,
    /// Requests it received from peers.
    pub peer: u64,
    /// Client requests it answered with a 4xx status.
    pub client_errors: u64,
    /// Client requests it answered with a 5xx status.
    pub server_errors: u64,
}

impl RequestCounts {
    /// Client operations: reads and writes of keys (each item of a batch counts once, the
    /// batch itself not again) and scan pages.
    pub fn operations(&self) -> u64 {
        self.reads
            .saturating_add(self.writes)
            .saturating_add(self.scans)
    }
}

impl Rpc for FetchStatus {
    type Reply = NodeStatus;
    const KIND: Kind = Kind::FetchStatus;
}

/// Serde form of [`Precondition`].
mod precondition {
    use kvcore::{Precondition, Version};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    enum Wire {
        None,
        IfVersion(Version),
        IfAbsent,
    }

    pub fn serialize<S: Serializer>(p: &Precondition, s: S) -> Result<S::Ok, S::Error> {
        match p {
            Precondition::None => Wire::None,
            Precondition::IfVersion(v) => Wire::IfVersion(*v),
            Precondition::IfAbsent => Wire::IfAbsent,
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Precondition, D::Error> {
        Ok(match Wire::deserialize(d)? {
            Wire::None => Precondition::None,
            Wire::IfVersion(v) => Precondition::IfVersion(v),
            Wire::IfAbsent => Precondition::IfAbsent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Frame;
    use kvcore::ErrorCode;

    fn header() -> Header {
        Header {
            from: NodeId(2),
            incarnation: 5,
            epoch: 1,
            request_id: 42,
            hops: 1,
        }
    }

    fn round_trip<R: Rpc + PartialEq + std::fmt::Debug>(request: R) {
        let frame = Frame::encode(&header(), &request);
        let incoming = Incoming::parse(frame.bytes()).unwrap();
        assert_eq!(incoming.kind, R::KIND);
        assert_eq!(incoming.body::<R>().unwrap(), request);
    }

    #[test]
    fn every_message_round_trips_with_values_as_stored_bytes() {
        round_trip(Get { key: "k".into() });
        round_trip(Set {
            key: "k".into(),
            value: Value::binary(vec![0, 255, 7]),
            precondition: Precondition::IfVersion(Version(4)),
            ttl_ms: None,
            keep_ttl: false,
        });
        round_trip(Set {
            key: "k".into(),
            value: Value::json(&serde_json::json!({"a": [1, 2]})),
            precondition: Precondition::IfAbsent,
            ttl_ms: None,
            keep_ttl: false,
        });
        round_trip(Delete {
            key: "k".into(),
            if_version: None,
        });
        round_trip(Incr {
            key: "k".into(),
            by: -2,
        });
        round_trip(Prepare {
            key: "k".into(),
            ballot: Ballot::new(3, NodeId(1)),
            grow: 9,
        });
        round_trip(Accept {
            key: "k".into(),
            register: Register {
                ballot: Ballot::new(3, NodeId(1)),
                version: Version(2),
                value: Some(Value::integer(-3)),
                expires: None,
            },
            promisers: vec![(NodeId(1), 5), (NodeId(2), 6)],
            promise_next: Some(Ballot::new(4, NodeId(1))),
        });
        round_trip(Read { key: "k".into() });
        round_trip(SyncShard {
            shard: 3,
            after: Some("k".into()),
            moving: true,
        });
        round_trip(FetchMap);
        round_trip(DigestShard {
            shard: 63,
            after: None,
        });
        round_trip(Seed {
            key: "a".into(),
            value: Value::string("alpha"),
        });
        round_trip(Collect {
            keys: vec![("k".into(), Ballot::new(3, NodeId(1)))],
        });
        round_trip(Ping);
        round_trip(Backfill {
            repairs: vec![Repair {
                key: "k".into(),
                register: Register::default(),
            }],
        });
        round_trip(MultiGet {
            keys: vec!["a".into(), "b".into()],
        });
        round_trip(MultiSet {
            items: vec![Set {
                key: "k".into(),
                value: Value::binary(vec![1, 2]),
                precondition: Precondition::None,
                ttl_ms: Some(5),
                keep_ttl: false,
            }],
        });
        round_trip(ScanKeys {
            prefix: "user:".into(),
            after: Some((17, "user:9".into())),
            limit: 100,
            now_ms: 1_700_000_000_000,
        });
        round_trip(FetchStatus);
        round_trip(Evict {
            key: "k".into(),
            version: Version(7),
            digest: u64::MAX - 1,
        });
    }

    #[test]
    fn a_binary_value_travels_as_its_bytes() {
        let blob = vec![0xab; 1000];
        let frame = Frame::encode(
            &header(),
            &Set {
                key: "k".into(),
                value: Value::binary(blob.clone()),
                precondition: Precondition::None,
                ttl_ms: None,
                keep_ttl: false,
            },
        );
        // No base64: the frame is the value plus a few bytes of framing.
        assert!(
            frame.bytes().len() < blob.len() + 32,
            "{}",
            frame.bytes().len()
        );
    }

    #[test]
    fn malformed_values_are_refused_when_decoding() {
        // An integer must be 8 bytes.
        let frame = Frame::encode(
            &header(),
            &Set {
                key: "k".into(),
                value: Value::integer(1),
                precondition: Precondition::None,
                ttl_ms: None,
                keep_ttl: false,
            },
        );
        let mut bytes = frame.bytes().to_vec();
        let at = bytes.windows(2).rposition(|w| w == [1, 8]).unwrap();
        bytes[at + 1] = 7;
        bytes.remove(at + 2);
        let incoming = Incoming::parse(&bytes).unwrap();
        assert!(incoming.body::<Set>().is_err());
    }

    struct Echo;

    impl Handle<Get> for Echo {
        fn handle<'a>(
            &'a self,
            h: &'a Header,
            r: Get,
        ) -> BoxFuture<'a, Result<Option<Entry>, RemoteError>> {
            Box::pin(async move {
                Ok(Some(Entry {
                    value: Value::string(r.key),
                    version: Version(h.request_id),
                    expires: None,
                }))
            })
        }
    }

    macro_rules! refuse {
        ($($kind:ident),*) => {$(
            impl Handle<$kind> for Echo {
                fn handle<'a>(
                    &'a self,
                    _: &'a Header,
                    _: $kind,
                ) -> BoxFuture<'a, Result<<$kind as Rpc>::Reply, RemoteError>> {
                    Box::pin(async { Err(RemoteError::new(ErrorCode::Internal, "no")) })
                }
            }
        )*};
    }
    refuse!(
        Set,
        Delete,
        Incr,
        Prepare,
        Accept,
        Read,
        Repair,
        SyncShard,
        DigestShard,
        Ping,
        Backfill,
        Seed,
        Collect,
        FetchMap,
        MultiGet,
        MultiSet,
        ScanKeys,
        FetchStatus,
        Evict
    );

    #[tokio::test]
    async fn dispatch_calls_the_handler_of_the_frames_kind() {
        let frame = Frame::encode(&header(), &Get { key: "x".into() });
        let reply = dispatch(&Echo, frame.bytes()).await.unwrap();
        let entry = frame.decode_reply(&reply).unwrap().unwrap().unwrap();
        assert_eq!(
            (entry.value.as_str(), entry.version),
            (Some("x"), Version(42))
        );
        let frame = Frame::encode(&header(), &Ping);
        let reply = dispatch(&Echo, frame.bytes()).await.unwrap();
        assert_eq!(
            frame.decode_reply(&reply).unwrap().unwrap_err().code,
            ErrorCode::Internal
        );
        assert!(dispatch(&Echo, b"\x01\x00").await.is_err());
    }

    #[tokio::test]
    async fn a_kind_the_receiver_does_not_know_is_refused_as_a_client_error() {
        // What a node of an older build does with a newer kind (a FetchStatus, say): its
        // refusal names the kind, and the asker gets it as the remote's `invalid_request`.
        let frame = Frame::encode(&header(), &FetchStatus);
        let mut bytes = frame.bytes().to_vec();
        // A FetchStatus has an empty body: the kind is the last byte.
        assert_eq!(bytes.pop(), Some(Kind::FetchStatus as u8));
        bytes.push(250);
        assert_eq!(Kind::from_u8(250), None);
        let refused = dispatch(&Echo, &bytes).await.unwrap_err();
        assert_eq!(refused.code(), ErrorCode::InvalidRequest);
        assert!(
            refused.to_string().contains("unknown message kind 250"),
            "{refused}"
        );
    }
}
