//! kvserver: the kv store's server, as a library and as the `kvserver` binary.
//!
//! A [`Node`] owns a shard of the keys (a `kvcore::Store`) and coordinates every other key by
//! forwarding to its owner through a `kvnet::Forwarder`. [`run`] serves a node's JSON API on a
//! listener; [`LocalCluster`] starts several nodes in one process.
//!
//! # HTTP API
//! | method & path | body | answer |
//! |---|---|---|
//! | `POST`/`PUT /set` | `{"key", "value", "encoding"?, "if_version"?, "if_absent"?}` | `{"key", "value", "encoding", "version"}` |
//! | `GET /get/{key}` | | the same, or 404 |
//! | `GET`/`PUT`/`DELETE /kv/{key}` | PUT: `{"value", "encoding"?, ...}` | the same |
//! | `GET /health`, `/cluster`, `/stats` | | status, membership, counters |
//!
//! Errors are `{"error": {"code", "message"}}` with a 4xx or 5xx status; see [`Error`].
//!
//! # Layout
//! - [`config`]: [`NodeConfig`] and size parsing.
//! - [`node`]: the [`Node`]: local store, routing, peer handling.
//! - [`api`]: HTTP routing, request parsing, JSON responses.
//! - [`server`]: the accept loop and graceful shutdown ([`run`]).
//! - [`local`]: [`LocalCluster`], in-process clusters.
//! - [`error`]: [`Error`] and its HTTP statuses.

pub mod api;
pub mod config;
pub mod error;
pub mod local;
pub mod membership;
pub mod node;
mod recovery;
mod replication;
pub mod server;

pub use config::{parse_size, NodeConfig};
pub use error::Error;
pub use local::{LocalCluster, LocalClusterBuilder, Transport};
pub use node::{Node, SEED_KEYS};
pub use server::{run, shutdown_signal, ServerConfig};
