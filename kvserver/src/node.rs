//! The node: a replica of the keys it owns and a coordinator for every key.
//!
//! A client request for a key is handled by one of the key's replicas: if the node that received
//! it is a replica it runs the operation itself (one CASPaxos round: see `docs/consistency.md`), otherwise it
//! forwards the request to the first live replica. Replicas answer peers' protocol messages
//! through [`Node::handle_peer`].

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use kvcore::{
    partition, Ballot, ClusterMap, Conflict, Entry, Limits, NodeId, NodeInfo, Precondition, Store,
    StoreConfig, Value, Version,
};
use kvnet::{
    BoxFuture, Envelope, ForwardError, Forwarder, PeerHandler, PeerReply, PeerRequest, PeerResult,
    RemoteError, MAX_HOPS,
};
use serde::Serialize;
use tokio::sync::watch;

use crate::config::NodeConfig;
use crate::error::Error;
use crate::membership::Membership;
use crate::replication::{Change, Outcome};

/// The keys every node serves from the start, as in the original deployment: `a` and `b`.
pub const SEED_KEYS: [(&str, &str); 2] = [("a", "alpha"), ("b", "beta")];

/// Per-node request counters, reported by `/stats`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Client reads.
    pub gets: AtomicU64,
    /// Client writes (sets, deletes, increments).
    pub writes: AtomicU64,
    /// Client requests this node coordinated as a replica of the key.
    pub local: AtomicU64,
    /// Client requests forwarded to a replica of the key.
    pub forwarded: AtomicU64,
    /// Requests received from peers.
    pub peer: AtomicU64,
    /// Proposal rounds retried after a conflicting ballot.
    pub retries: AtomicU64,
    /// Reads answered in one round trip because the replicas agreed.
    pub fast_reads: AtomicU64,
    /// Replicas brought up to date by reads and anti-entropy.
    pub repairs: AtomicU64,
    /// Requests answered with a 4xx status.
    pub client_errors: AtomicU64,
    /// Requests answered with a 5xx status.
    pub server_errors: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The current values.
    pub fn snapshot(&self) -> CountersSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersSnapshot {
            gets: r(&self.gets),
            writes: r(&self.writes),
            local: r(&self.local),
            forwarded: r(&self.forwarded),
            peer: r(&self.peer),
            retries: r(&self.retries),
            fast_reads: r(&self.fast_reads),
            repairs: r(&self.repairs),
            client_errors: r(&self.client_errors),
            server_errors: r(&self.server_errors),
        }
    }
}

/// `/stats`' view of the counters; see [`Counters`] for what each one counts.
#[derive(Debug, Serialize)]
#[allow(missing_docs)]
pub struct CountersSnapshot {
    pub gets: u64,
    pub writes: u64,
    pub local: u64,
    pub forwarded: u64,
    pub peer: u64,
    pub retries: u64,
    pub fast_reads: u64,
    pub repairs: u64,
    pub client_errors: u64,
    pub server_errors: u64,
}

/// The outcome of a conditional write: the new version, or the [`Conflict`] that refused it.
pub type WriteOutcome = Result<Version, Conflict>;

/// A cluster node. Shared behind an `Arc`; every method takes `&self`.
pub struct Node {
    pub(crate) id: NodeId,
    pub(crate) incarnation: u64,
    pub(crate) config: NodeConfig,
    map: RwLock<Arc<ClusterMap>>,
    pub(crate) store: Store,
    pub(crate) forwarder: Arc<dyn Forwarder>,
    pub(crate) membership: Membership,
    /// Peers whose copies this node has merged since it started.
    pub(crate) synced: Mutex<HashSet<NodeId>>,
    /// Set once every peer has been merged: the node votes for every key.
    pub(crate) ready: AtomicBool,
    /// Highest ballot round seen, so new ballots are higher.
    pub(crate) round: AtomicU64,
    /// Keys this node is primary for that lacked a copy at the last anti-entropy pass.
    pub(crate) under_replicated: AtomicU64,
    pub(crate) counters: Counters,
    /// Rotates which remote replicas are asked first, to spread reads.
    pub(crate) spread: std::sync::atomic::AtomicUsize,
    /// Striped locks queueing proposals per key; see [`Node::proposal_turn`].
    proposing: Box<[tokio::sync::Mutex<()>]>,
    started: Instant,
    pub(crate) shutdown: watch::Sender<bool>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("incarnation", &self.incarnation)
            .field("map", &self.map())
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A node as configured, sending peer requests through `forwarder`. Call
    /// [`start`](Node::start) to begin catching up and exchanging heartbeats.
    pub fn new(config: &NodeConfig, forwarder: Arc<dyn Forwarder>) -> Result<Self, String> {
        config.validate()?;
        let partitioner = partition::by_name(&config.partitioner)
            .ok_or_else(|| format!("unknown partitioner {:?}", config.partitioner))?;
        let nodes = config
            .peers
            .iter()
            .enumerate()
            .map(|(i, addr)| NodeInfo {
                id: NodeId(i as u32),
                addr: addr.clone(),
            })
            .collect();
        let map = ClusterMap::new(1, nodes, partitioner).map_err(|e| e.to_string())?;
        let peers = map
            .nodes()
            .iter()
            .map(|n| n.id)
            .filter(|&id| id != config.id);
        let membership = Membership::new(peers, config.down_after);
        let store = Store::new(StoreConfig {
            max_memory: config.max_memory,
            limits: Limits {
                max_value_bytes: config.max_value_bytes,
            },
        });
        let ready = map.len() == 1;
        Ok(Node {
            id: config.id,
            incarnation: new_incarnation(),
            config: config.clone(),
            map: RwLock::new(Arc::new(map)),
            store,
            forwarder,
            membership,
            synced: Mutex::default(),
            ready: AtomicBool::new(ready),
            round: AtomicU64::new(0),
            under_replicated: AtomicU64::new(0),
            counters: Counters::default(),
            spread: std::sync::atomic::AtomicUsize::new(0),
            proposing: (0..256).map(|_| tokio::sync::Mutex::new(())).collect(),
            started: Instant::now(),
            shutdown: watch::channel(false).0,
        })
    }

