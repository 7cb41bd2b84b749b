//! The `kvserver` binary: parses the command line, binds, and runs nodes until Ctrl-C/SIGTERM
//! (or, for a node, until it is removed from the cluster); `kvserver admin` asks a running node
//! for membership changes; `kvserver get`, `set`, `delete`, `incr` and `keys` are the key
//! commands of [`kvserver::cli`]. The only place that reads the environment
//! (`KV_CLUSTER_SECRET`, `KV_NODE`, `RUST_LOG`, and through clap each option's `KV_*` variable,
//! `KV_LOG_FORMAT` among them).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand};
use kvcore::NodeId;
use kvnet::{HttpTransport, Secret};
use kvserver::admin::{AdminClient, Joined, Removal};
use kvserver::cli::{KeyCommand, DEFAULT_NODE};
use kvserver::{ClientError, Config, LocalCluster, Node, SEED_KEYS};
use tokio::net::TcpListener;

/// The environment variable that may hold the cluster secret instead of --cluster-secret-file.
const SECRET_VARIABLE: &str = "KV_CLUSTER_SECRET";

/// The environment variable that may name the node `kvserver admin` and the key commands ask
/// instead of --node.
const NODE_VARIABLE: &str = "KV_NODE";

/// How long `kvserver node --join` keeps asking the members to add it.
const JOIN_PATIENCE: Duration = Duration::from_secs(30);

/// How often a node checks whether it was removed from the cluster.
const REMOVAL_POLL: Duration = Duration::from_millis(200);

/// How long a removed node keeps serving before it exits: peers finishing the change that
/// removed it may still read from it, and clients see `/health` say `removed`.
const REMOVAL_GRACE: Duration = Duration::from_secs(1);

/// A distributed in-memory key-value store with a JSON HTTP API.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines are written to stderr: `text` for people, `json` for log collectors (one
    /// object per line, with the fields of the spans it was logged in, such as `request_id`).
    /// Which lines are logged is set by RUST_LOG (default `info`; `kvserver=debug` adds a line
    /// per client request and per peer message).
    #[arg(
        long,
        value_enum,
        default_value_t = LogFormat::Text,
        env = "KV_LOG_FORMAT",
        global = true,
        display_order = 900
    )]
    log_format: LogFormat,
}

/// The format of log lines.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    /// One line of text per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logs to stderr in `format`, filtered by RUST_LOG (default `info`).
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal, not in files or a container's log.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        // The current span and its parents as a list, so a line logged in a peer message's
        // span shows its request id.
        LogFormat::Json => logs
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .init(),
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a whole cluster in this process: node i listens on base-port + i.
    Cluster(ClusterArgs),
    /// Run one node of a cluster whose nodes are separate processes.
    Node(NodeArgs),
    /// Ask a running node about the cluster's membership, or to change it.
    Admin(AdminArgs),
    /// Exit 0 if the node is up and caught up (`/health` ok), 1 if it answers but is not
    /// (recovering, seeding, removed), 2 if it cannot be reached: a container health check.
    Health {
        /// The node to ask, as HOST:PORT. Also from KV_NODE [default: 127.0.0.1:5100].
        #[arg(long, value_name = "HOST:PORT")]
        node: Option<String>,
    },
    #[command(flatten)]
    Key(KeyCommand),
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

