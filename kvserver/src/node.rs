//! The node: a façade over the parts that do the work.
//!
//! A client request for a key goes to the [`Coordinator`], which runs it here if this node is a
//! replica of the key (a CASPaxos round by the [`Proposer`]: see
//! `docs/consistency.md`) or forwards it to one. Peers' messages are answered by the
//! [`PeerHandler`] (the replica side is the [`Acceptor`]). Background
//! tasks — the failure detector, catch-up, seeding, anti-entropy, expiry, eviction — each get
//! only the parts they use, and all of them run under one [`Lifecycle`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use kvcore::{
    partition, validate_key, ClusterMap, Conflict, Entry, ErrorCode, Limits, MapSpec, NodeId,
    NodeInfo, Precondition, Store, StoreConfig, Value, Version,
};
use kvnet::rpc::{Delete, FetchStatus, Incr, NodeStatus, Seed, Set, SetReply};
use kvnet::{CallError, FrameHandler, Transport};

use crate::acceptor::{Acceptor, BallotClock};
use crate::anti_entropy::AntiEntropy;
use crate::backfill::{self, Backfiller, Queue};
use crate::batch::{self, BatchCoordinator};
use crate::catchup::CatchUp;
use crate::clock::Clock;
use crate::config::{Config, ConfigError};
use crate::coordinator::Coordinator;
use crate::detector::{FailureDetector, PeerState};
use crate::drift::Drift;
use crate::error::Error;
use crate::eviction::{Evictor, Room};
use crate::expiry::Expirer;
use crate::incarnations::{clock_micros, Incarnation, Incarnations};
use crate::lifecycle::Lifecycle;
use crate::membership::Membership;
use crate::metrics::{bump, Metrics};
use crate::operation::Operation;
use crate::peers::PeerClient;
use crate::proposer::Proposer;
use crate::quorum::Quorum;
use crate::readiness::Readiness;
use crate::rebalance::{self, Progress, Rebalancer};
use crate::request_id;
use crate::scan::{Cursor, ScanPage, Scanner, MAX_SCAN_LIMIT};
use crate::seed::{seed, write_once};
use crate::service::PeerHandler;
use crate::status::{Figures, Overviews};
use crate::telemetry::Telemetry;
use crate::topology::{is_reserved, Topology, MAP_KEY};

/// How often the evictor looks at its store's bytes (in cache mode).
const EVICTION_TICK: std::time::Duration = std::time::Duration::from_millis(10);

/// How far a membership change has come, as one node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebalanceProgress {
    /// Keys this node holds that the change has yet to copy to a member still copying.
    pub remaining_keys: u64,
}

/// The outcome of a conditional write: the new version, or the [`Conflict`] that refused it.
pub type WriteOutcome = Result<Version, Conflict>;

/// How a value is written: the condition it needs and how long it lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// What the key's current state must be for the write to apply.
    pub precondition: Precondition,
    /// Milliseconds the value lives for (at least 1); `None`: it does not expire, unless
    /// `keep_ttl` keeps the key's expiry time.
    pub ttl_ms: Option<u64>,
    /// Without `ttl_ms`, keep the expiry time the key has (a write clears it otherwise).
    pub keep_ttl: bool,
}

impl WriteOptions {
    /// Refuses options that contradict each other or a TTL of 0.
    pub fn check(&self) -> Result<(), Error> {
        if self.ttl_ms == Some(0) {
            return Err(Error::bad_request(
                ErrorCode::InvalidRequest,
                "ttl_ms must be at least 1 (delete the key to remove it now)",
            ));
        }
        if self.ttl_ms.is_some() && self.keep_ttl {
            return Err(Error::bad_request(
                ErrorCode::InvalidRequest,
                "ttl_ms and keep_ttl cannot be combined",
            ));
        }
        Ok(())
    }
}

/// One write of a batch ([`Node::mset`]).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchWrite {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Value,
    /// Its condition and time to live.
    pub options: WriteOptions,
}

