//! Fault injection: a [`Transport`] wrapper that drops, delays, duplicates and partitions messages.
//!
//! It wraps a real transport rather than adding flags to one, so the code under test is the
//! code that runs in production. Faults are shared through a [`Faults`] handle that a test
//! changes while the cluster runs.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kvcore::{NodeId, NodeInfo};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use tokio::sync::watch;

use crate::error::CallError;
use crate::rpc::Kind;
use crate::transport::{BoxFuture, Transport};
use crate::wire::Incoming;

#[derive(Debug)]
struct State {
    /// Directed links that deliver nothing.
    cut: HashSet<(NodeId, NodeId)>,
    /// Probability that a request is lost before delivery.
    drop_request: f64,
    /// Probability that a reply is lost after the request was applied.
    drop_reply: f64,
    /// Probability that a request is delivered a second time, later.
    duplicate: f64,
    /// Extra latency before delivery, drawn uniformly from this range; with several messages
    /// in flight it also reorders them.
    delay: Option<(Duration, Duration)>,
    /// Messages matching any of these are held until [`Faults::release`].
    holds: Vec<Hold>,
    rng: SmallRng,
}

/// Which messages a hold applies to; `None` matches anything.
#[derive(Debug, Clone, Copy)]
struct Hold {
    from: Option<NodeId>,
    to: Option<NodeId>,
    kind: Option<Kind>,
}

impl Hold {
    fn matches(&self, from: NodeId, to: NodeId, kind: Option<Kind>) -> bool {
        self.from.is_none_or(|f| f == from)
            && self.to.is_none_or(|t| t == to)
            && self.kind.is_none_or(|k| Some(k) == kind)
    }
}

impl State {
    fn delay(&mut self) -> Duration {
        match self.delay {
            Some((min, max)) if max > min => self.rng.gen_range(min..=max),
            Some((min, _)) => min,
            None => Duration::ZERO,
        }
    }
}

/// The faults currently injected, shared by every [`FaultyTransport`] made from it.
#[derive(Clone)]
pub struct Faults {
    state: Arc<Mutex<State>>,
    /// Bumped by every [`Faults::release`]; held messages wait for it to move.
    released: Arc<watch::Sender<u64>>,
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with(|s| f.debug_struct("Faults").field("state", s).finish())
    }
}

