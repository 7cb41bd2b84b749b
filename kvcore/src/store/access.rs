//! Access bookkeeping for eviction: one 32-bit word per key, and how keys are ranked by it (see
//! [`Eviction`] for what the word holds).
//!
//! Each key's table slot carries its access word next to its record's offset (see
//! [`Slot`](super::shard::Slot)), so recording a read needs only the shard's read lock and a
//! relaxed atomic store, and costs no byte of the record. The clock is a cached counter,
//! advanced by [`Store::tick`](super::Store::tick), so that a read does not ask the OS for the
//! time: stamping a key is a load, a compare and (at most once per tick) a store. A key stamped
//! at the current tick is not written again, so readers of a hot key do not keep taking its
//! cache line from each other.

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Version;

/// What a store over its memory budget gives up, and so what each key's access word records.
///
/// - [`Eviction::Lru`]: the store's clock when the key was last used, in ticks of [`TICK`]
///   since the store was created. A key's [score](Candidate::score) is its idle time: the
///   clock minus the word, wrapping.
/// - [`Eviction::Lfu`]: Redis's scheme. Bits 0-7 are a logarithmic counter of uses: a use
///   raises it by one with probability `1 / ((counter - LFU_INIT) * 10 + 1)`, so it takes about
///   a hundred uses to reach 10 and a million to reach 255. Bits 8-23 are the minute (of the
///   store's clock, wrapping at 2^16) the key was last used; the counter loses one per
///   [`LFU_DECAY_MINUTES`] without a use, so keys that were popular once fade. A new key starts
///   at [`LFU_INIT`], so it is not the first to go before it had a chance to be used. A key's
///   score is how far its decayed counter is below 255, then its idle minutes among keys of one
///   count.
/// - [`Eviction::None`]: nothing; the word is never read or written.
///
/// Candidates are sampled, as Redis does, a few keys at a time
/// ([`Store::sample`](super::Store::sample)) into an [`EvictionPool`] that keeps the best seen
/// across samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Eviction {
    /// Nothing: a write that does not fit is refused ([`Error::MemoryFull`]).
    ///
    /// [`Error::MemoryFull`]: crate::Error::MemoryFull
    #[default]
    None,
    /// Approximately the least recently used keys.
    Lru,
    /// Approximately the least frequently used keys.
    Lfu,
}

impl Eviction {
    /// Every policy, in the order of their names in [`Eviction::NAMES`].
    pub const ALL: [Eviction; 3] = [Eviction::None, Eviction::Lru, Eviction::Lfu];

    /// The names policies are given by on the command line and in JSON.
    pub const NAMES: [&'static str; 3] = ["none", "lru", "lfu"];

    /// The policy's name: `none`, `lru` or `lfu`.
    pub fn as_str(self) -> &'static str {
        Eviction::NAMES[self as usize]
    }

    /// Whether keys are evicted (cache mode), rather than writes refused.
    pub fn evicts(self) -> bool {
        self != Eviction::None
    }
}

impl fmt::Display for Eviction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown policy name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown eviction policy {0:?}: expected none, lru or lfu")]
pub struct UnknownEviction(pub String);

impl FromStr for Eviction {
    type Err = UnknownEviction;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Eviction::ALL
            .into_iter()
            .find(|e| e.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownEviction(s.to_owned()))
    }
}

/// Resolution of the access clock. Fine enough to tell a key read every few tens of
/// milliseconds from one left alone for a second (a small cache turns over that fast); a word
/// is still written at most a hundred times a second, however often its key is read.
pub const TICK: Duration = Duration::from_millis(10);

/// Ticks per minute, for LFU's decay.
const TICKS_PER_MINUTE: u32 = 6000;

/// What a new key's LFU counter starts at (Redis's `LFU_INIT_VAL`).
pub const LFU_INIT: u8 = 5;

/// How slowly the LFU counter grows (Redis's `lfu-log-factor` default).
const LFU_LOG_FACTOR: u32 = 10;

/// Minutes without a use that take one off the LFU counter (Redis's `lfu-decay-time` default).
pub const LFU_DECAY_MINUTES: u32 = 1;

