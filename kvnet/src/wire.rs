//! The frame format of the peer protocol: a fixed header and a binary body.
//!
//! A request frame is
//!
//! ```text
//! version: u16 little-endian | Header (postcard) | kind: u8 | request body (postcard)
//! ```
//!
//! and a reply frame is `version: u16 little-endian | Result<reply, RemoteError> (postcard)`.
//! The version comes first and raw, so a node can tell a frame of another protocol version before
//! decoding anything else. A node accepts every version from [`MIN_PROTOCOL_VERSION`] to
//! [`PROTOCOL_VERSION`]: an in-memory store can only be upgraded by rolling restarts, so each
//! release keeps speaking the previous version, and a node that is two versions apart refuses
//! clearly ([`FrameError::UnsupportedVersion`]) rather than misreading.
//!
//! Frames carry no MAC themselves: an authenticating transport computes one over the exact frame
//! bytes and sends it beside them (over HTTP in a header), so one encoded frame can still go to
//! every replica unchanged.

use bytes::{BufMut, Bytes, BytesMut};
use kvcore::{ErrorCode, NodeId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::RemoteError;
use crate::rpc::{Kind, Rpc};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 2;

/// The oldest protocol version this build still accepts. Version 2 added expiry times to
/// replicated registers and entries, which every message carrying one changed shape for, so
/// version 1 cannot be read.
pub const MIN_PROTOCOL_VERSION: u16 = 2;

/// A request is forwarded between nodes at most this many times. Client-facing endpoints always
/// start at 0, so a client cannot raise the budget; a peer refuses a frame that claims more.
pub const MAX_HOPS: u8 = 2;

/// What every request frame says about its sender, whatever it asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The sending node.
    pub from: NodeId,
    /// The sender's incarnation: it grows every time the sender's process starts. Receivers
    /// remember the highest seen per node, which fences off messages from a restarted node's
    /// previous life.
    pub incarnation: u64,
    /// The epoch of the sender's cluster map.
    pub epoch: u64,
    /// Identifies the client request this message serves, across every node it touches.
    pub request_id: u64,
    /// How many times the operation has been forwarded, this send included (1..=[`MAX_HOPS`]).
    pub hops: u8,
}

/// A request frame that could not be read. Answered outside the frame format (over HTTP as a
/// JSON error), since the sender may not speak this node's version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame's protocol version is not one this node speaks.
    #[error("peer protocol version {got} is not supported: this node speaks versions {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}")]
    UnsupportedVersion {
        /// The version the frame declared.
        got: u16,
    },
    /// The frame is truncated or its contents do not decode.
    #[error("malformed peer frame: {reason}")]
    Malformed {
        /// What was wrong.
        reason: String,
    },
    /// The receiving node stopped while handling the frame; it may have been applied.
    #[error("the node stopped while handling the request")]
    Stopped,
}

impl FrameError {
    /// The error code a refused frame is answered with.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::UnsupportedVersion { .. } => ErrorCode::UnsupportedProtocol,
            FrameError::Malformed { .. } => ErrorCode::InvalidRequest,
            FrameError::Stopped => ErrorCode::ShuttingDown,
        }
    }

    fn malformed(reason: impl std::fmt::Display) -> Self {
        FrameError::Malformed {
            reason: reason.to_string(),
        }
    }
}

/// An encoded request whose reply decodes as `R::Reply`: the type ties the two together, and the
/// bytes are shared, so sending one frame to several replicas encodes it once.
#[derive(Debug)]
pub struct Frame<R> {
    bytes: Bytes,
    _reply: std::marker::PhantomData<fn() -> R>,
}

impl<R> Clone for Frame<R> {
    fn clone(&self) -> Self {
        Frame {
            bytes: self.bytes.clone(),
            _reply: std::marker::PhantomData,
        }
    }
}

impl<R: Rpc> Frame<R> {
    /// Encodes `request` under `header`.
    pub fn encode(header: &Header, request: &R) -> Self {
        let mut buf = BytesMut::with_capacity(64);
        buf.put_u16_le(PROTOCOL_VERSION);
        let mut writer = buf.writer();
        // Encoding into memory fails only if a Serialize impl fails, and none of ours does.
        postcard::to_io(header, &mut writer).expect("headers always encode");
        let mut buf = writer.into_inner();
        buf.put_u8(R::KIND as u8);
        let mut writer = buf.writer();
        postcard::to_io(request, &mut writer).expect("peer requests always encode");
        Frame {
            bytes: writer.into_inner().freeze(),
            _reply: std::marker::PhantomData,
        }
    }

    /// The frame's bytes, as sent.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Decodes the reply to this frame.
    pub fn decode_reply(&self, reply: &[u8]) -> Result<Result<R::Reply, RemoteError>, FrameError> {
        decode_reply::<R::Reply>(reply)
    }
}

/// A request frame split into its parts, the body not decoded yet.
#[derive(Debug)]
pub struct Incoming<'a> {
    /// The protocol version the sender used.
    pub version: u16,
    /// The header.
    pub header: Header,
    /// What is asked.
    pub kind: Kind,
    body: &'a [u8],
}

impl<'a> Incoming<'a> {
    /// Reads the version, header and kind of a request frame.
    pub fn parse(frame: &'a [u8]) -> Result<Self, FrameError> {
        let (version, rest) = split_version(frame)?;
        let (header, rest): (Header, _) =
            postcard::take_from_bytes(rest).map_err(FrameError::malformed)?;
        if !(1..=MAX_HOPS).contains(&header.hops) {
            return Err(FrameError::malformed(format!(
                "hop count {} is outside 1..={MAX_HOPS}",
                header.hops
            )));
        }
        let (&kind, body) = rest
            .split_first()
            .ok_or_else(|| FrameError::malformed("no message kind"))?;
        let kind = Kind::from_u8(kind)
            .ok_or_else(|| FrameError::malformed(format!("unknown message kind {kind}")))?;
        Ok(Incoming {
            version,
            header,
            kind,
            body,
        })
    }

