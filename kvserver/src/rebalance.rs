//! Membership changes as they run on every node: writing the record, copying the keys a change
//! moves here, finishing the change, and dropping the keys that moved away.
//!
//! Nothing here is run by one node for the cluster: every node does its own part (copy, report,
//! clean up) and any node finishes a change whose copies are all reported, through a
//! compare-and-set of the record, so a change goes on whichever nodes crash. See
//! `docs/membership.md`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kvcore::{ClusterMap, NodeId, Precondition, Store, Value, Version};
use kvnet::rpc::{Set, SetReply};
use tokio::time::Instant;

use crate::catchup::{copy_shards, Copied};
use crate::coordinator::Coordinator;
use crate::error::Error;
use crate::incarnations::Incarnation;
use crate::membership::{Membership, Step};
use crate::metrics::Metrics;
use crate::peers::PeerClient;
use crate::readiness::Readiness;
use crate::request_id;
use crate::topology::{forget_foreign, replicas_into, Topology, MAP_KEY};

/// Reads the record from the map register, linearizably, with the register's version.
/// `None` until a node has recorded it.
pub async fn read_record(
    coordinator: &Coordinator,
) -> Result<Option<(Membership, Version)>, Error> {
    let Some(entry) = coordinator.get(MAP_KEY, 0, request_id::current()).await? else {
        return Ok(None);
    };
    let record = serde_json::from_slice(entry.value.as_bytes()).map_err(|e| {
        Error::Remote(kvnet::RemoteError::new(
            kvcore::ErrorCode::Internal,
            format!("the recorded cluster map does not decode: {e}"),
        ))
    })?;
    Ok(Some((record, entry.version)))
}

/// [`read_record`], once the record exists: a cluster whose map is not recorded yet is still
/// starting, and changes nothing.
async fn recorded(coordinator: &Coordinator) -> Result<(Membership, Version), Error> {
    read_record(coordinator)
        .await?
        .ok_or_else(|| Error::QuorumUnavailable {
            message: "the cluster map is not recorded yet: the cluster is still starting".into(),
        })
}

