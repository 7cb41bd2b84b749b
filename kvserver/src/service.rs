//! The node's answers to its peers: one handler per message of the peer protocol.

use std::sync::Arc;

use bytes::Bytes;
use kvcore::{validate_key, Entry, ErrorCode, Limits};
use kvnet::rpc::{
    self, Accept, Backfill, Delete, DigestPage, DigestShard, Get, Incr, Ping, Pong, Prepare, Read,
    Repair, Set, SyncPage, SyncShard,
};
use kvnet::{BoxFuture, FrameError, FrameHandler, Handle, Header, RemoteError, Rpc};

use crate::acceptor::{Acceptor, AcceptorRpc};
use crate::coordinator::Coordinator;
use crate::drift::Drift;
use crate::incarnations::Incarnations;
use crate::lifecycle::Lifecycle;
use crate::metrics::{bump, Metrics};
use crate::operation::Operation;
use crate::readiness::Readiness;
use crate::topology::Topology;

/// Answers peer requests for one node.
#[derive(Debug)]
pub struct PeerHandler {
    incarnation: u64,
    limits: Limits,
    topology: Arc<Topology>,
    coordinator: Arc<Coordinator>,
    acceptor: Arc<Acceptor>,
    incarnations: Arc<Incarnations>,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    lifecycle: Arc<Lifecycle>,
    drift: Arc<Drift>,
}

type Reply<'a, T> = BoxFuture<'a, Result<T, RemoteError>>;

impl PeerHandler {
    /// The peer side of a node.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        incarnation: u64,
        limits: Limits,
        topology: Arc<Topology>,
        coordinator: Arc<Coordinator>,
        acceptor: Arc<Acceptor>,
        incarnations: Arc<Incarnations>,
        readiness: Arc<Readiness>,
        metrics: Arc<Metrics>,
        lifecycle: Arc<Lifecycle>,
        drift: Arc<Drift>,
    ) -> Self {
        PeerHandler {
            incarnation,
            limits,
            topology,
            coordinator,
            acceptor,
            incarnations,
            readiness,
            metrics,
            lifecycle,
            drift,
        }
    }

    /// What every message goes through first. The sender's incarnation is recorded before
    /// anything else: a recovering node's first sync request must fence off its previous life
    /// before this node copies anything to it.
    fn admit(&self, header: &Header) -> Result<(), RemoteError> {
        self.incarnations.observe(header.from, header.incarnation);
        let epoch = self.topology.epoch();
        if header.epoch != epoch {
            return Err(RemoteError::new(
                ErrorCode::EpochMismatch,
                format!(
                    "node {} sent a message for cluster map epoch {}, this node is at epoch {epoch}",
                    header.from, header.epoch
                ),
            ));
        }
        Ok(())
    }

    fn admit_key(&self, header: &Header, key: &str) -> Result<(), RemoteError> {
        self.admit(header)?;
        validate_key(key)?;
        Ok(())
    }

    async fn write<O: Operation>(&self, header: &Header, op: O) -> Result<O::Reply, RemoteError> {
        self.admit_key(header, op.key())?;
        op.check(&self.limits)?;
        let reply = self
            .coordinator
            .write(op, header.hops, header.request_id)
            .await;
        reply.map_err(|e| e.to_remote())
    }
}

impl FrameHandler for PeerHandler {
    fn handle_frame(&self, frame: Bytes) -> BoxFuture<'_, Result<Bytes, FrameError>> {
        bump(&self.metrics.peer);
        Box::pin(async move {
            // A crash of this node ends the handler where it stands, as it would end a process.
            self.lifecycle
                .unless_stopped(rpc::dispatch(self, &frame))
                .await
                .unwrap_or(Err(FrameError::Stopped))
        })
    }
}

impl Handle<Get> for PeerHandler {
    fn handle<'a>(&'a self, header: &'a Header, r: Get) -> Reply<'a, Option<Entry>> {
        Box::pin(async move {
            self.admit_key(header, &r.key)?;
            let reply = self
                .coordinator
                .get(&r.key, header.hops, header.request_id)
                .await;
            reply.map_err(|e| e.to_remote())
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

write_handlers!(Set, Delete, Incr);

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
                    self.admit(header)?;
                    if let Some(value) = request.value() {
                        self.limits.check_value(value)?;
                    }
                    self.acceptor.handle(request)
                })
            }
        }
    )*};
}

acceptor_handlers!(Prepare, Accept, Read, Repair);

impl Handle<Backfill> for PeerHandler {
    fn handle<'a>(&'a self, header: &'a Header, r: Backfill) -> Reply<'a, Vec<bool>> {
        Box::pin(async move {
            self.admit(header)?;
            let applied = r.repairs.into_iter().map(|repair| {
                let fits = repair
                    .value()
                    .map_or(Ok(()), |v| self.limits.check_value(v));
                fits.is_ok() && self.acceptor.handle(repair).unwrap_or(false)
            });
            Ok(applied.collect())
        })
    }
}

impl Handle<SyncShard> for PeerHandler {
    fn handle<'a>(&'a self, header: &'a Header, r: SyncShard) -> Reply<'a, SyncPage> {
        Box::pin(async move {
            self.admit(header)?;
            Ok(self.acceptor.sync_shard(header.from, r))
        })
    }
}

impl Handle<DigestShard> for PeerHandler {
    fn handle<'a>(&'a self, header: &'a Header, r: DigestShard) -> Reply<'a, DigestPage> {
        Box::pin(async move {
            self.admit(header)?;
            Ok(self.acceptor.digest_shard(header.from, r))
        })
    }
}

impl Handle<Ping> for PeerHandler {
    fn handle<'a>(&'a self, header: &'a Header, _: Ping) -> Reply<'a, Pong> {
        Box::pin(async move {
            self.admit(header)?;
            Ok(Pong {
                node: self.topology.me(),
                epoch: self.topology.epoch(),
                incarnation: self.incarnation,
                ready: self.readiness.is_ready(),
                drift: self.drift.count(),
            })
        })
    }
}
