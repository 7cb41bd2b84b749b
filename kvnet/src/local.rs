//! The in-process transport: nodes in one process exchange frames through a shared registry.
//! Frames are the very bytes the HTTP transport would send, so the codec is exercised exactly
//! as over the network.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use kvcore::NodeInfo;

use crate::error::{CallError, RemoteError};
use crate::transport::{BoxFuture, FrameHandler, Transport};
use crate::wire::FrameError;

/// A registry of in-process nodes, addressed by their [`NodeInfo::addr`]. Cloning shares it.
///
/// ```
/// use std::sync::Arc;
/// use kvnet::{InProcessNetwork, Peers, Transport};
///
/// let network = InProcessNetwork::new(std::time::Duration::from_secs(1));
/// let peers = Peers::new(Arc::new(network.clone()));
/// // network.register("node-0", Arc::downgrade(&handler)); peers.call(&info, &header, &Ping) ...
/// ```
#[derive(Clone)]
pub struct InProcessNetwork {
    nodes: Arc<RwLock<HashMap<String, Weak<dyn FrameHandler>>>>,
    timeout: Duration,
}

impl fmt::Debug for InProcessNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("InProcessNetwork")
            .field("nodes", &nodes.keys().collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl InProcessNetwork {
    /// An empty network whose requests time out after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        InProcessNetwork {
            nodes: Arc::default(),
            timeout,
        }
    }

    /// Makes `handler` reachable at `addr`. The network holds it weakly, so a dropped node
    /// becomes unreachable by itself.
    pub fn register(&self, addr: impl Into<String>, handler: Weak<dyn FrameHandler>) {
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        nodes.insert(addr.into(), handler);
    }

    /// Makes `addr` unreachable, as if its process had stopped.
    pub fn unregister(&self, addr: &str) {
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        nodes.remove(addr);
    }

    fn handler(&self, addr: &str) -> Option<Arc<dyn FrameHandler>> {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        nodes.get(addr).and_then(Weak::upgrade)
    }
}

impl Transport for InProcessNetwork {
    fn send<'a>(
        &'a self,
        to: &'a NodeInfo,
        frame: Bytes,
    ) -> BoxFuture<'a, Result<Bytes, CallError>> {
        Box::pin(async move {
            let node = to.id;
            let Some(handler) = self.handler(&to.addr) else {
                return Err(CallError::Unreachable {
                    node,
                    reason: format!("no node at {}", to.addr),
                });
            };
            match tokio::time::timeout(self.timeout, handler.handle_frame(frame)).await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(FrameError::Stopped)) => Err(CallError::Broken {
                    node,
                    reason: "the node stopped while handling the request".into(),
                }),
                Ok(Err(e)) => Err(CallError::Remote(RemoteError::new(e.code(), e.to_string()))),
                Err(_) => Err(CallError::Timeout {
                    node,
                    timeout: self.timeout,
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::{Get, Kind, Ping, Pong};
    use crate::transport::Peers;
    use crate::wire::{encode_reply, Header, Incoming};
    use kvcore::{ErrorCode, NodeId};

    /// Answers pings with the sender's header echoed back, refuses everything else.
    struct Echo;

    impl FrameHandler for Echo {
        fn handle_frame(&self, frame: Bytes) -> BoxFuture<'_, Result<Bytes, FrameError>> {
            Box::pin(async move {
                let incoming = Incoming::parse(&frame)?;
                if incoming.kind == Kind::Ping {
                    let h = incoming.header;
                    return Ok(encode_reply::<Pong>(&Ok(Pong {
                        node: NodeId(h.hops as u32),
                        epoch: h.epoch,
                        incarnation: h.incarnation,
                        ready: true,
                        drift: 0,
                    })));
                }
                Ok(encode_reply::<Pong>(&Err(RemoteError::new(
                    ErrorCode::Internal,
                    "only pings",
                ))))
            })
        }
    }

    fn info(addr: &str) -> NodeInfo {
        NodeInfo {
            id: NodeId(1),
            addr: addr.into(),
        }
    }

    fn header(hops: u8) -> Header {
        Header {
            from: NodeId(0),
            incarnation: 1,
            epoch: 5,
            request_id: 9,
            hops,
        }
    }

    #[tokio::test]
    async fn delivers_replies_remote_errors_and_unreachability() {
        let net = InProcessNetwork::new(Duration::from_secs(1));
        let echo: Arc<dyn FrameHandler> = Arc::new(Echo);
        net.register("a", Arc::downgrade(&echo));
        let peers = Peers::new(Arc::new(net.clone()));
        let pong = peers.call(&info("a"), &header(2), &Ping).await.unwrap();
        assert_eq!(
            pong,
            Pong {
                node: NodeId(2),
                epoch: 5,
                incarnation: 1,
                ready: true,
                drift: 0,
            }
        );

        // Echo refuses a Get with its own error, which the caller receives as the remote's
        // answer, not a transport failure.
        let err = peers
            .call(&info("a"), &header(1), &Get { key: "k".into() })
            .await
            .unwrap_err();
        assert_eq!(err.remote_code(), Some(ErrorCode::Internal));
        assert!(!err.may_have_applied());

        let err = peers.call(&info("b"), &header(1), &Ping).await.unwrap_err();
        assert!(matches!(err, CallError::Unreachable { .. }));
        net.unregister("a");
        assert!(peers.call(&info("a"), &header(1), &Ping).await.is_err());
        drop(echo);
    }

    struct Stuck;

    impl FrameHandler for Stuck {
        fn handle_frame(&self, _: Bytes) -> BoxFuture<'_, Result<Bytes, FrameError>> {
            Box::pin(std::future::pending())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_peer_times_out_as_ambiguous() {
        let net = InProcessNetwork::new(Duration::from_millis(300));
        let stuck: Arc<dyn FrameHandler> = Arc::new(Stuck);
        net.register("s", Arc::downgrade(&stuck));
        let peers = Peers::new(Arc::new(net));
        let err = peers.call(&info("s"), &header(1), &Ping).await.unwrap_err();
        assert!(matches!(err, CallError::Timeout { .. }));
        assert!(err.may_have_applied());
    }
}
