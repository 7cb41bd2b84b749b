//! kvcore on its own, as an embedded store: no sockets, no runtime.
//!
//! Shows typed values built from JSON in every encoding, conditional writes, the memory budget
//! refusing a write, and a cluster map placing keys on five nodes.
//!
//! ```text
//! cargo run -p examples --example embed_kvcore
//! ```

use std::error::Error;

use kvcore::{
    partition, ClusterMap, Conflict, Encoding, NodeId, NodeInfo, Precondition, Store, StoreConfig,
    Value, Version,
};
use serde_json::json;

fn main() -> Result<(), Box<dyn Error>> {
    values()?;
    conditional_writes()?;
    memory_budget()?;
    placement()?;
    Ok(())
}

/// Every encoding, from the JSON a client would send.
fn values() -> Result<(), Box<dyn Error>> {
    println!("values (JSON in -> encoded size -> JSON out):");
    let inputs = [
        (Encoding::String, json!("onto")),
        // The seed sends every value as a string; scalar encodings accept that and answer typed.
        (Encoding::Integer, json!("42")),
        (Encoding::Integer, json!(-7)),
        (Encoding::Float, json!(2.5)),
        (Encoding::Boolean, json!("true")),
        // Binary values travel as standard base64 and are stored as the raw bytes.
        (Encoding::Binary, json!("3q2+7w==")),
        (
            Encoding::Json,
            json!({"name": "Ada", "langs": ["en", "fr"]}),
        ),
    ];
    for (encoding, input) in inputs {
        let value = Value::from_json(encoding, &input)?;
        // Display of these types ignores width, so pad their string forms.
        println!(
            "  {:<8} {:<40} {:>2} bytes  {}",
            encoding.as_str(),
            input.to_string(),
            value.len(),
            value.to_json()
        );
    }
    let bad = Value::from_json(Encoding::Integer, &json!("forty-two")).expect_err("not an integer");
    println!("  refused: [{}] {bad}", bad.code());
    let unknown = "varchar".parse::<Encoding>().expect_err("not an encoding");
    println!("  refused: [{}] {unknown}", unknown.code());
    Ok(())
}

/// Writes that only apply if the key is in the expected state; a refusal is a value, not an error.
fn conditional_writes() -> Result<(), Box<dyn Error>> {
    println!("\nconditional writes:");
    let store = Store::new(StoreConfig::default());
    let counter = Value::integer;

    let created = store.put("counter", counter(1), Precondition::IfAbsent)?;
    show("if_absent on a new key", &created);
    assert_eq!(created, Ok(Version(1)));

    let again = store.put("counter", counter(5), Precondition::IfAbsent)?;
    show("if_absent on an existing key", &again);
    assert!(again.is_err());

    // Read-modify-write: increment only if nobody wrote in between.
    let entry = store.get("counter").ok_or("counter vanished")?;
    let next = counter(entry.value.as_i64().unwrap_or_default() + 1);
    let bumped = store.put("counter", next, Precondition::IfVersion(entry.version))?;
    show(&format!("if_version {}", entry.version), &bumped);
    assert_eq!(bumped, Ok(Version(2)));

    let stale = store.put(
        "counter",
        counter(100),
        Precondition::IfVersion(entry.version),
    )?;
    show(
        &format!("if_version {} again (stale)", entry.version),
        &stale,
    );
    assert!(stale.is_err());
    Ok(())
}

fn show(label: &str, outcome: &Result<Version, Conflict>) {
    let what = match outcome {
        Ok(version) => format!("written, version {version}"),
        Err(Conflict { current: Some(e) }) => {
            format!(
                "conflict, current {} at version {}",
                e.value.to_json(),
                e.version
            )
        }
        Err(Conflict { current: None }) => "conflict, the key does not exist".into(),
    };
    println!("  {label:<29} -> {what}");
}

/// A store with a small budget fills up, refuses the write that would overflow it, and accepts
/// writes again once space is freed.
fn memory_budget() -> Result<(), Box<dyn Error>> {
    let budget = 4 << 10;
    println!("\nmemory budget of {budget} bytes:");
    let store = Store::new(StoreConfig {
        max_memory: Some(budget),
        ..Default::default()
    });
    let payload = Value::string("x".repeat(200));
    let mut stored = 0;
    let full = loop {
        match store.set(&format!("item:{stored}"), payload.clone()) {
            Ok(_) => stored += 1,
            Err(e @ kvcore::Error::MemoryFull { .. }) => break e,
            Err(other) => return Err(other.into()),
        }
    };
    let stats = store.stats();
    println!(
        "  {stored} items stored, {} of {budget} bytes used",
        stats.bytes
    );
    println!("  next write refused: [{}] {full}", full.code());
    assert!(store.get(&format!("item:{stored}")).is_none());

    store.delete("item:0");
    store.set(&format!("item:{stored}"), payload)?;
    println!(
        "  after deleting item:0 the write succeeds ({} keys)",
        store.len()
    );
    Ok(())
}

/// Which nodes own which keys on a five-node cluster, under every built-in partitioner.
fn placement() -> Result<(), Box<dyn Error>> {
    let nodes: Vec<NodeInfo> = (0..5)
        .map(|i| NodeInfo {
            id: NodeId(i),
            addr: format!("10.0.0.{}:5100", i + 1),
        })
        .collect();
    let keys = ["a", "b", "d", "user:42", "visits", "ключ"];
    let default = partition::default_partitioner().name();
    for partitioner in partition::all() {
        let name = partitioner.name();
        let tag = if name == default { ", the default" } else { "" };
        let map = ClusterMap::new(1, nodes.clone(), partitioner)?;
        println!("\n{name}{tag}: 3 owners per key on 5 nodes, primary first");
        for key in keys {
            let owners: Vec<u32> = map.owners(key, 3).iter().map(|id| id.0).collect();
            assert_eq!(owners.len(), 3);
            println!("  {key:<8} -> nodes {owners:?}");
        }
        // The answer depends only on the key and the membership, so every node computes it alone.
        let mut primaries = [0u32; 5];
        for i in 0..10_000 {
            primaries[map.owners(&format!("key:{i}"), 1)[0].0 as usize] += 1;
        }
        println!("  primaries of 10000 keys per node: {primaries:?}");
    }
    Ok(())
}