/// A store's access policy and clock.
#[derive(Debug)]
pub(super) struct Access {
    policy: Eviction,
    started: Instant,
    /// Ticks since `started`, as of the last [`Access::tick`].
    clock: AtomicU32,
    /// Ticks added to the time since `started`: only tests move the clock on by hand.
    skew: AtomicU32,
}

impl Access {
    pub fn new(policy: Eviction) -> Self {
        Access {
            policy,
            started: Instant::now(),
            clock: AtomicU32::new(0),
            skew: AtomicU32::new(0),
        }
    }

    /// Advances the clock to the time now. Wraps after 2^32 ticks (16 months), which the
    /// arithmetic on words allows for: idle times are told apart up to half of that.
    pub fn tick(&self) {
        let ticks = (self.started.elapsed().as_millis() / TICK.as_millis()) as u32;
        let ticks = ticks.wrapping_add(self.skew.load(Ordering::Relaxed));
        self.clock.store(ticks, Ordering::Relaxed);
    }

    /// Moves the clock on by `ticks`, for tests of aging.
    #[cfg(test)]
    pub fn advance(&self, ticks: u32) {
        self.skew.fetch_add(ticks, Ordering::Relaxed);
        self.clock.fetch_add(ticks, Ordering::Relaxed);
    }

    #[inline]
    fn now(&self) -> u32 {
        self.clock.load(Ordering::Relaxed)
    }

    /// The word of a key that was just created.
    #[inline]
    pub fn initial(&self) -> u32 {
        match self.policy {
            Eviction::None => 0,
            Eviction::Lru => self.now(),
            Eviction::Lfu => lfu_word(LFU_INIT, minutes(self.now())),
        }
    }

    /// Records a use of the key whose word this is.
    #[inline]
    pub fn touch(&self, word: &AtomicU32) {
        match self.policy {
            Eviction::None => {}
            Eviction::Lru => {
                let now = self.now();
                if word.load(Ordering::Relaxed) != now {
                    word.store(now, Ordering::Relaxed);
                }
            }
            Eviction::Lfu => {
                let old = word.load(Ordering::Relaxed);
                let now = minutes(self.now());
                let counter = lfu_increment(lfu_decayed(old, now), random());
                let new = lfu_word(counter, now);
                if new != old {
                    word.store(new, Ordering::Relaxed);
                }
            }
        }
    }

    /// How much the key whose word this is should go before others: the higher, the sooner.
    pub fn score(&self, word: u32) -> u32 {
        match self.policy {
            Eviction::None => 0,
            Eviction::Lru => since(self.now(), word),
            Eviction::Lfu => {
                let now = minutes(self.now());
                let idle = u32::from(minutes_since(now, (word >> 8) as u16));
                (255 - u32::from(lfu_decayed(word, now))) << 16 | idle
            }
        }
    }
}

/// Ticks from `then` to `now` on a wrapping clock; 0 if `then` is later (a word stamped by a
/// reader that saw the clock move on before this one did).
fn since(now: u32, then: u32) -> u32 {
    let d = now.wrapping_sub(then);
    if d > u32::MAX / 2 {
        0
    } else {
        d
    }
}

/// The clock's minute, wrapping at 2^16.
fn minutes(ticks: u32) -> u16 {
    (ticks / TICKS_PER_MINUTE) as u16
}

fn minutes_since(now: u16, then: u16) -> u16 {
    now.wrapping_sub(then)
}

fn lfu_word(counter: u8, minute: u16) -> u32 {
    u32::from(minute) << 8 | u32::from(counter)
}

/// The counter of an LFU word after the decay due at minute `now`.
fn lfu_decayed(word: u32, now: u16) -> u8 {
    let counter = (word & 0xff) as u8;
    let periods = u32::from(minutes_since(now, (word >> 8) as u16)) / LFU_DECAY_MINUTES;
    counter.saturating_sub(periods.min(255) as u8)
}

