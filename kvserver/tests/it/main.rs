//! Integration tests of kvserver over real HTTP.
