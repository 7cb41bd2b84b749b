//! The acceptor: a replica's side of the replication protocol.
//!
//! It answers [`Prepare`], [`Accept`], [`Read`] and [`Repair`] for one key at a time, applying
//! the acceptor rules atomically in the store, and serves the bulk [`SyncShard`] and
//! [`DigestShard`] pages used by catch-up and anti-entropy. While the node is catching up after
//! a start it refuses to vote for keys whose other replicas it has not merged yet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLockReadGuard};

use kvcore::{Ballot, ClusterMap, ErrorCode, NodeId, Register, Store, Value};
use kvnet::rpc::{
    Accept, AcceptReply, DigestPage, DigestShard, Prepare, PrepareReply, Read, Repair, SyncPage,
    SyncShard, PAGE_BYTES,
};
use kvnet::{CallError, RemoteError, Rpc};

use crate::drift::Drift;
use crate::eviction::Room;
use crate::incarnations::{Incarnation, Incarnations};
use crate::metrics::{bump, Metrics};
use crate::readiness::Readiness;
use crate::topology::{replicas_into, Placement, Topology};

/// The ballots this node proposes with, per key.
///
/// A key's rounds count the proposals on that key only: the next ballot is one round above the
/// highest this node knows of for the key — its own replica's promise (a node proposes only for
/// keys it replicates, and its replica promises every prepare it is sent, its own included) or a
/// higher one another replica refused with. So rounds grow with one key's writes, not with the
/// whole cluster's, and 40 bits of them outlast any key. Safety does not rest on the choice:
/// a replica promises a ballot only once and only above everything it promised, so two proposals
/// with one ballot can never both gather a majority; a ballot too low is refused and retried
/// above the refusal.
#[derive(Debug)]
pub struct BallotClock {
    me: NodeId,
    store: Arc<Store>,
    /// Ballots other replicas refused with, for keys whose next proposal must outbid them.
    refused: Mutex<HashMap<Box<str>, Ballot>>,
}

impl BallotClock {
    /// Refusals kept at most; a key whose refusal was dropped takes one more round.
    const REFUSALS: usize = 4096;

    /// A clock for proposals of node `me`, which replicates its keys in `store`.
    pub fn new(me: NodeId, store: Arc<Store>) -> Self {
        BallotClock {
            me,
            store,
            refused: Mutex::default(),
        }
    }

    fn refused(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Ballot>> {
        self.refused.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that a replica refused a proposal on `key` for `ballot`, so the next one outbids it.
    pub fn observe(&self, key: &str, ballot: Ballot) {
        if ballot <= self.store.promise(key) {
            return;
        }
        let mut refused = self.refused();
        if refused.len() >= Self::REFUSALS && !refused.contains_key(key) {
            if let Some(any) = refused.keys().next().cloned() {
                refused.remove(&any);
            }
        }
        let kept = refused.entry(key.into()).or_insert(ballot);
        *kept = (*kept).max(ballot);
    }

    /// A ballot above everything this node knows was promised for `key`.
    pub fn next(&self, key: &str) -> Ballot {
        let mut highest = self.store.promise(key);
        if let Some(refused) = self.refused().remove(key) {
            highest = highest.max(refused);
        }
        Self::after(highest, self.me)
    }

    /// The ballot of `me` one round above `ballot`.
    pub fn after(ballot: Ballot, me: NodeId) -> Ballot {
        Ballot::new(ballot.round().saturating_add(1), me)
    }

    /// This node's ballot one round above `ballot`.
    pub fn above(&self, ballot: Ballot) -> Ballot {
        Self::after(ballot, self.me)
    }
}

/// A replica's acceptor.
#[derive(Debug)]
pub struct Acceptor {
    incarnation: Arc<Incarnation>,
    store: Arc<Store>,
    topology: Arc<Topology>,
    readiness: Arc<Readiness>,
    incarnations: Arc<Incarnations>,
    ballots: Arc<BallotClock>,
    metrics: Arc<Metrics>,
    drift: Arc<Drift>,
    room: Arc<Room>,
}

/// A key-scoped acceptor message, answered in place (by the local replica) or for a peer.
pub trait AcceptorRpc: Rpc + Clone {
    /// The key the message is about.
    fn key(&self) -> &str;
    /// The acceptor's answer, for a key replicated as `placement` says.
    fn apply(self, acceptor: &Acceptor, placement: &Placement) -> Result<Self::Reply, RemoteError>;

    /// What the message carries, for the checks every peer input gets.
    fn fields(&self) -> AcceptorFields<'_>;

    /// Whether this answer leaves the replica without a copy the round may have made chosen:
    /// a refused or lost accept.
    fn misses_copy(_answer: &Result<Self::Reply, CallError>) -> bool {
        false
    }

    /// The higher ballot a replica refused this message for, if it did.
    fn refused_for(_answer: &Result<Self::Reply, CallError>) -> Option<Ballot> {
        None
    }
}

/// The fields of an acceptor message that are checked before it is applied.
#[derive(Debug, Default)]
pub struct AcceptorFields<'a> {
    /// Ballots the sender proposes with (its own): a message carries at most two.
    pub own_ballots: [Option<Ballot>; 2],
    /// A register the message carries.
    pub register: Option<&'a Register>,
    /// The value the message carries.
    pub value: Option<&'a Value>,
    /// Value bytes a proposal may add.
    pub grow: u32,
    /// The replicas a proposal counted promises from.
    pub promisers: &'a [(NodeId, u64)],
}

impl Acceptor {
    /// The acceptor of a node, in its current incarnation.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        incarnation: Arc<Incarnation>,
        store: Arc<Store>,
        topology: Arc<Topology>,
        readiness: Arc<Readiness>,
        incarnations: Arc<Incarnations>,
        ballots: Arc<BallotClock>,
        metrics: Arc<Metrics>,
        drift: Arc<Drift>,
        room: Arc<Room>,
    ) -> Self {
        Acceptor {
            incarnation,
            store,
            topology,
            readiness,
            incarnations,
            ballots,
            metrics,
            drift,
            room,
        }
    }

