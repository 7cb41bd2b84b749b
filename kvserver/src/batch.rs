//! Batches: many single-key reads or writes in one client request, grouped into peer messages
//! by the node that coordinates each item.
//!
//! A batch is not a transaction: each item is the single-key operation it would be on its own,
//! linearizable on its own, and the items of one batch may take effect in any order and
//! interleave with other clients' operations. What a batch saves is messages. The coordinating
//! node groups the items by the node that would coordinate each one — for a read, this node if
//! it is a replica of the key, else the key's first replica not known to be down; for a write,
//! the key's primary — runs its own items itself, and sends every other group as [`MultiGet`]s
//! or [`MultiSet`]s of up to [`ITEMS_PER_MESSAGE`] items, the groups all at once and each
//! group's messages one after another. The receiving node runs each item through its own
//! [`Coordinator`] exactly as a forwarded single-key operation (one hop further). A node runs
//! at most [`WINDOW`] items of a batch at once, so a message is answered well within the peer
//! request timeout and a large batch does not flood the other replicas.
//!
//! When a group's node cannot be asked, its items go the single-key way, which fails over to
//! the key's other replicas — but only where that is safe. A read can always be asked again.
//! A write is sent again only if the message certainly did not run (the node was unreachable,
//! or refused the message as a whole before running any item); when it may have run, every one
//! of its items is reported `outcome_unknown`, never retried blindly.
//!
//! Messages stay bounded: a write group is split into messages of about [`PAGE_BYTES`] of keys
//! and values, and a [`MultiGet`] is answered for as many keys as fit in about [`PAGE_BYTES`] of
//! values, the sender asking again for the rest.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use kvcore::{validate_key, ClusterMap, Entry, ErrorCode, Limits, NodeId, Precondition};
use kvnet::rpc::{MultiGet, MultiSet, Set, SetReply, MAX_BATCH_ITEMS, PAGE_BYTES};
use kvnet::{CallError, RemoteError};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::coordinator::Coordinator;
use crate::detector::FailureDetector;
use crate::error::Error;
use crate::operation::Operation;
use crate::peers::PeerClient;
use crate::topology::{is_reserved, Topology};

/// The most keys one client batch (`POST /mget`, `POST /mset`) may name.
pub const MAX_BATCH: usize = MAX_BATCH_ITEMS;

/// Refuses a client batch that is empty or holds more than [`MAX_BATCH`] items.
pub fn check_size(items: usize) -> Result<(), Error> {
    if items == 0 {
        return Err(Error::bad_request(
            ErrorCode::InvalidRequest,
            "a batch needs at least one item",
        ));
    }
    if items > MAX_BATCH {
        return Err(Error::bad_request(
            ErrorCode::BatchTooLarge,
            format!("a batch holds at most {MAX_BATCH} items, not {items}"),
        ));
    }
    Ok(())
}

/// Bytes an item counts on top of its key and value when messages and replies are sized: its
/// version, lengths and framing.
const ITEM_OVERHEAD: usize = kvcore::store::PAGE_ITEM_OVERHEAD;

/// Items of one batch a node runs at once: its own items as the coordinating node, the items of
/// one peer message, the ones that go the single-key way. Each item is a round trip to other
/// replicas; a thousand at once would open as many connections and make every one of them wait
/// (on two cores, 16 loaded fresh keys faster than 32, and 32 than all of a message at once).
pub const WINDOW: usize = 16;

/// Items the coordinating node puts in one message: two windows' worth, so the receiver answers
/// in about the time of two writes, well within the peer request timeout (which bounds a whole
/// message) however large the batch. A node's messages go one after another: more at once
/// only made every item wait longer (the example `batch` measures it).
pub const ITEMS_PER_MESSAGE: usize = 2 * WINDOW;

/// The answer to one read of a batch.
pub type ReadResult = Result<Option<Entry>, Error>;

/// The answer to one write of a batch.
pub type WriteResult = Result<SetReply, Error>;

/// Runs batches of single-key operations: as the coordinating node, and for the items its
/// peers send it.
#[derive(Debug)]
pub struct BatchCoordinator {
    topology: Arc<Topology>,
    coordinator: Arc<Coordinator>,
    client: Arc<PeerClient>,
    detector: Arc<FailureDetector>,
    limits: Limits,
}

