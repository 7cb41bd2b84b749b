//! In-process clusters: N nodes in one Tokio runtime, each serving HTTP on its own port.
//!
//! This is what `kvserver cluster` runs, and what tests (ours and yours) use to spin a cluster up:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use kvserver::LocalCluster;
//!
//! let cluster = LocalCluster::builder().nodes(3).start().await.unwrap();
//! println!("node 0 answers on {}", cluster.url(0));
//! let owner = cluster.node(0).owner("user:42");
//! assert!((owner.0 as usize) < cluster.len());
//! cluster.shutdown().await;
//! # }
//! ```

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kvnet::{Forwarder, HttpForwarder, HttpForwarderConfig, InProcessNetwork, PeerHandler};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::NodeConfig;
use crate::node::Node;
use crate::server::{self, ServerConfig};

/// How the nodes of a [`LocalCluster`] talk to each other. Clients always use HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// Peer requests over HTTP through each node's pooled client, as between processes.
    #[default]
    Http,
    /// Peer requests through an [`InProcessNetwork`] (still encoded and decoded).
    InProcess,
}

/// Configures and starts a [`LocalCluster`].
#[derive(Debug, Clone)]
pub struct LocalClusterBuilder {
    nodes: usize,
    host: String,
    base_port: u16,
    transport: Transport,
    template: NodeConfig,
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

    /// Memory budget of each node's store.
    pub fn max_memory(mut self, bytes: Option<u64>) -> Self {
        self.template.max_memory = bytes;
        self
    }

    /// Largest accepted value in bytes.
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.template.max_value_bytes = bytes;
        self
    }

    /// Partitioner by name (see `kvcore::partition::all`).
    pub fn partitioner(mut self, name: impl Into<String>) -> Self {
        self.template.partitioner = name.into();
        self
    }

    /// Deadline of requests forwarded between nodes.
    pub fn forward_timeout(mut self, timeout: Duration) -> Self {
        self.template.forward_timeout = timeout;
        self
    }

    /// Whether nodes write the seed keys `a` and `b` (default off; `kvserver cluster` turns it on).
    pub fn seed_keys(mut self, seed: bool) -> Self {
        self.template.seed_keys = seed;
        self
    }

    /// Binds every node's port, then starts the nodes. Must run inside a Tokio runtime.
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
        let peers: Vec<String> = addrs.iter().map(SocketAddr::to_string).collect();
        let network = InProcessNetwork::new(self.template.forward_timeout);
        let mut nodes = Vec::with_capacity(self.nodes);
        for (i, listener) in listeners.into_iter().enumerate() {
            let config = NodeConfig {
                id: kvcore::NodeId(i as u32),
                peers: peers.clone(),
                ..self.template.clone()
            };
            let forwarder: Arc<dyn Forwarder> = match self.transport {
                Transport::Http => Arc::new(HttpForwarder::new(HttpForwarderConfig {
                    request_timeout: config.forward_timeout,
                    ..Default::default()
                })),
                Transport::InProcess => Arc::new(network.clone()),
            };
            let node = Arc::new(
                Node::new(&config, forwarder)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            );
            if self.transport == Transport::InProcess {
                let handler: Arc<dyn PeerHandler> = node.clone();
                network.register(peers[i].clone(), Arc::downgrade(&handler));
            }
            let (stop, stopped) = oneshot::channel::<()>();
            let server_config = ServerConfig {
                header_read_timeout: config.header_read_timeout,
                shutdown_grace: config.shutdown_grace,
            };
            let task = tokio::spawn(server::run(listener, node.clone(), server_config, async {
                let _ = stopped.await;
            }));
            nodes.push(LocalNode {
                addr: addrs[i],
                node,
                stop: Some(stop),
                task: Some(task),
            });
        }
        Ok(LocalCluster { nodes, network })
    }
}

/// One node of a [`LocalCluster`].
struct LocalNode {
    addr: SocketAddr,
    node: Arc<Node>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// A running in-process cluster. Dropping it stops the servers without waiting; prefer
/// [`shutdown`](LocalCluster::shutdown).
pub struct LocalCluster {
    nodes: Vec<LocalNode>,
    network: InProcessNetwork,
}

impl fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCluster")
            .field("addrs", &self.addrs())
            .finish_non_exhaustive()
    }
}

impl LocalCluster {
    /// A builder with the defaults: 4 nodes on free ports of 127.0.0.1, HTTP between them.
    pub fn builder() -> LocalClusterBuilder {
        LocalClusterBuilder {
            nodes: 4,
            host: "127.0.0.1".into(),
            base_port: 0,
            transport: Transport::Http,
            template: NodeConfig {
                seed_keys: false,
                ..NodeConfig::new(0, vec![])
            },
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

    /// `http://` base URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("http://{}", self.nodes[i].addr)
    }

    /// Node `i` itself, for direct calls and inspection.
    pub fn node(&self, i: usize) -> &Arc<Node> {
        &self.nodes[i].node
    }

    /// Stops node `i`'s server (in-flight requests finish) and makes it unreachable to its
    /// peers, as if its process had exited.
    pub async fn stop_node(&mut self, i: usize) {
        let addr = self.nodes[i].addr.to_string();
        self.network.unregister(&addr);
        let n = &mut self.nodes[i];
        if let Some(stop) = n.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = n.task.take() {
            let _ = task.await;
        }
    }

    /// Stops every node and waits for in-flight requests to finish.
    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop_node(i).await;
        }
    }
}
