//! The HTTP transport: both halves of `POST /internal/v1/rpc`.
//!
//! The client half ([`HttpTransport`]) posts request frames over hyper-util's pooled client,
//! over TLS if configured; the server half ([`serve`]) is called by the node's HTTP router for
//! that path. A frame is the request body as it is (`application/octet-stream`); a 200
//! answer's body is the reply frame. A frame the server cannot read at all (another protocol
//! version, garbage, too large) gets a 4xx with the API's JSON error body,
//! `{"error": {"code", "message"}}`, which any version can read.
//!
//! With a cluster [`Secret`], every request carries its tag in the [`MAC_HEADER`] header and
//! every reply the server sends after checking it carries the reply's tag (see [`crate::auth`]
//! for what they cover). The server checks the tag before it decodes anything: a request
//! without a valid one gets `401 unauthenticated` and changes nothing.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kvcore::key::DEFAULT_MAX_VALUE_BYTES;
use kvcore::{ErrorCode, NodeInfo};

use crate::auth::{decode_tag, encode_tag, Secret, Tag, MAC_HEADER};
use crate::error::{CallError, RemoteError};
use crate::transport::{BoxFuture, FrameHandler, Transport};

/// Path of the peer endpoint on every node.
pub const RPC_PATH: &str = "/internal/v1/rpc";

/// Largest peer frame, request or reply, in a cluster whose values are at most
/// `max_value_bytes`: the largest value plus 2 MiB, room for the message around it or for a
/// catch-up page (at most 1 MiB of entries plus one value). Both halves use it, the server for
/// requests and the client for replies, so a valid value always fits whichever way it travels.
pub fn frame_limit(max_value_bytes: usize) -> usize {
    max_value_bytes.saturating_add(2 << 20)
}

/// Settings of the HTTP transport.
#[derive(Debug, Clone)]
pub struct HttpTransportConfig {
    /// Deadline for a whole exchange: connect, send, and read the reply.
    pub request_timeout: Duration,
    /// Deadline for establishing a connection, so a dead host fails fast.
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept. Keep it below the peers' idle timeout, so
    /// the client drops a connection before the server closes it under a request.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per peer.
    pub max_idle_per_peer: usize,
    /// Largest reply accepted: [`frame_limit`] of the cluster's largest value.
    pub max_reply_bytes: usize,
    /// The cluster secret: when set, every request is tagged and every reply must carry a
    /// valid tag.
    pub secret: Option<Secret>,
    /// When set, peers are reached over HTTPS and verified with this configuration (which
    /// holds the cluster's CA and this node's client certificate).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for HttpTransportConfig {
    fn default() -> Self {
        HttpTransportConfig {
            request_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_millis(500),
            pool_idle_timeout: Duration::from_secs(60),
            max_idle_per_peer: 64,
            max_reply_bytes: frame_limit(DEFAULT_MAX_VALUE_BYTES),
            secret: None,
            tls: None,
        }
    }
}

/// hyper-util's pooled client, over plain TCP or TLS (the connector is part of its type).
#[derive(Debug, Clone)]
enum Pool {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(Client<HttpsConnector<HttpConnector>, Full<Bytes>>),
}

impl Pool {
    fn request(&self, request: Request<Full<Bytes>>) -> ResponseFuture {
        match self {
            Pool::Plain(client) => client.request(request),
            Pool::Tls(client) => client.request(request),
        }
    }
}

/// Sends frames over HTTP/1.1 with kept-alive, pooled connections to every peer.
///
/// hyper-util's client stays private to this type, as hyper advises for public APIs.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    pool: Pool,
    config: HttpTransportConfig,
}