impl BatchCoordinator {
    /// Batches run through `coordinator`, sent through `client`.
    pub fn new(
        topology: Arc<Topology>,
        coordinator: Arc<Coordinator>,
        client: Arc<PeerClient>,
        detector: Arc<FailureDetector>,
        limits: Limits,
    ) -> Self {
        BatchCoordinator {
            topology,
            coordinator,
            client,
            detector,
            limits,
        }
    }

    /// Reads `keys` (valid client keys), each linearizably; the answers are in the order of the
    /// keys.
    pub async fn get_many(self: &Arc<Self>, keys: Vec<String>, request_id: u64) -> Vec<ReadResult> {
        let map = self.topology.map();
        let replicas = self.topology.replicas();
        let me = self.topology.me();
        let count = keys.len();
        let mut groups: BTreeMap<NodeId, Vec<(usize, String)>> = BTreeMap::new();
        for (i, key) in keys.into_iter().enumerate() {
            let placement = Topology::placement_in(&map, replicas, &key);
            // Any replica reads; one this node need not wait for a timeout from.
            let owner = if placement.contains(me) {
                me
            } else {
                let mut replicas = placement.replicas.iter().copied();
                replicas
                    .find(|&n| !self.detector.is_down(n))
                    .unwrap_or_else(|| placement.primary())
            };
            groups.entry(owner).or_default().push((i, key));
        }
        let mut tasks = JoinSet::new();
        for (owner, items) in groups {
            let (this, map) = (self.clone(), map.clone());
            // In this request's span, as every task serving it.
            tasks.spawn(
                async move {
                    if owner == me {
                        this.get_each_alone(items, request_id).await
                    } else {
                        this.get_from(&map, owner, items, request_id).await
                    }
                }
                .in_current_span(),
            );
        }
        join(tasks, count, |_| {
            Err(Error::Remote(RemoteError::new(
                ErrorCode::Internal,
                "the read failed while it was coordinated",
            )))
        })
        .await
    }

    /// Writes `items` (checked client writes), each linearizably; the answers are in the order
    /// of the items.
    pub async fn set_many(self: &Arc<Self>, items: Vec<Set>, request_id: u64) -> Vec<WriteResult> {
        let map = self.topology.map();
        let replicas = self.topology.replicas();
        let me = self.topology.me();
        let count = items.len();
        let mut alone = Vec::new();
        let mut groups: BTreeMap<NodeId, Vec<(usize, Set)>> = BTreeMap::new();
        for (i, set) in items.into_iter().enumerate() {
            let primary = Topology::placement_in(&map, replicas, &set.key).primary();
            // A conditional write's answer may carry the key's value, so it goes alone; so do
            // this node's own writes, and those whose primary is down (the single-key way
            // finds another replica).
            if set.precondition != Precondition::None
                || primary == me
                || self.detector.is_down(primary)
            {
                alone.push((i, set));
            } else {
                groups.entry(primary).or_default().push((i, set));
            }
        }
        let mut tasks = JoinSet::new();
        let this = self.clone();
        tasks.spawn(async move { this.set_each_alone(alone, request_id).await }.in_current_span());
        for (owner, items) in groups {
            let (this, map) = (self.clone(), map.clone());
            tasks.spawn(
                async move {
                    let mut done = Vec::with_capacity(items.len());
                    for message in split_writes(items) {
                        done.extend(this.set_on(&map, owner, message, request_id).await);
                    }
                    done
                }
                .in_current_span(),
            );
        }
        join(tasks, count, |_| {
            Err(Error::OutcomeUnknown {
                reason: "a write of the batch failed while it was coordinated".into(),
            })
        })
        .await
    }

    /// Reads each of `items` the single-key way, [`WINDOW`] at a time.
    async fn get_each_alone(
        self: &Arc<Self>,
        items: Vec<(usize, String)>,
        request_id: u64,
    ) -> Vec<(usize, ReadResult)> {
        let this = self.clone();
        in_window(items, move |key| {
            let this = this.clone();
            async move { this.coordinator.get(&key, 0, request_id).await }
        })
        .await
    }

    /// Writes each of `items` the single-key way, [`WINDOW`] at a time.
    async fn set_each_alone(
        self: &Arc<Self>,
        items: Vec<(usize, Set)>,
        request_id: u64,
    ) -> Vec<(usize, WriteResult)> {
        let this = self.clone();
        in_window(items, move |set| {
            let this = this.clone();
            async move { this.coordinator.write(set, 0, request_id).await }
        })
        .await
    }

