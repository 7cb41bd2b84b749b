//! The node: a store for the keys it owns and a coordinator for every other key.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use kvcore::{
    partition, ClusterMap, Conflict, Entry, Limits, NodeId, NodeInfo, Precondition, Store,
    StoreConfig, Value, Version,
};
use kvnet::{
    BoxFuture, Envelope, Forwarder, PeerHandler, PeerReply, PeerRequest, PeerResult, MAX_HOPS,
};
use serde::Serialize;

use crate::config::NodeConfig;
use crate::error::Error;

/// The keys every node serves from the start, as in the original deployment: `a` and `b`.
pub const SEED_KEYS: [(&str, &str); 2] = [("a", "alpha"), ("b", "beta")];

/// Per-node request counters, reported by `/stats`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Client reads.
    pub gets: AtomicU64,
    /// Client writes.
    pub sets: AtomicU64,
    /// Client deletes.
    pub deletes: AtomicU64,
    /// Client requests served from this node's own store.
    pub local: AtomicU64,
    /// Client requests forwarded to the owning node.
    pub forwarded: AtomicU64,
    /// Requests received from peers.
    pub peer: AtomicU64,
    /// Requests answered with a 4xx status.
    pub client_errors: AtomicU64,
    /// Requests answered with a 5xx status.
    pub server_errors: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// `/stats`' view of the counters.
#[derive(Debug, Serialize)]
pub struct CountersSnapshot {
    /// Client reads.
    pub gets: u64,
    /// Client writes.
    pub sets: u64,
    /// Client deletes.
    pub deletes: u64,
    /// Client requests served from this node's own store.
    pub local: u64,
    /// Client requests forwarded to the owning node.
    pub forwarded: u64,
    /// Requests received from peers.
    pub peer: u64,
    /// Requests answered with a 4xx status.
    pub client_errors: u64,
    /// Requests answered with a 5xx status.
    pub server_errors: u64,
}

impl Counters {
    /// The current values.
    pub fn snapshot(&self) -> CountersSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersSnapshot {
            gets: r(&self.gets),
            sets: r(&self.sets),
            deletes: r(&self.deletes),
            local: r(&self.local),
            forwarded: r(&self.forwarded),
            peer: r(&self.peer),
            client_errors: r(&self.client_errors),
            server_errors: r(&self.server_errors),
        }
    }
}

/// The outcome of a conditional write: the new version, or the [`Conflict`] that refused it.
pub type WriteOutcome = Result<Version, Conflict>;

