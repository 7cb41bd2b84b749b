//! The HTTP/JSON API: routing, request parsing and response bodies.
//!
//! Every response body is JSON, errors included: `{"error": {"code": ..., "message": ...}}`;
//! but for `GET /metrics`, in the Prometheus text format, and the status page (`GET /`), in
//! HTML.

use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ALLOW, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_SECURITY_POLICY,
    CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS,
};
use hyper::{Method, Request, Response, StatusCode};
use kvcore::{Conflict, Encoding, Entry, ErrorCode, Precondition, Value, Version};
use kvnet::RPC_PATH;
use serde::Deserialize;
use serde_json::{json, Value as Json};
use tracing::Instrument;

use crate::batch::{self, MAX_BATCH};
use crate::error::Error;
use crate::exposition;
use crate::membership;
use crate::metrics::bump;
use crate::node::{BatchWrite, BatchWriteResult, Node, WriteOptions};
use crate::request_id::{self, ClientRequestId};
use crate::scan::{Cursor, ScanPage, DEFAULT_SCAN_LIMIT, MAX_SCAN_LIMIT};
use crate::status;
use crate::telemetry;
use crate::tls::PeerCertificate;

/// Largest client request body for values of at most `max_value_bytes`: room for any value the
/// store accepts however the client writes it. JSON may spell every byte of a string as a
/// six-byte `\u00XX` escape (base64 needs only 4/3), and the key likewise, plus 64 KiB for the
/// rest of the object. Whitespace a client pads its JSON with is not counted.
pub fn client_body_limit(max_value_bytes: usize) -> usize {
    max_value_bytes
        .saturating_add(kvcore::key::MAX_KEY_BYTES)
        .saturating_mul(6)
        .saturating_add(64 << 10)
}

/// How many single writes of the largest value a batch body has room for.
pub const BATCH_BODY_VALUES: usize = 8;

/// Largest body of a batch request (`/mget`, `/mset`) for values of at most `max_value_bytes`:
/// room for [`BATCH_BODY_VALUES`] single writes of the largest value (about 48 MiB at the
/// default 1 MiB), and at least for [`MAX_BATCH`] keys of the longest length, however escaped.
/// A full batch of small values fits; a batch of large values is split by the client.
pub fn batch_body_limit(max_value_bytes: usize) -> usize {
    let keys = MAX_BATCH
        .saturating_mul(6 * kvcore::key::MAX_KEY_BYTES + 64)
        .saturating_add(64 << 10);
    client_body_limit(max_value_bytes)
        .saturating_mul(BATCH_BODY_VALUES)
        .max(keys)
}

fn body_limit(node: &Node) -> usize {
    client_body_limit(node.config().max_value_bytes())
}

fn batch_limit(node: &Node) -> usize {
    batch_body_limit(node.config().max_value_bytes())
}

/// The response type of every handler.
pub type HttpResponse = Response<Full<Bytes>>;

/// Answers one HTTP request. Never panics on any input; every outcome is a JSON response (but
/// for the metrics text and the status page).
///
/// A client request is served under its request id (see [`request_id`]): within a span that
/// carries it, echoed in the response's `x-request-id`, and logged (at DEBUG level) with its
/// endpoint, status and duration once answered. Peer messages (on [`RPC_PATH`]) are counted
/// and logged by the peer service instead, under the ids they carry.
pub async fn handle(node: &Node, req: Request<Incoming>) -> HttpResponse {
    if req.uri().path() == RPC_PATH {
        return answer(node, req).await;
    }
    let started = Instant::now();
    let endpoint = telemetry::endpoint(req.uri().path());
    let method = req.method().clone();
    let (id, refused) = match ClientRequestId::from_header(req.headers().get(request_id::HEADER)) {
        Ok(id) => (id, None),
        Err(e) => (ClientRequestId::fresh(), Some(e)),
    };
    let span = tracing::info_span!("request", request_id = %id.id);
    let mut response = match refused {
        Some(e) => count_errors(node, error_response(&e)),
        None => {
            let serve = request_id::scope(id.id, answer(node, req));
            serve.instrument(span.clone()).await
        }
    };
    let elapsed = started.elapsed();
    node.telemetry()
        .client_request(endpoint, &method, response.status(), elapsed);
    span.in_scope(|| {
        tracing::debug!(
            method = %method,
            endpoint,
            status = response.status().as_u16(),
            duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            client_request_id = id.given.as_deref(),
            "request answered"
        );
    });
    response.headers_mut().insert(request_id::HEADER, id.echo);
    response
}

