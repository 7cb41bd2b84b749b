//! Fan-out of acceptor messages to a key's replicas, answers gathered as they come.
//!
//! A message is encoded once and the same bytes go to every remote replica; the local replica
//! (if this node is one) answers in place, without a message.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kvcore::NodeId;
use kvnet::{CallError, Frame, Rpc};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::acceptor::{Acceptor, AcceptorRpc};
use crate::detector::FailureDetector;
use crate::drift::Drift;
use crate::lifecycle::Lifecycle;
use crate::peers::PeerClient;
use crate::readiness::Readiness;
use crate::topology::Placement;

/// One replica's answer.
pub type Answer<R> = (NodeId, Result<<R as Rpc>::Reply, CallError>);

/// Sends acceptor messages to replicas.
#[derive(Debug)]
pub struct Quorum {
    client: Arc<PeerClient>,
    acceptor: Arc<Acceptor>,
    detector: Arc<FailureDetector>,
    readiness: Arc<Readiness>,
    lifecycle: Arc<Lifecycle>,
    drift: Arc<Drift>,
    /// Rotates which remote replicas are asked first, to spread reads.
    spread: AtomicUsize,
    /// How long the first replicas asked may take before the others are asked too; also how
    /// long a replica reported down is waited for.
    hedge: Duration,
}

impl Quorum {
    /// Fan-out through `client`, answering for the local replica with `acceptor`; remote sends
    /// run as tasks of `lifecycle`.
    pub fn new(
        client: Arc<PeerClient>,
        acceptor: Arc<Acceptor>,
        detector: Arc<FailureDetector>,
        readiness: Arc<Readiness>,
        lifecycle: Arc<Lifecycle>,
        drift: Arc<Drift>,
        hedge: Duration,
    ) -> Self {
        Quorum {
            client,
            acceptor,
            detector,
            readiness,
            lifecycle,
            drift,
            spread: AtomicUsize::new(0),
            hedge,
        }
    }

    fn me(&self) -> NodeId {
        self.client.me()
    }

    /// Sends `request` to `targets` (replicas of `placement`) at once; their answers come on
    /// `tx`, so a request some replicas must be asked again shares one channel.
    pub fn send<R: AcceptorRpc>(
        &self,
        placement: &Placement,
        request_id: u64,
        request: &R,
        targets: &[NodeId],
        tx: &mpsc::UnboundedSender<Answer<R>>,
    ) {
        let frame = self
            .client
            .frame_at(placement.map.epoch(), request_id, 1, request);
        self.send_to(placement, targets, request, &frame, tx);
    }

    /// The acceptor of this node's own replica.
    pub fn acceptor(&self) -> &Acceptor {
        &self.acceptor
    }

    /// This node's own replica's answer to `request`.
    pub fn local<R: AcceptorRpc>(
        &self,
        placement: &Placement,
        request: R,
    ) -> Result<R::Reply, CallError> {
        let answer = self
            .acceptor
            .handle_placed(placement, request)
            .map_err(CallError::Remote);
        if R::misses_copy(&answer) {
            self.drift.note();
        }
        answer
    }

    /// Sends `request` to `first` of the remote replicas (those known down last) and holds the
    /// others back, to be asked if those fail or are slow, or left to the caller (see
    /// [`Gather::held_back`]). This node's own replica is not asked.
    pub fn gather_remote<R: AcceptorRpc>(
        &self,
        placement: &Placement,
        request_id: u64,
        request: R,
        first: usize,
    ) -> Gather<R> {
        let me = self.me();
        let mut order: Vec<NodeId> = placement
            .replicas
            .iter()
            .copied()
            .filter(|&r| r != me)
            .collect();
        order.sort_by_key(|&r| self.detector.is_down(r));
        self.start(placement, request_id, request, order, first)
    }

    /// Sends `request` to a majority of the replicas first — this node's own replica among them
    /// when it votes — and to the others only when one of those fails, disagrees or is slow
    /// (see [`Gather`]). The common case then costs `quorum - 1` remote messages, not `R - 1`.
    pub fn gather<R: AcceptorRpc>(
        &self,
        placement: &Placement,
        request_id: u64,
        request: R,
    ) -> Gather<R> {
        let me = self.me();
        let mut order: Vec<NodeId> = Vec::with_capacity(placement.replicas.len());
        let local_votes =
            placement.contains(me) && self.readiness.can_vote(me, &placement.replicas);
        if local_votes {
            order.push(me);
        }
        // Remote replicas in turn, so reads spread over them; those known down go last.
        let turn = self.spread.fetch_add(1, Ordering::Relaxed);
        let mut remote: Vec<NodeId> = placement
            .replicas
            .iter()
            .copied()
            .filter(|&r| r != me)
            .collect();
        if !remote.is_empty() {
            let len = remote.len();
            remote.rotate_left(turn % len);
        }
        remote.sort_by_key(|&r| self.detector.is_down(r));
        order.extend(remote);
        if placement.contains(me) && !local_votes {
            order.push(me);
        }
        self.start(
            placement,
            request_id,
            request,
            order,
            placement.first_wave(),
        )
    }