/// A cluster node. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Node {
    id: NodeId,
    map: RwLock<Arc<ClusterMap>>,
    store: Store,
    forwarder: Arc<dyn Forwarder>,
    counters: Counters,
    started: Instant,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("map", &self.map())
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A node as configured, sending peer requests through `forwarder`.
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
        let store = Store::new(StoreConfig {
            max_memory: config.max_memory,
            limits: Limits {
                max_value_bytes: config.max_value_bytes,
            },
        });
        let node = Node {
            id: config.id,
            map: RwLock::new(Arc::new(map)),
            store,
            forwarder,
            counters: Counters::default(),
            started: Instant::now(),
        };
        if config.seed_keys {
            node.seed();
        }
        Ok(node)
    }

    /// Writes the [`SEED_KEYS`] this node owns, unless they already exist.
    fn seed(&self) {
        for (key, value) in SEED_KEYS {
            if self.owner(key) == self.id {
                // Only fails if the budget is smaller than two tiny entries; then there is nothing
                // sensible to seed anyway.
                let _ = self
                    .store
                    .put(key, Value::string(value), Precondition::IfAbsent);
            }
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The current cluster map.
    pub fn map(&self) -> Arc<ClusterMap> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// This node's own store (the keys it owns).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Request counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Time since the node started.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// The node that owns `key` (its primary replica).
    pub fn owner(&self, key: &str) -> NodeId {
        self.owners(key)[0]
    }

    /// The nodes that own `key`, primary first.
    pub fn owners(&self, key: &str) -> Vec<NodeId> {
        self.map().owners(key, 1)
    }

    /// Reads `key` through whichever node owns it.
    pub async fn get(&self, key: &str) -> Result<Option<Entry>, Error> {
        Counters::bump(&self.counters.gets);
        kvcore::validate_key(key)?;
        let request = PeerRequest::Get { key: key.into() };
        match self.route(request, 0).await? {
            PeerReply::Entry { entry } => Ok(entry),
            other => Err(unexpected(other)),
        }
    }

    /// Writes `key` through whichever node owns it, if `precondition` holds there.
    pub async fn set(
        &self,
        key: &str,
        value: Value,
        precondition: Precondition,
    ) -> Result<WriteOutcome, Error> {
        Counters::bump(&self.counters.sets);
        kvcore::validate_key(key)?;
        self.store.config().limits.check_value(&value)?;
        let request = PeerRequest::Set {
            key: key.into(),
            value,
            precondition,
        };
        match self.route(request, 0).await? {
            PeerReply::Written { version } => Ok(Ok(version)),
            PeerReply::Conflict { current } => Ok(Err(Conflict { current })),
            other => Err(unexpected(other)),
        }
    }

    /// Deletes `key` through whichever node owns it, returning what it held.
    pub async fn delete(&self, key: &str) -> Result<Option<Entry>, Error> {
        Counters::bump(&self.counters.deletes);
        kvcore::validate_key(key)?;
        let request = PeerRequest::Delete { key: key.into() };
        match self.route(request, 0).await? {
            PeerReply::Deleted { entry } => Ok(entry),
            other => Err(unexpected(other)),
        }
    }

    /// Applies a keyed request here if this node owns the key, else forwards it to the owner.
    /// `hops` is how many times the request has already been forwarded.
    async fn route(&self, request: PeerRequest, hops: u8) -> Result<PeerReply, Error> {
        let map = self.map();
        let key = request.key().expect("only keyed requests are routed");
        let owner = map.owners(key, 1)[0];
        if owner == self.id {
            if hops == 0 {
                Counters::bump(&self.counters.local);
            }
            return self.apply(request);
        }
        if hops >= MAX_HOPS {
            return Err(Error::Misdirected {
                message: format!(
                    "node {} does not own the key and the request was already forwarded {hops} times",
                    self.id
                ),
            });
        }
        if hops == 0 {
            Counters::bump(&self.counters.forwarded);
        }
        let is_write = !matches!(request, PeerRequest::Get { .. });
        let to = map.node(owner).expect("owners are members of the map");
        let envelope = Envelope {
            from: self.id,
            epoch: map.epoch(),
            request,
        };
        self.forwarder
            .send(to, hops + 1, envelope)
            .await
            .map_err(|e| Error::from_forward(e, is_write))
    }

    /// Applies a request to this node's store.
    fn apply(&self, request: PeerRequest) -> Result<PeerReply, Error> {
        Ok(match request {
            PeerRequest::Get { key } => PeerReply::Entry {
                entry: self.store.get(&key),
            },
            PeerRequest::Set {
                key,
                value,
                precondition,
            } => match self.store.put(&key, value, precondition)? {
                Ok(version) => PeerReply::Written { version },
                Err(Conflict { current }) => PeerReply::Conflict { current },
            },
            PeerRequest::Delete { key } => PeerReply::Deleted {
                entry: self.store.delete(&key),
            },
            PeerRequest::Ping => self.pong(),
        })
    }

    fn pong(&self) -> PeerReply {
        PeerReply::Pong {
            node: self.id,
            epoch: self.map().epoch(),
        }
    }

    /// Answers a request from a peer that has been forwarded `hops` times.
    pub async fn handle_peer(&self, hops: u8, envelope: Envelope) -> PeerResult {
        Counters::bump(&self.counters.peer);
        let result = match envelope.request {
            PeerRequest::Ping => Ok(self.pong()),
            request => self.route(request, hops).await,
        };
        result.map_err(|e| e.to_remote())
    }
}

impl PeerHandler for Node {
    fn handle(&self, hops: u8, envelope: Envelope) -> BoxFuture<'_, PeerResult> {
        Box::pin(self.handle_peer(hops, envelope))
    }
}

fn unexpected(reply: PeerReply) -> Error {
    Error::Remote(kvnet::RemoteError::new(
        "unexpected_reply",
        format!("the owner answered with an unexpected reply: {reply:?}"),
    ))
}