/// Routes a request and turns an error into its JSON response.
async fn answer(node: &Node, req: Request<Incoming>) -> HttpResponse {
    let response = match route(node, req).await {
        Ok(response) => response,
        Err(e) => error_response(&e),
    };
    count_errors(node, response)
}

fn count_errors(node: &Node, response: HttpResponse) -> HttpResponse {
    let metrics = node.metrics();
    if response.status().is_client_error() {
        bump(&metrics.client_errors);
    } else if response.status().is_server_error() {
        bump(&metrics.server_errors);
    }
    response
}

/// The OpenAPI 3.1 description of the client API, served at `GET /openapi.json`. A test checks
/// that its paths and methods are exactly [`Endpoint::ALL`]'s client endpoints, and that every
/// answer of every operation matches the schema it gives for that status.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// An endpoint of the HTTP API. The router finds a request's endpoint through
/// [`Endpoint::find`], so the paths and methods listed here are exactly the ones it serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /get/{key}`.
    Get,
    /// `POST /kv/{key}/incr`.
    Incr,
    /// `GET`, `PUT`, `DELETE /kv/{key}`.
    Kv,
    /// `POST`, `PUT /set`.
    Set,
    /// `POST /mget`.
    Mget,
    /// `POST /mset`.
    Mset,
    /// `GET /keys`.
    Keys,
    /// `GET /health`.
    Health,
    /// `GET /livez`.
    Livez,
    /// `GET /cluster`.
    Cluster,
    /// `POST /cluster/join`.
    ClusterJoin,
    /// `POST /cluster/remove`.
    ClusterRemove,
    /// `GET /stats`.
    Stats,
    /// `GET /openapi.json`.
    OpenApi,
    /// `GET /`: the status page.
    StatusPage,
    /// `GET /cluster/overview`: every node's state and figures, for the status page.
    Overview,
    /// `GET /metrics`: the Prometheus text format.
    Metrics,
    /// `POST /internal/v1/rpc`, the peer protocol: not for clients.
    Peer,
}

impl Endpoint {
    /// Every endpoint, in the order paths are matched: `/kv/{key}/incr` before `/kv/{key}`.
    pub const ALL: &'static [Endpoint] = &[
        // First: every message between nodes comes this way.
        Endpoint::Peer,
        Endpoint::Get,
        Endpoint::Incr,
        Endpoint::Kv,
        Endpoint::Set,
        Endpoint::Mget,
        Endpoint::Mset,
        Endpoint::Keys,
        Endpoint::Health,
        Endpoint::Livez,
        Endpoint::Cluster,
        Endpoint::ClusterJoin,
        Endpoint::ClusterRemove,
        Endpoint::Stats,
        Endpoint::OpenApi,
        Endpoint::StatusPage,
        Endpoint::Overview,
        Endpoint::Metrics,
    ];

    /// The path, as the OpenAPI description writes it: `{key}` stands for a percent-encoded key.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Get => "/get/{key}",
            Endpoint::Incr => "/kv/{key}/incr",
            Endpoint::Kv => "/kv/{key}",
            Endpoint::Set => "/set",
            Endpoint::Mget => "/mget",
            Endpoint::Mset => "/mset",
            Endpoint::Keys => "/keys",
            Endpoint::Health => "/health",
            Endpoint::Livez => "/livez",
            Endpoint::Cluster => "/cluster",
            Endpoint::ClusterJoin => "/cluster/join",
            Endpoint::ClusterRemove => "/cluster/remove",
            Endpoint::Stats => "/stats",
            Endpoint::OpenApi => "/openapi.json",
            Endpoint::StatusPage => "/",
            Endpoint::Overview => "/cluster/overview",
            Endpoint::Metrics => "/metrics",
            Endpoint::Peer => RPC_PATH,
        }
    }

    /// The name requests to the endpoint are counted under in `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Get => "get",
            Endpoint::Incr => "incr",
            Endpoint::Kv => "kv",
            Endpoint::Set => "set",
            Endpoint::Mget => "mget",
            Endpoint::Mset => "mset",
            Endpoint::Keys => "keys",
            Endpoint::Health => "health",
            Endpoint::Livez => "livez",
            Endpoint::Cluster => "cluster",
            Endpoint::ClusterJoin => "cluster_join",
            Endpoint::ClusterRemove => "cluster_remove",
            Endpoint::Stats => "stats",
            Endpoint::OpenApi => "openapi",
            Endpoint::StatusPage => "status_page",
            Endpoint::Overview => "cluster_overview",
            Endpoint::Metrics => "metrics",
            Endpoint::Peer => "peer",
        }
    }

    /// The methods the endpoint takes, as the `Allow` header of a 405 lists them.
    pub fn allow(self) -> &'static str {
        match self {
            Endpoint::Kv => "GET, PUT, DELETE",
            Endpoint::Set => "POST, PUT",
            Endpoint::Incr
            | Endpoint::Mget
            | Endpoint::Mset
            | Endpoint::ClusterJoin
            | Endpoint::ClusterRemove
            | Endpoint::Peer => "POST",
            Endpoint::Get
            | Endpoint::Keys
            | Endpoint::Health
            | Endpoint::Livez
            | Endpoint::Cluster
            | Endpoint::Stats
            | Endpoint::OpenApi
            | Endpoint::StatusPage
            | Endpoint::Overview
            | Endpoint::Metrics => "GET",
        }
    }

    /// Whether the endpoint takes `method`.
    pub fn takes(self, method: &Method) -> bool {
        self.allow().split(", ").any(|m| m == method.as_str())
    }

    /// Whether clients use it (everything but the peer protocol); the OpenAPI description
    /// covers exactly these.
    pub fn is_client(self) -> bool {
        self != Endpoint::Peer
    }

    /// The endpoint serving `path`, with the raw (still percent-encoded) key when its path has
    /// one. A path ending in `/incr` is always `/kv/{key}/incr`, whatever the method, so a key
    /// that ends in `/incr` is written `%2Fincr` in a `/kv/` path.
    pub fn find(path: &str) -> Option<(Endpoint, Option<&str>)> {
        Endpoint::ALL.iter().find_map(|&endpoint| {
            let template = endpoint.path();
            let Some((before, after)) = template.split_once("{key}") else {
                return (path == template).then_some((endpoint, None));
            };
            let key = path.strip_prefix(before)?.strip_suffix(after)?;
            Some((endpoint, Some(key)))
        })
    }
}

