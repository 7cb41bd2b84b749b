//! [`Client`]: a typed, async client of the nodes' HTTP/JSON API, with pooled connections and
//! failover between nodes.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//!
//! use futures_util::TryStreamExt;
//! use kvcore::{ErrorCode, Value};
//! use kvserver::{Client, LocalCluster, SetOptions};
//!
//! let cluster = LocalCluster::builder().nodes(3).start().await?;
//! // Any node is an entry point; the client moves on to the next one when a node is down.
//! let client = Client::new(cluster.addrs())?;
//!
//! let written = client.set("visits", 41).await?;
//! assert_eq!(written.value, Value::integer(41));
//! let counted = client.incr("visits", 1).await?;
//! assert_eq!(counted.value.as_i64(), Some(42));
//!
//! // A conditional write that does not hold is an expected outcome, with the current entry.
//! let stale = SetOptions::new().if_version(written.version);
//! let conflict = client.set_with("visits", 0, stale).await?.unwrap_err();
//! assert_eq!(conflict.code, ErrorCode::VersionMismatch);
//! assert_eq!(conflict.current.map(|e| e.version), Some(counted.version));
//!
//! assert_eq!(client.get("visits").await?.map(|e| e.value), Some(Value::integer(42)));
//! assert!(client.delete("visits").await?.is_some());
//! assert_eq!(client.get("visits").await?, None);
//!
//! // A node's refusal keeps its stable code.
//! client.set("name", "Ada").await?;
//! let refused = client.incr("name", 1).await.unwrap_err();
//! assert_eq!(refused.code(), Some(ErrorCode::NotAnInteger));
//!
//! // Idle pooled connections would hold the nodes' graceful shutdown open.
//! drop(client);
//! cluster.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Retries and failover
//! The client is given one or more nodes, its seeds. By default it also learns the cluster's
//! other members: once a node has answered a call (with a status below 500), it asks that node
//! for `GET /cluster` in the background and adds every member that is not removed to the nodes
//! it knows, after the seeds, which it always keeps. It asks again after the first answer that
//! follows a round in which every known node failed, so a member list that has changed is
//! learned anew. A client given one node thus keeps working when that node goes down, once it
//! has talked to the cluster. Discovery never fails or delays a call: a node that does not
//! answer `GET /cluster` as a kv node does leaves the list as it was (and is asked again after
//! the next call it serves). Turn it off with [`ClientBuilder::discover`] to use only the
//! nodes given (behind a proxy or a load balancer, say, where the members' own addresses cannot
//! be reached).
//!
//! Each call goes to the node that answered last (the first one at the start); when it cannot
//! be used the call moves on to the next node, trying every node once without waiting, then
//! again with exponential backoff, for at most [`max_attempts`](ClientBuilder::max_attempts)
//! requests in all. Whether a call moves on depends on what it does, because a write that
//! reached a node may have been applied:
//!
//! | what happened | a read | a write |
//! |---|---|---|
//! | no connection could be made (refused, connect timeout) | next node | next node: the request certainly was not received |
//! | 503 (`quorum_unavailable`, `recovering`, `node_removed`, ...) | next node | next node: the API guarantees nothing was applied |
//! | sent, then no answer (connection broken, deadline passed) | next node | **never retried**: [`ClientError::OutcomeUnknown`] |
//! | 504 (`outcome_unknown`, `owner_timeout`) | **never retried**: [`ClientError::Api`] | **never retried**: [`ClientError::OutcomeUnknown`] |
//! | any other answer | returned | returned |
//!
//! Reads are `get`, `mget`, `keys_page`, `scan` (and `scan_with_limit`), `health`, `cluster` and
//! `stats`; every other call is a write (`incr` and `delete` included: neither may be applied
//! twice). When every attempt fails, the call returns the last 503 as [`ClientError::Api`], or
//! [`ClientError::Unreachable`] when no node answered. Only
//! [`ClientError::may_have_applied`] errors leave a write's outcome open; read the key to
//! learn it.
//!
//! Plain HTTP only: a cluster serving TLS cannot be used through this client yet.

mod error;
mod transport;
mod wire;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, Stream, TryStreamExt};
use hyper::Method;
use kvcore::{ErrorCode, Value};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use rand::Rng;
use serde::de::DeserializeOwned;
use serde_json::Value as Json;

