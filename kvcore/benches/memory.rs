//! Memory per key: how much a `Store` grows when it loads N keys, against Redis holding the same.
//!
//! `cargo bench -p kvcore --bench memory [-- KEYS]` (KEYS defaults to 1 000 000)
//!
//! Loads KEYS keys `key:%012d` (16 bytes) with 32-byte string values, the data of
//! `scripts/bench.sh`'s memory figure, into an empty store, twice, each time in a fresh process
//! so one load's freed memory cannot hide the other's growth:
//! - through the map API, `set`, as a program embedding kvcore does;
//! - through the acceptor API, `prepare` then `accept` with a fresh ballot per key, as a
//!   replicated write does;
//! - the same, each value with an expiry time (a TTL).
//!
//! For each it prints the growth of the process's resident set (`VmRSS` in `/proc/self/status`)
//! per key, and [`Store::used_bytes`] per key (what the memory budget counts). Each load then
//! deletes every key again, the way its API does:
//! - the map API's `delete`, which removes the key into its shard's floor;
//! - on the acceptor path, a tombstone accepted at a fresh ballot (`prepare`, `accept`) and then
//!   collected (`collect`), as a replicated delete does once every replica holds the tombstone;
//!
//! and prints `used_bytes` and the resident set before loading, after loading and after deleting:
//! the memory before and after deleting KEYS keys. If `redis-server`
//! is on the PATH, it then starts one on a free loopback port with persistence off, loads the
//! same keys and values with pipelined `SET`s, and prints its `used_memory` and RSS growth per
//! key and the ratios; then the same in a second, fresh server with `SET ... PX` (a TTL),
//! against the store's keys with a TTL.
//!
//! The process uses the system allocator, as the kvserver binary does.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kvcore::{Ballot, NodeId, Register, Store, StoreConfig, Value, Version};

/// What one load measured: `used_bytes` and the resident set (KiB) before loading, after loading
/// and after deleting every key.
struct Phases {
    rss_kib: [u64; 3],
    used: [u64; 3],
}

const DEFAULT_KEYS: u64 = 1_000_000;
const VALUE_SIZE: usize = 32;

fn key(i: u64) -> String {
    format!("key:{i:012}")
}

/// The value of key `i`: its number, zero-padded to 32 bytes, as `scripts/bench.sh` writes it.
fn value(i: u64) -> String {
    format!("{i:0>VALUE_SIZE$}")
}

/// Resident set size of process `pid` ("self" for this one), in KiB.
fn rss_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("procfs");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// One load and delete, in this process: prints the resident set in KiB and `used_bytes`, each
/// before loading, after loading and after deleting.
fn child(path: &str, keys: u64) {
    let store = Store::new(StoreConfig::default());
    let used_before = store.used_bytes();
    let before = rss_kib("self");
    match path {
        "set" => {
            for i in 0..keys {
                store
                    .set(&key(i), Value::string(value(i)))
                    .expect("no budget");
            }
        }
        "acceptor" | "acceptor-ttl" => {
            // An hour from the start of 2026: a TTL as a replicated write carries it.
            let expires = (path == "acceptor-ttl").then_some(1_767_229_200_000);
            for i in 0..keys {
                let key = key(i);
                // A fresh ballot per write, as a node's proposer draws them.
                let ballot = Ballot::new(i + 1, NodeId(1));
                let current = store
                    .prepare(&key, ballot, VALUE_SIZE)
                    .expect("no budget")
                    .expect("a fresh ballot is promised");
                let register = Register {
                    ballot,
                    version: current.version.next(),
                    value: Some(Value::string(value(i))),
                    expires,
                };
                store
                    .accept(&key, register)
                    .expect("no budget")
                    .expect("the promised ballot is accepted");
            }
        }
        other => panic!("unknown load path {other:?}"),
    }
    let after = rss_kib("self");
    let used_after = store.used_bytes();
    assert_eq!(store.len() as u64, keys);
    let sample = store.get(&key(keys / 2)).expect("loaded");
    assert_eq!(sample.value.as_str(), Some(value(keys / 2).as_str()));
    assert_eq!(sample.version, Version(1));

    match path {
        "set" => {
            for i in 0..keys {
                store.delete(&key(i)).expect("loaded");
            }
        }
        _ => {
            for i in 0..keys {
                let key = key(i);
                // Ballots above every ballot of the load.
                let ballot = Ballot::new(keys + i + 1, NodeId(1));
                let current = store
                    .prepare(&key, ballot, 0)
                    .expect("no budget")
                    .expect("a fresh ballot is promised");
                let tombstone = Register {
                    ballot,
                    version: current.version.next(),
                    value: None,
                    expires: None,
                };
                store
                    .accept(&key, tombstone)
                    .expect("no budget")
                    .expect("the promised ballot is accepted");
                assert!(store.collect(&key, ballot).expect("valid key"));
            }
        }
    }
    let deleted = rss_kib("self");
    assert!(store.is_empty());
    println!(
        "{before} {after} {deleted} {used_before} {used_after} {}",
        store.used_bytes()
    );
}

