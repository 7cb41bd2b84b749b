//! kvnet: how kv store nodes talk to each other.
//!
//! A node hands requests for keys it does not own to a [`Forwarder`] and answers its peers
//! through a [`PeerHandler`]. Two transports implement the seam:
//! - [`HttpForwarder`]: JSON over HTTP/1.1 with hyper-util's pooled client and per-request
//!   deadlines; the receiving side is the `POST /internal/v1/rpc` endpoint of kvserver.
//! - [`InProcessNetwork`]: nodes in one process, for tests and examples; every message is still
//!   encoded and decoded, so the codec is tested even in memory.
//!
//! Transport failures ([`ForwardError::Unreachable`], [`ForwardError::Timeout`],
//! [`ForwardError::Broken`]) stay distinct from the remote node's own answer
//! ([`ForwardError::Remote`]), and [`ForwardError::may_have_applied`] tells a coordinator whether a
//! failed write is known not to have happened or has an unknown outcome.
//!
//! # Layout
//! - [`message`]: the peer protocol ([`Envelope`], [`PeerRequest`], [`PeerReply`]) and its codec.
//! - [`forward`]: the [`Forwarder`] and [`PeerHandler`] traits and [`ForwardError`].
//! - [`http`]: the HTTP transport.
//! - [`local`]: the in-process transport.
//! - [`fault`]: [`Faults`] and [`FaultyForwarder`], injected drops, delays and partitions.

pub mod fault;
pub mod forward;
pub mod http;
pub mod local;
pub mod message;

pub use fault::{Faults, FaultyForwarder};
pub use forward::{BoxFuture, ForwardError, Forwarder, PeerHandler};
pub use http::{HttpForwarder, HttpForwarderConfig};
pub use local::InProcessNetwork;
pub use message::{
    Envelope, PeerReply, PeerRequest, PeerResult, RemoteError, HOPS_HEADER, MAX_HOPS, RPC_PATH,
};
