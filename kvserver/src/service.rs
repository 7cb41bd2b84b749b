//! The node's answers to its peers: one handler per message of the peer protocol.

use std::sync::Arc;

use bytes::Bytes;
use kvcore::{validate_key, Ballot, Entry, ErrorCode, Limits, Register};
use kvnet::rpc::{
    self, Accept, Backfill, Collect, Delete, DigestPage, DigestShard, Evict, FetchMap, FetchStatus,
    Get, Incr, KeysPage, MapCopy, MultiGet, MultiSet, NodeStatus, Ping, Pong, Prepare, Read,
    Repair, ScanKeys, Seed, Set, SetReply, SyncPage, SyncShard, MAX_BATCH_ITEMS,
};
use kvnet::wire::Incoming;
use kvnet::{BoxFuture, FrameError, FrameHandler, Handle, Header, RemoteError, Rpc};
use tracing::Instrument;

use crate::acceptor::{Acceptor, AcceptorFields, AcceptorRpc};
use crate::batch::BatchCoordinator;
use crate::coordinator::Coordinator;
use crate::drift::Drift;
use crate::incarnations::{plausible, Incarnation, Incarnations};
use crate::lifecycle::Lifecycle;
use crate::metrics::{bump, Metrics};
use crate::operation::is_seed_key;
use crate::operation::Operation;
use crate::peers::PeerClient;
use crate::readiness::Readiness;
use crate::request_id::RequestId;
use crate::scan;
use crate::status::Figures;
use crate::telemetry::Telemetry;
use crate::topology::Topology;

/// Answers peer requests for one node.
#[derive(Debug)]
pub struct PeerHandler {
    incarnation: Arc<Incarnation>,
    limits: Limits,
    topology: Arc<Topology>,
    coordinator: Arc<Coordinator>,
    batches: Arc<BatchCoordinator>,
    acceptor: Arc<Acceptor>,
    incarnations: Arc<Incarnations>,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    lifecycle: Arc<Lifecycle>,
    drift: Arc<Drift>,
    client: Arc<PeerClient>,
    figures: Arc<Figures>,
    telemetry: Arc<Telemetry>,
}

type Reply<'a, T> = BoxFuture<'a, Result<T, RemoteError>>;

