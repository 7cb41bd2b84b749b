//! Node configuration: one plain type, read by the binary's command line (clap), by
//! [`LocalCluster`](crate::LocalCluster) and by tests; validated once; nothing below `main`
//! reads the environment.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser;
use kvcore::key::DEFAULT_MAX_VALUE_BYTES;
use kvcore::{partition, Ballot, Eviction, NodeId};
use kvnet::{HttpTransportConfig, Secret};
use serde::{Deserialize, Serialize};

/// Upper bound of `--max-connections`: far more than one process serves well, and small enough
/// to count in a semaphore.
pub const MAX_CONNECTIONS: usize = 1 << 20;

/// A configuration that cannot be used, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Everything a node needs to know to start.
///
/// The command line of `kvserver` is generated from this type (`--max-memory`, `--replicas`,
/// ...); `id` and `peers` are given by `kvserver node --id --peers`, or filled in by
/// [`LocalCluster`](crate::LocalCluster) for `kvserver cluster` and in tests.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's id: its index in `peers`.
    #[arg(skip)]
    pub id: u32,
    /// Address of every node of the cluster as `host:port`, in id order, this node included.
    #[arg(skip)]
    pub peers: Vec<String>,
    /// Memory budget of each node's store, e.g. 64MiB, 1GiB or plain bytes. Unlimited if unset.
    #[arg(long, value_parser = parse_size, value_name = "SIZE", env = "KV_MAX_MEMORY")]
    pub max_memory: Option<u64>,
    /// What a node over --max-memory does: `none` refuses writes that do not fit (507);
    /// `lru` or `lfu` runs as a cache and evicts approximately the least recently or least
    /// frequently used keys, through replicated deletes, so that writes keep succeeding.
    // kvcore's own policy type, parsed by name: kvcore has no clap, and a second enum here
    // would only be converted into it.
    #[arg(
        long,
        value_name = "POLICY",
        default_value = "none",
        value_parser = clap::builder::PossibleValuesParser::new(Eviction::NAMES)
            .map(|name| name.parse::<Eviction>().expect("one of the names")),
        env = "KV_EVICTION"
    )]
    pub eviction: Eviction,
    /// Largest accepted value, e.g. 1MiB.
    #[arg(long = "max-value-size", value_parser = parse_size, value_name = "SIZE", default_value = "1MiB", env = "KV_MAX_VALUE_SIZE")]
    pub max_value_bytes: u64,
    /// Copies of each key, capped at the number of nodes. 1 is pure sharding; with 3 every
    /// operation stays linearizable while one of a key's replicas is down.
    #[arg(long, default_value_t = 3, env = "KV_REPLICAS")]
    pub replicas: usize,
    /// How keys are placed on nodes: slots (the default), rendezvous, ring or maglev. Every node
    /// must use the same.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "slots",
        env = "KV_PARTITIONER"
    )]
    pub partitioner: String,
    /// Deadline for a request forwarded to another node, in milliseconds.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 2000,
        env = "KV_FORWARD_TIMEOUT_MS"
    )]
    pub forward_timeout_ms: u64,
    /// Deadline for a whole client operation, retries included, in milliseconds.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 5000,
        env = "KV_OP_TIMEOUT_MS"
    )]
    pub op_timeout_ms: u64,
    /// How often peers are pinged, in milliseconds.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 250,
        env = "KV_HEARTBEAT_MS"
    )]
    pub heartbeat_ms: u64,
    /// A peer silent for this long is considered down, in milliseconds.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 1000,
        env = "KV_DOWN_AFTER_MS"
    )]
    pub down_after_ms: u64,
    /// How often each node checks that the keys it is primary for have all their copies, in
    /// milliseconds.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 2000,
        env = "KV_ANTI_ENTROPY_MS"
    )]
    pub anti_entropy_ms: u64,
    /// How often each node looks at a few shards of its store for keys whose TTL ran out, in
    /// milliseconds (the whole store is looked at every 64 such ticks).
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 100,
        env = "KV_EXPIRY_SWEEP_MS"
    )]
    pub expiry_sweep_ms: u64,
    /// Do not write the seed keys `a` and `b` at start-up.
    #[arg(long = "no-seed", action = clap::ArgAction::SetFalse)]
    pub seed_keys: bool,
    /// Run every write as two rounds (prepare, accept) instead of letting a key's primary keep
    /// the promise of its last round and skip the prepare of the next.
    #[arg(long = "no-cached-promises", action = clap::ArgAction::SetFalse)]
    pub cached_promises: bool,
    /// How long a client may take to send request headers, in milliseconds. hyper runs this
    /// timer whenever a connection waits for a request, so it also closes kept-alive
    /// connections idle for longer.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 10_000,
        env = "KV_HEADER_READ_TIMEOUT_MS"
    )]
    pub header_read_timeout_ms: u64,
    /// How long a client may take to send a request body once its headers are in, in
    /// milliseconds; a slower body is answered 408 and the connection closed.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 30_000,
        env = "KV_BODY_READ_TIMEOUT_MS"
    )]
    pub body_read_timeout_ms: u64,
    /// A kept-alive connection with no request for this long is closed, in milliseconds.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 5000,
        env = "KV_IDLE_TIMEOUT_MS"
    )]
    pub idle_timeout_ms: u64,
    /// Most client and peer connections open at once; one more is answered 503 and closed at
    /// once.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 4096,
        env = "KV_MAX_CONNECTIONS"
    )]
    pub max_connections: usize,
    /// How long a graceful shutdown waits for requests in flight, in milliseconds.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 5000,
        env = "KV_SHUTDOWN_GRACE_MS"
    )]
    pub shutdown_grace_ms: u64,
    /// File holding the cluster secret that peers authenticate each other's messages with (at
    /// least 16 bytes of text, e.g. from `openssl rand -hex 32`). The binary also takes it from
    /// the KV_CLUSTER_SECRET environment variable. Without one, `kvserver node` starts only on a
    /// loopback address, and `kvserver cluster` makes a random one. While the secret is being
    /// changed, the file holds two, one per line: the first tags, both are accepted.
    #[arg(long, value_name = "FILE", env = "KV_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// The cluster secret itself: read from `cluster_secret_file` by
    /// [`load_cluster_secret`](Config::load_cluster_secret), from the environment by the
    /// binary, or set by [`LocalCluster`](crate::LocalCluster) and tests. Never serialized;
    /// printed redacted.
    #[arg(skip)]
    #[serde(skip)]
    pub cluster_secret: Option<Secret>,
    /// Ids of the members keys were placed on before a membership change that is running when
    /// the node starts (empty: none runs). For tests that start a cluster in the middle of a
    /// change; a real change is asked for with `POST /cluster/join` or `/cluster/remove`.
    #[arg(skip)]
    #[serde(skip)]
    pub changing_from: Vec<u32>,
    /// This node's certificate chain (PEM). With --tls-key and --tls-ca, the node serves HTTPS
    /// on its port (client API and peers alike) and reaches its peers over HTTPS.
    #[arg(long, value_name = "FILE", env = "KV_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", env = "KV_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The CA certificate(s) (PEM) that every node's certificate is signed by: peers are
    /// verified against these, as servers and as clients of the peer endpoint.
    #[arg(long, value_name = "FILE", env = "KV_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

