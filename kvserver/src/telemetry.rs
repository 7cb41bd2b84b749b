//! What a node measures as it serves, for `GET /metrics`: client requests by endpoint, their
//! latency, peer calls by message kind, open connections. The node's other figures (the counters
//! of [`metrics`](crate::metrics), the store's size, the cluster's state) are read when scraped;
//! see [`exposition`](crate::exposition).
//!
//! Every label takes its values from a fixed set (route names, not paths; message kinds; status
//! classes), so the number of series does not grow with what clients send.

use std::sync::atomic::AtomicI64;
use std::time::Duration;

use hyper::{Method, StatusCode};
use kvnet::Kind;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::api::Endpoint;

/// Upper bounds of the latency buckets, in seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

type Latencies<L> = Family<L, Histogram, fn() -> Histogram>;

/// Labels of a client request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    method: &'static str,
    status: &'static str,
}

/// Labels of a client request's latency.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
}

/// Labels of a peer message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// Records a peer call's time when dropped (see [`Telemetry::time_peer_call`]).
#[derive(Debug)]
pub struct PeerCallTimer<'a> {
    telemetry: &'a Telemetry,
    kind: Kind,
    started: std::time::Instant,
}

impl Drop for PeerCallTimer<'_> {
    fn drop(&mut self) {
        self.telemetry.peer_call(self.kind, self.started.elapsed());
    }
}

/// A node's measurements of its traffic. Shared behind an `Arc`; cloning a family shares it.
#[derive(Debug)]
pub struct Telemetry {
    requests: Family<RequestLabels, Counter>,
    request_seconds: Latencies<EndpointLabels>,
    peer_call_seconds: Latencies<KindLabels>,
    peer_received: Family<KindLabels, Counter>,
    connections: Gauge<i64, AtomicI64>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            peer_call_seconds: Family::new_with_constructor(latency_histogram),
            peer_received: Family::default(),
            connections: Gauge::default(),
        }
    }
}

impl Telemetry {
    /// Records a client request to `endpoint` (one of [`endpoint`]'s names) answered with
    /// `status` after `elapsed`.
    pub fn client_request(
        &self,
        endpoint: &'static str,
        method: &Method,
        status: StatusCode,
        elapsed: Duration,
    ) {
        let labels = RequestLabels {
            endpoint,
            method: method_label(method),
            status: status_class(status),
        };
        self.requests.get_or_create(&labels).inc();
        self.request_seconds
            .get_or_create(&EndpointLabels { endpoint })
            .observe(elapsed.as_secs_f64());
    }

    /// Records a call to a peer of kind `kind` that took `elapsed`, answered or not.
    pub fn peer_call(&self, kind: Kind, elapsed: Duration) {
        self.peer_call_seconds
            .get_or_create(&KindLabels { kind: kind.name() })
            .observe(elapsed.as_secs_f64());
    }

    /// Times a call to a peer of kind `kind` until the timer is dropped: when the answer (or
    /// the failure) came, or when the caller gave up waiting and dropped the call, so calls
    /// cut short by a caller's timeout are counted too, at the time they were given.
    pub fn time_peer_call(&self, kind: Kind) -> PeerCallTimer<'_> {
        PeerCallTimer {
            telemetry: self,
            kind,
            started: std::time::Instant::now(),
        }
    }

    /// Records a message of kind `kind` received from a peer.
    pub fn peer_received(&self, kind: Kind) {
        self.peer_received
            .get_or_create(&KindLabels { kind: kind.name() })
            .inc();
    }

    /// Counts a connection open until the returned guard is dropped.
    pub fn connection(&self) -> ConnectionGuard {
        self.connections.inc();
        ConnectionGuard(self.connections.clone())
    }

    /// Adds the families to `registry`, for one scrape.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kv_client_requests",
            "Client requests this node answered, by endpoint (route name), method and status class",
            self.requests.clone(),
        );
        registry.register_with_unit(
            "kv_client_request_duration",
            "Time from a client request's arrival to its answer, by endpoint",
            Unit::Seconds,
            self.request_seconds.clone(),
        );
        registry.register_with_unit(
            "kv_peer_call_duration",
            "Time this node waited for a peer's answer to its message (or the failure, or until it gave up waiting), by message kind",
            Unit::Seconds,
            self.peer_call_seconds.clone(),
        );
        registry.register(
            "kv_peer_messages_received",
            "Messages received from peers (and this node itself), by kind",
            self.peer_received.clone(),
        );
        registry.register(
            "kv_open_connections",
            "Connections open to this node's listener, clients' and peers'",
            self.connections.clone(),
        );
    }
}

/// An open connection: counted until dropped.
#[derive(Debug)]
pub struct ConnectionGuard(Gauge<i64, AtomicI64>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The route name a client request's path is counted under ([`Endpoint::name`]): never the
/// path itself, which holds keys. Unknown paths count as `other`.
pub fn endpoint(path: &str) -> &'static str {
    Endpoint::find(path).map_or("other", |(endpoint, _)| endpoint.name())
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_never_become_endpoint_names() {
        for (path, name) in [
            ("/get/user:1", "get"),
            ("/kv/a/b", "kv"),
            ("/kv/a/incr", "incr"),
            ("/kv/incr", "kv"),
            ("/set", "set"),
            ("/cluster/join", "cluster_join"),
            ("/user:1", "other"),
            ("/get", "other"),
            ("/", "status_page"),
            ("/cluster/overview", "cluster_overview"),
            ("/metrics", "metrics"),
        ] {
            assert_eq!(endpoint(path), name, "{path}");
        }
    }

    #[test]
    fn statuses_count_by_class() {
        assert_eq!(status_class(StatusCode::OK), "2xx");
        assert_eq!(status_class(StatusCode::NOT_FOUND), "4xx");
        assert_eq!(status_class(StatusCode::GATEWAY_TIMEOUT), "5xx");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
    }
}
