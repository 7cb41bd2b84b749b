//! `GET /metrics`: a node's figures in the Prometheus text format (version 0.0.4), encoded by
//! `prometheus-client`.
//!
//! Each scrape builds a registry of what the node measures as it serves
//! ([`Telemetry`](crate::telemetry::Telemetry)) and of figures read at that moment: the counters
//! `/stats` also reports ([`Metrics`](crate::metrics::Metrics), the one source of both), the
//! store's size, the cluster as this node sees it, the process' memory. Every name starts with
//! `kv_`; counters end in `_total`, and figures in a unit end in it (`_seconds`, `_bytes`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::{Registry, Unit};

use crate::metrics::MetricsSnapshot;
use crate::node::Node;

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Every state `kv_node_state` has a series for: the failure detector's (`up`, `recovering`,
/// `down`) and a membership change's (`joining`, `leaving`, `removed`).
pub const NODE_STATES: [&str; 6] = ["up", "recovering", "down", "joining", "leaving", "removed"];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct NodeStateLabels {
    node: u32,
    state: &'static str,
}

/// The node's metrics, as a scrape reads them.
pub fn render(node: &Node) -> String {
    let mut registry = Registry::default();
    node.telemetry().register(&mut registry);
    register_counters(&mut registry, &node.metrics().snapshot());
    register_store(&mut registry, node);
    register_cluster(&mut registry, node);
    register_process(&mut registry, node);
    let mut text = String::new();
    // Writing to a String cannot fail, and every family here encodes.
    let _ = prometheus_text::encode(&mut text, &registry);
    text
}

fn counter(value: u64) -> ConstCounter {
    ConstCounter::new(value)
}

fn gauge(value: u64) -> ConstGauge {
    ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX))
}

fn register_counters(registry: &mut Registry, m: &MetricsSnapshot) {
    let counters = [
        ("kv_reads", "Client reads this node coordinated (each key of a batch counts)", m.gets),
        ("kv_writes", "Client writes (sets, deletes, increments) this node coordinated (each item of a batch counts)", m.writes),
        ("kv_batches", "Client batches (/mget, /mset) this node coordinated", m.batches),
        ("kv_scan_pages", "Scan pages (/keys) this node coordinated", m.scans),
        ("kv_local_requests", "Client operations this node coordinated as a replica of the key", m.local),
        ("kv_forwarded_requests", "Client operations this node forwarded to a replica of the key", m.forwarded),
        ("kv_consensus_rounds", "Proposal rounds this node started (prepare and accept, or one accept under a cached promise)", m.rounds),
        ("kv_consensus_retries", "Proposal rounds retried after a conflicting ballot", m.retries),
        ("kv_fast_reads", "Reads answered in one round trip because the replicas agreed", m.fast_reads),
        ("kv_repairs", "Replicas brought up to date by reads and anti-entropy", m.repairs),
        ("kv_tombstones_collected", "Tombstones collected once every replica of their key held them", m.collected),
        ("kv_keys_moved_in", "Keys copied to this node by membership changes", m.moved_in),
        ("kv_keys_moved_out", "Keys dropped by this node after a membership change moved them away", m.moved_out),
        ("kv_expired_keys", "Expired keys this node's background sweep removed", m.expired),
        ("kv_evictions", "Keys this node evicted to stay within its memory budget", m.evicted),
    ];
    for (name, help, value) in counters {
        registry.register(name, help, counter(value));
    }
    registry.register(
        "kv_anti_entropy_passes",
        "Anti-entropy passes run by this node",
        counter(m.anti_entropy_passes),
    );
    registry.register(
        "kv_anti_entropy_skipped_passes",
        "Anti-entropy passes skipped because no copy can have gone missing since the last clean one",
        counter(m.anti_entropy_skips),
    );
}

fn register_store(registry: &mut Registry, node: &Node) {
    let stats = node.store().stats();
    // Clients' keys only, as /stats counts them: the cluster's record of its map is not one.
    let own = u64::from(node.holds_map_replica());
    registry.register(
        "kv_keys",
        "Clients' keys this node stores replicas of, as /stats counts them",
        gauge(stats.keys.saturating_sub(own)),
    );
    registry.register_with_unit(
        "kv_stored",
        "Bytes charged against this node's memory budget (keys, values and their overhead)",
        Unit::Bytes,
        gauge(stats.bytes),
    );
    if let Some(max) = stats.max_memory {
        registry.register_with_unit(
            "kv_max_memory",
            "This node's memory budget (--max-memory); absent when unlimited",
            Unit::Bytes,
            gauge(max),
        );
    }
    registry.register(
        "kv_under_replicated_keys",
        "Keys this node is primary for that lacked a current copy on a replica at the last anti-entropy pass",
        gauge(node.under_replicated()),
    );
}

fn register_cluster(registry: &mut Registry, node: &Node) {
    let map = node.map();
    let record = node.membership();
    let states: Family<NodeStateLabels, Gauge> = Family::default();
    for n in map.nodes().iter().chain(map.departing()) {
        let current = node.node_state(&record, n.id);
        for state in NODE_STATES {
            states
                .get_or_create(&NodeStateLabels {
                    node: n.id.0,
                    state,
                })
                .set(i64::from(state == current));
        }
    }
    registry.register(
        "kv_node_state",
        "1 for each node's state as this node sees it (as /cluster shows it), 0 for its other states",
        states,
    );
    registry.register(
        "kv_cluster_epoch",
        "Epoch of this node's cluster map",
        gauge(map.epoch()),
    );
    registry.register(
        "kv_rebalance_running",
        "1 while a membership change is running, as this node sees it",
        gauge(u64::from(map.is_changing())),
    );
    registry.register(
        "kv_rebalance_moved_keys",
        "Keys copied so far by the running (or last) membership change, as the cluster's record counts them",
        gauge(record.moved_keys),
    );
    registry.register(
        "kv_rebalance_remaining_keys",
        "Keys this node holds that the running membership change has yet to copy",
        gauge(node.rebalance_progress().remaining_keys),
    );
}

fn register_process(registry: &mut Registry, node: &Node) {
    if let Some(rss) = resident_memory_bytes() {
        registry.register_with_unit(
            "kv_process_resident_memory",
            "Resident memory of the process serving this node (Linux only)",
            Unit::Bytes,
            gauge(rss),
        );
    }
    let started = SystemTime::now()
        .checked_sub(node.uptime())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or(Duration::ZERO);
    registry.register_with_unit(
        "kv_start_time",
        "When this node started, in seconds since 1970",
        Unit::Seconds,
        ConstGauge::new(started.as_secs_f64()),
    );
}

/// The process' resident set size, from `VmRSS` in `/proc/self/status` (in KiB, whatever the
/// page size). `None` where there is no `/proc`.
fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}