async fn route(node: &Node, req: Request<Incoming>) -> Result<HttpResponse, Error> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let Some((endpoint, raw_key)) = Endpoint::find(&path) else {
        return Err(match path.as_str() {
            "/get" | "/kv" => kvcore::Error::InvalidKey {
                reason: "key must not be empty".into(),
            }
            .into(),
            _ => Error::NoRoute { path },
        });
    };
    if !endpoint.takes(&method) {
        return Err(Error::MethodNotAllowed {
            method: method.to_string(),
            path,
            allowed: endpoint.allow(),
        });
    }
    let key = || decode_key(raw_key.unwrap_or_default());
    match (endpoint, method) {
        (Endpoint::Get, _) | (Endpoint::Kv, Method::GET) => get(node, &key()?).await,
        (Endpoint::Incr, _) => {
            let key = key()?;
            let body: IncrBody = read_json(node, req).await?;
            let entry = node.incr(&key, body.by).await?;
            Ok(entry_response(node, &key, &entry))
        }
        (Endpoint::Kv, Method::PUT) => {
            let key = key()?;
            let body: PutBody = read_json(node, req).await?;
            let options =
                write_options(body.if_version, body.if_absent, body.ttl_ms, body.keep_ttl)?;
            set(node, key, body.value, body.encoding, options).await
        }
        (Endpoint::Kv, Method::DELETE) => delete(node, &key()?).await,
        (Endpoint::Set, _) => {
            let body: SetBody = read_json(node, req).await?;
            let options =
                write_options(body.if_version, body.if_absent, body.ttl_ms, body.keep_ttl)?;
            set(node, body.key, body.value, body.encoding, options).await
        }
        (Endpoint::Mget, _) => mget(node, req).await,
        (Endpoint::Mset, _) => mset(node, req).await,
        (Endpoint::Keys, _) => keys(node, req.uri().query().unwrap_or("")).await,
        (Endpoint::Health, _) => Ok(health(node)),
        // Alive: the node serves requests. Unlike /health it never waits for catch-up, so a
        // liveness probe does not kill a node that is copying its keys.
        (Endpoint::Livez, _) => Ok(json_response(
            StatusCode::OK,
            &json!({"status": "alive", "node": node.id()}),
        )),
        (Endpoint::Cluster, _) => Ok(cluster(node)),
        (Endpoint::ClusterJoin, _) => {
            authorize_admin(node, &req)?;
            let body: JoinBody = read_json(node, req).await?;
            let port = body
                .addr
                .rsplit_once(':')
                .map(|(host, port)| (host, port.parse::<u16>()));
            if !matches!(port, Some((host, Ok(p))) if !host.is_empty() && p != 0) {
                return Err(Error::bad_request(
                    ErrorCode::InvalidRequest,
                    "addr must be the joining node's HOST:PORT as its peers reach it",
                ));
            }
            let (id, record, fresh) = node.join(&body.addr).await?;
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "node": id,
                    "epoch": record.map.epoch,
                    "fresh": fresh,
                    "record": record,
                }),
            ))
        }
        (Endpoint::ClusterRemove, _) => {
            authorize_admin(node, &req)?;
            let body: RemoveBody = read_json(node, req).await?;
            let record = node.remove(kvcore::NodeId(body.node), body.force).await?;
            let id = kvcore::NodeId(body.node);
            let state = membership::recorded_state(&record, id).unwrap_or("removed");
            Ok(json_response(
                StatusCode::OK,
                &json!({"node": id, "epoch": record.map.epoch, "state": state}),
            ))
        }
        (Endpoint::Stats, _) => Ok(stats(node)),
        (Endpoint::OpenApi, _) => {
            let mut response = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Ok(response)
        }
        (Endpoint::StatusPage, _) => Ok(html_response(status::PAGE)),
        (Endpoint::Overview, _) => Ok(json_response(StatusCode::OK, &*node.overview().await)),
        (Endpoint::Metrics, _) => Ok(metrics(node)),
        (Endpoint::Peer, _) => peer(node, req).await,
        (endpoint, method) => Err(Error::MethodNotAllowed {
            method: method.to_string(),
            path,
            allowed: endpoint.allow(),
        }),
    }
}

