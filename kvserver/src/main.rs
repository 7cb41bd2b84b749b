//! The `kvserver` binary: parses the command line, binds, and runs nodes until Ctrl-C/SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use kvnet::{HttpForwarder, HttpForwarderConfig};
use kvserver::{parse_size, LocalCluster, Node, NodeConfig, ServerConfig, SEED_KEYS};
use tokio::net::TcpListener;

/// A distributed in-memory key-value store with a JSON HTTP API.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a whole cluster in this process: node i listens on base-port + i.
    Cluster(ClusterArgs),
    /// Run one node of a cluster whose nodes are separate processes.
    Node(NodeArgs),
}

/// Options every node takes.
#[derive(Args, Debug)]
struct Common {
    /// Memory budget of each node's store, e.g. 64MiB, 1GiB or plain bytes. Unlimited if unset.
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    max_memory: Option<u64>,
    /// Largest accepted value, e.g. 1MiB.
    #[arg(long, value_parser = parse_size, value_name = "SIZE", default_value = "1MiB")]
    max_value_size: u64,
    /// Copies of each key, capped at the number of nodes. 1 is pure sharding; with 3 every
    /// operation stays linearizable while one of a key's replicas is down.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// How keys are placed on nodes: slots (the default), rendezvous, ring or maglev. Every node
    /// must use the same.
    #[arg(long, value_name = "NAME")]
    partitioner: Option<String>,
    /// Deadline for a request forwarded to another node, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    forward_timeout_ms: u64,
    /// Do not write the seed keys `a` and `b` at start-up.
    #[arg(long)]
    no_seed: bool,
}

#[derive(Args, Debug)]
struct ClusterArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// Port of node 0; node i listens on base-port + i.
    #[arg(long, default_value_t = 5100)]
    base_port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct NodeArgs {
    /// This node's id: its position in --peers, from 0.
    #[arg(long)]
    id: u32,
    /// Address to listen on, e.g. 0.0.0.0:5100.
    #[arg(long, value_name = "HOST:PORT")]
    listen: SocketAddr,
    /// Every node's address as peers reach it, in id order, this node included.
    #[arg(
        long,
        value_name = "ADDR0,ADDR1,...",
        value_delimiter = ',',
        required = true
    )]
    peers: Vec<String>,
    #[command(flatten)]
    common: Common,
}

impl Common {
    fn apply(&self, mut config: NodeConfig) -> Result<NodeConfig, String> {
        config.max_memory = self.max_memory;
        config.max_value_bytes = usize::try_from(self.max_value_size)
            .map_err(|_| "--max-value-size is too large".to_string())?;
        if let Some(p) = &self.partitioner {
            config.partitioner = p.clone();
        }
        config.forward_timeout = Duration::from_millis(self.forward_timeout_ms);
        config.replicas = self.replicas;
        config.seed_keys = !self.no_seed;
        config.validate()?;
        Ok(config)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Cluster(args) => cluster(args).await,
        Command::Node(args) => node(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvserver: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn cluster(args: ClusterArgs) -> Result<(), String> {
    // Validate the shared options once, against a placeholder membership of the right size.
    let peers = (0..args.nodes.max(1))
        .map(|i| format!("h:{}", 1 + i))
        .collect();
    let template = args.common.apply(NodeConfig::new(0, peers))?;
    let cluster = LocalCluster::builder()
        .nodes(args.nodes)
        .host(args.host.clone())
        .base_port(args.base_port)
        .max_memory(template.max_memory)
        .max_value_bytes(template.max_value_bytes)
        .partitioner(template.partitioner.clone())
        .forward_timeout(template.forward_timeout)
        .replicas(template.replicas)
        .seed_keys(template.seed_keys)
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let map = cluster.node(0).map();
    println!(
        "kvserver: {} nodes up ({} replicas per key, partitioner {}, max memory per node {})",
        cluster.len(),
        cluster.node(0).replication_factor(),
        map.partitioner().name(),
        template
            .max_memory
            .map_or("unlimited".to_string(), |b| format!("{b} bytes"))
    );
    for i in 0..cluster.len() {
        println!("  node {i}: {}", cluster.url(i));
    }
    if template.seed_keys {
        for (key, value) in SEED_KEYS {
            let owner = cluster.node(0).owner(key);
            println!("  seed key {key:?} = {value:?} (owned by node {owner})");
        }
    }
    println!(
        "try: curl {}/get/a   (Ctrl-C stops the cluster)",
        cluster.url(0)
    );
    kvserver::shutdown_signal().await;
    println!("kvserver: stopping");
    cluster.shutdown().await;
    Ok(())
}

async fn node(args: NodeArgs) -> Result<(), String> {
    let config = args.common.apply(NodeConfig::new(args.id, args.peers))?;
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let forwarder = Arc::new(HttpForwarder::new(HttpForwarderConfig {
        request_timeout: config.forward_timeout,
        ..Default::default()
    }));
    let node = Arc::new(Node::new(&config, forwarder)?);
    node.start();
    tracing::info!(
        id = %config.id,
        listen = %args.listen,
        peers = ?config.peers,
        "node started"
    );
    let server_config = ServerConfig {
        header_read_timeout: config.header_read_timeout,
        shutdown_grace: config.shutdown_grace,
    };
    kvserver::run(
        listener,
        node.clone(),
        server_config,
        kvserver::shutdown_signal(),
    )
    .await;
    node.stop();
    tracing::info!("node stopped");
    Ok(())
}
