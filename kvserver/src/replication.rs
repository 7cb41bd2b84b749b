//! Linearizable single-key operations over the key's replicas: CASPaxos.
//!
//! Every key is an independent register replicated on its `R` owners; an operation is a
//! function from the register's current state to its next. A replica coordinating an operation
//! runs two phases against all replicas and needs a majority in each:
//!
//! 1. **Prepare** with a fresh ballot. Each replica promises to ignore lower ballots and answers
//!    with the register it accepted last. The state with the highest ballot among a majority is
//!    the current one.
//! 2. **Accept** the function's result under the same ballot. Once a majority has accepted, the
//!    new state is chosen and the client gets its answer.
//!
//! Reads ask the replicas for their accepted register without promising anything; when a
//! majority answers with the same ballot, that state is chosen and current, and the read
//! returns after one round trip. Otherwise a full round with the identity function settles it.
//! See `docs/consistency.md` for the argument and the failure cases.

use std::time::Duration;

use kvcore::{Entry, NodeId, Precondition, Register, Value, Version};
use kvnet::{ForwardError, PeerReply, PeerRequest, RemoteError, MAX_HOPS};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::error::Error;
use crate::node::{Counters, Node};

/// What an operation does to a key's state.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    Read,
    Set {
        value: Value,
        precondition: Precondition,
    },
    Delete,
    Incr(i64),
}

/// What the client is told.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    Read(Option<Entry>),
    Written(Version),
    Conflict(Option<Entry>),
    Deleted(Option<Entry>),
    Incremented(Entry),
}

impl Change {
    /// The register after applying the change to `current`, and the client's answer. A change
    /// that does not apply (a failed condition, a non-integer to increment) leaves the state as
    /// it is; it is still accepted under the new ballot so that what it observed is chosen.
    fn apply(&self, current: &Register) -> (Option<Register>, Result<Outcome, Error>) {
        let entry = current.entry();
        let next = |value: Option<Value>| Register {
            ballot: current.ballot,
            version: current.version.next(),
            value,
        };
        match self {
            Change::Read => (None, Ok(Outcome::Read(entry))),
            Change::Set {
                value,
                precondition,
            } => {
                if precondition.holds(entry.as_ref()) {
                    let reg = next(Some(value.clone()));
                    let version = reg.version;
                    (Some(reg), Ok(Outcome::Written(version)))
                } else {
                    (None, Ok(Outcome::Conflict(entry)))
                }
            }
            Change::Delete => match entry {
                Some(_) => (Some(next(None)), Ok(Outcome::Deleted(entry))),
                None => (None, Ok(Outcome::Deleted(None))),
            },
            Change::Incr(by) => {
                let base = match &entry {
                    None => Ok(0),
                    Some(e) => e.value.as_i64().ok_or_else(|| Error::BadRequest {
                        code: "not_an_integer",
                        message: format!(
                            "the value is {}, not an integer: only integers can be incremented",
                            e.value.encoding()
                        ),
                    }),
                };
                match base.and_then(|b| {
                    b.checked_add(*by).ok_or_else(|| Error::BadRequest {
                        code: "overflow",
                        message: format!("{b} + {by} overflows a signed 64-bit integer"),
                    })
                }) {
                    Ok(sum) => {
                        let reg = next(Some(Value::integer(sum)));
                        let entry = reg.entry().expect("just set");
                        (Some(reg), Ok(Outcome::Incremented(entry)))
                    }
                    Err(e) => (None, Err(e)),
                }
            }
        }
    }

    /// Value bytes the change may add on a replica, checked against its budget in phase 1.
    fn grow(&self) -> usize {
        match self {
            Change::Set { value, .. } => value.len(),
            Change::Incr(_) => 8,
            Change::Read | Change::Delete => 0,
        }
    }

    /// The request forwarding this change to a replica.
    pub(crate) fn into_request(self, key: &str) -> PeerRequest {
        let key = key.to_owned();
        match self {
            Change::Read => PeerRequest::Get { key },
            Change::Set {
                value,
                precondition,
            } => PeerRequest::Set {
                key,
                value,
                precondition,
            },
            Change::Delete => PeerRequest::Delete { key },
            Change::Incr(by) => PeerRequest::Incr { key, by },
        }
    }
}