/// A node starts either as a member of a cluster of fixed members (--id and --peers), or by
/// joining a running cluster (--join): exactly one of the two. An --id past the end of --peers
/// joins through them (how a StatefulSet scaled past its first members starts its new pods).
///
/// Every option can also come from the environment variable named in its help (`KV_LISTEN`,
/// `KV_PEERS`, ...), as containers are configured; a flag on the command line wins.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("membership").required(true).args(["peers", "join"])))]
struct NodeArgs {
    /// This node's id: its position in --peers, from 0. An id past the end of --peers joins
    /// the cluster through them, at the --advertise address.
    #[arg(long, requires = "peers", env = "KV_ID")]
    id: Option<u32>,
    /// Address to listen on, e.g. 0.0.0.0:5100.
    #[arg(long, value_name = "HOST:PORT", env = "KV_LISTEN")]
    listen: SocketAddr,
    /// Every node's address as peers reach it, in id order, this node included. Starts a
    /// cluster of these fixed members (each started with the same list); with --id.
    #[arg(
        long,
        value_name = "ADDR0,ADDR1,...",
        value_delimiter = ',',
        requires = "id",
        env = "KV_PEERS"
    )]
    peers: Vec<String>,
    /// Join a running cluster instead: ask these members, in turn, to add this node (plain
    /// HTTP: not with --tls-cert). The cluster gives the node its id and copies the keys it
    /// gains to it.
    #[arg(
        long,
        value_name = "ADDR[,ADDR...]",
        value_delimiter = ',',
        conflicts_with_all = ["id", "peers"],
        env = "KV_JOIN"
    )]
    join: Vec<String>,
    /// The address peers and clients reach this node at, if not --listen (a host name works,
    /// e.g. db-4.internal:5100). Needed to join; with --id inside --peers it must be this
    /// node's entry there.
    #[arg(long, value_name = "HOST:PORT", env = "KV_ADVERTISE")]
    advertise: Option<String>,
    #[command(flatten)]
    config: Config,
}

/// How a node takes its place in the cluster, as the command line says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Start {
    /// Node `id` of the fixed members `peers`.
    Static { id: u32, peers: Vec<String> },
    /// A new member, added by one of `members` at the address `advertise` (`None`: the
    /// listening address).
    Join {
        members: Vec<String>,
        advertise: Option<String>,
    },
}

impl NodeArgs {
    fn start(&self) -> Result<Start, String> {
        match self.id {
            Some(id) if self.join.is_empty() && (id as usize) < self.peers.len() => {
                let own = &self.peers[id as usize];
                match &self.advertise {
                    Some(advertised) if advertised != own => Err(format!(
                        "--advertise {advertised} is not this node's entry in --peers ({own})"
                    )),
                    _ => Ok(Start::Static {
                        id,
                        peers: self.peers.clone(),
                    }),
                }
            }
            // Past the first members: join through them, as the address it advertises.
            Some(id) if self.join.is_empty() => match &self.advertise {
                Some(_) => Ok(Start::Join {
                    members: self.peers.clone(),
                    advertise: self.advertise.clone(),
                }),
                None => Err(format!(
                    "--id {id} is past the end of --peers ({} nodes), so the node joins through \
                     them; give the address they reach it at with --advertise",
                    self.peers.len()
                )),
            },
            // clap makes --join the only other way.
            _ => Ok(Start::Join {
                members: self.join.clone(),
                advertise: self.advertise.clone(),
            }),
        }
    }
}

#[derive(Args, Debug)]
struct AdminArgs {
    /// The node to ask, as HOST:PORT (plain HTTP). Also from the KV_NODE environment variable
    /// [default: 127.0.0.1:5100].
    #[arg(long, value_name = "HOST:PORT", global = true)]
    node: Option<String>,
    /// Print the node's answer as JSON, as it gave it.
    #[arg(long, global = true)]
    json: bool,
    /// File holding the cluster secret, sent as `Authorization: Bearer`. Also from the
    /// KV_CLUSTER_SECRET environment variable.
    #[arg(long, value_name = "FILE", global = true)]
    cluster_secret_file: Option<PathBuf>,
    #[command(subcommand)]
    action: AdminAction,
}

