//! The proposer: linearizable single-key operations over the key's replicas (CASPaxos).
//!
//! Every key is an independent register replicated on its `R` owners; an operation is a
//! function from the register's current state to its next ([`Operation`]). A replica
//! coordinating an operation runs two phases against the replicas and needs a majority in each:
//!
//! 1. **Prepare** with a fresh ballot. Each replica promises to ignore lower ballots and answers
//!    with the register it accepted last. The state with the highest ballot among a majority is
//!    the current one.
//! 2. **Accept** the operation's result under the same ballot. Once a majority has accepted, the
//!    new state is chosen and the client gets its answer.
//!
//! Reads ask a majority for their accepted register without promising anything; when a majority
//! answers with the same ballot, that state is chosen and current, and the read returns after
//! one round trip. Otherwise a full round with the identity function settles it. See
//! `docs/consistency.md` for the argument and the failure cases.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kvcore::{Ballot, Entry, ErrorCode, NodeId, Register, Store};
use kvnet::rpc::{Accept, AcceptReply, Prepare, PrepareReply, Read, Repair};
use kvnet::CallError;
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::acceptor::BallotClock;
use crate::backfill::Backfiller;
use crate::clock::Clock;
use crate::error::Error;
use crate::eviction::Room;
use crate::incarnations::{plausible, Incarnations};
use crate::lifecycle::Lifecycle;
use crate::metrics::{bump, Metrics};
use crate::operation::{apply_at, is_seed_key, Operation};
use crate::peers::PeerClient;
use crate::quorum::{Answer, Gather, Quorum};
use crate::topology::Placement;

/// Runs CASPaxos rounds for the keys this node coordinates.
#[derive(Debug)]
pub struct Proposer {
    me: NodeId,
    store: Arc<Store>,
    quorum: Arc<Quorum>,
    client: Arc<PeerClient>,
    ballots: Arc<BallotClock>,
    metrics: Arc<Metrics>,
    lifecycle: Arc<Lifecycle>,
    incarnations: Arc<Incarnations>,
    op_timeout: Duration,
    /// Striped locks queueing proposals per key; see [`Proposer::turn`].
    queues: Box<[tokio::sync::Mutex<()>]>,
    /// Promises kept from this node's last round on a key, when enabled.
    promises: Option<PromiseCache>,
    /// Copies for the replicas a one-round write did not wait for.
    backfill: Backfiller,
    /// What expiry times are compared with.
    clock: Arc<Clock>,
    /// What writes that found no room wait for, in cache mode.
    room: Arc<Room>,
}

/// A majority's promise of this node's next ballot on a key, given with the accept of its last
/// round there: the next round on the key can skip its prepare.
#[derive(Debug, Clone)]
struct Cached {
    /// The map epoch the promise was given under; any change of the map drops it.
    epoch: u64,
    /// The ballot of the round that was accepted.
    accepted: Ballot,
    /// The ballot promised for the next round.
    next: Ballot,
    /// Who promised, and in which incarnation.
    promisers: Vec<(NodeId, u64)>,
}

/// Kept promises, at most [`PromiseCache::CAPACITY`] keys.
#[derive(Debug, Default)]
struct PromiseCache {
    entries: std::sync::Mutex<HashMap<Box<str>, Cached>>,
}

impl PromiseCache {
    /// Bounds the memory of kept promises (about 100 bytes each plus the key), whatever the
    /// number of keys written; a key whose promise was evicted takes two rounds once.
    const CAPACITY: usize = 1 << 16;

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Cached>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the promise kept for `key` if it still holds: same map, and none of the promisers
    /// has restarted since (a restarted replica forgot its promise).
    fn take(&self, key: &str, epoch: u64, incarnations: &Incarnations) -> Option<Cached> {
        let cached = self.lock().remove(key)?;
        let known = incarnations.read();
        let current = cached.epoch == epoch
            && cached
                .promisers
                .iter()
                .all(|(node, inc)| known.get(node).is_none_or(|k| k <= inc));
        current.then_some(cached)
    }

    fn keep(&self, key: &str, cached: Cached) {
        let mut entries = self.lock();
        if entries.len() >= Self::CAPACITY && !entries.contains_key(key) {
            if let Some(evicted) = entries.keys().next().cloned() {
                entries.remove(&evicted);
            }
        }
        entries.insert(key.into(), cached);
    }
}

