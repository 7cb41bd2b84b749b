//! In-process clusters: N nodes in one Tokio runtime, each serving HTTP on its own port.
//!
//! This is what `kvserver cluster` runs, and what tests (ours and yours) use to spin a cluster
//! up, crash and restart nodes, and inject network faults:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use kvserver::LocalCluster;
//!
//! let cluster = LocalCluster::builder()
//!     .nodes(3)
//!     .configure(|c| c.replicas = 3)
//!     .start()
//!     .await
//!     .unwrap();
//! println!("node 0 answers on {}", cluster.url(0));
//! let replicas = cluster.node(0).owners("user:42");
//! assert_eq!(replicas.len(), 3);
//! cluster.shutdown().await;
//! # }
//! ```

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kvcore::NodeId;
use kvnet::{Faults, HttpTransport, InProcessNetwork, Secret};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::error::Error;
use crate::membership::Membership;
use crate::node::Node;
use crate::server;

/// How the nodes of a [`LocalCluster`] talk to each other. Clients always use HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// Peer requests over HTTP through each node's pooled client, as between processes.
    #[default]
    Http,
    /// Peer requests through an [`InProcessNetwork`] (the same frames, without sockets).
    InProcess,
}

/// Configures and starts a [`LocalCluster`]. The shape of the cluster (node count, addresses,
/// transport, faults) is set here; everything about each node is one [`Config`].
#[derive(Debug, Clone)]
pub struct LocalClusterBuilder {
    nodes: usize,
    host: String,
    base_port: u16,
    transport: Transport,
    faults: Option<Faults>,
    ready_timeout: Duration,
    config: Config,
}

impl LocalClusterBuilder {
    /// Number of nodes (default 4).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// Address the nodes bind (default `127.0.0.1`).
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }

    /// Node `i` listens on `base_port + i`; `0` (the default) picks free ports.
    pub fn base_port(mut self, port: u16) -> Self {
        self.base_port = port;
        self
    }

    /// Transport between the nodes (default HTTP).
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Sends every peer message through these injected faults.
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = Some(faults);
        self
    }

    /// Every node's configuration (`id` and `peers` are filled in per node). The default is
    /// [`Config::default`] without seed keys and with a fresh random cluster secret; a
    /// configuration given here replaces it whole, so without a `cluster_secret` of its own the
    /// cluster runs unauthenticated.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Changes the nodes' configuration in place:
    /// `LocalCluster::builder().configure(|c| c.replicas = 1)`.
    pub fn configure(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(&mut self.config);
        self
    }

    /// How long [`start`](Self::start) waits for the nodes to catch up (default 30 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Binds every node's port, starts the nodes, and waits until they have all caught up with
    /// each other. Must run inside a Tokio runtime.
    pub async fn start(self) -> io::Result<LocalCluster> {
        if self.nodes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a cluster needs at least one node",
            ));
        }
        let mut listeners = Vec::with_capacity(self.nodes);
        for i in 0..self.nodes {
            let port = match self.base_port {
                0 => 0,
                base => u16::try_from(base as usize + i).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidInput, "ports run past 65535")
                })?,
            };
            let listener = TcpListener::bind((self.host.as_str(), port))
                .await
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot listen on {}:{port}: {e}", self.host),
                    )
                })?;
            listeners.push(listener);
        }
        let addrs: Vec<SocketAddr> = listeners
            .iter()
            .map(TcpListener::local_addr)
            .collect::<io::Result<_>>()?;
        self.config
            .check_listen_address(addrs[0].ip())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let peers: Vec<String> = addrs.iter().map(SocketAddr::to_string).collect();
        let mut cluster = LocalCluster {
            nodes: Vec::with_capacity(self.nodes),
            network: InProcessNetwork::new(self.config.forward_timeout()),
            transport: self.transport,
            faults: self.faults,
            config: Config {
                peers,
                ..self.config
            },
        };
        for (i, listener) in listeners.into_iter().enumerate() {
            let running = cluster.launch(i, listener, Start::Static(None))?;
            cluster.nodes.push(running);
        }
        if !cluster.wait_ready(self.ready_timeout).await {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the nodes did not catch up with each other in time",
            ));
        }
        Ok(cluster)
    }
}

/// One node of a [`LocalCluster`].
struct LocalNode {
    addr: SocketAddr,
    node: Arc<Node>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    /// Whether the node joined a running cluster (it restarts by joining again).
    joined: bool,
}

/// How a node of a [`LocalCluster`] starts.
enum Start {
    /// As one of the members the cluster was created with, maybe from a given incarnation.
    Static(Option<u64>),
    /// As a node that joined the cluster, with the record the cluster answered its join with.
    Joined(Box<Membership>, bool),
}