    /// Starts the background work: heartbeats, catching up from peers, anti-entropy, and
    /// writing the seed keys once ready (if configured). Runs until [`stop`](Node::stop).
    pub fn start(self: &Arc<Self>) {
        tokio::spawn(crate::recovery::heartbeats(self.clone()));
        tokio::spawn(crate::recovery::catch_up(self.clone()));
        tokio::spawn(crate::recovery::anti_entropy(self.clone()));
    }

    /// Stops the background tasks started by [`start`](Node::start).
    pub fn stop(&self) {
        self.shutdown.send_replace(true);
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// This node's incarnation: it grows every time a node process starts.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The current cluster map.
    pub fn map(&self) -> Arc<ClusterMap> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// This node's own store (its replicas of the keys it owns).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Request counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Peer liveness as this node sees it.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Copies kept of each key.
    pub fn replication_factor(&self) -> usize {
        self.config.replication_factor()
    }

    /// Whether this node has caught up after starting and votes for every key.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Keys this node is primary for that lacked a copy at the last anti-entropy pass.
    pub fn under_replicated(&self) -> u64 {
        self.under_replicated.load(Ordering::Relaxed)
    }

    /// Time since the node started.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Every other member of the cluster.
    pub fn peers(&self) -> Vec<NodeId> {
        let map = self.map();
        map.nodes()
            .iter()
            .map(|n| n.id)
            .filter(|&id| id != self.id)
            .collect()
    }

    /// The key's primary replica.
    pub fn owner(&self, key: &str) -> NodeId {
        self.owners(key)[0]
    }

    /// The key's replicas, primary first.
    pub fn owners(&self, key: &str) -> Vec<NodeId> {
        self.map().owners(key, self.replication_factor())
    }

    /// Whether this node's replica may vote for `key`: it has caught up, or it has merged the
    /// copies of every other replica of the key.
    pub(crate) fn can_vote(&self, key: &str) -> bool {
        if self.is_ready() {
            return true;
        }
        let owners = self.owners(key);
        let synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        owners.iter().all(|&o| o == self.id || synced.contains(&o))
    }

    /// Reads `key`, linearizably.
    pub async fn get(&self, key: &str) -> Result<Option<Entry>, Error> {
        Counters::bump(&self.counters.gets);
        kvcore::validate_key(key)?;
        match self.route(Change::Read, key, 0).await? {
            Outcome::Read(entry) => Ok(entry),
            other => Err(unexpected(other)),
        }
    }

    /// Writes `key` if `precondition` holds.
    pub async fn set(
        &self,
        key: &str,
        value: Value,
        precondition: Precondition,
    ) -> Result<WriteOutcome, Error> {
        Counters::bump(&self.counters.writes);
        kvcore::validate_key(key)?;
        self.store.config().limits.check_value(&value)?;
        match self
            .route(
                Change::Set {
                    value,
                    precondition,
                },
                key,
                0,
            )
            .await?
        {
            Outcome::Written(version) => Ok(Ok(version)),
            Outcome::Conflict(current) => Ok(Err(Conflict { current })),
            other => Err(unexpected(other)),
        }
    }

    /// Deletes `key`, returning what it held.
    pub async fn delete(&self, key: &str) -> Result<Option<Entry>, Error> {
        Counters::bump(&self.counters.writes);
        kvcore::validate_key(key)?;
        match self.route(Change::Delete, key, 0).await? {
            Outcome::Deleted(entry) => Ok(entry),
            other => Err(unexpected(other)),
        }
    }

    /// Adds `by` to the integer under `key` (a missing key counts as 0), returning the new entry.
    pub async fn incr(&self, key: &str, by: i64) -> Result<Entry, Error> {
        Counters::bump(&self.counters.writes);
        kvcore::validate_key(key)?;
        match self.route(Change::Incr(by), key, 0).await? {
            Outcome::Incremented(entry) => Ok(entry),
            other => Err(unexpected(other)),
        }
    }

    /// Runs `change` here if this node is a replica of `key`, else forwards it to the first
    /// replica that is not known to be down. `hops` is how often it was already forwarded.
    async fn route(&self, change: Change, key: &str, hops: u8) -> Result<Outcome, Error> {
        let map = self.map();
        let replicas = map.owners(key, self.replication_factor());
        let is_replica = replicas.contains(&self.id);
        let is_write = !matches!(change, Change::Read);
        // Any replica coordinates a read (one round trip when the replicas agree). Writes go to
        // the key's primary, so that one node proposes for a key and concurrent writes queue
        // there instead of duelling with ballots; when the primary cannot be reached, or the
        // hops are spent, a replica proposes itself.
        if is_replica && (!is_write || replicas[0] == self.id || hops >= MAX_HOPS) {
            if hops == 0 {
                Counters::bump(&self.counters.local);
            }
            return self.execute(&change, key, hops).await;
        }
        if hops >= MAX_HOPS {
            return Err(Error::Misdirected {
                message: format!(
                    "node {} is not a replica of the key and the request was already forwarded {hops} times",
                    self.id
                ),
            });
        }
        if hops == 0 {
            Counters::bump(&self.counters.forwarded);
        }
        if !is_write && self.replication_factor() > 1 {
            // A read asks a majority of the replicas directly: one round trip, as from a
            // replica. Only if they disagree does a replica settle it below.
            if let Ok(Some(entry)) = self.fast_read(key).await {
                return Ok(Outcome::Read(entry));
            }
        }
        let request = change.clone().into_request(key);
        // In placement order (the primary first), replicas known to be down last. A replica that
        // was unreachable never received the request, and one that answered
        // `quorum_unavailable` applied nothing, so trying the next one is safe even for writes.
        let mut candidates: Vec<NodeId> =
            replicas.iter().copied().filter(|&r| r != self.id).collect();
        candidates.sort_by_key(|&r| self.membership.is_down(r));
        let mut last = None;
        for to in candidates {
            let info = map.node(to).expect("replicas are members of the map");
            let envelope = self.envelope(request.clone());
            match self.forwarder.send(info, hops + 1, envelope).await {
                Ok(reply) => return Outcome::from_reply(reply),
                Err(e @ ForwardError::Unreachable { .. }) => last = Some(e),
                Err(ForwardError::Remote(r)) if r.code == "quorum_unavailable" => {
                    last = Some(ForwardError::Remote(r))
                }
                Err(e) => return Err(Error::from_forward(e, is_write)),
            }
        }
        if is_replica {
            return self.execute(&change, key, hops).await;
        }
        Err(Error::from_forward(
            last.expect("a key has at least one replica"),
            is_write,
        ))
    }

    /// The lock that queues this node's proposals for `key`: rounds for one key from one node
    /// run one at a time rather than outbidding each other.
    pub(crate) fn proposal_turn(&self, key: &str) -> &tokio::sync::Mutex<()> {
        let stripe = kvcore::partition::key_hash(key.as_bytes()) as usize % self.proposing.len();
        &self.proposing[stripe]
    }

    /// An envelope from this node.
    pub(crate) fn envelope(&self, request: PeerRequest) -> Envelope {
        Envelope {
            from: self.id,
            epoch: self.map().epoch(),
            incarnation: self.incarnation,
            request,
        }
    }

    /// Answers a request from a peer that has been forwarded `hops` times.
    pub async fn handle_peer(&self, hops: u8, envelope: Envelope) -> PeerResult {
        Counters::bump(&self.counters.peer);
        // Record the sender's incarnation before anything else: a recovering node's first sync
        // request must fence off its previous life before this node copies anything to it.
        self.membership.observe(envelope.from, envelope.incarnation);
        let from = envelope.from;
        let result = match envelope.request {
            PeerRequest::Ping => Ok(PeerReply::Pong {
                node: self.id,
                epoch: self.map().epoch(),
                incarnation: self.incarnation,
                ready: self.is_ready(),
            }),
            PeerRequest::Get { key } => self
                .route(Change::Read, &key, hops)
                .await
                .map(Outcome::into_reply),
            PeerRequest::Set {
                key,
                value,
                precondition,
            } => self
                .route(
                    Change::Set {
                        value,
                        precondition,
                    },
                    &key,
                    hops,
                )
                .await
                .map(Outcome::into_reply),
            PeerRequest::Delete { key } => self
                .route(Change::Delete, &key, hops)
                .await
                .map(Outcome::into_reply),
            PeerRequest::Incr { key, by } => self
                .route(Change::Incr(by), &key, hops)
                .await
                .map(Outcome::into_reply),
            PeerRequest::Sync { shard } => Ok(self.sync_shard(from, shard)),
            PeerRequest::Digest { shard } => Ok(crate::recovery::digest(self, from, shard)),
            request => return self.acceptor(request),
        };
        result.map_err(|e| e.to_remote())
    }

    /// The replica side of the protocol. Refuses while this replica cannot vote for the key.
    pub(crate) fn acceptor(&self, request: PeerRequest) -> PeerResult {
        if let Some(key) = request.key() {
            if !self.can_vote(key) {
                return Err(RemoteError::new(
                    "recovering",
                    format!(
                        "node {} is catching up and does not vote for this key yet",
                        self.id
                    ),
                ));
            }
        }
        match request {
            PeerRequest::Prepare { key, ballot, grow } => {
                self.observe_ballot(ballot);
                match self.store.prepare(&key, ballot, grow)? {
                    Ok(register) => Ok(PeerReply::Promised {
                        incarnation: self.incarnation,
                        register,
                    }),
                    Err(promised) => Ok(PeerReply::Rejected { promised }),
                }
            }
            PeerRequest::Accept {
                key,
                register,
                promisers,
            } => {
                self.observe_ballot(register.ballot);
                // Held across the check and the write, so a newer incarnation cannot be recorded
                // (and a recovering peer cannot copy this shard) in between.
                let known = self.membership.read_incarnations();
                let stale = promisers.iter().find(|&&(node, incarnation)| {
                    if node == self.id {
                        incarnation != self.incarnation
                    } else {
                        known.get(&node).is_some_and(|&k| k > incarnation)
                    }
                });
                if let Some((node, _)) = stale {
                    return Err(RemoteError::new(
                        "stale_incarnation",
                        format!("node {node} restarted since it promised this ballot"),
                    ));
                }
                match self.store.accept(&key, register)? {
                    Ok(()) => Ok(PeerReply::Accepted),
                    Err(promised) => Ok(PeerReply::Rejected { promised }),
                }
            }
            PeerRequest::Read { key } => Ok(PeerReply::Register {
                register: self.store.register(&key),
            }),
            PeerRequest::Repair { key, register } => {
                let applied = self.store.repair(&key, register)?;
                if applied {
                    Counters::bump(&self.counters.repairs);
                }
                Ok(PeerReply::Repaired { applied })
            }
            other => Err(RemoteError::new(
                "invalid_request",
                format!("not a replica request: {other:?}"),
            )),
        }
    }

    /// The keys of one store shard that `peer` replicates, with their full replica state.
    fn sync_shard(&self, peer: NodeId, shard: u32) -> PeerReply {
        let map = self.map();
        let r = self.replication_factor();
        let mut owners = Vec::with_capacity(r);
        let states = self.store.scan_shard(shard as usize, |key| {
            map.owners_into(key.as_bytes(), r, &mut owners);
            owners.contains(&peer)
        });
        let next = shard + 1;
        PeerReply::Synced {
            states,
            next: (next < Store::SHARDS as u32).then_some(next),
        }
    }

    /// Notes a ballot seen, so this node's next ballot is higher.
    pub(crate) fn observe_ballot(&self, ballot: Ballot) {
        self.round.fetch_max(ballot.round(), Ordering::AcqRel);
    }

    /// A ballot higher than any this node has seen.
    pub(crate) fn next_ballot(&self) -> Ballot {
        Ballot::new(self.round.fetch_add(1, Ordering::AcqRel) + 1, self.id)
    }
}

impl PeerHandler for Node {
    fn handle(&self, hops: u8, envelope: Envelope) -> BoxFuture<'_, PeerResult> {
        Box::pin(self.handle_peer(hops, envelope))
    }
}

fn unexpected(outcome: Outcome) -> Error {
    Error::Remote(RemoteError::new(
        "unexpected_reply",
        format!("the replica answered with an unexpected outcome: {outcome:?}"),
    ))
}

/// A number that grows with every process start: microseconds since the Unix epoch. If the clock
/// stepped backwards across a restart, peers that know the higher old incarnation refuse this
/// node's promises as stale: the node fails closed (its proposals fail) rather than unsafely.
fn new_incarnation() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
}