    /// Decodes the body as `R`, which must be the frame's kind; trailing bytes are refused.
    pub fn body<R: Rpc>(&self) -> Result<R, FrameError> {
        debug_assert_eq!(self.kind, R::KIND);
        let (request, rest) =
            postcard::take_from_bytes(self.body).map_err(FrameError::malformed)?;
        if !rest.is_empty() {
            return Err(FrameError::malformed("trailing bytes after the message"));
        }
        Ok(request)
    }
}

/// Encodes a reply frame.
pub fn encode_reply<T: Serialize>(result: &Result<T, RemoteError>) -> Bytes {
    let mut buf = BytesMut::with_capacity(32);
    buf.put_u16_le(PROTOCOL_VERSION);
    let mut writer = buf.writer();
    postcard::to_io(result, &mut writer).expect("peer replies always encode");
    writer.into_inner().freeze()
}

/// Decodes a reply frame.
pub fn decode_reply<T: DeserializeOwned>(
    frame: &[u8],
) -> Result<Result<T, RemoteError>, FrameError> {
    let (_, body) = split_version(frame)?;
    let (reply, rest) = postcard::take_from_bytes(body).map_err(FrameError::malformed)?;
    if !rest.is_empty() {
        return Err(FrameError::malformed("trailing bytes after the reply"));
    }
    Ok(reply)
}

fn split_version(frame: &[u8]) -> Result<(u16, &[u8]), FrameError> {
    let Some((version, rest)) = frame.split_first_chunk::<2>() else {
        return Err(FrameError::malformed("shorter than a version"));
    };
    let version = u16::from_le_bytes(*version);
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
        return Err(FrameError::UnsupportedVersion { got: version });
    }
    Ok((version, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::{Get, Ping, Pong};

    fn header() -> Header {
        Header {
            from: NodeId(3),
            incarnation: 77,
            epoch: 9,
            request_id: 0xfeed,
            hops: 1,
        }
    }

    #[test]
    fn frames_carry_version_header_kind_and_body() {
        let frame = Frame::encode(
            &header(),
            &Get {
                key: "ключ".into()
            },
        );
        assert_eq!(&frame.bytes()[..2], &PROTOCOL_VERSION.to_le_bytes());
        let incoming = Incoming::parse(frame.bytes()).unwrap();
        assert_eq!(
            (incoming.version, incoming.header, incoming.kind),
            (PROTOCOL_VERSION, header(), Kind::Get)
        );
        assert_eq!(incoming.body::<Get>().unwrap().key, "ключ");
    }

    #[test]
    fn other_versions_and_garbage_are_refused_clearly() {
        let frame = Frame::encode(&header(), &Ping);
        let mut future = frame.bytes().to_vec();
        future[..2].copy_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
        assert_eq!(
            Incoming::parse(&future).unwrap_err(),
            FrameError::UnsupportedVersion {
                got: PROTOCOL_VERSION + 1
            }
        );
        assert_eq!(
            Incoming::parse(&future).unwrap_err().code(),
            ErrorCode::UnsupportedProtocol
        );
        // Version 1 registers had no expiry time: read as version 2 they would be misread.
        let mut old = frame.bytes().to_vec();
        old[..2].copy_from_slice(&1u16.to_le_bytes());
        assert_eq!(
            Incoming::parse(&old).unwrap_err(),
            FrameError::UnsupportedVersion { got: 1 }
        );
        let mut truncated = PROTOCOL_VERSION.to_le_bytes().to_vec();
        truncated.extend([0xff, 0xff, 0xff]);
        for garbage in [&b""[..], b"\x02", &truncated] {
            assert!(matches!(
                Incoming::parse(garbage),
                Err(FrameError::Malformed { .. })
            ));
        }
        let bad_hops = Frame::encode(
            &Header {
                hops: 0,
                ..header()
            },
            &Ping,
        );
        assert!(Incoming::parse(bad_hops.bytes()).is_err());
        let too_many = Frame::encode(
            &Header {
                hops: MAX_HOPS + 1,
                ..header()
            },
            &Ping,
        );
        assert!(Incoming::parse(too_many.bytes()).is_err());
    }

    #[test]
    fn every_truncation_of_a_frame_fails_to_decode_without_panicking() {
        let frame = Frame::encode(
            &header(),
            &Get {
                key: "k".repeat(40),
            },
        );
        let bytes = frame.bytes();
        for len in 0..bytes.len() {
            let cut = &bytes[..len];
            let decoded = Incoming::parse(cut).and_then(|i| i.body::<Get>());
            assert!(decoded.is_err(), "a frame cut at {len} bytes decoded");
        }
    }

    #[test]
    fn replies_round_trip_with_remote_errors() {
        let pong = Pong {
            node: NodeId(1),
            epoch: 2,
            incarnation: 3,
            ready: true,
            drift: 0,
        };
        let frame = Frame::encode(&header(), &Ping);
        let ok = encode_reply::<Pong>(&Ok(pong.clone()));
        assert_eq!(frame.decode_reply(&ok).unwrap(), Ok(pong));
        let err = RemoteError::new(ErrorCode::MemoryFull, "full");
        let bytes = encode_reply::<Pong>(&Err(err.clone()));
        assert_eq!(frame.decode_reply(&bytes).unwrap(), Err(err));
    }
}