/// Integers in request bodies. JSON has one kind of number, so a number with a zero fraction
/// (`5.0`, `1e3`) is the integer it equals, as JSON Schema (and so the OpenAPI description) counts
/// it, below ±2^53; a fraction, or a number outside the field's range, is refused.
mod integer {
    use serde::de::{Error as _, Unexpected};
    use serde::{Deserialize, Deserializer};
    use serde_json::Number;

    fn exact<'de, D: Deserializer<'de>, T: TryFrom<i128>>(n: &Number) -> Result<T, D::Error> {
        let whole = match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Some(i128::from(u)),
            (_, Some(i), _) => Some(i128::from(i)),
            // As a value is read (`18446744073709551617` reads as 2^64: refused).
            (_, _, Some(f)) => kvcore::value::whole_number(f).map(i128::from),
            _ => None,
        };
        whole.and_then(|i| T::try_from(i).ok()).ok_or_else(|| {
            D::Error::invalid_value(
                Unexpected::Other(&format!("the number {n}")),
                &"a whole number in the field's range",
            )
        })
    }

    /// A required integer field.
    pub fn required<'de, D: Deserializer<'de>, T: TryFrom<i128>>(d: D) -> Result<T, D::Error> {
        exact::<D, T>(&Number::deserialize(d)?)
    }

    /// An optional integer field; `null` counts as absent.
    pub fn optional<'de, D: Deserializer<'de>, T: TryFrom<i128>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        Option::<Number>::deserialize(d)?
            .map(|n| exact::<D, T>(&n))
            .transpose()
    }
}

/// Body of `POST /set`, and each entry of `POST /mset`: the seed's `{"key", "value",
/// "encoding"}`, plus optional preconditions and TTL.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetBody {
    key: String,
    value: Json,
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default, deserialize_with = "integer::optional")]
    if_version: Option<u64>,
    #[serde(default)]
    if_absent: bool,
    #[serde(default, deserialize_with = "integer::optional")]
    ttl_ms: Option<u64>,
    #[serde(default)]
    keep_ttl: bool,
}

/// A write's precondition and time to live, from the fields every write body has.
fn write_options(
    if_version: Option<u64>,
    if_absent: bool,
    ttl_ms: Option<u64>,
    keep_ttl: bool,
) -> Result<WriteOptions, Error> {
    let options = WriteOptions {
        precondition: precondition(if_version, if_absent)?,
        ttl_ms,
        keep_ttl,
    };
    options.check()?;
    Ok(options)
}

/// Body of `POST /cluster/join`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinBody {
    addr: String,
}

/// Body of `POST /cluster/remove`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveBody {
    #[serde(deserialize_with = "integer::required")]
    node: u32,
    #[serde(default)]
    force: bool,
}

/// Checks an administrative request: with a cluster secret configured, it must carry
/// `Authorization: Bearer <secret>` (any of the secrets while they rotate). Without one (a
/// node serving loopback only) every request is let through, like the rest of the API.
fn authorize_admin(node: &Node, req: &Request<Incoming>) -> Result<(), Error> {
    let Some(secret) = &node.config().cluster_secret else {
        return Ok(());
    };
    let token = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match token {
        Some(token) if secret.accepts_token(token) => Ok(()),
        _ => Err(Error::bad_request(
            ErrorCode::Unauthenticated,
            "membership changes need `Authorization: Bearer <cluster secret>`",
        )),
    }
}