    /// Notes a write this replica had no room for, so that in cache mode its evictor makes
    /// some; passes the error on.
    fn no_room(&self, e: kvcore::Error) -> kvcore::Error {
        if let kvcore::Error::MemoryFull { needed, .. } = e {
            self.room.want(needed);
        }
        e
    }

    /// Notes that a replica refused a proposal on `key` for `ballot`, so this node's next
    /// proposal on it outbids it.
    pub fn observe(&self, key: &str, ballot: Ballot) {
        self.ballots.observe(key, ballot);
    }

    /// The replica's store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Answers a peer's key-scoped message under `map` (the current map, held by the caller;
    /// see [`Topology::pin`]).
    pub fn handle_in<R: AcceptorRpc>(
        &self,
        map: &Arc<ClusterMap>,
        request: R,
    ) -> Result<R::Reply, RemoteError> {
        let placement = Topology::placement_in(map, self.topology.replicas(), request.key());
        self.answer(&placement, request)
    }

    /// This node's own answer to a message of a round it runs on a key placed as `placement`
    /// says: refused if this node has adopted another map since (the round must place the key
    /// again), like a peer's message of another epoch.
    pub fn handle_placed<R: AcceptorRpc>(
        &self,
        placement: &Placement,
        request: R,
    ) -> Result<R::Reply, RemoteError> {
        let _map = self.pin_at(placement)?;
        self.answer(placement, request)
    }

