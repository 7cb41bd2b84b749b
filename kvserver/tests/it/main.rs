//! Integration tests of kvserver over real HTTP, on port 0.

mod api;
mod batch;
mod budget;
mod chaos;
mod checker;
mod cli;
mod client;
mod cluster;
mod eviction;
mod fuzz;
mod hardening;
mod membership;
mod metrics;
mod openapi;
mod process;
mod protocol;
mod replication;
mod security;
mod status;
mod stub;
mod ttl;
mod util;
