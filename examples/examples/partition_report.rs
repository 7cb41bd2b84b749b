//! Measures every built-in partitioner: balance, movement on join and leave, lookup cost.
//!
//! ```text
//! cargo run --release -p examples --example partition_report
//! cargo run --release -p examples --example partition_report -- --markdown
//! ```
//!
//! For each partitioner and cluster size it places seeded random keys on nodes `0..n` (or
//! `--first-id`..) and prints:
//! - primary keys per node, peak/mean and min/mean (and peak/mean counting all 3 replicas);
//! - the fraction of keys whose primary changes when node `n` joins, as a ratio to the optimum
//!   1/(n+1), and whether every key's 3 owners changed only by the newcomer moving in;
//! - the same when node `n/2` leaves (optimum 1/n), and whether only its keys changed owners;
//! - the layout build time and a quick in-process lookup time (hash + 3 owners), best of 3
//!   passes over all keys. The criterion bench (`cargo bench -p kvcore --bench partition`) is
//!   the careful measurement.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use kvcore::partition::{self, key_hash, Layout, Partitioner};
use kvcore::NodeId;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Replicas per key for the replica-level checks and the lookup timing.
const REPLICAS: usize = 3;

#[derive(Debug, Parser)]
#[command(about = "Balance, movement and lookup cost of every partitioner")]
struct Args {
    /// Number of random keys.
    #[arg(long, default_value_t = 1_000_000)]
    keys: usize,
    /// Seed of the key generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Cluster sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [4, 16, 64])]
    nodes: Vec<u32>,
    /// Id of the first node: nodes are `first_id..first_id + n`.
    #[arg(long, default_value_t = 0)]
    first_id: u32,
    /// Only these partitioners (by name), comma-separated.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Print a markdown table.
    #[arg(long)]
    markdown: bool,
}

/// Keys as one byte buffer plus end offsets, so timing walks memory the way a server would.
struct Keys {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Keys {
    fn random(count: usize, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut bytes = Vec::with_capacity(count * 16);
        let mut ends = Vec::with_capacity(count);
        for _ in 0..count {
            // Short keys of the shape services use ("user:1234567"), 6 to 15 bytes.
            let id: u64 = rng.gen_range(0..10_000_000_000);
            bytes.extend_from_slice(format!("user:{id}").as_bytes());
            ends.push(bytes.len());
        }
        Keys { bytes, ends }
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(s, &e)| &self.bytes[s..e])
    }
}

struct Row {
    partitioner: &'static str,
    nodes: u32,
    build: Duration,
    peak: f64,
    min: f64,
    replica_peak: f64,
    join_ratio: f64,
    join_only_new: bool,
    leave_ratio: f64,
    leave_only_leaver: bool,
    lookup_ns: f64,
}

/// Owners of every key, `REPLICAS` per key (fewer only if the cluster is smaller).
fn place(layout: &dyn Layout, hashes: &[u64]) -> Vec<[Option<NodeId>; REPLICAS]> {
    let mut out = Vec::with_capacity(REPLICAS);
    hashes
        .iter()
        .map(|&h| {
            out.clear();
            layout.owners(h, REPLICAS, &mut out);
            let mut row = [None; REPLICAS];
            for (cell, &id) in row.iter_mut().zip(&out) {
                *cell = Some(id);
            }
            row
        })
        .collect()
}

/// Whether `after` is `before` with `joined` inserted somewhere (and the list cut to length),
/// or unchanged.
fn changed_only_by_join(
    before: &[Option<NodeId>],
    after: &[Option<NodeId>],
    joined: NodeId,
) -> bool {
    let kept: Vec<_> = after.iter().filter(|&&o| o != Some(joined)).collect();
    kept.iter().zip(before).all(|(&&a, &b)| a == b)
}

