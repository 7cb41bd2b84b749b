//! The HTTP transport: peer requests as `POST /internal/v1/rpc` over hyper-util's pooled client.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kvcore::NodeInfo;

use crate::forward::{BoxFuture, ForwardError, Forwarder};
use crate::message::{
    decode, encode, Envelope, PeerReply, PeerResult, RemoteError, HOPS_HEADER, RPC_PATH,
};

/// Largest peer reply accepted: a value of the maximum size plus its JSON/base64 framing.
const MAX_REPLY_BYTES: usize = 4 << 20;

/// Settings of the HTTP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpForwarderConfig {
    /// Deadline for a whole exchange: connect, send, and read the reply.
    pub request_timeout: Duration,
    /// Deadline for establishing a connection, so a dead host fails fast.
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per peer.
    pub max_idle_per_peer: usize,
}

impl Default for HttpForwarderConfig {
    fn default() -> Self {
        HttpForwarderConfig {
            request_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_millis(500),
            pool_idle_timeout: Duration::from_secs(60),
            max_idle_per_peer: 64,
        }
    }
}

/// Forwards over HTTP/1.1 with kept-alive, pooled connections to every peer.
///
/// hyper-util's client stays private to this type, as hyper advises for public APIs.
#[derive(Debug, Clone)]
pub struct HttpForwarder {
    client: Client<HttpConnector, Full<Bytes>>,
    config: HttpForwarderConfig,
}

impl HttpForwarder {
    /// A forwarder with its own connection pool. Must be created inside a Tokio runtime.
    pub fn new(config: HttpForwarderConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.max_idle_per_peer)
            .build(connector);
        HttpForwarder { client, config }
    }

    async fn exchange(
        &self,
        to: &NodeInfo,
        hops: u8,
        body: Bytes,
    ) -> Result<PeerReply, ForwardError> {
        let node = to.id;
        let uri = format!("http://{}{}", to.addr, RPC_PATH);
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(HOPS_HEADER, HeaderValue::from(u16::from(hops)))
            .body(Full::new(body))
            .map_err(|e| ForwardError::Unreachable {
                node,
                reason: format!("bad peer address {:?}: {e}", to.addr),
            })?;
        let response = self.client.request(request).await.map_err(|e| {
            if e.is_connect() {
                ForwardError::Unreachable {
                    node,
                    reason: error_chain(&e),
                }
            } else {
                ForwardError::Broken {
                    node,
                    reason: error_chain(&e),
                }
            }
        })?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_REPLY_BYTES)
            .collect()
            .await
            .map_err(|e| ForwardError::Broken {
                node,
                reason: format!("reading reply: {e}"),
            })?
            .to_bytes();
        if status == StatusCode::OK {
            let result: PeerResult = decode(&body).map_err(|e| ForwardError::Broken {
                node,
                reason: format!("undecodable reply: {e}"),
            })?;
            return result.map_err(ForwardError::Remote);
        }
        // The endpoint refused the request before handling it (malformed, too large, ...): it
        // answers with the API's error body, `{"error": {"code", "message"}}`.
        #[derive(serde::Deserialize)]
        struct ErrorBody {
            error: RemoteError,
        }
        match decode::<ErrorBody>(&body) {
            Ok(e) => Err(ForwardError::Remote(e.error)),
            Err(_) => Err(ForwardError::Broken {
                node,
                reason: format!("unexpected status {status}"),
            }),
        }
    }
}

impl Forwarder for HttpForwarder {
    fn send<'a>(
        &'a self,
        to: &'a NodeInfo,
        hops: u8,
        envelope: Envelope,
    ) -> BoxFuture<'a, Result<PeerReply, ForwardError>> {
        Box::pin(async move {
            let timeout = self.config.request_timeout;
            match tokio::time::timeout(timeout, self.exchange(to, hops, encode(&envelope))).await {
                Ok(result) => result,
                Err(_) => Err(ForwardError::Timeout {
                    node: to.id,
                    timeout,
                }),
            }
        })
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