impl Default for Config {
    /// The same defaults as the command line.
    fn default() -> Self {
        Config {
            id: 0,
            peers: Vec::new(),
            max_memory: None,
            eviction: Eviction::None,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES as u64,
            replicas: 3,
            partitioner: partition::default_partitioner().name().to_owned(),
            forward_timeout_ms: 2000,
            op_timeout_ms: 5000,
            heartbeat_ms: 250,
            down_after_ms: 1000,
            anti_entropy_ms: 2000,
            expiry_sweep_ms: 100,
            seed_keys: true,
            cached_promises: true,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            idle_timeout_ms: 5000,
            max_connections: 4096,
            shutdown_grace_ms: 5000,
            cluster_secret_file: None,
            cluster_secret: None,
            changing_from: Vec::new(),
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
        }
    }
}

impl Config {
    /// Node `id` of a cluster with these peer addresses, defaults elsewhere.
    pub fn new(id: u32, peers: Vec<String>) -> Self {
        Config {
            id,
            peers,
            ..Config::default()
        }
    }

    /// A single-node configuration for tests, without seed keys (the address is filled in once
    /// the port is known).
    pub fn for_test() -> Self {
        Config {
            seed_keys: false,
            ..Config::new(0, vec!["127.0.0.1:0".into()])
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        NodeId(self.id)
    }

    /// Copies kept of each key in this cluster: `replicas` capped at the number of nodes.
    pub fn replication_factor(&self) -> usize {
        self.replicas.min(self.peers.len()).max(1)
    }

    /// Largest accepted value, in bytes.
    pub fn max_value_bytes(&self) -> usize {
        usize::try_from(self.max_value_bytes).unwrap_or(usize::MAX)
    }

    /// Deadline for one request to a peer.
    pub fn forward_timeout(&self) -> Duration {
        Duration::from_millis(self.forward_timeout_ms)
    }

    /// Deadline for a whole client operation.
    pub fn op_timeout(&self) -> Duration {
        Duration::from_millis(self.op_timeout_ms)
    }

    /// Heartbeat period.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    /// Silence after which a peer is considered down.
    pub fn down_after(&self) -> Duration {
        Duration::from_millis(self.down_after_ms)
    }

    /// Anti-entropy period.
    pub fn anti_entropy_interval(&self) -> Duration {
        Duration::from_millis(self.anti_entropy_ms)
    }

    /// Period of the background sweep for expired keys.
    pub fn expiry_sweep_interval(&self) -> Duration {
        Duration::from_millis(self.expiry_sweep_ms)
    }

    /// Time a client has to send request headers.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    /// Time a client has to send a request body once its headers are in.
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }

