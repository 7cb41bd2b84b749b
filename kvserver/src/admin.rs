//! A client of a node's administrative endpoints: `POST /cluster/join`, `POST /cluster/remove`
//! and `GET /cluster`. What `kvserver node --join` and `kvserver admin` use.
//!
//! Plain HTTP only: a node serving TLS cannot be asked through it yet. It sends through the
//! same pooled transport as [`Client`](crate::Client) and fails with the same
//! [`ClientError`]: the transport's failures ([`ClientError::Unreachable`], and
//! [`ClientError::OutcomeUnknown`] for a join or removal that got no answer) stay apart from
//! the node's answers ([`ClientError::Api`]). Unlike [`Client`](crate::Client) it asks one
//! node and does not retry: joins and removals are safe to repeat (the record already saying
//! what a change asks is a success), so the caller decides when and where to ask again.

use std::fmt::{self, Write as _};
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION};
use hyper::Method;
use kvcore::NodeId;
use kvnet::Secret;
use serde::Deserialize;
use serde_json::Value as Json;

use crate::client::{ClientError, Failure, Http};
use crate::membership::Membership;

/// How long one call may take by default. A join or removal waits for the cluster to record
/// the change, which a node retries for up to 30 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(40);

/// What `POST /cluster/join` answers.
#[derive(Debug, Clone, Deserialize)]
pub struct Joined {
    /// The id the joining node got.
    pub node: NodeId,
    /// The epoch of the map the change runs under.
    pub epoch: u64,
    /// Whether the address was new to the cluster (`false`: a node at that address was
    /// already a member, and keeps its id).
    pub fresh: bool,
    /// The cluster's membership record after the change: what the joining node starts from.
    pub record: Membership,
}

/// Where a removed node stands right after `POST /cluster/remove`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Removal {
    /// Its keys are being moved to the other members.
    Leaving,
    /// It is out of the cluster.
    Removed,
}

/// What `POST /cluster/remove` answers.
#[derive(Debug, Clone, Deserialize)]
pub struct Removed {
    /// The node removed.
    pub node: NodeId,
    /// The epoch of the map the change runs under.
    pub epoch: u64,
    /// Where the node stands.
    pub state: Removal,
}

/// One node as `GET /cluster` shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct NodeStatus {
    /// Its id.
    pub id: NodeId,
    /// Where peers and clients reach it.
    pub addr: String,
    /// `up`, `down`, `recovering`, `joining`, `leaving` or `removed`, as the node asked sees it.
    pub state: String,
}

/// The membership change part of `GET /cluster`.
#[derive(Debug, Clone, Deserialize)]
pub struct RebalanceStatus {
    /// `idle` or `running`.
    pub state: String,
    /// While a change runs: the members keys were placed on before it.
    #[serde(default)]
    pub from: Option<Vec<NodeId>>,
    /// Members that have not yet copied the keys the change moves to them.
    #[serde(default)]
    pub copying: Vec<NodeId>,
    /// Keys copied by the running change, or by the last one.
    #[serde(default)]
    pub moved_keys: u64,
    /// Keys the node asked holds that the change has yet to copy (an estimate).
    #[serde(default)]
    pub remaining_keys: u64,
    /// Whether the running change was forced.
    #[serde(default)]
    pub forced: bool,
}

impl RebalanceStatus {
    /// Whether a membership change runs.
    pub fn is_running(&self) -> bool {
        self.state == "running"
    }
}

/// What `GET /cluster` answers: the membership as one node sees it.
#[derive(Debug, Clone, Deserialize)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node: NodeId,
    /// The epoch of its cluster map.
    pub epoch: u64,
    /// The version of its membership record.
    #[serde(default)]
    pub version: u64,
    /// How keys are placed.
    pub partitioner: String,
    /// Copies kept of each key.
    pub replication_factor: usize,
    /// Keys the node is primary for that lacked a copy at its last anti-entropy pass.
    #[serde(default)]
    pub under_replicated: u64,
    /// Every member, and the nodes leaving.
    pub nodes: Vec<NodeStatus>,
    /// Nodes removed for good.
    #[serde(default)]
    pub removed: Vec<NodeId>,
    /// The membership change, if one runs.
    pub rebalance: RebalanceStatus,
}

