//! Cluster-wide scans of the keys, a page at a time.
//!
//! Keys are listed in *scan order*: by store shard ([`Store::shard_of`]), then by key bytes —
//! an order that depends on the keys alone, not on where they are placed. A page ends at a
//! [`Cursor`], the last (shard, key) it covered, and the next page starts after it, through any
//! node and under any later cluster map.
//!
//! The coordinating node asks every node of its map (members, and departing nodes while a
//! change runs) at once, with [`ScanKeys`], for the next `limit` live keys each replicates after
//! the cursor. A node that returned `limit` keys and has more has only spoken for the range up
//! to its last key, so the page is cut at the smallest such last key: up to the cut, every node
//! has said everything it holds. A key up to the cut is listed if a majority of its replicas —
//! by the coordinator's placement; while a change runs, a majority of the new owners or of the
//! previous ones — reported it live. A chosen register is held by a majority of one of those
//! sets, and a replaced one (a deleted key, an overwritten expiry) by a minority of each, so a
//! lagging replica neither hides a key nor brings a deleted one back.
//!
//! A node that does not answer is tolerated only while the others hold a majority of every
//! key's replicas (at most ⌊R/2⌋ silent nodes, and none that would break this during a change):
//! then every chosen key is reported by at least one node. A key whose live reports, with the
//! silent replicas added, could make a majority is read the single-key way before it is listed
//! or left out. With more nodes silent the page fails with `quorum_unavailable`: a scan never
//! skips keys without saying so.

use std::collections::BTreeMap;
use std::sync::Arc;

use kvcore::{validate_key, ClusterMap, ErrorCode, NodeId, Store, MAX_KEY_BYTES};
use kvnet::rpc::{KeysPage, ScanKeys, MAX_BATCH_ITEMS};
use kvnet::{CallError, RemoteError};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::batch::in_window;
use crate::clock::Clock;
use crate::coordinator::Coordinator;
use crate::detector::FailureDetector;
use crate::error::Error;
use crate::peers::PeerClient;
use crate::readiness::Readiness;
use crate::topology::{is_reserved, replicas_into, Topology};

/// Keys a page holds when the client does not say.
pub const DEFAULT_SCAN_LIMIT: usize = 100;

/// The most keys a page holds; a larger `limit` is lowered to it.
pub const MAX_SCAN_LIMIT: usize = MAX_BATCH_ITEMS;

/// Times a page is asked for again because this node adopted a later map meanwhile.
const PLACEMENTS: usize = 3;

/// Where a scan resumes: the last key a page covered, with its store shard.
///
/// Ordered as scan order is. Clients see it as an opaque, URL-safe string
/// ([`encode`](Cursor::encode)).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    /// The key's store shard, [`Store::shard_of`] of the key.
    pub shard: u32,
    /// The key.
    pub key: String,
}

/// The format byte that starts every encoded cursor, so the format can change without old
/// cursors being misread.
const CURSOR_FORMAT: u8 = 1;

impl Cursor {
    /// The cursor of `key`.
    pub fn of(key: &str) -> Cursor {
        Cursor {
            shard: Store::shard_of(key) as u32,
            key: key.to_owned(),
        }
    }

