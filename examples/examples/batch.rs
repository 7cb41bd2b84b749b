//! Measures batches and scans over HTTP against an in-process 3-node cluster (R = 3, HTTP between
//! the nodes), all through `kvserver::Client`:
//!
//! - reading `--batch` keys with one `mget` (`POST /mget`), against the same number of `get`s
//!   (`GET /kv/{key}`) one after another on one kept-alive connection, and all in flight at once;
//! - writing them with one `mset` (`POST /mset`), against as many `set`s (`PUT /kv/{key}`) one
//!   after another;
//! - loading `--keys` fresh keys with `mset` of 1000, against a fifth as many with single `set`s,
//!   64 in flight;
//! - scanning the loaded keys with `scan_with_limit("key:", --page)` (`GET /keys?prefix=key:&
//!   limit=--page`, page after page through one node, following the cursor; keys/s).
//!
//! Every round asks a different node (a client of each node, which neither retries elsewhere
//! nor learns the other members), for different random keys. Ratios are of mean times.
//!
//! ```console
//! cargo run --release -p examples --example batch
//! cargo run --release -p examples --example batch -- --keys 100000 --batch 100 --rounds 200
//! cargo run --release -p examples --example batch -- --keys 2000 --rounds 10   # a quick run
//! ```

use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::TryStreamExt;
use kvcore::Value;
use kvserver::client::SetItem;
use kvserver::LocalCluster;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Batches against single-key requests, and scan throughput.
#[derive(Parser, Debug)]
struct Args {
    /// Keys loaded, and scanned.
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    /// Keys per batch.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Measured rounds of each kind.
    #[arg(long, default_value_t = 200)]
    rounds: usize,
    /// Keys per scan page.
    #[arg(long, default_value_t = 1000)]
    page: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 32)]
    value_size: usize,
}

fn key(i: usize) -> String {
    format!("key:{i:08}")
}

/// Mean and percentiles of some timings.
struct Timings(Vec<Duration>);

