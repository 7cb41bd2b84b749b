//! The status page and what it shows: a node's own figures ([`Figures`], answered to peers as
//! a [`FetchStatus`](kvnet::rpc::FetchStatus)) and the cluster overview
//! (`GET /cluster/overview`) that the serving node builds from every node's figures, which the
//! page (`GET /`, [`PAGE`]) polls.
//!
//! The overview never waits on one node for long: every node of the map is asked at once, each
//! within [`ASK_TIMEOUT`], and a node that does not answer, answers with an error (an older
//! build refuses a [`FetchStatus`](kvnet::rpc::FetchStatus) as an unknown message kind) or
//! answers with another node's figures is listed with its state as this node sees it and its
//! figures marked unavailable. Its figures are numbers of fixed size, summed saturating, so a
//! peer's answer can mislead the page about that node but not break the overview.
//!
//! A node builds one overview at a time ([`Overviews`]): requests that come while one is being
//! built are given that one, so many pages polling at once do not multiply the messages between
//! nodes; a request that comes after the last build ended gets a new one, so figures are never
//! older than the request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use kvcore::{ClusterMap, NodeId, NodeInfo, Store};
use kvnet::rpc::{NodeStatus, RequestCounts};
use kvnet::CallError;
use serde::Serialize;
use serde_json::{json, Value as Json};
use sha2::{Digest, Sha256};

use crate::incarnations::Incarnation;
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::readiness::Readiness;
use crate::topology::{Topology, MAP_KEY};

/// The status page: one HTML document with its styles and script inline, no other assets. It
/// polls `cluster/overview` (relative to itself) on the node that served it.
pub const PAGE: &str = include_str!("status.html");

/// The page's `Content-Security-Policy`: it loads nothing from anywhere, talks only to the
/// node that served it, and applies only its own inline style sheet and runs only its own
/// inline script, each allowed by its SHA-256 (so markup or script that found its way into the
/// page some other way would not apply or run). The browser enforces that, whatever a node's
/// address in the map says.
pub fn content_security_policy() -> &'static str {
    static POLICY: OnceLock<String> = OnceLock::new();
    POLICY.get_or_init(|| {
        let hash = |tag: &str| {
            let inline = PAGE
                .split_once(&format!("<{tag}>"))
                .and_then(|(_, rest)| rest.split_once(&format!("</{tag}>")))
                .map(|(inline, _)| inline)
                .expect("the status page has its style sheet and script inline");
            BASE64.encode(Sha256::digest(inline.as_bytes()))
        };
        format!(
            "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; \
             connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
            hash("script"),
            hash("style"),
        )
    })
}

/// The overview a node built last, and when that build ended.
#[derive(Debug, Default)]
pub struct Overviews {
    last: tokio::sync::Mutex<Option<(Instant, Arc<Json>)>>,
}

impl Overviews {
    /// The overview as `node` sees it: one whose build ended after this call began (so built,
    /// at least in part, while it waited), else one built now. One build at a time: callers
    /// that come during a build wait for it and share it.
    pub async fn get(&self, node: &Node) -> Arc<Json> {
        let asked = Instant::now();
        let mut last = self.last.lock().await;
        if let Some((ended, seen)) = &*last {
            if *ended >= asked {
                return seen.clone();
            }
        }
        let seen = Arc::new(overview(node).await);
        *last = Some((Instant::now(), seen.clone()));
        seen
    }
}

/// How long the overview waits for one node's figures.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// The longest error message from a peer the overview repeats; a peer's answer is not trusted
/// to be short.
const MAX_ERROR_CHARS: usize = 200;

/// What a node reports of itself: its store's size and its request counters.
#[derive(Debug)]
pub struct Figures {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    under_replicated: Arc<AtomicU64>,
    readiness: Arc<Readiness>,
    topology: Arc<Topology>,
    incarnation: Arc<Incarnation>,
    started: Instant,
}