impl PeerHandler {
    /// The peer side of a node.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        incarnation: Arc<Incarnation>,
        limits: Limits,
        topology: Arc<Topology>,
        coordinator: Arc<Coordinator>,
        batches: Arc<BatchCoordinator>,
        acceptor: Arc<Acceptor>,
        incarnations: Arc<Incarnations>,
        readiness: Arc<Readiness>,
        metrics: Arc<Metrics>,
        lifecycle: Arc<Lifecycle>,
        drift: Arc<Drift>,
        client: Arc<PeerClient>,
        figures: Arc<Figures>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        PeerHandler {
            incarnation,
            limits,
            topology,
            coordinator,
            batches,
            acceptor,
            incarnations,
            readiness,
            metrics,
            lifecycle,
            drift,
            client,
            figures,
            telemetry,
        }
    }

    /// What every message goes through first. The sender's incarnation is recorded before the
    /// message is handled: a recovering node's first sync request must fence off its previous
    /// life before this node copies anything to it.
    ///
    /// Peers are authenticated by the transport, but what they send is still checked: a bug or
    /// a confused peer must not be able to overflow anything or shut a node out.
    ///
    /// A message sent under a later epoch than this node's makes it fetch the map first (from
    /// the sender, or any node that has it); one sent under another epoch than the node's is
    /// refused, so the sender fetches this node's map or this node fetched the sender's.
    async fn admit(&self, header: &Header) -> Result<(), RemoteError> {
        self.check_sender(header)?;
        if header.epoch > self.topology.epoch() {
            self.client.catch_up_map(header.epoch, header.from).await;
        }
        let map = self.topology.map();
        if map.node(header.from).is_none() {
            return Err(invalid(format!(
                "node {} is not in the cluster map",
                header.from
            )));
        }
        self.check_epoch(header, map.epoch())?;
        // Only a message that passed every check counts: a refused one must leave no trace.
        self.incarnations.observe(header.from, header.incarnation);
        Ok(())
    }

    /// Refuses a message sent under another epoch than `epoch`.
    fn check_epoch(&self, header: &Header, epoch: u64) -> Result<(), RemoteError> {
        if header.epoch != epoch {
            return Err(RemoteError::new(
                ErrorCode::EpochMismatch,
                format!(
                    "node {} sent a message for cluster map epoch {}, node {} is at epoch {epoch}",
                    header.from,
                    header.epoch,
                    self.topology.me()
                ),
            ));
        }
        Ok(())
    }

    /// The checks of the sender's identity every message gets, members or not.
    fn check_sender(&self, header: &Header) -> Result<(), RemoteError> {
        // A node sends some messages to itself (a repair of its own replica); only in its
        // current life.
        let own = self.incarnation.get();
        if header.from == self.topology.me() && header.incarnation != own {
            return Err(invalid(format!(
                "a message from this node's incarnation {}, not its current one {own}",
                header.incarnation
            )));
        }
        // Incarnations come from the clock; one a day or more ahead of this node's clock would
        // fence that node's restarts off for as long.
        if !plausible(header.incarnation) {
            return Err(invalid(format!(
                "incarnation {} of node {} is not one a clock within a day of this node's gives",
                header.incarnation, header.from
            )));
        }
        Ok(())
    }

    /// Checks the ballots and versions an acceptor message carries, against `map`.
    fn check_acceptor(
        &self,
        header: &Header,
        map: &kvcore::ClusterMap,
        fields: &AcceptorFields,
    ) -> Result<(), RemoteError> {
        if let Some(value) = fields.value {
            self.limits.check_value(value)?;
        }
        for ballot in fields.own_ballots.into_iter().flatten() {
            check_ballot(ballot)?;
            if ballot.node() != header.from {
                return Err(invalid(format!(
                    "node {} proposed with a ballot of node {}",
                    header.from,
                    ballot.node()
                )));
            }
        }
        if let Some(register) = fields.register {
            check_register(register)?;
        }
        if fields.grow as usize > self.limits.max_value_bytes {
            return Err(invalid(format!(
                "a proposal cannot add {} bytes: values are at most {}",
                fields.grow, self.limits.max_value_bytes
            )));
        }
        if fields.promisers.is_empty() {
            return Ok(());
        }
        // A key has at most as many replicas as there are members (the cluster's own map is on
        // every one), and under a membership change up to twice as many.
        if fields.promisers.len() > 2 * map.len() {
            return Err(invalid("more promisers than replicas".into()));
        }
        if let Some((node, _)) = fields
            .promisers
            .iter()
            .find(|(n, _)| map.node(*n).is_none())
        {
            return Err(invalid(format!(
                "promiser {node} is not in the cluster map"
            )));
        }
        Ok(())
    }

    async fn admit_key(&self, header: &Header, key: &str) -> Result<(), RemoteError> {
        self.admit(header).await?;
        validate_key(key)?;
        Ok(())
    }

    async fn write<O: Operation>(&self, header: &Header, op: O) -> Result<O::Reply, RemoteError> {
        self.admit_key(header, op.key()).await?;
        op.check(&self.limits)?;
        op.check_options().map_err(|e| e.to_remote())?;
        let reply = self
            .coordinator
            .write(op, header.hops, header.request_id)
            .await;
        reply.map_err(|e| e.to_remote())
    }
}

