//! A linearizability checker for single-key histories, and a recorder that builds them.
//!
//! Concurrent test clients record each operation with [`History`]: `start` before the request is
//! sent, `finish` once its outcome is known. [`check_all`] then splits the events by key and asks,
//! for every key, whether some order of the operations (1) respects real time — an operation that
//! completed before another was invoked comes first — and (2) gives every completed operation the
//! answer its client saw when replayed against a sequential register (`Option<i64>`, `None` when
//! the key is absent). Keys are independent registers, so checking them one at a time is exact
//! (linearizability is compositional) and keeps each search small.
//!
//! # Outcomes
//! - [`Outcome::Ok`]: the operation took effect between invocation and completion, and its client
//!   saw the given answer.
//! - [`Outcome::Fail`]: it definitely took no effect (refused before anything was applied), so it
//!   is left out; seeing its value later is a violation.
//! - [`Outcome::Unknown`]: a timeout or similar. It may take effect once, at any time after its
//!   invocation — even after later operations of the same client — or never, and its answer is
//!   unconstrained. Its `complete` field is ignored.
//!
//! # Time
//! Times are `u64` nanoseconds from one base. An operation precedes another only if it completed
//! strictly before the other was invoked; equal times count as concurrent, so a coarse clock can
//! only make the checker more lenient, never report a false violation.
//!
//! # Algorithm
//! Wing & Gong's search with Lowe's memoization ("WGL"; Lowe, "Testing for linearizability",
//! 2017). Invocations and completions of completed operations sit in one time-ordered, doubly
//! linked list. The search walks it from the front: an invocation is a candidate to linearize
//! next; reaching a completion means that operation's deadline has come with it still unplaced,
//! so the last choice is undone (dancing-links style: unlinking is undone in reverse order). A
//! configuration is the set of linearized operations (bitsets) plus the register's state; each is
//! entered at most once.
//!
//! Unknown operations have no completion, so the search may leave them out forever. They sit in
//! a second list, tried after the completed operations, and four rules keep them from multiplying
//! the search: a configuration is skipped when one entered before had the same completed
//! operations and state and a subset of its unknown ones (it could do all this one can);
//! identical unknown operations are used in invocation order (once invoked they are
//! interchangeable); an unknown operation that would not change the state is never linearized;
//! nor is a write or delete linearized right after an unknown operation (leaving that one out is
//! as good). Unknown reads are dropped up front. Each rule only skips configurations matched by
//! one the search explores anyway, and the tests check the verdicts against brute force.
//!
//! # Complexity
//! Deciding linearizability is NP-complete (Gibbons & Korach 1997), so the worst case is
//! exponential. With `n` operations of which at most `c` completed ones overlap at any instant,
//! the linearized sets the search can reach are downward closed in real-time order — roughly
//! `n · 2^c` of them — and the state takes at most `n + 1` values, so the memo bounds the work to
//! about `n² · 2^c` configurations of `O(n / 64)` words each. Unknown operations are the costly
//! part: one left unresolved stays a candidate to the end, so proving a violation means ruling
//! out every combination of those — up to `2^u` for `u` distinct ones, far fewer when they are
//! alike (timed-out increments by 1 differ only in number). In a debug build, 400 operations
//! from eight clients check in milliseconds; a violation among them with 40 unknown operations
//! takes about a second.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// An operation on one key, as a client issued it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Read the current value.
    Read,
    /// Set the value.
    Write(i64),
    /// Remove the key; succeeds whether or not it existed.
    Delete,
    /// Set the value to `new` only if it currently is `expect`.
    Cas {
        /// The value required beforehand; `None` requires the key to be absent.
        expect: Option<i64>,
        /// The value written on success.
        new: i64,
    },
    /// Add to the value, an absent key counting as 0, and return the sum.
    Incr(i64),
    /// Remove the key only while it holds this value: the store's expiry of a value written
    /// with a TTL, recorded by [`History::expiry`]. The store decides it by a round that found
    /// the expired value still there, so it cannot remove a value written after it.
    Expire(i64),
}

/// What a client saw when its operation completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Observed {
    /// The answer to [`Op::Read`].
    Read(Option<i64>),
    /// The acknowledgement of [`Op::Write`] or [`Op::Delete`].
    Done,
    /// Whether [`Op::Cas`] wrote.
    Cas(bool),
    /// The value after [`Op::Incr`].
    Incr(i64),
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It took effect, and the client saw this.
    Ok(Observed),
    /// It certainly took no effect.
    Fail,
    /// It may have taken effect, at any time after its invocation, or not at all.
    Unknown,
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Which client issued it; used only in explanations.
    pub client: usize,
    /// The key it addressed. [`check`] takes events of one key; [`check_all`] groups by key.
    pub key: String,
    /// The operation.
    pub op: Op,
    /// When it was invoked, in nanoseconds from the history's base.
    pub invoke: u64,
    /// When its outcome was known; ignored for [`Outcome::Unknown`].
    pub complete: u64,
    /// How it ended.
    pub outcome: Outcome,
}

/// Why a key's history is not linearizable.
///
/// It reports the longest order the search found that fits every answer (measured in completed
/// operations) and the pending operations that could not extend it before the earliest of their
/// deadlines. Other orders of the same length may exist; this is the first one found.
#[derive(Debug, Clone)]
pub struct Violation {
    key: String,
    initial: Option<i64>,
    completed: usize,
    unknown: usize,
    /// Linearized operations in order, each with the state after it.
    prefix: Vec<(Event, Option<i64>)>,
    /// The earliest completion among operations left out of `prefix`.
    deadline: u64,
    /// Completed operations invoked by `deadline` and not in `prefix`, with what the register
    /// would answer after `prefix` (`None`: it could not take effect at all).
    stuck: Vec<(Event, Option<Observed>)>,
    /// How many unknown operations invoked by `deadline` are not in `prefix`.
    unknown_left: usize,
}