/// The counter after one use, given a uniformly random `r`: one more with probability
/// `1 / ((counter - LFU_INIT) * LFU_LOG_FACTOR + 1)`.
fn lfu_increment(counter: u8, r: u32) -> u8 {
    if counter == u8::MAX {
        return counter;
    }
    let base = u32::from(counter.saturating_sub(LFU_INIT));
    // r / 2^32 < 1 / (base * factor + 1), without floating point.
    if u64::from(r) * u64::from(base * LFU_LOG_FACTOR + 1) < 1 << 32 {
        counter + 1
    } else {
        counter
    }
}

/// A cheap per-thread random number (xorshift32): the odds of an LFU increment need no better.
fn random() -> u32 {
    thread_local! {
        static STATE: Cell<u32> = Cell::new({
            // Seeded from std's per-thread random keys, never zero.
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u8(0);
            (h.finish() as u32) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        s.set(x);
        x
    })
}

/// A key that may be evicted, as sampled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The key.
    pub key: String,
    /// The version it held when sampled: an eviction removes this version only.
    pub version: Version,
    /// How much it should go before others, when sampled: the higher, the sooner (see
    /// [`Eviction`]).
    pub score: u32,
    /// Bytes it is charged ([`footprint`](super::footprint)): what evicting it frees, once
    /// its tombstone is collected.
    pub bytes: u64,
}

/// The best eviction candidates seen across samples, at most [`EvictionPool::CAPACITY`] (Redis
/// keeps the same number): a sample of a few keys rarely holds the very best, but a pool
/// fed by many samples comes close to it.
#[derive(Debug, Default)]
pub struct EvictionPool {
    /// Ascending by score: the best is last.
    entries: Vec<Candidate>,
}