    /// Lowercase hex of a format byte, the shard (two bytes, big-endian) and the key's bytes.
    pub fn encode(&self) -> String {
        let shard = u16::try_from(self.shard).unwrap_or(u16::MAX);
        let mut bytes = vec![CURSOR_FORMAT];
        bytes.extend_from_slice(&shard.to_be_bytes());
        bytes.extend_from_slice(self.key.as_bytes());
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads a cursor [`encode`](Cursor::encode) made, refusing anything else: a shard that is
    /// not the key's, or a key no client could have written.
    pub fn decode(text: &str) -> Result<Cursor, Error> {
        let bad = |why: &str| {
            Error::bad_request(
                ErrorCode::InvalidRequest,
                format!("invalid cursor: {why}; pass the cursor of the previous page as it was"),
            )
        };
        if !text.len().is_multiple_of(2) || text.len() > 2 * (3 + MAX_KEY_BYTES) {
            return Err(bad("wrong length"));
        }
        let bytes: Vec<u8> = (0..text.len())
            .step_by(2)
            .map(|i| {
                text.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect::<Option<_>>()
            .ok_or_else(|| bad("not hex"))?;
        let [format, high, low, key @ ..] = &bytes[..] else {
            return Err(bad("too short"));
        };
        if *format != CURSOR_FORMAT {
            return Err(bad("unknown format"));
        }
        let key = std::str::from_utf8(key).map_err(|_| bad("the key is not UTF-8"))?;
        if validate_key(key).is_err() || is_reserved(key) {
            return Err(bad("not a key"));
        }
        let cursor = Cursor {
            shard: u32::from(u16::from_be_bytes([*high, *low])),
            key: key.to_owned(),
        };
        if cursor != Cursor::of(key) {
            return Err(bad("the shard is not the key's"));
        }
        Ok(cursor)
    }
}

/// One page of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    /// The keys, in scan order. A page may hold fewer than asked for, even none, and still not
    /// be the last.
    pub keys: Vec<String>,
    /// Where the next page starts; `None` once the scan is complete.
    pub cursor: Option<Cursor>,
}

/// Runs scans: asks every node for its page and merges them.
#[derive(Debug)]
pub struct Scanner {
    topology: Arc<Topology>,
    store: Arc<Store>,
    readiness: Arc<Readiness>,
    client: Arc<PeerClient>,
    detector: Arc<FailureDetector>,
    coordinator: Arc<Coordinator>,
    clock: Arc<Clock>,
}

/// What became of one node's part of a page.
enum Answer {
    Page(KeysPage),
    /// No usable answer: why.
    Silent(String),
    /// The node acts on another map epoch than the page was placed under.
    OtherEpoch,
}

impl Scanner {
    /// A scanner of the cluster `topology` describes, answering for this node from `store`.
    pub fn new(
        topology: Arc<Topology>,
        store: Arc<Store>,
        readiness: Arc<Readiness>,
        client: Arc<PeerClient>,
        detector: Arc<FailureDetector>,
        coordinator: Arc<Coordinator>,
        clock: Arc<Clock>,
    ) -> Self {
        Scanner {
            topology,
            store,
            readiness,
            client,
            detector,
            coordinator,
            clock,
        }
    }

    /// The page of up to `limit` (1 to [`MAX_SCAN_LIMIT`]) live keys starting with `prefix`
    /// that follows `after` in scan order.
    pub async fn page(
        &self,
        prefix: &str,
        after: Option<&Cursor>,
        limit: usize,
        request_id: u64,
    ) -> Result<ScanPage, Error> {
        let mut placed = 0;
        loop {
            let map = self.topology.map();
            let request = ScanKeys {
                prefix: prefix.to_owned(),
                after: after.map(|c| (c.shard, c.key.clone())),
                limit: limit as u32,
                now_ms: self.clock.now_ms(),
            };
            let answers = self.ask_all(&map, &request, request_id).await;
            // A node at a later epoch made this node fetch its map: place the page again.
            if self.topology.epoch() != map.epoch() && placed < PLACEMENTS {
                placed += 1;
                continue;
            }
            let mut pages = BTreeMap::new();
            let mut silent = Vec::new();
            for (node, answer) in answers {
                match answer {
                    Answer::Page(page) => match check_page(&page, after, limit) {
                        Ok(()) => {
                            pages.insert(node, page);
                        }
                        Err(why) => {
                            tracing::warn!(node = %node, why, "a node answered a scan wrongly");
                            silent.push((node, why.to_owned()));
                        }
                    },
                    Answer::Silent(why) => silent.push((node, why)),
                    Answer::OtherEpoch => {
                        silent.push((node, "it acts on another cluster map epoch".to_owned()))
                    }
                }
            }
            let replicas = self.topology.replicas();
            check_silence(&map, replicas, &silent)?;
            let silent: Vec<NodeId> = silent.into_iter().map(|(n, _)| n).collect();
            let merged = merge(&map, replicas, &pages, &silent, limit);
            return self.settle(merged, request_id).await;
        }
    }

    /// Asks every node of `map` for its page; this node answers itself.
    async fn ask_all(
        &self,
        map: &Arc<ClusterMap>,
        request: &ScanKeys,
        request_id: u64,
    ) -> BTreeMap<NodeId, Answer> {
        let me = self.topology.me();
        let frame = self.client.frame_at(map.epoch(), request_id, 1, request);
        let mut tasks = JoinSet::new();
        let mut answers = BTreeMap::new();
        for node in map.nodes().iter().chain(map.departing()) {
            if node.id == me {
                continue;
            }
            if self.detector.is_down(node.id) {
                answers.insert(node.id, Answer::Silent("it is down".into()));
                continue;
            }
            let (client, frame, node) = (self.client.clone(), frame.clone(), node.clone());
            let ask = async move {
                let answer = match client.send(&node, &frame).await {
                    Ok(page) => Answer::Page(page),
                    Err(e) if e.remote_code() == Some(ErrorCode::EpochMismatch) => {
                        Answer::OtherEpoch
                    }
                    Err(e) => Answer::Silent(silence(&e)),
                };
                (node.id, answer)
            };
            // In this request's span, as every task serving it.
            tasks.spawn(ask.in_current_span());
        }
        if map.node(me).is_some() {
            answers.insert(me, self.own_page(map.epoch(), request));
        }
        while let Some(joined) = tasks.join_next().await {
            if let Ok((node, answer)) = joined {
                answers.insert(node, answer);
            }
        }
        answers
    }

    /// This node's own part of a page placed under the map of `epoch`.
    fn own_page(&self, epoch: u64, request: &ScanKeys) -> Answer {
        if !self.readiness.is_ready() {
            return Answer::Silent("it is catching up".into());
        }
        let map = self.topology.pin();
        if map.epoch() != epoch {
            return Answer::OtherEpoch;
        }
        let replicas = self.topology.replicas();
        Answer::Page(local_page(
            &self.store,
            &map,
            replicas,
            self.topology.me(),
            request,
        ))
    }

    /// Reads the keys the answers left undecided, then takes the page.
    async fn settle(&self, merged: Merged, request_id: u64) -> Result<ScanPage, Error> {
        let Merged { candidates, cursor } = merged;
        let undecided: Vec<(usize, String)> = candidates
            .iter()
            .enumerate()
            .filter(|(_, (_, verdict))| *verdict == Verdict::Undecided)
            .map(|(i, (c, _))| (i, c.key.clone()))
            .collect();
        let mut live: Vec<bool> = candidates
            .iter()
            .map(|(_, verdict)| *verdict == Verdict::Listed)
            .collect();
        let coordinator = self.coordinator.clone();
        let reads = in_window(undecided.clone(), move |key| {
            let coordinator = coordinator.clone();
            async move { coordinator.get(&key, 0, request_id).await }
        })
        .await;
        if reads.len() != undecided.len() {
            return Err(Error::Remote(RemoteError::new(
                ErrorCode::Internal,
                "a read of the scan ended without an answer",
            )));
        }
        for (i, read) in reads {
            live[i] = read?.is_some();
        }
        let keys = candidates
            .into_iter()
            .zip(live)
            .filter(|(_, live)| *live)
            .map(|((c, _), _)| c.key)
            .collect();
        Ok(ScanPage { keys, cursor })
    }
}

/// Why a node's failed answer leaves it silent.
fn silence(e: &CallError) -> String {
    match e {
        CallError::Remote(r) => format!("it answered {}: {}", r.code, r.message),
        other => other.to_string(),
    }
}

/// Refuses a page some of whose nodes did not answer, unless the others hold a majority of
/// every key's replicas (see the module's documentation).
fn check_silence(
    map: &ClusterMap,
    replicas: usize,
    silent: &[(NodeId, String)],
) -> Result<(), Error> {
    if silent.is_empty() {
        return Ok(());
    }
    let replicas = replicas.max(1);
    let mut smallest = replicas.min(map.len());
    if let Some(previous) = map.previous_members() {
        smallest = smallest.min(replicas.min(previous.len()));
    }
    if silent.len() <= smallest / 2 {
        return Ok(());
    }
    let who: Vec<String> = silent
        .iter()
        .map(|(node, why)| format!("node {node}: {why}"))
        .collect();
    Err(Error::QuorumUnavailable {
        message: format!(
            "the scan needs every node but {} to answer, and {} did not ({})",
            smallest / 2,
            silent.len(),
            who.join("; ")
        ),
    })
}

/// Checks a node's page against what it was asked: at most `limit` keys, in scan order, after
/// `after`, each in its shard, and not empty if it says more follow.
fn check_page(page: &KeysPage, after: Option<&Cursor>, limit: usize) -> Result<(), &'static str> {
    if page.keys.len() > limit {
        return Err("more keys than asked for");
    }
    if page.more && page.keys.is_empty() {
        return Err("no keys, yet more to follow");
    }
    let mut last = after.cloned();
    for (shard, key) in &page.keys {
        let cursor = Cursor::of(key);
        if cursor.shard != *shard {
            return Err("a key outside its shard");
        }
        if last.as_ref().is_some_and(|l| *l >= cursor) {
            return Err("keys out of scan order");
        }
        last = Some(cursor);
    }
    Ok(())
}

/// How the answers decide a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// A majority of its replicas reported it live.
    Listed,
    /// Not listed: the replicas that did not report it live are a majority.
    Unlisted,
    /// The silent replicas could make either a majority: read it.
    Undecided,
}

