//! The in-process transport: nodes in one process talk through a shared registry, with every
//! message still encoded and decoded so the codec is exercised exactly as over HTTP.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use kvcore::NodeInfo;

use crate::forward::{BoxFuture, ForwardError, Forwarder, PeerHandler};
use crate::message::{decode, encode, Envelope, PeerReply, PeerResult};

/// A registry of in-process nodes, addressed by their [`NodeInfo::addr`]. Cloning shares it.
///
/// ```
/// # async fn demo() {
/// use std::sync::Arc;
/// use kvnet::{InProcessNetwork, Forwarder};
/// let network = InProcessNetwork::new(std::time::Duration::from_secs(1));
/// let forwarder: Arc<dyn Forwarder> = Arc::new(network.clone());
/// // network.register("node-0", Arc::downgrade(&node_handler)); ...
/// # }
/// ```
#[derive(Clone)]
pub struct InProcessNetwork {
    nodes: Arc<RwLock<HashMap<String, Weak<dyn PeerHandler>>>>,
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
    pub fn register(&self, addr: impl Into<String>, handler: Weak<dyn PeerHandler>) {
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        nodes.insert(addr.into(), handler);
    }

    /// Makes `addr` unreachable, as if its process had stopped.
    pub fn unregister(&self, addr: &str) {
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        nodes.remove(addr);
    }

    fn handler(&self, addr: &str) -> Option<Arc<dyn PeerHandler>> {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        nodes.get(addr).and_then(Weak::upgrade)
    }
}

impl Forwarder for InProcessNetwork {
    fn send<'a>(
        &'a self,
        to: &'a NodeInfo,
        hops: u8,
        envelope: Envelope,
    ) -> BoxFuture<'a, Result<PeerReply, ForwardError>> {
        Box::pin(async move {
            let node = to.id;
            let Some(handler) = self.handler(&to.addr) else {
                return Err(ForwardError::Unreachable {
                    node,
                    reason: format!("no node at {}", to.addr),
                });
            };
            let broken = |reason: String| ForwardError::Broken { node, reason };
            let wire = encode(&envelope);
            let envelope: Envelope =
                decode(&wire).map_err(|e| broken(format!("undecodable request: {e}")))?;
            let answer = tokio::time::timeout(self.timeout, handler.handle(hops, envelope))
                .await
                .map_err(|_| ForwardError::Timeout {
                    node,
                    timeout: self.timeout,
                })?;
            let wire = encode(&answer);
            let answer: PeerResult =
                decode(&wire).map_err(|e| broken(format!("undecodable reply: {e}")))?;
            answer.map_err(ForwardError::Remote)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{PeerRequest, RemoteError};
    use kvcore::NodeId;

    struct Echo;

    impl PeerHandler for Echo {
        fn handle(&self, hops: u8, envelope: Envelope) -> BoxFuture<'_, PeerResult> {
            Box::pin(async move {
                match envelope.request {
                    PeerRequest::Ping => Ok(PeerReply::Pong {
                        node: NodeId(hops as u32),
                        epoch: envelope.epoch,
                        incarnation: envelope.incarnation,
                        ready: true,
                    }),
                    _ => Err(RemoteError::new("nope", "only pings")),
                }
            })
        }
    }

    fn info(addr: &str) -> NodeInfo {
        NodeInfo {
            id: NodeId(1),
            addr: addr.into(),
        }
    }

    fn ping() -> Envelope {
        Envelope {
            from: NodeId(0),
            epoch: 5,
            incarnation: 1,
            request: PeerRequest::Ping,
        }
    }

    #[tokio::test]
    async fn delivers_replies_remote_errors_and_unreachability() {
        let net = InProcessNetwork::new(Duration::from_secs(1));
        let echo: Arc<dyn PeerHandler> = Arc::new(Echo);
        net.register("a", Arc::downgrade(&echo));
        let reply = net.send(&info("a"), 2, ping()).await.unwrap();
        assert_eq!(
            reply,
            PeerReply::Pong {
                node: NodeId(2),
                epoch: 5,
                incarnation: 1,
                ready: true,
            }
        );

        let get = Envelope {
            request: PeerRequest::Get { key: "k".into() },
            ..ping()
        };
        let err = net.send(&info("a"), 1, get).await.unwrap_err();
        assert_eq!(
            err,
            ForwardError::Remote(RemoteError::new("nope", "only pings"))
        );
        assert!(!err.may_have_applied());

        let err = net.send(&info("b"), 1, ping()).await.unwrap_err();
        assert!(matches!(err, ForwardError::Unreachable { .. }));
        net.unregister("a");
        assert!(net.send(&info("a"), 1, ping()).await.is_err());
        drop(echo);
    }

    struct Stuck;

    impl PeerHandler for Stuck {
        fn handle(&self, _: u8, _: Envelope) -> BoxFuture<'_, PeerResult> {
            Box::pin(std::future::pending())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_peer_times_out_as_ambiguous() {
        let net = InProcessNetwork::new(Duration::from_millis(300));
        let stuck: Arc<dyn PeerHandler> = Arc::new(Stuck);
        net.register("s", Arc::downgrade(&stuck));
        let err = net.send(&info("s"), 1, ping()).await.unwrap_err();
        assert!(matches!(err, ForwardError::Timeout { .. }));
        assert!(err.may_have_applied());
    }
}