impl Figures {
    /// The figures of the node these parts make up, started at `started`.
    pub fn new(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        under_replicated: Arc<AtomicU64>,
        readiness: Arc<Readiness>,
        topology: Arc<Topology>,
        incarnation: Arc<Incarnation>,
        started: Instant,
    ) -> Self {
        Figures {
            store,
            metrics,
            under_replicated,
            readiness,
            topology,
            incarnation,
            started,
        }
    }

    /// The figures as they stand.
    pub fn report(&self) -> NodeStatus {
        let stats = self.store.stats();
        // Clients' keys only: the cluster's own record of its map is not one of them.
        let own = u64::from(self.store.get(MAP_KEY).is_some());
        let m = self.metrics.snapshot();
        NodeStatus {
            node: self.topology.me(),
            incarnation: self.incarnation.get(),
            epoch: self.topology.epoch(),
            ready: self.readiness.is_ready(),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            keys: stats.keys.saturating_sub(own),
            bytes: stats.bytes,
            max_memory: stats.max_memory,
            under_replicated: self.under_replicated.load(Ordering::Relaxed),
            requests: RequestCounts {
                reads: m.gets,
                writes: m.writes,
                batches: m.batches,
                scans: m.scans,
                peer: m.peer,
                client_errors: m.client_errors,
                server_errors: m.server_errors,
            },
        }
    }
}

/// Checks a peer's report before the overview repeats it: it must be the figures of the node
/// asked. Every field is a fixed-size number, so nothing else can be out of bounds.
pub fn check_report(asked: NodeId, report: &NodeStatus) -> Result<(), String> {
    if report.node != asked {
        return Err(format!(
            "node {asked} answered with the figures of node {}",
            report.node
        ));
    }
    Ok(())
}

/// One node in the overview.
#[derive(Debug, Serialize)]
pub struct NodeOverview {
    /// The node's id.
    pub id: NodeId,
    /// Its address, as the cluster map has it.
    pub addr: String,
    /// Its state as the serving node sees it: `up`, `down`, `recovering`, `joining`, `leaving`
    /// or `removed`.
    pub state: &'static str,
    /// Whether it is the node that built the overview.
    pub serving: bool,
    /// Its own figures; `None` when it could not be asked.
    pub figures: Option<NodeFigures>,
    /// Why its figures are missing.
    pub error: Option<String>,
}

/// A node's figures in the overview's JSON.
#[derive(Debug, Serialize)]
pub struct NodeFigures {
    /// Clients' keys it holds replicas of.
    pub keys: u64,
    /// Bytes charged against its memory budget.
    pub bytes: u64,
    /// Its memory budget; `None`: none.
    pub max_memory: Option<u64>,
    /// Keys it is primary for that lacked a copy at its last anti-entropy pass.
    pub under_replicated: u64,
    /// Client operations it served since it started (reads and writes of keys, each item of
    /// a batch counting once, and scan pages): the page divides the growth between two polls
    /// by the time between them.
    pub operations_total: u64,
    /// Its counters one by one.
    pub requests: RequestCounts,
    /// Whether it has caught up and votes.
    pub ready: bool,
    /// Its map's epoch.
    pub epoch: u64,
    /// Its incarnation: a change means it restarted (and its counters started again).
    pub incarnation: u64,
    /// Milliseconds since it started.
    pub uptime_ms: u64,
}

impl From<NodeStatus> for NodeFigures {
    fn from(s: NodeStatus) -> Self {
        NodeFigures {
            keys: s.keys,
            bytes: s.bytes,
            max_memory: s.max_memory,
            under_replicated: s.under_replicated,
            operations_total: s.requests.operations(),
            requests: s.requests,
            ready: s.ready,
            epoch: s.epoch,
            incarnation: s.incarnation,
            uptime_ms: s.uptime_ms,
        }
    }
}

/// Asks `info` for its figures, within [`ASK_TIMEOUT`].
async fn ask(node: &Node, info: &NodeInfo) -> Result<NodeStatus, String> {
    let report = match tokio::time::timeout(ASK_TIMEOUT, node.fetch_status(info)).await {
        Ok(Ok(report)) => report,
        Ok(Err(CallError::Remote(e))) => return Err(truncate(format!("it answered: {e}"))),
        Ok(Err(e)) => return Err(truncate(e.to_string())),
        Err(_) => return Err(format!("no answer within {ASK_TIMEOUT:?}")),
    };
    check_report(info.id, &report)?;
    Ok(report)
}