impl FrameHandler for PeerHandler {
    /// Handles a frame within a span carrying its client request's id, so whatever the handler
    /// logs can be found by that id; the line it logs when done is at DEBUG level.
    fn handle_frame(&self, frame: Bytes) -> BoxFuture<'_, Result<Bytes, FrameError>> {
        bump(&self.metrics.peer);
        let span = match Incoming::parse(&frame) {
            Ok(incoming) => {
                let kind = incoming.kind;
                self.telemetry.peer_received(kind);
                let header = incoming.header;
                tracing::info_span!(
                    "peer",
                    request_id = %RequestId(header.request_id),
                    kind = kind.name(),
                    from = %header.from,
                    node = %self.topology.me(),
                )
            }
            // Refused by `dispatch` below.
            Err(_) => tracing::Span::none(),
        };
        Box::pin(
            async move {
                let started = std::time::Instant::now();
                // A crash of this node ends the handler where it stands, as it would end a
                // process.
                let answer = self
                    .lifecycle
                    .unless_stopped(rpc::dispatch(self, &frame))
                    .await
                    .unwrap_or(Err(FrameError::Stopped));
                let duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                match &answer {
                    Ok(_) => tracing::debug!(duration_us, "peer message handled"),
                    Err(e) => tracing::debug!(duration_us, error = %e, "peer message refused"),
                }
                answer
            }
            .instrument(span),
        )
    }
}

impl Handle<Get> for PeerHandler {
    fn handle<'a>(&'a self, header: &'a Header, r: Get) -> Reply<'a, Option<Entry>> {
        Box::pin(async move {
            self.admit_key(header, &r.key).await?;
            let reply = self
                .coordinator
                .get(&r.key, header.hops, header.request_id)
                .await;
            reply.map_err(|e| e.to_remote())
        })
    }
}

/// Refuses a batch message of more than [`MAX_BATCH_ITEMS`] items, before any of them runs.
fn check_batch_len(items: usize) -> Result<(), RemoteError> {
    if items > MAX_BATCH_ITEMS {
        return Err(invalid(format!(
            "a batch message carries at most {MAX_BATCH_ITEMS} items, not {items}"
        )));
    }
    Ok(())
}

/// Batched reads: each key checked and read as a forwarded [`Get`].
impl Handle<MultiGet> for PeerHandler {
    fn handle<'a>(
        &'a self,
        header: &'a Header,
        r: MultiGet,
    ) -> Reply<'a, Vec<Result<Option<Entry>, RemoteError>>> {
        Box::pin(async move {
            self.admit(header).await?;
            check_batch_len(r.keys.len())?;
            let answers = self
                .batches
                .serve_gets(r.keys, header.hops, header.request_id)
                .await;
            Ok(answers)
        })
    }
}

/// Batched writes: each one checked and routed as a forwarded [`Set`]. Everything that refuses
/// the message as a whole happens before any item runs, so the sender may then send its items
/// again.
impl Handle<MultiSet> for PeerHandler {
    fn handle<'a>(
        &'a self,
        header: &'a Header,
        r: MultiSet,
    ) -> Reply<'a, Vec<Result<SetReply, RemoteError>>> {
        Box::pin(async move {
            self.admit(header).await?;
            check_batch_len(r.items.len())?;
            let answers = self
                .batches
                .serve_sets(r.items, header.hops, header.request_id)
                .await;
            Ok(answers)
        })
    }
}

impl Handle<ScanKeys> for PeerHandler {
    fn handle<'a>(&'a self, header: &'a Header, r: ScanKeys) -> Reply<'a, KeysPage> {
        Box::pin(async move {
            self.admit(header).await?;
            scan::check_request(&r)?;
            // A recovering replica's store is not complete: its silence is safer than its page.
            if !self.readiness.is_ready() {
                return Err(RemoteError::new(
                    ErrorCode::Recovering,
                    format!("node {} is catching up", self.topology.me()),
                ));
            }
            // Under the map the sender placed the page with, held while the store is walked:
            // keys a later map moves away are not dropped under it.
            let map = self.topology.pin();
            self.check_epoch(header, map.epoch())?;
            let replicas = self.topology.replicas();
            let me = self.topology.me();
            Ok(scan::local_page(
                self.acceptor.store(),
                &map,
                replicas,
                me,
                &r,
            ))
        })
    }
}