pub use error::ClientError;
pub(crate) use transport::{Answer, Failure, Http};
pub use wire::{
    human_duration, Conflict, Deleted, Entry, Health, KeyError, KeysPage, SetItem, SetOptions,
};
use wire::{
    ClusterMembers, IncrBody, MgetAnswer, MgetBody, MsetAnswer, MsetBody, MsetEntry, PutBody, Slot,
};

/// Shorthand for the results of [`Client`]'s calls.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// The default deadline of one request, answer included. Above a node's own deadline for an
/// operation (5 s by default), so a slow operation is answered by the node (503 or 504)
/// rather than cut short here.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The default deadline for connecting to a node.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Everything but the unreserved characters is escaped, in paths and queries alike: a key may
/// hold `/`, `?`, `#`, `%` or spaces.
const ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Whether a call changes anything, which decides what it may be retried after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
}

/// Configures a [`Client`]: the nodes, deadlines and retries.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    nodes: Vec<String>,
    timeout: Duration,
    connect_timeout: Duration,
    max_attempts: Option<u32>,
    backoff: Duration,
    max_backoff: Duration,
    max_idle_per_node: usize,
    discover: bool,
}

impl ClientBuilder {
    /// Each request's deadline, from sending it to reading the whole answer (default
    /// [`DEFAULT_TIMEOUT`]). A write past it is [`ClientError::OutcomeUnknown`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long connecting to a node may take (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Requests one call may send in all, over every node (at least 1; 1 turns retries
    /// off). By default, two more than the number of nodes known when the call is made (the
    /// ones given and the ones learned): each node once, then twice more after backing off.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts.max(1));
        self
    }

    /// The wait before the first retry after every node was tried, doubled for each later
    /// one up to `max` (defaults 50 ms and 1 s). Each wait is shortened by up to a half at
    /// random, so clients that failed together do not retry together.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// Idle connections kept open to each node (default 32): about the number of calls a
    /// program has in flight at once.
    pub fn max_idle_per_node(mut self, connections: usize) -> Self {
        self.max_idle_per_node = connections;
        self
    }

    /// Whether to learn the cluster's other members from `GET /cluster` and fail over to them
    /// too (default `true`); see [Retries and failover](self#retries-and-failover). With
    /// `false`, calls go to the nodes given only.
    pub fn discover(mut self, discover: bool) -> Self {
        self.discover = discover;
        self
    }

    /// The client. Fails without a node, or with one that is not `host:port` (an
    /// `http://` prefix is accepted and dropped).
    pub fn build(self) -> Result<Client> {
        if self.nodes.is_empty() {
            return Err(ClientError::config("a client needs at least one node"));
        }
        let nodes = self
            .nodes
            .iter()
            .map(|n| node_address(n))
            .collect::<Result<Vec<_>>>()?;
        let mut seeds: Vec<String> = Vec::with_capacity(nodes.len());
        for node in nodes {
            if !seeds.contains(&node) {
                seeds.push(node);
            }
        }
        Ok(Client {
            inner: Arc::new(Inner {
                http: Http::new(self.connect_timeout, self.max_idle_per_node),
                nodes: RwLock::new(Arc::new(seeds.clone())),
                seeds,
                preferred: AtomicUsize::new(0),
                discover: self.discover,
                discovery_due: AtomicBool::new(self.discover),
                timeout: self.timeout,
                max_attempts: self.max_attempts,
                backoff: self.backoff,
                max_backoff: self.max_backoff,
            }),
        })
    }
}

/// `host:port` from what a user may give: `host:port`, or a URL `http://host:port/`.
fn node_address(given: &str) -> Result<String> {
    let trimmed = given.trim();
    if trimmed.starts_with("https://") {
        return Err(ClientError::config(format!(
            "{given:?}: the client speaks plain HTTP only"
        )));
    }
    let addr = trimmed
        .strip_prefix("http://")
        .unwrap_or(trimmed)
        .trim_end_matches('/');
    let authority = addr.parse::<hyper::http::uri::Authority>().ok();
    match authority {
        Some(a) if a.port_u16().is_some() && a.as_str() == addr && !a.host().is_empty() => {
            Ok(addr.to_owned())
        }
        _ => Err(ClientError::config(format!(
            "{given:?} is not a node address such as 127.0.0.1:5100"
        ))),
    }
}

