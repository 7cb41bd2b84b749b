//! The wall clock that expiry times are read against.
//!
//! An expiry time is written as milliseconds since 1970 by the node that applies the write, and
//! compared with the clock of the node running a later round on the key. Nodes' clocks are
//! assumed to agree within a bound (NTP keeps them within milliseconds); a key expires that much
//! early or late, never inconsistently, because only a replicated round removes it (see
//! `docs/consistency.md`).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The system clock, shifted by an offset that tests set to give nodes skewed clocks.
#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: AtomicI64,
}

impl Clock {
    /// Milliseconds since 1970.
    pub fn now_ms(&self) -> u64 {
        let system = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        system
            .saturating_add(self.offset_ms.load(Ordering::Relaxed))
            .max(0) as u64
    }

    /// Makes this clock read `offset_ms` ahead of the system clock (behind if negative).
    pub fn set_offset_ms(&self, offset_ms: i64) {
        self.offset_ms.store(offset_ms, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_moves_the_reading() {
        let clock = Clock::default();
        let before = clock.now_ms();
        clock.set_offset_ms(3_600_000);
        let ahead = clock.now_ms();
        assert!(ahead >= before + 3_600_000, "{before} -> {ahead}");
        clock.set_offset_ms(-3_600_000);
        assert!(clock.now_ms() < ahead - 3_600_000);
    }
}