/// Applies a change to the record: reads it, asks `change` what to write, and writes that if the
/// register still holds what was read; on a race, reads again. Returns the record as it stands
/// after the change, adopted by this node, and whether this call wrote it (`false`: the record
/// already said what the change asks).
pub async fn change(
    coordinator: &Coordinator,
    topology: &Topology,
    change: impl Fn(&Membership) -> Result<Step, Error>,
) -> Result<(Membership, bool), Error> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (record, version) = recorded(coordinator).await?;
        // Whatever the change decides, the record read is the cluster's: a change someone
        // started and did not see through goes on from here.
        adopt(topology, record.clone());
        let next = match change(&record)? {
            Step::Already => return Ok((record, false)),
            Step::Write(next) => next,
        };
        let json = serde_json::to_vec(&next).expect("a record always encodes");
        let set = Set {
            key: MAP_KEY.into(),
            value: Value::binary(json),
            precondition: Precondition::IfVersion(version),
            ttl_ms: None,
            keep_ttl: false,
        };
        match coordinator.write(set, 0, request_id::current()).await {
            Ok(SetReply::Written { .. }) => {
                adopt(topology, next.clone());
                return Ok((next, true));
            }
            // Another change got in first: decide again on what it wrote.
            Ok(SetReply::Conflict(_)) if Instant::now() < deadline => continue,
            Ok(SetReply::Conflict(_)) => {
                return Err(Error::QuorumUnavailable {
                    message: "the cluster map kept changing while this change was tried".into(),
                })
            }
            // Not applied: try again. Perhaps applied: reading the record tells.
            Err(e) if Instant::now() < deadline && retryable(&e) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn retryable(e: &Error) -> bool {
    use kvcore::ErrorCode as C;
    matches!(
        e.code(),
        C::QuorumUnavailable
            | C::OwnerUnavailable
            | C::OutcomeUnknown
            | C::OwnerTimeout
            | C::EpochMismatch
            | C::StaleIncarnation
            | C::Recovering
    )
}

fn adopt(topology: &Topology, record: Membership) {
    if let Err(e) = topology.adopt(record) {
        tracing::error!(error = %e, "the recorded cluster map does not build a map");
    }
}

/// How far the running change has come, as this node sees it.
#[derive(Debug, Default)]
pub struct Progress {
    /// Keys this node holds that the change still has to copy to a member that has not
    /// reported its copies (an estimate: each such member copies from several nodes).
    pub remaining_keys: AtomicU64,
}

/// Counts the keys in `store` that the change of `map` moves to one of `copying`.
pub fn count_moving(store: &Store, map: &ClusterMap, r: usize, copying: &[NodeId]) -> u64 {
    let (mut replicas, mut previous) = (Vec::with_capacity(2 * r), Vec::new());
    let mut count = 0;
    for shard in 0..Store::SHARDS {
        let mut after: Option<String> = None;
        loop {
            let page = store.ballots_page(shard, after.as_deref(), 1 << 20, |key| {
                let owners = replicas_into(map, key, r, &mut replicas, &mut previous);
                replicas[..owners].iter().any(|n| {
                    copying.contains(n) && (!previous.contains(n) || owners < previous.len())
                })
            });
            count += page.items.len() as u64;
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }
    count
}

/// How often the keys a running change has yet to move are counted (a scan of the store, so
/// not often: it takes CPU from clients and copies alike).
const COUNT_EVERY: Duration = Duration::from_secs(30);

/// A node's part in membership changes, run in the background.
#[derive(Debug)]
pub struct Rebalancer {
    /// Asks peers for pages.
    pub client: Arc<PeerClient>,
    /// Where copies go, and what is dropped.
    pub store: Arc<Store>,
    /// The map.
    pub topology: Arc<Topology>,
    /// Reads and writes the record.
    pub coordinator: Arc<Coordinator>,
    /// Whether this node votes (a node copies only once it does).
    pub readiness: Arc<Readiness>,
    /// This node's incarnation (copies are asked for in it).
    pub incarnation: Arc<Incarnation>,
    /// Keys moved in and out.
    pub metrics: Arc<Metrics>,
    /// What `GET /cluster` shows.
    pub progress: Arc<Progress>,
}

impl Rebalancer {
    /// Does this node's part of every change: wakes when the map changes, and every `retry`
    /// while a change runs (to see the other members' reports and to finish it).
    pub async fn run(self, retry: Duration) {
        let mut changes = self.topology.subscribe();
        // The epoch whose copies this node has reported, and the one it last cleaned up after.
        let mut reported = 0;
        let mut cleaned = 0;
        let mut counted: Option<(Instant, u64)> = None;
        loop {
            let map = self.topology.map();
            let epoch = map.epoch();
            let me = self.topology.me();
            if !self.topology.takes_part() {
                self.readiness.set_removed();
                tracing::warn!(node = %me, epoch, "this node was removed from the cluster");
                return;
            }
            if map.is_changing() && self.readiness.is_ready() {
                let record = self.topology.record();
                // Counting takes a scan of the store: at most every few seconds.
                let count_due = counted.is_none_or(|(at, counted_epoch): (Instant, u64)| {
                    counted_epoch != epoch || at.elapsed() >= COUNT_EVERY
                });
                let remaining = if !count_due {
                    self.progress.remaining_keys.load(Ordering::Relaxed)
                } else {
                    counted = Some((Instant::now(), epoch));
                    let (store, map, copying) =
                        (self.store.clone(), map.clone(), record.copying.clone());
                    let r = record.replicas;
                    tokio::task::spawn_blocking(move || count_moving(&store, &map, r, &copying))
                        .await
                        .unwrap_or_default()
                };
                self.progress
                    .remaining_keys
                    .store(remaining, Ordering::Relaxed);
                if reported != epoch && record.copying.contains(&me) {
                    if let Some(moved) = self.copy(&map, &record).await {
                        let reporting = change(&self.coordinator, &self.topology, |r| {
                            Ok(r.report(epoch, me, moved))
                        });
                        match reporting.await {
                            Ok(_) => reported = epoch,
                            Err(e) => tracing::info!(error = %e, "reporting copies failed"),
                        }
                    }
                }
                self.finish_if_copied(epoch).await;
            } else if !map.is_changing() && cleaned == epoch && self.readiness.is_ready() {
                if let Ok(Some((record, _))) = read_record(&self.coordinator).await {
                    adopt(&self.topology, record);
                }
            } else if !map.is_changing() && cleaned != epoch && self.readiness.is_ready() {
                self.progress.remaining_keys.store(0, Ordering::Relaxed);
                let r = self.topology.replicas();
                let store = self.store.clone();
                let dropped = {
                    let map = map.clone();
                    tokio::task::spawn_blocking(move || forget_foreign(&store, &map, r, me))
                        .await
                        .unwrap_or_default()
                };
                if dropped > 0 {
                    self.metrics.moved_out.fetch_add(dropped, Ordering::Relaxed);
                    tracing::info!(keys = dropped, epoch, "dropped the keys that moved away");
                }
                self.topology.mark_clean(epoch);
                cleaned = epoch;
            }
            // While the cluster is stable, the record is read now and then all the same: a
            // change whose writer crashed before anyone adopted it is found that way.
            let wait = if map.is_changing() || !self.readiness.is_ready() {
                retry
            } else {
                (retry * 50).max(Duration::from_secs(1))
            };
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Finishes the change of `epoch` if the record says every member has copied.
    async fn finish_if_copied(&self, epoch: u64) {
        let Ok(Some((record, _))) = read_record(&self.coordinator).await else {
            return;
        };
        adopt(&self.topology, record.clone());
        if record.map.epoch != epoch || !record.copying.is_empty() {
            return;
        }
        match change(&self.coordinator, &self.topology, |r| r.finish(epoch)).await {
            Ok((done, true)) => tracing::info!(
                epoch = done.map.epoch,
                moved_keys = done.moved_keys,
                "membership change finished"
            ),
            Ok((_, false)) => {}
            Err(e) => tracing::info!(error = %e, "finishing the membership change failed"),
        }
    }

    /// Copies the keys the change of `map` moves to this node from its previous members: from
    /// enough of them that every key was copied from a majority of its previous replicas
    /// (fewer when the change was forced). Each copy is asked for at the change's epoch, so
    /// each source has adopted it before it answers, and from then on refuses the rounds of
    /// nodes still at the previous epoch. `None` if the map changed meanwhile.
    async fn copy(&self, map: &ClusterMap, record: &Membership) -> Option<u64> {
        let me = self.topology.me();
        let epoch = map.epoch();
        let previous = map.previous_members().unwrap_or_default();
        let sources: Vec<NodeId> = previous.iter().copied().filter(|&n| n != me).collect();
        let r_old = record.replicas.min(previous.len()).max(1);
        let may_miss = if record.forced {
            sources.len().saturating_sub(1)
        } else {
            (r_old - 1) / 2
        };
        let mut copied: Vec<NodeId> = Vec::new();
        let mut moved = 0;
        let started = Instant::now();
        loop {
            // One source at a time: a copy takes CPU from the clients on both ends.
            for &source in &sources {
                if copied.contains(&source) {
                    continue;
                }
                let copy = copy_shards(
                    &self.client,
                    &self.store,
                    &self.incarnation,
                    source,
                    Some(epoch),
                );
                if let Copied::All(totals) = copy.await {
                    copied.push(source);
                    moved = moved.max(totals.keys);
                }
                if self.topology.epoch() != epoch {
                    return None;
                }
            }
            let missing = sources.len() - copied.len();
            if missing <= may_miss {
                self.metrics.moved_in.fetch_add(moved, Ordering::Relaxed);
                tracing::info!(
                    epoch,
                    keys = moved,
                    from = ?copied,
                    seconds = format!("{:.2}", started.elapsed().as_secs_f64()),
                    "copied the keys this membership change moves here"
                );
                return Some(moved);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            if self.topology.epoch() != epoch {
                return None;
            }
        }
    }
}