/// Answers to one round's accepts, gathered as they come.
struct Tally {
    rx: mpsc::UnboundedReceiver<Answer<Accept>>,
    /// Replicas the accepts went to.
    targets: Vec<NodeId>,
    accepted: Vec<NodeId>,
    refused: Vec<NodeId>,
    /// Of `refused`, those that refused only for want of room (`memory_full`): the same accept
    /// may be sent to them again once they have made some.
    full: Vec<NodeId>,
    /// Replicas whose accept may or may not have been applied.
    unknown: Vec<NodeId>,
    /// Replicas that also promised the next ballot, with their incarnations.
    promised_next: Vec<(NodeId, u64)>,
}

impl Tally {
    fn new(rx: mpsc::UnboundedReceiver<Answer<Accept>>, targets: Vec<NodeId>) -> Self {
        let n = targets.len();
        Tally {
            rx,
            targets,
            accepted: Vec::with_capacity(n),
            refused: Vec::new(),
            full: Vec::new(),
            unknown: Vec::new(),
            promised_next: Vec::with_capacity(n),
        }
    }

    /// Gathers answers until the replicas that accepted form a quorum of `placement`. Short of
    /// that, it hears every replica out: a new round is only safe if every one of them refused,
    /// since an accept still in flight could land and the new round would then apply the
    /// operation a second time. It stops early only once a quorum is out of reach and a retry
    /// is already ruled out (something was accepted, or may have been).
    async fn until(
        &mut self,
        key: &str,
        placement: &Placement,
        deadline: Instant,
        ballots: &BallotClock,
    ) {
        while !placement.is_quorum(&self.accepted) && self.answered() < self.targets.len() {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((node, Ok(AcceptReply::Accepted { promised_next })))) => {
                    self.accepted.push(node);
                    let promised = promised_next.map(|incarnation| (node, incarnation));
                    self.promised_next.extend(promised);
                }
                Ok(Some((node, Ok(AcceptReply::Rejected { promised })))) => {
                    ballots.observe(key, promised);
                    self.refused.push(node);
                }
                Ok(Some((node, Err(e)))) if !e.may_have_applied() => {
                    if e.remote_code() == Some(ErrorCode::MemoryFull) {
                        self.full.push(node);
                    }
                    self.refused.push(node);
                }
                Ok(Some((node, _))) => self.unknown.push(node),
                Ok(None) | Err(_) => {
                    let silent: Vec<NodeId> = self.pending().collect();
                    self.unknown.extend(silent);
                    break;
                }
            }
            let mut could: Vec<NodeId> = self.pending().collect();
            could.extend_from_slice(&self.accepted);
            if !placement.is_quorum(&could) && !self.none_applied() {
                break;
            }
        }
    }

    /// Replicas that have not answered.
    fn pending(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.targets.iter().copied().filter(|n| {
            !self.accepted.contains(n) && !self.refused.contains(n) && !self.unknown.contains(n)
        })
    }

    fn answered(&self) -> usize {
        self.accepted.len() + self.refused.len() + self.unknown.len()
    }

    /// Whether nothing was or may have been accepted by these replicas.
    fn none_applied(&self) -> bool {
        self.accepted.is_empty() && self.unknown.is_empty()
    }

    /// Whether the replicas that accepted, those still to answer and those that refused only
    /// for want of room could still make a quorum of `placement`.
    fn room_would_do(&self, placement: &Placement) -> bool {
        let mut could: Vec<NodeId> = self.pending().collect();
        could.extend_from_slice(&self.accepted);
        could.extend_from_slice(&self.full);
        placement.is_quorum(&could)
    }

    /// The replicas that refused for want of room, to be asked again: they count as not
    /// having answered from now on.
    fn take_full(&mut self) -> Vec<NodeId> {
        let full = std::mem::take(&mut self.full);
        self.refused.retain(|n| !full.contains(n));
        full
    }

    /// A sender for the answers of accepts sent again. They come on a new channel, which the
    /// answers still due from the first sends are passed on to, so the tally hears both and
    /// knows, as before, when no answer can come any more (every sender gone).
    fn listen_again(&mut self) -> mpsc::UnboundedSender<Answer<Accept>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut earlier = std::mem::replace(&mut self.rx, rx);
        let forward = tx.clone();
        tokio::spawn(async move {
            while let Some(answer) = earlier.recv().await {
                if forward.send(answer).is_err() {
                    break;
                }
            }
        });
        tx
    }
}