impl EvictionPool {
    /// Candidates kept at most.
    pub const CAPACITY: usize = 16;

    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of candidates held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Offers a candidate: kept if the pool has room or it beats the worst held (which then
    /// goes). A key already held is replaced by its newer sample.
    pub fn offer(&mut self, candidate: Candidate) {
        if let Some(i) = self.entries.iter().position(|c| c.key == candidate.key) {
            self.entries.remove(i);
        }
        if self.entries.len() >= Self::CAPACITY {
            if self.entries[0].score >= candidate.score {
                return;
            }
            self.entries.remove(0);
        }
        let at = self.entries.partition_point(|c| c.score <= candidate.score);
        self.entries.insert(at, candidate);
    }

    /// Takes the best candidate out.
    pub fn pop(&mut self) -> Option<Candidate> {
        self.entries.pop()
    }

    /// The best candidate's score.
    pub fn best_score(&self) -> Option<u32> {
        self.entries.last().map(|c| c.score)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(access: &Access) -> AtomicU32 {
        AtomicU32::new(access.initial())
    }

    #[test]
    fn policies_parse_by_name_and_print_back() {
        for (policy, name) in Eviction::ALL.into_iter().zip(Eviction::NAMES) {
            assert_eq!(name.parse::<Eviction>(), Ok(policy));
            assert_eq!(policy.to_string(), name);
            assert_eq!(
                serde_json::to_string(&policy).unwrap(),
                format!("\"{name}\"")
            );
        }
        assert_eq!("LRU".parse::<Eviction>(), Ok(Eviction::Lru));
        assert!("random".parse::<Eviction>().is_err());
        assert!(!Eviction::None.evicts() && Eviction::Lru.evicts() && Eviction::Lfu.evicts());
    }

    #[test]
    fn lru_scores_idle_ticks_and_a_use_resets_them() {
        let access = Access::new(Eviction::Lru);
        let (old, recent) = (word(&access), word(&access));
        access.advance(50);
        access.touch(&recent);
        access.advance(10);
        let score = |w: &AtomicU32| access.score(w.load(Ordering::Relaxed));
        assert_eq!((score(&old), score(&recent)), (60, 10));
        // A word stamped after the clock the scorer reads counts as just used.
        let later = AtomicU32::new(access.now() + 3);
        assert_eq!(score(&later), 0);
    }

    #[test]
    fn lru_ages_across_the_wrap_of_the_clock() {
        let access = Access::new(Eviction::Lru);
        access.advance(u32::MAX - 5);
        let w = word(&access);
        access.advance(20);
        assert_eq!(access.score(w.load(Ordering::Relaxed)), 20);
    }

    #[test]
    fn the_lfu_counter_grows_logarithmically() {
        // Deterministic draws: the share of uses that count falls as the counter grows.
        let mut counter = LFU_INIT;
        let mut uses = 0u32;
        let mut r = 0x1234_5678u32;
        let mut reached = Vec::new();
        while counter < 12 {
            r ^= r << 13;
            r ^= r >> 17;
            r ^= r << 5;
            let next = lfu_increment(counter, r);
            uses += 1;
            if next != counter {
                reached.push(uses);
                counter = next;
            }
        }
        // The first use always counts; the seventh increment takes about (6 * 10 + 1) uses.
        assert_eq!(reached[0], 1);
        assert!(uses > 150 && uses < 600, "{uses} uses to reach 12");
        assert_eq!(lfu_increment(255, 0), 255);
        assert_eq!(lfu_increment(LFU_INIT, u32::MAX), LFU_INIT + 1);
        assert_eq!(lfu_increment(LFU_INIT + 1, u32::MAX), LFU_INIT + 1);
    }

    #[test]
    fn lfu_counters_decay_a_step_per_idle_minute() {
        let access = Access::new(Eviction::Lfu);
        let w = word(&access);
        for _ in 0..500 {
            access.touch(&w);
        }
        let hot = (w.load(Ordering::Relaxed) & 0xff) as u8;
        assert!(hot > LFU_INIT + 2, "{hot}");
        let cold = word(&access);
        let score = |w: &AtomicU32| access.score(w.load(Ordering::Relaxed));
        assert!(score(&cold) > score(&w));
        // Three idle minutes take three off; a use then counts from the decayed value.
        access.advance(3 * TICKS_PER_MINUTE);
        assert_eq!(
            lfu_decayed(w.load(Ordering::Relaxed), minutes(access.now())),
            hot - 3
        );
        assert_eq!(score(&w) >> 16, 255 - u32::from(hot - 3));
        assert_eq!(score(&w) & 0xffff, 3);
        access.touch(&w);
        let now = (w.load(Ordering::Relaxed) & 0xff) as u8;
        assert!(now == hot - 3 || now == hot - 2, "{now}");
        // Long idle takes it to zero, not below.
        access.advance(1000 * TICKS_PER_MINUTE);
        assert_eq!(
            lfu_decayed(w.load(Ordering::Relaxed), minutes(access.now())),
            0
        );
    }

    #[test]
    fn no_policy_keeps_no_word() {
        let access = Access::new(Eviction::None);
        let w = AtomicU32::new(7);
        access.advance(100);
        access.touch(&w);
        assert_eq!((w.load(Ordering::Relaxed), access.score(7)), (7, 0));
    }

    fn candidate(key: &str, score: u32) -> Candidate {
        Candidate {
            key: key.into(),
            version: Version(1),
            score,
            bytes: 1,
        }
    }

    #[test]
    fn the_pool_keeps_the_best_candidates_seen() {
        let mut pool = EvictionPool::new();
        for i in 0..100u32 {
            // Scores in a scrambled order.
            let score = i.wrapping_mul(37) % 100;
            pool.offer(candidate(&format!("k{score}"), score));
        }
        assert_eq!(pool.len(), EvictionPool::CAPACITY);
        assert_eq!(pool.best_score(), Some(99));
        let popped: Vec<u32> = std::iter::from_fn(|| pool.pop()).map(|c| c.score).collect();
        assert_eq!(popped, (84..100).rev().collect::<Vec<_>>());
        // A key offered again is held once, with its newer score.
        pool.offer(candidate("a", 5));
        pool.offer(candidate("b", 6));
        pool.offer(candidate("a", 1));
        assert_eq!(pool.pop(), Some(candidate("b", 6)));
        assert_eq!(pool.pop(), Some(candidate("a", 1)));
        assert!(pool.is_empty());
    }
}