impl Violation {
    /// The key whose history is not linearizable.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// Checks one key's history against a register that starts as `initial`.
///
/// # Panics
/// If the events name more than one key, or a completed event ends before it starts or carries
/// an observation of the wrong kind for its operation: those are bugs in the test, not the store.
pub fn check(events: &[Event], initial: Option<i64>) -> Result<(), Violation> {
    if let Some(first) = events.first() {
        assert!(
            events.iter().all(|e| e.key == first.key),
            "check takes one key's events; use check_all for several keys"
        );
    }
    search(events, initial).0
}

/// Checks every key's history, each against a register that starts as `initial`; returns how
/// many keys were checked, or the first violation in key order.
///
/// # Panics
/// As [`check`], for malformed events.
pub fn check_all(events: &[Event], initial: Option<i64>) -> Result<usize, Violation> {
    let mut by_key: BTreeMap<&str, Vec<Event>> = BTreeMap::new();
    for event in events {
        by_key.entry(&event.key).or_default().push(event.clone());
    }
    for events in by_key.values() {
        check(events, initial)?;
    }
    Ok(by_key.len())
}

/// A thread-safe recorder of events, timed from its creation.
///
/// Each operation is recorded as [`Outcome::Unknown`] when it starts, so one whose task was
/// cancelled or panicked before [`finish`](Self::finish) still counts as possibly applied.
///
/// It reads `std`'s clock, not tokio's: under `tokio::time::pause` the latter stands still, which
/// would make every operation look concurrent with every other.
#[derive(Debug)]
pub struct History {
    base: Instant,
    events: Mutex<Vec<Event>>,
}

/// An operation in flight, to be passed back to [`History::finish`].
#[derive(Debug)]
#[must_use = "an operation never finished is checked as Unknown"]
pub struct Ticket {
    index: usize,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    /// An empty history whose clock starts now.
    pub fn new() -> Self {
        History {
            base: Instant::now(),
            events: Mutex::new(Vec::new()),
        }
    }

    /// Records that `client` is about to send `op` on `key`; call it before sending, so the
    /// recorded interval contains the real one.
    pub fn start(&self, client: usize, key: &str, op: Op) -> Ticket {
        let invoke = self.now();
        let mut events = self.lock();
        events.push(Event {
            client,
            key: key.to_owned(),
            op,
            invoke,
            complete: u64::MAX,
            outcome: Outcome::Unknown,
        });
        Ticket {
            index: events.len() - 1,
        }
    }

    /// Records that the value `write` sets expires `ttl` after the write was invoked: the
    /// store removes it at some time after that (the first round to find it expired), or never
    /// if it was replaced first. That is an [`Outcome::Unknown`] [`Op::Expire`] of the written
    /// value, invoked then by a client of its own: it can take effect only while the key still
    /// holds that value, so the written values must be unique for it to mean this write.
    ///
    /// The store reads expiry against whole milliseconds of its wall clock (an expiry time is
    /// the truncated time of the write plus the TTL, reached when the truncated clock gets
    /// there), so it may remove the value up to a millisecond before `ttl` has passed since the
    /// write; the expiry is invoked that much earlier.
    ///
    /// # Panics
    /// If `write` is not a write or compare-and-set: only those set a TTL.
    pub fn expiry(&self, write: &Ticket, key: &str, ttl: std::time::Duration) {
        let mut events = self.lock();
        let written = &events[write.index];
        let value = match written.op {
            Op::Write(v) | Op::Cas { new: v, .. } => v,
            op => panic!("{op} sets no TTL"),
        };
        assert_eq!(written.key, key, "an expiry is of the key written");
        let granularity = std::time::Duration::from_millis(1);
        let invoke = written.invoke + ttl.saturating_sub(granularity).as_nanos() as u64;
        events.push(Event {
            client: usize::MAX,
            key: key.to_owned(),
            op: Op::Expire(value),
            invoke,
            complete: u64::MAX,
            outcome: Outcome::Unknown,
        });
    }

    /// Records how the operation ended; call it after the answer arrived.
    pub fn finish(&self, ticket: Ticket, outcome: Outcome) {
        let complete = self.now();
        let mut events = self.lock();
        let event = &mut events[ticket.index];
        event.complete = complete;
        event.outcome = outcome;
    }

    /// A copy of the events so far, in the order they started.
    pub fn events(&self) -> Vec<Event> {
        self.lock().clone()
    }

    fn now(&self) -> u64 {
        // u64 nanoseconds last 584 years.
        self.base.elapsed().as_nanos() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Event>> {
        // A client that panicked mid-test must not hide the other clients' history.
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Op {
    /// The register after `self` and the answer it gives, or `None` if it cannot take effect.
    fn apply(self, state: Option<i64>) -> Option<(Option<i64>, Observed)> {
        Some(match self {
            Op::Read => (state, Observed::Read(state)),
            Op::Write(v) => (Some(v), Observed::Done),
            Op::Delete => (None, Observed::Done),
            Op::Cas { expect, new } if state == expect => (Some(new), Observed::Cas(true)),
            Op::Cas { .. } => (state, Observed::Cas(false)),
            Op::Expire(v) if state == Some(v) => (None, Observed::Done),
            // Not the value it expires: removing nothing, it never happens.
            Op::Expire(_) => return None,
            Op::Incr(delta) => {
                // The store refuses an overflowing increment, so it never takes effect.
                let sum = state.unwrap_or(0).checked_add(delta)?;
                (Some(sum), Observed::Incr(sum))
            }
        })
    }

    fn answers_with(self, observed: Observed) -> bool {
        matches!(
            (self, observed),
            (Op::Read, Observed::Read(_))
                | (Op::Write(_) | Op::Delete | Op::Expire(_), Observed::Done)
                | (Op::Cas { .. }, Observed::Cas(_))
                | (Op::Incr(_), Observed::Incr(_))
        )
    }
}

/// An operation the search may linearize.
struct Candidate {
    /// Index into the caller's events.
    event: usize,
    op: Op,
    /// `None` for an unknown outcome.
    observed: Option<Observed>,
    /// Bit index among completed, or among unknown, operations.
    slot: usize,
    /// For an unknown operation, the previously invoked unknown one with the same `op`.
    twin: Option<usize>,
}

impl Candidate {
    /// The state after linearizing `self` in `state`, if it fits there and is worth trying.
    fn step(&self, state: Option<i64>) -> Option<Option<i64>> {
        let (after, answer) = self.op.apply(state)?;
        match self.observed {
            Some(observed) => (answer == observed).then_some(after),
            // A no-op would only use the operation up.
            None => (after != state).then_some(after),
        }
    }

    fn is_blind(&self) -> bool {
        matches!(self.op, Op::Write(_) | Op::Delete)
    }
}

/// Validates the events and keeps those the search must consider, in their order; also returns
/// how many are completed and how many unknown.
fn candidates(events: &[Event]) -> (Vec<Candidate>, usize, usize) {
    let mut candidates = Vec::new();
    let (mut completed, mut unknown) = (0, 0);
    for (index, event) in events.iter().enumerate() {
        let (observed, slot) = match event.outcome {
            Outcome::Ok(observed) => {
                assert!(
                    event.invoke <= event.complete,
                    "malformed event, completed before it was invoked: {event}"
                );
                assert!(
                    event.op.answers_with(observed),
                    "malformed event, answer does not fit the operation: {event}"
                );
                completed += 1;
                (Some(observed), completed - 1)
            }
            Outcome::Fail => continue,
            // It would change nothing and its answer is unknown.
            Outcome::Unknown if event.op == Op::Read => continue,
            Outcome::Unknown => {
                unknown += 1;
                (None, unknown - 1)
            }
        };
        candidates.push(Candidate {
            event: index,
            op: event.op,
            observed,
            slot,
            twin: None,
        });
    }
    let mut unknown_order: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].observed.is_none())
        .collect();
    unknown_order.sort_by_key(|&i| events[candidates[i].event].invoke);
    let mut last_with_op = HashMap::new();
    for i in unknown_order {
        candidates[i].twin = last_with_op.insert(candidates[i].op, i);
    }
    (candidates, completed, unknown)
}

/// The linearized operations: one bitset for completed ones, one for unknown ones.
struct Linearized {
    completed: Vec<u64>,
    unknown: Vec<u64>,
}

impl Linearized {
    fn contains(&self, c: &Candidate) -> bool {
        let bits = match c.observed {
            Some(_) => &self.completed,
            None => &self.unknown,
        };
        bits[c.slot / 64] & (1 << (c.slot % 64)) != 0
    }

