//! One HTTP exchange with one node, over a pooled connection: what [`Client`](super::Client)
//! and [`AdminClient`](crate::admin::AdminClient) send their requests through.
//!
//! hyper-util's pooled client stays in here (hyper's advice: keep hyper-util out of a public
//! API). The one thing callers learn about a failed exchange is the one a retry depends on:
//! whether the request certainly did not reach the node ([`Failure::NotSent`]), or may have
//! ([`Failure::NoAnswer`]).

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kvcore::ErrorCode;
use serde::Deserialize;

/// Largest answer read. A batch of large values is the largest thing a node sends; anything
/// bigger is not a kv node's answer.
pub(crate) const MAX_ANSWER_BYTES: usize = 256 << 20;

/// How long a pooled connection may stay idle. Below the node's own idle timeout (5 s by
/// default), so the client drops a connection before the node closes it: a request written
/// onto a connection the node is closing at that moment gets no answer, and a write without an
/// answer cannot be retried.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// Why an exchange got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No connection could be made: the node certainly did not receive the request.
    NotSent(String),
    /// The request may have reached the node, but no whole answer came back (the connection
    /// broke, or the deadline passed).
    NoAnswer(String),
}

/// A node's answer, whatever its status.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The whole body.
    pub body: Bytes,
}

/// The error part of an error answer: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

impl Answer {
    /// The answer's error, if its body is the API's error shape.
    pub fn error_detail(&self) -> Option<ErrorDetail> {
        #[derive(Deserialize)]
        struct ErrorBody {
            error: ErrorDetail,
        }
        serde_json::from_slice::<ErrorBody>(&self.body)
            .ok()
            .map(|b| b.error)
    }

    /// The body as text, for messages about answers that are not what was expected.
    pub fn body_text(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        match text.char_indices().nth(200) {
            Some((cut, _)) => format!("{}...", &text[..cut]),
            None => text.to_owned(),
        }
    }
}

/// A pooled HTTP/1.1 client for plain `http://` nodes.
#[derive(Debug, Clone)]
pub(crate) struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    /// A client that gives up connecting after `connect_timeout` and keeps up to
    /// `max_idle_per_node` idle connections to each node.
    pub fn new(connect_timeout: Duration, max_idle_per_node: usize) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        // Requests are small and each waits for its answer: Nagle's algorithm only delays them.
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(max_idle_per_node)
            .build(connector);
        Http { client }
    }

    /// Sends one request to `node` (`host:port`) and reads the whole answer, all within
    /// `timeout`. `path` includes the query, if any.
    pub async fn exchange(
        &self,
        node: &str,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        headers: &[(HeaderName, HeaderValue)],
        timeout: Duration,
    ) -> Result<Answer, Failure> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{node}{path}"));
        if body.is_some() {
            request = request.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| Failure::NotSent(format!("not a valid request: {e}")))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                // hyper-util reports a failure to connect as such; anything later may have
                // happened after the request was written.
                if e.is_connect() {
                    Failure::NotSent(error_chain(&e))
                } else {
                    Failure::NoAnswer(error_chain(&e))
                }
            })?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| Failure::NoAnswer(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok(Answer { status, body })
        };
        // A deadline that passes while still connecting counts as no answer too: the caller
        // cannot tell, so it must assume the worst.
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(Failure::NoAnswer(format!("no answer within {timeout:?}"))))
    }
}

/// An error with its sources: hyper-util's "client error (Connect)" alone does not say that
/// the connection was refused.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(text, ": {s}");
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_a_request_that_was_not_sent() {
        let addr = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let http = Http::new(Duration::from_secs(1), 1);
        let failure = http
            .exchange(
                &addr.to_string(),
                Method::GET,
                "/health",
                None,
                &[],
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert!(matches!(failure, Failure::NotSent(_)), "{failure:?}");
    }

    #[test]
    fn error_bodies_are_read_and_other_bodies_are_not() {
        let answer = |body: &'static str| Answer {
            status: 503,
            body: Bytes::from_static(body.as_bytes()),
        };
        let detail = answer(r#"{"error":{"code":"quorum_unavailable","message":"m"}}"#)
            .error_detail()
            .unwrap();
        assert_eq!(
            (detail.code, detail.message.as_str()),
            (ErrorCode::QuorumUnavailable, "m")
        );
        let future = answer(r#"{"error":{"code":"from_the_future","message":"m"}}"#);
        assert_eq!(future.error_detail().unwrap().code, ErrorCode::Unrecognized);
        assert!(answer("<html>busy</html>").error_detail().is_none());
        let long = Answer {
            status: 200,
            body: Bytes::from("x".repeat(500)),
        };
        assert_eq!(long.body_text().len(), 203);
    }
}