impl ClusterStatus {
    /// The status as a table a person reads: a summary line, one row per node, the removed
    /// nodes and the state of membership changes.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "epoch {} (record version {}), partitioner {}, {} copies per key, as node {} sees it",
            self.epoch, self.version, self.partitioner, self.replication_factor, self.node
        );
        let id_width = self
            .nodes
            .iter()
            .map(|n| n.id.to_string().len())
            .chain(["ID".len()])
            .max()
            .unwrap_or_default();
        let addr_width = self
            .nodes
            .iter()
            .map(|n| n.addr.len())
            .chain(["ADDRESS".len()])
            .max()
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<id_width$}  {:<addr_width$}  STATE",
            "ID", "ADDRESS"
        );
        for n in &self.nodes {
            let _ = writeln!(
                out,
                "{:<id_width$}  {:<addr_width$}  {}",
                n.id.to_string(),
                n.addr,
                n.state
            );
        }
        if !self.removed.is_empty() {
            let _ = writeln!(out, "removed: {}", ids(&self.removed));
        }
        if self.under_replicated > 0 {
            let _ = writeln!(
                out,
                "under-replicated keys (primary here): {}",
                self.under_replicated
            );
        }
        let r = &self.rebalance;
        if r.is_running() {
            let copying = if r.copying.is_empty() {
                "none (finishing)".to_owned()
            } else {
                ids(&r.copying)
            };
            let _ = writeln!(
                out,
                "rebalance: running{}, copying to {copying}; {} keys moved, {} remaining",
                if r.forced { " (forced)" } else { "" },
                r.moved_keys,
                r.remaining_keys
            );
        } else {
            let _ = writeln!(out, "rebalance: idle");
        }
        out
    }
}

fn ids(ids: &[NodeId]) -> String {
    let names: Vec<String> = ids.iter().map(NodeId::to_string).collect();
    names.join(", ")
}

/// A client of one node's administrative endpoints, over plain HTTP.
#[derive(Clone)]
pub struct AdminClient {
    http: Http,
    node: String,
    token: Option<String>,
    timeout: Duration,
}

impl fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminClient")
            .field("node", &self.node)
            .field("authenticated", &self.token.is_some())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Whether a call changes the cluster, which decides what a missing answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Change,
}