/// Body of `POST /kv/{key}/incr`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IncrBody {
    #[serde(default = "one", deserialize_with = "integer::required")]
    by: i64,
}

fn one() -> i64 {
    1
}

/// Body of `PUT /kv/{key}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    value: Json,
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default, deserialize_with = "integer::optional")]
    if_version: Option<u64>,
    #[serde(default)]
    if_absent: bool,
    #[serde(default, deserialize_with = "integer::optional")]
    ttl_ms: Option<u64>,
    #[serde(default)]
    keep_ttl: bool,
}

fn precondition(if_version: Option<u64>, if_absent: bool) -> Result<Precondition, Error> {
    match (if_version, if_absent) {
        (Some(_), true) => Err(Error::BadRequest {
            code: ErrorCode::InvalidRequest,
            message: "if_version and if_absent cannot be combined".into(),
        }),
        (Some(v), false) => Ok(Precondition::IfVersion(Version(v))),
        (None, true) => Ok(Precondition::IfAbsent),
        (None, false) => Ok(Precondition::None),
    }
}

async fn get(node: &Node, key: &str) -> Result<HttpResponse, Error> {
    match node.get(key).await? {
        Some(entry) => Ok(entry_response(node, key, &entry)),
        None => Err(Error::NotFound { key: key.into() }),
    }
}

async fn set(
    node: &Node,
    key: String,
    value: Json,
    encoding: Option<String>,
    options: WriteOptions,
) -> Result<HttpResponse, Error> {
    let encoding = match encoding {
        Some(name) => name.parse::<Encoding>()?,
        None => Encoding::default(),
    };
    kvcore::validate_key(&key)?;
    let value = Value::from_json(encoding, &value)?;
    match node.set_with(&key, value, options).await? {
        Ok(entry) => Ok(entry_response(node, &key, &entry)),
        Err(conflict) => {
            let now = node.clock().now_ms();
            let (code, message) = conflict_error(&key, options.precondition, &conflict);
            let current = conflict.current.as_ref().map(|e| entry_json(&key, e, now));
            let body = json!({
                "error": {"code": code, "message": message},
                "current": current,
            });
            Ok(json_response(StatusCode::CONFLICT, &body))
        }
    }
}

/// The code and message of a write that `precondition` refused.
fn conflict_error(
    key: &str,
    precondition: Precondition,
    conflict: &Conflict,
) -> (ErrorCode, String) {
    match precondition {
        Precondition::IfAbsent => (ErrorCode::KeyExists, format!("key {key:?} already exists")),
        _ => (
            ErrorCode::VersionMismatch,
            match &conflict.current {
                Some(e) => format!(
                    "key {key:?} is at version {}, not the expected one",
                    e.version
                ),
                None => format!("key {key:?} does not exist"),
            },
        ),
    }
}

/// Body of `POST /mget`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MgetBody {
    /// Strings; anything else is answered with an error in its place.
    keys: Vec<Json>,
}

/// Body of `POST /mset`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MsetBody {
    /// Objects shaped as the body of `POST /set` ([`SetBody`]); anything else is answered with an error in its place.
    entries: Vec<Json>,
}

/// One answer of a batch: an entry, `null` for a missing key, or the item's error.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum BatchItem<'a> {
    Entry(EntryBody<'a>),
    Missing,
    Failed(FailedItem<'a>),
}

/// A batch item that failed: its key as the request had it, and the error; for a write that
/// its condition refused, also the key's current entry (`null` if it has none).
#[derive(serde::Serialize)]
struct FailedItem<'a> {
    key: &'a Json,
    error: ErrorBody,
    #[serde(skip_serializing_if = "Option::is_none")]
    current: Option<Option<EntryBody<'a>>>,
}

#[derive(serde::Serialize)]
struct ErrorBody {
    code: ErrorCode,
    message: String,
}

impl<'a> BatchItem<'a> {
    fn failed(key: &'a Json, e: &Error) -> Self {
        BatchItem::Failed(FailedItem {
            key,
            error: ErrorBody {
                code: e.code(),
                message: e.to_string(),
            },
            current: None,
        })
    }
}

