//! A 4-node cluster inside one process, used over real HTTP.
//!
//! Starts a `kvserver::LocalCluster` on free ports, writes a few keys through node 0 with a
//! `kvserver::Client`, reads each one back through a node that does not own it (so the read is
//! forwarded), then prints the membership and how many keys each node holds.
//!
//! ```text
//! cargo run -p examples --example in_process_cluster
//! ```

use std::error::Error;
use std::time::Duration;

use kvcore::{Encoding, Value};
use kvserver::{Client, LocalCluster};
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

    // One client per node, to choose which node each request goes through (without discovery,
    // which would let a client move on to another node).
    let clients = (0..cluster.len())
        .map(|i| Client::builder([cluster.addr(i)]).discover(false).build())
        .collect::<Result<Vec<_>, _>>()?;
    let writes = [
        ("d", json!("onto"), Encoding::String),
        (
            "user:42",
            json!({"name": "Ada", "langs": ["en", "fr"]}),
            Encoding::Json,
        ),
        // Like the seed's clients, numbers may be given as strings; they come back typed.
        ("visits", json!("1234"), Encoding::Integer),
        ("ratio", json!(0.75), Encoding::Float),
        ("enabled", json!(true), Encoding::Boolean),
        ("blob", json!("3q2+7w=="), Encoding::Binary),
    ];
    println!("\nwrite through node 0, read through another node:");
    for (key, value, encoding) in &writes {
        let written = clients[0]
            .set(key, Value::from_json(*encoding, value)?)
            .await?;

        let owner = cluster.node(0).owner(key);
        // Reading from the node after the owner guarantees the read is forwarded.
        let reader = (owner.0 as usize + 1) % cluster.len();
        let read = clients[reader]
            .get(key)
            .await?
            .ok_or_else(|| format!("{key}: written, then not found"))?;
        if read != written {
            return Err(format!("{key}: wrote {written}, read back {read}").into());
        }
        println!(
            "  {key:<8} owner node {owner}, read via node {reader}: {} ({encoding}, version {})",
            read.value.to_json(),
            read.version
        );
    }

    let missing = clients[2].get("nope").await?;
    if missing.is_some() {
        return Err("a key never written was found".into());
    }
    println!("\nget \"nope\" -> not found");

    let membership = clients[1].cluster().await?;
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
    for (i, client) in clients.iter().enumerate() {
        let stats = client.stats().await?;
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
    drop(clients);
    cluster.shutdown().await;
    println!("\ncluster stopped");
    Ok(())
}

/// A JSON string without its quotes; anything else as JSON.
fn text(json: &Json) -> String {
    json.as_str()
        .map_or_else(|| json.to_string(), str::to_owned)
}
