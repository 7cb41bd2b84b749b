//! kvserver: the kv store's server, as a library and as the `kvserver` binary.
//!
//! A [`Node`] holds replicas of the keys it owns (a `kvcore::Store`) and coordinates every
//! other key by forwarding to its replicas through a `kvnet::Transport`. [`run`] serves a node's
//! JSON API on a listener; [`LocalCluster`] starts several nodes in one process.
//!
//! # HTTP API
//! | method & path | body | answer |
//! |---|---|---|
//! | `POST`/`PUT /set` | `{"key", "value", "encoding"?, "if_version"?, "if_absent"?}` | `{"key", "value", "encoding", "version"}` |
//! | `GET /get/{key}` | | the same, or 404 |
//! | `GET`/`PUT`/`DELETE /kv/{key}` | PUT: `{"value", "encoding"?, ...}` | the same |
//! | `POST /kv/{key}/incr` | `{"by"}` | the new entry |
//! | `POST /mget` | `{"keys": [...]}` (1 to 1000) | `{"entries": [...]}`: per key, in order, the entry, `null` if missing, or `{"key", "error"}` |
//! | `POST /mset` | `{"entries": [{"key", "value", "encoding"?, "ttl_ms"?, "keep_ttl"?, "if_version"?, "if_absent"?}, ...]}` | `{"results": [...]}`: per item, the entry or `{"key", "error", "current"?}` |
//! | `GET /keys?prefix=&limit=&cursor=` | | `{"keys": [...], "cursor"}`: a page of live keys in scan order; `cursor` is `null` at the end |
//! | `GET /health`, `/cluster`, `/stats` | | status, membership, counters |
//! | `GET /metrics` | | Prometheus text format |
//! | `POST /cluster/join` | `{"addr"}` | `{"node", "epoch", "fresh", "record"}` |
//! | `POST /cluster/remove` | `{"node", "force"?}` | `{"node", "epoch", "state"}` |
//! | `GET /cluster/overview` | | every node's state and own figures, asked by this node |
//! | `GET /` | | the status page (HTML), which polls `/cluster/overview` |
//! | `GET /openapi.json` | | the OpenAPI 3.1 description of all of the above ([`api::OPENAPI`]) |
//!
//! Errors are `{"error": {"code", "message"}}` with a 4xx or 5xx status; see [`Error`].
//!
//! # Layout
//! The node is a façade over parts with one job each; dependencies point down this list.
//! - [`config`]: [`Config`], the one configuration type (command line, [`LocalCluster`], tests).
//! - [`clock`]: the wall clock that TTLs are measured with.
//! - [`error`]: [`Error`] and the one mapping of error codes to HTTP statuses.
//! - [`metrics`]: request counters; [`telemetry`]: request and peer call latencies, open
//!   connections; [`exposition`]: all of them, and the node's state, for `GET /metrics`.
//! - [`request_id`]: the ids that follow a client request through every node's logs.
//! - [`membership`]: the cluster's record of its membership and the changes made to it.
//! - [`topology`]: the current cluster map and a key's [`Placement`](topology::Placement).
//! - [`lifecycle`]: every task a node runs, tracked and stopped together.
//! - [`incarnations`], [`readiness`]: fencing of restarted peers, and catch-up progress.
//! - [`peers`]: typed calls to peers with this node's frame header.
//! - [`detector`]: the failure detector (heartbeats).
//! - [`acceptor`]: a replica's side of CASPaxos.
//! - [`quorum`]: fan-out of acceptor messages to a key's replicas.
//! - [`operation`]: get, set, delete and increment as functions of a key's state.
//! - [`proposer`]: CASPaxos rounds, fast reads, read repair; [`backfill`]: the copies of
//!   one-round writes for the replicas they did not wait for.
//! - [`coordinator`]: runs an operation here or forwards it to a replica.
//! - [`batch`]: many keys' operations in one request, one peer message per node; [`scan`]:
//!   cluster-wide scans of the keys, merged from every node's pages.
//! - [`service`]: answers peers' messages.
//! - [`rebalance`]: a node's part in a membership change (writing the record, copying the keys
//!   it gains, finishing it, dropping the keys that moved away). See `docs/membership.md`.
//! - [`catchup`], [`seed`], [`anti_entropy`], [`expiry`], [`eviction`]: background work;
//!   [`drift`] tells anti-entropy when a pass is worth running. [`eviction`] also holds the
//!   [`Room`](eviction::Room) that writes in cache mode wait for.
//! - [`node`]: the [`Node`] façade that builds and starts the parts.
//! - [`status`]: a node's own figures and the cluster overview the status page shows.
//! - [`api`], [`server`]: HTTP routing and the accept loop ([`run`]) with its connection limits;
//!   [`tls`]: HTTPS for clients and peers.
//! - [`local`]: [`LocalCluster`], in-process clusters.
//! - [`client`]: [`Client`], a typed client of the API with pooled connections and failover
//!   between nodes; [`admin`]: [`AdminClient`](admin::AdminClient), a client of a node's
//!   membership endpoints (`kvserver node --join`, `kvserver admin`), over the same transport.
//! - [`cli`]: the key commands of the `kvserver` binary (`get`, `set`, `delete`, `incr`,
//!   `keys`), on [`Client`].

pub mod acceptor;
pub mod admin;
pub mod anti_entropy;
pub mod api;
pub mod backfill;
pub mod batch;
pub mod catchup;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod coordinator;
pub mod detector;
pub mod drift;
pub mod error;
pub mod eviction;
pub mod expiry;
pub mod exposition;
pub mod incarnations;
pub mod lifecycle;
pub mod local;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod operation;
pub mod peers;
pub mod proposer;
pub mod quorum;
pub mod readiness;
pub mod rebalance;
pub mod request_id;
pub mod scan;
pub mod seed;
pub mod server;
pub mod service;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod topology;

pub use client::{Client, ClientBuilder, ClientError, SetOptions};

/// The README's Rust examples, compiled and run as doc tests so that they stay true to the code.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeExamples;
pub use config::{parse_size, Config, ConfigError};
pub use detector::PeerState;
pub use error::Error;
pub use local::{LocalCluster, LocalClusterBuilder, Transport};
pub use node::{BatchWrite, BatchWriteResult, Node, WriteOptions, WriteOutcome};
pub use seed::SEED_KEYS;
pub use server::{run, shutdown_signal};