/// The answer to one write of a batch: the entry written, the [`Conflict`] that refused it,
/// or why it failed.
pub type BatchWriteResult = Result<Result<Entry, Conflict>, Error>;

/// A cluster node. Shared behind an `Arc`; every method takes `&self`.
///
/// An operation's peer messages carry the id of the client request being served (see
/// [`request_id::scope`]), or a fresh id when called outside one.
pub struct Node {
    config: Config,
    incarnation: Arc<Incarnation>,
    started: Instant,
    topology: Arc<Topology>,
    store: Arc<Store>,
    detector: Arc<FailureDetector>,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    telemetry: Arc<Telemetry>,
    under_replicated: Arc<AtomicU64>,
    progress: Arc<Progress>,
    drift: Arc<Drift>,
    backfill_queue: std::sync::Mutex<Option<Queue>>,
    client: Arc<PeerClient>,
    coordinator: Arc<Coordinator>,
    batches: Arc<BatchCoordinator>,
    scanner: Arc<Scanner>,
    handler: Arc<PeerHandler>,
    lifecycle: Arc<Lifecycle>,
    clock: Arc<Clock>,
    room: Arc<Room>,
    figures: Arc<Figures>,
    overviews: Overviews,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id())
            .field("incarnation", &self.incarnation.get())
            .field("map", &self.map())
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A node as configured, sending peer requests through `transport`. Call
    /// [`start`](Node::start) to begin catching up and exchanging heartbeats.
    pub fn new(config: &Config, transport: Arc<dyn Transport>) -> Result<Self, ConfigError> {
        Self::with_incarnation(config, transport, clock_micros())
    }

    /// [`Node::new`], starting from `incarnation` instead of the clock's reading (microseconds
    /// since 1970): how a node whose clock went back across a restart starts. It still rises
    /// above whatever incarnation of it a peer remembers while it catches up.
    pub fn with_incarnation(
        config: &Config,
        transport: Arc<dyn Transport>,
        incarnation: u64,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let record = Membership::initial(static_map(config)?.spec(), config.replicas);
        let alone = record.map.nodes.len() == 1;
        Self::build(
            config,
            transport,
            incarnation,
            config.node_id(),
            record,
            alone,
        )
    }

    /// A node that joined a running cluster as node `me`, under the cluster's `record` (what
    /// the member that added it answered). `fresh` says it never ran as this node before: it
    /// has nothing to catch up on and votes at once; a node that restarted under an id it had
    /// catches up first, like any restarted node.
    pub fn joined(
        config: &Config,
        transport: Arc<dyn Transport>,
        me: NodeId,
        record: Membership,
        fresh: bool,
    ) -> Result<Self, ConfigError> {
        Self::build(config, transport, clock_micros(), me, record, fresh)
    }

    fn build(
        config: &Config,
        transport: Arc<dyn Transport>,
        incarnation: u64,
        me: NodeId,
        record: Membership,
        ready: bool,
    ) -> Result<Self, ConfigError> {
        let topology = Arc::new(Topology::new(me, record).map_err(|e| ConfigError(e.to_string()))?);
        if !topology.takes_part() {
            return Err(ConfigError(format!(
                "node {me} is not a member of the cluster map"
            )));
        }
        let limits = Limits {
            max_value_bytes: config.max_value_bytes(),
        };
        let store_config = StoreConfig {
            max_memory: config.max_memory,
            limits,
            eviction: config.eviction,
        };
        let store = Arc::new(Store::new(store_config));
        let room = Arc::new(Room::new(store_config));
        topology.attach_store(store.clone());
        let incarnation = Arc::new(Incarnation::new(incarnation));
        let lifecycle = Arc::new(Lifecycle::new());
        let metrics = Arc::new(Metrics::default());
        let telemetry = Arc::new(Telemetry::default());
        let detector = Arc::new(FailureDetector::new(topology.peers(), config.down_after()));
        let readiness = Arc::new(Readiness::new(ready));
        let incarnations = Arc::new(Incarnations::default());
        let ballots = Arc::new(BallotClock::new(me, store.clone()));
        let drift = Arc::new(Drift::default());
        let clock = Arc::new(Clock::default());
        let (backfiller, backfill_queue) = Backfiller::new(drift.clone());
        let client = Arc::new(PeerClient::new(
            transport,
            topology.clone(),
            incarnation.clone(),
            telemetry.clone(),
        ));
        let acceptor = Arc::new(Acceptor::new(
            incarnation.clone(),
            store.clone(),
            topology.clone(),
            readiness.clone(),
            incarnations.clone(),
            ballots.clone(),
            metrics.clone(),
            drift.clone(),
            room.clone(),
        ));
        let quorum = Arc::new(Quorum::new(
            client.clone(),
            acceptor.clone(),
            detector.clone(),
            readiness.clone(),
            lifecycle.clone(),
            drift.clone(),
            config.heartbeat_interval(),
        ));
        let proposer = Arc::new(Proposer::new(
            me,
            store.clone(),
            quorum,
            client.clone(),
            ballots,
            metrics.clone(),
            lifecycle.clone(),
            incarnations.clone(),
            config.op_timeout(),
            config.cached_promises,
            backfiller,
            clock.clone(),
            room.clone(),
        ));
        let coordinator = Arc::new(Coordinator::new(
            topology.clone(),
            proposer,
            client.clone(),
            detector.clone(),
            metrics.clone(),
            clock.clone(),
        ));
        let batches = Arc::new(BatchCoordinator::new(
            topology.clone(),
            coordinator.clone(),
            client.clone(),
            detector.clone(),
            limits,
        ));
        let scanner = Arc::new(Scanner::new(
            topology.clone(),
            store.clone(),
            readiness.clone(),
            client.clone(),
            detector.clone(),
            coordinator.clone(),
            clock.clone(),
        ));
        let started = Instant::now();
        let under_replicated = Arc::<AtomicU64>::default();
        let figures = Arc::new(Figures::new(
            store.clone(),
            metrics.clone(),
            under_replicated.clone(),
            readiness.clone(),
            topology.clone(),
            incarnation.clone(),
            started,
        ));
        let handler = Arc::new(PeerHandler::new(
            incarnation.clone(),
            limits,
            topology.clone(),
            coordinator.clone(),
            batches.clone(),
            acceptor,
            incarnations,
            readiness.clone(),
            metrics.clone(),
            lifecycle.clone(),
            drift.clone(),
            client.clone(),
            figures.clone(),
            telemetry.clone(),
        ));
        Ok(Node {
            config: config.clone(),
            incarnation,
            started,
            topology,
            store,
            detector,
            readiness,
            metrics,
            under_replicated,
            telemetry,
            progress: Arc::default(),
            drift,
            backfill_queue: std::sync::Mutex::new(Some(backfill_queue)),
            client,
            coordinator,
            batches,
            scanner,
            handler,
            lifecycle,
            clock,
            room,
            figures,
            overviews: Overviews::default(),
        })
    }

    /// Starts the background work: heartbeats, catching up from peers (then writing the seed
    /// keys, if configured), anti-entropy. It runs until the node stops.
    pub fn start(&self) {
        let retry = self.config.heartbeat_interval();
        self.lifecycle.spawn(self.detector.clone().run(
            self.client.clone(),
            self.topology.clone(),
            self.config.heartbeat_interval(),
        ));
        let catching_up = CatchUp {
            client: self.client.clone(),
            store: self.store.clone(),
            readiness: self.readiness.clone(),
            topology: self.topology.clone(),
            incarnation: self.incarnation.clone(),
            detector: self.detector.clone(),
        }
        .run(retry);
        let seeding = self
            .config
            .seed_keys
            .then(|| seed(self.coordinator.clone(), retry));
        let recording = record_map(self.coordinator.clone(), self.topology.clone(), retry);
        let readiness = self.readiness.clone();
        self.lifecycle.spawn(async move {
            catching_up.await;
            recording.await;
            if let Some(seeding) = seeding {
                seeding.await;
            }
            readiness.set_seeded();
        });
        let queue = self
            .backfill_queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(queue) = queue {
            let sending = backfill::run(queue, self.client.clone(), self.drift.clone());
            self.lifecycle.spawn(sending);
        }
        let anti_entropy = AntiEntropy {
            client: self.client.clone(),
            store: self.store.clone(),
            topology: self.topology.clone(),
            detector: self.detector.clone(),
            readiness: self.readiness.clone(),
            coordinator: self.coordinator.clone(),
            metrics: self.metrics.clone(),
            under_replicated: self.under_replicated.clone(),
            drift: self.drift.clone(),
        };
        self.lifecycle
            .spawn(anti_entropy.run(self.config.anti_entropy_interval()));
        let rebalancer = Rebalancer {
            client: self.client.clone(),
            store: self.store.clone(),
            topology: self.topology.clone(),
            coordinator: self.coordinator.clone(),
            readiness: self.readiness.clone(),
            incarnation: self.incarnation.clone(),
            metrics: self.metrics.clone(),
            progress: self.progress.clone(),
        };
        self.lifecycle.spawn(rebalancer.run(retry));
        let expirer = Expirer {
            store: self.store.clone(),
            topology: self.topology.clone(),
            coordinator: self.coordinator.clone(),
            detector: self.detector.clone(),
            readiness: self.readiness.clone(),
            clock: self.clock.clone(),
            metrics: self.metrics.clone(),
        };
        self.lifecycle
            .spawn(expirer.run(self.config.expiry_sweep_interval()));
        if self.config.eviction.evicts() {
            let evictor = Evictor {
                store: self.store.clone(),
                topology: self.topology.clone(),
                coordinator: self.coordinator.clone(),
                client: self.client.clone(),
                readiness: self.readiness.clone(),
                metrics: self.metrics.clone(),
                room: self.room.clone(),
                lifecycle: self.lifecycle.clone(),
            };
            self.lifecycle.spawn(evictor.run(EVICTION_TICK));
        }
    }

    /// Stops every task of the node at once, as a crash would: nothing finishes gracefully.
    pub fn crash(&self) {
        self.lifecycle.stop();
    }

    /// Stops every task of the node and waits until they have all ended.
    pub async fn stop(&self) {
        self.lifecycle.stop_and_wait().await;
    }

    /// The tasks of this node; the HTTP server runs its connections here too.
    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    /// What answers this node's peers, for a transport's receiving side.
    pub fn peer_handler(&self) -> Arc<dyn FrameHandler> {
        self.handler.clone()
    }

    /// The node's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.topology.me()
    }

    /// This node's incarnation: it grows every time a node process starts.
    pub fn incarnation(&self) -> u64 {
        self.incarnation.get()
    }

    /// The current cluster map.
    pub fn map(&self) -> Arc<ClusterMap> {
        self.topology.map()
    }

    /// This node's own store (its replicas of the keys it owns).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Request counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The node's measurements of its traffic (request latencies, peer calls, connections).
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// A peer's state as this node's failure detector sees it.
    pub fn peer_state(&self, id: NodeId) -> PeerState {
        if id == self.id() {
            return if self.is_ready() {
                PeerState::Up
            } else {
                PeerState::Recovering
            };
        }
        self.detector.state(id)
    }

    /// The state of node `id` as `/cluster` and `/metrics` show it: down to this node's failure
    /// detector, else where the membership change in `record` has it (`joining`, `leaving`), this
    /// node itself once `removed`, else as the detector sees it (`up`, `recovering`).
    pub fn node_state(&self, record: &Membership, id: NodeId) -> &'static str {
        let seen = self.peer_state(id);
        match seen {
            PeerState::Down => seen.as_str(),
            _ if id == self.id() && self.is_removed() => "removed",
            _ => crate::membership::recorded_state(record, id).unwrap_or(seen.as_str()),
        }
    }

    /// Copies kept of each key.
    pub fn replication_factor(&self) -> usize {
        self.topology.replication_factor()
    }

    /// Whether this node has caught up after starting and votes for every key.
    pub fn is_ready(&self) -> bool {
        self.readiness.is_ready()
    }

    /// Whether the node is ready and the cluster map and the seed keys (if configured) are
    /// recorded: what `GET /health` reports.
    pub fn is_healthy(&self) -> bool {
        self.readiness.is_healthy()
    }

    /// Whether this node's replica of the cluster's own map register holds the map.
    pub fn holds_map_replica(&self) -> bool {
        self.store.get(MAP_KEY).is_some()
    }

    /// Keys this node is primary for that lacked a copy at the last anti-entropy pass.
    pub fn under_replicated(&self) -> u64 {
        self.under_replicated.load(Ordering::Relaxed)
    }

    /// The cluster overview the status page shows, as this node gathers it (see
    /// [`Overviews`]): built while this call waited, shared with calls made at the same time.
    pub async fn overview(&self) -> Arc<serde_json::Value> {
        self.overviews.get(self).await
    }

    /// This node's own figures, as it reports them to its peers for the status page.
    pub fn status(&self) -> NodeStatus {
        self.figures.report()
    }

    /// Asks node `to` for its own figures (a [`FetchStatus`]). Bounded by the transport's
    /// request timeout only: a caller that must not wait that long sets its own.
    pub async fn fetch_status(&self, to: &NodeInfo) -> Result<NodeStatus, CallError> {
        let frame = self.client.frame(request_id::current(), 1, &FetchStatus);
        self.client.send(to, &frame).await
    }

    /// Time since the node started.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Every other member of the cluster.
    pub fn peers(&self) -> Vec<NodeId> {
        self.topology.peers()
    }

    /// The key's primary replica.
    pub fn owner(&self, key: &str) -> NodeId {
        self.topology.placement(key).primary()
    }

    /// The key's replicas, primary first.
    pub fn owners(&self, key: &str) -> Vec<NodeId> {
        self.topology.placement(key).replicas
    }

    /// The cluster's record of its membership as held by this node: the one its map was
    /// built from, or a later one of the same epoch.
    pub fn membership(&self) -> Arc<Membership> {
        self.topology.record()
    }

    /// The cluster's record of its membership, read linearizably from the cluster's own
    /// replicated register (and adopted by this node if it is later than its own); `None` until
    /// a node has recorded it (each does once it has caught up).
    pub async fn recorded_membership(&self) -> Result<Option<Membership>, Error> {
        let read = rebalance::read_record(&self.coordinator);
        let read = self
            .lifecycle
            .unless_stopped(read)
            .await
            .unwrap_or(Err(Error::ShuttingDown))?;
        let Some((record, _)) = read else {
            return Ok(None);
        };
        if let Err(e) = self.topology.adopt(record.clone()) {
            tracing::error!(error = %e, "the recorded cluster map does not build a map");
        }
        Ok(Some(record))
    }

    /// The cluster map as recorded in the cluster's own replicated register, read linearizably;
    /// `None` until a node has recorded it.
    pub async fn recorded_map(&self) -> Result<Option<MapSpec>, Error> {
        Ok(self.recorded_membership().await?.map(|record| record.map))
    }

    /// Adds a node listening on `addr` to the cluster (it gets the next free id, or its id if
    /// a node at that address is already a member), starting the change that moves its keys
    /// to it. Returns its id, the record as it stands after the change, and whether the node
    /// is new (`false`: a node at that address was already a member, so one that restarts
    /// and asks again catches up as a restarted node).
    pub async fn join(&self, addr: &str) -> Result<(NodeId, Membership, bool), Error> {
        self.check_not_removed()?;
        let change = rebalance::change(&self.coordinator, &self.topology, |r| r.join(addr));
        let (record, fresh) = self
            .lifecycle
            .unless_stopped(change)
            .await
            .unwrap_or(Err(Error::ShuttingDown))?;
        let id = record.node_at(addr).ok_or_else(|| {
            Error::bad_request(
                kvcore::ErrorCode::ChangeInProgress,
                format!("{addr} was removed from the cluster while it joined"),
            )
        })?;
        tracing::info!(node = %id, addr, epoch = record.map.epoch, "node joining");
        Ok((id, record, fresh))
    }

    /// Removes node `id` from the cluster, starting the change that moves its keys to the
    /// others (see [`Membership::remove`]). Returns the record as it stands after the change.
    pub async fn remove(&self, id: NodeId, force: bool) -> Result<Membership, Error> {
        self.check_not_removed()?;
        let detector = self.detector.clone();
        let me = self.id();
        let down = move |n: NodeId| n != me && detector.is_down(n);
        let change = rebalance::change(&self.coordinator, &self.topology, |r| {
            r.remove(id, force, &down)
        });
        let (record, _) = self
            .lifecycle
            .unless_stopped(change)
            .await
            .unwrap_or(Err(Error::ShuttingDown))?;
        tracing::info!(node = %id, force, epoch = record.map.epoch, "node leaving");
        Ok(record)
    }

    /// How far the running membership change has come, as this node sees it.
    pub fn rebalance_progress(&self) -> RebalanceProgress {
        RebalanceProgress {
            remaining_keys: self.progress.remaining_keys.load(Ordering::Relaxed),
        }
    }

    /// Whether this node was removed from the cluster (it then serves nothing).
    pub fn is_removed(&self) -> bool {
        self.readiness.is_removed()
    }

    fn check_not_removed(&self) -> Result<(), Error> {
        if self.is_removed() {
            return Err(Error::Removed { node: self.id() });
        }
        Ok(())
    }

    /// Reads `key`, linearizably.
    pub async fn get(&self, key: &str) -> Result<Option<Entry>, Error> {
        bump(&self.metrics.gets);
        validate_client_key(key)?;
        self.check_not_removed()?;
        let read = self.coordinator.get(key, 0, request_id::current());
        self.lifecycle
            .unless_stopped(read)
            .await
            .unwrap_or(Err(Error::ShuttingDown))
    }

    /// Runs a write unless the node stops first; a write cut off by a stop may have been
    /// applied, so that is an unknown outcome.
    async fn write<O: Operation>(&self, op: O) -> Result<O::Reply, Error> {
        self.check_not_removed()?;
        let write = self.coordinator.write(op, 0, request_id::current());
        self.lifecycle
            .unless_stopped(write)
            .await
            .unwrap_or_else(|| {
                Err(Error::OutcomeUnknown {
                    reason: "the node stopped while coordinating the write".into(),
                })
            })
    }

    /// Writes `key` if `precondition` holds.
    pub async fn set(
        &self,
        key: &str,
        value: Value,
        precondition: Precondition,
    ) -> Result<WriteOutcome, Error> {
        let options = WriteOptions {
            precondition,
            ..WriteOptions::default()
        };
        Ok(self
            .set_with(key, value, options)
            .await?
            .map(|entry| entry.version))
    }

    /// Writes `key` as `options` say, returning the entry written (with its expiry time) or the
    /// [`Conflict`] that refused it.
    pub async fn set_with(
        &self,
        key: &str,
        value: Value,
        options: WriteOptions,
    ) -> Result<Result<Entry, Conflict>, Error> {
        bump(&self.metrics.writes);
        validate_client_key(key)?;
        options.check()?;
        self.store.config().limits.check_value(&value)?;
        let set = Set {
            key: key.into(),
            value: value.clone(),
            precondition: options.precondition,
            ttl_ms: options.ttl_ms,
            keep_ttl: options.keep_ttl,
        };
        match self.write(set).await? {
            SetReply::Written { version, expires } => Ok(Ok(Entry {
                value,
                version,
                expires,
            })),
            SetReply::Conflict(current) => Ok(Err(Conflict { current })),
        }
    }

    /// Deletes `key`, returning what it held.
    pub async fn delete(&self, key: &str) -> Result<Option<Entry>, Error> {
        bump(&self.metrics.writes);
        validate_client_key(key)?;
        let delete = Delete {
            key: key.into(),
            if_version: None,
        };
        self.write(delete).await
    }

    /// The clock this node reads expiry times against. Tests shift it to skew nodes' clocks.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Adds `by` to the integer under `key` (a missing key counts as 0), returning the new entry.
    pub async fn incr(&self, key: &str, by: i64) -> Result<Entry, Error> {
        bump(&self.metrics.writes);
        validate_client_key(key)?;
        let incr = Incr {
            key: key.into(),
            by,
        };
        self.write(incr).await
    }
}