/// A client of a kv cluster: cheap to clone (clones share the connection pool), safe to use
/// from many tasks at once. See the [module documentation](self) for what is retried.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// Asks `node` for the cluster's members (`GET /cluster`) and keeps every one that is not
/// removed, after the seeds. A failure leaves the nodes as they were and asks again after the
/// next call served: discovery only adds places to fail over to, and a call never fails
/// because of it.
async fn learn_members(inner: Arc<Inner>, node: String) {
    let members = async {
        let answer = inner
            .http
            .exchange(&node, Method::GET, "/cluster", None, &[], inner.timeout)
            .await
            .ok()?;
        if answer.status != 200 {
            return None;
        }
        serde_json::from_slice::<ClusterMembers>(&answer.body).ok()
    };
    match members.await {
        Some(members) => {
            let learned = members
                .serving()
                .filter_map(|addr| node_address(addr).ok())
                .collect::<Vec<_>>();
            inner.set_members(learned);
        }
        None => inner.discovery_due.store(true, Ordering::Relaxed),
    }
}

struct Inner {
    http: Http,
    /// The nodes given, always kept first in `nodes`.
    seeds: Vec<String>,
    /// Every node a call may go to: the seeds, then the members learned. Replaced whole when
    /// members are learned; a call works on the list it started with (or found after a
    /// discovery during the call).
    nodes: RwLock<Arc<Vec<String>>>,
    /// The index in `nodes` of the node the next call goes to first: the last one that
    /// answered.
    preferred: AtomicUsize,
    /// Whether members are learned at all.
    discover: bool,
    /// Whether the next node to answer should be asked for the members: at the start, and
    /// after a round in which every known node failed.
    discovery_due: AtomicBool,
    timeout: Duration,
    /// `None`: two more than the number of nodes known.
    max_attempts: Option<u32>,
    backoff: Duration,
    max_backoff: Duration,
}

impl Inner {
    fn nodes(&self) -> Arc<Vec<String>> {
        self.nodes
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn max_attempts(&self, known: usize) -> u32 {
        self.max_attempts
            .unwrap_or_else(|| u32::try_from(known).unwrap_or(u32::MAX).saturating_add(2))
    }

    /// Replaces the members after the seeds with `learned`, keeping the preferred node.
    fn set_members(&self, learned: impl IntoIterator<Item = String>) {
        let mut nodes = self.seeds.clone();
        for node in learned {
            if !nodes.contains(&node) {
                nodes.push(node);
            }
        }
        let mut current = self
            .nodes
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let preferred = current.get(self.preferred.load(Ordering::Relaxed) % current.len());
        let at = preferred
            .and_then(|p| nodes.iter().position(|n| n == p))
            .unwrap_or(0);
        self.preferred.store(at, Ordering::Relaxed);
        *current = Arc::new(nodes);
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("nodes", &self.inner.nodes())
            .field("discover", &self.inner.discover)
            .field("timeout", &self.inner.timeout)
            .field("max_attempts", &self.inner.max_attempts)
            .finish_non_exhaustive()
    }
}

/// An answer and the node that gave it.
struct Answered {
    node: String,
    answer: Answer,
}

impl Answered {
    fn status(&self) -> u16 {
        self.answer.status
    }

    fn bad(&self, reason: impl Into<String>) -> ClientError {
        ClientError::BadAnswer {
            node: self.node.clone(),
            status: self.answer.status,
            reason: reason.into(),
        }
    }