impl Outcome {
    pub(crate) fn into_reply(self) -> PeerReply {
        match self {
            Outcome::Read(entry) => PeerReply::Entry { entry },
            Outcome::Written(version) => PeerReply::Written { version },
            Outcome::Conflict(current) => PeerReply::Conflict { current },
            Outcome::Deleted(entry) => PeerReply::Deleted { entry },
            Outcome::Incremented(entry) => PeerReply::Incremented { entry },
        }
    }

    pub(crate) fn from_reply(reply: PeerReply) -> Result<Outcome, Error> {
        Ok(match reply {
            PeerReply::Entry { entry } => Outcome::Read(entry),
            PeerReply::Written { version } => Outcome::Written(version),
            PeerReply::Conflict { current } => Outcome::Conflict(current),
            PeerReply::Deleted { entry } => Outcome::Deleted(entry),
            PeerReply::Incremented { entry } => Outcome::Incremented(entry),
            other => {
                return Err(Error::Remote(RemoteError::new(
                    "unexpected_reply",
                    format!("unexpected reply to a forwarded operation: {other:?}"),
                )))
            }
        })
    }
}

/// One replica's answer, with whether the request may have been applied if it failed.
type Answer = (NodeId, Result<PeerReply, ForwardError>);

/// A request sent to a majority of a key's replicas, with the rest held back until needed.
struct Gather {
    tx: mpsc::UnboundedSender<Answer>,
    rx: mpsc::UnboundedReceiver<Answer>,
    /// Replicas not asked yet.
    rest: Vec<NodeId>,
    request: PeerRequest,
    /// When to ask the rest anyway, if the first ones are slow.
    hedge: Instant,
}

impl Gather {
    /// Asks the replicas held back (once).
    fn widen(&mut self, node: &Node) {
        if !self.rest.is_empty() {
            let rest = std::mem::take(&mut self.rest);
            node.send_to(&rest, &self.request, &self.tx);
        }
    }

    /// The next answer, or `None` once `deadline` passes. Asks the rest when the hedge time
    /// passes first.
    async fn next(&mut self, node: &Node, deadline: Instant) -> Option<Answer> {
        loop {
            let until = if self.rest.is_empty() {
                deadline
            } else {
                self.hedge.min(deadline)
            };
            match tokio::time::timeout_at(until, self.rx.recv()).await {
                Ok(answer) => return answer,
                Err(_) if Instant::now() >= deadline => return None,
                Err(_) => self.widen(node),
            }
        }
    }
}

impl Node {
    /// Runs `change` on `key` as a replica-coordinator. `hops` is how often the request was
    /// forwarded to get here.
    pub(crate) async fn execute(
        &self,
        change: &Change,
        key: &str,
        hops: u8,
    ) -> Result<Outcome, Error> {
        let replicas = self.owners(key);
        if replicas.len() == 1 && replicas[0] == self.id {
            return self.apply_locally(change, key);
        }
        if let Change::Read = change {
            if let Some(entry) = self.fast_read(key).await? {
                return Ok(Outcome::Read(entry));
            }
            // The replicas disagree: a write is in flight or a replica lags. A full round
            // settles it; the primary runs it if it can, queued with its own writes, rather
            // than this node outbidding them.
            let primary = self.owner(key);
            if primary != self.id && hops < MAX_HOPS && !self.membership.is_down(primary) {
                let map = self.map();
                let info = map.node(primary).expect("replicas are members of the map");
                let request = PeerRequest::Get { key: key.into() };
                // The primary must settle it itself: send with the hops spent.
                match self
                    .forwarder
                    .send(info, MAX_HOPS, self.envelope(request))
                    .await
                {
                    Ok(reply) => return Outcome::from_reply(reply),
                    Err(e) if e.may_have_applied() => return Err(Error::from_forward(e, false)),
                    Err(_) => {}
                }
            }
        }
        self.propose(change, key).await
    }

    /// A key whose only replica is this node (`R = 1`, or a one-node cluster): the same
    /// prepare and accept, straight on the local store, with no messages.
    fn apply_locally(&self, change: &Change, key: &str) -> Result<Outcome, Error> {
        if let Change::Read = change {
            return Ok(Outcome::Read(self.store.register(key).entry()));
        }
        loop {
            let ballot = self.next_ballot();
            let current = match self.store.prepare(key, ballot, change.grow())? {
                Ok(current) => current,
                // Another local proposal got in between; take a higher ballot.
                Err(promised) => {
                    self.observe_ballot(promised);
                    continue;
                }
            };
            let (next, outcome) = change.apply(&current);
            let Some(mut register) = next else {
                return outcome;
            };
            register.ballot = ballot;
            match self.store.accept(key, register)? {
                Ok(()) => return outcome,
                Err(promised) => self.observe_ballot(promised),
            }
        }
    }