/// A running in-process cluster. Dropping it starts a graceful shutdown of every node without
/// waiting for it; prefer [`shutdown`](LocalCluster::shutdown), which waits.
pub struct LocalCluster {
    nodes: Vec<LocalNode>,
    network: InProcessNetwork,
    transport: Transport,
    faults: Option<Faults>,
    config: Config,
}

impl fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCluster")
            .field("addrs", &self.addrs())
            .finish_non_exhaustive()
    }
}

impl LocalCluster {
    /// A builder with the defaults: 4 nodes on free ports of 127.0.0.1, HTTP between them, and
    /// [`Config::default`] (3 replicas per key) without seed keys, with a fresh random cluster
    /// secret, so peer messages are authenticated as in production.
    pub fn builder() -> LocalClusterBuilder {
        LocalClusterBuilder {
            nodes: 4,
            host: "127.0.0.1".into(),
            base_port: 0,
            transport: Transport::Http,
            faults: None,
            ready_timeout: Duration::from_secs(30),
            config: Config {
                seed_keys: false,
                cluster_secret: Some(Secret::random()),
                ..Config::default()
            },
        }
    }

    /// Starts node `i` on `listener` with a fresh store and incarnation.
    fn launch(&self, i: usize, listener: TcpListener, start: Start) -> io::Result<LocalNode> {
        let addr = listener.local_addr()?;
        let config = Config {
            id: i as u32,
            ..self.config.clone()
        };
        let id = NodeId(config.id);
        let invalid = |e| io::Error::new(io::ErrorKind::InvalidInput, e);
        let base: Arc<dyn kvnet::Transport> = match self.transport {
            Transport::Http => Arc::new(HttpTransport::new(
                config.http_transport_config().map_err(invalid)?,
            )),
            Transport::InProcess => Arc::new(self.network.clone()),
        };
        let transport: Arc<dyn kvnet::Transport> = match &self.faults {
            Some(faults) => Arc::new(faults.wrap(id, base)),
            None => base,
        };
        let joined = matches!(start, Start::Joined(..));
        let node = match start {
            Start::Static(Some(incarnation)) => {
                Node::with_incarnation(&config, transport, incarnation)
            }
            Start::Static(None) => Node::new(&config, transport),
            Start::Joined(record, fresh) => Node::joined(&config, transport, id, *record, fresh),
        };
        let node = Arc::new(node.map_err(invalid)?);
        if self.transport == Transport::InProcess {
            let handler = node.peer_handler();
            self.network
                .register(addr.to_string(), Arc::downgrade(&handler));
            // The network holds handlers weakly; the node keeps its own alive.
            drop(handler);
        }
        node.start();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(server::run(listener, node.clone(), async {
            let _ = stopped.await;
        }));
        Ok(LocalNode {
            addr,
            node,
            stop: Some(stop),
            server: Some(server),
            joined,
        })
    }