    /// Time after which a kept-alive connection without a request is closed.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// Whether the node serves HTTPS and reaches its peers over HTTPS.
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some()
    }

    /// How this node's peer client is set up: deadlines from this configuration, replies up to
    /// [`kvnet::frame_limit`], the cluster secret, and TLS from the `--tls-*` files. Its idle
    /// connections are dropped at half the idle timeout, before a peer closes them under a
    /// request.
    pub fn http_transport_config(&self) -> Result<HttpTransportConfig, ConfigError> {
        Ok(HttpTransportConfig {
            request_timeout: self.forward_timeout(),
            connect_timeout: self.forward_timeout().min(Duration::from_millis(500)),
            pool_idle_timeout: self.idle_timeout() / 2,
            max_reply_bytes: kvnet::frame_limit(self.max_value_bytes()),
            secret: self.cluster_secret.clone(),
            tls: crate::tls::client_config(self)?,
            ..HttpTransportConfig::default()
        })
    }

    /// Reads the cluster secret from `cluster_secret_file`, if one is named.
    pub fn load_cluster_secret(&mut self) -> Result<(), ConfigError> {
        if let Some(path) = &self.cluster_secret_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!(
                    "cannot read the cluster secret file {}: {e}",
                    path.display()
                ))
            })?;
            let secret = Secret::from_text(&text)
                .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
            self.cluster_secret = Some(secret);
        }
        Ok(())
    }

    /// Refuses to expose a node without a cluster secret: listening on anything but a
    /// loopback address, anyone who reaches the port could send it peer messages and rewrite
    /// any key's replicas (Redis's protected mode makes the same call).
    pub fn check_listen_address(&self, listen: IpAddr) -> Result<(), ConfigError> {
        if self.cluster_secret.is_none() && !listen.is_loopback() {
            return Err(ConfigError(format!(
                "refusing to listen on {listen} without a cluster secret: anyone who can reach \
                 that address could send this node peer messages. Give every node the same \
                 secret with --cluster-secret-file FILE or the KV_CLUSTER_SECRET environment \
                 variable (e.g. `openssl rand -hex 32`), or listen on a loopback address"
            )));
        }
        Ok(())
    }

    /// Time a graceful shutdown gives requests in flight.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// Checks the configuration, explaining the first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |message: String| Err(ConfigError(message));
        if self.peers.is_empty() {
            return fail("the cluster needs at least one node in --peers".into());
        }
        if self.id as usize >= self.peers.len() {
            return fail(format!(
                "node id {} is out of range: --peers lists {} nodes (ids 0..{})",
                self.id,
                self.peers.len(),
                self.peers.len() - 1
            ));
        }
        if self.peers.len() > Ballot::MAX_NODE as usize + 1 {
            return fail(format!(
                "a cluster has at most {} nodes",
                Ballot::MAX_NODE as usize + 1
            ));
        }
        for (i, p) in self.peers.iter().enumerate() {
            if p.rsplit_once(':')
                .and_then(|(_, port)| port.parse::<u16>().ok())
                .is_none()
            {
                return fail(format!("peer {i} address {p:?} is not host:port"));
            }
            if self.peers[..i].contains(p) {
                return fail(format!("peer address {p} appears twice in --peers"));
            }
        }
        if partition::by_name(&self.partitioner).is_none() {
            let names: Vec<_> = partition::all().iter().map(|p| p.name()).collect();
            return fail(format!(
                "unknown partitioner {:?}: expected one of {}",
                self.partitioner,
                names.join(", ")
            ));
        }
        if self.eviction.evicts() && self.max_memory.is_none() {
            return fail(format!(
                "--eviction {} evicts keys to stay within --max-memory, which is not set",
                self.eviction
            ));
        }
        if self.max_value_bytes == 0 || self.max_value_bytes > u32::MAX as u64 {
            return fail("--max-value-size must be between 1 byte and 4 GiB".into());
        }
        if self.forward_timeout_ms == 0 || self.op_timeout_ms == 0 {
            return fail("timeouts must be positive".into());
        }
        if self.replicas == 0 {
            return fail("--replicas must be at least 1".into());
        }
        if self.heartbeat_ms == 0 || self.down_after_ms <= self.heartbeat_ms {
            return fail("the failure detector needs down_after > heartbeat > 0".into());
        }
        if self.anti_entropy_ms == 0 || self.expiry_sweep_ms == 0 {
            return fail("the anti-entropy and expiry sweep intervals must be positive".into());
        }
        if self.header_read_timeout_ms == 0
            || self.body_read_timeout_ms == 0
            || self.idle_timeout_ms == 0
        {
            return fail("the header, body and idle timeouts must be positive".into());
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.max_connections) {
            return fail(format!(
                "--max-connections must be between 1 and {MAX_CONNECTIONS}"
            ));
        }
        let tls = [&self.tls_cert, &self.tls_key, &self.tls_ca];
        if tls.iter().any(|f| f.is_some()) && !tls.iter().all(|f| f.is_some()) {
            return fail(
                "--tls-cert, --tls-key and --tls-ca go together: a node serving TLS also \
                 verifies its peers against the CA"
                    .into(),
            );
        }
        if self.cluster_secret_file.is_some() && self.cluster_secret.is_none() {
            return fail(
                "the cluster secret file is named but was not read (Config::load_cluster_secret)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Parses a size such as `64MiB`, `1GiB`, `512KB`, `1.5GiB` or plain bytes `1048576`.
///
/// Binary suffixes (KiB, MiB, GiB, TiB) are powers of 1024; decimal ones (KB, MB, GB, TB) are
/// powers of 1000. Case-insensitive; a `B` alone means bytes.
pub fn parse_size(text: &str) -> Result<u64, ConfigError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => {
            return Err(ConfigError(format!(
                "unknown size unit {other:?} in {text:?}"
            )))
        }
    };
    let invalid = || {
        ConfigError(format!(
            "{text:?} is not a size (examples: 64MiB, 1GiB, 1048576)"
        ))
    };
    if number.is_empty() {
        return Err(invalid());
    }
    if let Ok(n) = number.parse::<u64>() {
        return n.checked_mul(multiplier).ok_or_else(invalid);
    }
    let f: f64 = number.parse().map_err(|_| invalid())?;
    let bytes = f * multiplier as f64;
    if bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64 {
        Ok(bytes.round() as u64)
    } else {
        Err(invalid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    #[test]
    fn the_command_line_defaults_are_the_type_defaults() {
        let parsed = Cli::parse_from(["kvserver"]).config;
        assert_eq!(parsed, Config::default());
        let set = Cli::parse_from([
            "kvserver",
            "--max-memory",
            "64MiB",
            "--replicas",
            "5",
            "--no-seed",
            "--heartbeat-ms",
            "100",
            "--eviction",
            "lfu",
        ])
        .config;
        assert_eq!(set.max_memory, Some(64 << 20));
        assert_eq!(set.eviction, Eviction::Lfu);
        assert!(Cli::try_parse_from(["kvserver", "--eviction", "random"]).is_err());
        assert_eq!(
            (set.replicas, set.seed_keys, set.heartbeat_ms),
            (5, false, 100)
        );
    }

    #[test]
    fn configs_read_from_json_fill_in_defaults_and_refuse_typos() {
        let c: Config = serde_json::from_str(r#"{"replicas": 1, "peers": ["h:1"]}"#).unwrap();
        assert_eq!(c.replicas, 1);
        assert_eq!(c.eviction, Eviction::None);
        let c: Config = serde_json::from_str(r#"{"eviction": "lru"}"#).unwrap();
        assert_eq!(c.eviction, Eviction::Lru);
        assert_eq!(c.op_timeout_ms, Config::default().op_timeout_ms);
        assert!(serde_json::from_str::<Config>(r#"{"replcas": 1}"#).is_err());
    }

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1gib"), Ok(1 << 30));
        assert_eq!(parse_size("512KB"), Ok(512_000));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("10 MB"), Ok(10_000_000));
        assert_eq!(parse_size("7B"), Ok(7));
        for bad in ["", "MiB", "12XB", "-5", "1.2.3GiB", "99999999999999999999"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn validation_explains_problems() {
        let ok = Config::new(1, vec!["127.0.0.1:5100".into(), "127.0.0.1:5101".into()]);
        assert_eq!(ok.validate(), Ok(()));
        let message = |c: Config| c.validate().unwrap_err().0;
        assert!(message(Config::new(2, ok.peers.clone())).contains("out of range"));
        assert!(message(Config::new(0, vec!["h:1".into(), "h:1".into()])).contains("twice"));
        assert!(message(Config::new(0, vec!["localhost".into()])).contains("host:port"));
        let part = Config {
            partitioner: "nope".into(),
            ..ok.clone()
        };
        assert!(message(part).contains("partitioner"));
        let unbounded_cache = Config {
            eviction: Eviction::Lru,
            ..ok.clone()
        };
        assert!(message(unbounded_cache).contains("--max-memory"));
        let detector = Config {
            down_after_ms: 100,
            heartbeat_ms: 100,
            ..ok
        };
        assert!(message(detector).contains("failure detector"));
    }

    #[test]
    fn hardening_options_parse_and_are_checked() {
        let parsed = Cli::parse_from([
            "kvserver",
            "--max-connections",
            "8",
            "--body-read-timeout-ms",
            "100",
            "--idle-timeout-ms",
            "200",
            "--cluster-secret-file",
            "/nonexistent/secret",
            "--tls-cert",
            "c.pem",
        ])
        .config;
        assert_eq!(
            (
                parsed.max_connections,
                parsed.body_read_timeout_ms,
                parsed.idle_timeout_ms
            ),
            (8, 100, 200)
        );
        let ok = Config::new(0, vec!["127.0.0.1:5100".into()]);
        let message = |c: Config| c.validate().unwrap_err().0;
        let cert_only = Config {
            tls_cert: parsed.tls_cert.clone(),
            ..ok.clone()
        };
        assert!(message(cert_only).contains("go together"));
        let unread = Config {
            cluster_secret_file: parsed.cluster_secret_file.clone(),
            ..ok.clone()
        };
        assert!(message(unread).contains("not read"));
        let mut missing = Config {
            cluster_secret_file: parsed.cluster_secret_file.clone(),
            ..Config::default()
        };
        assert!(missing
            .load_cluster_secret()
            .unwrap_err()
            .0
            .contains("/nonexistent/secret"));
        for broken in [
            Config {
                max_connections: 0,
                ..ok.clone()
            },
            Config {
                body_read_timeout_ms: 0,
                ..ok.clone()
            },
            Config {
                idle_timeout_ms: 0,
                ..ok.clone()
            },
        ] {
            assert!(broken.validate().is_err(), "{broken:?}");
        }
    }

    #[test]
    fn a_secret_is_read_from_its_file_and_never_printed() {
        let path = std::env::temp_dir().join(format!("kv-secret-{}", std::process::id()));
        std::fs::write(&path, "s3cret-s3cret-s3cret-s3cret\n").unwrap();
        let mut c = Config {
            cluster_secret_file: Some(path.clone()),
            ..Config::new(0, vec!["127.0.0.1:1".into()])
        };
        c.load_cluster_secret().unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            c.cluster_secret.as_ref().map(Secret::to_text).as_deref(),
            Some("s3cret-s3cret-s3cret-s3cret")
        );
        assert_eq!(c.validate(), Ok(()));
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(!serde_json::to_string(&c).unwrap().contains("s3cret"));
        std::fs::write(&path, "short\n").unwrap();
        let e = c.load_cluster_secret().unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(e.0.contains("at least 16"), "{e}");
    }

    #[test]
    fn without_a_secret_only_loopback_addresses_are_served() {
        let open = Config::default();
        for loopback in ["127.0.0.1", "127.8.9.10", "::1"] {
            assert_eq!(open.check_listen_address(loopback.parse().unwrap()), Ok(()));
        }
        for exposed in ["0.0.0.0", "::", "10.1.2.3", "192.168.0.7"] {
            let e = open
                .check_listen_address(exposed.parse().unwrap())
                .unwrap_err();
            assert!(e.0.contains("without a cluster secret"), "{exposed}: {e}");
            assert!(e.0.contains("KV_CLUSTER_SECRET"), "{e}");
        }
        let secured = Config {
            cluster_secret: Some(Secret::random()),
            ..Config::default()
        };
        assert_eq!(
            secured.check_listen_address("0.0.0.0".parse().unwrap()),
            Ok(())
        );
    }
}