/// Answers to a one-round write's accepts, asked of a first wave of replicas and widened as
/// needed (see [`Quorum::gather_remote`]).
#[derive(Debug, Default)]
struct AcceptCount {
    accepted: usize,
    refused: usize,
    unknown: usize,
    promised_next: Vec<(NodeId, u64)>,
}

impl AcceptCount {
    /// Gathers answers until `needed` replicas accepted. When everyone asked has answered
    /// short of that, the held-back replicas are asked too, unless nothing was accepted anywhere
    /// (every replica asked refused): then the caller can run a full round instead. Stops at
    /// the deadline, counting the replicas that did not answer as unknown.
    async fn until(
        &mut self,
        key: &str,
        gather: &mut Gather<Accept>,
        needed: usize,
        deadline: Instant,
        proposer: &Proposer,
    ) {
        while self.accepted < needed {
            if self.answered() == gather.asked() {
                if gather.held_back().is_empty() || self.none_applied() {
                    return;
                }
                gather.widen(&proposer.quorum);
            }
            match gather.next(&proposer.quorum, deadline).await {
                Some((node, Ok(AcceptReply::Accepted { promised_next }))) => {
                    self.accepted += 1;
                    let promised = promised_next.map(|incarnation| (node, incarnation));
                    self.promised_next.extend(promised);
                }
                Some((_, Ok(AcceptReply::Rejected { promised }))) => {
                    proposer.ballots.observe(key, promised);
                    self.refused += 1;
                }
                Some((_, Err(e))) if !e.may_have_applied() => self.refused += 1,
                Some(_) => {
                    self.unknown += 1;
                    gather.widen(&proposer.quorum);
                }
                None => {
                    self.unknown += gather.asked() - self.answered();
                    return;
                }
            }
        }
    }

    fn answered(&self) -> usize {
        self.accepted + self.refused + self.unknown
    }

    fn none_applied(&self) -> bool {
        self.accepted == 0 && self.unknown == 0
    }
}

/// How a round that relied on a kept promise ended.
enum Fast<T> {
    /// With this answer for the client.
    Done(Result<T, Error>),
    /// Nothing was accepted anywhere: a full round is safe.
    NotApplied,
}