    fn flip(&mut self, c: &Candidate) {
        let bits = match c.observed {
            Some(_) => &mut self.completed,
            None => &mut self.unknown,
        };
        bits[c.slot / 64] ^= 1 << (c.slot % 64);
    }
}

/// The configurations entered so far, keyed by (linearized completed operations, state), each
/// with the sets of linearized unknown operations it was entered with; only minimal sets are
/// kept, as a configuration that used fewer unknown operations can do all one that used more
/// can.
#[derive(Default)]
struct Memo {
    entered: HashMap<Vec<u64>, Vec<Vec<u64>>>,
    /// Scratch space for the key, so that lookups do not allocate.
    key: Vec<u64>,
}

impl Memo {
    /// Records the configuration unless an entered one can do all it can; returns whether it
    /// was recorded, that is, whether it is worth entering.
    fn enter(&mut self, linearized: &Linearized, state: Option<i64>) -> bool {
        self.key.clear();
        self.key.extend_from_slice(&linearized.completed);
        let (tag, value) = state.map_or((0, 0), |v| (1, v as u64));
        self.key.extend_from_slice(&[tag, value]);
        let sets = match self.entered.get_mut(self.key.as_slice()) {
            Some(sets) => sets,
            None => self.entered.entry(self.key.clone()).or_default(),
        };
        let unknown = &linearized.unknown;
        if sets.iter().any(|set| is_subset(set, unknown)) {
            return false;
        }
        sets.retain(|set| !is_subset(unknown, set));
        sets.push(unknown.clone());
        true
    }
}

fn is_subset(a: &[u64], b: &[u64]) -> bool {
    a.iter().zip(b).all(|(a, b)| a & !b == 0)
}

/// Circular doubly linked lists over nodes, whose removals can be undone in reverse order.
struct Lists {
    next: Vec<usize>,
    prev: Vec<usize>,
}

impl Lists {
    fn new(len: usize) -> Self {
        Lists {
            next: (0..len).collect(),
            prev: (0..len).collect(),
        }
    }

    /// Links `nodes`, in order, into a circular list closed by `head`.
    fn chain(&mut self, head: usize, nodes: impl IntoIterator<Item = usize>) {
        let mut last = head;
        for node in nodes {
            self.next[last] = node;
            self.prev[node] = last;
            last = node;
        }
        self.next[last] = head;
        self.prev[head] = last;
    }

    fn unlink(&mut self, node: usize) {
        self.next[self.prev[node]] = self.next[node];
        self.prev[self.next[node]] = self.prev[node];
    }

    /// Undoes `unlink(node)`, once every later unlink has been undone.
    fn relink(&mut self, node: usize) {
        self.next[self.prev[node]] = node;
        self.prev[self.next[node]] = node;
    }
}

/// Where the search looks for the next operation to linearize.
#[derive(Clone, Copy)]
enum Cursor {
    /// At a node of the list of completed operations.
    Completed(usize),
    /// At a node of the list of unknown operations, which may go next if invoked by `deadline`.
    Unknown { node: usize, deadline: u64 },
}

/// A linearized operation, the state before it, and where to look once it is undone.
struct Frame {
    candidate: usize,
    before: Option<i64>,
    resume: Cursor,
}

/// Runs the search; also returns how many configurations it entered, for tests of its cost.
fn search(events: &[Event], initial: Option<i64>) -> (Result<(), Violation>, usize) {
    let (candidates, completed, unknown) = candidates(events);

    // Node 2i is candidate i's invocation and 2i + 1 its completion. The completed operations'
    // nodes form one time-ordered list, closed by `head`. Unknown operations have only an
    // invocation, kept in a list of their own so that the search tries them last: it then tends
    // to enter a configuration first with the fewest unknown operations used, which lets the
    // memo prune the same configuration reached with more.
    let head = 2 * candidates.len();
    let unknown_head = head + 1;
    let time = |node: usize| {
        let event = &events[candidates[node / 2].event];
        if node.is_multiple_of(2) {
            event.invoke
        } else {
            event.complete
        }
    };
    let mut lists = Lists::new(head + 2);
    let mut order: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].observed.is_some())
        .flat_map(|i| [2 * i, 2 * i + 1])
        .collect();
    // At equal times invocations go first, as equal times are concurrent.
    order.sort_unstable_by_key(|&node| (time(node), node % 2, node));
    lists.chain(head, order);
    let mut order: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].observed.is_none())
        .map(|i| 2 * i)
        .collect();
    // In the order twins are used in.
    order.sort_unstable_by_key(|&node| (time(node), node));
    lists.chain(unknown_head, order);

    let mut linearized = Linearized {
        completed: vec![0; completed.div_ceil(64)],
        unknown: vec![0; unknown.div_ceil(64)],
    };
    let mut memo = Memo::default();
    let mut stack: Vec<Frame> = Vec::new();
    let mut state = initial;
    let mut pending = completed;
    // The first order found that linearizes the most completed operations, to explain failure.
    let (mut best, mut best_completed) = (Vec::new(), 0);
    let mut entered = 0;
    let mut cursor = Cursor::Completed(lists.next[head]);
    while pending > 0 {
        let (node, advanced) = match cursor {
            Cursor::Completed(node) if node % 2 == 1 => {
                // The earliest pending completion: only what was invoked by then may go next.
                let deadline = time(node);
                let node = lists.next[unknown_head];
                cursor = Cursor::Unknown { node, deadline };
                continue;
            }
            // A pending completion lies ahead, so this never wraps around to `head`.
            Cursor::Completed(node) => (node, Cursor::Completed(lists.next[node])),
            Cursor::Unknown { node, deadline }
                if node != unknown_head && time(node) <= deadline =>
            {
                let next = lists.next[node];
                (
                    node,
                    Cursor::Unknown {
                        node: next,
                        deadline,
                    },
                )
            }
            Cursor::Unknown { .. } => {
                // Nothing else may go next here: undo the last choice.
                let Some(frame) = stack.pop() else {
                    let violation = explain(events, &candidates, initial, &best);
                    return (Err(violation), entered);
                };
                let c = &candidates[frame.candidate];
                linearized.flip(c);
                if c.observed.is_some() {
                    lists.relink(2 * frame.candidate + 1);
                    pending += 1;
                }
                lists.relink(2 * frame.candidate);
                state = frame.before;
                cursor = frame.resume;
                continue;
            }
        };
        cursor = advanced;
        let c = &candidates[node / 2];
        if c.twin
            .is_some_and(|twin| !linearized.contains(&candidates[twin]))
        {
            // Identical unknown operations are interchangeable once invoked: use the earliest.
            continue;
        }
        let after_unknown = stack
            .last()
            .is_some_and(|top| candidates[top.candidate].observed.is_none());
        if after_unknown && c.is_blind() {
            // Overwriting what an unknown operation just did: doing so without it is as good.
            continue;
        }
        let Some(after) = c.step(state) else {
            continue;
        };
        linearized.flip(c);
        if !memo.enter(&linearized, after) {
            linearized.flip(c);
            continue;
        }
        entered += 1;
        stack.push(Frame {
            candidate: node / 2,
            before: state,
            // The lists are back as they are now by the time this frame is popped.
            resume: advanced,
        });
        state = after;
        lists.unlink(node);
        if c.observed.is_some() {
            lists.unlink(node + 1);
            pending -= 1;
            if completed - pending > best_completed {
                best_completed = completed - pending;
                best = stack.iter().map(|f| f.candidate).collect();
            }
        }
        cursor = Cursor::Completed(lists.next[head]);
    }
    (Ok(()), entered)
}

