//! Integration tests of kvcore's public API.

mod golden;
mod partition;
mod store;
