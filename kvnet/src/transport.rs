//! The transport seam: how frames travel between nodes, and the typed calls built on it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use kvcore::NodeInfo;

use crate::error::CallError;
use crate::rpc::Rpc;
use crate::wire::{Frame, FrameError, Header};

/// A boxed, sendable future (the traits here are used as trait objects).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Carries request frames to a node and brings back its reply frame. Implementations: the HTTP
/// transport ([`HttpTransport`](crate::HttpTransport)), the in-process one
/// ([`InProcessNetwork`](crate::InProcessNetwork)), and wrappers such as fault injection.
///
/// A transport knows nothing of what the frames say; [`Peers`] encodes and decodes them.
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// Sends `frame` to `to` and returns its reply frame.
    fn send<'a>(
        &'a self,
        to: &'a NodeInfo,
        frame: Bytes,
    ) -> BoxFuture<'a, Result<Bytes, CallError>>;
}

impl<T: Transport + ?Sized> Transport for Arc<T> {
    fn send<'a>(
        &'a self,
        to: &'a NodeInfo,
        frame: Bytes,
    ) -> BoxFuture<'a, Result<Bytes, CallError>> {
        (**self).send(to, frame)
    }
}

/// The receiving side of a transport: answers a request frame with a reply frame. Implemented
/// by a node (through [`dispatch`](crate::rpc::dispatch)); called by the HTTP endpoint or the
/// in-process network.
pub trait FrameHandler: Send + Sync + 'static {
    /// Answers one request frame.
    fn handle_frame(&self, frame: Bytes) -> BoxFuture<'_, Result<Bytes, FrameError>>;
}

/// Typed calls to peers over a [`Transport`].
#[derive(Debug, Clone)]
pub struct Peers {
    transport: Arc<dyn Transport>,
}

impl Peers {
    /// Calls through `transport`.
    pub fn new(transport: Arc<dyn Transport>) -> Self {
        Peers { transport }
    }

    /// Encodes `request` and sends it to `to`.
    pub async fn call<R: Rpc>(
        &self,
        to: &NodeInfo,
        header: &Header,
        request: &R,
    ) -> Result<R::Reply, CallError> {
        self.send(to, &Frame::encode(header, request)).await
    }

    /// Sends an encoded frame to `to`: the way to send one request to several nodes while
    /// encoding it once.
    pub async fn send<R: Rpc>(
        &self,
        to: &NodeInfo,
        frame: &Frame<R>,
    ) -> Result<R::Reply, CallError> {
        let reply = self.transport.send(to, frame.bytes().clone()).await?;
        match frame.decode_reply(&reply) {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(remote)) => Err(CallError::Remote(remote)),
            // The request was delivered, so it may have been applied.
            Err(e) => Err(CallError::Broken {
                node: to.id,
                reason: format!("undecodable reply: {e}"),
            }),
        }
    }
}