impl Timings {
    fn mean(&self) -> Duration {
        self.0.iter().sum::<Duration>() / self.0.len().max(1) as u32
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.0.clone();
        sorted.sort();
        let at = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len().max(1));
        sorted.get(at - 1).copied().unwrap_or_default()
    }

    fn report(&self, what: &str) {
        println!(
            "{what:<44} mean {:>9.3} ms   p50 {:>9.3} ms   p99 {:>9.3} ms",
            ms(self.mean()),
            ms(self.percentile(0.5)),
            ms(self.percentile(0.99)),
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn ratio(a: &Timings, b: &Timings) -> f64 {
    a.mean().as_secs_f64() / b.mean().as_secs_f64()
}

/// Scan pages the cluster's nodes have served so far.
fn scan_pages(cluster: &LocalCluster) -> u64 {
    (0..cluster.len())
        .map(|i| cluster.node(i).metrics().snapshot().scans)
        .sum()
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    assert!((1..=1000).contains(&args.batch), "--batch is 1 to 1000");
    let cluster = LocalCluster::builder()
        .nodes(3)
        .configure(|c| c.replicas = 3)
        .start()
        .await
        .expect("cluster starts");
    let clients = examples::node_clients(&cluster);
    let value = Value::string("v".repeat(args.value_size));

    // Load through mset, a thousand keys a request, the nodes in turn.
    let loading = Instant::now();
    for (n, start) in (0..args.keys).step_by(1000).enumerate() {
        let items =
            (start..(start + 1000).min(args.keys)).map(|i| SetItem::new(key(i), value.clone()));
        let results = clients[n % clients.len()]
            .mset(items)
            .await
            .expect("the node answers the batch");
        if let Some(failed) = results.iter().find_map(|r| r.as_ref().err()) {
            panic!("a write of the load failed: {failed}");
        }
    }
    let load = loading.elapsed();
    println!(
        "loaded {} keys of {} bytes with /mset of 1000 in {:.2} s: {:.0} keys/s",
        args.keys,
        args.value_size,
        load.as_secs_f64(),
        args.keys as f64 / load.as_secs_f64()
    );

    // The same, fresh keys written one set each, 64 in flight.
    let singles = (args.keys / 5).max(1);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let loading = Instant::now();
    let workers: Vec<_> = (0..64)
        .map(|w| {
            let (client, next) = (clients[w % clients.len()].clone(), next.clone());
            let value = value.clone();
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= singles {
                        break;
                    }
                    client
                        .set(&format!("single:{i:08}"), value.clone())
                        .await
                        .expect("the write succeeds");
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("the writer ran");
    }
    let single_load = loading.elapsed();
    println!(
        "loaded {singles} keys with single PUTs, 64 in flight, in {:.2} s: {:.0} keys/s \
         (/mset: {:.1}x)",
        single_load.as_secs_f64(),
        singles as f64 / single_load.as_secs_f64(),
        (args.keys as f64 / load.as_secs_f64()) / (singles as f64 / single_load.as_secs_f64())
    );

    let mut rng = SmallRng::seed_from_u64(7);
    let pick = |rng: &mut SmallRng| -> Vec<String> {
        (0..args.batch)
            .map(|_| key(rng.gen_range(0..args.keys)))
            .collect()
    };
    let (mut mget, mut sequential, mut parallel) = (Vec::new(), Vec::new(), Vec::new());
    let (mut mset, mut puts) = (Vec::new(), Vec::new());
    // The first rounds warm connections and caches up and are not counted.
    let warmup = (args.rounds / 10).max(5);
    for round in 0..warmup + args.rounds {
        let client = &clients[round % clients.len()];
        let keys = pick(&mut rng);

        let started = Instant::now();
        let read = client
            .mget(&keys)
            .await
            .expect("the node answers the batch");
        let took = started.elapsed();
        assert!(
            read.iter()
                .all(|r| matches!(r, Ok(Some(e)) if e.value == value)),
            "{read:?}"
        );
        mget.push(took);

        let started = Instant::now();
        for k in &keys {
            let entry = client.get(k).await.expect("the read succeeds");
            assert!(entry.is_some(), "{k} is missing");
        }
        sequential.push(started.elapsed());

        let started = Instant::now();
        let gets: Vec<_> = keys
            .iter()
            .map(|k| {
                let (client, k) = (client.clone(), k.clone());
                tokio::spawn(async move { client.get(&k).await })
            })
            .collect();
        for get in gets {
            let entry = get.await.expect("the read ran").expect("the read succeeds");
            assert!(entry.is_some());
        }
        parallel.push(started.elapsed());

        let items: Vec<SetItem> = keys
            .iter()
            .map(|k| SetItem::new(k.clone(), value.clone()))
            .collect();
        let started = Instant::now();
        let written = client
            .mset(items)
            .await
            .expect("the node answers the batch");
        mset.push(started.elapsed());
        assert!(written.iter().all(Result::is_ok), "{written:?}");

        let started = Instant::now();
        for k in &keys {
            client
                .set(k, value.clone())
                .await
                .expect("the write succeeds");
        }
        puts.push(started.elapsed());

        if round + 1 == warmup {
            for timings in [
                &mut mget,
                &mut sequential,
                &mut parallel,
                &mut mset,
                &mut puts,
            ] {
                timings.clear();
            }
        }
    }
    let b = args.batch;
    let (mget, sequential, parallel) = (Timings(mget), Timings(sequential), Timings(parallel));
    let (mset, puts) = (Timings(mset), Timings(puts));
    println!();
    println!(
        "{} rounds of {b} random keys, 3 nodes, R = 3, over HTTP:",
        args.rounds
    );
    mget.report(&format!("1 POST /mget of {b} keys"));
    sequential.report(&format!("{b} GET /kv/{{key}}, one after another"));
    parallel.report(&format!("{b} GET /kv/{{key}}, all in flight"));
    mset.report(&format!("1 POST /mset of {b} keys"));
    puts.report(&format!("{b} PUT /kv/{{key}}, one after another"));
    println!(
        "mget is {:.1}x faster than sequential GETs and {:.1}x faster than concurrent GETs",
        ratio(&sequential, &mget),
        ratio(&parallel, &mget)
    );
    println!(
        "mset is {:.1}x faster than sequential PUTs",
        ratio(&puts, &mset)
    );

    // A whole scan, a page at a time, following the cursor; the pages are counted by the
    // nodes that served them.
    let scanner = &clients[0];
    let pages_before = scan_pages(&cluster);
    let started = Instant::now();
    let listed = scanner
        .scan_with_limit("key:", args.page)
        .try_fold(0usize, |n, _| async move { Ok(n + 1) })
        .await
        .expect("the scan succeeds");
    let scan = started.elapsed();
    let pages = (scan_pages(&cluster) - pages_before).max(1);
    assert_eq!(listed, args.keys, "the scan listed every key once");
    println!();
    println!(
        "scanned {listed} keys in {pages} pages of up to {} in {:.2} s: {:.0} keys/s, {:.2} ms a page",
        args.page,
        scan.as_secs_f64(),
        listed as f64 / scan.as_secs_f64(),
        ms(scan) / pages as f64
    );
    println!(
        "scan vs GET: listing a key costs {:.1}x less than reading it with sequential GETs",
        (sequential.mean().as_secs_f64() / b as f64) / (scan.as_secs_f64() / listed as f64)
    );
    drop(clients);
    cluster.shutdown().await;
}