impl Proposer {
    /// A proposer for node `me`; `op_timeout` bounds each operation, retries included.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        me: NodeId,
        store: Arc<Store>,
        quorum: Arc<Quorum>,
        client: Arc<PeerClient>,
        ballots: Arc<BallotClock>,
        metrics: Arc<Metrics>,
        lifecycle: Arc<Lifecycle>,
        incarnations: Arc<Incarnations>,
        op_timeout: Duration,
        cached_promises: bool,
        backfill: Backfiller,
        clock: Arc<Clock>,
        room: Arc<Room>,
    ) -> Self {
        Proposer {
            me,
            store,
            quorum,
            client,
            ballots,
            metrics,
            lifecycle,
            incarnations,
            op_timeout,
            queues: (0..256).map(|_| tokio::sync::Mutex::new(())).collect(),
            promises: cached_promises.then(PromiseCache::default),
            backfill,
            clock,
            room,
        }
    }

    /// Runs `op` with this node as its proposer.
    pub async fn run<O: Operation>(
        &self,
        placement: &Placement,
        op: &O,
        request_id: u64,
    ) -> Result<O::Reply, Error> {
        if placement.replicas == [self.me] {
            let deadline = Instant::now() + self.op_timeout;
            let mut attempt = 0;
            loop {
                let applied = {
                    // Held while the store applies it: once this node has adopted another map
                    // (and may have handed the key over), nothing placed under this one is
                    // applied.
                    let _map = self
                        .quorum
                        .acceptor()
                        .pin_at(placement)
                        .map_err(Error::Remote)?;
                    self.apply_locally(op)
                };
                match applied {
                    Err(Error::Core(kvcore::Error::MemoryFull { needed, .. }))
                        if self.room.worth_waiting(needed) && Instant::now() < deadline =>
                    {
                        self.room.want(needed);
                        attempt += 1;
                        self.wait_for_room(attempt, deadline).await;
                    }
                    applied => return applied,
                }
            }
        }
        self.propose(placement, op, request_id).await
    }

    /// In cache mode, after a round that found no room: waits for this node's evictor to free
    /// some, at most a back-off that grows with `attempt` (other replicas' evictors free room
    /// this node does not hear of).
    async fn wait_for_room(&self, attempt: u32, deadline: Instant) {
        let cap = Duration::from_millis(2u64 << attempt.min(5));
        self.room.wait((Instant::now() + cap).min(deadline)).await;
    }

    /// The lock that queues this node's proposals for `key`: rounds for one key from one node
    /// run one at a time rather than outbidding each other.
    fn turn(&self, key: &str) -> &tokio::sync::Mutex<()> {
        let stripe = kvcore::partition::key_hash(key.as_bytes()) as usize % self.queues.len();
        &self.queues[stripe]
    }

    /// A key whose only replica is this node (`R = 1`, or a one-node cluster): the same prepare
    /// and accept, straight on the local store, with no messages.
    fn apply_locally<O: Operation>(&self, op: &O) -> Result<O::Reply, Error> {
        let key = op.key();
        let now = self.clock.now_ms();
        if !O::WRITES {
            // A read is a use of the key, for eviction's LRU and LFU.
            let current = self.store.read_register(key);
            if !current.is_expired(now) {
                return op.apply(&current, now).1;
            }
            // A read that finds the value expired removes it, as a round would.
        }
        if is_seed_key(key) {
            return self.apply_locally_keeping_tombstone(op);
        }
        // The only replica is this store, so its promise is all there is to outbid: no
        // refusal from elsewhere can come (see `BallotClock`).
        let mut highest = self.store.promise(key);
        loop {
            let ballot = self.ballots.above(highest);
            match self
                .store
                .propose_alone(key, ballot, |current| apply_at(op, current, now))?
            {
                Ok(reply) => return reply,
                // Another local proposal got in between; take a higher ballot.
                Err(promised) => highest = promised,
            }
        }
    }

    /// [`apply_locally`](Self::apply_locally) for a seed key: the same round in two steps,
    /// prepare then accept, because a lone replica's one-step round drops a tombstone at once,
    /// and a seed key's tombstone must stay (see [`is_seed_key`]).
    fn apply_locally_keeping_tombstone<O: Operation>(&self, op: &O) -> Result<O::Reply, Error> {
        let key = op.key();
        loop {
            let ballot = self.ballots.next(key);
            let current = match self.store.prepare(key, ballot, op.grow() as usize)? {
                Ok(current) => current,
                Err(promised) => {
                    self.ballots.observe(key, promised);
                    continue;
                }
            };
            let (next, reply) = apply_at(op, &current, self.clock.now_ms());
            let Some(mut next) = next else {
                return reply;
            };
            next.ballot = ballot;
            match self.store.accept(key, next)? {
                Ok(()) => return reply,
                Err(promised) => self.ballots.observe(key, promised),
            }
        }
    }

    /// Phase-1-free read: asks a majority of the replicas for their register. If they answer
    /// with one ballot, that register is chosen and current: returns it. Otherwise the other
    /// replicas are asked too; if a majority then holds the highest ballot seen, that is
    /// returned (and the replicas that lag are repaired). `None` when a full round must decide.
    pub async fn fast_read(
        &self,
        placement: &Placement,
        key: &str,
        request_id: u64,
    ) -> Result<Option<Option<Entry>>, Error> {
        let chosen = self.chosen_register(placement, key, request_id).await?;
        // An expired value is removed by a full round before anyone is told it is gone.
        let now = self.clock.now_ms();
        Ok(chosen
            .filter(|register| !register.is_expired(now))
            .map(|register| register.entry()))
    }

    /// The register a majority of the replicas agree on (the same ballot), asked without
    /// promising anything: it is chosen, and current when they answer. `None` when they
    /// disagree and a full round must decide.
    async fn chosen_register(
        &self,
        placement: &Placement,
        key: &str,
        request_id: u64,
    ) -> Result<Option<Register>, Error> {
        let total = placement.replicas.len();
        let quorum = placement.quorum();
        let deadline = Instant::now() + self.op_timeout;
        let mut gather = self
            .quorum
            .gather(placement, request_id, Read { key: key.into() });
        let mut registers: Vec<(NodeId, Register)> = Vec::with_capacity(total);
        let mut failed: Vec<NodeId> = Vec::new();
        let holders_of = |registers: &[(NodeId, Register)], ballot: Ballot| -> Vec<NodeId> {
            registers
                .iter()
                .filter(|(_, r)| r.ballot == ballot)
                .map(|(n, _)| *n)
                .collect()
        };
        while registers.len() + failed.len() < total {
            // Done once a quorum holds the highest ballot seen.
            if let Some(highest) = registers.iter().map(|(_, r)| r.ballot).max() {
                if placement.is_quorum(&holders_of(&registers, highest)) {
                    break;
                }
            }
            match gather.next(&self.quorum, deadline).await {
                Some((node, Ok(register))) => {
                    if registers
                        .first()
                        .is_some_and(|(_, r)| r.ballot != register.ballot)
                    {
                        gather.widen(&self.quorum);
                    }
                    registers.push((node, register));
                }
                Some((node, Err(_))) => {
                    failed.push(node);
                    gather.widen(&self.quorum);
                    if !placement.can_reach_quorum(&failed) {
                        break;
                    }
                }
                None => break,
            }
        }
        let answered: Vec<NodeId> = registers.iter().map(|(n, _)| *n).collect();
        if !placement.is_quorum(&answered) {
            return Err(quorum_unavailable(key, registers.len(), quorum));
        }
        let highest = registers
            .iter()
            .map(|(_, r)| r.ballot)
            .max()
            .expect("non-empty");
        if !placement.is_quorum(&holders_of(&registers, highest)) {
            return Ok(None);
        }
        bump(&self.metrics.fast_reads);
        let chosen = registers
            .iter()
            .find(|(_, r)| r.ballot == highest)
            .map(|(_, r)| r.clone())
            .expect("held by a quorum");
        let lagging: Vec<NodeId> = registers
            .iter()
            .filter(|(_, r)| r.ballot < highest)
            .map(|(n, _)| *n)
            .collect();
        if !lagging.is_empty() {
            let rest = gather.into_rest();
            self.repair_in_background(placement, key, chosen.clone(), rest, lagging, request_id);
        }
        Ok(Some(chosen))
    }

    /// Waits (in the background) for the replicas that had not answered a read and brings any
    /// that lag up to `chosen`, under the read's request id.
    fn repair_in_background(
        &self,
        placement: &Placement,
        key: &str,
        chosen: Register,
        mut rest: mpsc::UnboundedReceiver<Answer<Read>>,
        mut lagging: Vec<NodeId>,
        request_id: u64,
    ) {
        let client = self.client.clone();
        let placement = placement.clone();
        let repair = Repair {
            key: key.to_owned(),
            register: chosen,
        };
        self.lifecycle.spawn(async move {
            while let Some((node, answer)) = rest.recv().await {
                if matches!(answer, Ok(register) if register.ballot < repair.register.ballot) {
                    lagging.push(node);
                }
            }
            if lagging.is_empty() {
                return;
            }
            let frame = client.frame_at(placement.map.epoch(), request_id, 1, &repair);
            for node in lagging {
                if let Some(info) = placement.node(node) {
                    let _ = client.send(info, &frame).await;
                }
            }
        });
    }

    /// A full CASPaxos round applying `op`, retried on ballot conflicts until the operation's
    /// deadline.
    async fn propose<O: Operation>(
        &self,
        placement: &Placement,
        op: &O,
        request_id: u64,
    ) -> Result<O::Reply, Error> {
        let key = op.key();
        let quorum = placement.quorum();
        let total = placement.replicas.len();
        let deadline = Instant::now() + self.op_timeout;
        let queued = || Error::Overloaded {
            message: format!("too many writes queued for key {key:?}; nothing was changed"),
        };
        let Ok(mut turn) = tokio::time::timeout_at(deadline, self.turn(key).lock()).await else {
            return Err(queued());
        };
        if let Some(cached) = self
            .promises
            .as_ref()
            .and_then(|p| p.take(key, placement.map.epoch(), &self.incarnations))
        {
            match self
                .fast_round(placement, op, request_id, cached, deadline)
                .await
            {
                Fast::Done(result) => return result,
                Fast::NotApplied => {}
            }
        }
        if op.may_change_nothing() {
            // An operation that may well change nothing (a delete of a missing key, a failed
            // condition) is first tried against the state a majority agrees on: if it changes
            // nothing there, that is its answer, and no replica stores anything for it (a
            // prepare would leave a promise behind on every replica, even for a key that does
            // not exist).
            if let Ok(Some(current)) = self.chosen_register(placement, key, request_id).await {
                if let (None, reply) = apply_at(op, &current, self.clock.now_ms()) {
                    return reply;
                }
            }
        }
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            bump(&self.metrics.rounds);
            let ballot = self.ballots.next(key);

            // Phase 1: promises from a majority.
            let prepare = Prepare {
                key: key.into(),
                ballot,
                grow: op.grow(),
            };
            let mut gather = self.quorum.gather(placement, request_id, prepare);
            let mut promises: Vec<(NodeId, u64, Register)> = Vec::with_capacity(total);
            let promisers = |promises: &[(NodeId, u64, Register)]| -> Vec<NodeId> {
                promises.iter().map(|(n, _, _)| *n).collect()
            };
            let (mut failed, mut conflicted, mut full) = (Vec::new(), false, Vec::new());
            let mut memory_error = None;
            while !placement.is_quorum(&promisers(&promises)) && placement.can_reach_quorum(&failed)
            {
                match gather.next(&self.quorum, deadline).await {
                    Some((
                        node,
                        Ok(PrepareReply::Promised {
                            incarnation,
                            register,
                        }),
                    )) => {
                        // A promise names the replica's current life: a restart this node had
                        // not heard of yet is recorded now, so no accept here counts a promise
                        // from the replica's earlier life.
                        if plausible(incarnation) {
                            self.incarnations.observe(node, incarnation);
                        }
                        promises.push((node, incarnation, register))
                    }
                    Some((node, Ok(PrepareReply::Rejected { promised }))) => {
                        self.ballots.observe(key, promised);
                        conflicted = true;
                        failed.push(node);
                        gather.widen(&self.quorum);
                    }
                    Some((node, Err(CallError::Remote(e)))) if e.code == ErrorCode::MemoryFull => {
                        full.push(node);
                        failed.push(node);
                        memory_error = Some(e);
                        gather.widen(&self.quorum);
                    }
                    Some((node, Err(_))) => {
                        failed.push(node);
                        gather.widen(&self.quorum);
                    }
                    None => break,
                }
            }
            if !placement.is_quorum(&promisers(&promises)) {
                // Nothing was accepted in this round, so failing here is a clean failure.
                if !placement.can_reach_quorum(&full) {
                    // In cache mode the full replicas' evictors are making room (a refused
                    // prepare wakes them): the round runs again once there may be some.
                    // At most the whole entry, as for a new key.
                    let needed = kvcore::store::charge(key, op.grow() as usize);
                    if self.room.worth_waiting(needed) && Instant::now() < deadline {
                        // Not holding the key's turn meanwhile: evictions of other keys queue
                        // on the same lock stripe, and nothing of this round was accepted.
                        drop(turn);
                        self.wait_for_room(attempt, deadline).await;
                        let lock = self.turn(key).lock();
                        turn = tokio::time::timeout_at(deadline, lock)
                            .await
                            .map_err(|_| queued())?;
                        continue;
                    }
                    return Err(Error::Remote(memory_error.expect("counted")));
                }
                if conflicted && Instant::now() < deadline {
                    self.back_off(attempt, deadline).await;
                    continue;
                }
                return Err(quorum_unavailable(key, promises.len(), quorum));
            }

            // The current state is the one accepted with the highest ballot. Registers of one
            // ballot are the same, except a key no replica holds: each then reports its shard's
            // floor version, and the highest keeps the key's versions from repeating.
            let current = promises
                .iter()
                .map(|(_, _, r)| r)
                .max_by_key(|r| (r.ballot, r.version))
                .cloned()
                .expect("a quorum is never empty");
            let (next, reply) = apply_at(op, &current, self.clock.now_ms());
            if next.is_none() && current.ballot == Ballot::ZERO {
                // Nothing was ever accepted on this majority, so nothing is chosen: the key has
                // never been written (or was collected), and that is the current state. Nothing
                // is accepted for it either, so no replica stores an empty register, which would
                // read as "written" to a later seed.
                return reply;
            }
            // An operation that changes nothing is still accepted under the new ballot, so that
            // the state it observed is chosen.
            let mut register = next.unwrap_or(current);
            register.ballot = ballot;

            // Phase 2: every replica is asked to accept, not only the promisers: one that
            // promised late (or not at all, if nothing higher was promised there) still takes
            // the copy, so a chosen value usually reaches all replicas at once.
            let next = self.promises.as_ref().map(|_| self.ballots.above(ballot));
            let accept = Accept {
                key: key.into(),
                register,
                promisers: promises.iter().map(|&(n, inc, _)| (n, inc)).collect(),
                promise_next: next,
            };
            let (tx, rx) = mpsc::unbounded_channel();
            self.quorum
                .send(placement, request_id, &accept, &placement.replicas, &tx);
            drop(tx);
            let mut tally = Tally::new(rx, placement.replicas.clone());
            tally.until(key, placement, deadline, &self.ballots).await;
            // In cache mode, replicas that refused the accept only for want of room are asked
            // again, with the same ballot and register, once their evictors may have made
            // some: a late copy of an accept is safe in Paxos (a replica that has promised a
            // higher ballot since refuses it), and otherwise a write that some replicas took
            // would end with its outcome unknown. Not when nothing was accepted: a new round
            // is then safe, and its prepares wait for room.
            let needed = kvcore::store::charge(key, op.grow() as usize);
            let mut asked_again: u32 = 0;
            while !placement.is_quorum(&tally.accepted)
                && !tally.full.is_empty()
                && !tally.none_applied()
                && tally.room_would_do(placement)
                && self.room.worth_waiting(needed)
                && Instant::now() < deadline
            {
                // Not holding the key's turn meanwhile: an eviction this node coordinates may
                // queue on the same lock stripe, and the room waited for is its to make. A
                // round of this node on the key may run meanwhile; it outbids this one, whose
                // copies are then refused and its outcome unknown, as with any other proposer.
                drop(turn);
                // From about a round trip on: the room comes from other nodes' evictors.
                self.wait_for_room(asked_again + 3, deadline).await;
                let lock = self.turn(key).lock();
                let Ok(relocked) = tokio::time::timeout_at(deadline, lock).await else {
                    return Err(unknown_outcome(tally.accepted.len(), placement));
                };
                turn = relocked;
                asked_again += 1;
                // Without the promise of the next ballot: that one may be this node's next
                // round's by now, and the promise is kept only from a first wave (below).
                let again = Accept {
                    promise_next: None,
                    ..accept.clone()
                };
                let targets = tally.take_full();
                let tx = tally.listen_again();
                self.quorum
                    .send(placement, request_id, &again, &targets, &tx);
                drop(tx);
                tally.until(key, placement, deadline, &self.ballots).await;
            }
            let accepted = tally.accepted.len();
            if placement.is_quorum(&tally.accepted) {
                if let (Some(next), 0) = (next, asked_again) {
                    self.keep_promise(placement, key, ballot, next, tally.promised_next);
                }
                return reply;
            }
            if tally.none_applied() && Instant::now() < deadline {
                // Every replica refused: nothing was accepted anywhere, so a new round is safe.
                self.back_off(attempt, deadline).await;
                continue;
            }
            return Err(unknown_outcome(accepted, placement));
        }
    }

    /// A round that relies on the promise kept from this node's last round on the key: phase 1
    /// was done then, and its result is what this node's replica accepted in that round, so only
    /// the accept is sent. The remote replicas are asked first and this node's own replica
    /// accepts only once enough of them have: if the promise no longer holds (another proposer
    /// ran, a replica restarted), they refuse and nothing was accepted anywhere, so a full round
    /// can follow safely instead of the outcome becoming unknown.
    async fn fast_round<O: Operation>(
        &self,
        placement: &Placement,
        op: &O,
        request_id: u64,
        cached: Cached,
        deadline: Instant,
    ) -> Fast<O::Reply> {
        let key = op.key();
        let current = self.store.register(key);
        // Kept promises are a majority of one replica set; under joint quorums (a membership
        // change) every write takes both phases.
        if current.ballot != cached.accepted || !placement.contains(self.me) || placement.is_joint()
        {
            return Fast::NotApplied;
        }
        if !self.store.admits(key, op.grow() as usize) {
            // A write this node's store has no room for takes the full round, whose prepares
            // admit it (or refuse it cleanly, or in cache mode wait for room): sent straight
            // to the accepts it would take room kept for writes admitted already, and an
            // accept refused for room after others took it leaves the outcome unknown.
            return Fast::NotApplied;
        }
        bump(&self.metrics.rounds);
        let quorum = placement.quorum();
        let (next, reply) = apply_at(op, &current, self.clock.now_ms());
        let mut register = next.unwrap_or(current);
        register.ballot = cached.next;
        let promise_next = self.ballots.above(cached.next);
        let accept = Accept {
            key: key.into(),
            register,
            promisers: cached.promisers,
            promise_next: Some(promise_next),
        };
        // Only as many other replicas as a majority needs are asked to accept (and the next
        // ballot promised); the rest get the chosen register in the background, batched with
        // other writes' copies, unless the first ones fail or are slow.
        let needed = quorum - 1;
        let mut gather = self
            .quorum
            .gather_remote(placement, request_id, accept.clone(), needed);
        let mut count = AcceptCount::default();
        count.until(key, &mut gather, needed, deadline, self).await;
        if count.accepted < needed {
            if count.none_applied() {
                return Fast::NotApplied;
            }
            return Fast::Done(Err(unknown_outcome(count.accepted, placement)));
        }
        let register = accept.register.clone();
        match self.quorum.local(placement, accept) {
            Ok(AcceptReply::Accepted { promised_next }) => {
                let mut promisers = count.promised_next;
                promisers.extend(promised_next.map(|incarnation| (self.me, incarnation)));
                self.keep_promise(placement, key, cached.next, promise_next, promisers);
                for &to in gather.held_back() {
                    let repair = Repair {
                        key: key.into(),
                        register: register.clone(),
                    };
                    self.backfill.push(to, repair);
                }
                Fast::Done(reply)
            }
            // This replica has promised a higher ballot (or cannot take the value) since: the
            // write is chosen if a majority of the others accept it.
            _ => {
                gather.widen(&self.quorum);
                count.until(key, &mut gather, quorum, deadline, self).await;
                if count.accepted >= quorum {
                    Fast::Done(reply)
                } else {
                    Fast::Done(Err(unknown_outcome(count.accepted, placement)))
                }
            }
        }
    }

    /// Keeps the promise of `next` given with the accept of `accepted`, if a majority gave it.
    fn keep_promise(
        &self,
        placement: &Placement,
        key: &str,
        accepted: Ballot,
        next: Ballot,
        promisers: Vec<(NodeId, u64)>,
    ) {
        if let Some(cache) = &self.promises {
            let nodes: Vec<NodeId> = promisers.iter().map(|(n, _)| *n).collect();
            if !placement.is_joint() && placement.is_quorum(&nodes) {
                let epoch = placement.map.epoch();
                cache.keep(
                    key,
                    Cached {
                        epoch,
                        accepted,
                        next,
                        promisers,
                    },
                );
            }
        }
    }

    /// Randomized exponential back-off between rounds, so competing proposers stop colliding.
    async fn back_off(&self, attempt: u32, deadline: Instant) {
        bump(&self.metrics.retries);
        let cap = Duration::from_millis(2u64 << attempt.min(6));
        let wait = cap.mul_f64(rand::thread_rng().gen_range(0.5..1.0));
        tokio::time::sleep_until((Instant::now() + wait).min(deadline)).await;
    }
}

fn unknown_outcome(accepted: usize, placement: &Placement) -> Error {
    Error::OutcomeUnknown {
        reason: format!(
            "{accepted} of {} replicas accepted the write, {} needed; it may still take effect",
            placement.replicas.len(),
            placement.quorum()
        ),
    }
}

fn quorum_unavailable(key: &str, got: usize, quorum: usize) -> Error {
    Error::QuorumUnavailable {
        message: format!(
            "only {got} of the {quorum} replicas needed for key {key:?} answered; nothing was changed"
        ),
    }
}
