//! Client operations as functions from a key's current state to its next state.
//!
//! Each operation is a peer message ([`Get`], [`Set`], [`Delete`], [`Incr`], [`Seed`]) so that a
//! coordinator can forward it to a replica as it is, and its reply type is what the client gets.
//! Running one is the same for all: find the current register, [`apply`](Operation::apply) the
//! operation, accept the result.

use kvcore::{Entry, ErrorCode, Limits, Precondition, Register, Value};
use kvnet::rpc::{Delete, Get, Incr, Seed, Set, SetReply};
use kvnet::Rpc;

use crate::error::Error;

/// A single-key operation a client asks for.
pub trait Operation: Rpc + Clone {
    /// Whether the operation may change the key.
    const WRITES: bool;

    /// The key.
    fn key(&self) -> &str;

    /// The register after applying the operation to `current` (`None`: unchanged), and the
    /// client's answer. An operation that does not apply (a failed condition, a non-integer to
    /// increment) leaves the state as it is.
    fn apply(&self, current: &Register) -> (Option<Register>, Result<Self::Reply, Error>);

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
}

/// The register after `current` with this value (or none), one version later.
fn next(current: &Register, value: Option<Value>) -> Register {
    Register {
        ballot: current.ballot,
        version: current.version.next(),
        value,
    }
}

impl Operation for Get {
    const WRITES: bool = false;

    fn key(&self) -> &str {
        &self.key
    }

    fn apply(&self, current: &Register) -> (Option<Register>, Result<Option<Entry>, Error>) {
        (None, Ok(current.entry()))
    }
}

impl Operation for Set {
    const WRITES: bool = true;

    fn key(&self) -> &str {
        &self.key
    }

    fn apply(&self, current: &Register) -> (Option<Register>, Result<SetReply, Error>) {
        let entry = current.entry();
        if self.precondition.holds(entry.as_ref()) {
            let register = next(current, Some(self.value.clone()));
            let version = register.version;
            (Some(register), Ok(SetReply::Written(version)))
        } else {
            (None, Ok(SetReply::Conflict(entry)))
        }
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
}

impl Operation for Delete {
    const WRITES: bool = true;

    fn key(&self) -> &str {
        &self.key
    }

    fn may_change_nothing(&self) -> bool {
        true
    }

    fn apply(&self, current: &Register) -> (Option<Register>, Result<Option<Entry>, Error>) {
        match current.entry() {
            Some(entry) => (Some(next(current, None)), Ok(Some(entry))),
            None => (None, Ok(None)),
        }
    }
}

impl Operation for Incr {
    const WRITES: bool = true;

    fn key(&self) -> &str {
        &self.key
    }

    fn apply(&self, current: &Register) -> (Option<Register>, Result<Entry, Error>) {
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
        let register = next(current, Some(Value::integer(sum)));
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
    fn apply(&self, current: &Register) -> (Option<Register>, Result<SetReply, Error>) {
        if current.ballot == kvcore::Ballot::ZERO {
            let register = next(current, Some(self.value.clone()));
            let version = register.version;
            (Some(register), Ok(SetReply::Written(version)))
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

    fn reg(version: u64, value: Option<Value>) -> Register {
        Register {
            ballot: Ballot::new(1, NodeId(0)),
            version: Version(version),
            value,
        }
    }

    #[test]
    fn writes_advance_the_version_and_failed_conditions_change_nothing() {
        let set = |precondition| Set {
            key: "k".into(),
            value: Value::integer(5),
            precondition,
        };
        let (next, reply) = set(Precondition::IfAbsent).apply(&reg(3, None));
        assert_eq!(next.unwrap().version, Version(4));
        assert_eq!(reply.unwrap(), SetReply::Written(Version(4)));
        let existing = reg(4, Some(Value::integer(1)));
        let (next, reply) = set(Precondition::IfAbsent).apply(&existing);
        assert!(next.is_none());
        assert!(matches!(reply.unwrap(), SetReply::Conflict(Some(_))));
        let (next, _) = set(Precondition::IfVersion(Version(4))).apply(&existing);
        assert_eq!(next.unwrap().value.unwrap().as_i64(), Some(5));
    }

    #[test]
    fn deletes_leave_a_tombstone_and_missing_keys_alone() {
        let del = Delete { key: "k".into() };
        let (next, old) = del.apply(&reg(2, Some(Value::integer(1))));
        let next = next.unwrap();
        assert_eq!((next.version, next.value), (Version(3), None));
        assert_eq!(old.unwrap().unwrap().version, Version(2));
        let (next, old) = del.apply(&reg(3, None));
        assert!(next.is_none() && old.unwrap().is_none());
    }

    #[test]
    fn a_seed_writes_only_a_key_that_was_never_written() {
        let seed = Seed {
            key: "a".into(),
            value: Value::string("alpha"),
        };
        let (next, reply) = seed.apply(&Register::default());
        assert_eq!(next.unwrap().version, Version(1));
        assert_eq!(reply.unwrap(), SetReply::Written(Version(1)));
        // A tombstone: the key was written and deleted.
        let (next, reply) = seed.apply(&reg(2, None));
        assert!(next.is_none());
        assert_eq!(reply.unwrap(), SetReply::Conflict(None));
        let (next, _) = seed.apply(&reg(1, Some(Value::string("mine"))));
        assert!(next.is_none());
    }

    #[test]
    fn increments_check_type_and_range() {
        let incr = |by| Incr {
            key: "k".into(),
            by,
        };
        let (_, e) = incr(2).apply(&reg(0, None));
        assert_eq!(e.unwrap().value.as_i64(), Some(2));
        let (next, e) = incr(1).apply(&reg(1, Some(Value::string("x"))));
        assert!(next.is_none());
        assert_eq!(e.unwrap_err().code(), ErrorCode::NotAnInteger);
        let (_, e) = incr(1).apply(&reg(1, Some(Value::integer(i64::MAX))));
        assert_eq!(e.unwrap_err().code(), ErrorCode::Overflow);
    }
}
