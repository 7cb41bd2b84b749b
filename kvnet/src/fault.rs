//! Fault injection: a [`Forwarder`] wrapper that drops, delays and partitions messages.
//!
//! It wraps a real transport rather than adding flags to one, so the code under test is the
//! code that runs in production. Faults are shared through a [`Faults`] handle that a test
//! changes while the cluster runs.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvcore::{NodeId, NodeInfo};

use crate::forward::{BoxFuture, ForwardError, Forwarder};
use crate::message::{Envelope, PeerReply};

#[derive(Debug, Default)]
struct State {
    /// Directed links that deliver nothing.
    cut: HashSet<(NodeId, NodeId)>,
    /// Probability that a request is lost before delivery.
    drop_request: f64,
    /// Probability that a reply is lost after the request was applied.
    drop_reply: f64,
    /// Extra latency before delivery, drawn uniformly from this range.
    delay: Option<(Duration, Duration)>,
    rng: u64,
}

impl State {
    fn next(&mut self) -> f64 {
        // xorshift64*: plenty for choosing faults, and reproducible from the seed.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The faults currently injected, shared by every [`FaultyForwarder`] made from it.
#[derive(Clone, Default)]
pub struct Faults {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with(|s| f.debug_struct("Faults").field("state", s).finish())
    }
}

impl Faults {
    /// No faults yet; random choices are drawn from `seed`.
    pub fn new(seed: u64) -> Self {
        let faults = Faults::default();
        faults.with(|s| s.rng = seed | 1);
        faults
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

    /// Delays every message by a uniformly random duration in `min..=max`; `None` for no delay.
    pub fn set_delay(&self, delay: Option<(Duration, Duration)>) {
        self.with(|s| s.delay = delay);
    }

    /// Removes every fault.
    pub fn clear(&self) {
        self.with(|s| {
            s.cut.clear();
            s.drop_request = 0.0;
            s.drop_reply = 0.0;
            s.delay = None;
        });
    }

    /// Wraps `inner` so that its messages suffer these faults.
    pub fn wrap<F: Forwarder>(&self, inner: F) -> FaultyForwarder<F> {
        FaultyForwarder {
            inner,
            faults: self.clone(),
        }
    }
}

/// What happens to one message.
enum Fate {
    Deliver { delay: Duration, lose_reply: bool },
    Cut,
    Lost { after: Duration },
}

/// A [`Forwarder`] that subjects every message to the current [`Faults`].
#[derive(Debug)]
pub struct FaultyForwarder<F> {
    inner: F,
    faults: Faults,
}

impl<F: Forwarder> Forwarder for FaultyForwarder<F> {
    fn send<'a>(
        &'a self,
        to: &'a NodeInfo,
        hops: u8,
        envelope: Envelope,
    ) -> BoxFuture<'a, Result<PeerReply, ForwardError>> {
        Box::pin(async move {
            let fate = self.faults.with(|s| {
                if s.cut.contains(&(envelope.from, to.id)) {
                    return Fate::Cut;
                }
                let delay = match s.delay {
                    Some((min, max)) => min + (max.saturating_sub(min)).mul_f64(s.next()),
                    None => Duration::ZERO,
                };
                if s.next() < s.drop_request {
                    return Fate::Lost { after: delay };
                }
                Fate::Deliver {
                    delay,
                    lose_reply: s.next() < s.drop_reply,
                }
            });
            let node = to.id;
            match fate {
                // A partition fails fast, as a refused connection would.
                Fate::Cut => Err(ForwardError::Unreachable {
                    node,
                    reason: "partitioned (injected)".into(),
                }),
                // The sender cannot tell a lost request from a lost reply.
                Fate::Lost { after } => {
                    tokio::time::sleep(after).await;
                    Err(ForwardError::Timeout {
                        node,
                        timeout: after,
                    })
                }
                Fate::Deliver { delay, lose_reply } => {
                    tokio::time::sleep(delay).await;
                    let reply = self.inner.send(to, hops, envelope).await;
                    if lose_reply {
                        return Err(ForwardError::Timeout {
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
    use crate::forward::PeerHandler;
    use crate::message::{PeerRequest, PeerResult};
    use crate::InProcessNetwork;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl PeerHandler for Counter {
        fn handle(&self, _: u8, e: Envelope) -> BoxFuture<'_, PeerResult> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                Ok(PeerReply::Pong {
                    node: e.from,
                    epoch: 0,
                    incarnation: 0,
                    ready: true,
                })
            })
        }
    }

    fn envelope(from: u32) -> Envelope {
        Envelope {
            from: NodeId(from),
            epoch: 1,
            incarnation: 1,
            request: PeerRequest::Ping,
        }
    }

    #[tokio::test]
    async fn partitions_cut_both_ways_and_heal() {
        let net = InProcessNetwork::new(Duration::from_secs(1));
        let counter = Arc::new(Counter::default());
        let handler: Arc<dyn PeerHandler> = counter.clone();
        net.register("n1", Arc::downgrade(&handler));
        let faults = Faults::new(7);
        let fwd = faults.wrap(net);
        let n1 = NodeInfo {
            id: NodeId(1),
            addr: "n1".into(),
        };
        faults.partition(&[NodeId(0)], &[NodeId(1)]);
        let e = fwd.send(&n1, 1, envelope(0)).await.unwrap_err();
        assert!(matches!(e, ForwardError::Unreachable { .. }));
        assert!(fwd.send(&n1, 1, envelope(2)).await.is_ok());
        faults.heal();
        assert!(fwd.send(&n1, 1, envelope(0)).await.is_ok());
        assert_eq!(counter.0.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn lost_replies_are_applied_but_reported_as_timeouts() {
        let net = InProcessNetwork::new(Duration::from_secs(1));
        let counter = Arc::new(Counter::default());
        let handler: Arc<dyn PeerHandler> = counter.clone();
        net.register("n1", Arc::downgrade(&handler));
        let faults = Faults::new(3);
        let fwd = faults.wrap(net);
        let n1 = NodeInfo {
            id: NodeId(1),
            addr: "n1".into(),
        };
        faults.set_drop(0.0, 1.0);
        let e = fwd.send(&n1, 1, envelope(0)).await.unwrap_err();
        assert!(e.may_have_applied());
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        faults.set_drop(1.0, 0.0);
        assert!(fwd
            .send(&n1, 1, envelope(0))
            .await
            .unwrap_err()
            .may_have_applied());
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            1,
            "a lost request is never applied"
        );
        faults.clear();
        assert!(fwd.send(&n1, 1, envelope(0)).await.is_ok());
    }
}