impl AdminClient {
    /// A client of the node at `node` (`host:port`). With a cluster secret, requests carry
    /// `Authorization: Bearer` and its first secret, the one every node accepts while the
    /// secret is being changed.
    pub fn new(node: impl Into<String>, secret: Option<&Secret>) -> Self {
        let token = secret.and_then(|s| {
            s.to_text()
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(str::to_owned)
        });
        AdminClient {
            http: Http::new(Duration::from_secs(2), 1),
            node: node.into(),
            token,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client, giving each call at most `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The node this client asks.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Asks the node to add a node listening on `addr` (`host:port`, as its peers reach it).
    pub async fn join(&self, addr: &str) -> Result<Joined, ClientError> {
        let body = serde_json::json!({ "addr": addr });
        self.call(Kind::Change, Method::POST, "/cluster/join", Some(body))
            .await
    }

    /// Asks the node to remove node `id`; `force` removes it even if some keys could lose
    /// acknowledged writes.
    pub async fn remove(&self, id: NodeId, force: bool) -> Result<Removed, ClientError> {
        let body = serde_json::json!({ "node": id, "force": force });
        self.call(Kind::Change, Method::POST, "/cluster/remove", Some(body))
            .await
    }

    /// The membership as the node sees it, as it answered.
    pub async fn status_json(&self) -> Result<Json, ClientError> {
        self.call(Kind::Read, Method::GET, "/cluster", None).await
    }

    /// The membership as the node sees it.
    pub async fn status(&self) -> Result<ClusterStatus, ClientError> {
        self.call(Kind::Read, Method::GET, "/cluster", None).await
    }

    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        kind: Kind,
        method: Method,
        path: &str,
        body: Option<Json>,
    ) -> Result<T, ClientError> {
        let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
        if let Some(token) = &self.token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ClientError::config("the cluster secret is not a valid header"))?;
            headers.push((AUTHORIZATION, value));
        }
        let body = body.map(|b| Bytes::from(b.to_string()));
        let sent = self
            .http
            .exchange(&self.node, method, path, body, &headers, self.timeout)
            .await;
        let answer = match sent {
            Ok(answer) => answer,
            Err(Failure::NoAnswer(reason)) if kind == Kind::Change => {
                return Err(ClientError::OutcomeUnknown {
                    node: self.node.clone(),
                    code: None,
                    reason,
                })
            }
            Err(Failure::NotSent(reason) | Failure::NoAnswer(reason)) => {
                return Err(ClientError::Unreachable {
                    node: self.node.clone(),
                    attempts: 1,
                    reason,
                })
            }
        };
        let status = answer.status;
        let bad = |reason: String| ClientError::BadAnswer {
            node: self.node.clone(),
            status,
            reason,
        };
        if !(200..300).contains(&status) {
            let detail = answer
                .error_detail()
                .ok_or_else(|| bad(answer.body_text()))?;
            if status == 504 && kind == Kind::Change {
                return Err(ClientError::OutcomeUnknown {
                    node: self.node.clone(),
                    code: Some(detail.code),
                    reason: detail.message,
                });
            }
            return Err(ClientError::Api {
                status,
                code: detail.code,
                message: detail.message,
            });
        }
        serde_json::from_slice(&answer.body).map_err(|e| bad(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(rebalance: &str) -> ClusterStatus {
        let json = format!(
            r#"{{"node": 0, "epoch": 3, "version": 9, "partitioner": "slots",
               "replication_factor": 3, "under_replicated": 0,
               "nodes": [{{"id": 0, "addr": "127.0.0.1:5100", "state": "up"}},
                         {{"id": 12, "addr": "db-3.example:5100", "state": "joining"}}],
               "removed": [1], "rebalance": {rebalance}}}"#
        );
        serde_json::from_str(&json).unwrap()
    }

    #[test]
    fn the_status_table_has_a_row_per_node_and_a_rebalance_line() {
        let idle = status(
            r#"{"state": "idle", "from": null, "copying": [], "moved_keys": 7,
                "remaining_keys": 0, "forced": false}"#,
        );
        let table = idle.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "epoch 3 (record version 9), partitioner slots, 3 copies per key, as node 0 sees it"
        );
        assert_eq!(lines[1], "ID  ADDRESS            STATE");
        assert_eq!(lines[2], "0   127.0.0.1:5100     up");
        assert_eq!(lines[3], "12  db-3.example:5100  joining");
        assert_eq!(lines[4], "removed: 1");
        assert_eq!(lines[5], "rebalance: idle");
        let running = status(
            r#"{"state": "running", "from": [0, 1], "copying": [0, 12], "moved_keys": 40,
                "remaining_keys": 25, "forced": true}"#,
        );
        assert!(running.table().ends_with(
            "rebalance: running (forced), copying to 0, 12; 40 keys moved, 25 remaining\n"
        ));
    }

    #[test]
    fn the_token_is_the_first_secret_and_never_printed() {
        let secret =
            Secret::from_text("first-secret-0123456789\nsecond-secret-0123456789\n").unwrap();
        let client = AdminClient::new("127.0.0.1:1", Some(&secret));
        assert_eq!(client.token.as_deref(), Some("first-secret-0123456789"));
        let debug = format!("{client:?}");
        assert!(!debug.contains("first-secret"), "{debug}");
        assert!(AdminClient::new("127.0.0.1:1", None).token.is_none());
    }
}