    /// Reads `items` through node `owner` with [`MultiGet`]s of at most [`ITEMS_PER_MESSAGE`]
    /// keys, one after another, asking again for the keys a reply left out; if `owner` fails,
    /// reads the rest the single-key way.
    async fn get_from(
        self: &Arc<Self>,
        map: &Arc<ClusterMap>,
        owner: NodeId,
        mut rest: Vec<(usize, String)>,
        request_id: u64,
    ) -> Vec<(usize, ReadResult)> {
        let mut done = Vec::with_capacity(rest.len());
        if let Some(info) = map.node(owner) {
            while !rest.is_empty() {
                let asked = rest.len().min(ITEMS_PER_MESSAGE);
                let keys = rest[..asked].iter().map(|(_, key)| key.clone()).collect();
                let frame = self
                    .client
                    .frame_at(map.epoch(), request_id, 1, &MultiGet { keys });
                match self.client.send(info, &frame).await {
                    Ok(answers) if !answers.is_empty() && answers.len() <= asked => {
                        let answered = rest.drain(..answers.len());
                        for ((i, _), answer) in answered.zip(answers) {
                            done.push((i, answer.map_err(Error::Remote)));
                        }
                    }
                    Ok(answers) => {
                        tracing::warn!(node = %owner, asked, answered = answers.len(),
                            "a batch of reads got a reply of the wrong length");
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(node = %owner, error = %e, "a batch of reads failed");
                        break;
                    }
                }
            }
        }
        // Reads can always be asked again.
        done.extend(self.get_each_alone(rest, request_id).await);
        done
    }

    /// Writes `items` through node `owner` (their primary) with one [`MultiSet`]. If the
    /// message certainly did not run there, the items go the single-key way; if it may have,
    /// each one's outcome is unknown.
    async fn set_on(
        self: &Arc<Self>,
        map: &Arc<ClusterMap>,
        owner: NodeId,
        items: Vec<(usize, Set)>,
        request_id: u64,
    ) -> Vec<(usize, WriteResult)> {
        let Some(info) = map.node(owner) else {
            return self.set_each_alone(items, request_id).await;
        };
        let message = MultiSet {
            items: items.iter().map(|(_, set)| set.clone()).collect(),
        };
        let frame = self.client.frame_at(map.epoch(), request_id, 1, &message);
        drop(message);
        let unknown = |items: Vec<(usize, Set)>, reason: String| {
            items
                .into_iter()
                .map(|(i, _)| {
                    let reason = reason.clone();
                    (i, Err(Error::OutcomeUnknown { reason }))
                })
                .collect()
        };
        match self.client.send(info, &frame).await {
            Ok(answers) if answers.len() == items.len() => items
                .into_iter()
                .zip(answers)
                .map(|((i, _), answer)| (i, answer.map_err(Error::Remote)))
                .collect(),
            Ok(answers) => {
                let reason = format!(
                    "node {owner} answered a batch of {} writes with {} answers",
                    items.len(),
                    answers.len()
                );
                unknown(items, reason)
            }
            Err(e) if never_ran(&e) => {
                tracing::debug!(node = %owner, error = %e, "a batch of writes was not delivered");
                self.set_each_alone(items, request_id).await
            }
            Err(e) => unknown(items, format!("the batch sent to node {owner}: {e}")),
        }
    }

    /// A peer's [`MultiGet`]: each key read as a forwarded [`Get`](kvnet::rpc::Get) sent with
    /// `hops`, at most [`WINDOW`] at a time, answered for as many keys as fit in about
    /// [`PAGE_BYTES`] of keys and values (at least one).
    pub async fn serve_gets(
        self: &Arc<Self>,
        keys: Vec<String>,
        hops: u8,
        request_id: u64,
    ) -> Vec<Result<Option<Entry>, RemoteError>> {
        let mut answers = Vec::new();
        let mut bytes = 0usize;
        let mut next = 0;
        let mut round = WINDOW;
        while next < keys.len() {
            let end = next.saturating_add(round).min(keys.len());
            let this = self.clone();
            let wave = keys[next..end].iter().cloned().enumerate().collect();
            let read = in_window(wave, move |key| {
                let this = this.clone();
                async move { this.serve_get(key, hops, request_id).await }
            })
            .await;
            let read = in_order(read, end - next, |_| {
                Err(RemoteError::new(ErrorCode::Internal, "the read failed"))
            });
            for (key, answer) in keys[next..end].iter().zip(read) {
                let cost = match &answer {
                    Ok(Some(entry)) => entry.value.len(),
                    Ok(None) => 0,
                    Err(e) => e.message.len(),
                }
                .saturating_add(key.len())
                .saturating_add(ITEM_OVERHEAD);
                if !answers.is_empty() && bytes.saturating_add(cost) > PAGE_BYTES {
                    return answers;
                }
                bytes = bytes.saturating_add(cost);
                answers.push(answer);
            }
            next = end;
            // Read next about as many keys as the room left holds at the sizes seen so far, so
            // large values are not read only to be left out.
            let average = bytes / answers.len().max(1) + 1;
            round = (PAGE_BYTES.saturating_sub(bytes) / average).clamp(1, WINDOW);
        }
        answers
    }