fn truncate(mut s: String) -> String {
    if let Some((at, _)) = s.char_indices().nth(MAX_ERROR_CHARS) {
        s.truncate(at);
        s.push('…');
    }
    s
}

/// The cluster overview as `node` sees it: every node of its map (members and departing ones)
/// with its state and own figures, the nodes whose figures are missing, and the cluster-wide
/// figures of `GET /cluster`. Takes at most about [`ASK_TIMEOUT`], however many nodes are down.
pub async fn overview(node: &Node) -> Json {
    let map = node.map();
    let record = node.membership();
    let infos: Vec<&NodeInfo> = map.nodes().iter().chain(map.departing()).collect();
    let answers = futures_util::future::join_all(infos.iter().map(|info| async move {
        if info.id == node.id() {
            Ok(node.status())
        } else {
            ask(node, info).await
        }
    }))
    .await;
    let mut unavailable = Vec::new();
    let nodes: Vec<NodeOverview> = infos
        .iter()
        .zip(answers)
        .map(|(info, answer)| {
            let (figures, error) = match answer {
                Ok(report) => (Some(NodeFigures::from(report)), None),
                Err(e) => {
                    unavailable.push(info.id);
                    (None, Some(e))
                }
            };
            NodeOverview {
                id: info.id,
                addr: info.addr.clone(),
                state: node.node_state(&record, info.id),
                serving: info.id == node.id(),
                figures,
                error,
            }
        })
        .collect();
    json!({
        "node": node.id(),
        "epoch": map.epoch(),
        "version": record.version,
        "partitioner": map.partitioner().name(),
        "replication_factor": node.replication_factor(),
        "under_replicated": nodes
            .iter()
            .filter_map(|n| n.figures.as_ref())
            .map(|f| f.under_replicated)
            .fold(0, u64::saturating_add),
        "nodes": nodes,
        "unavailable": unavailable,
        "removed": record.removed,
        "rebalance": rebalance(node, &map, &record),
    })
}

/// The running (or last) membership change under `map` and `record`, as `/cluster` and the
/// overview show it: its state, the members it moves keys from, the nodes still copying, the
/// keys moved so far, this node's keys left to copy, and whether it was forced.
pub fn rebalance(node: &Node, map: &ClusterMap, record: &Membership) -> Json {
    json!({
        "state": if map.is_changing() { "running" } else { "idle" },
        "from": map.previous_members(),
        "copying": record.copying,
        "moved_keys": record.moved_keys,
        "remaining_keys": node.rebalance_progress().remaining_keys,
        "forced": record.forced,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(node: u32) -> NodeStatus {
        NodeStatus {
            node: NodeId(node),
            incarnation: 1,
            epoch: 1,
            ready: true,
            uptime_ms: 5,
            keys: 3,
            bytes: 100,
            max_memory: None,
            under_replicated: 0,
            requests: RequestCounts::default(),
        }
    }

    #[test]
    fn a_report_must_be_of_the_node_asked() {
        assert_eq!(check_report(NodeId(2), &report(2)), Ok(()));
        let e = check_report(NodeId(2), &report(1)).unwrap_err();
        assert_eq!(e, "node 2 answered with the figures of node 1");
    }

    #[test]
    fn long_peer_errors_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_ERROR_CHARS * 3);
        let cut = truncate(long);
        assert_eq!(cut.chars().count(), MAX_ERROR_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(truncate("short".into()), "short");
    }

    #[test]
    fn the_total_counts_client_operations_only() {
        let counts = RequestCounts {
            reads: 1,
            writes: 2,
            batches: 3,
            scans: 4,
            peer: 100,
            client_errors: 7,
            server_errors: 9,
        };
        let figures = NodeFigures::from(NodeStatus {
            requests: counts,
            ..report(0)
        });
        // The batches' items are among the reads and writes already.
        assert_eq!(figures.operations_total, 7);
    }
}