/// # Batches and scans
impl Node {
    /// Reads `keys`, each linearizably on its own (a batch is not atomic: see
    /// [`crate::batch`]); the answers are in the order of the keys, duplicates included. A key
    /// that is invalid or could not be read gets its own error; the batch as a whole fails only
    /// if it is empty, holds more than [`MAX_BATCH`](crate::batch::MAX_BATCH) keys, or the node
    /// cannot serve.
    pub async fn mget(&self, keys: &[String]) -> Result<Vec<Result<Option<Entry>, Error>>, Error> {
        batch::check_size(keys.len())?;
        self.check_not_removed()?;
        bump(&self.metrics.batches);
        self.metrics
            .gets
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
        let mut answers: Vec<Option<Result<Option<Entry>, Error>>> = Vec::new();
        let mut valid = Vec::with_capacity(keys.len());
        for key in keys {
            match validate_client_key(key) {
                Ok(()) => {
                    valid.push(key.clone());
                    answers.push(None);
                }
                Err(e) => answers.push(Some(Err(e.into()))),
            }
        }
        let read = self.batches.get_many(valid, request_id::current());
        let mut read = self
            .lifecycle
            .unless_stopped(read)
            .await
            .ok_or(Error::ShuttingDown)?
            .into_iter();
        Ok(answers
            .into_iter()
            .map(|answer| {
                answer
                    .or_else(|| read.next())
                    .unwrap_or(Err(Error::ShuttingDown))
            })
            .collect())
    }

