//! Copies of chosen registers for the replicas a write did not wait for, sent in bulk.
//!
//! A key's primary asks only as many replicas to accept a one-round write as it needs for a
//! majority; the others get the chosen register afterwards, batched per replica into one
//! [`Backfill`] message with whatever else piled up meanwhile. A copy that
//! cannot be queued, sent or applied is counted as [`Drift`], so anti-entropy brings that replica
//! up to date.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kvcore::NodeId;
use kvnet::rpc::{Backfill, Repair, PAGE_BYTES};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::drift::Drift;
use crate::peers::{new_request_id, PeerClient};

/// Copies waiting, at most this many, holding at most [`QUEUE_BYTES`] of keys and values: a
/// replica that is slow or unreachable must not make a node hold a large backlog of values
/// (anti-entropy covers what is dropped).
const QUEUE: usize = 16_384;

/// Bytes of keys and values waiting, at most.
const QUEUE_BYTES: usize = 64 << 20;

/// Copies sent in one message, at most; a message also stops growing past [`PAGE_BYTES`] (so a
/// message is at most that plus one value, within every peer's frame limit).
const BATCH: usize = 512;

/// How long the first copy of a batch waits for others to join it. A copy is for a replica the
/// write did not need, so a few milliseconds cost nothing but save a message per write under
/// load.
const LINGER: Duration = Duration::from_millis(5);

/// The queue of copies to send.
#[derive(Debug)]
pub struct Backfiller {
    tx: mpsc::Sender<(NodeId, Repair)>,
    queued: Arc<AtomicUsize>,
    drift: Arc<Drift>,
}

/// The receiving end, for [`run`].
#[derive(Debug)]
pub struct Queue {
    rx: mpsc::Receiver<(NodeId, Repair)>,
    queued: Arc<AtomicUsize>,
}

/// Bytes of a copy, as counted against the queue's and a message's limits.
fn size(repair: &Repair) -> usize {
    repair.key.len() + repair.register.value.as_ref().map_or(0, |v| v.len()) + 32
}

impl Backfiller {
    /// A queue and its receiving end.
    pub fn new(drift: Arc<Drift>) -> (Self, Queue) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        let queue = Queue {
            rx,
            queued: queued.clone(),
        };
        (Backfiller { tx, queued, drift }, queue)
    }

    /// Queues `repair` for replica `to`.
    pub fn push(&self, to: NodeId, repair: Repair) {
        let bytes = size(&repair);
        let room = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued + bytes <= QUEUE_BYTES).then_some(queued + bytes)
            })
            .is_ok();
        if !room {
            self.drift.note();
            return;
        }
        if self.tx.try_send((to, repair)).is_err() {
            self.queued.fetch_sub(bytes, Ordering::AcqRel);
            self.drift.note();
        }
    }
}

/// Sends the queued copies: everything that piled up within 5 ms of the first one, or
/// while the previous messages were in flight, goes in the next one, so the busier the node, the
/// larger the batches.
pub async fn run(queue: Queue, client: Arc<PeerClient>, drift: Arc<Drift>) {
    let Queue { mut rx, queued } = queue;
    while let Some((to, repair)) = rx.recv().await {
        tokio::time::sleep(LINGER).await;
        let mut batches: HashMap<NodeId, Vec<Repair>> = HashMap::new();
        let mut bytes = size(&repair);
        batches.entry(to).or_default().push(repair);
        let mut taken = 1;
        while taken < BATCH && bytes < PAGE_BYTES {
            let Ok((to, repair)) = rx.try_recv() else {
                break;
            };
            bytes += size(&repair);
            batches.entry(to).or_default().push(repair);
            taken += 1;
        }
        queued.fetch_sub(bytes, Ordering::AcqRel);
        let mut sends = JoinSet::new();
        for (to, repairs) in batches {
            let (client, drift) = (client.clone(), drift.clone());
            sends.spawn(async move {
                let sent = repairs.len();
                match client
                    .call(to, new_request_id(), 1, &Backfill { repairs })
                    .await
                {
                    Ok(applied) if applied.len() == sent && applied.iter().all(|&a| a) => {}
                    _ => drift.note(),
                }
            });
        }
        while sends.join_next().await.is_some() {}
    }
}
