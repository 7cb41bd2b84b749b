//! Client operations as functions from a key's current state to its next state.
//!
//! Each operation is a peer message ([`Get`], [`Set`], [`Delete`], [`Incr`], [`Seed`],
//! [`Evict`]) so that a coordinator can forward it to a replica as it is, and its reply type is
//! what the client gets. Running one is the same for all: find the current register,
//! [`apply_at`] the operation, accept the result.
//!
//! Expiry is part of that step: a register whose expiry time has passed (by the clock of the
//! node running the round) counts as deleted one version later, and the round chooses that
//! deletion even when the operation itself changes nothing. So a key is removed only by a
//! replicated round, and once one has removed it no node reads it again, whatever its clock.

use kvcore::{Entry, ErrorCode, Limits, Precondition, Register, Value};
use kvnet::rpc::{Delete, Evict, Get, Incr, Seed, Set, SetReply};
use kvnet::Rpc;

use crate::error::Error;

/// A single-key operation a client asks for.
pub trait Operation: Rpc + Clone {
    /// Whether the operation may change the key.
    const WRITES: bool;

    /// The key.
    fn key(&self) -> &str;

    /// The register after applying the operation to `current` (`None`: unchanged), and the
    /// client's answer, at `now_ms` (milliseconds since 1970, for expiry times). An operation
    /// that does not apply (a failed condition, a non-integer to increment) leaves the state as
    /// it is. `current` is never expired: [`apply_at`] removes an expired value first.
    fn apply(
        &self,
        current: &Register,
        now_ms: u64,
    ) -> (Option<Register>, Result<Self::Reply, Error>);

    /// Value bytes the operation may add on a replica, checked against its budget in phase 1.
    fn grow(&self) -> u32 {
        0
    }

    /// Whether the operation often leaves the key as it is (a delete, a conditional write), so
    /// it is worth checking against the current state before proposing a change.
    fn may_change_nothing(&self) -> bool {
        false
    }

    /// Checks what the operation carries against the size limits.
    fn check(&self, _limits: &Limits) -> Result<(), kvcore::Error> {
        Ok(())
    }

    /// Checks the operation's options, as a client's are checked before they become one: a
    /// peer's message is untrusted input too.
    fn check_options(&self) -> Result<(), Error> {
        Ok(())
    }
}

/// Applies `op` to the key's state `current` at `now_ms`. An expired value is deleted first (one
/// version later), and that deletion is the new state even if `op` changes nothing, so the
/// round that observes the expiry is the one that makes every replica agree on it.
pub fn apply_at<O: Operation>(
    op: &O,
    current: &Register,
    now_ms: u64,
) -> (Option<Register>, Result<O::Reply, Error>) {
    if !current.is_expired(now_ms) {
        return op.apply(current, now_ms);
    }
    let expired = next(current, None, None);
    let (changed, reply) = op.apply(&expired, now_ms);
    (Some(changed.unwrap_or(expired)), reply)
}

/// The register after `current` with this value (or none) and expiry time, one version later.
fn next(current: &Register, value: Option<Value>, expires: Option<u64>) -> Register {
    Register {
        ballot: current.ballot,
        version: current.version.next(),
        expires: value.as_ref().and(expires),
        value,
    }
}

impl Operation for Get {
    const WRITES: bool = false;

    fn key(&self) -> &str {
        &self.key
    }

    fn apply(
        &self,
        current: &Register,
        _: u64,
    ) -> (Option<Register>, Result<Option<Entry>, Error>) {
        (None, Ok(current.entry()))
    }
}

impl Operation for Set {
    const WRITES: bool = true;

    fn key(&self) -> &str {
        &self.key
    }

    fn apply(
        &self,
        current: &Register,
        now_ms: u64,
    ) -> (Option<Register>, Result<SetReply, Error>) {
        let entry = current.entry();
        if !self.precondition.holds(entry.as_ref()) {
            return (None, Ok(SetReply::Conflict(entry)));
        }
        let expires = match self.ttl_ms {
            Some(ttl) => Some(now_ms.saturating_add(ttl)),
            None if self.keep_ttl => current.expires,
            None => None,
        };
        let register = next(current, Some(self.value.clone()), expires);
        let reply = SetReply::Written {
            version: register.version,
            expires: register.expires,
        };
        (Some(register), Ok(reply))
    }

    fn grow(&self) -> u32 {
        u32::try_from(self.value.len()).unwrap_or(u32::MAX)
    }