    /// Writes `items`, each linearizably on its own (a batch is not atomic); the answers are in
    /// the order of the items. An item that is invalid, refused by its condition or failed gets
    /// its own answer; the batch as a whole fails only if it is empty, holds more than
    /// [`MAX_BATCH`](crate::batch::MAX_BATCH) items, or the node cannot serve (a node that stops
    /// while the batch runs answers `outcome_unknown`: any of the writes may have been applied).
    pub async fn mset(&self, items: Vec<BatchWrite>) -> Result<Vec<BatchWriteResult>, Error> {
        batch::check_size(items.len())?;
        self.check_not_removed()?;
        bump(&self.metrics.batches);
        self.metrics
            .writes
            .fetch_add(items.len() as u64, Ordering::Relaxed);
        let mut answers: Vec<Option<BatchWriteResult>> = Vec::new();
        let mut values = Vec::new();
        let mut sets = Vec::with_capacity(items.len());
        for item in items {
            match self.check_write(&item) {
                Ok(()) => {
                    sets.push(Set {
                        key: item.key,
                        value: item.value.clone(),
                        precondition: item.options.precondition,
                        ttl_ms: item.options.ttl_ms,
                        keep_ttl: item.options.keep_ttl,
                    });
                    values.push(item.value);
                    answers.push(None);
                }
                Err(e) => answers.push(Some(Err(e))),
            }
        }
        let write = self.batches.set_many(sets, request_id::current());
        let written =
            self.lifecycle
                .unless_stopped(write)
                .await
                .ok_or_else(|| Error::OutcomeUnknown {
                    reason: "the node stopped while coordinating the batch".into(),
                })?;
        let mut written = written.into_iter().zip(values).map(|(reply, value)| {
            reply.map(|reply| match reply {
                SetReply::Written { version, expires } => Ok(Entry {
                    value,
                    version,
                    expires,
                }),
                SetReply::Conflict(current) => Err(Conflict { current }),
            })
        });
        Ok(answers
            .into_iter()
            .map(|answer| {
                answer
                    .or_else(|| written.next())
                    .unwrap_or_else(|| Err(Error::ShuttingDown))
            })
            .collect())
    }

