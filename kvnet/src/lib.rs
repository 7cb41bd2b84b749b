//! kvnet: how kv store nodes talk to each other.
//!
//! The peer protocol is a set of typed messages ([`rpc`]), each tied to its reply type by the
//! [`Rpc`] trait, carried in binary frames ([`wire`]) that start with a protocol version and a
//! [`Header`] (sender, incarnation, epoch, request id, hop count). Values travel as their stored
//! bytes. A frame is encoded once and its bytes shared, so a message for several replicas costs
//! one encoding.
//!
//! Frames move over a [`Transport`]:
//! - [`HttpTransport`]: `POST /internal/v1/rpc` with hyper-util's pooled client, optionally over
//!   TLS; [`http::serve`] is the receiving half, mounted by the node's HTTP server. With a
//!   cluster [`Secret`], requests and replies carry an HMAC-SHA256 tag beside the frame
//!   ([`auth`]), checked before anything is decoded.
//! - [`InProcessNetwork`]: nodes in one process, for tests and examples; frames are the same
//!   bytes, so the codec is tested even in memory.
//! - [`FaultyTransport`]: wraps either to drop, delay, duplicate and partition ([`Faults`]).
//!
//! [`Peers`] makes typed calls over a transport; a node answers through [`rpc::dispatch`] and its
//! [`PeerService`]. Transport failures ([`CallError::Unreachable`], [`CallError::Timeout`],
//! [`CallError::Broken`]) stay distinct from the remote node's own answer
//! ([`CallError::Remote`]), and [`CallError::may_have_applied`] tells a coordinator whether a
//! failed write is known not to have happened or has an unknown outcome.
//!
//! # Layout
//! - [`rpc`]: the messages, [`Rpc`], [`PeerService`] and [`rpc::dispatch`].
//! - [`wire`]: frames, [`Header`], protocol versions.
//! - [`transport`]: the [`Transport`] and [`FrameHandler`] seams and [`Peers`].
//! - [`error`]: [`RemoteError`] and [`CallError`].
//! - [`auth`]: the cluster [`Secret`] and the tags of peer requests and replies.
//! - [`http`]: the HTTP transport, both halves.
//! - [`local`]: the in-process transport.
//! - [`fault`]: [`Faults`] and [`FaultyTransport`].

pub mod auth;
pub mod error;
pub mod fault;
pub mod http;
pub mod local;
pub mod rpc;
pub mod transport;
pub mod wire;

pub use auth::{Secret, MAC_HEADER};
pub use error::{CallError, RemoteError};
pub use fault::{Faults, FaultyTransport};
pub use http::{frame_limit, HttpTransport, HttpTransportConfig, ServeConfig, RPC_PATH};
pub use local::InProcessNetwork;
pub use rpc::{Handle, Kind, PeerService, Rpc};
pub use transport::{BoxFuture, FrameHandler, Peers, Transport};
pub use wire::{Frame, FrameError, Header, MAX_HOPS, PROTOCOL_VERSION};
