//! The seed keys of the original deployment, written once the node has caught up.

use std::sync::Arc;
use std::time::Duration;

use kvcore::{Precondition, Value};
use kvnet::rpc::Set;

use crate::coordinator::Coordinator;
use crate::peers::new_request_id;
use crate::topology::Topology;

/// The keys every cluster serves from the start, as in the original deployment: `a` and `b`.
pub const SEED_KEYS: [(&str, &str); 2] = [("a", "alpha"), ("b", "beta")];

/// Writes the seed keys this node is primary for, unless they exist.
pub async fn seed(coordinator: Arc<Coordinator>, topology: Arc<Topology>, retry: Duration) {
    for (key, value) in SEED_KEYS {
        if topology.placement(key).primary() != topology.me() {
            continue;
        }
        let set = Set {
            key: key.into(),
            value: Value::string(value),
            precondition: Precondition::IfAbsent,
        };
        for _ in 0..10 {
            match coordinator.write(set.clone(), 0, new_request_id()).await {
                Ok(_) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "seeding {key:?} failed; retrying");
                    tokio::time::sleep(retry).await;
                }
            }
        }
    }
}
