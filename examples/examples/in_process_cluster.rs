//! A 4-node cluster inside one process, used over real HTTP.
//!
//! Starts a `kvserver::LocalCluster` on free ports, writes a few keys through node 0, reads each
//! one back through a node that does not own it (so the read is forwarded), then prints the
//! membership and how many keys each node holds.
//!
//! ```text
//! cargo run -p examples --example in_process_cluster
//! ```

use std::error::Error;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kvserver::LocalCluster;
use serde_json::{json, Value as Json};

type BoxError = Box<dyn Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // CI runs this example: a bug must fail it, never hang it.
    tokio::time::timeout(Duration::from_secs(60), run())
        .await
        .map_err(|_| "the example did not finish within 60 s")?
}

async fn run() -> Result<(), BoxError> {
    let cluster = LocalCluster::builder().nodes(4).start().await?;
    println!("started {} nodes:", cluster.len());
    for i in 0..cluster.len() {
        println!("  node {i}: {}", cluster.url(i));
    }

    let http = Http::new();
    let writes = [
        ("d", json!("onto"), "string"),
        (
            "user:42",
            json!({"name": "Ada", "langs": ["en", "fr"]}),
            "json",
        ),
        // Like the seed's clients, numbers may be sent as strings; they come back typed.
        ("visits", json!("1234"), "integer"),
        ("ratio", json!(0.75), "float"),
        ("enabled", json!(true), "boolean"),
        ("blob", json!("3q2+7w=="), "binary"),
    ];
    println!("\nwrite through node 0, read through another node:");
    for (key, value, encoding) in &writes {
        let body = json!({"key": key, "value": value, "encoding": encoding});
        let (status, written) = http
            .send(Method::POST, &cluster.url(0), "/set", Some(body))
            .await?;
        expect(status, StatusCode::OK, &written)?;

        let owner = cluster.node(0).owner(key);
        // Reading from the node after the owner guarantees the read is forwarded.
        let reader = (owner.0 as usize + 1) % cluster.len();
        let path = format!("/get/{key}");
        let (status, read) = http
            .send(Method::GET, &cluster.url(reader), &path, None)
            .await?;
        expect(status, StatusCode::OK, &read)?;
        if read["value"] != written["value"] || read["version"] != written["version"] {
            return Err(format!("{key}: wrote {written}, read back {read}").into());
        }
        println!(
            "  {key:<8} owner node {owner}, read via node {reader}: {} ({encoding}, version {})",
            read["value"], read["version"]
        );
    }

    let (status, missing) = http
        .send(Method::GET, &cluster.url(2), "/get/nope", None)
        .await?;
    expect(status, StatusCode::NOT_FOUND, &missing)?;
    println!("\nGET /get/nope -> {status}: {missing}");

    let (status, membership) = http
        .send(Method::GET, &cluster.url(1), "/cluster", None)
        .await?;
    expect(status, StatusCode::OK, &membership)?;
    println!(
        "\nGET /cluster (node 1): epoch {}, partitioner {}, replication factor {}",
        membership["epoch"],
        text(&membership["partitioner"]),
        membership["replication_factor"]
    );
    for member in membership["nodes"]
        .as_array()
        .ok_or("/cluster has no node list")?
    {
        println!(
            "  node {} at {} is {}",
            member["id"],
            text(&member["addr"]),
            text(&member["state"])
        );
    }

    println!("\nkeys per node (GET /stats):");
    let mut total = 0;
    for i in 0..cluster.len() {
        let (status, stats) = http
            .send(Method::GET, &cluster.url(i), "/stats", None)
            .await?;
        expect(status, StatusCode::OK, &stats)?;
        let keys = stats["keys"].as_u64().ok_or("/stats has no key count")?;
        total += keys;
        println!(
            "  node {i}: {keys} keys, {} requests forwarded",
            stats["requests"]["forwarded"]
        );
    }
    // Each key lives on R replicas; a write is acknowledged once a majority hold it, and the
    // last copy may still be landing.
    let r = cluster.node(0).replication_factor() as u64;
    let n = writes.len() as u64;
    if total < n * (r / 2 + 1) || total > n * r {
        return Err(
            format!("the nodes hold {total} copies of {n} keys at {r} replicas each").into(),
        );
    }
    println!("  {total} copies of {n} keys ({r} replicas per key)");

    // Idle pooled connections would otherwise hold the servers' graceful shutdown open.
    drop(http);
    cluster.shutdown().await;
    println!("\ncluster stopped");
    Ok(())
}

/// A small JSON-over-HTTP client.
struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    fn new() -> Self {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends a request with an optional JSON body; returns the status and the JSON answer.
    async fn send(
        &self,
        method: Method,
        base: &str,
        path: &str,
        body: Option<Json>,
    ) -> Result<(StatusCode, Json), BoxError> {
        let body = match body {
            Some(json) => Full::new(Bytes::from(json.to_string())),
            None => Full::default(),
        };
        let request = Request::builder()
            .method(method)
            .uri(format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(body)?;
        let response = self.client.request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok((status, serde_json::from_slice(&bytes)?))
    }
}

fn expect(got: StatusCode, want: StatusCode, body: &Json) -> Result<(), BoxError> {
    if got == want {
        Ok(())
    } else {
        Err(format!("expected {want}, got {got}: {body}").into())
    }
}

/// A JSON string without its quotes; anything else as JSON.
fn text(json: &Json) -> String {
    json.as_str()
        .map_or_else(|| json.to_string(), str::to_owned)
}