/// The keys a page may hold, each with its verdict, and where the page ends.
#[derive(Debug)]
struct Merged {
    /// Every key some node reported up to the page's end, in scan order.
    candidates: Vec<(Cursor, Verdict)>,
    /// The page's end; `None` if the scan is complete.
    cursor: Option<Cursor>,
}

/// Merges the nodes' pages (see the module's documentation): cuts at the smallest last key of a
/// node with more, decides each key reported up to the cut, and stops at `limit` keys that are
/// listed or undecided.
fn merge(
    map: &Arc<ClusterMap>,
    replicas: usize,
    pages: &BTreeMap<NodeId, KeysPage>,
    silent: &[NodeId],
    limit: usize,
) -> Merged {
    let cut = pages
        .values()
        .filter(|p| p.more)
        .filter_map(|p| p.keys.last())
        .map(|(shard, key)| Cursor {
            shard: *shard,
            key: key.clone(),
        })
        .min();
    let mut reported: BTreeMap<Cursor, Vec<NodeId>> = BTreeMap::new();
    for (&node, page) in pages {
        for (shard, key) in &page.keys {
            let cursor = Cursor {
                shard: *shard,
                key: key.clone(),
            };
            if cut.as_ref().is_some_and(|cut| cursor > *cut) {
                break;
            }
            reported.entry(cursor).or_default().push(node);
        }
    }
    let mut candidates = Vec::new();
    let mut taken = 0;
    let total = reported.len();
    for (i, (cursor, reporters)) in reported.into_iter().enumerate() {
        let verdict = decide(map, replicas, &cursor.key, &reporters, silent);
        if verdict != Verdict::Unlisted {
            taken += 1;
        }
        candidates.push((cursor, verdict));
        if taken == limit && (i + 1 < total || cut.is_some()) {
            let end = candidates.last().map(|(c, _)| c.clone());
            return Merged {
                candidates,
                cursor: end,
            };
        }
    }
    Merged {
        candidates,
        cursor: cut,
    }
}