fn explain(
    events: &[Event],
    candidates: &[Candidate],
    initial: Option<i64>,
    best: &[usize],
) -> Violation {
    let mut state = initial;
    let mut prefix = Vec::with_capacity(best.len());
    let mut placed = vec![false; candidates.len()];
    for &i in best {
        placed[i] = true;
        let c = &candidates[i];
        state = c
            .step(state)
            .expect("the search only linearizes operations that fit");
        prefix.push((events[c.event].clone(), state));
    }
    let left = || {
        candidates
            .iter()
            .zip(&placed)
            .filter(|(_, placed)| !**placed)
            .map(|(c, _)| c)
    };
    let deadline = left()
        .filter(|c| c.observed.is_some())
        .map(|c| events[c.event].complete)
        .min()
        .expect("a violation leaves a completed operation out");
    let invoked = |c: &&Candidate| events[c.event].invoke <= deadline;
    let stuck = left()
        .filter(|c| c.observed.is_some())
        .filter(invoked)
        .map(|c| {
            let answer = c.op.apply(state).map(|(_, answer)| answer);
            (events[c.event].clone(), answer)
        })
        .collect();
    let completed = candidates.iter().filter(|c| c.observed.is_some()).count();
    Violation {
        key: events[0].key.clone(),
        initial,
        completed,
        unknown: candidates.len() - completed,
        prefix,
        deadline,
        stuck,
        unknown_left: left()
            .filter(|c| c.observed.is_none())
            .filter(invoked)
            .count(),
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Read => write!(f, "read"),
            Op::Write(v) => write!(f, "write({v})"),
            Op::Delete => write!(f, "delete"),
            Op::Cas { expect, new } => write!(f, "cas({expect:?} -> {new})"),
            Op::Incr(delta) => write!(f, "incr({delta})"),
            Op::Expire(v) => write!(f, "expire({v})"),
        }
    }
}

impl fmt::Display for Observed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Observed::Read(v) => write!(f, "{v:?}"),
            Observed::Done => write!(f, "done"),
            Observed::Cas(wrote) => write!(f, "{wrote}"),
            Observed::Incr(v) => write!(f, "{v}"),
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} {} ", self.client, self.op)?;
        match self.outcome {
            Outcome::Ok(observed) => {
                write!(f, "-> {observed} [{}..{}]", self.invoke, self.complete)
            }
            Outcome::Fail => write!(f, "-> fail [{}..{}]", self.invoke, self.complete),
            Outcome::Unknown => write!(f, "-> unknown [{}..]", self.invoke),
        }
    }
}