impl HttpTransport {
    /// A transport with its own connection pool. Must be created inside a Tokio runtime.
    pub fn new(config: HttpTransportConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.max_idle_per_peer);
        let pool = match &config.tls {
            None => Pool::Plain(builder.build(connector)),
            Some(tls) => {
                // The TLS connector hands `https` URLs to the TCP connector below it.
                connector.enforce_http(false);
                let https = HttpsConnectorBuilder::new()
                    .with_tls_config((**tls).clone())
                    .https_only()
                    .enable_http1()
                    .wrap_connector(connector);
                Pool::Tls(builder.build(https))
            }
        };
        HttpTransport { pool, config }
    }

    async fn exchange(&self, to: &NodeInfo, frame: Bytes) -> Result<Bytes, CallError> {
        let node = to.id;
        let scheme = if self.config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let tag = self
            .config
            .secret
            .as_ref()
            .map(|s| s.request_tag(Method::POST.as_str(), RPC_PATH, &frame));
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(format!("{scheme}://{}{}", to.addr, RPC_PATH))
            .header(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
        if let Some(tag) = &tag {
            request = request.header(MAC_HEADER, encode_tag(tag));
        }
        let request = request
            .body(Full::new(frame))
            .map_err(|e| CallError::Unreachable {
                node,
                reason: format!("bad peer address {:?}: {e}", to.addr),
            })?;
        let response = self.pool.request(request).await.map_err(|e| {
            let reason = error_chain(&e);
            if e.is_connect() {
                CallError::Unreachable { node, reason }
            } else {
                CallError::Broken { node, reason }
            }
        })?;
        let status = response.status();
        let reply_tag = response
            .headers()
            .get(MAC_HEADER)
            .and_then(|v| decode_tag(v.as_bytes()));
        let body = Limited::new(response.into_body(), self.config.max_reply_bytes)
            .collect()
            .await
            .map_err(|e| CallError::Broken {
                node,
                reason: format!("reading reply: {e}"),
            })?
            .to_bytes();
        #[derive(serde::Deserialize)]
        struct ErrorBody {
            error: RemoteError,
        }
        let remote_error = || serde_json::from_slice::<ErrorBody>(&body).map(|e| e.error);
        if let (Some(secret), Some(tag)) = (&self.config.secret, &tag) {
            let genuine =
                reply_tag.is_some_and(|t| secret.verify_reply(&t, tag, status.as_u16(), &body));
            if !genuine {
                // Not trusted, so not a remote answer: an unauthenticated "refused" could hide
                // a request that was applied. Broken says its outcome is unknown.
                let said = match remote_error() {
                    Ok(e) => format!("{status}, {e}"),
                    Err(_) => status.to_string(),
                };
                return Err(CallError::Broken {
                    node,
                    reason: format!(
                        "the reply ({said}) has no valid MAC: the peer has another cluster \
                         secret or none, or the reply was altered"
                    ),
                });
            }
        }
        if status == StatusCode::OK {
            return Ok(body);
        }
        match remote_error() {
            Ok(e) => Err(CallError::Remote(e)),
            Err(_) => Err(CallError::Broken {
                node,
                reason: format!("unexpected status {status}"),
            }),
        }
    }
}

impl Transport for HttpTransport {
    fn send<'a>(
        &'a self,
        to: &'a NodeInfo,
        frame: Bytes,
    ) -> BoxFuture<'a, Result<Bytes, CallError>> {
        Box::pin(async move {
            let timeout = self.config.request_timeout;
            match tokio::time::timeout(timeout, self.exchange(to, frame)).await {
                Ok(result) => result,
                Err(_) => Err(CallError::Timeout {
                    node: to.id,
                    timeout,
                }),
            }
        })
    }
}

/// How the server half reads and checks a peer request.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Largest request frame: [`frame_limit`] of the node's largest value.
    pub max_frame_bytes: usize,
    /// Deadline for reading the whole request body once its headers are in.
    pub body_timeout: Duration,
    /// The cluster secret: when set, a request must carry a valid tag of itself.
    pub secret: Option<Secret>,
}