#[derive(Subcommand, Debug, PartialEq, Eq)]
enum AdminAction {
    /// Show the members, their states and the membership change running, if any.
    Status,
    /// Add the node listening on ADDR (as its peers reach it) to the cluster. The node itself
    /// must then be started with `kvserver node --join`; this only records it.
    Join {
        /// The new node's HOST:PORT.
        addr: String,
    },
    /// Remove the node asked (--node) from the cluster: it hands its keys over, then exits.
    /// Waits until it is removed (or gone). A Kubernetes preStop hook for scaling in.
    Leave {
        /// Only a node that joined the cluster leaves: with KV_ID set below the number of
        /// addresses in KV_PEERS (one of the first members, as a StatefulSet's environment
        /// says), do nothing, so a restart does not move a first member's keys away and back.
        #[arg(long)]
        joined_only: bool,
        /// How long to wait for the removal, in seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 110)]
        wait: u64,
    },
    /// Remove node ID from the cluster: alive, it hands its keys over and then exits; down,
    /// its keys are copied from the other replicas.
    Remove {
        /// The node's id, as `status` shows it.
        id: u32,
        /// Remove it even if some keys could lose acknowledged writes (when too many of their
        /// replicas are down to copy them from a majority).
        #[arg(long)]
        force: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let secret = std::env::var(SECRET_VARIABLE).ok();
    let result = match cli.command {
        Command::Cluster(args) => cluster(args, secret).await,
        Command::Node(args) => node(args, secret).await,
        Command::Admin(args) => {
            let node = std::env::var(NODE_VARIABLE).ok();
            return admin(args, node, secret).await;
        }
        Command::Health { node } => {
            let from_env = std::env::var(NODE_VARIABLE).ok();
            return health(admin_node(node, from_env)).await;
        }
        Command::Key(command) => {
            let node = std::env::var(NODE_VARIABLE).ok();
            return kvserver::cli::run(command, node).await;
        }
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
        "kvserver: {} nodes up ({} replicas per key, partitioner {}, max memory per node {}, \
         eviction {})",
        cluster.len(),
        cluster.node(0).replication_factor(),
        map.partitioner().name(),
        config
            .max_memory
            .map_or("unlimited".to_string(), |b| format!("{b} bytes")),
        config.eviction
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
    let start = args.start()?;
    let mut config = args.config;
    load_secret(&mut config, secret)?;
    let listen = args.listen;
    if let Start::Join { .. } = &start {
        let tls = [&config.tls_cert, &config.tls_key, &config.tls_ca];
        if tls.iter().any(|f| f.is_some()) {
            return Err(
                "--join asks the members over plain HTTP, so it cannot be combined with \
                        --tls-cert, --tls-key or --tls-ca yet: start TLS nodes with --id and \
                        --peers"
                    .into(),
            );
        }
    }
    match &start {
        Start::Static { id, peers } => {
            config.id = *id;
            config.peers = peers.clone();
            config.validate()?;
        }
        Start::Join { members, advertise } => {
            // The options shared with the static path are checked against a placeholder
            // membership of one node; the cluster's record supplies the real one.
            let me = advertise.clone().unwrap_or_else(|| listen.to_string());
            Config {
                id: 0,
                peers: vec![me],
                ..config.clone()
            }
            .validate()?;
            check_addresses(members, advertise.as_deref(), listen)?;
        }
    }
    config.check_listen_address(listen.ip())?;
    if config.cluster_secret.is_none() {
        tracing::warn!(
            %listen,
            "no cluster secret: peer messages are not authenticated, so anyone who can reach \
             this loopback address can rewrite any key; give every node --cluster-secret-file \
             or {SECRET_VARIABLE}"
        );
    }
    // Read the TLS files now, to refuse to start with a clear message.
    kvserver::tls::server_config(&config)?;
    let transport = Arc::new(HttpTransport::new(config.http_transport_config()?));
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let node = match start {
        Start::Static { .. } => {
            let node = Node::new(&config, transport)?;
            tracing::info!(
                id = config.id,
                %listen,
                peers = ?config.peers,
                authenticated = config.cluster_secret.is_some(),
                tls = config.tls_enabled(),
                "node started"
            );
            node
        }
        Start::Join { members, advertise } => {
            // Bound first: a port 0 is now a real one, and the members can reach this node as
            // soon as they have added it.
            let me = match advertise {
                Some(addr) => addr,
                None => listener.local_addr()?.to_string(),
            };
            let secret = config.cluster_secret.as_ref();
            let joined = join_cluster(&members, secret, &me, JOIN_PATIENCE).await?;
            warn_if_overridden(&config, &joined);
            let record = joined.record;
            let config = Config {
                id: joined.node.0,
                // The members come from the cluster's record, not from the command line.
                peers: Vec::new(),
                ..config
            };
            let node = Node::joined(&config, transport, joined.node, record, joined.fresh)?;
            tracing::info!(
                id = %joined.node,
                %listen,
                advertise = me,
                epoch = joined.epoch,
                fresh = joined.fresh,
                authenticated = config.cluster_secret.is_some(),
                "node joined the cluster"
            );
            node
        }
    };
    let node = Arc::new(node);
    node.start();
    let stopping = {
        let node = node.clone();
        async move {
            tokio::select! {
                () = kvserver::shutdown_signal() => {}
                () = removed(&node) => {}
            }
        }
    };
    kvserver::run(listener, node, stopping).await;
    tracing::info!("node stopped");
    Ok(())
}

/// Refuses addresses that cannot work before anything is bound or asked: members and the
/// advertised address must be `host:port`, and a node listening on every interface must say
/// which address its peers reach it at.
fn check_addresses(
    members: &[String],
    advertise: Option<&str>,
    listen: SocketAddr,
) -> Result<(), String> {
    let host_port = |addr: &str| {
        addr.rsplit_once(':')
            .filter(|(host, _)| !host.is_empty())
            .and_then(|(_, port)| port.parse::<u16>().ok())
    };
    if let Some(bad) = members.iter().find(|m| host_port(m).is_none()) {
        return Err(format!("--join: {bad:?} is not HOST:PORT"));
    }
    match advertise {
        Some(addr) => match host_port(addr) {
            None | Some(0) => Err(format!(
                "--advertise {addr:?} is not HOST:PORT with a port other than 0"
            )),
            Some(_) => Ok(()),
        },
        None if listen.ip().is_unspecified() => Err(format!(
            "--listen {listen} is every interface, not an address peers can reach: give \
             --advertise HOST:PORT as well"
        )),
        None => Ok(()),
    }
}

/// Asks `members` in turn to add the node at `me` until one does: past connection failures,
/// unavailable members and a membership change running (which the cluster finishes by itself),
/// backing off, for up to `patience`. Any other refusal (a wrong secret, a bad address) ends
/// it at once.
async fn join_cluster(
    members: &[String],
    secret: Option<&Secret>,
    me: &str,
    patience: Duration,
) -> Result<Joined, String> {
    let clients: Vec<AdminClient> = members
        .iter()
        .map(|m| AdminClient::new(m.as_str(), secret))
        .collect();
    let deadline = tokio::time::Instant::now() + patience;
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut last = None;
        for (member, client) in members.iter().zip(&clients) {
            // Asking again after a call cut short is safe: a member already recorded at this
            // address keeps its id (and then starts as a restarted node, catching up first).
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let client = client
                .clone()
                .with_timeout(left.max(Duration::from_secs(1)));
            match client.join(me).await {
                Ok(joined) => return Ok(joined),
                Err(e) if worth_retrying_join(&e) => {
                    tracing::info!(member, error = %e, "joining: asking again");
                    last = Some(e);
                }
                Err(e) => return Err(format!("{member} refused to add {me}: {e}")),
            }
        }
        if tokio::time::Instant::now() + backoff > deadline {
            let last = last.map_or_else(String::new, |e| format!(": {e}"));
            return Err(format!(
                "no member added {me} within {patience:?} (asked {}){last}",
                members.join(", ")
            ));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Whether a join refused with `e` may succeed if asked again: transient failures, and a
/// change already running (joins wait for it rather than fail).
fn worth_retrying_join(e: &ClientError) -> bool {
    e.is_transient() || e.code() == Some(kvcore::ErrorCode::ChangeInProgress)
}

/// The cluster's record decides the replicas and the partitioner; say so when this node was
/// started with others.
fn warn_if_overridden(config: &Config, joined: &Joined) {
    let replicas = joined.record.replicas;
    let partitioner = &joined.record.map.partitioner;
    if config.replicas != replicas || &config.partitioner != partitioner {
        tracing::warn!(
            cluster_replicas = replicas,
            cluster_partitioner = %partitioner,
            replicas = config.replicas,
            partitioner = %config.partitioner,
            "the cluster's --replicas and --partitioner apply, not this node's"
        );
    }
}

/// Completes a short grace after `node` finds itself removed from the cluster: the process then
/// shuts down as on a signal.
async fn removed(node: &Node) {
    let mut every = tokio::time::interval(REMOVAL_POLL);
    loop {
        every.tick().await;
        if node.is_removed() {
            break;
        }
    }
    tracing::info!(
        node = %node.id(),
        "this node was removed from the cluster; stopping in {REMOVAL_GRACE:?}"
    );
    tokio::time::sleep(REMOVAL_GRACE).await;
}

/// Exit statuses of `kvserver admin`.
mod exit {
    /// The node answered with an error.
    pub const REFUSED: u8 = 1;
    /// A usage error, or no usable answer.
    pub const UNREACHABLE: u8 = 2;
}

/// `kvserver health`: the node's `/health`, as an exit status.
async fn health(addr: String) -> ExitCode {
    // This node's health, not another member's.
    let answer = match kvserver::Client::builder([addr.as_str()])
        .max_attempts(1)
        .discover(false)
        .build()
    {
        Ok(client) => client.health().await,
        Err(e) => Err(e),
    };
    match answer {
        Ok(health) => {
            println!("node {} is {}", health.node, health.status);
            ExitCode::from(u8::from(health.status != "ok"))
        }
        Err(e) => {
            eprintln!("kvserver health: {e}");
            ExitCode::from(exit::UNREACHABLE)
        }
    }
}

async fn admin(args: AdminArgs, node_env: Option<String>, secret: Option<String>) -> ExitCode {
    let node = admin_node(args.node, node_env);
    let mut config = Config {
        cluster_secret_file: args.cluster_secret_file,
        ..Config::default()
    };
    if let Err(e) = load_secret(&mut config, secret) {
        eprintln!("kvserver admin: {e}");
        return ExitCode::from(exit::UNREACHABLE);
    }
    let client = AdminClient::new(node.clone(), config.cluster_secret.as_ref());
    let json = args.json;
    let printed = match args.action {
        AdminAction::Status if json => client.status_json().await.map(|j| j.to_string()),
        AdminAction::Status => client.status().await.map(|s| {
            let table = s.table();
            table.trim_end().to_owned()
        }),
        AdminAction::Join { addr } => client.join(&addr).await.map(|j| {
            if json {
                serde_json::json!({"node": j.node, "epoch": j.epoch, "fresh": j.fresh}).to_string()
            } else if j.fresh {
                format!(
                    "node {} added at {addr} (epoch {}); start it with `kvserver node --join`",
                    j.node, j.epoch
                )
            } else {
                format!("{addr} is already node {} (epoch {})", j.node, j.epoch)
            }
        }),
        AdminAction::Leave { joined_only, wait } => {
            if joined_only
                && is_first_member(
                    std::env::var("KV_ID").ok().as_deref(),
                    std::env::var("KV_PEERS").ok().as_deref(),
                )
            {
                println!("one of the cluster's first members (KV_ID, KV_PEERS): not leaving");
                return ExitCode::SUCCESS;
            }
            leave(&client, &node, Duration::from_secs(wait)).await
        }
        AdminAction::Remove { id, force } => client.remove(NodeId(id), force).await.map(|r| {
            let state = match r.state {
                Removal::Leaving => "leaving",
                Removal::Removed => "removed",
            };
            if json {
                serde_json::json!({"node": r.node, "epoch": r.epoch, "state": state}).to_string()
            } else {
                match r.state {
                    Removal::Leaving => format!(
                        "node {} is leaving (epoch {}): its keys are moving to the other members",
                        r.node, r.epoch
                    ),
                    Removal::Removed => format!("node {} is removed (epoch {})", r.node, r.epoch),
                }
            }
        }),
    };
    match printed {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kvserver admin: {e}");
            match e {
                // The node answered: with a refusal, or with a change it could not confirm.
                ClientError::Api { .. } | ClientError::OutcomeUnknown { code: Some(_), .. } => {
                    ExitCode::from(exit::REFUSED)
                }
                ClientError::OutcomeUnknown { code: None, .. }
                | ClientError::Unreachable { .. }
                | ClientError::BadAnswer { .. }
                | ClientError::Config { .. } => ExitCode::from(exit::UNREACHABLE),
            }
        }
    }
}

/// Whether a node's environment makes it one of the cluster's first members: `KV_ID` names a
/// position inside `KV_PEERS`.
fn is_first_member(id: Option<&str>, peers: Option<&str>) -> bool {
    let (Some(id), Some(peers)) = (id, peers) else {
        return false;
    };
    let members = peers.split(',').filter(|p| !p.trim().is_empty()).count();
    id.trim().parse::<usize>().is_ok_and(|id| id < members)
}

/// Removes the node at `addr` from the cluster and waits until it says it is removed (or has
/// exited), at most `wait`.
async fn leave(client: &AdminClient, addr: &str, wait: Duration) -> Result<String, ClientError> {
    // Only this node: once it has left, another member's health would hide that it stopped.
    let node = kvserver::Client::builder([addr]).discover(false).build()?;
    let id = node.health().await?.node;
    let deadline = tokio::time::Instant::now() + wait;
    let mut every = tokio::time::interval(REMOVAL_POLL);
    // Another membership change may be running: the removal waits its turn.
    let removal = loop {
        match client.remove(id, false).await {
            Err(e)
                if e.code() == Some(kvcore::ErrorCode::ChangeInProgress)
                    && tokio::time::Instant::now() < deadline =>
            {
                every.tick().await;
            }
            other => break other?,
        }
    };
    loop {
        every.tick().await;
        match node.health().await {
            Ok(health) if health.status == "removed" => break,
            // It exits once it knows it was removed; stopping to answer is taken as that.
            Err(ClientError::Unreachable { .. }) => {
                return Ok(format!(
                    "node {id} stopped answering while it left (it exits once removed; \
                     `kvserver admin status` on another member confirms)"
                ))
            }
            _ if tokio::time::Instant::now() >= deadline => {
                return Err(ClientError::OutcomeUnknown {
                    node: addr.to_owned(),
                    code: None,
                    reason: format!(
                        "node {id} is still handing its keys over after {wait:?} (epoch {}); \
                         `kvserver admin status` shows how far it got",
                        removal.epoch
                    ),
                })
            }
            _ => {}
        }
    }
    Ok(format!("node {id} left the cluster"))
}

/// The node `kvserver admin` asks: --node, else the environment's, else the default.
fn admin_node(flag: Option<String>, from_env: Option<String>) -> String {
    flag.or(from_env.filter(|n| !n.trim().is_empty()))
        .unwrap_or_else(|| DEFAULT_NODE.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kvserver").chain(args.iter().copied()))
    }

    fn node_start(args: &[&str]) -> Start {
        match parse(args).unwrap().command {
            Command::Node(node) => node.start().unwrap(),
            other => panic!("not a node: {other:?}"),
        }
    }

    #[test]
    fn a_node_starts_from_fixed_members_or_by_joining() {
        let fixed = node_start(&[
            "node",
            "--id",
            "1",
            "--listen",
            "127.0.0.1:5101",
            "--peers",
            "127.0.0.1:5100,127.0.0.1:5101",
        ]);
        assert_eq!(
            fixed,
            Start::Static {
                id: 1,
                peers: vec!["127.0.0.1:5100".into(), "127.0.0.1:5101".into()]
            }
        );
        let joining = node_start(&[
            "node",
            "--listen",
            "0.0.0.0:5104",
            "--join",
            "db-0:5100,db-1:5100",
            "--advertise",
            "db-4:5104",
            "--replicas",
            "3",
        ]);
        assert_eq!(
            joining,
            Start::Join {
                members: vec!["db-0:5100".into(), "db-1:5100".into()],
                advertise: Some("db-4:5104".into())
            }
        );
    }

    #[test]
    fn a_node_is_given_exactly_one_way_to_find_its_cluster() {
        let listen = ["node", "--listen", "127.0.0.1:5100"];
        let with = |extra: &[&str]| {
            let mut args = listen.to_vec();
            args.extend_from_slice(extra);
            parse(&args).map(|_| ()).map_err(|e| e.kind())
        };
        assert_eq!(with(&[]), Err(ErrorKind::MissingRequiredArgument));
        assert_eq!(
            with(&["--peers", "127.0.0.1:5100"]),
            Err(ErrorKind::MissingRequiredArgument)
        );
        assert_eq!(
            with(&["--id", "0"]),
            Err(ErrorKind::MissingRequiredArgument)
        );
        assert_eq!(
            with(&["--id", "0", "--peers", "a:1", "--join", "b:1"]),
            Err(ErrorKind::ArgumentConflict)
        );
        assert_eq!(with(&["--join", "b:1"]), Ok(()));
    }

    #[test]
    fn a_first_member_is_one_whose_id_is_inside_its_peers() {
        let peers = Some("kv-0.kv:5100,kv-1.kv:5100,kv-2.kv:5100");
        assert!(is_first_member(Some("2"), peers));
        assert!(!is_first_member(Some("3"), peers));
        assert!(!is_first_member(None, peers));
        assert!(!is_first_member(Some("0"), None));
        assert!(!is_first_member(Some("x"), peers));
    }

    #[test]
    fn an_id_past_the_first_members_joins_through_them_at_its_advertised_address() {
        let start = |extra: &[&str]| {
            let mut args = vec![
                "node",
                "--listen",
                "0.0.0.0:5100",
                "--peers",
                "kv-0:5100,kv-1:5100",
            ];
            args.extend_from_slice(extra);
            match parse(&args).unwrap().command {
                Command::Node(node) => node.start(),
                other => panic!("not a node: {other:?}"),
            }
        };
        assert_eq!(
            start(&["--id", "3", "--advertise", "kv-3:5100"]),
            Ok(Start::Join {
                members: vec!["kv-0:5100".into(), "kv-1:5100".into()],
                advertise: Some("kv-3:5100".into())
            })
        );
        assert!(start(&["--id", "3"]).unwrap_err().contains("--advertise"));
        // A first member may name its own address, and only that.
        assert!(matches!(
            start(&["--id", "1", "--advertise", "kv-1:5100"]),
            Ok(Start::Static { id: 1, .. })
        ));
        let wrong = start(&["--id", "1", "--advertise", "kv-0:5100"]).unwrap_err();
        assert!(wrong.contains("not this node's entry"), "{wrong}");
    }

    #[test]
    fn joining_addresses_are_checked_before_anything_is_asked() {
        let local: SocketAddr = "127.0.0.1:5104".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:5104".parse().unwrap();
        let members = vec!["127.0.0.1:5100".to_owned(), "db-1:5100".to_owned()];
        assert_eq!(check_addresses(&members, None, local), Ok(()));
        assert_eq!(check_addresses(&members, Some("db-4:5104"), any), Ok(()));
        let every = check_addresses(&members, None, any).unwrap_err();
        assert!(every.contains("--advertise"), "{every}");
        let port = check_addresses(&members, Some("db-4:0"), any).unwrap_err();
        assert!(port.contains("db-4:0"), "{port}");
        let member = check_addresses(&["db-1".to_owned()], None, local).unwrap_err();
        assert_eq!(member, "--join: \"db-1\" is not HOST:PORT");
    }

    #[test]
    fn a_join_waits_out_a_running_change_but_not_a_refusal() {
        let refused = |status, code| ClientError::Api {
            status,
            code,
            message: String::new(),
        };
        use kvcore::ErrorCode as C;
        assert!(worth_retrying_join(&refused(409, C::ChangeInProgress)));
        assert!(worth_retrying_join(&refused(503, C::QuorumUnavailable)));
        assert!(!worth_retrying_join(&refused(401, C::Unauthenticated)));
        assert!(!worth_retrying_join(&refused(400, C::InvalidRequest)));
    }

    #[test]
    fn admin_commands_take_their_options_before_or_after_the_action() {
        let admin = |args: &[&str]| match parse(args).unwrap().command {
            Command::Admin(admin) => admin,
            other => panic!("not admin: {other:?}"),
        };
        let status = admin(&["admin", "--node", "db-0:5100", "--json", "status"]);
        assert_eq!(
            (status.node.as_deref(), status.json, status.action),
            (Some("db-0:5100"), true, AdminAction::Status)
        );
        let remove = admin(&["admin", "remove", "3", "--force", "--node", "db-0:5100"]);
        assert_eq!(remove.action, AdminAction::Remove { id: 3, force: true });
        assert_eq!(remove.node.as_deref(), Some("db-0:5100"));
        let join = admin(&["admin", "join", "db-4:5100"]);
        assert_eq!(
            join.action,
            AdminAction::Join {
                addr: "db-4:5100".into()
            }
        );
        assert!(parse(&["admin", "remove", "three"]).is_err());
        assert!(parse(&["admin"]).is_err());
    }

    #[test]
    fn the_admin_node_is_the_flag_then_the_environment_then_the_default() {
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(admin_node(some("a:1"), some("b:1")), "a:1");
        assert_eq!(admin_node(None, some("b:1")), "b:1");
        assert_eq!(admin_node(None, some(" ")), DEFAULT_NODE);
        assert_eq!(admin_node(None, None), DEFAULT_NODE);
    }

    #[test]
    fn key_commands_parse_beside_the_server_commands() {
        use kvserver::cli::{IncrArgs, SetArgs};
        let key = |args: &[&str]| match parse(args).unwrap().command {
            Command::Key(key) => key,
            other => panic!("not a key command: {other:?}"),
        };
        let set = key(&[
            "set",
            "k",
            "-5",
            "-e",
            "integer",
            "--ttl",
            "1m",
            "--if-version",
            "3",
            "--node",
            "a:1,b:2",
            "--json",
        ]);
        let KeyCommand::Set(SetArgs {
            value,
            encoding,
            ttl,
            if_version,
            connection,
            ..
        }) = set
        else {
            panic!("not set: {set:?}");
        };
        assert_eq!(
            (value.as_str(), encoding, ttl, if_version),
            (
                "-5",
                kvcore::Encoding::Integer,
                Some(Duration::from_secs(60)),
                Some(3)
            )
        );
        assert_eq!(
            (connection.node, connection.json),
            (vec!["a:1".into(), "b:2".into()], true)
        );
        let incr = key(&["incr", "hits", "--by", "-3"]);
        assert!(
            matches!(incr, KeyCommand::Incr(IncrArgs { by: -3, .. })),
            "{incr:?}"
        );
        assert!(matches!(key(&["get", "node"]), KeyCommand::Get(_)));
        let refused = |args: &[&str]| parse(args).map(|_| ()).map_err(|e| e.kind());
        assert_eq!(
            refused(&["set", "k", "v", "--if-version", "1", "--if-absent"]),
            Err(ErrorKind::ArgumentConflict)
        );
        assert_eq!(
            refused(&["set", "k", "v", "--ttl", "1s", "--keep-ttl"]),
            Err(ErrorKind::ArgumentConflict)
        );
        assert_eq!(
            refused(&["set", "k", "v", "--ttl", "soon"]),
            Err(ErrorKind::ValueValidation)
        );
        assert_eq!(refused(&["get"]), Err(ErrorKind::MissingRequiredArgument));
    }

    #[test]
    fn a_secret_named_twice_is_refused() {
        let mut config = Config {
            cluster_secret_file: Some("/nonexistent".into()),
            ..Config::default()
        };
        let both = load_secret(&mut config, Some("x".repeat(32))).unwrap_err();
        assert!(both.contains("given twice"), "{both}");
        let mut config = Config::default();
        load_secret(&mut config, Some("y".repeat(32))).unwrap();
        assert!(config.cluster_secret.is_some());
    }
}
