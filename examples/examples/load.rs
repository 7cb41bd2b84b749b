//! A load generator for a running cluster (or any server that answers `GET /get/{key}` and
//! `POST /set`).
//!
//! ```console
//! cargo run --release -p examples --example load -- \
//!     --targets http://127.0.0.1:5100,http://127.0.0.1:5101 --duration 10s --concurrency 64 \
//!     --get-ratio 0.9 --keys 100000 --value-size 32 --zipf 0.99 --preload
//! ```
//!
//! Requests go through `kvserver::Client`, one per worker and target (so each worker keeps one
//! HTTP/1.1 connection per target alive; `--pooled` shares one client per target between the
//! workers instead), without its retries: every request is counted once, against the target it
//! was sent to. `--concurrency` workers send their requests to the targets in turn, as a client
//! that knows every node would. Without `--rate`
//! the load is closed-loop (a worker sends its next request when the last one is answered); with
//! `--rate N` requests are scheduled at N per second overall and latency is measured from the
//! scheduled time, so a server that falls behind is charged for the queue it causes.
//!
//! It reports throughput, latency percentiles, errors by status, how evenly requests went to the
//! targets, and, from each target's `GET /stats`, how evenly keys and work are spread over the
//! nodes. `--json` prints the same as one JSON object, for scripts (`scripts/bench.sh`).
//!
//! Keys are `key:` and a 12-digit number (16 bytes); the value of key `i` is `i` zero-padded to
//! `--value-size` bytes, stored with the `string` encoding.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use hdrhistogram::Histogram;
use kvcore::Value;
use kvserver::{Client, ClientError};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value as Json};
use tokio::time::Instant;

/// Generates load against kv nodes and reports throughput, latency and balance.
#[derive(Parser, Debug)]
struct Args {
    /// Base URLs of the nodes, e.g. http://127.0.0.1:5100,http://127.0.0.1:5101.
    #[arg(long, value_delimiter = ',', required = true)]
    targets: Vec<String>,
    /// Length of the measured run, e.g. 10s, 500ms, 2m; 0 skips it (useful with --preload).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Load sent before the measured run and not counted, so connections and caches are warm.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Requests in flight at once (workers, each with its own connections).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Fraction of requests that are GETs; the rest are SETs.
    #[arg(long, default_value_t = 0.9)]
    get_ratio: f64,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 32)]
    value_size: usize,
    /// Zipf exponent of key popularity, in [0, 1); 0 is uniform.
    #[arg(long, default_value_t = 0.99)]
    zipf: f64,
    /// Pick keys uniformly (the same as --zipf 0).
    #[arg(long)]
    uniform: bool,
    /// Target operations per second overall (open loop); closed loop if unset.
    #[arg(long)]
    rate: Option<f64>,
    /// Write every key once before the run.
    #[arg(long)]
    preload: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Send through one client per target shared by all workers (one connection pool per
    /// target), instead of a client per worker and target.
    #[arg(long)]
    pooled: bool,
    /// Threads of the load generator's runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Seed of the key and operation choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Deadline of one request; a request past it counts as a `timeout` error.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    request_timeout: Duration,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = validate(&args) {
        eprintln!("load: {e}");
        return ExitCode::FAILURE;
    }
    let mut runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(args.threads);
        b
    };
    let runtime = match runtime.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("load: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load: {e}");
            ExitCode::FAILURE
        }
    }
}

fn validate(args: &Args) -> Result<(), String> {
    if args.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    if !(0.0..=1.0).contains(&args.get_ratio) {
        return Err("--get-ratio must be between 0 and 1".into());
    }
    if args.keys == 0 || args.keys >= 1_000_000_000_000 {
        return Err("--keys must be between 1 and 10^12 - 1 (keys have 12 digits)".into());
    }
    if !(0.0..1.0).contains(&args.zipf) {
        return Err("--zipf must be in [0, 1)".into());
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err("--rate must be a positive number of operations per second".into());
    }
    Ok(())
}

/// Parses `10s`, `500ms`, `2m`, `1.5s` or a plain number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 10s or 500ms"))?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}: use ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{s:?}: {e}"))
}