    /// The body of a success, as `T`.
    fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.answer.body)
            .map_err(|e| self.bad(format!("{e}: {}", self.answer.body_text())))
    }

    /// The error code of an error answer, if it has the API's error shape.
    fn code(&self) -> Option<ErrorCode> {
        self.answer.error_detail().map(|d| d.code)
    }

    /// The error this answer is, for a call of `kind`.
    fn into_error(self, kind: Kind) -> ClientError {
        let status = self.answer.status;
        match self.answer.error_detail() {
            Some(detail) if status == 504 && kind == Kind::Write => ClientError::OutcomeUnknown {
                node: self.node,
                code: Some(detail.code),
                reason: detail.message,
            },
            Some(detail) => ClientError::Api {
                status,
                code: detail.code,
                message: detail.message,
            },
            // A gateway's 504 (a proxy in front of the node gave up waiting): the write may
            // have reached the node all the same.
            None if status == 504 && kind == Kind::Write => ClientError::OutcomeUnknown {
                node: self.node,
                code: None,
                reason: format!("504 without a kv answer: {}", self.answer.body_text()),
            },
            None => self.bad(if (200..300).contains(&status) {
                format!("not the expected answer: {}", self.answer.body_text())
            } else {
                format!("not an error body: {}", self.answer.body_text())
            }),
        }
    }

    /// The body of a 200 as `T`, or the error any other status is.
    fn expect<T: DeserializeOwned>(self, kind: Kind) -> Result<T> {
        if self.status() == 200 {
            self.parse()
        } else {
            Err(self.into_error(kind))
        }
    }
}

impl Client {
    /// A client of these nodes (`host:port` each, e.g. `"127.0.0.1:5100"` or a
    /// `SocketAddr`), with the default settings.
    pub fn new<I>(nodes: I) -> Result<Client>
    where
        I: IntoIterator,
        I::Item: ToString,
    {
        Client::builder(nodes).build()
    }

    /// A builder for a client of these nodes.
    pub fn builder<I>(nodes: I) -> ClientBuilder
    where
        I: IntoIterator,
        I::Item: ToString,
    {
        ClientBuilder {
            nodes: nodes.into_iter().map(|n| n.to_string()).collect(),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_attempts: None,
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            max_idle_per_node: 32,
            discover: true,
        }
    }

    /// The nodes calls may go to, as `host:port`: the ones given, then the members learned
    /// from the cluster (see [Retries and failover](self#retries-and-failover)).
    pub fn nodes(&self) -> Vec<String> {
        self.inner.nodes().to_vec()
    }