    /// Sends `request` to the first `first` of `order` and holds the others back.
    fn start<R: AcceptorRpc>(
        &self,
        placement: &Placement,
        request_id: u64,
        request: R,
        mut order: Vec<NodeId>,
        first: usize,
    ) -> Gather<R> {
        let rest = order.split_off(first.min(order.len()));
        let (tx, rx) = mpsc::unbounded_channel();
        let frame = self
            .client
            .frame_at(placement.map.epoch(), request_id, 1, &request);
        self.send_to(placement, &order, &request, &frame, &tx);
        Gather {
            tx,
            rx,
            asked: order.len(),
            rest,
            request,
            frame,
            placement: placement.clone(),
            hedge: Instant::now() + self.hedge,
        }
    }

    fn send_to<R: AcceptorRpc>(
        &self,
        placement: &Placement,
        targets: &[NodeId],
        request: &R,
        frame: &Frame<R>,
        tx: &mpsc::UnboundedSender<Answer<R>>,
    ) {
        let me = self.me();
        // For the refusals heard after the proposer stopped listening: shared by every send.
        let key: Arc<str> = Arc::from(request.key());
        for &to in targets {
            if to == me {
                let _ = tx.send((to, self.local(placement, request.clone())));
                continue;
            }
            let Some(info) = placement.node(to).cloned() else {
                let _ = tx.send((
                    to,
                    Err(CallError::Unreachable {
                        node: to,
                        reason: "not a member of the cluster map".into(),
                    }),
                ));
                continue;
            };
            // A replica the failure detector reports down still gets the request (it may have
            // just come back), but only for as long as a heartbeat takes: nobody waits for it.
            let patience = self.detector.is_down(to).then_some(self.hedge);
            let (client, frame, tx) = (self.client.clone(), frame.clone(), tx.clone());
            let (drift, acceptor) = (self.drift.clone(), self.acceptor.clone());
            let key = key.clone();
            self.lifecycle.spawn(async move {
                let send = client.send(&info, &frame);
                let answer = match patience {
                    None => send.await,
                    Some(limit) => match tokio::time::timeout(limit, send).await {
                        Ok(answer) => answer,
                        Err(_) => Err(CallError::Timeout {
                            node: to,
                            timeout: limit,
                        }),
                    },
                };
                // Heard here, not by the proposer, which stops listening at a majority: a copy
                // missed, and the ballot that refused it, so the next round outbids it.
                if R::misses_copy(&answer) {
                    drift.note();
                }
                if let Some(promised) = R::refused_for(&answer) {
                    acceptor.observe(&key, promised);
                }
                let _ = tx.send((to, answer));
            });
        }
    }
}

/// A request sent to a majority of a key's replicas, with the rest held back until needed.
#[derive(Debug)]
pub struct Gather<R: Rpc> {
    tx: mpsc::UnboundedSender<Answer<R>>,
    rx: mpsc::UnboundedReceiver<Answer<R>>,
    /// Replicas asked so far.
    asked: usize,
    /// Replicas not asked yet.
    rest: Vec<NodeId>,
    request: R,
    frame: Frame<R>,
    placement: Placement,
    /// When to ask the rest anyway, if the first ones are slow.
    hedge: Instant,
}

impl<R: AcceptorRpc> Gather<R> {
    /// Asks the replicas held back (once).
    pub fn widen(&mut self, quorum: &Quorum) {
        if !self.rest.is_empty() {
            let rest = std::mem::take(&mut self.rest);
            self.asked += rest.len();
            quorum.send_to(&self.placement, &rest, &self.request, &self.frame, &self.tx);
        }
    }

    /// How many replicas have been asked so far.
    pub fn asked(&self) -> usize {
        self.asked
    }

    /// The replicas held back and not asked (yet).
    pub fn held_back(&self) -> &[NodeId] {
        &self.rest
    }

    /// The next answer, or `None` once `deadline` passes. Asks the rest when the hedge time
    /// passes first.
    pub async fn next(&mut self, quorum: &Quorum, deadline: Instant) -> Option<Answer<R>> {
        loop {
            let until = if self.rest.is_empty() {
                deadline
            } else {
                self.hedge.min(deadline)
            };
            match tokio::time::timeout_at(until, self.rx.recv()).await {
                Ok(answer) => return answer,
                Err(_) if Instant::now() >= deadline => return None,
                Err(_) => self.widen(quorum),
            }
        }
    }

    /// The answers still to come, once the caller is done: for background repair.
    pub fn into_rest(self) -> mpsc::UnboundedReceiver<Answer<R>> {
        self.rx
    }
}