    async fn serve_get(
        &self,
        key: String,
        hops: u8,
        request_id: u64,
    ) -> Result<Option<Entry>, RemoteError> {
        check_peer_key(&key)?;
        self.coordinator
            .get(&key, hops, request_id)
            .await
            .map_err(|e| e.to_remote())
    }

    /// A peer's [`MultiSet`]: each write checked and run as a forwarded [`Set`] sent with
    /// `hops`, [`WINDOW`] at a time; every item is answered, in order.
    pub async fn serve_sets(
        self: &Arc<Self>,
        items: Vec<Set>,
        hops: u8,
        request_id: u64,
    ) -> Vec<Result<SetReply, RemoteError>> {
        let count = items.len();
        let this = self.clone();
        let done = in_window(items.into_iter().enumerate().collect(), move |set| {
            let this = this.clone();
            async move { this.serve_set(set, hops, request_id).await }
        })
        .await;
        in_order(done, count, |_| {
            Err(RemoteError::new(
                ErrorCode::OutcomeUnknown,
                "the write failed while it was coordinated",
            ))
        })
    }

    async fn serve_set(
        &self,
        set: Set,
        hops: u8,
        request_id: u64,
    ) -> Result<SetReply, RemoteError> {
        check_peer_key(&set.key)?;
        set.check(&self.limits)?;
        set.check_options().map_err(|e| e.to_remote())?;
        if set.precondition != Precondition::None {
            return Err(RemoteError::new(
                ErrorCode::InvalidRequest,
                "the writes of a batch message are unconditional",
            ));
        }
        self.coordinator
            .write(set, hops, request_id)
            .await
            .map_err(|e| e.to_remote())
    }
}

/// Runs `run` on every item, at most [`WINDOW`] at once (each as a task, so they also run in
/// parallel), and returns the answers with their positions, in the order they came. An item
/// whose task panicked has no answer.
pub async fn in_window<I, T, F, Fut>(items: Vec<(usize, I)>, run: F) -> Vec<(usize, T)>
where
    F: Fn(I) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut done = Vec::with_capacity(items.len());
    let mut items = items.into_iter();
    let mut tasks = JoinSet::new();
    loop {
        while tasks.len() < WINDOW {
            let Some((i, item)) = items.next() else {
                break;
            };
            let running = run(item);
            tasks.spawn(async move { (i, running.await) }.in_current_span());
        }
        match tasks.join_next().await {
            Some(Ok(answer)) => done.push(answer),
            Some(Err(e)) => {
                tracing::error!(error = %e, "an item of a batch ended without an answer")
            }
            None => return done,
        }
    }
}

/// Checks a key of a peer's batch: a valid key that clients may name.
fn check_peer_key(key: &str) -> Result<(), RemoteError> {
    validate_key(key)?;
    if is_reserved(key) {
        return Err(RemoteError::new(
            ErrorCode::InvalidKey,
            "keys starting with U+0000 are reserved for the cluster's own records",
        ));
    }
    Ok(())
}

/// Whether a batch message that failed with `e` certainly ran none of its items: it was not
/// delivered, or the receiver refused it as a whole before running anything (for its epoch, its
/// shape, its size or its protocol version).
fn never_ran(e: &CallError) -> bool {
    matches!(e, CallError::Unreachable { .. })
        || matches!(
            e.remote_code(),
            Some(
                ErrorCode::EpochMismatch
                    | ErrorCode::InvalidRequest
                    | ErrorCode::BodyTooLarge
                    | ErrorCode::UnsupportedProtocol
            )
        )
}