    /// The key's entry; `None` if it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Entry>> {
        let answered = self
            .call(Kind::Read, Method::GET, &key_path(key, ""), None)
            .await?;
        match answered.status() {
            404 if answered.code() == Some(ErrorCode::NotFound) => Ok(None),
            _ => answered.expect(Kind::Read).map(Some),
        }
    }

    /// Writes `value` to `key` (its encoding is the value's) and returns the new entry.
    pub async fn set(&self, key: &str, value: impl Into<Value>) -> Result<Entry> {
        let written = self.set_with(key, value, SetOptions::new()).await?;
        // Without a precondition there is nothing to conflict with.
        written.map_err(|c| ClientError::Api {
            status: 409,
            code: c.code,
            message: c.message,
        })
    }

    /// Writes `value` to `key` as `options` say. A precondition that does not hold is
    /// `Ok(Err(conflict))`, with the key's current entry; nothing was written.
    pub async fn set_with(
        &self,
        key: &str,
        value: impl Into<Value>,
        options: SetOptions,
    ) -> Result<Result<Entry, Conflict>> {
        let value = value.into();
        let body = json_body(&PutBody::new(&value, &options))?;
        let answered = self
            .call(Kind::Write, Method::PUT, &key_path(key, ""), Some(body))
            .await?;
        if answered.status() == 409 {
            if let Some(conflict) = Conflict::from_answer(key, &answered.answer.body) {
                return Ok(Err(conflict));
            }
        }
        answered.expect(Kind::Write).map(Ok)
    }

    /// Deletes the key; returns what was deleted, or `None` if the key did not exist.
    pub async fn delete(&self, key: &str) -> Result<Option<Deleted>> {
        let answered = self
            .call(Kind::Write, Method::DELETE, &key_path(key, ""), None)
            .await?;
        match answered.status() {
            404 if answered.code() == Some(ErrorCode::NotFound) => Ok(None),
            _ => answered.expect(Kind::Write).map(Some),
        }
    }

    /// Adds `by` (which may be negative) to the integer at `key`, a missing key counting as
    /// 0, and returns the new entry. A key holding another encoding is refused
    /// (`not_an_integer`), and so is leaving the signed 64-bit range (`overflow`).
    pub async fn incr(&self, key: &str, by: i64) -> Result<Entry> {
        let body = json_body(&IncrBody { by })?;
        self.call(
            Kind::Write,
            Method::POST,
            &key_path(key, "/incr"),
            Some(body),
        )
        .await?
        .expect(Kind::Write)
    }

    /// Reads several keys in one request (`POST /mget`): one result per key, in order,
    /// `Ok(None)` for a missing key and `Err` for a key the node could not read.
    pub async fn mget<I>(&self, keys: I) -> Result<Vec<Result<Option<Entry>, KeyError>>>
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let keys: Vec<String> = keys.into_iter().map(Into::into).collect();
        let body = json_body(&MgetBody { keys: &keys })?;
        let answered = self
            .call(Kind::Read, Method::POST, "/mget", Some(body))
            .await?;
        let node = answered.node.clone();
        let answer: MgetAnswer = answered.expect(Kind::Read)?;
        check_count(&node, answer.entries.len(), keys.len())?;
        Ok(answer
            .entries
            .into_iter()
            .map(|slot| slot.map(Slot::into_result).transpose())
            .collect())
    }

    /// Writes several keys in one request (`POST /mset`): one result per item, in order. Each
    /// key is written on its own (the batch is not atomic); a key that failed says so in its
    /// [`KeyError`]. A batch over the node's limit is refused whole (`batch_too_large`).
    pub async fn mset<I>(&self, items: I) -> Result<Vec<Result<Entry, KeyError>>>
    where
        I: IntoIterator,
        I::Item: Into<SetItem>,
    {
        let items: Vec<SetItem> = items.into_iter().map(Into::into).collect();
        let body = json_body(&MsetBody {
            entries: items.iter().map(MsetEntry::from).collect(),
        })?;
        let answered = self
            .call(Kind::Write, Method::POST, "/mset", Some(body))
            .await?;
        let node = answered.node.clone();
        let answer: MsetAnswer = answered.expect(Kind::Write)?;
        check_count(&node, answer.results.len(), items.len())?;
        Ok(answer.results.into_iter().map(Slot::into_result).collect())
    }

    /// One page of the keys starting with `prefix` (`GET /keys`): at most `limit` keys (the
    /// node's default when `None`), from `cursor` (the start when `None`). A page that hands
    /// back the cursor it was given (which would have a caller page forever) is a
    /// [`BadAnswer`](ClientError::BadAnswer).
    pub async fn keys_page(
        &self,
        prefix: &str,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<KeysPage> {
        let mut query = Vec::new();
        if !prefix.is_empty() {
            query.push(format!("prefix={}", utf8_percent_encode(prefix, ESCAPED)));
        }
        if let Some(limit) = limit {
            query.push(format!("limit={limit}"));
        }
        if let Some(cursor) = cursor {
            query.push(format!("cursor={}", utf8_percent_encode(cursor, ESCAPED)));
        }
        let path = if query.is_empty() {
            "/keys".to_owned()
        } else {
            format!("/keys?{}", query.join("&"))
        };
        let answered = self.call(Kind::Read, Method::GET, &path, None).await?;
        let node = answered.node.clone();
        let page: KeysPage = answered.expect(Kind::Read)?;
        if page.cursor.is_some() && page.cursor.as_deref() == cursor {
            return Err(ClientError::BadAnswer {
                node,
                status: 200,
                reason: format!("GET /keys answered the cursor it was given ({cursor:?})"),
            });
        }
        Ok(page)
    }

    /// Every key starting with `prefix`, page after page (of the node's default size),
    /// following the node's cursor. The stream ends after the last page, or with the first
    /// error.
    ///
    /// ```no_run
    /// # async fn example(client: kvserver::Client) -> Result<(), kvserver::ClientError> {
    /// use futures_util::TryStreamExt;
    /// let users: Vec<String> = client.scan("user:").try_collect().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn scan(
        &self,
        prefix: impl Into<String>,
    ) -> impl Stream<Item = Result<String>> + Send + 'static {
        self.scan_pages(prefix.into(), None)
    }

    /// As [`scan`](Self::scan), asking for pages of up to `limit` keys: fewer requests for a
    /// long listing, or smaller answers. The node lowers a limit above its maximum (1000) to
    /// it, and refuses 0 (`invalid_request`, the stream's one item).
    ///
    /// ```no_run
    /// # async fn example(client: kvserver::Client) -> Result<(), kvserver::ClientError> {
    /// use futures_util::TryStreamExt;
    /// // Pinned to be polled in place, as any stream of async steps.
    /// let mut keys = std::pin::pin!(client.scan_with_limit("", 1000));
    /// while let Some(key) = keys.try_next().await? {
    ///     println!("{key}");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn scan_with_limit(
        &self,
        prefix: impl Into<String>,
        limit: usize,
    ) -> impl Stream<Item = Result<String>> + Send + 'static {
        self.scan_pages(prefix.into(), Some(limit))
    }

    fn scan_pages(
        &self,
        prefix: String,
        limit: Option<usize>,
    ) -> impl Stream<Item = Result<String>> + Send + 'static {
        /// Where the scan stands: the cursor of the next page (`None` for the first), or done.
        enum Next {
            Page(Option<String>),
            Done,
        }
        let start = (self.clone(), prefix, Next::Page(None));
        stream::try_unfold(start, move |(client, prefix, next)| async move {
            let Next::Page(cursor) = next else {
                return Ok(None);
            };
            let page = client.keys_page(&prefix, limit, cursor.as_deref()).await?;
            let next = match page.cursor {
                Some(c) => Next::Page(Some(c)),
                None => Next::Done,
            };
            let keys = stream::iter(page.keys.into_iter().map(Ok));
            Ok(Some((keys, (client, prefix, next))))
        })
        .try_flatten()
    }

    /// The health of the first node that answers `GET /health` with `ok`, or else of the
    /// last one asked (`recovering`, `seeding` or `removed`).
    pub async fn health(&self) -> Result<Health> {
        let answered = self.call(Kind::Read, Method::GET, "/health", None).await?;
        // A node that is not ok answers 503 with its state, not with an error body.
        if matches!(answered.status(), 200 | 503) {
            if let Ok(health) = answered.parse::<Health>() {
                return Ok(health);
            }
        }
        Err(answered.into_error(Kind::Read))
    }

    /// The membership as a node sees it (`GET /cluster`), as it answered.
    pub async fn cluster(&self) -> Result<Json> {
        self.call(Kind::Read, Method::GET, "/cluster", None)
            .await?
            .expect(Kind::Read)
    }

    /// A node's keys, bytes and request counters (`GET /stats`), as it answered.
    pub async fn stats(&self) -> Result<Json> {
        self.call(Kind::Read, Method::GET, "/stats", None)
            .await?
            .expect(Kind::Read)
    }

    /// Sends the request to the nodes in turn until one answers with something other than
    /// 503, as the [module documentation](self) says; returns that answer (or the last 503).
    async fn call(
        &self,
        kind: Kind,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Answered> {
        let inner = &*self.inner;
        let first = inner.preferred.load(Ordering::Relaxed);
        let mut last = None;
        let mut attempt: u32 = 0;
        loop {
            // Read each time: a discovery during this call may have added nodes.
            let nodes = inner.nodes();
            let n = nodes.len();
            if attempt >= inner.max_attempts(n) {
                break;
            }
            if attempt as usize >= n {
                tokio::time::sleep(self.backoff(attempt as usize - n)).await;
            }
            let i = (first + attempt as usize) % n;
            let node = &nodes[i];
            attempt += 1;
            let sent = inner
                .http
                .exchange(node, method.clone(), path, body.clone(), &[], inner.timeout)
                .await;
            let unreachable = |reason| ClientError::Unreachable {
                node: node.clone(),
                attempts: attempt,
                reason,
            };
            match sent {
                Ok(answer) => {
                    let answered = Answered {
                        node: node.clone(),
                        answer,
                    };
                    if answered.status() != 503 {
                        inner.preferred.store(i, Ordering::Relaxed);
                        // A node that served the call (not one failing with 5xx) is asked
                        // for the members, in the background: the answer is the caller's
                        // now, and must not wait for (or be lost with) another request.
                        if answered.status() < 500
                            && inner.discovery_due.swap(false, Ordering::Relaxed)
                        {
                            tokio::spawn(learn_members(self.inner.clone(), node.clone()));
                        }
                        return Ok(answered);
                    }
                    last = Some(Ok(answered));
                }
                Err(Failure::NotSent(reason)) => last = Some(Err(unreachable(reason))),
                Err(Failure::NoAnswer(reason)) => match kind {
                    Kind::Read => last = Some(Err(unreachable(reason))),
                    Kind::Write => {
                        return Err(ClientError::OutcomeUnknown {
                            node: node.clone(),
                            code: None,
                            reason,
                        })
                    }
                },
            }
            if attempt as usize == n && inner.discover {
                // Every known node failed: the members may have changed.
                inner.discovery_due.store(true, Ordering::Relaxed);
            }
        }
        last.expect("max_attempts is at least 1")
    }

    /// The wait before retry `k` (from 0) after every node was tried once.
    fn backoff(&self, k: usize) -> Duration {
        let inner = &*self.inner;
        let doubled = inner
            .backoff
            .saturating_mul(1u32 << k.min(16))
            .min(inner.max_backoff);
        doubled.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }
}

