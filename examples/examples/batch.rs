//! Measures batches and scans over HTTP against an in-process 3-node cluster (R = 3, HTTP between
//! the nodes):
//!
//! - reading `--batch` keys with one `POST /mget`, against the same number of `GET /kv/{key}`
//!   one after another on one kept-alive connection, and all in flight at once;
//! - writing them with one `POST /mset`, against as many `PUT /kv/{key}` one after another;
//! - loading `--keys` fresh keys with `POST /mset` of 1000, against a fifth as many with single
//!   PUTs, 64 in flight;
//! - scanning the loaded keys with `GET /keys?prefix=key:&limit=--page`, a page at a time
//!   through the nodes in turn (keys/s).
//!
//! Every round asks a different node, for different random keys. Ratios are of mean times.
//!
//! ```console
//! cargo run --release -p examples --example batch
//! cargo run --release -p examples --example batch -- --keys 100000 --batch 100 --rounds 200
//! ```

use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kvserver::LocalCluster;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value as Json};

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

type Http = Client<HttpConnector, Full<Bytes>>;

async fn call(http: &Http, method: Method, url: &str, body: Option<String>) -> (StatusCode, Json) {
    let request = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .expect("a valid request");
    let response = http.request(request).await.expect("the node answers");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a whole body")
        .to_bytes();
    (status, serde_json::from_slice(&body).expect("a JSON body"))
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
    let urls: Vec<String> = (0..cluster.len()).map(|i| cluster.url(i)).collect();
    let http: Http = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let value = "v".repeat(args.value_size);

    // Load through /mset, a thousand keys a request, the nodes in turn.
    let loading = Instant::now();
    for (n, start) in (0..args.keys).step_by(1000).enumerate() {
        let entries: Vec<Json> = (start..(start + 1000).min(args.keys))
            .map(|i| json!({"key": key(i), "value": value}))
            .collect();
        let body = json!({ "entries": entries }).to_string();
        let (status, answer) = call(
            &http,
            Method::POST,
            &format!("{}/mset", urls[n % urls.len()]),
            Some(body),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let results = answer["results"].as_array().expect("results");
        if let Some(failed) = results.iter().find(|r| r.get("error").is_some()) {
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

    // The same, fresh keys written one PUT each, 64 in flight.
    let singles = (args.keys / 5).max(1);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let loading = Instant::now();
    let workers: Vec<_> = (0..64)
        .map(|w| {
            let (http, next) = (http.clone(), next.clone());
            let url = urls[w % urls.len()].clone();
            let body = json!({ "value": value }).to_string();
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= singles {
                        break;
                    }
                    let target = format!("{url}/kv/single:{i:08}");
                    let (status, answer) =
                        call(&http, Method::PUT, &target, Some(body.clone())).await;
                    assert_eq!(status, StatusCode::OK, "{answer}");
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
        let url = &urls[round % urls.len()];
        let keys = pick(&mut rng);

        let body = json!({ "keys": keys }).to_string();
        let started = Instant::now();
        let (status, answer) = call(&http, Method::POST, &format!("{url}/mget"), Some(body)).await;
        let took = started.elapsed();
        assert_eq!(status, StatusCode::OK, "{answer}");
        let entries = answer["entries"].as_array().expect("entries");
        assert!(
            entries.iter().all(|e| e["value"] == json!(value)),
            "{answer}"
        );
        mget.push(took);

        let started = Instant::now();
        for k in &keys {
            let (status, _) = call(&http, Method::GET, &format!("{url}/kv/{k}"), None).await;
            assert_eq!(status, StatusCode::OK);
        }
        sequential.push(started.elapsed());

        let started = Instant::now();
        let gets: Vec<_> = keys
            .iter()
            .map(|k| {
                let (http, url) = (http.clone(), format!("{url}/kv/{k}"));
                tokio::spawn(async move { call(&http, Method::GET, &url, None).await.0 })
            })
            .collect();
        for get in gets {
            assert_eq!(get.await.expect("the read ran"), StatusCode::OK);
        }
        parallel.push(started.elapsed());

        let entries: Vec<Json> = keys
            .iter()
            .map(|k| json!({"key": k, "value": value}))
            .collect();
        let body = json!({ "entries": entries }).to_string();
        let started = Instant::now();
        let (status, answer) = call(&http, Method::POST, &format!("{url}/mset"), Some(body)).await;
        mset.push(started.elapsed());
        assert_eq!(status, StatusCode::OK, "{answer}");

        let body = json!({ "value": value }).to_string();
        let started = Instant::now();
        for k in &keys {
            let (status, _) = call(
                &http,
                Method::PUT,
                &format!("{url}/kv/{k}"),
                Some(body.clone()),
            )
            .await;
            assert_eq!(status, StatusCode::OK);
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

    // A whole scan, a page at a time, through the nodes in turn.
    let mut pages = 0;
    let mut listed = 0;
    let mut cursor: Option<String> = None;
    let started = Instant::now();
    loop {
        let mut url = format!(
            "{}/keys?prefix=key:&limit={}",
            urls[pages % urls.len()],
            args.page
        );
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let (status, answer) = call(&http, Method::GET, &url, None).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        pages += 1;
        listed += answer["keys"].as_array().expect("keys").len();
        match answer["cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let scan = started.elapsed();
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
    cluster.shutdown().await;
}