/// Splits one node's writes into messages of about [`PAGE_BYTES`] of keys and values (a
/// message always holds at least one), so every message fits in a peer frame, and of at most
/// [`ITEMS_PER_MESSAGE`] items.
fn split_writes(items: Vec<(usize, Set)>) -> Vec<Vec<(usize, Set)>> {
    let mut messages = Vec::new();
    let mut current: Vec<(usize, Set)> = Vec::new();
    let mut bytes = 0usize;
    for (i, set) in items {
        let cost = set.key.len() + set.value.len() + ITEM_OVERHEAD;
        let full = current.len() == ITEMS_PER_MESSAGE || bytes.saturating_add(cost) > PAGE_BYTES;
        if !current.is_empty() && full {
            messages.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes = bytes.saturating_add(cost);
        current.push((i, set));
    }
    if !current.is_empty() {
        messages.push(current);
    }
    messages
}

/// Waits for every task, each answering some of `count` positions, and puts the answers in
/// order. A position no task answered (one panicked) gets `lost(position)`.
async fn join<T: Send + 'static>(
    mut tasks: JoinSet<Vec<(usize, T)>>,
    count: usize,
    lost: impl Fn(usize) -> T,
) -> Vec<T> {
    let mut answers = Vec::with_capacity(count);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(some) => answers.extend(some),
            Err(e) => tracing::error!(error = %e, "a task of a batch ended without an answer"),
        }
    }
    in_order(answers, count, lost)
}

/// Puts `answers` to positions `0..count` in order; a position without one gets
/// `lost(position)`.
fn in_order<T>(answers: Vec<(usize, T)>, count: usize, lost: impl Fn(usize) -> T) -> Vec<T> {
    let mut slots: Vec<Option<T>> = std::iter::repeat_with(|| None).take(count).collect();
    for (i, answer) in answers {
        if let Some(slot) = slots.get_mut(i) {
            *slot = Some(answer);
        }
    }
    slots
        .into_iter()
        .enumerate()
        .map(|(i, slot)| slot.unwrap_or_else(|| lost(i)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvcore::Value;

    fn set(key: &str, value_len: usize) -> Set {
        Set {
            key: key.into(),
            value: Value::binary(vec![7; value_len]),
            precondition: Precondition::None,
            ttl_ms: None,
            keep_ttl: false,
        }
    }

    #[test]
    fn writes_are_split_into_messages_that_fit_a_frame() {
        let small: Vec<(usize, Set)> = (0..2500).map(|i| (i, set(&format!("k{i}"), 10))).collect();
        let messages = split_writes(small);
        let sizes: Vec<usize> = messages.iter().map(Vec::len).collect();
        assert_eq!(sizes.len(), 2500_usize.div_ceil(ITEMS_PER_MESSAGE));
        assert!(sizes.iter().all(|&n| n <= ITEMS_PER_MESSAGE));
        assert_eq!(sizes.iter().sum::<usize>(), 2500);
        let big: Vec<(usize, Set)> = (0..5).map(|i| (i, set("k", 600 << 10))).collect();
        let messages = split_writes(big);
        // Two 600 KiB values do not fit in one page: each goes alone, the largest alone too.
        assert_eq!(messages.len(), 5);
        let order: Vec<usize> = messages.concat().into_iter().map(|(i, _)| i).collect();
        assert_eq!(order, [0, 1, 2, 3, 4]);
        let huge = vec![(0, set("k", 4 << 20))];
        assert_eq!(split_writes(huge).len(), 1);
    }

    #[test]
    fn only_refusals_before_anything_ran_count_as_never_run() {
        let node = NodeId(1);
        assert!(never_ran(&CallError::Unreachable {
            node,
            reason: "refused".into()
        }));
        assert!(never_ran(&CallError::Remote(RemoteError::new(
            ErrorCode::EpochMismatch,
            "later map"
        ))));
        assert!(!never_ran(&CallError::Timeout {
            node,
            timeout: std::time::Duration::from_secs(1)
        }));
        assert!(!never_ran(&CallError::Broken {
            node,
            reason: "reset".into()
        }));
        // A node that stopped while handling the message may have run some of it.
        assert!(!never_ran(&CallError::Remote(RemoteError::new(
            ErrorCode::ShuttingDown,
            "stopping"
        ))));
    }

    #[tokio::test]
    async fn answers_are_put_back_in_order_and_lost_ones_reported() {
        let mut tasks = JoinSet::new();
        tasks.spawn(async { vec![(2, "c"), (0, "a")] });
        tasks.spawn(async { vec![(1, "b")] });
        tasks.spawn(async { panic!("lost") });
        let got = join(tasks, 4, |_| "lost").await;
        assert_eq!(got, ["a", "b", "c", "lost"]);
    }
}