fn measure(p: &dyn Partitioner, first: u32, nodes: u32, keys: &Keys, hashes: &[u64]) -> Row {
    let ids: Vec<NodeId> = (first..first + nodes).map(NodeId).collect();
    let started = Instant::now();
    let layout = p.layout(&ids);
    let build = started.elapsed();
    let base = place(layout.as_ref(), hashes);

    let mut primary = vec![0u64; nodes as usize];
    let mut replicas = vec![0u64; nodes as usize];
    for row in &base {
        primary[(row[0].expect("a primary").0 - first) as usize] += 1;
        for id in row.iter().flatten() {
            replicas[(id.0 - first) as usize] += 1;
        }
    }
    let mean = hashes.len() as f64 / f64::from(nodes);
    let replica_mean = replicas.iter().sum::<u64>() as f64 / f64::from(nodes);
    let peak = *primary.iter().max().unwrap() as f64 / mean;
    let min = *primary.iter().min().unwrap() as f64 / mean;
    let replica_peak = *replicas.iter().max().unwrap() as f64 / replica_mean;

    let joiner = NodeId(first + nodes);
    let mut joined_ids = ids.clone();
    joined_ids.push(joiner);
    let joined = place(p.layout(&joined_ids).as_ref(), hashes);
    let join_moved = base
        .iter()
        .zip(&joined)
        .filter(|(b, a)| b[0] != a[0])
        .count();
    let join_only_new = base
        .iter()
        .zip(&joined)
        .all(|(b, a)| changed_only_by_join(b, a, joiner));

    let leaver = NodeId(first + nodes / 2);
    let left_ids: Vec<NodeId> = ids.iter().copied().filter(|&id| id != leaver).collect();
    let (leave_moved, leave_only_leaver) = if left_ids.is_empty() {
        (0, true)
    } else {
        let left = place(p.layout(&left_ids).as_ref(), hashes);
        let moved = base.iter().zip(&left).filter(|(b, a)| b[0] != a[0]).count();
        // Leaving is joining in reverse: the old lists are the new ones with the leaver inserted.
        let only = base
            .iter()
            .zip(&left)
            .all(|(b, a)| changed_only_by_join(a, b, leaver));
        (moved, only)
    };

    let total = hashes.len() as f64;
    let join_ratio = join_moved as f64 / total * f64::from(nodes + 1);
    let leave_ratio = leave_moved as f64 / total * f64::from(nodes);

    let mut out = Vec::with_capacity(REPLICAS);
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let started = Instant::now();
        for key in keys.iter() {
            out.clear();
            layout.owners(key_hash(black_box(key)), REPLICAS, &mut out);
            black_box(&out);
        }
        best = best.min(started.elapsed().as_nanos() as f64 / total);
    }

    Row {
        partitioner: p.name(),
        nodes,
        build,
        peak,
        min,
        replica_peak,
        join_ratio,
        join_only_new,
        leave_ratio,
        leave_only_leaver,
        lookup_ns: best,
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn print(rows: &[Row], markdown: bool) {
    let header = [
        "partitioner",
        "nodes",
        "peak/mean",
        "min/mean",
        "peak/mean (3 replicas)",
        "join moved / optimal",
        "join: only to new",
        "leave moved / optimal",
        "leave: only leaver's",
        "lookup ns",
        "build ms",
    ];
    let cells: Vec<[String; 11]> = rows
        .iter()
        .map(|r| {
            [
                r.partitioner.to_owned(),
                r.nodes.to_string(),
                format!("{:.4}", r.peak),
                format!("{:.4}", r.min),
                format!("{:.4}", r.replica_peak),
                format!("{:.4}", r.join_ratio),
                yes_no(r.join_only_new).to_owned(),
                format!("{:.4}", r.leave_ratio),
                yes_no(r.leave_only_leaver).to_owned(),
                format!("{:.1}", r.lookup_ns),
                format!("{:.1}", r.build.as_secs_f64() * 1e3),
            ]
        })
        .collect();
    if markdown {
        println!("| {} |", header.join(" | "));
        let rule: Vec<&str> = header
            .iter()
            .enumerate()
            .map(|(i, _)| if i < 2 { "---" } else { "---:" })
            .collect();
        println!("|{}|", rule.join("|"));
        for row in &cells {
            println!("| {} |", row.join(" | "));
        }
        return;
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            cells
                .iter()
                .map(|c| c[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cols: Vec<&str>| {
        let padded: Vec<String> = cols
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, &w))| {
                if i == 0 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        println!("{}", padded.join("  "));
    };
    line(header.to_vec());
    for row in &cells {
        line(row.iter().map(String::as_str).collect());
    }
}

fn main() {
    let args = Args::parse();
    let keys = Keys::random(args.keys, args.seed);
    let hashes: Vec<u64> = keys.iter().map(key_hash).collect();
    let partitioners: Vec<Arc<dyn Partitioner>> = partition::all()
        .into_iter()
        .filter(|p| args.only.is_empty() || args.only.iter().any(|name| name == p.name()))
        .collect();

    let mut rows = Vec::new();
    for p in &partitioners {
        for &nodes in &args.nodes {
            eprintln!("measuring {} at {nodes} nodes", p.name());
            rows.push(measure(
                p.as_ref(),
                args.first_id,
                nodes.max(1),
                &keys,
                &hashes,
            ));
        }
    }
    let first = args.first_id;
    let at = |offset: &str| {
        if first == 0 {
            offset.to_owned()
        } else {
            format!("{first}+{offset}")
        }
    };
    println!(
        "{} keys (seed {}), nodes {first}..{}; join adds node {}, leave removes node {}; \
         default partitioner: {}",
        args.keys,
        args.seed,
        at("n"),
        at("n"),
        at("n/2"),
        partition::default_partitioner().name()
    );
    print(&rows, args.markdown);
}
