//! Runnable examples of the kv store; the library itself is empty.
//!
//! Each file in `examples/` is a small program, run in CI, that exits with status 0 when it
//! behaves as it says:
//!
//! - `in_process_cluster`: starts a 4-node [`kvserver::LocalCluster`] on free ports, talks to it
//!   over real HTTP, and shows which node owns each key.
//!   `cargo run -p examples --example in_process_cluster`
//! - `embed_kvcore`: uses [`kvcore`] alone as an embedded store: typed values, conditional
//!   writes, the memory budget, and key placement with a cluster map.
//!   `cargo run -p examples --example embed_kvcore`