/// `POST /mget`: reads every key of the batch; see [`Node::mget`].
async fn mget(node: &Node, req: Request<Incoming>) -> Result<HttpResponse, Error> {
    let body: MgetBody = read_json_within(node, req, batch_limit(node)).await?;
    batch::check_size(body.keys.len())?;
    let not_a_string = Error::Core(kvcore::Error::InvalidKey {
        reason: "keys are JSON strings".into(),
    });
    let keys: Vec<String> = body
        .keys
        .iter()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect();
    let mut read = match keys.is_empty() {
        true => Vec::new(),
        false => node.mget(&keys).await?,
    }
    .into_iter();
    let now = node.clock().now_ms();
    let answers: Vec<Option<Result<Option<Entry>, Error>>> = body
        .keys
        .iter()
        .map(|k| k.as_str().and_then(|_| read.next()))
        .collect();
    let entries: Vec<BatchItem<'_>> = body
        .keys
        .iter()
        .zip(&answers)
        .map(|(key, answer)| match (key.as_str(), answer) {
            (Some(k), Some(Ok(Some(entry)))) => BatchItem::Entry(entry_json(k, entry, now)),
            (Some(_), Some(Ok(None))) => BatchItem::Missing,
            (Some(_), Some(Err(e))) => BatchItem::failed(key, e),
            _ => BatchItem::failed(key, &not_a_string),
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "entries": entries }),
    ))
}

/// Reads one `/mset` entry into a write, or the error that item is answered with.
fn batch_write(entry: &Json) -> Result<BatchWrite, Error> {
    let entry = SetBody::deserialize(entry).map_err(|e| {
        Error::bad_request(
            ErrorCode::InvalidRequest,
            format!("invalid batch entry: {e}"),
        )
    })?;
    let encoding = match entry.encoding {
        Some(name) => name.parse::<Encoding>()?,
        None => Encoding::default(),
    };
    let options = write_options(
        entry.if_version,
        entry.if_absent,
        entry.ttl_ms,
        entry.keep_ttl,
    )?;
    let value = Value::from_json(encoding, &entry.value)?;
    Ok(BatchWrite {
        key: entry.key,
        value,
        options,
    })
}

/// `POST /mset`: writes every entry of the batch; see [`Node::mset`].
async fn mset(node: &Node, req: Request<Incoming>) -> Result<HttpResponse, Error> {
    let body: MsetBody = read_json_within(node, req, batch_limit(node)).await?;
    batch::check_size(body.entries.len())?;
    let parsed: Vec<Result<BatchWrite, Error>> = body.entries.iter().map(batch_write).collect();
    let writes: Vec<BatchWrite> = parsed.iter().flatten().cloned().collect();
    let written: Vec<BatchWriteResult> = match writes.is_empty() {
        true => Vec::new(),
        false => node.mset(writes).await?,
    };
    let mut written = written.iter();
    let now = node.clock().now_ms();
    let null = Json::Null;
    let results: Vec<BatchItem<'_>> = body
        .entries
        .iter()
        .zip(&parsed)
        .map(|(entry, parsed)| {
            let key = entry.get("key").unwrap_or(&null);
            let write = match parsed {
                Ok(write) => write,
                Err(e) => return BatchItem::failed(key, e),
            };
            match written.next() {
                Some(Ok(Ok(entry))) => BatchItem::Entry(entry_json(&write.key, entry, now)),
                Some(Ok(Err(conflict))) => {
                    let (code, message) =
                        conflict_error(&write.key, write.options.precondition, conflict);
                    let current = conflict.current.as_ref();
                    BatchItem::Failed(FailedItem {
                        key,
                        error: ErrorBody { code, message },
                        current: Some(current.map(|e| entry_json(&write.key, e, now))),
                    })
                }
                Some(Err(e)) => BatchItem::failed(key, e),
                None => BatchItem::failed(key, &Error::ShuttingDown),
            }
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "results": results }),
    ))
}

/// `GET /keys?prefix=P&limit=N&cursor=C`: one page of a scan; see [`Node::scan`]. A `limit`
/// over [`MAX_SCAN_LIMIT`] is lowered to it; query values are form-encoded (`+` is a space).
async fn keys(node: &Node, query: &str) -> Result<HttpResponse, Error> {
    let params = scan_params(query)?;
    let ScanPage { keys, cursor } = node
        .scan(&params.prefix, params.cursor.as_ref(), params.limit)
        .await?;
    let cursor = cursor.map(|c| c.encode());
    Ok(json_response(
        StatusCode::OK,
        &json!({"keys": keys, "cursor": cursor}),
    ))
}

/// The query of `GET /keys`.
#[derive(Debug)]
struct ScanParams {
    prefix: String,
    limit: usize,
    cursor: Option<Cursor>,
}