/// How `reporters`, the nodes that reported `key` live, decide it under `map`.
fn decide(
    map: &Arc<ClusterMap>,
    replicas: usize,
    key: &str,
    reporters: &[NodeId],
    silent: &[NodeId],
) -> Verdict {
    if is_reserved(key) {
        return Verdict::Unlisted;
    }
    let placement = Topology::placement_in(map, replicas, key);
    let mut live: Vec<NodeId> = reporters
        .iter()
        .copied()
        .filter(|&n| placement.contains(n))
        .collect();
    if placement.is_majority_of_either(&live) {
        return Verdict::Listed;
    }
    live.extend(silent.iter().copied().filter(|&n| placement.contains(n)));
    if placement.is_majority_of_either(&live) {
        Verdict::Undecided
    } else {
        Verdict::Unlisted
    }
}

/// Checks a peer's [`ScanKeys`].
pub fn check_request(request: &ScanKeys) -> Result<(), RemoteError> {
    let invalid = |message: String| RemoteError::new(ErrorCode::InvalidRequest, message);
    if request.limit == 0 || request.limit as usize > MAX_SCAN_LIMIT {
        return Err(invalid(format!(
            "a scan asks for 1 to {MAX_SCAN_LIMIT} keys, not {}",
            request.limit
        )));
    }
    if request.prefix.len() > MAX_KEY_BYTES {
        return Err(invalid(format!(
            "a prefix is at most {MAX_KEY_BYTES} bytes"
        )));
    }
    if let Some((shard, key)) = &request.after {
        if *shard as usize >= Store::SHARDS {
            return Err(invalid(format!("shard {shard} does not exist")));
        }
        validate_key(key)?;
    }
    Ok(())
}