    fn may_change_nothing(&self) -> bool {
        self.precondition != Precondition::None
    }

    fn check(&self, limits: &Limits) -> Result<(), kvcore::Error> {
        limits.check_value(&self.value)
    }

    fn check_options(&self) -> Result<(), Error> {
        crate::node::WriteOptions {
            precondition: self.precondition,
            ttl_ms: self.ttl_ms,
            keep_ttl: self.keep_ttl,
        }
        .check()
    }
}

impl Operation for Delete {
    const WRITES: bool = true;

    fn key(&self) -> &str {
        &self.key
    }

    fn may_change_nothing(&self) -> bool {
        true
    }

    fn apply(
        &self,
        current: &Register,
        _: u64,
    ) -> (Option<Register>, Result<Option<Entry>, Error>) {
        match current.entry() {
            Some(entry) if self.if_version.is_none_or(|v| v == entry.version) => {
                (Some(next(current, None, None)), Ok(Some(entry)))
            }
            _ => (None, Ok(None)),
        }
    }
}

/// Deletes the state an evictor sampled, and only that one (see [`Evict`]).
impl Operation for Evict {
    const WRITES: bool = true;

    fn key(&self) -> &str {
        &self.key
    }

    fn may_change_nothing(&self) -> bool {
        true
    }

    /// Only clients' keys are evicted: the cluster's own records are never sampled.
    fn check_options(&self) -> Result<(), Error> {
        if crate::topology::is_reserved(&self.key) {
            return Err(Error::bad_request(
                ErrorCode::InvalidKey,
                "keys starting with U+0000 are the cluster's own records and are never evicted",
            ));
        }
        Ok(())
    }

    fn apply(&self, current: &Register, _: u64) -> (Option<Register>, Result<bool, Error>) {
        let sampled = current.value.is_some()
            && current.version == self.version
            && current.digest() == self.digest;
        if sampled {
            (Some(next(current, None, None)), Ok(true))
        } else {
            (None, Ok(false))
        }
    }
}

impl Operation for Incr {
    const WRITES: bool = true;

    fn key(&self) -> &str {
        &self.key
    }

    /// The key keeps its expiry time: a counter with a TTL counts within its window.
    fn apply(&self, current: &Register, _: u64) -> (Option<Register>, Result<Entry, Error>) {
        let base = match current.entry() {
            None => 0,
            Some(e) => match e.value.as_i64() {
                Some(i) => i,
                None => {
                    let message = format!(
                        "the value is {}, not an integer: only integers can be incremented",
                        e.value.encoding()
                    );
                    return (
                        None,
                        Err(Error::bad_request(ErrorCode::NotAnInteger, message)),
                    );
                }
            },
        };
        let Some(sum) = base.checked_add(self.by) else {
            let message = format!("{base} + {} overflows a signed 64-bit integer", self.by);
            return (None, Err(Error::bad_request(ErrorCode::Overflow, message)));
        };
        let register = next(current, Some(Value::integer(sum)), current.expires);
        let entry = register.entry().expect("just set");
        (Some(register), Ok(entry))
    }

    fn grow(&self) -> u32 {
        8
    }
}

/// The keys every cluster serves from the start, as in the original deployment: `a` and `b`.
pub const SEED_KEYS: [(&str, &str); 2] = [("a", "alpha"), ("b", "beta")];

/// Whether `key` is a seed key. A deleted seed key keeps its tombstone (it is never collected):
/// the tombstone is what tells a later [`Seed`] that the key was written.
pub fn is_seed_key(key: &str) -> bool {
    SEED_KEYS.iter().any(|&(k, _)| k == key)
}

impl Operation for Seed {
    const WRITES: bool = true;

    fn key(&self) -> &str {
        &self.key
    }

    /// Writes only a key that never accepted anything: a register still at [`Ballot::ZERO`]
    /// has never been written, deleted or read in a full round. A deleted key keeps its
    /// tombstone (seed keys are never collected), so it stays deleted.
    ///
    /// [`Ballot::ZERO`]: kvcore::Ballot::ZERO
    fn apply(&self, current: &Register, _: u64) -> (Option<Register>, Result<SetReply, Error>) {
        if current.ballot == kvcore::Ballot::ZERO {
            let register = next(current, Some(self.value.clone()), None);
            let reply = SetReply::Written {
                version: register.version,
                expires: None,
            };
            (Some(register), Ok(reply))
        } else {
            (None, Ok(SetReply::Conflict(current.entry())))
        }
    }