    /// Starts node `i` (or the next node, if `i` is the number of nodes) by asking a running
    /// node to add it at `listener`'s address.
    async fn launch_joining(&self, i: usize, listener: TcpListener) -> io::Result<LocalNode> {
        let addr = listener.local_addr()?.to_string();
        let mut last = None;
        for k in (0..self.len()).filter(|&k| k != i && self.is_running(k)) {
            let member = self.node(k);
            if member.is_removed() {
                continue;
            }
            match member.join(&addr).await {
                Ok((id, record, fresh)) => {
                    if id.0 as usize != i {
                        return Err(io::Error::other(format!(
                            "the cluster gave the joining node id {id}, not {i}: nodes of a \
                             LocalCluster join one at a time, through its own methods"
                        )));
                    }
                    return self.launch(i, listener, Start::Joined(Box::new(record), fresh));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(io::Error::other(match last {
            Some(e) => format!("no running node added the joining node: {e}"),
            None => "no running node to join through".into(),
        }))
    }

    /// Starts a new node and adds it to the cluster (`POST /cluster/join` through a running
    /// node): it gets the next id, which is its index here. The cluster then copies the keys
    /// it gains to it in the background; see [`wait_settled`](Self::wait_settled).
    pub async fn join_node(&mut self) -> io::Result<usize> {
        let host = self.nodes[0].addr.ip();
        let listener = TcpListener::bind((host, 0)).await?;
        let i = self.len();
        let node = self.launch_joining(i, listener).await?;
        self.nodes.push(node);
        Ok(i)
    }

    /// Removes node `i` from the cluster through another running node (`POST /cluster/remove`):
    /// alive, it hands its keys over; stopped, they are copied from the other replicas.
    pub async fn remove_node(&self, i: usize, force: bool) -> Result<Membership, Error> {
        let mut last = None;
        for k in (0..self.len()).filter(|&k| k != i && self.is_running(k)) {
            if self.node(k).is_removed() {
                continue;
            }
            match self.node(k).remove(NodeId(i as u32), force).await {
                Ok(record) => return Ok(record),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(Error::QuorumUnavailable {
            message: "no running member to remove the node through".into(),
        }))
    }

    /// Polls until no membership change runs on any running member, every one of them is at
    /// the same epoch and healthy, and removed nodes know it, or `timeout` passes; returns
    /// which.
    pub async fn wait_settled(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut every = tokio::time::interval(Duration::from_millis(20));
        loop {
            every.tick().await;
            let running: Vec<&Arc<Node>> = (0..self.len())
                .filter(|&i| self.is_running(i))
                .map(|i| self.node(i))
                .collect();
            let epoch = running.iter().map(|n| n.map().epoch()).max();
            let settled = running.iter().all(|n| {
                let map = n.map();
                n.is_removed()
                    || (Some(map.epoch()) == epoch
                        && !map.is_changing()
                        && n.is_healthy()
                        && n.holds_map_replica())
            });
            if settled {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a cluster has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The address node `i` serves HTTP on.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].addr
    }

    /// Every node's address, by id.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// Base URL of node `i`: `https://` when the nodes serve TLS, else `http://`.
    pub fn url(&self, i: usize) -> String {
        let scheme = if self.config.tls_enabled() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.nodes[i].addr)
    }

    /// The cluster secret the nodes share, if any: what a test needs to send them peer
    /// messages of its own.
    pub fn secret(&self) -> Option<&Secret> {
        self.config.cluster_secret.as_ref()
    }

    /// Node `i` itself, for direct calls and inspection.
    pub fn node(&self, i: usize) -> &Arc<Node> {
        &self.nodes[i].node
    }

    /// Whether node `i` is running (not stopped by [`stop_node`](Self::stop_node)).
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].server.is_some()
    }

    /// Polls until every running node is healthy (caught up, and the cluster map and the seed
    /// keys if they are configured recorded: what `/health` reports) and holds its replica of
    /// the cluster map, or `timeout` passes; returns which.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut every = tokio::time::interval(Duration::from_millis(10));
        loop {
            every.tick().await;
            let ready = (0..self.len()).filter(|&i| self.is_running(i)).all(|i| {
                let node = self.node(i);
                node.is_removed() || (node.is_healthy() && node.holds_map_replica())
            });
            if ready {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
        }
    }

    /// Crashes node `i`: every task of the node (its server, its connections, requests it is
    /// coordinating, its background work) is stopped at once, nothing finishes gracefully, its
    /// memory is gone, and its peers can no longer reach it.
    pub async fn stop_node(&mut self, i: usize) {
        let addr = self.nodes[i].addr.to_string();
        self.network.unregister(&addr);
        let n = &mut self.nodes[i];
        n.node.crash();
        n.stop.take();
        if let Some(server) = n.server.take() {
            let _ = server.await;
        }
    }

    /// Starts node `i` again on its old address, empty and with a new incarnation, as a
    /// restarted process would be. It catches up from its peers in the background; see
    /// [`Node::is_ready`].
    pub async fn restart_node(&mut self, i: usize) -> io::Result<()> {
        if self.is_running(i) {
            self.stop_node(i).await;
        }
        let listener = TcpListener::bind(self.nodes[i].addr).await?;
        // Once the membership has changed, the start-up member list is out of date: the node
        // asks a member for the current map, as `kvserver node --join` does.
        let changed = (0..self.len())
            .filter(|&k| k != i && self.is_running(k))
            .any(|k| self.node(k).map().epoch() > 1);
        self.nodes[i] = if self.nodes[i].joined || changed {
            self.launch_joining(i, listener).await?
        } else {
            self.launch(i, listener, Start::Static(None))?
        };
        Ok(())
    }

    /// [`restart_node`](Self::restart_node), with the node starting from `incarnation` rather
    /// than the clock's reading: how a node whose clock went back across the restart starts.
    pub async fn restart_node_with_incarnation(
        &mut self,
        i: usize,
        incarnation: u64,
    ) -> io::Result<()> {
        if self.is_running(i) {
            self.stop_node(i).await;
        }
        let listener = TcpListener::bind(self.nodes[i].addr).await?;
        self.nodes[i] = self.launch(i, listener, Start::Static(Some(incarnation)))?;
        Ok(())
    }

    /// Stops every node gracefully: requests in flight get the configured grace period.
    pub async fn shutdown(mut self) {
        for n in &mut self.nodes {
            if let Some(stop) = n.stop.take() {
                let _ = stop.send(());
            }
        }
        for n in &mut self.nodes {
            if let Some(server) = n.server.take() {
                let _ = server.await;
            }
        }
    }
}