/// This node's page for `request` under `map` (whose epoch the caller checked): the next live
/// keys it replicates there, reserved keys left out.
pub fn local_page(
    store: &Store,
    map: &ClusterMap,
    replicas: usize,
    me: NodeId,
    request: &ScanKeys,
) -> KeysPage {
    let (mut owners, mut previous) = (Vec::with_capacity(replicas), Vec::new());
    let after = request
        .after
        .as_ref()
        .map(|(shard, key)| (*shard as usize, key.as_str()));
    let (keys, more) = store.live_keys_after(
        after,
        &request.prefix,
        request.limit as usize,
        request.now_ms,
        |key| {
            if is_reserved(key) {
                return false;
            }
            replicas_into(map, key, replicas, &mut owners, &mut previous);
            owners.contains(&me)
        },
    );
    KeysPage {
        keys: keys
            .into_iter()
            .map(|(shard, key)| (shard as u32, key))
            .collect(),
        more,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvcore::{partition, MapSpec, NodeInfo};

    fn map(nodes: u32) -> Arc<ClusterMap> {
        let spec = MapSpec {
            epoch: 1,
            nodes: (0..nodes)
                .map(|i| NodeInfo {
                    id: NodeId(i),
                    addr: format!("127.0.0.1:{}", 5100 + i),
                })
                .collect(),
            partitioner: partition::default_partitioner().name().to_owned(),
            previous: None,
            departing: Vec::new(),
        };
        Arc::new(ClusterMap::from_spec(&spec).unwrap())
    }

    fn page(keys: &[&str], more: bool) -> KeysPage {
        let mut keys: Vec<(u32, String)> = keys
            .iter()
            .map(|k| (Store::shard_of(k) as u32, (*k).to_owned()))
            .collect();
        keys.sort();
        KeysPage { keys, more }
    }

    #[test]
    fn cursors_round_trip_and_forged_ones_are_refused() {
        for key in ["a", "user:42", "ключ", &"k".repeat(MAX_KEY_BYTES)] {
            let cursor = Cursor::of(key);
            let text = cursor.encode();
            assert!(text.bytes().all(|b| b.is_ascii_hexdigit()));
            assert_eq!(Cursor::decode(&text).unwrap(), cursor);
        }
        let good = Cursor::of("user:42").encode();
        let wrong_shard = Cursor {
            shard: (Cursor::of("user:42").shard + 1) % 256,
            key: "user:42".into(),
        }
        .encode();
        let reserved = format!("01{:04x}00", Store::shard_of("\0"));
        for bad in [
            "",
            "0",
            "zz",
            &good[..good.len() - 1],
            &good.replace("01", "02"),
            &wrong_shard,
            &reserved,
            "0100ffff",
            &"01".repeat(2000),
        ] {
            let e = Cursor::decode(bad).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidRequest, "{bad:?}");
        }
    }

    #[test]
    fn a_key_is_listed_once_a_majority_of_its_replicas_report_it() {
        let map = map(3);
        let key = "k";
        let p = Topology::placement_in(&map, 3, key);
        let r = &p.replicas;
        assert_eq!(decide(&map, 3, key, &r[..2], &[]), Verdict::Listed);
        // One replica alone: a write in flight, or a copy a delete missed.
        assert_eq!(decide(&map, 3, key, &r[..1], &[]), Verdict::Unlisted);
        // With another one silent it could be either: read it.
        assert_eq!(decide(&map, 3, key, &r[..1], &r[1..2]), Verdict::Undecided);
        assert_eq!(decide(&map, 3, key, &[], &r[1..2]), Verdict::Unlisted);
        assert_eq!(decide(&map, 3, "\0x", r, &[]), Verdict::Unlisted);
    }

    #[test]
    fn pages_are_cut_where_the_first_node_with_more_stopped() {
        let map = map(3);
        let mut keys: Vec<String> = (0..30).map(|i| format!("k{i}")).collect();
        keys.sort_by_key(|k| Cursor::of(k));
        let all: Vec<&str> = keys.iter().map(String::as_str).collect();
        // Every node holds every key (R = 3); node 1 stopped early, at the 10th.
        let pages: BTreeMap<NodeId, KeysPage> = [
            (NodeId(0), page(&all[..20], true)),
            (NodeId(1), page(&all[..10], true)),
            (NodeId(2), page(&all, false)),
        ]
        .into();
        let merged = merge(&map, 3, &pages, &[], 20);
        assert_eq!(merged.cursor, Some(Cursor::of(all[9])));
        let listed: Vec<&str> = merged.candidates.iter().map(|(c, _)| &c.key[..]).collect();
        assert_eq!(listed, all[..10]);
        // The limit cuts first when it comes first; with every node done, no cursor.
        let merged = merge(&map, 3, &pages, &[], 4);
        assert_eq!(merged.cursor, Some(Cursor::of(all[3])));
        let done: BTreeMap<NodeId, KeysPage> =
            (0..3).map(|n| (NodeId(n), page(&all, false))).collect();
        let merged = merge(&map, 3, &done, &[], 30);
        assert_eq!((merged.candidates.len(), merged.cursor), (30, None));
        let merged = merge(&map, 3, &done, &[], 100);
        assert_eq!((merged.candidates.len(), merged.cursor), (30, None));
    }

    #[test]
    fn silent_nodes_are_tolerated_only_while_every_key_keeps_a_majority() {
        let why = |n: u32| (NodeId(n), "down".to_owned());
        assert!(check_silence(&map(3), 3, &[]).is_ok());
        assert!(check_silence(&map(3), 3, &[why(1)]).is_ok());
        assert!(check_silence(&map(3), 3, &[why(1), why(2)]).is_err());
        assert!(check_silence(&map(4), 1, &[why(1)]).is_err());
        assert!(check_silence(&map(5), 5, &[why(1), why(2)]).is_ok());
        let e = check_silence(&map(4), 2, &[why(1), why(3)]).unwrap_err();
        assert_eq!(e.code(), ErrorCode::QuorumUnavailable);
    }

    #[test]
    fn wrong_pages_from_peers_are_noticed() {
        let good = page(&["a", "b", "c"], true);
        assert!(check_page(&good, None, 3).is_ok());
        assert!(check_page(&good, None, 2).is_err());
        assert!(check_page(&page(&[], true), None, 3).is_err());
        let mut reversed = good.clone();
        reversed.keys.reverse();
        assert!(check_page(&reversed, None, 3).is_err());
        let mut misplaced = good.clone();
        misplaced.keys[0].0 = (misplaced.keys[0].0 + 1) % 256;
        assert!(check_page(&misplaced, None, 3).is_err());
        let last = Cursor {
            shard: good.keys[2].0,
            key: good.keys[2].1.clone(),
        };
        assert!(check_page(&good, Some(&last), 3).is_err());
    }

    #[test]
    fn peers_cannot_ask_for_unbounded_or_invalid_scans() {
        let ok = ScanKeys {
            prefix: String::new(),
            after: None,
            limit: 1,
            now_ms: 0,
        };
        assert!(check_request(&ok).is_ok());
        for bad in [
            ScanKeys {
                limit: 0,
                ..ok.clone()
            },
            ScanKeys {
                limit: MAX_SCAN_LIMIT as u32 + 1,
                ..ok.clone()
            },
            ScanKeys {
                prefix: "p".repeat(MAX_KEY_BYTES + 1),
                ..ok.clone()
            },
            ScanKeys {
                after: Some((256, "k".into())),
                ..ok.clone()
            },
            ScanKeys {
                after: Some((0, String::new())),
                ..ok.clone()
            },
        ] {
            assert!(check_request(&bad).is_err(), "{bad:?}");
        }
    }
}