    fn grow(&self) -> u32 {
        u32::try_from(self.value.len()).unwrap_or(u32::MAX)
    }

    fn may_change_nothing(&self) -> bool {
        true
    }

    fn check(&self, limits: &Limits) -> Result<(), kvcore::Error> {
        limits.check_value(&self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvcore::{Ballot, NodeId, Precondition, Version};

    const NOW: u64 = 1_700_000_000_000;

    fn reg(version: u64, value: Option<Value>) -> Register {
        Register {
            ballot: Ballot::new(1, NodeId(0)),
            version: Version(version),
            value,
            expires: None,
        }
    }

    fn set(precondition: Precondition) -> Set {
        Set {
            key: "k".into(),
            value: Value::integer(5),
            precondition,
            ttl_ms: None,
            keep_ttl: false,
        }
    }

    #[test]
    fn an_eviction_removes_only_the_state_it_sampled() {
        let sampled = reg(4, Some(Value::string("a")));
        let evict = Evict {
            key: "k".into(),
            version: Version(4),
            digest: sampled.digest(),
        };
        let (next, reply) = apply_at(&evict, &sampled, NOW);
        let next = next.expect("the sampled state is deleted");
        assert_eq!((next.version, next.value), (Version(5), None));
        assert!(reply.unwrap());
        // Another write chosen at the same version (the sample was a state never chosen), a
        // later write, and the key gone already: nothing changes.
        for current in [
            reg(4, Some(Value::string("b"))),
            reg(5, Some(Value::string("a"))),
            reg(5, None),
        ] {
            let (next, reply) = apply_at(&evict, &current, NOW);
            assert_eq!(next, None, "{current:?}");
            assert!(!reply.unwrap());
        }
    }

    fn written(version: u64, expires: Option<u64>) -> SetReply {
        SetReply::Written {
            version: Version(version),
            expires,
        }
    }

    #[test]
    fn writes_advance_the_version_and_failed_conditions_change_nothing() {
        let (next, reply) = set(Precondition::IfAbsent).apply(&reg(3, None), NOW);
        assert_eq!(next.unwrap().version, Version(4));
        assert_eq!(reply.unwrap(), written(4, None));
        let existing = reg(4, Some(Value::integer(1)));
        let (next, reply) = set(Precondition::IfAbsent).apply(&existing, NOW);
        assert!(next.is_none());
        assert!(matches!(reply.unwrap(), SetReply::Conflict(Some(_))));
        let (next, _) = set(Precondition::IfVersion(Version(4))).apply(&existing, NOW);
        assert_eq!(next.unwrap().value.unwrap().as_i64(), Some(5));
    }

    #[test]
    fn deletes_leave_a_tombstone_and_missing_keys_alone() {
        let del = Delete {
            key: "k".into(),
            if_version: None,
        };
        let (next, old) = del.apply(&reg(2, Some(Value::integer(1))), NOW);
        let next = next.unwrap();
        assert_eq!((next.version, next.value), (Version(3), None));
        assert_eq!(old.unwrap().unwrap().version, Version(2));
        let (next, old) = del.apply(&reg(3, None), NOW);
        assert!(next.is_none() && old.unwrap().is_none());
    }

    #[test]
    fn a_conditional_delete_removes_only_the_version_it_names() {
        let del = |v| Delete {
            key: "k".into(),
            if_version: Some(Version(v)),
        };
        let current = reg(7, Some(Value::integer(1)));
        let (next, old) = del(6).apply(&current, NOW);
        assert!(next.is_none() && old.unwrap().is_none());
        let (next, old) = del(7).apply(&current, NOW);
        assert_eq!(next.unwrap().version, Version(8));
        assert_eq!(old.unwrap().unwrap().version, Version(7));
    }

    #[test]
    fn a_ttl_sets_the_expiry_and_a_plain_write_clears_it_unless_kept() {
        let with_ttl = Set {
            ttl_ms: Some(1_000),
            ..set(Precondition::None)
        };
        let (next, reply) = with_ttl.apply(&reg(1, None), NOW);
        let next = next.unwrap();
        assert_eq!(next.expires, Some(NOW + 1_000));
        assert_eq!(reply.unwrap(), written(2, Some(NOW + 1_000)));

        let (cleared, _) = set(Precondition::None).apply(&next, NOW + 10);
        assert_eq!(cleared.unwrap().expires, None);
        let keep = Set {
            keep_ttl: true,
            ..set(Precondition::None)
        };
        let (kept, reply) = keep.apply(&next, NOW + 10);
        assert_eq!(kept.unwrap().expires, Some(NOW + 1_000));
        assert_eq!(reply.unwrap(), written(3, Some(NOW + 1_000)));
        // Nothing to keep on a missing key.
        let (fresh, _) = keep.apply(&reg(1, None), NOW);
        assert_eq!(fresh.unwrap().expires, None);
    }

    #[test]
    fn a_peer_s_write_options_are_checked_as_a_client_s() {
        let with = |ttl_ms, keep_ttl| Set {
            ttl_ms,
            keep_ttl,
            ..set(Precondition::None)
        };
        assert!(with(Some(5), false).check_options().is_ok());
        assert!(with(None, true).check_options().is_ok());
        for bad in [with(Some(0), false), with(Some(5), true)] {
            assert_eq!(
                bad.check_options().unwrap_err().code(),
                ErrorCode::InvalidRequest
            );
        }
    }

    #[test]
    fn an_increment_keeps_the_expiry() {
        let mut counter = reg(1, Some(Value::integer(1)));
        counter.expires = Some(NOW + 500);
        let incr = Incr {
            key: "k".into(),
            by: 2,
        };
        let (next, entry) = incr.apply(&counter, NOW);
        assert_eq!(next.unwrap().expires, Some(NOW + 500));
        assert_eq!(entry.unwrap().expires, Some(NOW + 500));
    }

    #[test]
    fn an_expired_value_is_deleted_by_any_round_that_finds_it() {
        let mut current = reg(4, Some(Value::integer(9)));
        current.expires = Some(NOW);
        let get = Get { key: "k".into() };
        // Not yet: one millisecond before, the value is there and nothing changes.
        let (next, entry) = apply_at(&get, &current, NOW - 1);
        assert!(next.is_none());
        assert_eq!(entry.unwrap().unwrap().version, Version(4));
        // At its expiry time a read finds nothing and chooses the deletion.
        let (next, entry) = apply_at(&get, &current, NOW);
        assert_eq!(entry.unwrap(), None);
        let next = next.unwrap();
        assert_eq!(
            (next.version, next.value, next.expires),
            (Version(5), None, None)
        );
        // A write that needs the key absent now succeeds, after the deletion's version.
        let (next, reply) = apply_at(&set(Precondition::IfAbsent), &current, NOW);
        assert_eq!(next.unwrap().version, Version(6));
        assert_eq!(reply.unwrap(), written(6, None));
        // A condition on the expired version fails, and the deletion is still chosen.
        let (next, reply) = apply_at(&set(Precondition::IfVersion(Version(4))), &current, NOW);
        assert_eq!(next.unwrap().value, None);
        assert_eq!(reply.unwrap(), SetReply::Conflict(None));
        // An increment starts again from 0.
        let incr = Incr {
            key: "k".into(),
            by: 1,
        };
        let (_, entry) = apply_at(&incr, &current, NOW + 1);
        assert_eq!(entry.unwrap().value.as_i64(), Some(1));
    }

    #[test]
    fn a_seed_writes_only_a_key_that_was_never_written() {
        let seed = Seed {
            key: "a".into(),
            value: Value::string("alpha"),
        };
        let (next, reply) = seed.apply(&Register::default(), NOW);
        assert_eq!(next.unwrap().version, Version(1));
        assert_eq!(reply.unwrap(), written(1, None));
        // A tombstone: the key was written and deleted.
        let (next, reply) = seed.apply(&reg(2, None), NOW);
        assert!(next.is_none());
        assert_eq!(reply.unwrap(), SetReply::Conflict(None));
        let (next, _) = seed.apply(&reg(1, Some(Value::string("mine"))), NOW);
        assert!(next.is_none());
    }

    #[test]
    fn increments_check_type_and_range() {
        let incr = |by| Incr {
            key: "k".into(),
            by,
        };
        let (_, e) = incr(2).apply(&reg(0, None), NOW);
        assert_eq!(e.unwrap().value.as_i64(), Some(2));
        let (next, e) = incr(1).apply(&reg(1, Some(Value::string("x"))), NOW);
        assert!(next.is_none());
        assert_eq!(e.unwrap_err().code(), ErrorCode::NotAnInteger);
        let (_, e) = incr(1).apply(&reg(1, Some(Value::integer(i64::MAX))), NOW);
        assert_eq!(e.unwrap_err().code(), ErrorCode::Overflow);
    }
}
