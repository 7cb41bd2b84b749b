//! kvcore: the embeddable core of the kv store.
//!
//! Everything a node needs that is not networking: typed [`Value`]s validated against their
//! [`Encoding`], the concurrent [`Store`] with a memory budget, the pluggable
//! [`Partitioner`](partition::Partitioner) and the [`ClusterMap`] snapshot that says which nodes
//! own a key. Programs can embed it directly:
//!
//! ```
//! use kvcore::{Encoding, Store, StoreConfig, Value};
//! use serde_json::json;
//!
//! let store = Store::new(StoreConfig { max_memory: Some(64 << 20), ..Default::default() });
//! let value = Value::from_json(Encoding::Integer, &json!("42")).unwrap();
//! store.set("answer", value).unwrap();
//! assert_eq!(store.get("answer").unwrap().value.to_json(), json!(42));
//! ```
//!
//! # Layout
//! - [`value`]: encodings and the compact encoded [`Value`].
//! - [`key`]: key validation and size [`Limits`].
//! - [`store`]: the sharded in-memory [`Store`] with byte accounting and the access words behind
//!   [`Eviction`].
//! - [`partition`]: the [`Partitioner`](partition::Partitioner) trait and one module per strategy.
//! - [`replica`]: [`Ballot`] and [`Register`], the per-key state of a replica.
//! - [`cluster`]: [`NodeId`], [`NodeInfo`] and the [`ClusterMap`].
//! - [`error`]: the crate's [`Error`], each variant with a stable code.

pub mod cluster;
pub mod error;
pub mod key;
pub mod partition;
pub mod replica;
pub mod store;
pub mod value;

pub use cluster::{ClusterMap, MapSpec, NodeId, NodeInfo};
pub use error::{Error, ErrorCode, Result};
pub use key::{validate_key, Limits, MAX_KEY_BYTES};
pub use replica::{Ballot, Register, ReplicaState};
pub use store::{
    Conflict, Entry, Eviction, Floor, Page, Precondition, Store, StoreConfig, StoreStats, Version,
};
pub use value::{Encoding, JsonView, Value};