struct Growth {
    rss_per_key: f64,
    used_per_key: f64,
    phases: Phases,
}

fn measure(path: &str, keys: u64) -> Growth {
    let exe = std::env::current_exe().expect("own path");
    let out = Command::new(exe)
        .args(["--child", path, &keys.to_string()])
        .output()
        .expect("run a child load");
    assert!(
        out.status.success(),
        "{path} load failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).expect("utf-8");
    let n: Vec<u64> = line
        .split_whitespace()
        .map(|x| x.parse().expect("numbers"))
        .collect();
    let [before, after, deleted, used_before, used, used_deleted] = n[..] else {
        panic!("unexpected child output {line:?}")
    };
    Growth {
        rss_per_key: (after.saturating_sub(before) * 1024) as f64 / keys as f64,
        used_per_key: used as f64 / keys as f64,
        phases: Phases {
            rss_kib: [before, after, deleted],
            used: [used_before, used, used_deleted],
        },
    }
}

/// `n` KiB in MiB, for the table of phases.
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A `redis-server` this process started; killed when dropped.
struct Redis {
    child: Child,
    conn: BufReader<TcpStream>,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Redis {
    fn start() -> Option<Redis> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .ok()?
            .port();
        let port = port.to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut redis = Redis {
            child,
            conn: loop {
                match TcpStream::connect(("127.0.0.1", port.parse::<u16>().ok()?)) {
                    Ok(c) => break BufReader::new(c),
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(e) => panic!("redis-server did not listen on {port}: {e}"),
                }
            },
        };
        let version = redis
            .info("server")
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:").map(str::to_owned))
            .unwrap_or_default();
        println!("Redis {version} on port {port}");
        Some(redis)
    }

    fn command(&mut self, args: &[&[u8]]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// The body of `INFO section`.
    fn info(&mut self, section: &str) -> String {
        let cmd = self.command(&[b"INFO", section.as_bytes()]);
        self.conn.get_mut().write_all(&cmd).expect("send INFO");
        let mut header = String::new();
        self.conn.read_line(&mut header).expect("INFO reply");
        let len: usize = header
            .trim()
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .expect("bulk string");
        let mut body = vec![0; len + 2];
        self.conn.read_exact(&mut body).expect("INFO body");
        String::from_utf8_lossy(&body).into_owned()
    }

    fn used_memory(&mut self) -> u64 {
        self.info("memory")
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("used_memory")
    }

    fn rss_kib(&self) -> u64 {
        rss_kib(&self.child.id().to_string())
    }

    /// `SET`s every key, with a time to live of `ttl_ms` if given, pipelined 10 000 at a time
    /// like `redis-cli --pipe`.
    fn load(&mut self, keys: u64, ttl_ms: Option<u64>) {
        let ttl = ttl_ms.map(|ms| ms.to_string());
        let mut i = 0;
        while i < keys {
            let batch = (keys - i).min(10_000);
            let mut out = Vec::new();
            for j in i..i + batch {
                let (key, value) = (key(j), value(j));
                let mut args = vec![b"SET".as_slice(), key.as_bytes(), value.as_bytes()];
                if let Some(ttl) = &ttl {
                    args.extend([b"PX".as_slice(), ttl.as_bytes()]);
                }
                out.extend(self.command(&args));
            }
            self.conn.get_mut().write_all(&out).expect("send SETs");
            let mut reply = String::new();
            for _ in 0..batch {
                reply.clear();
                self.conn.read_line(&mut reply).expect("SET reply");
                assert_eq!(reply, "+OK\r\n");
            }
            i += batch;
        }
    }

    /// Bytes per key of a fresh server loading `keys` keys: RSS growth and `used_memory`.
    fn per_key(keys: u64, ttl_ms: Option<u64>) -> Option<(f64, f64)> {
        let mut redis = Redis::start()?;
        let (used_before, rss_before) = (redis.used_memory(), redis.rss_kib());
        redis.load(keys, ttl_ms);
        let (used_after, rss_after) = (redis.used_memory(), redis.rss_kib());
        let used = (used_after - used_before) as f64 / keys as f64;
        let rss = ((rss_after - rss_before) * 1024) as f64 / keys as f64;
        Some((rss, used))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, path, keys] = &args[..] {
        if flag == "--child" {
            return child(path, keys.parse().expect("key count"));
        }
    }
    // `cargo bench` passes `--bench`; the first number is the key count.
    let keys = args
        .iter()
        .find_map(|a| a.parse().ok())
        .unwrap_or(DEFAULT_KEYS);
    println!("memory per key: {keys} keys of 16 bytes, {VALUE_SIZE}-byte string values");
    println!("(ENTRY_OVERHEAD = {})", kvcore::store::ENTRY_OVERHEAD);
    println!(
        "{:<34} {:>18} {:>18}",
        "", "RSS growth B/key", "counted B/key"
    );
    let set = measure("set", keys);
    let acceptor = measure("acceptor", keys);
    let with_ttl = measure("acceptor-ttl", keys);
    for (name, g) in [
        ("kvcore, set", &set),
        ("kvcore, prepare + accept", &acceptor),
        ("kvcore, prepare + accept, TTL", &with_ttl),
    ] {
        println!(
            "{name:<34} {:>18.1} {:>18.1}",
            g.rss_per_key, g.used_per_key
        );
    }
    println!();
    println!("memory before and after deleting {keys} keys (used_bytes in bytes, RSS in MiB)");
    println!(
        "{:<34} {:>12} {:>12} {:>12} {:>9} {:>9} {:>9}",
        "", "used before", "loaded", "deleted", "RSS before", "loaded", "deleted"
    );
    for (name, g) in [
        ("kvcore, set / delete", &set),
        ("kvcore, accept tombstone + collect", &acceptor),
    ] {
        let Phases { rss_kib, used } = &g.phases;
        println!(
            "{name:<34} {:>12} {:>12} {:>12} {:>9.1} {:>9.1} {:>9.1}",
            used[0],
            used[1],
            used[2],
            mib(rss_kib[0]),
            mib(rss_kib[1]),
            mib(rss_kib[2])
        );
    }
    println!();

    let Some((rss, used)) = Redis::per_key(keys, None) else {
        println!("redis-server not found on the PATH: no Redis figures");
        return;
    };
    let (rss_ttl, used_ttl) = Redis::per_key(keys, Some(3_600_000)).expect("Redis started once");
    println!(
        "{:<34} {rss:>18.1} {used:>18.1}",
        "Redis, SET (counted: used_memory)"
    );
    println!(
        "{:<34} {rss_ttl:>18.1} {used_ttl:>18.1}",
        "Redis, SET PX (with a TTL)"
    );
    for (name, g, rss, used) in [
        ("set", &set, rss, used),
        ("prepare + accept", &acceptor, rss, used),
        ("prepare + accept, TTL", &with_ttl, rss_ttl, used_ttl),
    ] {
        println!(
            "kvcore {name} / Redis: RSS {:.2}, RSS against used_memory {:.2}",
            g.rss_per_key / rss,
            g.rss_per_key / used
        );
    }
}