/// A node to send to.
#[derive(Debug)]
struct Target {
    /// `host:port`.
    addr: String,
}

fn parse_target(url: &str) -> Result<Target, String> {
    let addr = url
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    if addr.is_empty() || addr.contains('/') {
        return Err(format!(
            "target {url:?} should look like http://127.0.0.1:5100"
        ));
    }
    Ok(Target { addr })
}

fn key(i: u64) -> String {
    format!("key:{i:012}")
}

fn value(i: u64, size: usize) -> String {
    let digits = format!("{i:0>size$}");
    digits[digits.len() - size..].to_string()
}

/// Zipf-distributed ranks in `0..n` with exponent `theta` in (0, 1), in constant time per
/// sample (Gray et al., "Quickly generating billion-record synthetic databases", SIGMOD 1994).
/// Rank 0 is the most popular; key `i` has rank `i`, and placement hashes keys, so the popular
/// keys land on nodes independently of their rank.
#[derive(Debug, Clone)]
struct Zipf {
    n: f64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

impl Zipf {
    fn new(n: u64, theta: f64) -> Self {
        let zeta = |n: u64| (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zetan = zeta(n);
        let nf = n as f64;
        Zipf {
            n: nf,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta: (1.0 - (2.0 / nf).powf(1.0 - theta)) / (1.0 - zeta(2.min(n)) / zetan),
        }
    }

    fn sample(&self, rng: &mut SmallRng) -> u64 {
        let u: f64 = rng.gen();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) && self.n >= 2.0 {
            return 1;
        }
        let rank = self.n * (self.eta * u - self.eta + 1.0).powf(self.alpha);
        (rank as u64).min(self.n as u64 - 1)
    }
}

#[derive(Debug, Clone)]
enum Keys {
    Uniform(u64),
    Zipf(Zipf),
}

impl Keys {
    fn pick(&self, rng: &mut SmallRng) -> u64 {
        match self {
            Keys::Uniform(n) => rng.gen_range(0..*n),
            Keys::Zipf(z) => z.sample(rng),
        }
    }
}

/// A request to send, built per operation.
enum Op {
    Get(u64),
    Set(u64),
}

struct Worker {
    /// A client of each target, by index, that sends each request once.
    clients: Vec<Client>,
    value_size: usize,
    timeout: Duration,
}

/// A client of `target` that sends each request once (no retries, no failover), keeping up
/// to `idle` connections open.
fn client(target: &Target, timeout: Duration, idle: usize) -> Result<Client, String> {
    Client::builder([target.addr.as_str()])
        .max_attempts(1)
        .discover(false)
        .timeout(timeout)
        .max_idle_per_node(idle)
        .build()
        .map_err(|e| format!("target {}: {e}", target.addr))
}

/// How a failed request is counted: the status the node answered with, or what went wrong.
fn failure(e: &ClientError) -> String {
    match e {
        ClientError::Api { status, .. } | ClientError::BadAnswer { status, .. } => {
            status.to_string()
        }
        ClientError::OutcomeUnknown { code: Some(_), .. } => "504".into(),
        // A write sent without an answer.
        ClientError::OutcomeUnknown { code: None, .. } => "io".into(),
        // No connection, or a read without an answer.
        ClientError::Unreachable { .. } => "unreachable".into(),
        ClientError::Config { .. } => "config".into(),
    }
}

impl Worker {
    /// Sends `op` to target `t` and reads the whole answer; `Err` names the failure.
    async fn send(&self, t: usize, op: &Op) -> Result<(), String> {
        let client = &self.clients[t];
        let exchange = async {
            match op {
                Op::Get(i) => match client.get(&key(*i)).await {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err("404".to_owned()),
                    Err(e) => Err(failure(&e)),
                },
                Op::Set(i) => {
                    let value = Value::string(value(*i, self.value_size));
                    client
                        .set(&key(*i), value)
                        .await
                        .map(|_| ())
                        .map_err(|e| failure(&e))
                }
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|_| Err("timeout".to_owned()))
    }
}

/// What one worker saw.
struct Tally {
    latency_us: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    sent: Vec<u64>,
}

impl Tally {
    fn new(targets: usize) -> Self {
        Tally {
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            ok: 0,
            errors: BTreeMap::new(),
            sent: vec![0; targets],
        }
    }