/// The server half: answers a `POST` [`RPC_PATH`] request whose body is a request frame.
///
/// The body is read whole (up to [`ServeConfig::max_frame_bytes`], within
/// [`ServeConfig::body_timeout`]) and its tag checked before anything in it is decoded.
/// Answers sent before the body was read say `Connection: close`; the server reading the rest
/// of the body before closing (so the client reads the answer) is the accept loop's job.
pub async fn serve(
    handler: &dyn FrameHandler,
    request: Request<Incoming>,
    config: &ServeConfig,
) -> Response<Full<Bytes>> {
    let limit = config.max_frame_bytes;
    let tag = match &config.secret {
        None => None,
        Some(_) => match request
            .headers()
            .get(MAC_HEADER)
            .and_then(|v| decode_tag(v.as_bytes()))
        {
            Some(tag) => Some(tag),
            None => {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::Unauthenticated,
                    format!(
                        "peer requests must carry the {MAC_HEADER} header: 64 hex digits of \
                         HMAC-SHA256 under the cluster secret"
                    ),
                )
                .closing()
            }
        },
    };
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::BodyTooLarge,
            format!("peer frame is over the limit of {limit} bytes"),
        )
        .closing()
    };
    if declared.is_some_and(|len| len > limit as u64) {
        return too_large();
    }
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let read = Limited::new(request.into_body(), limit).collect();
    let frame = match tokio::time::timeout(config.body_timeout, read).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
        Ok(Err(e)) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidRequest,
                format!("could not read the peer frame: {e}"),
            )
            .closing()
        }
        Err(_) => {
            return refuse(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::RequestTimeout,
                format!(
                    "the peer frame was not received within {:?}",
                    config.body_timeout
                ),
            )
            .closing()
        }
    };
    // Checked before anything is decoded: an unauthenticated frame reaches no parser.
    let signer = match (&config.secret, &tag) {
        (Some(secret), Some(tag)) => {
            if !secret.verify_request(tag, method.as_str(), &path, &frame) {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::Unauthenticated,
                    format!(
                        "the {MAC_HEADER} header is not the MAC of this request under the \
                         cluster secret"
                    ),
                )
                .send();
            }
            Some((secret, tag))
        }
        _ => None,
    };
    let answer = match handler.handle_frame(frame).await {
        Ok(reply) => Answer {
            status: StatusCode::OK,
            content_type: "application/octet-stream",
            body: reply,
            close: false,
        },
        Err(e) => refuse(StatusCode::BAD_REQUEST, e.code(), e.to_string()),
    };
    answer.signed(signer)
}

/// A response before it is built, so its tag can be computed over the exact body.
struct Answer {
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
    close: bool,
}

impl Answer {
    /// Marks an answer sent before the request body was read: the connection cannot be reused.
    fn closing(mut self) -> Response<Full<Bytes>> {
        self.close = true;
        self.send()
    }

    fn send(self) -> Response<Full<Bytes>> {
        self.signed(None)
    }

    fn signed(self, signer: Option<(&Secret, &Tag)>) -> Response<Full<Bytes>> {
        let tag = signer
            .map(|(secret, request)| secret.reply_tag(request, self.status.as_u16(), &self.body));
        let mut response = Response::new(Full::new(self.body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        if self.close {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(tag) = tag {
            let value = HeaderValue::from_str(&encode_tag(&tag))
                .expect("hex digits are a valid header value");
            headers.insert(MAC_HEADER, value);
        }
        response
    }
}

fn refuse(status: StatusCode, code: ErrorCode, message: String) -> Answer {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    Answer {
        status,
        content_type: "application/json",
        body: Bytes::from(body.to_string()),
        close: false,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_always_fits_the_largest_value_and_a_catch_up_page() {
        assert_eq!(frame_limit(1 << 20), 3 << 20);
        assert_eq!(frame_limit(0), 2 << 20);
        assert_eq!(frame_limit(usize::MAX), usize::MAX);
        assert_eq!(
            HttpTransportConfig::default().max_reply_bytes,
            frame_limit(DEFAULT_MAX_VALUE_BYTES)
        );
    }
}
