//! Node configuration: plain data, validated once; nothing below `main` reads the environment.

use std::time::Duration;

use kvcore::key::DEFAULT_MAX_VALUE_BYTES;
use kvcore::{partition, NodeId};

/// Everything a node needs to know to start.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// This node's id: its index in `peers`.
    pub id: NodeId,
    /// Address of every node of the cluster as `host:port`, in id order, this node included.
    pub peers: Vec<String>,
    /// Memory budget of this node's store in bytes; `None` for no limit.
    pub max_memory: Option<u64>,
    /// Largest accepted value, in encoded bytes.
    pub max_value_bytes: usize,
    /// Name of the partitioner placing keys (see `kvcore::partition::all`).
    pub partitioner: String,
    /// Copies of each key, on its first `replicas` owners (capped at the cluster size). 1 is pure
    /// sharding; 3 survives one replica down with every operation still linearizable.
    pub replicas: usize,
    /// Deadline for a request forwarded to a peer.
    pub forward_timeout: Duration,
    /// Deadline for a whole client operation, retries included.
    pub op_timeout: Duration,
    /// How often peers are pinged.
    pub heartbeat_interval: Duration,
    /// A peer that has not answered for this long is considered down.
    pub down_after: Duration,
    /// How often each node checks that the keys it is primary for have all their copies.
    pub anti_entropy_interval: Duration,
    /// Whether the node writes the seed keys `a` and `b` it owns when it starts.
    pub seed_keys: bool,
    /// How long a client may take to send request headers before the connection is closed.
    pub header_read_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
}

impl NodeConfig {
    /// A configuration for node `id` of a cluster with these peer addresses, defaults elsewhere.
    pub fn new(id: u32, peers: Vec<String>) -> Self {
        NodeConfig {
            id: NodeId(id),
            peers,
            max_memory: None,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            partitioner: partition::default_partitioner().name().to_owned(),
            replicas: 3,
            forward_timeout: Duration::from_secs(2),
            op_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_millis(250),
            down_after: Duration::from_millis(1000),
            anti_entropy_interval: Duration::from_secs(2),
            seed_keys: true,
            header_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
        }
    }

    /// A single-node configuration for tests (the address is filled in once the port is known).
    pub fn for_test() -> Self {
        NodeConfig {
            seed_keys: false,
            ..NodeConfig::new(0, vec!["127.0.0.1:0".into()])
        }
    }

    /// Copies kept of each key in this cluster: `replicas` capped at the number of nodes.
    pub fn replication_factor(&self) -> usize {
        self.replicas.min(self.peers.len()).max(1)
    }

    /// Checks the configuration, explaining the first problem found.
    pub fn validate(&self) -> Result<(), String> {
        if self.peers.is_empty() {
            return Err("the cluster needs at least one node in --peers".into());
        }
        if self.id.0 as usize >= self.peers.len() {
            return Err(format!(
                "node id {} is out of range: --peers lists {} nodes (ids 0..{})",
                self.id,
                self.peers.len(),
                self.peers.len() - 1
            ));
        }
        for (i, p) in self.peers.iter().enumerate() {
            if p.rsplit_once(':')
                .and_then(|(_, port)| port.parse::<u16>().ok())
                .is_none()
            {
                return Err(format!("peer {i} address {p:?} is not host:port"));
            }
            if self.peers[..i].contains(p) {
                return Err(format!("peer address {p} appears twice in --peers"));
            }
        }
        if partition::by_name(&self.partitioner).is_none() {
            let names: Vec<_> = partition::all().iter().map(|p| p.name()).collect();
            return Err(format!(
                "unknown partitioner {:?}: expected one of {}",
                self.partitioner,
                names.join(", ")
            ));
        }
        if self.max_value_bytes == 0 {
            return Err("the value size limit must be positive".into());
        }
        if self.forward_timeout.is_zero() || self.op_timeout.is_zero() {
            return Err("timeouts must be positive".into());
        }
        if self.replicas == 0 {
            return Err("--replicas must be at least 1".into());
        }
        if self.heartbeat_interval.is_zero() || self.down_after <= self.heartbeat_interval {
            return Err("the failure detector needs down_after > heartbeat_interval > 0".into());
        }
        Ok(())
    }
}

/// Parses a size such as `64MiB`, `1GiB`, `512KB`, `1.5GiB` or plain bytes `1048576`.
///
/// Binary suffixes (KiB, MiB, GiB, TiB) are powers of 1024; decimal ones (KB, MB, GB, TB) are
/// powers of 1000. Case-insensitive; a `B` alone means bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
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
        other => return Err(format!("unknown size unit {other:?} in {text:?}")),
    };
    let invalid = || format!("{text:?} is not a size (examples: 64MiB, 1GiB, 1048576)");
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
        let ok = NodeConfig::new(1, vec!["127.0.0.1:5100".into(), "127.0.0.1:5101".into()]);
        assert_eq!(ok.validate(), Ok(()));
        let bad_id = NodeConfig::new(2, ok.peers.clone());
        assert!(bad_id.validate().unwrap_err().contains("out of range"));
        let dup = NodeConfig::new(0, vec!["h:1".into(), "h:1".into()]);
        assert!(dup.validate().unwrap_err().contains("twice"));
        let no_port = NodeConfig::new(0, vec!["localhost".into()]);
        assert!(no_port.validate().unwrap_err().contains("host:port"));
        let part = NodeConfig {
            partitioner: "nope".into(),
            ..ok.clone()
        };
        assert!(part.validate().unwrap_err().contains("partitioner"));
    }
}
