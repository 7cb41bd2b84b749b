//! The seed keys of the original deployment, written once, when the cluster is created.
//!
//! Every node, once caught up, makes sure of every seed key before it reports healthy: it asks
//! the key's primary to write it unless the key was ever written ([`Seed`]). The first such
//! write creates the key; every later one finds it written (or deleted) and changes nothing.
//! So once any node reports healthy, the seed keys are readable on every node, and a seed key a
//! client deleted never comes back when a node restarts.
//!
//! "Ever written" is read off the key's own replicas: a key that accepted anything has a ballot
//! above zero. Seed keys are therefore never collected (see [`is_seed_key`]): a deleted seed key
//! keeps its tombstone, which is what remembers the delete. A cluster that loses every replica
//! of a seed key (all its nodes restarted at once) is a new cluster and is seeded again.

use std::sync::Arc;
use std::time::Duration;

use kvcore::Value;
use kvnet::rpc::{Seed, SetReply};

use crate::coordinator::Coordinator;
use crate::peers::new_request_id;

pub use crate::operation::{is_seed_key, SEED_KEYS};

/// Writes every seed key that was never written, retrying every `retry` until each write has
/// an answer. Runs after the node has caught up.
pub async fn seed(coordinator: Arc<Coordinator>, retry: Duration) {
    for (key, value) in SEED_KEYS {
        let op = Seed {
            key: key.into(),
            value: Value::string(value),
        };
        if let SetReply::Written { version, .. } = write_once(&coordinator, op, retry).await {
            tracing::info!(key, %version, "seed key written");
        }
    }
}

/// Runs `op` (which writes only a key that was never written) until it has an answer, trying
/// again every `retry`: the first node to get there writes, the others find it written.
pub async fn write_once(coordinator: &Coordinator, op: Seed, retry: Duration) -> SetReply {
    loop {
        match coordinator.write(op.clone(), 0, new_request_id()).await {
            Ok(reply) => return reply,
            Err(e) => {
                tracing::debug!(error = %e, key = ?op.key, "writing a record failed; retrying");
                tokio::time::sleep(retry).await;
            }
        }
    }
}