fn scan_params(query: &str) -> Result<ScanParams, Error> {
    let invalid = |message: String| Error::bad_request(ErrorCode::InvalidRequest, message);
    let mut params = ScanParams {
        prefix: String::new(),
        limit: DEFAULT_SCAN_LIMIT,
        cursor: None,
    };
    let mut seen = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_encoding::percent_decode_str(&raw.replace('+', " "))
            .decode_utf8()
            .map_err(|_| invalid(format!("{name} is not UTF-8 once percent-decoded")))?
            .into_owned();
        if seen.contains(&name) {
            return Err(invalid(format!("{name} is given more than once")));
        }
        seen.push(name);
        match name {
            "prefix" => params.prefix = value,
            "limit" => {
                params.limit = value.parse().map_err(|_| {
                    invalid(format!(
                        "limit must be a whole number from 1 (over {MAX_SCAN_LIMIT} counts as \
                         {MAX_SCAN_LIMIT})"
                    ))
                })?;
            }
            "cursor" if value.is_empty() => {}
            "cursor" => params.cursor = Some(Cursor::decode(&value)?),
            other => {
                return Err(invalid(format!(
                    "unknown query parameter {other:?}: expected prefix, limit or cursor"
                )))
            }
        }
    }
    Ok(params)
}

async fn delete(node: &Node, key: &str) -> Result<HttpResponse, Error> {
    match node.delete(key).await? {
        Some(old) => Ok(json_response(
            StatusCode::OK,
            &json!({"key": key, "deleted": true, "version": old.version}),
        )),
        None => Err(Error::NotFound { key: key.into() }),
    }
}

fn health(node: &Node) -> HttpResponse {
    let map = node.map();
    let (status, state) = if node.is_removed() {
        (StatusCode::SERVICE_UNAVAILABLE, "removed")
    } else if node.is_healthy() {
        (StatusCode::OK, "ok")
    } else if node.is_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "seeding")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "recovering")
    };
    json_response(
        status,
        &json!({
            "status": state,
            "node": node.id(),
            "incarnation": node.incarnation(),
            "epoch": map.epoch(),
            "uptime_seconds": node.uptime().as_secs(),
        }),
    )
}

fn cluster(node: &Node) -> HttpResponse {
    let map = node.map();
    let record = node.membership();
    let nodes: Vec<Json> = map
        .nodes()
        .iter()
        .chain(map.departing())
        .map(|n| {
            let state = node.node_state(&record, n.id);
            json!({"id": n.id, "addr": n.addr, "state": state})
        })
        .collect();
    let rebalance = status::rebalance(node, &map, &record);
    json_response(
        StatusCode::OK,
        &json!({
            "node": node.id(),
            "epoch": map.epoch(),
            "version": record.version,
            "partitioner": map.partitioner().name(),
            "replication_factor": node.replication_factor(),
            "under_replicated": node.under_replicated(),
            "nodes": nodes,
            "removed": record.removed,
            "rebalance": rebalance,
        }),
    )
}

fn stats(node: &Node) -> HttpResponse {
    let s = node.store().stats();
    // Clients' keys only: the cluster's own record of its map is not one of them (its bytes
    // count, like any other).
    let own = u64::from(node.holds_map_replica());
    json_response(
        StatusCode::OK,
        &json!({
            "node": node.id(),
            "keys": s.keys.saturating_sub(own),
            "bytes": s.bytes,
            "max_memory": s.max_memory,
            "eviction": node.store().config().eviction,
            "under_replicated": node.under_replicated(),
            "requests": node.metrics().snapshot(),
        }),
    )
}

/// `GET /metrics`: the node's metrics in the Prometheus text format; see [`exposition`].
fn metrics(node: &Node) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(exposition::render(node))));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(exposition::CONTENT_TYPE),
    );
    response
}

/// `POST /internal/v1/rpc`: a frame from a peer, answered by kvnet's server half, which checks
/// its MAC before decoding it. A frame may hold the largest value plus its message, or a
/// catch-up page ([`kvnet::frame_limit`]). With TLS on, only a connection whose client
/// certificate the cluster's CA signed may carry peer requests.
async fn peer(node: &Node, req: Request<Incoming>) -> Result<HttpResponse, Error> {
    let config = node.config();
    if config.tls_enabled() && req.extensions().get::<PeerCertificate>().is_none() {
        return Err(Error::bad_request(
            ErrorCode::Unauthenticated,
            "peer requests over TLS need a client certificate signed by the cluster's CA",
        ));
    }
    let serve = kvnet::ServeConfig {
        max_frame_bytes: kvnet::frame_limit(config.max_value_bytes()),
        body_timeout: config.body_read_timeout(),
        secret: config.cluster_secret.clone(),
    };
    Ok(kvnet::http::serve(&*node.peer_handler(), req, &serve).await)
}