impl Faults {
    /// No faults yet; random choices are drawn from `seed`, so a run can be replayed.
    pub fn new(seed: u64) -> Self {
        Faults {
            state: Arc::new(Mutex::new(State {
                cut: HashSet::new(),
                drop_request: 0.0,
                drop_reply: 0.0,
                duplicate: 0.0,
                delay: None,
                holds: Vec::new(),
                rng: SmallRng::seed_from_u64(seed),
            })),
            released: Arc::new(watch::channel(0).0),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Cuts every link between the two groups, both ways.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        self.with(|s| {
            for &x in a {
                for &y in b {
                    s.cut.insert((x, y));
                    s.cut.insert((y, x));
                }
            }
        });
    }

    /// Cuts `node` off from every node in `all`.
    pub fn isolate(&self, node: NodeId, all: &[NodeId]) {
        self.partition(&[node], all);
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.with(|s| s.cut.clear());
    }

    /// Loses requests (before delivery) and replies (after the request was applied) with these
    /// probabilities.
    pub fn set_drop(&self, request: f64, reply: f64) {
        self.with(|s| {
            s.drop_request = request;
            s.drop_reply = reply;
        });
    }

    /// Delivers requests a second time, after another random delay, with this probability.
    /// Only messages of [idempotent](Kind::is_idempotent) kinds are duplicated: a network over
    /// TCP never repeats a request, and a client operation forwarded twice would be a retry, not
    /// a network fault.
    pub fn set_duplicate(&self, probability: f64) {
        self.with(|s| s.duplicate = probability);
    }

    /// Delays every message by a uniformly random duration in `min..=max`; `None` for no delay.
    pub fn set_delay(&self, delay: Option<(Duration, Duration)>) {
        self.with(|s| s.delay = delay);
    }

    /// Holds every message from `from` to `to` of kind `kind` (`None` matches any) until
    /// [`release`](Self::release): a message can be stopped at an exact step of the protocol,
    /// for instance a coordinator's accepts to one replica, while everything else flows.
    pub fn hold(&self, from: Option<NodeId>, to: Option<NodeId>, kind: Option<Kind>) {
        self.with(|s| s.holds.push(Hold { from, to, kind }));
    }

    /// Delivers every held message (subject to the other faults) and removes the holds.
    pub fn release(&self) {
        self.with(|s| s.holds.clear());
        self.released.send_modify(|n| *n += 1);
    }

    /// Removes every fault; held messages are delivered.
    pub fn clear(&self) {
        self.with(|s| {
            s.cut.clear();
            s.drop_request = 0.0;
            s.drop_reply = 0.0;
            s.duplicate = 0.0;
            s.delay = None;
        });
        self.release();
    }

    /// Wraps the transport of node `from` so that its messages suffer these faults.
    pub fn wrap<T: Transport>(&self, from: NodeId, inner: T) -> FaultyTransport<T> {
        FaultyTransport {
            inner: Arc::new(inner),
            from,
            faults: self.clone(),
        }
    }
}

/// What happens to one message.
enum Fate {
    Deliver {
        delay: Duration,
        lose_reply: bool,
        again_after: Option<Duration>,
    },
    Cut,
    Lost {
        after: Duration,
    },
}

/// A [`Transport`] that subjects every message of one node to the current [`Faults`].
#[derive(Debug)]
pub struct FaultyTransport<T> {
    inner: Arc<T>,
    from: NodeId,
    faults: Faults,
}

impl<T: Transport> Transport for FaultyTransport<T> {
    fn send<'a>(
        &'a self,
        to: &'a NodeInfo,
        frame: Bytes,
    ) -> BoxFuture<'a, Result<Bytes, CallError>> {
        Box::pin(async move {
            let kind = Incoming::parse(&frame).ok().map(|i| i.kind);
            let mut released = self.faults.released.subscribe();
            let held = self
                .faults
                .with(|s| s.holds.iter().any(|h| h.matches(self.from, to.id, kind)));
            if held {
                // Until the next release; a message held when its sender crashes is never sent.
                let _ = released.changed().await;
            }
            let fate = self.faults.with(|s| {
                if s.cut.contains(&(self.from, to.id)) {
                    return Fate::Cut;
                }
                let delay = s.delay();
                if s.rng.gen_bool(s.drop_request.clamp(0.0, 1.0)) {
                    return Fate::Lost { after: delay };
                }
                let duplicable = kind.is_some_and(Kind::is_idempotent);
                let again_after = (duplicable && s.rng.gen_bool(s.duplicate.clamp(0.0, 1.0)))
                    .then(|| delay + s.delay());
                Fate::Deliver {
                    delay,
                    lose_reply: s.rng.gen_bool(s.drop_reply.clamp(0.0, 1.0)),
                    again_after,
                }
            });
            let node = to.id;
            match fate {
                // A partition fails fast, as a refused connection would.
                Fate::Cut => Err(CallError::Unreachable {
                    node,
                    reason: "partitioned (injected)".into(),
                }),
                // The sender cannot tell a lost request from a lost reply.
                Fate::Lost { after } => {
                    tokio::time::sleep(after).await;
                    Err(CallError::Timeout {
                        node,
                        timeout: after,
                    })
                }
                Fate::Deliver {
                    delay,
                    lose_reply,
                    again_after,
                } => {
                    if let Some(after) = again_after {
                        // The copy travels on its own, as a retransmitted packet would.
                        let inner = self.inner.clone();
                        let (to, frame) = (to.clone(), frame.clone());
                        tokio::spawn(async move {
                            tokio::time::sleep(after).await;
                            let _ = inner.send(&to, frame).await;
                        });
                    }
                    tokio::time::sleep(delay).await;
                    let reply = self.inner.send(to, frame).await;
                    if lose_reply {
                        return Err(CallError::Timeout {
                            node,
                            timeout: delay,
                        });
                    }
                    reply
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::{Kind, Ping, Pong};
    use crate::transport::{FrameHandler, Peers};
    use crate::wire::{encode_reply, FrameError, Header, Incoming};
    use crate::InProcessNetwork;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl FrameHandler for Counter {
        fn handle_frame(&self, frame: Bytes) -> BoxFuture<'_, Result<Bytes, FrameError>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                let from = Incoming::parse(&frame)?.header.from;
                Ok(encode_reply::<Pong>(&Ok(Pong {
                    node: from,
                    epoch: 0,
                    incarnation: 0,
                    ready: true,
                    drift: 0,
                })))
            })
        }
    }

    fn header(from: u32) -> Header {
        Header {
            from: NodeId(from),
            incarnation: 1,
            epoch: 1,
            request_id: 1,
            hops: 1,
        }
    }

    fn setup(
        seed: u64,
    ) -> (
        Faults,
        InProcessNetwork,
        Arc<Counter>,
        Arc<dyn FrameHandler>,
        NodeInfo,
    ) {
        let net = InProcessNetwork::new(Duration::from_secs(1));
        let counter = Arc::new(Counter::default());
        let handler: Arc<dyn FrameHandler> = counter.clone();
        net.register("n1", Arc::downgrade(&handler));
        let n1 = NodeInfo {
            id: NodeId(1),
            addr: "n1".into(),
        };
        (Faults::new(seed), net, counter, handler, n1)
    }

    #[tokio::test]
    async fn partitions_cut_both_ways_and_heal() {
        let (faults, net, counter, _handler, n1) = setup(7);
        let from0 = Peers::new(Arc::new(faults.wrap(NodeId(0), net.clone())));
        let from2 = Peers::new(Arc::new(faults.wrap(NodeId(2), net)));
        faults.partition(&[NodeId(0)], &[NodeId(1)]);
        let e = from0.call(&n1, &header(0), &Ping).await.unwrap_err();
        assert!(matches!(e, CallError::Unreachable { .. }));
        assert!(from2.call(&n1, &header(2), &Ping).await.is_ok());
        faults.heal();
        assert!(from0.call(&n1, &header(0), &Ping).await.is_ok());
        assert_eq!(counter.0.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn lost_replies_are_applied_but_reported_as_timeouts() {
        let (faults, net, counter, _handler, n1) = setup(3);
        let peers = Peers::new(Arc::new(faults.wrap(NodeId(0), net)));
        faults.set_drop(0.0, 1.0);
        let e = peers.call(&n1, &header(0), &Ping).await.unwrap_err();
        assert!(e.may_have_applied());
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        faults.set_drop(1.0, 0.0);
        let e = peers.call(&n1, &header(0), &Ping).await.unwrap_err();
        assert!(e.may_have_applied());
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            1,
            "a lost request is never applied"
        );
        faults.clear();
        assert!(peers.call(&n1, &header(0), &Ping).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn held_messages_wait_for_release_and_others_flow() {
        let (faults, net, counter, _handler, n1) = setup(11);
        let peers = Arc::new(Peers::new(Arc::new(faults.wrap(NodeId(0), net.clone()))));
        let other = Peers::new(Arc::new(faults.wrap(NodeId(2), net)));
        faults.hold(Some(NodeId(0)), None, Some(Kind::Ping));
        let held = {
            let (peers, n1) = (peers.clone(), n1.clone());
            tokio::spawn(async move { peers.call(&n1, &header(0), &Ping).await })
        };
        assert!(other.call(&n1, &header(2), &Ping).await.is_ok());
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            1,
            "the held ping was delivered"
        );
        faults.release();
        assert!(held.await.unwrap().is_ok());
        assert_eq!(counter.0.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn duplicated_requests_are_delivered_twice() {
        let (faults, net, counter, _handler, n1) = setup(5);
        let peers = Peers::new(Arc::new(faults.wrap(NodeId(0), net)));
        faults.set_duplicate(1.0);
        faults.set_delay(Some((Duration::from_millis(1), Duration::from_millis(5))));
        assert!(peers.call(&n1, &header(0), &Ping).await.is_ok());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(counter.0.load(Ordering::SeqCst), 2);
    }
}
