//! A small HTTP client and polling helpers for the tests.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value as Json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP client that returns status and parsed JSON body, asserting every body is JSON.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    pub fn new() -> Self {
        Http {
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        }
    }

    pub async fn call(&self, method: Method, url: &str, body: Option<&str>) -> (StatusCode, Json) {
        self.call_with(method, url, body, &[]).await
    }

    /// Like [`call`](Self::call), with extra request headers.
    pub async fn call_with(
        &self,
        method: Method,
        url: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Json) {
        self.try_call(method.clone(), url, body, headers)
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
    }

    /// Like [`call_with`](Self::call_with), but a connection failure is an `Err`.
    pub async fn try_call(
        &self,
        method: Method,
        url: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, Json), String> {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(url)
            .header("content-type", "application/json");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
            .unwrap();
        let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        assert_eq!(
            resp.headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap()),
            Some("application/json"),
            "{method} {url}"
        );
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let json: Json = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{method} {url}: body is not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        Ok((status, json))
    }

    pub async fn get(&self, url: &str) -> (StatusCode, Json) {
        self.call(Method::GET, url, None).await
    }

    pub async fn post(&self, url: &str, body: &str) -> (StatusCode, Json) {
        self.call(Method::POST, url, Some(body)).await
    }

    pub async fn put(&self, url: &str, body: &str) -> (StatusCode, Json) {
        self.call(Method::PUT, url, Some(body)).await
    }

    pub async fn delete(&self, url: &str) -> (StatusCode, Json) {
        self.call(Method::DELETE, url, None).await
    }
}

/// Sends raw bytes on a fresh connection and returns everything the server answers until it
/// closes the connection (the request should carry `Connection: close`).
pub async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("server answered and closed within 10 s")
        .unwrap();
    String::from_utf8(out).unwrap()
}

/// Polls `check` every 20 ms until it returns `Some`, panicking after `timeout`.
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut every = tokio::time::interval(Duration::from_millis(20));
    loop {
        every.tick().await;
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
    }
}

/// A started cluster of `nodes` nodes holding one copy of each key: every node owns some keys
/// and none holds another's.
pub async fn unreplicated(nodes: usize) -> kvserver::LocalCluster {
    kvserver::LocalCluster::builder()
        .nodes(nodes)
        .configure(|c| c.replicas = 1)
        .start()
        .await
        .expect("cluster starts")
}

/// A peer-protocol client over HTTP that signs with `cluster`'s secret, as its nodes do.
pub fn peers_of(cluster: &kvserver::LocalCluster) -> kvnet::Peers {
    kvnet::Peers::new(std::sync::Arc::new(kvnet::HttpTransport::new(
        kvnet::HttpTransportConfig {
            secret: cluster.secret().cloned(),
            ..Default::default()
        },
    )))
}

/// Node `i` of `cluster`, as a peer message addresses it.
pub fn node_info(cluster: &kvserver::LocalCluster, i: usize) -> kvcore::NodeInfo {
    kvcore::NodeInfo {
        id: kvcore::NodeId(i as u32),
        addr: cluster.addr(i).to_string(),
    }
}

/// The header node `from` of `cluster` sends a forwarded request under: its incarnation, the
/// epoch of its map, one hop.
pub fn peer_header(cluster: &kvserver::LocalCluster, from: usize) -> kvnet::Header {
    kvnet::Header {
        from: kvcore::NodeId(from as u32),
        incarnation: cluster.node(from).incarnation(),
        epoch: cluster.node(from).map().epoch(),
        request_id: 7,
        hops: 1,
    }
}

/// Percent-encodes a key for use in a URL path.
pub fn encode_key(key: &str) -> String {
    let mut out = String::new();
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A key's history as its writers saw it: the value of the last acknowledged write, and the
/// values of writes with an unknown outcome since.
pub type History = (Option<u64>, Vec<u64>);

/// What writers were told, per key. Values written to one key must grow, so a value read back
/// can be told apart from the ones before it.
#[derive(Default)]
pub struct Acked {
    pub keys: Mutex<HashMap<String, History>>,
}

impl Acked {
    /// Records that the write of `value` to `key` was acknowledged.
    pub fn acknowledged(&self, key: &str, value: u64) {
        let mut keys = self.keys.lock().unwrap();
        keys.insert(key.to_owned(), (Some(value), Vec::new()));
    }

    /// Records that the write of `value` to `key` may or may not have been applied.
    pub fn unknown(&self, key: &str, value: u64) {
        let mut keys = self.keys.lock().unwrap();
        keys.entry(key.to_owned()).or_default().1.push(value);
    }

    /// Every key written, acknowledged or not.
    pub fn written(&self) -> Vec<String> {
        self.keys.lock().unwrap().keys().cloned().collect()
    }

    /// Whether `found` is what a read of `key` may return: the last acknowledged value, or a
    /// later one whose write had an unknown outcome.
    pub fn check(&self, key: &str, found: Option<u64>) -> Result<(), String> {
        let keys = self.keys.lock().unwrap();
        let Some((acked, unknown)) = keys.get(key) else {
            return Ok(());
        };
        let fine = found == *acked
            || found.is_some_and(|v| unknown.contains(&v) && acked.is_none_or(|a| v > a));
        if fine {
            Ok(())
        } else {
            Err(format!(
                "{key}: read {found:?}, acknowledged {acked:?}, unknown {unknown:?}"
            ))
        }
    }
}