    fn check_write(&self, item: &BatchWrite) -> Result<(), Error> {
        validate_client_key(&item.key)?;
        item.options.check()?;
        self.store.config().limits.check_value(&item.value)?;
        Ok(())
    }

    /// One page of a scan of the cluster's live keys that start with `prefix`: up to `limit`
    /// keys (at least 1; more than [`MAX_SCAN_LIMIT`] is lowered to it) following `after` in
    /// scan order (see [`crate::scan`]). Pages may hold fewer keys than asked for; the
    /// scan is complete when a page has no cursor.
    pub async fn scan(
        &self,
        prefix: &str,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<ScanPage, Error> {
        self.check_not_removed()?;
        if limit == 0 {
            return Err(Error::bad_request(
                ErrorCode::InvalidRequest,
                "limit must be at least 1",
            ));
        }
        if prefix.len() > kvcore::MAX_KEY_BYTES {
            return Err(Error::bad_request(
                ErrorCode::InvalidRequest,
                format!(
                    "the prefix is {} bytes; keys are at most {}",
                    prefix.len(),
                    kvcore::MAX_KEY_BYTES
                ),
            ));
        }
        bump(&self.metrics.scans);
        let page = self.scanner.page(
            prefix,
            after,
            limit.min(MAX_SCAN_LIMIT),
            request_id::current(),
        );
        self.lifecycle
            .unless_stopped(page)
            .await
            .unwrap_or(Err(Error::ShuttingDown))
    }
}

/// The map of a cluster started with fixed members (`--id`/`--peers`): node `i` is the `i`th
/// address, at epoch 1.
fn static_map(config: &Config) -> Result<ClusterMap, ConfigError> {
    let partitioner = partition::by_name(&config.partitioner)
        .ok_or_else(|| ConfigError(format!("unknown partitioner {:?}", config.partitioner)))?;
    let nodes = config
        .peers
        .iter()
        .enumerate()
        .map(|(i, addr)| NodeInfo {
            id: NodeId(i as u32),
            addr: addr.clone(),
        })
        .collect();
    let map = if config.changing_from.is_empty() {
        ClusterMap::new(1, nodes, partitioner)
    } else {
        ClusterMap::from_spec(&MapSpec {
            epoch: 1,
            nodes,
            partitioner: partitioner.name().to_owned(),
            previous: Some(config.changing_from.iter().map(|&i| NodeId(i)).collect()),
            departing: Vec::new(),
        })
    };
    map.map_err(|e| ConfigError(e.to_string()))
}

/// Checks a key a client names: a valid key, and not one of the cluster's own records.
fn validate_client_key(key: &str) -> Result<(), kvcore::Error> {
    validate_key(key)?;
    if is_reserved(key) {
        return Err(kvcore::Error::InvalidKey {
            reason: "keys starting with U+0000 are reserved for the cluster's own records".into(),
        });
    }
    Ok(())
}

/// Records the cluster map in the cluster's own register ([`MAP_KEY`], replicated on every
/// member) unless one was recorded before: the first node to get there writes it, the others
/// find it. Retries every `retry` until it has an answer.
async fn record_map(
    coordinator: Arc<Coordinator>,
    topology: Arc<Topology>,
    retry: std::time::Duration,
) {
    let record = topology.record();
    let json = serde_json::to_vec(&*record).expect("a record always encodes");
    let op = Seed {
        key: MAP_KEY.into(),
        value: Value::binary(json),
    };
    write_once(&coordinator, op, retry).await;
}
