//! The `kvserver` binary: parses the command line, binds, and runs nodes until Ctrl-C/SIGTERM.
//! The only place that reads the environment (`KV_CLUSTER_SECRET`, `RUST_LOG`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use kvnet::{HttpTransport, Secret};
use kvserver::{Config, LocalCluster, Node, SEED_KEYS};
use tokio::net::TcpListener;

/// The environment variable that may hold the cluster secret instead of --cluster-secret-file.
const SECRET_VARIABLE: &str = "KV_CLUSTER_SECRET";

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
    config: Config,
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
    config: Config,
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
    let secret = std::env::var(SECRET_VARIABLE).ok();
    let result = match cli.command {
        Command::Cluster(args) => cluster(args, secret).await,
        Command::Node(args) => node(args, secret).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvserver: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Puts the cluster secret in `config`: from --cluster-secret-file, or else from the
/// environment variable's value `from_env`. Naming both is refused rather than guessing.
fn load_secret(config: &mut Config, from_env: Option<String>) -> Result<(), String> {
    match (&config.cluster_secret_file, from_env) {
        (Some(file), Some(_)) => Err(format!(
            "the cluster secret is given twice, by --cluster-secret-file {} and by \
             {SECRET_VARIABLE}: keep one",
            file.display()
        )),
        (Some(_), None) => config.load_cluster_secret().map_err(|e| e.to_string()),
        (None, Some(text)) => {
            let secret = Secret::from_text(&text).map_err(|e| format!("{SECRET_VARIABLE}: {e}"))?;
            config.cluster_secret = Some(secret);
            Ok(())
        }
        (None, None) => Ok(()),
    }
}

async fn cluster(
    args: ClusterArgs,
    secret: Option<String>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = args.config;
    load_secret(&mut config, secret)?;
    // The nodes of one process need no secret from outside: they get a fresh one.
    config.cluster_secret.get_or_insert_with(Secret::random);
    // Validate the shared options once, against a placeholder membership of the right size.
    let peers = (0..args.nodes.max(1))
        .map(|i| format!("h:{}", 1 + i))
        .collect();
    Config {
        peers,
        ..config.clone()
    }
    .validate()?;
    // Read the TLS files now, to refuse to start with a clear message.
    kvserver::tls::server_config(&config)?;
    let cluster = LocalCluster::builder()
        .nodes(args.nodes)
        .host(args.host.clone())
        .base_port(args.base_port)
        .config(config.clone())
        .start()
        .await?;
    let map = cluster.node(0).map();
    println!(
        "kvserver: {} nodes up ({} replicas per key, partitioner {}, max memory per node {})",
        cluster.len(),
        cluster.node(0).replication_factor(),
        map.partitioner().name(),
        config
            .max_memory
            .map_or("unlimited".to_string(), |b| format!("{b} bytes"))
    );
    for i in 0..cluster.len() {
        println!("  node {i}: {}", cluster.url(i));
    }
    if config.seed_keys {
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

async fn node(args: NodeArgs, secret: Option<String>) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config {
        id: args.id,
        peers: args.peers,
        ..args.config
    };
    load_secret(&mut config, secret)?;
    config.validate()?;
    config.check_listen_address(args.listen.ip())?;
    if config.cluster_secret.is_none() {
        tracing::warn!(
            listen = %args.listen,
            "no cluster secret: peer messages are not authenticated, so anyone who can reach \
             this loopback address can rewrite any key; give every node --cluster-secret-file \
             or {SECRET_VARIABLE}"
        );
    }
    // Read the TLS files now, to refuse to start with a clear message.
    kvserver::tls::server_config(&config)?;
    let transport = Arc::new(HttpTransport::new(config.http_transport_config()?));
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let node = Arc::new(Node::new(&config, transport)?);
    node.start();
    tracing::info!(
        id = config.id,
        listen = %args.listen,
        peers = ?config.peers,
        authenticated = config.cluster_secret.is_some(),
        tls = config.tls_enabled(),
        "node started"
    );
    kvserver::run(listener, node, kvserver::shutdown_signal()).await;
    tracing::info!("node stopped");
    Ok(())
}
