//! The HTTP transport: both halves of `POST /internal/v1/rpc`.
//!
//! The client half ([`HttpTransport`]) posts request frames over hyper-util's pooled client; the
//! server half ([`serve`]) is called by the node's HTTP router for that path. A frame is the
//! request body as it is (`application/octet-stream`); a 200 answer's body is the reply frame.
//! A frame the server cannot read at all (another protocol version, garbage, too large) gets a
//! 4xx with the API's JSON error body, `{"error": {"code", "message"}}`, which any version can
//! read.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kvcore::{ErrorCode, NodeInfo};

use crate::error::{CallError, RemoteError};
use crate::transport::{BoxFuture, FrameHandler, Transport};

/// Path of the peer endpoint on every node.
pub const RPC_PATH: &str = "/internal/v1/rpc";

/// Largest peer reply accepted.
const MAX_REPLY_BYTES: usize = 4 << 20;

/// Settings of the HTTP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpTransportConfig {
    /// Deadline for a whole exchange: connect, send, and read the reply.
    pub request_timeout: Duration,
    /// Deadline for establishing a connection, so a dead host fails fast.
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per peer.
    pub max_idle_per_peer: usize,
}

impl Default for HttpTransportConfig {
    fn default() -> Self {
        HttpTransportConfig {
            request_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_millis(500),
            pool_idle_timeout: Duration::from_secs(60),
            max_idle_per_peer: 64,
        }
    }
}

/// Sends frames over HTTP/1.1 with kept-alive, pooled connections to every peer.
///
/// hyper-util's client stays private to this type, as hyper advises for public APIs.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    client: Client<HttpConnector, Full<Bytes>>,
    config: HttpTransportConfig,
}

impl HttpTransport {
    /// A transport with its own connection pool. Must be created inside a Tokio runtime.
    pub fn new(config: HttpTransportConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.max_idle_per_peer)
            .build(connector);
        HttpTransport { client, config }
    }

    async fn exchange(&self, to: &NodeInfo, frame: Bytes) -> Result<Bytes, CallError> {
        let node = to.id;
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{}{}", to.addr, RPC_PATH))
            .header(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )
            .body(Full::new(frame))
            .map_err(|e| CallError::Unreachable {
                node,
                reason: format!("bad peer address {:?}: {e}", to.addr),
            })?;
        let response = self.client.request(request).await.map_err(|e| {
            let reason = error_chain(&e);
            if e.is_connect() {
                CallError::Unreachable { node, reason }
            } else {
                CallError::Broken { node, reason }
            }
        })?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_REPLY_BYTES)
            .collect()
            .await
            .map_err(|e| CallError::Broken {
                node,
                reason: format!("reading reply: {e}"),
            })?
            .to_bytes();
        if status == StatusCode::OK {
            return Ok(body);
        }
        #[derive(serde::Deserialize)]
        struct ErrorBody {
            error: RemoteError,
        }
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) => Err(CallError::Remote(e.error)),
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

/// The server half: answers a `POST` [`RPC_PATH`] request whose body is a request frame of at
/// most `limit` bytes.
pub async fn serve(
    handler: &dyn FrameHandler,
    request: Request<Incoming>,
    limit: usize,
) -> Response<Full<Bytes>> {
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
    };
    if declared.is_some_and(|len| len > limit as u64) {
        return too_large();
    }
    let frame = match Limited::new(request.into_body(), limit).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidRequest,
                format!("could not read the peer frame: {e}"),
            )
        }
    };
    match handler.handle_frame(frame).await {
        Ok(reply) => {
            let mut response = Response::new(Full::new(reply));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            response
        }
        Err(e) => refuse(StatusCode::BAD_REQUEST, e.code(), e.to_string()),
    }
}

fn refuse(status: StatusCode, code: ErrorCode, message: String) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
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