/// Enough of a long prefix to see how the register got where it is.
const SHOWN_PREFIX: usize = 30;

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "key {:?} is not linearizable ({} completed and {} unknown operations, initially {:?})",
            self.key, self.completed, self.unknown, self.initial
        )?;
        let linearized = self
            .prefix
            .iter()
            .filter(|(e, _)| matches!(e.outcome, Outcome::Ok(_)))
            .count();
        writeln!(
            f,
            "longest order found fits {linearized} of {} completed operations:",
            self.completed
        )?;
        let hidden = self.prefix.len().saturating_sub(SHOWN_PREFIX);
        if hidden > 0 {
            writeln!(f, "  ... {hidden} earlier operations")?;
        }
        for (event, after) in &self.prefix[hidden..] {
            writeln!(f, "  {event}  => {after:?}")?;
        }
        write!(
            f,
            "after which none of these fits before t={}:",
            self.deadline
        )?;
        for (event, answer) in &self.stuck {
            match answer {
                Some(answer) => write!(f, "\n  {event}  (the register answers {answer})")?,
                None => write!(f, "\n  {event}  (cannot take effect)")?,
            }
        }
        if self.unknown_left > 0 {
            write!(
                f,
                "\n  (nor does any sequence of the {} unknown operations invoked by then make one fit)",
                self.unknown_left
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for Violation {}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;

    const KEY: &str = "k";

    fn ok(client: usize, op: Op, invoke: u64, complete: u64, observed: Observed) -> Event {
        Event {
            client,
            key: KEY.to_owned(),
            op,
            invoke,
            complete,
            outcome: Outcome::Ok(observed),
        }
    }

    fn failed(client: usize, op: Op, invoke: u64, complete: u64) -> Event {
        Event {
            outcome: Outcome::Fail,
            ..ok(client, op, invoke, complete, Observed::Done)
        }
    }

    fn unknown(client: usize, op: Op, invoke: u64) -> Event {
        Event {
            outcome: Outcome::Unknown,
            ..ok(client, op, invoke, u64::MAX, Observed::Done)
        }
    }

    fn write(client: usize, v: i64, invoke: u64, complete: u64) -> Event {
        ok(client, Op::Write(v), invoke, complete, Observed::Done)
    }

    fn read(client: usize, seen: Option<i64>, invoke: u64, complete: u64) -> Event {
        ok(client, Op::Read, invoke, complete, Observed::Read(seen))
    }

    fn linearizable(events: &[Event]) -> bool {
        check(events, None).is_ok()
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert!(linearizable(&[]));
        assert_eq!(check_all(&[], None).unwrap(), 0);
    }

    #[test]
    fn initial_value_is_respected() {
        let events = [read(0, Some(7), 0, 1)];
        assert!(check(&events, Some(7)).is_ok());
        assert!(check(&events, None).is_err());
    }

    #[test]
    fn stale_read_after_completed_write() {
        let events = [
            write(0, 1, 0, 10),
            write(0, 2, 20, 30),
            read(1, Some(1), 40, 50),
        ];
        assert!(!linearizable(&events));
    }

    #[test]
    fn concurrent_write_and_read_in_either_order() {
        for seen in [None, Some(1)] {
            let events = [write(0, 1, 0, 10), read(1, seen, 5, 15)];
            assert!(linearizable(&events), "{seen:?}");
        }
        // But once a read has seen the write, a later read cannot miss it.
        let events = [
            write(0, 1, 0, 100),
            read(1, Some(1), 10, 20),
            read(1, None, 30, 40),
        ];
        assert!(!linearizable(&events));
    }

    #[test]
    fn real_time_order_is_respected() {
        // Sequential writes: a later read cannot see the first.
        let sequential = [
            write(0, 1, 0, 10),
            write(1, 2, 20, 30),
            read(2, Some(1), 40, 50),
        ];
        assert!(!linearizable(&sequential));
        // Overlapping writes may take effect in either order.
        let overlapping = [
            write(0, 1, 0, 25),
            write(1, 2, 20, 30),
            read(2, Some(1), 40, 50),
        ];
        assert!(linearizable(&overlapping));
        // Touching intervals count as concurrent, so a coarse clock cannot invent a violation.
        let touching = [
            write(0, 1, 0, 20),
            write(1, 2, 20, 30),
            read(2, Some(1), 40, 50),
        ];
        assert!(linearizable(&touching));
    }

    #[test]
    fn a_value_may_expire_after_its_ttl_but_never_before_nor_come_back() {
        // Written at 0..10 with a TTL of 100: an unknown expiry of the value invoked at 100, as
        // `History::expiry` records it.
        let expiry = unknown(usize::MAX, Op::Expire(1), 100);
        let gone_after = [write(0, 1, 0, 10), expiry.clone(), read(1, None, 150, 160)];
        assert!(linearizable(&gone_after));
        let gone_before = [write(0, 1, 0, 10), expiry.clone(), read(1, None, 50, 60)];
        assert!(!linearizable(&gone_before));
        let back = [
            write(0, 1, 0, 10),
            expiry,
            read(1, None, 150, 160),
            read(2, Some(1), 170, 180),
        ];
        assert!(!linearizable(&back));
    }

    #[test]
    fn an_expiry_cannot_remove_a_value_written_after_the_one_it_expires() {
        // The bug conditional expiry prevents: 1 is written with a TTL, 2 replaces it before
        // it expires, and the expiry of 1 removes 2.
        let expiry = unknown(usize::MAX, Op::Expire(1), 100);
        let overwritten = [write(0, 1, 0, 10), write(0, 2, 20, 30), expiry.clone()];
        let mut lost = overwritten.to_vec();
        lost.push(read(1, None, 150, 160));
        assert!(!linearizable(&lost));
        // The overwrite is still there after the first value's TTL ran out.
        let mut kept = overwritten.to_vec();
        kept.push(read(1, Some(2), 150, 160));
        assert!(linearizable(&kept));
        // Nor can it remove the value once the key was deleted and written again.
        let rewritten = [
            write(0, 1, 0, 10),
            ok(0, Op::Delete, 20, 30, Observed::Done),
            write(0, 3, 40, 50),
            expiry.clone(),
            read(1, None, 150, 160),
        ];
        assert!(!linearizable(&rewritten));
        // But an overwrite concurrent with the expiry may come before or after it.
        let racing = [write(0, 1, 0, 10), expiry, write(0, 2, 90, 200)];
        for seen in [None, Some(2)] {
            let mut events = racing.to_vec();
            events.push(read(1, seen, 150, 160));
            assert!(linearizable(&events), "{seen:?}");
        }
    }

    #[test]
    fn history_records_an_expiry_of_the_value_written() {
        let history = History::new();
        let ttl = std::time::Duration::from_millis(50);
        let write = history.start(0, KEY, Op::Write(7));
        history.expiry(&write, KEY, ttl);
        history.finish(write, Outcome::Ok(Observed::Done));
        let cas = history.start(
            1,
            KEY,
            Op::Cas {
                expect: Some(7),
                new: 8,
            },
        );
        history.expiry(&cas, KEY, ttl);
        history.finish(cas, Outcome::Ok(Observed::Cas(true)));
        let events = history.events();
        // Invoked the TTL, less the store's millisecond granularity, after its write.
        let early = (ttl - std::time::Duration::from_millis(1)).as_nanos() as u64;
        for (expiry, write, value) in [(&events[1], &events[0], 7), (&events[3], &events[2], 8)] {
            assert_eq!(expiry.op, Op::Expire(value));
            assert_eq!(expiry.outcome, Outcome::Unknown);
            assert_eq!(expiry.invoke, write.invoke + early);
        }
    }

    #[test]
    #[should_panic(expected = "sets no TTL")]
    fn only_a_write_expires() {
        let history = History::new();
        let read = history.start(0, KEY, Op::Read);
        history.expiry(&read, KEY, std::time::Duration::from_millis(5));
    }

    #[test]
    fn input_order_does_not_matter() {
        let events = [
            read(2, Some(1), 40, 50),
            write(1, 2, 20, 30),
            write(0, 1, 0, 25),
        ];
        assert!(linearizable(&events));
    }

    #[test]
    fn read_of_a_value_never_written() {
        let events = [write(0, 1, 0, 10), read(1, Some(3), 5, 15)];
        assert!(!linearizable(&events));
    }

    #[test]
    fn delete_then_read() {
        let delete = ok(1, Op::Delete, 20, 30, Observed::Done);
        let absent = [write(0, 1, 0, 10), delete.clone(), read(2, None, 40, 50)];
        assert!(linearizable(&absent));
        let resurrected = [write(0, 1, 0, 10), delete, read(2, Some(1), 40, 50)];
        assert!(!linearizable(&resurrected));
    }

    #[test]
    fn lost_update_with_incr() {
        let incr = |client, seen| ok(client, Op::Incr(1), 0, 10, Observed::Incr(seen));
        assert!(linearizable(&[incr(0, 1), incr(1, 2)]));
        assert!(!linearizable(&[incr(0, 1), incr(1, 1)]));
        // An absent key counts as 0, a present one from its value.
        let from_five = [
            write(0, 5, 0, 10),
            ok(1, Op::Incr(-2), 20, 30, Observed::Incr(3)),
        ];
        assert!(linearizable(&from_five));
    }

    #[test]
    fn incr_that_would_overflow_cannot_succeed() {
        let events = [
            write(0, i64::MAX, 0, 10),
            ok(1, Op::Incr(1), 20, 30, Observed::Incr(i64::MIN)),
        ];
        assert!(!linearizable(&events));
        let events = [write(0, i64::MAX, 0, 10), unknown(1, Op::Incr(1), 20)];
        assert!(linearizable(&events));
    }

    #[test]
    fn cas_double_success_on_one_expectation() {
        let cas = |client, new, wrote| {
            let op = Op::Cas {
                expect: Some(1),
                new,
            };
            ok(client, op, 20, 30, Observed::Cas(wrote))
        };
        let base = write(0, 1, 0, 10);
        assert!(linearizable(&[
            base.clone(),
            cas(1, 2, true),
            cas(2, 3, false)
        ]));
        assert!(!linearizable(&[
            base.clone(),
            cas(1, 2, true),
            cas(2, 3, true)
        ]));
        // Writing back the expected value makes a second success possible.
        let back = Op::Cas {
            expect: Some(1),
            new: 1,
        };
        let events = [
            base,
            ok(1, back, 20, 30, Observed::Cas(true)),
            ok(2, back, 20, 30, Observed::Cas(true)),
        ];
        assert!(linearizable(&events));
    }

    #[test]
    fn cas_if_absent() {
        let create = |client, new, wrote| {
            let op = Op::Cas { expect: None, new };
            ok(client, op, 0, 10, Observed::Cas(wrote))
        };
        assert!(linearizable(&[create(0, 1, true), create(1, 2, false)]));
        assert!(!linearizable(&[create(0, 1, true), create(1, 2, true)]));
        assert!(!linearizable(&[create(0, 1, false)]));
    }

    #[test]
    fn unknown_write_observed_later_or_never() {
        let lost = unknown(0, Op::Write(1), 0);
        assert!(linearizable(&[lost.clone(), read(1, Some(1), 100, 110)]));
        assert!(linearizable(&[lost.clone(), read(1, None, 100, 110)]));
        // It may take effect long after its client moved on ...
        let events = [
            lost.clone(),
            write(0, 2, 50, 60),
            read(1, Some(2), 70, 80),
            read(1, Some(1), 90, 100),
        ];
        assert!(linearizable(&events));
        // ... but at most once, and never before it was invoked.
        let twice = [
            lost.clone(),
            read(1, Some(1), 10, 20),
            write(0, 2, 30, 40),
            read(1, Some(1), 50, 60),
        ];
        assert!(!linearizable(&twice));
        let early = [read(1, Some(1), 0, 10), unknown(0, Op::Write(1), 20)];
        assert!(!linearizable(&early));
        let touching = [read(1, Some(1), 0, 10), unknown(0, Op::Write(1), 10)];
        assert!(linearizable(&touching));
    }

    #[test]
    fn unknown_incr_applies_at_most_once() {
        let events = [
            unknown(0, Op::Incr(1), 0),
            read(1, Some(1), 10, 20),
            read(1, Some(2), 30, 40),
        ];
        assert!(!linearizable(&events));
        let two = [
            unknown(0, Op::Incr(1), 0),
            unknown(2, Op::Incr(1), 5),
            read(1, Some(1), 10, 20),
            read(1, Some(2), 30, 40),
        ];
        assert!(linearizable(&two));
    }

    #[test]
    fn failed_operations_take_no_effect() {
        let events = [failed(0, Op::Write(1), 0, 10), read(1, Some(1), 20, 30)];
        assert!(!linearizable(&events));
        let events = [failed(0, Op::Write(1), 0, 10), read(1, None, 20, 30)];
        assert!(linearizable(&events));
    }

    #[test]
    fn violation_explains_itself() {
        let events = [
            write(0, 1, 0, 10),
            write(0, 2, 20, 30),
            unknown(3, Op::Write(9), 35),
            read(1, Some(1), 40, 50),
        ];
        let violation = check(&events, None).unwrap_err();
        assert_eq!(violation.key(), KEY);
        assert_eq!(violation.deadline, 50);
        assert_eq!(violation.prefix.len(), 2);
        assert_eq!(violation.prefix[1].1, Some(2));
        let text = violation.to_string();
        for needle in [
            "key \"k\" is not linearizable (3 completed and 1 unknown operations, initially None)",
            "fits 2 of 3 completed",
            "client 0 write(2) -> done [20..30]  => Some(2)",
            "none of these fits before t=50",
            "client 1 read -> Some(1) [40..50]  (the register answers Some(2))",
            "\n  (nor does any sequence of the 1 unknown operations invoked by then make one fit)",
        ] {
            assert!(text.contains(needle), "{needle:?} not in:\n{text}");
        }
    }

    #[test]
    fn violation_elides_a_long_prefix() {
        let mut events: Vec<Event> = (0..40)
            .map(|i| write(0, i, 10 * i as u64, 10 * i as u64 + 5))
            .collect();
        events.push(read(1, Some(0), 1000, 1010));
        let text = check(&events, None).unwrap_err().to_string();
        assert!(
            text.contains("\n  ... 10 earlier operations\n  client 0 write(10) "),
            "{text}"
        );
        assert!(
            text.contains("client 0 write(39) -> done [390..395]  => Some(39)\nafter"),
            "{text}"
        );
    }

    #[test]
    #[should_panic(expected = "answer does not fit the operation")]
    fn mismatched_answer_is_a_test_bug() {
        let _ = check(&[ok(0, Op::Read, 0, 1, Observed::Done)], None);
    }

    #[test]
    #[should_panic(expected = "completed before it was invoked")]
    fn completion_before_invocation_is_a_test_bug() {
        let _ = check(&[read(0, None, 10, 5)], None);
    }

    #[test]
    #[should_panic(expected = "check_all")]
    fn check_takes_one_key() {
        let mut other = read(1, None, 0, 1);
        other.key = "other".to_owned();
        let _ = check(&[read(0, None, 0, 1), other], None);
    }

    #[test]
    fn check_all_checks_keys_separately() {
        let mut events = vec![write(0, 1, 0, 10), read(1, Some(1), 20, 30)];
        let mut b = read(1, None, 20, 30);
        b.key = "b".to_owned();
        events.push(b);
        assert_eq!(check_all(&events, None).unwrap(), 2);
        // Key "b" never saw the write to "k".
        events[2].outcome = Outcome::Ok(Observed::Read(Some(1)));
        assert_eq!(check_all(&events, None).unwrap_err().key(), "b");
    }

    #[test]
    fn history_records_from_many_threads() {
        let history = History::new();
        let (even, odd) = (AtomicI64::new(0), AtomicI64::new(0));
        let counters = [("even", &even), ("odd", &odd)];
        std::thread::scope(|scope| {
            for client in 0..4 {
                let (history, counters) = (&history, &counters);
                scope.spawn(move || {
                    for i in 0..25 {
                        let (key, counter) = counters[i % 2];
                        let ticket = history.start(client, key, Op::Incr(1));
                        // The increment happens between start and finish, so the history is
                        // linearizable by construction.
                        let sum = counter.fetch_add(1, Ordering::SeqCst) + 1;
                        history.finish(ticket, Outcome::Ok(Observed::Incr(sum)));
                    }
                });
            }
        });
        let events = history.events();
        assert_eq!(events.len(), 100);
        assert!(events.iter().all(|e| e.invoke <= e.complete));
        assert_eq!(check_all(&events, None).unwrap(), 2);
    }

    #[test]
    fn unfinished_operation_counts_as_unknown() {
        let history = History::new();
        let _abandoned = history.start(0, KEY, Op::Write(1));
        let ticket = history.start(1, KEY, Op::Read);
        history.finish(ticket, Outcome::Ok(Observed::Read(Some(1))));
        let events = history.events();
        assert_eq!(events[0].outcome, Outcome::Unknown);
        assert!(check(&events, None).is_ok());
    }

    /// A tiny seeded generator, so failures reproduce from the printed seed.
    /// Seeded choices for generated histories.
    struct Choices(SmallRng);

    impl Choices {
        fn new(seed: u64) -> Self {
            Choices(SmallRng::seed_from_u64(seed))
        }

        fn below(&mut self, n: u64) -> u64 {
            self.0.gen_range(0..n)
        }

        fn percent(&mut self, p: u64) -> bool {
            self.below(100) < p
        }
    }

    /// A generated history and what the mutations need to know about it.
    struct Generated {
        events: Vec<Event>,
        initial: Option<i64>,
        /// Values only failed operations would have written.
        failed_values: Vec<i64>,
        /// The register after the whole execution.
        last: Option<i64>,
        /// Later than every recorded time.
        end: u64,
    }

    /// How a generated operation ends.
    #[derive(Clone, Copy)]
    enum Kind {
        Ok,
        Unknown,
        Fail,
    }

    struct Shape {
        clients: u64,
        ops: usize,
        unknown_percent: u64,
        fail_percent: u64,
        /// Every increment adds 1, as counters do; otherwise they add -5 to 5.
        unit_incr: bool,
    }

    /// The next value to write: distinct, and far from every other.
    fn fresh_value(fresh: &mut i64) -> i64 {
        *fresh += 1;
        *fresh << 32
    }

    /// A history that is linearizable by construction: each operation takes effect at a point
    /// inside its interval (anywhere after invocation if unknown), and answers come from running
    /// the register in the order of those points.
    ///
    /// Written values are `n << 32` for a fresh `n`, and increments are small, so every value
    /// that can ever be read reveals which write it descends from.
    fn generate(rng: &mut Choices, shape: &Shape) -> Generated {
        let mut fresh = 0;
        let initial = rng.percent(50).then(|| fresh_value(&mut fresh));
        let mut free_at = vec![0; shape.clients as usize];
        // (point, client, invoke, complete, kind)
        let mut slots = Vec::with_capacity(shape.ops);
        for _ in 0..shape.ops {
            let client = rng.below(shape.clients) as usize;
            let invoke = free_at[client] + rng.below(10);
            let complete = invoke + rng.below(60);
            free_at[client] = complete + 1;
            let kind = match rng.below(100) {
                p if p < shape.unknown_percent => Kind::Unknown,
                p if p < shape.unknown_percent + shape.fail_percent => Kind::Fail,
                _ => Kind::Ok,
            };
            let point = match kind {
                Kind::Unknown => invoke + rng.below(400),
                _ => invoke + rng.below(complete - invoke + 1),
            };
            slots.push((point, client, invoke, complete, kind));
        }
        slots.sort_by_key(|slot| slot.0);

        let mut state = initial;
        let mut failed_values = Vec::new();
        let mut events = Vec::with_capacity(shape.ops);
        for (_, client, invoke, complete, kind) in slots {
            let op = match rng.below(100) {
                // Expiries are never answered: the store removes a value on its own.
                _ if matches!(kind, Kind::Unknown) && rng.percent(30) => {
                    let value = match state {
                        Some(v) if rng.percent(60) => v,
                        _ => (rng.below(fresh as u64 + 1) << 32) as i64,
                    };
                    Op::Expire(value)
                }
                0..=34 => Op::Read,
                35..=54 => Op::Write(fresh_value(&mut fresh)),
                55..=59 => Op::Delete,
                60..=79 => {
                    let expect = match rng.below(4) {
                        0 | 1 => state,
                        2 => None,
                        _ => Some((rng.below(fresh as u64 + 1) << 32) as i64),
                    };
                    let new = fresh_value(&mut fresh);
                    Op::Cas { expect, new }
                }
                _ if shape.unit_incr => Op::Incr(1),
                _ => Op::Incr(rng.below(11) as i64 - 5),
            };
            let applies = match kind {
                Kind::Ok => true,
                // An expiry of a value the key does not hold cannot apply.
                Kind::Unknown => rng.percent(50) && op.apply(state).is_some(),
                Kind::Fail => false,
            };
            let mut observed = None;
            if applies {
                let (after, answer) = op.apply(state).expect("values stay far from overflow");
                state = after;
                observed = Some(answer);
            }
            let outcome = match kind {
                Kind::Ok => Outcome::Ok(observed.expect("completed operations apply")),
                Kind::Unknown => Outcome::Unknown,
                Kind::Fail => {
                    if let Op::Write(v) | Op::Cas { new: v, .. } = op {
                        failed_values.push(v);
                    }
                    Outcome::Fail
                }
            };
            events.push(Event {
                client,
                key: KEY.to_owned(),
                op,
                invoke,
                complete,
                outcome,
            });
        }
        Generated {
            end: events.iter().map(|e| e.complete).max().unwrap_or(0) + 1,
            events,
            initial,
            failed_values,
            last: state,
        }
    }

    fn random_shape(rng: &mut Choices) -> Shape {
        Shape {
            clients: 1 + rng.below(8),
            ops: 1 + rng.below(120) as usize,
            unknown_percent: rng.below(20),
            fail_percent: rng.below(10),
            unit_incr: rng.percent(50),
        }
    }

    fn shuffle(rng: &mut Choices, events: &mut [Event]) {
        for i in (1..events.len()).rev() {
            events.swap(i, rng.below(i as u64 + 1) as usize);
        }
    }

    #[test]
    fn generated_histories_are_linearizable() {
        for seed in 1..=300 {
            let mut rng = Choices::new(seed);
            let shape = random_shape(&mut rng);
            let mut history = generate(&mut rng, &shape);
            if let Err(violation) = check(&history.events, history.initial) {
                panic!("seed {seed}: {violation}");
            }
            shuffle(&mut rng, &mut history.events);
            assert!(
                check(&history.events, history.initial).is_ok(),
                "seed {seed}"
            );
        }
    }

    /// A random completed operation that `wanted` accepts.
    fn pick(rng: &mut Choices, events: &[Event], wanted: fn(&Op) -> bool) -> Option<usize> {
        let found: Vec<usize> = (0..events.len())
            .filter(|&i| wanted(&events[i].op) && matches!(events[i].outcome, Outcome::Ok(_)))
            .collect();
        (!found.is_empty()).then(|| found[rng.below(found.len() as u64) as usize])
    }

    /// A value no operation writes: far above every `n << 32` used.
    const NEVER: i64 = 1 << 62;

    #[test]
    fn mutated_histories_are_not_linearizable() {
        let mut mutated = [0; 4];
        for seed in 1..=400 {
            let mut rng = Choices::new(seed);
            let mut shape = random_shape(&mut rng);
            let mutation = rng.below(4) as usize;
            if mutation == 3 {
                // An unknown write could legitimately bring an old value back.
                shape.unknown_percent = 0;
            }
            let mut history = generate(&mut rng, &shape);
            let events = &mut history.events;
            match mutation {
                0 => {
                    let Some(i) = pick(&mut rng, events, |op| *op == Op::Read) else {
                        continue;
                    };
                    events[i].outcome = Outcome::Ok(Observed::Read(Some(NEVER)));
                }
                1 => {
                    let Some(i) = pick(&mut rng, events, |op| matches!(op, Op::Incr(_))) else {
                        continue;
                    };
                    events[i].outcome = Outcome::Ok(Observed::Incr(NEVER));
                }
                2 => {
                    let Some(&value) = history.failed_values.first() else {
                        continue;
                    };
                    let Some(i) = pick(&mut rng, events, |op| *op == Op::Read) else {
                        continue;
                    };
                    events[i].outcome = Outcome::Ok(Observed::Read(Some(value)));
                }
                _ => {
                    let end = history.end;
                    events.push(write(0, NEVER, end, end + 10));
                    events.push(read(1, history.last, end + 20, end + 30));
                }
            }
            mutated[mutation] += 1;
            shuffle(&mut rng, events);
            assert!(
                check(events, history.initial).is_err(),
                "seed {seed}, mutation {mutation}"
            );
        }
        assert!(mutated.iter().all(|&n| n >= 20), "{mutated:?}");
    }

    #[test]
    fn large_histories_stay_cheap() {
        // Budgets are a few times what these take, and far below an exponential blowup.
        let shapes = [(5, false, 1_000_000), (10, true, 2_000_000)];
        for (unknown_percent, unit_incr, budget) in shapes {
            for seed in 1..=2 {
                let mut rng = Choices::new(seed);
                let shape = Shape {
                    clients: 8,
                    ops: 400,
                    unknown_percent,
                    fail_percent: 5,
                    unit_incr,
                };
                let mut history = generate(&mut rng, &shape);
                let (result, entered) = search(&history.events, history.initial);
                assert!(result.is_ok(), "seed {seed}");
                assert!(
                    entered < budget / 10,
                    "seed {seed}: {entered} configurations"
                );
                // A violation at the very end makes the search exhaust every order before it.
                let end = history.end;
                history.events.push(read(0, Some(NEVER), end, end + 10));
                let (result, entered) = search(&history.events, history.initial);
                assert!(result.is_err(), "seed {seed}");
                assert!(entered < budget, "seed {seed}: {entered} configurations");
            }
        }
    }

    /// Whether some order of the events is a linearization, trying every order of every subset.
    fn brute_force(events: &[Event], initial: Option<i64>) -> bool {
        fn extend(events: &[&Event], placed: &mut [bool], state: Option<i64>) -> bool {
            let pending: Vec<usize> = (0..events.len())
                .filter(|&i| !placed[i] && matches!(events[i].outcome, Outcome::Ok(_)))
                .collect();
            if pending.is_empty() {
                return true;
            }
            // Whatever no pending completed operation precedes in real time may go next.
            let ready: Vec<usize> = (0..events.len())
                .filter(|&i| {
                    !placed[i]
                        && pending
                            .iter()
                            .all(|&j| events[j].complete >= events[i].invoke)
                })
                .collect();
            for i in ready {
                let e = events[i];
                let Some((after, answer)) = e.op.apply(state) else {
                    continue;
                };
                if matches!(e.outcome, Outcome::Ok(seen) if seen != answer) {
                    continue;
                }
                placed[i] = true;
                let found = extend(events, placed, after);
                placed[i] = false;
                if found {
                    return true;
                }
            }
            false
        }
        let events: Vec<&Event> = events
            .iter()
            .filter(|e| e.outcome != Outcome::Fail)
            .collect();
        extend(&events, &mut vec![false; events.len()], initial)
    }

    #[test]
    fn agrees_with_brute_force_on_small_histories() {
        let mut verdicts = [0; 2];
        for seed in 1..=3000 {
            let mut rng = Choices::new(seed);
            let shape = Shape {
                clients: 1 + rng.below(4),
                ops: 1 + rng.below(7) as usize,
                unknown_percent: rng.below(50),
                fail_percent: rng.below(20),
                unit_incr: rng.percent(50),
            };
            let mut history = generate(&mut rng, &shape);
            // Replace one answer by another plausible one: a value of the history, or a near one.
            let values: Vec<i64> = history
                .events
                .iter()
                .filter_map(|e| match (e.op, e.outcome) {
                    (Op::Write(v) | Op::Cas { new: v, .. }, _) => Some(v),
                    (_, Outcome::Ok(Observed::Read(Some(v)) | Observed::Incr(v))) => Some(v),
                    _ => None,
                })
                .collect();
            let completed: Vec<usize> = (0..history.events.len())
                .filter(|&i| matches!(history.events[i].outcome, Outcome::Ok(_)))
                .collect();
            if !completed.is_empty() && !values.is_empty() && rng.percent(60) {
                let i = completed[rng.below(completed.len() as u64) as usize];
                let value =
                    values[rng.below(values.len() as u64) as usize] + rng.below(3) as i64 - 1;
                let Outcome::Ok(seen) = history.events[i].outcome else {
                    unreachable!("picked among completed operations");
                };
                let observed = match seen {
                    Observed::Read(_) if rng.percent(20) => Observed::Read(None),
                    Observed::Read(_) => Observed::Read(Some(value)),
                    Observed::Cas(wrote) => Observed::Cas(!wrote),
                    Observed::Incr(_) => Observed::Incr(value),
                    Observed::Done => Observed::Done,
                };
                history.events[i].outcome = Outcome::Ok(observed);
            }
            let expected = brute_force(&history.events, history.initial);
            let got = check(&history.events, history.initial);
            assert_eq!(
                got.is_ok(),
                expected,
                "seed {seed}: {:#?}\n{}",
                history.events,
                got.err().map_or(String::new(), |v| v.to_string())
            );
            verdicts[usize::from(expected)] += 1;
        }
        assert!(verdicts.iter().all(|&n| n > 500), "{verdicts:?}");
    }
}