    /// The current map, held (see [`Topology::pin`]), if it is the one `placement` was
    /// computed from; refused otherwise, as a peer's message of another epoch would be.
    pub fn pin_at(
        &self,
        placement: &Placement,
    ) -> Result<RwLockReadGuard<'_, Arc<ClusterMap>>, RemoteError> {
        let map = self.topology.pin();
        if map.epoch() != placement.map.epoch() {
            return Err(RemoteError::new(
                ErrorCode::EpochMismatch,
                format!(
                    "node {} moved on to cluster map epoch {} during the operation",
                    self.topology.me(),
                    map.epoch()
                ),
            ));
        }
        Ok(map)
    }

    /// Answers a key-scoped message, unless this node does not replicate the key or cannot
    /// vote for it yet.
    fn answer<R: AcceptorRpc>(
        &self,
        placement: &Placement,
        request: R,
    ) -> Result<R::Reply, RemoteError> {
        if !placement.contains(self.topology.me()) {
            return Err(RemoteError::new(
                ErrorCode::Misdirected,
                format!(
                    "node {} does not replicate this key at cluster map epoch {}",
                    self.topology.me(),
                    placement.map.epoch()
                ),
            ));
        }
        if !self
            .readiness
            .can_vote(self.topology.me(), &placement.replicas)
        {
            return Err(RemoteError::new(
                ErrorCode::Recovering,
                format!(
                    "node {} is catching up and does not vote for this key yet",
                    self.topology.me()
                ),
            ));
        }
        request.apply(self, placement)
    }

    /// A page of the keys of one store shard that `peer` replicates, with their full replica
    /// state, and the shard's floor.
    ///
    /// With `moving`, only the keys the running membership change moves to `peer`: those it
    /// replicates under the new member set and did not before, or whose replica set shrinks
    /// (every remaining replica then needs what a majority of the previous ones held).
    pub fn sync_shard(
        &self,
        map: &ClusterMap,
        peer: NodeId,
        request: SyncShard,
    ) -> Result<SyncPage, RemoteError> {
        let shard = check_shard(request.shard)?;
        let r = self.topology.replicas();
        let (mut replicas, mut previous) = (Vec::with_capacity(r), Vec::new());
        let moving = request.moving;
        let me = self.topology.me();
        // Only keys this node replicates (for a change's copy, replicated before it): a copy
        // of a key it no longer replicates is stale, whatever it holds.
        let page = self
            .store
            .scan_page(shard, request.after.as_deref(), PAGE_BYTES, |key| {
                let owners = replicas_into(map, key, r, &mut replicas, &mut previous);
                if !moving {
                    return replicas.contains(&peer) && replicas.contains(&me);
                }
                let base = if map.is_changing() {
                    &previous[..]
                } else {
                    &replicas[..owners]
                };
                base.contains(&me)
                    && replicas[..owners].contains(&peer)
                    && (!previous.contains(&peer) || owners < previous.len())
            });
        // Read after the page: a key collected before its part of the page was read is then
        // in the floor, so it is never in neither.
        let floor = self.store.floor(shard);
        let known = self
            .incarnations
            .read()
            .get(&peer)
            .copied()
            .unwrap_or_default();
        Ok(SyncPage {
            states: page.items,
            floor,
            next: page.next,
            incarnation: self.incarnation.get(),
            known,
        })
    }

    /// A page of the accepted ballots of one store shard's keys whose primary is `primary`.
    pub fn digest_shard(
        &self,
        primary: NodeId,
        request: DigestShard,
    ) -> Result<DigestPage, RemoteError> {
        let shard = check_shard(request.shard)?;
        let map = self.topology.map();
        let r = self.topology.replicas();
        let me = self.topology.me();
        let (mut owners, mut previous) = (Vec::with_capacity(r), Vec::new());
        let page = self
            .store
            .ballots_page(shard, request.after.as_deref(), PAGE_BYTES, |key| {
                replicas_into(&map, key, r, &mut owners, &mut previous);
                owners.first() == Some(&primary) && owners.contains(&me)
            });
        Ok(DigestPage {
            ballots: page.items,
            next: page.next,
        })
    }
}

fn check_shard(shard: u32) -> Result<usize, RemoteError> {
    let shard = shard as usize;
    if shard >= Store::SHARDS {
        return Err(RemoteError::new(
            ErrorCode::InvalidRequest,
            format!(
                "shard {shard} does not exist: shards are 0..{}",
                Store::SHARDS
            ),
        ));
    }
    Ok(shard)
}

impl AcceptorRpc for Prepare {
    fn key(&self) -> &str {
        &self.key
    }

    fn refused_for(answer: &Result<PrepareReply, CallError>) -> Option<Ballot> {
        match answer {
            Ok(PrepareReply::Rejected { promised }) => Some(*promised),
            _ => None,
        }
    }

    fn fields(&self) -> AcceptorFields<'_> {
        AcceptorFields {
            own_ballots: [Some(self.ballot), None],
            grow: self.grow,
            ..Default::default()
        }
    }

    fn apply(self, a: &Acceptor, _: &Placement) -> Result<PrepareReply, RemoteError> {
        let prepared = a.store.prepare(&self.key, self.ballot, self.grow as usize);
        Ok(match prepared.map_err(|e| a.no_room(e))? {
            Ok(register) => PrepareReply::Promised {
                incarnation: a.incarnation.get(),
                register,
            },
            Err(promised) => PrepareReply::Rejected { promised },
        })
    }
}

impl AcceptorRpc for Accept {
    fn key(&self) -> &str {
        &self.key
    }