/// Forwarded writes: checked like a client's, then routed.
macro_rules! write_handlers {
    ($($op:ident),*) => {$(
        impl Handle<$op> for PeerHandler {
            fn handle<'a>(
                &'a self,
                header: &'a Header,
                op: $op,
            ) -> Reply<'a, <$op as Rpc>::Reply> {
                Box::pin(self.write(header, op))
            }
        }
    )*};
}

write_handlers!(Set, Delete, Incr, Seed, Evict);

/// Acceptor messages: checked like any peer message, then answered by the acceptor.
macro_rules! acceptor_handlers {
    ($($rpc:ident),*) => {$(
        impl Handle<$rpc> for PeerHandler {
            fn handle<'a>(
                &'a self,
                header: &'a Header,
                request: $rpc,
            ) -> Reply<'a, <$rpc as Rpc>::Reply> {
                Box::pin(async move {
                    self.admit(header).await?;
                    // Held from the epoch check to the answer: see `Topology::pin`.
                    let map = self.topology.pin();
                    self.check_epoch(header, map.epoch())?;
                    self.check_acceptor(header, &map, &request.fields())?;
                    self.acceptor.handle_in(&map, request)
                })
            }
        }
    )*};
}

acceptor_handlers!(Prepare, Accept, Read, Repair);

impl Handle<Backfill> for PeerHandler {
    fn handle<'a>(&'a self, header: &'a Header, r: Backfill) -> Reply<'a, Vec<bool>> {
        Box::pin(async move {
            self.admit(header).await?;
            let map = self.topology.pin();
            self.check_epoch(header, map.epoch())?;
            let applied = r.repairs.into_iter().map(|repair| {
                self.check_acceptor(header, &map, &repair.fields()).is_ok()
                    && self.acceptor.handle_in(&map, repair).unwrap_or(false)
            });
            Ok(applied.collect())
        })
    }
}

impl Handle<SyncShard> for PeerHandler {
    fn handle<'a>(&'a self, header: &'a Header, r: SyncShard) -> Reply<'a, SyncPage> {
        Box::pin(async move {
            self.admit(header).await?;
            // A copy for a membership change must come from a replica that votes.
            if r.moving && !self.readiness.is_ready() {
                return Err(RemoteError::new(
                    ErrorCode::Recovering,
                    format!("node {} is catching up", self.topology.me()),
                ));
            }
            // Served under the map it was asked at: once this page is read, no round of an
            // earlier epoch can complete with this replica.
            let map = self.topology.pin();
            self.check_epoch(header, map.epoch())?;
            self.acceptor.sync_shard(&map, header.from, r)
        })
    }
}

impl Handle<DigestShard> for PeerHandler {
    fn handle<'a>(&'a self, header: &'a Header, r: DigestShard) -> Reply<'a, DigestPage> {
        Box::pin(async move {
            self.admit(header).await?;
            // A recovering replica's copy is not its own yet: it must not count as holding it.
            if !self.readiness.is_ready() {
                return Err(RemoteError::new(
                    ErrorCode::Recovering,
                    format!("node {} is catching up", self.topology.me()),
                ));
            }
            self.acceptor.digest_shard(header.from, r)
        })
    }
}

impl Handle<Collect> for PeerHandler {
    fn handle<'a>(&'a self, header: &'a Header, r: Collect) -> Reply<'a, Vec<bool>> {
        Box::pin(async move {
            self.admit(header).await?;
            // A recovering replica may still merge a copy taken before the delete; dropping
            // the tombstone now could let that copy bring the deleted value back.
            let ready = self.readiness.is_ready();
            let store = self.acceptor.store();
            // Under the map the collection was decided on: only keys this node replicates
            // there, and none a change is moving.
            let map = self.topology.pin();
            self.check_epoch(header, map.epoch())?;
            let replicas = self.topology.replicas();
            let me = self.topology.me();
            let removed = r.keys.into_iter().map(|(key, ballot)| {
                ready &&
                // Seed keys keep their tombstones: they remember that the key was deleted.
                validate_key(&key).is_ok()
                    && check_ballot(ballot).is_ok()
                    && !is_seed_key(&key)
                    && {
                        let placement = Topology::placement_in(&map, replicas, &key);
                        placement.contains(me) && !placement.is_joint()
                    }
                    && store.collect(&key, ballot).unwrap_or(false)
            });
            let removed: Vec<bool> = removed.collect();
            let count = removed.iter().filter(|&&r| r).count() as u64;
            self.metrics
                .collected
                .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
            Ok(removed)
        })
    }
}