    fn count(&mut self, result: Result<(), String>) {
        match result {
            Ok(()) => self.ok += 1,
            Err(failure) => *self.errors.entry(failure).or_default() += 1,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latency_us.add(&other.latency_us).expect("same bounds");
        self.ok += other.ok;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (a, b) in self.sent.iter_mut().zip(other.sent) {
            *a += b;
        }
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// The schedule shared by the workers of the measured run.
struct Plan {
    start: Instant,
    /// Results of operations begun (or scheduled) before this are not counted.
    measure_from: Instant,
    end: Instant,
    get_ratio: f64,
    keys: Keys,
    rate: Option<f64>,
    /// Next open-loop slot.
    slot: AtomicU64,
}

async fn run_worker(worker: Worker, plan: Arc<Plan>, w: usize, seed: u64) -> Tally {
    let n = worker.clients.len();
    let mut tally = Tally::new(n);
    let mut rng = SmallRng::seed_from_u64(seed ^ (w as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut next_target = w % n;
    loop {
        let begun = match plan.rate {
            None => Instant::now(),
            Some(rate) => {
                let slot = plan.slot.fetch_add(1, Ordering::Relaxed);
                let at = plan.start + Duration::from_secs_f64(slot as f64 / rate);
                if at >= plan.end {
                    break;
                }
                tokio::time::sleep_until(at).await;
                at
            }
        };
        if begun >= plan.end {
            break;
        }
        let k = plan.keys.pick(&mut rng);
        let op = if rng.gen::<f64>() < plan.get_ratio {
            Op::Get(k)
        } else {
            Op::Set(k)
        };
        let t = next_target;
        next_target = (next_target + 1) % n;
        let result = worker.send(t, &op).await;
        if begun >= plan.measure_from {
            tally
                .latency_us
                .saturating_record(begun.elapsed().as_micros() as u64);
            tally.sent[t] += 1;
            tally.count(result);
        } else if result.is_err() {
            // Back off a little so a target that is down does not turn warm-up into a spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    tally
}

/// Writes keys `w`, `w + workers`, `w + 2 * workers`, ... through the targets in turn.
async fn preload_worker(worker: Worker, keys: u64, w: usize, workers: usize) -> Tally {
    let n = worker.clients.len();
    let mut tally = Tally::new(n);
    let mut i = w as u64;
    let mut t = w % n;
    while i < keys {
        let result = worker.send(t, &Op::Set(i)).await;
        tally.count(result);
        t = (t + 1) % n;
        i += workers as u64;
    }
    tally
}

fn workers(args: &Args, targets: &[Target]) -> Result<Vec<Worker>, String> {
    // The client's own deadline is the request's plus a margin, so that a slow request is
    // counted as this generator's `timeout`.
    let timeout = args.request_timeout + Duration::from_secs(1);
    let shared = if args.pooled {
        let clients = targets
            .iter()
            .map(|t| client(t, timeout, args.concurrency))
            .collect::<Result<Vec<_>, _>>()?;
        Some(clients)
    } else {
        None
    };
    (0..args.concurrency)
        .map(|_| {
            let clients = match &shared {
                Some(clients) => clients.clone(),
                None => targets
                    .iter()
                    .map(|t| client(t, timeout, 1))
                    .collect::<Result<Vec<_>, _>>()?,
            };
            Ok(Worker {
                clients,
                value_size: args.value_size,
                timeout: args.request_timeout,
            })
        })
        .collect()
}

/// One node's `/stats`, if it has them (the bare baseline servers do not).
#[derive(Debug, Clone, Copy)]
struct NodeStats {
    keys: u64,
    /// Client requests this node coordinated plus requests from peers: its share of the work.
    served: u64,
}

async fn node_stats(target: &Target) -> Option<NodeStats> {
    let stats = client(target, Duration::from_secs(30), 1)
        .ok()?
        .stats()
        .await
        .ok()?;
    let requests = stats.get("requests")?;
    let counter = |name: &str| requests.get(name).and_then(Json::as_u64).unwrap_or(0);
    Some(NodeStats {
        keys: stats.get("keys")?.as_u64()?,
        served: counter("local") + counter("peer"),
    })
}

async fn all_stats(targets: &[Target]) -> Option<Vec<NodeStats>> {
    let mut all = Vec::with_capacity(targets.len());
    for t in targets {
        all.push(node_stats(t).await?);
    }
    Some(all)
}

/// Largest over mean; 1.0 is perfectly even.
fn max_over_mean(values: &[u64]) -> Option<f64> {
    let max = *values.iter().max()?;
    let mean = values.iter().sum::<u64>() as f64 / values.len() as f64;
    (mean > 0.0).then(|| max as f64 / mean)
}

async fn run(args: Args) -> Result<(), String> {
    let targets: Arc<[Target]> = args
        .targets
        .iter()
        .map(|t| parse_target(t))
        .collect::<Result<Vec<_>, _>>()?
        .into();
    for t in targets.iter() {
        if t.addr.parse::<SocketAddr>().is_err() && !t.addr.contains(':') {
            return Err(format!("target {} has no port", t.addr));
        }
    }
    let distribution = if args.uniform || args.zipf == 0.0 {
        "uniform".to_string()
    } else {
        format!("zipf {}", args.zipf)
    };

    let preload = if args.preload {
        let began = Instant::now();
        let n = args.concurrency;
        let handles: Vec<_> = workers(&args, &targets)?
            .into_iter()
            .enumerate()
            .map(|(w, worker)| tokio::spawn(preload_worker(worker, args.keys, w, n)))
            .collect();
        let mut tally = Tally::new(targets.len());
        for h in handles {
            tally.merge(
                h.await
                    .map_err(|e| format!("a preload worker failed: {e}"))?,
            );
        }
        let secs = began.elapsed().as_secs_f64();
        Some(json!({
            "keys": args.keys,
            "seconds": secs,
            "ops_per_sec": args.keys as f64 / secs,
            "errors": tally.errors,
        }))
    } else {
        None
    };

    let before = all_stats(&targets).await;
    let mut report = json!({
        "targets": args.targets,
        "concurrency": args.concurrency,
        "get_ratio": args.get_ratio,
        "keys": args.keys,
        "value_size": args.value_size,
        "distribution": distribution,
        "rate": args.rate,
        "client": if args.pooled { "pooled" } else { "client per worker and target" },
        "threads": args.threads,
        "preload": preload,
    });

    if !args.duration.is_zero() {
        let keys = if args.uniform || args.zipf == 0.0 {
            Keys::Uniform(args.keys)
        } else {
            Keys::Zipf(Zipf::new(args.keys, args.zipf))
        };
        let start = Instant::now();
        let plan = Arc::new(Plan {
            start,
            measure_from: start + args.warmup,
            end: start + args.warmup + args.duration,
            get_ratio: args.get_ratio,
            keys,
            rate: args.rate,
            slot: AtomicU64::new(0),
        });
        let handles: Vec<_> = workers(&args, &targets)?
            .into_iter()
            .enumerate()
            .map(|(w, worker)| tokio::spawn(run_worker(worker, plan.clone(), w, args.seed)))
            .collect();
        let mut tally = Tally::new(targets.len());
        for h in handles {
            tally.merge(h.await.map_err(|e| format!("a worker failed: {e}"))?);
        }
        let secs = args.duration.as_secs_f64();
        let h = &tally.latency_us;
        let total = tally.ok + tally.error_count();
        report["seconds"] = json!(secs);
        report["ops"] = json!(total);
        report["ok"] = json!(tally.ok);
        report["throughput"] = json!(tally.ok as f64 / secs);
        report["latency_us"] = json!({
            "p50": h.value_at_quantile(0.5),
            "p99": h.value_at_quantile(0.99),
            "p999": h.value_at_quantile(0.999),
            "max": h.max(),
            "mean": h.mean(),
        });
        report["errors"] = json!(tally.errors);
        report["sent"] = json!(tally.sent);
        report["sent_max_over_mean"] = json!(max_over_mean(&tally.sent));
    }

    if let (Some(before), Some(after)) = (before, all_stats(&targets).await) {
        let keys: Vec<u64> = after.iter().map(|s| s.keys).collect();
        let served: Vec<u64> = before
            .iter()
            .zip(&after)
            .map(|(b, a)| a.served.saturating_sub(b.served))
            .collect();
        report["node_keys"] = json!(keys);
        report["keys_max_over_mean"] = json!(max_over_mean(&keys));
        report["node_served"] = json!(served);
        report["served_max_over_mean"] = json!(max_over_mean(&served));
    }

    if args.json {
        println!("{report}");
    } else {
        print_report(&args, &report);
    }
    Ok(())
}

fn print_report(args: &Args, r: &Json) {
    let ms = |us: &Json| {
        us.as_f64()
            .map_or("-".into(), |u| format!("{:.2} ms", u / 1000.0))
    };
    let ratio = |x: &Json| x.as_f64().map_or("-".into(), |x| format!("{x:.2}"));
    println!(
        "load: {} target(s), {} workers ({}, {} threads), get ratio {}, {} keys ({}), {}-byte values, {}",
        args.targets.len(),
        args.concurrency,
        r["client"].as_str().unwrap_or_default(),
        args.threads,
        args.get_ratio,
        args.keys,
        r["distribution"].as_str().unwrap_or_default(),
        args.value_size,
        match args.rate {
            Some(rate) => format!("open loop at {rate} ops/s"),
            None => "closed loop".into(),
        }
    );
    if let Some(p) = r.get("preload").filter(|p| !p.is_null()) {
        println!(
            "preload:    {} keys in {:.1} s ({:.0} ops/s), errors {}",
            p["keys"],
            p["seconds"].as_f64().unwrap_or_default(),
            p["ops_per_sec"].as_f64().unwrap_or_default(),
            p["errors"]
        );
    }
    if r.get("ops").is_some() {
        println!(
            "throughput: {:.0} ops/s ({} ok of {} in {:.1} s, after {:.1} s of warm-up)",
            r["throughput"].as_f64().unwrap_or_default(),
            r["ok"],
            r["ops"],
            r["seconds"].as_f64().unwrap_or_default(),
            args.warmup.as_secs_f64()
        );
        let l = &r["latency_us"];
        println!(
            "latency:    p50 {}  p99 {}  p99.9 {}  max {}",
            ms(&l["p50"]),
            ms(&l["p99"]),
            ms(&l["p999"]),
            ms(&l["max"])
        );
        let errors = r["errors"].as_object().filter(|e| !e.is_empty());
        match errors {
            Some(e) => println!(
                "errors:     {}",
                e.iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => println!("errors:     none"),
        }
        println!(
            "targets:    requests sent max/mean {} {}",
            ratio(&r["sent_max_over_mean"]),
            r["sent"]
        );
    }
    if r.get("node_keys").is_some() {
        println!(
            "nodes:      keys max/mean {} {}",
            ratio(&r["keys_max_over_mean"]),
            r["node_keys"]
        );
        println!(
            "            requests served (local + peer) max/mean {} {}",
            ratio(&r["served_max_over_mean"]),
            r["node_served"]
        );
    } else {
        println!("nodes:      no /stats (not kv nodes?)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("10h").is_err());
    }

    #[test]
    fn keys_and_values_have_fixed_sizes() {
        assert_eq!(key(42), "key:000000000042");
        assert_eq!(key(42).len(), 16);
        assert_eq!(value(42, 32).len(), 32);
        assert_eq!(value(123_456, 4), "3456");
    }

    #[test]
    fn zipf_ranks_stay_in_range_and_favour_low_ranks() {
        let z = Zipf::new(1000, 0.99);
        let mut rng = SmallRng::seed_from_u64(3);
        let samples: Vec<u64> = (0..10_000).map(|_| z.sample(&mut rng)).collect();
        assert!(samples.iter().all(|&r| r < 1000));
        let top = samples.iter().filter(|&&r| r < 10).count();
        assert!(top > 2_000, "top 1% of keys got {top} of 10000");
    }
}