/// Percent-decodes a key from a URL path segment.
fn decode_key(raw: &str) -> Result<String, Error> {
    let key = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|k| k.into_owned())
        .map_err(|_| kvcore::Error::InvalidKey {
            reason: "key is not valid UTF-8 once percent-decoded".into(),
        })?;
    kvcore::validate_key(&key)?;
    Ok(key)
}

/// Reads the body (refusing it once it passes [`client_body_limit`], or when it takes longer
/// than the body read timeout) and parses it as JSON.
async fn read_json<T: for<'de> Deserialize<'de>>(
    node: &Node,
    req: Request<Incoming>,
) -> Result<T, Error> {
    read_json_within(node, req, body_limit(node)).await
}

/// [`read_json`] with a body limit of `limit` bytes.
async fn read_json_within<T: for<'de> Deserialize<'de>>(
    node: &Node,
    req: Request<Incoming>,
    limit: usize,
) -> Result<T, Error> {
    let too_large = Error::BodyTooLarge { limit };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large);
    }
    let timeout = node.config().body_read_timeout();
    let read = Limited::new(req.into_body(), limit).collect();
    let body = match tokio::time::timeout(timeout, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large),
        Ok(Err(e)) => {
            return Err(Error::BadRequest {
                code: ErrorCode::InvalidRequest,
                message: format!("could not read the request body: {e}"),
            })
        }
        Err(_) => {
            return Err(Error::BadRequest {
                code: ErrorCode::RequestTimeout,
                message: format!("the request body was not received within {timeout:?}"),
            })
        }
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::BadRequest {
            code: ErrorCode::MalformedJson,
            message: "the request body is empty; expected a JSON object".into(),
        });
    }
    // Every body is an object; serde would also read a struct from an array of its fields.
    let object = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if !object && serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok() {
        return Err(Error::BadRequest {
            code: ErrorCode::InvalidRequest,
            message: "invalid request body: expected a JSON object".into(),
        });
    }
    serde_json::from_slice(&body).map_err(|e| {
        use serde_json::error::Category;
        let code = match e.classify() {
            Category::Data => ErrorCode::InvalidRequest,
            Category::Syntax | Category::Eof | Category::Io => ErrorCode::MalformedJson,
        };
        Error::BadRequest {
            code,
            message: format!("invalid request body: {e}"),
        }
    })
}

/// The JSON of an entry, serialized straight from the stored value. Fields in alphabetical
/// order, as they have always been returned; `ttl_ms` only while the entry has an expiry time.
#[derive(serde::Serialize)]
struct EntryBody<'a> {
    encoding: Encoding,
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl_ms: Option<u64>,
    value: kvcore::JsonView<'a>,
    version: Version,
}

/// The entry's JSON at `now_ms`. An entry being returned is live, so its remaining TTL is
/// shown as at least 1 ms, even if this node's clock, a little ahead of the one that decided,
/// has passed it.
fn entry_json<'a>(key: &'a str, entry: &'a Entry, now_ms: u64) -> EntryBody<'a> {
    EntryBody {
        encoding: entry.value.encoding(),
        key,
        ttl_ms: entry.ttl_ms(now_ms).map(|ms| ms.max(1)),
        value: entry.value.as_json(),
        version: entry.version,
    }
}

fn entry_response(node: &Node, key: &str, entry: &Entry) -> HttpResponse {
    let now = node.clock().now_ms();
    json_response(StatusCode::OK, &entry_json(key, entry, now))
}

fn error_response(e: &Error) -> HttpResponse {
    let mut response = json_response(
        e.status(),
        &json!({"error": {"code": e.code(), "message": e.to_string()}}),
    );
    if let Error::MethodNotAllowed { allowed, .. } = e {
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static(allowed));
    }
    // Refused before the body was read whole: the connection cannot carry another request.
    // The accept loop reads the rest before closing, so the client still gets this answer.
    if matches!(
        e.code(),
        ErrorCode::BodyTooLarge | ErrorCode::RequestTimeout | ErrorCode::Unauthenticated
    ) {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A page of HTML, never cached: it is the status page, whose script fetches the figures.
fn html_response(page: &'static str) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from_static(page.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(status::content_security_policy()),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> HttpResponse {
    let mut bytes = serde_json::to_vec(body).unwrap_or_else(|_| {
        // Unreachable in practice (all bodies are maps with string keys); still answer in JSON.
        br#"{"error":{"code":"internal","message":"the response could not be encoded"}}"#.to_vec()
    });
    bytes.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
