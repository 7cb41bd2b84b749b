//! Node configuration: one plain type, read by the binary's command line (clap), by
//! [`LocalCluster`](crate::LocalCluster) and by tests; validated once; nothing below `main`
//! reads the environment.

use std::time::Duration;

use kvcore::key::DEFAULT_MAX_VALUE_BYTES;
use kvcore::{partition, Ballot, NodeId};
use serde::{Deserialize, Serialize};

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
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub max_memory: Option<u64>,
    /// Largest accepted value, e.g. 1MiB.
    #[arg(long = "max-value-size", value_parser = parse_size, value_name = "SIZE", default_value = "1MiB")]
    pub max_value_bytes: u64,
    /// Copies of each key, capped at the number of nodes. 1 is pure sharding; with 3 every
    /// operation stays linearizable while one of a key's replicas is down.
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// How keys are placed on nodes: slots (the default), rendezvous, ring or maglev. Every node
    /// must use the same.
    #[arg(long, value_name = "NAME", default_value = "slots")]
    pub partitioner: String,
    /// Deadline for a request forwarded to another node, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub forward_timeout_ms: u64,
    /// Deadline for a whole client operation, retries included, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub op_timeout_ms: u64,
    /// How often peers are pinged, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 250)]
    pub heartbeat_ms: u64,
    /// A peer silent for this long is considered down, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub down_after_ms: u64,
    /// How often each node checks that the keys it is primary for have all their copies, in
    /// milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub anti_entropy_ms: u64,
    /// Do not write the seed keys `a` and `b` at start-up.
    #[arg(long = "no-seed", action = clap::ArgAction::SetFalse)]
    pub seed_keys: bool,
    /// Run every write as two rounds (prepare, accept) instead of letting a key's primary keep
    /// the promise of its last round and skip the prepare of the next.
    #[arg(long = "no-cached-promises", action = clap::ArgAction::SetFalse)]
    pub cached_promises: bool,
    /// How long a client may take to send request headers, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
    /// How long a graceful shutdown waits for requests in flight, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub shutdown_grace_ms: u64,
}

impl Default for Config {
    /// The same defaults as the command line.
    fn default() -> Self {
        Config {
            id: 0,
            peers: Vec::new(),
            max_memory: None,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES as u64,
            replicas: 3,
            partitioner: partition::default_partitioner().name().to_owned(),
            forward_timeout_ms: 2000,
            op_timeout_ms: 5000,
            heartbeat_ms: 250,
            down_after_ms: 1000,
            anti_entropy_ms: 2000,
            seed_keys: true,
            cached_promises: true,
            header_read_timeout_ms: 10_000,
            shutdown_grace_ms: 5000,
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

    /// Time a client has to send request headers.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
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
        if self.anti_entropy_ms == 0 {
            return fail("the anti-entropy interval must be positive".into());
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
        ])
        .config;
        assert_eq!(set.max_memory, Some(64 << 20));
        assert_eq!(
            (set.replicas, set.seed_keys, set.heartbeat_ms),
            (5, false, 100)
        );
    }

    #[test]
    fn configs_read_from_json_fill_in_defaults_and_refuse_typos() {
        let c: Config = serde_json::from_str(r#"{"replicas": 1, "peers": ["h:1"]}"#).unwrap();
        assert_eq!(c.replicas, 1);
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
        let detector = Config {
            down_after_ms: 100,
            heartbeat_ms: 100,
            ..ok
        };
        assert!(message(detector).contains("failure detector"));
    }
}