    /// Sends `request` to every replica at once (the local one is answered in place) and
    /// returns a channel of answers.
    fn fan_out(
        &self,
        replicas: &[NodeId],
        request: PeerRequest,
    ) -> mpsc::UnboundedReceiver<Answer> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.send_to(replicas, &request, &tx);
        rx
    }

    /// Sends `request` to a majority of the replicas first — this node's own replica among them
    /// when it votes — and to the others only when one of those fails, disagrees or is slow
    /// (see [`Gather`]). The common case then costs `quorum - 1` remote messages, not `R - 1`.
    fn gather(&self, replicas: &[NodeId], request: PeerRequest) -> Gather {
        let quorum = replicas.len() / 2 + 1;
        let mut order: Vec<NodeId> = Vec::with_capacity(replicas.len());
        if replicas.contains(&self.id) && self.can_vote(request.key().unwrap_or_default()) {
            order.push(self.id);
        }
        // Remote replicas in turn, so reads spread over them; those known down go last.
        let turn = self
            .spread
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut remote: Vec<NodeId> = replicas.iter().copied().filter(|&r| r != self.id).collect();
        if !remote.is_empty() {
            let len = remote.len();
            remote.rotate_left(turn % len);
        }
        remote.sort_by_key(|&r| self.membership.is_down(r));
        order.extend(remote);
        if replicas.contains(&self.id) && !order.contains(&self.id) {
            order.push(self.id);
        }
        let rest = order.split_off(quorum.min(order.len()));
        let (tx, rx) = mpsc::unbounded_channel();
        self.send_to(&order, &request, &tx);
        Gather {
            tx,
            rx,
            rest,
            request,
            hedge: Instant::now() + self.config.heartbeat_interval,
        }
    }

    /// Sends `request` to `targets`, answers to `tx`.
    fn send_to(
        &self,
        targets: &[NodeId],
        request: &PeerRequest,
        tx: &mpsc::UnboundedSender<Answer>,
    ) {
        let map = self.map();
        for &to in targets {
            if to == self.id {
                let answer = self.acceptor(request.clone()).map_err(ForwardError::Remote);
                let _ = tx.send((to, answer));
                continue;
            }
            // A replica the failure detector reports down still gets the request (it may have
            // just come back), but only for as long as a heartbeat takes: nobody waits for it.
            let patience = self
                .membership
                .is_down(to)
                .then_some(self.config.heartbeat_interval);
            let info = map
                .node(to)
                .expect("replicas are members of the map")
                .clone();
            let forwarder = self.forwarder.clone();
            let envelope = self.envelope(request.clone());
            let tx = tx.clone();
            tokio::spawn(async move {
                let send = forwarder.send(&info, 1, envelope);
                let answer = match patience {
                    None => send.await,
                    Some(limit) => match tokio::time::timeout(limit, send).await {
                        Ok(answer) => answer,
                        Err(_) => Err(ForwardError::Timeout {
                            node: to,
                            timeout: limit,
                        }),
                    },
                };
                let _ = tx.send((to, answer));
            });
        }
    }

    /// Phase-1-free read: asks a majority of the replicas for their register. If they answer
    /// with one ballot, that register is chosen and current: returns it. Otherwise the other
    /// replicas are asked too; if a majority then holds the highest ballot seen, that is
    /// returned (and the replicas that lag are repaired). `None` when a full round must decide.
    pub(crate) async fn fast_read(&self, key: &str) -> Result<Option<Option<Entry>>, Error> {
        let replicas = self.owners(key);
        let quorum = replicas.len() / 2 + 1;
        let deadline = Instant::now() + self.config.op_timeout;
        let mut gather = self.gather(&replicas, PeerRequest::Read { key: key.into() });
        let mut registers: Vec<(NodeId, Register)> = Vec::with_capacity(replicas.len());
        let mut failed = 0;
        while registers.len() + failed < replicas.len() {
            // Done once a majority holds the highest ballot seen.
            let highest = registers.iter().map(|(_, r)| r.ballot).max();
            let holders = registers
                .iter()
                .filter(|(_, r)| Some(r.ballot) == highest)
                .count();
            if holders >= quorum {
                break;
            }
            match gather.next(self, deadline).await {
                Some((node, Ok(PeerReply::Register { register }))) => {
                    self.observe_ballot(register.ballot);
                    if registers
                        .first()
                        .is_some_and(|(_, r)| r.ballot != register.ballot)
                    {
                        gather.widen(self);
                    }
                    registers.push((node, register));
                }
                Some(_) => {
                    failed += 1;
                    gather.widen(self);
                    if failed > replicas.len() - quorum {
                        break;
                    }
                }
                None => break,
            }
        }
        if registers.len() < quorum {
            return Err(quorum_unavailable(key, registers.len(), quorum));
        }
        let highest = registers
            .iter()
            .map(|(_, r)| r.ballot)
            .max()
            .expect("non-empty");
        let holders = registers
            .iter()
            .filter(|(_, r)| r.ballot == highest)
            .count();
        if holders < quorum {
            return Ok(None);
        }
        Counters::bump(&self.counters.fast_reads);
        let chosen = registers
            .iter()
            .find(|(_, r)| r.ballot == highest)
            .map(|(_, r)| r.clone())
            .expect("held by a quorum");
        let entry = chosen.entry();
        let lagging: Vec<NodeId> = registers
            .iter()
            .filter(|(_, r)| r.ballot < highest)
            .map(|(n, _)| *n)
            .collect();
        if !lagging.is_empty() {
            self.repair_in_background(key, chosen, gather.rx, lagging);
        }
        Ok(Some(entry))
    }

    /// Waits (in the background) for the replicas that had not answered a read and brings any
    /// that lag up to `chosen`.
    fn repair_in_background(
        &self,
        key: &str,
        chosen: Register,
        mut rx: mpsc::UnboundedReceiver<Answer>,
        mut lagging: Vec<NodeId>,
    ) {
        let map = self.map();
        let forwarder = self.forwarder.clone();
        let key = key.to_owned();
        let incarnation = self.incarnation;
        let from = self.id;
        tokio::spawn(async move {
            while let Some((node, answer)) = rx.recv().await {
                if let Ok(PeerReply::Register { register }) = answer {
                    if register.ballot < chosen.ballot {
                        lagging.push(node);
                    }
                }
            }
            for node in lagging {
                let Some(info) = map.node(node) else { continue };
                let envelope = kvnet::Envelope {
                    from,
                    epoch: map.epoch(),
                    incarnation,
                    request: PeerRequest::Repair {
                        key: key.clone(),
                        register: chosen.clone(),
                    },
                };
                let _ = forwarder.send(info, 1, envelope).await;
            }
        });
    }

    /// A full CASPaxos round applying `change`, retried on ballot conflicts until the
    /// operation's deadline.
    async fn propose(&self, change: &Change, key: &str) -> Result<Outcome, Error> {
        let replicas = self.owners(key);
        let quorum = replicas.len() / 2 + 1;
        let tolerated = replicas.len() - quorum;
        let deadline = Instant::now() + self.config.op_timeout;
        let Ok(_turn) = tokio::time::timeout_at(deadline, self.proposal_turn(key).lock()).await
        else {
            return Err(Error::Overloaded {
                message: format!("too many writes queued for key {key:?}; nothing was changed"),
            });
        };
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let ballot = self.next_ballot();

            // Phase 1: promises from a majority.
            let request = PeerRequest::Prepare {
                key: key.into(),
                ballot,
                grow: change.grow(),
            };
            let mut gather = self.gather(&replicas, request);
            let mut promises: Vec<(NodeId, u64, Register)> = Vec::new();
            let (mut failed, mut conflicted, mut full) = (0, false, 0);
            let mut memory_error = None;
            while promises.len() < quorum && failed <= tolerated {
                match gather.next(self, deadline).await {
                    Some((
                        node,
                        Ok(PeerReply::Promised {
                            incarnation,
                            register,
                        }),
                    )) => promises.push((node, incarnation, register)),
                    Some((_, Ok(PeerReply::Rejected { promised }))) => {
                        self.observe_ballot(promised);
                        conflicted = true;
                        failed += 1;
                        gather.widen(self);
                    }
                    Some((_, Err(ForwardError::Remote(e)))) if e.code == "memory_full" => {
                        full += 1;
                        failed += 1;
                        memory_error = Some(e);
                        gather.widen(self);
                    }
                    Some(_) => {
                        failed += 1;
                        gather.widen(self);
                    }
                    None => break,
                }
            }
            if promises.len() < quorum {
                // Nothing was accepted in this round, so failing here is a clean failure.
                if full > tolerated {
                    return Err(Error::Remote(memory_error.expect("counted")));
                }
                if conflicted && Instant::now() < deadline {
                    self.back_off(attempt, deadline).await;
                    continue;
                }
                return Err(quorum_unavailable(key, promises.len(), quorum));
            }

            // The current state is the one accepted with the highest ballot.
            let current = promises
                .iter()
                .map(|(_, _, r)| r)
                .max_by_key(|r| r.ballot)
                .cloned()
                .expect("a quorum is never empty");
            let (next, outcome) = change.apply(&current);
            let mut register = next.unwrap_or(current);
            register.ballot = ballot;

            // Phase 2: a majority accepts.
            let promisers = promises.iter().map(|&(n, inc, _)| (n, inc)).collect();
            // Every replica is asked to accept, not only the promisers: one that promised late
            // (or not at all, if nothing higher was promised there) still takes the copy, so a
            // chosen value usually reaches all replicas at once.
            let targets = replicas.clone();
            let request = PeerRequest::Accept {
                key: key.into(),
                register,
                promisers,
            };
            let mut rx = self.fan_out(&targets, request);
            let (mut accepted, mut refused, mut unknown) = (0, 0, 0);
            // Stop at a majority of accepts. Short of one, hear every replica out: a new round
            // is only safe if every one of them refused, since an accept still in flight could
            // land and the new round would then apply the change a second time.
            while accepted < quorum && accepted + refused + unknown < targets.len() {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some((_, Ok(PeerReply::Accepted)))) => accepted += 1,
                    Ok(Some((_, Ok(PeerReply::Rejected { promised })))) => {
                        self.observe_ballot(promised);
                        refused += 1;
                    }
                    Ok(Some((_, Err(e)))) if !e.may_have_applied() => refused += 1,
                    Ok(Some(_)) => unknown += 1,
                    Ok(None) | Err(_) => {
                        unknown = targets.len() - accepted - refused;
                        break;
                    }
                }
                let pending = targets.len() - accepted - refused - unknown;
                if accepted + pending < quorum && (accepted > 0 || unknown > 0) {
                    // No majority is possible and a retry is already ruled out: the outcome is
                    // unknown whatever the rest answer.
                    break;
                }
            }
            if accepted >= quorum {
                return outcome;
            }
            if accepted == 0 && unknown == 0 && Instant::now() < deadline {
                // Every replica refused: nothing was accepted anywhere, so a new round is safe.
                self.back_off(attempt, deadline).await;
                continue;
            }
            return Err(Error::OutcomeUnknown {
                reason: format!(
                    "{accepted} of {} replicas accepted the write, {quorum} needed; it may still take effect",
                    replicas.len()
                ),
            });
        }
    }

    /// Randomized exponential back-off between rounds, so competing proposers stop colliding.
    async fn back_off(&self, attempt: u32, deadline: Instant) {
        Counters::bump(&self.counters.retries);
        let cap = Duration::from_millis(2u64 << attempt.min(6));
        let jitter = jitter(
            self.id.0 as u64
                ^ attempt as u64
                ^ self.round.load(std::sync::atomic::Ordering::Relaxed),
        );
        let wait = cap.mul_f64(0.5 + jitter / 2.0);
        tokio::time::sleep_until((Instant::now() + wait).min(deadline)).await;
    }
}

fn quorum_unavailable(key: &str, got: usize, quorum: usize) -> Error {
    Error::QuorumUnavailable {
        message: format!(
            "only {got} of the {quorum} replicas needed for key {key:?} answered; nothing was changed"
        ),
    }
}

/// A number in [0, 1) derived from `seed` and the clock, for back-off jitter.
fn jitter(seed: u64) -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let x = kvcore::partition::mix64(seed ^ nanos);
    (x >> 11) as f64 / (1u64 << 53) as f64
}