    fn fields(&self) -> AcceptorFields<'_> {
        AcceptorFields {
            own_ballots: [Some(self.register.ballot), self.promise_next],
            register: Some(&self.register),
            value: self.register.value.as_ref(),
            promisers: &self.promisers,
            ..Default::default()
        }
    }

    fn misses_copy(answer: &Result<AcceptReply, CallError>) -> bool {
        !matches!(answer, Ok(AcceptReply::Accepted { .. }))
    }

    fn refused_for(answer: &Result<AcceptReply, CallError>) -> Option<Ballot> {
        match answer {
            Ok(AcceptReply::Rejected { promised }) => Some(*promised),
            _ => None,
        }
    }

    fn apply(self, a: &Acceptor, placement: &Placement) -> Result<AcceptReply, RemoteError> {
        // Held across the check and the write, so a newer incarnation cannot be recorded (and a
        // recovering peer cannot copy this shard) in between.
        let known = a.incarnations.read();
        let me = a.topology.me();
        let stale = self.promisers.iter().find(|&&(node, incarnation)| {
            if node == me {
                incarnation != a.incarnation.get()
            } else {
                known.get(&node).is_some_and(|&k| k > incarnation)
            }
        });
        if let Some((node, _)) = stale {
            return Err(RemoteError::new(
                ErrorCode::StaleIncarnation,
                format!("node {node} restarted since it promised this ballot"),
            ));
        }
        let ballot = self.register.ballot;
        // The next ballot is promised in the same step as the accept, so the promise counts as
        // that ballot's phase 1, with this register as its result.
        let next = self.promise_next.filter(|&next| next > ballot);
        let accepted = a
            .store
            .accept_promising(&self.key, self.register, next.unwrap_or(ballot))
            .map_err(|e| a.no_room(e))?;
        if let Err(promised) = accepted {
            return Ok(AcceptReply::Rejected { promised });
        }
        let promised_next = next.map(|_| a.incarnation.get());
        // A round on a key this node is primary for, coordinated elsewhere: only anti-entropy
        // can tell whether every replica got it.
        let me = a.topology.me();
        if ballot.node() != me && placement.primary() == me {
            a.drift.note();
        }
        Ok(AcceptReply::Accepted { promised_next })
    }
}

impl AcceptorRpc for Read {
    fn key(&self) -> &str {
        &self.key
    }

    fn fields(&self) -> AcceptorFields<'_> {
        AcceptorFields::default()
    }

    fn apply(self, a: &Acceptor, _: &Placement) -> Result<kvcore::Register, RemoteError> {
        Ok(a.store.read_register(&self.key))
    }
}

impl AcceptorRpc for Repair {
    fn key(&self) -> &str {
        &self.key
    }

    fn fields(&self) -> AcceptorFields<'_> {
        AcceptorFields {
            register: Some(&self.register),
            value: self.register.value.as_ref(),
            ..Default::default()
        }
    }

    fn apply(self, a: &Acceptor, _: &Placement) -> Result<bool, RemoteError> {
        let applied = a
            .store
            .repair(&self.key, self.register)
            .map_err(|e| a.no_room(e))?;
        if applied {
            bump(&a.metrics.repairs);
        }
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvcore::StoreConfig;

    #[test]
    fn each_key_counts_its_own_rounds_and_outbids_refusals() {
        let store = Arc::new(Store::new(StoreConfig::default()));
        let clock = BallotClock::new(NodeId(2), store.clone());
        let first = clock.next("a");
        assert_eq!((first.round(), first.node()), (1, NodeId(2)));
        // A thousand rounds on one key leave another key's rounds where they were.
        for _ in 0..1000 {
            let ballot = clock.next("a");
            assert!(store.prepare("a", ballot, 0).unwrap().is_ok());
        }
        assert_eq!(clock.next("a").round(), 1001);
        assert_eq!(clock.next("b").round(), 1);
        // A refusal elsewhere is outbid once, then the replica's own promise counts again.
        clock.observe("b", Ballot::new(50, NodeId(7)));
        assert_eq!(clock.next("b"), Ballot::new(51, NodeId(2)));
        assert_eq!(clock.next("b").round(), 1);
        // A refusal below what the replica promised changes nothing.
        clock.observe("a", Ballot::new(3, NodeId(7)));
        assert_eq!(clock.next("a").round(), 1001);
        assert_eq!(
            clock.above(Ballot::new(9, NodeId(0))),
            Ballot::new(10, NodeId(2))
        );
    }
}
