//! Integration tests of kvserver over real HTTP, on port 0.

mod api;
mod budget;
mod cluster;
mod process;
mod replication;
mod util;