/// `/kv/{key}{suffix}` with the key percent-encoded: `/` in a key must not end the segment.
fn key_path(key: &str, suffix: &str) -> String {
    format!("/kv/{}{suffix}", utf8_percent_encode(key, ESCAPED))
}

fn json_body(body: &impl serde::Serialize) -> Result<Bytes> {
    serde_json::to_vec(body)
        .map(Bytes::from)
        .map_err(|e| ClientError::config(format!("the request cannot be encoded: {e}")))
}

fn check_count(node: &str, got: usize, sent: usize) -> Result<()> {
    if got == sent {
        Ok(())
    } else {
        Err(ClientError::BadAnswer {
            node: node.to_owned(),
            status: 200,
            reason: format!("{got} results for {sent} keys"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_are_host_and_port() {
        assert_eq!(node_address("127.0.0.1:5100").unwrap(), "127.0.0.1:5100");
        assert_eq!(
            node_address("http://db-1.internal:5100/").unwrap(),
            "db-1.internal:5100"
        );
        assert_eq!(node_address("[::1]:5100").unwrap(), "[::1]:5100");
        for bad in [
            "127.0.0.1",
            "",
            "a:b",
            "https://db:5100",
            "db:5100/x",
            ":5100",
        ] {
            let e = node_address(bad).unwrap_err();
            assert!(matches!(e, ClientError::Config { .. }), "{bad}: {e}");
        }
        assert!(Client::new(Vec::<String>::new()).is_err());
    }

    #[test]
    fn keys_are_escaped_so_that_any_key_is_one_path_segment() {
        assert_eq!(key_path("user:42", ""), "/kv/user%3A42");
        assert_eq!(key_path("a b/c", "/incr"), "/kv/a%20b%2Fc/incr");
        assert_eq!(key_path("x?y#z%", ""), "/kv/x%3Fy%23z%25");
        assert_eq!(key_path("é-._~", ""), "/kv/%C3%A9-._~");
    }

    #[test]
    fn learned_members_follow_the_seeds_and_the_preferred_node_stays_preferred() {
        let client = Client::new(["b:1", "a:1", "b:1"]).unwrap();
        assert_eq!(client.nodes(), ["b:1", "a:1"]);
        client.inner.preferred.store(1, Ordering::Relaxed);
        client
            .inner
            .set_members(["c:1", "a:1", "d:1"].map(String::from));
        assert_eq!(client.nodes(), ["b:1", "a:1", "c:1", "d:1"]);
        assert_eq!(client.inner.preferred.load(Ordering::Relaxed), 1);
        // Members that left are dropped; the seeds stay whatever the cluster says.
        client.inner.preferred.store(3, Ordering::Relaxed);
        client.inner.set_members(["c:1".to_owned()]);
        assert_eq!(client.nodes(), ["b:1", "a:1", "c:1"]);
        assert_eq!(client.inner.preferred.load(Ordering::Relaxed), 0);
        assert_eq!(client.inner.max_attempts(3), 5);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter() {
        let client = Client::builder(["127.0.0.1:1"])
            .backoff(Duration::from_millis(100), Duration::from_millis(300))
            .build()
            .unwrap();
        for (k, full) in [(0, 100), (1, 200), (2, 300), (40, 300)] {
            let wait = client.backoff(k);
            let full = Duration::from_millis(full);
            assert!(wait <= full && wait >= full / 2, "{k}: {wait:?}");
        }
        assert_eq!(client.inner.max_attempts(client.nodes().len()), 3);
    }
}