impl Handle<Ping> for PeerHandler {
    fn handle<'a>(&'a self, header: &'a Header, _: Ping) -> Reply<'a, Pong> {
        Box::pin(async move {
            // Answered whatever the epochs, and to nodes not in this node's map (a removed
            // node learns so from the epoch of the answer): nodes at different epochs must not
            // see each other as down.
            self.check_sender(header)?;
            // Only a heartbeat of this node's epoch from a node in its map counts as hearing
            // of that node's incarnation.
            let map = self.topology.map();
            if header.epoch == map.epoch() && map.node(header.from).is_some() {
                self.incarnations.observe(header.from, header.incarnation);
            }
            if header.epoch > self.topology.epoch() {
                let (client, epoch, from) = (self.client.clone(), header.epoch, header.from);
                self.lifecycle
                    .spawn(async move { client.catch_up_map(epoch, from).await });
            }
            Ok(Pong {
                node: self.topology.me(),
                epoch: self.topology.epoch(),
                incarnation: self.incarnation.get(),
                ready: self.readiness.is_ready(),
                drift: self.drift.count(),
            })
        })
    }
}

/// Rounds above this are refused from peers: a ballot at [`Ballot::MAX_ROUND`] could never be
/// outbid and would leave its key unwritable; below this one there is room for four billion
/// more rounds.
const MAX_PEER_ROUND: u64 = Ballot::MAX_ROUND - (1 << 32);

/// Versions above this are refused from peers, so a version can always grow.
pub const MAX_PEER_VERSION: u64 = u64::MAX / 2;

fn invalid(message: String) -> RemoteError {
    RemoteError::new(ErrorCode::InvalidRequest, message)
}

/// Checks a ballot a peer sent: its round must leave room to outbid it.
pub fn check_ballot(ballot: Ballot) -> Result<(), RemoteError> {
    if ballot.round() > MAX_PEER_ROUND {
        return Err(invalid(format!(
            "ballot round {} is out of range (at most {MAX_PEER_ROUND})",
            ballot.round()
        )));
    }
    Ok(())
}

/// Checks a register a peer sent: ballot and version in range, an expiry time only with a
/// value.
pub fn check_register(register: &Register) -> Result<(), RemoteError> {
    check_ballot(register.ballot)?;
    if register.value.is_none() && register.expires.is_some() {
        return Err(invalid(
            "a register without a value has no expiry time".into(),
        ));
    }
    if register.version.0 > MAX_PEER_VERSION {
        return Err(invalid(format!(
            "version {} is out of range (at most {MAX_PEER_VERSION})",
            register.version
        )));
    }
    Ok(())
}

impl Handle<FetchMap> for PeerHandler {
    fn handle<'a>(&'a self, header: &'a Header, _: FetchMap) -> Reply<'a, MapCopy> {
        Box::pin(async move {
            // Answered whatever the epochs, and to nodes that are not members: how a node that
            // is behind, a joining node and a removed one learn the map.
            self.check_sender(header)?;
            let record = self.topology.record();
            Ok(MapCopy {
                epoch: record.map.epoch,
                record: serde_json::to_vec(&*record).expect("a record always encodes"),
            })
        })
    }
}

impl Handle<FetchStatus> for PeerHandler {
    fn handle<'a>(&'a self, header: &'a Header, _: FetchStatus) -> Reply<'a, NodeStatus> {
        Box::pin(async move {
            // Read-only and answered whatever the epochs, like a ping: a status page must show
            // a node that is behind or ahead, not an epoch mismatch.
            self.check_sender(header)?;
            Ok(self.figures.report())
        })
    }
}
