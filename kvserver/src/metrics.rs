//! Request counters of a node, reported by `/stats` and `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// Per-node request counters. Every part of the node bumps its own; `/stats` and `/metrics` read them.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
        }

        /// `/stats`' view of the counters; see [`Metrics`] for what each one counts.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
        #[allow(missing_docs)]
        pub struct MetricsSnapshot {
            $(pub $name: u64,)*
        }

        impl Metrics {
            /// The current values.
            pub fn snapshot(&self) -> MetricsSnapshot {
                MetricsSnapshot {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

counters! {
    /// Client reads.
    gets,
    /// Client writes (sets, deletes, increments).
    writes,
    /// Client batches (`/mget`, `/mset`); their keys count as reads or writes too.
    batches,
    /// Scan pages this node coordinated.
    scans,
    /// Client requests this node coordinated as a replica of the key.
    local,
    /// Client requests forwarded to a replica of the key.
    forwarded,
    /// Requests received from peers.
    peer,
    /// Proposal rounds this node started: a prepare and an accept, or one accept under a
    /// promise cached from the key's previous round.
    rounds,
    /// Proposal rounds retried after a conflicting ballot.
    retries,
    /// Reads answered in one round trip because the replicas agreed.
    fast_reads,
    /// Replicas brought up to date by reads and anti-entropy.
    repairs,
    /// Tombstones this node collected once every replica of their key held them.
    collected,
    /// Anti-entropy passes run.
    anti_entropy_passes,
    /// Anti-entropy passes skipped because no copy can have gone missing since the last clean one.
    anti_entropy_skips,
    /// Keys copied here by membership changes (each counted once per change).
    moved_in,
    /// Keys dropped here after a membership change moved them to other nodes.
    moved_out,
    /// Expired keys this node's background sweep removed.
    expired,
    /// Keys this node's evictor removed to stay within its memory budget (cache mode).
    evicted,
    /// Requests answered with a 4xx status.
    client_errors,
    /// Requests answered with a 5xx status.
    server_errors,
}

/// Adds one to a counter.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
